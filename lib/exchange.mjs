// Driving the Rust engine from JavaScript when the runtime's own fetch carries the bytes (the
// library's fetch under Bun, OpenCode 2's http hooks). The engine decides everything (which
// account, which credential, what an answer means); this module only asks it, on the calling
// thread when the engine can answer without I/O (`nextSync` / `judgeSync`, microseconds), else
// through the runtime (`next` / `judge`: a refresh, a store read, a hold).
import { native, nativeBinding } from "./native.mjs";
import { settle, toPoolError } from "./errors.mjs";

/**
 * The longest the pool holds a request (OAUTH_POOL_HOLD_MAX_MS) inside an OpenCode host. Both
 * generations give a provider request 5 minutes for its answer's head and then retry it as a
 * timeout: OpenCode 1.18 wraps the provider's fetch with `headerTimeout` (300000 unless the
 * provider's options say otherwise; `ProviderHeaderTimeoutError`, retryable, in the 1.18.33
 * binary), OpenCode 2 its http hooks and send (packages/ai/src/route/transport/http.ts). A
 * longer hold was cut, held again by each retry, and the session failed with the host's
 * timeout however long holding allowed. A longer wait is the host's: the pool answers its 429
 * (`hostWaits`, `x-oauth-pool-host-waits`), and the host sits out its `retry-after`.
 */
export const HOST_HOLD_MS = 60_000;

/** How much of a 400 the engine reads to tell a third-party refusal from a bad request. */
export const PEEK_LIMIT = 256 * 1024;

/**
 * How much of a text body the engine is shown first to find its `model` (clients put it first).
 * Encoding a whole large body to hand it over cost more than the rest of the decision (a
 * 240 KB body: about 30 µs under Bun, which encodes it again to send it).
 */
const BODY_START = 4096;

/**
 * The engine's exchange for one request. `headers`: `[name, value]` pairs or a `Headers` (they
 * cross as one string of `name:value` lines); `model`, when known, else read from `body` (bytes,
 * or a string: its start first, all of it only when the model is not there).
 */
export function openExchange({ path, url, headers, model: named, body, listener }) {
  // A host's model id of another type is no model (napi would throw its own StringExpected).
  const model = typeof named === "string" ? named : undefined;
  let lines = "";
  for (const [name, value] of headers) lines += `${name}:${value}\n`;
  const { NativeExchange } = nativeBinding();
  if (typeof body !== "string") return new NativeExchange(path ?? undefined, url, lines, model, body ?? undefined, undefined, listener ?? undefined);
  const start = body.length > BODY_START ? body.slice(0, BODY_START) : body;
  const whole = start === body;
  const ex = new NativeExchange(path ?? undefined, url, lines, model, undefined, start, listener ?? undefined, whole);
  // Bytes and a short text were shown whole to the constructor; a long text only when the
  // engine asks.
  if (!whole && ex.wantsText) ex.readText(body);
  return ex;
}

/**
 * Shows the engine the request body after an answer of `status` when it asks (a 404 to a
 * message that may refer to a file another account holds: src/engine/files.rs). A body this
 * driver does not hold (a stream) is not shown.
 */
export function showBodyAfter(ex, status, body) {
  if (status === 404 && (typeof body === "string" || ArrayBuffer.isView(body)) && ex.wantsBody(status)) ex.readBody(body);
}

/** A synchronous native call; under Bun a failed one may return its Error instead of throwing. */
function sync(call) {
  let value;
  try {
    value = call();
  } catch (err) {
    throw toPoolError(err);
  }
  if (value instanceof Error) throw toPoolError(value);
  return value;
}

function checkedStep(step) {
  if (step?.kind !== "send" && step?.kind !== "answer") throw new TypeError(`the pool engine gave no next step (${typeof step})`);
  return step;
}

/**
 * The next attempt: `{ kind: "send", account, headers }` or `{ kind: "answer", ... }`. The step
 * itself when the engine can say without I/O (the usual case: the caller need not wait a turn),
 * else a promise of it.
 */
export function nextStep(ex) {
  const text = sync(() => ex.nextSync());
  return text === null ? settle(ex.next()).then(checkedStep) : checkedStep(JSON.parse(text));
}

/**
 * The first `limit` bytes of a body, read from a clone: the answer itself stays unread. With
 * `partial`, a read that breaks off (or is cut for silence) resolves the bytes that came before;
 * `patienceMs` cuts it after that long. `heard()` is told of each chunk as it comes.
 */
