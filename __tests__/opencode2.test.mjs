// The plugin on an OpenCode 2 host (issue 11), through a harness that loads and drives it the way
// 2.x does (helpers/opencode2-host.mjs, built from anomalyco/opencode's source), against the
// loopback mock of Anthropic. Runs under Node and Bun.
import { test } from "node:test";
import { createHash } from "node:crypto";
import { createServer } from "node:net";
import { createServer as createHttpServer } from "node:http";
import assert from "node:assert/strict";
import { basename, dirname } from "node:path";
import * as pluginModule from "../plugin.mjs";
import * as lib from "../index.mjs";
import { listAccounts, flushPool } from "../index.mjs";
import { settle } from "../lib/errors.mjs";
import { openExchange } from "../lib/exchange.mjs";
import { rateLimitHeaders, parseSSE } from "./helpers/mock-anthropic.mjs";
import { countedSignal, oauthEntry, poolListener, useMock, tempPoolPath, readPool, seedPool, withEnv } from "./helpers/pool-env.mjs";
import { HINTS } from "../lib/plugin/format.mjs";
import { createHost, loadPlugin, g1Context, registrationsOf, ModelRequestError, reloadingHost, withLogLines } from "./helpers/opencode2-host.mjs";
import { tempDir } from "./helpers/temp.mjs";

const mock = useMock();

const body = { messages: [{ role: "user", content: "hi" }] };
const textOf = (sse) =>
  parseSSE(sse)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");

/** A 2.x host with our plugin set up; `sleeps` collects the host's retry waits. */
async function started(options = {}) {
  const path = options.path ?? tempPoolPath();
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5 });
  const loaded = loadPlugin(pluginModule, { options: { path, ...options } });
  const handle = await host.start(loaded);
  return { host, handle, path, sleeps };
}

