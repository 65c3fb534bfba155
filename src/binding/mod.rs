//! The napi edge: converts arguments and errors, and nothing else.

pub mod doctor;
pub mod exchange;
pub mod fetch;
pub mod gateway;
pub mod login;
pub mod notice;
pub mod pool;
pub mod runtime;
pub mod store;

use napi_derive::napi;

/// Runs when the addon is loaded, before any JavaScript calls it: the async runtime is set up
/// here (see src/runtime.rs), since napi picks its runtime before the first call.
#[napi_derive::module_init]
fn init() {
    runtime::install();
}

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::engine::Engine;
use crate::error::Error;
use crate::store::Store;
use crate::{config, logging};

/// Bytes handed to JavaScript as one Buffer that JavaScript owns: the chunks are copied once,
/// straight into the Buffer's memory (`napi_create_buffer`). An external buffer over Rust memory
/// is invisible to the garbage collector's accounting (so streaming grows RSS), and under Bun a
/// view of it can outlive the memory.
pub struct JsBytes(pub Vec<bytes::Bytes>);

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
        let len: usize = val.0.iter().map(|part| part.len()).sum();
        let mut data = std::ptr::null_mut();
        let mut result = std::ptr::null_mut();
        // SAFETY: `env` is the live environment napi-rs hands us; on success `data` points at
        // `len` writable bytes of the new Buffer.
        let status = unsafe { napi::sys::napi_create_buffer(env, len, &mut data, &mut result) };
        if status != napi::sys::Status::napi_ok || (len > 0 && data.is_null()) {
            return Err(napi::Error::from_reason(format!(
                "could not create a Buffer (napi status {status})"
            )));
        }
        let mut at = 0;
        for part in &val.0 {
            // SAFETY: the parts add up to `len`, so every copy stays inside the Buffer, and
            // Rust's chunks cannot overlap memory JavaScript just allocated.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), data.cast::<u8>().add(at), part.len())
            };
            at += part.len();
        }
        Ok(result)
    }
}

/// Errors cross as `[CODE] message` (async napi functions cannot carry a custom status);
/// lib/errors.mjs turns the prefix back into `err.code`. A message can quote an account's name,
/// which is the pool file's to say and can hold a credential: token shapes are scrubbed.
pub fn js_error(e: Error) -> napi::Error {
    coded(e, "")
}

/// A login's failure after its pasted code was spent at the token endpoint (`codeSpent` in
/// JavaScript): pasting the same code again is refused, so nothing may offer it again, however
/// passing the failure itself (a 503 or a reset from the API key endpoint) looks.
pub fn js_error_after_code(e: Error) -> napi::Error {
    coded(e, " spent")
}

fn coded(e: Error, mark: &str) -> napi::Error {
    let prefix = match &e {
        Error::OAuthHttp { status, .. } => format!("[{} {status}{mark}]", e.code()),
        Error::OAuthRotatedUnusable { .. } => format!("[{} 200{mark}]", e.code()),
        Error::RefreshBackoff { .. } => format!("[{} 429{mark}]", e.code()),
        _ => format!("[{}{mark}]", e.code()),
    };
    napi::Error::from_reason(format!(
        "{prefix} {}",
        crate::secret::scrub_tokens(&e.to_string())
    ))
}

pub type JsResult<T> = napi::Result<T>;

/// The promise of `work`, run as a task on the addon's runtime. The calls that wait on I/O and
/// answer a shared type (a JSON value, nothing, a count) go through this one boxed future type,
/// so napi's task machinery (polling, settling, the panic guard) is compiled once per result type
/// instead of once per function: as `async fn`s each added about 11 KB to the `.node` (22 of
/// them, 256 KB).
///
/// A method's `work` must own what it uses and never borrow the object (`&self`): Node-API
/// frees every object of an environment when that environment goes (a worker terminated, or
/// exiting) whatever tasks still run, so a task holding `&self` read freed memory (napi-rs's
/// `async fn` methods do: the host crashed, or hung). Take clones before the `async move`.
pub fn promise<T>(
    env: &napi::Env,
    work: impl Future<Output = JsResult<T>> + Send + 'static,
) -> JsResult<napi::bindgen_prelude::PromiseRaw<'_, T>>
where
    T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
{
    let work: Pin<Box<dyn Future<Output = JsResult<T>> + Send>> = Box::pin(work);
    env.spawn_future(work)
}

pub fn store_for(path: Option<&str>) -> Result<Store, Error> {
    logging::init();
    Store::from_config(path)
}

/// The engine of the pool at `path` (or the configured one), kept while neither the path nor the
/// environment changes: a request then costs no path resolution and no engine lookup (the
/// registry's key is formatted from the store, and a fleet store's URL parsed).
pub fn engine_for(path: Option<&str>) -> Result<Arc<Engine>, Error> {
    type Last = Option<(u64, Option<String>, Arc<Engine>)>;
    static LAST: Mutex<Last> = Mutex::new(None);
    let generation = config::env_generation();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, _, engine)) = last
        .as_ref()
        .filter(|(g, p, _)| *g == generation && p.as_deref() == path)
    {
        return Ok(engine.clone());
    }
    let engine = Engine::for_store(store_for(path)?);
    *last = Some((generation, path.map(str::to_string), engine.clone()));
    Ok(engine)
}

/// `[name, value]` pairs from JavaScript; anything else is dropped.
pub fn header_pairs(pairs: Vec<Vec<String>>) -> Vec<(String, String)> {
    pairs
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
        .collect()
}

