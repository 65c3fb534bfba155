// A separate process that reports the addon's threads (tokio names them "oauth-pool") at each
// stage of its life: loaded, pool fetch created, after one request, and once idle. Linux only
// (/proc/self/task). Prints one JSON line.
//   node thread-probe.mjs <poolPath> <apiUrl>
import { readdirSync, readFileSync } from "node:fs";

const [path, apiUrl] = process.argv.slice(2);

function addonThreads() {
  let n = 0;
  for (const tid of readdirSync("/proc/self/task")) {
    try {
      if (readFileSync(`/proc/self/task/${tid}/comm`, "utf8").trim() === "oauth-pool") n++;
    } catch {
      // The thread exited between the listing and the read.
    }
  }
  return n;
}

/** Every thread of the process, the runtime's own included. */
const allThreads = () => readdirSync("/proc/self/task").length;

// Node lists the built-in modules it has loaded (Bun does not).
const builtinsBefore = new Set(process.moduleLoadList ?? []);
const out = { beforeImport: addonThreads(), allBeforeImport: allThreads() };
const { createPoolFetch, nativeVersion } = await import("../../index.mjs");
await import("../../plugin.mjs");
nativeVersion(); // loads the .node
out.loaded = addonThreads();
const poolFetch = createPoolFetch({ path, transport: "native" });
out.created = addonThreads();
// Before the request: under Node the first Response loads Node's fetch, and with it net, tls and
// crypto.
if (process.moduleLoadList) {
  out.builtinsLoaded = process.moduleLoadList.filter((m) => !builtinsBefore.has(m) && /^NativeModule (?:net|tls|crypto|worker_threads)$/.test(m));
}
const res = await poolFetch(`${apiUrl}/v1/messages`, {
  method: "POST",
  headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
  body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
});
out.status = res.status;
await res.text();
out.afterRequest = addonThreads();
out.allAfterRequest = allThreads();
// Blocking threads (file I/O) exit after 5 s without work; the last bookkeeping write comes
// about a second after the answer.
const deadline = Date.now() + 20_000;
while (addonThreads() > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
out.idle = addonThreads();
out.allIdle = allThreads();
console.log(JSON.stringify(out));
process.exit(0);
