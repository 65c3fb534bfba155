// Holding (OAUTH_POOL_HOLD_MAX_MS) as an unattended run meets it: a request that finds every
// account cooling waits for the soonest usable one. Here: that the wait ends when an account
// becomes usable early (a shell's reset-cooldowns or enable, a login another process adds), not
// only when the request's own timer runs out. Aborts while held: aborts.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import Anthropic from "@anthropic-ai/sdk";
import * as lib from "../index.mjs";
import { jsonHeaders, messagesUrl, oauthEntry, readPool, seedPool, useMock, withEnv } from "./helpers/pool-env.mjs";

const run = promisify(execFile);
const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));
const INDEX = new URL("../index.mjs", import.meta.url).href;

// A cooldown far longer than any test waits, and a hold that covers it.
const COOLING_MS = 120_000;
const mock = useMock({ env: { OAUTH_POOL_HOLD_MAX_MS: "300000", OAUTH_POOL_JITTER_MS: "0" } });

const ask = (f) =>
  f(messagesUrl(mock), {
    method: "POST",
    headers: jsonHeaders,
    body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
  });

/** Seeds `emails`, then marks `cooling` as resting for COOLING_MS in the file. */
async function poolWith(emails, { cooling = emails, disabled = [] } = {}) {
  const path = await seedPool(mock, emails);
  const pool = readPool(path);
  for (const a of pool.anthropic) {
    if (cooling.includes(a.email)) Object.assign(a, { status: "rate-limited", rateLimitUntil: Date.now() + COOLING_MS });
    if (disabled.includes(a.email)) a.enabled = false;
  }
  await lib.savePool(pool, path);
  return path;
}

/** Sends one request, lets it be held, runs `change` in another process, and says how it ended. */
async function heldThen(path, transport, change) {
  const f = lib.createPoolFetch({ path, transport });
  mock.clearRequests();
  let settled = false;
  const pending = ask(f).finally(() => {
    settled = true;
  });
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(settled, false, "held: every account cools");
  assert.equal(mock.requests.length, 0, "nothing upstream while held");
  await change();
  const changed = Date.now();
  let timer;
  const res = await Promise.race([
    pending,
    new Promise((r) => {
      timer = setTimeout(() => r(null), 30_000);
    }),
  ]);
  clearTimeout(timer);
  assert.ok(res, "the held request went on once an account was usable, not when its own cooldown ended");
  await res.text();
  return { res, after: Date.now() - changed };
}

const cli = (path, ...args) => run(process.execPath, [CLI, ...args, "--path", path], { env: process.env });

for (const transport of ["native", "runtime"]) {
  test(`a held request goes on soon after \`oauth-pool reset-cooldowns\` from a shell (${transport})`, async () => {
    const path = await poolWith(["rc@x.test"]);
    const { res } = await heldThen(path, transport, () => cli(path, "reset-cooldowns"));
    assert.equal(res.status, 200);
    assert.equal(res.poolAccount, "rc@x.test");
  });

  test(`a held request goes on soon after \`oauth-pool enable\` from a shell (${transport})`, async () => {
    const path = await poolWith(["en1@x.test", "en2@x.test"], { cooling: ["en1@x.test"], disabled: ["en2@x.test"] });
    const { res } = await heldThen(path, transport, () => cli(path, "enable", "en2@x.test"));
    assert.equal(res.status, 200);
    assert.equal(res.poolAccount, "en2@x.test");
  });
}

test("a held request goes on soon after another process adds a login", async () => {
  const path = await poolWith(["old@x.test"]);
  const entry = oauthEntry(mock, "new@x.test");
  const adder = `
    const lib = await import(${JSON.stringify(INDEX)});
    const pool = await lib.loadPool(process.argv[1]);
    pool.anthropic.push(JSON.parse(process.argv[2]));
    await lib.savePool(pool, process.argv[1]);`;
  const { res } = await heldThen(path, "native", () =>
    run(process.execPath, ["--input-type=module", "-e", adder, path, JSON.stringify(entry)], { env: process.env }),
  );
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "new@x.test");
});

