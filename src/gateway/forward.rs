//! The gateway's `/v1/*`: the client's request read within bounds, sent through the pool's
//! engine (`fetch::pool_fetch`, the same driver as the library's fetch), and the answer streamed
//! back through the usage tap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::count_events;
use super::{error, error_closing, full, AnyBody, ClientInput, State, MAX_BODY};
use crate::echo::Redactor;
use crate::engine::usage::UsageTap;
use crate::engine::UsageSink;
use crate::error::Error;
use crate::fetch::{self, Body, OutgoingRequest};
use crate::{config, http};

/// Whether the path the client sent names something under `/v1/` and stays there. A dot
/// segment, plain or percent-encoded, or a backslash is resolved by the URL parser (`/v1/../api/
/// oauth/claude_cli/create_api_key` became `/api/oauth/...` on the API origin, with the pool's
/// credential attached), and an encoded slash or backslash may be by a server: all refused.
pub(super) fn is_api_path(path: &str) -> bool {
    if !(path == "/v1" || path.starts_with("/v1/")) || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return false;
    }
    lower.split('/').all(|segment| {
        let segment = segment.replace("%2e", ".");
        segment != "." && segment != ".."
    })
}

/// Whether the request's target (path or query, as sent or percent-decoded once, as the API
/// would read it) holds the gateway key. Such a request is refused: the target goes upstream as
/// it is, and a client that sent the key in its query (`?key=`, as some clients take a key) as
/// well as in its header had the pool's gateway key sent to the API and written in its logs.
pub(super) fn target_holds_key(uri: &hyper::Uri, key: &crate::secret::Secret) -> bool {
    let key = key.expose().as_bytes();
    let Some(target) = uri.path_and_query().map(|p| p.as_str().as_bytes()) else {
        return false;
    };
    let decoded: Vec<u8> = percent_encoding::percent_decode(target).collect();
    contains(target, key) || contains(&decoded, key)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(haystack, needle).is_some()
}

/// The request's headers as the pool's driver takes them: a value one character a byte
/// (`fetch::byte_string`), which the driver sends back as those bytes. A value with a byte past
/// ASCII (a title or a user agent in UTF-8 or Latin-1, legal as obs-text) was dropped, and the
/// request went upstream without that header.
///
/// A header that holds the gateway key, in its value or its name, is left out: the key is the
/// gateway's, and only `x-api-key` and `Authorization` were kept from going upstream, so a key
/// a client also sent in a header of its own (`x-auth-token`, `api-key`, a cookie) reached the
/// API beside the pool's credential.
fn header_pairs(headers: &hyper::HeaderMap, key: &crate::secret::Secret) -> Vec<(String, String)> {
    let key = key.expose().as_bytes();
    headers
        .iter()
        .filter(|(k, v)| {
            !contains(v.as_bytes(), key)
                && !crate::echo::contains_ignoring_case(k.as_str().as_bytes(), key)
        })
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                crate::fetch::byte_string(v.as_bytes()),
            )
        })
        .collect()
}

/// What is left of a refused body is read and dropped (at most this much, for at most
/// `LINGER_FOR`): a client still sending then reads the 413 instead of a reset connection.
const LINGER_BYTES: usize = 2 * MAX_BODY;
const LINGER_FOR: Duration = Duration::from_secs(5);

fn too_large() -> Response<AnyBody> {
    error_closing(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        "the request body is over the gateway's 32 MB limit",
    )
}

/// Too many request bodies held at once: the client retries shortly, as when the connections
/// are all taken.
fn busy() -> Response<AnyBody> {
    let mut res = error_closing(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded_error",
        "the pool gateway holds too many request bodies at once (256 MB); retry shortly",
    );
    res.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    res
}

/// Whether the body ended with a trailer section: the connection is then closed with the answer
/// (see `read_body`).
pub(super) async fn linger(
    body: &mut Incoming,
    mut seen: usize,
    input: Option<&ClientInput>,
) -> bool {
    let mut trailed = false;
    let draining = async {
        loop {
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                // Nothing more will come: the client half-closed without finishing its body.
                () = ClientInput::done(input) => break,
            };
            let Some(Ok(frame)) = frame else { break };
            trailed |= frame.is_trailers();
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_FOR, draining).await;
    trailed
}

/// A body's buffer at its first byte (less when its declared length is less).
const FIRST_BODY_BUFFER: usize = 64 * 1024;

enum BodyRead {
    /// The body, and its share of `BODIES_HELD` (given back when both are dropped).
    Whole {
        body: Bytes,
        share: Option<OwnedSemaphorePermit>,
        /// It ended with a trailer section (see `read_body`).
        trailed: bool,
    },
    /// Its trailer section held lines that are no fields (see `read_body`).
    Misframed,
    TooLarge,
    /// Taking it would pass `BODIES_HELD`.
    Busy,
    BrokeOff,
    /// No byte of it came for the body timeout.
    Stalled,
}

