// The pool attacked, and used carelessly (issue 10): each test names the hole it closes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createServer } from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { inspect } from "node:util";
import { brotliCompressSync, deflateSync, gzipSync } from "node:zlib";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, account, readPool, messagesUrl, body, jsonHeaders, oauthEntry, tempPoolPath, withEnv } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const { createPoolFetch, flushPool, poolStatus, savePool, loadPool } = lib;
const INDEX = fileURLToPath(new URL("../index.mjs", import.meta.url));
const CLI = fileURLToPath(new URL("../bin/oauth-pool.mjs", import.meta.url));

const mock = useMock();

const post = (f, extra = {}, init = {}) => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(extra), ...init });

async function seedKey(email, key) {
  mock.addApiKey(key, email);
  const path = tempPoolPath();
  await savePool({ anthropic: [{ email, type: "api", key, status: "idle", rateLimitUntil: null }] }, path);
  return path;
}

function cli(args, env = {}) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", env: { ...process.env, ...env }, timeout: 30_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

/** `spawn`, to its end: `{ status, stdout, stderr }` (spawnSync would stop the mock). */
function ran(command, args, options) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
    const out = { stdout: "", stderr: "" };
    child.stdout.setEncoding("utf8").on("data", (d) => (out.stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (out.stderr += d));
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, ...out }));
  });
}

/** A server on another origin that records what reaches it: a test's secrets must not. */
async function otherOrigin() {
  const seen = [];
  const server = createServer((req, res) => {
    seen.push({ url: req.url, key: req.headers["x-api-key"], auth: req.headers.authorization });
    res.end("stolen");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { seen, server };
}

// ---- 1. secrets never follow a redirect ------------------------------------------------------

test("1: an API key never follows a redirect to another origin; the 3xx reaches the caller as it is", async () => {
  const { seen, server: elsewhere } = await otherOrigin();
  try {
    const key = "fake-console-key-redirect-0123456789";
    const path = await seedKey("key@x.test", key);
    const f = createPoolFetch({ path });
    for (const status of [301, 302, 303, 307, 308]) {
      const location = `http://127.0.0.1:${elsewhere.address().port}/v1/messages?from=${status}`;
      mock.script("key@x.test", [{ status, headers: { location }, body: "" }]);
      const res = await post(f);
      assert.equal(res.status, status);
      assert.equal(res.headers.get("location"), location);
      await res.text();
    }
    assert.deepEqual(seen, [], "nothing reached the other origin");
  } finally {
    elsewhere.close();
  }
});

// The gateway's client follows a redirect itself, with the headers it sent the gateway: fetch drops
// only Authorization on the way to another origin, so the gateway's key (x-api-key) and the prompt
// went to wherever the upstream's Location pointed.
test("1b: the gateway sends no client to another origin: an upstream redirect there is refused, coded; one on the API's origin leads back through the gateway", async () => {
  const { seen, server: elsewhere } = await otherOrigin();
  const path = await seedPool(mock, ["redirect@x.test"]);
  const key = "test-gateway-key-redirect-0123456789";
  process.env.OAUTH_POOL_GATEWAY_KEY = key;
  const gw = await lib.serve({ port: 0, path });
  const ask = (init = {}) => fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key }, body: body(), ...init });
  const api = new URL(messagesUrl(mock)).origin;
  const other = `127.0.0.1:${elsewhere.address().port}`;
  try {
    const away = [`http://${other}/v1/messages`, `//${other}/v1/messages`, `/\\${other}/v1/messages`, `${api}//${other}/v1/messages`, "http://[bad"];
    for (const status of [301, 302, 303, 307, 308]) {
      for (const location of away) {
        mock.script("redirect@x.test", [{ status, headers: { location }, body: "" }]);
        const res = await ask();
        const what = `${status} to ${location}`;
        assert.equal(res.status, 500, what);
        assert.equal(res.headers.get("x-oauth-pool-error"), "INSECURE_ENDPOINT", what);
        assert.equal(res.headers.get("x-should-retry"), "false", what);
        assert.match((await res.json()).error.message, new RegExp(`answered ${status} sending the client to .*off the API's origin`), what);
      }
    }
    assert.deepEqual(seen, [], "nothing reached the other origin");
    // On the API's origin: made relative, so that the client comes back to the gateway.
    for (const [location, here] of [
      [`${api}/v1/messages/next?page=2#top`, "/v1/messages/next?page=2#top"],
      ["/v1/files", "/v1/files"],
      ["next", "/v1/next"],
    ]) {
      mock.script("redirect@x.test", [{ status: 307, headers: { location }, body: "" }]);
      const res = await ask({ redirect: "manual" });
      assert.equal(res.status, 307, location);
      assert.equal(res.headers.get("location"), here, location);
      await res.text();
    }
    // Not a redirect, nothing follows it: left as it came.
    mock.script("redirect@x.test", [{ status: 201, headers: { location: `http://${other}/v1/x` }, body: "{}" }]);
    const created = await ask();
    assert.equal(created.status, 201);
    assert.equal(created.headers.get("location"), `http://${other}/v1/x`);
    await created.text();
    assert.deepEqual(seen, []);
  } finally {
    await gw.close(1000);
    delete process.env.OAUTH_POOL_GATEWAY_KEY;
    elsewhere.close();
  }
});

// ---- 2. secrets echoed by a server ----------------------------------------------------------

test("2: a token endpoint that echoes the refresh token: scrubbed from errors, events, lastError, status and the CLI", async () => {
  const path = await seedPool(mock, ["echo@x.test"], { expired: ["echo@x.test"] });
  const token = readPool(path).anthropic[0].refresh;
  const piece = token.slice(8, 30);
  mock.setTokenMode({
    status: 400,
    body: { error: "invalid_request", error_description: `malformed refresh_token '${token}' (${piece})` },
    grant: "refresh_token",
    times: 10,
  });
  const events = [];
  const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  const thrown = await post(f).then(
    () => null,
    (e) => e,
  );
  assert.equal(thrown?.code, "POOL_NO_ACCOUNT");
  const direct = await lib.refresh(token).then(
    () => null,
    (e) => e,
  );
  assert.equal(direct?.code, "OAUTH_HTTP");
  assert.match(direct.message, /malformed refresh_token '\[redacted\]'/);
  await flushPool(path);
  const status = await poolStatus(path);
  const out = cli(["status", "--path", path]).out + cli(["status", "--json", "--path", path]).out;
  const everything = JSON.stringify([thrown.message, direct.message, events, readFileSync(path, "utf8").replace(token, "TOKEN-IN-ITS-PLACE"), status]) + out;
  assert.ok(
    events.some((e) => /malformed refresh_token/.test(e.message)),
    JSON.stringify(events),
  );
  assert.match(account(path, "echo@x.test").lastError, /malformed refresh_token '\[redacted\]'/);
  assert.doesNotMatch(everything, new RegExp(token.replace(/[-]/g, "\\-")));
  assert.ok(!everything.includes(piece), "no piece of it either");
  mock.setTokenMode(null);
});

test("2b: a name holding a piece of a pool token (a hand edit) is hidden in events, notices and log lines as the CLI hides it", async () => {
  const path = tempPoolPath();
  const named = oauthEntry(mock, "hid@x.test");
  const other = oauthEntry(mock, "plain@x.test");
  // The access token's random part, without the fixed start that marks it.
  const hidden = `${named.access.slice(13, 45)}@x.test`;
  await savePool({ version: 1, anthropic: [{ ...named, email: hidden, priority: 5 }, other] }, path);
  mock.script("hid@x.test", [
    { status: 429, headers: { "retry-after": "120" }, body: { type: "error", error: { type: "rate_limit_error", message: "slow down" } } },
  ]);
  // Another process (its log is its stderr), while this one's mock answers.
  const child = await ran(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `const lib = await import(${JSON.stringify(INDEX)});
       const events = [];
       const f = lib.createPoolFetch({ path: ${JSON.stringify(path)}, onEvent: (e) => events.push(e) });
       const r = await f(${JSON.stringify(messagesUrl(mock))}, { method: "POST", headers: ${JSON.stringify(jsonHeaders)}, body: ${JSON.stringify(body())} });
       await r.text();
       await lib.flushPool(${JSON.stringify(path)});
       console.log(JSON.stringify({ served: r.poolAccount, events }));`,
    ],
    { encoding: "utf8", env: { ...process.env, OAUTH_POOL_LOG: "oauth_pool=debug" }, timeout: 30_000 },
  );
  const { served, events } = JSON.parse(child.stdout);
  assert.equal(served, "plain@x.test");
  assert.ok(
    events.some((e) => e.kind === "failover" && e.email === "[redacted]" && e.to === "plain@x.test"),
    JSON.stringify(events),
  );
  assert.match(child.stderr, /plain@x\.test/, "the log names the other account");
  const piece = hidden.slice(0, 12);
  assert.ok(!JSON.stringify(events).includes(piece) && !child.stderr.includes(piece), `${JSON.stringify(events)}\n${child.stderr}`);
});

