// Files and message batches through the pool: each lives in the account that made it, and the
// API answers any other account's request for one with a 404. A pool that sends such a request
// to whichever account it uses at the moment (after a failover, or from another process) told
// the caller that a batch or a file it had made was gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, request as httpRequest } from "node:http";
import { connect } from "node:net";
import Anthropic from "@anthropic-ai/sdk";
import * as lib from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, account, readPool, messagesUrl, jsonHeaders, body, withEnv } from "./helpers/pool-env.mjs";

const { createPoolFetch, flushPool } = lib;
const KEY = "test-gateway-key-0123456789abcdef";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: KEY } });

const upstream = () => mock.requests.map((r) => [r.method, r.path.replace(/_[0-9a-f]{34}/, "_ID"), r.email, r.status]);

/** Makes a file with the pool's fetch `f`; moves the pool off its account with a 429 there. */
async function fileThenFailover(f, path) {
  const made = await f(`${mock.url}/v1/files`, { method: "POST", headers: jsonHeaders, body: "file bytes" });
  assert.equal(made.status, 200);
  const { id } = await made.json();
  const holder = made.poolAccount;
  mock.script(holder, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
  const moved = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(moved.status, 200);
  assert.notEqual(moved.poolAccount, holder, "the messages moved on");
  await moved.text();
  await flushPool(path);
  return { id, holder, other: moved.poolAccount };
}

for (const transport of ["native", "runtime"]) {
  test(`a file made on one account is read through the pool after a failover moved it to another (${transport})`, async () => {
    const path = await seedPool(mock, [`f1-${transport}@x.test`, `f2-${transport}@x.test`]);
    const f = createPoolFetch({ path, transport });
    const { id, holder, other } = await fileThenFailover(f, path);

    mock.clearRequests();
    const got = await f(`${mock.url}/v1/files/${id}/content`, { headers: jsonHeaders });
    assert.equal(got.status, 200, "not the other account's 404");
    assert.equal(await got.text(), "file bytes");
    assert.equal(got.poolAccount, holder, "read where it lives, although that account rests");
    // Known from the answer that made it: asked there first (it cost the other account's 404).
    assert.deepEqual(upstream(), [["GET", "/v1/files/file_ID/content", holder, 200]]);

    // Found once, asked there first; the conversation stays where it went.
    mock.clearRequests();
    const again = await f(`${mock.url}/v1/files/${id}`, { headers: jsonHeaders });
    assert.equal(again.status, 200);
    await again.text();
    const next = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    assert.equal(next.poolAccount, other, "a file read does not move the messages");
    await next.text();
    assert.deepEqual(upstream(), [
      ["GET", "/v1/files/file_ID", holder, 200],
      ["POST", "/v1/messages", other, 200],
    ]);
    await flushPool(path);
    assert.equal(account(path, holder).status, "rate-limited", "its cooldown stands");
    assert.ok(account(path, holder).rateLimitUntil > Date.now() + 3_000_000);
  });
}

for (const transport of ["native", "runtime"]) {
  test(`with usage counting off (OAUTH_POOL_USAGE=off), a file made through the pool is still asked for where it was made (${transport})`, async () => {
    const was = process.env.OAUTH_POOL_USAGE;
    process.env.OAUTH_POOL_USAGE = "off";
    try {
      const path = await seedPool(mock, [`u1-${transport}@x.test`, `u2-${transport}@x.test`]);
      const f = createPoolFetch({ path, transport });
      const { id, holder } = await fileThenFailover(f, path);
      mock.clearRequests();
      const got = await f(`${mock.url}/v1/files/${id}/content`, { headers: jsonHeaders });
      assert.equal(await got.text(), "file bytes");
      // Before, the tap that reads the answer's id was off with the counting: the other account's 404 first.
      assert.deepEqual(upstream(), [["GET", "/v1/files/file_ID/content", holder, 200]]);
      assert.equal(account(path, holder).usage, undefined, "nothing counted");
    } finally {
      if (was === undefined) delete process.env.OAUTH_POOL_USAGE;
      else process.env.OAUTH_POOL_USAGE = was;
    }
  });
}

for (const transport of ["native", "runtime"]) {
  test(`a file another client of an account made is found by asking: the account in use answers 404, the next one has it, and is asked first from then on (${transport})`, async () => {
    const [first, second] = [`o1-${transport}@x.test`, `o2-${transport}@x.test`];
    const path = await seedPool(mock, [first, second]);
    await lib.setPriority(first, 5, path);
    const f = createPoolFetch({ path, transport });
    const id = mock.makeFile(second, "made elsewhere");
    mock.clearRequests();
    const got = await f(`${mock.url}/v1/files/${id}/content`, { headers: jsonHeaders });
    assert.equal(got.status, 200);
    assert.equal(await got.text(), "made elsewhere");
    const again = await f(`${mock.url}/v1/files/${id}`, { headers: jsonHeaders });
    assert.equal(again.poolAccount, second);
    await again.text();
    assert.deepEqual(upstream(), [
      ["GET", "/v1/files/file_ID/content", first, 404],
      ["GET", "/v1/files/file_ID/content", second, 200],
      ["GET", "/v1/files/file_ID", second, 200],
    ]);
  });
}

test("a 404 for what no account holds is asked of each account once, benches nobody and reaches the caller; a 404 to a message is the answer at once", async () => {
  const emails = ["n1@x.test", "n2@x.test", "n3@x.test"];
  const path = await seedPool(mock, emails);
  const f = createPoolFetch({ path });
  mock.clearRequests();
  const missing = await f(`${mock.url}/v1/messages/batches/msgbatch_01${"0".repeat(32)}`, { headers: jsonHeaders });
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).error.type, "not_found_error");
  assert.deepEqual(mock.requests.map((r) => r.email).sort(), emails, "each account asked once");
  const message = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  await message.text();
  mock.clearRequests();
  mock.script(message.poolAccount, [{ status: 404 }]);
  const notFound = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(notFound.status, 404, "a message's 404 (an unknown model) is the answer");
  await notFound.text();
  assert.equal(mock.requests.length, 1);
  await flushPool(path);
  for (const email of emails) {
    const a = account(path, email);
    assert.ok(["idle", "active"].includes(a.status), `${email}: ${a.status}`);
    assert.equal(a.rateLimitUntil ?? null, null);
  }
});

