// A process that runs the pool in several JavaScript environments at once (its main thread and
// worker threads), for __tests__/environments.test.mjs, which runs it as a child so that a crash
// (a signal) or a hang of the process is seen. The pool's variables come from the environment;
// argv[2] is the scenario, argv[3] its options as JSON. Prints one JSON line per result.
import { Worker } from "node:worker_threads";
import { readdirSync } from "node:fs";

const [scenario, raw = "{}"] = process.argv.slice(2);
const options = JSON.parse(raw);
const INDEX = new URL("../../index.mjs", import.meta.url).href;
const WORKER = new URL("./env-worker.mjs", import.meta.url);
const url = `${process.env.OAUTH_POOL_API_URL}/v1/messages`;
const body = (stream = false) => JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, stream, messages: [{ role: "user", content: "hi" }] });
const report = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function worker(job, data = {}) {
  const w = new Worker(WORKER, { workerData: { index: INDEX, job, url, body: body(job !== "ask"), ...data } });
  w.on("error", (e) => report({ workerError: String(e?.message ?? e) }));
  return w;
}
/** The worker's next message that `pred` accepts. */
const next = (w, pred = () => true) =>
  new Promise((resolve, reject) => {
    const on = (m) => {
      if (!pred(m)) return;
      w.off("message", on);
      resolve(m);
    };
    w.on("message", on);
    w.once("exit", (code) => reject(new Error(`the worker exited (${code}) before the message`)));
  });
const resources = () => ({
  threads: readdirSync("/proc/self/task").length,
  fds: readdirSync("/proc/self/fd").length,
  rss: process.memoryUsage().rss,
});
/** A line from the test on stdin. */
const told = () =>
  new Promise((resolve) =>
    process.stdin.once("data", (d) => {
      process.stdin.destroy(); // read once: it must not keep the process alive
      resolve(String(d).trim());
    }),
  );

const api = options.mainUses === false ? null : await import(INDEX);
// The main thread's environment loads the addon first, as a host does before it starts workers.
if (api) await api.nativeVersion();
async function mainAsks() {
  const res = await api.createPoolFetch()(url, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: body(),
  });
  await res.text();
  return { status: res.status, account: res.poolAccount };
}

const scenarios = {
  /** A worker terminated when the test says (its request is at the token endpoint by then). */
  async "terminate-when-told"() {
    const w = worker("ask");
    report({ started: true });
    await told();
    await w.terminate();
    report({ terminated: true });
    if (api) report({ after: await mainAsks() });
  },
  /** `rounds` workers, each terminated in the middle of a stream; resources after 10 and all. */
  async "terminate-streaming"() {
    const seen = {};
    for (let i = 1; i <= options.rounds; i++) {
      const w = worker("stream");
      await next(w, (m) => m === "chunk");
      await w.terminate();
      if (i === 10 || i === options.rounds) {
        await sleep(300);
        seen[i] = resources();
      }
    }
    report({ resources: seen, after: await mainAsks() });
  },
  /** A worker that calls process.exit() while it reads a stream. */
  async "exit-in-worker"() {
    const w = worker("exit-mid-stream");
    const code = await new Promise((r) => w.once("exit", r));
    report({ workerExit: code, after: await mainAsks() });
  },
  /** The main thread ends (process.exit, or the event loop runs out) with workers streaming. */
  async "main-ends"() {
    let reader = null;
    if (options.mainStreams) {
      const res = await api.createPoolFetch()(url, { method: "POST", headers: { "content-type": "application/json" }, body: body(true) });
      reader = res.body.getReader();
      await reader.read();
    }
    const ws = Array.from({ length: 3 }, () => worker("stream"));
    await Promise.all(ws.map((w) => next(w, (m) => m === "chunk")));
    report({ ending: options.how });
    if (options.how === "exit") process.exit(0);
    for (const w of ws) w.unref();
    reader?.cancel();
  },
};
await scenarios[scenario]();
