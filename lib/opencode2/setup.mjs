// OpenCode 2's `setup(ctx)`: the whole plugin on a 2.x host. Loaded only there (plugin.mjs
// imports this lazily after telling a 2.x context from 1.18's registration-only one). Each part
// checks for the host feature it needs and is skipped with one log line when the host lacks it:
// the V2 API moved during 2.0.x, and a missing feature must never take the host down.
import { printable } from "../printable.mjs";
import { scrubbed } from "../errors.mjs";
import { HINTS } from "../plugin/format.mjs";
import { noticesOf, pluginOptions, recentlyTold, unknownOptions, unknownOptionsMessage } from "../plugin/shared.mjs";
import { poolActionText, TOOL_DESCRIPTION, TOOL_INPUT_SCHEMA } from "../plugin/tool.mjs";
import { apiKeysOnly } from "../plugin/auth.mjs";
import { aliasesOf, INTEGRATION_ID, integrationTransform, providerTransform } from "./catalog.mjs";
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

/**
 * Accounts that need a login show as connections that need auth, where the host has one: the
 * account's placeholder found as a login finds it (its label, else the email it carries: a
 * connection the person labelled otherwise, at its login or since, was never marked).
 */
async function markNeedsAuth(ctx, existing, email, message, log) {
  try {
    const conn = await existing?.find(email);
    // The host shows the message beside the connection: printable, and no credential a name holds.
    if (conn)
      await ctx.integration.connection.status({
        integrationID: INTEGRATION_ID,
        connection: conn,
        status: { status: "needs_auth", message: printable(message) },
      });
  } catch (err) {
    log("warn", `could not mark ${email} as needing a login: ${err?.message ?? err}`);
  }
}

/**
 * The host's placeholder for an account: a connection of the integration whose credential
 * names the email (its label, or the placeholder's metadata when the person gave the
 * connection another label). `renew` makes it the active one and clears a needs-login mark.
 */
function hostConnections(ctx) {
  if (typeof ctx.integration?.get !== "function") return undefined;
  const integrationID = INTEGRATION_ID;
  return {
    find: async (email) => {
      const got = await ctx.integration.get({ integrationID });
      const conns = ((got?.data ?? got)?.connections ?? []).filter((c) => c?.type === "credential");
      const labelled = conns.find((c) => c.label === email);
      if (labelled || typeof ctx.integration.connection?.resolve !== "function") return labelled;
      for (const c of conns) {
        const value = await ctx.integration.connection.resolve(c).catch(() => undefined);
        if (value?.type === "oauth" && value.access === "pool" && value.metadata?.email === email) return c;
      }
      return undefined;
    },
    renew: async (conn) => {
      if (typeof ctx.credential?.activate === "function") await ctx.credential.activate({ credentialID: conn.id });
      if (conn.status && typeof ctx.integration.connection?.status === "function")
        await ctx.integration.connection.status({ integrationID, connection: conn, status: undefined });
    },
  };
}

/**
 * Failovers and accounts needing attention: one line per kind and accounts per 30 s, and one
 * for a request that went through many accounts in turn (`noticesOf`). What no person is told
 * of in 1.18 (an account resting, a token refreshed) is a line of its own here, as it was: this
 * is the host's log, and a cascade's rests are one line too.
 */
function makeNotifier(ctx, existing, log) {
  const recent = recentlyTold({ ms: NOTICE_DEBOUNCE_MS });
  const fresh = (key) => recent.fresh(key);
  return (events) => {
    const { told, quiet } = noticesOf(events, fresh);
    for (const { kind, message, events: about } of told) {
      log(kind === "failover" ? "info" : "warn", message);
      if (kind !== "auth-error") continue;
      for (const e of about)
        markNeedsAuth(ctx, existing, e.email, e.apiKey ? `${e.email}: ${HINTS.v2.key}` : `${e.email} needs a new login: ${HINTS.v2.login}`, log);
    }
    // A failover is quiet only beside every account cooling, which says where it led.
    const said = quiet.filter((e) => e.kind !== "failover" && fresh(`${e.kind}:${e.email ?? ""}->${e.to ?? ""}`));
    const rests = said.filter((e) => e.kind === "rate-limited");
    for (const e of said) if (rests.length < 2 || e.kind !== "rate-limited") log(e.kind === "rate-limited" ? "info" : "warn", String(e.message ?? e.kind));
    if (rests.length >= 2) {
      const shown = rests.slice(0, 3).map((e) => String(e.message ?? e.kind));
      const more = rests.length > shown.length ? `; and ${rests.length - shown.length} more` : "";
      log("info", `${rests.length} accounts rest: ${shown.join("; ")}${more}`);
    }
  };
}

/** How long setup waits to learn the pool's kind before it lists the provider anyway. */
const KIND_WAIT_MS = 1000;

