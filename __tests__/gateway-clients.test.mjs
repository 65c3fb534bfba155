// The gateway facing HTTP/1.1 clients in their legal-but-unusual and illegal ways, as curl,
// the SDKs, Go's and Python's clients, old proxies and attackers write it: exact bytes on raw
// sockets against `serve()` over the loopback mock. Each case gets what RFC 9110/9112 and a
// user expect, or a coded refusal; never a hang, a mixed-up answer, or a request upstream with
// an account's credential that should not have gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import * as lib from "../index.mjs";
import { parseSSE } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });

const BODY = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
const STREAM_BODY = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] });

/** A request's bytes: `head` lines after the request line (CRLF added), then the body. */
function request(line, head = [], body = "") {
  return `${line}\r\n${head.map((h) => `${h}\r\n`).join("")}\r\n${body}`;
}
/** A POST with the key, a Host and a content-length, plus `extra` header lines. */
const post = (target, body = BODY, extra = []) =>
  request(
    `POST ${target} HTTP/1.1`,
    ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "content-type: application/json", ...extra, `content-length: ${Buffer.byteLength(body)}`],
    body,
  );

/**
 * A raw client: writes `chunks` once connected and collects what the gateway answers until it
 * closes the connection or `waitMs` passes. `onData(socket, text)` sees everything read so far.
 */
function raw(url, chunks, { waitMs = 5000, onData } = {}) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname);
    let data = "";
    socket.on("data", (d) => {
      data += d.toString("latin1");
      onData?.(socket, data);
    });
    socket.on("connect", () => {
      for (const c of chunks) socket.write(c);
    });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ data, closed: false });
    }, waitMs);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ data, closed: true });
    });
    socket.on("error", () => {});
  });
}

/**
 * The answers in `data` one after the other (interim 1xx ones included), each framed as
 * HTTP/1.1 says: by content-length, chunked, none (1xx, 204, 304, to a HEAD when `head`), or
 * the close. `rest` is what follows the last whole answer.
 */
function answers(data, { head = false } = {}) {
  const out = [];
  let at = 0;
  while (at < data.length) {
    const end = data.indexOf("\r\n\r\n", at);
    if (end < 0) break;
    const [statusLine, ...lines] = data.slice(at, end).split("\r\n");
    const status = Number(statusLine.split(" ")[1]);
    const headers = {};
    for (const l of lines) {
      const i = l.indexOf(":");
      const name = l.slice(0, i).trim().toLowerCase();
      headers[name] = headers[name] === undefined ? l.slice(i + 1).trim() : `${headers[name]}, ${l.slice(i + 1).trim()}`;
    }
    let p = end + 4;
    let body = "";
    if (status < 200 || status === 204 || status === 304 || (head && status !== 100)) {
      // no body
    } else if (headers["content-length"] !== undefined) {
      const n = Number(headers["content-length"]);
      if (data.length < p + n) break;
      body = data.slice(p, p + n);
      p += n;
    } else if (/chunked/i.test(headers["transfer-encoding"] ?? "")) {
      let whole = false;
      for (;;) {
        const lineEnd = data.indexOf("\r\n", p);
        if (lineEnd < 0) break;
        const size = Number.parseInt(data.slice(p, lineEnd), 16);
        if (size === 0) {
          const trailerEnd = data.indexOf("\r\n\r\n", lineEnd);
          if (trailerEnd >= 0) {
            p = trailerEnd + 4;
            whole = true;
          } else if (data.startsWith("\r\n", lineEnd + 2)) {
            p = lineEnd + 4;
            whole = true;
          }
          break;
        }
        if (data.length < lineEnd + 2 + size + 2) break;
        body += data.slice(lineEnd + 2, lineEnd + 2 + size);
        p = lineEnd + 2 + size + 2;
      }
      if (!whole) break;
    } else {
      body = data.slice(p);
      p = data.length;
    }
    out.push({ statusLine, status, headers, body });
    at = p;
  }
  return Object.assign(out, { rest: data.slice(at) });
}

const upstream = () => mock.requests.filter((r) => r.path.startsWith("/v1/"));
const deltas = (sse) =>
  parseSSE(sse)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");

async function gateway(emails, options = {}) {
  const path = await seedPool(mock, emails);
  return lib.serve({ port: 0, path, ...options });
}

/** The gateway's own refusal: the status, Anthropic's error shape, and the type named. */
function coded(answer, status, type) {
  assert.equal(answer?.status, status, answer?.statusLine);
  assert.equal(answer.headers["content-type"], "application/json");
  const parsed = JSON.parse(answer.body);
  assert.equal(parsed.type, "error");
  assert.equal(parsed.error.type, type);
  assert.ok(!answer.body.includes(KEY), "the key is never in an answer");
}

test("Expect: 100-continue: the body follows the 100 and is answered; a wrong key or a length over the limit is answered at once, the body never asked for", async () => {
  const gw = await gateway(["expect@x.test"]);
  try {
    mock.clearRequests();
    // A client that waits for the 100 before it sends (curl, for a large body).
    const headOnly = request("POST /v1/messages HTTP/1.1", [
      "Host: 127.0.0.1",
      `x-api-key: ${KEY}`,
      "content-type: application/json",
      "Expect: 100-continue",
      `content-length: ${BODY.length}`,
      "Connection: close",
    ]);
    const waiting = await raw(gw.url, [headOnly], {
      onData: (socket, data) => {
        if (data.includes("100 Continue") && !socket.sent) {
          socket.sent = true;
          socket.write(BODY);
        }
      },
    });
    const [cont, ok] = answers(waiting.data);
    assert.equal(cont.status, 100);
    assert.equal(ok.status, 200);
    assert.equal(JSON.parse(ok.body).content[0].text, "Hello from expect@x.test");
    assert.equal(upstream().length, 1);

    // A wrong key, and a declared length past 32 MB: answered without a 100, so the client
    // never sends the body (it got the 100, and the gateway waited for the body to drop it).
    mock.clearRequests();
    const head = (key, length) =>
      request("POST /v1/messages HTTP/1.1", [
        "Host: 127.0.0.1",
        `x-api-key: ${key}`,
        "content-type: application/json",
        "Expect: 100-continue",
        `content-length: ${length}`,
      ]);
    for (const [name, sent, status, type] of [
      ["a wrong key", head("wrong-key", 5 * 1024 * 1024), 401, "authentication_error"],
      ["a body over the limit", head(KEY, 100 * 1024 * 1024), 413, "request_too_large"],
      ["a path outside /v1/", head(KEY, 4096).replace("/v1/messages", "/v2/messages"), 404, "not_found_error"],
    ]) {
      const r = await raw(gw.url, [sent]);
      const [first] = answers(r.data);
      assert.notEqual(first?.status, 100, `${name}: no 100 Continue asked for a body that is refused`);
      coded(first, status, type);
      assert.equal(first.headers.connection, "close", `${name}: the body is not read, the connection is closed`);
      assert.ok(r.closed, `${name}: closed, not left waiting for a body`);
    }
    assert.equal(upstream().length, 0, "nothing refused went upstream");

    // curl itself, told to wait for the 100: it uploads nothing of a refused 5 MB body.
    const dir = tempDir("oauth-pool-expect-");
    writeFileSync(
      join(dir, "body.json"),
      JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "x".repeat(5 * 1024 * 1024) }] }),
    );
    const curl = await new Promise((resolve) => {
      const child = spawn("curl", [
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_upload}",
        "-H",
        "x-api-key: wrong-key",
        "-H",
        "content-type: application/json",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        "--data-binary",
        `@${join(dir, "body.json")}`,
        `${gw.url}/v1/messages`,
      ]);
      let out = "";
      child.stdout.on("data", (d) => (out += d));
      child.on("close", (code) => resolve({ code, out }));
    });
    assert.equal(curl.code, 0);
    const [code, uploaded] = curl.out.split(" ").map(Number);
    assert.equal(code, 401);
    assert.ok(uploaded < 1024 * 1024, `curl uploaded ${uploaded} bytes of a body refused by its head`);
  } finally {
    await gw.close(1000);
  }
});

