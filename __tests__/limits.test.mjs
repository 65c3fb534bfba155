// Smarter limits (issue 12): windows read by any name, model-scoped cooldowns, every window's
// threshold, reserves, spread reopenings, holding, no storms, and usage per account.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, watch, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import { statusText } from "../lib/cli/accounts.mjs";
import { rateLimitHeaders, parseSSE } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, account, readPool, messagesUrl, jsonHeaders, withEnv } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const { createPoolFetch, flushPool, poolStatus } = lib;
const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const POLLER = fileURLToPath(new URL("./helpers/pool-poller.mjs", import.meta.url));

const mock = useMock();

const ask = (f, model, extra = {}, init = {}) =>
  f(messagesUrl(mock), {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model, max_tokens: 64, messages: [{ role: "user", content: "hi" }], ...extra }),
    ...init,
  });

test("a 429 of a model's scoped window cools only that model on that account; others keep it serving", async () => {
  const path = await seedPool(mock, ["scope@x.test"]);
  mock.script("scope@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600, rejected: "7d_sonnet" }) }]);
  const f = createPoolFetch({ path });
  const sonnet = await ask(f, "claude-sonnet-4-5");
  assert.equal(sonnet.status, 429, "no other account: the pool's own 429, for sonnet");
  assert.match((await sonnet.json()).error.message, /for sonnet models/);
  const opus = await ask(f, "claude-opus-4-1");
  assert.equal(opus.status, 200, "opus still runs on the same account");
  assert.equal(opus.poolAccount, "scope@x.test");
  await opus.text();
  await flushPool(path);
  const a = account(path, "scope@x.test");
  assert.ok(a.modelCooldowns.sonnet > Date.now() + 3_500_000, JSON.stringify(a.modelCooldowns));
  assert.notEqual(a.status, "rate-limited", "the account is not benched");
  assert.equal(a.rateLimitUntil, null);
  // Another process honours it: sonnet is answered by the pool, nothing goes upstream.
  mock.clearRequests();
  const other = await runPoller(path, "claude-sonnet-4-5", { once: true });
  assert.equal(other.status, 429);
  assert.equal(mock.requests.length, 0);
  const status = await poolStatus(path);
  const s = status.accounts[0];
  assert.ok(s.modelCooldowns.sonnet > Date.now());
  assert.ok(
    s.windows.some((w) => w.name === "7d_sonnet" && w.utilization === 1),
    JSON.stringify(s.windows),
  );
});

for (const transport of ["native", "runtime"]) {
  test(`a throttle of token counting, message batches or the Files API (limits of their own) moves that request on and rests only that: messages stay on the account (${transport})`, async () => {
    const [first, second] = [`ct1-${transport}@x.test`, `ct2-${transport}@x.test`];
    const path = await seedPool(mock, [first, second]);
    const f = createPoolFetch({ path, transport });
    const warm = await ask(f, "claude-sonnet-4-5");
    assert.equal(warm.poolAccount, first);
    await warm.text();
    mock.script(first, [
      // A throttle: no window is exhausted (one that were would be the account's).
      { path: "/v1/messages/count_tokens", status: 429, headers: { "retry-after": "600" } },
      { path: "/v1/messages/batches", status: 429, headers: { "retry-after": "600" } },
      { path: "/v1/files", status: 429, headers: { "retry-after": "600" } },
    ]);
    mock.clearRequests();
    const count = await f(`${mock.url}/v1/messages/count_tokens`, {
      method: "POST",
      headers: jsonHeaders,
      body: JSON.stringify({ model: "claude-sonnet-4-5", messages: [{ role: "user", content: "hi" }] }),
    });
    assert.equal(count.status, 200, "moved to the next account");
    assert.equal(count.poolAccount, second);
    assert.ok((await count.json()).input_tokens > 0);
    const batch = await f(`${mock.url}/v1/messages/batches`, { method: "POST", headers: jsonHeaders, body: JSON.stringify({ requests: [] }) });
    assert.equal(batch.status, 200);
    assert.equal(batch.poolAccount, second);
    await batch.text();
    const upload = await f(`${mock.url}/v1/files`, { method: "POST", headers: jsonHeaders, body: "file bytes" });
    assert.equal(upload.status, 200);
    assert.equal(upload.poolAccount, second);
    await upload.text();
    // The messages stay where they were (its prompt cache): neither the throttle nor the
    // other account's answer moved them.
    const next = await ask(f, "claude-sonnet-4-5");
    assert.equal(next.status, 200);
    assert.equal(next.poolAccount, first, "the account serves messages on");
    await next.text();
    assert.deepEqual(
      mock.requests.map((r) => [r.path, r.email, r.status]),
      [
        ["/v1/messages/count_tokens", first, 429],
        ["/v1/messages/count_tokens", second, 200],
        ["/v1/messages/batches", first, 429],
        ["/v1/messages/batches", second, 200],
        ["/v1/files", first, 429],
        ["/v1/files", second, 200],
        ["/v1/messages", first, 200],
      ],
    );
    await flushPool(path);
    const a = account(path, first);
    assert.equal(a.rateLimitUntil ?? null, null, "not benched");
    assert.notEqual(a.status, "rate-limited");
    assert.ok(a.modelCooldowns.count_tokens > Date.now() + 500_000, JSON.stringify(a.modelCooldowns));
    assert.ok(a.modelCooldowns.message_batches > Date.now() + 500_000, JSON.stringify(a.modelCooldowns));
    assert.ok(a.modelCooldowns.files_api > Date.now() + 500_000, JSON.stringify(a.modelCooldowns));
    // Token counting on the first account rests (another process too): it goes to the second
    // without asking the first.
    mock.clearRequests();
    const again = await createPoolFetch({ path, transport })(`${mock.url}/v1/messages/count_tokens`, {
      method: "POST",
      headers: jsonHeaders,
      body: JSON.stringify({ model: "claude-opus-4-1", messages: [] }),
    });
    assert.equal(again.poolAccount, second);
    await again.text();
    assert.deepEqual(
      mock.requests.map((r) => [r.path, r.email]),
      [["/v1/messages/count_tokens", second]],
    );
    const s = (await poolStatus(path)).accounts.find((x) => x.email === first);
    assert.ok(s.modelCooldowns.count_tokens > Date.now(), JSON.stringify(s));
    assert.equal(s.rateLimitUntil, null);
    // Said for a person as what it is, not as a model family.
    const shown = await runCli(["status", "--path", path]);
    assert.match(shown.out, /cooling +token counting until .*; messages serve/, shown.out + shown.err);
    assert.match(shown.out, /cooling +message batches until/);
    assert.match(shown.out, /cooling +files until/);
  });
}

// A limit met after the 200's head went out is said in the stream: an `error` event of type
// `rate_limit_error` (Anthropic's streaming errors; peers' users: streaming rate limits never
// reach failover). OpenCode retries such an error; the retry went back to the same account,
// which nothing had rested, into the same limit.
for (const transport of ["native", "runtime"]) {
  for (const usage of ["on", "off"]) {
    test(`a rate_limit_error inside a 200 stream rests the account like a bare 429: the retry goes to the next account, and the next answer says so (${transport}, usage counting ${usage})`, async () => {
      const [first, second] = [`sl1-${transport}-${usage}@x.test`, `sl2-${transport}-${usage}@x.test`];
      const path = await seedPool(mock, [first, second]);
      const pool = readPool(path);
      pool.anthropic[0].priority = 9;
      await lib.savePool(pool, path);
      await withEnv({ OAUTH_POOL_USAGE: usage }, async () => {
        const events = [];
        const f = createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
        mock.script(first, [
          { sse: true, errorAfterDeltas: 0, errorType: "rate_limit_error", errorMessage: "Number of request tokens has exceeded your per-minute rate limit" },
        ]);
        const res = await ask(f, "claude-sonnet-4-5", { stream: true });
        assert.equal(res.status, 200);
        assert.equal(res.poolAccount, first);
        const streamed = parseSSE(await res.text());
        assert.equal(streamed.at(-1).event, "error", "the caller sees the error as it came");
        // OpenCode's retry of it:
        const retry = await ask(f, "claude-sonnet-4-5", { stream: true });
        assert.equal(retry.poolAccount, second, "not back into the same limit");
        await retry.text();
        assert.ok(
          events.some((e) => e.kind === "rate-limited" && e.email === first && e.until > Date.now()),
          `the rest is told: ${JSON.stringify(events)}`,
        );
        await flushPool(path);
        assert.ok(account(path, first).rateLimitUntil > Date.now() - 1000, "shared through the pool file");
        // An overloaded_error is Anthropic's, not the account's: nobody rests for it.
        mock.script(second, [{ sse: true, errorAfterDeltas: 1, errorType: "overloaded_error" }]);
        await (await ask(f, "claude-sonnet-4-5", { stream: true })).text();
        const after = await ask(f, "claude-sonnet-4-5", { stream: true });
        await after.text();
        assert.equal(after.poolAccount, second, "an overloaded stream benches nobody");
      });
    });
  }
}

test("token counting refused for a model's exhausted weekly window rests that model on the account, not token counting; a model that rests is not counted there either", async () => {
  const email = "ct-scope@x.test";
  const path = await seedPool(mock, [email]);
  const count = (f, model) =>
    f(`${mock.url}/v1/messages/count_tokens`, {
      method: "POST",
      headers: jsonHeaders,
      body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }] }),
    });
  mock.script(email, [{ path: "/v1/messages/count_tokens", status: 429, headers: rateLimitHeaders({ retryAfter: 3600, rejected: "7d_sonnet" }) }]);
  const f = createPoolFetch({ path });
  const refused = await count(f, "claude-sonnet-4-5");
  assert.equal(refused.status, 429);
  await refused.text();
  // Before, the week rested token counting on the account, for every model.
  const opus = await count(f, "claude-opus-4-1");
  assert.equal(opus.status, 200, "token counting for another model is served");
  await opus.text();
  await flushPool(path);
  const a = account(path, email);
  assert.ok(a.modelCooldowns.sonnet > Date.now() + 3_500_000, JSON.stringify(a.modelCooldowns));
  assert.equal(a.modelCooldowns.count_tokens, undefined, JSON.stringify(a.modelCooldowns));
  // Sonnet rests: neither its messages nor its token counting go to the account.
  mock.clearRequests();
  const again = await count(f, "claude-sonnet-4-5");
  assert.equal(again.status, 429);
  assert.match((await again.json()).error.message, /for sonnet models/);
  assert.deepEqual(mock.requests, [], "nothing sent upstream");
  // A throttle of token counting itself: said as that.
  mock.script(email, [{ path: "/v1/messages/count_tokens", status: 429, headers: { "retry-after": "600" } }]);
  await (await count(f, "claude-opus-4-1")).text();
  const throttled = await count(f, "claude-opus-4-1");
  assert.equal(throttled.status, 429);
  assert.match((await throttled.json()).error.message, /rate-limited for token counting;/);
});

