//! What `oauth-pool doctor` asks Rust instead of guessing in JavaScript: where the store's files
//! are, whether the endpoints pass the pool's rule, and which proxy a request would use.

use napi_derive::napi;
use serde_json::{json, Value};

use napi::bindgen_prelude::PromiseRaw;
use napi::Env;

use super::{js_error, promise, store_for, JsResult};
use crate::store::{self, Store};
use crate::{config, http};

/// The logins of the pool at `path` that are also in another pool file this user's refresh
/// journal has seen on this machine, or twice in this pool (`store::elsewhere`): `[{ email,
/// store, there }]`, `store` null for the pool itself. Names and paths only, never a token.
#[napi(
    js_name = "loginsElsewhere",
    ts_return_type = "Promise<any>",
    catch_unwind
)]
pub fn logins_elsewhere(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let pool_store = store_for(path.as_deref()).map_err(js_error)?;
        let pool = pool_store.load().await.map_err(js_error)?;
        let found = store::blocking(move || {
            let here = pool_store.journal_id();
            Ok(store::elsewhere::for_user(&pool, &here))
        })
        .await
        .map_err(js_error)?;
        Ok(Value::Array(
            found
                .into_iter()
                .map(|s| json!({ "email": s.email, "store": s.store, "there": s.there }))
                .collect(),
        ))
    })
}

/// The pool's files as the store names them: the pool, its write lock, the previous
/// generation, the temp files writers create, and the per-account refresh locks.
#[napi(js_name = "poolFiles", catch_unwind)]
pub fn pool_files(path: Option<String>) -> JsResult<Value> {
    let store = store_for(path.as_deref()).map_err(js_error)?;
    Ok(match &store {
        Store::File(f) => {
            let (temp_prefix, temp_suffix) = f.temp_pattern();
            let directory = f
                .path()
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| ".".into());
            json!({
                "kind": "file",
                "path": f.path().display().to_string(),
                "directory": directory,
                "lock": f.lock_path().display().to_string(),
                "backup": f.backup_path().display().to_string(),
                "tempPrefix": temp_prefix,
                "tempSuffix": temp_suffix,
                "refreshLockSuffix": ".refresh.lock",
                "source": config::pool_path_source(path.as_deref()),
                // Set when the directory's file system may not lock across machines.
                "weakLocks": f.path().parent().and_then(store::netfs::weak_locks_at).map(|kind| json!({
                    "filesystem": kind,
                    "advice": f.path().parent().map(|d| store::netfs::advice(d, kind)),
                })),
            })
        }
        Store::Postgres(p) => json!({
            "kind": "postgres",
            "location": p.shown(),
            "source": if path.as_deref().is_some_and(|p| !p.is_empty()) { "argument" } else { "OAUTH_POOL_STORE" },
        }),
    })
}

/// The files of refreshed tokens processes could not write into the pool file, kept beside it
/// (`store::rescue`): `[{ file, pid, running, writtenAt, accounts: [{ email, state }] }]`, the
/// oldest first; `state` as `store::rescue::kept_states` says. Names only, never a token.
#[napi(js_name = "keptTokens", ts_return_type = "Promise<any>", catch_unwind)]
pub fn kept_tokens(env: &Env, path: Option<String>) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let pool_store = store_for(path.as_deref()).map_err(js_error)?;
        let Some(pool_path) = pool_store.path().map(std::path::Path::to_path_buf) else {
            return Ok(Value::Array(Vec::new()));
        };
        let pool = pool_store.load().await.ok();
        store::blocking(move || {
            let files = store::rescue::found(&pool_path);
            let states = store::rescue::kept_states(pool.as_ref(), &files);
            Ok(Value::Array(
                files
                    .iter()
                    .zip(states)
                    .map(|((file, _), accounts)| {
                        let writer = store::rescue::writer(file);
                        let written_at = std::fs::symlink_metadata(file)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                            .map(|d| d.as_millis() as i64);
                        json!({
                            "file": file.display().to_string(),
                            "pid": writer.map(|w| w.0),
                            "running": writer.is_some_and(|w| w.1),
                            "writtenAt": written_at,
                            "accounts": accounts
                                .into_iter()
                                .map(|(email, state)| json!({ "email": email, "state": state }))
                                .collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ))
        })
        .await
        .map_err(js_error)
    })
}

/// Each endpoint the pool talks to, and whether the pool's rule (https, or http to loopback)
/// accepts it, with the proxy a request to it would go through (password hidden).
/// A URL as a report shows it: a password as `***`, no query or fragment (where keys travel),
/// nothing shaped like a token.
fn shown_url(raw: &str) -> String {
    match url::Url::parse(raw.trim()) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            crate::secret::scrub_message(u.as_str())
        }
        Err(_) => crate::secret::scrub_message(raw),
    }
}

