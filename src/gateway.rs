//! The pool gateway (`oauth-pool serve`): an Anthropic-compatible HTTP endpoint on the addon's
//! runtime, so any client that takes a base URL (the Anthropic SDKs, the AI SDK, Claude Code's
//! `ANTHROPIC_BASE_URL`, OpenCode 2) shares the pool. It is a driver like the fetch: every
//! `/v1/*` request goes through the same engine (`fetch::pool_fetch`); no second policy.
//!
//! - Nobody uses the pool without the gateway key (`x-api-key` or `Authorization: Bearer`,
//!   compared in constant time); the client's key is never forwarded.
//! - Loopback only, unless `allow_remote` with TLS.
//! - Hostile clients get bounded answers: headers at most 64 KB and within the header timeout
//!   (slowloris), bodies at most 32 MB and within the body timeout, a cap on connections.
//! - `close` stops accepting and lets streams in flight finish for a bounded time.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::account::now_ms;
use crate::engine::usage::UsageTap;
use crate::engine::{Blocked, Engine, Event, UsageSink};
use crate::error::{Error, Result};
use crate::fetch::{self, Body, OutgoingRequest};
use crate::secret::Secret;
use crate::store::Store;
use crate::{config, fsread, http};

/// The largest request body (a Messages request with images and a long history stays far below).
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Request line plus headers.
const MAX_HEADERS: usize = 64 * 1024;
const KEY_FILE_MAX: u64 = 4096;
const KEY_PREFIX: &str = "oauth-pool-gw-";

type AnyBody = UnsyncBoxBody<Bytes, std::io::Error>;

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

/// The key clients must present: `OAUTH_POOL_GATEWAY_KEY`, else a key generated once into a
/// 0600 file beside the pool file (`<pool>.gateway-key`), read bounded like any file we did not
/// just write.
pub fn gateway_key(store: &Store) -> Result<Secret> {
    if let Some(k) = config::env("OAUTH_POOL_GATEWAY_KEY").filter(|k| !k.trim().is_empty()) {
        return Ok(Secret::new(k.trim()));
    }
    let path = key_path(store)?;
    match read_key(&path)? {
        Some(key) => Ok(key),
        None => create_key(&path),
    }
}

/// The key in `path`, or None when there is no such file.
fn read_key(path: &Path) -> Result<Option<Secret>> {
    match fsread::read_regular(path, KEY_FILE_MAX, false) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.len() < 16 {
                return Err(Error::InvalidArgument(format!(
                    "the gateway key file {} is too short to be a key: remove it to make a new one",
                    path.display()
                )));
            }
            Ok(Some(Secret::new(text)))
        }
        Err(fsread::ReadError::NotFound) => Ok(None),
        Err(e) => Err(Error::InvalidArgument(format!(
            "the gateway key file {} refused: {e}",
            path.display()
        ))),
    }
}

fn key_path(store: &Store) -> Result<PathBuf> {
    // The fleet store has no file: the key goes where this host's pool file would be.
    let pool = match store.path() {
        Some(p) => p.to_path_buf(),
        None => config::pool_path(None)?,
    };
    let mut name = pool.file_name().unwrap_or_default().to_os_string();
    name.push(".gateway-key");
    Ok(pool.with_file_name(name))
}