/** Resolves when `promise` settles or `ms` pass, whichever is first; never rejects. */
function settledWithin(promise, ms) {
  let timer;
  return Promise.race([promise.catch(() => {}), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]).finally(() => clearTimeout(timer));
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
  const unknown = unknownOptions(ctx?.options);
  if (unknown.length) log("warn", unknownOptionsMessage(unknown));
  // 1.18's `fetch` replaces the provider's fetch; a 2.x host sends each request itself, and the
  // pool only places credentials in its hooks: there is nothing for it to replace.
  if (opts.fetch)
    log("warn", "plugin option fetch has no effect on OpenCode 2 (the host sends each request; the pool places its credentials in the request hooks), ignored");
  const { path, toolName, provider: providerID } = opts;
  const skipped = (what) => log("warn", `this OpenCode has no ${what}; that part of the pool is skipped`);
  const cleanups = [];
  const keep = (registration) => {
    if (registration && typeof registration.dispose === "function") cleanups.push(registration);
  };
  // Each part on its own: a host that refuses one (a registration that throws, a policy that
  // denies it) must not cost the others. A rejected setup is a failed plugin in 2.x: its scope
  // closes and every registration made so far goes with it, the provider included, with no
  // word to the person beyond a line in the host's own log.
  const part = async (what, register) => {
    try {
      await register();
    } catch (err) {
      log("warn", `this OpenCode refused ${what}: ${scrubbed(err?.message ?? err)}; that part of the pool is skipped`);
    }
  };

  // Whether the pool holds only API keys (billed per token, so the models keep their prices) is
  // asked again after each change made through this host; the provider is folded again when the
  // answer changes. Never awaited past a moment: a store that does not answer must not hold the
  // host's plugin load, and the models show at zero cost until the answer comes.
  // `folded`: the answer the provider's last fold used (undefined before the first).
  const kind = { keysOnly: false, folded: undefined };
  const askKind = () =>
    apiKeysOnly(path).then(async (keysOnly) => {
      kind.keysOnly = keysOnly;
      if (kind.folded === undefined || kind.folded === keysOnly || typeof ctx.provider?.reload !== "function") return;
      await Promise.resolve()
        .then(() => ctx.provider.reload())
        .catch((err) => log("warn", `this OpenCode refused to fold the ${providerID} provider again: ${scrubbed(err?.message ?? err)}`));
    });
  const recheck = () => {
    askKind().catch(() => {});
  };

  const existing = hostConnections(ctx);
  await part("integration.transform (logins)", async () => {
    if (typeof ctx.integration?.transform === "function")
      keep(await ctx.integration.transform(integrationTransform({ path, log, existing, changed: recheck })));
    else skipped("integration.transform (logins)");
  });

  // The hooks before the provider: a provider whose requests cannot go through the pool must not
  // be offered (they would go out with no credential of ours).
  let served = false;
  const wireModels = new Map();
  await part("session.hook (the pool's request hooks)", async () => {
    for (const r of await registerRequestHooks(ctx, { providerID, path, log, wireModels, notify: makeNotifier(ctx, existing, log) })) keep(r);
    served = true;
  });

  // With `provider: "anthropic"` the host's own Anthropic provider is served as it is.
  await part("provider.transform (the anthropic-pool provider)", async () => {
    if (!served) log("warn", `the ${providerID} provider is not served: its requests could not go through the pool`);
    else if (providerID === "anthropic") {
      log("info", "serving OpenCode's own anthropic provider through the pool");
      if (typeof ctx.provider?.transform === "function") {
        await settledWithin(askKind(), KIND_WAIT_MS);
        keep(await ctx.provider.transform(aliasesOf(providerID, wireModels, { listed: true, apiKeysOnly: () => (kind.folded = kind.keysOnly) })));
      } else skipped("provider.transform (the anthropic provider listed without a host login)");
    } else if (typeof ctx.provider?.transform === "function") {
      await settledWithin(askKind(), KIND_WAIT_MS);
      // An answer that comes after the fold folds the provider again (`askKind`).
      keep(await ctx.provider.transform(providerTransform({ providerID, apiKeysOnly: () => (kind.folded = kind.keysOnly), wireModels })));
    } else skipped("provider.transform (the anthropic-pool provider)");
  });

  await part("tool.transform (the model-accounts-pool tool)", async () => {
    if (typeof ctx.tool?.transform !== "function") return skipped("tool.transform (the model-accounts-pool tool)");
    keep(
      await ctx.tool.transform((editor) =>
        editor.add({
          name: toolName,
          description: TOOL_DESCRIPTION,
          input: TOOL_INPUT_SCHEMA,
          // A direct tool: the person asks for it by name (not through CodeMode's execute).
          options: { codemode: false },
          // No confirm: a 2.x tool's context has no way to ask the person (packages/plugin/src/
          // promise/tool.ts ToolContext: sessionID, agent, messageID, id, signal, progress,
          // checkpoint), and the model's call may come from a page it read. So `remove` disables
          // the account and names the CLI command that deletes it; the command below deletes.
          execute: async (input) => {
            const content = await poolActionText(input, path, { host: "v2" });
            recheck();
            return { content };
          },
        }),
      ),
    );
  });

  await part("command.transform (the /model-accounts-pool command)", async () => {
    if (typeof ctx.command?.transform !== "function") return skipped("command.transform (the /model-accounts-pool command)");
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
            // The person typed this command (packages/plugin/src/promise/command.ts: a code
            // command, run by the host for the person's input, never called by the model): their
            // `remove` is their wish.
            const text = await poolActionText({ action, email, priority }, path, {
              confirm: async () => {},
              host: "v2",
            });
            recheck();
            try {
              // The text joins the model's context; the description is what the person sees (a
              // synthetic message without one is not shown in the transcript).
              if (typeof ctx.session?.synthetic === "function") await ctx.session.synthetic({ sessionID: input?.sessionID, text, description: text });
              else log("info", text);
            } catch (err) {
              log("warn", `could not show the command's output: ${err?.message ?? err}`);
            }
          },
        }),
      ),
    );
  });

  return async () => {
    // A host whose dispose() returns nothing (or throws) must not keep the other registrations.
    for (const r of cleanups.splice(0)) {
      try {
        await r?.dispose?.();
      } catch {}
    }
  };
}
