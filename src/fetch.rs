//! The Rust fetch: a driver that moves bytes with reqwest and asks the engine what to do.
//! Read top to bottom: ask the exchange for an attempt -> send -> let it judge the answer ->
//! deliver (the body keeps streaming) or go round again.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::HeaderMap;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::config;
use crate::engine::usage::top_level_string;
use crate::engine::{
    headers, verdict, Engine, Event, Exchange, Notice, RequestMeta, Step, UsageSink, Verdict,
};
use crate::error::{Error, Result};
use crate::http;
use crate::upload::Upload;

/// What JavaScript handed us.
pub struct OutgoingRequest {
    pub url: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// Hears at once what cannot wait for the answer (a hold beginning), if anything does.
    pub notice: Option<Notice>,
    /// The longest one hold may last (`Exchange::cap_hold`), for a host that gives up on an
    /// answer whose head has not come by then.
    pub hold_cap: Option<std::time::Duration>,
    /// Ends any hold when it fires (`Exchange::release_holds_on`): the driver is stopping.
    pub release: Option<CancellationToken>,
}

pub enum Body {
    Stream(reqwest::Response),
    /// The start of the body was read already (to understand a 400); the rest follows.
    Peeked(Bytes, reqwest::Response),
    Full(Bytes),
}

pub struct Answer {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// The account that served it (None for pass-through requests and the pool's own answers).
    pub account: Option<String>,
    pub events: Vec<Event>,
    /// Where its usage is counted (answers of a pool account).
    pub usage: Option<UsageSink>,
    /// Whether the body is an event stream (read on demand, tapped event by event).
    pub event_stream: bool,
    /// The credential presented to get it, for a relay to take back out of the body (`echo`).
    pub presented: Vec<crate::secret::Secret>,
}

/// Response headers that described the wire, not the body we hand over (re-framed), and the
/// other hop-by-hop ones (RFC 9110 7.6.1; `trailer` announces fields a re-framed body does not
/// carry), besides those the answer's `Connection` names: a gateway relayed them to its client
/// as if they were about its own hop. A `content-encoding` left on the answer is one the client
/// did not decode (`coding`): the bytes are handed over as sent, and must say so.
const DROPPED_FROM_ANSWER: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Serves one request. The events (failovers, cooldowns, auth errors) come back even when the
/// request fails, so a person can be told why.
pub async fn pool_fetch(
    engine: &Arc<Engine>,
    req: OutgoingRequest,
    cancel: &CancellationToken,
) -> (Result<Answer>, Vec<Event>) {
    let url = match Url::parse(&req.url) {
        Ok(u) => u,
        Err(_) => {
            let e = Error::InvalidArgument(format!(
                "not an absolute URL: {}",
                crate::secret::scrub_message(&req.url)
            ));
            return (Err(e), Vec::new());
        }
    };
    let method = match reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            let e = Error::InvalidArgument(format!("bad method {:?}", req.method));
            return (Err(e), Vec::new());
        }
    };
    let head = method == reqwest::Method::HEAD;
    let pairs = || req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let api = match config::api() {
        Ok(a) => a,
        Err(e) => return (Err(e), Vec::new()),
    };
    if !config::same_origin(&url, &api.url) {
        // Not Anthropic's API: a plain fetch with the caller's headers, its own credential
        // included, never with a pool credential.
        let result = send(
            method,
            url,
            headers::passed_through(pairs()),
            req.body,
            cancel,
        )
        .await
        .map(|r| answer(r, head, None, Vec::new()));
        return (result, Vec::new());
    }

    let model = req
        .body
        .as_deref()
        .and_then(|b| top_level_string(b, "model", b.len()));
    let base = headers::forwardable(pairs());
    let meta = RequestMeta::from_headers(pairs())
        .with_model(model)
        .with_url(url.path());
    let mut ex = engine.exchange(meta);
    if let Some(body) = req.body.as_deref().filter(|_| ex.wants_body(None)) {
        ex.read_body(body);
    }
    if let Some(notice) = req.notice {
        ex.tell_at_once(notice);
    }
    if let Some(cap) = req.hold_cap {
        ex.cap_hold(cap);
    }
    if let Some(release) = req.release {
        ex.release_holds_on(release);
    }
    let result = serve(&mut ex, method, url, &base, req.body, cancel).await;
    let events = ex.take_events();
    match result {
        Ok(mut a) => {
            a.events = events;
            (Ok(a), Vec::new())
        }
        Err(e) => (Err(e), events),
    }
}

