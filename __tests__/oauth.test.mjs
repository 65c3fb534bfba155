// OAuth through the real addon against the strict mock token endpoint (issue 3).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  authorize,
  exchange,
  refresh,
  addAccount,
  addApiKey,
  createPoolFetch,
  loadPool,
  savePool,
  importClaudeCode,
  listAccounts,
  refreshAccount,
} from "../index.mjs";
import { callbackUrlFromPaste } from "./helpers/mock-anthropic.mjs";
import { account, body, jsonHeaders, messagesUrl, useMock, seedPool, tempPoolPath, mode, withEnv } from "./helpers/pool-env.mjs";
import { chownSync, mkdirSync, rmdirSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { join } from "node:path";
import { tempDir } from "./helpers/temp.mjs";

const IMPORTABLE_ACCESS = ["sk", "ant", "oat01", "importable-0123456789"].join("-");
const mock = useMock();

test("authorize: PKCE S256 with a separate random state", async () => {
  const a = await authorize();
  const url = new URL(a.url);
  assert.equal(url.origin + url.pathname, "https://claude.ai/oauth/authorize");
  assert.equal(url.searchParams.get("code_challenge_method"), "S256");
  assert.equal(url.searchParams.get("state"), a.state);
  assert.notEqual(a.state, a.verifier);
  assert.match(a.verifier, /^[A-Za-z0-9_-]{43,128}$/);
  assert.ok(!a.url.includes(a.verifier));
  // What claude.ai checks, written out here rather than read from the addon's own constants
  // (the Rust test compares with those, and a changed one passed it): the public PKCE client of
  // OpenCode's own Anthropic login (no secret), its redirect, and the challenge computed here.
  assert.equal(url.searchParams.get("client_id"), "9d1c250a-e61b-44d9-88ed-5944d1962f5e");
  assert.equal(url.searchParams.get("response_type"), "code");
  assert.equal(url.searchParams.get("code"), "true");
  assert.equal(url.searchParams.get("redirect_uri"), "https://platform.claude.com/oauth/code/callback");
  const scopes = url.searchParams.get("scope").split(" ");
  for (const needed of ["user:inference", "user:profile"]) assert.ok(scopes.includes(needed), `scope ${needed}: ${scopes.join(" ")}`);
  assert.equal(url.searchParams.get("code_challenge"), createHash("sha256").update(a.verifier).digest("base64url"));
  const c = await authorize({ mode: "console" });
  assert.equal(new URL(c.url).host, "platform.claude.com");
  await assert.rejects(authorize({ mode: "nope" }), (e) => e.code === "INVALID_ARGUMENT");
});

// anchors.md (b), checked against the literal values there rather than the Rust constants
// (a test comparing the URL with `CLIENT_ID` passes whatever `CLIENT_ID` says): Claude Code's
// public client id, the 2026 redirect URI and scopes, the parameters in the order the official
// client sends them, and the S256 challenge of the verifier.
test("the login URL is Anthropic's, byte for byte: client id, redirect URI, scopes, parameter order, S256 challenge", async () => {
  const fixed =
    "code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e&response_type=code" +
    "&redirect_uri=https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback" +
    "&scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference+user%3Asessions%3Aclaude_code+user%3Amcp_servers+user%3Afile_upload";
  for (const [mode, base] of [
    [undefined, "https://claude.ai/oauth/authorize"],
    ["max", "https://claude.ai/oauth/authorize"],
    ["console", "https://platform.claude.com/oauth/authorize"],
  ]) {
    const a = await authorize(mode ? { mode } : undefined);
    const challenge = createHash("sha256").update(a.verifier).digest("base64url");
    assert.equal(a.url, `${base}?${fixed}&code_challenge=${challenge}&code_challenge_method=S256&state=${a.state}`, String(mode));
    assert.match(a.state, /^[A-Za-z0-9_-]{43}$/, "state needs no escaping: it is the URL's own");
  }
});

test("the contract's shapes: exactly these keys, expires in epoch ms, every rejection an Error with its code", async () => {
  // CONTRACT.md "Native functions": what each resolves to, no more (a key added by mistake
  // could carry a secret to a caller that prints the object), and a coded Error for bad input.
  const keys = (o) => Object.keys(o).sort();
  const missing = join(tempDir("oauth-pool-shapes-"), "none", "pool.json");
  assert.deepEqual(await loadPool(missing), { anthropic: [] });
  assert.equal(await savePool({ anthropic: [] }, missing), undefined);
  const a = await authorize();
  assert.deepEqual(keys(a), ["state", "url", "verifier"]);
  assert.ok([a.url, a.state, a.verifier].every((v) => typeof v === "string" && v.length > 0));
  const before = Date.now();
  const t = await exchange(mock.approve(a.url, "shapes@x.test", { expiresIn: 3600 }), a);
  assert.deepEqual(keys(t), ["access", "email", "expires", "refresh"]);
  assert.equal(t.email, "shapes@x.test");
  // Milliseconds: this login's tokens live an hour (seconds would read as January 1970).
  assert.ok(Number.isInteger(t.expires) && t.expires >= before + 3_500_000 && t.expires <= Date.now() + 3_700_000, String(t.expires));
  const r = await refresh(t.refresh);
  assert.deepEqual(keys(r), ["access", "expires", "refresh"]);
  assert.ok(Number.isInteger(r.expires) && r.expires >= before + 3_500_000 && r.expires <= Date.now() + 3_700_000, String(r.expires));
  const coded = (code) => (e) => e instanceof Error && e.code === code && typeof e.message === "string" && e.message.length > 0;
  for (const [what, call, code] of [
    ["loadPool(5)", () => loadPool(5), "INVALID_ARGUMENT"],
    ["savePool()", () => savePool(), "POOL_INVALID"],
    ["savePool({ anthropic: [{}] })", () => savePool({ anthropic: [{}] }, missing), "POOL_INVALID"],
    ["savePool(pool, 5)", () => savePool({ anthropic: [] }, 5), "INVALID_ARGUMENT"],
    ["authorize('max')", () => authorize("max"), "INVALID_ARGUMENT"],
    ["authorize({ mode: 'pro' })", () => authorize({ mode: "pro" }), "INVALID_ARGUMENT"],
    ["exchange()", () => exchange(), "INVALID_ARGUMENT"],
    ["exchange(code)", () => exchange("c#s"), "INVALID_ARGUMENT"],
    ["exchange(code, { verifier })", () => exchange("c#s", { verifier: a.verifier }), "INVALID_ARGUMENT"],
    ["refresh()", () => refresh(), "INVALID_ARGUMENT"],
    ["refresh(42)", () => refresh(42), "INVALID_ARGUMENT"],
  ]) {
    await assert.rejects(call(), coded(code), what);
  }
  assert.deepEqual(await loadPool(missing), { anthropic: [] }, "nothing was written by the refusals");
});

test("exchange accepts code#state, the callback URL and a query string", async () => {
  for (const [i, form] of ["hash", "url", "query"].entries()) {
    const a = await authorize();
    const paste = mock.approve(a.url, `form${i}@x.test`);
    const input = form === "hash" ? paste : form === "url" ? callbackUrlFromPaste(paste) : new URL(callbackUrlFromPaste(paste)).search;
    const t = await exchange(input, { verifier: a.verifier, state: a.state });
    assert.equal(t.email, `form${i}@x.test`);
    assert.equal(t.access, mock.tokens(`form${i}@x.test`).access);
    assert.ok(t.expires > Date.now() + 3600_000);
  }
});

test("a code or callback copied out of a sentence (trailing `.`, `,`, brackets, quotes) logs in; another login's state with them still sends nothing", async () => {
  // The punctuation was read into the state: OAUTH_STATE_MISMATCH, "start the login again".
  const wrappers = [(p) => `${p}.`, (p) => `${p},`, (p) => `(${p}).`, (p) => `"${p}".`, (p) => `<${p}>,`, (p) => `${p}\u201d.`];
  for (const [i, wrap] of wrappers.entries()) {
    for (const form of ["hash", "url"]) {
      const a = await authorize();
      const email = `sentence${i}-${form}@x.test`;
      const paste = mock.approve(a.url, email);
      const pasted = wrap(form === "hash" ? paste : callbackUrlFromPaste(paste));
      assert.equal((await exchange(pasted, a)).email, email, pasted.slice(-12));
    }
  }
  const a = await authorize();
  const other = await authorize();
  const calls = mock.stats().tokenCalls;
  await assert.rejects(exchange(`${mock.approve(other.url, "other@x.test")}.`, a), (e) => e.code === "OAUTH_STATE_MISMATCH");
  assert.equal(mock.stats().tokenCalls, calls, "nothing was sent");
});

test("the email comes from the profile when the token response has none", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "profile@x.test", { includeEmail: false });
  const t = await exchange(paste, { verifier: a.verifier, state: a.state });
  assert.equal(t.email, "profile@x.test");
  assert.ok(mock.stats().profileCalls >= 1);
});

