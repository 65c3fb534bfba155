// The library's functions: each validates its arguments (a wrong type rejects with
// INVALID_ARGUMENT and a sentence, never napi's `StringExpected`), then calls Rust, and every
// rejection carries `err.code`. One set of wrappers, used by index.mjs, the plugin and the CLI.
import { native } from "./native.mjs";
import { scrubbed, settle, toPoolError, wrap } from "./errors.mjs";

/** A synchronous native call: napi-rs can return the Error instead of throwing it. */
function sync(value) {
  if (value instanceof Error) throw toPoolError(value);
  return value;
}

export function invalidArgument(message) {
  const err = new Error(message);
  err.code = "INVALID_ARGUMENT";
  return err;
}

/**
 * A wrong value as a message quotes it. A string is scrubbed of token shapes before it is cut: a
 * key or token handed in the wrong place (`addApiKey(email, key)`, arguments swapped) was quoted
 * for 40 characters, 27 of them the secret's.
 */
export function shown(value) {
  if (value === null) return "null";
  try {
    // A Proxy's trap (getPrototypeOf, a revoked one) throws here: what it is, said plainly.
    if (Array.isArray(value)) return "an array";
    if (value instanceof Date) return "a Date";
  } catch {
    return "an object";
  }
  if (typeof value === "string") return JSON.stringify(cut(scrubbed(value), 40));
  if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint") return String(value);
  if (value === undefined) return "nothing";
  return typeof value === "object" ? objectKind(value) : `a ${typeof value}`;
}

// "a Map", "a Foo": what a refused object is, when it is not a plain one. Its class's name only
// when it reads as one (a name can be set to anything), and nothing a Proxy's trap throws.
function objectKind(value) {
  let name;
  try {
    const proto = Object.getPrototypeOf(value);
    if (proto === Object.prototype || proto === null) return "an object";
    name = proto.constructor?.name;
  } catch {
    return "an object";
  }
  if (typeof name !== "string" || !/^[A-Za-z_$][\w$]{0,39}$/.test(name)) return "an object";
  return `${/^[AEIOU]/.test(name) ? "an" : "a"} ${name}`;
}

const cut = (text, most) => (text.length > most ? `${text.slice(0, most)}...` : text);

