// `oauth-pool`: manage the account pool from a shell, for headless machines. A thin layer over
// the library: every change goes through the same locked, atomic store as the plugin, and errors
// keep the library's codes. The commands live beside this file (commands.mjs lists them); the
// `oauth-pool` bin (bin/oauth-pool.mjs) imports this.
//
// Exit codes: 0 ok, 1 the library refused (`error [CODE]: message`), 2 usage error,
// 3 `doctor` found problems, 128 + a signal's number when `add`, holding a login it could not
// write yet, was stopped by that signal. With --json, stdout carries exactly one JSON document
// per line (errors too: {"error":{"code","message"}}), so scripts read stdout and switch on the
// exit code.
// Secrets never reach the output: summaries hold none, API keys come from stdin (never argv,
// where `ps` and shell history would show them), and library messages never carry one.
import { readFileSync } from "node:fs";
import { checkArity, parseCommandLine } from "./args.mjs";
import { COMMANDS, commandHelp, commandOptions, groupHelp, subcommands, usage } from "./commands.mjs";
import { EXIT, UsageError } from "./errors.mjs";
import { loadLibrary } from "./library.mjs";
import { platformTriple } from "../platform.mjs";
import { echoed, makeOutput } from "./output.mjs";

const PKG = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8"));

async function version(out) {
  let native = null;
  let platform = null;
  let error = null;
  try {
    platform = platformTriple();
  } catch {}
  try {
    native = (await loadLibrary()).nativeVersion();
  } catch (e) {
    // Installed but refused (cut short, another release's, addons disabled) is no "missing":
    // the person was sent to install what npm says is up to date.
    error = { code: e?.code ?? null, message: String(e?.message ?? e).split("\n")[0] };
  }
  const said = native ? ` (native ${native}, ${platform})` : ` (native addon not loaded: ${error?.code ?? "error"}; \`oauth-pool doctor\` says why)`;
  out.result({ version: PKG.version, native, platform, ...(error ? { error } : {}) }, `oauth-pool ${PKG.version}${said}`);
}

/** Runs a known command: usage errors exit 2, the library's errors exit 1 with their code. */
async function runCommand(spec, positionals, options, out) {
  try {
    checkArity(spec, positionals, options);
    const lib = await loadLibrary();
    return (await spec.run({ lib, args: positionals, options, path: options.path, out })) ?? EXIT.OK;
  } catch (e) {
    if (e instanceof UsageError) {
      out.error("USAGE", e.message);
      return EXIT.USAGE;
    }
    out.error(e?.code ?? "ERROR", e?.message ?? String(e));
    // A command ended by a signal it caught says so the shell's way (128 + the signal's number).
    return Number.isInteger(e?.exitCode) ? e.exitCode : EXIT.ERROR;
  }
}

// Output that could not be written (a full disk, a closed descriptor) is a failure, not a
// quiet success; a reader that stopped early (`oauth-pool list | head -1`) is not. Its end is
// not ours either: the command still finishes (a write it began lands) and exits with its own
// code, so that `doctor | head -1` under `set -o pipefail` still sees doctor's 3 and a refused
// refresh its 1; what the reader did not take is dropped. stderr that cannot be written (its
// reader gone too) is dropped: there is nowhere left to say so, and Node would otherwise die
// of an unhandled 'error' event with exit 1, whatever the command's outcome.
let outputFailed = null;
let readerGone = false;
process.stdout.on("error", (e) => {
  if (e.code === "EPIPE") readerGone = true;
  else if (!readerGone) outputFailed ??= e;
});
process.stderr.on("error", () => {});

async function main(argv) {
  let parsed;
  try {
    parsed = parseCommandLine(argv, commandOptions);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // `--json=…` asked for JSON too (a usage error of its own): its error was text on stderr.
    const options = argv.includes("--") ? argv.slice(0, argv.indexOf("--")) : argv;
    makeOutput(options.some((a) => a === "--json" || a.startsWith("--json="))).error("USAGE", `${e.message} (oauth-pool --help)`);
    return EXIT.USAGE;
  }
  const { command, positionals, options } = parsed;
  const out = makeOutput(Boolean(options.json));
  if (options.version) {
    await version(out);
    return EXIT.OK;
  }
  if (options.help || command === "help") {
    // One command's help when one is named (`add --help`, `help add`), else everything.
    // `help help` (the usage lists `help [<command>]` among the commands): the usage itself.
    const asked = command === "help" ? positionals.join(" ") : command;
    const named = asked === "help" ? undefined : asked;
    const spec = COMMANDS.get(named);
    // A group's word alone (`help store`, `store --help`): the help of each of its commands.
    const group = spec || !named ? null : groupHelp(named);
    if (command === "help" && named && !spec && !group) {
      out.error("USAGE", `unknown command ${echoed(named)} (oauth-pool --help)`);
      return EXIT.USAGE;
    }
    const text = spec ? commandHelp(spec) : (group ?? usage(PKG.version));
    out.result({ usage: text }, text);
    return EXIT.OK;
  }
  if (!command) {
    if (out.json) out.error("USAGE", "no command given (oauth-pool --help)");
    else process.stderr.write(usage(PKG.version));
    return EXIT.USAGE;
  }
  const spec = COMMANDS.get(command);
  if (!spec) {
    const group = subcommands(command);
    out.error(
      "USAGE",
      group.length ? `${command} needs one of: ${group.join(", ")} (oauth-pool --help)` : `unknown command ${echoed(command)} (oauth-pool --help)`,
    );
    return EXIT.USAGE;
  }
  return runCommand(spec, positionals, options, out);
}

/** Waits until stdout and stderr took everything, then exits (a pending native call cannot hold us). */
function exit(code) {
  let pending = 2;
  const done = () => {
    if (--pending > 0) return;
    // A failed write reports on a later tick: let it arrive before deciding.
    setImmediate(() => {
      if (outputFailed && code === EXIT.OK) {
        process.stderr.write(`oauth-pool: could not write the output: ${outputFailed.message}\n`, () => process.exit(EXIT.ERROR));
        return;
      }
      process.exit(code);
    });
  };
  // A stream that already failed may never call back again (Bun): nothing of it is waited for.
  if (readerGone || outputFailed || process.stdout.destroyed) done();
  else process.stdout.write("", done);
  if (process.stderr.destroyed) done();
  else process.stderr.write("", done);
}

main(process.argv.slice(2)).then(exit, (e) => {
  process.stderr.write(`oauth-pool: unexpected failure: ${e?.stack ?? e}\n`);
  exit(EXIT.ERROR);
});