test("pipelined requests are answered in order, none lost or mixed (a refused one among them); keep-alive after a stream; Connection: close ends it", async () => {
  const gw = await gateway(["pipe@x.test"]);
  try {
    mock.clearRequests();
    mock.scriptAll([{ text: "first answer" }, { sse: true, text: "second, streamed", deltaSize: 5 }, { text: "fourth answer" }]);
    const wrong = request(
      "POST /v1/messages HTTP/1.1",
      ["Host: 127.0.0.1", "x-api-key: wrong-key", "content-type: application/json", `content-length: ${BODY.length}`],
      BODY,
    );
    // Written at once, in one write: the gateway reads them one after the other.
    const all =
      post("/v1/messages") + post("/v1/messages", STREAM_BODY) + wrong + post("/v1/messages") + post("/v1/messages/count_tokens", BODY, ["Connection: close"]);
    const r = await raw(gw.url, [all], { waitMs: 20_000 });
    const got = answers(r.data);
    assert.deepEqual(
      got.map((a) => a.status),
      [200, 200, 401, 200, 200],
    );
    assert.equal(JSON.parse(got[0].body).content[0].text, "first answer");
    assert.equal(got[1].headers["transfer-encoding"], "chunked", "the stream is chunked on a connection that goes on");
    assert.equal(deltas(got[1].body), "second, streamed");
    assert.equal(JSON.parse(got[2].body).error.type, "authentication_error");
    assert.equal(JSON.parse(got[3].body).content[0].text, "fourth answer");
    assert.ok(JSON.parse(got[4].body).input_tokens > 0);
    assert.equal(got.rest, "", "nothing after the last answer");
    assert.ok(r.closed, "Connection: close on the last request closes the connection");
    assert.deepEqual(
      upstream().map((q) => q.path),
      ["/v1/messages", "/v1/messages", "/v1/messages", "/v1/messages/count_tokens"],
    );

    // Keep-alive after a streamed answer: the next request on the connection is served.
    mock.clearRequests();
    const kept = await raw(gw.url, [post("/v1/messages", STREAM_BODY)], {
      waitMs: 20_000,
      onData: (socket, data) => {
        if (!socket.sent && answers(data).length === 1) {
          socket.sent = true;
          socket.write(post("/v1/messages", BODY, ["Connection: close"]));
        }
      },
    });
    const [stream, after] = answers(kept.data);
    assert.equal(deltas(stream.body), "Hello from pipe@x.test");
    assert.equal(after.status, 200);
    assert.equal(after.headers.connection, "close");
    assert.ok(kept.closed);
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

test("HTTP/1.0: no Host needed, a streamed answer delimited by the close (never chunked); HEAD is answered without a body", async () => {
  const gw = await gateway(["old@x.test"]);
  try {
    mock.clearRequests();
    const r = await raw(
      gw.url,
      [request("POST /v1/messages HTTP/1.0", [`x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${STREAM_BODY.length}`], STREAM_BODY)],
      {
        waitMs: 20_000,
      },
    );
    assert.ok(r.closed, "the close ends the answer");
    const [a] = answers(r.data);
    assert.match(a.statusLine, /^HTTP\/1\.0 200/);
    assert.equal(a.headers["transfer-encoding"], undefined, "no chunked coding to an HTTP/1.0 client");
    assert.equal(deltas(a.body), "Hello from old@x.test");

    // HEAD goes upstream as HEAD; its answer has no body, and the connection goes on.
    mock.clearRequests();
    const h = await raw(
      gw.url,
      [request("HEAD /v1/messages HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`]), post("/v1/messages", BODY, ["Connection: close"])],
      { waitMs: 20_000 },
    );
    const split = h.data.indexOf("\r\n\r\n") + 4;
    const [headAnswer] = answers(h.data.slice(0, split), { head: true });
    assert.ok(headAnswer.status >= 200, headAnswer.statusLine);
    const [next] = answers(h.data.slice(split));
    assert.equal(next?.status, 200, "no body after the HEAD's answer: the next one follows at once");
    assert.equal(JSON.parse(next.body).content[0].text, "Hello from old@x.test");
    assert.deepEqual(
      upstream().map((q) => q.method),
      ["HEAD", "POST"],
    );
  } finally {
    await gw.close(1000);
  }
});

/** A streamed request's answer read to its end: its bytes, and how the connection ended. */
function howItEnds(url, version, extra) {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect(Number(port), "127.0.0.1");
    let data = "";
    let how = "closed in order";
    socket.on("data", (d) => (data += d.toString("latin1")));
    socket.on("error", (e) => (how = e.code));
    socket.on("close", () => resolve({ how, data }));
    const head = [...extra, `x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${STREAM_BODY.length}`];
    socket.write(request(`POST /v1/messages HTTP/${version}`, head, STREAM_BODY));
  });
}

test("an answer the upstream breaks off mid-body ends in a reset, never in the close an HTTP/1.0 client (nginx's default upstream) takes for the end of a whole body", async () => {
  // Found by a review: the gateway closed in order, and nginx in front of it ended its own
  // answer cleanly, a truncated 200 the SDK could not parse.
  const gw = await gateway(["cut10@x.test"]);
  try {
    for (const [version, extra] of [
      ["1.0", []],
      ["1.1", ["Host: 127.0.0.1", "Connection: close"]],
    ]) {
      mock.script("cut10@x.test", [{ sse: true, text: "x".repeat(4000), deltaSize: 40, resetAfterBytes: 2000 }]);
      const end = await howItEnds(gw.url, version, extra);
      assert.match(end.data, /^HTTP\/1\.[01] 200/, `HTTP/${version}: the head went out`);
      assert.equal(end.how, "ECONNRESET", `HTTP/${version}: ${end.data.slice(-200)}`);
    }
    // A whole answer still ends in order.
    const whole = await howItEnds(gw.url, "1.0", []);
    assert.equal(whole.how, "closed in order");
    assert.equal(deltas(answers(whole.data)[0].body), "Hello from cut10@x.test");
  } finally {
    await gw.close(1000);
  }
});

test("a stream still running when the drain time ends is cut with a reset, as an upstream's break is: an HTTP/1.0 client took the orderly close for a whole answer", async () => {
  const gw = await gateway(["drained10@x.test"]);
  let closed;
  try {
    mock.script("drained10@x.test", [{ sse: true, text: "x".repeat(4000), deltaSize: 40, delayMs: 100 }]);
    const { port } = new URL(gw.url);
    const end = await new Promise((resolve) => {
      const socket = connect(Number(port), "127.0.0.1");
      let data = "";
      let how = "closed in order";
      socket.on("data", (d) => {
        data += d.toString("latin1");
        // Under way: the gateway is told to stop, its drain shorter than the stream.
        if (!closed && data.includes("content_block_delta")) closed = gw.close(300);
      });
      socket.on("error", (e) => (how = e.code));
      socket.on("close", () => resolve({ how, data }));
      const head = [`x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${STREAM_BODY.length}`];
      socket.write(request("POST /v1/messages HTTP/1.0", head, STREAM_BODY));
    });
    assert.match(end.data, /^HTTP\/1\.0 200/);
    assert.doesNotMatch(end.data, /message_stop/, "cut before its end");
    assert.equal(end.how, "ECONNRESET", end.data.slice(-200));
  } finally {
    await (closed ?? gw.close(1000));
    mock.clearScripts();
  }
});

test("HTTP/1.0 with Connection: keep-alive: an answer of known length keeps the connection; one the close ends does not say keep-alive", async () => {
  // Every answer reached an HTTP/1.0 client without its length, ended by the close, and one that
  // asked for keep-alive was told `connection: keep-alive` all the same: its next request on the
  // connection went unanswered (ab -k took the answer for an empty one, its body for the next).
  const gw = await gateway(["alive@x.test"]);
  try {
    const ten = (key, body) =>
      request(
        "POST /v1/messages HTTP/1.0",
        [`x-api-key: ${key}`, "content-type: application/json", "Connection: keep-alive", `content-length: ${Buffer.byteLength(body)}`],
        body,
      );
    const r = await raw(gw.url, [ten("wrong-key", BODY) + ten(KEY, STREAM_BODY)], { waitMs: 20_000 });
    const [refused, streamed, ...more] = answers(r.data);
    coded(refused, 401, "authentication_error");
    assert.equal(refused.headers.connection, "keep-alive", "a length: the connection goes on");
    assert.match(streamed?.statusLine ?? "", /^HTTP\/1\.0 200/, r.data.slice(0, 300));
    assert.equal(streamed.headers["content-length"], undefined);
    assert.notEqual(streamed.headers.connection, "keep-alive", "ended by the close, so not kept alive");
    assert.equal(deltas(streamed.body), "Hello from alive@x.test");
    assert.equal(more.length, 0);
    assert.ok(r.closed, "the close ends the answer");
  } finally {
    await gw.close(1000);
  }
});

test("OPTIONS (a browser's CORS preflight) is answered by the gateway, without a key and never upstream; it grants no CORS access", async () => {
  const gw = await gateway(["options@x.test"]);
  try {
    mock.clearRequests();
    const preflight = request("OPTIONS /v1/messages HTTP/1.1", [
      "Host: 127.0.0.1",
      "Origin: https://some-site.test",
      "Access-Control-Request-Method: POST",
      "Access-Control-Request-Headers: x-api-key, content-type, anthropic-version",
    ]);
    const withKey = request("OPTIONS /v1/messages HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`]);
    const star = request("OPTIONS * HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "Connection: close"]);
    const r = await raw(gw.url, [preflight + withKey + star]);
    const got = answers(r.data);
    assert.deepEqual(
      got.map((a) => a.status),
      [204, 204, 204],
    );
    for (const a of got) {
      assert.equal(a.headers.allow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
      assert.equal(a.headers["access-control-allow-origin"], undefined, "no web page is let in");
    }
    assert.equal(upstream().length, 0, "no account's credential went out for an OPTIONS");
    // The real one through Node's fetch: no CORS header on the answer to a page's request either.
    const res = await fetch(`${gw.url}/v1/messages`, {
      method: "POST",
      headers: { origin: "https://some-site.test", "x-api-key": KEY, "content-type": "application/json" },
      body: BODY,
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("access-control-allow-origin"), null);
    await res.text();
  } finally {
    await gw.close(1000);
  }
});

test("only GET, HEAD, POST, PUT, PATCH and DELETE go upstream, in their own case: `trace` went upstream as TRACE with the pool's credential", async () => {
  const gw = await gateway(["methods@x.test"]);
  try {
    mock.clearRequests();
    for (const method of ["trace", "Trace", "TRACE", "track", "connect", "CONNECT", "post", "Get", "PROPFIND", "MKCOL", "PURGE"]) {
      const r = await raw(gw.url, [request(`${method} /v1/messages HTTP/1.1`, ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "Connection: close"])]);
      const [a] = answers(r.data);
      // hyper refuses some shapes itself (a CONNECT needs an authority) with a bare 400.
      if (method === "CONNECT" && a?.status === 400) continue;
      coded(a, 405, "invalid_request_error");
      assert.equal(a.headers.allow, "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS", method);
    }
    assert.deepEqual(
      upstream().map((q) => q.method),
      [],
      "nothing upstream",
    );
    // Without the key, the 401 comes first, as for any other request.
    const r = await raw(gw.url, [request("trace /v1/messages HTTP/1.1", ["Host: 127.0.0.1", "Connection: close"])]);
    coded(answers(r.data)[0], 401, "authentication_error");
    // The API's own methods still pass.
    for (const [method, path] of [
      ["DELETE", "/v1/files/file_0123456789ab"],
      ["GET", "/v1/models"],
    ]) {
      const res = await fetch(`${gw.url}${path}`, { method, headers: { "x-api-key": KEY } });
      await res.arrayBuffer();
    }
    assert.deepEqual(
      upstream().map((q) => q.method),
      ["DELETE", "GET"],
    );
  } finally {
    await gw.close(1000);
  }
});

test("smuggling shapes get a refusal or the framing RFC 9112 settles, never an ambiguous forward", async () => {
  const gw = await gateway(["smuggle@x.test"]);
  const chunked = (body) => `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`;
  const head = ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "content-type: application/json"];
  try {
    // Refused before anything is forwarded: hyper's own 400 (no body) or the gateway's coded one.
    for (const [name, bytes, status] of [
      ["two different content-lengths", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: ${BODY.length}`, "Content-Length: 5"], BODY), 400],
      ["a content-length list", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: ${BODY.length}, ${BODY.length}`], BODY), 400],
      ["a signed content-length", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: +${BODY.length}`], BODY), 400],
      ["Transfer-Encoding: chunked, identity", request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked, identity"], chunked(BODY)), 400],
      ["Transfer-Encoding: identity", request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: identity"], BODY), 400],
      [
        "Transfer-Encoding twice",
        request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked", "Transfer-Encoding: identity"], chunked(BODY)),
        400,
      ],
      ["Transfer-Encoding in HTTP/1.0", request("POST /v1/messages HTTP/1.0", [...head, "Transfer-Encoding: chunked"], chunked(BODY)), 400],
      // The compressed bytes went upstream as the body: hyper undoes only the chunking.
      ["Transfer-Encoding: gzip, chunked", request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: gzip, chunked"], chunked(BODY)), 501],
      ["an obs-fold", request("POST /v1/messages HTTP/1.1", [...head, "anthropic-beta: a,", " b", `content-length: ${BODY.length}`], BODY), 400],
      ["a NUL in a value", request("POST /v1/messages HTTP/1.1", [...head, "x-note: a\x00b", `content-length: ${BODY.length}`], BODY), 400],
      ["a CR in a value", request("POST /v1/messages HTTP/1.1", [...head, "x-note: a\rb", `content-length: ${BODY.length}`], BODY), 400],
      ["a space before the colon", request("POST /v1/messages HTTP/1.1", [...head, `content-length : ${BODY.length}`], BODY), 400],
      ["a space in the target", request("POST /v1/mes sages HTTP/1.1", [...head, `content-length: ${BODY.length}`], BODY), 400],
      ["HTTP/1.2", request("POST /v1/messages HTTP/1.2", [...head, `content-length: ${BODY.length}`], BODY), 400],
      ["a URL of 70,000 characters", request(`GET /v1/models?${"a".repeat(70_000)} HTTP/1.1`, head), 414],
      ["3,000 headers", request("GET /v1/models HTTP/1.1", [...head, ...Array.from({ length: 3000 }, (_, i) => `x-h${i}: v`)]), 431],
    ]) {
      mock.clearRequests();
      const r = await raw(gw.url, [bytes]);
      const [a] = answers(r.data);
      assert.equal(a?.status, status, `${name}: ${a?.statusLine}`);
      if (a.body) coded(a, status, "invalid_request_error");
      assert.ok(r.closed, `${name}: the connection is closed`);
      assert.equal(upstream().length, 0, `${name}: nothing upstream`);
    }

    // Both lengths: the chunked framing wins (RFC 9112 6.3), the body goes up whole, and the
    // connection is closed after the answer, so what the length would have left is never read
    // as a request.
    mock.clearRequests();
    const smuggled = request("GET /v1/models HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`]);
    const both = await raw(gw.url, [
      request("POST /v1/messages HTTP/1.1", [...head, "Content-Length: 4", "Transfer-Encoding: chunked"], chunked(BODY)) + smuggled,
    ]);
    const got = answers(both.data);
    assert.deepEqual(
      got.map((a) => a.status),
      [200],
    );
    assert.equal(got[0].headers.connection, "close");
    assert.ok(both.closed);
    assert.deepEqual(
      upstream().map((q) => [q.method, q.path, q.body]),
      [["POST", "/v1/messages", BODY]],
    );

    // Legal: chunk extensions and trailers (a key in a trailer counts for nothing), a bare LF
    // as the line end (RFC 9112 2.2 lets a server take it).
    mock.clearRequests();
    const ext = await raw(gw.url, [
      request(
        "POST /v1/messages HTTP/1.1",
        [...head, "Transfer-Encoding: chunked", "Connection: close"],
        `${BODY.length.toString(16)};name="v a l";x\r\n${BODY}\r\n0;last\r\nx-trailer: t\r\n\r\n`,
      ),
    ]);
    assert.equal(answers(ext.data)[0].status, 200);
    const trailerKey = await raw(gw.url, [
      request(
        "POST /v1/messages HTTP/1.1",
        ["Host: 127.0.0.1", "content-type: application/json", "Transfer-Encoding: chunked", "Connection: close"],
        `${chunked(BODY).slice(0, -2)}x-api-key: ${KEY}\r\n\r\n`,
      ),
    ]);
    coded(answers(trailerKey.data)[0], 401, "authentication_error");
    const lf = await raw(gw.url, [
      request("POST /v1/messages HTTP/1.1", [...head, `content-length: ${BODY.length}`, "Connection: close"], BODY).replaceAll("\r\n", "\n"),
    ]);
    assert.match(lf.data, /^HTTP\/1\.1 200/);
    assert.deepEqual(
      upstream().map((q) => q.body),
      [BODY, BODY],
    );
  } finally {
    await gw.close(1000);
  }
});

test("request framing, each shape followed by a request whose body is a request: served as one request with its body whole, or refused with the connection closed; no request is read from another's bytes, and an absolute-form target's host is used nowhere", async () => {
  const gw = await gateway(["frames@x.test"]);
  const { port } = new URL(gw.url);
  const head = ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "content-type: application/json"];
  const size = BODY.length.toString(16);
  const chunked = (chunks) => request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked"], chunks);
  const sized = (target, lines = head) => request(`POST ${target} HTTP/1.1`, [...lines, `Content-Length: ${BODY.length}`], BODY);
  // What a proxy in front sends next on the same connection: a request whose body is one more
  // request. Read where the body ends, it is one request upstream; read anywhere else, the
  // inner one is seen.
  const inner = request("GET /v1/models?smuggled=1 HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "Connection: close"]);
  const next = request("POST /v1/messages/count_tokens HTTP/1.1", [...head, `Content-Length: ${inner.length}`, "Connection: close"], inner);
  const both = [
    ["POST", "/v1/messages", BODY],
    ["POST", "/v1/messages/count_tokens", inner],
  ];
  const first = [["POST", "/v1/messages", BODY]];
  try {
    // served: the two requests, each as sent. closed: the first served and the connection closed
    // with its answer (what follows never read). A status: refused so, nothing upstream, closed.
    for (const [name, bytes, expect] of [
      [
        "Content-Length beside Transfer-Encoding: chunked",
        request("POST /v1/messages HTTP/1.1", [...head, "Content-Length: 4", "Transfer-Encoding: chunked"], `${size}\r\n${BODY}\r\n0\r\n\r\n`),
        "closed",
      ],
      ["two different Content-Lengths", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: ${BODY.length}`, "Content-Length: 4"], BODY), 400],
      ["a Content-Length in hex", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: 0x${size}`], BODY), 400],
      ["a Content-Length with leading zeros", request("POST /v1/messages HTTP/1.1", [...head, `Content-Length: 000${BODY.length}`], BODY), "served"],
      [
        "Transfer-Encoding: chunked, identity",
        request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked, identity"], `${size}\r\n${BODY}\r\n0\r\n\r\n`),
        400,
      ],
      [
        "Transfer-Encoding: gzip, chunked",
        request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: gzip, chunked"], `${size}\r\n${BODY}\r\n0\r\n\r\n`),
        501,
      ],
      [
        "Transfer-Encoding: chunked;q=1",
        request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked;q=1"], `${size}\r\n${BODY}\r\n0\r\n\r\n`),
        400,
      ],
      // Whitespace after the size, and extensions, as RFC 9112 7.1.1 reads them (BWS): the size.
      ["a chunk size followed by a space", chunked(`${size} \r\n${BODY}\r\n0\r\n\r\n`), "served"],
      ["a chunk size followed by a tab", chunked(`${size}\t\r\n${BODY}\r\n0\r\n\r\n`), "served"],
      ["a chunk extension", chunked(`${size};x=y\r\n${BODY}\r\n0\r\n\r\n`), "served"],
      ["a chunk extension after whitespace", chunked(`${size} ; x = "y z"\r\n${BODY}\r\n0;last\r\n\r\n`), "served"],
      ["a space before the chunk size", chunked(` ${size}\r\n${BODY}\r\n0\r\n\r\n`), 400],
      ["a chunk size with 0x", chunked(`0x${size}\r\n${BODY}\r\n0\r\n\r\n`), 400],
      ["a chunk longer than its size", chunked(`${(BODY.length - 3).toString(16)}\r\n${BODY}\r\n0\r\n\r\n`), 400],
      ["a bare LF after a chunk size", chunked(`${size}\n${BODY}\r\n0\r\n\r\n`), 400],
      ["a bare LF after a chunk's data", chunked(`${size}\r\n${BODY}\n0\r\n\r\n`), 400],
      ["a bare LF after the last chunk's size", chunked(`${size}\r\n${BODY}\r\n0\n\r\n`), 400],
      // hyper read on to the next CRLF CRLF: the next request's head went as trailers, its body
      // was served as a request.
      ["a bare LF as the body's last line", chunked(`${size}\r\n${BODY}\r\n0\r\n\n`), 400],
      ["a bare LF ending a trailer", chunked(`${size}\r\n${BODY}\r\n0\r\nx-t: 1\n\r\n`), "closed"],
      ["a trailer", chunked(`${size}\r\n${BODY}\r\n0\r\nx-t: 1\r\n\r\n`), "closed"],
      // Refused by its head, the body read and dropped: the same.
      [
        "a bare LF ending a trailer, the key wrong",
        request("POST /v1/messages HTTP/1.1", ["Host: 127.0.0.1", "x-api-key: wrong", "Transfer-Encoding: chunked"], `${size}\r\n${BODY}\r\n0\r\nx-t: 1\n\r\n`),
        401,
      ],
      [
        "a bare LF as the body's last line, a path elsewhere",
        request("POST /v2/messages HTTP/1.1", [...head, "Transfer-Encoding: chunked"], `${size}\r\n${BODY}\r\n0\r\n\n`),
        404,
      ],
      [
        "an obs-fold in Transfer-Encoding",
        request("POST /v1/messages HTTP/1.1", [...head, "Transfer-Encoding:", " chunked"], `${size}\r\n${BODY}\r\n0\r\n\r\n`),
        400,
      ],
      ["bare LF line ends in the head", sized("/v1/messages").replaceAll("\r\n", "\n"), "served"],
      ["an empty line before the request line", `\r\n${sized("/v1/messages")}`, "served"],
      // Served by its path, at the API's origin: the target's host is not where it goes.
      ["an absolute-form target elsewhere", sized("http://evil.example/v1/messages"), "served"],
      ["an absolute-form https target with a port", sized("https://evil.example:444/v1/messages"), "served"],
      ["an absolute-form target with user info", sized("http://user:pw@evil.example/v1/messages"), "served"],
      ["an absolute-form target and Host elsewhere", sized("http://evil.example/v1/messages", ["Host: evil.example", ...head.slice(1)]), "served"],
      ["an absolute-form target for this gateway", sized(`http://127.0.0.1:${port}/v1/messages`), "served"],
    ]) {
      mock.clearRequests();
      const r = await raw(gw.url, [bytes + next]);
      const got = answers(r.data);
      const sent = upstream().map((q) => [q.method, q.path, q.body]);
      const seen = `${name}: ${JSON.stringify(got.map((a) => a.status))}, closed ${r.closed}, upstream ${JSON.stringify(sent.map(([m, p]) => `${m} ${p}`))}`;
      if (expect === "served") {
        assert.equal(got[0]?.status, 200, seen);
        assert.equal(got.length, 2, seen);
        assert.deepEqual(sent, both, seen);
      } else if (expect === "closed") {
        assert.deepEqual(
          got.map((a) => a.status),
          [200],
          seen,
        );
        assert.equal(got[0].headers.connection, "close", seen);
        assert.deepEqual(sent, first, seen);
      } else {
        assert.deepEqual(
          got.map((a) => a.status),
          [expect],
          seen,
        );
        // hyper's own 400 has no body; the gateway's is coded.
        const type = { 401: "authentication_error", 404: "not_found_error" }[expect] ?? "invalid_request_error";
        if (got[0].body) coded(got[0], expect, type);
        assert.deepEqual(sent, [], seen);
      }
      assert.ok(r.closed, `${seen}: the connection is closed`);
      for (const q of upstream()) {
        assert.equal(q.headers.host, new URL(mock.url).host, name);
        assert.ok(!JSON.stringify(q.headers).includes("evil.example"), `${name}: ${JSON.stringify(q.headers)}`);
      }
    }

    // A batch's results_url names the gateway by the Host the client sent, never by the host of
    // an absolute-form target (a key sent there would go elsewhere).
    const batch = JSON.stringify({ requests: [{ custom_id: "a", params: JSON.parse(BODY) }] });
    const r = await raw(gw.url, [
      request("POST http://evil.example/v1/messages/batches HTTP/1.1", [...head, `Content-Length: ${batch.length}`, "Connection: close"], batch),
    ]);
    const [a] = answers(r.data);
    assert.equal(a?.status, 200, r.data.slice(0, 200));
    assert.match(JSON.parse(a.body).results_url ?? "", /^http:\/\/127\.0\.0\.1\/v1\/messages\/batches\//);
    assert.ok(!a.body.includes("evil.example"), a.body);

    // CONNECT's authority form (and one sent with another method) names no /v1/ path: 404,
    // nothing upstream, and the request behind it is read where it begins.
    for (const line of ["CONNECT api.anthropic.com:443 HTTP/1.1", "GET api.anthropic.com:443 HTTP/1.1"]) {
      mock.clearRequests();
      const r = await raw(gw.url, [request(line, ["Host: api.anthropic.com:443", `x-api-key: ${KEY}`]) + next]);
      const got = answers(r.data);
      assert.equal(got[0]?.status, 404, `${line}: ${r.data.slice(0, 200)}`);
      coded(got[0], 404, "not_found_error");
      assert.deepEqual(
        upstream().map((q) => [q.method, q.path, q.body]),
        [both[1]],
        line,
      );
    }
  } finally {
    await gw.close(1000);
  }
});

test("Host: an HTTP/1.1 request without one, with two, or with one that is no host gets 400 (RFC 9112 3.2); HTTP/1.0 needs none", async () => {
  const gw = await gateway(["host@x.test"]);
  try {
    mock.clearRequests();
    const tail = [`x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${BODY.length}`, "Connection: close"];
    for (const [name, hosts] of [
      ["no Host", []],
      ["two Hosts", ["Host: 127.0.0.1", "Host: evil.test"]],
      ["a Host with user info", ["Host: user@evil.test"]],
      ["a Host with a path", ["Host: evil.test/x"]],
    ]) {
      const r = await raw(gw.url, [request("POST /v1/messages/batches HTTP/1.1", [...hosts, ...tail], BODY)]);
      coded(answers(r.data)[0], 400, "invalid_request_error");
      assert.ok(r.closed, name);
    }
    // A long body still being sent: its 400 is read, not a reset connection.
    const long = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "x".repeat(5 * 1024 * 1024) }] });
    const r = await raw(
      gw.url,
      [request("POST /v1/messages HTTP/1.1", [`x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${long.length}`], long)],
      { waitMs: 30_000 },
    );
    coded(answers(r.data)[0], 400, "invalid_request_error");
    assert.equal(upstream().length, 0, "nothing upstream");
    for (const host of ["Host: 127.0.0.1:8787", "Host: [::1]:8787", "Host: localhost", "Host:"]) {
      const r = await raw(gw.url, [request("POST /v1/messages HTTP/1.1", [host, ...tail], BODY)]);
      assert.match(r.data, /^HTTP\/1\.1 200/, host);
    }
  } finally {
    await gw.close(1000);
  }
});

