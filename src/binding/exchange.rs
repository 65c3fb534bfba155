//! The engine for drivers written in JavaScript (OpenCode 2's http hooks, where the host sends
//! the request itself): `next()` says which account and which headers, `judge()` what the
//! answer means. The credential necessarily crosses into the host's request here.

use std::sync::Arc;

use napi::bindgen_prelude::{BufferSlice, Either, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::notice::EventListener;
use super::{engine_for, js_error, promise, JsResult};
use crate::config::{self, ApiOrigin};
use crate::engine::usage::{self, Opening, UsageTap};
use crate::engine::{headers, Exchange, RequestMeta, Step, UsageSink, Verdict};
use crate::error::Error;

#[napi]
pub struct NativeExchange {
    /// The exchange, or why it could not be set up (reported by the first `next()`).
    inner: std::result::Result<Arc<tokio::sync::Mutex<Exchange>>, String>,
    base: HeaderMap,
    cancel: CancellationToken,
    /// The delivered answer's usage tap, fed by `observe` as the host's body passes. Shared
    /// with `judge`'s task, which arms it (see `judge` for why no task borrows `self`).
    usage: Arc<std::sync::Mutex<Option<(UsageTap, UsageSink)>>>,
    /// The opening of the answer being judged, an event stream (`feedOpening`); `judge` takes
    /// what it said.
    opening: std::sync::Mutex<Option<Opening>>,
}

/// A credential goes only to the configured API origin, whatever the host was told to call.
fn check_origin(url: Option<&str>, api: &ApiOrigin) -> Result<(), Error> {
    let Some(raw) = url else { return Ok(()) };
    // The usual case without a parse: the API origin itself followed by a path. The slash ends
    // the authority, so no host or port can follow it.
    if let Some(origin) = &api.origin {
        if raw.len() > origin.len()
            && raw.as_bytes()[origin.len()] == b'/'
            && raw.is_char_boundary(origin.len())
            && raw[..origin.len()] == *origin
        {
            return Ok(());
        }
    }
    let target = url::Url::parse(raw)
        .map_err(|_| Error::InvalidArgument("the request URL is not absolute".into()))?;
    if config::same_origin(&target, &api.url) {
        return Ok(());
    }
    Err(Error::InsecureEndpoint {
        url: target.origin().ascii_serialization(),
        reason: format!(
            "it is not the pool's API origin ({}); no pool credential is attached",
            api.url.origin().ascii_serialization()
        ),
    })
}

/// Whether `url` is on the pool's API origin (`OAUTH_POOL_API_URL`): only such requests get an
/// account; a driver sends anything else as a plain fetch.
#[napi(js_name = "isApiOrigin", catch_unwind)]
pub fn is_api_origin(url: String) -> bool {
    let (Ok(target), Ok(api)) = (url::Url::parse(&url), config::api()) else {
        return false;
    };
    config::same_origin(&target, &api.url)
}

/// The request body's top-level `model`.
fn model_in(body: &[u8]) -> Option<String> {
    usage::top_level_string(body, "model", body.len())
}

/// `name: value` lines (what `judgeSync` takes) as pairs; a line without a colon is dropped.
fn header_lines(text: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    text.lines().filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name.trim(), value.trim()))
    })
}

/// A step as the driver reads it: `{ kind: "send", account, headers: [[name, value]] }` or
/// `{ kind: "answer", status, statusText, headers, body, hostWaits }`. Serialized straight from the engine's
/// step (no intermediate JSON tree: the synchronous path sends it as text on every request).
#[derive(serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum StepOut<'a> {
    Send {
        account: &'a str,
        headers: Vec<(&'a str, std::borrow::Cow<'a, str>)>,
    },
    Answer {
        status: u16,
        #[serde(rename = "statusText")]
        status_text: &'a str,
        headers: &'a [(String, String)],
        body: std::borrow::Cow<'a, str>,
        /// The wait is the host's to make (see `holdAtMost`).
        #[serde(rename = "hostWaits")]
        host_waits: bool,
    },
}

impl<'a> StepOut<'a> {
    fn of(step: &'a Step) -> StepOut<'a> {
        match step {
            Step::Send(a) => StepOut::Send {
                account: &a.email,
                headers: a
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), crate::engine::headers::latin1_text(v)))
                    .collect(),
            },
            Step::Answer(s) => StepOut::Answer {
                status: s.status,
                status_text: s.status_text,
                headers: &s.headers,
                body: String::from_utf8_lossy(&s.body),
                host_waits: s.host_waits,
            },
        }
    }
}

