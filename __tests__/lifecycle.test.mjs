// Account changes made while other processes are using the account: a re-login, a removal, a
// disable or a priority change from the CLI (another process) while this process has a request
// in flight on the account, a refresh of its token held open at the token endpoint, or
// bookkeeping not yet written. Each interleaving is made deterministic: the mock holds the
// answer (or the token endpoint's) until the change has landed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createPoolFetch, flushPool, refreshAccount, savePool } from "../index.mjs";
import { useMock, seedPool, readPool, account, messagesUrl, body, jsonHeaders } from "./helpers/pool-env.mjs";
import { flockAvailable, holdLock } from "./helpers/flock.mjs";
import { tempDir } from "./helpers/temp.mjs";

const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const EXIT_WORKER = fileURLToPath(new URL("./helpers/exit-worker.mjs", import.meta.url));
const MANY_WORKER = fileURLToPath(new URL("./helpers/many-worker.mjs", import.meta.url));
const HOME = tempDir("oauth-pool-lifecycle-home-");
const mock = useMock();

const ask = (f, extra) => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(extra) });

/** A promise and the function that resolves it: holds a mock answer until the test says. */
function gate() {
  let open;
  const held = new Promise((r) => (open = r));
  return { held, open };
}

/**
 * Runs the CLI in its own process against `path`. `login` (an email) answers `add`'s prompt:
 * the URL it prints is approved at the mock as that email and the code pasted back.
 */
function cli(path, args, { login } = {}) {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, HOME, USERPROFILE: HOME, OAUTH_POOL_PATH: path };
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let pasted = false;
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      stdout += d;
      if (!login || pasted) return;
      const line = stdout.split("\n").find((l) => l.includes("oauth/authorize"));
      if (!line || !stdout.includes("\n")) return;
      pasted = true;
      child.stdin.end(`${mock.approve(line.trim(), login)}\n`);
    });
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code !== 0) reject(new Error(`oauth-pool ${args.join(" ")} exited ${code}: ${stdout}${stderr}`));
      else resolve(stdout);
    });
    if (!login) child.stdin.end();
  });
}

/** A pool of `emails`, the first preferred (priority 5); `expired` as seedPool takes it. */
async function poolOf(emails, { expired = [] } = {}) {
  const path = await seedPool(mock, emails, { expired });
  const pool = readPool(path);
  pool.anthropic[0].priority = 5;
  await savePool(pool, path);
  return path;
}

const bearer = (record) => record.headers.authorization?.replace(/^Bearer /, "");

/**
 * A request on `path` whose account's refresh is held open at the token endpoint (`mode`: more
 * of the token endpoint's answer): resolves once the refresh is there, with the pool fetch, the
 * request's answer to come, and `release` to let the token endpoint answer.
 */
async function heldRefresh(path, mode = {}) {
  const g = gate();
  mock.setTokenMode({ grant: "refresh_token", until: g.held, ...mode });
  const f = createPoolFetch({ path });
  const answer = ask(f);
  await mock.waitFor("token", (r) => r.grant === "refresh_token");
  return { f, answer, release: g.open };
}

test("a re-login while this process refreshes the old token: the new login stays in the file, and is what the next request uses", async () => {
  const email = "relogin-refresh@x.test";
  const path = await poolOf([email], { expired: [email] });
  try {
    const { f, answer, release } = await heldRefresh(path);
    // The owner logs in again from a shell while the old token's refresh is at the endpoint.
    await cli(path, ["add"], { login: email });
    const login = mock.tokens(email);
    assert.equal(account(path, email).refresh, login.refresh, "the login is in the file");
    release();
    const r = await answer;
    assert.equal(r.status, 200, "the request is served (the old family's new token is valid too)");
    await r.text();
    await flushPool(path);
    const a = account(path, email);
    // The refresher wrote its tokens over the login: the newest login was thrown away.
    assert.equal(a.refresh, login.refresh, "the new login's refresh token is kept");
    assert.equal(a.access, login.access, "and its access token");
    assert.equal(a.status === "auth-error", false);
    const next = await ask(f);
    assert.equal(next.status, 200);
    await next.text();
    assert.equal(bearer(mock.requests.at(-1)), login.access, "the next request carries the new login");
  } finally {
    mock.setTokenMode(null);
  }
});

