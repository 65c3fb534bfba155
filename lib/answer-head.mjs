// The head of an answer the runtime's fetch received, as the runtime transport hands it over
// (lib/runtime-fetch.mjs): what the engine judges, the framing and codings read apart, and the
// headers the caller gets, without the hop's own and without any echo of the credential the
// attempt presented. The Rust client does the same for its answers (src/fetch.rs, src/echo.rs).
import { engineReadsHeader } from "./exchange.mjs";

// Headers about the hop the answer came over, not the body handed over, dropped as the Rust
// client drops them (src/fetch.rs, DROPPED_FROM_ANSWER; `content-length`, `transfer-encoding`
// and `connection` are read apart in `readHead`): a gateway relayed them as if about its own hop.
const HOP_BY_HOP = new Set(["keep-alive", "proxy-connection", "upgrade", "te", "trailer"]);

// The codings the runtime's fetch takes off a body itself, keeping the header as sent: Node's
// (undici 6) decodes a list of gzip, deflate and br and leaves any other list as sent; Bun's
// decodes one coding, zstd too, and leaves a list of two as sent.
const BUN = typeof Bun !== "undefined";
const DECODED = new Set(BUN ? ["gzip", "x-gzip", "deflate", "br", "zstd"] : ["gzip", "x-gzip", "deflate", "br"]);

/** The names in a list-valued header (`content-encoding`, `transfer-encoding`), lower-cased. */
function listed(value) {
  return value
    .toLowerCase()
    .split(",")
    .map((c) => c.trim());
}

/** The codings of a list that do something: empty entries and `identity` set aside. */
const applied = (codings) => codings.filter((c) => c !== "" && c !== "identity");

/**
 * Whether the runtime decoded a body sent with this `content-encoding`: Node's every listed
 * coding (an empty entry or `identity` is one it does not know, and it leaves the list as sent),
 * Bun's the one coding left once empty entries and `identity` are set aside (Bun 1.4: "gzip,
 * identity" is decoded, "gzip, gzip" is not).
 */
export function runtimeDecoded(coding) {
  const codings = listed(coding);
  if (!BUN) return codings.every((c) => DECODED.has(c));
  const named = applied(codings);
  return named.length === 1 && DECODED.has(named[0]);
}

// The compressions with a registered name, said by name where a coding is quoted.
const COMPRESSIONS = new Set(["gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress"]);

/**
 * Why an answer framed in this `transfer-encoding` is refused, or null: only `chunked` is read,
 * as the Rust client reads it (src/coding.rs, `received`). Nothing asks for another (no `TE` is
 * sent); the runtime's fetch takes off the chunking and hands over what is left, a body in gzip
 * labelled as nothing, past the gateway's check of codings and the echo scrubber.
 */
export function unreadFraming(framing) {
  const named = applied(listed(framing));
  if (named.every((c) => c === "chunked")) return null;
  // Only the registered names are said, as the Rust client says them (src/coding.rs,
  // `said_coding`): the rest is the server's text, which held the credential in hex or base64
  // (and a C1 control, a terminal's CSI).
  const shown = named.map((c) => (c === "chunked" || COMPRESSIONS.has(c) ? c : "a coding of no registered name")).join(", ");
  return `the answer is framed in transfer-encoding ${shown}, which nothing asked for (only chunked is read): its body cannot be handed on as sent`;
}

/** The credential an attempt presented, from the headers the engine gave it (lower-case names). */
export function presented(headers) {
  for (const [name, value] of headers) {
    if (name === "authorization") return value.startsWith("Bearer ") ? value.slice(7) : null;
    if (name === "x-api-key") return value;
  }
  return null;
}

/** The last credential's forms (`echoForms`): one credential serves request after request. */
let formsOf = { secret: null, forms: [] };

/**
 * The credential and the shapes a server echoing it may give it in, as the Rust driver looks
 * for them (src/echo.rs, `reshaped`): base64 in either alphabet at each of the three places it
 * can fall among a longer value's groups of three bytes, and hex. Each is the part of the
 * encoding the credential alone decides. None for a value too short to be a credential.
 */