test("the Anthropic SDK through the gateway: a batch made on one account is found, read and cancelled after a failover; its results come through the gateway, the gateway's key goes nowhere else", async () => {
  const path = await seedPool(mock, ["b1@x.test", "b2@x.test"]);
  await lib.setPriority("b1@x.test", 5, path);
  const gw = await lib.serve({ port: 0, path });
  try {
    const client = new Anthropic({ apiKey: KEY, baseURL: gw.url, maxRetries: 0 });
    const request = (custom_id) => ({ custom_id, params: { model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] } });
    const batch = await client.messages.batches.create({ requests: [request("one"), request("two")] });
    assert.match(batch.id, /^msgbatch_/);
    assert.equal(batch.results_url, `${gw.url}/v1/messages/batches/${batch.id}/results`, "the results are the gateway's to hand out");
    mock.script("b1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
    const msg = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
    assert.equal(msg.content[0].text, "Hello from b2@x.test");

    mock.clearRequests();
    const found = await client.messages.batches.retrieve(batch.id);
    assert.equal(found.id, batch.id);
    const results = [];
    for await (const r of await client.messages.batches.results(batch.id)) results.push([r.custom_id, r.result.message.content[0].text]);
    assert.deepEqual(results, [
      ["one", "Hello from b1@x.test"],
      ["two", "Hello from b1@x.test"],
    ]);
    const listed = await client.messages.batches.list();
    assert.ok(
      listed.data.every((b) => b.results_url.startsWith(gw.url)),
      JSON.stringify(listed.data),
    );
    const cancelled = await client.messages.batches.cancel(batch.id);
    assert.equal(cancelled.id, batch.id);
    assert.deepEqual(
      mock.requests.map((r) => [r.method, r.path.split("/").slice(5).join("/"), r.email, r.status]),
      [
        ["GET", "", "b1@x.test", 200],
        ["GET", "", "b1@x.test", 200],
        ["GET", "results", "b1@x.test", 200],
        ["GET", "", "b2@x.test", 200],
        ["POST", "cancel", "b1@x.test", 200],
      ],
      "where it lives (known from the answer that made it); the list is the account in use's",
    );
    for (const r of mock.requests) assert.notEqual(r.headers["x-api-key"], KEY, "the gateway's key stays with it");
  } finally {
    await gw.close(1000);
  }
});