/** The Claude Pro/Max login as 2.x runs it: /connect/oauth, the person signs in, /complete. */
async function login(host, email) {
  const attempt = await host.oauthConnect({ integrationID: "anthropic-pool", methodID: "claude-max" });
  assert.equal(attempt.mode, "code");
  assert.match(attempt.instructions, /Anthropic's terms reserve Pro\/Max logins for Claude Code and claude\.ai; a Console API key is the sanctioned way/);
  const paste = mock.approve(attempt.url, email);
  return host.oauthComplete({ integrationID: "anthropic-pool", attemptID: attempt.attemptID, code: paste });
}

/** A host plugin standing for OpenCode 2's config plugin: its provider `transform` runs first. */
const configPlugin = (transform) => ({
  id: "config",
  kind: "setup",
  plugin: { id: "config", setup: (ctx) => ctx.provider.transform(transform) },
});

test("the default export decodes as 2.x does, and setup stands aside on a 1.18 (registration-only) context", async () => {
  const loaded = loadPlugin(pluginModule);
  assert.equal(loaded.id, "oauth-pool");
  assert.equal(loaded.kind, "setup");
  assert.deepEqual(Object.keys(pluginModule), ["default"], "no named exports (1.18 would call them)");
  const ctx = g1Context({ path: tempPoolPath() });
  assert.equal(await loaded.plugin.setup(ctx), undefined);
  assert.deepEqual(registrationsOf(ctx), [], "nothing registered, no fetch, no timer");
});

test("logins add accounts to the pool file; the host keeps no token of ours", async () => {
  const { host, path, handle } = await started();
  await login(host, "v2a@x.test");
  await login(host, "v2b@x.test");
  const key = "fake-console-key-v2-0123456789";
  mock.addApiKey(key, "v2key@x.test");
  const keyed = await host.login("anthropic-pool", "console-api-key", { answer: { key, label: "v2key@x.test" } });
  assert.equal(keyed.credential.value.access, "pool");
  assert.deepEqual(
    (await listAccounts(path)).map((a) => [a.email, a.type]),
    [
      ["v2a@x.test", "oauth"],
      ["v2b@x.test", "oauth"],
      ["v2key@x.test", "api"],
    ],
  );
  const stored = JSON.stringify(host.credentials("anthropic-pool"));
  for (const a of readPool(path).anthropic)
    for (const secret of [a.access, a.refresh, a.key].filter(Boolean)) assert.ok(!stored.includes(secret), "a token reached the host's store");
  assert.deepEqual(
    host.credentials("anthropic-pool").map((c) => c.label),
    ["v2a@x.test", "v2b@x.test", "v2key@x.test"],
  );
  await handle.unload();
});

test("logging in again keeps one placeholder per account in the host's store, and clears its needs-login mark", async () => {
  const { host, path, handle } = await started();
  await login(host, "again1@x.test");
  await login(host, "again2@x.test");
  const [first] = host.connections("anthropic-pool");
  // The pool asks for a new login of again1 (a revoked account): its connection is marked.
  await handle.context.integration.connection.status({
    integrationID: "anthropic-pool",
    connection: host.connections("anthropic-pool").find((c) => c.label === "again1@x.test"),
    status: { status: "needs_auth", message: "again1@x.test needs a new login" },
  });
  const before = mock.tokens("again1@x.test").access;
  const again = await login(host, "again1@x.test").then(
    () => null,
    (e) => e,
  );
  assert.notEqual(mock.tokens("again1@x.test").access, before, "the pool's account got the new login");
  assert.equal(readPool(path).anthropic.filter((a) => a.email === "again1@x.test").length, 1);
  assert.deepEqual(
    host
      .credentials("anthropic-pool")
      .map((c) => c.label)
      .sort(),
    ["again1@x.test", "again2@x.test"],
    "no second placeholder for the same account",
  );
  const conn = host.connections("anthropic-pool").find((c) => c.label === "again1@x.test");
  assert.equal(conn.status, undefined, "the needs-login mark is cleared");
  assert.equal(host.connections("anthropic-pool")[0].label, "again1@x.test", "the renewed account's connection is the active one");
  assert.ok(first, "connections were listed");
  assert.match(String(again?.message), /again1@x\.test.*renewed/, "the person is told the login renewed the account");
  assert.equal(again?.code, "ALREADY_CONNECTED", "coded, as every error the pool throws");
  // The Console API key method: the same key (same label) again adds no second placeholder either.
  const key = "fake-console-key-again-0123456789";
  mock.addApiKey(key, "againkey@x.test");
  await host.login("anthropic-pool", "console-api-key", { answer: { key, label: "againkey@x.test" } });
  await host.login("anthropic-pool", "console-api-key", { answer: { key, label: "againkey@x.test" } }).catch(() => {});
  assert.equal(host.credentials("anthropic-pool").filter((c) => c.label === "againkey@x.test").length, 1);
  const stored = JSON.stringify(host.credentials("anthropic-pool"));
  for (const a of readPool(path).anthropic)
    for (const secret of [a.access, a.refresh, a.key].filter(Boolean)) assert.ok(!stored.includes(secret), "a token reached the host's store");
  await handle.unload();
});

test("the provider mirrors the host's Anthropic models on the native route, free of cost, before any host login", async () => {
  const { host, handle } = await started();
  const provider = host.providers().find((p) => p.id === "anthropic-pool");
  assert.ok(provider, "listed without a host connection (accounts may come from the CLI)");
  assert.equal(provider.package, "@opencode/ai/providers/anthropic");
  assert.equal(provider.integrationID, "anthropic-pool");
  assert.equal(provider.settings.baseURL, `${mock.url}/v1`);
  const models = host.models("anthropic-pool");
  assert.deepEqual(models.map((m) => m.id).sort(), [...host.provider("anthropic").models.keys()].sort());
  assert.ok(models.every((m) => m.cost.every((c) => c.input === 0 && c.output === 0)));
  await handle.unload();
});

test("zeroed prices keep a cost entry's tier: a long-context tier still starts where the catalog says", async () => {
  // packages/schema/src/model.ts: Model.Cost is a list of {tier?: {type: "context", size}, input, output, cache}.
  const { providerTransform } = await import("../lib/opencode2/catalog.mjs");
  const tiered = [
    { input: 3, output: 15, cache: { read: 0.3, write: 3.75 } },
    { tier: { type: "context", size: 200000 }, input: 6, output: 22.5, cache: { read: 0.6, write: 7.5 } },
  ];
  const model = { id: "claude-sonnet-4-5", providerID: "anthropic", name: "Sonnet", cost: tiered };
  const records = new Map([["anthropic", { provider: { id: "anthropic" }, models: new Map([[model.id, model]]) }]]);
  const transformed = (keysOnly) => {
    let added;
    providerTransform({ providerID: "anthropic-pool", apiKeysOnly: () => keysOnly, wireModels: new Map() })({
      get: (id) => records.get(id),
      add: (p) => (added = p),
    });
    return added.models.find((m) => m.id === model.id).cost;
  };
  assert.deepEqual(transformed(false), [
    { input: 0, output: 0, cache: { read: 0, write: 0 } },
    { tier: { type: "context", size: 200000 }, input: 0, output: 0, cache: { read: 0, write: 0 } },
  ]);
  assert.deepEqual(transformed(true), tiered, "an API key is billed per token, tiers and all");
  assert.equal(model.cost[1].input, 6, "the host's own entry is left as it was");
});

test("a 429 on the first account is answered by the second, inside one host request; a 401 is refreshed once", async () => {
  const { host, handle, path, sleeps } = await started();
  await login(host, "f1@x.test");
  await login(host, "f2@x.test");
  mock.clearRequests();
  const first = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  const served = textOf(await first.text()).replace("Hello from ", "");
  const other = served === "f1@x.test" ? "f2@x.test" : "f1@x.test";
  mock.script(served, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  mock.clearRequests();
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(res.status, 200);
  assert.equal(textOf(await res.text()), `Hello from ${other}`);
  const sent = mock.requests.filter((r) => r.path.startsWith("/v1/messages"));
  assert.deepEqual(
    sent.map((r) => [r.email, r.status]),
    [
      [served, 429],
      [other, 200],
    ],
  );
  assert.equal(sent[1].headers.authorization, `Bearer ${mock.tokens(other).access}`);
  assert.match(sent[1].headers["anthropic-beta"], /oauth-2025-04-20/);
  assert.equal(sent[1].headers["x-api-key"], undefined);
  assert.deepEqual(sleeps, [], "the host never retried: the pool answered");
  await flushPool(path);
  assert.equal(readPool(path).anthropic.find((a) => a.email === served).status, "rate-limited");

  mock.revoke(other); // revoked early: the refresh token still works
  const before = mock.stats().refreshCalls;
  mock.clearRequests();
  const again = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(again.status, 200);
  assert.equal(textOf(await again.text()), `Hello from ${other}`);
  assert.equal(mock.stats().refreshCalls, before + 1);
  assert.deepEqual(
    mock.requests.filter((r) => r.path.startsWith("/v1/messages")).map((r) => r.status),
    [401, 200],
  );
  await handle.unload();
});

test("OpenCode 2's session and project headers place the request and do not go upstream; its client name does", async () => {
  const { host, handle } = await started();
  await login(host, "hdr1@x.test");
  await login(host, "hdr2@x.test");
  mock.clearRequests();
  const res = await host.modelRequest({
    providerID: "anthropic-pool",
    modelID: "claude-sonnet-4-5",
    body,
    sessionID: "ses_hdr_child",
    parentID: "ses_hdr_parent",
    projectID: "prj_hdr",
  });
  await res.text();
  const [sent] = mock.requests.filter((r) => r.path.startsWith("/v1/messages"));
  const names = Object.keys(sent.headers).map((k) => k.toLowerCase());
  for (const name of [
    "x-opencode-session-id",
    "x-opencode-parent-session-id",
    "x-session-affinity",
    "x-session-id",
    "x-parent-session-id",
    "x-opencode-project",
    "x-opencode-session",
  ])
    assert.ok(!names.includes(name), `${name} went upstream`);
  assert.ok(!JSON.stringify(sent.headers).includes("ses_hdr") && !JSON.stringify(sent.headers).includes("prj_hdr"));
  assert.equal(sent.headers["x-opencode-client"], "opencode");
  assert.match(sent.headers["user-agent"], /^opencode\//);
  // The session's pin still holds: the same session goes to the same account.
  const again = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body, sessionID: "ses_hdr_child" });
  await again.text();
  const emails = mock.requests.filter((r) => r.path.startsWith("/v1/messages")).map((r) => r.email);
  assert.equal(new Set(emails).size, 1, String(emails));
  await handle.unload();
});

test("usage of answers the host reads through the hooks is counted per account and model", async () => {
  const { host, handle, path } = await started();
  await login(host, "usage2@x.test");
  mock.script("usage2@x.test", [{ sse: true, usage: { input_tokens: 21, output_tokens: 8, cache_read_input_tokens: 3, cache_creation_input_tokens: 2 } }]);
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(textOf(await res.text()), "Hello from usage2@x.test", "the tap changes no byte");
  await flushPool(path);
  const { poolStatus } = await import("../index.mjs");
  const usage = (await poolStatus(path)).accounts[0].usage.today.byModel["claude-sonnet-4-5"];
  assert.deepEqual(usage, { requests: 1, input: 21, output: 8, cacheRead: 3, cacheWrite: 2 });
  await handle.unload();
});

test("a 429 whose body breaks off or goes silent is judged by its head: the account rests and the request moves on", async () => {
  // The host's fetch carries the bytes: a 429 cut mid-body failed the judging ("could not finish
  // this request") and the host got the broken 429; one gone silent held the request until the
  // host's own timeout. Either way the account was left to be asked again.
  for (const [name, cut] of [
    ["cut", { resetAfterBytes: 10 }],
    ["silent", { thenHang: true }],
  ]) {
    const { host, handle, path } = await started();
    const emails = [`${name}1@x.test`, `${name}2@x.test`];
    for (const email of emails) await login(host, email);
    const first = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    const served = textOf(await first.text()).replace("Hello from ", "");
    const other = emails.find((e) => e !== served);
    const head = { ...rateLimitHeaders({ retryAfter: 600 }), "content-type": "application/json" };
    mock.script(served, [{ status: 429, headers: head, raw: ['{"type":"error","error":'], ...cut }]);
    mock.clearRequests();
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(res.status, 200, name);
    assert.equal(textOf(await res.text()), `Hello from ${other}`);
    assert.deepEqual(
      mock.requests.filter((r) => r.path.startsWith("/v1/messages")).map((r) => r.email),
      [served, other],
    );
    await flushPool(path);
    assert.equal(readPool(path).anthropic.find((a) => a.email === served).status, "rate-limited", name);
    await handle.unload();
  }
});

test("every account cooling: one pool 429 with retry-after, nothing upstream, and the host waits exactly that long", async () => {
  const { host, handle, sleeps } = await started();
  await login(host, "c1@x.test");
  await login(host, "c2@x.test");
  const soon = Math.floor(Date.now() / 1000) + 120;
  mock.script("c1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  mock.script("c2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  mock.clearRequests();
  // The host retries after the pool's retry-after; the harness's sleep returns at once, and by
  // then nothing has reset, so each retry gets the pool's 429 again until the host gives up.
  const failure = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
    () => null,
    (e) => e,
  );
  assert.ok(failure instanceof ModelRequestError, String(failure));
  assert.equal(failure.error.status, 429);
  assert.match(failure.error.message, /every account is rate-limited/);
  assert.equal(mock.requests.filter((r) => r.path.startsWith("/v1/messages")).length, 2, "each account tried once, then nothing upstream");
  assert.equal(mock.stats().unauthenticated, 0);
  assert.ok(sleeps.length > 0);
  // The pool's retry-after: the soonest reset plus this process's share of the reopening spread.
  for (const ms of sleeps) assert.ok(ms > 110_000 && ms <= 131_000, `the host waited ${ms} ms, not the pool's retry-after`);

  // Past the host's 15-minute cap there is no point waiting inside a session: the error is final.
  const later = await started({ path: undefined });
  await login(later.host, "c3@x.test");
  mock.script("c3@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 7999, fiveHourReset: Math.floor(Date.now() / 1000) + 7999 }) }]);
  const final = await later.host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
    () => null,
    (e) => e,
  );
  assert.equal(final?.error?.status, 429);
  assert.deepEqual(later.sleeps, []);
  await later.handle.unload();
  await handle.unload();
});

test("every account cooling for a second: the host waits the pool's retry-after, not its own longer backoff, and is served", async () => {
  // 2.x's backoff starts at 2 s and takes retry-after only as a floor: a pool 429 saying 1 s
  // would be waited 2 s (and 4, 8 s as it goes on) without the retry hook.
  const path = tempPoolPath();
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms) || (await new Promise((r) => setTimeout(r, ms))), random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  await login(host, "brief@x.test");
  mock.script("brief@x.test", [{ status: 429, headers: { "retry-after": "1" } }]);
  try {
    await withEnv({ OAUTH_POOL_JITTER_MS: "0" }, async () => {
      const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
      assert.equal(res.status, 200);
      assert.equal(textOf(await res.text()), "Hello from brief@x.test");
    });
    assert.ok(sleeps.length >= 1 && sleeps.every((ms) => ms <= 1000), `the host waited ${sleeps.join(", ")} ms for a 1 s retry-after`);
  } finally {
    await handle.unload();
    await lib.resetCooldowns(path);
  }
});

test("the model-accounts-pool tool (JSON Schema input) and command run the pool's actions", async () => {
  const { host, handle } = await started({ toolName: "pool-accounts" });
  await login(host, "t1@x.test");
  const tool = host.tools().find((t) => t.name === "pool-accounts");
  assert.ok(tool, JSON.stringify(host.log.filter((e) => e.type === "tool.rejected")));
  assert.equal(tool.input.type, "object");
  // A direct tool, not one reached through CodeMode's execute (which the harness does not emulate).
  assert.equal(tool.options?.codemode, false);
  const listed = await host.runTool("pool-accounts", { action: "list" });
  assert.match(listed.content[0].text, /t1@x\.test/);
  await host.runCommand("pool-accounts", { text: "status" });
  const shown = host.log.find((e) => e.type === "session.synthetic");
  assert.match(shown.input.text, /Anthropic pool/);
  // The person who typed the command sees its output (a synthetic message without a
  // description is hidden from the transcript).
  assert.equal(shown.shown, true, JSON.stringify(shown.input));
  assert.equal(shown.input.description, shown.input.text);
  await handle.unload();
});

