// The `oauth-pool` CLI (bin/oauth-pool.mjs), run as a real child process against a temporary pool
// and HOME (never the real ~/.aidevops), and for `add` against the loopback mock of Anthropic.
// Runs under `node --test` and `bun test` (then the CLI itself runs under Bun).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { createServer as createHttpServer } from "node:http";
import { basename, dirname, join } from "node:path";
import { CLI, cliSandbox } from "./helpers/cli-sandbox.mjs";
import { flockAvailable, holdLock } from "./helpers/flock.mjs";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { oauthEntry } from "./helpers/pool-env.mjs";
import { createPoolTool, savePool } from "../index.mjs";
import { displayWidth, printable, table } from "../lib/cli/output.mjs";
import { parseCommandLine } from "../lib/cli/args.mjs";
import { HINTS, accountLine } from "../lib/plugin/format.mjs";

const PKG = JSON.parse(readFileSync(join(dirname(CLI), "..", "package.json"), "utf8"));
const posix = process.platform !== "win32";
const sandbox = cliSandbox("oauth-pool-cli-");
const { tmp, home, freshPath, childEnv } = sandbox;
let mock;
before(async () => {
  mock = await startMockAnthropic();
});
after(() => mock?.close());

/**
 * Runs the CLI. `input` is written to its stdin (then closed); `onStdout(text, child)` sees the
 * stdout so far, for the interactive `add`; `stdin` replaces the pipe (a file descriptor).
 * `command` runs something else with the same environment and capture.
 */
function cli(args, { path, input, env = {}, onStdout, stdin = "pipe", command = [process.execPath, CLI] } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(command[0], [...command.slice(1), ...args], { env: childEnv(path, env), stdio: [stdin, "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.stdout.setEncoding("utf8");
    child.stderr.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      stdout += d;
      onStdout?.(stdout, child);
    });
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, stdout, stderr });
    });
    if (input !== undefined) child.stdin.end(input);
    else if (!onStdout && child.stdin) child.stdin.end();
  });
}

/** stdout of a --json run, parsed (one document per line). */
const jsonLines = (r) =>
  r.stdout
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
const json = (r) => {
  const docs = jsonLines(r);
  assert.equal(docs.length, 1, `one JSON document expected, got: ${r.stdout}`);
  return docs[0];
};
const readPool = (path) => JSON.parse(readFileSync(path, "utf8"));
const API_KEY = "fake-console-key-cliTEST-for-tests-only";

/** A pool with OAuth accounts registered at the mock (their tokens are real for it). */
async function seed(path, entries) {
  const anthropic = entries.map(({ email, ...e }) => oauthEntry(mock, email, e));
  await savePool({ version: 1, anthropic }, path);
  return anthropic;
}

/** No output of the CLI may carry a credential. */
function assertNoSecret(r, secrets) {
  for (const s of secrets.filter(Boolean)) {
    assert.ok(!r.stdout.includes(s) && !r.stderr.includes(s), "a secret reached the output");
  }
}

test("--version and --help answer without a pool, in text and JSON", async () => {
  const path = freshPath();
  const v = await cli(["--version"], { path });
  assert.equal(v.code, 0, v.stderr);
  assert.ok(v.stdout.includes(PKG.version));
  const vj = json(await cli(["--version", "--json"], { path }));
  assert.equal(vj.version, PKG.version);
  assert.equal(typeof vj.native, "string");
  const h = await cli(["--help"], { path });
  assert.equal(h.code, 0);
  for (const cmd of ["list", "add", "add-key", "remove", "enable", "disable", "priority", "status", "reset-cooldowns", "import-claude-code", "doctor"]) {
    assert.ok(h.stdout.includes(cmd), `help mentions ${cmd}`);
  }
  assert.equal((await cli(["help"], { path })).code, 0);
  // One command's help, not all of it, asked either way; a two-word command too.
  for (const args of [
    ["add", "--help"],
    ["help", "add"],
    ["add", "-h"],
  ]) {
    const one = await cli(args, { path });
    assert.equal(one.code, 0, args.join(" "));
    assert.match(one.stdout, /^usage: oauth-pool add \[--mode max\|console\] \[--code-timeout-ms <ms>\]\n\n {2}print the login URL/, args.join(" "));
    assert.doesNotMatch(one.stdout, /reset-cooldowns/, `${args.join(" ")}: only add's help`);
  }
  assert.match((await cli(["store", "init", "--help"], { path })).stdout, /^usage: oauth-pool store init \[<url>\]/);
  assert.match((await cli(["help", "store", "init"], { path })).stdout, /^usage: oauth-pool store init/);
  // The usage lists `help [<command>]` among the commands: its help is the usage (it was
  // "unknown command help", exit 2).
  const helpHelp = await cli(["help", "help"], { path });
  assert.equal(helpHelp.code, 0, helpHelp.stderr);
  assert.match(helpHelp.stdout, /^oauth-pool .*: manage the opencode-oauth-pool account pool\n/);
  const unknown = await cli(["help", "frobnicate"], { path });
  assert.equal(unknown.code, 2, "help for no such command is a usage error");
  assert.match(unknown.stderr, /unknown command frobnicate/);
  // A group's word alone is the help of its commands (`oauth-pool store` names them; `help
  // store` said "unknown command store", `store --help` gave the whole usage).
  for (const args of [
    ["help", "store"],
    ["store", "--help"],
  ]) {
    const group = await cli(args, { path });
    assert.equal(group.code, 0, `${args.join(" ")}: ${group.stderr}`);
    assert.match(group.stdout, /^usage: oauth-pool store init \[<url>\]/m, args.join(" "));
    assert.match(group.stdout, /^usage: oauth-pool store copy --from/m, args.join(" "));
    assert.doesNotMatch(group.stdout, /reset-cooldowns/, `${args.join(" ")}: only the group's help`);
  }
  assert.ok(!existsSync(path), "nothing was written");
});

test("each command's help says what its own options do (the synopsis alone named them)", async () => {
  const path = freshPath();
  const { COMMANDS } = await import("../lib/cli/commands.mjs");
  for (const [name, spec] of COMMANDS) {
    const options = Object.entries(spec.options ?? {});
    if (options.length === 0) continue;
    const r = await cli([...name.split(" "), "--help"], { path });
    assert.equal(r.code, 0, `${name} --help: ${r.stderr}`);
    const own = r.stdout.split("\noptions:\n")[1]?.split("\noptions (every command):")[0];
    assert.ok(own, `${name} --help has a section for its own options`);
    for (const [option, o] of options) {
      assert.ok(typeof o.help === "string" && o.help.length > 0, `${name} --${option} has a help text`);
      assert.match(own, new RegExp(`^ {2}--${option}\\b.* {2,}\\S`, "m"), `${name} --help describes --${option}`);
    }
  }
  const top = await cli(["--help"], { path });
  assert.match(top.stdout, /^ {2}help \[<command>\] +this text, or one command's/m, "the usage names help <command>");
});

test("usage errors exit 2, in text and JSON", async () => {
  const path = freshPath();
  for (const args of [[], ["frobnicate"], ["list", "--nope"], ["list", "--mode", "max"], ["remove"], ["priority", "a@x.test"], ["list", "--path"]]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
  }
  const r = await cli(["frobnicate", "--json"], { path });
  assert.equal(r.code, 2);
  assert.equal(json(r).error.code, "USAGE");
  const p = await cli(["priority", "a@x.test", "1.5"], { path });
  assert.equal(p.code, 2);
  assert.match(p.stderr, /integer/);
  const mode = await cli(["add", "--mode", "team"], { path });
  assert.equal(mode.code, 2);
  assert.ok(!existsSync(path));
});

test("usage errors repeat at most the start of what was typed, escaped: a 100 KB argument does not come back whole", async () => {
  // Each of these echoed the whole argument: 100 KB in one line of stderr or one JSON document.
  const path = freshPath();
  const long = `${"x".repeat(100_000)}\x1b[2J\u202e`;
  const cases = [
    [long],
    ["help", long],
    ["list", `--${long}`],
    ["list", `-V${long}`],
    ["add", "--mode", long],
    ["add", "--code-timeout-ms", long],
    ["priority", "a@x.test", long],
    ["reserve", "a@x.test", long],
    ["serve", "--port", long],
    ["add-key", "--email", long, "--email", "b@x.test"],
  ];
  for (const args of cases) {
    for (const mode of [[], ["--json"]]) {
      const r = await cli([...args, ...mode], { path, input: "" });
      const shown = args.map((a) => (a.length > 40 ? `<${a.length} chars>` : a)).join(" ");
      assert.equal(r.code, 2, `${shown}: ${r.stderr.slice(0, 300)}`);
      const error = mode.length ? json(r).error : { code: r.stderr.match(/^error \[(\w+)\]/)?.[1], message: r.stderr };
      assert.equal(error.code, "USAGE", shown);
      assert.ok(error.message.length < 600, `${shown}: ${error.message.length} characters of message`);
      assert.match(error.message, /x{20}… \(100\d{3} characters\)/, shown);
      assert.doesNotMatch(r.stderr + r.stdout, /\x1b|\u202e/, shown);
    }
  }
  // Short, it is repeated whole, its control characters escaped.
  const escaped = await cli(["list", "--no\x1b[31mpe"], { path });
  assert.equal(escaped.code, 2);
  assert.match(escaped.stderr, /list does not take --no\\x1b\[31mpe/);
  assert.ok(!existsSync(path));
});

test("an option of a value given twice with two values is a usage error naming it, not the last one taken", async () => {
  // `--email a --email b` added the key as b without a word, `--path x ... --path y` used y.
  const path = freshPath();
  const other = freshPath();
  const key = await cli(["add-key", "--email", "a@x.test", "--email", "b@x.test"], { path, input: `${API_KEY}\n` });
  assert.equal(key.code, 2, key.stderr);
  assert.match(key.stderr, /^error \[USAGE\]: --email was given twice \(a@x\.test, then b@x\.test\): give it once/);
  assert.ok(!existsSync(path), "nothing added");
  const where = await cli(["--path", path, "list", "--json", "--path", other], { path });
  assert.equal(where.code, 2, where.stdout);
  assert.equal(json(where).error.code, "USAGE");
  assert.match(json(where).error.message, /--path was given twice/);
  const mode = await cli(["add", "--mode", "max", "--mode=console"], { path, input: "" });
  assert.equal(mode.code, 2, mode.stderr);
  assert.match(mode.stderr, /--mode was given twice \(max, then console\)/);
  // A flag twice, or the same value twice, says one thing: taken.
  const same = await cli(["add-key", "--json", "--json", "--email", "k@x.test", "--email=k@x.test"], { path, input: `${API_KEY}\n` });
  assert.equal(same.code, 0, same.stdout + same.stderr);
  assert.deepEqual(json(same), { email: "k@x.test", added: true });
});

// Found by a review of the CLI: what a usage error repeats of the line is shown as the library
// shows it (a store URL's password was printed whole), a key broken by a zero-width space or a
// space came back from the break on, and a command quoted as one word ("store init") took the
// URL after it for its own second word and went to OAUTH_POOL_STORE's store instead.
test("what a usage error repeats holds no password or key, a key broken in two included; a two-word command quoted as one takes its own arguments", async () => {
  const path = freshPath();
  const url = "postgres://alice:S3cretPassw0rd@127.0.0.1:1/pool";
  for (const args of [
    ["list", "--path", url, "--path", path],
    ["store", "init", url, "--path", path, "--json"],
  ]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 2, r.stderr);
    assert.ok(!`${r.stdout}${r.stderr}`.includes("S3cretPassw0rd"), `${args}: ${r.stdout}${r.stderr}`);
    assert.match(`${r.stdout}${r.stderr}`, /alice:\*\*\*@127\.0\.0\.1:1/, String(args));
  }
  const key = `${["sk", "ant", "api03"].join("-")}-${"Z".repeat(70)}-CCCCCCAA`;
  for (const broken of [`${key.slice(0, 50)}\u200b${key.slice(50)}`, `${key.slice(0, 40)} ${key.slice(40)}`]) {
    for (const args of [
      ["remove", broken],
      ["disable", broken, "--json"],
    ]) {
      const r = await cli(args, { path });
      assert.notEqual(r.code, 0);
      const said = `${r.stdout}${r.stderr}`;
      assert.ok(!said.includes("ZZZZ") && !said.includes("CCCC"), `${args[0]}: ${said}`);
    }
  }
  // Split into two words by a space, the second piece is a value of its own: only a key's
  // characters, no prefix (a review's find: priority and reserve repeated it whole).
  const realistic = `${["sk", "ant", "api03"].join("-")}-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6lMn9oPq2rSt5uVw8xYz1aBc4dEf7gHi0jKl3mNo6pQr9sT-AAAAAAAA`;
  for (const args of [
    ["priority", realistic.slice(0, 30), realistic.slice(30)],
    ["reserve", realistic.slice(0, 30), realistic.slice(30), "--json"],
  ]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 2, `${r.stdout}${r.stderr}`);
    const said = `${r.stdout}${r.stderr}`;
    assert.ok(!said.includes(realistic.slice(40, 60)), `${args[0]}: ${said}`);
    assert.match(said, /\[redacted\]/);
  }
  // Two stores on loopback that take a connection and close it: which one was asked.
  const asked = { named: 0, env: 0 };
  const listeners = await Promise.all(
    Object.keys(asked).map(
      (which) =>
        new Promise((resolve) => {
          const server = createServer((socket) => {
            asked[which]++;
            socket.destroy();
          });
          server.listen(0, "127.0.0.1", () => resolve([which, server]));
        }),
    ),
  );
  const port = Object.fromEntries(listeners.map(([which, server]) => [which, server.address().port]));
  try {
    const quoted = await cli(["store init", `postgres://named@127.0.0.1:${port.named}/db`, "--json"], {
      path,
      env: { OAUTH_POOL_STORE: `postgres://envstore@127.0.0.1:${port.env}/db` },
    });
    assert.notEqual(quoted.code, 0);
    assert.ok(asked.named > 0 && asked.env === 0, `${JSON.stringify(asked)}: ${quoted.stdout}${quoted.stderr}`);
  } finally {
    for (const [, server] of listeners) server.close();
  }
});

test("list and edits of accounts on a missing pool: empty or ACCOUNT_NOT_FOUND, nothing created", async () => {
  const path = freshPath();
  const r = await cli(["list"], { path });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /no accounts/);
  const j = json(await cli(["list", "--json"], { path }));
  assert.deepEqual(j, { path, accounts: [] });
  assert.ok(!existsSync(path));
  assert.ok(!existsSync(dirname(path)));
  // Edits of accounts have nothing to edit: they made the directory and a lock file, and nothing else.
  for (const args of [
    ["remove", "a@x.test"],
    ["disable", "a@x.test"],
    ["enable", "a@x.test"],
    ["priority", "a@x.test", "2"],
    ["reserve", "a@x.test", "0.2"],
  ]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /^error \[ACCOUNT_NOT_FOUND\]: /, args.join(" "));
  }
  assert.equal((await cli(["reset-cooldowns"], { path })).code, 0);
  assert.ok(!existsSync(dirname(path)), "no directory, no lock file");
});

