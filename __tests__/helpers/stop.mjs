// A process frozen as Ctrl-Z or a suspended laptop freezes it. kill(2) returns before the process
// is stopped: the kernel wakes one of its threads to take SIGSTOP, and its other threads run on
// until that one is scheduled. On a busy machine a test that went on at once saw the "frozen"
// process still at work (CI once saw a write whose process had been sent SIGSTOP commit).
import { readdirSync, readFileSync } from "node:fs";

/** Sends SIGSTOP to `pid` and resolves once every thread of it is stopped (checked on Linux). */
export async function stopProcess(pid, { ms = 10_000 } = {}) {
  process.kill(pid, "SIGSTOP");
  const deadline = Date.now() + ms;
  while (!everyThreadStopped(pid)) {
    if (Date.now() > deadline) throw new Error(`process ${pid} was sent SIGSTOP but did not stop within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function everyThreadStopped(pid) {
  let threads;
  try {
    threads = readdirSync(`/proc/${pid}/task`);
  } catch {
    // No /proc (not Linux), or the process is gone: nothing left to wait for.
    return true;
  }
  return threads.every((tid) => {
    let stat;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
    } catch {
      return true;
    }
    // The state follows the command name, which may itself hold ") ".
    const state = stat[stat.lastIndexOf(")") + 2];
    return state === "T" || state === "t" || state === "Z" || state === "X";
  });
}
