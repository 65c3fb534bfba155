// What the fleet-store test files share: a host's processes (the CLI, scripts), a long-lived
// host process answering commands, and a store seeded from a pool file. A host is
// `{ env }`: its own HOME and key file, the shared store.
import { spawn } from "node:child_process";
import { connect, createServer } from "node:net";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "./temp.mjs";
import { forgetFaketimeOnExit } from "./faketime.mjs";

export const CLI = fileURLToPath(new URL("../../bin/oauth-pool.mjs", import.meta.url));
const HOST = fileURLToPath(new URL("./fleet-host.mjs", import.meta.url));

/** A process of this runtime with `args`; resolves `{ code, signal, stdout, stderr }`. */
export function runNode(args, env, { input } = {}) {
  const child = spawn(process.execPath, args, { env, stdio: ["pipe", "pipe", "pipe"] });
  forgetFaketimeOnExit(child);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  child.stdin.end(input ?? "");
  return new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** `oauth-pool --json ...args` as `host`: the run, its last JSON line and the error in it. */
export async function cliJson(host, ...args) {
  const r = await runNode([CLI, "--json", ...args], host.env);
  const last = r.stdout.trim().split("\n").filter(Boolean).at(-1);
  const json = last ? JSON.parse(last) : null;
  return { ...r, json, err: json?.error ?? null };
}

/**
 * A host of the fleet store at `url`: its own HOME (`prefix` names its temp directory), the
 * mock's endpoints, no jitter, no log, and the store key given as the variable (`key`), or none
 * (the key file decides).
 */
export function makeFleetHost(name, url, { mock, key, prefix, extra = {} }) {
  const home = tempDir(`${prefix}${name}-`);
  const env = {
    ...process.env,
    HOME: home,
    USERPROFILE: home,
    OAUTH_POOL_STORE: url,
    OAUTH_POOL_PATH: join(home, ".aidevops", "oauth-pool.json"),
    OAUTH_POOL_TOKEN_URL: mock.tokenUrl,
    OAUTH_POOL_API_URL: mock.url,
    OAUTH_POOL_JITTER_MS: "0",
  };
  delete env.OAUTH_POOL_LOG;
  delete env.OAUTH_POOL_STORE_KEY;
  if (key) env.OAUTH_POOL_STORE_KEY = key;
  return { name, home, url, env: Object.assign(env, extra) };
}

/** A long-lived process of a host, answering one JSON line per command (helpers/fleet-host.mjs). */
export function startHostProcess(host, store, mockUrl) {
  const child = spawn(process.execPath, [HOST, store, mockUrl], { env: host.env, stdio: ["pipe", "pipe", "inherit"] });
  forgetFaketimeOnExit(child);
  const waiting = [];
  let buffer = "";
  child.stdout.on("data", (d) => {
    buffer += d;
    for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      waiting.shift()?.(JSON.parse(line));
    }
  });
  const ready = new Promise((resolve) => waiting.push(resolve));
  const exited = new Promise((resolve) => child.on("close", resolve));
  return {
    ready,
    pid: child.pid,
    ask(command) {
      const answer = new Promise((resolve) => waiting.push(resolve));
      child.stdin.write(`${command}\n`);
      return answer;
    },
    async close() {
      child.stdin.end();
      await exited;
    },
  };
}

/** Writes `pool` as a person would have it (0600) and copies it into `store` as `host`. */
export async function seedStore(host, store, pool) {
  const file = join(tempDir("oauth-pool-seed-"), "pool.json");
  writeFileSync(file, JSON.stringify(pool, null, 2), { mode: 0o600 });
  const r = await cliJson(host, "store", "copy", "--from", file, "--to", store);
  if (r.code !== 0) throw new Error(`store copy exited ${r.code}: ${r.stdout}${r.stderr}`);
  return file;
}

/** The pool in `store`, copied out to a file as `host` and read. */
export async function storedPool(host, store) {
  const file = join(tempDir("oauth-pool-out-"), "pool.json");
  const r = await cliJson(host, "store", "copy", "--from", store, "--to", file);
  if (r.code !== 0) throw new Error(`store copy exited ${r.code}: ${r.stdout}${r.stderr}`);
  return JSON.parse(readFileSync(file, "utf8"));
}

export { oauthEntry } from "./pool-env.mjs";

/**
 * A relay on loopback in front of the server at `port` that can go silent (connections stay
 * open, nothing passes either way): every connection on `mute(true)`, or one connection once
 * the server has sent it bytes holding `muteAfter` (a server silent right after that answer).
 */
export async function startRelay(port, { muteAfter } = {}) {
  let muted = false;
  const server = createServer((client) => {
    const upstream = connect(port, "127.0.0.1");
    let mine = false;
    const silent = () => muted || mine;
    client.on("data", (d) => silent() || upstream.write(d));
    upstream.on("data", (d) => {
      if (silent()) return;
      client.write(d);
      if (muteAfter && d.includes(muteAfter)) mine = true;
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    for (const s of [client, upstream]) {
      s.on("error", end);
      s.on("close", end);
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    mute(on) {
      muted = on;
    },
    close: () => server.close(),
  };
}
