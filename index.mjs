// opencode-oauth-pool: the library. Native functions (Rust) that validate their arguments and
// reject with `err.code`, the rotating fetch, and the OpenCode plugin's building blocks.
// Importing never throws: without a native binary for this platform, the first call rejects
// with NATIVE_MISSING.
export { createPoolFetch } from "./lib/fetch.mjs";
export { platformTriple } from "./lib/platform.mjs";
export {
  loadPool,
  savePool,
  authorize,
  exchange,
  refresh,
  listAccounts,
  poolStatus,
  addAccount,
  addApiKey,
  removeAccount,
  setEnabled,
  setPriority,
  resetCooldowns,
  setReserve,
  importClaudeCode,
  flushPool,
  refreshAccount,
  serve,
  gatewayKey,
  storeInit,
  copyStore,
  nativeVersion,
} from "./lib/api.mjs";
export {
  OAuthPoolPlugin,
  poolAuthHook,
  createPoolTool,
  poolConfigHook,
  ANTHROPIC_MODELS,
} from "./lib/plugin.mjs";
