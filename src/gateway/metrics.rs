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
/// series of its own. Other control characters have no escape there and are replaced. A name
/// holding a credential is exported without it: a scrape is kept and shown well beyond the pool.
fn label_value(raw: &str) -> String {
    let raw = crate::secret::scrub_tokens(raw);
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

/// An account's label: its name, or, where the name holds a credential (left out), that name
/// with the account's place in the file, as `oauth-pool list` shows it (`team [redacted] (#2)`).
/// Two such accounts shared the label `[redacted]`: one series, the last account's value. The
/// place says nothing of the credential (a hash of the name would let a scrape confirm a
/// guessed key), and it is the `#N` every command takes.
fn account_label(email: &str, place: usize) -> String {
    let shown = label_value(email);
    if crate::secret::scrub_tokens(email) == email {
        shown
    } else {
        format!("{shown} (#{place})")
    }
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
        for (place, a) in pool.accounts_placed() {
            let account = account_label(&a.email, place);
            for w in state.engine.windows(a) {
                let u = if w.reset.is_some_and(|r| r <= now) {
                    0.0
                } else {
                    w.utilization.unwrap_or(0.0)
                };
                m.windows
                    .get_or_create(&WindowLabel {
                        account: account.clone(),
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
    for _ in events.iter().filter(|e| e.kind == "failover") {
        failovers.inc();
    }
    log_events(events);
}

fn log_event(e: &Event) {
    tracing::info!(kind = e.kind, message = %e.message, "gateway");
}

/// How many accounts a cascade's line names before it counts the rest (the plugin's notice
/// names as many).
const NAMED_IN_LINE: usize = 3;

/// One request's events as the gateway's log says them, as the OpenCode plugin tells them
/// (`noticesOf`): a cascade through several accounts, each turning the request away in turn,
/// is one line (it was one line per account, besides the engine's own for each hop); the
/// failovers that ended with every account cooling are that line's to say. Each hop is still
/// a line at debug, with every event's fields, for whoever reads the log by machine. A
/// cooldown is the engine's line at info (`Engine::rest`); its event here is at debug, where
/// it made a second info line saying the same.
fn log_events(events: &[Event]) {
    let failovers: Vec<&Event> = events.iter().filter(|e| e.kind == "failover").collect();
    let every_cooling = events
        .iter()
        .any(|e| e.kind == "all-cooling" || e.kind == "holding");
    let one_line = failovers.len() > 1 && !every_cooling;
    if one_line {
        tracing::info!(
            kind = "failover",
            accounts = failovers.len(),
            message = %cascade(&failovers, events),
            "gateway"
        );
    }
    for e in events {
        if (e.kind == "failover" && (one_line || every_cooling)) || e.kind == "rate-limited" {
            tracing::debug!(kind = e.kind, message = %e.message, "gateway");
        } else {
            log_event(e);
        }
    }
}

/// A cascade as one sentence: the accounts that turned the request away, grouped by why, and
/// where it went (or that none took it, when the last turned it away too).
fn cascade(failovers: &[&Event], events: &[Event]) -> String {
    let Some(last) = failovers.last().and_then(|e| e.to.clone()) else {
        return String::new();
    };
    let after_last_move = events
        .iter()
        .rposition(|e| e.kind == "failover")
        .map_or(events.len(), |i| i + 1);
    let last_refused = events[after_last_move..].iter().any(|e| {
        e.email.as_deref() == Some(last.as_str())
            && matches!(e.kind, "rate-limited" | "auth-error" | "unavailable")
    });
    let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
    for e in failovers {
        let from = e.email.clone().unwrap_or_default();
        let why = e
            .message
            .strip_prefix(&format!("{from} "))
            .and_then(|m| {
                m.strip_suffix(&format!(
                    "; this request moved to {}",
                    e.to.as_deref().unwrap_or_default()
                ))
            })
            .unwrap_or_default()
            .to_string();
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, emails)) if !emails.contains(&from) => emails.push(from),
            Some(_) => {}
            None => reasons.push((why, vec![from])),
        }
    }
    let mut accounts: Vec<&str> = reasons
        .iter()
        .flat_map(|(_, e)| e.iter().map(String::as_str))
        .collect();
    if last_refused {
        accounts.push(&last);
    }
    accounts.sort_unstable();
    accounts.dedup();
    let mut groups: Vec<String> = reasons
        .iter()
        .take(NAMED_IN_LINE)
        .map(|(why, emails)| match why.is_empty() {
            true => named(emails),
            false => format!("{} ({why})", named(emails)),
        })
        .collect();
    if reasons.len() > NAMED_IN_LINE {
        groups.push(format!("{} more reasons", reasons.len() - NAMED_IN_LINE));
    }
    let whither = if last_refused {
        format!("none took it (the last was {last})")
    } else {
        format!("so it moved to {last}")
    };
    format!(
        "{} accounts turned this request away in turn, {whither}: {}",
        accounts.len(),
        groups.join("; ")
    )
}

/// `a, b and c`; past `NAMED_IN_LINE`, `a, b, c and 2 more`.
fn named(emails: &[String]) -> String {
    let shown = &emails[..emails.len().min(NAMED_IN_LINE)];
    let rest = emails.len() - shown.len();
    match (shown, rest) {
        (_, r) if r > 0 => format!("{} and {r} more", shown.join(", ")),
        ([one], _) => one.clone(),
        ([init @ .., last], _) => format!("{} and {last}", init.join(", ")),
        ([], _) => String::new(),
    }
}

/// What the gateway's log says at once, while the request goes on (a hold beginning: it may
/// last hours, and a line at its end told the operator nothing while it lasted).
pub(super) fn notice() -> crate::engine::Notice {
    std::sync::Arc::new(|e: Event| log_event(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(from: &str, why: &str, to: &str) -> Event {
        Event::new(
            "failover",
            Some(from),
            format!("{from} {why}; this request moved to {to}"),
        )
        .to(to)
    }

    /// A cascade is one sentence in the gateway's log, as the plugin's notice says it.
    #[test]
    fn a_cascade_is_one_sentence() {
        let events = [
            Event::new("rate-limited", Some("a@x"), "a@x: 5h window exhausted"),
            moved("a@x", "5h window exhausted", "b@x"),
            moved("b@x", "5h window exhausted", "c@x"),
            moved("c@x", "answered 529", "d@x"),
        ];
        let failovers: Vec<&Event> = events.iter().filter(|e| e.kind == "failover").collect();
        assert_eq!(
            cascade(&failovers, &events),
            "3 accounts turned this request away in turn, so it moved to d@x: a@x and b@x (5h window exhausted); c@x (answered 529)"
        );
        let mut ended = events.to_vec();
        ended.push(Event::new("rate-limited", Some("d@x"), "d@x: limited"));
        let failovers: Vec<&Event> = ended.iter().filter(|e| e.kind == "failover").collect();
        assert!(cascade(&failovers, &ended).starts_with(
            "4 accounts turned this request away in turn, none took it (the last was d@x)"
        ));
        let many: Vec<String> = (1..=5).map(|i| format!("{i}@x")).collect();
        assert_eq!(named(&many), "1@x, 2@x, 3@x and 2 more");
        assert_eq!(named(&many[..2]), "1@x and 2@x");
    }

    /// Two accounts named with a credential each are two series, each named by its place.
    #[test]
    fn accounts_named_with_a_credential_are_told_apart_by_their_place() {
        let token = ["sk", "ant", "oat01", "0123456789abcdef0123"].join("-");
        let key = ["sk", "ant", "api03", "fedcba9876543210fedc"].join("-");
        let mut registry = Registry::default();
        let windows = Family::<WindowLabel, Gauge<f64, AtomicU64>>::default();
        registry.register("w", "windows", windows.clone());
        for (place, name, u) in [(0, token.as_str(), 0.25), (3, key.as_str(), 0.75)] {
            windows
                .get_or_create(&WindowLabel {
                    account: account_label(name, place),
                    window: label_value("5h"),
                })
                .set(u);
        }
        assert_eq!(account_label("a@x.test", 4), "a@x.test");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        series.sort_unstable();
        assert_eq!(
            series,
            [
                "w{account=\"[redacted] (#0)\",window=\"5h\"} 0.25",
                "w{account=\"[redacted] (#3)\",window=\"5h\"} 0.75"
            ],
            "{text}"
        );
        assert!(!text.contains("0123456789abcdef") && !text.contains("fedcba98765"));
    }

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
