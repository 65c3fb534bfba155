// Faults, bad input and passive quota tracking (issue 6), through the real addon.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { createPoolFetch, loadPool, savePool, poolStatus, flushPool, setEnabled, refresh, refreshAccount, removeAccount, resetCooldowns } from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, account, readPool, messagesUrl, body, jsonHeaders, tempPoolPath, runWorkersTogether } from "./helpers/pool-env.mjs";

const mock = useMock();
const WORKER = fileURLToPath(new URL("./helpers/pool-worker.mjs", import.meta.url));
const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const FLOCK = ["/usr/bin/flock", "/bin/flock"].find((p) => existsSync(p));

const post = (f, init = {}) => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(), ...init });
const setPriority = async (path, email, priority) => {
  const pool = readPool(path);
  pool.anthropic.find((a) => a.email === email).priority = priority;
  await savePool(pool, path);
};

test("token rotated then the answer lost: one more try with the same token, then auth-error, never a loop", async () => {
  const path = await seedPool(mock, ["lost1@x.test", "lost2@x.test"], { expired: ["lost1@x.test"] });
  await setPriority(path, "lost1@x.test", 5);
  mock.setTokenMode({ commitThenDrop: true, grant: "refresh_token" });
  const res = await post(createPoolFetch({ path }));
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "lost2@x.test");
  await res.text();
  assert.equal(mock.stats().perFamily["lost1@x.test"].refreshCalls, 2);
  await flushPool(path);
  const a = account(path, "lost1@x.test");
  assert.equal(a.status, "auth-error");
  assert.ok(a.refresh && a.access, "tokens kept");
});

// The successor of a rotated refresh token must never be thrown away: the server has spent
// the one presented. RFC 6749 makes `expires_in` only RECOMMENDED; a refresh answer with new
// tokens whose lifetime was missing or said another way (a string, 0, negative, null, past any
// sane one) was refused whole as a bad answer, its new refresh token dropped and the spent one
// kept: the next refresh presented it, and the login was revoked (Claude Code #90688, a
// rotation's answer lost, in another form).
test("a refresh answer with new tokens whose expires_in is missing or odd, or whose JSON only JavaScript reads: the new tokens are kept and serve, and the spent one is never presented again", async () => {
  const shapes = {
    missing: (b) => ({ ...b, expires_in: undefined }),
    null: (b) => ({ ...b, expires_in: null }),
    string: (b) => ({ ...b, expires_in: String(b.expires_in) }),
    zero: (b) => ({ ...b, expires_in: 0 }),
    negative: (b) => ({ ...b, expires_in: -5 }),
    huge: (b) => ({ ...b, expires_in: 1e12 }),
    words: (b) => ({ ...b, expires_in: "eight hours" }),
    // Text JSON.parse reads and serde_json refused whole (found by a review): the lifetime past
    // any double, a byte order mark, a lone surrogate escape in another field.
    overflowing: { retext: (t) => t.replace(/"expires_in":\d+/, '"expires_in":1e400') },
    marked: { retext: (t) => `\ufeff${t}` },
    halfPair: { retext: (t) => t.replace('"scope":"', '"scope":"\\ud83d ') },
    // Bytes after the answer (a review, 2026-12-07, second): refused whole, the spent token was
    // presented again after the endpoint's rest, and the login revoked.
    trailing: { retext: (t) => `${t}\n<!-- served by proxy -->` },
    secondDocument: { retext: (t) => `${t}{"note":1}` },
  };
  for (const [shape, reshape] of Object.entries(shapes)) {
    const [first, second] = [`odd-life-${shape}@x.test`, `odd-life-${shape}-b@x.test`];
    const path = await seedPool(mock, [first, second], { expired: [first] });
    await setPriority(path, first, 5);
    mock.setTokenMode({ grant: "refresh_token", ...(typeof reshape === "function" ? { reshape } : reshape) });
    const res = await post(createPoolFetch({ path }));
    assert.equal(res.status, 200, shape);
    assert.equal(res.poolAccount, first, `${shape}: served with the new tokens`);
    await res.text();
    await flushPool(path);
    const stored = account(path, first);
    assert.equal(stored.refresh, mock.tokens(first).refresh, `${shape}: the successor is in the file, not the spent token`);
    assert.ok(stored.expires > Date.now() + 10 * 60_000, `${shape}: a lifetime to serve with (${stored.expires - Date.now()} ms)`);
    assert.ok(stored.expires <= Date.now() + 366 * 86400_000, shape);
    assert.notEqual(stored.status, "auth-error", shape);
    // The next refresh presents the successor: the login lives on.
    await refreshAccount(first, path);
    const family = mock.stats().perFamily[first];
    assert.equal(family.reuse, 0, `${shape}: ${JSON.stringify(family)}`);
    assert.equal(family.revoked, false, shape);
    assert.equal(family.refreshCalls, 2, shape);
  }
});