export function echoForms(secret) {
  if (!secret || secret.length < 16) return [];
  if (formsOf.secret === secret) return formsOf.forms;
  const bytes = Buffer.from(secret);
  const forms = new Set([secret]);
  for (let skip = 0; skip < 3; skip++) {
    const rest = bytes.subarray(skip);
    const whole = rest.subarray(0, rest.length - (rest.length % 3));
    forms.add(whole.toString("base64"));
    forms.add(whole.toString("base64url"));
  }
  const hex = bytes.toString("hex");
  forms.add(hex);
  forms.add(hex.toUpperCase());
  // Its random part alone, the `sk-ant-<kind>-` prefix left out, as a server may quote it.
  const core = /^sk-ant-[a-z0-9]+-(.+)$/.exec(secret)?.[1];
  if (core) forms.add(core);
  formsOf = { secret, forms: [...forms].filter((f) => f.length >= 16) };
  return formsOf.forms;
}

const REDACTED = Buffer.from("[redacted]");

/**
 * A body without the credential's forms (`echoForms`), as it streams: `pass(chunk)` gives what
 * can go on now, holding back an end that may be the start of one, and `finish()` what was held
 * when the body ends. The Rust transport does the same (src/echo.rs `Redactor`): a server echoing
 * the request (a wrong API URL, a debugging proxy) put the token in an answer OpenCode shows,
 * keeps in its session files and shares.
 */
export class BodyScrubber {
  constructor(forms) {
    this.forms = forms.map((f) => Buffer.from(f));
    this.held = null;
  }

  pass(chunk) {
    const joined = this.held !== null;
    if (chunk.byteLength === 0 && !joined) return chunk;
    const view = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let data = joined ? Buffer.concat([this.held, view]) : view;
    this.held = null;
    let cut = false;
    for (const form of this.forms) {
      let at = data.indexOf(form);
      if (at === -1) continue;
      const parts = [];
      let from = 0;
      for (; at !== -1; at = data.indexOf(form, from)) {
        parts.push(data.subarray(from, at), REDACTED);
        from = at + form.length;
      }
      parts.push(data.subarray(from));
      data = Buffer.concat(parts);
      cut = true;
    }
    const keep = this.startAtEnd(data);
    if (keep > 0) {
      this.held = Buffer.from(data.subarray(data.length - keep));
      data = data.subarray(0, data.length - keep);
    }
    return cut || keep > 0 || joined ? new Uint8Array(data) : chunk;
  }

  /** A whole body, scrubbed. */
  whole(bytes) {
    const start = this.pass(bytes);
    const rest = this.finish();
    return rest ? Buffer.concat([start, rest]) : start;
  }

  finish() {
    const rest = this.held;
    this.held = null;
    return rest ? new Uint8Array(rest) : null;
  }

  /** How many of `data`'s last bytes are the start of a form (the longest such start). */
  startAtEnd(data) {
    let most = 0;
    for (const form of this.forms) {
      const span = Math.min(form.length - 1, data.length);
      for (let at = data.indexOf(form[0], data.length - span); at !== -1; at = data.indexOf(form[0], at + 1)) {
        const tail = data.length - at;
        if (tail > most && data.subarray(at).equals(form.subarray(0, tail))) most = tail;
      }
    }
    return most;
  }
}

/** A header name as HTTP has it (RFC 9110 5.1), lower-cased as the runtime gives it. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;

/** The forms lower-cased, as a header's name comes: a name cannot be scrubbed, only dropped. */
let namesOf = { forms: null, names: [] };
function nameForms(forms) {
  if (namesOf.forms !== forms) namesOf = { forms, names: [...new Set(forms.map((f) => f.toLowerCase()))] };
  return namesOf.names;
}

/**
 * A text of the answer's head (a header value, the reason phrase) without the credential. A
 * value holding it with blanks or commas in it (folded over lines, which the runtime reads as a
 * space; said over two lines of one name, which `Headers` joins with ", ") goes whole, as the
 * Rust client's (src/echo.rs, `scrub_known`).
 */
function withoutSecret(text, forms) {
  if (text.length < 16) return text;
  let out = text;
  for (const form of forms) if (out.includes(form)) out = out.split(form).join("[redacted]");
  if (/[ \t,]/.test(out)) {
    const joined = out.replace(/[ \t,]/g, "");
    if (forms.some((form) => joined.includes(form))) return "[redacted]";
  }
  return out;
}