for (const transport of ["native", "runtime"]) {
  test(`held requests go back to an account one first: while it still refuses, one 429 per reopening, not one per held request (${transport})`, async () => {
    const path = await seedPool(mock, [`herd-${transport}@x.test`]);
    const pool = readPool(path);
    Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: Date.now() + 1500 });
    await lib.savePool(pool, path);
    // Still limited for three more asks, each resting it a second.
    mock.script(
      `herd-${transport}@x.test`,
      [1, 2, 3].map(() => ({ status: 429, headers: { "retry-after": "1" } })),
    );
    mock.clearRequests();
    const events = [];
    const f = lib.createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
    const served = async (r) => {
      await r.text();
      return r.status;
    };
    const answers = await Promise.all(Array.from({ length: 5 }, () => ask(f).then(served)));
    assert.deepEqual(answers, [200, 200, 200, 200, 200], "each held request served once the account was back");
    // Going back to the account it waited for is no failover ("moved to" itself, a toast each).
    const toItself = events.filter((e) => e.kind === "failover" && e.to === e.email);
    assert.deepEqual(toItself, [], "no failover from an account to itself");
    const refused = mock.requests.filter((r) => r.status === 429).map((r) => r.at);
    assert.equal(refused.length, 3, "the refusals scripted");
    for (let i = 1; i < refused.length; i++) {
      assert.ok(refused[i] - refused[i - 1] >= 500, `one request per reopening, not a burst: 429s at ${refused.map((t) => t - refused[0])} ms`);
    }
  });
}

for (const transport of ["native", "runtime"]) {
  test(`a hold is told as it begins, once for every request held: the account awaited, in how long and at what time (${transport})`, async () => {
    const email = `told-${transport}@x.test`;
    const path = await poolWith([email]);
    const until = readPool(path).anthropic[0].rateLimitUntil;
    const events = [];
    const f = lib.createPoolFetch({ path, transport, onEvent: (e) => events.push(e) });
    mock.clearRequests();
    const pending = Array.from({ length: 12 }, () => ask(f));
    // However it ends, nothing is left holding for the cooldown's two minutes.
    const released = Promise.allSettled(pending);
    try {
      // Told while the requests wait (before, the notice came with the answer, after the hold).
      for (let i = 0; i < 100 && !events.some((e) => e.kind === "holding"); i++) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 1500));
      const told = events.filter((e) => e.kind === "holding");
      assert.equal(told.length, 1, `one notice for 12 held requests: ${JSON.stringify(events)}`);
      assert.equal(mock.requests.length, 0, "nothing upstream while held");
      const [notice] = told;
      assert.equal(notice.email, email);
      assert.ok(Math.abs(notice.until - until) < 1000, `until ${notice.until} is the cooldown's end ${until}`);
      // "in 1 min 59 s (at 14:32 UTC)": a person's wait, not "in 119 s".
      const at = new Date(until);
      const hm = `${String(at.getUTCHours()).padStart(2, "0")}:${String(at.getUTCMinutes()).padStart(2, "0")}`;
      assert.match(
        notice.message,
        new RegExp(
          `requests wait for the first one \\(${email.replace(/\./g, "\\.")}\\), usable again in (1 min \\d+ s|2 min) \\(at (\\w{3} \\d+ \\w{3} )?${hm} UTC\\)`,
        ),
      );
      assert.doesNotMatch(notice.message, /\d{3,} s/);
      await lib.resetCooldowns(path);
      const answers = await Promise.all(
        pending.map(async (p) => {
          const r = await p;
          await r.text();
          return r.status;
        }),
      );
      assert.deepEqual(new Set(answers), new Set([200]));
      assert.equal(events.filter((e) => e.kind === "holding").length, 1, "nothing more when the hold ends");
    } finally {
      await lib.resetCooldowns(path);
      await released;
    }
  });
}

// OpenCode 1.18 wraps the provider's fetch with a 5-minute header timeout and retries a timeout
// itself (a few times, then the session fails): a hold past that was cut, held again by each
// retry, and the run failed however long OAUTH_POOL_HOLD_MAX_MS allowed. The plugin's fetch
// holds at most a minute; a longer wait that holding covers is answered at once with the pool's
// 429 and its real retry-after, which OpenCode 1.18 sits out before it asks again.
test("OpenCode 1.18's provider fetch holds at most a minute: a longer wait holding covers is the pool's 429 with its real retry-after, for OpenCode to sit out", async () => {
  const { poolFetchFor } = await import("../lib/plugin/shared.mjs");
  const path = await poolWith(["oc118@x.test"]);
  const f = poolFetchFor({}, { path });
  mock.clearRequests();
  let timer;
  const res = await Promise.race([
    ask(f),
    new Promise((r) => {
      timer = setTimeout(() => r(null), 15_000);
    }),
  ]);
  clearTimeout(timer);
  assert.ok(res, "answered at once, not held for the 2-minute cooldown");
  assert.equal(res.status, 429);
  assert.equal(res.headers.get("x-oauth-pool"), "all-accounts-cooling");
  assert.equal(res.headers.get("x-oauth-pool-host-waits"), "true");
  const wait = Number(res.headers.get("retry-after"));
  assert.ok(wait > 60 && wait <= COOLING_MS / 1000, `the real wait, not 0: ${wait}`);
  assert.match((await res.json()).error.message, /requests wait for the first one \(oc118@x\.test\)/);
  assert.equal(mock.requests.length, 0, "nothing upstream");

  // A wait under a minute is held inside the fetch, as before.
  const pool = readPool(path);
  pool.anthropic[0].rateLimitUntil = Date.now() + 2_000;
  await lib.savePool(pool, path);
  const held = await ask(f);
  assert.equal(held.status, 200);
  await held.text();
});

