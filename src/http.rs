//! The process's HTTP clients, built once: one for the Messages API (connection pooling, HTTP/2
//! where offered) and one for the token endpoint. Neither follows redirects: a 3xx is an answer,
//! handed to the caller as it is, so no credential (bearer, `x-api-key`, refresh token) is ever
//! sent anywhere but the configured origin. Both honour `HTTPS_PROXY` / `HTTP_PROXY` /
//! `NO_PROXY` like curl and Bun (loopback is never proxied) and take extra trusted roots from
//! `NODE_EXTRA_CA_CERTS` and `SSL_CERT_FILE`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use url::Url;

use crate::config::{self, var, Var};
use crate::error::{Error, Result};

pub const USER_AGENT: &str = concat!("opencode-oauth-pool/", env!("CARGO_PKG_VERSION"));

static API: Renewing = Renewing::new();
static TOKEN: Renewing = Renewing::new();
/// Time the machine spent asleep (or the wall clock stepped forward) between two uses of a
/// client past which its idle connections are given up: see `Renewing`.
const SLEPT_GAP: Duration = Duration::from_secs(5);
/// Header lines an answer may have (Node's parser bounds only the head's size, 16 KB).
const MAX_ANSWER_HEADERS: usize = 1000;
/// CA bundles are at most a few hundred KB; a cap keeps a hostile path from filling memory.
const MAX_CA_FILE: u64 = 16 * 1024 * 1024;

fn install_crypto() {
    // Another library in the process may have installed a provider already; either is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn build(
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> Result<reqwest::Client> {
    install_crypto();
    check_system_cert_file()?;
    let builder = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::ACCEPT_ENCODING,
            reqwest::header::HeaderValue::from_static(crate::coding::ACCEPTED),
        )]))
        .redirect(reqwest::redirect::Policy::none())
        // A header folded over two lines (obs-fold) is one value with a space where the fold
        // was, as RFC 9112 5.2 has a user agent read it (Node's fetch does): refused, the whole
        // answer was lost to a NETWORK error.
        .http1_allow_obsolete_multiline_headers_in_responses(true)
        // hyper's default of 100 header lines failed an answer Node's and Bun's fetch read (a
        // proxy that adds its own, a 429 among them lost its failover); the head's size is
        // bounded on its own.
        .http1_max_headers(MAX_ANSWER_HEADERS)
        .proxy(reqwest::Proxy::custom(|url| proxy_for(url, &config::env)))
        .tls_certs_merge(extra_roots())
        .dns_resolver(Lookup);
    configure(builder).build().map_err(|e| Error::Network {
        what: "HTTP client setup",
        detail: e.to_string(),
        never_connected: false,
    })
}

/// Host names looked up as reqwest's own resolver does (`getaddrinfo` on a blocking thread),
/// with the thread's start checked: reqwest's resolver panicked when the OS refused the thread
/// (a container at its pids limit), and the request failed without a code, the panic printed
/// into the host's terminal. Now it is a `NETWORK` error saying so.
struct Lookup;

impl reqwest::dns::Resolve for Lookup {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            use std::net::ToSocketAddrs;
            let lookup = Box::new(move || (host.as_str(), 0).to_socket_addrs());
            match crate::runtime::blocking(lookup).await {
                Ok(Ok(addrs)) => Ok(Box::new(addrs) as reqwest::dns::Addrs),
                Ok(Err(e)) => Err(e.into()),
                Err(crate::runtime::NotRun::NoThread(why)) => Err(Error::NoThread(why).into()),
                Err(crate::runtime::NotRun::Lost) => Err("the host name lookup stopped".into()),
            }
        })
    }
}

/// A client built on first use, and built anew when the machine slept since it was last used.
///
/// Its connections are kept alive, and hyper gives an idle one up after `pool_idle_timeout` as
/// the monotonic clock counts, which stands still while a laptop sleeps. The server closed them
/// meanwhile and the laptop never heard of it: the first request after the resume went out on
/// such a connection, met a reset, and failed to the caller (`NETWORK`), whether it was a
/// message or the refresh of a token that expired during the night. A new client has no
/// connection yet, so nothing is sent on a dead one (and nothing needs to be sent twice).
struct Renewing {
    state: Mutex<Option<(reqwest::Client, Clocks)>>,
}

impl Renewing {
    const fn new() -> Self {
        Renewing {
            state: Mutex::new(None),
        }
    }
}