test("through a relay (OAUTH_POOL_API_URL) that passes on the API's answers as written, a batch's results_url still names the gateway, never the API's origin", async () => {
  const path = await seedPool(mock, ["relay1@x.test"]);
  const gw = await lib.serve({ port: 0, path });
  // Named, never fetched: the answer is only read.
  mock.setResultsOrigin("https://api.anthropic.com");
  try {
    const headers = { "x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01" };
    const made = await fetch(`${gw.url}/v1/messages/batches`, { method: "POST", headers, body: JSON.stringify({ requests: [] }) });
    const batch = await made.json();
    assert.equal(batch.results_url, `${gw.url}/v1/messages/batches/${batch.id}/results`);
    const found = await (await fetch(`${gw.url}/v1/messages/batches/${batch.id}`, { headers })).json();
    assert.equal(found.results_url, `${gw.url}/v1/messages/batches/${batch.id}/results`);
  } finally {
    mock.setResultsOrigin(null);
    await gw.close(1000);
  }
});

// Behind a reverse proxy that ends TLS (nginx forwarding `https://pool.example.com` to the
// gateway's plain listener on loopback), the results URL was built from the listener's scheme:
// `http://pool.example.com/...`, and the SDK took the gateway's key there in clear. The proxy
// here is a plain relay on loopback, as nginx's leg to the gateway is.
test("behind a reverse proxy that ends TLS, a batch's results_url keeps the client's https (X-Forwarded-Proto, Forwarded, or a public name asked from this machine) and host (X-Forwarded-Host); a direct client keeps http", async () => {
  const path = await seedPool(mock, ["proxied@x.test"]);
  const gw = await lib.serve({ port: 0, path });
  const { port } = new URL(gw.url);
  const made = (host, extra = {}) =>
    new Promise((resolve, reject) => {
      const body = JSON.stringify({ requests: [] });
      const headers = {
        host,
        "x-api-key": KEY,
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "content-length": Buffer.byteLength(body),
        ...extra,
      };
      const req = httpRequest({ host: "127.0.0.1", port, method: "POST", path: "/v1/messages/batches", headers }, (res) => {
        const parts = [];
        res.on("data", (c) => parts.push(c));
        res.on("end", () => resolve({ status: res.statusCode, batch: JSON.parse(Buffer.concat(parts).toString()) }));
      });
      req.on("error", reject);
      req.end(body);
    });
  try {
    const cases = [
      ["pool.example.com", {}, "https://pool.example.com"],
      ["pool.example.com:8443", { "x-forwarded-proto": "https" }, "https://pool.example.com:8443"],
      ["pool.example.com", { forwarded: 'for=192.0.2.1;proto="https"' }, "https://pool.example.com"],
      ["pool.example.com", { "x-forwarded-proto": "http" }, "http://pool.example.com"],
      [`127.0.0.1:${port}`, {}, `http://127.0.0.1:${port}`],
      [`localhost:${port}`, {}, `http://localhost:${port}`],
      // nginx sends its upstream's address as Host unless told otherwise; the host the client
      // asked for is then in X-Forwarded-Host.
      [`127.0.0.1:${port}`, { "x-forwarded-host": "pool.example.com", "x-forwarded-proto": "https" }, "https://pool.example.com"],
    ];
    for (const [host, extra, origin] of cases) {
      const { status, batch } = await made(host, extra);
      assert.equal(status, 200, host);
      assert.equal(batch.results_url, `${origin}/v1/messages/batches/${batch.id}/results`, `${host} ${JSON.stringify(extra)}`);
    }
  } finally {
    await gw.close(1000);
  }
});

