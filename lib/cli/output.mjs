// What the CLI prints: one JSON document per line with --json, text for a person otherwise.
// Text from the pool file or a server (emails, lastError, reasons) is untrusted: an email holding
// a newline could fake a table row, one holding ESC could rewrite the terminal, a bidi override
// could make `a@x` read as something else. JSON.stringify already escapes all of it; text mode
// goes through printable() (lib/printable.mjs, shared with the plugins).

import { printable } from "../printable.mjs";

export { printable };

/** A template tag: our literal text as written, every interpolated value through printable(). */
export function text(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    out += printable(v) + strings[i + 1];
  });
  return out;
}

/** Columns padded to their widest cell; every cell is printable()'d first so widths are right. */
export function table(rows) {
  const cells = rows.map((r) => r.map(printable));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells
    .map((r) =>
      r
        .map((c, i) => c.padEnd(i === r.length - 1 ? 0 : widths[i]))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

export function makeOutput(json, { stdout = process.stdout, stderr = process.stderr } = {}) {
  return {
    json,
    /** A result: JSON on one line, or text for a person (composed by the caller with `text`). */
    result(value, body) {
      stdout.write(json ? `${JSON.stringify(value)}\n` : body.endsWith("\n") ? body : `${body}\n`);
    },
    /** Guidance for a person, on stderr so stdout stays the result; silent with --json. */
    note(body) {
      if (!json) stderr.write(`${body}\n`);
    },
    error(code, message) {
      if (json) stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
      else stderr.write(`error [${printable(code)}]: ${printable(message)}\n`);
    },
  };
}
