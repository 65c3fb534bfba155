//! What an upstream answer says about limits: `retry-after`, the `anthropic-ratelimit-unified-*`
//! windows, and how long a 429 rests the account.
//!
//! A 429 either means a subscription window is exhausted (the unified headers say which one was
//! rejected: cool until it resets, however long that is) or a throttle with no window rejected
//! (cool for what `retry-after` says, briefly when it says nothing). The server's word is kept
//! as it is, however long: peers clamped a 7,999 s wait to minutes and then hammered the
//! account. Only the 8-day sanity cap applies (no window is longer than a week).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

const UNIFIED_PREFIX: &str = "anthropic-ratelimit-unified-";
/// A sanity cap on any cooldown: windows are at most a week; garbage must not bench forever.
const MAX_COOLDOWN_MS: i64 = 8 * 24 * 3600 * 1000;
/// Cooldown for a bare 429 that gave no `retry-after`.
const BURST_DEFAULT_MS: i64 = 5_000;
const HARD_STATUSES: &[&str] = &[
    "rejected",
    "rate_limited",
    "blocked",
    "queueing_hard",
    "payment_required",
];

/// `retry-after` as delta-seconds (fractions allowed) or an HTTP date. Garbage, negatives and
/// absurd values give None (the caller falls back to its default); never panics or overflows.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=30.0 * 24.0 * 3600.0).contains(&secs) {
            return None;
        }
        return Some(Duration::from_secs_f64(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    if !ms.is_finite() || !(0.0..=30.0 * 24.0 * 3600.0 * 1000.0).contains(&ms) {
        return None;
    }
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// A reset time: epoch seconds (or milliseconds), or an RFC 3339 date. Epoch ms out.
pub fn parse_reset(value: &str) -> Option<i64> {
    let v = value.trim();
    if let Ok(n) = v.parse::<f64>() {
        if !n.is_finite() || n <= 0.0 {
            return None;
        }
        let ms = if n < 1e12 { n * 1000.0 } else { n };
        return (ms < 1e15).then_some(ms as i64);
    }
    let t = humantime::parse_rfc3339_weak(v).ok()?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// `5h`, `7d`, `7d_opus`, ... as named in the header.
    pub claim: String,
    pub status: Option<String>,
    pub reset: Option<i64>,
    pub utilization: Option<f64>,
}

impl Window {
    fn rejected(&self) -> bool {
        self.status.as_deref().is_some_and(is_hard)
    }
}

fn is_hard(status: &str) -> bool {
    HARD_STATUSES.contains(&status.trim().to_ascii_lowercase().as_str())
}

/// Everything rate-limit related an answer said, parsed defensively.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub retry_after_ms: Option<i64>,
    pub status: Option<String>,
    pub reset: Option<i64>,
    pub windows: Vec<Window>,
}

impl Limits {
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Limits {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let retry_after = get("retry-after-ms")
            .and_then(parse_retry_after_ms)
            .or_else(|| get("retry-after").and_then(|v| parse_retry_after(v, now)))
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64);
        let mut limits = Limits {
            retry_after_ms: retry_after,
            ..Limits::default()
        };
        for (name, value) in headers {
            let Some(rest) = name.as_str().strip_prefix(UNIFIED_PREFIX) else {
                continue;
            };
            let Ok(value) = value.to_str() else { continue };
            match rest {
                "status" => limits.status = Some(value.trim().to_string()),
                "reset" => limits.reset = parse_reset(value),
                _ => {
                    let (claim, field) = match rest.rsplit_once('-') {
                        Some(pair) => pair,
                        None => continue,
                    };
                    let w = limits.window_mut(claim);
                    match field {
                        "status" => w.status = Some(value.trim().to_string()),
                        "reset" => w.reset = parse_reset(value),
                        "utilization" => {
                            w.utilization = value
                                .trim()
                                .parse::<f64>()
                                .ok()
                                .filter(|u| u.is_finite() && *u >= 0.0)
                        }
                        _ => {}
                    }
                }
            }
        }
        limits
    }

    fn window_mut(&mut self, claim: &str) -> &mut Window {
        if let Some(i) = self.windows.iter().position(|w| w.claim == claim) {
            return &mut self.windows[i];
        }
        self.windows.push(Window {
            claim: claim.to_string(),
            ..Window::default()
        });
        let last = self.windows.len() - 1;
        &mut self.windows[last]
    }

    pub fn window(&self, claim: &str) -> Option<&Window> {
        self.windows.iter().find(|w| w.claim == claim)
    }

    pub fn has_quota_info(&self) -> bool {
        self.status.is_some() || !self.windows.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CooldownKind {
    /// A subscription window was rejected (named by its claim, e.g. `5h`).
    Window(String),
    /// A short throttle with no exhausted window.
    Burst,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cooldown {
    pub until: i64,
    pub kind: CooldownKind,
}

impl Cooldown {
    pub fn describe(&self) -> String {
        match &self.kind {
            CooldownKind::Window(claim) => format!("{claim} window exhausted"),
            CooldownKind::Burst => "rate limited (no window exhausted)".to_string(),
        }
    }
}

/// The 429 policy: how long this account rests.
pub fn cooldown_for_429(limits: &Limits, now_ms: i64) -> Cooldown {
    let retry_at = limits.retry_after_ms.map(|d| now_ms.saturating_add(d));
    let mut rejected: Vec<&Window> = limits.windows.iter().filter(|w| w.rejected()).collect();
    // Some exhausted-window answers carry no per-window status, only utilization past 100 %.
    if rejected.is_empty() {
        rejected = limits
            .windows
            .iter()
            .filter(|w| w.utilization.is_some_and(|u| u >= 1.0))
            .collect();
    }
    let overall_hard = limits.status.as_deref().is_some_and(is_hard);
    // The overall reset first: on a tie the named window (e.g. `5h`) wins, which says more.
    let mut resets: Vec<(i64, String)> = Vec::new();
    if overall_hard {
        if let Some(r) = limits.reset {
            resets.push((r, "unified".to_string()));
        }
    }
    resets.extend(
        rejected
            .iter()
            .filter_map(|w| w.reset.map(|r| (r, w.claim.clone()))),
    );
    let latest = resets
        .into_iter()
        .filter(|(r, _)| *r > now_ms)
        .max_by_key(|(r, _)| *r);
    if let Some((reset, claim)) = latest {
        let until = retry_at.map_or(reset, |r| r.max(reset));
        return Cooldown {
            until: until.min(now_ms + MAX_COOLDOWN_MS),
            kind: CooldownKind::Window(claim),
        };
    }
    let wait = limits
        .retry_after_ms
        .unwrap_or(BURST_DEFAULT_MS)
        .clamp(1_000, MAX_COOLDOWN_MS);
    Cooldown {
        until: now_ms + wait,
        kind: CooldownKind::Burst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reqwest::header::{HeaderName, HeaderValue};

    const NOW: i64 = 1_800_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW as u64)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn retry_after_table() {
        let n = now();
        let secs = |v| parse_retry_after(v, n).map(|d| d.as_millis());
        assert_eq!(secs("120"), Some(120_000));
        assert_eq!(secs("0"), Some(0));
        assert_eq!(secs("1.5"), Some(1_500));
        assert_eq!(secs("-5"), None);
        assert_eq!(secs(""), None);
        assert_eq!(secs("abc"), None);
        assert_eq!(secs("NaN"), None);
        assert_eq!(secs("99999999999"), None);
        let future = httpdate::fmt_http_date(n + Duration::from_secs(90));
        assert_eq!(secs(&future), Some(90_000));
        let past = httpdate::fmt_http_date(n - Duration::from_secs(90));
        assert_eq!(secs(&past), Some(0));
        assert_eq!(
            parse_retry_after_ms("1500").map(|d| d.as_millis()),
            Some(1500)
        );
        let l = Limits::from_headers(
            &headers(&[("retry-after", "9"), ("retry-after-ms", "1500")]),
            n,
        );
        assert_eq!(l.retry_after_ms, Some(1500));
        let l = Limits::from_headers(
            &headers(&[("retry-after", "9"), ("retry-after-ms", "x")]),
            n,
        );
        assert_eq!(l.retry_after_ms, Some(9000));
    }

    #[test]
    fn reset_formats() {
        assert_eq!(parse_reset("1800000100"), Some(1_800_000_100_000));
        assert_eq!(parse_reset("1800000100000"), Some(1_800_000_100_000));
        assert_eq!(parse_reset("2027-01-15T08:00:00Z"), Some(1_800_000_000_000));
        assert!(parse_reset("2027-01-15T08:00:00Z").unwrap() > 1_700_000_000_000);
        assert_eq!(parse_reset("-3"), None);
        assert_eq!(parse_reset("garbage"), None);
    }

    #[test]
    fn rejected_five_hour_window_cools_until_reset_without_clamp() {
        let reset = (NOW / 1000 + 7999).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("retry-after", "30"),
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &reset),
                ("anthropic-ratelimit-unified-5h-utilization", "1.01"),
            ]),
            now(),
        );
        let c = cooldown_for_429(&l, NOW);
        assert_eq!(c.until, NOW + 7_999_000);
        assert_eq!(c.kind, CooldownKind::Window("5h".into()));
    }

    #[test]
    fn both_windows_rejected_the_later_wins_and_retry_after_can_be_later() {
        let r5 = (NOW / 1000 + 100).to_string();
        let r7 = (NOW / 1000 + 90_000).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &r5),
                ("anthropic-ratelimit-unified-7d-status", "rejected"),
                ("anthropic-ratelimit-unified-7d-reset", &r7),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW).until, NOW + 90_000_000);
        let l = Limits::from_headers(
            &headers(&[
                ("retry-after", "500"),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &r5),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW).until, NOW + 500_000);
    }

    #[test]
    fn bare_429_rests_as_long_as_the_server_says() {
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "2")]), now()),
            NOW,
        );
        assert_eq!((c.until, c.kind), (NOW + 2_000, CooldownKind::Burst));
        let c = cooldown_for_429(&Limits::default(), NOW);
        assert_eq!(c.until, NOW + BURST_DEFAULT_MS);
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "7999")]), now()),
            NOW,
        );
        assert_eq!(c.until, NOW + 7_999_000, "never clamped to minutes");
        let three_hours = httpdate::fmt_http_date(now() + Duration::from_secs(3 * 3600));
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", &three_hours)]), now()),
            NOW,
        );
        assert_eq!(c.until, NOW + 3 * 3600 * 1000);
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "1000000")]), now()),
            NOW,
        );
        assert_eq!(c.until, NOW + MAX_COOLDOWN_MS, "the 8-day sanity cap");
    }

    #[test]
    fn far_future_and_past_resets_are_sane() {
        let far = (NOW / 1000 + 400 * 86_400).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-7d-status", "rejected"),
                ("anthropic-ratelimit-unified-7d-reset", &far),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW).until, NOW + MAX_COOLDOWN_MS);
        let past = (NOW / 1000 - 100).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &past),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW).kind, CooldownKind::Burst);
    }

    #[test]
    fn passive_quota_is_read_from_any_answer() {
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "allowed_warning"),
                ("anthropic-ratelimit-unified-5h-utilization", "0.93"),
                ("anthropic-ratelimit-unified-5h-reset", "1800003600"),
                ("anthropic-ratelimit-unified-7d-utilization", "garbage"),
            ]),
            now(),
        );
        assert_eq!(l.window("5h").unwrap().utilization, Some(0.93));
        assert_eq!(l.window("7d").unwrap().utilization, None);
        assert_eq!(cooldown_for_429(&l, NOW).kind, CooldownKind::Burst);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = parse_retry_after(&s, now());
            let _ = parse_retry_after_ms(&s);
            let _ = parse_reset(&s);
        }

        #[test]
        fn cooldowns_are_in_the_future_and_bounded(
            retry in proptest::option::of(0i64..10_000_000_000),
            reset in proptest::option::of(-10_000_000i64..10_000_000_000),
            hard in any::<bool>(),
        ) {
            let mut l = Limits { retry_after_ms: retry, ..Limits::default() };
            l.windows.push(Window {
                claim: "5h".into(),
                status: Some(if hard { "rejected".into() } else { "allowed".into() }),
                reset: reset.map(|r| NOW + r),
                utilization: None,
            });
            let c = cooldown_for_429(&l, NOW);
            prop_assert!(c.until > NOW);
            prop_assert!(c.until <= NOW + MAX_COOLDOWN_MS);
        }
    }
}
