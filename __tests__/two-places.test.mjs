// One login in two places, and a store that goes back in time. A refresh token works once, and
// the mock's token endpoint, like a careful real one, revokes the whole login when a spent one
// comes back. The pool keeps one refresh per token among the processes that share ONE store;
// these are the ways one machine ends up with the same login in two: a pool file copied to a
// second path, `store copy` to PostgreSQL while a process still uses the file, a snapshot or
// older copy put back, the same login twice in one pool. Before the refresh journal
// (src/store/journal.rs), the second store presented the spent token: its account died with a
// bare invalid_grant, the token endpoint revoked the login, and the first store lost it as well.
// Each test has its own HOME: the journal is per user and machine (~/.aidevops).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { spawn } from "node:child_process";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { CLI, cliJson, runNode } from "./helpers/fleet-kit.mjs";
import { startPostgres } from "./helpers/postgres.mjs";
import { openCodeRetries } from "./helpers/opencode-retry.mjs";
import { FAKETIME_LIB } from "./helpers/faketime.mjs";
import { tempDir } from "./helpers/temp.mjs";

const WORKER = fileURLToPath(new URL("./helpers/pool-worker.mjs", import.meta.url));
const JOURNAL = [".aidevops", "oauth-pool-refreshes.json"];

let mock;
before(async () => {
  mock = await startMockAnthropic();
});
after(async () => {
  await mock?.close();
});

