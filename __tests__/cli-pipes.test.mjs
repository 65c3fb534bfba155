// The `oauth-pool` CLI used from scripts and pipes: a reader of its stdout or stderr that goes
// away early, stdout that cannot take the login URL, a stdin that stays open and never sends the
// code, and a signal while `refresh` holds new tokens it has not written yet. Real child processes against a temporary pool and HOME and the
// loopback mock of Anthropic; under `bun test` the CLI itself runs under Bun.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, closeSync, existsSync, openSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { CLI, cliSandbox } from "./helpers/cli-sandbox.mjs";
import { flockAvailable, holdLock } from "./helpers/flock.mjs";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { oauthEntry } from "./helpers/pool-env.mjs";
import { savePool } from "../index.mjs";

const posix = process.platform !== "win32";
const sandbox = cliSandbox("oauth-pool-cli-pipes-");
const { freshPath } = sandbox;
let mock;
before(async () => {
  mock = await startMockAnthropic();
});
after(() => mock?.close());
const childEnv = (path) => sandbox.childEnv(path, { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url });

/**
 * Runs the CLI with the reader of stdout (`gone: "stdout"`) or of stderr (`"stderr"`) gone
 * before the CLI writes anything: the parent closes its end of the pipe at once, and the CLI
 * loads its addon before its first write. The other stream is captured.
 */
function runWithReaderGone(args, { path, gone, stdin = "ignore" }) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: childEnv(path), stdio: [stdin, "pipe", "pipe"] });
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child[gone].destroy();
    const kept = gone === "stdout" ? child.stderr : child.stdout;
    let text = "";
    kept.setEncoding("utf8");
    kept.on("data", (d) => (text += d));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, text });
    });
  });
}

async function seed(path, emails) {
  const anthropic = emails.map((email) => oauthEntry(mock, email));
  await savePool({ version: 1, anthropic }, path);
  return anthropic;
}

/** What a crash of the runtime over an unhandled stream error would have printed. */
const CRASH = /Unhandled|EPIPE|ERR_STREAM|at .*:\d+:\d+|unexpected failure/;

test("stdout's reader gone early: silent, and the exit code is still the command's own", { skip: !posix && "POSIX pipes" }, async () => {
  const path = freshPath();
  await seed(path, ["pipe@x.test"]);

  const list = await runWithReaderGone(["list"], { path, gone: "stdout" });
  assert.equal(list.code, 0, list.text);
  assert.equal(list.text, "", "nothing said about a reader that stopped early");

  // A refused command still exits 1 (before: 0 as soon as the first write failed), so a script
  // with `set -o pipefail` (`oauth-pool refresh a@x --json | jq …`) sees the failure.
  const refused = await runWithReaderGone(["refresh", "nobody@x.test", "--json"], { path, gone: "stdout" });
  assert.equal(refused.code, 1, refused.text);
  assert.doesNotMatch(refused.text, CRASH);

  // doctor's 3 survives `doctor | head -1`.
  chmodSync(path, 0o644);
  const doctor = await runWithReaderGone(["doctor"], { path, gone: "stdout" });
  assert.equal(doctor.code, 3, doctor.text);
  assert.doesNotMatch(doctor.text, CRASH);

  // A change whose summary nobody reads is made whole: the file holds it, no temp file is left.
  const changed = await runWithReaderGone(["priority", "pipe@x.test", "7"], { path, gone: "stdout" });
  assert.equal(changed.code, 0, changed.text);
  assert.equal(JSON.parse(readFileSync(path, "utf8")).anthropic[0].priority, 7);
  assert.deepEqual(
    readdirSync(dirname(path)).filter((f) => !/^oauth-pool\.json(\.bak|\.lock)?$/.test(f)),
    [],
    "only the pool file, its backup and its lock",
  );
});

