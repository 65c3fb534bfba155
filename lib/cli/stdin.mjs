// One line from stdin: a pipe, a file, or a terminal with the echo on or off. Bounded, because
// `oauth-pool add-key < /dev/zero` must end with an error, not grow until memory runs out; a
// pasted code or an API key is a few hundred bytes.
import { fstatSync } from "node:fs";
import { UsageError } from "./errors.mjs";
import { endingSignals } from "./signals.mjs";

export const MAX_LINE_BYTES = 64 * 1024;

const tooLong = () => new UsageError(`stdin held more than ${MAX_LINE_BYTES / 1024} KB without a line break: expected one short line (a pasted code or key)`);

// A stdin that cannot be read (opened for writing only, a directory): how the CLI was called,
// so a usage error. It was the runtime's own code (EBADF, EISDIR), which no script knows.
const unreadable = (e) => new UsageError(`stdin cannot be read (${e?.code ?? e?.message ?? e}): expected one short line (a pasted code or key)`);

/** What `readLine` resolves with when no line came within its `timeoutMs`. */
export const TIMED_OUT = Symbol("no line within the time allowed");

/**
 * Resolves with the first line (without its \n or \r\n), with null when stdin closed before
 * any byte came, or with TIMED_OUT when `timeoutMs` passed first (a pipe or a terminal that
 * stays open and sends nothing). Rejects with a UsageError past MAX_LINE_BYTES.
 */
export async function readLine({ prompt, hidden = false, timeoutMs, skipBlank = false, stdin = process.stdin, stderr = process.stderr } = {}) {
  if (stdin.isTTY) {
    if (hidden && typeof stdin.setRawMode === "function") return readHidden(stdin, stderr, timeoutMs, prompt, skipBlank);
    if (prompt) stderr.write(prompt);
  }
  // Node's stream over a directory ends at once, as an empty pipe does, where Bun's throws: the
  // directory is told apart here, so both runtimes say what stdin is.
  if (typeof stdin.fd === "number" && isDirectory(stdin.fd)) throw unreadable({ code: "EISDIR" });
  // Ended during an earlier read (`add` asking again): its end came and went, and waiting for
  // it again waited out the whole timeout.
  if (stdin.readableEnded) return null;
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let seen = false;
    const finish = (settle) => {
      clearTimeout(timer);
      stdin.off("data", onData);
      stdin.off("end", onEnd);
      stdin.off("error", onError);
      stdin.pause();
      settle();
    };
    // A person at a terminal gets the error on a line of its own, not after the prompt.
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => finish(() => resolve(timedOut(stdin, stderr))), timeoutMs);
    const line = (buf) => buf.toString("utf8").replace(/\r$/, "");
    const onData = (chunk) => {
      seen = true;
      let buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      for (let nl = buf.indexOf(0x0a); nl >= 0 && size + nl <= MAX_LINE_BYTES; nl = buf.indexOf(0x0a)) {
        const text = line(Buffer.concat([...chunks, buf.subarray(0, nl)]));
        // `skipBlank`: a line of nothing (Enter pressed before pasting) is passed over, not taken
        // for the answer.
        if (!skipBlank || text.trim() !== "") {
          // What came after the line stays for the next read (`add` asks again after a paste
          // refused before anything was sent).
          const rest = buf.subarray(nl + 1);
          return finish(() => {
            if (rest.length > 0 && typeof stdin.unshift === "function") stdin.unshift(rest);
            resolve(text);
          });
        }
        chunks.length = 0;
        size = 0;
        buf = buf.subarray(nl + 1);
      }
      size += buf.length;
      // Checked before keeping the chunk: what was read so far is at most the limit plus one chunk.
      if (size > MAX_LINE_BYTES) return finish(() => reject(tooLong()));
      chunks.push(buf);
    };
    // Only blank lines before the end (`skipBlank`) is the closed stdin it stands for.
    const onEnd = () => {
      const rest = seen ? line(Buffer.concat(chunks)) : null;
      finish(() => resolve(skipBlank && rest?.trim() === "" ? null : rest));
    };
    const onError = (e) => finish(() => reject(unreadable(e)));
    // Bun throws as the 'data' listener goes on, not in an 'error' event, for a stdin it
    // cannot read (a directory).
    try {
      stdin.on("end", onEnd);
      stdin.on("error", onError);
      stdin.on("data", onData);
      stdin.resume();
    } catch (e) {
      onError(e);
    }
  });
}

function isDirectory(fd) {
  try {
    return fstatSync(fd).isDirectory();
  } catch {
    return false;
  }
}

function timedOut(stdin, stderr) {
  if (stdin.isTTY) stderr.write("\n");
  return TIMED_OUT;
}

/** A terminal with the echo off: the API key never shows on screen. */
function readHidden(stdin, stderr, timeoutMs, prompt, skipBlank = false) {
  return new Promise((resolve, reject) => {
    let buf = "";
    // A signal ended the process with the terminal still raw: the shell it returned to showed
    // nothing typed (echo off, no line editing) until `stty sane`. The terminal is given back
    // first, then the process ends by that signal as it would have.
    const onSignal = (signal) => {
      stop();
      process.kill(process.pid, signal);
    };
    // The echo goes off before the prompt shows: a key pasted as the prompt appeared was echoed
    // when this process lost the CPU between the two (a loaded machine, a paste by a script).
    const signals = endingSignals();
    stdin.setRawMode(true);
    for (const signal of signals) process.on(signal, onSignal);
    if (prompt) stderr.write(prompt);
    stdin.setEncoding("utf8");
    const stop = () => {
      clearTimeout(timer);
      for (const signal of signals) process.removeListener(signal, onSignal);
      try {
        stdin.setRawMode(false);
      } catch {}
      stdin.off("data", onData);
      stdin.pause();
      stderr.write("\n");
    };
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            stop();
            resolve(TIMED_OUT);
          }, timeoutMs);
    const onData = (chunk) => {
      for (const ch of chunk) {
        // `skipBlank`: Enter pressed before pasting is passed over, as on a pipe.
        if (skipBlank && (ch === "\r" || ch === "\n") && buf.trim() === "") {
          buf = "";
          continue;
        }
        if (ch === "\r" || ch === "\n" || ch === "\u0004") {
          stop();
          // Ctrl-D on an empty line is a closed stdin, as with a pipe.
          return resolve(ch === "\u0004" && buf === "" ? null : buf);
        }
        if (ch === "\u0003") {
          stop();
          process.exit(130);
        }
        if (ch === "\u007f" || ch === "\b") buf = buf.slice(0, -1);
        else buf += ch;
        if (Buffer.byteLength(buf) > MAX_LINE_BYTES) {
          stop();
          return reject(tooLong());
        }
      }
    };
    stdin.on("data", onData);
    stdin.resume();
  });
}

/** Asks a yes/no question on the terminal; only "y" or "yes" is a yes. */
export async function confirm(question, io) {
  const answer = await readLine({ prompt: `${question} [y/N] `, ...io });
  return /^\s*y(es)?\s*$/i.test(answer ?? "");
}
