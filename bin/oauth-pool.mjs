#!/usr/bin/env node
// `oauth-pool`: manage the account pool from a shell, for headless machines. A thin layer over
// the library (../index.mjs): every change goes through the same locked, atomic store as the
// plugin, and errors keep the library's codes.
//
// Exit codes: 0 ok, 1 the library refused (`error [CODE]: message`), 2 usage error,
// 3 `doctor` found problems. With --json, stdout carries exactly one JSON document per line
// (errors too: {"error":{"code","message"}}), so scripts read stdout and switch on the exit code.
// Secrets never reach the output: summaries hold none, API keys come from stdin (never argv,
// where `ps` and shell history would show them), and library messages never carry one.
import { lstatSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, basename, join, resolve } from "node:path";
import { isIPv4 } from "node:net";
// Durations, "ago" and quota windows read the same here as in the OpenCode tool.
import { ago, duration, quotaText } from "../lib/plugin/format.mjs";

const PKG = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
const DEFAULT_TOKEN_URL = "https://platform.claude.com/v1/oauth/token";
const DEFAULT_API_URL = "https://api.anthropic.com";
// How long `doctor` waits for the pool's write lock before calling it stuck. Writers hold it for
// a read-modify-write of a small file (milliseconds), never across a network call.
const LOCK_PROBE_MS = 3000;
// An address that cannot be in a pool (.invalid is reserved, RFC 2606): removing it takes the
// write lock, finds nothing and writes nothing.
const LOCK_PROBE_EMAIL = "doctor-lock-probe@oauth-pool.invalid";

const EXIT = { OK: 0, ERROR: 1, USAGE: 2, PROBLEMS: 3 };

const USAGE = `oauth-pool ${PKG.version}: manage the opencode-oauth-pool account pool

usage: oauth-pool <command> [options]

commands:
  list                           every account: status, cooldown, priority, last use
  status                         per-account state, cooldowns with time left, 5h/7d quota
  add [--mode max|console]       print the login URL, then read the pasted code from stdin
  add-key [--email <e>]          read a Console API key from stdin (never from the command line)
  remove <email>                 remove an account
  enable <email>                 use an account again
  disable <email>                keep an account but never use it
  priority <email> <n>           higher is preferred (integer, may be negative)
  reset-cooldowns                forget every recorded cooldown
  import-claude-code [--email <e>] [--credentials <file>]
                                 copy an existing Claude Code login (~/.claude/.credentials.json)
  doctor                         check file and directory permissions, lock, backups, endpoints
  help                           this text

options (every command):
  --json                         machine output: one JSON document per line on stdout
  --path <file>                  the pool file (else $OAUTH_POOL_PATH, else ~/.aidevops/oauth-pool.json)
  -h, --help                     this text
  -V, --version                  the version

exit codes: 0 ok, 1 error from the library (error [CODE]: message), 2 usage error,
            3 doctor found problems
`;

// Options each command accepts besides the global ones; `true` marks options taking a value.
const COMMANDS = {
  list: { args: [0, 0] },
  status: { args: [0, 0] },
  add: { args: [0, 0], options: { mode: true } },
  "add-key": { args: [0, 0], options: { email: true } },
  remove: { args: [1, 1], names: "<email>" },
  enable: { args: [1, 1], names: "<email>" },
  disable: { args: [1, 1], names: "<email>" },
  priority: { args: [2, 2], names: "<email> <n>" },
  "reset-cooldowns": { args: [0, 0] },
  "import-claude-code": { args: [0, 0], options: { email: true, credentials: true } },
  doctor: { args: [0, 0] },
  help: { args: [0, 1] },
};
const GLOBAL_OPTIONS = { json: false, path: true, help: false, version: false };

class UsageError extends Error {}