test("the email's fallback asks GET <OAUTH_POOL_API_URL>/api/oauth/profile, read at the call, not the token endpoint's origin", async () => {
  // The mock serves both on one origin: only an API origin of its own tells them apart.
  const seen = [];
  const api = createServer((req, res) => {
    seen.push({ method: req.method, url: req.url, authorization: req.headers.authorization });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ account: { email: "from-api-origin@x.test" } }));
  });
  await new Promise((r) => api.listen(0, "127.0.0.1", r));
  try {
    const a = await authorize();
    const paste = mock.approve(a.url, "token-origin@x.test", { includeEmail: false });
    const before = mock.stats().profileCalls;
    const t = await withEnv({ OAUTH_POOL_API_URL: `http://127.0.0.1:${api.address().port}` }, () => exchange(paste, a));
    assert.equal(t.email, "from-api-origin@x.test");
    assert.deepEqual(seen, [{ method: "GET", url: "/api/oauth/profile", authorization: `Bearer ${t.access}` }]);
    assert.equal(mock.stats().profileCalls, before, "the token endpoint's origin was not asked");
  } finally {
    api.close();
  }
});

// better-ccflare #135 (a usage call's 429 logged the user out): the profile call is the only
// API call a login makes, after the code is spent. Whatever it meets, the login's tokens are
// kept, under a name of the pool's when no email came.
test("a login whose profile call fails (429, a 5xx page, 401, no email, a dropped connection) is kept with its tokens", async () => {
  const answers = {
    429: (res) =>
      res
        .writeHead(429, { "content-type": "application/json", "retry-after": "3600" })
        .end('{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'),
    502: (res) => res.writeHead(502, { "content-type": "text/html" }).end("<html>Bad Gateway</html>"),
    401: (res) =>
      res.writeHead(401, { "content-type": "application/json" }).end('{"type":"error","error":{"type":"authentication_error","message":"invalid"}}'),
    "no email": (res) => res.writeHead(200, { "content-type": "application/json" }).end('{"account":{"uuid":"u"}}'),
    dropped: (res) => res.socket.destroy(),
  };
  let answer;
  const profile = createServer((_req, res) => answer(res));
  await new Promise((r) => profile.listen(0, "127.0.0.1", r));
  try {
    await withEnv({ OAUTH_POOL_API_URL: `http://127.0.0.1:${profile.address().port}` }, async () => {
      for (const [name, fn] of Object.entries(answers)) {
        answer = fn;
        const email = `no-email-${name.replace(" ", "-")}@x.test`;
        const a = await authorize();
        const path = tempPoolPath();
        const added = await addAccount(mock.approve(a.url, email, { includeEmail: false }), a, path);
        assert.match(added.email, /^unknown-[0-9a-f]+@anthropic-pool$/, name);
        assert.equal(added.added, true, name);
        const [stored] = (await loadPool(path)).anthropic;
        assert.equal(stored.refresh, mock.tokens(email).refresh, `${name}: the login's refresh token is in the pool`);
        assert.equal(stored.access, mock.tokens(email).access, name);
      }
    });
  } finally {
    profile.close();
  }
});