test("stderr's reader gone early: the exit code is still the command's own, no crash", { skip: !posix && "POSIX pipes" }, async () => {
  const path = freshPath();
  // A usage error is said on stderr only: exit 2, not Node's 1 for an unhandled 'error' event.
  const usage = await runWithReaderGone(["list", "--nope"], { path, gone: "stderr" });
  assert.equal(usage.code, 2);
  assert.equal(usage.text, "");
  const missing = await runWithReaderGone(["remove", "nobody@x.test"], { path, gone: "stderr" });
  assert.equal(missing.code, 1);
  // add's guidance goes to stderr first; with nobody reading it the login still starts and ends
  // on stdin's end (exit 2, USAGE), after printing the URL on stdout.
  const add = await runWithReaderGone(["add"], { path, gone: "stderr", stdin: "ignore" });
  assert.equal(add.code, 2);
  assert.match(add.text, /oauth\/authorize\?/);
  assert.ok(!existsSync(path), "nothing written");
});

test("add with stdout that cannot take the login URL: USAGE, exit 2, nothing read or exchanged", { skip: !posix && "POSIX pipes" }, async () => {
  const path = freshPath();
  const exchanges = mock.stats().exchangeCalls;
  // A reader that left: in text and JSON (whose error has nowhere to go: the exit code says it).
  const text = await runWithReaderGone(["add"], { path, gone: "stdout", stdin: "pipe" });
  assert.equal(text.code, 2, text.text);
  assert.match(text.text, /error \[USAGE\]: add prints the login URL on stdout, and stdout could not take it/);
  assert.doesNotMatch(text.text, CRASH);
  const json = await runWithReaderGone(["add", "--json"], { path, gone: "stdout", stdin: "pipe" });
  assert.equal(json.code, 2, json.text);
  assert.equal(json.text, "");

  // A full disk: before, add went on to read stdin and sent what it found to the token endpoint.
  if (existsSync("/dev/full")) {
    const full = openSync("/dev/full", "w");
    try {
      const r = spawnSync(process.execPath, [CLI, "add"], {
        env: childEnv(path),
        input: "pasted-code#pasted-state\n",
        stdio: ["pipe", full, "pipe"],
        encoding: "utf8",
        timeout: 30_000,
      });
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /stdout could not take it/);
    } finally {
      closeSync(full);
    }
  }
  assert.equal(mock.stats().exchangeCalls, exchanges, "no code was sent");
  assert.ok(!existsSync(path), "nothing written");
});

// The lock is held by `flock(1)` (util-linux), the way another writer of the pool would hold it.
const flock = flockAvailable;

/**
 * Another writer takes the pool's write lock (so the CLI's answered exchange waits to be
 * written), the token endpoint's answer goes (`answer()`), the CLI gets `signal`, and the lock
 * is let go: resolves how the CLI ended (its exit code or signal).
 */
async function signalledWhileLocked({ path, child, closed, answer, signal }) {
  const holder = await holdLock(`${path}.lock`);
  answer();
  await new Promise((r) => setTimeout(r, 300));
  child.kill(signal);
  await new Promise((r) => setTimeout(r, 300));
  await holder.release();
  return closed;
}

test("SIGTERM and SIGINT to `refresh` after the token endpoint answered: the new tokens land, no lock stays", {
  skip: !flock && "needs flock(1) on Linux",
}, async () => {
  for (const signal of ["SIGTERM", "SIGINT"]) {
    const path = freshPath();
    await seed(path, ["sig@x.test"]);
    let answer;
    mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (answer = r)) });
    const child = spawn(process.execPath, [CLI, "refresh", "sig@x.test"], { env: childEnv(path), stdio: ["ignore", "pipe", "pipe"] });
    const closed = new Promise((r) => child.on("close", (code, sig) => r(code ?? sig)));
    child.stdout.resume();
    child.stderr.resume();
    await mock.waitFor("token", (r) => r.grant === "refresh_token");
    const ended = await signalledWhileLocked({ path, child, closed, answer, signal });
    assert.ok(ended === signal || ended === 0, `${signal}: ended by ${ended}`);
    const stored = JSON.parse(readFileSync(path, "utf8")).anthropic[0];
    assert.equal(stored.refresh, mock.tokens("sig@x.test").refresh, `${signal}: the refreshed login was written before the end`);
    // Nothing blocks the next command: it reads the new token and needs no refresh.
    const calls = mock.stats().refreshCalls;
    const next = spawnSync(process.execPath, [CLI, "list", "--json"], { env: childEnv(path), encoding: "utf8", timeout: 30_000 });
    assert.equal(next.status, 0, next.stderr);
    assert.equal(mock.stats().refreshCalls, calls);
  }
});

