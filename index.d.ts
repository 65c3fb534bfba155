/**
 * opencode-oauth-pool: pool several Anthropic accounts behind one OpenCode provider.
 * Every rejection is an `Error` with a stable `code` (see README "Error codes").
 */

export type AccountStatus = "active" | "idle" | "rate-limited" | "auth-error" | "disabled";

/** One account as stored in the pool file (unknown fields are kept verbatim). */
export interface Account {
  email: string;
  type?: "oauth" | "api";
  refresh?: string;
  access?: string;
  key?: string;
  /** Access-token expiry, epoch milliseconds; null when none is known (a Console API key, an entry written without one). */
  expires?: number | null;
  /** ISO-8601. */
  added?: string;
  /** ISO-8601. */
  lastUsed?: string;
  status: AccountStatus;
  /**
   * Epoch milliseconds, or null when not cooling. Absent from an entry another writer made
   * without it (the JavaScript predecessor writes `cooldownUntil` instead), until the pool writes it.
   */
  rateLimitUntil?: number | null;
  priority?: number;
  enabled?: boolean;
  [extra: string]: unknown;
}

export interface Pool {
  version?: number;
  /**
   * An entry the pool cannot read (no email, a field of the wrong type) is kept verbatim, of
   * whatever shape it has: `listAccounts` shows it with status "invalid" and its `index`.
   */
  anthropic: Account[];
  [extra: string]: unknown;
}

/** Errors carry one of these codes. */
export type ErrorCode =
  | "POOL_CORRUPT"
  | "POOL_INSECURE"
  | "POOL_INVALID"
  | "POOL_IO"
  | "POOL_BUSY"
  | "POOL_NO_ACCOUNT"
  | "ACCOUNT_NOT_FOUND"
  | "OAUTH_STATE_MISMATCH"
  | "OAUTH_BAD_INPUT"
  | "OAUTH_INVALID_GRANT"
  | "OAUTH_HTTP"
  | "NETWORK"
  | "INSECURE_ENDPOINT"
  | "ABORT_ERR"
  | "INVALID_ARGUMENT"
  | "NATIVE_MISSING"
  | "STORE_UNAVAILABLE"
  | "STORE_KEY"
  | "ALREADY_CONNECTED";

export interface PoolError extends Error {
  code: ErrorCode;
  /** HTTP status, for OAUTH_HTTP. */
  status?: number;
  /**
   * Set on an `addAccount` failure that came after the pasted code was spent at the token
   * endpoint (the API key endpoint failing, the pool refusing the login): that code is refused
   * from now on, and only a new login can add the account.
   */
  codeSpent?: boolean;
}

export function loadPool(path?: string): Promise<Pool>;
export function savePool(pool: Pool, path?: string): Promise<void>;

export interface AuthorizeResult {
  url: string;
  verifier: string;
  state: string;
}
export function authorize(options?: { mode?: "max" | "console" }): Promise<AuthorizeResult>;

export interface TokenSet {
  access: string;
  refresh: string;
  /** Epoch milliseconds. */
  expires: number;
}
/**
 * `email`: from the token response, else from the profile endpoint; null when neither gives one
 * that can name an account (the tokens are still handed back: the code is spent).
 */
export function exchange(input: string, pkce: { verifier: string; state: string }): Promise<TokenSet & { email: string | null }>;
export function refresh(refreshToken: string): Promise<TokenSet>;

