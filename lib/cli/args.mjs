// The command line: global options anywhere, the command's own options before or after the
// command, and usage errors (exit 2) in our words. node:util's parseArgs (strict) decides what is
// valid; when it refuses, a lenient second pass over the same words finds which one to name.
import { parseArgs } from "node:util";
import { UsageError } from "./errors.mjs";
import { echo, echoed } from "./output.mjs";

/** Options every command takes. `placeholder` and `help` are for the usage text only. */
export const GLOBAL_OPTIONS = {
  json: { type: "boolean", help: "machine output: one JSON document per line on stdout" },
  path: {
    type: "string",
    placeholder: "<file|url>",
    help: "the pool file or a postgres:// store (else $OAUTH_POOL_STORE, else\n$OAUTH_POOL_PATH, else $AIDEVOPS_OAUTH_POOL_FILE, else\n~/.aidevops/oauth-pool.json)",
  },
  help: { type: "boolean", short: "h", help: "this text" },
  version: { type: "boolean", short: "V", help: "the version" },
};

// parseArgs reads `-1` as the short option "1". A NUL cannot occur in an argv string, so it
// marks a negative number as a plain word for the parser and comes off afterwards
// (`priority a@x -1`, `--email -1` both keep their -1). Anything number-like counts (`-1e3`,
// `-.5`, `-0x10`): no option is a digit, and the command that reads the value says what is
// wrong with it (it said "priority does not take -1" of a -1e3).
const NEGATIVE = /^-\.?\d/;
const MARK = "\u0000";
const protect = (arg) => (NEGATIVE.test(arg) ? MARK + arg : arg);
const unprotect = (value) => (typeof value === "string" && value.startsWith(MARK) ? value.slice(1) : value);

/** Our option specs as parseArgs wants them (it has no use for the help fields). */
function parserConfig(options) {
  const config = {};
  for (const [name, o] of Object.entries(options)) config[name] = o.short ? { type: o.type, short: o.short } : { type: o.type };
  return config;
}

const lenient = (args, options) => parseArgs({ args, options: parserConfig(options), strict: false, allowPositionals: true, tokens: true }).tokens;

/**
 * The command: the first word that is neither an option nor an option's value, or the first two
 * when they name a command together ("store init"), and how many words it took (one word may
 * name a two-word command: `"store init"` quoted). The command's own options may come before it
 * (`--email a@x add-key`): a later word is the command when it names one and is the first word
 * once that command's options have taken their values (`--email add-key import-claude-code`
 * is import-claude-code for the email "add-key").
 */
function findCommand(args, commandOptions) {
  const words = (options) =>
    lenient(args, options)
      .filter((t) => t.kind === "positional")
      .map((t) => unprotect(t.value));
  const named = ([first, second]) => {
    const pair = `${first} ${second}`;
    if (second !== undefined && commandOptions(pair) !== undefined) return { command: pair, words: 2 };
    return { command: first, words: first === undefined ? 0 : 1 };
  };
  const stands = ({ command }) => {
    if (command === undefined) return false;
    const own = commandOptions(command);
    return own !== undefined && named(words({ ...GLOBAL_OPTIONS, ...own })).command === command;
  };
  // A later word that stands is the command: everything before it is its options' values (the
  // first word among them may name a command too, as in `--to list store copy`).
  const plain = words(GLOBAL_OPTIONS);
  for (let i = 1; i < plain.length; i++) {
    const candidate = named(plain.slice(i));
    if (stands(candidate)) return candidate;
  }
  return named(plain);
}

/** Why strict parsing refused, in the words the CLI has always used. */
function explain(args, options, command, known, err) {
  for (const t of lenient(args, options)) {
    if (t.kind !== "option") continue;
    const o = options[t.name];
    if (!o) {
      // One letter of a word like -Infinity: name the word, which is what the user wrote.
      const word = args[t.index];
      const what = word !== t.rawName && !word.startsWith("--") ? echo`${t.rawName} (in ${word})` : echoed(t.rawName);
      return known ? `${command} does not take ${what}` : `unknown option ${what}`;
    }
    if (o.type === "string" && t.value === undefined) return `${t.rawName} needs a value`;
    if (o.type === "string" && !t.inlineValue && t.value.startsWith("-")) {
      return `${t.rawName} needs a value (write ${t.rawName}=<value> for one that starts with -)`;
    }
    if (o.type === "boolean" && t.inlineValue) return `${t.rawName} takes no value`;
  }
  return echoed(String(err.message).split("\n")[0]);
}