/** A small strict parser: the global options plus the command's own, anywhere on the line. */
function parseArgs(argv) {
  const out = { command: null, positionals: [], options: {} };
  let rest = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    // Negative numbers are values (`priority a@x -1`), not options.
    if (rest || !arg.startsWith("-") || arg === "-" || /^-\d+$/.test(arg)) {
      if (out.command === null) out.command = arg;
      else out.positionals.push(arg);
      continue;
    }
    if (arg === "--") {
      rest = true;
      continue;
    }
    let name;
    let value;
    if (arg === "-h") name = "help";
    else if (arg === "-V") name = "version";
    else if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
      if (eq >= 0) value = arg.slice(eq + 1);
    } else throw new UsageError(`unknown option ${arg}`);
    const spec = COMMANDS[out.command]?.options ?? {};
    const takesValue = name in GLOBAL_OPTIONS ? GLOBAL_OPTIONS[name] : spec[name];
    if (takesValue === undefined) {
      throw new UsageError(
        out.command && COMMANDS[out.command] ? `${out.command} does not take --${name}` : `unknown option --${name}`,
      );
    }
    if (takesValue) {
      if (value === undefined) {
        if (i + 1 >= argv.length) throw new UsageError(`--${name} needs a value`);
        value = argv[++i];
      }
      if (value === "") throw new UsageError(`--${name} needs a value`);
    } else if (value !== undefined) {
      throw new UsageError(`--${name} takes no value`);
    }
    out.options[name] = takesValue ? value : true;
  }
  return out;
}

// ---- output -------------------------------------------------------------------------------------

function makeOutput(json) {
  return {
    json,
    /** A result: JSON on one line, or text for a person. */
    result(value, text) {
      process.stdout.write(json ? `${JSON.stringify(value)}\n` : text.endsWith("\n") ? text : `${text}\n`);
    },
    /** Guidance for a person (stderr, so stdout stays the result). */
    note(text) {
      if (!json) process.stderr.write(`${text}\n`);
    },
    error(code, message) {
      if (json) process.stdout.write(`${JSON.stringify({ error: { code, message } })}\n`);
      else process.stderr.write(`error [${code}]: ${message}\n`);
    },
  };
}

function fmtStatus(a, now) {
  if (a.status === "rate-limited" && a.rateLimitUntil) {
    return `rate-limited, ${duration(a.rateLimitUntil - now)} left`;
  }
  if (!a.enabled && a.status !== "disabled") return `${a.status} (disabled)`;
  return a.status;
}

function table(rows) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r) => r.map((c, i) => String(c).padEnd(i === r.length - 1 ? 0 : widths[i])).join("  ").trimEnd()).join("\n");
}

function listText(path, accounts, now) {
  if (accounts.length === 0) return `no accounts in ${path} (add one with: oauth-pool add)`;
  const rows = [["EMAIL", "TYPE", "STATUS", "PRIORITY", "LAST USED"]];
  for (const a of accounts) rows.push([a.email, a.type, fmtStatus(a, now), a.priority, ago(a.lastUsed, now)]);
  return table(rows);
}

function statusText(st, now) {
  const c = st.counts;
  const lines = [`pool ${st.path}: ${c.total} account(s), ${c.usable} usable now`];
  for (const a of st.accounts) {
    lines.push(`  ${a.email} (${a.type}${a.priority ? `, priority ${a.priority}` : ""})`);
    let state = fmtStatus(a, now);
    if (a.status === "rate-limited" && a.rateLimitUntil) state += ` (until ${new Date(a.rateLimitUntil).toISOString()})`;
    lines.push(`    status   ${state}`);
    const windows = quotaText(a.quota, now);
    if (windows) {
      const seen = typeof a.quota.updatedAt === "number" ? `, seen ${ago(a.quota.updatedAt, now)}` : "";
      lines.push(`    quota    ${windows}${seen}`);
    }
    if (a.type === "oauth" && typeof a.expires === "number") {
      lines.push(`    token    ${a.expires > now ? `valid for ${duration(a.expires - now)}` : "expired (refreshed on next use)"}`);
    }
    lines.push(`    used     ${ago(a.lastUsed, now)}`);
    if (a.lastError) lines.push(`    problem  ${a.lastError}`);
  }
  if (st.soonestReset) lines.push(`soonest reset: in ${duration(st.soonestReset - now)}`);
  if (st.lastFailover) {
    const f = st.lastFailover;
    lines.push(`last failover: ${ago(f.at, now)}, ${f.from} -> ${f.to ?? "(none)"}: ${f.reason}`);
  }
  for (const inv of st.invalid ?? []) lines.push(`unreadable entry anthropic[${inv.index}]: ${inv.reason} (kept as it is)`);
  return lines.join("\n");
}

