// The gateway's client goes away: every token the upstream makes after that is quota spent for
// nothing, so the upstream request must be cut once the gateway can know. Real sockets through
// `serve()` to a mock that streams slowly (an event every 200 ms for a minute) and records when
// its connection closes. Only bounded outcomes are asserted (closed within a few seconds, nothing
// upstream after the client left), never speed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect } from "node:net";
import * as lib from "../index.mjs";
import { useMock, seedPool } from "./helpers/pool-env.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });

const STREAM_BODY = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] });
const post = (body = STREAM_BODY, { length = Buffer.byteLength(body) } = {}) =>
  `POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: ${KEY}\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n${body}`;
/** An event every 200 ms for a minute. */
const SLOW = { sse: true, text: "x".repeat(300), deltaSize: 1, delayMs: 200 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const BOUND_MS = 3000;

async function gateway(emails, options = {}) {
  const path = await seedPool(mock, emails);
  return { gw: await lib.serve({ port: 0, path, ...options }), path };
}

/** Resolves with "closed" once the mock saw `email`'s upstream connection close early, else a reason. */
function upstreamClosed(email) {
  const closed = mock.waitFor("closed", (r) => r.email === email);
  return (ms = BOUND_MS) => {
    let timer;
    const late = new Promise((r) => (timer = setTimeout(() => r(`still open ${ms} ms after the client left`), ms)));
    return Promise.race([closed.then(() => "closed"), late]).finally(() => clearTimeout(timer));
  };
}

/** Whether the gateway takes a connection (its only slot free again), asked for up to 3 s. */
async function slotFree(url) {
  for (let i = 0; i < 30; i++) {
    const c = client(url, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    await c.closed;
    if (!c.data().includes("too many connections")) return true;
    await sleep(100);
  }
  return false;
}

/** A raw socket that sends `bytes`; `first` resolves once it has read a content event. */
function client(url, bytes, options = {}) {
  const { port } = new URL(url);
  const socket = connect({ port: Number(port), host: "127.0.0.1", ...options });
  let data = "";
  let seen;
  const first = new Promise((r) => (seen = r));
  socket.on("data", (d) => {
    // What a test looks at is near the start; a long answer is not all kept.
    if (data.length < 65536) data += d.toString("latin1");
    if (data.includes("content_block_delta")) seen();
  });
  socket.on("error", () => {});
  socket.on("connect", () => socket.write(bytes));
  return { socket, first, closed: new Promise((r) => socket.on("close", r)), data: () => data };
}

for (const [name, leave] of [
  ["destroy() after reading", (c) => c.socket.destroy()],
  // Unread bytes in its buffer: its system answers with a reset instead of a FIN.
  [
    "a reset (closed with bytes unread)",
    async (c) => {
      c.socket.pause();
      await sleep(600);
      c.socket.destroy();
    },
  ],
  [
    "a half-close, then nothing read",
    (c) => {
      c.socket.end();
      c.socket.pause();
    },
  ],
]) {
  test(`a streaming client that goes away (${name}) has its upstream request cut`, async () => {
    const email = `gone-${name.replace(/\W+/g, "-")}@x.test`;
    const { gw } = await gateway([email]);
    try {
      mock.script(email, [SLOW]);
      const closedWithin = upstreamClosed(email);
      const c = client(gw.url, post(), { allowHalfOpen: true });
      await c.first;
      await leave(c);
      assert.equal(await closedWithin(), "closed");
    } finally {
      mock.clearScripts();
      await gw.close(1000);
    }
  });
}

test("a client process killed with SIGKILL mid-stream has its upstream request cut", async () => {
  const { gw } = await gateway(["killed@x.test"]);
  try {
    mock.script("killed@x.test", [SLOW]);
    const closedWithin = upstreamClosed("killed@x.test");
    const { port } = new URL(gw.url);
    const code = `const s = require("node:net").connect(${port}, "127.0.0.1", () => s.write(${JSON.stringify(post())}));
let d = ""; s.on("data", (b) => { d += b; if (d.includes("content_block_delta")) { process.stdout.write("first\\n"); d = ""; } });`;
    const child = spawn(process.execPath, ["-e", code], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise((resolve, reject) => {
      child.stdout.on("data", (d) => d.toString().includes("first") && resolve());
      child.on("exit", (c) => reject(new Error(`the client exited (${c}) before reading an event`)));
    });
    child.kill("SIGKILL");
    assert.equal(await closedWithin(), "closed");
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

test("a request whose body was not all sent when its client went away never goes upstream", async () => {
  const { gw } = await gateway(["unsent@x.test"]);
  try {
    mock.clearRequests();
    for (const leave of ["destroy", "end"]) {
      const c = client(gw.url, post(STREAM_BODY.slice(0, 20), { length: Buffer.byteLength(STREAM_BODY) }), { allowHalfOpen: true });
      await sleep(300);
      c.socket[leave]();
      await sleep(300);
      c.socket.destroy();
      await c.closed;
    }
    await sleep(1000);
    assert.deepEqual(
      mock.requests.filter((r) => r.path.startsWith("/v1/")),
      [],
    );
    // The gateway still serves (nothing was left holding it).
    const res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { "x-api-key": KEY, "content-type": "application/json" }, body: STREAM_BODY });
    assert.equal(res.status, 200);
    await res.text();
  } finally {
    await gw.close(1000);
  }
});

test("a client that stops reading with its socket open is not cut, and the gateway's memory stays bounded; it reads all once it reads again", async () => {
  // 256 MB offered as fast as it can go to a client that stopped reading: backpressure, not a
  // disconnect. The upstream is held where it is, and nothing piles up in the gateway.
  const { gw } = await gateway(["slow-reader@x.test"]);
  const piece = Buffer.alloc(64 * 1024, 0x61);
  const pieces = 4096;
  try {
    mock.script("slow-reader@x.test", [{ raw: Array.from({ length: pieces }, () => piece), headers: { "content-type": "application/octet-stream" } }]);
    let cut = false;
    mock.waitFor("closed", (r) => r.email === "slow-reader@x.test").then(() => (cut = true));
    const c = client(gw.url, post());
    let got = 0;
    let tail = "";
    let whole;
    const ended = new Promise((r) => (whole = r));
    c.socket.on("data", (d) => {
      got += d.length;
      // Chunked: the last chunk ends the answer.
      tail = (tail + d.toString("latin1")).slice(-5);
      if (tail === "0\r\n\r\n") whole();
    });
    await new Promise((r) => c.socket.once("data", r));
    c.socket.pause();
    const before = process.memoryUsage().rss;
    let peak = before;
    for (let i = 0; i < 30; i++) {
      await sleep(100);
      peak = Math.max(peak, process.memoryUsage().rss);
    }
    assert.equal(cut, false, "the upstream of a client that only stopped reading was cut");
    assert.ok(peak - before < 64 * 1024 * 1024, `grew by ${Math.round((peak - before) / 1048576)} MB while 256 MB were offered`);
    c.socket.resume();
    await ended;
    assert.ok(got >= piece.length * pieces, `read ${got} bytes`);
    assert.equal(cut, false);
    c.socket.destroy();
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

/** The only account of the pool at `path` cools for two minutes; the mock forgets what it saw. */
async function coolTwoMinutes(path) {
  const pool = await lib.loadPool(path);
  Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: Date.now() + 120_000 });
  await lib.savePool(pool, path);
  mock.clearRequests();
}

test("a request held while every account cools, whose client goes away, frees its slot and never goes upstream", async () => {
  process.env.OAUTH_POOL_HOLD_MAX_MS = "300000";
  const { gw, path } = await gateway(["cooling@x.test"], { maxConnections: 1 });
  try {
    await coolTwoMinutes(path);
    for (const leave of ["destroy", "end"]) {
      const c = client(gw.url, post(), { allowHalfOpen: true });
      await sleep(1000);
      assert.equal(c.data().replaceAll("HTTP/1.1 100 Continue\r\n\r\n", ""), "", "held: no answer yet");
      c.socket[leave]();
      if (leave === "end") {
        // A half-closed client still waits for its answer; it is let go when it closes.
        await sleep(1500);
        c.socket.destroy();
      }
      await c.closed;
      assert.ok(await slotFree(gw.url), `${leave}: the held client's connection slot (the only one) is given back`);
    }
    // The account is back: the requests that left must not go now.
    await lib.resetCooldowns(path);
    const still = client(gw.url, post().replace("Host:", "Connection: close\r\nHost:"));
    await still.closed;
    assert.match(still.data(), /^HTTP\/1\.1 200 /);
    await sleep(1500);
    assert.equal(mock.requests.filter((r) => r.path.startsWith("/v1/")).length, 1, "only the request still there went upstream");
  } finally {
    delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    await gw.close(1000);
  }
});

// hyper reads no further while a pipelined request's bytes wait in its buffer, and a held
// request writes nothing: a client that pipelined a second request behind one held for a cooling
// account and then went away kept its connection slot (and the held request, which went
// upstream once the account was back) until the hold ended, up to OAUTH_POOL_HOLD_MAX_MS.
test("a held request with a pipelined one behind it, whose client goes away, frees its slot and never goes upstream", async () => {
  process.env.OAUTH_POOL_HOLD_MAX_MS = "300000";
  const { gw, path } = await gateway(["piped-held@x.test"], { maxConnections: 1 });
  try {
    await coolTwoMinutes(path);
    for (const leave of ["destroy", "end"]) {
      const c = client(gw.url, post() + post(), { allowHalfOpen: true });
      await sleep(500);
      assert.equal(c.data().replaceAll("HTTP/1.1 100 Continue\r\n\r\n", ""), "", "held: no answer yet");
      c.socket[leave]();
      if (leave === "end") {
        // Half-closed, it still waits for its answers; it is let go when it closes.
        await sleep(500);
        assert.equal(c.socket.destroyed, false, "a half-closed client is not cut");
        c.socket.destroy();
      }
      await c.closed;
      assert.ok(await slotFree(gw.url), `${leave}: the held client's connection slot (the only one) is given back`);
    }
    await lib.resetCooldowns(path);
    await sleep(1000);
    assert.equal(mock.requests.filter((r) => r.path.startsWith("/v1/")).length, 0, "the requests that left never go upstream");
  } finally {
    delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    await gw.close(1000);
  }
});

// The connection reads ahead of hyper while a request is held (up to 64 KB, for the end of a
// client that pipelined and left): a client that stays gets each pipelined request whole and in
// order, bodies past that bound too, whether it keeps its socket open or half-closes it.
test("a large held request with a large pipelined one behind it: a client that stays gets both answered, each body upstream whole and in order", async () => {
  process.env.OAUTH_POOL_HOLD_MAX_MS = "300000";
  const { gw, path } = await gateway(["piped-stays@x.test"]);
  try {
    for (const leave of ["open", "end"]) {
      await coolTwoMinutes(path);
      const big = Array.from({ length: 30_000 }, (_, i) => `${leave}${i}`).join(" ");
      const asking = (content) => JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content }] });
      const c = client(gw.url, post(asking(`first ${big}`)) + post(asking(big)), { allowHalfOpen: true });
      await sleep(500);
      if (leave === "end") c.socket.end();
      await sleep(300);
      assert.equal(c.data().replaceAll("HTTP/1.1 100 Continue\r\n\r\n", ""), "", "held: no answer yet");
      await lib.resetCooldowns(path);
      for (let i = 0; i < 50 && (c.data().match(/HTTP\/1\.1 200/g) ?? []).length < 2; i++) await sleep(100);
      assert.equal((c.data().match(/HTTP\/1\.1 200/g) ?? []).length, 2, `${leave}: both answered`);
      const sent = mock.requests.filter((r) => r.path.startsWith("/v1/"));
      assert.equal(sent.length, 2, `${leave}: each request upstream once`);
      assert.deepEqual(
        sent.map((r) => JSON.parse(r.body).messages[0].content),
        [`first ${big}`, big],
        `${leave}: each body whole, in order`,
      );
      c.socket.destroy();
      await c.closed;
    }
  } finally {
    delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    await gw.close(1000);
  }
});

test("a streaming client that went away with a pipelined request behind its first still has its upstream request cut", async () => {
  // hyper reads no further while a next request's bytes wait in its buffer, so the client's
  // end is not read: it is seen when a write to it fails, which a streamed answer soon makes.
  // (A request held with nothing to write is not let go that way: see the README.)
  const { gw } = await gateway(["pipelined@x.test"]);
  try {
    mock.script("pipelined@x.test", [SLOW]);
    const closedWithin = upstreamClosed("pipelined@x.test");
    const streamed = client(gw.url, post() + post());
    await streamed.first;
    streamed.socket.destroy();
    assert.equal(await closedWithin(), "closed");
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});
