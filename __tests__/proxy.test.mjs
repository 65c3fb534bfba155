// Behind a corporate proxy (issue 10, item 15): HTTPS_PROXY is honoured like curl and Bun do,
// through a real CONNECT proxy on loopback, to a TLS endpoint whose certificate comes from a
// private CA trusted through NODE_EXTRA_CA_CERTS; loopback itself is never proxied.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import { connect } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startEnv, seedPool } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const INDEX = fileURLToPath(new URL("../index.mjs", import.meta.url));
const HOST = "api.anthropic.test";
// The real endpoints, reached here only through the CONNECT proxy below, whose TLS is ours.
const ANTHROPIC_HOSTS = ["platform.claude.com", "api.anthropic.com"];

let mock;
let tls;
let proxy;
const connects = [];
let dir;

function openssl(args) {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.stderr}`);
}

before(async () => {
  mock = await startEnv();
  dir = tempDir("oauth-pool-tls-");
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=oauth-pool test CA"]);
  openssl(["req", ...ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", `/CN=${HOST}`]);
  writeFileSync(
    join(dir, "leaf.ext"),
    `subjectAltName=DNS:${HOST},${ANTHROPIC_HOSTS.map((h) => `DNS:${h}`).join(",")}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`,
  );
  openssl([
    "x509",
    "-req",
    "-in",
    "leaf.csr",
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-out",
    "leaf.pem",
    "-days",
    "2",
    "-extfile",
    "leaf.ext",
  ]);
  // TLS for api.anthropic.test, terminated here and passed to the plain mock.
  tls = createTlsServer({ key: readFileSync(join(dir, "leaf.key")), cert: readFileSync(join(dir, "leaf.pem")) }, (socket) => {
    const upstream = connect(mock.port, "127.0.0.1");
    socket.pipe(upstream).pipe(socket);
    socket.on("error", () => upstream.destroy());
    upstream.on("error", () => socket.destroy());
  });
  await new Promise((r) => tls.listen(0, "127.0.0.1", r));
  // The corporate proxy: CONNECT only, and only to api.anthropic.test:443.
  proxy = createServer((_req, res) => res.writeHead(405).end());
  proxy.on("connect", (req, client) => {
    connects.push({ target: req.url, auth: req.headers["proxy-authorization"] ?? null });
    if (![HOST, ...ANTHROPIC_HOSTS].some((h) => req.url === `${h}:443`)) return client.end("HTTP/1.1 403 Forbidden\r\n\r\n");
    const upstream = connect(tls.address().port, "127.0.0.1", () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.pipe(client).pipe(upstream);
    });
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
  });
  await new Promise((r) => proxy.listen(0, "127.0.0.1", r));
});

after(async () => {
  await mock?.close();
  tls?.close();
  proxy?.close();
});

/** One request through the pool in a fresh process (the HTTP client reads its roots once). */
function requestInChild(env) {
  const script = `
    const { createPoolFetch, flushPool } = await import(${JSON.stringify(INDEX)});
    const f = createPoolFetch();
    try {
      const res = await f(process.env.OAUTH_POOL_API_URL + "/v1/messages", {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
        body: JSON.stringify({ model: "m", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
      });
      console.log(JSON.stringify({ status: res.status, text: await res.text() }));
    } catch (e) {
      console.log(JSON.stringify({ error: e.code ?? String(e), message: e.message }));
    }
    await flushPool();
  `;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("close", () => resolve(JSON.parse(out.trim().split("\n").at(-1))));
  });
}

test("15: HTTPS_PROXY carries the token refresh and the Messages request through CONNECT, trusting NODE_EXTRA_CA_CERTS", async () => {
  const path = await seedPool(mock, ["proxied@x.test"], { expired: ["proxied@x.test"] });
  const refreshesBefore = mock.stats().refreshCalls;
  const result = await requestInChild({
    OAUTH_POOL_PATH: path,
    OAUTH_POOL_API_URL: `https://${HOST}`,
    OAUTH_POOL_TOKEN_URL: `https://${HOST}/v1/oauth/token`,
    HTTPS_PROXY: `http://proxyuser:proxypass@127.0.0.1:${proxy.address().port}`,
    NO_PROXY: "internal.example,10.0.0.0/8",
    NODE_EXTRA_CA_CERTS: join(dir, "ca.pem"),
  });
  assert.equal(result.status, 200, JSON.stringify(result));
  assert.match(result.text, /Hello from proxied@x\.test/);
  assert.equal(mock.stats().refreshCalls, refreshesBefore + 1, "the refresh went through the proxy too");
  assert.ok(connects.length >= 1 && connects.every((c) => c.target === `${HOST}:443`), JSON.stringify(connects));
  assert.ok(
    connects.some((c) => c.auth === `Basic ${Buffer.from("proxyuser:proxypass").toString("base64")}`),
    "proxy credentials from the URL",
  );
});

