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
mod half_close;
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
    /// Cancelled when the close begins: held requests are answered then, not cut at its end.
    pub(super) stopping: CancellationToken,
    /// `http` or `https`: how clients reach the gateway.
    pub(super) scheme: &'static str,
    /// Listening on loopback: every request names a loopback host (`/healthz`).
    pub(super) loopback: bool,
}

pub struct Gateway {
    addr: SocketAddr,
    /// The key file this start made, for the caller to say so.
    key_created: Option<PathBuf>,
    tls: bool,
    shutdown: CancellationToken,
    drained: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    drain: Arc<std::sync::Mutex<Duration>>,
    pub(super) engine: Arc<Engine>,
}

pub(super) fn is_loopback_host(host: &str) -> bool {
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
    // Said of the pair ("do not fit together: peer sent no certificates"), a file holding no
    // certificate (empty, another file named by mistake) was not named.
    if certs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the TLS certificate {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
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
            "; another program (another `oauth-pool serve`?) listens there: stop it, or choose another port (0 picks a free one: `--port 0`, or `port: 0` in serve())"
        }
        std::io::ErrorKind::PermissionDenied if port < 1024 => {
            "; ports below 1024 need privileges: choose a port from 1024 up (0 picks a free one: `--port 0`, or `port: 0` in serve())"
        }
        std::io::ErrorKind::AddrNotAvailable => "; no interface of this machine has that address",
        _ => "",
    };
    format!("cannot listen on {host}:{port}: {e}{hint}")
}

enum Listen {
    NoThread(String),
    Failed(io::Error),
}

/// The addresses `host` names, a host name looked up as tokio's `bind` would (`getaddrinfo` on a
/// blocking thread), with the thread's start checked: tokio panicked when the OS refused it (a
/// container at its pids limit), and `serve` failed without a code, the panic printed into the
/// host's terminal.
async fn listen_addresses(host: &str, port: u16) -> std::result::Result<Vec<SocketAddr>, Listen> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let asked = host.to_string();
    let lookup = Box::new(move || {
        (asked.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
    });
    match crate::runtime::blocking(lookup).await {
        Ok(found) => found.map_err(Listen::Failed),
        Err(crate::runtime::NotRun::NoThread(why)) => Err(Listen::NoThread(why)),
        Err(crate::runtime::NotRun::Lost) => Err(Listen::Failed(io::Error::other(
            "the host name lookup stopped",
        ))),
    }
}

