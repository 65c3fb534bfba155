// The pool fetch with the runtime's own fetch carrying the bytes (the "runtime" transport, the
// default under Bun). Measured in bench/: under Bun, every crossing into the addon's runtime and
// back costs more than Bun's whole fetch of a small request, and Bun's fetch streams faster than
// a body pulled from Rust chunk by chunk. So the Rust engine decides on the calling thread
// (lib/exchange.mjs) and Bun moves the bytes; under Node the Rust client wins and stays.
//
// What the Rust client guarantees, this transport keeps: no redirect is followed (the 3xx goes
// to the caller), the same response timeout for the answer head and for a body gone silent,
// the same errors (`NETWORK` as a TypeError, aborts as the signal's reason), the same head (no
// framing headers, no content-encoding on a body the runtime decoded), the request body
// kept for a retry on the next account, and nothing sent before the engine chose the account.
// Proxies are the Rust client's business (src/http.rs owns NO_PROXY, loopback and credential
// rules): with a proxy variable set, `runtimeCarries` says no and the native transport is
// used. Certificates are the runtime's: Bun trusts its roots plus NODE_EXTRA_CA_CERTS as set
// when it started (the Rust client also reads SSL_CERT_FILE; OpenCode itself runs on Bun's).
import { createRequire } from "node:module";
import { envGeneration, nativeBinding, proxyConfigured } from "./native.mjs";
import { networkCause, scrubbed, toPoolError } from "./errors.mjs";
import { BodyScrubber, echoForms, handedOver, presented, readHead, reasonPhrase, runtimeDecoded, unreadFraming } from "./answer-head.mjs";
import { abortError, listenAbort } from "./signal.mjs";
import {
  asBuffer,
  headDecidesPatience,
  peekPatience,
  judgeAnswer,
  nextStep,
  openExchange,
  showBodyAfter,
  peek,
  poolAnswer,
  readOpening,
  readsOpening,
  takeEvents,
  usageFeed,
} from "./exchange.mjs";

const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);
// A body announced this small and not an event stream is read whole before the Response is
// handed over (what a caller of a JSON answer does anyway): no JavaScript stream per chunk.
// Larger bodies stream: read whole, 1 MB answers cost Bun more than the stream wrapper does (64
// concurrent 1 MB answers: 0.66-0.80x Bun's own fetch read whole, 0.88-1.07x streamed).
const WHOLE_BODY_LIMIT = 64 * 1024;

// Read from the environment once per generation of it, not once per request.
let settings = { generation: -1, timeoutMs: 0, apiUrls: new Map() };
function current() {
  if (settings.generation !== envGeneration()) settings = { generation: envGeneration(), timeoutMs: nativeBinding().responseTimeoutMs(), apiUrls: new Map() };
  return settings;
}

/** Whether `url` is on the pool's API origin (asked of the addon once per URL and environment). */
export function isApiUrl(url) {
  const { apiUrls } = current();
  let known = apiUrls.get(url);
  if (known === undefined) {
    known = nativeBinding().isApiOrigin(url);
    if (apiUrls.size >= 64) apiUrls.clear();
    apiUrls.set(url, known);
  }
  return known;
}

/**
 * Whether the runtime's fetch carries this process's requests ("auto": only under Bun, and not
 * with a proxy variable set as the environment was last handed over: call after `syncEnv`).
 */
export function runtimeCarries(transport = "auto") {
  if (transport === "native") return false;
  if (transport === "runtime") return true;
  return typeof process?.versions?.bun === "string" && !proxyConfigured();
}

function networkError(detail, from = undefined) {
  const err = toPoolError(new Error(`[NETWORK] network error talking to the API: ${detail}`));
  // The runtime's own code for what happened (Node's ECONNREFUSED on the cause, Bun's
  // ConnectionRefused on the error), which callers read to tell a failure worth retrying.
  const code = systemCode(from);
  if (code) err.cause = networkCause(err.cause?.message ?? detail, code);
  return err;
}

/** The first string `code` along `err`'s cause chain. */
function systemCode(err) {
  const seen = new Set();
  for (let e = err; e && typeof e === "object" && !seen.has(e); e = e.cause) {
    seen.add(e);
    if (typeof e.code === "string" && e.code !== "" && e.code !== "NETWORK") return e.code;
  }
  return undefined;
}

