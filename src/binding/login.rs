//! OAuth from JavaScript: authorize, exchange, refresh, and adding accounts from a login.

use napi_derive::napi;
use serde_json::{json, Value};

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::{js_error, js_error_after_code, promise, store_for, JsResult};
use crate::error::Error;
use crate::secret::Secret;
use crate::{config, logging, manage, oauth};

#[napi(object)]
pub struct AuthorizeOptions {
    pub mode: Option<String>,
}

#[napi(object)]
pub struct AuthorizeResult {
    pub url: String,
    pub verifier: String,
    pub state: String,
}

#[napi(catch_unwind)]
pub fn authorize(options: Option<AuthorizeOptions>) -> JsResult<AuthorizeResult> {
    logging::init();
    let mode =
        oauth::Mode::parse(options.as_ref().and_then(|o| o.mode.as_deref())).map_err(js_error)?;
    let a = oauth::authorize(mode).map_err(js_error)?;
    Ok(AuthorizeResult {
        url: a.url.clone(),
        verifier: a.verifier.expose().to_string(),
        state: a.state.expose().to_string(),
    })
}

#[napi(object)]
pub struct Pkce {
    pub verifier: String,
    pub state: String,
    /// The login's mode (none: as `authorize` started the login of this state in this process,
    /// else a Pro/Max login).
    pub mode: Option<String>,
}

#[napi(ts_return_type = "Promise<any>", catch_unwind)]
pub fn exchange(env: &Env, input: String, pkce: Pkce) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        logging::init();
        let t = oauth::exchange(&input, &pkce.verifier, &pkce.state)
            .await
            .map_err(js_error)?;
        Ok(json!({
            "email": t.email,
            "access": t.access.expose(),
            "refresh": t.refresh.expose(),
            "expires": t.expires,
        }))
    })
}

/// The calls of the `refresh` export in this process, each its own name in the journal.
static EXPORT_CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[napi(ts_return_type = "Promise<any>", catch_unwind)]
pub fn refresh(env: &Env, refresh_token: String) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        logging::init();
        let token = Secret::new(refresh_token);
        if !token.is_token_shaped() {
            return Err(js_error(Error::InvalidArgument(
                "that is not a refresh token (visible ASCII, at most 4096 characters)".into(),
            )));
        }
        // A token this machine presented (by a pool or by this export: spent, its successor
        // saved, or out now) is not presented again: at a strict endpoint a reuse revokes the
        // whole login, the live tokens with it. This call's presentation is recorded as well,
        // under a name of its own: unrecorded, a second call (or a pool holding the token)
        // presented it after it, and the pool's login was lost.
        let tag = crate::store::journal::tag(&token);
        let me = format!(
            "{} (process {}, call {})",
            crate::store::journal::BY_EXPORT,
            std::process::id(),
            EXPORT_CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let journal = crate::store::journal::Journal::for_user();
        let claim = match journal.clone() {
            Some(j) => {
                let (tag, me) = (tag.clone(), me.clone());
                crate::store::blocking(move || Ok(j.claim(&tag, &me, "", crate::account::now_ms())))
                    .await
                    .ok()
            }
            None => None,
        };
        match claim {
            Some(crate::store::journal::Claim::Spent(spent)) => {
                let by = if spent.store.starts_with(crate::store::journal::BY_EXPORT) {
                    spent.store.clone()
                } else {
                    format!("the pool at {} for {}", spent.store, spent.email)
                };
                return Err(js_error(Error::LoginElsewhere(format!(
                    "that refresh token was presented by {by} on {} (a refresh token works once): the tokens that replace it are there; nothing was sent",
                    crate::account::iso_time_seconds(spent.at)
                ))));
            }
            Some(crate::store::journal::Claim::InFlight { store }) => {
                return Err(js_error(Error::LoginElsewhere(format!(
                    "that refresh token is being presented right now by {store} (a refresh token works once); nothing was sent"
                ))));
            }
            Some(crate::store::journal::Claim::Go) | None => {}
        }
        let (answer, spent) = oauth::refresh_keeping_successor(&token).await;
        // Recorded spent only when the endpoint named a successor (its refusal included): a
        // token handed back as it was, or left out of the answer, still works, and recorded it
        // was refused to this caller and to the pool holding the same login for 30 days. Any
        // other failure leaves it to whoever asks next, as before this call recorded anything
        // (an answer lost on the way is the pool's own refresh to retry).
        if let Some(j) = journal {
            let _ = crate::store::blocking(move || {
                let now = crate::account::now_ms();
                if spent {
                    j.saved(&tag, &me, "", now);
                } else {
                    j.released(&tag, &me, "");
                }
                Ok(())
            })
            .await;
        }
        let t = answer.map_err(js_error)?;
        Ok(json!({
            "access": t.access.expose(),
            "refresh": t.refresh.expose(),
            "expires": t.expires,
        }))
    })
}