/** An account as shown to people: no secrets. Unreadable entries have status "invalid". */
export interface AccountSummary {
  /** For an unreadable entry without an email: `#<index>` (what `removeAccount` takes). */
  email: string;
  type: "oauth" | "api" | "unknown";
  /** The entry's position in the file, for unreadable entries. */
  index?: number;
  /**
   * Effective status now: a passed cooldown reads as "idle"; an OAuth account whose token needs
   * a refresh the token endpoint asked to hold off (`tokenWaitUntil`) reads as "rate-limited".
   */
  status: AccountStatus | "invalid";
  /** When it can serve again (its cooldown or its token wait, the later), epoch ms; null: now. */
  rateLimitUntil: number | null;
  /**
   * Until when its token, which needs a refresh, is not refreshed: the token endpoint asked to be
   * left alone after a failed refresh (`resetCooldowns` lifts it), epoch ms; null when not so.
   */
  tokenWaitUntil?: number | null;
  priority: number;
  enabled: boolean;
  added: string | null;
  lastUsed: string | null;
  /** Access-token expiry (OAuth), epoch ms. */
  expires: number | null;
  /** Last problem seen with this account, for people (never a token). */
  lastError: string | null;
  /**
   * Whether the entry holds what a request is sent with (a token, or a key under `key`): one
   * without is never used, whatever its status says.
   */
  credential?: boolean;
  /**
   * Whether the pool would send a request with it now: enabled, with a credential, not cooling,
   * and no `auth-error` of the pool's own for this credential (one another program wrote, such
   * as the aidevops plugin, does not stop it), not held at its reserve line, not resting in
   * this process after a refusal, and past this process's jitter after a reset.
   * `poolStatus().counts.usable` counts these.
   */
  usable?: boolean;
  /**
   * Epoch ms until which this process holds the account back beyond its stored cooldown, and
   * why: `reserve` (its reserve line), `rest` (a rest after a refusal, this process's own).
   * Absent when nothing but its stored cooldown holds it back.
   */
  heldUntil?: number;
  heldBy?: "reserve" | "rest";
  /**
   * An `auth-error` another program wrote (the aidevops plugin's helper, after refreshes that
   * failed): the pool presents the login once more when that program's backoff ends.
   */
  authErrorTheirs?: boolean;
  /** Share of every window kept for the account's owner (above 0, at most 1); null: none. */
  reserve?: number | null;
  /**
   * Cooldowns that apply to one model family only (e.g. `opus`), or to one endpoint with rate
   * limits of its own (`count_tokens`, `message_batches`, `files_api`), epoch ms, when still running.
   */
  modelCooldowns?: Record<string, number>;
  /** Every subscription window the API reported (`5h`, `7d`, `7d_opus`, ...); a passed one reads 0. */
  windows?: UsageWindow[];
  /** Requests and tokens this pool counted, per model. */
  usage?: {
    today: UsageCounts;
    window: (UsageCounts & { resetsAt: number }) | null;
    last30Days: UsageCounts;
  } | null;
  /**
   * The 5-hour and 7-day windows from response headers, when either was seen (the other is then
   * null). Utilization is a fraction (1 = 100 %). `windows` has every window.
   */
  quota: {
    fiveHour: QuotaWindow | null;
    sevenDay: QuotaWindow | null;
    /** Epoch ms when the windows were last read, or null. */
    updatedAt: number | null;
  } | null;
}

export interface QuotaWindow {
  utilization: number | null;
  /** Epoch ms. */
  resetsAt: number | null;
  /** As the API said it (`allowed`, `allowed_warning`, `rejected`), or null. */
  status: string | null;
}

export interface UsageWindow {
  name: string;
  /** The model family the window is for (`opus`, `sonnet`), or null for every model. */
  scope: string | null;
  utilization: number | null;
  resetsAt: number | null;
  status: string | null;
}

export interface Counts {
  requests: number;
  input: number;
  output: number;
  cacheRead: number;
  cacheWrite: number;
}

export interface UsageCounts {
  total: Counts;
  byModel: Record<string, Counts>;
}

export interface PoolStatus {
  path: string;
  accounts: AccountSummary[];
  counts: Record<AccountStatus | "invalid" | "total" | "usable", number>;
  /** Epoch ms when the soonest cooling or held (`heldUntil`) account becomes usable, or null. */
  soonestReset: number | null;
  /** The last failover this machine recorded, or null. */
  lastFailover: { at: number; from: string; to: string | null; reason: string } | null;
  /** Entries of the file that could not be read (kept verbatim; also listed in `accounts`). */
  invalid: { index: number; email: string | null; reason: string }[];
  /** Groups of account emails that differ only in case (for those, commands need the exact spelling). */
  caseClashes: string[][];
  /** New tokens this process got but could not write yet (it keeps their refresh lock). */
  unsavedTokens: { email: string; since: number; error: string }[];
  /** Accounts whose refresh lock some process holds right now. */
  refreshLocked: string[];
  /** Epoch ms when this status was taken. */
  checkedAt: number;
}

export function listAccounts(path?: string): Promise<AccountSummary[]>;
export function poolStatus(path?: string): Promise<PoolStatus>;
/**
 * Exchanges a pasted code and adds (or updates, same email) the account. Tokens stay in Rust. A
 * Console login (`authorize({ mode: "console" })` in this process, or `pkce.mode` `"console"`)
 * adds the API key the Console makes for it, as a `type: "api"` member (`type: "api"` in the
 * answer).
 */