/**
 * What the runtime's fetch said went wrong: Node's puts it in `cause` ("fetch failed"); Bun's
 * hint to pass `verbose` to fetch is for its own callers, not ours.
 */
function failure(err) {
  const message = scrubbed(String(err?.message ?? err).replace(/\s*For more information, pass `verbose: true`.*$/s, ""));
  const cause = err?.cause?.message && scrubbed(err.cause.message);
  if (!cause || message.includes(cause)) return message;
  return message === "fetch failed" ? cause : `${message} (${cause})`;
}

// Under Node, the body is a byte stream, as Node's fetch gives it (a caller's BYOB reader was
// refused); Bun's fetch gives none. A byte stream refuses an empty chunk (none is enqueued), and
// its enqueue transfers the chunk's memory: a chunk that is a view into a larger buffer goes as
// a copy (Node's fetch hands over chunks of their own, so that is the rare case), so nothing else
// in that buffer is taken from under its owner. The usage tap copies what it keeps first.
const STREAM_TYPE = typeof Bun === "undefined" ? "bytes" : undefined;
const owned = STREAM_TYPE
  ? (chunk) => (chunk.byteOffset === 0 && chunk.byteLength === chunk.buffer.byteLength ? chunk : new Uint8Array(chunk))
  : (chunk) => chunk;

// A delivered body the caller drops unread: its watchdog and upstream stream go with it.
const abandoned = new FinalizationRegistry((stop) => stop());

// Bun's fetch bounds neither the TCP connect nor the TLS handshake (undici's and the Rust
// client's bound both at 10 s): a server that accepted and never finished the handshake, or a
// port that never accepts, held the request for the whole response timeout (5 minutes) with
// nothing to tell it from a model still thinking. fetch does not say when it is connected, so
// when the head is this late the origin is asked directly: a connection and handshake of our
// own, within a few more seconds. One that stalls, or finds no way to the origin (no route, no
// name: the network went), fails the request (the origin is not reachable); one that completes
// leaves the request waiting for its answer, and so does one the origin itself refuses or resets
// at once: fetch would have met that refusal on its own connect and failed then, so the request
// is on a connection made before the origin began refusing new ones (a connection limit, a
// listener gone), and its answer may still come.
// node:net and node:tls are loaded for the probe only: under Bun, loading them at import paged in
// about 1 MB of Bun's own code and heap in every process, for a probe few requests ever make.
const require = createRequire(import.meta.url);
const CONNECT_PATIENCE_MS = 10_000;
const CONNECT_PROBE_MS = 5_000;
const needsConnectBound = typeof process?.versions?.bun === "string";

/** Answers only the origin gives: it is there, and refuses or drops new connections. */
const REFUSED_BY_ORIGIN = new Set(["ECONNREFUSED", "ECONNRESET", "EPIPE"]);

/**
 * Whether a new connection to `url`'s origin fails to form (TCP, and the TLS handshake for
 * https, unfinished within `ms`, or no route or name to it): what went wrong when it does
 * (`waited`: the request's whole wait), else null, the origin's own refusal included (a TLS
 * alert is one too).
 * It sends nothing and checks no certificate (only reachability is asked; fetch's own
 * connection checks it).
 */
function unreachable(url, ms, waited) {
  return new Promise((resolve) => {
    let target;
    try {
      target = new URL(url);
    } catch {
      return resolve(null);
    }
    const secure = target.protocol === "https:";
    const host = target.hostname.replace(/^\[(.*)\]$/, "$1");
    const port = Number(target.port) || (secure ? 443 : 80);
    let socket;
    const done = (result) => {
      clearTimeout(timer);
      socket?.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done(`could not connect (no connection and TLS handshake within ${Math.round(waited / 1000)} s)`), ms);
    try {
      const { connect: connectTcp, isIP } = require("node:net");
      const { connect: connectTls } = require("node:tls");
      socket = secure
        ? connectTls({ host, port, servername: isIP(host) ? undefined : host, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] })
        : connectTcp({ host, port });
    } catch (err) {
      return done(`could not connect (${scrubbed(String(err?.message ?? err))})`);
    }
    // A request already answered does not wait on its probe, nor does the process's exit.
    timer.unref?.();
    socket.unref?.();
    socket.once(secure ? "secureConnect" : "connect", () => done(null));
    socket.once("error", (err) => {
      const code = String(err?.code ?? "");
      const fromOrigin = REFUSED_BY_ORIGIN.has(code) || /SSL|TLS/i.test(code);
      done(fromOrigin ? null : `could not connect (${scrubbed(String(err?.message ?? err))})`);
    });
  });
}