test("a 429 rejecting a scoped window of a name that is no model family rests the requested model there, not nothing", async () => {
  // Window names are read generically: `7d_oauth_apps` (the usage endpoint has seven_day_oauth_apps)
  // or any new one. The request that was refused is what must not be sent there again.
  const path = await seedPool(mock, ["apps@x.test"]);
  mock.script("apps@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600, rejected: "7d_oauth_apps" }) }]);
  const f = createPoolFetch({ path });
  mock.clearRequests();
  const first = await ask(f, "claude-sonnet-4-5");
  assert.equal(first.status, 429, "the only account was refused: the pool's own 429, not POOL_NO_ACCOUNT");
  await first.text();
  assert.ok(Number(first.headers.get("retry-after")) >= 3500, first.headers.get("retry-after"));
  const second = await ask(f, "claude-sonnet-4-5");
  assert.equal(second.status, 429);
  await second.text();
  assert.equal(mock.requests.length, 1, "the refused model is not offered there again");
  const opus = await ask(f, "claude-opus-4-1");
  assert.equal(opus.status, 200, "other models keep the account");
  await opus.text();
  await flushPool(path);
  assert.ok(account(path, "apps@x.test").modelCooldowns.sonnet > Date.now() + 3_000_000);
  await lib.resetCooldowns(path);
});

test("a throttle of a sonnet request while the account's opus week is spent rests for the throttle, not for opus's week", async () => {
  // An answer carries every window of the account: the opus window's `rejected` comes with a
  // sonnet request's 10 s throttle too. Taken for its reason, sonnet rested there 3 days.
  const email = "opus-spent@x.test";
  const path = await seedPool(mock, [email]);
  const p = "anthropic-ratelimit-unified";
  const opusReset = String(Math.floor(Date.now() / 1000) + 3 * 86400);
  mock.script(email, [
    {
      status: 429,
      headers: {
        "retry-after": "2",
        [`${p}-7d_opus-status`]: "rejected",
        [`${p}-7d_opus-utilization`]: "1.0",
        [`${p}-7d_opus-reset`]: opusReset,
        [`${p}-5h-status`]: "allowed",
      },
    },
  ]);
  const res = await ask(createPoolFetch({ path }), "claude-sonnet-4-5");
  assert.equal(res.status, 429, "the only account: the pool's own 429");
  await res.text();
  // The throttle's 2 s plus at most the reopening spread (10 s by default).
  assert.ok(Number(res.headers.get("retry-after")) <= 60, `retry-after ${res.headers.get("retry-after")}`);
  await flushPool(path);
  const a = account(path, email);
  assert.equal(a.modelCooldowns?.sonnet, undefined, JSON.stringify(a.modelCooldowns));
  assert.ok(a.rateLimitUntil > Date.now() && a.rateLimitUntil < Date.now() + 60_000, `${a.rateLimitUntil - Date.now()} ms`);
  const st = await poolStatus(path);
  assert.deepEqual(st.accounts[0].modelCooldowns, {});
  await lib.resetCooldowns(path);
});

for (const transport of ["native", "runtime"]) {
  test(`a throttle beside a window that says allowed at 100 %, or beside an overall rejection whose reset is another model's window, rests for the throttle (${transport})`, async () => {
    // The window's own "allowed" lost to its use (1.0: reached, or drawing on extra usage),
    // and the account rested until the 5-hour reset; the overall "rejected" with no claim,
    // its reset opus's, rested sonnet until opus's weekly reset.
    const p = "anthropic-ratelimit-unified";
    const inHours = (h) => String(Math.floor(Date.now() / 1000) + h * 3600);
    const answers = {
      "allowed at 100 %": {
        [`${p}-5h-status`]: "allowed",
        [`${p}-5h-utilization`]: "1.0",
        [`${p}-5h-reset`]: inHours(4),
        [`${p}-overage-in-use`]: "true",
      },
      "no claim, opus's reset": {
        [`${p}-status`]: "rejected",
        [`${p}-reset`]: inHours(72),
        [`${p}-7d_opus-status`]: "rejected",
        [`${p}-7d_opus-reset`]: inHours(72),
        [`${p}-5h-status`]: "allowed",
      },
    };
    for (const [what, headers] of Object.entries(answers)) {
      const email = `soft-${what.replace(/[^a-z]+/g, "-")}-${transport}@x.test`;
      const path = await seedPool(mock, [email]);
      mock.script(email, [{ status: 429, headers: { "retry-after": "2", ...headers } }]);
      const res = await ask(createPoolFetch({ path, transport }), "claude-sonnet-4-5");
      assert.equal(res.status, 429, what);
      await res.text();
      await flushPool(path);
      const a = account(path, email);
      assert.equal(a.modelCooldowns?.sonnet, undefined, `${what}: ${JSON.stringify(a.modelCooldowns)}`);
      assert.ok(a.rateLimitUntil > Date.now() && a.rateLimitUntil < Date.now() + 60_000, `${what}: rests ${a.rateLimitUntil - Date.now()} ms`);
      await lib.resetCooldowns(path);
    }
  });
}

test("a 429 whose overall rejection is claimed by the 5-hour window (no window's own status) rests the whole account, not only the model asked for", async () => {
  const email = "claim@x.test";
  const path = await seedPool(mock, [email]);
  const p = "anthropic-ratelimit-unified";
  mock.script(email, [
    {
      status: 429,
      headers: {
        [`${p}-status`]: "rejected",
        [`${p}-reset`]: String(Math.floor(Date.now() / 1000) + 3600),
        [`${p}-representative-claim`]: "five_hour",
      },
    },
  ]);
  const f = createPoolFetch({ path });
  const sonnet = await ask(f, "claude-sonnet-4-5");
  assert.equal(sonnet.status, 429);
  await sonnet.text();
  mock.clearRequests();
  // Every model is out until the 5-hour window resets: opus is not sent there to be refused.
  const opus = await ask(f, "claude-opus-4-1");
  assert.equal(opus.status, 429, "the pool's own 429");
  await opus.text();
  assert.equal(mock.requests.length, 0, "nothing sent upstream");
  assert.ok(Number(opus.headers.get("retry-after")) >= 3500, opus.headers.get("retry-after"));
  await flushPool(path);
  assert.ok(account(path, email).rateLimitUntil > Date.now() + 3_500_000);
  await lib.resetCooldowns(path);
});

for (const transport of ["native", "runtime"]) {
  test(`a retry-after said twice with values that disagree (a proxy adding its own) rests the longer, on either transport (${transport})`, async () => {
    // Node's fetch joins them ("30, 600"): read as garbage, the account rested 5 s; the other
    // transport took the first, 30 s.
    const email = `twice-${transport}@x.test`;
    const path = await seedPool(mock, [email]);
    mock.script(email, [{ status: 429, headers: { "retry-after": ["30", "600"] } }]);
    const res = await ask(createPoolFetch({ path, transport }), "claude-sonnet-4-5");
    assert.equal(res.status, 429);
    await res.text();
    await flushPool(path);
    const left = account(path, email).rateLimitUntil - Date.now();
    assert.ok(left > 590_000 && left <= 600_000, `rests ${left} ms`);
    await lib.resetCooldowns(path);
  });
}

for (const transport of ["native", "runtime"]) {
  test(`a representative claim said twice (a proxy duplicating headers) reads the same on either transport: the account-wide one rests the account (${transport})`, async () => {
    // Node's fetch joined them ("five_hour, seven_day_opus": no claim, so a sonnet request
    // rested sonnet alone); the other transport kept the last (opus's: a 5 s throttle).
    const email = `claim-twice-${transport}@x.test`;
    const path = await seedPool(mock, [email]);
    const p = "anthropic-ratelimit-unified";
    const headers = {
      [`${p}-status`]: "rejected",
      [`${p}-reset`]: String(Math.floor(Date.now() / 1000) + 3600),
      [`${p}-representative-claim`]: ["five_hour", "seven_day_opus"],
    };
    mock.script(email, [{ status: 429, headers }]);
    const f = createPoolFetch({ path, transport });
    const res = await ask(f, "claude-sonnet-4-5");
    assert.equal(res.status, 429);
    await res.text();
    await flushPool(path);
    const a = account(path, email);
    assert.ok(a.rateLimitUntil > Date.now() + 3_500_000, `the whole account rests for the hour: ${JSON.stringify(a)}`);
    mock.clearRequests();
    const opus = await ask(f, "claude-opus-4-1");
    assert.equal(opus.status, 429, "every model: the pool's own 429");
    await opus.text();
    assert.equal(mock.requests.length, 0, "nothing sent upstream");
    await lib.resetCooldowns(path);
  });
}

test("a window's use said as an absurd number is not kept: status shows no Infinity%", async () => {
  const email = "absurd-use@x.test";
  const path = await seedPool(mock, [email]);
  mock.script(email, [{ status: 200, headers: { "anthropic-ratelimit-unified-5h-utilization": "1e308" } }]);
  const res = await ask(createPoolFetch({ path }), "claude-sonnet-4-5");
  assert.equal(res.status, 200);
  await res.text();
  await flushPool(path);
  const st = await poolStatus(path);
  const w = st.accounts[0].windows.find((x) => x.name === "5h");
  assert.equal(w.utilization, null, JSON.stringify(w));
  const shown = statusText(st, Date.now(), null);
  assert.doesNotMatch(shown, /Infinity|NaN|e\+/, shown);
  assert.match(shown, /5h \[-+\] \?/, shown);
});

for (const transport of ["native", "runtime"]) {
  test(`a machine clock an hour off (WSL after sleep): a window's cooldown still ends at its reset, read by the answer's Date; a Date a month off is ignored (${transport})`, async () => {
    for (const [label, offsetSec, heeded] of [
      ["slow", 3600, true],
      ["fast", -3600, true],
      // Further off than any window (8 days): no clock is that wrong; the answer's Date is.
      ["a month behind", -30 * 86_400, false],
      ["a month ahead", 30 * 86_400, false],
    ]) {
      const email = `clock-${label.replace(/ /g, "-")}-${transport}@x.test`;
      const path = await seedPool(mock, [email]);
      const serverNow = Math.floor(Date.now() / 1000) + offsetSec;
      const resetOn = heeded ? serverNow : Math.floor(Date.now() / 1000);
      const headers = {
        ...rateLimitHeaders({ fiveHourReset: resetOn + 600 }),
        date: new Date(serverNow * 1000).toUTCString(),
      };
      mock.script(email, [{ status: 429, headers }]);
      const res = await ask(createPoolFetch({ path, transport }), "claude-sonnet-4-5");
      assert.equal(res.status, 429, "the only account is exhausted: the pool's own 429");
      await res.text();
      const retryAfter = Number(res.headers.get("retry-after"));
      assert.ok(retryAfter >= 590 && retryAfter <= 610, `${label}: retry-after ${retryAfter}, the reset is 10 minutes away`);
      await flushPool(path);
      const left = account(path, email).rateLimitUntil - Date.now();
      // Unread, a slow clock benched the account 70 minutes and a fast one 5 seconds.
      assert.ok(left > 590_000 && left < 610_000, `${label}: rests ${left} ms, the reset is 10 minutes away`);
    }
  });
}

test("a Console key's monthly spend limit (429 enforced_spend_limit_reached) rests the key until the month turns, not seconds", async () => {
  const key = `fake-console-key-spend-${Date.now()}`;
  const keyed = "spend-key@x.test";
  mock.addApiKey(key, keyed);
  const path = await seedPool(mock, ["spend-backup@x.test"]);
  const pool = readPool(path);
  pool.anthropic.unshift({ email: keyed, type: "api", key, priority: 5, status: "idle", rateLimitUntil: null });
  await lib.savePool(pool, path);
  const body = {
    type: "error",
    error: { type: "rate_limit_error", message: "You have reached your specified API usage limits.", details: { error_code: "enforced_spend_limit_reached" } },
  };
  mock.script(keyed, [{ status: 429, headers: { "retry-after": "5" }, body }]);
  const f = createPoolFetch({ path });
  const first = await ask(f, "claude-sonnet-4-5");
  assert.equal(first.status, 200, "the same request moved to the other account");
  assert.equal(first.poolAccount, "spend-backup@x.test");
  await first.text();
  await flushPool(path);
  const a = account(path, keyed);
  const nextMonth = (() => {
    const d = new Date();
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  })();
  // A throttle's 5 s would offer the key again and again for the rest of the month.
  assert.equal(a.status, "rate-limited");
  assert.equal(a.rateLimitUntil, Math.min(nextMonth, a.rateLimitUntil), "no later than the month's turn");
  assert.ok(a.rateLimitUntil >= Math.min(nextMonth, Date.now() + 8 * 86_400_000) - 60_000, `${a.rateLimitUntil}`);
  const status = await poolStatus(path);
  const shown = status.accounts.find((x) => x.email === keyed);
  assert.match(JSON.stringify(shown), /spend limit/);
  mock.clearRequests();
  const second = await ask(f, "claude-sonnet-4-5");
  assert.equal(second.poolAccount, "spend-backup@x.test");
  await second.text();
  assert.equal(mock.requests.length, 1, "the key was not offered again");
});

test("a 401 for an API-key member: refused at once (nothing to refresh), marked auth-error, the request moves on", async () => {
  const key = `fake-console-key-401-${Date.now()}`;
  const keyed = "key401@x.test";
  mock.addApiKey(key, keyed);
  const path = await seedPool(mock, ["key401-backup@x.test"]);
  const pool = readPool(path);
  pool.anthropic.unshift({ email: keyed, type: "api", key, priority: 5, status: "idle", rateLimitUntil: null });
  await lib.savePool(pool, path);
  mock.script(keyed, [{ status: 401 }]);
  const refreshesBefore = mock.stats().refreshCalls;
  const events = [];
  const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  mock.clearRequests();
  const first = await ask(f, "claude-sonnet-4-5");
  assert.equal(first.status, 200);
  assert.equal(first.poolAccount, "key401-backup@x.test");
  await first.text();
  // Said as what mends it: a working key under its name, not a login (which cannot mend a key).
  const refused = events.find((e) => e.kind === "auth-error");
  assert.equal(refused?.apiKey, true, JSON.stringify(events));
  assert.doesNotMatch(refused.message, /login/);
  assert.match(refused.message, /oauth-pool add-key --email/);
  assert.equal(mock.requests.filter((r) => r.email === keyed).length, 1, "no retry of the key");
  assert.equal(mock.stats().refreshCalls, refreshesBefore, "no token refresh for a key");
  const second = await ask(f, "claude-sonnet-4-5");
  assert.equal(second.poolAccount, "key401-backup@x.test");
  await second.text();
  assert.equal(mock.requests.filter((r) => r.email === keyed).length, 1, "the refused key is not offered again");
  await flushPool(path);
  const a = account(path, keyed);
  assert.equal(a.status, "auth-error");
  assert.equal(a.key, key, "the key is kept");
});

test("every window counts for the soft threshold: a 7d past it moves a sticky session", async () => {
  const path = await seedPool(mock, ["seven1@x.test", "seven2@x.test"]);
  await lib.setPriority("seven1@x.test", 5, path);
  const f = createPoolFetch({ path });
  const session = { ...jsonHeaders, "x-session-affinity": "ses_7d" };
  const first = await ask(f, "claude-sonnet-4-5", {}, { headers: session });
  assert.equal(first.poolAccount, "seven1@x.test");
  await first.text();
  mock.setUtilization("seven1@x.test", { fiveHour: 0.1, sevenDay: 0.95 });
  await (await ask(f, "claude-sonnet-4-5", {}, { headers: session })).text(); // learns the 7d
  const moved = await ask(f, "claude-sonnet-4-5", {}, { headers: session });
  assert.equal(moved.poolAccount, "seven2@x.test", "past 90 % of its 7d window, the session moves");
  await moved.text();
});

test("OAUTH_POOL_SOFT_THRESHOLD moves the line a sticky account yields at, read at call time", async () => {
  const path = await seedPool(mock, ["soft1@x.test", "soft2@x.test"]);
  await lib.setPriority("soft1@x.test", 5, path);
  mock.setUtilization("soft1@x.test", { fiveHour: 0.6 });
  const f = createPoolFetch({ path });
  for (let i = 0; i < 2; i++) {
    const r = await ask(f, "claude-sonnet-4-5");
    assert.equal(r.poolAccount, "soft1@x.test", "60 % is below the default 90 %");
    await r.text();
  }
  await withEnv({ OAUTH_POOL_SOFT_THRESHOLD: "0.5" }, async () => {
    const r = await ask(f, "claude-sonnet-4-5");
    assert.equal(r.poolAccount, "soft2@x.test", "past 50 %, the sticky account yields");
    await r.text();
  });
});

test("a model's scoped window counts only for that model's requests", async () => {
  const path = await seedPool(mock, ["sw1@x.test", "sw2@x.test"]);
  await lib.setPriority("sw1@x.test", 5, path);
  mock.setUtilization("sw1@x.test", { scoped: { "7d_opus": 0.97 } });
  const f = createPoolFetch({ path });
  const pinned = { ...jsonHeaders, "x-session-affinity": "ses_scoped" };
  const first = await ask(f, "claude-sonnet-4-5", {}, { headers: pinned });
  assert.equal(first.poolAccount, "sw1@x.test");
  await first.text();
  const sonnet = await ask(f, "claude-sonnet-4-5", {}, { headers: pinned });
  assert.equal(sonnet.poolAccount, "sw1@x.test", "the opus window does not limit sonnet");
  await sonnet.text();
  const opus = await ask(f, "claude-opus-4-1", {}, { headers: pinned });
  assert.equal(opus.poolAccount, "sw2@x.test", "past 90 % of its opus window, sw1 yields for opus");
  await opus.text();
});

test("a scoped window whose name is no model family (7d_oauth_apps) limits every request for the soft threshold and a reserve, as for the 429 policy; 7d_opus_4 is opus's", async () => {
  const pair = async (tag) => {
    const emails = [`${tag}1@x.test`, `${tag}2@x.test`];
    const path = await seedPool(mock, emails);
    await lib.setPriority(emails[0], 5, path);
    const f = createPoolFetch({ path });
    const session = { ...jsonHeaders, "x-session-affinity": `ses_${tag}` };
    const on = async (model) => {
      const r = await ask(f, model, {}, { headers: session });
      assert.equal(r.status, 200);
      await r.text();
      return r.poolAccount;
    };
    return { emails, path, on };
  };
  // A model's window with a version in its name is that model's.
  {
    const { emails, on } = await pair("nfo");
    mock.setUtilization(emails[0], { scoped: { "7d_opus_4": 0.97 } });
    assert.equal(await on("claude-sonnet-4-5"), emails[0]); // learns the window
    assert.equal(await on("claude-sonnet-4-5"), emails[0], "opus's window does not limit sonnet");
    assert.equal(await on("claude-opus-4-1"), emails[1], "past 90 % of 7d_opus_4, it yields for opus");
  }
  // A window the pool cannot tie to a model family: past the soft threshold, every request moves.
  {
    const { emails, on } = await pair("nfa");
    mock.setUtilization(emails[0], { scoped: { "7d_oauth_apps": 0.97 } });
    assert.equal(await on("claude-sonnet-4-5"), emails[0]); // learns the window
    assert.equal(await on("claude-sonnet-4-5"), emails[1], "past 90 % of 7d_oauth_apps, sonnet moves too");
  }
  // A reserve's line in it holds the account back for any model.
  {
    const { emails, path, on } = await pair("nfr");
    const set = await runCli(["reserve", emails[0], "0.2", "--path", path]);
    assert.equal(set.code, 0, set.err);
    mock.setUtilization(emails[0], { scoped: { "7d_oauth_apps": 0.85 } });
    assert.equal(await on("claude-sonnet-4-5"), emails[0], "not known to be past the line yet");
    for (const model of ["claude-sonnet-4-5", "claude-haiku-4-5"]) {
      assert.equal(await on(model), emails[1], `85 % of 7d_oauth_apps is past the 80 % line for ${model}`);
    }
  }
});

test("a reserve stops use at its line (set with the CLI); reserved accounts count as cooling", async () => {
  const path = await seedPool(mock, ["res1@x.test", "res2@x.test"]);
  await lib.setPriority("res1@x.test", 5, path);
  const set = await runCli(["reserve", "res1@x.test", "0.2", "--path", path]);
  assert.equal(set.code, 0, set.err);
  assert.equal(account(path, "res1@x.test").reserve, 0.2);
  const reset = Math.floor(Date.now() / 1000) + 1800;
  mock.setUtilization("res1@x.test", { fiveHour: 0.85, fiveHourReset: reset });
  const f = createPoolFetch({ path });
  const first = await ask(f, "claude-sonnet-4-5");
  assert.equal(first.poolAccount, "res1@x.test", "not known to be past the line yet");
  await first.text();
  const second = await ask(f, "claude-sonnet-4-5");
  assert.equal(second.poolAccount, "res2@x.test", "85 % is past the 80 % line");
  await second.text();
  mock.script("res2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 7200 }) }]);
  const all = await ask(f, "claude-sonnet-4-5");
  assert.equal(all.status, 429);
  const wait = Number(all.headers.get("retry-after"));
  assert.ok(wait >= 1790 && wait <= 1800 + 11, `the reserved account is back when its window resets (${wait} s)`);
  const cli = await runCli(["status", "--path", path]);
  assert.match(cli.out, /reserve\s+20% of every window kept for its owner/);
  assert.match(cli.out, /5h \[#########-\] 85%/);
  assert.equal((await runCli(["reserve", "res1@x.test", "1.5", "--path", path])).code, 2);
});

test("a reserve's line holds at its percent: 0.7 stops use at 30 %, not past it (1 - 0.7 is 0.30000000000000004 in floating point)", async () => {
  const email = "res70@x.test";
  const path = await seedPool(mock, [email]);
  const pool = readPool(path);
  const now = Date.now();
  const reset = now + 1_800_000;
  Object.assign(pool.anthropic[0], {
    reserve: 0.7,
    limits: { updatedAt: now, windows: { "5h": { updatedAt: now, status: "allowed", reset, utilization: 0.3 } } },
  });
  await lib.savePool(pool, path);
  mock.clearRequests();
  const res = await ask(createPoolFetch({ path }), "claude-sonnet-4-5");
  assert.equal(res.status, 429, "the only account is held back at its line");
  await res.text();
  assert.equal(mock.requests.filter((r) => r.path.startsWith("/v1/messages")).length, 0, "nothing was sent upstream");
  const wait = Number(res.headers.get("retry-after"));
  assert.ok(wait >= 1790 && wait <= 1800 + 11, `until the window resets (${wait} s)`);
});

test("a window's reset said as a date with an offset (+02:00) is that instant: a rejected window rests until it, not 5 s", async () => {
  const [a, b] = ["offset1@x.test", "offset2@x.test"];
  const path = await seedPool(mock, [a, b]);
  await lib.setPriority(a, 5, path);
  const reset = Math.floor(Date.now() / 1000) * 1000 + 3 * 3_600_000;
  // The same instant two hours east of UTC: "...T14:00:00+02:00" is 12:00 UTC.
  const east = new Date(reset + 2 * 3_600_000).toISOString().replace(/\.\d+Z$/, "+02:00");
  const p = "anthropic-ratelimit-unified";
  mock.script(a, [{ status: 429, headers: { [`${p}-status`]: "rejected", [`${p}-5h-status`]: "rejected", [`${p}-5h-reset`]: east } }]);
  const res = await ask(createPoolFetch({ path }), "claude-sonnet-4-5");
  assert.equal(res.poolAccount, b, "the request moved on");
  await res.text();
  await flushPool(path);
  assert.equal(account(path, a).rateLimitUntil, reset, `rests until ${east}`);
});

test("a window whose reset has passed has started over: status reads it 0 % with no reset, and a reserve past its line in it no longer holds the account", async () => {
  const email = "rolled@x.test";
  const path = await seedPool(mock, [email]);
  const pool = readPool(path);
  const now = Date.now();
  const heard = now - 3_600_000;
  Object.assign(pool.anthropic[0], {
    reserve: 0.2,
    limits: {
      updatedAt: heard,
      windows: {
        "5h": { updatedAt: heard, status: "allowed", reset: now - 60_000, utilization: 0.95 },
        "7d": { updatedAt: heard, status: "allowed", reset: now + 86_400_000, utilization: 0.5 },
      },
    },
  });
  await lib.savePool(pool, path);
  const windows = Object.fromEntries((await poolStatus(path)).accounts[0].windows.map((w) => [w.name, w]));
  assert.equal(windows["5h"].utilization, 0, JSON.stringify(windows));
  assert.equal(windows["5h"].resetsAt, null);
  assert.equal(windows["7d"].utilization, 0.5);
  const cli = await runCli(["status", "--path", path]);
  assert.match(cli.out, /5h \[-{10}\] 0%\n/, cli.out);
  assert.match(cli.out, /7d \[#####-----\] 50% resets in/);
  // 95 % was past the 80 % line, in a window that has reset since: the account serves.
  mock.clearRequests();
  const res = await ask(createPoolFetch({ path }), "claude-sonnet-4-5");
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, email);
  await res.text();
});

test("20 processes waiting on one cooldown reopen spread over the jitter, none before it ends", async () => {
  const path = await seedPool(mock, ["herd@x.test"]);
  const until = Date.now() + 2000;
  const pool = readPool(path);
  pool.anthropic[0].rateLimitUntil = until;
  pool.anthropic[0].status = "rate-limited";
  await lib.savePool(pool, path);
  mock.clearRequests();
  const results = await Promise.all(Array.from({ length: 20 }, () => runPoller(path, "claude-sonnet-4-5", { jitterMs: 3000, deadlineMs: 12_000 })));
  const firsts = results.map((r) => {
    assert.equal(r.status, 200, JSON.stringify(r));
    return r.firstOkAt;
  });
  const arrivals = mock.requests.filter((r) => r.email === "herd@x.test").map((r) => r.at);
  assert.ok(
    arrivals.every((t) => t >= until),
    "nothing was sent before the cooldown ended",
  );
  const spread = Math.max(...firsts) - Math.min(...firsts);
  assert.ok(spread >= 1000, `reopenings spread over ${spread} ms, not all at once`);
  assert.ok(Math.max(...firsts) <= until + 3000 + 1500, "within the jitter (plus polling)");
});

// The spread is each process's own, keyed by the cooldown's end: a process that wrote the file
// as the cooldown ended and cleared it there would open the account at once for every other
// process still inside its share of the spread, all in the same moment.
test("a cooldown that has passed stays in the pool file until the reopening spread is over, then goes", async () => {
  const [cooled, other] = ["spread1@x.test", "spread2@x.test"];
  const path = await seedPool(mock, [cooled, other]);
  const pool = readPool(path);
  const until = Date.now() - 1500;
  Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: until });
  pool.anthropic[1].priority = 5;
  await lib.savePool(pool, path);
  await withEnv({ OAUTH_POOL_JITTER_MS: "10000" }, async () => {
    const f = createPoolFetch({ path });
    const res = await ask(f, "claude-sonnet-4-5");
    assert.equal(res.poolAccount, other);
    await res.text();
    await flushPool(path);
    const kept = account(path, cooled);
    assert.equal(kept.rateLimitUntil, until, "passed 1.5 s ago, inside the 10 s spread: kept for the other processes");
    assert.equal(kept.status, "rate-limited");
    // Past the spread, the next write clears it.
    const later = readPool(path);
    later.anthropic.find((a) => a.email === cooled).rateLimitUntil = Date.now() - 11_000;
    await lib.savePool(later, path);
    const again = await ask(f, "claude-sonnet-4-5");
    await again.text();
    await flushPool(path);
    const cleared = account(path, cooled);
    assert.equal(cleared.rateLimitUntil ?? null, null);
    assert.equal(cleared.status, "idle");
  });
});

test("holding (opt-in) waits for the soonest account instead of answering 429; an abort ends the hold at once", async () => {
  const path = await seedPool(mock, ["hold@x.test"]);
  await withEnv({ OAUTH_POOL_HOLD_MAX_MS: "5000", OAUTH_POOL_JITTER_MS: "0" }, async () => {
    mock.script("hold@x.test", [{ status: 429, headers: { "retry-after": "1" } }]);
    const f = createPoolFetch({ path });
    mock.clearRequests();
    const started = Date.now();
    const res = await ask(f, "claude-sonnet-4-5");
    assert.equal(res.status, 200, "served after the hold");
    await res.text();
    assert.ok(Date.now() - started >= 900, `held ${Date.now() - started} ms`);
    assert.deepEqual(
      mock.requests.map((r) => r.status),
      [429, 200],
      "nothing upstream while holding",
    );
    mock.script("hold@x.test", [{ status: 429, headers: { "retry-after": "3" } }]);
    await (await ask(f, "claude-sonnet-4-5")).text().catch(() => {});
    const ac = new AbortController();
    const pending = ask(f, "claude-sonnet-4-5", {}, { signal: ac.signal });
    await new Promise((r) => setImmediate(r));
    const t0 = Date.now();
    ac.abort();
    await assert.rejects(pending, (e) => e.name === "AbortError");
    assert.ok(Date.now() - t0 < 500);
  });
  await lib.resetCooldowns(path);
});

test("no storms: while everything is limited, one all-cooling event per cooldown, not one per request", async () => {
  const path = await seedPool(mock, ["storm1@x.test", "storm2@x.test"]);
  mock.script("storm1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  mock.script("storm2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const events = [];
  const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  for (let i = 0; i < 30; i++) {
    const res = await ask(f, "claude-sonnet-4-5");
    assert.equal(res.status, 429);
    await res.text();
  }
  assert.equal(events.filter((e) => e.kind === "all-cooling").length, 1, JSON.stringify(events.map((e) => e.kind)));
  assert.equal(events.filter((e) => e.kind === "rate-limited").length, 2, "one per account per cooldown");
});

test("no storms, but each cooldown told: an account that refuses again after its wait is a new all-cooling notice", async () => {
  const email = "again@x.test";
  const path = await seedPool(mock, [email]);
  await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
    const events = [];
    const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
    const round = async () => {
      // Three seconds: the round's other two asks must come within it, on a busy machine too.
      mock.script(email, [{ status: 429, headers: { "retry-after": "3" } }]);
      for (let i = 0; i < 3; i++) {
        const res = await ask(f, "claude-sonnet-4-5");
        assert.equal(res.status, 429);
        await res.text();
      }
    };
    await round();
    assert.deepEqual(
      events.map((e) => e.kind),
      ["rate-limited", "all-cooling"],
    );
    await new Promise((r) => setTimeout(r, 3200));
    await round();
    assert.deepEqual(
      events.map((e) => e.kind),
      ["rate-limited", "all-cooling", "rate-limited", "all-cooling"],
      "the second cooldown is told too",
    );
    const [first, second] = events.filter((e) => e.kind === "all-cooling");
    assert.ok(second.until > first.until, `${second.until} after ${first.until}`);
  });
});

test("requests in flight refused together by bare 429s make one cooldown, written once, not once per answer", async () => {
  const path = await seedPool(mock, ["burst@x.test"]);
  await flushPool(path);
  // 24 requests reach the account, then are refused in four bursts 100 ms apart (answers to
  // requests in flight come in as they come): no retry-after, no window, each 429 a throttle
  // of 5 s counted from its own arrival, so each ends a few ms after the one before.
  const gates = Array.from({ length: 4 }, () => {
    let open;
    const opened = new Promise((r) => (open = r));
    return { open, opened };
  });
  mock.script(
    "burst@x.test",
    Array.from({ length: 24 }, (_, i) => ({ status: 429, until: gates[Math.floor(i / 6)].opened })),
  );
  let writes = 0;
  const watcher = watch(dirname(path), (event, name) => {
    if (event === "rename" && name === basename(path)) writes++;
  });
  try {
    const f = createPoolFetch({ path });
    mock.clearRequests();
    const pending = Array.from({ length: 24 }, () => ask(f, "claude-sonnet-4-5"));
    while (mock.requests.length < 24) await new Promise((r) => setTimeout(r, 10));
    const first = Date.now();
    for (const g of gates) {
      g.open();
      await new Promise((r) => setTimeout(r, 100));
    }
    const answers = await Promise.all(pending);
    await Promise.all(answers.map((r) => r.text()));
    assert.deepEqual(new Set(answers.map((r) => r.status)), new Set([429]));
    await flushPool(path);
    await new Promise((r) => setTimeout(r, 300)); // the watch's last events
    const a = account(path, "burst@x.test");
    assert.equal(a.status, "rate-limited");
    assert.ok(a.rateLimitUntil >= first + 4_000 && a.rateLimitUntil <= Date.now() + 5_000, `${a.rateLimitUntil - first} ms after the first answer`);
    assert.ok(writes >= 1 && writes <= 2, `${writes} writes of the pool file for one cooldown`);
  } finally {
    watcher.close();
  }
  await lib.resetCooldowns(path);
});

test("usage per account and model matches what the answers reported: JSON, streams, failovers, aborted streams", async () => {
  const path = await seedPool(mock, ["use1@x.test", "use2@x.test"]);
  await lib.setPriority("use1@x.test", 5, path);
  const f = createPoolFetch({ path });
  const model = "claude-sonnet-4-5";
  const U = (input, output, read, write) => ({ input_tokens: input, output_tokens: output, cache_read_input_tokens: read, cache_creation_input_tokens: write });
  mock.script("use1@x.test", [{ usage: U(11, 7, 5, 3) }, { sse: true, usage: U(20, 9, 4, 2) }, { status: 429, headers: rateLimitHeaders({ retryAfter: 1 }) }]);
  mock.script("use2@x.test", [
    { sse: true, usage: U(30, 12, 0, 6) },
    { sse: true, text: "y".repeat(2000), chunkSize: 64, delayMs: 30, usage: U(40, 99, 8, 0) },
  ]);
  await (await ask(f, model)).text(); // JSON on use1
  await (await ask(f, model, { stream: true })).text(); // stream on use1
  const failover = await ask(f, model, { stream: true }); // 429 on use1, served by use2
  assert.equal(failover.poolAccount, "use2@x.test");
  await failover.text();
  const ac = new AbortController();
  const cut = await ask(f, model, { stream: true }, { signal: ac.signal }); // aborted after message_start
  const reader = cut.body.getReader();
  let seen = "";
  while (!seen.includes("content_block_delta")) seen += new TextDecoder().decode((await reader.read()).value);
  ac.abort();
  await reader.cancel().catch(() => {});
  await flushPool(path);
  const byEmail = Object.fromEntries((await poolStatus(path)).accounts.map((a) => [a.email, a.usage?.today?.byModel?.[model]]));
  assert.deepEqual(byEmail["use1@x.test"], { requests: 2, input: 31, output: 16, cacheRead: 9, cacheWrite: 5 });
  const started = parseSSE(seen).find((e) => e.event === "message_start").data.message.usage;
  assert.deepEqual(byEmail["use2@x.test"], {
    requests: 2,
    input: 30 + started.input_tokens,
    output: 12 + started.output_tokens,
    cacheRead: 0 + started.cache_read_input_tokens,
    cacheWrite: 6 + started.cache_creation_input_tokens,
  });
  const st = await poolStatus(path);
  assert.equal(st.accounts.find((a) => a.email === "use1@x.test").usage.window.total.requests, 2, "counted in the current 5h window too");
  const cli = await runCli(["status", "--path", path]);
  assert.match(cli.out, /usage\s+today: 2 requests, 31 in, 16 out, 9 cache read, 5 cache write/);
});

// Found by a review: on the runtime transport (Bun's, OpenCode's) a stream aborted between two
// reads and then dropped, never read again, was counted only when it was collected: often never.
test("a stream aborted between reads and dropped is counted as far as it was seen, on both transports", async () => {
  const model = "claude-sonnet-4-5";
  for (const transport of ["native", "runtime"]) {
    const email = `drop-${transport}@x.test`;
    const path = await seedPool(mock, [email]);
    mock.script(email, [{ sse: true, text: "z".repeat(4000), chunkSize: 64, delayMs: 30, usage: { input_tokens: 77, output_tokens: 5 } }]);
    const f = createPoolFetch({ path, transport });
    const ac = new AbortController();
    const res = await ask(f, model, { stream: true }, { signal: ac.signal });
    const reader = res.body.getReader();
    let seen = "";
    while (!seen.includes("content_block_delta")) seen += new TextDecoder().decode((await reader.read()).value);
    ac.abort();
    let counted;
    for (const deadline = Date.now() + 5000; !counted && Date.now() < deadline; ) {
      await flushPool(path);
      counted = (await poolStatus(path)).accounts[0].usage?.today?.byModel?.[model];
      if (!counted) await new Promise((r) => setTimeout(r, 50));
    }
    const started = parseSSE(seen).find((e) => e.event === "message_start").data.message.usage;
    assert.equal(counted?.requests, 1, `${transport}: ${JSON.stringify(counted)}`);
    assert.equal(counted.input, started.input_tokens, transport);
  }
});

test("usage over 30 days counts the last 30 days only, also for an account idle since; status prices the tokens from OpenCode's models cache", async () => {
  const email = "idle30@x.test";
  const path = await seedPool(mock, [email]);
  const pool = readPool(path);
  const now = Date.now();
  const day = (ago) => new Date(now - ago * 86_400_000).toISOString().slice(0, 10);
  const counts = (requests, input, output) => ({ "claude-sonnet-4-5": { requests, input, output, cacheRead: 0, cacheWrite: 0 } });
  // Written by the last answers this account had: nothing since prunes its older days.
  pool.anthropic[0].usage = {
    days: { [day(0)]: counts(3, 1_000_000, 100_000), [day(10)]: counts(2, 10, 10), [day(40)]: counts(7, 500, 500), [day(59)]: counts(4, 5, 5) },
    windows: { [String(now + 7_200_000)]: counts(1, 10, 10) },
  };
  await lib.savePool(pool, path);
  const usage = (await poolStatus(path)).accounts[0].usage;
  assert.equal(usage.today.total.requests, 3);
  assert.equal(usage.window.total.requests, 1);
  assert.equal(usage.last30Days.total.requests, 5, "days 40 and 59 ago are not of the last 30");
  const cache = tempDir("oauth-pool-prices-");
  mkdirSync(join(cache, "opencode"));
  const price = { input: 3, output: 15, cache_read: 0.3, cache_write: 3.75 };
  writeFileSync(join(cache, "opencode", "models.json"), JSON.stringify({ anthropic: { models: { "claude-sonnet-4-5": { cost: price } } } }));
  const cli = await runCli(["status", "--path", path], { XDG_CACHE_HOME: cache });
  // 1M input at $3 and 100k output at $15 per million tokens.
  assert.match(cli.out, /usage\s+today: 3 requests, 1\.0M in, 100k out \(≈ \$4\.50 at API prices\)/, cli.out);
  assert.match(cli.out, /30 days: 5 requests/, cli.out);
});

test("reset-cooldowns from another process (the CLI) reopens the accounts in a running process, model cooldowns too", async () => {
  const path = await seedPool(mock, ["rc1@x.test", "rc2@x.test"]);
  await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
    mock.script("rc1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
    mock.script("rc2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600, rejected: "7d_sonnet" }) }]);
    const f = createPoolFetch({ path });
    const limited = await ask(f, "claude-sonnet-4-5");
    assert.equal(limited.status, 429, "both accounts rest for sonnet: the pool's own 429");
    await limited.text();
    await flushPool(path);
    assert.ok(account(path, "rc1@x.test").rateLimitUntil > Date.now() + 3_000_000);
    assert.ok(account(path, "rc2@x.test").modelCooldowns.sonnet > Date.now() + 3_000_000);
    // The owner raised the limit, or knows better: `oauth-pool reset-cooldowns` in a terminal,
    // while this process (OpenCode) keeps running.
    const reset = await runCli(["reset-cooldowns", "--path", path]);
    assert.equal(reset.code, 0, reset.err);
    assert.equal(account(path, "rc1@x.test").rateLimitUntil, null);
    mock.clearRequests();
    // Within a second of its write this process still counts its own copy (a request that read
    // the pool just before must not see the account open); it had kept it for the whole hour.
    let again;
    for (const deadline = Date.now() + 5000; ; ) {
      again = await ask(f, "claude-sonnet-4-5");
      if (again.status === 200 || Date.now() > deadline) break;
      await again.text();
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(again.status, 200, "the running process honours the reset");
    await again.text();
    assert.equal(mock.requests.length, 1, "the pool's own 429s meanwhile sent nothing upstream");
    // Each account's own copy goes a second after its own write, and the two cooldowns were two
    // writes (a loaded machine puts a few hundred ms between them): the other one is open too.
    await new Promise((r) => setTimeout(r, 1500));
    // A cooldown the running process decides after the reset holds again.
    mock.script(again.poolAccount, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 3600 }) }]);
    const other = await ask(f, "claude-sonnet-4-5");
    assert.equal(other.status, 200);
    assert.notEqual(other.poolAccount, again.poolAccount);
    await other.text();
    const third = await ask(f, "claude-sonnet-4-5");
    assert.equal(third.poolAccount, other.poolAccount, "the new cooldown is kept");
    await third.text();
  });
  await lib.resetCooldowns(path);
});

