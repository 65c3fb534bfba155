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

/// What `oauth-pool doctor` says of an `OAUTH_POOL_LOG` the pool does not take as written: not a
/// filter (`oauth_pool=verbose`: `oauth_pool=info` applies instead), or one that names no target
/// of the pool (`oauth-pool=debug`, `OAuth_Pool=debug`: nothing of the pool is logged).
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
            (TARGET.starts_with(target) || target.starts_with(TARGET)) && level != LevelFilter::OFF
        });
    (!reaches_pool).then(|| {
        format!("names no target of the pool, whose lines are logged under {TARGET} (e.g. {TARGET}=debug): nothing of the pool is logged")
    })
}

/// stderr, each line with its `sk-ant-` runs as `[redacted]` (`secret::scrub_tokens`). The fmt
/// layer hands over a whole line per write, so a token is never split across two.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = crate::secret::scrub_tokens(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(line.as_bytes())?;
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
        for typo in ["oauth-pool=debug", "OAuth_Pool=debug", "oauth_pool=off"] {
            assert!(
                filter_warning(typo)
                    .unwrap()
                    .contains("nothing of the pool"),
                "{typo}"
            );
        }
    }
}