test("state mismatch fails before any request; a wrong verifier is invalid_grant", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "st@x.test");
  const calls = mock.stats().tokenCalls;
  await assert.rejects(exchange(paste.replace(/#.*/, "#other"), a), (e) => e.code === "OAUTH_STATE_MISMATCH");
  await assert.rejects(exchange(paste.replace(/#.*/, ""), a), (e) => e.code === "OAUTH_STATE_MISMATCH");
  await assert.rejects(exchange("", a), (e) => e.code === "OAUTH_BAD_INPUT");
  assert.equal(mock.stats().tokenCalls, calls, "no network call");
  await assert.rejects(exchange(paste, { verifier: "x".repeat(43), state: a.state }), (e) => e.code === "OAUTH_INVALID_GRANT");
});

test("a login's code is sent once: the same paste again is refused without a call; a refused code says so", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "once@x.test");
  const path = tempPoolPath();
  await addAccount(paste, a, path);
  const calls = mock.stats().tokenCalls;
  await assert.rejects(addAccount(paste, a, path), (e) => e.code === "OAUTH_INVALID_GRANT" && /completed already/.test(e.message));
  await assert.rejects(exchange(paste, a), (e) => e.code === "OAUTH_INVALID_GRANT" && /completed already/.test(e.message));
  assert.equal(mock.stats().tokenCalls, calls, "no second call");
  const b = await authorize();
  const wrong = mock.approve(b.url, "refused@x.test");
  await assert.rejects(
    exchange(wrong, { verifier: "y".repeat(43), state: b.state }),
    (e) => e.code === "OAUTH_INVALID_GRANT" && /login code was refused/.test(e.message),
  );
});

// The code is spent once the token endpoint takes it: an answer whose refresh token is good
// and whose access token cannot be used still carries the login. Thrown away, the person had to
// log in again, and pasting the code again was told the login was completed already.
test("a login answered with a refresh token and an unusable access token is kept, and refreshed at its first use", async () => {
  for (const [i, edit] of [{ access_token: undefined }, { access_token: "line\nbreak" }, { access_token: null }].entries()) {
    const email = `kept-${i}@x.test`;
    const a = await authorize();
    const paste = mock.approve(a.url, email);
    const path = tempPoolPath();
    mock.setTokenMode({ grant: "authorization_code", edit });
    const added = await addAccount(paste, a, path);
    mock.setTokenMode(null);
    assert.deepEqual(added, { email, added: true }, JSON.stringify(edit));
    const [kept] = (await loadPool(path)).anthropic;
    assert.equal(kept.refresh, mock.tokens(email).refresh, "the login's refresh token is stored");
    assert.equal(kept.access, "");
    assert.ok(!(kept.expires > Date.now()), "to be refreshed before use");
    const refreshes = mock.stats().perFamily[email].refreshCalls;
    const res = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    assert.equal(res.status, 200);
    await res.text();
    assert.equal(mock.stats().perFamily[email].refreshCalls, refreshes + 1, "refreshed once, with the login's token");
    assert.equal(mock.stats().perFamily[email].reuse, 0);
  }
  // No refresh token beside it: nothing to keep, the error says so.
  const a = await authorize();
  mock.setTokenMode({ grant: "authorization_code", edit: { access_token: undefined, refresh_token: undefined } });
  await assert.rejects(addAccount(mock.approve(a.url, "nothing@x.test"), a, tempPoolPath()), (e) => e.code === "OAUTH_HTTP");
  mock.setTokenMode(null);
});

// Found by a review (2026-12-07, second): `--mode console` only changed the login URL, and the
// Console login's bearer token was stored as a subscription member, which the API refuses for a
// Console organisation. A Console login is for its API key, as Claude Code makes it.
test("a Console login adds the API key the Console makes for it: a key member that serves; a refusal is coded, names no secret, adds nothing", async () => {
  const made = () => mock.requests.filter((r) => r.path === "/api/oauth/claude_cli/create_api_key").length;
  // The contract's `{ url, verifier, state }`: the mode is the one this process started the
  // login of that state in.
  const a = await authorize({ mode: "console" });
  assert.deepEqual(Object.keys(a).sort(), ["state", "url", "verifier"]);
  const path = tempPoolPath();
  const before = made();
  const added = await addAccount(mock.approve(a.url, "console-team@x.test"), a, path);
  assert.deepEqual(added, { email: "console-team@x.test", added: true, type: "api" });
  assert.equal(made(), before + 1, "one key made");
  const [member] = (await loadPool(path)).anthropic;
  assert.equal(member.type, "api");
  assert.match(member.key, /^sk-ant-api/);
  assert.equal(member.refresh, undefined, "the login's tokens are not kept: the key is the member");
  const res = await createPoolFetch({ path })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "console-team@x.test");
  await res.text();

  // One person's Pro/Max login and Console login share an email: the key goes beside the login
  // (it was made, then refused for the name, and lost: one more orphan key in the Console a try).
  const max = await authorize();
  assert.deepEqual(await addAccount(mock.approve(max.url, "both@x.test"), max, path), { email: "both@x.test", added: true });
  const second = await authorize({ mode: "console" });
  const keysBefore = made();
  // Told by the pkce's own `mode` too (a login started in another process).
  const { verifier, state } = second;
  assert.deepEqual(await addAccount(mock.approve(second.url, "both@x.test"), { verifier, state, mode: "console" }, path), {
    email: "both@x.test (console)",
    added: true,
    type: "api",
  });
  assert.equal(made(), keysBefore + 1);
  assert.deepEqual(
    (await loadPool(path)).anthropic.map((a) => [a.email, a.type ?? "oauth"]),
    [
      ["console-team@x.test", "api"],
      ["both@x.test", "oauth"],
      ["both@x.test (console)", "api"],
    ],
  );

  // An endpoint that makes no key (an HTML page, an answer without one that echoes the token).
  for (const answer of [
    (res, _token) => res.writeHead(502, { "content-type": "text/html" }).end("<html>bad gateway</html>"),
    (res, token) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ raw_key: null, echo: token })),
    (res, token) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ raw_key: `not a key ${token}` })),
  ]) {
    let seen = "";
    const server = createServer((req, res) => {
      seen = String(req.headers.authorization ?? "").replace(/^Bearer /, "");
      answer(res, seen);
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    try {
      const login = await authorize({ mode: "console" });
      const paste = mock.approve(login.url, "console-refused@x.test");
      const none = tempPoolPath();
      await withEnv({ OAUTH_POOL_API_URL: `http://127.0.0.1:${server.address().port}` }, async () => {
        await assert.rejects(addAccount(paste, login, none), (e) => {
          assert.equal(e.code, "OAUTH_HTTP", e.message);
          assert.match(e.message, /no API key was made for it, and nothing was added/);
          assert.ok(seen && !e.message.includes(seen), "the token is not repeated");
          return true;
        });
      });
      assert.deepEqual((await loadPool(none)).anthropic, []);
    } finally {
      server.close();
    }
  }
});

// Found by a review (2026-12-07, fifth): a key the Console made was lost when its answer had a
// byte order mark, a trailer or blanks around the key (one more orphan key in the Console a try),
// and a code answer whose access token was unusable sent an empty bearer to make the key, and
// dropped the login a Pro/Max login keeps.
test("a Console login takes the key from an answer with a byte order mark, a trailer or blanks around it, and makes it with a refreshed token when the code's access token was unusable", async () => {
  const key = ["sk", "ant", "api03", "console0shapes0123456789abcdef"].join("-");
  for (const [i, answer] of [
    `\ufeff${JSON.stringify({ raw_key: key })}`,
    `${JSON.stringify({ raw_key: key })}\n{}`,
    JSON.stringify({ raw_key: ` ${key}\n` }),
  ].entries()) {
    const server = createServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end(answer));
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    try {
      const login = await authorize({ mode: "console" });
      const paste = mock.approve(login.url, `console-shape${i}@x.test`);
      const path = tempPoolPath();
      await withEnv({ OAUTH_POOL_API_URL: `http://127.0.0.1:${server.address().port}` }, async () => {
        assert.deepEqual(await addAccount(paste, login, path), { email: `console-shape${i}@x.test`, added: true, type: "api" }, answer);
      });
      assert.equal((await loadPool(path)).anthropic[0].key, key, answer);
    } finally {
      server.close();
    }
  }
  const email = "console-unusable@x.test";
  const login = await authorize({ mode: "console" });
  const paste = mock.approve(login.url, email);
  mock.setTokenMode({ grant: "authorization_code", reshape: (b) => ({ ...b, access_token: "bad\nvalue" }) });
  try {
    const path = tempPoolPath();
    assert.deepEqual(await addAccount(paste, login, path), { email, added: true, type: "api" });
    assert.equal(mock.stats().perFamily[email].refreshCalls, 1, "the key made with the token one refresh gave");
    const [member] = (await loadPool(path)).anthropic;
    assert.equal(member.type, "api");
    assert.match(member.key, /^sk-ant-api/);
  } finally {
    mock.setTokenMode(null);
  }
});

