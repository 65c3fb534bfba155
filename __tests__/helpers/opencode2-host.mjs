// A small stand-in for the OpenCode 2.x plugin host, for tests. OpenCode 2's packages are not on the
// registry this machine reaches, so this reproduces, in our own code, the behaviour read in the
// public source of anomalyco/opencode (`@opencode/*` snapshot, late 2026). Each behaviour carries the
// source file it follows; the README's OpenCode 2 section says what this harness does not emulate.
// Only `node:`-free web globals plus `process`, so it runs under Node >= 20 and Bun. It sends traffic
// only where the caller's fetch and the provider's baseURL point (tests use 127.0.0.1).
//
//   const plugin = loadPlugin(await import("../plugin.mjs"), { options })   // decode like 2.x
//   const host = createHost({ fetch, sleep: async () => {} })
//   const handle = await host.start(plugin)          // setup(ctx) with a G2 context
//   await host.login("anthropic-pool", "oauth", { code })  /  await host.connectKey(id, "sk-…")
//   const res = await host.modelRequest({ providerID, modelID, body })   // model-request path
//   await handle.unload()
//   g1Context(options) + registrationsOf(ctx)         // the registration-only 1.18.33 context

// packages/core/src/plugin/module.ts: the message of the LoadError raised when `Definition` fails.
export const LOAD_ERROR_MESSAGE = "Plugin must export a default definition with an id and an effect or setup function.";
// packages/ai/src/protocols/anthropic-messages.ts: DEFAULT_BASE_URL, PATH, route headers.
export const ANTHROPIC_BASE_URL = "https://api.anthropic.com/v1";
export const ANTHROPIC_PACKAGE = "@opencode/ai/providers/anthropic";
const ANTHROPIC_PACKAGES = new Set([ANTHROPIC_PACKAGE, "@opencode/ai/providers/anthropic-compatible", "@ai-sdk/anthropic"]);
const SESSION_HOOKS = new Set(["prompt", "context", "compaction", "generate", "title", "model.request", "http.request", "http.response", "retry"]);

export class PluginLoadError extends Error {
  constructor(message, cause) {
    super(message, { cause });
    this.name = "PluginModule.LoadError";
  }
}
/** A model request that ended with a session error (packages/core/src/session/to-session-error.ts shape). */
export class ModelRequestError extends Error {
  constructor(error, details) {
    super(error.message);
    this.name = "ModelRequestError";
    this.error = error;
    Object.assign(this, details);
  }
}
/** A plugin hook threw: in 2.x the promise adapter wraps hooks in Effect.promise, so this is a defect. */
export class HookDefect extends Error {
  constructor(hook, cause) {
    super(`${hook} hook failed: ${cause?.message ?? cause}`, { cause });
    this.name = "HookDefect";
    this.hook = hook;
  }
}

// packages/core/src/plugin/module.ts: Schema.Struct({ default: Union([{id: String, effect: fn}, {id: String, setup: fn}]) }).
// The effect member is tried first; the decoded value keeps only the declared keys, so `setup` is
// later called on a copy `{ id, setup }` (no `this.server`). Options come from the config entry
// (`{ package, options }`, or `{}` for a bare string: packages/core/src/config/plugin/source.ts `parse`).
export function loadPlugin(moduleNamespace, { options = {} } = {}) {
  const value = moduleNamespace?.default;
  const isObject = value !== null && (typeof value === "object" || typeof value === "function");
  if (!isObject || typeof value.id !== "string") throw new PluginLoadError(LOAD_ERROR_MESSAGE);
  if (typeof value.effect === "function") return { id: value.id, kind: "effect", plugin: { id: value.id, effect: value.effect }, options };
  if (typeof value.setup === "function") return { id: value.id, kind: "setup", plugin: { id: value.id, setup: value.setup }, options };
  throw new PluginLoadError(LOAD_ERROR_MESSAGE);
}

// ---------------------------------------------------------------------------------------------
// Seed data: a built-in `anthropic` integration, provider and models, as a fresh 2.x host has them.
// Integration methods as observed on 1.18.33 [RAN]; Provider.Info / Model.Info shapes from
// packages/schema/src/provider.ts and packages/schema/src/model.ts (`Model.Info.default`).
const seedModel = (id, name, output, cost) => ({
  id,
  modelID: id,
  providerID: "anthropic",
  family: "claude",
  name,
  capabilities: { tools: true, input: ["text", "image", "pdf"], output: ["text"] },
  variants: [],
  time: { released: 0 },
  status: "active",
  enabled: true,
  cost: [{ input: cost[0], output: cost[1], cache: { read: cost[0] / 10, write: cost[0] * 1.25 } }],
  limit: { context: 200_000, output },
});
export const SEED_ANTHROPIC_MODELS = [
  seedModel("claude-sonnet-4-5", "Claude Sonnet 4.5", 64_000, [3, 15]),
  seedModel("claude-opus-4-1", "Claude Opus 4.1", 32_000, [15, 75]),
  seedModel("claude-haiku-4-5", "Claude Haiku 4.5", 64_000, [1, 5]),
];

// packages/schema/src/model.ts `Model.Info.default(providerID, id)`: what models.update() starts
// from for a model the provider does not have yet (a config entry naming one, for instance).
export const defaultModel = (providerID, id) => ({
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
});

