// Refreshes under contention: many requests (and processes) waiting on one account's refresh
// while its token endpoint fails, hangs, or another process holds the account's refresh lock;
// and a copy of the pool read before a refresh saved back after it. In each, a refresh token
// presented twice or written back after being spent gets the account's token family revoked.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { addAccount, authorize, createPoolFetch, flushPool, loadPool, savePool } from "../index.mjs";
import { useMock, seedPool, readPool, account, messagesUrl, body, jsonHeaders, withEnv, runWorkersTogether } from "./helpers/pool-env.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { stopProcess } from "./helpers/stop.mjs";

const POLLER = fileURLToPath(new URL("./helpers/pool-poller.mjs", import.meta.url));
const WORKER = fileURLToPath(new URL("./helpers/pool-worker.mjs", import.meta.url));
const CLOCK_WORKER = fileURLToPath(new URL("./helpers/clock-worker.mjs", import.meta.url));
const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const mock = useMock();

const ask = (f) => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
const refreshCalls = (email) => mock.stats().perFamily[email]?.refreshCalls ?? 0;

/** Two accounts; the first, preferred, has an expired token (unless `expired` is false). */
async function expiredFirst(tag, { expired = true } = {}) {
  const [first, second] = [`${tag}-a@x.test`, `${tag}-b@x.test`];
  const path = await seedPool(mock, [first, second], { expired: expired ? [first] : [] });
  const pool = readPool(path);
  pool.anthropic.find((a) => a.email === first).priority = 5;
  await savePool(pool, path);
  return { path, first, second };
}

test("requests waiting on one refresh while the token endpoint answers 503: the token is presented once, all move on", async () => {
  const { path, first, second } = await expiredFirst("busy503");
  mock.setTokenMode({ status: 503, retryAfter: 60, grant: "refresh_token", times: Infinity, delayMs: 200 });
  try {
    const f = createPoolFetch({ path });
    const answers = await Promise.all(Array.from({ length: 4 }, () => ask(f)));
    for (const r of answers) {
      assert.equal(r.status, 200);
      assert.equal(r.poolAccount, second);
      await r.text();
    }
    // Each waiter used to re-read the file before the first one's backoff reached it.
    assert.equal(refreshCalls(first), 1, "one presentation for four waiting requests");
    await flushPool(path);
    assert.ok(account(path, first).refreshBackoffUntil > Date.now(), "the backoff is in the file for other processes");
  } finally {
    mock.setTokenMode(null);
  }
});

test("a token endpoint gone silent: the refresh token is presented at most twice (the one retry of a lost answer), however many wait", async () => {
  await withEnv({ OAUTH_POOL_TIMEOUT_MS: "1000" }, async () => {
    const { path, first, second } = await expiredFirst("silent");
    mock.setTokenMode({ hang: true, grant: "refresh_token", times: Infinity });
    try {
      const f = createPoolFetch({ path });
      const answers = await Promise.all(Array.from({ length: 3 }, () => ask(f)));
      for (const r of answers) {
        assert.equal(r.poolAccount, second);
        await r.text();
      }
      assert.ok(refreshCalls(first) <= 2, `presented ${refreshCalls(first)} times (4 before)`);
    } finally {
      mock.setTokenMode(null);
    }
  });
});

