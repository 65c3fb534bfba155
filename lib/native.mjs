// Loads the native addon for this platform on first use: a local build first (`npm run build`
// puts oauth-pool.<triple>.node next to package.json), then the prebuilt optional package
// opencode-oauth-pool-<triple>. Importing never throws: a host plugin that composes our parts
// keeps its other hooks when no binary fits, and the first call that needs native code rejects
// with NATIVE_MISSING naming the package to install. A binary that is there but cannot load (cut
// short by an install that did not finish, a text file, another architecture's) is refused before
// dlopen, which faults on a cut-short ELF and takes the host down (lib/binary-check.mjs); the
// error then says to reinstall it, and where. Works under Node and Bun.
import { createRequire } from "node:module";
import { existsSync, realpathSync } from "node:fs";
import { unloadableReason } from "./binary-check.mjs";
import { platformTriple } from "./platform.mjs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
// Bun says so itself: node:worker_threads, loaded for this alone, paged in about 0.5 MB of Bun's
// code and heap in every process.
const isMainThread = typeof Bun !== "undefined" && typeof Bun.isMainThread === "boolean" ? Bun.isMainThread : require("node:worker_threads").isMainThread;
const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function load() {
  const triple = platformTriple();
  const local = join(root, `oauth-pool.${triple}.node`);
  const packageName = `opencode-oauth-pool-${triple}`;
  const failures = [];
  // Binaries that are there but did not load: the advice is to replace them, not to install.
  const broken = [];
  const attempt = (label, path, fix) => {
    try {
      const reason = unloadableReason(path);
      if (reason) throw new Error(`${path}: ${reason}`);
      return ours(path, loadAddon(path));
    } catch (err) {
      const text = firstLine(err);
      failures.push(text.startsWith(label) ? text : `${label}: ${text}`);
      if (!DISABLED.test(text)) broken.push(fix);
      return null;
    }
  };
  if (existsSync(local)) {
    const addon = attempt(local, local, `rebuild ${local} with "npm run build" (the build takes its version from Cargo.toml, which must say package.json's)`);
    if (addon) return addon;
  }
  // The platform packages this release publishes, and its version: only those names are asked
  // for or named in advice (any other `opencode-oauth-pool-<triple>` is nobody's, and anyone
  // could publish one), each at the version of this JavaScript. Read after the local build: a
  // process out of descriptors has its failure told as such (transient), not thrown uncoded.
  let manifest = null;
  try {
    manifest = require("../package.json");
  } catch (err) {
    failures.push(`package.json: ${firstLine(err)}`);
  }
  const published = new Set(Object.keys(manifest?.optionalDependencies ?? {}));
  const offered = published.has(packageName);
  let resolved = null;
  if (offered) {
    try {
      resolved = require.resolve(packageName);
    } catch (err) {
      failures.push(`${packageName}: ${firstLine(err)}`);
      // Installed, but its binary is missing (or its manifest broken): installing it again
      // says "up to date" and mends nothing.
      const installed = installedAt(packageName);
      if (installed) broken.push(`reinstall "${packageName}" (delete ${installed} and run the install again)`);
    }
  } else if (manifest) failures.push(`${packageName}: no such package is published`);
  if (resolved) {
    // The package's own directory: a `.node` linked elsewhere (to a build in a checkout, to
    // /dev/null) named the link's target directory as the one to delete.
    const dir = installedAt(packageName) ?? dirname(resolved);
    // A platform package of another release is told as one first, with the version to install:
    // loaded and refused for its version, it was "reinstall it", which brought back the same
    // release (a `^0.1.0` the person had saved), round and round.
    mismatch(packageName, dir, manifest.version);
    const addon = attempt(packageName, resolved, `reinstall "${packageName}" (delete ${dir} and run the install again)`);
    if (addon) return addon;
  }
  const tried = `Tried: ${failures.join("; ")}${hint(failures, triple)}`;
  const transient = failures.some((f) => TRANSIENT.test(f));
  const disabled = failures.some((f) => DISABLED.test(f));
  let message;
  if (transient) {
    message = `opencode-oauth-pool: the native binary for ${triple} could not be loaded now (the process is out of file descriptors or memory); it is tried again on the next call. ${tried}`;
  } else if (disabled) {
    message = `opencode-oauth-pool: native addons are disabled in this process (node --no-addons, or Node's permission model without --allow-addons), and the pool is a native addon: run without that flag or add --allow-addons. ${tried}`;
  } else if (broken.length > 0) {
    message = `opencode-oauth-pool: the native binary for ${triple} is there but cannot be loaded: ${broken.join(", or ")}. ${tried}`;
  } else if (offered || !manifest) {
    const spec = manifest ? `${packageName}@${manifest.version}` : packageName;
    message =
      `opencode-oauth-pool: no native binary for ${triple}. Install the optional package ` +
      `"${spec}" (npm install ${spec}; npm skips it with --omit=optional, Bun with --omit optional), or, in a ` +
      `source checkout of opencode-oauth-pool, build it with "npm run build" (needs Rust). ${tried}`;
  } else {
    message =
      `opencode-oauth-pool: no prebuilt native binary for ${triple} (prebuilt: ${[...published].map((p) => p.replace("opencode-oauth-pool-", "")).join(", ")}); ` +
      `build it from a source checkout of opencode-oauth-pool with "npm run build" (needs Rust). ${tried}`;
  }
  const error = new Error(message);
  error.code = "NATIVE_MISSING";
  error.transient = transient;
  throw error;
}

