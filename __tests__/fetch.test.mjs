// The rotating fetch through the real addon, against the loopback mock (issue 4 scenarios).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { renameSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import Anthropic from "@anthropic-ai/sdk";
import { createPoolFetch, loadPool, savePool, flushPool, resetCooldowns, setEnabled } from "../index.mjs";
import { rateLimitHeaders, parseSSE } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, account, readPool, mode, messagesUrl, body, jsonHeaders, runWorkersTogether, tempPoolPath } from "./helpers/pool-env.mjs";

const mock = useMock();

const post = (poolFetch, extra = {}, init = {}) => poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(extra), ...init });
// A Console API key member as the pool file holds one.
const keyEntry = (email, key, priority) => ({
  email,
  type: "api",
  key,
  expires: null,
  added: new Date().toISOString(),
  status: "idle",
  rateLimitUntil: null,
  priority,
});

const deltaText = (sse) =>
  parseSSE(sse)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");

const workerPath = fileURLToPath(new URL("./helpers/pool-worker.mjs", import.meta.url));
function runWorker(path, count) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [workerPath, path, mock.url, String(count)], {
      env: process.env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.on("error", reject);
    child.on("close", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`worker exit ${code}`))));
  });
}

test("streams a Messages answer with the pool's bearer and the oauth beta merged", async () => {
  const path = await seedPool(mock, ["s1@x.test"]);
  const poolFetch = createPoolFetch({ path });
  mock.clearRequests();
  const res = await post(
    poolFetch,
    { stream: true },
    {
      headers: { ...jsonHeaders, "anthropic-beta": "interleaved-thinking-2025-05-14", "x-session-affinity": "ses_1" },
    },
  );
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /text\/event-stream/);
  assert.ok(res.body instanceof ReadableStream);
  const events = parseSSE(await res.text());
  assert.ok(events.some((e) => e.event === "message_stop"));
  const seen = mock.requests.at(-1);
  assert.equal(seen.auth, "bearer");
  assert.equal(seen.email, "s1@x.test");
  assert.equal(seen.headers["x-api-key"], undefined);
  assert.equal(seen.headers["x-session-affinity"], undefined);
  assert.deepEqual(seen.headers["anthropic-beta"].split(","), ["oauth-2025-04-20", "interleaved-thinking-2025-05-14"]);
  assert.match(seen.headers["user-agent"], /^opencode-oauth-pool\//);
  assert.equal(res.poolAccount, "s1@x.test");
});

test("the Anthropic SDK as the README gives it (a placeholder apiKey): the account's bearer goes upstream, never the placeholder", async () => {
  const path = await seedPool(mock, ["sdk@x.test"]);
  const client = new Anthropic({ apiKey: "pool", baseURL: mock.url, fetch: createPoolFetch({ path }), maxRetries: 0 });
  mock.clearRequests();
  const message = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
  assert.equal(message.type, "message");
  const seen = mock.requests.at(-1);
  assert.equal(seen.auth, "bearer");
  assert.equal(seen.email, "sdk@x.test");
  assert.equal(seen.headers["x-api-key"], undefined, "the placeholder went upstream");
});