// ---- stdin --------------------------------------------------------------------------------------

/** One line from stdin (a pipe, or a terminal with the echo on or off). */
async function readLine({ prompt, hidden = false } = {}) {
  const stdin = process.stdin;
  if (stdin.isTTY) {
    if (prompt) process.stderr.write(prompt);
    if (hidden && typeof stdin.setRawMode === "function") return readHidden(stdin);
  }
  return new Promise((resolveLine, reject) => {
    let buf = "";
    const done = (text) => {
      stdin.off("data", onData);
      stdin.off("end", onEnd);
      stdin.off("error", onError);
      stdin.pause();
      resolveLine(text.replace(/\r$/, ""));
    };
    const onData = (chunk) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl >= 0) done(buf.slice(0, nl));
    };
    const onEnd = () => done(buf);
    const onError = (e) => reject(e);
    stdin.setEncoding("utf8");
    stdin.on("data", onData);
    stdin.on("end", onEnd);
    stdin.on("error", onError);
    stdin.resume();
  });
}

function readHidden(stdin) {
  return new Promise((resolveLine) => {
    let buf = "";
    stdin.setRawMode(true);
    stdin.setEncoding("utf8");
    const onData = (chunk) => {
      for (const ch of chunk) {
        if (ch === "\r" || ch === "\n" || ch === "\u0004") {
          stdin.setRawMode(false);
          stdin.off("data", onData);
          stdin.pause();
          process.stderr.write("\n");
          return resolveLine(buf);
        }
        if (ch === "\u0003") {
          stdin.setRawMode(false);
          process.stderr.write("\n");
          process.exit(130);
        }
        if (ch === "\u007f" || ch === "\b") buf = buf.slice(0, -1);
        else buf += ch;
      }
    };
    stdin.on("data", onData);
    stdin.resume();
  });
}

// ---- doctor -------------------------------------------------------------------------------------

/** The pool path the library will use: the same rules as the Rust side (config.rs). */
function resolvePoolPath(explicit) {
  const home = process.platform === "win32" ? process.env.USERPROFILE : process.env.HOME;
  const expand = (p) => {
    if (p.startsWith("~/") && home) return join(home, p.slice(2));
    return resolve(p);
  };
  if (explicit) return { path: expand(explicit), source: "--path" };
  if (process.env.OAUTH_POOL_PATH) return { path: expand(process.env.OAUTH_POOL_PATH), source: "OAUTH_POOL_PATH" };
  if (!home) return { path: null, source: "default" };
  return { path: join(home, ".aidevops", "oauth-pool.json"), source: "default" };
}

const octal = (st) => `0${(st.mode & 0o777).toString(8).padStart(3, "0")}`;
const posix = process.platform !== "win32";
const myUid = typeof process.getuid === "function" ? process.getuid() : null;

function lstatOrNull(p) {
  try {
    return lstatSync(p);
  } catch (e) {
    if (e.code === "ENOENT" || e.code === "ENOTDIR") return null;
    throw e;
  }
}

/** Linux only: who holds a kernel lock on `file` (from /proc/locks), or [] when nobody does. */
function lockHolders(file) {
  if (process.platform !== "linux") return null;
  let st;
  let locks;
  try {
    st = statSync(file);
    locks = readFileSync("/proc/locks", "utf8");
  } catch {
    return null;
  }
  const holders = [];
  for (const line of locks.split("\n")) {
    // "1: FLOCK  ADVISORY  WRITE 4242 08:01:1234567 0 EOF"
    const m = /^\d+:\s+(?:->\s+)?(\S+)\s+\S+\s+(\S+)\s+(-?\d+)\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s/.exec(line);
    if (!m || Number(m[4]) !== st.ino) continue;
    const pid = Number(m[3]);
    let cmd = "";
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).slice(0, 3).join(" ");
    } catch {}
    holders.push({ pid, kind: m[1], access: m[2], command: cmd || null });
  }
  return holders;
}

function isLoopbackHost(hostname) {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  return isIPv4(h) && h.startsWith("127.");
}

