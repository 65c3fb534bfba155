// Every error a person meets, as they read it: the same failure driven the realistic way (a
// token endpoint that is down or answers junk, a pool with nothing usable, a setting with a
// typo, a hand-edited store row) and read on each surface that shows it: the library's
// rejection, the CLI (text and --json, real processes), the gateway's body and header, and
// OpenCode 2's error through its harness. Each message says what happened and what to do, once,
// in words: no Rust type, no "undefined", no control character from a server, nothing unbounded.
// Runs under `node --test` and `bun test`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { createAnthropic } from "@ai-sdk/anthropic";
import { generateText } from "ai";
import * as lib from "../index.mjs";
import * as pluginModule from "../plugin.mjs";
import { CLI, runNode } from "./helpers/fleet-kit.mjs";
import { createHost, loadPlugin, ModelRequestError } from "./helpers/opencode2-host.mjs";
import { account, body, jsonHeaders, messagesUrl, oauthEntry, tempPoolPath, useMock, withEnv } from "./helpers/pool-env.mjs";
import { startPostgres } from "./helpers/postgres.mjs";
import { tempDir } from "./helpers/temp.mjs";

const GATEWAY_KEY = "messages-test-gateway-key-0123";
const mock = useMock({ env: { OAUTH_POOL_GATEWAY_KEY: GATEWAY_KEY } });

/** What no message a person reads may hold. */
function assertReadable(message, what) {
  assert.equal(typeof message, "string", `${what}: no message`);
  assert.ok(message.length > 0 && message.length < 2000, `${what}: ${message.length} characters`);
  assert.doesNotMatch(message, /undefined|\[object Object\]|\bnull\b|Some\(|Os \{|\bat .+:\d+:\d+/, `${what}: ${message}`);
  assert.doesNotMatch(message, /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/, `${what}: unprintable: ${JSON.stringify(message)}`);
  assert.doesNotMatch(message, /anthropic-pool:? anthropic-pool/i, `${what}: doubled prefix: ${message}`);
}

async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected a rejection");
}

const post = (poolFetch) => poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });

/** The CLI as a person runs it, in text and with --json: { text, json, code, jsonCode }. */
async function cli(args, env = {}) {
  const full = { ...process.env, ...env };
  const [plain, json] = await Promise.all([runNode([CLI, ...args], full), runNode([CLI, ...args, "--json"], full)]);
  const error = JSON.parse(json.stdout.trim().split("\n").at(-1) || "null")?.error ?? null;
  return { code: plain.code, stderr: plain.stderr, jsonCode: json.code, error };
}

/** A pool whose only account needs a refresh (its access token expired). */
async function expiredPool(email) {
  const path = tempPoolPath();
  await lib.savePool({ version: 1, anthropic: [oauthEntry(mock, email, { expired: true })] }, path);
  return path;
}