test("request targets: absolute-form is served, a query passes unchanged, a fragment is dropped; paths that are not /v1/ as written are 404", async () => {
  const gw = await gateway(["target@x.test"]);
  const { port } = new URL(gw.url);
  try {
    mock.clearRequests();
    for (const target of [`http://127.0.0.1:${port}/v1/messages`, "/v1/messages?beta=true", "/v1/messages?a=%2e%2e/&b=..%2F", "/v1/messages#part"]) {
      const r = await raw(gw.url, [post(target, BODY, ["Connection: close"])]);
      assert.equal(answers(r.data)[0]?.status, 200, target);
    }
    assert.deepEqual(
      upstream().map((q) => q.path),
      ["/v1/messages", "/v1/messages?beta=true", "/v1/messages?a=%2e%2e/&b=..%2F", "/v1/messages"],
    );
    mock.clearRequests();
    for (const target of [
      "//v1/messages",
      "/v1/./messages",
      "/v1/%2e%2e/api/oauth/profile",
      "/V1/messages",
      "/v1%2fmessages",
      `http://127.0.0.1:${port}/v1/../api/oauth/profile`,
    ]) {
      const r = await raw(gw.url, [post(target, BODY, ["Connection: close"])]);
      coded(answers(r.data)[0], 404, "not_found_error");
    }
    assert.equal(upstream().length, 0);
  } finally {
    await gw.close(1000);
  }
});