test("reset-cooldowns from a shell while the account is still limited: its next 429 rests it again, and the pool answers for it", async () => {
  const path = await seedPool(mock, ["again1@x.test"]);
  await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
    // The 5-hour window is spent: every refusal says the same reset.
    const limited = { status: 429, headers: rateLimitHeaders({ fiveHourReset: Math.floor(Date.now() / 1000) + 3600 }) };
    mock.script("again1@x.test", [limited, limited, limited, limited]);
    const f = createPoolFetch({ path });
    const first = await ask(f, "claude-sonnet-4-5");
    assert.equal(first.status, 429);
    await first.text();
    await flushPool(path);
    // The store is the truth of that rest a second after its write.
    await new Promise((r) => setTimeout(r, 1500));
    // Too early: the window has not reset yet.
    const reset = await runCli(["reset-cooldowns", "--path", path]);
    assert.equal(reset.code, 0, reset.err);
    mock.clearRequests();
    const again = await ask(f, "claude-sonnet-4-5");
    assert.equal(again.status, 429, 'the pool\'s own 429 with the wait, not POOL_NO_ACCOUNT (the account "refused this request")');
    assert.equal(again.headers.get("x-oauth-pool"), "all-accounts-cooling");
    assert.ok(Number(again.headers.get("retry-after")) > 3000, again.headers.get("retry-after"));
    await again.text();
    assert.equal(mock.requests.length, 1, "asked once, and refused");
    const third = await ask(f, "claude-sonnet-4-5");
    assert.equal(third.status, 429);
    await third.text();
    assert.equal(mock.requests.length, 1, "the rest holds: nothing more went upstream");
    await flushPool(path);
    assert.ok(account(path, "again1@x.test").rateLimitUntil > Date.now() + 3_000_000, "written again, for other processes");
  });
  await lib.resetCooldowns(path);
});

