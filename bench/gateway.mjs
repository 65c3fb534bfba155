// The gateway against calling the server directly, side by side, interleaved: the loopback mock
// in its own process, `oauth-pool serve` in its own process (as people run it), and this
// process as the client with Node's fetch. Goals (issue 13): added p50 <= 0.3 ms, stream
// throughput >= 0.8x direct, 200 concurrent streams.
// Prints one JSON line with the figures.
//   node bench/gateway.mjs
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const MB = 1024 * 1024;
const KEY = "bench-gateway-key-0123456789abcdef";
const now = () => performance.now();
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const firstLine = (stream) => new Promise((resolve) => createInterface({ input: stream }).once("line", resolve));

const home = tempDir("oauth-pool-bench-gw-");
const mock = spawn(process.execPath, [join(root, "__tests__/helpers/mock-anthropic.mjs")], { stdio: ["pipe", "pipe", "inherit"] });
const { url: mockUrl } = JSON.parse(await firstLine(mock.stdout));
const env = {
  ...process.env,
  HOME: home,
  OAUTH_POOL_PATH: join(home, "pool.json"),
  OAUTH_POOL_API_URL: mockUrl,
  OAUTH_POOL_TOKEN_URL: `${mockUrl}/v1/oauth/token`,
  OAUTH_POOL_GATEWAY_KEY: KEY,
};
Object.assign(process.env, env);
const { savePool } = await import("../index.mjs");
const tokens = await (await fetch(`${mockUrl}/__mock/account`, { method: "POST", body: JSON.stringify({ email: "gw-bench@example.com" }) })).json();
await savePool(
  { anthropic: [{ email: "gw-bench@example.com", access: tokens.access, refresh: tokens.refresh, expires: tokens.expires }] },
  env.OAUTH_POOL_PATH,
);

const gateway = spawn(process.execPath, [join(root, "bin/oauth-pool.mjs"), "serve", "--port", "0", "--json"], { env, stdio: ["ignore", "pipe", "inherit"] });
const { url: gatewayUrl } = JSON.parse(await firstLine(gateway.stdout));

const targets = {
  direct: { base: mockUrl, headers: { authorization: `Bearer ${tokens.access}` } },
  gateway: { base: gatewayUrl, headers: { "x-api-key": KEY } },
};
const get = (name, path) => fetch(`${targets[name].base}${path}`, { headers: targets[name].headers });

async function drain(res) {
  if (res.status !== 200) throw new Error(`status ${res.status}: ${await res.text()}`);
  let bytes = 0;
  for await (const chunk of res.body) bytes += chunk.byteLength;
  return bytes;
}

async function latency() {
  const out = { direct: [], gateway: [] };
  for (const name of ["direct", "gateway"]) for (let i = 0; i < 200; i++) await drain(await get(name, "/v1/bench/small"));
  for (let i = 0; i < 2000; i++) {
    for (const name of i % 2 ? ["gateway", "direct"] : ["direct", "gateway"]) {
      const t0 = now();
      const res = await get(name, "/v1/bench/small");
      await res.text();
      out[name].push(now() - t0);
      // An error answered fast (a refused key, a pool error) is not a fast request.
      if (res.status !== 200) throw new Error(`${name}: status ${res.status}`);
    }
  }
  return { directP50: pct(out.direct, 50), gatewayP50: pct(out.gateway, 50), addedP50: pct(out.gateway, 50) - pct(out.direct, 50) };
}

async function throughput() {
  const out = { direct: [], gateway: [] };
  for (let round = 0; round < 4; round++) {
    for (const name of round % 2 ? ["gateway", "direct"] : ["direct", "gateway"]) {
      const t0 = now();
      const bytes = await drain(await get(name, `/v1/bench/bytes?n=${64 * MB}&chunk=65536`));
      if (bytes !== 64 * MB) throw new Error(`${name}: ${bytes} bytes`);
      out[name].push(64 / ((now() - t0) / 1000));
    }
  }
  return { directMBps: pct(out.direct, 50), gatewayMBps: pct(out.gateway, 50) };
}

async function concurrent() {
  const out = {};
  for (const name of ["direct", "gateway"]) {
    const t0 = now();
    const sizes = await Promise.all(Array.from({ length: 200 }, async () => drain(await get(name, `/v1/bench/bytes?n=${MB}&chunk=16384`))));
    if (sizes.some((n) => n !== MB)) throw new Error(`${name}: a stream came short`);
    out[name] = 200 / ((now() - t0) / 1000);
  }
  return { directRps: out.direct, gatewayRps: out.gateway };
}

try {
  const result = { latencyMs: await latency(), throughput64MB: await throughput(), concurrent200x1MB: await concurrent() };
  console.log(JSON.stringify(result));
} finally {
  gateway.kill("SIGTERM");
  mock.kill();
}
