//! What a fleet store URL says beyond what tokio-postgres reads: libpq's TLS parameters as
//! providers write them (`sslmode=verify-full`, `sslrootcert=`), whether a connection goes over
//! TLS and with which roots, and the URL as messages show it.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tokio_postgres::Config;

use super::postgres::describe;
use crate::error::{Error, Result};
use crate::secret::scrub_tokens;

/// The URL as messages show it: the password (in the user part or as `password=`) replaced by
/// `***`, the rest as written. Read by hand rather than by a URL parser, which refuses what libpq
/// takes (several hosts, no host, a socket path in `host=`), so every store URL shows.
pub fn redact(url: &str) -> String {
    let (head, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let address_end = rest.find('?').unwrap_or(rest.len());
    // Up to the last `@` before the query is the user part, even past a `/`: a password written
    // with a raw `/` or `@` in it must not show (a database name with `@` in it shows cut
    // instead). tokio-postgres reads the user part up to the first `@` of the whole URL, so a
    // password with a raw `?` in it is the user part too (it showed whole: the query began in it).
    let in_address = rest[..address_end].rfind('@');
    let first = rest.find('@').filter(|&at| rest[..at].contains(':'));
    let (mut shown, after) = match in_address.max(first) {
        Some(at) => {
            let user = &rest[..at];
            let shown = match user.split_once(':') {
                Some((name, _)) => format!("{head}{name}:***@"),
                None => format!("{head}{user}@"),
            };
            (shown, &rest[at + 1..])
        }
        None => (head, rest),
    };
    let (address, query) = match after.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (after, None),
    };
    shown.push_str(address);
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let key = pair.split_once('=').map_or(pair, |(k, _)| k);
                let key_text = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
                if key_text.eq_ignore_ascii_case("password") {
                    format!("{key}=***")
                } else {
                    pair.to_string()
                }
            })
            .collect();
        shown = format!("{shown}?{}", pairs.join("&"));
    }
    scrub_tokens(&shown)
}

/// libpq's TLS parameters that tokio-postgres does not read, as providers' documentation writes
/// them (RDS, Supabase, Cloud SQL, Neon): `sslmode=verify-full` and `verify-ca` (both checked as
/// verify-full: the certificate is always checked, its host name included) and
/// `sslrootcert=<file>` (only its certificates are trusted) or `sslrootcert=system`. Client
/// certificates (`sslcert`, `sslkey`) are refused by name rather than as an unknown option.
/// Returns the URL tokio-postgres is given and the roots of `sslrootcert`.
#[allow(clippy::type_complexity)]
fn libpq_tls_params(
    url: &str,
) -> std::result::Result<(String, Option<Vec<CertificateDer<'static>>>), String> {
    use percent_encoding::percent_decode_str;
    use rustls::pki_types::pem::PemObject;
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), None));
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut roots = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        let value = percent_decode_str(value).decode_utf8_lossy();
        match (&*key, &*value) {
            ("sslmode", "verify-full" | "verify-ca") => kept.push("sslmode=require"),
            ("sslrootcert", "system") => roots = None,
            ("sslrootcert", file) => {
                let path = std::path::Path::new(file);
                let pem = crate::fsread::read_regular(path, 16 * 1024 * 1024, true)
                    .map_err(|e| format!("sslrootcert {file}: {e}"))?;
                let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
                    .filter_map(std::result::Result::ok)
                    .collect();
                if certs.is_empty() {
                    return Err(format!("sslrootcert {file}: no PEM certificate in it"));
                }
                roots = Some(certs);
            }
            ("sslcert" | "sslkey" | "sslpassword", _) => {
                return Err(format!(
                    "`{key}`: client certificates are not supported; authenticate with a password (the connection is still TLS, its server checked)"
                ))
            }
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, roots))
}

/// The URL's configuration and the roots of its `sslrootcert`.
#[allow(clippy::type_complexity)]
pub(super) fn parse(
    url: &str,
) -> std::result::Result<(Config, Option<Vec<CertificateDer<'static>>>), String> {
    let (url, roots) = libpq_tls_params(url)?;
    let config = url.parse::<Config>().map_err(|e| describe(&e))?;
    let named = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(name) if !name.is_empty()));
    if wants_tls(&config) && !named {
        return Err("no host name: TLS checks the server's certificate against it; give it as the host (postgres://user@db.example.com/db, with ?hostaddr=... to connect to an address), or say sslmode=disable".into());
    }
    Ok((config, roots))
}

/// Whether a connection goes over TLS: unless the URL says `sslmode=disable`, or every host is a
/// Unix socket (a `hostaddr` is reached over TCP, whatever `host` says).
pub(super) fn wants_tls(config: &Config) -> bool {
    use tokio_postgres::config::{Host, SslMode};
    let hosts = config.get_hosts();
    let socket_only = config.get_hostaddrs().is_empty()
        && !hosts.is_empty()
        && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)));
    config.get_ssl_mode() != SslMode::Disable && !socket_only
}

