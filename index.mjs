// opencode-oauth-pool: the library. Native functions (Rust) with `err.code` on rejection, the
// rotating fetch, and the OpenCode plugin's building blocks.
import { native, platformTriple } from "./lib/native.mjs";
import { wrap } from "./lib/errors.mjs";

export { createPoolFetch } from "./lib/fetch.mjs";
export { platformTriple };
export {
  OAuthPoolPlugin,
  poolAuthHook,
  createPoolTool,
  poolConfigHook,
  ANTHROPIC_MODELS,
} from "./lib/plugin.mjs";

export const loadPool = wrap((path) => native.loadPool(path ?? undefined));
export const savePool = wrap((pool, path) => native.savePool(pool, path ?? undefined));
export const authorize = wrap(async (options) => native.authorize(options ?? undefined));
export const exchange = wrap((input, pkce) => native.exchange(String(input ?? ""), pkce ?? {}));
export const refresh = wrap((refreshToken) => native.refresh(String(refreshToken ?? "")));
export const listAccounts = wrap((path) => native.listAccounts(path ?? undefined));
export const poolStatus = wrap((path) => native.poolStatus(path ?? undefined));
export const addAccount = wrap((input, pkce, path) => native.addAccount(String(input ?? ""), pkce ?? {}, path ?? undefined));
export const addApiKey = wrap((key, options) => native.addApiKey(String(key ?? ""), options ?? undefined));
export const removeAccount = wrap((email, path) => native.removeAccount(String(email ?? ""), path ?? undefined));
export const setEnabled = wrap((email, enabled, path) => native.setEnabled(String(email ?? ""), Boolean(enabled), path ?? undefined));
export const setPriority = wrap((email, priority, path) => {
  if (!Number.isSafeInteger(Number(priority))) {
    const err = new Error(`priority must be a whole number, got ${JSON.stringify(priority)}`);
    err.code = "INVALID_ARGUMENT";
    throw err;
  }
  return native.setPriority(String(email ?? ""), Number(priority), path ?? undefined);
});
export const resetCooldowns = wrap((path) => native.resetCooldowns(path ?? undefined));
export const importClaudeCode = wrap((options) => native.importClaudeCode(options ?? undefined));
export const flushPool = wrap((path) => native.flushPool(path ?? undefined));
export const nativeVersion = () => native.version();
