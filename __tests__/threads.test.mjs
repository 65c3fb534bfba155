// Light when idle (issue 17): loading the package starts no thread; the addon's runtime starts
// with the first request (one worker, plus a blocking thread for file I/O), and the blocking
// thread goes away after idling. Runs in a child process of the same runtime (Node or Bun), so
// nothing else in the test process has started the runtime.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { pause, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();
const probe = join(dirname(fileURLToPath(import.meta.url)), "helpers", "thread-probe.mjs");
const idleProbe = join(dirname(fileURLToPath(import.meta.url)), "helpers", "idle-probe.mjs");

test("threads start with the first request, not with the import, and the blocking one leaves when idle", { skip: !existsSync("/proc/self/task") }, async () => {
  const path = await seedPool(mock, ["threads@x.test"]);
  const child = spawn(process.execPath, [probe, path, mock.url], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const code = await new Promise((resolve) => child.on("exit", resolve));
  assert.equal(code, 0, err);
  const seen = JSON.parse(out.trim().split("\n").at(-1));
  assert.equal(seen.status, 200);
  assert.deepEqual(
    { beforeImport: seen.beforeImport, loaded: seen.loaded, created: seen.created },
    { beforeImport: 0, loaded: 0, created: 0 },
    "no thread of the addon before the first request",
  );
  assert.ok(seen.afterRequest >= 1 && seen.afterRequest <= 2, `after one request: ${seen.afterRequest} addon threads (one worker, at most one blocking)`);
  assert.equal(seen.idle, 1, "idle: only the worker is left");
  if (typeof Bun === "undefined") {
    // Node starts no thread of its own for this (the README's footprint: +2 after a request,
    // +1 idle), so every thread added is the addon's: one it did not name would show here.
    assert.equal(seen.allAfterRequest - seen.allBeforeImport, seen.afterRequest, "threads added by the request are the addon's named ones");
    assert.equal(seen.allIdle - seen.allBeforeImport, 1, "idle: one thread more than before the import");
    // Built-ins that only a rare path needs (the connect probe's net and tls, a mirrored
    // catalog's hash) are loaded when it comes: under Bun each one loaded at import paged in
    // about 0.5 to 1 MB of Bun's code and heap (2.2 MB in all with worker_threads, which Bun's
    // own isMainThread replaces there; README, footprint). Bun lists no loaded built-ins; the
    // import lines this checks are the same under both.
    assert.deepEqual(seen.builtinsLoaded, ["NativeModule worker_threads"], "importing the package and createPoolFetch load no net, tls or crypto");
  }
});

test("idle after a request, the addon's threads take no CPU and are not woken, while another process rewrites the pool file", {
  skip: !existsSync("/proc/self/task"),
}, async () => {
  const path = await seedPool(mock, ["idle-cpu@x.test"]);
  const child = spawn(process.execPath, [idleProbe, path, mock.url], { stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const { value, done } = await lines.next();
    assert.ok(!done, `the probe ended early: ${err}`);
    return JSON.parse(value);
  };
  const idle = await next();
  assert.equal(idle.status, 200);
  assert.ok(Object.keys(idle.threads).length >= 1, "the request started the addon's worker");
  // Rewritten as another process's writer does (a temp file renamed over it), about twice a
  // second for two seconds: the watch on the directory sees each, and nobody reads it.
  for (let i = 0; i < 5; i++) {
    const pool = readPool(path);
    pool.anthropic[0].lastUsed = Date.now();
    writeFileSync(`${path}.other-writer`, JSON.stringify(pool, null, 2), { mode: 0o600 });
    renameSync(`${path}.other-writer`, path);
    await pause(450);
  }
  child.stdin.write("go\n");
  const after = await next();
  child.stdin.end();
  await new Promise((resolve) => child.on("exit", resolve));
  for (const [tid, was] of Object.entries(idle.threads)) {
    const now = after.threads[tid];
    if (!now) continue; // a blocking thread that left (its exit is not a wake-up of the pool's)
    assert.deepEqual(now, was, `addon thread ${tid} ran while idle: ${JSON.stringify({ was, now })}`);
  }
  const born = Object.keys(after.threads).filter((tid) => !(tid in idle.threads));
  assert.deepEqual(born, [], "no addon thread started while idle");
});
