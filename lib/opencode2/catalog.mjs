// OpenCode 2: what the host lists. The `anthropic-pool` integration (its login methods add
// accounts to OUR pool file, the single source of truth shared with 1.18 hosts, the CLI and the
// library; the host stores only a placeholder), and the `anthropic-pool` provider on the host's
// native Anthropic route with every Anthropic model the host knows.
// Shapes: anomalyco/opencode packages/plugin/src/promise/integration.ts, provider.ts,
// packages/schema/src/provider.ts, model.ts, form.ts (see __tests__/helpers/opencode2-host.mjs).
import * as api from "../api.mjs";
import { ANTHROPIC_MODELS } from "../plugin/models.mjs";
import { apiBaseURL } from "../plugin/config.mjs";
import { SUBSCRIPTION_TERMS } from "../plugin/format.mjs";

export const INTEGRATION_ID = "anthropic-pool";
export const NATIVE_ANTHROPIC = "@opencode/ai/providers/anthropic";
export const OAUTH_METHOD = "claude-max";
export const KEY_METHOD = "console-api-key";

// What the host stores for a login: no secret, never refreshed (the pool refreshes its own).
const FAR_FUTURE = Date.UTC(9999, 11, 31);
const placeholder = (methodID, email) => ({
  type: "oauth",
  methodID,
  access: "pool",
  refresh: "pool",
  expires: FAR_FUTURE,
  // Spread into provider settings by the host: one harmless key, no setting names.
  metadata: { email },
});

/**
 * A login of an account the host already holds a placeholder for. The host stores a new
 * credential for every completed login (packages/core/src/integration.ts `settle` ->
 * credential.ts `create`, always an insert) and a plugin can neither update nor remove one
 * (packages/plugin/src/promise/adapter.ts offers `credential.activate` and
 * `integration.connection.{active,resolve,status}` only): so the login ends here, the pool's
 * account renewed, the one placeholder made active and its needs-login mark cleared, and the
 * host is told so instead of being handed a second placeholder.
 */
async function renewed(existing, email, log) {
  if (!existing) return undefined;
  let conn;
  try {
    conn = await existing.find(email);
    if (!conn) return undefined;
    await existing.renew(conn);
  } catch (err) {
    log("warn", `could not look up the host's connection for ${email}: ${err?.message ?? err}`);
    if (!conn) return undefined;
  }
  // Thrown to the host, which shows its message; coded as every error of the pool's is.
  const told = new Error(`${email} was already connected: its login in the Anthropic pool is renewed, and its connection kept (no second one is added)`);
  told.code = "ALREADY_CONNECTED";
  return told;
}

/**
 * The integration: Claude Pro/Max code paste, and a Console API key asked for by a form.
 * `existing` ({ find(email), renew(connection) }) reaches the host's connections, where it can.
 */
export function integrationTransform({ path, log, existing, changed = () => {} }) {
  return (editor) => {
    editor.update(INTEGRATION_ID, (i) => {
      i.name = "Anthropic Pool";
    });
    editor.method.update({
      integrationID: INTEGRATION_ID,
      method: { id: OAUTH_METHOD, type: "oauth", label: "Claude Pro/Max (add account to pool)" },
      authorize: async () => {
        const { url, verifier, state } = await api.authorize({ mode: "max" });
        return {
          mode: "code",
          url,
          instructions:
            "Sign in with the Claude account to add, then paste the code shown (code#state). " +
            "Each login adds one account to the pool; the same email again refreshes it. " +
            SUBSCRIPTION_TERMS,
          callback: async (code) => {
            const { email, added } = await api.addAccount(code, { verifier, state }, path);
            log("info", `${added ? "added" : "updated"} ${email} in the Anthropic pool`);
            changed();
            const kept = await renewed(existing, email, log);
            if (kept) throw kept;
            return placeholder(OAUTH_METHOD, email);
          },
        };
      },
      label: (credential) => credential?.metadata?.email,
    });
    // A host `key` method never runs plugin code (the host would keep the key itself), so the
    // key is asked for by a form on an OAuth-type method that finishes at once.
    editor.method.update({
      integrationID: INTEGRATION_ID,
      method: {
        id: KEY_METHOD,
        type: "oauth",
        label: "Console API key (add to pool)",
        form: [
          { key: "key", type: "string", title: "Console API key (sk-ant-api03-...)", required: true, minLength: 8 },
          { key: "label", type: "string", title: "A name for this key in the pool (email or label, optional)" },
        ],
      },
      authorize: async (answer = {}) => {
        const key = String(answer.key ?? "").trim();
        const label = String(answer.label ?? "").trim();
        const added = api.addApiKey(key, { email: label || undefined, path }).then(async ({ email, added: isNew }) => {
          log("info", `${isNew ? "added" : "updated"} API key ${email} in the Anthropic pool`);
          changed();
          const kept = await renewed(existing, email, log);
          if (kept) throw kept;
          return placeholder(KEY_METHOD, email);
        });
        added.catch(() => {});
        return { mode: "auto", url: "", instructions: "Adding the key to the Anthropic pool...", callback: added };
      },
      label: (credential) => credential?.metadata?.email,
    });
  };
}