// parseArgs takes `-abc` as -a -b -c, in time that grows with the square of the word's length:
// a 100 KB word of that shape kept the CLI busy for half a minute before its usage error. No
// group of our few short options is longer than this.
const GROUP_MAX = 16;

function refuseLongGroups(args) {
  for (const word of args) {
    if (word === "--") return;
    if (/^-[^-]/.test(word) && word.length > GROUP_MAX) throw new UsageError(echo`unknown option ${word}`);
  }
}

/**
 * An option of a value given twice with two values (`--email a --email b`, a script's default
 * before the user's own): the parser kept the last one without a word, and the command acted on
 * an account or a store the other value named. The same value twice, or a flag twice, says one
 * thing and passes.
 */
function refuseRepeats(tokens) {
  const seen = new Map();
  for (const t of tokens) {
    if (t.kind !== "option" || t.value === undefined) continue;
    const value = unprotect(t.value);
    const first = seen.get(t.name);
    if (first === undefined) seen.set(t.name, value);
    else if (first !== value) throw new UsageError(echo`--${t.name} was given twice (${first}, then ${value}): give it once`);
  }
}

/**
 * Splits argv into { command, positionals, options }. `commandOptions(name)` gives the options
 * of a known command (undefined for an unknown one, which then takes only the global options).
 */
export function parseCommandLine(argv, commandOptions) {
  const args = argv.map(protect);
  refuseLongGroups(args);
  const { command, words } = findCommand(args, commandOptions);
  const own = command === undefined ? undefined : commandOptions(command);
  const options = { ...GLOBAL_OPTIONS, ...own };
  let parsed;
  try {
    parsed = parseArgs({ args, options: parserConfig(options), strict: true, allowPositionals: true, tokens: true });
  } catch (err) {
    if (!String(err?.code).startsWith("ERR_PARSE_ARGS")) throw err;
    throw new UsageError(explain(args, options, command, own !== undefined, err));
  }
  refuseRepeats(parsed.tokens);
  const values = {};
  for (const [name, value] of Object.entries(parsed.values)) {
    if (value === "") throw new UsageError(`--${name} needs a value`);
    values[name] = unprotect(value);
  }
  // Counted from the words given: a command named in one word ("store init" quoted) took one,
  // and the URL after it was dropped as if it had been the command's second word.
  return { command, positionals: parsed.positionals.slice(words).map(unprotect), options: values };
}

/** [min, max] positionals from a synopsis like "<email> <n>", "[name]" or "<file>...". */
export function arity(synopsis = "") {
  const words = synopsis.split(/\s+/).filter(Boolean);
  const min = words.filter((w) => w.startsWith("<")).length;
  return [min, words.some((w) => w.endsWith("...")) ? Infinity : words.length];
}

/** The right number of positionals, and every option the spec marks `required` given. */
export function checkArity(spec, positionals, options = {}) {
  const [min, max] = arity(spec.args);
  const missing = Object.entries(spec.options ?? {}).filter(([name, o]) => o.required && (options[name] === undefined || options[name] === ""));
  if (positionals.length >= min && positionals.length <= max && missing.length === 0) return;
  const required = Object.entries(spec.options ?? {})
    .filter(([, o]) => o.required)
    .map(([name, o]) => ` --${name} ${o.placeholder ?? "<value>"}`)
    .join("");
  throw new UsageError(`usage: oauth-pool ${spec.name}${spec.args ? ` ${spec.args}` : ""}${required}${spec.argsHint ?? ""}`);
}

// The library's MAX_MILLIS (lib/api.mjs, not imported: `--help` answers without the addon).
export const MAX_MILLIS = 2 ** 31 - 1;

/** A `--<name>` option of whole milliseconds, `min` to MAX_MILLIS (a timer's range); `fallback` when not given. */
export function millisOption(value, name, fallback, min = 1) {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > MAX_MILLIS) {
    throw new UsageError(echo`--${name} must be a whole number of milliseconds from ${min} to ${MAX_MILLIS}, not ${value}`);
  }
  return Number(value);
}