/** The https-or-loopback rule the library applies to OAUTH_POOL_TOKEN_URL / OAUTH_POOL_API_URL. */
function checkEndpoint(variable, fallback) {
  const raw = process.env[variable]?.trim();
  if (!raw) return { level: "ok", message: `${variable} unset: ${fallback}` };
  let url;
  try {
    url = new URL(raw);
  } catch {
    return { level: "problem", message: `${variable}=${raw} is not a URL: requests fail with INSECURE_ENDPOINT` };
  }
  if (url.protocol === "https:") return { level: "ok", message: `${variable}=${raw} (overrides ${fallback})` };
  if (url.protocol === "http:" && isLoopbackHost(url.hostname)) {
    return { level: "warn", message: `${variable}=${raw}: plain http to a loopback host (a test setup, not Anthropic)` };
  }
  if (url.protocol === "http:") {
    return { level: "problem", message: `${variable}=${raw}: plain http is allowed only to a loopback host; requests fail with INSECURE_ENDPOINT` };
  }
  return { level: "problem", message: `${variable}=${raw}: scheme ${url.protocol.slice(0, -1)} is not https; requests fail with INSECURE_ENDPOINT` };
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((resolveTimeout) => {
    timer = setTimeout(() => resolveTimeout({ timedOut: true }), ms);
  });
  return Promise.race([
    promise.then(
      (value) => ({ value }),
      (error) => ({ error }),
    ),
    timeout,
  ]).finally(() => clearTimeout(timer));
}

