//! OAuth for Claude accounts: PKCE authorize URL, code exchange, refresh, and the account's
//! email. Secrets are `Secret`s; error text carries the endpoint's `error` and
//! `error_description` only, scrubbed of every secret the call presented (servers echo what
//! they were sent), never a token, code or verifier.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::account::now_ms;
use crate::config;
use crate::echo::scrub_with_forms;
use crate::error::{Error, Result};
use crate::http;
use crate::secret::Secret;

mod paste;
use paste::completed_logins;
pub use paste::{check_state, parse_pasted, Pasted};

pub const CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";
pub const REDIRECT_URI: &str = "https://platform.claude.com/oauth/code/callback";
pub const SCOPES: &str = "org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload";
pub const AUTHORIZE_URL_MAX: &str = "https://claude.ai/oauth/authorize";
pub const AUTHORIZE_URL_CONSOLE: &str = "https://platform.claude.com/oauth/authorize";
pub const OAUTH_BETA: &str = "oauth-2025-04-20";
/// Token responses are small; anything bigger is not a token response.
const MAX_TOKEN_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Max,
    Console,
}

impl Mode {
    pub fn parse(s: Option<&str>) -> Result<Mode> {
        match s.map(str::trim) {
            None | Some("") | Some("max") => Ok(Mode::Max),
            Some("console") => Ok(Mode::Console),
            Some(other) => Err(Error::InvalidArgument(format!(
                "unknown login mode {other:?}: use \"max\" or \"console\""
            ))),
        }
    }
}

#[derive(Debug)]
pub struct Authorization {
    pub url: String,
    pub verifier: Secret,
    pub state: Secret,
}

/// 32 bytes from the OS CSPRNG as base64url: 43 characters of the RFC 7636 unreserved set.
fn random_token() -> Result<Secret> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::InvalidArgument(format!("no OS randomness: {e}")))?;
    Ok(Secret::new(URL_SAFE_NO_PAD.encode(bytes)))
}

pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The mode of each login `authorize` started in this process, by a digest of its state: the
/// contract's `{ url, verifier, state }` carries no mode, and `addAccount` with a Console
/// login's pkce must make its API key. The newest 64, each for the hour a login can take.
static LOGIN_MODES: std::sync::Mutex<std::collections::VecDeque<([u8; 32], Mode, i64)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const LOGIN_MODES_KEPT: usize = 64;
const LOGIN_MODE_LIFE_MS: i64 = 60 * 60 * 1000;

pub fn state_digest(state: &str) -> [u8; 32] {
    Sha256::digest(state.as_bytes()).into()
}

/// The mode of the login whose state is `state`, as `authorize` started it here (a login
/// started elsewhere, or long ago, is a Pro/Max login).
pub fn mode_of(state: &str) -> Mode {
    let digest = state_digest(state);
    let now = now_ms();
    let modes = LOGIN_MODES.lock().unwrap_or_else(|p| p.into_inner());
    modes
        .iter()
        .find(|(d, _, at)| *d == digest && now - at < LOGIN_MODE_LIFE_MS)
        .map_or(Mode::Max, |(_, mode, _)| *mode)
}

pub fn authorize(mode: Mode) -> Result<Authorization> {
    let verifier = random_token()?;
    let state = random_token()?;
    if mode == Mode::Console {
        let mut modes = LOGIN_MODES.lock().unwrap_or_else(|p| p.into_inner());
        if modes.len() >= LOGIN_MODES_KEPT {
            modes.pop_front();
        }
        modes.push_back((state_digest(state.expose()), mode, now_ms()));
    }
    let base = match mode {
        Mode::Max => AUTHORIZE_URL_MAX,
        Mode::Console => AUTHORIZE_URL_CONSOLE,
    };
    let mut url = Url::parse(base).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("code", "true")
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", REDIRECT_URI)
        .append_pair("scope", SCOPES)
        .append_pair("code_challenge", &challenge(verifier.expose()))
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", state.expose());
    Ok(Authorization {
        url: url.into(),
        verifier,
        state,
    })
}

#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: Secret,
    pub refresh: Secret,
    /// Epoch milliseconds.
    pub expires: i64,
    pub email: Option<String>,
}

