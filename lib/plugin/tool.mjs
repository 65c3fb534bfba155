// The `model-accounts-pool` tool: manage the pool from inside OpenCode. Returns text for a person.
// OpenCode 1.18 takes a tool as a plain definition whose args are zod 4 schemas (what
// `tool()` of @opencode-ai/plugin returns). zod alone is enough; the SDK package, with effect and
// the TUI peers, is not needed at run time. zod is loaded when a tool is made, not when the
// library is imported: it costs more to load (tens of ms cold under Node) than everything else
// here, and library-only and CLI users never need it.
import { createRequire } from "node:module";
import { LOGIN_HINT, pool, pluginOptions, reportUnknownOptions } from "./shared.mjs";
import { accountLine, ago, clock, quotaText, restedText, servedText, statusText, usageLine, wait, waitAt, windowsText } from "./format.mjs";
import { modelPrices } from "./prices.mjs";
import { printableLines } from "../printable.mjs";

export const ACTIONS = ["list", "status", "remove", "enable", "disable", "priority", "reset-cooldowns"];

const USAGE = [
  "list: every account with its status, priority, last use and quota",
  "status: counts, soonest reset, last failover, quota per account",
  "remove <email>: take an account out of the pool",
  "enable <email>: use a disabled account again",
  "disable <email>: stop using an account but keep its login",
  "priority <email> <n>: higher is tried first (default 0)",
  "reset-cooldowns: forget every rate-limit cooldown now",
];

const EMPTY = `The Anthropic pool has no accounts yet. Add one: ${LOGIN_HINT} -> "Claude Pro/Max (add account to pool)" (or "Console API key (add to pool)").`;

function known(accounts) {
  if (!accounts) return "";
  return accounts.length ? `Accounts in the pool: ${accounts.map((a) => a.email).join(", ")}.` : EMPTY;
}

/** The accounts for a hint, or null when the pool cannot be read (the caller's error says why). */
async function accountsOrNull(path) {
  try {
    return await pool.listAccounts(path);
  } catch {
    return null;
  }
}

async function list(path, now) {
  const accounts = await pool.listAccounts(path);
  if (!accounts.length) return EMPTY;
  const usable = accounts.filter((a) => a.status === "active" || a.status === "idle").length;
  return [
    `Anthropic pool: ${accounts.length} account${accounts.length === 1 ? "" : "s"}, ${usable} usable now.`,
    ...accounts.map((a, i) => accountLine(a, i, now)),
  ].join("\n");
}

