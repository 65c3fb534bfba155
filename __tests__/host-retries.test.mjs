// The pool's refusals as OpenCode 1.18 reads them. It decides from an error's text whether a
// failed model call will pass by itself (helpers/opencode-retry.mjs), and sits a silent minute of
// retries on one that will not. Each failure here cannot pass by itself: it needs a person (a
// login, a file fixed, a setting changed). Driven through the plugin's fetch as OpenCode calls
// it; what is the person's own (paths, the API's address, emails) is taken out before the check,
// since only the pool's words around it are ours to choose.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fakeClient, oauthEntry, useMock } from "./helpers/pool-env.mjs";
import { openCodeRetries } from "./helpers/opencode-retry.mjs";
import { tempDir } from "./helpers/temp.mjs";

const mock = useMock();
const lib = await import("../index.mjs");

const tmp = tempDir("oauth-pool-host-retries-");
after(() => rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
const freshPath = () => join(tmp, `p${++seq}`, "pool.json");

const request = () => ({
  method: "POST",
  headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
  body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }] }),
});

async function writePool(path, anthropic) {
  await lib.savePool({ version: 1, anthropic }, path);
}

function writeRaw(path, text) {
  mkdirSync(join(path, ".."), { recursive: true, mode: 0o700 });
  writeFileSync(path, text, { mode: 0o600 });
}

/** The plugin's fetch for the pool at `path` (OpenCode's `config` hook set up first when given). */
async function pluginFetch(path, config) {
  const hooks = await lib.OAuthPoolPlugin({ client: fakeClient().client, directory: tmp, worktree: tmp }, { path });
  if (config) await hooks.config(config);
  const { fetch } = await hooks.auth.loader(async () => undefined, { models: {} });
  return fetch;
}

/** The rejection's message with the person's own text in it replaced by placeholders. */
function ours(message, emails = []) {
  let text = message.split(tmp).join("<dir>").split(mock.url).join("<api>");
  for (const email of emails) text = text.split(email).join("<email>");
  return text;
}

/** `fetch` rejects with `code`; what is ours of its message is not one OpenCode retries. */
async function assertNotRetried(fetch, code, { emails = [], url = `${mock.url}/v1/messages`, says } = {}) {
  let err;
  try {
    const res = await fetch(url, request());
    assert.fail(`resolved ${res.status}: ${await res.text()}`);
  } catch (e) {
    err = e;
  }
  assert.equal(err.code, code, err.message);
  if (says) assert.match(err.message, says);
  const text = ours(err.message, emails);
  assert.equal(openCodeRetries(text), null, `OpenCode 1.18 retries this silently for a minute: ${text}`);
  return err;
}

test("no account in the pool, every one disabled, in need of a login, without a token or a key: said in words OpenCode does not retry", async () => {
  await assertNotRetried(await pluginFetch(freshPath()), "POOL_NO_ACCOUNT", { says: /has no accounts/ });

  const path = freshPath();
  const emails = ["off@retry.test", "dead@retry.test", "marked@retry.test", "bare@retry.test", "key@retry.test"];
  await writePool(path, [
    oauthEntry(mock, emails[0], { enabled: false, status: "disabled" }),
    oauthEntry(mock, emails[1], { expired: true }),
    oauthEntry(mock, emails[2], { status: "auth-error" }),
    { email: emails[3], added: new Date().toISOString(), status: "idle" },
    { email: emails[4], type: "api", added: new Date().toISOString(), status: "idle" },
  ]);
  // A login refused at the token endpoint (the login revoked): a person has to log in again.
  mock.revoke(emails[1], { family: true });
  mock.revoke(emails[2], { family: true });
  const fetch = await pluginFetch(path);
  for (let i = 0; i < 2; i++) {
    await assertNotRetried(fetch, "POOL_NO_ACCOUNT", { emails, says: /need a new login[\s\S]*enable[\s\S]*no token[\s\S]*no `key`/ });
  }
});

test("a pool file that cannot be read as a pool: said in words OpenCode does not retry", async () => {
  const cases = [
    ["{ not json", /not valid/],
    ['{"anthropic": {}}', /not an array/],
    ['{"anthropic": [], "anthropic": []}', /appears twice/],
    ['{"version": 9, "anthropic": []}', /newer/],
    ["\u0000{", /UTF-16/],
  ];
  for (const [text, says] of cases) {
    const path = freshPath();
    writeRaw(path, text);
    await assertNotRetried(await pluginFetch(path), "POOL_CORRUPT", { says });
  }
  // With a good copy beside it: the hint names the copy and the command that restores it.
  const path = freshPath();
  await writePool(path, [oauthEntry(mock, "backed@retry.test")]);
  await writePool(path, [oauthEntry(mock, "backed@retry.test")]);
  writeRaw(path, "{");
  await assertNotRetried(await pluginFetch(path), "POOL_CORRUPT", { says: /cp / });
});