fn create_key(path: &Path) -> Result<Secret> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| Error::InvalidArgument(format!("no OS randomness: {e}")))?;
    use base64::Engine as _;
    let key = Secret::new(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    // Written whole under a name of its own, then linked into place: another process never
    // reads a key file that is still empty, and if one links its key first, that key wins.
    let mut temp = path.as_os_str().to_os_string();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let written = opts.open(&temp).and_then(|mut f| {
        use std::io::Write;
        f.write_all(key.expose().as_bytes())
            .and_then(|_| f.sync_all())
    });
    let linked = written.and_then(|_| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(path)?.ok_or_else(|| {
                Error::InvalidArgument(format!("the gateway key file {} vanished", path.display()))
            })
        }
        Err(e) => Err(Error::io(path, "write gateway key", e)),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WindowLabel {
    account: String,
    window: String,
}

struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    failovers: Counter,
    refreshes: Counter,
    cooling: Gauge,
    windows: Family<WindowLabel, Gauge<f64, AtomicU64>>,
    ttfb: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("oauth_pool");
        let requests = Family::<StatusLabel, Counter>::default();
        let failovers = Counter::default();
        let refreshes = Counter::default();
        let cooling = Gauge::default();
        let windows = Family::<WindowLabel, Gauge<f64, AtomicU64>>::default();
        let ttfb = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "requests",
            "Requests answered, by HTTP status",
            requests.clone(),
        );
        registry.register(
            "failovers",
            "Requests moved to another account",
            failovers.clone(),
        );
        registry.register(
            "refreshes",
            "Access tokens refreshed by this process",
            refreshes.clone(),
        );
        registry.register(
            "cooldowns_active",
            "Accounts cooling down now",
            cooling.clone(),
        );
        registry.register(
            "window_utilization",
            "Utilization of each rate-limit window, per account (1 = the whole window)",
            windows.clone(),
        );
        registry.register(
            "upstream_first_byte_seconds",
            "Time from a request's arrival to the upstream answer's headers",
            ttfb.clone(),
        );
        Metrics {
            registry,
            requests,
            failovers,
            refreshes,
            cooling,
            windows,
            ttfb,
        }
    }
}

struct State {
    engine: Arc<Engine>,
    key: Secret,
    metrics: Metrics,
    body_timeout: Duration,
    /// Cancelled when the gateway closes: requests waiting for an upstream answer give up.
    closing: CancellationToken,
}

pub struct Gateway {
    addr: SocketAddr,
    tls: bool,
    shutdown: CancellationToken,
    drained: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    drain: Arc<std::sync::Mutex<Duration>>,
    engine: Arc<Engine>,
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
    let listener = TcpListener::bind((host, opts.port)).await.map_err(|e| {
        Error::InvalidArgument(format!("cannot listen on {}:{}: {e}", opts.host, opts.port))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::InvalidArgument(format!("no local address: {e}")))?;
    let closing = CancellationToken::new();
    let state = Arc::new(State {
        engine: Engine::for_store(opts.store),
        key: opts.key,
        metrics: Metrics::new(),
        body_timeout: opts.body_timeout,
        closing: closing.clone(),
    });
    let shutdown = CancellationToken::new();
    let drain = Arc::new(std::sync::Mutex::new(Duration::from_secs(10)));
    let engine = state.engine.clone();
    let task = tokio::spawn(accept_loop(
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
        self.engine.flush().await;
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
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
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
            // Over the cap: a short, final answer instead of an unbounded queue.
            tokio::spawn(refuse_busy(stream));
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
        match &acceptor {
            Some(tls) => {
                let tls = tls.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, tls.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let watched = graceful.watch(conn);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = watched.await;
                });
            }
        }
    }
    drop(listener);
    let wait = drain.lock().map(|d| *d).unwrap_or(Duration::from_secs(10));
    if tokio::time::timeout(wait, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway: streams still open after the drain time were cut");
    }
    state.closing.cancel();
}