/// The request body, at most `MAX_BODY` bytes, counted against the bodies held at once as it
/// arrives: memory goes only to bytes that came, so a client that declares a length and sends
/// nothing holds no share. The buffer grows by doubling (up to a declared length) and counts at
/// its capacity: sized to the declared length at the first byte, one byte sent held 32 MB of
/// address space (512 connections, 16 GB), and where address space is limited (`ulimit -v`,
/// strict overcommit) the allocation that failed aborted the gateway.
///
/// `idle`: how long the body may go without a byte, as nginx's `client_body_timeout` counts;
/// as a total, a large upload still arriving steadily over a slow link (a fleet's client in
/// another place: 32 MB of images at 1 Mbit/s takes four minutes) was cut at 60 s with a 408.
/// A client that trickles holds no more than the bytes it sent, counted against the budget.
///
/// A trailer section is read by hyper to its first CRLF CRLF, a bare LF inside a line: a proxy
/// in front that ends the section at a bare LF (`0\r\n\n`) sends its next request, and hyper
/// took that request's head as trailers and read its body as a request of its own. A section
/// that held no field is only that shape, and is refused; after any other, the connection is
/// closed with the answer, so that nothing read past an end seen two ways is taken as a request.
async fn read_body(
    body: &mut Incoming,
    declared: Option<usize>,
    budget: &Arc<Semaphore>,
    input: Option<&ClientInput>,
    idle: Duration,
) -> BodyRead {
    let mut out: Vec<u8> = Vec::new();
    let mut share: Option<OwnedSemaphorePermit> = None;
    let mut counted = 0usize;
    let mut trailed = false;
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    loop {
        // What hyper read before the client's input ended comes first; a body still short
        // of its end then never will be finished.
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            () = ClientInput::done(input) => return BodyRead::BrokeOff,
            () = &mut silence => return BodyRead::Stalled,
        };
        silence.as_mut().reset(tokio::time::Instant::now() + idle);
        let Some(frame) = frame else { break };
        let Ok(frame) = frame else {
            return BodyRead::BrokeOff;
        };
        let Some(data) = frame.data_ref() else {
            if frame.trailers_ref().is_some_and(hyper::HeaderMap::is_empty) {
                return BodyRead::Misframed;
            }
            trailed |= frame.is_trailers();
            continue;
        };
        let len = out.len() + data.len();
        if len > MAX_BODY {
            drop(out);
            drop(share);
            linger(body, len, input).await;
            return BodyRead::TooLarge;
        }
        if out.capacity() < len {
            let doubled = out.capacity().saturating_mul(2).max(FIRST_BODY_BUFFER);
            let capacity = declared.map_or(doubled, |n| doubled.min(n)).max(len);
            out.reserve_exact(capacity - out.len());
        }
        let held = out.capacity();
        if held > counted {
            let more = u32::try_from(held - counted).unwrap_or(u32::MAX);
            match budget.clone().try_acquire_many_owned(more) {
                Ok(p) => match share.as_mut() {
                    Some(s) => s.merge(p),
                    None => share = Some(p),
                },
                Err(_) => {
                    drop(out);
                    drop(share);
                    linger(body, len, input).await;
                    return BodyRead::Busy;
                }
            }
            counted = held;
        }
        out.extend_from_slice(data);
    }
    BodyRead::Whole {
        body: Bytes::from(out),
        share,
        trailed,
    }
}