/** A person's machine: its own HOME (and journal), the mock's endpoints. */
function machine() {
  const home = tempDir("oauth-pool-two-places-");
  const env = { ...process.env, HOME: home, USERPROFILE: home, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  delete env.OAUTH_POOL_PATH;
  delete env.OAUTH_POOL_STORE;
  delete env.OAUTH_POOL_STORE_KEY;
  return { home, env };
}

/** A login registered at the mock, its access token expired (the next request refreshes it). */
function login(email) {
  const t = mock.addAccount(email);
  return {
    email,
    refresh: t.refresh,
    access: t.access,
    expires: Date.now() - 1000,
    added: new Date().toISOString(),
    lastUsed: null,
    status: "idle",
    rateLimitUntil: null,
  };
}

function writePool(path, anthropic) {
  mkdirSync(join(path, ".."), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
}

function newPath(name = "oauth-pool.json") {
  return join(tempDir("oauth-pool-place-"), "pool", name);
}

/** A pool of `entries` at a new path and a byte-for-byte copy of it at another: `[a, b]`. */
function poolAndCopy(entries) {
  const [a, b] = [newPath(), newPath()];
  writePool(a, entries);
  mkdirSync(join(b, ".."), { recursive: true });
  copyFileSync(a, b);
  return [a, b];
}

const entry = (path, email) => JSON.parse(readFileSync(path, "utf8")).anthropic.find((a) => a.email === email);

/** Makes the stored access tokens of `path` expired, as hours passing would. */
function expire(path) {
  const pool = JSON.parse(readFileSync(path, "utf8"));
  for (const a of pool.anthropic) a.expires = Date.now() - 1000;
  writeFileSync(path, JSON.stringify(pool));
}

/** One request through the pool at `store` in a process of its own: its result. */
async function request(m, store) {
  const r = await runNode([WORKER, store, mock.url, "1"], m.env);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").at(-1))[0];
}

const family = (email) => mock.stats().perFamily[email];

/** The login is alive at the token endpoint: no spent token came back, nothing revoked. */
function assertLoginAlive(email) {
  const f = family(email);
  assert.equal(f.reuse, 0, `${email}: a spent refresh token was presented again`);
  assert.equal(f.revoked, false, `${email}: the token endpoint revoked the login`);
}

test("a pool file copied to a second path: the copy does not spend the login the first refreshed, and says where it lives", async () => {
  const m = machine();
  const [a, b] = poolAndCopy([login("copied@two.test")]);

  assert.equal((await request(m, a)).status, 200, "the first pool refreshes and serves");
  const second = await request(m, b);
  assert.equal(second.error, "POOL_NO_ACCOUNT");
  const there = entry(b, "copied@two.test");
  assert.equal(there.status, "auth-error");
  assert.match(there.lastError, /refreshed through the pool at .*oauth-pool\.json on \d{4}-/);
  assert.ok(there.lastError.includes(a), `names the pool that holds the login: ${there.lastError}`);
  assert.match(there.lastError, /use that pool, or log in again here/);
  // What the request's caller reads (OpenCode prints it as the run's error) says where the login
  // lives, not "need a new login"; so does the next request, from the account's lastError.
  for (const said of [second.message, (await request(m, b)).message]) {
    assert.ok(said.includes(`copied@two.test (auth-error: not refreshed: this login was refreshed through the pool at ${a}`), said);
    assert.doesNotMatch(said, /need a new login/);
  }
  assert.equal(family("copied@two.test").perGeneration["0"], 1, "the first refresh token was presented once");
  assertLoginAlive("copied@two.test");

  // The pool that holds the login keeps it: served again, and refreshed again when due.
  assert.equal((await request(m, a)).status, 200);
  expire(a);
  assert.equal((await request(m, a)).status, 200);
  assert.equal(entry(a, "copied@two.test").status, "active");
  assertLoginAlive("copied@two.test");

  // The journal holds no token, only tags, and is private.
  const journal = readFileSync(join(m.home, ...JOURNAL), "utf8");
  assert.ok(!journal.includes("sk-ant"), "no token in the journal");
  for (const p of [a, b]) {
    const { refresh, access } = entry(p, "copied@two.test");
    assert.ok(!journal.includes(refresh) && !journal.includes(access));
  }
});

test("a copy's refusal does not read as a passing server failure to OpenCode: `opencode run` says where the login is at once, not after a silent minute", async () => {
  const m = machine();
  const [a, b] = poolAndCopy([login("figures@two.test")]);
  assert.equal((await request(m, a)).status, 200);
  // The refresh recorded at .503 of its second: the time was given to the millisecond, and 6
  // times in 1000 those three digits were a status code OpenCode retries on.
  const file = join(m.home, ...JOURNAL);
  const journal = JSON.parse(readFileSync(file, "utf8"));
  for (const r of journal.refreshes) r.at = Math.floor(r.at / 1000) * 1000 + 503;
  writeFileSync(file, JSON.stringify(journal), { mode: 0o600 });

  const second = await request(m, b);
  assert.equal(second.error, "POOL_NO_ACCOUNT");
  assert.ok(second.message.includes(`refreshed through the pool at ${a} on `), second.message);
  // The paths and the email are the person's own; the pool's words around them must not say
  // "try again soon" to OpenCode.
  const own = second.message.split(a).join("<pool>").split(b).join("<copy>").split("figures@two.test").join("<email>");
  assert.equal(openCodeRetries(own), null, own);
});

test("a pool put back to an earlier state (a snapshot restored): its spent token is not presented, and the account says what happened", async () => {
  const m = machine();
  const a = newPath();
  writePool(a, [login("restored@two.test")]);
  const snapshot = `${a}.snapshot`;
  copyFileSync(a, snapshot);
  assert.equal((await request(m, a)).status, 200);
  const live = mock.tokens("restored@two.test").refresh;
  assert.equal(JSON.parse(readFileSync(`${a}.bak`, "utf8")).anthropic[0].refresh, live, "the .bak holds the live login");
  copyFileSync(snapshot, a);

  const r = await runNode([CLI, "--json", "refresh", "restored@two.test", "--path", a], m.env);
  const out = JSON.parse(r.stdout.trim().split("\n").at(-1));
  assert.equal(out.error?.code, "OAUTH_INVALID_GRANT");
  assert.match(
    out.error.message,
    /was put back to an earlier state .* already spent here on \d{4}-.*put back the newer pool if you have it \(the copy it replaced is kept as .*\), else log in again/,
  );
  assert.equal(entry(a, "restored@two.test").status, "auth-error");
  assertLoginAlive("restored@two.test");
  // Found by a review: the write of that refusal replaced the .bak, the only copy of the live
  // login left; it is kept aside, where the message says.
  const dir = join(a, "..");
  const kept = readdirSync(dir).filter((n) => n.startsWith("oauth-pool.json.bak-"));
  assert.ok(
    kept.some((n) => JSON.parse(readFileSync(join(dir, n), "utf8")).anthropic[0].refresh === live),
    `kept aside: ${kept.join(", ")}`,
  );
  assert.match(out.error.message, /is kept as .*\.bak-<time> when it was the newer/);

  // A new login clears it, as any auth-error: nothing of the journal sticks to the account.
  const fresh = mock.addAccount("restored@two.test");
  const pool = JSON.parse(readFileSync(a, "utf8"));
  Object.assign(pool.anthropic[0], { refresh: fresh.refresh, access: fresh.access, expires: Date.now() - 1000 });
  writeFileSync(a, JSON.stringify(pool));
  assert.equal((await request(m, a)).status, 200);
});

test("a pool put back to an earlier state while a refresh's token call is out (a sync tool, a snapshot restored): the new tokens are written over the older entry, not dropped with the login", async () => {
  const m = machine();
  const email = "restored-midway@two.test";
  const a = newPath();
  writePool(a, [login(email)]);
  const snapshot = `${a}.snapshot`;
  copyFileSync(a, snapshot);
  assert.equal((await request(m, a)).status, 200);
  expire(a);
  let release;
  mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (release = r)) });
  try {
    const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
    const running = runNode([WORKER, a, mock.url, "1"], m.env);
    await arrived;
    // The older copy goes back whole, as a sync tool or a restore puts a file: renamed over it.
    copyFileSync(snapshot, `${a}.incoming`);
    renameSync(`${a}.incoming`, a);
    release();
    const r = await running;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout.trim().split("\n").at(-1))[0].status, 200);
  } finally {
    mock.setTokenMode(null);
    release?.();
  }
  assert.equal(entry(a, email).refresh, mock.tokens(email).refresh, "the new tokens are in the pool file");
  expire(a);
  assert.equal((await request(m, a)).status, 200, "the login lives on");
  assertLoginAlive(email);
});

