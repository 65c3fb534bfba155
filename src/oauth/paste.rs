//! What a person pastes at the end of a login (`code#state`, the callback URL, a query string):
//! read within bounds, its state checked against the attempt's before any request, and each
//! attempt's code sent at most once.

use subtle::ConstantTimeEq;
use url::Url;

use super::Tokens;
use crate::error::{Error, Result};
use crate::secret::Secret;

/// What the user pasted: `code#state`, the full callback URL, or a query string.
#[derive(Debug)]
pub struct Pasted {
    pub code: Secret,
    pub state: Option<Secret>,
}

/// What a sentence or a mail app puts around a code or a link pasted out of it: brackets,
/// quote marks, and the punctuation after it.
const OPENERS: &[char] = &[
    '<', '(', '[', '{', '"', '\'', '`', '\u{201c}', '\u{201e}', '\u{2018}', '\u{201a}', '\u{00ab}',
];
const CLOSERS: &[char] = &[
    '>', ')', ']', '}', '"', '\'', '`', '\u{201d}', '\u{2019}', '\u{00bb}', '.', ',', ';', ':',
    '!', '?', '\u{2026}',
];

/// The most text taken as a paste: a callback URL with its query is well under this.
const MAX_PASTE: usize = 16 * 1024;

pub fn parse_pasted(input: &str) -> Result<Pasted> {
    let input = crate::secret::unwrapped_paste(input);
    // A mail or chat app hands a link over as `<https://...>`; one copied out of a sentence
    // brings its punctuation (`...#state.`, `(...#state),`). Neither a code nor a state (URL-safe
    // base64) ends with any of it, and taken into the state it read as another login's ("start
    // the login again") though the code was good.
    let input = input
        .trim_start_matches(|c: char| OPENERS.contains(&c) || c.is_whitespace())
        .trim_end_matches(|c: char| CLOSERS.contains(&c) || c.is_whitespace());
    if input.is_empty() {
        return Err(Error::OAuthBadInput("nothing was pasted".into()));
    }
    if input.len() > MAX_PASTE {
        return Err(Error::OAuthBadInput(format!(
            "the pasted text is {} bytes: paste only the code shown after logging in (a few dozen characters)",
            input.len()
        )));
    }
    let from_query = |query: &str| {
        let mut code = None;
        let mut state = None;
        let mut refused = None;
        // Said twice, which one is meant is a guess: the last was sent (`code=A&code=B`), and
        // only the last state checked (`state=OTHER&state=RIGHT` passed).
        let twice = |what: &str| {
            Error::OAuthBadInput(format!(
                "the pasted address holds `{what}` twice: paste the address the login page ended on, once"
            ))
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" if code.is_some() => return Err(twice("code")),
                "state" if state.is_some() => return Err(twice("state")),
                "code" => code = Some(Secret::new(v.into_owned())),
                "state" => state = Some(Secret::new(v.into_owned())),
                // The callback of a login that was refused or cancelled (RFC 6749 4.1.2.1).
                "error" => refused = Some(v.into_owned()),
                // The login URL itself pasted back (it holds `code=true` and this attempt's
                // state): its "code" went to the token endpoint and came back as a refused
                // code, which told the user nothing of what to paste instead.
                "code_challenge" => {
                    return Err(Error::OAuthBadInput(
                        "that is the login URL itself: open it in a browser, log in, and paste the code the page shows at the end".into(),
                    ))
                }
                _ => {}
            }
        }
        if code.is_none() {
            if let Some(error) = refused {
                // Its code is an OAuth error code; anything else there is not repeated.
                let shown = Some(error)
                    .filter(|e| (1..=64).contains(&e.len()))
                    .filter(|e| e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                    .map_or(String::new(), |e| format!(" ({e})"));
                return Err(Error::OAuthBadInput(format!(
                    "the login was not completed{shown}: the pasted address is the page's refusal, not a code; start the login again"
                )));
            }
        }
        Ok((code, state))
    };
    let scheme = |s: &str| {
        input
            .get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    let (code, state) = if scheme("http://") || scheme("https://") {
        let url = Url::parse(input)
            .map_err(|_| Error::OAuthBadInput("the pasted URL does not parse".into()))?;
        let (code, mut state) = from_query(url.query().unwrap_or(""))?;
        // Some pages put the state after a '#' in the code itself or in the fragment.
        if state.is_none() {
            if let Some(f) = url.fragment() {
                state = Some(Secret::new(f.to_string()));
            }
        }
        (code, state)
    } else if input.contains("code=") || (input.contains('=') && !input.contains('#')) {
        // The callback address without its scheme (`platform.claude.com/oauth/code/callback?
        // code=…`, as some address bars copy it) is its query.
        let query = match input.split_once('?') {
            Some((address, query)) if !address.contains('=') => query,
            _ => input,
        };
        from_query(query)?
    } else if let Some((code, state)) = input.split_once('#') {
        (
            Some(Secret::new(code.trim())),
            Some(Secret::new(state.trim())),
        )
    } else {
        (Some(Secret::new(input)), None)
    };
    let mut code = code.ok_or_else(|| {
        Error::OAuthBadInput("no `code` found: paste the code shown after logging in".into())
    })?;
    let mut state = state;
    // `code=abc#state` inside a query or URL: the browser page shows code and state joined.
    if state.is_none() {
        if let Some((c, s)) = code.expose().split_once('#') {
            let (c, s) = (Secret::new(c), Secret::new(s));
            code = c;
            state = Some(s);
        }
    }
    // A code is URL-safe text: anything else pasted (a `data:` or `javascript:` URL, markup)
    // is refused here, never sent to the token endpoint.
    let code_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
    if code.expose().len() > crate::secret::MAX_TOKEN_LEN {
        return Err(Error::OAuthBadInput(format!(
            "what reads as the code is {} characters, longer than any code ({} at most): paste only the code as the page shows it",
            code.expose().len(),
            crate::secret::MAX_TOKEN_LEN
        )));
    }
    if !code.is_token_shaped() || !code.expose().bytes().all(code_char) {
        return Err(Error::OAuthBadInput(
            "what reads as the code is empty or holds characters no code has (a space, a quote, a letter outside ASCII): paste the code as the page shows it".into(),
        ));
    }
    // A stray `#` after the state (a selection that took the next character) is no second code.
    if let Some(s) = state.as_ref().filter(|s| s.expose().ends_with('#')) {
        let trimmed = s.expose().trim_end_matches('#');
        if !trimmed.contains('#') {
            state = Some(Secret::new(trimmed));
        }
    }
    // The code pasted twice (`code#statecode#state`, or on two lines) read as a foreign state
    // and was answered "start the login again", when pasting it once would have done.
    if state.as_ref().is_some_and(|s| s.expose().contains('#')) {
        return Err(Error::OAuthBadInput(
            "the pasted text holds more than one code (pasted twice?): paste the code once".into(),
        ));
    }
    // Text after the code (`code#state and more`) read as a foreign state and was answered
    // "start the login again", when the code itself was good.
    if state
        .as_ref()
        .is_some_and(|s| s.expose().contains(char::is_whitespace))
    {
        return Err(Error::OAuthBadInput(
            "the pasted text holds more than the code (a space after it): paste only the code the page shows".into(),
        ));
    }
    // A state is URL-safe text too. One holding a NUL, another control character or U+FFFD
    // (bytes that were no UTF-8, read from a file or a pipe) is no login page's: it was answered
    // "belongs to a different login attempt, start again", which sent the person through a new
    // login that the same stray byte would spoil again.
    if state
        .as_ref()
        .is_some_and(|s| !s.is_empty() && !s.is_token_shaped())
    {
        return Err(Error::OAuthBadInput(
            "that is not a code from the login page: the pasted text holds a control character, or bytes that are not text; paste only the code the page shows".into(),
        ));
    }
    Ok(Pasted {
        code,
        state: state.filter(|s| !s.is_empty()),
    })
}

pub fn check_state(pasted: &Pasted, expected: &str) -> Result<()> {
    let Some(got) = &pasted.state else {
        return Err(Error::OAuthStateMismatch(
            "the pasted code has no state part (the text after '#'): paste the whole code".into(),
        ));
    };
    let equal: bool = got.expose().as_bytes().ct_eq(expected.as_bytes()).into();
    if !equal {
        return Err(Error::OAuthStateMismatch(
            "the pasted code belongs to a different login attempt (state mismatch): start the login again".into(),
        ));
    }
    Ok(())
}

/// The logins (by a digest of their state) whose code the token endpoint already took, and
/// those whose code is on its way there (with what their outcome is handed to).
#[derive(Default)]
pub(super) struct CompletedLogins {
    done: std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>,
    sending: std::sync::Mutex<std::collections::HashMap<[u8; 32], Outcome>>,
}

/// A login's tokens once its call has them; `None` until then.
type Outcome = tokio::sync::watch::Receiver<Option<Tokens>>;

/// A login's code on its way to the token endpoint: while it lives, the same login pasted again
/// waits for it without a call. Dropped without `completed`, the login may be tried again.
pub(super) struct Sending<'a> {
    logins: &'a CompletedLogins,
    digest: [u8; 32],
    outcome: tokio::sync::watch::Sender<Option<Tokens>>,
}