test("SIGTERM and SIGINT to `add` after the token endpoint answered the code: the new login lands, no lock stays", {
  skip: !flock && "needs flock(1) on Linux",
}, async () => {
  // The code is spent once the endpoint answers: a signal then ended the CLI at once and the
  // person's login was for nothing (a refresh's tokens were already waited for).
  for (const signal of ["SIGTERM", "SIGINT"]) {
    const path = freshPath();
    const email = `add-${signal.toLowerCase()}@x.test`;
    await seed(path, ["other@x.test"]);
    let answer;
    mock.setTokenMode({ grant: "authorization_code", until: new Promise((r) => (answer = r)) });
    const child = spawn(process.execPath, [CLI, "add"], { env: childEnv(path), stdio: ["pipe", "pipe", "pipe"] });
    const closed = new Promise((r) => child.on("close", (code, sig) => r(code ?? sig)));
    child.stderr.resume();
    let out = "";
    const url = await new Promise((resolve) =>
      child.stdout.on("data", (d) => {
        out += d;
        const found = out.match(/https?:\/\/\S+/);
        if (found) resolve(found[0]);
      }),
    );
    const arrived = mock.waitFor("token", (r) => r.grant === "authorization_code");
    child.stdin.write(`${mock.approve(url, email)}\n`);
    await arrived;
    const ended = await signalledWhileLocked({ path, child, closed, answer, signal });
    assert.ok(ended === signal || ended === 0, `${signal}: ended by ${ended}`);
    const stored = JSON.parse(readFileSync(path, "utf8")).anthropic.find((a) => a.email === email);
    assert.equal(stored?.refresh, mock.tokens(email).refresh, `${signal}: the new login was written before the end`);
    const next = spawnSync(process.execPath, [CLI, "list", "--json"], { env: childEnv(path), encoding: "utf8", timeout: 30_000 });
    assert.equal(next.status, 0, next.stderr);
  }
});

/**
 * Runs `add` with a stdin that stays open and never sends a line (`sleep 1d | oauth-pool add`, a
 * job that forgot to pipe the code): resolves how it ended once it printed the login URL and
 * `then(child)` ran. The 60 s guard only keeps a CLI that waits for ever from holding the suite.
 */
function addOnSilentStdin(path, args, then = () => {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, "add", ...args], { env: childEnv(path), stdio: ["pipe", "pipe", "pipe"] });
    const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
    let stdout = "";
    let stderr = "";
    let shown = false;
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      stdout += d;
      if (!shown && /oauth\/authorize\S*\n/.test(stdout)) {
        shown = true;
        then(child);
      }
    });
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(guard);
      child.stdin.destroy();
      resolve({ ended: code ?? signal, shown, stdout, stderr });
    });
  });
}

test("add on a stdin that stays open and sends nothing: the wait is bounded, USAGE and exit 2 say the login link expired, nothing exchanged or written", async () => {
  // It waited for ever: the login it started cannot outlive the authorization anyway.
  const path = freshPath();
  const exchanges = mock.stats().exchangeCalls;
  const text = await addOnSilentStdin(path, ["--code-timeout-ms", "2000"]);
  assert.equal(text.ended, 2, text.stderr);
  assert.ok(text.shown, "the login URL was shown first");
  assert.match(
    text.stderr,
    /^error \[USAGE\]: add waited 2 s for the pasted code on stdin and none came: the login link has expired, nothing was added; run `oauth-pool add` again$/m,
  );
  const json = await addOnSilentStdin(path, ["--json", "--code-timeout-ms", "2000"]);
  assert.equal(json.ended, 2, json.stderr);
  const docs = json.stdout
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  assert.equal(docs.length, 2, json.stdout);
  assert.match(docs[0].url, /oauth\/authorize/);
  assert.equal(docs[1].error.code, "USAGE");
  assert.match(docs[1].error.message, /waited 2 s .* the login link has expired/);
  assert.equal(json.stderr, "", "nothing but JSON in --json mode");
  assert.equal(mock.stats().exchangeCalls, exchanges, "no code was sent");
  assert.ok(!existsSync(dirname(path)), "nothing written, no directory made");
});