test("the refresh lock file removed while a refresh's token call is out (a clean-up of lock files): another process does not present the same token, and the login lives on", async () => {
  const m = machine();
  const email = "unlocked@two.test";
  const a = newPath();
  writePool(a, [login(email)]);
  let release;
  mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (release = r)) });
  let second;
  try {
    const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
    const running = runNode([WORKER, a, mock.url, "1"], m.env);
    await arrived;
    const dir = join(a, "..");
    const locks = readdirSync(dir).filter((n) => n.endsWith(".refresh.lock"));
    assert.equal(locks.length, 1, `one refresh lock file: ${readdirSync(dir)}`);
    for (const n of locks) rmSync(join(dir, n));
    // The token's own lock (held beside the account's) stands: the second process waits for
    // that refresh instead of presenting the token, and takes its tokens once they are written.
    const waiting = spawn(process.execPath, [WORKER, a, mock.url, "1"], { env: { ...m.env, OAUTH_POOL_LOG: "info" }, stdio: ["ignore", "pipe", "pipe"] });
    let said = "";
    let out = "";
    waiting.stderr.on("data", (d) => (said += d));
    waiting.stdout.on("data", (d) => (out += d));
    const ended = new Promise((r) => waiting.on("close", (code) => r(code)));
    const deadline = Date.now() + 20_000;
    while (!/has this refresh token out; waiting/.test(said) && family(email).refreshCalls === 1 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(family(email).refreshCalls, 1, `the second process presented the token that is out: ${said}`);
    assert.match(said, /has this refresh token out; waiting/);
    release();
    second = { code: await ended, stdout: out, stderr: said };
    assert.equal(JSON.parse(out.trim().split("\n").at(-1))[0].status, 200, "served with the tokens the first got");
    assert.equal(family(email).refreshCalls, 1, "one presentation in all");
    const r = await running;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout.trim().split("\n").at(-1))[0].status, 200);
  } finally {
    mock.setTokenMode(null);
    release?.();
  }
  assert.equal(second.code, 0, second.stderr);
  assert.equal(entry(a, email).refresh, mock.tokens(email).refresh, "the new tokens are in the pool file");
  assert.equal((await request(m, a)).status, 200);
  assertLoginAlive(email);
});

