// Text for people: durations, clock times, one line per account, for the CLI and the plugin's
// tool alike. Every wait and time of day is worded by the addon (src/wait.rs, `waitWords`), as
// its own messages word them (the 429, the toasts, the gateway's answers): one wording and one
// rounding everywhere, UTC (the README says why). The addon is also asked for the names of what
// a cooldown rests.

import { nativeBinding } from "../native.mjs";
import { placedName, shortened } from "../printable.mjs";

export const LOGIN_HINT = "run `opencode auth login` -> Anthropic Pool";
/**
 * Said where a Pro/Max login begins (anchors.md section 0: OAuth is an opt-in with a warning):
 * Anthropic's consumer terms keep subscription logins to its own apps; Console keys are the
 * sanctioned path, and the pool takes them as members.
 */
export const SUBSCRIPTION_TERMS =
  "Anthropic's terms reserve Pro/Max logins for Claude Code and claude.ai; a Console API key is the sanctioned way to use Claude from other tools.";

/** What mends a refused Console key: a working key under the account's name. */
export const KEY_HINT = "add a working key under its name: `oauth-pool add-key --email <name>`, or `opencode auth login` -> Anthropic Pool -> Console API key";

/**
 * How a person logs in, by host: OpenCode 1.18's `opencode auth login`; OpenCode 2's connect
 * flow (its integrations, where 2.x marks the connection that needs a login), and the CLI, which
 * every host has.
 */
export const HINTS = {
  v1: { login: LOGIN_HINT, key: KEY_HINT, keyElse: "`opencode auth login` -> Anthropic Pool -> Console API key", add: LOGIN_HINT, alsoAdd: "" },
  // 1.18 with `provider: "anthropic"`: the pool's login methods sit under OpenCode's own
  // Anthropic entry, and no "Anthropic Pool" is listed.
  v1Anthropic: {
    login: "run `opencode auth login` -> Anthropic",
    key: "add a working key under its name: `oauth-pool add-key --email <name>`, or `opencode auth login` -> Anthropic -> Console API key",
    keyElse: "`opencode auth login` -> Anthropic -> Console API key",
    add: "run `opencode auth login` -> Anthropic",
    alsoAdd: "",
  },
  v2: {
    login: "log in again with `/connect` -> Anthropic Pool -> Claude Pro/Max, or `oauth-pool add`",
    key: "add a working key under its name: `oauth-pool add-key --email <name>`, or `/connect` -> Anthropic Pool -> Console API key",
    keyElse: "`/connect` -> Anthropic Pool -> Console API key",
    add: "`/connect` -> Anthropic Pool",
    alsoAdd: " In a terminal: `oauth-pool add`.",
  },
};

/** The hints of a host (`"v1"`, `"v2"`) for the provider the pool serves. */
export function hintsFor(host, provider) {
  if (host === "v2") return HINTS.v2;
  return provider === "anthropic" ? HINTS.v1Anthropic : HINTS.v1;
}

/**
 * Whom a change named, as the pool file spells it, beside what was typed when that differs
 * (`#2`, `ALICE@X`, a space around it): "alice@x (#2)". `emails` is what the change resolved to.
 */
export function whomChanged(emails, typed) {
  const names = emails.join(", ") || typed;
  return names === typed ? names : `${names} (${typed})`;
}

const words = (at, now) => nativeBinding().waitWords(Number(at), Number(now));

/** 4_320_000 -> "1 h 12 min"; 17_000 -> "17 s": rounded up, never said shorter than it is. */
export function duration(ms) {
  return words(ms, 0).duration;
}

/** The time of day in UTC, with the day when it is not today: "14:05 UTC", "Tue 1 Dec 14:05 UTC". */
export function clock(at, now = Date.now()) {
  return words(at, now).clock;
}

/** A wait: "in 1 h 12 min (at 14:05 UTC)". */
export function wait(until, now = Date.now()) {
  return words(until, now).until;
}

/** A wait for a sentence that names its end: "14:05 UTC (in 1 h 12 min)" ("cooling until …"). */
export function waitAt(until, now = Date.now()) {
  return words(until, now).at;
}

// The keys of `modelCooldowns` that name an endpoint with limits of its own rather than a model
// family, and what resting each means: the engine's list (`ENDPOINT_SCOPES` in
// src/engine/limits.rs), asked the first time a cooldown is shown.
let endpointRests = null;
function endpointRest(key) {
  endpointRests ??= new Map(
    nativeBinding()
      .restScopes()
      .map((scope) => [scope.key, scope.rests]),
  );
  return endpointRests.get(key);
}