#[napi(js_name = "checkSettings", catch_unwind)]
pub fn check_settings() -> Value {
    Value::Array(crate::settings::check())
}

#[napi(js_name = "checkEndpoints", catch_unwind)]
pub fn check_endpoints() -> Value {
    let rows: Vec<Value> = [
        (
            config::var::TOKEN_URL,
            config::token_url as fn() -> crate::error::Result<url::Url>,
        ),
        (config::var::API_URL, config::api_url),
    ]
    .into_iter()
    .map(|(variable, read)| {
        let var = variable.name();
        let set = config::env(variable).filter(|v| !v.trim().is_empty());
        let shown_value = set.as_deref().map(shown_url);
        // The rule requests go by, not another that could call ok what they refuse.
        // An SSL_CERT_FILE no client can be set up with fails every request as surely as a
        // refused endpoint: said here too, not only by `--online`.
        let parsed = read()
            .and_then(|url| http::check_proxy(&url).map(|()| url))
            .and_then(|url| http::check_system_cert_file().map(|()| url));
        match parsed {
            Ok(url) => {
                let proxy = http::proxy_for(&url, &config::env).map(|p| shown_url(p.as_str()));
                json!({
                    "variable": var,
                    "value": shown_value,
                    "effective": shown_url(url.as_str()),
                    "ok": true,
                    "loopback": config::is_loopback(&url),
                    "proxy": proxy,
                })
            }
            Err(e) => json!({
                "variable": var,
                "value": shown_value,
                "effective": null,
                "ok": false,
                "code": e.code(),
                "message": crate::secret::scrub_message(&e.to_string()),
            }),
        }
    })
    .collect();
    Value::Array(rows)
}

/// How long `oauth-pool doctor --online` waits for each endpoint's answer (both are asked at
/// once): a live server answers in well under a second, even far away.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Whether each endpoint answers, through the client, proxy and trusted roots its requests use:
/// one request that carries no credential (a HEAD of the API's origin, a GET of the token
/// endpoint); any HTTP answer counts. `[{ variable, url, proxy, reached, status?, ms?, code?,
/// message? }]`. Nothing of the pool is read, so no token can go anywhere.
#[napi(
    js_name = "probeEndpoints",
    ts_return_type = "Promise<any>",
    catch_unwind
)]
pub fn probe_endpoints(env: &Env) -> JsResult<PromiseRaw<'_, Value>> {
    promise(env, async move {
        let token = probe(
            config::var::TOKEN_URL,
            config::token_url(),
            http::token_client,
            reqwest::Method::GET,
        );
        let api = probe(
            config::var::API_URL,
            config::api_url(),
            http::api_client,
            reqwest::Method::HEAD,
        );
        let (token, api) = tokio::join!(token, api);
        Ok(Value::Array(vec![token, api]))
    })
}

async fn probe(
    variable: config::Var,
    url: crate::error::Result<url::Url>,
    client: fn() -> crate::error::Result<reqwest::Client>,
    method: reqwest::Method,
) -> Value {
    let var = variable.name();
    let refused = |e: crate::error::Error| {
        json!({
            "variable": var,
            "reached": false,
            "code": e.code(),
            "message": crate::secret::scrub_message(&e.to_string()),
        })
    };
    let url = match url.and_then(|u| http::check_proxy(&u).map(|()| u)) {
        Ok(u) => u,
        Err(e) => return refused(e),
    };
    let shown = shown_url(url.as_str());
    let client = match client() {
        Ok(c) => c,
        // No client could be set up (an SSL_CERT_FILE the TLS library would read for ever):
        // unlike a refused endpoint, nothing above reports it.
        Err(e) => {
            return json!({
                "variable": var, "url": shown, "reached": false, "setup": true, "code": e.code(),
                "message": crate::secret::scrub_message(&e.to_string()),
            })
        }
    };
    let proxy = http::proxy_for(&url, &config::env).map(|p| shown_url(p.as_str()));
    let started = std::time::Instant::now();
    let sent = http::timeout_while_running(PROBE_LIMIT, client.request(method, url).send()).await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match sent {
        Some(Ok(res)) => json!({
            "variable": var, "url": shown, "proxy": proxy, "reached": true,
            "status": res.status().as_u16(), "ms": ms,
        }),
        Some(Err(e)) => json!({
            "variable": var, "url": shown, "proxy": proxy, "reached": false, "code": "NETWORK",
            "message": crate::secret::scrub_message(&http::describe(&e)),
        }),
        None => json!({
            "variable": var, "url": shown, "proxy": proxy, "reached": false, "code": "NETWORK",
            "message": format!("no answer within {} s", PROBE_LIMIT.as_secs()),
        }),
    }
}
