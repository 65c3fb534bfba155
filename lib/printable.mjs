// Text from the pool file or a server (emails, lastError, reasons, window names) is untrusted
// wherever a person reads it: an email holding a newline could fake a line, one holding ESC
// could rewrite the terminal, a bidi override could make `a@x` read as something else. The CLI,
// the plugins' tool text, toasts and log lines all go through printable().

// C0, DEL, C1, the line/paragraph separators, and the bidi controls (embeddings, overrides,
// isolates, and the invisible marks LRM/RLM/ALM that reorder what follows them).
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function escapeChar(ch) {
  if (NAMED[ch]) return NAMED[ch];
  const code = ch.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * `value` as text that cannot move the cursor or reorder the line: unsafe characters become
 * visible escapes (`\x1b`, `\n`, `\u202e`). A backslash stays as it is (Windows paths stay
 * readable), so escaping twice changes nothing.
 */
export function printable(value) {
  return String(value ?? "").replace(UNSAFE, escapeChar);
}

/** Text of several lines, each made printable (the line breaks themselves kept). */
export function printableLines(value) {
  return String(value ?? "")
    .split("\n")
    .map(printable)
    .join("\n");
}