/// Exchanges a pasted code. The state is checked before any request is made.
pub async fn exchange(input: &str, verifier: &str, state: &str) -> Result<Tokens> {
    let pasted = parse_pasted(input)?;
    check_state(&pasted, state)?;
    // A verifier `authorize()` made is 43 characters of RFC 7636's unreserved set. Any other
    // cannot match the login's challenge: its call was refused, and it spent the single-use code.
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
    if !(43..=128).contains(&verifier.len()) || !verifier.bytes().all(unreserved) {
        return Err(Error::InvalidArgument(
            "the verifier is not one authorize() makes (43 to 128 of A-Z a-z 0-9 - . _ ~): pass the { verifier, state } of the login the code belongs to; the code was not sent".into(),
        ));
    }
    // The same login pasted again while its code is on its way gets that call's login.
    let sending = match completed_logins().sending(state).await? {
        Ok(sending) => sending,
        Err(tokens) => return Ok(tokens),
    };
    let body = json!({
        "grant_type": "authorization_code",
        "code": pasted.code.expose(),
        "state": state,
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    });
    let (verifier, state) = (Secret::new(verifier), Secret::new(state));
    let value = token_call(body, Grant::Code, &[&pasted.code, &verifier, &state]).await?;
    let completed = sending.completed();
    let mut tokens = match parse_token_response(&value, None) {
        Ok(tokens) => tokens,
        // The code is spent, and the answer's refresh token is the login: kept without an access
        // token, it is refreshed before its first use (by the pool, under its lock and journal).
        // Dropped with the answer, the person had to log in again, and pasting the code again
        // was told the login was completed already.
        Err(Error::OAuthRotatedUnusable { refresh, .. }) => {
            tracing::warn!("the login's access token was unusable: kept its refresh token");
            Tokens {
                access: Secret::new(""),
                refresh,
                expires: 0,
                email: answer_email(&value),
            }
        }
        Err(e) => return Err(e),
    };
    // The server's word for the email is held to what names an account (`exchange()` returns
    // it to callers as it is; `add_oauth` stores it), and to text that holds none of this
    // login's secrets: a server echoing one there put it in every list and notice.
    let presented = [&pasted.code, &verifier, &state];
    let usable = |e: &String, tokens: &Tokens| {
        let e = e.trim();
        crate::account::acceptable_server_email(e)
            && !crate::secret::holds_piece(
                e,
                &[&presented[..], &[&tokens.access, &tokens.refresh]].concat(),
            )
    };
    tokens.email = tokens.email.take().filter(|e| usable(e, &tokens));
    if tokens.email.is_none() && !tokens.access.is_empty() {
        tokens.email = profile_email(&tokens.access)
            .await
            .ok()
            .flatten()
            .filter(|e| usable(e, &tokens));
    }
    completed.share(&tokens);
    Ok(tokens)
}

/// Presents `refresh` once. A response without a new refresh token keeps the old one.
pub async fn refresh(refresh: &Secret) -> Result<Tokens> {
    #[cfg(test)]
    if let Some(answer) = fake_token_endpoint::answer(refresh).await {
        return answer;
    }
    let body = json!({
        "grant_type": "refresh_token",
        "refresh_token": refresh.expose(),
        "client_id": CLIENT_ID,
    });
    let value = token_call(body, Grant::Refresh, &[refresh]).await?;
    parse_token_response(&value, Some(refresh))
}

/// `refresh` for a caller with no pool to keep a rotated token in (the `refresh(token)` export):
/// an answer with a new refresh token and nothing else usable (the presented one spent, the
/// successor the login now) is followed at once by one refresh with that successor, whose usable
/// answer is given. Failing that, the newest live refresh token is given with no access token and
/// `expires` 0, to be refreshed before use: rejecting lost the login, and no secret may ride in
/// an error. A refusal of the successor (`invalid_grant`) leaves nothing to keep and is the error.
/// With the answer, whether `token` was spent: the endpoint named a successor (a refusal of that
/// successor included), which a token handed back as it was, or left out, is not.
pub async fn refresh_keeping_successor(token: &Secret) -> (Result<Tokens>, bool) {
    let successor = match refresh(token).await {
        Err(Error::OAuthRotatedUnusable { refresh, .. }) => refresh,
        Ok(tokens) => {
            let spent = tokens.refresh != *token;
            return (Ok(tokens), spent);
        }
        other => return (other, false),
    };
    let live = match refresh_once_more_if_lost(&successor).await.0 {
        Ok(tokens) => return (Ok(tokens), true),
        Err(Error::OAuthRotatedUnusable { refresh, .. }) => refresh,
        Err(e @ Error::OAuthInvalidGrant(_)) => return (Err(e), true),
        Err(_) => successor,
    };
    let tokens = Tokens {
        access: Secret::new(""),
        refresh: live,
        expires: 0,
        email: None,
    };
    (Ok(tokens), true)
}

