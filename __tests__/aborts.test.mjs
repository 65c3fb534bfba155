// A caller's abort at every point of a request's life, on every path: the library's fetch
// (Rust transport and runtime transport), OpenCode 2's hooks through the host harness (the
// host's signal), and the gateway (a client that goes away). Each phase is reached
// deterministically, with the loopback mock holding the step (a gate, a hang, a held token
// endpoint, another process's lock), then the caller aborts. For each: the promise or read
// rejects with the signal's reason (fetch's rule) before the held step is let go, nothing more
// goes upstream, the upstream connection is closed, no account is marked by the abort, a refresh
// under way still lands its tokens (one refresh, no token presented twice), no listener stays
// on a signal that outlives the request, no unhandled rejection or warning, and the next
// request on the same pool is served.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { createPoolFetch, flushPool, savePool, serve } from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { body, countedSignal, jsonHeaders, poolListener, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";
import { holdLock } from "./helpers/flock.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import { throughPool, withRawApi } from "./helpers/raw-api.mjs";
import * as pluginModule from "../plugin.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_HOLD_MAX_MS: "60000", OAUTH_POOL_JITTER_MS: "0", OAUTH_POOL_GATEWAY_KEY: KEY } });

// What the process says went wrong outside any promise a test awaits.
const stray = [];
process.on("unhandledRejection", (err) => stray.push(`unhandled rejection: ${err?.stack ?? err}`));
process.on("warning", (w) => stray.push(`warning: ${w?.name}: ${w?.message}`));

function gate() {
  let open;
  const held = new Promise((r) => (open = r));
  return { held, open };
}

