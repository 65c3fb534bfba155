// The `auth` hook of the `anthropic-pool` provider. Logging in adds an account to the pool (the
// tokens stay in the native side and the pool file); OpenCode's own auth.json only gets a
// placeholder, so that its loader runs. The loader hands OpenCode the rotating fetch.
import { pool, pluginInput, pluginOptions, poolFetchFor, log, toast, reportUnknownOptions } from "./shared.mjs";
import { SUBSCRIPTION_TERMS } from "./format.mjs";

/** What OpenCode stores in auth.json for this provider: no secret, never expires. */
const PLACEHOLDER = Object.freeze({
  type: "success",
  refresh: "pool",
  access: "pool",
  expires: Date.UTC(9999, 11, 31),
});

/**
 * OpenCode 1.18 answers `{ type: "failed" }` with a bare "failed": the reason (a code pasted
 * twice, a login already refused, a key the API does not know) goes to the TUI as a toast as well
 * as to the log, where nobody looking at the dialog would find it.
 */
function failed(client, what, err) {
  const code = err?.code ? `${err.code}: ` : "";
  const message = `${what} failed: ${code}${err?.message ?? err}`;
  log(client, "error", message);
  toast(client, "error", message);
  return { type: "failed" };
}

// The models whose `cost` the person set in opencode.json, by host input and provider id, as the
// config hook found them: the loader leaves those as they are.
const costsOfTheirs = new WeakMap();
// Where a config hook called without `{ input }` notes them (the drop-in's `poolConfigHook(config)`):
// the loader of any host falls back to it, else it zeroed the prices the person set.
const NO_INPUT = {};
const theirCosts = (input, providerID) =>
  (input && typeof input === "object" ? costsOfTheirs.get(input)?.get(providerID) : undefined) ?? costsOfTheirs.get(NO_INPUT)?.get(providerID);

/**
 * Notes the model ids of `entry` (the person's provider entry) that carry a `cost`. OpenCode 1.18
 * hands the loader its provider with the config's models merged in, and the loader zeroed every
 * cost there: a price the person set ("your settings win") read 0 once they had logged in.
 */
export function noteTheirCosts(input, providerID, entry) {
  if (!input || typeof input !== "object") input = NO_INPUT;
  const models = entry?.models && typeof entry.models === "object" ? entry.models : {};
  const ids = Object.keys(models).filter((id) => models[id] && typeof models[id] === "object" && models[id].cost !== undefined);
  const byProvider = costsOfTheirs.get(input) ?? new Map();
  byProvider.set(providerID, new Set(ids));
  costsOfTheirs.set(input, byProvider);
}

/**
 * Zeroes every number under each model's `cost` (subscription requests are not billed per token),
 * but those of the models in `keep` (the person's own prices).
 * The models are the host's: a cost it froze keeps its prices and one that refers to itself is
 * walked once, rather than the loader throwing (a throwing hook can stop OpenCode 1.18 starting).
 */
export function zeroModelCosts(models, keep = new Set()) {
  const seen = new WeakSet();
  const zero = (cost) => {
    if (seen.has(cost)) return;
    seen.add(cost);
    for (const [k, v] of Object.entries(cost)) {
      if (typeof v === "number") {
        try {
          cost[k] = 0;
        } catch {}
      } else if (v && typeof v === "object") zero(v);
    }
  };
  if (!models || typeof models !== "object") return;
  for (const [id, m] of Object.entries(models)) if (!keep.has(id) && m?.cost && typeof m.cost === "object") zero(m.cost);
}

/** How long the prices' question may hold OpenCode's start (the config hook, the loader). */
const KINDS_WAIT_MS = 1000;

/**
 * True when the pool holds accounts and every one is a Console API key (billed per token). Not
 * known within `KINDS_WAIT_MS` (a fleet store that takes packets and never answers waits out
 * its 10 s connect timeout) is false, as an unreadable pool is: the prices only are at stake,
 * and OpenCode waits on the config hook and the loader before it starts at all.
 */
export async function apiKeysOnly(path) {
  const known = pool.listAccounts(path).then(
    (accounts) => accounts.length > 0 && accounts.every((a) => a.type === "api"),
    () => false,
  );
  let timer;
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, KINDS_WAIT_MS, false);
  });
  try {
    return await Promise.race([known, late]);
  } finally {
    clearTimeout(timer);
  }
}

export function poolAuthHook(input, options) {
  const client = pluginInput(input)?.client;
  const { path, provider: providerID } = pluginOptions(options);
  reportUnknownOptions(input, options);
  let fetch;

  return {
    // `anthropic-pool` by default; `anthropic` serves OpenCode's own provider through the pool.
    provider: providerID,

    async loader(_getAuth, provider) {
      // Tokens are never read here: the fetch reads the pool for every request.
      if (!(await apiKeysOnly(path))) zeroModelCosts(provider?.models, theirCosts(input, providerID));
      fetch ??= poolFetchFor(input, options);
      return { apiKey: "", fetch };
    },

    methods: [
      {
        type: "oauth",
        label: "Claude Pro/Max (add account to pool)",
        async authorize() {
          const { url, verifier, state } = await pool.authorize({ mode: "max" });
          return {
            url,
            instructions:
              "Sign in with the Claude account to add, then paste the code shown (code#state). " +
              "Each login adds one account to the pool; the same email again refreshes it. " +
              SUBSCRIPTION_TERMS,
            method: "code",
            async callback(code) {
              try {
                const { email, added } = await pool.addAccount(code, { verifier, state }, path);
                log(client, "info", `${added ? "added" : "updated"} ${email} in the Anthropic pool`);
                return { ...PLACEHOLDER };
              } catch (err) {
                return failed(client, "Adding the account", err);
              }
            },
          };
        },
      },
      {
        // An "api" method cannot run code in OpenCode 1.18 (the key goes straight to auth.json),
        // so the key is asked for by a prompt of an oauth-type method that finishes at once.
        type: "oauth",
        label: "Console API key (add to pool)",
        prompts: [
          {
            type: "text",
            key: "key",
            message: "Paste a Console API key (sk-ant-api03-...)",
            // What a paste brings along (quotes with spaces inside them, « ... ») is the native
            // side's to take off, as for `oauth-pool add-key`: refused here, such a key could not
            // be added in OpenCode at all.
            validate: (value) => (/\S{8,}/.test(value ?? "") ? undefined : "Paste the whole key (no spaces)"),
          },
          {
            type: "text",
            key: "label",
            message: "A name for this key in the pool (email or label, optional)",
          },
        ],
        async authorize(inputs = {}) {
          const key = String(inputs.key ?? "").trim();
          const label = String(inputs.label ?? "").trim();
          return {
            url: "",
            instructions: "Adding the key to the Anthropic pool...",
            method: "auto",
            async callback() {
              try {
                const { email, added } = await pool.addApiKey(key, { email: label || undefined, path });
                log(client, "info", `${added ? "added" : "updated"} API key ${email} in the Anthropic pool`);
                return { ...PLACEHOLDER };
              } catch (err) {
                return failed(client, "Adding the API key", err);
              }
            },
          };
        },
      },
    ],
  };
}