/// Starts listening. Refuses a non-loopback address without `allow_remote`, and `allow_remote`
/// without TLS: the gateway hands out the pool's accounts to whoever holds the key, and a key
/// must not cross a network in clear text.
pub async fn start(opts: GatewayOptions) -> Result<Gateway> {
    if !is_loopback_host(&opts.host) && !opts.allow_remote {
        return Err(Error::InvalidArgument(format!(
            "{} is not a loopback address: listening for other hosts needs allowRemote and TLS (`--allow-remote`, `--tls-cert` and `--tls-key` on the command line)",
            opts.host
        )));
    }
    if !is_loopback_host(&opts.host) && opts.tls.is_none() {
        return Err(Error::InvalidArgument(
            "allowRemote (`--allow-remote`) needs TLS, tlsCert and tlsKey (`--tls-cert` and `--tls-key`): the gateway key would cross the network in clear text".into(),
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
    let addrs = listen_addresses(host, opts.port)
        .await
        .map_err(|e| match e {
            Listen::NoThread(why) => Error::NoThread(why),
            Listen::Failed(e) => Error::InvalidArgument(listen_failure(&opts.host, opts.port, &e)),
        })?;
    let listener = TcpListener::bind(&addrs[..])
        .await
        .map_err(|e| Error::InvalidArgument(listen_failure(&opts.host, opts.port, &e)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::InvalidArgument(format!("no local address: {e}")))?;
    // Made only once every refusal is past (options, TLS files, the address taken): a key file
    // made by a refused start was then not named by the start that worked, so nobody was told
    // clients need it.
    let (key, key_created) = gateway_key(&opts.store)?;
    let closing = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let state = Arc::new(State {
        engine: Engine::for_store(opts.store),
        key,
        metrics: metrics::Metrics::new(),
        body_timeout: opts.body_timeout,
        bodies: Arc::new(tokio::sync::Semaphore::new(BODIES_HELD)),
        closing: closing.clone(),
        stopping: shutdown.clone(),
        scheme: if opts.tls.is_some() { "https" } else { "http" },
        loopback: is_loopback_host(&opts.host),
    });
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
        key_created,
        tls: opts.tls.is_some(),
        shutdown,
        drained: tokio::sync::Mutex::new(Some(task)),
        drain,
        engine,
    })
}

impl Gateway {
    pub fn key_created(&self) -> Option<&Path> {
        self.key_created.as_deref()
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        match self.addr.ip() {
            IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{}", self.addr.port()),
            IpAddr::V4(ip) => format!("{scheme}://{ip}:{}", self.addr.port()),
        }
    }

    /// Stops accepting and cuts the streams in flight, at once, from any thread (`close` does
    /// the rest: waits for the server's task and writes the last bookkeeping).
    pub fn stop(&self) {
        if let Ok(mut d) = self.drain.lock() {
            *d = Duration::ZERO;
        }
        self.shutdown.cancel();
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
    let mut short = Shortage::default();
    // Clients that open with HTTP/2's preface: hyper closes them without a byte, so the log is
    // the one place that can say why (a proxy set to h2c, `curl --http2-prior-knowledge`).
    let h2_clients = Arc::new(std::sync::Mutex::new(Shortage::default()));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    short.warn(&e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Each connection in service takes one more descriptor for its upstream once it asks
        // (HTTP/1.1 upstream: a connection per request in flight), whether or not it has yet.
        let in_service = max_connections.saturating_sub(slots.available_permits());
        if near_fd_limit(&stream, in_service) {
            // Served, it would take the descriptors the requests in flight need (their pool
            // file, their upstream connection): those failed with POOL_IO or NETWORK, and new
            // clients waited unanswered in the backlog. Answered at once (in plain text; a TLS
            // one would need its handshake) and closed, its descriptor never held.
            short.warn("the process is near its open file limit (ulimit -n)");
            if acceptor.is_none() {
                refuse_at_once(&stream);
            }
            drop(stream);
            continue;
        }
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
        let exchange = Arc::new(half_close::Exchange::default());
        let service = {
            let exchange = exchange.clone();
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let state = state.clone();
                let exchange = exchange.clone();
                let http11 = req.version() >= hyper::Version::HTTP_11;
                exchange.begin(http11);
                req.extensions_mut().insert(ClientInput(exchange.clone()));
                req.extensions_mut().insert(Peer(peer));
                async move {
                    let mut response = handle(req, state).await;
                    // An answer of unknown length reaches an HTTP/1.0 client ended by the close:
                    // answered as HTTP/1.0, hyper says nothing of keep-alive (as an HTTP/1.1
                    // answer it told a client that asked for it `connection: keep-alive`).
                    if !http11
                        && hyper::body::Body::size_hint(response.body())
                            .exact()
                            .is_none()
                    {
                        *response.version_mut() = hyper::Version::HTTP_10;
                    }
                    exchange.answered();
                    // The exchange is over when hyper lets go of the answer's body.
                    Ok::<_, Infallible>(
                        response.map(|body| half_close::Finishing::new(body, exchange)),
                    )
                }
            })
        };
        let tls = acceptor.clone();
        let watcher = graceful.watcher();
        let cut = cut.clone();
        let h2_clients = h2_clients.clone();
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
            let stream = half_close::HalfClose::new(stream, exchange.clone());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                // The cut first: polled after the connection, an answer whose body the gateway's
                // closing had just ended was finished in order on the way out.
                biased;
                // Marked before the connection is dropped, so that an answer cut at the end of
                // the drain is reset as an upstream's break is: ended in order, an HTTP/1.0
                // client (nginx's default upstream) read it as whole.
                _ = async { cut.cancelled().await; exchange.cut_if_open() } => {}
                served = watcher.watch(conn) => {
                    if served.is_err_and(|e| e.is_parse_version_h2()) {
                        if let Ok(mut h2) = h2_clients.lock() {
                            h2.warn("its client opened with HTTP/2's preface, and the gateway speaks HTTP/1.1 only: set the client or proxy to HTTP/1.1");
                        }
                    }
                }
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

impl<S: half_close::PeerReset> half_close::PeerReset for WriteStall<S> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.inner.take_error()
    }

    fn send_urgent(&self) -> io::Result<bool> {
        self.inner.send_urgent()
    }

    fn reset_on_close(&self) -> io::Result<()> {
        self.inner.reset_on_close()
    }
}

/// The address a request came from, in its extensions.
#[derive(Clone, Copy)]
pub(super) struct Peer(pub(super) SocketAddr);

/// The exchange a request belongs to, in its extensions: whether its client's input has ended.
#[derive(Clone)]
pub(super) struct ClientInput(Arc<half_close::Exchange>);

impl ClientInput {
    /// Resolves once the client has sent all it will (its input ended); never without one.
    pub(super) async fn done(this: Option<&ClientInput>) {
        match this {
            Some(c) => c.0.client_done().await,
            None => std::future::pending().await,
        }
    }
}

/// Descriptors kept free, below the process's limit, for what a connection needs besides its own
/// (its upstream connection, the pool file, its lock and temp file) and for the host's own.
#[cfg(unix)]
const FD_HEADROOM: libc::rlim_t = 32;

/// Whether a connection just accepted took one of the process's last `FD_HEADROOM` descriptors,
/// with one more kept for the upstream of each of the `in_service` connections. A new descriptor
/// is the lowest free one, so every one below it is open. The connection cap (512 by default)
/// does not bound descriptors where the limit is low (`ulimit -n 256`, a container's): a flood
/// of idle connections took them all, and connections accepted while descriptors were free then
/// failed their upstream connect (`NETWORK`, "too many open files") once they all asked.
#[cfg(unix)]
fn near_fd_limit(stream: &tokio::net::TcpStream, in_service: usize) -> bool {
    use std::os::fd::AsRawFd;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return false;
    }
    let upstreams = libc::rlim_t::try_from(in_service).unwrap_or(libc::rlim_t::MAX);
    libc::rlim_t::try_from(stream.as_raw_fd())
        .is_ok_and(|fd| fd.saturating_add(FD_HEADROOM).saturating_add(upstreams) >= limit.rlim_cur)
}