test("2c: a login the token or profile endpoint names with a piece of its own tokens goes under another name", async () => {
  const path = tempPoolPath();
  // The token answer names the login with its access token's random part; the profile with the
  // token it was called with: neither is taken.
  mock.setTokenMode({
    grant: "authorization_code",
    reshape: (b) => ({ ...b, account: { ...b.account, email_address: `${b.access_token.slice(13)}@x.test` } }),
  });
  const { url, verifier, state } = await lib.authorize();
  const { email } = await lib.addAccount(mock.approve(url, "named@x.test"), { verifier, state }, path);
  assert.equal(email, "named@x.test", "the profile's name, which holds no secret");
  const [entry] = readPool(path).anthropic;
  assert.equal(entry.email, "named@x.test");
  mock.setTokenMode(null);
});

// ---- 3. files that hang or fill memory -------------------------------------------------------

test("3: credentials, pool and .bak paths that are FIFOs or devices answer at once with a code", async () => {
  const dir = tempDir("oauth-pool-fifo-");
  const fifo = join(dir, "creds.fifo");
  assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
  const path = join(dir, "pool.json");
  for (const credentialsPath of ["/dev/zero", fifo, dir]) {
    const started = Date.now();
    await assert.rejects(lib.importClaudeCode({ credentialsPath, path }), (e) => e.code === "INVALID_ARGUMENT" && /not a regular file/.test(e.message));
    assert.ok(Date.now() - started < 2000, `${credentialsPath} took ${Date.now() - started} ms`);
  }
  const r = cli(["import-claude-code", "--yes", "--credentials", "/dev/zero", "--path", path]);
  assert.equal(r.code, 1);
  assert.match(r.err, /INVALID_ARGUMENT/);
  // The pool file itself, and the .bak read for the POOL_CORRUPT hint.
  const poolFifo = join(dir, "fifo-pool.json");
  spawnSync("mkfifo", [poolFifo]);
  await assert.rejects(loadPool(poolFifo), (e) => e.code === "POOL_INSECURE");
  writeFileSync(path, "{ broken");
  spawnSync("mkfifo", [`${path}.bak`]);
  const started = Date.now();
  await assert.rejects(loadPool(path), (e) => e.code === "POOL_CORRUPT" && /no good \.bak/.test(e.message));
  assert.ok(Date.now() - started < 2000);
});

// ---- 4. a 400 read bounded, abortable, with a timeout -----------------------------------------

test("4: a 400 is read bounded: a stalled body times out, an abort rejects at once, a big one passes whole", async () => {
  const path = await seedPool(mock, ["b400@x.test"]);
  const f = createPoolFetch({ path });
  process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS = "300";
  try {
    mock.script("b400@x.test", [{ status: 400, body: "x".repeat(4000), chunkSize: 100, delayMs: 60_000 }]);
    const started = Date.now();
    await assert.rejects(post(f), (e) => e.code === "NETWORK" && /no data/.test(e.message));
    assert.ok(Date.now() - started < 2500, `${Date.now() - started} ms`);
  } finally {
    delete process.env.OAUTH_POOL_RESPONSE_TIMEOUT_MS;
  }
  mock.script("b400@x.test", [{ status: 400, body: "y".repeat(4000), chunkSize: 100, delayMs: 60_000 }]);
  const ac = new AbortController();
  const arrived = mock.waitFor("api", (r) => r.email === "b400@x.test");
  const pending = post(f, {}, { signal: ac.signal });
  await arrived;
  const started = Date.now();
  ac.abort();
  await assert.rejects(pending, (e) => e.name === "AbortError");
  assert.ok(Date.now() - started < 1000);
  const big = JSON.stringify({ type: "error", error: { type: "invalid_request_error", message: "z".repeat(2 * 1024 * 1024) } });
  mock.script("b400@x.test", [{ status: 400, body: big }]);
  const res = await post(f);
  assert.equal(res.status, 400);
  assert.equal(await res.text(), big, "byte-exact past the bounded peek");
});

// ---- 5. abort while a refresh runs ------------------------------------------------------------

test("5: an abort during a token refresh rejects at once; the refresh finishes for the next request", async () => {
  const path = await seedPool(mock, ["slow@x.test"], { expired: ["slow@x.test"] });
  mock.setTokenMode({ delayMs: 1500, grant: "refresh_token" });
  const f = createPoolFetch({ path });
  const ac = new AbortController();
  const refreshing = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const pending = post(f, {}, { signal: ac.signal });
  await refreshing;
  const started = Date.now();
  ac.abort();
  await assert.rejects(pending, (e) => e.name === "AbortError");
  assert.ok(Date.now() - started < 500, `rejected after ${Date.now() - started} ms`);
  const res = await post(f);
  assert.equal(res.status, 200);
  await res.text();
  assert.equal(mock.stats().perFamily["slow@x.test"].refreshCalls, 1, "the aborted refresh was not repeated");
  assert.equal(account(path, "slow@x.test").refresh, mock.tokens("slow@x.test").refresh, "its tokens were saved");
});

// ---- 6. no request waits for the pool file's write lock ---------------------------------------

function holdLock(lockPath) {
  const code = "import fcntl,sys,time\nf=open(sys.argv[1],'a')\nfcntl.flock(f,fcntl.LOCK_EX)\nprint('held',flush=True)\ntime.sleep(600)\n";
  const child = spawn("python3", ["-c", code, lockPath], { stdio: ["ignore", "pipe", "inherit"] });
  const held = new Promise((resolve, reject) => {
    child.stdout.on("data", (d) => String(d).includes("held") && resolve());
    child.on("error", reject);
    child.on("close", () => reject(new Error("lock holder ended")));
  });
  return { child, held };
}

test("6: a failover and the all-cooling answer never wait for another process's write lock", async () => {
  const path = await seedPool(mock, ["w1@x.test", "w2@x.test"]);
  await lib.setPriority("w1@x.test", 5, path);
  const holder = holdLock(`${path}.lock`);
  await holder.held;
  try {
    mock.script("w1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
    mock.script("w2@x.test", [{}, { status: 429, headers: rateLimitHeaders({ retryAfter: 300 }) }]);
    const f = createPoolFetch({ path });
    let started = Date.now();
    const res = await post(f);
    assert.equal(res.poolAccount, "w2@x.test");
    await res.text();
    assert.ok(Date.now() - started < 1500, `failover took ${Date.now() - started} ms`);
    started = Date.now();
    const cooling = await post(f);
    assert.equal(cooling.status, 429);
    assert.equal(cooling.headers.get("x-oauth-pool"), "all-accounts-cooling");
    assert.ok(Date.now() - started < 1500, `all-cooling took ${Date.now() - started} ms`);
  } finally {
    holder.child.kill("SIGKILL");
  }
  await flushPool(path);
  assert.equal(account(path, "w1@x.test").status, "rate-limited", "the cooldown landed once the lock was free");
});

// ---- 7. a new login revives an auth-error account in a running process ------------------------

test("7: logging in again (from another process) revives an auth-error account without a restart", async () => {
  const path = await seedPool(mock, ["re@x.test"], { expired: ["re@x.test"] });
  mock.revoke("re@x.test", { family: true });
  const f = createPoolFetch({ path });
  await assert.rejects(post(f), (e) => e.code === "POOL_NO_ACCOUNT");
  await assert.rejects(post(f), (e) => e.code === "POOL_NO_ACCOUNT", "still refused in this process");
  const { url, verifier, state } = await lib.authorize();
  const paste = mock.approve(url, "re@x.test");
  // Another process (async: the mock answers from this one) exchanges the code and writes.
  const child = spawn(
    process.execPath,
    [
      "--input-type=module",
      "-e",
      `const { addAccount } = await import(${JSON.stringify(INDEX)}); await addAccount(process.argv[1], JSON.parse(process.argv[2]), process.argv[3]);`,
      paste,
      JSON.stringify({ verifier, state }),
      path,
    ],
    { env: process.env, stdio: ["ignore", "inherit", "inherit"] },
  );
  assert.equal(await new Promise((r) => child.on("close", r)), 0);
  const res = await post(f);
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "re@x.test");
  await res.text();
});

// ---- 8. a long retry-after is honoured --------------------------------------------------------