const clone = (v) => (v === undefined ? v : structuredClone(v));
function deepFreeze(v) {
  if (v && typeof v === "object" && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}
const isRecord = (v) => typeof v === "object" && v !== null && !Array.isArray(v);
// packages/core/src/provider.ts mergeOverlay / mergeHeaders (headers merge case-insensitively, overlay wins).
function mergeOverlay(base, overlay) {
  if (base === undefined) return overlay && { ...overlay };
  if (overlay === undefined) return { ...base };
  const out = { ...base };
  for (const [k, v] of Object.entries(overlay)) if (v !== undefined) out[k] = isRecord(base[k]) && isRecord(v) ? mergeOverlay(base[k], v) : v;
  return out;
}
function mergeHeaders(base, overlay) {
  const m = new Map();
  for (const [k, v] of [...Object.entries(base ?? {}), ...Object.entries(overlay ?? {})]) m.set(k.toLowerCase(), [k, v]);
  return Object.fromEntries(m.values());
}
const isPlainJson = (v) => {
  if (v === null || ["string", "number", "boolean"].includes(typeof v)) return true;
  if (Array.isArray(v)) return v.every(isPlainJson);
  if (typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return (proto === Object.prototype || proto === null) && Object.values(v).every(isPlainJson);
};

// packages/ai/src/route/executor.ts retryAfterMs: retry-after-ms, then retry-after (seconds or HTTP date).
function retryAfterMs(headers) {
  const ms = Number(headers.get("retry-after-ms") ?? NaN);
  if (Number.isFinite(ms)) return Math.max(0, ms);
  const v = headers.get("retry-after");
  if (!v) return undefined;
  if (Number.isFinite(Number(v))) return Math.max(0, Number(v) * 1000);
  const d = Date.parse(v);
  return Number.isNaN(d) ? undefined : Math.max(0, d - Date.now());
}
// packages/ai/src/provider-error.ts classifyProviderFailure, reduced to the branches an Anthropic
// HTTP failure can take; executor.ts providerMessage picks error.message / message from the body.
function classify(status, body, headers) {
  let json;
  try {
    json = JSON.parse(body);
  } catch {}
  const message = [json?.error?.message, json?.message].find((m) => typeof m === "string" && m.trim()) ?? `Provider request failed with HTTP ${status}`;
  const codes = [json?.code, json?.error?.code, json?.error?.type].filter((c) => typeof c === "string").map((c) => c.toLowerCase());
  const text = body || message;
  const retryAfter = retryAfterMs(headers);
  const tag = (() => {
    if (status < 500 && (codes.includes("context_length_exceeded") || /prompt is too long|exceeds the context window/i.test(text))) return "ContextOverflow";
    if (status === 413 || /request_too_large|payload too large/i.test(text)) return "InvalidRequest";
    if (/content[-_\s]?policy|content_filter|safety/i.test(text)) return "ContentPolicy";
    if (
      codes.some((c) => ["insufficient_quota", "usage_not_included", "billing_error"].includes(c)) ||
      (status === 429 && /insufficient[-_\s]?quota|quota[-_\s]?exceeded/i.test(text))
    )
      return "QuotaExceeded";
    if (status === 401 || status === 403 || codes.includes("authentication_error") || codes.includes("permission_error")) return "Authentication";
    if (codes.some((c) => c.includes("rate_limit") || c === "too_many_requests") || /rate[-_\s]?limit|too[_\s]?many[_\s]?requests/i.test(text))
      return "RateLimit";
    if (
      codes.some((c) => ["api_error", "internal_error", "overloaded_error", "server_error"].includes(c) || c.includes("exhausted") || c.includes("unavailable"))
    )
      return "ProviderInternal";
    if (status === 429) return "RateLimit";
    if (status === 408 || status === 409 || status >= 500) return "ProviderInternal";
    if (status === 400 || status === 404 || status === 422) return "InvalidRequest";
    return "UnknownProvider";
  })();
  if (tag === "ContextOverflow") return { tag: "InvalidRequest", overflow: true, message, status };
  return {
    tag,
    message,
    status,
    retryAfterMs: ["RateLimit", "ProviderInternal"].includes(tag) ? retryAfter : undefined,
    shouldRetry: headers.get("x-should-retry"),
  };
}
// packages/ai isRetryable (re-exported by packages/core/src/session/runner/retry.ts).
function isRetryable(cause) {
  if (cause.shouldRetry === "true") return true;
  if (cause.shouldRetry === "false") return false;
  return ["RateLimit", "ProviderInternal", "Transport", "UnknownProvider"].includes(cause.tag);
}
// packages/core/src/session/to-session-error.ts: reason tag -> SessionError `type`, with `status`.
const ERROR_TYPES = {
  RateLimit: "provider.rate-limit",
  Authentication: "provider.auth",
  QuotaExceeded: "provider.quota",
  ContentPolicy: "provider.content-filter",
  Transport: "provider.transport",
  ProviderInternal: "provider.internal",
  InvalidRequest: "provider.invalid-request",
  UnknownProvider: "provider.unknown",
};
const toSessionError = (c) => ({
  type: ERROR_TYPES[c.tag],
  message: c.message,
  ...(c.status === undefined ? {} : { status: c.status }),
  ...(c.body === undefined ? {} : { response: { body: c.body } }),
});

// packages/core/src/session/runner/retry.ts (`@opencode/*` snapshot): exponential from 2 s capped
// at 10 s per gap, at most 10 retries, jittered (x0.8..1.2), floored by retry-after (cap 15 min);
// transport timeouts retry at most 3 times. The `retry` hook sees the proposed decision and may
// replace it; a non-finite or negative delay falls back to the proposal.
function retryPolicy(random) {
  let recurrences = 0,
    attempt = 1,
    timeouts = 0;
  return async (cause, retryable, hook) => {
    if (recurrences >= 10) return { retry: false };
    let delay = Math.min(2000 * 2 ** recurrences, 10_000) * (0.8 + random() * 0.4);
    recurrences++;
    if (cause.retryAfterMs !== undefined) delay = Math.max(delay, Math.min(cause.retryAfterMs, 15 * 60_000));
    delay = Math.ceil(delay);
    attempt++;
    if (cause.tag === "Transport" && cause.code === "Timeout") timeouts++;
    const decision = retryable && timeouts <= 3 ? { retry: true, delay } : { retry: false };
    const event = await hook(attempt, decision);
    if (!event.decision.retry) return event.decision;
    const wanted = event.decision.delay;
    return { retry: true, attempt, delay: Number.isFinite(wanted) && wanted >= 0 ? Math.ceil(wanted) : delay };
  };
}

// ---------------------------------------------------------------------------------------------
export function createHost({
  fetch: fetchImpl = globalThis.fetch,
  log,
  env = {},
  sleep = (ms) => new Promise((r) => setTimeout(r, ms)),
  random = Math.random,
  now = Date.now,
  // How a hook callback is called. packages/plugin/src/promise/adapter.ts `fromPromise` (the
  // Effect core running a promise plugin) calls `callback(event)` alone; the promise-side host
  // of packages/plugin/src/effect/adapter.ts calls `(event, invocation)` with
  // `invocation.signal`. `false` (the default) emulates the former, which is how OpenCode 2 runs
  // a `{ id, setup }` plugin (packages/core/src/plugin/module.ts -> fromPromise): a plugin then
  // never hears an abort. `true` is a host that passes one; tests of what the pool does with a
  // signal say so.
  hookSignal = false,
  // Whether the web Request handed to `http.request` carries the caller's signal. Effect's
  // `HttpClientRequest.toWeb(req, { signal })` can give it one; model-request.ts (cited
  // snapshot) calls `toWeb(req)` without, so by default it never aborts.
  requestSignal = false,
  // packages/ai/src/route/transport/http.ts: the http middleware (the http.request hooks, the
  // send and the http.response hooks) runs under `headerTimeout` (DEFAULT_HTTP_TIMEOUT_MS, 5
  // minutes, unless the model's settings say otherwise). Past it the attempt is interrupted (its
  // fetch and the signal a hook was given are aborted; a promise hook's own promise runs on) and
  // fails as a Transport timeout, "Timed out waiting for response headers".
  headerTimeoutMs = 300_000,
} = {}) {
  const entries = []; // everything that happened, for assertions
  const record = (type, data = {}) => {
    const e = { type, ...data };
    entries.push(e);
    log?.(e);
    return e;
  };
  const hooks = []; // { domain, name, providerID, callback, plugin, active }
  const transforms = { integration: [], provider: [], model: [], tool: [], command: [] };
  const folded = {}; // cached fold per domain; packages/core/src/state.ts folds on reload
  const credentials = []; // { id, integrationID, label, active, value }
  const statuses = new Map(); // packages/core/src/integration.ts: runtime-only connection status
  const attempts = new Map(); // OAuth attempts
  const storage = new Map();
  const subscribers = new Set();
  const rpcs = [];
  let seq = 0;

  const emit = (event) => {
    record("event", { event });
    for (const s of subscribers) s(event);
  };
  // Availability (and so the model list) follows providers, integrations and credentials.
  const invalidate = (domain) => {
    delete folded[domain];
    if (domain !== "tool" && domain !== "command") delete folded.model;
  };

  // --- folds ------------------------------------------------------------------------------
  // packages/core/src/integration.ts editor: update() upserts `{ id, name: id }`; method.update
  // replaces a method of the same type (oauth/command/external: same id) or appends; oauth
  // implementations are kept by method id for authorize/refresh/label.
  function foldIntegrations() {
    const data = new Map([
      [
        "anthropic",
        { ref: { id: "anthropic", name: "Anthropic" }, methods: [{ type: "key" }, { type: "env", names: ["ANTHROPIC_API_KEY"] }], impls: new Map() },
      ],
    ]);
    const entry = (id) => {
      if (!data.has(id)) data.set(id, { ref: { id, name: id }, methods: [], impls: new Map() });
      return data.get(id);
    };
    const same = (a, b) => a.type === b.type && (!["oauth", "command", "external"].includes(a.type) || a.id === b.id);
    const editor = {
      list: () => [...data.values()].map((e) => e.ref),
      get: (id) => data.get(id)?.ref,
      update: (id, fn) => {
        const e = entry(id);
        fn(e.ref);
        e.ref.id = id;
      },
      remove: (id) => void data.delete(id),
      method: {
        list: (id) => data.get(id)?.methods ?? [],
        update: (input) => {
          if (typeof input?.integrationID !== "string" || typeof input?.method?.type !== "string")
            throw new TypeError("method.update needs { integrationID, method: { type } }");
          if (input.method.type === "oauth" && (typeof input.method.id !== "string" || typeof input.authorize !== "function"))
            throw new TypeError("an oauth method needs method.id and authorize()");
          const e = entry(input.integrationID);
          const i = e.methods.findIndex((m) => same(m, input.method));
          if (i === -1) e.methods.push(input.method);
          else e.methods[i] = input.method;
          if (input.method.type === "oauth") e.impls.set(input.method.id, input);
        },
        remove: (id, method) => {
          const e = data.get(id);
          if (!e) return;
          const i = e.methods.findIndex((m) => same(m, method));
          if (i !== -1) e.methods.splice(i, 1);
          if (method.type === "oauth") e.impls.delete(method.id);
        },
      },
    };
    for (const t of transforms.integration) t.callback(editor);
    return data;
  }
  // packages/core/src/provider.ts editor: add() structuredClones the Info and indexes the models
  // under the provider's id (a foreign model is copied with the new providerID), deep-frozen.
  function foldProviders() {
    const records = new Map();
    const index = (pid, models) => deepFreeze(new Map(models.map((m) => [m.id, m.providerID === pid ? m : { ...m, providerID: pid }])));
    records.set("anthropic", {
      provider: { id: "anthropic", name: "Anthropic", activation: "auto", package: ANTHROPIC_PACKAGE },
      models: index("anthropic", SEED_ANTHROPIC_MODELS),
    });
    const entry = (id) => {
      if (!records.has(id)) records.set(id, { provider: { id, name: id, activation: "auto", package: "" }, models: new Map() });
      return records.get(id);
    };
    const editor = {
      list: () => [...records.values()],
      get: (id) => records.get(id),
      add: ({ info, models = [], sourceConnection }) =>
        records.set(info.id, { provider: structuredClone(info), models: index(info.id, models), sourceConnection }),
      update: (id, fn) => {
        const r = entry(id);
        fn(r.provider);
        r.provider.id = id;
      },
      remove: (id) => void records.delete(id),
      models: {
        set: (id, models) => {
          entry(id).models = index(id, models);
        },
        update: (pid, mid, fn) => {
          const r = entry(pid);
          const m = clone(r.models.get(mid)) ?? defaultModel(pid, mid);
          fn(m);
          m.id = mid;
          m.providerID = pid;
          r.models = new Map(r.models).set(mid, m);
        },
        remove: (pid, mid) => {
          const r = records.get(pid);
          if (r) {
            r.models = new Map(r.models);
            r.models.delete(mid);
          }
        },
      },
    };
    for (const t of transforms.provider) t.callback(editor);
    return records;
  }
  // Availability: packages/core/src/provider.ts snapshot(): disabled -> no; enabled -> yes; else any
  // connection of `integrationID ?? id`; else yes only without integrationID and without integration.
  function available(record) {
    const p = record.provider;
    if (p.activation === "disabled") return false;
    if (p.activation === "enabled") return true;
    const iid = p.integrationID ?? p.id;
    if (connectionsOf(iid).length) return true;
    return p.integrationID === undefined && !integrations().has(iid);
  }
  // packages/core/src/catalog projectModel: package/settings/headers/body overlay the provider's.
  const project = (m, p) => ({
    ...m,
    ...(p.canonical === undefined ? {} : { canonical: p.canonical }),
    package: m.package ?? p.package,
    settings: mergeOverlay(p.settings, m.settings),
    headers: mergeHeaders(p.headers, m.headers),
    body: mergeOverlay(p.body, m.body),
  });
  // packages/plugin/src/promise/model.ts ModelEditor: edits overrides of available providers' models.
  function foldModels() {
    const out = new Map();
    for (const r of providers().values())
      if (available(r)) for (const m of r.models.values()) out.set(`${r.provider.id}/${m.id}`, clone(project(m, r.provider)));
    let def;
    const editor = {
      list: (pid) => [...out.values()].filter((m) => pid === undefined || m.providerID === pid),
      get: (pid, mid) => out.get(`${pid}/${mid}`),
      update: (pid, mid, fn) => {
        const m = out.get(`${pid}/${mid}`);
        if (m) {
          fn(m);
          m.id = mid;
          m.providerID = pid;
        }
      },
      remove: (pid, mid) => void out.delete(`${pid}/${mid}`),
      default: {
        get: () => def,
        set: (providerID, modelID) => {
          def = { providerID, modelID };
        },
      },
      provider: { list: () => [...providers().values()], get: (id) => providers().get(id) },
    };
    for (const t of transforms.model) t.callback(editor);
    return { models: out, default: def };
  }
  // packages/core/src/tool.ts + tool/runtime.ts: invalid registrations are skipped and logged
  // ("Skipping invalid tool registration"), never thrown at the plugin.
  function foldTools() {
    const tools = new Map();
    const editor = {
      list: () => [...tools.values()],
      get: (id) => tools.get(id),
      namespace: () => {},
      add: (tool) => {
        const error = toolError(tool);
        if (error) return void record("tool.rejected", { name: tool?.name, error });
        const id = tool.name.replace(/[^a-zA-Z0-9_-]/g, "_");
        tools.set(id, { ...tool, id });
      },
      update: (id, fn) => {
        const t = tools.get(id);
        if (t) {
          const next = { ...t };
          fn(next);
          next.name = t.name;
          tools.set(id, next);
        }
      },
      remove: (id) => void tools.delete(id),
    };
    for (const t of transforms.tool) t.callback(editor);
    return tools;
  }
  function toolError(tool) {
    const name = String(tool?.name ?? "").replace(/[^a-zA-Z0-9_-]/g, "_");
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) return `Invalid tool name: ${name}`;
    if (typeof tool.execute !== "function") return `Invalid tool definition ${name}: execute is not a function`;
    const input = tool.input;
    // runtime.ts inputJsonSchema: a Standard Schema must also be a Standard JSON Schema
    // (`~standard.jsonSchema.input`); anything else is taken as raw JSON Schema and must decode as one.
    if (input && typeof input === "object" && "~standard" in input) {
      if (typeof input["~standard"]?.jsonSchema?.input !== "function") return `Invalid tool definition ${name}: Standard Schema without ~standard.jsonSchema`;
      return undefined;
    }
    if (input !== undefined && input !== null && (!isRecord(input) || !isPlainJson(input))) return `Invalid tool definition ${name}: input is not JSON Schema`;
    return undefined;
  }
  function foldCommands() {
    const commands = new Map();
    const editor = {
      add: (def) => {
        if (typeof def?.name !== "string" || typeof def.execute !== "function") throw new TypeError("command.add needs { name, execute }");
        commands.set(def.name, def);
      },
    };
    for (const t of transforms.command) t.callback(editor);
    return commands;
  }
  const fold = (domain, fn) => (folded[domain] ??= fn());
  const integrations = () => fold("integration", foldIntegrations);
  const providers = () => fold("provider", foldProviders);
  const modelState = () => fold("model", foldModels);
  const tools = () => fold("tool", foldTools);
  const commands = () => fold("command", foldCommands);
  const folders = { integration: integrations, provider: providers, model: modelState, tool: tools, command: commands };

  // --- credentials and connections (packages/core/src/integration.ts, schema/connection.ts) ---
  function connectionsOf(integrationID) {
    const saved = credentials.filter((c) => c.integrationID === integrationID);
    const ordered = [...saved.filter((c) => c.active), ...saved.filter((c) => !c.active).reverse()];
    const conns = ordered.map((c) => ({
      type: "credential",
      id: c.id,
      label: c.label,
      method: c.value.type,
      ...(c.value.methodID ? { methodID: c.value.methodID } : {}),
    }));
    const entry = integrations().get(integrationID);
    for (const m of entry?.methods ?? []) if (m.type === "env") for (const name of m.names) if (env[name]) conns.push({ type: "env", name });
    return conns.map((c) => {
      const s = statuses.get(`${integrationID}:${c.id ?? c.name}`);
      return s ? { ...c, status: s } : c;
    });
  }
  function createCredential(integrationID, value, label) {
    if (label === undefined) {
      const name = integrations().get(integrationID)?.ref.name ?? integrationID;
      const used = new Set(credentials.filter((c) => c.integrationID === integrationID).map((c) => c.label));
      for (let i = 1; ; i++) {
        label = i === 1 ? name : `${name} ${i}`;
        if (!used.has(label)) break;
      }
    }
    for (const c of credentials) if (c.integrationID === integrationID) c.active = false;
    const credential = { id: `cred_${String(++seq).padStart(6, "0")}`, integrationID, label, active: true, value };
    credentials.push(credential);
    invalidate("model");
    record("credential.created", { integrationID, id: credential.id, label, valueType: value.type });
    emit({ type: "credential.updated", properties: {} });
    return credential;
  }
  // schema/credential.ts Credential.OAuth: { type: "oauth", methodID, refresh, access, expires (int >= 0), metadata? }
  function checkOAuth(v) {
    if (
      v?.type !== "oauth" ||
      typeof v.methodID !== "string" ||
      typeof v.refresh !== "string" ||
      typeof v.access !== "string" ||
      !Number.isInteger(v.expires) ||
      v.expires < 0
    )
      throw new Error("Authorization failed: callback did not return a Credential.OAuth { type, methodID, refresh, access, expires }");
    return v;
  }
  const connection = {
    active: async (id) => connectionsOf(id)[0],
    // resolve(): env -> { type: "key", key }; OAuth with refresh refreshed when it expires within 5 min.
    resolve: async (conn) => {
      if (conn?.type === "env") return env[conn.name] ? { type: "key", key: env[conn.name] } : undefined;
      const c = credentials.find((x) => x.id === conn?.id);
      if (!c) return undefined;
      if (c.value.type !== "oauth") return c.value;
      const impl = integrations().get(c.integrationID)?.impls.get(c.value.methodID);
      if (!impl?.refresh || c.value.expires > now() + 5 * 60_000) return c.value;
      record("credential.refresh", { id: c.id });
      c.value = checkOAuth(await impl.refresh(c.value));
      return c.value;
    },
    status: async ({ integrationID, connection: conn, status }) => {
      const key = `${integrationID}:${conn.id ?? conn.name}`;
      if (status) statuses.set(key, status);
      else statuses.delete(key);
      record("connection.status", { integrationID, connection: conn.id ?? conn.name, status });
      emit({ type: "integration.updated", properties: {} });
    },
  };
  const integrationInfo = (id) => {
    const e = integrations().get(id);
    return e && { id, name: e.ref.name, methods: e.methods, connections: connectionsOf(id) };
  };

  // --- OAuth attempts (integration.ts connectOAuth / oauth.complete / settle) -----------------
  async function oauthConnect({ integrationID, methodID, answer = {}, label }) {
    const impl = integrations().get(integrationID)?.impls.get(methodID);
    if (!impl) throw new Error(`OAuth method not found: ${integrationID}/${methodID}`);
    const authorization = await impl.authorize(answer);
    const attemptID = `att_${String(++seq).padStart(6, "0")}`;
    const time = { created: now(), expires: authorization.expiresAt ?? now() + 10 * 60_000 };
    const attempt = { status: "pending", integrationID, methodID, label, authorization, impl, time };
    attempts.set(attemptID, attempt);
    record("oauth.attempt", { integrationID, methodID, attemptID, mode: authorization.mode, url: authorization.url });
    if (authorization.mode === "auto") {
      attempt.settled = Promise.resolve(authorization.callback).then(
        (v) => settle(attemptID, v),
        (e) => fail(attemptID, e),
      );
      attempt.settled.catch(() => {}); // observed through oauth.status / oauthComplete
    }
    return {
      attemptID,
      url: authorization.url,
      instructions: authorization.instructions,
      mode: authorization.mode,
      device: authorization.device === true,
      time,
    };
  }
  const fail = (attemptID, error) => {
    const a = attempts.get(attemptID);
    a.status = "failed";
    a.message = error?.message ?? String(error);
    throw error;
  };
  function settle(attemptID, value) {
    const a = attempts.get(attemptID);
    const credential = createCredential(a.integrationID, checkOAuth(value), a.label ?? a.impl.label?.(value));
    a.status = "complete";
    return credential;
  }
  async function oauthComplete({ integrationID, attemptID, code }) {
    const a = attempts.get(attemptID);
    if (!a || a.integrationID !== integrationID) throw new Error(`Integration.AttemptNotFound: ${attemptID}`);
    if (a.status !== "pending") return a.credential;
    if (a.authorization.mode === "auto") {
      a.credential = await a.settled;
      return a.credential;
    }
    if (code === undefined) throw new Error(`Integration.CodeRequired: ${attemptID}`);
    if (a.time.expires <= now()) {
      a.status = "expired";
      throw new Error(`OAuth attempt expired: ${attemptID}`);
    }
    let value;
    try {
      value = await a.authorization.callback(code);
    } catch (e) {
      fail(attemptID, e);
    }
    a.credential = settle(attemptID, value);
    return a.credential;
  }
  // integration.ts connection.key: needs a `key` method; stores Credential.Key. No plugin code runs.
  function connectKey(integrationID, key, { label, answer } = {}) {
    if (
      !integrations()
        .get(integrationID)
        ?.methods.some((m) => m.type === "key")
    )
      throw new Error(`Key method not found: ${integrationID}`);
    return createCredential(integrationID, { type: "key", key, ...(answer && Object.keys(answer).length ? { configuration: answer } : {}) }, label);
  }

  // --- hooks (packages/core/src/plugin/hooks.ts) ---------------------------------------------
  // Callbacks run in registration order and share one event object; a hook registered with
  // `{ providerID }` only sees events whose `event.model.providerID` matches. A trigger runs the
  // callbacks registered when it began: `dispose` replaces the list rather than editing it, so
  // a hook disposed while an earlier one runs (a plugin reloaded meanwhile) is still called in
  // that trigger, and one registered meanwhile is not.
  async function trigger(domain, name, event, signal) {
    for (const h of hooks.filter((x) => x.domain === domain && x.name === name)) {
      if (h.providerID !== undefined && h.providerID !== event?.model?.providerID) continue;
      try {
        await (hookSignal ? h.callback(event, { signal }) : h.callback(event));
      } catch (e) {
        record("hook.threw", { hook: `${domain}.${name}`, plugin: h.plugin, error: e?.message });
        throw new HookDefect(`${domain}.${name}`, e);
      }
    }
    return event;
  }
  const hasHook = (domain, name, providerID) =>
    hooks.some((h) => h.active && h.domain === domain && h.name === name && (h.providerID === undefined || h.providerID === providerID));

  // --- the plugin context (packages/plugin/src/promise/adapter.ts fromPromise, newest) ---------
  function context(options = {}, plugin = "plugin") {
    const owned = [];
    const registration = (dispose) => {
      let done = false;
      const r = {
        dispose: async () => {
          if (!done) {
            done = true;
            dispose();
          }
        },
      };
      owned.push(r);
      return r;
    };
    const hook = (domain) => async (name, callback, opts) => {
      if (typeof callback !== "function") throw new TypeError(`${domain}.hook(${name}) needs a callback`);
      const h = { domain, name, providerID: opts?.providerID, callback, plugin, active: true };
      hooks.push(h);
      record("hook.registered", { domain, name, providerID: h.providerID, plugin, known: domain !== "session" || SESSION_HOOKS.has(name) });
      return registration(() => {
        h.active = false;
        hooks.splice(hooks.indexOf(h), 1);
      });
    };
    const transform = (domain) => async (callback) => {
      const t = { callback, plugin };
      transforms[domain].push(t);
      invalidate(domain);
      record("transform.registered", { domain, plugin });
      try {
        folders[domain]();
      } catch (e) {
        // runs the fold now, like a reload after registration
        transforms[domain].splice(transforms[domain].indexOf(t), 1);
        invalidate(domain);
        throw e;
      }
      return registration(() => {
        transforms[domain].splice(transforms[domain].indexOf(t), 1);
        invalidate(domain);
      });
    };
    const reload = (domain) => async () => {
      invalidate(domain);
      folders[domain]();
    };
    const stub = (domain) => ({
      list: async () => [],
      reload: async () => {},
      transform: async () => {
        record("transform.registered", { domain, plugin, emulated: false });
        return registration(() => {});
      },
      hook: async (name) => {
        record("hook.registered", { domain, name, plugin, emulated: false });
        return registration(() => {});
      },
    });
    return {
      app: { name: "opencode", version: "2.0.0-harness" },
      location: { directory: process.cwd() },
      options,
      agent: stub("agent"),
      aisdk: { hook: hook("aisdk") }, // recorded; never fires on the native Anthropic route
      command: {
        list: async () => [...commands().values()].map(({ name, description }) => ({ name, description })),
        transform: transform("command"),
        reload: reload("command"),
      },
      credential: { activate: async ({ credentialID }) => activate(credentialID) },
      event: { subscribe: (arg) => subscribe(arg) },
      experimental: {},
      generate: {
        text: async () => {
          throw new Error("generate is not emulated");
        },
      },
      integration: {
        list: async () => [...integrations().keys()].map(integrationInfo),
        get: async ({ integrationID }) => integrationInfo(integrationID),
        connect: { key: async ({ integrationID, key, label }) => void connectKey(integrationID, key, { label }) },
        oauth: {
          connect: oauthConnect,
          complete: async (input) => void (await oauthComplete(input)),
          status: async ({ attemptID }) => {
            const a = attempts.get(attemptID);
            return a && { status: a.status, time: a.time, ...(a.message ? { message: a.message } : {}) };
          },
          cancel: async ({ attemptID }) => void attempts.delete(attemptID),
        },
        transform: transform("integration"),
        reload: reload("integration"),
        connection,
      },
      mcp: stub("mcp"),
      model: {
        list: async () => [...modelState().models.values()],
        default: async () => modelState().default,
        transform: transform("model"),
        reload: reload("model"),
      },
      permission: stub("permission"),
      plugin: { list: async () => [] },
      provider: {
        list: async () => [...providers().values()].filter(available).map((r) => r.provider),
        get: async ({ providerID }) => providers().get(providerID)?.provider,
        transform: transform("provider"),
        reload: reload("provider"),
      },
      reference: stub("reference"),
      rpc: Object.assign(
        () => {
          throw new Error("rpc clients are not emulated");
        },
        {
          register: async (definition, handlers) => {
            const r = { definition, handlers, emitted: [] };
            rpcs.push(r);
            return Object.assign(
              registration(() => rpcs.splice(rpcs.indexOf(r), 1)),
              { events: { emit: async (...args) => void r.emitted.push(args) } },
            );
          },
        },
      ),
      session: {
        hook: hook("session"),
        prompt: async (input) => void record("session.prompt", { input }),
        // session.synthetic (packages/protocol `session.synthetic`: { id?, text, description?,
        // metadata?, delivery?, resume? }): `text` joins the model's context as a user message
        // (packages/core session/runner to-llm-message.ts `case "synthetic"`); a person sees a
        // row only for one with a description (the clients' session sync counts a synthetic
        // message as a row when `description?.trim()`; third-party plugins: "without it the TUI
        // hides the message").
        synthetic: async (input) =>
          void record("session.synthetic", { input, shown: typeof input?.description === "string" && input.description.trim() !== "" }),
      },
      shell: { hook: hook("shell") },
      skill: stub("skill"),
      storage: {
        get: async (key) => clone(storage.get(JSON.stringify(key))),
        set: async (key, value) => void storage.set(JSON.stringify(key), clone(value)),
        remove: async (key) => void storage.delete(JSON.stringify(key)),
        scan: async () => [...storage].map(([k, value]) => ({ key: JSON.parse(k), value: clone(value) })),
      },
      tool: { list: async () => [...tools().values()], transform: transform("tool"), reload: reload("tool"), hook: hook("tool") },
      vcs: stub("vcs"),
      websearch: stub("websearch"),
      worktree: stub("worktree"),
      [OWNED]: owned,
    };
  }
  function activate(credentialID) {
    const c = credentials.find((x) => x.id === credentialID);
    if (!c) return;
    for (const x of credentials) if (x.integrationID === c.integrationID) x.active = x === c;
    invalidate("model");
    emit({ type: "credential.switched", properties: { integrationID: c.integrationID, credentialID } });
  }
  function subscribe(arg) {
    const type = typeof arg === "string" ? arg : undefined;
    const queue = [],
      waiting = [];
    const push = (e) => {
      if (type && e.type !== type) return;
      const w = waiting.shift();
      if (w) w({ value: e, done: false });
      else queue.push(e);
    };
    subscribers.add(push);
    const close = () => {
      subscribers.delete(push);
      for (const w of waiting.splice(0)) w({ value: undefined, done: true });
      return Promise.resolve({ value: undefined, done: true });
    };
    arg?.signal?.addEventListener?.("abort", close, { once: true });
    return {
      [Symbol.asyncIterator]: () => ({
        next: () =>
          queue.length ? Promise.resolve({ value: queue.shift(), done: false }) : subscribers.has(push) ? new Promise((r) => waiting.push(r)) : close(),
        return: close,
      }),
    };
  }

  // setup(ctx) through the promise adapter; the returned cleanup runs on unload, before the plugin's
  // registrations are disposed (adapter.ts acquireRelease inside the plugin scope).
  async function start(loaded, { options } = {}) {
    if (!loaded?.plugin) loaded = loadPlugin(loaded, { options });
    if (loaded.kind !== "setup") throw new Error("effect-form plugins are not emulated by this harness");
    const ctx = context(options ?? loaded.options ?? {}, loaded.id);
    record("plugin.setup", { id: loaded.id });
    let cleanup;
    try {
      cleanup = await loaded.plugin.setup(ctx);
    } catch (e) {
      // adapter.ts: registrations made during `setup` belong to the plugin's scope, and a setup
      // that rejects fails the plugin (Effect.promise: a defect), which closes that scope: what
      // it had registered goes with it.
      record("plugin.failed", { id: loaded.id, error: e?.message });
      for (const r of ctx[OWNED].slice().reverse()) await r.dispose();
      throw e;
    }
    return {
      id: loaded.id,
      context: ctx,
      cleanup,
      unload: async () => {
        record("plugin.unload", { id: loaded.id });
        if (typeof cleanup === "function") await cleanup();
        for (const r of ctx[OWNED].slice().reverse()) await r.dispose();
      },
    };
  }

  // --- the model request (session/model-request.ts + model-resolver.ts + ai executor) ----------
  function resolveModel(providerID, modelID) {
    const record_ = providers().get(providerID);
    const model = modelState().models.get(`${providerID}/${modelID}`);
    if (!record_ || !available(record_) || !model || model.enabled === false)
      throw new ModelRequestError({ type: "provider.no-route", message: `Model unavailable: ${providerID}/${modelID}` }, { attempts: 0 });
    return { provider: record_.provider, model };
  }
  async function modelRequest({
    providerID,
    modelID,
    body = {},
    sessionID = "ses_harness",
    parentID,
    projectID = "prj_harness",
    agent = "build",
    kind = "primary",
    signal,
  } = {}) {
    const { provider, model } = resolveModel(providerID, modelID);
    const ref = { id: modelID, providerID };
    const scope = { sessionID, agent, model: ref, kind };
    // model-resolver.ts: the credential of the active connection of `integrationID ?? providerID`.
    const integrationID = provider.integrationID ?? providerID;
    const conn = await connection.active(integrationID);
    const credential = conn ? await connection.resolve(conn) : undefined;
    const pkg = String(model.package ?? "")
      .replace(/^aisdk:/, "")
      .replace(/^@opencode-ai\//, "@opencode/");
    if (!ANTHROPIC_PACKAGES.has(pkg))
      throw new ModelRequestError(
        { type: "provider.no-route", message: `Unsupported package for ${providerID}/${modelID}: ${model.package}` },
        { attempts: 0 },
      );
    const settings = { ...model.settings, ...credential?.metadata, ...(credential?.type === "key" ? credential.configuration : {}) };
    // nativeCredentialSettings: key -> apiKey -> `x-api-key`; anthropic OAuth -> authToken -> Bearer.
    // Without a credential: settings apiKey/authToken, else nothing when activation is "enabled"
    // (Auth.none), else ANTHROPIC_API_KEY from the (host) environment.
    const auth =
      credential?.type === "key"
        ? ["x-api-key", credential.key]
        : credential?.type === "oauth"
          ? ["authorization", `Bearer ${credential.access}`]
          : settings.authToken
            ? ["authorization", `Bearer ${settings.authToken}`]
            : settings.apiKey
              ? ["x-api-key", settings.apiKey]
              : provider.activation !== "enabled" && env.ANTHROPIC_API_KEY
                ? ["x-api-key", env.ANTHROPIC_API_KEY]
                : undefined;
    // model-request.ts: opencode headers, then the `model.request` hook may change baseURL/headers.
    const modelHook = await trigger(
      "session",
      "model.request",
      {
        ...scope,
        baseURL: settings.baseURL ?? ANTHROPIC_BASE_URL,
        // model-request.ts `LLM.request({ http: { headers } })`, the affinity being the session id.
        headers: {
          "x-opencode-session-id": sessionID,
          ...(parentID ? { "x-opencode-parent-session-id": parentID } : {}),
          "x-session-affinity": sessionID,
          "X-Session-Id": sessionID,
          ...(parentID ? { "x-parent-session-id": parentID } : {}),
          "User-Agent": "opencode/2.0.0-harness",
          "x-opencode-project": projectID,
          "x-opencode-session": sessionID,
          "x-opencode-client": "opencode",
        },
      },
      signal,
    );
    const url = `${String(modelHook.baseURL).replace(/\/+$/, "")}/messages`;
    const headers = { "anthropic-version": "2023-06-01", ...mergeHeaders(model.headers, modelHook.headers), "content-type": "application/json" };
    if (auth) headers[auth[0]] = auth[1];
    const limit = model.limit?.output > 0 ? model.limit.output : 32_000;
    const maxTokens = kind === "compaction" ? Math.min(limit, 32_000) : Math.min(limit, 256_000);
    const bodyText = JSON.stringify(mergeOverlay({ model: model.modelID ?? modelID, max_tokens: maxTokens, stream: true, ...body }, model.body));
    record("model.request", { providerID, modelID, url, auth: auth?.[0], connection: conn?.id ?? conn?.name });

    const decide = retryPolicy(random);
    for (let attempt = 1; ; attempt++) {
      let cause;
      try {
        const response = await sendOnce({ scope, url, headers, bodyText, signal, attempt });
        if (response.status < 400) {
          record("model.response", { attempt, status: response.status });
          return response;
        }
        // executor.ts statusError: a failure status reads the body and classifies it.
        const text = await response.text().catch(() => "");
        cause = { ...classify(response.status, text, response.headers), body: text };
      } catch (e) {
        if (e instanceof HookDefect) throw e; // a defect: no classification, no retry
        // An abort interrupts the session's fiber: nothing is classified or retried.
        if (signal?.aborted) throw signal.reason ?? e;
        cause = { tag: "Transport", message: e?.message ?? String(e), code: e?.name === "TimeoutError" ? "Timeout" : e?.cause?.code };
      }
      const error = toSessionError(cause);
      record("model.error", { attempt, error });
      // context-overflow errors go to compaction, not to the retry policy (session runner).
      if (cause.overflow) throw new ModelRequestError(error, { attempts: attempt, cause });
      // packages/core/src/session/title.ts: a title request (run beside the session's first
      // turn, same session id) catches its failure and goes without a title: no retry policy,
      // no `retry` hook.
      if (kind === "title") throw new ModelRequestError(error, { attempts: attempt, cause });
      const decision = await decide(cause, isRetryable(cause), async (n, proposed) => {
        const event = { sessionID, agent, model: ref, error, attempt: n, decision: proposed };
        record("retry.proposed", { attempt: n, decision: { ...proposed } });
        await trigger("session", "retry", event, signal);
        record("retry.decided", { attempt: n, decision: { ...event.decision } });
        return event;
      });
      if (!decision.retry) throw new ModelRequestError(error, { attempts: attempt, cause });
      emit({ type: "session.retry.scheduled", properties: { sessionID, attempt: decision.attempt, at: now() + decision.delay, error } });
      await sleep(decision.delay);
    }
  }
  // model-request.ts `http` middleware, installed only when an http.request/http.response hook exists
  // for the provider: web Request -> http.request (may replace event.request) -> body re-read from
  // request.clone() -> send -> new Response(stream, {status, headers}) -> http.response (may replace
  // event.response; event.request is the same, still-unread Request).
  async function sendOnce({ scope, url, headers, bodyText, signal, attempt }) {
    const interrupt = new AbortController();
    const attemptSignal = signal ? AbortSignal.any([signal, interrupt.signal]) : interrupt.signal;
    let timer;
    const timedOut = new Promise((_, reject) => {
      timer = setTimeout(() => {
        interrupt.abort();
        record("http.header-timeout", { attempt, ms: headerTimeoutMs });
        reject(Object.assign(new Error("Timed out waiting for response headers"), { name: "TimeoutError" }));
      }, headerTimeoutMs);
    });
    timedOut.catch(() => {});
    try {
      return await Promise.race([middleware({ scope, url, headers, bodyText, signal: attemptSignal, attempt }), timedOut]);
    } finally {
      clearTimeout(timer);
    }
  }
  async function middleware({ scope, url, headers, bodyText, signal, attempt }) {
    const providerID = scope.model.providerID;
    if (!hasHook("session", "http.request", providerID) && !hasHook("session", "http.response", providerID)) {
      record("http.send", { attempt, url, headers: { ...headers }, hooked: false });
      return fetchImpl(url, { method: "POST", headers, body: bodyText, signal });
    }
    const request = new Request(url, { method: "POST", headers, body: bodyText, ...(requestSignal && signal ? { signal } : {}) });
    const before = await trigger("session", "http.request", { ...scope, request }, signal);
    let body;
    try {
      body = before.request.body ? new Uint8Array(await before.request.clone().arrayBuffer()) : undefined;
    } catch (e) {
      throw new HookDefect("session.http.request", e);
    }
    record("http.send", { attempt, url: before.request.url, headers: Object.fromEntries(before.request.headers), hooked: true });
    const sent = await fetchImpl(before.request.url, { method: before.request.method, headers: before.request.headers, body, signal });
    const response = new Response([204, 205, 304].includes(sent.status) ? null : sent.body, { status: sent.status, headers: sent.headers });
    const after = await trigger("session", "http.response", { ...scope, request: before.request, response }, signal);
    if (after.response !== response) record("http.response.replaced", { attempt, from: sent.status, to: after.response.status });
    return after.response;
  }

  // --- driving helpers -----------------------------------------------------------------------
  return {
    log: entries,
    context,
    start,
    emit,
    /** Run an OAuth method as the host's /connect/oauth + /attempt/complete routes do. */
    login: async (integrationID, methodID, { answer, code, label } = {}) => {
      const attempt = await oauthConnect({ integrationID, methodID, answer, label });
      const credential = await oauthComplete({ integrationID, attemptID: attempt.attemptID, code });
      return { attempt, credential };
    },
    oauthConnect,
    oauthComplete,
    /** POST /api/integration/{id}/connect/key: the host stores the key; no plugin code runs. */
    connectKey,
    activate,
    credentials: (integrationID) => credentials.filter((c) => integrationID === undefined || c.integrationID === integrationID).map(clone),
    connections: connectionsOf,
    integration: integrationInfo,
    integrations: () => [...integrations().keys()].map(integrationInfo),
    providers: () => [...providers().values()].filter(available).map((r) => r.provider),
    provider: (id) => providers().get(id),
    models: (providerID) => [...modelState().models.values()].filter((m) => providerID === undefined || m.providerID === providerID),
    tools: () => [...tools().values()],
    commands: () => [...commands().values()],
    hooks: () => hooks.filter((h) => h.active).map(({ domain, name, providerID, plugin }) => ({ domain, name, providerID, plugin })),
    rpcs: () => rpcs,
    storage,
    /** Execute a tool as packages/core/src/tool/runtime.ts `execute` does. */
    runTool: async (name, input, ctx = {}) => {
      const tool = tools().get(name);
      if (!tool) throw new Error(`Unknown tool: ${name}`);
      let value = input;
      if (tool.input && "~standard" in tool.input) {
        const result = await tool.input["~standard"].validate(input);
        if (result.issues) throw new Error(`Invalid tool input: ${result.issues.map((i) => i.message).join(", ")}`);
        value = result.value;
      }
      const controller = new AbortController();
      const progress = [];
      const toolCtx = {
        sessionID: "ses_harness",
        agent: "build",
        messageID: "msg_harness",
        id: `call_${++seq}`,
        signal: controller.signal,
        progress: async (u) => void progress.push(u),
        checkpoint: async () => {},
        ...ctx,
      };
      record("tool.execute", { name });
      const result = await tool.execute(value, toolCtx);
      if (tool.output === undefined && result && "output" in result) throw new Error("Tool result declared output without an output schema");
      const content =
        typeof result?.content === "string"
          ? [{ type: "text", text: result.content }]
          : result?.content?.length
            ? [...result.content]
            : [{ type: "text", text: typeof result?.output === "string" ? result.output : (JSON.stringify(result?.output) ?? String(result?.output)) }];
      return { ...result, content, progress };
    },
    /** Run a code command (packages/plugin/src/promise/command.ts CommandInvocation). */
    runCommand: async (name, { text = "", sessionID = "ses_harness", messageID = `msg_${++seq}`, delivery = "steer" } = {}) => {
      const command = commands().get(name);
      if (!command) throw new Error(`Command not found: ${name}`);
      record("command.execute", { name });
      return command.execute({ sessionID, messageID, prompt: { text }, delivery });
    },
    modelRequest,
  };
}
const OWNED = Symbol("owned registrations");

// ---------------------------------------------------------------------------------------------
// The 1.18.33 (G1) context: registration-only, `Hooks<Spec>` objects (`catalog.transform(cb)`,
// `aisdk.sdk(cb)`, ...) returning { dispose } and a `reload()` per domain, as in
// @opencode-ai/plugin@1.18.33 dist/v2/promise/context.d.ts. Nothing fires; every registration and
// call is recorded under registrationsOf(ctx).
const G1 = Symbol("g1 registrations");
export function g1Context(options = {}) {
  const registrations = [];
  const reg = (domain, name) => async (callback) => {
    registrations.push({ domain, name, callback });
    return { dispose: async () => {} };
  };
  const domain = (name, hookNames) =>
    Object.fromEntries([...hookNames.map((h) => [h, reg(name, h)]), ["reload", async () => void registrations.push({ domain: name, name: "reload" })]]);
  const ctx = {
    options,
    agent: domain("agent", ["transform"]),
    aisdk: { sdk: reg("aisdk", "sdk"), language: reg("aisdk", "language") },
    catalog: domain("catalog", ["transform"]),
    command: domain("command", ["transform"]),
    integration: Object.assign(domain("integration", ["transform"]), {
      connection: {
        active: async () => void registrations.push({ domain: "integration", name: "connection.active" }),
        resolve: async () => void registrations.push({ domain: "integration", name: "connection.resolve" }),
      },
    }),
    plugin: {
      add: async () => void registrations.push({ domain: "plugin", name: "add" }),
      remove: async () => void registrations.push({ domain: "plugin", name: "remove" }),
    },
    reference: domain("reference", ["transform"]),
    skill: domain("skill", ["transform"]),
  };
  Object.defineProperty(ctx, G1, { value: registrations, enumerable: false });
  return ctx;
}
export const registrationsOf = (ctx) => ctx[G1] ?? ctx[OWNED];

/**
 * A host whose plugin is set up again while it runs, as a config change reloads it (the old
 * setup's hooks disposed: packages/plugin/src/promise/adapter.ts, registrations live in the
 * plugin's scope). After each of the host's fetches, `afterFetch(url, reload)` may call
 * `reload()`, which unloads the plugin and loads it again with the same options. Resolves
 * `{ host, unload }`; `unload` ends whichever setup is current.
 */
export async function reloadingHost(pluginModule, options, { sleep = async () => {}, afterFetch }) {
  let handle;
  const reload = async () => {
    await handle.unload();
    handle = await host.start(loadPlugin(pluginModule, { options }));
  };
  const host = createHost({
    sleep,
    random: () => 0.5,
    fetch: async (url, init) => {
      const res = await globalThis.fetch(url, init);
      await afterFetch(url, reload);
      return res;
    },
  });
  handle = await host.start(loadPlugin(pluginModule, { options }));
  return { host, unload: () => handle.unload() };
}

/** Runs `fn` with the plugin's log lines (stderr, OpenCode's log in 2.x) collected. */
export async function withLogLines(fn) {
  const lines = [];
  const original = console.error;
  console.error = (...args) => void lines.push(args.join(" "));
  try {
    return await fn(lines);
  } finally {
    console.error = original;
  }
}
