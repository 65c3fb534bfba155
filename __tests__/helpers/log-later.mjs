// A process that sets OAUTH_POOL_LOG only for the second of three requests through the pool
// fetch (argv: pool path, API origin, filter): the variable is read at call time, so only that
// request's lines may reach stderr. Prints the accounts that served, as one JSON line.
import { createPoolFetch } from "../../index.mjs";

const [path, apiUrl, filter] = process.argv.slice(2);
const poolFetch = createPoolFetch({ path });
const accounts = [];
for (const log of [undefined, filter, undefined]) {
  if (log === undefined) delete process.env.OAUTH_POOL_LOG;
  else process.env.OAUTH_POOL_LOG = log;
  const res = await poolFetch(`${apiUrl}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: JSON.stringify({ model: "m", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });
  await res.text();
  accounts.push(res.poolAccount);
}
process.stdout.write(`${JSON.stringify(accounts)}\n`);