test("8: retry-after 7999 (or a date three hours ahead) is honoured, not clamped to minutes", async () => {
  const inThreeHours = new Date(Date.now() + 3 * 3600_000).toUTCString();
  for (const [retryAfter, expected] of [
    ["7999", 7999],
    [inThreeHours, 3 * 3600],
  ]) {
    const path = await seedPool(mock, [`ra${expected}@x.test`]);
    mock.script(`ra${expected}@x.test`, [{ status: 429, headers: { "retry-after": retryAfter } }]);
    const f = createPoolFetch({ path });
    const res = await post(f);
    assert.equal(res.status, 429);
    const wait = Number(res.headers.get("retry-after"));
    // The server's wait, plus this process's share of the reopening spread (at most 10 s).
    assert.ok(wait >= expected - 3 && wait <= expected + 11, `retry-after ${wait}, expected ${expected}`);
    await flushPool(path);
    const left = (account(path, `ra${expected}@x.test`).rateLimitUntil - Date.now()) / 1000;
    assert.ok(Math.abs(left - expected) <= 3, `cooling ${left} s`);
  }
});

// ---- 9. new tokens that cannot be saved -------------------------------------------------------

test("9: refreshed tokens that cannot be written keep the refresh lock, are reported, and are saved by a later write", async () => {
  const path = await seedPool(mock, ["us@x.test"], { expired: ["us@x.test"] });
  const good = readFileSync(path);
  mock.setTokenMode({ delayMs: 300, grant: "refresh_token" });
  const events = [];
  const f = createPoolFetch({ path, onEvent: (e) => events.push(e) });
  const refreshing = mock.waitFor("token", (r) => r.grant === "refresh_token");
  const pending = post(f);
  await refreshing;
  writeFileSync(path, "{ broken by a hand edit"); // while the token call is out
  const res = await pending;
  assert.equal(res.status, 200, "served with the new tokens from memory");
  await res.text();
  assert.ok(
    events.some((e) => e.kind === "tokens-unsaved" && e.email === "us@x.test"),
    JSON.stringify(events),
  );
  // The person fixes the file (here: back to what it was, with the spent refresh token).
  writeFileSync(path, good);
  const mine = await poolStatus(path);
  assert.deepEqual(
    mine.unsavedTokens.map((u) => u.email),
    ["us@x.test"],
  );
  const other = JSON.parse(cli(["status", "--json", "--path", path]).out);
  assert.deepEqual(other.refreshLocked, ["us@x.test"], "other processes see the refresh lock held");
  // What the README's Troubleshooting tells a person to look for in another process.
  assert.match(cli(["status", "--path", path]).out, /^refresh under way \(its lock is held\): us@x\.test$/m);
  const again = await post(f);
  assert.equal(again.status, 200);
  await again.text();
  await flushPool(path);
  assert.equal(account(path, "us@x.test").refresh, mock.tokens("us@x.test").refresh, "saved by the next write");
  assert.deepEqual((await poolStatus(path)).unsavedTokens, []);
  assert.deepEqual(JSON.parse(cli(["status", "--json", "--path", path]).out).refreshLocked, [], "and the lock released");
  assert.equal(mock.stats().perFamily["us@x.test"].reuse, 0);
  assert.equal(mock.stats().perFamily["us@x.test"].refreshCalls, 1);
});

// Found by a review (2026-12-07): such a process, meeting a 401 on its new token, waited 75 s
// on the refresh lock its own unsaved tokens hold, then told of a refresh under way that was
// none, and answered the all-cooling 429 as if the account were rate-limited.
/**
 * Two requests of a process whose pool writes fail (`ulimit -f 4`, as a full disk; reads work):
 * the first refreshes the expired token, its new tokens kept unsaved; `between()` runs before the
 * second. Each answer as `{ status, ms }` or `{ code, message, ms }`.
 */