test("the same login twice in one pool: the second entry does not spend what the first refreshed, and says to remove it", async () => {
  const m = machine();
  const a = newPath();
  const first = login("twin@two.test");
  writePool(a, [first, { ...first, email: "twin-copy@two.test" }]);

  const one = await runNode([CLI, "refresh", "twin@two.test", "--path", a], m.env);
  assert.equal(one.code, 0, one.stderr);
  const two = await runNode([CLI, "refresh", "twin-copy@two.test", "--path", a], m.env);
  assert.notEqual(two.code, 0);
  assert.match(two.stderr + two.stdout, /OAUTH_INVALID_GRANT/);
  assert.match(two.stderr + two.stdout, /holds the same login under twin@two\.test too.*remove twin-copy@two\.test/);
  assert.equal(entry(a, "twin-copy@two.test").status, "auth-error");
  assertLoginAlive("twin@two.test");
  assert.equal((await request(m, a)).account, "twin@two.test");
});

test("a token endpoint that hands the same refresh token back: refreshing again is no reuse, and another pool may use it", async () => {
  const m = machine();
  const l = login("static@two.test");
  const [a, b] = poolAndCopy([l]);
  // A server that does not rotate: the same refresh token comes back (as an endpoint that sends
  // none, which keeps it, would), so presenting it again is no reuse.
  const unrotated = { status: 200, body: { access_token: l.access, refresh_token: l.refresh, expires_in: 3600 }, grant: "refresh_token" };
  mock.setTokenMode({ ...unrotated, times: 3 });
  try {
    assert.equal((await request(m, a)).status, 200, "refreshed and served");
    expire(a);
    assert.equal((await request(m, a)).status, 200, "refreshed again with the same token: not taken for a pool put back");
    assert.equal(entry(a, "static@two.test").status, "active");
    assert.equal((await request(m, b)).status, 200, "a copy of the pool refreshes it too: nothing was spent");
    assert.equal(entry(b, "static@two.test").status, "active");
  } finally {
    mock.setTokenMode(null);
  }
});

test("a login the token endpoint refused in one pool: a copy of it is told so at once, not that its token is still being refreshed", async () => {
  // The refused refresh stayed in the journal as presented and never saved: for two minutes a
  // copy of the pool (another path, a test's fixture) was answered "its token is still being
  // refreshed (waited 75 s)", though nothing was under way and nothing had waited.
  const m = machine();
  const dead = { ...login("refused@two.test"), refresh: "refused-refresh-token-two-places", access: "refused-access" };
  const [a, b] = poolAndCopy([dead]);
  for (const place of [a, b]) {
    const r = await request(m, place);
    assert.equal(r.error, "POOL_NO_ACCOUNT", JSON.stringify(r));
    assert.match(r.message, /refused@two\.test \(auth-error\)\. Logins in auth-error need a new login/, `${place === a ? "first" : "copy"}: ${r.message}`);
    assert.equal(entry(place, "refused@two.test").status, "auth-error");
  }
});

test("a copy of the pool asked while the first refreshes the same login: told another pool is refreshing it right now, not that it waited", async () => {
  // Answered "its token is still being refreshed (waited 75 s)": nothing had waited.
  const m = machine();
  const [a, b] = poolAndCopy([login("inflight@two.test")]);
  let answer;
  mock.setTokenMode({ grant: "refresh_token", times: 1, until: new Promise((resolve) => (answer = resolve)) });
  const presented = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const first = request(m, a);
  try {
    await presented;
    const second = await request(m, b);
    assert.equal(second.error, "POOL_BUSY", JSON.stringify(second));
    assert.ok(second.message.includes(`inflight@two.test: another pool on this machine (${a}) is refreshing this login right now`), second.message);
    assert.doesNotMatch(second.message, /waited/);
  } finally {
    answer();
  }
  assert.equal((await first).status, 200);
  // Its refresh done, the copy is told where the login lives, and presents nothing.
  assert.match((await request(m, b)).message, /refreshed through the pool at/);
  assertLoginAlive("inflight@two.test");
});

const FLOCK = ["/usr/bin/flock", "/bin/flock"].find((p) => existsSync(p));

