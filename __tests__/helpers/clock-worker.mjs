// A pool user whose clock the test moves (run under libfaketime): it reads one command per line
// on stdin and answers one JSON line on stdout, so the test steps the clock, stops connections
// or takes locks between its requests.
//   node clock-worker.mjs <poolPath> <apiUrl>
// Commands: {"op":"fetch","model"?}  -> { status, account, text } or { error, message }
//           {"op":"now"}              -> { now } (this process's Date.now(): the faked clock)
//           {"op":"flush"}            -> { flushed: true } (its bookkeeping is in the file)
//           {"op":"exit"}
import { createInterface } from "node:readline";
import { createPoolFetch, flushPool } from "../../index.mjs";

const [path, apiUrl] = process.argv.slice(2);
const poolFetch = createPoolFetch({ path, transport: "native" });
const say = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);

async function fetchOnce(model = "claude-sonnet-4-5") {
  try {
    const res = await poolFetch(`${apiUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    const text = await res.text();
    return { status: res.status, account: res.poolAccount, retryAfter: res.headers.get("retry-after"), text: text.slice(0, 300) };
  } catch (err) {
    return { error: String(err?.code ?? err?.name), message: String(err?.message ?? err) };
  }
}

say({ ready: true });
for await (const line of createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  if (cmd.op === "fetch") say(await fetchOnce(cmd.model));
  else if (cmd.op === "now") say({ now: Date.now() });
  else if (cmd.op === "flush") say({ flushed: await flushPool(path).then(() => true) });
  else if (cmd.op === "exit") break;
}
await flushPool(path);
process.exit(0);
