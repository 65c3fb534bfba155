// The account commands: look at the pool, add and remove logins and keys, steer the rotation.
// Every change goes through the library (the same locked, atomic store as the plugin).
//
// A command is { name, args?, argsHint?, options?, summary, run(ctx) }: `args` is the
// positionals' synopsis ("<email> <n>"; it also fixes how many are accepted), `options` are
// parseArgs specs plus `placeholder`/`help` for the usage text, and `run` gets
// { lib, args, options, path, out } and returns an exit code (or nothing for 0).
import { constants as osConstants } from "node:os";
import { resolve } from "node:path";
// Waits, "ago" and quota windows read the same here as in the OpenCode tool and the addon's own
// messages (src/wait.rs words them all).
import {
  SUBSCRIPTION_TERMS,
  ago,
  duration,
  heldText,
  percent,
  quotaText,
  restedText,
  servedText,
  usageLine,
  wait,
  waitAt,
  whomChanged,
  windowLine,
} from "../plugin/format.mjs";
import { modelPrices } from "../plugin/prices.mjs";
import { native } from "../native.mjs";
import { millisOption } from "./args.mjs";
import { UsageError, cliError } from "./errors.mjs";
import { echo, printable, table, text } from "./output.mjs";
import { placedName } from "../printable.mjs";
import { NO_PIECES, scrubbingErrors } from "./pieces.mjs";
import { endingSignals } from "./signals.mjs";
import { TIMED_OUT, confirm, readLine } from "./stdin.mjs";

// ---- how accounts read --------------------------------------------------------------------------

const isUnreadable = (a) => a.status === "invalid";

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

function stateText(a, now) {
  if (isUnreadable(a)) return "unreadable";
  // Its token needs a refresh the token endpoint asked to hold off: nothing it could serve
  // until then, though no cooldown was recorded (reset-cooldowns lifts this wait as well).
  if (a.status === "rate-limited" && a.tokenWaitUntil && a.tokenWaitUntil >= (a.rateLimitUntil ?? 0))
    return `rate-limited: the token endpoint asked to wait before its token is refreshed, usable again ${wait(a.rateLimitUntil, now)} (oauth-pool reset-cooldowns to try now)`;
  if (a.status === "rate-limited" && a.rateLimitUntil) return `rate-limited, usable again ${wait(a.heldUntil ?? a.rateLimitUntil, now)}`;
  if (!a.enabled && a.status !== "disabled") return `${a.status} (disabled)`;
  const held = a.credential === false ? null : heldText(a, now);
  if (held) return held;
  // Never used, whatever its status reads: tokens never written, a key under another name.
  if (a.credential === false)
    return a.type === "api" ? `${a.status}, but no key (oauth-pool add-key --email <email>)` : `${a.status}, but no token (log in again: oauth-pool add)`;
  return a.status;
}

/**
 * Whether an entry other than the one at `index` is named `#<index>`: an exact name wins over a
 * place, so a command given `#<index>` names that account, not the entry at that place. `accounts`
 * are the summaries, in file order.
 */
export const placeTaken = (accounts, index) => accounts.some((b, i) => i !== index && typeof b.email === "string" && b.email.trim() === `#${index}`);

/**
 * How to remove an unreadable entry, after "remove it": by its index, which names exactly that
 * entry, unless an account is named so (the command then removed that account; the library now
 * refuses it).
 */
export function removeAdvice(a, accounts) {
  if (!placeTaken(accounts, a.index)) return text`with: oauth-pool remove '#${a.index}'`;
  return text`by its place once the account named '#${a.index}' is renamed (while that name is taken, '#${a.index}' does not name this entry; edit its "email" in the pool file)`;
}

/**
 * An account's name as a row shows it: one holding a credential (a key pasted as its own name,
 * written before names were checked), or a piece of one of the pool's keys or tokens, is shown
 * without it, so with its index too, which every command takes (`oauth-pool remove '#2'`). `i`
 * is its place in the file: the summaries come in file order.
 */
function rowName(a, i, pieces) {
  if (!pieces.hides(a.email)) return placedName(a.email, i);
  const shown = placedName(pieces.scrub(a.email), i);
  return shown.endsWith(` (#${i})`) ? shown : `${shown} (#${i})`;
}

