// Users, owners and modes around the pool file: root writing where a user keeps their pool
// (`sudo -E oauth-pool add`, a root service pointed at a user's pool), another user's file, a
// home that is no absolute path, umasks, a read-only bind of the file. Each asks what the user
// meets afterwards: can they still read and write their own pool, and did a refusal come with
// a code before anything changed. Cases that need other uids or a mount (root on Linux) are
// skipped with the reason elsewhere.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { chmodSync, chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { useMock, seedPool, oauthEntry, messagesUrl, body, jsonHeaders } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const posix = process.platform !== "win32";
const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
const hasSetpriv = process.platform === "linux" && spawnSync("setpriv", ["--version"]).status === 0;
// Plain uids with no passwd entry needed: setpriv sets them as they are.
const USER = 1000;
const OTHER = 1001;
const asOthers =
  process.platform !== "linux"
    ? "running processes as other uids is tested on Linux"
    : !isRoot
      ? "running processes as other uids needs root"
      : !hasSetpriv && "util-linux's setpriv is not installed";

const mock = useMock();

// Obviously fake, made at run time: add-key takes any visible ASCII.
const fakeKey = (tag) => `fake-key-${tag}-${"x".repeat(12)}`;

/** A scratch directory every uid can pass through; each case makes its homes in it. */
function scratch() {
  const dir = tempDir("oauth-pool-own-");
  chmodSync(dir, 0o755);
  return dir;
}

/** A home of `uid`'s in `base`, 0755 as most homes are. */
function homeOf(base, uid, name = "home") {
  const home = join(base, name);
  mkdirSync(home, { mode: 0o755 });
  chownSync(home, uid, uid);
  return home;
}

/**
 * The CLI with `env` over a bare environment (PATH only), as `uid` when given, under `umask`
 * when given; `input` on stdin.
 */