test("2.x: the tool and the command say how to log in as OpenCode 2 does (its connect flow, or the CLI), never 1.18's `opencode auth login`", async () => {
  const { host, handle, path } = await started();
  const text = async (action) => (await host.runTool("model-accounts-pool", { action })).content[0].text;
  const empty = await text("list");
  assert.match(
    empty,
    /no accounts yet\. Add one: `\/connect` -> Anthropic Pool -> "Claude Pro\/Max \(add account to pool\)".* In a terminal: `oauth-pool add`\.$/,
  );
  // An account whose login was refused (its tokens kept), and a Console key refused.
  // Marked as the pool marks a refusal it saw (the credential's fingerprint): one another
  // program marked is tried again, and says so.
  const gone = oauthEntry(mock, "gone@x.test");
  const tag = createHash("sha256").update(gone.refresh).digest("hex").slice(0, 8);
  const pool = { version: 1, anthropic: [{ ...gone, status: "auth-error", authErrorToken: tag }] };
  await lib.savePool(pool, path);
  await lib.addApiKey("k-refused-0123456789", { email: "team-key", path });
  const saved = readPool(path);
  saved.anthropic.find((a) => a.email === "team-key").status = "auth-error";
  await lib.savePool(saved, path);
  const listed = await text("list");
  const status = await text("status");
  await host.runCommand("model-accounts-pool", { text: "list" });
  const typed = host.log.filter((e) => e.type === "session.synthetic").at(-1).input.text;
  for (const out of [listed, status, typed]) {
    assert.match(out, /gone@x\.test.*needs a new login: log in again with `\/connect` -> Anthropic Pool -> Claude Pro\/Max, or `oauth-pool add`/);
    assert.match(out, /team-key.*`\/connect` -> Anthropic Pool -> Console API key/);
    assert.doesNotMatch(out, /opencode auth login/);
  }
  await handle.unload();
});

test("2.x: the command's priority is read as the CLI reads it: `0x10` or `1e1` typed is refused, not set as 16 or 10", async () => {
  const { host, handle, path } = await started();
  await lib.addApiKey("fake-console-key-prio-0123456789abcdef", { email: "prio@x.test", path });
  const said = async (text) => {
    await host.runCommand("model-accounts-pool", { text });
    return host.log.filter((e) => e.type === "session.synthetic").at(-1).input.text;
  };
  for (const typed of ["0x10", "1e1", "0b11", "2.5"]) {
    assert.match(await said(`priority prio@x.test ${typed}`), /needs `priority`: a whole number/, typed);
    assert.equal((await lib.listAccounts(path))[0].priority, 0, typed);
  }
  assert.match(await said("priority prio@x.test -4"), /Priority of prio@x\.test is now -4/);
  assert.equal((await lib.listAccounts(path))[0].priority, -4);
  await handle.unload();
});

test("2.x: the tool (called by the model, which cannot ask the person) never deletes a login; the command the person types does", async () => {
  const { host, handle, path } = await started();
  await login(host, "keep@x.test");
  await login(host, "gone@x.test");
  await flushPool(path);
  const refresh = readPool(path).anthropic.find((a) => a.email === "keep@x.test").refresh;
  const tool = host.tools().find((t) => t.name === "model-accounts-pool");
  assert.match(tool.description, /Call remove only when the person asked for it in their own words/);
  const out = await host.runTool("model-accounts-pool", { action: "remove", email: "keep@x.test" });
  assert.match(out.content[0].text, /^keep@x\.test was not removed.*\n.*disabled instead.*\n.*oauth-pool remove keep@x\.test$/);
  await flushPool(path);
  const kept = readPool(path).anthropic.find((a) => a.email === "keep@x.test");
  assert.equal(kept?.refresh, refresh, "the login is kept");
  assert.equal((await listAccounts(path)).find((a) => a.email === "keep@x.test").status, "disabled");
  await host.runCommand("model-accounts-pool", { text: "remove gone@x.test" });
  assert.match(host.log.findLast((e) => e.type === "session.synthetic").input.text, /^Removed gone@x\.test from the Anthropic pool; its login is deleted/);
  assert.deepEqual(
    (await listAccounts(path)).map((a) => a.email),
    ["keep@x.test"],
  );
  await handle.unload();
});

test("a request aimed anywhere but the pool's API origin gets no pool credential", async () => {
  const ex = openExchange({ url: "https://evil.example/v1/messages", headers: [["content-type", "application/json"]] });
  await assert.rejects(settle(ex.next()), (e) => e.code === "INSECURE_ENDPOINT");
});

test("a resend that fails gives the host the pool's 503, which it asks again in seconds (not the 429's 10 minutes); no listener stays on the host's signal; a model id of another type is no model", async () => {
  const { host, handle, path, sleeps } = await started();
  await login(host, "keep1@x.test");
  await login(host, "keep2@x.test");
  const { controller, listeners: ours } = countedSignal(poolListener);
  // The first answer is a 429; the resend on the other account loses its connection before any
  // answer. Handed the 429 it had acted on, the host waited its `retry-after` (10 minutes, up to
  // 15) while the other account was free.
  mock.scriptAll([
    { status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) },
    { sse: false, resetAfterBytes: 0 },
  ]);
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body, signal: controller.signal });
  assert.equal(res.status, 200);
  assert.match(textOf(await res.text()), /^Hello from keep[12]@x\.test$/);
  assert.equal(sleeps.length, 1, "the host asked once more");
  assert.ok(sleeps[0] < 60_000, `the host's wait: ${sleeps[0]} ms`);
  for (let i = 0; i < 3; i++) {
    const ok = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body, signal: controller.signal });
    await ok.text();
  }
  assert.equal(ours.size, 0, "every request's abort listener removed");
  // A host's model id that is not a string is no model (it threw napi's StringExpected).
  const ex = openExchange({ path, url: `${mock.url}/v1/messages`, headers: [], model: 42 });
  assert.equal(ex.modelUnknown, true);
  ex.abort();
  await handle.unload();
});

test("a resend after a 401's refresh that fails gives the host the pool's 503, not the 401 that ended the session as a bad credential", async () => {
  const { host, handle, sleeps } = await started();
  await login(host, "resend1@x.test");
  const before = mock.stats().refreshCalls;
  // Its access token revoked (its refresh works): the 401 is refreshed and the request resent on
  // the same account, and that resend loses its connection before any answer.
  mock.revoke("resend1@x.test");
  mock.script("resend1@x.test", [{ sse: false, resetAfterBytes: 0 }]);
  mock.clearRequests();
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(res.status, 200);
  assert.equal(textOf(await res.text()), "Hello from resend1@x.test");
  assert.equal(mock.stats().refreshCalls, before + 1, "refreshed once");
  assert.equal(sleeps.length, 1, "the host asked once more");
  assert.ok(sleeps[0] < 60_000, `the host's wait: ${sleeps[0]} ms`);
  await handle.unload();
});

test("a provider named in the host's config stays listed with every model before any host login; an explicit disabled is kept", async () => {
  const path = await seedPool(mock, ["cfg1@x.test"]);
  // The host's config plugin runs before ours: a config entry for anthropic-pool goes through
  // the provider editor's update(), which starts from Provider.Info.empty(id)
  // (packages/core/src/config/plugin/provider.ts, packages/core/src/provider.ts `entry`).
  const configured = (edit) => configPlugin((e) => e.update("anthropic-pool", edit));
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await host.start(
    configured((p) => {
      p.headers = { "x-from-config": "1" };
    }),
  );
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const provider = host.providers().find((p) => p.id === "anthropic-pool");
  assert.ok(provider, "listed although no host login exists (the account came from the CLI)");
  assert.equal(provider.activation, "enabled");
  assert.equal(provider.name, "Anthropic Pool");
  assert.equal(provider.headers["x-from-config"], "1", "the config's setting kept");
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(textOf(await res.text()), "Hello from cfg1@x.test");
  await handle.unload();

  const off = createHost({ sleep: async () => {}, random: () => 0.5 });
  await off.start(
    configured((p) => {
      p.activation = "disabled";
    }),
  );
  const second = await off.start(loadPlugin(pluginModule, { options: { path } }));
  assert.equal(off.provider("anthropic-pool").provider.activation, "disabled");
  assert.ok(!off.providers().some((p) => p.id === "anthropic-pool"));
  await second.unload();
});

