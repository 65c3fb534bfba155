import { nativeBinding } from "./native.mjs";

// Native errors cross the boundary as "[CODE] message" (async napi functions cannot carry a
// custom status). Turn them back into errors with `code` (and `status` for OAUTH_HTTP).

const PREFIX = /^\[([A-Z_]+)(?: (\d{3}))?( spent)?\] /;

export function toPoolError(err) {
  if (!(err instanceof Error) || typeof err.message !== "string") return err;
  const match = PREFIX.exec(err.message);
  if (!match) return err;
  const [, code, status, spent] = match;
  const message = err.message.slice(match[0].length);
  let out;
  if (code === "ABORT_ERR") {
    out = new DOMException("The operation was aborted.", "AbortError");
  } else if (code === "NETWORK") {
    // What WHATWG fetch rejects with on network failure, with what went wrong as its cause, as
    // Node's and Bun's fetch give it.
    out = new TypeError(`fetch failed: ${message}`, { cause: networkCause(message) });
  } else {
    out = new Error(message);
  }
  try {
    Object.defineProperty(out, "code", { value: code, enumerable: true, configurable: true, writable: true });
  } catch {}
  if (status) out.status = Number(status);
  // addAccount failed after the pasted code was spent: the same code is refused from now on.
  if (spent) out.codeSpent = true;
  return out;
}

// The system's name for a failure the detail states. Callers decide from it whether a network
// failure may pass on a retry: the AI SDK (provider-utils `handleFetchError`) makes a fetch
// rejection its retryable "Cannot connect to API" only when its message is exactly "fetch
// failed" or a cause in its chain has one of these codes (ECONNREFUSED, ECONNRESET, ETIMEDOUT,
// EPIPE). Without it, a refused or reset connection through the pool was thrown at the
// caller on the first try, where the runtime's own fetch was retried.
const ERRNO = [
  [/connection refused|econnrefused/i, "ECONNREFUSED"],
  // A connection the server closed before its answer was whole is a reset to the caller, as
  // Node's http client names it (ECONNRESET, "socket hang up"). A chunked body whose last chunk
  // never came (hyper: "unexpected EOF during chunk size line") is one too: without a code the AI
  // SDK threw it on the first try, where it retries Node's fetch ("terminated", UND_ERR_SOCKET).
  [
    /connection reset|econnreset|connection closed before message completed|end of file before message length reached|unexpected eof|connection dropped while reading/i,
    "ECONNRESET",
  ],
  [/broken pipe|epipe/i, "EPIPE"],
  [/timed out|no (?:data|response headers) (?:for|within) \d+ ms|etimedout/i, "ETIMEDOUT"],
];

/**
 * The `cause` of a NETWORK error: an Error saying what went wrong (`detail`, already scrubbed),
 * with `code` when given (the runtime's own, from its fetch's error) or when the detail names
 * a system error.
 */
export function networkCause(detail, code = undefined) {
  const cause = new Error(detail);
  const named = typeof code === "string" && code !== "" ? code : ERRNO.find(([pattern]) => pattern.test(detail))?.[1];
  if (named) cause.code = named;
  return cause;
}

/**
 * Awaits a native call. Some napi-rs async paths resolve with the Error object instead of
 * rejecting: treat a resolved "[CODE] ..." Error exactly like a rejection.
 */
export async function settle(promise) {
  let value;
  try {
    value = await promise;
  } catch (err) {
    throw toPoolError(err);
  }
  if (value instanceof Error && PREFIX.test(value.message)) throw toPoolError(value);
  return value;
}

/** Wraps an async native function so its rejections carry `code`. */
export function wrap(fn) {
  return (...args) => settle((async () => fn(...args))());
}

/**
 * Text about to go into an error or a log line of ours that came from the caller or a runtime (a
 * URL it was given, the runtime's own message), scrubbed by the addon's own rule
 * (`secret::scrub_message`: token shapes, URL queries and fragments). Without the addon, whose
 * absence the caller hears about anyway, the text is withheld rather than passed unscrubbed.
 */
export function scrubbed(text) {
  try {
    return nativeBinding().scrubMessage(String(text));
  } catch {
    return "(text withheld: the native addon is not loaded)";
  }
}
