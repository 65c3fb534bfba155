//! The process's HTTP clients, built once: one for the Messages API (connection pooling, HTTP/2
//! where offered) and one for the token endpoint (no redirects: a 307 must never carry a
//! refresh token to another place).

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};

pub const USER_AGENT: &str = concat!("opencode-oauth-pool/", env!("CARGO_PKG_VERSION"));

static API: OnceLock<reqwest::Client> = OnceLock::new();
static TOKEN: OnceLock<reqwest::Client> = OnceLock::new();

fn install_crypto() {
    // Another library in the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn build(
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client> {
    install_crypto();
    let builder = reqwest::Client::builder().user_agent(USER_AGENT).no_proxy();
    configure(builder).build().map_err(|e| Error::Network {
        what: "HTTP client setup",
        detail: e.to_string(),
    })
}

/// The client in `cell`, built on first use.
fn shared(
    cell: &'static OnceLock<reqwest::Client>,
    make: impl FnOnce() -> Result<reqwest::Client>,
) -> Result<reqwest::Client> {
    if let Some(c) = cell.get() {
        return Ok(c.clone());
    }
    let client = make()?;
    Ok(cell.get_or_init(|| client).clone())
}

pub fn api_client() -> Result<reqwest::Client> {
    shared(&API, || {
        build(|b| {
            b.connect_timeout(Duration::from_secs(30))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
        })
    })
}

pub fn token_client() -> Result<reqwest::Client> {
    shared(&TOKEN, || {
        build(|b| {
            b.redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
        })
    })
}

/// Whole-call timeout for token and profile calls: `OAUTH_POOL_TIMEOUT_MS`, default 30 s.
pub fn token_call_timeout() -> Duration {
    env_millis("OAUTH_POOL_TIMEOUT_MS", Duration::from_secs(30))
}

/// A positive whole number of milliseconds from `var`, else `default`.
fn env_millis(var: &str, default: Duration) -> Duration {
    crate::config::env(var)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(default)
}

/// A network failure, described without the URL's query (which could hold a code).
pub fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else if err.is_body() || err.is_decode() {
        "connection dropped while reading the answer"
    } else if err.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut source = std::error::Error::source(err);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind} ({detail})")
    }
}

/// How long to wait for response headers, and then for each next body chunk:
/// `OAUTH_POOL_RESPONSE_TIMEOUT_MS`, default 300 s (undici's headers and body timeouts). Streams
/// send pings far more often; a silent upstream is a dead one.
pub fn response_timeout() -> Duration {
    env_millis("OAUTH_POOL_RESPONSE_TIMEOUT_MS", Duration::from_secs(300))
}
