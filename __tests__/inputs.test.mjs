// What a caller can hand the pool's fetch, and what it does with the Response it gets back, on
// both transports, compared with the runtime's own fetch against the same loopback mock (which
// keeps each request's exact bytes): every body kind, Request inputs, URLs, headers, options,
// and the Response's reads, clones, null bodies and cancels.
import { test } from "node:test";
import assert from "node:assert/strict";
import Anthropic, { toFile } from "@anthropic-ai/sdk";
import { createPoolFetch, gatewayKey, serve } from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { body, jsonHeaders, seedPool, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();
const filesUrl = () => `${mock.url}/v1/files`;
let pools = 0;

/**
 * A pool of two accounts whose first request to `route` is answered 429 (whichever account
 * gets it), so each request is sent twice: once to each account.
 */
async function failingOver(transport, route = "/v1/files") {
  pools++;
  const path = await seedPool(mock, [`in${pools}a@x.test`, `in${pools}b@x.test`]);
  // A 429 an earlier failed test left unused would answer this pool's second request.
  mock.clearScripts();
  mock.scriptAll([{ path: route, status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  mock.clearRequests();
  return { path, f: createPoolFetch({ path, transport }) };
}

const sent = (route = "/v1/files") => mock.requests.filter((r) => r.path === route);

/** A request's content type and bytes, the multipart boundary (random per body) named once. */
function shape(request) {
  let type = request.headers["content-type"] ?? null;
  let bytes = request.bytes.toString("latin1");
  const boundary = /boundary=(.+)$/.exec(type ?? "")?.[1];
  if (boundary) {
    type = type.replace(boundary, "<b>");
    bytes = bytes.split(boundary).join("<b>");
  }
  return { type, bytes };
}

/** What the runtime's own fetch sends for this body (the mock answers it 401; it is recorded). */
async function runtimeSends(make) {
  mock.clearRequests();
  await (await fetch(filesUrl(), { method: "POST", body: make(), duplex: "half" })).arrayBuffer();
  return shape(sent().at(-1));
}

const backing = new ArrayBuffer(64);
new Uint8Array(backing).forEach((_, i, bytes) => {
  bytes[i] = i;
});
const encoded = (text) => new TextEncoder().encode(text);

// Each makes a fresh body (a stream is read once).
const BODIES = {
  "FormData with a file part": () => {
    const form = new FormData();
    form.append("purpose", "user_data");
    form.append("file", new Blob(["héllo\0bin"], { type: "text/plain" }), "a b.txt");
    return form;
  },
  Blob: () => new Blob(["abc", new Uint8Array([0, 255])], { type: "application/x-thing" }),
  "Blob without a type": () => new Blob(["abc"]),
  File: () => new File(["filé"], "f.bin", { type: "application/octet-stream" }),
  URLSearchParams: () => new URLSearchParams({ a: "1 2", b: "é&=" }),
  "a Uint16Array in the middle of a buffer": () => new Uint16Array(backing, 8, 4),
  DataView: () => new DataView(backing, 5, 7),
  "a Uint8Array with an offset": () => new Uint8Array(backing, 3, 5),
  ArrayBuffer: () => backing.slice(0),
  "a Buffer": () => Buffer.from("node buffer"),
  "a ReadableStream (duplex half)": () =>
    new ReadableStream({
      start(c) {
        c.enqueue(encoded("str"));
        c.enqueue(new Uint8Array([1, 2, 3]));
        c.close();
      },
    }),
  "an async iterable": () =>
    (async function* () {
      yield encoded("it");
      yield new Uint8Array([9]);
    })(),
  "an empty Uint8Array": () => new Uint8Array(0),
};

const TEXT_BODIES = { "non-ASCII text": "ünïcødé ✓ 𝄞", "a lone surrogate": "a\uD800b", "empty text": "" };

for (const transport of ["native", "runtime"]) {
  test(`${transport}: every body kind is sent as the runtime's fetch sends it, and a 429's retry sends the same bytes and boundary`, async () => {
    for (const [kind, make] of Object.entries(BODIES)) {
      const expected = await runtimeSends(make);
      const { f } = await failingOver(transport);
      const res = await f(filesUrl(), { method: "POST", body: make(), duplex: "half" });
      assert.equal(res.status, 200, kind);
      await res.arrayBuffer();
      const [first, retry] = sent();
      assert.deepEqual([first.status, retry?.status], [429, 200], kind);
      assert.deepEqual(shape(first), expected, kind);
      assert.equal(retry.headers["content-type"], first.headers["content-type"], `${kind}: the same boundary`);
      assert.ok(retry.bytes.equals(first.bytes), `${kind}: the same bytes`);
      // fetch says how long a body is, an empty one too (the Rust client sent no length).
      assert.equal(retry.headers["content-length"], String(first.bytes.length), kind);
    }
    for (const [kind, text] of Object.entries(TEXT_BODIES)) {
      const { f } = await failingOver(transport);
      await (await f(filesUrl(), { method: "POST", body: text })).arrayBuffer();
      const [first, retry] = sent();
      // Text goes as UTF-8 (a lone surrogate as U+FFFD), typed as the fetch standard types it.
      assert.ok(first.bytes.equals(Buffer.from(text)), kind);
      assert.ok(retry.bytes.equals(first.bytes), kind);
      assert.equal(first.headers["content-type"], "text/plain;charset=UTF-8", kind);
      assert.equal(first.headers["content-length"], String(Buffer.byteLength(text)), kind);
    }
  });

  test(`${transport}: the SDK's files.upload goes up whole, and after a 429 goes up again byte for byte`, async () => {
    const { f } = await failingOver(transport);
    const client = new Anthropic({ apiKey: "placeholder", baseURL: mock.url, fetch: f, maxRetries: 0 });
    const bytes = Buffer.from([0, 1, 2, 255, 0x41]);
    const file = await client.beta.files.upload({ file: await toFile(bytes, "doc é.pdf", { type: "application/pdf" }) });
    assert.match(file.id, /^file_/);
    const [first, retry] = sent();
    assert.deepEqual([first.status, retry.status], [429, 200]);
    assert.match(first.headers["content-type"], /^multipart\/form-data; boundary=/);
    assert.equal(retry.headers["content-type"], first.headers["content-type"]);
    assert.ok(retry.bytes.equals(first.bytes));
    assert.ok(first.bytes.includes(bytes), "the file's bytes are in the form as they were");
    assert.match(first.bytes.toString("latin1"), /Content-Type: application\/pdf/i);
  });

  test(`${transport}: a body is what it was when fetch was called`, async () => {
    // fetch copies bytes when it is called; the pool sent a buffer the caller refilled at once,
    // and a stream that refills one buffer per chunk as its last chunk three times.
    let { f } = await failingOver(transport);
    const buffer = Buffer.from("original");
    const pending = f(filesUrl(), { method: "POST", body: buffer });
    buffer.fill("z");
    await (await pending).arrayBuffer();
    assert.deepEqual(
      sent().map((r) => r.body),
      ["original", "original"],
    );
    ({ f } = await failingOver(transport));
    const array = encoded("original").buffer;
    const pendingArray = f(filesUrl(), { method: "POST", body: array });
    new Uint8Array(array).fill(0x7a);
    await (await pendingArray).arrayBuffer();
    assert.deepEqual(
      sent().map((r) => r.body),
      ["original", "original"],
    );
    ({ f } = await failingOver(transport));
    const one = new Uint8Array(3);
    let n = 0;
    const refilled = new ReadableStream({
      pull(c) {
        if (n === 3) return c.close();
        one.fill(0x61 + n++);
        c.enqueue(one);
      },
    });
    await (await f(filesUrl(), { method: "POST", body: refilled, duplex: "half" })).arrayBuffer();
    assert.deepEqual(
      sent().map((r) => r.body),
      ["aaabbbccc", "aaabbbccc"],
    );
  });

  test(`${transport}: a body stream of text is sent as UTF-8; one of other values, or one already locked, is INVALID_ARGUMENT`, async () => {
    // Node's and Bun's fetch send text chunks; the pool failed with an uncoded RangeError, and
    // with an uncoded TypeError on a locked stream.
    const { f } = await failingOver(transport);
    const text = new ReadableStream({
      start(c) {
        c.enqueue("tëxt ");
        c.enqueue(encoded("bytes"));
        c.close();
      },
    });
    await (await f(filesUrl(), { method: "POST", body: text, duplex: "half" })).arrayBuffer();
    assert.deepEqual(
      sent().map((r) => r.body),
      ["tëxt bytes", "tëxt bytes"],
    );
    mock.clearRequests();
    const numbers = new ReadableStream({
      start(c) {
        c.enqueue(5);
        c.close();
      },
    });
    await assert.rejects(f(filesUrl(), { method: "POST", body: numbers, duplex: "half" }), (e) => e.code === "INVALID_ARGUMENT" && /not bytes/.test(e.message));
    const locked = new ReadableStream();
    locked.getReader();
    await assert.rejects(
      f(filesUrl(), { method: "POST", body: locked, duplex: "half" }),
      (e) => e.code === "INVALID_ARGUMENT" && /request body/.test(e.message),
    );
    assert.equal(sent().length, 0, "nothing was sent");
  });

  test(`${transport}: a POST or PUT without a body says content-length: 0, as fetch does`, async () => {
    // The Rust client sent no length at all (a server that requires one answers 411).
    const email = `${transport}-nobody@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const url = `${mock.url}/v1/messages/batches/msgbatch_01abc234def/cancel`;
    for (const method of ["POST", "PUT"]) {
      mock.clearRequests();
      await (await f(url, { method })).arrayBuffer();
      const [seen] = mock.requests;
      assert.equal(seen.headers["content-length"], "0", method);
      assert.equal(seen.headers["transfer-encoding"], undefined, method);
    }
  });

  test(`${transport}: a Request is sent as it is, and an init's headers, method and body replace its own`, async () => {
    const email = `${transport}-request@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const url = `${mock.url}/v1/messages/count_tokens`;
    const request = () => new Request(url, { method: "POST", body: "from the request", headers: { "x-a": "1", "content-type": "text/x-request" } });
    const headersOf = (seen) => Object.fromEntries(Object.entries(seen.headers).filter(([k]) => k.startsWith("x-") || k === "content-type"));

    mock.clearRequests();
    await (await f(request())).arrayBuffer();
    assert.equal(mock.requests[0].body, "from the request");
    assert.deepEqual(headersOf(mock.requests[0]), { "x-a": "1", "content-type": "text/x-request" });

    // fetch takes init.headers instead of the Request's (the pool merged them, so a header the
    // caller meant to leave out still went).
    mock.clearRequests();
    await (await f(request(), { headers: { "x-c": "3" } })).arrayBuffer();
    assert.equal(mock.requests[0].body, "from the request");
    assert.deepEqual(headersOf(mock.requests[0]), { "x-c": "3" });

    mock.clearRequests();
    await (await f(request(), { method: "PUT", body: "from init", headers: [["x-d", "4"]] })).arrayBuffer();
    assert.equal(mock.requests[0].method, "PUT");
    assert.equal(mock.requests[0].body, "from init");
    assert.deepEqual(headersOf(mock.requests[0]), { "x-d": "4", "content-type": "text/plain;charset=UTF-8" });

    // Given the body alone, the Request keeps its headers.
    mock.clearRequests();
    await (await f(request(), { body: "new body" })).arrayBuffer();
    assert.deepEqual(headersOf(mock.requests[0]), { "x-a": "1", "content-type": "text/x-request" });
  });

  test(`${transport}: an init's null signal or body: the Request's signal goes, its body stays, as fetch takes them`, async () => {
    // The pool took `signal: null` as not given (an aborted Request's signal still failed the
    // request) and `body: null` as no body (the Request's body was dropped); the fetch standard,
    // and Node's fetch, replace a Request's body only with a body, and its signal with any.
    const email = `${transport}-request-nulls@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const url = `${mock.url}/v1/messages/count_tokens`;
    const gone = new AbortController();
    gone.abort(new Error("the Request's own signal"));
    const request = () => new Request(url, { method: "POST", body: "from the request", signal: gone.signal });

    mock.clearRequests();
    const res = await f(request(), { signal: null, body: null });
    assert.equal(res.status, 200);
    await res.arrayBuffer();
    assert.equal(mock.requests[0].body, "from the request");
    // Without the init's null, the Request's signal stands.
    await assert.rejects(f(request()), (e) => e === gone.signal.reason);
    // A Request whose body was read is still refused: a null body does not stand in for it.
    const read = request();
    await read.text();
    await assert.rejects(f(read, { signal: null, body: null }), (e) => e.code === "INVALID_ARGUMENT" && /already read/.test(e.message));
  });

  test(`${transport}: headers as pairs, a Headers or a record; a Latin-1 value goes as one byte a character, as fetch sends it`, async () => {
    const email = `${transport}-headers@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const url = `${mock.url}/v1/messages/count_tokens`;
    for (const headers of [
      [
        ["x-a", "1"],
        ["X-A", "2"],
        ["x-b", "é"],
      ],
      new Headers([
        ["x-a", "1, 2"],
        ["x-b", "é"],
      ]),
      { "x-a": "1, 2", "x-b": "é" },
    ]) {
      mock.clearRequests();
      await (await f(url, { method: "POST", body: body(), headers })).arrayBuffer();
      const [seen] = mock.requests;
      assert.equal(seen.headers["x-a"], "1, 2");
      // Node's HTTP server reads header bytes as Latin-1: the byte E9 is "é"; the Rust client
      // sent its UTF-8 (C3 A9, read as "Ã©").
      assert.equal(seen.headers["x-b"], "é");
    }
    for (const headers of [{ "bad name": "1" }, { "x-a": "a\nb" }, [["x-a"]], { "x-a": "✓" }]) {
      await assert.rejects(f(url, { method: "POST", body: body(), headers }), (e) => e.code === "INVALID_ARGUMENT" && /headers are not valid/.test(e.message));
    }
  });

  test(`${transport}: a URL object, a query, a fragment; the Response's url is fetch's, and so is its clone's`, async () => {
    const email = `${transport}-url@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const plain = `${mock.url}/v1/messages/count_tokens`;
    const cases = [
      [new URL(`${plain}?q=1#frag`), `${plain}?q=1`],
      [`${plain}?q=1&r=%20#frag`, `${plain}?q=1&r=%20`],
      [`  ${plain.replace("http", "HTTP").replace("/v1/", "/v1/./x/../")}  `, plain],
    ];
    for (const [input, url] of cases) {
      mock.clearRequests();
      const res = await f(input, { method: "post", body: body(), headers: jsonHeaders });
      assert.equal(res.status, 200);
      assert.equal(mock.requests[0].method, "POST");
      assert.equal(mock.requests[0].path, url.slice(mock.url.length), "no fragment is sent");
      // The pool handed back the URL as given, fragment and all.
      assert.equal(res.url, url);
      const copy = res.clone();
      // A clone had no url ("") and no poolAccount.
      assert.equal(copy.url, url);
      assert.equal(copy.poolAccount, email);
      assert.equal(copy.clone().url, url);
      const [a, b] = await Promise.all([res.json(), copy.json()]);
      assert.deepEqual(a, b);
      assert.equal(res.bodyUsed && copy.bodyUsed, true);
    }
  });

  test(`${transport}: a URL with a user name or password is refused, and no error repeats the password`, async () => {
    const path = await seedPool(mock, [`${transport}-userinfo@x.test`]);
    const f = createPoolFetch({ path, transport });
    const password = ["pass", "w0rd", "only", "here"].join("-");
    const base = `${mock.url}/v1/messages`;
    mock.clearRequests();
    for (const input of [
      base.replace("//", `//user:${password}@`),
      new URL(base.replace("//", `//user:${password}@`)),
      // Not a URL at all (a space in the host): the message quoted it, password included.
      base.replace("//", `//user:${password}@`).replace("127.0.0.1", "127.0 .0.1"),
      base.replace("//", `//user:${password} more@`).replace("127.0.0.1", "127.0 .0.1"),
    ]) {
      const err = await f(input, { method: "POST", body: body(), headers: jsonHeaders }).then(
        () => null,
        (e) => e,
      );
      assert.equal(err?.code, "INVALID_ARGUMENT", String(input));
      assert.ok(!String(err.message).includes(password) && !String(err.message).includes("w0rd"), err.message);
    }
    assert.equal(mock.requests.length, 0, "nothing was sent");
  });

  test(`${transport}: redirect "error" fails a 3xx as fetch does; "manual" hands it over; integrity and unknown modes are INVALID_ARGUMENT`, async () => {
    const email = `${transport}-redirect@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const post = (init) => f(`${mock.url}/v1/messages`, { method: "POST", body: body(), headers: jsonHeaders, ...init });
    mock.script(email, [
      { status: 301, raw: "moved", headers: { location: "/elsewhere" } },
      { status: 308, raw: "moved", headers: { location: "/elsewhere" } },
    ]);
    // The pool handed the 301 over as if "manual" had been asked.
    await assert.rejects(post({ redirect: "error" }), (e) => e instanceof TypeError && e.code === "NETWORK" && /redirect/.test(e.message));
    const manual = await post({ redirect: "manual" });
    assert.equal(manual.status, 308);
    assert.equal(manual.headers.get("location"), "/elsewhere");
    assert.equal(await manual.text(), "moved");
    const fine = await post({ redirect: "error" });
    assert.equal(fine.status, 200);
    await fine.arrayBuffer();
    // Node's fetch checks an integrity (Bun's ignores it); the pool checked nothing.
    await assert.rejects(post({ integrity: "sha256-AAAA" }), (e) => e.code === "INVALID_ARGUMENT" && /integrity/.test(e.message));
    await assert.rejects(post({ redirect: "sometimes" }), (e) => e.code === "INVALID_ARGUMENT" && /redirect/.test(e.message));
    const options = await post({
      keepalive: true,
      cache: "no-store",
      mode: "cors",
      credentials: "include",
      referrerPolicy: "no-referrer",
      priority: "high",
      integrity: "",
    });
    assert.equal(options.status, 200);
    await options.arrayBuffer();
  });

  test(`${transport}: the Response reads as fetch's does: set-cookie apart, each body once, null bodies, formData, blob`, async () => {
    const email = `${transport}-response@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const post = () => f(`${mock.url}/v1/messages`, { method: "POST", body: body(), headers: jsonHeaders });

    const res = await post();
    assert.deepEqual([res.status, res.statusText, res.ok, res.redirected], [200, "OK", true, false]);
    assert.equal(res.bodyUsed, false);
    assert.equal((await res.json()).type, "message");
    assert.equal(res.bodyUsed, true);
    await assert.rejects(res.text(), TypeError);

    mock.script(email, [{ raw: "hello", headers: { "set-cookie": ["a=1; Path=/", "b=2; Path=/"], "content-type": "text/plain", "x-multi": ["1", "2"] } }]);
    const cookies = await post();
    assert.deepEqual(cookies.headers.getSetCookie(), ["a=1; Path=/", "b=2; Path=/"]);
    assert.equal(cookies.headers.get("x-multi"), "1, 2");
    // Bun's Response over a stream (this answer has no length) gave its blob no type.
    const blob = await cookies.blob();
    assert.equal(blob.type.split(";")[0], "text/plain");
    assert.equal(await blob.text(), "hello");

    mock.script(email, [
      { raw: "a=1&b=%C3%A9", headers: { "content-type": "application/x-www-form-urlencoded" } },
      {
        raw: '--XX\r\ncontent-disposition: form-data; name="f"; filename="a.txt"\r\ncontent-type: text/plain\r\n\r\nhi\r\n--XX--\r\n',
        headers: { "content-type": "multipart/form-data; boundary=XX" },
      },
    ]);
    assert.deepEqual(
      [...(await (await post()).formData())],
      [
        ["a", "1"],
        ["b", "é"],
      ],
    );
    const part = (await (await post()).formData()).get("f");
    assert.equal(part.name, "a.txt");
    assert.equal(await part.text(), "hi");

    for (const status of [204, 205, 304]) {
      mock.script(email, [{ status, raw: [], headers: {} }]);
      const empty = await post();
      assert.equal(empty.status, status);
      assert.equal(empty.body, null, String(status));
      assert.equal(await empty.text(), "");
    }
    const head = await f(`${mock.url}/v1/messages`, { method: "HEAD" });
    assert.equal(head.body, null);
  });

  test(`${transport}: a body cancelled midway lets its connection go, and the next request is served`, async () => {
    const email = `${transport}-cancel@x.test`;
    const path = await seedPool(mock, [email]);
    const f = createPoolFetch({ path, transport });
    const post = (extra) => f(`${mock.url}/v1/messages`, { method: "POST", body: body(extra), headers: jsonHeaders });
    for (const how of ["reader", "body"]) {
      mock.script(email, [{ sse: true, text: "y".repeat(4000), chunkSize: 64, delayMs: 30 }]);
      const closed = mock.waitFor("closed");
      const res = await post({ stream: true });
      if (how === "reader") {
        const reader = res.body.getReader();
        assert.equal((await reader.read()).done, false);
        await reader.cancel();
      } else {
        await res.body.cancel();
      }
      const gone = await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 20_000, null))]);
      assert.equal(gone?.closedEarly, true, `${how}: the upstream answer was left`);
      const next = await post();
      assert.equal(next.status, 200);
      assert.equal((await next.json()).type, "message");
    }
  });
}

test("the SDK's files.upload through the gateway goes up whole, and after a 429 byte for byte", async () => {
  const { path } = await failingOver("native");
  const gateway = await serve({ path, port: 0 });
  try {
    const client = new Anthropic({ apiKey: await gatewayKey(path), baseURL: gateway.url, maxRetries: 0 });
    const file = await client.beta.files.upload({ file: await toFile(Buffer.from("gateway bytes"), "g.txt", { type: "text/plain" }) });
    assert.match(file.id, /^file_/);
    const [first, retry] = sent();
    assert.deepEqual([first.status, retry.status], [429, 200]);
    assert.equal(retry.headers["content-type"], first.headers["content-type"]);
    assert.ok(retry.bytes.equals(first.bytes));
    assert.ok(first.bytes.includes(Buffer.from("gateway bytes")));
  } finally {
    await gateway.close();
  }
});
