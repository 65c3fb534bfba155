#!/usr/bin/env node
// `npm run bench`: the pool fetch against the runtime's own fetch, under Node and under Bun,
// on one loopback server (the mock, in its own process). Prints Markdown tables.
//   npm run bench                  the comparison on an otherwise idle machine
//   npm run bench -- --busy        the same while another process keeps one core busy
//   options: --runtimes=node,bun   --suites=all,rss,footprint,import,gateway,usage
//            --idle-ms=15000 --peers=8 (processes side by side in the footprint suite)
//            --parts=throughput,latency,sse,failover,concurrent (what "all" runs; default all)
//            --transport=auto|native|runtime (the pool fetch's transport; default: its own)
//            --out=<file.json>      (default bench/last-run.json, which records the last run,
//                                    plain or busy)
import { spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const args = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const at = a.indexOf("=");
    return at < 0 ? [a.replace(/^--/, ""), "true"] : [a.slice(0, at).replace(/^--/, ""), a.slice(at + 1)];
  }),
);
/** A mistyped option measured nothing and printed empty tables: refused before anything runs. */
function refuse(why) {
  console.error(`bench/run.mjs: ${why}`);
  process.exit(2);
}
const known = { busy: null, runtimes: ["node", "bun"], suites: ["all", "rss", "footprint", "import", "gateway", "usage"] };
Object.assign(known, { parts: ["all", "throughput", "latency", "sse", "failover", "concurrent"], transport: ["auto", "native", "runtime"] });
Object.assign(known, { "idle-ms": null, peers: null, out: null });
for (const [k, v] of Object.entries(args)) {
  if (!(k in known))
    refuse(
      `unknown option --${k} (options: ${Object.keys(known)
        .map((o) => `--${o}`)
        .join(" ")})`,
    );
  const bad = known[k]?.length && v.split(",").filter((x) => !known[k].includes(x));
  if (bad?.length) refuse(`--${k}: ${bad.join(", ")} is not one of ${known[k].join(", ")}`);
}
if (args.busy !== undefined && args.busy !== "true") refuse("--busy takes no value");
const whole = (name, dflt, least) => {
  const n = Number(args[name] ?? dflt);
  if (!Number.isInteger(n) || n < least) refuse(`--${name}: ${args[name]} is not a whole number of at least ${least}`);
  return n;
};
const busy = args.busy === "true";
const allRuntimes = { node: process.execPath, bun: join(root, "node_modules", ".bin", "bun") };
const runtimes = Object.fromEntries((args.runtimes ?? "node,bun").split(",").map((r) => [r, allRuntimes[r]]));
const suites = new Set((args.suites ?? "all,rss,footprint,import,gateway,usage").split(","));
// The footprint's idle CPU is counted from 2 s after the request (bench/footprint.mjs).
const idleMs = whole("idle-ms", 15000, 3000);
const parts = args.parts ?? "all";
const outFile = args.out ?? join(root, "bench", "last-run.json");
const peerCount = whole("peers", 8, 1);

