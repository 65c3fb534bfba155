// What a long OpenCode 2 session does around the plugin: its setup disposed and set up again
// while requests are out, two setups alive at once, other plugins' hooks around ours, hundreds
// of sessions, aborts in the middle of a stream's opening and of a retry, the host's own retry
// policy against the pool's remembered 429s. Through the harness built from OpenCode 2's source
// (helpers/opencode2-host.mjs) against the loopback mock. Runs under Node and Bun.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as pluginModule from "../plugin.mjs";
import { resetCooldowns } from "../index.mjs";
import { parseSSE, rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { countedSignal, poolListener, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";
import { createHost, loadPlugin, ModelRequestError, reloadingHost, withLogLines } from "./helpers/opencode2-host.mjs";

const mock = useMock();

const MODEL = "claude-sonnet-4-5";
const body = { messages: [{ role: "user", content: "hi" }] };
const ask = (host, extra = {}) => host.modelRequest({ providerID: "anthropic-pool", modelID: MODEL, body, ...extra });
const settled = (promise) =>
  promise.then(
    (value) => value,
    (err) => err,
  );
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const textOf = (sse) =>
  parseSSE(sse)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");
/** The /v1/messages requests the mock got since `from`, by account. */
const upstream = (from) =>
  mock.requests
    .slice(from)
    .filter((r) => r.path.startsWith("/v1/messages"))
    .map((r) => r.email);

/** `promise`, or `fallback` when it has not settled within `ms` (a hang, told apart). */
async function within(ms, promise, fallback) {
  let timer;
  try {
    return await Promise.race([promise, new Promise((r) => (timer = setTimeout(() => r(fallback), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Another plugin in the same host, whose `setup` registers what it is given. */
const otherPlugin = (id, setup) => ({ id, kind: "setup", plugin: { id, setup } });

const MESSAGE_START =
  'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_life","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n';
const SSE = { "content-type": "text/event-stream" };

test("a stream that breaks off in its opening, or that the host gives up during it, fails the host's read at once", async () => {
  // The opening is read from the host's answer before it is handed over; a read that failed
  // there with no chunk yet to replay left a body whose first read waited for ever.
  const path = await seedPool(mock, ["life-open@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    mock.script("life-open@x.test", [{ raw: [MESSAGE_START], headers: SSE, resetAfterBytes: Buffer.byteLength(MESSAGE_START) }]);
    const broken = await settled(ask(host));
    const read = broken instanceof Response ? await within(20_000, settled(broken.text()), "still waiting") : broken;
    assert.ok(read instanceof Error, `the host's read of a stream reset in its opening: ${read}`);
    assert.match(String(read.message), /NETWORK|network|terminated|reset|closed/i);

    // The host gives up while the opening is read (the answer's head came, then nothing).
    const { controller, listeners } = countedSignal(poolListener);
    mock.script("life-open@x.test", [{ raw: [MESSAGE_START], headers: SSE, thenHang: true }]);
    const pending = ask(host, { signal: controller.signal });
    setTimeout(() => controller.abort(), 300);
    const given = await within(20_000, settled(pending), "still waiting");
    const after = given instanceof Response ? await within(20_000, settled(given.text()), "still waiting") : given;
    assert.ok(after instanceof Error, `after the host gave up: ${after}`);
    assert.equal(listeners.size, 0, "no listener left on the host's signal");

    // The account still serves.
    const ok = await ask(host);
    assert.equal(textOf(await ok.text()), "Hello from life-open@x.test");
  } finally {
    mock.clearScripts();
    await handle.unload();
  }
});

test("the plugin set up again while a request is out: the pool's 429 past the host's cap is final at once, as without the reload", async () => {
  // The pool's own 429 is given by the setup that placed the request; the host's `retry` that
  // follows is heard by the setup registered by then. What the first remembered, the second
  // did not know: the host waited its capped 15 minutes where the pool said not to retry.
  const path = await seedPool(mock, ["life-cap@x.test"]);
  const far = Math.floor(Date.now() / 1000) + 7999;
  mock.script("life-cap@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 7999, fiveHourReset: far }) }]);
  const sleeps = [];
  let reloaded = false;
  const { host, unload } = await reloadingHost(
    pluginModule,
    { path },
    {
      sleep: async (ms) => void sleeps.push(ms),
      afterFetch: async (_url, reload) => {
        if (reloaded) return;
        reloaded = true;
        await reload();
      },
    },
  );
  try {
    const failure = await settled(ask(host));
    assert.ok(reloaded, "the plugin was set up again while the request was out");
    assert.ok(failure instanceof ModelRequestError, String(failure));
    assert.equal(failure.error.status, 429);
    assert.match(failure.error.message, /every account is rate-limited/);
    assert.deepEqual(sleeps, [], "the host did not wait 15 minutes for a retry the pool said was pointless");
    assert.equal(host.hooks().filter((h) => h.name === "http.request").length, 1, "one setup's hooks left");
  } finally {
    await unload();
    await resetCooldowns(path);
  }
});

test("a 429 long after a pool 429 the host never retried (a title request) gets the host's own delay, not 'at once'", async () => {
  // OpenCode 2 runs a new session's title request beside its first turn, with the same session
  // id, and never retries it: the pool's 429 remembered for it waited for a `retry` of that
  // session. A later failure in the session (the resend on another account failed: the host
  // gets the pool's 503) took it: "wait what is left of it", long past, so 0.
  const path = await seedPool(mock, ["life-t1@x.test", "life-t2@x.test"]);
  const soon = Math.floor(Date.now() / 1000) + 120;
  for (const email of ["life-t1@x.test", "life-t2@x.test"])
    mock.script(email, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const realNow = Date.now;
  try {
    const title = await settled(ask(host, { sessionID: "ses_life_title", kind: "title" }));
    assert.equal(title?.error?.status, 429, "every account cools: the pool's 429");
    assert.deepEqual(sleeps, [], "a title request is not retried");
    // Twenty minutes later, the accounts usable again: the first account answers 429 (30 s) and
    // the resend on the other loses its connection.
    await resetCooldowns(path);
    Date.now = () => realNow() + 20 * 60_000;
    mock.scriptAll([
      { status: 429, headers: rateLimitHeaders({ retryAfter: 30 }) },
      { sse: false, resetAfterBytes: 0 },
    ]);
    const res = await withLogLines(() => ask(host, { sessionID: "ses_life_title" }));
    await res.text();
    assert.ok(sleeps.length >= 1);
    // The host's own delay for the pool's 503 (2 s at its first retry), not "at once".
    assert.ok(sleeps[0] >= 1_000, `the host waited ${sleeps[0]} ms`);
  } finally {
    Date.now = realNow;
    mock.clearScripts();
    await handle.unload();
    await resetCooldowns(path);
  }
});

test("the host giving up in the middle of a retry on another account ends it quietly, with nothing left listening", async () => {
  const path = await seedPool(mock, ["life-r1@x.test", "life-r2@x.test"]);
  // A host that hands hooks a signal (OpenCode 2 does not: README, Aborts under OpenCode 2.x).
  const host = createHost({ sleep: async () => {}, random: () => 0.5, hookSignal: true });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const { controller, listeners } = countedSignal(poolListener);
  try {
    await withLogLines(async (lines) => {
      // The first account's 429 moves the request; the other account never answers.
      mock.scriptAll([{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }, { hang: true }]);
      const from = mock.requests.length;
      const pending = ask(host, { signal: controller.signal });
      for (let i = 0; i < 200 && upstream(from).length < 2; i++) await sleep(25);
      assert.equal(upstream(from).length, 2, "the retry on the other account is out");
      controller.abort();
      const outcome = await within(20_000, settled(pending), "still waiting");
      assert.ok(outcome instanceof Error && outcome.name === "AbortError", String(outcome));
      await sleep(50);
      assert.deepEqual(
        lines.filter((l) => /warn:|error:/.test(l)),
        [],
        "the person's own abort is no failure of the pool",
      );
    });
    assert.equal(listeners.size, 0);
  } finally {
    mock.clearScripts();
    await handle.unload();
    await resetCooldowns(path);
  }
});

// OpenCode 2 hands its hooks no signal (packages/plugin/src/promise/adapter.ts calls
// `callback(event)`), so nothing but the pool's own limit ends a retry whose account never
// answers: it held the host's request for ever (the resend is sent with `timeout: false`).
test("a retry on another account that never answers is cut at OAUTH_POOL_RESPONSE_TIMEOUT_MS on a host that gives hooks no signal: the host gets the pool's 503 and asks again", async () => {
  const path = await seedPool(mock, ["life-h1@x.test", "life-h2@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS = "400";
  try {
    await withLogLines(async (lines) => {
      mock.scriptAll([{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }, { hang: true }]);
      const from = mock.requests.length;
      const outcome = await within(15_000, settled(ask(host)), "still waiting");
      assert.notEqual(outcome, "still waiting", "the host's request was held by a silent retry");
      assert.ok(upstream(from).length >= 2, "the retry on the other account went out");
      assert.ok(
        lines.some((l) =>
          /warn: .*the request's resend \(after a 429 or 401\) failed, so the host gets the pool's 503 and asks again: NETWORK no response headers within 400 ms/.test(
            l,
          ),
        ),
        lines.join("\n"),
      );
    });
  } finally {
    delete process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS;
    mock.clearScripts();
    await handle.unload();
    await resetCooldowns(path);
  }
});

test("the plugin disposed and set up again during a stream's opening: its rate limit still moves the request, answered once", async () => {
  const path = await seedPool(mock, ["life-d1@x.test", "life-d2@x.test"]);
  const pool = readPool(path);
  pool.anthropic[0].priority = 9;
  const { savePool } = await import("../index.mjs");
  await savePool(pool, path);
  let reloading;
  const { host, unload } = await reloadingHost(
    pluginModule,
    { path },
    {
      // The reload lands while the pool's hook reads the answer's opening (its events come 150 ms
      // apart).
      afterFetch: (_url, reload) => {
        reloading ??= sleep(75).then(() => reload());
      },
    },
  );
  try {
    mock.script("life-d1@x.test", [{ sse: true, errorBeforeContent: true, errorType: "rate_limit_error", delayMs: 150 }]);
    const from = mock.requests.length;
    const res = await ask(host);
    const events = parseSSE(await res.text());
    await reloading;
    assert.equal(
      events
        .filter((e) => e.event === "content_block_delta")
        .map((e) => e.data.delta.text)
        .join(""),
      "Hello from life-d2@x.test",
    );
    assert.equal(events.filter((e) => e.event === "message_start").length, 1, "one answer, whole");
    assert.ok(!events.some((e) => e.event === "error"));
    assert.deepEqual(upstream(from), ["life-d1@x.test", "life-d2@x.test"]);
    assert.equal(host.hooks().filter((h) => h.name === "http.response").length, 1, "the disposed setup's hooks are gone");
    // The setup that followed serves on its own.
    const next = await ask(host);
    assert.equal(next.status, 200);
    await next.text();
  } finally {
    await unload();
    await resetCooldowns(path);
  }
});

test("two setups alive at once and other plugins' hooks around ours: each request placed and judged once; what is not ours is left alone", async () => {
  // A project config and the global one both naming the plugin (two setups, registered one
  // after the other); another plugin that reads each answer whole before ours and gives the
  // host a new Response of it; one that gives the request a streamed body; one that disposes a
  // setup of ours while the host runs its http.request hooks (hooks.ts: still called then).
  const path = await seedPool(mock, ["life-two1@x.test", "life-two2@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  let disposeSecond = false;
  let second;
  const reader = await host.start(
    otherPlugin("reader", async (ctx) => {
      await ctx.session.hook(
        "http.response",
        async (event) => {
          const text = await event.response.text();
          event.response = new Response(text, { status: event.response.status, headers: event.response.headers });
        },
        { providerID: "anthropic-pool" },
      );
      await ctx.session.hook(
        "http.request",
        async (event) => {
          const bytes = new Uint8Array(await event.request.clone().arrayBuffer());
          const stream = new ReadableStream({
            start(c) {
              c.enqueue(bytes);
              c.close();
            },
          });
          event.request = new Request(event.request.url, { method: "POST", headers: event.request.headers, body: stream, duplex: "half" });
          if (disposeSecond) {
            disposeSecond = false;
            await second.unload();
          }
        },
        { providerID: "anthropic-pool" },
      );
    }),
  );
  const first = await host.start(loadPlugin(pluginModule, { options: { path } }));
  // The second setup's hooks are also kept here, to call one as the host may: with an answer to
  // a request no pool hook placed.
  const hooks = {};
  second = await host.start(
    otherPlugin("oauth-pool", (ctx) =>
      pluginModule.default.setup({
        ...ctx,
        options: { path },
        session: {
          ...ctx.session,
          hook: async (name, callback, options) => {
            hooks[name] = callback;
            return ctx.session.hook(name, callback, options);
          },
        },
      }),
    ),
  );
  try {
    await withLogLines(async (lines) => {
      mock.clearRequests();
      const res = await ask(host);
      assert.match(textOf(await res.text()), /^Hello from life-two[12]@x\.test$/);
      assert.equal(upstream(0).length, 1, "placed once");
      // A rate limit in the opening of a body the earlier hook already read: the next account.
      mock.scriptAll([{ sse: true, errorBeforeContent: true, errorType: "rate_limit_error" }]);
      const moved = await ask(host);
      const events = parseSSE(await moved.text());
      assert.equal(events.filter((e) => e.event === "message_start").length, 1);
      assert.ok(!events.some((e) => e.event === "error"));
      assert.equal(upstream(1).length, 2, "the limited account, then the other, with the streamed body");
      // An answer to a request no pool hook placed is left as it came.
      const foreign = new Response("not ours", { status: 429 });
      const event = {
        sessionID: "ses_life_foreign",
        model: { id: MODEL, providerID: "anthropic-pool" },
        request: new Request(`${mock.url}/v1/messages`),
        response: foreign,
      };
      await hooks["http.response"](event);
      assert.equal(event.response, foreign);
      assert.equal(await foreign.text(), "not ours");
      // The second setup disposed while the host runs the http.request hooks it began with.
      disposeSecond = true;
      const during = await ask(host);
      assert.equal(during.status, 200);
      await during.text();
      assert.equal(host.hooks().filter((h) => h.name === "http.request" && h.plugin === "oauth-pool").length, 1);
      assert.deepEqual(
        lines.filter((l) => /warn:|error:/.test(l)),
        [],
      );
    });
  } finally {
    await reader.unload();
    await first.unload();
    await resetCooldowns(path);
  }
});

test("hundreds of sessions at once, some given up mid-stream: each served whole by one account, nothing left listening, no token logged", async () => {
  const emails = ["life-m1@x.test", "life-m2@x.test", "life-m3@x.test"];
  const path = await seedPool(mock, emails);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const { controller, listeners } = countedSignal(poolListener);
  const SESSIONS = 300;
  try {
    await withLogLines(async (lines) => {
      // Two answers are a rate limit in the stream's opening (each rests its account a few
      // seconds): those requests, and the ones placed on those accounts meanwhile, move on.
      mock.scriptAll([0, 1].map(() => ({ sse: true, errorBeforeContent: true, errorType: "rate_limit_error" })));
      const outcomes = await Promise.all(
        Array.from({ length: SESSIONS }, async (_, i) => {
          const own = i % 7 === 0 ? new AbortController() : null;
          const signal = own ? AbortSignal.any([own.signal, controller.signal]) : controller.signal;
          const res = await settled(ask(host, { sessionID: `ses_life_${i}`, signal }));
          if (!(res instanceof Response)) return { i, error: res };
          if (own) {
            const r = res.body.getReader();
            await r.read();
            own.abort();
            await r.cancel().catch(() => {});
            return { i, gaveUp: true };
          }
          return { i, text: textOf(await res.text()) };
        }),
      );
      const served = outcomes.filter((o) => o.text !== undefined);
      const failed = outcomes.filter((o) => o.error);
      assert.deepEqual(
        failed.map((o) => `${o.i}: ${o.error?.error?.message ?? o.error?.message}`),
        [],
      );
      for (const o of served) assert.match(o.text, /^Hello from life-m[123]@x\.test$/, `session ${o.i}`);
      assert.equal(served.length + outcomes.filter((o) => o.gaveUp).length, SESSIONS);
      const secrets = readPool(path)
        .anthropic.flatMap((a) => [a.access, a.refresh])
        .filter(Boolean);
      for (const line of lines) for (const s of secrets) assert.ok(!line.includes(s), "a credential reached the log");
    });
    assert.equal(listeners.size, 0, "every request's abort listener removed");
  } finally {
    mock.clearScripts();
    await handle.unload();
    await resetCooldowns(path);
  }
});

test("a host that reads the pool's local stand-in itself (the plugin unloaded meanwhile) reads the pool's message as a stream's error, not a 200 {}", async () => {
  // Every account cools: the request is pointed at a data: URL the runtime answers locally, and
  // the pool's http.response hook puts its 429 in its place. Unloaded in between and not set up
  // again, no hook replaces it, and the host reads the stand-in as the model's answer.
  const path = await seedPool(mock, ["life-s1@x.test"]);
  const far = Math.floor(Date.now() / 1000) + 600;
  mock.script("life-s1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600, fiveHourReset: far }) }]);
  let handle;
  let unloaded = false;
  const host = createHost({
    sleep: async () => {},
    random: () => 0.5,
    fetch: async (url, init) => {
      const res = await globalThis.fetch(url, init);
      if (String(url).startsWith("data:") && !unloaded) {
        unloaded = true;
        await handle.unload();
      }
      return res;
    },
  });
  handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    // The first attempt meets the 429, which cools the only account; the host's retry of the
    // pool's 429 is answered by the pool itself, through the stand-in.
    const res = await settled(ask(host, { sessionID: "ses_life_standin" }));
    assert.ok(unloaded, "the plugin was unloaded while its stand-in was out");
    const events = parseSSE(await res.text());
    const error = events.find((e) => e.event === "error");
    assert.ok(error, `the host read the pool's answer, not an empty one: ${JSON.stringify(events)}`);
    assert.equal(error.data.error.type, "rate_limit_error");
    assert.match(error.data.error.message, /every account is rate-limited/);
  } finally {
    if (!unloaded) await handle.unload();
    await resetCooldowns(path);
  }
});

test("a plugin after ours that makes a new request of ours: its 429 still moves to the next account, with that plugin's header kept", async () => {
  // The host runs the http.request hooks in order on one event object (hooks.ts) and hands
  // http.response the request the last of them left (model-http.ts `before.request`). A plugin
  // registered after ours that replaced the request (a tracing header, a body rewritten) made
  // its answer one no pool hook placed: the account's 429 reached the host unjudged.
  const path = await seedPool(mock, ["life-after1@x.test", "life-after2@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const ours = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const tracer = await host.start(
    otherPlugin("tracer", async (ctx) => {
      await ctx.session.hook(
        "http.request",
        async (event) => {
          const headers = new Headers(event.request.headers);
          headers.set("x-trace-id", "trace-1");
          headers.delete("x-opencode-session");
          headers.set("anthropic-beta", [headers.get("anthropic-beta"), "context-1m-2025-08-07"].filter(Boolean).join(","));
          event.request = new Request(event.request, { headers });
        },
        { providerID: "anthropic-pool" },
      );
    }),
  );
  try {
    await withLogLines(async (lines) => {
      mock.clearRequests();
      const first = await ask(host);
      assert.equal(first.status, 200);
      const servedBy = /Hello from (\S+)/.exec(textOf(await first.text()))?.[1];
      assert.ok(servedBy, "served");
      const other = servedBy === "life-after1@x.test" ? "life-after2@x.test" : "life-after1@x.test";
      mock.script(servedBy, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120 }) }]);
      const from = mock.requests.length;
      const moved = await ask(host);
      assert.equal(moved.status, 200, "the 429 did not reach the host");
      assert.equal(textOf(await moved.text()), `Hello from ${other}`);
      assert.deepEqual(upstream(from), [servedBy, other]);
      const resent = mock.requests.slice(from).filter((r) => r.path.startsWith("/v1/messages"))[1];
      assert.equal(resent.headers["x-trace-id"], "trace-1", "the later plugin's header is kept on the resend");
      assert.equal(resent.headers["x-opencode-session"], undefined, "and the header it removed stays removed");
      assert.equal(resent.auth, "bearer");
      assert.deepEqual(resent.headers["anthropic-beta"].split(",").sort(), ["context-1m-2025-08-07", "oauth-2025-04-20"], "its beta too");
      // Every account cooling: the pool's 429 (the stand-in answered locally), nothing upstream.
      mock.script(other, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120 }) }]);
      const third = mock.requests.length;
      const cooled = await settled(ask(host));
      const before = mock.requests.length;
      const all = await settled(ask(host));
      assert.equal(mock.requests.length, before, "nothing went upstream while every account cools");
      for (const answer of [cooled, all]) assert.equal(answer?.status ?? answer?.error?.status, 429, String(answer));
      assert.equal(upstream(third).length, 1);
      await resetCooldowns(path);
      // A plugin after ours that sends the request elsewhere (its own relay): that answer is
      // not ours to judge, and no account's credential is sent there again.
      const relay = [];
      const relayed = await host.start(
        otherPlugin("relay", async (ctx) => {
          await ctx.session.hook(
            "http.request",
            async (event) => {
              relay.push(event.request.headers.has("authorization"));
              const headers = new Headers(event.request.headers);
              headers.delete("authorization");
              headers.set("x-api-key", "relay-own-key");
              event.request = new Request(`${mock.url}/v1/messages?via=relay`, { method: "POST", headers, body: await event.request.text() });
            },
            { providerID: "anthropic-pool" },
          );
        }),
      );
      try {
        const count = mock.requests.length;
        const elsewhere = await settled(ask(host));
        const sent = mock.requests.slice(count);
        assert.deepEqual(relay, [true], "ours had placed it");
        assert.ok(
          sent.length >= 1 && sent.every((r) => r.path.endsWith("?via=relay") && !r.headers.authorization),
          JSON.stringify(sent.map((r) => [r.path, r.auth])),
        );
        assert.equal(elsewhere?.status ?? elsewhere?.error?.status, 401, "the relay's own answer");
      } finally {
        await relayed.unload();
      }
      assert.deepEqual(
        lines.filter((l) => /warn:|error:/.test(l) && !/every account is rate-limited/.test(l)),
        [],
      );
    });
  } finally {
    await tracer.unload();
    await ours.unload();
    await resetCooldowns(path);
  }
});

test("a plugin after ours that keeps the request on the API but changes its URL (?beta=true): its 429 still moves to the next account", async () => {
  // The Anthropic SDK's beta route is the same endpoint with `?beta=true`; a plugin after ours
  // that sends it there still sends it to the API the account's credential is for. Judged only
  // on an exact URL, its account's 429 reached the host unjudged, with no failover.
  const path = await seedPool(mock, ["life-beta1@x.test", "life-beta2@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const ours = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const beta = await host.start(
    otherPlugin("beta-route", async (ctx) => {
      await ctx.session.hook(
        "http.request",
        async (event) => {
          const url = new URL(event.request.url);
          url.searchParams.set("beta", "true");
          event.request = new Request(url, event.request);
        },
        { providerID: "anthropic-pool" },
      );
    }),
  );
  try {
    mock.clearRequests();
    const first = await ask(host);
    assert.equal(first.status, 200);
    const servedBy = /Hello from (\S+)/.exec(textOf(await first.text()))?.[1];
    assert.ok(servedBy, "served");
    const other = servedBy === "life-beta1@x.test" ? "life-beta2@x.test" : "life-beta1@x.test";
    mock.script(servedBy, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120 }) }]);
    const from = mock.requests.length;
    const moved = await settled(ask(host));
    assert.equal(moved?.status ?? moved?.error?.status, 200, "the 429 did not reach the host");
    assert.equal(textOf(await moved.text()), `Hello from ${other}`);
    assert.deepEqual(upstream(from), [servedBy, other]);
    const resent = mock.requests.slice(from).filter((r) => r.path.startsWith("/v1/messages"))[1];
    assert.ok(resent.path.endsWith("?beta=true"), resent.path);
  } finally {
    await beta.unload();
    await ours.unload();
    await resetCooldowns(path);
  }
});