test("tokens saved late (the pool was locked by a stopped writer): the journal learns the token they replaced is spent, and a copy of the pool does not present it", {
  skip: !FLOCK && "util-linux's flock is not installed",
}, async () => {
  // A refresh whose write waits past 10 s keeps its tokens in memory and writes them once the
  // store lets it. The journal was told only when a refresh's own write landed: this token
  // stayed "presented, never saved", which blocks no other pool once 2 minutes have passed.
  const m = machine();
  const email = "late@two.test";
  const [a, b] = poolAndCopy([login(email)]);
  const saved = Object.fromEntries(["HOME", "USERPROFILE", "OAUTH_POOL_TOKEN_URL", "OAUTH_POOL_API_URL"].map((k) => [k, process.env[k]]));
  Object.assign(process.env, { HOME: m.home, USERPROFILE: m.home, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url });
  const holder = spawn(FLOCK, ["--no-fork", "-x", `${a}.lock`, "sh", "-c", "echo held; exec sleep 14"], { stdio: ["ignore", "pipe", "inherit"] });
  const gone = new Promise((resolve) => holder.once("exit", resolve));
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.once("data", resolve);
      holder.once("error", reject);
    });
    const { createPoolFetch, flushPool } = await import("../index.mjs");
    const events = [];
    const f = createPoolFetch({ path: a, onEvent: (e) => events.push(e) });
    const r = await f(`${mock.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    await r.text();
    assert.equal(r.status, 200);
    assert.ok(
      events.some((e) => e.kind === "tokens-unsaved"),
      JSON.stringify(events),
    );
    await gone;
    await flushPool(a);
    assert.equal(entry(a, email).refresh, mock.tokens(email).refresh, "the tokens landed once the lock was free");
    const journal = join(m.home, ...JOURNAL);
    let mine;
    for (let i = 0; i < 50 && !mine?.saved; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      mine = existsSync(journal) ? JSON.parse(readFileSync(journal, "utf8")).refreshes.find((e) => e.email === email) : undefined;
    }
    assert.equal(mine?.saved, true, `the journal knows the token spent: ${JSON.stringify(mine)}`);
  } finally {
    holder.kill("SIGKILL");
    await gone;
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
  // The copy still holds the spent token: it does not present it, and says where the login is.
  const second = await request(m, b);
  assert.equal(second.error, "POOL_NO_ACCOUNT");
  assert.match(entry(b, email).lastError ?? "", /refreshed through the pool at /);
  assertLoginAlive(email);
});

// Found by a review (2026-12-07, fourth): entries went for their age by the clock of the process
// writing, and one refresh by a process whose clock was 40 days fast (or slow: a bad hardware
// clock before NTP, a VM) dropped every record of a spent token; the copy of a login then
// presented one, and the token endpoint revoked the login in both pools.
for (const shift of ["+40d", "-40d"]) {
  test(`a refresh by a process whose clock is ${shift.slice(1, 3)} days ${shift[0] === "+" ? "fast" : "slow"} keeps the journal's records: a copy of a login still does not present its spent token`, {
    skip: !FAKETIME_LIB && "libfaketime is not installed (.ci/run installs it)",
  }, async () => {
    const m = machine();
    const email = `clock${shift[0] === "+" ? "fast" : "slow"}@two.test`;
    const [a, b] = poolAndCopy([login(email)]);
    assert.equal((await request(m, a)).status, 200);
    const other = newPath();
    writePool(other, [login(`other-${email}`)]);
    const env = { ...m.env, LD_PRELOAD: FAKETIME_LIB, FAKETIME: shift, FAKETIME_NO_CACHE: "1", FAKETIME_DONT_FAKE_MONOTONIC: "1" };
    const r = await runNode([WORKER, other, mock.url, "1"], env);
    assert.equal(r.code, 0, r.stderr);
    const journal = JSON.parse(readFileSync(join(m.home, ...JOURNAL), "utf8"));
    assert.ok(
      journal.refreshes.some((e) => e.email === email && e.saved),
      JSON.stringify(journal.refreshes.map((e) => [e.email, new Date(e.at).toISOString()])),
    );
    const copy = await request(m, b);
    assert.notEqual(copy.status, 200, "the copy's spent token is not presented");
    assert.equal((await request(m, a)).status, 200, "the pool that refreshed it serves on");
    assertLoginAlive(email);
  });
}

test("a broken journal never stops a refresh: it is moved aside and a new one started", async () => {
  const m = machine();
  const a = newPath();
  writePool(a, [login("journal@two.test")]);
  const journal = join(m.home, ...JOURNAL);
  mkdirSync(join(journal, ".."), { recursive: true, mode: 0o700 });
  writeFileSync(journal, "{ half a journal", { mode: 0o600 });
  assert.equal((await request(m, a)).status, 200);
  assert.equal(readFileSync(`${journal}.corrupt`, "utf8"), "{ half a journal");
  assert.equal(JSON.parse(readFileSync(journal, "utf8")).refreshes.length, 1);
});