function cli(args, { uid, umask, env = {}, input, cwd } = {}) {
  let argv = [process.execPath, CLI, ...args];
  if (umask !== undefined) argv = ["sh", "-c", `umask ${umask} && exec "$@"`, "sh", ...argv];
  if (uid !== undefined) argv = ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", ...argv];
  // Bun keeps a transpiler cache under $HOME (root's would be root's, in the user's home): off.
  const base = { PATH: process.env.PATH, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" };
  const r = spawnSync(argv[0], argv.slice(1), { encoding: "utf8", env: { ...base, ...env }, input, cwd, timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** Every entry under `dir` (itself included): owner, mode and, for files, the bytes. */
function tree(dir) {
  const entries = [dir, ...readdirSync(dir, { recursive: true }).map((name) => join(dir, name))];
  return Object.fromEntries(
    entries.sort().map((p) => {
      const st = lstatSync(p);
      return [p, { uid: st.uid, gid: st.gid, mode: (st.mode & 0o7777).toString(8), bytes: st.isFile() ? readFileSync(p, "base64") : null }];
    }),
  );
}

const mode = (p) => lstatSync(p).mode & 0o777;

test("root writing a new pool where a user keeps theirs (sudo -E, a root service) is refused with POOL_INSECURE before anything is made: the user's pool stays theirs", {
  skip: asOthers,
}, () => {
  const base = scratch();
  for (const setup of ["a home without ~/.aidevops", "a ~/.aidevops the user made"]) {
    const bare = setup.startsWith("a home");
    const home = homeOf(base, USER, bare ? "bare" : "made");
    if (!bare) {
      mkdirSync(join(home, ".aidevops"), { mode: 0o700 });
      chownSync(join(home, ".aidevops"), USER, USER);
    }
    const before = tree(home);
    // sudo -E keeps the user's HOME: the default pool path is the user's.
    const asRoot = [
      cli(["add-key", "--email", "root@x.test"], { env: { HOME: home }, input: `${fakeKey("root")}\n` }),
      cli(["reset-cooldowns"], { env: { HOME: home } }),
      cli(["serve", "--show-key"], { env: { HOME: home } }),
    ];
    for (const r of asRoot) {
      assert.equal(r.code, 1, `${setup}: ${r.out}${r.err}`);
      assert.match(r.err, /\[(POOL_INSECURE|INVALID_ARGUMENT)\]/, setup);
      assert.match(r.err, new RegExp(`belongs to uid ${USER}.*run this as uid ${USER}`), setup);
    }
    assert.match(asRoot[0].err, /\[POOL_INSECURE\]/);
    assert.deepEqual(tree(home), before, `${setup}: nothing was made or changed`);
    // The user goes on as if root had never tried.
    const added = cli(["add-key", "--email", "user@x.test"], { uid: USER, env: { HOME: home }, input: `${fakeKey("user")}\n` });
    assert.equal(added.code, 0, added.err);
    const listed = cli(["list", "--json"], { uid: USER, env: { HOME: home } });
    assert.equal(listed.code, 0, listed.err);
    assert.match(listed.out, /user@x\.test/);
    const key = cli(["serve", "--show-key"], { uid: USER, env: { HOME: home } });
    assert.equal(key.code, 0, key.err);
    for (const [p, st] of Object.entries(tree(home))) assert.equal(st.uid, USER, `${p} is the user's`);
  }
});

test("root over a user's existing pool: every command is refused with POOL_INSECURE naming the uid to run as, and the file, its .bak, lock and key stay as they were", {
  skip: asOthers,
}, () => {
  const base = scratch();
  const home = homeOf(base, USER);
  const env = { HOME: home };
  for (const email of ["a@x.test", "b@x.test"]) {
    const r = cli(["add-key", "--email", email], { uid: USER, env, input: `${fakeKey(email[0])}\n` });
    assert.equal(r.code, 0, r.err);
  }
  assert.equal(cli(["serve", "--show-key"], { uid: USER, env }).code, 0);
  const before = tree(home);
  for (const args of [["add-key", "--email", "root@x.test"], ["remove", "a@x.test"], ["reset-cooldowns"], ["disable", "a@x.test"], ["list"]]) {
    const r = cli(args, { env, input: `${fakeKey("root")}\n` });
    assert.equal(r.code, 1, `${args[0]}: ${r.out}`);
    assert.match(r.err, /\[POOL_INSECURE\]/, args[0]);
    assert.match(r.err, new RegExp(`owned by uid ${USER}.*run this as uid ${USER}`), args[0]);
  }
  assert.deepEqual(tree(home), before, "owner, mode and bytes of every file unchanged");
  assert.equal(cli(["list"], { uid: USER, env }).code, 0);
});

test("another user's pool file that this user cannot even open is POOL_INSECURE naming its owner (as doctor says), not an I/O error", {
  skip: asOthers,
}, () => {
  const shared = join(scratch(), "shared");
  mkdirSync(shared);
  chmodSync(shared, 0o1777); // /tmp-like: sticky, everyone writes
  const path = join(shared, "pool.json");
  const added = cli(["add-key", "--email", "a@x.test"], { uid: USER, env: { OAUTH_POOL_PATH: path }, input: `${fakeKey("a")}\n` });
  assert.equal(added.code, 0, added.err);
  const before = tree(shared);
  for (const args of [["list"], ["reset-cooldowns"]]) {
    const r = cli(args, { uid: OTHER, env: { OAUTH_POOL_PATH: path } });
    assert.equal(r.code, 1, r.out);
    assert.match(r.err, new RegExp(`\\[POOL_INSECURE\\].*owned by uid ${USER}`), args[0]);
  }
  assert.deepEqual(tree(shared), before);
});

test("a home that is no absolute path, and ~/ with no home: INVALID_ARGUMENT, and no pool is made under the working directory", {
  skip: !posix && "HOME is not where Windows keeps the home",
}, () => {
  const cwd = scratch();
  for (const env of [{ HOME: "relative-home" }, { HOME: "." }, { OAUTH_POOL_PATH: "~/pool.json" }, { HOME: "", OAUTH_POOL_PATH: "~/pool.json" }]) {
    for (const args of [["add-key", "--email", "a@x.test"], ["list"]]) {
      const r = cli(args, { env, cwd, input: `${fakeKey("a")}\n` });
      assert.equal(r.code, 1, `${JSON.stringify(env)} ${args[0]}: ${r.out}`);
      assert.match(r.err, /\[INVALID_ARGUMENT\].*(home directory|absolute)/, JSON.stringify(env));
    }
  }
  assert.deepEqual(readdirSync(cwd), [], "nothing made under the working directory");
});

test("the plugin's path option ~/… under a home that is no absolute path: INVALID_ARGUMENT, as the variable and the CLI, not a path under the working directory", {
  skip: !posix && "HOME is not where Windows keeps the home",
}, () => {
  // The runtime's os.homedir() is HOME as the process was started with it: the plugin expanded
  // `~/pool.json` to `relative-home/pool.json`, which the library took as a relative path.
  const cwd = scratch();
  const probe = join(cwd, "probe.mjs");
  const shared = new URL("../lib/plugin/shared.mjs", import.meta.url).href;
  writeFileSync(
    probe,
    `const { poolPath } = await import(${JSON.stringify(shared)});
     for (const path of ["~/pool.json", "~"]) {
       try { console.log(JSON.stringify([path, poolPath({ path })])); }
       catch (e) { console.log(JSON.stringify([path, e.code, e.message])); }
     }`,
  );
  const run = (HOME) => {
    const r = spawnSync(process.execPath, [probe], { cwd, env: { ...process.env, HOME }, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l));
  };
  for (const relative of ["relative-home", "."]) {
    for (const [path, code, message] of run(relative)) {
      assert.equal(code, "INVALID_ARGUMENT", `HOME=${relative} path ${path}: ${code}`);
      assert.match(message, /home directory|absolute/);
    }
  }
  const home = tempDir("oauth-pool-home-");
  assert.deepEqual(run(home)[0], ["~/pool.json", join(home, "pool.json")], "a home that is absolute is expanded");
});

test("umask 000 and 077: a new pool directory is 0700 and every file in it 0600 (pool, .bak, lock, gateway key)", {
  skip: !posix && "no umask here",
}, () => {
  for (const umask of ["000", "077"]) {
    const base = scratch();
    const path = join(base, "made", "pool.json");
    const uid = isRoot && hasSetpriv ? USER : undefined;
    if (uid !== undefined) chownSync(base, USER, USER);
    const env = { OAUTH_POOL_PATH: path };
    for (const email of ["a@x.test", "b@x.test"]) {
      const r = cli(["add-key", "--email", email], { uid, umask, env, input: `${fakeKey(email[0])}\n` });
      assert.equal(r.code, 0, r.err);
    }
    assert.equal(cli(["serve", "--show-key"], { uid, umask, env }).code, 0);
    assert.equal(mode(join(base, "made")), 0o700, `umask ${umask}: directory`);
    for (const suffix of ["", ".bak", ".lock", ".gateway-key"]) assert.equal(mode(`${path}${suffix}`), 0o600, `umask ${umask}: pool.json${suffix}`);
  }
});

test("umask 0277 and 0377 (the owner's own bits taken): the pool, an add, a request with a refresh, a refresh, list and the gateway all work, directories 0700 and files 0600", {
  // Root reads and writes whatever the mode: only another uid meets what a user does.
  skip: (!posix && "no umask here") || (isRoot && !hasSetpriv && "running as another uid needs util-linux's setpriv"),
}, async () => {
  for (const umask of ["0277", "0377"]) {
    const base = scratch();
    const uid = isRoot ? USER : undefined;
    const home = uid === undefined ? join(base, "home") : homeOf(base, uid);
    if (uid === undefined) mkdirSync(home, { mode: 0o755 });
    const email = `umask-${umask}@x.test`;
    const env = { HOME: home, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
    const steps = await umaskWorker({ uid, umask, env, email });
    assert.deepEqual(steps, { save: "ok", add: true, fetch: 200, refresh: "refreshed", gateway: "key made" }, `umask ${umask}`);
    const list = cli(["list", "--json"], { uid, umask, env });
    assert.equal(list.code, 0, `umask ${umask}: list: ${list.err}`);
    assert.match(list.out, new RegExp(email));
    const dir = join(home, ".aidevops");
    const made = tree(dir);
    for (const name of ["oauth-pool.json", "oauth-pool.json.bak", "oauth-pool.json.lock", "oauth-pool.json.gateway-key", "oauth-pool-refreshes.json"]) {
      assert.ok(join(dir, name) in made, `umask ${umask}: ${name} was made`);
    }
    for (const [p, { mode: m, bytes }] of Object.entries(made)) {
      assert.equal(m, bytes === null ? "700" : "600", `umask ${umask}: ${p}`);
    }
  }
});

/** The umask worker (helpers/umask-worker.mjs) as `uid` when given, under `umask`: its steps. */
async function umaskWorker({ uid, umask, env, email }) {
  const worker = fileURLToPath(new URL("./helpers/umask-worker.mjs", import.meta.url));
  const entries = [oauthEntry(mock, email, { expired: true })];
  let argv = [process.execPath, worker, JSON.stringify({ entries, messagesUrl: messagesUrl(mock), email })];
  argv = ["sh", "-c", `umask ${umask} && exec "$@"`, "sh", ...argv];
  if (uid !== undefined) argv = ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", ...argv];
  // Not spawnSync: the mock answering the worker runs in this process.
  const r = await new Promise((resolve) => {
    execFile(
      argv[0],
      argv.slice(1),
      { env: { PATH: process.env.PATH, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0", ...env }, timeout: 60_000 },
      (error, stdout, stderr) => resolve({ status: error ? (error.code ?? error.signal) : 0, stdout, stderr }),
    );
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
}

// README, Hostile OS: a pool directory its owner cannot write in keeps its mode. An earlier
// build gave such a directory its owner's bits back (meant for one an older build had left 0500
// under umask 0277), and so undid a person's `chmod -R u-w`, made to keep the pool as it is, at
// the next request. Reads go on; writes are POOL_IO naming the directory, before any refresh
// token is spent.
test("a pool directory made read-only by its owner (chmod -R u-w: directories 0500, files 0400) keeps its mode: list and a request with a valid token go on, every write is POOL_IO naming the directory, no refresh token spent, nothing changed", {
  // Root reads and writes whatever the mode: only another uid meets what a user does.
  skip: (!posix && "no modes here") || (isRoot && !hasSetpriv && "running as another uid needs util-linux's setpriv"),
}, async () => {
  const base = scratch();
  const uid = isRoot ? USER : undefined;
  const home = uid === undefined ? join(base, "home") : homeOf(base, uid);
  if (uid === undefined) mkdirSync(home, { mode: 0o755 });
  const env = { HOME: home, OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const dir = join(home, ".aidevops");
  // Everything made once (the pool, its .bak and lock, an account's refresh lock, the refresh
  // journal and its lock, the gateway key): the account refreshed, its token valid.
  const first = await umaskWorker({ uid, umask: "077", env, email: "kept@x.test" });
  assert.deepEqual(first, { save: "ok", add: true, fetch: 200, refresh: "refreshed", gateway: "key made" });
  for (const p of Object.keys(tree(dir))) chmodSync(p, lstatSync(p).isDirectory() ? 0o500 : 0o400);
  const before = tree(dir);
  const spent = mock.tokenRequests.length;
  const steps = await umaskWorker({ uid, umask: "077", env, email: "kept@x.test" });
  const escaped = dir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const refused = new RegExp(`^failed: POOL_IO pool file .*${escaped}: write in the pool's directory failed: it is mode 0500.*chmod u\\+w ${escaped}`);
  for (const name of ["save", "add", "refresh"]) assert.match(String(steps[name]), refused, `${name}: ${JSON.stringify(steps)}`);
  assert.match(steps.refresh, /the stored refresh token is unspent/);
  assert.equal(steps.fetch, 200, JSON.stringify(steps));
  assert.equal(steps.gateway, "no key made");
  assert.equal(mock.tokenRequests.length, spent, "no refresh token was spent");
  assert.deepEqual(tree(dir), before, "every mode and byte as the owner left them");
  const list = cli(["list", "--json"], { uid, umask: "077", env });
  assert.equal(list.code, 0, list.err);
  assert.match(list.out, /kept@x\.test/);
});

test("a directory or lock file at 0500/0400 that is not the user's own, or is reached through a symbolic link, keeps its mode", {
  skip: (!posix && "no modes here") || asOthers,
}, () => {
  const base = scratch();
  const home = homeOf(base, USER);
  const env = { HOME: home };
  // The pool's directory a link to one of the user's, left 0500: the link is not followed.
  const real = join(home, "real");
  mkdirSync(real, { mode: 0o500 });
  chmodSync(real, 0o500);
  chownSync(real, USER, USER);
  symlinkSync(real, join(home, "linked"));
  const viaLink = cli(["add-key", "--email", "a@x.test"], {
    uid: USER,
    env: { ...env, OAUTH_POOL_PATH: join(home, "linked", "pool.json") },
    input: `${fakeKey("a")}\n`,
  });
  assert.notEqual(viaLink.code, 0, "nothing can be written in it");
  assert.equal(mode(real), 0o500, "the directory behind the link keeps its mode");
  // A lock file of root's (0400) beside the user's pool, and one that is a link to a file of the user's.
  const pool = join(home, "pools");
  mkdirSync(pool, { mode: 0o700 });
  chownSync(pool, USER, USER);
  const path = join(pool, "pool.json");
  writeFileSync(`${path}.lock`, "");
  chmodSync(`${path}.lock`, 0o400);
  const rootsLock = cli(["add-key", "--email", "b@x.test"], { uid: USER, env: { ...env, OAUTH_POOL_PATH: path }, input: `${fakeKey("b")}\n` });
  assert.notEqual(rootsLock.code, 0);
  assert.match(rootsLock.err, /owned by uid 0/);
  assert.equal(mode(`${path}.lock`), 0o400, "root's lock keeps its mode");
  assert.equal(lstatSync(`${path}.lock`).uid, 0);
  const target = join(home, "target");
  writeFileSync(target, "");
  chmodSync(target, 0o400);
  chownSync(target, USER, USER);
  const linked = join(pool, "other.json");
  symlinkSync(target, `${linked}.lock`);
  const viaLinkedLock = cli(["add-key", "--email", "c@x.test"], { uid: USER, env: { ...env, OAUTH_POOL_PATH: linked }, input: `${fakeKey("c")}\n` });
  assert.notEqual(viaLinkedLock.code, 0);
  assert.match(viaLinkedLock.err, /symbolic link/);
  assert.equal(mode(target), 0o400, "the file behind a linked lock keeps its mode");
});

test("a pool file of mode 0400 is replaced by a write (the new file 0600), and one left wider is tightened before its .bak is made", {
  skip: !posix && "no modes here",
}, async () => {
  const { setPriority } = await import("../index.mjs");
  for (const wide of [0o400, 0o644, 0o606]) {
    const path = await seedPool(mock, [`mode-${wide.toString(8)}@x.test`]);
    const before = readFileSync(path);
    chmodSync(path, wide);
    await setPriority(`mode-${wide.toString(8)}@x.test`, 2, path);
    assert.equal(mode(path), 0o600, `pool file once ${wide.toString(8)}`);
    assert.equal(mode(`${path}.bak`) & 0o077, 0, `its .bak, once ${wide.toString(8)}, is readable by no one else`);
    assert.deepEqual(readFileSync(`${path}.bak`), before, "the .bak is the previous generation");
    assert.equal(JSON.parse(readFileSync(path, "utf8")).anthropic[0].priority, 2);
  }
});

test("a read-only bind of the pool file: a valid token keeps serving, writes fail with POOL_IO, and the file keeps every byte", async (t) => {
  if (process.platform !== "linux" || !isRoot) return t.skip("a bind mount needs root on Linux");
  const { createPoolFetch, savePool, removeAccount, loadPool } = await import("../index.mjs");
  const path = await seedPool(mock, ["ro-bind@x.test"]);
  try {
    execFileSync("mount", ["--bind", "-o", "ro", path, path], { stdio: "ignore" });
  } catch {
    return t.skip("mount is not allowed here");
  }
  try {
    const bytes = readFileSync(path);
    const res = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    await res.text();
    assert.equal(res.status, 200);
    const pool = await loadPool(path);
    await assert.rejects(savePool({ ...pool, note: 1 }, path), (e) => e.code === "POOL_IO");
    await assert.rejects(removeAccount("ro-bind@x.test", path), (e) => e.code === "POOL_IO");
    assert.deepEqual(readFileSync(path), bytes);
  } finally {
    execFileSync("umount", [path], { stdio: "ignore" });
  }
});

test("doctor calls a pool directory others can write (no sticky bit) a place they can delete or replace the pool file", {
  skip: !posix && "no mode bits here",
}, () => {
  const dir = join(scratch(), "open");
  mkdirSync(dir);
  chmodSync(dir, 0o777);
  const env = { OAUTH_POOL_PATH: join(dir, "pool.json") };
  const open = cli(["doctor"], { env });
  assert.equal(open.code, 3, open.err);
  assert.match(open.out, /other users can delete or replace the pool file/);
  chmodSync(dir, 0o1777);
  const sticky = cli(["doctor"], { env });
  assert.doesNotMatch(sticky.out, /delete or replace/);
  assert.match(sticky.out, /others can list it/);
});

test("files of root's left in a user's home by an earlier version run with sudo: the user is told what to do (POOL_INSECURE, not Permission denied), and once done, carries on", {
  skip: asOthers,
}, () => {
  const home = homeOf(scratch(), USER);
  const env = { HOME: home };
  const path = join(home, ".aidevops", "oauth-pool.json");
  assert.equal(cli(["add-key", "--email", "a@x.test"], { uid: USER, env, input: `${fakeKey("a")}\n` }).code, 0);
  chownSync(`${path}.lock`, 0, 0);
  const locked = cli(["add-key", "--email", "b@x.test"], { uid: USER, env, input: `${fakeKey("b")}\n` });
  assert.equal(locked.code, 1);
  assert.match(locked.err, /\[POOL_INSECURE\].*lock file is owned by uid 0.*remove it/);
  chownSync(path, 0, 0);
  const listed = cli(["list"], { uid: USER, env });
  assert.equal(listed.code, 1);
  assert.match(listed.err, /\[POOL_INSECURE\].*owned by uid 0.*sudo chown/);
  // What the messages say: the pool given back, the lock file removed (the user's directory).
  chownSync(path, USER, USER);
  assert.equal(spawnSync("setpriv", [`--reuid=${USER}`, `--regid=${USER}`, "--clear-groups", "rm", "-f", `${path}.lock`]).status, 0);
  assert.equal(cli(["add-key", "--email", "b@x.test"], { uid: USER, env, input: `${fakeKey("b")}\n` }).code, 0);
  assert.match(cli(["list"], { uid: USER, env }).out, /a@x\.test[\s\S]*b@x\.test/);
});

test("in a shared directory, another user's lock file (left writable) or .bak beside a user's pool: the lock is POOL_INSECURE at once, not a minute's wait ending in POOL_BUSY; the .bak is never offered as the pool's last good copy", {
  skip: asOthers,
}, () => {
  // Found by a review: the other user could hold the lock for ever, and every write waited out
  // its minute as if one of the user's processes did; a planted .bak was named in POOL_CORRUPT's
  // advice, "restore it with cp", which would put the other user's login into the pool.
  const base = scratch();
  const shared = join(base, "shared");
  mkdirSync(shared);
  chmodSync(shared, 0o1777);
  const env = { HOME: homeOf(base, USER), OAUTH_POOL_PATH: join(shared, "pool.json") };
  const path = env.OAUTH_POOL_PATH;
  assert.equal(cli(["add-key", "--email", "a@x.test"], { uid: USER, env, input: `${fakeKey("a")}\n` }).code, 0);
  const own = (p) => spawnSync("setpriv", [`--reuid=${OTHER}`, `--regid=${OTHER}`, "--clear-groups", "sh", "-c", p]).status;
  // The user's lock removed, then another's made in its place, writable by all.
  assert.equal(spawnSync("setpriv", [`--reuid=${USER}`, `--regid=${USER}`, "--clear-groups", "rm", "-f", `${path}.lock`]).status, 0);
  assert.equal(own(`umask 0; : > '${path}.lock'; chmod 666 '${path}.lock'`), 0);
  const started = Date.now();
  const locked = cli(["add-key", "--email", "b@x.test"], { uid: USER, env, input: `${fakeKey("b")}\n` });
  assert.equal(locked.code, 1, locked.out);
  assert.match(locked.err, new RegExp(`\\[POOL_INSECURE\\].*lock file is owned by uid ${OTHER}.*remove it`));
  assert.ok(Date.now() - started < 20_000, `${Date.now() - started} ms`);
  assert.equal(spawnSync("setpriv", [`--reuid=${OTHER}`, `--regid=${OTHER}`, "--clear-groups", "rm", "-f", `${path}.lock`]).status, 0);
  // Another's .bak in place of the user's, then the pool spoiled.
  assert.equal(spawnSync("setpriv", [`--reuid=${USER}`, `--regid=${USER}`, "--clear-groups", "rm", "-f", `${path}.bak`]).status, 0);
  const theirs = JSON.stringify({ version: 1, anthropic: [{ type: "api", email: "theirs@x.test", key: fakeKey("t") }] });
  assert.equal(own(`umask 022; printf '%s' '${theirs}' > '${path}.bak'`), 0);
  assert.equal(spawnSync("setpriv", [`--reuid=${USER}`, `--regid=${USER}`, "--clear-groups", "sh", "-c", `printf '{"anthropic": [' > '${path}'`]).status, 0);
  const corrupt = cli(["list"], { uid: USER, env });
  assert.equal(corrupt.code, 1);
  assert.match(corrupt.err, /\[POOL_CORRUPT\]/);
  assert.doesNotMatch(corrupt.err, /last good copy|cp /, corrupt.err);
});
