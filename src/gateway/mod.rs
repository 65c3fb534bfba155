//! The pool gateway (`oauth-pool serve`): an Anthropic-compatible HTTP endpoint on the addon's
//! runtime, so any client that takes a base URL (the Anthropic SDKs, the AI SDK, Claude Code's
//! `ANTHROPIC_BASE_URL`, OpenCode 2) shares the pool. It is a driver like the fetch: every
//! `/v1/*` request goes through the same engine (`fetch::pool_fetch`); no second policy.
//!
//! - Nobody uses the pool without the gateway key (`x-api-key` or `Authorization: Bearer`,
//!   compared in constant time); the client's key is never forwarded.
//! - Loopback only, unless `allow_remote` with TLS.
//! - Hostile clients get bounded answers: headers at most 64 KB and within the header timeout
//!   (slowloris), bodies at most 32 MB and within the body timeout, at most 256 MB of bodies
//!   held at once, a cap on connections.
//! - `close` stops accepting and lets streams in flight finish for a bounded time.
//!
//! Here: listening, TLS, connections and routing; `forward` serves `/v1/*`, `metrics` serves
//! `/healthz` and `/metrics`, `key` keeps the gateway key.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::fsread;
use crate::secret::Secret;
use crate::store::Store;

mod forward;
mod key;
mod metrics;

pub use key::gateway_key;

/// The largest request body (a Messages request with images and a long history stays far below).
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// The request bodies held at once, all connections together (each is kept until its answer
/// came, for a resend on failover): without it, the connection cap times `MAX_BODY` (16 GB)
/// could be held. Past it, a request is answered 503 with `retry-after`.
pub const BODIES_HELD: usize = 256 * 1024 * 1024;
/// Request line plus headers.
const MAX_HEADERS: usize = 64 * 1024;

pub(super) type AnyBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub struct GatewayOptions {
    pub host: String,
    pub port: u16,
    pub allow_remote: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub store: Store,
    pub key: Secret,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

struct State {
    pub(super) engine: Arc<Engine>,
    pub(super) key: Secret,
    pub(super) metrics: metrics::Metrics,
    pub(super) body_timeout: Duration,
    /// Bytes of request bodies held, one permit a byte (`BODIES_HELD`).
    pub(super) bodies: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the gateway closes: requests waiting for an upstream answer give up.
    pub(super) closing: CancellationToken,
    /// `http` or `https`: how clients reach the gateway.
    pub(super) scheme: &'static str,
}

pub struct Gateway {
    addr: SocketAddr,
    tls: bool,
    shutdown: CancellationToken,
    drained: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    drain: Arc<std::sync::Mutex<Duration>>,
    pub(super) engine: Arc<Engine>,
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path, what: &str| {
        fsread::read_regular(p, 1024 * 1024, true).map_err(|e| {
            Error::InvalidArgument(format!("the TLS {what} {} refused: {e}", p.display()))
        })
    };
    let cert_pem = read(cert, "certificate")?;
    let key_pem = read(key, "key")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "the TLS certificate {} is not PEM: {e}",
                cert.display()
            ))
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        Error::InvalidArgument(format!(
            "the TLS key {} is not a PEM private key: {e}",
            key.display()
        ))
    })?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::InvalidArgument(format!(
                "the TLS certificate and key do not fit together: {e}"
            ))
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Why the gateway cannot listen, with what to do about it: the OS's own words ("Address already
/// in use") left a user guessing that another gateway held the port and that another one works.
fn listen_failure(host: &str, port: u16, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "; another program (another `oauth-pool serve`?) listens there: stop it, or choose another port (--port 0 picks a free one)"
        }
        std::io::ErrorKind::PermissionDenied if port < 1024 => {
            "; ports below 1024 need privileges: choose a port from 1024 up (--port 0 picks a free one)"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no interface of this machine has that address",
        _ => "",
    };
    format!("cannot listen on {host}:{port}: {e}{hint}")
}