test("token rotated then the answer lost, at an endpoint with a reuse grace window: the one retry gets the new tokens, which are saved and serve", async (t) => {
  const path = await seedPool(mock, ["grace1@x.test", "grace2@x.test"], { expired: ["grace1@x.test"] });
  await setPriority(path, "grace1@x.test", 5);
  mock.setReuseGrace(10_000);
  t.after(() => mock.setReuseGrace(0));
  mock.setTokenMode({ commitThenDrop: true, grant: "refresh_token" });
  const graceBefore = mock.stats().graceHits;
  const res = await post(createPoolFetch({ path }));
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "grace1@x.test", "served by the account whose answer was lost");
  await res.text();
  const fam = mock.stats().perFamily["grace1@x.test"];
  assert.deepEqual({ calls: fam.refreshCalls, reuse: fam.reuse, revoked: fam.revoked }, { calls: 2, reuse: 0, revoked: false });
  assert.equal(mock.stats().graceHits, graceBefore + 1);
  await flushPool(path);
  const a = account(path, "grace1@x.test");
  assert.equal(a.refresh, mock.tokens("grace1@x.test").refresh, "the tokens the retry got are saved");
  assert.notEqual(a.status, "auth-error");
});

// An unusable expires_in is taken as an hour (above); an unusable access token cannot be.
test("a refresh answered 200 with a new refresh token and the rest unusable keeps that token: the login lives, the endpoint rests, the next refresh presents it", async () => {
  const edits = {
    "no access_token": { access_token: undefined },
    "an access_token no header can carry": { access_token: "at\r\nx-injected: 1" },
  };
  const emails = Object.keys(edits).map((_, i) => `rotated${i}@x.test`);
  const path = await seedPool(mock, [...emails, "spare@x.test"], { expired: emails });
  for (const [i, [what, edit]] of Object.entries(edits).entries()) {
    const email = emails[i];
    const before = account(path, email);
    mock.setTokenMode({ grant: "refresh_token", edit });
    await assert.rejects(refreshAccount(email, path), (e) => {
      assert.equal(e.code, "OAUTH_HTTP", `${what}: ${e.message}`);
      assert.ok(!e.message.includes(mock.tokens(email).refresh), `${what}: no token in the message`);
      return true;
    });
    const a = account(path, email);
    assert.equal(a.refresh, mock.tokens(email).refresh, `${what}: the new refresh token is in the file`);
    assert.deepEqual([a.access, a.expires], [before.access, before.expires], `${what}: the access token stays as it was`);
    assert.notEqual(a.status, "auth-error", what);
    assert.ok(a.refreshBackoffUntil > Date.now(), `${what}: the endpoint rests as after any failed refresh`);
  }
  // A request meanwhile is served by the account that can serve it.
  const res = await post(createPoolFetch({ path }));
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "spare@x.test");
  await res.text();
  await resetCooldowns(path);
  for (const email of emails) {
    assert.equal((await refreshAccount(email, path)).outcome, "refreshed", email);
    const fam = mock.stats().perFamily[email];
    assert.deepEqual({ reuse: fam.reuse, revoked: fam.revoked }, { reuse: 0, revoked: false }, email);
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh, email);
  }
});