impl Drop for NativeExchange {
    fn drop(&mut self) {
        self.count_usage(None);
    }
}

#[napi]
impl NativeExchange {
    /// One request through the pool (arguments by position: each named field of an options
    /// object is a property lookup across the boundary):
    /// - `path`: the pool, else the configured one;
    /// - `url`: where the host will send the request: a credential is attached only on the
    ///   pool's API origin (`OAUTH_POOL_API_URL`);
    /// - `headers`: the request's headers as `name:value` lines (one string, as `judgeSync`
    ///   takes them; a `Headers` refuses line breaks in values);
    /// - `model`: the model asked for (scoped windows, model cooldowns, usage), else read from
    ///   the top level of `body` (bytes, looked at during the call only) or of `bodyStart` (the
    ///   start of a text body: encoding all of a large one cost more than the request's whole
    ///   decision; when the engine wants more of it, `wantsText` says so and `readText` takes
    ///   the whole text);
    /// - `listener`: the driver's `EventListener`, told at once what cannot wait for the
    ///   request's end (a hold beginning);
    /// - `startIsWhole`: `bodyStart` is all of the text (a short body: no `readText` needed).
    #[napi(constructor, catch_unwind)]
    #[allow(clippy::too_many_arguments)] // by position on purpose (above)
    pub fn new(
        path: Option<String>,
        url: Option<String>,
        headers: String,
        model: Option<String>,
        body: Option<BufferSlice>,
        body_start: Option<String>,
        listener: Option<&EventListener>,
        start_is_whole: Option<bool>,
    ) -> Self {
        let pairs = || header_lines(&headers);
        let model = model
            .or_else(|| body.as_deref().and_then(model_in))
            .or_else(|| body_start.as_deref().and_then(|b| model_in(b.as_bytes())));
        let mut meta = RequestMeta::from_headers(pairs()).with_model(model);
        if let Some(url) = url.as_deref() {
            meta = meta.with_url(url);
        }
        let base = headers::forwardable(pairs());
        let inner = engine_for(path.as_deref())
            .and_then(|engine| {
                check_origin(url.as_deref(), &*config::api()?)?;
                let mut exchange = engine.exchange(meta);
                let whole_text = body_start
                    .as_deref()
                    .filter(|_| start_is_whole == Some(true))
                    .map(str::as_bytes);
                if let Some(body) = body
                    .as_deref()
                    .or(whole_text)
                    .filter(|_| exchange.wants_body(None))
                {
                    exchange.read_body(body);
                }
                if let Some(listener) = listener {
                    exchange.tell_at_once(listener.notice());
                }
                Ok(Arc::new(tokio::sync::Mutex::new(exchange)))
            })
            .map_err(|e| js_error(e).reason);
        NativeExchange {
            inner,
            base,
            cancel: CancellationToken::new(),
            usage: Arc::new(std::sync::Mutex::new(None)),
            opening: std::sync::Mutex::new(None),
        }
    }

    /// Whether the exchange still lacks the model asked for (see `readModel`).
    #[napi(getter, js_name = "modelUnknown", catch_unwind)]
    pub fn model_unknown(&self) -> bool {
        match self.inner.as_ref().map(|m| m.try_lock()) {
            Ok(Ok(ex)) => !ex.knows_model(),
            _ => false,
        }
    }

    /// Whether the engine wants the whole text of a body it was shown the start of: the model
    /// asked for was not in it, or this process knows which account holds some file (one
    /// question for both: a long text is the usual request, and each is a crossing).
    #[napi(getter, js_name = "wantsText", catch_unwind)]
    pub fn wants_text(&self) -> bool {
        match self.inner.as_ref().map(|m| m.try_lock()) {
            Ok(Ok(ex)) => !ex.knows_model() || ex.wants_body(None),
            _ => false,
        }
    }

    /// Reads from the whole text of the request body what `wantsText` asked for: the model, the
    /// file it refers to.
    #[napi(js_name = "readText", catch_unwind)]
    pub fn read_text(&self, body: String) {
        if let Ok(Ok(mut ex)) = self.inner.as_ref().map(|m| m.try_lock()) {
            if !ex.knows_model() {
                ex.learn_model(model_in(body.as_bytes()));
            }
            if ex.wants_body(None) {
                ex.read_body(body.as_bytes());
            }
        }
    }