/// Starts listening. Refuses a non-loopback address without `allow_remote`, and `allow_remote`
/// without TLS: the gateway hands out the pool's accounts to whoever holds the key, and a key
/// must not cross a network in clear text.
pub async fn start(opts: GatewayOptions) -> Result<Gateway> {
    if !is_loopback_host(&opts.host) && !opts.allow_remote {
        return Err(Error::InvalidArgument(format!(
            "{} is not a loopback address: listening for other hosts needs --allow-remote (and TLS)",
            opts.host
        )));
    }
    if !is_loopback_host(&opts.host) && opts.tls.is_none() {
        return Err(Error::InvalidArgument(
            "--allow-remote needs --tls-cert and --tls-key: the gateway key would cross the network in clear text".into(),
        ));
    }
    let acceptor = match &opts.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let host = opts.host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1"
    } else {
        host
    };
    let listener = TcpListener::bind((host, opts.port))
        .await
        .map_err(|e| Error::InvalidArgument(listen_failure(&opts.host, opts.port, &e)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::InvalidArgument(format!("no local address: {e}")))?;
    let closing = CancellationToken::new();
    let state = Arc::new(State {
        engine: Engine::for_store(opts.store),
        key: opts.key,
        metrics: metrics::Metrics::new(),
        body_timeout: opts.body_timeout,
        bodies: Arc::new(tokio::sync::Semaphore::new(BODIES_HELD)),
        closing: closing.clone(),
        scheme: if opts.tls.is_some() { "https" } else { "http" },
    });
    let shutdown = CancellationToken::new();
    let drain = Arc::new(std::sync::Mutex::new(Duration::from_secs(10)));
    let engine = state.engine.clone();
    let task = crate::runtime::spawn_boxed(accept_loop(
        listener,
        acceptor,
        state,
        shutdown.clone(),
        drain.clone(),
        opts.header_timeout,
        opts.max_connections,
    ));
    Ok(Gateway {
        addr,
        tls: opts.tls.is_some(),
        shutdown,
        drained: tokio::sync::Mutex::new(Some(task)),
        drain,
        engine,
    })
}

impl Gateway {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.addr.ip() {
            IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", self.addr.port()),
            IpAddr::V4(ip) => format!("{scheme}://{ip}:{}", self.addr.port()),
        }
    }

    /// Stops accepting; streams in flight get `drain` to finish, then are cut. Idempotent.
    pub async fn close(&self, drain: Duration) {
        if let Ok(mut d) = self.drain.lock() {
            *d = drain;
        }
        self.shutdown.cancel();
        if let Some(task) = self.drained.lock().await.take() {
            let _ = task.await;
        }
        // What the last requests recorded (last use, quota, usage) reaches the store before the
        // process that asked for the close exits.
        if let Err(e) = self.engine.flush().await {
            tracing::warn!(error = %e, "the last bookkeeping could not be written before the close");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    shutdown: CancellationToken,
    drain: Arc<std::sync::Mutex<Duration>>,
    header_timeout: Duration,
    max_connections: usize,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Fired once the drain time is over: what is still open then is cut (the connection, the
    // answer's body, and its upstream request with it). Without it, a stream still running kept
    // its connections and its task after `close()` resolved, until its upstream ended.
    let cut = CancellationToken::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS));
    loop {
        let (stream, _peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: a short, final answer instead of an unbounded queue; in TLS, as
            // TLS (a client reads plain text on a TLS port as a protocol error, not a 503).
            // Each refusal holds its connection up to `REFUSAL_TIME`: past `REFUSALS` at once
            // (a flood), a connection is closed unanswered, else a flood of connections that
            // never handshake held a descriptor and a task each.
            let Ok(refusing) = refusals.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            match &acceptor {
                Some(tls) => {
                    let tls = tls.clone();
                    crate::runtime::spawn_boxed(async move {
                        let _refusing = refusing;
                        if let Ok(Ok(stream)) =
                            tokio::time::timeout(REFUSAL_TIME, tls.accept(stream)).await
                        {
                            refuse_busy(stream).await;
                        }
                    });
                }
                None => {
                    crate::runtime::spawn_boxed(async move {
                        let _refusing = refusing;
                        refuse_busy(stream).await;
                    });
                }
            }
            continue;
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(MAX_HEADERS);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(req, state).await) }
        });
        let tls = acceptor.clone();
        let watcher = graceful.watcher();
        let cut = cut.clone();
        crate::runtime::spawn_boxed(async move {
            let _permit = permit;
            // One stream type for plain and TLS connections: hyper's server code is compiled
            // once, not once per kind of stream.
            let stream = match tls {
                Some(tls) => match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                    Ok(Ok(stream)) => Either::Right(stream),
                    _ => return,
                },
                None => Either::Left(stream),
            };
            let stream = WriteStall::new(stream, crate::http::response_timeout());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = watcher.watch(conn) => {}
                _ = cut.cancelled() => {}
            }
        });
    }
    drop(listener);
    let wait = drain.lock().map(|d| *d).unwrap_or(Duration::from_secs(10));
    if tokio::time::timeout(wait, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway: streams still open after the drain time were cut");
    }
    cut.cancel();
    state.closing.cancel();
}