/** What a scoped cooldown (a key of `modelCooldowns`) rests, for a person: "sonnet models". */
export function restedText(key) {
  // A family is a word (`sonnet`); a key of the file's may be anything.
  return endpointRest(key) ?? `${shortened(key, 64)} models`;
}

/** What the account still serves while `key` rests: "other models", "messages". */
export function servedText(key) {
  return endpointRest(key) === undefined ? "other models" : "messages";
}

/**
 * A share of a window in percent, to a tenth where needed: a reserve of 0.004 read "0% kept" and
 * "stops once a window reaches 100 %", one of 0.999 the other way round. Some is never 0, less
 * than all never 100.
 */
export function percent(fraction) {
  const p = fraction * 100;
  const tenth = Math.round(p * 10) / 10;
  if (p > 0 && p < 100) return String(Math.min(99.9, Math.max(0.1, tenth)));
  return String(tenth);
}

/**
 * A window's use in whole percent, as a person reads it: "100%" only once it is spent and "0%"
 * only when nothing is used (rounded, 99.6 % read "100%" beside an account still served).
 */
function wholePercent(fraction) {
  const p = Math.round(fraction * 100);
  if (fraction > 0 && fraction < 1) return `${Math.min(99, Math.max(1, p))}%`;
  return `${p}%`;
}

/** "5 min ago", "just now", "never". */
export function ago(iso, now = Date.now()) {
  const t = typeof iso === "number" ? iso : Date.parse(iso ?? "");
  if (!Number.isFinite(t)) return "never";
  if (now - t < 60_000) return "just now";
  return `${duration(now - t)} ago`;
}

/** Why the engine holds an account back that its stored fields call usable (`heldBy`). */
const HELD_BY = {
  reserve: "held at its reserve line",
  rest: "resting in this process after a refusal",
};

/**
 * What the pool does with an account where its stored status says otherwise (`listAccounts` and
 * `poolStatus` add the engine's view): held back though idle or active, or an `auth-error`
 * another program wrote (aidevops's helper, after a refresh that failed for a while), whose
 * login the pool presents once more when that program's backoff ends. Null when nothing to add.
 */
export function heldText(a, now = Date.now()) {
  const until = a.heldUntil ?? a.rateLimitUntil;
  if (a.status === "auth-error" && a.authErrorTheirs && a.type !== "api")
    return a.usable
      ? "auth-error marked by another program; the pool tries this login again at its next request"
      : `auth-error marked by another program; the pool tries this login again ${until ? wait(until, now) : "when its backoff ends"}`;
  if (a.heldUntil && a.usable === false && (a.status === "idle" || a.status === "active"))
    return `${a.status}, ${HELD_BY[a.heldBy] ?? "held back"}: usable again ${wait(a.heldUntil, now)}`;
  return null;
}

export function statusText(a, now = Date.now(), hints = HINTS.v1) {
  const held = heldText(a, now);
  if (held && a.credential !== false) return held;
  switch (a.status) {
    case "rate-limited": {
      const until = a.heldUntil ?? a.rateLimitUntil;
      return until ? `rate-limited, usable again ${wait(until, now)}` : "rate-limited";
    }
    case "auth-error":
      return a.type === "api" ? `auth-error: the key was refused; ${hints.key}` : `auth-error: needs a new login: ${hints.login}`;
    case "disabled":
      return "disabled (enable it with action enable)";
    case "invalid":
      return "invalid entry";
    default:
      // An entry with nothing to send (tokens never written, a key under another name than
      // `key`) is never used: said so, not as the usable `idle` its status reads.
      if (a.credential === false) return a.type === "api" ? `${a.status}, but no key: ${hints.key}` : `${a.status}, but no token: ${hints.login}`;
      return a.status;
  }
}

function windowText(label, w, now) {
  if (!w || (w.utilization == null && w.resetsAt == null)) return null;
  const pct = w.utilization == null ? "?" : wholePercent(w.utilization);
  return w.resetsAt ? `${label} ${pct} resets ${wait(w.resetsAt, now)}` : `${label} ${pct}`;
}

/** "5h 42% resets in 1 h 12 min (at 14:05 UTC), 7d 35% resets ...", or null when never seen. */
export function quotaText(quota, now = Date.now()) {
  const parts = [windowText("5h", quota?.fiveHour, now), windowText("7d", quota?.sevenDay, now)].filter(Boolean);
  return parts.length ? parts.join(", ") : null;
}

const BAR = 10;
/** "[######----]": a window's use at a glance (over 100 % stays full). */
export function bar(fraction) {
  // Full only once spent, as the figure beside it says.
  const filled = Math.max(0, Math.min(fraction < 1 ? BAR - 1 : BAR, Math.round((fraction ?? 0) * BAR)));
  return `[${"#".repeat(filled)}${"-".repeat(BAR - filled)}]`;
}

