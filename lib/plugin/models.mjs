// The Anthropic models offered under `anthropic-pool` when OpenCode's models.dev cache is missing
// or unreadable: the `anthropic` entries of the catalog snapshot built into OpenCode 1.18.33,
// copied field for field (the fields OpenCode reads from a config model). Costs are zero:
// subscription (OAuth) members are not billed per token.

const ZERO_COST = { input: 0, output: 0, cache_read: 0, cache_write: 0 };

function model(name, family, release_date, context, output, temperature) {
  return {
    name,
    family,
    release_date,
    attachment: true,
    reasoning: true,
    temperature,
    tool_call: true,
    modalities: { input: ["text", "image", "pdf"], output: ["text"] },
    limit: { context, output },
    cost: { ...ZERO_COST },
  };
}

const M = 1_000_000;
const K = 1_000;

const table = {
  "claude-opus-5-5": model("Claude Opus 5.5", "claude-opus", "2026-09-22", M, 128 * K, false),
  "claude-fable-5-1": model("Claude Fable 5.1", "claude-fable", "2026-09-01", M, 128 * K, false),
  "claude-opus-5": model("Claude Opus 5", "claude-opus", "2026-07-24", M, 128 * K, false),
  "claude-sonnet-5": model("Claude Sonnet 5", "claude-sonnet", "2026-06-29", M, 128 * K, false),
  "claude-fable-5": model("Claude Fable 5", "claude-fable", "2026-06-07", M, 128 * K, false),
  "claude-opus-4-8": model("Claude Opus 4.8", "claude-opus", "2026-05-28", M, 128 * K, false),
  "claude-opus-4-7": model("Claude Opus 4.7", "claude-opus", "2026-04-14", M, 128 * K, false),
  "claude-sonnet-4-6": model("Claude Sonnet 4.6", "claude-sonnet", "2026-02-17", M, 128 * K, true),
  "claude-opus-4-6": model("Claude Opus 4.6", "claude-opus", "2026-02-04", M, 128 * K, true),
  "claude-opus-4-5": model("Claude Opus 4.5 (latest)", "claude-opus", "2025-11-24", 200 * K, 64 * K, true),
  "claude-opus-4-5-20251101": model("Claude Opus 4.5", "claude-opus", "2025-11-24", 200 * K, 64 * K, true),
  "claude-haiku-4-5": model("Claude Haiku 4.5 (latest)", "claude-haiku", "2025-10-15", 200 * K, 64 * K, true),
  "claude-haiku-4-5-20251001": model("Claude Haiku 4.5", "claude-haiku", "2025-10-15", 200 * K, 64 * K, true),
  "claude-sonnet-4-5": model("Claude Sonnet 4.5 (latest)", "claude-sonnet", "2025-09-29", M, 64 * K, true),
  "claude-sonnet-4-5-20250929": model("Claude Sonnet 4.5", "claude-sonnet", "2025-09-29", M, 64 * K, true),
};

/** @type {Record<string, import("../../index.d.ts").ModelDefinition>} */
export const ANTHROPIC_MODELS = Object.freeze(Object.fromEntries(Object.entries(table).map(([id, m]) => [id, deepFreeze({ id, ...m })])));

function deepFreeze(value) {
  if (value && typeof value === "object") {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}
