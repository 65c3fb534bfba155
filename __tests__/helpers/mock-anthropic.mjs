#!/usr/bin/env node
// A loopback-only mock of the Anthropic endpoints the pool talks to, shared by the tests, the demo
// and the benchmarks:
//   - the OAuth token endpoint with strict refresh-token rotation (harness H1 in
//     /work/shared/reference/reliability.md): a consumed refresh token presented again revokes the
//     whole token family, which is the oracle for "a refresh token is used at most once";
//   - /v1/messages scripted per account (harness H2): 429s with unified rate-limit headers, SSE
//     streams with in-band errors, raw bodies byte for byte, resets after N bytes, hangs;
//   - /api/oauth/profile, /api/oauth/usage, /api/oauth/claude_cli/create_api_key;
//   - /bench/* endpoints (also under /v1/bench/*) with no auth, for throughput and latency measurements;
//   - /__mock/* control routes, so another process can drive a mock it did not start.
//
// Only `node:` built-ins, so it runs unchanged under Node >= 20 and Bun. It binds 127.0.0.1 and
// never makes an outbound request.
//
// In process:  const mock = await startMockAnthropic({ port: 0 });  ...  await mock.close();
// Standalone:  node __tests__/helpers/mock-anthropic.mjs [--port N]
//              prints {"url": "...", "tokenUrl": "..."} on one line, then serves until SIGTERM,
//              SIGINT or EOF on stdin (when stdin is a pipe), so it never outlives its parent.

import http from "node:http";
import { createHash, randomBytes, randomUUID } from "node:crypto";
import { fstatSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const DEFAULT_REDIRECT_URI = "https://platform.claude.com/oauth/code/callback";
export const OAUTH_BETA = "oauth-2025-04-20";
const SCOPE = "user:inference user:profile user:sessions:claude_code user:mcp_servers user:file_upload org:create_api_key";
const DEFAULT_MODEL = "claude-sonnet-4-5-20250929";
const TOKEN_BODY_LIMIT = 64 * 1024;
const API_BODY_LIMIT = 32 * 1024 * 1024;

const INVALID_CODE = { error: "invalid_grant", error_description: "Invalid 'code' in request." };
const INVALID_REFRESH = { error: "invalid_grant", error_description: "Refresh token not found or invalid" };
const INVALID_REQUEST = { error: "invalid_request", error_description: "Invalid request format" };

// Anthropic's error `type` per HTTP status, and a message like the real one.
const ERROR_TYPES = {
  400: ["invalid_request_error", "Invalid request"],
  401: ["authentication_error", "invalid bearer token"],
  403: ["permission_error", "OAuth authentication is not allowed for this organization."],
  404: ["not_found_error", "Not found"],
  413: ["request_too_large", "Request exceeds the maximum allowed number of bytes."],
  429: ["rate_limit_error", "This request would exceed your account's rate limit. Please try again later."],
  500: ["api_error", "Internal server error"],
  529: ["overloaded_error", "Overloaded"],
};

// ---------------------------------------------------------------------------------------------
// Small pure helpers (exported where tests or other tools want the same shapes)

const nowSec = () => Math.floor(Date.now() / 1000);
const rand = (bytes = 18) => randomBytes(bytes).toString("base64url");
const newToken = (kind) => `sk-ant-${kind}-mock-${rand(24)}`;
const requestId = () => `req_mock_${rand(12)}`;
const base64urlSha256 = (s) => createHash("sha256").update(s).digest("base64url");

/** The Anthropic error envelope for `status`, e.g. 429 -> rate_limit_error. */
export function apiErrorBody(status, message) {
  const [type, fallback] = ERROR_TYPES[status] ?? [status >= 500 ? "api_error" : "invalid_request_error", "Error"];
  return { type: "error", error: { type, message: message ?? fallback }, request_id: requestId() };
}

/**
 * Headers of a realistic subscription 429. Resets are epoch seconds. `rejected` picks the window
 * that is exhausted ("5h" default, "7d" or "both"). `only5h` keeps only the `-5h-*` keys (plus
 * `retry-after` when given): some real 429s look like that, so clients must detect by prefix.
 * `retryAfter` undefined leaves `retry-after` out (it is not always present on real 429s).
 */
export function rateLimitHeaders({
  retryAfter,
  fiveHourReset = nowSec() + 3600,
  sevenDayReset = nowSec() + 3 * 86400,
  status = "rejected",
  rejected = "5h",
  only5h = false,
} = {}) {
  const hit5h = rejected === "5h" || rejected === "both";
  const hit7d = rejected === "7d" || rejected === "both";
  const p = "anthropic-ratelimit-unified";
  const h = {};
  if (retryAfter !== undefined && retryAfter !== null) h["retry-after"] = String(retryAfter);
  // Any other name is a model-scoped window (e.g. "7d_sonnet"): it is exhausted, 5h and 7d are not.
  const scoped = !["5h", "7d", "both"].includes(rejected) ? rejected : null;
  if (scoped) {
    h[`${p}-status`] = status;
    h[`${p}-reset`] = String(sevenDayReset);
    h[`${p}-${scoped}-status`] = status;
    h[`${p}-${scoped}-reset`] = String(sevenDayReset);
    h[`${p}-${scoped}-utilization`] = "1.0";
    h[`${p}-5h-status`] = "allowed";
    h[`${p}-5h-reset`] = String(fiveHourReset);
    h[`${p}-5h-utilization`] = "0.42";
    h[`${p}-7d-status`] = "allowed";
    h[`${p}-7d-reset`] = String(sevenDayReset);
    h[`${p}-7d-utilization`] = "0.35";
    h[`${p}-representative-claim`] = "seven_day_scoped";
    return h;
  }
  h[`${p}-5h-status`] = hit5h ? status : "allowed";
  h[`${p}-5h-reset`] = String(fiveHourReset);
  h[`${p}-5h-utilization`] = hit5h ? "1.01" : "0.42";
  if (only5h) return h;
  h[`${p}-status`] = status;
  h[`${p}-reset`] = String(Math.max(hit5h ? fiveHourReset : 0, hit7d ? sevenDayReset : 0) || fiveHourReset);
  h[`${p}-7d-status`] = hit7d ? status : "allowed";
  h[`${p}-7d-reset`] = String(sevenDayReset);
  h[`${p}-7d-utilization`] = hit7d ? "1.0" : "0.35";
  h[`${p}-representative-claim`] = hit7d && !hit5h ? "seven_day" : "five_hour";
  return h;
}

/** The callback-URL form of a `code#state` paste, as the browser shows it after login. */
export function callbackUrlFromPaste(paste, redirectUri = DEFAULT_REDIRECT_URI) {
  const [code, state = ""] = String(paste).split("#");
  const u = new URL(redirectUri);
  u.searchParams.set("code", code);
  u.searchParams.set("state", state);
  return u.toString();
}

/** Reads a body to its end: its text, and how many reads returned bytes (a buffered stream gives few). */
export async function readAll(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let reads = 0;
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return { reads, text: text + decoder.decode() };
    reads++;
    text += decoder.decode(value, { stream: true });
  }
}

