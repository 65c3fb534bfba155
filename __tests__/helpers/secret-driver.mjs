// A separate process that drives the pool against an upstream the parent scripts, with the log
// on (the parent sets OAUTH_POOL_LOG), so the parent can read every line it wrote. Prints one
// JSON line of everything a caller was told: events, answers' statuses and headers (and the
// gateway's bodies), errors, then the pool's status and account list.
//   node secret-driver.mjs fetch <poolPath> <apiUrl> <count> <native|runtime>
//   node secret-driver.mjs gateway <poolPath> <count>
//   node secret-driver.mjs serve <poolPath>    prints {"url"} and serves until stdin ends
import * as lib from "../../index.mjs";

const [mode, path, ...rest] = process.argv.slice(2);
const events = [];
const seen = [];
const init = (headers = {}) => ({
  method: "POST",
  headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", ...headers },
  body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, stream: true, messages: [{ role: "user", content: "hi" }] }),
});
const record = async (res, withBody) => {
  const text = await res.text().catch((e) => `read failed: ${e?.code} ${e?.message}`);
  seen.push({ status: res.status, account: res.poolAccount, headers: [...res.headers], ...(withBody ? { text } : {}) });
};
const failed = (e) => seen.push({ error: { code: e?.code, name: e?.name, message: e?.message, cause: String(e?.cause ?? "") } });

if (mode === "serve") {
  const gw = await lib.serve({ port: 0, path });
  process.stdout.write(`${JSON.stringify({ url: gw.url })}\n`);
  await new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.resume();
  });
  await gw.close(1000);
  process.exit(0);
}
if (mode === "gateway") {
  const gw = await lib.serve({ port: 0, path });
  for (let i = 0; i < Number(rest[0]); i++) {
    await fetch(`${gw.url}/v1/messages`, init({ "x-api-key": process.env.OAUTH_POOL_GATEWAY_KEY })).then((r) => record(r, true), failed);
  }
  await gw.close(1000);
} else {
  const [apiUrl, count, transport] = rest;
  const f = lib.createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
  for (let i = 0; i < Number(count); i++) await f(`${apiUrl}/v1/messages`, init()).then((r) => record(r, false), failed);
}
await lib.flushPool(path);
const status = await lib.poolStatus(path).catch((e) => ({ error: e?.message }));
const accounts = await lib.listAccounts(path).catch((e) => ({ error: e?.message }));
process.stdout.write(`${JSON.stringify({ events, seen, status, accounts })}\n`);