pub(super) async fn forward(req: Request<Incoming>, state: &State) -> Response<AnyBody> {
    let started = Instant::now();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let declared_too_large = declared.is_some_and(|n| n > MAX_BODY as u64);
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    // Refused by its length alone, a body the client has not sent yet is never asked for.
    let waits = super::expects_continue(&req);
    let input = req.extensions().get::<ClientInput>().cloned();
    let input = input.as_ref();
    let (parts, mut incoming) = req.into_parts();
    if declared_too_large {
        if !waits {
            linger(&mut incoming, 0, input).await;
        }
        return too_large();
    }
    let api = match config::api() {
        Ok(a) => a,
        // The pool's own failure (an API origin it refuses), coded and final as any other: it
        // went out uncoded, without `x-should-retry: false`, and the SDKs asked three times.
        // Answered before the body is read, it reads the body first, as a refusal by the head.
        Err(e) => {
            let mut res = failed(&e);
            // Unread, or ended with trailers (see `read_body`): nothing after it is read.
            if waits || linger(&mut incoming, 0, input).await {
                res.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            return res;
        }
    };
    let target = format!(
        "{}{}",
        api.url.origin().ascii_serialization(),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    // What the driver will send to, checked as it will be parsed: still under /v1/.
    let Some(sent_to) = url::Url::parse(&target)
        .ok()
        .filter(|u| is_api_path(u.path()))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "the pool gateway serves /v1/*, /healthz and /metrics",
        );
    };
    // The origins the API's answers may name as its own: a relay (`OAUTH_POOL_API_URL`) may pass
    // them on as the API wrote them. The client must not take the gateway's key to either.
    let mut apis = vec![api.url.origin().ascii_serialization()];
    if apis[0] != crate::config::DEFAULT_API_URL {
        apis.push(crate::config::DEFAULT_API_URL.to_string());
    }
    let upstream = Upstream { sent_to, apis };
    let results_here = batch_answer(&parts, state.scheme);
    let method = parts.method.as_str().to_string();
    let head_only = parts.method == hyper::Method::HEAD;
    let headers = header_pairs(&parts.headers, &state.key);
    let read = read_body(
        &mut incoming,
        declared,
        &state.bodies,
        input,
        state.body_timeout,
    );
    let (body, _share, trailed) = match read.await {
        BodyRead::Stalled => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                &format!(
                    "no byte of the request body came for {}",
                    crate::wait::duration(state.body_timeout.as_millis() as i64)
                ),
            )
        }
        BodyRead::TooLarge => return too_large(),
        BodyRead::Busy => return busy(),
        BodyRead::BrokeOff => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request body broke off",
            )
        }
        BodyRead::Misframed => {
            return error_closing(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request's chunked body ends with a bare LF where CRLF belongs (its last chunk or trailer section): where it ends is read two ways",
            )
        }
        BodyRead::Whole {
            body,
            share,
            trailed,
        } => (body, share, trailed),
    };
    let request = OutgoingRequest {
        url: target,
        method,
        headers,
        body: (!body.is_empty()).then_some(body),
        // A hold may last hours: its log line comes when it begins, not with the answer.
        notice: Some(super::metrics::notice()),
        hold_cap: None,
        release: Some(state.stopping.clone()),
    };
    // The upstream call is cancelled when the client goes away (hyper drops this future) or the
    // gateway closes for good. It runs as a task of its own, so that a client leaving ends it
    // through the token, at a point where what came is still judged (a 429 whose head came
    // rests its account, as the library's fetch does), rather than where it stood.
    let cancel = state.closing.child_token();
    let _guard = cancel.clone().drop_guard();
    // What happened on the way (a failover, an account rested, a hold) is logged and counted
    // there too: a client gone before its answer still left those in the pool.
    let served = crate::runtime::spawn_boxed({
        let (engine, cancel) = (state.engine.clone(), cancel.clone());
        let failovers = state.metrics.failovers.clone();
        async move {
            let (result, events) = fetch::pool_fetch(&engine, request, &cancel).await;
            match &result {
                Ok(answer) => count_events(&failovers, &answer.events),
                Err(_) => count_events(&failovers, &events),
            }
            result
        }
    });
    let Ok(result) = served.await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "anthropic-pool: the request failed inside the pool",
        );
    };
    state.metrics.ttfb.observe(started.elapsed().as_secs_f64());
    let mut response = match result {
        Ok(answer) => {
            answered(
                answer,
                &upstream,
                results_here.as_deref(),
                head_only,
                &cancel,
            )
            .await
        }
        Err(e) => failed(&e),
    };
    if trailed {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Where the request went upstream, and the origins that count as the API's.
struct Upstream {
    sent_to: url::Url,
    apis: Vec<String>,
}

impl Upstream {
    /// The API's origin, where the request went: what a refusal of its answer names.
    fn origin(&self) -> String {
        self.apis.first().cloned().unwrap_or_default()
    }
}

/// An answer's `Location` as the gateway's client may follow it. The client follows a redirect
/// with the headers it sent the gateway, its key among them (fetch drops only `Authorization` on
/// the way to another origin, not `x-api-key`), and sends its request body again. One on the API's
/// origin is made relative, so that it leads back through the gateway. A redirect to any other
/// origin (or one that does not parse) is refused: the client would have taken its key and its
/// prompt there.
fn location_through_gateway(
    answer: &mut fetch::Answer,
    upstream: &Upstream,
) -> crate::error::Result<()> {
    let redirect = (300..400).contains(&answer.status) && answer.status != 304;
    for (name, value) in answer.headers.iter_mut() {
        if !name.eq_ignore_ascii_case("location") {
            continue;
        }
        let resolved = upstream
            .sent_to
            .join(value)
            .ok()
            .filter(|u| upstream.apis.contains(&u.origin().ascii_serialization()))
            // A path that begins with `//` would read as another host once relative.
            .filter(|u| !u.path().starts_with("//"));
        match resolved {
            Some(u) => {
                let mut here = u.path().to_string();
                if let Some(q) = u.query() {
                    here.push('?');
                    here.push_str(q);
                }
                if let Some(f) = u.fragment() {
                    here.push('#');
                    here.push_str(f);
                }
                *value = here;
            }
            None if redirect => {
                return Err(Error::InsecureEndpoint {
                    url: upstream.origin(),
                    reason: format!(
                        "it answered {} sending the client to {value}, off the API's origin: the gateway sends no client elsewhere, where its key and its request would follow",
                        answer.status
                    ),
                });
            }
            None => {}
        }
    }
    Ok(())
}

/// The content codings an answer's body is still in, when it names one other than `identity`.
fn still_encoded(headers: &[(String, String)]) -> Option<String> {
    let named = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))
        .map(|(_, value)| value.as_str());
    let codings = crate::coding::codings(named);
    (!codings.is_empty()).then(|| codings.join(", "))
}

/// Whether the answer's body is empty, read as far as its first byte to tell (an empty one is
/// then held whole).
async fn body_is_empty(
    answer: &mut fetch::Answer,
    cancel: &tokio_util::sync::CancellationToken,
) -> crate::error::Result<bool> {
    let mut response = match std::mem::replace(&mut answer.body, Body::Full(Bytes::new())) {
        Body::Full(b) => {
            let empty = b.is_empty();
            answer.body = Body::Full(b);
            return Ok(empty);
        }
        Body::Peeked(start, response) if !start.is_empty() => {
            answer.body = Body::Peeked(start, response);
            return Ok(false);
        }
        Body::Peeked(_, response) | Body::Stream(response) => response,
    };
    let (start, whole) = fetch::peek(&mut response, 1, cancel).await?;
    let empty = whole && start.is_empty();
    answer.body = if whole {
        Body::Full(start)
    } else {
        Body::Peeked(start, response)
    };
    Ok(empty)
}

