// A drop-in for opencode-aidevops (issue 16): an aidevops-shaped host plugin (helpers/aidevops-host.mjs,
// mirroring marcusquinn/aidevops HEAD) composes our parts in both orders; a pool file in aidevops
// HEAD's shape is served; importing without a binary never throws; `oauth-pool refresh` from
// several processes spends the refresh token once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync, rmSync, symlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import { makeAidevopsHost } from "./helpers/aidevops-host.mjs";
import { runCli } from "./helpers/cli-sandbox.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { useMock, seedPool, tempPoolPath, readPool, account, messagesUrl, body, jsonHeaders, fakeClient, oauthEntry, withEnv } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "bin", "oauth-pool.mjs");
const parts = { poolAuthHook: lib.poolAuthHook, createPoolTool: lib.createPoolTool, poolConfigHook: lib.poolConfigHook };

const mock = useMock();

for (const order of ["ours-first", "ours-last"]) {
  test(`composed ${order}: our models are declared, one fetch serves loader and config, notices reach the host, the tool is renamed`, async () => {
    const path = await seedPool(mock, ["ad1@x.test", "ad2@x.test"]);
    await lib.setPriority("ad1@x.test", 5, path);
    const { client, toasts } = fakeClient();
    const input = { client, directory: ROOT, worktree: ROOT };
    const host = makeAidevopsHost({ pool: parts, order, options: { path, toolName: "pool-accounts" } });
    const hooks = await host(input);
    const config = {};
    await hooks.config(config);
    const provider = config.provider["anthropic-pool"];
    const models = Object.keys(provider.models);
    assert.ok(models.includes("claude-sonnet-4-5"), `our models are there (${models.join(", ")})`);
    assert.ok(!models.includes("pool-account-management"), "the stand-in model is not");
    assert.equal(provider.name, order === "ours-last" ? "Anthropic Pool" : provider.name);
    assert.equal(Object.keys(config.provider.anthropic.models).length, 6, "aidevops's own providers are untouched");
    assert.ok(hooks.tool["pool-accounts"], "the tool under its new name");
    assert.match(config.command["pool-accounts"].template, /Call the pool-accounts tool once/);
    // The renamed tool's remove asks under its name, then under the key the composed config hook
    // gave a rule (the README's composition); refused, the login stays.
    assert.equal(config.permission["pool-accounts-remove"], "ask");
    const asked = [];
    const refuse = {
      ask: async ({ permission }) => {
        asked.push(permission);
        if (permission === "pool-accounts-remove") throw new Error("the person said no");
      },
    };
    await assert.rejects(hooks.tool["pool-accounts"].execute({ action: "remove", email: "ad2@x.test" }, refuse), /said no/);
    assert.deepEqual(asked, ["pool-accounts", "pool-accounts-remove"]);
    const kept = (await lib.listAccounts(path)).find((a) => a.email === "ad2@x.test");
    assert.ok(kept && kept.status !== "disabled", JSON.stringify(kept));
    const loaded = await hooks.auth.loader(async () => ({ type: "oauth" }), { models: {} });
    assert.equal(loaded.fetch, provider.options.fetch, "one fetch for the loader and the config-declared provider");
    mock.script("ad1@x.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }]);
    const res = await provider.options.fetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
    assert.equal(res.poolAccount, "ad2@x.test");
    await res.text();
    assert.equal(toasts.length, 1, "the failover reached the host's client");
    assert.match(toasts[0].message, /ad1@x\.test.*ad2@x\.test/);
  });
}

test("poolConfigHook alone still declares the provider with a working fetch", async () => {
  const path = await seedPool(mock, ["alone@x.test"]);
  const config = {};
  await lib.poolConfigHook(config, { path });
  const res = await config.provider["anthropic-pool"].options.fetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.poolAccount, "alone@x.test");
  await res.text();
});

