// The OpenCode plugin: the `anthropic-pool` provider (login adds accounts, the loader's fetch
// rotates between them), the `model-accounts-pool` tool, and the config that declares the
// provider with every Anthropic model. Each part is exported for plugins that compose their own.
import { poolAuthHook } from "./plugin/auth.mjs";
import { poolConfigHook } from "./plugin/config.mjs";
import { createPoolTool } from "./plugin/tool.mjs";
import { TOOL_NAME, poolFetchFor } from "./plugin/shared.mjs";

export { ANTHROPIC_MODELS } from "./plugin/models.mjs";
export { poolAuthHook, poolConfigHook, createPoolTool };

/**
 * @param {import("@opencode-ai/plugin").PluginInput} input
 * @param {{ path?: string }} [options] from `["opencode-oauth-pool/plugin", { path }]` in opencode.json
 */
export async function OAuthPoolPlugin(input, options) {
  const opts = { ...(options ?? {}) };
  // One fetch (and one set of failover notices) for the loader and the config-declared provider.
  opts.fetch = poolFetchFor(input, opts);
  return {
    auth: poolAuthHook(input, opts),
    tool: { [TOOL_NAME]: createPoolTool(input, opts) },
    config: (config) => poolConfigHook(config, opts),
  };
}