test("the key: either x-api-key or a bearer may carry it (the Python SDK with ANTHROPIC_API_KEY set sends both); either header twice is refused; neither goes upstream", async () => {
  const gw = await gateway(["keys@x.test"]);
  // Another key, as a real API key would sit in a shell's environment (built here, not a literal).
  const other = ["other", "api", "key", "0".repeat(12)].join("-");
  try {
    mock.clearRequests();
    // The Anthropic Python SDK sends X-Api-Key and Authorization: Bearer when it has both
    // (`ANTHROPIC_API_KEY` left in a shell's environment, the gateway's key as
    // `ANTHROPIC_AUTH_TOKEN`, as the README has Claude Code take it): that was a 401.
    for (const headers of [
      { "X-Api-Key": other, Authorization: `Bearer ${KEY}` },
      { "X-Api-Key": KEY, Authorization: `Bearer ${other}` },
    ]) {
      const res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...headers, "content-type": "application/json" }, body: BODY });
      assert.equal(res.status, 200, JSON.stringify(Object.keys(headers)));
      assert.equal((await res.json()).content[0].text, "Hello from keys@x.test");
    }

    for (const [name, lines, status] of [
      ["x-api-key twice, the key first", [`x-api-key: ${KEY}`, "x-api-key: wrong-key"], 401],
      ["x-api-key twice, the key last", ["x-api-key: wrong-key", `x-api-key: ${KEY}`], 401],
      ["Authorization twice", [`Authorization: Bearer ${KEY}`, `Authorization: Bearer ${KEY}`], 401],
      ["spaces around the key", [`x-api-key:    ${KEY}   `], 200],
      ["an upper-case header name", [`X-API-KEY: ${KEY}`], 200],
      ["a bearer in any case, an empty x-api-key", ["x-api-key: ", `AUTHORIZATION: bEaReR ${KEY}`], 200],
      ["neither", ["x-api-key: wrong-key", "Authorization: Bearer wrong-too"], 401],
    ]) {
      const r = await raw(gw.url, [
        request(
          "POST /v1/messages HTTP/1.1",
          ["Host: 127.0.0.1", ...lines, "content-type: application/json", `content-length: ${BODY.length}`, "Connection: close"],
          BODY,
        ),
      ]);
      const [a] = answers(r.data);
      if (status === 401) coded(a, 401, "authentication_error");
      else assert.equal(a?.status, status, `${name}: ${a?.statusLine}`);
    }
    const sent = upstream();
    assert.equal(sent.length, 5, "the two with both headers and the three accepted raw ones");
    for (const q of sent) {
      const values = Object.values(q.headers).join("\n");
      assert.ok(!values.includes(KEY) && !values.includes(other), "no key the client presented went upstream");
      assert.match(q.headers.authorization, /^Bearer sk-ant-oat01-mock-/);
    }
  } finally {
    await gw.close(1000);
  }
});