test("the caller's betas go once each, the oauth beta once in any case, whatever the header's spelling or repeats", async () => {
  const path = await seedPool(mock, ["bt@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const sentBetas = async (...lines) => {
    const headers = new Headers(jsonHeaders);
    for (const line of lines) headers.append(...line);
    mock.clearRequests();
    const res = await poolFetch(messagesUrl(mock), { method: "POST", headers, body: body() });
    assert.equal(res.status, 200);
    await res.text();
    return mock.requests.at(-1).headers["anthropic-beta"].split(",");
  };
  // Names in any case, values spaced, split over two header lines, a beta repeated apart.
  assert.deepEqual(await sentBetas(["Anthropic-Beta", " a-1 ,b-2"], ["ANTHROPIC-BETA", "a-1, c-3"]), ["oauth-2025-04-20", "a-1", "b-2", "c-3"]);
  // The caller's own oauth beta, in another case: sent once, as the API spells it, where it stood.
  assert.deepEqual(await sentBetas(["anthropic-beta", "a-1, OAuth-2025-04-20"], ["anthropic-beta", "oauth-2025-04-20"]), ["a-1", "oauth-2025-04-20"]);
  // Empty pieces are no beta.
  assert.deepEqual(await sentBetas(["anthropic-beta", " , ,"]), ["oauth-2025-04-20"]);
});

test("a 429 moves the same request to the next account and the cooldown lands in the file", async () => {
  const path = await seedPool(mock, ["r1@x.test", "r2@x.test"]);
  const reset = Math.floor(Date.now() / 1000) + 7999;
  mock.script("r1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 30, fiveHourReset: reset }) }]);
  const events = [];
  const poolFetch = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  mock.clearRequests();
  const res = await post(poolFetch, { stream: true });
  assert.equal(res.status, 200);
  assert.equal(deltaText(await res.text()), "Hello from r2@x.test");
  const sent = mock.requests.filter((r) => r.path.startsWith("/v1/messages"));
  assert.deepEqual(
    sent.map((r) => r.email),
    ["r1@x.test", "r2@x.test"],
  );
  assert.equal(sent[0].body, sent[1].body, "the retried body is identical");
  await flushPool(path);
  const a = account(path, "r1@x.test");
  assert.equal(a.status, "rate-limited");
  assert.ok(Math.abs(a.rateLimitUntil - reset * 1000) < 2000, `until ${a.rateLimitUntil} vs ${reset * 1000}`);
  assert.equal(a.refresh, mock.tokens("r1@x.test").refresh, "tokens kept");
  assert.ok(events.some((e) => e.kind === "failover" && e.email === "r1@x.test" && e.to === "r2@x.test"));
  assert.equal(mode(path), 0o600);
  // The next request goes straight to r2 (r1 is cooling, and r2 is now the sticky account).
  mock.clearRequests();
  await (await post(poolFetch)).text();
  assert.deepEqual(
    mock.requests.map((r) => r.email),
    ["r2@x.test"],
  );
});

test("a cooldown written by one process is honoured by another", async () => {
  const path = await seedPool(mock, ["c1@x.test", "c2@x.test"]);
  await savePool(
    {
      anthropic: readPool(path).anthropic.map((a) => (a.email === "c1@x.test" ? { ...a, priority: 5 } : a)),
    },
    path,
  );
  mock.script("c1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600, fiveHourReset: Math.floor(Date.now() / 1000) + 600 }) }]);
  const first = await runWorker(path, 1);
  assert.equal(first[0].account, "c2@x.test");
  mock.clearRequests();
  const second = await runWorker(path, 2);
  assert.deepEqual(
    second.map((r) => r.account),
    ["c2@x.test", "c2@x.test"],
  );
  assert.ok(
    mock.requests.every((r) => r.email === "c2@x.test"),
    "the other process never tried c1",
  );
});

test("every account cooling: one synthetic 429 with the real wait, nothing sent upstream", async () => {
  const path = await seedPool(mock, ["k1@x.test", "k2@x.test"]);
  const soon = Math.floor(Date.now() / 1000) + 120;
  mock.script("k1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 300, fiveHourReset: soon + 180 }) }]);
  mock.script("k2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  const poolFetch = createPoolFetch({ path });
  mock.clearRequests();
  const res = await post(poolFetch);
  assert.equal(res.status, 429);
  const wait = Number(res.headers.get("retry-after"));
  // The soonest reset, plus this process's share of the reopening spread (OAUTH_POOL_JITTER_MS).
  assert.ok(wait >= 115 && wait <= 131, `retry-after ${wait}`);
  const err = await res.json();
  assert.equal(err.error.type, "rate_limit_error");
  assert.match(err.error.message, /k2@x\.test/);
  assert.equal(mock.requests.length, 2, "each account tried once");
  mock.clearRequests();
  const again = await post(poolFetch);
  assert.equal(again.status, 429);
  assert.equal(mock.requests.length, 0, "no request while everything cools");
  assert.equal(mock.stats().unauthenticated, 0);
});

test("a bare 429 is a short burst cooldown, not a long bench", async () => {
  const path = await seedPool(mock, ["b1@x.test", "b2@x.test"]);
  mock.script("b1@x.test", [{ status: 429, headers: { "retry-after": "2" } }]);
  const poolFetch = createPoolFetch({ path });
  const sent = Date.now();
  const res = await post(poolFetch);
  assert.equal(res.poolAccount, "b2@x.test");
  await res.text();
  await flushPool(path);
  const until = account(path, "b1@x.test").rateLimitUntil;
  // Rested its `retry-after` (a null rest, or none, would pass the bound below alone)...
  assert.equal(typeof until, "number", `rateLimitUntil ${until}`);
  assert.ok(until >= sent + 2000, `rested ${until - sent} ms from the request, less than its retry-after of 2 s`);
  // ...and no more: a burst, not a window's bench.
  assert.ok(until - Date.now() <= 2500, `cooling ${until - Date.now()} ms`);
});

// anchors.md "reference-spec bugs" 5: aidevops v1 read an HTTP-date `Retry-After` as NaN and
// offered the account again at once. Each of the three forms rests the account as long as it says.
test("a Retry-After as an HTTP date, as seconds or as retry-after-ms rests the account that long, not at once", async () => {
  for (const [form, headers, secs] of [
    ["date", { "retry-after": new Date(Date.now() + 600_000).toUTCString() }, 600],
    ["seconds", { "retry-after": "420" }, 420],
    ["ms", { "retry-after-ms": "300000" }, 300],
  ]) {
    const [a, b] = [`ra-${form}-1@x.test`, `ra-${form}-2@x.test`];
    const path = await seedPool(mock, [a, b]);
    mock.script(a, [{ status: 429, headers }]);
    const poolFetch = createPoolFetch({ path });
    const res = await post(poolFetch);
    assert.equal(res.poolAccount, b, form);
    await res.text();
    await flushPool(path);
    const rest = account(path, a).rateLimitUntil - Date.now();
    assert.equal(account(path, a).status, "rate-limited", form);
    assert.ok(rest > (secs - 5) * 1000 && rest <= secs * 1000 + 1000, `${form}: rests ${rest} ms, said ${secs} s`);
  }
});

test("401 after another client rotated the token: the newer token in the file is adopted, no refresh", async () => {
  const path = await seedPool(mock, ["a1@x.test"]);
  const poolFetch = createPoolFetch({ path });
  await (await post(poolFetch)).text();
  // The request leaves with the old token; while it is upstream, another client rotates the
  // family and writes the new tokens into the file; then the old token is answered with a 401.
  let release;
  mock.script("a1@x.test", [{ status: 401, until: new Promise((r) => (release = r)) }]);
  const arrived = mock.waitFor("api", (r) => r.email === "a1@x.test");
  const oldAccess = readPool(path).anthropic[0].access;
  const pending = post(poolFetch);
  await arrived;
  const fresh = mock.rotate("a1@x.test"); // the old access token is now dead
  const pool = readPool(path);
  pool.anthropic[0] = { ...pool.anthropic[0], access: fresh.access, refresh: fresh.refresh, expires: fresh.expires };
  // Written as another process writes it (a rename over the file): savePool from this process
  // would tell its engine directly, which another process cannot.
  writeFileSync(`${path}.other`, JSON.stringify(pool), { mode: 0o600 });
  renameSync(`${path}.other`, path);
  const before = mock.stats().refreshCalls;
  mock.clearRequests();
  release();
  const res = await pending;
  assert.equal(res.status, 200);
  await res.text();
  assert.equal(mock.stats().refreshCalls, before, "adopted, not refreshed");
  const sent = mock.requests.filter((r) => r.path.startsWith("/v1/messages"));
  assert.equal(sent.length, 1, "the retry after the 401");
  assert.equal(sent[0].headers.authorization, `Bearer ${fresh.access}`, "the adopted token was sent");
  assert.notEqual(fresh.access, oldAccess);
});

test("401 with an unchanged file: refresh once, retry once on the same account", async () => {
  const path = await seedPool(mock, ["u1@x.test", "u2@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const first = await post(poolFetch);
  const served = first.poolAccount;
  await first.text();
  mock.revoke(served); // access token revoked early, refresh token still good
  const before = mock.stats().refreshCalls;
  mock.clearRequests();
  const res = await post(poolFetch);
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, served);
  await res.text();
  assert.equal(mock.stats().refreshCalls, before + 1);
  assert.equal(mock.requests.length, 2, "the 401, then one retry");
  assert.equal(mock.requests[1].email, served);
  await flushPool(path);
  assert.equal(account(path, served).access, mock.tokens(served).access, "new token saved");
});

test("a dead refresh token marks the account auth-error (tokens kept) and rotates", async () => {
  const path = await seedPool(mock, ["d1@x.test", "d2@x.test"], { expired: ["d1@x.test"] });
  const pool = readPool(path);
  pool.anthropic[0].priority = 9;
  await savePool(pool, path);
  mock.revoke("d1@x.test", { family: true });
  const before = readPool(path).anthropic[0];
  const events = [];
  const poolFetch = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  const res = await post(poolFetch);
  assert.equal(res.poolAccount, "d2@x.test");
  await res.text();
  await flushPool(path);
  const after = account(path, "d1@x.test");
  assert.equal(after.status, "auth-error");
  assert.equal(after.refresh, before.refresh, "tokens are never deleted");
  assert.equal(after.access, before.access);
  assert.ok(events.some((e) => e.kind === "auth-error" && e.email === "d1@x.test"));
  assert.equal(mock.stats().perFamily["d1@x.test"].refreshCalls, 1, "presented once, never looped");
});

// README, "How a request is served": "401 for an API key: the credential is refused:
// auth-error tied to that credential (tokens kept), next account". A key has no refresh: one
// 401 refuses it, nothing goes to the token endpoint, and the key is never presented again.
for (const transport of ["native", "runtime"]) {
  test(`${transport}: a 401 on an API key refuses that key at once (kept, no refresh, no retry on it) and the next account serves`, async () => {
    const keyed = `refused-key-${transport}`;
    const oauth = `after-key-${transport}@x.test`;
    const path = await seedPool(mock, [oauth]);
    const pool = readPool(path);
    // A key the mock does not know: its 401 is "invalid x-api-key".
    const key = `fake-console-key-unknown-${transport}`;
    pool.anthropic.unshift(keyEntry(keyed, key, 9));
    await savePool(pool, path);
    const events = [];
    const poolFetch = createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
    mock.clearRequests();
    const tokenCalls = mock.tokenRequests.length;
    const res = await post(poolFetch);
    assert.equal(res.status, 200);
    assert.equal(res.poolAccount, oauth);
    await res.text();
    assert.deepEqual(
      mock.requests.map((r) => r.auth),
      ["api-key", "bearer"],
      "the key once, then the next account",
    );
    assert.equal(mock.tokenRequests.length, tokenCalls, "a key is not refreshed");
    await flushPool(path);
    const after = account(path, keyed);
    assert.equal(after.status, "auth-error");
    assert.equal(after.key, key, "the refused key is kept");
    assert.ok(
      events.some((e) => e.kind === "auth-error" && e.email === keyed),
      JSON.stringify(events.map((e) => e.kind)),
    );
    mock.clearRequests();
    const again = await post(poolFetch);
    assert.equal(again.poolAccount, oauth);
    await again.text();
    assert.deepEqual(
      mock.requests.map((r) => r.auth),
      ["bearer"],
      "the refused key is not presented again",
    );
  });
}

// A token endpoint that takes the refresh and does not answer (an outage, a stalled proxy) held
// the request for the whole token call, 30 s and once more after a lost answer, though another
// account could have served it at once.
for (const transport of ["native", "runtime"]) {
  const slowRefresh = async (tag, { revoke }) => {
    const [slow, ready] = [`${tag}1-${transport}@x.test`, `${tag}2-${transport}@x.test`];
    const path = await seedPool(mock, [slow, ready], { expired: [slow] });
    const pool = readPool(path);
    pool.anthropic[0].priority = 9;
    await savePool(pool, path);
    if (revoke) mock.revoke(slow, { family: true });
    let release;
    mock.setTokenMode({ grant: "refresh_token", until: new Promise((r) => (release = r)) });
    const events = [];
    const poolFetch = createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
    const refreshed = mock.waitFor("token", (r) => r.grant === "refresh_token");
    const started = Date.now();
    let timer;
    const answer = await Promise.race([post(poolFetch), new Promise((r) => (timer = setTimeout(() => r("still waiting after 20 s"), 20_000)))]);
    clearTimeout(timer);
    await refreshed;
    release();
    assert.notEqual(answer, "still waiting after 20 s", "the request moved on before the token call's timeout");
    assert.equal(answer.status, 200);
    assert.equal(answer.poolAccount, ready);
    await answer.text();
    assert.ok(Date.now() - started >= 4_000, "the refresh had its few seconds first");
    return { path, slow, ready, poolFetch, events };
  };

  test(`${transport}: a refresh the token endpoint sits on holds the request a few seconds, not the token call's minute, when another account can serve; the refresh still lands`, async () => {
    const { path, slow } = await slowRefresh("sr", { revoke: false });
    // The refresh goes on without the request, and its new tokens are written.
    const deadline = Date.now() + 15_000;
    while (account(path, slow).refresh !== mock.tokens(slow).refresh && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(account(path, slow).refresh, mock.tokens(slow).refresh, "the rotated tokens were saved");
    assert.equal(mock.stats().perFamily[slow].refreshCalls, 1, "presented once");
  });

  test(`${transport}: what a refresh left behind by its request says (a dead login) comes with the next answer`, async () => {
    const { path, slow, ready, poolFetch, events } = await slowRefresh("sd", { revoke: true });
    const deadline = Date.now() + 15_000;
    while (account(path, slow).status !== "auth-error" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(account(path, slow).status, "auth-error");
    assert.ok(!events.some((e) => e.kind === "auth-error"), "not yet told: the first request had moved on");
    const next = await post(poolFetch);
    assert.equal(next.poolAccount, ready);
    await next.text();
    assert.ok(
      events.some((e) => e.kind === "auth-error" && e.email === slow),
      `told with the next answer: ${JSON.stringify(events)}`,
    );
  });
}

test("10 concurrent requests on an expired token: exactly one refresh", async () => {
  const path = await seedPool(mock, ["e1@x.test"], { expired: ["e1@x.test"] });
  mock.setTokenMode({ delayMs: 150, grant: "refresh_token" });
  const poolFetch = createPoolFetch({ path });
  const responses = await Promise.all(Array.from({ length: 10 }, () => post(poolFetch)));
  for (const r of responses) {
    assert.equal(r.status, 200);
    await r.text();
  }
  const fam = mock.stats().perFamily["e1@x.test"];
  assert.equal(fam.refreshCalls, 1);
  assert.equal(fam.reuse, 0);
  await flushPool(path);
  assert.equal(account(path, "e1@x.test").refresh, mock.tokens("e1@x.test").refresh);
});

test("4 processes x 3 requests on an expired token: one refresh, no reuse", async () => {
  const path = await seedPool(mock, ["p1@x.test"], { expired: ["p1@x.test"] });
  mock.setTokenMode({ delayMs: 200, grant: "refresh_token" });
  const results = await runWorkersTogether(workerPath, 4, [path, mock.url, "3"]);
  const flat = results.flatMap((r) => {
    assert.equal(r.code, 0);
    return JSON.parse(r.out);
  });
  assert.equal(flat.length, 12);
  assert.ok(
    flat.every((r) => r.status === 200),
    JSON.stringify(flat),
  );
  const fam = mock.stats().perFamily["p1@x.test"];
  assert.equal(fam.refreshCalls, 1);
  assert.equal(fam.reuse, 0);
  assert.equal(fam.revoked, false);
  assert.equal(mode(path), 0o600);
});

test("529 and 500 pass through and bench nobody", async () => {
  const path = await seedPool(mock, ["o1@x.test", "o2@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const first = await post(poolFetch);
  const served = first.poolAccount;
  await first.text();
  for (const status of [529, 500, 403, 400]) {
    mock.script(served, [{ status }]);
    mock.clearRequests();
    const res = await post(poolFetch);
    assert.equal(res.status, status);
    assert.equal(mock.requests.length, 1, `${status} not retried`);
    const err = await res.json();
    assert.equal(err.type, "error");
  }
  await flushPool(path);
  const a = account(path, served);
  assert.equal(a.rateLimitUntil, null);
  assert.notEqual(a.status, "auth-error");
});

for (const transport of ["native", "runtime"]) {
  test(`${transport}: an account the API refuses itself (credit too low, organization disabled, OAuth not allowed): its 400 or 403 is delivered as it is, nobody benched, and the account's lastError says what mends it`, async () => {
    const error = (type, message) => ({ type: "error", error: { type, message } });
    const refusals = [
      [
        "credit",
        400,
        error(
          "invalid_request_error",
          "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits.",
        ),
        /credit balance is too low \(400\): add credits/,
      ],
      ["disabled", 400, error("invalid_request_error", "This organization has been disabled."), /organization has been disabled \(400\)/],
      [
        "oauth",
        403,
        error("permission_error", "OAuth authentication is not allowed for this organization."),
        /does not allow OAuth logins \(403\): log in with an account of another organization/,
      ],
    ];
    for (const [name, status, body, why] of refusals) {
      const [refused, other] = [`${name}-a-${transport}@x.test`, `${name}-b-${transport}@x.test`];
      const path = await seedPool(mock, [refused, other]);
      const events = [];
      const poolFetch = createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
      const first = await post(poolFetch);
      await first.text();
      const served = first.poolAccount;
      mock.script(served, [{ status, body }]);
      mock.clearRequests();
      const res = await post(poolFetch);
      assert.equal(res.status, status, name);
      assert.deepEqual(await res.json(), body, name);
      assert.deepEqual(
        mock.requests.map((r) => r.email),
        [served],
        `${name}: not retried elsewhere`,
      );
      assert.ok(!events.some((e) => e.kind === "failover"), name);
      await flushPool(path);
      const a = account(path, served);
      assert.equal(a.rateLimitUntil, null, name);
      assert.notEqual(a.status, "auth-error", name);
      assert.notEqual(a.status, "rate-limited", name);
      assert.match(a.lastError, why, name);
      // Still the account in use: the next request goes to it again.
      mock.clearRequests();
      const again = await post(poolFetch);
      assert.equal(again.status, 200, name);
      assert.equal(again.poolAccount, served, name);
      await again.text();
    }
  });
}

test("a third-party refusal (400) is passed through, reported, and not retried elsewhere", async () => {
  const path = await seedPool(mock, ["t1@x.test", "t2@x.test"]);
  const events = [];
  const poolFetch = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  mock.scriptAll([
    {
      status: 400,
      body: { type: "error", error: { type: "invalid_request_error", message: "Third-party apps now draw from your extra usage, not your plan limits." } },
    },
  ]);
  mock.clearRequests();
  const res = await post(poolFetch);
  assert.equal(res.status, 400);
  assert.match((await res.json()).error.message, /Third-party/);
  assert.equal(mock.requests.length, 1);
  assert.ok(events.some((e) => e.kind === "third-party-refused"));
});

test("a subscription's third-party refusal in a pool with a Console key: delivered, not retried, and the next requests go to the key (until reset-cooldowns)", async () => {
  // Before, the sticky subscription was chosen for every request and every one was refused:
  // the key the person added for this never served.
  const path = await seedPool(mock, ["tp-sub@x.test"]);
  const key = "fake-console-key-third-party-next";
  mock.addApiKey(key, "tp-key@x.test");
  const pool = readPool(path);
  pool.anthropic[0].priority = 5;
  pool.anthropic.push(keyEntry("tp-key@x.test", key, 0));
  await savePool(pool, path);
  const refusal = {
    status: 400,
    body: { type: "error", error: { type: "invalid_request_error", message: "Third-party apps now draw from your extra usage, not your plan limits." } },
  };
  mock.script("tp-sub@x.test", [refusal, refusal]);
  const events = [];
  const poolFetch = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  mock.clearRequests();
  const first = await post(poolFetch);
  assert.equal(first.status, 400, "the refusal is delivered");
  await first.text();
  assert.deepEqual(
    mock.requests.map((r) => r.email),
    ["tp-sub@x.test"],
    "not retried on the key",
  );
  const told = events.find((e) => e.kind === "third-party-refused");
  assert.ok(told, "reported");
  assert.match(told.message, /next hour's requests go to the pool's Console keys/);
  for (let i = 0; i < 3; i++) {
    const next = await post(poolFetch);
    assert.equal(next.status, 200);
    assert.equal(next.poolAccount, "tp-key@x.test");
    await next.text();
  }
  assert.equal(mock.requests.filter((r) => r.email === "tp-sub@x.test").length, 1, "the subscription was not asked again");
  // reset-cooldowns lifts the rest: with the key disabled, the subscription is asked again (it
  // is refused again, and delivered) instead of every account resting.
  await resetCooldowns(path);
  await setEnabled("tp-key@x.test", false, path);
  const again = await post(poolFetch);
  assert.equal(again.poolAccount, "tp-sub@x.test");
  assert.equal(again.status, 400);
  await again.text();
});

test("after a third-party refusal sent requests to the pool's Console key, a key refused or disabled later hands them back to the subscriptions at once", async () => {
  // Before, the subscriptions went on resting for the hour after their refusal, with no key
  // left to serve: every request failed where a subscription could still answer.
  const refusal = {
    status: 400,
    body: { type: "error", error: { type: "invalid_request_error", message: "Third-party apps now draw from your extra usage, not your plan limits." } },
  };
  for (const end of ["refused", "disabled"]) {
    const sub = `tp-${end}-sub@x.test`;
    const keyName = `tp-${end}-key@x.test`;
    const path = await seedPool(mock, [sub]);
    const key = `fake-console-key-later-${end}`;
    // The refused key is one the API does not know (401); the disabled one works.
    if (end === "disabled") mock.addApiKey(key, keyName);
    const pool = readPool(path);
    pool.anthropic[0].priority = 5;
    pool.anthropic.push(keyEntry(keyName, key, 0));
    await savePool(pool, path);
    mock.script(sub, [refusal]);
    const poolFetch = createPoolFetch({ path });
    const first = await post(poolFetch);
    assert.equal(first.status, 400, "the refusal is delivered");
    await first.text();
    if (end === "disabled") {
      const viaKey = await post(poolFetch);
      assert.equal(viaKey.poolAccount, keyName, "the key serves the next request");
      await viaKey.text();
      await setEnabled(keyName, false, path);
    }
    mock.clearRequests();
    const next = await post(poolFetch);
    assert.equal(next.status, 200, `${end}: the subscription answers`);
    assert.equal(next.poolAccount, sub);
    await next.text();
    assert.deepEqual(
      mock.requests.map((r) => r.email),
      end === "refused" ? [null, sub] : [sub],
      end === "refused" ? "the key's 401, then the subscription, in the same request" : "straight to the subscription",
    );
  }
});

test("abort before sending and in the middle of a stream", async () => {
  const path = await seedPool(mock, ["ab@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const early = new AbortController();
  early.abort();
  await assert.rejects(post(poolFetch, {}, { signal: early.signal }), (e) => e.name === "AbortError");

  mock.script("ab@x.test", [{ hang: true }]);
  const waiting = new AbortController();
  const arrived = mock.waitFor("api", (r) => r.email === "ab@x.test");
  const pending = post(poolFetch, {}, { signal: waiting.signal });
  await arrived; // the request is upstream, waiting for headers that never come
  waiting.abort();
  await assert.rejects(pending, (e) => e.name === "AbortError");

  mock.script("ab@x.test", [{ sse: true, text: "x".repeat(400), chunkSize: 8, delayMs: 20 }]);
  const mid = new AbortController();
  const res = await post(poolFetch, { stream: true }, { signal: mid.signal });
  const reader = res.body.getReader();
  const firstChunk = await reader.read();
  assert.equal(firstChunk.done, false);
  mid.abort();
  await assert.rejects(
    (async () => {
      for (;;) {
        const { done } = await reader.read();
        if (done) throw new Error("stream ended normally after abort");
      }
    })(),
    (e) => e.name === "AbortError",
  );

  // A small answer, whole when fetch resolved: aborted before its body is read, the read fails
  // with the signal's reason, as Node's own fetch does (it was read as if nothing happened).
  // Bun's `Response` takes such a body's bytes themselves (README: Aborting).
  if (typeof Bun === "undefined") {
    const after = new AbortController();
    const whole = await post(poolFetch, {}, { signal: after.signal });
    assert.equal(whole.status, 200);
    after.abort(new Error("the person pressed Esc"));
    await assert.rejects(whole.text(), /the person pressed Esc/);
  }
});

test("tiny chunks pass through byte-exact, and errors inside a 200 stream pass unchanged", async () => {
  const path = await seedPool(mock, ["ch@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const text = "héllo wörld ✓ ".repeat(20);
  mock.script("ch@x.test", [
    { sse: true, text, chunkSize: 1 },
    { sse: true, text, chunkSize: 4096 },
  ]);
  const small = await (await post(poolFetch, { stream: true })).text();
  const big = await (await post(poolFetch, { stream: true })).text();
  const strip = (s) => s.replace(/"id":"[^"]*"/g, "").replace(/msg_[A-Za-z0-9_-]+/g, "");
  assert.equal(strip(small), strip(big));
  const joined = parseSSE(small)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");
  assert.equal(joined, text);
  mock.script("ch@x.test", [{ sse: true, errorAfterDeltas: 2 }]);
  mock.clearRequests();
  const res = await post(poolFetch, { stream: true });
  assert.equal(res.status, 200);
  const events = parseSSE(await res.text());
  assert.equal(events.at(-1).event, "error");
  assert.equal(mock.requests.length, 1, "never replayed");
});

test("a connection reset mid-stream errors the stream and is never replayed", async () => {
  const path = await seedPool(mock, ["rs@x.test", "rs2@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const warm = await post(poolFetch);
  const served = warm.poolAccount;
  await warm.text();
  // Reset after the first content event began (a reset in the stream's opening, before any
  // content, fails the request itself: stream-failover.test.mjs).
  mock.script(served, [{ sse: true, resetAfterBytes: 600 }]);
  mock.clearRequests();
  const res = await post(poolFetch, { stream: true });
  await assert.rejects(res.text());
  assert.equal(mock.requests.length, 1);
  await flushPool(path);
  assert.equal(account(path, served).rateLimitUntil, null);
});

test("request bodies given as a ReadableStream, a Request object and a URL", async () => {
  const path = await seedPool(mock, ["rb@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const payload = body({ metadata: { user_id: "stream-body" } });
  const stream = new ReadableStream({
    start(c) {
      const bytes = new TextEncoder().encode(payload);
      c.enqueue(bytes.slice(0, 10));
      c.enqueue(bytes.slice(10));
      c.close();
    },
  });
  mock.clearRequests();
  const res = await poolFetch(new URL(messagesUrl(mock)), { method: "POST", headers: jsonHeaders, body: stream, duplex: "half" });
  assert.equal(res.status, 200);
  await res.text();
  assert.equal(mock.requests.at(-1).body, payload);
  const req = new Request(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: payload });
  const res2 = await poolFetch(req);
  assert.equal(res2.status, 200);
  assert.equal((await res2.json()).type, "message");
  // Text (beyond ASCII too) and bytes arrive byte for byte.
  const text = JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 1, messages: [{ role: "user", content: "héllo — ✓ 你好" }] });
  for (const sent of [text, new TextEncoder().encode(text)]) {
    const res3 = await poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: sent });
    assert.equal(res3.status, 200);
    await res3.text();
    assert.equal(mock.requests.at(-1).body, text);
  }
});

// Bounded: before the fix the first request never settled.
test("a request body stream that never ends yields to the caller's abort; one that fails or floods is INVALID_ARGUMENT", { timeout: 20_000 }, async () => {
  const path = await seedPool(mock, ["stall-body@x.test"]);
  for (const transport of ["native", "runtime"]) {
    const poolFetch = createPoolFetch({ path, transport });
    mock.clearRequests();
    const endless = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode('{"model":'));
      },
    });
    const stop = new AbortController();
    setTimeout(() => stop.abort(new Error("caller gave up")), 200);
    const started = Date.now();
    await assert.rejects(
      poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: endless, duplex: "half", signal: stop.signal }),
      (e) => e.message === "caller gave up",
      transport,
    );
    assert.ok(Date.now() - started < 2000, `${transport}: ${Date.now() - started} ms`);
    const failing = new ReadableStream({
      pull(c) {
        c.error(new Error("disk went away"));
      },
    });
    await assert.rejects(
      poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: failing, duplex: "half" }),
      (e) => e.code === "INVALID_ARGUMENT" && /request body could not be read: disk went away/.test(e.message),
      transport,
    );
    // Held for a retry, a body is bounded: one that never stops coming ends at 512 MB (the same
    // 4 MB chunk again and again, so the test itself holds little).
    const chunk = new Uint8Array(4 << 20);
    const flood = new ReadableStream({
      pull(c) {
        c.enqueue(chunk);
      },
    });
    await assert.rejects(
      poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: flood, duplex: "half" }),
      (e) => e.code === "INVALID_ARGUMENT" && /over 512 MB/.test(e.message),
      transport,
    );
    assert.equal(mock.requests.length, 0, `${transport}: nothing was sent`);
  }
});

test("what fetch refuses, the pool refuses with INVALID_ARGUMENT before anything is sent", async () => {
  const path = await seedPool(mock, ["refused-input@x.test"]);
  const url = messagesUrl(mock);
  const withCredentials = url.replace("://", "://user:secret@");
  for (const transport of ["native", "runtime"]) {
    const poolFetch = createPoolFetch({ path, transport });
    const used = new Request(url, { method: "POST", headers: jsonHeaders, body: body() });
    await used.text();
    const cases = {
      "a used Request": [used],
      "a method that is not a token": [url, { method: "GE T" }],
      CONNECT: [url, { method: "CONNECT" }],
      "a forbidden method in lower case": [url, { method: "trace" }],
      "a data: URL": ["data:text/plain,hello"],
      "a file: URL": ["file:///etc/passwd"],
      "a user name and password in the URL": [withCredentials, { method: "POST", headers: jsonHeaders, body: body() }],
      "a signal that is not one": [url, { method: "POST", headers: jsonHeaders, body: body(), signal: {} }],
      // Found by a review: each came back as the caller's own uncoded Error.
      "a signal whose `aborted` throws": [
        url,
        {
          method: "POST",
          headers: jsonHeaders,
          body: body(),
          signal: Object.defineProperty({ addEventListener() {} }, "aborted", {
            get: () => {
              throw new Error("getter");
            },
          }),
        },
      ],
      "a signal that is a Proxy whose traps throw": [
        url,
        {
          method: "POST",
          headers: jsonHeaders,
          body: body(),
          signal: new Proxy(
            {},
            {
              get: () => {
                throw new Error("trap");
              },
            },
          ),
        },
      ],
      "a signal whose addEventListener throws": [
        url,
        {
          method: "POST",
          headers: jsonHeaders,
          body: body(),
          signal: {
            aborted: false,
            addEventListener: () => {
              throw new Error("add");
            },
          },
        },
      ],
      "a GET with a body": [url, { method: "GET", body: "x" }],
      "a HEAD with a body": [url, { method: "head", body: "x" }],
      "a user name alone in the URL (a token put there)": [url.replace("://", "://secret@"), { method: "POST", headers: jsonHeaders, body: body() }],
      // The mock's own (fake) access token of this account, passed by mistake as the URL.
      "a token where the URL goes": [readPool(path).anthropic[0].access],
    };
    mock.clearRequests();
    for (const [name, args] of Object.entries(cases)) {
      await assert.rejects(
        poolFetch(...args),
        (e) => e.code === "INVALID_ARGUMENT" && !e.message.includes("secret") && !e.message.includes(readPool(path).anthropic[0].access),
        `${transport}: ${name}`,
      );
    }
    assert.equal(mock.requests.length, 0, `${transport}: nothing was sent`);
    const reused = await poolFetch(used, { body: body() });
    assert.equal(reused.status, 200, `${transport}: a used Request with a new body is fine`);
    await reused.text();
  }
});

test("a signal that is not the runtime's own (a polyfill's, another realm's) still aborts the request, on both transports", async () => {
  const path = await seedPool(mock, ["polyfill-signal@x.test"]);
  for (const transport of ["native", "runtime"]) {
    const poolFetch = createPoolFetch({ path, transport });
    // What the pool uses of a signal: `aborted`, `reason` and its abort event.
    const listeners = [];
    const signal = {
      aborted: false,
      reason: undefined,
      addEventListener: (type, listener) => type === "abort" && listeners.push(listener),
      removeEventListener() {},
    };
    mock.script("polyfill-signal@x.test", [{ hang: true }]);
    const pending = poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(), signal });
    await mock.waitFor("api", (r) => r.email === "polyfill-signal@x.test");
    Object.assign(signal, { aborted: true, reason: new Error("stopped by the polyfill") });
    for (const listener of listeners) listener({ type: "abort" });
    await assert.rejects(pending, (e) => e.message === "stopped by the polyfill" || e.name === "AbortError", transport);
  }
});

test("requests to other hosts never carry a pool credential", async () => {
  const path = await seedPool(mock, ["oh@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const other = mock.url.replace("127.0.0.1", "localhost");
  mock.clearRequests();
  const res = await poolFetch(`${other}/v1/messages`, { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 401);
  assert.equal(res.poolAccount, null, "no account served it (index.d.ts)");
  await res.text();
  assert.equal(mock.requests.at(-1).auth, null);
});

for (const transport of ["native", "runtime"]) {
  test(`${transport}: a request to another origin goes with the caller's own headers, its credential and session included, as fetch sends them`, async () => {
    // The API's rules were applied to every URL: the caller's `authorization`, `x-api-key`
    // and session headers never reached its own server.
    const path = await seedPool(mock, [`${transport}-elsewhere@x.test`]);
    const poolFetch = createPoolFetch({ path, transport });
    const other = mock.url.replace("127.0.0.1", "localhost");
    const given = {
      authorization: "Bearer callers-own",
      "x-api-key": "callers-key",
      "x-session-affinity": "s-1",
      "x-parent-session-id": "p-1",
      "x-opencode-project": "proj",
      "content-type": "application/json",
      "x-a": "1",
    };
    const seen = async (f) => {
      mock.clearRequests();
      const res = await f(`${other}/v1/messages`, { method: "POST", headers: given, body: body() });
      await res.arrayBuffer();
      const { headers } = mock.requests.at(-1);
      return Object.fromEntries(Object.keys(given).map((name) => [name, headers[name]]));
    };
    try {
      const expected = await seen(fetch);
      assert.deepEqual(expected, given);
      assert.deepEqual(await seen(poolFetch), expected);
    } finally {
      // Later tests look for session headers among the mock's requests: these went elsewhere.
      mock.clearRequests();
    }
  });
}

for (const transport of ["native", "runtime"]) {
  test(`${transport}: the client's address, a proxy's account of the hop and cookies stay off the API, and go to another origin as fetch sends them`, async () => {
    const path = await seedPool(mock, [`${transport}-proxied@x.test`]);
    const poolFetch = createPoolFetch({ path, transport });
    const given = {
      "x-forwarded-for": "203.0.113.7",
      "x-forwarded-host": "pool.example",
      "x-forwarded-proto": "https",
      forwarded: "for=203.0.113.7",
      "x-real-ip": "203.0.113.7",
      "true-client-ip": "203.0.113.7",
      "cf-connecting-ip": "203.0.113.7",
      "x-client-ip": "203.0.113.7",
      cookie: "sid=person-0123",
      "content-type": "application/json",
      "x-a": "1",
    };
    const seen = async (f, url) => {
      mock.clearRequests();
      const res = await f(url, { method: "POST", headers: given, body: body() });
      await res.arrayBuffer();
      const { headers } = mock.requests.at(-1);
      return Object.fromEntries(Object.keys(given).map((name) => [name, headers[name]]));
    };
    try {
      const api = await seen(poolFetch, `${mock.url}/v1/messages`);
      assert.deepEqual(
        Object.keys(api).filter((name) => api[name] !== undefined),
        ["content-type", "x-a"],
      );
      const other = `${mock.url.replace("127.0.0.1", "localhost")}/v1/messages`;
      assert.deepEqual(await seen(poolFetch, other), await seen(fetch, other));
    } finally {
      mock.clearRequests();
    }
  });
}

test("an empty pool and a pool of dead accounts give a clear typed error", async () => {
  const path = await seedPool(mock, []);
  const poolFetch = createPoolFetch({ path });
  await assert.rejects(post(poolFetch), (e) => e.code === "POOL_NO_ACCOUNT" && /no accounts/.test(e.message));
  const pool = await loadPool(path);
  pool.anthropic.push({ email: "dead@x.test", refresh: "r-dead-fetch-test", access: "a", expires: 1, status: "auth-error", rateLimitUntil: null });
  await savePool(pool, path);
  await assert.rejects(post(poolFetch), (e) => e.code === "POOL_NO_ACCOUNT" && /dead@x\.test \(auth-error\)/.test(e.message));
});

// aidevops v1 sent the request as the caller gave it, with no credential, when no account was
// usable (reference-spec bug 6). On either transport, a pool with nothing usable is
// POOL_NO_ACCOUNT, and nothing reaches the API, with or without a credential.
for (const transport of ["native", "runtime"]) {
  test(`${transport}: no usable account (none, all disabled, every login refused): POOL_NO_ACCOUNT and nothing sent upstream`, async () => {
    const path = await seedPool(mock, ["nothing-a@x.test", "nothing-b@x.test"]);
    const full = await loadPool(path);
    const states = {
      none: [],
      disabled: full.anthropic.map((a) => ({ ...a, enabled: false })),
    };
    mock.clearRequests();
    const before = mock.stats().unauthenticated;
    for (const [state, anthropic] of Object.entries(states)) {
      await savePool({ ...full, anthropic }, path);
      const f = createPoolFetch({ path, transport });
      await assert.rejects(post(f), (e) => e.code === "POOL_NO_ACCOUNT", state);
    }
    // Logins the token endpoint refuses: each refresh token is presented once, then never again.
    mock.revoke("nothing-a@x.test", { family: true });
    mock.revoke("nothing-b@x.test", { family: true });
    const dead = full.anthropic.map((a) => ({ ...a, expires: Date.now() - 1000 }));
    await savePool({ ...full, anthropic: dead }, path);
    const f = createPoolFetch({ path, transport });
    await assert.rejects(post(f), (e) => e.code === "POOL_NO_ACCOUNT", "logins refused at the token endpoint");
    await assert.rejects(post(f), (e) => e.code === "POOL_NO_ACCOUNT", "asked again");
    assert.deepEqual(
      mock.requests.map((r) => `${r.method} ${r.path}`),
      [],
      "nothing sent upstream",
    );
    assert.equal(mock.stats().unauthenticated, before, "no request without a credential");
  });
}

test("an entry with no token, or an API-key entry whose key is under another name, is passed over and said as such, not as idle", async () => {
  const path = await seedPool(mock, ["has-token@x.test"]);
  const pool = await loadPool(path);
  const now = new Date().toISOString();
  const tokenless = { email: "tokenless@x.test", added: now, lastUsed: null, status: "idle", rateLimitUntil: null, priority: 9 };
  // `apiKey` is no field of the pool's: the entry has no key.
  const keyless = { email: "keyless@x.test", type: "api", apiKey: "misplaced", added: now, lastUsed: null, status: "idle", rateLimitUntil: null, priority: 9 };
  pool.anthropic.unshift(tokenless, keyless);
  await savePool(pool, path);
  mock.clearRequests();
  const res = await post(createPoolFetch({ path }));
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "has-token@x.test");
  await res.text();
  assert.deepEqual(
    mock.requests.map((r) => r.email),
    ["has-token@x.test"],
    "nothing sent without a credential",
  );
  // With only those left, the refusal names what each lacks and what to do. It said
  // "tokenless@x.test (idle), keyless@x.test (idle)": idle is usable, and nothing told why not.
  pool.anthropic = pool.anthropic.filter((a) => a.email !== "has-token@x.test");
  await savePool(pool, path);
  await assert.rejects(post(createPoolFetch({ path })), (e) => {
    assert.equal(e.code, "POOL_NO_ACCOUNT");
    assert.match(e.message, /tokenless@x\.test \(no token\), keyless@x\.test \(no key\)\. /);
    assert.match(
      e.message,
      /One with no token needs a login \(`oauth-pool add`, or OpenCode's Anthropic Pool login \(`opencode auth login` on 1\.18, `\/connect` on 2\.x\)\)/,
    );
    assert.match(e.message, /an API-key entry with no `key` needs one \(`oauth-pool add-key --email <email>`\)/);
    assert.doesNotMatch(e.message, /idle/);
    return true;
  });
  assert.equal(mock.requests.length, 1, "still nothing sent");
});

test("a refused key left alone in the pool: the refusal says to add a working key, not to log in (no login mends a key)", async () => {
  const path = tempPoolPath();
  await savePool({ version: 1, anthropic: [keyEntry("team-key", "fake-console-key-nobody-knows", 0)] }, path);
  const f = createPoolFetch({ path });
  const first = await post(f).then(
    async (r) => {
      await r.arrayBuffer();
      return r.status;
    },
    (e) => e.code,
  );
  assert.ok(first === 401 || first === "POOL_NO_ACCOUNT", `the key refused: ${first}`);
  await assert.rejects(post(f), (e) => {
    assert.equal(e.code, "POOL_NO_ACCOUNT");
    assert.match(
      e.message,
      /team-key \(auth-error\)\. API keys in auth-error were refused: add a working key under the same name \(`oauth-pool add-key --email <email>`\)/,
    );
    assert.doesNotMatch(e.message, /new login|oauth-pool add\b(?!-key)/);
    return true;
  });
});

test("the Vercel AI SDK streams through the pool fetch", async () => {
  const { streamText } = await import("ai");
  const { createAnthropic } = await import("@ai-sdk/anthropic");
  const path = await seedPool(mock, ["ai1@x.test", "ai2@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const first = await post(poolFetch);
  const served = first.poolAccount;
  await first.text();
  mock.script(served, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60, fiveHourReset: Math.floor(Date.now() / 1000) + 600 }) }]);
  const anthropic = createAnthropic({ baseURL: `${mock.url}/v1`, apiKey: "", fetch: poolFetch });
  const result = streamText({ model: anthropic("claude-sonnet-4-5"), prompt: "hi", maxRetries: 0 });
  let text = "";
  for await (const part of result.textStream) text += part;
  const other = served === "ai1@x.test" ? "ai2@x.test" : "ai1@x.test";
  assert.equal(text, `Hello from ${other}`);
});

test("session affinity: sessions keep their account, subagents inherit their parent's", async () => {
  const path = await seedPool(mock, ["sa1@x.test", "sa2@x.test"]);
  const poolFetch = createPoolFetch({ path });
  const ask = async (headers) => {
    const res = await post(poolFetch, {}, { headers: { ...jsonHeaders, ...headers } });
    await res.text();
    return res.poolAccount;
  };
  const first = await ask({ "x-session-affinity": "ses_one" });
  const other = first === "sa1@x.test" ? "sa2@x.test" : "sa1@x.test";
  mock.script(first, [{ status: 429, headers: { "retry-after": "1" } }]);
  assert.equal(await ask({ "x-session-affinity": "ses_two" }), other, "a burst 429 moves the new session");
  await resetCooldowns(path); // the burst is over
  assert.equal(await ask({ "x-session-affinity": "ses_one" }), first, "ses_one goes back to its own account");
  assert.equal(await ask({ "X-Session-Id": "ses_sub2", "x-parent-session-id": "ses_two" }), other);
  assert.equal(await ask({ "X-Session-Id": "ses_sub1", "x-parent-session-id": "ses_one" }), first);
  assert.ok(mock.requests.every((r) => r.headers["x-session-affinity"] === undefined && r.headers["x-parent-session-id"] === undefined));
});

// README, "How a request is served", step 3: the caller's headers go upstream minus credentials,
// hop-by-hop ones (`expect` too), length, `accept-encoding` and session headers. Each class, as a
// caller of the library can send it: a wrong length or an `expect` forwarded broke the request,
// a proxy's credential or a session id would leave for the API.
for (const transport of ["native", "runtime"]) {
  test(`${transport}: the hop's, length, encoding, credential and session headers stay here; the rest go upstream`, async () => {
    const path = await seedPool(mock, [`hops-${transport}@x.test`]);
    const poolFetch = createPoolFetch({ path, transport });
    mock.clearRequests();
    const headers = {
      ...jsonHeaders,
      expect: "100-continue",
      "content-length": "3",
      "transfer-encoding": "chunked",
      "accept-encoding": "br",
      te: "trailers",
      connection: "keep-alive, x-hop",
      "x-hop": "named by connection",
      "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
      authorization: "Bearer caller-own-token",
      "x-session-id": "ses_hops",
      "x-opencode-project": "prj_hops",
      "x-kept": "yes",
    };
    const res = await post(poolFetch, {}, { headers });
    assert.equal(res.status, 200);
    await res.text();
    const sent = mock.requests.at(-1).headers;
    assert.equal(sent["x-kept"], "yes");
    for (const name of ["expect", "te", "x-hop", "proxy-authorization", "x-session-id", "x-opencode-project"]) assert.equal(sent[name], undefined, name);
    assert.notEqual(sent["content-length"], "3", "the length is the body's");
    assert.notEqual(sent["accept-encoding"], "br", "the client's own");
    assert.equal(sent["transfer-encoding"] === "chunked" && sent["content-length"] !== undefined, false);
    assert.ok(!JSON.stringify(sent).includes("caller-own-token"), "the pool's credential, not the caller's");
  });
}

// gzip is undone by the pool as the bytes come (`coding.rs`): an event stream compressed and
// flushed event by event reaches the caller event by event, not when the stream ends.
test("a gzip event stream arrives decoded event by event, before the stream ends", async () => {
  const { createServer } = await import("node:http");
  const { createGzip, constants } = await import("node:zlib");
  let release;
  const held = new Promise((r) => (release = r));
  const server = createServer(async (_req, res) => {
    res.writeHead(200, { "content-type": "text/event-stream", "content-encoding": "gzip" });
    const gzip = createGzip();
    gzip.pipe(res);
    gzip.write('event: ping\ndata: {"n":1}\n\n');
    gzip.flush(constants.Z_SYNC_FLUSH);
    await held;
    gzip.end('event: ping\ndata: {"n":2}\n\n');
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const path = await seedPool(mock, []);
    const res = await createPoolFetch({ path })(`http://127.0.0.1:${server.address().port}/events`);
    assert.equal(res.headers.get("content-encoding"), null);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let seen = "";
    while (!seen.includes("\n\n")) seen += decoder.decode((await reader.read()).value, { stream: true });
    assert.equal(seen, 'event: ping\ndata: {"n":1}\n\n', "the first event, while the second is held");
    release();
    for (let r = await reader.read(); !r.done; r = await reader.read()) seen += decoder.decode(r.value, { stream: true });
    assert.equal(seen, 'event: ping\ndata: {"n":1}\n\nevent: ping\ndata: {"n":2}\n\n');
  } finally {
    release();
    server.close();
  }
});

test("content encoding stays truthful: a gzip answer arrives decoded, without content-encoding; one coded twice as it came, saying so", async () => {
  const { createServer } = await import("node:http");
  const { gzipSync } = await import("node:zlib");
  const plain = JSON.stringify({ ok: true, text: "é".repeat(1000) });
  const twice = gzipSync(gzipSync(plain));
  const server = createServer((req, res) => {
    if (req.url === "/twice") {
      // Two lines: reqwest's decoder undid the first gzip and dropped both names, so the caller
      // got gzip bytes labelled plain.
      res.writeHead(200, { "content-type": "application/json", "content-encoding": ["gzip", "gzip"], "content-length": twice.length });
      return res.end(twice);
    }
    const gz = gzipSync(plain);
    res.writeHead(200, {
      "content-type": "application/json",
      "content-encoding": "gzip",
      "content-length": gz.length,
      "x-saw-accept-encoding": req.headers["accept-encoding"] ?? "",
    });
    res.end(gz);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  try {
    const path = await seedPool(mock, []);
    const res = await createPoolFetch({ path })(`http://127.0.0.1:${server.address().port}/x`, { headers: { "accept-encoding": "br" } });
    assert.equal(res.headers.get("content-encoding"), null);
    assert.match(res.headers.get("x-saw-accept-encoding"), /gzip/);
    assert.equal(await res.text(), plain);
    const coded = await createPoolFetch({ path })(`http://127.0.0.1:${server.address().port}/twice`);
    assert.equal(coded.headers.get("content-encoding"), "gzip, gzip");
    assert.deepEqual(Buffer.from(await coded.arrayBuffer()), twice);
  } finally {
    server.close();
  }
});

// anchors.md section 0 and "reference-spec bugs": the peers rewrite the system prompt
// ("OpenCode" -> "Claude Code"), prefix tool names with `mcp_` (and un-prefix them in the
// answer, chunk by chunk), add `?beta=true`, say `claude-cli/...` and Stainless headers. The
// pool does none of it: upstream gets the caller's own request with only the credential, the
// OAuth beta and (when the caller named none) its own user-agent, and the caller gets the answer's
// bytes as they came.
for (const transport of ["native", "runtime"]) {
  test(`${transport}: what reaches the API is the caller's request plus only the bearer and the OAuth beta, and the answer comes back unrewritten`, async () => {
    const path = await seedPool(mock, ["wire@x.test"]);
    const poolFetch = createPoolFetch({ path, transport });
    const sent = JSON.stringify({
      model: "claude-sonnet-4-5",
      max_tokens: 64,
      stream: true,
      system: [{ type: "text", text: "You are OpenCode, the opencode agent." }],
      tools: [{ name: "read", description: "opencode tool", input_schema: { type: "object" } }],
      messages: [{ role: "user", content: [{ type: "tool_result", tool_use_id: "t1", content: "OpenCode" }] }],
    });
    // A tool_use named like the peers' prefix, its name split across two chunks.
    const answer = [
      'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t2","name":"mcp_',
      'read","input":{}}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n',
    ];
    // What any HTTP client adds of its own.
    const hop = ["accept", "accept-encoding", "content-length", "host"];
    // The runtime's own fetch says `connection`, and Node's adds these two whatever it is told
    // (README, "Known limits, measured").
    if (transport === "runtime") hop.push("connection", ...(process.versions.bun ? [] : ["accept-language", "sec-fetch-mode"]));
    for (const [caller, ua] of [
      [{}, /^opencode-oauth-pool\/\d/],
      [{ "user-agent": "opencode/1.18.33" }, /^opencode\/1\.18\.33$/],
    ]) {
      mock.script("wire@x.test", [{ raw: answer, headers: { "content-type": "text/event-stream" } }]);
      mock.clearRequests();
      const headers = {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "callers-placeholder",
        "x-session-affinity": "ses_wire",
        "x-session-id": "ses_wire",
        "x-parent-session-id": "ses_parent",
        "x-custom-trace": "t-1",
        ...caller,
      };
      const res = await poolFetch(`${mock.url}/v1/messages`, { method: "POST", headers, body: sent });
      assert.equal(res.status, 200);
      assert.equal(await res.text(), answer.join(""), "the answer's bytes as they came: no tool name un-prefixed");
      assert.equal(mock.requests.length, 1);
      const seen = mock.requests[0];
      assert.equal(seen.path, "/v1/messages", "no ?beta=true added");
      assert.equal(seen.body, sent, "the body byte for byte: no system prompt, no tool prefix");
      assert.deepEqual(
        Object.keys(seen.headers).sort(),
        ["anthropic-beta", "anthropic-version", "authorization", "content-type", "user-agent", "x-custom-trace", ...hop].sort(),
        "no header of another client's, no session id upstream, nothing else added",
      );
      assert.equal(seen.headers.authorization, `Bearer ${mock.tokens("wire@x.test").access}`);
      assert.equal(seen.headers["anthropic-beta"], "oauth-2025-04-20");
      assert.match(seen.headers["user-agent"], ua);
      assert.ok(!/claude-cli|claude-code/i.test(seen.headers["user-agent"]));
    }
  });
}
