// The pool file written by someone else, not atomically, while the pool uses it: an editor that
// saves in place (truncate, then write), `jq … > pool.json`, `cp other.json pool.json`, a sync
// tool, the file deleted and made again, or something else put at its path. A request that meets
// the file midway through such a write must not fail, no write of the pool's may lose what the
// file holds (a refresh's new tokens least of all: a refresh token works once), a completed edit
// is what the running process uses and keeps, and anything else at the path is a coded error
// that leaves nothing lost and passes once the file is back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import {
  closeSync,
  copyFileSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createPoolFetch, flushPool, poolStatus } from "../index.mjs";
import { account, body, jsonHeaders, messagesUrl, oauthEntry, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";

const REWRITER = fileURLToPath(new URL("./helpers/pool-rewriter.mjs", import.meta.url));
const mock = useMock();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One request; its status, or the error's code when it was refused. */
async function ask(f) {
  try {
    const res = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    await res.text();
    return { status: res.status, account: res.poolAccount };
  } catch (e) {
    return { status: e.code ?? String(e), message: e.message };
  }
}

/** The other program, in a process of its own; resolves when it has done all its rounds. */
function rewriter(path, rounds, pauseMs, mode) {
  const child = spawn(process.execPath, [REWRITER, path, String(rounds), String(pauseMs), mode], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (d) => (out += d));
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => (code === 0 && out.includes(`done ${rounds}`) ? resolve() : reject(new Error(`rewriter ended with ${code}: ${out}`))));
  });
}

/**
 * A request that needs a refresh, sent once the token endpoint is set to hold its answer;
 * resolves when the endpoint has taken the refresh token: `answer()` lets the answer go, and
 * `request` is the request's outcome (`ask`).
 */
async function refreshHeldAtTheEndpoint(path, transport) {
  let answer;
  mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (answer = r)) });
  const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const request = ask(createPoolFetch({ path, transport }));
  await arrived;
  return { answer, request };
}

const parses = (file) => {
  JSON.parse(readFileSync(file, "utf8"));
  return true;
};