export async function peek(response, limit = PEEK_LIMIT, partial = false, patienceMs = 0, heard = undefined) {
  const reader = response.clone().body?.getReader();
  if (!reader) return undefined;
  const parts = [];
  let size = 0;
  // Cut for patience, the read ends with what came (the answer itself is still whole: a clone).
  const timer = patienceMs > 0 ? setTimeout(() => reader.cancel().catch(() => {}), patienceMs) : null;
  try {
    while (size < limit) {
      const { done, value } = await reader.read();
      if (done) break;
      heard?.();
      parts.push(value);
      size += value.byteLength;
    }
  } catch (err) {
    if (!partial) throw err;
  } finally {
    clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
  return Buffer.concat(parts).subarray(0, limit);
}

/**
 * The body's start for a verdict: an answer whose head decides (a 429) is judged on what came
 * once its body breaks off or stays silent for the engine's patience (a failover waiting on the
 * host's own timeout, minutes, is no failover), as the transports do.
 */
function peekForVerdict(response) {
  const p = statusPolicy();
  return p.headDecides.has(response.status) ? peek(response, undefined, true, p.headDecidesPatienceMs) : peek(response, undefined, false, p.peekPatienceMs);
}

let policy = null;
/**
 * The policy table's shape (src/engine/verdict.rs, src/engine/headers.rs), asked once: which
 * statuses need a body, which answer headers the engine reads (the others are not handed over).
 */
function statusPolicy() {
  if (!policy) {
    const p = native.NativeExchange.statusPolicy();
    policy = {
      needsBody: new Set(p.needsBody),
      headDecides: new Set(p.headDecides),
      headDecidesPatienceMs: p.headDecidesPatienceMs,
      peekPatienceMs: p.peekPatienceMs,
      headers: new Set(p.answerHeaders),
      prefixes: p.answerHeaderPrefixes,
    };
  }
  return policy;
}

/**
 * Whether an answer of this status is judged by what came of its body when the body breaks off
 * or keeps silent (a 429: its head decides), and how long it may keep silent (null: not so).
 */
export function headDecidesPatience(status) {
  const p = statusPolicy();
  return p.headDecides.has(status) ? p.headDecidesPatienceMs : null;
}

/** How long in all the start of a body the engine needs is read before it is judged on what came. */
export function peekPatience() {
  return statusPolicy().peekPatienceMs;
}

/** Whether the engine reads this answer header (names from a `Headers` are lower case). */
function engineReads(name, { headers, prefixes }) {
  if (headers.has(name)) return true;
  for (const prefix of prefixes) if (name.startsWith(prefix)) return true;
  return false;
}

/** The answer's headers the engine reads, as the `name:value` lines `judge` takes. */
function headerLines(response, p) {
  let lines = "";
  for (const [name, value] of response.headers) if (engineReads(name, p)) lines += `${name}:${value}\n`;
  return lines;
}

function checkedVerdict(verdict) {
  if (verdict !== "retry" && verdict !== "deliver" && verdict !== "deliver-tap") throw new TypeError(`the pool engine gave no verdict (${typeof verdict})`);
  return verdict;
}

/** The verdict on the calling thread when it needs no I/O, else through the runtime. */
function judged(ex, status, headers, body) {
  const verdict = sync(() => ex.judgeSync(status, headers, body));
  return verdict === null ? settle(ex.judge(status, headers, body)).then(checkedVerdict) : checkedVerdict(verdict);
}

/**
 * What the engine makes of an answer: "retry", "deliver", or "deliver-tap" (deliver, and show
 * the body to `ex.observe` as it passes: it carries usage). `peekBody(response)` reads the start
 * of a body the engine needs to see (a 400); by default from a clone, and for an answer whose head
 * decides (a 429) whatever came before its body broke off or the caller left: the account still
 * rests. The verdict itself when the engine can tell at once (the usual case: the caller need
 * not wait a turn), else a promise of it.
 */
export function judgeAnswer(ex, response, peekBody = peekForVerdict, lines = undefined) {
  const p = statusPolicy();
  if (!p.needsBody.has(response.status)) return judged(ex, response.status, lines ?? headerLines(response, p), undefined);
  return peekBody(response).then((body) => judged(ex, response.status, lines ?? headerLines(response, p), body));
}

/**
 * Whether the engine reads this answer header (a lower-case name), for a driver that makes its
 * own pass over the answer's headers and hands `judgeAnswer` the lines.
 */
export const engineReadsHeader = (name) => engineReads(name, statusPolicy());

/** A chunk as the addon takes it (a Buffer view, no copy). */
export const asBuffer = (chunk) => Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);

