// One of many OpenCode-like processes sharing one pool file (many-processes.test.mjs). Sends
// requests through the pool fetch (JSON and streamed, two models, alternating) and adds up the
// usage each answer carried per account and model, as read from the answer itself (the mock's
// word, not the pool's). Waits at a barrier first: prints "ready", sends on a line from stdin.
// Then prints one JSON line and ends as `ending` says:
//   flush  await flushPool(), then let the event loop empty
//   drain  let the event loop empty at once (as a script does: the pool's exit hook flushes)
//   exit   process.exit(0) right after the last answer (as a host that exits itself does)
//   hold   stay alive until stdin closes, its bookkeeping unwritten (a test may SIGKILL it)
//   idle   flushPool(), then stay alive and idle until stdin closes
//   node many-worker.mjs <poolPath> <apiUrl> <count | for:<ms>> <ending> [pauseMs]
import { createPoolFetch, flushPool } from "../../index.mjs";

const [path, apiUrl, countArg, ending = "flush", pauseArg = "0"] = process.argv.slice(2);
const forMs = countArg.startsWith("for:") ? Number(countArg.slice(4)) : null;
const count = forMs === null ? Number(countArg) : Number.POSITIVE_INFINITY;
const pauseMs = Number(pauseArg);
const MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5"];
const poolFetch = createPoolFetch({ path });

process.stdout.write("ready\n");
await new Promise((resolve) => {
  process.stdin.once("data", resolve);
  process.stdin.once("end", resolve);
});

const served = {}; // email -> model -> counts
const statuses = {};
const errors = [];
const took = [];
const add = (email, model, u) => {
  if (!served[email]) served[email] = {};
  if (!served[email][model]) served[email][model] = { requests: 0, input: 0, output: 0, cacheRead: 0, cacheWrite: 0 };
  const c = served[email][model];
  c.requests += 1;
  c.input += u.input_tokens ?? 0;
  c.output += u.output_tokens ?? 0;
  c.cacheRead += u.cache_read_input_tokens ?? 0;
  c.cacheWrite += u.cache_creation_input_tokens ?? 0;
};

/** What a streamed answer reported: message_start's usage, message_delta's (cumulative) over it. */
function streamUsage(text) {
  let start = {};
  let delta = {};
  for (const line of text.split("\n")) {
    if (!line.startsWith("data:")) continue;
    const event = JSON.parse(line.slice(5));
    if (event.type === "message_start") start = event.message.usage ?? {};
    if (event.type === "message_delta") delta = event.usage ?? {};
  }
  const keys = ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"];
  return Object.fromEntries(keys.map((k) => [k, Math.max(start[k] ?? 0, delta[k] ?? 0)]));
}

const began = performance.now();
for (let i = 0; i < count && (forMs === null || performance.now() - began < forMs); i++) {
  const model = MODELS[Math.floor(i / 2) % 2];
  const stream = i % 2 === 1;
  const started = performance.now();
  try {
    const res = await poolFetch(`${apiUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model, max_tokens: 8, stream, messages: [{ role: "user", content: `hi ${i}` }] }),
    });
    const text = await res.text();
    statuses[res.status] = (statuses[res.status] ?? 0) + 1;
    if (res.status === 200) add(res.poolAccount, model, stream ? streamUsage(text) : JSON.parse(text).usage);
  } catch (err) {
    errors.push(String(err?.code ?? err?.message ?? err));
  }
  took.push(performance.now() - started);
  if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
}
if (ending === "flush" || ending === "idle") await flushPool(path);
const cpu = process.cpuUsage();
process.stdout.write(`${JSON.stringify({ pid: process.pid, served, statuses, errors, took, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`);
if (ending === "exit") process.exit(0);
if (ending === "hold" || ending === "idle") {
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.once("end", resolve));
  process.stdin.pause();
}
