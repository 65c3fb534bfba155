// The fleet store behind a connection pooler: the pooled URLs managed PostgreSQL hands out
// (Neon's "-pooler" hosts, Supabase's port 6543) are PgBouncer in transaction mode, where a
// server connection is lent for one transaction, or one statement outside a transaction, and named
// prepared statements do not survive between them. A throwaway cluster (helpers/postgres.mjs) with
// two PgBouncers in front of it: transaction mode with 2 server connections (every host's client
// connections share them) and session mode. PgBouncer 1.18 (Debian 12) has no prepared-statement
// support at all: the worst case. Hosts, the CLI and the library's process as in fleet.test.mjs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { rateLimitHeaders, startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { runWorkersTogether } from "./helpers/pool-env.mjs";
import {
  cliJson,
  oauthEntry as entryOf,
  runNode,
  seedStore as seedFrom,
  startHostProcess as startHost,
  storedPool as storedFrom,
} from "./helpers/fleet-kit.mjs";
import { startPgBouncer, startPostgres } from "./helpers/postgres.mjs";
import { tempDir } from "./helpers/temp.mjs";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const INDEX = here("../index.mjs");
const KEY_FILE = [".aidevops", "oauth-pool-store.key"];
const MODES = ["transaction", "session"];

let pg;
let mock;
/** Per pool mode: its PgBouncer, the store URL through it (a database of its own), two hosts. */
const fleets = {};

function makeHost(name, store, extra = {}) {
  const home = tempDir(`oauth-pool-pooled-${name}-`);
  const env = {
    ...process.env,
    HOME: home,
    USERPROFILE: home,
    OAUTH_POOL_STORE: store,
    OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
    OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
    OAUTH_POOL_API_URL: mock.url,
  };
  for (const v of ["OAUTH_POOL_STORE_KEY", "OAUTH_POOL_LOG"]) delete env[v];
  return { name, home, env: Object.assign(env, extra) };
}

const run = runNode;

