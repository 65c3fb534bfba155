// The pool's own keys and tokens, and pieces of them, left out of text a person or a model reads.
// printable() knows the shapes of Anthropic's credentials; a name is the file's to say and can
// hold a key of another shape, or a piece of one in another case (a key pasted as its own name
// before names were checked, a hand edit, a name stored lower-cased by an import), and a message
// can quote what was typed where a name goes. Shared by the OpenCode tool and the CLI.

/** The keys and tokens of a pool's entries (its `anthropic` array), those long enough to tell. */
export function poolSecrets(entries) {
  const secrets = [];
  for (const e of Array.isArray(entries) ? entries : []) {
    for (const field of ["key", "access", "refresh"]) {
      const value = e?.[field];
      if (typeof value === "string" && value.length >= 8) secrets.push(value);
    }
  }
  return secrets;
}

/**
 * `text` without any run of a credential's characters that is, holds, or is a piece of one of
 * `secrets`, nor any piece of PIECE characters of a secret that no such run holds whole (one
 * with other characters). With `everyPiece`, a piece of PIECE characters of any secret goes too,
 * wherever it stands (`team-<piece>@x` is one run that neither is nor holds a secret).
 * ASCII case is not told apart.
 */
export function withoutPoolSecrets(text, secrets, options) {
  return poolSecretsRemover(secrets, options)(text);
}

/**
 * `withoutPoolSecrets` for many texts of one pool: what the secrets are searched by is made
 * once (made again for each of `list`'s rows, a pool of 300 accounts took 16 s to list).
 */
export function poolSecretsRemover(secrets, { everyPiece = false } = {}) {
  if (secrets.length === 0) return (text) => text;
  // Without case: a name is stored lower-cased by an import.
  const lowered = secrets.map(lowerAscii);
  const odd = secrets.filter((s) => !ONE_RUN.test(s));
  const pieces = piecesRemover(odd, everyPiece ? secrets : odd);
  return (text) =>
    pieces(
      text.replace(CREDENTIAL_RUN, (run) => {
        const r = lowerAscii(run);
        return lowered.some((s) => s.includes(r) || r.includes(s)) ? "[redacted]" : run;
      }),
    );
}

/** ASCII letters lower-cased, nothing else: the length stays (`"İ".toLowerCase()` is two). */
const lowerAscii = (t) => t.replace(/[A-Z]+/g, (c) => c.toLowerCase());

/** A credential made of a run's characters alone: CREDENTIAL_RUN finds it and its pieces. */
const ONE_RUN = /^[A-Za-z0-9_\-.+/=]+$/;
const PIECE = 12;

/**
 * Takes out of a text any secret of `odd` shorter than PIECE (keys with other characters,
 * `Zq!9xY#4pL$7…`: the runs split them into short pieces, none told) and any piece of one of
 * `windowed` at least PIECE long: each stretch of the text that is such a piece becomes one
 * "[redacted]". Windows of the secrets in a set, so a long list is one pass however many keys.
 */
function piecesRemover(odd, windowed) {
  const short = odd.filter((s) => s.length < PIECE);
  // Without case: a name is stored lower-cased by an import.
  const windows = new Set();
  for (const s of windowed) for (let i = 0; i + PIECE <= s.length; i++) windows.add(lowerAscii(s.slice(i, i + PIECE)));
  return (text) => {
    for (const s of short) text = text.replaceAll(s, "[redacted]");
    if (windows.size === 0) return text;
    const lower = lowerAscii(text);
    const hidden = new Uint8Array(text.length);
    let any = false;
    for (let i = 0; i + PIECE <= text.length; i++) {
      if (windows.has(lower.slice(i, i + PIECE))) {
        hidden.fill(1, i, i + PIECE);
        any = true;
      }
    }
    if (!any) return text;
    let out = "";
    for (let i = 0; i < text.length; ) {
      if (!hidden[i]) {
        out += text[i++];
        continue;
      }
      while (i < text.length && hidden[i]) i++;
      out += "[redacted]";
    }
    return out;
  };
}

/** A run of a credential's characters long enough to tell (a piece of one cut short included). */
const CREDENTIAL_RUN = /[A-Za-z0-9_\-.+/=]{12,}/g;