test("another process stuck refreshing an account: a request moves to another account instead of waiting out the lock; alone, it waits", async () => {
  const { path, first, second } = await expiredFirst("held");
  mock.setTokenMode({ hang: true, grant: "refresh_token", times: Infinity });
  // The other process: its refresh of `first` hangs on the token endpoint, holding the
  // account's refresh lock for up to 2 x 20 s.
  const env = { ...process.env, OAUTH_POOL_PATH: path, OAUTH_POOL_TIMEOUT_MS: "20000" };
  const holder = spawn(process.execPath, [POLLER, mock.url, "claude-sonnet-4-5", "once", "60000"], { env, stdio: "ignore" });
  try {
    const deadline = Date.now() + 20_000;
    while (refreshCalls(first) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(refreshCalls(first), 1, "the other process is refreshing");
    const started = Date.now();
    const r = await ask(createPoolFetch({ path }));
    assert.equal(r.status, 200);
    assert.equal(r.poolAccount, second, "served by the account that needs no refresh");
    await r.text();
    // It waited 75 s (the whole lock timeout) before; a few seconds now.
    assert.ok(Date.now() - started < 30_000, `served after ${Date.now() - started} ms`);
    assert.equal(refreshCalls(first), 1, "this process did not present the token the other one holds");
  } finally {
    holder.kill("SIGKILL");
    mock.setTokenMode(null);
  }

  // With no other account to serve, a request waits for the refresh under way and adopts it.
  const alone = await seedPool(mock, ["alone@x.test"], { expired: ["alone@x.test"] });
  mock.setTokenMode({ grant: "refresh_token", delayMs: 7_000, times: 1 });
  try {
    const other = spawn(process.execPath, [POLLER, mock.url, "claude-sonnet-4-5", "once", "60000"], {
      env: { ...process.env, OAUTH_POOL_PATH: alone },
      stdio: "ignore",
    });
    const exited = new Promise((r) => other.on("close", r));
    const deadline = Date.now() + 20_000;
    while (refreshCalls("alone@x.test") === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const r = await ask(createPoolFetch({ path: alone }));
    assert.equal(r.status, 200, "waited past the brief patience for the only account");
    assert.equal(r.poolAccount, "alone@x.test");
    await r.text();
    await exited;
    assert.equal(refreshCalls("alone@x.test"), 1, "the other process's new token was adopted");
  } finally {
    mock.setTokenMode(null);
  }
});

// Found by a review (2026-12-07): a holder stopped mid-refresh (Ctrl-Z, SIGSTOP) kept each
// request of every other process waiting 75 s for POOL_BUSY, the token good for minutes yet.
test("another process stopped in its refresh of a token that still works for minutes: requests here are served with that token at once", async () => {
  const email = "margin@x.test";
  const path = await seedPool(mock, [email]);
  const pool = readPool(path);
  // Inside the 5-minute refresh margin, 4 minutes from its end.
  pool.anthropic[0].expires = Date.now() + 240_000;
  await savePool(pool, path);
  const old = pool.anthropic[0].access;
  mock.setTokenMode({ hang: true, grant: "refresh_token", times: Infinity });
  const holder = spawn(process.execPath, [POLLER, mock.url, "claude-sonnet-4-5", "once", "60000"], {
    env: { ...process.env, OAUTH_POOL_PATH: path },
    stdio: "ignore",
  });
  try {
    const deadline = Date.now() + 20_000;
    while (refreshCalls(email) === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(refreshCalls(email), 1, "the other process is refreshing");
    await stopProcess(holder.pid);
    const f = createPoolFetch({ path });
    for (let i = 0; i < 2; i++) {
      const started = Date.now();
      const sent = mock.waitFor("api", (r) => r.email === email);
      const r = await ask(f);
      assert.equal(r.status, 200);
      await r.text();
      assert.ok(Date.now() - started < 3_000, `served after ${Date.now() - started} ms`);
      assert.equal((await sent).headers.authorization, `Bearer ${old}`, "with the token that still works");
    }
    assert.equal(refreshCalls(email), 1, "the token the stopped process holds out is not presented again");
  } finally {
    holder.kill("SIGKILL");
    mock.setTokenMode(null);
  }
});

// Found by a review (2026-12-07): a refresh answered 200 with a captive portal's page (or whose
// answer was lost) may have spent the token, and the machine's refresh journal kept it as the
// presenting process's: while that process lived, idle (an OpenCode left open, up to a day),
// every other process of the pool met POOL_BUSY ("another process … is refreshing this login
// right now") for the login, though the refresh had ended and its 30 s rest was over. The
// rest's end is `reset-cooldowns` here (it lifts the rest in the file and leaves the journal
// alone), so the test does not wait 30 s.
const perhapsSpent = [
  {
    kind: "answered 200 with a captive portal's page",
    mode: { status: 200, body: "<html><body>Hotel Wi-Fi login</body></html>", headers: { "content-type": "text/html" }, times: 1 },
    said: /not JSON \(text\/html\)/,
    presented: 1,
  },
  // A lost answer is asked once more (the endpoint may not have had it): two presentations.
  { kind: "whose answer was lost", mode: { hang: true, times: Infinity }, env: { OAUTH_POOL_TIMEOUT_MS: "1000" }, said: /timed out/, presented: 2 },
];
for (const { kind, mode, env = {}, said: failure, presented } of perhapsSpent) {
  test(`a refresh ${kind}, its process alive and idle: once the rest is over, another process of the pool refreshes the login and is served, presenting the token once`, async () => {
    const email = `spent-${presented}@x.test`;
    const path = await seedPool(mock, [email], { expired: [email] });
    mock.setTokenMode({ ...mode, grant: "refresh_token" });
    // The process that meets it: it answers one command per line and stays alive between them.
    const first = spawn(process.execPath, [CLOCK_WORKER, path, mock.url], { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "inherit"] });
    let out = "";
    first.stdout.on("data", (d) => (out += d));
    const said = async (n) => {
      for (const deadline = Date.now() + 30_000; out.split("\n").length <= n; ) {
        if (Date.now() > deadline) throw new Error(`the first process said only ${out}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      return JSON.parse(out.split("\n")[n - 1]);
    };
    let told = 1;
    const tell = (cmd) => {
      first.stdin.write(`${JSON.stringify(cmd)}\n`);
      return said(++told);
    };
    try {
      assert.deepEqual(await said(1), { ready: true });
      const failed = await tell({ op: "fetch" });
      assert.equal(failed.error, "POOL_NO_ACCOUNT", JSON.stringify(failed));
      assert.match(failed.message, failure);
      assert.equal(refreshCalls(email), presented);
      mock.setTokenMode(null);
      assert.ok(account(path, email).refreshBackoffUntil > Date.now(), "the rest is in the file");
      const reset = await new Promise((resolve) => {
        const cli = spawn(process.execPath, [CLI, "reset-cooldowns", "--path", path], { env: process.env, stdio: ["ignore", "ignore", "inherit"] });
        cli.on("close", resolve);
      });
      assert.equal(reset, 0);
      assert.equal(account(path, email).refreshBackoffUntil, undefined, "the rest is over");
      // Another process of the pool: it was refused until the first one ended.
      const [other] = await runWorkersTogether(WORKER, 1, [path, mock.url, "1"]);
      assert.equal(other.code, 0);
      const [served] = JSON.parse(other.out);
      assert.equal(served.status, 200, JSON.stringify(served));
      assert.equal(served.account, email);
      assert.equal(refreshCalls(email), presented + 1, "presented once by the other process");
      // The first process takes the other's new tokens from the file; it presents nothing more.
      const later = await tell({ op: "fetch" });
      assert.equal(later.status, 200, JSON.stringify(later));
      assert.equal(refreshCalls(email), presented + 1);
      const family = mock.stats().perFamily[email];
      assert.equal(family.reuse, 0, "no spent token presented");
      assert.equal(family.revoked, false);
    } finally {
      first.kill("SIGKILL");
      mock.setTokenMode(null);
    }
  });
}

// A script that reads the pool, edits it and saves it back while OpenCode (another process)
// adds a login in between: the save replaced the pool with a copy that never held the new
// login, and it was gone. Accounts the copy held and removed stay removed.
test("savePool of a copy read before another process added a login keeps that login; what the copy removed stays removed", async () => {
  const path = await seedPool(mock, ["kept@x.test", "dropped@x.test"]);
  const copy = await loadPool(path);
  const added = await cliOn(path, ["add-key", "--email", "meanwhile@x.test", "--json"], "fake-console-key-meanwhile-for-tests-only\n");
  assert.match(added, /meanwhile@x\.test/);
  copy.anthropic = copy.anthropic.filter((a) => a.email !== "dropped@x.test");
  copy.anthropic[0].priority = 4;
  await savePool(copy, path);
  const emails = readPool(path).anthropic.map((a) => a.email);
  assert.deepEqual(emails.sort(), ["kept@x.test", "meanwhile@x.test"], "the login added meanwhile is kept, the one removed is gone");
  assert.equal(account(path, "kept@x.test").priority, 4, "the copy's change is written");
  assert.equal(account(path, "meanwhile@x.test").type, "api");
  // A pool built by hand (no read behind it) replaces what is there, as before.
  await savePool({ anthropic: copy.anthropic.filter((a) => a.email === "kept@x.test") }, path);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["kept@x.test"],
  );
});

// A login stamps `added` before it waits for the pool's lock: one whose write landed after a
// script's loadPool said it was added before the read, and the save dropped it (its one-time
// code already spent). Another writer's stamp may be anything (its clock, a hand edit): what the
// copy read tells, not the time.
test("savePool keeps a login written after the copy was read whose `added` says earlier, or nothing", async () => {
  const path = await seedPool(mock, ["kept@x.test"]);
  const copy = await loadPool(path);
  const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
  const [stamped, undated] = (await seedPool(mock, ["stamped@x.test", "undated@x.test"]).then(readPool)).anthropic;
  stamped.added = hourAgo;
  delete undated.added;
  // Another writer (a pool built by hand replaces what is there).
  await savePool({ anthropic: [...readPool(path).anthropic, stamped, undated] }, path);
  copy.anthropic[0].priority = 2;
  await savePool(copy, path);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["kept@x.test", "stamped@x.test", "undated@x.test"],
  );
  assert.equal(account(path, "kept@x.test").priority, 2);
  assert.equal(account(path, "stamped@x.test").refresh, stamped.refresh);
});

// Whether a copy goes back to the pool it was read from was told by how the path was spelt: read
// through OAUTH_POOL_PATH and saved to that path by name (or read through a link, or a relative
// path), the copy replaced the pool, and a `remove` and a `disable` made meanwhile were undone.
test("savePool of a copy back to the pool it was read from, its path spelt another way, keeps what was done meanwhile", async () => {
  const { symlinkSync } = await import("node:fs");
  const { dirname, basename, relative, join } = await import("node:path");
  for (const spelling of ["the variable, then the path", "the path, then the variable", "a linked directory", "a relative path"]) {
    const path = await seedPool(mock, ["a@x.test", "b@x.test", "c@x.test"]);
    let [readWith, saveWith] = [path, path];
    if (spelling === "the variable, then the path") readWith = undefined;
    if (spelling === "the path, then the variable") saveWith = undefined;
    if (spelling === "a linked directory") {
      // A pool file that is a link is refused; a directory reached through one is not.
      const linked = `${dirname(path)}-link`;
      symlinkSync(dirname(path), linked);
      readWith = join(linked, basename(path));
    }
    if (spelling === "a relative path") saveWith = relative(process.cwd(), path);
    await withEnv({ OAUTH_POOL_PATH: path }, async () => {
      const copy = await loadPool(readWith);
      await cliOn(path, ["disable", "b@x.test", "--json"]);
      await cliOn(path, ["remove", "c@x.test", "--json"]);
      copy.anthropic[0].priority = 2;
      await savePool(copy, saveWith);
    });
    assert.deepEqual(
      readPool(path).anthropic.map((a) => a.email),
      ["a@x.test", "b@x.test"],
      `${spelling}: the removed account came back`,
    );
    assert.equal(account(path, "b@x.test").enabled, false, `${spelling}: the disable was undone`);
    assert.equal(account(path, "a@x.test").priority, 2, spelling);
  }
});

/** Runs the CLI on `path` to its end; resolves its output, rejects on a non-zero exit. */
function cliOn(path, args, input = "") {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, OAUTH_POOL_PATH: path }, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      out += d;
    });
    child.on("error", reject);
    child.on("exit", (code) => (code === 0 ? resolve(out) : reject(new Error(`${args[0]} exit ${code}: ${out}`))));
    child.stdin.end(input);
  });
}

// The mirror of the above: `oauth-pool remove` (or OpenCode's remove) takes an account out
// between a script's loadPool and its savePool; the save wrote the removed account back, with
// its tokens. What the copy holds as it was read stays removed; an account whose credentials the
// copy changed (a token the file never had: the script refreshed it) is kept, never lost.
test("savePool of a copy read before another process removed an account keeps it removed, unless the copy holds new credentials for it", async () => {
  const path = await seedPool(mock, ["stays@x.test", "gone@x.test", "edited@x.test", "renewed@x.test"]);
  const copy = await loadPool(path);
  for (const email of ["gone@x.test", "edited@x.test", "renewed@x.test"]) await cliOn(path, ["remove", email, "--json"]);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["stays@x.test"],
  );
  const find = (email) => copy.anthropic.find((a) => a.email === email);
  find("stays@x.test").priority = 3;
  find("edited@x.test").priority = 7; // a setting changed, its credentials as read
  Object.assign(find("renewed@x.test"), { refresh: "renewed-by-the-script", access: "renewed-access", expires: Date.now() + 3_600_000 });
  await savePool(copy, path);
  assert.deepEqual(
    readPool(path)
      .anthropic.map((a) => a.email)
      .sort(),
    ["renewed@x.test", "stays@x.test"],
    "the accounts removed meanwhile stay removed; the one holding a token the file never had is kept",
  );
  assert.equal(account(path, "stays@x.test").priority, 3);
  assert.equal(account(path, "renewed@x.test").refresh, "renewed-by-the-script");
  // A pool built by hand replaces what is there, removed accounts in it written back as before.
  await savePool({ anthropic: [...copy.anthropic] }, path);
  assert.equal(readPool(path).anthropic.length, 4);
});

// A script's loadPool, one edit, savePool, while other processes go on writing: a 429 recorded a
// cooldown, a request its last use, `oauth-pool disable` took an account out of use. The copy
// held every other field as it read them and the save wrote them all back: the cooled account
// went straight back into its limit, the disabled one back into use. What the copy holds as read
// now takes what was written since; what the copy changed is written.
test("savePool of a copy read before other processes wrote a cooldown, a last use and a disable keeps them, and writes the copy's own change", async () => {
  const [limited, served, disabled] = ["limited@x.test", "served@x.test", "disabled@x.test"];
  const path = await seedPool(mock, [limited, served, disabled]);
  const seeded = readPool(path);
  seeded.anthropic.find((a) => a.email === limited).priority = 5;
  seeded.anthropic.find((a) => a.email === served).priority = 4;
  await savePool(seeded, path);
  const copy = await loadPool(path);
  mock.script(limited, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const answer = await ask(createPoolFetch({ path }));
  assert.equal(answer.status, 200);
  assert.equal(answer.poolAccount, served);
  await answer.text();
  await flushPool(path);
  await cliOn(path, ["disable", disabled, "--json"]);
  const before = readPool(path);
  const cooled = before.anthropic.find((a) => a.email === limited);
  assert.ok(cooled.rateLimitUntil > Date.now(), "the 429's cooldown is in the file");
  const used = before.anthropic.find((a) => a.email === served).lastUsed;
  assert.ok(used, "the request's last use is in the file");
  copy.anthropic.find((a) => a.email === served).priority = 7;
  await savePool(copy, path);
  assert.equal(account(path, served).priority, 7, "the copy's change is written");
  assert.equal(account(path, served).lastUsed, used, "the last use written meanwhile stays");
  assert.equal(account(path, limited).rateLimitUntil, cooled.rateLimitUntil, "the cooldown written meanwhile stays");
  assert.equal(account(path, limited).status, cooled.status);
  assert.equal(account(path, disabled).enabled, false, "the disable made meanwhile stays");
  // The next request honours both: the cooled and the disabled account are passed over.
  const next = await ask(createPoolFetch({ path }));
  assert.equal(next.poolAccount, served);
  await next.text();
});

// What a copy held as read speaks of the pool it was read from. Saved to another (a script
// moving a pool to a new place, over one there), every account of the copy was "removed since"
// from that one and left out: the save wrote an empty pool.
test("savePool of a copy loadPool read from one pool, saved to another, writes its accounts there", async () => {
  const from = await seedPool(mock, ["moved-1@x.test", "moved-2@x.test"]);
  const to = await seedPool(mock, ["there@x.test"]);
  const copy = await loadPool(from);
  await savePool(copy, to);
  assert.deepEqual(
    readPool(to).anthropic.map((a) => a.email),
    ["moved-1@x.test", "moved-2@x.test"],
  );
  assert.equal(account(to, "moved-2@x.test").refresh, account(from, "moved-2@x.test").refresh);
});

// A script's loadPool, edit, savePool while another process changed an account's credentials:
// `oauth-pool refresh` of a login whose entry says no expiry (an older writer's, or one written
// by hand), or `oauth-pool add-key` giving an API-key account its new key. The copy holds that
// account's credentials as it read them, so what is stored now is newer: the save wrote the spent
// refresh token back (the next refresh got the login revoked) and the replaced key.
test("savePool of a copy read before another process refreshed an account or replaced its key keeps what that process wrote", async () => {
  const path = await seedPool(mock, ["unstated@x.test"]);
  const seeded = readPool(path);
  delete seeded.anthropic[0].expires;
  await savePool(seeded, path);
  const [oldKey, newKey] = ["old", "new"].map((k) => `fake-console-key-${k}-for-tests-only`);
  await cliOn(path, ["add-key", "--email", "keyed@x.test", "--json"], `${oldKey}\n`);
  const copy = await loadPool(path);
  assert.equal(copy.anthropic[0].expires ?? null, null, "the entry says no expiry");
  const refreshed = JSON.parse((await cliOn(path, ["refresh", "unstated@x.test", "--json"])).trim().split("\n").at(-1));
  assert.equal(refreshed.outcome, "refreshed");
  const live = account(path, "unstated@x.test").refresh;
  await cliOn(path, ["add-key", "--email", "keyed@x.test", "--json"], `${newKey}\n`);
  assert.equal(account(path, "keyed@x.test").key, newKey);
  for (const a of copy.anthropic) a.priority = 2;
  await savePool(copy, path);
  const saved = account(path, "unstated@x.test");
  assert.equal(saved.priority, 2, "the copy's change is written");
  assert.equal(saved.refresh, live, "the refresh token another process got stays, not the spent one");
  assert.equal(account(path, "keyed@x.test").key, newKey, "the key given meanwhile stays");
  assert.equal(account(path, "keyed@x.test").priority, 2);
});

// The tokens a refresh gets may expire sooner than the ones it spent: an earlier refresh ran with
// the clock fast (NTP corrected it since), or the server gave a shorter lifetime. Told by the
// expiries alone, the stale copy's spent token looked the newer, and the save wrote it back: the
// next refresh found the pool "put back to an earlier state" and the login was lost. The refresh
// journal knows the copy's token spent.
test("savePool of a copy read before a refresh whose new tokens expire sooner keeps the live tokens", async () => {
  const path = await seedPool(mock, ["sooner@x.test"]);
  const seeded = readPool(path);
  seeded.anthropic[0].expires = Date.now() + 11 * 3_600_000;
  await savePool(seeded, path);
  const copy = await loadPool(path);
  const refreshed = JSON.parse((await cliOn(path, ["refresh", "sooner@x.test", "--json"])).trim().split("\n").at(-1));
  assert.equal(refreshed.outcome, "refreshed");
  const live = account(path, "sooner@x.test");
  assert.ok(live.expires < seeded.anthropic[0].expires, "the live tokens expire sooner");
  copy.anthropic[0].priority = 2;
  await savePool(copy, path);
  const saved = account(path, "sooner@x.test");
  assert.equal(saved.refresh, live.refresh, "the spent refresh token was written back");
  assert.equal(saved.expires, live.expires);
  assert.equal(saved.priority, 2, "the copy's change is written");
  const again = JSON.parse((await cliOn(path, ["refresh", "sooner@x.test", "--json"])).trim().split("\n").at(-1));
  assert.equal(again.outcome, "refreshed");
});

test("savePool of a copy read before a refresh keeps the newer tokens instead of writing back the spent one", async () => {
  const path = await seedPool(mock, ["stale@x.test"], { expired: ["stale@x.test"] });
  const copy = await loadPool(path); // e.g. a script that changes a priority
  const f = createPoolFetch({ path });
  const first = await ask(f);
  assert.equal(first.status, 200);
  await first.text();
  await flushPool(path);
  const refreshed = account(path, "stale@x.test").refresh;
  copy.anthropic[0].priority = 3;
  await savePool(copy, path);
  const saved = account(path, "stale@x.test");
  assert.equal(saved.priority, 3, "the caller's change is written");
  assert.equal(saved.refresh, refreshed, "the stored, newer refresh token stays");
  // The next refresh presents the live token: no reuse, no revoked family.
  await savePool({ ...readPool(path), anthropic: [{ ...saved, expires: Date.now() - 1000 }] }, path);
  const second = await ask(f);
  assert.equal(second.status, 200);
  await second.text();
  const stats = mock.stats().perFamily["stale@x.test"];
  assert.equal(stats.reuse, 0, JSON.stringify(stats));
  assert.equal(stats.revoked, false);
});

test("a token inside its refresh margin while the token endpoint fails: the still-valid token serves, and the endpoint is left alone until its backoff ends", async () => {
  const email = "margin@x.test";
  const path = await seedPool(mock, [email]);
  const pool = readPool(path);
  pool.anthropic[0].expires = Date.now() + 120_000; // valid two more minutes: refreshed 5 min ahead
  await savePool(pool, path);
  mock.setTokenMode({ status: 503, retryAfter: 60, grant: "refresh_token", times: Infinity });
  try {
    const f = createPoolFetch({ path });
    for (let i = 0; i < 3; i++) {
      const r = await ask(f);
      assert.equal(r.status, 200, "served with the token it has");
      assert.equal(r.poolAccount, email);
      await r.text();
    }
    assert.equal(refreshCalls(email), 1, "one try, then the endpoint's retry-after is honoured");
    await flushPool(path);
    const a = account(path, email);
    assert.ok(a.refreshBackoffUntil > Date.now() + 50_000, "the 60 s retry-after is shared");
    assert.equal(a.status === "auth-error", false, "a failing endpoint says nothing about the login");
  } finally {
    mock.setTokenMode(null);
  }
});

// README, "How a request is served", step 2: "refreshed 5 minutes ahead of expiry" (the AWS and
// Anthropic SDKs' windows are 5 min and 2 min). The test above shows a token 2 minutes from its
// end is refreshed; nothing showed where the line is: a margin grown to hours spends refresh
// tokens on every request, one shrunk to seconds sends tokens that die in flight.
test("the refresh margin is 5 minutes: a token 6.5 minutes from its end is sent as it is, one 4.5 minutes from it is refreshed first", async () => {
  for (const [email, left, refreshed] of [
    ["margin-far@x.test", 390_000, false],
    ["margin-near@x.test", 270_000, true],
  ]) {
    const path = await seedPool(mock, [email]);
    const pool = readPool(path);
    pool.anthropic[0].expires = Date.now() + left;
    const stored = pool.anthropic[0].access;
    await savePool(pool, path);
    const r = await ask(createPoolFetch({ path }));
    assert.equal(r.status, 200);
    assert.equal(r.poolAccount, email);
    await r.text();
    assert.equal(refreshCalls(email), refreshed ? 1 : 0, `${left / 60_000} minutes left`);
    await flushPool(path);
    assert.equal(account(path, email).access !== stored, refreshed, `${left / 60_000} minutes left: the token sent`);
  }
});

// README, "How a request is served", step 2: a transient failure "sets a shared backoff
// (`refreshBackoffUntil`, from `retry-after`, else 30 s)". The test above gives a retry-after;
// each transient kind here gives none: a 5xx, a 429, a reset connection.
test("a transient refresh failure without retry-after (5xx, 429, reset) backs off 30 s, shared in the file; the still-valid token serves meanwhile", async () => {
  for (const [kind, mode] of [
    ["500", { status: 500 }],
    ["429", { status: 429 }],
    ["reset", { reset: true }],
  ]) {
    const email = `default-backoff-${kind}@x.test`;
    const path = await seedPool(mock, [email]);
    const pool = readPool(path);
    pool.anthropic[0].expires = Date.now() + 120_000; // inside the 5-minute margin, still valid
    await savePool(pool, path);
    mock.setTokenMode({ ...mode, grant: "refresh_token", times: Infinity });
    try {
      const f = createPoolFetch({ path });
      const before = Date.now();
      for (let i = 0; i < 2; i++) {
        const r = await ask(f);
        assert.equal(r.status, 200, kind);
        assert.equal(r.poolAccount, email);
        await r.text();
      }
      // A reset may have lost an answer: the contract's one immediate retry with the same token.
      assert.equal(refreshCalls(email), kind === "reset" ? 2 : 1, `${kind}: presented once (a reset: twice), then left alone`);
      await flushPool(path);
      const a = account(path, email);
      assert.ok(a.refreshBackoffUntil >= before + 30_000 && a.refreshBackoffUntil <= Date.now() + 30_000, `${kind}: ${a.refreshBackoffUntil - before} ms`);
      assert.notEqual(a.status, "auth-error", kind);
    } finally {
      mock.setTokenMode(null);
    }
  }
});

test("an account marked auth-error by a wrong token endpoint's 404 comes back with `oauth-pool refresh` once the endpoint is right", async () => {
  const email = "moved@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  // What api.anthropic.com answers for a path it does not have: the same shape as a spent token.
  mock.setTokenMode({ status: 404, grant: "refresh_token", times: 1 });
  await assert.rejects(ask(createPoolFetch({ path })), { code: "POOL_NO_ACCOUNT" });
  await flushPool(path);
  assert.equal(account(path, email).status, "auth-error");
  const cli = spawn(process.execPath, [CLI, "refresh", email, "--json"], { env: { ...process.env, OAUTH_POOL_PATH: path }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  cli.stdout.on("data", (d) => (out += d));
  const code = await new Promise((resolve) => cli.on("close", resolve));
  assert.equal(code, 0, out);
  assert.equal(JSON.parse(out.trim().split("\n").at(-1)).outcome, "refreshed");
  assert.equal(account(path, email).status, "idle", "a new token clears the mark");
  const again = await ask(createPoolFetch({ path }));
  assert.equal(again.status, 200);
  await again.text();
});

test("a second 401 that arrives after the account's owner logged in again marks nothing: the new login was never refused", async () => {
  const [email, other] = ["relogin@x.test", "relogin-b@x.test"];
  const path = await seedPool(mock, [email, other]);
  const pool = readPool(path);
  pool.anthropic.find((a) => a.email === email).priority = 5;
  await savePool(pool, path);
  let release;
  const held = new Promise((r) => (release = r));
  // The first answer refuses the token (a refresh follows); the retry's 401 is held back
  // while the owner logs in again, then comes.
  mock.script(email, [{ status: 401 }, { status: 401, until: held }]);
  const f = createPoolFetch({ path });
  const answer = ask(f);
  await mock.waitFor("api", (r) => r.email === email && mock.stats().perFamily[email]?.refreshCalls === 1);
  const pkce = await authorize();
  await addAccount(mock.approve(pkce.url, email), pkce, path);
  release();
  const r = await answer;
  assert.equal(r.poolAccount, other, "the request moved on");
  await r.text();
  await flushPool(path);
  assert.notEqual(account(path, email).status, "auth-error", "the new login is not marked");
  // Sticky on the other account now; once that one is limited, this process turns to the new
  // login (a refusal held in its memory would pass it over).
  mock.script(other, [{ status: 429, headers: { "retry-after": "3600" } }]);
  const next = await ask(f);
  assert.equal(next.status, 200);
  assert.equal(next.poolAccount, email, "and this process uses it");
  await next.text();
});

// Claude Code #54443, #24317; Teak #381: the server refuses an access token before the expiry
// the client has for it (revoked early), and every session using it meets the 401 at once.
// Each one that refreshed on its own presented the refresh token the first had just spent: the
// login was revoked and every session logged out. Here the five requests of one process and
// three processes meet it together: one refresh, each request retried once with its successor
// on the same account, the login alive and not marked.
test("an access token refused before its expiry, met at once by five requests and by three processes: one refresh each time, no reuse, all served by the account", async () => {
  const held = (email, count) => {
    let release;
    const gate = new Promise((r) => (release = r));
    mock.script(
      email,
      Array.from({ length: count }, () => ({ status: 401, until: gate })),
    );
    let seen = 0;
    const arrived = mock.waitFor("api", (r) => r.email === email && ++seen === count);
    return { arrived, release };
  };
  const check = async (path, email, answers, refreshesBefore) => {
    for (const [status, served] of answers) assert.deepEqual([status, served], [200, email]);
    await flushPool(path);
    const family = mock.stats().perFamily[email];
    assert.equal(family.refreshCalls, refreshesBefore + 1, "one refresh for all of them");
    assert.equal(family.reuse, 0);
    assert.equal(family.revoked, false, "the login is alive");
    const stored = account(path, email);
    assert.notEqual(stored.status, "auth-error");
    assert.equal(stored.refresh, mock.tokens(email).refresh, "the successor is in the file");
  };

  // One process, five requests.
  const one = await expiredFirst("early401", { expired: false });
  const f = createPoolFetch({ path: one.path });
  let gate = held(one.first, 5);
  const pending = Array.from({ length: 5 }, () => ask(f));
  await gate.arrived;
  mock.revoke(one.first);
  let before = refreshCalls(one.first);
  gate.release();
  const answers = [];
  for (const res of await Promise.all(pending)) {
    answers.push([res.status, res.poolAccount]);
    await res.text();
  }
  await check(one.path, one.first, answers, before);

  // Three processes, one request each.
  const three = await expiredFirst("early401procs", { expired: false });
  gate = held(three.first, 3);
  const running = runWorkersTogether(WORKER, 3, [three.path, mock.url, "1"]);
  await gate.arrived;
  mock.revoke(three.first);
  before = refreshCalls(three.first);
  gate.release();
  const results = await running;
  const served = results.flatMap((r) => {
    assert.equal(r.code, 0);
    return JSON.parse(r.out).map((x) => [x.status, x.account]);
  });
  assert.equal(served.length, 3);
  await check(three.path, three.first, served, before);
});
