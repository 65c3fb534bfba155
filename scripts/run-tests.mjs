#!/usr/bin/env node
// `npm test`: everything, from a fresh clone. Installs and builds what is missing, then runs
// the Rust checks and tests, the JavaScript tests under Node and under Bun (OpenCode's runtime),
// the packaging test and the end-to-end runs of the real OpenCode and Claude Code. Stops at the
// first failing step, or at the first step that leaves anything in its temp directory.
//   OAUTH_POOL_TEST_QUICK=1   skip the packaging test and the OpenCode (plain and hostile) and Claude Code e2e (local iteration)
import { spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { constants, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { removeTree } from "../__tests__/helpers/temp.mjs";
import { ensureBuilt } from "./ensure-built.mjs";
import { failureRecap } from "./failure-recap.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const quick = process.env.OAUTH_POOL_TEST_QUICK === "1";
// Each step runs with a temp directory of its own (TMPDIR) that must be empty when the step
// ends, so that no run of the tests fills /tmp: what a step leaves there fails the run, named,
// and is removed. The name is short: PostgreSQL's Unix socket lives under it, and such a path
// must stay under 108 bytes.
// 0755 and the steps' dirs 1777, as /tmp is: a test's server runs as `postgres`, some tests as
// another uid, and they reach or make their own dirs there.
const scratch = mkdtempSync(join(tmpdir(), "otp-"));
chmodSync(scratch, 0o755);
process.on("exit", () => removeTree(scratch));
// Ctrl-C or a kill ends the run through the exit handler above rather than past it. Ctrl-C
// reaches the terminal's whole process group; a kill of this process alone is passed on to the
// running step and everything it started (found through /proc: the step stays in this process
// group, so a kill of the group, as CI's timeout sends, still reaches all of it), and the run
// ends once the step has; one that has not stopped ten seconds later is killed.
let running = null;
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => {
    const code = 128 + constants.signals[sig];
    if (!running) process.exit(code);
    if (running.stopping) return;
    running.stopping = code;
    signalTree(running.child.pid, sig);
    setTimeout(() => running && signalTree(running.child.pid, "SIGKILL"), 10_000).unref();
  });
}
function signalTree(pid, sig) {
  for (const each of [pid, ...descendants(pid)]) {
    try {
      process.kill(each, sig);
    } catch {
      // gone already
    }
  }
}
function descendants(pid) {
  const children = new Map();
  let names = [];
  try {
    names = readdirSync("/proc").filter((n) => /^\d+$/.test(n));
  } catch {
    return [];
  }
  for (const name of names) {
    try {
      // The parent is the second field after the command name, which may hold spaces or ")".
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(Number(name));
    } catch {
      // ended while we looked
    }
  }
  const found = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const child of children.get(queue.shift()) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}
const base = {
  ...process.env,
  CARGO_HOME: process.env.CARGO_HOME ?? join(process.env.HOME ?? scratch, ".cargo"),
  RUSTUP_HOME: process.env.RUSTUP_HOME ?? join(process.env.HOME ?? scratch, ".rustup"),
};
delete base.OAUTH_POOL_LOG;
// aidevops's own variable names a real pool file of this machine's user.
delete base.AIDEVOPS_OAUTH_POOL_FILE;

const timings = [];
let steps = 0;
// A failed test's report scrolls far above the end of a long run, and CI may keep only the end
// of what was printed: the test steps' failures are printed again once the step ends.
const recapped = new Set(["node tests", "bun tests"]);

/** Up to 40 paths under `names` in `dir`, three levels deep, for a report. */
function within(dir, names, depth = 3, found = []) {
  for (const name of names) {
    if (found.length >= 40) break;
    const path = join(dir, name);
    let entries = [];
    try {
      entries = depth > 0 ? readdirSync(path) : [];
    } catch {
      // not a directory, or not readable: its name is what there is to say
    }
    const below = entries.map((e) => join(name, e));
    if (below.length === 0) found.push(path.slice(dir.length + 1));
    else within(dir, below, depth - 1, found);
  }
  return found;
}

