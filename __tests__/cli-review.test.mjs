// The CLI's list, status and doctor against pools and OpenCode configs a person or another program
// left in odd shapes: a name doctor's lock probe once had, names holding pieces of the pool's own
// keys, an account named like an unreadable entry's place, configs nested thousands deep, and a
// config file this user may not read. Each case runs the CLI in a child with a HOME of its own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { mergeUserWins } from "../lib/plugin/config.mjs";
import { CLI, runCli } from "./helpers/cli-sandbox.mjs";
import { tempDir } from "./helpers/temp.mjs";

const tmp = tempDir("oauth-pool-cli-review-");
// Every uid passes through it: one case runs the CLI as another user.
chmodSync(tmp, 0o755);

// What of this machine's environment would change what the CLI reports.
const SCRUBBED = /^(oauth_pool_|https?_proxy$|all_proxy$|no_proxy$|opencode_|xdg_)/i;

/** A user of their own: a HOME, a project (a git root) and a pool path in its own directory. */
function user() {
  const dir = mkdtempSync(join(tmp, "user-"));
  chmodSync(dir, 0o755);
  const box = { dir, home: join(dir, "home"), project: join(dir, "project"), pool: join(dir, "pool", "oauth-pool.json") };
  for (const d of [join(box.home, ".config", "opencode"), join(box.project, ".git")]) mkdirSync(d, { recursive: true });
  return box;
}

/** The environment of that user's CLI, `extra` over it (undefined: unset). */
function envOf(box, extra = {}) {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.test(k)));
  const env = {
    ...base,
    HOME: box.home,
    USERPROFILE: box.home,
    XDG_CONFIG_HOME: join(box.home, ".config"),
    OAUTH_POOL_PATH: box.pool,
    PWD: box.project,
    ...extra,
  };
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];
  return env;
}

const cli = (box, args, extra) => runCli(args, { env: envOf(box, extra), cwd: box.project });

