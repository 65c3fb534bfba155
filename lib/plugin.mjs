// TEMPORARY placeholder until the plugin lands (replaced in the same change).
export const ANTHROPIC_MODELS = {};
export async function OAuthPoolPlugin() { throw new Error("not yet"); }
export function poolAuthHook() { throw new Error("not yet"); }
export function createPoolTool() { throw new Error("not yet"); }
export async function poolConfigHook() {}
