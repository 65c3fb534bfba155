// What the CLI prints: one JSON document per line with --json, text for a person otherwise.
// Text from the pool file or a server (emails, lastError, reasons) is untrusted: an email holding
// a newline could fake a table row, one holding ESC could rewrite the terminal, a bidi override
// could make `a@x` read as something else. JSON.stringify already escapes all of it; text mode
// goes through printable() (lib/printable.mjs, shared with the plugins).

import { printable, shortened, withoutSecrets } from "../printable.mjs";

export { printable };

/** A template tag: our literal text as written, every interpolated value through printable(). */
export function text(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    out += printable(v) + strings[i + 1];
  });
  return out;
}

// The most of one word of the command line a usage error repeats: enough to recognise it. A
// whole 100 KB argument (a file's content pasted as a value, a runaway `$(...)`) came back
// whole, in one line of stderr or one JSON document.
const ECHOED = 80;

// A long run of a key's characters, mixed case and digits, is a piece of a key whatever its
// start: a key broken by a space into two words of the command line came back as its second
// word, without the `sk-ant-` that marks one. Nothing a command takes looks so.
const KEY_PIECE = /[A-Za-z0-9_-]{32,}/g;

/**
 * What the user typed, as a message repeats it: printable(), only its start when long, and a
 * URL in it without its password, query and fragment (a fleet store's `postgres://` URL given
 * twice came back with its password).
 */
export function echoed(value) {
  const s = withoutSecrets(String(value ?? "")).replace(KEY_PIECE, (run) => (/[a-z]/.test(run) && /[A-Z]/.test(run) && /\d/.test(run) ? "[redacted]" : run));
  if (s.length <= ECHOED) return printable(s);
  // Cut before escaping, so no escape is cut in half.
  return `${printable(shortened(s, ECHOED))} (${s.length} characters)`;
}

/** `text` for messages that repeat what the user typed: every interpolated value through echoed(). */
export function echo(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    out += echoed(v) + strings[i + 1];
  });
  return out;
}

// Characters a terminal draws two columns wide: East Asian wide and fullwidth forms, and emoji
// presentation (the ranges wcwidth() gives 2). Marks drawn on the character before them take none.
const WIDE =
  /[\u1100-\u115f\u231a\u231b\u2329\u232a\u23e9-\u23ec\u23f0\u23f3\u25fd\u25fe\u2614\u2615\u2648-\u2653\u267f\u2693\u26a1\u26aa\u26ab\u26bd\u26be\u26c4\u26c5\u26ce\u26d4\u26ea\u26f2\u26f3\u26f5\u26fa\u26fd\u2705\u270a\u270b\u2728\u274c\u274e\u2753-\u2755\u2757\u2795-\u2797\u27b0\u27bf\u2b1b\u2b1c\u2b50\u2b55\u2e80-\u303e\u3041-\u33ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\ua960-\ua97f\uac00-\ud7a3\uf900-\ufaff\ufe10-\ufe19\ufe30-\ufe6f\uff00-\uff60\uffe0-\uffe6\u{16fe0}-\u{16fe4}\u{17000}-\u{18cff}\u{1b000}-\u{1b2ff}\u{1f004}\u{1f0cf}\u{1f18e}\u{1f191}-\u{1f19a}\u{1f200}-\u{1f251}\u{1f300}-\u{1f320}\u{1f32d}-\u{1f335}\u{1f337}-\u{1f37c}\u{1f37e}-\u{1f393}\u{1f3a0}-\u{1f3ca}\u{1f3cf}-\u{1f3d3}\u{1f3e0}-\u{1f3f0}\u{1f3f4}\u{1f3f8}-\u{1f43e}\u{1f440}\u{1f442}-\u{1f4fc}\u{1f4ff}-\u{1f53d}\u{1f54b}-\u{1f54e}\u{1f550}-\u{1f567}\u{1f57a}\u{1f595}\u{1f596}\u{1f5a4}\u{1f5fb}-\u{1f64f}\u{1f680}-\u{1f6c5}\u{1f6cc}\u{1f6d0}-\u{1f6d2}\u{1f6d5}-\u{1f6d7}\u{1f6eb}\u{1f6ec}\u{1f6f4}-\u{1f6fc}\u{1f7e0}-\u{1f7eb}\u{1f90c}-\u{1f93a}\u{1f93c}-\u{1f945}\u{1f947}-\u{1f9ff}\u{1fa70}-\u{1faff}\u{20000}-\u{2fffd}\u{30000}-\u{3fffd}]/u;
const MARK = /[\p{Mn}\p{Me}]/u;
const zero = (ch) => MARK.test(ch) || (ch >= "\u200b" && ch <= "\u200d") || ch === "\u2060";

/** How many terminal columns `s` takes (`length` counts UTF-16 units: 张 is 1 there, 2 on screen). */
export function displayWidth(s) {
  let width = 0;
  for (const ch of s) width += zero(ch) ? 0 : WIDE.test(ch) ? 2 : 1;
  return width;
}

/**
 * Columns padded to their widest cell, measured in terminal columns (a name in CJK or with
 * emoji shifted the rest of its row); every cell is printable()'d first so widths are right.
 */
export function table(rows) {
  const cells = rows.map((r) => r.map(printable));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => displayWidth(r[i]))));
  return cells
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c + " ".repeat(widths[i] - displayWidth(c))))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

export function makeOutput(json, { stdout = process.stdout, stderr = process.stderr } = {}) {
  // Each write's own callback says whether it landed: Bun calls a later write's back first.
  let written = Promise.resolve();
  let failed = false;
  const write = (s) => {
    const landed = new Promise((resolve) =>
      stdout.write(s, (err) => {
        if (err) failed = true;
        resolve();
      }),
    );
    written = written.then(() => landed);
  };
  return {
    json,
    /** A result: JSON on one line, or text for a person (composed by the caller with `text`). */
    result(value, body) {
      write(json ? `${JSON.stringify(value)}\n` : body.endsWith("\n") ? body : `${body}\n`);
    },
    /** Guidance for a person, on stderr so stdout stays the result; silent with --json. */
    note(body) {
      if (!json) stderr.write(`${body}\n`);
    },
    /**
     * Resolves whether everything written to stdout so far was delivered: false once a write
     * failed (its reader left, a full disk), for a command whose next step is pointless then.
     */
    delivered() {
      return written.then(() => !failed);
    },
    error(code, message) {
      if (json) write(`${JSON.stringify({ error: { code, message } })}\n`);
      else stderr.write(`error [${printable(code)}]: ${printable(message)}\n`);
    },
  };
}