/** An unreadable entry's name plus its index, once when the name is the index itself. */
const entryLabel = (a) => (a.email === `#${a.index}` ? text`#${a.index}` : text`#${a.index} ${a.email}`);

function unreadableNotes(accounts) {
  const bad = accounts.filter(isUnreadable);
  if (bad.length === 0) return [];
  const [kept, fix] =
    bad.length === 1 ? ["is kept as it is", "fix it in the file, or remove it"] : ["are kept as they are", "fix them in the file, or remove one"];
  return [
    "",
    `${plural(bad.length, "entry", "entries")} of the file cannot be read and ${kept}; ${fix} ${removeAdvice(bad[0], accounts)}`,
    ...bad.map((a) => text`  ${entryLabel(a)}: ${a.lastError ?? "unreadable"}`),
  ];
}

/**
 * The list for a person. `pieces` (lib/cli/pieces.mjs) leaves the pool's keys and tokens out:
 * names are cut before the table is laid out, the rest (a reason) after.
 */
export function listText(path, accounts, now, pieces = NO_PIECES) {
  if (accounts.length === 0) return text`no accounts in ${path} (add one with: oauth-pool add)`;
  const rows = [["EMAIL", "TYPE", "STATUS", "PRIORITY", "LAST USED"]];
  for (const [i, a] of accounts.entries()) {
    rows.push(
      isUnreadable(a)
        ? [pieces.scrub(a.email), "?", "unreadable", "-", "-"]
        : [rowName(a, i, pieces), a.type, stateText(a, now), a.priority, ago(a.lastUsed, now)],
    );
  }
  return pieces.scrub([table(rows), ...unreadableNotes(accounts)].join("\n"));
}

function accountLines(a, i, now, prices, accounts, pieces) {
  if (isUnreadable(a)) {
    return [
      text`  ${a.email} (unreadable entry #${a.index})`,
      `    status   unreadable, kept as it is (remove it ${removeAdvice(a, accounts)})`,
      text`    problem  ${a.lastError ?? "unreadable"}`,
    ];
  }
  const lines = [text`  ${rowName(a, i, pieces)} (${a.type}${a.priority ? `, priority ${a.priority}` : ""})`];
  lines.push(text`    status   ${stateText(a, now)}`);
  if (a.windows?.length) {
    const seen = typeof a.quota?.updatedAt === "number" ? ` (seen ${ago(a.quota.updatedAt, now)})` : "";
    const sorted = [...a.windows].sort((x, y) => (y.utilization ?? 0) - (x.utilization ?? 0));
    for (const [i, w] of sorted.entries()) lines.push(text`    ${i === 0 ? "windows " : "        "} ${windowLine(w, now)}${i === 0 ? seen : ""}`);
  } else {
    const windows = quotaText(a.quota, now);
    if (windows) lines.push(`    quota    ${windows}`);
  }
  if (a.reserve) lines.push(`    reserve  ${percent(a.reserve)}% of every window kept for its owner`);
  for (const [key, until] of Object.entries(a.modelCooldowns ?? {})) {
    lines.push(text`    cooling  ${restedText(key)} until ${waitAt(until, now)}; ${servedText(key)} serve`);
  }
  const usage = [
    usageLine("today", a.usage?.today, prices),
    usageLine("5h window", a.usage?.window, prices),
    usageLine("30 days", a.usage?.last30Days, prices),
  ].filter(Boolean);
  for (const [i, u] of usage.entries()) lines.push(`    ${i === 0 ? "usage   " : "        "} ${u}`);
  if (a.type === "oauth" && typeof a.expires === "number") {
    const refreshed = a.tokenWaitUntil ? `refreshed once the token endpoint's wait ends, ${wait(a.tokenWaitUntil, now)}` : "refreshed on next use";
    lines.push(`    token    ${a.expires > now ? `valid for ${duration(a.expires - now)}` : `expired (${refreshed})`}`);
  }
  lines.push(`    used     ${ago(a.lastUsed, now)}`);
  if (a.lastError) lines.push(text`    problem  ${a.lastError}`);
  return lines;
}