/**
 * One attempt on the wire. The controller outlives the head: it is what a caller's abort or a
 * silent body stops.
 */
async function send(parts, headers, signal, timeoutMs) {
  // An abort that came while the engine was choosing (an awaited `next`: a store read, a
  // refresh) has fired its event already: a listener added now would never hear it, and the
  // request would go out and hold its connection until the answer, or the response timeout.
  if (signal?.aborted) throw abortError(signal);
  const controller = new AbortController();
  const onAbort = () => controller.abort(abortError(signal));
  if (signal) listenAbort(signal, onAbort);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  let unreached = null;
  let settled = false;
  // Not through a proxy (a transport forced to the runtime's with a proxy variable set): the
  // probe goes straight to the origin, which a network reached only by its proxy refuses.
  const patience =
    needsConnectBound && timeoutMs > CONNECT_PATIENCE_MS && !proxyConfigured()
      ? setTimeout(() => {
          unreachable(parts.url, CONNECT_PROBE_MS, CONNECT_PATIENCE_MS + CONNECT_PROBE_MS).then((failed) => {
            if (!failed || settled) return;
            unreached = failed;
            controller.abort();
          });
        }, CONNECT_PATIENCE_MS)
      : null;
  const release = () => signal?.removeEventListener?.("abort", onAbort);
  try {
    // `timeout: false`: Bun's fetch has an idle timer of its own, 5 minutes unless told, which
    // cut a request whose head or body kept silent that long whatever
    // OAUTH_POOL_RESPONSE_TIMEOUT_MS allowed (OpenCode passes `timeout: false` to the pool's
    // fetch for the same reason). The pool's own timers bound the wait; other runtimes ignore it.
    const response = await fetch(parts.url, { method: parts.method, headers, body: parts.body, redirect: "manual", signal: controller.signal, timeout: false });
    return { response, controller, release };
  } catch (err) {
    release();
    if (signal?.aborted) throw abortError(signal);
    if (timedOut) throw networkError(`no response headers within ${timeoutMs} ms`);
    if (unreached) throw networkError(unreached);
    throw networkError(failure(err), err);
  } finally {
    settled = true;
    clearTimeout(timer);
    clearTimeout(patience);
  }
}

const SILENCE_LOOKS = 4;

/**
 * The delivered body, chunk by chunk as the runtime reads it. A body silent for the response
 * timeout is cut with `NETWORK` (checked by a timer on the read count, not per chunk); with
 * `tap`, the engine's usage tap is fed the body as it passes (`usageFeed`). An event stream's
 * `opening` (`readOpening`: its reader and the chunks it read) is handed over first.
 */
