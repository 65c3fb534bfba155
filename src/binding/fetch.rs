//! The rotating fetch from JavaScript: one `FetchController` per request (abortable at any
//! time), answered by a `NativeResponse` whose body JavaScript pulls batch by batch.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use napi::bindgen_prelude::{Buffer, Either, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use tokio_util::sync::CancellationToken;

use super::notice::EventListener;
use super::{engine_for, header_pairs, js_error, promise, JsBytes, JsResult};
use crate::body::AnswerBody;
use crate::fetch;

#[napi(object)]
pub struct FetchRequest {
    pub url: String,
    pub method: String,
    /// `[name, value]` pairs.
    pub headers: Vec<Vec<String>>,
    /// Text crosses encoded once, straight into the request's bytes; a Buffer is copied (the
    /// caller may reuse it while the request, or its retry on the next account, is sent).
    pub body: Option<Either<String, Buffer>>,
    pub path: Option<String>,
    /// The longest one hold may last, for a host that gives up on an answer whose head has not
    /// come by then (OpenCode's plugin fetch); a longer wait is the pool's 429, `hostWaits`.
    pub hold_at_most_ms: Option<u32>,
}

/// One request in flight: `send()` it, `abort()` it from an AbortSignal at any time.
#[napi]
pub struct FetchController {
    cancel: CancellationToken,
    /// The answer's body once handed over. An event stream is read only when JavaScript asks,
    /// and a bulk body's read-ahead starts with the first read: an answer aborted before it was
    /// read kept its upstream connection open until it was read or collected. Held weakly, so
    /// an answer dropped unread still goes when JavaScript collects it.
    body: Arc<std::sync::Mutex<Weak<tokio::sync::Mutex<AnswerBody>>>>,
    /// The fetch's listener: what cannot wait for the answer (a hold beginning) goes there.
    notice: Option<crate::engine::Notice>,
}

#[napi]
impl FetchController {
    /// `listener`: the fetch's `EventListener`, when it has an `onEvent`.
    #[napi(constructor, catch_unwind)]
    pub fn new(listener: Option<&EventListener>) -> Self {
        FetchController {
            cancel: CancellationToken::new(),
            body: Arc::new(std::sync::Mutex::new(Weak::new())),
            notice: listener.map(EventListener::notice),
        }
    }

    /// Aborts the request, and closes its answer's body when one was handed over (a read in
    /// progress sees the abort and lets the body go; it is closed then).
    #[napi(catch_unwind)]
    pub fn abort(&self) {
        self.cancel.cancel();
        let Some(body) = self.body.lock().ok().and_then(|b| b.upgrade()) else {
            return;
        };
        if let Ok(mut b) = body.try_lock() {
            b.close();
            return;
        }
        let _ = crate::runtime::spawn(async move { body.lock().await.close() });
    }

    /// The task owns what it uses (the request's bytes, the abort token, the body's slot) and
    /// borrows nothing of `self`: when the environment that made this object goes (a worker
    /// terminated mid-request), Node-API frees the object whatever is still running, and a
    /// task that borrowed it read freed memory (the host crashed, or every later call hung).
    #[napi(ts_return_type = "Promise<NativeResponse>", catch_unwind)]
    pub fn send<'env>(
        &self,
        env: &'env Env,
        request: FetchRequest,
    ) -> JsResult<PromiseRaw<'env, NativeResponse>> {
        let cancel = self.cancel.clone();
        let slot = self.body.clone();
        let path = request.path;
        let req = fetch::OutgoingRequest {
            url: request.url,
            method: request.method,
            headers: header_pairs(request.headers),
            body: request.body.map(|b| match b {
                Either::A(text) => Bytes::from(text),
                Either::B(bytes) => Bytes::copy_from_slice(&bytes),
            }),
            notice: self.notice.clone(),
            hold_cap: request
                .hold_at_most_ms
                .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
            release: None,
        };
        promise(env, async move {
            let engine = engine_for(path.as_deref()).map_err(js_error)?;
            let (result, events) = fetch::pool_fetch(&engine, req, &cancel).await;
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
                        body: Arc::new(tokio::sync::Mutex::new(AnswerBody::done())),
                        cancel,
                    });
                }
                Err(e) => return Err(js_error(e)),
            };
            let events = serde_json::to_string(&answer.events).unwrap_or_else(|_| "[]".into());
            let body = AnswerBody::new(
                answer.body,
                answer.event_stream,
                answer.usage,
                answer.presented,
                &cancel,
            )
            .await
            .map_err(js_error)?;
            let body = Arc::new(tokio::sync::Mutex::new(body));
            if let Ok(mut slot) = slot.lock() {
                *slot = Arc::downgrade(&body);
            }
            // Aborted while the body was being set up: nothing closed it.
            if cancel.is_cancelled() {
                body.lock().await.close();
            }
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
                body,
                cancel,
            })
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
    body: Arc<tokio::sync::Mutex<AnswerBody>>,
    cancel: CancellationToken,
}

#[napi]
impl NativeResponse {
    #[napi(getter, catch_unwind)]
    pub fn status(&self) -> u32 {
        self.status
    }

    #[napi(getter, js_name = "statusText", catch_unwind)]
    pub fn status_text(&self) -> String {
        self.status_text.clone()
    }

    #[napi(getter, catch_unwind)]
    pub fn headers(&self) -> Vec<Vec<String>> {
        self.headers.clone()
    }

    #[napi(getter, catch_unwind)]
    pub fn account(&self) -> Option<String> {
        self.account.clone()
    }

    #[napi(getter, catch_unwind)]
    pub fn events(&self) -> String {
        self.events.clone()
    }

    /// Set (as "[CODE] message") when the request failed after producing events.
    #[napi(getter, catch_unwind)]
    pub fn failure(&self) -> Option<String> {
        self.failure.clone()
    }

    /// The next bytes of the body, or null at its end. Rejects with ABORT_ERR once aborted.
    /// The task borrows nothing of `self` (see `FetchController::send`).
    #[napi(ts_return_type = "Promise<Buffer | null>", catch_unwind)]
    pub fn next<'env>(&self, env: &'env Env) -> JsResult<PromiseRaw<'env, Option<JsBytes>>> {
        let body = self.body.clone();
        let cancel = self.cancel.clone();
        promise(env, async move {
            let mut body = body.lock().await;
            let batch = body.next_batch(&cancel).await.map_err(js_error)?;
            Ok(batch.map(JsBytes))
        })
    }

    /// The whole body when it is already here (small answers of known size), else null.
    #[napi(js_name = "takeBody", catch_unwind)]
    pub fn take_body(&self) -> Option<JsBytes> {
        let mut body = self.body.try_lock().ok()?;
        body.take_full().map(|b| JsBytes(vec![b]))
    }

    /// Stops reading: the upstream connection is closed, not returned to the pool.
    #[napi(ts_return_type = "Promise<void>", catch_unwind)]
    pub fn cancel<'env>(&self, env: &'env Env) -> JsResult<PromiseRaw<'env, ()>> {
        self.cancel.cancel();
        let body = self.body.clone();
        promise(env, async move {
            body.lock().await.close();
            Ok(())
        })
    }
}
