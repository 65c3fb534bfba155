#!/usr/bin/env node
// `npm run demo`: the main job, offline. A local mock of Anthropic's endpoints on 127.0.0.1, a
// throwaway pool, two accounts added through the real login flow (authorize -> the "user"
// approves -> exchange), and a streamed request that hits a 429 on the first account and is
// served by the second, without the caller seeing the 429.
import { join } from "node:path";
import { startMockAnthropic, rateLimitHeaders } from "../__tests__/helpers/mock-anthropic.mjs";
import { tempDir } from "../__tests__/helpers/temp.mjs";

const mock = await startMockAnthropic();
process.env.OAUTH_POOL_TOKEN_URL = mock.tokenUrl;
process.env.OAUTH_POOL_API_URL = mock.url;
const path = join(tempDir("oauth-pool-demo-"), "oauth-pool.json");
process.env.OAUTH_POOL_PATH = path;
const pool = await import("../index.mjs");

const say = (s) => console.log(s);
say(`mock Anthropic on ${mock.url}; throwaway pool at ${path}\n`);

for (const email of ["alice@example.com", "bob@example.com"]) {
  const { url, verifier, state } = await pool.authorize({ mode: "max" });
  const pasted = mock.approve(url, email); // what the user would copy from the browser
  const { email: added } = await pool.addAccount(pasted, { verifier, state });
  say(`login: added ${added}`);
}

const poolFetch = pool.createPoolFetch({
  onEvent: (e) => say(`  [pool] ${e.kind}: ${e.message}`),
});

async function ask(label) {
  const res = await poolFetch(`${mock.url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64, stream: true, messages: [{ role: "user", content: "hi" }] }),
  });
  let text = "";
  let chunks = 0;
  const decoder = new TextDecoder();
  for await (const chunk of res.body) {
    chunks++;
    for (const line of decoder.decode(chunk, { stream: true }).split("\n")) {
      if (!line.startsWith("data: ")) continue;
      try {
        const data = JSON.parse(line.slice(6));
        if (data.delta?.type === "text_delta") text += data.delta.text;
      } catch {}
    }
  }
  say(`${label}: HTTP ${res.status}, served by ${res.poolAccount}, ${chunks} chunks streamed: "${text}"`);
}

say("\nrequest 1 (nothing scripted):");
await ask("  answer");
const first = (await pool.listAccounts()).find((a) => a.status === "active" || a.lastUsed)?.email ?? "alice@example.com";
const reset = Math.floor(Date.now() / 1000) + 2 * 3600;
mock.script(first, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 30, fiveHourReset: reset }) }]);
say(`\nrequest 2 (the mock will answer 429 for ${first}: its 5-hour window is spent):`);
await ask("  answer");
say("\nrequest 3:");
await ask("  answer");

await pool.flushPool();
say("\nthe pool file now says:");
for (const a of await pool.listAccounts()) {
  const until = a.rateLimitUntil ? ` until ${new Date(a.rateLimitUntil).toISOString()}` : "";
  say(`  ${a.email.padEnd(20)} ${a.status}${until}  last used ${a.lastUsed ?? "never"}`);
}
const st = mock.stats();
say(
  `\nmock saw ${st.messages} Messages requests (${JSON.stringify(st.messagesByAccount)}), ${st.exchangeCalls} code exchanges, 0 unauthenticated: ${st.unauthenticated === 0}`,
);
await mock.close();