async function status(path, now) {
  const s = await pool.poolStatus(path);
  const c = s.counts ?? {};
  const lines = [`Anthropic pool (${s.path})`];
  if (!c.total && !s.invalid?.length) return `${lines[0]}\n${EMPTY}`;
  const by = ["active", "idle", "rate-limited", "auth-error", "disabled"]
    .filter((k) => c[k])
    .map((k) => `${c[k]} ${k}`)
    .join(", ");
  lines.push(`Accounts: ${c.total ?? 0} total, ${c.usable ?? 0} usable${by ? ` (${by})` : ""}.`);
  if (s.soonestReset) {
    const who = s.accounts.filter((a) => a.rateLimitUntil === s.soonestReset).map((a) => a.email);
    lines.push(`Soonest reset: ${wait(s.soonestReset, now)}${who.length ? `, ${who.join(", ")}` : ""}.`);
  } else {
    lines.push("Soonest reset: no account is cooling down.");
  }
  const f = s.lastFailover;
  lines.push(
    f ? `Last failover: ${ago(f.at, now)} (${clock(f.at, now)}), ${f.from} -> ${f.to ?? "no other account"}: ${f.reason}.` : "Last failover: none recorded.",
  );
  if (s.accounts.length) {
    const prices = await modelPrices();
    lines.push("Per account:");
    for (const a of s.accounts) {
      lines.push(`  ${a.email}: ${statusText(a, now)}`);
      lines.push(`    windows: ${windowsText(a.windows, now, "; ") ?? quotaText(a.quota, now) ?? "none seen yet"}`);
      if (a.reserve) lines.push(`    reserve: ${Math.round(a.reserve * 100)}% of every window kept for its owner`);
      for (const [key, until] of Object.entries(a.modelCooldowns ?? {}))
        lines.push(`    ${restedText(key)} cooling until ${waitAt(until, now)}; ${servedText(key)} serve`);
      for (const u of [usageLine("today", a.usage?.today, prices), usageLine("this 5h window", a.usage?.window, prices)].filter(Boolean))
        lines.push(`    ${u}`);
    }
  }
  if (s.invalid?.length) {
    lines.push(`Invalid entries (kept in the file as they are): ${s.invalid.map((e) => `#${e.index}: ${e.reason}`).join("; ")}.`);
  }
  return lines.join("\n");
}

async function needEmail(action, path, extra = "") {
  return `The ${action} action needs \`email\`: the account to ${action}${extra}. ${known(await accountsOrNull(path))}`.trim();
}

async function run(args, path) {
  const action = String(args?.action ?? "list")
    .trim()
    .toLowerCase();
  const email = typeof args?.email === "string" ? args.email.trim() : "";
  const now = Date.now();
  switch (action) {
    case "list":
      await pool.flushPool(path);
      return list(path, now);
    case "status":
      await pool.flushPool(path);
      return status(path, now);
    case "remove": {
      if (!email) return needEmail("remove", path);
      const n = await pool.removeAccount(email, path);
      return `Removed ${email} from the Anthropic pool${n > 1 ? ` (${n} entries)` : ""}. ${known(await accountsOrNull(path))}`;
    }
    case "enable":
    case "disable": {
      if (!email) return needEmail(action, path);
      await pool.setEnabled(email, action === "enable", path);
      return action === "enable"
        ? `Enabled ${email}: the pool uses it again.`
        : `Disabled ${email}: the pool will not use it until you enable it (its login or key is kept).`;
    }
    case "priority": {
      if (!email) return needEmail("priority", path, " and `priority`, a whole number (higher is tried first)");
      const n = Number(args?.priority);
      if (args?.priority === undefined || args?.priority === null || !Number.isInteger(n)) {
        return `The priority action needs \`priority\`: a whole number, higher is tried first (default 0). Example: priority ${email} 10.`;
      }
      await pool.setPriority(email, n, path);
      return `Priority of ${email} is now ${n} (higher is tried first).`;
    }
    case "reset-cooldowns": {
      const n = await pool.resetCooldowns(path);
      return n ? `Cleared the cooldown of ${n} account${n === 1 ? "" : "s"}.` : "No account was cooling down.";
    }
    default:
      return `Unknown action "${args?.action}". Actions:\n${USAGE.map((u) => `- ${u}`).join("\n")}`;
  }
}

/**
 * Runs one pool action and returns text for a person, every line printable (emails, reasons and
 * window names come from the file or a server); failures become text too, never throws.
 */
export async function poolActionText(args, path) {
  return printableLines(await actionText(args, path));
}

async function actionText(args, path) {
  try {
    return await run(args, path);
  } catch (err) {
    if (err?.code === "ACCOUNT_NOT_FOUND") {
      return `No account "${args?.email ?? ""}" in the Anthropic pool. ${known(await accountsOrNull(path))}`;
    }
    return `The Anthropic pool could not do that${err?.code ? ` (${err.code})` : ""}: ${err?.message ?? err}`;
  }
}

export const TOOL_DESCRIPTION = `Manage the Anthropic account pool behind the anthropic-pool provider. Actions: ${USAGE.join("; ")}. Show the result to the user as it is.`;

/** The tool's input as plain JSON Schema (OpenCode 2 takes JSON Schema, not zod instances). */
export const TOOL_INPUT_SCHEMA = Object.freeze({
  type: "object",
  properties: {
    action: { type: "string", enum: ACTIONS, description: "What to do" },
    email: { type: "string", description: "The account's email (remove, enable, disable, priority)" },
    priority: { type: "integer", description: "The new priority for action priority; higher is tried first" },
  },
  required: ["action"],
  additionalProperties: false,
});

const require = createRequire(import.meta.url);

export function createPoolTool(input, options) {
  const { path } = pluginOptions(options);
  reportUnknownOptions(input, options);
  const { z } = require("zod");
  return {
    description: TOOL_DESCRIPTION,
    args: {
      action: z.enum(ACTIONS).describe("What to do"),
      email: z.string().optional().describe("The account's email (remove, enable, disable, priority)"),
      priority: z.number().int().optional().describe("The new priority for action priority; higher is tried first"),
    },
    async execute(args) {
      return poolActionText(args, path);
    },
  };
}
