// The OpenCode plugin: the `anthropic-pool` provider (login adds accounts, the loader's fetch
// rotates between them), the `model-accounts-pool` tool, and the config that declares the
// provider with every Anthropic model. Each part is exported for plugins that compose their
// own (opencode-aidevops): parts built for the same `input` share one fetch and one notifier.
import { poolAuthHook } from "./plugin/auth.mjs";
import { poolConfigHook } from "./plugin/config.mjs";
import { createPoolTool } from "./plugin/tool.mjs";
import { pluginInput, pluginOptions } from "./plugin/shared.mjs";

export { ANTHROPIC_MODELS } from "./plugin/models.mjs";
export { poolAuthHook, poolConfigHook, createPoolTool };

/**
 * @param {import("@opencode-ai/plugin").PluginInput} input
 * @param {{ path?: string, toolName?: string, provider?: string }} [options] from
 *   `["opencode-oauth-pool/plugin", { path }]` in opencode.json
 */
export async function OAuthPoolPlugin(input, options) {
  pluginInput(input);
  const { toolName } = pluginOptions(options);
  return {
    auth: poolAuthHook(input, options),
    tool: { [toolName]: createPoolTool(input, options) },
    config: (config) => poolConfigHook(config, { ...(options ?? {}), input }),
  };
}