test("add-key on a stdin that stays open and sends nothing: the wait is bounded as add's, USAGE and exit 2, nothing written", async () => {
  // It waited for ever (`sleep 1d | oauth-pool add-key`): the pipe never sent a line nor closed.
  const path = freshPath();
  const run = (args) =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [CLI, "add-key", ...args], { env: childEnv(path), stdio: ["pipe", "pipe", "pipe"] });
      // Only keeps a CLI that waits for ever from holding the suite.
      const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
      let stdout = "";
      let stderr = "";
      child.stdout.setEncoding("utf8");
      child.stderr.setEncoding("utf8");
      child.stdout.on("data", (d) => (stdout += d));
      child.stderr.on("data", (d) => (stderr += d));
      child.on("error", reject);
      child.on("close", (code, signal) => {
        clearTimeout(guard);
        child.stdin.destroy();
        resolve({ ended: code ?? signal, stdout, stderr });
      });
    });
  const text = await run(["--email", "key@x.test", "--code-timeout-ms", "2000"]);
  assert.equal(text.ended, 2, text.stderr);
  assert.match(text.stderr, /^error \[USAGE\]: add-key waited 2 s for the API key on stdin and none came: nothing was added; run `oauth-pool add-key` again$/m);
  const json = await run(["--json", "--code-timeout-ms", "2000"]);
  assert.equal(json.ended, 2, json.stderr);
  const doc = JSON.parse(json.stdout.trim());
  assert.equal(doc.error.code, "USAGE");
  assert.match(doc.error.message, /waited 2 s for the API key/);
  assert.equal(json.stderr, "", "nothing but JSON in --json mode");
  assert.ok(!existsSync(dirname(path)), "nothing written, no directory made");
  // The option is checked as add checks it, before anything is read.
  const bad = await run(["--code-timeout-ms", "soon"]);
  assert.equal(bad.ended, 2, bad.stderr);
  assert.match(bad.stderr, /^error \[USAGE\]: --code-timeout-ms must be a whole number of milliseconds/m);
});

test("SIGINT while add waits for the code (no bound passed yet) ends it by the signal as before, nothing written", {
  skip: !posix && "POSIX signals",
}, async () => {
  const path = freshPath();
  const r = await addOnSilentStdin(path, [], (child) => child.kill("SIGINT"));
  assert.ok(r.shown);
  assert.ok(r.ended === "SIGINT" || r.ended === 130, `ended by ${r.ended}: ${r.stderr}`);
  assert.ok(!existsSync(dirname(path)), "nothing written");
});

/**
 * Runs `add` up to its token call, which is held while `spoil()` makes the pool's write fail
 * (the code is spent by then), then lets the answer go: resolves the child once it said on
 * stderr what it holds (`said`), with how it ends (`closed`) and its output so far (`output()`).
 */
async function addSpoiledMidway(path, email, spoil, { ignoreHangup = false, json = false } = {}) {
  let answer;
  mock.setTokenMode({ grant: "authorization_code", until: new Promise((r) => (answer = r)), times: 1 });
  // `ignoreHangup`: started the way nohup or `trap '' HUP` starts it.
  const command = ignoreHangup ? ["sh", "-c", `trap '' HUP; exec "$0" "$@"`, process.execPath] : [process.execPath];
  const child = spawn(command[0], [...command.slice(1), CLI, "add", ...(json ? ["--json"] : [])], { env: childEnv(path), stdio: ["pipe", "pipe", "pipe"] });
  const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const closed = new Promise((r) =>
    child.on("close", (code, sig) => {
      clearTimeout(guard);
      r(code ?? sig);
    }),
  );
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  const url = await new Promise((resolve) =>
    child.stdout.on("data", (d) => {
      stdout += d;
      const found = json ? stdout.match(/"url":"([^"]+)"/) : stdout.match(/(https?:\/\/\S+)/);
      if (found) resolve(found[1]);
    }),
  );
  const arrived = mock.waitFor("token", (r) => r.grant === "authorization_code");
  child.stdin.write(`${mock.approve(url, email)}\n`);
  await arrived;
  await spoil();
  answer();
  // Said, or ended without saying it (the old CLI: the error, then the end).
  const said = new Promise((resolve) => {
    child.stderr.on("data", (d) => {
      stderr += d;
      if (/holds the login/.test(stderr)) resolve();
    });
    child.stdout.on("data", () => {
      if (json && /"holding"/.test(stdout)) resolve();
    });
  });
  await Promise.race([said, closed]);
  return { child, closed, output: () => ({ stdout, stderr }) };
}

