//! The napi edge: converts arguments and errors, and nothing else. The core modules below know
//! nothing of napi and are tested with `cargo test`.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod account;
pub mod body;
pub mod config;
pub mod error;
pub mod fetch;
pub mod http;
pub mod logging;
pub mod manage;
pub mod oauth;
pub mod ratelimit;
pub mod runtime;
pub mod secret;
pub mod select;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::account::{now_ms, Pool};
use crate::body::ResponseBody;
use crate::error::Error;
use crate::runtime::{blocking, PoolRuntime};
use crate::secret::Secret;
use crate::store::Store;

/// Bytes handed to JavaScript as a Buffer that JavaScript owns (`napi_create_buffer_copy`).
/// An external buffer over Rust memory is invisible to the garbage collector's accounting (so
/// streaming grows RSS), and under Bun a view of it can outlive the memory.
pub struct JsBytes(Vec<u8>);

impl napi::bindgen_prelude::TypeName for JsBytes {
    fn type_name() -> &'static str {
        "Buffer"
    }

    fn value_type() -> napi::ValueType {
        napi::ValueType::Object
    }
}

impl napi::bindgen_prelude::ToNapiValue for JsBytes {
    unsafe fn to_napi_value(
        env: napi::sys::napi_env,
        val: Self,
    ) -> napi::Result<napi::sys::napi_value> {
        let mut data = std::ptr::null_mut();
        let mut result = std::ptr::null_mut();
        // SAFETY: `env` is the live environment napi-rs hands us; the source slice is valid for
        // `len` bytes for the duration of the call, which copies it.
        let status = unsafe {
            napi::sys::napi_create_buffer_copy(
                env,
                val.0.len(),
                val.0.as_ptr().cast(),
                &mut data,
                &mut result,
            )
        };
        if status != napi::sys::Status::napi_ok {
            return Err(napi::Error::from_reason(format!(
                "could not create a Buffer (napi status {status})"
            )));
        }
        Ok(result)
    }
}

/// Errors cross as `[CODE] message` (async napi functions cannot carry a custom status);
/// index.mjs turns the prefix back into `err.code`.
fn js_error(e: Error) -> napi::Error {
    let prefix = match &e {
        Error::OAuthHttp { status, .. } => format!("[{} {status}]", e.code()),
        _ => format!("[{}]", e.code()),
    };
    napi::Error::from_reason(format!("{prefix} {e}"))
}

type JsResult<T> = napi::Result<T>;

fn store_for(path: Option<String>) -> Result<Store, Error> {
    logging::init();
    Ok(Store::new(config::pool_path(path.as_deref())?))
}

/// Hands over the JavaScript runtime's view of the OAUTH_POOL_* (and HOME) variables.
#[napi(js_name = "syncEnv")]
pub fn sync_env(vars: std::collections::HashMap<String, String>) {
    config::set_js_env(vars);
}

#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

#[napi(js_name = "loadPool")]
pub async fn load_pool(path: Option<String>) -> JsResult<Value> {
    let store = store_for(path).map_err(js_error)?;
    let pool = blocking(move || store.load()).await.map_err(js_error)?;
    Ok(pool.to_value())
}

#[napi(js_name = "savePool")]
pub async fn save_pool(pool: Value, path: Option<String>) -> JsResult<()> {
    let store = store_for(path).map_err(js_error)?;
    let pool = Pool::from_caller(pool).map_err(js_error)?;
    blocking(move || store.save(&pool)).await.map_err(js_error)
}

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

#[napi]
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
}

#[napi]
pub async fn exchange(input: String, pkce: Pkce) -> JsResult<Value> {
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
}

#[napi]
pub async fn refresh(refresh_token: String) -> JsResult<Value> {
    logging::init();
    let t = oauth::refresh(&Secret::new(refresh_token))
        .await
        .map_err(js_error)?;
    Ok(json!({
        "access": t.access.expose(),
        "refresh": t.refresh.expose(),
        "expires": t.expires,
    }))
}

// ---- account management ---------------------------------------------------------------------

#[napi(js_name = "listAccounts")]
pub async fn list_accounts(path: Option<String>) -> JsResult<Value> {
    let store = store_for(path).map_err(js_error)?;
    let pool = blocking(move || store.load()).await.map_err(js_error)?;
    Ok(Value::Array(manage::list(&pool, now_ms())))
}

#[napi(js_name = "poolStatus")]
pub async fn pool_status(path: Option<String>) -> JsResult<Value> {
    let store = store_for(path).map_err(js_error)?;
    let s = store.clone();
    let pool = blocking(move || s.load()).await.map_err(js_error)?;
    Ok(manage::status(&pool, store.path(), now_ms()))
}