function carry(response, { ex, tap, controller, signal, timeoutMs, done, opening, scrubber }) {
  const reader = opening?.reader ?? response.body.getReader();
  let ahead = opening?.parts ?? null;
  const usage = tap ? usageFeed(ex) : null;
  let reads = 0;
  let seen = -1;
  let quiet = 0;
  let waiting = false;
  let stalled = false;
  let finished = false;
  // Four looks per limit: the body is cut between the limit and 1.25 times it after its last
  // chunk (one look per limit cut a body that went quiet just after a look near twice it).
  const watchdog = setInterval(
    () => {
      quiet = waiting && reads === seen ? quiet + 1 : 0;
      seen = reads;
      if (quiet >= SILENCE_LOOKS) {
        stalled = true;
        controller.abort();
      }
    },
    Math.max(1, timeoutMs / SILENCE_LOOKS),
  );
  watchdog.unref?.();
  const finish = () => {
    if (finished) return;
    finished = true;
    clearInterval(watchdog);
    signal?.removeEventListener?.("abort", onAbort);
    usage?.finish();
    done();
  };
  // A caller that aborts between reads and drops the body never pulls again: what it saw was
  // counted only when the stream was collected, often never (found by a review). A read under
  // way fails with the abort and finishes there.
  const onAbort = () => {
    if (!waiting) finish();
  };
  signal?.addEventListener?.("abort", onAbort, { once: true });
  const stream = new ReadableStream(
    {
      type: STREAM_TYPE,
      async pull(out) {
        if (ahead) {
          const parts = ahead;
          ahead = null;
          let given = false;
          for (const chunk of parts) {
            usage?.add(chunk);
            const piece = scrubber ? scrubber.pass(chunk) : chunk;
            if (piece.byteLength === 0) continue;
            out.enqueue(owned(piece));
            given = true;
          }
          if (given) return;
        }
        // Until a chunk with bytes in it, or the end: a pull that enqueued nothing is not called
        // again for the read waiting on it.
        for (;;) {
          waiting = true;
          let next;
          try {
            next = await reader.read();
          } catch (err) {
            finish();
            if (signal?.aborted) out.error(abortError(signal));
            else out.error(stalled ? networkError(`no data for ${timeoutMs} ms`) : networkError(failure(err), err));
            return;
          } finally {
            waiting = false;
          }
          reads++;
          if (next.done) {
            finish();
            const rest = scrubber?.finish();
            if (rest) out.enqueue(rest);
            out.close();
            // A BYOB read waiting when the body ends resolves as done only once its view is given
            // back (the streams standard).
            out.byobRequest?.respond(0);
            return;
          }
          usage?.add(next.value);
          const piece = scrubber ? scrubber.pass(next.value) : next.value;
          if (piece.byteLength === 0) continue;
          out.enqueue(owned(piece));
          return;
        }
      },
      cancel(reason) {
        finish();
        return reader.cancel(reason);
      },
    },
    { highWaterMark: 0 },
  );
  abandoned.register(stream, () => {
    if (finished) return;
    finish();
    reader.cancel().catch(() => {});
  });
  return stream;
}

/**
 * `read(heard)` (a read of the answer's body, or of a clone of it, calling `heard()` as each
 * chunk comes), cut with NETWORK ("no data for ...") when no chunk has come for the silence
 * limit: the timer, restarted by each chunk, aborts the attempt, which fails the read. (A race
 * against a second promise cost Bun about 6 µs a request.) A read that fails otherwise (the
 * connection reset mid-body) is NETWORK too, as a stream's is; a caller's abort stays the
 * caller's reason. One timer for the whole read cut a small answer still arriving, piece by
 * piece, once the limit had passed since its head (the Rust client's limit is between chunks).
 */
async function withinSilence(read, timeoutMs, controller) {
  let silent = false;
  const timer = setTimeout(() => {
    silent = true;
    controller.abort();
  }, timeoutMs);
  try {
    return await read(() => timer.refresh());
  } catch (err) {
    if (silent) throw networkError(`no data for ${timeoutMs} ms`);
    if (controller.signal.aborted || err?.code === "NETWORK") throw err;
    throw networkError(failure(err), err);
  } finally {
    clearTimeout(timer);
  }
}

/** The whole body, `heard()` told of each chunk as it comes. */
async function readBody(body, heard, limit) {
  const reader = body.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    heard();
    parts.push(value);
    size += value.byteLength;
    // Read whole because its length said small: more than that is no answer of that length.
    if (size > limit) {
      reader.cancel().catch(() => {});
      throw networkError(`the answer is longer than its content-length (${limit} bytes)`);
    }
  }
  return parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
}

/** `url` as a fetch Response gives it: parsed (normalized) and without its fragment. */
function answeredUrl(url) {
  try {
    const parsed = new URL(url);
    parsed.hash = "";
    return parsed.href;
  } catch {
    return url;
  }
}

// A Response made here has no URL of its own, so its clone had none either ("" and no
// poolAccount): a clone says what the original says, as a clone of fetch's answer does.
function keptClone() {
  return described(Response.prototype.clone.call(this), this.url, this.poolAccount);
}

// Bun's Response made over a stream gives its blob no type (the blob of its fetch's answer has
// the answer's): typed from the header here, as fetch types it.
async function typedBlob() {
  const blob = await Response.prototype.blob.call(this);
  const type = blob.type ? null : this.headers.get("content-type");
  return type ? new Blob([blob], { type }) : blob;
}

/**
 * What a fetch Response says about itself (`url`, parsed when first read, what its clones say,
 * its `type` as the runtime's fetch gives it, and under Bun its blob's type), plus the account
 * that served it.
 */