/**
 * The addon at `path`. `require` picks its loader by the name of the file a link leads to: a
 * `.node` linked to cargo's own output (`target/release/liboauth_pool.so`) was read as JavaScript
 * and refused as a broken binary ("Invalid or unexpected token").
 */
function loadAddon(path) {
  let real = path;
  try {
    real = realpathSync(path);
  } catch {}
  if (real.endsWith(".node")) return require(path);
  const module = { exports: {} };
  process.dlopen(module, real);
  return module.exports;
}

/**
 * `addon` when it is this package's native addon at this JavaScript's version. The two speak
 * across a boundary each release may change: a binary of another version (a stale local build, a
 * copied one behind a matching manifest) loaded without a word, and another program's addon in
 * its place failed every call with an uncoded "native.version is not a function".
 */
function ours(path, addon) {
  if (typeof addon?.version !== "function" || typeof addon?.envNames !== "function") {
    throw new Error(`${path}: not opencode-oauth-pool's native addon (another program's, or a build of something else)`);
  }
  let expected;
  try {
    expected = require("../package.json").version;
  } catch {
    return addon; // read again, and its failure told, where the platform package is looked for
  }
  const version = addon.version();
  if (typeof expected === "string" && version !== expected) {
    throw new Error(`${path}: the native addon is version ${version}, and this JavaScript is ${expected}`);
  }
  return addon;
}

/**
 * Where `name` is installed when its manifest is there (its binary may not be; the manifest may
 * be empty or cut short, which Node's resolver fails on), else null.
 */
function installedAt(name) {
  try {
    return dirname(require.resolve(`${name}/package.json`));
  } catch {}
  for (const dir of require.resolve.paths(name) ?? []) {
    const at = join(dir, name);
    if (existsSync(join(at, "package.json"))) return at;
  }
  return null;
}

/**
 * A platform package of another version than this JavaScript (an install that took `latest`):
 * the two speak across a boundary each release may change, so it is refused as a binary that
 * does not fit, with the version to install.
 */
function mismatch(name, dir, expected) {
  let version;
  try {
    version = require(join(dir, "package.json")).version;
  } catch {
    return;
  }
  if (version === undefined || version === expected) return;
  const error = new Error(
    `opencode-oauth-pool: the native binary's package "${name}" is version ${version}, and this JavaScript is ${expected}: install the matching one (npm install ${name}@${expected})`,
  );
  error.code = "NATIVE_MISSING";
  error.transient = false;
  throw error;
}

