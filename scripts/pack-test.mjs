#!/usr/bin/env node
// Installable, proven: packs the package as npm would publish it, packs this machine's
// per-platform package (npm/<triple> plus the locally built .node), installs both tarballs into a
// fresh temporary project, and uses them from there: the library and the plugin entry import,
// one request goes through the pool fetch against the loopback mock, and the installed
// `oauth-pool` bin runs. Also checks that the published file list holds what a user needs and
// nothing else.
//
//   node scripts/pack-test.mjs [--keep]      (--keep leaves the temp dir for a look)
//
// The root package lists all seven platform packages as optionalDependencies; the six that do not
// fit this machine (and, before the first release, all of them) are not on the registry. npm
// skips optional dependencies it cannot fetch, so `npm install` of the tarball still succeeds.
import { spawnSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir, userInfo } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { platformTriple } from "../lib/platform.mjs";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const PKG = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
const started = Date.now();
const keep = process.argv.includes("--keep");
const win = process.platform === "win32";

let passed = 0;
let failed = 0;
function check(name, ok, detail = "") {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${!ok && detail ? `\n     ${String(detail).trim().split("\n").join("\n     ")}` : ""}`);
  return Boolean(ok);
}

function finish() {
  console.log(`pack-test: ${passed} passed, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)}s)`);
  if (!keep) rmSync(tmp, { recursive: true, force: true });
  else console.log(`kept ${tmp}`);
  process.exit(failed ? 1 : 0);
}

// npm's cache stays the user's even when HOME points at a throwaway dir (as under `npm test`),
// so a warm cache makes the install work offline.
const npmEnv = { ...process.env };
if (!npmEnv.npm_config_cache && !win) {
  const cache = join(userInfo().homedir, ".npm");
  if (existsSync(cache)) npmEnv.npm_config_cache = cache;
}
for (const k of Object.keys(npmEnv)) if (/^npm_(lifecycle|package)_/.test(k)) delete npmEnv[k];

// Windows runs npm.cmd and the bin shim through cmd.exe, which needs paths with spaces quoted.
const q = (arg) => (win && /[\s"]/.test(arg) ? `"${arg.replaceAll('"', '""')}"` : arg);

function npm(args, cwd) {
  const r = spawnSync(win ? "npm.cmd" : "npm", args.map(q), { cwd, env: npmEnv, encoding: "utf8", shell: win, timeout: 90_000 });
  return { ok: r.status === 0, stdout: r.stdout ?? "", stderr: `${r.stderr ?? ""}${r.error ? r.error.message : ""}` };
}

/** npm prints lifecycle noise before --json output on some versions: take the JSON array. */
function packJson(stdout) {
  const start = stdout.indexOf("[");
  return JSON.parse(stdout.slice(start));
}

const tmp = mkdtempSync(join(tmpdir(), "oauth-pool-pack-"));
const triple = platformTriple();
const binaryName = `${PKG.napi.binaryName}.${triple}.node`;
const binary = join(ROOT, binaryName);
const platformDir = join(ROOT, "npm", triple);

// ---- 1. the published file list ------------------------------------------------------------------
const dry = npm(["pack", "--dry-run", "--json", "--ignore-scripts"], ROOT);
if (!check("npm pack --dry-run --json", dry.ok, dry.stderr)) finish();
const files = packJson(dry.stdout)[0].files.map((f) => f.path.replaceAll("\\", "/"));
const forbidden = files.filter(
  (f) =>
    /(^|\/)__tests__\//.test(f) ||
    /^(src|target|bench|tests|scripts|npm|node_modules|\.github|\.ci)\//.test(f) ||
    f.endsWith(".node") ||
    /^Cargo\.(toml|lock)$/.test(f) ||
    f.endsWith(".tgz"),
);
check("packed files hold no tests, sources, build output, benchmarks or binaries", forbidden.length === 0, forbidden.join(", "));
const required = [
  "package.json",
  "README.md",
  "LICENSE",
  "index.mjs",
  "index.d.ts",
  "plugin.mjs",
  "plugin.d.ts",
  "bin/oauth-pool.mjs",
  "lib/native.mjs",
  "lib/platform.mjs",
];
const missing = required.filter((f) => !files.includes(f));
check("packed files hold the library, the plugin, their types, the CLI, the README and the license", missing.length === 0, `missing: ${missing.join(", ")}`);
const stray = files.filter((f) => !(required.includes(f) || f.startsWith("lib/")));
check("packed files hold nothing else", stray.length === 0, stray.join(", "));