export function addAccount(
  input: string,
  pkce: { verifier: string; state: string; mode?: "max" | "console" },
  path?: string,
): Promise<{ email: string; added: boolean; type?: "api" }>;
/** Adds a Console API key as a `type: "api"` member. */
export function addApiKey(key: string, options?: { email?: string; path?: string }): Promise<{ email: string; added: boolean }>;
/** Removes the account(s) with this email; resolves how many were removed. */
export function removeAccount(email: string, path?: string): Promise<number>;
/**
 * The next three resolve to the emails changed, as the pool file spells them (`email` may be
 * `#N`, or differ in case or surrounding spaces).
 */
export function setEnabled(email: string, enabled: boolean, path?: string): Promise<string[]>;
export function setPriority(email: string, priority: number, path?: string): Promise<string[]>;
/** Clears every cooldown (and rate-limited status); resolves how many accounts changed. */
export function resetCooldowns(path?: string): Promise<number>;
/**
 * Refreshes one account now under the pool's lock protocol. `adopted`: another process refreshed
 * meanwhile and its token was taken instead of spending the refresh token again.
 */
export function refreshAccount(
  email: string,
  path?: string,
): Promise<{
  email: string;
  outcome: "refreshed" | "adopted" | "kept";
  expires: number | null;
  /** What happened on the way (e.g. `tokens-unsaved`). */
  events: PoolEvent[];
}>;
/** Keeps that share (0 to 1) of every window for the account's owner; 0 clears it. */
export function setReserve(email: string, fraction: number, path?: string): Promise<string[]>;
/** Writes this process's pending bookkeeping (cooldowns, last use, quota) now. */
export function flushPool(path?: string): Promise<void>;
/** The version of the native addon. */
export function nativeVersion(): string;
/** The napi-rs platform triple of this process, e.g. "linux-x64-gnu". */
export function platformTriple(): string;
/** Copies an existing Claude Code login (`~/.claude/.credentials.json`) into the pool. */
export function importClaudeCode(options?: { credentialsPath?: string; email?: string; path?: string }): Promise<{ email: string; added: boolean }>;

export interface ServeOptions {
  /** Default 127.0.0.1; another address needs `allowRemote` and TLS. */
  host?: string;
  /** Default 8787; 0 picks a free port. */
  port?: number;
  path?: string;
  allowRemote?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  headerTimeoutMs?: number;
  /** How long a request body may go without a byte before it is answered 408 (60 s). */
  bodyTimeoutMs?: number;
  maxConnections?: number;
}
export interface Gateway {
  url: string;
  /** The gateway key file this start made (no key was there yet), or null: clients need the new key. */
  keyCreated: string | null;
  /** Stops accepting, lets streams in flight finish (at most `drainMs`, default 10 s), then stops. */
  close(drainMs?: number): Promise<void>;
  /** Lets the process exit while the gateway runs. */
  unref(): Gateway;
}
/** Starts the pool gateway, an Anthropic-compatible endpoint any client can point at. */
export function serve(options?: ServeOptions): Promise<Gateway>;
/** The key clients of the gateway present (OAUTH_POOL_GATEWAY_KEY, else a generated 0600 file). */
export function gatewayKey(path?: string): string;

/**
 * Creates or migrates the fleet store's schema (a postgres:// URL, else OAUTH_POOL_STORE) and
 * ties it to the store key; without a key, a 0600 key file is created and named in `keyCreated`.
 */
export function storeInit(location?: string): Promise<{ location: string; schema: number; keySource: string; keyCreated: string | null }>;
/** Copies a whole pool between a file and a postgres:// store, in either direction, every field kept. */
export function copyStore(
  from: string,
  to: string,
): Promise<{
  from: string;
  to: string;
  entries: number;
  /** OAuth logins copied: each is now in both stores (use only one). */
  logins: number;
  /** Names of the accounts `to` held that `from` holds neither by name nor by credential: gone from `to`. */
  replaced: string[];
  /** Where those were kept first when `to` is a postgres:// store (a 0600 pool file beside `from`, else beside the configured pool file); null when nothing was replaced or `to` is a file (its `.bak` keeps them). */
  kept: string | null;
}>;

