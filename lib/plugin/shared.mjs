// What the plugin's parts share: the provider id, the pool path option, the library calls they
// use, and the failover notices.
import { homedir, userInfo } from "node:os";
import { isAbsolute, join } from "node:path";
import * as api from "../api.mjs";
import { HOST_HOLD_MS } from "../exchange.mjs";
import { poolFetchWith } from "../fetch.mjs";
import { syncEnv } from "../native.mjs";
import { isApiUrl } from "../runtime-fetch.mjs";
import { scrubbed } from "../errors.mjs";
import { printable } from "../printable.mjs";
import { hintsFor, KEY_HINT, LOGIN_HINT } from "./format.mjs";

export const PROVIDER_ID = "anthropic-pool";
export const TOOL_NAME = "model-accounts-pool";
export { KEY_HINT, LOGIN_HINT };

/** The plugin options the parts read (poolConfigHook also takes `input`, the host's plugin input). */
export const OPTION_NAMES = ["path", "toolName", "provider", "fetch"];

/**
 * The keys of `options` that no part reads. A misspelt one (`pth` for `path`) was ignored without
 * a word, and the pool served was the default one. Not refused: a key of a newer version of the
 * plugin must not stop an older one from loading.
 */
export function unknownOptions(options, also = []) {
  if (!options || typeof options !== "object" || Array.isArray(options)) return [];
  return Object.keys(options).filter((k) => !OPTION_NAMES.includes(k) && !also.includes(k));
}

/** What a person is told of `keys` (from `unknownOptions`). */
export function unknownOptionsMessage(keys) {
  const named = keys.map((k) => JSON.stringify(printable(k.slice(0, 64)))).join(", ");
  return `plugin option${keys.length > 1 ? "s" : ""} ${named} not known, ignored (the options: ${OPTION_NAMES.join(", ")})`;
}

// The hosts already told about their unknown options: each part reports, once per host.
const toldOptions = new WeakMap();

/**
 * Tells the host's person of plugin options no part reads: a toast and a warning in OpenCode's
 * log, once per host input (every part is built from the same options).
 */
export function reportUnknownOptions(input, options, also = []) {
  const keys = unknownOptions(options, also);
  if (keys.length === 0 || !input || typeof input !== "object") return;
  const message = unknownOptionsMessage(keys);
  const told = toldOptions.get(input) ?? new Set();
  if (told.has(message)) return;
  told.add(message);
  toldOptions.set(input, told);
  toast(input.client, "warning", message);
  log(input.client, "warn", message, { unknownOptions: keys.map((k) => printable(k.slice(0, 64))) });
}

/**
 * The host's plugin input as the parts take it: OpenCode's object, or none (no toasts, no log
 * lines). Anything else is a caller's mistake, refused as every export refuses one.
 */
export function pluginInput(input) {
  if (input !== undefined && input !== null && (typeof input !== "object" || Array.isArray(input))) {
    throw api.invalidArgument(`the plugin input must be OpenCode's plugin input object ({ client, ... }), got ${shownOption(input)}`);
  }
  return input;
}

/**
 * The plugin options every part takes (`OAuthPoolPlugin(input, options)` and the parts):
 * `path` (the pool file), `toolName` (the management tool and its command), `provider`
 * (`anthropic-pool`, or `anthropic` to serve OpenCode's own provider), `fetch` (a pool fetch
 * to use instead of the host's shared one). Wrong types are refused at once (INVALID_ARGUMENT).
 */
export function pluginOptions(options) {
  // Options given as something else (a pool path as a string, a list) were dropped without a
  // word, and the default pool served in their place.
  if (options !== undefined && options !== null && (typeof options !== "object" || Array.isArray(options))) {
    throw api.invalidArgument(`plugin options must be an object such as { "path": "..." }, got ${shownOption(options)}`);
  }
  const o = options ?? {};
  const name = (key, fallback, pattern) => {
    const v = o[key];
    if (v === undefined || v === null || v === "") return fallback;
    if (typeof v !== "string" || !pattern.test(v.trim())) {
      throw api.invalidArgument(`plugin option ${key} must be a name of letters, digits, - and _, got ${shownOption(v)}`);
    }
    return v.trim();
  };
  if (o.path !== undefined && o.path !== null && typeof o.path !== "string") throw api.invalidArgument("plugin option path must be a string");
  if (o.fetch !== undefined && o.fetch !== null && typeof o.fetch !== "function") throw api.invalidArgument("plugin option fetch must be a function");
  return {
    path: poolPath(o),
    toolName: name("toolName", TOOL_NAME, /^[A-Za-z0-9_-]{1,64}$/),
    provider: name("provider", PROVIDER_ID, /^[A-Za-z0-9_.-]{1,64}$/),
    fetch: typeof o.fetch === "function" ? o.fetch : undefined,
  };
}