    /// Whether the engine is to be shown the whole request body (`readBody`): before it is
    /// first sent (no `answered`), when this process knows which account holds some file, or
    /// after an answer of status `answered` (a 404 to a message that may refer to a file made
    /// elsewhere). Bytes handed to the constructor were shown already.
    #[napi(js_name = "wantsBody", catch_unwind)]
    pub fn wants_body(&self, answered: Option<u32>) -> bool {
        let answered = answered.map(|s| u16::try_from(s).unwrap_or(0));
        match self.inner.as_ref().map(|m| m.try_lock()) {
            Ok(Ok(ex)) => ex.wants_body(answered),
            _ => false,
        }
    }

    /// Reads the file a Messages body refers to (`Exchange::read_body`); the body is looked at
    /// during the call only.
    #[napi(js_name = "readBody", catch_unwind)]
    pub fn read_body(&self, body: Either<String, BufferSlice>) {
        if let Ok(Ok(mut ex)) = self.inner.as_ref().map(|m| m.try_lock()) {
            match &body {
                Either::A(text) => ex.read_body(text.as_bytes()),
                Either::B(bytes) => ex.read_body(bytes),
            }
        }
    }

    /// Holds this request at most `ms` at once (`Exchange::cap_hold`): for a host that gives up
    /// on a request whose answer has not begun by then and sends it again itself (OpenCode 2).
    /// A longer wait that `OAUTH_POOL_HOLD_MAX_MS` covers is answered by `next()` with the
    /// pool's 429 and `hostWaits: true`: the host is to wait its `retry-after` and ask again.
    #[napi(js_name = "holdAtMost", catch_unwind)]
    pub fn hold_at_most(&self, ms: u32) {
        if let Ok(Ok(mut ex)) = self.inner.as_ref().map(|m| m.try_lock()) {
            ex.cap_hold(std::time::Duration::from_millis(u64::from(ms)));
        }
    }

    fn exchange(&self) -> JsResult<&Arc<tokio::sync::Mutex<Exchange>>> {
        self.inner
            .as_ref()
            .map_err(|reason| napi::Error::from_reason(reason.clone()))
    }

