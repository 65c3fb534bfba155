// Text from the pool file or a server (emails, lastError, reasons, window names) is untrusted
// wherever a person reads it: an email holding a newline could fake a line, one holding ESC
// could rewrite the terminal, a bidi override could make `a@x` read as something else. The CLI,
// the plugins' tool text, toasts and log lines all go through printable(). A name is the file's
// to say and can hold a credential (a key pasted as its own name before names were checked, a
// hand edit, another program's file): printable() leaves out `sk-ant-` runs too, by the addon's
// rule (`secret::scrub_tokens`, also in the addon's own messages and log lines).
import { nativeBinding } from "./native.mjs";

// C0, DEL, C1, the line/paragraph separators, and the bidi controls (embeddings, overrides,
// isolates, and the invisible marks LRM/RLM/ALM that reorder what follows them).
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };

function escapeChar(ch) {
  if (NAMED[ch]) return NAMED[ch];
  const code = ch.charCodeAt(0);
  return code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
}

/** `text` through the addon's scrubber `name`; as it is without the addon. */
function scrubbedBy(name, text) {
  try {
    return nativeBinding()[name](text);
  } catch {
    return text;
  }
}

/**
 * `text` with every credential-shaped run (`sk-ant-...`) as `[redacted]`. Without the addon
 * nothing of the pool was read, and the text stays as it is.
 */
export function withoutCredentials(text) {
  return text.includes("sk-ant-") ? scrubbedBy("scrubTokens", text) : text;
}

/**
 * `text` as withoutCredentials leaves it, and every URL in it without its password, query and
 * fragment, where keys and signatures travel (the addon's `scrubMessage`): for text that leaves
 * the machine, such as the tools' answers, which go to the model's provider. Without the addon
 * nothing of the pool was read, and the text stays as it is.
 */
export function withoutSecrets(text) {
  return scrubbedBy("scrubMessage", String(text));
}

/** Whether `name` holds a credential-shaped run, and so is shown without it. */
export function holdsCredential(name) {
  const text = String(name ?? "");
  return withoutCredentials(text) !== text;
}

/** The longest name the pool takes (an address's limit, src/account.rs). */
const NAME_SHOWN = 254;

/**
 * An account's name as a list shows it: one holding a credential is shown without it, so with
 * its place in the file (`team [redacted] (#2)`, from 0), the `#N` every command that names an
 * account takes in place of its name. One longer than a name the pool takes is shown by its
 * start and its place. `index` is the entry's place among all of the file's
 * (unreadable ones counted).
 */
export function placedName(name, index) {
  const text = String(name ?? "");
  // Only a hand edit or another program makes a longer one: 300 names of 10 KB made the tool's
  // list 3 MB of a model's context. Cut after the credentials are out, so none is cut in half.
  if (text.length > NAME_SHOWN) return `${shortened(withoutCredentials(text), NAME_SHOWN)} (#${index})`;
  return holdsCredential(name) ? `${name} (#${index})` : name;
}

/**
 * `value` as text that cannot move the cursor or reorder the line: unsafe characters become
 * visible escapes (`\x1b`, `\n`, `\u202e`), credential-shaped runs `[redacted]`. A backslash
 * stays as it is (Windows paths stay readable), so escaping twice changes nothing.
 */
export function printable(value) {
  return controlsEscaped(withoutCredentials(String(value ?? "")));
}

/**
 * `value` with printable()'s escapes and nothing else (a credential in it stays, for a caller
 * that places names before it scrubs them): for a field put into text of several lines, where a
 * line break in it would start a line of its own.
 */
export function controlsEscaped(value) {
  return String(value ?? "").replace(UNSAFE, escapeChar);
}

/** Text of several lines, each made printable (the line breaks themselves kept). */
export function printableLines(value) {
  return String(value ?? "")
    .split("\n")
    .map(printable)
    .join("\n");
}

/**
 * `value` as one POSIX shell word a person can paste: as it is when it holds only characters no
 * shell reads specially, else in single quotes. A path with a space, an email with a quote or a
 * `#2` (a comment at the start of a word) broke the command it was put in.
 */
export function shellWord(value) {
  return /^[A-Za-z0-9@._+%=:,/-]+$/.test(value) ? value : `'${value.replaceAll("'", "'\\''")}'`;
}

/**
 * An account's name as the last argument of a command to copy: one that starts with `-` (a hand
 * edit's `-rf`) after `--`, which the CLI read as options (`remove does not take -r`).
 */
export function accountArgument(name) {
  return name.startsWith("-") ? `-- ${shellWord(name)}` : shellWord(name);
}

/** `text` cut to `chars` characters, marked where it was cut (never inside a surrogate pair). */
export function shortened(text, chars) {
  return text.length > chars ? `${text.slice(0, chars).replace(/[\ud800-\udbff]$/, "")}…` : text;
}