test("a re-login while the old token's refresh is refused: the request is served with the new login, which is not marked auth-error", async () => {
  const [email, other] = ["relogin-refused@x.test", "relogin-refused-b@x.test"];
  const path = await poolOf([email, other], { expired: [email] });
  try {
    const { answer, release } = await heldRefresh(path, {
      status: 400,
      body: { error: "invalid_grant", error_description: "Refresh token not found or invalid" },
    });
    await cli(path, ["add"], { login: email });
    const login = mock.tokens(email);
    release();
    const r = await answer;
    assert.equal(r.status, 200);
    assert.equal(r.poolAccount, email, "the new login serves instead of moving on");
    await r.text();
    await flushPool(path);
    const a = account(path, email);
    assert.equal(a.status === "auth-error", false, "the refusal was the old family's");
    assert.equal(a.refresh, login.refresh);
    assert.equal(bearer(mock.requests.at(-1)), login.access);
  } finally {
    mock.setTokenMode(null);
  }
});

test("an account removed while this process refreshes its token stays removed, the refreshed tokens with it", async () => {
  const [gone, stay] = ["removed-refresh@x.test", "removed-refresh-b@x.test"];
  const path = await poolOf([gone, stay], { expired: [gone] });
  try {
    const { f, answer, release } = await heldRefresh(path);
    await cli(path, ["remove", gone]);
    release();
    const r = await answer;
    assert.equal(r.status, 200);
    await r.text();
    await flushPool(path);
    const pool = readPool(path);
    assert.deepEqual(
      pool.anthropic.map((a) => a.email),
      [stay],
      "not written back",
    );
    const next = await ask(f);
    assert.equal(next.poolAccount, stay);
    await next.text();
  } finally {
    mock.setTokenMode(null);
  }
});

// A rename is no removal: the entry that still holds the spent token is this login under its new
// name, and dropping the refreshed tokens (as for a removed account) lost it.
test("an account renamed while this process refreshes its token gets the refreshed tokens under its new name", async () => {
  const [before, after, other] = ["renamed-refresh@x.test", "renamed-now@x.test", "renamed-refresh-b@x.test"];
  const path = await poolOf([before, other], { expired: [before] });
  try {
    const spent = account(path, before).refresh;
    const { answer, release } = await heldRefresh(path);
    const renamed = readPool(path);
    renamed.anthropic.find((a) => a.email === before).email = after;
    await savePool(renamed, path);
    release();
    const r = await answer;
    assert.equal(r.status, 200);
    await r.text();
    await flushPool(path);
    const pool = readPool(path);
    assert.deepEqual(pool.anthropic.map((a) => a.email).sort(), [other, after].sort());
    const live = account(path, after);
    assert.notEqual(live.refresh, spent, "the spent token is left in the file");
    assert.ok(live.expires > Date.now(), "the refreshed tokens are written");
    // They are the live generation: the next refresh of it is no reuse.
    const again = await refreshAccount(after, path);
    assert.equal(again.outcome, "refreshed");
    assert.equal(mock.stats().perFamily[before].reuse, 0);
    assert.equal(mock.stats().perFamily[before].revoked, false);
  } finally {
    mock.setTokenMode(null);
  }
});