test("a config override of one anthropic-pool model is merged over the mirrored model, field by field", async () => {
  const path = await seedPool(mock, ["cfgm1@x.test"]);
  // The host's config plugin runs first: each configured model goes through the provider
  // editor's models.update(), which starts an unknown model from Model.Info.default
  // (packages/core/src/provider.ts, packages/schema/src/model.ts); only the configured fields
  // differ from that default.
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await host.start(
    configPlugin((e) => {
      e.models.update("anthropic-pool", "claude-sonnet-4-5", (m) => {
        m.limit = { ...m.limit, output: 1000 };
      });
      e.models.update("anthropic-pool", "claude-haiku-4-5", (m) => {
        m.name = "My Haiku";
        m.headers = { "x-from-config": "1" };
      });
      e.models.update("anthropic-pool", "claude-opus-4-1", (m) => {
        m.enabled = false;
      });
      e.models.update("anthropic-pool", "claude-own-9", (m) => {
        m.name = "Own model";
      });
    }),
  );
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const mirrored = host.provider("anthropic").models;
  const models = host.provider("anthropic-pool").models;
  const sonnet = models.get("claude-sonnet-4-5");
  assert.equal(sonnet.limit.output, 1000, "the configured field wins");
  assert.equal(sonnet.name, mirrored.get("claude-sonnet-4-5").name, "the mirrored name stays");
  assert.deepEqual(sonnet.capabilities, mirrored.get("claude-sonnet-4-5").capabilities, "the mirrored capabilities stay");
  assert.equal(sonnet.family, "claude");
  assert.ok(sonnet.cost.length > 0 && sonnet.cost.every((c) => c.input === 0 && c.output === 0), "mirrored costs, zeroed");
  const haiku = models.get("claude-haiku-4-5");
  assert.equal(haiku.name, "My Haiku");
  assert.equal(haiku.headers["x-from-config"], "1");
  assert.equal(haiku.limit.output, mirrored.get("claude-haiku-4-5").limit.output);
  assert.equal(models.get("claude-opus-4-1").enabled, false, "a model the config disables stays disabled");
  assert.equal(models.get("claude-opus-4-1").name, mirrored.get("claude-opus-4-1").name);
  assert.equal(models.get("claude-own-9").name, "Own model", "a model only the config names is kept as it made it");
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(textOf(await res.text()), "Hello from cfgm1@x.test");
  await handle.unload();
});

test("a host refusing one part keeps the others and says so; refusing the request hooks offers no provider", async () => {
  const path = await seedPool(mock, ["refuse1@x.test"]);
  const refusing = (patch) => {
    const loaded = loadPlugin(pluginModule, { options: { path } });
    return { ...loaded, plugin: { id: loaded.id, setup: (ctx) => loaded.plugin.setup(patch(ctx)) } };
  };
  await withLogLines(async (lines) => {
    const host = createHost({ sleep: async () => {}, random: () => 0.5 });
    const handle = await host.start(
      refusing((ctx) => {
        ctx.tool.transform = async () => {
          throw new Error("tool registration denied by policy");
        };
        return ctx;
      }),
    );
    assert.ok(host.providers().some((p) => p.id === "anthropic-pool"));
    assert.deepEqual(
      host
        .hooks()
        .map((h) => h.name)
        .sort(),
      ["http.request", "http.response", "retry"],
    );
    assert.ok(host.commands().length === 1, "the command after the refused tool is registered");
    assert.ok(
      lines.some((l) => /warn: this OpenCode refused tool\.transform .*denied by policy/.test(l)),
      lines.join("\n"),
    );
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(res.status, 200);
    await res.text();
    await handle.unload();
  });

  await withLogLines(async (lines) => {
    const host = createHost({ sleep: async () => {}, random: () => 0.5 });
    const handle = await host.start(
      refusing((ctx) => {
        const hook = ctx.session.hook;
        ctx.session.hook = async (name, ...rest) => {
          if (name === "retry") throw new Error("this host has no retry hook");
          return hook(name, ...rest);
        };
        return ctx;
      }),
    );
    assert.deepEqual(host.hooks(), [], "no half-registered hooks (an answer left unjudged)");
    assert.ok(!host.providers().some((p) => p.id === "anthropic-pool"), "no provider whose requests would go out without our credential");
    assert.ok(
      lines.some((l) => /warn: the anthropic-pool provider is not served/.test(l)),
      lines.join("\n"),
    );
    await handle.unload();
  });
});

test("a request the pool cannot place is answered at once with the reason, never sent with the host's (or the user's own) credential", async () => {
  // provider: "anthropic" serves the host's own provider, whose requests carry the user's own
  // key (here ANTHROPIC_API_KEY, resolved by the host): with no pool account it must not go out.
  const userKey = ["user", "own", "console", "key", "0123456789"].join("-");
  const path = tempPoolPath();
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5, env: { ANTHROPIC_API_KEY: userKey } });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path, provider: "anthropic" } }));
  await handle.context.provider.transform((e) =>
    e.update("anthropic", (p) => {
      p.settings = { baseURL: `${mock.url}/v1` };
    }),
  );
  mock.clearRequests();
  const failure = await withLogLines(() =>
    host.modelRequest({ providerID: "anthropic", modelID: "claude-sonnet-4-5", body }).then(
      () => null,
      (e) => e,
    ),
  );
  assert.ok(failure instanceof ModelRequestError, String(failure));
  assert.match(failure.error.message, /has no accounts/);
  assert.equal(mock.requests.length, 0, "nothing went upstream");
  const sends = host.log.filter((e) => e.type === "http.send");
  assert.ok(sends.length > 0 && sends.every((e) => e.url.startsWith("data:")), "answered locally");
  assert.ok(!JSON.stringify(sends).includes(userKey), "the user's own key was sent nowhere");
  assert.deepEqual(sleeps, [], "no host retries of a pool with no account");
  await handle.unload();

  // anthropic-pool with an empty pool: the host sends no credential; nothing goes out either.
  const pool = await started();
  mock.clearRequests();
  const empty = await withLogLines(() =>
    pool.host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
      () => null,
      (e) => e,
    ),
  );
  assert.match(empty?.error?.message ?? "", /anthropic-pool has no accounts/);
  assert.equal(mock.requests.length, 0);
  await pool.handle.unload();
});

test("a fleet store out of reach, on a host without its key, is answered as out of reach (which may pass), not as a key to copy; a store without its key is one the host does not retry", async () => {
  // The store is asked before its key: a store that was down was STORE_KEY ("copy the key
  // file") to a host without the key, which the contract's STORE_UNAVAILABLE names.
  const home = tempPoolPath().replace(/[^/]+$/, "");
  await withEnv({ HOME: home, OAUTH_POOL_STORE: "postgres://pool@127.0.0.1:9/pool", OAUTH_POOL_STORE_KEY: undefined, OAUTH_POOL_PATH: undefined }, async () => {
    const host = createHost({ sleep: async () => {}, random: () => 0.5 });
    const handle = await host.start(loadPlugin(pluginModule));
    mock.clearRequests();
    const failure = await withLogLines(() =>
      host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
        () => null,
        (e) => e,
      ),
    );
    assert.ok(failure instanceof ModelRequestError, String(failure));
    assert.match(failure.error.message, /store cannot be reached/);
    assert.doesNotMatch(failure.error.message, /no store key/);
    assert.equal(mock.requests.length, 0);
    await handle.unload();
  });
  // STORE_KEY was answered without `x-should-retry: false`: OpenCode retried a store no retry
  // can open (src/error.rs lists what asking again cannot mend).
  const { nativeBinding } = await import("../lib/native.mjs");
  assert.ok(nativeBinding().unretriableCodes().includes("STORE_KEY"));
});

test("a request placed before a reload is finished by the plugin set up again: the pool's 429, not the local stand-in", async () => {
  const path = await seedPool(mock, ["reload1@x.test"]);
  mock.script("reload1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: Math.floor(Date.now() / 1000) + 120 }) }]);
  let reloaded = false;
  // The host reloads the plugin (a config change) while a request is out: the old setup's hooks
  // are disposed before the answer comes.
  const { host, unload } = await reloadingHost(
    pluginModule,
    { path },
    {
      afterFetch: async (url, reload) => {
        if (reloaded || !String(url).startsWith("data:")) return;
        reloaded = true;
        await reload();
      },
    },
  );
  const failure = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
    (res) => res,
    (e) => e,
  );
  assert.ok(reloaded);
  assert.equal(failure?.error?.status, 429, `the host got ${failure?.status ?? failure?.message}`);
  await unload();
});

test("two copies of the plugin in one host: each request is placed and judged once", async () => {
  const path = await seedPool(mock, ["two1@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await withLogLines(async (lines) => {
    const first = await host.start(loadPlugin(pluginModule, { options: { path } }));
    const second = await host.start(loadPlugin(pluginModule, { options: { path } }));
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await res.text()), "Hello from two1@x.test");
    mock.script("two1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: Math.floor(Date.now() / 1000) + 120 }) }]);
    const cooling = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
      () => null,
      (e) => e,
    );
    assert.equal(cooling?.error?.status, 429);
    assert.match(cooling.error.message, /every account is rate-limited/);
    assert.deepEqual(
      lines.filter((l) => /error:/.test(l)),
      [],
      "the second copy did not refuse the first one's placement",
    );
    await first.unload();
    await second.unload();
  });
});