// Without a usable Host (HTTP/1.0 may send none; an empty one; one that is not a plain host
// and port) the gateway had no origin of its own to point a batch's results at, and relayed the
// answer unchecked: a results_url on the API's origin, or on any other, reached the client,
// whose SDK takes the gateway's key there.
test("a batch answer to a request naming no usable Host is refused, coded, not relayed unchecked", async () => {
  const path = await seedPool(mock, ["nohost@x.test"]);
  const gw = await lib.serve({ port: 0, path });
  const { port } = new URL(gw.url);
  const body = JSON.stringify({ requests: [] });
  const ask = (firstLines) =>
    new Promise((resolve, reject) => {
      const socket = connect(Number(port), "127.0.0.1");
      const parts = [];
      socket.on("data", (c) => parts.push(c));
      socket.on("end", () => resolve(Buffer.concat(parts).toString()));
      socket.on("error", reject);
      socket.end(
        `${firstLines}x-api-key: ${KEY}\r\ncontent-type: application/json\r\nanthropic-version: 2023-06-01\r\nconnection: close\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      );
    });
  try {
    for (const first of [
      "POST /v1/messages/batches HTTP/1.0\r\n",
      "POST /v1/messages/batches HTTP/1.1\r\nhost:\r\n",
      "POST /v1/messages/batches HTTP/1.1\r\nhost: gw~1\r\n",
    ]) {
      const answer = await ask(first);
      const what = JSON.stringify(first);
      // An interim 100 may come first (the gateway reads the body it was sent).
      assert.match(answer, /^(HTTP\/1\.1 100 Continue\r\n\r\n)?HTTP\/1\.[01] 500 /, `${what}: ${answer.slice(0, 300)}`);
      assert.match(answer, /x-oauth-pool-error: INSECURE_ENDPOINT/i, what);
      assert.ok(!answer.includes('"results_url"'), `${what}: the answer was relayed`);
      assert.match(answer, /names no host the gateway could point them at/, what);
    }
  } finally {
    await gw.close(1000);
  }
});

// The check of where a batch names its results ran only on `application/json` up to 4 MB; the
// SDK reads JSON out of a `+json` type too, and a bigger answer passed unchecked: either took
// the gateway's key to another origin.
test("a batch answer the gateway cannot check (a +json type, past 4 MB) naming its results elsewhere is refused, coded, its quote of the URL without the credential and bounded", async () => {
  const path = await seedPool(mock, ["unchecked1@x.test"]);
  const gw = await lib.serve({ port: 0, path });
  const elsewhere = {
    id: "msgbatch_x",
    type: "message_batch",
    processing_status: "ended",
    results_url: "http://127.0.0.1:9/v1/messages/batches/msgbatch_x/results",
  };
  const cases = {
    "+json": { body: elsewhere, headers: { "content-type": "application/vnd.anthropic+json" } },
    "past 4 MB": { body: { ...elsewhere, padding: "p".repeat(4.5 * 1024 * 1024) } },
    "a type with parameters, and past 4 MB": {
      body: { ...elsewhere, padding: "p".repeat(4.5 * 1024 * 1024) },
      headers: { "content-type": "application/json; charset=utf-8" },
    },
  };
  try {
    for (const [what, step] of Object.entries(cases)) {
      mock.script("unchecked1@x.test", [{ path: "/v1/messages/batches/msgbatch_x", status: 200, ...step }]);
      const headers = { "x-api-key": KEY, "anthropic-version": "2023-06-01" };
      const answer = await fetch(`${gw.url}/v1/messages/batches/msgbatch_x`, { headers });
      const text = await answer.text();
      assert.equal(answer.status, 500, `${what}: ${text.slice(0, 200)}`);
      assert.equal(answer.headers.get("x-oauth-pool-error"), "INSECURE_ENDPOINT", what);
      assert.equal(answer.headers.get("x-should-retry"), "false", what);
      assert.ok(!text.includes("padding"), `${what}: the answer's bytes were relayed`);
    }
    // The refusal quotes the URL, which is the upstream's text: the credential it was sent, echoed
    // there in any shape, is taken out (it was scrubbed only in the shape of an `sk-ant-` token;
    // a relay's own keys have others).
    const token = "relay-key-of-no-known-shape-0123456789";
    mock.addApiKey(token, "keyed@x.test");
    const keyed = await seedPool(mock, []);
    await lib.addApiKey(token, { email: "keyed@x.test", path: keyed });
    const echoed = { ...elsewhere, results_url: `http://127.0.0.1:9/v1/results?t=${token}&${"q".repeat(5000)}` };
    mock.script("keyed@x.test", [{ path: "/v1/messages/batches/msgbatch_x", status: 200, body: echoed }]);
    const keyedGateway = await lib.serve({ port: 0, path: keyed });
    let answer, text;
    try {
      answer = await fetch(`${keyedGateway.url}/v1/messages/batches/msgbatch_x`, { headers: { "x-api-key": KEY, "anthropic-version": "2023-06-01" } });
      text = await answer.text();
    } finally {
      await keyedGateway.close(1000);
    }
    assert.equal(answer.status, 500, text.slice(0, 200));
    const { message } = JSON.parse(text).error;
    assert.ok(!text.includes(token) && message.includes("[redacted]"), message);
    assert.ok(message.length < 1500, `the quote is bounded: ${message.length}`);
  } finally {
    await gw.close(1000);
  }
});

// The SDKs fetch a batch's results_url as it stands, with the headers they send the gateway: one
// naming another origin took the gateway's key there.
test("a batch answer naming its results on another origin is refused, coded, and nothing reaches that origin", async () => {
  const path = await seedPool(mock, ["elsewhere1@x.test"]);
  const seen = [];
  const other = createServer((req, res) => {
    seen.push({ url: req.url, key: req.headers["x-api-key"] });
    res.end("{}");
  });
  await new Promise((r) => other.listen(0, "127.0.0.1", r));
  const gw = await lib.serve({ port: 0, path });
  mock.setResultsOrigin(`http://127.0.0.1:${other.address().port}`);
  try {
    const client = new Anthropic({ apiKey: KEY, baseURL: gw.url, maxRetries: 0 });
    const request = { custom_id: "one", params: { model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] } };
    const headers = { "x-api-key": KEY, "content-type": "application/json", "anthropic-version": "2023-06-01" };
    const made = await fetch(`${gw.url}/v1/messages/batches`, { method: "POST", headers, body: JSON.stringify({ requests: [request] }) });
    assert.equal(made.status, 500);
    assert.equal(made.headers.get("x-oauth-pool-error"), "INSECURE_ENDPOINT");
    assert.equal(made.headers.get("x-should-retry"), "false");
    assert.match((await made.json()).error.message, /names the results at http:\/\/127\.0\.0\.1:\d+\/v1\/messages\/batches\/.*off the API's origin/);
    await assert.rejects(client.messages.batches.create({ requests: [request] }), (e) => e.status === 500);
    // The list names no results here; reading one batch, or its results, does.
    const [{ id }] = (await client.messages.batches.list()).data;
    await assert.rejects(client.messages.batches.retrieve(id), (e) => e.status === 500);
    await assert.rejects(client.messages.batches.results(id), (e) => e.status === 500);
    assert.deepEqual(seen, [], "nothing reached the other origin");
  } finally {
    mock.setResultsOrigin(null);
    await gw.close(1000);
    other.close();
  }
});

// Messages that refer to a file in their body (a document's or an image's `source` of type
// `file`, a `container_upload`): the API answers them with a 404 on any account but the one
// that holds the file. Before, such a message went where the conversation was: after a 429
// moved the pool off the file's account, the caller got the other account's 404.
const document = (id) => ({ type: "document", source: { type: "file", file_id: id } });
const aboutFile = (id, extra = {}) =>
  JSON.stringify({
    model: "claude-sonnet-4-5",
    max_tokens: 64,
    messages: [{ role: "user", content: [document(id), { type: "text", text: "summarize" }] }],
    ...extra,
  });

for (const transport of ["native", "runtime"]) {
  for (const shape of ["text", "bytes"]) {
    test(`a message about a file made through the pool goes to the file's account although it rests; the conversation's other messages stay where they went (${transport}, ${shape} body)`, async () => {
      const path = await seedPool(mock, [`m1-${transport}-${shape}@x.test`, `m2-${transport}-${shape}@x.test`]);
      const f = createPoolFetch({ path, transport });
      const { id, holder, other } = await fileThenFailover(f, path);
      const send = (url, text) => f(url, { method: "POST", headers: jsonHeaders, body: shape === "text" ? text : new TextEncoder().encode(text) });

      mock.clearRequests();
      const about = await send(messagesUrl(mock), aboutFile(id));
      assert.equal(about.status, 200, "not the other account's 404");
      assert.equal(about.poolAccount, holder);
      await about.text();
      const counted = await send(`${mock.url}/v1/messages/count_tokens`, aboutFile(id));
      assert.equal(counted.status, 200);
      await counted.text();
      const batch = await send(`${mock.url}/v1/messages/batches`, JSON.stringify({ requests: [{ custom_id: "one", params: JSON.parse(aboutFile(id)) }] }));
      assert.equal(batch.status, 200);
      await batch.text();
      const plain = await send(messagesUrl(mock), body());
      assert.equal(plain.poolAccount, other, "a message without a file goes where the conversation goes");
      await plain.text();
      // Text that merely says "file_id", or names the id, is no reference to a file.
      const said = await send(messagesUrl(mock), body({ messages: [{ role: "user", content: `what is "file_id": "${id}"?` }] }));
      assert.equal(said.poolAccount, other);
      await said.text();
      assert.deepEqual(upstream(), [
        ["POST", "/v1/messages", holder, 200],
        ["POST", "/v1/messages/count_tokens", holder, 200],
        ["POST", "/v1/messages/batches", holder, 200],
        ["POST", "/v1/messages", other, 200],
        ["POST", "/v1/messages", other, 200],
      ]);
      await flushPool(path);
      assert.equal(account(path, holder).status, "rate-limited", "its cooldown stands");
    });
  }
}

for (const transport of ["native", "runtime"]) {
  test(`a message about a file whose account answers 429 is not sent to an account that cannot see the file: the pool's 429 says whose file it is (${transport})`, async () => {
    const path = await seedPool(mock, [`h1-${transport}@x.test`, `h2-${transport}@x.test`, `h3-${transport}@x.test`]);
    const f = createPoolFetch({ path, transport });
    const { id, holder } = await fileThenFailover(f, path);
    mock.clearRequests();
    mock.script(holder, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
    const refused = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(id) });
    assert.equal(refused.status, 429, "not another account's 404");
    assert.equal(refused.headers.get("x-oauth-pool"), "holder-cooling");
    assert.ok(Number(refused.headers.get("retry-after")) > 3000, refused.headers.get("retry-after"));
    const { error } = await refused.json();
    assert.match(error.message, new RegExp(`${id} is ${holder.replace(/[.]/g, "\\.")}'s`));
    assert.deepEqual(upstream(), [["POST", "/v1/messages", holder, 429]], "asked of the file's account only");
    // The same for a request whose path names the file (it collected the others' 404s before).
    mock.clearRequests();
    mock.script(holder, [{ path: `/v1/files/${id}/content`, status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
    const read = await f(`${mock.url}/v1/files/${id}/content`, { headers: jsonHeaders });
    assert.equal(read.status, 429);
    assert.equal(read.headers.get("x-oauth-pool"), "holder-cooling");
    await read.text();
    assert.deepEqual(upstream(), [["GET", "/v1/files/file_ID/content", holder, 429]]);
  });
}

// Bound to the holder by its 429, the request waits for it alone; if it is then disabled, loses
// its login or is removed, the pool said "no usable account" and listed every other account as
// having "refused this request", though none was asked.
for (const transport of ["native", "runtime"]) {
  test(`a request bound to the account holding its file, which is then disabled, loses its login or is removed: POOL_NO_ACCOUNT says whose file it is and what to do, and no other account is asked (${transport})`, async () => {
    await withEnv({ OAUTH_POOL_HOLD_MAX_MS: "30000", OAUTH_POOL_JITTER_MS: "0" }, async () => {
      for (const how of ["login", "disable", "remove"]) {
        const emails = [`b1-${how}-${transport}@x.test`, `b2-${how}-${transport}@x.test`, `b3-${how}-${transport}@x.test`];
        const path = await seedPool(mock, emails);
        const f = createPoolFetch({ path, transport });
        const made = await f(`${mock.url}/v1/files`, { method: "POST", headers: jsonHeaders, body: "file bytes" });
        const { id } = await made.json();
        const holder = made.poolAccount;
        await flushPool(path);
        mock.clearRequests();
        // A message about the file, or a read of it: each binds the request to the file's account.
        const [url, init, at] =
          how === "disable"
            ? [`${mock.url}/v1/files/${id}/content`, { headers: jsonHeaders }, `/v1/files/${id}/content`]
            : [messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(id) }, "/v1/messages"];
        const limited = { path: at, status: 429, headers: { "retry-after": "2" } };
        // A 401 after the wait, and again after a refresh: the login is refused.
        const refused = { path: at, status: 401 };
        mock.script(holder, how === "login" ? [limited, refused, refused] : [limited]);
        const asked = mock.waitFor("api", (r) => r.email === holder);
        // Its end is taken at once: it may come while the account is being changed.
        const pending = f(url, init).then(
          (r) => new Error(`answered ${r.status}`),
          (e) => e,
        );
        await asked;
        if (how === "disable") await lib.setEnabled(holder, false, path);
        if (how === "remove") await lib.removeAccount(holder, path);
        const err = await pending;
        assert.equal(err.code, "POOL_NO_ACCOUNT");
        const who = holder.replace(/[.]/g, "\\.");
        assert.match(err.message, new RegExp(`^anthropic-pool: ${id} is held by ${who} \\(no other account can see it, so none was asked\\), and ${who} `));
        const what = {
          login:
            /needs a new login: log it in again with `oauth-pool add`, or OpenCode's Anthropic Pool login \(`opencode auth login` on 1\.18, `\/connect` on 2\.x\)/,
          disable: new RegExp(`is disabled: enable it \\(\`oauth-pool enable ${who}\` or the model-accounts-pool tool\\)`),
          remove: /is no longer in the pool: log it in again/,
        }[how];
        assert.match(err.message, what);
        assert.doesNotMatch(err.message, /refused this request/);
        for (const other of emails.filter((e) => e !== holder)) assert.ok(!err.message.includes(other), `${other} was not asked, and is not named`);
        assert.ok(
          mock.requests.every((r) => r.email === holder),
          `asked of the file's account only: ${JSON.stringify(mock.requests.map((r) => [r.email, r.status]))}`,
        );
      }
    });
  });
}

for (const transport of ["native", "runtime"]) {
  test(`a message about a file another client made is found by asking: the account in use answers 404, the next one has it, and gets such messages first from then on (${transport})`, async () => {
    const [first, second] = [`e1-${transport}@x.test`, `e2-${transport}@x.test`];
    const path = await seedPool(mock, [first, second]);
    await lib.setPriority(first, 5, path);
    const f = createPoolFetch({ path, transport });
    const id = mock.makeFile(second, "made elsewhere");
    mock.clearRequests();
    const found = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(id) });
    assert.equal(found.status, 200);
    assert.equal(found.poolAccount, second);
    await found.text();
    const again = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(id) });
    assert.equal(again.poolAccount, second);
    await again.text();
    const missing = mock.makeFile("nobody@x.test", "nobody's");
    const lost = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(missing) });
    assert.equal(lost.status, 404, "a file no account sees: the last 404 is the answer");
    await lost.text();
    assert.deepEqual(upstream().slice(0, 3), [
      ["POST", "/v1/messages", first, 404],
      ["POST", "/v1/messages", second, 200],
      ["POST", "/v1/messages", second, 200],
    ]);
    assert.equal(mock.requests.length, 5, "the unknown file was asked of each account once");
    await flushPool(path);
    for (const email of [first, second]) assert.equal(account(path, email).rateLimitUntil ?? null, null, "nobody benched");
  });
}