test("an account removed while requests on it are in flight: their last use, usage, windows and a 429's cooldown do not bring it back", async () => {
  const [gone, stay] = ["removed-inflight@x.test", "removed-inflight-b@x.test"];
  const path = await poolOf([gone, stay]);
  const g = gate();
  mock.setUtilization(gone, { fiveHour: 0.5 });
  mock.script(gone, [{ until: g.held }, { status: 429, headers: { "retry-after": "3600" }, until: g.held }]);
  const f = createPoolFetch({ path });
  const answers = [ask(f), ask(f)];
  let arrived = 0;
  await mock.waitFor("api", (r) => r.email === gone && ++arrived === 2);
  await cli(path, ["remove", gone]);
  g.open();
  // Either request may have drawn either answer: one is served by the removed account, the
  // other's 429 moves it to the account left.
  const done = await Promise.all(answers);
  for (const r of done) {
    assert.equal(r.status, 200);
    await r.text();
  }
  assert.deepEqual(done.map((r) => r.poolAccount).sort(), [gone, stay].sort());
  await flushPool(path);
  const pool = readPool(path);
  assert.deepEqual(
    pool.anthropic.map((a) => a.email),
    [stay],
  );
  assert.equal(JSON.stringify(pool.anthropic).includes(gone), false, "nothing of it is written into an account");
});

test("an account disabled while a request on it is in flight: the answer is delivered, the account stays disabled, and this process stops choosing it", async () => {
  const [off, other] = ["disabled-inflight@x.test", "disabled-inflight-b@x.test"];
  const path = await poolOf([off, other]);
  const g = gate();
  mock.script(off, [{ until: g.held }]);
  const f = createPoolFetch({ path });
  const answer = ask(f);
  await mock.waitFor("api", (r) => r.email === off);
  await cli(path, ["disable", off]);
  g.open();
  const r = await answer;
  assert.equal(r.status, 200);
  assert.equal(r.poolAccount, off);
  await r.text();
  await flushPool(path);
  const a = account(path, off);
  assert.equal(a.enabled, false);
  assert.equal(a.status, "disabled", "its last use does not make it active");
  // Sticky on the disabled account until now: the next request goes elsewhere.
  const next = await ask(f);
  assert.equal(next.poolAccount, other);
  await next.text();
});

test("a login refused while its account was being disabled: enabled again, it is still auth-error (its refused token is not presented again)", async () => {
  const [off, other] = ["disabled-refused@x.test", "disabled-refused-b@x.test"];
  const path = await poolOf([off, other]);
  const g = gate();
  // 401, a refresh, 401 again with the new token: the login is refused. The second 401 is held
  // back while the account is disabled from a shell.
  mock.script(off, [{ status: 401 }, { status: 401, until: g.held }]);
  const f = createPoolFetch({ path });
  const answer = ask(f);
  await mock.waitFor("api", (r) => r.email === off && mock.stats().perFamily[off]?.refreshCalls === 1);
  await cli(path, ["disable", off]);
  g.open();
  const r = await answer;
  assert.equal(r.poolAccount, other);
  await r.text();
  await flushPool(path);
  assert.equal(account(path, off).enabled, false, "still disabled");
  await cli(path, ["enable", off]);
  const a = account(path, off);
  assert.equal(a.status, "auth-error", "enable does not clear a refusal of the credential it still holds");
  const listed = JSON.parse(await cli(path, ["list", "--json"])).accounts.find((x) => x.email === off);
  assert.equal(listed.status, "auth-error");
  const calls = mock.stats().perFamily[off].refreshCalls;
  const next = await ask(createPoolFetch({ path }));
  assert.equal(next.poolAccount, other);
  await next.text();
  assert.equal(mock.stats().perFamily[off].refreshCalls, calls, "the refused login is left alone");
});

