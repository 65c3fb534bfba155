// A rate limit said inside a 200 event stream before any content (Anthropic answers 200, sends
// message_start and maybe a ping, then `event: error` of `rate_limit_error`, and ends) moves the
// request to the next account as a 429 does, before a byte reaches the caller; peers' users:
// "streaming rate limits never reach failover". Through the three ways an answer reaches a
// caller: the library's fetch on the Rust client and on the runtime's own fetch, and the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { flushPool, savePool } from "../index.mjs";
import { parseSSE } from "./helpers/mock-anthropic.mjs";
import { account, jsonHeaders, readPool, seedPool, useMock, withEnv } from "./helpers/pool-env.mjs";
import { throughPool, withRawApi } from "./helpers/raw-api.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import { createPoolFetch } from "../index.mjs";
import * as pluginModule from "../plugin.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });
const KINDS = ["native", "runtime", "gateway"];
const MODEL = "claude-sonnet-4-5";
const init = (extra = {}) => ({
  method: "POST",
  headers: jsonHeaders,
  body: JSON.stringify({ model: MODEL, max_tokens: 64, stream: true, messages: [{ role: "user", content: "hi" }], ...extra }),
});

/** A pool of `emails` whose first is tried first; `send(init)` through `kind`, events heard. */
async function poolOf(kind, emails) {
  const path = await seedPool(mock, emails);
  const pool = readPool(path);
  pool.anthropic[0].priority = 9;
  await savePool(pool, path);
  const events = [];
  if (kind === "gateway") {
    const gw = await throughPool(kind, path, { key: KEY });
    return { path, events, send: (i) => gw.send(i), close: gw.close };
  }
  const f = createPoolFetch({ path, transport: kind, onEvent: (e) => events.push(e) });
  return { path, events, send: (i) => f(`${mock.url}/v1/messages`, i), close: async () => {} };
}

/** The /v1/messages requests the mock got since `from`, by account. */
const upstream = (from) =>
  mock.requests
    .slice(from)
    .filter((r) => r.path.startsWith("/v1/messages"))
    .map((r) => r.email);

const rests = (path, email) => account(path, email).rateLimitUntil ?? 0;
/** How a request through `pool` ended: its answer read whole, or its rejection. */
async function outcomeOf(pool) {
  try {
    const res = await pool.send(init());
    return { status: res.status, code: res.headers.get("x-oauth-pool-error"), body: await res.text() };
  } catch (err) {
    return { rejected: err };
  }
}

