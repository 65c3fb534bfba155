// OpenCode 2 sends `anthropic-pool` requests itself (the native Anthropic route); these session
// hooks make each one go through the pool. The engine (Rust, the same one behind the library's
// fetch) decides; this file only moves the request and the answer:
//   http.request:  the engine picks the account and gives the headers to send (its credential).
//   http.response: the engine judges the answer; a 429 (or a 2xx event stream whose opening says
//                  rate_limit_error before any content) cools the account and the same request is
//                  sent again on the next account (the runtime's fetch), a 401 is refreshed or
//                  adopted and retried once; when every account cools, the answer is the pool's
//                  own 429 with the real `retry-after`.
//   retry:         the host's backoff must not stack on the pool's: a pool 429 is retried after
//                  exactly its `retry-after` (or not at all past the host's 15-minute cap, unless
//                  OAUTH_POOL_HOLD_MAX_MS covers the wait: the host then waits it out).
// Wiring read in anomalyco/opencode packages/core/src/session/model-request.ts (http middleware)
// and session/runner/retry.ts. A hook that throws is a defect in 2.x (no retry, no message), so
// every hook here catches everything and leaves the host's request or answer as it was.
import { realpathSync } from "node:fs";
import { nativeBinding, syncEnv } from "../native.mjs";
import {
  HOST_HOLD_MS,
  eventListener,
  judgeAnswer,
  nextStep,
  openExchange,
  poolAnswer,
  readOpening,
  readsOpening,
  takeEvents,
  usageFeed,
} from "../exchange.mjs";
import { scrubbed, toPoolError } from "../errors.mjs";
import { printable } from "../printable.mjs";
import { echoForms, presented, withoutEcho } from "../answer-head.mjs";

/** The host caps one retry delay at 15 minutes (retry.ts); past that, say so instead of waiting. */
const HOST_RETRY_CAP_MS = 15 * 60_000;
/**
 * The pool's own 429s remembered for the host's next `retry` of their session, at most this many.
 * A session whose host never asks (it gave up after its tenth retry, or was aborted first) kept
 * its entry for the life of the process; an entry is also dropped once its retry time is a
 * minute past (the host would retry at once anyway).
 */
export const POOL_ANSWERS_KEPT = 1000;
const POOL_ANSWER_GRACE_MS = 60_000;
/**
 * sessionID -> { retryAfterMs, at, hostWaits } of the pool's last own 429, shared like `placed` below: the
 * answer is given by the setup that placed the request, the `retry` that follows is heard by
 * whichever setup is registered then. Each setup's own map lost it across a config reload,
 * and the host then waited its capped 15 minutes where the pool had said not to retry.
 */
const POOL_ANSWERS = Symbol.for("opencode-oauth-pool.opencode2.poolAnswers");
globalThis[POOL_ANSWERS] ??= new Map();
const poolAnswers = globalThis[POOL_ANSWERS];

/**
 * The delivered answer, its body passed through unchanged while the engine's usage tap looks at
 * it (tokens per account and model).
 */
function tapUsage(response, ex) {
  if (!response.body) {
    ex.finishUsage();
    return response;
  }
  const usage = usageFeed(ex);
  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    usage.finish();
  };
  const body = response.body.pipeThrough(
    new TransformStream({
      transform(chunk, controller) {
        usage.add(chunk);
        controller.enqueue(chunk);
      },
      flush: finish,
      // A reader that stops early still gets what was seen counted (where the runtime supports
      // a transformer's cancel).
      cancel: finish,
    }),
  );
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/**
 * A 2xx event stream's opening, read from the answer's own body before it is judged (the engine
 * keeps what it said: `readOpening`); null for any other answer. A read that fails (the host
 * gave up, the stream broke or kept silent for the response timeout) is kept as the failure
 * the replayed body ends with, as the host's own read would have.
 */
async function openingOf(ex, response) {
  if (!response.body || !readsOpening(response.status, response.headers.get("content-type"))) return null;
  const reader = response.body.getReader();
  try {
    return await readOpening(ex, reader, nativeBinding().responseTimeoutMs(), () => reader.cancel().catch(() => {}));
  } catch (failure) {
    reader.cancel().catch(() => {});
    return { reader, parts: [], ended: false, failure };
  }
}

