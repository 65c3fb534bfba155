// An account's name is the pool file's to say, and one can hold a credential: a Console key
// named with itself (the key pasted into both prompts, before names were checked), a team
// label with a token in it, a hand edit, another program's file. Every surface that shows a
// name to a person, a log, a model or a client shows it without the credential, and the
// account stays one a person can act on (by its `#N`). Names are written straight to the
// file here, as such files were. Credentials are made at run time (no token-shaped literal).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as lib from "../index.mjs";
import * as pluginModule from "../plugin.mjs";
import { createHost, loadPlugin, withLogLines } from "./helpers/opencode2-host.mjs";
import { rateLimitHeaders } from "./helpers/mock-anthropic.mjs";
import { body, oauthEntry, tempPoolPath, useMock, withEnv } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";

const mock = useMock();
const here = dirname(fileURLToPath(import.meta.url));
const CLI = join(here, "..", "bin", "oauth-pool.mjs");
const DRIVER = join(here, "helpers", "secret-driver.mjs");
const tmp = tempDir("oauth-pool-names-");
after(() => rmSync(tmp, { recursive: true, force: true }));

const credential = (kind) => [["sk", "ant", kind].join("-"), randomBytes(18).toString("hex")].join("-");

/** A pool whose first entry is a login named `team <token>` and whose second a key named with itself. */
async function poolOfCredentialNames({ enabled = true } = {}) {
  const token = credential("oat01");
  const key = credential("api03");
  const login = `team ${token}`;
  mock.addApiKey(key, key);
  const path = tempPoolPath();
  const anthropic = [
    { ...oauthEntry(mock, login), priority: 9, ...(enabled ? {} : { enabled: false }) },
    { email: key, type: "api", key, status: "idle", rateLimitUntil: null, priority: 1, ...(enabled ? {} : { enabled: false }) },
  ];
  await lib.savePool({ version: 1, anthropic }, path);
  return { path, login, key, secrets: [token, key, token.slice(-16), key.slice(-16)] };
}

function assertNone(places, secrets) {
  const found = [];
  for (const [where, text] of Object.entries(places)) {
    for (const s of secrets) if (text.includes(s)) found.push(`${where}: …${text.slice(Math.max(0, text.indexOf(s) - 120), text.indexOf(s) + 20)}…`);
  }
  assert.deepEqual(found, [], found.join("\n\n"));
}

function run(args, { env = {}, input } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, cwd: tmp, stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 90_000);
    child.stdout.setEncoding("utf8").on("data", (d) => {
      out += d;
      input?.(out, child);
    });
    child.stderr.setEncoding("utf8").on("data", (d) => (err += d));
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
    if (!input) child.stdin.end();
  });
}

