// The `config` hook: declares the `anthropic-pool` provider with every Anthropic model OpenCode
// knows, unless the user already said otherwise in opencode.json (their values win). Runs before
// OpenCode reads providers; it must not call the OpenCode client (provider state waits on plugin
// init, so that would deadlock).
import { createRequire } from "node:module";
import { open } from "node:fs/promises";
import { constants } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { ANTHROPIC_MODELS } from "./models.mjs";
import { apiOrigin, pluginInput, pluginOptions, poolFetchFor, reportUnknownOptions } from "./shared.mjs";
import { invalidArgument } from "../api.mjs";
import { apiKeysOnly, noteTheirCosts, zeroModelCosts } from "./auth.mjs";
import { noteRemoveRule, removePermission } from "./tool.mjs";

const require = createRequire(import.meta.url);

// The fields OpenCode reads from a model declared in config; the rest of a catalog entry
// (descriptions, pricing modes, ...) is not part of the config schema.
const MODEL_FIELDS = [
  "id",
  "name",
  "family",
  "release_date",
  "attachment",
  "reasoning",
  "temperature",
  "tool_call",
  "interleaved",
  "modalities",
  "limit",
  "cost",
  "status",
  "options",
  "headers",
  "variants",
  "provider",
];

/** The catalog OpenCode 1.18 fetches when OPENCODE_MODELS_URL is not set. */
const DEFAULT_MODELS_URL = "https://models.opencode.ai";

/**
 * Where OpenCode keeps its models.dev catalog cache. With OPENCODE_MODELS_URL (a mirror, an
 * offline setup) OpenCode 1.18.33 caches it as `models-<sha1 of the URL>.json`
 * (packages/opencode/src/provider/models.ts): read as `models.json`, the models OpenCode listed
 * were not the ones mirrored (a stale catalog, or only the built-in table).
 */
export function modelsCachePath(env = process.env) {
  if (env.OPENCODE_MODELS_PATH) return env.OPENCODE_MODELS_PATH;
  const cache = env.XDG_CACHE_HOME || join(homedir(), ".cache");
  const source = env.OPENCODE_MODELS_URL || DEFAULT_MODELS_URL;
  // node:crypto only here (a mirror named): loaded at import, it paged in about 1 MB of Bun's
  // code and heap in every process.
  const name = source === DEFAULT_MODELS_URL ? "models.json" : `models-${require("node:crypto").createHash("sha1").update(source).digest("hex")}.json`;
  return join(cache, "opencode", name);
}

// OpenCode's whole catalog is a few MB; a path that is a FIFO or a device must not hang or fill
// memory (the path comes from the environment).
export const MAX_CATALOG_BYTES = 64 * 1024 * 1024;