test("temp files of journal writes a crash interrupted (a year of reboots and killed processes) are removed by the next refresh", async () => {
  const m = machine();
  const a = newPath();
  writePool(a, [login("crashed@two.test")]);
  const dir = join(m.home, ".aidevops");
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // What a writer killed between its temp file and the rename leaves: the temp, cut short. One
  // a week for a year; the journal is rewritten whole on each refresh, so each is its size.
  const cut = `{"version":1,"refreshes":[${'{"token":"0123456789abcdef0123456789abcdef","store":"/home/u/.aidevops/oauth-pool.json","email":"a@b.c","at":1,"saved":true},'.repeat(900)}`;
  const orphans = Array.from({ length: 52 }, (_, i) => `.oauth-pool-refreshes.json.${i.toString(36).padStart(6, "q")}.tmp`);
  for (const name of orphans) writeFileSync(join(dir, name), cut, { mode: 0o600 });
  // Not the journal's: left as they are.
  writeFileSync(join(dir, "notes.tmp"), "mine");

  assert.equal((await request(m, a)).status, 200);
  const left = readdirSync(dir).filter((f) => f.startsWith(".oauth-pool-refreshes.json.") && f.endsWith(".tmp"));
  assert.deepEqual(left, [], "the journal's orphaned temp files are swept");
  assert.equal(readFileSync(join(dir, "notes.tmp"), "utf8"), "mine");
  assert.equal(JSON.parse(readFileSync(join(dir, "oauth-pool-refreshes.json"), "utf8")).refreshes.length, 1);
});

test("store copy to PostgreSQL: it says the logins are in both, and the database's processes do not spend what the file's refreshed", async (t) => {
  let pg;
  try {
    pg = await startPostgres();
  } catch (e) {
    if (process.env.CI) throw e;
    t.skip(`no PostgreSQL here: ${e.message}`);
    return;
  }
  try {
    const m = machine();
    const file = newPath();
    writePool(file, [login("fleet@two.test")]);
    assert.equal((await cliJson(m, "store", "init", pg.url)).code, 0);
    const copy = await runNode([CLI, "store", "copy", "--from", file, "--to", pg.url], m.env);
    assert.equal(copy.code, 0, copy.stderr);
    assert.match(copy.stdout, /its login is now in both: a refresh token works once, so use only postgres:\/\/.* from now on/);
    assert.ok(copy.stdout.includes(`then move ${file} away`), copy.stdout);
    assert.equal((await cliJson(m, "store", "copy", "--from", file, "--to", pg.url)).json.logins, 1);
    // A second host's file copied over the store, as the README brings the first one in, drops
    // the first host's login: named, not silently.
    const second = newPath();
    writePool(second, [login("second-host@two.test")]);
    const over = await runNode([CLI, "store", "copy", "--from", second, "--to", pg.url], m.env);
    assert.match(over.stdout, /held a login or key that .* does not, now gone from it \(kept in .*\): fleet@two\.test\. Log it in again/);
    assert.deepEqual((await cliJson(m, "store", "copy", "--from", file, "--to", pg.url)).json.replaced, ["second-host@two.test"]);

    // An OpenCode started before OAUTH_POOL_STORE was set refreshes through the file.
    assert.equal((await request(m, file)).status, 200);
    const onDb = await request(m, pg.url);
    assert.equal(onDb.error, "POOL_NO_ACCOUNT");
    const status = await cliJson(m, "list", "--path", pg.url);
    const account = status.json.accounts?.find((x) => x.email === "fleet@two.test") ?? status.json.find?.((x) => x.email === "fleet@two.test");
    assert.equal(account.status, "auth-error");
    assert.ok(JSON.stringify(account).includes(file), `names the file that holds the login: ${JSON.stringify(account)}`);
    assertLoginAlive("fleet@two.test");
    expire(file);
    assert.equal((await request(m, file)).status, 200, "the file keeps the login");
    assertLoginAlive("fleet@two.test");
    assert.ok(existsSync(join(m.home, ...JOURNAL)));
  } finally {
    await pg.close();
  }
});
