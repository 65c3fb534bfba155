// More than one copy of the package in one process and on one pool file: opencode-aidevops
// bundles its own copy while the person also lists the package as a plugin (two copies, each
// loading its own .node from its own path, in one OpenCode process); an `npm update` while an
// OpenCode still runs the old build (old and new share the pool file, the new one writing fields
// the old one does not know); and two copies of the JavaScript that load ONE addon (pnpm installs
// a peer-dependency variant of the package as a second copy beside one platform package).
// Runs under Node and Bun.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as lib from "../index.mjs";
import { nativeBinding } from "../lib/native.mjs";
import { platformTriple } from "../lib/platform.mjs";
import { makeAidevopsHost } from "./helpers/aidevops-host.mjs";
import { rateLimitHeaders, parseSSE } from "./helpers/mock-anthropic.mjs";
import { createHost, loadPlugin } from "./helpers/opencode2-host.mjs";
import { useMock, seedPool, readPool, account, messagesUrl, body, jsonHeaders, fakeClient, tempPoolPath } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const TRIPLE = platformTriple();
const BINARY = `oauth-pool.${TRIPLE}.node`;
const mock = useMock();

const made = [];
after(() => {
  for (const dir of made) rmSync(dir, { recursive: true, force: true });
});

/**
 * An installed copy of the package in a directory of its own, loaded into this process:
 * - `binary: "package"`: as npm installs it, the .node in the platform package beside it
 *   (`node_modules/opencode-oauth-pool-<triple>`), a file of its own;
 * - `binary: "local"`: a copy of the .node next to package.json (a local build);
 * - `binary: "shared"`: the JavaScript copied, the .node the one this checkout loads (a link to
 *   it, as pnpm links one platform package into two peer variants of the package).
 * Resolves with the copy's library, plugin module and native loader.
 */
async function installCopy(binary) {
  const home = tempDir("oauth-pool-copy-");
  made.push(home);
  const pkg = join(home, "node_modules", "opencode-oauth-pool");
  mkdirSync(pkg, { recursive: true });
  for (const f of ["index.mjs", "plugin.mjs", "package.json", "lib"]) cpSync(join(ROOT, f), join(pkg, f), { recursive: true });
  // Its one dependency, as npm installs it beside it.
  symlinkSync(join(ROOT, "node_modules", "zod"), join(home, "node_modules", "zod"), "junction");
  if (binary === "package") {
    const platform = join(home, "node_modules", `opencode-oauth-pool-${TRIPLE}`);
    mkdirSync(platform, { recursive: true });
    cpSync(join(ROOT, "npm", TRIPLE, "package.json"), join(platform, "package.json"));
    cpSync(join(ROOT, BINARY), join(platform, BINARY));
  } else if (binary === "local") {
    cpSync(join(ROOT, BINARY), join(pkg, BINARY));
  } else {
    symlinkSync(join(ROOT, BINARY), join(pkg, BINARY));
  }
  const url = (f) => pathToFileURL(join(pkg, f)).href;
  return {
    dir: pkg,
    lib: await import(url("index.mjs")),
    plugin: await import(url("plugin.mjs")),
    native: await import(url("lib/native.mjs")),
  };
}

let copies = null;
/** Two installed copies with addons of their own (aidevops's and the person's), made once. */
async function twoCopies() {
  copies ??= Promise.all([installCopy("package"), installCopy("local")]);
  return copies;
}

const ask = (f) => f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
const textOf = (sse) =>
  parseSSE(sse)
    .filter((e) => e.event === "content_block_delta")
    .map((e) => e.data.delta.text)
    .join("");

test("two installed copies load two addons, each from its own path", async () => {
  const [a, b] = await twoCopies();
  const here = nativeBinding();
  const [na, nb] = [a.native.nativeBinding(), b.native.nativeBinding()];
  assert.notEqual(na, here);
  assert.notEqual(nb, here);
  assert.notEqual(na, nb);
  assert.equal(await a.lib.nativeVersion(), await lib.nativeVersion());
  if (process.platform === "linux") {
    // Distinct libraries, not one handle found twice (the dynamic loader shares a library only
    // when it is the same file).
    const maps = readFileSync("/proc/self/maps", "utf8");
    assert.ok(maps.includes(join(a.dir, "..", `opencode-oauth-pool-${TRIPLE}`, BINARY)), "aidevops's copy loaded from its platform package");
    assert.ok(maps.includes(join(b.dir, BINARY)), "the person's copy loaded from its own directory");
  }
});

test("writes from three copies in one process are serialized: nothing one of them adds is lost", async () => {
  const [a, b] = await twoCopies();
  const path = tempPoolPath();
  const adds = [];
  for (const [name, l] of [
    ["a", a.lib],
    ["b", b.lib],
    ["here", lib],
  ])
    for (let i = 0; i < 15; i++) adds.push(l.addApiKey(`fake-copy-key-${name}-${i}-0123456789`, { email: `${name}${i}@copies.test`, path }));
  await Promise.all(adds);
  const emails = readPool(path).anthropic.map((x) => x.email);
  assert.equal(emails.length, 45, `every add landed (${emails.length})`);
  assert.equal(new Set(emails).size, 45);
});

