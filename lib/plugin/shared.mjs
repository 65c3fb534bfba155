// What the plugin's parts share: the provider id, the pool path option, the library calls they
// use, and the failover notices.
import { homedir } from "node:os";
import { join } from "node:path";
import * as api from "../api.mjs";
import { createPoolFetch } from "../fetch.mjs";
import { LOGIN_HINT } from "./format.mjs";

export const PROVIDER_ID = "anthropic-pool";
export const TOOL_NAME = "model-accounts-pool";
export { LOGIN_HINT };

/** The library's validated calls (lib/api.mjs), under the name the parts use. */
export const pool = api;

/** The pool file from the plugin options (`[spec, { path }]` in opencode.json), else the default. */
export function poolPath(options) {
  const path = options?.path;
  if (typeof path !== "string" || !path.trim()) return undefined;
  const p = path.trim();
  if (p === "~") return homedir();
  if (p.startsWith("~/")) return join(homedir(), p.slice(2));
  return p;
}

/** Fire-and-forget log line through OpenCode's client (never awaited: no deadlock, no throw). */
export function log(client, level, message, extra) {
  try {
    const pending = client?.app?.log?.({ body: { service: "oauth-pool", level, message, ...(extra ? { extra } : {}) } });
    pending?.catch?.(() => {});
  } catch {}
}

function toast(client, variant, message) {
  try {
    const pending = client?.tui?.showToast?.({ body: { title: "Anthropic Pool", message, variant } });
    pending?.catch?.(() => {});
  } catch {}
}

const NOTICE = {
  failover: "warning",
  "auth-error": "warning",
  "all-cooling": "warning",
  "third-party-refused": "error",
};

/**
 * The fetch's `onEvent`: a person hears about failovers and accounts needing attention once
 * per `debounceMs` for the same accounts (a busy session fails over many requests at once).
 * Messages come from the native side, which never puts a token in them.
 */
export function createNotifier(client, { debounceMs = 30_000, now = Date.now } = {}) {
  const last = new Map();
  return function onEvent(event) {
    if (!event || typeof event !== "object") return;
    const variant = NOTICE[event.kind];
    if (!variant) {
      log(client, "debug", String(event.message ?? event.kind), { kind: event.kind });
      return;
    }
    const key = `${event.kind}:${event.email ?? ""}->${event.to ?? ""}`;
    const t = now();
    if (t - (last.get(key) ?? -Infinity) < debounceMs) return;
    last.set(key, t);
    let message = String(event.message ?? event.kind);
    if (event.kind === "auth-error" && event.email) message += ` (${event.email} needs a new login: ${LOGIN_HINT})`;
    toast(client, variant, message);
    log(client, variant === "error" ? "error" : "warn", message, { kind: event.kind, from: event.email, to: event.to });
  };
}

/** One rotating fetch per plugin instance, shared by the auth loader and the config hook. */
export function poolFetchFor(input, options) {
  if (typeof options?.fetch === "function") return options.fetch;
  return createPoolFetch({ path: poolPath(options), onEvent: createNotifier(input?.client) });
}