// The same answer met by the `refresh(token)` export, which has no pool to keep the new token
// in: it rejected with OAUTH_HTTP, the caller's token spent and its successor gone with the
// answer (the login lost). It asks once more at once with the successor and gives that answer;
// unusable again, it gives the newest refresh token with no access token, expired, to refresh
// with. `oauth-pool refresh` goes the pool's way and keeps the token in the file.
test("refresh(token) answered 200 with a new refresh token and the rest unusable: asks once more with that token; the caller is never left without the live token", async () => {
  const [once, twice, cli] = ["export-once@x.test", "export-twice@x.test", "export-cli@x.test"];
  const path = await seedPool(mock, [once, twice, cli]);
  const family = (email) => mock.stats().perFamily[email];
  mock.setTokenMode({ grant: "refresh_token", edit: { access_token: undefined } });
  const r = await refresh(account(path, once).refresh);
  assert.deepEqual([r.access, r.refresh], [mock.tokens(once).access, mock.tokens(once).refresh], "the second answer's tokens");
  assert.ok(r.expires > Date.now() + 10 * 60_000);
  assert.deepEqual([family(once).refreshCalls, family(once).reuse], [2, 0]);

  mock.setTokenMode({ grant: "refresh_token", edit: { access_token: undefined }, times: 2 });
  const r2 = await refresh(account(path, twice).refresh);
  assert.deepEqual(r2, { access: "", refresh: mock.tokens(twice).refresh, expires: 0 }, "the live token, as expired");
  const r3 = await refresh(r2.refresh);
  assert.equal(r3.refresh, mock.tokens(twice).refresh, "the token given lives");
  assert.deepEqual([family(twice).reuse, family(twice).revoked], [0, false]);

  mock.setTokenMode({ grant: "refresh_token", edit: { access_token: undefined } });
  const out = await new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, "refresh", cli], { env: { ...process.env, OAUTH_POOL_PATH: path } });
    let text = "";
    child.stdout.on("data", (d) => {
      text += d;
    });
    child.stderr.on("data", (d) => {
      text += d;
    });
    child.on("exit", (code) => resolve({ code, text }));
  });
  assert.notEqual(out.code, 0, out.text);
  assert.match(out.text, /OAUTH_HTTP/);
  assert.ok(!out.text.includes(mock.tokens(cli).refresh), "no token in the output");
  assert.equal(account(path, cli).refresh, mock.tokens(cli).refresh, "the CLI kept the new token in the pool");
});

test("a token-endpoint 429 sets a shared backoff: no process hammers it", async () => {
  const path = await seedPool(mock, ["tb1@x.test", "tb2@x.test"], { expired: ["tb1@x.test"] });
  await setPriority(path, "tb1@x.test", 5);
  mock.setTokenMode({ status: 429, retryAfter: 120, grant: "refresh_token" });
  const f = createPoolFetch({ path });
  const res = await post(f);
  assert.equal(res.poolAccount, "tb2@x.test");
  await res.text();
  await flushPool(path);
  const a = account(path, "tb1@x.test");
  assert.ok(a.refreshBackoffUntil > Date.now() + 100_000, "backoff stored in the file");
  assert.notEqual(a.status, "auth-error");
  const calls = mock.stats().refreshCalls;
  const second = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  await second.text();
  assert.equal(mock.stats().refreshCalls, calls, "no second call during the backoff");
  // Shared: another process, which knows the backoff only from the file, does not ask either.
  const [other] = await runWorkersTogether(WORKER, 1, [path, mock.url, "2"]);
  assert.equal(other.code, 0);
  assert.deepEqual(
    JSON.parse(other.out).map((r) => r.account),
    ["tb2@x.test", "tb2@x.test"],
  );
  assert.equal(mock.stats().refreshCalls, calls, "no call from another process during the backoff");
});

