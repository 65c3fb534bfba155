import type { Plugin } from "@opencode-ai/plugin";

/** The OpenCode plugin module: `plugin: ["opencode-oauth-pool/plugin"]` in opencode.json. */
declare const plugin: {
  id: "oauth-pool";
  /** Options (second element of a `[spec, options]` entry): `{ path?: string }`, the pool file. */
  server: Plugin;
};
export default plugin;