test("an expired token asked for by two copies at once (two addons, two single-flights) is refreshed once", async () => {
  const [a, b] = await twoCopies();
  const email = "copies-refresh@x.test";
  const path = await seedPool(mock, [email], { expired: [email] });
  const before = account(path, email).refresh;
  // Slow enough that every request is waiting while the first refresh is out.
  mock.setTokenMode({ delayMs: 600, grant: "refresh_token" });
  try {
    const fetches = [a.lib, b.lib, lib].map((l) => l.createPoolFetch({ path }));
    const answers = await Promise.all(fetches.flatMap((f) => [ask(f), ask(f), ask(f)]));
    for (const r of answers) {
      assert.equal(r.status, 200);
      assert.equal(r.poolAccount, email);
      await r.text();
    }
    const stats = mock.stats().perFamily[email];
    assert.equal(stats.refreshCalls, 1, "the refresh token was presented once, for nine requests in three copies");
    assert.equal(stats.reuse, 0, "no spent refresh token was presented");
    assert.notEqual(account(path, email).refresh, before, "the new tokens are in the file");
  } finally {
    mock.setTokenMode(null);
  }
});

test("OpenCode 2 running two copies (two addons): each request is placed, sent, counted and failed over once", async () => {
  const [a, b] = await twoCopies();
  const [first, second] = ["oc2copy-a@x.test", "oc2copy-b@x.test"];
  const path = await seedPool(mock, [first, second]);
  await lib.setPriority(first, 5, path);
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const lines = [];
  const original = console.error;
  console.error = (...args) => void lines.push(args.join(" "));
  let handles = [];
  try {
    handles = [await host.start(loadPlugin(a.plugin, { options: { path } })), await host.start(loadPlugin(b.plugin, { options: { path } }))];
    const sent = mock.stats().messages;
    const res = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await res.text()), `Hello from ${first}`);
    assert.equal(mock.stats().messages - sent, 1, "one request upstream");

    mock.script(first, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 120, fiveHourReset: Math.floor(Date.now() / 1000) + 120 }) }]);
    const byAccount = { ...mock.stats().messagesByAccount };
    const moved = await host.modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body });
    assert.equal(textOf(await moved.text()), `Hello from ${second}`);
    const now = mock.stats().messagesByAccount;
    assert.equal((now[first] ?? 0) - (byAccount[first] ?? 0), 1, "the limited account was asked once");
    assert.equal((now[second] ?? 0) - (byAccount[second] ?? 0), 1, "the next account once");
    assert.deepEqual(
      lines.filter((l) => /error:/.test(l)),
      [],
      "neither copy refused the other's placement",
    );
    assert.equal(lines.filter((l) => /info:.*oc2copy-a@x\.test.*oc2copy-b@x\.test/.test(l)).length, 1, `one failover notice (${lines.join(" | ")})`);

    await Promise.all([a.lib.flushPool(path), b.lib.flushPool(path), lib.flushPool(path)]);
    const usage = (email) => Object.values(account(path, email).usage?.days ?? {}).reduce((n, models) => n + (models["claude-sonnet-4-5"]?.requests ?? 0), 0);
    assert.equal(usage(first), 1, "the first answer was counted once");
    assert.equal(usage(second), 1, "the failed-over answer was counted once");
  } finally {
    console.error = original;
    for (const h of handles) await h.unload();
  }
});

test("OpenCode 1.18 with aidevops's copy composed and the person's copy as a plugin: one provider, one fetch, one notice per failover", async () => {
  const [a, b] = await twoCopies();
  const [first, second] = ["oc1copy-a@x.test", "oc1copy-b@x.test"];
  const path = await seedPool(mock, [first, second]);
  await lib.setPriority(first, 5, path);
  const { client, toasts } = fakeClient();
  const input = { client, directory: ROOT, worktree: ROOT };
  const aidevops = makeAidevopsHost({
    pool: { poolAuthHook: a.lib.poolAuthHook, createPoolTool: a.lib.createPoolTool, poolConfigHook: a.lib.poolConfigHook },
    options: { path },
  });
  // 1.18 runs each plugin's function with the same input, then every config hook in turn.
  const plugins = [await aidevops(input), await b.plugin.default.server(input, { path })];
  const config = {};
  for (const p of plugins) await p.config(config);
  const provider = config.provider["anthropic-pool"];
  assert.ok(Object.keys(provider.models).includes("claude-sonnet-4-5"));
  // Both auth loaders run; the config's provider options, merged last, decide the fetch.
  const loaded = [];
  for (const p of plugins) loaded.push(await p.auth.loader(async () => ({ type: "oauth" }), { models: {} }));
  assert.equal(provider.options.fetch, loaded[0].fetch, "the first copy's fetch, not replaced by the second copy's config hook");
  for (const p of plugins) assert.ok(p.tool["model-accounts-pool"], "each copy offers the tool (the host keeps one)");

  mock.script(first, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 60 }) }]);
  const res = await ask(provider.options.fetch);
  assert.equal(res.poolAccount, second);
  await res.text();
  assert.equal(toasts.length, 1, "one notice for the failover");

  // Whichever copy's tool the host kept, it manages the same pool.
  const listed = await Promise.all(plugins.map((p) => p.tool["model-accounts-pool"].execute({ action: "list" }, {})));
  for (const text of listed) assert.match(String(text), /oc1copy-b@x\.test/);
});