test("a priority changed from a shell is honoured by a running process at its next choice", async () => {
  const [first, second, third] = ["prio-a@x.test", "prio-b@x.test", "prio-c@x.test"];
  const path = await poolOf([first, second, third]);
  const pool = readPool(path);
  // Least recently used would pick the third.
  pool.anthropic[1].lastUsed = new Date(Date.now() - 60_000).toISOString();
  pool.anthropic[2].lastUsed = new Date(Date.now() - 3_600_000).toISOString();
  await savePool(pool, path);
  const f = createPoolFetch({ path });
  const r = await ask(f);
  assert.equal(r.poolAccount, first);
  await r.text();
  await cli(path, ["priority", second, "3"]);
  mock.script(first, [{ status: 429, headers: { "retry-after": "3600" } }]);
  const moved = await ask(f);
  assert.equal(moved.poolAccount, second, "the new priority, read from the file, decides");
  await moved.text();
});

test("an account removed and logged in again while a request of the old login is in flight: the old process's bookkeeping lands on the new entry (one email, one Anthropic account) and leaves its login alone", async () => {
  const [email, other] = ["readded@x.test", "readded-b@x.test"];
  const path = await poolOf([email, other]);
  const g = gate();
  mock.script(email, [{ until: g.held }]);
  const f = createPoolFetch({ path });
  const answer = ask(f);
  await mock.waitFor("api", (r) => r.email === email);
  await cli(path, ["remove", email]);
  await cli(path, ["add"], { login: email });
  const login = mock.tokens(email);
  const added = account(path, email).added;
  g.open();
  const r = await answer;
  assert.equal(r.status, 200);
  assert.equal(r.poolAccount, email);
  await r.text();
  await flushPool(path);
  const a = account(path, email);
  assert.equal(a.refresh, login.refresh, "the new login is kept");
  assert.equal(a.access, login.access);
  assert.equal(a.added, added, "the new entry stays the new entry");
  assert.ok(a.lastUsed, "the answer's last use is recorded");
  assert.equal(a.priority, undefined, "the removed entry's settings do not come back");
  const next = await ask(f);
  assert.equal(next.poolAccount, email);
  await next.text();
  assert.equal(bearer(mock.requests.at(-1)), login.access);
});

/**
 * Brings `email` on `f` to rest after a 401 that no new token answers (the token endpoint
 * answers 503 with a ten-minute retry-after): the first request is not served, the second is
 * the pool's own 429. Returns that 429, read.
 */
async function restAfter401(f, email, { scripted = true } = {}) {
  if (scripted) mock.script(email, [{ status: 401 }]);
  mock.setTokenMode({ grant: "refresh_token", status: 503, retryAfter: 600 });
  const first = await ask(f);
  assert.notEqual(first.status, 200, "nothing could serve it");
  await first.text();
  const resting = await ask(f);
  assert.equal(resting.status, 429, "it rests: the pool's own 429");
  await resting.text();
  return resting;
}

test("an account resting after a 401 its refresh could not answer: a re-login from a shell brings it back at once in the running process", async () => {
  const email = "rest-relogin@x.test";
  const path = await poolOf([email]);
  try {
    const f = createPoolFetch({ path });
    await restAfter401(f, email);
    await flushPool(path);
    assert.ok(account(path, email).refreshBackoffUntil > Date.now(), "the endpoint's wait is shared");
    await cli(path, ["add"], { login: email });
    const login = mock.tokens(email);
    assert.equal(account(path, email).refreshBackoffUntil, undefined, "the wait was the old refresh token's");
    const next = await ask(f);
    assert.equal(next.status, 200, "the new login serves (it rested ten minutes before)");
    assert.equal(next.poolAccount, email);
    await next.text();
    assert.equal(bearer(mock.requests.at(-1)), login.access);
  } finally {
    mock.setTokenMode(null);
  }
});

