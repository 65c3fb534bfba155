// Temp directories for tests, scripts and benches, removed when the process exits, pass or
// fail, under Node (one process per test file) and Bun (files sharing a process). A test may
// leave a directory 0500/0000, FIFOs, sockets, files owned by another uid or a mount inside it:
// the removal makes each directory writable before emptying it, unmounts what is mounted under
// it, and never follows a symlink (it removes the link).
import { execFileSync } from "node:child_process";
import { chmodSync, lstatSync, mkdtempSync, readdirSync, rmdirSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

const made = new Set();
const closers = [];

/** A fresh directory `<tmpdir>/<prefix>XXXXXX`, removed at process exit. */
export function tempDir(prefix = "oauth-pool-") {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  made.add(dir);
  return dir;
}

/**
 * Runs `close()` at process exit before the temp dirs go (a postgres cluster must be stopped
 * before its directory is removed). Synchronous only: exit handlers cannot wait.
 */
export function atExit(close) {
  closers.push(close);
}

/**
 * Removes `path` and everything under it, staying on its side of symlinks. `dev`: the device
 * `path` is expected on (its parent's); a directory on another one is a mount a failed test
 * left behind, unmounted rather than emptied.
 */
export function removeTree(path, dev = lstatSync(dirname(path)).dev) {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isDirectory()) {
    unlinkSync(path);
    return;
  }
  if (st.dev !== dev) {
    execFileSync("umount", ["-l", path], { stdio: "ignore" });
    st = lstatSync(path);
  }
  try {
    chmodSync(path, 0o700);
  } catch {
    // not ours to chmod (another uid, not root): removal may still work if it is writable
  }
  for (const name of readdirSync(path)) removeTree(join(path, name), st.dev);
  rmdirSync(path);
}

process.on("exit", () => {
  for (const close of closers.splice(0)) {
    try {
      close();
    } catch {
      // a closer that fails must not keep the directories from going
    }
  }
  for (const dir of made) {
    // A thread of the addon may still be writing into it as the process ends (a write the
    // exit's settle does not wait for): an entry made during the removal fails the last rmdir
    // (ENOTEMPTY), and the directory was left behind. Tried again, that entry goes too.
    for (let attempt = 1; ; attempt++) {
      try {
        removeTree(dir);
        break;
      } catch (e) {
        if (attempt < 3) continue;
        process.stderr.write(`could not remove temp dir ${dir}: ${e.message}\n`);
        break;
      }
    }
  }
  made.clear();
});
