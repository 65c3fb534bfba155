//! The engine for drivers written in JavaScript (OpenCode 2's http hooks, where the host sends
//! the request itself): `next()` says which account and which headers, `judge()` what the
//! answer means. The credential necessarily crosses into the host's request here.

use std::sync::Arc;

use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{header_pairs, js_error, store_for, JsResult};
use crate::config;
use crate::engine::usage::{self, UsageTap};
use crate::engine::{exchange, Engine, Exchange, RequestMeta, Step, UsageSink, Verdict};
use crate::error::Error;

#[napi(object)]
pub struct ExchangeOptions {
    pub path: Option<String>,
    /// Where the host will send the request: a credential is attached only on the pool's API
    /// origin (`OAUTH_POOL_API_URL`).
    pub url: Option<String>,
    /// The request's headers as the caller set them, `[name, value]` pairs.
    pub headers: Vec<Vec<String>>,
    /// The model asked for (scoped windows, model cooldowns, usage).
    pub model: Option<String>,
}

#[napi]
pub struct NativeExchange {
    /// The exchange, or why it could not be set up (reported by the first `next()`).
    inner: std::result::Result<Arc<tokio::sync::Mutex<Exchange>>, String>,
    base: HeaderMap,
    cancel: CancellationToken,
    /// The delivered answer's usage tap, fed by `observe` as the host's body passes.
    usage: std::sync::Mutex<Option<(UsageTap, UsageSink)>>,
}

/// A credential goes only to the configured API origin, whatever the host was told to call.
fn check_origin(url: Option<&str>) -> Result<(), Error> {
    let Some(raw) = url else { return Ok(()) };
    let target = url::Url::parse(raw)
        .map_err(|_| Error::InvalidArgument("the request URL is not absolute".into()))?;
    let api = config::api_url()?;
    if config::same_origin(&target, &api) {
        return Ok(());
    }
    Err(Error::InsecureEndpoint {
        url: target.origin().ascii_serialization(),
        reason: format!(
            "it is not the pool's API origin ({}); no pool credential is attached",
            api.origin().ascii_serialization()
        ),
    })
}

fn pairs_of(headers: &HeaderMap) -> Vec<Vec<String>> {
    headers
        .iter()
        .map(|(k, v)| {
            vec![
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ]
        })
        .collect()
}

impl Drop for NativeExchange {
    fn drop(&mut self) {
        self.finish_usage();
    }
}

#[napi]
impl NativeExchange {
    #[napi(constructor)]
    pub fn new(options: ExchangeOptions) -> Self {
        let headers = header_pairs(options.headers);
        let pairs = || headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let meta = RequestMeta::from_headers(pairs()).with_model(options.model);
        let base = exchange::forwardable(pairs());
        let inner = check_origin(options.url.as_deref())
            .and_then(|()| store_for(options.path.as_deref()))
            .map(|store| {
                Arc::new(tokio::sync::Mutex::new(
                    Engine::for_store(store).exchange(meta),
                ))
            })
            .map_err(|e| js_error(e).reason);
        NativeExchange {
            inner,
            base,
            cancel: CancellationToken::new(),
            usage: std::sync::Mutex::new(None),
        }
    }

    fn exchange(&self) -> JsResult<&Arc<tokio::sync::Mutex<Exchange>>> {
        self.inner
            .as_ref()
            .map_err(|reason| napi::Error::from_reason(reason.clone()))
    }

    /// `{ kind: "send", account, headers }` (the full header list to send) or
    /// `{ kind: "answer", status, statusText, headers, body }` (the pool answers itself).
    #[napi]
    pub async fn next(&self) -> JsResult<Value> {
        let mut ex = self.exchange()?.lock().await;
        match ex.next(&self.base, &self.cancel).await.map_err(js_error)? {
            Step::Send(a) => Ok(json!({
                "kind": "send",
                "account": a.email,
                "headers": pairs_of(&a.headers),
            })),
            Step::Answer(s) => Ok(json!({
                "kind": "answer",
                "status": s.status,
                "statusText": s.status_text,
                "headers": s.headers.iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>(),
                "body": String::from_utf8_lossy(&s.body),
            })),
        }
    }

    /// `"deliver"` or `"retry"`. `body`: the start of the body, for a 400 (`needsBody`).
    #[napi]
    pub async fn judge(
        &self,
        status: u32,
        headers: Vec<Vec<String>>,
        body: Option<Buffer>,
    ) -> JsResult<String> {
        let status = u16::try_from(status)
            .map_err(|_| js_error(Error::InvalidArgument(format!("bad status {status}"))))?;
        let map = exchange::forwardable_answer(header_pairs(headers).iter());
        let mut ex = self.exchange()?.lock().await;
        let verdict = ex
            .judge(status, &map, body.as_deref(), &self.cancel)
            .await
            .map_err(js_error)?;
        if verdict == Verdict::Deliver && (200..300).contains(&status) && usage::enabled() {
            let event_stream = map
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("text/event-stream")
                });
            if let (Some(sink), Ok(mut slot)) = (ex.usage_sink(), self.usage.lock()) {
                *slot = Some((UsageTap::new(event_stream), sink));
            }
        }
        Ok(match verdict {
            Verdict::Deliver => "deliver",
            Verdict::Retry => "retry",
        }
        .to_string())
    }

    /// Shows the tap a chunk of the delivered body as it passes to the host (nothing is kept).
    #[napi]
    pub fn observe(&self, chunk: Buffer) {
        if let Ok(mut slot) = self.usage.lock() {
            if let Some((tap, _)) = slot.as_mut() {
                tap.observe(&chunk);
            }
        }
    }

    /// The delivered body ended (or was abandoned): its usage is counted.
    #[napi(js_name = "finishUsage")]
    pub fn finish_usage(&self) {
        let taken = self.usage.lock().ok().and_then(|mut s| s.take());
        if let Some((mut tap, sink)) = taken {
            sink.record(tap.finish());
        }
    }

    /// Whether `judge` wants the start of the body for this status.
    #[napi(js_name = "needsBody")]
    pub fn needs_body(status: u32) -> bool {
        u16::try_from(status).is_ok_and(crate::engine::verdict::needs_body)
    }

    /// The events so far, as JSON (failovers, cooldowns, refusals).
    #[napi(js_name = "takeEvents")]
    pub fn take_events(&self) -> String {
        match self.inner.as_ref().map(|m| m.try_lock()) {
            Ok(Ok(mut ex)) => {
                serde_json::to_string(&ex.take_events()).unwrap_or_else(|_| "[]".into())
            }
            _ => "[]".into(),
        }
    }

    #[napi]
    pub fn abort(&self) {
        self.cancel.cancel();
    }
}