test("an account resting after a 401 its refresh could not answer: `reset-cooldowns` from a shell brings it back in the running process, and a rest after it holds", async () => {
  const email = "rest-reset@x.test";
  const path = await poolOf([email]);
  // Two 401s: the second after the reset, which the now healthy token endpoint answers.
  mock.script(email, [{ status: 401 }, { status: 401 }]);
  try {
    const f = createPoolFetch({ path });
    const resting = await restAfter401(f, email, { scripted: false });
    assert.ok(Number(resting.headers.get("retry-after")) > 500, resting.headers.get("retry-after"));
    await flushPool(path);
    // The person runs what the docs say, in a terminal, while this process (OpenCode) runs.
    await cli(path, ["reset-cooldowns"]);
    assert.equal(account(path, email).refreshBackoffUntil, undefined, "the shared wait is gone");
    const next = await ask(f);
    assert.equal(next.status, 200, "the running process left the account alone for ten minutes after the reset");
    assert.equal(next.poolAccount, email);
    await next.text();
    assert.equal(bearer(mock.requests.at(-1)), mock.tokens(email).access, "refreshed after the second 401");

    // A rest decided after the reset is not lifted by it: the reset is older news.
    const old = mock.tokens(email).access;
    await restAfter401(f, email);
    assert.equal(mock.tokens(email).access, old, "no new token was issued meanwhile");
  } finally {
    mock.setTokenMode(null);
  }
});

test("`oauth-pool refresh` while this process's refresh of the account is held open: it waits for the lock and adopts the new token, never presenting the spent one", async () => {
  const email = "cli-refresh@x.test";
  const path = await poolOf([email], { expired: [email] });
  try {
    const { answer, release } = await heldRefresh(path);
    const shell = cli(path, ["refresh", email, "--json"]);
    // Time for the CLI to start and reach the account's refresh lock before the refresh
    // answers (on a slow machine it may read the file only after: then it finds nothing to do).
    await new Promise((r) => setTimeout(r, 1500));
    release();
    const r = await answer;
    assert.equal(r.status, 200);
    await r.text();
    const report = JSON.parse((await shell).trim().split("\n").at(-1));
    assert.ok(["adopted", "kept"].includes(report.outcome), report.outcome);
    const stats = mock.stats().perFamily[email];
    assert.equal(stats.refreshCalls, 1, "one presentation");
    assert.equal(stats.reuse, 0);
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
  } finally {
    mock.setTokenMode(null);
  }
});

