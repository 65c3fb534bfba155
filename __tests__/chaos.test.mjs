// Chaos: faults and kills mixed, to find defects in classes rather than single cases. One pool
// file with five OAuth accounts whose tokens need refreshing every few seconds and one API key;
// worker processes sending JSON, streamed, aborted and session requests in a loop; a process
// managing the pool (priorities, enable/disable, cooldown resets, stale copies saved back, the
// CLI); a sampler reading the file every ~20 ms; the test injecting Messages API and token
// endpoint faults at random and SIGKILLing workers (also while a refresh is in flight).
// Invariants at the end (and during, where cheap): see the assertions.
//   OAUTH_POOL_CHAOS_MS (default 40000): how long the chaos lasts; OAUTH_POOL_CHAOS_WORKERS (4);
//   OAUTH_POOL_CHAOS_SEED: the random seed (printed by each run, to replay one).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { addAccount, authorize, createPoolFetch, flushPool, loadPool, savePool, setEnabled, setPriority } from "../index.mjs";
import { seeded } from "./helpers/chaos-random.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, tempPoolPath, messagesUrl, body, jsonHeaders, oauthEntry } from "./helpers/pool-env.mjs";

const DURATION = Number(process.env.OAUTH_POOL_CHAOS_MS ?? 40_000);
const WORKERS = Number(process.env.OAUTH_POOL_CHAOS_WORKERS ?? 4);
const SEED = Number(process.env.OAUTH_POOL_CHAOS_SEED ?? Date.now() % 1_000_000_007);
const REQUEST_BOUND_MS = 90_000;
const JITTER_MS = 1000;
const MAX_RETRY_AFTER_S = 5;
// Codes a pool request may reject with under these faults (README, "Error codes").
const CONTRACT_CODES = new Set(["ABORT_ERR", "NETWORK", "POOL_NO_ACCOUNT", "POOL_BUSY", "STORE_UNAVAILABLE"]);
// Statuses a caller may see: answers passed through (529, 500), the pool's all-cooling 429.
const DELIVERED = new Set([200, 429, 500, 529]);

const mock = useMock({ env: { OAUTH_POOL_JITTER_MS: String(JITTER_MS), OAUTH_POOL_TIMEOUT_MS: "4000" } });
const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const { random, pick, between } = seeded(SEED);
const nowSec = () => Math.floor(Date.now() / 1000);

/** A child of this runtime reading stdin until closed; stdout is collected line by line. */
function child(script, args, env, onLine = () => {}) {
  const c = spawn(process.execPath, [here(script), ...args], { env, stdio: ["pipe", "pipe", "pipe"] });
  let buf = "";
  const lines = [];
  let stderr = "";
  c.stdout.on("data", (d) => {
    buf += d;
    let i = buf.indexOf("\n");
    while (i >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      lines.push(line);
      onLine(line);
      i = buf.indexOf("\n");
    }
  });
  c.stderr.on("data", (d) => {
    stderr = (stderr + d).slice(-4000);
  });
  c.stdin.on("error", () => {}); // a killed child's pipe
  const done = new Promise((resolve) => c.on("close", (code, signal) => resolve({ code, signal })));
  return { child: c, lines, done, stderr: () => stderr };
}