test("a token endpoint's error text reaches no one with its control characters, and is cut short", async () => {
  const started = await lib.authorize();
  const paste = mock.approve(started.url, "esc@x.test");
  // A server (or what stands in front of it) answering with terminal escapes, a bidi override
  // and a page of text.
  const text = `\u001b[2J\u001b[31mcleared\u202e ${"z".repeat(5000)}`;
  mock.setTokenMode({ status: 500, body: { error: { type: "api_error", message: text } } });
  const err = await rejection(lib.exchange(paste, started));
  assert.equal(err.code, "OAUTH_HTTP");
  assert.equal(err.status, 500);
  assertReadable(err.message, "exchange");
  assert.match(err.message, /^token endpoint answered HTTP 500: api_error: \[2J\[31mcleared z+$/);
});

test("a token endpoint that is down is said as such, not as a login problem: the pool's 429 with the endpoint's wait on the library (a host retries it), the wait on the CLI", async () => {
  const path = await expiredPool("down@x.test");
  mock.setTokenMode({ status: 503, body: { error: { type: "overloaded_error", message: "Overloaded" } }, times: 5 });
  // Every access token expired and the endpoint down for a moment: it was POOL_NO_ACCOUNT ("no
  // token"), which the AI SDK throws as it is and OpenCode's session ended on, where one other
  // account cooling from a 429 made it the pool's 429 (found by a review).
  const answered = await post(lib.createPoolFetch({ path }));
  mock.setTokenMode(null);
  const told = async (res, name) => {
    assert.equal(res.status, 429, name);
    assert.equal(res.headers.get("x-oauth-pool"), "all-accounts-cooling", name);
    const seconds = Number(res.headers.get("retry-after"));
    assert.ok(seconds >= 1 && seconds <= 31, `${name}: retry-after ${seconds}`);
    const { error } = await res.json();
    assertReadable(error.message, name);
    // The wait as a person reads it: "in 30 s (at 14:32 UTC)", not an ISO timestamp.
    assert.match(
      error.message,
      /no account has a usable access token, and the token endpoint is not taking refreshes now \(token endpoint answered HTTP 503: overloaded_error: Overloaded\); the first login \(down@x\.test\) is refreshed again in \d+ s/,
      name,
    );
    // No advice to log in again (its login is fine), and no rate limit it never had.
    assert.doesNotMatch(error.message, /refused this request|new login|auth-error|rate-limited/, name);
  };
  await told(answered, "fetch");
  // Not marked for a login: it rests through the endpoint's wait (its token needs the refresh).
  const [listed] = await lib.listAccounts(path);
  assert.equal(listed.status, "rate-limited", "resting through the token endpoint's wait");
  assert.ok(listed.tokenWaitUntil > Date.now() && listed.rateLimitUntil === listed.tokenWaitUntil);
  assert.equal(JSON.parse(readFileSync(path, "utf8")).anthropic[0].status, "idle", "the account is not marked");

  // Asked again within the endpoint's rest: the same wait, and nothing sent.
  const calls = mock.stats().perFamily["down@x.test"].refreshCalls;
  await told(await post(lib.createPoolFetch({ path })), "fetch in the rest");
  assert.equal(mock.stats().perFamily["down@x.test"].refreshCalls, calls, "the endpoint is left alone");

  const r = await cli(["refresh", "down@x.test", "--path", path]);
  assert.equal(r.code, 1);
  assert.equal(r.jsonCode, 1);
  assert.equal(r.error.code, "OAUTH_HTTP");
  assertReadable(r.error.message, "cli --json");
  assert.match(
    r.error.message,
    /^not refreshed before (\w{3} \d+ \w{3} )?\d\d:\d\d UTC \(in (\d+ min( \d+ s)?|\d+ s)\): the last refresh failed, and the token endpoint is left alone until then; try again then, or run `oauth-pool reset-cooldowns` to try now$/,
  );
  assert.equal(r.stderr, `error [OAUTH_HTTP]: ${r.error.message}\n`, "text and --json say the same");

  // `reset-cooldowns` lets it try at once, as the message says.
  assert.equal((await cli(["reset-cooldowns", "--path", path])).code, 0);
  assert.equal((await cli(["refresh", "down@x.test", "--path", path])).code, 0);
});

test("a token endpoint refusing in a way waiting does not mend (a 4xx that is not invalid_grant): POOL_NO_ACCOUNT saying what it said, not a 429 a host retries for ever", async () => {
  const path = await expiredPool("refusing@x.test");
  mock.setTokenMode({ status: 400, body: { error: "invalid_request", error_description: "unsupported client" }, times: 5 });
  const err = await rejection(post(lib.createPoolFetch({ path })));
  mock.setTokenMode(null);
  assert.equal(err.code, "POOL_NO_ACCOUNT");
  assertReadable(err.message, "fetch");
  assert.match(err.message, /refusing@x\.test \(no token: token endpoint answered HTTP 400: invalid_request/);
});

test("a token endpoint never reached (nothing listening) with every token expired: POOL_NO_ACCOUNT saying so, not a 429 a host retries for ever", async () => {
  const path = await expiredPool("unreached@x.test");
  const closed = createServer();
  await new Promise((r) => closed.listen(0, "127.0.0.1", r));
  const { port } = closed.address();
  await new Promise((r) => closed.close(r));
  const err = await withEnv({ OAUTH_POOL_TOKEN_URL: `http://127.0.0.1:${port}/v1/oauth/token` }, () => rejection(post(lib.createPoolFetch({ path }))));
  assert.equal(err.code, "POOL_NO_ACCOUNT");
  assert.match(err.message, /unreached@x\.test \(no token: .*connect/);
});

test("a token endpoint that never answers, with two expired logins: POOL_NO_ACCOUNT naming both, not POOL_BUSY as if another process held a lock", async () => {
  // Found by a review: the first login's refresh outlasted its 5 s (another account could
  // serve) and was told as "its token is still being refreshed" (POOL_BUSY), stored as its
  // lastError, and the second's timeout was left out.
  const path = tempPoolPath();
  const emails = ["silent-a@x.test", "silent-b@x.test"];
  await lib.savePool({ version: 1, anthropic: emails.map((e) => oauthEntry(mock, e, { expired: true })) }, path);
  mock.setTokenMode({ hang: true, grant: "refresh_token", times: 10 });
  try {
    // Two tries of 3 s each: past the 5 s a refresh is waited for while another account could serve.
    const err = await withEnv({ OAUTH_POOL_TIMEOUT_MS: "3000" }, () => rejection(post(lib.createPoolFetch({ path }))));
    assert.equal(err.code, "POOL_NO_ACCOUNT", err.message);
    assertReadable(err.message, "fetch");
    assert.doesNotMatch(err.message, /still being refreshed/);
    assert.match(err.message, /silent-a@x\.test \(no token: .*its refresh has not finished in 5 s \(the token endpoint, or the pool.s store, is slow/);
    assert.match(err.message, /silent-b@x\.test \(no token: .*timed out/);
    const saved = JSON.parse(readFileSync(path, "utf8")).anthropic;
    assert.doesNotMatch(JSON.stringify(saved.map((a) => a.lastError ?? null)), /still being refreshed|has not answered/);
  } finally {
    mock.setTokenMode(null);
  }
});

test("the wait after a failed refresh keeps err.status 429 and its seconds for callers that retry", async () => {
  const path = await expiredPool("wait@x.test");
  mock.setTokenMode({ reset: true, times: 4 });
  await rejection(lib.refreshAccount("wait@x.test", path));
  mock.setTokenMode(null);
  const err = await rejection(lib.refreshAccount("wait@x.test", path));
  assert.equal(err.code, "OAUTH_HTTP");
  assert.equal(err.status, 429);
  assertReadable(err.message, "refreshAccount");
  assert.match(err.message, /^not refreshed before /);
});

test("a mistyped token URL names its variable, hides a password in it, and is usable at once when corrected", async () => {
  const path = await expiredPool("typo@x.test");
  const r = await cli(["refresh", "typo@x.test", "--path", path], { OAUTH_POOL_TOKEN_URL: "http://user:hunter2secret@example.com/v1/oauth/token" });
  assert.equal(r.code, 1);
  assert.equal(r.error.code, "INSECURE_ENDPOINT");
  assertReadable(r.error.message, "insecure");
  assert.match(
    r.error.message,
    /plain http is allowed only to a loopback host; correct OAUTH_POOL_TOKEN_URL \(or unset it for https:\/\/platform\.claude\.com\/v1\/oauth\/token\)$/,
  );
  assert.doesNotMatch(r.error.message + r.stderr, /hunter2secret/);
  // Nothing was sent, so the endpoint gets no rest: the corrected setting works now.
  const fixed = await cli(["refresh", "typo@x.test", "--path", path]);
  assert.equal(fixed.code, 0, JSON.stringify(fixed));
});

// Found by a review: a name holding another member's key of no known shape (written by hand, or
// labelled before names were checked) was quoted whole in the pool's own errors, which OpenCode
// shows and keeps in the session, and a gateway gives its clients.
test("the pool's errors that name accounts never quote a key or token of the pool, whatever the names hold", async () => {
  const path = tempPoolPath();
  const odd = "Zq!9xY#4pL$7mN%2vB^8";
  const plain = "PlainKeyWithoutShape0123";
  await lib.savePool(
    {
      version: 1,
      anthropic: [
        { email: "first", type: "api", key: odd, enabled: false },
        { email: `team ${odd} ${plain}`, type: "api", key: plain, enabled: false },
        // Lower-cased, and a piece of a key with punctuation in it.
        { email: `lower ${odd.toLowerCase()} ${plain.toLowerCase()}`, type: "api", key: "Third-odd!key#0002", enabled: false },
        { email: `cut ${odd.slice(3, 17)}`, type: "api", key: "Fourth-odd!key#0003", enabled: false },
      ],
    },
    path,
  );
  const err = await rejection(post(lib.createPoolFetch({ path })));
  assert.equal(err.code, "POOL_NO_ACCOUNT");
  for (const piece of [odd, plain.slice(0, 12), odd.toLowerCase(), plain.toLowerCase().slice(0, 12), odd.slice(3, 17)])
    assert.ok(!err.message.includes(piece), `${piece}: ${err.message}`);
  assert.match(err.message, /\[redacted\]/);
  // Cooling: the pool's own 429 names the first account back.
  await lib.savePool(
    {
      version: 1,
      anthropic: [{ email: `team ${plain}`, type: "api", key: plain, status: "rate-limited", rateLimitUntil: Date.now() + 3_600_000 }],
    },
    path,
  );
  const res = await post(lib.createPoolFetch({ path }));
  assert.equal(res.status, 429);
  const text = await res.text();
  assert.ok(!text.includes(plain.slice(0, 12)), text);
});

test("an empty pool reads the same on the library, the gateway (body and header) and OpenCode 2, with the prefix once", async () => {
  const path = tempPoolPath();
  const err = await rejection(post(lib.createPoolFetch({ path })));
  assert.equal(err.code, "POOL_NO_ACCOUNT");
  assertReadable(err.message, "library");
  assert.match(
    err.message,
    /^anthropic-pool has no accounts in .+: add one with `oauth-pool add`, or OpenCode's Anthropic Pool login \(`opencode auth login` on 1\.18, `\/connect` on 2\.x\)$/,
  );

  const gw = await lib.serve({ port: 0, path });
  try {
    const res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": GATEWAY_KEY }, body: body() });
    assert.equal(res.status, 503);
    assert.equal(res.headers.get("x-oauth-pool-error"), "POOL_NO_ACCOUNT");
    const answer = await res.json();
    assert.equal(answer.error.type, "overloaded_error");
    assertReadable(answer.error.message, "gateway");
    assert.equal(answer.error.message, err.message);
  } finally {
    await gw.close();
  }

  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    const failure = await host
      .modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body: { messages: [{ role: "user", content: "hi" }] } })
      .then(
        () => null,
        (e) => e,
      );
    assert.ok(failure instanceof ModelRequestError, String(failure));
    assertReadable(failure.error.message, "opencode 2");
    assert.ok(failure.error.message.includes(err.message), failure.error.message);
  } finally {
    await handle.unload();
  }
});

test("a pool file problem names the file on the library, the CLI and the gateway", async () => {
  const dir = tempDir("oauth-pool-messages-");
  const path = join(dir, "pool.json");
  writeFileSync(path, '{"anthropic":[', { mode: 0o600 });
  const err = await rejection(lib.loadPool(path));
  assert.equal(err.code, "POOL_CORRUPT");
  assertReadable(err.message, "library");
  assert.ok(err.message.includes(path));
  const r = await cli(["list", "--path", path]);
  assert.equal(r.code, 1);
  assert.equal(r.error.code, "POOL_CORRUPT");
  assert.equal(r.error.message, err.message);
  const gw = await lib.serve({ port: 0, path });
  try {
    const res = await fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { ...jsonHeaders, "x-api-key": GATEWAY_KEY }, body: body() });
    assert.equal(res.headers.get("x-oauth-pool-error"), "POOL_CORRUPT");
    assert.equal((await res.json()).error.message, `anthropic-pool: ${err.message}`);
  } finally {
    await gw.close();
  }
  assert.equal(readFileSync(path, "utf8"), '{"anthropic":[', "left untouched");
});

test("a hand-edited row of the fleet store names the account, and does not doubt a key that is right", { timeout: 60_000 }, async (t) => {
  let pg;
  try {
    pg = await startPostgres();
  } catch (e) {
    t.skip(`no PostgreSQL here: ${e.message}`);
    return;
  }
  try {
    const home = tempDir("oauth-pool-messages-home-");
    const env = { HOME: home, OAUTH_POOL_STORE: pg.url, OAUTH_POOL_STORE_KEY: Buffer.alloc(32, 3).toString("base64") };
    assert.equal((await cli(["store", "init"], env)).code, 0);
    const file = join(home, "seed.json");
    writeFileSync(file, JSON.stringify({ anthropic: [oauthEntry(mock, "row@x.test")] }), { mode: 0o600 });
    assert.equal((await cli(["store", "copy", "--from", file, "--to", pg.url], env)).code, 0);
    // A DBA "fixes" a typo in the email column of the row: the seal is bound to the old one.
    await pg.sql(`UPDATE oauth_pool_entries SET entry = jsonb_set(entry, '{email}', '"raw@x.test"')`);
    // Listed as an unreadable entry, saying why (it stopped every read of the store before).
    const r = await runNode([CLI, "list", "--json"], { ...process.env, ...env });
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const entry = JSON.parse(r.stdout.trim().split("\n").at(-1)).accounts[0];
    assert.equal(entry.status, "invalid");
    assertReadable(entry.lastError, "store");
    assert.match(entry.lastError, /"raw@x\.test" in the store does not open, though the store key is right: its row was edited/);
    assert.doesNotMatch(entry.lastError, /is it the key/);
    // A different key is still asked about.
    const wrong = await cli(["list"], { ...env, OAUTH_POOL_STORE_KEY: Buffer.alloc(32, 4).toString("base64") });
    assert.equal(wrong.error.code, "STORE_KEY");
    assert.match(wrong.error.message, /is it the key this store was made with\?/);
  } finally {
    await pg.close();
  }
});

test("the pool fetch's refusal behind the SDKs: the Anthropic SDK's connection error holds it as its cause, the AI SDK shows it as it is", async () => {
  const path = tempPoolPath();
  const poolFetch = lib.createPoolFetch({ path });
  let asked = 0;
  const counting = (input, init) => {
    asked++;
    return poolFetch(input, init);
  };
  const client = new Anthropic({ apiKey: "unused", baseURL: mock.url, fetch: counting });
  const err = await rejection(client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }));
  assert.ok(err instanceof Anthropic.APIConnectionError, String(err));
  assert.equal(asked, 3, "a failed fetch is asked twice more by the SDK");
  assert.equal(err.cause?.code, "POOL_NO_ACCOUNT");
  assertReadable(err.cause.message, "the SDK's cause");
  assert.match(err.cause.message, /^anthropic-pool has no accounts in /);

  const anthropic = createAnthropic({ baseURL: `${mock.url}/v1`, apiKey: "unused", fetch: poolFetch });
  const failure = await rejection(generateText({ model: anthropic("claude-sonnet-4-5"), prompt: "hi" }));
  assert.equal(failure.code, "POOL_NO_ACCOUNT");
  assert.equal(failure.message, err.cause.message);
});

