// The hostile network and TLS, as a class: for the Messages API (both transports, and through
// the gateway), the token endpoint (a refresh) and the fleet store, servers that stall or break
// the TLS handshake, bad certificates, the wrong protocol on a port, resets, refused and
// never-accepting ports, and IPv6 loopback. Each request must end in bounded time with the
// contract's code and a message saying what happened, carry no token, bench nobody, and keep
// the login. Every request runs in its own process (the HTTP clients read their trusted roots
// once), all of them at once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createServer as createNetServer, connect } from "node:net";
import { createServer as createTlsServer } from "node:tls";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startEnv, seedPool, readPool } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const INDEX = fileURLToPath(new URL("../index.mjs", import.meta.url));
// A child still running this long was not bounded (the test gives up on it).
const CHILD_LIMIT_MS = 28_000;
// The connect bound (TCP and TLS) of every client is 10 s; a request that took longer than this
// waited for something else (the old 30 s connect timeout, or the 5-minute response timeout).
const CONNECT_BOUND_MS = 22_000;

let mock;
let dir;
const closers = [];
const ports = {};
let tokenServers;

function openssl(args) {
  const r = spawnSync("openssl", args, { cwd: dir, encoding: "utf8" });
  assert.equal(r.status, 0, `openssl ${args.join(" ")}: ${r.stderr}`);
}

const EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
const SAN = "DNS:localhost,IP:127.0.0.1,IP:::1";

/** A leaf signed by the test CA through `openssl ca`, which can date it in the past or future. */
function leaf(name, { san = SAN, start, end, md = "sha256", key = EC } = {}) {
  openssl(["req", ...key, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", "/CN=localhost"]);
  writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
  const dates = start ? ["-startdate", start, "-enddate", end] : ["-days", "2"];
  openssl(["ca", "-batch", "-config", "ca.cnf", "-in", `${name}.csr`, "-out", `${name}.pem`, "-extfile", `${name}.ext`, "-notext", "-md", md, ...dates]);
  return { key: readFileSync(join(dir, `${name}.key`)), cert: readFileSync(join(dir, `${name}.pem`)) };
}

function track(server) {
  const sockets = new Set();
  server.accepted = 0;
  server.on("connection", (s) => {
    server.accepted++;
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => {});
  });
  closers.push(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return server;
}

function listen(server, host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => resolve(server.address().port));
  });
}

/** TCP that answers each first read with `onData(socket, data)` (or nothing at all). */
function raw(onData, onConnect) {
  return track(
    createNetServer((s) => {
      onConnect?.(s);
      if (onData) s.once("data", (d) => onData(s, d));
    }),
  );
}

/** TLS with `options`, relaying the decrypted bytes to the plain mock. */
function tlsToMock(options) {
  const server = createTlsServer(options, (socket) => {
    const upstream = connect(mock.port, "127.0.0.1");
    socket.pipe(upstream).pipe(socket);
    socket.on("error", () => upstream.destroy());
    upstream.on("error", () => socket.destroy());
  });
  server.on("tlsClientError", () => {});
  return track(server);
}