// Found by a review (2026-12-07): an account with a reserve whose 429 said its 5-hour window was
// spent (101 %, resetting in 50 min) stayed held at its reserve line after `oauth-pool
// reset-cooldowns`, which had said its cooldown was cleared: the 429's own window held it, and
// nothing was sent until the window reset. What was heard before the reset is no line now; what
// is heard after it is, so the reserve still holds the account once an answer says it is past.
test("reset-cooldowns reopens an account held at its reserve line by a 429's spent window; an answer after the reset past the line holds it again", async () => {
  const email = "reserve-reset@x.test";
  const path = await seedPool(mock, [email]);
  await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
    await lib.setReserve(email, 0.2, path);
    const resetAt = Math.floor(Date.now() / 1000) + 3000;
    mock.script(email, [{ status: 429, headers: rateLimitHeaders({ fiveHourReset: resetAt }) }]);
    const f = createPoolFetch({ path });
    const limited = await ask(f, "claude-sonnet-4-5");
    assert.equal(limited.status, 429);
    assert.ok(Number(limited.headers.get("retry-after")) > 2900, limited.headers.get("retry-after"));
    await limited.text();
    await flushPool(path);
    const reset = await runCli(["reset-cooldowns", "--path", path]);
    assert.equal(reset.code, 0, reset.err);
    assert.match(reset.out, /cleared the cooldown of 1 account/);
    // The window is not spent after all (the owner knows better): the next answer says 30 %.
    mock.setUtilization(email, { fiveHour: 0.3, fiveHourReset: resetAt });
    mock.clearRequests();
    const sent = () => mock.requests.filter((r) => r.path.startsWith("/v1/messages")).length;
    // This process takes the file's reset within about a second; it kept the account held at
    // its line until the window's reset, 50 minutes.
    let again;
    for (const deadline = Date.now() + 5000; ; ) {
      again = await ask(f, "claude-sonnet-4-5");
      if (again.status === 200 || Date.now() > deadline) break;
      await again.text();
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(again.status, 200, `served after the reset: ${again.headers.get("x-oauth-pool")} retry-after ${again.headers.get("retry-after")}`);
    assert.equal(again.poolAccount, email);
    await again.text();
    assert.equal(sent(), 1, "one request upstream, the pool's own 429s meanwhile sent nothing");
    // Heard after the reset: 85 % is past the 80 % line, and the reserve holds the account again.
    mock.setUtilization(email, { fiveHour: 0.85, fiveHourReset: resetAt });
    const past = await ask(f, "claude-sonnet-4-5");
    assert.equal(past.status, 200, "not known to be past the line yet");
    await past.text();
    const held = await ask(f, "claude-sonnet-4-5");
    assert.equal(held.status, 429, "held at its reserve line");
    assert.equal(held.headers.get("x-oauth-pool"), "all-accounts-cooling");
    const wait = Number(held.headers.get("retry-after"));
    assert.ok(wait > 2900 && wait <= 3000 + 11, `until the window resets (${wait} s)`);
    await held.text();
    assert.equal(sent(), 2, "the held request was not sent");
    await flushPool(path);
    const st = (await poolStatus(path)).accounts.find((a) => a.email === email);
    assert.equal(st.heldBy, "reserve");
  });
  await lib.resetCooldowns(path);
});

