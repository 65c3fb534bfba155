// The WHATWG face of the rotating fetch. Rust decides (the account, tokens, failover); who
// carries the bytes is the transport: the Rust client ("native", the default under Node), whose
// answer becomes a real Response pulled from Rust chunk by chunk, or the runtime's own fetch
// ("runtime", the default under Bun: lib/runtime-fetch.mjs). This file turns fetch()'s
// arguments into a plain request for either.
import { types } from "node:util";
import { native, syncEnv } from "./native.mjs";
import { scrubbed, settle, toPoolError } from "./errors.mjs";
import { invalidArgument, knownOptions, readable, shown } from "./api.mjs";
import { described, isApiUrl, runtimeCarries, runtimeFetch } from "./runtime-fetch.mjs";
import { eventListener } from "./exchange.mjs";
import { abortError, listenAbort } from "./signal.mjs";

const TRANSPORTS = new Set(["auto", "native", "runtime"]);

const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);
const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const REDIRECT_MODES = new Set(["follow", "error", "manual"]);

// A method is an HTTP token; fetch refuses these three outright.
const METHOD_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const FORBIDDEN_METHODS = new Set(["CONNECT", "TRACE", "TRACK"]);

/**
 * What fetch itself refuses it rejects with a TypeError, and callers tell a bad call from a
 * failed one by that class (as the runtime's fetch gives it): the pool's refusals of a fetch
 * call are TypeErrors too, carrying the contract's INVALID_ARGUMENT code. A plain Error here
 * was read as something else than fetch's refusal of the same arguments.
 */
function refused(message) {
  const err = new TypeError(message);
  err.code = "INVALID_ARGUMENT";
  return err;
}

/**
 * The caller's signal as the request listens to it: any AbortSignal, also one of another realm or
 * a polyfill (what is used of it). One that is not the runtime's own (another realm's, a
 * polyfill's, a Proxy) is followed through a signal of ours: a getter or a listener call of its
 * own that threw came back as the caller's uncoded Error, or mid-request, after an exchange was
 * opened; now it is refused here, INVALID_ARGUMENT, before anything starts.
 */
function ownSignal(signal) {
  return readable("init.signal", () => {
    if (typeof signal !== "object" || typeof signal.aborted !== "boolean" || typeof signal.addEventListener !== "function") {
      throw refused("signal must be an AbortSignal");
    }
    if (!types.isProxy(signal) && signal instanceof AbortSignal) return signal;
    const own = new AbortController();
    // Read inside the event too: a throw from a listener would be the host's uncaught exception.
    const follow = () => {
      let reason;
      try {
        reason = signal.reason;
      } catch {
        // no reason to give: ours says it was aborted
      }
      own.abort(reason);
    };
    if (signal.aborted) follow();
    else signal.addEventListener("abort", follow, { once: true });
    return own.signal;
  });
}

/**
 * Refuses what fetch itself refuses about a URL, before anything is decided or sent: a scheme
 * other than http(s), and a user name or password in it (a credential the caller did not mean
 * to send, and one the pool's own would be mixed with).
 */