test("a pool file saved on Windows: a UTF-8 byte order mark is read past, UTF-16 is refused saying so", async () => {
  // Notepad and PowerShell 5's `Set-Content -Encoding UTF8` start the file with a BOM: it was
  // POOL_CORRUPT "expected value at line 1 column 1". PowerShell 5's `>` writes UTF-16.
  const path = freshPath();
  mkdirSync(dirname(path), { recursive: true });
  const text = JSON.stringify({ anthropic: [{ email: "win@x.test", type: "api", key: `win-${"k".repeat(16)}` }] }, null, 2).replace(/\n/g, "\r\n");
  writeFileSync(path, `\uFEFF${text}`, { mode: 0o600 });
  const listed = await cli(["list", "--json"], { path });
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(
    JSON.parse(listed.stdout).accounts.map((a) => a.email),
    ["win@x.test"],
  );
  writeFileSync(path, Buffer.from(`\uFEFF${text}`, "utf16le"), { mode: 0o600 });
  const refused = await cli(["list"], { path });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /POOL_CORRUPT.*UTF-16 text.*save it as UTF-8/);
});

test("--path wins over OAUTH_POOL_PATH", async () => {
  const envPath = freshPath();
  const flagPath = freshPath();
  const r = await cli(["add-key", "--email", "flag@x.test", "--path", flagPath], { path: envPath, input: `${API_KEY}\n` });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(existsSync(flagPath));
  assert.ok(!existsSync(envPath));
  assert.equal(json(await cli(["list", "--json", `--path=${flagPath}`], { path: envPath })).accounts[0].email, "flag@x.test");
});

test("add-key reads the key from stdin, stores it 0600, never prints it; an argument is refused", async () => {
  const path = freshPath();
  const r = await cli(["add-key", "--email", "team@x.test"], { path, input: `${API_KEY}\n` });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /added team@x\.test/);
  assertNoSecret(r, [API_KEY]);
  const stored = readPool(path).anthropic;
  assert.equal(stored.length, 1);
  assert.equal(stored[0].type, "api");
  assert.equal(stored[0].key, API_KEY);
  if (posix) {
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.equal(statSync(dirname(path)).mode & 0o777, 0o700);
  }

  // Same email again: updated, and --json gives { email, added }.
  const again = await cli(["add-key", "--email", "team@x.test", "--json"], { path, input: `${API_KEY}\r\n` });
  assert.equal(again.code, 0, again.stdout);
  assert.deepEqual(json(again), { email: "team@x.test", added: false });

  // Without --email the library names it.
  const anon = json(await cli(["add-key", "--json"], { path, input: `${API_KEY.replace("cliTEST", "cliANON")}` }));
  assert.equal(anon.added, true);
  assert.match(anon.email, /^api-key-/);

  const before = readFileSync(path);
  const arg = await cli(["add-key", API_KEY], { path });
  assert.equal(arg.code, 2);
  assert.match(arg.stderr, /stdin/);
  assertNoSecret(arg, [API_KEY]);
  const empty = await cli(["add-key"], { path, input: "" });
  assert.equal(empty.code, 2);
  const bad = await cli(["add-key", "--json"], { path, input: "short\n" });
  assert.equal(bad.code, 1);
  assert.equal(json(bad).error.code, "INVALID_ARGUMENT");
  assert.deepEqual(readFileSync(path), before, "refused adds leave the file as it was");

  const list = await cli(["list"], { path });
  assert.equal(list.code, 0);
  assert.match(list.stdout, /team@x\.test\s+api\s+idle/);
  assertNoSecret(list, [API_KEY]);
});

test("enable, disable, priority and remove change the file; unknown emails are ACCOUNT_NOT_FOUND", async () => {
  const path = freshPath();
  const seeded = await seed(path, [{ email: "a@x.test" }, { email: "b@x.test" }]);
  const secrets = seeded.flatMap((a) => [a.access, a.refresh]);
  const acct = (email) => readPool(path).anthropic.find((a) => a.email === email);

  let r = await cli(["disable", "a@x.test"], { path });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(acct("a@x.test").status, "disabled");
  assert.equal(acct("a@x.test").enabled, false);
  const listed = json(await cli(["list", "--json"], { path })).accounts.find((a) => a.email === "a@x.test");
  assert.equal(listed.status, "disabled");
  assert.equal(listed.enabled, false);

  r = await cli(["enable", "a@x.test", "--json"], { path });
  assert.deepEqual(json(r), { email: "a@x.test", enabled: true });
  assert.notEqual(acct("a@x.test").status, "disabled");

  r = await cli(["priority", "b@x.test", "7"], { path });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(acct("b@x.test").priority, 7);
  r = await cli(["priority", "b@x.test", "-3", "--json"], { path });
  assert.deepEqual(json(r), { email: "b@x.test", priority: -3 });
  assert.equal(acct("b@x.test").priority, -3);

  // Whom a change named, as the file spells it: `#1` or a differently cased email typed. It
  // echoed what was typed: "disabled #1" told a person nothing of whom.
  r = await cli(["disable", "#1"], { path });
  assert.equal(r.stdout.trim(), "disabled b@x.test (#1)");
  assert.equal(acct("b@x.test").enabled, false);
  r = await cli(["enable", "B@X.test", "--json"], { path });
  assert.deepEqual(json(r), { email: "b@x.test", enabled: true });
  r = await cli(["priority", "B@X.TEST", "2"], { path });
  assert.equal(r.stdout.trim(), "priority of b@x.test (B@X.TEST) is now 2");
  r = await cli(["reserve", "#0", "0.25"], { path });
  assert.equal(r.stdout.trim(), "a@x.test (#0): the pool stops using it once any window reaches 75 %");
  r = await cli(["reserve", "a@x.test", "0"], { path });
  assert.equal(r.stdout.trim(), "a@x.test: no reserve");

  for (const args of [
    ["disable", "nobody@x.test"],
    ["enable", "nobody@x.test"],
    ["priority", "nobody@x.test", "1"],
    ["remove", "nobody@x.test"],
  ]) {
    const miss = await cli(args, { path });
    assert.equal(miss.code, 1, args.join(" "));
    assert.match(miss.stderr, /^error \[ACCOUNT_NOT_FOUND\]: /);
    const missJson = await cli([...args, "--json"], { path });
    assert.equal(missJson.code, 1);
    const err = json(missJson).error;
    assert.equal(err.code, "ACCOUNT_NOT_FOUND");
    assert.equal(typeof err.message, "string");
  }

  r = await cli(["remove", "a@x.test", "--json"], { path });
  assert.equal(r.code, 0, r.stdout);
  assert.deepEqual(json(r), { email: "a@x.test", removed: 1 });
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["b@x.test"],
  );
  assertNoSecret(r, secrets);
});

test("list and status say an entry with nothing to send is never used (no token, or a key under another name), not plain idle", async () => {
  const path = freshPath();
  const added = "2026-01-01T00:00:00.000Z";
  const anthropic = [
    { email: "tokenless@x.test", added, lastUsed: null, status: "idle", rateLimitUntil: null },
    { type: "api", email: "keyless@x.test", apiKey: "sk-under-another-name", added, lastUsed: null, status: "idle", rateLimitUntil: null },
  ];
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
  const list = await cli(["list"], { path });
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /tokenless@x\.test +oauth +idle, but no token \(log in again: oauth-pool add\)/);
  assert.match(list.stdout, /keyless@x\.test +api +idle, but no key \(oauth-pool add-key --email <email>\)/);
  const status = await cli(["status"], { path });
  assert.match(status.stdout, /0 usable now/);
  assert.match(status.stdout, /status +idle, but no token/);
  const listed = json(await cli(["list", "--json"], { path })).accounts;
  assert.deepEqual(
    listed.map((a) => [a.status, a.credential]),
    [
      ["idle", false],
      ["idle", false],
    ],
    "the status the contract fixes stays; `credential` says what is missing",
  );
  assert.ok(!list.stdout.includes("sk-under-another-name"));
  // The OpenCode tool's wording of the same, with its host's login hint, and its count.
  const toolList = await createPoolTool({}, { path }).execute({ action: "list" }, {});
  assert.match(toolList, /^Anthropic pool: 2 accounts, 0 usable now\./);
  assert.match(accountLine(listed[0], 0), /idle, but no token: run `opencode auth login`/);
  assert.match(accountLine(listed[1], 1, Date.now(), HINTS.v2), /idle, but no key: add a working key under its name/);
});