/// `refresh`, and once more with the same token when the first answer was lost to the network
/// (the request may not have arrived, or the server rotated the token and the answer never came
/// back: a second try settles it, success or invalid_grant). Never a loop. Not when no
/// connection formed: nothing was sent, so no answer was lost, and a second try at an endpoint
/// that refused the handshake or never finished it only doubled the wait (20 s, not 10, before
/// a request on an expired token failed).
/// With the answer, whether it is the second attempt's: a refusal then may be of a token the
/// lost first answer had already replaced (spent, its successor unknown).
pub async fn refresh_once_more_if_lost(token: &Secret) -> (Result<Tokens>, bool) {
    refresh_once_more_if_lost_and(token, || async { Ok(()) }).await
}

/// `refresh_once_more_if_lost`, where `may_ask_again` is asked right before the second try: its
/// error is the answer, the token not presented again (a fleet host whose claim on the token was
/// taken over while the first answer was out).
pub async fn refresh_once_more_if_lost_and<F, Fut>(
    token: &Secret,
    may_ask_again: F,
) -> (Result<Tokens>, bool)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    match refresh(token).await {
        Err(Error::Network {
            never_connected: false,
            ..
        }) => {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Err(e) = may_ask_again().await {
                return (Err(e), false);
            }
            (refresh(token).await, true)
        }
        other => (other, false),
    }
}

/// A token endpoint in the test process, for refresh tokens that start with a prefix a test
/// registered: no network, and the test decides each answer.
#[cfg(test)]
pub(crate) mod fake_token_endpoint {
    use super::{Result, Secret, Tokens};
    use std::sync::{Arc, Mutex};

    pub type Answer = Arc<dyn Fn(&str) -> Result<Tokens> + Send + Sync>;

    static FAKES: Mutex<Vec<(String, Answer)>> = Mutex::new(Vec::new());

    /// Answers refreshes of tokens starting with `prefix` until the guard is dropped.
    pub struct Registered(String);

    impl Drop for Registered {
        fn drop(&mut self) {
            crate::store::lock(&FAKES).retain(|(p, _)| *p != self.0);
        }
    }

    pub fn register(prefix: &str, answer: Answer) -> Registered {
        crate::store::lock(&FAKES).push((prefix.to_string(), answer));
        Registered(prefix.to_string())
    }

    pub(super) async fn answer(token: &Secret) -> Option<Result<Tokens>> {
        let fake = crate::store::lock(&FAKES)
            .iter()
            .find(|(p, _)| token.expose().starts_with(p.as_str()))
            .map(|(_, a)| a.clone())?;
        // A round trip's while, in which other requests for the account come and wait.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        Some(fake(token.expose()))
    }
}

#[derive(Clone, Copy)]
enum Grant {
    Code,
    Refresh,
}

