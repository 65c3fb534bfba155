// One benchmark client run, in whichever runtime executes it (node or bun). Compares the pool
// fetch with the runtime's own fetch on the same loopback server, interleaving the two.
//   node bench/client.mjs <serverUrl> <poolPath> [suite]
//   suite: all | rss-pool | rss-native | a comma list of throughput, latency, sse, failover,
//   concurrent
// BENCH_TRANSPORT, when set, is passed to createPoolFetch as its transport.
import { readdirSync, readFileSync } from "node:fs";
import { createPoolFetch } from "../index.mjs";
import { collectGarbage } from "./memory.mjs";

const [server, poolPath, suite = "all"] = process.argv.slice(2);
const poolFetch = createPoolFetch({ path: poolPath, ...(process.env.BENCH_TRANSPORT ? { transport: process.env.BENCH_TRANSPORT } : {}) });
const impls = { pool: poolFetch, native: globalThis.fetch.bind(globalThis) };
const now = () => performance.timeOrigin + performance.now();
const MB = 1024 * 1024;

let reads = 0; // reads that returned bytes, for the average batch a read hands over
/** The answer, when it is the 200 asked for: a pool error answered fast is not a fast request. */
async function ok(res) {
  if (res.status !== 200) throw new Error(`status ${res.status}: ${(await res.text()).slice(0, 300)}`);
  return res;
}

async function drain(res) {
  await ok(res);
  let bytes = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return bytes;
    reads++;
    bytes += value.byteLength;
  }
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const median = (xs) => pct(xs, 50);
const order = (round) => (round % 2 ? ["native", "pool"] : ["pool", "native"]);

/**
 * CPU time (ms) and times scheduled per thread group since `before` (a previous call's
 * snapshot): the JavaScript thread, the addon's threads (tokio's, named "oauth-pool*" or
 * "tokio-*"), and the runtime's other threads. Linux only; empty elsewhere.
 */
function threadCpu(before) {
  const snap = new Map();
  try {
    for (const tid of readdirSync("/proc/self/task")) {
      try {
        const [ns, , slices] = readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
        const name = readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim();
        snap.set(tid, { name, ns, slices });
      } catch {
        // The thread exited between the listing and the read.
      }
    }
  } catch {
    return { snap, groups: {} };
  }
  const groups = {};
  for (const [tid, t] of snap) {
    const b = before?.get(tid) ?? { ns: 0, slices: 0 };
    const group = tid === String(process.pid) ? "js" : /^(oauth-pool|tokio)/.test(t.name) ? "addon" : "other";
    groups[group] ??= { ms: 0, slices: 0, threads: 0 };
    groups[group].ms += (t.ns - b.ns) / 1e6;
    groups[group].slices += t.slices - b.slices;
    groups[group].threads++;
  }
  return { snap, groups };
}

/**
 * CPU ms the mock server (another process) has used so far, all its threads, when bench/run.mjs
 * names it. `/proc/<pid>/schedstat` alone is its main thread's: Node's collector and I/O
 * threads, up to 60% of the mock's CPU per stream, were left out.
 */
function serverCpuMs() {
  const pid = process.env.BENCH_SERVER_PID;
  if (!pid) return NaN;
  try {
    let ms = 0;
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      try {
        ms += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]) / 1e6;
      } catch {
        // The thread exited between the listing and the read.
      }
    }
    return ms;
  } catch {
    return NaN;
  }
}

const cpuMs = () => {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1000;
};

async function throughput() {
  const out = { pool: [], native: [] };
  const cpu = { pool: [], native: [] };
  const threads = { pool: [], native: [] };
  const serverCpu = { pool: [], native: [] };
  // One untimed stream each first: the first one pays for connecting, JIT and page faults.
  for (const name of order(0)) await drain(await impls[name](`${server}/bench/bytes?n=${64 * MB}&chunk=65536`));
  for (let round = 0; round < 16; round++) {
    for (const name of order(round)) {
      const before = threadCpu().snap;
      const r0 = reads;
      const s0 = serverCpuMs();
      const c0 = cpuMs();
      const t0 = now();
      const bytes = await drain(await impls[name](`${server}/bench/bytes?n=${64 * MB}&chunk=65536`));
      if (bytes !== 64 * MB) throw new Error(`${name}: got ${bytes} bytes`);
      out[name].push((64 * MB) / MB / ((now() - t0) / 1000));
      cpu[name].push(cpuMs() - c0);
      serverCpu[name].push(serverCpuMs() - s0);
      threads[name].push({ ...threadCpu(before).groups, reads: reads - r0 });
    }
  }
  // The thread split of the median-throughput round.
  const medianRound = (name) => threads[name][out[name].indexOf(median(out[name]))];
  return {
    poolMBps: median(out.pool),
    nativeMBps: median(out.native),
    poolCpuMs: median(cpu.pool),
    nativeCpuMs: median(cpu.native),
    poolServerCpuMs: median(serverCpu.pool),
    nativeServerCpuMs: median(serverCpu.native),
    poolThreads: medianRound("pool"),
    nativeThreads: medianRound("native"),
    rounds: out,
  };
}