// Found by a review (2026-12-08): the same Console login pasted twice at once (a double submit)
// shared one token call, and each caller then made a key of its own: one of the two was left in
// the Console for the person to find and revoke.
test("the same Console login pasted twice at once makes one API key: the second call gets the first's member, not added", async () => {
  const made = () => mock.requests.filter((r) => r.path === "/api/oauth/claude_cli/create_api_key").length;
  const email = "console-double@x.test";
  const login = await authorize({ mode: "console" });
  const paste = mock.approve(login.url, email);
  const path = tempPoolPath();
  const calls = mock.stats().tokenCalls;
  const keys = made();
  // The token endpoint holds its answer while the same login is pasted a second time.
  let release;
  mock.setTokenMode({ grant: "authorization_code", until: new Promise((r) => (release = r)) });
  const arrived = mock.waitFor("token", (r) => r.grant === "authorization_code");
  const settled = [];
  const both = [addAccount(paste, login, path), addAccount(paste, login, path)].map((p) =>
    p.then(
      (v) => settled.push(v),
      (e) => settled.push(e),
    ),
  );
  try {
    await arrived;
    // The second joins the first's call while it is held (on a busy machine, later than usual).
    await new Promise((r) => setTimeout(r, 1000));
    release();
    await Promise.all(both);
  } finally {
    mock.setTokenMode(null);
  }
  const failed = settled.filter((r) => r instanceof Error);
  assert.deepEqual(failed, [], failed.map((e) => e.message).join());
  assert.equal(mock.stats().tokenCalls - calls, 1, "the code went to the token endpoint once");
  assert.equal(made() - keys, 1, "one key made for one login");
  assert.deepEqual(
    settled.map((r) => JSON.stringify(r)).sort(),
    [
      { email, added: false, type: "api" },
      { email, added: true, type: "api" },
    ]
      .map((r) => JSON.stringify(r))
      .sort(),
  );
  const members = (await loadPool(path)).anthropic;
  assert.deepEqual(
    members.map((m) => [m.email, m.type]),
    [[email, "api"]],
  );
  assert.match(members[0].key, /^sk-ant-api/);
});

// Found by a review (2026-12-08): a Console login whose email is a Pro/Max login of the pool
// goes in as `<email> (console)`; an email of 245 to 254 characters made that name too long, and
// it was refused once the Console had made the key (one more orphan key a try).
test("a Console login whose email is a Pro/Max login of the pool and too long to take ' (console)' is added under its key's fingerprint", async () => {
  const made = () => mock.requests.filter((r) => r.path === "/api/oauth/claude_cli/create_api_key").length;
  const emailOf = (length) => `${"console.long.".repeat(20)}x@example.test`.slice(-length);
  for (const length of [244, 245, 254]) {
    const email = emailOf(length);
    assert.equal(email.length, length);
    const path = tempPoolPath();
    const max = await authorize();
    assert.deepEqual(await addAccount(mock.approve(max.url, email), max, path), { email, added: true }, `${length}`);
    const login = await authorize({ mode: "console" });
    const keys = made();
    const added = await addAccount(mock.approve(login.url, email), login, path);
    assert.equal(made() - keys, 1, `${length}: one key made`);
    const [kept, member, ...rest] = (await loadPool(path)).anthropic;
    assert.deepEqual(rest, [], `${length}`);
    assert.equal(kept.email, email, `${length}: the Pro/Max login stays`);
    assert.equal(member.type, "api", `${length}`);
    assert.match(member.key, /^sk-ant-api/);
    // 244 + " (console)" is 254 characters, a name the pool takes; past it, the key's fingerprint.
    const name = length <= 244 ? `${email} (console)` : `api-key-${createHash("sha256").update(member.key).digest("hex").slice(0, 8)}`;
    assert.deepEqual(added, { email: name, added: true, type: "api" }, `${length}`);
    assert.equal(member.email, name, `${length}`);
  }
});

// Found by a review (2026-12-08): a Console login's key is made at OAUTH_POOL_API_URL once the code
// is spent; one the pool refuses (plain http off loopback) was found only then, the login lost.
test("a Console login with an OAUTH_POOL_API_URL the pool refuses is INSECURE_ENDPOINT before the code is sent, and the same paste then logs in", async () => {
  const email = "console-insecure-api@x.test";
  const login = await authorize({ mode: "console" });
  const paste = mock.approve(login.url, email);
  const path = tempPoolPath();
  const calls = mock.stats().tokenCalls;
  // 192.0.2.1 is TEST-NET: refused before any connection is made.
  await withEnv({ OAUTH_POOL_API_URL: "http://192.0.2.1" }, async () => {
    await assert.rejects(addAccount(paste, login, path), (e) => {
      assert.equal(e.code, "INSECURE_ENDPOINT", e.message);
      assert.match(e.message, /OAUTH_POOL_API_URL/);
      assert.ok(!e.codeSpent, "the code was not spent");
      return true;
    });
  });
  assert.equal(mock.stats().tokenCalls, calls, "the code was not sent");
  assert.deepEqual(await addAccount(paste, login, path), { email, added: true, type: "api" });
});

// Found by a review (2026-12-07, second): a 200 carrying an OAuth error was read as a token
// response ("no refresh_token"), its code and text dropped, and the login marked completed: the
// same paste, its code still unused, was refused "completed already".
test("a token endpoint's 200 that is an OAuth error is said as the error, and the same paste then logs in", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "error200@x.test");
  const path = tempPoolPath();
  mock.setTokenMode({ grant: "authorization_code", status: 200, body: { error: "temporarily_unavailable", error_description: "try again in a moment" } });
  await assert.rejects(addAccount(paste, a, path), (e) => {
    assert.equal(e.code, "OAUTH_HTTP");
    assert.match(e.message, /temporarily_unavailable: try again in a moment/);
    return true;
  });
  mock.setTokenMode(null);
  assert.deepEqual(await addAccount(paste, a, path), { email: "error200@x.test", added: true });
});

