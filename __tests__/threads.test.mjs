// Light when idle (issue 17): loading the package starts no thread; the addon's runtime starts
// with the first request (one worker, plus a blocking thread for file I/O), and the blocking
// thread goes away after idling. Runs in a child process of the same runtime (Node or Bun), so
// nothing else in the test process has started the runtime.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { seedPool, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();
const probe = join(dirname(fileURLToPath(import.meta.url)), "helpers", "thread-probe.mjs");

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
});
