#!/usr/bin/env node
// The opencode-aidevops plugin's own writer of the pool file, as it keeps writing it for its
// other providers after handing Anthropic to us: a read-modify-write of the whole file under
// its `mkdir` lock (`<pool>.lock.d` with an `owner` file `{pid, ts}`, stale after 10 s), the
// write a temp file renamed into place. Copied in behaviour from marcusquinn/aidevops @ ad4eefaf3,
// `.agents/plugins/opencode-aidevops/oauth-pool-storage.mjs` (`withPoolLock`, `loadPool`,
// `savePool`), with the pool path as an argument instead of `~/.aidevops`.
//
//   node aidevops-writer.mjs <pool path> <rounds> <hold ms>
// Each round appends its number to `openai[0].rounds`, holding the lock `hold ms` between the
// read and the write (the plugin's own holds are shorter; the protocol must not depend on it).
// Prints {"rounds": n} when done. Node built-ins only.
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmdirSync, unlinkSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";

const [poolFile, roundsArg = "50", holdArg = "2"] = process.argv.slice(2);
const LOCK_DIR = `${poolFile}.lock.d`;
const OWNER_FILE = `${LOCK_DIR}/owner`;
const LOCK_STALE_MS = 10000;
const sleepBuf = new Int32Array(new SharedArrayBuffer(4));
const sleep = (ms) => Atomics.wait(sleepBuf, 0, 0, ms);

function loadPool() {
  try {
    if (existsSync(poolFile)) return JSON.parse(readFileSync(poolFile, "utf-8"));
  } catch {}
  return {};
}

function savePool(data) {
  mkdirSync(dirname(poolFile), { recursive: true });
  const tmp = `${poolFile}.tmp.${process.pid}`;
  writeFileSync(tmp, JSON.stringify(data, null, 2), { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, poolFile);
}

function isLockStale() {
  try {
    const { pid, ts } = JSON.parse(readFileSync(OWNER_FILE, "utf-8"));
    const processGone = (() => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    })();
    return processGone || Date.now() - ts > LOCK_STALE_MS;
  } catch {
    return false;
  }
}

function removeStaleLock() {
  try {
    unlinkSync(OWNER_FILE);
  } catch {}
  try {
    rmdirSync(LOCK_DIR);
  } catch {}
}

function releaseLock() {
  try {
    const { pid } = JSON.parse(readFileSync(OWNER_FILE, "utf-8"));
    if (pid !== process.pid) return;
    try {
      unlinkSync(OWNER_FILE);
    } catch {}
    try {
      rmdirSync(LOCK_DIR);
    } catch {}
  } catch {}
}

function withPoolLock(fn) {
  mkdirSync(dirname(poolFile), { recursive: true });
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      mkdirSync(LOCK_DIR);
      writeFileSync(OWNER_FILE, JSON.stringify({ pid: process.pid, ts: Date.now() }), { mode: 0o600 });
      break;
    } catch (e) {
      if (e.code !== "EEXIST") throw e;
      if (Date.now() >= deadline) throw new Error("[aidevops] OAuth pool: timed out waiting for pool lock");
      if (isLockStale()) {
        removeStaleLock();
        continue;
      }
      sleep(50);
    }
  }
  try {
    return fn();
  } finally {
    releaseLock();
  }
}

const rounds = Number(roundsArg);
const hold = Number(holdArg);
for (let round = 0; round < rounds; round++) {
  withPoolLock(() => {
    const pool = loadPool();
    pool.openai ??= [{ email: "openai@x.test", rounds: [] }];
    pool.openai[0].rounds.push(round);
    sleep(hold);
    savePool(pool);
  });
}
process.stdout.write(`${JSON.stringify({ rounds })}\n`);