async fn serve(
    ex: &mut Exchange,
    method: reqwest::Method,
    url: Url,
    base: &HeaderMap,
    body: Option<Bytes>,
    cancel: &CancellationToken,
) -> Result<Answer> {
    let head = method == reqwest::Method::HEAD;
    // Every credential this request was sent with, over its attempts: an answer after a
    // failover that echoed the first account's key (in the body, or re-encoded in a header)
    // was scrubbed of the last account's alone.
    let mut presented: Vec<crate::secret::Secret> = Vec::new();
    loop {
        let attempt = match ex.next(base, cancel).await? {
            Step::Send(a) => a,
            Step::Answer(s) => {
                return Ok(Answer {
                    status: s.status,
                    status_text: s.status_text.to_string(),
                    headers: s.headers,
                    body: Body::Full(s.body),
                    account: None,
                    events: Vec::new(),
                    usage: None,
                    event_stream: false,
                    presented: Vec::new(),
                })
            }
        };
        for credential in crate::echo::presented(&attempt.headers) {
            if !presented.iter().any(|p| p.expose() == credential.expose()) {
                presented.push(credential);
            }
        }
        let mut response = send(
            method.clone(),
            url.clone(),
            attempt.headers,
            body.clone(),
            cancel,
        )
        .await?;
        let status = response.status().as_u16();
        if let Some(body) = body.as_deref().filter(|_| ex.wants_body(Some(status))) {
            ex.read_body(body);
        }
        // What stopped the read of a 429's body, which is judged without the rest of it.
        let mut cut = None;
        let peek = if verdict::needs_body(status) {
            let head_decides = verdict::head_decides(status);
            let idle = if head_decides {
                http::response_timeout().min(verdict::HEAD_DECIDES_PATIENCE)
            } else {
                http::response_timeout()
            };
            // A 429's body is waited for that long in all, not that long between its bytes:
            // one that trickles a byte at a time held the failover for as long as it went on;
            // a 400's, as long in all as `PEEK_PATIENCE`.
            let whole_within = if head_decides {
                idle
            } else {
                idle.min(verdict::PEEK_PATIENCE)
            };
            let peek_started = tokio::time::Instant::now();
            let (start, read) = peek_partial(
                &mut response,
                verdict::PEEK_LIMIT,
                idle,
                (head_decides || whole_within < idle).then_some(whole_within),
                cancel,
            )
            .await;
            match read {
                Ok(whole) => Some((start, whole)),
                // A 429 says what it is in its head; the body only tells a spend limit from a
                // rate limit. Cut or gone silent, it still rests the account and moves the
                // request on: failing the request with NETWORK lost the failover and left the
                // account to be picked again.
                Err(Error::Aborted) if head_decides => {
                    if !verdict::judged_without_caller(status) {
                        return Err(Error::Aborted);
                    }
                    // The caller left, but the account's 429 stands: it rests, or the next request
                    // asks it again (the runtime transport judges what came the same way).
                    let settled = CancellationToken::new();
                    let judged = ex.judge(status, response.headers(), Some(&start), None, &settled);
                    if let Err(e) = judged.await {
                        tracing::debug!(error = %e, "an aborted 429 could not be judged");
                    }
                    return Err(Error::Aborted);
                }
                Err(e) if head_decides => {
                    tracing::debug!(error = %e, "a 429 whose body broke off: judged by its head");
                    cut = Some(e);
                    Some((start, false))
                }
                // Not all there in time: judged on what came, and delivered with the rest of
                // its body to follow. A body that broke off, or went silent for the response
                // timeout itself (when that is the shorter), still fails the request.
                Err(Error::Network { .. })
                    if whole_within < idle && peek_started.elapsed() >= whole_within =>
                {
                    tracing::debug!(status, "a body read past its patience: judged on its start");
                    Some((start, false))
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        // A 2xx event stream is handed over once its opening is read: a rate limit said there,
        // before any content, moves the request on as a 429 does.
        let opening = if verdict::reads_opening(status, response.headers()) {
            Some(read_opening(&mut response, cancel).await?)
        } else {
            None
        };
        let said = opening.as_ref().and_then(|o| o.said.as_deref());
        let peeked = peek.as_ref().map(|(b, _)| b.as_ref());
        match ex
            .judge(status, response.headers(), peeked, said, cancel)
            .await?
        {
            Verdict::Retry => continue,
            Verdict::Deliver => {
                // Never a cut body handed over as if it were whole.
                if let Some(e) = cut {
                    return Err(e);
                }
                let account = Some(attempt.email);
                // Only answers that carry usage (a message, streamed or not) or name what they made
                // are tapped.
                let usage = crate::engine::usage::carried(status, response.headers()).and_then(
                    |event_stream| ex.usage_sink().filter(|sink| sink.wanted(event_stream)),
                );
                let mut a = match (peek, opening) {
                    (None, None) => answer(response, head, account, Vec::new()),
                    (_, Some(opening)) => {
                        let mut a = answer(response, head, account, Vec::new());
                        a.body = match (a.body, opening.ended) {
                            (_, true) => Body::Full(opening.bytes),
                            (Body::Stream(r), false) => Body::Peeked(opening.bytes, r),
                            (other, false) => other,
                        };
                        a
                    }
                    (Some((start, whole)), None) => {
                        let (status_text, headers) = head_of(&response, head);
                        Answer {
                            status,
                            status_text,
                            headers,
                            body: if whole {
                                Body::Full(start)
                            } else {
                                Body::Peeked(start, response)
                            },
                            account,
                            events: Vec::new(),
                            usage: None,
                            event_stream: false,
                            presented: Vec::new(),
                        }
                    }
                };
                a.usage = usage;
                crate::echo::scrub_headers(&mut a.headers, &presented);
                crate::echo::scrub_text(&mut a.status_text, &presented);
                a.presented = presented;
                return Ok(a);
            }
        }
    }
}

/// What was read of an event stream before it is handed over (`verdict::reads_opening`).
struct ReadOpening {
    bytes: Bytes,
    /// The stream ended within its opening: `bytes` are the whole body.
    ended: bool,
    /// The `error.type` of an `error` event the opening held before any content.
    said: Option<String>,
}

/// Reads the opening of an event stream (`usage::Opening`): its chunks until the opening is
/// complete or the stream ends, each within the response timeout as any chunk of a body is, and
/// no longer (a slow model's first content is not cut short by a timer of its own). A stream
/// that breaks off or goes silent in its opening fails the request, as one that breaks off
/// before any byte reached the caller does (the caller gets `NETWORK`, which clients retry,
/// rather than a 200 followed by a cut).
async fn read_opening(
    response: &mut reqwest::Response,
    cancel: &CancellationToken,
) -> Result<ReadOpening> {
    let idle = http::response_timeout();
    let mut opening = crate::engine::usage::Opening::new();
    let mut parts: Vec<Bytes> = Vec::new();
    let ended = loop {
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(Error::Aborted),
            c = tokio::time::timeout(idle, response.chunk()) => c,
        };
        match chunk {
            Ok(Ok(Some(c))) => {
                let complete = opening.feed(&c);
                parts.push(c);
                if complete {
                    break false;
                }
            }
            Ok(Ok(None)) => break true,
            Ok(Err(e)) => return Err(opening_broke(http::describe(&e))),
            Err(_) => {
                let silent = format!("no data for {} ms", idle.as_millis());
                return Err(opening_broke(silent));
            }
        }
    };
    // Usually one chunk: handed on without a copy.
    let bytes = match parts.len() {
        0 | 1 => parts.pop().unwrap_or_default(),
        _ => Bytes::from(parts.concat()),
    };
    Ok(ReadOpening {
        bytes,
        ended,
        said: opening.said().map(str::to_string),
    })
}

fn opening_broke(detail: String) -> Error {
    Error::Network {
        what: "the API",
        detail: format!("{detail} (in the event stream's opening)"),
        never_connected: false,
    }
}

/// Reads up to `limit` bytes of the body, honouring the abort signal and the response timeout.
/// Returns the bytes and whether that was the whole body.
pub(crate) async fn peek(
    response: &mut reqwest::Response,
    limit: usize,
    cancel: &CancellationToken,
) -> Result<(Bytes, bool)> {
    let (start, read) = peek_partial(response, limit, http::response_timeout(), None, cancel).await;
    read.map(|whole| (start, whole))
}

/// `peek`, keeping the bytes that came before a failure: the bytes, and whether they are the
/// whole body or what stopped the read (a failure, `idle` without data, or the body not all
/// there `whole_within` after the read began).
async fn peek_partial(
    response: &mut reqwest::Response,
    limit: usize,
    idle: Duration,
    whole_within: Option<Duration>,
    cancel: &CancellationToken,
) -> (Bytes, Result<bool>) {
    let mut out = BytesMut::new();
    let deadline = whole_within.map(|d| tokio::time::Instant::now() + d);
    while out.len() < limit {
        let wait = deadline.map_or(idle, |at| {
            idle.min(at.saturating_duration_since(tokio::time::Instant::now()))
        });
        let chunk = tokio::select! {
            biased;
            _ = cancel.cancelled() => return (out.freeze(), Err(Error::Aborted)),
            c = tokio::time::timeout(wait, response.chunk()) => c,
        };
        let failed = match chunk {
            Ok(Ok(Some(c))) => {
                out.extend_from_slice(&c);
                continue;
            }
            Ok(Ok(None)) => return (out.freeze(), Ok(true)),
            Ok(Err(e)) => http::describe(&e),
            Err(_) if wait < idle => format!(
                "the body not all there within {} ms",
                whole_within.unwrap_or(idle).as_millis()
            ),
            Err(_) => format!("no data for {} ms", idle.as_millis()),
        };
        let e = Error::Network {
            what: "the API",
            detail: failed,
            never_connected: false,
        };
        return (out.freeze(), Err(e));
    }
    (out.freeze(), Ok(false))
}

async fn send(
    method: reqwest::Method,
    url: Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    cancel: &CancellationToken,
) -> Result<reqwest::Response> {
    http::check_proxy(&url)?;
    let client = http::api_client()?;
    // fetch sends a length of 0 with an empty body, and with a POST or PUT that has none;
    // hyper sends no length for an empty body, which a server that requires one answers 411.
    let zero = match &body {
        Some(b) => b.is_empty(),
        None => method == reqwest::Method::POST || method == reqwest::Method::PUT,
    };
    let mut builder = client.request(method, url).headers(headers);
    if zero {
        builder = builder.header(reqwest::header::CONTENT_LENGTH, "0");
    }
    match body {
        Some(b) if !b.is_empty() => {
            builder = builder.body(reqwest::Body::wrap(Upload::new(b, cancel.clone())));
        }
        Some(b) => builder = builder.body(b),
        None => {}
    }
    let timeout = http::response_timeout();
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Error::Aborted),
        r = tokio::time::timeout(timeout, builder.send()) => match r {
            Ok(Ok(r)) if !(200..=599).contains(&r.status().as_u16()) => Err(Error::Network {
                what: "the API",
                detail: format!("the answer's status {} is not a final HTTP status", r.status().as_u16()),
                never_connected: false,
            }),
            Ok(r) => r
                .map_err(|e| http::network_error("the API", &e))
                .and_then(|r| crate::coding::received(r, "the API")),
            Err(_) => Err(Error::Network {
                what: "the API",
                detail: format!("no response headers within {} ms", timeout.as_millis()),
                never_connected: false,
            }),
        },
    }
}

