// The OpenCode plugin entry (`opencode-oauth-pool/plugin`). OpenCode calls every export of a
// plugin module as a plugin, so this module exports only the plugin itself.
import { OAuthPoolPlugin } from "./lib/plugin.mjs";

export default { id: "oauth-pool", server: OAuthPoolPlugin };