test("fields a newer copy writes (the file, accounts, their usage and limits) are kept by this one's writes", async () => {
  const email = "newer-fields@x.test";
  const path = await seedPool(mock, [email]);
  const raw = readPool(path);
  const now = Date.now();
  const days = [new Date(now).toISOString().slice(0, 10), new Date(now + 60_000).toISOString().slice(0, 10)];
  const counted = { requests: 5, input: 10, output: 20, cacheRead: 0, cacheWrite: 0, webSearches: 7 };
  raw._newerCopy = { schema: 3 };
  const acct = raw.anthropic[0];
  acct.futureSetting = { mode: "x" };
  acct.usage = { days: Object.fromEntries(days.map((d) => [d, { "claude-sonnet-4-5": { ...counted } }])), futureSection: { a: 1 } };
  acct.limits = { updatedAt: now, futureField: 1, windows: { "7d": { status: "allowed", utilization: 0.1, updatedAt: now, futureWindowField: 2 } } };
  acct.modelCooldowns = { "future-family": now + 3_600_000 };
  // An account this build cannot read (a type it does not know): kept as it is.
  const unreadable = { email: "future-kind@x.test", type: "future-kind", priority: "high", token: "fake" };
  raw.anthropic.push(unreadable);
  writeFileSync(path, JSON.stringify(raw, null, 2));

  // This copy serves a request (usage, limits, last use are written), and the pool is managed.
  const f = lib.createPoolFetch({ path });
  const res = await ask(f);
  assert.equal(res.status, 200);
  await res.text();
  await lib.flushPool(path);
  await lib.setPriority(email, 2, path);

  const after = readPool(path);
  const mine = after.anthropic.find((x) => x.email === email);
  assert.equal(mine.priority, 2);
  assert.deepEqual(after._newerCopy, { schema: 3 });
  assert.deepEqual(mine.futureSetting, { mode: "x" });
  assert.deepEqual(mine.usage.futureSection, { a: 1 });
  assert.equal(mine.limits.futureField, 1);
  assert.equal(mine.limits.windows["7d"].futureWindowField, 2, "a window's field this build does not write stays");
  assert.equal(mine.limits.windows["7d"].utilization, 0.2, "the window's own values are this answer's");
  assert.equal(mine.modelCooldowns["future-family"], now + 3_600_000);
  const bucket = days.map((d) => mine.usage.days[d]?.["claude-sonnet-4-5"]).find((c) => c && c.requests === 6);
  assert.ok(bucket, `the request was counted on top of the newer copy's counts (${JSON.stringify(mine.usage.days)})`);
  assert.equal(bucket.webSearches, 7, "a count this build does not know stays");
  assert.ok(bucket.input >= 10 && bucket.output > 20, `known counts are added to (${JSON.stringify(bucket)})`);
  assert.deepEqual(
    after.anthropic.find((x) => x.email === "future-kind@x.test"),
    unreadable,
  );
});

test("two copies of the JavaScript on one addon: each hands over its own environment, however the other changed it", async () => {
  const c = await installCopy("shared");
  assert.equal(c.native.nativeBinding(), nativeBinding(), "one addon, two copies of the JavaScript");
  const dir = tempDir("oauth-pool-copies-env-");
  made.push(dir);
  const [one, two] = [join(dir, "one.json"), join(dir, "two.json")];
  await lib.addApiKey("fake-copy-key-one-0123456789", { email: "in-one@x.test", path: one });
  await lib.addApiKey("fake-copy-key-two-0123456789", { email: "in-two@x.test", path: two });
  const saved = process.env.OAUTH_POOL_PATH;
  const emails = async (l) => (await l.listAccounts()).map((x) => x.email);
  try {
    process.env.OAUTH_POOL_PATH = one;
    assert.deepEqual(await emails(lib), ["in-one@x.test"]);
    process.env.OAUTH_POOL_PATH = two;
    assert.deepEqual(await emails(c.lib), ["in-two@x.test"]);
    process.env.OAUTH_POOL_PATH = one;
    // This copy last handed over `one`; the addon has held `two` since the other copy's call.
    assert.deepEqual(await emails(lib), ["in-one@x.test"], "the pool the environment names now, not the other copy's");
    assert.deepEqual(await emails(c.lib), ["in-one@x.test"]);
  } finally {
    if (saved === undefined) delete process.env.OAUTH_POOL_PATH;
    else process.env.OAUTH_POOL_PATH = saved;
  }
});
