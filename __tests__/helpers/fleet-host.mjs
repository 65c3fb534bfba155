// One long-lived process of a fleet host, driven line by line on stdin so a test can change the
// world (stop the database, rate-limit an account elsewhere) between its requests:
//   fetch            one request through the pool fetch
//   refresh <email>  refreshAccount under the store's lock protocol
//   flush            flushPool
//   status           poolStatus
//   start <command>  starts <command> without waiting for it: answers its number at once
//   join <number>    the answer of a command started so
// Each command answers one JSON line on stdout: { ok, ... } or { ok: false, code, message }.
//   node fleet-host.mjs <store> <apiUrl>
import { createInterface } from "node:readline";
import { createPoolFetch, flushPool, poolStatus, refreshAccount } from "../../index.mjs";

const [store, apiUrl] = process.argv.slice(2);
const poolFetch = createPoolFetch({ path: store });

const commands = {
  async fetch() {
    const res = await poolFetch(`${apiUrl}/v1/messages`, {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
    });
    const text = await res.text();
    return { status: res.status, account: res.poolAccount, retryAfter: res.headers.get("retry-after"), text: text.slice(0, 300) };
  },
  refresh: (email) => refreshAccount(email, store),
  flush: () => flushPool(store),
  status: () => poolStatus(store),
  start(name, ...args) {
    const number = started.length;
    started.push(Promise.resolve().then(() => commands[name](...args)));
    return number;
  },
  join: (number) => started[Number(number)],
};
const started = [];

process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const [name, ...args] = line.trim().split(/\s+/);
  let answer;
  try {
    answer = { ok: true, value: (await commands[name](...args)) ?? null };
  } catch (e) {
    answer = { ok: false, code: e?.code ?? null, message: String(e?.message ?? e) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