/** OpenCode 2's Model.Info for one of our built-in models (when the host has no `anthropic`). */
function modelInfo(id, m, providerID) {
  return {
    id,
    modelID: id,
    providerID,
    name: m.name,
    family: m.family,
    capabilities: { tools: m.tool_call !== false, input: [...(m.modalities?.input ?? ["text"])], output: [...(m.modalities?.output ?? ["text"])] },
    variants: [],
    time: { released: Date.parse(m.release_date ?? "") || 0 },
    cost: [],
    status: "active",
    enabled: true,
    limit: { context: m.limit?.context ?? 200_000, output: m.limit?.output ?? 32_000 },
  };
}

/** packages/schema/src/model.ts `Model.Info.default(providerID, id)`: the host's blank model. */
function defaultModel(providerID, id) {
  return {
    id,
    modelID: id,
    providerID,
    name: id,
    capabilities: { tools: true, input: ["text", "image"], output: ["text"] },
    variants: [],
    time: { released: 0 },
    cost: [],
    status: "active",
    enabled: true,
    limit: { context: 200_000, output: 32_000 },
  };
}

const isRecord = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/**
 * `own` over `base`, field by field, leaving out what `own` only has from `blank` (the host's
 * default, not a setting). A value set equal to that default cannot be told from it; the
 * mirrored value stays then.
 */
function overrides(base, own, blank) {
  const out = { ...base };
  for (const [key, value] of Object.entries(own)) {
    if (value === undefined) continue;
    const from = blank?.[key];
    if (isRecord(value) && isRecord(base[key])) out[key] = overrides(base[key], value, isRecord(from) ? from : undefined);
    else if (key === "variants" && Array.isArray(value) && Array.isArray(base[key])) out[key] = variantsOver(base[key], value);
    else if (from === undefined || !same(value, from)) out[key] = value;
  }
  return out;
}

/**
 * A model's variants are a list keyed by `id`, which the host merges by id
 * (packages/core/src/config/plugin/provider.ts): one variant set in config is laid over the
 * mirrored one of that id, and the others stay. Replaced whole, tweaking `high` dropped `low`
 * and `max`, and `high` lost its thinking budget.
 */
function variantsOver(base, own) {
  const out = base.map((v) => structuredClone(v));
  for (const v of own) {
    const at = isRecord(v) ? out.findIndex((b) => isRecord(b) && b.id === v.id) : -1;
    if (at === -1) out.push(v);
    else out[at] = overrides(out[at], v);
  }
  return out;
}

// Every price in a cost entry becomes 0; a `tier` (Model.Cost's `{type: "context", size}`) is
// where the entry applies, not a price, and is kept: zeroed, a 200k-token tier claimed to start
// at 0 tokens.
function zeroCosts(model) {
  if (!Array.isArray(model.cost)) return;
  const zeroed = (value) => {
    if (typeof value === "number") return 0;
    if (value === null || typeof value !== "object") return value;
    if (Array.isArray(value)) return value.map(zeroed);
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, k === "tier" ? structuredClone(v) : zeroed(v)]));
  };
  model.cost = model.cost.map((c) => zeroed(JSON.parse(JSON.stringify(c))));
}

/**
 * The provider: linked to the integration, on the native Anthropic route (the host sends; our
 * http hooks set each request's account), with the host's Anthropic models mirrored. Settings
 * the user gave `anthropic-pool` in the host's config win. `wireModels` (a Map, filled anew at
 * each fold) learns each model whose API id differs from its catalog id (a config alias such as
 * `fast` for `claude-haiku-4-5`): the request hooks are told the catalog id alone.
 */
/**
 * A transform that changes nothing and reads which of `providerID`'s models go to the API under
 * another id (`wireModels`, as `providerTransform` fills it): with `provider: "anthropic"` the
 * host's own provider is served as it is, and an alias (`fast` for `claude-haiku-4-5`) was
 * counted under its own name and sent to an account whose haiku window was spent.
 */