test("15: without the CA the TLS endpoint is refused; loopback is never sent to the proxy", async () => {
  const path = await seedPool(mock, ["untrusted@x.test"]);
  const untrusted = await requestInChild({
    OAUTH_POOL_PATH: path,
    OAUTH_POOL_API_URL: `https://${HOST}`,
    OAUTH_POOL_TOKEN_URL: `https://${HOST}/v1/oauth/token`,
    HTTPS_PROXY: `http://127.0.0.1:${proxy.address().port}`,
    NODE_EXTRA_CA_CERTS: "",
    SSL_CERT_FILE: "",
  });
  assert.equal(untrusted.error, "NETWORK", JSON.stringify(untrusted));
  const before = connects.length;
  const direct = await requestInChild({
    OAUTH_POOL_PATH: path,
    OAUTH_POOL_API_URL: mock.url,
    HTTP_PROXY: "http://127.0.0.1:9",
    HTTPS_PROXY: "http://127.0.0.1:9",
    ALL_PROXY: "http://127.0.0.1:9",
  });
  assert.equal(direct.status, 200, JSON.stringify(direct));
  assert.equal(connects.length, before);
});

test("15: a proxy setting that names no usable proxy refuses the request instead of going around it", async () => {
  const path = await seedPool(mock, ["noproxy@x.test"]);
  for (const setting of ["http://[::1", "socks5://127.0.0.1:1080", "file:///tmp/proxy"]) {
    const before = connects.length;
    const result = await requestInChild({
      OAUTH_POOL_PATH: path,
      OAUTH_POOL_API_URL: `https://${HOST}`,
      OAUTH_POOL_TOKEN_URL: `https://${HOST}/v1/oauth/token`,
      HTTPS_PROXY: setting,
      NODE_EXTRA_CA_CERTS: join(dir, "ca.pem"),
    });
    assert.equal(result.error, "INVALID_ARGUMENT", `${setting}: ${JSON.stringify(result)}`);
    assert.match(result.message, /HTTPS_PROXY is not a proxy this client can use/);
    assert.equal(connects.length, before);
  }
});