/** `promise` settled within `ms`, else a failure naming `what` (generous: no speed is measured). */
async function within(promise, ms, what) {
  let timer;
  try {
    return await Promise.race([
      promise,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const sse = (type, data) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
const START = sse("message_start", {
  message: { id: "msg_ab", type: "message", role: "assistant", model: "claude-sonnet-4-5", content: [], usage: { input_tokens: 3, output_tokens: 1 } },
});
const OPENED = [
  START,
  sse("content_block_start", { index: 0, content_block: { type: "text", text: "" } }),
  sse("content_block_delta", { index: 0, delta: { type: "text_delta", text: "Hel" } }),
];
const SSE_HEAD = { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" };

/** The refresh lock another process holds: flock(1) on the account's lock file, until `release()`. */
async function otherProcessLock(path, email) {
  const tag = createHash("sha256").update(email.trim().toLowerCase()).digest("hex").slice(0, 12);
  const file = `${path}.${tag}.refresh.lock`;
  writeFileSync(file, "", { mode: 0o600 });
  return holdLock(file);
}

/** The answer is handed over and its body left unread: the abort must close its upstream. */
async function handedOverUnread({ send }) {
  const arrived = mock.waitFor("api");
  const res = await send();
  assert.equal(res.status, 200);
  return { pending: () => res.text(), upstream: await arrived, closesBeforeRead: true };
}

/**
 * The phases, in the order a request lives them. `setup` prepares the pool and the mock (the
 * accounts `emails`, first one first); `reach` starts the request through `send` and resolves
 * once it is at the phase: `{ pending, upstream }`, `pending` the promise (or the function
 * starting the read, called after the abort) that must reject, `upstream` the record of the
 * request the mock holds open. `marked`: accounts an answer (not the abort) may mark.
 */
const PHASES = {
  "already aborted": {
    accounts: 1,
    before: true,
    reach: async ({ send }) => ({ pending: send() }),
  },
  "waiting for another process's refresh lock": {
    accounts: 1,
    expired: true,
    setup: async (ctx) => {
      ctx.lock = await otherProcessLock(ctx.path, ctx.emails[0]);
      ctx.release.push(() => ctx.lock.release());
    },
    reach: async ({ send }) => {
      const pending = send();
      await sleep(400);
      return { pending };
    },
    // The refresh the lock held goes on in the background once the lock is free (by design).
    refreshAfter: true,
  },
  "during a refresh (token endpoint held)": {
    accounts: 1,
    expired: true,
    setup: (ctx) => {
      const g = gate();
      mock.setTokenMode({ grant: "refresh_token", until: g.held });
      ctx.release.push(() => g.open());
    },
    reach: async ({ send }) => {
      const arrived = mock.waitFor("token");
      const pending = send();
      await arrived;
      return { pending };
    },
    refreshed: true,
  },
  "waiting for a cooling account (holding)": {
    accounts: 1,
    setup: async (ctx) => {
      const pool = readPool(ctx.path);
      pool.anthropic[0].status = "rate-limited";
      // Held for longer than the abort takes to come, yet short enough for the next request
      // to be served after it (it holds too): a cooldown of 1.2 s left 0.8 s for the host to
      // start and the request to be sent, and on a busy machine it ran out first.
      pool.anthropic[0].rateLimitUntil = Date.now() + 4000;
      await savePool(pool, ctx.path);
    },
    reach: async ({ send }) => {
      const pending = send();
      await sleep(400);
      return { pending };
    },
  },
  "sending a streamed request body": {
    accounts: 1,
    only: ["native", "runtime", "gateway"],
    streamedBody: true,
    reach: async ({ send }) => {
      const pending = send();
      await sleep(300);
      return { pending };
    },
  },
  "waiting for the answer's head": {
    accounts: 1,
    setup: (ctx) => {
      const g = gate();
      mock.scriptAll([{ until: g.held }]);
      ctx.release.push(() => g.open());
    },
    reach: async ({ send }) => {
      const arrived = mock.waitFor("api");
      const pending = send();
      return { pending, upstream: await arrived };
    },
  },
  "reading a 429's body": {
    accounts: 2,
    setup: () => {
      mock.scriptAll([
        { status: 429, headers: { ...rateLimitHeaders({ retryAfter: 3600 }), "content-type": "application/json" }, raw: ['{"type":"error",'], thenHang: true },
      ]);
    },
    reach: async ({ send }) => {
      const arrived = mock.waitFor("api");
      const pending = send();
      const upstream = await arrived;
      await sleep(300);
      return { pending, upstream };
    },
    // Its head said so: the account rests, although the caller left before its body came (the
    // Rust transport, OpenCode 2's hooks and the gateway let it be asked again).
    marked: (upstream) => [upstream.email],
    mustMark: true,
  },
  "the resend on the next account in flight": {
    accounts: 2,
    setup: (ctx) => {
      const g = gate();
      mock.scriptAll([{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }, { until: g.held }]);
      ctx.release.push(() => g.open());
    },
    reach: async ({ send }) => {
      const first = mock.waitFor("api");
      const pending = send();
      const limited = await first;
      const upstream = await mock.waitFor("api", (r) => r.email !== limited.email);
      return { pending, upstream, limited };
    },
    marked: (_, reached) => [reached.limited.email],
    mustMark: true,
  },
  "reading an event stream's opening": {
    accounts: 1,
    setup: () => mock.scriptAll([{ raw: [START], headers: SSE_HEAD, thenHang: true }]),
    reach: async ({ send }) => {
      const arrived = mock.waitFor("api");
      const pending = send();
      const upstream = await arrived;
      await sleep(300);
      return { pending, upstream };
    },
  },
  "the answer handed over, its body not read yet": {
    accounts: 1,
    setup: () => mock.scriptAll([{ raw: OPENED, headers: SSE_HEAD, thenHang: true }]),
    reach: handedOverUnread,
  },
  "a bulk answer handed over, its body not read yet": {
    accounts: 1,
    // JSON of no announced length: streamed on both transports (read ahead by the Rust client).
    setup: () =>
      mock.scriptAll([{ raw: [`{"type":"message","padding":"${"x".repeat(100_000)}`], headers: { "content-type": "application/json" }, thenHang: true }]),
    reach: handedOverUnread,
  },
  "mid-body": {
    accounts: 1,
    setup: () => mock.scriptAll([{ raw: OPENED, headers: SSE_HEAD, thenHang: true }]),
    reach: async ({ send }) => {
      const arrived = mock.waitFor("api");
      const res = await send();
      const reader = res.body.getReader();
      assert.equal((await reader.read()).done, false);
      return {
        pending: async () => {
          for (;;) if ((await reader.read()).done) throw new Error("the body ended as if whole after the abort");
        },
        upstream: await arrived,
      };
    },
  },
  "after the body ended (a late abort is a no-op)": {
    accounts: 1,
    late: true,
    reach: async ({ send }) => {
      const res = await send({ stream: true });
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.match(text, /message_stop/);
      return {};
    },
  },
};

const CUSTOM = () => new Error("the caller gave up");

// Serving an account makes it "active": that is the answer's doing, not the abort's.
const usable = new Set(["idle", "active"]);

/** How the account's state reads, for "unchanged". */
const stateOf = (path, emails) => {
  const pool = readPool(path);
  return Object.fromEntries(
    emails
      .map((e) => [e, pool.anthropic.find((a) => a.email === e)])
      .map(([e, a]) => [e, { status: usable.has(a.status ?? "idle") ? "usable" : a.status, rateLimitUntil: a.rateLimitUntil ?? null }]),
  );
};

let serial = 0;

/**
 * One phase on one path. `path`: "native" | "runtime" (the library's fetch), "opencode2" (the
 * hooks, the host's signal), "gateway" (a client going away). `reason`: "default" | "custom" |
 * "twice".
 */
async function run(kind, phaseName, reason) {
  const phase = PHASES[phaseName];
  const n = ++serial;
  const emails = Array.from({ length: phase.accounts }, (_, i) => `ab${n}-${i}-${kind}@x.test`);
  const path = await seedPool(mock, emails, { expired: phase.expired ? [emails[0]] : [] });
  const ctx = { path, emails, release: [] };
  mock.clearScripts();
  mock.setTokenMode(null);
  let gateway = null;
  let host = null;
  let handle = null;
  const strayBefore = stray.length;
  try {
    await phase.setup?.(ctx);
    const before = stateOf(path, emails);
    // A signal that outlives the request (a session's), its pool listeners counted.
    const { controller, signal, listeners } = countedSignal(poolListener);
    let send;
    let next;
    if (kind === "native" || kind === "runtime") {
      const f = createPoolFetch({ path, transport: kind });
      const requestBody = () => {
        if (!phase.streamedBody) return undefined;
        return new ReadableStream({
          start(c) {
            c.enqueue(new TextEncoder().encode(body().slice(0, 20)));
          },
          pull: () => new Promise(() => {}),
        });
      };
      send = (extra = {}) => f(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body: requestBody() ?? body(extra), signal, duplex: "half" });
      next = () => f(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body: body() });
    } else if (kind === "gateway") {
      gateway = await serve({ port: 0, path });
      const headers = { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": KEY };
      send = (extra = {}) => {
        if (!phase.streamedBody) return fetch(`${gateway.url}/v1/messages`, { method: "POST", headers, body: body(extra), signal });
        const stream = new ReadableStream({
          start(c) {
            c.enqueue(new TextEncoder().encode(body().slice(0, 20)));
          },
          pull: () => new Promise(() => {}),
        });
        return fetch(`${gateway.url}/v1/messages`, { method: "POST", headers, body: stream, signal, duplex: "half" });
      };
      next = () => fetch(`${gateway.url}/v1/messages`, { method: "POST", headers, body: body() });
    } else {
      // A host that hands its hooks the session's signal: OpenCode 2's promise adapter does not
      // (README, Aborts under OpenCode 2.x), and there these phases are not heard.
      host = createHost({ sleep: async () => {}, random: () => 0.5, hookSignal: true });
      handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
      const ask = (extra, s) =>
        host.modelRequest({
          providerID: "anthropic-pool",
          modelID: "claude-sonnet-4-5",
          body: { messages: [{ role: "user", content: "hi" }], ...extra },
          signal: s,
        });
      send = (extra = {}) => ask(extra, signal);
      next = () => ask({}, undefined);
    }
    const requestsAtStart = mock.requests.length;
    const abortNow = () => {
      if (reason === "default") controller.abort();
      else controller.abort(CUSTOM());
      if (reason === "twice") controller.abort(CUSTOM());
    };
    if (phase.before) abortNow();
    const reached = await within(phase.reach({ send }), 15_000, `${phaseName}: reaching the phase`);
    const closed = reached.upstream ? mock.waitFor("closed", (r) => r === reached.upstream) : null;
    if (phase.late) {
      assert.equal(listeners.size, 0, "the pool's listeners left the signal once the body ended");
      abortNow();
      await sleep(100);
    } else {
      if (!phase.before) abortNow();
      const requestsAtAbort = mock.requests.length;
      const expected = signal.reason;
      if (reached.closesBeforeRead && kind !== "gateway") {
        await within(closed, 5000, "the upstream connection closed on the abort, the body unread");
      }
      const pending = typeof reached.pending === "function" ? reached.pending() : reached.pending;
      const err = await within(
        pending.then(
          // A hook cannot fail the host's request (a hook that throws is a defect in 2.x): the
          // answer it hands back must fail the host's read with the reason, as fetch's would.
          (res) =>
            kind === "opencode2" && res instanceof Response
              ? res.text().then(
                  () => assert.fail("read whole after the abort"),
                  (e) => e,
                )
              : assert.fail("resolved after the abort"),
          (e) => e,
        ),
        5000,
        `${phaseName}: the caller's promise`,
      );
      // The gateway's client is fetch itself: only its going away is ours to check.
      if (kind !== "gateway") assert.equal(err, expected, `rejected with the signal's reason, not ${err?.stack ?? err}`);
      if (closed) await within(closed, 5000, "the upstream connection closed");
      for (const open of ctx.release.splice(0)) open();
      await sleep(250);
      assert.equal(mock.requests.length, requestsAtAbort, "nothing more went upstream after the abort");
      if (phase.before) assert.equal(mock.requests.length, requestsAtStart, "nothing went upstream");
    }
    for (const open of ctx.release.splice(0)) open();
    if (phase.refreshed || phase.refreshAfter) {
      // The refresh under way ends and writes its tokens: the next request uses them.
      const deadline = Date.now() + 10_000;
      while (mock.stats().perFamily[emails[0]].refreshCalls === 0 && Date.now() < deadline) await sleep(20);
    }
    await flushPool(path);
    const after = stateOf(path, emails);
    const mayMark = phase.marked?.(reached.upstream ?? {}, reached) ?? [];
    for (const email of emails) if (!mayMark.includes(email)) assert.deepEqual(after[email], before[email], `${email}: unchanged by the abort`);
    if (phase.mustMark) for (const email of mayMark) assert.equal(after[email].status, "rate-limited", `${email}: its 429 still counted`);
    // The same pool serves the next request.
    const res = await within(next(), 15_000, "the next request");
    assert.equal(res.status, 200, `the next request is served (${res.status})`);
    await res.text();
    if (phase.refreshed || phase.refreshAfter) {
      const fam = mock.stats().perFamily[emails[0]];
      assert.equal(fam.refreshCalls, 1, "one refresh: the one under way landed its tokens");
      assert.equal(fam.reuse, 0, "no refresh token presented twice");
    }
    await sleep(50);
    assert.deepEqual(stray.slice(strayBefore), [], "no unhandled rejection or warning");
  } finally {
    for (const open of ctx.release.splice(0)) open();
    mock.clearScripts();
    mock.setTokenMode(null);
    await handle?.unload();
    await gateway?.close(1000);
  }
}

// Aborted twice (the first reason stands) where a second abort could reach a second listener.
const TWICE = new Set(["during a refresh (token endpoint held)", "the resend on the next account in flight", "reading an event stream's opening", "mid-body"]);
const KINDS = (process.env.ABORTS_KINDS ?? "native,runtime,opencode2,gateway").split(",");
test("an abort of the caller's own (no reason given) rejects with an AbortError carrying the contract's code, ABORT_ERR, on both transports; a reason the caller chose is left as it is", async () => {
  const path = await seedPool(mock, ["coded-abort@x.test"]);
  for (const transport of ["native", "runtime"]) {
    const poolFetch = createPoolFetch({ path, transport });
    const before = new AbortController();
    before.abort();
    await assert.rejects(poolFetch(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body, signal: before.signal }), (e) => {
      assert.equal(e.name, "AbortError", transport);
      assert.equal(e.code, "ABORT_ERR", transport);
      return true;
    });
    const mine = new Error("mine");
    const chosen = new AbortController();
    chosen.abort(mine);
    await assert.rejects(
      poolFetch(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body, signal: chosen.signal }),
      (e) => e === mine && e.code === undefined,
    );
  }
});

for (const kind of KINDS) {
  for (const [phaseName, phase] of Object.entries(PHASES)) {
    if (phase.only && !phase.only.includes(kind)) continue;
    const reasons = kind === "gateway" || phase.late ? ["default"] : ["default", "custom", ...(TWICE.has(phaseName) ? ["twice"] : [])];
    for (const reason of reasons) {
      test(`${kind}: an abort ${phaseName} (${reason} reason)`, { timeout: 60_000 }, () => run(kind, phaseName, reason));
    }
  }
}

// A body sent whole (a Buffer) is handed upstream a piece at a time: given up while it is still
// uploading, the rest is not written. Hyper wrote a whole body it had been handed to its end,
// 20 MB going upstream after the caller left. The API here reads nothing until the abort, then
// everything it is sent until its connection closes: what it gets is what the sockets had taken
// by then, not the body. (Bytes hyper had queued stay queued while the API reads nothing: its
// connection is held until the API reads or TCP_USER_TIMEOUT, reqwest's 30 s, ends it.)
for (const kind of ["native", "runtime", "gateway"]) {
  test(`${kind}: an abort while a whole body is uploading stops the upload`, { timeout: 60_000 }, async () => {
    const path = await seedPool(mock, [`upload-${kind}@x.test`]);
    // Under the gateway's 32 MB limit on a request body.
    const size = 30 << 20;
    let received = 0;
    let arrived;
    const headArrived = new Promise((resolve) => (arrived = resolve));
    let closed;
    const connectionClosed = new Promise((resolve) => (closed = resolve));
    await withRawApi(
      (socket, first) => {
        received += first.length;
        socket.pause();
        socket.on("data", (d) => (received += d.length));
        socket.on("close", () => closed(received));
        arrived(socket);
      },
      async () => {
        const way = await throughPool(kind, path, { key: KEY });
        try {
          const controller = new AbortController();
          const pending = way.send({ method: "POST", headers: jsonHeaders, body: Buffer.alloc(size, 97), signal: controller.signal });
          const socket = await within(headArrived, 30_000, "the request's head upstream");
          const clients = await way.clientConnections();
          controller.abort();
          await assert.rejects(pending, (e) => e.name === "AbortError");
          // Read on only once the pool has given the request up: read at once, the gateway's
          // upload raced its noticing the client's close, and lost on a busy machine.
          await within(way.dropped(clients), 20_000, "the gateway dropping the connection its client closed");
          socket.resume();
          const total = await within(connectionClosed, 20_000, "the upstream connection closed after the abort");
          assert.ok(total < size / 2, `${total} of ${size} bytes went upstream: the upload went on after the abort`);
        } finally {
          await way.close();
        }
      },
    );
  });
}
