// The pool's own keys and tokens, left out of what the CLI prints for a person and of every error
// it prints: a name is the pool file's to say and can hold a piece of a key (pasted as its own
// name before names were checked, a hand edit, another program's file), and the library's errors
// quote what was typed where a name goes, which may be a key or a piece of one in another case.
// The rule is the OpenCode tool's (lib/pool-secrets.mjs), every piece of a key told.
// `list --json` and the like keep their values exact: they are data for a script, not text.
import { poolSecrets, poolSecretsRemover } from "../pool-secrets.mjs";
import { withoutCredentials } from "../printable.mjs";

/** `{ scrub(text), hides(name) }` for `secrets`; `hides` tells a name shown without a piece. */
export function piecesOf(secrets) {
  // Credential shapes first: a piece of a pool token's `sk-ant-oat01-` start, cut out of another
  // token, left the rest of it without the start that marks it.
  const remove = poolSecretsRemover(secrets, { everyPiece: true });
  const scrub = (text) => remove(withoutCredentials(String(text ?? "")));
  return { scrub, hides: (name) => scrub(name) !== String(name ?? "") };
}

/** Leaves everything as it is: nothing of a pool was read. */
export const NO_PIECES = piecesOf([]);

/**
 * The pool's pieces at `path`; none when it cannot be read (nothing of it is then printed). With
 * `unreachable`, a store that cannot be reached is that error: a command asked first (`remove`)
 * then waited for it as long again.
 */
export async function poolPieces(lib, path, { unreachable = false } = {}) {
  try {
    return piecesOf(poolSecrets((await lib.loadPool(path))?.anthropic));
  } catch (e) {
    if (unreachable && e?.code === "STORE_UNAVAILABLE") throw e;
    return NO_PIECES;
  }
}

/**
 * A command's `run` whose context has `pieces()`, the pool's pieces read once (a command that
 * changes the pool asks before its change: a removed entry's key is no longer there to tell
 * after), and whose errors go out without them. A store that cannot be reached is not asked
 * again: nothing of it could be quoted, and asking waits as long again.
 */
export function scrubbingErrors(run) {
  return async (ctx) => {
    let read;
    const pieces = () => (read ??= poolPieces(ctx.lib, ctx.path, { unreachable: true }));
    try {
      return await run({ ...ctx, pieces });
    } catch (e) {
      if (typeof e?.message === "string" && e.code !== "STORE_UNAVAILABLE") e.message = (await pieces().catch(() => NO_PIECES)).scrub(e.message);
      throw e;
    }
  };
}