/// The clocks read at one use of a client.
#[derive(Clone, Copy, Debug)]
struct Clocks {
    wall: SystemTime,
    monotonic: Instant,
    /// Time since boot, suspends included (Linux): tells a sleep even when the wall clock was
    /// stepped back meanwhile.
    boot: Option<Duration>,
}

impl Clocks {
    fn now() -> Clocks {
        Clocks {
            wall: SystemTime::now(),
            monotonic: Instant::now(),
            boot: boot_time(),
        }
    }

    /// How much longer than the monotonic clock the wall clock (or the boot clock) says it has
    /// been since `earlier`: the time the machine slept, or a forward step of the clock.
    fn slept_since(&self, earlier: &Clocks) -> Duration {
        let ran = self.monotonic.saturating_duration_since(earlier.monotonic);
        let wall = self.wall.duration_since(earlier.wall).unwrap_or_default();
        let boot = match (self.boot, earlier.boot) {
            (Some(now), Some(then)) => now.saturating_sub(then),
            _ => Duration::ZERO,
        };
        wall.max(boot).saturating_sub(ran)
    }
}

#[cfg(target_os = "linux")]
fn boot_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(target_os = "linux"))]
fn boot_time() -> Option<Duration> {
    None
}

/// The client in `cell`, built on first use, and anew after the machine slept.
fn shared(
    cell: &'static Renewing,
    make: impl FnOnce() -> Result<reqwest::Client>,
) -> Result<reqwest::Client> {
    let now = Clocks::now();
    let mut state = cell.state.lock().unwrap_or_else(|e| e.into_inner());
    let client = match state.take() {
        Some((client, last)) => {
            let slept = now.slept_since(&last);
            if slept > SLEPT_GAP {
                match make() {
                    Ok(fresh) => {
                        tracing::info!(
                            slept_s = slept.as_secs(),
                            "the machine slept (or its clock jumped) since the last request: new connections"
                        );
                        fresh
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not build a new HTTP client after a sleep; keeping the old one");
                        client
                    }
                }
            } else {
                client
            }
        }
        None => make()?,
    };
    *state = Some((client.clone(), now));
    Ok(client)
}

/// How long a new connection may take, TCP and TLS handshake (and a proxy's CONNECT) together:
/// undici's connect timeout, which the runtime transport has too. It was 30 s for the API: a
/// server that accepted and never finished the handshake (a dead load balancer, a captive
/// portal) held every request that long before it failed; a live one handshakes in well under
/// a second, even far away.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub fn api_client() -> Result<reqwest::Client> {
    shared(&API, || {
        build(|b| {
            b.connect_timeout(CONNECT_TIMEOUT)
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
        })
    })
}

pub fn token_client() -> Result<reqwest::Client> {
    shared(&TOKEN, || build(|b| b.connect_timeout(CONNECT_TIMEOUT)))
}

/// Certificates from `NODE_EXTRA_CA_CERTS` and `SSL_CERT_FILE` (PEM), read when the first
/// client is built. A file that cannot be used is reported and skipped, as Node does.
fn extra_roots() -> Vec<reqwest::Certificate> {
    extra_root_ders()
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect()
}

/// Refuses an `SSL_CERT_FILE`, or a file in an `SSL_CERT_DIR`, that the TLS library's platform
/// verifier would read to no end. On Linux (and the Unixes but Apple's) that verifier reads what
/// the process's environment names itself, with a plain read, whenever a client is set up: a
/// FIFO no one writes held the setup, and every request with it, for ever; `/dev/zero` filled
/// memory until the process died. A path that does not exist, or a directory, it skips at once;
/// in a directory it reads every regular file (a symlink followed), whole lines at a time, so a
/// huge one (a disk image, a sparse file of zeros) filled memory the same way. It skips a
/// directory's FIFOs and devices itself.
pub fn check_system_cert_file() -> Result<()> {
    match unusable_system_cert_file() {
        Some(what) => Err(Error::InvalidArgument(what)),
        None => Ok(()),
    }
}