/**
 * Whether the answer is judged on its event stream's opening too (src/engine/verdict.rs
 * `reads_opening`): a 2xx event stream, where Anthropic says a rate limit met after its head.
 */
export function readsOpening(status, type) {
  return status >= 200 && status < 300 && typeof type === "string" && type.trimStart().toLowerCase().startsWith("text/event-stream");
}

/**
 * Reads an event stream's opening from `reader` (the answer's own: no clone, no tee), showing
 * each chunk to the engine (`feedOpening`, which tells when the opening is complete and keeps
 * what it said for `judgeAnswer`). Resolves `{ reader, parts, ended }`: the chunks read, handed
 * over first and as they came, and whether the stream ended within them. Each read is bounded
 * by the silence limit, as any read of a body is (no timer of its own: a slow model's first
 * content is not cut): `onSilent()` stops the read, and the opening fails with NETWORK.
 */
export async function readOpening(ex, reader, timeoutMs, onSilent) {
  const parts = [];
  let silent = false;
  const timer = setTimeout(() => {
    silent = true;
    onSilent();
  }, timeoutMs);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (silent) break;
      if (done) return { reader, parts, ended: true };
      parts.push(value);
      if (sync(() => ex.feedOpening(asBuffer(value)))) return { reader, parts, ended: false };
      timer.refresh();
    }
  } catch (err) {
    if (!silent) throw err;
  } finally {
    clearTimeout(timer);
  }
  throw toPoolError(new Error(`[NETWORK] network error talking to the API: no data for ${timeoutMs} ms (in the event stream's opening)`));
}

/** How much of a streamed answer the usage tap is fed at once (bounds what is held for it). */
const TAP_BATCH = 64 * 1024;

/**
 * Feeds `ex`'s usage tap with a streamed answer. The tap reports when the answer ends, so it is
 * fed in batches: an event reaches the caller without waiting on a call into the addon. Chunks
 * are copied, since the caller owns (and may transfer) what it is handed before a batch is fed.
 * `finish()` feeds the rest and reports; call it once, however the answer ends.
 */
export function usageFeed(ex) {
  let parts = [];
  let size = 0;
  const take = () => {
    if (!size) return undefined;
    const batch = parts.length === 1 ? parts[0] : Buffer.concat(parts, size);
    parts = [];
    size = 0;
    return batch;
  };
  return {
    add(chunk) {
      const copy = Buffer.from(chunk);
      parts.push(copy);
      size += copy.length;
      if (size >= TAP_BATCH) {
        try {
          ex.observe(take());
        } catch {}
      }
    },
    finish() {
      ex.finishUsage(take());
    },
  };
}

/** The pool's own answer (every account cooling: a 429 with the real `retry-after`). */
export function poolAnswer(step) {
  return new Response(step.body, { status: step.status, statusText: step.statusText, headers: step.headers });
}

/**
 * What the engine tells at once, while a request goes on (a hold beginning: it may last hours,
 * and the events that travel with the answer arrive only when it ends): one per pool fetch or
 * setup, handed to each request it drives. `notify(events)` hears each such event alone; the
 * caller keeps `notify` alive for as long as it uses the listener (both in one scope).
 */
export function eventListener(notify) {
  const { EventListener } = nativeBinding();
  // The native side holds the callback as a GC root (a thread-safe function) for as long as the
  // listener lives, and `notify`'s scope holds the listener: a callback holding `notify` kept
  // every pool fetch or setup made with one, and all it held, for the life of the process.
  const weak = new WeakRef(notify);
  return new EventListener((json) => {
    // Called from the addon's queue: whatever fails here must not become an uncaught error.
    try {
      weak.deref()?.([JSON.parse(json)]);
    } catch {}
  });
}

/** The events the engine collected (failovers, cooldowns, refusals); never throws. */
export function takeEvents(ex) {
  try {
    return JSON.parse(ex.takeEvents() || "[]");
  } catch {
    return [];
  }
}