test("the same paste submitted twice at once is sent once, and both get the login: a host showing the last answer shows it added", async () => {
  // The second was OAUTH_BAD_INPUT "pasted twice" though the first added the account.
  const a = await authorize();
  const paste = mock.approve(a.url, "double@x.test");
  const path = tempPoolPath();
  const calls = mock.stats().tokenCalls;
  // The token endpoint holds its answer while the same login is pasted twice more.
  let release;
  mock.setTokenMode({ grant: "authorization_code", until: new Promise((r) => (release = r)) });
  const arrived = mock.waitFor("token", (r) => r.grant === "authorization_code");
  const settled = [];
  const both = [addAccount(paste, a, path), addAccount(paste, a, path), exchange(paste, a)].map((p) =>
    p.then(
      (v) => settled.push(v),
      (e) => settled.push(e),
    ),
  );
  await arrived;
  // The other two join the first's call while it is held (on a busy machine, later than usual).
  await new Promise((r) => setTimeout(r, 1000));
  release();
  await Promise.all(both);
  mock.setTokenMode(null);
  const failed = settled.filter((r) => r instanceof Error);
  assert.deepEqual(failed, [], failed.map((e) => e.message).join());
  assert.deepEqual(settled.map((r) => r.email).sort(), ["double@x.test", "double@x.test", "double@x.test"]);
  assert.equal(mock.stats().tokenCalls - calls, 1, "the code went to the token endpoint once");
  assert.deepEqual(
    (await listAccounts(path)).map((x) => x.email),
    ["double@x.test"],
  );
  await assert.rejects(addAccount(paste, a, path), (e) => e.code === "OAUTH_INVALID_GRANT" && /completed already/.test(e.message));
});

test("a verifier authorize() cannot have made is INVALID_ARGUMENT with no token call, and the code still logs in", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "verifier@x.test");
  const path = tempPoolPath();
  const calls = mock.stats().tokenCalls;
  for (const verifier of ["", "short", `${a.verifier} `, "\u00fc".repeat(43), "x".repeat(129), `${a.verifier.slice(0, 42)}\n`]) {
    await assert.rejects(
      addAccount(paste, { verifier, state: a.state }, path),
      (e) => e.code === "INVALID_ARGUMENT" && /verifier/.test(e.message) && !e.message.includes(a.verifier.slice(0, 12)),
      JSON.stringify(verifier),
    );
  }
  assert.equal(mock.stats().tokenCalls, calls, "nothing reached the token endpoint");
  assert.deepEqual(await addAccount(paste, a, path), { email: "verifier@x.test", added: true });
});

test("a login whose token call meets an HTML error page is OAUTH_HTTP without the page, and the same paste then logs in", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "html-page@x.test");
  const path = tempPoolPath();
  mock.setTokenMode({ grant: "authorization_code", html: true, status: 502 });
  await assert.rejects(addAccount(paste, a, path), (e) => e.code === "OAUTH_HTTP" && e.status === 502 && !/cloudflare|<html|Bad Gateway/i.test(e.message));
  assert.deepEqual(await addAccount(paste, a, path), { email: "html-page@x.test", added: true });
});

test("an email the server gives that cannot name an account is not returned", async () => {
  const a = await authorize();
  const paste = mock.approve(a.url, "bad\u001b[2J\u202eemail@x.test");
  const t = await exchange(paste, { verifier: a.verifier, state: a.state });
  assert.equal(t.email ?? null, null);
});

test("an email the server gives that holds a credential is not returned, and its login goes under a name of the pool's", async () => {
  const name = `team ${["sk", "ant", "oat01", "0123456789abcdef0123"].join("-")}`;
  const a = await authorize();
  const t = await exchange(mock.approve(a.url, name), { verifier: a.verifier, state: a.state });
  assert.equal(t.email ?? null, null);
  const path = tempPoolPath();
  const b = await authorize();
  const r = await addAccount(mock.approve(b.url, name), b, path);
  assert.match(r.email, /^unknown-[0-9a-f]+@anthropic-pool$/);
  assert.deepEqual(
    (await listAccounts(path)).map((x) => x.email),
    [r.email],
  );
});