/// The variables the pool reads (`config::var`, the one list): `all`, what `syncEnv` is to be
/// handed; `proxies`, those of them that name a proxy.
#[napi(object)]
pub struct EnvNames {
    pub all: Vec<String>,
    pub proxies: Vec<String>,
}

#[napi(js_name = "envNames", catch_unwind)]
pub fn env_names() -> EnvNames {
    let names = |vars: &[config::Var]| vars.iter().map(|v| v.name().to_string()).collect();
    EnvNames {
        all: names(config::var::ALL),
        proxies: names(config::var::PROXIES),
    }
}

/// The `modelCooldowns` keys that name an endpoint with limits of its own rather than a model
/// family, each with what resting it means for a person (`limits::ENDPOINT_SCOPES`).
#[napi(object)]
pub struct RestScope {
    pub key: String,
    pub rests: String,
}

#[napi(js_name = "restScopes", catch_unwind)]
pub fn rest_scopes() -> Vec<RestScope> {
    crate::engine::limits::ENDPOINT_SCOPES
        .iter()
        .map(|(key, rests)| RestScope {
            key: (*key).to_string(),
            rests: (*rests).to_string(),
        })
        .collect()
}

/// The error codes that asking again cannot mend (`Error::asking_again_cannot_help`), for
/// OpenCode 2's local answer to say so as the gateway's does.
#[napi(js_name = "unretriableCodes", catch_unwind)]
pub fn unretriable_codes() -> Vec<&'static str> {
    crate::error::UNRETRIABLE_CODES.to_vec()
}

/// A wait worded as every message of the addon words it (`crate::wait`), for the texts
/// JavaScript writes (the CLI's `list`, `status` and `doctor`, the OpenCode tool): one wording
/// and one rounding everywhere. `until` and `now` are epoch ms.
#[napi(object)]
pub struct WaitWords {
    /// "5 h 0 min", rounded up.
    pub duration: String,
    /// "14:32 UTC", with the day when it is not `now`'s.
    pub clock: String,
    /// "in 5 h 0 min (at 14:32 UTC)".
    pub until: String,
    /// "14:32 UTC (in 5 h 0 min)".
    pub at: String,
}

#[napi(js_name = "waitWords", catch_unwind)]
pub fn wait_words(until: f64, now: f64) -> WaitWords {
    // `as` saturates and takes NaN to 0: a bad number words as some time, never a panic.
    let (until, now) = (until as i64, now as i64);
    WaitWords {
        duration: crate::wait::duration(until.saturating_sub(now)),
        clock: crate::wait::clock(until, now),
        until: crate::wait::until(until, now),
        at: crate::wait::at(until, now),
    }
}

/// A message quoting a caller's or a runtime's text, as the addon writes its own
/// (`secret::scrub_message`): no token shape, no URL query or fragment.
#[napi(js_name = "scrubMessage", catch_unwind)]
pub fn scrub_message(text: String) -> String {
    crate::secret::scrub_message(&text)
}

/// Text about to be shown that can quote a name of the pool file (the CLI's text, the plugins'
/// answers): `sk-ant-` runs scrubbed (`secret::scrub_tokens`), URLs kept whole (a login's link).
#[napi(js_name = "scrubTokens", catch_unwind)]
pub fn scrub_tokens(text: String) -> String {
    crate::secret::scrub_tokens(&text)
}

/// Hands over the JavaScript runtime's view of the variables the pool reads (`envNames().all`).
#[napi(js_name = "syncEnv", catch_unwind)]
pub fn sync_env(vars: std::collections::HashMap<String, String>) {
    config::set_js_env(vars);
}

/// A fingerprint of the C environment (`config::environ_stamp`), 52 bits so that a JavaScript
/// number holds it exactly; null where there is none.
#[napi(js_name = "environStamp", catch_unwind)]
pub fn environ_stamp() -> Option<f64> {
    config::environ_stamp().map(|h| (h >> 12) as f64)
}

#[napi(catch_unwind)]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `OAUTH_POOL_RESPONSE_TIMEOUT_MS` as the Rust client reads it, for a driver in JavaScript
/// that must time out the same way (no answer head, or a body silent that long).
#[napi(js_name = "responseTimeoutMs", catch_unwind)]
pub fn response_timeout_ms() -> u32 {
    u32::try_from(crate::http::response_timeout().as_millis()).unwrap_or(u32::MAX)
}

/// Blocks the calling thread until the refreshes whose new tokens are not written yet have
/// written them, at most `limit_ms` (at once when there are none): a host's exit hook, so that
/// an exit right after a refresh was answered does not take the account's login with it.
#[napi(js_name = "settleRefreshes", catch_unwind)]
pub fn settle_refreshes(limit_ms: u32) -> bool {
    crate::engine::credentials::settle_unwritten(std::time::Duration::from_millis(limit_ms.into()))
}

/// Whether the process ignores the signal `name` (`SIGTERM`, `SIGINT`, `SIGHUP`): a job started in
/// the background, or under `nohup`, inherits that, and Bun keeps it. The loader then leaves the
/// signal alone, since a listener of its own (see `settleOnSignals` in lib/native.mjs) would end
/// the process where it was meant to go on.
#[napi(js_name = "signalIgnored", catch_unwind)]
pub fn signal_ignored(name: String) -> bool {
    #[cfg(unix)]
    {
        let signal = match name.as_str() {
            "SIGTERM" => libc::SIGTERM,
            "SIGINT" => libc::SIGINT,
            "SIGHUP" => libc::SIGHUP,
            _ => return false,
        };
        // SAFETY: a null new action only reads the current one into `current`, which is a
        // plain C struct that all-zero bytes make valid.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        }
    }
    #[cfg(not(unix))]
    {
        let _ = name;
        false
    }
}
