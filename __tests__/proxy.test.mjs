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
  writeFileSync(join(dir, "leaf.ext"), `subjectAltName=DNS:${HOST}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
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
    if (req.url !== `${HOST}:443`) return client.end("HTTP/1.1 403 Forbidden\r\n\r\n");
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
