//! `tracing` output, off unless `OAUTH_POOL_LOG` is set (e.g. `oauth_pool=debug`). Lines go to
//! stderr and never carry a secret: secrets are `Secret`s, whose Debug is redacted, and
//! authorization headers are marked sensitive.

use std::sync::Once;

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Some(filter) = crate::config::env(crate::config::var::LOG) else {
            return;
        };
        if filter.trim().is_empty() {
            return;
        }
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        // `Targets` takes the usual `target=level,...` syntax without pulling in a regex engine.
        let targets: tracing_subscriber::filter::Targets =
            filter.trim().parse().unwrap_or_else(|_| {
                tracing_subscriber::filter::Targets::new()
                    .with_target("oauth_pool", tracing::Level::INFO)
            });
        let _ = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .with_target(true),
            )
            .with(targets)
            .try_init();
    });
}