const QUITS = { exit: "process.exit", end: "its event loop done", throwing: "process.exit, and an exit listener of its own throws" };
for (const how of ["exit", "end", "throwing"]) {
  test(`a host that quits (${QUITS[how]}) while its refresh is at the token endpoint keeps the login: the exit waits for the new tokens' write`, async () => {
    const email = `quit-${how}@x.test`;
    const path = await poolOf([email], { expired: [email] });
    const g = gate();
    mock.setTokenMode({ grant: "refresh_token", until: g.held });
    try {
      const child = spawn(process.execPath, [EXIT_WORKER, path, mock.url, how], { stdio: ["pipe", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.setEncoding("utf8").on("data", (d) => (out += d));
      child.stderr.setEncoding("utf8").on("data", (d) => (err += d));
      const closed = new Promise((resolve) => child.on("close", (code) => resolve(code)));
      await mock.waitFor("token", (r) => r.grant === "refresh_token");
      // The host gives up on the request and quits; only then may the token endpoint answer.
      child.stdin.write("quit\n");
      while (!out.includes("exiting") && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 200));
      g.open();
      const code = await closed;
      // The host's throw ends the process as the runtime ends it without the pool (Node keeps
      // process.exit's 0, Bun says 1); before, it did so before the pool's listener, added later
      // (at the first call), ran.
      if (how === "throwing") assert.match(err, /the host's clean-up failed/);
      else assert.equal(code, 0, `${out}${err}`);
      assert.match(out, /aborted/);
      const issued = mock.tokens(email);
      const a = account(path, email);
      // Before: the process was gone when the answer came; the file kept the spent token, and the
      // next start presented it and marked the account auth-error.
      assert.equal(a.refresh, issued.refresh, "the rotated refresh token is in the file");
      assert.equal(a.access, issued.access);
      mock.clearRequests();
      const next = await ask(createPoolFetch({ path }));
      assert.equal(next.status, 200);
      await next.text();
      assert.equal(bearer(mock.requests.at(-1)), issued.access, "the next process serves with it, no refresh");
      assert.notEqual(account(path, email).status, "auth-error");
    } finally {
      mock.setTokenMode(null);
    }
  });
}

// The pool's write lock held by another process (`flock(1)`, as below) keeps the refreshed
// tokens from being written at once: the window a signal must not cut.
const flockHere = flockAvailable;
// Every signal the pool listens for, with no listener of the host's (`kill`, Ctrl-C, a closed
// terminal); a host listener that quits; and one that went on at a first SIGTERM, after which
// the pool listens again for the next.
const SIGNALLED = [
  ["signal", "SIGTERM", "with no listener of its own killed by SIGTERM"],
  ["signal", "SIGINT", "with no listener of its own killed by SIGINT (Ctrl-C)"],
  ["signal", "SIGHUP", "with no listener of its own killed by SIGHUP (its terminal closed)"],
  ["handled", "SIGTERM", "whose own SIGTERM listener quits"],
  ["again", "SIGTERM", "whose own listener went on at a first SIGTERM, killed by a second one"],
];
for (const [how, signal, host] of SIGNALLED) {
  test(`a host ${host} between its refresh's answer and the new tokens' write keeps the login`, {
    skip: !flockHere && "needs flock(1) on Linux",
  }, async () => {
    const email = `term-${how}-${signal.toLowerCase()}@x.test`;
    const path = await poolOf([email], { expired: [email] });
    const before = account(path, email).refresh;
    const g = gate();
    mock.setTokenMode({ grant: "refresh_token", until: g.held });
    let holder;
    try {
      const child = spawn(process.execPath, [EXIT_WORKER, path, mock.url, how], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.setEncoding("utf8").on("data", (d) => (out += d));
      child.stderr.setEncoding("utf8").on("data", (d) => (err += d));
      const closed = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal })));
      await mock.waitFor("token", (r) => r.grant === "refresh_token");
      holder = await holdLock(`${path}.lock`);
      // The token endpoint answers (the presented token is spent now); the write waits for the lock.
      g.open();
      while (mock.tokens(email).refresh === before) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 200));
      child.kill(signal);
      await new Promise((r) => setTimeout(r, 300));
      await holder.release();
      const ended = await closed;
      if (how !== "handled") assert.deepEqual(ended, { code: null, signal }, `ends by the signal, as it would have: ${out}${err}`);
      if (how === "again") assert.match(out, /host goes on/);
      else if (how === "handled") {
        assert.equal(ended.code, 7, `the host's own listener decides: ${out}${err}`);
        assert.match(out, /host quits/);
      }
      const issued = mock.tokens(email);
      const a = account(path, email);
      // Before (no listener of the pool's): the process died with the tokens unwritten; the file
      // kept the spent token, and the next start presented it and marked the account auth-error.
      assert.equal(a.refresh, issued.refresh, "the rotated refresh token is in the file");
      assert.equal(a.access, issued.access);
    } finally {
      await holder?.release();
      mock.setTokenMode(null);
    }
  });
}