for (const from of ["in-process", "shell"]) {
  test(`reset-cooldowns (${from}) while every account is still limited: the same cooldown met again is told again, once`, async () => {
    const email = `told-${from}@x.test`;
    const path = await seedPool(mock, [email]);
    await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
      // The 5-hour window is spent: every refusal says the same reset, so the cooldown met
      // after the reset ends when the one before did.
      const limited = { status: 429, headers: rateLimitHeaders({ fiveHourReset: Math.floor(Date.now() / 1000) + 3600 }) };
      mock.script(email, [limited, limited, limited]);
      const events = [];
      const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
      const refused = async () => {
        const res = await ask(f, "claude-sonnet-4-5");
        assert.equal(res.status, 429);
        assert.equal(res.headers.get("x-oauth-pool"), "all-accounts-cooling");
        await res.text();
      };
      await refused();
      assert.equal(events.filter((e) => e.kind === "all-cooling").length, 1, JSON.stringify(events.map((e) => e.kind)));
      await flushPool(path);
      // The store is the truth of that rest a second after its write.
      await new Promise((r) => setTimeout(r, 1500));
      if (from === "shell") {
        const reset = await runCli(["reset-cooldowns", "--path", path]);
        assert.equal(reset.code, 0, reset.err);
      } else {
        await lib.resetCooldowns(path);
      }
      await refused();
      await refused();
      const told = events.filter((e) => e.kind === "all-cooling");
      assert.equal(told.length, 2, `the cooldown after the reset is told, once: ${JSON.stringify(events.map((e) => e.kind))}`);
      assert.equal(told[1].until, told[0].until, "the same cooldown");
    });
    await lib.resetCooldowns(path);
  });
}