test("two copies naming one pool two ways (the default, through OAUTH_POOL_PATH, and its path spelled otherwise) are one pool: no split said", async () => {
  const path = await seedPool(mock, ["onepool@x.test"]);
  const spelled = `${dirname(path)}/./${basename(path)}`;
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await withEnv({ OAUTH_POOL_PATH: path }, () =>
    withLogLines(async (lines) => {
      const first = await host.start(loadPlugin(pluginModule, { options: {} }));
      const second = await host.start(loadPlugin(pluginModule, { options: { path: spelled } }));
      const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
      assert.equal(textOf(await res.text()), "Hello from onepool@x.test");
      assert.deepEqual(
        lines.filter((l) => /two pools/.test(l)),
        [],
        "one pool, named two ways",
      );
      await first.unload();
      await second.unload();
    }),
  );
});

test("two copies naming two pools (a global and a project config): the one set up last serves requests, logins and the tool, and the split is said", async () => {
  const globalPool = await seedPool(mock, ["global@x.test"]);
  const projectPool = await seedPool(mock, ["project@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await withLogLines(async (lines) => {
    const first = await host.start(loadPlugin(pluginModule, { options: { path: globalPool } }));
    const second = await host.start(loadPlugin(pluginModule, { options: { path: projectPool } }));
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await res.text()), "Hello from project@x.test", "the pool the tool and logins use");
    await login(host, "new2@x.test");
    assert.deepEqual(
      readPool(projectPool).anthropic.map((a) => a.email),
      ["project@x.test", "new2@x.test"],
    );
    const list = await host.runTool("model-accounts-pool", { action: "list" });
    assert.match(list.content[0].text, /project@x\.test/);
    await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then((r) => r.text());
    const warned = lines.filter((l) => /two copies of this plugin serve anthropic-pool, from two pools/.test(l));
    assert.equal(warned.length, 1, `said once: ${lines.join("\n")}`);
    assert.ok(warned[0].includes(globalPool) && warned[0].includes(projectPool), warned[0]);
    // The later copy unloaded (a project closed): the first one serves again.
    await second.unload();
    const back = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await back.text()), "Hello from global@x.test");
    await first.unload();
  });
});

test('provider: "anthropic" with no host login of its own: the provider and its models are listed, at zero cost, and served from the pool at its API origin', async () => {
  const path = await seedPool(mock, ["own1@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const priced = [...host.provider("anthropic").models.values()].filter((m) => m.cost.some((c) => c.input > 0));
  assert.ok(priced.length > 0, "the host's own models have prices");
  // No baseURL of the user's: the pool's (OAUTH_POOL_API_URL, the mock here), as 1.18's config
  // hook sets it. Left at the host's default origin, every request was refused as off the pool's.
  const handle = await host.start(loadPlugin(pluginModule, { options: { path, provider: "anthropic" } }));
  assert.deepEqual(
    host.providers().map((p) => p.id),
    ["anthropic"],
  );
  assert.equal(host.provider("anthropic").provider.settings.baseURL, `${mock.url}/v1`);
  assert.ok(host.models("anthropic").length > 0, "its models listed");
  for (const m of host.models("anthropic")) for (const c of m.cost) assert.equal(c.input + c.output, 0, `${m.id}: a subscription is not billed per token`);
  const res = await host.modelRequest({ providerID: "anthropic", modelID: "claude-sonnet-4-5", body });
  assert.equal(textOf(await res.text()), "Hello from own1@x.test");
  await handle.unload();
});

test('provider: "anthropic" with API keys alone keeps the prices, and a baseURL of the user\'s own wins', async () => {
  const path = tempPoolPath();
  const key = "fake-console-key-v2anth-0123456789";
  mock.addApiKey(key, "anthkey@x.test");
  await lib.addApiKey(key, { email: "anthkey@x.test", path });
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const prices = new Map([...host.provider("anthropic").models.values()].map((m) => [m.id, m.cost]));
  const own = `${mock.url}/v1/`;
  await host.start(
    configPlugin((e) =>
      e.update("anthropic", (p) => {
        p.settings = { baseURL: own, timeout: 1000 };
      }),
    ),
  );
  const handle = await host.start(loadPlugin(pluginModule, { options: { path, provider: "anthropic" } }));
  assert.deepEqual(host.provider("anthropic").provider.settings, { baseURL: own, timeout: 1000 });
  for (const m of host.models("anthropic")) assert.deepEqual(m.cost, prices.get(m.id), `${m.id}: an API key is billed per token`);
  const res = await host.modelRequest({ providerID: "anthropic", modelID: "claude-sonnet-4-5", body });
  assert.equal(res.status, 200);
  await res.text();
  await handle.unload();
});

test("2.x: every login revoked: the host reads the pool's coded refusal naming them and how to log in, not a bare 401 whose body is gone", async () => {
  for (const n of [1, 2, 3]) {
    const emails = Array.from({ length: n }, (_, i) => `gone${n}-${i}@x.test`);
    const path = await seedPool(mock, emails);
    for (const email of emails) mock.revoke(email, { family: true });
    const host = createHost({ sleep: async () => {}, random: () => 0.5 });
    const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
    // A plugin after ours, reading the answer the host is about to read.
    const seen = [];
    await host.start({
      id: "inspect",
      kind: "setup",
      plugin: {
        id: "inspect",
        setup: (ctx) =>
          ctx.session.hook(
            "http.response",
            async (ev) => {
              seen.push({ status: ev.response.status, code: ev.response.headers.get("x-oauth-pool-error"), text: await ev.response.clone().text() });
            },
            { providerID: "anthropic-pool" },
          ),
      },
    });
    await withLogLines(async () => {
      const failed = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
        () => assert.fail("served"),
        (err) => err,
      );
      assert.ok(failed instanceof ModelRequestError, String(failed));
      assert.equal(failed.error.status, 503, `${n} accounts: ${JSON.stringify(failed.error)}`);
    });
    assert.equal(seen.length, 1, "the host made no retry of it");
    assert.equal(seen[0].code, "POOL_NO_ACCOUNT");
    const { error } = JSON.parse(seen[0].text);
    for (const email of emails) assert.match(error.message, new RegExp(`${email.replace(/[.]/g, "\\.")} \\(auth-error\\)`));
    assert.match(error.message, /need a new login .*`\/connect` on 2\.x/);
    await handle.unload();
  }
});

test("2.x: an answer echoing the presented token reaches the host without it, in its head and its body", async () => {
  const { host, handle, path } = await started({ path: await seedPool(mock, ["mirror2@x.test"]) });
  const token = readPool(path).anthropic[0].access;
  mock.script("mirror2@x.test", [
    {
      status: 400,
      body: { type: "error", error: { type: "invalid_request_error", message: `bad header: Bearer ${token}` } },
      headers: { "x-echo": token },
      chunkSize: 7,
    },
  ]);
  const failure = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
    () => null,
    (e) => e,
  );
  assert.ok(failure, "the 400 fails the request");
  // What the host read back (its own record of what it sent holds the token, as sent).
  const seen = JSON.stringify(host.log.filter((e) => e.type !== "http.send")) + String(failure.error?.message) + String(failure.message);
  assert.ok(!seen.includes(token), seen.slice(0, 2000));
  assert.match(String(failure.error?.message ?? failure.message), /\[redacted\]/);
  await handle.unload();
});

test("on a host that gives hooks no signal, the request's own signal ends what the pool holds for it", async () => {
  const path = await seedPool(mock, ["nosig3@x.test"]);
  const old = process.env.OAUTH_POOL_HOLD_MAX_MS;
  try {
    // The only account cools for 20 s, then holding is turned on: the pool would wait for it
    // inside http.request (a wait under HOST_HOLD_MS). The hook gets no signal; the Request it
    // is handed carries the caller's.
    mock.script("nosig3@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 20, fiveHourReset: Math.floor(Date.now() / 1000) + 20 }) }]);
    const host = createHost({ sleep: async () => {}, random: () => 0.5, hookSignal: false, requestSignal: true });
    const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
    await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).catch(() => {});
    process.env.OAUTH_POOL_HOLD_MAX_MS = "120000";
    const controller = new AbortController();
    const pending = host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body, signal: controller.signal });
    setTimeout(() => controller.abort(), 200);
    let timer;
    const outcome = await Promise.race([
      pending.then(
        () => "answered",
        // The host reads the pool's abort as its fetch's (Node) or as the pool's own answer,
        // a refusal that names the abort (Bun's fetch answers a data: URL despite the signal).
        (e) => (e?.name === "AbortError" || /abort/i.test(e?.error?.message ?? "") ? "AbortError" : String(e?.error?.message ?? e)),
      ),
      new Promise((r) => {
        timer = setTimeout(() => r("still held"), 30_000);
      }),
    ]);
    clearTimeout(timer);
    assert.equal(outcome, "AbortError", "the caller's abort ended the pool's hold");
    await handle.unload();
  } finally {
    if (old === undefined) delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    else process.env.OAUTH_POOL_HOLD_MAX_MS = old;
    await lib.resetCooldowns(path);
  }
});