test('provider "anthropic": the pool serves OpenCode\'s own provider through the auth loader and the config', async () => {
  const path = await seedPool(mock, ["own@x.test"]);
  const { client } = fakeClient();
  const input = { client };
  const hooks = await lib.OAuthPoolPlugin(input, { path, provider: "anthropic" });
  assert.equal(hooks.auth.provider, "anthropic");
  const config = { provider: { anthropic: { options: { timeout: 5 } } } };
  await hooks.config(config);
  assert.equal(config.provider["anthropic-pool"], undefined, "no second provider");
  assert.equal(config.provider.anthropic.options.timeout, 5, "the user's settings stay");
  assert.equal(typeof config.provider.anthropic.options.fetch, "function");
  const loaded = await hooks.auth.loader(async () => ({}), { models: {} });
  assert.equal(loaded.fetch, config.provider.anthropic.options.fetch);
  // OpenCode sends to options.baseURL, else to its catalog's URL for anthropic (the SDK's
  // api.anthropic.com): without ours there, OAUTH_POOL_API_URL (here the mock) was never the
  // provider's, and every request was refused as off the pool's origin.
  assert.equal(config.provider.anthropic.options.baseURL, `${mock.url}/v1`);
  const res = await config.provider.anthropic.options.fetch(`${config.provider.anthropic.options.baseURL}/messages`, {
    method: "POST",
    headers: jsonHeaders,
    body: body(),
  });
  assert.equal(res.poolAccount, "own@x.test");
  await res.text();
  const theirs = { provider: { anthropic: { options: { baseURL: "https://elsewhere.example/v1" } } } };
  await hooks.config(theirs);
  assert.equal(theirs.provider.anthropic.options.baseURL, "https://elsewhere.example/v1", "the user's baseURL wins");
  await assert.rejects(lib.OAuthPoolPlugin(input, { toolName: "has spaces" }), (e) => e.code === "INVALID_ARGUMENT");
});

test('provider "anthropic" on 1.18: the tool and the notices point at OpenCode\'s own Anthropic login entry, not an "Anthropic Pool" one that is not listed', async () => {
  const path = tempPoolPath();
  const { client, toasts } = fakeClient();
  const hooks = await lib.OAuthPoolPlugin({ client }, { path, provider: "anthropic" });
  const tool = hooks.tool["model-accounts-pool"];
  assert.match(tool.description, /behind the anthropic provider/);
  const empty = await tool.execute({ action: "list" }, {});
  assert.match(empty, /Add one: run `opencode auth login` -> Anthropic -> "Claude Pro\/Max \(add account to pool\)"/);
  await lib.savePool({ version: 1, anthropic: [oauthEntry(mock, "gone118@x.test")] }, path);
  mock.revoke("gone118@x.test", { family: true });
  const key = ["sk", "ant", "api03", "K".repeat(40)].join("-");
  await lib.addApiKey(key, { email: "work", path });
  const { fetch } = await hooks.auth.loader(async () => ({}), { models: {} });
  const res = await fetch(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() }).catch((err) => err);
  assert.equal(res.code, "POOL_NO_ACCOUNT", String(res));
  // The error OpenCode shows says the same as the toast.
  assert.match(res.message, /or OpenCode's login \(`opencode auth login` -> Anthropic\)/);
  for (let i = 0; i < 50 && !toasts.length; i++) await new Promise((r) => setTimeout(r, 10));
  const told = toasts.map((t) => t.message).join("\n");
  assert.match(told, /`opencode auth login` -> Anthropic -> Console API key/);
  assert.match(told, /needs a new login.*run `opencode auth login` -> Anthropic($|;)/m);
  assert.doesNotMatch(`${empty}\n${told}\n${tool.description}\n${res.message}`, /Anthropic Pool|anthropic-pool login/);
});