/** A PostgreSQL server that answers every login with an error whose text is `text`. */
async function hostilePostgres(text) {
  const { createServer } = await import("node:net");
  const server = createServer((socket) => {
    socket.on("error", () => {});
    socket.on("data", (chunk) => {
      // SSLRequest and GSSENCRequest (8 bytes, a code and no more): "not here", then the startup.
      if (chunk.length === 8 && [80877103, 80877104].includes(chunk.readInt32BE(4))) return socket.write("N");
      const fields = Buffer.concat([Buffer.from(`SFATAL\0VFATAL\0CXX000\0M${text}\0`), Buffer.from([0])]);
      const head = Buffer.alloc(5);
      head.write("E");
      head.writeInt32BE(fields.length + 4, 1);
      socket.end(Buffer.concat([head, fields]));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return server;
}

test("outside text of any length (an email, a server's error, a pasted code, a value given) is cut in an error message, which still names what was wrong", async () => {
  const huge = (tag) => `${tag}${"q".repeat(100_000)}`;
  const bounded = (err, code, what, named) => {
    assert.equal(err.code, code, `${what}: ${err.message.slice(0, 300)}`);
    assertReadable(err.message, what);
    assert.ok(err.message.length < 1024, `${what}: ${err.message.length} characters`);
    assert.match(err.message, named, what);
    assert.match(err.message, /characters cut/, `${what}: says it was cut`);
  };

  const path = tempPoolPath();
  await lib.savePool({ version: 1, anthropic: [oauthEntry(mock, "kept@x.test")] }, path);
  bounded(
    await rejection(lib.removeAccount(huge("nobody@"), path)),
    "ACCOUNT_NOT_FOUND",
    "removeAccount",
    /^no account with email nobody@q+…\[\d+ of 100007 characters cut\]…q+ in the pool$/,
  );

  const server = await hostilePostgres(huge("relation is gone: "));
  try {
    const err = await rejection(lib.storeInit(`postgres://pool@127.0.0.1:${server.address().port}/pool`));
    bounded(err, "STORE_UNAVAILABLE", "a PostgreSQL server's error", /relation is gone: q+…/);
  } finally {
    server.close();
  }

  const expired = await expiredPool("refused@x.test");
  // A token answer over 64 KB is refused as such: one a little shorter is read.
  mock.setTokenMode({ status: 400, body: { error: "invalid_grant", error_description: `refresh token revoked: ${"q".repeat(60_000)}` } });
  try {
    const err = await rejection(lib.refreshAccount("refused@x.test", expired));
    assert.equal(err.code, "OAUTH_INVALID_GRANT");
    assertReadable(err.message, "the token endpoint's error_description");
    assert.ok(err.message.length < 1024, `error_description: ${err.message.length} characters`);
    assert.match(err.message, /refresh token revoked/);
  } finally {
    mock.setTokenMode(null);
  }

  const started = await lib.authorize();
  const paste = await rejection(lib.exchange(huge("not-a-code-"), started));
  assertReadable(paste.message, "a pasted code");
  assert.ok(paste.message.length < 1024, `a pasted code: ${paste.message.length} characters`);

  bounded(await rejection(lib.serve({ host: huge("no-such-host-"), port: 0 })), "INVALID_ARGUMENT", "serve's host", /no-such-host-q+…/);
});

test("a refused credential's mark and the pool's error quote what the API said of its 401, the credential taken out of it", async () => {
  const notSupported = "OAuth authentication is currently not supported.";
  const refusal = (message) => ({ status: 401, body: { type: "error", error: { type: "authentication_error", message } } });

  // A login refused again after its refresh: what the API said, not only "log in again".
  const loginPath = tempPoolPath();
  await lib.savePool({ version: 1, anthropic: [oauthEntry(mock, "quoted@x.test")] }, loginPath);
  mock.script("quoted@x.test", [refusal(notSupported), refusal(`${notSupported}\n\u001b[2J`)]);
  const login = await rejection(post(lib.createPoolFetch({ path: loginPath })));
  assert.equal(login.code, "POOL_NO_ACCOUNT");
  assertReadable(login.message, "a login's 401");
  assert.ok(login.message.includes(`quoted@x.test (auth-error: its 401 said "${notSupported} [2J")`), login.message);
  await lib.flushPool(loginPath);
  const loginMark = account(loginPath, "quoted@x.test");
  assert.equal(loginMark.status, "auth-error");
  assert.ok(loginMark.lastError.includes(`the API refused the token twice (401, saying "${notSupported} [2J"): log in again`), loginMark.lastError);

  // A key echoed in its 401, whole and by its random part alone: neither is quoted.
  const key = ["sk", "ant", "api03", "Quoted401Key0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH"].join("-");
  const randomPart = key.slice("sk-ant-api03-".length);
  mock.addApiKey(key, "quoted-key");
  const keyPath = tempPoolPath();
  await lib.addApiKey(key, { email: "quoted-key", path: keyPath });
  mock.script("quoted-key", [
    refusal(`invalid x-api-key ${key} (${randomPart}), in hex ${Buffer.from(key).toString("hex")}, in base64 ${Buffer.from(key).toString("base64")}`),
  ]);
  const refusedKey = await rejection(post(lib.createPoolFetch({ path: keyPath })));
  assert.equal(refusedKey.code, "POOL_NO_ACCOUNT");
  await lib.flushPool(keyPath);
  const keyMark = account(keyPath, "quoted-key");
  const quoted = '"invalid x-api-key [redacted] ([redacted]), in hex [redacted], in base64 [redacted]"';
  assert.ok(refusedKey.message.includes(`quoted-key (auth-error: its 401 said ${quoted})`), refusedKey.message);
  assert.ok(keyMark.lastError.includes(`the API refused the key (401, saying ${quoted})`), keyMark.lastError);
  for (const text of [refusedKey.message, keyMark.lastError]) assert.ok(!text.includes(randomPart.slice(0, 16)), `the key quoted: ${text}`);
});

test("the token endpoint's wait is read as an API answer's (a date on the server's clock, retry-after-ms); a login waiting on it is not said to be rate-limited for one model", async () => {
  // The server's clock an hour ahead of this machine's, its retry-after a date a minute past its
  // own now: a minute's wait, not an hour and a minute.
  const ahead = Date.now() + 3600_000;
  const path = await expiredPool("skewed@x.test");
  mock.setTokenMode({
    status: 429,
    headers: { date: new Date(ahead).toUTCString(), "retry-after": new Date(ahead + 60_000).toUTCString() },
    body: { error: "rate_limited" },
  });
  let res;
  try {
    res = await post(lib.createPoolFetch({ path }));
  } finally {
    mock.setTokenMode(null);
  }
  assert.equal(res.status, 429);
  const seconds = Number(res.headers.get("retry-after"));
  assert.ok(seconds >= 55 && seconds <= 65, `retry-after ${seconds}`);
  await res.text();

  // retry-after-ms, the longest of the two.
  const inMs = await expiredPool("ms@x.test");
  mock.setTokenMode({ status: 503, headers: { "retry-after": "5", "retry-after-ms": "90000" }, body: { error: "busy" } });
  try {
    res = await post(lib.createPoolFetch({ path: inMs }));
  } finally {
    mock.setTokenMode(null);
  }
  assert.equal(res.status, 429);
  const ms = Number(res.headers.get("retry-after"));
  assert.ok(ms >= 85 && ms <= 91, `retry-after ${ms}`);
  await res.text();

  // One login waiting for the token endpoint, the other resting after a bare 429: no model can
  // be served, and the first account back is the login, whose wait is not a rate limit.
  const both = tempPoolPath();
  await lib.savePool(
    { version: 1, anthropic: [{ ...oauthEntry(mock, "waits@x.test", { expired: true }), priority: 10 }, oauthEntry(mock, "throttled@x.test")] },
    both,
  );
  mock.setTokenMode({ status: 503, retryAfter: 30, body: { error: "busy" }, times: 5 });
  mock.script("throttled@x.test", [{ status: 429, headers: { "retry-after": "600" } }]);
  try {
    for (const model of ["claude-sonnet-4-5", "claude-opus-4-1"]) {
      const answer = await lib.createPoolFetch({ path: both })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body({ model }) });
      assert.equal(answer.status, 429, model);
      const { error } = await answer.json();
      assertReadable(error.message, model);
      assert.doesNotMatch(error.message, / for (sonnet|opus) models/, model);
      assert.match(
        error.message,
        /every account is rate-limited or waiting for the token endpoint; the first one \(waits@x\.test\) is refreshed again in \d+ s/,
        model,
      );
    }
  } finally {
    mock.setTokenMode(null);
    mock.clearScripts();
  }
});

test("every key at its spend limit: the Anthropic SDK throws the pool's 429 at once (x-should-retry: false past a minute), where it slept the 8-day retry-after; a short wait is still its to sleep", async () => {
  const path = tempPoolPath();
  const key = ["sk", "ant", "api03", "SpendLimit0123456789abcdefghijklmnopqrstuvwxyzABCDEF"].join("-");
  mock.addApiKey(key, "spent-key");
  await lib.addApiKey(key, { email: "spent-key", path });
  const spend = {
    type: "error",
    error: { type: "rate_limit_error", message: "You have reached your specified API usage limits.", details: { error_code: "enforced_spend_limit_reached" } },
  };
  mock.script("spent-key", [{ status: 429, body: spend }]);
  const poolFetch = lib.createPoolFetch({ path });
  let asked = 0;
  const client = new Anthropic({
    apiKey: "unused",
    baseURL: mock.url,
    fetch: (input, init) => {
      asked++;
      return poolFetch(input, init);
    },
  });
  const started = Date.now();
  const err = await rejection(client.messages.create({ model: "claude-sonnet-4-5", max_tokens: 8, messages: [{ role: "user", content: "hi" }] }));
  assert.ok(err instanceof Anthropic.RateLimitError, String(err));
  assert.ok(Date.now() - started < 10_000, `thrown after ${Date.now() - started} ms`);
  assert.equal(asked, 1, "the pool answers the API's 429 with its own, which is final");
  assert.equal(err.headers.get("x-oauth-pool"), "all-accounts-cooling");
  assert.equal(err.headers.get("x-should-retry"), "false");
  assert.ok(Number(err.headers.get("retry-after")) > 86_400, err.headers.get("retry-after"));
  assert.match(err.message, /every account is rate-limited/);

  // A wait under a minute keeps the SDK's own retry.
  await lib.resetCooldowns(path);
  mock.script("spent-key", [{ status: 429, headers: { "retry-after": "1" } }]);
  const short = await poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(short.status, 429);
  const again = await poolFetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(again.headers.get("x-oauth-pool"), "all-accounts-cooling");
  assert.equal(again.headers.get("x-should-retry"), null);
  await Promise.all([short.text(), again.text()]);
});
