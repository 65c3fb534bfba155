#!/usr/bin/env node
// `npm run bench`: the pool fetch against the runtime's own fetch, under Node and under Bun,
// on one loopback server (the mock, in its own process). Prints a Markdown table.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const server = spawn(process.execPath, [join(root, "__tests__/helpers/mock-anthropic.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
const { url } = await new Promise((resolve) => createInterface({ input: server.stdout }).once("line", (l) => resolve(JSON.parse(l))));

process.env.OAUTH_POOL_API_URL = url;
process.env.OAUTH_POOL_TOKEN_URL = `${url}/v1/oauth/token`;
const poolPath = join(mkdtempSync(join(tmpdir(), "oauth-pool-bench-")), "oauth-pool.json");
const { savePool } = await import("../index.mjs");
const anthropic = [];
for (const email of ["bench-a@example.com", "bench-b@example.com"]) {
  const t = await (await fetch(`${url}/__mock/account`, { method: "POST", body: JSON.stringify({ email }) })).json();
  anthropic.push({ email, access: t.access, refresh: t.refresh, expires: t.expires, status: "idle", rateLimitUntil: null });
}
await savePool({ anthropic }, poolPath);

const env = { ...process.env, OAUTH_POOL_PATH: poolPath };
const runtimes = { node: process.execPath, bun: join(root, "node_modules", ".bin", "bun") };
function client(runtime, suite) {
  const r = spawnSync(runtimes[runtime], [join(root, "bench/client.mjs"), url, poolPath, suite], { env, encoding: "utf8", maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`${runtime} ${suite} failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split("\n").at(-1));
}

const results = {};
for (const runtime of Object.keys(runtimes)) {
  console.error(`running ${runtime}...`);
  results[runtime] = { ...client(runtime, "all"), rssPool: client(runtime, "rss-pool"), rssNative: client(runtime, "rss-native") };
}
server.kill();

const f = (x, d = 2) => (typeof x === "number" ? x.toFixed(d) : String(x));
const rows = [];
for (const [rt, r] of Object.entries(results)) {
  const t = r.throughput64MB, l = r.smallLatencyMs, s = r.sseDelayMs, c = r.concurrent64;
  rows.push(`| ${rt} | 64 MB stream throughput (MB/s) | ${f(t.poolMBps, 0)} | ${f(t.nativeMBps, 0)} | ${f(t.poolMBps / t.nativeMBps)}x |`);
  rows.push(`| ${rt} | small request p50 (ms) | ${f(l.poolP50, 3)} | ${f(l.nativeP50, 3)} | ${f(l.poolP50 / l.nativeP50)}x |`);
  rows.push(`| ${rt} | small request p99 (ms) | ${f(l.poolP99, 3)} | ${f(l.nativeP99, 3)} | ${f(l.poolP99 / l.nativeP99)}x |`);
  rows.push(`| ${rt} | SSE event delay p50 (ms) | ${f(s.poolP50, 3)} | ${f(s.nativeP50, 3)} | ${f(s.poolP50 / s.nativeP50)}x |`);
  rows.push(`| ${rt} | 64 concurrent 1 MB streams (req/s) | ${f(c.poolRps, 0)} | ${f(c.nativeRps, 0)} | ${f(c.poolRps / c.nativeRps)}x |`);
  rows.push(`| ${rt} | RSS growth streaming 256 MB (MB) | ${f(r.rssPool.growthMB, 1)} | ${f(r.rssNative.growthMB, 1)} | |`);
  rows.push(`| ${rt} | failover: 429 sent -> retry arrives (ms) | p50 ${f(r.failoverGapMs.p50, 3)}, max ${f(r.failoverGapMs.max, 3)} | n/a | |`);
}
const table = ["| runtime | measure | pool fetch | runtime fetch | ratio |", "|---|---|---|---|---|", ...rows].join("\n");
console.log(table);
writeFileSync(join(root, "bench", "last-run.json"), JSON.stringify({ at: new Date().toISOString(), results }, null, 2) + "\n");