// An object literal, or one without a prototype (`Object.create(null)`, as some parsers and
// merges make them): data, as JSON has it.
const isPlainObject = (v) => {
  if (v === null || typeof v !== "object" || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

/** An optional string argument (undefined/null mean "not given"). */
export function optionalString(name, value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw invalidArgument(`${name} must be a string, got ${shown(value)}`);
  return value;
}

export function requiredString(name, value) {
  if (typeof value !== "string") throw invalidArgument(`${name} must be a string, got ${shown(value)}`);
  return value;
}

/**
 * An options object, its null members left out: null is "not given" for every option alike
 * (`serve({ headerTimeoutMs: null })` was refused as not a whole number).
 */
function optionalObject(name, value, keys) {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || readable(name, () => Array.isArray(value))) throw invalidArgument(`${name} must be an object, got ${shown(value)}`);
  if (keys) knownOptions(name, value, keys);
  return readable(name, () => Object.fromEntries(Object.entries(value).filter(([, v]) => v !== null)));
}

/**
 * What `read` gives from a caller's argument; a throw of the caller's own code (a getter, a
 * Proxy's trap) is INVALID_ARGUMENT with it as the cause: it came back as the caller's own
 * uncoded Error, where every rejection carries a code.
 */
export function readable(name, read) {
  try {
    return read();
  } catch (e) {
    if (e?.code === "INVALID_ARGUMENT") throw e;
    const err = invalidArgument(`${name} could not be read (${cut(scrubbed(e?.message ?? e), 120)})`);
    err.cause = e;
    throw err;
  }
}

/**
 * Refuses an option `what` does not take. A misspelt one (`{ pth }`, `{ prot: 0 }`) was ignored
 * and the call went on with the default: the default pool file, port 8787.
 */
export function knownOptions(what, options, keys) {
  for (const k of readable(what, () => Object.keys(options))) {
    if (!keys.includes(k)) {
      throw invalidArgument(`${what}: no option ${JSON.stringify(cut(scrubbed(k), 64))} (the options: ${keys.join(", ")})`);
    }
  }
}

function pathArg(path) {
  return optionalString("path", path);
}

// How deep a pool may nest: the reader refuses past 128 levels (src/unique_keys.rs, DEPTH_READ),
// so a deeper pool was written and could never be read again; and one of 100,000 levels
// overflowed the stack here, a RangeError with no code. The same limit: a file `loadPool` read
// (another writer's section 110 deep) could not be saved back. Counted here as containers
// below the pool; the reader counts one level more.
const MAX_DEPTH = 127;
// Every value takes at least two bytes of the file, and a read takes 32 MB: more values than this
// cannot make a pool file. An array given a length of 2^32 - 1 (holes, no memory) was walked
// for minutes under Node, and under Bun the addon asked for 300 GB and the process aborted.
const MAX_VALUES = 16 * 1024 * 1024;

/**
 * Where in the pool a value is, for a message: built only when one is thrown (a pool of many
 * accounts was walked building a string per value), each key scrubbed and cut (a key may be a
 * token pasted in the wrong place, or a megabyte long), the whole cut from its start.
 */
function placeOf(at) {
  const steps = [];
  for (let s = at; s; s = s.up) steps.push(typeof s.step === "number" ? `[${s.step}]` : s.up ? `.${cut(scrubbed(s.step), 40)}` : s.step);
  const place = steps.reverse().join("");
  return place.length > 200 ? `${place.slice(0, 200)}...` : place;
}

/**
 * A pool handed to savePool must be plain JSON: NaN, Infinity, functions, symbols, BigInts,
 * cycles and array holes cannot be stored and are refused rather than silently turned into
 * null; a pool nested deeper or holding more values than a pool file can is refused too.
 * Returns the copy the addon is given, each value read once: a getter read again by the addon
 * may answer otherwise than it did here. Its objects have no prototype, so that an own
 * `__proto__` key stays a key.
 */
function plainJson(value, at, seen = new Set(), depth = 0, count = { values: 0 }) {
  if (++count.values > MAX_VALUES) throw poolInvalid(`${placeOf(at)}: the pool holds more than the ${MAX_VALUES} values a pool file can; nothing was written`);
  switch (typeof value) {
    case "string":
    case "boolean":
    case "undefined":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw invalidArgument(`${placeOf(at)} is ${value}: a pool holds finite numbers only`);
      return value;
    case "object": {
      if (value === null) return null;
      if (seen.has(value)) throw invalidArgument(`${placeOf(at)} refers back to itself: a pool must be plain JSON`);
      if (depth >= MAX_DEPTH) {
        throw poolInvalid(`${placeOf(at)} is nested more than ${MAX_DEPTH} levels deep, more than a pool file can be read with; nothing was written`);
      }
      seen.add(value);
      let copy;
      if (Array.isArray(value)) {
        const length = value.length;
        if (length > MAX_VALUES - count.values) {
          throw poolInvalid(`${placeOf(at)} has ${length} items, more than a pool file can hold; nothing was written`);
        }
        copy = new Array(length);
        for (let i = 0; i < length; i++) {
          const item = value[i];
          // JSON has no undefined in an array: a hole or an undefined item.
          if (item === undefined) throw invalidArgument(`${placeOf({ up: at, step: i })} is undefined (or a hole): a pool must be plain JSON`);
          copy[i] = plainJson(item, { up: at, step: i }, seen, depth + 1, count);
        }
      } else if (isPlainObject(value)) {
        copy = Object.create(null);
        for (const [k, v] of Object.entries(value)) {
          const plain = plainJson(v, { up: at, step: k }, seen, depth + 1, count);
          if (plain !== undefined) copy[k] = plain;
        }
      } else throw invalidArgument(`${placeOf(at)} is ${shown(value)}: a pool must be plain JSON`);
      seen.delete(value);
      return copy;
    }
    default:
      throw invalidArgument(`${placeOf(at)} is ${shown(value)}: a pool must be plain JSON`);
  }
}

function poolInvalid(message) {
  const err = new Error(message);
  err.code = "POOL_INVALID";
  return err;
}

// When `loadPool` read the pool it gave, and its accounts as they were then, kept for that
// object out of sight (not in JSON.stringify, a spread or a deep comparison): `savePool` of it
// keeps the accounts added since, which the copy cannot have meant to remove (a login another
// process added between a script's load and its save was lost), leaves out those removed since
// that it still holds as read (a removed account came back with the save), and takes what other
// writers changed since in a field it holds as read. What was read says what was removed from
// that pool only (`from`): a copy saved to another (a pool moved to a new place, over one there)
// left out every account it held, and wrote an empty pool. Kept in this map, not on the object:
// on it (as symbol properties) a Proxy's trap or a copy of the symbols could hand the addon a
// "held" array of 2^32-1 slots, whose conversion asked for 309 GB and aborted the host.
const asRead = new WeakMap();

function heldAsRead(pool) {
  if (!Array.isArray(pool.anthropic)) return undefined;
  // Whole accounts, not their names and credentials alone: a field the copy still holds as read
  // takes what another writer put there since (a cooldown, a `disable`), where the copy's stale
  // value undid it.
  // Unreadable entries too: `savePool` keeps one exactly as read (the addon lists them as they
  // are, and a script that loads, edits and saves was refused for them).
  const anthropic = pool.anthropic.map((a) => structuredClone(a));
  // And the other writers' sections (the aidevops plugin's `openai`, its `_pending_*` marks): one
  // the copy holds as read takes what is stored at the save (the plugin's refreshed OpenAI login
  // went back to its spent token).
  const sections = {};
  for (const [key, value] of Object.entries(pool)) if (key !== "anthropic" && key !== "version") sections[key] = structuredClone(value);
  return { ...sections, anthropic };
}

export const loadPool = wrap(async (path) => {
  const where = pathArg(path);
  const readAt = Date.now();
  const loaded = await native.loadPool(where);
  const pool = JSON.parse(loaded.text);
  if (pool !== null && typeof pool === "object") {
    // `from`: which pool, as the addon names it (the file's real path): the same file reached
    // through the variable, a relative path or a link is the same pool.
    asRead.set(pool, { at: readAt, held: heldAsRead(pool), from: loaded.from });
  }
  return pool;
});

export const savePool = wrap((pool, path) => {
  const where = pathArg(path);
  let plain;
  try {
    const anthropic = isPlainObject(pool) ? pool.anthropic : undefined;
    if (!Array.isArray(anthropic)) {
      throw poolInvalid(
        `a pool is an object with an "anthropic" array of accounts (use [] for none), got ${isPlainObject(pool) ? "an object without it" : shown(pool)}; nothing was written`,
      );
    }
    plain = plainJson(pool, { step: "pool" });
  } catch (e) {
    if (e?.code) throw e;
    // The pool's own code threw (a getter, a Proxy's trap): what it said, coded, as its cause.
    const err = invalidArgument(`the pool could not be read (${cut(scrubbed(e?.message ?? e), 120)}); nothing was written`);
    err.cause = e;
    throw err;
  }
  const read = asRead.get(pool);
  return native.savePool(plain, where, read?.at, read?.held, read?.from);
});

export const authorize = wrap(async (options) => {
  const { mode } = optionalObject("authorize's options", options, ["mode"]);
  if (mode !== undefined && mode !== null && mode !== "max" && mode !== "console") {
    throw invalidArgument(`mode must be "max" or "console", got ${shown(mode)}`);
  }
  return native.authorize(mode ? { mode } : undefined);
});

function pkceArg(pkce) {
  const given = readable("the second argument", () =>
    pkce && typeof pkce === "object" ? { verifier: pkce.verifier, state: pkce.state, mode: pkce.mode ?? undefined } : null,
  );
  if (typeof given?.verifier !== "string" || typeof given?.state !== "string") {
    throw invalidArgument("the second argument must be { verifier, state } from authorize()");
  }
  if (given.mode !== undefined && given.mode !== "max" && given.mode !== "console") {
    throw invalidArgument(`the login's mode must be "max" or "console", got ${shown(given.mode)}`);
  }
  return given;
}

export const exchange = wrap((input, pkce) => native.exchange(requiredString("the pasted code", input), pkceArg(pkce)));

export const refresh = wrap((refreshToken) => native.refresh(requiredString("the refresh token", refreshToken)));

export const listAccounts = wrap((path) => native.listAccounts(pathArg(path)));

export const poolStatus = wrap((path) => native.poolStatus(pathArg(path)));

export const addAccount = wrap((input, pkce, path) => native.addAccount(requiredString("the pasted code", input), pkceArg(pkce), pathArg(path)));

export const addApiKey = wrap((key, options) => {
  const o = optionalObject("addApiKey's options", options, ["email", "path"]);
  return native.addApiKey(requiredString("the API key", key), {
    email: optionalString("options.email", o.email),
    path: optionalString("options.path", o.path),
  });
});

export const removeAccount = wrap((email, path) => native.removeAccount(requiredString("email", email), pathArg(path)));

export const setEnabled = wrap((email, enabled, path) => {
  if (typeof enabled !== "boolean") throw invalidArgument(`enabled must be true or false, got ${shown(enabled)}`);
  return native.setEnabled(requiredString("email", email), enabled, pathArg(path));
});

export const setPriority = wrap((email, priority, path) => {
  if (typeof priority !== "number" || !Number.isSafeInteger(priority)) {
    throw invalidArgument(`priority must be a whole number, got ${shown(priority)}`);
  }
  return native.setPriority(requiredString("email", email), priority, pathArg(path));
});

export const resetCooldowns = wrap((path) => native.resetCooldowns(pathArg(path)));

/** Keeps `fraction` (0 to 1) of every window for the account's owner; 0 clears the reserve. */
export const setReserve = wrap((email, fraction, path) => {
  if (typeof fraction !== "number" || !Number.isFinite(fraction) || fraction < 0 || fraction > 1) {
    throw invalidArgument(`a reserve is a fraction from 0 to 1 (0.2 keeps 20 % of every window), got ${shown(fraction)}`);
  }
  return native.setReserve(requiredString("email", email), fraction, pathArg(path));
});

export const importClaudeCode = wrap((options) => {
  const o = optionalObject("importClaudeCode's options", options, ["credentialsPath", "email", "path"]);
  return native.importClaudeCode({
    credentialsPath: optionalString("options.credentialsPath", o.credentialsPath),
    email: optionalString("options.email", o.email),
    path: optionalString("options.path", o.path),
  });
});

export const flushPool = wrap((path) => native.flushPool(pathArg(path)));

/**
 * Refreshes one account now under the pool's lock protocol: `{ email, outcome, expires }`,
 * outcome "refreshed", "adopted" (another process refreshed meanwhile) or "kept".
 */
export const refreshAccount = wrap((email, path) => native.refreshAccount(requiredString("email", email), pathArg(path)));

export const nativeVersion = () => native.version();

/** The store's files (pool, lock, .bak, temp names, refresh locks) as Rust names them. */
export function poolFiles(path) {
  return sync(native.poolFiles(pathArg(path)));
}

/**
 * The logins of the pool that are also in another pool file this user's refresh journal has
 * seen on this machine (`store` its path), or twice in the pool (`store` null): names and paths,
 * never a token.
 */
export const loginsElsewhere = wrap((path) => native.loginsElsewhere(pathArg(path)));

/**
 * The files of refreshed tokens processes could not write into the pool file, kept beside it:
 * `[{ file, pid, running, writtenAt, accounts: [{ email, state }] }]`, names only.
 */
export const keptTokens = wrap((path) => native.keptTokens(pathArg(path)));

/** The stored emails of the entries `target` names, as `removeAccount` resolves it. */
export const namedAccounts = wrap((target, path) => native.namedAccounts(requiredString("target", target), pathArg(path)));

/** Each endpoint with whether the pool accepts it and the proxy a request would use. */
export function checkEndpoints() {
  return sync(native.checkEndpoints());
}

/** Every environment variable the addon reads (src/config.rs `var`). */
export function envVariables() {
  return [...sync(native.envNames()).all];
}

/**
 * Whether each endpoint answers (`oauth-pool doctor --online`): one request without a
 * credential to each, through the client and proxy its requests use, at most 8 s.
 */
export const probeEndpoints = wrap(() => native.probeEndpoints());

/** Each numeric or switch setting that is set, with whether its text was taken as written. */
export function checkSettings() {
  return sync(native.checkSettings());
}

/**
 * The most a number of milliseconds (or connections) handed to the addon can be: 2^31 - 1, the
 * longest a JavaScript timer waits, as for the settings (src/settings.rs MAX_MILLIS). The addon
 * takes these as 32-bit numbers, and a larger one wrapped: `headerTimeoutMs: 2 ** 32` cut every
 * connection after 100 ms, `maxConnections: 2 ** 32` served one at a time.
 */
export const MAX_MILLIS = 2 ** 31 - 1;

/**
 * Starts the pool gateway (an Anthropic-compatible endpoint on this machine). Resolves
 * `{ url, close(drainMs?), unref() }`; it keeps the process alive until closed (or unref'd).
 */
export const serve = wrap(async (options) => {
  const o = optionalObject("serve's options", options, [
    "host",
    "port",
    "path",
    "allowRemote",
    "tlsCert",
    "tlsKey",
    "headerTimeoutMs",
    "bodyTimeoutMs",
    "maxConnections",
  ]);
  const port = o.port ?? 8787;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw invalidArgument(`port must be a whole number from 0 to 65535, got ${shown(port)}`);
  for (const k of ["headerTimeoutMs", "bodyTimeoutMs", "maxConnections"]) {
    if (o[k] !== undefined && (!Number.isInteger(o[k]) || o[k] <= 0 || o[k] > MAX_MILLIS)) {
      throw invalidArgument(`${k} must be a whole number from 1 to ${MAX_MILLIS}, got ${shown(o[k])}`);
    }
  }
  if (o.allowRemote !== undefined && typeof o.allowRemote !== "boolean") throw invalidArgument("allowRemote must be true or false");
  const gateway = await settle(
    native.serve({
      host: optionalString("options.host", o.host),
      port,
      path: optionalString("options.path", o.path),
      allowRemote: o.allowRemote,
      tlsCert: optionalString("options.tlsCert", o.tlsCert),
      tlsKey: optionalString("options.tlsKey", o.tlsKey),
      headerTimeoutMs: o.headerTimeoutMs,
      bodyTimeoutMs: o.bodyTimeoutMs,
      maxConnections: o.maxConnections,
    }),
  );
  // The server runs on the native runtime, which does not keep a JavaScript process alive.
  const alive = setInterval(() => {}, 2 ** 31 - 1);
  return {
    url: gateway.url,
    keyCreated: gateway.keyCreated ?? null,
    async close(drainMs) {
      if (drainMs !== undefined && drainMs !== null && (!Number.isInteger(drainMs) || drainMs < 0 || drainMs > MAX_MILLIS)) {
        throw invalidArgument(`drainMs must be a whole number of milliseconds from 0 to ${MAX_MILLIS}, got ${shown(drainMs)}`);
      }
      clearInterval(alive);
      await settle(gateway.close(drainMs));
    },
    unref() {
      alive.unref?.();
      return this;
    },
  };
});

/** The key clients of the gateway present (from OAUTH_POOL_GATEWAY_KEY, else generated once). */
export function gatewayKey(path) {
  return sync(native.gatewayKey(pathArg(path)));
}

/**
 * Creates or migrates the fleet store's schema (`location`: a postgres:// URL, else
 * OAUTH_POOL_STORE) and records the store key's check value. Without OAUTH_POOL_STORE_KEY or a
 * key file, it creates the key file (0600) and names it: `{ location, schema, keySource, keyCreated }`.
 */
export const storeInit = wrap((location) => native.storeInit(optionalString("location", location)));

/** Copies a whole pool between stores (a file path or a postgres:// URL, either way): `{ from, to, entries }`. */
export const copyStore = wrap((from, to) => native.copyStore(requiredString("from", from), requiredString("to", to)));

/** For doctor: whether the store is reachable, its schema current and the key right. */
export const storeCheck = wrap((path) => native.storeCheck(pathArg(path)));