const BROKEN = "{ this is not JSON";

test("add whose pool file was replaced by one that does not parse once the code was spent: it stays, says it holds the login and why, and ends with `added` when the file is put back", async () => {
  const path = freshPath();
  const email = "kept-by-cli@x.test";
  await seed(path, ["other@x.test"]);
  const good = readFileSync(path);
  const { child, closed, output } = await addSpoiledMidway(path, email, () => writeFileSync(path, BROKEN));
  assert.equal(child.exitCode, null, `the CLI stayed with the login (ended: ${JSON.stringify(output())})`);
  assert.equal(child.signalCode, null);
  assert.match(output().stderr, /logged in as kept-by-cli@x\.test/);
  assert.match(output().stderr, /oauth-pool\.json is not valid/, "it says why the pool cannot take the login");
  assert.match(output().stderr, /Ctrl-C\) loses the login/);
  assert.equal(readFileSync(path, "utf8"), BROKEN, "the file that does not parse is never overwritten");
  writeFileSync(path, good);
  assert.equal(await closed, 0, output().stderr);
  assert.match(output().stdout, /^added kept-by-cli@x\.test$/m);
  const stored = JSON.parse(readFileSync(path, "utf8")).anthropic;
  assert.equal(stored.find((a) => a.email === email)?.refresh, mock.tokens(email).refresh, "the login was written");
  assert.ok(
    stored.some((a) => a.email === "other@x.test"),
    "the other account is still there",
  );
});

test("add --json holding a login it cannot write says so on stdout, a JSON line of its own (it printed the URL and then nothing for as long as it held it)", async () => {
  const path = freshPath();
  const email = "kept-json@x.test";
  await seed(path, ["other@x.test"]);
  const good = readFileSync(path);
  const { child, closed, output } = await addSpoiledMidway(path, email, () => writeFileSync(path, BROKEN), { json: true });
  assert.equal(child.exitCode, null, `the CLI stayed with the login (ended: ${JSON.stringify(output())})`);
  const lines = output()
    .stdout.trim()
    .split("\n")
    .map((l) => JSON.parse(l));
  assert.ok(lines[0].url, "the URL first");
  const holding = lines.find((l) => l.holding)?.holding;
  assert.equal(holding?.email, email, output().stdout);
  assert.equal(holding.code, "POOL_CORRUPT");
  assert.match(holding.message, /holds the login/);
  assert.equal(output().stderr, "", "stderr stays quiet with --json");
  writeFileSync(path, good);
  assert.equal(await closed, 0, output().stdout);
  const last = JSON.parse(output().stdout.trim().split("\n").at(-1));
  assert.deepEqual([last.email, last.added], [email, true], "then the result, once the login is written");
});