test("the client's address, a proxy's account of the hop and cookies stay at the gateway: they went to the API with every account's credential", async () => {
  const gw = await gateway(["proxied@x.test"]);
  // What nginx, Caddy, Cloudflare or a corporate proxy in front of the gateway adds, and a cookie.
  const identifying = {
    "X-Forwarded-For": "203.0.113.7, 10.0.0.2",
    "X-Forwarded-Host": "pool.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    Forwarded: "for=203.0.113.7;host=pool.example;proto=https",
    "X-Real-IP": "203.0.113.7",
    Via: "1.1 proxy.example",
    "True-Client-IP": "203.0.113.7",
    "CF-Connecting-IP": "203.0.113.7",
    "X-Client-IP": "203.0.113.7",
    Cookie: "sid=person-0123",
  };
  try {
    mock.clearRequests();
    const r = await raw(gw.url, [
      post("/v1/messages", BODY, [
        ...Object.entries(identifying).map(([k, v]) => `${k}: ${v}`),
        "anthropic-version: 2023-06-01",
        "x-note: kept",
        "Connection: close",
      ]),
    ]);
    assert.equal(answers(r.data)[0]?.status, 200, r.data.slice(0, 80));
    const [sent] = upstream();
    assert.equal(sent.headers["x-note"], "kept");
    assert.equal(sent.headers["anthropic-version"], "2023-06-01");
    assert.match(sent.headers.authorization, /^Bearer sk-ant-oat01-mock-/);
    const leaked = Object.keys(identifying).filter((name) => sent.headers[name.toLowerCase()] !== undefined);
    assert.deepEqual(leaked, [], "none of these went upstream");
    const values = JSON.stringify(sent.headers);
    assert.ok(!values.includes("203.0.113.7") && !values.includes("person-0123"), values);
  } finally {
    await gw.close(1000);
  }
});