/// The client's answer from upstream's: batch URLs pointed at the gateway, its body begun.
async fn answered(
    mut answer: fetch::Answer,
    upstream: &Upstream,
    results_here: Option<&str>,
    head_only: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Response<AnyBody> {
    if let Err(e) = location_through_gateway(&mut answer, upstream) {
        return failed(&e);
    }
    // A body still in a content coding (`coding` undoes gzip only as a body's one coding) cannot
    // be searched for an echoed credential, nor its batch URLs pointed here: a server echoing the
    // pool's token compressed with `br`, `deflate`, or gzip twice handed it whole to a client
    // that holds only the gateway's key, and that decodes them all.
    if let Some(coding) = still_encoded(&answer.headers).filter(|_| !head_only) {
        match body_is_empty(&mut answer, cancel).await {
            Ok(true) => {}
            Ok(false) => {
                return failed(&Error::InsecureEndpoint {
                    url: upstream.origin(),
                    reason: format!(
                        "it answered in content-encoding {coding}, which the pool does not undo (it asks for gzip, and undoes it only as a body's one coding): the gateway cannot search such a body for an echoed credential, and does not relay it"
                    ),
                })
            }
            Err(e) => return failed(&e),
        }
    }
    if let Some(gateway) = results_here {
        answer = match results_through_gateway(answer, &upstream.apis, gateway, cancel).await {
            Ok(answer) => answer,
            // Coded as the pool's failures are (it went out without its code).
            Err(e) => return failed(&e),
        };
    }
    let relayed = relayed_head_size(&answer);
    if relayed > MAX_RELAYED_HEAD {
        return failed(&Error::Network {
            what: "the API",
            detail: format!(
                "its answer's head is {relayed} bytes, more than the {MAX_RELAYED_HEAD} the gateway relays (a client's HTTP parser refuses such a head: Node's fetch and the SDKs past 16 KB)"
            ),
            never_connected: false,
        });
    }
    let begun = if head_only {
        Ok(answer)
    } else {
        body_begun(answer, cancel).await
    };
    match begun {
        Ok(answer) => respond(answer),
        Err(e) => failed(&e),
    }
}

/// The pool's message, marked as the pool's (a client shows it among the API's): once, as a
/// message that names the pool already ("anthropic-pool has no accounts in …") reads.
fn pool_says(e: &Error) -> String {
    // It can quote a name of the pool file, which can hold a credential.
    let message = crate::secret::scrub_tokens(&e.to_string());
    if message.starts_with("anthropic-pool") {
        message
    } else {
        format!("anthropic-pool: {message}")
    }
}

/// The pool's own failure in Anthropic's shape, its code in `x-oauth-pool-error`.
fn failed(e: &Error) -> Response<AnyBody> {
    let (status, kind) = match e {
        Error::NoUsableAccount(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
        Error::Network { .. } => (StatusCode::BAD_GATEWAY, "api_error"),
        Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Error::Aborted => (StatusCode::SERVICE_UNAVAILABLE, "api_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
    };
    let mut res = error(status, kind, &pool_says(e));
    if let Ok(v) = hyper::header::HeaderValue::from_str(e.code()) {
        res.headers_mut().insert("x-oauth-pool-error", v);
    }
    // A 5xx is retried by the SDKs, and these are not fixed by asking again a second later:
    // the Anthropic SDK asked three times before its user read why.
    if Error::asking_again_cannot_help(e.code()) {
        res.headers_mut().insert(
            "x-should-retry",
            hyper::header::HeaderValue::from_static("false"),
        );
    }
    res
}

/// The answer once its body has begun: a small body of known size whole, any other its first
/// bytes (or its end). Until a byte has reached the client, an upstream that breaks off or goes
/// silent is the pool's 502 `NETWORK`, as the library's fetch rejects: sent at once, the head
/// was a 200 followed by a cut connection (a cut JSON the SDKs do not retry), or, for a body
/// broken at its first bytes, no answer at all.
async fn body_begun(
    mut answer: fetch::Answer,
    cancel: &tokio_util::sync::CancellationToken,
) -> crate::error::Result<fetch::Answer> {
    let mut response = match std::mem::replace(&mut answer.body, Body::Full(Bytes::new())) {
        Body::Stream(response) => response,
        begun => {
            answer.body = begun;
            return Ok(answer);
        }
    };
    // A declared length bounds what hyper reads: asking one byte more reads it to its end.
    let read = crate::body::small_read(&response).unwrap_or(1);
    let (start, whole) = fetch::peek(&mut response, read, cancel).await?;
    answer.body = if whole {
        Body::Full(start)
    } else {
        Body::Peeked(start, response)
    };
    Ok(answer)
}

/// The gateway's own origin as this client reaches it, for an answer about message batches:
/// those name where their results are (`results_url`, on the API's origin), and a client
/// fetches that with the headers it sends the gateway, its key with them, straight to the API.
/// An empty origin when the request names none usable (no `Host`, as HTTP/1.0 may send, or one
/// that is not a plain host and port): such an answer was relayed unchecked, and a
/// `results_url` on another origin reached the client; now any is refused.
fn batch_answer(parts: &hyper::http::request::Parts, scheme: &'static str) -> Option<String> {
    let path = parts.uri.path();
    // The results themselves are the model's words, never rewritten.
    if !path.starts_with("/v1/messages/batches") || path.trim_end_matches('/').ends_with("/results")
    {
        return None;
    }
    // A proxy in front names the host the client asked for (nginx sends its upstream's address
    // as `Host` unless told otherwise). A client naming one itself affects only its own answer.
    let named = |name: &str| {
        let value = parts.headers.get(name)?.to_str().ok()?;
        value.split(',').next().map(str::trim)
    };
    let host = named("x-forwarded-host")
        .filter(|h| plain_host(h))
        .or_else(|| named("host"))
        .filter(|h| plain_host(h));
    let origin = host.and_then(|host| {
        let name = host.parse::<hyper::http::uri::Authority>().ok()?;
        let scheme = client_scheme(parts, scheme, name.host());
        Some(format!("{scheme}://{host}"))
    });
    Some(origin.unwrap_or_default())
}

/// A host and port only: nothing that would make a URL built on it point anywhere else.
fn plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
}

/// The scheme the client reached the gateway by, for the URLs it is sent back to with its key.
/// Behind a reverse proxy that ends TLS (nginx, Caddy), the listener's `http` was the proxy's
/// leg, not the client's: a results URL of `http://<public host>` had the SDK send the gateway's
/// key in clear over the network. So a proxy's `X-Forwarded-Proto` (or `Forwarded: proto=`) is
/// taken, and without one, a request from this machine for a name that is not loopback (a
/// proxy here, forwarding a public name) is taken to have come over TLS: wrong, that URL fails
/// to connect; the other way, it leaked the key.
fn client_scheme(
    parts: &hyper::http::request::Parts,
    listener: &'static str,
    host: &str,
) -> &'static str {
    if listener == "https" {
        return "https";
    }
    if let Some(said) = forwarded_proto(&parts.headers) {
        return said;
    }
    let from_here = parts
        .extensions
        .get::<super::Peer>()
        .is_some_and(|peer| peer.0.ip().to_canonical().is_loopback());
    if from_here && !super::is_loopback_host(host) {
        "https"
    } else {
        listener
    }
}

/// The scheme a proxy says the client used: the first (the client's own hop) of
/// `X-Forwarded-Proto`, else of `Forwarded`'s `proto=`; None when neither says http or https.
fn forwarded_proto(headers: &hyper::HeaderMap) -> Option<&'static str> {
    let first = |name: &str| {
        let value = headers.get(name)?.to_str().ok()?;
        value.split(',').next().map(str::trim)
    };
    let said = first("x-forwarded-proto").or_else(|| {
        first("forwarded")?.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case("proto")
                .then(|| value.trim().trim_matches('"'))
        })
    })?;
    if said.eq_ignore_ascii_case("https") {
        Some("https")
    } else if said.eq_ignore_ascii_case("http") {
        Some("http")
    } else {
        None
    }
}