    /// `{ kind: "send", account, headers }` (the full header list to send) or
    /// `{ kind: "answer", status, statusText, headers, body, hostWaits }` (the pool answers itself).
    #[napi(ts_return_type = "Promise<any>", catch_unwind)]
    pub fn next<'env>(&self, env: &'env Env) -> JsResult<PromiseRaw<'env, Value>> {
        let exchange = self.exchange().cloned();
        let base = self.base.clone();
        let cancel = self.cancel.clone();
        promise(env, async move {
            let mut ex = exchange?.lock_owned().await;
            let step = ex.next(&base, &cancel).await.map_err(js_error)?;
            serde_json::to_value(StepOut::of(&step))
                .map_err(|e| napi::Error::from_reason(e.to_string()))
        })
    }

    /// `next()` answered on the calling thread when no I/O is needed (the usual case: the pool
    /// as cached is current and the token valid), as JSON text (one string crosses instead of
    /// an object built field by field); `null` means call `next()`.
    #[napi(js_name = "nextSync", catch_unwind)]
    pub fn next_sync(&self) -> JsResult<Option<String>> {
        let Ok(mut ex) = self.exchange()?.try_lock() else {
            return Ok(None);
        };
        match ex.try_next(&self.base) {
            None => Ok(None),
            Some(step) => step.map_err(js_error).and_then(|s| {
                serde_json::to_string(&StepOut::of(&s))
                    .map(Some)
                    .map_err(|e| napi::Error::from_reason(e.to_string()))
            }),
        }
    }

    /// `"retry"`, `"deliver"` or `"deliver-tap"` (see `judgeSync`). `headers`: the answer's
    /// `name: value` lines; `body`: the start of the body, for a 400 (`needsBody`).
    ///
    /// The task owns what it uses and borrows nothing of `self`: when the environment that
    /// made this object goes (a worker terminated mid-request), Node-API frees the object
    /// whatever is still running, and a task that borrowed it read freed memory (the host
    /// crashed, or every later call hung). The body is copied for the same reason.
    #[napi(ts_return_type = "Promise<string>", catch_unwind)]
    pub fn judge<'env>(
        &self,
        env: &'env Env,
        status: u32,
        headers: String,
        body: Option<BufferSlice>,
    ) -> JsResult<PromiseRaw<'env, String>> {
        let status = u16::try_from(status)
            .map_err(|_| js_error(Error::InvalidArgument(format!("bad status {status}"))))?;
        let map = headers::answer_headers(header_lines(&headers));
        let exchange = self.exchange()?.clone();
        let said = self.take_said();
        let body = body.map(|b| b.to_vec());
        let cancel = self.cancel.clone();
        let usage = self.usage.clone();
        promise(env, async move {
            let mut ex = exchange.lock().await;
            let verdict = ex
                .judge(status, &map, body.as_deref(), said.as_deref(), &cancel)
                .await
                .map_err(js_error)?;
            Ok(verdict_value(&usage, &ex, verdict, status, &map))
        })
    }

    /// `judge()` on the calling thread when the answer means no I/O (anything but a 401);
    /// `null` means call `judge()`. Answers `"deliver"`, `"deliver-tap"` (deliver, and pass the
    /// body through `observe`: it carries usage) or `"retry"`.
    /// `headers`: the answer's header lines, `name: value` separated by newlines (one string).
    #[napi(js_name = "judgeSync", catch_unwind)]
    pub fn judge_sync(
        &self,
        status: u32,
        headers: String,
        body: Option<BufferSlice>,
    ) -> JsResult<Option<String>> {
        let status = u16::try_from(status)
            .map_err(|_| js_error(Error::InvalidArgument(format!("bad status {status}"))))?;
        let map = headers::answer_headers(header_lines(&headers));
        let Ok(mut ex) = self.exchange()?.try_lock() else {
            return Ok(None);
        };
        let said = self.said();
        let verdict = ex.try_judge(status, &map, body.as_deref(), said.as_deref());
        if verdict.is_some() {
            self.take_said();
        }
        Ok(verdict.map(|verdict| verdict_value(&self.usage, &ex, verdict, status, &map)))
    }

    /// Feeds a chunk of the answer's event stream before it is judged (a 2xx event stream is
    /// judged on its opening too: `verdict::reads_opening`); true once the opening is complete
    /// (judge it now, and read no more before). A stream that ends first is judged as it is.
    /// The chunk is borrowed for the call.
    #[napi(js_name = "feedOpening", catch_unwind)]
    pub fn feed_opening(&self, chunk: BufferSlice) -> bool {
        let Ok(mut slot) = self.opening.lock() else {
            return true;
        };
        slot.get_or_insert_with(Opening::new).feed(&chunk)
    }

    /// What the opening fed so far said (an `error` event's type before any content).
    fn said(&self) -> Option<String> {
        let slot = self.opening.lock().ok()?;
        slot.as_ref()?.said().map(str::to_string)
    }

    /// `said`, and the opening let go: the next attempt's answer has its own.
    fn take_said(&self) -> Option<String> {
        let taken = self.opening.lock().ok()?.take()?;
        taken.said().map(str::to_string)
    }

    /// Shows the tap a chunk of the delivered body as it passes to the host (nothing is kept,
    /// so the chunk is borrowed for the call, not referenced).
    #[napi(catch_unwind)]
    pub fn observe(&self, chunk: BufferSlice) {
        if let Ok(mut slot) = self.usage.lock() {
            if let Some((tap, _)) = slot.as_mut() {
                tap.observe(&chunk);
            }
        }
    }

    /// The delivered body ended (or was abandoned): its usage is counted. `last`: the body's
    /// last bytes not yet shown to `observe` (all of it, for a body read whole: one call).
    #[napi(js_name = "finishUsage", catch_unwind)]
    pub fn finish_usage(&self, last: Option<BufferSlice>) {
        self.count_usage(last.as_deref());
    }

    fn count_usage(&self, last: Option<&[u8]>) {
        let taken = self.usage.lock().ok().and_then(|mut s| s.take());
        if let Some((mut tap, sink)) = taken {
            if let Some(bytes) = last {
                tap.observe(bytes);
            }
            sink.record(&mut tap);
        }
    }

    /// The policy table's shape, for a driver to keep instead of asking per answer:
    /// `needsBody`, the statuses whose start of body `judge` reads (of them `headDecides`, those
    /// judged by what came of it when it breaks off or keeps silent `headDecidesPatienceMs`);
    /// `answerHeaders` and
    /// `answerHeaderPrefixes`, the answer headers it reads (a driver may leave out the rest).
    #[napi(js_name = "statusPolicy", catch_unwind)]
    pub fn status_policy() -> Value {
        let needs_body: Vec<u16> = crate::engine::verdict::DECISIVE
            .iter()
            .copied()
            .filter(|s| crate::engine::verdict::needs_body(*s))
            .collect();
        let head_decides: Vec<u16> = needs_body
            .iter()
            .copied()
            .filter(|s| crate::engine::verdict::head_decides(*s))
            .collect();
        json!({
            "needsBody": needs_body,
            "headDecides": head_decides,
            "headDecidesPatienceMs": crate::engine::verdict::HEAD_DECIDES_PATIENCE.as_millis() as u64,
            "peekPatienceMs": crate::engine::verdict::PEEK_PATIENCE.as_millis() as u64,
            "answerHeaders": headers::ANSWER_HEADERS,
            "answerHeaderPrefixes": headers::ANSWER_HEADER_PREFIXES,
        })
    }

    /// Whether `judge` wants the start of the body for this status.
    #[napi(js_name = "needsBody", catch_unwind)]
    pub fn needs_body(status: u32) -> bool {
        u16::try_from(status).is_ok_and(crate::engine::verdict::needs_body)
    }

    /// The events so far, as JSON (failovers, cooldowns, refusals).
    #[napi(js_name = "takeEvents", catch_unwind)]
    pub fn take_events(&self) -> String {
        match self.inner.as_ref().map(|m| m.try_lock()) {
            Ok(Ok(mut ex)) => {
                serde_json::to_string(&ex.take_events()).unwrap_or_else(|_| "[]".into())
            }
            _ => "[]".into(),
        }
    }

    /// The request is given up, or ended unanswered (its send failed): what it waits on ends,
    /// and the requests held behind its reopening go on now, not when it is collected (under
    /// Bun they waited out `REOPEN_PATIENCE`, found by a review).
    #[napi(catch_unwind)]
    pub fn abort(&self) {
        self.cancel.cancel();
        if let Ok(Ok(mut ex)) = self.inner.as_ref().map(|m| m.try_lock()) {
            ex.give_up();
        }
    }
}