async function doctor(lib, explicitPath) {
  const checks = [];
  const add = (name, level, message, extra) => checks.push({ name, level, message, ...extra });

  let triple = "unknown";
  try {
    triple = lib.platformTriple();
    add("native", "ok", `native addon ${lib.nativeVersion()} for ${triple}`);
  } catch (e) {
    add("native", "problem", `native addon: ${e.message}`);
  }

  const { path, source } = resolvePoolPath(explicitPath);
  if (!path) {
    add("path", "problem", "no home directory (HOME) and no OAUTH_POOL_PATH: the pool has no place");
    return { path: null, checks };
  }
  add("path", "ok", `pool file ${path} (from ${source})`);
  const dir = dirname(path);
  const name = basename(path);

  // The directory.
  const dst = lstatOrNull(dir);
  if (!dst) add("directory", "ok", `${dir} does not exist yet (created 0700 by the first write)`);
  else if (dst.isSymbolicLink()) {
    const target = statSync(dir, { throwIfNoEntry: false });
    add("directory", target?.isDirectory() ? "warn" : "problem", `${dir} is a symbolic link${target?.isDirectory() ? " to a directory: check that it is yours and private" : " to nothing usable"}`);
  } else if (!dst.isDirectory()) add("directory", "problem", `${dir} is not a directory`);
  else {
    if (posix && (dst.mode & 0o077) !== 0) {
      add("directory", "problem", `${dir} is ${octal(dst)}: others can list it (fix: chmod 700 ${dir})`);
    } else add("directory", "ok", `${dir}${posix ? ` is ${octal(dst)}` : " exists"}`);
    if (posix && myUid !== null && dst.uid !== myUid) add("directory owner", "problem", `${dir} belongs to uid ${dst.uid}, not to you (uid ${myUid})`);
  }

  // The pool file: inspected before the library reads it, because reading tightens a wide mode.
  const fst = lstatOrNull(path);
  let fileUsable = false;
  if (!fst) add("file", "ok", `${name} does not exist yet (an empty pool; created 0600 by the first add)`);
  else if (fst.isSymbolicLink()) add("file", "problem", `${path} is a symbolic link: the library refuses it (POOL_INSECURE); point OAUTH_POOL_PATH at the real file`);
  else if (!fst.isFile()) add("file", "problem", `${path} is not a regular file (POOL_INSECURE)`);
  else if (posix && myUid !== null && fst.uid !== myUid) add("file", "problem", `${path} belongs to uid ${fst.uid}, not to you (uid ${myUid}): the library refuses it (POOL_INSECURE)`);
  else {
    fileUsable = true;
    if (posix && (fst.mode & 0o077) !== 0) {
      add("file mode", "problem", `${path} was ${octal(fst)}: other users could read the tokens in it (the library tightens it to 0600 on its next read or write; revoke the logins if others had access)`);
    } else add("file mode", "ok", posix ? `${name} is ${octal(fst)}` : `${name}: permissions are ACLs on Windows (not checked)`);
  }

  let pool = null;
  if (fst) {
    try {
      pool = await lib.loadPool(path);
      const n = pool.anthropic?.length ?? 0;
      add("parse", "ok", `${name} parses: ${n} entr${n === 1 ? "y" : "ies"}`);
    } catch (e) {
      add("parse", "problem", `${e.message}`, { code: e.code });
    }
  }

  // Accounts worth a look (not failures of the file).
  if (pool) {
    try {
      const st = await lib.poolStatus(path);
      for (const a of st.accounts) {
        if (a.status === "auth-error") add("account", "warn", `${a.email} needs a new login (auth-error${a.lastError ? `: ${a.lastError}` : ""}): oauth-pool add`);
      }
      for (const inv of st.invalid) add("account", "warn", `anthropic[${inv.index}] cannot be read (${inv.reason}); it is kept as it is`);
      if (st.counts.total > 0 && st.counts.usable === 0) {
        add("accounts", "warn", `no account is usable right now${st.soonestReset ? ` (the soonest is back in ${duration(st.soonestReset - Date.now())})` : ""}`);
      }
    } catch (e) {
      add("accounts", "problem", e.message, { code: e.code });
    }
  }

  // The lock file: never renamed or deleted, created 0600 by the first write.
  const lockPath = `${path}.lock`;
  const lst = lstatOrNull(lockPath);
  if (!lst) add("lock", "ok", `${basename(lockPath)} does not exist yet (created by the first write)`);
  else if (lst.isSymbolicLink()) add("lock", "problem", `${lockPath} is a symbolic link: writes are refused (POOL_INSECURE); remove it`);
  else if (!lst.isFile()) add("lock", "problem", `${lockPath} is not a regular file: writes fail; remove it`);
  else {
    if (posix && (lst.mode & 0o077) !== 0) add("lock mode", "warn", `${lockPath} is ${octal(lst)} (expected 0600; it holds no secret)`);
    if (posix && myUid !== null && lst.uid !== myUid) add("lock owner", "problem", `${lockPath} belongs to uid ${lst.uid}, not to you`);
    const holders = lockHolders(lockPath);
    if (fileUsable && pool) {
      // The library itself is asked: a no-op removal takes the write lock, finds nothing,
      // writes nothing. (flushPool would not do: a fresh process has nothing to flush.)
      const r = await withTimeout(lib.removeAccount(LOCK_PROBE_EMAIL, path), LOCK_PROBE_MS);
      const who = holders?.length ? `; held by ${holders.map((h) => `pid ${h.pid}${h.command ? ` (${h.command})` : ""}`).join(", ")}` : "";
      if (r.timedOut) add("lock", "problem", `${basename(lockPath)} has been held by another process for more than ${LOCK_PROBE_MS / 1000} s${who}: writes wait (POOL_BUSY after 60 s)`, { holders });
      else if (r.error && r.error.code !== "ACCOUNT_NOT_FOUND") add("lock", "problem", `cannot take ${basename(lockPath)}: ${r.error.message}`, { code: r.error.code });
      else add("lock", "ok", `${basename(lockPath)} can be taken${holders?.length ? ` (briefly held by pid ${holders.map((h) => h.pid).join(", ")})` : ""}`);
    } else {
      add("lock", "ok", `${basename(lockPath)} present${holders?.length ? `, held by pid ${holders.map((h) => h.pid).join(", ")}` : ""} (not probed: the pool file is not readable)`);
    }
  }

  // The backup of the previous generation.
  const bakPath = `${path}.bak`;
  const bst = lstatOrNull(bakPath);
  if (!bst) add("backup", "ok", `no ${basename(bakPath)} yet (kept from the second write on)`);
  else if (!bst.isFile()) add("backup", "warn", `${bakPath} is not a regular file`);
  else {
    if (posix && (bst.mode & 0o077) !== 0) add("backup mode", "problem", `${bakPath} is ${octal(bst)}: other users could read the tokens in it (fix: chmod 600 ${bakPath})`);
    try {
      const bak = await lib.loadPool(bakPath);
      const corrupt = checks.some((c) => c.name === "parse" && c.level === "problem");
      add(
        "backup",
        "ok",
        `${basename(bakPath)} parses: ${bak.anthropic?.length ?? 0} entries${corrupt ? ` (restore it with: cp ${bakPath} ${path})` : ""}`,
      );
    } catch (e) {
      add("backup", "warn", `${basename(bakPath)} does not parse: ${e.message}`, { code: e.code });
    }
  }

  // Temp files left by a writer that died mid-write: they hold tokens.
  if (dst?.isDirectory() || dst?.isSymbolicLink()) {
    let strays = [];
    try {
      strays = readdirSync(dir).filter((f) => f.startsWith(`.${name}.`) && f.endsWith(".tmp"));
    } catch {}
    if (strays.length) {
      add("temp files", "warn", `${strays.length} temp file(s) left by an interrupted write (${strays.join(", ")}); they may hold tokens and the next write removes them`, { files: strays });
    } else add("temp files", "ok", "no leftover temp files");
  }

  // Endpoints.
  for (const [variable, fallback] of [
    ["OAUTH_POOL_TOKEN_URL", DEFAULT_TOKEN_URL],
    ["OAUTH_POOL_API_URL", DEFAULT_API_URL],
  ]) {
    const r = checkEndpoint(variable, fallback);
    add("endpoint", r.level, r.message);
  }

  return { path, checks };
}