async fn token_call(body: Value, grant: Grant, presented: &[&Secret]) -> Result<Value> {
    let url = config::token_url()?;
    http::check_proxy(&url)?;
    let client = http::token_client()?;
    let limit = http::token_call_timeout();
    let call = async {
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| http::network_error("the token endpoint", &e))?;
        let response = crate::coding::received(response, "the token endpoint")?;
        let status = response.status().as_u16();
        // Read as an API answer's is: a date on the server's clock (its `Date`), `retry-after-ms`,
        // the longest of several. A dated one read on a clock an hour slow held the login's
        // refresh an hour where the API's own 429 rested its account a minute.
        let retry_after = crate::engine::limits::Limits::from_headers(
            response.headers(),
            std::time::SystemTime::now(),
        )
        .retry_after_ms
        .map(|ms| (ms.max(0) as u64).div_ceil(1000).max(1));
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = read_bounded(response, "the token endpoint").await?;
        Ok::<_, Error>((status, retry_after, content_type, bytes))
    };
    // Not reqwest's timeout: time the process spent stopped must not turn an answer that came
    // meanwhile into a lost one (see `timeout_while_running`).
    let (status, retry_after, content_type, bytes) = http::timeout_while_running(limit, call)
        .await
        .ok_or_else(|| Error::Network {
            what: "the token endpoint",
            detail: format!("timed out (no answer within {} ms)", limit.as_millis()),
            never_connected: false,
        })??;
    drop(body);
    // Read as a JavaScript client reads it (a byte order mark, a lone surrogate, `1e400`): a
    // 200 refused whole lost the rotated refresh token in it with the login.
    let parsed = answer_read(&bytes, &["refresh_token", "error"]);

    // A 2xx that is an OAuth error and holds no token (a proxy's, or an endpoint's that answers
    // errors with 200) is read as the error it says: taken for a token response, its code and
    // text were dropped for "no refresh_token", and the login was marked completed, so pasting
    // the same, still unused code was refused.
    let error_in_2xx = parsed.as_ref().is_some_and(|v| {
        v.get("error").is_some()
            && v.get("access_token").is_none()
            && v.get("refresh_token").is_none()
    });
    if (200..300).contains(&status) && !error_in_2xx {
        return match parsed {
            Some(v) if v.is_object() => Ok(v),
            Some(_) => Err(Error::OAuthHttp {
                what: "token endpoint",
                status,
                detail: "the answer is JSON but not an object: no token response".into(),
                retry_after: None,
            }),
            None => Err(Error::OAuthHttp {
                what: "token endpoint",
                status,
                detail: scrub_with_forms(&not_json(&content_type), presented),
                retry_after: None,
            }),
        };
    }
    let (code, description) = parsed.as_ref().map(error_fields).unwrap_or((None, None));
    let summary = match (&code, &description) {
        (Some(c), Some(d)) => format!("{c}: {d}"),
        (Some(c), None) => c.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) if parsed.is_none() => not_json(&content_type),
        (None, None) => "no error detail".into(),
    };
    let summary = scrub_with_forms(&summary, presented);
    let dead_token = match code.as_deref() {
        Some("invalid_grant") | Some("invalid_refresh_token") | Some("refresh_token_reused") => {
            true
        }
        Some("not_found_error") => matches!(grant, Grant::Refresh),
        _ => false,
    };
    // A 2xx that says the token is dead (an endpoint that answers errors with 200) is as final as
    // a 400: read as a passing failure, the login stayed idle and its dead token was presented
    // again after every backoff.
    let in_2xx = (200..300).contains(&status);
    if dead_token && (in_2xx || matches!(status, 400 | 401 | 404)) {
        return Err(match grant {
            Grant::Code => Error::OAuthCodeRefused(summary),
            Grant::Refresh => Error::OAuthInvalidGrant(summary),
        });
    }
    Err(Error::OAuthHttp {
        what: "token endpoint",
        status,
        detail: summary,
        retry_after,
    })
}

fn not_json(content_type: &str) -> String {
    let ct = if content_type.is_empty() {
        "no content type".to_string()
    } else {
        content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(80)
            .collect()
    };
    format!("the answer was not JSON ({ct}); the endpoint may be down or blocked")
}

/// Only `error` / `error_description` (or Anthropic's `error.type` / `error.message`) are kept
/// from an error body, cut short: bodies can echo what was sent. Control, bidi and invisible
/// characters are dropped: the text ends up in messages a terminal or a toast shows (an ESC
/// from the server could clear the screen or recolour what follows), and a zero-width space
/// between each character of an echoed token hid it from the scrub while it showed as itself.
fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    let short = |s: &str| {
        s.chars()
            .filter(|&c| !c.is_control() && !crate::secret::is_invisible(c))
            .take(200)
            .collect::<String>()
    };
    match v.get("error") {
        Some(Value::String(code)) => (
            Some(short(code)),
            v.get("error_description")
                .and_then(Value::as_str)
                .map(short),
        ),
        Some(Value::Object(inner)) => (
            inner.get("type").and_then(Value::as_str).map(short),
            inner.get("message").and_then(Value::as_str).map(short),
        ),
        _ => (None, None),
    }
}

/// `what`: the endpoint, as a message names it (`the token endpoint`).
async fn read_bounded(mut response: reqwest::Response, what: &'static str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_TOKEN_BODY {
                    return Err(Error::OAuthHttp {
                        what: what.trim_start_matches("the "),
                        status: response.status().as_u16(),
                        detail: format!("the answer is larger than {} KB", MAX_TOKEN_BODY / 1024),
                        retry_after: None,
                    });
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(http::network_error(what, &e)),
        }
    }
}