const server = spawn(process.execPath, [join(root, "__tests__/helpers/mock-anthropic.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
const { url } = await new Promise((resolve) => createInterface({ input: server.stdout }).once("line", (l) => resolve(JSON.parse(l))));

process.env.OAUTH_POOL_API_URL = url;
process.env.OAUTH_POOL_TOKEN_URL = `${url}/v1/oauth/token`;
const poolPath = join(tempDir("oauth-pool-bench-"), "oauth-pool.json");
const { savePool } = await import("../index.mjs");
const anthropic = [];
for (const email of ["bench-a@example.com", "bench-b@example.com"]) {
  const t = await (await fetch(`${url}/__mock/account`, { method: "POST", body: JSON.stringify({ email }) })).json();
  anthropic.push({ email, access: t.access, refresh: t.refresh, expires: t.expires, status: "idle", rateLimitUntil: null });
}
await savePool({ anthropic }, poolPath);

// No jitter on returning accounts: the failover suite sets 1 s cooldowns and expects them back.
const env = { ...process.env, OAUTH_POOL_PATH: poolPath, OAUTH_POOL_JITTER_MS: "0", BENCH_SERVER_PID: String(server.pid) };
if (args.transport) env.BENCH_TRANSPORT = args.transport;
/** A bench script of its own (it starts its own servers and processes); one JSON line out. */
function script(name) {
  console.error(`running ${name}...`);
  const own = { ...process.env, ...(args.transport ? { BENCH_TRANSPORT: args.transport } : {}) };
  const r = spawnSync(process.execPath, [join(root, "bench", name)], { env: own, encoding: "utf8", maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`${name} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
}
function client(runtime, suite) {
  // The rss suites collect garbage before their base (Node exposes the collector only so).
  const flags = runtime === "node" && suite.startsWith("rss-") ? ["--expose-gc"] : [];
  const r = spawnSync(runtimes[runtime], [...flags, join(root, "bench/client.mjs"), url, poolPath, suite], { env, encoding: "utf8", maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`${runtime} ${suite} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
}
/** The footprint runs are idle most of the time, so they run side by side (one process each). */
function footprints() {
  const runs = [];
  for (const runtime of Object.keys(runtimes)) {
    for (const impl of ["pool", "native", "response"]) {
      const child = spawn(
        runtimes[runtime],
        ["--expose-gc", join(root, "bench/footprint.mjs"), url, poolPath, impl, String(idleMs)].filter((a) => runtime === "node" || a !== "--expose-gc"),
        { env, stdio: ["ignore", "pipe", "pipe"] },
      );
      let out = "";
      let err = "";
      child.stdout.on("data", (d) => (out += d));
      child.stderr.on("data", (d) => (err += d));
      runs.push(
        new Promise((resolve, reject) =>
          child.on("exit", (code) =>
            code === 0 ? resolve(JSON.parse(out.trim().split("\n").at(-1))) : reject(new Error(`${runtime} footprint ${impl} failed: ${err}`)),
          ),
        ),
      );
    }
  }
  return Promise.all(runs);
}

/**
 * `count` processes of one kind loaded side by side (bench/peer.mjs): what one request adds to
 * each when they share their code pages, sampled while all are alive. Averages per process.
 */
async function peers(runtime, impl, count) {
  const children = Array.from({ length: count }, () =>
    spawn(runtimes[runtime], [...(runtime === "node" ? ["--expose-gc"] : []), join(root, "bench/peer.mjs"), url, poolPath, impl], {
      env,
      stdio: ["pipe", "pipe", "inherit"],
    }),
  );
  const lines = children.map((c) => createInterface({ input: c.stdout })[Symbol.asyncIterator]());
  const all = () =>
    Promise.all(
      lines.map(async (l) => {
        const { value, done } = await l.next();
        if (done) throw new Error(`${runtime} peer ${impl} ended early`);
        return JSON.parse(value);
      }),
    );
  const order = (word) => {
    for (const c of children) c.stdin.write(`${word}\n`);
  };
  await all();
  order("base");
  await all();
  order("loaded");
  const done = await all();
  const mean = (key) => done.reduce((sum, d) => sum + d.loaded[key] - d.base[key], 0) / done.length;
  return { runtime, impl, count, rssMB: mean("rssMB"), pssMB: mean("pssMB"), anonMB: mean("anonMB") };
}

let spinner = null;
if (busy) {
  spinner = spawn(process.execPath, [join(root, "bench/busy.mjs")], { stdio: ["pipe", "ignore", "inherit"] });
  await new Promise((r) => setTimeout(r, 300));
}
const started = performance.now();
const results = {};
let footprint = [];
const shared = [];
const extra = {};
try {
  for (const runtime of Object.keys(runtimes)) {
    console.error(`running ${runtime}${busy ? " (one core busy)" : ""}...`);
    results[runtime] = {};
    if (suites.has("all")) Object.assign(results[runtime], client(runtime, parts));
    if (suites.has("rss")) Object.assign(results[runtime], { rssPool: client(runtime, "rss-pool"), rssNative: client(runtime, "rss-native") });
  }
  if (suites.has("footprint")) {
    console.error(`running footprint (${idleMs / 1000} s idle)...`);
    footprint = await footprints();
    for (const runtime of Object.keys(runtimes)) for (const impl of ["pool", "native"]) shared.push(await peers(runtime, impl, peerCount));
  }
  if (suites.has("import")) extra.import = script("import.mjs");
  if (suites.has("gateway")) extra.gateway = script("gateway.mjs");
  if (suites.has("usage")) extra.usage = script("usage-tap.mjs");
} finally {
  spinner?.kill();
  server.kill();
}

const f = (x, d = 2) => (typeof x === "number" ? x.toFixed(d) : String(x));
const rows = [];
for (const [rt, r] of Object.entries(results)) {
  const t = r.throughput64MB,
    l = r.smallLatencyMs,
    s = r.sseDelayMs,
    c = r.concurrent64;
  if (t) rows.push(`| ${rt} | 64 MB stream throughput (MB/s) | ${f(t.poolMBps, 0)} | ${f(t.nativeMBps, 0)} | ${f(t.poolMBps / t.nativeMBps)}x |`);
  if (l) rows.push(`| ${rt} | small request p50 (ms) | ${f(l.poolP50, 3)} | ${f(l.nativeP50, 3)} | ${f(l.poolP50 / l.nativeP50)}x |`);
  if (l) rows.push(`| ${rt} | small request p99 (ms) | ${f(l.poolP99, 3)} | ${f(l.nativeP99, 3)} | ${f(l.poolP99 / l.nativeP99)}x |`);
  if (s) rows.push(`| ${rt} | SSE event delay p50 (ms) | ${f(s.poolP50, 3)} | ${f(s.nativeP50, 3)} | ${f(s.poolP50 / s.nativeP50)}x |`);
  if (c) rows.push(`| ${rt} | 64 concurrent 1 MB streams (req/s) | ${f(c.poolRps, 0)} | ${f(c.nativeRps, 0)} | ${f(c.poolRps / c.nativeRps)}x |`);
  if (t) rows.push(`| ${rt} | CPU per 64 MB stream, all threads (ms) | ${f(t.poolCpuMs, 0)} | ${f(t.nativeCpuMs, 0)} | ${f(t.poolCpuMs / t.nativeCpuMs)}x |`);
  if (r.rssPool) rows.push(`| ${rt} | RSS growth streaming 256 MB (MB) | ${f(r.rssPool.growthMB, 1)} | ${f(r.rssNative.growthMB, 1)} | |`);
  if (r.failoverGapMs)
    rows.push(`| ${rt} | failover: 429 sent -> retry arrives (ms) | p50 ${f(r.failoverGapMs.p50, 3)}, max ${f(r.failoverGapMs.max, 3)} | n/a | |`);
}
const mode = busy ? "one core kept busy by another process" : "otherwise idle machine";
console.log(`${cpus().length} cores, ${mode}${args.transport ? `, pool transport ${args.transport}` : ""}\n`);
if (rows.length) console.log(["| runtime | measure | pool fetch | runtime fetch | ratio |", "|---|---|---|---|---|", ...rows].join("\n"));

if (footprint.length) {
  const frows = footprint.map((p) => {
    const a = p.addedAfterRequest;
    const i = p.addedAfterIdle;
    const mb = (m) => `${m.rssMB < 0 ? "" : "+"}${f(m.rssMB, 1)} MB (private ${m.anonMB < 0 ? "" : "+"}${f(m.anonMB, 1)})`;
    const th = (m) => `${m.threads < 0 ? "" : "+"}${m.threads}${p.impl === "pool" ? ` (addon ${m.addonThreads})` : ""}`;
    return `| ${p.runtime} | ${{ pool: "pool fetch", native: "runtime fetch", response: "a Response alone" }[p.impl]} | ${f(p.base.rssMB, 1)} MB, ${p.base.threads} | ${mb(a)}, ${th(a)} | ${mb(i)}, ${th(i)} | ${f(p.idleCpuMs.process, 1)} (${f(p.idleCpuMs.addedThreads, 1)}) |`;
  });
  console.log(
    [
      "",
      `Idle footprint: the runtime alone, then what loading + createPoolFetch + one small request add, then what is left after ${idleMs / 1000} s idle.`,
      "RSS (of it private: anonymous pages; the rest is mapped code the kernel shares between processes); threads in /proc/self/task (of them the addon's own).",
      "",
      `| runtime | fetch | runtime alone | after one request | after ${idleMs / 1000} s idle | CPU while idle, ms (of it: added threads) |`,
      "|---|---|---|---|---|---|",
      ...frows,
    ].join("\n"),
  );
}
if (shared.length) {
  console.log(
    [
      "",
      `${peerCount} processes of one kind at once, each after one small request: what it adds per process. PSS charges a page shared by several processes to each in part, RSS to each in full.`,
      "",
      "| runtime | fetch | RSS added | PSS added | of it private |",
      "|---|---|---|---|---|",
      ...shared.map(
        (p) => `| ${p.runtime} | ${p.impl === "pool" ? "pool fetch" : "runtime fetch"} | +${f(p.rssMB, 1)} MB | +${f(p.pssMB, 1)} MB | +${f(p.anonMB, 1)} MB |`,
      ),
    ].join("\n"),
  );
}
if (extra.import) {
  console.log(
    [
      "",
      "Cold import, a fresh process per sample, median (ms):",
      "",
      "| runtime | `import` of index.mjs | first native call | `import` of plugin.mjs |",
      "|---|---|---|---|",
    ].join("\n"),
  );
  for (const [rt, m] of Object.entries(extra.import))
    console.log(`| ${rt} | ${f(m.library.importMs, 1)} | ${f(m.library.firstNativeCallMs, 2)} | ${f(m.plugin.importMs, 1)} |`);
}
if (extra.gateway) {
  const g = extra.gateway;
  console.log(
    [
      "",
      "The gateway (`oauth-pool serve`, its own process) against calling the server directly, Node's fetch as the client:",
      "",
      "| measure | through the gateway | direct | ratio |",
      "|---|---|---|---|",
      `| small request p50 (ms) | ${f(g.latencyMs.gatewayP50, 3)} | ${f(g.latencyMs.directP50, 3)} | +${f(g.latencyMs.addedP50, 3)} ms |`,
      `| 64 MB stream throughput (MB/s) | ${f(g.throughput64MB.gatewayMBps, 0)} | ${f(g.throughput64MB.directMBps, 0)} | ${f(g.throughput64MB.gatewayMBps / g.throughput64MB.directMBps)}x |`,
      `| 200 concurrent 1 MB streams (req/s) | ${f(g.concurrent200x1MB.gatewayRps, 0)} | ${f(g.concurrent200x1MB.directRps, 0)} | ${f(g.concurrent200x1MB.gatewayRps / g.concurrent200x1MB.directRps)}x |`,
    ].join("\n"),
  );
}
if (extra.usage) {
  console.log(
    [
      "",
      "The usage tap (OAUTH_POOL_USAGE on, the default, against off), pool fetch on server-sent events:",
      "",
      "| runtime | event delay p50 on / off (ms) | 2 KB-event stream on / off (MB/s) |",
      "|---|---|---|",
    ].join("\n"),
  );
  for (const [rt, m] of Object.entries(extra.usage))
    console.log(`| ${rt} | ${f(m.on.sseDelayP50Ms, 3)} / ${f(m.off.sseDelayP50Ms, 3)} | ${f(m.on.sseMBps, 0)} / ${f(m.off.sseMBps, 0)} |`);
}
console.error(`bench took ${((performance.now() - started) / 1000).toFixed(0)} s`);
writeFileSync(
  outFile,
  `${JSON.stringify({ at: new Date().toISOString(), cores: cpus().length, busy, transport: args.transport ?? null, results, footprint, shared, ...extra }, null, 2)}\n`,
);