#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
fn unusable_system_cert_file() -> Option<String> {
    if let Some(path) = std::env::var_os(var::SSL_CERT_FILE.name()).map(std::path::PathBuf::from) {
        if let Some(what) = std::fs::metadata(&path).ok().and_then(|meta| {
            if meta.is_dir() {
                None
            } else if !meta.is_file() {
                Some(crate::fsread::kind_of(&meta.file_type()).to_string())
            } else {
                too_large(meta.len())
            }
        }) {
            return Some(format!(
                "SSL_CERT_FILE ({}) is {what}, not a file of PEM certificates: the TLS library reads it whole, and would wait for ever or fill memory; nothing was sent. Correct or unset SSL_CERT_FILE",
                path.display()
            ));
        }
    }
    let dirs = std::env::var_os("SSL_CERT_DIR")?;
    for dir in std::env::split_paths(&dirs) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(what) = std::fs::metadata(&path)
                .ok()
                .filter(std::fs::Metadata::is_file)
                .and_then(|meta| too_large(meta.len()))
            else {
                continue;
            };
            return Some(format!(
                "{} in SSL_CERT_DIR is {what}, not a file of PEM certificates: the TLS library reads every file there, and would fill memory; nothing was sent. Move it out of {}, or correct or unset SSL_CERT_DIR",
                path.display(),
                dir.display()
            ));
        }
    }
    None
}

#[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
fn too_large(len: u64) -> Option<String> {
    (len > MAX_CA_FILE).then(|| format!("larger than {MAX_CA_FILE} bytes"))
}

#[cfg(not(all(unix, not(target_vendor = "apple"), not(target_os = "android"))))]
fn unusable_system_cert_file() -> Option<String> {
    None
}

/// The extra trusted roots as DER (also for the fleet store's TLS).
pub fn extra_root_ders() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = Vec::new();
    for variable in [var::NODE_EXTRA_CA_CERTS, var::SSL_CERT_FILE] {
        let Some(path) = config::env(variable).filter(|p| !p.trim().is_empty()) else {
            continue;
        };
        let path = std::path::PathBuf::from(path.trim());
        match crate::fsread::read_regular(&path, MAX_CA_FILE, true) {
            Ok(pem) => {
                let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                    .filter_map(std::result::Result::ok)
                    .collect();
                if certs.is_empty() {
                    tracing::warn!(var = variable.name(), path = %path.display(), "ignoring extra CA certificates: no PEM certificate in it");
                }
                roots.extend(certs);
            }
            Err(e) => {
                tracing::warn!(var = variable.name(), path = %path.display(), error = %e, "ignoring extra CA certificates")
            }
        }
    }
    roots
}

/// The proxy for a request to `url`, from the caller's environment, read per request:
/// `https_proxy`/`HTTPS_PROXY` for https, `http_proxy`/`HTTP_PROXY` for http, then
/// `all_proxy`/`ALL_PROXY`; none for loopback or a `NO_PROXY` match.
pub fn proxy_for(url: &Url, env: &dyn Fn(Var) -> Option<String>) -> Option<Url> {
    let (_, raw) = proxy_setting(url, env)?;
    match parse_proxy(&raw) {
        Some(u) => Some(u),
        None => {
            // `check_proxy` refuses the request before it is sent; never go around a proxy.
            tracing::warn!("a proxy setting that is not a proxy URL");
            None
        }
    }
}

/// The variable that names the proxy for `url`, and its value (None: no proxy applies).
fn proxy_setting(url: &Url, env: &dyn Fn(Var) -> Option<String>) -> Option<(Var, String)> {
    let host = url.host_str()?;
    if config::is_loopback(url) {
        return None;
    }
    let pick = |vars: &[Var]| {
        vars.iter().find_map(|v| {
            env(*v)
                .filter(|value| !value.trim().is_empty())
                .map(|value| (*v, value))
        })
    };
    let no_proxy = pick(&[var::NO_PROXY_LOWER, var::NO_PROXY])
        .map(|(_, v)| v)
        .unwrap_or_default();
    if bypasses(&no_proxy, host, url.port_or_known_default()) {
        return None;
    }
    match url.scheme() {
        "https" => pick(&[var::HTTPS_PROXY_LOWER, var::HTTPS_PROXY]),
        "http" => pick(&[var::HTTP_PROXY_LOWER, var::HTTP_PROXY]),
        _ => None,
    }
    .or_else(|| pick(&[var::ALL_PROXY_LOWER, var::ALL_PROXY]))
}

/// A proxy URL the client can use: http or https, with a host (a bare `host:port` is http).
fn parse_proxy(raw: &str) -> Option<Url> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    Url::parse(&with_scheme).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

