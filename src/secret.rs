//! A string that must never be printed: tokens, API keys, PKCE verifiers, authorization codes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// The longest token, key or login code taken (see `Secret::is_token_shaped`).
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call sites are few and obvious (HTTP headers, request bodies, the file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this can be a token, a key or a login code: visible ASCII only, and at most
    /// `MAX_TOKEN_LEN` bytes. Anthropic's are a few dozen to a few hundred characters; anything
    /// else (a paste of the wrong thing, a NUL, a whole file) is refused before it is sent.
    pub fn is_token_shaped(&self) -> bool {
        (1..=MAX_TOKEN_LEN).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_graphic())
    }

    /// A short, non-reversible tag that lets logs tell two tokens apart without revealing either.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([REDACTED {}])", self.fingerprint())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

const REDACTED: &str = "[redacted]";
/// A run this long shared with a presented secret is that secret (or a piece of it) echoed back.
const ECHO_MIN: usize = 12;

/// What a paste brings along that is not part of a code or key: a terminal left in bracketed-paste
/// mode (by a program that ended without turning it off) wraps the text in `ESC [200~` and
/// `ESC [201~`, and text copied from a web page can carry zero-width spaces, joiners or a byte
/// order mark. None of them can be in a token (visible ASCII only), and kept, they made a good
/// code or key "malformed" with nothing on screen to say why.
pub fn without_paste_noise(text: &str) -> std::borrow::Cow<'_, str> {
    const MARKERS: [&str; 2] = ["\u{1b}[200~", "\u{1b}[201~"];
    let invisible = |c: char| matches!(c, '\u{200b}'..='\u{200d}' | '\u{2060}' | '\u{feff}');
    if !text.contains(invisible) && !MARKERS.iter().any(|m| text.contains(m)) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = text.replace(MARKERS[0], "").replace(MARKERS[1], "");
    out.retain(|c| !invisible(c));
    std::borrow::Cow::Owned(out)
}

/// Quote marks a code or key is copied with: those of a shell line, a JSON file or Markdown,
/// and the typographic ones an editor or a chat app turns them into. No token holds one.
const PASTE_QUOTES: &[char] = &[
    '"', '\'', '`', '\u{201c}', '\u{201d}', '\u{201e}', '\u{2018}', '\u{2019}', '\u{201a}',
    '\u{00ab}', '\u{00bb}',
];

/// A pasted code or key as meant, the same for both: the paste noise out, then the spaces and
/// quote marks around it off, however they nest (`" 'abc' "`).
pub fn unwrapped_paste(text: &str) -> String {
    let text = without_paste_noise(text);
    let mut inner = text.trim();
    loop {
        let next = inner.trim_matches(PASTE_QUOTES).trim();
        if next.len() == inner.len() {
            return inner.to_string();
        }
        inner = next;
    }
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '/' | '=')
}

/// Text that came from a server (an error description, a content type), cleaned before it is
/// stored, logged or returned: every secret presented in the call that produced it, any piece of
/// one at least 12 characters long, and anything shaped like an Anthropic token (`sk-ant-...`)
/// becomes `[redacted]`. Servers echo what they were sent ("malformed refresh_token '...'").
pub fn scrub(text: &str, presented: &[&Secret]) -> String {
    let secrets: Vec<&str> = presented
        .iter()
        .map(|s| s.expose())
        .filter(|s| s.len() >= 6)
        .collect();
    let mut out = text.to_string();
    for s in &secrets {
        if out.contains(s) {
            out = out.replace(s, REDACTED);
        }
    }
    let mut runs = Runs {
        secrets: &secrets,
        result: String::with_capacity(out.len()),
        run: String::new(),
        cut_short: None,
        gap: 0,
    };
    for c in out.chars() {
        // Inside a run, an invisible character is part of it: put in a key (a zero-width space
        // copied off a page), it let the rest of the key through as a run of its own.
        if token_char(c) || (is_invisible(c) && !runs.run.is_empty()) {
            runs.run.push(c);
            continue;
        }
        runs.flush();
        if c.is_whitespace() || is_invisible(c) {
            runs.gap += 1;
        } else {
            runs.cut_short = None;
        }
        runs.result.push(c);
    }
    runs.flush();
    runs.result
}

/// `scrub`'s walk over a text's runs of token characters.
struct Runs<'a> {
    secrets: &'a [&'a str],
    result: String,
    run: String,
    /// What follows a credential cut short (`sk-ant-` and fewer characters than a whole one) by
    /// a space or a line break is the rest of it: a key broken over two lines came back from its
    /// second piece on. How much of one came so far.
    cut_short: Option<usize>,
    /// The spaces since the last run.
    gap: usize,
}