test("status shows cooldowns with time left and 5h/7d quota; reset-cooldowns clears them", async () => {
  const path = freshPath();
  const now = Date.now();
  const seeded = await seed(path, [
    {
      email: "cool@x.test",
      status: "rate-limited",
      rateLimitUntil: now + 42 * 60_000,
      quota: { fiveHour: { utilization: 1.01, resetsAt: now + 42 * 60_000 }, sevenDay: { utilization: 0.35, resetsAt: now + 3 * 86_400_000 }, updatedAt: now },
      modelCooldowns: { sonnet: now + 2 * 3_600_000 },
    },
    { email: "ok@x.test", quota: { fiveHour: { utilization: 0.42, resetsAt: now + 3_600_000 }, updatedAt: now } },
    // Still served: neither reads as spent, nor as untouched.
    {
      email: "edge@x.test",
      quota: { fiveHour: { utilization: 0.996, resetsAt: now + 3_600_000 }, sevenDay: { utilization: 0.004, resetsAt: now + 86_400_000 }, updatedAt: now },
    },
  ]);

  // Waits read as the addon's own messages word them (src/wait.rs): rounded up, in UTC with
  // the day when not today, whatever zone the terminal is in.
  const env = { TZ: "Pacific/Chatham" };
  const utc = (ms) => `${new Date(ms).toISOString().slice(11, 16)} UTC`;
  const inWait = (minutes, at) => `in (${minutes - 1} min \\d+ s|${minutes} min) \\(at (\\w{3} \\d+ \\w{3} )?${utc(at)}\\)`;
  const r = await cli(["status"], { path, env });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /cool@x\.test/);
  assert.match(r.stdout, new RegExp(`status   rate-limited, usable again ${inWait(42, now + 42 * 60_000)}\n`));
  assert.match(r.stdout, new RegExp(`5h \\[##########\\] 101% resets ${inWait(42, now + 42 * 60_000)}`));
  assert.match(r.stdout, /5h \[#########-\] 99% resets/);
  assert.match(r.stdout, /7d \[----------\] 1% resets/);
  assert.match(r.stdout, /7d \[####------\] 35% resets in (2 d 23 h|3 d 0 h) \(at \w{3} \d+ \w{3} \d\d:\d\d UTC\)/);
  assert.match(r.stdout, new RegExp(`5h \\[####------\\] 42% resets in (59 min \\d+ s|1 h 0 min) \\(at (\\w{3} \\d+ \\w{3} )?${utc(now + 3_600_000)}\\)`));
  assert.match(r.stdout, new RegExp(`soonest reset: ${inWait(42, now + 42 * 60_000)}`));
  assert.match(
    r.stdout,
    new RegExp(`cooling  sonnet models until (\\w{3} \\d+ \\w{3} )?${utc(now + 2 * 3_600_000)} \\(in (1 h 59 min|2 h 0 min)\\); other models serve`),
  );
  assert.doesNotMatch(r.stdout, /\d+m left|until \d{4}-/, "no second wording");
  assert.match(r.stdout, /2 usable/);
  const listed = await cli(["list"], { path, env });
  assert.match(listed.stdout, new RegExp(`cool@x\\.test +oauth +rate-limited, usable again ${inWait(42, now + 42 * 60_000)}`));
  assertNoSecret(
    r,
    seeded.flatMap((a) => [a.access, a.refresh]),
  );

  const j = json(await cli(["status", "--json"], { path }));
  assert.equal(j.path, path);
  assert.equal(j.counts.total, 3);
  assert.equal(j.counts["rate-limited"], 1);
  assert.equal(j.counts.usable, 2);
  assert.equal(j.soonestReset, now + 42 * 60_000);
  const cool = j.accounts.find((a) => a.email === "cool@x.test");
  assert.equal(cool.status, "rate-limited");
  assert.equal(cool.quota.sevenDay.utilization, 0.35);
  assert.ok(!JSON.stringify(j).includes(seeded[0].refresh));

  const reset = await cli(["reset-cooldowns", "--json"], { path });
  assert.equal(reset.code, 0);
  assert.deepEqual(json(reset), { reset: 1 });
  const after = readPool(path).anthropic.find((a) => a.email === "cool@x.test");
  assert.equal(after.rateLimitUntil, null);
  assert.equal(after.status, "idle");
  const again = await cli(["reset-cooldowns"], { path });
  assert.equal(again.code, 0);
  assert.match(again.stdout, /no account was cooling/);
});

test("a corrupt pool: every command exits 1 with POOL_CORRUPT and the file stays byte-identical", async () => {
  const path = freshPath();
  await seed(path, [{ email: "c@x.test" }]);
  await seed(path, [{ email: "c@x.test" }]); // a second write leaves a good .bak
  const corrupt = Buffer.from('{"anthropic": [ {"email": "c@x.test", "refresh": "fake-refresh-half');
  writeFileSync(path, corrupt, { mode: 0o600 });

  for (const args of [["list"], ["status"], ["remove", "c@x.test"], ["disable", "c@x.test"], ["priority", "c@x.test", "2"], ["reset-cooldowns"]]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 1, `${args.join(" ")}: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /^error \[POOL_CORRUPT\]: /, args.join(" "));
    assert.ok(!r.stderr.includes("fake-refresh-half"), "no content of the file in the message");
  }
  const addKey = await cli(["add-key", "--email", "k@x.test"], { path, input: `${API_KEY}\n` });
  assert.equal(addKey.code, 1);
  assert.match(addKey.stderr, /POOL_CORRUPT/);
  // Before the login URL: the user was sent through a login whose tokens then had nowhere to go.
  const add = await cli(["add"], { path, input: "" });
  assert.equal(add.code, 1, add.stderr);
  assert.match(add.stderr, /^error \[POOL_CORRUPT\]: /);
  assert.equal(add.stdout, "", "no login URL was shown");
  const j = await cli(["list", "--json"], { path });
  assert.equal(j.code, 1);
  const err = json(j).error;
  assert.equal(err.code, "POOL_CORRUPT");
  assert.match(err.message, /\.bak/);
  assert.deepEqual(readFileSync(path), corrupt, "the corrupt file is byte-for-byte untouched");

  const doc = await cli(["doctor", "--json"], { path });
  assert.equal(doc.code, 3, doc.stdout);
  const report = json(doc);
  assert.equal(report.ok, false);
  const parse = report.checks.find((c) => c.name === "parse");
  assert.equal(parse.level, "problem");
  assert.equal(parse.code, "POOL_CORRUPT");
  const backup = report.checks.find((c) => c.name === "backup");
  assert.equal(backup.level, "ok");
  assert.match(backup.message, /cp /, "doctor says how to restore the .bak");
  assert.deepEqual(readFileSync(path), corrupt, "doctor did not touch it either");
});

test("a deleted pool file: doctor points at the .bak, and making the file anew keeps that backup aside for good", async () => {
  const path = freshPath();
  await seed(path, [{ email: "one@x.test" }, { email: "two@x.test" }]);
  await seed(path, [{ email: "one@x.test" }, { email: "two@x.test" }]); // now a .bak exists
  rmSync(path);
  let j = json(await cli(["doctor", "--json"], { path }));
  const backup = j.checks.find((c) => c.name === "backup");
  assert.equal(backup.level, "warn");
  assert.match(backup.message, /pool file is missing.*2 entries.*cp /);
  // A login makes the file anew; the next write used to replace the .bak holding both accounts.
  await seed(path, [{ email: "new@x.test" }]);
  await seed(path, [{ email: "new@x.test" }, { email: "later@x.test" }]);
  const kept = readdirSync(dirname(path)).filter((f) => f.startsWith("oauth-pool.json.bak-"));
  assert.equal(kept.length, 1, kept.join(", "));
  const earlier = JSON.parse(readFileSync(join(dirname(path), kept[0]), "utf8"));
  assert.deepEqual(
    earlier.anthropic.map((a) => a.email),
    ["one@x.test", "two@x.test"],
  );
  j = json(await cli(["doctor", "--json"], { path }));
  const note = j.checks.find((c) => c.name === "earlier backup");
  assert.equal(note.level, "warn");
  assert.match(note.message, /2 entries.*cp /);
});

test("doctor on a healthy pool: exit 0, every check ok, JSON shape", async () => {
  const path = freshPath();
  await seed(path, [{ email: "d@x.test" }]);
  await seed(path, [{ email: "d@x.test" }]);
  const r = await cli(["doctor"], { path });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /doctor: 0 problem\(s\)/);
  const j = json(await cli(["doctor", "--json"], { path }));
  assert.equal(j.ok, true);
  assert.equal(j.path, path);
  assert.ok(Array.isArray(j.checks) && j.checks.length > 5);
  for (const c of j.checks) {
    assert.equal(typeof c.name, "string");
    assert.ok(["ok", "info", "warn", "problem"].includes(c.level), c.level);
    assert.equal(typeof c.message, "string");
  }
  const names = new Set(j.checks.map((c) => c.name));
  for (const n of ["path", "parse", "lock", "backup", "endpoint"]) assert.ok(names.has(n), `check ${n}`);
  assert.equal(j.checks.find((c) => c.name === "lock").level, "ok");
  assert.match(j.checks.find((c) => c.name === "lock").message, /can be taken/);

  // A missing pool is not a problem either, and doctor creates nothing.
  const nonePath = freshPath();
  const none = await cli(["doctor", "--json"], { path: nonePath });
  assert.equal(none.code, 0, none.stdout);
  assert.ok(!existsSync(dirname(nonePath)));
});

test("doctor names a login that is also in another pool file of this machine, or twice in the pool, and never a token", async () => {
  // Its own HOME: the refresh journal there names the pools this machine has refreshed through.
  const ownHome = mkdtempSync(join(tmp, "home-journal-"));
  const env = { HOME: ownHome, USERPROFILE: ownHome };
  const refresh = (n) => `fake-refresh-${n}-${process.pid}`;
  const entry = (email, n) => ({ email, refresh: refresh(n), access: `fake-access-${n}`, expires: Date.now() + 3_600_000, status: "idle" });
  const poolAt = async (entries) => {
    const p = freshPath();
    await savePool({ version: 1, anthropic: entries }, p);
    return realpathSync(p);
  };
  const path = await poolAt([entry("a@x.test", 1), entry("b@x.test", 2), entry("twin@x.test", 2), entry("alone@x.test", 3)]);
  const copy = await poolAt([entry("a@x.test", 1), entry("c@x.test", 4)]);
  const renamed = await poolAt([entry("alias@x.test", 1)]);
  const unrelated = await poolAt([entry("d@x.test", 5)]);
  if (posix) chmodSync(copy, 0o640);

  // No journal yet: nothing to compare with but the pool itself.
  let j = json(await cli(["doctor", "--json"], { path, env }));
  assert.deepEqual(
    j.checks.filter((c) => c.name === "same login").map((c) => [c.email, c.there, c.store]),
    [["b@x.test", "twin@x.test", null]],
  );

  const at = Date.now();
  const seen = (store, i) => ({ token: `tag-${i}`, store, email: "a@x.test", at: at - i, saved: true });
  const stores = [path, copy, renamed, unrelated, join(tmp, "gone", "oauth-pool.json"), "postgres://pool@127.0.0.1:1/pool", "relative.json"];
  mkdirSync(join(ownHome, ".aidevops"), { recursive: true, mode: 0o700 });
  writeFileSync(join(ownHome, ".aidevops", "oauth-pool-refreshes.json"), JSON.stringify({ version: 1, refreshes: stores.map(seen) }), { mode: 0o600 });

  const r = await cli(["doctor"], { path, env });
  assert.equal(r.code, 0, "a warning, not a problem");
  assert.ok(
    r.stdout.includes(
      `a@x.test is also in ${copy}: a refresh token works once; keep the login in one pool (remove it from the other) or they will log each other out`,
    ),
    r.stdout,
  );
  assert.ok(r.stdout.includes(`a@x.test is also in ${renamed} (as alias@x.test): a refresh token works once`), r.stdout);
  assert.match(r.stdout, /b@x\.test and twin@x\.test are one login \(the same refresh token\): .*oauth-pool remove twin@x\.test/);
  j = json(await cli(["doctor", "--json"], { path, env }));
  assert.deepEqual(
    j.checks.filter((c) => c.name === "same login").map((c) => [c.level, c.email, c.there, c.store]),
    [
      ["warn", "b@x.test", "twin@x.test", null],
      ["warn", "a@x.test", "a@x.test", copy],
      ["warn", "a@x.test", "alias@x.test", renamed],
    ],
  );
  for (const out of [r, j]) {
    const text = JSON.stringify(out);
    for (const n of [1, 2, 3, 4, 5]) assert.ok(!text.includes(refresh(n)), "a refresh token reached the report");
  }
  if (posix) assert.equal(statSync(copy).mode & 0o777, 0o640, "the other pool was only looked at");

  // From the other side, the same login is found in the first pool (and the third).
  j = json(await cli(["doctor", "--json"], { path: copy, env }));
  assert.deepEqual(
    j.checks.filter((c) => c.name === "same login").map((c) => [c.email, c.there, c.store]),
    [
      ["a@x.test", "a@x.test", path],
      ["a@x.test", "alias@x.test", renamed],
    ],
  );
});

test("doctor: a setting whose text is not taken as written warns, naming what applies instead", async () => {
  const path = freshPath();
  await seed(path, [{ email: "s@x.test" }]);
  const env = {
    OAUTH_POOL_SOFT_THRESHOLD: "90",
    OAUTH_POOL_JITTER_MS: "5s",
    OAUTH_POOL_USAGE: "false",
    OAUTH_POOL_RESPONSE_TIMEOUT_MS: "0",
    OAUTH_POOL_TIMEOUT_MS: "45000",
  };
  const r = await cli(["doctor", "--json"], { path, env });
  assert.equal(r.code, 0, "warnings only: the pool works with what applies");
  const settings = Object.fromEntries(
    json(r)
      .checks.filter((c) => c.name === "setting")
      .map((c) => [c.variable, c]),
  );
  assert.equal(settings.OAUTH_POOL_TIMEOUT_MS.level, "ok");
  assert.match(settings.OAUTH_POOL_SOFT_THRESHOLD.message, /over 1: it is a fraction \(0\.9 = 90 %\)/);
  assert.match(settings.OAUTH_POOL_JITTER_MS.message, /"5s" is not a whole number of milliseconds; the default, 0, applies/);
  assert.match(settings.OAUTH_POOL_USAGE.message, /only `off` turns it off/);
  assert.match(settings.OAUTH_POOL_RESPONSE_TIMEOUT_MS.message, /the default, 300000, applies/);
  for (const v of ["OAUTH_POOL_SOFT_THRESHOLD", "OAUTH_POOL_JITTER_MS", "OAUTH_POOL_USAGE", "OAUTH_POOL_RESPONSE_TIMEOUT_MS"])
    assert.equal(settings[v].level, "warn", v);
  const text = await cli(["doctor"], { path, env });
  assert.match(text.stdout, /warn\s+setting\s+OAUTH_POOL_SOFT_THRESHOLD: 90 is over 1/);
});

test("doctor reports a pool file other users can read", { skip: !posix && "POSIX modes" }, async () => {
  const path = freshPath();
  await seed(path, [{ email: "wide@x.test" }]);
  chmodSync(path, 0o644);
  const r = await cli(["doctor"], { path });
  assert.equal(r.code, 3, r.stdout);
  assert.match(r.stdout, /FAIL\s+file mode\s+.*0644/);
  const wideDir = freshPath();
  await seed(wideDir, [{ email: "wide@x.test" }]);
  chmodSync(dirname(wideDir), 0o755);
  const j = await cli(["doctor", "--json"], { path: wideDir });
  assert.equal(j.code, 3);
  const dir = json(j).checks.find((c) => c.name === "directory");
  assert.equal(dir.level, "problem");
  assert.match(dir.message, /0755/);
});

test("doctor: leftover temp files warn; a plain-http endpoint off loopback is a problem", async () => {
  const path = freshPath();
  await seed(path, [{ email: "t@x.test" }]);
  writeFileSync(join(dirname(path), ".oauth-pool.json.k3Xy9a.tmp"), "{}", { mode: 0o600 });
  let j = json(await cli(["doctor", "--json"], { path }));
  const temps = j.checks.find((c) => c.name === "temp files");
  assert.equal(temps.level, "warn");
  assert.deepEqual(temps.files, [".oauth-pool.json.k3Xy9a.tmp"]);
  assert.equal(j.ok, true, "a warning is not a failure");

  const loop = await cli(["doctor", "--json"], { path, env: { OAUTH_POOL_API_URL: "http://127.0.0.1:9", OAUTH_POOL_TOKEN_URL: "https://example.test/token" } });
  assert.equal(loop.code, 0, loop.stdout);
  const insecure = await cli(["doctor", "--json"], { path, env: { OAUTH_POOL_API_URL: "http://api.example.test" } });
  assert.equal(insecure.code, 3);
  j = json(insecure);
  const bad = j.checks.filter((c) => c.name === "endpoint" && c.level === "problem");
  assert.equal(bad.length, 1);
  assert.match(bad[0].message, /OAUTH_POOL_API_URL.*INSECURE_ENDPOINT/);
  const scheme = await cli(["doctor"], { path, env: { OAUTH_POOL_TOKEN_URL: "ftp://127.0.0.1/x" } });
  assert.equal(scheme.code, 3);
  // A proxy setting no client could use is a problem, not "direct".
  const proxied = await cli(["doctor", "--json"], {
    path,
    env: { OAUTH_POOL_API_URL: "https://api.example.test", OAUTH_POOL_TOKEN_URL: "https://example.test/token", HTTPS_PROXY: "socks5://127.0.0.1:1080" },
  });
  assert.equal(proxied.code, 3, proxied.stdout);
  let problems = json(proxied).checks.filter((c) => c.name === "endpoint" && c.level === "problem");
  assert.equal(problems.length, 2, JSON.stringify(problems));
  for (const p of problems) assert.match(p.message, /HTTPS_PROXY is not a proxy this client can use/);
  // An endpoint URL holding a password or a query is refused, shown without them.
  const env = {
    OAUTH_POOL_API_URL: "https://api.example.test/?key=abc",
    OAUTH_POOL_TOKEN_URL: "https://u:secretpw@example.test/token",
    HTTPS_PROXY: "socks5://127.0.0.1:1080",
  };
  const leaky = await cli(["doctor", "--json"], { path, env });
  assert.equal(leaky.code, 3, leaky.stdout);
  problems = json(leaky).checks.filter((c) => c.name === "endpoint" && c.level === "problem");
  assert.deepEqual(problems.map((p) => p.message.split(":")[0]).sort(), ["OAUTH_POOL_API_URL", "OAUTH_POOL_TOKEN_URL"], JSON.stringify(problems));
  assert.doesNotMatch(leaky.stdout, /secretpw|key=abc/);
});

/** Runs `oauth-pool add`, approves the URL it prints at the mock as `email`, pastes the code. */
function addThroughMock(path, email, { args = [], tamper = (p) => p, typed = (p) => `${p}\n` } = {}) {
  let approved = null;
  return cli(["add", ...args], {
    path,
    env: { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url },
    onStdout(stdout, child) {
      if (approved !== null) return;
      const line = stdout.split("\n").find((l) => l.includes("oauth/authorize"));
      if (!line || !stdout.includes("\n")) return;
      const url = line.startsWith("{") ? JSON.parse(line).url : line.trim();
      approved = tamper(mock.approve(url, email));
      child.stdin.end(typed(approved));
    },
  }).then((r) => ({ ...r, paste: approved }));
}

test("add: prints the authorize URL, reads the pasted code, adds the account (loopback mock)", async () => {
  const path = freshPath();
  const r = await addThroughMock(path, "alice@x.test");
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const urlLine = r.stdout.split("\n")[0];
  const url = new URL(urlLine);
  assert.equal(url.searchParams.get("code_challenge_method"), "S256");
  assert.ok(url.searchParams.get("state"));
  assert.match(r.stdout, /added alice@x\.test/);
  // A subscription login is an opt-in told what Anthropic's terms say (anchors.md section 0).
  assert.match(
    r.stderr,
    /Anthropic's terms reserve Pro\/Max logins for Claude Code and claude\.ai; a Console API key is the sanctioned way .*`oauth-pool add-key` adds one/,
  );
  assert.equal(r.stderr.split("terms reserve").length - 1, 1, "said once per login");
  const stored = readPool(path).anthropic;
  assert.equal(stored.length, 1);
  const t = mock.tokens("alice@x.test");
  assert.equal(stored[0].email, "alice@x.test");
  assert.equal(stored[0].access, t.access);
  assert.equal(stored[0].refresh, t.refresh);
  assertNoSecret(r, [t.access, t.refresh, r.paste.split("#")[0]]);

  // --json: two lines, the URL then the result; the same email again updates it.
  const j = await addThroughMock(path, "alice@x.test", { args: ["--json"] });
  assert.equal(j.code, 0, j.stdout + j.stderr);
  const [first, second] = jsonLines(j);
  assert.match(first.url, /^https:\/\/.*oauth\/authorize\?/);
  assert.deepEqual(second, { email: "alice@x.test", added: false });
  assert.equal(j.stderr, "", "nothing but JSON in --json mode");
  assert.equal(readPool(path).anthropic.length, 1);
  assert.equal(readPool(path).anthropic[0].refresh, mock.tokens("alice@x.test").refresh);

  const console = await addThroughMock(path, "bob@x.test", { args: ["--mode", "console"] });
  assert.equal(console.code, 0, console.stderr);
  assert.doesNotMatch(console.stderr, /terms reserve/, "a Console login is the sanctioned path");
  assert.match(console.stdout, /added bob@x\.test \(an API key the Console made for this login\)/);
  assert.deepEqual(
    readPool(path)
      .anthropic.map((a) => a.email)
      .sort(),
    ["alice@x.test", "bob@x.test"],
  );
  const bob = readPool(path).anthropic.find((a) => a.email === "bob@x.test");
  assert.equal(bob.type, "api", "a Console login's member is the key made for it");
  assert.ok(bob.key && !bob.refresh);
  assertNoSecret(console, [bob.key]);
});

test("add: a paste refused before anything is sent (pasted twice) asks again, and the code still logs in", async () => {
  const path = freshPath();
  const r = await addThroughMock(path, "again@x.test", { typed: (p) => `${p} ${p}\n${p}\n` });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /more than one code .*Nothing was sent: paste the code again/);
  assert.match(r.stdout, /added again@x\.test/);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["again@x.test"],
  );
});

// Found by a review (2026-12-07, fifth): the token endpoint's 429 or 503 ended `add`, the code
// unused and the verifier gone with the process: the person logged in again in the browser.
test("add: a token endpoint that did not take the code (a 429, a 503) asks for it again, and the same code then logs in", async () => {
  for (const status of [429, 503]) {
    const path = freshPath();
    const email = `busy${status}@x.test`;
    mock.setTokenMode({ grant: "authorization_code", status, times: 1 });
    try {
      const r = await addThroughMock(path, email, { typed: (p) => `${p}\n${p}\n` });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, new RegExp(`HTTP ${status}.*The code was not taken: paste it again`));
      assert.match(r.stdout, new RegExp(`added ${email}`));
      assert.deepEqual(
        readPool(path).anthropic.map((a) => a.email),
        [email],
      );
    } finally {
      mock.setTokenMode(null);
    }
  }
  // Piped once, the failure is the command's, as before.
  mock.setTokenMode({ grant: "authorization_code", status: 503, times: 1 });
  try {
    const once = await addThroughMock(freshPath(), "busyonce@x.test", { typed: (p) => `${p}\n` });
    assert.equal(once.code, 1, once.stdout);
    assert.match(once.stderr, /OAUTH_HTTP/);
  } finally {
    mock.setTokenMode(null);
  }
});

// Found by a review (2026-12-08): a Console login whose key the API key endpoint did not make
// (a 503, a 429, a dropped connection) came after its code was spent. `add` said "The code was
// not taken: paste it again", and refused every paste after it "completed already" until stdin
// closed. It ends at once now, saying to log in again.
test("add --mode console: an API key endpoint failing after the code was spent (503, 429, a reset) ends at once saying to log in again, not asking for the code", async () => {
  let fault;
  let keys = 0;
  const api = createHttpServer((req, res) => {
    req.resume();
    req.on("end", () => {
      if (!req.url.includes("create_api_key")) return res.writeHead(404).end();
      keys++;
      if (fault === "reset") return req.socket.destroy();
      const type = fault === 429 ? "rate_limit_error" : "overloaded_error";
      res.writeHead(fault, { "content-type": "application/json", "retry-after": "30" });
      res.end(JSON.stringify({ type: "error", error: { type, message: "try again later" } }));
    });
  });
  await new Promise((r) => api.listen(0, "127.0.0.1", r));
  try {
    for (const f of [503, 429, "reset"]) {
      for (const args of [
        ["add", "--mode", "console"],
        ["add", "--mode", "console", "--json"],
      ]) {
        const what = `${f} ${args.join(" ")}`;
        fault = f;
        keys = 0;
        const path = freshPath();
        const exchanges = mock.stats().exchangeCalls;
        let pasted = false;
        let closedHere = false;
        let timer;
        const r = await cli(args, {
          path,
          env: { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: `http://127.0.0.1:${api.address().port}` },
          onStdout(stdout, child) {
            if (pasted) return;
            const line = stdout.split("\n").find((l) => l.includes("oauth/authorize"));
            if (!line || !stdout.includes("\n")) return;
            pasted = true;
            // Pasted once, stdin left open: the command ends by itself, or waits for more.
            child.stdin.write(`${mock.approve(line.startsWith("{") ? JSON.parse(line).url : line.trim(), "spent-code@x.test")}\n`);
            timer = setTimeout(() => {
              closedHere = true;
              child.stdin.end();
            }, 10_000);
          },
        });
        clearTimeout(timer);
        assert.ok(pasted, `${what}: ${r.stdout}${r.stderr}`);
        assert.equal(r.code, 1, `${what}: ${r.stdout}${r.stderr}`);
        assert.ok(!closedHere, `${what}: waited for another paste: ${r.stderr}`);
        assert.doesNotMatch(r.stdout + r.stderr, /paste it again|completed already/, what);
        const error = args.includes("--json") ? jsonLines(r).at(-1).error : { code: r.stderr.match(/error \[(\w+)\]/)?.[1], message: r.stderr };
        assert.equal(error.code, f === "reset" ? "NETWORK" : "OAUTH_HTTP", `${what}: ${r.stdout}${r.stderr}`);
        if (f === "reset") {
          assert.match(error.message, /the pasted code was spent and cannot be used again: run `oauth-pool add --mode console` to log in once more/, what);
        } else {
          // The endpoint's own message says "log in again": the hint is not said twice.
          assert.match(error.message, new RegExp(`HTTP ${f}.*log in again`), what);
          assert.doesNotMatch(error.message, /oauth-pool add --mode console/, what);
        }
        assert.equal(mock.stats().exchangeCalls - exchanges, 1, `${what}: the code was sent once`);
        assert.equal(keys, 1, `${what}: one key asked for`);
        assert.ok(!existsSync(path) || readPool(path).anthropic.length === 0, `${what}: nothing added`);
      }
    }
  } finally {
    api.close();
  }
});