test("the signal listener changes nothing else: an idle host ends by SIGTERM, SIGINT and SIGHUP at once, so does one whose listener ends it only as the last one (signal-exit), and one that ignores SIGINT (a background job) behaves as without the pool", async () => {
  const path = await poolOf(["idle-signal@x.test"]);
  // `lastOut`: the host has a listener that ends the process only when it is the last one for
  // the signal, as signal-exit's does (execa, ink, write-file-atomic...), added before the pool
  // loads or after.
  const lastOut = `const lastOut = () => { const l = () => { if (process.listeners("SIGTERM").length === 1) {
         process.removeListener("SIGTERM", l); console.log("host cleaned up"); process.kill(process.pid, "SIGTERM"); } };
         process.on("SIGTERM", l); };`;
  const script = (withPool, host) =>
    withPool
      ? `import { createPoolFetch } from ${JSON.stringify(new URL("../index.mjs", import.meta.url).href)};
         ${lastOut} ${host === "before" ? "lastOut();" : ""}
         const r = await createPoolFetch({ path: ${JSON.stringify(path)} })(${JSON.stringify(messagesUrl(mock))}, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
         await r.text(); ${host === "after" ? "lastOut();" : ""} setInterval(() => {}, 60000); console.log("ready");`
      : `setInterval(() => {}, 60000); console.log("ready");`;
  const run = async (withPool, signal, ignoreInt, host) => {
    const dir = tempDir("oauth-pool-signal-");
    const file = join(dir, "host.mjs");
    writeFileSync(file, script(withPool, host));
    const command = `${ignoreInt ? "trap '' INT; " : ""}exec "$0" "$1"`;
    const child = spawn("/bin/sh", ["-c", command, process.execPath, file], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d) => (out += d));
    const closed = new Promise((resolve) => child.on("close", (code, sig) => resolve({ code, signal: sig })));
    while (!out.includes("ready") && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
    const sent = Date.now();
    child.kill(signal);
    const ended = await Promise.race([closed, new Promise((r) => setTimeout(() => r("alive"), 1500))]);
    const took = Date.now() - sent;
    if (ended === "alive") {
      child.kill("SIGKILL");
      await closed;
    }
    return { ended, took, out };
  };
  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"]) {
    const { ended, took } = await run(true, signal, false);
    assert.deepEqual(ended, { code: null, signal }, signal);
    assert.ok(took < 1500, `${signal}: ${took} ms`);
  }
  // Before, each listener waited for the other to end the process, and it outlived the signal.
  for (const host of ["before", "after"]) {
    const { ended, out } = await run(true, "SIGTERM", false, host);
    assert.deepEqual(ended, { code: null, signal: "SIGTERM" }, `a last-out host listener added ${host} the pool loads`);
    assert.match(out, /host cleaned up/);
  }
  // Node ends by an ignored SIGINT anyway (it resets every signal at start); Bun keeps it
  // ignored: the pool follows whichever the runtime does.
  const without = await run(false, "SIGINT", true);
  const withPool = await run(true, "SIGINT", true);
  assert.deepEqual(withPool.ended, without.ended);
});

// The pool's write lock held by a process that is stopped (or stuck) for longer than a host
// waits to end: `flock(1)` (util-linux) holds it, as in cli.test.mjs.
const flock = flockAvailable;
for (const ending of ["drain", "exit"]) {
  test(`a host that ends (${ending === "exit" ? "process.exit" : "its event loop done"}) with bookkeeping unwritten while another process holds the pool's lock is not kept alive by the lock`, {
    skip: !flock && "needs flock(1) on Linux",
  }, async () => {
    const path = await poolOf(["held-lock@x.test"]);
    const child = spawn(process.execPath, [MANY_WORKER, path, mock.url, "1", ending], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (d) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (err += d));
    const closed = new Promise((resolve) => child.on("close", (code) => resolve(code)));
    while (!out.includes("ready") && child.exitCode === null) await new Promise((r) => setTimeout(r, 20));
    const holder = await holdLock(`${path}.lock`);
    try {
      const started = Date.now();
      child.stdin.end("go\n");
      assert.equal(await closed, 0, `${out}${err}`);
      const took = Date.now() - started;
      assert.match(out, /"statuses":\{"200":1\}/, out);
      // The exit waits for the lock a bounded while (2 s in the addon); before, a host whose
      // event loop ran dry stayed alive until the lock's own 60 s timeout.
      assert.ok(took < 30_000, `the host took ${took} ms to end`);
    } finally {
      await holder.release();
    }
  });
}