/// Arms the usage tap for a delivered 2xx (JSON or an event stream: other bodies carry no
/// usage and pass untouched).
fn verdict_value(
    usage: &std::sync::Mutex<Option<(UsageTap, UsageSink)>>,
    ex: &Exchange,
    verdict: Verdict,
    status: u16,
    map: &HeaderMap,
) -> String {
    if verdict == Verdict::Retry {
        return "retry".into();
    }
    let Some(event_stream) = usage::carried(status, map) else {
        return "deliver".into();
    };
    match (
        ex.usage_sink().filter(|sink| sink.wanted(event_stream)),
        usage.lock(),
    ) {
        (Some(sink), Ok(mut slot)) => {
            *slot = Some((UsageTap::new(event_stream), sink));
            "deliver-tap".into()
        }
        _ => "deliver".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(raw: &str) -> ApiOrigin {
        ApiOrigin::new(url::Url::parse(raw).expect("url"))
    }

    #[test]
    fn a_credential_goes_only_to_the_api_origin() {
        let a = api("https://api.anthropic.com");
        for ok in [
            "https://api.anthropic.com/v1/messages",
            "https://API.anthropic.com/v1/messages",
            "https://api.anthropic.com:443/v1/messages",
            "https://api.anthropic.com//v1",
        ] {
            assert!(check_origin(Some(ok), &a).is_ok(), "{ok}");
        }
        for bad in [
            "https://api.anthropic.com.evil.example/v1/messages",
            "https://api.anthropic.com@evil.example/v1/messages",
            "https://api.anthropic.com:8443/v1/messages",
            "http://api.anthropic.com/v1/messages",
            "/v1/messages",
        ] {
            assert!(check_origin(Some(bad), &a).is_err(), "{bad}");
        }
        let local = api("http://127.0.0.1:4000/base");
        assert!(check_origin(Some("http://127.0.0.1:4000/v1/messages"), &local).is_ok());
        assert!(check_origin(Some("http://127.0.0.1:40000/v1/messages"), &local).is_err());
    }

    #[test]
    fn answer_header_lines_are_read_in_any_case() {
        let map = headers::answer_headers(header_lines(
            "Retry-After: 7\ncontent-type:application/json\nno colon here\n",
        ));
        assert_eq!(
            map.get("retry-after").map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
        assert_eq!(map.len(), 2);
    }
}