test("add and add-key: a paste wrapped by a terminal in bracketed-paste mode, or carrying zero-width characters, is the code or key", async () => {
  // A terminal a crashed program left in bracketed-paste mode wraps what is pasted in ESC[200~ and
  // ESC[201~; a page can add zero-width spaces and a byte order mark. Both were "malformed".
  const path = freshPath();
  const wrapped = await addThroughMock(path, "wrapped@x.test", { tamper: (p) => `\x1b[200~${p}\x1b[201~` });
  assert.equal(wrapped.code, 0, wrapped.stdout + wrapped.stderr);
  assert.equal(readPool(path).anthropic[0].refresh, mock.tokens("wrapped@x.test").refresh);
  const invisible = await addThroughMock(path, "invisible@x.test", { tamper: (p) => `\ufeff${p.replace("#", "\u200b#")}\u200d` });
  assert.equal(invisible.code, 0, invisible.stdout + invisible.stderr);
  const key = await cli(["add-key", "--email", "k@x.test", "--json"], { path, input: `\x1b[200~${API_KEY}\u200b\x1b[201~\n` });
  assert.equal(key.code, 0, key.stdout + key.stderr);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => [a.email, a.key ?? a.refresh]),
    [
      ["wrapped@x.test", mock.tokens("wrapped@x.test").refresh],
      ["invisible@x.test", mock.tokens("invisible@x.test").refresh],
      ["k@x.test", API_KEY],
    ],
  );
});

// Enter pressed before pasting: the blank line was taken for the code ("nothing was pasted"),
// and the login it belonged to was lost with the process.
test("add: blank lines before the pasted code are passed over, the code after them read", async () => {
  const path = freshPath();
  const r = await addThroughMock(path, "blank-first@x.test", { args: ["--json"], tamper: (p) => `\n \r\n\t\n${p}` });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual(jsonLines(r).at(-1), { email: "blank-first@x.test", added: true });
});

test("add: a code with another login's state is OAUTH_STATE_MISMATCH, exit 1, nothing written", async () => {
  const path = freshPath();
  const exchanges = mock.stats().exchangeCalls;
  const r = await addThroughMock(path, "mallory@x.test", { args: ["--json"], tamper: (p) => `${p.split("#")[0]}#someone-elses-state` });
  assert.equal(r.code, 1, r.stdout);
  assert.equal(jsonLines(r).at(-1).error.code, "OAUTH_STATE_MISMATCH");
  assert.equal(mock.stats().exchangeCalls, exchanges, "no request made");
  assert.ok(!existsSync(path));
  // A blank line passed over, then a paste with no code in it (a bare Enter then the end is the
  // closed stdin it stands for, USAGE).
  const empty = await cli(["add"], { path, input: "  \t\n#\n", env: { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url } });
  assert.equal(empty.code, 1);
  assert.match(empty.stderr, /error \[OAUTH_BAD_INPUT\]/);
});

test("add: a pasted code holding a NUL, another control character or bytes that are no UTF-8 is OAUTH_BAD_INPUT, nothing sent", async () => {
  // Read from a file or a pipe, a stray byte after the state was answered OAUTH_STATE_MISMATCH
  // ("belongs to a different login attempt: start the login again"), and a new login spoiled by
  // the same byte got the same answer.
  const path = freshPath();
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const exchanges = mock.stats().exchangeCalls;
  const spoil = [
    (p) => Buffer.from(`${p}\0\n`),
    (p) => Buffer.from(`${p.replace("#", "#\u0000")}\n`),
    (p) => Buffer.from(`${p}\x1b\n`),
    (p) => Buffer.from(`${p}\x7f\n`),
    (p) => Buffer.concat([Buffer.from(p), Buffer.from([0xff, 0xfe]), Buffer.from("\n")]),
    (p) => Buffer.from(`https://platform.claude.com/oauth/code/callback?code=${p.split("#")[0]}&state=${p.split("#")[1]}%00\n`),
  ];
  for (const [i, bytes] of spoil.entries()) {
    for (const args of [["add"], ["add", "--json"]]) {
      let sent = false;
      const r = await cli(args, {
        path,
        env,
        onStdout(stdout, child) {
          if (sent) return;
          const line = stdout.split("\n").find((l) => l.includes("oauth/authorize"));
          if (!line || !stdout.includes("\n")) return;
          sent = true;
          child.stdin.end(bytes(mock.approve(line.startsWith("{") ? JSON.parse(line).url : line.trim(), "stray@x.test")));
        },
      });
      assert.equal(r.code, 1, `case ${i} ${args}: ${r.stdout}${r.stderr}`);
      const error = args.includes("--json") ? jsonLines(r).at(-1).error : { code: r.stderr.match(/error \[(\w+)\]/)?.[1], message: r.stderr };
      assert.equal(error.code, "OAUTH_BAD_INPUT", `case ${i} ${args}: ${r.stdout}${r.stderr}`);
      assert.match(error.message, /not a code from the login page|malformed/, `case ${i}`);
    }
  }
  assert.equal(mock.stats().exchangeCalls, exchanges, "nothing sent to the token endpoint");
  assert.ok(!existsSync(path), "nothing written");
});

test("add with a token endpoint the pool refuses says so before the login URL: INSECURE_ENDPOINT, exit 1, no login started", async () => {
  // The URL was printed and the code read first: the person logged in in a browser, pasted the
  // code, and only then heard that OAUTH_POOL_TOKEN_URL was refused; that login was for nothing.
  const path = freshPath();
  for (const tokenUrl of ["platform.claude.com/v1/oauth/token", "http://192.0.2.1/v1/oauth/token"]) {
    for (const args of [["add"], ["add", "--json"]]) {
      const r = await cli(args, { path, input: "some-code#some-state\n", env: { OAUTH_POOL_TOKEN_URL: tokenUrl, OAUTH_POOL_API_URL: mock.url } });
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.doesNotMatch(r.stdout, /oauth\/authorize/, "no login URL shown");
      const said = args.includes("--json") ? json(r).error : { code: r.stderr.match(/error \[(\w+)\]/)?.[1], message: r.stderr };
      assert.equal(said.code, "INSECURE_ENDPOINT", r.stdout + r.stderr);
      assert.match(said.message, /OAUTH_POOL_TOKEN_URL/);
      assert.match(said.message, /no login was started/);
      assert.doesNotMatch(r.stderr, /code: |Open this URL/);
    }
  }
  assert.ok(!existsSync(path), "nothing written");
});

// Found by a review (2026-12-08): a Console login's key is made at OAUTH_POOL_API_URL, once the
// code is spent. One the pool refuses was found only then: the login URL printed, the person
// logged in in a browser and pasted the code, the code spent, and the login lost.
test("add --mode console with an OAUTH_POOL_API_URL the pool refuses says so before the login URL: INSECURE_ENDPOINT, exit 1, no code sent", async () => {
  const path = freshPath();
  const exchanges = mock.stats().exchangeCalls;
  // 192.0.2.1 is TEST-NET: refused before any connection is made.
  for (const apiUrl of ["http://192.0.2.1", "api.anthropic.com"]) {
    for (const args of [
      ["add", "--mode", "console"],
      ["add", "--mode", "console", "--json"],
    ]) {
      let pasted = false;
      const r = await cli(args, {
        path,
        env: { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: apiUrl },
        onStdout(stdout, child) {
          if (pasted) return;
          const line = stdout.split("\n").find((l) => l.includes("oauth/authorize"));
          if (!line || !stdout.includes("\n")) return;
          pasted = true;
          child.stdin.end(`${mock.approve(line.startsWith("{") ? JSON.parse(line).url : line.trim(), "insecure-api@x.test")}\n`);
        },
      });
      const what = `${apiUrl} ${args.join(" ")}: ${r.stdout}${r.stderr}`;
      assert.equal(r.code, 1, what);
      assert.ok(!pasted, `no login URL shown: ${what}`);
      assert.doesNotMatch(r.stdout, /oauth\/authorize/, what);
      const said = args.includes("--json") ? json(r).error : { code: r.stderr.match(/error \[(\w+)\]/)?.[1], message: r.stderr };
      assert.equal(said.code, "INSECURE_ENDPOINT", what);
      assert.match(said.message, /OAUTH_POOL_API_URL/, what);
      assert.match(said.message, /no login was started/, what);
      assert.doesNotMatch(r.stderr, /Open this URL/, what);
    }
  }
  assert.equal(mock.stats().exchangeCalls, exchanges, "no code reached the token endpoint");
  assert.ok(!existsSync(path), "nothing written");
});