/**
 * A refused option's value as a message quotes it: a string bounded, printable and scrubbed,
 * anything else by its type alone. An object here is often a provider's block pasted into the
 * plugin's options, its `apiKey` and `headers` with it, and the message goes to OpenCode's log
 * and to doctor's report.
 */
function shownOption(v) {
  if (typeof v === "string") return JSON.stringify(printable(scrubbed(v.slice(0, 64))));
  if (Array.isArray(v)) return "a list";
  return v === null ? "null" : typeof v === "object" ? "an object" : `a ${typeof v}`;
}

/**
 * `OAUTH_POOL_API_URL` as the addon takes it: trimmed, and blank for the default. Taken raw, a
 * space pasted after it made OpenCode's `baseURL` "https://api.anthropic.com /v1" (every request
 * an invalid URL) while the addon and doctor took the variable as valid.
 */
export function apiOrigin(env = process.env) {
  return (env.OAUTH_POOL_API_URL?.trim() || "https://api.anthropic.com").replace(/\/+$/, "");
}

/** The library's validated calls (lib/api.mjs), under the name the parts use. */
export const pool = api;

/**
 * The pool file from the plugin options (`[spec, { path }]` in opencode.json), else the default.
 * `~user/...` means a home directory as in a shell: ours when `user` is this account's name;
 * another's is refused (INVALID_ARGUMENT), where it was taken as a relative path and the pool
 * file, tokens and all, went into a directory named `~user` under the project.
 */
export function poolPath(options) {
  const path = options?.path;
  if (typeof path !== "string" || !path.trim()) return undefined;
  const p = path.trim();
  if (p === "~") return home();
  if (p.startsWith("~/")) return join(home(), p.slice(2));
  const named = /^~([^/\\]+)(?:[/\\](.*))?$/s.exec(p);
  if (named) {
    if (named[1] === currentUser()) return named[2] ? join(home(), named[2]) : home();
    throw api.invalidArgument(
      `plugin option path: ~${printable(named[1])} is another user's home, which is not expanded; write the whole path (or ~/ for your own home)`,
    );
  }
  return p;
}

/**
 * The home `~` stands for, as the library finds it: the runtime's homedir() is HOME as set, and
 * a relative one put the pool under each process's working directory (src/config.rs home_dir).
 */
function home() {
  const dir = homedir();
  if (!isAbsolute(dir)) {
    throw api.invalidArgument("plugin option path starts with ~, and there is no home directory (HOME is not an absolute path): write the whole path");
  }
  return dir;
}

function currentUser() {
  try {
    return userInfo().username;
  } catch {
    return undefined;
  }
}

/** Fire-and-forget log line through OpenCode's client (never awaited: no deadlock, no throw). */
export function log(client, level, message, extra) {
  try {
    const pending = client?.app?.log?.({ body: { service: "oauth-pool", level, message: printable(message), ...(extra ? { extra } : {}) } });
    pending?.catch?.(() => {});
  } catch {}
}

/** Fire-and-forget toast in OpenCode's TUI (never awaited, never throws). */
export function toast(client, variant, message) {
  try {
    const pending = client?.tui?.showToast?.({ body: { title: "Anthropic Pool", message: printable(message), variant } });
    pending?.catch?.(() => {});
  } catch {}
}

const NOTICE = {
  failover: "warning",
  "auth-error": "warning",
  "all-cooling": "warning",
  // Told as the hold begins: requests wait (up to OAUTH_POOL_HOLD_MAX_MS) and nothing else shows.
  holding: "warning",
  "third-party-refused": "error",
};

/** The events that say an account turned a request away. */
const TURNED_AWAY = new Set(["rate-limited", "auth-error", "unavailable"]);

/** How many accounts a combined notice names before it counts the rest. */
const NAMED_IN_NOTICE = 3;

/**
 * What was told lately, by key: `fresh(key)` says whether it may be told again now (and notes
 * it). Bounded: keys told more than `ms` ago go as new ones come, and past `max` the oldest go
 * too (a 300-account pool's failover pairs alone are 90,000 keys, kept for the process's life).
 */