for (const kind of KINDS) {
  test(`a rate_limit_error before any content moves the request to the next account: the caller gets its whole stream, the first account rests (${kind})`, async () => {
    const [first, second] = [`sf1-${kind}@x.test`, `sf2-${kind}@x.test`];
    const pool = await poolOf(kind, [first, second]);
    try {
      mock.script(first, [
        {
          sse: true,
          errorBeforeContent: true,
          errorType: "rate_limit_error",
          errorMessage: "Number of request tokens has exceeded your per-minute rate limit",
        },
      ]);
      const from = mock.requests.length;
      const res = await pool.send(init());
      assert.equal(res.status, 200);
      if (kind !== "gateway") assert.equal(res.poolAccount, second);
      const events = parseSSE(await res.text());
      assert.deepEqual(upstream(from), [first, second], "the same request, once on each");
      assert.equal(events.filter((e) => e.event === "message_start").length, 1, "one message_start: nothing of the first stream");
      assert.ok(!events.some((e) => e.event === "error"), JSON.stringify(events));
      const text = events
        .filter((e) => e.event === "content_block_delta")
        .map((e) => e.data.delta.text)
        .join("");
      assert.equal(text, `Hello from ${second}`);
      assert.equal(events.at(-1).event, "message_stop");
      await flushPool(pool.path);
      assert.ok(rests(pool.path, first) > Date.now() - 1000, "the first account rests, in the pool file");
      assert.equal(rests(pool.path, second), 0);
      if (kind !== "gateway") {
        assert.ok(
          pool.events.some((e) => e.kind === "failover" && e.email === first && e.to === second),
          JSON.stringify(pool.events),
        );
        // Acted on once: no second rest when anything ends later.
        const next = await pool.send(init());
        await next.text();
        assert.equal(next.poolAccount, second);
        const told = pool.events.filter((e) => e.kind === "rate-limited" && e.email === first);
        assert.equal(told.length, 1, JSON.stringify(pool.events));
        assert.match(told[0].message, /event stream/);
      }
    } finally {
      await pool.close();
    }
  });

  test(`every account saying rate_limit_error before any content: the pool's own 429 with retry-after (${kind})`, async () => {
    const emails = [`sfa1-${kind}@x.test`, `sfa2-${kind}@x.test`];
    const pool = await poolOf(kind, emails);
    try {
      for (const e of emails) mock.script(e, [{ sse: true, errorBeforeContent: true, errorType: "rate_limit_error" }]);
      const from = mock.requests.length;
      const res = await pool.send(init());
      assert.equal(res.status, 429);
      assert.equal(res.headers.get("x-oauth-pool"), "all-accounts-cooling");
      assert.ok(Number(res.headers.get("retry-after")) >= 1);
      assert.equal((await res.json()).error.type, "rate_limit_error");
      assert.deepEqual(upstream(from).sort(), [...emails].sort());
    } finally {
      await pool.close();
    }
  });

  test(`an overloaded_error before any content is delivered as it came and rests nobody (${kind})`, async () => {
    const [first, second] = [`sfo1-${kind}@x.test`, `sfo2-${kind}@x.test`];
    const pool = await poolOf(kind, [first, second]);
    try {
      mock.script(first, [{ sse: true, errorBeforeContent: true, errorType: "overloaded_error" }]);
      const from = mock.requests.length;
      const res = await pool.send(init());
      assert.equal(res.status, 200);
      if (kind !== "gateway") assert.equal(res.poolAccount, first);
      const events = parseSSE(await res.text());
      assert.deepEqual(
        events.map((e) => e.event),
        ["message_start", "ping", "error"],
      );
      assert.equal(events.at(-1).data.error.type, "overloaded_error");
      assert.deepEqual(upstream(from), [first]);
      await flushPool(pool.path);
      assert.equal(rests(pool.path, first), 0, "Anthropic's overload benches nobody");
    } finally {
      await pool.close();
    }
  });

  test(`a rate_limit_error after content began is passed through, never replayed, and rests the account once (${kind})`, async () => {
    const [first, second] = [`sfc1-${kind}@x.test`, `sfc2-${kind}@x.test`];
    const pool = await poolOf(kind, [first, second]);
    try {
      mock.script(first, [{ sse: true, errorAfterDeltas: 1, errorType: "rate_limit_error" }]);
      const from = mock.requests.length;
      const res = await pool.send(init({ messages: [{ role: "user", content: "a longer answer, please" }] }));
      assert.equal(res.status, 200);
      if (kind !== "gateway") assert.equal(res.poolAccount, first);
      const events = parseSSE(await res.text());
      assert.ok(events.some((e) => e.event === "content_block_delta"));
      assert.equal(events.at(-1).event, "error");
      assert.deepEqual(upstream(from), [first], "not replayed");
      await flushPool(pool.path);
      assert.ok(rests(pool.path, first) > Date.now() - 1000, "rested when the stream ended");
      if (kind !== "gateway") {
        const next = await pool.send(init());
        await next.text();
        assert.equal(next.poolAccount, second);
        assert.equal(pool.events.filter((e) => e.kind === "rate-limited" && e.email === first).length, 1, JSON.stringify(pool.events));
        assert.ok(!pool.events.some((e) => e.kind === "failover"), JSON.stringify(pool.events));
      }
    } finally {
      await pool.close();
    }
  });
}

for (const kind of KINDS) {
  test(`a reset in the opening fails the request with NETWORK before any byte, is not replayed, and rests nobody (${kind})`, async () => {
    const [first, second] = [`sfr1-${kind}@x.test`, `sfr2-${kind}@x.test`];
    const pool = await poolOf(kind, [first, second]);
    try {
      // Inside message_start.
      mock.script(first, [{ sse: true, resetAfterBytes: 300 }]);
      const from = mock.requests.length;
      const outcome = await outcomeOf(pool);
      if (kind === "gateway") assert.deepEqual([outcome.status, outcome.code], [502, "NETWORK"], JSON.stringify(outcome));
      else assert.equal(outcome.rejected?.code, "NETWORK", String(outcome.rejected ?? JSON.stringify(outcome)));
      assert.deepEqual(upstream(from), [first], "not replayed");
      await flushPool(pool.path);
      assert.equal(rests(pool.path, first), 0);
    } finally {
      await pool.close();
    }
  });
}