/// Refuses a request to `url` when the proxy variable that applies to it is set but names no
/// usable proxy (not a URL, or a scheme this client does not speak, such as socks5): the
/// request would otherwise go around a proxy the user meant it to use.
pub fn check_proxy(url: &Url) -> Result<()> {
    match proxy_setting(url, &config::env) {
        Some((variable, raw)) if parse_proxy(&raw).is_none() => Err(Error::InvalidArgument(format!(
            "{} is not a proxy this client can use (http://host:port or https://host:port); the request was not sent",
            variable.name()
        ))),
        _ => Ok(()),
    }
}

/// curl's `NO_PROXY` rules: `*` matches everything; otherwise a comma- or space-separated list
/// of host names (a name matches itself and its subdomains; a leading dot is ignored), IP
/// addresses or CIDR ranges, each optionally with `:port`.
pub fn bypasses(no_proxy: &str, host: &str, port: Option<u16>) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    no_proxy
        .split([',', ' '])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let (name, want_port) = split_port(entry);
            if let Some(p) = want_port {
                if Some(p) != port {
                    return false;
                }
            }
            let name = name.trim_start_matches("*.").trim_start_matches('.');
            let name = name.to_ascii_lowercase();
            if let Some((net, bits)) = name.split_once('/') {
                return match (host_ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                    (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            if let (Some(ip), Ok(want)) = (host_ip, name.parse::<IpAddr>()) {
                return ip == want;
            }
            host == name || host.ends_with(&format!(".{name}"))
        })
}

