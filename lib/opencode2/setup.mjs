// OpenCode 2's `setup(ctx)`: the whole plugin on a 2.x host. Loaded only there (plugin.mjs
// imports this lazily after telling a 2.x context from 1.18's registration-only one). Each part
// checks for the host feature it needs and is skipped with one log line when the host lacks it:
// the V2 API moved during 2.0.x, and a missing feature must never take the host down.
import { printable } from "../printable.mjs";
import { pluginOptions, LOGIN_HINT } from "../plugin/shared.mjs";
import { poolActionText, TOOL_DESCRIPTION, TOOL_INPUT_SCHEMA } from "../plugin/tool.mjs";
import { apiKeysOnly } from "../plugin/auth.mjs";
import { INTEGRATION_ID, integrationTransform, providerTransform } from "./catalog.mjs";
import { registerRequestHooks } from "./requests.mjs";

const NOTICE_DEBOUNCE_MS = 30_000;

function makeLog() {
  // A 2.x server plugin has no log API of its own: its stderr goes to OpenCode's log.
  return (level, message) => {
    try {
      console.error(`[oauth-pool] ${level}: ${printable(message)}`);
    } catch {}
  };
}

/** Accounts that need a login show as connections that need auth, where the host has one. */
async function markNeedsAuth(ctx, email, message, log) {
  try {
    const got = await ctx.integration.get?.({ integrationID: INTEGRATION_ID });
    const info = got?.data ?? got;
    const conn = info?.connections?.find((c) => c.label === email);
    if (conn) await ctx.integration.connection.status({ integrationID: INTEGRATION_ID, connection: conn, status: { status: "needs_auth", message } });
  } catch (err) {
    log("warn", `could not mark ${email} as needing a login: ${err?.message ?? err}`);
  }
}

/** Failovers and accounts needing attention: one line per kind and accounts per 30 s. */
function makeNotifier(ctx, log) {
  const last = new Map();
  return (events) => {
    for (const e of events) {
      if (!e || typeof e !== "object") continue;
      const key = `${e.kind}:${e.email ?? ""}->${e.to ?? ""}`;
      const now = Date.now();
      if (now - (last.get(key) ?? -Infinity) < NOTICE_DEBOUNCE_MS) continue;
      last.set(key, now);
      const level = e.kind === "failover" || e.kind === "rate-limited" ? "info" : "warn";
      log(level, String(e.message ?? e.kind));
      if (e.kind === "auth-error" && e.email) markNeedsAuth(ctx, e.email, `${e.email} needs a new login: ${LOGIN_HINT}`, log);
    }
  };
}

export async function setupV2(ctx) {
  const log = makeLog();
  let opts;
  try {
    opts = pluginOptions(ctx?.options);
  } catch (err) {
    log("error", `${err.message}; the pool is not set up`);
    return undefined;
  }
  const { path, toolName, provider: providerID } = opts;
  const skipped = (what) => log("warn", `this OpenCode has no ${what}; that part of the pool is skipped`);
  const cleanups = [];
  const keep = (registration) => {
    if (registration && typeof registration.dispose === "function") cleanups.push(registration);
  };

  if (typeof ctx.integration?.transform === "function") keep(await ctx.integration.transform(integrationTransform({ path, log })));
  else skipped("integration.transform (logins)");

  // With `provider: "anthropic"` the host's own Anthropic provider is served as it is.
  if (providerID === "anthropic") log("info", "serving OpenCode's own anthropic provider through the pool");
  else if (typeof ctx.provider?.transform === "function") {
    const keysOnly = await apiKeysOnly(path);
    keep(await ctx.provider.transform(providerTransform({ providerID, apiKeysOnly: keysOnly })));
  } else skipped("provider.transform (the anthropic-pool provider)");

  await registerRequestHooks(ctx, { providerID, path, log, notify: makeNotifier(ctx, log) });

  if (typeof ctx.tool?.transform === "function") {
    keep(
      await ctx.tool.transform((editor) =>
        editor.add({
          name: toolName,
          description: TOOL_DESCRIPTION,
          input: TOOL_INPUT_SCHEMA,
          // A direct tool: the person asks for it by name (not through CodeMode's execute).
          options: { codemode: false },
          execute: async (input) => ({ content: await poolActionText(input, path) }),
        }),
      ),
    );
  } else skipped("tool.transform (the model-accounts-pool tool)");

  if (typeof ctx.command?.transform === "function") {
    keep(
      await ctx.command.transform((editor) =>
        editor.add({
          name: toolName,
          description: "Anthropic pool: list accounts, status, remove/enable/disable, priority, reset cooldowns",
          execute: async (input) => {
            const [action = "list", email, priority] = String(input?.prompt?.text ?? "")
              .trim()
              .split(/\s+/)
              .filter(Boolean);
            const text = await poolActionText({ action, email, priority: priority === undefined ? undefined : Number(priority) }, path);
            try {
              if (typeof ctx.session?.synthetic === "function") await ctx.session.synthetic({ sessionID: input?.sessionID, text });
              else log("info", text);
            } catch (err) {
              log("warn", `could not show the command's output: ${err?.message ?? err}`);
            }
          },
        }),
      ),
    );
  } else skipped("command.transform (the /model-accounts-pool command)");

  return async () => {
    for (const r of cleanups.splice(0)) await r.dispose().catch?.(() => {});
  };
}
