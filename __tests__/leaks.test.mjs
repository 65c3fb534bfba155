// Resources a long-running host must get back: what one request leaves behind on the caller's
// own objects, counted (not timed), under both transports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { setTimeout as sleep } from "node:timers/promises";
import { createPoolFetch, savePool } from "../index.mjs";
import { nativeBinding } from "../lib/native.mjs";
import { POOL_ANSWERS_KEPT, registerRequestHooks } from "../lib/opencode2/requests.mjs";
import { countedSignal, jsonHeaders, poolListener, seedPool, tempPoolPath, useMock } from "./helpers/pool-env.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import * as pluginModule from "../plugin.mjs";

const mock = useMock();

/** A full collection, finalizers included (Node without --expose-gc, and Bun). */
function collector() {
  if (typeof Bun !== "undefined") return () => Bun.gc(true);
  if (typeof globalThis.gc === "function") return globalThis.gc;
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc");
}

const post = (f, extra = {}, init = {}) =>
  f(`${mock.url}/v1/messages`, {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 16, messages: [{ role: "user", content: "hi" }], ...extra }),
    ...init,
  });

for (const transport of ["native", "runtime"]) {
  test(`${transport}: streamed answers dropped unread leave no listener on the caller's long-lived signal`, async () => {
    // One signal for a whole session (as a host keeps one per session or turn) and answers the
    // caller never reads to their end: each left an abort listener, and its request's controller,
    // on that signal for as long as the session lived (MaxListenersExceededWarning past 10).
    const path = await seedPool(mock, [`${transport}-unread@x.test`]);
    const f = createPoolFetch({ path, transport });
    const { signal, listeners } = countedSignal();
    const live = () => listeners.size;
    const N = 24;
    for (let i = 0; i < N; i++) {
      const res = await post(f, { stream: true }, { signal });
      assert.equal(res.status, 200);
      assert.match(res.headers.get("content-type") ?? "", /event-stream/);
    }
    const gc = collector();
    for (let i = 0; i < 50 && live() > 0; i++) {
      gc();
      await sleep(20);
    }
    assert.ok(live() <= N / 4, `${live()} of ${N} listeners still on the signal`);
  });
}