/// What a login pasted now does: send its code, or wait for the same login sent already.
pub(super) enum Claim<'a> {
    Send(Sending<'a>),
    Wait(Outcome),
}

impl<'a> Sending<'a> {
    /// The token endpoint took the code: the login is not sent again.
    pub(super) fn completed(self) -> Completed<'a> {
        self.logins.remember(self.digest);
        Completed(self)
    }
}

/// A login whose code was taken: its tokens, once read, go to the pastes that waited for it.
pub(super) struct Completed<'a>(Sending<'a>);

impl Completed<'_> {
    pub(super) fn share(self, tokens: &Tokens) {
        self.0.outcome.send_replace(Some(tokens.clone()));
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.logins
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
    }
}

impl CompletedLogins {
    /// A process completes a handful of logins; the last few dozen are remembered.
    const KEPT: usize = 64;

    fn digest(state: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(state.as_bytes()).into()
    }

    #[cfg(test)]
    fn contains(&self, state: &str) -> bool {
        let d = Self::digest(state);
        self.done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&d)
    }

    fn remember(&self, digest: [u8; 32]) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if done.len() >= Self::KEPT {
            done.pop_front();
        }
        done.push_back(digest);
    }

    /// Claims the login for one call to the token endpoint. A code works once: a login completed
    /// already is refused at once, not with a second call that the token endpoint refuses (or,
    /// worse, a second account). One whose code is on its way now is waited for (`Claim::Wait`):
    /// a double submit or a host retrying its callback sent the code twice, the token endpoint
    /// refused the second as spent, and the person, told to start again, did not know the first
    /// had added the account; refused without a call, the second still showed a failure to a
    /// host that shows the last answer.
    pub(super) fn claim(&self, state: &str) -> Result<Claim<'_>> {
        let digest = Self::digest(state);
        // Held while `done` is read: a login is in `sending` until after it is in `done`. One
        // still there is waited for, done or not: its email is being read.
        let mut sending = self.sending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(outcome) = sending.get(&digest) {
            return Ok(Claim::Wait(outcome.clone()));
        }
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if done.contains(&digest) {
            return Err(Error::LoginCompleted(
                "this login was completed already (a code works once; nothing was sent): start a new one to add another account".into(),
            ));
        }
        drop(done);
        let (outcome, waiting) = tokio::sync::watch::channel(None);
        sending.insert(digest, waiting);
        Ok(Claim::Send(Sending {
            logins: self,
            digest,
            outcome,
        }))
    }

    /// `claim`, waiting out the same login sent already: its tokens when it got them, else (its
    /// call failed, the code maybe unspent) the claim to send it now, as a paste after it would.
    pub(super) async fn sending(
        &self,
        state: &str,
    ) -> Result<std::result::Result<Sending<'_>, Tokens>> {
        loop {
            match self.claim(state)? {
                Claim::Send(sending) => return Ok(Ok(sending)),
                Claim::Wait(mut outcome) => {
                    if let Ok(tokens) = outcome.wait_for(Option::is_some).await {
                        if let Some(tokens) = tokens.clone() {
                            return Ok(Err(tokens));
                        }
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn add(&self, state: &str) {
        self.remember(Self::digest(state));
    }
}

pub(super) fn completed_logins() -> &'static CompletedLogins {
    static LOGINS: std::sync::OnceLock<CompletedLogins> = std::sync::OnceLock::new();
    LOGINS.get_or_init(CompletedLogins::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by a review: a code too long was said to hold characters no code has.
    #[test]
    fn a_code_longer_than_any_is_told_so() {
        let e = parse_pasted(&format!("{}#st", "a".repeat(5000))).unwrap_err();
        assert_eq!(e.code(), "OAUTH_BAD_INPUT");
        assert!(
            e.to_string()
                .contains("5000 characters, longer than any code"),
            "{e}"
        );
    }

    #[test]
    fn pasted_forms() {
        let p = parse_pasted("  abc#st  ").unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        let p = parse_pasted("https://platform.claude.com/oauth/code/callback?code=abc&state=st")
            .unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        // A stray `#` after the state.
        let p = parse_pasted("abc#st#").unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        assert_eq!(
            parse_pasted("abc#st#abc#st").unwrap_err().code(),
            "OAUTH_BAD_INPUT",
            "pasted twice"
        );
        // Without its scheme, as some address bars copy it.
        let p = parse_pasted("platform.claude.com/oauth/code/callback?code=abc&state=st").unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        let p = parse_pasted("?code=a%2Bc&state=st").unwrap();
        assert_eq!(p.code.expose(), "a+c");
        let p = parse_pasted("code=abc#st").unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        assert!(parse_pasted("abc").unwrap().state.is_none());
        assert_eq!(parse_pasted("").unwrap_err().code(), "OAUTH_BAD_INPUT");
        assert_eq!(
            parse_pasted("state=x").unwrap_err().code(),
            "OAUTH_BAD_INPUT"
        );
        assert_eq!(
            parse_pasted("https://x/cb?state=x").unwrap_err().code(),
            "OAUTH_BAD_INPUT"
        );
        assert_eq!(parse_pasted("a b#c").unwrap_err().code(), "OAUTH_BAD_INPUT");
        // The wrong thing pasted: a NUL, a code of a whole file, a paste of megabytes.
        for bad in [
            "ab\0c#st".to_string(),
            format!("{}#st", "x".repeat(5000)),
            format!("{}#st", "x".repeat(10_000_000)),
            "c\u{e9}de#st".to_string(),
            "data:text/html,<script>x</script>#st".to_string(),
            "javascript:alert(1)#st".to_string(),
        ] {
            assert_eq!(parse_pasted(&bad).unwrap_err().code(), "OAUTH_BAD_INPUT");
        }
        assert!(parse_pasted(&format!("{}#st", "x".repeat(4000))).is_ok());
        // A terminal in bracketed-paste mode, or a code copied off a page with zero-width spaces.
        for pasted in [
            "\u{1b}[200~abc#st\u{1b}[201~",
            "\u{feff}abc\u{200b}#st\u{200d}",
            "\u{1b}[200~https://platform.claude.com/oauth/code/callback?code=abc&state=st\u{1b}[201~",
            // Quotes around it, as an API key may have them: Markdown's, typographic, nested.
            "`abc#st`",
            "\u{201c}abc#st\u{201d}",
            " \u{2018}abc#st\u{2019} ",
            "\u{ab} abc#st \u{bb}",
            "\" 'abc#st' \"",
        ] {
            let p = parse_pasted(pasted).unwrap();
            assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        }
        // Another escape sequence is still refused: only the paste markers are taken off.
        assert_eq!(
            parse_pasted("\u{1b}[Aabc#st").unwrap_err().code(),
            "OAUTH_BAD_INPUT"
        );
        // The callback URL as a mail or chat app hands it over, or with its scheme in capitals.
        for pasted in [
            "<https://platform.claude.com/oauth/code/callback?code=abc&state=st>",
            "HTTPS://platform.claude.com/oauth/code/callback?code=abc&state=st",
        ] {
            let p = parse_pasted(pasted).unwrap();
            assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        }
        // Copied out of a sentence: its punctuation and brackets are not the state's.
        for pasted in [
            "abc#st.",
            "abc#st,",
            "(abc#st)",
            "(abc#st).",
            "abc#st\").",
            "abc#st!?",
            "abc#st\u{2026}",
            "abc#st\u{201d}.",
            "<https://platform.claude.com/oauth/code/callback?code=abc&state=st>.",
            "https://platform.claude.com/oauth/code/callback?code=abc&state=st.",
            "https://platform.claude.com/oauth/code/callback?code=abc#st);",
            "?code=abc&state=st:",
        ] {
            let p = parse_pasted(pasted).unwrap();
            assert_eq!(
                (p.code.expose(), p.state.unwrap().expose()),
                ("abc", "st"),
                "{pasted}"
            );
        }
        // A stray byte in the state (a NUL, an escape, bytes that were no UTF-8, also as a
        // callback URL's percent-escape): the wrong text pasted, not another login's state.
        for bad in [
            "abc#st\0",
            "abc#s\0t",
            "abc#st\u{1b}",
            "abc#st\u{7f}",
            "abc#st\u{fffd}",
            "abc#st\u{e9}",
            "https://platform.claude.com/oauth/code/callback?code=abc&state=s%00t",
            "https://platform.claude.com/oauth/code/callback?code=abc&state=s%FFt",
            "?code=abc&state=s%1Bt",
        ] {
            let e = parse_pasted(bad).unwrap_err();
            assert_eq!(e.code(), "OAUTH_BAD_INPUT", "{bad:?}");
            assert!(
                e.to_string().contains("not a code from the login page"),
                "{bad:?}: {e}"
            );
        }
        // The code pasted twice: said so, not taken for another login's state.
        for bad in ["abc#stabc#st", "abc#st\nabc#st", "abc#st abc#st"] {
            let e = parse_pasted(bad).unwrap_err();
            assert_eq!(e.code(), "OAUTH_BAD_INPUT", "{bad}");
            assert!(e.to_string().contains("pasted twice"), "{bad}: {e}");
        }
        // A callback whose code or state is said twice: which one is meant is not guessed
        // (the last code was sent, and only the last state checked: found by a review).
        for bad in [
            "https://platform.claude.com/oauth/code/callback?code=AAAA&code=BBBB&state=st",
            "https://platform.claude.com/oauth/code/callback?code=AAAA&state=OTHER&state=st",
            "code=AAAA&state=st&state=st",
        ] {
            let e = parse_pasted(bad).unwrap_err();
            assert_eq!(e.code(), "OAUTH_BAD_INPUT", "{bad}");
            assert!(e.to_string().contains("twice"), "{bad}: {e}");
            assert!(!e.to_string().contains("AAAA"), "{bad}: {e}");
        }
        // The callback of a refused login: its error code said, nothing else of it.
        let e = parse_pasted("https://platform.claude.com/oauth/code/callback?error=access_denied&error_description=Nope%20x&state=st").unwrap_err();
        assert_eq!(e.code(), "OAUTH_BAD_INPUT");
        assert!(
            e.to_string().contains("not completed (access_denied)"),
            "{e}"
        );
        assert!(!e.to_string().contains("Nope"), "{e}");
        let e = parse_pasted("error=%3Cscript%3E&state=st").unwrap_err();
        assert!(e.to_string().contains("not completed: "), "{e}");
        // The login URL pasted back, whole or as its query; the code with more text after it.
        for bad in [
            "https://claude.ai/oauth/authorize?code=true&client_id=c&response_type=code&code_challenge=x&code_challenge_method=S256&state=st",
            "code=true&code_challenge=x&state=st",
            "abc#st and more",
        ] {
            assert_eq!(parse_pasted(bad).unwrap_err().code(), "OAUTH_BAD_INPUT", "{bad}");
        }
    }

    #[test]
    fn a_completed_login_is_remembered_by_its_state() {
        let logins = CompletedLogins::default();
        assert!(!logins.contains("state-1"));
        logins.add("state-1");
        assert!(logins.contains("state-1"));
        for i in 0..CompletedLogins::KEPT {
            logins.add(&format!("other-{i}"));
        }
        assert!(
            !logins.contains("state-1"),
            "only the last few dozen are kept"
        );
    }

    #[test]
    fn a_login_is_sent_once_at_a_time() {
        let logins = CompletedLogins::default();
        let sends = |state| matches!(logins.claim(state), Ok(Claim::Send(_)));
        let Ok(Claim::Send(first)) = logins.claim("state-1") else {
            panic!("the first claim sends")
        };
        assert!(
            matches!(logins.claim("state-1"), Ok(Claim::Wait(_))),
            "the same login again waits"
        );
        assert!(sends("state-2"), "another login");
        drop(first);
        // Refused by the token endpoint (or lost on the way): the login may be tried again.
        let Ok(Claim::Send(again)) = logins.claim("state-1") else {
            panic!("sent again")
        };
        again.completed();
        let e = logins.claim("state-1").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("completed already")));
    }

    #[test]
    fn state_checks() {
        let ok = parse_pasted("abc#st").unwrap();
        assert!(check_state(&ok, "st").is_ok());
        assert_eq!(
            check_state(&ok, "other").unwrap_err().code(),
            "OAUTH_STATE_MISMATCH"
        );
        let missing = parse_pasted("abc").unwrap();
        assert_eq!(
            check_state(&missing, "st").unwrap_err().code(),
            "OAUTH_STATE_MISMATCH"
        );
    }
}