const SSE_HEAD = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
const chunk = (text) => {
  const bytes = Buffer.from(text);
  return Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from("\r\n")]);
};
const START =
  'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"usage":{"input_tokens":3,"output_tokens":1}}}\r\n\r\n';
const PING = 'event: ping\r\ndata: {"type": "ping"}\r\n\r\n';
const BLOCK = 'event: content_block_start\r\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\r\n\r\n';
const REST = [
  'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\u00e9llo"}}\r\n\r\n',
  'event: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\n',
  'event: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}\r\n\r\n',
  'event: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n',
];

for (const kind of KINDS) {
  test(`a normal stream passes byte for byte, handed over at its first content event and not later (${kind})`, async () => {
    const path = await seedPool(mock, [`sfn-${kind}@x.test`]);
    let headReached;
    const reached = new Promise((r) => (headReached = r));
    // The BOM and a comment are part of the bytes; the content's rest is written only once the
    // caller holds the answer: an opening read past the first content event would never end.
    const opening = `\ufeff: hi\r\n${START}${PING}`;
    await withRawApi(
      (socket) => {
        socket.write(SSE_HEAD);
        socket.write(chunk(opening));
        const block = new Promise((r) => setTimeout(() => r(socket.write(chunk(BLOCK))), 50));
        Promise.all([reached, block]).then(async () => {
          for (const piece of REST) {
            socket.write(chunk(piece));
            await new Promise((r) => setTimeout(r, 5));
          }
          socket.end("0\r\n\r\n");
        });
      },
      async () => {
        const pool = await throughPool(kind, path, { key: KEY });
        try {
          let timer;
          const res = await Promise.race([
            pool.send(init()),
            new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("the answer was held past its first content event")), 20_000))),
          ]);
          clearTimeout(timer);
          headReached();
          assert.equal(res.status, 200);
          const got = Buffer.from(await res.arrayBuffer()).toString("utf8");
          assert.equal(got, opening + BLOCK + REST.join(""));
        } finally {
          await pool.close();
        }
      },
    );
  });

  test(`a stream of pings and then silence is cut by the response timeout, as any silent body is; nobody rests (${kind})`, async () => {
    const email = `sfp-${kind}@x.test`;
    const path = await seedPool(mock, [email]);
    await withEnv({ OAUTH_POOL_RESPONSE_TIMEOUT_MS: "800" }, () =>
      withRawApi(
        (socket) => {
          socket.write(SSE_HEAD);
          socket.write(chunk(START));
          for (const ms of [150, 300, 450]) setTimeout(() => socket.writable && socket.write(chunk(PING)), ms);
        },
        async () => {
          const pool = await throughPool(kind, path, { key: KEY });
          try {
            const started = Date.now();
            const outcome = await outcomeOf(pool);
            const ms = Date.now() - started;
            if (kind === "gateway") {
              assert.equal(outcome.status, 502, JSON.stringify(outcome));
              assert.equal(outcome.code, "NETWORK");
            } else {
              assert.equal(outcome.rejected?.code, "NETWORK", String(outcome.rejected ?? JSON.stringify(outcome)));
              assert.ok(outcome.rejected instanceof TypeError);
              assert.match(outcome.rejected.message, /no data for 800 ms/);
            }
            // The pings kept it alive; the silence after the last one ended it.
            assert.ok(ms >= 1000, `${ms} ms`);
            assert.ok(ms < 15_000, `${ms} ms`);
            await flushPool(path);
            assert.equal(account(path, email).rateLimitUntil ?? 0, 0);
          } finally {
            await pool.close();
          }
        },
      ),
    );
  });
}

/**
 * An upstream that sends a stream's head and its `message_start`, then nothing: `written` once
 * that went out, `upstreamClosed` once the pool let the connection go.
 */