/// The longest token lifetime believed (seconds).
const MAX_LIFETIME_SECS: f64 = 365.0 * 24.0 * 3600.0;
/// The access token's lifetime when a token response does not say it usably.
const UNSAID_LIFETIME_SECS: f64 = 3600.0;

fn parse_token_response(v: &Value, previous_refresh: Option<&Secret>) -> Result<Tokens> {
    let bad = |what: &str| Error::OAuthHttp {
        what: "token endpoint",
        status: 200,
        detail: format!("token response {what}"),
        retry_after: None,
    };
    let refresh = match v.get("refresh_token").and_then(Value::as_str) {
        Some(r) if !r.is_empty() => Secret::new(r),
        _ => previous_refresh
            .cloned()
            .ok_or_else(|| bad("has no refresh_token"))?,
    };
    if !refresh.is_token_shaped() {
        return Err(bad(
            "has a refresh_token that is not a token (not visible ASCII, or too long)",
        ));
    }
    match access_and_expiry(v) {
        Ok((access, expires)) => Ok(Tokens {
            access,
            refresh,
            expires,
            email: answer_email(v),
        }),
        // The endpoint rotated the refresh token (the presented one is spent now), or a login's
        // code gave one (the code is spent), and the rest cannot be used: that refresh token is
        // the login, and dropping it with the answer lost the login (the next refresh presented
        // the spent token; a login had to be done again).
        Err(what) if previous_refresh.is_none_or(|p| *p != refresh) => {
            Err(Error::OAuthRotatedUnusable {
                refresh,
                detail: format!("token response {what}"),
            })
        }
        Err(what) => Err(bad(what)),
    }
}