/** The answer whose opening was read, its body whole again: the opening, then the rest. */
function replayed(response, { reader, parts, failure }) {
  let ahead = parts;
  const body = new ReadableStream(
    {
      async pull(out) {
        if (ahead) {
          const parts = ahead;
          ahead = null;
          // A pull that enqueues nothing is not called again: an opening that failed before a
          // chunk came must fail now, or the host's read waits for ever.
          if (parts.length) {
            for (const chunk of parts) out.enqueue(chunk);
            return;
          }
        }
        if (failure) return out.error(failure);
        const next = await reader.read();
        if (next.done) out.close();
        else out.enqueue(next.value);
      },
      cancel: (reason) => reader.cancel(reason),
    },
    { highWaterMark: 0 },
  );
  return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
}

/** An answer dropped for another: its body let go (the opening's reader holds it, if read). */
const dropped = (response, opening) => (opening ? opening.reader.cancel() : response.body?.cancel())?.catch(() => {});

// A request the host sent that never got an answer (the send failed: a reset, a timeout; the
// host retries with a new request): no http.response comes for it, so its abort listener, and
// its exchange, stayed on the host's signal for as long as that lived (a turn's, across every
// step and retry of it). Once the host drops that request, they go.
const unanswered = new FinalizationRegistry((stopListening) => stopListening());

/**
 * Aborts `ex` when the host's `signal` does; returns what takes the listener off again (when
 * the answer is handled: a host's long-lived signal would otherwise keep every request's
 * exchange alive). Made here, not in the hook: a closure made in an async function may hold
 * that function's whole scope (JavaScriptCore), the watched token with it, which then lived
 * as long as the signal did.
 */
function abortOnSignal(signal, ex) {
  const onAbort = () => ex.abort();
  if (signal?.aborted) {
    onAbort();
    return () => {};
  }
  signal?.addEventListener?.("abort", onAbort, { once: true });
  return () => signal?.removeEventListener?.("abort", onAbort);
}

/**
 * What tells the pool the host gave up on a request: the hook's own signal where the host
 * passes one, else the Request's. OpenCode 2's promise adapter calls hooks with the event alone
 * (packages/plugin/src/promise/adapter.ts `Effect.promise(() => callback(event))`), so the
 * Request's signal is all a host can offer there; every Request has one (it never fires where
 * the host gave none). The resend follows the same signal: a Request passed to fetch keeps it.
 */
const hostSignal = (extra, request) => extra?.signal ?? request?.signal;

/**
 * The retry of a refused request on another account. `timeout: false` as the host's own sends
 * (packages/ai/src/route/transport/http.ts): under Bun, whose fetch otherwise cuts an answer
 * silent for 5 minutes whatever the host's chunkTimeout says; the host's deadlines bound the
 * answer's body as they bound its own. Its head is ours to bound: OpenCode 2 hands its hooks no
 * signal, so a resend to an account that never answered held the host's request for ever;
 * after `OAUTH_POOL_RESPONSE_TIMEOUT_MS` it is cut and the host gets the pool's 503.
 */
