// A chaos worker: sends requests through the pool fetch in a loop until stdin closes (or it is
// SIGKILLed), mixing JSON answers, streams read to the end, streams aborted midway and requests
// with session headers. Prints one JSON line when a request starts ({ s: id, kind }) and one when
// it ends ({ e: id, ms, status?, code?, account?, read? }), so the parent sees a request that
// never ends, even in a worker killed later. Ends with { done: true } after in-flight ones end.
//   node chaos-worker.mjs <poolPath> <apiUrl> <seed>
import { createPoolFetch } from "../../index.mjs";
import { seeded } from "./chaos-random.mjs";

const [path, apiUrl, seedArg] = process.argv.slice(2);
// Each worker's mix differs, reproducibly from its seed.
const { random, pick } = seeded(seedArg);
const f = createPoolFetch({ path });
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);

let running = true;
process.stdin.on("end", () => (running = false));
process.stdin.on("close", () => (running = false));
process.stdin.resume();

const codeOf = (err) => (err?.name === "AbortError" ? "ABORT_ERR" : String(err?.code ?? err?.name ?? "UNKNOWN"));

async function one(id, kind) {
  const started = Date.now();
  say({ s: id, kind, at: started });
  const stream = kind !== "json";
  const headers = { "content-type": "application/json", "anthropic-version": "2023-06-01" };
  if (kind === "session") {
    headers["x-session-affinity"] = `chaos-${Math.floor(random() * 6)}`;
    if (random() < 0.3) headers["x-parent-session-id"] = `chaos-${Math.floor(random() * 6)}`;
  }
  const controller = kind === "abort" ? new AbortController() : null;
  const abortAfter = controller ? Math.floor(random() * 400) : 0;
  const timer = controller ? setTimeout(() => controller.abort(), abortAfter) : null;
  const end = { e: id, kind };
  try {
    const res = await f(`${apiUrl}/v1/messages`, {
      method: "POST",
      headers,
      signal: controller?.signal,
      body: JSON.stringify({
        model: pick(["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"]),
        max_tokens: 16,
        stream,
        messages: [{ role: "user", content: "hi" }],
      }),
    });
    end.status = res.status;
    end.account = res.poolAccount;
    const reader = res.body.getReader();
    let bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.length;
    }
    end.read = bytes;
  } catch (err) {
    end.code = codeOf(err);
    if (end.code !== "ABORT_ERR") end.message = String(err?.message ?? err).slice(0, 300);
  } finally {
    if (timer) clearTimeout(timer);
  }
  end.ms = Date.now() - started;
  say(end);
}

const inFlight = new Set();
let id = 0;
while (running) {
  // Up to three requests at once per process, so one process also has refreshes to share.
  while (inFlight.size < 3 && running) {
    const p = one(++id, pick(["json", "json", "sse", "sse", "abort", "session"])).finally(() => inFlight.delete(p));
    inFlight.add(p);
    await new Promise((r) => setTimeout(r, Math.floor(random() * 30)));
  }
  if (inFlight.size) await Promise.race(inFlight);
}
await Promise.all(inFlight);
const { flushPool } = await import("../../index.mjs");
try {
  await flushPool(path);
} catch (err) {
  say({ flushError: codeOf(err) });
}
say({ done: true });
