// Bounded over a long life: a pool process (an OpenCode session, a gateway) lives for days and
// serves hundreds of thousands of requests, and what it keeps, in memory or in the pool file,
// keyed by strings callers and servers choose, must not grow with them. Each test compares a
// later phase with an earlier one, with generous margins. Bounds inside the process are unit
// tests beside the code (src/engine/overlay.rs, bookkeeping.rs, account.rs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { createPoolFetch, flushPool } from "../index.mjs";
import { jsonHeaders, messagesUrl, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();
// As many rests of model families and endpoints per account as are kept (`MAX_SCOPED_COOLDOWNS`).
const SCOPED_KEPT = 16;

/** A model family per number: aaa, aab, ... (a family is a word of letters). */
function family(i) {
  let s = "";
  for (let n = i + 26 * 26; n > 0; n = Math.floor(n / 26)) s = String.fromCharCode(97 + (n % 26)) + s;
  return s;
}

const ask = (f, url, model) =>
  f(url, {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model, max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a client naming a new model family per request, each refused for that model, leaves at most ${SCOPED_KEPT} rests per account`, async () => {
    // A 429 whose overall status is rejected with no window rejected rests the request's model
    // family on the account (until the reset, days here). A client naming a new family per
    // request (claude-aaa-4, claude-aab-4, ...) added a rest per request to the pool file and
    // to the process, each kept until its reset: 2,000 requests, 1,000 rests per account.
    const [first, second] = [`fam1-${transport}@x.test`, `fam2-${transport}@x.test`];
    const path = await seedPool(mock, [first, second]);
    const f = createPoolFetch({ path, transport });
    const reset = String(Math.floor(Date.now() / 1000) + 3 * 86400);
    const refusal = { status: 429, headers: { "anthropic-ratelimit-unified-status": "rejected", "anthropic-ratelimit-unified-reset": reset } };
    let sent = 0;
    const phase = async (until) => {
      for (; sent < until; sent++) {
        mock.scriptAll([refusal]);
        const r = await ask(f, messagesUrl(mock), `claude-${family(sent)}-4`);
        assert.equal(r.status, 200, "the other account serves the family");
        await r.text();
        if (sent % 200 === 0) mock.clearRequests();
      }
      mock.clearRequests();
      await flushPool(path);
      const pool = readPool(path);
      return {
        size: statSync(path).size,
        rests: pool.anthropic.map((a) => Object.keys(a.modelCooldowns ?? {}).length),
        last: pool.anthropic.map((a) => a.modelCooldowns?.[family(sent - 1)]),
      };
    };
    const early = await phase(200);
    const late = await phase(1500);
    for (const { rests } of [early, late]) for (const n of rests) assert.ok(n <= SCOPED_KEPT, `${n} rests on one account`);
    assert.ok(
      late.last.some((t) => t > Date.now()),
      "the family refused last rests",
    );
    // Usage by model is bounded too (64 models a day and a window): the file stops growing.
    assert.ok(late.size < early.size * 1.5 + 8192, `the pool file grew from ${early.size} to ${late.size} bytes`);
  });
}