// The Anthropic SDK gives each attempt a timeout (10 minutes by default, said upstream as
// `x-stainless-timeout`), then aborts it and sends the request again, to be held again: a hold
// longer than that ended, after the SDK's retries, in "Request timed out" and not a word of the
// pool's wait. Half the client's timeout is held; a longer wait is the pool's 429 with its real
// retry-after, which the SDK sleeps before it asks again.
for (const via of ["native", "runtime", "gateway"]) {
  test(`the Anthropic SDK's timeout bounds a hold: a longer wait is the pool's 429, which the SDK sleeps, then it is served (${via})`, async () => {
    const email = `sdk-${via}@x.test`;
    const path = await poolWith([email]);
    const pool = readPool(path);
    pool.anthropic[0].rateLimitUntil = Date.now() + 8_000;
    await lib.savePool(pool, path);
    const gw = via === "gateway" ? await lib.serve({ port: 0, path }) : null;
    try {
      const inner = gw ? fetch : lib.createPoolFetch({ path, transport: via });
      const answers = [];
      const counting = async (input, init) => {
        const res = await inner(input, init);
        answers.push({ status: res.status, hostWaits: res.headers.get("x-oauth-pool-host-waits"), retryAfter: Number(res.headers.get("retry-after")) });
        return res;
      };
      mock.clearRequests();
      // Each attempt 2 s: a second of it may be held, and the wait is 8 s.
      const client = new Anthropic({
        apiKey: gw ? lib.gatewayKey(path) : "unused",
        baseURL: gw ? gw.url : mock.url,
        fetch: counting,
        timeout: 2_000,
        maxRetries: 1,
      });
      const msg = await client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] });
      assert.equal(msg.content[0].text, `Hello from ${email}`);
      assert.equal(answers.length, 2, JSON.stringify(answers));
      assert.equal(answers[0].status, 429);
      assert.equal(answers[0].hostWaits, "true", "a wait holding covers, for the client to sit out");
      assert.ok(answers[0].retryAfter >= 7 && answers[0].retryAfter <= 8, `the real wait: ${answers[0].retryAfter}`);
      assert.equal(answers[1].status, 200);
      assert.equal(mock.requests.length, 1, "one request upstream, once the account was usable");
    } finally {
      await gw?.close();
    }
  });
}

// Found by a review: on the runtime transport, the requests held behind the first one sent once
// the cooldown ended waited out the engine's patience (10 s) when that first one failed, because
// the engine heard of it only when its exchange was collected. Which held request goes first is
// the engine's choice: the first one back hangs and meets the response timeout, whichever it is.
for (const transport of ["native", "runtime"]) {
  test(`requests held behind one that failed go on at once, not after the engine's patience (${transport})`, async () => {
    const email = `first-${transport}@x.test`;
    const path = await seedPool(mock, [email]);
    const pool = readPool(path);
    Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: Date.now() + 1500 });
    await lib.savePool(pool, path);
    mock.script(email, [{ hang: true }]);
    mock.clearRequests();
    await withEnv({ OAUTH_POOL_RESPONSE_TIMEOUT_MS: "1000" }, async () => {
      const f = lib.createPoolFetch({ path, transport });
      const send = () =>
        f(messagesUrl(mock), {
          method: "POST",
          headers: jsonHeaders,
          body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }),
        }).then(
          async (res) => ({ status: res.status, text: await res.text(), at: Date.now() }),
          (err) => ({ code: err.code, at: Date.now() }),
        );
      const ends = await Promise.all([send(), send(), send()]);
      const failed = ends.filter((e) => e.code === "NETWORK");
      assert.equal(failed.length, 1, JSON.stringify(ends));
      assert.deepEqual(
        ends.filter((e) => e.status).map((e) => e.status),
        [200, 200],
      );
      // Going on at once takes milliseconds; before, they went on 3–10 s later (when the failed
      // exchange was collected, at most the engine's patience of 10 s).
      const after = Math.max(...ends.map((e) => e.at)) - failed[0].at;
      assert.ok(after < 2000, `the held requests went on ${after} ms after the first one back failed`);
    });
  });
}