// The wait keeps an account whose token needs a refresh from serving as surely as a cooldown:
// list and status called it idle and usable ("1 usable now", "refreshed on next use") while
// every request failed POOL_NO_ACCOUNT, and nothing pointed at reset-cooldowns.
test("a token-endpoint wait reads as a rest in poolStatus and the CLI, with its end; reset-cooldowns lifts it", async () => {
  const email = "tw1@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  mock.setTokenMode({ status: 429, retryAfter: 600, grant: "refresh_token" });
  // The pool's 429 with the endpoint's wait, which a host retries (it was POOL_NO_ACCOUNT).
  const answered = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(answered.status, 429);
  assert.ok(Number(answered.headers.get("retry-after")) > 500, answered.headers.get("retry-after"));
  await answered.text();
  await flushPool(path);
  mock.setTokenMode(null);
  const until = account(path, email).refreshBackoffUntil;
  assert.ok(until > Date.now() + 500_000, "the wait is stored");
  const st = await poolStatus(path);
  const a = st.accounts.find((x) => x.email === email);
  assert.equal(a.status, "rate-limited");
  assert.equal(a.rateLimitUntil, until);
  assert.equal(a.tokenWaitUntil, until);
  assert.equal(st.counts.usable, 0);
  assert.equal(st.counts["rate-limited"], 1);
  assert.equal(st.soonestReset, until);
  const cli = await new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, "status"], { env: { ...process.env, OAUTH_POOL_PATH: path } });
    let text = "";
    child.stdout.on("data", (d) => (text += d));
    child.on("exit", () => resolve(text));
  });
  assert.match(cli, /0 usable now/);
  assert.match(cli, /the token endpoint asked to wait before its token is refreshed, usable again in 1\d min/);
  assert.match(cli, /oauth-pool reset-cooldowns/);
  assert.doesNotMatch(cli, /refreshed on next use/);
  assert.equal(await resetCooldowns(path), 1);
  const after = await poolStatus(path);
  assert.equal(after.accounts.find((x) => x.email === email).status, "idle");
  assert.equal(after.counts.usable, 1);
  const res = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 200);
  await res.text();
});

test("a 429 storm on every account: one attempt per account, then one synthetic 429", async () => {
  const emails = ["st1@x.test", "st2@x.test", "st3@x.test"];
  const path = await seedPool(mock, emails);
  for (const e of emails) mock.script(e, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60, fiveHourReset: Math.floor(Date.now() / 1000) + 60 }) }]);
  mock.clearRequests();
  const res = await post(createPoolFetch({ path }));
  assert.equal(res.status, 429);
  assert.equal(mock.requests.length, 3);
  assert.ok(Number(res.headers.get("retry-after")) <= 61 + 10, "the wait plus the reopening spread");
});

test("a 401 storm: bounded attempts, every account auth-error, tokens kept, a clear error", async () => {
  const emails = ["ua1@x.test", "ua2@x.test"];
  const path = await seedPool(mock, emails);
  for (const e of emails) mock.script(e, [{ status: 401 }, { status: 401 }]);
  mock.clearRequests();
  await assert.rejects(post(createPoolFetch({ path })), (e) => e.code === "POOL_NO_ACCOUNT");
  assert.equal(mock.requests.filter((r) => r.path.startsWith("/v1/messages")).length, 4, "401, refresh, one retry, per account");
  for (const e of emails) {
    await flushPool(path);
    const a = account(path, e);
    assert.equal(a.status, "auth-error");
    assert.ok(a.refresh);
  }
});