/// The most of a batch answer read to point its `results_url` at the gateway (a page of a
/// hundred batches is about 60 KB); a bigger one is refused, unchecked.
const MAX_BATCH_ANSWER: usize = 4 * 1024 * 1024;

/// A batch answer with the API's URLs in it (`"https://api.anthropic.com/v1/...`, or those of
/// any origin in `apis`) pointing at the gateway instead, so that the client reads the results
/// through the pool, from the account that holds them, with the gateway's key going nowhere else.
async fn results_through_gateway(
    mut answer: fetch::Answer,
    apis: &[String],
    gateway: &str,
    cancel: &tokio_util::sync::CancellationToken,
) -> crate::error::Result<fetch::Answer> {
    // Whatever type the answer says it is: the SDKs read JSON out of more than
    // `application/json` (a `+json` type, parameters), and then fetch the `results_url` in it.
    if !(200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let (start, mut response) = match std::mem::replace(&mut answer.body, Body::Full(Bytes::new()))
    {
        Body::Full(bytes) => (bytes, None),
        Body::Stream(response) => (Bytes::new(), Some(response)),
        Body::Peeked(start, response) => (start, Some(response)),
    };
    let (body, whole) = match response.as_mut() {
        None => (start, true),
        Some(r) => {
            let (rest, whole) = fetch::peek(r, MAX_BATCH_ANSWER, cancel).await?;
            ([start, rest].concat().into(), whole)
        }
    };
    answer.body = match response {
        Some(_) if !whole => {
            return Err(Error::InsecureEndpoint {
                url: apis[0].clone(),
                reason: format!(
                    "its answer about a batch is larger than {} MB, more than the gateway reads to check where it names the results (a page of a hundred batches is about 60 KB): it is not relayed",
                    MAX_BATCH_ANSWER / (1024 * 1024)
                ),
            })
        }
        _ => {
            let body = match gateway {
                "" => body,
                _ => apis
                    .iter()
                    .fold(body, |body, api| point_at(&body, api, gateway)),
            };
            if let Some(mut elsewhere) = results_elsewhere(&body, gateway) {
                // The URL is the upstream's text: it may quote the credential it was sent.
                crate::echo::scrub_text(&mut elsewhere, &answer.presented);
                let elsewhere = crate::printable::bounded(&elsewhere);
                let reason = match gateway {
                    "" => format!(
                        "its answer about a batch names the results at {elsewhere}, and the request names no host the gateway could point them at instead (no Host, or not a plain host and port): the client would fetch them there with the gateway's key"
                    ),
                    _ => format!(
                        "its answer about a batch names the results at {elsewhere}, off the API's origin: the client would fetch them there with the gateway's key"
                    ),
                };
                return Err(Error::InsecureEndpoint {
                    url: apis[0].clone(),
                    reason,
                });
            }
            Body::Full(body)
        }
    };
    Ok(answer)
}

/// The first `results_url` of a batch answer that does not lead back to the gateway once
/// `point_at` has run: the SDKs fetch it as it stands, with the gateway's key. A body that does
/// not parse here is refused too, since a client's parser may still read a URL in it.
fn results_elsewhere(body: &[u8], gateway: &str) -> Option<String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Some("a place this gateway cannot read (the answer is not JSON it parses)".into());
    };
    let here = format!("{gateway}/");
    let mut left = vec![&value];
    while let Some(v) = left.pop() {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        serde_json::Value::String(url)
                            if k == "results_url"
                                && (gateway.is_empty() || !url.starts_with(&here)) =>
                        {
                            return Some(url.clone());
                        }
                        _ => left.push(v),
                    }
                }
            }
            serde_json::Value::Array(a) => left.extend(a),
            _ => {}
        }
    }
    None
}

