// One benchmark client run, in whichever runtime executes it (node or bun). Compares the pool
// fetch with the runtime's own fetch on the same loopback server, interleaving the two.
//   node bench/client.mjs <serverUrl> <poolPath> [suite]     suite: all | rss-pool | rss-native
import { createPoolFetch } from "../index.mjs";

const [server, poolPath, suite = "all"] = process.argv.slice(2);
const poolFetch = createPoolFetch({ path: poolPath });
const impls = { pool: poolFetch, native: globalThis.fetch.bind(globalThis) };
const now = () => performance.timeOrigin + performance.now();
const MB = 1024 * 1024;

async function drain(res) {
  let bytes = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return bytes;
    bytes += value.byteLength;
  }
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const median = (xs) => pct(xs, 50);
const order = (round) => (round % 2 ? ["native", "pool"] : ["pool", "native"]);

async function throughput() {
  const out = { pool: [], native: [] };
  for (let round = 0; round < 4; round++) {
    for (const name of order(round)) {
      const t0 = now();
      const bytes = await drain(await impls[name](`${server}/bench/bytes?n=${64 * MB}&chunk=65536`));
      if (bytes !== 64 * MB) throw new Error(`${name}: got ${bytes} bytes`);
      out[name].push((64 * MB) / MB / ((now() - t0) / 1000));
    }
  }
  return { poolMBps: median(out.pool), nativeMBps: median(out.native) };
}

async function latency() {
  const out = { pool: [], native: [] };
  for (const name of ["pool", "native"]) for (let i = 0; i < 200; i++) await (await impls[name](`${server}/bench/small`)).text();
  for (let round = 0; round < 10; round++) {
    for (const name of order(round)) {
      for (let i = 0; i < 200; i++) {
        const t0 = now();
        await (await impls[name](`${server}/bench/small`)).text();
        out[name].push(now() - t0);
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
      const res = await impls[name](`${server}/bench/sse?events=150&intervalMs=3`);
      const reader = res.body.getReader();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        const arrived = now();
        buf += decoder.decode(value, { stream: true });
        let idx;
        while ((idx = buf.indexOf("\n\n")) >= 0) {
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
  globalThis.gc?.();
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
  result = {
    throughput64MB: await throughput(),
    smallLatencyMs: await latency(),
    sseDelayMs: await sseDelay(),
    failoverGapMs: await failover(),
    concurrent64: await concurrent(),
  };
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