// dlopen's own words for a binary of the other libc, said plainly.
function hint(failures, triple) {
  const all = failures.join(" ");
  if (triple.endsWith("-gnu") && /libc\.musl|ld-musl/.test(all)) return " (that binary is built for musl libc; this system's is glibc)";
  if (/GLIBC_[\d.]+'? not found/.test(all)) return " (that binary needs a newer glibc than this system has)";
  return "";
}

// `node --no-addons`, or the permission model without --allow-addons: no binary loads.
const DISABLED = /loading addons is disabled/i;

// Node's "Cannot find module" carries its require stack on further lines: noise in a message
// a CLI prints on one line (as literal `\n`s) and a plugin puts in a toast.
const firstLine = (err) => String(err?.message ?? err).split("\n")[0];

// A load that failed for want of a descriptor or memory (a host with every descriptor in use
// for a moment) is no missing binary: it must not be remembered as one for the process's life.
const TRANSIENT = /EMFILE|ENFILE|ENOMEM|too many open files|cannot allocate memory/i;

let binding = null;
let failure = null;
/** The addon, loaded on first call; throws NATIVE_MISSING (every time) when none fits. */
export function nativeBinding() {
  if (binding) return binding;
  if (failure) throw failure;
  try {
    binding = load();
  } catch (err) {
    if (!err.transient) failure = err;
    throw err;
  }
  settleOnExit(binding);
  return binding;
}

/** How long an exit waits for a refresh's new tokens to be written (only when one is under way). */
const EXIT_WAIT_MS = 5000;

// What the pool still has to write when the host exits, written first: a refresh answered but
// not yet written holds the only copy of the account's new tokens (the refresh token it
// presented is spent: the login was lost), and bookkeeping (usage, last use, windows) waits a
// moment after each answer on the addon's runtime (a host ending with process.exit(), as
// OpenCode does, lost the last answers' usage). Synchronous, as an `exit` listener must be, and
// bounded (5 s for a refresh, 2 s for bookkeeping, in the addon); with nothing to write it
// returns at once. `exit` runs for a natural end and for process.exit; for a signal the host
// leaves unhandled, see `settleOnSignals`. First in line: the addon loads at its first call, after
// the host's own `exit` listeners, and one of those that throws ends the process there (the
// listeners after it never run: the refresh's new tokens were lost), one that removes a directory
// had the pool's write make it again.
function settleOnExit(addon) {
  if (typeof process?.once !== "function") return;
  const listen = typeof process.prependOnceListener === "function" ? "prependOnceListener" : "once";
  process[listen]("exit", () => settle(addon));
  settleOnSignals(addon);
}

function settle(addon) {
  try {
    addon.settleRefreshes?.(EXIT_WAIT_MS);
    addon.flushBeforeExit?.();
  } catch {}
}

// The signals that end a host which has no listener for them (`kill`, `docker stop`, systemd, an
// orchestrator's timeout; Ctrl-C; a closed terminal) without `exit` listeners: a refresh answered
// meanwhile lost the account's login. A listener here, first in line, settles what the `exit`
// hook settles (at once when nothing is unwritten), then takes itself off, so that the host's
// own listeners see the process as they would without the pool: with none, it sends the signal
// again and the process ends by it as it would have. A listener that ends the process only when
// it is the last one (signal-exit's, in execa, ink, write-file-atomic...: it sends the signal
// again itself) does so; one that counted ours as the host's own would wait for it, and the
// process would outlive the signal. One that quits its own way or goes on (a server's drain)
// does that; the pool's listener comes back for the next signal. A signal the process ignores
// (a background job, `nohup`) is left alone. One listener per signal for the process: each copy
// of this JavaScript that loads an addon (two installs, each with its own) adds that addon to
// the list it settles.
const ENDING_SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"];
const SIGNAL_SETTLED = Symbol.for("opencode-oauth-pool.settled-on-signal");

function settleOnSignals(addon) {
  if (process.platform === "win32" || !isMainThread || typeof process.on !== "function") return;
  const known = globalThis[SIGNAL_SETTLED];
  if (known) {
    known.add(addon);
    return;
  }
  const addons = new Set([addon]);
  globalThis[SIGNAL_SETTLED] = addons;
  const first = typeof process.prependListener === "function" ? "prependListener" : "on";
  for (const signal of ENDING_SIGNALS) {
    let ignored = false;
    try {
      ignored = addon.signalIgnored?.(signal) === true;
    } catch {}
    if (ignored) continue;
    const onSignal = () => {
      try {
        for (const each of addons) settle(each);
      } finally {
        process.removeListener(signal, onSignal);
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
        // The host's listeners run after this one, in this same emit; the process they leave
        // running listens again for the next signal.
        else process.nextTick(() => process[first](signal, onSignal));
      }
    };
    process[first](signal, onSignal);
  }
}

// Bun does not pass process.env changes down to the C environment the addon reads, so every
// call first hands over the variables this runtime sees (only when they changed). Which
// variables: the addon's own list (src/config.rs `var`), asked once, so that none it reads is
// missed here. Looking up a few names is much cheaper than enumerating process.env per request.
let names = null;
/** `{ all, proxies }`: the variables the addon reads, and of them those that name a proxy. */
export function envNames() {
  names ??= nativeBinding().envNames();
  return names;
}

// On Node's main thread `process.env` writes reach the C environment, and reading the variables
// through `process.env` cost Node about 12 µs a request: there the addon's fingerprint of the C
// environment (`environStamp`, Linux) says whether to read them at all. Bun keeps `process.env`
// apart from the C environment, as does a worker thread its copy.
const stampsEnviron = typeof Bun === "undefined" && isMainThread;

// What was last handed over is kept with the addon, not in this module: two copies of this
// JavaScript can load one addon (pnpm links one platform package into two peer variants of this
// package; a symlinked install), and the addon holds whatever either handed over last. Kept per
// copy, a copy that found the environment as it had last handed it over skipped the hand-over,
// and its calls ran with the other copy's (another pool file, API origin or proxy).
const SYNCED = Symbol.for("opencode-oauth-pool.env-handed-over");
/** This copy's own, where the addon's exports take no property of ours. */
let unshared = null;
/** `{ values, stamp, proxySet, generation }`: `values` by index in `envNames().all`. */
function handedOver() {
  const target = nativeBinding();
  const shared = target[SYNCED];
  if (shared) return shared;
  if (unshared) return unshared;
  const state = { values: null, stamp: null, proxySet: false, generation: 0 };
  try {
    Object.defineProperty(target, SYNCED, { value: state });
  } catch {
    unshared = state;
  }
  return state;
}
function unchanged(state, keys) {
  if (state.values === null) return false;
  for (let i = 0; i < keys.length; i++) if (process.env[keys[i]] !== state.values[i]) return false;
  return true;
}
export function syncEnv() {
  const state = handedOver();
  const stamp = stampsEnviron ? (nativeBinding().environStamp?.() ?? null) : null;
  if (stamp !== null && stamp === state.stamp && state.values !== null) return;
  const keys = envNames().all;
  if (unchanged(state, keys)) {
    state.stamp = stamp;
    return;
  }
  const values = keys.map((k) => process.env[k]);
  const vars = {};
  for (let i = 0; i < keys.length; i++) if (typeof values[i] === "string") vars[keys[i]] = values[i];
  nativeBinding().syncEnv(vars);
  state.values = values;
  state.stamp = stamp;
  const { proxies } = envNames();
  state.proxySet = keys.some((k, i) => proxies.includes(k) && values[i]);
  state.generation++;
}

/** Whether a proxy variable was set when the environment was last handed over (`syncEnv`). */
export const proxyConfigured = () => handedOver().proxySet;

/** Changes each time a changed environment is handed over: what was read from it is stale. */
export const envGeneration = () => handedOver().generation;

/** The addon's exports; functions hand over the environment first. Loads on first access. */
export const native = new Proxy(
  {},
  {
    get(_, prop) {
      const target = nativeBinding();
      const value = target[prop];
      if (typeof value !== "function" || prop === "syncEnv") return value;
      if (prop === "FetchController" || prop === "NativeResponse" || prop === "NativeExchange") return value;
      return (...args) => {
        syncEnv();
        return value.apply(target, args);
      };
    },
  },
);
export { platformTriple };
