// What index.d.ts promises against what the library hands back at run time. The usage file under
// __tests__/types/ is compiled, never run: a type that says `number` where the code returns
// null, or leaves out a field the code always sets, passes it. Here every export is called in its
// ordinary, empty and error cases and each value is checked against its declared type by tsc
// (helpers/declared-types.mjs); sync against async and the accepted options are checked too.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import * as lib from "../index.mjs";
import plugin from "../plugin.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { typeMismatches } from "./helpers/declared-types.mjs";
import { OPTION_NAMES } from "../lib/plugin/shared.mjs";
import { body, fakeClient, jsonHeaders, messagesUrl, oauthEntry, tempPoolPath, useMock } from "./helpers/pool-env.mjs";

const mock = useMock();

function writeRaw(value) {
  const path = tempPoolPath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  writeFileSync(path, JSON.stringify(value), { mode: 0o600 });
  return path;
}

async function send(f, model = "claude-sonnet-4-5") {
  const res = await f(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body({ model }) });
  await res.text();
  return res;
}

const rejection = (promise) =>
  promise.then(
    (v) => assert.fail(`resolved ${JSON.stringify(v)}`),
    (e) => e,
  );

/** A pool with every kind of entry, used for a while so that windows, usage and cooldowns are set. */
async function busyPool() {
  const now = Date.now();
  mock.addApiKey("fake-console-key-declared-types", "key@declared.test");
  const path = writeRaw({
    version: 1,
    anthropic: [
      oauthEntry(mock, "served@declared.test"),
      oauthEntry(mock, "five@declared.test", { priority: 10 }),
      oauthEntry(mock, "sonnet@declared.test", { priority: 9 }),
      { ...oauthEntry(mock, "off@declared.test"), enabled: false, status: "disabled" },
      { ...oauthEntry(mock, "login@declared.test"), status: "auth-error" },
      { email: "cool@declared.test", refresh: "r-declared-cool", access: "a", expires: now + 3_600_000, status: "rate-limited", rateLimitUntil: now + 600_000 },
      { email: "bare@declared.test", refresh: "r-declared-bare", access: "a" },
      { email: "key@declared.test", type: "api", key: "fake-console-key-declared-types", status: "idle", rateLimitUntil: null },
      { email: "nokey@declared.test", type: "api", apiKey: "under another name", status: "idle", rateLimitUntil: null },
      // Unreadable, kept verbatim.
      { nothing: 1 },
      "a string",
      { email: "odd@declared.test", status: "weird", rateLimitUntil: "soon" },
    ],
    // Another writer's section of that name, not a failover the pool recorded.
    lastFailover: "yesterday",
    theirs: { kept: true },
  });
  const f = lib.createPoolFetch({ path });
  // five@ is rested by a 429 that names only the 5-hour window, sonnet@ by a 7d_sonnet one; served@
  // serves.
  mock.script("five@declared.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600, only5h: true }) }]);
  mock.script("sonnet@declared.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600, rejected: "7d_sonnet" }) }]);
  await send(f);
  await send(f, "claude-opus-4-1");
  await lib.flushPool(path);
  return path;
}

test("every value the library resolves fits the type index.d.ts declares for it", async () => {
  const checks = [];
  const check = (name, type, value) => checks.push([name, type, value]);
  const result = (fn) => `Awaited<ReturnType<typeof P.${fn}>>`;

  const empty = join(dirname(tempPoolPath()), "never-written.json");
  check("loadPool, no file", "P.Pool", await lib.loadPool(empty));
  check("listAccounts, no file", "P.AccountSummary[]", await lib.listAccounts(empty));
  check("poolStatus, no file", "P.PoolStatus", await lib.poolStatus(empty));

  const path = await busyPool();
  const listed = await lib.listAccounts(path);
  const pool = await lib.loadPool(path);
  // Entries the pool could not read are kept verbatim: any shape (index.d.ts says so).
  check(
    "loadPool, readable entries",
    "P.Account[]",
    pool.anthropic.filter((_, i) => listed[i].status !== "invalid"),
  );
  check("loadPool, the rest", "Omit<P.Pool, 'anthropic'>", { ...pool, anthropic: undefined });
  check("listAccounts", "P.AccountSummary[]", listed);
  const status = await lib.poolStatus(path);
  check("poolStatus", "P.PoolStatus", status);
  // The run above made each case this test is about; a change in it must not hollow the check.
  const by = Object.fromEntries(listed.map((a) => [a.email, a]));
  assert.equal(by["five@declared.test"].status, "rate-limited");
  assert.ok(by["five@declared.test"].quota?.fiveHour && !by["five@declared.test"].quota.sevenDay, JSON.stringify(by["five@declared.test"].quota));
  assert.ok(Object.keys(by["sonnet@declared.test"].modelCooldowns ?? {}).length, JSON.stringify(by["sonnet@declared.test"]));
  assert.ok(listed.some((a) => a.usage?.window && a.windows?.length));
  assert.equal(listed.filter((a) => a.status === "invalid").length, 3);

  check("authorize", "P.AuthorizeResult", await lib.authorize());
  const pkce = await lib.authorize({ mode: "console" });
  check("authorize console", "P.AuthorizeResult", pkce);
  check("exchange", result("exchange"), await lib.exchange(mock.approve(pkce.url, "exchanged@declared.test"), pkce));
  // A server's email that cannot name an account (control characters), from the token response
  // and the profile alike: the tokens come back without one.
  const nameless = await lib.authorize();
  const unnamed = await lib.exchange(mock.approve(nameless.url, "bad\u001b[2Jname@declared.test"), nameless);
  assert.equal(unnamed.email, null);
  check("exchange, no email that names an account", result("exchange"), unnamed);
  const login = await lib.authorize();
  check("addAccount", result("addAccount"), await lib.addAccount(mock.approve(login.url, "added@declared.test"), login, path));
  check("refresh", result("refresh"), await lib.refresh(mock.addAccount("refreshed@declared.test").refresh));
  check("refreshAccount", result("refreshAccount"), await lib.refreshAccount("served@declared.test", path));
  check("addApiKey", result("addApiKey"), await lib.addApiKey("fake-console-key-declared-other", { path }));
  check("setEnabled", result("setEnabled"), await lib.setEnabled("off@declared.test", true, path));
  check("setPriority", result("setPriority"), await lib.setPriority("#6", 1, path));
  check("setReserve", result("setReserve"), await lib.setReserve("served@declared.test", 0.25, path));
  check("resetCooldowns", result("resetCooldowns"), await lib.resetCooldowns(path));
  check("flushPool", result("flushPool"), await lib.flushPool(path));
  check("removeAccount", result("removeAccount"), await lib.removeAccount("#9", path));
  check("savePool", result("savePool"), await lib.savePool(await lib.loadPool(empty), tempPoolPath()));
  check("copyStore", result("copyStore"), await lib.copyStore(path, tempPoolPath()));
  check("nativeVersion", result("nativeVersion"), lib.nativeVersion());
  check("platformTriple", result("platformTriple"), lib.platformTriple());
  check("gatewayKey", result("gatewayKey"), lib.gatewayKey(path));
  const gateway = await lib.serve({ port: 0, path });
  check("serve", "P.Gateway", gateway);
  check("Gateway.unref", "P.Gateway", gateway.unref());
  check("Gateway.close", "Awaited<ReturnType<P.Gateway['close']>>", await gateway.close(0));

  const events = [];
  const f = lib.createPoolFetch({ path, onEvent: (e) => events.push(e) });
  mock.script("served@declared.test", [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const served = await send(f);
  check("PoolResponse.poolAccount", "P.PoolResponse['poolAccount']", served.poolAccount);
  check("PoolEvent[]", "P.PoolEvent[]", events);
  assert.ok(
    events.some((e) => e.kind === "failover"),
    JSON.stringify(events),
  );
  const cooling = writeRaw({
    anthropic: [
      {
        email: "c@declared.test",
        refresh: "r-declared-c",
        access: "a",
        expires: Date.now() + 1e7,
        status: "rate-limited",
        rateLimitUntil: Date.now() + 60_000,
      },
    ],
  });
  const own429 = await lib.createPoolFetch({ path: cooling })(messagesUrl(mock), { method: "POST", headers: jsonHeaders, body: body() });
  assert.equal(own429.status, 429);
  check("the pool's own 429: poolAccount", "P.PoolResponse['poolAccount']", own429.poolAccount);
  check("its clone", "P.PoolResponse['poolAccount']", own429.clone().poolAccount);
  await own429.text();

  // Rejections: each code is one the types list.
  const codes = [
    await rejection(lib.loadPool(writeRaw("{"))),
    await rejection(lib.savePool({}, tempPoolPath())),
    await rejection(lib.refresh("spent")),
    await rejection(lib.exchange("c#s", { verifier: "v", state: "t" })),
    await rejection(lib.exchange("", { verifier: "v", state: "t" })),
    await rejection(lib.removeAccount("nobody@declared.test", path)),
    await rejection(lib.listAccounts(5)),
    await rejection(lib.createPoolFetch({ path: empty })(messagesUrl(mock), { method: "POST", body: "{}" })),
    await rejection(lib.createPoolFetch({ path })("http://127.0.0.1:1/v1/messages", { method: "POST", body: "{}" })),
    await rejection(lib.refreshAccount("key@declared.test", path)),
  ].map((e) => e.code);
  check("error codes", "P.ErrorCode[]", codes);
  mock.setTokenMode({ status: 500, grant: "refresh_token" });
  const http = await rejection(lib.refresh(mock.addAccount("http@declared.test").refresh));
  mock.setTokenMode(null);
  assert.equal(http.code, "OAUTH_HTTP", http.message);
  check("OAUTH_HTTP status", "P.PoolError['status']", http.status);

  const problems = typeMismatches(checks);
  assert.deepEqual(problems, [], `values that do not fit index.d.ts:\n${problems.join("\n")}`);
});

test("a pool file's own lastFailover section of another shape is not reported as a failover", async () => {
  for (const theirs of [{}, "yesterday", { at: "2024-01-01", from: 3 }]) {
    const path = writeRaw({ anthropic: [oauthEntry(mock, "lf@declared.test")], lastFailover: theirs });
    const status = await lib.poolStatus(path);
    assert.equal(status.lastFailover, null, JSON.stringify(theirs));
    const text = await lib.createPoolTool({ client: fakeClient().client }, { path }).execute({ action: "status" }, {});
    assert.match(text, /Last failover: none recorded/);
    assert.doesNotMatch(text, /undefined/);
  }
  const ours = { at: Date.now() - 1000, from: "a@declared.test", reason: "429" };
  const path = writeRaw({ anthropic: [], _oauthPool: { lastFailover: ours } });
  assert.deepEqual((await lib.poolStatus(path)).lastFailover, { ...ours, to: null });
});

test("functions declared async return a promise also for wrong arguments, and sync ones do not", async () => {
  const checks = [["the exports", "Required<Record<keyof typeof P, true>>", Object.fromEntries(Object.keys(lib).map((k) => [k, true]))]];
  const codes = [];
  for (const [name, fn] of Object.entries(lib)) {
    if (typeof fn !== "function") continue;
    let value;
    let promise = false;
    try {
      value = fn(Symbol("wrong"), Symbol("wrong"), Symbol("wrong"));
      promise = value instanceof Promise;
      if (promise) await value.catch((err) => codes.push(err.code));
    } catch (err) {
      codes.push(err.code);
    }
    checks.push([`${name} returns a promise`, `ReturnType<typeof P.${name}> extends PromiseLike<unknown> ? true : false`, promise]);
  }
  checks.push(["their codes", "P.ErrorCode[]", codes]);
  assert.ok(plugin.setup({}) instanceof Promise);
  const problems = typeMismatches(checks);
  assert.deepEqual(problems, [], problems.join("\n"));
});

test("the options each function accepts are the options index.d.ts declares", async () => {
  // A function refuses an option it does not take and names the ones it does.
  const accepted = async (call) => {
    let err;
    try {
      err = await rejection(Promise.resolve().then(call));
    } catch (e) {
      err = e;
    }
    assert.equal(err.code, "INVALID_ARGUMENT", err.message);
    const named = /\(the options: ([^)]*)\)/.exec(err.message);
    assert.ok(named, err.message);
    return Object.fromEntries(named[1].split(", ").map((k) => [k, true]));
  };
  const odd = { notAnOption: 1 };
  const checks = [
    ["authorize", "Required<Record<keyof NonNullable<Parameters<typeof P.authorize>[0]>, true>>", await accepted(() => lib.authorize(odd))],
    ["addApiKey", "Required<Record<keyof NonNullable<Parameters<typeof P.addApiKey>[1]>, true>>", await accepted(() => lib.addApiKey("k", odd))],
    [
      "importClaudeCode",
      "Required<Record<keyof NonNullable<Parameters<typeof P.importClaudeCode>[0]>, true>>",
      await accepted(() => lib.importClaudeCode(odd)),
    ],
    ["serve", "Required<Record<keyof P.ServeOptions, true>>", await accepted(() => lib.serve(odd))],
    ["createPoolFetch", "Required<Record<keyof P.PoolFetchOptions, true>>", await accepted(() => lib.createPoolFetch(odd))],
    // The plugin's parts warn of an option they do not read rather than refuse it.
    ["the plugin's parts", "Required<Record<keyof P.PoolPluginOptions, true>>", Object.fromEntries(OPTION_NAMES.map((k) => [k, true]))],
  ];
  const problems = typeMismatches(checks);
  assert.deepEqual(problems, [], problems.join("\n"));
});