async function twoRequestsUnsaved(email, between) {
  const path = tempPoolPath();
  // Over the 4 KB a write may make under `ulimit -f 4`.
  await savePool({ version: 1, anthropic: [oauthEntry(mock, email, { expired: true })], padding: "x".repeat(4500) }, path);
  const script = `
    const lib = await import(${JSON.stringify(INDEX)});
    const f = lib.createPoolFetch({ path: ${JSON.stringify(path)} });
    const ask = async () => {
      const started = Date.now();
      try {
        const r = await f(${JSON.stringify(messagesUrl(mock))}, { method: "POST", headers: ${JSON.stringify(jsonHeaders)}, body: ${JSON.stringify(body())} });
        await r.text();
        return { status: r.status, ms: Date.now() - started };
      } catch (e) {
        return { code: e.code, message: e.message, ms: Date.now() - started };
      }
    };
    console.log(JSON.stringify(await ask()));
    for await (const _ of process.stdin) break;
    console.log(JSON.stringify(await ask()));
    process.exit(0);`;
  const child = spawn("bash", ["-c", 'ulimit -f 4; exec "$0" "$@"', process.execPath, "--input-type=module", "-e", script], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines = [];
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  let buffered = "";
  child.stdout.setEncoding("utf8").on("data", (d) => {
    buffered += d;
    for (let at = buffered.indexOf("\n"); at >= 0; at = buffered.indexOf("\n")) {
      lines.push(JSON.parse(buffered.slice(0, at)));
      buffered = buffered.slice(at + 1);
      if (lines.length === 1) {
        between();
        child.stdin.end("next\n");
      }
    }
  });
  await new Promise((resolve) => child.on("close", resolve));
  assert.equal(lines.length, 2, stderr);
  assert.equal(lines[0].status, 200, "served with the new tokens from memory");
  return lines[1];
}

// Found by a review (2026-12-07): such a process, meeting a 401 on its new token, waited 75 s
// on the refresh lock its own unsaved tokens hold, then told of a refresh under way that was
// none, and answered the all-cooling 429 as if the account were rate-limited; and one whose new
// token was merely due for a refresh failed requests the token could still serve.
test("9b: a 401 on tokens this process could not write (a file size limit) fails at once with the write's failure, not 75 s later", async () => {
  const email = "us9b@x.test";
  // The first answer came with the new tokens, kept unsaved: the server now refuses them.
  const second = await twoRequestsUnsaved(email, () => mock.revoke(email));
  assert.ok(second.ms < 20_000, `answered after ${second.ms} ms`);
  assert.equal(second.status, undefined, JSON.stringify(second));
  assert.equal(second.code, "POOL_IO", JSON.stringify(second));
  assert.match(second.message, /could not be saved/, second.message);
  assert.doesNotMatch(second.message, /still being refreshed|rate-limited/);
  assert.equal(mock.stats().perFamily[email].reuse, 0);

  // New tokens due for a refresh at once (4 min 50 s left, inside the 5-minute margin), no 401:
  // they serve while they last.
  const margin = "us9c@x.test";
  mock.setTokenMode({ grant: "refresh_token", reshape: (b) => ({ ...b, expires_in: 290 }) });
  const served = await twoRequestsUnsaved(margin, () => {});
  mock.setTokenMode(null);
  assert.equal(served.status, 200, JSON.stringify(served));
  assert.ok(served.ms < 20_000, `answered after ${served.ms} ms`);
  assert.equal(mock.stats().perFamily[margin].refreshCalls, 1);
  assert.equal(mock.stats().perFamily[margin].reuse, 0);
});

// ---- 10. savePool never wipes the pool --------------------------------------------------------

test("10: savePool of something without an anthropic array is POOL_INVALID and writes nothing", async () => {
  const path = await seedPool(mock, ["keep@x.test"]);
  const before = readFileSync(path);
  for (const bad of [{}, new Date(), { anthropic: undefined }, { anthropic: null }, { anthropic: {} }, [], 5, "x", null]) {
    await assert.rejects(savePool(bad, path), (e) => e.code === "POOL_INVALID", String(bad));
  }
  assert.deepEqual(readFileSync(path), before);
});

// ---- 11. every export validates its arguments -------------------------------------------------

test("11: wrong argument types reject with INVALID_ARGUMENT and a sentence", async () => {
  const path = tempPoolPath();
  const calls = [
    () => lib.loadPool(0),
    () => lib.exchange("a#b"),
    () => lib.exchange(5, { verifier: "v", state: "s" }),
    () => lib.authorize({ mode: 5 }),
    () => lib.authorize({ mode: "bogus" }),
    () => lib.setPriority("a@x", Symbol("p")),
    () => lib.setPriority("a@x", 1.5),
    () => lib.setEnabled("a@x", "yes"),
    () => lib.removeAccount(5),
    () => lib.removeAccount(),
    () => lib.removeAccount({}),
    () => lib.addApiKey(5),
    () => lib.importClaudeCode("path"),
    () => lib.savePool({ anthropic: [{ email: "a@x", expires: Number.NaN }] }, path),
    () => lib.savePool({ anthropic: [{ email: "a@x", expires: Number.POSITIVE_INFINITY }] }, path),
    () => lib.savePool({ anthropic: [], x: () => 1 }, path),
    () => lib.refresh(undefined),
    () => createPoolFetch({ path })(messagesUrl(mock), { method: 5 }),
    () => createPoolFetch({ path })(5),
  ];
  for (const [i, call] of calls.entries()) {
    await assert.rejects(
      (async () => call())(),
      // "got a undefined", "got a object": a sentence, in English.
      (e) => e.code === "INVALID_ARGUMENT" && e.message.length > 10 && !/StringExpected|InvalidArg|\ba (undefined|object)\b/.test(e.message),
      `call ${i}`,
    );
  }
  assert.throws(
    () => createPoolFetch(5),
    (e) => e.code === "INVALID_ARGUMENT",
  );
});

test("11b: a credential passed where another argument goes (arguments swapped, a key as an option's name) is not repeated by INVALID_ARGUMENT", async () => {
  // `addApiKey("me@x.test", key)` said "addApiKey's options must be an object, got
  // "sk-ant-api03-<27 characters of the key>..."", and an option named by a token repeated all
  // of it: the message goes to logs and toasts.
  const key = `sk-ant-api03-${"K3yMaterial".repeat(8)}`;
  const token = `sk-ant-ort01-${"T0kenMaterial".repeat(7)}`;
  const calls = [
    ["addApiKey(email, key)", () => lib.addApiKey("me@x.test", key), /options must be an object/],
    ["authorize(token)", () => lib.authorize(token), /options must be an object/],
    ["authorize({ mode: token })", () => lib.authorize({ mode: token }), /mode must be/],
    ["setEnabled(email, token)", () => lib.setEnabled("a@x.test", token), /enabled must be/],
    ["setPriority(email, token)", () => lib.setPriority("a@x.test", token), /priority must be/],
    ["setReserve(email, key)", () => lib.setReserve("a@x.test", key), /a reserve is a fraction/],
    ["importClaudeCode(token)", () => lib.importClaudeCode(token), /options must be an object/],
    ["serve({ port: key })", () => lib.serve({ port: key }), /port must be/],
    ["authorize({ [token]: 1 })", () => lib.authorize({ [token]: 1 }), /no option/],
    ["addApiKey(key, { [key]: 1 })", () => lib.addApiKey(key, { [key]: 1 }), /no option/],
    ["createPoolFetch({ [token]: 1 })", () => lib.createPoolFetch({ [token]: 1 }), /no option/],
    ["createPoolFetch({ transport: key })", () => lib.createPoolFetch({ transport: key }), /transport must be/],
  ];
  for (const [what, call, says] of calls) {
    let err;
    try {
      await call();
    } catch (e) {
      err = e;
    }
    assert.equal(err?.code, "INVALID_ARGUMENT", what);
    assert.match(err.message, says, what);
    for (const secret of [key, token]) {
      for (let i = "sk-ant-".length; i + 12 <= secret.length; i += 6) {
        assert.ok(!err.message.includes(secret.slice(i, i + 12)), `${what}: a piece of the credential in ${err.message}`);
      }
    }
  }
});

test("11c: a pool no file can hold (holes, nesting past what a read takes, 2^32 - 1 items) is refused with a code, fast, and what is stored stays", async () => {
  // A hole went to the addon and came back as napi's "InvalidArg"; 100,000 levels overflowed the
  // stack (a RangeError, no code); an array of length 2^32 - 1 was walked for minutes under Node,
  // and under Bun the addon asked for 300 GB and the process aborted.
  const path = tempPoolPath();
  const kept = { version: 1, anthropic: [{ email: "kept@x.test", type: "api", key: "sk-ant-api03-kept" }] };
  await lib.savePool(kept, path);
  const stored = readFileSync(path, "utf8");
  const nested = (levels) => {
    const root = {};
    let o = root;
    for (let i = 0; i < levels; i++) o = o.x = {};
    return root;
  };
  const endless = [];
  endless.length = 2 ** 32 - 1;
  const secretName = `sk-ant-api03-${"S3cretMaterial".repeat(7)}`;
  const holed = [];
  holed[1] = kept.anthropic[0];
  const cases = [
    ["a hole", { anthropic: holed }, "INVALID_ARGUMENT", /pool\.anthropic\[0\] is undefined \(or a hole\)/],
    ["an undefined item", { anthropic: [{ ...kept.anthropic[0], list: [1, undefined] }] }, "INVALID_ARGUMENT", /pool\.anthropic\[0\]\.list\[1\] is undefined/],
    ["100,000 levels", { anthropic: [{ ...kept.anthropic[0], deep: nested(100_000) }] }, "POOL_INVALID", /nested more than 127 levels deep/],
    ["2^32 - 1 items", { anthropic: endless }, "POOL_INVALID", /has 4294967295 items, more than a pool file can hold/],
    ["a token as a key's name", { anthropic: [{ ...kept.anthropic[0], [secretName]: Number.NaN }] }, "INVALID_ARGUMENT", /pool\.anthropic\[0\]\.\S+ is NaN/],
  ];
  for (const [what, pool, code, message] of cases) {
    await assert.rejects(
      (async () => lib.savePool(pool, path))(),
      (e) => {
        assert.equal(e.code, code, `${what}: ${e.message}`);
        assert.match(e.message, message, what);
        assert.ok(e.message.length < 400, `${what}: a short message`);
        assert.ok(!e.message.includes("S3cretMaterial"), `${what}: no credential repeated`);
        return true;
      },
      what,
    );
    assert.equal(readFileSync(path, "utf8"), stored, `${what}: the pool file is as it was`);
  }
  // As deep as the reader takes, and no deeper: what `loadPool` gave is saved back (another
  // writer's section 110 deep was refused), and one level more is refused before the write.
  for (const [levels, saved] of [
    [110, true],
    [125, true],
    [126, false],
  ]) {
    const pool = { ...kept, other: nested(levels) };
    if (saved) {
      await lib.savePool(pool, path);
      await lib.savePool(await lib.loadPool(path), path);
      assert.deepEqual((await lib.loadPool(path)).other, nested(levels), `${levels} levels`);
    } else {
      await assert.rejects(lib.savePool(pool, path), (e) => e.code === "POOL_INVALID", `${levels} levels`);
      assert.deepEqual((await lib.loadPool(path)).other, nested(125), "the file is as it was, and reads");
    }
  }
  // As deep as a pool file is read back, it is written and read.
  const deepest = { anthropic: [{ ...kept.anthropic[0], deep: nested(96) }] };
  await lib.savePool(deepest, path);
  let o = (await lib.loadPool(path)).anthropic[0].deep;
  let levels = 0;
  while (o.x) {
    o = o.x;
    levels++;
  }
  assert.equal(levels, 96);
});

// Found by a review (2026-12-07, second): an argument whose own code throws (a Proxy's trap, a
// getter, a detached buffer) came back as the caller's own Error, without a code.
test("11f: an argument whose own code throws (a Proxy's trap, a getter, a detached buffer) rejects with INVALID_ARGUMENT, the throw as its cause", async () => {
  const path = tempPoolPath();
  const trap = () => {
    throw new Error("the caller's trap");
  };
  const hostile = new Proxy({}, { get: trap, ownKeys: trap, getPrototypeOf: trap, has: trap });
  const getter = Object.defineProperty({}, "path", { get: trap, enumerable: true });
  const pkce = { verifier: "v".repeat(43), state: "s".repeat(43) };
  const calls = [
    ["loadPool", () => lib.loadPool(hostile)],
    ["removeAccount", () => lib.removeAccount(hostile, path)],
    ["setEnabled", () => lib.setEnabled("a@x.test", true, hostile)],
    ["setPriority", () => lib.setPriority(hostile, 1, path)],
    ["addApiKey's key", () => lib.addApiKey(hostile, { path })],
    ["addApiKey's options (a Proxy)", () => lib.addApiKey("sk-ant-api03-x", hostile)],
    ["addApiKey's options (a getter)", () => lib.addApiKey("sk-ant-api03-x", getter)],
    ["exchange's code", () => lib.exchange(hostile, pkce)],
    ["exchange's pkce", () => lib.exchange("code#state", hostile)],
    ["addAccount's pkce", () => lib.addAccount("code#state", hostile, path)],
    ["createPoolFetch's options", async () => lib.createPoolFetch(getter)],
  ];
  for (const [what, call] of calls) {
    await assert.rejects(
      (async () => call())(),
      (e) => {
        assert.equal(e.code, "INVALID_ARGUMENT", `${what}: ${e.message}`);
        return true;
      },
      what,
    );
  }
  const fetch = lib.createPoolFetch({ path });
  const detached = new ArrayBuffer(16);
  structuredClone(detached, { transfer: [detached] });
  for (const [what, init] of [
    ["a Proxy as the options", new Proxy({}, { get: trap })],
    ["a getter of the body", Object.defineProperty({ method: "POST" }, "body", { get: trap })],
    ["a detached buffer as the body", { method: "POST", body: detached }],
  ]) {
    await assert.rejects(
      fetch(messagesUrl(mock), init),
      (e) => {
        assert.ok(e instanceof TypeError && e.code === "INVALID_ARGUMENT", `${what}: ${e.code} ${e.message}`);
        return true;
      },
      what,
    );
  }
});

// Found by a review (2026-12-07, second): what `loadPool` read was kept on the pool as symbol
// properties and handed to the addon unchecked, so a Proxy answering symbol lookups, or a copy
// carrying the loaded pool's symbols, gave it a "held" array of 2^32 - 1 slots: its conversion
// asked for 309 GB and aborted the process (SIGABRT, the host gone with its session).
test("11e: savePool of a Proxy answering every lookup, or of a copy carrying what the loaded pool carries, leaves the host alive", async () => {
  const path = tempPoolPath();
  await lib.savePool({ version: 1, anthropic: [{ email: "kept@x.test", type: "api", key: "sk-ant-api03-kept" }] }, path);
  const script = `
    const lib = await import(${JSON.stringify(INDEX)});
    const path = ${JSON.stringify(path)};
    const endless = () => Object.assign([], { length: 2 ** 32 - 1 });
    const said = [];
    const attempt = async (what, pool) => {
      try { await lib.savePool(pool, path); said.push(what + ": saved"); } catch (e) { said.push(what + ": " + e.code); }
    };
    const loaded = await lib.loadPool(path);
    const hostile = (k) => (k.description?.includes("read at") ? 1 : k.description?.includes("read from") ? path : { anthropic: endless() });
    await attempt("proxy", new Proxy({ ...loaded }, { get: (t, k) => (typeof k === "symbol" ? hostile(k) : t[k]) }));
    const copy = { ...loaded };
    for (const k of Object.getOwnPropertySymbols(loaded)) copy[k] = hostile(k);
    await attempt("copy", copy);
    await attempt("loaded", loaded);
    console.log(JSON.stringify(said));`;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", env: process.env, timeout: 60_000 });
  assert.equal(r.signal, null, `the process was ended by ${r.signal}: ${r.stderr.slice(-500)}`);
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  assert.deepEqual(JSON.parse(r.stdout.trim().split("\n").at(-1)), ["proxy: saved", "copy: saved", "loaded: saved"]);
  assert.deepEqual(
    (await lib.loadPool(path)).anthropic.map((a) => a.email),
    ["kept@x.test"],
  );
});

test("11d: a pool of objects without a prototype (Object.create(null), as parsers and merges make them) is data and is saved; a Map or a class's instance is refused by its name", async () => {
  // Such a pool was refused: "a pool is an object ..., got an object".
  const path = tempPoolPath();
  const bare = (fields) => Object.assign(Object.create(null), fields);
  const pool = bare({ version: 1, anthropic: [bare({ email: "bare@x.test", type: "api", key: "sk-ant-api03-bare", extra: bare({ kept: true }) })] });
  await lib.savePool(pool, path);
  const back = await lib.loadPool(path);
  assert.equal(back.anthropic[0].email, "bare@x.test");
  assert.deepEqual({ ...back.anthropic[0].extra }, { kept: true });
  const stored = readFileSync(path, "utf8");
  class Accounts {}
  const cases = [
    ["a Map", new Map([["anthropic", []]]), /got a Map;/],
    ["a class's instance", Object.assign(new Accounts(), { anthropic: [] }), /got an Accounts;/],
    ["a Map inside", { anthropic: [{ email: "m@x.test", extra: new Map() }] }, /pool\.anthropic\[0\]\.extra is a Map: a pool must be plain JSON/],
    ["a Date inside", { anthropic: [{ email: "d@x.test", when: new Date(0) }] }, /is a Date: a pool must be plain JSON/],
  ];
  for (const [what, value, message] of cases) {
    await assert.rejects(
      (async () => lib.savePool(value, path))(),
      (e) => ["INVALID_ARGUMENT", "POOL_INVALID"].includes(e.code) && message.test(e.message),
      what,
    );
    assert.equal(readFileSync(path, "utf8"), stored, `${what}: the pool file is as it was`);
  }
});

// ---- 13. emails that differ only in case ------------------------------------------------------

test("13: accounts whose emails differ only in case are two accounts: served, changed and removed exactly", async () => {
  const path = tempPoolPath();
  const a = mock.addAccount("Case@x.test");
  const b = mock.addAccount("case@x.test");
  const entry = (email, t) => ({ email, access: t.access, refresh: t.refresh, expires: t.expires, status: "idle", rateLimitUntil: null });
  await savePool({ anthropic: [entry("Case@x.test", a), entry("case@x.test", b)] }, path);
  const f = createPoolFetch({ path });
  mock.script("Case@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }]);
  mock.script("case@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }]);
  await lib.setPriority("Case@x.test", 5, path);
  const res = await post(f);
  assert.equal(res.status, 429, "both were tried");
  assert.equal(mock.requests.filter((r) => r.email && /^case@x\.test$/i.test(r.email)).length >= 2, true);
  await lib.resetCooldowns(path);
  const served = await post(f);
  assert.equal(served.poolAccount, "Case@x.test");
  await served.text();
  await lib.setEnabled("Case@x.test", false, path);
  assert.equal(readPool(path).anthropic.find((x) => x.email === "case@x.test").enabled, undefined, "only the exact one");
  const status = await poolStatus(path);
  assert.deepEqual(status.caseClashes, [["Case@x.test", "case@x.test"]]);
  await assert.rejects(lib.removeAccount("CASE@X.TEST", path), (e) => e.code === "INVALID_ARGUMENT" && /differ only in case/.test(e.message));
  assert.equal(await lib.removeAccount("case@x.test", path), 1);
  assert.deepEqual(
    readPool(path).anthropic.map((x) => x.email),
    ["Case@x.test"],
  );
});

// ---- 14. unreadable entries are listed and removable -----------------------------------------

test("14: unreadable entries are listed (marked invalid) and can be removed by email or #index", async () => {
  const path = await seedPool(mock, ["fine@x.test"]);
  const raw = readPool(path);
  raw.anthropic.push({ email: "broken@x.test", expires: "tomorrow" }, 42);
  writeFileSync(path, JSON.stringify(raw));
  const list = await lib.listAccounts(path);
  assert.deepEqual(
    list.map((a) => [a.email, a.status]),
    [
      ["fine@x.test", "idle"],
      ["broken@x.test", "invalid"],
      ["#2", "invalid"],
    ],
  );
  assert.match(list[1].lastError, /unreadable/);
  // Loaded, edited and saved: the unreadable entries go back as they were (a review found
  // `savePool(await loadPool())` refused, POOL_INVALID); one the caller made up is still refused.
  const loaded = await lib.loadPool(path);
  loaded.anthropic[0].priority = 3;
  await lib.savePool(loaded, path);
  assert.deepEqual(readPool(path).anthropic.slice(1), [{ email: "broken@x.test", expires: "tomorrow" }, 42]);
  assert.equal(account(path, "fine@x.test").priority, 3);
  const madeUp = await lib.loadPool(path);
  madeUp.anthropic.push({ email: "", refresh: "x" });
  await assert.rejects(lib.savePool(madeUp, path), (e) => e.code === "POOL_INVALID");
  assert.equal(await lib.removeAccount("broken@x.test", path), 1);
  assert.equal(await lib.removeAccount("#1", path), 1);
  assert.deepEqual(
    readPool(path).anthropic.map((a) => a.email),
    ["fine@x.test"],
  );
});

// ---- 15. an API server that echoes the credential it was sent ---------------------------------
test("15b: a token echoed split over two lines of one header name does not come out joined (both transports)", async () => {
  const path = await seedPool(mock, ["split-echo@x.test"]);
  const token = account(path, "split-echo@x.test").access;
  const half = Math.floor(token.length / 2);
  for (const transport of ["native", "runtime"]) {
    mock.script("split-echo@x.test", [
      { status: 200, body: { ok: true }, headers: { "x-split": [token.slice(0, half), token.slice(half)], "x-list": ["a", "b"] } },
    ]);
    const res = await post(createPoolFetch({ path, transport }));
    assert.equal(res.status, 200, transport);
    const joined = JSON.stringify([...res.headers]).replace(/[ ,]/g, "");
    assert.ok(!joined.includes(token.slice(8, half + 8)), `${transport}: ${JSON.stringify([...res.headers])}`);
    assert.match(res.headers.get("x-split"), /\[redacted\]/, transport);
    assert.equal(res.headers.get("x-list"), "a, b", transport);
    await res.text();
  }
});

test("15: a server echoing the presented token: no answer header or body carries it (both transports, and the gateway)", async () => {
  const path = await seedPool(mock, ["mirror@x.test"]);
  const token = account(path, "mirror@x.test").access;
  // The echo is cut into 7-byte writes, so the token also arrives split across reads.
  const echo = () => ({
    status: 200,
    body: { echoed: `Bearer ${token}`, again: token },
    // A name cannot hold "[redacted]": a header named after the token is dropped.
    headers: { "x-echo": `Bearer ${token}`, "set-cookie": `t=${token}`, [`x-${token}`]: "1", "x-kept": "1" },
    chunkSize: 7,
    delayMs: 1,
  });
  for (const transport of ["native", "runtime"]) {
    mock.script("mirror@x.test", [echo()]);
    const res = await post(createPoolFetch({ path, transport }));
    assert.equal(res.status, 200);
    const headers = JSON.stringify([...res.headers]);
    assert.ok(!headers.toLowerCase().includes(token.toLowerCase()), `${transport}: ${headers}`);
    assert.equal(res.headers.get("x-echo"), "Bearer [redacted]", transport);
    assert.equal(res.headers.get("x-kept"), "1", transport);
    // The contract: text from a server is scrubbed before it is returned. The body reaches
    // OpenCode's screen, its session files and shared sessions (found by a review: it came as
    // the server sent it).
    const text = await res.text();
    assert.ok(!text.includes(token), `${transport}: ${text}`);
    assert.deepEqual(JSON.parse(text), { echoed: "Bearer [redacted]", again: "[redacted]" }, transport);
  }
  // A body labelled with a coding that changes nothing (`identity`, an empty one, one nobody
  // knows) is the body as sent: under Bun the runtime transport passed it unsearched (found by a
  // review), whole and as an event stream.
  for (const transport of ["native", "runtime"]) {
    for (const coding of ["identity", "", "x-custom"]) {
      for (const stream of [false, true]) {
        const scripted = echo();
        scripted.headers["content-encoding"] = coding;
        if (stream) {
          scripted.headers["content-type"] = "text/event-stream";
          scripted.body = `event: echo\ndata: {"echoed":"Bearer ${token}"}\n\n`;
        }
        mock.script("mirror@x.test", [scripted]);
        const res = await post(createPoolFetch({ path, transport }));
        const text = await res.text();
        const said = `${transport}, content-encoding ${JSON.stringify(coding)}${stream ? ", an event stream" : ""}`;
        assert.equal(res.status, 200, said);
        assert.ok(!text.includes(token), `${said}: ${text}`);
        assert.match(text, /Bearer \[redacted\]/, said);
      }
    }
  }
  // A plain body labelled with compressions the runtime leaves undone (`gzip, gzip` under Bun,
  // `compress`): passed unsearched by the runtime transport, the token in it (found by a review,
  // 2026-12-07, fourth). Each transport is sent only labels its client does not try to undo.
  const bun = typeof Bun !== "undefined";
  const undone = {
    native: ["gzip, gzip", "br, gzip", "zstd", "compress", "x-compress"],
    runtime: bun ? ["gzip, gzip", "br, gzip", "compress", "x-compress"] : ["zstd", "compress", "x-compress"],
  };
  for (const transport of ["native", "runtime"]) {
    for (const coding of undone[transport]) {
      const scripted = echo();
      scripted.headers["content-encoding"] = coding;
      mock.script("mirror@x.test", [scripted]);
      const res = await post(createPoolFetch({ path, transport }));
      const text = await res.text();
      const said = `${transport}, a plain body labelled ${JSON.stringify(coding)}`;
      assert.equal(res.status, 200, said);
      assert.ok(!text.includes(token), `${said}: ${text}`);
      assert.match(text, /Bearer \[redacted\]/, said);
    }
  }
  // Its random part alone, the `sk-ant-oat01-` prefix left out (found by a review).
  const core = token.replace(/^sk-ant-[a-z0-9]+-/, "");
  assert.notEqual(core, token);
  for (const transport of ["native", "runtime"]) {
    mock.script("mirror@x.test", [{ status: 200, body: { core }, headers: { "x-core": `t=${core}` }, chunkSize: 7, delayMs: 1 }]);
    const res = await post(createPoolFetch({ path, transport }));
    const text = await res.text();
    assert.ok(!text.includes(core) && !JSON.stringify([...res.headers]).includes(core), `${transport}: ${text}`);
    assert.equal(res.headers.get("x-core"), "t=[redacted]", transport);
  }
  const key = "test-gateway-key-echo-0123456789";
  process.env.OAUTH_POOL_GATEWAY_KEY = key;
  const gw = await lib.serve({ port: 0, path });
  try {
    mock.script("mirror@x.test", [echo()]);
    mock.clearRequests();
    // The client's own header named after the gateway key stays with the gateway too.
    const res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key, [`x-${key}`]: "1" }, body: body() });
    const text = await res.text();
    assert.ok(
      !JSON.stringify([...res.headers])
        .toLowerCase()
        .includes(token.toLowerCase()),
    );
    const sent = Object.keys(mock.requests.at(-1).headers);
    assert.ok(!sent.some((name) => name.includes(key)), `upstream got ${sent}`);
    assert.ok(sent.includes("anthropic-version"), `upstream got ${sent}`);
    assert.ok(!text.includes(token), text);
    assert.deepEqual(JSON.parse(text), { echoed: "Bearer [redacted]", again: "[redacted]" });
  } finally {
    await gw.close(1000);
    delete process.env.OAUTH_POOL_GATEWAY_KEY;
  }
});