/** One window: "7d_sonnet [#########-] 93% resets in 2 d 4 h (at Tue 1 Dec 12:00 UTC)". */
export function windowLine(w, now = Date.now()) {
  const pct = w.utilization == null ? "?" : wholePercent(w.utilization);
  const reset = w.resetsAt ? ` resets ${wait(w.resetsAt, now)}` : "";
  return `${w.name} ${bar(w.utilization)} ${pct}${reset}`;
}

/**
 * The most windows, and model cooldowns, of one account named: the rest are counted. An account
 * has a handful; a file's own (a hand edit, another program) had thousands, all in the text the
 * model reads.
 */
export const PIECES_SHOWN = 8;

/** The first `PIECES_SHOWN` of `items`, and how many are left. */
export function firstPieces(items) {
  return { shown: items.slice(0, PIECES_SHOWN), more: Math.max(0, items.length - PIECES_SHOWN) };
}

/** The windows seen for an account, fullest first (the rest counted); null when none was seen yet. */
export function windowsText(windows, now = Date.now(), separator = " · ") {
  if (!Array.isArray(windows) || !windows.length) return null;
  const { shown, more } = firstPieces([...windows].sort((a, b) => (b.utilization ?? 0) - (a.utilization ?? 0)));
  return [...shown.map((w) => windowLine(w, now)), ...(more ? [`and ${more} more`] : [])].join(separator);
}

const compact = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)}M` : n >= 1e4 ? `${Math.round(n / 1e3)}k` : String(n));

/** "12 requests, 1.2M in, 40k out, 3.1M cache read, 200k cache write". */
export function countsText(c) {
  if (!c) return "nothing";
  const parts = [`${c.requests ?? 0} request${c.requests === 1 ? "" : "s"}`, `${compact(c.input ?? 0)} in`, `${compact(c.output ?? 0)} out`];
  if (c.cacheRead) parts.push(`${compact(c.cacheRead)} cache read`);
  if (c.cacheWrite) parts.push(`${compact(c.cacheWrite)} cache write`);
  return parts.join(", ");
}

/**
 * What these tokens would have cost at API prices, from per-model prices in USD per million
 * tokens (`{ input, output, cache_read, cache_write }`, as OpenCode's models cache has them);
 * null when no model of the usage has a price.
 */
export function costOf(byModel, prices) {
  if (!byModel || !prices) return null;
  let total = 0;
  let priced = false;
  for (const [model, c] of Object.entries(byModel)) {
    const p = prices[model] ?? prices[model.replace(/-\d{8}$/, "")];
    if (!p) continue;
    priced = true;
    total +=
      ((c.input ?? 0) * (p.input ?? 0) +
        (c.output ?? 0) * (p.output ?? 0) +
        (c.cacheRead ?? 0) * (p.cache_read ?? 0) +
        (c.cacheWrite ?? 0) * (p.cache_write ?? 0)) /
      1e6;
  }
  return priced ? total : null;
}

/** "today: 12 requests, ... (≈ $1.23 at API prices)". */
export function usageLine(label, summary, prices) {
  if (!summary?.total?.requests) return null;
  const cost = costOf(summary.byModel, prices);
  return `${label}: ${countsText(summary.total)}${cost == null ? "" : ` (≈ $${cost.toFixed(2)} at API prices)`}`;
}

/**
 * One account of `list`, led by the `#N` every action takes (its place in the file, from 0): it
 * was numbered from 1, and `disable #2` took the account on the line numbered 3.
 */
export function accountLine(a, i, now = Date.now(), hints = HINTS.v1) {
  const placed = placedName(a.email, i);
  const name = placed.endsWith(` (#${i})`) ? placed.slice(0, -` (#${i})`.length) : placed;
  const parts = [
    `#${i} ${name} [${a.type === "api" ? "API key" : "Claude login"}] ${statusText(a, now, hints)}`,
    `priority ${a.priority ?? 0}`,
    a.lastUsed ? `last used ${ago(a.lastUsed, now)}` : "never used",
  ];
  const windows = windowsText(a.windows, now, ", ") ?? quotaText(a.quota, now);
  if (windows) parts.push(windows);
  if (a.reserve) parts.push(`reserve ${percent(a.reserve)}%`);
  const cooling = firstPieces(Object.entries(a.modelCooldowns ?? {}));
  for (const [key, until] of cooling.shown) parts.push(`${restedText(key)} cooling until ${waitAt(until, now)}`);
  if (cooling.more) parts.push(`and ${cooling.more} more model${cooling.more === 1 ? "" : "s"} cooling`);
  if (a.lastError && a.status !== "idle" && a.status !== "active") parts.push(`last problem: ${a.lastError}`);
  return parts.join(" · ");
}