impl Runs<'_> {
    fn flush(&mut self) {
        if self.run.is_empty() {
            return;
        }
        // Judged without the invisible characters in it, kept as it came when it is no secret.
        let bare: std::borrow::Cow<'_, str> = if self.run.chars().any(is_invisible) {
            self.run
                .chars()
                .filter(|c| !is_invisible(*c))
                .collect::<String>()
                .into()
        } else {
            self.run.as_str().into()
        };
        let rest = self
            .cut_short
            .filter(|_| self.gap <= 2 && bare.len() >= 8 && !bare.contains('@'));
        if rest.is_some() || looks_secret(&bare, self.secrets) {
            let so_far = rest.unwrap_or(0) + bare.len();
            self.cut_short = (rest.is_some() || bare.contains("sk-ant-"))
                .then_some(so_far)
                .filter(|n| *n < WHOLE_CREDENTIAL);
            self.result.push_str(REDACTED);
        } else {
            self.cut_short = None;
            self.result.push_str(&self.run);
        }
        self.run.clear();
        self.gap = 0;
    }
}

/// Shorter than this, a run with `sk-ant-` in it is a credential cut short (a whole key or
/// token is over 100 characters).
const WHOLE_CREDENTIAL: usize = 100;

/// The invisible characters that reorder the text around them (marks, embeddings, overrides,
/// isolates) or break its line: a name holding one can read as another.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The characters that show as nothing (zero-width spaces and joiners, a soft hyphen, a word
/// joiner, a byte order mark, variation selectors, tags) beside the bidi controls: put between
/// the characters of a secret a server echoes back, they hid it from every search for it, and
/// the text still read as the secret on screen.
pub fn is_invisible(c: char) -> bool {
    is_bidi_control(c)
        || matches!(c,
            '\u{00ad}' | '\u{034f}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
            | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200d}' | '\u{2060}'..='\u{206f}'
            | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

/// The shortest piece of a secret told as one: shorter runs are ordinary text.
const PIECE: usize = 12;

/// Where in `text` a piece of one of `secrets` (at least `PIECE` long) is, ASCII case aside:
/// `scrub` finds pieces only as whole runs of a token's characters, so a key with punctuation in
/// it (`addApiKey` takes any key) was found only whole, and a name holding it lower-cased not at
/// all. For names and the messages that quote them. Secrets' non-ASCII bytes never match.
fn pieces(text: &str, secrets: &[&Secret]) -> Vec<bool> {
    let lowered = text.to_ascii_lowercase();
    let bytes = lowered.as_bytes();
    let mut hidden = vec![false; bytes.len()];
    if bytes.len() < PIECE {
        return hidden;
    }
    let starts: Vec<usize> = (0..=bytes.len() - PIECE)
        .filter(|&i| bytes[i..i + PIECE].is_ascii())
        .collect();
    let secrets: Vec<String> = secrets
        .iter()
        .map(|s| s.expose().to_ascii_lowercase())
        .filter(|s| s.len() >= PIECE)
        .collect();
    if starts.len() * secrets.len() <= 4096 {
        // A short text (a header's value, a name): each of its windows looked for in each secret.
        for &i in &starts {
            let window = &bytes[i..i + PIECE];
            if secrets
                .iter()
                .any(|s| memchr::memmem::find(s.as_bytes(), window).is_some())
            {
                hidden[i..i + PIECE].fill(true);
            }
        }
    } else {
        // A long text against many secrets (a message naming the accounts of a big pool): the
        // text's windows in a map, each secret's looked up there.
        let mut at: std::collections::HashMap<&[u8], Vec<usize>> = Default::default();
        for &i in &starts {
            at.entry(&bytes[i..i + PIECE]).or_default().push(i);
        }
        for s in &secrets {
            for window in s.as_bytes().windows(PIECE) {
                for &i in at.get(window).map_or(&[][..], Vec::as_slice) {
                    hidden[i..i + PIECE].fill(true);
                }
            }
        }
    }
    hidden
}

/// Whether `text` holds a piece of one of `secrets` (see `pieces`), or one of them whole.
pub fn holds_piece(text: &str, secrets: &[&Secret]) -> bool {
    pieces(text, secrets).contains(&true)
        || secrets.iter().any(|s| {
            let s = s.expose();
            s.len() >= 6 && text.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
        })
}

/// `scrub`, and then every piece of a secret `scrub` did not find (`pieces`: with punctuation
/// in it, in another case) replaced by `[redacted]` too.
pub fn scrub_pieces(text: &str, secrets: &[&Secret]) -> String {
    let text = scrub(text, secrets);
    let hidden = pieces(&text, secrets);
    if !hidden.contains(&true) {
        return text;
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if hidden[i] {
            while i < bytes.len() && hidden[i] {
                i += 1;
            }
            out.push_str(REDACTED);
        } else {
            // Hidden stretches are ASCII, so a stretch not hidden starts and ends on a boundary.
            let end = (i..bytes.len()).find(|&j| hidden[j]).unwrap_or(bytes.len());
            out.push_str(&text[i..end]);
            i = end;
        }
    }
    out
}

/// `scrub` with no presented secrets: the backstop for text about to leave the process. Names
/// found to hold a piece of their pool's secrets (`hide_names`) are said as `[redacted]` too.
pub fn scrub_tokens(text: &str) -> String {
    without_hidden_names(scrub(text, &[]))
}

/// Account names found to hold a piece of their pool's keys or tokens (a hand edit, another
/// tool's write): the CLI's and the tool's views hide them, and log lines, events and errors,
/// which name accounts as they are, gave them whole. Longest first, so that a name inside
/// another is replaced after it. Only ever added to: a name once seen holding a secret stays
/// hidden for the life of the process.
static HIDDEN_NAMES: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());
static ANY_HIDDEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn hide_names(names: Vec<String>) {
    if names.is_empty() {
        return;
    }
    let mut hidden = HIDDEN_NAMES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for name in names {
        if !name.is_empty() && !hidden.contains(&name) {
            hidden.push(name);
        }
    }
    hidden.sort_by_key(|n| std::cmp::Reverse(n.len()));
    ANY_HIDDEN.store(!hidden.is_empty(), std::sync::atomic::Ordering::Release);
}

