// A test run leaves nothing in the temp directory: the dirs the shared helpers make are removed
// when the process ends, pass or fail, whatever a test left in them, without following a
// symlink out (a developer's /tmp filled with tens of thousands of dirs holding fake tokens).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "./helpers/temp.mjs";

const WORKER = fileURLToPath(new URL("./helpers/temp-worker.mjs", import.meta.url));
const isRoot = process.getuid?.() === 0;

/** Runs the worker with a temp dir of its own; its result and what it left there. */
function runWorker(...args) {
  const tmp = tempDir("oauth-pool-tmpdir-");
  const run = spawnSync(process.execPath, [WORKER, ...args], { env: { ...process.env, TMPDIR: tmp, TMP: tmp, TEMP: tmp }, encoding: "utf8", timeout: 60_000 });
  return { ...run, left: readdirSync(tmp) };
}

test("a test file's pool paths (tempPoolPath) and its temp HOME are gone once its process ends", () => {
  const run = runWorker("pool");
  assert.equal(run.status, 0, run.stderr);
  assert.deepEqual(run.left, []);
});

test("a failed test's temp dir goes with everything in it (0500, 0000, FIFO, socket, another uid's files), and nothing a symlink in it points at", () => {
  const outside = tempDir("oauth-pool-outside-");
  writeFileSync(join(outside, "keep.txt"), "kept");
  mkdirSync(join(outside, "keepdir"));
  writeFileSync(join(outside, "keepdir", "file"), "kept");
  const run = runWorker("hostile", outside);
  assert.notEqual(run.status, 0, "the worker died of its error");
  assert.match(run.stderr, /the test failed/);
  assert.doesNotMatch(run.stderr, /could not remove/);
  assert.deepEqual(run.left, []);
  assert.equal(readFileSync(join(outside, "keep.txt"), "utf8"), "kept");
  assert.equal(readFileSync(join(outside, "keepdir", "file"), "utf8"), "kept");
});

test("a mount left inside a temp dir is unmounted and the dir goes", {
  skip: (!isRoot || process.platform !== "linux") && "mount needs root on Linux",
}, (t) => {
  try {
    execFileSync("mount", ["-t", "tmpfs", "-o", "size=64k", "tmpfs", tempDir("oauth-pool-can-mount-")], { stdio: "ignore" });
  } catch {
    return t.skip("mount is not allowed here");
  }
  const run = runWorker("mount");
  assert.equal(run.status, 0, run.stderr);
  const mounted = run.stdout.trim();
  assert.ok(mounted, "the worker mounted a tmpfs");
  assert.deepEqual(run.left, []);
  assert.ok(!readFileSync("/proc/self/mounts", "utf8").includes(mounted), "not mounted any more");
  assert.ok(!existsSync(mounted));
});
