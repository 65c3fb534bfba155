// API prices of Anthropic models, from OpenCode's models.dev cache when it exists: what the
// tokens a subscription used would have cost per token. USD per million tokens.
import { cachedAnthropicModels } from "./config.mjs";

/** `{ [modelId]: { input, output, cache_read, cache_write } }`, or null without a cache. */
export async function modelPrices() {
  const models = await cachedAnthropicModels();
  if (!models) return null;
  const out = {};
  for (const [id, m] of Object.entries(models)) {
    if (m?.cost && typeof m.cost === "object" && (m.cost.input || m.cost.output)) out[id] = m.cost;
  }
  return Object.keys(out).length ? out : null;
}