function openingThenNothing() {
  let wrote;
  const written = new Promise((r) => (wrote = r));
  let closed;
  const upstreamClosed = new Promise((r) => (closed = r));
  const serve = (socket) => {
    socket.on("close", closed);
    socket.write(SSE_HEAD);
    socket.write(chunk(START), () => setTimeout(wrote, 100));
  };
  return { serve, written, upstreamClosed };
}

for (const kind of ["native", "runtime"]) {
  test(`an abort during the opening read rejects with the caller's reason and closes the upstream connection (${kind})`, async () => {
    const path = await seedPool(mock, [`sfab-${kind}@x.test`]);
    const { serve, written, upstreamClosed } = openingThenNothing();
    await withRawApi(serve, async (api) => {
      const f = createPoolFetch({ path, transport: kind });
      const controller = new AbortController();
      const pending = f(`${api}/v1/messages`, { ...init(), signal: controller.signal });
      await written;
      const reason = new Error("the caller gave up");
      controller.abort(reason);
      await assert.rejects(pending, (err) => err === reason || err?.name === "AbortError");
      let timer;
      await Promise.race([upstreamClosed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("upstream left open")), 10_000)))]);
      clearTimeout(timer);
    });
  });
}

test("the gateway's client going away during the opening read closes the upstream connection", async () => {
  const path = await seedPool(mock, ["sfab-gateway@x.test"]);
  const { serve, written, upstreamClosed } = openingThenNothing();
  await withRawApi(serve, async () => {
    const pool = await throughPool("gateway", path, { key: KEY });
    try {
      const controller = new AbortController();
      const pending = pool.send({ ...init(), signal: controller.signal });
      await written;
      controller.abort();
      await assert.rejects(pending);
      let timer;
      await Promise.race([upstreamClosed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("upstream left open")), 10_000)))]);
      clearTimeout(timer);
    } finally {
      await pool.close();
    }
  });
});

// OpenCode 2 sends the request itself; the pool's http.response hook reads the opening of the
// host's answer before handing it over.
test("on OpenCode 2's hooks a rate_limit_error before any content is answered by the next account inside one host request; an overloaded_error is the host's as it came", async () => {
  const path = await seedPool(mock, []);
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    for (const email of ["oc1@x.test", "oc2@x.test"]) {
      const attempt = await host.oauthConnect({ integrationID: "anthropic-pool", methodID: "claude-max" });
      await host.oauthComplete({ integrationID: "anthropic-pool", attemptID: attempt.attemptID, code: mock.approve(attempt.url, email) });
    }
    const body = { messages: [{ role: "user", content: "hi" }] };
    const textOf = (events) =>
      events
        .filter((e) => e.event === "content_block_delta")
        .map((e) => e.data.delta.text)
        .join("");
    const warm = parseSSE(await (await host.modelRequest({ providerID: "anthropic-pool", modelID: MODEL, body })).text());
    const served = textOf(warm).replace("Hello from ", "");
    const other = served === "oc1@x.test" ? "oc2@x.test" : "oc1@x.test";
    mock.script(served, [{ sse: true, errorBeforeContent: true, errorType: "rate_limit_error" }]);
    let from = mock.requests.length;
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: MODEL, body });
    assert.equal(res.status, 200);
    const events = parseSSE(await res.text());
    assert.equal(textOf(events), `Hello from ${other}`);
    assert.equal(events.filter((e) => e.event === "message_start").length, 1);
    assert.ok(!events.some((e) => e.event === "error"));
    assert.deepEqual(upstream(from), [served, other]);
    assert.deepEqual(sleeps, [], "the host never retried: the pool answered");
    await flushPool(path);
    assert.ok(rests(path, served) > Date.now() - 1000);

    mock.script(other, [{ sse: true, errorBeforeContent: true, errorType: "overloaded_error" }]);
    from = mock.requests.length;
    let delivered;
    try {
      delivered = parseSSE(await (await host.modelRequest({ providerID: "anthropic-pool", modelID: MODEL, body })).text());
    } catch (err) {
      delivered = err;
    }
    assert.equal(upstream(from)[0], other, "sent once to the account left");
    assert.ok(!upstream(from).includes(served), "the resting account was not asked");
    await flushPool(path);
    assert.equal(rests(path, other), 0, "the overload benches nobody");
    if (Array.isArray(delivered)) assert.equal(delivered.at(-1).data.error.type, "overloaded_error");
  } finally {
    await handle.unload();
  }
});