/** A script run as a process of `host` with the library imported as `lib`; prints its JSON value. */
async function library(host, body) {
  const code = `const lib = await import(${JSON.stringify(INDEX)});\nconst value = await (async () => {${body}})();\nprocess.stdout.write(JSON.stringify(value ?? null));`;
  const r = await run(["--input-type=module", "-e", code], host.env);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

const startHostProcess = (host) => startHost(host, host.env.OAUTH_POOL_STORE, mock.url);

const seedStore = (fleet, pool) => seedFrom(fleet.hostA, fleet.url, pool);

const storedPool = (fleet) => storedFrom(fleet.hostB, fleet.url);

const oauthEntry = (email, options) => entryOf(mock, email, options);

before(async () => {
  pg = await startPostgres();
  mock = await startMockAnthropic();
  for (const mode of MODES) {
    const db = `pooled_${mode}`;
    await pg.sql(`CREATE DATABASE ${db}`);
    // Transaction mode: 2 server connections for every client of every host. Session mode lends
    // one per client connection for its whole life, so it needs as many as are open at once.
    const bouncer = await startPgBouncer({ target: pg, mode, poolSize: mode === "transaction" ? 2 : 40 });
    const url = bouncer.url.replace(/\/postgres$/, `/${db}`);
    fleets[mode] = { mode, db, bouncer, url, hostA: makeHost(`${mode}-a`, url), hostB: makeHost(`${mode}-b`, url) };
  }
});

after(async () => {
  for (const f of Object.values(fleets)) await f.bouncer.close();
  await mock?.close();
  await pg?.close();
});

for (const mode of MODES) {
  const fleet = () => fleets[mode];

  test(`${mode} pooling: store init, a second init, list, doctor and store copy both ways`, async () => {
    const { hostA, hostB, url, db } = fleet();
    const init = await cliJson(hostA, "store", "init");
    assert.equal(init.code, 0, init.stdout + init.stderr);
    assert.equal(init.json.schema, 1);
    assert.equal(await pg.sql("SELECT value FROM oauth_pool_meta WHERE name = 'schema'", db), "1\n");
    mkdirSync(join(hostB.home, ".aidevops"), { recursive: true, mode: 0o700 });
    copyFileSync(join(hostA.home, ...KEY_FILE), join(hostB.home, ...KEY_FILE));
    const again = await cliJson(hostB, "store", "init", url);
    assert.equal(again.code, 0, again.stdout + again.stderr);
    assert.equal(again.json.keyCreated, null);

    const empty = await cliJson(hostB, "list");
    assert.equal(empty.code, 0, empty.stdout + empty.stderr);
    assert.deepEqual(empty.json.accounts, []);
    const doctor = await cliJson(hostB, "doctor");
    assert.ok(
      doctor.json.checks.some((c) => c.name === "store key" && c.level === "ok"),
      JSON.stringify(doctor.json.checks.filter((c) => c.level !== "ok")),
    );

    // In the form the pool writes (`lastUsed` set: a null one is not written), as fleet.test.mjs.
    const lastUsed = "2026-11-28T10:00:00.000Z";
    const pool = {
      anthropic: [oauthEntry(`copy-${mode}@pooled.test`, { priority: 2, lastUsed }), oauthEntry(`other-${mode}@pooled.test`, { lastUsed })],
      _oauthPool: { note: "kept" },
    };
    await seedStore(fleet(), pool);
    assert.deepEqual(await storedPool(fleet()), pool);
    const list = await cliJson(hostA, "list");
    assert.equal(list.code, 0, list.stdout + list.stderr);
    assert.deepEqual(
      list.json.accounts.map((a) => a.email),
      pool.anthropic.map((a) => a.email),
    );
  });

  test(`${mode} pooling: loadPool and savePool, and eight CLI writers at once lose no change`, async () => {
    const { hostA, hostB } = fleet();
    // One account for the library's write, eight for the CLI writers, all at once.
    const emails = Array.from({ length: 9 }, (_, i) => `w${i}-${mode}@pooled.test`);
    await seedStore(fleet(), { anthropic: emails.map((e) => oauthEntry(e)) });
    const loaded = await library(hostA, "return (await lib.loadPool()).anthropic.map((a) => a.email);");
    assert.deepEqual(loaded, emails);
    await library(hostB, "const p = await lib.loadPool(); p.anthropic[0].priority = 9; await lib.savePool(p);");

    const writes = await Promise.all(emails.slice(1).map((e, i) => cliJson(i % 2 ? hostA : hostB, "priority", e, String(i + 1))));
    for (const w of writes) assert.equal(w.code, 0, w.stdout + w.stderr);
    const stored = await storedPool(fleet());
    assert.deepEqual(
      stored.anthropic.map((a) => a.priority),
      [9, 1, 2, 3, 4, 5, 6, 7, 8],
    );
  });

  test(`${mode} pooling: requests through createPoolFetch, and a 429 cooldown set on one host is honoured by the other`, async () => {
    const { hostA, hostB } = fleet();
    const first = `first-${mode}@pooled.test`;
    const second = `second-${mode}@pooled.test`;
    await seedStore(fleet(), { anthropic: [oauthEntry(first, { priority: 5 }), oauthEntry(second)] });
    const onB = startHostProcess(hostB);
    try {
      await onB.ready;
      const warm = await onB.ask("fetch");
      assert.equal(warm.value?.status, 200, JSON.stringify(warm));
      assert.equal(warm.value.account, first);

      mock.script(first, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
      const onA = startHostProcess(hostA);
      await onA.ready;
      const moved = await onA.ask("fetch");
      await onA.close();
      assert.equal(moved.value?.status, 200, JSON.stringify(moved));
      assert.equal(moved.value.account, second);
      const cooled = (await storedPool(fleet())).anthropic[0];
      assert.ok(cooled.rateLimitUntil > Date.now() + 500_000, JSON.stringify(cooled));

      await new Promise((r) => setTimeout(r, 1000));
      mock.clearRequests();
      const after = await onB.ask("fetch");
      assert.equal(after.value?.status, 200, JSON.stringify(after));
      assert.equal(after.value.account, second);
      assert.deepEqual(
        mock.requests.map((r) => r.email),
        [second],
        "host B never tried the cooling account",
      );
      const status = await onB.ask("status");
      assert.equal(status.ok, true, JSON.stringify(status));
    } finally {
      await onB.close();
    }
  });

  test(`${mode} pooling: two hosts x 6 processes on one expired account: exactly one refresh, every request served`, { timeout: 240_000 }, async () => {
    const { hostA, hostB, url } = fleet();
    const email = `hot-${mode}@pooled.test`;
    await seedStore(fleet(), { anthropic: [oauthEntry(email, { expired: true })] });
    mock.setTokenMode({ delayMs: 150, grant: "refresh_token" });
    const PER_HOST = 6;
    const REQUESTS = 3;
    let results;
    try {
      results = await runWorkersTogether(here("./helpers/pool-worker.mjs"), PER_HOST * 2, [url, mock.url, String(REQUESTS)], {
        envFor: (i) => (i % 2 === 0 ? hostA.env : hostB.env),
      });
    } finally {
      mock.setTokenMode(null);
    }
    const served = results.flatMap((r) => {
      assert.equal(r.code, 0, r.out);
      return JSON.parse(r.out);
    });
    assert.equal(served.length, PER_HOST * 2 * REQUESTS);
    const failures = served.filter((r) => r.status !== 200);
    assert.equal(failures.length, 0, JSON.stringify(failures.slice(0, 3)));
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1, "one refresh, fleet-wide");
    assert.equal(fam.reuse, 0, "no refresh token presented twice");
    const stored = (await storedPool(fleet())).anthropic[0];
    assert.equal(stored.refresh, mock.tokens(email).refresh);
  });

  test(`${mode} pooling: PostgreSQL stopped behind the pooler: valid tokens keep serving, a refresh is STORE_UNAVAILABLE, service resumes`, {
    timeout: 180_000,
  }, async () => {
    const { hostA } = fleet();
    const valid = `valid-${mode}@pooled.test`;
    const stale = `stale-${mode}@pooled.test`;
    await seedStore(fleet(), { anthropic: [oauthEntry(valid, { priority: 5 }), oauthEntry(stale, { expired: true, priority: -5 })] });
    const host = startHostProcess(hostA);
    try {
      await host.ready;
      assert.equal((await host.ask("fetch")).value?.status, 200);
      await pg.stop();
      try {
        for (let i = 0; i < 3; i++) {
          const started = Date.now();
          const r = await host.ask("fetch");
          assert.equal(r.value?.status, 200, JSON.stringify(r));
          assert.equal(r.value.account, valid);
          assert.ok(Date.now() - started < 5000, `a request waited ${Date.now() - started} ms for the store`);
        }
        // Behind a pooler a stopped database is a mute one: PgBouncer holds the query (up to
        // query_wait_timeout), so this waits out the store's 30 s limit instead of failing at once.
        const refresh = await host.ask(`refresh ${stale}`);
        assert.equal(refresh.ok, false, JSON.stringify(refresh));
        assert.equal(refresh.code, "STORE_UNAVAILABLE", refresh.message);
        assert.equal(mock.stats().perFamily[stale].refreshCalls, 0, "no refresh token spent without the database");
      } finally {
        await pg.start();
      }
      // PgBouncer refuses logins for server_login_retry (1 s here, 15 s by default) after a failed
      // one: "server login has been failing, try again later". The store is unavailable until then.
      await new Promise((r) => setTimeout(r, 1500));
      const after = await host.ask(`refresh ${stale}`);
      assert.equal(after.ok, true, JSON.stringify(after));
      assert.equal(after.value.outcome, "refreshed");
      assert.equal((await host.ask("fetch")).value?.status, 200);
      assert.equal((await host.ask("flush")).ok, true);
      const stored = await storedPool(fleet());
      assert.equal(stored.anthropic.find((a) => a.email === stale).refresh, mock.tokens(stale).refresh);
      assert.ok(stored.anthropic.find((a) => a.email === valid).lastUsed, "bookkeeping from the outage caught up");
    } finally {
      await host.close();
    }
  });

  test(`${mode} pooling: the pooler itself restarted: a running host reconnects and writes`, { timeout: 120_000 }, async () => {
    const { hostA, bouncer } = fleet();
    const email = `restart-${mode}@pooled.test`;
    await seedStore(fleet(), { anthropic: [oauthEntry(email, { expired: true })] });
    const host = startHostProcess(hostA);
    try {
      await host.ready;
      assert.equal((await host.ask("status")).ok, true);
      await bouncer.stop();
      await bouncer.start();
      const refreshed = await host.ask(`refresh ${email}`);
      assert.equal(refreshed.ok, true, JSON.stringify(refreshed));
      assert.equal(refreshed.value.outcome, "refreshed");
      assert.equal((await host.ask("fetch")).value?.status, 200);
      assert.equal((await storedPool(fleet())).anthropic[0].refresh, mock.tokens(email).refresh);
    } finally {
      await host.close();
    }
  });
}

test("transaction pooling: a host SIGKILLed while it holds a refresh lock: the lock goes with it and another host refreshes at once", async () => {
  const { hostA, hostB, url, db } = fleets.transaction;
  const email = "killed@pooled.test";
  await seedStore(fleets.transaction, { anthropic: [oauthEntry(email, { expired: true })] });
  mock.setTokenMode({ hang: true, grant: "refresh_token" });
  const victim = spawn(process.execPath, [here("./helpers/pool-worker.mjs"), url, mock.url, "1"], { env: hostA.env, stdio: "ignore" });
  const victimDone = new Promise((resolve) => victim.on("close", resolve));
  await mock.waitFor("token", (r) => r.grant === "refresh_token");
  const held = `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = ${0x6f617072} AND objsubid = 2`;
  assert.equal(await pg.sql(held, db), "1\n", "the victim holds the account's refresh lock in the database");
  victim.kill("SIGKILL");
  await victimDone;
  mock.setTokenMode(null);
  const started = Date.now();
  const next = await run([here("./helpers/pool-worker.mjs"), url, mock.url, "1"], hostB.env);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(JSON.parse(next.stdout)[0].status, 200, next.stdout);
  assert.ok(Date.now() - started < 5000, `the other host waited ${Date.now() - started} ms for the lock`);
  assert.equal(mock.stats().perFamily[email].reuse, 0);
  assert.equal(await pg.sql(held, db), "0\n");
});

test("transaction pooling: more refreshes at once, on two hosts, than the pooler has server connections: each account is refreshed once, and none fails for want of a connection", {
  timeout: 180_000,
}, async () => {
  const f = fleets.transaction;
  const emails = ["crowd-1@pooled.test", "crowd-2@pooled.test", "crowd-3@pooled.test", "crowd-4@pooled.test"];
  await seedStore(f, { anthropic: emails.map((e) => oauthEntry(e, { expired: true })) });
  // A slow token endpoint: each refresh keeps its lock, and the server connection under it, that
  // long. Re-reading and writing on another connection meanwhile, the refreshes waited for each
  // other until every one failed STORE_UNAVAILABLE (the pooler has two).
  mock.setTokenMode({ delayMs: 1000, times: emails.length, grant: "refresh_token" });
  const refreshAll = (mine) =>
    `return Promise.all(${JSON.stringify(mine)}.map((e) => lib.refreshAccount(e).then(() => "ok", (err) => err.code + ": " + err.message)))`;
  try {
    const [onA, onB] = await Promise.all([library(f.hostA, refreshAll(emails.slice(0, 2))), library(f.hostB, refreshAll(emails.slice(2)))]);
    assert.deepEqual([...onA, ...onB], ["ok", "ok", "ok", "ok"]);
  } finally {
    mock.setTokenMode(null);
  }
  const stored = await storedPool(f);
  for (const email of emails) {
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1, email);
    assert.equal(fam.reuse, 0, email);
    assert.equal(stored.anthropic.find((a) => a.email === email).refresh, mock.tokens(email).refresh, email);
  }
});