async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = error_body(
        "overloaded_error",
        "the pool gateway has too many connections; retry shortly",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

fn error_body(kind: &str, message: &str) -> Bytes {
    Bytes::from(
        json!({ "type": "error", "error": { "type": kind, "message": message } }).to_string(),
    )
}

fn full(body: Bytes) -> AnyBody {
    Full::new(body)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<AnyBody> {
    let mut res = Response::new(full(error_body(kind, message)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
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
                .and_then(|v| v.trim().strip_prefix("Bearer "))
                .map(str::trim)
        });
    match presented {
        Some(p) => p.as_bytes().ct_eq(key.expose().as_bytes()).into(),
        None => false,
    }
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
        let mut res = error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            "the request's headers are over the gateway's 64 KB limit",
        );
        res.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        res
    } else if req.method() == Method::GET && path == "/healthz" {
        health(&state).await
    } else if !authorized(&req, &state.key) {
        error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "the pool gateway needs its key, as x-api-key or Authorization: Bearer (oauth-pool serve --show-key prints it)",
        )
    } else if req.method() == Method::GET && path == "/metrics" {
        metrics(&state).await
    } else if path.starts_with("/v1/") || path == "/v1" {
        forward(req, &state).await
    } else {
        error(
            StatusCode::NOT_FOUND,
            "not_found_error",
            "the pool gateway serves /v1/*, /healthz and /metrics",
        )
    };
    state
        .metrics
        .requests
        .get_or_create(&StatusLabel {
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

async fn health(state: &State) -> Response<AnyBody> {
    let now = now_ms();
    let body = match state.engine.snapshot().await {
        Ok(pool) => {
            let total = pool.accounts().count();
            let usable = pool
                .accounts()
                .filter(|a| state.engine.blocked(a, None, now) == Blocked::No)
                .count();
            json!({ "ok": usable > 0, "accounts": total, "usable": usable })
        }
        Err(e) => json!({ "ok": false, "error": e.code() }),
    };
    let ok = body["ok"].as_bool().unwrap_or(false);
    let mut res = Response::new(full(Bytes::from(body.to_string())));
    *res.status_mut() = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    res
}

async fn metrics(state: &State) -> Response<AnyBody> {
    let now = now_ms();
    let m = &state.metrics;
    // Two scrapes at once must not both add the same refreshes.
    m.refreshes.inner().fetch_max(
        state.engine.refreshes(),
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Ok(pool) = state.engine.snapshot().await {
        let cooling = pool
            .accounts()
            .filter(|a| matches!(state.engine.blocked(a, None, now), Blocked::Until(_)))
            .count();
        m.cooling.set(cooling as i64);
        // Accounts removed since the last scrape stop being exported.
        m.windows.clear();
        for a in pool.accounts() {
            for w in state.engine.windows(a) {
                let u = if w.reset.is_some_and(|r| r <= now) {
                    0.0
                } else {
                    w.utilization.unwrap_or(0.0)
                };
                m.windows
                    .get_or_create(&WindowLabel {
                        account: a.email.clone(),
                        window: w.name.clone(),
                    })
                    .set(u);
            }
        }
    }
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &m.registry).is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "metrics could not be encoded",
        );
    }
    let mut res = Response::new(full(Bytes::from(text)));
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    res
}

/// The request's headers as the pool's driver takes them (values that are not text dropped).
fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

/// What is left of a refused body is read and dropped (at most this much, for at most
/// `LINGER_FOR`): a client still sending then reads the 413 instead of a reset connection.
const LINGER_BYTES: usize = 2 * MAX_BODY;
const LINGER_FOR: Duration = Duration::from_secs(5);

fn too_large() -> Response<AnyBody> {
    let mut res = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        "the request body is over the gateway's 32 MB limit",
    );
    res.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    res
}

async fn linger(body: &mut Incoming, mut seen: usize) {
    let draining = async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > LINGER_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_FOR, draining).await;
}

enum BodyRead {
    Whole(Bytes),
    TooLarge,
    BrokeOff,
}

/// The request body, at most `MAX_BODY` bytes.
async fn read_body(body: &mut Incoming) -> BodyRead {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return BodyRead::BrokeOff;
        };
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_BODY {
                linger(body, out.len() + data.len()).await;
                return BodyRead::TooLarge;
            }
            out.extend_from_slice(data);
        }
    }
    BodyRead::Whole(out.freeze())
}