// ---- 2. the tarballs ------------------------------------------------------------------------------
const tarballs = join(tmp, "tarballs");
mkdirSync(tarballs);
const packed = npm(["pack", "--json", "--ignore-scripts", "--pack-destination", tarballs], ROOT);
if (!check(`npm pack ${PKG.name}`, packed.ok, packed.stderr)) finish();
const rootTarball = join(tarballs, packJson(packed.stdout)[0].filename);

if (!check(`${binaryName} is built`, existsSync(binary), `build it first: npm run build`)) finish();
if (!check(`npm/${triple} exists`, existsSync(join(platformDir, "package.json")))) finish();
// The .node is copied into a temp copy of npm/<triple>: the repo's npm/ dirs stay binary-free.
const stage = join(tmp, "platform", triple);
cpSync(platformDir, stage, { recursive: true });
cpSync(binary, join(stage, binaryName));
// The license travels with every copy (MIT asks it); the release workflow copies it in the same way.
cpSync(join(ROOT, "LICENSE"), join(stage, "LICENSE"));
const platformPacked = npm(["pack", "--json", "--ignore-scripts", "--pack-destination", tarballs], stage);
if (!check(`npm pack ${PKG.name}-${triple}`, platformPacked.ok, platformPacked.stderr)) finish();
const platformInfo = packJson(platformPacked.stdout)[0];
const platformTarball = join(tarballs, platformInfo.filename);
const platformFiles = platformInfo.files.map((f) => f.path).sort();
check(
  `${PKG.name}-${triple} holds package.json, README.md, LICENSE and ${binaryName}`,
  JSON.stringify(platformFiles) === JSON.stringify([binaryName, "LICENSE", "README.md", "package.json"].sort()),
  platformFiles.join(", "),
);
const platformManifest = JSON.parse(readFileSync(join(stage, "package.json"), "utf8"));
check(
  `${PKG.name}-${triple} version matches the root and is in optionalDependencies`,
  platformManifest.version === PKG.version && PKG.optionalDependencies?.[platformManifest.name] === PKG.version,
);

// ---- 3. a fresh project installs both ---------------------------------------------------------------
const project = join(tmp, "project");
mkdirSync(project);
writeFileSync(join(project, "package.json"), JSON.stringify({ name: "pack-test-project", version: "1.0.0", private: true, type: "module" }, null, 2));
const installed = npm(["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error", rootTarball, platformTarball], project);
if (!check("npm install of both tarballs in a fresh project", installed.ok, installed.stderr)) finish();
const nm = join(project, "node_modules");
check(`${PKG.name} installed without a .node of its own`, existsSync(join(nm, PKG.name, "index.mjs")) && !existsSync(join(nm, PKG.name, binaryName)));
check(`${PKG.name}-${triple} installed with its binary`, existsSync(join(nm, `${PKG.name}-${triple}`, binaryName)));
// A library or CLI user gets the addon and zod (the tool's argument schemas), nothing of the
// OpenCode SDK: no @opencode-ai/plugin, no effect, no TUI peers.
const tree = npm(["ls", "--omit=dev", "--all", "--parseable"], project);
const installedNames = tree.stdout
  .split("\n")
  .filter((l) => l.includes("node_modules"))
  .map((l) => l.slice(l.lastIndexOf("node_modules") + "node_modules/".length));
const unexpected = installedNames.filter((n) => ![PKG.name, `${PKG.name}-${triple}`, "zod"].includes(n));
check("npm ls --omit=dev: only the package, its binary and zod", tree.ok && unexpected.length === 0, unexpected.join(", ") || tree.stderr);

// ---- 4. use it from the project ---------------------------------------------------------------------
const home = join(tmp, "home");
mkdirSync(home);
const poolPath = join(tmp, "pool", "oauth-pool.json");
const useEnv = { ...process.env, HOME: home, USERPROFILE: home, OAUTH_POOL_PATH: poolPath };
for (const k of ["OAUTH_POOL_LOG", "OAUTH_POOL_TOKEN_URL", "OAUTH_POOL_API_URL"]) delete useEnv[k];