/** What the pool as a whole says beyond its accounts; each part only when there is something. */
function poolLines(st, now) {
  const lines = [];
  if (st.soonestReset) lines.push(`soonest reset: ${wait(st.soonestReset, now)}`);
  if (st.lastFailover) {
    const f = st.lastFailover;
    lines.push(text`last failover: ${ago(f.at, now)}, ${f.from} -> ${f.to ?? "(none)"}: ${f.reason}`);
  }
  for (const group of st.caseClashes ?? []) {
    lines.push(text`warning: ${group.join(", ")} differ only in case or Unicode form: commands that name one need its exact spelling`);
  }
  for (const u of st.unsavedTokens ?? []) {
    lines.push(
      text`unsaved tokens: ${u.email} got new tokens ${ago(u.since, now)} that could not be written (${u.error}); every write of this process retries`,
    );
  }
  if (st.refreshLocked?.length) lines.push(text`refresh under way (its lock is held): ${st.refreshLocked.join(", ")}`);
  return lines;
}

/** The status for a person, without the pool's keys and tokens (`pieces`, as listText). */
export function statusText(st, now, prices, pieces = NO_PIECES) {
  const c = st.counts;
  const bad = c.invalid ? `, ${plural(c.invalid, "unreadable entry", "unreadable entries")}` : "";
  const lines = [text`pool ${st.path}: ${c.total} account(s), ${c.usable} usable now${bad}`];
  for (const [i, a] of st.accounts.entries()) lines.push(...accountLines(a, i, now, prices, st.accounts, pieces));
  lines.push(...poolLines(st, now));
  return pieces.scrub(lines.join("\n"));
}

// ---- commands -----------------------------------------------------------------------------------

async function list({ lib, path, out, pieces }) {
  // poolStatus: the same summaries as listAccounts, plus the path the library resolved.
  const { path: shown, accounts } = await lib.poolStatus(path);
  out.result({ path: shown, accounts }, out.json ? "" : listText(shown, accounts, Date.now(), await pieces()));
}

async function status({ lib, path, out, pieces }) {
  const st = await lib.poolStatus(path);
  out.result(st, out.json ? "" : statusText(st, Date.now(), await modelPrices(), await pieces()));
}

// How long `add` waits for the pasted code. The login it started cannot outlive the
// authorization: Anthropic does not say how long its login page and authorization code stay
// good (OAuth's RFC 6749 recommends at most 10 minutes for a code), and the PKCE verifier lives
// only in this process. 15 minutes leaves room for a slow login (single sign-on, a second factor,
// a link by email) and the paste; a stdin that stays open and sends nothing (`sleep 1d | oauth-pool
// add`, a script that forgot to pipe the code, a headless job) waited for ever.
const CODE_WAIT_MS = 15 * 60_000;