test("on a host that gives hooks no signal (fromPromise), failover and the pool's 429 work the same", async () => {
  const path = await seedPool(mock, ["nosig1@x.test", "nosig2@x.test"]);
  const sleeps = [];
  const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5, hookSignal: false });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const soon = Math.floor(Date.now() / 1000) + 120;
  mock.script("nosig1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  mock.script("nosig2@x.test", [{ status: 200 }, { status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: soon }) }]);
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(res.status, 200);
  await res.text();
  const failure = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
    () => null,
    (e) => e,
  );
  assert.equal(failure?.error?.status, 429);
  assert.ok(sleeps.length > 0 && sleeps.every((ms) => ms > 110_000 && ms <= 131_000), String(sleeps));
  await handle.unload();
});

test("a 429 cascade through many accounts is one failover line in OpenCode's log, and one for their rests, not a line per account", async () => {
  const emails = ["v2c1", "v2c2", "v2c3", "v2c4"].map((n) => `${n}@x.test`);
  const path = tempPoolPath();
  await lib.savePool({ version: 1, anthropic: emails.map((email, i) => oauthEntry(mock, email, { priority: 40 - i * 10 })) }, path);
  const refusal = { status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: Math.floor(Date.now() / 1000) + 3600 }) };
  for (const email of emails.slice(0, 3)) mock.script(email, [refusal]);
  try {
    await withLogLines(async (lines) => {
      const host = createHost({ sleep: async () => {}, random: () => 0.5 });
      const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
      const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
      assert.equal(res.status, 200);
      await res.text();
      await handle.unload();
      const about = lines.filter((l) => /v2c\d@x\.test/.test(l));
      assert.deepEqual(
        about.filter((l) => /turned this request away|moved to/.test(l)),
        [
          "[oauth-pool] info: 3 accounts turned this request away in turn, so it moved to v2c4@x.test: v2c1@x.test, v2c2@x.test and v2c3@x.test (5h window exhausted)",
        ],
        about.join("\n"),
      );
      assert.equal(about.length, 2, about.join("\n"));
      assert.match(about.find((l) => !/turned/.test(l)) ?? "", /^\[oauth-pool\] info: 3 accounts rest: v2c1@x\.test: 5h window exhausted until /);
    });
  } finally {
    await lib.resetCooldowns(path);
  }
});

test("a hold is said in OpenCode's log as it begins, not when the held request ends", async () => {
  const path = await seedPool(mock, ["v2hold@x.test"]);
  const pool = readPool(path);
  // Under HOST_HOLD_MS with the reopening spread: held inside the hook.
  Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: Date.now() + 30_000 });
  await lib.savePool(pool, path);
  const old = process.env.OAUTH_POOL_HOLD_MAX_MS;
  process.env.OAUTH_POOL_HOLD_MAX_MS = "300000";
  try {
    await withLogLines(async (lines) => {
      const host = createHost({ sleep: async () => {}, random: () => 0.5 });
      const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
      const pending = [1, 2, 3].map(() => host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }));
      const held = () => lines.filter((l) => /requests wait for the first one \(v2hold@x\.test\)/.test(l));
      for (let i = 0; i < 100 && held().length === 0; i++) await new Promise((r) => setTimeout(r, 100));
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(held().length, 1, `one line while three requests wait: ${lines.join("\n")}`);
      assert.match(held()[0], /warn: .*usable again in \d+ s \(at (\w{3} \d+ \w{3} )?\d\d:\d\d UTC\)/);
      await lib.resetCooldowns(path);
      await Promise.all(pending);
      await handle.unload();
    });
  } finally {
    await lib.resetCooldowns(path);
    if (old === undefined) delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    else process.env.OAUTH_POOL_HOLD_MAX_MS = old;
  }
});

test("holding a wait longer than OpenCode 2 lets a request go unanswered: the host waits it out between its retries, never cut by its header timeout", async () => {
  // 2.x runs the http hooks and the send under the route's header timeout (5 minutes by
  // default; 3 s here) and retries a timeout at most three times: a hold inside a hook past it
  // was cut, held again by each retry, and the session ended with "Timed out waiting for
  // response headers". A wait longer than the pool holds inside a hook (HOST_HOLD_MS) is the
  // host's: the pool's 429, and the retry hook has the host wait exactly that long, also past
  // its 15-minute cap when holding covers the wait.
  const old = process.env.OAUTH_POOL_HOLD_MAX_MS;
  process.env.OAUTH_POOL_HOLD_MAX_MS = String(60 * 60_000);
  const path = await seedPool(mock, ["longhold@x.test"]);
  try {
    for (const coolMs of [120_000, 40 * 60_000]) {
      const pool = readPool(path);
      Object.assign(pool.anthropic[0], { status: "rate-limited", rateLimitUntil: Date.now() + coolMs });
      await lib.savePool(pool, path);
      const sleeps = [];
      // The host's wait passes at once here: the cooldown is over when it asks again.
      const host = createHost({ random: () => 0.5, headerTimeoutMs: 3000, sleep: async (ms) => void sleeps.push(ms) || (await lib.resetCooldowns(path)) });
      const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
      await withLogLines(async (lines) => {
        const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
        assert.equal(res.status, 200);
        assert.equal(textOf(await res.text()), "Hello from longhold@x.test");
        assert.deepEqual(
          host.log.filter((e) => e.type === "http.header-timeout"),
          [],
          "no attempt outlived the host's header timeout",
        );
        assert.equal(sleeps.length, 1, `one wait, the host's: ${sleeps}`);
        assert.ok(sleeps[0] >= coolMs - 5000 && sleeps[0] <= coolMs + 15_000, `the host waited ${sleeps[0]} ms for a ${coolMs} ms cooldown`);
        const errors = host.log.filter((e) => e.type === "model.error").map((e) => e.error);
        assert.equal(errors.length, 1);
        assert.equal(errors[0].status, 429);
        assert.match(errors[0].message, /requests wait for the first one \(longhold@x\.test\), usable again in .*\(OAUTH_POOL_HOLD_MAX_MS\)/);
        assert.equal(lines.filter((l) => /requests wait for the first one \(longhold@x\.test\)/.test(l)).length, 1, lines.join("\n"));
      });
      await handle.unload();
    }
  } finally {
    if (old === undefined) delete process.env.OAUTH_POOL_HOLD_MAX_MS;
    else process.env.OAUTH_POOL_HOLD_MAX_MS = old;
    await lib.resetCooldowns(path);
  }
});

test("an account that needs a new login is marked needs_auth on its connection, also one the person labelled otherwise", async () => {
  const { host, handle, path } = await started();
  // Logged in under a label of the person's own (2.x /connect/oauth takes one; a connection
  // can be renamed later too), then another account under its email.
  const attempt = await host.oauthConnect({ integrationID: "anthropic-pool", methodID: "claude-max", label: "work account" });
  await host.oauthComplete({ integrationID: "anthropic-pool", attemptID: attempt.attemptID, code: mock.approve(attempt.url, "relabel1@x.test") });
  await login(host, "relabel2@x.test");
  assert.deepEqual(
    host
      .connections("anthropic-pool")
      .map((c) => c.label)
      .sort(),
    ["relabel2@x.test", "work account"],
  );
  // Both logins revoked at Anthropic: each answers 401 and its refresh is refused.
  mock.revoke("relabel1@x.test", { family: true });
  mock.revoke("relabel2@x.test", { family: true });
  await withLogLines(async () => {
    await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).catch(() => {});
    await flushPool(path);
    assert.deepEqual(
      readPool(path)
        .anthropic.map((a) => a.status)
        .sort(),
      ["auth-error", "auth-error"],
    );
    const marked = () => host.connections("anthropic-pool").filter((c) => c.status?.status === "needs_auth");
    for (let i = 0; i < 50 && marked().length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(
      marked()
        .map((c) => [c.label, c.status.message])
        .sort(),
      [
        ["relabel2@x.test", `relabel2@x.test needs a new login: ${HINTS.v2.login}`],
        ["work account", `relabel1@x.test needs a new login: ${HINTS.v2.login}`],
      ],
    );
  });
  await handle.unload();
});