export function aliasesOf(providerID, wireModels, { listed = false, apiKeysOnly } = {}) {
  return (editor) => {
    if (listed && typeof editor.update === "function" && editor.get(providerID))
      editor.update(providerID, (p) => {
        // The host lists an "auto" provider only once it has a login of its own
        // (packages/core/src/provider.ts snapshot()): a pool filled by the CLI or on 1.18, with
        // no host login, left the provider and every model out, while the log said it was served.
        if (p.activation !== "disabled") p.activation = "enabled";
        // Requests go where the pool sends its credentials (OAUTH_POOL_API_URL), as 1.18's config
        // hook sets it: left at the host's default origin, each was refused as off the pool's. A
        // baseURL of the user's own still wins.
        p.settings = { baseURL: apiBaseURL(), ...(isRecord(p.settings) ? p.settings : {}) };
      });
    // Subscription use is not billed per token: its prices zeroed, as 1.18 and `anthropic-pool`
    // show them, unless the pool holds API keys alone.
    const keysOnly = typeof apiKeysOnly === "function" ? apiKeysOnly() : apiKeysOnly;
    if (listed && keysOnly === false && typeof editor.models?.update === "function")
      for (const m of [...(editor.get(providerID)?.models?.values() ?? [])]) if (Array.isArray(m?.cost)) editor.models.update(providerID, m.id, zeroCosts);
    wireModels.clear();
    for (const m of editor.get(providerID)?.models?.values() ?? []) {
      if (typeof m?.modelID === "string" && m.modelID && m.modelID !== m.id) wireModels.set(m.id, m.modelID);
    }
  };
}

/** `apiKeysOnly`: a function, asked at each fold (the pool's kind changes as accounts are added). */
export function providerTransform({ providerID, apiKeysOnly, wireModels }) {
  return (editor) => {
    const keysOnly = typeof apiKeysOnly === "function" ? apiKeysOnly() : apiKeysOnly;
    const existing = editor.get(providerID);
    const anthropic = editor.get("anthropic");
    const models = new Map();
    const source = anthropic?.models?.size ? [...anthropic.models.values()] : Object.entries(ANTHROPIC_MODELS).map(([id, m]) => modelInfo(id, m, providerID));
    for (const m of source) {
      const copy = structuredClone(m);
      copy.providerID = providerID;
      delete copy.package; // the provider's package (native Anthropic) applies
      if (!keysOnly) zeroCosts(copy); // subscription use is not billed per token
      models.set(copy.id, copy);
    }
    // A model your config names exists before this transform runs, made by the host's editor
    // from `Model.Info.default` with your fields set on it: merged over the mirrored model, so
    // what you set wins and the rest (name, capabilities, costs, limits) stays the mirror's.
    for (const m of existing?.models?.values() ?? []) {
      const own = structuredClone(m);
      const base = models.get(m.id);
      models.set(m.id, base ? overrides(base, own, defaultModel(providerID, m.id)) : own);
    }
    const ours = {
      id: providerID,
      name: "Anthropic Pool",
      // Listed even before any host login: accounts added with the CLI or on 1.18 count too.
      activation: "enabled",
      integrationID: INTEGRATION_ID,
      package: NATIVE_ANTHROPIC,
      settings: { baseURL: apiBaseURL() },
    };
    const info = existing?.provider ? { ...ours, ...structuredClone(existing.provider), id: providerID, integrationID: INTEGRATION_ID } : ours;
    // Laid over ours, as the host lays config over a provider's settings (`mergeOverlay`): a
    // timeout you set keeps our baseURL (replaced whole, the host then sent to its default
    // origin, which the pool refuses when OAUTH_POOL_API_URL names another), and your own
    // baseURL still wins.
    for (const [key, value] of Object.entries(ours)) if (isRecord(value) && isRecord(info[key]) && info[key] !== value) info[key] = { ...value, ...info[key] };
    if (!info.package) info.package = NATIVE_ANTHROPIC;
    // A provider your config names exists before this transform runs, made by the host's
    // editor from `Provider.Info.empty(id)` (packages/schema/src/provider.ts: name = id,
    // activation "auto", package ""): those defaults are not settings. "auto" would list the
    // provider only once a host login exists, hiding it (with every model) from a pool filled
    // by the CLI or on 1.18; only an explicit "disabled" is kept.
    if (info.activation !== "disabled") info.activation = "enabled";
    if (!info.name || info.name === providerID) info.name = ours.name;
    wireModels?.clear();
    for (const m of models.values()) if (typeof m.modelID === "string" && m.modelID && m.modelID !== m.id) wireModels?.set(m.id, m.modelID);
    editor.add({ info, models: [...models.values()] });
  };
}