// A server that echoes the request re-encoded (a debugging echo that answers the request in
// base64, a header value in hex) hands the credential back in another shape, which a search for
// the credential itself does not find.
test("15c: a server echoing the token in base64 or hex: no answer header or body carries it (both transports, and the gateway)", async () => {
  const path = await seedPool(mock, ["reshaped@x.test"]);
  const token = account(path, "reshaped@x.test").access;
  const line = (prefix) => `${prefix}${token}\r\n`;
  const shapes = [
    Buffer.from(line("authorization: Bearer ")).toString("base64"),
    Buffer.from(line("x")).toString("base64url"),
    Buffer.from(line("xy")).toString("base64"),
    Buffer.from(line("")).toString("hex"),
    Buffer.from(line("")).toString("hex").toUpperCase(),
  ];
  const pieces = (shape) => [shape.slice(8, 40), shape.slice(-40, -8)];
  const echo = () => ({
    status: 200,
    body: { request: shapes },
    headers: { "x-echo": shapes[0], "x-echo-hex": shapes[3] },
    chunkSize: 7,
    delayMs: 1,
  });
  for (const transport of ["native", "runtime"]) {
    mock.script("reshaped@x.test", [echo()]);
    const res = await post(createPoolFetch({ path, transport }));
    assert.equal(res.status, 200);
    const headers = JSON.stringify([...res.headers]);
    for (const shape of [shapes[0], shapes[3]]) for (const piece of pieces(shape)) assert.ok(!headers.includes(piece), `${transport}: ${headers}`);
    assert.match(res.headers.get("x-echo"), /\[redacted\]/, transport);
    const text = await res.text();
    for (const shape of shapes) for (const piece of pieces(shape)) assert.ok(!text.includes(piece), `${transport} ${shape}: ${text}`);
    assert.equal(JSON.parse(text).request.length, shapes.length, transport);
  }
  const key = "test-gateway-key-reshaped-0123456789";
  process.env.OAUTH_POOL_GATEWAY_KEY = key;
  const gw = await lib.serve({ port: 0, path });
  try {
    mock.script("reshaped@x.test", [echo()]);
    const answer = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key }, body: body() });
    const text = await answer.text();
    assert.equal(answer.status, 200);
    for (const shape of shapes) for (const piece of pieces(shape)) assert.ok(!text.includes(piece), `${shape}: ${text}`);
    assert.equal(JSON.parse(text).request.length, shapes.length);
  } finally {
    await gw.close(1000);
    delete process.env.OAUTH_POOL_GATEWAY_KEY;
  }
});