test("the gateway key anywhere else in a request never goes upstream: a header of another name holding it is left out, a URL holding it is refused", async () => {
  const gw = await gateway(["elsewhere@x.test"]);
  try {
    mock.clearRequests();
    // Besides x-api-key, in headers of the client's own (a custom header, an Azure-style
    // api-key, a cookie): served, those headers left out, the others passed on.
    const r = await raw(gw.url, [
      post("/v1/messages", BODY, [`x-auth-token: ${KEY}`, `api-key: ${KEY}`, `cookie: a=b; gw=${KEY}`, "x-note: kept", "Connection: close"]),
    ]);
    assert.equal(answers(r.data)[0]?.status, 200, r.data.slice(0, 80));
    const [sent] = upstream();
    assert.equal(sent.headers["x-note"], "kept");
    for (const name of ["x-auth-token", "api-key", "cookie"]) assert.equal(sent.headers[name], undefined, name);
    assert.ok(!JSON.stringify(sent.headers).includes(KEY), "the key is in no header upstream");

    // In the URL (the query, as clients that take a key there send it; percent-encoded; the
    // path): the URL goes upstream as it is, so the request is refused, nothing sent.
    mock.clearRequests();
    const encoded = [...KEY].map((c) => `%${c.charCodeAt(0).toString(16)}`).join("");
    for (const target of [`/v1/messages?key=${KEY}`, `/v1/messages?beta=true&api_key=${encoded}`, `/v1/messages/${KEY}`]) {
      const r = await raw(gw.url, [post(target, BODY, ["Connection: close"])]);
      coded(answers(r.data)[0], 400, "invalid_request_error");
    }
    assert.equal(upstream().length, 0, "nothing upstream");
    // Only where the key is: a query without it still passes unchanged.
    const ok = await raw(gw.url, [post("/v1/messages?beta=true", BODY, ["Connection: close"])]);
    assert.equal(answers(ok.data)[0]?.status, 200);
    assert.deepEqual(
      upstream().map((q) => q.path),
      ["/v1/messages?beta=true"],
    );
  } finally {
    await gw.close(1000);
  }
});