fn split_port(entry: &str) -> (&str, Option<u16>) {
    // `[::1]:8080`, `host:443`; a bare IPv6 address has several colons and no port.
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((addr, tail)) = rest.split_once(']') {
            let port = tail.strip_prefix(':').and_then(|p| p.parse().ok());
            return (addr, port);
        }
    }
    match entry.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => match port.parse() {
            Ok(p) => (name, Some(p)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// Whole-call timeout for token and profile calls: `OAUTH_POOL_TIMEOUT_MS`, default 30 s.
pub fn token_call_timeout() -> Duration {
    crate::settings::millis(var::TIMEOUT_MS)
}

/// A tick of `timeout_while_running`: how often it looks at the clock.
const RUNNING_TICK: Duration = Duration::from_millis(500);
/// A tick this much later than asked for means the process did not run meanwhile.
const STOPPED_GAP: Duration = Duration::from_secs(1);

/// `tokio::time::timeout` that counts only the time this process ran. A process stopped
/// (Ctrl-Z on an OpenCode TUI, SIGSTOP, a debugger) while it waited for an answer finds, once
/// it resumes, a deadline long past and the answer in its socket: reqwest's own timeout is
/// looked at first and throws that answer away. For a token call, that answer held the new
/// tokens of a refresh token the server had already spent, and the one retry of a lost answer
/// then presented the spent token (the server revokes the whole login for that). Here a tick
/// that came far later than asked for counts as one tick, and the answer is polled before the
/// clock. `None`: the limit passed while the process ran.
pub async fn timeout_while_running<F: std::future::Future>(
    limit: Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut left = limit;
    loop {
        let step = left.min(RUNNING_TICK);
        let started = tokio::time::Instant::now();
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            () = tokio::time::sleep(step) => {}
        }
        let took = started.elapsed();
        left = left.saturating_sub(if took > step + STOPPED_GAP {
            step
        } else {
            took
        });
        if left.is_zero() {
            return None;
        }
    }
}

/// How `describe` begins for a connection that never formed (refused, reset or timed out
/// before it was up, a failed TLS handshake): nothing of the request was sent.
pub const NOT_CONNECTED: &str = "could not connect";

/// The `NETWORK` error of a failed request to `what`.
pub fn network_error(what: &'static str, err: &reqwest::Error) -> Error {
    Error::Network {
        what,
        detail: describe(err),
        never_connected: err.is_connect(),
    }
}

/// Whether the body failed to decode (`coding`), not the connection under it.
fn undecodable(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        if s.is::<crate::coding::Undecodable>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A network failure, described without the URL's query (which could hold a code).
pub fn describe(err: &reqwest::Error) -> String {
    // A connect that timed out is both: which step is what the reader needs (reqwest's own
    // text is a bare "operation timed out").
    if err.is_connect() && err.is_timeout() {
        return format!(
            "{NOT_CONNECTED} (no connection and TLS handshake within {} s)",
            CONNECT_TIMEOUT.as_secs()
        );
    }
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        NOT_CONNECTED
    } else if undecodable(err) {
        "could not decode the answer's body"
    } else if err.is_decode() {
        // reqwest says so of any failure to read a body (a connection dropped under it too):
        // the detail says which.
        "could not read the answer's body"
    } else if err.is_body() {
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
    crate::settings::millis(var::RESPONSE_TIMEOUT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(Var) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |v| map.get(v.name()).cloned()
    }

    #[test]
    fn a_sleep_is_the_wall_or_boot_clock_running_ahead_of_the_monotonic_one() {
        let then = Clocks {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            monotonic: Instant::now(),
            boot: Some(Duration::from_secs(500)),
        };
        let later = |wall: i64, mono: u64, boot: u64| Clocks {
            wall: if wall >= 0 {
                then.wall + Duration::from_secs(wall as u64)
            } else {
                then.wall - Duration::from_secs(wall.unsigned_abs())
            },
            monotonic: then.monotonic + Duration::from_secs(mono),
            boot: then.boot.map(|b| b + Duration::from_secs(boot)),
        };
        // Awake for a minute: nothing slept.
        assert_eq!(later(60, 60, 60).slept_since(&then), Duration::ZERO);
        // Two hours asleep: the wall and boot clocks moved, the monotonic one did not.
        assert_eq!(
            later(7200, 1, 7201).slept_since(&then),
            Duration::from_secs(7200)
        );
        // Asleep while NTP stepped the wall clock back: the boot clock still tells.
        assert_eq!(
            later(-600, 1, 3601).slept_since(&then),
            Duration::from_secs(3600)
        );
        // A wall clock stepped back while awake is no sleep.
        assert_eq!(later(-3600, 10, 10).slept_since(&then), Duration::ZERO);
        // No boot clock (macOS): the wall clock tells.
        let mut no_boot = later(300, 2, 0);
        no_boot.boot = None;
        assert_eq!(no_boot.slept_since(&then), Duration::from_secs(298));
    }

    #[test]
    fn proxies_follow_curl_rules() {
        let api = Url::parse("https://api.anthropic.com/v1/messages").unwrap();
        let env = env_of(&[("HTTPS_PROXY", "proxy.corp:3128")]);
        assert_eq!(
            proxy_for(&api, &env).unwrap().as_str(),
            "http://proxy.corp:3128/"
        );
        let env = env_of(&[
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:2"),
        ]);
        assert_eq!(proxy_for(&api, &env).unwrap().port(), Some(1));
        let env = env_of(&[("HTTP_PROXY", "http://p:1")]);
        assert!(
            proxy_for(&api, &env).is_none(),
            "http proxy is not for https"
        );
        let env = env_of(&[("ALL_PROXY", "http://p:1")]);
        assert!(proxy_for(&api, &env).is_some());
        let local = Url::parse("http://127.0.0.1:9/v1").unwrap();
        let env = env_of(&[("HTTP_PROXY", "http://p:1"), ("ALL_PROXY", "http://p:1")]);
        assert!(
            proxy_for(&local, &env).is_none(),
            "loopback is never proxied"
        );
        for np in [
            "anthropic.com",
            ".anthropic.com",
            "*",
            "x, api.anthropic.com",
            "anthropic.com:443",
        ] {
            let env = env_of(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", np)]);
            assert!(proxy_for(&api, &env).is_none(), "{np}");
        }
        for np in ["thropic.com", "anthropic.com:8443", "other"] {
            let env = env_of(&[("HTTPS_PROXY", "http://p:1"), ("no_proxy", np)]);
            assert!(proxy_for(&api, &env).is_some(), "{np}");
        }
    }

    #[test]
    fn no_proxy_addresses_and_ranges() {
        assert!(bypasses("10.0.0.0/8", "10.1.2.3", None));
        assert!(!bypasses("10.0.0.0/8", "11.1.2.3", None));
        assert!(bypasses("192.168.1.7", "192.168.1.7", Some(443)));
        assert!(bypasses("[::1]:443", "[::1]", Some(443)));
        assert!(bypasses("fd00::/8", "fd12::1", None));
        assert!(!bypasses("", "a.b", None));
    }
}