test("add for a pool whose directory cannot be made (a read-only mount, a parent not ours): POOL_IO before the code is sent, no login spent or held", {
  skip: !posix && "POSIX modes and mounts",
}, async (t) => {
  // The trial write that keeps a login's code unspent when the pool cannot take it was made only
  // in a directory already there: for one still to be made, the code was exchanged, and the
  // login held by the CLI until it was stopped, then lost.
  const isRoot = process.getuid?.() === 0;
  const parent = mkdtempSync(join(tmp, "unmakeable-"));
  let undo;
  if (isRoot) {
    if (spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", parent]).status !== 0) return t.skip("mount is not allowed here");
    spawnSync("mount", ["-o", "remount,ro", parent]);
    undo = () => spawnSync("umount", ["-l", parent]);
  } else {
    chmodSync(parent, 0o500);
    undo = () => chmodSync(parent, 0o700);
  }
  try {
    const path = join(parent, "pool", "oauth-pool.json");
    const exchanges = mock.stats().exchangeCalls;
    const r = await addThroughMock(path, "unmakeable@x.test");
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /error \[POOL_IO\]: .*the code was not spent/);
    assert.doesNotMatch(r.stderr, /holds the login/);
    assert.equal(mock.stats().exchangeCalls, exchanges, "the code was not sent");
    assert.ok(!existsSync(path));
  } finally {
    undo();
  }
});

test("import-claude-code copies a Claude Code login into the pool without printing it", async () => {
  const path = freshPath();
  const t = mock.addAccount("cc@x.test");
  const creds = join(tmp, "credentials.json");
  writeFileSync(
    creds,
    JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires, scopes: ["user:inference"] } }),
    { mode: 0o600 },
  );
  const r = await cli(["import-claude-code", "--credentials", creds, "--email", "cc@x.test", "--yes", "--json"], {
    path,
    env: { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url },
  });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.deepEqual(json(r), { email: "cc@x.test", added: true });
  const a = readPool(path).anthropic[0];
  assert.equal(a.refresh, t.refresh);
  assertNoSecret(r, [t.access, t.refresh]);

  const missing = await cli(["import-claude-code", "--credentials", join(tmp, "nope.json"), "--email", "x@x.test", "--yes"], { path });
  assert.equal(missing.code, 1);
  // The shared-login warning comes first, then the library's refusal.
  assert.match(missing.stderr, /^error \[[A-Z_]+\]: /m);

  // Default location: $HOME/.claude/.credentials.json of the (temporary) HOME.
  const t2 = mock.addAccount("cc2@x.test");
  mkdirSync(join(home, ".claude"), { recursive: true });
  writeFileSync(
    join(home, ".claude", ".credentials.json"),
    JSON.stringify({ claudeAiOauth: { accessToken: t2.access, refreshToken: t2.refresh, expiresAt: t2.expires } }),
    { mode: 0o600 },
  );
  const d = await cli(["import-claude-code", "--email", "cc2@x.test", "--yes"], { path });
  assert.equal(d.code, 0, d.stderr);
  assert.match(d.stdout, /imported cc2@x\.test/);
  assert.equal(readPool(path).anthropic.length, 2);
});

test("doctor refuses a symlinked pool file like the library does", { skip: !posix && "POSIX symlinks" }, async () => {
  const real = freshPath();
  await seed(real, [{ email: "s@x.test" }]);
  const link = join(dirname(real), "link.json");
  symlinkSync(real, link);
  const r = await cli(["doctor", "--json"], { path: link });
  assert.equal(r.code, 3, r.stdout);
  const file = json(r).checks.find((c) => c.name === "file");
  assert.equal(file.level, "problem");
  assert.match(file.message, /symbolic link/);
  const list = await cli(["list", "--json"], { path: link });
  assert.equal(list.code, 1);
  assert.equal(json(list).error.code, "POOL_INSECURE");
});

// The lock is held by `flock(1)` (util-linux) for longer than doctor's probe waits.
const flock = flockAvailable;
test("doctor reports a write lock held too long, and who holds it", { skip: !flock && "needs flock(1) on Linux" }, async () => {
  const path = freshPath();
  await seed(path, [{ email: "l@x.test" }]);
  const holder = await holdLock(`${path}.lock`);
  try {
    const started = Date.now();
    const r = await cli(["doctor", "--json"], { path });
    assert.equal(r.code, 3, r.stdout);
    assert.ok(Date.now() - started < 15_000, "doctor does not wait for the 60 s POOL_BUSY");
    const lock = json(r).checks.find((c) => c.name === "lock");
    assert.equal(lock.level, "problem");
    assert.match(lock.message, /held by another process/);
    assert.ok(
      lock.holders.some((h) => h.pid === holder.pid && /flock/.test(h.command)),
      "names the holding process",
    );
  } finally {
    await holder.release();
  }
  const free = await cli(["doctor", "--json"], { path });
  assert.equal(free.code, 0, free.stdout);
});

/** A pool file written as given (unreadable entries included), private like the library's. */
function writeRawPool(path, anthropic) {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
}

/** Any character that can move the cursor, rewrite the screen or reorder a line (\n aside). */
const RAW_UNSAFE = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;

test("printable() turns control, C1, bidi and separator characters into visible escapes", () => {
  assert.equal(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
  assert.equal(printable("x\ny\r\tz\x00"), "x\\ny\\r\\tz\\x00");
  assert.equal(printable("\u202eevil"), "\\u202eevil");
  assert.equal(printable("\x7f\x9b\u202a\u2066\u2069\u2028\u2029\u200f"), "\\x7f\\x9b\\u202a\\u2066\\u2069\\u2028\\u2029\\u200f");
  assert.equal(printable("ok@x.test ü 日本 C:\\pool"), "ok@x.test ü 日本 C:\\pool", "ordinary text is left alone");
  assert.equal(printable(printable("\x1b\n")), "\\x1b\\n", "escaping twice changes nothing");
  assert.equal(printable(null), "");
  assert.equal(printable(7), "7");
});

test("text output escapes emails and server text from the pool; JSON keeps them exact", async () => {
  const path = freshPath();
  const evil = "evil\x1b[2J\nFAKE  api  idle  0  never\u202e@x.test";
  const lastError = "server said \x1b]0;pwned\x07 \u2066x\u2028y";
  await savePool({ version: 1, anthropic: [{ email: evil, type: "api", key: API_KEY, status: "auth-error", lastError }] }, path);

  const list = await cli(["list"], { path });
  assert.equal(list.code, 0, list.stderr);
  assert.doesNotMatch(list.stdout, RAW_UNSAFE);
  assert.equal(list.stdout.trimEnd().split("\n").length, 2, "a newline in an email cannot add a table row");
  assert.ok(list.stdout.includes("evil\\x1b[2J\\nFAKE  api  idle  0  never\\u202e@x.test"), list.stdout);

  for (const args of [["status"], ["doctor"]]) {
    const r = await cli(args, { path });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout + r.stderr, RAW_UNSAFE, args[0]);
    assert.ok(r.stdout.includes("\\x1b[2J\\n"), args[0]);
    assert.ok(r.stdout.includes("\\x1b]0;pwned\\x07 \\u2066x\\u2028y"), `${args[0]} shows lastError escaped`);
  }

  const disabled = await cli(["disable", evil], { path });
  assert.equal(disabled.code, 0, disabled.stderr);
  assert.doesNotMatch(disabled.stdout, RAW_UNSAFE);
  const missing = await cli(["enable", "nobody\x1b[31m@x.test"], { path });
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^error \[ACCOUNT_NOT_FOUND\]: .*nobody\\x1b\[31m@x\.test/);

  const j = json(await cli(["status", "--json"], { path }));
  assert.equal(j.accounts[0].email, evil, "JSON carries the exact email");
  assert.equal(j.accounts[0].lastError, lastError);
});