/// The answer's reason phrase and headers as handed over. A `HEAD`'s length is kept: it says how
/// long the body a `GET` would get is (there is none to re-frame), as fetch gives it.
fn head_of(response: &reqwest::Response, head: bool) -> (String, Vec<(String, String)>) {
    // The server's own reason phrase (hyper keeps it only when it is not the standard one).
    let status_text = match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => byte_string(reason.as_bytes()),
        None => response
            .status()
            .canonical_reason()
            .unwrap_or("")
            .to_string(),
    };
    let named_by_connection: Vec<String> = response
        .headers()
        .get_all(reqwest::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let headers = response
        .headers()
        .iter()
        .filter(|(k, _)| {
            // Whatever `Connection` says, a coding the body is still in stays named: dropped, the
            // gateway relayed a body it could not search as if it were plain.
            let hop = *k != reqwest::header::CONTENT_ENCODING
                && named_by_connection.iter().any(|n| n == k.as_str());
            let length = head && *k == reqwest::header::CONTENT_LENGTH;
            (length || !DROPPED_FROM_ANSWER.contains(&k.as_str())) && !hop
        })
        .map(|(k, v)| (k.as_str().to_string(), byte_string(v.as_bytes())))
        .collect();
    (status_text, headers)
}

/// A header value as fetch exposes it: one character per byte (a `ByteString`). Read as UTF-8,
/// a byte that was not UTF-8 became U+FFFD and a character past U+00FF made JavaScript's
/// `Response` refuse the whole answer; a relay writes the bytes back with `byte_string_bytes`.
pub fn byte_string(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.is_ascii() => text.to_string(),
        _ => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// The bytes of a `byte_string` (None when a character is past U+00FF: not one of its).
pub fn byte_string_bytes(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

fn answer(
    response: reqwest::Response,
    head: bool,
    account: Option<String>,
    events: Vec<Event>,
) -> Answer {
    let (status_text, headers) = head_of(&response, head);
    Answer {
        status: response.status().as_u16(),
        status_text,
        headers,
        event_stream: crate::body::is_event_stream(&response),
        body: Body::Stream(response),
        account,
        events,
        usage: None,
        presented: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_value_is_a_byte_a_character_and_back() {
        for bytes in [
            &b"plain"[..],
            "héllo ✓".as_bytes(),
            &[0x63, 0x61, 0x66, 0xe9],
        ] {
            let text = byte_string(bytes);
            assert_eq!(text.chars().count(), bytes.len());
            assert_eq!(byte_string_bytes(&text).as_deref(), Some(bytes));
        }
        assert_eq!(byte_string(&[0x63, 0x61, 0x66, 0xe9]), "café");
        assert_eq!(byte_string_bytes("✓"), None);
    }
}