export function described(response, url, account) {
  let shown;
  const own = {
    url: { get: () => (shown ??= answeredUrl(url)), configurable: true },
    poolAccount: { value: account, configurable: true },
    clone: { value: keptClone, configurable: true, writable: true },
  };
  if (typeof Bun !== "undefined") own.blob = { value: typedBlob, configurable: true, writable: true };
  // Node's fetch answers are "basic" (a Response made here is "default"); Bun's say "default".
  else own.type = { value: "basic", configurable: true };
  return Object.defineProperties(response, own);
}

/**
 * Whether the body is announced small enough to read whole: a `content-length` within the
 * limit, of the bytes as they will be read (no encoding the runtime decodes: 60 KB of gzip can
 * be a gigabyte), and not an event stream. Anything else streams, chunk by chunk, each chunk
 * under the silence limit (a missing length once read as 0 and took a chunked body whole).
 */
function isWhole({ length, coding, type, framing }) {
  // With a transfer-encoding the length says nothing of the body (RFC 9112 6.3: the encoding
  // wins): an endless chunked answer saying `content-length: 10` was read whole into memory.
  if (framing !== null) return false;
  if (length === null || !/^\s*\d+\s*$/.test(length) || Number(length) > WHOLE_BODY_LIMIT) return false;
  if (coding !== null && coding.trim().toLowerCase() !== "identity") return false;
  return !(type ?? "").trimStart().toLowerCase().startsWith("text/event-stream");
}

/**
 * Serves `parts` (lib/fetch.mjs's plain request) from the pool, the environment already handed
 * to the addon. Resolves the Response the caller gets, with `poolAccount`; `onEvents(events)`
 * hears failovers and account changes when the request ends, `listener` (`eventListener`) what
 * cannot wait until then.
 */
