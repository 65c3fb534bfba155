// `oauth-pool doctor`: what could stop the pool from working or expose its tokens. Where the
// files are, what they are called and which endpoints pass the pool's rule are asked of the
// library (poolFiles, checkEndpoints, checkSettings), never re-derived here: a doctor that guesses can
// disagree with the code it diagnoses. What is left here is looking at those files.
//
// Each check is { name, level: ok|info|warn|problem, message, ...details }; any problem makes
// the exit code 3. Messages keep emails and reasons as they are (JSON escapes them); the text
// report escapes each message whole, which is safe because a message is one line of ours.
import { randomUUID } from "node:crypto";
import { accessSync, constants as fsConstants, lstatSync, readFileSync, readdirSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join } from "node:path";
import { heldText, wait } from "../plugin/format.mjs";
import { EXIT } from "./errors.mjs";
import { printable } from "./output.mjs";
import { accountArgument, holdsCredential, shellWord, shortened, withoutCredentials } from "../printable.mjs";
import { removeAdvice } from "./accounts.mjs";
import { NO_PIECES, poolPieces } from "./pieces.mjs";

// How long doctor waits for the pool's write lock before calling it stuck. Writers hold it for
// a read-modify-write of a small file (milliseconds), never across a network call.
const LOCK_PROBE_MS = 3000;
// The probe removes an address of the reserved .invalid domain (RFC 2606) with a random part,
// which no entry of the pool read has: removing it takes the write lock, finds nothing and writes
// nothing. A fixed one was removed from a pool that held it (doctor never writes the pool).
const lockProbeEmail = () => `doctor-lock-probe-${randomUUID()}@oauth-pool.invalid`;
const SOURCES = {
  argument: "--path",
  OAUTH_POOL_PATH: "OAUTH_POOL_PATH",
  AIDEVOPS_OAUTH_POOL_FILE: "AIDEVOPS_OAUTH_POOL_FILE, aidevops's own",
  OAUTH_POOL_STORE: "OAUTH_POOL_STORE",
  default: "the default",
};
/** The variables that name a pool file, each of which a process started without it does not see. */
const posix = process.platform !== "win32";
const myUid = typeof process.getuid === "function" ? process.getuid() : null;
const octal = (st) => `0${(st.mode & 0o777).toString(8).padStart(3, "0")}`;
const othersCanAccess = (st) => posix && (st.mode & 0o077) !== 0;
const notMine = (st) => posix && myUid !== null && st.uid !== myUid;

// A path through a symbolic link that loops reaches nothing, as one that is not there: doctor
// ended on it (`error [ELOOP]`) instead of saying so (checkDirectory does).
function lstatOrNull(p) {
  try {
    return lstatSync(p);
  } catch (e) {
    if (e.code === "ENOENT" || e.code === "ENOTDIR" || e.code === "ELOOP") return null;
    throw e;
  }
}

function report() {
  const checks = [];
  return {
    checks,
    // The pool's keys and tokens (lib/cli/pieces.mjs), once the pool is read: a name holding a
    // piece of one is named by its place, and every message goes out without them.
    pieces: NO_PIECES,
    // A message is prose for a person in --json too (its fields carry the names as data), and
    // an account's name can hold a credential.
    add: (name, level, message, extra) => checks.push({ name, level, message: withoutCredentials(message), ...extra }),
    failed: (name) => checks.some((c) => c.name === name && c.level === "problem"),
  };
}

/** Linux only: who holds a kernel lock on `file` (from /proc/locks); null when unknown. */
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
    let command = "";
    try {
      command = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean).slice(0, 3).join(" ");
    } catch {}
    // Another program's command line, said as the message says it: `--json` printed it raw,
    // with a key given on it (found by a review, 2026-12-07, fourth).
    holders.push({ pid, kind: m[1], access: m[2], command: command ? shortened(withoutCredentials(printable(command)), 200) : null });
  }
  return holders;
}

/** Linux only: whether `pid` is stopped (SIGSTOP, Ctrl-Z, a debugger): state T or t in /proc. */
function isStopped(pid) {
  if (process.platform !== "linux") return false;
  try {
    // "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")".
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return /^[Tt]$/.test(stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3));
  } catch {
    return false;
  }
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), ms);
  });
  return Promise.race([
    promise.then(
      (value) => ({ value }),
      (error) => ({ error }),
    ),
    timeout,
  ]).finally(() => clearTimeout(timer));
}

// ---- the checks, in the order they print --------------------------------------------------------

function checkNative(lib, r) {
  try {
    r.add("native", "ok", `native addon ${lib.nativeVersion()} for ${lib.platformTriple()}`);
    return true;
  } catch (e) {
    r.add("native", "problem", `native addon: ${e.message}`, { code: e.code });
    return false;
  }
}

/**
 * The nearest of `dir`'s ancestors that exists, when it is no directory (a HOME that is a file,
 * a path through a regular file) or one this process cannot make a directory in (a read-only
 * mount, another user's): the pool's directory can then never be made, and every write fails
 * with POOL_IO (it read "does not exist yet"). Null otherwise.
 */
