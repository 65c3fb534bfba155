// A separate process that asks the pool (at $OAUTH_POOL_PATH) for `model` every 100 ms until an
// answer comes back 200, then prints one JSON line: { status, firstOkAt, tries, account }. With `once`,
// it asks once. Used by the limits tests (cooldowns honoured across processes, jitter).
//   node pool-poller.mjs <apiUrl> <model> <once|poll> [deadlineMs]
import { createPoolFetch, flushPool } from "../../index.mjs";

const [apiUrl, model, mode, deadlineArg] = process.argv.slice(2);
const deadline = Date.now() + Number(deadlineArg ?? 10_000);
const f = createPoolFetch();
let last = { status: 0 };
let tries = 0;
for (;;) {
  tries++;
  const res = await f(`${apiUrl}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });
  await res.text();
  last = { status: res.status, firstOkAt: res.status === 200 ? Date.now() : null, tries, account: res.poolAccount ?? null };
  if (res.status === 200 || mode === "once" || Date.now() > deadline) break;
  await new Promise((r) => setTimeout(r, 100));
}
await flushPool();
process.stdout.write(`${JSON.stringify(last)}\n`);