#[napi(js_name = "addAccount")]
pub async fn add_account(input: String, pkce: Pkce, path: Option<String>) -> JsResult<Value> {
    let store = store_for(path).map_err(js_error)?;
    let tokens = oauth::exchange(&input, &pkce.verifier, &pkce.state)
        .await
        .map_err(js_error)?;
    let (email, added) = blocking(move || manage::add_oauth(&store, &tokens))
        .await
        .map_err(js_error)?;
    Ok(json!({ "email": email, "added": added }))
}

#[napi(object)]
pub struct ApiKeyOptions {
    pub email: Option<String>,
    pub path: Option<String>,
}

#[napi(js_name = "addApiKey")]
pub async fn add_api_key(key: String, options: Option<ApiKeyOptions>) -> JsResult<Value> {
    let (email, path) = options.map(|o| (o.email, o.path)).unwrap_or((None, None));
    let store = store_for(path).map_err(js_error)?;
    let key = Secret::new(key);
    let (email, added) =
        blocking(move || manage::add_api_key(&store, key.expose(), email.as_deref()))
            .await
            .map_err(js_error)?;
    Ok(json!({ "email": email, "added": added }))
}

#[napi(js_name = "removeAccount")]
pub async fn remove_account(email: String, path: Option<String>) -> JsResult<u32> {
    let store = store_for(path).map_err(js_error)?;
    let n = blocking(move || manage::remove(&store, &email))
        .await
        .map_err(js_error)?;
    Ok(n as u32)
}

#[napi(js_name = "setEnabled")]
pub async fn set_enabled(email: String, enabled: bool, path: Option<String>) -> JsResult<()> {
    let store = store_for(path).map_err(js_error)?;
    let rt = PoolRuntime::for_path(store.path());
    blocking(move || manage::set_enabled(&store, &email, enabled))
        .await
        .map_err(js_error)?;
    rt.reset_memory();
    Ok(())
}

#[napi(js_name = "setPriority")]
pub async fn set_priority(email: String, priority: i64, path: Option<String>) -> JsResult<()> {
    let store = store_for(path).map_err(js_error)?;
    blocking(move || manage::set_priority(&store, &email, priority))
        .await
        .map_err(js_error)
}

#[napi(js_name = "resetCooldowns")]
pub async fn reset_cooldowns(path: Option<String>) -> JsResult<u32> {
    let store = store_for(path).map_err(js_error)?;
    let rt = PoolRuntime::for_path(store.path());
    let n = blocking(move || manage::reset_cooldowns(&store))
        .await
        .map_err(js_error)?;
    rt.reset_memory();
    Ok(n as u32)
}

#[napi(object)]
pub struct ImportOptions {
    pub credentials_path: Option<String>,
    pub email: Option<String>,
    pub path: Option<String>,
}

#[napi(js_name = "importClaudeCode")]
pub async fn import_claude_code(options: Option<ImportOptions>) -> JsResult<Value> {
    let (creds, email, path) = options
        .map(|o| (o.credentials_path, o.email, o.path))
        .unwrap_or((None, None, None));
    let store = store_for(path).map_err(js_error)?;
    let creds = match creds {
        Some(c) => std::path::PathBuf::from(c),
        None => config::home_dir()
            .ok_or_else(|| js_error(Error::InvalidArgument("no home directory".into())))?
            .join(".claude")
            .join(".credentials.json"),
    };
    let mut tokens = blocking(move || manage::import_claude_code(&creds, email.as_deref()))
        .await
        .map_err(js_error)?;
    if tokens.email.is_none() {
        tokens.email = oauth::profile_email(&tokens.access).await.ok().flatten();
    }
    let (email, added) = blocking(move || manage::add_oauth(&store, &tokens))
        .await
        .map_err(js_error)?;
    Ok(json!({ "email": email, "added": added }))
}

/// Writes this process's pending bookkeeping (last use, quota) now instead of within a second.
#[napi(js_name = "flushPool")]
pub async fn flush_pool(path: Option<String>) -> JsResult<()> {
    let store = store_for(path).map_err(js_error)?;
    PoolRuntime::for_path(store.path()).flush().await;
    Ok(())
}

// ---- the rotating fetch -----------------------------------------------------------------------

#[napi(object)]
pub struct FetchRequest {
    pub url: String,
    pub method: String,
    /// `[name, value]` pairs.
    pub headers: Vec<Vec<String>>,
    pub body: Option<Buffer>,
    pub path: Option<String>,
}

