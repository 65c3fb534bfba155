// Bounded over a long life: a pool process (an OpenCode session, a gateway) lives for days and
// serves hundreds of thousands of requests, and what it keeps, in memory or in the pool file,
// keyed by strings callers and servers choose, must not grow with them. Each test compares a
// later phase with an earlier one, with generous margins. Bounds inside the process are unit
// tests beside the code (src/engine/overlay.rs, bookkeeping.rs, account.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { connect } from "node:net";
import { createPoolFetch, flushPool, removeAccount, serve, setPriority } from "../index.mjs";
import { jsonHeaders, messagesUrl, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });
// As many rests of model families and endpoints per account as are kept (`MAX_SCOPED_COOLDOWNS`).
const SCOPED_KEPT = 16;

/** A model family per number: aaa, aab, ... (a family is a word of letters). */
function family(i) {
  let s = "";
  for (let n = i + 26 * 26; n > 0; n = Math.floor(n / 26)) s = String.fromCharCode(97 + (n % 26)) + s;
  return s;
}

const ask = (f, url, model) =>
  f(url, {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a client naming a new model family per request, each refused for that model, leaves at most ${SCOPED_KEPT} rests per account`, async () => {
    // A 429 whose overall status is rejected with no window rejected rests the request's model
    // family on the account (until the reset, days here). A client naming a new family per
    // request (claude-aaa-4, claude-aab-4, ...) added a rest per request to the pool file and
    // to the process, each kept until its reset: 2,000 requests, 1,000 rests per account.
    const [first, second] = [`fam1-${transport}@x.test`, `fam2-${transport}@x.test`];
    const path = await seedPool(mock, [first, second]);
    const f = createPoolFetch({ path, transport });
    const reset = String(Math.floor(Date.now() / 1000) + 3 * 86400);
    const refusal = { status: 429, headers: { "anthropic-ratelimit-unified-status": "rejected", "anthropic-ratelimit-unified-reset": reset } };
    let sent = 0;
    const phase = async (until) => {
      for (; sent < until; sent++) {
        mock.scriptAll([refusal]);
        const r = await ask(f, messagesUrl(mock), `claude-${family(sent)}-4`);
        assert.equal(r.status, 200, "the other account serves the family");
        await r.text();
        if (sent % 200 === 0) mock.clearRequests();
      }
      mock.clearRequests();
      await flushPool(path);
      const pool = readPool(path);
      return {
        size: statSync(path).size,
        rests: pool.anthropic.map((a) => Object.keys(a.modelCooldowns ?? {}).length),
        last: pool.anthropic.map((a) => a.modelCooldowns?.[family(sent - 1)]),
      };
    };
    const early = await phase(200);
    const late = await phase(1500);
    for (const { rests } of [early, late]) for (const n of rests) assert.ok(n <= SCOPED_KEPT, `${n} rests on one account`);
    assert.ok(
      late.last.some((t) => t > Date.now()),
      "the family refused last rests",
    );
    // Usage by model is bounded too (64 models a day and a window): the file stops growing.
    assert.ok(late.size < early.size * 1.5 + 8192, `the pool file grew from ${early.size} to ${late.size} bytes`);
  });
}

test("gateway: clients that connect and send nothing, and keep-alive connections left idle after their answer, are closed within the header timeout, so idle clients cannot hold every slot", async () => {
  // A client that keeps its connection after an answer and never sends again (an SDK's pool, a
  // script that stopped) holds a connection slot and a descriptor: a gateway that kept them
  // until the client left would refuse everyone once the cap (or the descriptor limit) was
  // idle. hyper times the wait for the next request's head from the end of the last answer
  // (hyper before 1.4 did not): this guards that. Probed: 300 idle keep-alive connections
  // were closed within the header timeout, and 48,000 connections opened and closed, or
  // 30,000 requests on 10 kept connections, left the gateway's RSS, descriptors and threads flat.
  const path = await seedPool(mock, ["idle@x.test"]);
  const gw = await serve({ port: 0, path, headerTimeoutMs: 500, maxConnections: 4 });
  const port = Number(new URL(gw.url).port);
  const request = `GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`;
  /** A connection that asks once and keeps the connection; resolves once its answer came. */
  const askAndStay = () =>
    new Promise((resolve, reject) => {
      const s = connect(port, "127.0.0.1", () => s.write(request));
      let data = "";
      const closed = new Promise((r) => s.on("close", () => r(Date.now())));
      s.on("error", () => {});
      s.on("data", (d) => {
        data += d;
        if (/\r\n\r\n[\s\S]*\}/.test(data)) resolve({ s, data, closed });
      });
      setTimeout(() => reject(new Error(`no answer: ${data}`)), 10_000);
    });
  /** A connection that never sends a byte (a port scanner, a client that hung): when it closed. */
  const silent = () =>
    new Promise((resolve) => {
      const s = connect(port, "127.0.0.1");
      s.on("error", () => {});
      s.on("close", () => resolve(Date.now()));
    });
  try {
    const opened = Date.now();
    const silentClosed = await Promise.race([Promise.all(Array.from({ length: 4 }, silent)), new Promise((r) => setTimeout(() => r(null), 8000))]);
    assert.ok(silentClosed, "the gateway closes connections that send nothing");
    assert.ok(Math.max(...silentClosed) - opened < 5000, `closed ${Math.max(...silentClosed) - opened} ms after they opened (header timeout 500 ms)`);
    const idle = await Promise.all(Array.from({ length: 4 }, askAndStay));
    for (const { data } of idle) assert.match(data, /^HTTP\/1\.1 200/);
    const answered = Date.now();
    const closedAt = await Promise.race([Promise.all(idle.map((c) => c.closed)), new Promise((r) => setTimeout(() => r(null), 8000))]);
    assert.ok(closedAt, "the gateway closes idle keep-alive connections");
    assert.ok(Math.max(...closedAt) - answered < 5000, `closed ${Math.max(...closedAt) - answered} ms after the answers (header timeout 500 ms)`);
    // The four slots are free again: the next client is served, not turned away with a 503.
    await new Promise((r) => setTimeout(r, 100));
    const next = await askAndStay();
    assert.match(next.data, /^HTTP\/1\.1 200/);
    next.s.destroy();
  } finally {
    await gw.close(0);
  }
});

test("gateway: /metrics labels only the accounts' current windows, however many window names the server makes up", async () => {
  // Window names come from the API's headers: a server (or a proxy) naming a new window per
  // answer must not add a series per answer to /metrics, nor its series outlive an account
  // removed from the pool.
  const [gone, kept] = ["win-gone@x.test", "win-kept@x.test"];
  const path = await seedPool(mock, [gone, kept]);
  await setPriority(gone, 5, path);
  const gw = await serve({ port: 0, path });
  const metrics = async () => (await fetch(`${gw.url}/metrics`, { headers: { "x-api-key": KEY } })).text();
  const series = (text, email) => text.split("\n").filter((l) => l.startsWith(`oauth_pool_window_utilization{account="${email}",`));
  const served = async () => {
    const r = await fetch(`${gw.url}/v1/messages`, {
      method: "POST",
      headers: { ...jsonHeaders, "x-api-key": KEY },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(r.status, 200);
    await r.text();
  };
  try {
    await served();
    assert.ok(series(await metrics(), gone).length > 0, "the account in use has its windows");
    await removeAccount(gone, path);
    const reset = String(Math.floor(Date.now() / 1000) + 3600);
    const p = "anthropic-ratelimit-unified";
    const names = [...Array.from({ length: 40 }, (_, i) => `made_up_${family(i)}`), "w".repeat(41)];
    mock.script(
      kept,
      names.map((name) => ({ headers: { [`${p}-${name}-utilization`]: "0.5", [`${p}-${name}-reset`]: reset } })),
    );
    for (let i = 0; i < names.length; i++) await served();
    const text = await metrics();
    assert.deepEqual(series(text, gone), [], "a removed account's windows go");
    const shown = series(text, kept);
    assert.ok(shown.length > 0 && shown.length <= 16, `${shown.length} window series for one account`);
    assert.ok(
      shown.some((l) => l.includes(`window="made_up_${family(39)}"`)),
      "the window heard last is there",
    );
    assert.ok(!shown.some((l) => l.includes("w".repeat(41))), "a window name over 40 bytes is no window");
  } finally {
    await gw.close(0);
  }
});
