// Twenty OpenCode processes on one machine sharing one pool file, as people run them: usage
// counted exactly however each process ends, idle processes doing nothing while others write,
// and the file rewritten a few times a second at most, not once a second per process.
// Each worker (helpers/many-worker.mjs) adds up the usage its answers carried, as the mock sent
// it; the pool file must hold exactly the sum.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync, watch, writeFileSync } from "node:fs";
import { basename, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { useMock, seedPool, readPool } from "./helpers/pool-env.mjs";

const WORKER = fileURLToPath(new URL("./helpers/many-worker.mjs", import.meta.url));
const MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5"];
const FIELDS = ["requests", "input", "output", "cacheRead", "cacheWrite"];
const EMAILS = ["m1@x.test", "m2@x.test", "m3@x.test", "m4@x.test"];

const mock = useMock({ env: { OAUTH_POOL_JITTER_MS: "0" } });

/** Starts a worker; `ready` once it is loaded, `result` its JSON line, `done` its exit. */
function worker(path, count, ending, pauseMs = 0) {
  const child = spawn(process.execPath, [WORKER, path, mock.url, String(count), ending, String(pauseMs)], {
    env: process.env,
    stdio: ["pipe", "pipe", "inherit"],
  });
  child.stdin.on("error", () => {}); // a killed worker's pipe
  let out = "";
  let onReady;
  let onResult;
  const ready = new Promise((r) => (onReady = r));
  const result = new Promise((r) => (onResult = r));
  child.stdout.on("data", (d) => {
    out += d;
    if (!out.includes("ready\n")) return;
    onReady();
    const rest = out.slice(out.indexOf("ready\n") + 6);
    if (rest.includes("\n")) onResult(JSON.parse(rest.slice(0, rest.indexOf("\n"))));
  });
  const done = new Promise((resolve) =>
    child.on("close", (code, signal) => {
      onReady();
      onResult(null);
      resolve({ code, signal });
    }),
  );
  return { child, ending, ready, result, done, go: () => (ending === "hold" || ending === "idle" ? child.stdin.write("go\n") : child.stdin.end("go\n")) };
}

const zero = () => Object.fromEntries(FIELDS.map((k) => [k, 0]));

/** The counts kept in `sum` for `email` and `model`, made when missing. */
function slot(sum, email, model) {
  if (!sum[email]) sum[email] = {};
  if (!sum[email][model]) sum[email][model] = zero();
  return sum[email][model];
}

/** Sums what workers say they were served: email -> model -> counts. */
function served(results) {
  const sum = {};
  for (const r of results)
    for (const [email, byModel] of Object.entries(r.served))
      for (const [model, c] of Object.entries(byModel)) {
        const t = slot(sum, email, model);
        for (const k of FIELDS) t[k] += c[k];
      }
  return sum;
}

/** The pool file's usage summed over `section` ("days" or "windows"): email -> model -> counts. */
function stored(path, section) {
  const sum = {};
  for (const a of readPool(path).anthropic)
    for (const bucket of Object.values(a.usage?.[section] ?? {}))
      for (const [model, c] of Object.entries(bucket)) {
        const t = slot(sum, a.email, model);
        for (const k of FIELDS) t[k] += c[k];
      }
  return sum;
}

const get = (sum, email, model) => sum[email]?.[model] ?? zero();

/** Answers with known usage (each different), and with `refusals` now and then a 429 that moves
 * the request on. */
function scriptAnswers(n, { refusals = true } = {}) {
  mock.clearScripts(); // what an earlier test left unanswered
  mock.clearRequests();
  const steps = [];
  for (let i = 0; i < n; i++) {
    if (refusals && i % 60 === 7) steps.push({ status: 429, headers: { "retry-after": "1" } });
    else steps.push({ usage: { input_tokens: 10 + (i % 7), output_tokens: 3 + (i % 5), cache_read_input_tokens: i % 3, cache_creation_input_tokens: i % 2 } });
  }
  mock.scriptAll(steps);
}

/** A month of use on each account (30 days, 144 five-hour windows, three models): a file of
 * the size a pool used every day has, so that one read of it shows in a process's reads. */
function addHistory(path) {
  const pool = readPool(path);
  const now = Date.now();
  const c = () => ({ requests: 1234, input: 5678901, output: 234567, cacheRead: 34567890, cacheWrite: 1234567 });
  const models = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"];
  for (const a of pool.anthropic) {
    const days = {};
    const windows = {};
    for (let d = 1; d < 30; d++) days[new Date(now - d * 86_400_000).toISOString().slice(0, 10)] = Object.fromEntries(models.map((m) => [m, c()]));
    for (let w = 1; w < 144; w++) windows[String((Math.floor(now / 18_000_000) - w) * 18_000_000)] = Object.fromEntries(models.map((m) => [m, c()]));
    a.usage = { days, windows };
  }
  writeFileSync(path, JSON.stringify(pool, null, 2), { mode: 0o600 });
}

/** The pool file's renames into place (one per write of it) while `during` runs. */
async function countWrites(path, during) {
  let writes = 0;
  const watcher = watch(dirname(path), (event, name) => {
    if (event === "rename" && name === basename(path)) writes++;
  });
  try {
    const value = await during();
    return { writes, value };
  } finally {
    watcher.close();
  }
}

test("20 processes: usage per account and model is exact in the file whether each flushes, lets its loop empty or calls process.exit(); a SIGKILLed one loses only its own, never counts twice", {
  timeout: 120_000,
}, async (t) => {
  const path = await seedPool(mock, EMAILS);
  scriptAnswers(1000);
  const endings = ["flush", "drain", "exit"];
  const workers = Array.from({ length: 20 }, (_, i) => worker(path, 10, endings[i % 3]));
  const killed = Array.from({ length: 2 }, () => worker(path, 10, "hold"));
  const all = [...workers, ...killed];
  await Promise.all(all.map((w) => w.ready));
  for (const w of all) w.go();
  const victims = await Promise.all(killed.map((w) => w.result));
  for (const w of killed) w.child.kill("SIGKILL");
  const results = await Promise.all(workers.map((w) => w.result));
  const exits = await Promise.all(all.map((w) => w.done));
  for (const [i, r] of results.entries()) {
    assert.ok(r, `worker ${i} (${workers[i].ending}) printed its result`);
    assert.deepEqual(r.errors, [], `worker ${i}`);
    assert.equal(exits[i].code, 0);
  }
  const statuses = results.reduce((n, r) => n + (r.statuses[200] ?? 0), 0);
  t.diagnostic(`${statuses} of 200 requests served`);
  assert.ok(
    mock.requests.some((r) => r.status === 429),
    "some answers were 429s, their requests moved to another account",
  );
  assert.ok(statuses >= 60, `${statuses} of 200 requests served (the rest the pool's 429 while every account rested)`);
  const survivors = served(results);
  const lost = served(victims);
  for (const section of ["days", "windows"]) {
    const file = stored(path, section);
    for (const email of EMAILS)
      for (const model of MODELS) {
        const [have, want, most] = [get(file, email, model), get(survivors, email, model), get(lost, email, model)];
        for (const k of FIELDS) {
          // What the killed processes had not written yet is lost; nothing is counted twice.
          assert.ok(
            have[k] >= want[k] && have[k] <= want[k] + most[k],
            `${section} ${email} ${model} ${k}: file ${have[k]}, served ${want[k]} (+ up to ${most[k]} of the killed)`,
          );
        }
      }
  }
  // Without the killed ones' share: exact.
  const file = stored(path, "days");
  const unwritten = Object.fromEntries(FIELDS.map((k) => [k, 0]));
  for (const email of EMAILS)
    for (const model of MODELS)
      for (const k of FIELDS) unwritten[k] += get(survivors, email, model)[k] + get(lost, email, model)[k] - get(file, email, model)[k];
  assert.ok(unwritten.requests <= killed.length * 10, JSON.stringify(unwritten));
});

test("idle processes do not read the pool file while another rewrites it", {
  skip: !existsSync("/proc/self/io") && "no /proc/<pid>/io here",
  timeout: 120_000,
}, async (t) => {
  const path = await seedPool(mock, EMAILS);
  addHistory(path);
  const size = statSync(path).size;
  const idle = Array.from({ length: 6 }, () => worker(path, 1, "idle"));
  await Promise.all(idle.map((w) => w.ready));
  for (const w of idle) w.go();
  await Promise.all(idle.map((w) => w.result)); // served and flushed
  const reads = (w) => Number(/rchar: (\d+)/.exec(readFileSync(`/proc/${w.child.pid}/io`, "utf8"))[1]);
  const before = idle.map(reads);
  const busy = worker(path, "for:6000", "flush", 50);
  await busy.ready;
  const { writes } = await countWrites(path, async () => {
    busy.go();
    await busy.result;
  });
  const after = idle.map(reads);
  for (const w of idle) w.child.stdin.end();
  await Promise.all([busy.done, ...idle.map((w) => w.done)]);
  t.diagnostic(`idle processes read ${before.map((b, i) => after[i] - b).join(", ")} bytes while the ${size}-byte file was rewritten ${writes} times`);
  assert.ok(writes >= 3, `the busy process rewrote the file ${writes} times`);
  for (const [i, b] of before.entries()) {
    // Node's own wake-ups read a few bytes (an eventfd); one read of the file is `size` bytes.
    assert.ok(after[i] - b < size / 2, `idle process ${i} read ${after[i] - b} bytes while the ${size}-byte file was rewritten ${writes} times`);
  }
});

test("20 busy processes rewrite the pool file a few times a second, not once a second each; their usage still adds up", { timeout: 120_000 }, async (t) => {
  const path = await seedPool(mock, EMAILS);
  // No 429s here: each would be written at once (as it must), and this counts bookkeeping.
  scriptAnswers(20_000, { refusals: false });
  const busy = Array.from({ length: 20 }, () => worker(path, "for:12000", "drain", 100));
  await Promise.all(busy.map((w) => w.ready));
  const started = Date.now();
  const { writes, value: first } = await countWrites(path, async () => {
    for (const w of busy) w.go();
    // Counted until the first worker stops (its last write, and the others', come after).
    return Promise.race(busy.map((w) => w.result));
  });
  const seconds = (Date.now() - started) / 1000;
  const results = await Promise.all(busy.map((w) => w.result));
  await Promise.all(busy.map((w) => w.done));
  assert.ok(first);
  const requests = results.reduce((n, r) => n + r.took.length, 0);
  assert.ok(requests >= 200, `${requests} requests sent`);
  const perSecond = writes / seconds;
  t.diagnostic(`${writes} writes of the pool file in ${seconds.toFixed(1)} s (${perSecond.toFixed(1)} a second), ${requests} requests`);
  // One write a second per process would be about 20 a second.
  assert.ok(perSecond <= 8, `${writes} writes in ${seconds.toFixed(1)} s: ${perSecond.toFixed(1)} a second`);
  const want = served(results);
  const file = stored(path, "days");
  for (const email of EMAILS) for (const model of MODELS) assert.deepEqual(get(file, email, model), get(want, email, model), `${email} ${model}`);
});