pub(super) fn tls(
    roots: Option<&[CertificateDer<'static>]>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let setup = |e: &dyn std::fmt::Display| Error::StoreUnavailable(format!("TLS setup: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match roots {
        Some(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for cert in roots {
                store.add(cert.clone()).map_err(|e| setup(&e))?;
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .map_err(|e| setup(&e))?
        }
        None => {
            crate::http::check_system_cert_file()?;
            let extra = crate::http::extra_root_ders();
            Arc::new(
                if extra.is_empty() {
                    rustls_platform_verifier::Verifier::new(provider.clone())
                } else {
                    rustls_platform_verifier::Verifier::new_with_extra_roots(
                        extra,
                        provider.clone(),
                    )
                }
                .map_err(|e| setup(&e))?,
            )
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The connector handed over with `sslmode=disable`, which tokio-postgres never asks: it trusts
/// nothing, should it ever be.
pub(super) fn no_tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::StoreUnavailable(format!("TLS setup: {e}")))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `config` with every host name looked up here, each address given as a `hostaddr` beside its
/// name (kept for TLS's certificate check); `None` when no name needs a lookup, a `hostaddr` is
/// given, or a Unix socket is among the hosts (a `hostaddr` beside it would be reached over TCP).
/// tokio-postgres looks names up with tokio's `lookup_host`, whose blocking thread panicked when
/// the OS refused it (a container at its pids limit): the connection failed with the panic
/// printed into the host's terminal, not as STORE_UNAVAILABLE. Here the thread's start is checked.
pub(super) async fn looked_up(config: &Config) -> Result<Option<Config>> {
    use std::net::{IpAddr, ToSocketAddrs};
    use tokio_postgres::config::Host;
    let hosts = config.get_hosts();
    let named = |h: &Host| matches!(h, Host::Tcp(name) if name.parse::<IpAddr>().is_err());
    if !config.get_hostaddrs().is_empty()
        || !hosts.iter().any(named)
        || hosts.iter().any(|h| !matches!(h, Host::Tcp(_)))
    {
        return Ok(None);
    }
    let ports = config.get_ports();
    let mut found = Vec::new();
    let mut failed = None;
    for (i, host) in hosts.iter().enumerate() {
        let Host::Tcp(name) = host else { continue };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        if let Ok(ip) = name.parse::<IpAddr>() {
            found.push((name.as_str(), ip, port));
            continue;
        }
        let asked = name.clone();
        let lookup = Box::new(move || {
            (asked.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
        });
        match crate::runtime::blocking(lookup).await {
            Ok(Ok(ips)) => found.extend(ips.into_iter().map(|ip| (name.as_str(), ip, port))),
            // As tokio-postgres says it; the next host is tried, as it tries it.
            Ok(Err(e)) => failed = Some(format!("error connecting to server: {e}")),
            Err(crate::runtime::NotRun::NoThread(why)) => {
                return Err(Error::StoreUnavailable(Error::NoThread(why).to_string()))
            }
            Err(crate::runtime::NotRun::Lost) => {
                return Err(Error::StoreUnavailable(format!(
                    "the lookup of {name} stopped"
                )))
            }
        }
    }
    if found.is_empty() {
        return Err(Error::StoreUnavailable(failed.unwrap_or_else(|| {
            "error connecting to server: could not resolve any addresses".into()
        })));
    }
    Ok(Some(with_hosts(config, &found)))
}

/// The hosts of a URL that mixes Unix socket directories and host names (libpq's "this
/// machine's server, else over the network"), a config each, in the order they are tried;
/// `None` for any other URL. `looked_up` cannot address such a URL's names (a `hostaddr` beside
/// a socket would be reached over TCP), so tokio-postgres looked them up itself, on a blocking
/// thread whose refusal panicked: a pool call failed uncoded, its panic printed into the host's
/// terminal. Connected to one by one, each name is looked up by `looked_up`.
pub(super) fn one_per_host(config: &Config) -> Option<Vec<Config>> {
    use std::net::IpAddr;
    use tokio_postgres::config::{Host, LoadBalanceHosts};
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let named = hosts
        .iter()
        .any(|h| matches!(h, Host::Tcp(name) if name.parse::<IpAddr>().is_err()));
    let socket = hosts.iter().any(|h| !matches!(h, Host::Tcp(_)));
    // Ports that do not fit the hosts are tokio-postgres' own error to give.
    if !config.get_hostaddrs().is_empty()
        || !named
        || !socket
        || (ports.len() > 1 && ports.len() != hosts.len())
    {
        return None;
    }
    let mut order: Vec<usize> = (0..hosts.len()).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        // Fisher-Yates; the order as written if no random number can be had.
        for i in (1..order.len()).rev() {
            if let Ok(r) = getrandom::u32() {
                order.swap(i, r as usize % (i + 1));
            }
        }
    }
    let one = |i: usize| {
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        rehosted(config, |out| {
            match &hosts[i] {
                Host::Tcp(name) => out.host(name),
                #[cfg(unix)]
                Host::Unix(path) => out.host_path(path),
            }
            .port(port);
        })
    };
    Some(order.into_iter().map(one).collect())
}

/// `config` with its hosts replaced by `hosts` (name, address, port).
fn with_hosts(config: &Config, hosts: &[(&str, std::net::IpAddr, u16)]) -> Config {
    rehosted(config, |out| {
        for &(name, ip, port) in hosts {
            out.host(name).hostaddr(ip).port(port);
        }
    })
}

/// `config` with no host, port or address, then those `add` gives it.
fn rehosted(config: &Config, add: impl FnOnce(&mut Config)) -> Config {
    let mut out = Config::new();
    if let Some(user) = config.get_user() {
        out.user(user);
    }
    if let Some(password) = config.get_password() {
        out.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        out.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        out.options(options);
    }
    if let Some(name) = config.get_application_name() {
        out.application_name(name);
    }
    if let Some(t) = config.get_connect_timeout() {
        out.connect_timeout(*t);
    }
    if let Some(t) = config.get_tcp_user_timeout() {
        out.tcp_user_timeout(*t);
    }
    if let Some(t) = config.get_keepalives_interval() {
        out.keepalives_interval(t);
    }
    if let Some(n) = config.get_keepalives_retries() {
        out.keepalives_retries(n);
    }
    out.ssl_mode(config.get_ssl_mode())
        .ssl_negotiation(config.get_ssl_negotiation())
        .keepalives(config.get_keepalives())
        .keepalives_idle(config.get_keepalives_idle())
        .target_session_attrs(config.get_target_session_attrs())
        .channel_binding(config.get_channel_binding())
        .load_balance_hosts(config.get_load_balance_hosts());
    add(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hosts are replaced and nothing else of the URL is lost on the way.
    #[test]
    fn hosts_given_their_addresses_keep_every_other_setting() {
        let url = "postgres://u:pw@db1.example:6001,db2.example:6002/app?options=-c%20x%3D1&application_name=fleet&sslmode=require&sslnegotiation=direct&connect_timeout=3&tcp_user_timeout=4000&keepalives=0&keepalives_idle=5&keepalives_interval=6&keepalives_retries=7&target_session_attrs=read-write&channel_binding=require&load_balance_hosts=random";
        let config = url.parse::<Config>().unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let hosts = [
            ("db1.example", ip("10.0.0.1"), 6001),
            ("db2.example", ip("10.0.0.2"), 6002),
        ];
        let mut expected = config.clone();
        expected.hostaddr(ip("10.0.0.1")).hostaddr(ip("10.0.0.2"));
        assert_eq!(with_hosts(&config, &hosts), expected);
    }

    /// A socket directory beside a host name: one config per host, in order, each with its own
    /// port and every other setting; any other URL is connected to as it is.
    #[cfg(unix)]
    #[test]
    fn a_socket_beside_a_host_name_is_tried_host_by_host() {
        let url = "postgres://u:pw@db.example:6001,%2Frun%2Fpg:6002,10.0.0.9:6003/app?application_name=fleet&target_session_attrs=read-write&connect_timeout=3";
        let config = url.parse::<Config>().unwrap();
        let one = |host: &str, port| {
            let mut c = rehosted(&config, |_| {});
            if host.starts_with('/') {
                c.host_path(host);
            } else {
                c.host(host);
            }
            c.port(port);
            c
        };
        let each = one_per_host(&config).unwrap();
        assert_eq!(
            each,
            [
                one("db.example", 6001),
                one("/run/pg", 6002),
                one("10.0.0.9", 6003)
            ]
        );
        assert_eq!(each[1].get_application_name(), Some("fleet"));
        // One port for all.
        let shared = "host=db.example,/run/pg port=6001 user=u dbname=app"
            .parse::<Config>()
            .unwrap();
        let ports: Vec<_> = one_per_host(&shared)
            .unwrap()
            .iter()
            .map(|c| c.get_ports().to_vec())
            .collect();
        assert_eq!(ports, [vec![6001], vec![6001]]);
        // Shuffled when asked, every host once.
        let random = format!("{url}&load_balance_hosts=random")
            .parse::<Config>()
            .unwrap();
        let mut ports: Vec<_> = one_per_host(&random)
            .unwrap()
            .iter()
            .map(|c| c.get_ports()[0])
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, [6001, 6002, 6003]);
        for whole in [
            "postgres://u@db.example,db2.example/app",
            "postgres://u@%2Frun%2Fpg,10.0.0.9/app",
            "postgres://u@db.example,%2Frun%2Fpg/app?hostaddr=10.0.0.1,10.0.0.2",
        ] {
            let config = whole.parse::<Config>().unwrap();
            assert_eq!(one_per_host(&config), None, "{whole}");
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert!(!redact("postgres://h/db?password=secret&sslmode=require").contains("secret"));
        assert!(!redact("postgres://h/db?Pass%77ord=secret").contains("secret"));
        // What a URL parser refuses and libpq takes still shows, without the password.
        assert_eq!(
            redact("postgres://u:secret@h1:5432,h2:5433/db?target_session_attrs=read-write"),
            "postgres://u:***@h1:5432,h2:5433/db?target_session_attrs=read-write"
        );
        assert_eq!(
            redact("postgres:///db?host=/run/postgresql&password=secret"),
            "postgres:///db?host=/run/postgresql&password=***"
        );
        assert_eq!(
            redact("postgres://u:p@ss:w@h/db"),
            "postgres://u:***@h/db",
            "a password holding @ or :"
        );
        assert_eq!(redact("postgres://u:pa/ss@h/db"), "postgres://u:***@h/db");
        // tokio-postgres takes the user part up to the first `@`: this connects with `pa?ss`.
        assert_eq!(
            redact("postgres://u:pa?ss@h/db?sslmode=disable"),
            "postgres://u:***@h/db?sslmode=disable"
        );
        assert_eq!(
            redact("postgres://u@h/db?application_name=a@b&password=secret"),
            "postgres://u@h/db?application_name=a@b&password=***"
        );
        assert_eq!(
            redact("postgres://h/db?password=sec@ret"),
            "postgres://h/db?password=***"
        );
    }

    #[test]
    fn libpq_tls_parameters_from_providers_docs_are_read() {
        let (config, roots) =
            parse("postgres://u:pw@db.example:5432/d?sslmode=verify-full&application_name=x")
                .unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(config.get_application_name(), Some("x"));
        assert!(roots.is_none());
        let (config, _) = parse("postgres://db.example/d?sslmode=verify-ca").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        let (_, roots) = parse("postgres://db.example/d?sslrootcert=system").unwrap();
        assert!(roots.is_none());
        let (config, _) = parse("postgres://db.example/d?channel_binding=require").unwrap();
        assert_eq!(
            config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let e = parse(&format!(
            "postgres://db.example/d?sslrootcert={}",
            missing.display()
        ))
        .unwrap_err();
        assert!(
            e.contains("sslrootcert") && e.contains("does not exist"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let e = parse(&format!(
            "postgres://db.example/d?sslrootcert={}",
            empty.display()
        ))
        .unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");

        let e = parse("postgres://db.example/d?sslmode=require&sslcert=c.pem&sslkey=k.pem")
            .unwrap_err();
        assert!(
            e.contains("`sslcert`: client certificates are not supported"),
            "{e}"
        );
        // What tokio-postgres refuses says which option (its own text says only "invalid
        // connection string").
        let e = parse("postgres://db.example/d?sslcrl=x.pem").unwrap_err();
        assert!(e.contains("unknown option `sslcrl`"), "{e}");
        let e = parse("postgres://db.example/d?sslmode=allow").unwrap_err();
        assert!(e.contains("invalid value for option `sslmode`"), "{e}");
    }

    #[test]
    fn tls_unless_disabled_or_only_unix_sockets() {
        let tls = |url: &str| wants_tls(&url.parse::<Config>().unwrap());
        assert!(tls("postgres://db.example/d"));
        assert!(tls("postgres://db.example/d?sslmode=require"));
        assert!(!tls("postgres://db.example/d?sslmode=disable"));
        assert!(!tls("postgres://u@%2Frun%2Fpostgresql/d"));
        // Reached over TCP: a hostaddr alone, or with a socket as host, is not a socket (it
        // used to go in plain text whatever sslmode said).
        assert!(tls("postgres:///d?hostaddr=10.0.0.5"));
        assert!(tls("postgres://u@%2Frun%2Fpostgresql/d?hostaddr=10.0.0.5"));
        // ... and needs a name to check the certificate against.
        for url in ["postgres:///d?hostaddr=10.0.0.5", "postgres://u@:5432/d"] {
            let e = parse(url).unwrap_err();
            assert!(e.starts_with("no host name: TLS checks"), "{url}: {e}");
        }
        assert!(parse("postgres:///d?hostaddr=10.0.0.5&sslmode=disable").is_ok());
        assert!(parse("postgres://db.example/d?hostaddr=10.0.0.5").is_ok());
        assert!(parse("postgres://u@%2Frun%2Fpostgresql/d").is_ok());
    }
}