async function step(name, cmd, args) {
  const started = Date.now();
  console.log(`\n=== ${name}: ${cmd} ${args.join(" ")}`);
  const tmp = join(scratch, String(++steps));
  mkdirSync(tmp);
  chmodSync(tmp, 0o1777);
  // No test may touch the real ~/.aidevops: every step runs with a throwaway HOME (inside its
  // temp dir, where the test helpers take it as theirs rather than make one per file).
  const home = join(tmp, "home");
  mkdirSync(home, { mode: 0o700 });
  const env = {
    ...base,
    TMPDIR: tmp,
    TMP: tmp,
    TEMP: tmp,
    HOME: home,
    USERPROFILE: home,
    OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
  };
  // Node reports its tests on stdout, Bun on stderr; each is read line by line on its own.
  const recap = recapped.has(name) ? { stdout: failureRecap(), stderr: failureRecap() } : null;
  const child = spawn(cmd, args, { cwd: root, stdio: recap ? ["inherit", "pipe", "pipe"] : "inherit", env });
  // The pipes may still hold the step's last lines when it exits.
  const closed = recap ? new Promise((resolve) => child.on("close", resolve)) : null;
  if (recap) {
    for (const which of ["stdout", "stderr"]) {
      child[which].on("data", (chunk) => {
        process[which].write(chunk);
        recap[which].feed(chunk);
      });
    }
  }
  running = { child, stopping: null };
  const r = await new Promise((resolve) => {
    child.on("error", (error) => resolve({ status: null, signal: error.code }));
    child.on("exit", (status, signal) => resolve({ status, signal }));
  });
  // A process the step left behind may hold its pipes open: the wait for them is short.
  if (closed) await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 5_000).unref())]);
  const stopping = running.stopping;
  running = null;
  const secs = ((Date.now() - started) / 1000).toFixed(1);
  timings.push(`${name} ${secs}s`);
  const left = readdirSync(tmp).filter((n) => n !== "home");
  // What is inside names the test that left it (a pool file's directory, a lock, a journal).
  const inside = left.length > 0 ? within(tmp, left) : [];
  removeTree(tmp);
  if (left.length > 0) {
    const shown = left.slice(0, 20).join(", ") + (left.length > 20 ? `, and ${left.length - 20} more` : "");
    console.error(`\n*** ${name} left ${left.length} entries in its temp dir (removed now): ${shown}`);
    if (inside.length > 0) console.error(`    in them: ${inside.join(", ")}`);
  }
  if (stopping) process.exit(stopping);
  if (r.status !== 0 && recap) {
    for (const which of ["stdout", "stderr"]) {
      const text = recap[which].text();
      if (text) console.error(`\n*** ${name}: its failures, again (from its ${which}):\n${text}`);
    }
  }
  if (r.status !== 0) console.error(`\n*** ${name} failed (exit ${r.status ?? r.signal}) after ${secs}s`);
  if (r.status !== 0 || left.length > 0) process.exit(r.status || 1);
}

const t0 = Date.now();
ensureBuilt();
await step("rustfmt", "cargo", ["fmt", "--check"]);
await step("clippy", "cargo", ["clippy", "--all-targets", "--", "-D", "warnings"]);
await step("cargo test", "cargo", ["test"]);
await step("js lint+format", join(root, "node_modules", ".bin", "biome"), ["ci", "--reporter=summary", "."]);
await step("types", process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", "__tests__/types/tsconfig.json"]);
await step("node tests", process.execPath, ["--test", "--test-concurrency=1", "__tests__/"]);
await step("bun tests", join(root, "node_modules", ".bin", "bun"), ["test", "--timeout", "120000", "__tests__/"]);
await step("workflow lint", process.execPath, ["scripts/lint-workflow.mjs"]);
if (!quick) {
  await step("pack test", process.execPath, ["scripts/pack-test.mjs"]);
  await step("opencode e2e", process.execPath, ["scripts/e2e-opencode.mjs"]);
  await step("opencode hostile e2e", process.execPath, ["scripts/e2e-opencode-hostile.mjs"]);
  await step("claude code e2e", process.execPath, ["scripts/e2e-claude-code.mjs"]);
}
console.log(`\nall steps passed in ${((Date.now() - t0) / 1000).toFixed(0)}s: ${timings.join(", ")}`);