async function add({ lib, options, path, out }) {
  const mode = options.mode ?? "max";
  if (mode !== "max" && mode !== "console") throw new UsageError(echo`--mode must be max or console, not ${mode}`);
  const waitMs = millisOption(options["code-timeout-ms"], "code-timeout-ms", CODE_WAIT_MS);
  // A pool that cannot take the account says so before the user goes through a login for it.
  const before = await lib.loadPool(path);
  // So does a token endpoint the pool refuses (a typo, plain http off loopback): the code was
  // read first, and the login made in the browser for it was lost to INSECURE_ENDPOINT.
  // A Console login's key is made at OAUTH_POOL_API_URL, once the code is spent.
  const needed = mode === "console" ? ["OAUTH_POOL_TOKEN_URL", "OAUTH_POOL_API_URL"] : ["OAUTH_POOL_TOKEN_URL"];
  const refused = lib.checkEndpoints().find((e) => needed.includes(e.variable) && !e.ok);
  if (refused) throw cliError(refused.code ?? "INSECURE_ENDPOINT", text`${refused.message}; no login was started`);
  const pkce = await lib.authorize({ mode });
  // The URL goes to stdout alone on its line (so a script can pick it up); the guidance to stderr.
  if (mode === "max") out.note(`${SUBSCRIPTION_TERMS} (\`oauth-pool add-key\` adds one.)`);
  out.note(
    `Open this URL in a browser, log in${mode === "console" ? " to the Anthropic Console" : " with the Claude account to add"}, and paste the code it shows:`,
  );
  out.result({ url: pkce.url }, pkce.url);
  // Nobody can log in with a URL that was never shown, and a code read then would be a guess.
  if (!(await out.delivered())) throw new UsageError("add prints the login URL on stdout, and stdout could not take it (closed or full): no login was started");
  const deadline = Date.now() + waitMs;
  let r;
  // A paste refused before anything was sent, while another may come.
  let refusal = null;
  for (;;) {
    const line = await readLine({ prompt: "code: ", timeoutMs: Math.max(0, deadline - Date.now()), skipBlank: true });
    if (line === null && refusal) throw refusal;
    if (line === null) throw new UsageError("add reads the pasted code from stdin, and stdin closed before a line came");
    if (line === TIMED_OUT) {
      throw new UsageError(
        `add waited ${duration(waitMs)} for the pasted code on stdin and none came: the login link has expired, nothing was added; run \`oauth-pool add\` again`,
      );
    }
    try {
      r = await lib.addAccount(line.trim(), { verifier: pkce.verifier, state: pkce.state, mode }, path);
      break;
    } catch (e) {
      // Failed after the code was spent (the API key endpoint down, the pool refusing the login):
      // the same paste is refused from now on, and asking for it again only led the person
      // through "completed already" until stdin closed.
      if (e?.codeSpent) {
        r = await keptLoginWritten(e, before, out, mode);
        break;
      }
      // Refused before anything was sent (pasted twice, another login's code, the URL pasted
      // back): the code is still good, and the verifier lives only in this process. Ending here
      // sent the person through the browser login again.
      if (e?.code === "OAUTH_BAD_INPUT" || e?.code === "OAUTH_STATE_MISMATCH") {
        refusal = e;
        out.note(text`${e.message}. Nothing was sent: paste the code again.`);
        continue;
      }
      // The token endpoint did not take the code (busy, down, out of reach): it is still good,
      // and the login is not marked done, so the same paste can go again once the endpoint
      // answers. Ending here sent the person through the browser login again for a 429.
      if (e?.code === "NETWORK" || (e?.code === "OAUTH_HTTP" && (e.status === 408 || e.status === 429 || e.status >= 500))) {
        refusal = e;
        out.note(text`${e.message}. The code was not taken: paste it again in a moment (a code lasts about 10 minutes).`);
        continue;
      }
      r = await keptLoginWritten(e, before, out);
      break;
    }
  }
  const what = r.type === "api" ? " (an API key the Console made for this login)" : "";
  out.result(r, text`${r.added ? "added" : "updated"} ${r.email}${what}`);
}

