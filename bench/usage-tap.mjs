// What counting usage costs (issue 12): the pool fetch on server-sent events with the usage tap
// on (the default) and off (OAUTH_POOL_USAGE=off), each in a fresh process, under Node and Bun:
// event delay p50 (3 ms apart, as a model streams) and throughput of a stream of 2 KB events.
// Prints one JSON line.
//   node bench/usage-tap.mjs
import { spawn, spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const [mode, server, poolPath] = process.argv.slice(2);

if (mode === "client") {
  const { createPoolFetch } = await import("../index.mjs");
  const poolFetch = createPoolFetch({ path: poolPath, ...(process.env.BENCH_TRANSPORT ? { transport: process.env.BENCH_TRANSPORT } : {}) });
  const now = () => performance.timeOrigin + performance.now();
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const decoder = new TextDecoder();
  const delays = [];
  for (let round = 0; round < 4; round++) {
    const res = await poolFetch(`${server}/v1/bench/sse?events=150&intervalMs=3`);
    if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
    let buf = "";
    for await (const value of res.body) {
      const arrived = now();
      buf += decoder.decode(value, { stream: true });
      for (let idx = buf.indexOf("\n\n"); idx >= 0; idx = buf.indexOf("\n\n")) {
        const line = buf.slice(0, idx);
        buf = buf.slice(idx + 2);
        if (line.startsWith("data: ")) delays.push(arrived - JSON.parse(line.slice(6)).t);
      }
    }
  }
  const rates = [];
  for (let round = 0; round < 4; round++) {
    const t0 = now();
    let bytes = 0;
    const res = await poolFetch(`${server}/v1/bench/sse?events=20000&pad=2000`);
    if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
    for await (const value of res.body) bytes += value.byteLength;
    rates.push(bytes / 1024 / 1024 / ((now() - t0) / 1000));
  }
  console.log(JSON.stringify({ sseDelayP50Ms: median(delays), sseMBps: median(rates) }));
  process.exit(0);
}

const mock = spawn(process.execPath, [join(root, "__tests__/helpers/mock-anthropic.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
const { url } = JSON.parse(await new Promise((resolve) => createInterface({ input: mock.stdout }).once("line", resolve)));
const home = tempDir("oauth-pool-bench-usage-");
const env = { ...process.env, HOME: home, OAUTH_POOL_API_URL: url, OAUTH_POOL_TOKEN_URL: `${url}/v1/oauth/token` };
Object.assign(process.env, env);
const path = join(home, "pool.json");
const { savePool } = await import("../index.mjs");
const t = await (await fetch(`${url}/__mock/account`, { method: "POST", body: JSON.stringify({ email: "usage-bench@example.com" }) })).json();
await savePool({ anthropic: [{ email: "usage-bench@example.com", access: t.access, refresh: t.refresh, expires: t.expires }] }, path);

const runtimes = { node: process.execPath, bun: join(root, "node_modules", ".bin", "bun") };
const result = {};
try {
  for (const [runtime, bin] of Object.entries(runtimes)) {
    result[runtime] = {};
    // Alternated, twice each: the box is shared and noisy.
    for (const usage of ["on", "off", "on", "off"]) {
      const r = spawnSync(bin, [fileURLToPath(import.meta.url), "client", url, path], { env: { ...env, OAUTH_POOL_USAGE: usage }, encoding: "utf8" });
      if (r.status !== 0) throw new Error(`${runtime} usage=${usage}: ${r.stderr}`);
      const run = JSON.parse(r.stdout.trim().split("\n").at(-1));
      const prev = result[runtime][usage];
      result[runtime][usage] = prev ? { sseDelayP50Ms: (prev.sseDelayP50Ms + run.sseDelayP50Ms) / 2, sseMBps: (prev.sseMBps + run.sseMBps) / 2 } : run;
    }
  }
  console.log(JSON.stringify(result));
} finally {
  mock.kill();
}
