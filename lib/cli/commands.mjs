// Every command of the CLI, and the usage text made from them. A new family of commands is one
// module exporting `commands` (the shape is described at the top of accounts.mjs) plus one
// entry in FAMILIES; parsing, arity checks and --help follow from its specs. A name may be two
// words ("store init", "store copy"): each is then a command of its own, with its own options.
import { GLOBAL_OPTIONS } from "./args.mjs";
import * as accounts from "./accounts.mjs";
import * as doctor from "./doctor.mjs";
import * as serve from "./serve.mjs";
import * as store from "./store.mjs";

const FAMILIES = [accounts, doctor, serve, store];

export const COMMANDS = new Map(FAMILIES.flatMap((family) => family.commands).map((c) => [c.name, c]));

/** The options of a known command, for the parser (undefined: no such command). */
export const commandOptions = (name) => (COMMANDS.has(name) ? (COMMANDS.get(name).options ?? {}) : undefined);

/** For a group of two-word commands ("store init", "store copy"): the second words. */
export const subcommands = (word) => [...COMMANDS.keys()].filter((name) => name.startsWith(`${word} `)).map((name) => name.slice(word.length + 1));

const optionSynopsis = (name, o) => `--${name}${o.type === "string" ? ` ${o.placeholder ?? "<value>"}` : ""}`;

function synopsis(c) {
  const options = Object.entries(c.options ?? {}).map(([name, o]) => (o.required ? optionSynopsis(name, o) : `[${optionSynopsis(name, o)}]`));
  return [c.name, c.args, ...options].filter(Boolean).join(" ");
}

const COLUMN = 31;

/** "  left   summary", the summary on its own line(s) when `left` is too wide for the column. */
function helpLine(left, summary) {
  const [first, ...rest] = summary.split("\n");
  const indent = " ".repeat(COLUMN + 2);
  const head = left.length < COLUMN ? [`  ${left.padEnd(COLUMN)}${first}`] : [`  ${left}`, `${indent}${first}`];
  return [...head, ...rest.map((l) => `${indent}${l}`)].join("\n");
}

const optionLines = (options) =>
  Object.entries(options).map(([name, o]) => helpLine(o.short ? `-${o.short}, ${optionSynopsis(name, o)}` : optionSynopsis(name, o), o.help));

/** The help of one command (`oauth-pool <command> --help`, `oauth-pool help <command>`). */
export function commandHelp(c) {
  const what = [...c.summary.split("\n"), ...(c.argsHint ? [c.argsHint.trim()] : [])].map((l) => `  ${l}`);
  // Its own options with what each does: the synopsis alone left `--drain-ms` to guesswork.
  const own = Object.keys(c.options ?? {}).length ? `\noptions:\n${optionLines(c.options).join("\n")}\n` : "";
  return `usage: oauth-pool ${synopsis(c)}

${what.join("\n")}
${own}
options (every command):
${optionLines(GLOBAL_OPTIONS).join("\n")}
`;
}

/**
 * The help of a group of two-word commands (`oauth-pool help store`, `oauth-pool store --help`):
 * each one's, where `oauth-pool store` alone names them. Null when `word` is no group.
 */
export function groupHelp(word) {
  const names = subcommands(word);
  if (names.length === 0) return null;
  return names.map((name) => commandHelp(COMMANDS.get(`${word} ${name}`))).join("\n");
}

export function usage(version) {
  const commands = [...COMMANDS.values()].map((c) => helpLine(synopsis(c), c.summary));
  const options = optionLines(GLOBAL_OPTIONS);
  return `oauth-pool ${version}: manage the opencode-oauth-pool account pool

usage: oauth-pool <command> [options]

commands:
${commands.join("\n")}
${helpLine("help [<command>]", "this text, or one command's (also: oauth-pool <command> --help)")}

options (every command):
${options.join("\n")}

exit codes: 0 ok, 1 error from the library (error [CODE]: message), 2 usage error,
            3 doctor found problems
`;
}
