// The fleet store over TLS (src/store/postgres.rs: `tls`, `connect`, `libpq_tls_params`): a
// throwaway CA, loopback clusters whose pg_hba.conf admits TLS only (so a session that worked was
// TLS), one whose certificate names another host, and one without TLS. Hosts, the CLI and the
// library's process as in fleet.test.mjs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { seedPool } from "./helpers/pool-env.mjs";
import { cliJson } from "./helpers/fleet-kit.mjs";
import { startPostgres } from "./helpers/postgres.mjs";
import { tempDir } from "./helpers/temp.mjs";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const KEY = Buffer.alloc(32, 7).toString("base64");
const APP = "oauth-pool-tls-test";
// Admits TLS only; `fleet` (a password user, for channel binding) by SCRAM.
const HBA_TLS_ONLY = "hostssl all fleet 127.0.0.1/32 scram-sha-256\nhostssl all all 127.0.0.1/32 trust";
const FLEET_PASSWORD = "fleet-tls-password-1";

let dir;
let ca;
let tlsPg; // certificate for localhost and 127.0.0.1, TLS only
let wrongPg; // certificate for db.invalid only, TLS only
let plainPg; // no TLS at all
let mock;
let tokens;

function openssl(...args) {
  const r = spawnSync("openssl", args, { cwd: dir });
  assert.equal(r.status, 0, String(r.stderr));
}

/** A server certificate signed by the test CA: { cert, key } as PEM. */
function leaf(name, san) {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", ...ec, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
  writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
  openssl(
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    "ca.pem",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
    "-out",
    `${name}.crt`,
  );
  return { cert: readFileSync(join(dir, `${name}.crt`), "utf8"), key: readFileSync(join(dir, `${name}.key`), "utf8") };
}

const urlOf = (pg, query = "", host = "127.0.0.1", db = "postgres", user = "postgres") =>
  `postgres://${user}@${host}:${pg.port}/${db}${query ? `?${query}` : ""}`;

/** A host: its own HOME, the shared key, the mock; no trusted extra CA unless `extra` says. */
function makeHost(store, extra = {}) {
  const home = tempDir("oauth-pool-tls-host-");
  const env = {
    ...process.env,
    HOME: home,
    USERPROFILE: home,
    OAUTH_POOL_STORE: store,
    OAUTH_POOL_STORE_KEY: KEY,
    OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
    OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
    OAUTH_POOL_API_URL: mock.url,
  };
  for (const v of ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "OAUTH_POOL_LOG"]) delete env[v];
  return { home, env: Object.assign(env, extra) };
}