/// One request in flight: `send()` it, `abort()` it from an AbortSignal at any time.
#[napi]
pub struct FetchController {
    cancel: CancellationToken,
}

impl Default for FetchController {
    fn default() -> Self {
        Self::new()
    }
}

#[napi]
impl FetchController {
    #[napi(constructor)]
    pub fn new() -> Self {
        FetchController {
            cancel: CancellationToken::new(),
        }
    }

    #[napi]
    pub fn abort(&self) {
        self.cancel.cancel();
    }

    #[napi]
    pub async fn send(&self, request: FetchRequest) -> JsResult<NativeResponse> {
        let store = store_for(request.path.clone()).map_err(js_error)?;
        let rt = PoolRuntime::for_path(store.path());
        let headers = request
            .headers
            .into_iter()
            .filter_map(|mut pair| {
                if pair.len() == 2 {
                    let v = pair.pop()?;
                    let k = pair.pop()?;
                    Some((k, v))
                } else {
                    None
                }
            })
            .collect();
        let req = fetch::OutgoingRequest {
            url: request.url,
            method: request.method,
            headers,
            body: request.body.map(|b| Bytes::copy_from_slice(&b)),
        };
        let (result, events) = fetch::pool_fetch(&rt, req, &self.cancel).await;
        let answer = match result {
            Ok(a) => a,
            // Events that explain a failure (an account just went to auth-error, say) travel
            // with it: JavaScript reports them, then rejects with the error.
            Err(e) if !events.is_empty() => {
                return Ok(NativeResponse {
                    status: 0,
                    status_text: String::new(),
                    headers: Vec::new(),
                    account: None,
                    events: serde_json::to_string(&events).unwrap_or_else(|_| "[]".into()),
                    failure: Some(js_error(e).reason),
                    body: Arc::new(tokio::sync::Mutex::new(ResponseBody::Done)),
                    cancel: self.cancel.clone(),
                });
            }
            Err(e) => return Err(js_error(e)),
        };
        let events = serde_json::to_string(&answer.events).unwrap_or_else(|_| "[]".into());
        let body = ResponseBody::new(answer.body, &self.cancel)
            .await
            .map_err(js_error)?;
        Ok(NativeResponse {
            status: answer.status as u32,
            status_text: answer.status_text,
            headers: answer
                .headers
                .into_iter()
                .map(|(k, v)| vec![k, v])
                .collect(),
            account: answer.account,
            events,
            failure: None,
            body: Arc::new(tokio::sync::Mutex::new(body)),
            cancel: self.cancel.clone(),
        })
    }
}

#[napi]
pub struct NativeResponse {
    status: u32,
    status_text: String,
    headers: Vec<Vec<String>>,
    account: Option<String>,
    events: String,
    failure: Option<String>,
    body: Arc<tokio::sync::Mutex<ResponseBody>>,
    cancel: CancellationToken,
}

#[napi]
impl NativeResponse {
    #[napi(getter)]
    pub fn status(&self) -> u32 {
        self.status
    }

    #[napi(getter, js_name = "statusText")]
    pub fn status_text(&self) -> String {
        self.status_text.clone()
    }

    #[napi(getter)]
    pub fn headers(&self) -> Vec<Vec<String>> {
        self.headers.clone()
    }

    #[napi(getter)]
    pub fn account(&self) -> Option<String> {
        self.account.clone()
    }

    #[napi(getter)]
    pub fn events(&self) -> String {
        self.events.clone()
    }

    /// Set (as "[CODE] message") when the request failed after producing events.
    #[napi(getter)]
    pub fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    /// The next bytes of the body, or null at its end. Rejects with ABORT_ERR once aborted.
    #[napi]
    pub async fn next(&self) -> JsResult<Option<JsBytes>> {
        let mut body = self.body.lock().await;
        let batch = body.next_batch(&self.cancel).await.map_err(js_error)?;
        Ok(batch.map(JsBytes))
    }

    /// The whole body when it is already here (small answers of known size), else null.
    #[napi(js_name = "takeBody")]
    pub fn take_body(&self) -> Option<JsBytes> {
        let mut body = self.body.try_lock().ok()?;
        body.take_full().map(|b| JsBytes(b.to_vec()))
    }

    /// Stops reading: the upstream connection is closed, not returned to the pool.
    #[napi]
    pub async fn cancel(&self) -> JsResult<()> {
        self.cancel.cancel();
        let mut state = self.body.lock().await;
        *state = ResponseBody::Done;
        Ok(())
    }
}