/// A connection whose client takes none of what is written to it for `limit` fails its write.
/// A client that stops reading (stopped with Ctrl-Z, hung, hostile) stops the answer where it
/// is: nothing is read on from upstream, so nothing piles up here, but without this its
/// connection slot, its task and the upstream stream were held for as long as it lived. The
/// limit is the response timeout, the time the gateway waits on upstream between chunks.
struct WriteStall<S> {
    inner: S,
    limit: Duration,
    /// Armed when a write could not go ahead, cleared by any that did.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteStall<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteStall {
            inner,
            limit,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took nothing for {} ms", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// How long a refused connection is given to take its 503 (and, in TLS, its handshake).
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Connections being refused at once (past the connection cap).
const REFUSALS: usize = 64;

async fn refuse_busy(mut stream: impl tokio::io::AsyncWrite + Unpin) {
    use tokio::io::AsyncWriteExt;
    let body = error_body(
        "overloaded_error",
        "the pool gateway has too many connections; retry shortly",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

pub(super) fn error_body(kind: &str, message: &str) -> Bytes {
    Bytes::from(
        json!({ "type": "error", "error": { "type": kind, "message": message } }).to_string(),
    )
}

pub(super) fn full(body: Bytes) -> AnyBody {
    Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(super) fn error(status: StatusCode, kind: &str, message: &str) -> Response<AnyBody> {
    let mut res = Response::new(full(error_body(kind, message)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

/// An error after which the connection is closed (the rest of what the client sends is not read).
pub(super) fn error_closing(status: StatusCode, kind: &str, message: &str) -> Response<AnyBody> {
    let mut res = error(status, kind, message);
    res.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    res
}

/// The gateway key as the client presented it: `x-api-key`, or `Authorization: Bearer`.
fn authorized(req: &Request<Incoming>, key: &Secret) -> bool {
    let presented = req
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .or_else(|| {
            req.headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token)
        });
    match presented {
        Some(p) => p.as_bytes().ct_eq(key.expose().as_bytes()).into(),
        None => false,
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's name is case-insensitive
/// and spaces or tabs may follow it (RFC 9110, 11.1 and 11.4).
fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_matches([' ', '\t']);
    let (scheme, token) = value.split_once([' ', '\t'])?;
    let token = token.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// An answer given without reading the request: its body is read and dropped first (bounded,
/// as for a body over the limit). Answered while the client still sends, the connection closes
/// on unread bytes, the kernel resets it, and the client sees a reset instead of the answer
/// (a wrong key with a long conversation, through a relay or not).
async fn refuse(req: Request<Incoming>, response: Response<AnyBody>) -> Response<AnyBody> {
    let mut body = req.into_body();
    if !hyper::body::Body::is_end_stream(&body) {
        forward::linger(&mut body, 0).await;
    }
    response
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<AnyBody> {
    let path = req.uri().path().to_string();
    // hyper bounds its read buffer, but a head that arrives in one read can pass it: the limit
    // is checked on what was parsed.
    let head: usize = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let response = if head > MAX_HEADERS {
        refuse(
            req,
            error_closing(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                "the request's headers are over the gateway's 64 KB limit",
            ),
        )
        .await
    } else if req.method() == Method::GET && path == "/healthz" {
        refuse(req, metrics::health(&state).await).await
    } else if !authorized(&req, &state.key) {
        refuse(
            req,
            error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "the pool gateway needs its key, as x-api-key or Authorization: Bearer (oauth-pool serve --show-key prints it)",
            ),
        )
        .await
    } else if req.method() == Method::GET && path == "/metrics" {
        refuse(req, metrics::metrics(&state).await).await
    } else if forward::is_api_path(&path) && forward::is_refused_method(req.method()) {
        refuse(
            req,
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "the pool gateway does not forward CONNECT, TRACE or TRACK",
            ),
        )
        .await
    } else if forward::is_api_path(&path) {
        forward::forward(req, &state).await
    } else {
        refuse(
            req,
            error(
                StatusCode::NOT_FOUND,
                "not_found_error",
                "the pool gateway serves /v1/*, /healthz and /metrics",
            ),
        )
        .await
    };
    state
        .metrics
        .requests
        .get_or_create(&metrics::StatusLabel {
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_limit_and_one_it_takes_goes_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut ours = WriteStall::new(ours, Duration::from_millis(50));
        ours.write_all(&[1u8; 1024]).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            theirs.read_exact(&mut buf).await.unwrap();
            theirs
        });
        // Taken as it is written: no error, however long the whole takes.
        ours.write_all(&[2u8; 1024]).await.unwrap();
        let _theirs = reader.await.unwrap();
        ours.write_all(&[3u8; 1024]).await.unwrap();
        // Nobody reads now: the write fails instead of waiting for good.
        let err = ours.write_all(&[4u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_takes_spaces_or_tabs() {
        for (value, token) in [
            ("Bearer k1", Some("k1")),
            ("bearer k1", Some("k1")),
            ("BEARER  k1 ", Some("k1")),
            ("Bearer\tk1", Some("k1")),
            ("Basic k1", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("Bearerk1", None),
        ] {
            assert_eq!(bearer_token(value), token, "{value:?}");
        }
    }
}