#[cfg(not(unix))]
fn near_fd_limit(_stream: &tokio::net::TcpStream, _in_service: usize) -> bool {
    false
}

/// The 503 written without waiting (it fits in a fresh socket's buffer) after what the client
/// sent so far was taken (a close on unread bytes resets the connection, and the client may
/// lose the answer). Straight on the socket: tokio's `try_read` and `try_write` wait for the
/// readiness its driver has not seen yet on a socket just accepted.
#[cfg(unix)]
fn refuse_at_once(stream: &tokio::net::TcpStream) {
    use std::io::Read;
    let socket = socket2::SockRef::from(stream);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!((&*socket).read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
    // A peer gone is an error here, not a SIGPIPE for the host (as in `half_close`).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let flags = libc::MSG_NOSIGNAL;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let flags = 0;
    let _ = socket.send_with_flags(&busy_answer(), flags);
}

#[cfg(not(unix))]
fn refuse_at_once(_stream: &tokio::net::TcpStream) {}

/// Accepting failed or was turned down for want of descriptors: said once, then at most once
/// every `SHORTAGE_EVERY` with how many more there were (at every failed accept, 20 lines a
/// second filled the log while the shortage lasted).
#[derive(Default)]
struct Shortage {
    said: Option<tokio::time::Instant>,
    since: u64,
}

const SHORTAGE_EVERY: Duration = Duration::from_secs(10);

impl Shortage {
    fn warn(&mut self, why: &str) {
        let now = tokio::time::Instant::now();
        if self
            .said
            .is_some_and(|at| now.duration_since(at) < SHORTAGE_EVERY)
        {
            self.since += 1;
            return;
        }
        tracing::warn!(
            more_since_last = self.since,
            "gateway: a connection was not served: {why}"
        );
        self.said = Some(now);
        self.since = 0;
    }
}

/// How long a refused connection is given to take its 503 (and, in TLS, its handshake).
const REFUSAL_TIME: Duration = Duration::from_secs(2);
/// Connections being refused at once (past the connection cap).
const REFUSALS: usize = 64;

/// The 503 a connection turned away for want of room gets, head and body.
fn busy_answer() -> Vec<u8> {
    let body = error_body(
        "overloaded_error",
        "the pool gateway has too many connections; retry shortly",
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), &body].concat()
}

/// The most of a refused client's request read and dropped after its 503 (`refuse_busy`).
const REFUSAL_READ_MAX: usize = 32 * 1024 * 1024;