/** Parses an SSE text into `[{ event, data }]` (data JSON-parsed when possible). */
export function parseSSE(text) {
  const events = [];
  for (const block of text.split(/\r?\n\r?\n/)) {
    if (!block.trim()) continue;
    let event = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    const raw = data.join("\n");
    let parsed = raw;
    try {
      parsed = JSON.parse(raw);
    } catch {}
    events.push({ event, data: parsed });
  }
  return events;
}

/** Replaces a secret by its last 6 characters, for views that may end up in logs. */
function mask(value) {
  if (typeof value !== "string" || value.length <= 6) return value;
  const bearer = /^bearer\s+/i.exec(value);
  const secret = bearer ? value.slice(bearer[0].length) : value;
  return `${bearer ? bearer[0] : ""}…${secret.slice(-6)}`;
}

function maskHeaders(headers) {
  const out = { ...headers };
  for (const k of ["authorization", "x-api-key", "cookie"]) if (k in out) out[k] = mask(out[k]);
  return out;
}

/** Splits text into word-sized pieces that concatenate back to exactly `text`. */
function splitText(text, size) {
  if (!text) return [];
  if (size > 0) return text.match(new RegExp(`[\\s\\S]{1,${size}}`, "g"));
  const pieces = text.match(/\s*\S+/g) ?? [text];
  const rest = text.slice(pieces.join("").length);
  if (rest) pieces[pieces.length - 1] += rest;
  return pieces;
}

function hasOAuthBeta(headers) {
  return String(headers["anthropic-beta"] ?? "")
    .split(",")
    .some((b) => b.trim() === OAUTH_BETA);
}

// ---------------------------------------------------------------------------------------------
// I/O helpers

async function readBody(req, limit) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size <= limit) chunks.push(chunk);
  }
  const bytes = Buffer.concat(chunks);
  return { text: bytes.toString("utf8"), bytes, tooLarge: size > limit };
}

/** Writes one piece, resolving once the runtime accepted it (waits for 'drain' when full). */
function write(res, buf) {
  return new Promise((resolve) => {
    if (res.destroyed) return resolve(false);
    const done = () => resolve(!res.destroyed);
    if (res.write(buf)) return done();
    const onDrain = () => {
      res.off("close", onDrain);
      res.off("drain", onDrain);
      done();
    };
    res.once("drain", onDrain);
    res.once("close", onDrain);
  });
}

/** Writes the piece and waits until it has been handed to the socket (before a deliberate drop). */
function writeFlushed(res, buf) {
  return new Promise((resolve) => {
    if (res.destroyed) return resolve();
    res.write(buf, () => resolve());
  });
}

/** Kills the connection without a proper end: the client sees a reset / premature close. */
function dropConnection(req, res) {
  const socket = req.socket ?? res.socket;
  if (socket && !socket.destroyed) socket.destroy();
  if (!res.destroyed) res.destroy();
}

// ---------------------------------------------------------------------------------------------
// The mock

/**
 * Starts the mock on 127.0.0.1.
 * Options: `port` (0 = random), `requireOAuthBeta` (default true: like the real API, a Bearer
 * request to /v1/messages without `anthropic-beta: oauth-2025-04-20` is a 401),
 * `enforceExpiry` (default true: an access token past its `expires` is a 401),
 * `reuseGraceMs` (default 0: a just-consumed refresh token presented again within this window
 * gets the current tokens instead of revoking the family; RFC 9700 allows such a grace window).
 */