const mockUrl = pathToFileURL(join(ROOT, "__tests__", "helpers", "mock-anthropic.mjs")).href;
writeFileSync(
  join(project, "use.mjs"),
  `// Runs inside the fresh project: everything below resolves from its node_modules.
import { createRequire } from "node:module";
import { startMockAnthropic } from ${JSON.stringify(mockUrl)};
const results = [];
const check = (name, ok, detail = "") => results.push({ name, ok: Boolean(ok), detail: String(detail) });
try {
  const lib = await import(${JSON.stringify(PKG.name)});
  const pluginModule = await import(${JSON.stringify(`${PKG.name}/plugin`)});
  const require = createRequire(import.meta.url);
  const resolved = require.resolve(${JSON.stringify(`${PKG.name}/package.json`)});
  check("the library resolves from node_modules", resolved.includes("node_modules"), resolved);
  for (const name of ["createPoolFetch", "loadPool", "savePool", "authorize", "exchange", "refresh", "addAccount", "listAccounts", "poolStatus", "OAuthPoolPlugin"]) {
    check("export " + name, typeof lib[name] === "function");
  }
  check("the native addon loads (" + lib.platformTriple() + ")", lib.nativeVersion() === ${JSON.stringify(PKG.version)}, lib.nativeVersion());
  const plugin = pluginModule.default;
  check("plugin module exports only the plugin", Object.keys(pluginModule).join() === "default", Object.keys(pluginModule).join());
  check(
    "plugin default export is { id: 'oauth-pool', server: fn, setup: fn } (OpenCode 1.18 and 2)",
    plugin && plugin.id === "oauth-pool" && typeof plugin.server === "function" && typeof plugin.setup === "function" && Object.keys(plugin).sort().join() === "id,server,setup",
    JSON.stringify(Object.keys(plugin ?? {})),
  );

  const mock = await startMockAnthropic();
  try {
    process.env.OAUTH_POOL_TOKEN_URL = mock.tokenUrl;
    process.env.OAUTH_POOL_API_URL = mock.url;
    const t = mock.addAccount("pack@x.test");
    const now = new Date().toISOString();
    await lib.savePool({ version: 1, anthropic: [{ email: "pack@x.test", refresh: t.refresh, access: t.access, expires: t.expires, added: now, lastUsed: null, status: "idle", rateLimitUntil: null }] }, process.env.OAUTH_POOL_PATH);
    const poolFetch = lib.createPoolFetch({ path: process.env.OAUTH_POOL_PATH });
    const res = await poolFetch(mock.url + "/v1/messages", {
      method: "POST",
      headers: { "content-type": "application/json", "anthropic-version": "2023-06-01" },
      body: JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 32, messages: [{ role: "user", content: "hi" }] }),
    });
    const text = await res.text();
    check("a request through createPoolFetch reaches the mock with the pool's account", res.status === 200 && text.includes("Hello from pack@x.test"), res.status + " " + text.slice(0, 200));
    await lib.flushPool(process.env.OAUTH_POOL_PATH);
  } finally {
    await mock.close();
  }
} catch (e) {
  check("use the installed package", false, e?.stack ?? e);
}
process.stdout.write(JSON.stringify(results) + "\\n");
`,
);
const use = spawnSync(process.execPath, ["use.mjs"], { cwd: project, env: useEnv, encoding: "utf8", timeout: 60_000 });
let useResults = [];
try {
  useResults = JSON.parse(use.stdout.trim().split("\n").at(-1));
} catch {
  check("the import script ran", false, `${use.stdout}\n${use.stderr}${use.error ? use.error.message : ""}`);
}
for (const r of useResults) check(r.name, r.ok, r.detail);

// ---- 5. the installed CLI -------------------------------------------------------------------------
const bin = join(nm, ".bin", win ? "oauth-pool.cmd" : "oauth-pool");
function oauthPool(args) {
  return spawnSync(q(bin), args.map(q), { cwd: project, env: useEnv, encoding: "utf8", shell: win, timeout: 30_000 });
}
const version = oauthPool(["--version"]);
check(
  "installed `oauth-pool --version`",
  version.status === 0 && version.stdout.includes(PKG.version) && !version.stdout.includes("missing"),
  `${version.stdout}${version.stderr}`,
);
// Run through the `.bin` link with --preserve-symlinks-main (found by a review, 2026-12-07): the
// bin's relative imports were resolved from `node_modules/.bin/`, and it failed uncoded.
if (!win) {
  const kept = spawnSync(bin, ["--version"], { cwd: project, env: { ...useEnv, NODE_OPTIONS: "--preserve-symlinks-main" }, encoding: "utf8", timeout: 30_000 });
  check(
    "installed `oauth-pool --version` with --preserve-symlinks-main",
    kept.status === 0 && kept.stdout.includes(PKG.version),
    `${kept.stdout}${kept.stderr}`,
  );
}
const list = oauthPool(["list", "--json"]);
let listed = null;
try {
  listed = JSON.parse(list.stdout);
} catch {}
check(
  "installed `oauth-pool list --json` shows the account",
  list.status === 0 && listed?.accounts?.length === 1 && listed.accounts[0].email === "pack@x.test",
  `${list.stdout}${list.stderr}`,
);
const text = oauthPool(["list"]);
check("installed `oauth-pool list`", text.status === 0 && /pack@x\.test\s+oauth/.test(text.stdout), `${text.stdout}${text.stderr}`);

finish();