/** The library in a process of its own (helpers/fleet-host.mjs): one JSON answer per command. */
async function withHostProcess(host, work) {
  const child = spawn(process.execPath, [here("./helpers/fleet-host.mjs"), host.env.OAUTH_POOL_STORE, mock.url], {
    env: host.env,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const waiting = [];
  let buffer = "";
  child.stdout.on("data", (d) => {
    buffer += d;
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      waiting.shift()?.(JSON.parse(buffer.slice(0, nl)));
      buffer = buffer.slice(nl + 1);
    }
  });
  const exited = new Promise((resolve) => child.on("close", resolve));
  const answer = () => new Promise((resolve) => waiting.push(resolve));
  await answer(); // ready
  try {
    return await work((command) => {
      const next = answer();
      child.stdin.write(`${command}\n`);
      return next;
    });
  } finally {
    child.stdin.end();
    await exited;
  }
}

/** The account seeded the way fleet.test.mjs does: a pool file copied in. */
async function seed(host, email) {
  const file = await seedPool(mock, [email]);
  const r = await cliJson(host, "store", "copy", "--from", file, "--to", host.env.OAUTH_POOL_STORE);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  tokens.push(mock.tokens(email).access, mock.tokens(email).refresh);
}

/** The pool's sessions (by application_name) as pg_stat_ssl sees them: "t"/"f" per session. */
async function sessionsTls(pg) {
  const out = await pg.sql(`SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '${APP}'`);
  return out.trim().split("\n").filter(Boolean);
}

const schemaless = async (pg, db = "postgres") => assert.equal(await pg.sql("SELECT to_regclass('oauth_pool_meta') IS NULL", db), "t\n", "nothing was written");

/** A refusal: STORE_UNAVAILABLE from the CLI (exit 1), naming `why`, with no token in it. */
function assertRefused(r, why) {
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.equal(r.err?.code, "STORE_UNAVAILABLE", r.stdout);
  assert.match(r.err.message, why);
  for (const t of tokens) assert.ok(!r.stdout.includes(t) && !r.stderr.includes(t), "no token in the output");
}

before(async () => {
  dir = tempDir("oauth-pool-tls-ca-");
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(
    "req",
    "-x509",
    ...ec,
    "-keyout",
    "ca.key",
    "-out",
    "ca.pem",
    "-days",
    "2",
    "-subj",
    "/CN=oauth-pool test CA",
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign",
  );
  ca = join(dir, "ca.pem");
  tlsPg = await startPostgres({ tls: leaf("localhost", "DNS:localhost,IP:127.0.0.1"), hba: HBA_TLS_ONLY });
  wrongPg = await startPostgres({ tls: leaf("db.invalid", "DNS:db.invalid"), hba: HBA_TLS_ONLY });
  plainPg = await startPostgres({ hba: "host all all 127.0.0.1/32 trust" });
  await tlsPg.sql(`CREATE ROLE fleet LOGIN PASSWORD '${FLEET_PASSWORD}'`);
  await tlsPg.sql("CREATE DATABASE fleet OWNER fleet");
  await tlsPg.sql("CREATE DATABASE untouched");
  mock = await startMockAnthropic();
  tokens = [];
});

after(async () => {
  await mock?.close();
  for (const pg of [tlsPg, wrongPg, plainPg]) await pg?.close();
});

test("TLS with the CA from SSL_CERT_FILE (and NODE_EXTRA_CA_CERTS): init, seed, a request, status; the sessions are TLS", async () => {
  const url = urlOf(tlsPg, `application_name=${APP}`);
  const a = makeHost(url, { SSL_CERT_FILE: ca });
  const init = await cliJson(a, "store", "init");
  assert.equal(init.code, 0, init.stdout + init.stderr);
  assert.equal(init.json.schema, 1);
  await seed(a, "tls@fleet.test");

  mock.clearRequests();
  await withHostProcess(a, async (ask) => {
    const res = await ask("fetch");
    assert.equal(res.value?.status, 200, JSON.stringify(res));
    assert.equal(res.value.account, "tls@fleet.test");
    assert.deepEqual(
      mock.requests.map((r) => r.email),
      ["tls@fleet.test"],
      "served with the account's token",
    );
    assert.equal((await ask("status")).ok, true);
    // The library's connections are open now: every one of them is TLS (the hba admits nothing else).
    const sessions = await sessionsTls(tlsPg);
    assert.ok(sessions.length >= 1, "the pool's sessions are visible");
    for (const s of sessions) assert.match(s, /^t\|TLSv1\.[23]$/);
  });

  const b = makeHost(url, { NODE_EXTRA_CA_CERTS: ca });
  const status = await cliJson(b, "status");
  assert.equal(status.code, 0, status.stdout + status.stderr);
  assert.equal(status.json.accounts[0].email, "tls@fleet.test");
  assert.ok(status.json.accounts[0].lastUsed, "the request's bookkeeping reached the store");
});

test("without the CA: STORE_UNAVAILABLE naming the certificate problem; nothing written, nothing sent", async () => {
  // Without a key either: a failed init leaves no key file behind (it made one before connecting).
  const host = makeHost(urlOf(tlsPg, "", "127.0.0.1", "untouched"));
  delete host.env.OAUTH_POOL_STORE_KEY;
  assertRefused(await cliJson(host, "store", "init"), /TLS handshake: invalid peer certificate: UnknownIssuer/);
  await schemaless(tlsPg, "untouched");
  assert.equal(existsSync(join(host.home, ".aidevops", "oauth-pool-store.key")), false);

  // The initialized database, a host without the CA: the CLI and the library both refuse.
  const stranger = makeHost(urlOf(tlsPg));
  const before = await tlsPg.sql("SELECT position, entry::text FROM oauth_pool_entries ORDER BY position");
  assertRefused(await cliJson(stranger, "status"), /UnknownIssuer/);
  mock.clearRequests();
  await withHostProcess(stranger, async (ask) => {
    const res = await ask("fetch");
    assert.equal(res.ok, false, JSON.stringify(res));
    assert.equal(res.code, "STORE_UNAVAILABLE");
    assert.match(res.message, /UnknownIssuer/);
    for (const t of tokens) assert.ok(!res.message.includes(t));
  });
  assert.equal(mock.requests.length, 0, "nothing went upstream");
  assert.equal(await tlsPg.sql("SELECT position, entry::text FROM oauth_pool_entries ORDER BY position"), before);
});

test("a certificate for another host name is refused, by address or by name; with its name (and hostaddr) it works", async () => {
  // sslmode=require too: libpq's would take any certificate there, this store checks it as verify-full.
  for (const [name, query] of [
    ["127.0.0.1", ""],
    ["localhost", ""],
    ["localhost", "sslmode=require"],
  ]) {
    const host = makeHost(urlOf(wrongPg, query, name), { SSL_CERT_FILE: ca });
    assertRefused(await cliJson(host, "store", "init"), new RegExp(`not valid for name "${name.replaceAll(".", "\\.")}".*db\\.invalid`));
  }
  assertRefused(await cliJson(makeHost(urlOf(tlsPg, "sslmode=require", "localhost", "untouched")), "store", "init"), /UnknownIssuer/);
  await schemaless(tlsPg, "untouched");
  await schemaless(wrongPg);
  // The name checked is the URL's host, the address connected to is hostaddr's.
  const named = makeHost(urlOf(wrongPg, "hostaddr=127.0.0.1&sslmode=verify-full", "db.invalid"), { SSL_CERT_FILE: ca });
  const init = await cliJson(named, "store", "init");
  assert.equal(init.code, 0, init.stdout + init.stderr);
});

test("a server without TLS: sslmode=require and verify-full refuse it; no sslmode (prefer) goes plain; sslmode=disable to a TLS-only server is refused by it", async () => {
  for (const mode of ["require", "verify-full"]) {
    assertRefused(await cliJson(makeHost(urlOf(plainPg, `sslmode=${mode}`)), "store", "init"), /server does not support TLS/);
  }
  await schemaless(plainPg);

  // libpq's default: TLS when the server offers it, plain text when it does not.
  const plain = makeHost(urlOf(plainPg, `application_name=${APP}`));
  const init = await cliJson(plain, "store", "init");
  assert.equal(init.code, 0, init.stdout + init.stderr);
  await withHostProcess(plain, async (ask) => {
    assert.equal((await ask("status")).ok, true);
    const sessions = await sessionsTls(plainPg);
    assert.ok(sessions.length >= 1);
    for (const s of sessions) assert.match(s, /^f\|$/);
  });

  assertRefused(
    await cliJson(makeHost(urlOf(tlsPg, "sslmode=disable", "127.0.0.1", "untouched"), { SSL_CERT_FILE: ca }), "store", "init"),
    /no pg_hba\.conf entry .*no encryption/,
  );
  await schemaless(tlsPg, "untouched");
});

test("URLs as managed PostgreSQL documents them: verify-full with sslrootcert, channel_binding=require; what is not supported says so", async () => {
  // RDS / Supabase / Cloud SQL style: the CA in the URL, no variable needed. Neon style:
  // channel binding (SCRAM-SHA-256-PLUS) required, which needs a password user over TLS.
  const query = `sslmode=verify-full&sslrootcert=${encodeURIComponent(ca)}&channel_binding=require`;
  const url = `postgres://fleet:${FLEET_PASSWORD}@localhost:${tlsPg.port}/fleet?${query}`;
  const host = makeHost(url);
  const init = await cliJson(host, "store", "init");
  assert.equal(init.code, 0, init.stdout + init.stderr);
  assert.ok(!init.stdout.includes(FLEET_PASSWORD), "the password is hidden");
  assert.equal(await tlsPg.sql("SELECT value FROM oauth_pool_meta WHERE name = 'schema'", "fleet"), "1\n");
  const wrong = await cliJson(makeHost(url.replace(FLEET_PASSWORD, "not-the-password")), "status");
  assertRefused(wrong, /password authentication failed for user "fleet"/);
  assert.ok(!wrong.stdout.includes("not-the-password"));

  // sslrootcert is the only trust: another file refuses this server even with the CA in SSL_CERT_FILE.
  const other = join(dir, "other-ca.pem");
  writeFileSync(other, readFileSync(join(dir, "db.invalid.crt")));
  assertRefused(
    await cliJson(makeHost(urlOf(tlsPg, `sslrootcert=${other}`, "localhost", "untouched"), { SSL_CERT_FILE: ca }), "store", "init"),
    /UnknownIssuer/,
  );

  const refusedUrl = async (q, why) => {
    const r = await cliJson(makeHost(urlOf(tlsPg, q, "localhost", "untouched")), "store", "init");
    assert.equal(r.code, 1, r.stdout);
    assert.equal(r.err?.code, "INVALID_ARGUMENT", r.stdout);
    assert.match(r.err.message, why);
  };
  await refusedUrl(`sslrootcert=${join(dir, "missing.pem")}`, /sslrootcert .*missing\.pem: it does not exist/);
  await refusedUrl("sslmode=require&sslcert=client.crt&sslkey=client.key", /`sslcert`: client certificates are not supported/);
  await refusedUrl("pgbouncer=true", /unknown option `pgbouncer`/);
  await refusedUrl("sslmode=allow", /invalid value for option `sslmode`/);
  await schemaless(tlsPg, "untouched");
});