// Found by a review: under Node (the Rust transport) a body read in bulk (no length, or over
// 64 KB) was searched for the token only as it was sent: a chunked 404 echoing it in base64, in
// hex or without its prefix reached the caller; under Bun it was scrubbed.
test("15c: an error page sent without a length, or a large body, echoing the token re-encoded or without its prefix: scrubbed on both transports", async () => {
  const path = await seedPool(mock, ["bulk-echo@x.test"]);
  const token = account(path, "bulk-echo@x.test").access;
  const core = token.split("-").slice(3).join("-");
  const shapes = [Buffer.from(`GET /v1/models HTTP/1.1\r\nauthorization: Bearer ${token}\r\n`).toString("base64"), Buffer.from(token).toString("hex"), core];
  const page = `<html><body>not found; you sent: ${shapes.join(" | ")}</body></html>`;
  const large = JSON.stringify({ echo: shapes, pad: ".".repeat(100_000) });
  const answers = {
    "a chunked 404": { status: 404, raw: page, headers: { "content-type": "text/html" }, chunkSize: 9 },
    "a 200 of 100 KB": { status: 200, body: large, headers: { "content-type": "application/json" }, chunkSize: 4096 },
  };
  for (const transport of ["native", "runtime"]) {
    for (const [name, answer] of Object.entries(answers)) {
      mock.script("bulk-echo@x.test", [answer]);
      const res = await post(createPoolFetch({ path, transport }));
      assert.equal(res.status, answer.status, `${transport} ${name}`);
      const text = await res.text();
      // Pieces each shape owes to the token alone (the base64's end, past the request line).
      for (const piece of [shapes[0].slice(-50, -12), shapes[1].slice(8, 40), shapes[2].slice(4, 30)])
        assert.ok(!text.includes(piece), `${transport} ${name}: ${text.slice(0, 300)}`);
      assert.match(text, /\[redacted\]/, `${transport} ${name}`);
    }
  }
});

