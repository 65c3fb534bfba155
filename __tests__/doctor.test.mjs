// `oauth-pool doctor` on the setups that go wrong for real users of OpenCode: a config that does
// not parse (and JSONC that does), the plugin not listed, listed under OpenCode 2's key or twice,
// a provider hidden or pointed elsewhere, a model of OpenCode's own `anthropic` provider or one
// the pool does not offer, the pool OpenCode's plugin would use, OpenCode's installed copy
// without its native binary, an empty or all-disabled pool, a lock held by a stopped process,
// and `--online` asking the endpoints (bounded). Each case runs the CLI as a child with its own
// HOME, XDG directories, pool and project directory (never the real ~/.aidevops or
// ~/.config/opencode); endpoints are the loopback mock or loopback servers of the test, and
// without `--online` doctor sends nothing anywhere. Runs under `node --test` and `bun test`.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, truncateSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { savePool } from "../index.mjs";
import { platformTriple } from "../lib/platform.mjs";
import { runCli } from "./helpers/cli-sandbox.mjs";
import { flockAvailable, holdLock } from "./helpers/flock.mjs";
import { freePort } from "./helpers/net.mjs";
import { startMockAnthropic } from "./helpers/mock-anthropic.mjs";
import { oauthEntry } from "./helpers/pool-env.mjs";
import { tempDir } from "./helpers/temp.mjs";
import { stopProcess } from "./helpers/stop.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
const TRIPLE = platformTriple();
const tmp = tempDir("oauth-pool-doctor-");
let mock;
before(async () => {
  mock = await startMockAnthropic();
});
after(async () => {
  await mock?.close();
  rmSync(tmp, { recursive: true, force: true });
});

// What of this machine's environment would change what doctor reports.
const SCRUBBED = /^(oauth_pool_|https?_proxy$|all_proxy$|no_proxy$|opencode_|xdg_)/i;

/** A user of their own: HOME, XDG config and cache, a project (a git root) and a pool path. */
function user() {
  const dir = mkdtempSync(join(tmp, "user-"));
  const home = join(dir, "home");
  const box = {
    dir,
    home,
    global: join(home, ".config", "opencode"),
    cache: join(home, ".cache"),
    project: join(dir, "project"),
    pool: join(dir, "pool", "oauth-pool.json"),
  };
  for (const d of [box.global, box.cache, join(box.project, ".git")]) mkdirSync(d, { recursive: true });
  return box;
}

const write = (file, text) => {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, typeof text === "string" ? text : JSON.stringify(text));
};

async function seed(box, entries) {
  await savePool({ version: 1, anthropic: entries.map(({ email, ...extra }) => oauthEntry(mock, email, extra)) }, box.pool);
}

/** The environment of that user's CLI, in `cwd`. */
function userEnv(box, env = {}, cwd = box.project) {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !SCRUBBED.test(k)));
  const childEnv = {
    ...base,
    HOME: box.home,
    USERPROFILE: box.home,
    XDG_CONFIG_HOME: join(box.home, ".config"),
    XDG_CACHE_HOME: box.cache,
    OAUTH_POOL_PATH: box.pool,
    OAUTH_POOL_API_URL: mock.url,
    OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
    PWD: cwd,
    ...env,
  };
  for (const [k, v] of Object.entries(childEnv)) if (v === undefined) delete childEnv[k];
  return childEnv;
}

/** `oauth-pool doctor --json` as that user, in their project: exit code, checks, and the text. */
async function doctor(box, { env = {}, args = [], cwd = box.project, text = false } = {}) {
  const childEnv = userEnv(box, env, cwd);
  const run = (args) => runCli(["doctor", ...args], { env: childEnv, cwd });
  const r = await run(["--json", ...args]);
  assert.notEqual(r.code, "SIGKILL", "doctor did not finish within a minute");
  const doc = JSON.parse(r.stdout.trim().split("\n").at(-1));
  const out = {
    code: r.code,
    checks: doc.checks,
    named: (name) => doc.checks.filter((c) => c.name === name),
    shown: JSON.stringify(
      doc.checks.filter((c) => c.level !== "ok"),
      null,
      1,
    ),
  };
  if (text) out.text = (await run(args)).stdout;
  return out;
}

const PLUGIN = ["opencode-oauth-pool"];

