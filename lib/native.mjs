// Loads the native addon for this platform: a local build first (`npm run build` puts
// oauth-pool.<triple>.node next to package.json), then the prebuilt optional package
// opencode-oauth-pool-<triple>. Works under Node and Bun (both implement createRequire).
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { platformTriple } from "./platform.mjs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function load() {
  const triple = platformTriple();
  const local = join(root, `oauth-pool.${triple}.node`);
  const packageName = `opencode-oauth-pool-${triple}`;
  const failures = [];
  if (existsSync(local)) {
    try {
      return require(local);
    } catch (err) {
      failures.push(`${local}: ${err.message}`);
    }
  }
  try {
    return require(packageName);
  } catch (err) {
    failures.push(`${packageName}: ${err.message}`);
  }
  const error = new Error(
    `opencode-oauth-pool: no native binary for ${triple}. Install the optional package ` +
      `"${packageName}" (npm install ${packageName}), or build from source with ` +
      `"npm run build" (needs Rust). Tried: ${failures.join("; ")}`,
  );
  error.code = "NATIVE_MISSING";
  throw error;
}

const binding = load();

// Bun does not pass process.env changes down to the C environment the addon reads, so every
// call first hands over the variables this runtime sees (only when they changed).
// Looking up a few names is much cheaper than enumerating process.env on every request.
const ENV_KEYS = [
  "OAUTH_POOL_PATH",
  "OAUTH_POOL_TOKEN_URL",
  "OAUTH_POOL_API_URL",
  "OAUTH_POOL_LOG",
  "OAUTH_POOL_TIMEOUT_MS",
  "OAUTH_POOL_RESPONSE_TIMEOUT_MS",
  "OAUTH_POOL_SOFT_THRESHOLD",
  "HOME",
  "USERPROFILE",
];
let lastEnv = null;
export function syncEnv() {
  let key = "";
  for (const k of ENV_KEYS) key += `${process.env[k] ?? "\u0000"}\u0001`;
  if (key === lastEnv) return;
  const vars = {};
  for (const k of ENV_KEYS) {
    const v = process.env[k];
    if (typeof v === "string") vars[k] = v;
  }
  binding.syncEnv(vars);
  lastEnv = key;
}

export const native = new Proxy(binding, {
  get(target, prop) {
    const value = target[prop];
    if (typeof value !== "function" || prop === "syncEnv") return value;
    if (prop === "FetchController" || prop === "NativeResponse") {
      return value;
    }
    return (...args) => {
      syncEnv();
      return value.apply(target, args);
    };
  },
});
export { platformTriple };