async function resend(fetch, request, signal) {
  const controller = new AbortController();
  const limitMs = nativeBinding().responseTimeoutMs();
  let late = false;
  const timer = setTimeout(() => {
    late = true;
    controller.abort();
  }, limitMs);
  // Joined, not listened to: the host's abort must also end the body, which outlives this call.
  const joined = signal ? AbortSignal.any([signal, controller.signal]) : controller.signal;
  try {
    // `manual`: a Request follows redirects unless told; followed, a 3xx to another origin took
    // the next account's `x-api-key` there (runtimes drop only `authorization` on the way).
    return await fetch(request, { signal: joined, timeout: false, redirect: "manual" });
  } catch (err) {
    if (late) throw Object.assign(new Error(`no response headers within ${limitMs} ms`), { code: "NETWORK" });
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** A failure's code for a log line: the pool's (a string), else its name (a DOMException's `code` is a number). */
const codeOf = (err) => (typeof err?.code === "string" ? err.code : (err?.name ?? "ERROR"));

/** `request` again, with the headers the engine gave for this attempt. */
function withHeaders(request, headers) {
  return new Request(request, { headers });
}

/** The headers that carry an account's credential: the engine's alone, on every attempt. */
const CREDENTIAL_HEADERS = new Set(["authorization", "x-api-key"]);
const betasOf = (headers) =>
  new Set(
    (headers.get("anthropic-beta") ?? "")
      .split(",")
      .map((b) => b.trim())
      .filter(Boolean),
  );

/**
 * The headers of a resend on the next account: the engine's for it, with what later plugins'
 * hooks changed since ours placed the request (`sent`: the request the host sent, `placedWith`:
 * the headers ours gave it) carried over: a header added, changed or removed, a beta added or
 * removed. The credential stays the engine's.
 */
function resendHeaders(sent, placedWith, engineHeaders) {
  const out = new Headers(engineHeaders);
  const was = new Headers(placedWith);
  for (const [name, value] of sent.headers) {
    if (CREDENTIAL_HEADERS.has(name) || name === "anthropic-beta" || was.get(name) === value) continue;
    out.set(name, value);
  }
  for (const [name] of was) if (!CREDENTIAL_HEADERS.has(name) && !sent.headers.has(name)) out.delete(name);
  const [before, after, betas] = [betasOf(was), betasOf(sent.headers), betasOf(out)];
  if ([...before].some((b) => !after.has(b)) || [...after].some((b) => !before.has(b))) {
    for (const b of after) if (!before.has(b)) betas.add(b);
    for (const b of before) if (!after.has(b)) betas.delete(b);
    if (betas.size) out.set("anthropic-beta", [...betas].join(","));
    else out.delete("anthropic-beta");
  }
  return out;
}

/**
 * Whether `next`, made by a later plugin in place of the request ours `placed`, is still ours:
 * the same credential, to the same origin (the one the engine checked and gave the credential
 * for); the local stand-in (a `data:` URL) only at its own URL.
 */
function stillOurs(next, placed) {
  if (typeof next?.url !== "string" || typeof next.headers?.get !== "function") return false;
  if ([...CREDENTIAL_HEADERS].some((name) => next.headers.get(name) !== placed.headers.get(name))) return false;
  if (next.url === placed.url) return true;
  try {
    const [to, from] = [new URL(next.url), new URL(placed.url)];
    return (from.protocol === "https:" || from.protocol === "http:") && to.origin === from.origin;
  } catch {
    return false;
  }
}

/**
 * `request` put on the host's event as placed, and any request a later plugin's hook makes in
 * its place (`event.request = new Request(event.request, …)`) placed with it. The host runs the
 * http.request hooks in order on one event object (packages/core/src/plugin/hooks.ts) and hands
 * http.response the request the last of them left (session/model-http.ts `before.request`):
 * that one no pool hook had placed, so the account's 429 reached the host unjudged.
 */
function place(event, request, placement) {
  let current = request;
  placed.set(current, placement);
  const replace = (next) => {
    if (next === current) return;
    placed.delete(current);
    current = next;
    // Sent elsewhere (another plugin's proxy) or on another credential, it is no longer ours to
    // judge, nor to send again with an account's credential. On the API's origin with the
    // account's credential (a path or query changed: the SDK's `?beta=true`), it is: judged on
    // its exact URL, its 429 reached the host unjudged.
    if (stillOurs(next, request)) placed.set(next, placement);
  };
  try {
    Object.defineProperty(event, "request", { get: () => current, set: replace, configurable: true, enumerable: true });
  } catch {
    // An event that takes no accessor (frozen, or a host's proxy): ours is all that is known.
    event.request = request;
  }
}

/**
 * The requests a pool hook placed, each with its pool, the request as the host made it, what
 * finishes its answer and what lets it go: shared by every copy of this plugin in the process
 * (two config files naming it, or a path and a package; the host runs them all) and every setup
 * of one copy (a config reload sets it up again, possibly while a request the old setup placed
 * is still out). A later copy on another pool takes the request over. The copy that placed a
 * request finishes it; another copy on the same pool neither places it again (its own exchange
 * would have been left behind, and a
 * request already pointed at the pool's local answer would have been refused as off-origin) nor
 * lets it pass unjudged (the host would have read the local `data:` answer, a 200 `{}`, as the
 * model's).
 */
const PLACED = Symbol.for("opencode-oauth-pool.opencode2.placed");
globalThis[PLACED] ??= new WeakMap();
const placed = globalThis[PLACED];

/** Pairs of pools already said to be served by two copies of this plugin: said once each. */
const twoPoolsSaid = new Set();
const shownPool = (path) => (path === undefined ? "the default pool" : printable(path));
/**
 * Whether two copies' `path` options name one pool: the default and the path it resolves to, or
 * `~/pool.json` and its absolute spelling, are one (the pool's own resolution, `poolFiles`, and
 * the file's real path). Compared as written, the second copy took over every request of the
 * first and warned of two pools where there was one.
 */
function samePool(a, b) {
  if (a === b) return true;
  const where = (p) => {
    try {
      const files = nativeBinding().poolFiles(p);
      if (files.kind !== "file") return `${files.kind}:${files.location}`;
      try {
        return realpathSync(files.path);
      } catch {
        return files.path;
      }
    } catch {
      return null;
    }
  };
  const first = where(a);
  return first !== null && first === where(b);
}

function warnTwoPools(first, last, providerID, log) {
  const pair = JSON.stringify([providerID, first ?? null, last ?? null]);
  if (twoPoolsSaid.has(pair)) return;
  twoPoolsSaid.add(pair);
  log(
    "warn",
    `two copies of this plugin serve ${providerID}, from two pools: ${shownPool(first)} and ${shownPool(last)}. The copy set up last serves the requests, logins, tool and command, from ${shownPool(last)}; name the pool in one place (OpenCode runs every plugin entry of the global and the project config)`,
  );
}

/**
 * A request that cannot be placed on a pool account must not go out as the host built it: it
 * carries no credential of ours (on `anthropic-pool`: the placeholder, or none; with
 * `provider: "anthropic"`: the user's own key, billed without a word). It is answered here, as
 * the gateway answers the same failure (src/gateway/forward.rs), with the reason as the message
 * the host shows; `x-should-retry: false` where retrying cannot help (packages/ai isRetryable
 * honours it).
 */
let unretriable = null;

/**
 * The pool's 429 as 2.x is to read it: its `retry` hook decides when to ask again (after exactly
 * the `retry-after`, within the host's cap), so the SDKs' "do not ask again" on a long wait
 * (src/engine/exchange.rs, `pool_429`) is not said to it.
 */
function hostsRetry(step) {
  if (step?.kind !== "answer" || !Array.isArray(step.headers)) return step;
  return { ...step, headers: step.headers.filter(([name]) => name !== "x-should-retry") };
}

/**
 * The runtime's fetch failure as the pool's `NETWORK`, what the library's fetch rejects such a
 * resend with: Node's `TypeError("fetch failed")` has no string code, and the host read "fetch
 * failed" coded `ERROR`, its cause ("other side closed") dropped.
 */
function asNetworkFailure(err) {
  if (typeof err?.code === "string" && err.code !== "") return err;
  const detail = err?.cause?.message ?? err?.message ?? String(err);
  return toPoolError(new Error(`[NETWORK] network error talking to the API: ${detail}`));
}

function refusal(err) {
  const code = typeof err?.code === "string" ? err.code : "ERROR";
  unretriable ??= new Set(nativeBinding().unretriableCodes());
  const [status, type, retry] = unretriable.has(code) ? [503, "overloaded_error", "false"] : [503, "api_error", undefined];
  // Marked as the pool's once: its own messages may name it already ("anthropic-pool has no …").
  const text = scrubbed(err?.message ?? err);
  const message = text.startsWith("anthropic-pool") ? text : `anthropic-pool: ${text}`;
  return {
    kind: "answer",
    status,
    statusText: "Service Unavailable",
    headers: [["content-type", "application/json"], ["x-oauth-pool-error", code], ...(retry ? [["x-should-retry", retry]] : [])],
    body: JSON.stringify({ type: "error", error: { type, message } }),
    own: false,
  };
}

/**
 * A request pointed at a `data:` URL the runtime's fetch answers locally: nothing goes upstream.
 * Its answer is replaced by `answer` (the pool's own) when the host's `http.response` comes; a
 * host that reads the stand-in itself (the plugin unloaded meanwhile and not set up again;
 * another plugin's hook that replaced the request after ours) still reads the pool's message:
 * as the error event of a stream when the request asked for one, else as an error body. It read
 * a 200 `{}` as the model's answer.
 */
async function localRequest(request, answer) {
  let streamed = false;
  try {
    streamed = JSON.parse(await request.clone().text())?.stream === true;
  } catch {}
  const text = typeof answer.body === "string" ? answer.body : Buffer.from(answer.body ?? "").toString();
  const [type, said] = streamed ? ["text/event-stream", `event: error\ndata: ${text}\n\n`] : ["application/json", text];
  return new Request(`data:${type};base64,${Buffer.from(said).toString("base64")}`, {
    method: request.method,
    headers: { "content-type": "application/json" },
    body: request.method === "GET" ? undefined : "{}",
    // The stand-in is given up with the request it stands for.
    signal: request.signal,
  });
}

/**
 * Registers the three hooks, scoped to `providerID`. `notify(events)` hears failovers and
 * accounts needing attention; `log(level, message)` writes one line; `wireModels` maps a catalog
 * model id to the API's where they differ (`providerTransform`).
 */
export async function registerRequestHooks(ctx, { providerID, path, notify, log, wireModels, fetch = globalThis.fetch }) {
  // A hold beginning is told at once, not when the held request ends (hours later).
  let listener;
  const listen = () => {
    listener ??= eventListener(notify);
    return listener;
  };
  const drain = (ex) => {
    const events = takeEvents(ex);
    if (events.length) notify(events);
  };

  /**
   * What `place` keeps for a request this setup placed: how to finish it, how to let it go, and
   * the request as the host made it (`original()`, for a copy on another pool to place anew).
   */
  const placing = (state, original) => ({
    path,
    original,
    finish: (ev, ext) => finish(state, ev, ext),
    release: () => {
      if (state.token) unanswered.unregister(state.token);
      state.stopListening?.();
      if (state.ex) {
        state.ex.abort();
        drain(state.ex);
      }
    },
  });

  const onRequest = async (event, extra) => {
    let request = event.request;
    const prior = placed.get(request);
    if (prior) {
      // Placed by another copy of this plugin on the same pool (two config entries naming it,
      // a setup again after a reload): it finishes the request.
      if (samePool(prior.path, path) || !prior.original) return;
      // Placed by a copy on another pool, set up before this one (the global config's, where
      // this is the project's): the host shows this copy's integration, provider, tool and
      // command (each transform is laid over the one before), so this pool serves the request
      // too. Left to the first, logins and the tool used one pool and requests another.
      warnTwoPools(prior.path, path, providerID, log);
      let original;
      try {
        original = prior.original();
      } catch {
        // A plugin between the two copies made a request of its own from the placed one, which
        // took its body: the first copy's placement stands.
        return;
      }
      prior.release();
      placed.delete(request);
      request = original;
    }
    let ex;
    let stopListening;
    try {
      syncEnv();
      // The hook is told the catalog's id (packages/core/src/model-resolver.ts: the request
      // carries the API's, "which may differ from the catalog id"): a config alias (`fast` for
      // `claude-haiku-4-5`) was counted under its own name, and its family unknown to the
      // model-scoped windows (a `7d_sonnet` cooldown did not keep `my-big` off that account).
      const named = typeof event.model?.id === "string" ? event.model.id : undefined;
      const model = named === undefined ? undefined : (wireModels?.get(named) ?? named);
      ex = openExchange({ path, url: request.url, headers: request.headers, model, listener: listen() });
      // The host gives http.request, the send and http.response 5 minutes together, then
      // retries as a timeout at most three times ("Timed out waiting for response headers");
      // the `retry` hook below has it wait a longer hold's time exactly (HOST_HOLD_MS).
      ex.holdAtMost(HOST_HOLD_MS);
      const signal = hostSignal(extra, request);
      stopListening = abortOnSignal(signal, ex);
      // Watched through a token that only the in-flight entry holds, not the Request: V8
      // keeps a watched object through minor collections, and a Request holds its body.
      const token = {};
      if (signal) unanswered.register(token, stopListening, token);
      const step = hostsRetry(await nextStep(ex));
      drain(ex);
      if (step.kind === "answer") {
        // Every account cools: nothing may go upstream. The request is pointed at a data: URL
        // (answered locally by the runtime's fetch) and the pool's 429 replaces its answer.
        const local = await localRequest(request, step);
        const state = { ex, answer: step, stopListening, token };
        place(
          event,
          local,
          placing(state, () => request),
        );
        return;
      }
      const sent = withHeaders(request, step.headers);
      const state = { ex, placedWith: step.headers, stopListening, token };
      // The host's request gave its body to `sent`; its headers are still readable.
      place(
        event,
        sent,
        placing(state, () => new Request(sent, { headers: request.headers })),
      );
    } catch (err) {
      const aborted = hostSignal(extra, request)?.aborted;
      // The host gave the request up: it reads no answer, so there is nothing to report.
      if (!aborted)
        log("error", `could not place the request on a pool account, so it is answered here and not sent: ${codeOf(err)} ${scrubbed(err?.message ?? err)}`);
      try {
        stopListening?.();
        if (ex) drain(ex);
        if (aborted) {
          // Its fetch must fail as an aborted one does. Bun's fetch answers a `data:` URL
          // whatever the signal says: the host read the pool's refusal of its own abort, a
          // 503, and retried it (ten times in the harness). A `data:` URL without its comma
          // fails every runtime's fetch, and goes nowhere.
          place(event, new Request("data:aborted", { method: request.method, body: request.method === "GET" ? undefined : "{}", signal: request.signal }), {
            path,
            finish: async () => {},
          });
          return;
        }
        const answer = refusal(err);
        const local = await localRequest(request, answer);
        const state = { ex: null, answer };
        place(
          event,
          local,
          placing(state, () => request),
        );
      } catch {}
    }
  };

  const onResponse = async (event, extra) => {
    const placement = placed.get(event.request);
    if (!placement) return;
    placed.delete(event.request);
    await placement.finish(event, extra);
  };

  /** The answer to a request this setup placed, whichever setup's hook hears it. */
  async function finish(state, event, extra) {
    const { ex } = state;
    // The answer in hand, which the host reads unless another replaces it.
    let response = event.response;
    let opening = null;
    try {
      if (state.answer) {
        await event.response.body?.cancel().catch(() => {});
        event.response = poolAnswer(state.answer);
        if (state.answer.own !== false) remember(event.sessionID, state.answer);
        return;
      }
      // Every credential the request was sent with, over its attempts: taken back out of the
      // answer the host reads (a server echoing the request).
      let forms = echoForms(presented(new Headers(state.placedWith)));
      opening = await openingOf(ex, response);
      let verdict;
      for (;;) {
        verdict = await judgeAnswer(ex, response);
        if (verdict !== "retry") break;
        // The host gave the request up while its answer was judged: nothing to move on.
        if (hostSignal(extra, event.request)?.aborted) {
          verdict = "deliver";
          break;
        }
        const step = hostsRetry(await nextStep(ex));
        if (step.kind === "answer") {
          await dropped(response, opening);
          response = poolAnswer(step);
          opening = null;
          remember(event.sessionID, step);
          break;
        }
        // The answer in hand is dropped only once another has come: if the resend fails, the
        // host keeps this one, readable.
        let next;
        try {
          const headers = resendHeaders(event.request, state.placedWith, step.headers);
          next = await resend(fetch, withHeaders(event.request.clone(), headers), hostSignal(extra, event.request));
        } catch (err) {
          verdict = "deliver";
          // The host gave the request up: the resend ended with it, and nobody reads the answer.
          if (hostSignal(extra, event.request)?.aborted) break;
          // The pool's coded 503, as the library's fetch rejects such a resend with NETWORK: the
          // host asks again in seconds and the engine places it anew. The first answer was one
          // the pool had already acted on: its 401 (the login refreshed since) ended the session
          // as a bad credential, its 429's `retry-after` held the session for up to 15 minutes
          // while other accounts were free.
          log(
            "warn",
            `the request's resend (after a 429 or 401) failed, so the host gets the pool's 503 and asks again: ${codeOf(err)} ${scrubbed(err?.message ?? err)}`,
          );
          await dropped(response, opening);
          response = poolAnswer(refusal(asNetworkFailure(err)));
          opening = null;
          break;
        }
        await dropped(response, opening);
        response = next;
        forms = [...new Set([...forms, ...echoForms(presented(new Headers(step.headers)))])];
        opening = await openingOf(ex, response);
      }
      if (opening) response = replayed(response, opening);
      event.response = withoutEcho(verdict === "deliver-tap" ? tapUsage(response, ex) : response, forms);
    } catch (err) {
      // A request the host gave up is no failure of ours to report.
      if (!hostSignal(extra, event.request)?.aborted) {
        log("error", `the pool could not finish this request: ${codeOf(err)} ${scrubbed(err?.message ?? err)}`);
        // The host reads the pool's coded refusal, as the library's fetch throws it: the answer
        // it holds may be one the pool already dropped for a retry (its body gone), or one the
        // pool could not judge (every login revoked: a bare 401 without the login hint).
        await dropped(response, opening);
        if (event.response !== response) await event.response.body?.cancel().catch(() => {});
        event.response = poolAnswer(refusal(err));
      }
    } finally {
      if (state.token) unanswered.unregister(state.token);
      state.stopListening?.();
      if (ex) drain(ex);
    }
  }

  function remember(sessionID, answer) {
    const seconds = Number(new Headers(answer.headers).get("retry-after"));
    if (!Number.isFinite(seconds)) return;
    const now = Date.now();
    // Oldest first (a Map keeps insertion order): a session remembered again moves to the end.
    poolAnswers.delete(sessionID);
    for (const [id, own] of poolAnswers) {
      if (poolAnswers.size < POOL_ANSWERS_KEPT && now - own.at <= own.retryAfterMs + POOL_ANSWER_GRACE_MS) break;
      poolAnswers.delete(id);
    }
    poolAnswers.set(sessionID, { retryAfterMs: seconds * 1000, at: now, hostWaits: answer.hostWaits === true });
  }

  const onRetry = async (event) => {
    try {
      const own = poolAnswers.get(event.sessionID);
      if (!own || event.error?.status !== 429) return;
      poolAnswers.delete(event.sessionID);
      const since = Date.now() - own.at;
      // A 429 of the session long after one the host never retried (a title request, which is
      // not retried; a host past its tenth retry) is not that one: it was retried at once.
      if (since > own.retryAfterMs + POOL_ANSWER_GRACE_MS) return;
      const wait = Math.max(0, own.retryAfterMs - since);
      // A wait that holding covers is waited out whatever its length (the host takes a hook's
      // delay as it is: retry.ts caps only the delay it reads from `retry-after` itself).
      event.decision = wait > HOST_RETRY_CAP_MS && !own.hostWaits ? { retry: false } : { retry: true, delay: wait };
    } catch (err) {
      log("error", `retry decision failed: ${scrubbed(err?.message ?? err)}`);
    }
  };
  // Answers first, requests last: a request is placed only once what finishes its answer is
  // in place (an answer left unjudged would hand the host the local `data:` stand-in). A host
  // that refuses one of the three gets none: without them a request would go out without any
  // credential of ours.
  const registrations = [];
  try {
    for (const [name, callback] of [
      ["http.response", onResponse],
      ["retry", onRetry],
      ["http.request", onRequest],
    ])
      registrations.push(await ctx.session.hook(name, callback, { providerID }));
  } catch (err) {
    for (const r of registrations.splice(0)) await Promise.resolve(r?.dispose?.()).catch(() => {});
    throw err;
  }
  return registrations;
}