test("a pool file whose entries cannot be read says so and names them, never that the pool has no accounts to add", async () => {
  const key = ["sk", "ant", "api03", "entry-named-with-its-key-0123456789"].join("-");
  const readable = oauthEntry(mock, "fine@retry.test");
  // The shapes a hand edit or another writer leaves: a field of the wrong type (words for
  // epoch milliseconds, a number for an ISO date), no email, not an object, an email that is a
  // key. (A time written as text or an ISO date is read as that time.)
  const unreadable = [
    { ...readable, email: "iso@retry.test", rateLimitUntil: "next week" },
    { ...readable, email: "stamp@retry.test", lastUsed: Date.now() },
    { ...readable, email: undefined },
    "an entry",
    { ...readable, email: key, expires: "soon" },
  ];
  const emails = ["iso@retry.test", "stamp@retry.test"];
  const path = freshPath();
  writeRaw(path, JSON.stringify({ anthropic: unreadable }));
  const err = await assertNotRetried(await pluginFetch(path), "POOL_NO_ACCOUNT", { emails });
  // It said "has no accounts in <path>: add one", with five entries in the file.
  assert.doesNotMatch(err.message, /has no accounts/);
  assert.match(err.message, /its 5 entries \(iso@retry\.test, stamp@retry\.test, '#2', '#3', '#4'\) cannot be read; `oauth-pool list` says why/);
  assert.ok(!err.message.includes(key), err.message);

  // Beside accounts that cannot serve, the unreadable ones are named too.
  const mixed = freshPath();
  writeRaw(mixed, JSON.stringify({ anthropic: [{ ...oauthEntry(mock, "off@retry.test"), enabled: false, status: "disabled" }, unreadable[0]] }));
  const also = await assertNotRetried(await pluginFetch(mixed), "POOL_NO_ACCOUNT", { emails: [...emails, "off@retry.test"] });
  assert.match(also.message, /off@retry\.test \(disabled\)[\s\S]*its 1 entry \(iso@retry\.test\) cannot be read/);
});

test("a pool file refused (a symbolic link) and a credential the file holds that cannot be sent: said in words OpenCode does not retry", async () => {
  const real = freshPath();
  await writePool(real, [oauthEntry(mock, "linked@retry.test")]);
  const link = freshPath();
  mkdirSync(join(link, ".."), { recursive: true });
  symlinkSync(real, link);
  await assertNotRetried(await pluginFetch(link), "POOL_INSECURE", { says: /symbolic link/ });

  const path = freshPath();
  await writePool(path, [{ ...oauthEntry(mock, "broken@retry.test"), access: "sk-ant-oat01-a\nb" }]);
  await assertNotRetried(await pluginFetch(path), "POOL_NO_ACCOUNT", { emails: ["broken@retry.test"], says: /not a valid header value/ });
});

test("a provider pointed off the pool's API origin: said in words OpenCode does not retry", async () => {
  const path = freshPath();
  await writePool(path, [oauthEntry(mock, "origin@retry.test")]);
  const elsewhere = "https://proxy.example.test";
  const config = { provider: { "anthropic-pool": { options: { baseURL: `${elsewhere}/v1` } } } };
  const fetch = await pluginFetch(path, config);
  const err = await assertNotRetried(fetch, "INSECURE_ENDPOINT", { url: `${elsewhere}/v1/messages` });
  assert.equal(openCodeRetries(ours(err.message).split(elsewhere).join("<there>")), null);
});

test("OAUTH_POOL_API_URL set to plain http off loopback: the plugin's fetch says why the addon refuses it, not that the origin is not itself", async () => {
  const path = freshPath();
  await writePool(path, [oauthEntry(mock, "plain@retry.test")]);
  // The message said "http://api.example.test is not the pool's API origin (http://api.example.test)".
  const plain = "http://api.example.test";
  const api = process.env.OAUTH_POOL_API_URL;
  process.env.OAUTH_POOL_API_URL = plain;
  try {
    const refused = await assertNotRetried(await pluginFetch(path), "INSECURE_ENDPOINT", {
      url: `${plain}/v1/messages`,
      says: /refused: plain http is allowed only to a loopback host/,
    });
    assert.equal(openCodeRetries(ours(refused.message).split(plain).join("<there>")), null);
  } finally {
    process.env.OAUTH_POOL_API_URL = api;
  }
});