// A 404 is looked past to every account not yet asked, resting ones too: a cooldown rests what an
// account sends to the model, and the file another client made there is still its own to give.
for (const transport of ["native", "runtime"]) {
  test(`a file made elsewhere on an account that rests is found by asking past the 404s, by its path and by a message about it; its rest stands (${transport})`, async () => {
    const [first, second, resting] = [`z1-${transport}@x.test`, `z2-${transport}@x.test`, `z3-${transport}@x.test`];
    const path = await seedPool(mock, [first, second, resting]);
    const pool = readPool(path);
    pool.anthropic[0].priority = 5;
    const until = Date.now() + 3_600_000;
    Object.assign(pool.anthropic[2], { status: "rate-limited", rateLimitUntil: until });
    await lib.savePool(pool, path);
    const f = createPoolFetch({ path, transport });
    const byPath = mock.makeFile(resting, "kept by a resting account");
    const byMessage = mock.makeFile(resting, "another one");
    mock.clearRequests();
    const got = await f(`${mock.url}/v1/files/${byPath}/content`, { headers: jsonHeaders });
    assert.equal(got.status, 200, "not the last 404");
    assert.equal(await got.text(), "kept by a resting account");
    assert.equal(got.poolAccount, resting);
    const said = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: aboutFile(byMessage) });
    assert.equal(said.status, 200);
    assert.equal(said.poolAccount, resting);
    await said.text();
    assert.deepEqual(upstream(), [
      ["GET", "/v1/files/file_ID/content", first, 404],
      ["GET", "/v1/files/file_ID/content", second, 404],
      ["GET", "/v1/files/file_ID/content", resting, 200],
      ["POST", "/v1/messages", first, 404],
      ["POST", "/v1/messages", second, 404],
      ["POST", "/v1/messages", resting, 200],
    ]);
    await flushPool(path);
    assert.equal(account(path, resting).rateLimitUntil, until, "its rest is as it was");
    for (const email of [first, second]) assert.equal(account(path, email).rateLimitUntil ?? null, null, "nobody benched");
    // The conversation's other messages do not go to the resting account.
    const plain = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    assert.notEqual(plain.poolAccount, resting);
    await plain.text();
  });
}