export async function startMockAnthropic({ port = 0, requireOAuthBeta = true, enforceExpiry = true, reuseGraceMs = 0 } = {}) {
  // --- state -------------------------------------------------------------------------------
  const families = new Map(); // email -> latest token family for that email
  const accessIndex = new Map(); // access token -> family (only the current one stays valid)
  const refreshIndex = new Map(); // any refresh token ever issued -> family
  const apiKeys = new Map(); // key -> email
  const authCodes = new Map(); // code -> { challenge, state, redirectUri, clientId, email, opts, used }
  const scripts = new Map(); // email -> queued responses
  const scriptAllQueue = [];
  const utilization = new Map(); // email -> { fiveHour, sevenDay, fiveHourReset, sevenDayReset, status }
  let tokenModes = []; // queued token-endpoint faults: { ...mode, times, grant? }
  const requests = [];
  const tokenRequests = [];
  const counters = {
    tokenCalls: 0,
    refreshCalls: 0,
    exchangeCalls: 0,
    reuse: 0,
    graceHits: 0,
    messages: 0,
    messagesByAccount: {},
    unauthorized: 0,
    unauthenticated: 0,
    profileCalls: 0,
    bench: { small: 0, bytes: 0, sse: 0 },
  };
  const sockets = new Set();
  const waiters = []; // { kind, predicate, resolve } for waitFor()
  const parked = new Set(); // responses held open by `hang` until close()
  let resultsOrigin = null; // the origin batches' results_url names (a relay passes the API's on)
  const timers = new Set();
  let closed = false;

  const sleep = (ms) =>
    new Promise((resolve) => {
      const t = setTimeout(() => {
        timers.delete(t);
        resolve();
      }, ms);
      timers.add(t);
    });

  // A hung exchange is ended by close() through its socket: under Bun, destroying only the
  // response object would still send a default 200.
  function park(req, res) {
    const entry = { req, res };
    parked.add(entry);
    res.on("close", () => parked.delete(entry));
  }

  // --- token families ------------------------------------------------------------------------
  function issueTokens(fam) {
    fam.access = newToken("oat01");
    fam.refresh = newToken("ort01");
    fam.expires = Date.now() + fam.expiresIn * 1000;
    fam.accessRevoked = false;
    accessIndex.set(fam.access, fam);
    refreshIndex.set(fam.refresh, fam);
  }

  function createFamily(email, { expiresIn = 28800, includeEmail = true } = {}) {
    if (!email) throw new Error("email is required");
    const fam = {
      email,
      uuid: randomUUID(),
      orgUuid: randomUUID(),
      expiresIn,
      includeEmail,
      generation: 0,
      revoked: false,
      refreshCalls: 0,
      reuse: 0,
      perGeneration: {}, // generation of the presented refresh token -> calls
      consumed: new Map(), // refresh token -> { generation, rotatedAt }
      lostAnswers: 0, // rotations whose answer commitThenDrop threw away
      answeredAt: [], // when each rotation's answer was handed to the client (last 1,000)
      reuseLog: [], // { generation, rotatedAt, lost, at }: each spent refresh token presented again
    };
    issueTokens(fam);
    families.set(email, fam);
    return fam;
  }

  // Rotation: the presented refresh token becomes consumed, and the previous access token stops
  // working because the server keeps one live access token per family (claude-code #58066).
  function rotate(fam) {
    fam.consumed.set(fam.refresh, { generation: fam.generation, rotatedAt: Date.now() });
    accessIndex.delete(fam.access);
    fam.generation++;
    issueTokens(fam);
  }

  const publicTokens = (fam) => ({ email: fam.email, access: fam.access, refresh: fam.refresh, expires: fam.expires });

  function tokenResponse(fam) {
    const body = {
      token_type: "Bearer",
      access_token: fam.access,
      refresh_token: fam.refresh,
      expires_in: fam.expiresIn,
      scope: SCOPE,
    };
    if (fam.includeEmail) {
      body.account = { uuid: fam.uuid, email_address: fam.email };
      body.organization = { uuid: fam.orgUuid, name: `${fam.email}'s Organization` };
    }
    return body;
  }

  /** Who an access token belongs to, or why it is refused. */
  function checkAccess(token) {
    const fam = accessIndex.get(token);
    if (!fam || fam.access !== token || fam.revoked || fam.accessRevoked) return { error: "invalid bearer token" };
    if (enforceExpiry && Date.now() >= fam.expires) return { error: "OAuth token has expired. Please obtain a new token or refresh your existing token." };
    return { fam };
  }

  // --- token endpoint grants (each returns { status, body, reject? }) ---------------------------
  function grantAuthorizationCode(b) {
    counters.exchangeCalls++;
    const entry = authCodes.get(b.code);
    const reject = (why) => ({ status: 400, body: INVALID_CODE, reject: why });
    if (!entry) return reject("unknown code");
    if (entry.used) return reject("code already used");
    if (!b.state) return reject("state missing");
    if (b.state !== entry.state) return reject("state does not match the authorize request");
    if (!b.code_verifier || base64urlSha256(b.code_verifier) !== entry.challenge) return reject("PKCE verifier mismatch");
    if (entry.redirectUri && b.redirect_uri !== entry.redirectUri) return reject("redirect_uri mismatch");
    if (entry.clientId && b.client_id !== entry.clientId) return reject("client_id mismatch");
    entry.used = true;
    return { status: 200, body: tokenResponse(createFamily(entry.email, entry.opts)) };
  }

  function grantRefreshToken(b, fam) {
    const reject = (why) => ({ status: 400, body: INVALID_REFRESH, reject: why });
    if (!fam) return reject("unknown refresh token");
    if (fam.revoked) return reject("family revoked");
    if (b.refresh_token === fam.refresh) {
      rotate(fam);
      return { status: 200, body: tokenResponse(fam) };
    }
    const used = fam.consumed.get(b.refresh_token);
    if (reuseGraceMs > 0 && used.generation === fam.generation - 1 && Date.now() - used.rotatedAt <= reuseGraceMs) {
      counters.graceHits++;
      return { status: 200, body: tokenResponse(fam) };
    }
    // Reuse of a consumed token: treat it as theft and kill the family (RFC 9700 4.14.2).
    counters.reuse++;
    fam.reuse++;
    fam.reuseLog.push({
      generation: used.generation,
      requestedAt: used.requestedAt,
      rotatedAt: used.rotatedAt,
      lost: !!used.lost,
      clientGone: !!used.clientGone,
      at: Date.now(),
    });
    fam.revoked = true;
    return reject(`reuse of generation ${used.generation} (current ${fam.generation}): family revoked`);
  }

  function parseTokenBody(text, contentType) {
    if (/x-www-form-urlencoded/i.test(contentType ?? "")) return Object.fromEntries(new URLSearchParams(text));
    try {
      const v = JSON.parse(text);
      return v && typeof v === "object" && !Array.isArray(v) ? v : null;
    } catch {
      return null;
    }
  }

  /** The next queued fault that applies to this grant, consuming one of its `times`. */
  function takeTokenMode(grant) {
    const i = tokenModes.findIndex((m) => !m.grant || m.grant === grant);
    if (i < 0) return null;
    const m = tokenModes[i];
    if (m.times !== Infinity && --m.times <= 0) tokenModes.splice(i, 1);
    return m;
  }

  function sendTokenFault(res, mode) {
    if (mode.html) {
      const pad = mode.bytes ? `<!-- ${"x".repeat(Math.max(0, mode.bytes - 200))} -->` : "";
      const page = `<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><p>cloudflare</p>${pad}</body></html>`;
      res.writeHead(mode.status ?? 200, { "content-type": "text/html; charset=utf-8", "request-id": requestId() });
      return res.end(page);
    }
    const headers = { "content-type": "application/json", "request-id": requestId() };
    if (mode.retryAfter !== undefined) headers["retry-after"] = String(mode.retryAfter);
    const body = mode.body ?? apiErrorBody(mode.status);
    res.writeHead(mode.status, { ...headers, ...mode.headers });
    res.end(typeof body === "string" ? body : JSON.stringify(body));
  }

  async function handleToken(req, res) {
    counters.tokenCalls++;
    const { text, tooLarge } = await readBody(req, TOKEN_BODY_LIMIT);
    const body = tooLarge ? null : parseTokenBody(text, req.headers["content-type"]);
    const grant = body?.grant_type ?? null;
    const record = { at: Date.now(), grant, headers: { ...req.headers }, body: body ?? text, status: null, reject: null };
    tokenRequests.push(record);
    arrived("token", record);

    // Count the call against the family of the presented refresh token, whatever happens next.
    let fam = null;
    if (grant === "refresh_token") {
      counters.refreshCalls++;
      fam = refreshIndex.get(body.refresh_token) ?? null;
      if (fam) {
        fam.refreshCalls++;
        const gen = fam.refresh === body.refresh_token ? fam.generation : fam.consumed.get(body.refresh_token).generation;
        fam.perGeneration[gen] = (fam.perGeneration[gen] ?? 0) + 1;
      }
    }

    const mode = takeTokenMode(grant);
    if (mode?.delayMs) await sleep(mode.delayMs);
    // `until`: a promise the test resolves when the answer may go (in-process only): holds a
    // refresh open at a known point instead of a guessed delay.
    if (mode?.until) await mode.until;
    if (closed || res.destroyed) return;
    if (mode?.hang) return park(req, res);
    if (mode?.reset) return dropConnection(req, res); // before rotating: nothing changed server-side
    if (mode && (mode.status || mode.html) && !mode.commitThenDrop) {
      record.status = mode.status ?? 200;
      return sendTokenFault(res, mode);
    }

    let result;
    if (!body || !grant) result = { status: 400, body: INVALID_REQUEST, reject: "unparseable body or no grant_type" };
    else if (grant === "authorization_code") result = grantAuthorizationCode(body);
    else if (grant === "refresh_token") result = grantRefreshToken(body, fam);
    else result = { status: 400, body: { error: "unsupported_grant_type" }, reject: `grant ${grant}` };
    record.reject = result.reject ?? null;
    // `reshape`: the body of a successful grant as a server shaped otherwise sends it (its
    // rotation committed all the same).
    if (mode?.reshape && result.status === 200) result = { ...result, body: mode.reshape(result.body) };
    // When the rotation's request arrived, and whether its client was still there to hear the answer.
    const spent = fam && result.status === 200 ? fam.consumed.get(body.refresh_token) : null;
    if (spent && spent.requestedAt === undefined) {
      spent.requestedAt = record.at;
      spent.clientGone = !!(res.destroyed || req.socket?.destroyed);
    }

    if (mode?.commitThenDrop) {
      if (spent) {
        fam.lostAnswers++;
        spent.lost = true;
      }
      return dropConnection(req, res); // the rotation above is committed
    }
    // `edit`: the grant is carried out (a refresh rotates) and its answer altered: keys set to
    // undefined are dropped, others replaced. A server that rotates and then says something off.
    if (mode?.edit && result.status === 200) {
      result.body = { ...result.body, ...mode.edit };
      for (const [k, v] of Object.entries(mode.edit)) if (v === undefined) delete result.body[k];
    }
    record.status = result.status;
    res.writeHead(result.status, { "content-type": "application/json", "request-id": requestId() });
    // `retext`: a successful grant's JSON text as a server writes it otherwise (a byte order mark,
    // `1e400`, a lone surrogate escape: text JSON.parse reads).
    const written = JSON.stringify(result.body);
    res.end(mode?.retext && result.status === 200 ? mode.retext(written) : written);
    if (fam && grant === "refresh_token" && result.status === 200) {
      fam.answeredAt.push(Date.now());
      if (fam.answeredAt.length > 1000) fam.answeredAt.shift();
    }
  }

  // --- API origin: auth ------------------------------------------------------------------------
  /** Resolves the credential of an API request: exactly one of Bearer or x-api-key. */
  function resolveAuth(headers) {
    const bearerMatch = /^bearer\s+(.+)$/i.exec(headers.authorization ?? "");
    const key = headers["x-api-key"];
    if (bearerMatch && key) return { kind: null, email: null, error: "invalid bearer token", both: true };
    if (bearerMatch) {
      const { fam, error } = checkAccess(bearerMatch[1].trim());
      return fam ? { kind: "bearer", email: fam.email, fam } : { kind: "bearer", email: null, error };
    }
    if (key) {
      const email = apiKeys.get(key);
      return email ? { kind: "api-key", email } : { kind: "api-key", email: null, error: "invalid x-api-key" };
    }
    return { kind: null, email: null, error: "invalid bearer token", none: true };
  }

  function sendJson(res, status, body, headers = {}) {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
      "request-id": requestId(),
      ...headers,
    });
    res.end(text);
  }

  function quotaHeaders(email) {
    const u = utilization.get(email) ?? {};
    const p = "anthropic-ratelimit-unified";
    const fiveReset = u.fiveHourReset ?? nowSec() + 3600;
    const status = u.status ?? "allowed";
    const h = {
      [`${p}-status`]: status,
      [`${p}-reset`]: String(fiveReset),
      [`${p}-5h-status`]: status,
      [`${p}-5h-utilization`]: String(u.fiveHour ?? 0.1),
      [`${p}-5h-reset`]: String(fiveReset),
      [`${p}-7d-status`]: "allowed",
      [`${p}-7d-utilization`]: String(u.sevenDay ?? 0.2),
      [`${p}-7d-reset`]: String(u.sevenDayReset ?? nowSec() + 86400),
      [`${p}-representative-claim`]: "five_hour",
    };
    // Model-scoped windows (`scoped: { "7d_sonnet": 0.95 }`), sent with every answer.
    for (const [name, value] of Object.entries(u.scoped ?? {})) {
      h[`${p}-${name}-status`] = value >= 1 ? "rejected" : "allowed";
      h[`${p}-${name}-utilization`] = String(value);
      h[`${p}-${name}-reset`] = String(u.scopedReset ?? nowSec() + 3 * 86400);
    }
    return h;
  }

  // --- API origin: message bodies --------------------------------------------------------------
  /** The content blocks of an answer: scripted text / tool call, else "Hello from <email>". */
  function buildMessage(step, ctx) {
    const blocks = [];
    const text = step.text ?? (step.toolUse ? null : `Hello from ${ctx.email}`);
    if (text) blocks.push({ type: "text", text });
    if (step.toolUse) {
      const { name, input = {}, id = `toolu_mock_${rand(12)}` } = step.toolUse;
      blocks.push({ type: "tool_use", id, name, input });
    }
    const outputChars = blocks.reduce((n, b) => n + (b.text?.length ?? JSON.stringify(b.input ?? {}).length), 0);
    // `step.usage` sets the counts (cache reads and writes included) for usage-tracking tests.
    const usage = {
      input_tokens: ctx.inputTokens,
      output_tokens: Math.max(1, Math.ceil(outputChars / 4)),
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
      ...step.usage,
    };
    return {
      id: `msg_mock_${rand(12)}`,
      model: ctx.model,
      blocks,
      stopReason: step.toolUse ? "tool_use" : "end_turn",
      usage,
    };
  }

  function messageJson(msg) {
    return {
      id: msg.id,
      type: "message",
      role: "assistant",
      model: msg.model,
      content: msg.blocks,
      stop_reason: msg.stopReason,
      stop_sequence: null,
      usage: { ...msg.usage },
    };
  }

  /** The event list of a streamed message, cut and ended by `event: error` after N deltas. */
  function messageEvents(msg, step) {
    const events = []; // { text, delta }
    const ev = (type, data, delta = false) => events.push({ text: `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`, delta });
    ev("message_start", {
      message: {
        ...messageJson(msg),
        content: [],
        stop_reason: null,
        usage: { ...messageJson(msg).usage, output_tokens: 1 },
      },
    });
    msg.blocks.forEach((block, index) => {
      if (block.type === "text") {
        ev("content_block_start", { index, content_block: { type: "text", text: "" } });
        if (index === 0) ev("ping", {});
        for (const piece of splitText(block.text, step.deltaSize)) ev("content_block_delta", { index, delta: { type: "text_delta", text: piece } }, true);
      } else {
        ev("content_block_start", { index, content_block: { type: "tool_use", id: block.id, name: block.name, input: {} } });
        if (index === 0) ev("ping", {});
        for (const piece of splitText(JSON.stringify(block.input), step.deltaSize ?? 12))
          ev("content_block_delta", { index, delta: { type: "input_json_delta", partial_json: piece } }, true);
      }
      ev("content_block_stop", { index });
    });
    ev("message_delta", { delta: { stop_reason: msg.stopReason, stop_sequence: null }, usage: { output_tokens: msg.usage.output_tokens } });
    ev("message_stop", {});

    const error = { type: "error", error: { type: step.errorType ?? "overloaded_error", message: step.errorMessage ?? "Overloaded" } };
    // `errorBeforeContent`: the error said in the stream's opening, after message_start and a
    // ping, before any content_block_start (a limit met after the 200's head went out).
    if (step.errorBeforeContent) return [events[0].text, 'event: ping\ndata: {"type": "ping"}\n\n', `event: error\ndata: ${JSON.stringify(error)}\n\n`];
    if (step.errorAfterDeltas === undefined || step.errorAfterDeltas === null) return events.map((e) => e.text);
    let seen = 0;
    let cut = events.findIndex((e) => e.delta && seen++ === step.errorAfterDeltas);
    if (cut < 0) cut = events.length - 2; // fewer deltas than asked: fail before message_delta
    return [...events.slice(0, cut).map((e) => e.text), `event: error\ndata: ${JSON.stringify(error)}\n\n`];
  }

  /**
   * Sends a body as a series of writes. `chunkSize` re-cuts the bytes into writes of that size
   * (events then straddle writes); `delayMs` pauses between writes; `resetAfterBytes` drops the
   * connection once exactly that many body bytes were written; `thenHang` keeps it open and
   * silent after the last write.
   */
  async function sendPieces(req, res, pieces, { chunkSize, delayMs, resetAfterBytes, thenHang } = {}) {
    // A Buffer goes out as it is (a test may send one buffer many times without holding copies).
    let bufs = pieces.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)));
    if (chunkSize > 0) {
      const all = Buffer.concat(bufs);
      bufs = [];
      for (let i = 0; i < all.length; i += chunkSize) bufs.push(all.subarray(i, i + chunkSize));
    }
    const resetAt = resetAfterBytes ?? Infinity;
    let sent = 0;
    for (const [i, buf] of bufs.entries()) {
      if (closed || res.destroyed) return;
      if (sent + buf.length >= resetAt) {
        const head = buf.subarray(0, resetAt - sent);
        if (head.length) await writeFlushed(res, head);
        // Let the bytes reach the client before the drop: some clients (Bun's fetch) discard
        // data that arrives in the same read as the connection error.
        await sleep(20);
        return dropConnection(req, res);
      }
      if (!(await write(res, buf))) return;
      sent += buf.length;
      // Yield between writes so each event leaves in its own write, like a real stream.
      if (i < bufs.length - 1) await (delayMs ? sleep(delayMs) : new Promise((r) => setImmediate(r)));
    }
    if (resetAfterBytes !== undefined && resetAfterBytes !== null) {
      await sleep(20);
      return dropConnection(req, res);
    }
    if (thenHang) return park(req, res);
    res.end();
  }

  /** Resolves the waiters whose kind and predicate match a request that just arrived. */
  function arrived(kind, record) {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i];
      if (w.kind === kind && w.predicate(record)) {
        waiters.splice(i, 1);
        w.resolve(record);
      }
    }
  }

  /** Answers a /v1/messages request that passed auth, following `step` (a script entry or {}). */
  async function respondMessage(req, res, step, ctx) {
    // `until`: a promise the test resolves when it is ready for the answer (in-process only).
    if (step.until) await step.until;
    if (step.headersDelayMs) await sleep(step.headersDelayMs);
    if (closed || res.destroyed) return 0;
    if (step.hang) {
      park(req, res);
      return 0;
    }
    const status = step.status ?? 200;
    const extra = step.headers ?? {};
    // `raw`: the body exactly as these pieces (strings or bytes, one write each unless
    // `chunkSize`), with exactly `headers` (no content-type unless given), no length: chunked.
    if (step.raw) {
      res.writeHead(status, extra);
      res.flushHeaders?.();
      await sendPieces(req, res, [step.raw].flat(), step);
      return status;
    }
    if (status !== 200 || step.body !== undefined) {
      const body = step.body ?? apiErrorBody(status);
      const text = typeof body === "string" ? body : JSON.stringify(body);
      res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "request-id": requestId(), ...extra });
      await sendPieces(req, res, [text], step);
      return status;
    }
    const msg = buildMessage(step, ctx);
    const headers = { ...quotaHeaders(ctx.email), "request-id": requestId() };
    if (step.sse ?? ctx.stream) {
      res.writeHead(200, { ...headers, "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", ...extra });
      res.flushHeaders?.();
      await sendPieces(req, res, messageEvents(msg, step), step);
    } else {
      const text = JSON.stringify(messageJson(msg));
      res.writeHead(200, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(text), ...extra });
      await sendPieces(req, res, [text], step);
    }
    return 200;
  }

  /** The next scripted answer for `email` at `path`: a step names its path (`path`), else it is
   * for /v1/messages; a step naming a `model` answers only requests for a model starting with it
   * (a host's side requests, such as OpenCode's session title, come in any order). */
  function nextScriptStep(email, path = "/v1/messages", model = null) {
    const fits = (step) => (step.path ?? "/v1/messages") === path && (step.model === undefined || (model ?? "").startsWith(step.model));
    for (const queue of [scripts.get(email), scriptAllQueue]) {
      const at = queue?.findIndex(fits) ?? -1;
      if (at >= 0) return queue.splice(at, 1)[0];
    }
    return {};
  }

  /** Token counting: the input tokens of a message request, or the scripted answer. */
  async function handleCountTokens(req, res, record, auth, bodyText) {
    if (auth.error) {
      record.status = 401;
      return sendJson(res, 401, apiErrorBody(401, auth.error));
    }
    const step = nextScriptStep(auth.email, "/v1/messages/count_tokens");
    if (step.status) {
      record.status = step.status;
      return respondMessage(req, res, step, {});
    }
    const missing = fileNotSeen(parseOrNull(bodyText), auth.email);
    if (missing) {
      record.status = 404;
      return sendJson(res, 404, apiErrorBody(404, `File not found: ${missing}`));
    }
    record.status = 200;
    sendJson(res, 200, { input_tokens: Math.max(1, Math.ceil(bodyText.length / 4)) });
  }

  async function handleMessages(req, res, record, auth, bodyText) {
    counters.messages++;
    if (auth.email) counters.messagesByAccount[auth.email] = (counters.messagesByAccount[auth.email] ?? 0) + 1;
    if (auth.error) {
      counters.unauthorized++;
      if (auth.none) counters.unauthenticated++;
      record.status = 401;
      return sendJson(res, 401, apiErrorBody(401, auth.error));
    }
    if (auth.kind === "bearer" && requireOAuthBeta && !hasOAuthBeta(req.headers)) {
      counters.unauthorized++;
      record.status = 401;
      return sendJson(res, 401, apiErrorBody(401, "OAuth authentication is currently not supported."));
    }
    let parsed = {};
    try {
      parsed = JSON.parse(bodyText) ?? {};
    } catch {}
    const ctx = {
      email: auth.email,
      stream: parsed.stream === true,
      model: typeof parsed.model === "string" ? parsed.model : DEFAULT_MODEL,
      inputTokens: Math.max(1, Math.ceil(bodyText.length / 4)),
    };
    const step = nextScriptStep(auth.email, "/v1/messages", typeof parsed.model === "string" ? parsed.model : null);
    const missing = step.status || step.hang ? null : fileNotSeen(parsed, auth.email);
    if (missing) {
      record.status = 404;
      return sendJson(res, 404, apiErrorBody(404, `File not found: ${missing}`));
    }
    record.status = step.hang ? "hang" : (step.status ?? 200);
    await respondMessage(req, res, step, ctx);
  }

  function parseOrNull(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  /**
   * The first file a request body refers to (a `source` of type `file`, a `container_upload`)
   * that `email`'s account cannot see: the API answers such a message with a 404
   * not_found_error.
   */
  function fileNotSeen(value, email) {
    if (Array.isArray(value)) {
      for (const v of value) {
        const missing = fileNotSeen(v, email);
        if (missing) return missing;
      }
      return null;
    }
    if (value === null || typeof value !== "object") return null;
    if ((value.type === "file" || value.type === "container_upload") && typeof value.file_id === "string") {
      if (resources.get(value.file_id)?.owner !== email) return value.file_id;
    }
    for (const v of Object.values(value)) {
      const missing = fileNotSeen(v, email);
      if (missing) return missing;
    }
    return null;
  }

  function handleProfile(res, auth) {
    counters.profileCalls++;
    if (auth.kind !== "bearer" || !auth.fam) return sendJson(res, 401, apiErrorBody(401, auth.error));
    const fam = auth.fam;
    sendJson(res, 200, {
      account: { uuid: fam.uuid, email: fam.email, email_address: fam.email, full_name: fam.email.split("@")[0], has_claude_max: true },
      organization: { uuid: fam.orgUuid, name: `${fam.email}'s Organization`, organization_type: "claude_max" },
    });
  }

  function handleUsage(res, auth) {
    if (auth.kind !== "bearer" || !auth.fam) return sendJson(res, 401, apiErrorBody(401, auth.error));
    const u = utilization.get(auth.email) ?? {};
    const iso = (sec) => new Date(sec * 1000).toISOString();
    sendJson(res, 200, {
      five_hour: { utilization: (u.fiveHour ?? 0.1) * 100, resets_at: iso(u.fiveHourReset ?? nowSec() + 3600) },
      seven_day: { utilization: (u.sevenDay ?? 0.2) * 100, resets_at: iso(u.sevenDayReset ?? nowSec() + 86400) },
      seven_day_opus: null,
      seven_day_sonnet: null,
      extra_usage: { is_enabled: false, monthly_limit: null, used_credits: null, utilization: null },
    });
  }

  function handleCreateApiKey(res, auth) {
    if (auth.kind !== "bearer" || !auth.fam) return sendJson(res, 401, apiErrorBody(401, auth.error));
    const key = newToken("api03");
    apiKeys.set(key, auth.email);
    sendJson(res, 200, { raw_key: key });
  }

  // Files and message batches as the API keeps them: each is the account's that made it, and
  // any other account asking for one gets a 404 not_found_error.
  const resources = new Map(); // id -> { owner, type, content }
  function handleResources(req, res, record, auth, url, text) {
    if (!auth.email) {
      record.status = 401;
      return sendJson(res, 401, apiErrorBody(401, auth.error));
    }
    const step = nextScriptStep(auth.email, url.pathname);
    if (step.status) {
      record.status = step.status;
      return respondMessage(req, res, step, {});
    }
    const parts = url.pathname.split("/").filter(Boolean);
    const files = parts[1] === "files";
    const [at, type, prefix] = files ? [2, "file", "file_"] : [3, "message_batch", "msgbatch_"];
    record.status = 200;
    if (parts.length === at) {
      if (req.method === "GET") {
        const data = [...resources].filter(([, r]) => r.owner === auth.email && r.type === type).map(([id]) => ({ id, type }));
        return sendJson(res, 200, { data, has_more: false });
      }
      const missing = files ? null : fileNotSeen(parseOrNull(text), auth.email);
      if (missing) {
        record.status = 404;
        return sendJson(res, 404, apiErrorBody(404, `File not found: ${missing}`));
      }
      // An id of the API's shape: a kind, `_`, then letters and digits.
      const id = `${prefix}01${randomBytes(16).toString("hex")}`;
      resources.set(id, { owner: auth.email, type, content: files ? text : batchResults(text, auth.email) });
      return sendJson(res, 200, describe(id, type));
    }
    const [id, action] = parts.slice(at);
    const found = resources.get(id);
    if (found?.owner !== auth.email) {
      record.status = 404;
      return sendJson(res, 404, apiErrorBody(404, `${type} ${id} not found`));
    }
    if (req.method === "DELETE") {
      resources.delete(id);
      return sendJson(res, 200, { id, type: `${type}_deleted` });
    }
    if (action === "cancel") return sendJson(res, 200, { ...describe(id, type), processing_status: "canceling" });
    if (action === "content" || action === "results") {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": Buffer.byteLength(found.content) });
      return res.end(found.content);
    }
    return sendJson(res, 200, describe(id, type));
  }

  /** A file or a batch as the API describes it; a batch has ended, its results on this origin. */
  function describe(id, type) {
    if (type !== "message_batch") return { id, type };
    const origin = resultsOrigin ?? `http://127.0.0.1:${server.address().port}`;
    return { id, type, processing_status: "ended", results_url: `${origin}/v1/messages/batches/${id}/results` };
  }

  /** A batch's results (JSON lines): each request answered by the account that holds the batch. */
  function batchResults(text, email) {
    let requests = [];
    try {
      requests = JSON.parse(text).requests ?? [];
    } catch {}
    const line = ({ custom_id }) => ({
      custom_id,
      result: {
        type: "succeeded",
        message: { id: `msg_mock_${rand(8)}`, type: "message", role: "assistant", content: [{ type: "text", text: `Hello from ${email}` }] },
      },
    });
    return requests.map((r) => `${JSON.stringify(line(r))}\n`).join("");
  }

  /** Everything on the API origin except the token endpoint, bench and control routes. */
  async function handleApi(req, res, url) {
    // Sub-millisecond wall-clock marks, comparable across processes (the failover benchmark
    // measures from a 429 leaving here to the retried request arriving).
    const hr = () => performance.timeOrigin + performance.now();
    const arrivedHr = hr();
    const { text, bytes, tooLarge } = await readBody(req, API_BODY_LIMIT);
    const auth = resolveAuth(req.headers);
    const record = {
      at: Date.now(),
      path: req.url,
      method: req.method,
      headers: { ...req.headers },
      body: text,
      email: auth.error ? null : auth.email,
      auth: auth.both ? null : auth.kind,
      status: null,
      arrivedHr,
      finishedHr: null,
    };
    // The body's exact bytes (`body` is their UTF-8 reading), kept off the JSON of the control
    // route.
    Object.defineProperty(record, "bytes", { value: bytes, enumerable: false });
    res.on("finish", () => {
      record.finishedHr = hr();
    });
    // A client (or a gateway in front of us) that goes away before the answer ended.
    res.on("close", () => {
      if (!res.writableFinished) {
        record.closedEarly = true;
        arrived("closed", record);
      }
    });
    requests.push(record);
    arrived("api", record);
    if (tooLarge) {
      record.status = 413;
      return sendJson(res, 413, apiErrorBody(413));
    }
    const route = `${req.method} ${url.pathname}`;
    if (route === "POST /v1/messages") return handleMessages(req, res, record, auth, text);
    if (route === "POST /v1/messages/count_tokens") return handleCountTokens(req, res, record, auth, text);
    record.status = auth.fam ? 200 : 401;
    if (route === "GET /api/oauth/profile") return handleProfile(res, auth);
    if (route === "GET /api/oauth/usage") return handleUsage(res, auth);
    if (route === "POST /api/oauth/claude_cli/create_api_key") return handleCreateApiKey(res, auth);
    if (/^\/v1\/(files|messages\/batches)(\/|$)/.test(url.pathname)) return handleResources(req, res, record, auth, url, text);
    record.status = 404;
    sendJson(res, 404, apiErrorBody(404, `Not found: ${req.method} ${url.pathname}`));
  }

  // --- bench endpoints (no auth, counted only) -------------------------------------------------
  const SMALL = JSON.stringify({ id: "bench_small", type: "message", role: "assistant", content: [{ type: "text", text: "ok" }], padding: "x".repeat(100) });
  const patterns = new Map(); // chunk size -> reusable buffer

  async function handleBench(req, res, url) {
    for await (const _ of req); // drain any request body so keep-alive works
    const q = url.searchParams;
    if (url.pathname === "/bench/small") {
      counters.bench.small++;
      return sendJson(res, 200, SMALL);
    }
    if (url.pathname === "/bench/bytes") {
      counters.bench.bytes++;
      const n = Math.max(0, Number(q.get("n") ?? 1 << 20) | 0);
      const chunk = Math.max(1, Number(q.get("chunk") ?? 64 * 1024) | 0);
      if (!patterns.has(chunk)) patterns.set(chunk, Buffer.alloc(chunk, "abcdefghijklmnopqrstuvwxyz0123456789"));
      const buf = patterns.get(chunk);
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": n });
      for (let left = n; left > 0; left -= chunk) {
        if (!(await write(res, left >= chunk ? buf : buf.subarray(0, left)))) return;
      }
      return res.end();
    }
    if (url.pathname === "/bench/sse") {
      counters.bench.sse++;
      const events = Math.max(0, Number(q.get("events") ?? 10) | 0);
      const intervalMs = Math.max(0, Number(q.get("intervalMs") ?? 0));
      // `pad=N`: each event carries N more bytes of text (a stream of real size, for throughput).
      const pad = "x".repeat(Math.min(1 << 20, Math.max(0, Number(q.get("pad") ?? 0) | 0)));
      res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" });
      res.flushHeaders?.();
      for (let i = 0; i < events; i++) {
        if (i > 0 && intervalMs) await sleep(intervalMs);
        // Wall-clock epoch ms with sub-ms precision, comparable across processes on one machine.
        const t = performance.timeOrigin + performance.now();
        const event = pad ? { t, i, text: pad } : { t, i };
        if (!(await write(res, `data: ${JSON.stringify(event)}\n\n`))) return;
      }
      return res.end();
    }
    sendJson(res, 404, apiErrorBody(404));
  }

  // --- control routes (for other processes) ----------------------------------------------------
  /** A control call that only does something answers `{ ok: true }`. */
  const done = () => ({ ok: true });
  const control = {
    "POST /__mock/account": (b) => mock.addAccount(b.email, b),
    "POST /__mock/api-key": (b) => done(mock.addApiKey(b.key, b.email)),
    "POST /__mock/approve": (b) => {
      const paste = mock.approve(b.url, b.email, b);
      const redirect = new URL(b.url).searchParams.get("redirect_uri") ?? DEFAULT_REDIRECT_URI;
      return { paste, callbackUrl: callbackUrlFromPaste(paste, redirect) };
    },
    "POST /__mock/script": (b) => done(b.email ? mock.script(b.email, b.responses) : mock.scriptAll(b.responses)),
    "POST /__mock/token-mode": (b) => done(mock.setTokenMode(b?.clear ? null : b)),
    "POST /__mock/utilization": (b) => done(mock.setUtilization(b.email, b)),
    "POST /__mock/rotate": (b) => mock.rotate(b.email),
    "POST /__mock/revoke": (b) => done(mock.revoke(b.email, b)),
    "POST /__mock/clear-requests": () => done(mock.clearRequests()),
    "POST /__mock/clear-scripts": () => done(mock.clearScripts()),
    "GET /__mock/stats": () => mock.stats(),
    "GET /__mock/requests": () => requests.map((r) => ({ ...r, headers: maskHeaders(r.headers) })),
    "GET /__mock/token-requests": () =>
      tokenRequests.map((r) => {
        const body = typeof r.body === "object" ? { ...r.body } : r.body;
        if (typeof body === "object") for (const k of ["refresh_token", "code", "code_verifier"]) if (k in body) body[k] = mask(body[k]);
        return { ...r, headers: maskHeaders(r.headers), body };
      }),
  };

  async function handleControl(req, res, url) {
    const fn = control[`${req.method} ${url.pathname}`];
    const { text } = await readBody(req, API_BODY_LIMIT);
    if (!fn) return sendJson(res, 404, { error: `no control route ${req.method} ${url.pathname}` });
    try {
      sendJson(res, 200, (await fn(text ? JSON.parse(text) : {})) ?? { ok: true });
    } catch (e) {
      sendJson(res, 400, { error: String(e?.message ?? e) });
    }
  }

  // --- server ----------------------------------------------------------------------------------
  async function route(req, res) {
    const url = new URL(req.url, "http://127.0.0.1");
    req.socket?.setNoDelay?.(true);
    if (url.pathname === "/v1/oauth/token") {
      if (req.method !== "POST") return sendJson(res, 405, apiErrorBody(405, "Method not allowed"));
      return handleToken(req, res);
    }
    if (url.pathname.startsWith("/bench/")) return handleBench(req, res, url);
    // The same endpoints under /v1, where a gateway forwards them (bench/gateway.mjs).
    if (url.pathname.startsWith("/v1/bench/")) return handleBench(req, res, new URL(url.pathname.slice(3) + url.search, url));
    if (url.pathname.startsWith("/__mock/")) return handleControl(req, res, url);
    return handleApi(req, res, url);
  }

  const server = http.createServer((req, res) => {
    // Sockets are also tracked per request: Bun's server may not emit 'connection'.
    if (req.socket) trackSocket(req.socket);
    route(req, res).catch((e) => {
      if (!res.headersSent && !res.destroyed) sendJson(res, 500, apiErrorBody(500, `mock error: ${e?.message ?? e}`));
      else dropConnection(req, res);
    });
  });
  function trackSocket(s) {
    if (sockets.has(s)) return;
    sockets.add(s);
    s.once?.("close", () => sockets.delete(s));
  }
  server.on("connection", trackSocket);
  server.keepAliveTimeout = 5000;

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const url = `http://127.0.0.1:${server.address().port}`;

  // --- public API ------------------------------------------------------------------------------
  const mock = {
    url,
    tokenUrl: `${url}/v1/oauth/token`,
    port: server.address().port,
    /** Every API-origin request (messages, profile, usage, 404s) in arrival order. */
    get requests() {
      return requests;
    },
    /** Every token-endpoint request: { at, grant, headers, body (parsed), status, reject }. */
    get tokenRequests() {
      return tokenRequests;
    },

    /** Registers a logged-in account (a fresh token family) and returns its tokens. */
    addAccount(email, opts = {}) {
      return publicTokens(createFamily(email, opts));
    },

    /** Current tokens of the email's family (e.g. to check what the pool file should hold). */
    tokens(email) {
      const fam = families.get(email);
      return fam ? publicTokens(fam) : null;
    },

    addApiKey(key, email) {
      if (!key || !email) throw new Error("key and email are required");
      apiKeys.set(key, email);
    },

    /**
     * The user logs in on claude.ai: binds a single-use code to the authorize URL's PKCE
     * challenge, state, redirect_uri and client_id, and returns the `code#state` paste.
     * `opts` ({ expiresIn, includeEmail }) shape the family created at exchange time.
     */
    approve(authorizeUrl, email, opts = {}) {
      const q = new URL(authorizeUrl).searchParams;
      const challenge = q.get("code_challenge");
      if (!challenge) throw new Error("authorize URL has no code_challenge");
      if (q.get("code_challenge_method") !== "S256") throw new Error("authorize URL must use code_challenge_method=S256");
      if (q.get("response_type") !== "code") throw new Error("authorize URL must use response_type=code");
      if (!email) throw new Error("email is required");
      const state = q.get("state") ?? "";
      const code = `mock-code-${rand(24)}`;
      authCodes.set(code, {
        challenge,
        state,
        redirectUri: q.get("redirect_uri"),
        clientId: q.get("client_id"),
        email,
        opts: { expiresIn: opts.expiresIn, includeEmail: opts.includeEmail },
        used: false,
      });
      return `${code}#${state}`;
    },

    /**
     * Token-endpoint faults for the next calls, replacing any queued ones. Accepts a mode, an
     * array of modes (a queue), or { mode, times }. Each mode applies `times` calls (default 1;
     * Infinity or -1 = until cleared) and may be limited to one `grant`; `until` (a promise, in
     * process only) holds the answer until it resolves; `reshape(body)` (in process only) gives
     * the body a granted call answers with; `edit` alters a successful answer. null clears.
     */
    setTokenMode(modes) {
      const list = modes == null ? [] : Array.isArray(modes) ? modes : [modes];
      tokenModes = list.map((m) => {
        const inner = m.mode && typeof m.mode === "object" ? { ...m.mode, grant: m.grant ?? m.mode.grant } : { ...m };
        const times = m.times ?? m.mode?.times ?? 1;
        return { ...inner, times: times === -1 || times === Infinity ? Infinity : times };
      });
    },

    /** Sets the reuse grace window (ms) of a running mock; 0 turns it off. */
    setReuseGrace(ms) {
      reuseGraceMs = ms;
    },

    /** Queues /v1/messages answers for one account (consumed in order, then the default); a step
     * with a `path` answers a request to that path instead (token counting, files, batches). */
    script(email, responses) {
      if (!scripts.has(email)) scripts.set(email, []);
      scripts.get(email).push(...[responses].flat());
    },

    /** The origin a batch's `results_url` names (null: this server's), as a relay in front of
     * the API passes the API's answers on. */
    setResultsOrigin(origin) {
      resultsOrigin = origin;
    },

    /** Makes a file on `email`'s account as another client of that account would (not through
     * the pool); returns its id. */
    makeFile(email, content) {
      const id = `file_01${randomBytes(16).toString("hex")}`;
      resources.set(id, { owner: email, type: "file", content });
      return id;
    },

    /** Drops every queued /v1/messages answer (per account and for all). */
    clearScripts() {
      scripts.clear();
      scriptAllQueue.length = 0;
    },

    /** Queues answers for whichever authenticated account asks next (after its own script). */
    scriptAll(responses) {
      scriptAllQueue.push(...[responses].flat());
    },

    /** Passive quota headers on 200s for this account: fractions and epoch-second resets. */
    setUtilization(email, { fiveHour, sevenDay, fiveHourReset, sevenDayReset, status, scoped, scopedReset } = {}) {
      const prev = utilization.get(email) ?? {};
      const next = { fiveHour, sevenDay, fiveHourReset, sevenDayReset, status, scoped, scopedReset };
      for (const k of Object.keys(next)) if (next[k] === undefined) delete next[k];
      utilization.set(email, { ...prev, ...next });
    },

    /** Rotates the family as another client (e.g. Claude Code) would; returns the new tokens. */
    rotate(email) {
      const fam = families.get(email);
      if (!fam) throw new Error(`no account ${email}`);
      rotate(fam);
      return publicTokens(fam);
    },

    /** Revokes the current access token only (refresh still works), or the whole family. */
    revoke(email, { family = false } = {}) {
      const fam = families.get(email);
      if (!fam) throw new Error(`no account ${email}`);
      if (family) fam.revoked = true;
      else fam.accessRevoked = true;
    },

    /**
     * Resolves with the record of the next request of `kind` ("api" or "token") that matches
     * `predicate`: a signal that a client's request has arrived, instead of a sleep.
     */
    waitFor(kind, predicate = () => true) {
      return new Promise((resolve) => waiters.push({ kind, predicate, resolve }));
    },

    clearRequests() {
      requests.length = 0;
      tokenRequests.length = 0;
    },

    /** Connections open to the mock now (any state: in use, idle kept alive, half-read). */
    get openConnections() {
      return sockets.size;
    },

    stats() {
      const perFamily = {};
      for (const [email, f] of families)
        perFamily[email] = {
          generation: f.generation,
          refreshCalls: f.refreshCalls,
          perGeneration: { ...f.perGeneration },
          reuse: f.reuse,
          revoked: f.revoked,
          lostAnswers: f.lostAnswers,
          answeredAt: [...f.answeredAt],
          reuseLog: f.reuseLog.map((r) => ({ ...r })),
        };
      return structuredClone({ ...counters, perFamily, pendingTokenModes: tokenModes.length });
    },

    /** Stops listening and kills every connection, including hung ones. */
    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      for (const { req, res } of parked) dropConnection(req, res);
      for (const s of sockets) s.destroy();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
  return mock;
}

// ---------------------------------------------------------------------------------------------
// Standalone process mode

function isMainModule() {
  try {
    return !!process.argv[1] && realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

// Only watch stdin when it is a pipe from a parent: /dev/null or a TTY would end at once or never.
function stdinIsPipe() {
  try {
    const st = fstatSync(0);
    return st.isFIFO() || st.isSocket();
  } catch {
    return false;
  }
}

async function main(argv) {
  const i = argv.indexOf("--port");
  const port = i >= 0 ? Number(argv[i + 1]) : 0;
  const reuseGrace = argv.indexOf("--reuse-grace-ms");
  const mock = await startMockAnthropic({
    port,
    requireOAuthBeta: !argv.includes("--no-require-oauth-beta"),
    reuseGraceMs: reuseGrace >= 0 ? Number(argv[reuseGrace + 1]) : 0,
  });
  process.stdout.write(`${JSON.stringify({ url: mock.url, tokenUrl: mock.tokenUrl, pid: process.pid })}\n`);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    mock.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref(); // never linger on a stuck close
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  if (stdinIsPipe()) {
    process.stdin.on("end", stop);
    process.stdin.on("close", stop);
    process.stdin.on("error", stop);
    process.stdin.resume();
  }
}

if (isMainModule()) {
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`mock-anthropic: ${e?.stack ?? e}\n`);
    process.exit(1);
  });
}