function checkUrl(url) {
  const scheme = url.startsWith("https://") ? 8 : url.startsWith("http://") ? 7 : 0;
  if (scheme) {
    // The usual case without a parse: no "@" in the authority.
    const end = url.slice(scheme).search(/[/?#]/);
    if (!(end < 0 ? url.slice(scheme) : url.slice(scheme, scheme + end)).includes("@")) return;
  }
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    // A user name and password in it are not repeated (a space in the host made it invalid).
    const shown = url.split(/[?#]/)[0].replace(/\/\/.*@/s, "//[redacted]@");
    throw refused(`not an absolute URL: ${scrubbed(shown.slice(0, 200))}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw refused(`only http and https URLs are fetched, not ${parsed.protocol}`);
  if (parsed.username || parsed.password) throw refused("a URL with a user name or password in it is refused, as fetch refuses it");
}

const isArrayBuffer = (v) => v instanceof ArrayBuffer || (typeof SharedArrayBuffer === "function" && v instanceof SharedArrayBuffer);

/**
 * What `read` gives from the caller's arguments; a throw of the caller's own code (a getter, a
 * Proxy's trap, a detached buffer) is fetch's refusal, coded: it came back as the caller's own
 * uncoded Error.
 */
function readArgument(what, read) {
  try {
    return read();
  } catch (err) {
    if (err?.code === "INVALID_ARGUMENT") throw err;
    const out = refused(`${what} could not be read: ${scrubbed(String(err?.message ?? err).slice(0, 200))}`);
    out.cause = err;
    throw out;
  }
}

async function requestParts(input, given) {
  if (typeof given !== "object" || readArgument("the fetch options", () => Array.isArray(given))) {
    throw refused(`fetch options must be an object, got ${typeof given}`);
  }
  // Read once, each option as fetch reads it: what a getter answers is what is used.
  const init = readArgument("the fetch options", () => {
    const { method, redirect, integrity, headers, signal, body } = given;
    return { method, redirect, integrity, headers, signal, body };
  });
  const isRequest = readArgument("the request", () => typeof Request !== "undefined" && input instanceof Request);
  if (!isRequest && typeof input !== "string" && !(input instanceof URL)) {
    throw refused(`fetch takes a URL string, a URL or a Request, got ${input === null ? "null" : typeof input}`);
  }
  const url = isRequest ? input.url : input instanceof URL ? input.href : input;
  checkUrl(url);
  if (init.method !== undefined && typeof init.method !== "string") {
    throw refused(`method must be a string such as "POST", got ${typeof init.method}`);
  }
  const method = (init.method ?? (isRequest ? input.method : "GET")).toUpperCase();
  // Quoted as given (upper case would hide a token's shape from the scrub).
  if (!METHOD_TOKEN.test(method)) throw refused(`not an HTTP method: ${scrubbed(JSON.stringify(init.method ?? input.method))}`);
  if (FORBIDDEN_METHODS.has(method)) throw refused(`fetch does not send ${method} requests`);
  const redirect = init.redirect ?? (isRequest ? input.redirect : "follow");
  if (!REDIRECT_MODES.has(redirect)) throw refused(`redirect must be "follow", "error" or "manual", got ${scrubbed(JSON.stringify(String(redirect)))}`);
  // Nothing here checks an answer against it: refused rather than ignored, as the caller asked.
  if ((init.integrity ?? (isRequest ? input.integrity : "")) !== "") throw refused("integrity is not checked by the pool fetch: leave it out");
  let headers;
  try {
    // An init's headers replace a Request's, as fetch takes them.
    headers = new Headers(isRequest && init.headers === undefined ? input.headers : init.headers);
  } catch (err) {
    // Node's message quotes the refused value whole: a key with a line break in it was repeated
    // into an error that hosts log. The value is left out, and the rest scrubbed as any text of
    // the runtime's is.
    const why = String(err?.message ?? err).replace(/"[\s\S]*" is an invalid header value/, "a value is not a valid header value");
    throw refused(`headers are not valid: ${scrubbed(why)}`);
  }
  // An init's signal replaces a Request's, null included (no signal), as fetch takes it.
  const theirs = init.signal !== undefined ? init.signal : isRequest ? input.signal : undefined;
  const signal = theirs === undefined || theirs === null ? theirs : ownSignal(theirs);
  // Only a body replaces a Request's: an init's null body keeps it, as fetch takes it (the
  // fetch standard, and Node's; Bun's drops it).
  const initBody = init.body ?? null;
  const source = initBody !== null ? initBody : isRequest ? input.body : null;
  let body;
  if (source !== null && (method === "GET" || method === "HEAD")) {
    throw refused(`a ${method} request cannot have a body`);
  }
  if (initBody === null && isRequest && input.bodyUsed) throw refused("the Request's body was already read");
  if (source !== null) {
    if (typeof source === "string") {
      // Kept as text: the runtime's fetch encodes it itself, and the Rust client's request is
      // encoded straight into its bytes (Buffer.from and a copy cost two passes over it).
      body = source;
      if (!headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
    } else if (ArrayBuffer.isView(source) || isArrayBuffer(source)) {
      // Copied now, as fetch copies them when it is called: a caller that reuses its buffer
      // at once must not change what is sent, nor what a 429's retry sends.
      body = readArgument("the request body", () =>
        Buffer.from(ArrayBuffer.isView(source) ? new Uint8Array(source.buffer, source.byteOffset, source.byteLength) : new Uint8Array(source)),
      );
    } else {
      // Blob, FormData, URLSearchParams, ReadableStream, async iterables: let the runtime
      // serialize it the way fetch would. The bytes are kept so a 429 can be retried on the
      // next account with the identical body.
      let wrapped;
      try {
        wrapped = new Response(source);
      } catch (err) {
        // A stream already locked or read.
        throw refused(`the request body cannot be sent: ${scrubbed(err?.message ?? err)}`);
      }
      const type = wrapped.headers.get("content-type");
      if (type && !headers.has("content-type")) headers.set("content-type", type);
      const serialized = source instanceof Blob || source instanceof FormData || source instanceof URLSearchParams;
      body = wrapped.body ? await readWhole(wrapped.body, signal, !serialized) : Buffer.alloc(0);
    }
  }
  return { url, method, headers: [...headers], body, signal, redirect };
}

// A body the pool holds for a retry is at most this: above the largest upload the API takes
// (500 MB, the Files API), and a stream that never ends stops here rather than at memory's end.
const MAX_REQUEST_BODY = 512 * 1024 * 1024;

/**
 * A request body stream read to its end; the caller's abort stops the read (a stream that never
 * ends must not hold the request past it), and a stream that fails, yields what is not bytes
 * or text, or passes `MAX_REQUEST_BODY`, is the caller's bad input. With `copy`, each chunk is
 * copied as it comes: the caller's source may refill one buffer for every chunk.
 */
async function readWhole(stream, signal, copy) {
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  let onAbort;
  const aborted = signal
    ? new Promise((_, reject) => {
        onAbort = () => reject(abortError(signal));
        if (signal.aborted) onAbort();
        else listenAbort(signal, onAbort);
      })
    : null;
  try {
    for (;;) {
      const { done, value } = await (aborted ? Promise.race([reader.read(), aborted]) : reader.read());
      if (done) break;
      // Text is sent as UTF-8, as Node's and Bun's fetch send it.
      let chunk;
      if (typeof value === "string") chunk = Buffer.from(value);
      else if (ArrayBuffer.isView(value)) {
        chunk = new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
        if (copy) chunk = Buffer.from(chunk);
      } else throw new TypeError(`a chunk of it is ${value === null ? "null" : typeof value}, not bytes`);
      parts.push(chunk);
      size += chunk.byteLength;
      if (size > MAX_REQUEST_BODY) throw new RangeError(`it is over ${MAX_REQUEST_BODY / 1024 / 1024} MB`);
    }
  } catch (err) {
    reader.cancel(err).catch(() => {});
    if (signal?.aborted) throw abortError(signal);
    throw refused(`the request body could not be read: ${scrubbed(err?.message ?? err)}`);
  } finally {
    if (onAbort) signal.removeEventListener?.("abort", onAbort);
  }
  return Buffer.concat(parts, size);
}

// Under Node, the body is a byte stream, as Node's fetch gives it: a caller's BYOB reader
// (`getReader({ mode: "byob" })`) was refused with a TypeError that Node's fetch does not throw.
// Bun's fetch gives no byte stream (its BYOB reader is refused alike), nor does the pool's under
// Bun. A byte stream refuses an empty chunk (an empty body enqueued one, and the answer failed
// with ERR_INVALID_STATE), so none is ever enqueued; and its enqueue transfers the chunk's
// memory, so a chunk is handed over only when that memory is the chunk's alone (each crosses as
// a Buffer of its own, src/binding/mod.rs JsBytes; anything else goes as a copy).
const STREAM_TYPE = typeof Bun === "undefined" ? "bytes" : undefined;

// A plain view of a chunk (they arrive as JavaScript-owned Buffers), which a byte stream may take.
const toChunk = STREAM_TYPE
  ? (chunk) =>
      chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength ? new Uint8Array(chunk.buffer, 0, chunk.byteLength) : new Uint8Array(chunk)
  : (chunk) => new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);

// A body that came whole. Node's Response makes a Uint8Array body a byte stream over its own
// copy: for a small answer, measured in place, 29 µs to build and 18 µs to read, against 12 and
// 10 for a plain stream holding the one chunk. Bun reads a Uint8Array body without any stream
// (1 µs, against 5 through a stream), so it gets the bytes as they are.
// Under Node, handed over at the first read (a byte stream pulls nothing before one), so that a
// signal aborted after the answer came fails the read as Node's own fetch does; a Bun `Response`
// takes the bytes themselves, the cheaper body there.
const wholeBody =
  typeof Bun === "undefined"
    ? (bytes, signal) =>
        new ReadableStream({
          type: STREAM_TYPE,
          pull(controller) {
            if (signal?.aborted) return controller.error(abortError(signal));
            if (bytes.byteLength > 0) controller.enqueue(bytes);
            controller.close();
            // A BYOB read of an empty body resolves as done only once its view is given back
            // (the streams standard): pulled at the read, it waited for ever.
            controller.byobRequest?.respond(0);
          },
        })
    : (bytes) => bytes;

// A body the caller drops unread (or stops reading without cancelling): when its stream is
// collected, its listener leaves the caller's signal. A host's long-lived signal (one per
// session) otherwise kept one listener, and the request's controller, per such answer.
const abandoned = new FinalizationRegistry((done) => done());

function bodyStream(res, signal, done) {
  let finished = false;
  const token = {};
  const finish = () => {
    if (!finished) {
      finished = true;
      abandoned.unregister(token);
      done();
    }
  };
  const stream = new ReadableStream(
    {
      type: STREAM_TYPE,
      async pull(controller) {
        try {
          let chunk;
          // An empty chunk is skipped, not enqueued: a pull that enqueued nothing is not
          // called again for the read waiting on it.
          do chunk = await settle(res.next());
          while (chunk?.byteLength === 0);
          if (chunk === null || chunk === undefined) {
            finish();
            controller.close();
            // A BYOB read waiting when the body ends resolves as done only once its view is
            // given back (the streams standard): without this, it waited forever.
            controller.byobRequest?.respond(0);
          } else {
            controller.enqueue(toChunk(chunk));
          }
        } catch (err) {
          finish();
          const mapped = toPoolError(err);
          controller.error(mapped?.code === "ABORT_ERR" ? abortError(signal) : mapped);
        }
      },
      async cancel() {
        finish();
        await res.cancel();
      },
    },
    // Pull only when the reader asks: backpressure from the reader reaches the socket.
    { highWaterMark: 0 },
  );
  // `done` holds the signal and its listener, never the stream. What is watched is `token`,
  // which the stream's pull holds (through `finish`), not the stream: V8 keeps a watched object
  // through the minor collections that free short-lived ones, so a watched stream kept its Rust
  // body, and its upstream connection, until a full collection (2,300 connections open after
  // 5,000 answers dropped unread with a signal).
  if (signal) abandoned.register(token, done, token);
  return stream;
}

// Cooldowns and last-use bookkeeping are written in the background, never on an answer's path.
// A process that ends (its event loop done, or process.exit) writes them first from the `exit`
// hook the loader installs (lib/native.mjs `settleOnExit`), bounded. No `beforeExit` flush: its
// pending native promise kept the event loop alive for as long as the write waited for the
// pool's lock (60 s behind a stopped process), whatever timer was set beside it.

/**
 * A fetch that serves each request from the pool's accounts, with failover.
 * @param {{ path?: string, provider?: "anthropic", onEvent?: (e: object) => void, transport?: "auto" | "native" | "runtime" }} [options]
 */
export function createPoolFetch(options = {}) {
  return poolFetchWith(options);
}

/**
 * `createPoolFetch`, with what a host's own plugin sets: `holdAtMostMs`, the longest one hold
 * may last for a host that gives up on an answer whose head has not come by then (a longer wait
 * that holding covers is the pool's 429, marked `x-oauth-pool-host-waits`, for the host to sit
 * out its `retry-after`); `onEvents(events)`, which hears a request's events together instead of
 * `onEvent` one by one (a cascade through many accounts is then one notice).
 */
export function poolFetchWith(options = {}, { holdAtMostMs, onEvents } = {}) {
  if (options !== undefined && options !== null && (typeof options !== "object" || readable("createPoolFetch's options", () => Array.isArray(options)))) {
    throw invalidArgument("createPoolFetch takes an options object { path?, provider?, onEvent?, transport? }");
  }
  knownOptions("createPoolFetch's options", options ?? {}, ["path", "provider", "onEvent", "transport"]);
  const { path, provider, onEvent, transport } = readable("createPoolFetch's options", () => {
    const { path, provider, onEvent, transport } = options ?? {};
    return { path, provider, onEvent, transport };
  });
  if (path !== undefined && path !== null && typeof path !== "string") throw invalidArgument("path must be a string");
  if (onEvent !== undefined && onEvent !== null && typeof onEvent !== "function") throw invalidArgument("onEvent must be a function");
  // null is "not given", as for every other option.
  if (transport != null && !TRANSPORTS.has(transport)) throw invalidArgument(`transport must be "auto", "native" or "runtime", got ${shown(transport)}`);
  const carrier = transport ?? "auto";
  const notify = (events) => {
    if (typeof onEvent !== "function") return;
    if (typeof onEvents === "function") {
      try {
        onEvents(events);
      } catch {}
      return;
    }
    for (const event of events) {
      try {
        onEvent(event);
      } catch {}
    }
  };
  if (provider != null && provider !== "anthropic") {
    const err = new Error(`unknown provider ${JSON.stringify(provider)}: only "anthropic" is pooled`);
    err.code = "INVALID_ARGUMENT";
    throw err;
  }
  // Made with the first request (the addon loads then): what the engine tells while a request
  // goes on, such as a hold beginning, reaches `onEvent` at once.
  let listener;
  const listen = () => {
    if (typeof onEvent !== "function") return undefined;
    listener ??= eventListener(notify);
    return listener;
  };
  return async function poolFetch(input, init = {}) {
    const parts = await requestParts(input, init ?? {});
    if (parts.signal?.aborted) throw abortError(parts.signal);
    syncEnv();
    let response;
    try {
      response =
        runtimeCarries(carrier) && isApiUrl(parts.url)
          ? await runtimeFetch(parts, { path, onEvents: typeof onEvent === "function" ? notify : undefined, listener: listen(), holdAtMostMs })
          : await nativeFetch(parts, path, notify, listen(), holdAtMostMs);
    } catch (err) {
      // What the engine refuses of the call (a URL it cannot parse, such as "http://") is a
      // refusal of fetch's arguments as the ones above are.
      throw err?.code === "INVALID_ARGUMENT" && !(err instanceof TypeError) ? refused(err.message) : err;
    }
    // Neither transport follows a redirect; one the caller said it does not take fails as
    // fetch fails it.
    if (parts.redirect === "error" && REDIRECT_STATUS.has(response.status)) {
      response.body?.cancel().catch(() => {});
      throw toPoolError(new Error(`[NETWORK] the answer is a redirect (${response.status}) and the request's redirect is "error"`));
    }
    return response;
  };
}

/** `parts` served with the Rust client carrying the bytes. */
async function nativeFetch(parts, path, notify, listener, holdAtMostMs) {
  const { signal } = parts;
  const controller = new native.FetchController(listener);
  const onAbort = () => controller.abort();
  if (signal) listenAbort(signal, onAbort);
  const detach = () => signal?.removeEventListener?.("abort", onAbort);
  let res;
  try {
    res = await settle(
      controller.send({
        url: parts.url,
        method: parts.method,
        headers: parts.headers,
        body: parts.body,
        path: path ?? undefined,
        holdAtMostMs,
      }),
    );
  } catch (err) {
    detach();
    const mapped = toPoolError(err);
    throw mapped?.code === "ABORT_ERR" ? abortError(signal) : mapped;
  }
  notify(JSON.parse(res.events || "[]"));
  if (res.failure) {
    detach();
    // An abort after a failover (its events travel with the failure) is the signal's reason too.
    const mapped = toPoolError(new Error(res.failure));
    throw mapped?.code === "ABORT_ERR" ? abortError(signal) : mapped;
  }
  const status = res.status;
  const nullBody = NULL_BODY_STATUS.has(status) || parts.method === "HEAD";
  let body = null;
  if (nullBody) {
    detach();
    await res.cancel();
  } else {
    const whole = res.takeBody();
    if (whole) {
      detach();
      body = wholeBody(toChunk(whole), signal);
    } else {
      body = bodyStream(res, signal, detach);
    }
  }
  const response = new Response(body, {
    status: Math.max(status, 200),
    statusText: res.statusText,
    headers: res.headers,
  });
  return described(response, parts.url, res.account ?? null);
}