// Found by a review: the credentials to scrub were the last attempt's. After a failover, an
// answer that echoed the first account's token (a proxy keeping the request's first headers, a
// debugging echo) gave it to the caller: in hex or base64 in the headers, and as it is in the
// gateway's body, which only the last account's token was looked for in.
test("15d: after a failover, an answer echoing the token of the account that refused: no answer header carries it (both transports), nor the gateway's body", async () => {
  // A pool of its own for each way through: a request sticks to the account that served the last.
  const seeded = async (kind) => {
    const [refused, served] = [`refused-${kind}@x.test`, `served-${kind}@x.test`];
    const path = await seedPool(mock, [refused, served]);
    await lib.setPriority(refused, 5, path);
    const first = account(path, refused).access;
    const hex = Buffer.from(first).toString("hex");
    const b64 = Buffer.from(first).toString("base64");
    mock.script(refused, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 30 }) }]);
    mock.script(served, [{ status: 200, body: { plain: first, hex, b64 }, headers: { "x-echo-hex": hex, "x-echo-b64": b64 } }]);
    const pieces = [first.slice(-24), hex.slice(8, 40), hex.slice(-40, -8), b64.slice(8, 40), b64.slice(-40, -8)];
    return { path, served, pieces };
  };
  for (const transport of ["native", "runtime"]) {
    const { path, served, pieces } = await seeded(transport);
    const res = await post(createPoolFetch({ path, transport }));
    assert.equal(res.status, 200, transport);
    assert.equal(res.poolAccount, served, transport);
    const headers = JSON.stringify([...res.headers]);
    for (const piece of pieces) assert.ok(!headers.includes(piece), `${transport}: ${headers}`);
    assert.match(res.headers.get("x-echo-hex"), /\[redacted\]/, transport);
    await res.text();
  }
  const key = "test-gateway-key-failover-echo-0123456789";
  process.env.OAUTH_POOL_GATEWAY_KEY = key;
  const { path, pieces } = await seeded("gateway");
  const gw = await lib.serve({ port: 0, path });
  try {
    const answer = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key }, body: body() });
    const text = await answer.text();
    assert.equal(answer.status, 200);
    const all = `${JSON.stringify([...answer.headers])}${text}`;
    for (const piece of pieces) assert.ok(!all.includes(piece), `${piece}: ${all}`);
    assert.deepEqual(Object.keys(JSON.parse(text)), ["plain", "hex", "b64"]);
  } finally {
    await gw.close(1000);
    delete process.env.OAUTH_POOL_GATEWAY_KEY;
  }
});

// A body the client did not decode (it asks for gzip, and undoes it only as a body's one coding)
// could not be searched for the credential: echoed compressed in another coding, or gzip twice in
// two `Content-Encoding` lines (reqwest undid the first and dropped both names), the token reached
// the gateway's client, whose fetch decodes them all.
test("15b: a server echoing the token in a body coded br, deflate, twice, or as a list: the gateway refuses it, coded and final, and relays none of it", async () => {
  const path = await seedPool(mock, ["coded@x.test"]);
  const token = account(path, "coded@x.test").access;
  const plain = JSON.stringify({ echoed: `Bearer ${token}` });
  const key = "test-gateway-key-coded-0123456789";
  process.env.OAUTH_POOL_GATEWAY_KEY = key;
  const gw = await lib.serve({ port: 0, path });
  const ask = () => fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": key }, body: body() });
  try {
    const coded = [
      ["br", brotliCompressSync(plain), "application/json"],
      ["deflate", deflateSync(plain), "application/json"],
      ["gzip, br", brotliCompressSync(gzipSync(plain)), "application/json"],
      [["gzip", "gzip"], gzipSync(gzipSync(plain)), "application/json"],
      [["br", "gzip"], gzipSync(brotliCompressSync(plain)), "application/json"],
      [["identity", "x-gzip", "GZIP"], gzipSync(gzipSync(plain)), "application/json"],
      // An answer whose `Connection` names its coding: the name stays, whatever a hop says.
      ["br", brotliCompressSync(plain), "application/json", { connection: "content-encoding" }],
      ["br", brotliCompressSync(`event: message_start\ndata: ${plain}\n\n`), "text/event-stream"],
    ];
    for (const [coding, bytes, type, extra] of coded) {
      // Cut small, so that the refusal cannot depend on the whole body having come.
      mock.script("coded@x.test", [{ status: 200, raw: bytes, chunkSize: 5, headers: { "content-type": type, "content-encoding": coding, ...extra } }]);
      const res = await ask();
      const raw = Buffer.from(await res.arrayBuffer());
      const named = [coding]
        .flat()
        .filter((c) => c !== "identity")
        .join(", ");
      const what = `${named} (${type})`;
      assert.equal(res.status, 500, what);
      assert.equal(res.headers.get("x-oauth-pool-error"), "INSECURE_ENDPOINT", what);
      assert.equal(res.headers.get("x-should-retry"), "false", what);
      assert.equal(res.headers.get("content-encoding"), null, what);
      assert.ok(!raw.includes(token) && !raw.includes(bytes.subarray(0, 16)), `${what}: ${raw}`);
      const { error } = JSON.parse(raw.toString());
      assert.ok(error.message.includes(`content-encoding ${named}, which the pool does not undo`), `${what}: ${error.message}`);
    }
    // gzip alone, which it asks for, is undone and searched as before, under any of its names
    // (RFC 9110 8.4.1); an empty body has nothing to hide.
    let res;
    for (const coding of ["gzip", "x-gzip", "GZIP", ["identity", "gzip"]]) {
      mock.script("coded@x.test", [
        { status: 200, raw: gzipSync(plain), chunkSize: 5, headers: { "content-type": "application/json", "content-encoding": coding } },
      ]);
      res = await ask();
      assert.equal(res.status, 200, String(coding));
      assert.equal(res.headers.get("content-encoding"), null, String(coding));
      assert.deepEqual(await res.json(), { echoed: "Bearer [redacted]" });
    }
    for (const status of [200, 204]) {
      mock.script("coded@x.test", [{ status, raw: [], headers: { "content-encoding": "br" } }]);
      res = await ask();
      assert.equal(res.status, status);
      assert.equal(await res.text(), "");
    }
    assert.ok(!JSON.stringify(await poolStatus(path)).includes(token));
  } finally {
    await gw.close(1000);
    delete process.env.OAUTH_POOL_GATEWAY_KEY;
  }
});

// ---- 16. a stored credential no header can carry ----------------------------------------------
test("16: a stored token no header can carry (a hand-edited file) sends the request to the next account", async () => {
  for (const transport of ["native", "runtime"]) {
    const path = await seedPool(mock, ["broken@x.test", "sound@x.test"]);
    const pool = readPool(path);
    pool.anthropic[0].access = "fake-access-with\na-line-break";
    pool.anthropic[0].priority = 9;
    writeFileSync(path, JSON.stringify(pool));
    const events = [];
    const res = await post(createPoolFetch({ path, transport, onEvent: (e) => events.push(e) }));
    assert.equal(res.status, 200, transport);
    assert.equal(res.poolAccount, "sound@x.test", transport);
    assert.ok(
      events.some((e) => e.kind === "unavailable" && e.email === "broken@x.test"),
      `${transport}: ${JSON.stringify(events)}`,
    );
    await res.text();
    await flushPool(path);
    assert.match(account(path, "broken@x.test").lastError ?? "", /not a valid header value/, transport);
  }
});

