// `oauth-pool store init` and `oauth-pool store copy`: the fleet store (PostgreSQL). Init
// creates or migrates the schema and ties the store to its key; copy moves a whole pool between
// a file and a database in either direction, every field kept.
import { realpathSync } from "node:fs";
import { poolSecrets } from "../pool-secrets.mjs";
import { UsageError } from "./errors.mjs";
import { echo, text } from "./output.mjs";
import { piecesOf, scrubbingErrors } from "./pieces.mjs";

async function init({ lib, args, path, out }) {
  // `--path` names the store for every other command, so it names the one to init too (it was
  // ignored here, and the command asked for a URL it had been given).
  if (args[0] !== undefined && path !== undefined && args[0] !== path) {
    throw new UsageError(echo`store init names its store once: ${args[0]} or --path ${path}, not both`);
  }
  const location = args[0] ?? path;
  if (!location?.trim() && !process.env.OAUTH_POOL_STORE?.trim()) {
    throw new UsageError("usage: oauth-pool store init <postgres://...> (or set OAUTH_POOL_STORE, or pass --path)");
  }
  const r = await lib.storeInit(location);
  const key = r.keyCreated
    ? `a new store key was written to ${r.keyCreated} (0600): every host of the fleet needs the same key (copy the file, or set OAUTH_POOL_STORE_KEY)`
    : `store key from ${r.keySource}`;
  out.result(r, text`${r.location}: schema version ${r.schema}; ${key}`);
}

/**
 * Whether two of copyStore's locations are one pool file under two spellings (`p.json` and
 * `./dir/../p.json`, a directory reached through a link): a URL is never a file here.
 */
function sameFile(a, b) {
  if (a === b) return true;
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

/** The keys and tokens of the pool at `location`; none when it cannot be read. */
async function secretsAt(lib, location) {
  try {
    return poolSecrets((await lib.loadPool(location))?.anthropic);
  } catch (e) {
    // A store that cannot be reached now is the copy's end too (what it would replace cannot be
    // read and kept first): said now, not after the copy's own read waited its 30 s again.
    if (e?.code === "STORE_UNAVAILABLE") {
      e.message = `${e.message}; nothing was copied`;
      throw e;
    }
    return [];
  }
}

async function copy({ lib, options, out }) {
  // Both pools' pieces, read before the copy: the names it reports replaced are the target's,
  // whose keys are gone from it after (a name holding a piece of its own key was printed whole,
  // where `list` hides it).
  const pieces = piecesOf([...(await secretsAt(lib, options.from)), ...(await secretsAt(lib, options.to))]);
  try {
    await copied({ lib, options, out, pieces });
  } catch (e) {
    if (typeof e?.message === "string") e.message = pieces.scrub(e.message);
    throw e;
  }
}

async function copied({ lib, options, out, pieces }) {
  const r = await lib.copyStore(options.from, options.to);
  let said = text`copied ${r.entries} entr${r.entries === 1 ? "y" : "ies"} from ${r.from} to ${r.to}`;
  // A refresh token works once: two stores holding one login each spend it on their own, and
  // the second one's refresh is refused (and may log the first out). Say so where it is done.
  // Not of one file named twice: "move <from> away" would move the only copy of the pool.
  const same = sameFile(r.from, r.to);
  if (same) said += " (the same file)";
  if (r.logins > 0 && !same) {
    const logins = r.logins === 1 ? "its login is" : `its ${r.logins} logins are`;
    // A database is not moved away: its hosts stop using it, and its copies of the logins go.
    const retire = /^postgres(ql)?:/i.test(r.from)
      ? `then stop using ${r.from} (unset OAUTH_POOL_STORE where it is set to it), or remove these logins from it (oauth-pool remove, with OAUTH_POOL_STORE set to it)`
      : `then move ${r.from} away`;
    said += `\n${text`${logins} now in both: a refresh token works once, so use only ${r.to} from now on. Restart every OpenCode, gateway and script still using ${r.from} (one started before OAUTH_POOL_STORE or OAUTH_POOL_PATH changed keeps it), ${retire}. A pool that finds a login already refreshed through the other does not refresh it, and says where it lives.`}`;
  }
  if (r.replaced?.length) {
    const n = r.replaced.length;
    const held = n === 1 ? "a login or key" : `${n} logins or keys`;
    const them = n === 1 ? "it" : "them";
    // The fleet store keeps no .bak: the copy wrote them to a pool file of their own first.
    const where = r.kept
      ? ` (kept in ${r.kept}, 0600, a pool file holding only ${them}: delete it once ${n === 1 ? "it is" : "they are"} not needed)`
      : /^postgres(ql)?:/i.test(r.to)
        ? ""
        : ` (its .bak keeps ${them} until its next write)`;
    said += `\n${text`${r.to} held ${held} that ${r.from} does not, now gone from it${where}: ${r.replaced.join(", ")}. Log ${n === 1 ? "it" : "them"} in again there (oauth-pool add), or copy the other way first when ${n === 1 ? "it was" : "they were"} meant to stay.`}`;
  }
  out.result(r, pieces.scrub(said));
}

const LOCATION = { type: "string", placeholder: "<file|url>", required: true };
const FROM = { ...LOCATION, help: "the pool to copy: a file path or a postgres:// URL" };
const TO = { ...LOCATION, help: "where it goes (replacing what it held): a file path or a postgres:// URL" };

export const commands = [
  {
    name: "store init",
    args: "[<url>]",
    summary:
      "create or migrate the fleet store's schema (the URL, else --path, else\nOAUTH_POOL_STORE) and tie it to the store key (a 0600 key file is created when none is set)",
    run: scrubbingErrors(init),
  },
  {
    name: "store copy",
    options: { from: FROM, to: TO },
    summary: "copy a whole pool between a file and a postgres:// store, every field kept",
    run: copy,
  },
];