/// `name` as text leaving the process says it: `[redacted]` when found to hold a secret.
pub fn shown_name(name: &str) -> String {
    without_hidden_names(name.to_string())
}

fn without_hidden_names(mut text: String) -> String {
    if !ANY_HIDDEN.load(std::sync::atomic::Ordering::Acquire) {
        return text;
    }
    let hidden = HIDDEN_NAMES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for name in hidden.iter() {
        if text.contains(name.as_str()) {
            text = text.replace(name.as_str(), REDACTED);
        }
    }
    text
}

/// Which of `names` hold a piece of one of `secrets` (`holds_piece`), looked for in one pass.
pub fn holding_pieces<'a>(
    names: impl IntoIterator<Item = &'a str>,
    secrets: &[&Secret],
) -> Vec<String> {
    let names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() || secrets.is_empty() {
        return Vec::new();
    }
    // A token's random part alone: its `sk-ant-<kind>-` start is the same in every token, and a
    // name quoting a token of no account here (`team sk-ant-oat01-…`, already scrubbed as a
    // token shape) is no account's secret.
    let random: Vec<Secret> = secrets
        .iter()
        .map(|s| {
            let s = s.expose();
            let part = s
                .strip_prefix("sk-ant-")
                .and_then(|rest| rest.split_once('-'))
                .map_or(s, |(_, random)| random);
            Secret::new(part)
        })
        .collect();
    let secrets: Vec<&Secret> = random.iter().collect();
    // Joined by a line break, which no secret holds: no window spans two names.
    let joined = names.join("\n");
    let hidden = pieces(&joined, &secrets);
    let short: Vec<String> = secrets
        .iter()
        .map(|s| s.expose())
        .filter(|s| (6..PIECE).contains(&s.len()))
        .map(str::to_ascii_lowercase)
        .collect();
    let mut at = 0;
    let mut found = Vec::new();
    for name in names {
        let end = at + name.len();
        if hidden[at..end].contains(&true)
            || (!short.is_empty()
                && short
                    .iter()
                    .any(|s| name.to_ascii_lowercase().contains(s.as_str())))
        {
            found.push(name.to_string());
        }
        at = end + 1;
    }
    found
}