test("unreadable entries: list and status show them, remove by email or '#<index>' deletes them", async () => {
  const path = freshPath();
  writeRawPool(path, [{ email: "good@x.test", type: "api", key: API_KEY }, { email: "half@x.test", refresh: 5 }, 42]);

  const list = await cli(["list"], { path });
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /half@x\.test\s+\?\s+unreadable/);
  assert.match(list.stdout, /#2\s+\?\s+unreadable/);
  assert.match(list.stdout, /2 entries of the file cannot be read and are kept as they are/);
  assert.match(list.stdout, /oauth-pool remove '#1'/);
  const lj = json(await cli(["list", "--json"], { path }));
  assert.deepEqual(
    lj.accounts.map((a) => [a.email, a.status, a.index ?? null]),
    [
      ["good@x.test", "idle", null],
      ["half@x.test", "invalid", 1],
      ["#2", "invalid", 2],
    ],
  );
  assert.match(lj.accounts[1].lastError, /unreadable/);

  const status = await cli(["status"], { path });
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /1 account\(s\), 1 usable now, 2 unreadable entries/);
  assert.match(status.stdout, /half@x\.test \(unreadable entry #1\)\n\s+status\s+unreadable, kept as it is/);
  assert.match(status.stdout, /#2 \(unreadable entry #2\)/);

  const doc = json(await cli(["doctor", "--json"], { path }));
  assert.equal(doc.ok, true, "an unreadable entry is a warning, not a failure");
  assert.deepEqual(
    doc.checks.filter((c) => c.name === "account" && c.level === "warn").map((c) => c.index),
    [1, 2],
  );

  const byIndex = await cli(["remove", "#2", "--json"], { path });
  assert.equal(byIndex.code, 0, byIndex.stdout);
  assert.deepEqual(json(byIndex), { email: "#2", removed: 1, was: "an unreadable entry" });
  const byEmail = await cli(["remove", "half@x.test"], { path });
  assert.equal(byEmail.code, 0, byEmail.stderr);
  assert.match(byEmail.stdout, /removed half@x\.test/);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["good@x.test"],
  );
  assert.doesNotMatch((await cli(["list"], { path })).stdout, /unreadable/);
  // Removed by its place, an entry is named: "removed #0" said nothing of whose login went.
  const first = await cli(["remove", "#0"], { path });
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /^removed #0 \(good@x\.test\)$/m);
  assert.deepEqual(readPool(path).anthropic, []);
});

test("remove '#N' while another process removes an entry before it: the entry read at that place goes, or nothing", {
  skip: !flock && "needs flock(1) on Linux",
}, async () => {
  // The CLI read the place, then removed it under the pool's lock: an entry before it removed in
  // between moved the next one to that place, and that one went, reported as the one read.
  for (const gone of ["first", "target"]) {
    const path = freshPath();
    writeRawPool(path, [
      { email: "ann@x.test", type: "api", key: API_KEY },
      { email: "bob@x.test", type: "api", key: API_KEY },
      { email: "cat@x.test", type: "api", key: API_KEY },
    ]);
    // Another writer holds the pool's lock: the CLI reads the pool (reads take no lock), then waits
    // for the lock to remove, with the lock file open, which is how the test knows it got there.
    const holder = await holdLock(`${path}.lock`);
    const child = spawn(process.execPath, [CLI, "remove", "#1", "--json"], { env: childEnv(path), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
    const closed = new Promise((r) => child.on("close", (code, signal) => r(code ?? signal)));
    const waiting = () => {
      try {
        return readdirSync(`/proc/${child.pid}/fd`).some((fd) => {
          try {
            return readlinkSync(`/proc/${child.pid}/fd/${fd}`) === `${path}.lock`;
          } catch {
            return false;
          }
        });
      } catch {
        return false;
      }
    };
    for (let i = 0; i < 1500 && !waiting(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(waiting(), `the CLI waits for the lock: ${stderr}`);
    // The other writer's change: ann (before #1) or bob (#1 itself) removed, written whole.
    const left = gone === "first" ? ["bob@x.test", "cat@x.test"] : ["ann@x.test", "cat@x.test"];
    writeFileSync(`${path}.tmp-other`, JSON.stringify({ version: 1, anthropic: left.map((email) => ({ email, type: "api", key: API_KEY })) }), { mode: 0o600 });
    renameSync(`${path}.tmp-other`, path);
    await holder.release();
    const code = await closed;
    const emails = readPool(path).anthropic.map((a) => a.email);
    if (gone === "first") {
      assert.equal(code, 0, stdout + stderr);
      assert.deepEqual(json({ stdout }), { email: "#1", removed: 1, was: "bob@x.test" });
      assert.deepEqual(emails, ["cat@x.test"], "bob went, whom #1 named when read; cat stays");
    } else {
      assert.equal(code, 1, stdout + stderr);
      assert.equal(json({ stdout }).error.code, "ACCOUNT_NOT_FOUND");
      assert.deepEqual(emails, ["ann@x.test", "cat@x.test"], "bob was gone already; nobody else went");
    }
  }
});

test("status and doctor report emails that differ only in case", async () => {
  const path = freshPath();
  writeRawPool(path, [
    { email: "Case@x.test", type: "api", key: API_KEY },
    { email: "case@x.test", type: "api", key: API_KEY.replace("cliTEST", "cliCASE") },
  ]);
  const status = await cli(["status"], { path });
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /warning: Case@x\.test, case@x\.test differ only in case/);
  assert.deepEqual(json(await cli(["status", "--json"], { path })).caseClashes, [["Case@x.test", "case@x.test"]]);
  const doc = await cli(["doctor", "--json"], { path });
  assert.equal(doc.code, 0, doc.stdout);
  const clash = json(doc).checks.find((c) => c.name === "case clash");
  assert.equal(clash.level, "warn");
  assert.deepEqual(clash.emails, ["Case@x.test", "case@x.test"]);
  // A loose spelling is ambiguous: the library refuses to guess.
  const ambiguous = await cli(["disable", "CASE@x.test"], { path });
  assert.equal(ambiguous.code, 1);
  assert.match(ambiguous.stderr, /INVALID_ARGUMENT.*differ only in case/);
});

test("emails that differ only in Unicode form are reported as such, and a third spelling is refused", async () => {
  const path = freshPath();
  const composed = "jos\u00e9@x.test";
  const decomposed = "jose\u0301@x.test";
  writeRawPool(path, [
    { email: composed, type: "api", key: API_KEY },
    { email: decomposed, type: "api", key: API_KEY.replace("cliTEST", "cliFORM") },
  ]);
  const status = await cli(["status"], { path });
  assert.equal(status.code, 0, status.stderr);
  assert.match(status.stdout, /differ only in case or Unicode form/);
  assert.deepEqual(json(await cli(["status", "--json"], { path })).caseClashes, [[composed, decomposed]]);
  const ambiguous = await cli(["disable", "JOS\u00c9@x.test"], { path });
  assert.equal(ambiguous.code, 1);
  assert.match(ambiguous.stderr, /INVALID_ARGUMENT.*differ only in case or Unicode form/);
});

// The store names an account's refresh lock `<pool>.<first 6 bytes of sha256(lower-cased email)
// in hex>.refresh.lock` (src/store/file.rs); flock(1) holds it like a refreshing process would.
test("a held refresh lock shows in status and as info in doctor", { skip: !flock && "needs flock(1) on Linux" }, async () => {
  const path = freshPath();
  await seed(path, [{ email: "Busy@x.test" }, { email: "free@x.test" }]);
  const tag = createHash("sha256").update("busy@x.test").digest("hex").slice(0, 12);
  const holder = await holdLock(`${path}.${tag}.refresh.lock`);
  try {
    assert.deepEqual(json(await cli(["status", "--json"], { path })).refreshLocked, ["Busy@x.test"]);
    const status = await cli(["status"], { path });
    assert.match(status.stdout, /refresh under way \(its lock is held\): Busy@x\.test\n?$/);
    const doc = await cli(["doctor", "--json"], { path });
    assert.equal(doc.code, 0, doc.stdout);
    const info = json(doc).checks.filter((c) => c.name === "refresh lock");
    assert.deepEqual(
      info.map((c) => [c.level, c.email]),
      [["info", "Busy@x.test"]],
    );
    assert.match((await cli(["doctor"], { path })).stdout, /^info {2}refresh lock\s+Busy@x\.test/m);
  } finally {
    await holder.release();
  }
  const after = await cli(["status"], { path });
  assert.deepEqual(json(await cli(["status", "--json"], { path })).refreshLocked, []);
  assert.doesNotMatch(after.stdout, /refresh under way/);
});

/** A Claude Code credentials file for a fresh account at the mock. */
function claudeCodeLogin(email) {
  const t = mock.addAccount(email);
  const file = join(tmp, `${email}.credentials.json`);
  writeFileSync(file, JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires } }), { mode: 0o600 });
  return { file, tokens: t };
}

test("import-claude-code warns that the login stays shared, and needs --yes without a terminal", async () => {
  const path = freshPath();
  const { file, tokens } = claudeCodeLogin("share@x.test");
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const args = ["import-claude-code", "--credentials", file, "--email", "share@x.test"];

  // stdin is a pipe: no one to ask, so "y" on it is not a yes.
  const piped = await cli(args, { path, env, input: "y\n" });
  assert.equal(piped.code, 2, piped.stderr);
  assert.match(piped.stderr, /^error \[USAGE\]: .*--yes/);
  assert.match(piped.stderr, /logs the other out/);
  const pj = await cli([...args, "--json"], { path, env });
  assert.equal(pj.code, 2);
  assert.equal(json(pj).error.code, "USAGE");
  assert.match(json(pj).error.message, /--json needs --yes/);
  assert.equal(pj.stderr, "");
  assert.ok(!existsSync(path), "nothing imported");

  const yes = await cli([...args, "--yes"], { path, env });
  assert.equal(yes.code, 0, yes.stderr);
  assert.match(yes.stderr, /^warning: .*shared with Claude Code.*logs the other out/);
  assert.match(yes.stdout, /imported share@x\.test from Claude Code/);
  assert.equal(readPool(path).anthropic[0].refresh, tokens.refresh);
  const yj = await cli([...args, "--yes", "--json"], { path, env });
  assert.deepEqual(json(yj), { email: "share@x.test", added: false });
  assert.equal(yj.stderr, "", "nothing but JSON in --json mode");
  assertNoSecret(yes, [tokens.access, tokens.refresh]);
});

// script(1) gives the CLI a terminal for stdin, the way a person runs it.
const script = process.platform === "linux" && spawnSync("script", ["--version"]).status === 0;
test("import-claude-code on a terminal asks y/N first", { skip: !script && "needs script(1) on Linux" }, async () => {
  const path = freshPath();
  const { file } = claudeCodeLogin("tty@x.test");
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const quote = (w) => `'${w.replace(/'/g, `'\\''`)}'`;
  const line = [process.execPath, CLI, "import-claude-code", "--credentials", file, "--email", "tty@x.test"].map(quote).join(" ");
  const onTerminal = (answer) => cli(["-qec", line, "/dev/null"], { path, env, input: answer, command: ["script"] });

  const no = await onTerminal("n\n");
  assert.equal(no.code, 1, no.stdout);
  assert.match(no.stdout, /logs the other out/);
  assert.match(no.stdout, /Import anyway\? \[y\/N\]/);
  assert.match(no.stdout, /error \[CANCELLED\]: nothing was imported/);
  assert.ok(!existsSync(path));

  const yes = await onTerminal("y\n");
  assert.equal(yes.code, 0, yes.stdout);
  assert.match(yes.stdout, /imported tty@x\.test from Claude Code/);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["tty@x.test"],
  );
});

test("add-key on a terminal: a key pasted as soon as the prompt shows is not echoed, and is stored", {
  skip: !script && "needs script(1) on Linux",
}, async () => {
  // The prompt was drawn before the echo went off: a key pasted the moment it showed was echoed
  // (on screen, in the scrollback) whenever the CLI lost the CPU between the two. Several
  // terminals at once make that likely; none may show its key.
  const path = freshPath();
  const quote = (w) => `'${w.replace(/'/g, `'\\''`)}'`;
  const session = async (i) => {
    const key = `${API_KEY}-tty-${i}`;
    const line = [process.execPath, CLI, "add-key", "--email", `tty-${i}@x.test`].map(quote).join(" ");
    let typed = false;
    const r = await cli(["-qec", line, "/dev/null"], {
      path,
      command: ["script"],
      onStdout(stdout, child) {
        if (typed || !stdout.includes("API key: ")) return;
        typed = true;
        child.stdin.write(`${key}\r`);
      },
    });
    assert.ok(typed, r.stdout);
    assert.equal(r.code, 0, r.stdout);
    assert.match(r.stdout, new RegExp(`added tty-${i}@x\\.test \\(API key\\)`));
    assertNoSecret(r, [key.slice(0, 20)]);
    return key;
  };
  const keys = await Promise.all(Array.from({ length: 12 }, (_, i) => session(i)));
  const stored = new Map(readPool(path).anthropic.map((a) => [a.email, a.key]));
  assert.deepEqual(
    keys.map((_, i) => stored.get(`tty-${i}@x.test`)),
    keys,
  );
});

test("add-key on a terminal ended by a signal at its hidden prompt gives the terminal back with its echo on", {
  skip: !script && "needs script(1) on Linux",
}, async () => {
  // The prompt puts the terminal in raw mode (no echo). A `kill`, a closed ssh session or a
  // Ctrl-C sent by another process ended the CLI there and left it so: the shell it returned to
  // showed nothing typed until `stty sane`. The shell below runs `stty -a` on that terminal after.
  const path = freshPath();
  const quote = (w) => `'${w.replace(/'/g, `'\\''`)}'`;
  const cmd = [process.execPath, CLI, "add-key"].map(quote).join(" ");
  const line = `${cmd} </dev/tty & echo "pid=$!"; wait $!; echo "rc=$?"; stty -a`;
  for (const [signal, number] of [
    ["SIGTERM", 15],
    ["SIGINT", 2],
    ["SIGHUP", 1],
  ]) {
    let sent = false;
    const r = await cli(["-qec", `sh -c ${quote(line)}`, "/dev/null"], {
      path,
      command: ["script"],
      onStdout(stdout) {
        const pid = stdout.match(/pid=(\d+)/)?.[1];
        if (sent || !pid || !stdout.includes("API key: ")) return;
        sent = true;
        process.kill(Number(pid), signal);
      },
    });
    assert.ok(sent, r.stdout);
    assert.match(r.stdout, new RegExp(`rc=${128 + number}\\b`), `${signal} ends it as that signal does: ${r.stdout}`);
    const settings = r.stdout.slice(r.stdout.indexOf("rc="));
    assert.match(settings, /(^|[\s;])echo([\s;]|$)/m, `${signal}: the echo is back on: ${settings}`);
    assert.match(settings, /(^|[\s;])icanon([\s;]|$)/m, `${signal}: line editing is back: ${settings}`);
    assert.ok(!existsSync(path), "nothing written");
  }
});

test("add-key on a terminal whose shell ignores SIGHUP (trap '' HUP): a hangup leaves it waiting where the runtime keeps the ignore (Bun)", {
  skip: !script && "needs script(1) on Linux",
}, async () => {
  // The listener that gives the terminal back on a signal must not make an ignored one end the
  // process. Node resets every signal to its default as it starts, so there the hangup ends it.
  const path = freshPath();
  const quote = (w) => `'${w.replace(/'/g, `'\\''`)}'`;
  const cmd = [process.execPath, CLI, "add-key"].map(quote).join(" ");
  const line = `trap '' HUP; ${cmd} </dev/tty & echo "pid=$!"; wait $!; echo "rc=$?"; stty -a`;
  let sent = false;
  const r = await cli(["-qec", `sh -c ${quote(line)}`, "/dev/null"], {
    path,
    command: ["script"],
    onStdout(stdout) {
      const pid = Number(stdout.match(/pid=(\d+)/)?.[1]);
      if (sent || !pid || !stdout.includes("API key: ")) return;
      sent = true;
      process.kill(pid, "SIGHUP");
      setTimeout(() => {
        try {
          process.kill(pid, "SIGTERM");
        } catch {}
      }, 1000);
    },
  });
  assert.ok(sent, r.stdout);
  const keepsIgnore = typeof Bun !== "undefined";
  assert.match(r.stdout, keepsIgnore ? /rc=143\b/ : /rc=(129|143)\b/, `the hangup was ${keepsIgnore ? "ignored" : "default"}: ${r.stdout}`);
  assert.match(r.stdout.slice(r.stdout.indexOf("rc=")), /(^|[\s;])echo([\s;]|$)/m, "the echo is back on");
  assert.ok(!existsSync(path), "nothing written");
});