test("requests in flight when a 429 lands: each moves once, the late 200 from the limited account does not reopen it", async () => {
  const path = await seedPool(mock, ["fly1@x.test", "fly2@x.test"]);
  await lib.setPriority("fly1@x.test", 5, path);
  const reset = Math.floor(Date.now() / 1000) + 3600;
  const limited = { status: 429, headers: rateLimitHeaders({ fiveHourReset: reset }) };
  // The first request is slow and answered 200 after the others were refused.
  mock.script("fly1@x.test", [{ headersDelayMs: 400 }, limited, limited, limited, limited]);
  const f = createPoolFetch({ path });
  mock.clearRequests();
  const answers = await Promise.all(Array.from({ length: 5 }, () => ask(f, "claude-sonnet-4-5")));
  assert.deepEqual(
    answers.map((r) => r.status),
    [200, 200, 200, 200, 200],
  );
  await Promise.all(answers.map((r) => r.text()));
  const by = (email) => mock.requests.filter((r) => r.email === email).length;
  // Requests sent before the first 429 came back try the limited account (once each) and move;
  // one sent after it goes to the other account at once (how many of each depends on timing,
  // under Bun especially). Either way the four not served by the slow 200 reach the other
  // account exactly once.
  assert.ok(by("fly1@x.test") >= 2 && by("fly1@x.test") <= 5, `the limited account got ${by("fly1@x.test")} requests`);
  assert.equal(by("fly2@x.test"), 4, "the refused ones moved, once each");
  const next = await ask(f, "claude-sonnet-4-5");
  assert.equal(next.poolAccount, "fly2@x.test", "the 200 that came after the 429 does not make the limited account the one to use");
  await next.text();
  await flushPool(path);
  const a = account(path, "fly1@x.test");
  assert.equal(a.status, "rate-limited");
  assert.ok(Math.abs(a.rateLimitUntil - reset * 1000) < 2000, `${a.rateLimitUntil} vs ${reset * 1000}`);
  await lib.resetCooldowns(path);
});