test("a model the config names under an alias of its own is counted, and its model windows kept, under the API's model id", async () => {
  // 2.x hands the http hooks the catalog's model id; the request carries the API's (Model.Info
  // `modelID`, packages/core/src/model-resolver.ts "may differ from the catalog id").
  const path = await seedPool(mock, ["alias1@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await host.start(
    configPlugin((e) =>
      e.models.update("anthropic-pool", "fast", (m) => {
        m.modelID = "claude-haiku-4-5";
      }),
    ),
  );
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  mock.script("alias1@x.test", [{ sse: true, usage: { input_tokens: 5, output_tokens: 2 } }]);
  mock.clearRequests();
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "fast", body });
  assert.equal(textOf(await res.text()), "Hello from alias1@x.test");
  assert.equal(JSON.parse(mock.requests.find((r) => r.path.startsWith("/v1/messages"))?.body ?? "{}").model, "claude-haiku-4-5", "the API's id went upstream");
  await flushPool(path);
  const { poolStatus } = await import("../index.mjs");
  const byModel = (await poolStatus(path)).accounts[0].usage.today.byModel;
  assert.deepEqual(Object.keys(byModel), ["claude-haiku-4-5"]);
  assert.equal(byModel["claude-haiku-4-5"].input, 5);

  // An account whose haiku models cool (a 7d window of their own) is not asked for `fast`.
  const second = await seedPool(mock, ["alias2@x.test", "alias3@x.test"], { path: path.replace(/\.json$/, "-2.json") });
  const pool = readPool(second);
  pool.anthropic[0].modelCooldowns = { haiku: Date.now() + 3_600_000 };
  await lib.savePool(pool, second);
  await handle.unload();
  const again = await host.start(loadPlugin(pluginModule, { options: { path: second } }));
  mock.clearRequests();
  for (let i = 0; i < 3; i++) {
    const r = await host.modelRequest({ providerID: "anthropic-pool", modelID: "fast", body });
    assert.equal(textOf(await r.text()), "Hello from alias3@x.test");
  }
  assert.deepEqual(
    mock.requests.filter((r) => r.path.startsWith("/v1/messages")).map((r) => r.email),
    ["alias3@x.test", "alias3@x.test", "alias3@x.test"],
    "the account cooling for haiku was not asked",
  );
  await again.unload();

  // The same with `provider: "anthropic"` (the host's own provider, served as it is): the alias
  // was counted under its own name and sent to the account whose haiku window was spent.
  const own = await seedPool(mock, ["alias4@x.test", "alias5@x.test"], { path: path.replace(/\.json$/, "-3.json") });
  const cooling = readPool(own);
  cooling.anthropic[0].modelCooldowns = { haiku: Date.now() + 3_600_000 };
  await lib.savePool(cooling, own);
  const hostOwn = createHost({ sleep: async () => {}, random: () => 0.5 });
  await hostOwn.start(
    configPlugin((e) => {
      e.update("anthropic", (p) => {
        p.settings = { baseURL: `${mock.url}/v1` };
      });
      e.models.update("anthropic", "fast", (m) => {
        m.modelID = "claude-haiku-4-5";
      });
    }),
  );
  const served = await hostOwn.start(loadPlugin(pluginModule, { options: { path: own, provider: "anthropic" } }));
  // The host lists its own provider once a login of its own exists; the pool's credential goes
  // upstream, never this one.
  hostOwn.connectKey("anthropic", `sk-ant-api03-${"u".repeat(40)}`, { label: "mine" });
  mock.clearRequests();
  for (let i = 0; i < 2; i++) {
    const r = await hostOwn.modelRequest({ providerID: "anthropic", modelID: "fast", body });
    assert.equal(textOf(await r.text()), "Hello from alias5@x.test");
  }
  await flushPool(own);
  const counted = (await poolStatus(own)).accounts.map((a) => Object.keys(a.usage?.today?.byModel ?? {}));
  assert.deepEqual(counted, [[], ["claude-haiku-4-5"]]);
  await served.unload();
});

test("the retry on another account is sent as the host sends its own: without the runtime's idle timeout (Bun's 5 minutes)", async () => {
  // packages/ai/src/route/transport/http.ts gives its fetch `timeout: false`, so that only the
  // host's own deadlines (headerTimeout, chunkTimeout) bound an answer; Bun's fetch otherwise
  // cuts one silent for 5 minutes. The resend after a 429 is the runtime's fetch too.
  const inits = [];
  const original = globalThis.fetch;
  globalThis.fetch = (input, init) => {
    inits.push(init);
    return original(input, init);
  };
  try {
    const path = await seedPool(mock, ["idle1@x.test", "idle2@x.test"]);
    const host = createHost({ sleep: async () => {}, random: () => 0.5, fetch: original });
    const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
    mock.script("idle1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
    mock.script("idle2@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
    const first = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).catch((e) => e);
    assert.equal(first?.error?.status, 429, "both accounts refused: the pool's own 429");
    assert.equal(inits.length, 1, "one resend, on the second account");
    assert.equal(inits[0].timeout, false);
    await handle.unload();
    await lib.resetCooldowns(path);
  } finally {
    globalThis.fetch = original;
  }
});

test("2.x: the retry on another account follows no redirect: a 3xx to another origin reaches the host as it came, and no key goes there", async () => {
  // Found by a review: the resend is a Request the host built, which follows redirects unless
  // told; runtimes drop only `authorization` on the way, so the next account's `x-api-key` (and
  // the prompt) went to whatever origin a 3xx named.
  const reached = [];
  const elsewhere = createHttpServer((req, res) => {
    reached.push(req.headers["x-api-key"] ?? null);
    req.resume();
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  await new Promise((resolve) => elsewhere.listen(0, "127.0.0.1", resolve));
  const path = tempPoolPath();
  for (const name of ["away1", "away2"]) {
    const key = `fake-console-key-${name}-0123456789abcdef`;
    mock.addApiKey(key, `${name}@x.test`);
    await lib.addApiKey(key, { email: `${name}@x.test`, path });
  }
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    for (const status of [302, 307, 308]) {
      const location = `http://127.0.0.1:${elsewhere.address().port}/v1/messages?from=${status}`;
      // Whichever key goes first is refused; the resend, on the other, is told to go elsewhere.
      mock.scriptAll([
        { status: 429, headers: rateLimitHeaders({ retryAfter: 1 }) },
        { status, headers: { location }, body: "" },
      ]);
      const answer = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).catch((e) => e);
      const got = answer instanceof Response ? answer.status : answer?.error?.status;
      assert.equal(got, status, `${status}: ${answer?.message ?? ""}`);
      if (answer instanceof Response) await answer.text();
      assert.deepEqual(reached, [], `${status}: a key was sent to the other origin`);
      await lib.resetCooldowns(path);
    }
  } finally {
    await handle.unload();
    elsewhere.close();
    elsewhere.closeAllConnections?.();
  }
});

test("2.x: a plugin option of the wrong type is one error line and nothing set up; a value pasted there is not quoted", async () => {
  // README: "one of the wrong type logs `[oauth-pool] error: … the pool is not set up`". Each
  // class of wrong value: a path that is no string, a name with spaces, a provider's block (its
  // key with it) pasted as the provider's name, a fetch that is no function; options that are no
  // object (a pool path given as the options, a list), which set up the default pool.
  const secret = ["sk", "ant", "api03", "pasted", "0123456789abcdef"].join("-");
  for (const options of [
    { path: 5 },
    { toolName: "pool accounts" },
    { provider: { apiKey: secret } },
    { fetch: "https://proxy.example" },
    "~/work-pool.json",
    [{ path: "p.json" }],
  ]) {
    await withLogLines(async (lines) => {
      const host = createHost({ sleep: async () => {}, random: () => 0.5 });
      const handle = await host.start(loadPlugin(pluginModule, { options }));
      const said = JSON.stringify(options);
      const errors = lines.filter((l) => /^\[oauth-pool\] error: .*the pool is not set up$/.test(l));
      assert.equal(errors.length, 1, `${said}: ${lines.join("\n")}`);
      assert.ok(!lines.join("\n").includes(secret), "a key pasted into the options reached OpenCode's log");
      assert.deepEqual(host.hooks(), [], said);
      assert.ok(!host.providers().some((p) => p.id === "anthropic-pool"), said);
      assert.deepEqual([host.tools().length, host.commands().length], [0, 0], said);
      await handle.unload();
    });
  }
});

test("2.x: a pool of API keys alone keeps the models' prices and sends each request with its key, no Bearer", async () => {
  // README: models "at zero cost unless the pool holds only API keys"; the request hook gives
  // "Bearer plus the OAuth beta, or `x-api-key`".
  const path = tempPoolPath();
  const key = "fake-console-key-v2only-0123456789";
  mock.addApiKey(key, "keyonly@x.test");
  await lib.addApiKey(key, { email: "keyonly@x.test", path });
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const mirrored = host.provider("anthropic").models;
  for (const m of host.models("anthropic-pool")) assert.deepEqual(m.cost, mirrored.get(m.id).cost, `${m.id}: an API key is billed per token`);
  mock.clearRequests();
  const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
  assert.equal(res.status, 200);
  await res.text();
  const [sent] = mock.requests.filter((r) => r.path.startsWith("/v1/messages"));
  assert.equal(sent.headers["x-api-key"], key);
  assert.equal(sent.headers.authorization, undefined);
  await handle.unload();
});

test("2.x: a key added through the host gives the models their prices without a restart; a store that never answers does not hold setup", async () => {
  // The pool's kind was read once, in setup: a person who installed the plugin and then added
  // only Console API keys through /connect saw $0 for usage billed per token until a restart.
  const path = tempPoolPath();
  const { host, handle } = await started({ path });
  const mirrored = host.provider("anthropic").models;
  const sonnet = () => host.models("anthropic-pool").find((m) => m.id === "claude-sonnet-4-5").cost;
  assert.ok(
    sonnet().every((c) => c.input === 0),
    "an empty pool: subscription prices",
  );
  const key = "fake-console-key-v2later-0123456789";
  mock.addApiKey(key, "later@x.test");
  await host.login("anthropic-pool", "console-api-key", { answer: { key, label: "later@x.test" } });
  for (const deadline = Date.now() + 5000; sonnet()[0]?.input === 0 && Date.now() < deadline; ) await new Promise((r) => setTimeout(r, 20));
  assert.deepEqual(sonnet(), mirrored.get("claude-sonnet-4-5").cost, "the key's prices, folded again");
  await handle.unload();

  // A fleet store that takes the connection and says nothing: setup waited on it (10 s) only to
  // choose the prices shown; the provider is now listed at once, and requests say why they fail.
  const silent = createServer(() => {});
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  try {
    await withEnv(
      { OAUTH_POOL_STORE: `postgres://pool@127.0.0.1:${silent.address().port}/pool`, OAUTH_POOL_STORE_KEY: "00".repeat(32), OAUTH_POOL_PATH: undefined },
      async () => {
        const host = createHost({ sleep: async () => {}, random: () => 0.5 });
        const began = Date.now();
        const handle = await host.start(loadPlugin(pluginModule));
        assert.ok(Date.now() - began < 5000, `setup took ${Date.now() - began} ms`);
        assert.ok(host.providers().some((p) => p.id === "anthropic-pool"));
        await handle.unload();
      },
    );
  } finally {
    silent.close();
  }
});

test("2.x: the fetch option, which only 1.18 uses, is said to have no effect, and requests are served as without it", async () => {
  const path = await seedPool(mock, ["opt@x.test"]);
  let called = 0;
  await withLogLines(async (lines) => {
    const { host, handle } = await started({ path, fetch: () => void called++ });
    assert.ok(
      lines.some((l) => /warn: plugin option fetch has no effect on OpenCode 2/.test(l)),
      lines.join("\n"),
    );
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(res.status, 200);
    await res.text();
    await handle.unload();
  });
  assert.equal(called, 0);
});

test("2.x: settings the config gives anthropic-pool are laid over the pool's (its baseURL stays), and one variant over the mirrored variants", async () => {
  // packages/core/src/config/plugin/provider.ts: `provider.settings = mergeOverlay(...)`, and a
  // model's variants merged by id. A timeout alone replaced the settings whole (the host then
  // sent to its default origin, refused by the pool), and one variant dropped the others.
  const path = await seedPool(mock, ["cfgs1@x.test"]);
  const variants = [
    { id: "low", body: { thinking: { type: "enabled", budget_tokens: 4000 } } },
    { id: "high", body: { thinking: { type: "enabled", budget_tokens: 16000 } } },
  ];
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  await host.start(
    configPlugin((e) => {
      e.models.update("anthropic", "claude-sonnet-4-5", (m) => {
        m.variants = structuredClone(variants);
      });
      e.update("anthropic-pool", (p) => {
        p.settings = { ...(p.settings ?? {}), timeout: 600_000 };
      });
      e.models.update("anthropic-pool", "claude-sonnet-4-5", (m) => {
        m.variants = [...(m.variants ?? []), { id: "high", headers: { "x-mine": "1" } }, { id: "own", body: { x: 1 } }];
      });
    }),
  );
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  try {
    const settings = host.provider("anthropic-pool").provider.settings;
    assert.equal(settings.timeout, 600_000, "the configured setting stays");
    assert.equal(settings.baseURL, `${mock.url}/v1`, "the pool's baseURL stays beside it");
    assert.deepEqual(host.provider("anthropic-pool").models.get("claude-sonnet-4-5").variants, [
      variants[0],
      { ...variants[1], headers: { "x-mine": "1" } },
      { id: "own", body: { x: 1 } },
    ]);
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await res.text()), "Hello from cfgs1@x.test");
  } finally {
    await handle.unload();
  }
});

