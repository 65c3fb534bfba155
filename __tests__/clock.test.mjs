// Time as an adversary: a laptop suspended for hours and resumed (the wall clock jumps forward,
// the monotonic clock does not, and connections kept alive are dead), a clock stepped back (NTP,
// a VM restored) or forward while the pool runs. The pool user runs in its own process under
// libfaketime, whose clock the test moves mid-run through a timestamp file; the monotonic clock
// stays real, as it does across a suspend.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { useMock, seedPool, account, readPool, oauthEntry } from "./helpers/pool-env.mjs";
import { savePool } from "../index.mjs";
import { tempDir } from "./helpers/temp.mjs";
import { FAKETIME_LIB, faketimeFiles, forgetFaketimeOnExit } from "./helpers/faketime.mjs";

const WORKER = fileURLToPath(new URL("./helpers/clock-worker.mjs", import.meta.url));
const skip = !FAKETIME_LIB && "libfaketime is not installed (.ci/run installs it)";
const mock = useMock();

/** A process using the pool whose wall clock is `shift(seconds)` away from the real one. */
function clockedWorker(path, apiUrl, env = {}) {
  const dir = tempDir("oauth-pool-clock-");
  const clockFile = join(dir, "faketime");
  const shift = (seconds) => writeFileSync(clockFile, `${seconds >= 0 ? "+" : ""}${seconds}\n`);
  shift(0);
  const child = spawn(process.execPath, [WORKER, path, apiUrl], {
    env: {
      ...process.env,
      ...env,
      LD_PRELOAD: FAKETIME_LIB,
      FAKETIME_TIMESTAMP_FILE: clockFile,
      FAKETIME_NO_CACHE: "1",
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  forgetFaketimeOnExit(child);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async () => {
    const { value, done } = await lines.next();
    if (done) throw new Error(`the worker ended: ${stderr}`);
    return JSON.parse(value);
  };
  const ready = next();
  return {
    shift,
    ready,
    async ask(cmd) {
      await ready;
      child.stdin.write(`${JSON.stringify(cmd)}\n`);
      return next();
    },
    async close() {
      child.stdin.end(`${JSON.stringify({ op: "exit" })}\n`);
      await new Promise((resolve) => (child.exitCode !== null ? resolve() : child.once("close", resolve)));
      assert.deepEqual(
        faketimeFiles(child.pid).filter((f) => existsSync(f)),
        [],
        "libfaketime's files in /dev/shm are gone",
      );
    },
    get stderr() {
      return stderr;
    },
  };
}

/**
 * A TCP relay in front of the mock that can play a suspend: `sleep()` forgets every connection
 * the way a server does while the laptop sleeps (the server side closes; the laptop never hears
 * of it). The client's socket stays open and looks alive; the first bytes it sends on it are
 * answered with a reset, as the server's kernel answers data for a connection it forgot.
 */
async function suspendableRelay(target) {
  const { port } = new URL(target);
  const pairs = new Set();
  const stats = { connections: 0, resets: 0 };
  const server = createServer((client) => {
    stats.connections++;
    const upstream = connect(Number(port), "127.0.0.1");
    const pair = { client, upstream, dead: false };
    pairs.add(pair);
    client.on("close", () => pairs.delete(pair));
    client.on("error", () => {});
    upstream.on("error", () => client.destroy());
    upstream.on("data", (d) => !pair.dead && client.write(d));
    upstream.on("close", () => !pair.dead && client.destroy());
    client.on("data", (d) => {
      if (!pair.dead) return upstream.write(d);
      stats.resets++;
      if (typeof client.resetAndDestroy === "function") client.resetAndDestroy();
      else client.destroy();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stats,
    sleep() {
      for (const pair of pairs) {
        pair.dead = true;
        pair.upstream.destroy();
      }
    },
    get open() {
      return pairs.size;
    },
    close() {
      for (const pair of pairs) pair.client.destroy();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

test("after a suspend of hours, the first request does not die on a connection the server closed while the laptop slept", { skip }, async () => {
  const email = "suspended@clock.test";
  const path = await seedPool(mock, [email]);
  const relay = await suspendableRelay(mock.url);
  const worker = clockedWorker(path, relay.url, { OAUTH_POOL_API_URL: relay.url });
  try {
    await worker.ready;
    const first = await worker.ask({ op: "fetch" });
    assert.equal(first.status, 200, JSON.stringify(first));
    assert.equal(relay.open, 1, "the connection is kept alive");
    // The laptop sleeps two hours: the server forgets the connection, the wall clock moves on,
    // the monotonic clock (hyper's idle timer) does not.
    relay.sleep();
    worker.shift(2 * 3600);
    const after = await worker.ask({ op: "fetch" });
    assert.equal(after.status, 200, `the first request after the resume failed: ${JSON.stringify(after)}`);
    assert.equal(after.account, email);
    assert.equal(relay.stats.resets, 0, "nothing was sent on the dead connection");
  } finally {
    await worker.close();
    await relay.close();
  }
});

test("a token that expired while the laptop slept is refreshed once, on a new connection, and the request served", { skip }, async () => {
  const email = "overnight@clock.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const relay = await suspendableRelay(mock.url);
  const worker = clockedWorker(path, relay.url, { OAUTH_POOL_API_URL: relay.url, OAUTH_POOL_TOKEN_URL: `${relay.url}/v1/oauth/token` });
  try {
    await worker.ready;
    // The evening's refresh leaves a connection to the token endpoint kept alive.
    const evening = await worker.ask({ op: "fetch" });
    assert.equal(evening.status, 200, JSON.stringify(evening));
    assert.equal(mock.stats().perFamily[email].refreshCalls, 1);
    // Ten hours asleep: the access token (8 h) expired, every connection is dead.
    relay.sleep();
    worker.shift(10 * 3600);
    const morning = await worker.ask({ op: "fetch" });
    assert.equal(morning.status, 200, JSON.stringify(morning));
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 2, "one refresh for the night");
    assert.equal(fam.reuse, 0);
    assert.equal(relay.stats.resets, 0, "the refresh token was not sent on a dead connection");
    assert.equal(account(path, email).refresh, mock.tokens(email).refresh, "the rotated token is the stored one");
  } finally {
    await worker.close();
    await relay.close();
  }
});

test("a clock stepped back two hours does not bench an account two hours past the server's retry-after", { skip }, async () => {
  const email = "benched@clock.test";
  const path = await seedPool(mock, [email]);
  mock.script(email, [{ status: 429, headers: { "retry-after": "60" } }]);
  const worker = clockedWorker(path, mock.url, { OAUTH_POOL_JITTER_MS: "0" });
  try {
    const limited = await worker.ask({ op: "fetch" });
    assert.equal(limited.status, 429, JSON.stringify(limited));
    assert.ok(Number(limited.retryAfter) <= 61, JSON.stringify(limited));
    // NTP steps the clock back two hours (it ran fast): the cooldown is still the server's minute.
    worker.shift(-2 * 3600);
    const later = await worker.ask({ op: "fetch" });
    assert.equal(later.status, 429, JSON.stringify(later));
    assert.ok(Number(later.retryAfter) <= 61, `benched for ${later.retryAfter} s after a 60 s retry-after`);
    // A request that reads the cooldown from the file (written by now) has it rewritten there.
    await new Promise((r) => setTimeout(r, 300));
    const again = await worker.ask({ op: "fetch" });
    assert.ok(Number(again.retryAfter) <= 61, JSON.stringify(again));
  } finally {
    await worker.close();
  }
  // What the file says now is the minute too, for every process that reads it.
  const stored = account(path, email);
  const now = Date.now() - 2 * 3600 * 1000;
  assert.ok(stored.rateLimitUntil - now <= 61_000, JSON.stringify(stored));
});

test("a clock stepped back two hours does not hold a token endpoint's one-second backoff for two hours", { skip }, async () => {
  const email = "backoff@clock.test";
  const path = await seedPool(mock, [email]);
  // Expired three hours ago: expired still once the clock is two hours back.
  const seeded = readPool(path);
  seeded.anthropic[0].expires = Date.now() - 3 * 3600 * 1000;
  await savePool(seeded, path);
  mock.setTokenMode({ status: 503, retryAfter: 1, grant: "refresh_token" });
  const worker = clockedWorker(path, mock.url);
  try {
    const failed = await worker.ask({ op: "fetch" });
    assert.notEqual(failed.status, 200, JSON.stringify(failed));
    assert.ok(account(path, email).refreshBackoffUntil, "the backoff is stored");
    worker.shift(-2 * 3600);
    // The first request after the step may still find a second to wait (how long before the
    // step the backoff was set cannot be told); a second and a half later it is over.
    await worker.ask({ op: "fetch" });
    await new Promise((r) => setTimeout(r, 1500));
    const served = await worker.ask({ op: "fetch" });
    assert.equal(served.status, 200, `still backing off after the server's second: ${JSON.stringify(served)}`);
    const fam = mock.stats().perFamily[email];
    assert.ok(fam.refreshCalls >= 2 && fam.refreshCalls <= 3, `refresh calls: ${fam.refreshCalls}`);
    assert.equal(fam.reuse, 0);
  } finally {
    await worker.close();
  }
});

test("a hold through a clock step of two hours, back or forward: served when the server's wait is over", { skip }, async () => {
  // Holding waits on the monotonic clock with a budget: a step back must not stretch the wait to
  // hours (past the hold's budget: the pool's 429), nor a step forward make it loop.
  for (const step of [-2 * 3600, 2 * 3600]) {
    const email = `held-${step < 0 ? "back" : "ahead"}@clock.test`;
    const path = await seedPool(mock, [email]);
    mock.script(email, [{ status: 429, headers: { "retry-after": "2" } }]);
    const worker = clockedWorker(path, mock.url, { OAUTH_POOL_JITTER_MS: "0", OAUTH_POOL_HOLD_MAX_MS: "30000" });
    try {
      await worker.ready;
      const refused = mock.waitFor("api", (r) => r.email === email);
      const started = Date.now();
      const answer = worker.ask({ op: "fetch" });
      await refused;
      // Refused, then held: the only account rests for the server's 2 s.
      await new Promise((r) => setTimeout(r, 500));
      worker.shift(step);
      const res = await answer;
      const took = Date.now() - started;
      assert.equal(res.status, 200, `step ${step} s: ${JSON.stringify(res)}`);
      assert.equal(res.account, email);
      assert.ok(took < 15_000, `step ${step} s: held ${took} ms for a 2 s wait (the hold's budget is 30 s)`);
      const sent = mock.requests.filter((r) => r.email === email);
      assert.deepEqual(
        sent.map((r) => r.status),
        [429, 200],
        "held, then sent once more",
      );
    } finally {
      await worker.close();
    }
  }
});

test("a token a clock stepped back makes look valid for hours gets its 401 and one refresh", { skip }, async () => {
  const email = "looks-valid@clock.test";
  // The server's token dies in a second; the pool's clock is two hours behind, so to the pool
  // it has two hours left.
  const path = await seedPool(mock, []);
  await savePool({ anthropic: [oauthEntry(mock, email, { login: { expiresIn: 1 } })] }, path);
  const worker = clockedWorker(path, mock.url);
  try {
    worker.shift(-2 * 3600);
    await worker.ready;
    await new Promise((r) => setTimeout(r, 1200));
    const res = await worker.ask({ op: "fetch" });
    assert.equal(res.status, 200, JSON.stringify(res));
    // Refreshed (the mock's tokens live one second, inside the pool's five-minute refresh
    // margin, so the retry may refresh once more), no token presented twice, no auth-error.
    const fam = mock.stats().perFamily[email];
    assert.ok(fam.refreshCalls >= 1 && fam.refreshCalls <= 2, `refresh calls: ${fam.refreshCalls}`);
    assert.equal(fam.reuse, 0);
  } finally {
    await worker.close();
  }
  assert.notEqual(account(path, email).status, "auth-error");
});

test("two processes whose clocks are ten hours apart refresh a token once between them", { skip }, async () => {
  const email = "two-clocks@clock.test";
  const path = await seedPool(mock, [email]);
  const behind = clockedWorker(path, mock.url);
  const ahead = clockedWorker(path, mock.url);
  try {
    ahead.shift(10 * 3600);
    await Promise.all([behind.ready, ahead.ready]);
    for (let round = 0; round < 3; round++) {
      const answers = await Promise.all([behind.ask({ op: "fetch" }), ahead.ask({ op: "fetch" })]);
      for (const a of answers) assert.equal(a.status, 200, JSON.stringify(answers));
    }
    const fam = mock.stats().perFamily[email];
    assert.equal(fam.refreshCalls, 1, "the process ahead refreshes once; the other adopts");
    assert.equal(fam.reuse, 0);
  } finally {
    await behind.close();
    await ahead.close();
  }
  assert.equal(account(path, email).refresh, mock.tokens(email).refresh);
});

test("a clock stepped back two hours does not hold a reserved account two hours past its window's reset; one stepped forward costs one request", {
  skip,
}, async () => {
  const email = "reserved@clock.test";
  const path = await seedPool(mock, [email]);
  const seeded = readPool(path);
  seeded.anthropic[0].reserve = 0.2;
  await savePool(seeded, path);
  // The answer says the 5-hour window is 90 % used and resets in 8 s: past the reserve's line
  // (80 %), the pool keeps the account for its owner until then.
  const resetAt = Math.floor(Date.now() / 1000) + 8;
  mock.setUtilization(email, { fiveHour: 0.9, fiveHourReset: resetAt });
  const worker = clockedWorker(path, mock.url);
  try {
    const used = await worker.ask({ op: "fetch" });
    assert.equal(used.status, 200, JSON.stringify(used));
    const reserved = await worker.ask({ op: "fetch" });
    assert.equal(reserved.status, 429, JSON.stringify(reserved));
    assert.ok(Number(reserved.retryAfter) <= 9, JSON.stringify(reserved));
    // NTP steps the clock back two hours: the window still resets when the server said.
    worker.shift(-2 * 3600);
    const stepped = await worker.ask({ op: "fetch" });
    assert.equal(stepped.status, 429, JSON.stringify(stepped));
    assert.ok(Number(stepped.retryAfter) <= 9, `reserved for ${stepped.retryAfter} s after the step, the window resetting in 8`);
    // A process started after the step reads the window from the file alone.
    await worker.ask({ op: "flush" });
    const fresh = clockedWorker(path, mock.url);
    try {
      fresh.shift(-2 * 3600);
      const read = await fresh.ask({ op: "fetch" });
      assert.equal(read.status, 429, JSON.stringify(read));
      assert.ok(Number(read.retryAfter) <= 9, `reserved for ${read.retryAfter} s from the file`);
    } finally {
      await fresh.close();
    }
    // Once the server's reset has passed, it serves (the answers now say a fresh window).
    await new Promise((r) => setTimeout(r, (resetAt + 1) * 1000 - Date.now()));
    mock.setUtilization(email, { fiveHour: 0.9, fiveHourReset: Math.floor(Date.now() / 1000) + 600 });
    const open = await worker.ask({ op: "fetch" });
    assert.equal(open.status, 200, JSON.stringify(open));
    const full = await worker.ask({ op: "fetch" });
    // Sent after the step, its answer is news: a request stamped by where the clock had been
    // took it for older than the window heard of before the step, read it onto the clock as
    // reset two hours ago, and let the account be used past its line.
    assert.equal(full.status, 429, `the new window is past the line too: ${JSON.stringify(full)}`);
    // A step forward of two hours makes that reset look passed: one request goes (the server
    // takes it: a reserve is the pool's own line), and its answer, read by its Date, puts the
    // window back where the server has it.
    worker.shift(2 * 3600);
    mock.clearRequests();
    const early = await worker.ask({ op: "fetch" });
    assert.equal(early.status, 200, JSON.stringify(early));
    const back = await worker.ask({ op: "fetch" });
    assert.equal(back.status, 429, JSON.stringify(back));
    assert.ok(Number(back.retryAfter) > 500 && Number(back.retryAfter) <= 600, JSON.stringify(back));
    assert.equal(mock.requests.length, 1, "one request past the line, not one per request");
  } finally {
    await worker.close();
  }
});