test("a 200 to a request sent before another's 429 on that account is older news: it overwrites neither the 429's windows nor the account in use", async () => {
  const emails = ["late1@x.test", "late2@x.test", "late3@x.test"];
  const path = await seedPool(mock, emails);
  await lib.setPriority("late1@x.test", 5, path);
  const reset = Math.floor(Date.now() / 1000) + 3600;
  const p = "anthropic-ratelimit-unified";
  // What the slow request was told when it was let in: half the 5h window used.
  const older = {
    [`${p}-status`]: "allowed",
    [`${p}-reset`]: String(reset),
    [`${p}-5h-status`]: "allowed",
    [`${p}-5h-utilization`]: "0.5",
    [`${p}-5h-reset`]: String(reset),
  };
  let release;
  const gate = new Promise((r) => (release = r));
  mock.script("late1@x.test", [
    { until: gate, headers: older },
    { status: 429, headers: rateLimitHeaders({ fiveHourReset: reset }) },
  ]);
  const f = createPoolFetch({ path });
  const slowArrived = mock.waitFor("api", (r) => r.email === "late1@x.test");
  const slow = ask(f, "claude-sonnet-4-5");
  await slowArrived;
  // Sent after the slow one and refused: it moves on, and that account is the one in use now.
  const moved = await ask(f, "claude-sonnet-4-5");
  assert.equal(moved.status, 200);
  const inUse = moved.poolAccount;
  assert.notEqual(inUse, "late1@x.test");
  await moved.text();
  release();
  const late = await slow;
  assert.equal(late.poolAccount, "late1@x.test", "the slow request is answered where it was sent");
  await late.text();
  await flushPool(path);
  const next = await ask(f, "claude-sonnet-4-5");
  assert.equal(next.poolAccount, inUse, "the late 200 did not make the limited account the one in use");
  await next.text();
  await flushPool(path);
  const a = account(path, "late1@x.test");
  assert.equal(a.status, "rate-limited");
  assert.equal(a.limits.status, "rejected", JSON.stringify(a.limits));
  assert.equal(a.limits.windows["5h"].status, "rejected", JSON.stringify(a.limits));
  assert.equal(a.limits.windows["5h"].utilization, 1.01, JSON.stringify(a.limits));
  assert.equal(account(path, inUse).status, "active");
  const shown = (await poolStatus(path)).accounts.find((s) => s.email === "late1@x.test");
  assert.ok(
    shown.windows.some((w) => w.name === "5h" && w.utilization === 1.01),
    JSON.stringify(shown.windows),
  );
  await lib.resetCooldowns(path);
});