function doctorText(report) {
  const mark = { ok: "ok  ", warn: "warn", problem: "FAIL" };
  const lines = report.checks.map((c) => `${mark[c.level]}  ${c.name.padEnd(15)} ${c.message}`);
  const problems = report.checks.filter((c) => c.level === "problem").length;
  const warnings = report.checks.filter((c) => c.level === "warn").length;
  lines.push(`doctor: ${problems} problem(s), ${warnings} warning(s)`);
  return lines.join("\n");
}

// ---- commands -----------------------------------------------------------------------------------

async function run(lib, cmd, args, opts, out) {
  const path = opts.path;
  const now = Date.now();
  switch (cmd) {
    case "list": {
      // poolStatus: the same summaries as listAccounts, plus the path the library resolved.
      const { path: shown, accounts } = await lib.poolStatus(path);
      out.result({ path: shown, accounts }, listText(shown, accounts, now));
      return EXIT.OK;
    }
    case "status": {
      const st = await lib.poolStatus(path);
      out.result(st, statusText(st, now));
      return EXIT.OK;
    }
    case "add": {
      const mode = opts.mode ?? "max";
      if (mode !== "max" && mode !== "console") throw new UsageError(`--mode must be max or console, not ${mode}`);
      const pkce = await lib.authorize({ mode });
      // The URL goes to stdout alone on its line (so a script can pick it up); the guidance to stderr.
      out.note(`Open this URL in a browser, log in${mode === "console" ? " to the Anthropic Console" : " with the Claude account to add"}, and paste the code it shows:`);
      out.result({ url: pkce.url }, pkce.url);
      const code = (await readLine({ prompt: "code: " })).trim();
      const r = await lib.addAccount(code, { verifier: pkce.verifier, state: pkce.state }, path);
      out.result(r, `${r.added ? "added" : "updated"} ${r.email}`);
      return EXIT.OK;
    }
    case "add-key": {
      if (process.stdin.isTTY) out.note("Paste the Console API key (input hidden), then Enter.");
      const key = (await readLine({ prompt: "API key: ", hidden: true })).trim();
      if (!key) throw new UsageError("add-key reads the API key from stdin, and stdin held nothing");
      const r = await lib.addApiKey(key, { email: opts.email, path });
      out.result(r, `${r.added ? "added" : "updated"} ${r.email} (API key)`);
      return EXIT.OK;
    }
    case "remove": {
      const removed = await lib.removeAccount(args[0], path);
      out.result({ email: args[0], removed }, `removed ${args[0]}${removed > 1 ? ` (${removed} entries)` : ""}`);
      return EXIT.OK;
    }
    case "enable":
    case "disable": {
      const enabled = cmd === "enable";
      await lib.setEnabled(args[0], enabled, path);
      out.result({ email: args[0], enabled }, `${enabled ? "enabled" : "disabled"} ${args[0]}`);
      return EXIT.OK;
    }
    case "priority": {
      if (!/^-?\d+$/.test(args[1]) || !Number.isSafeInteger(Number(args[1]))) {
        throw new UsageError(`priority must be an integer, not ${args[1]}`);
      }
      const priority = Number(args[1]);
      await lib.setPriority(args[0], priority, path);
      out.result({ email: args[0], priority }, `priority of ${args[0]} is now ${priority}`);
      return EXIT.OK;
    }
    case "reset-cooldowns": {
      const reset = await lib.resetCooldowns(path);
      out.result({ reset }, reset ? `cleared the cooldown of ${reset} account(s)` : "no account was cooling");
      return EXIT.OK;
    }
    case "import-claude-code": {
      const r = await lib.importClaudeCode({ email: opts.email, credentialsPath: opts.credentials ? resolve(opts.credentials) : undefined, path });
      out.result(r, `${r.added ? "imported" : "updated"} ${r.email} from Claude Code`);
      return EXIT.OK;
    }
    case "doctor": {
      const report = await doctor(lib, path);
      const ok = !report.checks.some((c) => c.level === "problem");
      out.result({ ok, ...report }, doctorText(report));
      return ok ? EXIT.OK : EXIT.PROBLEMS;
    }
  }
  throw new UsageError(`unknown command ${cmd}`);
}