test("disable then enable an account in auth-error: still auth-error until a new login, its refused token not sent again", async () => {
  // Found by the chaos test: enable turned the "disabled" written over "auth-error" into "idle".
  const path = await seedPool(mock, ["dis-ae@x.test"]);
  mock.script("dis-ae@x.test", [{ status: 401 }, { status: 401 }]);
  await assert.rejects(post(createPoolFetch({ path })), (e) => e.code === "POOL_NO_ACCOUNT");
  await flushPool(path);
  assert.equal(account(path, "dis-ae@x.test").status, "auth-error");
  await setEnabled("dis-ae@x.test", false, path);
  await setEnabled("dis-ae@x.test", true, path);
  assert.equal(account(path, "dis-ae@x.test").status, "auth-error", "the refusal stands");
  mock.clearRequests();
  await assert.rejects(post(createPoolFetch({ path })), (e) => e.code === "POOL_NO_ACCOUNT");
  assert.equal(mock.requests.length + mock.tokenRequests.length, 0, "nothing presented again");
});

test("a 401 while the token endpoint is down: the request moves on, the account rests until the endpoint may be asked, and is not marked", async () => {
  for (const [name, mode] of [
    ["503", { status: 503, retryAfter: 1 }],
    ["an HTML page", { html: true, status: 200 }],
  ]) {
    const [tired, other] = [`rest-${name.length}a@x.test`, `rest-${name.length}b@x.test`];
    const path = await seedPool(mock, [tired, other]);
    await setPriority(path, tired, 5);
    mock.script(tired, [{ status: 401 }]);
    mock.setTokenMode({ ...mode, grant: "refresh_token" });
    const events = [];
    const res = await post(createPoolFetch({ path, onEvent: (e) => events.push(e) }));
    assert.equal(res.status, 200, name);
    assert.equal(res.poolAccount, other, name);
    await res.text();
    mock.setTokenMode(null);
    await flushPool(path);
    const rested = account(path, tired);
    assert.notEqual(rested.status, "auth-error", `${name}: ${JSON.stringify(rested)}`);
    assert.ok(rested.refresh, name);
    assert.match(rested.lastError ?? "", /no new token yet/, name);
    assert.ok(!events.some((e) => e.kind === "auth-error"), `${name}: ${JSON.stringify(events)}`);
    if (name !== "503") continue;
    // Once the endpoint may be asked again (its retry-after: 1 s), the account serves again.
    await new Promise((r) => setTimeout(r, 1100));
    mock.script(other, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }]);
    const again = await post(createPoolFetch({ path }));
    assert.equal(again.poolAccount, tired, `${name}: served again after the wait`);
    await again.text();
  }
});

test("removing or disabling another account keeps an account's rest after a 401 the token endpoint could not answer", async () => {
  // The rest is this process's alone (the access token was refused, the endpoint is to be left
  // alone): removing or disabling any other account made the process forget it, and the next
  // request went straight back to the refused token.
  const [tired, ...others] = ["keep-rest-a@x.test", "keep-rest-b@x.test", "keep-rest-c@x.test", "keep-rest-d@x.test"];
  const path = await seedPool(mock, [tired, ...others]);
  await setPriority(path, tired, 5);
  mock.script(tired, [{ status: 401 }]);
  mock.setTokenMode({ status: 503, retryAfter: 60, grant: "refresh_token" });
  try {
    const f = createPoolFetch({ path });
    const first = await post(f);
    assert.notEqual(first.poolAccount, tired);
    await first.text();
    // The account that served is the one changed each time: the next request chooses afresh.
    let served = first.poolAccount;
    for (const [what, change] of [
      ["removed", (email) => removeAccount(email, path)],
      ["disabled", (email) => setEnabled(email, false, path)],
    ]) {
      await change(served);
      const asked = mock.requests.filter((r) => r.email === tired).length;
      const res = await post(f);
      assert.equal(res.status, 200, what);
      assert.notEqual(res.poolAccount, tired, `another account ${what}: the resting one was asked again`);
      await res.text();
      assert.equal(mock.requests.filter((r) => r.email === tired).length, asked, what);
      served = res.poolAccount;
    }
  } finally {
    mock.setTokenMode(null);
  }
});

