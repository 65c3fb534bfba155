// The addon in several JavaScript environments in one process: the main thread and worker
// threads (Node's worker_threads, Bun's Workers), each its own Node-API environment with its own
// `process.env`, over one addon and one runtime. A worker can end at any moment (terminate(),
// process.exit() inside it) with work of its own in flight. What can crash or hang the process
// runs in a child (env-host.mjs), so that a signal or a hang is seen, not suffered.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect } from "node:net";
import { Worker } from "node:worker_threads";
import { fileURLToPath } from "node:url";
import { nativeVersion } from "../index.mjs";
import { useMock, seedPool, account, messagesUrl, body } from "./helpers/pool-env.mjs";

const HOST = fileURLToPath(new URL("./helpers/env-host.mjs", import.meta.url));
const WORKER = new URL("./helpers/env-worker.mjs", import.meta.url);
const INDEX = new URL("../index.mjs", import.meta.url).href;
const mock = useMock();

/**
 * Runs env-host.mjs `scenario` in a child (this runtime: Node under node --test, Bun under bun
 * test) with the pool at `path`; resolves its exit code, signal and JSON lines. `during(child,
 * lines)` runs alongside. A child still running after `limitMs` is killed, and says so.
 */
async function host(scenario, { path, options = {}, env = {}, limitMs = 45_000, during } = {}) {
  const child = spawn(process.execPath, [HOST, scenario, JSON.stringify(options)], {
    env: { ...process.env, OAUTH_POOL_PATH: path, ...env },
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines = [];
  let out = "";
  let err = "";
  let arrived = () => {};
  child.stdout.on("data", (d) => {
    out += d;
    for (let at = out.indexOf("\n"); at >= 0; at = out.indexOf("\n")) {
      lines.push(JSON.parse(out.slice(0, at)));
      out = out.slice(at + 1);
      arrived();
    }
  });
  child.stderr.on("data", (d) => (err += d));
  let hung = false;
  const timer = setTimeout(() => {
    hung = true;
    child.kill("SIGKILL");
  }, limitMs);
  const closed = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal })));
  const waitLine = (pred) =>
    new Promise((resolve) => {
      const check = () => {
        const found = lines.find(pred);
        if (found) resolve(found);
        else arrived = check;
      };
      check();
    });
  try {
    if (during) await during(child, waitLine);
    const { code, signal } = await closed;
    return { code, signal, hung, lines, stderr: err };
  } finally {
    clearTimeout(timer);
  }
}

const line = (result, key) => result.lines.find((l) => key in l)?.[key];
const ended = (r) => `exit ${r.code}, signal ${r.signal}${r.hung ? " (hung: killed)" : ""}; stderr: ${r.stderr.slice(0, 500)}`;

/**
 * A worker terminated while its request's refresh is held at the token endpoint (released
 * `answerAfter` the termination: "terminated", or ms after telling the worker to go): the
 * child's result, the account's family at the mock, and whether the successor is in the file.
 */
async function terminatedMidRefresh(email, { options, answerAfter }) {
  const path = await seedPool(mock, [email], { expired: [email] });
  let release;
  mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (release = r)) });
  try {
    const result = await host("terminate-when-told", {
      path,
      options,
      during: async (child, waitLine) => {
        await waitLine((l) => l.started);
        await mock.waitFor("token");
        child.stdin.end("go\n");
        if (answerAfter !== "terminated") setTimeout(release, answerAfter);
        await waitLine((l) => l.terminated);
        if (answerAfter === "terminated") release();
      },
    });
    const landed = account(path, email).refresh === mock.tokens(email).refresh;
    return { result, family: mock.stats().perFamily[email], landed };
  } finally {
    mock.setTokenMode(null);
  }
}

test("a worker terminated while its request waits on a refresh: the process lives, the main thread's next request is answered, the refresh lands once", async () => {
  const email = "env-refresh@x.test";
  // The worker goes while its refresh is at the token endpoint; the answer comes after.
  const { result, family, landed } = await terminatedMidRefresh(email, { answerAfter: "terminated" });
  // It used to read the freed request object: every later call hung (or the process crashed).
  assert.equal(result.code, 0, ended(result));
  assert.deepEqual(line(result, "after"), { status: 200, account: email });
  assert.equal(family.refreshCalls, 1, "one presentation");
  assert.equal(family.reuse, 0);
  assert.ok(landed, "the successor is in the file");
});

test("a worker that alone used the pool, terminated while refreshing: the refresh goes on to its end and lands in the file", async () => {
  // The last environment that loaded the addon going shuts its runtime down; the refresh on it
  // was dropped with its connection (the presented token possibly spent, its successor lost).
  // The answer comes while the worker's environment is being torn down.
  const { result, family, landed } = await terminatedMidRefresh("env-alone@x.test", { options: { mainUses: false }, answerAfter: 300 });
  assert.equal(result.code, 0, ended(result));
  assert.equal(family.refreshCalls, 1);
  assert.equal(family.generation, 1, "the refresh was answered, not cut");
  assert.ok(landed, "the successor is in the file");
});