function withTimeout(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not end within ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

test(`chaos: ${WORKERS} worker processes, a manager, faults and SIGKILLs for ${DURATION} ms; no token reused, nothing lost, nothing hung, everyone serves after`, {
  timeout: DURATION + 240_000,
}, async () => {
  console.log(`chaos seed ${SEED} (OAUTH_POOL_CHAOS_SEED=${SEED} replays the test's own choices)`);
  const path = tempPoolPath();
  const dir = dirname(path);
  const oauth = Array.from({ length: 5 }, (_, i) => `chaos${i}@x.test`);
  const KEY = "fake-console-key-chaos";
  mock.addApiKey(KEY, "team-key");
  // Tokens live 302-306 s: inside the 5-minute refresh margin after 2-6 s, so every account
  // that serves is refreshed again and again.
  const anthropic = oauth.map((email, i) => oauthEntry(mock, email, { login: { expiresIn: 302 + i } }));
  anthropic.push({
    email: "team-key",
    type: "api",
    key: KEY,
    expires: null,
    added: new Date().toISOString(),
    status: "idle",
    rateLimitUntil: null,
    priority: -1,
  });
  await savePool({ version: 1, anthropic }, path);
  const emails = [...oauth, "team-key"];
  const env = { ...process.env, OAUTH_POOL_PATH: path };

  // --- observers -------------------------------------------------------------------------------
  const open = new Map(); // `${worker}:${id}` -> { at, kind, worker }
  const ended = [];
  const violations = [];
  const kills = []; // times of SIGKILLs
  const dead = new Set(); // workers killed: their open requests died with them
  const workers = new Map(); // slot -> { proc, gen }
  let workerRuns = 0;
  function startWorker(slot) {
    const tag = `${slot}.${++workerRuns}`;
    const proc = child("./helpers/chaos-worker.mjs", [path, mock.url, String(SEED + workerRuns * 7919)], env, (line) => {
      let m;
      try {
        m = JSON.parse(line);
      } catch {
        return violations.push(`worker ${tag} printed ${line.slice(0, 200)}`);
      }
      if (dead.has(tag)) return; // lines a killed worker wrote before it died, read late
      if (m.s !== undefined) open.set(`${tag}:${m.s}`, { at: m.at, kind: m.kind, worker: tag });
      else if (m.e !== undefined) {
        open.delete(`${tag}:${m.e}`);
        ended.push(m);
      } else if (m.flushError) violations.push(`worker ${tag}: flushPool failed ${m.flushError}`);
    });
    workers.set(slot, { proc, tag, killed: false });
  }
  function kill(slot) {
    const w = workers.get(slot);
    w.killed = true;
    w.proc.child.kill("SIGKILL");
    dead.add(w.tag);
    kills.push(Date.now());
    for (const key of [...open.keys()]) if (key.startsWith(`${w.tag}:`)) open.delete(key); // died with it
    startWorker(slot);
  }
  const sampler = child("./helpers/chaos-sampler.mjs", [path, emails.join(",")], env);
  const manager = child("./helpers/chaos-manager.mjs", [path, emails.join(","), String(SEED + 1)], env);
  for (let i = 0; i < WORKERS; i++) startWorker(i);

  const hangWatch = setInterval(() => {
    for (const [key, r] of open) if (Date.now() - r.at > REQUEST_BOUND_MS) violations.push(`request ${key} (${r.kind}) open for over ${REQUEST_BOUND_MS} ms`);
  }, 1000);

  // --- faults ----------------------------------------------------------------------------------
  const faults = {};
  const count = (name) => (faults[name] = (faults[name] ?? 0) + 1);
  const refreshGrant = { grant: "refresh_token" };
  let lostAnswersLeft = 2; // commit-then-drop costs the family (one more try, then auth-error): rare
  const messageFaults = {
    "429 window": () => {
      const r = between(1, MAX_RETRY_AFTER_S);
      return { status: 429, headers: rateLimitHeaders({ retryAfter: r, fiveHourReset: nowSec() + r }) };
    },
    "429 burst": () => ({ status: 429, headers: { "retry-after": String(between(1, MAX_RETRY_AFTER_S)) } }),
    "429 model": () => {
      const r = between(1, MAX_RETRY_AFTER_S);
      return { status: 429, headers: rateLimitHeaders({ retryAfter: r, rejected: "7d_sonnet", sevenDayReset: nowSec() + r }) };
    },
    529: () => ({ status: 529 }),
    500: () => ({ status: 500 }),
    slow: () => ({ headersDelayMs: between(100, 1500) }),
    "mid-stream reset": () => ({ resetAfterBytes: between(20, 600) }),
  };
  const tokenFaults = {
    "token 503": () => ({ status: 503, retryAfter: between(1, 3), times: between(1, 3) }),
    "token 429": () => ({ status: 429, retryAfter: between(1, 3), times: between(1, 2) }),
    "token hang": () => ({ hang: true }),
    "token reset": () => ({ reset: true }),
    "token slow": () => ({ delayMs: between(200, 2000) }),
    "token commit-then-drop": () => (lostAnswersLeft-- > 0 ? { commitThenDrop: true } : null),
  };
  async function injectFaults(until) {
    while (Date.now() < until) {
      if (random() < 0.1) {
        // A 401 forcing a refresh: the server drops the account's access token early (a
        // scripted 401 could meet the retry with the new token too, which is a refusal by
        // design, and a 401 on an API key is one as well).
        count("401 (access token revoked)");
        mock.revoke(pick(oauth));
      } else if (random() < 0.7) {
        const name = pick(Object.keys(messageFaults));
        const email = pick(emails);
        count(name);
        mock.script(email, [messageFaults[name]()]);
      } else {
        const name = pick(Object.keys(tokenFaults));
        const fault = tokenFaults[name]();
        if (fault) {
          count(name);
          mock.setTokenMode({ ...fault, ...refreshGrant });
        }
      }
      await sleep(between(100, 500));
    }
  }
  async function killWorkers(until) {
    while (Date.now() < until) {
      await sleep(between(800, 2500));
      if (Date.now() >= until) break;
      if (random() < 0.3) {
        // While a refresh is in flight: slow the token endpoint, wait for a refresh to arrive,
        // then kill every worker (whoever holds the refresh lock dies holding it).
        mock.setTokenMode({ delayMs: between(300, 1500), ...refreshGrant });
        const arrived = await Promise.race([mock.waitFor("token", (r) => r.grant === "refresh_token").then(() => true), sleep(4000).then(() => false)]);
        if (!arrived) continue;
        await sleep(between(0, 200));
        count("kill all during a refresh");
        for (const slot of workers.keys()) kill(slot);
      } else {
        count("kill one");
        kill(between(0, WORKERS - 1));
      }
    }
  }

  const started = Date.now();
  const until = started + DURATION;
  await Promise.all([injectFaults(until), killWorkers(until)]);

  // --- stop: faults clear, workers finish what they started ------------------------------------
  mock.setTokenMode(null);
  mock.clearScripts();
  const stopAt = Date.now();
  for (const w of workers.values()) w.proc.child.stdin.end();
  await withTimeout(Promise.all([...workers.values()].map((w) => w.proc.done)), REQUEST_BOUND_MS + 15_000, "the workers' last requests");
  clearInterval(hangWatch);
  for (const w of workers.values()) {
    const { code, signal } = await w.proc.done;
    if (!w.proc.lines.some((l) => l.includes('"done":true')))
      violations.push(`worker ${w.tag} ended (${code ?? signal}) without finishing: ${w.proc.stderr()}`);
  }
  manager.child.stdin.end();
  sampler.child.stdin.end();
  await withTimeout(Promise.all([manager.done, sampler.done]), 60_000, "the manager and the sampler");
  const managed = JSON.parse(manager.lines.at(-1) ?? "{}");
  const sampled = JSON.parse(sampler.lines.at(-1) ?? "{}");

  // --- requests: each ended within the bound, with a delivered status or a contract code ---------
  const statuses = {};
  const codes = {};
  for (const r of ended) {
    const k = r.code ?? r.status;
    if (r.code) codes[r.code] = (codes[r.code] ?? 0) + 1;
    else statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    if (r.ms > REQUEST_BOUND_MS) violations.push(`request took ${r.ms} ms: ${JSON.stringify(r)}`);
    if (r.code && !CONTRACT_CODES.has(r.code)) violations.push(`request rejected outside the contract: ${JSON.stringify(r)}`);
    if (r.code === undefined && !DELIVERED.has(r.status)) violations.push(`a ${k} reached the caller: ${JSON.stringify(r)}`);
  }
  for (const [key, r] of open) violations.push(`request ${key} (${r.kind}) never ended`);
  const stats = mock.stats();
  console.log(
    JSON.stringify({
      seed: SEED,
      ms: stopAt - started,
      requests: ended.length,
      statuses,
      codes,
      faults,
      workerRuns,
      refreshCalls: Object.fromEntries(oauth.map((e) => [e, stats.perFamily[e].refreshCalls])),
      reuse: stats.reuse,
      manager: managed.counts,
      samples: sampled.reads,
    }),
  );
  assert.deepEqual(violations, [], "requests and workers");
  assert.ok(statuses[200] > 50, `few requests served: ${JSON.stringify(statuses)}`);

  // --- the file: parsed at every sample, nothing lost, tokens kept ------------------------------
  assert.ok(sampled.reads > DURATION / 100, `the sampler read ${sampled.reads} times`);
  assert.deepEqual(sampled.errors, [], "every sample of the file was a clean pool with every account and its tokens");
  assert.deepEqual(managed.failures, [], "every management action succeeded");
  const pool = await loadPool(path);
  assert.deepEqual(pool.anthropic.map((a) => a.email).sort(), [...emails].sort(), "no account lost or duplicated");
  for (const a of pool.anthropic) if (a.type !== "api") assert.ok(a.refresh && a.access, `${a.email} keeps its tokens`);

  // --- refresh tokens: presented at most once, plus one retry after a lost answer ------------------
  // A reuse is legitimate only when the answer of the rotation that spent that token was lost:
  // thrown away by the mock (commit-then-drop: one more try, then auth-error), or meant for a
  // worker SIGKILLed while its refresh was in flight (from the request's arrival to a second
  // after the answer: killed before it could write the new tokens).
  const excused = [];
  for (const email of oauth) {
    const fam = stats.perFamily[email];
    for (const reuse of fam.reuseLog) {
      // The mock and the killer share this event loop: a request a worker sent just before its
      // SIGKILL may be read a moment after it. After the answer, the worker still takes the
      // pool's lock (four workers and a manager want it) and writes: on a busy machine that
      // took longer than 300 ms.
      const killedAfter = kills.some((k) => k >= reuse.requestedAt - 250 && k <= reuse.rotatedAt + 1000);
      if (reuse.lost || killedAfter) excused.push({ email, ...reuse, killedAfter });
      else
        assert.fail(
          `${email}: spent refresh token of generation ${reuse.generation} presented again ${reuse.at - reuse.rotatedAt} ms after its rotation, with no lost answer: ${JSON.stringify(fam.reuseLog)}; kills ${JSON.stringify(kills)}; copies ${JSON.stringify(managed.copies)}`,
        );
    }
    if (fam.revoked) assert.ok(fam.reuseLog.length > 0, `${email} revoked without a reuse`);
  }
  if (excused.length) console.log(`reuse after a lost answer: ${JSON.stringify(excused)}`);

  // --- no .tmp leftovers once a writer has written again ----------------------------------------
  await setPriority(oauth[0], 0, path);
  const leftovers = readdirSync(dir).filter((f) => f.endsWith(".tmp"));
  assert.deepEqual(leftovers, [], "temp files of killed writers removed by the next write");

  // --- cooldowns no longer than the mock said ------------------------------------------------------
  const last429 = {};
  for (const r of mock.requests) if (r.status === 429 && r.email) last429[r.email] = Math.max(last429[r.email] ?? 0, r.at);
  const bound = (email) => (last429[email] ?? 0) + MAX_RETRY_AFTER_S * 1000 + JITTER_MS + 2000;
  let latest = Date.now();
  for (const a of pool.anthropic) {
    const until = [a.rateLimitUntil, a.cooldownUntil, ...Object.values(a.modelCooldowns ?? {})].filter((t) => typeof t === "number" && t > Date.now());
    for (const t of until) {
      assert.ok(
        t <= bound(a.email),
        `${a.email} cools until ${new Date(t).toISOString()}, longer than the mock asked (last 429 at ${new Date(last429[a.email] ?? 0).toISOString()}): ${JSON.stringify(a)}`,
      );
      latest = Math.max(latest, t);
    }
    const backoff = a.refreshBackoffUntil;
    if (typeof backoff === "number" && backoff > Date.now()) latest = Math.max(latest, Math.min(backoff, Date.now() + 30_000));
  }
  await sleep(latest - Date.now() + JITTER_MS + 200); // reopenings are spread over the jitter

  // --- families legitimately revoked: auth-error with tokens kept; a new login serves again --------
  for (const email of oauth) {
    if (!stats.perFamily[email].revoked) continue;
    // Its state is not asserted here: whether it was marked yet depends on who used it last
    // (a stale copy saved over a mark keeps it: `Pool::keep_newer_state`'s unit test).
    const pkce = await authorize();
    const paste = mock.approve(pkce.url, email, { expiresIn: 3600 });
    await addAccount(paste, pkce, path);
  }

  // --- after the chaos, every account serves (alone, so nothing else can answer for it) -----------
  for (const email of emails) {
    for (const other of emails) await setEnabled(other, other === email, path);
    const res = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() }).catch((e) => e);
    if (res instanceof Error) {
      const a = (await loadPool(path)).anthropic.find((x) => x.email === email);
      const live = mock.tokens(email);
      const calls = mock.tokenRequests
        .slice(-6)
        .map((r) => ({ at: r.at, grant: r.grant, status: r.status, reject: r.reject, mine: r.body?.refresh_token === a?.refresh }));
      console.log(
        `diagnosis ${email}: file refresh is the live one: ${live?.refresh === a?.refresh}, file access is the live one: ${live?.access === a?.access}; last token calls ${JSON.stringify(calls)}; last requests ${JSON.stringify(mock.requests.slice(-4).map((r) => ({ at: r.at, email: r.email, status: r.status })))}`,
      );
      assert.fail(
        `${email} does not serve after the chaos: ${res.code} ${res.message}; in the file: ${JSON.stringify({ ...a, usage: undefined, limits: undefined })}; at the mock: ${JSON.stringify(mock.tokens(email) && { ...stats.perFamily[email], answeredAt: undefined })}`,
      );
    }
    assert.equal(res.status, 200, `${email}: ${res.status} ${await res.clone().text()}`);
    assert.equal(res.poolAccount, email);
    await res.text();
  }
  for (const email of emails) await setEnabled(email, true, path);
  await flushPool(path);
  const final = mock.stats();
  for (const email of oauth) {
    assert.equal(final.perFamily[email].revoked, false, `${email} usable at the end`);
  }
});
