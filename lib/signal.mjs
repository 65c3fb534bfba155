// The caller's AbortSignal, as fetch treats it.
import { defaultMaxListeners, getMaxListeners, setMaxListeners } from "node:events";

/**
 * What an aborted request rejects with: the signal's reason, whatever it is (`abort(null)`
 * rejects with null, as fetch does), else an AbortError (a polyfill's signal may have none).
 */
export function abortError(signal) {
  const reason = signal?.reason;
  return coded(reason !== undefined ? reason : new DOMException("The operation was aborted.", "AbortError"));
}

/**
 * An abort's own AbortError (`controller.abort()` with no reason) carries the contract's code as
 * well, `err.code === "ABORT_ERR"`, as the pool's other errors carry theirs (a DOMException's
 * own `code` is the number 20); its name stays "AbortError", which clients test, as fetch gives
 * it. A reason the caller chose is theirs, untouched.
 */
function coded(err) {
  if (err instanceof DOMException && err.name === "AbortError" && typeof err.code !== "string") {
    try {
      Object.defineProperty(err, "code", { value: "ABORT_ERR", enumerable: true, configurable: true, writable: true });
    } catch {}
  }
  return err;
}

// Bun warns of no listener count; under Node the lookup below is skipped for it.
const COUNTS_LISTENERS = typeof process?.versions?.bun !== "string";

/**
 * `listener` added for the signal's abort, once. Node warns of a possible memory leak
 * (MaxListenersExceededWarning, on stderr) at the 11th listener on one signal; its fetch lifts
 * a signal still at that default to 1500 before it listens, since a signal that many requests
 * share at once (a session's) is no leak. The pool listens the same way: 11 requests at once on
 * one signal printed that warning, and Node's fetch prints none.
 */
export function listenAbort(signal, listener) {
  if (COUNTS_LISTENERS) {
    try {
      if (getMaxListeners(signal) === defaultMaxListeners) setMaxListeners(1500, signal);
    } catch {
      // Not Node's own EventTarget (a polyfill's signal): nothing of Node's to warn.
    }
  }
  signal.addEventListener("abort", listener, { once: true });
}