test("/metrics answers HEAD as GET, without the body (it was a 404); with the key only; other methods on /metrics and /healthz get 405", async () => {
  const gw = await gateway(["head@x.test"]);
  try {
    const get = await raw(gw.url, [request("GET /metrics HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "Connection: close"])]);
    const [g] = answers(get.data);
    assert.equal(g?.status, 200, g?.statusLine);
    const head = await raw(gw.url, [request("HEAD /metrics HTTP/1.1", ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "Connection: close"])]);
    const [h] = answers(head.data, { head: true });
    assert.equal(h?.status, 200, h?.statusLine);
    assert.equal(h.headers["content-type"], g.headers["content-type"]);
    assert.equal(answers(head.data, { head: true }).rest, "", "no body after the head");
    const unkeyed = await raw(gw.url, [request("HEAD /metrics HTTP/1.1", ["Host: 127.0.0.1", "Connection: close"])]);
    assert.equal(answers(unkeyed.data, { head: true })[0]?.status, 401);
    // Another method on the gateway's own pages is 405 naming GET and HEAD (it was a 404 whose
    // message named these very paths).
    mock.clearRequests();
    for (const line of ["POST /metrics HTTP/1.1", "DELETE /healthz HTTP/1.1", "PUT /metrics HTTP/1.1"]) {
      const r = await raw(gw.url, [request(line, ["Host: 127.0.0.1", `x-api-key: ${KEY}`, "content-length: 2", "Connection: close"], "{}")]);
      const [a] = answers(r.data);
      coded(a, 405, "invalid_request_error");
      assert.equal(a.headers.allow, "GET, HEAD", line);
    }
    assert.equal(mock.requests.length, 0, "nothing upstream");
  } finally {
    await gw.close(1000);
  }
});

/**
 * A raw client that sends `bytes` and then half-closes (`socket.end()`: shutdown(SHUT_WR), as
 * `nc -N`, some proxies and scripted clients do), reading on until the gateway closes.
 */
function halfClosed(url, bytes, { waitMs = 20_000 } = {}) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ port: Number(port), host: hostname, allowHalfOpen: true });
    let data = "";
    socket.on("data", (d) => (data += d.toString("latin1")));
    socket.on("connect", () => socket.end(bytes));
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ data, closed: false });
    }, waitMs);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve({ data, closed: true });
    });
    socket.on("error", () => {});
  });
}

/** "closed" once the mock sees the upstream connection close, else what was seen after 5 s. */
async function closedWithin5s(closed) {
  let timer;
  const late = new Promise((r) => (timer = setTimeout(() => r("still open after 5 s"), 5000)));
  try {
    return await Promise.race([closed.then(() => "closed"), late]);
  } finally {
    clearTimeout(timer);
  }
}