/** The fixture from aidevops HEAD with live tokens of the mock in place of its fakes. */
function aidevopsPool(mutate) {
  const raw = JSON.parse(readFileSync(new URL("./fixtures/aidevops-pool.json", import.meta.url), "utf8"));
  const now = Date.now();
  for (const a of raw.anthropic) {
    a.email = a.email.replace("@example.com", "@aidevops.test");
    const t = mock.addAccount(a.email);
    Object.assign(a, { access: t.access, refresh: t.refresh, expires: t.expires });
  }
  const by = (e) => raw.anthropic.find((a) => a.email === `${e}@aidevops.test`);
  by("alice").priority = 1; // no preference: the test steers with cooldowns
  by("bob").cooldownUntil = now + 3_600_000; // theirs: rate-limited for an hour
  by("carol").cooldownUntil = now - 60_000; // a passed backoff after their refresh failure
  by("dave").cooldownUntil = now - 60_000;
  mutate?.(by, raw);
  const path = tempPoolPath();
  return { path, raw, by };
}

test("a pool file in aidevops HEAD's shape: cooldownUntil is honoured, a foreign auth-error is verified once, nothing of theirs is lost", async () => {
  const { path, raw, by } = aidevopsPool();
  await lib.savePool(raw, path);
  const f = lib.createPoolFetch({ path });
  // Every account but carol cools (alice through a 429 now, bob through their cooldownUntil).
  mock.script("alice@aidevops.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  mock.script("dave@aidevops.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const before = mock.stats().perFamily["carol@aidevops.test"].refreshCalls;
  mock.clearRequests();
  const res = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(res.status, 200);
  assert.equal(res.poolAccount, "carol@aidevops.test", "their auth-error, past its backoff, is tried");
  await res.text();
  assert.ok(!mock.requests.some((r) => r.email === "bob@aidevops.test"), "bob cools through cooldownUntil");
  assert.equal(mock.stats().perFamily["carol@aidevops.test"].refreshCalls, before + 1, "verified with one refresh");
  await lib.flushPool(path);
  const after = readPool(path);
  const carol = after.anthropic.find((a) => a.email === "carol@aidevops.test");
  assert.equal(carol.status === "active" || carol.status === "idle", true, carol.status);
  assert.equal(carol.authRefreshFailures, 3, "their counters are kept verbatim");
  const alice = after.anthropic.find((a) => a.email === "alice@aidevops.test");
  assert.ok(alice.cooldownUntil > Date.now(), "our cooldown mirrored into their field");
  assert.equal(alice.cooldownUntil, alice.rateLimitUntil);
  assert.deepEqual(after.openai, raw.openai);
  assert.deepEqual(after._pending_anthropic, raw._pending_anthropic);
  assert.equal(after.version, undefined, "no top-level key their helper would choke on");
  assert.equal(after.lastFailover, undefined);
  // Under an _-prefixed key, as a list of one object: their `reset-cooldowns` (all providers,
  // its default) walks every top-level value as a list of accounts and calls `.get` on each,
  // and an object there made it fail after our first failover (found by a review).
  assert.ok(Array.isArray(after._oauthPool), "a list, as every top-level value of theirs");
  assert.ok(after._oauthPool[0].lastFailover, "our own record sits under an _-prefixed key");
  for (const [key, value] of Object.entries(after)) {
    if (Array.isArray(value))
      assert.ok(
        value.every((item) => item && typeof item === "object" && !Array.isArray(item)),
        key,
      );
  }
  assert.ok(
    Object.entries(after).every(([k, v]) => k.startsWith("_") || Array.isArray(v)),
    Object.keys(after).join(),
  );
  void by;
});

test("a pool file the JavaScript predecessor wrote loads unchanged: loadPool gives back what the file says, and the file stays as it was", async () => {
  // CONTRACT.md "Pool file": such files "must load unchanged". The predecessor writes
  // `cooldownUntil` and no `rateLimitUntil`: loadPool added `rateLimitUntil: null` to every
  // account, bob's among them, whose file says he is rate-limited until 2100.
  const path = tempPoolPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const bytes = readFileSync(new URL("./fixtures/aidevops-pool.json", import.meta.url));
  writeFileSync(path, bytes, { mode: 0o600 });
  assert.deepEqual(await lib.loadPool(path), JSON.parse(bytes));
  assert.deepEqual(readFileSync(path), bytes, "a read leaves the file byte for byte");
});

test("a foreign auth-error whose refresh token is dead becomes final (ours), tokens kept", async () => {
  const { path, raw } = aidevopsPool();
  raw.anthropic = raw.anthropic.filter((a) => a.email === "carol@aidevops.test");
  await lib.savePool(raw, path);
  mock.revoke("carol@aidevops.test", { family: true });
  const f = lib.createPoolFetch({ path });
  await assert.rejects(f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() }), (e) => e.code === "POOL_NO_ACCOUNT");
  await lib.flushPool(path);
  const carol = account(path, "carol@aidevops.test");
  assert.equal(carol.status, "auth-error");
  assert.ok(carol.authErrorToken, "marked as ours: a new login is needed");
  assert.equal(carol.refresh, raw.anthropic[0].refresh, "tokens are never deleted");
  const calls = mock.stats().perFamily["carol@aidevops.test"].refreshCalls;
  await assert.rejects(f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() }), (e) => e.code === "POOL_NO_ACCOUNT");
  assert.equal(mock.stats().perFamily["carol@aidevops.test"].refreshCalls, calls, "never presented again");

  // Their `reset-cooldowns` (pool_ops_cooldowns.py) sets every auth-error back to idle. The
  // refused login is still refused (a review, 2026-12-07, second: every view called it usable,
  // and a new process presented the refused token again).
  const theirs = readPool(path);
  for (const a of theirs.anthropic) Object.assign(a, { status: "idle", cooldownUntil: null });
  writeFileSync(`${path}.theirs`, JSON.stringify(theirs, null, 2), { mode: 0o600 });
  renameSync(`${path}.theirs`, path);
  const [listed] = await lib.listAccounts(path);
  assert.equal(listed.status, "auth-error");
  assert.equal(listed.usable, false);
  const fresh = lib.createPoolFetch({ path });
  await assert.rejects(fresh(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() }), (e) => e.code === "POOL_NO_ACCOUNT");
  assert.equal(mock.stats().perFamily["carol@aidevops.test"].refreshCalls, calls, "not presented after their reset either");
  await lib.resetCooldowns(path);
  await lib.flushPool(path);
  assert.equal(account(path, "carol@aidevops.test").status, "auth-error", "written back as the auth-error it is");
});