for (const transport of ["native", "runtime"]) {
  test(`${transport}: streamed answers dropped unread with a signal free their connections at a minor collection`, {
    skip: typeof Bun !== "undefined" && "V8's minor collection",
  }, async () => {
    // The body stream was watched (to take its listener off the signal once collected): V8 keeps
    // a watched object through minor collections, so every such answer kept its Rust body and
    // its upstream connection open until a full collection, which a small heap seldom needs
    // (2,300 connections open at once after 5,000 answers). Unwatched, they go with the young.
    const path = await seedPool(mock, [`${transport}-unread-minor@x.test`]);
    const f = createPoolFetch({ path, transport });
    const { signal } = new AbortController();
    collector()();
    const N = 40;
    for (let i = 0; i < N; i++) {
      const res = await post(f, { stream: true }, { signal });
      assert.equal(res.status, 200);
    }
    const minor = () => collector()({ type: "minor" });
    // Minor collections only, for as long as a busy machine needs to close the connections
    // (what kept them open waited for a full collection, which these never are).
    for (const deadline = Date.now() + 5000; Date.now() < deadline && mock.openConnections > N / 4; ) {
      minor();
      await sleep(20);
    }
    assert.ok(mock.openConnections <= N / 4, `${mock.openConnections} of ${N} connections still open after minor collections`);
  });
}

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a dozen requests at once on one signal print no memory-leak warning, as fetch's do not`, async () => {
    // Node warns (MaxListenersExceededWarning on stderr: "Possible EventTarget memory leak") at
    // the 11th abort listener on one signal; its fetch lifts a signal still at that limit before
    // it listens. The pool listened without it: 11 requests on a session's signal (one listener
    // each, two on the runtime transport) printed the warning, leak or none.
    const path = await seedPool(mock, [`${transport}-shared-signal@x.test`]);
    const f = createPoolFetch({ path, transport });
    const warnings = [];
    const onWarning = (w) => warnings.push(`${w.name}: ${w.message}`);
    process.on("warning", onWarning);
    try {
      const { signal } = new AbortController();
      const answers = await Promise.all(Array.from({ length: 12 }, () => post(f, { stream: true }, { signal })));
      await Promise.all(answers.map((res) => res.text()));
      await sleep(50);
    } finally {
      process.off("warning", onWarning);
    }
    assert.deepEqual(warnings, []);
  });
}

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a pool fetch made with an onEvent and dropped is collected, with what its onEvent holds`, async () => {
    // The listener a fetch with an onEvent hands its requests calls back through a native
    // thread-safe function, which holds its callback as a GC root; the callback held the
    // fetch's `notify`, whose scope held the listener: a cycle through a root. Every such fetch,
    // its onEvent and all that held, stayed for the life of the process (a host or a script
    // making a fetch per request or per session: 20,000 of them, 90 MB, and each request slower
    // than the last).
    const path = await seedPool(mock, [`${transport}-dropped-fetch@x.test`]);
    const collected = new Set();
    const watch = new FinalizationRegistry((i) => collected.add(i));
    const N = 12;
    const make = async (i) => {
      // What a caller's onEvent holds (a client, a session): it must go with the fetch.
      const held = { i };
      const f = createPoolFetch({ path, transport, onEvent: () => held });
      watch.register(held, i);
      const res = await post(f);
      assert.equal(res.status, 200);
      await res.text();
    };
    for (let i = 0; i < N; i++) await make(i);
    const gc = collector();
    for (let i = 0; i < 50 && collected.size < N; i++) {
      gc();
      await sleep(20);
    }
    assert.ok(collected.size >= N - 1, `${collected.size} of ${N} dropped fetches collected`);
  });
}

test("runtime: an abort that lands while the engine chooses the account sends nothing", async () => {
  // The runtime transport checked the signal before asking the engine, then listened for its
  // abort when sending: an abort in between (the engine's `next` awaited: a store read, a
  // refresh) had fired already, so the request went out anyway and held its connection until
  // the answer came, or the response timeout (5 minutes) passed.
  const path = await seedPool(mock, ["runtime-early-abort@x.test"]);
  const f = createPoolFetch({ path, transport: "runtime" });
  const { NativeExchange } = nativeBinding();
  const next = NativeExchange.prototype.next;
  const controller = new AbortController();
  let asked = 0;
  NativeExchange.prototype.next = function (...args) {
    asked++;
    return next.apply(this, args).then((step) => {
      controller.abort();
      return step;
    });
  };
  mock.clearRequests();
  try {
    await assert.rejects(post(f, {}, { signal: controller.signal }), (e) => e.name === "AbortError");
  } finally {
    NativeExchange.prototype.next = next;
  }
  assert.equal(asked, 1, "the engine was asked through the runtime (a fresh pool is read first)");
  assert.equal(mock.requests.length, 0, "nothing went upstream after the abort");
});

test("OpenCode 2 hooks: the pool's own 429s kept for the host's retry stay bounded", async () => {
  // Each session answered with the pool's 429 is remembered until the host's `retry` hook for
  // it; a host that gives up first (its tenth retry) never asks, and the entry stayed for the
  // life of the process, one per such session.
  const path = tempPoolPath();
  const soon = Date.now() + 600_000;
  const cooling = { email: "cool@x.test", refresh: "r-cool", access: "a-cool", expires: soon + 3_600_000, added: new Date().toISOString(), lastUsed: null };
  await savePool({ version: 1, anthropic: [{ ...cooling, status: "rate-limited", rateLimitUntil: soon }] }, path);
  const hooks = {};
  const ctx = {
    session: {
      hook: async (name, handler) => {
        hooks[name] = handler;
      },
    },
  };
  await registerRequestHooks(ctx, { providerID: "anthropic-pool", path, notify: () => {}, log: () => {} });
  const sessions = POOL_ANSWERS_KEPT + 5;
  for (let i = 0; i < sessions; i++) {
    const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1, messages: [] });
    const sent = { request: new Request(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body }), model: { id: "claude-sonnet-4-5" } };
    await hooks["http.request"](sent, {});
    assert.match(sent.request.url, /^data:/, "every account cools: answered locally");
    const answered = { request: sent.request, response: new Response("{}"), sessionID: `ses_${i}` };
    await hooks["http.response"](answered, {});
    assert.equal(answered.response.status, 429);
  }
  const proposed = { retry: true, delay: 1234 };
  const oldest = { sessionID: "ses_0", error: { status: 429 }, decision: proposed };
  await hooks.retry(oldest);
  assert.equal(oldest.decision, proposed, "the oldest session's entry is gone: the host's own decision stands");
  const newest = { sessionID: `ses_${sessions - 1}`, error: { status: 429 }, decision: proposed };
  await hooks.retry(newest);
  assert.notEqual(newest.decision, proposed, "a recent session still gets the pool's retry-after");
  assert.equal(newest.decision.retry, true);
});

test("OpenCode 2 hooks: a setup the host drops is collected, with the host's context its notices use", async () => {
  // The request hooks' event listener kept its notify (which, as the setup's does, holds the
  // host's context) from a native GC root, and that context holds the hooks, which hold the
  // listener: each setup a host unloaded (an instance disposed, a plugin reloaded) stayed, with
  // the host's context, for the life of the process.
  const path = await seedPool(mock, ["v2-dropped-setup@x.test"]);
  const collected = new Set();
  const watch = new FinalizationRegistry((i) => collected.add(i));
  const N = 6;
  const setup = async (i) => {
    const hooks = {};
    const ctx = {
      session: {
        hook: async (name, handler) => {
          hooks[name] = handler;
        },
      },
    };
    watch.register(ctx, i);
    const notify = (events) => ctx.session && events;
    await registerRequestHooks(ctx, { providerID: "anthropic-pool", path, notify, log: () => {} });
    const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1, messages: [] });
    const sent = { request: new Request(`${mock.url}/v1/messages`, { method: "POST", headers: jsonHeaders, body }), model: { id: "claude-sonnet-4-5" } };
    await hooks["http.request"](sent, {});
    const res = await fetch(sent.request);
    const answered = { request: sent.request, response: res, sessionID: `ses_dropped_${i}` };
    await hooks["http.response"](answered, {});
    assert.equal(answered.response.status, 200);
    await answered.response.text();
  };
  for (let i = 0; i < N; i++) await setup(i);
  const gc = collector();
  for (let i = 0; i < 50 && collected.size < N; i++) {
    gc();
    await sleep(20);
  }
  assert.ok(collected.size >= N - 1, `${collected.size} of ${N} dropped setups collected`);
});

test("OpenCode 2 hooks: a send that fails leaves no listener on the host's signal once the host drops it", async () => {
  // No http.response comes for a request whose send failed (the host retries with a new one):
  // its abort listener, holding its exchange, stayed on the host's signal (one per failed send,
  // for a turn's whole life across its steps and retries).
  const path = tempPoolPath();
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const attempt = await host.oauthConnect({ integrationID: "anthropic-pool", methodID: "claude-max" });
  await host.oauthComplete({ integrationID: "anthropic-pool", attemptID: attempt.attemptID, code: mock.approve(attempt.url, "v2-failed-send@x.test") });
  const { controller, listeners: ours } = countedSignal(poolListener);
  const failed = 5;
  mock.clearRequests();
  mock.scriptAll(Array.from({ length: failed }, () => ({ sse: false, resetAfterBytes: 0 })));
  try {
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body: { messages: [] }, signal: controller.signal });
    assert.equal(res.status, 200, "the host's retries reach an answer");
    await res.text();
    assert.equal(mock.requests.length, failed + 1);
    const gc = collector();
    for (let i = 0; i < 50 && ours.size > 0; i++) {
      gc();
      await sleep(20);
    }
    assert.equal(ours.size, 0, `${ours.size} of ${failed} failed sends' listeners still on the signal`);
  } finally {
    mock.clearScripts();
    await handle.unload();
  }
});
