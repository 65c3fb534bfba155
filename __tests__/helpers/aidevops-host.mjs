// A stand-in for the opencode-aidevops plugin (marcusquinn/aidevops @ ad4eefaf3, 2026-08-22,
// `.agents/plugins/opencode-aidevops/`) that composes OUR plugin parts into its own hooks, the
// way that plugin would after swapping its Anthropic pool for ours. Only the behaviour that
// touches what we own is mirrored: `config.provider` (exact shapes), the one `auth` slot, the
// `model-accounts-pool` tool name, and the event and system-transform hooks. Each piece cites
// the aidevops file it copies. Node built-ins only. It never reads ~/.aidevops, and the only
// network it allows is loopback.
//
//   const host = makeAidevopsHost({ pool: { poolAuthHook, createPoolTool, poolConfigHook },
//                                   order: "ours-last", options: { path } });
//   const hooks = await host({ client, directory });   // OpenCode 1.18 plugin function
//   host.trace                                          // [[hook, detail], ...] in call order

export const AIDEVOPS_COMMIT = "ad4eefaf3e80cc42f6477606a6ddb21be723362d";
export const POOL_TOOL = "model-accounts-pool";

// ---------------------------------------------------------------------------------------------
// config.provider, copied from oauth-pool-auth-provider.mjs (registerPoolProvider)
// ---------------------------------------------------------------------------------------------

const CURSOR_PROXY_BASE_URL = "http://127.0.0.1:32123/v1"; // oauth-pool-constants.mjs

export const AIDEVOPS_POOL_PROVIDERS = Object.freeze([
  {
    id: "anthropic-pool",
    name: "Anthropic Pool (Account Management)",
    npm: "@ai-sdk/anthropic",
    api: "https://api.anthropic.com/v1",
    mn: "[Account Setup Only] Use Anthropic provider for models",
  },
  {
    id: "openai-pool",
    name: "OpenAI Pool (Account Management)",
    npm: "@ai-sdk/openai",
    api: "https://api.openai.com/v1",
    mn: "[Account Setup Only] Use OpenAI provider for models",
  },
  {
    id: "cursor-pool",
    name: "Cursor Pool (Account Management)",
    npm: "@ai-sdk/openai-compatible",
    api: CURSOR_PROXY_BASE_URL,
    mn: "[Account Setup Only] Use Cursor provider for models",
  },
  {
    id: "google-pool",
    name: "Google Pool (Account Management)",
    npm: "@ai-sdk/google",
    api: "https://generativelanguage.googleapis.com/v1beta",
    mn: "[Account Setup Only] Token injected as GOOGLE_OAUTH_ACCESS_TOKEN",
  },
]);

/** The single placeholder model aidevops gives each `*-pool` provider. */
export function aidevopsPlaceholderModels(name) {
  return {
    "pool-account-management": {
      name,
      attachment: false,
      tool_call: false,
      temperature: false,
      modalities: { input: ["text"], output: ["text"] },
      cost: { input: 0, output: 0, cache_read: 0, cache_write: 0 },
      limit: { context: 1000, output: 100 },
      family: "pool",
    },
  };
}

/**
 * Copied from registerPoolProvider. An existing entry whose name, npm, api, or models differ
 * gets those four keys OVERWRITTEN by Object.assign, which replaces the whole `models` map.
 * Any other key, such as `options`, is kept.
 */
export function registerPoolProvider(config) {
  if (!config.provider) config.provider = {};
  let registered = 0;
  for (const def of AIDEVOPS_POOL_PROVIDERS) {
    const models = aidevopsPlaceholderModels(def.mn);
    if (!config.provider[def.id]) {
      config.provider[def.id] = { name: def.name, npm: def.npm, api: def.api, models };
      registered++;
    } else {
      const existing = config.provider[def.id];
      if (existing.name !== def.name || existing.npm !== def.npm || existing.api !== def.api || JSON.stringify(existing.models) !== JSON.stringify(models)) {
        Object.assign(existing, { name: def.name, npm: def.npm, api: def.api, models });
        registered++;
      }
    }
  }
  return registered;
}

// ---------------------------------------------------------------------------------------------
// config.provider.anthropic / claudecli / openai, from config-hook.mjs and model-limits.mjs
// ---------------------------------------------------------------------------------------------