for (const transport of ["native", "runtime"])
  test(`${transport}: a many-megabyte message about a file goes to the file's account (the body is searched, not copied, before any parse)`, async () => {
    const path = await seedPool(mock, [`${transport}-big1@x.test`, `${transport}-big2@x.test`]);
    const f = createPoolFetch({ path, transport });
    const { id, holder } = await fileThenFailover(f, path);
    mock.clearRequests();
    const text = "lorem ipsum ".repeat(500_000);
    const big = JSON.stringify({
      model: "claude-sonnet-4-5",
      max_tokens: 8,
      messages: [{ role: "user", content: [{ type: "text", text }, document(id)] }],
    });
    assert.ok(big.length > 5_000_000);
    const got = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: big });
    assert.equal(got.status, 200);
    assert.equal(got.poolAccount, holder);
    await got.text();
    assert.deepEqual(upstream(), [["POST", "/v1/messages", holder, 200]]);
  });

test("the Anthropic SDK through the gateway: a message about a file uploaded through it goes to the file's account after a failover moved the conversation", async () => {
  const path = await seedPool(mock, ["g1@x.test", "g2@x.test"]);
  await lib.setPriority("g1@x.test", 5, path);
  const gw = await lib.serve({ port: 0, path });
  try {
    const client = new Anthropic({ apiKey: KEY, baseURL: gw.url, maxRetries: 0 });
    const uploaded = await client.beta.files.upload({ file: new File(["some text"], "notes.txt", { type: "text/plain" }) });
    assert.match(uploaded.id, /^file_/);
    mock.script("g1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
    const moved = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
    assert.equal(moved.content[0].text, "Hello from g2@x.test");
    mock.clearRequests();
    const about = await client.beta.messages.create({
      model: "claude-sonnet-4-5",
      max_tokens: 8,
      betas: ["files-api-2025-04-14"],
      messages: [{ role: "user", content: [document(uploaded.id), { type: "text", text: "summarize" }] }],
    });
    assert.equal(about.content[0].text, "Hello from g1@x.test");
    assert.deepEqual(
      mock.requests.map((r) => [r.path.split("?")[0], r.email, r.status]),
      [["/v1/messages", "g1@x.test", 200]],
    );
  } finally {
    await gw.close(1000);
  }
});