test("refresh rotates; presenting the spent token again is invalid_grant and revokes the family", async () => {
  const t0 = mock.addAccount("rot@x.test");
  const t1 = await refresh(t0.refresh);
  assert.notEqual(t1.refresh, t0.refresh);
  assert.equal(t1.access, mock.tokens("rot@x.test").access);
  // Presented again, the spent token revoked the family at this endpoint; the refresh journal
  // now keeps the export from presenting it a second time: nothing sent, the login lives.
  await assert.rejects(refresh(t0.refresh), (e) => e.code === "OAUTH_INVALID_GRANT" && /the library's refresh\(\)/.test(e.message));
  assert.equal(mock.stats().perFamily["rot@x.test"].revoked, false);
});

test("token endpoint faults are typed, clear, and never leak the body", async () => {
  const t = mock.addAccount("fault@x.test");
  mock.setTokenMode({ status: 429, retryAfter: 30 });
  await assert.rejects(refresh(t.refresh), (e) => e.code === "OAUTH_HTTP" && e.status === 429);
  mock.setTokenMode({ status: 500 });
  await assert.rejects(refresh(t.refresh), (e) => e.code === "OAUTH_HTTP" && e.status === 500);
  mock.setTokenMode({ html: true });
  await assert.rejects(
    refresh(t.refresh),
    (e) => e.code === "OAUTH_HTTP" && /not JSON \(text\/html\)/.test(e.message) && !/cloudflare|<html|Bad Gateway/i.test(e.message),
  );
  // Of a JSON error only its code and description are said, and never the token it echoes; the
  // rest of the body (what a server may add about the request) is not shown.
  const told = (e) => `${e.message} ${JSON.stringify(e)} ${e.stack}`;
  for (const status of [400, 500]) {
    mock.setTokenMode({
      status,
      body: { error: "server_error", error_description: `could not use ${t.refresh}`, request: { refresh_token: t.refresh, debug: "body-only-canary" } },
    });
    await assert.rejects(refresh(t.refresh), (e) => {
      assert.equal(e.code, "OAUTH_HTTP", `${status}`);
      assert.match(e.message, /server_error: could not use/, `${status}`);
      assert.ok(!told(e).includes(t.refresh), `${status}: the refresh token in ${told(e)}`);
      assert.ok(!told(e).includes("body-only-canary"), `${status}: the body's other fields in ${e.message}`);
      return true;
    });
  }
  mock.setTokenMode({ reset: true });
  await assert.rejects(refresh(t.refresh), (e) => e.code === "NETWORK");
  // None of the failures above spent the token: it still works.
  const ok = await refresh(t.refresh);
  assert.ok(ok.access);
  // A slow endpoint hits the timeout (an ambiguous outcome: the server may still rotate).
  process.env.OAUTH_POOL_TIMEOUT_MS = "300";
  mock.setTokenMode({ delayMs: 2000 });
  const started = Date.now();
  await assert.rejects(refresh(ok.refresh), (e) => e.code === "NETWORK" && /timed out/.test(e.message));
  assert.ok(Date.now() - started < 1500);
  delete process.env.OAUTH_POOL_TIMEOUT_MS;
});

// Found by a review (2026-12-08): a refresh answered 200 with `invalid_grant` and no tokens (an
// endpoint that answers its errors with 200) was OAUTH_HTTP, a passing failure: the account stayed
// idle and its dead token was presented again after every backoff.
test("a refresh answered 200 with invalid_grant is OAUTH_INVALID_GRANT and the account an auth-error, as for a 400", async () => {
  for (const status of [400, 200]) {
    const email = `dead-refresh-${status}@x.test`;
    const path = await seedPool(mock, [email], { expired: [email] });
    const calls = mock.stats().perFamily[email].refreshCalls;
    mock.setTokenMode({
      grant: "refresh_token",
      status,
      times: Infinity,
      body: { error: "invalid_grant", error_description: "Refresh token not found or invalid" },
    });
    try {
      for (let i = 0; i < 2; i++) {
        await assert.rejects(refreshAccount(email, path), (e) => {
          assert.equal(e.code, "OAUTH_INVALID_GRANT", `${status}: ${e.message}`);
          assert.match(e.message, /needs a new login/);
          return true;
        });
      }
    } finally {
      mock.setTokenMode(null);
    }
    const stored = account(path, email);
    assert.equal(stored.status, "auth-error", `${status}`);
    assert.match(stored.lastError, /invalid_grant/);
    assert.equal(mock.stats().perFamily[email].refreshCalls - calls, 1, `${status}: the dead token was presented once`);
  }
});

test("plain http to a non-loopback token endpoint is refused", async () => {
  const saved = process.env.OAUTH_POOL_TOKEN_URL;
  process.env.OAUTH_POOL_TOKEN_URL = "http://example.com/v1/oauth/token";
  try {
    await assert.rejects(refresh("whatever"), (e) => e.code === "INSECURE_ENDPOINT");
  } finally {
    process.env.OAUTH_POOL_TOKEN_URL = saved;
  }
});

test("addAccount adds, a second login adds a second account, the same email updates", async () => {
  const path = tempPoolPath();
  for (const [email, as] of [
    ["one@x.test", "one@x.test"],
    ["two@x.test", "two@x.test"],
    // The same account in another case renews the entry, and is reported under its name.
    ["ONE@x.test", "one@x.test"],
  ]) {
    const a = await authorize();
    const r = await addAccount(mock.approve(a.url, email), a, path);
    assert.equal(r.email, as);
  }
  const pool = await loadPool(path);
  assert.deepEqual(
    pool.anthropic.map((x) => x.email),
    ["one@x.test", "two@x.test"],
  );
  assert.equal(pool.anthropic[0].access, mock.tokens("ONE@x.test").access);
  assert.equal(mode(path), 0o600);
  const key = await addApiKey("fake-console-key-test-123", { email: "team@x.test", path });
  assert.deepEqual(key, { email: "team@x.test", added: true });
  const listed = await listAccounts(path);
  assert.equal(listed.find((a) => a.email === "team@x.test").type, "api");
  const shown = JSON.stringify(listed);
  assert.ok(!shown.includes("sk-ant-") && !shown.includes("fake-console-key-test-123"), "no secret in the listing");
});

test("a Console key is one member: again without a name it renews its holder, under another name it is refused naming the holder", async () => {
  const path = tempPoolPath();
  const key = "fake-console-key-one-member-0123456789";
  assert.deepEqual(await addApiKey(key, { email: "holder@x.test", path }), { email: "holder@x.test", added: true });
  for (const [pasted, name] of [
    [key, "other@x.test"],
    [` "${key}" `, "other@x.test"],
    [`\u201c${key}\u201d`, "third"],
  ]) {
    await assert.rejects(
      addApiKey(pasted, { email: name, path }),
      (e) => e.code === "INVALID_ARGUMENT" && /holder@x\.test/.test(e.message) && !e.message.includes(key),
      `${JSON.stringify(pasted)} as ${name}`,
    );
  }
  assert.deepEqual(await addApiKey(`'${key}'`, { path }), { email: "holder@x.test", added: false });
  assert.deepEqual(await addApiKey(key, { email: "HOLDER@x.test", path }), { email: "holder@x.test", added: false });
  assert.deepEqual(
    (await loadPool(path)).anthropic.map((a) => [a.email, a.key]),
    [["holder@x.test", key]],
  );
});

// Found by a review: a shell or `.env` line was stored whole as the key (a 401 on every
// request), and `CLAUDE_CODE_OAUTH_TOKEN=sk-ant-oat01-...` passed the refusal of OAuth tokens.
test("a key pasted as its shell line is stored as its value; an OAuth token so pasted, or a key after other text, is refused", async () => {
  const path = tempPoolPath();
  const key = `sk-ant-api03-${"L".repeat(40)}`;
  for (const [pasted, name] of [
    [`ANTHROPIC_API_KEY=${key}`, "line@x.test"],
    [`export ANTHROPIC_API_KEY="${key}"`, "line@x.test"],
  ]) {
    assert.deepEqual(await addApiKey(pasted, { email: name, path }), { email: "line@x.test", added: pasted.startsWith("ANTHROPIC") }, pasted);
  }
  const oat = `sk-ant-oat01-${"O".repeat(40)}`;
  for (const [pasted, says] of [
    [`CLAUDE_CODE_OAUTH_TOKEN=${oat}`, /an OAuth access token, not a Console API key/],
    [`key:${key}`, /holds a key after other text: paste the key alone/],
    [`Bearer ${key}`, /holds a key after other text/],
    ["hunter2 hunter2", /does not look like an API key/],
  ]) {
    await assert.rejects(
      addApiKey(pasted, { email: "refused@x.test", path }),
      (e) => e.code === "INVALID_ARGUMENT" && says.test(e.message) && !e.message.includes(key.slice(14)) && !e.message.includes(oat.slice(14)),
      pasted,
    );
  }
  assert.deepEqual(
    (await loadPool(path)).anthropic.map((a) => [a.email, a.key]),
    [["line@x.test", key]],
  );
});

// Found by a review (2026-12-07, second): a credentials file another user owns, readable or
// reached through a link, was imported; its token family then shared, the pool's first refresh
// logged that user out.
test("Claude Code credentials another user owns are refused, named or through a link, nothing imported", {
  skip: !(typeof process.getuid === "function" && process.getuid() === 0) && "making a file of another user needs root",
}, async () => {
  const t = mock.addAccount("cc-theirs@x.test");
  const dir = tempDir("claude-theirs-");
  const creds = join(dir, ".credentials.json");
  writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires, scopes: [] } }), {
    mode: 0o644,
  });
  chownSync(creds, 65534, 65534);
  const link = join(tempDir("claude-link-"), ".credentials.json");
  symlinkSync(creds, link);
  for (const credentialsPath of [creds, link]) {
    const path = tempPoolPath();
    await assert.rejects(importClaudeCode({ credentialsPath, path }), (e) => {
      assert.equal(e.code, "INVALID_ARGUMENT");
      assert.match(e.message, /belong to another user \(uid 65534\).*nothing was imported/);
      return true;
    });
    assert.deepEqual((await loadPool(path)).anthropic, []);
  }
});