// model-limits.mjs CLAUDE_MODEL_LIMITS. The real code lets AIDEVOPS_OPUS_47_CONTEXT override
// the opus-4-7 default of 250000; that override is not copied here.
const CLAUDE_MODEL_LIMITS = {
  "claude-haiku-4-5": { context: 1000000, output: 32000 },
  "claude-sonnet-4-5": { context: 200000, output: 64000 },
  "claude-sonnet-4-6": { context: 1000000, output: 64000 },
  "claude-opus-4-5": { context: 200000, output: 64000 },
  "claude-opus-4-6": { context: 1000000, output: 64000 },
  "claude-opus-4-7": { context: 250000, output: 64000 },
};
const GPT56_MODEL_IDS = ["gpt-5.6-sol", "gpt-5.6-sol-pro", "gpt-5.6-terra", "gpt-5.6-luna"];

function claudeModelDef(overrides) {
  return {
    attachment: true,
    tool_call: false,
    temperature: true,
    reasoning: true,
    modalities: { input: ["text", "image"], output: ["text"] },
    cost: { input: 0, output: 0, cache_read: 0, cache_write: 0 },
    ...overrides,
  };
}

function buildClaudeModelMap(suffix) {
  const names = {
    "claude-haiku-4-5": "Claude Haiku 4.5",
    "claude-sonnet-4-5": "Claude Sonnet 4.5",
    "claude-sonnet-4-6": "Claude Sonnet 4.6",
    "claude-opus-4-5": "Claude Opus 4.5",
    "claude-opus-4-6": "Claude Opus 4.6",
    "claude-opus-4-7": "Claude Opus 4.7",
  };
  const out = {};
  for (const [id, limit] of Object.entries(CLAUDE_MODEL_LIMITS)) {
    out[id] = claudeModelDef({ name: `${names[id]} (${suffix})`, limit: { ...limit } });
  }
  return out;
}

/** Copied from registerAnthropicModels: upserts into the BUILT-IN `anthropic` provider and `claudecli`. */
export function registerAnthropicModels(config) {
  if (!config.provider) config.provider = {};
  let count = 0;
  if (!config.provider.anthropic) config.provider.anthropic = {};
  if (!config.provider.anthropic.models) config.provider.anthropic.models = {};
  for (const [id, def] of Object.entries(buildClaudeModelMap("via aidevops"))) {
    const existing = config.provider.anthropic.models[id];
    config.provider.anthropic.models[id] = { ...existing, ...def };
    if (!existing) count++;
  }
  if (!config.provider.claudecli) {
    config.provider.claudecli = { name: "Claude CLI", npm: "@ai-sdk/openai-compatible", api: "http://127.0.0.1:32125/v1" };
  }
  if (!config.provider.claudecli.models) config.provider.claudecli.models = {};
  for (const [id, def] of Object.entries(buildClaudeModelMap("via CLI"))) {
    const existing = config.provider.claudecli.models[id];
    config.provider.claudecli.models[id] = { ...existing, ...def };
    if (!existing) count++;
  }
  return count;
}

/** Copied from registerGpt56ContextLimits, without the settings.json opt-out check. */
export function registerGpt56ContextLimits(config) {
  if (!config.provider) config.provider = {};
  if (!config.provider.openai) config.provider.openai = {};
  if (!config.provider.openai.models) config.provider.openai.models = {};
  for (const id of GPT56_MODEL_IDS) {
    const existing = config.provider.openai.models[id] || {};
    config.provider.openai.models[id] = {
      ...existing,
      limit: { output: 128000, ...existing.limit, context: 300000, input: 260000 },
    };
  }
  return GPT56_MODEL_IDS.length;
}

/**
 * The provider part of aidevops's config hook, in its own order (config-hook.mjs
 * createConfigHook). Agent and MCP registration are reduced to `config.agent ??= {}`. The
 * cursor and google entries are only written while their proxies run, so they are absent here.
 */
export async function aidevopsConfigHook(config) {
  if (!config.agent) config.agent = {};
  const poolCleaned = registerPoolProvider(config);
  const anthropic = registerAnthropicModels(config);
  const openai = registerGpt56ContextLimits(config);
  return { poolCleaned, anthropic, openai };
}

// ---------------------------------------------------------------------------------------------
// aidevops's own auth hook: provider "anthropic", i.e. the BUILT-IN provider (index.mjs merges
// oauth-pool-auth-anthropic.mjs `methods` with provider-auth.mjs `loader`)
// ---------------------------------------------------------------------------------------------

// provider-auth-request.mjs
export const AIDEVOPS_REQUIRED_BETAS = ["oauth-2025-04-20", "interleaved-thinking-2025-05-14", "prompt-caching-scope-2026-01-05", "claude-code-20250219"];