test("SIGINT and SIGTERM to add holding a login it cannot write: it says the login is lost and ends non-zero, the pool untouched", {
  skip: !posix && "POSIX signals",
}, async () => {
  for (const [signal, code] of [
    ["SIGINT", 130],
    ["SIGTERM", 143],
  ]) {
    const path = freshPath();
    const email = `kept-${signal.toLowerCase()}@x.test`;
    await seed(path, ["other@x.test"]);
    const { child, closed, output } = await addSpoiledMidway(path, email, () => writeFileSync(path, BROKEN));
    assert.equal(child.exitCode, null, `${signal}: the CLI stayed with the login (ended: ${JSON.stringify(output())})`);
    child.kill(signal);
    assert.equal(await closed, code, `${signal}: ${output().stderr}`);
    assert.match(
      output().stderr,
      new RegExp(`error \\[POOL_CORRUPT\\]: stopped by ${signal}: the login of ${email.replace(/\./g, "\\.")} was never written \\(.+\\) and is lost`),
    );
    assert.doesNotMatch(output().stdout, /added/);
    assert.equal(readFileSync(path, "utf8"), BROKEN, `${signal}: the file was left as it was`);
  }
});

test("add holding a login, started ignoring SIGHUP (nohup): a hangup leaves it holding where the runtime keeps the ignore (Bun), and the login lands", {
  skip: !posix && "POSIX signals",
}, async () => {
  // Its listener gave the login up on a hangup the user had asked to ignore. Node sets every
  // signal back to its default as it starts, so there the hangup ends it, saying the login is lost.
  const path = freshPath();
  const email = "kept-nohup@x.test";
  await seed(path, ["other@x.test"]);
  const good = readFileSync(path);
  const { child, closed, output } = await addSpoiledMidway(path, email, () => writeFileSync(path, BROKEN), { ignoreHangup: true });
  assert.equal(child.exitCode, null, `the CLI stayed with the login (ended: ${JSON.stringify(output())})`);
  child.kill("SIGHUP");
  const early = await Promise.race([closed, new Promise((r) => setTimeout(() => r("holding"), 1500))]);
  if (typeof Bun === "undefined") {
    assert.equal(early === "holding" ? await closed : early, 129, output().stderr);
    assert.match(output().stderr, /stopped by SIGHUP/);
    return;
  }
  assert.equal(early, "holding", `the ignored hangup left the login held: ${output().stderr}`);
  writeFileSync(path, good);
  assert.equal(await closed, 0, output().stderr);
  assert.match(output().stdout, /^added kept-nohup@x\.test$/m);
  assert.equal(JSON.parse(readFileSync(path, "utf8")).anthropic.find((a) => a.email === email)?.refresh, mock.tokens(email).refresh);
});

/**
 * Runs the CLI with a writer on its stdin that never stops (`yes | oauth-pool add-key`,
 * `cat /dev/zero | ...`): `chunk` written again and again until the CLI exits. Resolves how it
 * ended and what it printed.
 */
function runWithEndlessStdin(args, { path, chunk }) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: childEnv(path), stdio: ["pipe", "pipe", "pipe"] });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    let stdout = "";
    let stderr = "";
    let ended = false;
    child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
    // The CLI stops reading and exits: the writer's EPIPE is the end of it, not a failure.
    child.stdin.on("error", () => {});
    const pump = () => {
      while (!ended && child.stdin.write(chunk));
      if (!ended) child.stdin.once("drain", pump);
    };
    pump();
    child.on("error", reject);
    child.on("close", (code, signal) => {
      ended = true;
      clearTimeout(timer);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}

test("add-key and add on a stdin that never ends: bytes without a line break end at 64 KB (USAGE), endless lines take the first", async () => {
  // A guard: stdin is read a line at a time up to a bound (lib/cli/stdin.mjs), from a pipe as
  // from a file.
  const path = freshPath();
  for (const args of [["add-key"], ["add-key", "--json"], ["add"]]) {
    const r = await runWithEndlessStdin(args, { path, chunk: Buffer.alloc(16 * 1024, 0) });
    assert.equal(r.code, 2, `${args}: ${r.stderr}`);
    const message = args.includes("--json") ? JSON.parse(r.stdout.trim().split("\n").at(-1)).error.message : r.stderr;
    assert.match(message, /stdin held more than 64 KB without a line break/);
  }
  const lines = await runWithEndlessStdin(["add-key"], { path, chunk: "y\n".repeat(4096) });
  assert.equal(lines.code, 1, lines.stderr);
  assert.match(lines.stderr, /^error \[INVALID_ARGUMENT\]: that does not look like an API key/);
  assert.ok(!existsSync(path), "nothing written");
});