test("the CLI's list, status and doctor show a name holding a credential without it, with the #N its commands take", async () => {
  const { path, key, secrets } = await poolOfCredentialNames();
  // doctor names a Console key entry whose key is missing; the key is still in its name.
  const pool = await lib.loadPool(path);
  delete pool.anthropic[1].key;
  await lib.savePool(pool, path);
  const views = {};
  for (const args of [["list"], ["status"], ["doctor"], ["doctor", "--json"]]) {
    const r = await run([CLI, ...args, "--path", path], { env: { OAUTH_POOL_LOG: "oauth_pool=trace" } });
    // doctor --json: its messages are prose for a person; its fields (email) data, as list --json's.
    views[args.join(" ")] =
      args[1] === "--json"
        ? JSON.parse(r.out.trim().split("\n").at(-1))
            .checks.map((c) => c.message)
            .join("\n") + r.err
        : r.out + r.err;
  }
  assertNone(views, secrets);
  assert.match(views.list, /team \[redacted\] \(#0\)/, views.list);
  assert.match(views.list, /\[redacted\] \(#1\)/, views.list);
  assert.match(views.status, /team \[redacted\] \(#0\) \(oauth/, views.status);
  assert.match(views.doctor, /\[redacted\] is an API-key account, but no key is stored for it/, views.doctor);
  // The index the list shows is one its commands take.
  const disabled = await run([CLI, "disable", "#1", "--path", path]);
  assert.equal(disabled.code, 0, disabled.err);
  assertNone({ "disable #1": disabled.out + disabled.err }, secrets);
  assert.equal((await lib.listAccounts(path))[1].enabled, false);
  // --json is data for scripts, which act on the exact name (and own the file that holds it).
  const json = await run([CLI, "list", "--json", "--path", path]);
  assert.equal(JSON.parse(json.out).accounts[1].email, key);
});

test("the pool's own POOL_NO_ACCOUNT names accounts whose names hold a credential without it", async () => {
  const { path, secrets } = await poolOfCredentialNames({ enabled: false });
  const f = lib.createPoolFetch({ path });
  const err = await f(`${mock.url}/v1/messages`, {
    method: "POST",
    headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
    body: body(),
  }).then(
    () => assert.fail("no account is usable"),
    (e) => e,
  );
  assert.equal(err.code, "POOL_NO_ACCOUNT");
  assertNone({ message: err.message }, secrets);
  assert.match(err.message, /team \[redacted\] \(disabled\), \[redacted\] \(disabled\)/);
});

test("the gateway's answers, its own 429, its /metrics labels and the log show names holding a credential without it", async () => {
  const { path, login, key, secrets } = await poolOfCredentialNames();
  const gatewayKey = randomBytes(24).toString("hex");
  // The login's 429 moves the first request to the key (a failover line naming both, a window
  // for /metrics); the key's own 429 then leaves every account cooling: the pool answers 429.
  mock.script(login, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  mock.script(key, [{ status: 200 }, { status: 429, headers: { "retry-after": "600" } }]);
  const told = [];
  const r = await run([DRIVER, "serve", path], {
    env: { OAUTH_POOL_LOG: "oauth_pool=trace", OAUTH_POOL_GATEWAY_KEY: gatewayKey },
    input: (out, child) => {
      if (told.length || !out.includes("\n")) return;
      const { url } = JSON.parse(out.split("\n")[0]);
      told.push(
        (async () => {
          const answers = [];
          for (let i = 0; i < 3; i++) {
            const res = await fetch(`${url}/v1/messages`, {
              method: "POST",
              headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": gatewayKey },
              body: body(),
            });
            answers.push({ status: res.status, text: await res.text() });
          }
          const metrics = await (await fetch(`${url}/metrics`, { headers: { "x-api-key": gatewayKey } })).text();
          child.stdin.end();
          return { answers, metrics };
        })(),
      );
    },
  });
  assert.equal(r.code, 0, r.err.slice(-2000));
  const { answers, metrics } = await told[0];
  assert.deepEqual(
    answers.map((a) => a.status),
    [200, 429, 429],
    JSON.stringify(answers),
  );
  assertNone({ "the log": r.err, answers: JSON.stringify(answers), metrics }, secrets);
  assert.match(answers[2].text, /\(team \[redacted\]\)|\(\[redacted\]\)/, answers[2].text);
  assert.match(metrics, /account="team \[redacted\] \(#0\)",window="5h"/, metrics);
  assert.match(r.err, /\[redacted\]/, "the log did name the accounts");
});

test("OpenCode 2: a connection's needs-login text and the log lines name an account whose name holds a credential without it", async () => {
  const path = tempPoolPath();
  const host = createHost({ sleep: async () => {}, random: () => 0.5 });
  const handle = await host.start(loadPlugin(pluginModule, { options: { path } }));
  const name = `team ${credential("oat01")}`;
  // The person labelled the connection so; the pool file names the account so too (by hand).
  const attempt = await host.oauthConnect({ integrationID: "anthropic-pool", methodID: "claude-max", label: name });
  await host.oauthComplete({ integrationID: "anthropic-pool", attemptID: attempt.attemptID, code: mock.approve(attempt.url, "named1@x.test") });
  await lib.flushPool(path);
  const pool = await lib.loadPool(path);
  pool.anthropic[0].email = name;
  await lib.savePool(pool, path);
  mock.revoke("named1@x.test", { family: true });
  const lines = await withLogLines(async (lines) => {
    await host
      .modelRequest({ providerID: "anthropic-pool", modelID: "claude-sonnet-4-5", body: { messages: [{ role: "user", content: "hi" }] } })
      .catch(() => {});
    await lib.flushPool(path);
    const marked = () => host.connections("anthropic-pool").filter((c) => c.status?.status === "needs_auth");
    for (let i = 0; i < 50 && marked().length < 1; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(marked().length, 1, "the account was marked");
    return [...lines, ...marked().map((c) => c.status.message)];
  });
  assertNone({ "the host's log and the connection's status": lines.join("\n") }, [name.slice(5), name.slice(-16)]);
  assert.ok(
    lines.some((l) => l.startsWith("team [redacted] needs a new login")),
    lines.join("\n"),
  );
  await handle.unload();
});

/** Every `oauth-pool ...` command `text` suggests, up to the end of its clause. */
const suggested = (text) => [...text.matchAll(/oauth-pool [^\n;()]*/g)].map((m) => m[0].trim());

test("doctor's suggested commands name an account whose name holds a credential by its #N, and each runs", async () => {
  const { path, secrets } = await poolOfCredentialNames();
  const pool = await lib.loadPool(path);
  // A reserve written as a percent, a key that is not stored, and the login twice (its copy
  // named with a credential too): each has a command to fix it.
  pool.anthropic.push({ ...pool.anthropic[0], email: `ops ${credential("oat01")}` });
  pool.anthropic[0].reserve = 20;
  delete pool.anthropic[1].key;
  await lib.savePool(pool, path);
  secrets.push(pool.anthropic[2].email.slice(4));
  const doctor = await run([CLI, "doctor", "--path", path]);
  assertNone({ doctor: doctor.out + doctor.err }, secrets);
  const commands = suggested(doctor.out);
  assert.ok(commands.length > 0, doctor.out);
  const naming = commands.filter((c) => /^oauth-pool (remove|enable|reserve)\b/.test(c));
  for (const c of naming) assert.doesNotMatch(c, /redacted/, `a suggestion that cannot be run: ${c}\n${doctor.out}`);
  assert.ok(naming.includes("oauth-pool reserve '#0' 0.2"), doctor.out);
  assert.ok(
    naming.some((c) => /^oauth-pool remove '#[02]'$/.test(c)),
    doctor.out,
  );
  // add-key refuses a name holding a credential: the key goes in under a new name instead.
  assert.match(doctor.out, /oauth-pool remove '#1', then oauth-pool add-key --email <a name>/, doctor.out);
  // What doctor suggests does what it says.
  const reserve = await run([CLI, "reserve", "#0", "0.2", "--path", path]);
  assert.equal(reserve.code, 0, reserve.err);
  assert.equal((await lib.loadPool(path)).anthropic[0].reserve, 0.2);
  // Every account disabled: doctor says which to enable, by its place.
  for (const place of ["#0", "#1", "#2"]) await lib.setEnabled(place, false, path);
  const off = await run([CLI, "doctor", "--path", path]);
  assertNone({ doctor: off.out + off.err }, secrets);
  const enable = suggested(off.out).find((c) => c.startsWith("oauth-pool enable"));
  assert.equal(enable, "oauth-pool enable '#0'", off.out);
  const enabled = await run([CLI, "enable", "#0", "--path", path]);
  assert.equal(enabled.code, 0, enabled.err);
  assert.equal((await lib.listAccounts(path))[0].enabled, true);
});

test("the OpenCode 1.18 tool's list and status show a name holding a credential with the #N its actions take", async () => {
  const { path, secrets } = await poolOfCredentialNames();
  const tool = lib.createPoolTool({}, { path });
  const answers = {};
  for (const action of ["list", "status"]) answers[action] = await tool.execute({ action }, {});
  answers.unknown = await tool.execute({ action: "enable", email: "nobody@x.test" }, {});
  assertNone(answers, secrets);
  assert.match(answers.list, /^#0 team \[redacted\] \[Claude login\]/m, answers.list);
  assert.match(answers.list, /^#1 \[redacted\] \[API key\]/m, answers.list);
  assert.match(answers.status, /^ {2}team \[redacted\] \(#0\): /m, answers.status);
  assert.match(answers.status, /^ {2}\[redacted\] \(#1\): /m, answers.status);
  assert.match(answers.unknown, /Accounts in the pool: team \[redacted\] \(#0\), \[redacted\] \(#1\)\./, answers.unknown);
  // The #N shown is the one the tool's actions take.
  const disabled = await tool.execute({ action: "disable", email: "#1" }, {});
  assert.match(disabled, /^Disabled \[redacted\] \(#1\)/, disabled);
  assert.equal((await lib.listAccounts(path))[1].enabled, false);
});

test("a remove the tool cannot ask about names the account to remove in a terminal by its #N when its name holds a credential", async () => {
  const { path, key, secrets } = await poolOfCredentialNames();
  // The exact name, as a model that read the file might pass it.
  const answer = await lib.createPoolTool({}, { path }).execute({ action: "remove", email: key }, {});
  assertNone({ answer }, secrets);
  assert.match(answer, /the person runs in a terminal: oauth-pool remove '#1'$/m, answer);
  // Quoted: unquoted, a shell reads `#1` as a comment, and `enable` met no account at all.
  assert.match(answer, /`enable '#1'` undoes this/, answer);
  assert.equal((await lib.listAccounts(path))[1].enabled, false, "disabled instead");
});

test("the tool's answers are scrubbed by the shared rule of lib/printable.mjs: credentials and URL queries left out", async () => {
  const { withoutSecrets } = await import("../lib/printable.mjs");
  const { path, secrets } = await poolOfCredentialNames();
  const pool = await lib.loadPool(path);
  const query = randomBytes(8).toString("hex");
  pool.anthropic[0].status = "auth-error";
  pool.anthropic[0].lastError = `refused at https://auth.example.test/cb?code=${query}`;
  await lib.savePool(pool, path);
  const list = await lib.createPoolTool({}, { path }).execute({ action: "list" }, {});
  assertNone({ list }, [...secrets, query]);
  assert.match(list, /refused at https:\/\/auth\.example\.test\/cb/, list);
  assert.equal(withoutSecrets(`a https://h.test/p?k=${query} b`).includes(query), false);
  // One rule: the tool has no scrubber of its own to drift from the shared one.
  const source = readFileSync(join(here, "..", "lib", "plugin", "tool.mjs"), "utf8");
  assert.doesNotMatch(source, /scrubMessage|scrubTokens|nativeBinding/);
});

test("the gateway's /metrics gives two accounts whose names are both a credential two series, each labelled by its #N", async () => {
  const first = credential("api03");
  const second = credential("api03");
  mock.addApiKey(first, first);
  mock.addApiKey(second, second);
  const path = tempPoolPath();
  const entry = (key, priority) => ({ email: key, type: "api", key, status: "idle", rateLimitUntil: null, priority });
  await lib.savePool({ version: 1, anthropic: [entry(first, 9), entry(second, 1)] }, path);
  // The first's 429 moves the request to the second: a window seen for each.
  mock.script(first, [{ status: 429, headers: rateLimitHeaders({ retryAfter: 600 }) }]);
  const gatewayKey = randomBytes(24).toString("hex");
  await withEnv({ OAUTH_POOL_GATEWAY_KEY: gatewayKey }, async () => {
    const gw = await lib.serve({ port: 0, path });
    try {
      const res = await fetch(`${gw.url}/v1/messages`, {
        method: "POST",
        headers: { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": gatewayKey },
        body: body(),
      });
      assert.equal(res.status, 200);
      await res.text();
      const metrics = await (await fetch(`${gw.url}/metrics`, { headers: { "x-api-key": gatewayKey } })).text();
      assertNone({ metrics }, [first.slice(-16), second.slice(-16), first, second]);
      const series = metrics.split("\n").filter((l) => l.startsWith("oauth_pool_window_utilization{") && l.includes('window="5h"'));
      assert.deepEqual(series.map((l) => /account="([^"]*)"/.exec(l)[1]).sort(), ["[redacted] (#0)", "[redacted] (#1)"], metrics);
    } finally {
      await gw.close(0);
    }
  });
});

test("a request bound to the account holding its file, which is then disabled, says to enable it by its #N when its name holds a credential", async () => {
  const { path, secrets } = await poolOfCredentialNames();
  await withEnv({ OAUTH_POOL_HOLD_MAX_MS: "30000", OAUTH_POOL_JITTER_MS: "0" }, async () => {
    const f = lib.createPoolFetch({ path });
    const headers = { "content-type": "application/json", "anthropic-version": "2023-06-01" };
    const made = await f(`${mock.url}/v1/files`, { method: "POST", headers, body: "file bytes" });
    const { id } = await made.json();
    const holder = made.poolAccount;
    const place = (await lib.listAccounts(path)).findIndex((a) => a.email === holder);
    await lib.flushPool(path);
    const at = `/v1/files/${id}/content`;
    mock.script(holder, [{ path: at, status: 429, headers: { "retry-after": "2" } }]);
    const asked = mock.waitFor("api", (r) => r.email === holder);
    const pending = f(`${mock.url}${at}`, { headers }).then(
      (r) => new Error(`answered ${r.status}`),
      (e) => e,
    );
    await asked;
    await lib.setEnabled(`#${place}`, false, path);
    const err = await pending;
    assert.equal(err.code, "POOL_NO_ACCOUNT", err.message);
    assertNone({ message: err.message }, secrets);
    assert.match(err.message, new RegExp(`is disabled: enable it \\(\`oauth-pool enable '#${place}'\` or the model-accounts-pool tool\\)`), err.message);
  });
});