test("new processes take the highest priority, then the least recently used: one after another they rotate", async () => {
  const emails = ["lru1@x.test", "lru2@x.test", "lru3@x.test"];
  const path = await seedPool(mock, emails);
  const pool = readPool(path);
  const ago = (ms) => new Date(Date.now() - ms).toISOString();
  pool.anthropic[0].lastUsed = ago(1_000);
  pool.anthropic[1].lastUsed = ago(60_000);
  pool.anthropic[2].lastUsed = null; // never used: first
  await lib.savePool(pool, path);
  const served = [];
  for (let i = 0; i < 4; i++) {
    const r = await runPoller(path, "claude-sonnet-4-5", { once: true });
    assert.equal(r.status, 200, JSON.stringify(r));
    served.push(r.account);
  }
  assert.deepEqual(served, ["lru3@x.test", "lru2@x.test", "lru1@x.test", "lru3@x.test"]);
  await lib.setPriority("lru3@x.test", 2, path);
  await lib.setPriority("lru1@x.test", 1, path);
  const first = await runPoller(path, "claude-sonnet-4-5", { once: true });
  assert.equal(first.account, "lru3@x.test", "priority before last use: the most recently used, but the highest");
  await lib.setEnabled("lru3@x.test", false, path);
  const next = await runPoller(path, "claude-sonnet-4-5", { once: true });
  assert.equal(next.account, "lru1@x.test", "a disabled account is passed over; then priority 1 over 0");
});

// ---- helpers --------------------------------------------------------------------------------

function runCli(args, env = {}) {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) => resolve({ code, out, err }));
  });
}

/** A separate process polling the pool for `model` until it gets a 200 (or `once`). */
function runPoller(path, model, { once = false, jitterMs, deadlineMs = 10_000 } = {}) {
  const env = { ...process.env, OAUTH_POOL_PATH: path };
  if (jitterMs !== undefined) env.OAUTH_POOL_JITTER_MS = String(jitterMs);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [POLLER, mock.url, model, once ? "once" : "poll", String(deadlineMs)], { env, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("close", () => {
      try {
        resolve(JSON.parse(out.trim().split("\n").at(-1)));
      } catch {
        reject(new Error(`poller printed ${out}`));
      }
    });
  });
}

// OpenCode #49653 (the subscription-window headers dropped on the way to the client, which
// reads them to show use): through both transports and the gateway, the answer that serves the
// request brings its own window headers, not those of the account that refused it before.
test("the subscription-window headers of the answer that served reach the caller after a failover: both transports and the gateway", async () => {
  const key = "test-gateway-key-window-headers-0123456789";
  for (const via of ["native", "runtime", "gateway"]) {
    const [refused, serving] = [`wh-a-${via}@x.test`, `wh-b-${via}@x.test`];
    const path = await seedPool(mock, [refused, serving]);
    await lib.setPriority(refused, 5, path);
    mock.setUtilization(serving, { fiveHour: 0.42, sevenDay: 0.77 });
    mock.script(refused, [{ status: 429, headers: { "retry-after": "30", "anthropic-ratelimit-unified-5h-utilization": "0.99" } }]);
    const body = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
    let res;
    let gw;
    if (via === "gateway") {
      gw = await withEnv({ OAUTH_POOL_GATEWAY_KEY: key }, () => lib.serve({ port: 0, path }));
      res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key }, body });
    } else {
      res = await createPoolFetch({ path, transport: via })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body });
    }
    try {
      assert.equal(res.status, 200, via);
      assert.match(await res.text(), new RegExp(`Hello from ${serving}`), via);
      const p = "anthropic-ratelimit-unified";
      assert.equal(res.headers.get(`${p}-5h-utilization`), "0.42", `${via}: the serving account's 5h use`);
      assert.equal(res.headers.get(`${p}-7d-utilization`), "0.77", via);
      assert.equal(res.headers.get(`${p}-status`), "allowed", via);
      assert.equal(res.headers.get(`${p}-representative-claim`), "five_hour", via);
      assert.match(res.headers.get(`${p}-5h-reset`) ?? "", /^\d+$/, via);
    } finally {
      await gw?.close(500);
    }
  }
});

// aidevops #15322 (cooldowns that had passed were not normalized, so every account looked
// exhausted), Hermes #84711 (a stored cooldown outlived what the server said): a file in which
// every account still says `rate-limited`, its end passed, absent, or only aidevops's
// `cooldownUntil` (passed), is served at once, with no pool 429 and nothing held.
test("every account left `rate-limited` in the file with its cooldown over or unsaid: served at once, and shown as usable", async () => {
  const emails = ["lapsed-a@x.test", "lapsed-b@x.test", "lapsed-c@x.test"];
  const path = await seedPool(mock, emails);
  const pool = readPool(path);
  const past = Date.now() - 3_600_000;
  Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: past });
  Object.assign(pool.anthropic[1], { status: "rate-limited", rateLimitUntil: null });
  Object.assign(pool.anthropic[2], { status: "rate-limited", rateLimitUntil: null, cooldownUntil: past });
  writeFileSync(path, JSON.stringify(pool), { mode: 0o600 });
  const listed = await lib.listAccounts(path);
  assert.deepEqual(
    listed.map((a) => [a.email, a.status]),
    emails.map((e) => [e, "idle"]),
  );
  assert.equal((await poolStatus(path)).counts.usable, 3);
  // One request per account: each disabled in turn after serving, so the next must be chosen.
  const f = createPoolFetch({ path });
  const served = [];
  for (let i = 0; i < emails.length; i++) {
    const res = await ask(f, "claude-sonnet-4-5");
    assert.equal(res.status, 200, `request ${i}: ${res.headers.get("x-oauth-pool")}`);
    served.push(res.poolAccount);
    await res.text();
    await lib.setEnabled(res.poolAccount, false, path);
  }
  assert.deepEqual(served.toSorted(), emails);
});

test("the views say what the pool does: an account held at its reserve line, and an auth-error another program wrote", async () => {
  // Found by a review: `usable` and `soonestReset` came from the stored fields alone. Both
  // accounts held at their reserve line read usable, with no reset ahead, while the fetch answered
  // the pool's 429 for half an hour; and an auth-error aidevops's helper wrote said "needs a new
  // login" for an account the pool served.
  await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
    const path = await seedPool(mock, ["held1@x.test"]);
    const reset = Math.floor(Date.now() / 1000) + 1800;
    mock.setUtilization("held1@x.test", { fiveHour: 0.85, fiveHourReset: reset });
    const f = lib.createPoolFetch({ path });
    const first = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: '{"model":"claude-sonnet-4-5","messages":[]}' });
    await first.text();
    await lib.flushPool(path);
    await lib.setReserve("held1@x.test", 0.2, path);
    const st = await lib.poolStatus(path);
    const [a] = st.accounts;
    assert.equal(st.counts.usable, 0);
    assert.equal(a.usable, false, JSON.stringify(a));
    assert.equal(a.heldBy, "reserve");
    assert.equal(a.heldUntil, reset * 1000);
    assert.equal(st.soonestReset, reset * 1000);
    const [listed] = await lib.listAccounts(path);
    assert.equal(listed.usable, false);
    const tool = lib.createPoolTool({}, { path });
    const text = await tool.execute({ action: "status" }, {});
    assert.match(text, /held at its reserve line: usable again in 29 min|held at its reserve line: usable again in 30 min/);
    assert.doesNotMatch(text, /no account is cooling down/);
    assert.match(statusText(st, Date.now(), {}), /held at its reserve line/);
    // And the pool's own 429 says so (a review, 2026-12-07, second: "every account is
    // rate-limited", while no limit of the API's held it).
    const held = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: '{"model":"claude-sonnet-4-5","messages":[]}' });
    assert.equal(held.status, 429);
    assert.match(
      await held.text(),
      /every account is rate-limited or held at its reserve line \(`oauth-pool reserve`\); the first one \(held1@x\.test\) is usable again in (29|30) min/,
    );

    // aidevops's helper marked the other login auth-error with a backoff: tried again after it.
    const theirs = await seedPool(mock, ["theirs1@x.test"]);
    const pool = readPool(theirs);
    pool.anthropic[0].status = "auth-error";
    pool.anthropic[0].cooldownUntil = Date.now() + 90_000;
    writeFileSync(theirs, JSON.stringify(pool), { mode: 0o600 });
    const during = await lib.poolStatus(theirs);
    assert.equal(during.accounts[0].authErrorTheirs, true);
    assert.ok(Math.abs(during.soonestReset - pool.anthropic[0].cooldownUntil) < 1000, JSON.stringify(during.accounts[0]));
    const duringText = await lib.createPoolTool({}, { path: theirs }).execute({ action: "list" }, {});
    assert.match(duringText, /auth-error marked by another program; the pool tries this login again in 1 min/);
    pool.anthropic[0].cooldownUntil = Date.now() - 1000;
    writeFileSync(theirs, JSON.stringify(pool), { mode: 0o600 });
    const after = await lib.createPoolTool({}, { path: theirs }).execute({ action: "list" }, {});
    assert.match(after, /auth-error marked by another program; the pool tries this login again at its next request/);
    assert.doesNotMatch(after, /needs a new login/);
  });
});