/// `body` with every JSON string that starts with `api` + `/v1/` starting with `gateway` instead.
fn point_at(body: &[u8], api: &str, gateway: &str) -> Bytes {
    let from = format!("\"{api}/v1/");
    let to = format!("\"{gateway}/v1/");
    let finder = memchr::memmem::Finder::new(from.as_bytes());
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = finder.find(rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to.as_bytes());
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out.into()
}

/// The answer as the client gets it: status, headers, and the body streaming through the usage
/// tap chunk by chunk, each chunk within the response timeout.
/// Answer headers about the API's origin, not the gateway's, never relayed: `alt-svc` told the
/// client the gateway served HTTP/3 where the API does, and `set-cookie` handed every client the
/// cookies of the account that served it (the gateway sends no client's cookie upstream, so they
/// did nothing but tie clients to accounts).
const ORIGINS_OWN: &[&str] = &["alt-svc", "set-cookie"];

/// The most of an answer's head the gateway relays: what Node's HTTP parser takes by default
/// (its fetch, the SDKs, Claude Code). An API's head is a few KB; one past this reached the
/// client as a 200 it could not read (curl ran out of memory on one of 120 KB).
const MAX_RELAYED_HEAD: usize = 16 * 1024;

/// The bytes the answer's head takes as relayed (`respond`): each line, its name, `: `, value
/// and line end.
fn relayed_head_size(answer: &fetch::Answer) -> usize {
    answer
        .headers
        .iter()
        .filter(|(k, _)| !ORIGINS_OWN.iter().any(|own| k.eq_ignore_ascii_case(own)))
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + answer.status_text.len()
        + 15
        // What hyper adds on the way out: `date` (37 bytes), the framing (`transfer-encoding:
        // chunked` or a `content-length`, up to 28) and `connection: close` or `keep-alive`
        // (up to 24). Left out, a head counted at 16,352 bytes went out at 16,442, which
        // Node's fetch refused.
        + ADDED_ON_THE_WAY_OUT
}

/// The most hyper adds to a relayed head (`relayed_head_size`), with room to spare.
const ADDED_ON_THE_WAY_OUT: usize = 128;

