// One of several processes of one kind loaded side by side (bench/run.mjs starts them): what one
// request through `impl` adds to this process when its code pages are shared with its peers, as
// on a machine running many OpenCode processes. PSS (proportional set size) charges each shared
// page to the processes mapping it in equal parts; RSS charges it to each in full.
//   node bench/peer.mjs <serverUrl> <poolPath> <pool|native>
// Prints JSON lines; samples only when told to ("base", then "loaded" on stdin), so that every
// peer samples while all of them are alive and loaded alike. Linux only (/proc).
import { createInterface } from "node:readline";
import { collectGarbage, memory } from "./memory.mjs";

const [server, poolPath, impl = "pool"] = process.argv.slice(2);
const orders = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

// Let the runtime finish starting (JIT and GC helper threads come up in the first moments).
await new Promise((r) => setTimeout(r, 500));
say({ phase: "started" });
await orders.next();
collectGarbage();
const base = memory();

let send;
if (impl === "pool") {
  const { createPoolFetch } = await import("../index.mjs");
  // The transport --transport names, as the footprint and client runs take it.
  send = createPoolFetch({ path: poolPath, ...(process.env.BENCH_TRANSPORT ? { transport: process.env.BENCH_TRANSPORT } : {}) });
} else {
  send = globalThis.fetch.bind(globalThis);
}
const res = await send(`${server}/bench/small`);
if (res.status !== 200) throw new Error(`status ${res.status}`);
await res.text();
say({ phase: "loaded" });
await orders.next();
collectGarbage();
const loaded = memory();

say({ phase: "done", runtime: typeof Bun !== "undefined" ? "bun" : "node", impl, base, loaded });
process.exit(0);