// ---- 17. a blank or undecodable pool path ------------------------------------------------------
test("17: a pool path given blank, or an OAUTH_POOL_PATH blank or not UTF-8, is refused, never read as the default pool", async () => {
  const configured = await seedPool(mock, ["kept@x.test"]);
  const before = readFileSync(configured, "utf8");
  const saved = process.env.OAUTH_POOL_PATH;
  process.env.OAUTH_POOL_PATH = configured;
  try {
    for (const blank of ["", "   "]) {
      await assert.rejects(
        savePool({ anthropic: [] }, blank),
        (e) => e.code === "INVALID_ARGUMENT" && /pool path is blank/.test(e.message),
        JSON.stringify(blank),
      );
      await assert.rejects(lib.listAccounts(blank), (e) => e.code === "INVALID_ARGUMENT");
    }
    assert.equal(readFileSync(configured, "utf8"), before, "the configured pool is untouched");
    for (const [value, why] of [
      ["   ", /OAUTH_POOL_PATH is blank/],
      ["\ufffd\ufffd.json", /OAUTH_POOL_PATH is not valid UTF-8/],
    ]) {
      process.env.OAUTH_POOL_PATH = value;
      await assert.rejects(lib.listAccounts(), (e) => e.code === "INVALID_ARGUMENT" && why.test(e.message), JSON.stringify(value));
    }
  } finally {
    if (saved === undefined) delete process.env.OAUTH_POOL_PATH;
    else process.env.OAUTH_POOL_PATH = saved;
  }
});

// A path with a NUL in it names no file: it was POOL_IO ("open failed", as for a failing disk),
// the NUL itself in the message, from every function that takes a path and from the plugin.
test("17b: a pool path (or Claude Code credentials path) holding a NUL is INVALID_ARGUMENT, from every function that takes one", async () => {
  const dir = tempDir("oauth-pool-nul-");
  const bad = join(dir, "pool\0.json");
  const good = join(dir, "good.json");
  writeFileSync(good, JSON.stringify({ anthropic: [] }));
  const calls = [
    ["loadPool", () => loadPool(bad)],
    ["savePool", () => savePool({ anthropic: [] }, bad)],
    ["listAccounts", () => lib.listAccounts(bad)],
    ["copyStore from", () => lib.copyStore(bad, good)],
    ["copyStore to", () => lib.copyStore(good, bad)],
    ["the pool fetch", () => post(createPoolFetch({ path: bad }))],
    ["importClaudeCode", () => lib.importClaudeCode({ credentialsPath: join(dir, "creds\0.json"), email: "c@x.test", path: good })],
  ];
  for (const [what, call] of calls) {
    await assert.rejects(call(), (e) => e.code === "INVALID_ARGUMENT" && /holds a NUL character/.test(e.message) && !e.message.includes("\0"), what);
  }
  const plugin = (await import("../plugin.mjs")).default;
  const hooks = await plugin.server({ client: {} }, { path: bad });
  assert.match(await hooks.tool["model-accounts-pool"].execute({ action: "list" }), /INVALID_ARGUMENT/);
  assert.deepEqual(JSON.parse(readFileSync(good, "utf8")), { anthropic: [] }, "nothing was written anywhere");
});

// ---- 18. no credential of any kind follows a redirect ------------------------------------------
// Test 1 covers an API key on the default transport. A bearer on either transport, the refresh
// token and a login's code in a token endpoint's body, and the bearer of the profile call go to
// other clients (reqwest's policy, the runtime's `redirect: "manual"`): each must stop at the 3xx.
test("18: a bearer (both transports), a refresh token, a login's code and verifier and the profile call never follow a redirect", async () => {
  const seen = [];
  const listen = async (handler) => {
    const server = createServer((req, res) => {
      let text = "";
      req.on("data", (c) => (text += c));
      req.on("end", () => handler(req, res, text));
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    return { server, origin: `http://127.0.0.1:${server.address().port}` };
  };
  const elsewhere = await listen((req, res, text) => {
    seen.push({ url: req.url, auth: req.headers.authorization, key: req.headers["x-api-key"], text });
    res.setHeader("content-type", "application/json");
    res.end(JSON.stringify({ access_token: "x", refresh_token: "y", expires_in: 3600, account: { email_address: "thief@x.test" } }));
  });
  const to = (tag) => `${elsewhere.origin}/${tag}`;
  // A token endpoint and an API origin that send every request on to `elsewhere`, except the
  // token endpoint's answer to a login, which holds no email: the profile call follows it.
  let tokenStatus = 307;
  const hits = { token: 0, profile: 0 };
  const tokenRedirector = await listen((_req, res, text) => {
    hits.token++;
    if (tokenStatus === 200) {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ access_token: "fake-access-for-profile-0123456789", refresh_token: "fake-refresh-for-profile-0123456789", expires_in: 3600 }));
      return;
    }
    res.writeHead(tokenStatus, { location: to(`token?${text.length}`) });
    res.end();
  });
  const apiRedirector = await listen((req, res) => {
    if (req.url.includes("/profile")) hits.profile++;
    res.writeHead(302, { location: to(`profile${req.url}`) });
    res.end();
  });
  const leaks = (err, secrets) => {
    const whole = `${inspect(err, { showHidden: true, depth: 6 })} ${err?.stack ?? ""} ${JSON.stringify(err)}`;
    return secrets.filter((s) => whole.includes(s));
  };
  try {
    const path = await seedPool(mock, ["moved@x.test"]);
    for (const transport of ["native", "runtime"]) {
      const f = createPoolFetch({ path, transport });
      for (const status of [301, 302, 303, 307, 308]) {
        const location = to(`${transport}-${status}`);
        mock.script("moved@x.test", [{ status, headers: { location }, body: "" }]);
        const res = await post(f);
        assert.equal(res.status, status, transport);
        assert.equal(res.headers.get("location"), location, transport);
        await res.text();
      }
    }
    const key = "fake-console-key-redirect-runtime-0123456789";
    const keyPath = await seedKey("key-runtime@x.test", key);
    mock.script("key-runtime@x.test", [{ status: 307, headers: { location: to("runtime-key") }, body: "" }]);
    const moved = await post(createPoolFetch({ path: keyPath, transport: "runtime" }));
    assert.equal(moved.status, 307);
    await moved.text();

    await withEnv({ OAUTH_POOL_TOKEN_URL: `${tokenRedirector.origin}/v1/oauth/token`, OAUTH_POOL_API_URL: apiRedirector.origin }, async () => {
      for (const status of [302, 307, 308]) {
        tokenStatus = status;
        const spent = `fake-refresh-redirected-${status}-0123456789`;
        const err = await lib.refresh(spent).then(
          () => assert.fail("a redirect is no token response"),
          (e) => e,
        );
        assert.equal(err.code, "OAUTH_HTTP", `${status}: ${err.message}`);
        assert.deepEqual(leaks(err, [spent]), [], `${status}: the refused refresh quotes no token`);
        const a = await lib.authorize();
        const code = `fake-code-redirected-${status}-0123456789`;
        const lost = await lib.exchange(`${code}#${a.state}`, { verifier: a.verifier, state: a.state }).then(
          () => assert.fail("a redirect is no token response"),
          (e) => e,
        );
        assert.equal(lost.code, "OAUTH_HTTP", `${status}: ${lost.message}`);
        assert.deepEqual(leaks(lost, [code, a.verifier]), [], `${status}: the refused login quotes no code or verifier`);
      }
      tokenStatus = 200;
      const a = await lib.authorize();
      const profileLost = await lib.exchange(`fake-code-profile-0123456789#${a.state}`, { verifier: a.verifier, state: a.state }).catch((e) => e);
      assert.ok(!(profileLost instanceof Error) || !leaks(profileLost, ["fake-access-for-profile-0123456789"]).length, String(profileLost?.message));
      assert.notEqual(profileLost?.email, "thief@x.test", "the email of a redirect's target is not taken");
    });
    // Each redirect was met (so the test saw the path it means), and none was followed.
    assert.deepEqual(hits, { token: 7, profile: 1 });
    assert.deepEqual(seen, [], "nothing reached the other origin");
  } finally {
    for (const s of [elsewhere, tokenRedirector, apiRedirector]) s.server.close();
  }
});
