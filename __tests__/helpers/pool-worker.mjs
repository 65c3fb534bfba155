// A separate process using the real addon: sends N requests through the pool fetch and prints
// one JSON line with what it saw. Used by the multi-process tests.
//   node pool-worker.mjs <poolPath> <apiUrl> <count> [barrier]
// With `barrier`, it prints "ready" once loaded and waits for a line on stdin before sending,
// so a test starts every worker at the same moment (a real signal, not a clock guess).
import { spawn } from "node:child_process";
import { createPoolFetch } from "../../index.mjs";

const [path, apiUrl, countArg, barrier] = process.argv.slice(2);
const count = Number(countArg ?? 1);
const poolFetch = createPoolFetch({ path });
// SIGUSR2: start a child now that outlives us (a host's shell command started while one of our
// requests holds a lock) and print "child <pid>".
process.on("SIGUSR2", () => {
  const child = spawn("sleep", ["30"], { stdio: "ignore", detached: true });
  child.unref();
  process.stdout.write(`child ${child.pid}\n`);
});
if (barrier === "barrier") {
  process.stdout.write("ready\n");
  await new Promise((resolve) => {
    process.stdin.once("data", resolve);
    process.stdin.once("end", resolve);
  });
  process.stdin.pause();
}
const results = [];
for (let i = 0; i < count; i++) {
  try {
    const res = await poolFetch(`${apiUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "m", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    const text = await res.text();
    results.push({ status: res.status, account: res.poolAccount, text: text.slice(0, 200) });
  } catch (err) {
    results.push({ error: String(err?.code ?? err?.message ?? err), message: String(err?.message ?? "") });
  }
}
const { flushPool } = await import("../../index.mjs");
await flushPool(path);
process.stdout.write(`${JSON.stringify(results)}\n`);
