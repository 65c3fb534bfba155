// Another process holding one of the pool's lock files, as another writer (or a refreshing
// process) would: flock(1) from util-linux, Linux only.
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, statSync } from "node:fs";

export const flockAvailable = process.platform === "linux" && spawnSync("flock", ["--version"]).status === 0;

/**
 * Starts `flock -o <file> cat` and resolves once the kernel lists that process as holding a lock
 * on that very file (its pid and the file's inode in `/proc/locks`: a bare substring of the pid
 * also matched other pids and inode numbers, and a fixed number of tries went on without the
 * lock on a slow machine). `-o`: the lock stays with flock itself, so ending cat's stdin
 * (`release`) ends both and frees it. Throws when flock ends or has not taken it within `waitMs`.
 */
export async function holdLock(file, { waitMs = 15_000 } = {}) {
  const holder = spawn("flock", ["-o", file, "cat"], { stdio: ["pipe", "ignore", "ignore"] });
  const gone = new Promise((resolve) => holder.on("exit", (code, signal) => resolve(code ?? signal)));
  const deadline = Date.now() + waitMs;
  while (!lockHeldBy(holder.pid, file)) {
    if (holder.exitCode !== null || holder.signalCode !== null || Date.now() > deadline) {
      holder.kill("SIGKILL");
      await gone;
      throw new Error(`flock(1) did not come to hold ${file}'s lock within ${waitMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    pid: holder.pid,
    /** Lets the lock go; resolves when flock has ended. Safe to call more than once. */
    release() {
      holder.stdin.end();
      return gone;
    },
  };
}

/** Whether `/proc/locks` lists process `pid` as holding (not waiting for) a lock on `file`. */
export function lockHeldBy(pid, file) {
  let inode;
  try {
    inode = String(statSync(file).ino);
  } catch {
    return false;
  }
  // "1: FLOCK  ADVISORY  WRITE 4242 08:01:131 0 EOF"; a waiter's line has "->" after the number.
  return readFileSync("/proc/locks", "utf8")
    .split("\n")
    .some((line) => {
      const fields = line.trim().split(/\s+/);
      return fields[1] !== "->" && fields[4] === String(pid) && fields[5]?.split(":")[2] === inode;
    });
}