test("doctor: an OpenCode config that does not parse is a problem naming the line; comments, trailing commas, an empty file and {env:} are read", async () => {
  const box = user();
  await seed(box, [{ email: "parse@x.test" }]);
  write(
    join(box.global, "opencode.jsonc"),
    `{
  // the pool, "quoted" in a comment, and a URL: http://example.invalid/x
  "plugin": ["opencode-oauth-pool",], /* a block comment */
  "provider": { "anthropic-pool": { "options": { "baseURL": "{env:POOL_BASE}" } } },
}`,
  );
  write(join(box.project, "opencode.json"), "");
  const env = { POOL_BASE: `${mock.url}/v1` };
  const fine = await doctor(box, { env });
  assert.deepEqual(fine.named("opencode config"), [], fine.shown);
  assert.deepEqual(fine.named("provider"), [], "the {env:} baseURL is the pool's own");
  assert.equal(fine.named("opencode plugin")[0]?.level, "ok", fine.shown);
  assert.equal(fine.code, 0, fine.shown);

  // A missing comma: OpenCode 1.18 refuses to start ("Config file at … is not valid JSON(C)").
  write(join(box.project, ".opencode", "opencode.json"), '{ "plugin": ["opencode-oauth-pool"]\n  "model": "x" }');
  const broken = await doctor(box, { env, text: true });
  assert.equal(broken.code, 3, broken.shown);
  const [problem] = broken.named("opencode config");
  assert.equal(problem?.level, "problem", broken.shown);
  assert.match(problem.message, /\.opencode\/opencode\.json is not valid JSON with comments .*OpenCode refuses to start/);
  // The place is found by doctor itself: Node's JSON.parse names it for some faults only, Bun's
  // for none (the CLI runs on this runtime).
  assert.match(problem.message, /unexpected '"' at line 2, column 3/);
  assert.match(broken.text, /^FAIL {2}opencode config /m);

  // Faults Node's parser gives no place for ("Unexpected token"), and whose message quoted the
  // text around them: the start of a secret left unquoted. The place, one character, no more.
  const secretStart = ["Sup3r", "Secret", "Value"].join("");
  for (const [text, where] of [
    [`{\n  "model": 'anthropic/claude'\n}`, /unexpected ''' at line 2, column 12/],
    [`{\n  "apiKey": ${secretStart}\n}`, /unexpected 'S' at line 2, column 13/],
    [`{ "plugin": ["opencode-oauth-pool"] }\n}`, /unexpected '}' at line 2, column 1/],
    [`{ "plugin": ["opencode-oauth-pool"`, /the text ends where more was expected at line 1, column 35/],
  ]) {
    write(join(box.project, ".opencode", "opencode.json"), text);
    const said = (await doctor(box, { env, text: true })).named("opencode config")[0]?.message ?? "";
    assert.match(said, where, text);
    assert.ok(!said.includes(secretStart.slice(0, 4)), said);
  }

  const content = await doctor(box, { env: { ...env, OPENCODE_CONFIG_CONTENT: '{"plugin": [' } });
  assert.ok(
    content.named("opencode config").some((c) => c.file === "OPENCODE_CONFIG_CONTENT"),
    content.shown,
  );
});

test("doctor: the plugin not listed, listed only under OpenCode 2's `plugins`, loaded twice under two names, an entry a later one replaces", async () => {
  const box = user();
  await seed(box, [{ email: "listed@x.test" }]);
  // Another plugin only: OpenCode offers no anthropic-pool provider.
  write(join(box.global, "opencode.json"), { plugin: ["some-other-plugin"] });
  let d = await doctor(box);
  let [c] = d.named("opencode plugin");
  assert.equal(c?.level, "warn", d.shown);
  assert.match(c.message, /no OpenCode config here lists the plugin .*add "plugin": \["opencode-oauth-pool"\] to .*opencode\.json/);

  // A host plugin that composes the pool (opencode-aidevops) is not called missing.
  write(join(box.global, "opencode.json"), { plugin: ["opencode-aidevops@1.2.3"] });
  d = await doctor(box);
  [c] = d.named("opencode plugin");
  assert.equal(c?.level, "info", d.shown);
  assert.match(c.message, /opencode-aidevops@1\.2\.3 .* may load the pool itself/);

  // OpenCode 1.x reads `plugin`; `plugins` alone loads nothing there.
  write(join(box.global, "opencode.json"), { plugins: PLUGIN });
  d = await doctor(box);
  [c] = d.named("opencode plugin");
  assert.equal(c?.level, "warn", d.shown);
  assert.match(c.message, /under "plugins", OpenCode 2's key: OpenCode 1\.x reads only "plugin"/);
  write(join(box.global, "opencode.json"), { plugin: PLUGIN, plugins: PLUGIN });
  assert.equal((await doctor(box)).named("opencode plugin")[0]?.level, "ok");

  // The global entry is replaced by the project's (same package): its options do not apply.
  // A checkout named by a file URL is another name: two copies load.
  write(join(box.global, "opencode.json"), { plugin: [["opencode-oauth-pool", { path: box.pool }]] });
  write(join(box.project, "opencode.json"), { plugin: [`opencode-oauth-pool@${PKG.version}`, pathToFileURL(join(ROOT, "plugin.mjs")).href] });
  d = await doctor(box);
  const notUsed = d.named("plugin options").find((x) => x.file === join(box.global, "opencode.json"));
  assert.equal(notUsed?.level, "info", d.shown);
  assert.match(notUsed.message, /not used: OpenCode keeps one entry per plugin, the last it reads, which is .*project\/opencode\.json \(opencode-oauth-pool@/);
  [c] = d.named("opencode plugin");
  assert.equal(c?.level, "warn", d.shown);
  assert.match(c.message, /OpenCode loads the plugin 2 times, under different names: .*keep one entry/);
});

test("doctor: plugin options that are not an object (a pool path as a string) are a problem OpenCode does not load, not options taken as written", async () => {
  const box = user();
  await seed(box, [{ email: "options@x.test" }]);
  write(join(box.global, "opencode.json"), { plugin: [["opencode-oauth-pool", box.pool]] });
  const d = await doctor(box);
  const [row] = d.named("plugin options");
  assert.equal(row?.level, "problem", d.shown);
  assert.match(row.message, /plugin options must be an object .*got ".*": OpenCode does not load the plugin/);
});

test("doctor: a provider OpenCode hides, a baseURL off the pool's API or without /v1, another SDK package", async () => {
  const box = user();
  await seed(box, [{ email: "provider@x.test" }]);
  const file = join(box.global, "opencode.json");
  const problems = async (config) => {
    write(file, { plugin: PLUGIN, ...config });
    const d = await doctor(box);
    return { d, rows: d.named("provider") };
  };

  let { d, rows } = await problems({ disabled_providers: ["anthropic-pool"] });
  assert.equal(d.code, 3, d.shown);
  assert.match(rows[0]?.message ?? "", /"disabled_providers" lists "anthropic-pool": OpenCode hides the pool's provider .*remove it from that list/);
  ({ rows } = await problems({ enabled_providers: ["anthropic", "openai"] }));
  assert.match(rows[0]?.message ?? "", /"enabled_providers" leaves out "anthropic-pool".*add "anthropic-pool" to it/);

  const setting = (baseURL, npm) => ({ provider: { "anthropic-pool": { ...(npm ? { npm } : {}), options: { baseURL } } } });
  ({ d, rows } = await problems(setting("https://api.anthropic.com/v1")));
  assert.equal(rows[0]?.level, "problem", d.shown);
  assert.match(rows[0].message, /baseURL is https:\/\/api\.anthropic\.com, not the pool's API origin .*INSECURE_ENDPOINT.*remove options\.baseURL/);
  assert.match(rows[0].message, /or set OAUTH_POOL_API_URL=https:\/\/api\.anthropic\.com to pool through that origin/);
  // Found by a review: plain http off loopback was offered as OAUTH_POOL_API_URL, which the
  // pool then refuses (plain http only to a loopback host).
  ({ rows } = await problems(setting("http://proxy.corp.example/v1")));
  assert.equal(rows[0]?.level, "problem");
  assert.doesNotMatch(rows[0].message, /OAUTH_POOL_API_URL/);
  ({ rows } = await problems(setting(mock.url)));
  assert.match(rows[0]?.message ?? "", /OpenCode sends to .*\/messages, which the API does not serve \(404/);
  ({ d, rows } = await problems(setting(`${mock.url}/v1/`)));
  assert.deepEqual(rows, [], "the pool's own base URL is fine");
  ({ rows } = await problems(setting(`${mock.url}/v1`, "@ai-sdk/openai-compatible")));
  assert.equal(rows[0]?.level, "warn");
  assert.match(rows[0].message, /npm is "@ai-sdk\/openai-compatible".*remove "npm"/);
  ({ rows } = await problems(setting(`${mock.url}/v1`, "@ai-sdk/anthropic")));
  assert.deepEqual(rows, []);

  // With `provider: "anthropic"` the pool serves OpenCode's own provider: anthropic-pool is not
  // expected, and anthropic/... models are the pool's.
  write(file, { plugin: [["opencode-oauth-pool", { provider: "anthropic" }]], disabled_providers: ["anthropic-pool"], model: "anthropic/claude-sonnet-4-5" });
  d = await doctor(box);
  assert.deepEqual(d.named("provider"), [], d.shown);
  assert.deepEqual(d.named("model setting"), [], d.shown);
});

test("doctor: a model of OpenCode's own anthropic provider warns, one the pool does not offer is a problem; the catalog cache decides what it offers", async () => {
  const box = user();
  await seed(box, [{ email: "models@x.test" }]);
  write(join(box.global, "opencode.json"), {
    plugin: PLUGIN,
    model: "anthropic-pool/claude-sonnet-9",
    small_model: "anthropic/claude-haiku-4-5",
    agent: { build: { model: "anthropic-pool/claude-sonnet-4-5" }, plan: { model: "anthropic/claude-opus-4-5" } },
  });
  let d = await doctor(box);
  const rows = d.named("model setting");
  const missing = rows.find((r) => r.key === "model");
  assert.equal(missing?.level, "problem", d.shown);
  assert.match(missing.message, /the pool's provider has no model "claude-sonnet-9" \(OpenCode: "Model not found"\); it has claude-sonnet-/);
  for (const key of ["small_model", "agent.plan.model"]) {
    const own = rows.find((r) => r.key === key);
    assert.equal(own?.level, "warn", d.shown);
    assert.match(own.message, /is OpenCode's own Anthropic provider: the pool serves none of its requests .*write "anthropic-pool\/claude-/);
  }
  assert.ok(!rows.some((r) => r.key === "agent.build.model"), "a model the pool offers is fine");
  assert.match(d.named("models")[0]?.message ?? "", /catalog cache .*models\.json does not exist .*built-in table/);

  // OpenCode's catalog cache knows the model: the pool mirrors it.
  const cache = join(box.cache, "opencode", "models.json");
  write(cache, { anthropic: { models: { "claude-sonnet-9": { name: "Claude Sonnet 9" } } } });
  d = await doctor(box);
  assert.ok(!d.named("model setting").some((r) => r.key === "model"), d.shown);
  assert.match(d.named("models")[0]?.message ?? "", /^1 Anthropic model from OpenCode's catalog cache/);
  // One the person declared under the provider is offered too.
  write(cache, "{ not json");
  write(join(box.global, "opencode.json"), {
    plugin: PLUGIN,
    model: "anthropic-pool/claude-sonnet-9",
    provider: { "anthropic-pool": { models: { "claude-sonnet-9": { name: "mine" } } } },
  });
  d = await doctor(box);
  assert.deepEqual(d.named("model setting"), [], d.shown);
  assert.equal(d.named("models")[0]?.level, "warn");
  assert.match(d.named("models")[0].message, /does not parse: .*delete the file/);
});

test("doctor: the pool OpenCode's plugin uses: its path option, OAUTH_POOL_PATH set in this shell only, a relative OAUTH_POOL_PATH", async () => {
  const box = user();
  await seed(box, [{ email: "where@x.test" }]);
  const other = join(box.dir, "elsewhere", "pool.json");
  write(join(box.global, "opencode.json"), { plugin: [["opencode-oauth-pool", { path: other }]] });
  let d = await doctor(box);
  let [c] = d.named("opencode pool");
  assert.equal(c?.level, "warn", d.shown);
  assert.ok(c.message.includes(`OpenCode's plugin uses ${other}`) && c.message.includes(`oauth-pool doctor --path ${other}`), c.message);

  write(join(box.global, "opencode.json"), { plugin: [["opencode-oauth-pool", { path: box.pool }]] });
  assert.equal((await doctor(box)).named("opencode pool")[0]?.level, "ok");

  // No path option: OpenCode started without this shell's OAUTH_POOL_PATH uses the default.
  write(join(box.global, "opencode.json"), { plugin: PLUGIN });
  d = await doctor(box);
  [c] = d.named("opencode pool");
  assert.equal(c?.level, "info", d.shown);
  const fallback = join(box.home, ".aidevops", "oauth-pool.json");
  assert.ok(c.message.includes(`it uses ${fallback}`), c.message);
  write(fallback, { anthropic: [] });
  [c] = (await doctor(box)).named("opencode pool");
  assert.equal(c?.level, "warn");
  assert.match(c.message, /which exists too: two pools; to make it the same everywhere, give the plugin \["opencode-oauth-pool", \{ "path": /);

  // A relative OAUTH_POOL_PATH is a pool per working directory.
  d = await doctor(box, { env: { OAUTH_POOL_PATH: "pool.json" } });
  const relative = d.named("path").find((x) => x.level === "warn");
  assert.match(relative?.message ?? "", /OAUTH_POOL_PATH=pool\.json is a relative path: .*give the whole path: OAUTH_POOL_PATH=\//, d.shown);
});

test("doctor: OpenCode's installed copy of the plugin without its native binary is a problem, an older one is named, a local plugin that is not there is a problem", async () => {
  const box = user();
  await seed(box, [{ email: "copy@x.test" }]);
  write(join(box.global, "opencode.json"), { plugin: PLUGIN });
  let [c] = (await doctor(box)).named("plugin install");
  assert.equal(c?.level, "info");
  assert.match(c.message, /OpenCode has not installed opencode-oauth-pool yet/);

  // Where OpenCode 1.18 installs it: <cache>/opencode/packages/<spec>/node_modules/<name>.
  const root = join(box.cache, "opencode", "packages", "opencode-oauth-pool");
  const modules = join(root, "node_modules");
  write(join(modules, "opencode-oauth-pool", "package.json"), { name: "opencode-oauth-pool", version: "0.0.1" });
  let d = await doctor(box);
  [c] = d.named("plugin install");
  assert.equal(c?.level, "problem", d.shown);
  assert.equal(d.code, 3);
  assert.ok(c.message.includes(`has no native binary for ${TRIPLE}`) && c.message.includes(`rm -rf ${root}`), c.message);

  const platform = join(modules, `opencode-oauth-pool-${TRIPLE}`);
  const manifest = JSON.parse(readFileSync(join(ROOT, "npm", TRIPLE, "package.json"), "utf8"));
  write(join(platform, "package.json"), manifest);
  write(join(platform, manifest.main), "version https://git-lfs.github.com/spec/v1\n");
  if (process.platform === "linux") {
    [c] = (await doctor(box)).named("plugin install");
    assert.equal(c?.level, "problem");
    assert.match(c.message, /cannot load its native binary .*a text file/);
  }
  const built = join(ROOT, `oauth-pool.${TRIPLE}.node`);
  if (existsSync(built)) {
    rmSync(join(platform, manifest.main));
    symlinkSync(built, join(platform, manifest.main));
    d = await doctor(box);
    [c] = d.named("plugin install");
    assert.equal(c?.level, "info", d.shown);
    assert.ok(c.message.includes(`OpenCode runs opencode-oauth-pool 0.0.1`) && c.message.includes(`rm -rf ${root}`), c.message);
  }

  // A file URL whose directory is named like ours is ours even when it is gone.
  write(join(box.global, "opencode.json"), { plugin: [pathToFileURL(join(box.dir, "opencode-oauth-pool", "plugin.mjs")).href] });
  [c] = (await doctor(box)).named("plugin install");
  assert.equal(c?.level, "problem");
  assert.match(c.message, /opencode-oauth-pool\/plugin\.mjs, which does not exist: OpenCode cannot load it/);
});

test("doctor: an empty pool and a pool whose accounts are all disabled say so, with the command that fixes it", async () => {
  const box = user();
  let [c] = (await doctor(box)).named("accounts");
  assert.equal(c?.level, "warn", "no pool file yet");
  assert.match(c.message, /the pool has no account, so every request fails \(POOL_NO_ACCOUNT\): add .*oauth-pool add/);
  await savePool({ version: 1, anthropic: [] }, box.pool);
  [c] = (await doctor(box)).named("accounts");
  assert.match(c?.message ?? "", /the pool has no account/);

  await seed(box, [
    { email: "off1@x.test", status: "disabled", enabled: false },
    { email: "off2@x.test", status: "disabled", enabled: false },
  ]);
  [c] = (await doctor(box)).named("accounts");
  assert.equal(c?.level, "warn");
  assert.match(c.message, /every account is disabled, so every request fails .*oauth-pool enable off1@x\.test/);
});

test("doctor: an auth-error another program wrote is told as list tells it (the pool tries the login again), not as a login to make again", async () => {
  const box = user();
  await seed(box, [{ email: "theirs@x.test", status: "auth-error" }, { email: "other@x.test" }]);
  const d = await doctor(box, { text: true });
  const lines = d.named("account").filter((c) => /theirs@x\.test/.test(c.message));
  assert.deepEqual(
    lines.map((c) => [c.level, c.message]),
    [["info", "theirs@x.test: auth-error marked by another program; the pool tries this login again at its next request"]],
    d.shown,
  );
  assert.doesNotMatch(d.text, /theirs@x\.test needs a new login/);
  // One with no token to present again does need a login, as list says.
  await savePool({ version: 1, anthropic: [{ email: "notoken@x.test", status: "auth-error", added: new Date().toISOString() }] }, box.pool);
  const bare = await doctor(box);
  assert.ok(
    bare.named("account").some((c) => c.level === "warn" && /^notoken@x\.test needs a new login/.test(c.message)),
    bare.shown,
  );
});

test("doctor: entries with nothing to send (tokens never written, a Console key under another field) are named with what each needs, not only 'no account usable'", async () => {
  const box = user();
  await savePool(
    {
      version: 1,
      anthropic: [
        { email: "nolog@x.test", status: "idle", added: new Date().toISOString() },
        { email: "keyed@x.test", type: "api", status: "idle", apiKey: "fake-console-key-doctor-misplaced-0123456789" },
      ],
    },
    box.pool,
  );
  const d = await doctor(box, { text: true });
  const accounts = d.named("account").map((c) => c.message);
  assert.ok(
    accounts.some((m) => /^nolog@x\.test has no token .*log in again with: oauth-pool add/.test(m)),
    d.shown,
  );
  assert.ok(
    accounts.some((m) =>
      /^keyed@x\.test is an API-key account, but its key is under "apiKey", which is not read .*oauth-pool add-key --email keyed@x\.test/.test(m),
    ),
    d.shown,
  );
  const [c] = d.named("accounts");
  assert.equal(c?.level, "warn");
  assert.match(c.message, /^no account is usable: all 2 have no token or key to send, so every request fails/);
  assert.doesNotMatch(d.shown + d.text, /doctor-misplaced/);
});

test("doctor: a reserve written by hand as a percent, a string or past 1 is named as not read, with the command that sets it", async () => {
  const box = user();
  await seed(box, [
    { email: "pct@x.test", reserve: 20 },
    { email: "str@x.test", reserve: "0.2" },
    { email: "neg@x.test", reserve: -1 },
    { email: "ok@x.test", reserve: 0.2 },
    { email: "none@x.test", reserve: 0 },
  ]);
  const d = await doctor(box, { text: true });
  const said = d.named("account").map((c) => c.message);
  const about = (email) => said.filter((m) => m.startsWith(`${email}: its reserve`));
  assert.match(
    about("pct@x.test")[0] ?? "",
    /its reserve 20 is not a share from 0 to 1 .*used to its limits; set it with: oauth-pool reserve pct@x\.test 0\.2$/,
    d.shown,
  );
  assert.match(about("str@x.test")[0] ?? "", /its reserve "0\.2" is not .*oauth-pool reserve str@x\.test 0\.2$/, d.shown);
  assert.match(about("neg@x.test")[0] ?? "", /oauth-pool reserve neg@x\.test <share from 0 to 1>$/, d.shown);
  assert.deepEqual([...about("ok@x.test"), ...about("none@x.test")], [], d.shown);
});

test("doctor: a pool directory that can never be made (HOME or a part of the path is a file) is a problem, not a pool that does not exist yet", async () => {
  const box = user();
  // A HOME that is a regular file: the default pool lives under it, and every command fails.
  const fileHome = join(box.dir, "home-file");
  writeFileSync(fileHome, "");
  let d = await doctor(box, { env: { HOME: fileHome, USERPROFILE: fileHome, OAUTH_POOL_PATH: undefined } });
  let [c] = d.named("directory");
  assert.equal(c?.level, "problem", d.shown);
  assert.match(
    c.message,
    /\.aidevops cannot be created: .*home-file is not a directory \(every command fails with POOL_IO; fix HOME, or set OAUTH_POOL_PATH\)/,
  );
  assert.equal(d.code, 3);
  assert.deepEqual(d.named("file"), [], "no 'does not exist yet' for a file that cannot be");
  assert.equal(d.named("accounts").length, 0);

  // OAUTH_POOL_PATH through a regular file, several levels below it.
  d = await doctor(box, { env: { OAUTH_POOL_PATH: join(fileHome, "a", "b", "oauth-pool.json") } });
  [c] = d.named("directory");
  assert.equal(c?.level, "problem", d.shown);
  assert.match(c.message, /home-file is not a directory .*point OAUTH_POOL_PATH elsewhere/);
  assert.equal(d.code, 3);
});

test("doctor: a pool directory that cannot be made where it would go (a read-only mount, a directory not ours) is a problem, not a pool that does not exist yet", {
  skip: process.platform === "win32" && "POSIX modes and mounts",
}, async (t) => {
  // It said "does not exist yet (created 0700 by the first write)", and every write (add,
  // add-key, the first refresh) then failed with POOL_IO.
  const box = user();
  const parent = mkdtempSync(join(box.dir, "unmakeable-"));
  let undo;
  if (process.getuid?.() === 0) {
    if (spawnSync("mount", ["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", parent]).status !== 0) return t.skip("mount is not allowed here");
    spawnSync("mount", ["-o", "remount,ro", parent]);
    undo = () => spawnSync("umount", ["-l", parent]);
  } else {
    chmodSync(parent, 0o500);
    undo = () => chmodSync(parent, 0o700);
  }
  try {
    const d = await doctor(box, { env: { OAUTH_POOL_PATH: join(parent, "pool", "oauth-pool.json") } });
    const [c] = d.named("directory");
    assert.equal(c?.level, "problem", d.shown);
    assert.match(
      c.message,
      /pool cannot be created: .*unmakeable-\S* (is on a read-only file system|cannot be written in \(EACCES\)) \(every command fails with POOL_IO; point OAUTH_POOL_PATH elsewhere\)/,
    );
    assert.equal(d.code, 3);
    assert.deepEqual(d.named("file"), [], "no 'does not exist yet' for a file that cannot be");
  } finally {
    undo();
  }
  // A directory that can be made is still one that does not exist yet.
  const d = await doctor(box, { env: { OAUTH_POOL_PATH: join(parent, "pool", "oauth-pool.json") } });
  assert.equal(d.named("directory")[0]?.level, "ok", d.shown);
});

// The Troubleshooting section sends people to doctor; on a pool directory behind a symbolic
// link that loops it ended with `error [ELOOP]` (a code of no table) and checked nothing.
test("doctor: a pool directory that is a symbolic link looping or leading nowhere, or a path through a loop, is a problem it reports, not a crash", {
  skip: process.platform === "win32" && "symbolic links need privileges on Windows",
}, async () => {
  const box = user();
  const loop = join(box.dir, "loop");
  symlinkSync(loop, loop);
  const dangling = join(box.dir, "dangling");
  symlinkSync(join(box.dir, "nothing-here"), dangling);
  for (const [dir, why] of [
    [loop, /loop is a symbolic link to nothing usable/],
    [dangling, /dangling is a symbolic link to nothing usable/],
    [join(loop, "sub"), /sub cannot be created: .*loop is a symbolic link that loops/],
  ]) {
    const d = await doctor(box, { env: { OAUTH_POOL_PATH: join(dir, "oauth-pool.json") } });
    const [c] = d.named("directory");
    assert.equal(c?.level, "problem", `${dir}: ${d.shown}`);
    assert.match(c.message, why);
    assert.equal(d.code, 3);
    assert.deepEqual([...d.named("file"), ...d.named("accounts")], [], `${dir}: no pool that merely does not exist yet`);
  }
});

// The lock is held by `flock(1)` (util-linux), stopped as Ctrl-Z stops a job.
const flock = flockAvailable;
test("doctor names a write lock's holder that is stopped, and how to resume it", { skip: !flock && "needs flock(1) on Linux" }, async () => {
  const box = user();
  await seed(box, [{ email: "stopped@x.test" }]);
  const holder = await holdLock(`${box.pool}.lock`);
  try {
    await stopProcess(holder.pid);
    const d = await doctor(box);
    const [lock] = d.named("lock");
    assert.equal(lock?.level, "problem", d.shown);
    assert.deepEqual(lock.stopped, [holder.pid]);
    assert.ok(lock.message.includes(`pid ${holder.pid} is stopped`) && lock.message.includes(`kill -CONT ${holder.pid}`), lock.message);
  } finally {
    process.kill(holder.pid, "SIGCONT");
    await holder.release();
  }
});

// Found by a review (2026-12-07, fourth): the holder's command line went into `--json` raw, a
// key given on it with it (the text said `[redacted]`). perl holds the lock: its third word is
// its program, where the key is.
const PERL = ["/usr/bin/perl", "/bin/perl"].find((p) => existsSync(p));
test("doctor --json says a lock holder's command line as its text does: a key on it is not printed", {
  skip: (!flock || !PERL) && "needs flock on Linux, and perl",
}, async () => {
  const box = user();
  await seed(box, [{ email: "held-by-key@x.test" }]);
  const lock = `${box.pool}.lock`;
  if (!existsSync(lock)) writeFileSync(lock, "", { mode: 0o600 });
  const tail = "Q7".repeat(40);
  const key = [["sk", "ant", "api03"].join("-"), tail].join("-");
  const program = `$| = 1; use Fcntl ":flock"; open(my $f, ">>", $ARGV[0]) or die; flock($f, LOCK_EX) or die; print "held\n"; <STDIN>; # KEY=${key}`;
  const holder = spawn(PERL, ["-e", program, lock], { stdio: ["pipe", "pipe", "ignore"] });
  const gone = new Promise((r) => holder.on("exit", r));
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.on("data", resolve);
      holder.on("exit", () => reject(new Error("perl ended without the lock")));
      setTimeout(() => reject(new Error("perl did not take the lock within 15 s")), 15_000).unref();
    });
    const d = await doctor(box, { text: true });
    const [held] = d.named("lock");
    assert.equal(held?.level, "problem", d.shown);
    assert.equal(held.holders[0].pid, holder.pid);
    assert.match(held.holders[0].command, /\[redacted\]/);
    assert.ok(!JSON.stringify(d.checks).includes(tail.slice(0, 20)), d.shown);
    assert.ok(!d.text.includes(tail.slice(0, 20)), d.text);
  } finally {
    holder.stdin.end();
    await gone;
  }
});

test("doctor --online asks each endpoint whether it answers, bounded; without it nothing is contacted", async () => {
  const box = user();
  await seed(box, [{ email: "online@x.test" }]);
  // A server that takes the connection and never answers (a dead load balancer).
  const sockets = new Set();
  const silent = createServer((s) => sockets.add(s));
  await new Promise((r) => silent.listen(0, "127.0.0.1", r));
  const silentUrl = `http://127.0.0.1:${silent.address().port}`;
  try {
    let d = await doctor(box, { env: { OAUTH_POOL_API_URL: silentUrl }, text: true });
    assert.deepEqual(d.named("reach"), []);
    assert.equal(sockets.size, 0, "doctor without --online sends nothing");
    assert.match(d.text, /endpoints not contacted: --online asks them/);

    d = await doctor(box, { args: ["--online"] });
    const ok = d.named("reach");
    assert.equal(ok.length, 2, d.shown);
    assert.ok(
      ok.every((c) => c.level === "ok" && c.reached === true && typeof c.status === "number"),
      JSON.stringify(ok),
    );

    const refused = `http://127.0.0.1:${await freePort()}`;
    d = await doctor(box, { args: ["--online"], env: { OAUTH_POOL_API_URL: refused } });
    let [api] = d.named("reach").filter((c) => c.variable === "OAUTH_POOL_API_URL");
    assert.equal(api?.level, "problem", d.shown);
    assert.equal(d.code, 3);
    assert.match(api.message, /does not answer: could not connect .*requests fail with NETWORK \(check OAUTH_POOL_API_URL, the network/);

    d = await doctor(box, { args: ["--online"], env: { OAUTH_POOL_API_URL: silentUrl } });
    [api] = d.named("reach").filter((c) => c.variable === "OAUTH_POOL_API_URL");
    assert.equal(api?.level, "problem", d.shown);
    assert.match(api.message, /does not answer: no answer within 8 s/);
    assert.equal(sockets.size, 1, "one request, no retry");

    // Through a proxy that is not there: the proxy is named (the request goes only to it).
    d = await doctor(box, { args: ["--online"], env: { OAUTH_POOL_API_URL: "https://api.example.invalid", HTTPS_PROXY: refused } });
    [api] = d.named("reach").filter((c) => c.variable === "OAUTH_POOL_API_URL");
    assert.equal(api?.level, "problem", d.shown);
    assert.ok(api.message.includes(`via proxy ${refused}/`) && api.message.includes("check the proxy"), api.message);
  } finally {
    for (const s of sockets) s.destroy();
    await new Promise((r) => silent.close(r));
  }
});

test("doctor quotes no secret a person put in OpenCode's config: a baseURL's password or key, a token as a package or a model", async () => {
  const box = user();
  await seed(box, [{ email: "quiet@x.test" }]);
  const plain = () => `c${randomBytes(12).toString("hex")}`;
  const token = () => [["sk", "ant", "api03"].join("-"), randomBytes(18).toString("hex")].join("-");
  const s = { password: plain(), query: plain(), elsewhere: plain(), npm: token(), model: token() };
  const file = join(box.global, "opencode.json");
  const api = new URL(mock.url);
  for (const baseURL of [
    `https://user:${s.elsewhere}@api.example.invalid/v1?key=${s.query}`,
    `http://user:${s.password}@${api.host}/anthropic?key=${s.query}`,
  ]) {
    write(file, {
      plugin: PLUGIN,
      model: `anthropic-pool/${s.model}`,
      small_model: `anthropic/${s.model}`,
      provider: { "anthropic-pool": { npm: s.npm, options: { baseURL } } },
    });
    const d = await doctor(box, { text: true });
    assert.equal(d.named("provider").length, 2, d.shown);
    assert.equal(d.named("model setting").length, 2, d.shown);
    const out = JSON.stringify(d.checks) + d.text;
    for (const [name, secret] of Object.entries(s)) assert.ok(!out.includes(secret) && !out.includes(secret.slice(-16)), `${name} is quoted`);
  }
});

test("doctor quotes no key a plugin spec carries: a URL's password, a token as its user", async () => {
  const box = user();
  await seed(box, [{ email: "spec@x.test" }]);
  const plain = () => `c${randomBytes(12).toString("hex")}`;
  const token = () => [["sk", "ant", "api03"].join("-"), randomBytes(18).toString("hex")].join("-");
  const s = { password: plain(), user: token() };
  write(join(box.global, "opencode.json"), {
    plugin: [`https://x:${s.password}@example.invalid/opencode-oauth-pool`, `https://${s.user}@example.invalid/opencode-oauth-pool/`],
  });
  const d = await doctor(box, { text: true });
  assert.ok(d.named("opencode plugin").length > 0, d.shown);
  const out = JSON.stringify(d.checks) + d.text;
  for (const [name, secret] of Object.entries(s)) assert.ok(!out.includes(secret) && !out.includes(secret.slice(-16)), `${name} is quoted: ${out}`);
});

// mkfifo(1) makes the FIFO: a file of that name that a plain read waits on for ever.
const mkfifo = process.platform !== "win32" && spawnSync("mkfifo", ["--version"]).status === 0;
test("doctor reads OpenCode's files bounded: a FIFO or a device where a config, the catalog cache, a plugin file, a package.json or the binary is expected does not hang it", {
  skip: !mkfifo && "needs mkfifo(1)",
}, async () => {
  const fifo = (file) => {
    mkdirSync(dirname(file), { recursive: true });
    assert.equal(spawnSync("mkfifo", [file]).status, 0);
  };
  const box = user();
  await seed(box, [{ email: "fifo@x.test" }]);
  // The global config, OPENCODE_CONFIG and the catalog cache are FIFOs or a device; the
  // project's config lists the plugin; OpenCode's installed copy has a FIFO for its package.json.
  fifo(join(box.global, "opencode.json"));
  write(join(box.project, "opencode.json"), { plugin: PLUGIN, model: "anthropic-pool/claude-sonnet-9" });
  fifo(join(box.cache, "opencode", "models.json"));
  fifo(join(box.cache, "opencode", "packages", "opencode-oauth-pool", "node_modules", "opencode-oauth-pool", "package.json"));
  let d = await doctor(box, { env: { OPENCODE_CONFIG: "/dev/zero" } });
  assert.equal(d.named("opencode plugin")[0]?.level, "ok", d.shown);
  assert.match(d.named("models")[0]?.message ?? "", /catalog cache .* does not parse/, d.shown);
  let [c] = d.named("plugin install");
  assert.equal(c?.level, "problem", d.shown);
  assert.match(c.message, /has a package\.json that is not a regular file/);

  // The plugin not listed: OpenCode's plugin directories are looked through for a wrapper.
  write(join(box.project, "opencode.json"), {});
  fifo(join(box.global, "plugin", "wrapper.js"));
  symlinkSync("/dev/zero", join(box.global, "plugin", "zero.js"));
  d = await doctor(box);
  assert.equal(d.named("opencode plugin")[0]?.level, "warn", d.shown);

  // A local copy whose native binary is a FIFO.
  const local = join(box.dir, "opencode-oauth-pool");
  fifo(join(local, `oauth-pool.${TRIPLE}.node`));
  write(join(box.project, "opencode.json"), { plugin: [local] });
  [c] = (await doctor(box)).named("plugin install");
  assert.equal(c?.level, "problem");
  assert.match(c.message, /cannot load its native binary .*not a regular file/);
});

test("doctor: OPENCODE_CONFIG naming a FIFO, a device, a directory or a file past 4 MB is a warning naming it, read neither whole nor waited on", {
  skip: !mkfifo && "needs mkfifo(1)",
}, async () => {
  // Each was passed over without a word, and doctor's account of the plugin left it out.
  const box = user();
  await seed(box, [{ email: "unread@x.test" }]);
  const fifo = join(box.dir, "fifo.json");
  assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
  const dir = join(box.dir, "dir.json");
  mkdirSync(dir);
  // Sparse: 5 MB of size, no 5 MB written.
  const huge = join(box.dir, "huge.json");
  writeFileSync(huge, "");
  truncateSync(huge, 5 * 1024 * 1024);
  for (const [file, what] of [
    [fifo, /a FIFO/],
    ["/dev/zero", /a device/],
    [dir, /a directory/],
    [huge, /5242880 bytes/],
  ]) {
    const d = await doctor(box, { env: { OPENCODE_CONFIG: file } });
    const [c] = d.named("opencode config");
    assert.equal(c?.level, "warn", `${file}: ${d.shown}`);
    assert.equal(c.file, file);
    assert.match(c.message, what);
    assert.match(c.message, /left unread .*at most 4 MB\): what doctor says of the plugin leaves it out/);
  }
  // Nothing there is nothing to say.
  const d = await doctor(box, { env: { OPENCODE_CONFIG: join(box.dir, "missing.json") } });
  assert.deepEqual(d.named("opencode config"), [], d.shown);
});

const CC = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/local/bin/cc"].find((p) => existsSync(p));

// The pool's locks are flock(2), which other machines sharing a network mount may not see
// (NFS emulates it with byte-range locks, `local_lock` makes it local; SMB, 9p and FUSE vary):
// two machines refreshing one login there log each other out. Doctor said nothing of where the
// pool lived. No test machine mounts NFS: a preloaded statfs shim (helpers/fake-fs-type.c)
// reports the pool directory's file system type as each one does.
test("doctor: a pool on a file system other machines share (NFS, SMB, 9p, FUSE) is a warning naming it and what to do; a local disk is not", {
  skip: (process.platform !== "linux" && "statfs f_type is Linux's") || (!CC && "no C compiler (cc) to build the statfs shim"),
}, async () => {
  const shim = join(tempDir("oauth-pool-fs-type-"), "fake-fs-type.so");
  spawnSync(CC, ["-shared", "-fPIC", "-O2", "-o", shim, join(ROOT, "__tests__", "helpers", "fake-fs-type.c"), "-ldl"]);
  assert.ok(existsSync(shim), "the statfs shim was built");
  const box = user();
  await seed(box, [{ email: "shared-fs@x.test" }]);
  const dir = dirname(box.pool);
  const on = (type) => doctor(box, { env: { LD_PRELOAD: shim, FAKE_FS_TYPE_UNDER: dir, FAKE_FS_TYPE: type } });
  for (const [type, kind] of [
    ["0x6969", /is on NFS,/],
    ["0xff534d42", /is on CIFS,/],
    ["0x01021997", /is on 9P,/],
    ["0x65735546", /is on FUSE,/],
  ]) {
    const d = await on(type);
    const [c] = d.named("filesystem");
    assert.equal(c?.level, "warn", `${type}: ${d.shown}`);
    assert.match(c.message, kind);
    assert.ok(c.message.startsWith(dir), c.message);
    assert.match(
      c.message,
      /may not exclude processes on other machines: .* one loses it\. Use the pool from one machine only, or keep it on a local disk \(OAUTH_POOL_PATH\), or share it through the fleet store \(OAUTH_POOL_STORE\)/,
    );
    assert.equal(d.code, 0, "a warning, not a problem");
  }
  for (const local of ["0xef53", "0x01021994", "0x58465342"]) {
    const d = await on(local);
    assert.deepEqual(d.named("filesystem"), [], `${local} (ext4, tmpfs, xfs) is a local disk`);
  }
  assert.deepEqual((await doctor(box)).named("filesystem"), [], "this machine's own disk");
  // Before the first login made the pool's directory: judged by the nearest one there.
  const fresh = user();
  const d = await doctor(fresh, { env: { LD_PRELOAD: shim, FAKE_FS_TYPE_UNDER: fresh.dir, FAKE_FS_TYPE: "0x6969" } });
  assert.equal(existsSync(dirname(fresh.pool)), false);
  assert.match(d.named("filesystem")[0]?.message ?? d.shown, /^\S+ is on NFS, /);
});

// A refresh whose new tokens could not be written (the pool file broken or gone meanwhile) keeps
// them beside the pool, `<pool>.unsaved-<pid>-<n>.json`, until a write takes them; the pool's
// refresh token is spent by then. Doctor said nothing of such a file, and `oauth-pool refresh`
// adopted its tokens in memory, wrote nothing and said "kept", the spent token left in the pool.
test("doctor: refreshed tokens kept beside the pool are named with what they are to it; oauth-pool refresh writes them without presenting a token", async () => {
  const box = user();
  await seed(box, [{ email: "kept@x.test", expired: true }, { email: "other@x.test" }]);
  const pool = JSON.parse(readFileSync(box.pool, "utf8"));
  const spent = pool.anthropic[0].refresh;
  const live = `kept-live-${randomBytes(6).toString("hex")}`;
  const ended = spawnSync(process.execPath, ["-e", ""]).pid;
  const kept = (pid, n, tokens) => {
    const file = join(dirname(box.pool), `oauth-pool.json.unsaved-${pid}-${n}.json`);
    writeFileSync(file, JSON.stringify({ version: 1, tokens }), { mode: 0o600 });
    return file;
  };
  const token = (email, presented, refresh) => ({ email, access: `access-of-${refresh}`, refresh, expires: Date.now() + 3_600_000, presented });
  const waiting = kept(ended, 1, [token("kept@x.test", spent, live)]);
  const unmatched = kept(process.pid, 2, [token("other@x.test", "a-token-the-pool-never-held", "an-older-generation")]);

  const before = await doctor(box);
  const found = before.named("unsaved tokens");
  assert.equal(found.length, 2, before.shown);
  const first = found.find((c) => c.file === waiting);
  assert.equal(first?.level, "warn", before.shown);
  assert.deepEqual(first.accounts, [{ email: "kept@x.test", state: "waiting" }]);
  assert.equal(first.pid, ended);
  assert.equal(first.running, false);
  assert.match(first.message, /new tokens of kept@x\.test, whose refresh token in the pool is spent.*oauth-pool refresh kept@x\.test.*do not delete the file/);
  assert.match(first.message, /which has ended/);
  const second = found.find((c) => c.file === unmatched);
  assert.deepEqual(second?.accounts, [{ email: "other@x.test", state: "unmatched" }], before.shown);
  assert.equal(second.running, true);
  assert.match(second.message, /fit no account/);
  assert.doesNotMatch(before.shown, new RegExp(`${live}|${spent}|access-of-`), "names only, never a token");

  const asked = mock.tokenRequests.length;
  const r = await runCli(["refresh", "kept@x.test", "--json"], { env: userEnv(box), cwd: box.project });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout.trim().split("\n").at(-1)).outcome, "adopted", r.stdout);
  assert.equal(mock.tokenRequests.length, asked, "the spent token was not presented, nor the kept one");
  const after = JSON.parse(readFileSync(box.pool, "utf8"));
  assert.equal(after.anthropic[0].refresh, live);
  assert.equal(existsSync(waiting), false, "the file that landed is removed");
  assert.equal(existsSync(unmatched), true, "tokens that fit nowhere are kept");

  const later = await doctor(box);
  assert.deepEqual(
    later.named("unsaved tokens").map((c) => c.file),
    [unmatched],
    later.shown,
  );
  rmSync(unmatched);
  const none = await doctor(box);
  assert.deepEqual(
    none.named("unsaved tokens").map((c) => [c.level, c.message]),
    [["ok", "no refreshed tokens wait beside the pool"]],
  );
});

// Only the engine's writes took kept tokens: `oauth-pool priority` (any CLI write) left the file
// and the spent token in the pool, and `store copy` then carried the spent token into another
// pool, whose refresh presented it (a review's reproduction).
test("every write takes refreshed tokens kept beside the pool, a CLI's too, and store copy carries the live token", async () => {
  const box = user();
  await seed(box, [{ email: "cli@x.test", expired: true }]);
  const spent = JSON.parse(readFileSync(box.pool, "utf8")).anthropic[0].refresh;
  const keptFile = (n, presented, refresh) => {
    const file = join(dirname(box.pool), `oauth-pool.json.unsaved-1-${n}.json`);
    const token = { email: "cli@x.test", access: `access-of-${refresh}`, refresh, expires: Date.now() + 3_600_000, presented };
    writeFileSync(file, JSON.stringify({ version: 1, tokens: [token] }), { mode: 0o600 });
    return file;
  };
  const env = userEnv(box);
  const live = `kept-live-${randomBytes(6).toString("hex")}`;
  const first = keptFile(1, spent, live);
  const set = await runCli(["priority", "cli@x.test", "3"], { env, cwd: box.project });
  assert.equal(set.code, 0, set.stderr);
  const after = JSON.parse(readFileSync(box.pool, "utf8")).anthropic[0];
  assert.equal(after.refresh, live);
  assert.equal(after.priority, 3);
  assert.equal(existsSync(first), false);

  const next = `kept-next-${randomBytes(6).toString("hex")}`;
  const second = keptFile(2, live, next);
  const elsewhere = join(box.dir, "elsewhere", "oauth-pool.json");
  const copied = await runCli(["store", "copy", "--from", box.pool, "--to", elsewhere], { env, cwd: box.project });
  assert.equal(copied.code, 0, copied.stderr);
  assert.equal(JSON.parse(readFileSync(elsewhere, "utf8")).anthropic[0].refresh, next, "the live token, not the spent one");
  assert.equal(JSON.parse(readFileSync(box.pool, "utf8")).anthropic[0].refresh, next);
  assert.equal(existsSync(second), false);
});
