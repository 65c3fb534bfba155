#!/usr/bin/env node
// The real OpenCode binary (pinned, as e2e-opencode.mjs installs it) meeting a pool in a hostile
// state, offline against the loopback mock: what a person running `opencode run` sees (its output
// and exit code, how long it takes), what went upstream (no retry storm, no request without a
// credential of the pool, nothing once every account cools) and the pool file afterwards.
//
//   node scripts/e2e-opencode-hostile.mjs [--keep]
//
// Scenarios: every account cooling for an hour (the run ends at once with the pool's message)
// and for a few seconds (it goes through by itself); a rate_limit_error in a 200 stream before
// and after its content; 529 overloaded; a corrupt pool file (left byte for byte); a pool with no
// accounts; a dead refresh token beside a good account; the token endpoint down with every token
// expired; a revoked API key; the pool file rewritten by another process mid-stream; SIGINT and
// SIGTERM mid-stream and mid-refresh (the refreshed tokens land, nothing stays locked); two runs
// at once on one expired account (one refresh); the refresh journal (under the run's home, 0600,
// no token in it; a copy of the pool taken before the refresh ends at once saying where the live
// login is, its spent token not presented); holding (OAUTH_POOL_HOLD_MAX_MS) in OpenCode's Bun:
// every account cooling 6 s, the run waits and is served, nothing upstream meanwhile, the
// `holding` notice in OpenCode's log as the hold begins (through a thread-safe function and the
// plugin's client), no crash; SIGINT while held ends the run at once, nothing stays locked.
// 40 checks, about 90 s on 2 cores.
//
// Skips (exit 0) like e2e-opencode.mjs when the binary cannot be installed; any failed check
// exits 1. How OpenCode is kept offline: /work/shared/reference/opencode.md ("Keeping it offline").
import { spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { rateLimitHeaders, startMockAnthropic } from "../__tests__/helpers/mock-anthropic.mjs";
import { checks, children, ensureOpencode, killChildren, OPENCODE_VERSION, offlineOpencode, run } from "./e2e-kit.mjs";
import { oauthEntry } from "../__tests__/helpers/pool-env.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const MODEL = "claude-sonnet-4-5";
const SCRIPT = "e2e-opencode-hostile";
const keep = process.argv.includes("--keep");
const { check, finish } = checks();

// ---- the place ----------------------------------------------------------------------------------
const bin = ensureOpencode(SCRIPT, ROOT);
const lib = await import(pathToFileURL(join(ROOT, "index.mjs")).href);
const dir = mkdtempSync(join(tmpdir(), "oauth-pool-e2e-hostile-"));
const poolDir = join(dir, "pool");
const poolFile = join(poolDir, "pool.json");
// A copy of the pool taken before a refresh (the journal's scenario), kept apart from `poolDir`,
// which each scenario starts afresh; a second project whose plugin names it.
const copyFile = join(dir, "pool-copy", "pool.json");
const copyProject = join(dir, "project-copy");
const { project, envFor } = offlineOpencode(dir);
const home = join(dir, "home");
// The library's own calls here (a refresh in "nothing stays locked") write the machine's refresh
// journal under HOME, as OpenCode's do: both use the run's home, never the real ~/.aidevops.
process.env.HOME = home;
process.env.USERPROFILE = home;
const journalFile = join(home, ".aidevops", "oauth-pool-refreshes.json");
for (const d of [poolDir, dirname(copyFile), copyProject, join(dir, "logs")]) mkdirSync(d, { recursive: true });
const opencodeConfig = (path) =>
  JSON.stringify({
    $schema: "https://opencode.ai/config.json",
    plugin: [[pathToFileURL(join(ROOT, "plugin.mjs")).href, { path }]],
    model: `anthropic-pool/${MODEL}`,
    autoupdate: false,
    share: "disabled",
  });
writeFileSync(join(project, "opencode.json"), opencodeConfig(poolFile));
writeFileSync(join(copyProject, "opencode.json"), opencodeConfig(copyFile));

const mock = await startMockAnthropic();
// The library calls made here (another process's edits, the lock checks) use the same mock.
process.env.OAUTH_POOL_TOKEN_URL = mock.tokenUrl;
process.env.OAUTH_POOL_API_URL = mock.url;
const env = envFor(mock.url, {
  OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
  OAUTH_POOL_API_URL: mock.url,
  OAUTH_POOL_PATH: poolFile,
});

// ---- helpers ------------------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const HOUR = 3600;

/** A login registered now at the mock, as the pool file holds it (`expired`: its access token). */
const account = (email, options) => oauthEntry(mock, email, options);

/** A fresh start for a scenario: these accounts in the pool file, no script or fault queued. */
function scene(accounts) {
  mock.clearScripts();
  mock.setTokenMode(null);
  rmSync(poolDir, { recursive: true, force: true });
  mkdirSync(poolDir, { recursive: true });
  if (accounts) writeFileSync(poolFile, JSON.stringify({ anthropic: accounts }, null, 2), { mode: 0o600 });
  mark = mock.requests.length;
  tokenMark = mock.tokenRequests.length;
}
let mark = 0;
let tokenMark = 0;
const sent = () => mock.requests.slice(mark).filter((r) => r.path.startsWith("/v1/messages"));
const refreshes = () => mock.tokenRequests.slice(tokenMark).filter((r) => r.grant === "refresh_token");
const readPool = () => JSON.parse(readFileSync(poolFile, "utf8"));
const entry = (email) => readPool().anthropic.find((a) => a.email === email);
const shown = (reqs) => JSON.stringify(reqs.map((r) => [r.email ?? "-", r.status]));
/**
 * Whether `emails` each refused once (their one scripted 429) and nothing else was refused, and
 * what came after the last refusal. OpenCode may send the session's title request beside the
 * prompt: one of them can reach an account before the other's 429 rests it and be served there
 * (a 200 before the last 429), in either order.
 */
function refusedOnceEach(reqs, emails) {
  const refused = reqs.filter((r) => r.status === 429);
  const last = refused.at(-1);
  return {
    ok: refused.length === emails.length && emails.every((e) => refused.some((r) => r.email === e)) && reqs.every((r) => r.status === 429 || r.status === 200),
    last,
    after: last ? reqs.filter((r) => r.at > last.at) : [],
  };
}
/** Every request carried exactly one credential, and one the API took. */
const credentialed = (reqs) => reqs.every((r) => r.auth !== null && r.auth !== undefined && (r.headers.authorization || r.headers["x-api-key"]));

let runs = 0;
function log(name, r) {
  runs++;
  writeFileSync(join(dir, "logs", `${runs}-${name}.out`), r.stdout ?? "");
  writeFileSync(join(dir, "logs", `${runs}-${name}.err`), r.stderr ?? "");
}

/** `opencode run` to its end (killed after `timeoutMs`); `runEnv` and `cwd` for a run of its own. */
async function opencodeRun(name, prompt, { timeoutMs = 45_000, runEnv = env, cwd = project } = {}) {
  const r = await run(bin, ["run", "--print-logs", "--model", `anthropic-pool/${MODEL}`, prompt], { env: runEnv, cwd, timeoutMs });
  log(name, r);
  return r;
}

/** `opencode run` left running, for signals and for runs side by side; `stderr()` so far. */
function startRun(name, prompt, { runEnv = env } = {}) {
  const child = spawn(bin, ["run", "--print-logs", "--model", `anthropic-pool/${MODEL}`, prompt], {
    env: runEnv,
    cwd: project,
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);
  const t0 = Date.now();
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
  const done = new Promise((resolve) =>
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      children.delete(child);
      const r = { code, signal, stdout, stderr, ms: Date.now() - t0 };
      log(name, r);
      resolve(r);
    }),
  );
  return { child, done, stderr: () => stderr };
}