test("an existing Claude Code login can be imported", async () => {
  const t = mock.addAccount("cc@x.test");
  const dir = tempDir("claude-");
  const creds = join(dir, ".credentials.json");
  writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires, scopes: [] } }));
  const path = tempPoolPath();
  const r = await importClaudeCode({ credentialsPath: creds, path });
  assert.deepEqual(r, { email: "cc@x.test", added: true });
  assert.equal((await loadPool(path)).anthropic[0].refresh, t.refresh);
  // Its expiry as a float, a number as text, seconds or an ISO date is that time (each read as
  // 0, expired: the first request refreshed at once, logging Claude Code out).
  const at = Math.floor(t.expires / 1000) * 1000;
  for (const expiresAt of [at + 0.5, String(at), at / 1000, new Date(at).toISOString()]) {
    const other = mock.addAccount(`cc-expiry-${typeof expiresAt}-${String(expiresAt).length}@x.test`);
    writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: other.access, refreshToken: other.refresh, expiresAt, scopes: [] } }));
    const into = tempPoolPath();
    await importClaudeCode({ credentialsPath: creds, path: into });
    assert.equal(Math.floor((await loadPool(into)).anthropic[0].expires / 1000) * 1000, at, String(expiresAt));
  }
});

// Imported, refreshed by the pool, Claude Code logged out since, imported again: the file's
// tokens are the spent generation, and written over the live ones they lost the login in both
// places. The refresh journal knows the token spent: refused, the live tokens kept.
test("a Claude Code login imported again after the pool refreshed it is refused, and the pool keeps the live tokens", async () => {
  const t = mock.addAccount("cc-again@x.test");
  const creds = join(tempDir("claude-"), ".credentials.json");
  writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires, scopes: [] } }));
  const path = tempPoolPath();
  for (const named of [true, false]) {
    const options = { credentialsPath: creds, path, ...(named ? { email: "cc-again@x.test" } : {}) };
    if (named) assert.deepEqual(await importClaudeCode(options), { email: "cc-again@x.test", added: true });
    if (named) assert.equal((await refreshAccount("cc-again@x.test", path)).outcome, "refreshed");
    const live = (await loadPool(path)).anthropic[0];
    assert.notEqual(live.refresh, t.refresh);
    await assert.rejects(
      importClaudeCode(options),
      (e) =>
        e.code === "OAUTH_INVALID_GRANT" &&
        /already spent: the pool at .+ refreshed it as cc-again@x\.test on .+nothing was imported$/.test(e.message) &&
        !e.message.includes(t.refresh),
    );
    assert.deepEqual(
      (await loadPool(path)).anthropic.map((a) => [a.email, a.refresh]),
      [["cc-again@x.test", live.refresh]],
      "the live tokens stay",
    );
  }
});

test("one Claude Code login imported again under another name stays one member: a name given is refused naming the holder, none renews the holder", async () => {
  const t = mock.addAccount("cc-twice@x.test");
  const creds = join(tempDir("claude-"), ".credentials.json");
  writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: t.access, refreshToken: t.refresh, expiresAt: t.expires, scopes: [] } }));
  const path = tempPoolPath();
  assert.deepEqual(await importClaudeCode({ credentialsPath: creds, email: "work", path }), { email: "work", added: true });
  await assert.rejects(
    importClaudeCode({ credentialsPath: creds, email: "team", path }),
    (e) => e.code === "INVALID_ARGUMENT" && /already in the pool as work: remove work first/.test(e.message) && !e.message.includes(t.refresh),
  );
  assert.deepEqual(await importClaudeCode({ credentialsPath: creds, path }), { email: "work", added: false }, "without a name: the holder, renewed");
  assert.deepEqual(await importClaudeCode({ credentialsPath: creds, email: "WORK", path }), { email: "work", added: false });
  assert.deepEqual(
    (await loadPool(path)).anthropic.map((a) => [a.email, a.refresh]),
    [["work", t.refresh]],
    "one member holds the token family",
  );
});

// INVALID_ARGUMENT covers "a refresh token ... that is not visible ASCII of at most 4,096 bytes";
// `refresh()` and the token endpoint's answers are held to that, a Claude Code credentials file
// was not: its tokens were stored as they were, and the account then failed every request.
test("a Claude Code credentials file whose tokens are not tokens is INVALID_ARGUMENT, nothing imported, no token in the message", async () => {
  const dir = tempDir("claude-");
  const creds = join(dir, ".credentials.json");
  const path = tempPoolPath();
  const good = ["sk", "ant", "ort01", "importable-0123456789"].join("-");
  for (const [field, bad] of [
    ["accessToken", "sk-ant-oat01-with a-space"],
    ["refreshToken", "sk-ant-ort01-bell\u0007x"],
    ["refreshToken", "sk-ant-ort01-line\nbreak"],
    ["accessToken", `sk-ant-oat01-caf\u00e9-token`],
    ["refreshToken", `sk-ant-ort01-${"r".repeat(5000)}`],
  ]) {
    const tokens = { accessToken: IMPORTABLE_ACCESS, refreshToken: good, expiresAt: Date.now() + 3_600_000, [field]: bad };
    writeFileSync(creds, JSON.stringify({ claudeAiOauth: tokens }));
    await assert.rejects(
      importClaudeCode({ credentialsPath: creds, email: "cc-bad@x.test", path }),
      (e) => e.code === "INVALID_ARGUMENT" && e.message.includes(`claudeAiOauth.${field} that is not a token`) && !e.message.includes(bad.slice(13, 20)),
      JSON.stringify(bad.slice(0, 40)),
    );
  }
  // A name given that holds a credential was put aside for a name of the pool's: refused, as
  // addApiKey refuses one, without quoting it.
  writeFileSync(creds, JSON.stringify({ claudeAiOauth: { accessToken: IMPORTABLE_ACCESS, refreshToken: good, expiresAt: Date.now() + 3_600_000 } }));
  const named = ["sk", "ant", "api03", "named-import-0123456789"].join("-");
  await assert.rejects(
    importClaudeCode({ credentialsPath: creds, email: `team ${named}`, path }),
    (e) => e.code === "INVALID_ARGUMENT" && /holds a credential/.test(e.message) && !e.message.includes("named-import"),
  );
  assert.deepEqual((await loadPool(path)).anthropic, [], "nothing was imported");
});