fn respond(answer: fetch::Answer) -> Response<AnyBody> {
    let tap = answer
        .usage
        .filter(|sink| sink.wanted(answer.event_stream))
        .map(|sink| Tapped {
            tap: UsageTap::new(answer.event_stream),
            sink: Some(sink),
        });
    // The client holds the gateway's key, not the pool's tokens: an echo of the credential
    // in the body is taken out as it passes (the headers already were, in the driver).
    let mut redactor = Redactor::new(answer.presented);
    let body: AnyBody = match answer.body {
        Body::Full(bytes) => {
            let mut tap = tap;
            if let Some(t) = tap.as_mut() {
                t.tap.observe(&bytes);
                t.report();
            }
            let start = redactor.pass(bytes);
            match redactor.finish() {
                rest if rest.is_empty() => full(start),
                rest => full([start, rest].concat().into()),
            }
        }
        Body::Stream(response) => stream_body(None, response, tap, redactor),
        Body::Peeked(start, response) => stream_body(Some(start), response, tap, redactor),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in &answer.headers {
        if ORIGINS_OWN.iter().any(|own| k.eq_ignore_ascii_case(own)) {
            continue;
        }
        // A value is one character per byte (`fetch::byte_string`): its bytes go back as sent.
        let value = if v.is_ascii() {
            hyper::header::HeaderValue::from_str(v).ok()
        } else {
            crate::fetch::byte_string_bytes(v)
                .and_then(|b| hyper::header::HeaderValue::from_bytes(&b).ok())
        };
        if let (Ok(name), Some(value)) =
            (hyper::header::HeaderName::from_bytes(k.as_bytes()), value)
        {
            res.headers_mut().append(name, value);
        }
    }
    res
}

/// The usage tap of one streamed answer; reports when the stream ends or is dropped (a client
/// that went away counts what passed).
struct Tapped {
    tap: UsageTap,
    sink: Option<UsageSink>,
}

impl Tapped {
    fn report(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.record(&mut self.tap);
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.report();
    }
}

fn stream_body(
    start: Option<Bytes>,
    response: reqwest::Response,
    tap: Option<Tapped>,
    redactor: Redactor,
) -> AnyBody {
    let idle = http::response_timeout();
    let state = (start, response, tap, redactor);
    let stream = futures_util::stream::unfold(Some(state), move |state| async move {
        let (mut start, mut response, mut tap, mut redactor) = state?;
        loop {
            let chunk = match start.take() {
                Some(first) => first,
                None => match tokio::time::timeout(idle, response.chunk()).await {
                    Ok(Ok(Some(chunk))) => chunk,
                    Ok(Ok(None)) => {
                        if let Some(t) = tap.as_mut() {
                            t.report();
                        }
                        // The start of a credential held back, which the body never finished.
                        let rest = redactor.finish();
                        return (!rest.is_empty()).then(|| (Ok(Frame::data(rest)), None));
                    }
                    Ok(Err(e)) => {
                        let why = format!("upstream broke off: {}", http::describe(&e));
                        return Some((Err(std::io::Error::other(why)), None));
                    }
                    Err(_) => {
                        let why = format!("upstream sent nothing for {} ms", idle.as_millis());
                        return Some((Err(std::io::Error::other(why)), None));
                    }
                },
            };
            if let Some(t) = tap.as_mut() {
                t.tap.observe(&chunk);
            }
            // All of it held back (a credential's start at its end): read on.
            let chunk = redactor.pass(chunk);
            if !chunk.is_empty() {
                let state = Some((None, response, tap, redactor));
                return Some((Ok(Frame::data(chunk)), state));
            }
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(stream.boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_answer_names_its_results_here_or_is_refused() {
        let gw = "http://127.0.0.1:4000";
        let here = br#"{"data":[{"results_url":"http://127.0.0.1:4000/v1/messages/batches/b/results"},{"results_url":null}]}"#;
        assert_eq!(results_elsewhere(here, gw), None);
        assert_eq!(results_elsewhere(b"  ", gw), None);
        let away = br#"{"data":[{"id":"b","results_url":"http://127.0.0.1:40001/v1/x"}]}"#;
        assert_eq!(
            results_elsewhere(away, gw).as_deref(),
            Some("http://127.0.0.1:40001/v1/x"),
            "another port of the same host is another origin"
        );
        assert!(results_elsewhere(b"{\"results_url\":", gw).is_some());
    }

    #[test]
    fn a_body_is_still_encoded_unless_every_coding_it_names_is_identity() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(still_encoded(&h(&[("content-type", "text/plain")])), None);
        assert_eq!(
            still_encoded(&h(&[("Content-Encoding", " identity ,")])),
            None
        );
        assert_eq!(
            still_encoded(&h(&[("content-encoding", "br")])).as_deref(),
            Some("br")
        );
        // Named twice, or in one list: every coding counts, and identity is none.
        let both = h(&[
            ("content-encoding", "identity"),
            ("Content-Encoding", "x-gzip, IDENTITY"),
        ]);
        assert_eq!(still_encoded(&both).as_deref(), Some("x-gzip"));
    }

    /// A store whose key is wrong or missing is not mended by asking again: its 500 went
    /// without `x-should-retry: false`, and the SDKs asked three times before saying why.
    #[test]
    fn failures_asking_again_cannot_mend_say_so_and_others_do_not() {
        let retry = |e: Error| {
            let res = failed(&e);
            let said = res
                .headers()
                .get("x-should-retry")
                .map(|v| v.to_str().unwrap().to_string());
            (res.status().as_u16(), said)
        };
        let no = Some("false".to_string());
        assert_eq!(
            retry(Error::StoreKey("wrong key".into())),
            (500, no.clone())
        );
        assert_eq!(
            retry(Error::NoUsableAccount("none".into())),
            (503, no.clone())
        );
        assert_eq!(retry(Error::InvalidArgument("bad".into())), (400, no));
        assert_eq!(retry(Error::StoreUnavailable("down".into())), (500, None));
        assert_eq!(retry(Error::Aborted), (503, None));
    }

    #[test]
    fn a_batch_answer_names_the_gateway_where_it_named_the_api() {
        let api = "https://api.anthropic.com";
        let body = br#"{"data":[{"id":"msgbatch_01","results_url":"https://api.anthropic.com/v1/messages/batches/msgbatch_01/results"},{"results_url":null,"note":"text naming https://api.anthropic.com/v1/x stays"}]}"#;
        let out = point_at(body, api, "http://127.0.0.1:8787");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"data":[{"id":"msgbatch_01","results_url":"http://127.0.0.1:8787/v1/messages/batches/msgbatch_01/results"},{"results_url":null,"note":"text naming https://api.anthropic.com/v1/x stays"}]}"#
        );
        assert_eq!(point_at(b"{}", api, "http://g").as_ref(), b"{}");
        // Another origin that merely starts alike is not the API's.
        let other = br#"{"u":"https://api.anthropic.com.evil/v1/a"}"#;
        assert_eq!(point_at(other, api, "http://g").as_ref(), other);
    }

    #[test]
    fn only_a_plain_host_names_the_gateway() {
        let parts = |path: &str, host: Option<&str>| {
            let mut b = hyper::Request::builder().uri(path);
            if let Some(h) = host {
                b = b.header("host", h);
            }
            b.body(()).unwrap().into_parts().0
        };
        let at = |path, host| batch_answer(&parts(path, host), "http");
        assert_eq!(
            at("/v1/messages/batches/msgbatch_01", Some("127.0.0.1:8787")).as_deref(),
            Some("http://127.0.0.1:8787")
        );
        assert_eq!(
            at("/v1/messages/batches", Some("[::1]:9")).as_deref(),
            Some("http://[::1]:9")
        );
        assert_eq!(at("/v1/messages", Some("127.0.0.1:8787")), None);
        assert_eq!(
            at(
                "/v1/messages/batches/msgbatch_01/results",
                Some("127.0.0.1:8787")
            ),
            None,
            "the results are the model's words"
        );
        // None usable: no origin to point the results at, so any results_url is refused.
        assert_eq!(at("/v1/messages/batches", None).as_deref(), Some(""));
        for host in ["evil.test/x?", "a@b", "a b", "a#b", "gw~1", ""] {
            assert_eq!(
                at("/v1/messages/batches", Some(host)).as_deref(),
                Some(""),
                "{host}"
            );
        }
        let refused =
            br#"{"results_url":"https://api.anthropic.com/v1/messages/batches/b/results"}"#;
        assert!(results_elsewhere(refused, "").is_some());
        assert!(results_elsewhere(br#"{"results_url":null}"#, "").is_none());
    }

    #[test]
    fn results_go_back_by_the_scheme_the_client_used_behind_a_proxy_that_ends_tls() {
        let ask = |host: &str, peer: &str, said: &[(&str, &str)], listener| {
            let mut b = hyper::Request::builder()
                .uri("/v1/messages/batches")
                .header("host", host);
            for (name, value) in said {
                b = b.header(*name, *value);
            }
            let (mut parts, ()) = b.body(()).unwrap().into_parts();
            parts
                .extensions
                .insert(super::super::Peer(peer.parse().unwrap()));
            batch_answer(&parts, listener).unwrap()
        };
        let (here, away) = ("127.0.0.1:50000", "192.0.2.7:50000");
        let xfp = |v| vec![("x-forwarded-proto", v)];
        let forwarded = vec![(
            "forwarded",
            "for=192.0.2.1;Proto=\"https\";host=x, proto=http",
        )];
        let cases = [
            // Direct: the listener's scheme.
            (
                "127.0.0.1:8787",
                here,
                vec![],
                "http",
                "http://127.0.0.1:8787",
            ),
            (
                "localhost:8787",
                here,
                vec![],
                "http",
                "http://localhost:8787",
            ),
            ("gw.lan:8787", away, vec![], "http", "http://gw.lan:8787"),
            ("gw.lan", away, vec![], "https", "https://gw.lan"),
            // A proxy here forwarding a public name, saying nothing: taken to be TLS.
            (
                "pool.example.com",
                here,
                vec![],
                "http",
                "https://pool.example.com",
            ),
            (
                "pool.example.com",
                "[::1]:5",
                vec![],
                "http",
                "https://pool.example.com",
            ),
            // What a proxy says is taken, its first (the client's) hop; never below the
            // listener's TLS.
            ("gw.lan", away, xfp("https"), "http", "https://gw.lan"),
            ("gw.lan", away, xfp("HTTPS, http"), "http", "https://gw.lan"),
            (
                "pool.example.com",
                here,
                xfp("http"),
                "http",
                "http://pool.example.com",
            ),
            ("gw.lan", away, xfp("http"), "https", "https://gw.lan"),
            ("gw.lan", away, forwarded, "http", "https://gw.lan"),
            ("gw.lan", away, xfp("gopher"), "http", "http://gw.lan"),
            // The host a proxy says the client asked for, when it is a plain one.
            (
                "127.0.0.1:8787",
                here,
                vec![
                    ("x-forwarded-host", "pool.example.com"),
                    ("x-forwarded-proto", "https"),
                ],
                "http",
                "https://pool.example.com",
            ),
            (
                "127.0.0.1:8787",
                here,
                vec![("x-forwarded-host", "evil.test/x?")],
                "http",
                "http://127.0.0.1:8787",
            ),
        ];
        for (host, peer, said, listener, expected) in cases {
            assert_eq!(
                ask(host, peer, &said, listener),
                expected,
                "{host} {said:?}"
            );
        }
    }

    #[test]
    fn the_gateway_key_in_a_target_as_sent_or_percent_encoded_is_found() {
        let key = crate::secret::Secret::new("oauth-pool-gw-0123456789abcdef");
        let holds = |target: &str| target_holds_key(&target.parse().unwrap(), &key);
        assert!(holds("/v1/models?key=oauth-pool-gw-0123456789abcdef"));
        assert!(holds("/v1/models?key=%6Fauth-pool-gw-0123456789abcdef&x=1"));
        assert!(holds("/v1/oauth-pool-gw-0123456789abcdef/messages"));
        assert!(!holds("/v1/models?key=oauth-pool-gw-0123456789abcde"));
        assert!(!holds("/v1/messages?beta=true"));
    }

    #[test]
    fn a_header_holding_the_gateway_key_is_not_passed_on() {
        let key = crate::secret::Secret::new("oauth-pool-gw-0123456789abcdef");
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            "x-auth-token",
            "oauth-pool-gw-0123456789abcdef".parse().unwrap(),
        );
        headers.insert(
            "cookie",
            "a=b; gw=oauth-pool-gw-0123456789abcdef".parse().unwrap(),
        );
        headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
        headers.insert("x-oauth-pool-gw-0123456789abcdef", "1".parse().unwrap());
        let names: Vec<String> = header_pairs(&headers, &key)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["anthropic-version"]);
        // A name is lower-cased on its way in: a key in capitals is found there too.
        let key = crate::secret::Secret::new("oauth-pool-GW-0123456789ABCDEF");
        let mut headers = hyper::HeaderMap::new();
        headers.insert("x-oauth-pool-gw-0123456789abcdef", "1".parse().unwrap());
        headers.insert("anthropic-version", "2023-06-01".parse().unwrap());
        let names: Vec<String> = header_pairs(&headers, &key)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names, ["anthropic-version"]);
    }

    #[test]
    fn only_paths_that_stay_under_v1_are_forwarded() {
        for ok in [
            "/v1",
            "/v1/",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/models/claude-x.y",
            "/v1/a..b/.c/d.",
        ] {
            assert!(is_api_path(ok), "{ok}");
        }
        for refused in [
            "/",
            "/v2/messages",
            "/v1x",
            "/api/oauth/profile",
            "/v1/../api/oauth/profile",
            "/v1/%2e%2e/api/oauth/usage",
            "/v1/.%2E/x",
            "/v1/%2E./x",
            "/v1/./messages",
            "/v1/..",
            "/v1/%2e",
            "/v1/..\\x",
            "/v1/a%2f..%2f..%2fapi",
            "/v1/a%5c..",
            "/v1/A%2F",
        ] {
            assert!(!is_api_path(refused), "{refused}");
        }
        // As the driver will parse it, a dot segment is already resolved away.
        let parsed = url::Url::parse("http://127.0.0.1:9/v1/%2e%2e/api/oauth/usage").unwrap();
        assert!(!is_api_path(parsed.path()));
    }
}
