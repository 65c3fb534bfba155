// Reads one streamed answer through the pool in a process of its own and prints its size, its
// SHA-256 and the process's memory: the peak of a process that holds only the pool and this
// reader (sse-framing.test.mjs). Usage: sse-reader.mjs <native|runtime|gateway> <pool> <model> <url>
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as lib from "../../index.mjs";

const [kind, path, model, url] = process.argv.slice(2);

/** A field of /proc/self/status in bytes (VmRSS now, VmHWM the peak); off Linux, the peak. */
function memory(field) {
  try {
    const kb = new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync("/proc/self/status", "utf8"));
    if (kb) return Number(kb[1]) * 1024;
  } catch {}
  return process.resourceUsage().maxRSS * 1024;
}

const body = JSON.stringify({ model, max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] });
const gateway = kind === "gateway" ? await lib.serve({ port: 0, path }) : null;
const f = gateway ? null : lib.createPoolFetch({ path, transport: kind });
const rssBefore = memory("VmRSS");
const res = gateway
  ? await fetch(`${gateway.url}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-api-key": process.env.OAUTH_POOL_GATEWAY_KEY },
      body,
    })
  : await f(url, { method: "POST", headers: { "content-type": "application/json" }, body });
const hash = createHash("sha256");
let size = 0;
const reader = res.body.getReader();
for (;;) {
  const { done, value } = await reader.read();
  if (done) break;
  hash.update(value);
  size += value.length;
}
await gateway?.close(1000);
await lib.flushPool(path);
console.log(JSON.stringify({ status: res.status, size, sha256: hash.digest("hex"), rssBefore, peakRss: memory("VmHWM") }));