test("add on a terminal where nobody pastes the code: the same bound as a pipe, its error on a line of its own; Ctrl-C still ends it at once", {
  skip: !script && "needs script(1) on Linux",
}, async () => {
  const path = freshPath();
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const quote = (w) => `'${w.replace(/'/g, `'\\''`)}'`;
  const onTerminal = (args, onStdout = () => {}) =>
    cli(["-qec", [process.execPath, CLI, "add", ...args].map(quote).join(" "), "/dev/null"], { path, env, onStdout, command: ["script"] });
  // The terminal stays open and silent (the helper keeps script's stdin open while onStdout is set).
  const silent = await onTerminal(["--code-timeout-ms", "2000"]);
  assert.equal(silent.code, 2, silent.stdout);
  assert.match(silent.stdout, /code: \r?\nerror \[USAGE\]: add waited 2 s for the pasted code on stdin and none came: the login link has expired/);
  // Ctrl-C typed at the prompt, the bound (15 min by default) far off.
  let typed = false;
  const interrupted = await onTerminal([], (stdout, child) => {
    if (typed || !stdout.includes("code: ")) return;
    typed = true;
    child.stdin.write("\u0003");
  });
  assert.ok(typed, interrupted.stdout);
  assert.equal(interrupted.code, 130, `ended by the interrupt: ${interrupted.stdout}`);
  assert.ok(!existsSync(path), "nothing written");
});

test("add and add-key read one bounded line: endless input and a closed stdin are clear errors", async () => {
  const path = freshPath();
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  if (posix) {
    const zero = openSync("/dev/zero", "r");
    try {
      const r = await cli(["add-key", "--email", "z@x.test"], { path, stdin: zero });
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /^error \[USAGE\]: stdin held more than 64 KB without a line break/);
    } finally {
      closeSync(zero);
    }
  }
  const long = await cli(["add-key", "--json"], { path, input: "k".repeat(200_000) });
  assert.equal(long.code, 2);
  assert.match(json(long).error.message, /64 KB/);
  const longCode = await cli(["add"], { path, env, input: `${"c".repeat(70_000)}\n` });
  assert.equal(longCode.code, 2);
  assert.match(longCode.stderr, /64 KB/);

  const closedKey = await cli(["add-key"], { path, input: "" });
  assert.equal(closedKey.code, 2);
  assert.match(closedKey.stderr, /stdin closed with no key on it/);
  // Enter pressed before pasting is passed over, as `add` does: a blank line and then the end is
  // a closed stdin, and a blank line and then the key adds it (it was "stdin held an empty line").
  const emptyKey = await cli(["add-key"], { path, input: "\n" });
  assert.equal(emptyKey.code, 2);
  assert.match(emptyKey.stderr, /stdin closed with no key on it/);
  const blankFirst = await cli(["add-key", "--email", "blank-first@x.test"], { path: `${path}.keys.json`, input: `\n \n${API_KEY}\n` });
  assert.equal(blankFirst.code, 0, blankFirst.stderr);
  assert.match(blankFirst.stdout, /added blank-first@x\.test \(API key\)/);
  // A usage error of `--json=<value>` is JSON on stdout too, as every `--json` run's error is.
  const jsonValue = await cli(["--json=true", "list"], { path });
  assert.equal(jsonValue.code, 2);
  assert.equal(json(jsonValue).error.code, "USAGE");
  const closedCode = await cli(["add"], { path, env, input: "" });
  assert.equal(closedCode.code, 2);
  assert.match(closedCode.stderr, /stdin closed before a line came/);
  // Blank lines (Enter pressed) and then the end: the same closed stdin, not "nothing was pasted".
  const blankThenClosed = await cli(["add"], { path, env, input: "\n \n\n" });
  assert.equal(blankThenClosed.code, 2, blankThenClosed.stderr);
  assert.match(blankThenClosed.stderr, /stdin closed before a line came/);
  assert.ok(!existsSync(path), "nothing written");
});

test('add-key with text that is no key says what a key looks like, not "[redacted]"', async () => {
  // The example in the message was shaped like a token, and every message is scrubbed of those on
  // its way out: it read "expected something like [redacted]".
  const path = freshPath();
  for (const input of ["not a key\n", "short\n"]) {
    const r = await cli(["add-key"], { path, input });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error \[INVALID_ARGUMENT\]: that does not look like an API key/);
    assert.match(r.stderr, /sk-ant-api\b/);
    assert.doesNotMatch(r.stderr, /redacted/);
  }
  assert.ok(!existsSync(path), "nothing written");
});

// An OAuth token or an Admin key was taken for a key: the member sent it as `x-api-key` (a 401
// each time), and a live refresh token pasted so sat where it could never refresh.
// Found by a review (2026-12-07, fourth): each row's name was checked against the pool's
// secrets made anew for it, so `list` took the square of the pool's size: 16 s for 300
// accounts, three minutes for 1,000 (`--json` 0.14 s). The CLI's own 30 s bound here.
test("list and status of a pool of 1,000 logins answer, each name still checked for the pool's secrets", async () => {
  const path = freshPath();
  const token = (kind) => `${["sk", "ant", kind].join("-")}-${createHash("sha512").update(`${kind}${Math.random()}`).digest("base64url")}`;
  const anthropic = Array.from({ length: 1000 }, (_, i) => ({
    email: `user${i}@example.com`,
    access: token("oat01"),
    refresh: token("ort01"),
    expires: Date.now() + 3_600_000,
  }));
  // One name holds a piece of another login's refresh token: hidden, as in a small pool.
  anthropic[500].email = `team-${anthropic[7].refresh.slice(20, 44)}@x.test`;
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
  for (const command of ["list", "status"]) {
    const r = await cli([command], { path });
    assert.equal(r.code, 0, `${command}: ${r.code} ${r.stderr.slice(0, 300)}`);
    assert.match(r.stdout, /user999@example\.com/, command);
    assert.ok(!r.stdout.includes(anthropic[7].refresh.slice(20, 44)), `${command} shows the piece`);
  }
});

// Found by a review (2026-12-07, fourth): a priority past 2^53 another program wrote came to
// JavaScript as a BigInt, and `list --json` failed with the uncoded "Do not know how to
// serialize a BigInt"; the login serves on, its priority the nearest number, as loadPool gives it.
test("a priority past 2^53 in the file: list --json and status --json answer with a number, and the login is listed as it is", async () => {
  const path = freshPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const token = (kind) => `${["sk", "ant", kind].join("-")}-${"P".repeat(40)}`;
  writeFileSync(
    path,
    `{"version":1,"anthropic":[{"email":"big@x.test","access":"${token("oat01")}","refresh":"${token("ort01")}","expires":${Date.now() + 3_600_000},"priority":9007199254740993},` +
      `{"email":"low@x.test","access":"${token("oat01")}A","refresh":"${token("ort01")}A","expires":${Date.now() + 3_600_000},"priority":-9223372036854775808}]}`,
    { mode: 0o600 },
  );
  const list = await cli(["list", "--json"], { path });
  assert.equal(list.code, 0, list.stdout + list.stderr);
  const priorities = Object.fromEntries(json(list).accounts.map((a) => [a.email, a.priority]));
  assert.deepEqual(priorities, { "big@x.test": 2 ** 53, "low@x.test": -(2 ** 63) });
  const status = await cli(["status", "--json"], { path });
  assert.equal(status.code, 0, status.stdout + status.stderr);
  assert.ok(readFileSync(path, "utf8").includes("9007199254740993"), "the file keeps it exact");
});

test("add-key refuses an OAuth access or refresh token and an Admin key, saying what each is and what to do", async () => {
  const path = freshPath();
  const made = (kind) => `${["sk", "ant", kind].join("-")}-${"Z".repeat(40)}`; // no token-shaped literal
  for (const [kind, said, next] of [
    ["oat01", "an OAuth access token", /oauth-pool add/],
    ["ort01", "an OAuth refresh token", /oauth-pool add/],
    ["admin01", "an Admin API key", /API keys only/],
  ]) {
    const r = await cli(["add-key"], { path, input: `${made(kind)}\n` });
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`^error \\[INVALID_ARGUMENT\\]: that is ${said}, not a Console API key`));
    assert.match(r.stderr, next);
    assert.ok(!r.stderr.includes("Z".repeat(40)), r.stderr);
  }
  // A key cut short, or the prefix alone, was stored and reported added: every request's 401
  // then benched the member (found by a review, 2026-12-07, fourth).
  const prefix = ["sk", "ant", "api03"].join("-");
  for (const [short, tail] of [
    [["sk", "ant", "api"].join("-"), 0],
    [`${prefix}-`, 0],
    [`${prefix}-NeWkEy0`, 7],
  ]) {
    const r = await cli(["add-key", "--json"], { path, input: `${short}\n` });
    assert.equal(r.code, 1, `${short}: ${r.stdout}${r.stderr}`);
    assert.equal(json(r).error.code, "INVALID_ARGUMENT");
    assert.match(json(r).error.message, new RegExp(`cut short \\(${tail} characters after`));
  }
  assert.ok(!existsSync(path), "nothing written");
  const key = await cli(["add-key", "--json"], { path, input: `${made("api03")}\n` });
  assert.equal(key.code, 0, key.stderr);
});

test("add and add-key on a stdin that cannot be read (opened for writing only, a directory): USAGE, exit 2, not the runtime's EBADF", {
  skip: !posix && "POSIX descriptors",
}, async () => {
  // `oauth-pool add-key 0>key.txt` (a typo for <) gave `error [EBADF]: bad file descriptor`,
  // exit 1: a code no script knows, saying nothing of stdin. Bun said EISDIR of a directory.
  const path = freshPath();
  const env = { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url };
  const writeOnly = openSync(join(tmp, "write-only.txt"), "w");
  const dir = openSync(tmp, "r");
  try {
    for (const stdin of [writeOnly, dir]) {
      for (const args of [["add-key"], ["add"], ["add-key", "--json"]]) {
        const r = await cli(args, { path, env, stdin });
        assert.equal(r.code, 2, `${args}: ${r.stdout}${r.stderr}`);
        const error = args.includes("--json") ? json(r).error : { code: r.stderr.match(/error \[(\w+)\]/)?.[1], message: r.stderr };
        assert.equal(error.code, "USAGE", r.stdout + r.stderr);
        // Under Node a directory's stream ended as an empty pipe does: "stdin closed".
        assert.match(error.message, /stdin cannot be read/);
        assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
      }
    }
  } finally {
    closeSync(writeOnly);
    closeSync(dir);
  }
  assert.ok(!existsSync(path), "nothing written");
});

test("doctor takes the pool's files and the endpoint rule from the library, and names each endpoint's proxy", async () => {
  const path = freshPath();
  await seed(path, [{ email: "p@x.test" }]);
  const plain = json(await cli(["doctor", "--json"], { path }));
  assert.equal(plain.files.lock, `${path}.lock`);
  assert.equal(plain.files.backup, `${path}.bak`);
  assert.match(plain.checks.find((c) => c.name === "path").message, /from OAUTH_POOL_PATH/);
  const direct = plain.checks.filter((c) => c.name === "endpoint");
  assert.equal(direct.length, 2);
  for (const c of direct) {
    assert.equal(c.proxy, null);
    assert.match(c.message, /direct \(no proxy\)/);
  }

  const flagged = json(await cli(["doctor", "--json", "--path", path], { path: freshPath() }));
  assert.match(flagged.checks.find((c) => c.name === "path").message, /from --path/);

  const env = { HTTPS_PROXY: "http://user:hunter2@127.0.0.1:3128", NO_PROXY: "" };
  const proxied = await cli(["doctor", "--json"], { path, env });
  assert.equal(proxied.code, 0, proxied.stdout);
  const viaProxy = json(proxied).checks.filter((c) => c.name === "endpoint");
  assert.deepEqual(
    viaProxy.map((c) => c.variable),
    ["OAUTH_POOL_TOKEN_URL", "OAUTH_POOL_API_URL"],
  );
  for (const c of viaProxy) {
    assert.match(c.proxy, /^http:\/\/user:\*\*\*@127\.0\.0\.1:3128/);
    assert.match(c.message, /via proxy http:\/\/user:\*\*\*@127\.0\.0\.1:3128/);
  }
  const text = await cli(["doctor"], { path, env });
  assert.match(text.stdout, /ok\s+endpoint\s+OAUTH_POOL_API_URL unset: https:\/\/api\.anthropic\.com\/?, via proxy/);
  assertNoSecret(proxied, ["hunter2"]);
  assertNoSecret(text, ["hunter2"]);
});

test("--help and --version work without the native binary; commands report NATIVE_MISSING", async () => {
  // A copy of the package's JavaScript with no .node next to it (and no optional package to find).
  const root = join(tmp, "no-native");
  const pkgRoot = join(dirname(CLI), "..");
  for (const part of ["bin", "lib", "package.json"]) cpSync(join(pkgRoot, part), join(root, part), { recursive: true });
  const bare = [process.execPath, join(root, "bin", "oauth-pool.mjs")];
  const path = freshPath();

  const help = await cli(["--help"], { path, command: bare });
  assert.equal(help.code, 0, help.stderr);
  assert.match(help.stdout, /import-claude-code/);
  const version = await cli(["--version"], { path, command: bare });
  assert.equal(version.code, 0);
  assert.match(version.stdout, /native addon not loaded: NATIVE_MISSING; `oauth-pool doctor` says why/);
  const versionJson = json(await cli(["--version", "--json"], { path, command: bare }));
  assert.equal(versionJson.native, null);
  // The platform is plain JavaScript's to say, and why the addon is not there is said too.
  assert.match(versionJson.platform, /^linux-/);
  assert.equal(versionJson.error.code, "NATIVE_MISSING");

  const list = await cli(["list"], { path, command: bare });
  assert.equal(list.code, 1);
  assert.match(list.stderr, /^error \[NATIVE_MISSING\]: /);
  // One line that says what to do, without Node's require stack (printed as literal \n's).
  assert.match(list.stderr, /npm install opencode-oauth-pool-[\w-]+@\d+\.\d+\.\d+; .*in a source checkout of opencode-oauth-pool/);
  assert.doesNotMatch(list.stderr, /Require stack|\\n/);
  assert.equal(json(await cli(["list", "--json"], { path, command: bare })).error.code, "NATIVE_MISSING");
  const doc = await cli(["doctor", "--json"], { path, command: bare });
  assert.equal(doc.code, 3);
  const native = json(doc).checks.find((c) => c.name === "native");
  assert.equal(native.level, "problem");
  assert.equal(native.code, "NATIVE_MISSING");
  assert.ok(!existsSync(path));
});

test("options go anywhere, negative numbers stay values, and usage errors name the option", async () => {
  const path = freshPath();
  await seed(path, [{ email: "n@x.test" }]);
  let r = await cli(["--json", "priority", "n@x.test", "-12"], { path });
  assert.deepEqual(json(r), { email: "n@x.test", priority: -12 });
  r = await cli(["priority", "--path", path, "n@x.test", "-1"], { path: freshPath() });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(readPool(path).anthropic[0].priority, -1);
  const cases = [
    [["list", "--mode", "max"], /list does not take --mode/],
    [["list", "--nope"], /list does not take --nope/],
    [["frobnicate", "--nope"], /unknown option --nope/],
    [["list", "--path"], /--path needs a value/],
    [["list", "--path="], /--path needs a value/],
    [["list", "--json=yes"], /--json takes no value/],
    [["list", "-x"], /list does not take -x/],
    [["add-key", "sk-ant-oops"], /the key is read from stdin/],
    [["priority", "n@x.test", "-1.5"], /priority must be an integer, not -1\.5/],
    // Number-like words stay values too, for the command to say what is wrong with them (a
    // -1e3 was "priority does not take -1"); a letter of a word is named with its word.
    [["priority", "n@x.test", "-1e3"], /priority must be an integer, not -1e3/],
    [["reserve", "n@x.test", "-.5"], /reserve takes a fraction from 0 to 1 .*, not -\.5/],
    [["priority", "n@x.test", "-Infinity"], /priority does not take -I \(in -Infinity\)/],
  ];
  for (const [args, message] of cases) {
    const u = await cli(args, { path });
    assert.equal(u.code, 2, args.join(" "));
    // A run that asked for JSON (`--json=yes` too) gets its usage error as JSON on stdout.
    const said = args.some((a) => a.startsWith("--json")) ? json(u).error.message : u.stderr;
    assert.match(said, message, args.join(" "));
  }
});

test("a reserve reads as set: to a tenth of a percent where needed, some never 0 %, less than all never 100 %", async () => {
  // 0.004 read "reaches 100 %" and "0% of every window kept"; 0.999 the other way round.
  const path = freshPath();
  await seed(path, [{ email: "r@x.test" }]);
  for (const [fraction, line, kept] of [
    ["0.2", "80 %", "20%"],
    ["0.004", "99.6 %", "0.4%"],
    ["0.999", "0.1 %", "99.9%"],
    ["0.0001", "99.9 %", "0.1%"],
    ["0.125", "87.5 %", "12.5%"],
    // Written with a trailing point, as Number reads it ("1." was taken and "0." refused).
    ["0.", null, null],
    ["1.", "0 %", "100%"],
  ]) {
    const set = await cli(["reserve", "r@x.test", fraction], { path });
    assert.equal(set.code, 0, set.stderr);
    if (line === null) {
      assert.equal(set.stdout, "r@x.test: no reserve\n", fraction);
      continue;
    }
    assert.equal(set.stdout, `r@x.test: the pool stops using it once any window reaches ${line}\n`, fraction);
    assert.match((await cli(["status"], { path })).stdout, new RegExp(`^ {4}reserve {2}${kept.replace(".", "\\.")} of every window kept`, "m"), fraction);
  }
});

test("parseCommandLine: per-command options, two-word commands, negative numbers (no child process)", () => {
  const registry = {
    priority: {},
    "store init": {},
    "store copy": { from: { type: "string" }, to: { type: "string" } },
    serve: { port: { type: "string" }, "show-key": { type: "boolean" } },
  };
  const parse = (...argv) => parseCommandLine(argv, (name) => registry[name]);
  assert.deepEqual(parse("priority", "a@x", "-1", "--json"), { command: "priority", positionals: ["a@x", "-1"], options: { json: true } });
  assert.deepEqual(parse("priority", "a@x", "-1e3").positionals, ["a@x", "-1e3"]);
  assert.deepEqual(parse("priority", "a@x", "-0x10").positionals, ["a@x", "-0x10"]);
  assert.deepEqual(parse("--path", "/p", "store", "copy", "--from", "file", "--to=keychain"), {
    command: "store copy",
    positionals: [],
    options: { path: "/p", from: "file", to: "keychain" },
  });
  assert.deepEqual(parse("store", "init").command, "store init");
  assert.throws(() => parse("store", "init", "--from", "x"), /store init does not take --from/);
  assert.deepEqual(parse("serve", "--port", "0", "--show-key").options, { port: "0", "show-key": true });
  assert.throws(() => parse("serve", "--show-key=1"), /--show-key takes no value/);
  assert.throws(() => parse("serve", "--port"), /--port needs a value/);
  assert.throws(() => parse("serve", "--port", "--show-key"), /--port needs a value \(write --port=<value>/);
  assert.deepEqual(parse("-V"), { command: undefined, positionals: [], options: { version: true } });
  // A command's own options before it: their values are not the command (`--port 0 serve` was
  // "unknown command 0"), for two-word commands too; an unknown first word stays unknown.
  assert.deepEqual(parse("--port", "0", "serve", "--show-key"), { command: "serve", positionals: [], options: { port: "0", "show-key": true } });
  assert.deepEqual(parse("--from", "file", "store", "copy", "--to", "k"), { command: "store copy", positionals: [], options: { from: "file", to: "k" } });
  assert.equal(parse("frobnicate", "serve").command, "frobnicate");
  // A value that names a command is a value when the command after it takes it so.
  assert.deepEqual(parse("--to", "priority", "store", "copy").options, { to: "priority" });
  assert.equal(parse("--to", "priority", "store", "copy").command, "store copy");
  assert.equal(parse("priority", "serve").command, "priority");
  assert.throws(() => parse("--port", "0", "priority"), /unknown option --port/);
});

test("output that cannot be written is a failure (exit 1 and why), a reader that stops early is not", {
  skip: !existsSync("/dev/full") && "no /dev/full",
}, () => {
  const path = freshPath();
  const full = openSync("/dev/full", "w");
  try {
    const r = spawnSync(process.execPath, [CLI, "list", "--path", path], { stdio: ["ignore", full, "pipe"], encoding: "utf8", timeout: 30_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /could not write the output/);
  } finally {
    closeSync(full);
  }
});

test("store copy between files keeps every entry; a source file that does not exist is refused and the destination stays", async () => {
  const from = freshPath();
  const to = freshPath();
  await seed(from, [{ email: "copied@x.test" }]);
  await seed(to, [{ email: "kept@x.test" }, { email: "copied@x.test" }]);
  // The destination's own login of another account is gone after the copy: named, with where it
  // can still be had. One of the same name (an older or newer token of one login) is not named.
  const losing = await cli(["store", "copy", "--from", from, "--to", to], { path: to });
  assert.equal(losing.code, 0, losing.stderr);
  assert.match(
    losing.stdout,
    /held a login or key that .* does not, now gone from it \(its \.bak keeps it until its next write\): kept@x\.test\. Log it in again/,
  );
  assert.ok(
    readPool(`${to}.bak`).anthropic.some((a) => a.email === "kept@x.test"),
    "the .bak holds it",
  );
  const copied = json(await cli(["store", "copy", "--from", from, "--to", to, "--json"], { path: to }));
  assert.equal(copied.entries, 1);
  assert.deepEqual(copied.replaced, [], "copied again, nothing of the destination's is lost");
  assert.deepEqual(
    readPool(to).anthropic.map((a) => a.email),
    ["copied@x.test"],
  );

  // A mistyped --from used to read as an empty pool and replace every account at --to.
  const before = readFileSync(to);
  const typo = join(dirname(from), "oauth-pool.jsn");
  const r = await cli(["store", "copy", "--from", typo, "--to", to], { path: to });
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /error \[POOL_IO\]: .*does not exist; nothing was copied/);
  assert.deepEqual(readFileSync(to), before, "the destination is left as it was");
  assert.ok(!existsSync(typo), "nothing is created at the source");
  const j = json(await cli(["store", "copy", "--from", typo, "--to", to, "--json"], { path: to }));
  assert.equal(j.error.code, "POOL_IO");

  // One file named twice (`./d//f`, a linked directory) is no second pool: it said "its login is
  // now in both ... then move <the pool> away", which moved the only copy of the pool.
  const login = freshPath();
  await seed(login, [{ email: "one@x.test" }]);
  const link = join(tmp, `link-${Date.now()}`);
  symlinkSync(dirname(login), link);
  for (const other of [`${dirname(login)}/./${basename(login)}`, join(link, basename(login))]) {
    const same = await cli(["store", "copy", "--from", login, "--to", other], { path: login });
    assert.equal(same.code, 0, same.stderr);
    assert.match(same.stdout, /^copied 1 entry from .* \(the same file\)\n$/, other);
    assert.doesNotMatch(same.stdout, /now in both|move .* away/, other);
  }
  const elsewhere = await cli(["store", "copy", "--from", login, "--to", freshPath()], { path: login });
  assert.match(elsewhere.stdout, /its login is now in both/, "two files still get the warning");
});

test("add-key: a key pasted with the quotes of a shell line or a JSON file around it is the key", async () => {
  // The quotes were kept: the member sent `"<key>"` and every request through it got a 401.
  const path = freshPath();
  const r = await cli(["add-key", "--email", "quoted@x.test", "--json"], { path, input: `"${API_KEY}"\n` });
  assert.equal(r.code, 0, r.stdout);
  assert.deepEqual(json(r), { email: "quoted@x.test", added: true });
  assert.equal(readPool(path).anthropic[0].key, API_KEY);
  // The same key in single quotes, with spaces around: the same member, renewed.
  const again = await cli(["add-key", "--json"], { path, input: `  '${API_KEY}'  \n` });
  assert.deepEqual(json(again), { email: "quoted@x.test", added: false });
  assert.equal(readPool(path).anthropic.length, 1);
});

test("add and add-key: a code or key in backticks or typographic quotes is the code or key, alike", async () => {
  // Copied out of Markdown (`...`) or a chat app or editor that curls quotes (“...”): the
  // key took backticks but not curly quotes, and a code took neither ("malformed").
  const path = freshPath();
  const quotes = [
    ["`", "`"],
    ["\u201c", "\u201d"],
    ["\u2018", "\u2019"],
    ["\u00ab ", " \u00bb"],
  ];
  for (const [i, [open, close]] of quotes.entries()) {
    const email = `quoted-${i}@x.test`;
    const login = await addThroughMock(path, email, { tamper: (p) => ` ${open}${p}${close}` });
    assert.equal(login.code, 0, `${open}code${close}: ${login.stdout}${login.stderr}`);
    assert.equal(readPool(path).anthropic.find((a) => a.email === email)?.refresh, mock.tokens(email).refresh);
    const key = `${API_KEY}-${i}`;
    const r = await cli(["add-key", "--email", `key-${i}@x.test`, "--json"], { path, input: `${open}${key}${close}\n` });
    assert.equal(r.code, 0, `${open}key${close}: ${r.stdout}`);
    assert.equal(readPool(path).anthropic.find((a) => a.email === `key-${i}@x.test`)?.key, key);
  }
});

test("serve on a port already in use: exit 1 with what to do, in text and JSON", async () => {
  const busy = createServer();
  await new Promise((resolve) => busy.listen(0, "127.0.0.1", resolve));
  const { port } = busy.address();
  try {
    const path = freshPath();
    const r = await cli(["serve", "--port", String(port)], { path });
    assert.equal(r.code, 1, r.stdout);
    assert.match(
      r.stderr,
      new RegExp(
        `error \\[INVALID_ARGUMENT\\]: cannot listen on 127\\.0\\.0\\.1:${port}: .*choose another port \\(0 picks a free one: \`--port 0\`, or \`port: 0\` in serve\\(\\)\\)`,
      ),
    );
    const j = json(await cli(["serve", "--port", String(port), "--json"], { path }));
    assert.equal(j.error.code, "INVALID_ARGUMENT");
    assert.match(j.error.message, /another `oauth-pool serve`\?/);
  } finally {
    busy.close();
  }
});

test("serve started ignoring SIGHUP (nohup, trap '' HUP) keeps serving through a hangup where the runtime keeps the ignore (Bun); SIGTERM still stops it", {
  skip: !posix && "POSIX signals",
}, async () => {
  // Its listener for SIGHUP (the terminal closing, for a gateway run in one) stopped a gateway
  // the user had started with nohup to outlive the ssh session. Node sets every signal back to
  // its default as it starts (nohup does not hold there), so under Node a hangup still stops it.
  const path = freshPath();
  await seed(path, [{ email: "hup@x.test" }]);
  const child = spawn("sh", ["-c", `trap '' HUP; exec "$0" "$@"`, process.execPath, CLI, "serve", "--port", "0", "--drain-ms", "0"], {
    env: childEnv(path, { OAUTH_POOL_TOKEN_URL: mock.tokenUrl, OAUTH_POOL_API_URL: mock.url }),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const closed = new Promise((resolve) => child.on("close", (code, signal) => resolve(code ?? signal)));
  const guard = setTimeout(() => child.kill("SIGKILL"), 60_000);
  try {
    let out = "";
    const url = await new Promise((resolve, reject) => {
      child.stdout.setEncoding("utf8").on("data", (d) => {
        out += d;
        const m = /listening on (\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      child.on("close", () => reject(new Error(`serve ended: ${out}`)));
    });
    child.stderr.resume();
    // Its listeners go on just after the URL is printed: a hangup sent before them proves nothing.
    assert.equal((await fetch(`${url}/healthz`)).status, 200);
    await new Promise((r) => setTimeout(r, 500));
    child.kill("SIGHUP");
    const keepsIgnore = typeof Bun !== "undefined";
    const early = await Promise.race([closed, new Promise((r) => setTimeout(() => r("running"), 1500))]);
    if (keepsIgnore) {
      assert.equal(early, "running", "the ignored hangup left the gateway serving");
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
      child.kill("SIGTERM");
    } else if (early === "running") child.kill("SIGTERM");
    assert.equal(await closed, 0);
  } finally {
    clearTimeout(guard);
    child.kill("SIGKILL");
  }
});

test("list: names in CJK or with emoji keep the table's columns in line (terminal columns, not UTF-16 units)", async () => {
  assert.equal(displayWidth("abc"), 3);
  assert.equal(displayWidth("张三"), 4);
  assert.equal(displayWidth("e\u0301"), 1, "a combining accent takes no column");
  assert.equal(displayWidth("team \u{1f680}"), 7);
  const lines = table([
    ["EMAIL", "TYPE"],
    ["张三的钥匙", "api"],
    ["Jose\u0301", "api"],
    ["rocket \u{1f680}", "api"],
    ["x@example.com", "oauth"],
  ]).split("\n");
  const typeColumn = (line) => displayWidth(line.slice(0, line.search(/(TYPE|api|oauth)$/)));
  assert.deepEqual(lines.map(typeColumn), [15, 15, 15, 15, 15], lines.join("\n"));

  const path = freshPath();
  const key = (n) => `fake-console-key-width${n}-for-tests-only`;
  for (const [n, name] of [
    ["a", "张三的钥匙"],
    ["b", "x@example.com"],
  ]) {
    const r = await cli(["add-key", "--email", name], { path, input: `${key(n)}\n` });
    assert.equal(r.code, 0, r.stderr);
  }
  const list = await cli(["list"], { path });
  const rows = list.stdout.trimEnd().split("\n");
  const statusColumn = (line) => displayWidth(line.slice(0, line.search(/(STATUS|idle)/)));
  assert.deepEqual(rows.map(statusColumn), [21, 21, 21], list.stdout);
});

test("store init: --path names the store as for every other command; no store at all is a usage error", async () => {
  // A port nothing listens on: the store is refused at once, which shows the URL was the one used.
  const closed = createServer();
  await new Promise((resolve) => closed.listen(0, "127.0.0.1", resolve));
  const { port } = closed.address();
  await new Promise((resolve) => closed.close(resolve));
  const url = `postgres://pool@127.0.0.1:${port}/pool?connect_timeout=5`;
  const env = { OAUTH_POOL_STORE: "" };
  const path = freshPath();
  // --path was ignored: the command asked for the URL it had been given (INVALID_ARGUMENT, exit 1).
  const viaPath = await cli(["store", "init", "--path", url], { path, env });
  assert.equal(viaPath.code, 1, viaPath.stderr);
  assert.match(viaPath.stderr, /error \[STORE_UNAVAILABLE\]: the pool's store cannot be reached/);
  assert.doesNotMatch(viaPath.stderr, /requests go on/, "a command serves no requests");
  const none = await cli(["store", "init"], { path, env });
  assert.equal(none.code, 2, none.stderr);
  assert.match(none.stderr, /error \[USAGE\]: usage: oauth-pool store init <postgres:\/\/\.\.\.> \(or set OAUTH_POOL_STORE, or pass --path\)/);
  const both = json(await cli(["store", "init", url, "--path", `${url}x`, "--json"], { path, env }));
  assert.equal(both.error.code, "USAGE");
});

test("doctor: a refused API key is replaced with add-key under its name, not with a login", async () => {
  const path = freshPath();
  const now = new Date().toISOString();
  const refused = { type: "api", key: API_KEY, expires: null, added: now, lastUsed: null, status: "auth-error", rateLimitUntil: null };
  await savePool({ anthropic: [{ ...refused, email: "team key" }, oauthEntry(mock, "login@x.test", { status: "auth-error" })] }, path);
  const r = await cli(["doctor"], { path });
  // It said `oauth-pool add` for both: a login cannot renew a key.
  assert.match(r.stdout, /team key: its API key was refused \(auth-error.*\): add a working one with: oauth-pool add-key --email 'team key'\n/);
  // An auth-error the pool did not mark itself (no `authErrorToken`: another program's) is tried
  // again, as `list` says.
  assert.match(r.stdout, /login@x\.test: auth-error marked by another program; the pool tries this login again/);
});

test("doctor: an OAUTH_POOL_API_URL with /v1 (copied from an SDK's base URL) is a problem, another path a warning", async () => {
  // OpenCode's provider is given `<OAUTH_POOL_API_URL>/v1`: with /v1 in the variable every request
  // went to …/v1/v1/messages and got a 404, while doctor said the endpoint was fine.
  const path = freshPath();
  const withV1 = await cli(["doctor", "--json"], { path, env: { OAUTH_POOL_API_URL: `${mock.url}/v1/` } });
  assert.equal(withV1.code, 3, withV1.stdout);
  const row = json(withV1).checks.find((c) => c.variable === "OAUTH_POOL_API_URL");
  assert.equal(row.level, "problem");
  assert.match(row.message, /has a path \(\/v1\/\): OpenCode's provider would send to .*\/v1\/v1\/\.\.\..*drop the \/v1 \(the pool adds it\)/);
  const prefix = json(await cli(["doctor", "--json"], { path, env: { OAUTH_POOL_API_URL: `${mock.url}/anthropic` } }));
  assert.equal(prefix.checks.find((c) => c.variable === "OAUTH_POOL_API_URL").level, "warn");
  const origin = json(await cli(["doctor", "--json"], { path, env: { OAUTH_POOL_API_URL: mock.url } }));
  assert.doesNotMatch(origin.checks.find((c) => c.variable === "OAUTH_POOL_API_URL").message, /has a path/);
});