async function latency() {
  const out = { pool: [], native: [] };
  for (const name of ["pool", "native"]) for (let i = 0; i < 200; i++) await (await ok(await impls[name](`${server}/bench/small`))).text();
  for (let round = 0; round < 10; round++) {
    for (const name of order(round)) {
      for (let i = 0; i < 200; i++) {
        const t0 = now();
        const res = await impls[name](`${server}/bench/small`);
        await res.text();
        out[name].push(now() - t0);
        if (res.status !== 200) throw new Error(`${name}: status ${res.status}`);
      }
    }
  }
  return {
    poolP50: pct(out.pool, 50),
    poolP99: pct(out.pool, 99),
    nativeP50: pct(out.native, 50),
    nativeP99: pct(out.native, 99),
  };
}

async function sseDelay() {
  const out = { pool: [], native: [] };
  const decoder = new TextDecoder();
  for (let round = 0; round < 4; round++) {
    for (const name of order(round)) {
      const res = await ok(await impls[name](`${server}/bench/sse?events=150&intervalMs=3`));
      const reader = res.body.getReader();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const arrived = now();
        buf += decoder.decode(value, { stream: true });
        for (let idx = buf.indexOf("\n\n"); idx >= 0; idx = buf.indexOf("\n\n")) {
          const line = buf.slice(0, idx);
          buf = buf.slice(idx + 2);
          if (line.startsWith("data: ")) out[name].push(arrived - JSON.parse(line.slice(6)).t);
        }
      }
    }
  }
  return { poolP50: median(out.pool), nativeP50: median(out.native), poolP99: pct(out.pool, 99), nativeP99: pct(out.native, 99) };
}

async function control(path, body) {
  const res = await fetch(`${server}/__mock/${path}`, body === undefined ? {} : { method: "POST", body: JSON.stringify(body) });
  return res.json();
}

async function failover() {
  const gaps = [];
  let sticky = null;
  const post = () =>
    poolFetch(`${server}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "m", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
  const warm = await post();
  await warm.text();
  sticky = warm.poolAccount;
  for (let i = 0; i < 12; i++) {
    await control("clear-requests", {});
    await control("script", { email: sticky, responses: [{ status: 429, headers: { "retry-after": "1" } }] });
    const res = await post();
    await res.text();
    const reqs = await control("requests");
    const i429 = reqs.findIndex((r) => r.status === 429);
    if (i429 >= 0 && reqs[i429 + 1]) gaps.push(reqs[i429 + 1].arrivedHr - reqs[i429].finishedHr);
    sticky = res.poolAccount;
    await new Promise((r) => setTimeout(r, 1100)); // the burst cooldown of the other account
  }
  if (!gaps.length) throw new Error("failover: no 429 was followed by a retry on another account");
  return { p50: median(gaps), max: Math.max(...gaps), samples: gaps.length };
}

async function concurrent() {
  const out = { pool: [], native: [] };
  for (let round = 0; round < 4; round++) {
    for (const name of order(round)) {
      const t0 = now();
      let done = 0;
      await Promise.all(
        Array.from({ length: 64 }, async () => {
          for (let i = 0; i < 4; i++) {
            await drain(await impls[name](`${server}/bench/bytes?n=${MB}&chunk=16384`));
            done++;
          }
        }),
      );
      out[name].push(done / ((now() - t0) / 1000));
    }
  }
  return { poolRps: median(out.pool), nativeRps: median(out.native) };
}

async function rss(name) {
  const f = impls[name];
  await drain(await f(`${server}/bench/bytes?n=${8 * MB}`));
  // The warm-up stream's batches collected before the base is read: left in it, they made the
  // base higher and the growth smaller, by as much as that fetch's garbage happened to be.
  if (typeof Bun === "undefined" && typeof globalThis.gc !== "function") throw new Error("the rss suite needs node --expose-gc");
  collectGarbage();
  const base = process.memoryUsage().rss;
  let peak = base;
  const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  const bytes = await drain(await f(`${server}/bench/bytes?n=${256 * MB}&chunk=65536`));
  clearInterval(timer);
  peak = Math.max(peak, process.memoryUsage().rss);
  return { growthMB: (peak - base) / MB, bytes };
}

let result;
if (suite.startsWith("rss-")) {
  result = await rss(suite.slice(4));
} else {
  const parts = new Set(suite === "all" ? ["throughput", "latency", "sse", "failover", "concurrent"] : suite.split(","));
  result = {};
  if (parts.has("throughput")) result.throughput64MB = await throughput();
  if (parts.has("latency")) result.smallLatencyMs = await latency();
  if (parts.has("sse")) result.sseDelayMs = await sseDelay();
  if (parts.has("failover")) result.failoverGapMs = await failover();
  if (parts.has("concurrent")) result.concurrent64 = await concurrent();
}
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