before(async () => {
  mock = await startEnv();
  dir = tempDir("oauth-pool-net-");
  writeFileSync(
    join(dir, "ca.cnf"),
    "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\ndefault_md=sha256\npolicy=p\nunique_subject=no\ncertificate=ca.pem\nprivate_key=ca.key\n[p]\ncommonName=supplied\n",
  );
  writeFileSync(join(dir, "index.txt"), "");
  writeFileSync(join(dir, "serial"), "01\n");
  openssl(["req", "-x509", ...EC, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=oauth-pool network test CA"]);
  const good = leaf("good");
  const expired = leaf("expired", { start: "20200101000000Z", end: "20200201000000Z" });
  const future = leaf("future", { start: "20990101000000Z", end: "20990201000000Z" });
  const otherHost = leaf("other", { san: "DNS:other.test" });
  const sha1 = leaf("sha1", { md: "sha1" });
  const rsa1024 = leaf("rsa1024", { key: ["-newkey", "rsa:1024", "-nodes"] });
  openssl(["req", "-x509", ...EC, "-keyout", "self.key", "-out", "self.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", `subjectAltName=${SAN}`]);
  const self = { key: readFileSync(join(dir, "self.key")), cert: readFileSync(join(dir, "self.pem")) };

  // OpenSSL (Node) serves a weak key or signature only at security level 0; BoringSSL (Bun)
  // has no levels and refuses the setting: there the server is made without it, or not at all
  // (its case is then left out).
  const weakly = (options) => {
    for (const extra of [{ ciphers: "DEFAULT@SECLEVEL=0" }, {}]) {
      try {
        return tlsToMock({ ...options, ...extra });
      } catch {}
    }
    return null;
  };
  const servers = {
    good: tlsToMock(good),
    expired: tlsToMock(expired),
    future: tlsToMock(future),
    otherHost: tlsToMock(otherHost),
    self: tlsToMock(self),
    sha1: weakly(sha1),
    rsa1024: weakly(rsa1024),
    tls11: weakly({ ...good, minVersion: "TLSv1", maxVersion: "TLSv1.1" }),
    // Accepts, then says nothing: the handshake never starts on the server's side.
    silent: raw(null),
    // Reads the ClientHello, then says nothing.
    halfway: raw(() => {}),
    garbage: raw((s) => s.write(Buffer.from("SSH-2.0-OpenSSH_9.6\r\n\0\0\0\x7f garbage, not a ServerHello\r\n\r\n"))),
    // A fatal handshake_failure alert (TLS 1.2 record) in answer to the ClientHello.
    alert: raw((s) => s.end(Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]))),
    resetInHandshake: raw((s) => s.resetAndDestroy()),
    resetAtOnce: raw(null, (s) => s.resetAndDestroy()),
    // A plain HTTP server on a port named https://, and a TLS one named http://.
    // A live server whose answer takes longer than the connect bound: not a dead one.
    slow: track(
      createTlsServer(good, (socket) => {
        socket.on("error", () => {});
        socket.once("data", () => {
          const body = JSON.stringify({ id: "msg_slow", type: "message", role: "assistant", content: [{ type: "text", text: "a slow answer" }] });
          const timer = setTimeout(
            () => socket.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`),
            12_000,
          );
          socket.on("close", () => clearTimeout(timer));
        });
      }),
    ),
    // The token endpoint's own, to count the connections a refresh made.
    tokenStalled: raw(() => {}),
    tokenAlert: raw((s) => s.end(Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]))),
    tokenExpired: tlsToMock(expired),
    plain: raw((s) => s.end("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")),
  };
  tokenServers = servers;
  for (const [name, server] of Object.entries(servers)) if (server) ports[name] = await listen(server).catch(() => undefined);
  // IPv6 loopback: the mock relayed from [::1], plain and TLS.
  ports.v6plain = await listen(
    track(
      createNetServer((s) => {
        const upstream = connect(mock.port, "127.0.0.1");
        s.pipe(upstream).pipe(s);
        upstream.on("error", () => s.destroy());
      }),
    ),
    "::1",
  );
  ports.v6tls = await listen(tlsToMock(good), "::1");
  // A closed port: bound and closed again.
  const closed = createNetServer();
  ports.closed = await listen(closed);
  await new Promise((r) => closed.close(r));
  // A socket that listens and never accepts, its queue filled: a connect to it stalls.
  const py = spawn(
    "python3",
    ["-c", "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(120)"],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  closers.push(() => py.kill());
  ports.backlog = await new Promise((resolve) => {
    let out = "";
    py.stdout.on("data", (d) => {
      out += d;
      if (out.includes("\n")) resolve(Number(out.trim()));
    });
    py.on("error", () => resolve(null));
    py.on("exit", () => resolve(null));
  });
  if (ports.backlog) {
    for (let i = 0; i < 4; i++) {
      const s = connect(ports.backlog, "127.0.0.1");
      s.on("error", () => {});
      closers.push(() => s.destroy());
    }
    await new Promise((r) => setTimeout(r, 300));
  }
  for (const start of starters) start();
});

// Every case's process starts once the servers are up, all of them at once (the bounds are
// seconds each); each test then checks its own.
const starters = [];
const started = new Map();
/** A test whose `run` starts its requests (from `before`) and resolves the check of them. */
function early(name, run) {
  starters.push(() => {
    const running = run();
    running.catch(() => {}); // its test reports it
    started.set(name, running);
  });
  test(name, async () => (await started.get(name))());
}

after(async () => {
  for (const close of closers) close();
  await mock?.close();
});

/**
 * One request through the pool in a fresh process. `kind`: "api" (a Messages request with the
 * given transport), "store" (loadPool from the fleet store). Resolves with what the child
 * printed: `{ status, text }` or `{ code, message }`, and `ms`.
 */
function inChild({ kind = "api", transport = "native", env }) {
  const script = `
    const { createPoolFetch, flushPool, loadPool, serve } = await import(${JSON.stringify(INDEX)});
    const started = Date.now();
    let out;
    try {
      if (${JSON.stringify(kind)} === "store") {
        await loadPool();
        out = { loaded: true };
      } else if (${JSON.stringify(kind)} === "gateway") {
        const gw = await serve({ port: 0 });
        const res = await fetch(gw.url + "/v1/messages", {
          method: "POST",
          headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": process.env.OAUTH_POOL_GATEWAY_KEY },
          body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
        });
        out = { status: res.status, text: await res.text() };
        await gw.close();
      } else {
        const f = createPoolFetch({ transport: ${JSON.stringify(transport)} });
        const res = await f(process.env.OAUTH_POOL_API_URL + "/v1/messages", {
          method: "POST",
          headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
          body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
        });
        out = { status: res.status, text: await res.text() };
      }
    } catch (e) {
      out = { code: e.code ?? null, name: e.name, message: e.message };
    }
    out.ms = Date.now() - started;
    console.log(JSON.stringify(out));
    await flushPool().catch(() => {});
    process.exit(0);
  `;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], {
      env: {
        ...process.env,
        NODE_EXTRA_CA_CERTS: "",
        SSL_CERT_FILE: "",
        HTTPS_PROXY: "",
        HTTP_PROXY: "",
        ALL_PROXY: "",
        https_proxy: "",
        http_proxy: "",
        all_proxy: "",
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), CHILD_LIMIT_MS);
    child.on("close", () => {
      clearTimeout(timer);
      const line = out.trim().split("\n").at(-1);
      try {
        resolve(JSON.parse(line));
      } catch {
        resolve({ unbounded: true, stdout: out, stderr: err.slice(-2000) });
      }
    });
  });
}

const ca = () => join(dir, "ca.pem");
const https = (port, host = "127.0.0.1") => (port ? `https://${host}:${port}` : null);
const http = (port, host = "127.0.0.1") => (port ? `http://${host}:${port}` : null);

/** What every failed request must show: bounded, the code, a cause, no token, nobody benched. */
function assertFailure(name, r, { code = "NETWORK", message, pool, secrets = [] }) {
  const shown = `${name}: ${JSON.stringify(r)}`;
  assert.ok(!r.unbounded, `${name}: still waiting after ${CHILD_LIMIT_MS} ms ${shown}`);
  assert.equal(r.code, code, shown);
  assert.ok(r.ms < CONNECT_BOUND_MS, `${name}: took ${r.ms} ms ${shown}`);
  if (message) assert.match(r.message, message, shown);
  assert.doesNotMatch(r.message, /error sending request(?! .*\()/, `${name}: a bare "error sending request" ${shown}`);
  for (const s of secrets) assert.ok(!r.message.includes(s), `${name}: a token in the message ${shown}`);
  if (pool) {
    for (const a of readPool(pool).anthropic) {
      assert.notEqual(a.status, "auth-error", `${name}: ${a.email} marked auth-error`);
      assert.ok(!a.cooldownUntil && !a.rateLimitUntil, `${name}: ${a.email} benched ${JSON.stringify(a)}`);
    }
  }
}

// The API's failures, by transport. `env` beyond the endpoints; `message` what it must say.
const API_CASES = [
  { name: "handshake never answered", url: () => https(ports.silent), message: /connect|handshake|timed out/i, defaults: true },
  { name: "handshake stalled after the ClientHello", url: () => https(ports.halfway), message: /connect|handshake|timed out/i, defaults: true },
  { name: "garbage instead of a ServerHello", url: () => https(ports.garbage), message: /tls|ssl|handshake|record|corrupt|certificate|protocol|connect/i },
  { name: "a TLS alert", url: () => https(ports.alert), message: /alert|handshake|tls|ssl|connect/i },
  { name: "reset during the handshake", url: () => https(ports.resetInHandshake), message: /reset|closed|connect|socket|tls/i },
  { name: "reset as soon as accepted", url: () => https(ports.resetAtOnce), message: /reset|closed|connect|socket|tls/i },
  { name: "refused (closed port)", url: () => https(ports.closed), message: /refused|connect/i },
  { name: "a plain HTTP server on https://", url: () => https(ports.plain), message: /tls|ssl|record|corrupt|wrong version|handshake|connect/i },
  { name: "a TLS server on http://", url: () => http(ports.good), message: /closed|reset|socket|connect|parse|http|response/i },
  { name: "expired certificate", url: () => https(ports.expired), ca: true, message: /expire|certificate|valid/i },
  { name: "certificate not yet valid", url: () => https(ports.future), ca: true, message: /not yet valid|certificate|valid/i },
  { name: "certificate for another host", url: () => https(ports.otherHost), ca: true, message: /name|host|certificate|altname|match/i },
  { name: "self-signed, its CA not given", url: () => https(ports.self), message: /certificate|issuer|self.signed|unknown|verify/i },
  { name: "the test CA's leaf, the CA not given", url: () => https(ports.good), message: /certificate|issuer|unknown|verify/i },
  // The runtime transport takes its runtime's rules here: Node's and Bun's fetch accept these
  // two from a trusted CA (the Rust client, webpki, refuses both).
  { name: "SHA-1 signature", url: () => https(ports.sha1), ca: true, native: true, message: /certificate|signature|algorithm|handshake|tls|ssl/i },
  { name: "RSA-1024 key", url: () => https(ports.rsa1024), ca: true, native: true, message: /certificate|key|signature|handshake|tls|ssl|alert/i },
  { name: "TLS 1.0/1.1 only", url: () => https(ports.tls11), ca: true, message: /version|protocol|handshake|tls|ssl|alert/i },
  { name: "a port that never accepts (connect stalls)", url: () => https(ports.backlog), message: /connect|timed out/i, defaults: true },
  { name: "IPv6 loopback, refused", url: () => https(ports.closed, "[::1]"), message: /refused|connect/i },
];

const OK_CASES = [
  { name: "the test CA given through NODE_EXTRA_CA_CERTS", url: () => https(ports.good), env: () => ({ NODE_EXTRA_CA_CERTS: ca() }) },
  { name: "the test CA given through SSL_CERT_FILE", url: () => https(ports.good), env: () => ({ SSL_CERT_FILE: ca() }), native: true },
  { name: "the test CA, localhost", url: () => https(ports.good, "localhost"), env: () => ({ NODE_EXTRA_CA_CERTS: ca() }) },
  {
    name: "a live server answering after 12 s",
    url: () => https(ports.slow),
    env: () => ({ NODE_EXTRA_CA_CERTS: ca(), OAUTH_POOL_RESPONSE_TIMEOUT_MS: "60000" }),
    text: /a slow answer/,
  },
  { name: "IPv6 loopback, plain", url: () => http(ports.v6plain, "[::1]"), env: () => ({}) },
  { name: "IPv6 loopback, TLS", url: () => https(ports.v6tls, "[::1]"), env: () => ({ NODE_EXTRA_CA_CERTS: ca() }) },
];

const SHORT = { OAUTH_POOL_RESPONSE_TIMEOUT_MS: "8000", OAUTH_POOL_TIMEOUT_MS: "8000" };

early("every hostile API endpoint ends in bounded time with NETWORK and a cause, on both transports; a good one serves", async () => {
  const runs = [];
  const dumped = [];
  for (const transport of ["native", "runtime"]) {
    for (const c of API_CASES) {
      const url = c.url();
      if (!url || (c.native && transport !== "native")) continue;
      runs.push(
        (async () => {
          const path = await seedPool(mock, [`${transport}-${runs.length}@x.test`]);
          const secrets = readPool(path).anthropic.flatMap((a) => [a.access, a.refresh]);
          // The stalls run with the default timeouts: what bounds them is the connect bound.
          const env = { OAUTH_POOL_PATH: path, OAUTH_POOL_API_URL: url, ...(c.defaults ? {} : SHORT), ...(c.ca ? { NODE_EXTRA_CA_CERTS: ca() } : {}) };
          const r = await inChild({ transport, env });
          dumped.push({ transport, case: c.name, ...r });
          return () => assertFailure(`${transport}: ${c.name}`, r, { message: c.message, pool: path, secrets });
        })(),
      );
    }
    for (const c of OK_CASES) {
      if ((c.native && transport !== "native") || !c.url()) continue;
      runs.push(
        (async () => {
          const email = `${transport}-ok-${runs.length}@x.test`;
          const path = await seedPool(mock, [email]);
          const r = await inChild({ transport, env: { OAUTH_POOL_PATH: path, OAUTH_POOL_API_URL: c.url(), ...SHORT, ...c.env() } });
          return () => {
            assert.equal(r.status, 200, `${transport}: ${c.name}: ${JSON.stringify(r)}`);
            assert.match(r.text, c.text ?? new RegExp(`Hello from ${email.replace(/\./g, "\\.")}`));
          };
        })(),
      );
    }
  }
  const checks = await Promise.all(runs);
  if (process.env.NETWORK_TEST_DUMP) writeFileSync(process.env.NETWORK_TEST_DUMP, JSON.stringify(dumped, null, 1));
  return () => {
    const failures = [];
    for (const check of checks) {
      try {
        check();
      } catch (e) {
        failures.push(e.message);
      }
    }
    assert.deepEqual(failures, []);
  };
});

early("an answer slower than the connect bound, on a connection made while the origin then refuses new ones, is served (both transports)", async () => {
  // Bun's fetch does not say when it is connected, so after 10 s the runtime transport asks the
  // origin for a connection of its own. An origin that refuses new connections (a connection
  // limit, a listener gone) refuses that probe at once, which says nothing about the request:
  // one whose own connect was refused would have failed at once itself. Only a probe that stalls
  // means the request may be stuck connecting.
  const runs = [];
  for (const transport of ["runtime", "native"]) {
    runs.push(
      (async () => {
        const email = `slow-head-${transport}@x.test`;
        const path = await seedPool(mock, [email]);
        const server = track(
          createNetServer((s) => {
            server.close(); // the listener goes; this connection stays
            s.once("data", () => {
              const body = JSON.stringify({
                id: "msg_slow",
                type: "message",
                role: "assistant",
                content: [{ type: "text", text: "slow but served" }],
                usage: { input_tokens: 1, output_tokens: 1 },
              });
              setTimeout(
                () =>
                  s.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`),
                12_000,
              );
            });
          }),
        );
        const port = await listen(server);
        const r = await inChild({ transport, env: { OAUTH_POOL_PATH: path, OAUTH_POOL_API_URL: `http://127.0.0.1:${port}` } });
        return () => {
          const shown = `${transport}: ${JSON.stringify(r)}`;
          assert.equal(r.status, 200, shown);
          assert.match(r.text, /slow but served/, shown);
          assert.ok(r.ms >= 11_000, shown);
        };
      })(),
    );
  }
  const checks = await Promise.all(runs);
  return () => {
    for (const check of checks) check();
  };
});

early("the gateway answers 502 in bounded time, saying why, when the API cannot be reached", async () => {
  const cases = [
    { name: "handshake never answered", url: https(ports.silent), message: /could not connect/ },
    { name: "refused", url: https(ports.closed), message: /refused|connect/i },
    { name: "expired certificate", url: https(ports.expired), message: /expire|certificate/i },
  ];
  const results = await Promise.all(
    cases.map(async (c, i) => {
      const path = await seedPool(mock, [`gw-${i}@x.test`]);
      const secrets = readPool(path).anthropic.flatMap((a) => [a.access, a.refresh]);
      const env = { OAUTH_POOL_PATH: path, OAUTH_POOL_API_URL: c.url, OAUTH_POOL_GATEWAY_KEY: `gateway-test-key-${i}`, NODE_EXTRA_CA_CERTS: ca() };
      return { c, path, secrets, r: await inChild({ kind: "gateway", env }) };
    }),
  );
  return () => {
    for (const { c, path, secrets, r } of results) {
      const shown = `${c.name}: ${JSON.stringify(r)}`;
      assert.equal(r.status, 502, shown);
      assert.ok(r.ms < CONNECT_BOUND_MS, shown);
      assert.match(r.text, c.message, shown);
      for (const secret of secrets) assert.ok(!r.text.includes(secret), shown);
      for (const a of readPool(path).anthropic) assert.ok(a.status !== "auth-error" && !a.cooldownUntil && !a.rateLimitUntil, shown);
    }
  };
});

early("a refresh whose token endpoint cannot be reached fails bounded, keeps the login and benches nobody", async () => {
  const cases = [
    { name: "handshake never answered", url: https(ports.tokenStalled), defaults: true, server: "tokenStalled" },
    { name: "a TLS alert", url: https(ports.tokenAlert), server: "tokenAlert" },
    { name: "expired certificate (counted)", url: https(ports.tokenExpired), ca: true, server: "tokenExpired" },
    { name: "garbage instead of a ServerHello", url: https(ports.garbage) },
    { name: "reset during the handshake", url: https(ports.resetInHandshake) },
    { name: "refused", url: https(ports.closed) },
    { name: "expired certificate", url: https(ports.expired), ca: true },
    { name: "certificate for another host", url: https(ports.otherHost), ca: true },
    { name: "a plain HTTP server on https://", url: https(ports.plain) },
    { name: "a port that never accepts", url: https(ports.backlog), defaults: true },
  ].filter((c) => c.url);
  const results = await Promise.all(
    cases.map(async (c, i) => {
      const email = `refresh-${i}@x.test`;
      const path = await seedPool(mock, [email], { expired: [email] });
      const before = readPool(path).anthropic[0];
      const env = {
        OAUTH_POOL_PATH: path,
        OAUTH_POOL_API_URL: mock.url,
        OAUTH_POOL_TOKEN_URL: `${c.url}/v1/oauth/token`,
        ...(c.defaults ? {} : SHORT),
        ...(c.ca ? { NODE_EXTRA_CA_CERTS: ca() } : {}),
      };
      return { c, path, before, r: await inChild({ transport: "native", env }) };
    }),
  );
  return () => {
    const failures = [];
    for (const { c, path, before, r } of results) {
      try {
        assert.ok(!r.unbounded, `${c.name}: ${JSON.stringify(r)}`);
        assert.ok(r.ms < CONNECT_BOUND_MS * 2, `${c.name}: ${JSON.stringify(r)}`);
        assert.ok(r.code === "NETWORK" || r.code === "OAUTH_HTTP" || r.code === "POOL_NO_ACCOUNT", `${c.name}: ${JSON.stringify(r)}`);
        assert.match(r.message, /token endpoint|refresh/i, `${c.name}: ${JSON.stringify(r)}`);
        assert.ok(!r.message.includes(before.refresh) && !r.message.includes(before.access), `${c.name}: a token in ${r.message}`);
        const after = readPool(path).anthropic[0];
        assert.equal(after.refresh, before.refresh, `${c.name}: the login is kept`);
        assert.notEqual(after.status, "auth-error", `${c.name}: ${JSON.stringify(after)}`);
        // Nothing was sent on a connection that never formed: no answer was lost, so there is
        // no second try (it doubled the wait on a stalled handshake).
        if (c.server) assert.equal(tokenServers[c.server].accepted, 1, `${c.name}: connections to the token endpoint`);
      } catch (e) {
        failures.push(e.message);
      }
    }
    assert.deepEqual(failures, []);
  };
});

early("a fleet store that cannot be reached is STORE_UNAVAILABLE in bounded time", async () => {
  const cases = [
    { name: "never answers", port: ports.silent, message: /no answer|within|timed out/i },
    { name: "refused", port: ports.closed, message: /refused|connect/i },
    { name: "resets at once", port: ports.resetAtOnce, message: /reset|closed|connect|unexpected|eof/i },
    { name: "garbage", port: ports.garbage, message: /.+/ },
  ];
  const results = await Promise.all(
    cases.map(async (c) => {
      const home = tempDir("oauth-pool-net-store-");
      const env = {
        HOME: home,
        OAUTH_POOL_PATH: join(home, "pool.json"),
        OAUTH_POOL_STORE: `postgres://fleet:fleet-password@127.0.0.1:${c.port}/fleet`,
        OAUTH_POOL_STORE_KEY: Buffer.alloc(32, 1).toString("base64"),
      };
      return { c, r: await inChild({ kind: "store", env }) };
    }),
  );
  return () => {
    for (const { c, r } of results) {
      const shown = `${c.name}: ${JSON.stringify(r)}`;
      assert.ok(!r.unbounded, shown);
      assert.equal(r.code, "STORE_UNAVAILABLE", shown);
      assert.ok(r.ms < CONNECT_BOUND_MS, shown);
      assert.match(r.message, c.message, shown);
      assert.ok(!r.message.includes("fleet-password"), shown);
    }
  };
});