for (const transport of ["native", "runtime"]) {
  test(`${transport}: requests while another program rewrites the pool file in place (cut at any byte, empty, in chunks) all succeed`, async () => {
    const emails = [`${transport}-edit-a@x.test`, `${transport}-edit-b@x.test`];
    const path = await seedPool(mock, emails);
    const f = createPoolFetch({ path, transport });
    const failures = [];
    let served = 0;
    for (const mode of ["cut", "empty", "chunks"]) {
      let writing = true;
      const other = rewriter(path, 60, 12, mode).finally(() => (writing = false));
      // Three requests at a time, for as long as the other program writes.
      const loops = Array.from({ length: 3 }, async () => {
        while (writing) {
          const r = await ask(f);
          if (r.status === 200) served++;
          else failures.push({ mode, ...r });
        }
      });
      await other;
      await Promise.all(loops);
    }
    assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${failures.length + served} requests failed`);
    assert.ok(served > 0);
    await flushPool(path);
    // Nothing of the file was lost, and the backup is a whole pool too.
    for (const email of emails) assert.equal(account(path, email).refresh, mock.tokens(email).refresh, email);
    assert.ok(parses(`${path}.bak`));
  });
}

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a refresh whose answer comes while the file is cut short saves its new tokens in it once the write completes`, async () => {
    const email = `${transport}-cut-refresh@x.test`;
    const path = await seedPool(mock, [email], { expired: [email] });
    const spent = account(path, email).refresh;
    const { answer, request } = await refreshHeldAtTheEndpoint(path, transport);
    // The token endpoint has taken the refresh token; before its answer, another program starts
    // writing the file in place, and finishes it a moment after the refresh wants to save.
    const content = readFileSync(path);
    const fd = openSync(path, "r+");
    ftruncateSync(fd, 0);
    writeSync(fd, content, 0, Math.floor(content.length / 2), 0);
    answer();
    // Short: the store waits up to half a second for a file that does not parse, and a busy
    // machine's timers run late.
    await sleep(60);
    writeSync(fd, content, Math.floor(content.length / 2), content.length - Math.floor(content.length / 2), Math.floor(content.length / 2));
    closeSync(fd);
    const r = await request;
    assert.equal(r.status, 200, r.message);
    // Saved when the request ended, not held in memory for a later retry (a process that ends
    // now keeps them only by its exit's flush).
    const saved = account(path, email);
    assert.notEqual(saved.refresh, spent, "the new refresh token is in the file");
    assert.equal(saved.refresh, mock.tokens(email).refresh);
    const status = await poolStatus(path);
    assert.deepEqual(status.runtime?.unsavedTokens ?? [], []);
    assert.ok(parses(`${path}.bak`));
    assert.equal(mock.stats().perFamily[email].reuse, 0);
  });
}

test("an in-place edit that completes is what the running process serves with, and its bookkeeping keeps it", async () => {
  const emails = ["kept-edit-a@x.test", "kept-edit-b@x.test"];
  const path = await seedPool(mock, emails);
  const f = createPoolFetch({ path });
  const first = (await ask(f)).account;
  const other = emails.find((e) => e !== first);
  // The person turns off the account in use, raises the other's priority and adds one above
  // both, saving in place.
  const pool = readPool(path);
  pool.anthropic.find((a) => a.email === first).enabled = false;
  pool.anthropic.find((a) => a.email === other).priority = 10;
  pool.anthropic.push(oauthEntry(mock, "kept-edit-c@x.test", { priority: 20 }));
  writeFileSync(path, JSON.stringify(pool, null, 2));
  for (let i = 0; i < 5; i++) assert.equal((await ask(f)).account, "kept-edit-c@x.test");
  await flushPool(path);
  assert.equal(account(path, first).enabled, false, "the edit was not written over");
  assert.equal(account(path, other).priority, 10);
  assert.ok(account(path, "kept-edit-c@x.test").lastUsed, "bookkeeping landed on the added account");
  // Then removes it again, in place: it is not used, nor brought back by a write.
  const without = readPool(path);
  without.anthropic = without.anthropic.filter((a) => a.email !== "kept-edit-c@x.test");
  writeFileSync(path, JSON.stringify(without, null, 2));
  for (let i = 0; i < 5; i++) assert.equal((await ask(f)).account, other);
  await flushPool(path);
  assert.equal(account(path, "kept-edit-c@x.test"), undefined);
  assert.equal(account(path, first).enabled, false);
  assert.equal(account(path, other).priority, 10);
});

test("a file left cut short is POOL_CORRUPT (after the short wait), pointing at the backup; repaired, it serves again", async () => {
  const path = await seedPool(mock, ["left-bad@x.test"]);
  const f = createPoolFetch({ path });
  assert.equal((await ask(f)).status, 200);
  await flushPool(path); // a .bak of a whole pool is beside it
  const whole = readFileSync(path);
  writeFileSync(path, whole.subarray(0, 40));
  for (let i = 0; i < 3; i++) {
    const r = await ask(f);
    assert.equal(r.status, "POOL_CORRUPT", r.message);
    assert.match(r.message, /\.bak/);
  }
  assert.deepEqual(readFileSync(path), whole.subarray(0, 40), "a file refused is never written over");
  writeFileSync(path, whole);
  assert.equal((await ask(f)).status, 200);
});

test("the pool file deleted, or replaced by a directory, a symlink or a FIFO mid-run: coded errors, nothing written over it, served again once it is back", async () => {
  const emails = ["moved-a@x.test", "moved-b@x.test"];
  const path = await seedPool(mock, emails);
  const dir = dirname(path);
  const f = createPoolFetch({ path });
  assert.equal((await ask(f)).status, 200);
  const aside = join(dir, "..", "aside.json");
  renameSync(path, aside);
  const gone = await ask(f);
  assert.equal(gone.status, "POOL_NO_ACCOUNT", gone.message);
  await flushPool(path);
  assert.ok(!existsSync(path), "no pool file made in its absence");
  const others = [
    ["a directory", () => mkdirSync(path), () => rmdirSync(path)],
    ["a symlink", () => symlinkSync(aside, path), () => unlinkSync(path)],
    ...(process.platform === "win32" ? [] : [["a FIFO", () => execFileSync("mkfifo", [path]), () => unlinkSync(path)]]),
  ];
  for (const [what, put, take] of others) {
    put();
    const r = await ask(f);
    assert.equal(r.status, "POOL_INSECURE", `${what}: ${r.message}`);
    await flushPool(path).catch(() => {});
    take();
  }
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.startsWith("oauth-pool.json.bak-")),
    [],
    "no backup moved aside: no file was made anew",
  );
  copyFileSync(aside, path);
  for (let i = 0; i < 4; i++) assert.equal((await ask(f)).status, 200);
  await flushPool(path);
  for (const email of emails) assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
});

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a refresh whose answer comes while the file is gone for a moment keeps its new tokens and saves them once it is back`, async () => {
    // A sync tool or `git checkout` replaces the file by deleting it first: the refresh's write
    // found no file, took the account as removed and dropped the new tokens, leaving the file
    // (once back) with the refresh token the endpoint had just spent.
    const email = `${transport}-gone-refresh@x.test`;
    const path = await seedPool(mock, [email], { expired: [email] });
    const spent = account(path, email).refresh;
    const { answer, request } = await refreshHeldAtTheEndpoint(path, transport);
    const aside = `${path}.away`;
    renameSync(path, aside);
    answer();
    const r = await request;
    assert.equal(r.status, 200, r.message);
    renameSync(aside, path);
    // Saved by the retry of unsaved tokens (every 5 s) or the flush.
    await flushPool(path);
    const deadline = Date.now() + 15_000;
    while (account(path, email).refresh === spent && Date.now() < deadline) await sleep(100);
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new refresh token is in the file");
    assert.deepEqual((await poolStatus(path)).runtime?.unsavedTokens ?? [], []);
    assert.equal(mock.stats().perFamily[email].reuse, 0);
  });
}

test("tokens kept while the file is gone are saved once it is back, however long it was gone, with nothing else written", async () => {
  // The save of unsaved tokens was tried once, 5 s after the refresh: a file still gone then
  // left them in memory (and the account's refresh lock held, other processes waiting on it)
  // until this process happened to write something else.
  const email = "long-gone-refresh@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const spent = account(path, email).refresh;
  const { answer, request } = await refreshHeldAtTheEndpoint(path, "native");
  const aside = `${path}.away`;
  renameSync(path, aside);
  // Its lock file gone too (`rm oauth-pool.json*`): the looks for the file make none again.
  unlinkSync(`${path}.lock`);
  const left = readdirSync(dirname(path)).sort();
  answer();
  const r = await request;
  assert.equal(r.status, 200, r.message);
  // Past the first retry (5 s) and the request's own bookkeeping (about a second).
  await sleep(8_000);
  assert.equal(existsSync(path), false, "no pool file is made while it is gone");
  // A caller that asks is told the new tokens are only in this process (flushPool resolved, and
  // a script that ended then lost the login without a word).
  let told;
  await assert.rejects(flushPool(path), (e) => {
    told = e.message;
    return e.code === "POOL_IO" && /long-gone-refresh@x\.test was refreshed, but its new tokens could not be saved/.test(e.message);
  });
  // Nothing but the new tokens kept on disk beside it (store/rescue.rs): no lock file. The
  // refresh token's own lock went once they were kept (the account's stays held with them).
  const keptName = new RegExp(`^${basename(path).replaceAll(".", "\\.")}\\.unsaved-${process.pid}-\\d+\\.json$`);
  const kept = readdirSync(dirname(path)).filter((n) => keptName.test(n));
  // The message names that file and says nothing is lost (it said the account needed a new
  // login, and a user believing it logged in again for nothing, or deleted the file).
  assert.ok(told.includes(join(dirname(path), kept[0])), told);
  assert.match(told, /do not delete that file/);
  assert.doesNotMatch(told, /needs a new login/);
  assert.equal(kept.length, 1, readdirSync(dirname(path)).join(", "));
  const before = left.filter((n) => !n.endsWith(".token.lock"));
  assert.deepEqual(readdirSync(dirname(path)).sort(), [...before, ...kept].sort(), "nothing else is made beside it (a lock file)");
  renameSync(aside, path);
  const deadline = Date.now() + 20_000;
  while (account(path, email).refresh === spent && Date.now() < deadline) await sleep(100);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new refresh token is in the file");
  assert.deepEqual((await poolStatus(path)).runtime?.unsavedTokens ?? [], []);
  await flushPool(path);
  assert.ok(!readdirSync(dirname(path)).includes(kept[0]), "the kept tokens' file goes once they are written");
});

test("the pool's directory removed while requests are in flight: their bookkeeping and a 429's cooldown make neither the directory nor a lock file again; the pool put back is served", async () => {
  // `rm -rf ~/.aidevops` to start over, or a sync tool that takes the directory away for a
  // moment: the write after each request (last use, usage, windows, a cooldown) took the
  // store's lock, which made the directory (0700) and the lock file again, leaving a directory
  // that held a lock file and nothing else.
  const [first, second] = ["dir-gone-a@x.test", "dir-gone-b@x.test"];
  const path = await seedPool(mock, [first, second]);
  const dir = dirname(path);
  const saved = readFileSync(path);
  let open;
  const held = new Promise((r) => (open = r));
  mock.setUtilization(first, { fiveHour: 0.5 });
  mock.script(first, [{ until: held }, { status: 429, headers: { "retry-after": "3600" }, until: held }]);
  const f = createPoolFetch({ path });
  let arrived = 0;
  const both = mock.waitFor("api", (r) => r.email === first && ++arrived === 2);
  const answers = [ask(f), ask(f)];
  await both;
  rmSync(dir, { recursive: true, force: true });
  open();
  // One is served by the first account; the other's 429 cools it and moves on: to the second
  // account, or to a pool that is not there any more.
  const done = await Promise.all(answers);
  const served = done.filter((r) => r.status === 200);
  assert.ok(
    served.some((r) => r.account === first),
    JSON.stringify(done),
  );
  assert.ok(
    done.every((r) => (r.status === 200 && [first, second].includes(r.account)) || r.status === "POOL_NO_ACCOUNT"),
    JSON.stringify(done),
  );
  // More requests while it is gone: refused with a code, nothing to write for them.
  for (let i = 0; i < 3; i++) assert.equal((await ask(f)).status, "POOL_NO_ACCOUNT");
  await flushPool(path);
  // What the bookkeeping would still do on its own schedule.
  await sleep(1_500);
  assert.equal(existsSync(dir), false, `the directory was made again, holding: ${existsSync(dir) ? readdirSync(dir).join(", ") : ""}`);

  // Put back (a restore from a copy): this process serves from it again and keeps its books there.
  mkdirSync(dir, { mode: 0o700 });
  writeFileSync(path, saved, { mode: 0o600 });
  const back = await ask(f);
  assert.equal(back.status, 200, back.message);
  await flushPool(path);
  const used = account(path, back.account);
  assert.ok(used.lastUsed, "its last use is written into the file put back");
  assert.equal(account(path, back.account).refresh, mock.tokens(back.account).refresh);
});
