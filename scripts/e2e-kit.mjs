// What the end-to-end scripts with real hosts share (e2e-opencode.mjs, e2e-claude-code.mjs): the
// checks and their summary, a pinned binary installed from npm once (or SKIP), and child
// processes that never outlive the script.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../__tests__/helpers/temp.mjs";

/** Checks printed as they pass or fail; `finish` prints the summary line and exits. */
export function checks() {
  const started = Date.now();
  const results = [];
  return {
    check(name, ok, detail = "") {
      results.push({ name, ok: Boolean(ok) });
      console.log(`${ok ? "ok  " : "FAIL"} ${name}${!ok && detail ? `\n     ${String(detail).split("\n").join("\n     ")}` : ""}`);
      return Boolean(ok);
    },
    finish(what) {
      const passed = results.filter((r) => r.ok).length;
      const failed = results.length - passed;
      console.log(`e2e: ${passed} passed, ${failed} failed (${((Date.now() - started) / 1000).toFixed(1)} s, ${what})`);
      process.exit(failed ? 1 : 0);
    },
  };
}

/** The step passes without running: the host cannot be had here (not a failure of ours). */
export function skip(script, reason) {
  console.log(`SKIP ${script}: ${reason}`);
  console.log("e2e: 0 passed, 0 failed (skipped)");
  process.exit(0);
}

/**
 * A pinned package installed into `cache` once; its binary `bin` once `versionOf(bin)` says
 * `version`. Skips (exit 0) when the registry cannot give it.
 */
export function installPinned({ script, cache, pkg, version, bin, versionOf, timeoutMs = 300_000 }) {
  if (existsSync(bin) && versionOf(bin) === version) return bin;
  mkdirSync(cache, { recursive: true });
  console.log(`installing ${pkg}@${version} into ${cache} ...`);
  // npm is a .cmd on Windows, which Node runs only through a shell (and a shell splits on spaces).
  const windows = process.platform === "win32";
  const args = ["install", "--prefix", cache, `${pkg}@${version}`, "--no-save", "--no-audit", "--no-fund"];
  const r = spawnSync(windows ? "npm.cmd" : "npm", windows ? args.map((a) => `"${a}"`) : args, {
    encoding: "utf8",
    timeout: timeoutMs,
    shell: windows,
  });
  if (r.status !== 0 || !existsSync(bin)) {
    const why = (r.stderr || r.error?.message || "")
      .split("\n")
      .map((l) => l.replace(/^npm error\s*/, "").trim())
      .filter((l) => l && !/complete log|proxy|npm help/i.test(l))
      .slice(0, 2)
      .join(" | ");
    skip(script, `could not install ${pkg}@${version} from the npm registry: ${why || `npm exit ${r.status}`}`);
  }
  const installed = versionOf(bin);
  if (installed !== version) skip(script, `installed ${pkg} reports version ${JSON.stringify(installed)}, expected ${version}`);
  return bin;
}

/** What `bin --version` prints, run with a temp dir of its own: OpenCode leaves `$TMPDIR/opencode`. */
export function versionOf(bin) {
  return spawnSync(bin, ["--version"], { encoding: "utf8", timeout: 30_000, env: { ...process.env, TMPDIR: tempDir("oauth-pool-version-") } }).stdout?.trim();
}

/** Every child still running is killed when the script exits, however it exits. */
export const children = new Set();
export function killChildren() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {}
  }
}
process.on("exit", killChildren);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(130));

/**
 * Runs a command to completion (killed after `timeoutMs`): its output, and its stdout's lines
 * with the time each arrived (ms from the start).
 */
export function run(cmd, args, { env, cwd, timeoutMs }) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const child = spawn(cmd, args, { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let stdout = "";
    let stderr = "";
    let partial = "";
    const lines = [];
    let timedOut = false;
    child.stdout.on("data", (d) => {
      stdout += d;
      const parts = (partial + d).split("\n");
      partial = parts.pop();
      for (const line of parts) if (line.trim()) lines.push({ ms: Date.now() - t0, line });
    });
    child.stderr.on("data", (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    const finish = (code, signal, extra = "") => {
      clearTimeout(timer);
      children.delete(child);
      if (partial.trim()) lines.push({ ms: Date.now() - t0, line: partial });
      resolve({ code, signal, stdout, stderr: stderr + extra, lines, timedOut, ms: Date.now() - t0 });
    };
    child.on("close", (code, signal) => finish(code, signal));
    child.on("error", (err) => finish(-1, null, err.message));
  });
}

/**
 * A place for OpenCode under `dir`, kept offline (reference/opencode.md "Keeping it offline"):
 * a project, a home, a temp dir and XDG directories of its own (what OpenCode and its Bun leave in
 * the temp dir goes with `dir`). `envFor(mockUrl, extra)` is the environment
 * that points OpenCode at them, at `mockUrl` for models, and at a registry that refuses at once
 * (OpenCode installs @opencode-ai/plugin into its config dir at start), with `extra` added.
 */
export function offlineOpencode(dir) {
  const project = join(dir, "project");
  const home = join(dir, "home");
  const tmp = join(dir, "tmp");
  const xdg = Object.fromEntries(["data", "config", "cache", "state"].map((k) => [k, join(dir, "xdg", k)]));
  for (const d of [project, home, tmp, ...Object.values(xdg)]) mkdirSync(d, { recursive: true });
  const envFor = (mockUrl, extra = {}) => ({
    PATH: process.env.PATH,
    LANG: "C.UTF-8",
    TERM: "dumb",
    PWD: project,
    HOME: home,
    TMPDIR: tmp,
    XDG_DATA_HOME: xdg.data,
    XDG_CONFIG_HOME: xdg.config,
    XDG_CACHE_HOME: xdg.cache,
    XDG_STATE_HOME: xdg.state,
    OPENCODE_DISABLE_MODELS_FETCH: "1",
    OPENCODE_DISABLE_AUTOUPDATE: "1",
    OPENCODE_DISABLE_LSP_DOWNLOAD: "1",
    OPENCODE_DISABLE_SHARE: "1",
    OPENCODE_DISABLE_CLAUDE_CODE: "1",
    OPENCODE_DISABLE_EXTERNAL_SKILLS: "1",
    OPENCODE_MODELS_URL: mockUrl,
    npm_config_registry: "http://127.0.0.1:9/",
    npm_config_fetch_retries: "0",
    ...extra,
  });
  return { project, xdg, envFor };
}

/** The OpenCode the e2e scripts run: pinned, installed once into the repository's npm cache. */
export const OPENCODE_VERSION = "1.18.33";

/** The pinned OpenCode binary for this platform (installed once, shared by the scripts), or SKIP. */
export function ensureOpencode(script, root) {
  const os = { linux: "linux", darwin: "darwin", win32: "windows" }[process.platform];
  const arch = { x64: "x64", arm64: "arm64" }[process.arch];
  if (!os || !arch) skip(script, `no prebuilt OpenCode for ${process.platform}-${process.arch}`);
  const pkg = `opencode-${os}-${arch}`;
  const cache = join(root, "node_modules", ".cache", "opencode-e2e");
  return installPinned({
    script,
    cache,
    pkg,
    version: OPENCODE_VERSION,
    bin: join(cache, "node_modules", pkg, "bin", process.platform === "win32" ? "opencode.exe" : "opencode"),
    versionOf,
    timeoutMs: 180_000,
  });
}