test("importing the package with no native binary never throws; the first call says what to install", async () => {
  const dir = tempDir("oauth-pool-nobinary-");
  try {
    for (const p of ["index.mjs", "plugin.mjs", "package.json", "lib"]) cpSync(join(ROOT, p), join(dir, p), { recursive: true });
    // The dependencies, but no binary: no local build next to this copy, no platform package.
    symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
    const script = `
      const lib = await import("./index.mjs");
      const plugin = (await import("./plugin.mjs")).default;
      const hooks = await plugin.server({ client: {} }, { path: "${join(dir, "pool.json")}" });
      const config = {};
      await hooks.config(config);
      const out = { hooks: Object.keys(hooks).sort(), provider: !!config.provider["anthropic-pool"] };
      try { await lib.loadPool("${join(dir, "pool.json")}"); } catch (e) { out.code = e.code; out.message = e.message; }
      console.log(JSON.stringify(out));`;
    const child = spawn(process.execPath, ["--input-type=module", "-e", script], { cwd: dir, stdio: ["ignore", "pipe", "inherit"] });
    let stdout = "";
    child.stdout.on("data", (d) => (stdout += d));
    assert.equal(await new Promise((r) => child.on("close", r)), 0);
    const out = JSON.parse(stdout.trim().split("\n").at(-1));
    assert.deepEqual(out.hooks, ["auth", "config", "tool"]);
    assert.equal(out.provider, true, "the other hooks keep working");
    assert.equal(out.code, "NATIVE_MISSING");
    assert.match(out.message, /opencode-oauth-pool-linux-/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("oauth-pool refresh from 5 processes at once: one refresh, the others adopt, no reuse", async () => {
  const path = await seedPool(mock, ["shell@x.test"]);
  // The first refresh is held long enough for every process to have read the token before it lands.
  mock.setTokenMode({ delayMs: 1500, grant: "refresh_token" });
  const before = mock.stats().perFamily["shell@x.test"].refreshCalls;
  const runs = Array.from({ length: 5 }, () => {
    const child = spawn(process.execPath, [CLI, "refresh", "shell@x.test", "--json", "--path", path], {
      env: process.env,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.on("data", (d) => (out += d));
    return new Promise((resolve) => child.on("close", (code) => resolve({ code, out })));
  });
  const results = await Promise.all(runs);
  mock.setTokenMode(null);
  for (const r of results) assert.equal(r.code, 0, `${r.out}`);
  const outcomes = results.map((r) => JSON.parse(r.out).outcome).sort();
  const fam = mock.stats().perFamily["shell@x.test"];
  assert.deepEqual(outcomes, ["adopted", "adopted", "adopted", "adopted", "refreshed"]);
  assert.equal(fam.refreshCalls - before, 1);
  assert.equal(fam.reuse, 0);
  assert.equal(fam.revoked, false);
  assert.equal(account(path, "shell@x.test").refresh, mock.tokens("shell@x.test").refresh);
});

test("aidevops's own AIDEVOPS_OAUTH_POOL_FILE names the pool where OAUTH_POOL_PATH does not: the CLI, the library and doctor use the file aidevops enrolled the accounts in", async () => {
  // aidevops keeps pools apart with it (its OpenCode 2 runtime, its headless workers): read
  // without it, the drop-in served the shared ~/.aidevops/oauth-pool.json instead.
  const home = tempDir("oauth-pool-aidevops-var-");
  const file = join(home, ".aidevops", "runtimes", "opencode-v2", "auth", "oauth-pool.json");
  await seedPool(mock, ["v2runtime@x.test"], { path: file });
  const env = { ...process.env, HOME: home, USERPROFILE: home, AIDEVOPS_OAUTH_POOL_FILE: file };
  delete env.OAUTH_POOL_PATH;
  delete env.OAUTH_POOL_STORE;
  const listed = await runCli(["list", "--json"], { env });
  assert.equal(listed.code, 0, listed.stdout + listed.stderr);
  const json = JSON.parse(listed.stdout);
  assert.equal(json.path, file);
  assert.deepEqual(
    json.accounts.map((a) => a.email),
    ["v2runtime@x.test"],
  );
  const doctor = await runCli(["doctor", "--json"], { env });
  const path = JSON.parse(doctor.stdout.trim().split("\n").at(-1)).checks.find((c) => c.name === "path");
  assert.match(path.message, /\(from AIDEVOPS_OAUTH_POOL_FILE, aidevops's own\)/, doctor.stdout);
  // The library, in this process's environment, as the aidevops plugin calls it.
  await withEnv({ OAUTH_POOL_PATH: undefined, AIDEVOPS_OAUTH_POOL_FILE: file }, async () => {
    assert.deepEqual(
      (await lib.listAccounts()).map((a) => a.email),
      ["v2runtime@x.test"],
    );
  });
  // Ours first, when both are set; a blank one is unset, as a shell's `VAR=` means it.
  const ours = tempPoolPath();
  const both = await runCli(["list", "--json"], { env: { ...env, OAUTH_POOL_PATH: ours } });
  assert.equal(JSON.parse(both.stdout).path, ours);
  const blank = await runCli(["list", "--json"], { env: { ...env, AIDEVOPS_OAUTH_POOL_FILE: "" } });
  assert.equal(JSON.parse(blank.stdout).path, join(home, ".aidevops", "oauth-pool.json"));
  // Checked as OAUTH_POOL_PATH is: a directory's name is refused, naming the variable.
  const dir = await runCli(["list", "--json"], { env: { ...env, AIDEVOPS_OAUTH_POOL_FILE: `${dirname(file)}/` } });
  assert.equal(dir.code, 1, dir.stdout);
  assert.match(dir.stdout, /AIDEVOPS_OAUTH_POOL_FILE ends in `\/`/);
});

test("oauth-pool refresh --json: `kept` when the token endpoint hands back the same refresh token or none; a refusal exits 1 with the stored tokens as they were", async () => {
  const path = await seedPool(mock, ["kept@x.test"]);
  const stored = account(path, "kept@x.test");
  const refresh = async () => {
    const r = await runCli(["refresh", "kept@x.test", "--json", "--path", path], { env: process.env });
    return { ...r, json: r.code === 0 ? JSON.parse(r.stdout) : null };
  };
  for (const [i, handedBack] of [
    [1, undefined],
    [2, stored.refresh],
  ].entries()) {
    const access = `fake-access-kept-${handedBack ? "same" : "none"}-0123456789`;
    mock.setTokenMode({ grant: "refresh_token", status: 200, body: { access_token: access, refresh_token: handedBack, expires_in: 3600 } });
    const r = await refresh();
    assert.equal(r.code, 0, `${i}: ${r.stdout} ${r.stderr}`);
    assert.deepEqual(Object.keys(r.json).sort(), ["email", "expires", "outcome"]);
    assert.equal(r.json.outcome, "kept", r.stdout);
    assert.equal(typeof r.json.expires, "number");
    assert.equal(account(path, "kept@x.test").refresh, stored.refresh, "the stored refresh token stands");
    assert.equal(account(path, "kept@x.test").access, access, "the new access token is taken");
  }
  const before = account(path, "kept@x.test");
  mock.setTokenMode({ grant: "refresh_token", status: 503 });
  const refused = await refresh();
  mock.setTokenMode(null);
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(`${refused.stdout}${refused.stderr}`, /OAUTH_HTTP/);
  const after = account(path, "kept@x.test");
  assert.deepEqual([after.refresh, after.access, after.expires], [before.refresh, before.access, before.expires]);
});

test("the package's own files never leave aidevops's pool file without its sections", async () => {
  const { path, raw } = aidevopsPool();
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(raw));
  await lib.setPriority("alice@aidevops.test", 3, path);
  const after = readPool(path);
  assert.deepEqual(Object.keys(after).sort(), Object.keys(raw).sort());
  // Read as it is and written back: the one field changed, every other of theirs as it was (an
  // account may gain the contract's `rateLimitUntil: null`).
  raw.anthropic[0].priority = 3;
  assert.deepEqual({ ...after, anthropic: null }, { ...raw, anthropic: null });
  assert.deepEqual(
    after.anthropic.map(({ rateLimitUntil, ...theirs }) => [rateLimitUntil ?? null, theirs]),
    raw.anthropic.map(({ rateLimitUntil, ...theirs }) => [rateLimitUntil ?? null, theirs]),
  );
});

test("savePool of a loadPool copy takes the plugin's sections as stored when it holds them as read: its refreshed OpenAI login is not put back to the spent token", async () => {
  // Only `anthropic` was reconciled: a script's load, one edit, save wrote back every other
  // section as read, undoing what the plugin wrote meanwhile (a rotated OpenAI refresh token,
  // its pending marks, a section it removed).
  const path = await seedPool(mock, ["sections@x.test"]);
  const start = readPool(path);
  start.openai = [{ email: "erin@x.test", refresh: "openai-refresh-GEN1", expires: Date.now() + 3600_000 }];
  start._pending_openai = { added: "2026-12-05T00:00:00.000Z" };
  start.mine = { n: 1 };
  writeFileSync(path, JSON.stringify(start, null, 2));
  const copy = await lib.loadPool(path);
  // The plugin, meanwhile: rotates its login, drops its pending mark, adds another.
  const theirs = readPool(path);
  theirs.openai[0].refresh = "openai-refresh-GEN2";
  delete theirs._pending_openai;
  theirs._pending_anthropic = { added: "2026-12-05T00:00:01.000Z" };
  theirs.mine = { n: 2 };
  writeFileSync(path, JSON.stringify(theirs, null, 2));
  copy.anthropic[0].priority = 5;
  copy.mine = { n: 3 };
  await lib.savePool(copy, path);
  const saved = readPool(path);
  assert.equal(saved.openai[0].refresh, "openai-refresh-GEN2", "the plugin's rotated token stays");
  assert.equal(saved._pending_openai, undefined, "a section removed since stays out");
  assert.deepEqual(saved._pending_anthropic, theirs._pending_anthropic, "a section added since is kept");
  assert.deepEqual(saved.mine, { n: 3 }, "a section the copy changed keeps the copy's");
  assert.equal(saved.anthropic[0].priority, 5);
});

test("the aidevops plugin's own writer and ours on one file: its mkdir lock is honoured, nothing of either is lost", async () => {
  const path = await seedPool(mock, ["rot@x.test"]);
  const before = mock.stats().perFamily["rot@x.test"].refreshCalls;
  const rounds = 60;
  // It holds its lock 3 ms between its read and its write; we write all the while (new keys, and
  // refreshes that rotate a token: the write a lost update would undo).
  const writer = spawn(process.execPath, [join(ROOT, "__tests__", "helpers", "aidevops-writer.mjs"), path, String(rounds), "3"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  writer.stdout.on("data", (d) => (out += d));
  let running = true;
  const exited = new Promise((resolve) => writer.on("close", (code) => resolve(code))).finally(() => (running = false));
  let keys = 0;
  let refreshes = 0;
  while (running || keys < 10) {
    await lib.addApiKey(`fake-console-key-${keys}-aidevops-interleaved`, { email: `k${keys}@x.test`, path });
    keys++;
    if (keys % 4 === 0) {
      await lib.refreshAccount("rot@x.test", path);
      refreshes++;
    }
  }
  assert.equal(await exited, 0, out);
  const pool = readPool(path);
  assert.deepEqual(
    pool.openai[0].rounds,
    Array.from({ length: rounds }, (_, i) => i),
    "every write of theirs is there",
  );
  const emails = new Set(pool.anthropic.map((a) => a.email));
  const lost = Array.from({ length: keys }, (_, i) => `k${i}@x.test`).filter((e) => !emails.has(e));
  assert.deepEqual(lost, [], `every key of ours is there (${keys} written)`);
  const fam = mock.stats().perFamily["rot@x.test"];
  assert.equal(fam.refreshCalls - before, refreshes);
  assert.equal(account(path, "rot@x.test").refresh, mock.tokens("rot@x.test").refresh, "the file holds the live refresh token");
  assert.equal(fam.reuse, 0);
  assert.ok(!existsSync(`${path}.lock.d`), "no lock left behind");
});

test("a refresh undone by a writer that takes no lock (their bash manage commands) is written back, and the spent token never presented", async () => {
  const path = await seedPool(mock, ["undone@x.test"], { expired: ["undone@x.test"] });
  const f = lib.createPoolFetch({ path });
  // Read as `oauth-pool-manage.sh set-priority` reads it, before our refresh lands.
  const theirCopy = readPool(path);
  const before = mock.stats().perFamily["undone@x.test"].refreshCalls;
  const first = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(first.status, 200);
  await first.text();
  await lib.flushPool(path);
  const live = mock.tokens("undone@x.test").refresh;
  assert.equal(account(path, "undone@x.test").refresh, live);
  // Their change, moved over the file under no lock: the spent token is back.
  theirCopy.anthropic[0].priority = 7;
  writeFileSync(`${path}.tmp-theirs`, JSON.stringify(theirCopy, null, 2), { mode: 0o600 });
  renameSync(`${path}.tmp-theirs`, path);
  assert.notEqual(account(path, "undone@x.test").refresh, live);
  const second = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(second.status, 200, "served by the tokens the refresh saved");
  await second.text();
  await lib.flushPool(path);
  const fam = mock.stats().perFamily["undone@x.test"];
  assert.equal(fam.refreshCalls - before, 1, "one refresh");
  assert.equal(fam.reuse, 0, "the spent token was not presented");
  const after = account(path, "undone@x.test");
  assert.equal(after.refresh, live, "the file holds the live refresh token again");
  assert.equal(after.priority, 7, "their change is kept");
  assert.notEqual(after.status, "auth-error");
});
