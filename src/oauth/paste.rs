//! What a person pastes at the end of a login (`code#state`, the callback URL, a query string):
//! read within bounds, its state checked against the attempt's before any request, and each
//! attempt's code sent at most once.

use subtle::ConstantTimeEq;
use url::Url;

use crate::error::{Error, Result};
use crate::secret::Secret;

/// What the user pasted: `code#state`, the full callback URL, or a query string.
#[derive(Debug)]
pub struct Pasted {
    pub code: Secret,
    pub state: Option<Secret>,
}

/// The most text taken as a paste: a callback URL with its query is well under this.
const MAX_PASTE: usize = 16 * 1024;

pub fn parse_pasted(input: &str) -> Result<Pasted> {
    let input = crate::secret::unwrapped_paste(input);
    let input = input.as_str();
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
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "code" => code = Some(Secret::new(v.into_owned())),
                "state" => state = Some(Secret::new(v.into_owned())),
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
        Ok((code, state))
    };
    let (code, state) = if input.starts_with("http://") || input.starts_with("https://") {
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
        from_query(input.trim_start_matches('?'))?
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
    if !code.is_token_shaped() || !code.expose().bytes().all(code_char) {
        return Err(Error::OAuthBadInput(
            "the authorization code is empty or malformed".into(),
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

/// The logins (by a digest of their state) whose code the token endpoint already took.
pub(super) struct CompletedLogins(std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>);

impl CompletedLogins {
    /// A process completes a handful of logins; the last few dozen are remembered.
    const KEPT: usize = 64;

    fn digest(state: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(state.as_bytes()).into()
    }

    pub(super) fn contains(&self, state: &str) -> bool {
        let d = Self::digest(state);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&d)
    }

    pub(super) fn add(&self, state: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::KEPT {
            seen.pop_front();
        }
        seen.push_back(Self::digest(state));
    }
}

pub(super) fn completed_logins() -> &'static CompletedLogins {
    static LOGINS: std::sync::OnceLock<CompletedLogins> = std::sync::OnceLock::new();
    LOGINS.get_or_init(|| CompletedLogins(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pasted_forms() {
        let p = parse_pasted("  abc#st  ").unwrap();
        assert_eq!((p.code.expose(), p.state.unwrap().expose()), ("abc", "st"));
        let p = parse_pasted("https://platform.claude.com/oauth/code/callback?code=abc&state=st")
            .unwrap();
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
        let logins = CompletedLogins(Default::default());
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