#[napi(js_name = "addAccount", ts_return_type = "Promise<any>", catch_unwind)]
pub fn add_account(
    env: &Env,
    input: String,
    pkce: Pkce,
    path: Option<String>,
) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let store = store_for(path.as_deref()).map_err(js_error)?;
        // A pool that cannot take the account (corrupt, insecure, a store out of reach) is
        // found before the code is spent: after it, the new login's tokens had nowhere to go
        // and the user's login was for nothing.
        store.load().await.map_err(js_error)?;
        // Likewise a disk that cannot take the login (full, a quota, read-only): the code is
        // single-use, and the person would log in again anyway.
        store
            .try_write_room(crate::store::Trial::Login)
            .await
            .map_err(js_error)?;
        // A Ctrl-C or `kill` once the code is spent waits for the new login to be written, as
        // for a refresh's tokens (the person had to log in again).
        let unwritten = crate::engine::credentials::Unwritten::begin();
        let mode = match pkce.mode.as_deref() {
            Some(mode) => oauth::Mode::parse(Some(mode)).map_err(js_error)?,
            None => oauth::mode_of(&pkce.state),
        };
        // A Console login's key is made at the API's origin: one the pool refuses (plain http off
        // loopback, a typo) is found before the code is spent, as the token endpoint is.
        if mode == oauth::Mode::Console {
            config::api_url().map_err(js_error)?;
        }
        let tokens = oauth::exchange(&input, &pkce.verifier, &pkce.state)
            .await
            .map_err(js_error)?;
        if mode == oauth::Mode::Console {
            // A Console login is for its API key: the member is the key, named by the login's
            // email, as a key pasted with `add-key` is. The name is settled before the key is
            // made: a key made and then refused (the email is a Pro/Max login of the pool's,
            // the usual case for one person) was never shown, and each try left one more key in
            // the Console for the person to find and revoke.
            // One key per login: the same login pasted twice at once shares one token call
            // (`exchange`), and each caller then made a key of its own, one of them left in the
            // Console for the person to find and revoke. The second waits here and gets the
            // first's member.
            let digest = oauth::state_digest(&pkce.state);
            let mut made = CONSOLE_KEYS_MADE.lock().await;
            if made.iter().any(|(d, _)| *d == digest) {
                let email = made
                    .iter()
                    .find(|(d, _)| *d == digest)
                    .map(|(_, email)| email.clone());
                drop(unwritten);
                return Ok(json!({ "email": email, "added": false, "type": "api" }));
            }
            let name = console_key_name(&store, tokens.email.as_deref())
                .await
                .map_err(js_error_after_code)?;
            // An answer whose access token was unusable keeps its refresh token (`exchange`):
            // the key is made with the token that refresh gives. An empty bearer was refused,
            // and the login dropped, where a Pro/Max one is kept and refreshed.
            let refreshed;
            let access = if tokens.access.is_empty() {
                refreshed = oauth::refresh(&tokens.refresh)
                    .await
                    .map_err(js_error_after_code)?;
                &refreshed.access
            } else {
                &tokens.access
            };
            let key = oauth::create_api_key(access)
                .await
                .map_err(js_error_after_code)?;
            let (email, added) = manage::add_api_key(&store, &key, name.as_deref())
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "the Console made an API key, and the pool could not take it");
                    js_error_after_code(e)
                })?;
            if made.len() >= CONSOLE_KEYS_KEPT {
                made.pop_front();
            }
            made.push_back((digest, email.clone()));
            drop(made);
            drop(unwritten);
            return Ok(json!({ "email": email, "added": added, "type": "api" }));
        }
        let (email, added) = manage::add_oauth_kept(&store, tokens, unwritten)
            .await
            .map_err(js_error_after_code)?;
        Ok(json!({ "email": email, "added": added }))
    })
}

/// The Console logins whose key this process made (their state's digest, the member's name),
/// the latest few: a login's code is good for minutes, and only a paste racing its own first
/// paste can ask again.
static CONSOLE_KEYS_MADE: tokio::sync::Mutex<std::collections::VecDeque<([u8; 32], String)>> =
    tokio::sync::Mutex::const_new(std::collections::VecDeque::new());
