//! What the gateway reports about itself: `/healthz` (whether any account can serve) and
//! `/metrics` (OpenMetrics text: requests, failovers, refreshes, cooldowns, window utilization,
//! time to the upstream's first byte).

use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::json;

use super::{error, full, AnyBody, State};
use crate::account::now_ms;
use crate::engine::{Blocked, Event};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabel {
    pub(super) status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct WindowLabel {
    account: String,
    window: String,
}

pub(super) struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: Family<StatusLabel, Counter>,
    pub(super) failovers: Counter,
    pub(super) refreshes: Counter,
    pub(super) cooling: Gauge,
    pub(super) windows: Family<WindowLabel, Gauge<f64, AtomicU64>>,
    pub(super) ttfb: Histogram,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
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

pub(super) async fn health(state: &State) -> Response<AnyBody> {
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

/// A label value as OpenMetrics text must carry it: the encoder writes values as they are, and
/// an account's email (from a profile endpoint, or a hand-edited file) or a window's name (from
/// an answer's headers) holding a quote or a line break would end the label early or start a
/// series of its own. Other control characters have no escape there and are replaced.
fn label_value(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn metrics(state: &State) -> Response<AnyBody> {
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
                        account: label_value(&a.email),
                        window: label_value(&w.name),
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

pub(super) fn count_events(failovers: &Counter, events: &[Event]) {
    for e in events {
        if e.kind == "failover" {
            failovers.inc();
        }
        log_event(e);
    }
}

fn log_event(e: &Event) {
    tracing::info!(kind = e.kind, message = %e.message, "gateway");
}

/// What the gateway's log says at once, while the request goes on (a hold beginning: it may
/// last hours, and a line at its end told the operator nothing while it lasted).
pub(super) fn notice() -> crate::engine::Notice {
    std::sync::Arc::new(|e: Event| log_event(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_label_values_stay_inside_their_label() {
        let mut registry = Registry::default();
        let windows = Family::<WindowLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("w", "windows", windows.clone());
        let hostile = "a\"} 1\ninjected_series{a=\"b\"} 42\n\\\r@x.test";
        windows
            .get_or_create(&WindowLabel {
                account: label_value(hostile),
                window: label_value("5h\""),
            })
            .set(0.5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(series.len(), 1, "{text}");
        assert_eq!(
            series[0],
            "w{account=\"a\\\"} 1\\ninjected_series{a=\\\"b\\\"} 42\\n\\\\\u{fffd}@x.test\",window=\"5h\\\"\"} 0.5"
        );
    }
}