async function loadLibrary() {
  return import("../index.mjs");
}

async function version(out) {
  let native = null;
  let platform = null;
  try {
    const lib = await loadLibrary();
    native = lib.nativeVersion();
    platform = lib.platformTriple();
  } catch {}
  out.result({ version: PKG.version, native, platform }, `oauth-pool ${PKG.version}${native ? ` (native ${native}, ${platform})` : " (native addon missing)"}`);
}

/** Waits until stdout and stderr took everything, then exits (a pending native call cannot hold us). */
function exit(code) {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write("", done);
  process.stderr.write("", done);
}

async function main(argv) {
  // `oauth-pool list | head -1` must not crash on the closed pipe.
  process.stdout.on("error", (e) => {
    if (e.code === "EPIPE") process.exit(0);
  });
  const json = argv.includes("--json");
  let out = makeOutput(json);
  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    out.error("USAGE", `${e.message} (oauth-pool --help)`);
    return EXIT.USAGE;
  }
  const { command, positionals, options } = parsed;
  out = makeOutput(Boolean(options.json));
  if (options.version) {
    await version(out);
    return EXIT.OK;
  }
  if (options.help || command === "help") {
    out.result({ usage: USAGE }, USAGE);
    return EXIT.OK;
  }
  if (!command) {
    if (out.json) out.error("USAGE", "no command given (oauth-pool --help)");
    else process.stderr.write(USAGE);
    return EXIT.USAGE;
  }
  const spec = COMMANDS[command];
  if (!spec) {
    out.error("USAGE", `unknown command ${command} (oauth-pool --help)`);
    return EXIT.USAGE;
  }
  const [min, max] = spec.args;
  if (positionals.length < min || positionals.length > max) {
    const hint = command === "add-key" && positionals.length ? " (the key is read from stdin: an argument would show in ps and shell history)" : "";
    out.error("USAGE", `usage: oauth-pool ${command}${spec.names ? ` ${spec.names}` : ""}${hint}`);
    return EXIT.USAGE;
  }
  let lib;
  try {
    lib = await loadLibrary();
  } catch (e) {
    out.error(e.code ?? "NATIVE_MISSING", e.message);
    return EXIT.ERROR;
  }
  try {
    return await run(lib, command, positionals, options, out);
  } catch (e) {
    if (e instanceof UsageError) {
      out.error("USAGE", e.message);
      return EXIT.USAGE;
    }
    out.error(e?.code ?? "ERROR", e?.message ?? String(e));
    return EXIT.ERROR;
  }
}

main(process.argv.slice(2)).then(exit, (e) => {
  process.stderr.write(`oauth-pool: unexpected failure: ${e?.stack ?? e}\n`);
  exit(EXIT.ERROR);
});