function blockingAncestor(dir) {
  for (let p = dirname(dir); ; p = dirname(p)) {
    let st;
    try {
      st = statSync(p);
    } catch (e) {
      if (e.code === "ELOOP" && lstatOrNull(p)?.isSymbolicLink()) return { at: p, why: "is a symbolic link that loops" };
      // Not there (keep climbing) or below a file (the file is found further up).
      if (e.code !== "ENOENT" && e.code !== "ENOTDIR" && e.code !== "ELOOP") return null;
    }
    if (st && !st.isDirectory()) return { at: p, why: "is not a directory" };
    if (st) {
      try {
        accessSync(p, fsConstants.W_OK | fsConstants.X_OK);
        return null;
      } catch (e) {
        return { at: p, why: e.code === "EROFS" ? "is on a read-only file system" : `cannot be written in (${e.code ?? e.message})` };
      }
    }
    if (dirname(p) === p) return null;
  }
}

function checkDirectory(files, r) {
  const dir = files.directory;
  const st = lstatOrNull(dir);
  if (!st) {
    // ENOTDIR reads like "not there yet" too, and every command then fails with POOL_IO.
    const blocker = blockingAncestor(dir);
    if (blocker) {
      const mend = files.source === "default" ? "fix HOME, or set OAUTH_POOL_PATH" : `point ${SOURCES[files.source] ?? files.source} elsewhere`;
      r.add("directory", "problem", `${dir} cannot be created: ${blocker.at} ${blocker.why} (every command fails with POOL_IO; ${mend})`);
      return "blocked";
    }
    return r.add("directory", "ok", `${dir} does not exist yet (created 0700 by the first write)`);
  }
  if (st.isSymbolicLink()) {
    let target = null;
    try {
      target = statSync(dir);
    } catch {}
    if (target?.isDirectory()) return r.add("directory", "warn", `${dir} is a symbolic link to a directory: check that it is yours and private`);
    r.add("directory", "problem", `${dir} is a symbolic link to nothing usable (no pool can be written there: POOL_IO)`);
    return "blocked";
  }
  if (!st.isDirectory()) return r.add("directory", "problem", `${dir} is not a directory`);
  // Writable by others without the sticky bit, they can delete or replace the pool file: the
  // library refuses a file of theirs, but the user's own is then gone.
  const othersReplace = posix && (st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0;
  if (othersReplace) r.add("directory", "problem", `${dir} is ${octal(st)}: other users can delete or replace the pool file in it (fix: chmod 700 ${dir})`);
  else if (othersCanAccess(st)) r.add("directory", "problem", `${dir} is ${octal(st)}: others can list it (fix: chmod 700 ${dir})`);
  else r.add("directory", "ok", `${dir}${posix ? ` is ${octal(st)}` : " exists"}`);
  if (notMine(st)) r.add("directory owner", "problem", `${dir} belongs to uid ${st.uid}, not to you (uid ${myUid})`);
}

/** Inspected before the library reads the file, because reading tightens a wide mode. */
function checkFile(files, r) {
  const { path } = files;
  const name = basename(path);
  const st = lstatOrNull(path);
  if (!st) return r.add("file", "ok", `${name} does not exist yet (an empty pool; created 0600 by the first add)`);
  if (st.isSymbolicLink())
    return r.add("file", "problem", `${path} is a symbolic link: the library refuses it (POOL_INSECURE); point OAUTH_POOL_PATH at the real file`);
  if (!st.isFile()) return r.add("file", "problem", `${path} is not a regular file (POOL_INSECURE)`);
  if (notMine(st)) return r.add("file", "problem", `${path} belongs to uid ${st.uid}, not to you (uid ${myUid}): the library refuses it (POOL_INSECURE)`);
  if (othersCanAccess(st)) {
    r.add(
      "file mode",
      "problem",
      `${path} was ${octal(st)}: other users could read the tokens in it (the library tightens it to 0600 on its next read or write of it, not while it does not parse; \`chmod 600 ${shellWord(path)}\` does it now; revoke the logins if others had access)`,
    );
  } else r.add("file mode", "ok", posix ? `${name} is ${octal(st)}` : `${name}: permissions are ACLs on Windows (not checked)`);
  return "usable";
}

async function checkParse(lib, path, files, r) {
  try {
    const pool = await lib.loadPool(path);
    const n = pool.anthropic?.length ?? 0;
    r.add("parse", "ok", `${basename(files.path)} parses: ${n} entr${n === 1 ? "y" : "ies"}`);
    return true;
  } catch (e) {
    r.add("parse", "problem", e.message, { code: e.code });
    return false;
  }
}

/**
 * How a suggested command names the account `email` at `index` (its place in the file, from 0):
 * its email as one shell word, or, where the name holds a credential (the message shows it
 * `[redacted]`, a command no one can run), its place `'#N'`, as `list` shows it beside the
 * name, which every command naming an account takes. An email otherwise, not always the place:
 * it still names the account once another is removed, when the place then names another.
 */
const accountWord = (email, index, pieces) => accountArgument(hidden(email, pieces) ? `#${index}` : email);

/** Whether `email` is shown without a part of it: a credential's shape, or a piece of the pool's. */
const hidden = (email, pieces) => holdsCredential(email) || pieces.hides(email);

/**
 * How to put a key under an API-key account's name. A name holding a credential is refused by
 * add-key (and `#N` is no name to give one), so the account is replaced: removed by its place,
 * then the key added under a name of the person's choosing.
 */
function keyFix(email, index, pieces) {
  // `--email=` for a name that starts with `-`, which `--email <value>` reads as an option.
  if (!hidden(email, pieces)) return `oauth-pool add-key --email${email.startsWith("-") ? "=" : " "}${shellWord(email)}`;
  return `oauth-pool remove ${accountWord(email, index, pieces)}, then oauth-pool add-key --email <a name> (its name holds a credential, which add-key refuses in a name)`;
}

/** Accounts worth a look: not failures of the file, so warnings and notes only. */
async function checkAccounts(lib, path, r) {
  let st;
  try {
    st = await lib.poolStatus(path);
  } catch (e) {
    return r.add("accounts", "problem", e.message, { code: e.code });
  }
  for (const [index, a] of st.accounts.entries()) {
    // Marked by another program (the aidevops plugin's helper): the pool tries the login again,
    // as `list` and `status` say; "needs a new login" sent people through a login for nothing.
    const theirs = a.status === "auth-error" && a.authErrorTheirs && a.type !== "api" && a.credential !== false ? heldText(a) : null;
    if (theirs) r.add("account", "info", `${a.email}: ${theirs}`);
    else if (a.status === "auth-error") {
      const why = `auth-error${a.lastError ? `: ${a.lastError}` : ""}`;
      // A refused key is replaced with add-key under its name; `add` (a login) cannot fix it.
      r.add(
        "account",
        "warn",
        a.type === "api"
          ? `${a.email}: its API key was refused (${why}): add a working one with: ${keyFix(a.email, index, r.pieces)}`
          : `${a.email} needs a new login (${why}): oauth-pool add`,
      );
    }
    if (a.status === "invalid") {
      r.add("account", "warn", `entry #${a.index} (${a.email}): ${a.lastError}; remove it ${removeAdvice(a, st.accounts)}`, { index: a.index });
    }
  }
  // The entries as stored, read once: what the status does not carry (a field it does not read).
  const entries = await lib.loadPool(path).then(
    (pool) => pool.anthropic ?? [],
    () => [],
  );
  checkReserves(entries, r);
  // Entries with nothing to send are never used, whatever status they read (as list and the
  // tool say): doctor said only "no account is usable" when every entry was one.
  const empty = st.accounts.filter((a) => a.credential === false && !["auth-error", "disabled", "invalid"].includes(a.status) && a.enabled !== false);
  const misplaced = keyFields(entries);
  for (const a of empty) {
    if (a.type !== "api") {
      r.add(
        "account",
        "warn",
        `${a.email} has no token (its login was never saved, or was cut short), so it is never used: log in again with: oauth-pool add (or opencode auth login -> Anthropic Pool)`,
        {
          email: a.email,
        },
      );
      continue;
    }
    const field = misplaced.get(a.email);
    const where = field ? `its key is under ${JSON.stringify(printable(field))}, which is not read (the pool reads "key")` : "no key is stored for it";
    r.add(
      "account",
      "warn",
      `${a.email} is an API-key account, but ${where}, so it is never used: add the key with: ${keyFix(a.email, st.accounts.indexOf(a), r.pieces)}`,
      {
        email: a.email,
      },
    );
  }
  for (const group of st.caseClashes ?? []) {
    r.add(
      "case clash",
      "warn",
      `${group.join(", ")} differ only in case or Unicode form: commands that name one need its exact spelling; remove the one you do not use`,
      {
        emails: group,
      },
    );
  }
  for (const email of st.refreshLocked ?? []) {
    r.add("refresh lock", "info", `${email}: a process holds its refresh lock (a token refresh is under way)`, { email });
  }
  for (const u of st.unsavedTokens ?? []) {
    r.add("unsaved tokens", "warn", `${u.email}: new tokens could not be written (${u.error})`, { email: u.email });
  }
  if (st.counts.total === 0) return noAccount(r);
  if (st.counts.usable > 0) return;
  const disabled = st.accounts.filter((a) => a.status === "disabled");
  if (disabled.length === st.counts.total) {
    // Nothing will come back by itself: only a person enables an account again.
    return r.add(
      "accounts",
      "warn",
      `every account is disabled, so every request fails (POOL_NO_ACCOUNT): enable one with: oauth-pool enable ${accountWord(disabled[0].email, st.accounts.indexOf(disabled[0]), r.pieces)}`,
    );
  }
  const back = st.soonestReset ? ` (the soonest is back ${wait(st.soonestReset)})` : "";
  const also = disabled.length
    ? `; ${disabled.length} disabled (oauth-pool enable ${accountWord(disabled[0].email, st.accounts.indexOf(disabled[0]), r.pieces)})`
    : "";
  if (empty.length === st.counts.total - disabled.length) {
    // Nothing comes back by itself here either: every one needs a login or a key.
    return r.add(
      "accounts",
      "warn",
      `no account is usable: ${empty.length === 1 ? "the only one has" : `all ${empty.length} have`} no token or key to send, so every request fails (see above for what each needs)${also}`,
    );
  }
  const none = empty.length ? `; ${empty.length} with no token or key (see above)` : "";
  r.add("accounts", "warn", `no account is usable right now${back}${also}${none}`);
}

/**
 * API-key entries whose key is under another field than `key` (a hand-edited file, another
 * tool's shape): email -> that field's name, never its value.
 */
function keyFields(entries) {
  const found = new Map();
  for (const e of entries) {
    if (e?.type !== "api" || typeof e.email !== "string" || (typeof e.key === "string" && e.key)) continue;
    const field = Object.keys(e).find((k) => k !== "key" && /key|token|secret/i.test(k) && typeof e[k] === "string" && e[k].length > 0);
    if (field) found.set(e.email, field.slice(0, 64));
  }
  return found;
}

/**
 * A `reserve` written by hand as a percent (20), a string ("0.2") or past 1 is not read, and the
 * account was used to its limits with nothing saying so: the share its owner meant to keep was
 * spent. `oauth-pool reserve` refuses such values; a hand edit does not.
 */
function checkReserves(entries, r) {
  for (const [index, e] of entries.entries()) {
    if (e === null || typeof e !== "object" || e.reserve === undefined || e.reserve === null || typeof e.email !== "string") continue;
    const v = e.reserve;
    if (typeof v === "number" && Number.isFinite(v) && v >= 0 && v <= 1) continue;
    const meant = typeof v === "number" && v > 1 && v <= 100 ? v / 100 : typeof v === "string" && Number(v) >= 0 && Number(v) <= 1 ? Number(v) : null;
    const who = accountWord(e.email, index, r.pieces);
    const fix = meant === null ? `oauth-pool reserve ${who} <share from 0 to 1>` : `oauth-pool reserve ${who} ${meant}`;
    r.add(
      "account",
      "warn",
      `${e.email}: its reserve ${printable(JSON.stringify(v).slice(0, 40))} is not a share from 0 to 1 (0.2 keeps 20 % of every window), so it is not read and the account is used to its limits; set it with: ${fix}`,
      { email: e.email },
    );
  }
}

/** A pool with no account: every request fails, and nothing here says why unless this does. */
function noAccount(r) {
  r.add(
    "accounts",
    "warn",
    "the pool has no account, so every request fails (POOL_NO_ACCOUNT): add a Claude Pro/Max login with: oauth-pool add (or opencode auth login -> Anthropic Pool), or a Console API key with: oauth-pool add-key",
  );
}

/**
 * One login in two places: in another pool file of this machine (those the refresh journal has
 * seen), or twice in this pool. A refresh token works once, so the two would log each other out;
 * the engine refuses to present a token spent elsewhere, and this says so before it comes to that.
 */
async function checkLoginsElsewhere(lib, path, r) {
  let found;
  try {
    found = await lib.loginsElsewhere(path);
  } catch (e) {
    return r.add("same login", "info", `could not compare the logins with the other pools of this machine: ${e.message}`, { code: e.code });
  }
  const why = "a refresh token works once";
  // Read only when a name to suggest holds a credential: its place is what a command takes.
  let entries;
  const word = async (email) => {
    if (!hidden(email, r.pieces)) return accountArgument(email);
    entries ??= await lib.loadPool(path).then(
      (pool) => pool.anthropic ?? [],
      () => [],
    );
    const index = entries.findIndex((e) => e?.email === email);
    return index < 0 ? accountArgument(email) : accountWord(email, index, r.pieces);
  };
  for (const s of found) {
    if (s.store === null) {
      r.add(
        "same login",
        "warn",
        `${s.email} and ${s.there} are one login (the same refresh token): ${why}; keep one of them (remove the other with: oauth-pool remove ${await word(s.there)}) or they will log each other out`,
        { email: s.email, there: s.there, store: null },
      );
      continue;
    }
    const as = s.there === s.email ? "" : ` (as ${s.there})`;
    r.add(
      "same login",
      "warn",
      `${s.email} is also in ${s.store}${as}: ${why}; keep the login in one pool (remove it from the other) or they will log each other out`,
      { email: s.email, there: s.there, store: s.store },
    );
  }
}

/** The write lock: never renamed or deleted, created 0600 by the first write. */
async function checkLock(lib, path, files, probe, r) {
  const lockPath = files.lock;
  const name = basename(lockPath);
  const st = lstatOrNull(lockPath);
  if (!st) return r.add("lock", "ok", `${name} does not exist yet (created by the first write)`);
  if (st.isSymbolicLink()) return r.add("lock", "problem", `${lockPath} is a symbolic link: writes are refused (POOL_INSECURE); remove it`);
  if (!st.isFile()) return r.add("lock", "problem", `${lockPath} is not a regular file: writes fail; remove it`);
  if (othersCanAccess(st)) r.add("lock mode", "warn", `${lockPath} is ${octal(st)} (expected 0600; it holds no secret)`);
  if (notMine(st)) r.add("lock owner", "problem", `${lockPath} belongs to uid ${st.uid}, not to you`);
  const holders = lockHolders(lockPath);
  const pids = holders?.length ? holders.map((h) => h.pid).join(", ") : "";
  // The names the probe must not have, as the library matches them (trimmed, without case, NFC).
  const folded = (e) =>
    String(e?.email ?? "")
      .trim()
      .toLowerCase()
      .normalize("NFC");
  const names = probe
    ? await lib.loadPool(path).then(
        (pool) => new Set((pool.anthropic ?? []).map(folded)),
        () => null,
      )
    : null;
  if (!names) return r.add("lock", "ok", `${name} present${pids ? `, held by pid ${pids}` : ""} (not probed: the pool file is not readable)`);
  let probeEmail;
  do probeEmail = lockProbeEmail();
  while (names.has(probeEmail));
  // The library itself is asked: a no-op removal takes the write lock, finds nothing, writes
  // nothing. (flushPool would not do: a fresh process has nothing to flush.)
  const res = await withTimeout(lib.removeAccount(probeEmail, path), LOCK_PROBE_MS);
  if (res.timedOut) {
    const who = holders?.length ? `; held by ${holders.map((h) => `pid ${h.pid}${h.command ? ` (${h.command})` : ""}`).join(", ")}` : "";
    const stopped = (holders ?? []).filter((h) => isStopped(h.pid)).map((h) => h.pid);
    const fix = stopped.length
      ? `; pid ${stopped.join(", ")} is stopped (suspended, as Ctrl-Z does) and keeps the lock until it runs: resume it (fg in its shell, or kill -CONT ${stopped.join(" ")}) or end it`
      : holders?.length
        ? `; if that process is stuck, end it (kill ${holders.map((h) => h.pid).join(" ")})`
        : "";
    return r.add(
      "lock",
      "problem",
      `${name} has been held by another process for more than ${LOCK_PROBE_MS / 1000} s${who}: writes wait (POOL_BUSY after 60 s)${fix}`,
      { holders, stopped },
    );
  }
  if (res.error && res.error.code !== "ACCOUNT_NOT_FOUND")
    return r.add("lock", "problem", `cannot take ${name}: ${res.error.message}`, { code: res.error.code });
  r.add("lock", "ok", `${name} can be taken${pids ? ` (briefly held by pid ${pids})` : ""}`);
}

/** The previous generation, kept by every write from the second on. */
async function checkBackup(lib, files, r) {
  const bakPath = files.backup;
  const name = basename(bakPath);
  const st = lstatOrNull(bakPath);
  if (!st) return r.add("backup", "ok", `no ${name} yet (kept from the second write on)`);
  if (!st.isFile()) return r.add("backup", "warn", `${bakPath} is not a regular file`);
  if (othersCanAccess(st)) r.add("backup mode", "problem", `${bakPath} is ${octal(st)}: other users could read the tokens in it (fix: chmod 600 ${bakPath})`);
  try {
    const bak = await lib.loadPool(bakPath);
    const entries = bak.anthropic?.length ?? 0;
    if (entries > 0 && !lstatOrNull(files.path)) {
      r.add(
        "backup",
        "warn",
        `the pool file is missing, but ${name} holds ${entries} entries (restore it with: cp ${shellWord(bakPath)} ${shellWord(files.path)})`,
      );
    } else {
      // Never over a pool of a later format: the newer version's writes (its logins) are in it.
      const later = r.checks.some((c) => c.name === "parse" && c.message.includes("written by a newer opencode-oauth-pool"));
      const restore = r.failed("parse") && !later ? ` (restore it with: cp ${shellWord(bakPath)} ${shellWord(files.path)})` : "";
      r.add("backup", "ok", `${name} parses: ${entries} entries${restore}`);
    }
  } catch (e) {
    r.add("backup", "warn", `${name} does not parse: ${e.message}`, { code: e.code });
  }
}

/** Backups of an earlier pool file, kept aside when the pool file was made anew after it went missing. */
async function checkKeptBackups(lib, files, r) {
  const prefix = `${basename(files.path)}.bak-`;
  let kept;
  try {
    kept = readdirSync(files.directory).filter((f) => f.startsWith(prefix));
  } catch {
    return;
  }
  for (const f of kept) {
    const full = join(files.directory, f);
    let entries = "unreadable";
    try {
      entries = `${(await lib.loadPool(full)).anthropic?.length ?? 0} entries`;
    } catch {}
    r.add(
      "earlier backup",
      "warn",
      `${f} (${entries}) was kept when the pool file was made anew after it went missing: copy back the accounts you need (it is a pool file: cp ${shellWord(full)} ${shellWord(files.path)}, or log them in again), then delete it: it holds tokens`,
    );
  }
}

/**
 * Refreshed tokens a process could not write into the pool (a broken or missing pool file, its
 * lock held too long), kept beside it until a write takes them: while they wait, the pool holds
 * the refresh token spent for them, and the file is the only copy of the live one.
 */
async function checkKeptTokens(lib, path, r) {
  let files;
  try {
    files = await lib.keptTokens(path);
  } catch (e) {
    return r.add("unsaved tokens", "warn", `could not look for refreshed tokens kept beside the pool: ${e.message}`, { code: e.code });
  }
  if (files.length === 0) return r.add("unsaved tokens", "ok", "no refreshed tokens wait beside the pool");
  for (const f of files) {
    const name = basename(f.file);
    const by = f.pid == null ? "" : f.running ? ` by pid ${f.pid}, which is running and retries the write` : ` by pid ${f.pid}, which has ended`;
    const when = f.writtenAt == null ? "" : ` at ${new Date(f.writtenAt).toISOString()}`;
    const of = (state) => f.accounts.filter((a) => a.state === state).map((a) => shortened(a.email, 80));
    const waiting = of("waiting");
    const parts = [];
    if (waiting.length)
      parts.push(
        `new tokens of ${waiting.join(", ")}, whose refresh token in the pool is spent: the next write of any process takes them (to write them now: oauth-pool refresh ${accountArgument(f.accounts.find((a) => a.state === "waiting").email)}); do not delete the file before then, it holds the only live login`,
      );
    const written = of("written");
    if (written.length) parts.push(`tokens of ${written.join(", ")} that the pool holds already (the next write removes the file)`);
    const gone = of("gone");
    if (gone.length) parts.push(`tokens of ${gone.join(", ")}, no longer in the pool (the next write removes the file)`);
    const unmatched = of("unmatched");
    if (unmatched.length)
      parts.push(
        `tokens of ${unmatched.join(", ")} that fit no account: it holds other tokens now (logged in again since, or an older pool file put back); if it works, the file is not needed: delete it (it holds tokens)`,
      );
    r.add("unsaved tokens", waiting.length || unmatched.length ? "warn" : "ok", `${name}, written${when}${by}: ${parts.join("; ")}`, {
      file: f.file,
      pid: f.pid,
      running: f.running,
      accounts: f.accounts,
    });
  }
}

/** Temp files a writer that died mid-write left behind: they hold tokens. */
function checkTemps(files, r) {
  let strays;
  try {
    strays = readdirSync(files.directory).filter((f) => f.startsWith(files.tempPrefix) && f.endsWith(files.tempSuffix));
  } catch {
    return; // no directory yet: nothing was ever written
  }
  if (strays.length === 0) return r.add("temp files", "ok", "no leftover temp files");
  r.add(
    "temp files",
    "warn",
    `${strays.length} temp file(s) left by an interrupted write (${strays.join(", ")}); they may hold tokens, which the next write takes where they are newer than the pool's, and it removes this user's (another user's are left: remove those yourself)`,
    { files: strays },
  );
}

/** The fleet store: reachable, schema current, and opened by this host's key. */
async function checkStore(lib, path, r) {
  let s;
  try {
    s = await lib.storeCheck(path);
  } catch (e) {
    return r.add("store", "problem", e.message, { code: e.code });
  }
  if (!s.reachable) return r.add("store", "problem", `cannot reach ${s.location ?? "the store"}: ${s.message}`, { code: s.code });
  // Reached, but its schema row is not a version (edited by hand): said as it is, not as "no schema".
  if (s.schema === undefined) return r.add("store", "problem", s.message, { code: s.code });
  const init = "run: oauth-pool store init";
  if (s.schema === 0) return r.add("store", "problem", `${s.location} has no pool schema yet (${init})`);
  if (s.schema < s.expectedSchema)
    return r.add("store", "problem", `${s.location} has schema ${s.schema}, this version uses ${s.expectedSchema} (${init} migrates it)`);
  if (s.schema > s.expectedSchema)
    return r.add("store", "problem", `${s.location} has schema ${s.schema}, newer than this version knows (${s.expectedSchema}): upgrade opencode-oauth-pool`);
  r.add("store", "ok", `${s.location} is reachable, schema version ${s.schema}`);
  if (s.key === "ok") r.add("store key", "ok", "this host's store key opens the stored tokens");
  else r.add("store key", "problem", `${s.key}; nothing is read or written until the key matches`, { code: s.code });
  checkGrants(s, r);
  checkClock(s, r);
}

/**
 * What the store's role may do on the pool's tables, asked without writing: a role granted
 * SELECT alone passed doctor, served `list`, and failed at the first refresh (STORE_UNAVAILABLE,
 * the token not presented) or change.
 */
function checkGrants(s, r) {
  const missing = s.missingPrivileges;
  if (!Array.isArray(missing)) return r.add("store grants", "warn", "could not ask which privileges the role has on the pool's tables");
  if (missing.length === 0) return r.add("store grants", "ok", "the role may read and write the pool's tables");
  const lacks = missing.map((m) => `${m.privileges.join(", ")} on ${m.table}`).join("; ");
  r.add(
    "store grants",
    "problem",
    `the role lacks ${lacks}: it reads the pool but cannot change it nor refresh a token; as the tables' owner run: GRANT SELECT, INSERT, UPDATE, DELETE ON oauth_pool_entries, oauth_pool_top, oauth_pool_meta TO <role> (README: The fleet store, Grants)`,
    { missing },
  );
}

/** The engine moves Anthropic's resets onto this host's clock when they differ by more. */
const CLOCK_TOLERANCE_MS = 2000;

/**
 * This host's clock against the store's database server's. The store keeps its times of day on
 * the database's clock and each host moves them onto its own by the difference it measures
 * (every minute, and when its clock jumps), so the hosts agree on cooldowns; a clock that is
 * off is still worth setting: it drifts between measurements, and TLS checks and logs go by it.
 */
function checkClock(s, r) {
  if (typeof s.clockOffsetMs !== "number") return r.add("clock", "warn", "could not read the store's database clock");
  const off = Math.abs(s.clockOffsetMs);
  const seconds = (off / 1000).toFixed(1);
  if (off <= CLOCK_TOLERANCE_MS + (s.clockRoundTripMs ?? 0) / 2) return r.add("clock", "ok", `within ${seconds} s of the store's database server`);
  const way = s.clockOffsetMs < 0 ? "ahead of" : "behind";
  r.add(
    "clock",
    "warn",
    `this host's clock is ${seconds} s ${way} the store's database server: the pool moves the times it shares by the difference, measured every minute, but set the clock (e.g. timedatectl set-ntp true): TLS certificate checks and logs go by it, and it drifts between measurements`,
  );
}

/** The rows a native check gives, or none (a problem reported) when it cannot be asked. */
function rowsOf(r, name, what, ask) {
  try {
    return ask();
  } catch (e) {
    r.add(name, "problem", `cannot check ${what}: ${e.message}`, { code: e.code });
    return [];
  }
}

function pathOf(url) {
  try {
    return new URL(url).pathname;
  } catch {
    return "/";
  }
}

function checkEndpointsAndProxies(lib, r) {
  for (const e of rowsOf(r, "endpoint", "the endpoints", () => lib.checkEndpoints())) {
    const details = { variable: e.variable, value: e.value ?? null, effective: e.effective ?? null, proxy: e.proxy ?? null, loopback: e.loopback ?? null };
    const shown = e.value == null ? `${e.variable} unset: ${e.effective}` : `${e.variable}=${e.value}`;
    if (!e.ok) {
      r.add("endpoint", "problem", `${e.variable}: ${e.message}; requests fail with ${e.code}`, { ...details, code: e.code });
      continue;
    }
    const route = e.proxy ? `via proxy ${e.proxy}` : "direct (no proxy)";
    const apiPath = e.variable === "OAUTH_POOL_API_URL" ? pathOf(e.effective) : "/";
    if (apiPath !== "/") {
      // The variable names the API's origin: OpenCode's provider gets `<it>/v1`, while the
      // gateway, the profile and the credential's origin rule take only its origin. A `/v1`
      // copied from an SDK's base URL made every OpenCode request a 404 (…/v1/v1/messages).
      const v1 = /\/v1\/?$/.test(apiPath);
      r.add(
        "endpoint",
        v1 ? "problem" : "warn",
        `${shown}, ${route}: it names the API's origin, and this one has a path (${apiPath}): OpenCode's provider would send to ${e.effective.replace(/\/+$/, "")}/v1/..., the gateway to the origin alone; ${v1 ? "drop the /v1 (the pool adds it)" : "give the origin alone"}`,
        details,
      );
      continue;
    }
    if (e.loopback && e.effective.startsWith("http:"))
      r.add("endpoint", "warn", `${shown}: plain http to a loopback host (a test setup, not Anthropic), ${route}`, details);
    else r.add("endpoint", "ok", `${shown}, ${route}`, details);
  }
}

/**
 * `--online`: whether each endpoint answers, asked of the library (the client, proxy and
 * trusted roots requests use). No credential is sent and nothing of the pool is read.
 */
async function checkReach(lib, r) {
  let rows;
  try {
    rows = await lib.probeEndpoints();
  } catch (e) {
    return r.add("reach", "problem", `cannot check the endpoints: ${e.message}`, { code: e.code });
  }
  for (const e of rows) {
    // An endpoint the pool refuses is reported above; there is nothing to ask.
    if (!e.url) continue;
    const via = e.proxy ? ` via proxy ${e.proxy}` : "";
    const details = { variable: e.variable, url: e.url, proxy: e.proxy ?? null, reached: e.reached };
    if (e.setup) {
      r.add("reach", "problem", `${e.url}: no client could be set up to ask it: ${e.message}; requests fail with ${e.code}`, { ...details, code: e.code });
      continue;
    }
    if (e.reached) {
      r.add("reach", "ok", `${e.url} answers${via} (HTTP ${e.status}, ${e.ms} ms)`, { ...details, status: e.status });
      continue;
    }
    const set = process.env[e.variable]?.trim() ? `${e.variable}, ` : "";
    const fix = e.proxy
      ? `check the proxy ${e.proxy} and the network`
      : /\bdns\b|resolve|lookup/i.test(e.message)
        ? `the host name does not resolve: check ${set}the network and its DNS`
        : `check ${set}the network, and HTTPS_PROXY if this network reaches the Internet through a proxy`;
    r.add("reach", "problem", `${e.url} does not answer${via}: ${e.message}; requests fail with ${e.code} (${fix})`, { ...details, code: e.code });
  }
}

function checkSettings(lib, r) {
  for (const s of rowsOf(r, "setting", "the settings", () => lib.checkSettings())) {
    const details = { variable: s.variable, value: s.value };
    if (s.ok) r.add("setting", "ok", `${s.variable}=${s.value}`, details);
    else r.add("setting", "warn", `${s.variable}: ${s.message}`, details);
  }
}

/**
 * Variables named like the pool's that it does not read: a typo (`OAUTH_POOL_TIMEOUT`) or a
 * name in the wrong case (`oauth_pool_path`) was ignored without a word.
 */
function checkVariables(r, known) {
  const ours = known.filter((n) => n.startsWith("OAUTH_POOL_"));
  for (const name of Object.keys(process.env)) {
    if (!/^oauth_pool_/i.test(name) || known.includes(name)) continue;
    const upper = name.toUpperCase();
    const same = ours.find((n) => n === upper);
    const near = ours.filter((n) => n.startsWith(upper) || upper.startsWith(n));
    const hint = same
      ? `did you mean ${same}? (names are upper case)`
      : near.length
        ? `did you mean ${near.join(" or ")}?`
        : `the pool's variables: ${ours.join(", ")}`;
    r.add("variable", "warn", `${name} is not a variable of the pool, and is ignored: ${hint}`, { variable: name });
  }
}

// ---- the command --------------------------------------------------------------------------------

export async function diagnose(lib, path, { online = false } = {}) {
  const r = report();
  if (!checkNative(lib, r)) return { path: null, checks: r.checks };
  let files;
  try {
    files = lib.poolFiles(path);
  } catch (e) {
    r.add("path", "problem", `no place for the pool: ${e.message}`, { code: e.code });
    return { path: null, checks: r.checks };
  }
  const from = `(from ${SOURCES[files.source] ?? files.source})`;
  r.add("path", "ok", files.kind === "file" ? `pool file ${files.path} ${from}` : `fleet store ${files.location} ${from}`);
  // The native side names the variable the pool file came from (or "argument", "default").
  const fromVariable = files.kind === "file" && files.source !== "argument" && files.source !== "default";
  const given = fromVariable ? process.env[files.source]?.trim() : null;
  if (given && !isAbsolute(given) && !given.startsWith("~")) {
    // Each process anchors it to its own working directory: OpenCode in another project, the
    // CLI elsewhere, each has a pool of its own.
    r.add(
      "path",
      "warn",
      `${files.source}=${given} is a relative path: each process takes it from the directory it runs in (here ${files.path}), so OpenCode in another directory uses another pool; give the whole path: ${files.source}=${files.path}`,
    );
  }
  if (files.kind === "file") {
    const blocked = checkDirectory(files, r) === "blocked";
    // NFS, SMB, FUSE and the like: the pool's file locks may not exclude another machine.
    if (files.weakLocks) r.add("filesystem", "warn", files.weakLocks.advice, { filesystem: files.weakLocks.filesystem });
    const usable = !blocked && checkFile(files, r) === "usable";
    const exists = lstatOrNull(files.path) !== null;
    const parses = exists && (await checkParse(lib, path, files, r));
    if (!exists && !blocked) noAccount(r);
    if (parses) {
      r.pieces = await poolPieces(lib, path);
      await checkAccounts(lib, path, r);
      await checkLoginsElsewhere(lib, path, r);
    }
    await checkLock(lib, path, files, usable && parses, r);
    await checkBackup(lib, files, r);
    await checkKeptBackups(lib, files, r);
    await checkKeptTokens(lib, path, r);
    checkTemps(files, r);
  } else {
    await checkStore(lib, path, r);
    if (!r.failed("store") && !r.failed("store key")) {
      r.pieces = await poolPieces(lib, path);
      await checkAccounts(lib, path, r);
      await checkLoginsElsewhere(lib, path, r);
    }
  }
  checkEndpointsAndProxies(lib, r);
  if (online) await checkReach(lib, r);
  checkSettings(lib, r);
  checkVariables(r, lib.envVariables());
  // Loaded here, not with the CLI: it brings the plugin's modules, which no other command needs.
  const { checkOpencode } = await import("./doctor-opencode.mjs");
  try {
    await checkOpencode(lib, files, r);
  } catch (e) {
    // The configs are a person's files, read as they are: whatever in them this check did not
    // foresee is said, and the report above still stands (it ended on it, with code ERROR).
    r.add("opencode config", "warn", `could not finish checking OpenCode's config: ${e?.message ?? e}`, { code: e?.code });
  }
  for (const c of r.checks) c.message = r.pieces.scrub(c.message);
  return { path: files.path ?? files.location, files, checks: r.checks };
}

const MARK = { ok: "ok  ", info: "info", warn: "warn", problem: "FAIL" };

export function doctorText({ checks }) {
  const count = (level) => checks.filter((c) => c.level === level).length;
  const lines = checks.map((c) => `${MARK[c.level]}  ${c.name.padEnd(15)} ${printable(c.message)}`);
  // The endpoints are judged by their URLs alone unless asked: say how to ask.
  const asked = checks.some((c) => c.name === "reach");
  lines.push(`doctor: ${count("problem")} problem(s), ${count("warn")} warning(s)${asked ? "" : " (endpoints not contacted: --online asks them)"}`);
  return lines.join("\n");
}

async function doctor({ lib, path, options, out }) {
  const result = await diagnose(lib, path, { online: options.online === true });
  const ok = !result.checks.some((c) => c.level === "problem");
  out.result({ ok, ...result }, doctorText(result));
  return ok ? EXIT.OK : EXIT.PROBLEMS;
}

export const commands = [
  {
    name: "doctor",
    summary:
      "check permissions, lock, backups, temp files (or the fleet store: reach,\nschema, key, grants), accounts, endpoints, proxies, settings, and OpenCode's\nconfig (the plugin listed, its pool, provider and models, its installed copy)",
    options: {
      online: { type: "boolean", help: "also ask each endpoint whether it answers (one request without a\ncredential to each, at most 8 s)" },
    },
    run: doctor,
  },
];