test("the wrong thing pasted or passed (a NUL, megabytes, a non-ASCII code) is refused before any token call", async () => {
  const pkce = await authorize();
  const path = tempPoolPath();
  const calls = mock.stats().tokenCalls;
  for (const pasted of [`ab\0c#${pkce.state}`, `${"x".repeat(10_000_000)}#${pkce.state}`, `c\u00e9de#${pkce.state}`]) {
    await assert.rejects(exchange(pasted, pkce), (e) => e.code === "OAUTH_BAD_INPUT" && !e.message.includes(pkce.state));
    await assert.rejects(addAccount(pasted, pkce, path), (e) => e.code === "OAUTH_BAD_INPUT");
  }
  for (const token of ["", "r\0t", "r".repeat(5_000_000)]) {
    await assert.rejects(refresh(token), (e) => e.code === "INVALID_ARGUMENT" && !e.message.includes("rrrr"));
  }
  for (const key of ["fake-console-key-\0abcdef", `fake-console-key-${"a".repeat(5_000_000)}`]) {
    await assert.rejects(addApiKey(key, { path }), (e) => e.code === "INVALID_ARGUMENT" && !e.message.includes("aaaa"));
  }
  assert.equal(mock.stats().tokenCalls, calls, "nothing reached the token endpoint");
  assert.deepEqual((await loadPool(path)).anthropic, [], "nothing was added");
});

test("the login URL pasted back, or the code with more text after it, says what to paste, with no token call", async () => {
  // The login URL holds `code=true` and the attempt's own state: "true" went to the token
  // endpoint and came back as a refused code ("start the login again"), and a paste with a word
  // after it read as another login's state. Neither told the user what to paste.
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, "pasteback@x.test");
  const calls = mock.stats().tokenCalls;
  for (const [pasted, message] of [
    [pkce.url, /that is the login URL itself: open it in a browser, log in, and paste the code/],
    [new URL(pkce.url).search, /that is the login URL itself/],
    [`${paste} thanks`, /holds more than the code/],
  ]) {
    await assert.rejects(exchange(pasted, pkce), (e) => e.code === "OAUTH_BAD_INPUT" && message.test(e.message), pasted.slice(0, 40));
  }
  assert.equal(mock.stats().tokenCalls, calls, "nothing reached the token endpoint");
  // The right paste still works afterwards: the attempt was not spent.
  assert.equal((await exchange(paste, pkce)).email, "pasteback@x.test");
});

test("the code pasted twice, or a refused login's callback, says so with no token call; the callback as a mail app hands it over is the code", async () => {
  // Both were answered as another login's state or "no code found", and the person started the
  // login again; a link in <...> or with its scheme in capitals was "no code found" too.
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, "twice-pasted@x.test");
  const url = callbackUrlFromPaste(paste);
  const calls = mock.stats().tokenCalls;
  for (const [pasted, message] of [
    [`${paste}${paste}`, /pasted twice\?\): paste the code once/],
    [`${paste}\n${paste}`, /pasted twice/],
    [`${paste} ${paste}`, /pasted twice/],
    [`${url.replace(/code=[^&]*/, "error=access_denied&error_description=The%20user%20said%20no")}`, /not completed \(access_denied\).*start the login again/],
  ]) {
    await assert.rejects(
      exchange(pasted, pkce),
      (e) => e.code === "OAUTH_BAD_INPUT" && message.test(e.message) && !/said no/.test(e.message),
      pasted.slice(-30),
    );
  }
  assert.equal(mock.stats().tokenCalls, calls, "nothing reached the token endpoint");
  assert.equal((await exchange(`<${url}>`, pkce)).email, "twice-pasted@x.test");
  const again = await authorize();
  const upper = callbackUrlFromPaste(mock.approve(again.url, "upper@x.test")).replace("https://", "HTTPS://");
  assert.equal((await exchange(upper, again)).email, "upper@x.test");
});

test("addAccount into a pool that cannot take the account refuses before the code is spent", async () => {
  // The code went to the token endpoint first: the new login's tokens were then dropped by the
  // write, and the user's login was for nothing.
  const dir = tempDir("oauth-pool-corrupt-");
  const path = join(dir, "pool.json");
  writeFileSync(path, "{ not json", { mode: 0o600 });
  const pkce = await authorize();
  const paste = mock.approve(pkce.url, "corrupt@x.test");
  const calls = mock.stats().tokenCalls;
  await assert.rejects(addAccount(paste, pkce, path), (e) => e.code === "POOL_CORRUPT");
  assert.equal(mock.stats().tokenCalls, calls, "the code was not sent");
  // Fixed, the same paste adds the account.
  writeFileSync(path, '{ "anthropic": [] }');
  assert.deepEqual(await addAccount(paste, pkce, path), { email: "corrupt@x.test", added: true });
});

test("addAccount into a pool whose lock or directory the write would fail on refuses before the code is spent", async () => {
  // Found by a review: the code went to the token endpoint, then the write failed on the lock (a
  // directory, a FIFO, a link) or the directory (under a link to nothing), and the login lived
  // only in the process.
  const dir = tempDir("oauth-pool-lock-");
  const path = join(dir, "pool.json");
  writeFileSync(path, '{ "anthropic": [] }', { mode: 0o600 });
  symlinkSync(join(dir, "gone"), join(dir, "dangling"));
  const cases = [
    ["a lock that is a directory", path, () => mkdirSync(`${path}.lock`), () => rmdirSync(`${path}.lock`)],
    ["a lock that is a link", path, () => symlinkSync("/nonexistent", `${path}.lock`), () => unlinkSync(`${path}.lock`)],
    ["a directory under a link to nothing", join(dir, "dangling", "pool.json"), () => {}, () => {}],
  ];
  for (const [what, at, make, undo] of cases) {
    make();
    const pkce = await authorize();
    const paste = mock.approve(pkce.url, "locked@x.test");
    const calls = mock.stats().tokenCalls;
    await assert.rejects(addAccount(paste, pkce, at), (e) => e.code === "POOL_IO" || e.code === "POOL_INSECURE", what);
    assert.equal(mock.stats().tokenCalls, calls, `${what}: the code was not sent`);
    undo();
  }
  // A path that names a directory is no pool file.
  await assert.rejects(addAccount("abc#def", await authorize(), `${dir}/`), (e) => e.code === "INVALID_ARGUMENT" && /names a directory/.test(e.message));
  const pkce = await authorize();
  assert.deepEqual(await addAccount(mock.approve(pkce.url, "locked@x.test"), pkce, path), { email: "locked@x.test", added: true });
});