/// The email a token response names for its login, if any.
fn answer_email(v: &Value) -> Option<String> {
    v.get("account")
        .and_then(|a| a.get("email_address").or_else(|| a.get("email")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .filter(|s| !s.is_empty())
}

/// The access token and its expiry (epoch ms) of a token response, or what is wrong with them.
fn access_and_expiry(v: &Value) -> std::result::Result<(Secret, i64), &'static str> {
    // A value no header can carry (a NUL, a line break, 60 KB) would be stored and then fail
    // every request of the account: refused here, like a response without one.
    let access = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("has no access_token")?;
    let access = Secret::new(access);
    if !access.is_token_shaped() {
        return Err("has an access_token that is not a token (not visible ASCII, or too long)");
    }
    // A lifetime past a year is taken as a year: refreshing early costs one call, and a server
    // that claims decades would otherwise never be asked again before a 401. One not said, or
    // said as no positive number, is an hour: RFC 6749 only recommends `expires_in`, and
    // refusing the answer threw away the successor of the refresh token the server had just
    // spent (the next refresh presented the spent one and the login was revoked). A token that
    // ends sooner meets its 401, which adopts or refreshes once.
    let said = match v.get("expires_in") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let expires_in = match said.filter(|s| s.is_finite() && *s > 0.0) {
        Some(s) => s.min(MAX_LIFETIME_SECS),
        None => {
            tracing::warn!(
                "the token endpoint gave no usable expires_in; the access token is taken to last an hour"
            );
            UNSAID_LIFETIME_SECS
        }
    };
    Ok((access, now_ms() + (expires_in * 1000.0) as i64))
}

/// `GET {api}/api/oauth/profile`: the account's email when the token response lacks it.
pub async fn profile_email(access: &Secret) -> Result<Option<String>> {
    let mut url = config::api_url()?;
    url.set_path("/api/oauth/profile");
    http::check_proxy(&url)?;
    let response = http::api_client()?
        .get(url)
        .timeout(http::token_call_timeout())
        .bearer_auth(access.expose())
        .header("anthropic-beta", OAUTH_BETA)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| http::network_error("the profile endpoint", &e))?;
    let response = crate::coding::received(response, "the profile endpoint")?;
    let status = response.status().as_u16();
    let bytes = read_bounded(response, "the profile endpoint").await?;
    if !(200..300).contains(&status) {
        return Err(Error::OAuthHttp {
            what: "profile endpoint",
            status,
            detail: "profile request refused".into(),
            retry_after: None,
        });
    }
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let email = v
        .get("account")
        .and_then(|a| a.get("email").or_else(|| a.get("email_address")))
        .or_else(|| v.get("email"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(email)
}

/// `POST {api}/api/oauth/claude_cli/create_api_key`: a Console login's own API key, which is
/// what a Console login is for (its bearer token is no member: the API refuses a Console
/// organisation's OAuth token, and it was stored as a login every request of which failed). What
/// the answer says of itself is never quoted: it may hold the key or echo the token.
pub async fn create_api_key(access: &Secret) -> Result<Secret> {
    let mut url = config::api_url()?;
    url.set_path("/api/oauth/claude_cli/create_api_key");
    http::check_proxy(&url)?;
    let response = http::api_client()?
        .post(url)
        .timeout(http::token_call_timeout())
        .bearer_auth(access.expose())
        .header("anthropic-beta", OAUTH_BETA)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .map_err(|e| http::network_error("the API key endpoint", &e))?;
    let response = crate::coding::received(response, "the API key endpoint")?;
    let status = response.status().as_u16();
    let bytes = read_bounded(response, "the API key endpoint").await?;
    let refused = |detail: &str| {
        Error::OAuthHttp {
        what: "API key endpoint",
        status,
        detail: format!("{detail}: the Console login worked, but no API key was made for it, and nothing was added (log in again to try once more, or paste a key with `oauth-pool add-key`)"),
        retry_after: None,
    }
    };
    if !(200..300).contains(&status) {
        return Err(refused("the API key endpoint refused to make a key"));
    }
    // Read as a token answer is: a key the Console made and the answer lost (a byte order mark,
    // a trailer, blanks around the key) stays made there, and each try left one more.
    let v = answer_read(&bytes, &["raw_key"]).unwrap_or(Value::Null);
    let key = v
        .get("raw_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim();
    let plausible = key.starts_with("sk-ant-")
        && key.len() <= 4096
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !plausible {
        return Err(refused("the API key endpoint's answer holds no API key"));
    }
    Ok(Secret::new(key))
}

/// An endpoint's JSON answer read leniently (`value_read_leniently`), else, with bytes after it (a
/// proxy's trailer, a second document), its first value when that is an object holding one of
/// `fields`. Refused whole, a token answer's rotated refresh token was lost, and the spent one
/// presented again after the endpoint's rest, which revoked the login.
fn answer_read(bytes: &[u8], fields: &[&str]) -> Option<Value> {
    crate::pool::value_read_leniently(bytes).or_else(|| {
        let first = serde_json::Deserializer::from_slice(bytes)
            .into_iter::<Value>()
            .next()?
            .ok()?;
        fields
            .iter()
            .any(|field| first.get(field).is_some())
            .then_some(first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_past_a_byte_order_mark_or_a_trailer_when_it_holds_what_is_asked() {
        let key = ["sk", "ant", "api03", &"K".repeat(40)].join("-");
        let plain = serde_json::json!({ "raw_key": key }).to_string();
        for body in [
            plain.clone(),
            format!("\u{feff}{plain}"),
            format!("{plain}\n{{}}"),
            format!("{plain} trailer"),
        ] {
            let read = answer_read(body.as_bytes(), &["raw_key"]);
            assert_eq!(
                read.as_ref()
                    .and_then(|v| v.get("raw_key"))
                    .and_then(Value::as_str),
                Some(key.as_str()),
                "{body:?}"
            );
        }
        // A first document without the field asked for is not taken for the answer.
        assert_eq!(
            answer_read(format!("{{}}\n{plain}").as_bytes(), &["raw_key"]),
            None
        );
        assert_eq!(answer_read(b"<html>", &["raw_key"]), None);
    }

    #[tokio::test]
    async fn a_lost_answer_is_asked_again_only_when_the_caller_still_may() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let _endpoint = fake_token_endpoint::register(
            "lost-answer-",
            Arc::new(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
                Err(Error::Network {
                    what: "token",
                    detail: "the answer was lost".into(),
                    never_connected: false,
                })
            }),
        );
        let token = Secret::new("lost-answer-1");
        let (answer, twice) = refresh_once_more_if_lost_and(&token, || async {
            Err(Error::StoreUnavailable(
                "the claim could not be checked".into(),
            ))
        })
        .await;
        assert!(matches!(answer, Err(Error::StoreUnavailable(_))));
        assert!(!twice);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "presented again though the caller may not"
        );
        let (answer, twice) = refresh_once_more_if_lost_and(&token, || async { Ok(()) }).await;
        assert!(matches!(answer, Err(Error::Network { .. })));
        assert!(twice);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifier_and_state_are_random_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let a = authorize(Mode::Max).unwrap();
            let v = a.verifier.expose().to_string();
            assert_eq!(v.len(), 43);
            assert!(v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
            assert_ne!(a.verifier.expose(), a.state.expose());
            assert!(seen.insert(v));
            assert!(seen.insert(a.state.expose().to_string()));
        }
    }

    #[test]
    fn authorize_url_has_the_parameters_and_never_the_verifier() {
        let a = authorize(Mode::Max).unwrap();
        let url = Url::parse(&a.url).unwrap();
        assert_eq!(url.host_str(), Some("claude.ai"));
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["client_id"], CLIENT_ID);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code"], "true");
        assert_eq!(q["redirect_uri"], REDIRECT_URI);
        assert_eq!(q["scope"], SCOPES);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"], challenge(a.verifier.expose()));
        assert_eq!(q["state"], a.state.expose());
        assert!(!a.url.contains(a.verifier.expose()));
        let c = authorize(Mode::Console).unwrap();
        assert_eq!(
            Url::parse(&c.url).unwrap().host_str(),
            Some("platform.claude.com")
        );
        assert!(Mode::parse(Some("bogus")).is_err());
    }

    #[test]
    fn token_response_shapes() {
        let old = Secret::new("r0");
        let t = parse_token_response(
            &json!({"access_token": "a1", "expires_in": 3600}),
            Some(&old),
        )
        .unwrap();
        assert_eq!(t.refresh.expose(), "r0");
        assert!(t.expires > now_ms() + 3_500_000);
        // A lifetime not said, or said as no positive number, is an hour; one said as a number
        // in a string is that number. The answer is never refused for it: its refresh token
        // may be the successor of the one just spent.
        let hour = |t: &Tokens| (t.expires - now_ms() - 3_600_000).abs() < 5_000;
        for odd in [
            json!({"access_token": "a1", "refresh_token": "r1"}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": null}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": -1}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": 0}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": "NaN"}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": "eight hours"}),
            json!({"access_token": "a1", "refresh_token": "r1", "expires_in": [3600]}),
        ] {
            let t = parse_token_response(&odd, Some(&old)).unwrap();
            assert_eq!(t.refresh.expose(), "r1", "{odd}");
            assert!(hour(&t), "{odd}: {}", t.expires - now_ms());
        }
        let t = parse_token_response(
            &json!({"access_token": "a1", "expires_in": " 28800 "}),
            Some(&old),
        )
        .unwrap();
        assert!((t.expires - now_ms() - 28_800_000).abs() < 5_000);
        assert!(parse_token_response(&json!({"expires_in": 5}), Some(&old)).is_err());
        assert!(
            parse_token_response(&json!({"access_token": "a", "expires_in": 5}), None).is_err()
        );
        let t = parse_token_response(
            &json!({"access_token": "a", "refresh_token": "r", "expires_in": 5,
                    "account": {"email_address": "me@x"}}),
            None,
        )
        .unwrap();
        assert_eq!(t.email.as_deref(), Some("me@x"));
        // Values no header can carry are refused, not stored to fail every later request.
        for (access, refresh) in [
            ("a\u{0}b", "r"),
            ("a\r\nx: y", "r"),
            ("ä", "r"),
            ("a", "r\n"),
        ] {
            let v = json!({"access_token": access, "refresh_token": refresh, "expires_in": 5});
            let e = parse_token_response(&v, None).unwrap_err();
            assert_eq!(e.code(), "OAUTH_HTTP", "{access:?} {refresh:?}");
        }
        let long = "a".repeat(60_000);
        assert!(
            parse_token_response(&json!({"access_token": long, "expires_in": 5}), Some(&old))
                .is_err()
        );
        // A new refresh token beside an unusable rest is handed back (the old one is spent);
        // the old one handed back, or none, is a plain unusable answer.
        for rest in [json!({}), json!({"access_token": "a\nb", "expires_in": 5})] {
            let mut v = rest.clone();
            v["refresh_token"] = json!("r1");
            match parse_token_response(&v, Some(&old)) {
                Err(Error::OAuthRotatedUnusable { refresh, .. }) => {
                    assert_eq!(refresh.expose(), "r1")
                }
                other => panic!("{rest}: {other:?}"),
            }
            v["refresh_token"] = json!("r0");
            let e = parse_token_response(&v, Some(&old)).unwrap_err();
            assert!(matches!(e, Error::OAuthHttp { .. }), "{rest}: {e:?}");
        }
        // Decades are taken as a year.
        for decades in [json!(999_999_999), json!(1e12), json!("1e300")] {
            let t = parse_token_response(
                &json!({"access_token": "a", "expires_in": decades}),
                Some(&old),
            )
            .unwrap();
            assert!(t.expires <= now_ms() + 366 * 24 * 3_600_000);
            assert!(t.expires >= now_ms() + 364 * 24 * 3_600_000);
        }
    }

    proptest::proptest! {
        #[test]
        fn pasted_input_never_panics(s in ".{0,200}") {
            if let Ok(p) = parse_pasted(&s) {
                proptest::prop_assert!(!p.code.is_empty());
                let _ = check_state(&p, "state");
            }
        }

        #[test]
        fn token_responses_never_panic(access in proptest::option::of(".{0,8}"), expires in proptest::option::of(proptest::prelude::any::<f64>())) {
            let mut v = serde_json::Map::new();
            if let Some(a) = access { v.insert("access_token".into(), json!(a)); }
            if let Some(e) = expires { v.insert("expires_in".into(), json!(e)); }
            if let Ok(t) = parse_token_response(&Value::Object(v), Some(&Secret::new("r"))) {
                proptest::prop_assert!(t.expires > 0);
            }
        }
    }

    #[test]
    fn echoed_secrets_never_reach_an_error() {
        let token = Secret::new("fake-token-SENTINEL-abcdefghijklmnop");
        let v = json!({"error": "invalid_request",
                       "error_description": format!("malformed refresh_token '{}'", token.expose())});
        let (c, d) = error_fields(&v);
        let summary = scrub_with_forms(&format!("{}: {}", c.unwrap(), d.unwrap()), &[&token]);
        assert!(!summary.contains("SENTINEL"), "{summary}");
        assert!(summary.starts_with("invalid_request: malformed refresh_token"));
    }

    /// Found by a review: the token echoed with a zero-width space or a soft hyphen between its
    /// characters (on screen, the token itself), or in base64 or hex, came through to the
    /// error, `lastError` and the tool's answer.
    #[test]
    fn an_echo_hidden_by_invisible_characters_or_reencoded_is_scrubbed() {
        use base64::Engine as _;
        // Built at run time: no token-shaped literal in the source.
        let token = Secret::new(format!(
            "{}-SENTINEL-abcdefghijklmnop",
            ["sk", "ant", "ort01"].join("-")
        ));
        let spaced = |sep: &str| {
            token
                .expose()
                .chars()
                .map(String::from)
                .collect::<Vec<_>>()
                .join(sep)
        };
        let hex: String = token.expose().bytes().map(|b| format!("{b:02x}")).collect();
        for echoed in [
            spaced("\u{200b}"),
            spaced("\u{00ad}"),
            spaced("\u{2060}"),
            base64::engine::general_purpose::STANDARD.encode(token.expose()),
            hex,
        ] {
            let v = json!({"error": "invalid_grant", "error_description": format!("bad token {echoed}")});
            let (c, d) = error_fields(&v);
            let summary = scrub_with_forms(&format!("{}: {}", c.unwrap(), d.unwrap()), &[&token]);
            // As it shows: what a screen shows of it, and the encodings as they are.
            let shown: String = summary
                .chars()
                .filter(|c| !crate::secret::is_invisible(*c))
                .collect();
            assert!(!shown.contains("SENTINEL"), "{summary}");
            assert!(!summary.contains(&echoed[..24]), "{summary}");
            assert!(summary.contains("[redacted]"), "{summary}");
        }
    }

    #[test]
    fn error_bodies_are_reduced_to_their_codes() {
        let v = json!({"error": "invalid_grant", "error_description": "Refresh token not found or invalid",
                       "echo": "fake-token-SENTINEL"});
        let (c, d) = error_fields(&v);
        assert_eq!(c.as_deref(), Some("invalid_grant"));
        assert!(!d.unwrap().contains("SENTINEL"));
    }
}
