// The signals that end a command (`kill`, Ctrl-C, a closed terminal or ssh session), less those
// the process was started ignoring (`nohup`, `trap '' HUP`, a background job's SIGINT): a
// listener for one of those would make it end, or stop, what the user meant to keep running.
// Node sets every signal back to its default as it starts, so there none is ever ignored; Bun
// keeps what it was given.
import { nativeBinding } from "../native.mjs";

export const ENDING_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"];

/** ENDING_SIGNALS less the ones this process ignores (asked of the addon, which reads sigaction). */
export function endingSignals() {
  return ENDING_SIGNALS.filter((signal) => {
    try {
      return nativeBinding().signalIgnored?.(signal) !== true;
    } catch {
      return true;
    }
  });
}