export interface PoolEvent {
  /**
   * `holding`: every account is cooling and requests wait for the first one (`OAUTH_POOL_HOLD_MAX_MS`);
   * told as the hold begins, while the request is pending (other kinds come as it ends), once per
   * cooldown however many requests wait.
   */
  kind: "failover" | "rate-limited" | "auth-error" | "unavailable" | "all-cooling" | "holding" | "third-party-refused" | "tokens-unsaved";
  /** The account the event is about (for all-cooling and holding: the one usable first). */
  email?: string;
  /** The account the request moved to, for failover. */
  to?: string;
  /** Epoch ms, for rate-limited / all-cooling / holding. */
  until?: number;
  /** For auth-error: the refused credential is a Console API key (mended with a working key, not a login). */
  apiKey?: boolean;
  message: string;
}

export interface PoolFetchOptions {
  path?: string;
  provider?: "anthropic";
  /** Called (synchronously, errors ignored) for failovers and account state changes. */
  onEvent?: (event: PoolEvent) => void;
  /**
   * Who carries the bytes; the Rust engine decides either way. `"native"`: the addon's HTTP
   * client. `"runtime"`: the runtime's own fetch. `"auto"` (default): the runtime's under Bun
   * unless a proxy variable is set (the addon owns the proxy rules), the addon's under Node.
   */
  transport?: "auto" | "native" | "runtime";
}

/** The pool fetch's answer: a real `Response`, plus the account that served it. */
export interface PoolResponse extends Response {
  /** The email of the account that served it; null for the pool's own 429 (every account cooling) or a URL off the API origin. */
  readonly poolAccount: string | null;
  clone(): PoolResponse;
}
/**
 * Rejects as fetch does: with the signal's reason when aborted (by default a `DOMException` named
 * `AbortError`, whose `code` is the number 20), a `TypeError` with `code` "NETWORK" when the API
 * cannot be reached (its `cause` says what went wrong, with the system's `code` such as
 * "ECONNREFUSED" when known), a `TypeError` with `code` "INVALID_ARGUMENT" for what fetch itself
 * refuses (a bad URL, method, header or body); otherwise with a `PoolError` (`POOL_NO_ACCOUNT`, ...).
 */
export type PoolFetch = (input: string | URL | Request, init?: RequestInit) => Promise<PoolResponse>;
export function createPoolFetch(options?: PoolFetchOptions): PoolFetch;

// OpenCode plugin building blocks (types from @opencode-ai/plugin, an optional peer: hosts have it)
import type { AuthHook, Config, Hooks, PluginInput, ToolDefinition } from "@opencode-ai/plugin";

export interface ModelDefinition {
  id?: string;
  name: string;
  [k: string]: unknown;
}
export const ANTHROPIC_MODELS: Readonly<Record<string, ModelDefinition>>;

/** Options of the plugin and of each part (`[spec, options]` in opencode.json on 1.18, `{ package, options }` on 2.x). */
export interface PoolPluginOptions {
  /** The pool file (`~/` expanded) or a postgres:// store (default: $OAUTH_POOL_STORE, else $OAUTH_POOL_PATH, else ~/.aidevops/oauth-pool.json). */
  path?: string;
  /** The management tool's name, and its command's (default `model-accounts-pool`). */
  toolName?: string;
  /**
   * `anthropic-pool` (default) adds that provider; `anthropic` serves OpenCode's own Anthropic
   * provider through the pool instead.
   */
  provider?: string;
  /** A pool fetch to use instead of the one the host's parts share. */
  fetch?: PoolFetch;
}

export interface PoolPluginHooks {
  auth: AuthHook;
  tool: Record<string, ToolDefinition>;
  config: (config: Config) => Promise<void>;
}

/** The whole plugin for OpenCode 1.18: `{ auth, tool: { [toolName]: tool }, config }`. */
export function OAuthPoolPlugin(input: PluginInput, options?: PoolPluginOptions): Promise<PoolPluginHooks & Partial<Hooks>>;
/** The `auth` hook: logins add accounts; the loader hands OpenCode the host's pool fetch. */
export function poolAuthHook(input: PluginInput, options?: PoolPluginOptions): AuthHook;
/** The management tool (zod args, as OpenCode 1.18 takes them). */
export function createPoolTool(input: PluginInput, options?: PoolPluginOptions): ToolDefinition;
/**
 * Declares the provider (or serves `anthropic`) in OpenCode's config. Pass the host's `input` so
 * the provider shares the host's fetch and notices with the auth loader; alone, it makes its own.
 */
export function poolConfigHook(config: Config, options?: PoolPluginOptions & { input?: PluginInput }): Promise<void>;
