// A hostile operating system and neighbours: a process stopped (Ctrl-Z, SIGSTOP) mid-refresh,
// file descriptors exhausted, a full disk. Each case asks what a user would: is any refresh token
// presented twice, is anything lost, is every error coded, and does the pool recover once the
// condition clears. Cases the machine cannot provide (no signals, not root for a mount) are
// skipped with the reason.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, execFileSync } from "node:child_process";
import {
  accessSync,
  chmodSync,
  constants,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  chownSync,
  writeFileSync,
} from "node:fs";
import { lookup } from "node:dns/promises";
import { hostname } from "node:os";
import { delimiter, dirname, isAbsolute, join } from "node:path";
import { fileURLToPath } from "node:url";
import { cliJson, storedPool } from "./helpers/fleet-kit.mjs";
import { useMock, seedPool, account, readPool, pause, until } from "./helpers/pool-env.mjs";
import { startPostgres } from "./helpers/postgres.mjs";
import { keptLogin, loginSpoiledMidway } from "./helpers/login-midway.mjs";
import { tempDir } from "./helpers/temp.mjs";
import { CLI } from "./helpers/cli-sandbox.mjs";
import { stopProcess } from "./helpers/stop.mjs";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const POLLER = here("./helpers/pool-poller.mjs");
const FD_STARVED = here("./helpers/fd-starved.mjs");
const mock = useMock();

const canStop = process.platform !== "win32";
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;

function run(args, env, command = process.execPath) {
  const child = spawn(command, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const done = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal, out, err })));
  return { child, done };
}

test("a process stopped (Ctrl-Z) while its refresh call is in flight reads the answer that came meanwhile: the spent token is not presented again", {
  skip: !canStop && "no SIGSTOP here",
}, async () => {
  const email = "stopped-mid-refresh@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  // The answer comes 200 ms after the call arrives; the process is stopped before that, and
  // stays stopped past its token-call timeout.
  mock.setTokenMode({ grant: "refresh_token", delayMs: 200, times: 1 });
  const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const env = { ...process.env, OAUTH_POOL_PATH: path, OAUTH_POOL_TIMEOUT_MS: "1500" };
  const proc = run([POLLER, mock.url, "claude-sonnet-4-5", "once", "30000"], env);
  await arrived;
  await stopProcess(proc.child.pid);
  try {
    await until("the token endpoint to rotate the token", () => mock.stats().perFamily[email].generation === 1);
    // Stopped past the 1.5 s the call may take while the process runs.
    await pause(2500);
  } finally {
    proc.child.kill("SIGCONT");
  }
  const { code, out, err } = await proc.done;
  const fam = mock.stats().perFamily[email];
  assert.equal(fam.reuse, 0, `the spent refresh token was presented again (the login was revoked): ${err.slice(-400)}`);
  assert.equal(fam.revoked, false);
  assert.equal(fam.refreshCalls, 1);
  assert.equal(code, 0, err.slice(-400));
  assert.equal(JSON.parse(out.trim().split("\n").at(-1)).status, 200, "the request was served with the new token");
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens are in the file");
});

const FLOCK = ["/usr/bin/flock", "/bin/flock"].find((p) => existsSync(p));

test("a writer stopped with the pool's lock (an OpenCode suspended mid-write): a request that needs a refresh is served from memory within seconds, and the tokens land once the lock is free", {
  skip: !FLOCK && "util-linux's flock is not installed",
}, async () => {
  // Stood for by flock(1) holding the pool's write lock: a request whose account needed a
  // refresh waited the store's 60 s lock wait behind it before its new tokens were served.
  const { createPoolFetch, flushPool } = await import("../index.mjs");
  const email = "stalled-write@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const stored = account(path, email).refresh;
  // Held for 40 s, under the store's 60 s wait and over the 10 s a refresh's write is given.
  const holder = spawn(FLOCK, ["--no-fork", "-x", `${path}.lock`, "sh", "-c", "echo held; exec sleep 40"], { stdio: ["ignore", "pipe", "inherit"] });
  let released = false;
  holder.once("exit", () => {
    released = true;
  });
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.once("data", resolve);
      holder.once("error", reject);
    });
    const events = [];
    const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
    const r = await f(`${mock.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    await r.text();
    assert.equal(released, false, "the request waited for the lock to be free");
    assert.equal(r.status, 200);
    assert.equal(account(path, email).refresh, stored, "nothing was written under another's lock");
    const unsaved = events.find((e) => e.kind === "tokens-unsaved");
    assert.match(unsaved?.message ?? "", /locked by another process/, JSON.stringify(events));
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1);
    assert.equal(fam.reuse, 0);
  } finally {
    holder.kill("SIGKILL");
  }
  await new Promise((resolve) => (released ? resolve() : holder.once("exit", resolve)));
  await flushPool(path);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens were written once the lock was free");
  assert.equal(mock.stats().perFamily[email].reuse, 0);
});

/** A small tmpfs of our own (root only), or the reason there is none. */
function smallDisk() {
  if (!isRoot || process.platform !== "linux") return { skip: "a tmpfs mount needs root on Linux" };
  const dir = tempDir("oauth-pool-full-");
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", dir], { stdio: "ignore" });
  } catch {
    rmSync(dir, { recursive: true, force: true });
    return { skip: "mount is not allowed here" };
  }
  return {
    dir,
    fill() {
      const chunk = Buffer.alloc(16 * 1024);
      for (let i = 0; ; i++) {
        try {
          writeFileSync(join(dir, `fill-${i}`), chunk);
        } catch {
          return;
        }
      }
    },
    free() {
      for (const name of readdirSync(dir)) if (name.startsWith("fill-")) rmSync(join(dir, name));
    },
    close() {
      // Lazy: the engine of this test process may still hold a lock file open there.
      execFileSync("umount", ["-l", dir], { stdio: "ignore" });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

test("a full disk: requests keep being served, writes fail with POOL_IO and leave no lock behind, and everything lands once space is freed", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  const { createPoolFetch, flushPool, savePool } = await import("../index.mjs");
  try {
    const [first, second] = ["full-a@x.test", "full-b@x.test"];
    const path = join(disk.dir, "pool", "oauth-pool.json");
    if (!isRoot) linkedDir(join(disk.dir, "pool"));
    // The second's token is valid: on a full disk no refresh token is spent (the next test).
    await seedPool(mock, [first, second], { path });
    const f = createPoolFetch({ path });
    const ask = async () => {
      const r = await f(`${mock.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
        body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
      });
      await r.text();
      return r;
    };
    assert.equal((await ask()).status, 200);
    await flushPool(path);
    const before = readPool(path);
    disk.fill();
    // The first account is rate-limited: the request moves to the second, and the cooldown
    // cannot be written.
    mock.script(first, [{ status: 429, headers: { "retry-after": "3600" } }]);
    const moved = await ask();
    assert.equal(moved.status, 200);
    assert.equal(moved.poolAccount, second);
    await assert.rejects(savePool(before, path), (e) => e.code === "POOL_IO" && /No space left/.test(e.message));
    await assert.rejects(flushPool(path), (e) => e.code === "POOL_IO");
    assert.equal(existsSync(`${path}.lock.d`), false, "a failed write left the aidevops lock behind: every writer waits 10 s on it");
    assert.deepEqual(readPool(path), before, "the file is as it was");
    assert.equal((await ask()).status, 200, "still served");
    disk.free();
    await flushPool(path);
    const fam = mock.stats().perFamily[second];
    assert.equal(fam.reuse, 0);
    assert.equal(account(path, second).refresh, mock.tokens(second).refresh);
    assert.equal(account(path, first).status, "rate-limited", "the cooldown was written");
    assert.deepEqual(readPool(`${path}.bak`).anthropic.length, 2);
    assert.equal(existsSync(`${path}.lock.d`), false);
  } finally {
    disk.close();
  }
});