test("2.x: a request the pool cannot place (a pool file it may not read, a baseURL off its API origin) is refused at once, sent nowhere", async () => {
  // README: "(no account, a pool file it cannot read, a `baseURL` off the pool's API origin) is
  // not sent as the host built it …: it is answered at once with the reason".
  const { createServer } = await import("node:http");
  const elsewhere = [];
  const server = createServer((req, res) => {
    elsewhere.push({ url: req.url, headers: req.headers });
    req.resume();
    res.writeHead(200, { "content-type": "application/json" }).end("{}");
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const other = `http://127.0.0.1:${server.address().port}`;
  const { writeFileSync, readFileSync, symlinkSync } = await import("node:fs");
  const { join } = await import("node:path");
  const ask = async ({ path, baseURL }) => {
    const sleeps = [];
    const host = createHost({ sleep: async (ms) => void sleeps.push(ms), random: () => 0.5 });
    // The person's config for anthropic-pool, which the pool's provider keeps (its settings win).
    if (baseURL)
      await host.start(
        configPlugin((e) =>
          e.update("anthropic-pool", (p) => {
            p.settings = { baseURL };
          }),
        ),
      );
    const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
    mock.clearRequests();
    const failure = await withLogLines(() =>
      host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body }).then(
        () => null,
        (e) => e,
      ),
    );
    await handle.unload();
    return { failure, sleeps, upstream: mock.requests.length };
  };
  try {
    const good = await seedPool(mock, ["origin1@x.test"]);
    // Another origin: another port on the same host; the pool's host and port on another scheme.
    // (A URL with userinfo never gets this far: the runtime's Request refuses it.)
    for (const baseURL of [`${other}/v1`, `${mock.url.replace("http://", "https://")}/v1`, `${mock.url.replace("127.0.0.1", "localhost")}/v1`]) {
      const url = new URL(baseURL);
      const { failure, sleeps, upstream } = await ask({ path: good, baseURL });
      assert.ok(failure instanceof ModelRequestError, `${baseURL}: ${failure}`);
      assert.match(failure.error.message, /^anthropic-pool: endpoint .* refused: it is not the pool's API origin/, baseURL);
      assert.deepEqual(sleeps, [], `${baseURL}: retried although asking again cannot help`);
      assert.equal(upstream, 0, baseURL);
      assert.deepEqual(elsewhere, [], `${url.origin} got a request`);
    }

    const dir = tempDir("oauth-pool-v2-unreadable-");
    const corrupt = join(dir, "corrupt.json");
    writeFileSync(corrupt, '{"anthropic": [ {"email": ', { mode: 0o600 });
    const linked = join(dir, "linked.json");
    symlinkSync(good, linked);
    for (const [path, reason] of [
      [corrupt, /POOL_CORRUPT|corrupt|not valid JSON|cannot be read/i],
      [linked, /POOL_INSECURE|symlink|symbolic link/i],
    ]) {
      const before = readFileSync(path);
      const { failure, sleeps, upstream } = await ask({ path });
      assert.ok(failure instanceof ModelRequestError, `${path}: ${failure}`);
      assert.match(failure.error.message, reason, failure.error.message);
      assert.deepEqual(sleeps, [], `${path}: retried although asking again cannot help`);
      assert.equal(upstream, 0);
      assert.deepEqual(readFileSync(path), before, "the pool file left byte for byte");
    }
  } finally {
    server.close();
  }
});

test("2.x: the command's remove of an entry named by its place ('#N') says whose login it deleted", async () => {
  // `#N` is the entry's place in the file, counted from 0; `list` numbers its lines from 1. A
  // person who typed `remove #1` for the first line deleted the second account's login, and was
  // told only "Removed #1".
  const path = await seedPool(mock, ["place0@x.test", "place1@x.test"]);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  await host.runCommand("model-accounts-pool", { text: "remove #1" });
  const said = host.log.findLast((e) => e.type === "session.synthetic").input.text;
  assert.match(said, /^Removed #1 \(place1@x\.test\) from the Anthropic pool; its login is deleted/);
  assert.deepEqual(
    (await listAccounts(path)).map((a) => a.email),
    ["place0@x.test"],
  );
  await handle.unload();
});

test("the cleanup setup returns disposes every registration, also when a host's dispose() returns nothing or throws", async () => {
  // The published type says a Promise; `r.dispose().catch?.()` threw on the first that returned
  // undefined, and the tool, the command and the other hooks stayed registered.
  const disposed = [];
  let made = 0;
  const registration = (what) => {
    const id = `${what}#${made++}`;
    return {
      dispose() {
        disposed.push(id);
        if (what === "tool") throw new Error("a host's own failure");
      },
    };
  };
  const ctx = {
    options: { path: tempPoolPath() },
    session: { hook: async (name) => registration(`session.${name}`) },
    tool: {
      transform: async (edit) => {
        edit({ add() {} });
        return registration("tool");
      },
    },
    command: {
      transform: async (edit) => {
        edit({ add() {} });
        return registration("command");
      },
    },
  };
  const cleanup = await pluginModule.default.setup(ctx);
  assert.ok(made >= 3, `registered ${made}`);
  await cleanup();
  assert.equal(disposed.length, made, `disposed ${disposed.join(", ")}`);
});
