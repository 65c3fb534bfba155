// What the CLI's test files share: the CLI's path, a throwaway HOME and pool directories (removed
// after the file's tests), and the environment a CLI child runs with (this machine's settings
// that would change what it reports, proxies and the pool's own variables, taken out unless a
// test sets them). Each file starts its own mock (Node runs the file's `before` hooks without
// waiting for one registered here).
import { after } from "node:test";
import { spawn } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "./temp.mjs";

export const CLI = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "bin", "oauth-pool.mjs");

const SCRUBBED = [
  "OAUTH_POOL_LOG",
  "OAUTH_POOL_SOFT_THRESHOLD",
  "OAUTH_POOL_JITTER_MS",
  "OAUTH_POOL_USAGE",
  "OAUTH_POOL_TIMEOUT_MS",
  "OAUTH_POOL_RESPONSE_TIMEOUT_MS",
  "OAUTH_POOL_HOLD_MAX_MS",
  "OAUTH_POOL_TOKEN_URL",
  "OAUTH_POOL_API_URL",
  "AIDEVOPS_OAUTH_POOL_FILE",
  "HTTPS_PROXY",
  "https_proxy",
  "HTTP_PROXY",
  "http_proxy",
  "ALL_PROXY",
  "all_proxy",
  "NO_PROXY",
  "no_proxy",
];

/**
 * Sets up a test file's sandbox: `freshPath()` a pool path in its own, not yet existing,
 * directory; `childEnv(path, extra)` the environment of a CLI child on that pool.
 */
export function cliSandbox(prefix) {
  const tmp = tempDir(prefix);
  const home = join(tmp, "home");
  mkdirSync(home, { recursive: true });
  after(() => rmSync(tmp, { recursive: true, force: true }));
  let seq = 0;
  return {
    tmp,
    home,
    freshPath: () => join(tmp, `case-${++seq}`, "oauth-pool.json"),
    childEnv(path, extra = {}) {
      const env = { ...process.env, HOME: home, USERPROFILE: home, OAUTH_POOL_PATH: path, ...extra };
      for (const k of SCRUBBED) if (!(k in extra)) delete env[k];
      return env;
    },
  };
}

/**
 * Runs the CLI with `args` in a child (`env` its whole environment, `cwd` its directory), killed
 * after a minute: its exit code (or the signal that ended it), stdout and stderr.
 */
export function runCli(args, { env, cwd } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.stdout.setEncoding("utf8").on("data", (d) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}