test("headers that never come: a timeout error, and nobody benched", async () => {
  const path = await seedPool(mock, ["hang@x.test"]);
  process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS = "300";
  try {
    mock.script("hang@x.test", [{ hang: true }]);
    const started = Date.now();
    await assert.rejects(post(createPoolFetch({ path })), (e) => e instanceof TypeError && e.code === "NETWORK" && /no response headers/.test(e.message));
    assert.ok(Date.now() - started < 2000);
  } finally {
    delete process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS;
  }
  await flushPool(path);
  assert.equal(account(path, "hang@x.test").rateLimitUntil, null);
});

test("malformed rate-limit headers give sane cooldowns", async () => {
  const cases = [
    [{ "retry-after": "garbage" }, 1_000, 6_000],
    [{ "retry-after": "-5" }, 1_000, 6_000],
    // A wait past any sane one is a long wait, capped as every rest is (8 days), as a date that
    // far ahead and a window's reset 400 days off are: it was read as no wait at all (5 s).
    [{ "retry-after": "99999999999" }, 7 * 86400_000, 8 * 86400_000 + 5000],
    [{ "retry-after": String(40 * 86400) }, 7 * 86400_000, 8 * 86400_000 + 5000],
    [
      {
        "retry-after": "1",
        "anthropic-ratelimit-unified-5h-status": "rejected",
        "anthropic-ratelimit-unified-5h-reset": new Date(Date.now() + 3_600_000).toISOString(),
      },
      3_500_000,
      3_700_000,
    ],
    [
      { "anthropic-ratelimit-unified-7d-status": "rejected", "anthropic-ratelimit-unified-7d-reset": String(Math.floor(Date.now() / 1000) + 400 * 86400) },
      7 * 86400_000,
      8 * 86400_000 + 5000,
    ],
    [{ "anthropic-ratelimit-unified-5h-status": "rejected", "anthropic-ratelimit-unified-5h-reset": "-1" }, 1_000, 6_000],
  ];
  for (const [headers, min, max] of cases) {
    const path = await seedPool(mock, ["mh1@x.test", "mh2@x.test"]);
    await setPriority(path, "mh1@x.test", 5);
    mock.script("mh1@x.test", [{ status: 429, headers }]);
    const res = await post(createPoolFetch({ path }));
    assert.equal(res.poolAccount, "mh2@x.test");
    await res.text();
    await flushPool(path);
    const wait = account(path, "mh1@x.test").rateLimitUntil - Date.now();
    assert.ok(wait >= min - 2000 && wait <= max, `${JSON.stringify(headers)}: ${wait} ms`);
  }
});

test("passive quota: utilization from every answer is kept, and a nearly drained sticky account yields", async () => {
  const path = await seedPool(mock, ["q1@x.test", "q2@x.test"]);
  await setPriority(path, "q1@x.test", 5);
  const reset = Math.floor(Date.now() / 1000) + 1800;
  mock.setUtilization("q1@x.test", { fiveHour: 0.95, fiveHourReset: reset, sevenDay: 0.5 });
  mock.setUtilization("q2@x.test", { fiveHour: 0.2 });
  const f = createPoolFetch({ path });
  const first = await post(f);
  assert.equal(first.poolAccount, "q1@x.test");
  await first.text();
  const second = await post(f);
  assert.equal(second.poolAccount, "q2@x.test", "past 90 % of its 5h window, q1 yields");
  await second.text();
  await flushPool(path);
  const w = account(path, "q1@x.test").limits.windows;
  assert.equal(w["5h"].utilization, 0.95);
  assert.equal(w["5h"].reset, reset * 1000);
  assert.equal(w["7d"].utilization, 0.5);
  const status = await poolStatus(path);
  assert.equal(status.accounts.find((a) => a.email === "q1@x.test").quota.fiveHour.utilization, 0.95);
});