async fn forward(req: Request<Incoming>, state: &State) -> Response<AnyBody> {
    let started = Instant::now();
    let declared_too_large = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_BODY as u64);
    let (parts, mut incoming) = req.into_parts();
    if declared_too_large {
        linger(&mut incoming, 0).await;
        return too_large();
    }
    let api = match config::api_url() {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                &e.to_string(),
            )
        }
    };
    let target = format!(
        "{}{}",
        api.origin().ascii_serialization(),
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let method = parts.method.as_str().to_string();
    let headers = header_pairs(&parts.headers);
    let body = match tokio::time::timeout(state.body_timeout, read_body(&mut incoming)).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time",
            )
        }
        Ok(BodyRead::TooLarge) => return too_large(),
        Ok(BodyRead::BrokeOff) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "the request body broke off",
            )
        }
        Ok(BodyRead::Whole(b)) => b,
    };
    let request = OutgoingRequest {
        url: target,
        method,
        headers,
        body: (!body.is_empty()).then_some(body),
    };
    // The upstream call is cancelled when the client goes away (hyper drops this future) or the
    // gateway closes for good.
    let cancel = state.closing.child_token();
    let _guard = cancel.clone().drop_guard();
    let (result, events) = fetch::pool_fetch(&state.engine, request, &cancel).await;
    state.metrics.ttfb.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(answer) => {
            count_events(state, &answer.events);
            respond(answer)
        }
        Err(e) => {
            count_events(state, &events);
            let (status, kind) = match &e {
                Error::NoUsableAccount(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
                Error::Network { .. } => (StatusCode::BAD_GATEWAY, "api_error"),
                Error::InvalidArgument(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
                Error::Aborted => (StatusCode::SERVICE_UNAVAILABLE, "api_error"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "api_error"),
            };
            let mut res = error(status, kind, &format!("anthropic-pool: {e}"));
            if let Ok(v) = hyper::header::HeaderValue::from_str(e.code()) {
                res.headers_mut().insert("x-oauth-pool-error", v);
            }
            res
        }
    }
}

fn count_events(state: &State, events: &[Event]) {
    for e in events {
        if e.kind == "failover" {
            state.metrics.failovers.inc();
        }
        tracing::info!(kind = e.kind, message = %e.message, "gateway");
    }
}

/// The answer as the client gets it: status, headers, and the body streaming through the usage
/// tap chunk by chunk, each chunk within the response timeout.
fn respond(answer: fetch::Answer) -> Response<AnyBody> {
    let tap = answer
        .usage
        .filter(|_| crate::engine::usage::enabled())
        .map(|sink| Tapped {
            tap: UsageTap::new(answer.event_stream),
            sink: Some(sink),
        });
    let body: AnyBody = match answer.body {
        Body::Full(bytes) => {
            let mut tap = tap;
            if let Some(t) = tap.as_mut() {
                t.tap.observe(&bytes);
                t.report();
            }
            full(bytes)
        }
        Body::Stream(response) => stream_body(None, response, tap),
        Body::Peeked(start, response) => stream_body(Some(start), response, tap),
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(v),
        ) {
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
            sink.record(self.tap.finish());
        }
    }
}

impl Drop for Tapped {
    fn drop(&mut self) {
        self.report();
    }
}

fn stream_body(start: Option<Bytes>, response: reqwest::Response, tap: Option<Tapped>) -> AnyBody {
    let idle = http::response_timeout();
    let state = (start, response, tap);
    let stream = futures_util::stream::unfold(Some(state), move |state| async move {
        let (start, mut response, mut tap) = state?;
        if let Some(first) = start {
            if let Some(t) = tap.as_mut() {
                t.tap.observe(&first);
            }
            return Some((Ok(Frame::data(first)), Some((None, response, tap))));
        }
        match tokio::time::timeout(idle, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if let Some(t) = tap.as_mut() {
                    t.tap.observe(&chunk);
                }
                Some((Ok(Frame::data(chunk)), Some((None, response, tap))))
            }
            Ok(Ok(None)) => {
                if let Some(t) = tap.as_mut() {
                    t.report();
                }
                None
            }
            Ok(Err(e)) => Some((
                Err(std::io::Error::other(format!(
                    "upstream broke off: {}",
                    http::describe(&e)
                ))),
                None,
            )),
            Err(_) => Some((
                Err(std::io::Error::other(format!(
                    "upstream sent nothing for {} ms",
                    idle.as_millis()
                ))),
                None,
            )),
        }
    });
    BodyExt::boxed_unsync(StreamBody::new(stream.boxed()))
}