test("50 workers, each terminated in the middle of a stream: no crash, the main thread is answered after, no thread, descriptor or memory growth from 10 to 50", async () => {
  const path = await seedPool(mock, ["env-stream@x.test"]);
  mock.scriptAll(Array.from({ length: 60 }, () => ({ sse: true, delayMs: 100, deltaSize: 1 })));
  try {
    const result = await host("terminate-streaming", { path, options: { rounds: 50 }, limitMs: 55_000 });
    // A body batch in flight read its freed response object: SIGSEGV, most runs.
    assert.equal(result.code, 0, ended(result));
    assert.equal(result.signal, null);
    assert.equal(line(result, "after")?.status, 200);
    const { 10: early, 50: late } = line(result, "resources");
    assert.ok(late.threads <= early.threads + 2, `threads ${early.threads} -> ${late.threads}`);
    assert.ok(late.fds <= early.fds + 4, `descriptors ${early.fds} -> ${late.fds}`);
    assert.ok(late.rss < early.rss + 64 * 1024 * 1024, `RSS ${early.rss} -> ${late.rss}`);
  } finally {
    mock.clearScripts();
  }
});

test("process.exit() inside a worker in the middle of a stream: the process lives and the main thread is answered", async () => {
  const path = await seedPool(mock, ["env-exit@x.test"]);
  mock.scriptAll([{ sse: true, delayMs: 100, deltaSize: 1 }]);
  try {
    const result = await host("exit-in-worker", { path });
    assert.equal(result.code, 0, ended(result));
    assert.equal(line(result, "workerExit"), 7);
    assert.equal(line(result, "after")?.status, 200);
  } finally {
    mock.clearScripts();
  }
});

for (const [how, mainStreams] of [
  ["exit", false],
  ["exit", true],
  ["natural", true],
]) {
  test(`the main thread ends (${how === "exit" ? "process.exit()" : "its event loop runs out"}${mainStreams ? ", itself streaming" : ""}) with workers streaming: a clean exit, no crash, no hang`, async () => {
    const path = await seedPool(mock, [`env-end-${how}-${mainStreams}@x.test`]);
    mock.scriptAll(Array.from({ length: 4 }, () => ({ sse: true, delayMs: 100, deltaSize: 1 })));
    try {
      const result = await host("main-ends", { path, options: { how, mainStreams } });
      assert.equal(result.code, 0, ended(result));
      assert.equal(result.signal, null);
      assert.equal(line(result, "ending"), how);
    } finally {
      mock.clearScripts();
    }
  });
}

/** A worker of this process running `job`; resolves its messages until "done" (or one error). */
function runWorker(job, data, options = {}) {
  const w = new Worker(WORKER, { workerData: { index: INDEX, job, url: messagesUrl(mock), body: body(), ...data }, ...options });
  const messages = [];
  const done = new Promise((resolve, reject) => {
    w.on("message", (m) => {
      messages.push(m);
      if (m === "done" || m?.error || m?.url) resolve(messages);
    });
    w.once("error", reject);
    w.once("exit", (code) => reject(new Error(`the worker exited (${code}) early`)));
  });
  return { worker: w, done };
}

test("the main thread and four workers at once, each with its own OAUTH_POOL_PATH (a worker's env option) or an explicit path: each request goes to its own pool", async () => {
  const main = await seedPool(mock, ["env-main@x.test"]);
  const other = await seedPool(mock, ["env-other@x.test"]);
  const before = process.env.OAUTH_POOL_PATH;
  process.env.OAUTH_POOL_PATH = main;
  const { createPoolFetch } = await import("../index.mjs");
  const ask = async () => {
    const res = await createPoolFetch()(messagesUrl(mock), { method: "POST", headers: { "content-type": "application/json" }, body: body() });
    await res.text();
    return res.poolAccount;
  };
  const workers = [
    runWorker("ask", { count: 8 }, { env: { ...process.env, OAUTH_POOL_PATH: other } }),
    runWorker("ask", { count: 8 }, { env: { ...process.env, OAUTH_POOL_PATH: main } }),
    runWorker("ask", { count: 8, path: other }),
    runWorker("ask", { count: 8, path: main }),
  ];
  try {
    const mains = [];
    for (let i = 0; i < 8; i++) mains.push(await ask());
    const seen = await Promise.all(workers.map((w) => w.done));
    const accounts = seen.map((messages) => messages.filter((m) => m?.account).map((m) => m.account));
    for (const [i, expected] of ["env-other@x.test", "env-main@x.test", "env-other@x.test", "env-main@x.test"].entries()) {
      assert.deepEqual(accounts[i], Array(8).fill(expected), `worker ${i}: ${JSON.stringify(seen[i])}`);
    }
    // One process-wide view of the variables sent the main thread to the pool of whichever
    // worker had handed its own over last.
    mains.push(await ask());
    assert.deepEqual(mains, Array(9).fill("env-main@x.test"));
  } finally {
    await Promise.all(workers.map((w) => w.worker.terminate()));
    if (before === undefined) delete process.env.OAUTH_POOL_PATH;
    else process.env.OAUTH_POOL_PATH = before;
  }
});

test("a gateway started in a worker closes when the worker goes: its port is not held for the rest of the process", async () => {
  await nativeVersion(); // this environment keeps the addon (and its runtime) loaded
  const path = await seedPool(mock, ["env-gateway@x.test"]);
  const { worker, done } = runWorker("serve", { path });
  const [{ url }] = await done;
  const reachable = () =>
    new Promise((resolve) => {
      const { hostname, port } = new URL(url);
      const socket = connect(Number(port), hostname);
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
  assert.equal(await reachable(), true, "serving while its worker runs");
  await worker.terminate();
  let open = true;
  for (let i = 0; i < 50 && open; i++) {
    await new Promise((r) => setTimeout(r, 100));
    open = await reachable();
  }
  assert.equal(open, false, "still listening after its worker was terminated");
});