const CONSOLE_KEYS_KEPT: usize = 16;

/// The name a Console login's key is added under: the login's email, or, when that names a
/// Pro/Max login of the pool (one person's two logins), `<email> (console)`.
async fn console_key_name(
    store: &crate::store::Store,
    email: Option<&str>,
) -> crate::error::Result<Option<String>> {
    let Some(email) = email else {
        return Ok(None);
    };
    let pool = store.load().await?;
    let login = |name: &str| {
        pool.find(name)
            .is_some_and(|a| !a.is_api_key() && a.refresh.is_some())
    };
    if !login(email) {
        return Ok(Some(email.to_string()));
    }
    let beside = format!("{email} (console)");
    // An email near the 254 characters a name may have: `<email> (console)` would be refused
    // once the key was made, leaving it in the Console unshown. The key's fingerprint names it.
    if !crate::account::acceptable_email(&beside) {
        return Ok(None);
    }
    if login(&beside) {
        return Err(Error::InvalidArgument(format!(
            "{email} and {beside} are both Pro/Max logins of the pool: no API key was made for this Console login; remove or rename one (oauth-pool remove) and log in again"
        )));
    }
    Ok(Some(beside))
}

/// A login this process holds because its write failed after the code was spent.
#[napi(object)]
pub struct KeptLogin {
    pub email: String,
    /// When its write first failed (epoch ms).
    pub since: f64,
    /// Why the last try to write it failed.
    pub error: String,
}

/// The logins this process holds unwritten, every store's: the CLI's `add` waits on them.
#[napi(js_name = "keptLogins", catch_unwind)]
pub fn kept_logins() -> Vec<KeptLogin> {
    manage::kept_logins(None)
        .into_iter()
        .map(|(email, since, error)| KeptLogin {
            email,
            since: since as f64,
            error,
        })
        .collect()
}

/// Gives up the logins this process holds unwritten (the CLI told to stop has said they are
/// lost): its exit then does not wait for them. Returns how many were given up.
#[napi(js_name = "abandonKeptLogins", catch_unwind)]
pub fn abandon_kept_logins() -> u32 {
    u32::try_from(manage::abandon_kept_logins()).unwrap_or(u32::MAX)
}

#[napi(object)]
pub struct ApiKeyOptions {
    pub email: Option<String>,
    pub path: Option<String>,
}

#[napi(js_name = "addApiKey", ts_return_type = "Promise<any>", catch_unwind)]
pub fn add_api_key(
    env: &Env,
    key: String,
    options: Option<ApiKeyOptions>,
) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let (email, path) = options.map(|o| (o.email, o.path)).unwrap_or((None, None));
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let key = Secret::new(key);
        let (email, added) = manage::add_api_key(&store, &key, email.as_deref())
            .await
            .map_err(js_error)?;
        Ok(json!({ "email": email, "added": added }))
    })
}

#[napi(object)]
pub struct ImportOptions {
    pub credentials_path: Option<String>,
    pub email: Option<String>,
    pub path: Option<String>,
}

#[napi(
    js_name = "importClaudeCode",
    ts_return_type = "Promise<any>",
    catch_unwind
)]
pub fn import_claude_code(
    env: &Env,
    options: Option<ImportOptions>,
) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let (creds, email, path) = options
            .map(|o| (o.credentials_path, o.email, o.path))
            .unwrap_or((None, None, None));
        let store = store_for(path.as_deref()).map_err(js_error)?;
        let creds = match creds {
            // As for a pool path (`config::pool_path`): the OS's refusal read as POOL_IO.
            Some(c) if c.contains('\0') => {
                return Err(js_error(Error::InvalidArgument(
                    "the Claude Code credentials path holds a NUL character, which no file name can: give the path without it".into(),
                )))
            }
            Some(c) => std::path::PathBuf::from(c),
            None => config::home_dir()
                .ok_or_else(|| js_error(Error::InvalidArgument("no home directory".into())))?
                .join(".claude")
                .join(".credentials.json"),
        };
        let name_given = email.is_some();
        let mut tokens =
            crate::store::blocking(move || manage::import_claude_code(&creds, email.as_deref()))
                .await
                .map_err(js_error)?;
        if tokens.email.is_none() {
            tokens.email = oauth::profile_email(&tokens.access).await.ok().flatten();
        }
        let (email, added) = manage::add_imported(&store, &tokens, name_given)
            .await
            .map_err(js_error)?;
        Ok(json!({ "email": email, "added": added }))
    })
}
