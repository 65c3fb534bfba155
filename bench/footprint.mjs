// The idle footprint of one process, in whichever runtime executes it (node or bun): what the
// runtime costs with nothing loaded, what one request through `impl` adds, and what is left
// (and what still burns CPU) after the process has been idle for a while. Linux only (/proc).
//   node bench/footprint.mjs <serverUrl> <poolPath> <pool|native|response> [idleMs]
// Prints one JSON line. "pool" imports the package, calls createPoolFetch and sends one small
// request through it; "native" sends the same request with the runtime's own fetch (a control:
// what the runtime's fetch itself costs); "response" only builds and reads one Response (the
// share of either that is the Response class itself).
import { readdirSync, readFileSync } from "node:fs";
import { collectGarbage, memory } from "./memory.mjs";

const [server, poolPath, impl = "pool", idleArg] = process.argv.slice(2);
const idleMs = Number(idleArg ?? 15000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Every thread of this process: id, name, nanoseconds on a CPU, times it was scheduled. */
function threads() {
  const out = [];
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      const [ns, , slices] = readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
      out.push({ tid, name: readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim(), ns, slices });
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return out;
}

/** CPU and threads first (a forced collection is not idle CPU), then RSS after a collection. */
function sample({ collect = true } = {}) {
  const cpu = process.cpuUsage();
  const t = threads();
  const at = performance.now();
  if (collect) collectGarbage();
  return { ...memory(), threads: t.length, names: t.map((x) => x.name), cpuMs: (cpu.user + cpu.system) / 1000, at, list: t };
}

const strip = ({ list, ...rest }) => rest;

// Let the runtime finish starting (JIT and GC helper threads come up in the first moments).
await sleep(500);
const base = sample();

let send;
if (impl === "pool") {
  const { createPoolFetch } = await import("../index.mjs");
  send = createPoolFetch({ path: poolPath, ...(process.env.BENCH_TRANSPORT ? { transport: process.env.BENCH_TRANSPORT } : {}) });
} else if (impl === "response") {
  // No request at all: what any fetch that hands back a WHATWG Response pays for it (under Node
  // the first Response loads the runtime's fetch implementation).
  send = async () => new Response('{"ok":true}', { status: 200, headers: { "content-type": "application/json" } });
} else {
  send = globalThis.fetch.bind(globalThis);
}
const res = await send(`${server}/bench/small`);
if (res.status !== 200) throw new Error(`status ${res.status}`);
await res.text();
const loaded = sample();

// Idle: nothing scheduled but a few timers that look at the thread list. The idle CPU is
// counted from 2 s after the request: the collection above and its helpers are done by then,
// and so is the pool's own deferred bookkeeping write (a second after a request).
const timeline = [];
await sleep(2000);
const idleStart = sample({ collect: false });
for (const at of [1000, 3000, 6000, 10000, 30000, 60000, 120000, 180000, idleMs - 2000]) {
  if (at > idleMs - 2000) continue;
  await sleep(at - (performance.now() - idleStart.at));
  timeline.push({ atMs: Math.round(performance.now() - loaded.at), threads: threads().length });
}
const idle = sample();

// CPU consumed during the idle period by threads the runtime did not have at the start (the
// addon's, or the runtime fetch's), and by the whole process.
const baseTids = new Set(base.list.map((t) => t.tid));
const before = new Map(idleStart.list.map((t) => [t.tid, t]));
let addedNs = 0;
let addedSlices = 0;
for (const t of idle.list) {
  if (baseTids.has(t.tid)) continue;
  const b = before.get(t.tid);
  addedNs += t.ns - (b?.ns ?? 0);
  addedSlices += t.slices - (b?.slices ?? 0);
}

/** The addon's own threads (the rest of what loading adds is the runtime's: module loaders, JIT). */
const ours = (s) => s.names.filter((n) => /^(oauth-pool|tokio)/.test(n)).length;

const result = {
  runtime: typeof Bun !== "undefined" ? "bun" : "node",
  impl,
  idleMs,
  base: strip(base),
  loaded: strip(loaded),
  idle: strip(idle),
  timeline,
  addedAfterRequest: {
    rssMB: loaded.rssMB - base.rssMB,
    anonMB: loaded.anonMB - base.anonMB,
    threads: loaded.threads - base.threads,
    addonThreads: ours(loaded),
  },
  addedAfterIdle: { rssMB: idle.rssMB - base.rssMB, anonMB: idle.anonMB - base.anonMB, threads: idle.threads - base.threads, addonThreads: ours(idle) },
  idleCpuMs: { process: idle.cpuMs - idleStart.cpuMs, addedThreads: addedNs / 1e6, addedThreadWakeups: addedSlices },
};
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