/** The entries written as they are (no library check of names), 0600 in a 0700 directory. */
function writePool(box, anthropic) {
  mkdirSync(join(box.dir, "pool"), { recursive: true, mode: 0o700 });
  writeFileSync(box.pool, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
}

/**
 * A Console key made at run time (no token-shaped literal here), and its body. The body starts
 * with a letter: typed where a name goes, one starting with "-" is an option to the CLI.
 */
function makeKey() {
  const body = `K${randomBytes(45).toString("base64url")}`;
  return { key: ["sk", "ant", "api03", body].join("-"), body };
}

const keyEntry = (email, key, extra = {}) => ({
  email,
  type: "api",
  key,
  added: new Date().toISOString(),
  lastUsed: null,
  status: "idle",
  rateLimitUntil: null,
  ...extra,
});

/** `doctor --json`'s report (the last line of stdout). */
function report(r) {
  assert.notEqual(r.code, "SIGKILL", "doctor did not finish within a minute");
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
}

/** Every window of 12 characters of `secrets` found in `text`, in any ASCII case. */
function pieces(text, secrets) {
  const lower = text.toLowerCase();
  const found = [];
  for (const s of secrets) {
    for (let i = 0; i + 12 <= s.length; i++) {
      const w = s.slice(i, i + 12).toLowerCase();
      if (lower.includes(w)) found.push(`${w}: …${text.slice(Math.max(0, lower.indexOf(w) - 80), lower.indexOf(w) + 20)}…`);
    }
  }
  return found;
}

test("doctor's lock probe never removes an account: one named as the old probe, in any case, survives byte for byte, and the lock is still probed", async () => {
  for (const name of ["doctor-lock-probe@oauth-pool.invalid", "Doctor-Lock-Probe@OAuth-Pool.INVALID"]) {
    const box = user();
    writePool(box, [keyEntry(name, makeKey().key), keyEntry("other@x.test", makeKey().key)]);
    // The probe runs only on a lock file that is there (the first write makes it).
    writeFileSync(`${box.pool}.lock`, "", { mode: 0o600 });
    const before = readFileSync(box.pool);
    for (const args of [["doctor", "--json"], ["doctor"]]) {
      const r = await cli(box, args);
      assert.ok(r.code === 0 || r.code === 3, `${name}: ${args.join(" ")} exit ${r.code}: ${r.stdout}${r.stderr}`);
      assert.deepEqual(readFileSync(box.pool), before, `${name}: ${args.join(" ")} left the pool as it was`);
      if (args[1] !== "--json") continue;
      const lock = report(r).checks.filter((c) => c.name === "lock");
      assert.equal(lock.length, 1, JSON.stringify(lock));
      assert.equal(lock[0].level, "ok");
      assert.match(lock[0].message, /oauth-pool\.json\.lock can be taken/);
    }
    const list = JSON.parse((await cli(box, ["list", "--json"])).stdout);
    assert.deepEqual(
      list.accounts.map((a) => a.email),
      [name, "other@x.test"],
    );
  }
});

test("list, status and doctor show a name holding a piece of the pool's keys without it, by its #N; errors quoting a key typed as a name leave it out; --json keeps names exact", async () => {
  const box = user();
  const [a, b, c] = [makeKey(), makeKey(), makeKey()];
  // A key's whole body lower-cased (as an import stores names), and a piece of another inside a
  // longer name, whose run neither is nor holds a key.
  const whole = a.body.toLowerCase();
  const inside = `team-${b.body.slice(5, 35).toUpperCase()}@x.test`;
  writePool(box, [keyEntry(whole, a.key), keyEntry(inside, b.key, { status: "auth-error", lastError: "refused" }), keyEntry("plain@x.test", c.key)]);
  const secrets = [a.key, b.key, c.key];
  const views = {};
  for (const args of [["list"], ["status"], ["doctor"], ["doctor", "--json"]]) {
    const r = await cli(box, args);
    // doctor --json: its messages are prose for a person; its fields are data.
    views[args.join(" ")] =
      args[1] === "--json"
        ? report(r)
            .checks.map((x) => x.message)
            .join("\n") + r.stderr
        : r.stdout + r.stderr;
  }
  // The account commands given a key, or a piece of one, where a name goes: in the text error and
  // the JSON one. None of these names an account.
  for (const args of [
    ["remove", b.body],
    ["enable", b.body.toLowerCase()],
    ["refresh", b.key.toUpperCase()],
    ["priority", b.body.slice(0, 40), "1"],
    ["reserve", c.body.toLowerCase(), "0.2"],
  ]) {
    for (const json of [[], ["--json"]]) {
      const r = await cli(box, [...args, ...json]);
      assert.equal(r.code, 1, `${args[0]}: ${r.stdout}${r.stderr}`);
      const said = json.length ? JSON.parse(r.stdout).error : { code: /^error \[(\w+)\]/.exec(r.stderr)?.[1] };
      assert.equal(said.code, "ACCOUNT_NOT_FOUND", `${args[0]}: ${r.stdout}${r.stderr}`);
      views[`${args[0]} ${json.join("")}`] = r.stdout + r.stderr;
    }
  }
  // An account named by its place: what it did says whose it was, without the piece.
  const disabled = await cli(box, ["disable", "#1"]);
  assert.equal(disabled.code, 0, disabled.stderr);
  views["disable #1"] = disabled.stdout + disabled.stderr;
  assert.deepEqual(
    Object.entries(views).flatMap(([where, text]) => pieces(text, secrets).map((p) => `${where}: ${p}`)),
    [],
  );
  assert.match(views.list, /^\[redacted\] \(#0\) +api/m, views.list);
  assert.match(views.list, /^team-\[redacted\]@x\.test \(#1\) +api/m, views.list);
  assert.match(views.list, /^plain@x\.test +api/m, views.list);
  assert.match(views.status, /^ {2}\[redacted\] \(#0\) \(api\)/m, views.status);
  // doctor names it by the place its commands take.
  assert.match(views.doctor, /its API key was refused .*oauth-pool remove '#1', then oauth-pool add-key --email <a name>/, views.doctor);
  // --json is data for scripts, which act on the exact name.
  const list = JSON.parse((await cli(box, ["list", "--json"])).stdout);
  assert.deepEqual(
    list.accounts.map((x) => x.email),
    [whole, inside, "plain@x.test"],
  );
});

test("list, status and doctor never tell to remove an unreadable entry by '#N' while an account is named '#N': that names the account", async () => {
  const box = user();
  writePool(box, [keyEntry("a@x.test", makeKey().key), "broken entry", keyEntry("#1", makeKey().key)]);
  const texts = {};
  for (const args of [["list"], ["status"], ["doctor"]]) texts[args[0]] = (await cli(box, args)).stdout;
  for (const [command, text] of Object.entries(texts)) {
    assert.doesNotMatch(text, /oauth-pool remove '#1'/, `${command}: ${text}`);
    assert.match(text, /once the account named '#1' is renamed/, `${command}: ${text}`);
  }
  // Without such a name, the place is what to give.
  const plain = user();
  writePool(plain, [keyEntry("a@x.test", makeKey().key), "broken entry", keyEntry("b@x.test", makeKey().key)]);
  for (const args of [["list"], ["status"], ["doctor"]]) {
    assert.match((await cli(plain, args)).stdout, /remove it with: oauth-pool remove '#1'/, args[0]);
  }
});

test("mergeUserWins: configs merge key by key as before, and past 64 levels the user's value wins whole instead of overflowing the stack", () => {
  assert.deepEqual(mergeUserWins({ a: 1, p: { x: { m: 1, n: 2 }, y: [1] }, keep: true }, { a: 2, p: { x: { n: 3, o: 4 }, y: [2] }, z: null }), {
    a: 2,
    p: { x: { m: 1, n: 3, o: 4 }, y: [2] },
    keep: true,
    z: null,
  });
  assert.deepEqual(mergeUserWins({ a: 1 }, undefined), { a: 1 });
  assert.equal(Object.getPrototypeOf(mergeUserWins({}, JSON.parse('{"__proto__": {"polluted": 1}}'))), Object.prototype);
  const nested = (depth, leaf) => {
    let v = leaf;
    for (let i = 0; i < depth; i++) v = { a: v };
    return v;
  };
  // 60 levels merge through; the deepest levels of two 100-deep ones are the user's whole.
  assert.deepEqual(mergeUserWins(nested(60, { b: 1 }), nested(60, { c: 2 })), nested(60, { b: 1, c: 2 }));
  assert.deepEqual(mergeUserWins(nested(100, { b: 1 }), nested(100, { c: 2 })), nested(100, { c: 2 }));
  assert.doesNotThrow(() => mergeUserWins(nested(10_000, 1), nested(10_000, 2)));
});

test("doctor finishes its report on OpenCode configs sharing a key nested 10,000 deep, and a failure of its OpenCode check is a warning row, not its end", async () => {
  const box = user();
  const deep = `{"plugin":["opencode-oauth-pool"],"x":${'{"a":'.repeat(10_000)}1${"}".repeat(10_000)}}`;
  writeFileSync(join(box.home, ".config", "opencode", "opencode.json"), deep);
  writeFileSync(join(box.project, "opencode.json"), deep);
  const r = await cli(box, ["doctor", "--json"]);
  const doc = report(r);
  assert.equal(doc.error, undefined, r.stdout);
  assert.ok(r.code === 0 || r.code === 3, `exit ${r.code}: ${r.stderr}`);
  assert.ok(
    doc.checks.some((c) => c.name === "opencode plugin" && c.level === "ok"),
    JSON.stringify(doc.checks),
  );
  // A store variable the library refuses, read by the OpenCode check alone (the pool is --path's):
  // doctor ended there with its code, the report lost.
  const other = user();
  writeFileSync(join(other.home, ".config", "opencode", "opencode.json"), '{"plugin":["opencode-oauth-pool"]}');
  const failed = await cli(other, ["doctor", "--json", "--path", other.pool], { OAUTH_POOL_PATH: undefined, OAUTH_POOL_STORE: "not-a-url" });
  const checks = report(failed).checks;
  assert.ok(failed.code === 0 || failed.code === 3, `exit ${failed.code}: ${failed.stdout}${failed.stderr}`);
  assert.ok(
    checks.some((c) => c.name === "opencode plugin" && c.level === "ok"),
    JSON.stringify(checks),
  );
  assert.ok(
    checks.some((c) => c.level === "warn" && /OAUTH_POOL_STORE/.test(c.message)),
    JSON.stringify(checks),
  );
  assert.ok(
    checks.some((c) => c.name === "setting" || c.name === "endpoint"),
    "the checks before it are all there",
  );
});

const isRoot = process.getuid?.() === 0;
const hasSetpriv = process.platform === "linux" && spawnSync("setpriv", ["--version"]).status === 0;
// A plain uid with no passwd entry needed: setpriv sets it as it is.
const NOBODY = 65534;

test("doctor says an OpenCode config file it may not read is there, unread, with the error; never 'no OpenCode config file here'", {
  skip: (process.platform === "win32" && "POSIX modes") || (isRoot && !hasSetpriv && "running as another uid needs util-linux's setpriv"),
}, async (t) => {
  const box = user();
  const file = join(box.home, ".config", "opencode", "opencode.json");
  writeFileSync(file, '{"plugin":["opencode-oauth-pool"]}');
  chmodSync(file, 0o000);
  let r;
  if (isRoot) {
    // Mode 000 does not stop root: the CLI runs as another uid, which owns the user's files.
    spawnSync("chown", ["-R", `${NOBODY}:${NOBODY}`, box.dir]);
    const env = { PATH: process.env.PATH, HOME: box.home, OAUTH_POOL_PATH: box.pool, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" };
    const argv = ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", process.execPath, CLI, "doctor", "--json"];
    const s = spawnSync(argv[0], argv.slice(1), { encoding: "utf8", env, cwd: box.project, timeout: 60_000 });
    r = { code: s.status, stdout: s.stdout, stderr: s.stderr };
  } else {
    try {
      readFileSync(file);
      return t.skip("mode 000 does not stop this user's reads");
    } catch {}
    r = await cli(box, ["doctor", "--json"]);
  }
  const checks = report(r).checks;
  const unread = checks.filter((c) => c.name === "opencode config" && c.file === file);
  assert.equal(unread.length, 1, JSON.stringify(checks));
  assert.equal(unread[0].level, "warn");
  assert.equal(unread[0].code, "EACCES");
  assert.match(unread[0].message, /opencode\.json is left unread \(a file that cannot be read \(EACCES\)\)/);
  assert.ok(!checks.some((c) => /no OpenCode config file here/.test(c.message)), JSON.stringify(checks));
});

test("remove against a fleet store that takes the connection and never answers: STORE_UNAVAILABLE after one wait for it, not two", async () => {
  // Found by a review: remove read the pool's keys first (to leave them out of its output), took
  // the store's silence for "no keys", then asked the store again and waited as long again.
  const { createServer } = await import("node:net");
  const held = [];
  const silent = createServer((s) => held.push(s));
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  try {
    const box = user();
    const store = `postgres://u@127.0.0.1:${silent.address().port}/db?sslmode=disable`;
    const started = Date.now();
    const r = await cli(box, ["remove", "nobody@x.test"], { OAUTH_POOL_STORE: store, OAUTH_POOL_STORE_KEY: "ab".repeat(32), OAUTH_POOL_PATH: undefined });
    const took = Date.now() - started;
    assert.equal(r.code, 1, r.stdout);
    assert.match(r.stderr, /STORE_UNAVAILABLE/);
    // The store's connect timeout is 10 s: one wait, with room for a slow machine.
    assert.ok(took < 17_000, `${took} ms`);
  } finally {
    for (const s of held) s.destroy();
    silent.close();
  }
});

test("store copy names the accounts it replaced without a piece of their keys, as list shows them; --json keeps them exact", async () => {
  const box = user();
  const [a, b] = [makeKey(), makeKey()];
  // The target's account is named with a piece of its own key (a hand edit): gone from the
  // target after the copy, its key is no longer there to tell the piece by.
  const piece = b.body.slice(3, 48);
  writePool(box, [keyEntry(piece, b.key)]);
  const from = join(box.dir, "from.json");
  writeFileSync(from, JSON.stringify({ version: 1, anthropic: [keyEntry("kept@x.test", a.key)] }), { mode: 0o600 });
  const listed = await cli(box, ["list"]);
  assert.ok(!listed.stdout.includes(piece.slice(0, 20)), listed.stdout);
  const copied = await cli(box, ["store", "copy", "--from", from, "--to", box.pool]);
  assert.equal(copied.code, 0, copied.stdout + copied.stderr);
  assert.match(copied.stdout, /now gone from it \(its \.bak keeps it until its next write\): \[redacted\]\./);
  assert.ok(!(copied.stdout + copied.stderr).includes(piece.slice(0, 20)), copied.stdout);
  writePool(box, [keyEntry(piece, b.key)]);
  const json = await cli(box, ["store", "copy", "--from", from, "--to", box.pool, "--json"]);
  assert.deepEqual(JSON.parse(json.stdout).replaced, [piece]);
});

test("remove '#N' of an entry itself named like a place (#0) removes that entry, not refused as a clash", async () => {
  const box = user();
  const [a, b] = [makeKey(), makeKey()];
  writePool(box, [keyEntry("a@x.test", a.key), keyEntry("#0", b.key)]);
  const removed = await cli(box, ["remove", "#1"]);
  assert.equal(removed.code, 0, removed.stdout + removed.stderr);
  assert.match(removed.stdout, /removed #1 \(#0\)/);
  assert.deepEqual(
    JSON.parse(readFileSync(box.pool, "utf8")).anthropic.map((e) => e.email),
    ["a@x.test"],
  );
});