/// A message that quotes text from a caller or a runtime (a URL it was given, an error of its
/// fetch): token shapes scrubbed (`scrub_tokens`), and the password, query and fragment of
/// every URL in it left out, where keys and signatures travel.
pub fn scrub_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, url) = rest.split_at(at);
        out.push_str(before);
        let end = url
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .unwrap_or(url.len());
        let kept = url[..end].find(['?', '#']).unwrap_or(end);
        let shown = &url[..kept];
        // A password before the host is a credential too (shown as `***`, as doctor shows it),
        // and so is a user part with no password: that is how a token travels in a URL
        // (`https://<token>@host`).
        let authority = shown[3..].find(['/', '\\']).map_or(shown.len(), |i| i + 3);
        let hidden = shown[..authority].rfind('@').map(|at| {
            let from = shown[3..at].find(':').map_or(3, |colon| colon + 4);
            (from, at)
        });
        match hidden {
            Some((from, at)) => {
                out.push_str(&shown[..from]);
                out.push_str("***");
                out.push_str(&shown[at..]);
            }
            None => out.push_str(shown),
        }
        rest = &url[end..];
    }
    out.push_str(rest);
    scrub_tokens(&out)
}

fn looks_secret(run: &str, secrets: &[&str]) -> bool {
    if run.contains("sk-ant-") && run.len() > "sk-ant-".len() + 4 {
        return true;
    }
    if run.len() < ECHO_MIN || !run.is_ascii() {
        return false;
    }
    secrets
        .iter()
        .any(|s| (0..=run.len() - ECHO_MIN).any(|i| s.contains(&run[i..i + ECHO_MIN])))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: a name holding a token's random part was hidden by the CLI's and the
    /// tool's views, and given whole by log lines, events and the plugin's notices.
    #[test]
    fn names_holding_a_secret_are_found_in_one_pass_and_hidden_in_text_leaving_the_process() {
        // Made at run time: no token-shaped literal in the tree.
        let token = Secret::new(format!(
            "{}-Hx7qWm2Lr9Vt4Kp8Zs3Nb6Yc1Jd5Fg0",
            ["sk", "ant", "oat01"].join("-")
        ));
        let short = Secret::new("Qm4rT9w");
        let names = [
            "alice@x.test",
            "Hx7qWm2Lr9Vt4Kp8@x.test",
            "team-qm4rt9w@x.test",
            "nohide-9f2c@x.test",
        ];
        let found = holding_pieces(names, &[&token, &short]);
        assert_eq!(found, ["Hx7qWm2Lr9Vt4Kp8@x.test", "team-qm4rt9w@x.test"]);
        // Another token's start is no piece of this one.
        let other = format!(
            "team {}-0f9e8d7c6b5a4f3e2d1c",
            ["sk", "ant", "oat01"].join("-")
        );
        assert!(holding_pieces([other.as_str()], &[&token]).is_empty());
        // A name of this test alone: the list is the whole process's.
        let unique = "Kp8Zs3Nb6Yc1Jd5Fg0-hidden-by-this-test@x.test";
        hide_names(vec![unique.into()]);
        assert_eq!(
            scrub_tokens(&format!("failover from={unique} to=alice@x.test")),
            "failover from=[redacted] to=alice@x.test"
        );
        assert_eq!(shown_name(unique), "[redacted]");
        assert_eq!(shown_name("alice@x.test"), "alice@x.test");
    }

    /// Found by a review: a piece of a key with punctuation in it, or a key lower-cased, in a
    /// name was found by no search, and the pool's errors quoted it.
    #[test]
    fn pieces_of_a_secret_are_found_whatever_its_shape_and_case() {
        let odd = Secret::new("Zq!9xY#4pL$7mN%2vB^8");
        let plain = Secret::new("PlainKeyWithoutShape0123");
        let both = [&odd, &plain];
        for (text, hidden) in [
            ("team 9xY#4pL$7mN%2v", "team [redacted]"),
            ("lower zq!9xy#4pl$7mn%2vb^8 ok", "lower [redacted] ok"),
            ("x plainkeywithoutshape0123", "x [redacted]"),
            ("é plainkeywithout é", "é [redacted] é"),
        ] {
            assert!(holds_piece(text, &both), "{text}");
            assert_eq!(scrub_pieces(text, &both), hidden);
        }
        // Eleven characters of one are ordinary text; İ lower-cases to two characters and is
        // left as it is.
        for text in ["9xY#4pL$7mN", "İlker@x.test", "alice@example.com"] {
            assert!(!holds_piece(text, &both), "{text}");
            assert_eq!(scrub_pieces(text, &both), text);
        }
        // A long text against many secrets takes the map's way, with the same answer.
        let many: Vec<Secret> = (0..500)
            .map(|i| Secret::new(format!("Other!secret#{i:04}-abcdefgh")))
            .collect();
        let mut refs: Vec<&Secret> = many.iter().collect();
        refs.push(&odd);
        let long = format!(
            "{} then 9xY#4pL$7mN%2v and {}",
            "a".repeat(500),
            "b".repeat(500)
        );
        assert!(scrub_pieces(&long, &refs).contains(" then [redacted] and "));
    }

    /// Found by a review: a key pasted with a zero-width space in it, or broken over lines, came
    /// back in errors from the break on (only the run holding `sk-ant-` was taken out).
    #[test]
    fn a_credential_broken_by_an_invisible_character_or_a_line_is_taken_out_whole() {
        let key = format!(
            "{}-{}-CCCCCCAA",
            ["sk", "ant", "api03"].join("-"),
            "Z".repeat(80)
        );
        let (head, tail) = key.split_at(50);
        for broken in [
            format!("{head}\u{200b}{tail}"),
            format!("{head}\u{00ad}{tail}"),
            format!("{head} {tail}"),
            format!("{head}\n{tail}"),
            format!("{}\n{}\n{}", &key[..40], &key[40..80], &key[80..]),
        ] {
            let said = scrub_tokens(&format!("no account with email {broken} in the pool"));
            assert!(!said.contains("ZZZZ") && !said.contains("CCCC"), "{said:?}");
            assert!(
                said.starts_with("no account with email [redacted]"),
                "{said:?}"
            );
            assert!(said.ends_with(" in the pool"), "{said:?}");
        }
        // A whole one leaves what follows it alone, and so does text that is no credential.
        let said = scrub_tokens(&format!("key {key} authentication_error_here"));
        assert_eq!(said, "key [redacted] authentication_error_here");
        let said = scrub_tokens(&format!("bad {} example@x.test and more", &key[..30]));
        assert_eq!(said, "bad [redacted] example@x.test and more");
        assert_eq!(
            scrub_tokens("plain\u{200b}text stays\u{202e}"),
            "plain\u{200b}text stays\u{202e}"
        );
    }

    #[test]
    fn scrub_removes_presented_secrets_pieces_and_token_shapes() {
        let token = Secret::new("fake-refresh-SENTINEL-0123456789abcdef");
        let echoed = format!("malformed refresh_token '{}'", token.expose());
        let clean = scrub(&echoed, &[&token]);
        assert!(!clean.contains("SENTINEL"), "{clean}");
        assert!(clean.starts_with("malformed refresh_token '"), "{clean}");
        let piece = "refresh token fake-refresh-SENTINEL-012 was truncated";
        assert!(!scrub(piece, &[&token]).contains("SENTINEL"));
        // Made at run time: no token-shaped literal in the source.
        let foreign = format!(
            "bad token {}-abcdefghijklmnop, retry",
            ["sk", "ant", "ort01"].join("-")
        );
        assert_eq!(scrub_tokens(&foreign), "bad token [redacted], retry");
        let harmless = "invalid_grant: Refresh token not found or invalid";
        assert_eq!(scrub(harmless, &[&token]), harmless);
        // Short secrets are not hunted inside ordinary words.
        assert_eq!(scrub("a rare error", &[&Secret::new("r")]), "a rare error");
    }

    #[test]
    fn a_message_keeps_no_url_query_and_no_token_shape() {
        let bun = r#"ZlibError fetching "http://127.0.0.1:1/v1/messages?key=abc#frag". x"#;
        assert_eq!(
            scrub_message(bun),
            r#"ZlibError fetching "http://127.0.0.1:1/v1/messages". x"#
        );
        let token = ["sk", "ant", "oat01", "FAKE0123456789"].join("-");
        assert_eq!(
            scrub_message(&format!("not an absolute URL: {token}")),
            "not an absolute URL: [redacted]"
        );
        let plain = "https://user@host/path?token=1 and https://x/y#z too";
        assert_eq!(
            scrub_message(plain),
            "https://***@host/path and https://x/y too"
        );
        let userinfo = "bad URL http://me:pass-w0rd@ho st/a@b and http://h/p@q";
        assert_eq!(
            scrub_message(userinfo),
            "bad URL http://me:***@ho st/a@b and http://h/p@q"
        );
        assert_eq!(scrub_message("no url here"), "no url here");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("fake-token-SENTINEL-abc");
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("SENTINEL"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn fingerprints_differ_and_are_short() {
        let a = Secret::new("a").fingerprint();
        let b = Secret::new("b").fingerprint();
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
    }
}