/** A regular file's text, at most `cap` bytes, opened without blocking; null otherwise. */
export async function readRegularFile(file, cap) {
  let handle;
  try {
    handle = await open(file, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
    const st = await handle.stat();
    if (!st.isFile() || st.size > cap) return null;
    const buf = await handle.readFile();
    return buf.length > cap ? null : buf.toString("utf8");
  } catch {
    return null;
  } finally {
    await handle?.close().catch(() => {});
  }
}

/** The `anthropic` models of OpenCode's catalog cache, or null when it is missing or unusable. */
export async function cachedAnthropicModels(file = modelsCachePath()) {
  try {
    const text = await readRegularFile(file, MAX_CATALOG_BYTES);
    if (text === null) return null;
    const models = JSON.parse(text)?.anthropic?.models;
    if (!models || typeof models !== "object" || Array.isArray(models)) return null;
    const out = {};
    for (const [id, def] of Object.entries(models)) {
      // Assigned, "__proto__" would set the table's prototype: it names no model.
      if (!def || typeof def !== "object" || id === "__proto__") continue;
      const copy = {};
      for (const k of MODEL_FIELDS) if (def[k] !== undefined) copy[k] = structuredClone(def[k]);
      if (!copy.name) copy.name = id;
      out[id] = copy;
    }
    return Object.keys(out).length ? out : null;
  } catch {
    return null;
  }
}

function isPlainObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

// Below this depth `over`'s value wins whole. Settings are a few levels deep; two config files
// sharing a key nested thousands deep overflowed the stack (doctor ended on it).
const MERGE_DEPTH = 64;

/** `base` overlaid with `over`: objects merge key by key, anything else from `over` wins. */
export function mergeUserWins(base, over, depth = 0) {
  if (!isPlainObject(base) || !isPlainObject(over) || depth >= MERGE_DEPTH) return over === undefined ? base : over;
  const out = { ...base };
  for (const [k, v] of Object.entries(over)) {
    // A "__proto__" key (JSON.parse makes it an own one) would set `out`'s prototype: no setting.
    if (k === "__proto__") continue;
    out[k] = Object.hasOwn(base, k) ? mergeUserWins(base[k], v, depth + 1) : v;
  }
  return out;
}

/**
 * The provider's `baseURL`, without a user name or password the variable may hold: the addon
 * refuses such a URL (`INSECURE_ENDPOINT`, the password masked), but the host lists `baseURL`
 * in its provider and model views, and Node's `Request` put it whole in the session's error.
 */
export function apiBaseURL(env = process.env) {
  const origin = apiOrigin(env);
  try {
    const url = new URL(origin);
    if (url.username || url.password) {
      url.username = "";
      url.password = "";
      return `${url.href.replace(/\/+$/, "")}/v1`;
    }
  } catch {}
  return `${origin}/v1`;
}

/** A model OpenCode can send to Anthropic: its id (or the key it is declared under) is a Claude one. */
const isClaudeModel = (key, model) => /^claude-/.test(String(model?.id ?? key));

/**
 * A provider entry another plugin wrote as a stand-in for `anthropic-pool` (aidevops writes one
 * with a single "pool-account-management" model, family "pool"): none of its models can reach
 * Anthropic, and one is that stand-in. Not a person's settings, so it does not stop us from
 * declaring the real models. A person's entry whose models are named otherwise (`fast`, without
 * a Claude id) is theirs: taken for a stand-in, its name and models were dropped.
 */
export function isPlaceholderEntry(entry) {
  const models = isPlainObject(entry?.models) ? Object.entries(entry.models) : [];
  return models.length > 0 && !models.some(([k, m]) => isClaudeModel(k, m)) && models.some(([k, m]) => isStandInModel(k, m));
}

const isStandInModel = (key, model) => key === "pool-account-management" || model?.family === "pool";

/**
 * What of a provider entry can be the user's settings: an entry, its `options` and its `models`
 * must be objects, and `options.fetch` a function (opencode.json cannot hold one; another
 * plugin's hook might write anything). Anything else there is dropped and ours stands: taken as
 * it is, it would leave the provider without the pool's fetch (requests failing with "fetchFn is
 * not a function", or sent without a credential of ours), without models, or make this hook
 * throw, which on 1.18 can stop OpenCode starting.
 */
export function usableEntry(entry) {
  if (!isPlainObject(entry)) return {};
  const out = { ...entry };
  if ("models" in out && !isPlainObject(out.models)) delete out.models;
  if ("options" in out && !isPlainObject(out.options)) delete out.options;
  if (out.options && "fetch" in out.options && typeof out.options.fetch !== "function") {
    const { fetch: _ignored, ...rest } = out.options;
    out.options = rest;
  }
  return out;
}

/** `entry` without what a stand-in wrote (its name, package, API and placeholder models). */
function withoutPlaceholder(entry) {
  if (!isPlaceholderEntry(entry)) return entry;
  const { name, npm, api, models, ...rest } = entry;
  return rest;
}

/**
 * Our provider entry. Its `models` survive a stand-in written over them later by another
 * plugin's config hook (aidevops assigns name, npm, api and models wholesale when they differ
 * from its placeholder): a model list with no Claude model is not taken.
 */
function guardModels(entry) {
  let models = entry.models;
  Object.defineProperty(entry, "models", {
    enumerable: true,
    configurable: true,
    get: () => models,
    set: (next) => {
      if (isPlaceholderEntry({ models: next })) return;
      models = next;
    },
  });
  return entry;
}

/**
 * Declares the pool's provider in OpenCode's config: `provider["anthropic-pool"]` with every
 * Anthropic model OpenCode knows, or, with the option `provider: "anthropic"`, OpenCode's own
 * `anthropic` provider served by the pool's fetch. The user's opencode.json settings win.
 * `options`: the plugin options, plus `input` (the host's plugin input) so that this part
 * shares the host's fetch and notices with the auth loader.
 */
export async function poolConfigHook(config, options = {}) {
  // What is in the config is the person's, taken or dropped without a throw (see below); the
  // config itself is always OpenCode's object, and anything else a caller's mistake.
  if (!config || typeof config !== "object" || Array.isArray(config)) {
    throw invalidArgument(
      `the config hook takes OpenCode's config object, got ${config === undefined ? "nothing" : config === null ? "null" : Array.isArray(config) ? "a list" : `a ${typeof config}`}`,
    );
  }
  const opts = pluginOptions(options);
  pluginInput(options?.input);
  reportUnknownOptions(options?.input, options, ["input"]);
  const fetch = poolFetchFor(options?.input, options);
  config.provider = isPlainObject(config.provider) ? config.provider : {};
  if (opts.provider === PROVIDER_ANTHROPIC) {
    // OpenCode's catalog already declares the models; the pool brings its fetch (used even
    // without an auth.json entry), a placeholder key and its API origin: without a baseURL here
    // OpenCode sends to the catalog's (api.anthropic.com), and with OAUTH_POOL_API_URL set
    // elsewhere every request was refused as off the pool's origin.
    const user = usableEntry(config.provider.anthropic);
    noteTheirCosts(options?.input, opts.provider, user);
    config.provider.anthropic = mergeUserWins({ options: { baseURL: apiBaseURL(), apiKey: "", fetch } }, user);
  } else {
    const models = (await cachedAnthropicModels()) ?? structuredClone(ANTHROPIC_MODELS);
    // A pool of Console API keys only is billed per token: keep the catalog's prices then.
    if (!(await apiKeysOnly(opts.path))) zeroModelCosts(models);
    const ours = {
      npm: "@ai-sdk/anthropic",
      name: "Anthropic Pool",
      options: {
        baseURL: apiBaseURL(),
        // Placeholder: the pool's fetch sets each request's credentials. With `fetch` here the
        // provider works even when auth.json has no entry for it (accounts added with the CLI).
        apiKey: "",
        fetch,
      },
      models,
    };
    const existing = withoutPlaceholder(usableEntry(ownValue(config.provider, opts.provider)));
    noteTheirCosts(options?.input, opts.provider, existing);
    setOwn(config.provider, opts.provider, guardModels(mergeUserWins(ours, existing)));
  }

  // `/<toolName> [action] [email] [n]` in the TUI runs the tool.
  config.command = isPlainObject(config.command) ? config.command : {};
  if (ownValue(config.command, opts.toolName) == null)
    setOwn(config.command, opts.toolName, {
      description: "Anthropic pool: list accounts, status, remove/enable/disable, priority, reset cooldowns",
      template:
        `Call the ${opts.toolName} tool once. Arguments from the user: "$ARGUMENTS" ` +
        "(first word: action, default list; then the account email; then a priority number if the action is priority). " +
        "Then reply with the tool's output exactly as it is, nothing else.",
    });

  // The tool's `remove` deletes a login only through OpenCode's permission prompt, and OpenCode
  // 1.18 allows what nobody configured (see consentThrough in tool.mjs): it asks under the tool's
  // name (the person's rules for the tool), then under `<toolName>-remove`, a key of its own whose
  // rule is ours. Ours could not be keyed on the tool's name: OpenCode hides a tool from an agent
  // when the last rule whose key matches the tool's name denies "*" (`disabled`,
  // packages/opencode/src/permission/index.ts), and a rule of ours for that name, read after the
  // "*": "deny" of the explore, compaction, title and summary agents (agent.ts), showed the tool
  // there, its other actions running unasked. The dedicated key does not match the tool's name
  // (a name is [A-Za-z0-9_-], no wildcard, and the key is longer), so the tool is shown where the
  // person's and OpenCode's rules show it, as with no rule of ours. Its rule: "ask", unless the person's rules decide every
  // remove (their rule for the tool's name, or one reaching it that does not allow): then
  // "allow", so that their answer stands and no second question follows theirs. A rule of the
  // person's for the dedicated key stands as it is. A string is the config's short form of
  // {"*": action} (OpenCode 1.18.33's PermissionConfig decodes it so).
  if (typeof config.permission === "string") config.permission = { "*": config.permission };
  else if (!isPlainObject(config.permission)) config.permission = {};
  const removeKey = removePermission(opts.toolName);
  const theirsForKey = ownsRemoveKey(config.permission, opts.toolName);
  if (!theirsForKey) config.permission[removeKey] = personDecides(config.permission, opts.toolName) ? "allow" : "ask";
  keepRuleInAgents(config, opts.toolName, theirsForKey);
  noteRemoveRule(opts.toolName);
}

/**
 * An agent's own `permission` block is read after the top-level rules (OpenCode 1.18.33,
 * packages/opencode/src/agent/agent.ts: an agent's rules are OpenCode's defaults ("*": "allow"
 * first), the agent's built-in ones, the top level, then `agent.<name>.permission`; ctx.ask
 * evaluates them, packages/opencode/src/session/tools.ts; `evaluate` in
 * packages/opencode/src/permission/index.ts takes the last rule whose key and pattern match).
 * So an agent's "*": "allow" (or "allow", the short form, packages/core/src/v1/config/permission.ts)
 * let `remove` run there without asking, and an agent's own rule deciding remove would be
 * followed by the top-level question under the dedicated key. So, in a block that decides
 * remove, the dedicated key is "allow" (the block's answer stands); in one that allows the tool
 * outright and decides nothing narrower, what the top level says is said again at its end: the
 * person's top-level rule for the tool's name, and the dedicated key's rule ("allow" after their
 * rule for the name if that decides remove, else "ask"). A rule of the person's for the dedicated
 * key stands: a block that has one is left as it is, and one at the top level is said again, not
 * replaced by ours, where a block's rule would override it. A block with no rule reaching the
 * tool is left as it is (the top level applies); no agent is created. `mode.<name>` entries are
 * merged into `agent` before plugins' config hooks (loadInstanceState,
 * packages/opencode/src/config/config.ts); they get the same, so that the two never disagree.
 */
function keepRuleInAgents(config, toolName, theirsForKey) {
  const top = config.permission;
  const removeKey = removePermission(toolName);
  for (const group of [config.agent, config.mode]) {
    if (!isPlainObject(group)) continue;
    for (const agent of Object.values(group)) {
      if (!isPlainObject(agent)) continue;
      const own = typeof agent.permission === "string" ? { "*": agent.permission } : agent.permission;
      if (!isPlainObject(own) || ownsRemoveKey(own, toolName)) continue;
      const decides = personDecides(own, toolName);
      if (!decides && !allowsOutright(own, toolName)) continue;
      if (theirsForKey && decides && !reaches(own, removeKey)) continue;
      if (!decides && Object.hasOwn(top, toolName)) own[toolName] = copyRule(top[toolName]);
      if (theirsForKey) {
        for (const key of Object.keys(top)) if (onlyRemoveKey(key, toolName)) own[key] = copyRule(top[key]);
      } else {
        own[removeKey] = personDecides(own, toolName) ? "allow" : "ask";
      }
      agent.permission = own;
    }
  }
}

const copyRule = (rule) => (isPlainObject(rule) ? { ...rule } : rule);

/** A key that reaches the dedicated remove key and not the tool's name: the person's rule for it. */
function onlyRemoveKey(key, toolName) {
  return wildcardMatch(removePermission(toolName), key) && !wildcardMatch(toolName, key);
}

function ownsRemoveKey(permission, toolName) {
  return Object.keys(permission).some((key) => onlyRemoveKey(key, toolName));
}

function reaches(permission, name) {
  return Object.keys(permission).some((key) => wildcardMatch(name, key));
}

/**
 * Whether a rule in `permission` reaching the tool allows all of it ("allow", or "*": "allow").
 * A narrower allow names what it lets through: the person's decision, like their own rules.
 */
function allowsOutright(permission, toolName) {
  return Object.entries(permission).some(
    ([key, value]) => wildcardMatch(toolName, key) && (value === "allow" || (isPlainObject(value) && value["*"] === "allow")),
  );
}

// What the tool asks under its name: `remove <email>` or `remove #N` (tool.mjs). A pattern
// matching all of these covers every target; one naming some accounts ("remove alice@*") leaves
// the others undecided. The last two match no narrow pattern (a `remove *x*` matched the first
// two, passed for "every remove", and `remove bob@foo.com` went through unasked).
const REMOVE_PROBES = ["remove someone@example.com", "remove x", "remove #0", "remove \u0001"];
const coversRemove = (pattern) => REMOVE_PROBES.every((text) => wildcardMatch(text, pattern));

/**
 * Whether the person's `permission` rules answer every `remove` the tool asks under its name:
 * a rule for its name (a string, or a pattern covering every remove, "allow" included), or one
 * for a key reaching it (OpenCode's wildcards) that covers every remove and does not allow. A
 * catch-all "allow" is OpenCode's own default said again: ours still follows it.
 */
function personDecides(permission, toolName) {
  return Object.entries(permission).some(([key, value]) => {
    if (!wildcardMatch(toolName, key)) return false;
    const named = key === toolName;
    if (typeof value === "string") return named || value !== "allow";
    if (!isPlainObject(value)) return false;
    return Object.entries(value).some(([pattern, action]) => coversRemove(pattern) && (named || action !== "allow"));
  });
}

/**
 * `obj[key]` when `obj` holds it itself: a name such as `constructor` or `__proto__` otherwise
 * reads what every object inherits, and the tool's command or the provider was taken as there.
 */
const ownValue = (obj, key) => (Object.hasOwn(obj, key) ? obj[key] : undefined);

/** Sets `obj[key]` as an own field, also for `__proto__` (an assignment would set the prototype). */
function setOwn(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true, enumerable: true, configurable: true });
}

/** OpenCode 1.18's Wildcard.match: `*` any run, `?` one character, a trailing " *" optional. */
export function wildcardMatch(text, pattern) {
  let re = pattern
    .replaceAll("\\", "/")
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  if (re.endsWith(" .*")) re = `${re.slice(0, -3)}( .*)?`;
  // A run of stars matches what one does; left as ".*.*.*…", a dozen of them backtracked for
  // seconds against the texts tried here, and held up the config hook (OpenCode's start).
  re = re.replace(/(?:\.\*){2,}/g, ".*");
  return new RegExp(`^${re}$`, "s").test(text.replaceAll("\\", "/"));
}

const PROVIDER_ANTHROPIC = "anthropic";