test("a full disk when a request's token is due for a refresh: no refresh token is spent (its successor could not be saved); a valid old token serves, else the request moves on, and with no account left it is POOL_IO saying nothing was spent", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  const { createPoolFetch, flushPool, refreshAccount, savePool } = await import("../index.mjs");
  try {
    // `stale` is tried first and its token has expired; `soon`'s expires in 2 minutes (inside
    // the refresh margin, still valid); `lone`, in a pool of its own, has expired.
    const [stale, soon, lone] = ["full-due-stale@x.test", "full-due-soon@x.test", "full-due-lone@x.test"];
    const path = join(disk.dir, "pool", "oauth-pool.json");
    const lonePath = join(disk.dir, "lone", "oauth-pool.json");
    await seedPool(mock, [stale, soon], { path });
    await seedPool(mock, [lone], { path: lonePath });
    // Their refresh locks are made before the disk fills (as after any earlier refresh).
    for (const [email, p] of [
      [stale, path],
      [soon, path],
      [lone, lonePath],
    ])
      await refreshAccount(email, p);
    const due = (p, changes) => {
      const pool = readPool(p);
      for (const a of pool.anthropic) Object.assign(a, changes[a.email]);
      return savePool(pool, p);
    };
    await due(path, { [stale]: { expires: Date.now() - 1000, priority: 10 }, [soon]: { expires: Date.now() + 120_000 } });
    await due(lonePath, { [lone]: { expires: Date.now() - 1000 } });
    const calls = (email) => mock.stats().perFamily[email].refreshCalls;
    const [before, loneBefore] = [readPool(path), readPool(lonePath)];
    const ask = async (p) => {
      const r = await createPoolFetch({ path: p })(`${mock.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
        body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
      });
      await r.text();
      return r;
    };
    disk.fill();
    // Each refresh token was spent and its successor kept only in this process's memory: OpenCode
    // quitting before the disk was freed took the login with it.
    const served = await ask(path);
    assert.equal(served.status, 200);
    assert.equal(served.poolAccount, soon, "the old, still valid token serves; the expired account is passed over");
    assert.equal(calls(stale), 1, "the expired account's refresh token was not presented");
    assert.equal(calls(soon), 1, "the due account's refresh token was not presented");
    await assert.rejects(ask(lonePath), (e) => e.code === "POOL_IO" && /nothing was refreshed/.test(e.message) && /No space left/.test(e.message));
    assert.equal(calls(lone), 1, "the only account's refresh token was not presented");
    assert.deepEqual(
      readPool(path).anthropic.map((a) => a.refresh),
      before.anthropic.map((a) => a.refresh),
    );
    assert.deepEqual(
      readPool(lonePath).anthropic.map((a) => a.refresh),
      loneBefore.anthropic.map((a) => a.refresh),
    );
    disk.free();
    // With room again, the refresh is made and saved.
    const after = await ask(lonePath);
    assert.equal(after.status, 200);
    assert.equal(calls(lone), 2);
    await flushPool(lonePath);
    assert.equal(account(lonePath, lone).refresh, mock.tokens(lone).refresh, "the new tokens are in the file");
    for (const email of [stale, soon, lone]) assert.equal(mock.stats().perFamily[email].reuse, 0);
  } finally {
    disk.close();
  }
});

test("refreshAccount (`oauth-pool refresh`) on a full disk: refused before the token is spent; a disk that fills meanwhile still takes the new tokens, not a quiet `kept`", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  const { refreshAccount, flushPool } = await import("../index.mjs");
  try {
    const email = "full-refresh@x.test";
    const path = join(disk.dir, "pool", "oauth-pool.json");
    await seedPool(mock, [email], { path });
    // The refresh lock is made before the disk fills: only the writes of new tokens can fail.
    await refreshAccount(email, path);
    const before = readPool(path);
    const calls = () => mock.stats().perFamily[email].refreshCalls;
    disk.fill();
    // It spent the stored refresh token and could not save the new one: a CLI ending right after
    // took the login with it.
    await assert.rejects(
      refreshAccount(email, path),
      (e) => e.code === "POOL_IO" && /nothing was refreshed/.test(e.message) && /No space left/.test(e.message),
    );
    assert.equal(calls(), 1, "the token endpoint was not asked");
    assert.deepEqual(readPool(path), before, "nothing was written");
    disk.free();
    // The disk fills while the token endpoint answers: the room held for the write takes the new
    // tokens. It resolved { outcome: "kept" } with them unsaved, and the CLI exited 0 saying it
    // kept its token (then, an error saying they could not be saved: the login gone at exit).
    mock.setTokenMode({ grant: "refresh_token", delayMs: 300, times: 1 });
    const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
    const refreshing = refreshAccount(email, path);
    await arrived;
    disk.fill();
    assert.equal((await refreshing).outcome, "refreshed");
    assert.equal(calls(), 2, "the refresh itself went through");
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens are in the file");
    disk.free();
    await flushPool(path);
    assert.equal(mock.stats().perFamily[email].reuse, 0);
  } finally {
    disk.close();
  }
});

test("the disk fills while a request's refresh is at the token endpoint, and the process then exits: the new tokens are in the pool file, not gone with the process", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  try {
    const email = "full-mid-refresh@x.test";
    const path = join(disk.dir, "pool", "oauth-pool.json");
    await seedPool(mock, [email], { expired: [email], path });
    mock.setTokenMode({ grant: "refresh_token", delayMs: 300, times: 1 });
    const arrived = mock.waitFor("token", (r) => r.grant === "refresh_token");
    const proc = run([POLLER, mock.url, "claude-sonnet-4-5", "once", "10000"], { ...process.env, OAUTH_POOL_PATH: path });
    await arrived;
    disk.fill();
    const { code, out, err } = await proc.done;
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1);
    // The refresh token in the file was spent; its successor went with the process, and the
    // login had to be made again.
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh, `the new tokens were not written: ${err.slice(-300)}`);
    assert.equal(fam.reuse, 0);
    assert.equal(code, 0, err.slice(-400));
    assert.equal(JSON.parse(out.trim().split("\n").at(-1)).status, 200);
  } finally {
    disk.close();
  }
});

test("addAccount on a pool file near the 32 MB a read takes (another tool's section): refused before the one-time code is spent", async () => {
  // Found by a review: the code was exchanged, then the write refused for size (POOL_INVALID),
  // and the login lived only in this process.
  const { addAccount, authorize } = await import("../index.mjs");
  const dir = tempDir("oauth-pool-near-full-");
  const path = join(dir, "pool.json");
  writeFileSync(path, `{"anthropic":[],"otherTool":"${"a".repeat(32 * 1024 * 1024 - 40_000)}"}`, { mode: 0o600 });
  const before = readFileSync(path);
  const grants = () => mock.tokenRequests.filter((r) => r.grant === "authorization_code").length;
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, "near-full@x.test");
  const spent = grants();
  await assert.rejects(
    addAccount(paste, pkce, path),
    (e) => e.code === "POOL_INVALID" && /code was not spent/.test(e.message) && /another tool/.test(e.message),
  );
  assert.equal(grants(), spent, "the token endpoint was not asked");
  assert.ok(readFileSync(path).equals(before), "nothing was written");
});

test("addAccount (`oauth-pool add`, OpenCode's login) on a full disk: refused before the one-time code is spent, which still logs in once there is room", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  const { addAccount, authorize } = await import("../index.mjs");
  try {
    const path = join(disk.dir, "pool", "oauth-pool.json");
    const grants = () => mock.tokenRequests.filter((r) => r.grant === "authorization_code").length;
    const tryAdd = async (email, { pool }) => {
      if (pool) await seedPool(mock, ["full-held@x.test"], { path });
      else mkdirSync(join(disk.dir, "pool"), { recursive: true });
      const before = pool ? readPool(path) : null;
      const pkce = await authorize();
      const paste = mock.approve(pkce.url, email, { expiresIn: 3600 });
      const spent = grants();
      disk.fill();
      // The code was exchanged first: the login's tokens had nowhere to go, and the code (single
      // use) was gone with them.
      await assert.rejects(
        addAccount(paste, pkce, path),
        (e) => e.code === "POOL_IO" && /code was not spent/.test(e.message) && /No space left/.test(e.message),
      );
      assert.equal(grants(), spent, "the token endpoint was not asked");
      if (pool) assert.deepEqual(readPool(path), before, "nothing was written");
      else assert.equal(existsSync(path), false);
      disk.free();
      assert.deepEqual(await addAccount(paste, pkce, path), { email, added: true });
      assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
      rmSync(join(disk.dir, "pool"), { recursive: true, force: true });
    };
    await tryAdd("full-add@x.test", { pool: true });
    await tryAdd("full-first@x.test", { pool: false });
  } finally {
    disk.close();
  }
});

test("addAccount whose write fails after the code was spent (the disk filled during the token call): the login is kept by the process and written once there is room", async (t) => {
  const disk = smallDisk();
  if (disk.skip) return t.skip(disk.skip);
  try {
    const email = "full-mid-login@x.test";
    const path = join(disk.dir, "pool", "oauth-pool.json");
    await seedPool(mock, ["full-mid-held@x.test"], { path });
    const before = readPool(path);
    // The tokens had nowhere to go, and the code (single use) was gone with them.
    const adding = loginSpoiledMidway(mock, path, email, () => disk.fill());
    await assert.rejects(adding, keptLogin("POOL_IO", email, /No space left/));
    assert.deepEqual(readPool(path), before, "nothing was written");
    disk.free();
    await until("the kept login to be written", () => readPool(path).anthropic.some((a) => a.email === email));
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
    assert.equal(readPool(path).anthropic.length, 2);
  } finally {
    disk.close();
  }
});

test("addAccount whose pool file was replaced by one that does not parse during the token call: the file is kept as it is, and the login is written once the file is mended", async () => {
  const email = "corrupt-mid-login@x.test";
  const path = await seedPool(mock, ["corrupt-mid-held@x.test"]);
  const before = readPool(path);
  const broken = '{"anthropic": [ {"email": "half-written';
  const adding = loginSpoiledMidway(mock, path, email, () => writeFileSync(path, broken));
  await assert.rejects(adding, keptLogin("POOL_CORRUPT", email, /not valid/));
  assert.equal(readFileSync(path, "utf8"), broken, "the unreadable file was not overwritten");
  writeFileSync(path, JSON.stringify(before));
  await until("the kept login to be written", () => readPool(path).anthropic.some((a) => a.email === email));
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
  assert.equal(readPool(path).anthropic.length, 2);
});

/**
 * Makes `dir` read-only for this process and returns the undo: a read-only remount of a tmpfs
 * as root (root writes through any mode bits), otherwise the mode bits of the directory `dir`
 * links to (`linkedDir`), so that a link in the pool's path is met too.
 */
function readOnly(disk, dir) {
  if (isRoot) {
    execFileSync("mount", ["-o", "remount,ro", disk.dir], { stdio: "ignore" });
    return () => execFileSync("mount", ["-o", "remount,rw", disk.dir], { stdio: "ignore" });
  }
  const real = realpathSync(dir);
  chmodSync(real, 0o500);
  return () => chmodSync(real, 0o700);
}

/** `dir` made as a symbolic link to a directory of its own (see readOnly). */
function linkedDir(dir) {
  mkdirSync(`${dir}.real`, { mode: 0o700 });
  symlinkSync(`${dir}.real`, dir);
}

// Found by a review (2026-12-07, fourth): a pool file mounted on its own (`docker run -v
// ~/.aidevops/oauth-pool.json:/root/.aidevops/oauth-pool.json`) can be read and never replaced
// (`rename` over a mount point is EBUSY). The trial write passed in its directory, the refresh
// spent the token, the new tokens stayed in the container, and the host's next request
// presented the spent one: the login revoked.
test("a pool file mounted on its own (docker -v file:file): nothing is refreshed, POOL_IO says to mount the directory, and the host's login lives on", async (t) => {
  if (!isRoot || process.platform !== "linux") return t.skip("a bind mount needs root on Linux");
  const { createPoolFetch, loadPool, savePool } = await import("../index.mjs");
  const email = "mounted-alone@x.test";
  const host = join(tempDir("oauth-pool-host-"), "oauth-pool.json");
  await seedPool(mock, [email], { expired: [email], path: host });
  const spent = account(host, email).refresh;
  const inside = join(tempDir("oauth-pool-container-"), ".aidevops", "oauth-pool.json");
  mkdirSync(dirname(inside), { recursive: true, mode: 0o700 });
  writeFileSync(inside, "", { mode: 0o600 });
  try {
    execFileSync("mount", ["--bind", host, inside], { stdio: "ignore" });
  } catch {
    return t.skip("mount is not allowed here");
  }
  try {
    const said = (e) => e.code === "POOL_IO" && /mounted on its own[\s\S]*mount its directory instead/.test(e.message);
    await assert.rejects(
      createPoolFetch({ path: inside })(`${mock.url}/v1/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" }),
      (e) => said(e) && /nothing was refreshed/.test(e.message),
    );
    assert.equal(mock.stats().perFamily[email].refreshCalls, 0, "the stored refresh token is unspent");
    await assert.rejects(savePool(await loadPool(inside), inside), said);
    // Its directory then mounted over it, as the message says to: the file seen there is a
    // plain one of that mount, and its refresh goes on (the hidden mount's line in mountinfo
    // made it look mounted alone still: a review's find).
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", dirname(inside)], { stdio: "ignore" });
    try {
      const other = "mounted-over@x.test";
      await seedPool(mock, [other], { expired: [other], path: inside });
      const res = await createPoolFetch({ path: inside })(`${mock.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: "{}",
      });
      assert.equal(res.status, 200);
      await res.text();
      assert.equal(mock.stats().perFamily[other].refreshCalls, 1);
    } finally {
      execFileSync("umount", ["-l", dirname(inside)], { stdio: "ignore" });
    }
  } finally {
    execFileSync("umount", ["-l", inside], { stdio: "ignore" });
  }
  assert.equal(account(host, email).refresh, spent);
  const res = await createPoolFetch({ path: host })(`${mock.url}/v1/messages`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
  assert.equal(res.status, 200);
  await res.text();
  const family = mock.stats().perFamily[email];
  assert.deepEqual([family.refreshCalls, family.reuse, family.revoked], [1, 0, false]);
});

test("a read-only pool directory: valid tokens keep serving, an account that needs a refresh is POOL_IO (not a 429 or a login to redo), and it serves once writable", async (t) => {
  const disk = isRoot ? smallDisk() : { dir: tempDir("oauth-pool-ro-"), close() {} };
  if (disk.skip) return t.skip(disk.skip);
  if (process.platform === "win32") return t.skip("no read-only directories here");
  const { createPoolFetch, flushPool } = await import("../index.mjs");
  let writable = () => {};
  try {
    const [first, second] = ["ro-a@x.test", "ro-b@x.test"];
    const path = join(disk.dir, "pool", "oauth-pool.json");
    if (!isRoot) linkedDir(join(disk.dir, "pool"));
    await seedPool(mock, [first, second], { expired: [second], path });
    const f = createPoolFetch({ path });
    const ask = () =>
      f(`${mock.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
        body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
      });
    const served = await ask();
    await served.text();
    assert.equal(served.poolAccount, first);
    await flushPool(path);
    writable = readOnly(disk, join(disk.dir, "pool"));
    const again = await ask();
    await again.text();
    assert.equal(again.status, 200, "a valid token serves");
    // The first account is rate-limited; the second's token cannot be refreshed (its refresh
    // lock cannot be made), and nothing is presented without it.
    mock.script(first, [{ status: 429, headers: { "retry-after": "3600" } }]);
    // A read-only mount fails the lock's making; a directory its mode keeps us from writing in
    // is said to be one before anything is made (README, Hostile OS).
    await assert.rejects(ask(), (e) => e.code === "POOL_IO" && /refresh\.lock|write in the pool's directory failed: it is mode 0500/.test(e.message));
    // Asked again, the same: nothing here says to log in again or to wait an hour.
    await assert.rejects(ask(), (e) => e.code === "POOL_IO");
    assert.equal(mock.stats().perFamily[second].refreshCalls, 0, "no token presented without its lock");
    writable();
    writable = () => {};
    const after = await ask();
    await after.text();
    assert.equal(after.status, 200);
    assert.equal(after.poolAccount, second);
    await flushPool(path);
    assert.equal(mock.stats().perFamily[second].reuse, 0);
    assert.equal(account(path, second).refresh, mock.tokens(second).refresh);
    assert.equal(account(path, first).status, "rate-limited", "the cooldown recorded while read-only was written");
  } finally {
    writable();
    disk.close();
  }
});

test("a read-only pool directory: an access token in its last minutes serves while it lasts (its refresh lock cannot be made), as on a full disk", async (t) => {
  // The request failed POOL_IO: the lock's open error was returned before the path that serves
  // the old token when no refresh can be saved (found by a review, with 3,643 such failures in
  // a 16-process run).
  const disk = isRoot ? smallDisk() : { dir: tempDir("oauth-pool-ro-margin-"), close() {} };
  if (disk.skip) return t.skip(disk.skip);
  if (process.platform === "win32") return t.skip("no read-only directories here");
  const { createPoolFetch, savePool } = await import("../index.mjs");
  let writable = () => {};
  try {
    const email = "ro-margin@x.test";
    const path = join(disk.dir, "pool", "oauth-pool.json");
    if (isRoot) mkdirSync(join(disk.dir, "pool"), { mode: 0o700 });
    else linkedDir(join(disk.dir, "pool"));
    const login = mock.addAccount(email, { expiresIn: 200 });
    await savePool({ version: 1, anthropic: [{ email, refresh: login.refresh, access: login.access, expires: login.expires }] }, path);
    writable = readOnly(disk, join(disk.dir, "pool"));
    const f = createPoolFetch({ path });
    for (let i = 0; i < 2; i++) {
      const res = await f(`${mock.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
        body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
      });
      await res.text();
      assert.equal(res.status, 200, `request ${i + 1}`);
      assert.equal(res.poolAccount, email);
    }
    assert.equal(mock.stats().perFamily[email].refreshCalls, 0, "no refresh without its lock");
  } finally {
    writable();
    disk.close();
  }
});

// Codes a caller may get from the pool's functions and fetch (CONTRACT.md).
const CODES = new Set(["POOL_IO", "POOL_BUSY", "POOL_CORRUPT", "POOL_INSECURE", "POOL_INVALID", "POOL_NO_ACCOUNT", "NETWORK", "NATIVE_MISSING", "OAUTH_HTTP"]);

test("file descriptors exhausted at every step: each failure carries a code, nothing is corrupted or spent twice, and the pool works once descriptors are back", {
  skip: process.platform === "win32" && "no ulimit here",
}, async () => {
  const [first, second] = ["fd-a@x.test", "fd-b@x.test"];
  const path = await seedPool(mock, [first, second], { expired: [first] });
  const pool = readPool(path);
  pool.anthropic.find((a) => a.email === first).priority = 5;
  const { savePool } = await import("../index.mjs");
  await savePool(pool, path);
  const proc = spawn("sh", ["-c", 'ulimit -n 64 && exec "$0" "$@"', process.execPath, FD_STARVED, path, mock.url], {
    env: process.env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  proc.stdout.on("data", (d) => (out += d));
  proc.stderr.on("data", (d) => (err += d));
  const code = await new Promise((r) => proc.on("close", r));
  assert.equal(code, 0, err.slice(-600));
  const { calls, after } = JSON.parse(out.trim().split("\n").at(-1));
  const uncoded = calls.filter((c) => !("ok" in c) && !CODES.has(c.code));
  assert.deepEqual(uncoded, [], "every failure has a contract code");
  const shortage = calls.filter((c) => c.code);
  assert.ok(shortage.length > 0, "the shortage was felt");
  // The two accounts are valid: a request the shortage stopped is the store's failure, never
  // every account cooling (a 429) nor no account (log in again), as it was once answered.
  const misread = calls.filter((c) => c.what === "request" && (("ok" in c && c.ok !== 200) || c.code === "POOL_NO_ACCOUNT"));
  assert.deepEqual(misread, [], "a request the shortage stopped is told so");
  assert.deepEqual(after, { request: { ok: 200 }, flush: { ok: null } }, `with descriptors back, the pool works: ${JSON.stringify(after)}`);
  const fam = mock.stats().perFamily[first];
  assert.equal(fam.reuse, 0);
  assert.equal(fam.revoked, false);
  assert.equal(account(path, first).refresh, mock.tokens(first).refresh, "the refreshed tokens are in the file");
  assert.equal(readPool(path).anthropic.length, 2);
  assert.equal(readPool(`${path}.bak`).anthropic.length, 2);
});

const THREAD_STARVED = here("./helpers/thread-starved.mjs");
const CC = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/local/bin/cc"].find((p) => existsSync(p));
const noThreadsSkip =
  (process.platform !== "linux" && "the thread shim is for glibc's pthread_create") || (!CC && "no C compiler (cc) to build the thread shim");

/** Builds the pthread_create shim (helpers/no-threads.c) into a temp dir: its path. */
function threadShim() {
  const dir = tempDir("oauth-pool-no-threads-");
  const lib = join(dir, "no-threads.so");
  execFileSync(CC, ["-shared", "-fPIC", "-O2", "-o", lib, here("./helpers/no-threads.c"), "-ldl"]);
  return { lib, flag: join(dir, "refused") };
}

/** Runs thread-starved.mjs in `phase` with the shim preloaded: its report, and its stderr. */
async function starvedOfThreads(phase, path, email, { onToken, grant = "refresh_token", apiUrl = mock.url, env: base = process.env } = {}) {
  const { lib, flag } = threadShim();
  const env = { ...base, LD_PRELOAD: lib, THREADS_REFUSED_WHILE: flag, OAUTH_POOL_API_URL: apiUrl };
  if (onToken) mock.waitFor("token", (r) => r.grant === grant).then(() => onToken(flag));
  const { code, out, err } = await run([THREAD_STARVED, phase, path, apiUrl, email], env).done;
  assert.equal(code, 0, err.slice(-800));
  return { report: JSON.parse(out.trim().split("\n").at(-1)), err };
}

/**
 * What a starved run must show, whatever the store: coded failures (`codes`), no panic, every
 * entry point working afterwards, no refresh token presented twice.
 */
function assertStarvedCoded({ report, err }, email, codes = CODES) {
  const { starved, after } = report;
  const uncoded = Object.entries(starved).filter(([, c]) => !("ok" in c) && !codes.has(c.code));
  assert.deepEqual(uncoded, [], `every failure has a contract code: ${JSON.stringify(starved)}`);
  assert.doesNotMatch(err, /panicked at/, "no panic reaches the host's terminal");
  assert.deepEqual(
    after,
    { request: { ok: 200 }, load: { ok: 2 }, list: { ok: 2 }, refresh: { ok: "refreshed" }, gateway: { ok: 401 }, flush: { ok: null } },
    "with threads back, every entry point works",
  );
  const fam = mock.stats().perFamily[email];
  assert.equal(fam.reuse, 0, "no refresh token presented twice");
  assert.equal(fam.revoked, false);
}

/** `assertStarvedCoded` for a pool file: the new tokens in it, no lock or temp file left. */
function assertStarvedWell(run, path, email) {
  assertStarvedCoded(run, email);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the refreshed tokens are in the file");
  assert.equal(readPool(path).anthropic.length, 2);
  // A lock held in the process shows in `after` (its refresh and flush take the locks); the
  // aidevops lock directory and temp files would outlive it.
  assert.deepEqual(
    readdirSync(join(path, "..")).filter((n) => n.endsWith(".lock.d") || n.includes("tmp")),
    [],
    "no lock directory or temp file left behind",
  );
}

for (const [phase, when] of [
  ["cold", "(a container at its pids limit) before the pool's runtime started"],
  ["warm", "once the runtime runs and its file threads went idle"],
]) {
  test(`no thread to be had ${when}: every entry point fails with a code, and works once threads can be made`, {
    skip: noThreadsSkip,
  }, async () => {
    const [email, other] = [`threads-${phase}@x.test`, `threads-${phase}-b@x.test`];
    const path = await seedPool(mock, [email, other], { expired: [email] });
    const run = await starvedOfThreads(phase, path, email);
    assert.ok(
      Object.values(run.report.starved).some((c) => c.code === "POOL_IO"),
      `the shortage was felt: ${JSON.stringify(run.report.starved)}`,
    );
    assertStarvedWell(run, path, email);
  });
}

test("no thread to be had when a refresh's answer comes: the new tokens are kept and saved once threads can be made, not lost with the spent token", {
  // Bun starts threads of its own while the answer is awaited, and aborts when it cannot.
  skip: noThreadsSkip || (process.versions.bun && "Bun itself aborts when refused a thread mid-request"),
}, async () => {
  const email = "threads-mid-refresh@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  // The answer comes after the blocking thread that took the refresh lock has idled out (5 s);
  // threads are refused from the moment the call arrives, so the write of the new tokens finds
  // none.
  mock.setTokenMode({ grant: "refresh_token", delayMs: 6500, times: 1 });
  const { report, err } = await starvedOfThreads("mid-refresh", path, email, { onToken: (flag) => writeFileSync(flag, "") });
  assert.doesNotMatch(err, /panicked at/, "no panic reaches the host's terminal");
  const { starved, after } = report;
  assert.ok("ok" in starved.request || CODES.has(starved.request.code), `coded: ${JSON.stringify(starved.request)}`);
  assert.deepEqual(after, { request: { ok: 200 }, flush: { ok: null } }, `with threads back, the pool works: ${JSON.stringify(report)}`);
  const fam = mock.stats().perFamily[email];
  assert.equal(fam.refreshCalls, 1, "the token was refreshed once");
  assert.equal(fam.reuse, 0, "the spent refresh token was not presented again");
  assert.equal(fam.revoked, false);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens are in the file");
});

test("no thread to be had when a login's token call answers: the login is kept by the process and written once threads can be made, with no advice to redo it now", {
  skip: noThreadsSkip || (process.versions.bun && "Bun itself aborts when refused a thread mid-request"),
}, async () => {
  const email = "threads-mid-login@x.test";
  const path = await seedPool(mock, ["threads-mid-login-held@x.test"]);
  const { authorize } = await import("../index.mjs");
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, email, { expiresIn: 3600 });
  // As for a refresh: the answer comes once the blocking thread of the checks before the call
  // has idled out (5 s), and threads are refused from the moment the call arrives.
  mock.setTokenMode({ grant: "authorization_code", delayMs: 6500, times: 1 });
  const env = { ...process.env, LOGIN_PASTE: paste, LOGIN_VERIFIER: pkce.verifier, LOGIN_STATE: pkce.state };
  const { report, err } = await starvedOfThreads("login", path, email, { grant: "authorization_code", env, onToken: (flag) => writeFileSync(flag, "") });
  assert.doesNotMatch(err, /panicked at/, "no panic reaches the host's terminal");
  // It said "the next call tries again": no call can, the code is spent.
  assert.ok(keptLogin("POOL_IO", email, /no thread could be started/)(report.starved.login), JSON.stringify(report));
  assert.deepEqual(report.after, { landed: true }, "the login was written once threads could be made");
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
});

test("no thread to be had when a request must look up the API's host name: a NETWORK error saying so, not a panic, and the next request is served", {
  skip: noThreadsSkip,
}, async () => {
  const email = "threads-lookup@x.test";
  const path = await seedPool(mock, [email]);
  // `localhost` is looked up (getaddrinfo on a blocking thread); an address is not.
  const apiUrl = mock.url.replace("127.0.0.1", "localhost");
  const { report, err } = await starvedOfThreads("lookup", path, email, { apiUrl });
  assert.doesNotMatch(err, /panicked at/, "no panic reaches the host's terminal");
  assert.equal(report.starved.request.code, "NETWORK", JSON.stringify(report));
  assert.match(report.starved.request.message, /no thread could be started/);
  assert.deepEqual(report.after, { request: { ok: 200 } });
});

test("no thread to be had when serve() must look up the host name it listens on: POOL_IO saying so, not a panic, and it starts once threads can be made", {
  skip: noThreadsSkip,
}, async (t) => {
  // A name other than `localhost` (which is listened on as 127.0.0.1 without a lookup): this
  // machine's own, which listens for other hosts, so with TLS.
  const name = hostname();
  const found = await lookup(name).catch(() => null);
  if (!found) return t.skip(`this machine's name ${name} does not resolve`);
  const dir = tempDir("oauth-pool-threads-serve-");
  const selfSigned = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"];
  const r = spawnSync("openssl", [...selfSigned, "-keyout", "key.pem", "-out", "cert.pem", "-subj", `/CN=${name}`], { cwd: dir });
  if (r.status !== 0) return t.skip("no openssl to make the gateway's certificate");
  const path = await seedPool(mock, ["threads-serve@x.test"]);
  const env = { ...process.env, TLS_CERT: join(dir, "cert.pem"), TLS_KEY: join(dir, "key.pem") };
  const { report, err } = await starvedOfThreads("serve-by-name", path, "threads-serve@x.test", { apiUrl: name, env });
  assert.doesNotMatch(err, /panicked at/, "no panic reaches the host's terminal");
  assert.equal(report.starved.serve.code, "POOL_IO", JSON.stringify(report));
  assert.match(report.starved.serve.message, /no thread could be started/);
  assert.deepEqual(report.after, { serve: { ok: "https:" } });
});

test("no thread to be had when the fleet store is connected to by a host name: STORE_UNAVAILABLE saying so, not a panic, and every entry point works once threads can be made", {
  skip: noThreadsSkip,
}, async () => {
  const pg = await startPostgres();
  try {
    const [email, other] = ["threads-fleet@x.test", "threads-fleet-b@x.test"];
    // `localhost` is looked up (tokio's lookup_host: a blocking thread); an address is not. The
    // refresh lock is held on a connection of its own, so a warm process still connects anew.
    const run = await starvedFleet(pg.url.replace("127.0.0.1", "localhost"), email, other);
    const { starved } = run.report;
    assert.equal(starved.refresh.code, "STORE_UNAVAILABLE", JSON.stringify(starved));
    assert.match(starved.refresh.message, /no thread could be started/);
  } finally {
    await pg.close();
  }
});

test("no thread to be had when the fleet store's hosts are a Unix socket directory and a host name: no panic, every failure coded, and every entry point works once threads can be made", {
  skip: noThreadsSkip,
}, async () => {
  const pg = await startPostgres();
  try {
    const [email, other] = ["threads-fleet-mixed@x.test", "threads-fleet-mixed-b@x.test"];
    // libpq's way of saying "this machine's server, else over the network": the name, tried
    // first here, must be looked up.
    const store = `postgres://postgres@localhost:${pg.port},${encodeURIComponent(pg.dir)}:${pg.port}/postgres`;
    await starvedFleet(store, email, other);
  } finally {
    await pg.close();
  }
});

/**
 * Runs the "warm" phase against the fleet store `store` (seeded with `email`, expired, and
 * `other`), and checks what every starved run must show, with the refreshed tokens in the store.
 */
async function starvedFleet(store, email, other) {
  const file = await seedPool(mock, [email, other], { expired: [email] });
  const home = tempDir("oauth-pool-threads-fleet-");
  const host = {
    env: { ...process.env, HOME: home, USERPROFILE: home, OAUTH_POOL_STORE: store, OAUTH_POOL_STORE_KEY: Buffer.alloc(32, 7).toString("base64") },
  };
  assert.equal((await cliJson(host, "store", "init")).code, 0);
  assert.equal((await cliJson(host, "store", "copy", "--from", file, "--to", store)).code, 0);
  const run = await starvedOfThreads("warm", store, email, { env: host.env });
  assertStarvedCoded(run, email, new Set([...CODES, "STORE_UNAVAILABLE"]));
  const kept = (await storedPool(host, store)).anthropic.find((a) => a.email === email);
  assert.equal(kept.refresh, mock.tokens(email).refresh, "the refreshed tokens are in the store");
  return run;
}

// Found on PATH, as .ci/run looks for it (`command -v strace`): CI on a machine with
// /usr/local/bin/strace runs this test, not skips it.
const onPath = (name) =>
  (process.env.PATH ?? "")
    .split(delimiter)
    .filter((dir) => isAbsolute(dir))
    .map((dir) => join(dir, name))
    .find((p) => {
      try {
        accessSync(p, constants.X_OK);
        return statSync(p).isFile();
      } catch {
        return false;
      }
    });
const STRACE = onPath("strace");
const canTrace = STRACE && spawnSync(STRACE, ["-o", "/dev/null", "true"]).status === 0;

/** `oauth-pool refresh` after a cut write: it presents no spent token, and the pool holds the login. */
async function refreshesWithoutSpentToken(path, email, env) {
  const next = await run([CLI, "refresh", email, "--path", path], env).done;
  assert.equal(next.code, 0, next.err);
  const family = mock.stats().perFamily[email];
  assert.equal(family.reuse, 0, `no spent token presented: ${JSON.stringify(family)}`);
  assert.equal(family.revoked, false);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the pool holds its own login");
}

// Found by a review: a writer killed (or a power cut) after its temp file's fsync and before its
// rename left the refresh's new tokens in that temp alone. The next write deleted it unread, and
// the next refresh presented the spent token: the login was revoked.
test("a refresh killed between its temp file's fsync and its rename: the next process takes the new tokens from the temp and presents nothing spent", {
  skip: !canTrace && "strace cannot trace here (not installed, or ptrace refused)",
}, async () => {
  const email = "cut-write@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const dir = join(path, "..");
  const env = { ...process.env, OAUTH_POOL_PATH: path };
  const killed = await run(
    [
      "-f",
      "-qq",
      "-o",
      "/dev/null",
      "-e",
      "trace=rename",
      "-e",
      "inject=rename:signal=SIGKILL:when=1",
      process.execPath,
      CLI,
      "refresh",
      email,
      "--path",
      path,
    ],
    env,
    STRACE,
  ).done;
  const live = mock.tokens(email).refresh;
  const holding = () => readdirSync(dir).filter((f) => statSync(join(dir, f)).isFile() && readFileSync(join(dir, f), "latin1").includes(live));
  assert.ok(
    holding().some((f) => f.endsWith(".tmp")),
    `the cut write's temp holds the new tokens (${killed.code} ${killed.err}): ${readdirSync(dir)}`,
  );
  assert.notEqual(account(path, email).refresh, live, "the pool still holds the spent token");
  await refreshesWithoutSpentToken(path, email, env);
  assert.ok(!readdirSync(dir).some((f) => f.endsWith(".tmp")), "the temp is gone once taken");
});

// Found by a review: the temps a write reads were the first 8 in directory order, every one
// then removed, so 40 older temps hid a cut refresh's (the login revoked), and a temp another
// user planted in a shared directory, or one made readable by others, was taken as a cut write
// of ours (that user's login put into this pool). The newest of ours are read, only this user's
// private ones are taken, and another user's are neither taken nor removed.
test("a cut refresh's temp among 40 older ones, beside another user's temp and a loose-mode one: only the cut write's tokens are taken", {
  skip: (!canTrace && "strace cannot trace here (not installed, or ptrace refused)") || (process.getuid?.() !== 0 && "chown to another user needs root"),
}, async () => {
  const email = "cut-write-crowd@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const dir = join(path, "..");
  const name = path.split("/").pop();
  const spentPool = readFileSync(path);
  const older = (Date.now() - 60_000) / 1000;
  for (let i = 0; i < 40; i++) {
    const temp = join(dir, `.${name}.old${String(i).padStart(4, "0")}.tmp`);
    writeFileSync(temp, spentPool, { mode: 0o600 });
    utimesSync(temp, older, older);
  }
  const env = { ...process.env, OAUTH_POOL_PATH: path };
  const cut = ["-f", "-qq", "-o", "/dev/null", "-e", "trace=rename", "-e", "inject=rename:signal=SIGKILL:when=1"];
  await run([...cut, process.execPath, CLI, "refresh", email, "--path", path], env, STRACE).done;
  const live = mock.tokens(email).refresh;
  assert.notEqual(account(path, email).refresh, live, "the pool still holds the spent token");
  const other = mock.addAccount("someone-else@x.test");
  const theirs = JSON.stringify({ version: 1, anthropic: [{ email, access: other.access, refresh: other.refresh, expires: Date.now() + 3_600_000 }] });
  const foreign = join(dir, `.${name}.f0reign.tmp`);
  writeFileSync(foreign, theirs, { mode: 0o600 });
  chownSync(foreign, 65534, 65534);
  const loose = join(dir, `.${name}.l0ose.tmp`);
  writeFileSync(loose, theirs);
  chmodSync(loose, 0o644);
  await refreshesWithoutSpentToken(path, email, env);
  assert.notEqual(account(path, email).refresh, other.refresh);
  assert.ok(existsSync(foreign), "another user's temp is not ours to remove");
  assert.ok(
    !readdirSync(dir).some((f) => f.endsWith(".tmp") && f !== `.${name}.f0reign.tmp` && !f.includes(".old")),
    "the cut write's and the loose temp are gone",
  );
});

// Guards what a power cut or a second process depends on and no test checked, since nothing a
// test can read afterwards tells a durable write from one still in the page cache: the refresh
// lock is taken before the pool is read again and the token endpoint called, and let go only
// once the new tokens are durable: a temp file made 0600 with O_EXCL, fsynced, renamed over the
// pool (never the pool opened for writing: a truncate in place is what corrupted the SDKs'
// caches), the directory fsynced, all under the pool's lock. The system calls, in order, as
// strace sees them (`write` is not traced: no token in the trace).
test("a refresh's new tokens are durable before its lock is let go: re-read under the refresh lock, then temp 0600 with O_EXCL, fsync, rename, fsync of the directory, under the pool's lock", {
  skip: !canTrace && "strace cannot trace here (not installed, or ptrace refused)",
}, async () => {
  const email = "durable@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const dir = join(path, "..");
  const trace = join(dir, "..", "trace.txt");
  const calls = "trace=openat,open,creat,flock,fcntl,fsync,fdatasync,rename,renameat,renameat2,linkat,connect";
  const env = { ...process.env, OAUTH_POOL_PATH: path };
  // Not spawnSync: the mock answers from this process's event loop.
  const { code, err } = await run([...["-f", "-y", "-qq", "-o", trace, "-e", calls], process.execPath, CLI, "refresh", email, "--path", path], env, STRACE)
    .done;
  assert.equal(code, 0, err);
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the new tokens are in the file");
  const port = new URL(mock.tokenUrl).port;
  // Each call as `name(args`, the thread's id taken off; a call another thread interrupted
  // shows here as its first half, which is where it was made.
  const lines = readFileSync(trace, "utf8")
    .split("\n")
    .map((l) => l.replace(/^\d+ +/, ""))
    .filter((l) => !l.startsWith("<..."));
  const at = (what, test, from = 0) => {
    const i = lines.findIndex((l, n) => n >= from && test(l));
    assert.ok(i >= 0, `${what} (after line ${from}) in:\n${lines.filter((l) => l.includes(dir) || l.includes(port)).join("\n")}`);
    return i;
  };
  const lockOf = (l, file, op) => l.startsWith("flock(") && l.includes(file) && l.includes(op);
  const refreshLock = at("the refresh lock taken", (l) => lockOf(l, ".refresh.lock>", "LOCK_EX") && !/= -1/.test(l));
  const reread = at("the pool read again under it", (l) => l.startsWith("openat(") && l.includes(`"${path}"`), refreshLock);
  const call = at("the token endpoint called", (l) => l.startsWith("connect(") && l.includes(`htons(${port})`), reread);
  const poolLock = at("the pool's lock taken", (l) => lockOf(l, `${path}.lock>`, "LOCK_EX") && !/= -1/.test(l), call);
  const temp = at(
    "the temp file made with O_EXCL, 0600",
    (l) => /^openat\(.*\/\.oauth-pool\.json\.[^/"]*\.tmp", [^)]*O_CREAT[^)]*O_EXCL[^)]*, 0600\)/.test(l),
    poolLock,
  );
  const tempName = /"([^"]+)"/.exec(lines[temp].slice(lines[temp].indexOf(", ")))[1];
  const synced = at("the temp file fsynced", (l) => /^f(data)?sync\(/.test(l) && l.includes(`<${tempName}>`), temp);
  const renamed = at("the temp renamed over the pool", (l) => /^rename(at2?)?\(/.test(l) && l.includes(`"${tempName}"`) && l.includes(`"${path}"`), synced);
  const dirSynced = at("the directory fsynced", (l) => /^fsync\(/.test(l) && l.includes(`<${dir}>`), renamed);
  at("the pool's lock let go", (l) => lockOf(l, `${path}.lock>`, "LOCK_UN"), dirSynced);
  at("the refresh lock let go", (l) => lockOf(l, ".refresh.lock>", "LOCK_UN"), dirSynced);
  assert.equal(
    lines.slice(refreshLock, dirSynced).some((l) => lockOf(l, ".refresh.lock>", "LOCK_UN")),
    false,
    "the refresh lock was held throughout",
  );
  const inPlace = lines.filter((l) => /^(openat|open|creat)\(/.test(l) && l.includes(`"${path}"`) && /O_WRONLY|O_RDWR|O_TRUNC|O_APPEND|^creat/.test(l));
  assert.deepEqual(inPlace, [], "the pool file is never opened for writing");
  // A lock on the file a write renames over is a lock on an orphaned inode once it is replaced.
  assert.deepEqual(
    lines.filter((l) => l.startsWith("flock(") && l.includes(`<${path}>`)),
    [],
    "the pool file itself is never locked (its lock file is)",
  );
  assert.deepEqual(
    lines.filter((l) => l.startsWith("fcntl(") && /F_SETLKW?|F_OFD_SETLK/.test(l)),
    [],
    "no POSIX record lock (closing any descriptor of the file drops one)",
  );
  assert.equal(mock.stats().perFamily[email].reuse, 0);
});