// anchors.md (b): with no endpoint variable set, the login, the profile, the refresh and a
// request go to Anthropic's own endpoints (the token endpoint moved to platform.claude.com in
// 2026), each shaped as the maintained clients send it: JSON bodies of exactly the OAuth fields,
// and no header a browser or another client would add (Bun's fetch sent Origin, Referer and
// Sec-Fetch-*, which the token endpoint throttles: aidevops #5371). Every other test points the
// pool at the mock by variable, so only this one sees the defaults.
test("the defaults are Anthropic's endpoints, and the token, profile and Messages requests are exactly the documented shapes", async () => {
  const pool = join(tempDir("oauth-pool-defaults-"), "pool.json");
  const script = `
    const { authorize, exchange, refresh, savePool, createPoolFetch, flushPool } = await import(${JSON.stringify(INDEX)});
    const a = await authorize();
    const approved = await fetch(${JSON.stringify(`${mock.url}/__mock/approve`)}, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ url: a.url, email: "defaults@x.test", includeEmail: false }),
    }).then((r) => r.json());
    const login = await exchange(approved.paste, a);
    const t = await refresh(login.refresh);
    const now = new Date().toISOString();
    await savePool({ anthropic: [{ email: login.email, refresh: t.refresh, access: t.access, expires: t.expires, added: now, lastUsed: now, status: "idle", rateLimitUntil: null }] });
    const res = await createPoolFetch()("https://api.anthropic.com/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    console.log(JSON.stringify({ email: login.email, status: res.status, text: await res.text() }));
    await flushPool();
  `;
  const env = { ...process.env, OAUTH_POOL_PATH: pool, HTTPS_PROXY: `http://127.0.0.1:${proxy.address().port}`, NO_PROXY: "127.0.0.1,localhost" };
  delete env.OAUTH_POOL_TOKEN_URL;
  delete env.OAUTH_POOL_API_URL;
  env.NODE_EXTRA_CA_CERTS = join(dir, "ca.pem");
  mock.clearRequests();
  connects.length = 0;
  const out = await new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { env, stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    child.stdout.on("data", (d) => (text += d));
    child.stderr.on("data", (d) => (text += d));
    child.on("close", () => resolve(text));
  });
  const result = JSON.parse(out.trim().split("\n").at(-1) || "{}");
  assert.equal(result.status, 200, out);
  assert.match(result.text, /Hello from defaults@x\.test/);
  assert.deepEqual([...new Set(connects.map((c) => c.target))].sort(), ["api.anthropic.com:443", "platform.claude.com:443"]);

  const CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
  const names = (headers) => Object.keys(headers).sort();
  const sentHeaders = ["accept", "accept-encoding", "content-length", "content-type", "host", "user-agent"];
  const [code, renewal] = mock.tokenRequests;
  assert.deepEqual(
    mock.tokenRequests.map((r) => r.grant),
    ["authorization_code", "refresh_token"],
  );
  for (const call of [code, renewal]) {
    assert.deepEqual(names(call.headers), sentHeaders, JSON.stringify(call.headers));
    assert.equal(call.headers.host, "platform.claude.com");
    assert.equal(call.headers["content-type"], "application/json");
    assert.equal(call.headers.accept, "application/json");
    assert.match(call.headers["user-agent"], /^opencode-oauth-pool\/\d+\.\d+\.\d+$/);
  }
  assert.deepEqual(Object.keys(code.body).sort(), ["client_id", "code", "code_verifier", "grant_type", "redirect_uri", "state"]);
  assert.equal(code.body.grant_type, "authorization_code");
  assert.equal(code.body.client_id, CLIENT_ID);
  assert.equal(code.body.redirect_uri, "https://platform.claude.com/oauth/code/callback");
  assert.notEqual(code.body.state, code.body.code_verifier);
  assert.deepEqual(Object.keys(renewal.body).sort(), ["client_id", "grant_type", "refresh_token"]);
  assert.deepEqual([renewal.body.grant_type, renewal.body.client_id], ["refresh_token", CLIENT_ID]);

  const [profile, message] = mock.requests;
  assert.equal(mock.requests.length, 2);
  assert.deepEqual([profile.method, profile.path, profile.headers.host], ["GET", "/api/oauth/profile", "api.anthropic.com"]);
  assert.deepEqual(names(profile.headers), ["accept", "accept-encoding", "anthropic-beta", "authorization", "host", "user-agent"]);
  assert.equal(profile.headers["anthropic-beta"], "oauth-2025-04-20");
  assert.match(profile.headers["user-agent"], /^opencode-oauth-pool\//);
  assert.deepEqual([message.method, message.path, message.headers.host, message.email], ["POST", "/v1/messages", "api.anthropic.com", "defaults@x.test"]);
  assert.equal(message.headers["anthropic-beta"], "oauth-2025-04-20");
});