test("a client that half-closes after its whole request gets the answer in full, streamed or held; one that closes while held still cancels the upstream at once", async () => {
  // The end of the client's input was taken for the client leaving: hyper dropped the request
  // and the upstream call with it, and the client read an empty, closed connection.
  const gw = await gateway(["half@x.test"]);
  try {
    // A streamed answer, its events spread out so that it is still running after the end.
    mock.script("half@x.test", [{ sse: true, text: "s".repeat(200), deltaSize: 10, delayMs: 20 }]);
    const streamed = await halfClosed(gw.url, post("/v1/messages", STREAM_BODY));
    assert.ok(streamed.closed, "the gateway closes once the answer is out");
    const finals = answers(streamed.data).filter((a) => a.status >= 200);
    assert.equal(finals.length, 1, streamed.data.slice(0, 300));
    assert.equal(finals[0].status, 200);
    assert.equal(deltas(finals[0].body), "s".repeat(200));
    assert.equal(answers(streamed.data).rest, "");

    // A held answer: upstream answers only a second after the client's end.
    let open;
    const gate = new Promise((r) => (open = r));
    mock.script("half@x.test", [{ until: gate, text: "held answer" }]);
    const asked = mock.waitFor("api", (r) => r.email === "half@x.test");
    const held = halfClosed(gw.url, post("/v1/messages"));
    await asked;
    await new Promise((r) => setTimeout(r, 1000));
    open();
    const h = await held;
    assert.ok(h.closed);
    const all = answers(h.data);
    for (const interim of all.filter((a) => a.status < 200)) assert.equal(interim.status, 100, "only a 100 before the answer");
    const [answer] = all.filter((a) => a.status >= 200);
    assert.equal(answer?.status, 200, h.data.slice(0, 300));
    assert.equal(JSON.parse(answer.body).content[0].text, "held answer");

    // A request body never finished before the end: a 400 at once, nothing upstream.
    mock.clearRequests();
    const cut = post("/v1/messages");
    const short = await halfClosed(gw.url, cut.slice(0, cut.length - 5), { waitMs: 10_000 });
    assert.ok(short.closed, "answered and closed well before the body timeout");
    coded(
      answers(short.data).find((a) => a.status >= 200),
      400,
      "invalid_request_error",
    );
    assert.equal(upstream().length, 0);

    // A client that closes its socket (not half) while its answer is held: the upstream call is
    // cancelled at once, the answer never waited for.
    mock.script("half@x.test", [{ hang: true }]);
    const arrived = mock.waitFor("api", (r) => r.email === "half@x.test");
    const closed = mock.waitFor("closed", (r) => r.email === "half@x.test");
    const { hostname, port } = new URL(gw.url);
    const gone = connect(Number(port), hostname);
    gone.on("error", () => {});
    gone.on("connect", () => gone.write(post("/v1/messages")));
    await arrived;
    gone.destroy();
    assert.equal(await closedWithin5s(closed), "closed");

    // Half-closed first and closed after: still seen as gone once the gateway has a byte for it.
    mock.script("half@x.test", [{ sse: true, text: "t".repeat(2000), deltaSize: 10, delayMs: 50 }]);
    const closedToo = mock.waitFor("closed", (r) => r.email === "half@x.test");
    const later = connect({ port: Number(port), host: hostname, allowHalfOpen: true });
    later.on("error", () => {});
    later.on("connect", () => later.end(post("/v1/messages", STREAM_BODY)));
    await new Promise((r) => later.once("data", r));
    later.destroy();
    assert.equal(await closedWithin5s(closedToo), "closed");
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

/**
 * A raw client on its own socket: `bytes` written, then its side half-closed (`half`) or left
 * open. `data` is what it has read so far; `closed` resolves when the socket closes.
 */
function rawClient(url, bytes, { half }) {
  const { hostname, port } = new URL(url);
  const socket = connect({ port: Number(port), host: hostname, allowHalfOpen: true });
  const client = { data: "", closed: new Promise((r) => socket.on("close", r)), destroy: () => socket.destroy() };
  socket.on("data", (d) => (client.data += d.toString("latin1")));
  socket.on("error", () => {});
  socket.on("connect", () => (half ? socket.end(bytes) : socket.write(bytes)));
  return client;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("a client that half-closes, takes the first 100 and closes later while its answer is held cancels the upstream call; waiting costs no CPU", async () => {
  // One 100 Continue was sent per connection: a client that closed after it (socat closes half a
  // second after its input ends, a relay when its own client goes) answered nothing more, and
  // the held request went on upstream until its answer came, hours for a hold.
  const gw = await gateway(["later@x.test"]);
  try {
    mock.script("later@x.test", [{ hang: true }]);
    const arrived = mock.waitFor("api", (r) => r.email === "later@x.test");
    const closed = mock.waitFor("closed", (r) => r.email === "later@x.test");
    const client = rawClient(gw.url, post("/v1/messages"), { half: true });
    await arrived;
    // Held for a while, half-closed and still reading: probes (at once, then 1 s, 3 s, 7 s
    // after), and nearly no CPU (a spinning probe took a whole core, about as much CPU time as
    // time passed). It closes between the second probe and the third.
    const cpu = process.cpuUsage();
    const wall = performance.now();
    await sleep(1500);
    const { user, system } = process.cpuUsage(cpu);
    const spent = (user + system) / 1000;
    const passed = performance.now() - wall;
    assert.ok(spent < passed / 4, `${Math.round(spent)} ms of CPU in ${Math.round(passed)} ms of a held request`);
    const read = client.data;
    client.destroy();
    assert.equal(await closedWithin5s(closed), "closed");
    const interim = answers(read);
    assert.ok(interim.length >= 1, "the probe came");
    assert.deepEqual(
      interim.map((a) => a.status),
      interim.map(() => 100),
      "only 100 Continue while held",
    );
    assert.equal(interim.rest, "");
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

test("HTTP/1.0: a client that half-closes after its request gets its answer, with nothing before it; one that aborts, or half-closes and closes later, while its answer is held cancels the upstream call", async () => {
  // An HTTP/1.0 client may be sent no 100 Continue, so it got no probe at all: one that went
  // away (nginx speaks HTTP/1.0 to what it proxies to, and closes when its own client aborts)
  // left its request going on upstream until the answer came.
  const gw = await gateway(["ten@x.test"]);
  const old = request(
    "POST /v1/messages HTTP/1.0",
    [`x-api-key: ${KEY}`, "content-type: application/json", `content-length: ${Buffer.byteLength(BODY)}`],
    BODY,
  );
  try {
    let open;
    const gate = new Promise((r) => (open = r));
    mock.script("ten@x.test", [{ until: gate, text: "held for 1.0" }]);
    const asked = mock.waitFor("api", (r) => r.email === "ten@x.test");
    const half = rawClient(gw.url, old, { half: true });
    await asked;
    await sleep(1500);
    open();
    await half.closed;
    assert.match(half.data, /^HTTP\/1\.0 200 /, "the answer first: no interim answer, no stray byte");
    const [a, ...more] = answers(half.data);
    assert.equal(JSON.parse(a.body).content[0].text, "held for 1.0");
    assert.equal(more.length, 0);

    for (const [name, halfFirst] of [
      ["an abort", false],
      ["a half-close, then a close", true],
    ]) {
      mock.script("ten@x.test", [{ hang: true }]);
      const arrived = mock.waitFor("api", (r) => r.email === "ten@x.test");
      const closed = mock.waitFor("closed", (r) => r.email === "ten@x.test");
      const client = rawClient(gw.url, old, { half: halfFirst });
      await arrived;
      if (halfFirst) await sleep(1500);
      client.destroy();
      assert.equal(await closedWithin5s(closed), "closed", name);
      assert.equal(client.data, "", `${name}: nothing was read before the answer`);
    }
  } finally {
    mock.clearScripts();
    await gw.close(1000);
  }
});

test("a header value with bytes past ASCII (UTF-8 text, legal as obs-text) goes upstream as its bytes, not dropped", async () => {
  // The value was dropped unless it was visible ASCII: the request went on without the header.
  const gw = await gateway(["bytes@x.test"]);
  try {
    mock.clearRequests();
    const r = await raw(gw.url, [Buffer.from(post("/v1/messages", BODY, ["x-title: café ☕", "Connection: close"]), "utf8")]);
    assert.equal(answers(r.data)[0]?.status, 200);
    const [sent] = upstream();
    const value = sent.headers["x-title"];
    assert.ok(value !== undefined, "the header went upstream");
    // The server reads obs-text as Latin-1 (Node) or as UTF-8 (Bun): the bytes are the same.
    assert.ok(
      [Buffer.from(value, "latin1"), Buffer.from(value, "utf8")].some((b) => b.equals(Buffer.from("café ☕"))),
      JSON.stringify(value),
    );
  } finally {
    await gw.close(1000);
  }
});

test("a request body that keeps arriving is read past the body timeout; one that goes silent for it gets 408 naming the wait", async () => {
  // The body timeout was a total: a large upload still arriving over a slow link was cut with
  // a 408 once the timeout had passed since the head, however steadily its bytes came.
  const path = await seedPool(mock, ["slow-body@x.test"]);
  // Pieces come a quarter of the timeout apart: a busy machine's timers running late must not
  // make a silence of it.
  const gateway = await lib.serve({ port: 0, path, bodyTimeoutMs: 1000 });
  try {
    const pieces = 10;
    const size = Math.ceil(BODY.length / pieces);
    const { hostname, port } = new URL(gateway.url);
    const steady = await new Promise((resolve) => {
      const socket = connect(Number(port), hostname);
      let data = "";
      socket.on("data", (d) => {
        data += d.toString("latin1");
      });
      socket.on("error", () => {});
      socket.on("connect", async () => {
        const whole = post("/v1/messages");
        const headEnd = whole.indexOf("\r\n\r\n") + 4;
        socket.write(whole.slice(0, headEnd));
        // 10 pieces 250 ms apart: 2.5 s in all, never 1 s without a byte.
        for (let i = 0; i < pieces; i++) {
          await new Promise((r) => setTimeout(r, 250));
          socket.write(whole.slice(headEnd + i * size, headEnd + (i + 1) * size));
        }
      });
      const done = setInterval(() => {
        if (/\r\n\r\n[\s\S]*"type":"message"/.test(data) || /^HTTP\/1\.1 4/.test(data)) {
          clearInterval(done);
          socket.destroy();
          resolve(data);
        }
      }, 20);
    });
    assert.match(steady, /^HTTP\/1\.1 200 /, steady.slice(0, 300));

    const started = Date.now();
    const whole = post("/v1/messages");
    const stalled = await raw(gateway.url, [whole.slice(0, whole.indexOf("\r\n\r\n") + 4 + 5)], { waitMs: 5000 });
    const [answer] = answers(stalled.data);
    assert.equal(answer?.status, 408, stalled.data.slice(0, 300));
    assert.match(answer.body, /no byte of the request body came for 1 s/);
    assert.ok(Date.now() - started < 4000);
  } finally {
    await gateway.close(0);
  }
});