test("two plugin instances in one process share one refresh", async () => {
  const path = await seedPool(mock, ["two@x.test"], { expired: ["two@x.test"] });
  mock.setTokenMode({ delayMs: 150, grant: "refresh_token" });
  const [f1, f2] = [createPoolFetch({ path }), createPoolFetch({ path })];
  const all = await Promise.all([post(f1), post(f2), post(f1), post(f2)]);
  for (const r of all) {
    assert.equal(r.status, 200);
    await r.text();
  }
  assert.equal(mock.stats().perFamily["two@x.test"].refreshCalls, 1);
});

test("1,000 accounts, duplicates, unknown statuses and wrong types: load what is sound, report the rest, write nothing", async () => {
  const path = tempPoolPath();
  const anthropic = Array.from({ length: 1000 }, (_, i) => ({
    email: `bulk${i}@x.test`,
    refresh: `r${i}`,
    access: `a${i}`,
    expires: Date.now() + 3_600_000,
    status: i % 7 === 0 ? "mystery" : "idle",
    rateLimitUntil: null,
  }));
  anthropic.push({ email: "bulk1@x.test", refresh: "dup", access: "dup", status: "idle", rateLimitUntil: null });
  anthropic.push({ email: 42 }, { email: "badtype@x.test", expires: "tomorrow" }, "not an object");
  // savePool refuses what a hand or another writer may leave: the second entry of an email, and
  // entries that are not accounts.
  await savePool({ anthropic: anthropic.slice(0, 1000) }, path);
  const raw = JSON.parse(readFileSync(path, "utf8"));
  raw.anthropic.push(...anthropic.slice(1000));
  writeFileSync(path, JSON.stringify(raw));
  const before = readFileSync(path);
  const mtime = statSync(path).mtimeMs;
  const pool = await loadPool(path);
  assert.equal(pool.anthropic.length, 1004, "every entry kept, readable or not");
  const status = await poolStatus(path);
  assert.equal(status.counts.total, 1000);
  assert.equal(status.invalid.length, 4);
  assert.ok(status.invalid.every((x) => typeof x.reason === "string" && x.reason.length > 0));
  // The second bulk1 is never served in the first's place (its credential is not the account's).
  assert.match(status.invalid[0].reason, /a second entry for this email \(entry #1 is the account\)/);
  assert.equal(status.accounts.find((a) => a.email === "bulk1@x.test")?.status, "idle");
  assert.deepEqual(readFileSync(path), before);
  assert.equal(statSync(path).mtimeMs, mtime);
});

test("a pool file that names a key twice is corrupt and kept: the first list's accounts are not dropped by a write", async () => {
  // JSON parsers keep the last of two equal keys; a later write would then lose the first.
  const path = await seedPool(mock, ["twice-a@x.test"]);
  const good = readPool(path).anthropic[0];
  const text = `{"anthropic": [${JSON.stringify(good)}],\n "anthropic": []}\n`;
  writeFileSync(path, text, { mode: 0o600 });
  await assert.rejects(loadPool(path), (e) => e.code === "POOL_CORRUPT" && /"anthropic" appears twice/.test(e.message));
  await assert.rejects(post(createPoolFetch({ path })), (e) => e.code === "POOL_CORRUPT");
  assert.equal(readFileSync(path, "utf8"), text, "left as it was");
});

test("a removed account's refresh lock file goes with it (and those left by earlier removals); the others stay", async () => {
  const path = await seedPool(mock, ["stay@x.test", "Leave@x.test"], { expired: ["stay@x.test", "Leave@x.test"] });
  // The store names an account's refresh lock `<pool>.<first 6 bytes of sha256(lower-cased
  // email) in hex>.refresh.lock` (src/store/file.rs).
  const lockOf = (email) => `${basename(path)}.${createHash("sha256").update(email.toLowerCase()).digest("hex").slice(0, 12)}.refresh.lock`;
  const locks = () =>
    readdirSync(dirname(path))
      .filter((n) => n.endsWith(".refresh.lock"))
      .sort();
  for (const email of ["stay@x.test", "Leave@x.test"]) assert.equal((await refreshAccount(email, path)).outcome, "refreshed");
  // One an earlier version left behind when it removed its account.
  writeFileSync(`${dirname(path)}/${lockOf("removed-long-ago@x.test")}`, "", { mode: 0o600 });
  assert.equal(locks().length, 3);
  assert.equal(await removeAccount("leave@x.test", path), 1);
  assert.deepEqual(locks(), [lockOf("stay@x.test")]);
  // The account that stayed refreshes as before.
  assert.equal((await refreshAccount("stay@x.test", path)).email, "stay@x.test");
});

test("a write removes only its own pool's leftover temp files, not those of another pool named like it plus a suffix", async () => {
  const path = await seedPool(mock, ["own-temps@x.test"]);
  const dir = dirname(path);
  // What a writer of `<pool>.work` has under way (its temp, under its own lock), and what a
  // writer of this pool killed midway left.
  const theirs = join(dir, `.${basename(path)}.work.Ab12Cd.tmp`);
  const ours = join(dir, `.${basename(path)}.Ef34Gh.tmp`);
  writeFileSync(theirs, "{}", { mode: 0o600 });
  writeFileSync(ours, "{}", { mode: 0o600 });
  await setEnabled("own-temps@x.test", false, path);
  assert.equal(existsSync(ours), false, "this pool's leftover goes");
  assert.equal(existsSync(theirs), true, "the other pool's temp was removed mid-write");
});

test("refresh lock files of accounts another program removed or renamed go with the pool's next write; one a process holds stays until it is let go", {
  skip: !FLOCK && "util-linux's flock is not installed",
}, async () => {
  const emails = ["kept@x.test", "dropped@x.test", "renamed@x.test", "busy@x.test"];
  const path = await seedPool(mock, emails, { expired: emails });
  const lockOf = (email) => `${basename(path)}.${createHash("sha256").update(email.toLowerCase()).digest("hex").slice(0, 12)}.refresh.lock`;
  const locks = () =>
    readdirSync(dirname(path))
      .filter((n) => n.endsWith(".refresh.lock"))
      .sort();
  for (const email of emails) assert.equal((await refreshAccount(email, path)).outcome, "refreshed");
  assert.equal(locks().length, 4);
  // Another program (the aidevops plugin, an editor, jq) drops two and renames one: no write of
  // the pool's removed an account, and their files stayed for good.
  const pool = readPool(path);
  pool.anthropic = pool.anthropic.filter((a) => a.email !== "dropped@x.test" && a.email !== "busy@x.test");
  pool.anthropic.find((a) => a.email === "renamed@x.test").email = "new-name@x.test";
  writeFileSync(path, JSON.stringify(pool), { mode: 0o600 });
  // A process still holds the lock of one of them (a refresh of it under way).
  const holder = spawn(FLOCK, ["--no-fork", "-x", join(dirname(path), lockOf("busy@x.test")), "sh", "-c", "echo held; exec sleep 600"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.once("data", resolve);
      holder.once("error", reject);
    });
    await setEnabled("kept@x.test", false, path);
    assert.deepEqual(locks(), [lockOf("kept@x.test"), lockOf("busy@x.test")].sort(), "a held one is never removed");
  } finally {
    holder.kill("SIGKILL");
  }
  await new Promise((resolve) => (holder.exitCode !== null || holder.signalCode !== null ? resolve() : holder.once("exit", resolve)));
  await setEnabled("kept@x.test", true, path);
  assert.deepEqual(locks(), [lockOf("kept@x.test")]);
});