function loopbackOnly(url) {
  const host = new URL(url).hostname;
  if (host !== "127.0.0.1" && host !== "localhost" && host !== "[::1]") {
    throw new Error(`aidevops-host: refusing to send to ${host} (tests talk to 127.0.0.1 only)`);
  }
}

/**
 * A reduced copy of the merged hook. `loader` returns a fetch that does what
 * provider-auth-request.mjs buildRequestHeaders and addBetaQueryParam do to a request: Bearer
 * token, fixed betas, drop x-api-key and x-session-affinity, `?beta=true` on /v1/messages. It
 * has no pool rotation. `authorize` builds the URL but its callback never exchanges a code.
 */
export function aidevopsAnthropicAuthHook(_input, { fetchImpl = globalThis.fetch } = {}) {
  return {
    provider: "anthropic",
    methods: [
      {
        label: "Add Account to Pool (Claude Pro/Max)", // the label when the pool is empty
        type: "oauth",
        prompts: [
          {
            type: "text",
            key: "email",
            message: "Account email (required to match tokens to accounts)",
            placeholder: "you@example.com",
            validate: (v) => (!v?.includes("@") ? "Please enter a valid email address" : undefined),
          },
        ],
        async authorize(inputs) {
          const url = new URL("https://claude.ai/oauth/authorize");
          url.searchParams.set("code", "true");
          url.searchParams.set("response_type", "code");
          url.searchParams.set("state", "fake-aidevops-state");
          return {
            url: url.toString(),
            instructions: `Adding account: ${inputs?.email || "unknown"}\nPaste the authorization code here: `,
            method: "code",
            callback: async () => ({ type: "failed" }),
          };
        },
      },
    ],
    async loader(getAuth, provider) {
      const auth = await getAuth();
      if (auth?.type !== "oauth") return {};
      for (const m of Object.values(provider?.models ?? {})) m.cost = { input: 0, output: 0, cache: { read: 0, write: 0 } };
      return {
        apiKey: "",
        async fetch(input, init = {}) {
          const url = new URL(input instanceof Request ? input.url : String(input));
          loopbackOnly(url.href);
          const headers = new Headers(input instanceof Request ? input.headers : undefined);
          for (const [k, v] of new Headers(init.headers ?? {})) headers.set(k, v);
          headers.set("authorization", `Bearer ${auth.access}`);
          headers.set("anthropic-beta", AIDEVOPS_REQUIRED_BETAS.join(","));
          headers.delete("x-api-key");
          headers.delete("x-session-affinity");
          if (url.pathname === "/v1/messages" && !url.searchParams.has("beta")) url.searchParams.set("beta", "true");
          return fetchImpl(url, { ...init, headers });
        },
      };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Tools, from tools.mjs createTools. These are plain objects with no args, so zod is not needed.
// ---------------------------------------------------------------------------------------------

function stubTool(name) {
  return { description: `aidevops stand-in tool ${name}`, args: {}, execute: async () => `${name}: ok` };
}

function aidevopsBaseTools() {
  return {
    aidevops: stubTool("aidevops"),
    aidevops_memory: stubTool("aidevops_memory"),
    aidevops_pre_edit_check: stubTool("aidevops_pre_edit_check"),
    aidevops_hook_status: stubTool("aidevops_hook_status"),
  };
}

/** The tool aidevops registers today under the same name (oauth-pool-tool.mjs createPoolTool). */
export function aidevopsOwnPoolTool() {
  return { ...stubTool(POOL_TOOL), description: "aidevops's own model-accounts-pool (anthropic, openai, cursor, google)" };
}

// ---------------------------------------------------------------------------------------------
// The host plugin
// ---------------------------------------------------------------------------------------------

/**
 * @param {object} p
 * @param {{ poolAuthHook: Function, createPoolTool: Function, poolConfigHook: Function }} p.pool our parts
 * @param {"ours-first"|"ours-last"} [p.order] order in the config hook and the tool map. With
 *   "ours-first", aidevops runs after us, so its registerPoolProvider repairs (overwrites) our
 *   `anthropic-pool` name/npm/api/models. With "ours-last", our mergeUserWins sees aidevops's
 *   entry as the user's.
 * @param {object} [p.options] our plugin options (`{ path, fetch }`), passed to all three parts.
 *   `path` (or OAUTH_POOL_PATH) is required so that no test reads ~/.aidevops.
 * @param {"ours"|"aidevops"} [p.auth] which hook fills the single `auth` slot. aidevops HEAD
 *   fills it with provider "anthropic".
 * @param {boolean} [p.keepOwnPoolTool] also register aidevops's own `model-accounts-pool`, which
 *   collides with ours. `order` decides which one wins.
 * @param {boolean} [p.initPoolAuth] like index.mjs, call `client.auth.set` for "anthropic"
 *   from inside the config hook without awaiting it. Fake tokens; on by default.
 * @param {typeof fetch} [p.fetchImpl] what aidevops's anthropic loader fetch calls (loopback only)
 */
export function makeAidevopsHost({ pool, order = "ours-first", options = {}, auth = "ours", keepOwnPoolTool = false, initPoolAuth = true, fetchImpl } = {}) {
  for (const part of ["poolAuthHook", "createPoolTool", "poolConfigHook"]) {
    if (typeof pool?.[part] !== "function") throw new TypeError(`makeAidevopsHost: pool.${part} must be a function`);
  }
  if (order !== "ours-first" && order !== "ours-last") throw new TypeError(`makeAidevopsHost: unknown order ${JSON.stringify(order)}`);
  if (auth !== "ours" && auth !== "aidevops") throw new TypeError(`makeAidevopsHost: unknown auth ${JSON.stringify(auth)}`);
  if (!options?.path && !process.env.OAUTH_POOL_PATH) {
    throw new Error("makeAidevopsHost: pass options.path (or set OAUTH_POOL_PATH) so the default ~/.aidevops pool is never read");
  }

  const trace = [];

  async function AidevopsPlugin(input) {
    const client = input?.client;
    // tools.mjs fills `tools["model-accounts-pool"]` from poolToolFactory, the slot our tool takes.
    // If aidevops also keeps its own tool, both use that key, and the later spread wins.
    const toolName = options.toolName ?? POOL_TOOL;
    const ours = { [toolName]: pool.createPoolTool(input, options) };
    const own = keepOwnPoolTool ? { [POOL_TOOL]: aidevopsOwnPoolTool() } : {};
    const tools = order === "ours-first" ? { ...aidevopsBaseTools(), ...ours, ...own } : { ...aidevopsBaseTools(), ...own, ...ours };

    return {
      // index.mjs: initPoolAuth(client) runs without being awaited (OpenCode 1.4.8 blocks on
      // client.auth.set inside the config hook), then configHook(config) runs
      config: async (config) => {
        if (initPoolAuth) {
          try {
            const pending = client?.auth?.set?.({
              path: { id: "anthropic" },
              body: { type: "oauth", refresh: "fake-aidevops-refresh-injected", access: "fake-aidevops-access-injected", expires: Date.now() + 3_600_000 },
            });
            pending?.catch?.(() => {});
            trace.push(["config", "initPoolAuth (not awaited)"]);
          } catch {}
        }
        const steps =
          order === "ours-first"
            ? [
                ["ours", () => pool.poolConfigHook(config, { input, ...options })],
                ["aidevops", () => aidevopsConfigHook(config)],
              ]
            : [
                ["aidevops", () => aidevopsConfigHook(config)],
                ["ours", () => pool.poolConfigHook(config, { input, ...options })],
              ];
        for (const [who, run] of steps) {
          await run();
          trace.push(["config", who]);
        }
      },

      tool: tools,

      // index.mjs: one auth hook per plugin (OpenCode 1.2.27 crashed on an array); at HEAD it is
      // { provider: "anthropic", methods: poolHook.methods, loader: providerHook.loader }
      auth: auth === "ours" ? pool.poolAuthHook(input, options) : aidevopsAnthropicAuthHook(input, { fetchImpl }),

      // index.mjs records the session's model (shell-env.mjs sessionModelIdentity)
      "chat.params": async (hookInput) => {
        trace.push(["chat.params", `${hookInput?.model?.providerID ?? "?"}/${hookInput?.model?.id ?? "?"}`]);
      },

      // index.mjs systemTransformHook: starts the local proxy for claudecli/*, cursor/*, or
      // google/* on first use. anthropic and anthropic-pool start nothing.
      "experimental.chat.system.transform": async (hookInput) => {
        const providerID = hookInput?.model?.providerID;
        if (["claudecli", "cursor", "google"].includes(providerID)) trace.push(["proxy-start", providerID]);
      },

      // index.mjs event: about a dozen handlers run in Promise.all (observability, greeting, ...)
      event: async ({ event } = {}) => {
        await Promise.all([Promise.resolve(trace.push(["event", event?.type ?? "?"]))]);
      },
    };
  }

  AidevopsPlugin.trace = trace;
  return AidevopsPlugin;
}