/**
 * The server's reason phrase as the Rust client gives it: empty when it holds anything but
 * printable ASCII (httparse's rule). Node's fetch reads it as UTF-8, and a character past U+00FF
 * made `new Response` throw: the whole answer was lost to a TypeError without a code.
 */
export function reasonPhrase(text, forms) {
  return /[^\t\x20-\x7e]/.test(text) ? "" : withoutSecret(text, forms);
}

/**
 * The answer's head, read in one pass over its headers (each pass and each lookup in a
 * `Headers` costs Bun a few microseconds between round trips): the lines the engine judges
 * (`judgeAnswer`), the framing and coding headers, and the headers handed over. Those drop
 * what described the wire, not the body handed over (the Response re-frames it), as the Rust
 * client does (src/fetch.rs, DROPPED_FROM_ANSWER), and any echo of the presented credential (a
 * server may send back what it was sent; the caller of the pool never holds its tokens
 * otherwise; a header named after it is dropped), as the Rust driver does (src/echo.rs).
 * `content-encoding` is kept apart: it is handed over only when the runtime did not decode
 * the body.
 */
export function readHead(response, forms) {
  let lines = "";
  let length = null;
  let type = null;
  let coding = null;
  let framing = null;
  let named = null;
  const kept = [];
  const names = nameForms(forms);
  let badName = false;
  for (const [name, value] of response.headers) {
    // Node's fetch takes a name `Headers` refuses ("x a"): the answer could not be handed
    // over, and failed with a TypeError of no code (the Rust client refuses such a head).
    if (!BUN && !TOKEN.test(name)) badName = true;
    if (engineReadsHeader(name)) lines += `${name}:${value}\n`;
    if (name === "content-length") {
      length = value;
      continue;
    }
    if (name === "transfer-encoding") {
      framing = value;
      continue;
    }
    if (name === "connection") {
      named = value;
      continue;
    }
    if (HOP_BY_HOP.has(name)) continue;
    if (name.length >= 16 && names.some((f) => name.includes(f))) continue;
    const clean = withoutSecret(value, forms);
    if (name === "content-encoding") {
      coding = clean;
      continue;
    }
    if (name === "content-type") type = value;
    kept.push([name, clean]);
  }
  // What `Connection` names was for this hop alone; a coding the body is still in stays named
  // whatever it says (dropped, a relay would pass on coded bytes as plain).
  const hop = named === null ? [] : listed(named).filter((n) => n !== "" && n !== "content-encoding");
  return { lines, length, type, coding, framing, badName, kept: hop.length ? kept.filter(([n]) => !hop.includes(n)) : kept };
}

/**
 * `response` without the credential's forms in its head or its body (`BodyScrubber`): for an
 * answer the host's own fetch got (OpenCode 2's hooks), which no transport of ours read.
 */
export function withoutEcho(response, forms) {
  if (!forms.length) return response;
  const names = nameForms(forms);
  const headers = new Headers();
  for (const [name, value] of response.headers) {
    if (name.length >= 16 && names.some((f) => name.includes(f))) continue;
    headers.append(name, withoutSecret(value, forms));
  }
  let body = response.body;
  if (body) {
    const scrubber = new BodyScrubber(forms);
    body = body.pipeThrough(
      new TransformStream({
        transform(chunk, out) {
          const piece = scrubber.pass(chunk);
          if (piece.byteLength) out.enqueue(piece);
        },
        flush(out) {
          const rest = scrubber.finish();
          if (rest) out.enqueue(rest);
        },
      }),
    );
  }
  return new Response(body, { status: response.status, statusText: withoutSecret(response.statusText, forms), headers });
}

/**
 * The Response handed over, with the head `readHead` kept and its `content-encoding` unless
 * `decoded` (the runtime took it off the body: a caller relaying it would decode it again, and
 * the compressed length cut it short).
 */
export function handedOver(body, status, statusText, head, decoded, length = null) {
  let headers = head.coding === null || decoded ? head.kept : [...head.kept, ["content-encoding", head.coding]];
  if (length !== null) headers = [...headers, ["content-length", length]];
  return new Response(body, { status, statusText, headers });
}