/**
 * The next request of `kind` matching `predicate` that reaches the mock while `run` goes on; a
 * run that ends first (or is killed at its 60 s) fails the scenario instead of waiting for good.
 */
function arrival(run, kind, predicate) {
  return Promise.race([
    mock.waitFor(kind, predicate),
    run.done.then((r) => {
      throw new Error(`opencode run ended before its ${kind} request reached the mock: ${outcome(r)}`);
    }),
  ]);
}

/** What the person reads: the error line `opencode run` prints, else the end of its output. */
const said = (r) => (/^Error: (.*)$/m.exec(r.stderr.replace(/\x1b\[[0-9;]*m/g, ""))?.[1] ?? `${r.stdout.slice(-300)}${r.stderr.slice(-600)}`).trim();
/** The host or the addon died rather than ended: a Rust panic, Bun's crash report, a fatal signal. */
const crashed = (r) =>
  ["SIGSEGV", "SIGBUS", "SIGILL", "SIGABRT", "SIGKILL"].includes(r.signal) ||
  /panicked at|panic\(|Segmentation fault|Bun has crashed|Illegal instruction|Bus error|Abort(ed)? trap/i.test(r.stderr);
/**
 * Why a run failed, when its error line alone does not say: OpenCode's catch-all ("Unexpected
 * error") prints the error itself on the lines after it, and its log's ERROR lines name where it
 * was thrown. A rare failure is then readable from the check's output alone (the run's home goes).
 */
function failure(r) {
  if (r.code === 0 || r.code === null) return "";
  const lines = r.stderr.replace(/\x1b\[[0-9;]*m/g, "").split("\n");
  const at = lines.findIndex((l) => l.startsWith("Error: "));
  const after = at < 0 ? [] : lines.slice(at + 1, at + 6).filter((l) => l.trim());
  const errors = lines.filter((l) => /level=ERROR/.test(l)).slice(-3);
  const text = [...after, ...errors].join("\n").slice(0, 1500);
  return text ? `\n       ${text.split("\n").join("\n       ")}` : "";
}
const outcome = (r) => `exit ${r.code ?? r.signal}${r.timedOut ? " (killed: timed out)" : ""} after ${r.ms} ms; said: ${said(r).slice(0, 400)}${failure(r)}`;

/** No `*.lock` file is held: the library takes the pool's write lock and an account's refresh. */
async function nothingLocked(email) {
  const t0 = Date.now();
  await lib.setPriority(email, 1, poolFile);
  const refreshed = await lib.refreshAccount(email, poolFile);
  return { ok: Date.now() - t0 < 10_000 && refreshed.outcome === "refreshed", ms: Date.now() - t0, outcome: refreshed.outcome };
}

try {
  // 1. Every account cooling for an hour. OpenCode sleeps a 429's retry-after whatever it is
  // (up to 5 times); the pool hands it no wait past a minute, so the run ends with its message.
  scene([account("alice@example.com"), account("bob@example.com")]);
  // OpenCode may send the session's title request beside the prompt: both can reach an account
  // before its 429 rests it, so each account answers every request it gets with the 429.
  const refusal = { status: 429, headers: rateLimitHeaders({ retryAfter: HOUR }) };
  for (const email of ["alice@example.com", "bob@example.com"]) mock.script(email, Array(4).fill(refusal));
  const long = await opencodeRun("cooling-long", "say hi");
  check(
    `every account cooling for an hour: opencode run ends with the pool's message, not a silent wait (${long.ms} ms)`,
    long.code === 1 &&
      /every account is rate-limited; the first one \(\S+@example\.com\) is usable again in (59 min( \d+ s)?|1 h [01] min) \(at (\w{3} \d+ \w{3} )?\d\d:\d\d UTC\)/.test(
        said(long),
      ),
    outcome(long),
  );
  // One 429 per account for each request OpenCode had in flight when the accounts were still
  // open (the prompt, and perhaps the title beside it), then nothing: its retries (up to 5 per
  // request) are answered by the pool. A 200 here was the title served before the 429 rested
  // the account (the CI run of 314dc01).
  const upstream = sent();
  check(
    "  upstream: one 429 per account and request in flight, then nothing (OpenCode's retries answered by the pool)",
    upstream.every((r) => r.status === 429) &&
      ["alice@example.com", "bob@example.com"].every((e) => upstream.some((r) => r.email === e)) &&
      upstream.length <= 4,
    shown(upstream),
  );
  check(
    "  the pool file holds both accounts cooling about an hour",
    ["alice@example.com", "bob@example.com"].every((e) => entry(e)?.status === "rate-limited" && entry(e).rateLimitUntil > Date.now() + 50 * 60_000),
    JSON.stringify(readPool().anthropic.map((a) => [a.email, a.status, a.rateLimitUntil])),
  );

  // 2. Every account cooling for a few seconds: OpenCode waits them out and the run goes through.
  scene([account("carol@example.com"), account("dave@example.com")]);
  const soon = rateLimitHeaders({ retryAfter: 3, fiveHourReset: Math.floor(Date.now() / 1000) + 3 });
  for (const email of ["carol@example.com", "dave@example.com"]) mock.script(email, [{ status: 429, headers: soon }]);
  const short = await opencodeRun("cooling-short", "say hi");
  const shortSent = sent();
  check(
    `every account cooling for seconds: the run waits and is served by itself (${short.ms} ms)`,
    short.code === 0 && /Hello from (carol|dave)@example\.com/.test(short.stdout),
    outcome(short),
  );
  check(
    "  upstream: the two 429s, then 200s only, all with a credential",
    refusedOnceEach(shortSent, ["carol@example.com", "dave@example.com"]).ok && shortSent.length <= 6 && credentialed(shortSent),
    shown(shortSent),
  );

  // 3. rate_limit_error inside a 200 stream, before any content: the request moves before a byte
  // reaches OpenCode.
  scene([account("erin@example.com", { priority: 10 }), account("frank@example.com")]);
  mock.script("erin@example.com", [{ errorBeforeContent: true, errorType: "rate_limit_error", errorMessage: "Rate limited" }]);
  const before = await opencodeRun("rle-before", "say hi");
  check(
    `rate_limit_error in a 200 stream before content: served by the other account (${before.ms} ms)`,
    before.code === 0 && /Hello from frank@example\.com/.test(before.stdout) && !/Rate limited/.test(before.stdout),
    outcome(before),
  );
  check(
    "  erin rests in the pool file; every request had a credential",
    entry("erin@example.com")?.status === "rate-limited" && credentialed(sent()),
    shown(sent()),
  );

  // 4. ... and after content began: passed through, OpenCode retries, the retry goes elsewhere.
  // The prompt's stream breaks; the session's title request (another model, sent alongside in
  // either order) is answered by whichever account it meets.
  scene([account("gina@example.com", { priority: 10 }), account("hal@example.com")]);
  mock.script("gina@example.com", [
    { model: MODEL, errorAfterDeltas: 1, errorType: "rate_limit_error", errorMessage: "Rate limited", text: "one two three four", deltaSize: 4 },
  ]);
  const after = await opencodeRun("rle-after", "say hi");
  const afterSent = sent().filter((r) => JSON.parse(r.body).model?.startsWith(MODEL));
  check(
    `rate_limit_error in a 200 stream after content: OpenCode's retry is served by the other account (${after.ms} ms)`,
    after.code === 0 && /Hello from hal@example\.com/.test(after.stdout),
    outcome(after),
  );
  check(
    "  upstream: the prompt to gina (broken), then to hal; gina rests",
    afterSent.length === 2 &&
      afterSent[0].email === "gina@example.com" &&
      afterSent[1].email === "hal@example.com" &&
      entry("gina@example.com")?.status === "rate-limited" &&
      credentialed(sent()),
    shown(sent()),
  );

  // 5. 529 overloaded is Anthropic's: passed through, nobody rests, each retry of OpenCode's is
  // one request upstream.
  scene([account("ivy@example.com"), account("jack@example.com")]);
  mock.scriptAll([{ status: 529 }, { status: 529 }]);
  const busy = await opencodeRun("overloaded", "say hi");
  const busySent = sent();
  check(
    `529 overloaded twice: OpenCode retries and is served (${busy.ms} ms)`,
    busy.code === 0 && /Hello from \S+@example\.com/.test(busy.stdout),
    outcome(busy),
  );
  check(
    "  upstream: the two 529s and the 200s, no failover storm; nobody rests",
    busySent.filter((r) => r.status === 529).length === 2 &&
      busySent.length <= 4 &&
      readPool().anthropic.every((a) => a.status !== "rate-limited") &&
      credentialed(busySent),
    shown(busySent),
  );

  // 6. A corrupt pool file: the message, nothing sent, the file byte for byte as it was.
  scene(null);
  const corrupt = Buffer.from('{"anthropic": [ {"email": "kim@example.com", "refresh": "not-finished');
  writeFileSync(poolFile, corrupt, { mode: 0o600 });
  const bad = await opencodeRun("corrupt", "say hi");
  check(
    `a corrupt pool file: opencode run says so and ends (${bad.ms} ms)`,
    bad.code === 1 && /pool file \S+pool\.json is not valid: .*left untouched/.test(said(bad)),
    outcome(bad),
  );
  check("  nothing sent; the file is byte-identical", sent().length === 0 && readFileSync(poolFile).equals(corrupt), shown(sent()));

  // 7. A pool with no accounts.
  scene([]);
  const none = await opencodeRun("empty", "say hi");
  check(
    `a pool with no accounts: says how to add one (${none.ms} ms)`,
    none.code === 1 &&
      /anthropic-pool has no accounts in \S+: add one with `oauth-pool add`, or OpenCode's Anthropic Pool login \(`opencode auth login` on 1\.18/.test(
        said(none),
      ) &&
      sent().length === 0,
    outcome(none),
  );

  // 8. A dead refresh token (invalid_grant) beside a good account.
  const dead = account("lee@example.com", { expired: true, priority: 10 });
  mock.revoke("lee@example.com", { family: true });
  scene([dead, account("max@example.com")]);
  const grant = await opencodeRun("invalid-grant", "say hi");
  check(
    `a dead refresh token: served by the other account (${grant.ms} ms)`,
    grant.code === 0 && /Hello from max@example\.com/.test(grant.stdout),
    outcome(grant),
  );
  check(
    "  one refresh tried, lee in auth-error (tokens kept), nothing sent for lee",
    refreshes().length === 1 &&
      entry("lee@example.com")?.status === "auth-error" &&
      entry("lee@example.com").refresh === dead.refresh &&
      sent().every((r) => r.email === "max@example.com") &&
      credentialed(sent()),
    `${refreshes().length} refreshes; ${shown(sent())}; ${JSON.stringify(entry("lee@example.com")?.status)}`,
  );

  // 9. The token endpoint down for an hour while every token is expired: the pool's 429 with
  // that wait (past a minute, OpenCode is handed no wait: it retries at once, answered by the
  // pool), so the run ends saying why.
  scene([account("ned@example.com", { expired: true }), account("oli@example.com", { expired: true })]);
  mock.setTokenMode({ status: 503, times: -1, retryAfter: HOUR });
  const down = await opencodeRun("token-down", "say hi");
  check(
    `the token endpoint down, every token expired: the run ends saying why (${down.ms} ms)`,
    down.code === 1 && /no account has a usable access token, and the token endpoint is not taking refreshes now/.test(said(down)),
    outcome(down),
  );
  check(
    "  one refresh per account, no request upstream without a token",
    refreshes().length === 2 && sent().length === 0,
    `${refreshes().length} refreshes; ${shown(sent())}`,
  );

  // 9b. The token endpoint down for a moment (its 503 asks for 2 s): OpenCode waits the pool's
  // 429 out and the run is served. It ended with POOL_NO_ACCOUNT, which OpenCode does not retry.
  scene([account("pat@example.com", { expired: true })]);
  mock.setTokenMode({ status: 503, times: 1, retryAfter: 2 });
  const blip = await opencodeRun("token-blip", "say hi");
  check(
    `the token endpoint down for 2 s, every token expired: the run waits and is served (${blip.ms} ms)`,
    blip.code === 0 && /Hello from pat@example\.com/.test(blip.stdout),
    outcome(blip),
  );
  check("  two refreshes, the second after the endpoint's wait", refreshes().length === 2, `${refreshes().length} refreshes`);

  // 10. An API key refused with 401 (revoked), a login beside it.
  scene([
    {
      email: "team-key",
      type: "api",
      key: `revoked-${"k".repeat(12)}`,
      expires: null,
      added: new Date().toISOString(),
      status: "idle",
      rateLimitUntil: null,
      priority: 10,
    },
    account("pam@example.com"),
  ]);
  const key = await opencodeRun("api-key-401", "say hi");
  check(`a revoked API key: served by the login (${key.ms} ms)`, key.code === 0 && /Hello from pam@example\.com/.test(key.stdout), outcome(key));
  check(
    "  the key asked once, then auth-error; the rest on pam",
    sent().filter((r) => r.auth === "api-key").length === 1 &&
      entry("team-key")?.status === "auth-error" &&
      sent()
        .filter((r) => r.email === "pam@example.com")
        .every((r) => r.status === 200),
    shown(sent()),
  );

  // 11. Another process rewrites the pool file while `opencode run` streams.
  scene([account("quin@example.com"), account("rae@example.com")]);
  const slow = { text: "a b c d e f g h i j", delayMs: 150 };
  mock.scriptAll([slow, slow]);
  const streaming = startRun("rewritten", "say hi");
  await arrival(streaming, "api", (r) => r.path.startsWith("/v1/messages"));
  await sleep(300);
  await lib.setPriority("rae@example.com", 7, poolFile);
  const edited = readPool();
  edited.anthropic.push({
    email: "sam@example.com",
    type: "api",
    key: `sam-${"k".repeat(12)}`,
    expires: null,
    added: new Date().toISOString(),
    status: "idle",
    rateLimitUntil: null,
  });
  edited.note = "kept";
  writeFileSync(poolFile, JSON.stringify(edited, null, 2));
  const rewritten = await streaming.done;
  const afterEdit = readPool();
  check(
    `the pool file rewritten mid-stream: the run ends served (${rewritten.ms} ms)`,
    rewritten.code === 0 && /a b c d e f g h i j/.test(rewritten.stdout),
    outcome(rewritten),
  );
  check(
    "  the other process's changes are kept (priority, the added account, an unknown field)",
    afterEdit.note === "kept" &&
      afterEdit.anthropic.find((a) => a.email === "rae@example.com")?.priority === 7 &&
      afterEdit.anthropic.some((a) => a.email === "sam@example.com"),
    JSON.stringify(afterEdit.anthropic.map((a) => [a.email, a.priority])),
  );

  // 12. SIGINT and SIGTERM mid-stream and mid-refresh: the refreshed tokens land, nothing stays
  // locked, and the next run uses them without a refresh.
  for (const [sig, when] of [
    ["SIGINT", "mid-stream"],
    ["SIGTERM", "mid-refresh"],
  ]) {
    const email = `${sig.toLowerCase()}@example.com`;
    scene([account(email, { expired: true })]);
    if (when === "mid-refresh") mock.setTokenMode({ delayMs: 2500 });
    else
      mock.scriptAll([
        { text: "a b c d e f g h i j k l", delayMs: 400 },
        { text: "a b c d e f g h i j k l", delayMs: 400 },
      ]);
    const r = startRun(`${sig}-${when}`, "say hi");
    await (when === "mid-refresh" ? arrival(r, "token", (t) => t.grant === "refresh_token") : arrival(r, "api", (t) => t.path.startsWith("/v1/messages")));
    await sleep(when === "mid-refresh" ? 300 : 1000);
    r.child.kill(sig);
    const ended = await r.done;
    // A refresh held by the token endpoint answers after the signal: wait for its write.
    if (when === "mid-refresh") await sleep(2800);
    const current = mock.tokens(email);
    const held = entry(email);
    check(
      `${sig} ${when}: opencode run ends (${ended.signal ?? ended.code}), the refreshed tokens are in the pool file`,
      held?.access === current.access && held?.refresh === current.refresh && refreshes().length === 1,
      `${refreshes().length} refreshes; pool …${String(held?.access).slice(-6)} vs mock …${current.access.slice(-6)}; ${outcome(ended)}`,
    );
    const free = await nothingLocked(email);
    check(`  after ${sig}: nothing stays locked (write and refresh in ${free.ms} ms)`, free.ok, JSON.stringify(free));
    const next = await opencodeRun(`${sig}-next`, "again");
    check(
      `  after ${sig}: the next run is served with the pool's tokens, the family intact`,
      next.code === 0 && /Hello from/.test(next.stdout) && mock.stats().perFamily[email].reuse === 0 && !mock.stats().perFamily[email].revoked,
      `${outcome(next)}; ${JSON.stringify(mock.stats().perFamily[email])}`,
    );
  }

  // 13. Two `opencode run` at once on one expired account: one refresh between them.
  scene([account("tess@example.com", { expired: true })]);
  // The pool as it was before the refresh, copied to a second path (for 14).
  copyFileSync(poolFile, copyFile);
  const spentTokens = readPool().anthropic[0];
  mock.setTokenMode({ delayMs: 1500 });
  const [one, two] = await Promise.all([startRun("twin-1", "one").done, startRun("twin-2", "two").done]);
  const fam = mock.stats().perFamily["tess@example.com"];
  check(
    `two runs at once on one expired account: both served (${one.ms}, ${two.ms} ms)`,
    [one, two].every((r) => r.code === 0 && /Hello from tess@example\.com/.test(r.stdout)),
    `${outcome(one)}\n${outcome(two)}`,
  );
  check(
    "  one refresh, the token never presented twice, every request with the new token",
    refreshes().length === 1 &&
      fam.reuse === 0 &&
      !fam.revoked &&
      sent().every((r) => r.status === 200 && r.headers.authorization === `Bearer ${mock.tokens("tess@example.com").access}`),
    `${refreshes().length} refreshes; ${JSON.stringify(fam)}; ${shown(sent())}`,
  );
  check(
    "  no temporary file is left beside the pool (only the file, its .bak and its lock files)",
    readdirSync(poolDir).every((f) => /^pool\.json(\.bak|\.lock|\.[0-9a-f]+\.refresh\.lock)?$/.test(f)),
    readdirSync(poolDir).join(" "),
  );

  // 14. The refresh journal: the refresh in 13 is recorded under the run's home, with no token
  // in it; the copy of the pool taken before that refresh is refused its spent token, saying
  // where the live login is, instead of presenting it (which would get it refused, and could
  // log the first pool out too).
  const tess = entry("tess@example.com");
  const journalText = existsSync(journalFile) ? readFileSync(journalFile, "utf8") : "";
  const journalMode = existsSync(journalFile) ? (statSync(journalFile).mode & 0o777).toString(8) : "absent";
  const tokens = [spentTokens.access, spentTokens.refresh, tess?.access, tess?.refresh].filter(Boolean);
  check(
    "the refresh journal is under the run's home, 0600, naming the pool and account, holding no token",
    journalMode === "600" &&
      journalText.includes(JSON.stringify(realpathSync(poolFile))) &&
      journalText.includes('"tess@example.com"') &&
      tokens.length === 4 &&
      tokens.every((t) => !journalText.includes(t)),
    `${journalFile}: mode ${journalMode}; ${journalText.length} bytes; ${tokens.filter((t) => journalText.includes(t)).length} tokens in it`,
  );
  mark = mock.requests.length;
  tokenMark = mock.tokenRequests.length;
  const copied = await opencodeRun("journal-copy", "say hi", {
    // OpenCode takes its directory from PWD before its working directory.
    runEnv: { ...env, OAUTH_POOL_PATH: copyFile, PWD: copyProject },
    cwd: copyProject,
  });
  const copiedFam = mock.stats().perFamily["tess@example.com"];
  const copiedEntry = JSON.parse(readFileSync(copyFile, "utf8")).anthropic[0];
  const where = `refreshed through the pool at ${realpathSync(poolFile)}`;
  check(
    `a copy of the pool from before the refresh: opencode run ends saying where the live login is (${copied.ms} ms)`,
    copied.code === 1 && !copied.timedOut && copied.ms < 30_000 && said(copied).includes(where),
    outcome(copied),
  );
  check(
    "  the spent token was not presented (no refresh, nothing upstream, the mock saw no reuse); the copy's account says why",
    refreshes().length === 0 &&
      sent().length === 0 &&
      copiedFam.reuse === 0 &&
      !copiedFam.revoked &&
      copiedEntry.status === "auth-error" &&
      String(copiedEntry.lastError).includes(where),
    `${refreshes().length} refreshes; ${shown(sent())}; ${JSON.stringify({ reuse: copiedFam.reuse, revoked: copiedFam.revoked })}; copy: ${copiedEntry.status} ${copiedEntry.lastError}`,
  );

  // 15. Holding (OAUTH_POOL_HOLD_MAX_MS) in OpenCode's runtime: every account cools for 6 s; the
  // run waits inside the pool, is told so through OpenCode's client as the hold begins (the
  // notice crosses from the engine's thread to Bun's through a thread-safe function), and is
  // served once the cooldown ends. No jitter, so the wait is the cooldown.
  const holdEnv = { ...env, OAUTH_POOL_HOLD_MAX_MS: "60000", OAUTH_POOL_JITTER_MS: "0" };
  const holdingLines = (stderr) => stderr.split("\n").filter((l) => /level=WARN .*kind=holding/.test(l));
  scene([account("uma@example.com"), account("vic@example.com")]);
  const cool = (secs) => rateLimitHeaders({ retryAfter: secs, fiveHourReset: Math.ceil(Date.now() / 1000) + secs });
  for (const email of ["uma@example.com", "vic@example.com"]) mock.script(email, [{ status: 429, headers: cool(6) }]);
  const held = await opencodeRun("holding", "say hi", { runEnv: holdEnv });
  const heldSent = sent();
  const heldRefusals = refusedOnceEach(heldSent, ["uma@example.com", "vic@example.com"]);
  const last429 = heldRefusals.last;
  // The first request after the wait (a title served before the refusals is no part of it).
  const first200 = heldRefusals.after[0];
  const notice = holdingLines(held.stderr);
  const noticeAt = Date.parse(/timestamp=(\S+)/.exec(notice[0] ?? "")?.[1] ?? "");
  check(
    `holding in a real run: opencode run waits the cooldown out and is served, no crash (${held.ms} ms)`,
    held.code === 0 && held.signal === null && !crashed(held) && /Hello from (uma|vic)@example\.com/.test(held.stdout) && held.ms >= 6000,
    outcome(held),
  );
  check(
    "  upstream: the two 429s, nothing during the wait (6 s), then 200s only",
    heldRefusals.ok && heldRefusals.after.length >= 1 && first200.at - last429.at >= 5500 && credentialed(heldSent),
    `${shown(heldSent)}; ${first200 && last429 ? first200.at - last429.at : "?"} ms between the last 429 and the first 200`,
  );
  check(
    "  the pool's holding notice reached OpenCode's log through its client as the hold began, once",
    notice.length === 1 &&
      /message="anthropic-pool: every account is rate-limited; requests wait for the first one \((uma|vic)@example\.com\), usable again in \d s \(at \d\d:\d\d UTC\) \(OAUTH_POOL_HOLD_MAX_MS\)"/.test(
        notice[0],
      ) &&
      noticeAt < first200?.at - 3000,
    `${notice.join("\n") || "(no holding line)"}; logged ${noticeAt - (last429?.at ?? 0)} ms after the last 429, ${(first200?.at ?? 0) - noticeAt} ms before the first 200`,
  );

  // 16. SIGINT while held (a 30 s cooldown): the run ends at once, nothing goes upstream after
  // the 429s, and nothing stays locked.
  scene([account("wes@example.com"), account("xia@example.com")]);
  for (const email of ["wes@example.com", "xia@example.com"]) mock.script(email, [{ status: 429, headers: cool(30) }]);
  const holding = startRun("holding-SIGINT", "say hi", { runEnv: holdEnv });
  const heldSince = Date.now();
  while (Date.now() - heldSince < 20_000 && holdingLines(holding.stderr()).length === 0) await sleep(100);
  await sleep(500);
  const signalled = Date.now();
  holding.child.kill("SIGINT");
  const interrupted = await holding.done;
  const sinceSignal = Date.now() - signalled;
  check(
    `SIGINT while held: opencode run ends within a few seconds (${sinceSignal} ms after the signal), no crash`,
    holdingLines(interrupted.stderr).length === 1 && sinceSignal < 5000 && !crashed(interrupted),
    `${holdingLines(interrupted.stderr).length} holding lines; ${outcome(interrupted)}`,
  );
  const sigintRefusals = refusedOnceEach(sent(), ["wes@example.com", "xia@example.com"]);
  check("  upstream: the two 429s only (nothing after them)", sigintRefusals.ok && sigintRefusals.after.length === 0, shown(sent()));
  const freed = await nothingLocked("wes@example.com");
  check(`  after SIGINT while held: nothing stays locked (write and refresh in ${freed.ms} ms)`, freed.ok, JSON.stringify(freed));
} catch (err) {
  check("scenario ran to the end", false, err?.stack ?? err);
} finally {
  killChildren();
  await mock.close();
  if (keep) console.log(`kept ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
}

finish(`OpenCode ${OPENCODE_VERSION}, hostile pool`);
