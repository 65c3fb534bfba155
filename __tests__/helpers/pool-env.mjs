// Shared set-up for tests that run the real addon against the loopback mock: a temp HOME and
// pool file per test, endpoints pointed at the mock, and helpers to seed accounts.
import { after, before } from "node:test";
import { readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startMockAnthropic } from "./mock-anthropic.mjs";
import { savePool } from "../../index.mjs";
import { tempDir } from "./temp.mjs";

// No test may touch the real ~/.aidevops (the pool, its journal of refreshes, the store key).
// `npm test` gives every step a throwaway HOME; a test file run on its own gets one here, before
// its body runs (anything it or the addon derives from the home then lands in the temp dir).
if (!(process.env.HOME ?? "").startsWith(tmpdir())) {
  process.env.HOME = tempDir("oauth-pool-test-home-");
  process.env.USERPROFILE = process.env.HOME;
}

export async function startEnv(options) {
  const mock = await startMockAnthropic(options);
  process.env.OAUTH_POOL_TOKEN_URL = mock.tokenUrl;
  process.env.OAUTH_POOL_API_URL = mock.url;
  return mock;
}

/** The pool's own variables and the ones it reads, as a test file found them. */
function savedEnv() {
  const names = Object.keys(process.env).filter((k) => k.startsWith("OAUTH_POOL_"));
  return Object.fromEntries(names.map((k) => [k, process.env[k]]));
}

function restoreEnv(saved) {
  for (const k of Object.keys(process.env)) if (k.startsWith("OAUTH_POOL_") && !(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
}

/**
 * The set-up most test files share: the loopback mock started before the file's tests with
 * the pool's endpoints pointed at it (plus `env`), and after them the mock closed and every
 * OAUTH_POOL_* variable the file set or changed put back. Returns the mock (usable once the
 * file's tests run).
 */
export function useMock({ env = {}, options } = {}) {
  const saved = savedEnv();
  let started = null;
  before(async () => {
    started = await startEnv(options);
    Object.assign(process.env, env);
  });
  after(async () => {
    await started?.close();
    restoreEnv(saved);
  });
  return new Proxy(
    {},
    {
      get(_, key) {
        if (!started) throw new Error(`the mock is not running yet (mock.${String(key)} read outside a test)`);
        const value = Reflect.get(started, key, started);
        return typeof value === "function" ? value.bind(started) : value;
      },
    },
  );
}

export function tempPoolPath() {
  const dir = tempDir("oauth-pool-");
  return join(dir, "pool", "oauth-pool.json");
}

/**
 * A pool entry for a login registered now at `mock` (`login`: the mock's options for it, such
 * as `expiresIn`), its access token expired when `expired`; `extra` fields over it.
 */
export function oauthEntry(mock, email, { expired = false, login, ...extra } = {}) {
  const t = mock.addAccount(email, login);
  return {
    email,
    refresh: t.refresh,
    access: t.access,
    expires: expired ? Date.now() - 1000 : t.expires,
    added: new Date().toISOString(),
    lastUsed: null,
    status: "idle",
    rateLimitUntil: null,
    ...extra,
  };
}

/** Registers accounts at the mock and writes them to a fresh pool file. */
export async function seedPool(mock, emails, { expired = [], path = tempPoolPath() } = {}) {
  const anthropic = emails.map((email) => oauthEntry(mock, email, { expired: expired.includes(email) }));
  await savePool({ version: 1, anthropic }, path);
  return path;
}

export function readPool(path) {
  return JSON.parse(readFileSync(path, "utf8"));
}

export function account(path, email) {
  return readPool(path).anthropic.find((a) => a.email === email);
}

export function mode(path) {
  return statSync(path).mode & 0o777;
}

export function messagesUrl(mock) {
  return `${mock.url}/v1/messages`;
}

export const body = (extra = {}) => JSON.stringify({ model: "claude-sonnet-4-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }], ...extra });

export const jsonHeaders = { "content-type": "application/json", "anthropic-version": "2023-06-01", "x-api-key": "" };

/**
 * Starts `count` pool-worker processes that wait at a barrier, releases them together once all
 * are loaded, and resolves with each one's results. `envFor(i)` gives worker i its own
 * environment (a fleet test runs "hosts" with different homes against one store).
 */
export async function runWorkersTogether(script, count, args, { env = process.env, envFor = () => env } = {}) {
  const { spawn } = await import("node:child_process");
  const workers = Array.from({ length: count }, (_, i) => {
    const child = spawn(process.execPath, [script, ...args, "barrier"], { env: envFor(i), stdio: ["pipe", "pipe", "inherit"] });
    let out = "";
    let onReady;
    const ready = new Promise((r) => (onReady = r));
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("ready\n")) onReady();
    });
    const done = new Promise((resolve, reject) => {
      child.on("error", reject);
      child.on("close", (code, signal) => {
        onReady(); // a worker that died before the barrier must not hold the others
        resolve({ code, signal, out: out.includes("ready\n") ? out.slice(out.indexOf("ready\n") + 6) : out });
      });
    });
    return { child, ready, done };
  });
  await Promise.all(workers.map((w) => w.ready));
  for (const w of workers) w.child.stdin.end("go\n");
  return Promise.all(workers.map((w) => w.done));
}

/** A stand-in for OpenCode's client that records toasts and log lines. */
export function fakeClient() {
  const toasts = [];
  const logs = [];
  return {
    toasts,
    logs,
    client: {
      tui: {
        showToast: async ({ body }) => {
          toasts.push(body);
          return { data: true };
        },
      },
      app: {
        log: async ({ body }) => {
          logs.push(body);
          return { data: true };
        },
      },
      auth: { set: async () => ({}) },
    },
  };
}

/**
 * A long-lived AbortSignal whose listeners are counted as they are added and removed:
 * `{ controller, signal, listeners }`, `listeners` the set of those still on it that `counts`
 * (by default every `abort` listener; `poolListener` tells the pool's own apart from a host's
 * and fetch's).
 */
export function countedSignal(counts = (type) => type === "abort") {
  const controller = new AbortController();
  const { signal } = controller;
  const listeners = new Set();
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  signal.addEventListener = (type, listener, options) => {
    if (counts(type, listener)) listeners.add(listener);
    return add(type, listener, options);
  };
  signal.removeEventListener = (type, listener, options) => {
    listeners.delete(listener);
    return remove(type, listener, options);
  };
  return { controller, signal, listeners };
}

/** The pool's abort listeners are the functions named `onAbort`. */
export const poolListener = (type, listener) => type === "abort" && listener?.name === "onAbort";

export const pause = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `check()` holds, polling every 10 ms; throws naming `what` after `ms`. */
export async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await pause(10);
  }
}

/** Runs `fn` with `vars` set in process.env (undefined: removed), then puts them back. */
export async function withEnv(vars, fn) {
  const saved = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const put = (values) => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  put(vars);
  try {
    return await fn();
  } finally {
    put(saved);
  }
}