export function recentlyTold({ ms = 30_000, now = Date.now, max = 512 } = {}) {
  const last = new Map();
  return {
    fresh(key) {
      const t = now();
      const at = last.get(key);
      if (at !== undefined && t - at < ms && t >= at) return false;
      // Re-inserted, so the map stays in the order things were told: the oldest come first.
      last.delete(key);
      last.set(key, t);
      for (const [k, told] of last) {
        if (last.size <= max && t - told < ms && t >= told) break;
        last.delete(k);
      }
      return true;
    },
    get size() {
      return last.size;
    },
  };
}

/** `a@x, b@x, c@x and 4 more`: a list a person reads, however many there are. */
function named(emails) {
  const shown = emails.slice(0, NAMED_IN_NOTICE);
  const rest = emails.length - shown.length;
  if (rest > 0) return `${shown.join(", ")} and ${rest} more`;
  return shown.length > 1 ? `${shown.slice(0, -1).join(", ")} and ${shown.at(-1)}` : (shown[0] ?? "");
}

/** Why a failover left its account, as the engine words it: "<from> <why>; this request moved to <to>". */
function failoverReason(e) {
  const message = String(e.message ?? "");
  const [head, tail] = [`${e.email} `, `; this request moved to ${e.to}`];
  return message.startsWith(head) && message.endsWith(tail) ? message.slice(head.length, message.length - tail.length) : undefined;
}

/**
 * One request's failovers as one notice: the accounts that turned it away in turn, grouped by
 * why, and where it went (or that none took it, when the last one turned it away too). Those in
 * `covered` (told in a notice of their own that says what mends them) are left out, and with
 * them all, nothing is said.
 */
function cascadeMessage(failovers, batch, covered) {
  const final = failovers.at(-1);
  const last = final.to;
  // The account it moved to last turned it away as well: it ended with no account.
  const lastRefused = batch.slice(batch.indexOf(final) + 1).some((e) => e.email === last && TURNED_AWAY.has(e.kind));
  const shown = failovers.filter((e) => !covered.has(e.email));
  const from = new Set(shown.map((e) => e.email));
  if (lastRefused && !covered.has(last)) from.add(last);
  if (from.size === 0) return undefined;
  if (shown.length === 1 && from.size === 1) return String(shown[0].message ?? "failover");
  const reasons = new Map();
  for (const e of shown) {
    const why = failoverReason(e) ?? "";
    if (!reasons.has(why)) reasons.set(why, []);
    reasons.get(why).push(e.email);
  }
  const groups = [...reasons].slice(0, NAMED_IN_NOTICE).map(([why, emails]) => (why ? `${named(emails)} (${why})` : named(emails)));
  if (reasons.size > NAMED_IN_NOTICE) groups.push(`${reasons.size - NAMED_IN_NOTICE} more reasons`);
  const where = lastRefused ? `none took it (the last was ${last})` : `so it moved to ${last}`;
  const count = from.size === 1 ? "1 account" : `${from.size} accounts`;
  return `${count} turned this request away in turn, ${where}${groups.length ? `: ${groups.join("; ")}` : ""}`;
}

/**
 * One request's events (`batch`, in the order they happened) as a person is to hear them: what
 * `fresh` lets through (the debounce), with a cascade through many accounts (each turning the
 * same request away in turn) said once, not once per account. Every account cooling, said in
 * the same batch, says it all, and the failovers that led there are not repeated. `hints` are
 * what mends an account: `{ login, key }`, or none to tell the events as they are.
 * Returns `{ told: [{ kind, message, events }], quiet: events no person is told about }`.
 */
export function noticesOf(batch, fresh, hints) {
  const events = batch.filter((e) => e && typeof e === "object");
  const everyCooling = events.some((e) => e.kind === "all-cooling" || e.kind === "holding");
  const told = [];
  const quiet = [];
  const failovers = [];
  const authErrors = [];
  for (const e of events) {
    if (!NOTICE[e.kind] || (e.kind === "failover" && everyCooling)) {
      quiet.push(e);
      continue;
    }
    if (!fresh(`${e.kind}:${e.email ?? ""}->${e.to ?? ""}`)) continue;
    if (e.kind === "failover") failovers.push(e);
    else if (e.kind === "auth-error" && e.email) authErrors.push(e);
    else told.push({ kind: e.kind, message: String(e.message ?? e.kind), events: [e] });
  }
  if (failovers.length === 1) told.unshift({ kind: "failover", message: String(failovers[0].message ?? "failover"), events: failovers });
  else if (failovers.length > 1) {
    // Accounts needing a login are named in that notice, with what mends them.
    const message = cascadeMessage(failovers, events, new Set(authErrors.map((e) => e.email)));
    if (message) told.unshift({ kind: "failover", message, events: failovers });
  }
  for (const apiKey of [false, true]) {
    const these = authErrors.filter((e) => Boolean(e.apiKey) === apiKey);
    if (these.length === 0) continue;
    const message =
      these.length === 1
        ? String(these[0].message ?? "auth-error")
        : apiKey
          ? `the API refused the keys of ${these.length} accounts: ${named(these.map((e) => e.email))}`
          : `${these.length} accounts need a new login: ${named(these.map((e) => e.email))}`;
    // The engine's own words for a refused key name the CLI's mend already: only the host's is
    // added (the toast said `oauth-pool add-key` twice).
    const hint = !hints
      ? ""
      : apiKey && message.includes("`oauth-pool add-key") && hints.keyElse
        ? `, or ${hints.keyElse}`
        : `; ${apiKey ? hints.key : hints.login}`;
    told.push({ kind: "auth-error", message: message + hint, events: these });
  }
  // The notices that name several accounts are put together here from the events' emails, and
  // a name is the file's to say: one holding a credential (a Console key named with its own key)
  // is scrubbed as the addon scrubs its own messages.
  return { told: told.map((t) => ({ ...t, message: scrubbed(t.message) })), quiet };
}

