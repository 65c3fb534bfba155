// A separate process using the real addon: sends N requests through the pool fetch and prints
// one JSON line with what it saw. Used by the multi-process tests.
//   node pool-worker.mjs <poolPath> <apiUrl> <count> [startAtEpochMs]
import { createPoolFetch } from "../../index.mjs";

const [path, apiUrl, countArg, startAt] = process.argv.slice(2);
const count = Number(countArg ?? 1);
if (startAt) await new Promise((r) => setTimeout(r, Math.max(0, Number(startAt) - Date.now())));
const poolFetch = createPoolFetch({ path });
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
    results.push({ error: String(err?.code ?? err?.message ?? err) });
  }
}
const { flushPool } = await import("../../index.mjs");
await flushPool(path);
process.stdout.write(JSON.stringify(results) + "\n");
