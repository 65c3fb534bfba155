import type { Plugin } from "@opencode-ai/plugin";
import type { PoolPluginOptions } from "./index.js";

/** What OpenCode 2 hands `setup`: the parts the pool uses are looked up, never assumed. */
export interface OpenCode2Context {
  options?: PoolPluginOptions;
  session?: { hook?: (...args: never[]) => unknown };
  [domain: string]: unknown;
}

/**
 * The OpenCode plugin module: `plugin: ["opencode-oauth-pool"]` (1.18) or
 * `plugins: ["opencode-oauth-pool"]` (2.x) in opencode.json.
 */
declare const plugin: {
  id: "oauth-pool";
  /** OpenCode 1.18. Options: the second element of a `[spec, options]` entry. */
  server: Plugin;
  /**
   * OpenCode 2. On 1.18's registration-only context it registers nothing; on 2.x it registers
   * the integration, the provider, the http hooks, the tool and the command, and resolves a
   * cleanup function.
   */
  setup: (ctx: OpenCode2Context) => Promise<void | (() => Promise<void>)>;
};
export default plugin;
