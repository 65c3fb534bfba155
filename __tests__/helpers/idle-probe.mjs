// A separate process that sends one request through the pool fetch (its default transport for
// the runtime running it) and then idles, reporting the CPU time and the times scheduled of
// each of the addon's threads (tokio names them "oauth-pool") at two points of that idle
// stretch: once the request's bookkeeping write is done ("idle" line), and again after the parent
// says "go" on stdin (meanwhile the parent rewrites the pool file, as another process does).
// Linux only (/proc/self/task/*/schedstat).
//   node idle-probe.mjs <poolPath> <apiUrl>
import { readdirSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";

const [path, apiUrl] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

/** The addon's threads: tid -> { ns on a CPU, times scheduled }. */
function addonThreads() {
  const out = {};
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      if (readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim() !== "oauth-pool") continue;
      const [ns, , slices] = readFileSync(`/proc/self/task/${tid}/schedstat`, "utf8").trim().split(/\s+/).map(Number);
      out[tid] = { ns, slices };
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return out;
}

const orders = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const { createPoolFetch } = await import("../../index.mjs");
const poolFetch = createPoolFetch({ path });
const res = await poolFetch(`${apiUrl}/v1/messages`, {
  method: "POST",
  headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
  body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
});
const status = res.status;
await res.text();
// The bookkeeping write comes about a second after the answer (it sets the account's
// lastUsed); past it nothing is due.
const written = () => {
  try {
    return JSON.parse(readFileSync(path, "utf8")).anthropic.some((a) => a.lastUsed);
  } catch {
    return false; // read mid-rename
  }
};
const deadline = Date.now() + 10_000;
while (!written() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
await new Promise((r) => setTimeout(r, 500));
say({ phase: "idle", status, threads: addonThreads() });
await orders.next();
say({ phase: "after", threads: addonThreads() });
process.exit(0);