export async function runtimeFetch(parts, { path, onEvents, listener, holdAtMostMs }) {
  const { signal } = parts;
  const ex = openExchange({ path, url: parts.url, headers: parts.headers, body: parts.body, listener });
  if (holdAtMostMs !== undefined) ex.holdAtMost(holdAtMostMs);
  const onAbort = () => ex.abort();
  if (signal) listenAbort(signal, onAbort);
  const { timeoutMs } = current();
  let delivered = false;
  // The forms of every credential the request was sent with, over its attempts: an answer after
  // a failover that echoed the first account's key re-encoded in a header kept it.
  let forms = [];
  try {
    for (;;) {
      if (signal?.aborted) throw abortError(signal);
      let step;
      try {
        step = nextStep(ex);
        if (step instanceof Promise) step = await step;
      } catch (err) {
        throw err?.code === "ABORT_ERR" ? abortError(signal) : err;
      }
      if (step.kind === "answer") return described(poolAnswer(step), parts.url, null);
      const { response, controller, release } = await send(parts, step.headers, signal, timeoutMs);
      if (!(response.status >= 200 && response.status <= 599)) {
        // A Response cannot even be made with it (RangeError), and a 101 is no answer.
        release();
        controller.abort();
        throw networkError(`the answer's status ${response.status} is not a final HTTP status`);
      }
      const these = echoForms(presented(step.headers));
      forms = forms.length === 0 || forms === these ? these : [...new Set([...forms, ...these])];
      const head = readHead(response, forms);
      const unread = head.badName
        ? "the answer's head has a header name that is not an HTTP token"
        : head.framing === null
          ? null
          : unreadFraming(head.framing);
      if (unread !== null) {
        release();
        controller.abort();
        throw networkError(unread);
      }
      // A 2xx event stream is judged on its opening too: a rate limit said there, before any
      // content, moves the request on as a 429 does (the engine reads it: `readOpening`).
      let opening = null;
      if (response.body && parts.method !== "HEAD" && readsOpening(response.status, head.type)) {
        const reader = response.body.getReader();
        try {
          opening = await readOpening(ex, reader, timeoutMs, () => controller.abort());
        } catch (err) {
          release();
          reader.cancel().catch(() => {});
          if (signal?.aborted) throw abortError(signal);
          throw err?.code === "NETWORK" ? err : networkError(failure(err), err);
        }
      }
      showBodyAfter(ex, response.status, parts.body);
      let verdict;
      // How much of the body the verdict's read saw (null: none was read).
      let peeked = null;
      try {
        // A 429 says what it is in its head (its body only tells a spend limit): cut or gone
        // silent (for a few seconds, not the response timeout), it is judged by what came, so
        // the account still rests and the request moves on (a NETWORK error here lost the
        // failover). A 400's cut body fails the request.
        verdict = judgeAnswer(
          ex,
          response,
          (r) => {
            const patience = headDecidesPatience(r.status);
            // A 429's body is waited for that long in all: a byte now and then does not restart
            // the wait (one trickling a byte a second held the failover as long as it went on).
            return withinSilence(
              // A 400's in all within `peekPatience()`, then delivered with the rest to follow.
              (heard) =>
                peek(r, undefined, patience !== null, patience === null ? peekPatience() : 0, patience === null ? heard : () => {}).then((bytes) => {
                  peeked = bytes?.byteLength ?? 0;
                  return bytes;
                }),
              patience === null ? timeoutMs : Math.min(timeoutMs, patience),
              controller,
            );
          },
          head.lines,
        );
        if (verdict instanceof Promise) verdict = await verdict;
      } catch (err) {
        release();
        // The caller's abort whatever the read failed with: a falsy reason (`abort(null)`) left
        // Node's fetch failing the read with an AbortError of its own.
        if (signal?.aborted) throw abortError(signal);
        throw err?.code === "ABORT_ERR" ? abortError(signal) : err;
      }
      if (verdict === "retry") {
        release();
        await (opening ? opening.reader.cancel() : response.body?.cancel())?.catch(() => {});
        continue;
      }
      delivered = true;
      const tap = verdict === "deliver-tap";
      const { status } = response;
      const statusText = reasonPhrase(response.statusText, forms);
      if (NULL_BODY_STATUS.has(response.status) || parts.method === "HEAD" || !response.body) {
        release();
        if (tap) ex.finishUsage();
        // Nothing was decoded: a HEAD's content-encoding still says what a GET would get, and
        // its length how long that body is (there is none to re-frame), as fetch gives it.
        const length = parts.method === "HEAD" ? head.length : null;
        return described(handedOver(null, status, statusText, head, false, length), parts.url, step.account ?? null);
      }
      const decoded = head.coding !== null && runtimeDecoded(head.coding);
      // The credential taken back out of the body, as out of its head, whatever its
      // `content-encoding` says: a plain body labelled with a coding the runtime does not undo
      // (`gzip, gzip`, `compress` under Bun) reached the caller with the token in it, and the
      // token's forms are not found in bytes a compression made.
      const scrubber = forms.length ? new BodyScrubber(forms) : null;
      if (opening?.ended) {
        release();
        const bytes = Buffer.concat(opening.parts);
        if (tap) ex.finishUsage(bytes);
        return described(handedOver(scrubber ? scrubber.whole(bytes) : bytes, status, statusText, head, decoded), parts.url, step.account ?? null);
      }
      // A body the verdict's read saw only part of within its patience streams: read whole, a
      // 400 trickling a byte a second held the caller until its last byte (the native
      // transport delivers it as the patience ends).
      if (isWhole(head) && (peeked === null || peeked >= Number(head.length))) {
        let bytes;
        try {
          bytes = await withinSilence((heard) => readBody(response.body, heard, Number(head.length)), timeoutMs, controller);
        } catch (err) {
          throw signal?.aborted ? abortError(signal) : err;
        } finally {
          release();
        }
        if (tap) ex.finishUsage(asBuffer(bytes));
        return described(handedOver(scrubber ? scrubber.whole(asBuffer(bytes)) : bytes, status, statusText, head, decoded), parts.url, step.account ?? null);
      }
      const body = carry(response, { ex, tap, controller, signal, timeoutMs, done: release, opening, scrubber });
      return described(handedOver(body, status, statusText, head, decoded), parts.url, step.account ?? null);
    }
  } finally {
    signal?.removeEventListener?.("abort", onAbort);
    if (onEvents) {
      const events = takeEvents(ex);
      if (events.length) onEvents(events);
    }
    if (!delivered) {
      ex.finishUsage();
      // Ended unanswered (a failed send, an abort): the requests held behind it go on now.
      ex.abort();
    }
  }
}