/**
 * The fetch's `onEvent`: a person hears about failovers and accounts needing attention once
 * per `debounceMs` for the same accounts (a busy session fails over many requests at once).
 * Messages come from the native side, which never puts a token in them. Its `events(batch)`
 * hears one request's events together (what the plugin's own fetch calls): a cascade through
 * many accounts is one toast.
 */
export function createNotifier(client, { debounceMs = 30_000, now = Date.now, hints = hintsFor("v1") } = {}) {
  const recent = recentlyTold({ ms: debounceMs, now });
  const events = (batch) => {
    const { told, quiet } = noticesOf(Array.isArray(batch) ? batch : [], (key) => recent.fresh(key), hints);
    for (const e of quiet) log(client, "debug", scrubbed(String(e.message ?? e.kind)), { kind: e.kind });
    for (const { kind, message, events: about } of told) {
      const variant = NOTICE[kind];
      toast(client, variant, message);
      // OpenCode's log prints these as they are, beside the message (scrubbed as noticesOf's).
      const [from, to] = [about[0].email, about.at(-1).to].map((v) => (v === undefined ? undefined : printable(scrubbed(v))));
      const extra = { kind, from, to };
      if (about.length > 1) extra.accounts = about.length;
      log(client, variant === "error" ? "error" : "warn", message, extra);
    }
  };
  return Object.assign(
    function onEvent(event) {
      events([event]);
    },
    { events },
  );
}

function requestUrl(input) {
  if (typeof input === "string") return input;
  if (input instanceof URL) return input.href;
  return typeof input?.url === "string" ? input.url : undefined;
}

/**
 * Whether `url` is on `api`'s origin as written. An OAUTH_POOL_API_URL the addon refuses (plain
 * http off loopback) is on no origin it accepts: its requests go on to the pool's fetch, which
 * says why it is refused, where this check said "<origin> is not the pool's API origin (<the
 * same origin>)".
 */
function sameOrigin(url, api) {
  try {
    return new URL(url).origin === new URL(api).origin;
  } catch {
    return false;
  }
}

/**
 * `url` as fetch would send it when it is http(s), else undefined. Read as the WHATWG parser
 * reads it, not by its spelling: a leading blank, `http:/host` and `http:\\host` are sent to
 * that host as well, and a check of the spelling let them past the origin check below.
 */