/** A write's failure with the random part of its temp file's name left out. */
const withoutTempNames = (reason) => String(reason ?? "").replace(/[^\s()'"`]*\.tmp\b/g, "<temp>");

// How often `add` looks whether the login it holds was written (the addon tries every 5 s).
const KEPT_POLL_MS = 250;

/**
 * `addAccount` failed after the code was spent, and the addon holds the login, retrying its
 * write every 5 s for as long as the process runs (src/manage.rs `add_oauth_kept`): ending here
 * threw away the login the person had just made. The command stays, says why, and resolves like
 * `addAccount` once the write lands; a signal gives the login up and ends the command saying so.
 * Any other failure is `err` as it was.
 */
async function keptLoginWritten(err, before, out, mode = "max") {
  const [login] = native.keptLogins();
  if (!login && err?.codeSpent) {
    const again = mode === "console" ? "oauth-pool add --mode console" : "oauth-pool add";
    const told = /log in again/.test(err.message) ? "" : text`; the pasted code was spent and cannot be used again: run \`${again}\` to log in once more`;
    const spent = cliError(err.code ?? "ERROR", `${err.message}${told}`);
    if (err.status !== undefined) spent.status = err.status;
    throw spent;
  }
  if (!login) throw err;
  const { email } = login;
  const added = !before?.anthropic?.some((a) => a?.email === email);
  // With --json, a line of its own on stdout (as the URL's): notes are silent there, and a
  // script saw the URL and then nothing, for as long as the command held the login.
  const tell = (message) => (out.json ? out.result({ holding: { email, code: err.code ?? "ERROR", message } }) : out.note(message));
  tell(
    text`logged in as ${email}, but the pool cannot take the login yet (${login.error}). This command holds the login and writes it as soon as the pool can, trying every 5 s: fix that and leave it running. Ending it (Ctrl-C) loses the login.`,
  );
  let said = login.error;
  let stop;
  const stopped = new Promise((resolve) => (stop = resolve));
  // Not one the process ignores (nohup under Bun): that gave the login up on a hangup.
  const signals = endingSignals();
  const holding = () => native.keptLogins().find((k) => k.email === email);
  // Given up in the listener itself, first in line: the addon's own listener (lib/native.mjs),
  // next in this same emit, waits up to 5 s for a login still held.
  const listeners = signals.map((signal) => [
    signal,
    () => {
      const still = holding();
      if (still) native.abandonKeptLogins();
      stop({ signal, still });
    },
  ]);
  for (const [signal, listener] of listeners) (process.prependListener ?? process.on).call(process, signal, listener);
  try {
    for (;;) {
      const ended = await Promise.race([stopped, new Promise((r) => setTimeout(r, KEPT_POLL_MS))]);
      const still = ended ? ended.still : holding();
      if (!still) return { email, added };
      if (ended) {
        throw Object.assign(
          cliError(
            err.code ?? "ERROR",
            text`stopped by ${ended.signal}: the login of ${email} was never written (${still.error}) and is lost; log in again with oauth-pool add once the pool can take it`,
          ),
          { exitCode: 128 + (osConstants.signals[ended.signal] ?? 0) },
        );
      }
      // The same reason told again only for another cause: a write's temp file has a new
      // random name each time, and the line came back every 5 s.
      if (withoutTempNames(still.error) !== withoutTempNames(said)) {
        said = still.error;
        tell(text`still holding the login of ${email}: ${said}`);
      }
    }
  } finally {
    for (const [signal, listener] of listeners) process.removeListener(signal, listener);
  }
}

// How long `add-key` waits for the key: the same bound and option as `add`, though no login
// expires here. A stdin that stays open and sends nothing (`sleep 1d | oauth-pool add-key`, a job
// whose secret store never answered) kept the command, and the pool's caller, waiting for ever.
async function addKey({ lib, options, path, out }) {
  const waitMs = millisOption(options["code-timeout-ms"], "code-timeout-ms", CODE_WAIT_MS);
  await lib.loadPool(path);
  if (process.stdin.isTTY) out.note("Paste the Console API key (input hidden), then Enter.");
  // Blank lines first (Enter pressed before pasting) are passed over, as `add` does.
  const line = await readLine({ prompt: "API key: ", hidden: true, timeoutMs: waitMs, skipBlank: true });
  if (line === TIMED_OUT) {
    throw new UsageError(`add-key waited ${duration(waitMs)} for the API key on stdin and none came: nothing was added; run \`oauth-pool add-key\` again`);
  }
  const key = line?.trim();
  if (!key) throw new UsageError(`add-key reads the API key from stdin, and stdin ${line === null ? "closed with no key on it" : "held an empty line"}`);
  const r = await lib.addApiKey(key, { email: options.email, path });
  out.result(r, text`${r.added ? "added" : "updated"} ${r.email} (API key)`);
}

async function remove({ lib, args: [target], path, out, pieces }) {
  // Read before the change: the removed entry's key is not there to tell after it.
  const { scrub } = await pieces();
  const pool = /^#\d+$/.test(target) ? await lib.loadPool(path) : undefined;
  // An account named `#0` is that account (the library's rule): no place is read then.
  const byPlace = pool !== undefined && !entryNames(pool).some((e) => e.trim() === target);
  const index = Number(target.slice(1));
  // `#N` names an entry by its place: say whose it was, since the place alone tells a person
  // nothing once it is gone.
  const was = byPlace ? entryEmail(pool, index) : undefined;
  // The place is read here and the entry removed later, under the pool's lock: another process
  // removing an entry before it in between moved another one to that place, which went instead
  // (and was reported as the one read). Named by its email, when that names it alone, it goes
  // wherever it is now, or, gone already, nothing goes (ACCOUNT_NOT_FOUND).
  const removed = await lib.removeAccount((byPlace && soleEmail(pool, index)) || target, path);
  const what = was ? text`${target} (${was})` : text`${target}`;
  out.result({ email: target, removed, ...(was ? { was } : {}) }, scrub(`removed ${what}${removed > 1 ? ` (${removed} entries)` : ""}`));
}

/** The emails of the pool's entries that have one. */
const entryNames = (pool) => (pool?.anthropic ?? []).map((e) => e?.email).filter((e) => typeof e === "string");

/** The email of the pool's entry at `index`, or what it is when it has none. */
function entryEmail(pool, index) {
  const entry = pool?.anthropic?.[index];
  if (entry === undefined) return undefined;
  return typeof entry?.email === "string" && entry.email ? entry.email : "an unreadable entry";
}

/**
 * The email of the entry at `index` when no other entry has it, nor one differing from it only
 * in case or spaces (the library's looser match): removing by it removes that entry alone.
 */
function soleEmail(pool, index) {
  const email = pool?.anthropic?.[index]?.email;
  // One named like a place (`#0`) is read by the library as that place: the place it is at goes.
  if (typeof email !== "string" || !email.trim() || /^#\d+$/.test(email.trim())) return undefined;
  const key = email.trim().toLowerCase();
  return entryNames(pool).filter((e) => e.trim().toLowerCase() === key).length === 1 ? email : undefined;
}

/** Whom a change named: the stored spelling for --json, and for a person beside what was typed. */
function changed(emails, target) {
  return { email: emails.join(", ") || target, shown: printable(whomChanged(emails, target)) };
}

function setEnabled(enabled) {
  return async ({ lib, args: [target], path, out, pieces }) => {
    const { email, shown } = changed(await lib.setEnabled(target, enabled, path), target);
    out.result({ email, enabled }, (await pieces()).scrub(`${enabled ? "enabled" : "disabled"} ${shown}`));
  };
}

async function priority({ lib, args: [email, n], path, out, pieces }) {
  if (!/^-?\d+$/.test(n) || !Number.isSafeInteger(Number(n))) throw new UsageError(echo`priority must be an integer, not ${n}`);
  const value = Number(n);
  const { email: stored, shown } = changed(await lib.setPriority(email, value, path), email);
  out.result({ email: stored, priority: value }, (await pieces()).scrub(`priority of ${shown} is now ${value}`));
}

async function refresh({ lib, args: [email], path, out, pieces }) {
  const r = await lib.refreshAccount(email, path);
  const how =
    {
      refreshed: "refreshed",
      adopted: "adopted the token another process had just refreshed",
      kept: "kept its current token",
    }[r.outcome] ?? r.outcome;
  const until = typeof r.expires === "number" ? `; the access token is good for ${duration(r.expires - Date.now())}` : "";
  out.result({ email: r.email, outcome: r.outcome, expires: r.expires ?? null }, (await pieces()).scrub(text`${r.email}: ${how}${until}`));
}

async function reserve({ lib, args: [email, fraction], path, out, pieces }) {
  const value = Number(fraction);
  // "0." and "1." alike, as Number reads both.
  if (!/^(0(\.\d*)?|\.\d+|1(\.0*)?)$/.test(fraction) || !(value >= 0 && value <= 1)) {
    throw new UsageError(echo`reserve takes a fraction from 0 to 1 (0.2 keeps 20 % of every window), not ${fraction}`);
  }
  const { email: stored, shown } = changed(await lib.setReserve(email, value, path), email);
  out.result(
    { email: stored, reserve: value },
    (await pieces()).scrub(value ? `${shown}: the pool stops using it once any window reaches ${percent(1 - value)} %` : `${shown}: no reserve`),
  );
}

async function resetCooldowns({ lib, path, out }) {
  const reset = await lib.resetCooldowns(path);
  out.result({ reset }, reset ? `cleared the cooldown of ${reset} account(s)` : "no account was cooling");
}

const SHARED_LOGIN =
  "an imported login is shared with Claude Code: both then hold one rotating refresh token, and the first refresh by either one logs the other out (Claude Code asks you to log in again, or the pool marks the account auth-error). For a login of the pool's own, use: oauth-pool add";

/** Imports only after an explicit yes: --yes, or "y" typed on a terminal. */
async function confirmShared(options, out) {
  if (!options.yes) {
    if (out.json) throw new UsageError(`import-claude-code --json needs --yes: ${SHARED_LOGIN}`);
    if (!process.stdin.isTTY) throw new UsageError(`import-claude-code needs --yes when stdin is not a terminal to ask on: ${SHARED_LOGIN}`);
  }
  out.note(`warning: ${SHARED_LOGIN}`);
  if (!options.yes && !(await confirm("Import anyway?"))) throw cliError("CANCELLED", "nothing was imported");
}

async function importClaudeCode({ lib, options, path, out }) {
  await confirmShared(options, out);
  const credentialsPath = options.credentials ? resolve(options.credentials) : undefined;
  const r = await lib.importClaudeCode({ email: options.email, credentialsPath, path });
  out.result(r, text`${r.added ? "imported" : "updated"} ${r.email} from Claude Code`);
}

const EMAIL = { type: "string", placeholder: "<e>" };

const plainCommands = [
  { name: "list", summary: "every account: status, cooldown, priority, last use", run: list },
  { name: "status", summary: "per-account state, cooldowns with time left, every window, reserve, usage", run: status },
  {
    name: "add",
    options: {
      mode: { type: "string", placeholder: "max|console", help: "max (default): a Claude Pro/Max login; console: an Anthropic Console login" },
      "code-timeout-ms": { type: "string", placeholder: "<ms>", help: "how long to wait for the pasted code (default 15 min: the login link expires)" },
    },
    summary: "print the login URL, then read the pasted code from stdin (waits at most 15 min)",
    run: add,
  },
  {
    name: "add-key",
    options: {
      email: { ...EMAIL, help: "the member's name (default: api-key-<fingerprint>; a key already\nin the pool keeps its name)" },
      "code-timeout-ms": { type: "string", placeholder: "<ms>", help: "how long to wait for the key on stdin (default 15 min, as add)" },
    },
    argsHint: " (the key is read from stdin: an argument would show in ps and shell history)",
    summary: "read a Console API key from stdin (never from the command line; waits at most 15 min)",
    run: addKey,
  },
  { name: "remove", args: "<email>", summary: "remove an account, or an unreadable entry by email or '#<index>'", run: remove },
  { name: "enable", args: "<email>", summary: "use an account again", run: setEnabled(true) },
  { name: "disable", args: "<email>", summary: "keep an account but never use it", run: setEnabled(false) },
  { name: "priority", args: "<email> <n>", summary: "higher is preferred (integer, may be negative)", run: priority },
  { name: "reset-cooldowns", summary: "forget every recorded cooldown", run: resetCooldowns },
  {
    name: "reserve",
    args: "<email> <fraction>",
    summary: "keep that share of every window for the account's owner (0.2 = 20 %; 0 clears it)",
    run: reserve,
  },
  {
    name: "refresh",
    args: "<email>",
    summary: "refresh one account's token now, under the pool's lock (for shell helpers:\nadopts the token when another process just refreshed it)",
    run: refresh,
  },
  {
    name: "import-claude-code",
    options: {
      email: { ...EMAIL, help: "the account's name (default: the login's own email)" },
      credentials: { type: "string", placeholder: "<file>", help: "Claude Code's credentials file (default: ~/.claude/.credentials.json)" },
      yes: { type: "boolean", help: "import without asking (needed without a terminal, and with --json)" },
    },
    summary: "copy a Claude Code login (~/.claude/.credentials.json), which then stays\nshared with Claude Code: asks first, --yes skips the question",
    run: importClaudeCode,
  },
];

// Every error of these goes out without a piece of the pool's keys (lib/cli/pieces.mjs).
export const commands = plainCommands.map((c) => ({ ...c, run: scrubbingErrors(c.run) }));