async fn refuse_busy(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSAL_TIME, async {
        stream.write_all(&busy_answer()).await?;
        stream.shutdown().await?;
        // What the client is still sending is read and dropped, as a lingering close does: a
        // socket closed on unread bytes is reset, and a client still writing a long
        // conversation's body met EPIPE instead of its 503.
        let mut sink = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < REFUSAL_READ_MAX {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
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

/// Whether the client presented the gateway key: as `x-api-key` or as `Authorization: Bearer`,
/// either one. A client may send both, and with different values: the Anthropic Python SDK sends
/// `ANTHROPIC_API_KEY` (a real API key, left in a shell's environment) beside the gateway key
/// given as `ANTHROPIC_AUTH_TOKEN`, and that was refused as a wrong key. Neither
/// goes upstream. A header given twice is refused: no client sends two, and each extra one
/// would be one more guess of the key per request.
fn authorized<B>(req: &Request<B>, key: &Secret) -> Auth {
    let headers = req.headers();
    let api_keys = headers.get_all("x-api-key").iter().count();
    let authorizations = headers.get_all(hyper::header::AUTHORIZATION).iter().count();
    if api_keys > 1 || authorizations > 1 {
        return Auth::Twice;
    }
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let bearer = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let expected = key.expose().as_bytes();
    // Both compared, whatever the first gave: the time says nothing of which one matched.
    let matches = |p: Option<&str>| match p {
        Some(p) => p.as_bytes().ct_eq(expected),
        None => subtle::Choice::from(0),
    };
    if bool::from(matches(api_key) | matches(bearer)) {
        Auth::Granted
    } else {
        Auth::Refused
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Auth {
    Granted,
    Refused,
    /// `x-api-key` or `Authorization` given more than once.
    Twice,
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
/// (a wrong key with a long conversation, through a relay or not). A client that waits for
/// `100 Continue` before it sends (curl does for a body over 1 KB) is answered at once
/// instead, and the connection closed: reading the body asked for it (hyper sends the `100`
/// on the first read), and a client sent 5 MB only to be told its key was wrong.
async fn refuse(req: Request<Incoming>, mut response: Response<AnyBody>) -> Response<AnyBody> {
    if expects_continue(&req) {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
        return response;
    }
    let input = req.extensions().get::<ClientInput>().cloned();
    let mut body = req.into_body();
    if !hyper::body::Body::is_end_stream(&body)
        && forward::linger(&mut body, 0, input.as_ref()).await
    {
        // What follows a trailer section may have been read as trailers (see `forward::read_body`).
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Whether the client waits for `100 Continue` before it sends its body, as hyper reads it (the
/// last `Expect`, HTTP/1.1 on): an answer that does not read the body then tells it not to send.
pub(super) fn expects_continue<B>(req: &Request<B>) -> bool {
    req.version() >= hyper::Version::HTTP_11
        && req
            .headers()
            .get_all(hyper::header::EXPECT)
            .iter()
            .next_back()
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// What RFC 9112 refuses in a request's framing and hyper lets through, as the answer to give
/// (the connection closed after it).
/// - A transfer coding before `chunked` (`gzip, chunked`): hyper undoes only the chunking, and
///   the still-compressed bytes went upstream as the body. 501, as RFC 9112 6.1 says.
/// - An HTTP/1.1 request without `Host`, or with two, or one that is no host and port: 400
///   (RFC 9112 3.2). The gateway names itself by `Host` in batch answers, and two of them
///   are how a request is read one way by a proxy in front and another way here.
fn misframed<B>(req: &Request<B>) -> Option<Response<AnyBody>> {
    let codings = req
        .headers()
        .get_all(hyper::header::TRANSFER_ENCODING)
        .iter()
        .map(|v| v.to_str().map(|v| v.trim().to_ascii_lowercase()))
        .collect::<std::result::Result<Vec<_>, _>>();
    let plain_chunked = codings
        .as_ref()
        .is_ok_and(|c| c.is_empty() || c.len() == 1 && c[0] == "chunked");
    if !plain_chunked {
        return Some(error_closing(
            StatusCode::NOT_IMPLEMENTED,
            "invalid_request_error",
            "the pool gateway takes no transfer coding but chunked (send Content-Encoding for a compressed body)",
        ));
    }
    let hosts: Vec<_> = req.headers().get_all(hyper::header::HOST).iter().collect();
    let host_ok = match hosts.as_slice() {
        [] => req.version() < hyper::Version::HTTP_11,
        [host] => host.is_empty() || is_authority(host.as_bytes()),
        _ => false,
    };
    if !host_ok {
        return Some(error_closing(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "an HTTP/1.1 request needs one Host header, a host and an optional port",
        ));
    }
    None
}

/// A `Host` value: a host (a name, an IPv4 address or a bracketed IPv6 one) and an optional port,
/// nothing else (no user info, path or space).
fn is_authority(value: &[u8]) -> bool {
    let Ok(authority) = std::str::from_utf8(value)
        .map_err(|_| ())
        .and_then(|v| v.parse::<hyper::http::uri::Authority>().map_err(|_| ()))
    else {
        return false;
    };
    !authority.as_str().contains('@') && !authority.host().is_empty()
}

/// The methods forwarded to the API (it uses GET, POST and DELETE), exactly as written: methods
/// are case-sensitive, and the driver's fetch upper-cases a method's name, so `trace` went
/// upstream as TRACE, with the pool's credential, past the refusal of TRACE. Anything else
/// (CONNECT's tunnel, TRACE's echo, WebDAV's methods) is 405.
fn is_forwarded_method(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ]
    .contains(method)
}

/// Whether the request names a loopback host, or none (HTTP/1.0): in its `Host`, and in its
/// target when in absolute form.
fn names_loopback<B>(req: &Request<B>) -> bool {
    let header = match req.headers().get(hyper::header::HOST) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<hyper::http::uri::Authority>().ok())
            .is_some_and(|a| is_loopback_host(a.host())),
    };
    header && req.uri().host().is_none_or(is_loopback_host)
}

/// `OPTIONS`, answered here and never forwarded (an account's credential on it bought nothing):
/// 204 with the methods forwarded. A browser sends one before a page's cross-origin request
/// (its CORS preflight, which carries no key); it grants no CORS access, so the browser keeps
/// web pages off the gateway: every site a user visits can reach a port on loopback, and the
/// gateway hands out the pool's accounts.
fn options() -> Response<AnyBody> {
    with_allow(Response::new(full(Bytes::new())), StatusCode::NO_CONTENT)
}

/// Another method on the gateway's own pages: 405 naming the ones they take, as RFC 9110
/// 15.5.6 says (it was a 404 saying the gateway serves these very paths).
fn get_and_head_only() -> Response<AnyBody> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "/healthz and /metrics answer GET and HEAD only",
    );
    response.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD"),
    );
    response
}

/// What `allow` names: the methods forwarded, and OPTIONS, answered here.
const ALLOWED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

fn with_allow(mut res: Response<AnyBody>, status: StatusCode) -> Response<AnyBody> {
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(ALLOWED),
    );
    res
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
    } else if let Some(response) = misframed(&req) {
        refuse(req, response).await
    } else if req.method() == Method::OPTIONS {
        refuse(req, options()).await
    } else if path == "/healthz" {
        // HEAD as well: uptime monitors check with it, and got the 401 for a missing key. The
        // page takes no key, so another method is told so without one (it was a 401 asking
        // for the key).
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            refuse(req, get_and_head_only()).await
        } else if state.loopback && !names_loopback(&req) {
            // A web page whose name was rebound to 127.0.0.1 is of the gateway's origin, and
            // read the page, which takes no key, across the browser's CORS: it names its own
            // host. A client on this machine names a loopback one (or none, HTTP/1.0).
            let response = error(
                StatusCode::MISDIRECTED_REQUEST,
                "invalid_request_error",
                "the gateway listens on loopback: ask for it by a loopback name (127.0.0.1, localhost, [::1])",
            );
            refuse(req, response).await
        } else {
            refuse(req, metrics::health(&state).await).await
        }
    } else if let refused @ (Auth::Refused | Auth::Twice) = authorized(&req, &state.key) {
        let message = if refused == Auth::Twice {
            "the request presents x-api-key or Authorization more than once: send the pool gateway's key once"
        } else {
            "the pool gateway needs its key, as x-api-key or Authorization: Bearer (oauth-pool serve --show-key prints it)"
        };
        refuse(
            req,
            error(StatusCode::UNAUTHORIZED, "authentication_error", message),
        )
        .await
    } else if matches!(*req.method(), Method::GET | Method::HEAD) && path == "/metrics" {
        // HEAD as well, answered as GET without the body (RFC 9110 9.3.2): it was a 404.
        refuse(req, metrics::metrics(&state).await).await
    } else if path == "/metrics" {
        refuse(req, get_and_head_only()).await
    } else if forward::is_api_path(&path) && !is_forwarded_method(req.method()) {
        let response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "the pool gateway forwards GET, HEAD, POST, PUT, PATCH and DELETE (upper case) only",
        );
        let response = with_allow(response, StatusCode::METHOD_NOT_ALLOWED);
        refuse(req, response).await
    } else if forward::is_api_path(&path) && forward::target_holds_key(req.uri(), &state.key) {
        let response = error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "the request's URL holds the pool gateway's key, and the URL goes upstream to the API as it is: send the key as x-api-key or Authorization: Bearer only",
        );
        refuse(req, response).await
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

    fn request(version: hyper::Version, headers: &[(&str, &[u8])]) -> Request<()> {
        let mut b = Request::builder().uri("/v1/messages").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn either_header_may_present_the_key_but_neither_twice() {
        let key = Secret::new("the-gateway-key-0123".to_string());
        let v11 = hyper::Version::HTTP_11;
        let auth = |h: &[(&str, &[u8])]| authorized(&request(v11, h), &key);
        assert_eq!(
            auth(&[("x-api-key", b"the-gateway-key-0123")]),
            Auth::Granted
        );
        assert_eq!(
            auth(&[("authorization", b"Bearer the-gateway-key-0123")]),
            Auth::Granted
        );
        // The Python SDK with ANTHROPIC_API_KEY in its environment sends it beside the bearer.
        let both = [
            ("x-api-key", &b"another-key"[..]),
            ("authorization", b"Bearer the-gateway-key-0123"),
        ];
        assert_eq!(auth(&both), Auth::Granted);
        let both = [
            ("x-api-key", &b"the-gateway-key-0123"[..]),
            ("authorization", b"Bearer other"),
        ];
        assert_eq!(auth(&both), Auth::Granted);
        assert_eq!(auth(&[("x-api-key", b"wrong")]), Auth::Refused);
        assert_eq!(auth(&[]), Auth::Refused);
        let twice = [
            ("x-api-key", &b"the-gateway-key-0123"[..]),
            ("x-api-key", b"wrong"),
        ];
        assert_eq!(auth(&twice), Auth::Twice);
        let twice = [
            ("authorization", &b"Bearer the-gateway-key-0123"[..]),
            ("authorization", b"Bearer the-gateway-key-0123"),
        ];
        assert_eq!(auth(&twice), Auth::Twice);
    }

    #[test]
    fn framing_hyper_passes_and_rfc_9112_refuses_is_answered_here() {
        let (v10, v11) = (hyper::Version::HTTP_10, hyper::Version::HTTP_11);
        let status =
            |v, h: &[(&str, &[u8])]| misframed(&request(v, h)).map(|r| r.status().as_u16());
        assert_eq!(status(v11, &[("host", b"127.0.0.1:8787")]), None);
        assert_eq!(status(v11, &[("host", b"[::1]:8787")]), None);
        assert_eq!(status(v11, &[("host", b"")]), None);
        assert_eq!(status(v10, &[]), None, "HTTP/1.0 needs no Host");
        assert_eq!(status(v11, &[]), Some(400));
        assert_eq!(status(v11, &[("host", b"a"), ("host", b"b")]), Some(400));
        for bad in [&b"user@evil.test"[..], b"a b", b"a/b", b"a:b:c", b":80"] {
            assert_eq!(status(v11, &[("host", bad)]), Some(400), "{bad:?}");
        }
        let host = ("host", &b"x"[..]);
        assert_eq!(
            status(v11, &[host, ("transfer-encoding", b"chunked")]),
            None
        );
        assert_eq!(
            status(v11, &[host, ("transfer-encoding", b" Chunked ")]),
            None
        );
        for coded in [&b"gzip, chunked"[..], b"x-custom,chunked"] {
            assert_eq!(
                status(v11, &[host, ("transfer-encoding", coded)]),
                Some(501),
                "{coded:?}"
            );
        }
    }

    #[test]
    fn continue_is_awaited_as_hyper_reads_it() {
        let (v10, v11) = (hyper::Version::HTTP_10, hyper::Version::HTTP_11);
        assert!(expects_continue(&request(
            v11,
            &[("expect", b"100-Continue")]
        )));
        assert!(!expects_continue(&request(
            v10,
            &[("expect", b"100-continue")]
        )));
        assert!(!expects_continue(&request(v11, &[])));
        let last = [("expect", &b"100-continue"[..]), ("expect", b"other")];
        assert!(!expects_continue(&request(v11, &last)));
    }

    #[test]
    fn only_the_api_methods_in_their_own_case_are_forwarded() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(
                is_forwarded_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in [
            "CONNECT", "TRACE", "TRACK", "trace", "Trace", "connect", "post", "OPTIONS", "PROPFIND",
        ] {
            assert!(
                !is_forwarded_method(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
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