function httpUrl(url) {
  if (typeof url !== "string") return undefined;
  if (/^https?:\/\/[^\\]*$/i.test(url) && url === url.trim()) return url;
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The provider's fetch, for the pool's API origin only. A `baseURL` elsewhere in opencode.json
 * (a proxy, a typo) gets no credential of ours; sent on as the host built it, the person saw
 * only that server's refusal ("invalid bearer token", "x-api-key header is required") and no
 * word of the pool. It is refused before anything is sent, saying why (INSECURE_ENDPOINT), as
 * the OpenCode 2 setup does. What is not a URL goes on, for the pool fetch's own errors. The
 * pool's every-account-cooling answer is given a wait OpenCode can bear (`waitOpenCodeCanBear`).
 */
function apiOriginOnly(fetch, provider) {
  return async function poolProviderFetch(input, init) {
    const url = httpUrl(requestUrl(input));
    if (url !== undefined) {
      syncEnv();
      const api = apiOrigin();
      if (!isApiUrl(url) && !sameOrigin(url, api)) {
        let origin = "that origin";
        try {
          origin = new URL(url).origin;
        } catch {}
        const [there, ours] = [scrubbed(origin), scrubbed(api)];
        const err = new Error(
          `Anthropic pool: ${there} is not the pool's API origin (${ours}), so no account of the pool serves it; nothing was sent. ` +
            `Remove options.baseURL from provider["${provider}"] in opencode.json (or set it to ${ours}/v1), or set OAUTH_POOL_API_URL=${there} to pool through that origin.`,
        );
        err.code = "INSECURE_ENDPOINT";
        throw err;
      }
    }
    try {
      return waitOpenCodeCanBear(await fetch(input, init));
    } catch (err) {
      // The engine words the login for every host, "Anthropic Pool" among them; with this
      // provider the pool's login methods sit under OpenCode's own Anthropic entry.
      if (provider === "anthropic" && typeof err?.message === "string" && err.message.includes(ENGINE_LOGIN_WAYS))
        err.message = err.message.replace(ENGINE_LOGIN_WAYS, ANTHROPIC_LOGIN_WAYS);
      throw err;
    }
  };
}

/** src/engine/exchange.rs `login_ways!`, and how it reads with `provider: "anthropic"` on 1.18. */
const ENGINE_LOGIN_WAYS = "OpenCode's Anthropic Pool login (`opencode auth login` on 1.18, `/connect` on 2.x)";
const ANTHROPIC_LOGIN_WAYS = "OpenCode's login (`opencode auth login` -> Anthropic)";

/**
 * The longest every-account-cooling wait OpenCode is asked to sit out: long enough for a short
 * throttle to pass by itself, short enough that a person is not left looking at a silent prompt.
 */
export const LONGEST_HOST_WAIT_S = 60;

/**
 * The pool's own 429 (every account cooling) as OpenCode is to read it. OpenCode 1.18 sleeps a
 * 429's `retry-after` however long it is, up to 5 times, before it says anything: with every
 * account in a 5-hour or a weekly window, `opencode run` sat silent for hours or days. A wait up
 * to a minute is kept (OpenCode waits and the request goes through by itself); a longer one is
 * answered with `retry-after: 0`: OpenCode's retries come back here at once and get the same
 * answer, nothing is sent upstream, and the person reads the pool's message (which account is
 * usable again when) within a second. The same for its 429 for a request that only one account
 * can serve (`holder-cooling`: a file or a batch that account holds, and that account cooling).
 * A wait that holding (OAUTH_POOL_HOLD_MAX_MS) covers but that is longer than the pool holds a
 * request inside OpenCode (HOST_HOLD_MS, `x-oauth-pool-host-waits`) keeps its `retry-after`:
 * OpenCode sits it out and asks again, as holding asked.
 */
export function waitOpenCodeCanBear(res) {
  const pool = res?.headers?.get?.("x-oauth-pool");
  if (res?.status !== 429 || (pool !== "all-accounts-cooling" && pool !== "holder-cooling")) return res;
  if (res.headers.get("x-oauth-pool-host-waits") === "true") return res;
  const secs = Number(res.headers.get("retry-after"));
  if (!(secs > LONGEST_HOST_WAIT_S)) return res;
  const headers = new Headers(res.headers);
  headers.set("retry-after", "0");
  // The SDKs' "do not ask again" (src/engine/exchange.rs, `pool_429`): OpenCode's retries are
  // what bring the person the pool's message here.
  headers.delete("x-should-retry");
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}

// Parts built for the same plugin `input` (one host) share one fetch and one notifier, however
// the host composes them: the loader's fetch is the config-declared provider's fetch, and
// failover notices reach that host's client once, not once per part.
const hosts = new WeakMap();

/** The rotating fetch of this host (per pool file and provider). */
export function poolFetchFor(input, options) {
  const o = pluginOptions(options);
  if (o.fetch) return o.fetch;
  // Held at most HOST_HOLD_MS inside OpenCode's header timeout; a longer wait is OpenCode's own.
  const make = () => {
    const notifier = createNotifier(input?.client, { hints: hintsFor("v1", o.provider) });
    return apiOriginOnly(poolFetchWith({ path: o.path, onEvent: notifier }, { holdAtMostMs: HOST_HOLD_MS, onEvents: notifier.events }), o.provider);
  };
  if (!input || typeof input !== "object") return make();
  let shared = hosts.get(input);
  if (!shared) {
    shared = new Map();
    hosts.set(input, shared);
  }
  const key = `${o.path ?? ""}\u0000${o.provider}`;
  if (!shared.has(key)) shared.set(key, make());
  return shared.get(key);
}
