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

pub(crate) const UNIFIED_PREFIX: &str = "anthropic-ratelimit-unified-";
/// The most windows kept per account (Anthropic names a handful: 5h, 7d, 7d_sonnet, ...). The
/// names come from answer headers: a server naming new ones on every answer would otherwise
/// grow the pool file without end. Past the cap, the windows heard of longest ago go.
pub const MAX_WINDOWS: usize = 16;
/// The most model families and endpoints resting at once per account (`modelCooldowns`; there
/// are a handful: sonnet, opus, haiku, and the three endpoints with limits of their own). The
/// family comes from the request's `model`: a client naming a new one per request, each refused
/// by a model-scoped 429, added a rest per request that lasted up to the window's reset (days),
/// to the pool file and to the process (100,000 requests: a 5.5 MB file, every write rewriting
/// it). Past the cap, the rests that end soonest go (the one just decided stays); a family whose
/// rest went is refused once more and rests again.
pub const MAX_SCOPED_COOLDOWNS: usize = 16;
/// A sanity cap on any cooldown: windows are at most a week; garbage must not bench forever.
pub(crate) const MAX_COOLDOWN_MS: i64 = 8 * 24 * 3600 * 1000;
/// How far ahead of the clock a stored end (a cooldown, a window's reset) is believed: the cap an
/// end is given when it is heard (`MAX_COOLDOWN_MS`), and a day for the clocks of the hosts that
/// share the pool.
const BELIEVED_AHEAD_MS: i64 = MAX_COOLDOWN_MS + 24 * 3600 * 1000;

/// `end`, unless it lies further ahead of `now` than any end the pool writes (`BELIEVED_AHEAD_MS`):
/// then it is garbled (an older build's, a hand edit's, another program's) and read as none. The
/// cap applied only to what answers said, and a reset a year ahead in the file held an account at
/// its reserve line for the year: no request went to it, so no answer could correct it, and
/// `reset-cooldowns` found nothing cooling. Not capped to the limit either: read from the file
/// again and again, an end of now + 8 days would never come.
pub fn believed_end(end: i64, now: i64) -> Option<i64> {
    (end <= now.saturating_add(BELIEVED_AHEAD_MS)).then_some(end)
}
/// Cooldown for a bare 429 that gave no `retry-after`.
const BURST_DEFAULT_MS: i64 = 5_000;
/// The least a 429's `retry-after` rests anything: what refused a request a moment ago is not
/// asked again within the same second.
const MIN_REST_MS: i64 = 1_000;
const SOFT_STATUSES: &[&str] = &["allowed", "allowed_warning", "queueing_soft"];
const HARD_STATUSES: &[&str] = &[
    "rejected",
    "rate_limited",
    "blocked",
    "queueing_hard",
    "payment_required",
];

/// The longest wait a `retry-after` is read as; every rest is capped shorter still
/// (`MAX_COOLDOWN_MS`), so this only keeps the arithmetic finite.
const RETRY_AFTER_CEILING_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// `retry-after` as delta-seconds (fractions allowed) or an HTTP date. Garbage and negatives
/// give None (the caller falls back to its default); a number past 30 days is read as 30 days,
/// as a date that far ahead is: a server asking for a long wait was taken as saying nothing, and
/// the account asked again after the 5 s default, while 29 days rested it the 8-day cap. Never
/// panics or overflows.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Some(secs) = wait_number(v) {
        return seconds_capped(secs);
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    seconds_capped(wait_number(value.trim())? / 1000.0)
}

/// A wait written as a number. One too large for a float (`1e400`, 400 digits) is the longest
/// wait, not garbage: read as infinity and refused, the account was asked again after 5 s.
/// The words `inf` and `NaN`, which parse too, stay garbage.
fn wait_number(v: &str) -> Option<f64> {
    let n = v.parse::<f64>().ok()?;
    let written_as_digits = v
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    Some(if n == f64::INFINITY && written_as_digits {
        f64::MAX
    } else {
        n
    })
}

fn seconds_capped(secs: f64) -> Option<Duration> {
    // `inf` parses as a number too: a server's garbage, not a wait.
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::from_secs_f64(secs.min(RETRY_AFTER_CEILING_SECS)))
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
    // An offset other than `Z` (`+02:00`) too: the reset was lost, and a rejected window with no
    // reset rested the account 5 s instead of until it resets.
    crate::account::parse_iso_ms(v)
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// `5h`, `7d`, `7d_sonnet`, ... exactly as named in the header: a new name works as it is.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Epoch ms.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_ms"
    )]
    pub reset: Option<i64>,
    /// A fraction: 1.0 is the whole window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surpassed_threshold: Option<f64>,
    /// When the request whose answer said this was sent (epoch ms, this machine's clock): what
    /// orders two answers about one window (`newer`). Not when the answer came: a request sent
    /// earlier can be answered later (a long non-streamed answer's headers come at its end), yet
    /// what it says was decided when it was let in, before a later request's 429.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_ms"
    )]
    pub updated_at: Option<i64>,
}

impl Window {
    fn rejected(&self) -> bool {
        self.status.as_deref().is_some_and(is_hard)
    }

    /// Exhausted by what its use reads (100 % or more), unless the window says it is allowed
    /// (a soft status): at 100 % (reached, not surpassed, or drawing on extra usage) such a
    /// window is allowed, and a 429 beside it is a throttle; read as spent, it rested the account
    /// until the window's reset.
    fn spent_by_use(&self) -> bool {
        !self.status.as_deref().is_some_and(is_soft) && self.utilization.is_some_and(|u| u >= 1.0)
    }

    /// The model family a window is limited to: `7d_sonnet` -> `sonnet`; `5h`, `7d` -> None.
    pub fn scope(&self) -> Option<&str> {
        self.name
            .split_once('_')
            .map(|(_, s)| s)
            .filter(|s| !s.is_empty())
    }

    /// The model family a scoped window is that family's quota of, if its name says one
    /// (`7d_sonnet`, `7d_opus_4`); None for account-wide windows and for a scope that is no
    /// family's (`7d_oauth_apps`).
    pub fn family(&self) -> Option<String> {
        self.scope().and_then(scope_family)
    }

    /// Whether this window limits a request for `family`: a family's window limits that
    /// family's requests; any other (account-wide, or a scope the pool cannot tie to a family,
    /// such as `7d_oauth_apps`) limits every request of the account, as the 429 policy reads it.
    pub fn applies_to(&self, family: Option<&str>) -> bool {
        match self.family() {
            None => true,
            Some(s) => family.is_some_and(|f| f.eq_ignore_ascii_case(&s)),
        }
    }

    /// How far the clock reading `now` was stepped back since the request that said this was
    /// sent (`updated_at`, this machine's clock then), when it was (by more than
    /// `CLOCK_STEP_MS`); 0 otherwise.
    pub fn clock_set_back(&self, now: i64) -> i64 {
        self.updated_at
            .map(|at| at.saturating_sub(now))
            .filter(|back| *back > crate::account::CLOCK_STEP_MS)
            .unwrap_or(0)
    }

    /// Moves the window onto the clock as it reads `now` when that was stepped back since it was
    /// heard of: its reset lasts at most what it had left then (as cooldowns do), and it was
    /// heard of no later than now. A reset is a time of day moved onto this clock when it came;
    /// after NTP set the clock back two hours, a reserve kept the account from the pool two hours
    /// past the reset the server gave (and nothing asked, so no answer corrected it), and every
    /// answer about the window meanwhile was taken for older news than the one before the step.
    pub fn settle_clock(&mut self, now: i64) {
        let back = self.clock_set_back(now);
        if back > 0 {
            self.reset = self.reset.map(|r| r.saturating_sub(back));
            self.updated_at = self.updated_at.map(|u| u.saturating_sub(back));
        }
        self.reset = self.reset.and_then(|r| believed_end(r, now));
    }
}

/// `Window::settle_clock` for each.
pub fn settle_windows(windows: &mut [Window], now: i64) {
    windows.iter_mut().for_each(|w| w.settle_clock(now));
}

/// An epoch as stored: an integer, or a float some writer produced.
fn lenient_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = <Option<serde_json::Value> as serde::Deserialize>::deserialize(d)?;
    Ok(v.and_then(|v| v.as_f64())
        .filter(|f| f.is_finite() && *f >= 0.0)
        .map(|f| f as i64))
}

fn is_hard(status: &str) -> bool {
    HARD_STATUSES.contains(&status.trim().to_ascii_lowercase().as_str())
}

fn is_soft(status: &str) -> bool {
    SOFT_STATUSES.contains(&status.trim().to_ascii_lowercase().as_str())
}

/// The family of a model id, which scoped windows and cooldowns are keyed by:
/// `claude-sonnet-4-5` -> `sonnet`, `claude-3-5-haiku-latest` -> `haiku`.
pub fn model_family(model: &str) -> Option<String> {
    model
        .trim()
        .to_ascii_lowercase()
        .split(['-', '_', '.', ' ', '/'])
        .filter(|p| !p.is_empty() && *p != "claude" && *p != "anthropic")
        .find(|p| p.chars().all(|c| c.is_ascii_alphabetic()) && p.len() > 2 && *p != "latest")
        .map(str::to_string)
}

/// The model family a window's scope names: a family's name (as `model_family` makes them),
/// alone or followed by a version (`opus_4`, `opus_4_1` -> `opus`). None for a scope with other
/// words in it (`oauth_apps`): nothing ties it to one family.
fn scope_family(scope: &str) -> Option<String> {
    let scope = scope.trim().to_ascii_lowercase();
    let mut words = scope
        .split(['-', '_', '.', ' ', '/'])
        .filter(|p| !p.is_empty() && *p != "claude" && *p != "anthropic");
    let family = words.next()?;
    let named = family.chars().all(|c| c.is_ascii_alphabetic()) && family.len() > 2;
    let versions = words.all(|p| p.chars().all(|c| c.is_ascii_digit()));
    (named && versions && family != "latest").then(|| family.to_string())
}

/// Token counting's own limits (`/v1/messages/count_tokens`).
pub const COUNT_TOKENS: &str = "count_tokens";
/// The Message Batches API's own limits (`/v1/messages/batches...`).
pub const MESSAGE_BATCHES: &str = "message_batches";
/// The Files API's own limits (`/v1/files...`).
pub const FILES_API: &str = "files_api";

/// The API's limits of its own that a request to `path` falls under, when they are not the
/// messages': token counting, the Message Batches API and the Files API are limited apart from
/// message creation at Anthropic, so a throttle there (a 429 that exhausted no window) rests
/// only that on the account (`modelCooldowns`, under the key returned) and the account goes on
/// serving messages. Each key holds a `_`, which no model family (`model_family`) does.
pub fn endpoint_limits(path: &str) -> Option<&'static str> {
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    if segments.next() != Some("v1") {
        return None;
    }
    match (segments.next(), segments.next()) {
        (Some("messages"), Some("count_tokens")) => Some(COUNT_TOKENS),
        (Some("messages"), Some("batches")) => Some(MESSAGE_BATCHES),
        (Some("files"), _) => Some(FILES_API),
        _ => None,
    }
}

/// The endpoints with limits of their own, and what resting one means for a person. The one list
/// of them: the status lines of the CLI and the plugin ask for it (`restScopes`).
pub const ENDPOINT_SCOPES: &[(&str, &str)] = &[
    (COUNT_TOKENS, "token counting"),
    (MESSAGE_BATCHES, "message batches"),
    (FILES_API, "files"),
];

/// What a scoped cooldown rests, for a person: `sonnet models`, `token counting`.
pub fn scope_text(scope: &str) -> String {
    match ENDPOINT_SCOPES.iter().find(|(key, _)| *key == scope) {
        Some((_, text)) => (*text).to_string(),
        None => format!("{scope} models"),
    }
}

/// Whether a window used to `utilization` has reached the line a `reserve` (both fractions)
/// draws at `1 - reserve`. Within a millionth: `1.0 - 0.7` is 0.30000000000000004 in floating
/// point, and a reserve of 0.7 let the account be chosen with its window at 30 %.
pub fn past_reserve_line(utilization: f64, reserve: f64) -> bool {
    utilization >= 1.0 - reserve - 1e-6
}

/// The extra-usage state an answer reported (`-overage-*`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<bool>,
}

impl Overage {
    fn is_empty(&self) -> bool {
        self == &Overage::default()
    }
}

/// Everything rate-limit related an answer said, parsed defensively.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub retry_after_ms: Option<i64>,
    pub status: Option<String>,
    pub reset: Option<i64>,
    pub representative_claim: Option<String>,
    pub overage: Overage,
    pub windows: Vec<Window>,
    /// When the request this answered was sent (epoch ms), once the exchange says (`sent_at`):
    /// orders the overall fields as `Window::updated_at` orders each window.
    pub sent_at: Option<i64>,
}

const WINDOW_FIELDS: &[&str] = &["surpassed-threshold", "utilization", "status", "reset"];

/// The most a window's use is read as (1,000 %): a spent window says a little over 1.0, and a
/// number past this is no window's (`1e308` was kept, and `status` showed `Infinity%`).
const MAX_FRACTION: f64 = 10.0;

fn fraction(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|u| (0.0..=MAX_FRACTION).contains(u))
}

/// A header value as text we keep: short, printable, and nothing shaped like a token. It is
/// stored and shown (`status`, `poolStatus`), and a server or relay that echoes the credential
/// it was sent puts it in whatever header it echoes into.
fn short(value: &str) -> String {
    let kept: String = value
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    crate::secret::scrub_tokens(&kept)
}

/// The values of a header said more than once, as a runtime's `Headers` joins them ("30, 600"),
/// each on its own (a value said once is among them). An HTTP date holds a comma of its own
/// after its weekday: each piece is also tried with the next one. At most 16 pieces are read.
fn listed(value: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> + '_ {
    let pieces: Vec<&str> = if value.contains(',') {
        value.split(',').take(16).collect()
    } else {
        vec![value]
    };
    let pairs: Vec<std::borrow::Cow<'_, str>> = pieces
        .windows(2)
        .map(|p| format!("{},{}", p[0], p[1]).into())
        .collect();
    pieces.into_iter().map(Into::into).chain(pairs)
}

/// A status said more than once, or after another: a hard one (`rejected`) over any soft one,
/// else the last said. Two answers in one cannot both be true, and the one that refuses is what
/// a 429 is judged by.
fn severest(known: Option<String>, value: &str) -> Option<String> {
    let said: Vec<String> = value
        .split(',')
        .map(short)
        .filter(|v| !v.is_empty())
        .collect();
    let hard = said.iter().find(|v| is_hard(v)).cloned();
    let fresh = hard.clone().or_else(|| said.last().cloned());
    match known {
        Some(k) if is_hard(&k) && hard.is_none() => Some(k),
        known => fresh.or(known),
    }
}

/// A reset said more than once: the latest.
fn latest_reset(known: Option<i64>, value: &str) -> Option<i64> {
    value.split(',').filter_map(parse_reset).chain(known).max()
}

/// Below this, a `Date` header and the local clock are taken to agree: `Date` has whole seconds,
/// and a request takes time.
const SKEW_TOLERANCE_MS: i64 = 2_000;

/// How far this machine's clock runs ahead of the server's (negative: behind), from the
/// answer's `Date`; 0 when they agree, and when `Date` is missing, garbage, or further off than
/// any window is long. Resets come as the server's epoch times: with a clock an hour slow (a
/// laptop's WSL after sleep, a VM restored from a snapshot) an exhausted 5-hour window would
/// otherwise bench the account an hour past its reset, and a fast clock would retry it early.
pub fn clock_skew_ms(headers: &HeaderMap, now: SystemTime) -> i64 {
    // Said twice (a proxy adding its own), `Date` says nothing the pool can go by: the first
    // was taken here, and Node's `Headers` joins the two into a value no date parses, so the
    // two transports read different clocks off one answer.
    let mut dates = headers.get_all(reqwest::header::DATE).iter();
    let (Some(date), None) = (dates.next(), dates.next()) else {
        return 0;
    };
    let Some(date) = Some(date)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return 0;
    };
    let ms = |t: SystemTime| match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    // The server's clock read somewhere within the second `Date` names: its middle.
    let skew = ms(now).saturating_sub(ms(date).saturating_add(500));
    if skew.abs() <= SKEW_TOLERANCE_MS || skew.abs() > MAX_COOLDOWN_MS {
        return 0;
    }
    skew
}

impl Limits {
    /// The limits an answer states, with its epoch times moved onto this machine's clock (see
    /// `clock_skew_ms`): every time the pool keeps and compares is the local clock's.
    pub fn from_headers(headers: &HeaderMap, now: SystemTime) -> Limits {
        let skew = clock_skew_ms(headers, now);
        let server_now = if skew >= 0 {
            now.checked_sub(Duration::from_millis(skew.unsigned_abs()))
        } else {
            now.checked_add(Duration::from_millis(skew.unsigned_abs()))
        }
        .unwrap_or(now);
        let mut limits = Limits::as_stated(headers, server_now);
        let local = |t: &mut Option<i64>| *t = t.map(|t| t.saturating_add(skew));
        local(&mut limits.reset);
        local(&mut limits.overage.reset);
        limits.windows.iter_mut().for_each(|w| local(&mut w.reset));
        // No window is longer than a week: a reset past the 8-day cap is not a window's (a
        // garbled header), and kept as said it held an account with a reserve out of the pool
        // until then, a year say, the pool answering each request with that year as its
        // `retry-after`. The overage's reset is a month's, and stays as said.
        let latest = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .saturating_add(MAX_COOLDOWN_MS);
        let capped = |t: &mut Option<i64>| *t = t.map(|t| t.min(latest));
        capped(&mut limits.reset);
        limits.windows.iter_mut().for_each(|w| capped(&mut w.reset));
        limits
    }

    /// The limits as the server stated them, its epoch times as they are.
    fn as_stated(headers: &HeaderMap, now: SystemTime) -> Limits {
        // Said more than once (a proxy adding its own), the longest wait is the server's word:
        // Node's `Headers` hands the values over joined ("30, 600") and the other transport one
        // by one, and a joined pair, read as garbage, rested the account 5 s where the other
        // transport rested it 30.
        let longest = |name: &str, parse: &dyn Fn(&str) -> Option<Duration>| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(listed)
                .filter_map(|v| parse(&v))
                .max()
        };
        let retry_after = longest("retry-after-ms", &parse_retry_after_ms)
            .or_else(|| longest("retry-after", &|v| parse_retry_after(v, now)))
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
                "status" => limits.status = severest(limits.status.take(), value),
                "reset" => limits.reset = latest_reset(limits.reset, value),
                "representative-claim" => {
                    limits.representative_claim =
                        widest_claim(limits.representative_claim.take(), value)
                }
                "fallback-percentage" | "fallback" => {}
                // Said twice, read as the windows' fields are: joined, the pair was kept as one
                // word ("rejected, allowed") and its reset lost; apart, the last one counted.
                "overage-status" => {
                    limits.overage.status = severest(limits.overage.status.take(), value)
                }
                "overage-reset" => limits.overage.reset = latest_reset(limits.overage.reset, value),
                "overage-disabled-reason" => {
                    limits.overage.disabled_reason = value
                        .split(',')
                        .map(short)
                        .rev()
                        .find(|v| !v.is_empty())
                        .or(limits.overage.disabled_reason.take())
                }
                "overage-in-use" => {
                    let said = value
                        .split(',')
                        .any(|v| v.trim().eq_ignore_ascii_case("true"));
                    limits.overage.in_use = Some(limits.overage.in_use == Some(true) || said)
                }
                _ if rest.starts_with("overage-") => {}
                _ => {
                    let Some((window, field)) = WINDOW_FIELDS.iter().find_map(|f| {
                        rest.strip_suffix(f)
                            .and_then(|w| w.strip_suffix('-'))
                            .filter(|w| !w.is_empty() && w.len() <= 40)
                            .map(|w| (w, *f))
                    }) else {
                        continue;
                    };
                    let Some(w) = limits.window_mut(window) else {
                        continue;
                    };
                    let most = |known: Option<f64>| {
                        listed(value)
                            .filter_map(|v| fraction(&v))
                            .chain(known)
                            .max_by(f64::total_cmp)
                    };
                    match field {
                        "status" => w.status = severest(w.status.take(), value),
                        "reset" => w.reset = latest_reset(w.reset, value),
                        "utilization" => w.utilization = most(w.utilization),
                        _ => w.surpassed_threshold = most(w.surpassed_threshold),
                    }
                }
            }
        }
        limits
    }

    fn window_mut(&mut self, name: &str) -> Option<&mut Window> {
        if let Some(i) = self.windows.iter().position(|w| w.name == name) {
            return Some(&mut self.windows[i]);
        }
        if self.windows.len() >= MAX_WINDOWS {
            return None;
        }
        self.windows.push(Window {
            name: name.to_string(),
            ..Window::default()
        });
        self.windows.last_mut()
    }

    pub fn window(&self, name: &str) -> Option<&Window> {
        self.windows.iter().find(|w| w.name == name)
    }

    /// These limits as of `at`, when the request they answered was sent.
    /// These limits without `secret` (the credential the request was sent with) or a piece of
    /// it in the text the headers gave: statuses, the claim, the reason and the windows' names,
    /// which are stored and shown by `status` and `/metrics`. A server echoing the credential
    /// into them (a header named after it) had it kept there (found by a review). Compared
    /// without case too, as header names come lower-cased; a window named with a piece is
    /// dropped, a name cannot be redacted in place. Text shorter than a piece costs nothing.
    pub fn without_secret(mut self, secret: &crate::secret::Secret) -> Limits {
        const PIECE: usize = 12;
        let long = |v: &Option<String>| v.as_ref().is_some_and(|v| v.len() >= PIECE);
        if !(long(&self.status)
            || long(&self.representative_claim)
            || long(&self.overage.status)
            || long(&self.overage.disabled_reason)
            || self
                .windows
                .iter()
                .any(|w| w.name.len() >= PIECE || long(&w.status)))
        {
            return self;
        }
        // Its base64, hex and random part too: a status of 64 base64 characters, kept and
        // shown by `status`, decoded to the token less its last few characters.
        let all = crate::echo::with_reshaped(&[secret]);
        let forms: Vec<&crate::secret::Secret> = all.iter().collect();
        let clean = |value: &mut Option<String>| {
            if let Some(v) = value.as_mut().filter(|v| v.len() >= PIECE) {
                *v = crate::secret::scrub_pieces(v, &forms);
            }
        };
        clean(&mut self.status);
        clean(&mut self.representative_claim);
        clean(&mut self.overage.status);
        clean(&mut self.overage.disabled_reason);
        self.windows
            .retain(|w| w.name.len() < PIECE || !crate::secret::holds_piece(&w.name, &forms));
        for w in &mut self.windows {
            clean(&mut w.status);
        }
        self
    }

    pub fn sent_at(mut self, at: i64) -> Limits {
        self.sent_at = Some(at);
        for w in &mut self.windows {
            w.updated_at = Some(at);
        }
        self
    }

    pub fn has_quota_info(&self) -> bool {
        self.status.is_some() || !self.windows.is_empty() || !self.overage.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CooldownKind {
    /// A subscription window was rejected (named as in the header, e.g. `5h`, `7d_sonnet`).
    Window(String),
    /// A throttle with no exhausted window.
    Burst,
    /// A Console key's monthly spend limit.
    SpendLimit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cooldown {
    pub until: i64,
    pub kind: CooldownKind,
    /// The model family this cooldown is limited to; None rests the whole account.
    pub scope: Option<String>,
}

impl Cooldown {
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            CooldownKind::Window(claim) => format!("{claim} window exhausted"),
            CooldownKind::Burst => "rate limited (no window exhausted)".to_string(),
            CooldownKind::SpendLimit => {
                "the API key's monthly spend limit is reached (raise it in the Console, then `oauth-pool reset-cooldowns`)".to_string()
            }
        };
        match &self.scope {
            Some(scope) => format!("{what} for {}", scope_text(scope)),
            None => what,
        }
    }
}

/// A representative claim said more than once (a proxy duplicating headers; Node's `Headers`
/// joins them, "five_hour, seven_day_opus", which named no window): the one that holds back the
/// most requests, as a hard status wins over a soft one. An account-wide window over a model's,
/// the longer window over the shorter, a window over a claim that names none; else the last.
fn widest_claim(known: Option<String>, value: &str) -> Option<String> {
    let reach = |claim: &str| match claimed_window(claim) {
        Some(w) => match w.split_once('_') {
            None if w == "7d" => 4,
            None => 3,
            Some(("7d", _)) => 2,
            Some(_) => 1,
        },
        None => 0,
    };
    known
        .into_iter()
        .chain(value.split(',').map(short).filter(|c| !c.is_empty()))
        .fold(None, |widest: Option<String>, c| match widest {
            Some(w) if reach(&w) > reach(&c) => Some(w),
            _ => Some(c),
        })
}

/// The 429 policy: how long the account rests, and for which models.
///
/// - A rejected account-wide window (`5h`, `7d`, or any unscoped one) rests the whole account
///   until the latest such reset.
/// - Rejected windows that are all model-scoped (`7d_sonnet`), or a unified status `rejected`
///   while no account-wide window is, rest only the request's model family on this account
///   (the window's family when the request named none, and the whole account when the window
///   names no family either, such as `7d_oauth_apps`): a quota for one model never benches
///   the others. Another model family's window is no reason for this request's 429, and the
///   unified status is the representative claim's window's: an account-wide claim rests the
///   account, another model's claim is not this request's.
/// - Otherwise it is a throttle: `retry-after`, or 5 s, for the whole account, or for the
///   request's `endpoint` alone when that has limits of its own (`endpoint_limits`).
///
/// `family` is the request's model family; `endpoint` the endpoint's own limits it falls under,
/// if any. `retry-after` is honoured in every case; nothing is longer than 8 days.
pub fn cooldown_for_429(
    limits: &Limits,
    now_ms: i64,
    family: Option<&str>,
    endpoint: Option<&str>,
) -> Cooldown {
    // Floored as a throttle's is below: a model refused with `retry-after-ms: 1` rested 1 ms,
    // and with no reopening spread its next request went straight back to this account.
    let retry_at = limits
        .retry_after_ms
        .map(|d| now_ms.saturating_add(d.max(MIN_REST_MS)));
    // An answer carries every window the account has: another model's exhausted quota (a
    // `7d_opus` rejected for days) comes with a sonnet request's throttle too, and taken for its
    // reason it rested sonnet on the account until opus's weekly reset.
    let relevant = |w: &&Window| !w.scope().is_some_and(|s| another_models(s, family));
    let mut rejected: Vec<&Window> = limits
        .windows
        .iter()
        .filter(|w| w.rejected())
        .filter(relevant)
        .collect();
    // Some exhausted-window answers carry no per-window status, only utilization past 100 %.
    if rejected.is_empty() {
        rejected = limits
            .windows
            .iter()
            .filter(|w| w.spent_by_use())
            .filter(relevant)
            .collect();
    }
    let cap = |until: i64| until.min(now_ms + MAX_COOLDOWN_MS);
    let latest = |windows: &[&Window]| {
        windows
            .iter()
            .filter_map(|w| w.reset.filter(|r| *r > now_ms).map(|r| (r, w.name.clone())))
            .max_by_key(|(r, _)| *r)
    };
    // The overall status is about the window the representative claim names: when that is
    // another model's, it says nothing about this request; when it is an account-wide one
    // (`five_hour`), the whole account is out, whatever model the request named.
    let claim = limits
        .representative_claim
        .as_deref()
        .and_then(claimed_window);
    let claim_scope = claim.as_deref().map(|c| c.split_once('_').map(|(_, s)| s));
    let overall_hard = limits.status.as_deref().is_some_and(is_hard)
        && !claim_scope
            .flatten()
            .is_some_and(|s| another_models(s, family))
        && !(claim.is_none() && overall_is_another_models(limits, family));
    let overall_account_wide = overall_hard && claim_scope == Some(None);
    // A claim that names a model's quota (`seven_day_sonnet`) is that family's even when the
    // refused request named no model (a file, the model list): it rested the whole account
    // until the model's weekly reset, every other model of the account with it.
    let claim_family = claim_scope.flatten().and_then(scope_family);
    let account_wide: Vec<&Window> = rejected
        .iter()
        .copied()
        .filter(|w| w.scope().is_none())
        .collect();
    if !account_wide.is_empty()
        || (overall_hard
            && rejected.is_empty()
            && (overall_account_wide || (family.is_none() && claim_family.is_none())))
    {
        // The overall reset first: on a tie the named window (e.g. `5h`) wins, which says more.
        let mut candidates: Vec<(i64, String)> = Vec::new();
        if overall_hard {
            if let Some(r) = limits.reset.filter(|r| *r > now_ms) {
                let name = claim.filter(|_| overall_account_wide);
                candidates.push((r, name.unwrap_or_else(|| "unified".to_string())));
            }
        }
        candidates.extend(latest(&account_wide));
        if let Some((reset, claim)) = candidates.into_iter().max_by_key(|(r, _)| *r) {
            return Cooldown {
                until: cap(retry_at.map_or(reset, |r| r.max(reset))),
                kind: CooldownKind::Window(claim),
                scope: None,
            };
        }
    } else if !rejected.is_empty() || overall_hard {
        // Only model-scoped windows (or the unified status alone) are exhausted. What rests is
        // the family of the request that was refused: a window's scope need not name a model
        // family (`7d_oauth_apps`, a name new tomorrow), and resting that one rested nothing,
        // so the refused model was sent to this account again on every request. A request
        // that names no model (a file, a batch) rests its endpoint, for the same reason.
        // Naming neither, the window's family (`7d_opus_4` rests `opus`), or the claim's when
        // no window says; a window that names no family (`7d_oauth_apps`) rests the account
        // below: resting its scope rested nothing such a request is asked under, and the next
        // one went to this account again.
        let scoped_family = family
            .or(endpoint)
            .map(str::to_string)
            .or_else(|| rejected.iter().find_map(|w| w.family()))
            .or(claim_family);
        let (reset, claim) = latest(&rejected)
            .or_else(|| {
                limits
                    .reset
                    .filter(|r| *r > now_ms)
                    .map(|r| (r, "unified".to_string()))
            })
            .unwrap_or((now_ms, "unified".to_string()));
        // No reset and no `retry-after`: the model still rests, for a throttle's while, and
        // the account's other models keep serving (it used to be the whole account).
        let until = retry_at.map_or(reset, |r| r.max(reset));
        let until = if until > now_ms {
            until
        } else {
            now_ms + BURST_DEFAULT_MS
        };
        return Cooldown {
            until: cap(until),
            kind: CooldownKind::Window(claim),
            scope: scoped_family,
        };
    }
    let wait = limits
        .retry_after_ms
        .unwrap_or(BURST_DEFAULT_MS)
        .clamp(MIN_REST_MS, MAX_COOLDOWN_MS);
    Cooldown {
        until: now_ms + wait,
        kind: CooldownKind::Burst,
        scope: endpoint.map(str::to_string),
    }
}

/// Whether the overall status, said with no representative claim, is about another model
/// family's window: the exhausted windows whose period ends when the overall `-reset` says are
/// all another model's. A sonnet request refused beside opus's spent week (overall `rejected`,
/// its reset opus's, no claim) rested sonnet there until opus's reset, days, where the same
/// answer with its claim (`seven_day_opus`) rested as the throttle it is.
fn overall_is_another_models(limits: &Limits, family: Option<&str>) -> bool {
    let Some(reset) = limits.reset else {
        return false;
    };
    let mut ending_then = limits
        .windows
        .iter()
        .filter(|w| w.rejected() || w.spent_by_use())
        .filter(|w| {
            w.reset.is_some_and(|r| {
                !later_period(Some(r), Some(reset)) && !later_period(Some(reset), Some(r))
            })
        })
        .peekable();
    ending_then.peek().is_some()
        && ending_then.all(|w| w.scope().is_some_and(|s| another_models(s, family)))
}

/// Whether a window's `scope` is the quota of a model family other than the request's: a
/// family's name (`opus`, as `model_family` makes them), not the request's. A scope that is
/// no family's name (`oauth_apps`, a name new tomorrow) may be what refused any request.
fn another_models(scope: &str, family: Option<&str>) -> bool {
    family.is_some_and(|f| scope_family(scope).is_some_and(|m| !m.eq_ignore_ascii_case(f)))
}

/// The window a `representative-claim` names, as the windows' headers name it: `five_hour` ->
/// `5h`, `seven_day` -> `7d`, `seven_day_opus` -> `7d_opus`. None for any other claim.
fn claimed_window(claim: &str) -> Option<String> {
    let claim = claim.trim().to_ascii_lowercase();
    [("five_hour", "5h"), ("seven_day", "7d")]
        .iter()
        .find_map(|(long, short)| {
            let rest = claim.strip_prefix(long)?;
            match rest.strip_prefix('_') {
                Some(scope) if !scope.is_empty() => Some(format!("{short}_{scope}")),
                _ if rest.is_empty() => Some((*short).to_string()),
                _ => None,
            }
        })
}

/// A spend limit rests the whole account until the month turns (UTC; a later `retry-after` wins),
/// at most 8 days at a time: should it have been lifted, the account is offered again then.
/// Met within `MONTH_TURN_GRACE_MS` of a turn, it rests `MONTH_TURN_REST_MS` only: a clock a few
/// seconds ahead of Anthropic's (or a limit lifted a moment after midnight) had the first
/// request of the month refused as the old month's, and the key rested until the next turn.
pub fn cooldown_for_spend_limit(limits: &Limits, now_ms: i64) -> Cooldown {
    let month_began = start_of_month_utc(now_ms);
    if month_began.is_some_and(|began| now_ms.saturating_sub(began) < MONTH_TURN_GRACE_MS) {
        let retry_at = limits.retry_after_ms.map(|d| now_ms.saturating_add(d));
        let until = retry_at.map_or(now_ms + MONTH_TURN_REST_MS, |r| {
            r.max(now_ms + MONTH_TURN_REST_MS)
        });
        return Cooldown {
            until: until.clamp(now_ms + 1_000, now_ms + MAX_COOLDOWN_MS),
            kind: CooldownKind::SpendLimit,
            scope: None,
        };
    }
    let month_turns = next_month_utc(now_ms).unwrap_or(now_ms + MAX_COOLDOWN_MS);
    let retry_at = limits.retry_after_ms.map(|d| now_ms.saturating_add(d));
    let until = retry_at.map_or(month_turns, |r| r.max(month_turns));
    Cooldown {
        until: until.clamp(now_ms + 1_000, now_ms + MAX_COOLDOWN_MS),
        kind: CooldownKind::SpendLimit,
        scope: None,
    }
}

/// How long after a month turns (UTC) a spend limit is read as possibly the old month's.
const MONTH_TURN_GRACE_MS: i64 = 24 * 3_600_000;
/// How long a key rests for a spend limit met within that grace, and asked again after.
const MONTH_TURN_REST_MS: i64 = 10 * 60_000;

/// The first instant of the month of `now_ms`, UTC.
fn start_of_month_utc(now_ms: i64) -> Option<i64> {
    let today = crate::account::iso_time(now_ms);
    crate::account::parse_iso_ms(&format!("{}-01T00:00:00.000Z", today.get(..7)?))
}

/// The first instant of the month after `now_ms`, UTC.
fn next_month_utc(now_ms: i64) -> Option<i64> {
    let today = crate::account::iso_time(now_ms);
    let year: i64 = today.get(..4)?.parse().ok()?;
    let month: i64 = today.get(5..7)?.parse().ok()?;
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    crate::account::parse_iso_ms(&format!("{year:04}-{month:02}-01T00:00:00.000Z"))
}

/// Lays `fresh` windows over `known` by name: a fresh one replaces the one of its name unless
/// that one is newer (`newer`), the others stay (an answer may carry only some: a model's scoped
/// window comes with that model's requests).
pub fn merge_windows(known: &mut Vec<Window>, fresh: &[Window]) {
    for w in fresh {
        match known.iter().position(|k| k.name == w.name) {
            Some(i) if newer(&known[i], w) => {}
            // Moved to the end: the order is that of the last word heard of each.
            Some(i) => {
                known.remove(i);
                known.push(w.clone());
            }
            None => known.push(w.clone()),
        }
    }
    let excess = known.len().saturating_sub(MAX_WINDOWS);
    known.drain(..excess);
}

/// Drops the entries of `scoped` (scope -> when it ends) that end soonest, never `keep`, until at
/// most `MAX_SCOPED_COOLDOWNS` are left; of those ending together, the first listed goes first.
pub fn cap_scoped<K: Eq, O: Ord + Copy>(scoped: &mut Vec<(K, O)>, keep: &K) -> Vec<K> {
    let mut dropped = Vec::new();
    while scoped.len() > MAX_SCOPED_COOLDOWNS {
        let Some(i) = scoped
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| k != keep)
            .min_by_key(|(_, (_, ends))| *ends)
            .map(|(i, _)| i)
        else {
            break;
        };
        dropped.push(scoped.remove(i).0);
    }
    dropped
}

/// Resets this close name one period of a window: read through a clock that is off, a reset
/// moves by up to a second from answer to answer and from process to process (`Date` has whole
/// seconds), and periods are hours apart.
pub const SAME_PERIOD_MS: i64 = 60_000;

/// Whether reset `a` ends a later period than reset `b` (a known reset is later than none).
pub fn later_period(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a > b.saturating_add(SAME_PERIOD_MS),
        (a, b) => a > b,
    }
}

/// Whether window `a` says something newer than `b` (of the same name): it is of a later
/// period (its reset is later: the window rolled), or of the same period and from a request sent
/// later. Not which answer came last: a request let in before another's 429 can be answered
/// after it (a slow or non-streamed answer), and what it says is older (less used, `allowed`).
pub fn newer(a: &Window, b: &Window) -> bool {
    later_period(a.reset, b.reset)
        || (!later_period(b.reset, a.reset) && a.updated_at > b.updated_at)
}

/// The windows of an account as this process judges them: those the store holds, with those
/// this process saw laid over them by name, unless the stored one is newer (`newer`: another
/// process saw the window roll, or heard of it from a request sent later).
pub fn seen_over_stored(mut stored: Vec<Window>, seen: Vec<Window>) -> Vec<Window> {
    for w in seen {
        match stored.iter_mut().find(|k| k.name == w.name) {
            Some(k) if newer(k, &w) => {}
            Some(k) => *k = w,
            None => stored.push(w),
        }
    }
    stored
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn windows_are_capped_in_an_answer_and_when_merged() {
        let mut h = HeaderMap::new();
        for i in 0..40 {
            let name = format!("anthropic-ratelimit-unified-w{i}-utilization");
            h.insert(
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "0.5".parse().unwrap(),
            );
        }
        let limits = Limits::from_headers(&h, SystemTime::now());
        assert_eq!(limits.windows.len(), MAX_WINDOWS);
        let mut known = limits.windows.clone();
        let fresh: Vec<Window> = (0..5)
            .map(|i| Window {
                name: format!("new{i}"),
                ..Window::default()
            })
            .collect();
        let oldest = known[0].name.clone();
        merge_windows(&mut known, &fresh);
        assert_eq!(known.len(), MAX_WINDOWS);
        assert!(
            known.iter().all(|w| w.name != oldest),
            "the longest unheard of went"
        );
        assert!(fresh.iter().all(|f| known.iter().any(|w| w.name == f.name)));
    }
    use proptest::prelude::*;
    use reqwest::header::{HeaderName, HeaderValue};

    const NOW: i64 = 1_800_000_000_000;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW as u64)
    }

    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn a_credential_echoed_into_the_window_headers_is_not_kept() {
        let secret = crate::secret::Secret::new(
            [
                "sk",
                "ant",
                "oat01",
                "AbCdEf0123456789GhIjKl0123456789MnOpQr",
            ]
            .join("-"),
        );
        let piece = "abcdef0123456789ghijkl0123456789"; // lower-cased, its prefix left out
        let name = format!("anthropic-ratelimit-unified-{piece}-utilization");
        let h = headers(&[
            ("anthropic-ratelimit-unified-5h-utilization", "0.5"),
            (&name, "0.42"),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "AbCdEf0123456789GhIjKl",
            ),
            (
                "anthropic-ratelimit-unified-overage-disabled-reason",
                "why AbCdEf0123456789GhIjKl0123",
            ),
            (
                "anthropic-ratelimit-unified-7d_oauth_apps-status",
                "allowed_warning",
            ),
            (
                "anthropic-ratelimit-unified-7d-status",
                "allowed ABCDEF0123456789GHIJKL",
            ),
        ]);
        let l = Limits::from_headers(&h, now()).without_secret(&secret);
        let mut names: Vec<&str> = l.windows.iter().map(|w| w.name.as_str()).collect();
        names.sort();
        assert_eq!(names, ["5h", "7d", "7d_oauth_apps"]);
        let week = l.windows.iter().find(|w| w.name == "7d").unwrap();
        assert_eq!(week.status.as_deref(), Some("allowed [redacted]"));
        assert_eq!(l.representative_claim.as_deref(), Some("[redacted]"));
        assert_eq!(l.overage.disabled_reason.as_deref(), Some("why [redacted]"));
        let apps = l
            .windows
            .iter()
            .find(|w| w.name == "7d_oauth_apps")
            .unwrap();
        assert_eq!(apps.status.as_deref(), Some("allowed_warning"));

        // In base64 or hex: a status of 64 base64 characters decoded to the token.
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret.expose());
        let hex: String = secret
            .expose()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let h = headers(&[
            ("anthropic-ratelimit-unified-status", &b64[..64]),
            ("anthropic-ratelimit-unified-representative-claim", &hex),
        ]);
        let l = Limits::from_headers(&h, now()).without_secret(&secret);
        for kept in [&l.status, &l.representative_claim] {
            let kept = kept.as_deref().unwrap_or("");
            assert!(!kept.contains(&b64[4..24]), "{kept}");
            assert!(!kept.contains(&hex[4..24]), "{kept}");
        }
    }

    /// A driver may hand `judge` only the headers `headers::read_from_answer` names: what the
    /// engine reads of an answer is the same as from all of them.
    #[test]
    fn the_declared_answer_headers_are_all_the_limits_read() {
        let lines = [
            ("Date", "Sun, 29 Nov 2026 21:00:00 GMT"),
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("request-id", "req_011"),
            ("anthropic-organization-id", "org"),
            ("retry-after", "30"),
            ("retry-after-ms", "29500"),
            ("anthropic-ratelimit-unified-status", "rejected"),
            ("anthropic-ratelimit-unified-reset", "1800000600"),
            ("Anthropic-Ratelimit-Unified-5h-Status", "rejected"),
            ("anthropic-ratelimit-unified-5h-reset", "1800000600"),
            ("anthropic-ratelimit-unified-5h-utilization", "1.02"),
            ("anthropic-ratelimit-unified-7d-utilization", "0.4"),
            ("anthropic-ratelimit-unified-7d-surpassed-threshold", "0.75"),
            ("anthropic-ratelimit-unified-7d_sonnet-utilization", "0.9"),
            (
                "anthropic-ratelimit-unified-representative-claim",
                "five_hour",
            ),
            ("anthropic-ratelimit-unified-overage-status", "rejected"),
            (
                "anthropic-ratelimit-unified-overage-disabled-reason",
                "org_level_disabled",
            ),
            ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
            ("cf-ray", "abc-SJC"),
            ("server", "cloudflare"),
            ("via", "1.1 google"),
            ("x-robots-tag", "none"),
        ];
        let all = headers(&lines);
        let read = crate::engine::headers::answer_headers(lines.iter().copied());
        assert!(read.len() < all.len(), "the others are left out");
        let limits = Limits::from_headers(&all, now());
        assert_ne!(limits, Limits::default());
        assert_eq!(Limits::from_headers(&read, now()), limits);
        assert_eq!(
            crate::engine::usage::carried(200, &read),
            crate::engine::usage::carried(200, &all)
        );
        for (name, _) in lines {
            let kept = crate::engine::headers::read_from_answer(name);
            let reads = name.eq_ignore_ascii_case("content-type")
                || name.eq_ignore_ascii_case("date")
                || name.to_ascii_lowercase().starts_with("retry-after")
                || name.to_ascii_lowercase().starts_with(UNIFIED_PREFIX);
            assert_eq!(kept, reads, "{name}");
        }
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
        let thirty_days = 30 * 24 * 3600 * 1000;
        assert_eq!(secs("99999999999"), Some(thirty_days));
        assert_eq!(secs("3456000"), Some(thirty_days), "40 days");
        assert_eq!(secs("inf"), None);
        assert_eq!(secs("infinity"), None);
        assert_eq!(
            parse_retry_after_ms("1e300").map(|d| d.as_millis()),
            Some(thirty_days)
        );
        // Past what a float holds: the longest wait, not garbage (a 5 s rest).
        assert_eq!(secs("1e400"), Some(thirty_days));
        let digits = "9".repeat(401);
        assert_eq!(secs(&digits), Some(thirty_days));
        assert_eq!(
            parse_retry_after_ms("1e400").map(|d| d.as_millis()),
            Some(thirty_days)
        );
        assert_eq!(secs("-1e400"), None);
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

    /// A header said twice with values that disagree (a proxy adding its own): the same reading
    /// whether the values come one by one (the Rust transport) or joined by Node's `Headers`
    /// ("30, 600", the runtime transport), and the one that rests longer. Joined, the pair was
    /// garbage: a 5 s rest where the other transport rested 30 s, and a window `rejected,
    /// allowed` was not rejected.
    #[test]
    fn a_header_said_twice_reads_the_same_joined_or_apart_and_the_longer_wait_wins() {
        let reset = NOW / 1000 + 3600;
        let (early, late) = (reset.to_string(), (reset + 600).to_string());
        let in_90 = httpdate::fmt_http_date(now() + Duration::from_secs(90));
        let in_900 = httpdate::fmt_http_date(now() + Duration::from_secs(900));
        let twice: &[(&str, [&str; 2])] = &[
            ("retry-after", ["30", "600"]),
            (
                "anthropic-ratelimit-unified-5h-status",
                ["rejected", "allowed"],
            ),
            ("anthropic-ratelimit-unified-5h-reset", [&late, &early]),
            (
                "anthropic-ratelimit-unified-5h-utilization",
                ["1.02", "0.4"],
            ),
            (
                "anthropic-ratelimit-unified-status",
                ["allowed", "rejected"],
            ),
            (
                "anthropic-ratelimit-unified-representative-claim",
                ["five_hour", "seven_day_opus"],
            ),
            (
                "anthropic-ratelimit-unified-overage-status",
                ["rejected", "allowed"],
            ),
            ("anthropic-ratelimit-unified-overage-reset", [&late, &early]),
            (
                "anthropic-ratelimit-unified-overage-disabled-reason",
                ["out_of_credits", "org_level_disabled"],
            ),
            (
                "anthropic-ratelimit-unified-overage-in-use",
                ["true", "false"],
            ),
        ];
        let apart = {
            let mut h = HeaderMap::new();
            for (name, values) in twice {
                for v in values {
                    h.append(
                        HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
            }
            Limits::from_headers(&h, now())
        };
        let joined: Vec<(&str, String)> = twice
            .iter()
            .map(|(name, values)| (*name, values.join(", ")))
            .collect();
        let joined: Vec<(&str, &str)> = joined.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let joined = Limits::from_headers(&headers(&joined), now());
        for l in [&apart, &joined] {
            assert_eq!(l.retry_after_ms, Some(600_000));
            assert_eq!(l.status.as_deref(), Some("rejected"));
            assert_eq!(l.representative_claim.as_deref(), Some("five_hour"));
            let w = l.window("5h").unwrap();
            assert_eq!(
                (w.status.as_deref(), w.reset, w.utilization),
                (Some("rejected"), Some((reset + 600) * 1000), Some(1.02))
            );
            let c = cooldown_for_429(l, NOW, None, None);
            assert_eq!(c.until, NOW + 4_200_000);
            assert_eq!(
                l.overage,
                Overage {
                    status: Some("rejected".into()),
                    reset: Some((reset + 600) * 1000),
                    disabled_reason: Some("org_level_disabled".into()),
                    in_use: Some(true),
                }
            );
        }
        // HTTP dates hold a comma of their own.
        let dates = format!("{in_900}, {in_90}");
        for value in [dates.as_str(), in_900.as_str()] {
            let l = Limits::from_headers(&headers(&[("retry-after", value)]), now());
            assert_eq!(l.retry_after_ms, Some(900_000), "{value}");
        }
        let l = Limits::from_headers(&headers(&[("retry-after", "soon, 45")]), now());
        assert_eq!(l.retry_after_ms, Some(45_000));
        let l = Limits::from_headers(&headers(&[("retry-after-ms", "1500, 800")]), now());
        assert_eq!(l.retry_after_ms, Some(1_500));
        // Claims: the one holding back the most requests, else the last said.
        for (said, read) in [
            ("seven_day_opus, five_hour", "five_hour"),
            ("five_hour, seven_day", "seven_day"),
            ("five_hour_opus, seven_day_sonnet", "seven_day_sonnet"),
            ("seven_day_opus, something_new", "seven_day_opus"),
            ("something_new, other_new", "other_new"),
            ("five_hour, ", "five_hour"),
        ] {
            assert_eq!(widest_claim(None, said).as_deref(), Some(read), "{said}");
        }
        // A soft status after a hard one in a later header of the same answer keeps the hard.
        assert_eq!(
            severest(Some("rejected".into()), "allowed").as_deref(),
            Some("rejected")
        );
        assert_eq!(
            severest(Some("allowed".into()), "allowed_warning").as_deref(),
            Some("allowed_warning")
        );
        assert_eq!(severest(None, " , ").as_deref(), None);
    }

    /// A machine whose clock is off (WSL after sleep, a restored VM): the server's epoch times
    /// are moved onto the local clock by the answer's `Date`.
    #[test]
    fn resets_follow_the_servers_clock_when_the_local_one_is_off() {
        let local = now();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let local_ms = secs(local) * 1000;
        let answer = |server: SystemTime, reset_in: i64| {
            let reset = (secs(server) + reset_in).to_string();
            let date = httpdate::fmt_http_date(server);
            let lines = [
                ("date", date.as_str()),
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", reset.as_str()),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", reset.as_str()),
                ("anthropic-ratelimit-unified-overage-reset", reset.as_str()),
            ];
            Limits::from_headers(&headers(&lines), local)
        };
        let hour = Duration::from_secs(3600);
        for server in [local + hour, local - hour, local + 3 * hour] {
            // The server says: reset in 2 hours. So 2 hours from now on this clock, whatever it reads.
            let l = answer(server, 7200);
            for reset in [l.reset, l.window("5h").unwrap().reset, l.overage.reset] {
                let left = reset.unwrap() - local_ms;
                assert!((7_199_000..=7_201_000).contains(&left), "{left}");
            }
            let c = cooldown_for_429(&l, local_ms, None, None);
            assert_eq!(c.kind, CooldownKind::Window("5h".into()));
            assert!((7_199_000..=7_201_000).contains(&(c.until - local_ms)));
        }
        // A clock an hour fast saw every reset as past and benched the account for seconds, to
        // be refused again right after; now it rests until the reset.
        let c = cooldown_for_429(&answer(local - hour, 600), local_ms, None, None);
        assert!(c.until - local_ms >= 599_000, "{c:?}");

        // `retry-after` as a date is counted from the server's `Date`.
        let server = local + hour;
        let lines = [
            ("date", httpdate::fmt_http_date(server)),
            (
                "retry-after",
                httpdate::fmt_http_date(server + Duration::from_secs(90)),
            ),
        ];
        let lines: Vec<(&str, &str)> = lines.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let retry = Limits::from_headers(&headers(&lines), local)
            .retry_after_ms
            .unwrap();
        assert!((89_000..=91_000).contains(&retry), "{retry}");

        // Clocks that agree (within the second `Date` rounds to), a garbage `Date`, and one
        // further off than any window: the times are taken as they are.
        let reset = (secs(local) + 600).to_string();
        for date in [
            httpdate::fmt_http_date(local),
            httpdate::fmt_http_date(local - Duration::from_millis(1500)),
            "yesterday".to_string(),
            httpdate::fmt_http_date(local + 30 * 24 * hour),
        ] {
            let lines = [
                ("date", date.as_str()),
                ("anthropic-ratelimit-unified-reset", reset.as_str()),
            ];
            let l = Limits::from_headers(&headers(&lines), local);
            assert_eq!(l.reset, Some((secs(local) + 600) * 1000), "{date}");
        }
        // `Date` said twice, one by one (the Rust transport) or joined (Node's `Headers`): the
        // same reading, taken as it is. The first of the two was taken, an hour off.
        let (ahead, even) = (
            httpdate::fmt_http_date(local + hour),
            httpdate::fmt_http_date(local),
        );
        let joined = format!("{ahead}, {even}");
        for dates in [vec![ahead.as_str(), even.as_str()], vec![joined.as_str()]] {
            let mut h = headers(&[("anthropic-ratelimit-unified-reset", reset.as_str())]);
            for d in &dates {
                h.append(reqwest::header::DATE, HeaderValue::from_str(d).unwrap());
            }
            let l = Limits::from_headers(&h, local);
            assert_eq!(l.reset, Some((secs(local) + 600) * 1000), "{dates:?}");
        }
    }

    #[test]
    fn a_spend_limit_lasts_until_the_month_turns() {
        let ms = |iso: &str| crate::account::parse_iso_ms(iso).unwrap();
        assert_eq!(
            next_month_utc(ms("2026-12-31T23:59:59.000Z")),
            Some(ms("2027-01-01T00:00:00.000Z"))
        );
        assert_eq!(
            next_month_utc(ms("2027-02-03T10:00:00.000Z")),
            Some(ms("2027-03-01T00:00:00.000Z"))
        );
        let now = ms("2027-02-27T10:00:00.000Z");
        let c = cooldown_for_spend_limit(&Limits::default(), now);
        assert_eq!(c.until, ms("2027-03-01T00:00:00.000Z"));
        let early = ms("2027-02-03T10:00:00.000Z");
        let c = cooldown_for_spend_limit(&Limits::default(), early);
        assert_eq!(c.until, early + MAX_COOLDOWN_MS, "at most 8 days at a time");
        // Met just after the turn (this clock ahead of the server's, or the limit lifted a moment
        // late): a short rest, not the next month's 8 days.
        let turned = ms("2027-01-01T00:00:10.000Z");
        let c = cooldown_for_spend_limit(&Limits::default(), turned);
        assert_eq!(c.until, turned + MONTH_TURN_REST_MS);
        let said = Limits {
            retry_after_ms: Some(3_600_000),
            ..Limits::default()
        };
        assert_eq!(
            cooldown_for_spend_limit(&said, turned).until,
            turned + 3_600_000
        );
        let next_day = ms("2027-01-02T00:00:10.000Z");
        assert_eq!(
            cooldown_for_spend_limit(&Limits::default(), next_day).until,
            next_day + MAX_COOLDOWN_MS
        );
    }

    #[test]
    fn a_reset_with_an_offset_is_the_same_instant_in_utc() {
        let utc = parse_reset("2026-12-01T12:00:00Z");
        assert!(utc.is_some());
        assert_eq!(parse_reset("2026-12-01T14:00:00+02:00"), utc);
        assert_eq!(parse_reset("2026-12-01T06:30:00-05:30"), utc);
        assert_eq!(parse_reset("2026-12-01T12:00:00.000+00:00"), utc);
        // The pool file's times are read by the same rule (`expires`, `cooldownUntil`, ...).
        assert_eq!(
            crate::account::parse_iso_ms("2026-12-01T13:00:00.000+01:00"),
            utc
        );
        for garbage in [
            "2026-12-01T14:00:00+24:00",
            "2026-12-01T14:00:00+0200",
            "2026-12-01T14:00:00*02:00",
            "+02:00",
            "x+02:00",
            "2026-12-01T14:00:00+aa:00",
        ] {
            assert_eq!(parse_reset(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn a_reserve_line_is_reached_at_its_percent_whatever_the_floating_point() {
        for (reserve, line) in [
            (0.2, 0.8),
            (0.7, 0.3),
            (0.9, 0.1),
            (0.35, 0.65),
            (0.01, 0.99),
        ] {
            assert!(past_reserve_line(line, reserve), "{reserve} at {line}");
            assert!(
                !past_reserve_line(line - 0.001, reserve),
                "{reserve} below {line}"
            );
        }
        assert!(
            past_reserve_line(0.0, 1.0),
            "a reserve of all holds the account at 0 %"
        );
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
        let c = cooldown_for_429(&l, NOW, None, None);
        assert_eq!(c.until, NOW + 7_999_000);
        assert_eq!(c.kind, CooldownKind::Window("5h".into()));
        assert_eq!(c.scope, None);
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
        assert_eq!(
            cooldown_for_429(&l, NOW, None, None).until,
            NOW + 90_000_000
        );
        let l = Limits::from_headers(
            &headers(&[
                ("retry-after", "500"),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &r5),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW, None, None).until, NOW + 500_000);
    }

    #[test]
    fn bare_429_rests_as_long_as_the_server_says() {
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "2")]), now()),
            NOW,
            None,
            None,
        );
        assert_eq!((c.until, c.kind), (NOW + 2_000, CooldownKind::Burst));
        let c = cooldown_for_429(&Limits::default(), NOW, None, None);
        assert_eq!(c.until, NOW + BURST_DEFAULT_MS);
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "7999")]), now()),
            NOW,
            None,
            None,
        );
        assert_eq!(c.until, NOW + 7_999_000, "never clamped to minutes");
        let three_hours = httpdate::fmt_http_date(now() + Duration::from_secs(3 * 3600));
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", &three_hours)]), now()),
            NOW,
            None,
            None,
        );
        assert_eq!(c.until, NOW + 3 * 3600 * 1000);
        let c = cooldown_for_429(
            &Limits::from_headers(&headers(&[("retry-after", "1000000")]), now()),
            NOW,
            None,
            None,
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
        assert_eq!(
            cooldown_for_429(&l, NOW, None, None).until,
            NOW + MAX_COOLDOWN_MS
        );
        let past = (NOW / 1000 - 100).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &past),
            ]),
            now(),
        );
        assert_eq!(
            cooldown_for_429(&l, NOW, None, None).kind,
            CooldownKind::Burst
        );
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
        for garbage in ["1e308", "inf", "NaN", "-0.1", "11"] {
            let l = Limits::from_headers(
                &headers(&[("anthropic-ratelimit-unified-5h-utilization", garbage)]),
                now(),
            );
            assert_eq!(l.window("5h").unwrap().utilization, None, "{garbage}");
        }
        assert_eq!(
            cooldown_for_429(&l, NOW, None, None).kind,
            CooldownKind::Burst
        );
    }

    #[test]
    fn a_credential_echoed_into_a_limit_header_is_not_kept() {
        // Built here: no token-shaped literal in the source.
        let token = format!(
            "{}-{}",
            ["sk", "ant", "oat01"].join("-"),
            "Echoed0123456789abc"
        );
        let echoed = format!("Bearer {token}");
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", token.as_str()),
                ("anthropic-ratelimit-unified-5h-status", echoed.as_str()),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    token.as_str(),
                ),
                ("anthropic-ratelimit-unified-overage-status", token.as_str()),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    token.as_str(),
                ),
            ]),
            now(),
        );
        let kept = format!("{l:?}");
        assert!(!kept.contains("Echoed0123456789abc"), "{kept}");
        assert_eq!(
            l.window("5h").unwrap().status.as_deref(),
            Some("Bearer [redacted]")
        );
    }

    #[test]
    fn windows_are_read_by_any_name() {
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-7d_sonnet-utilization", "0.97"),
                ("anthropic-ratelimit-unified-7d_sonnet-reset", "1800003600"),
                (
                    "anthropic-ratelimit-unified-7d_sonnet-surpassed-threshold",
                    "0.9",
                ),
                (
                    "anthropic-ratelimit-unified-12h_fable-status",
                    "allowed_warning",
                ),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "seven_day",
                ),
                ("anthropic-ratelimit-unified-overage-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-overage-disabled-reason",
                    "out_of_credits",
                ),
                ("anthropic-ratelimit-unified-fallback-percentage", "0.5"),
            ]),
            now(),
        );
        let scoped = l.window("7d_sonnet").unwrap();
        assert_eq!(scoped.utilization, Some(0.97));
        assert_eq!(scoped.surpassed_threshold, Some(0.9));
        assert_eq!(scoped.scope(), Some("sonnet"));
        assert!(scoped.applies_to(Some("sonnet")) && !scoped.applies_to(Some("opus")));
        // A scope the pool cannot tie to a family limits every request, as the 429 policy
        // reads it; a family's name with a version is that family's.
        let named = |name: &str| Window {
            name: name.into(),
            ..Window::default()
        };
        let apps = named("7d_oauth_apps");
        assert_eq!(apps.family(), None);
        assert!(apps.applies_to(Some("sonnet")) && apps.applies_to(None));
        let opus_4 = named("7d_opus_4");
        assert_eq!(opus_4.family().as_deref(), Some("opus"));
        assert!(opus_4.applies_to(Some("opus")) && !opus_4.applies_to(Some("sonnet")));
        assert!(!opus_4.applies_to(None));
        assert_eq!(
            named("7d_claude_opus_4_1").family().as_deref(),
            Some("opus")
        );
        assert_eq!(named("5h").family(), None);
        assert_eq!(l.window("12h_fable").unwrap().scope(), Some("fable"));
        assert_eq!(l.windows.len(), 2, "overage and claims are not windows");
        assert_eq!(l.overage.disabled_reason.as_deref(), Some("out_of_credits"));
        assert_eq!(l.representative_claim.as_deref(), Some("seven_day"));
        assert_eq!(model_family("claude-sonnet-4-5").as_deref(), Some("sonnet"));
        assert_eq!(
            model_family("claude-3-5-haiku-latest").as_deref(),
            Some("haiku")
        );
        assert_eq!(
            model_family("claude-opus-4-1-20250805").as_deref(),
            Some("opus")
        );
        assert_eq!(model_family("42"), None);
    }

    #[test]
    fn a_quota_for_one_model_never_benches_the_account() {
        let reset = (NOW / 1000 + 86_400).to_string();
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_sonnet-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_sonnet-reset", &reset),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
                ("anthropic-ratelimit-unified-7d-status", "allowed"),
            ]),
            now(),
        );
        let c = cooldown_for_429(&l, NOW, Some("sonnet"), None);
        assert_eq!(c.scope.as_deref(), Some("sonnet"));
        assert_eq!(c.until, NOW + 86_400_000);
        // Unified status rejected while 5h and 7d are fine, no scoped window named: the
        // request's family rests.
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-reset", &reset),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
                ("anthropic-ratelimit-unified-7d-status", "allowed"),
            ]),
            now(),
        );
        let c = cooldown_for_429(&l, NOW, Some("opus"), None);
        assert_eq!(
            (c.scope.as_deref(), c.until),
            (Some("opus"), NOW + 86_400_000)
        );
        // A scoped window whose name is no model family: the refused request's family rests.
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-status",
                    "rejected",
                ),
                ("anthropic-ratelimit-unified-7d_oauth_apps-reset", &reset),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
            ]),
            now(),
        );
        let c = cooldown_for_429(&l, NOW, Some("sonnet"), None);
        assert_eq!(
            (c.scope.as_deref(), c.until),
            (Some("sonnet"), NOW + 86_400_000)
        );
        // A model's window refused with no reset and no retry-after: that model rests a
        // throttle's while; the account's other models keep serving.
        let bare = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_sonnet-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-status", "allowed"),
            ]),
            now(),
        );
        let c = cooldown_for_429(&bare, NOW, Some("sonnet"), None);
        assert_eq!(
            (c.scope.as_deref(), c.until),
            (Some("sonnet"), NOW + BURST_DEFAULT_MS)
        );
        // Without a model in the request, a window naming no family rests the account (its
        // scope is no family any request is asked under).
        let c = cooldown_for_429(&l, NOW, None, None);
        assert_eq!((c.scope, c.until), (None, NOW + 86_400_000));
        // An account-wide window beats a scoped one.
        let l = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-7d_sonnet-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_sonnet-reset", &reset),
                ("anthropic-ratelimit-unified-5h-status", "rejected"),
                ("anthropic-ratelimit-unified-5h-reset", &reset),
            ]),
            now(),
        );
        assert_eq!(cooldown_for_429(&l, NOW, Some("sonnet"), None).scope, None);
    }

    /// Every answer carries every window the account has: a sonnet request throttled while the
    /// account's opus week is spent brought `7d_opus: rejected` along, and sonnet rested on the
    /// account until opus's reset, days, for a 10 s throttle.
    #[test]
    fn another_models_spent_quota_does_not_rest_the_model_asked_for() {
        let opus_reset = (NOW / 1000 + 3 * 86_400).to_string();
        let opus_out = [
            ("anthropic-ratelimit-unified-7d_opus-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_opus-utilization", "1.0"),
            (
                "anthropic-ratelimit-unified-7d_opus-reset",
                opus_reset.as_str(),
            ),
            ("anthropic-ratelimit-unified-5h-status", "allowed"),
        ];
        let with = |more: &[(&'static str, &'static str)]| {
            let mut lines = opus_out.to_vec();
            lines.extend_from_slice(more);
            Limits::from_headers(&headers(&lines), now())
        };
        for limits in [
            with(&[("retry-after", "10")]),
            with(&[
                ("retry-after", "10"),
                ("anthropic-ratelimit-unified-status", "rejected"),
                (
                    "anthropic-ratelimit-unified-representative-claim",
                    "seven_day_opus",
                ),
            ]),
        ] {
            let c = cooldown_for_429(&limits, NOW, Some("sonnet"), None);
            assert_eq!(
                (c.kind, c.scope, c.until),
                (CooldownKind::Burst, None, NOW + 10_000),
                "a throttle, not opus's week"
            );
        }
        // A family's window with a version in its name (`7d_opus_4`) is that family's too;
        // an opus request refused by it rests opus.
        let opus_4 = Limits::from_headers(
            &headers(&[
                ("retry-after", "10"),
                ("anthropic-ratelimit-unified-7d_opus_4-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_opus_4-reset", &opus_reset),
            ]),
            now(),
        );
        let c = cooldown_for_429(&opus_4, NOW, Some("sonnet"), None);
        assert_eq!((c.kind, c.scope), (CooldownKind::Burst, None), "7d_opus_4");
        let c = cooldown_for_429(&opus_4, NOW, None, None);
        assert_eq!(
            c.scope.as_deref(),
            Some("opus"),
            "no model named: the window's family"
        );
        // With only utilization said (no statuses), the same.
        let util = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-7d_opus-utilization", "1.0"),
                ("anthropic-ratelimit-unified-7d_opus-reset", &opus_reset),
            ]),
            now(),
        );
        let c = cooldown_for_429(&util, NOW, Some("sonnet"), None);
        assert_eq!(
            (c.kind, c.until),
            (CooldownKind::Burst, NOW + BURST_DEFAULT_MS)
        );
        // The opus request it refuses rests opus until then, as before; so does one that named
        // no model (the window's own scope is all there is to go by), and a window whose scope
        // names no model family still rests the model asked for.
        let limits = with(&[("retry-after", "10")]);
        for family in [Some("opus"), None] {
            let c = cooldown_for_429(&limits, NOW, family, None);
            assert_eq!(
                (c.scope.as_deref(), c.until),
                (Some("opus"), NOW + 3 * 86_400_000),
                "{family:?}"
            );
        }
        assert!(!another_models("oauth_apps", Some("sonnet")));
        assert!(!another_models("Sonnet", Some("sonnet")));
        assert!(another_models("Opus", Some("sonnet")));
        assert!(!another_models("opus", None));
    }

    /// A request naming no model family (a model id the pool cannot place) refused by a window
    /// that names none either (`7d_oauth_apps`): the window's scope rested, which no request is
    /// asked under, and the next such request went to the account again, refused again. The
    /// account rests until the window's reset (a throttle's while without one).
    #[test]
    fn a_window_naming_no_family_refusing_a_request_naming_none_rests_the_account() {
        let reset = (NOW / 1000 + 3 * 86_400).to_string();
        let with_reset = Limits::from_headers(
            &headers(&[
                (
                    "anthropic-ratelimit-unified-7d_oauth_apps-status",
                    "rejected",
                ),
                ("anthropic-ratelimit-unified-7d_oauth_apps-reset", &reset),
            ]),
            now(),
        );
        let c = cooldown_for_429(&with_reset, NOW, None, None);
        assert_eq!(
            (c.scope, c.until),
            (None, NOW + 3 * 86_400_000),
            "the account, until the window's reset"
        );
        let without = Limits::from_headers(
            &headers(&[(
                "anthropic-ratelimit-unified-7d_oauth_apps-status",
                "rejected",
            )]),
            now(),
        );
        let c = cooldown_for_429(&without, NOW, None, None);
        assert_eq!((c.scope, c.until), (None, NOW + BURST_DEFAULT_MS));
        // A family asked for still rests only that family; a window naming one, that family.
        let c = cooldown_for_429(&with_reset, NOW, Some("sonnet"), None);
        assert_eq!(c.scope.as_deref(), Some("sonnet"));
        let opus = Limits::from_headers(
            &headers(&[
                ("anthropic-ratelimit-unified-7d_opus_4-status", "rejected"),
                ("anthropic-ratelimit-unified-7d_opus_4-reset", &reset),
            ]),
            now(),
        );
        assert_eq!(
            cooldown_for_429(&opus, NOW, None, None).scope.as_deref(),
            Some("opus")
        );
    }

    /// A window that says it is allowed is allowed, however full its use reads: at 100 %
    /// (reached, not surpassed) or drawing on extra usage, a throttle's 429 beside it rested the
    /// account (or the model) until the window's reset, hours, for a 10 s throttle. The
    /// utilization fallback is for windows that say no status, or none a soft one.
    #[test]
    fn a_window_that_says_allowed_is_not_spent_by_its_use() {
        let reset = (NOW / 1000 + 4 * 3600).to_string();
        let said = |window: &'static str, status: Option<&'static str>, used: &'static str| {
            let status_name = format!("anthropic-ratelimit-unified-{window}-status");
            let used_name = format!("anthropic-ratelimit-unified-{window}-utilization");
            let reset_name = format!("anthropic-ratelimit-unified-{window}-reset");
            let mut lines = vec![
                ("retry-after".to_string(), "10".to_string()),
                (used_name, used.to_string()),
                (reset_name, reset.clone()),
                (
                    "anthropic-ratelimit-unified-overage-in-use".to_string(),
                    "true".to_string(),
                ),
            ];
            if let Some(s) = status {
                lines.push((status_name, s.to_string()));
            }
            let pairs: Vec<(&str, &str)> = lines
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Limits::from_headers(&headers(&pairs), now())
        };
        for window in ["5h", "7d_sonnet"] {
            for status in ["allowed", "allowed_warning", "queueing_soft", " Allowed "] {
                for used in ["1.0", "1.07"] {
                    let c = cooldown_for_429(
                        &said(window, Some(status), used),
                        NOW,
                        Some("sonnet"),
                        None,
                    );
                    assert_eq!(
                        (c.kind, c.scope, c.until),
                        (CooldownKind::Burst, None, NOW + 10_000),
                        "{window} {status} at {used}"
                    );
                }
            }
            // No status, or one that is no soft one: its use is all there is to go by.
            for status in [None, Some("exhausted")] {
                let c = cooldown_for_429(&said(window, status, "1.0"), NOW, Some("sonnet"), None);
                assert_eq!(
                    (c.kind, c.until),
                    (CooldownKind::Window(window.into()), NOW + 4 * 3_600_000),
                    "{window} {status:?}"
                );
            }
        }
    }

    /// The overall status `rejected` said with no representative claim, beside another model's
    /// spent window only: when the overall reset is that window's, the status is that window's
    /// (as with the claim `seven_day_opus`), and a sonnet request's 429 is a throttle; it rested
    /// sonnet until opus's weekly reset. An overall reset no such window ends then is still a
    /// refusal of the model asked for, until that reset.
    #[test]
    fn an_overall_rejection_with_no_claim_whose_reset_is_another_models_window_is_not_this_requests(
    ) {
        let opus_reset = (NOW / 1000 + 3 * 86_400).to_string();
        let two_hours = (NOW / 1000 + 7_200).to_string();
        let answer = |overall_reset: &str, opus: (&'static str, &'static str)| {
            Limits::from_headers(
                &headers(&[
                    ("retry-after", "10"),
                    ("anthropic-ratelimit-unified-status", "rejected"),
                    ("anthropic-ratelimit-unified-reset", overall_reset),
                    opus,
                    ("anthropic-ratelimit-unified-7d_opus-reset", &opus_reset),
                    ("anthropic-ratelimit-unified-5h-status", "allowed"),
                    ("anthropic-ratelimit-unified-5h-utilization", "0.3"),
                ]),
                now(),
            )
        };
        for opus in [
            ("anthropic-ratelimit-unified-7d_opus-status", "rejected"),
            ("anthropic-ratelimit-unified-7d_opus-utilization", "1.0"),
        ] {
            let theirs = answer(&opus_reset, opus);
            let c = cooldown_for_429(&theirs, NOW, Some("sonnet"), None);
            assert_eq!(
                (c.kind, c.scope, c.until),
                (CooldownKind::Burst, None, NOW + 10_000),
                "{opus:?}: a throttle, not opus's week"
            );
            // The opus request it refused rests opus until then, as before.
            let c = cooldown_for_429(&theirs, NOW, Some("opus"), None);
            assert_eq!(
                (c.scope.as_deref(), c.until),
                (Some("opus"), NOW + 3 * 86_400_000)
            );
            // Another reset than opus's: something else refused sonnet, until then.
            let c = cooldown_for_429(&answer(&two_hours, opus), NOW, Some("sonnet"), None);
            assert_eq!(
                (c.scope.as_deref(), c.until),
                (Some("sonnet"), NOW + 7_200_000),
                "{opus:?}"
            );
        }
    }

    /// The overall status with the representative claim and no window's status: `five_hour` is
    /// the account's 5-hour window, spent for every model (it rested only the model asked for,
    /// and each other model was refused once more before it rested too).
    #[test]
    fn an_overall_rejection_claimed_by_an_account_wide_window_rests_the_account() {
        let reset = (NOW / 1000 + 3600).to_string();
        let said = |claim: &'static str| {
            Limits::from_headers(
                &headers(&[
                    ("anthropic-ratelimit-unified-status", "rejected"),
                    ("anthropic-ratelimit-unified-reset", &reset),
                    ("anthropic-ratelimit-unified-representative-claim", claim),
                ]),
                now(),
            )
        };
        for (claim, name) in [("five_hour", "5h"), ("seven_day", "7d")] {
            let c = cooldown_for_429(&said(claim), NOW, Some("sonnet"), None);
            assert_eq!(
                (c.kind, c.scope, c.until),
                (CooldownKind::Window(name.into()), None, NOW + 3_600_000),
                "{claim}"
            );
        }
        // A model's claim, or one of no known shape, rests the model asked for, as before.
        for claim in ["seven_day_sonnet", "overage", "weekly"] {
            let c = cooldown_for_429(&said(claim), NOW, Some("sonnet"), None);
            assert_eq!(
                (c.scope.as_deref(), c.until),
                (Some("sonnet"), NOW + 3_600_000),
                "{claim}"
            );
        }
        // A request that names no model (the model list, a file) with a model's claim rests
        // that model (or the request's endpoint, which has limits of its own), not the account.
        for (endpoint, scope) in [(None, "sonnet"), (Some(FILES_API), FILES_API)] {
            let c = cooldown_for_429(&said("seven_day_sonnet"), NOW, None, endpoint);
            assert_eq!(
                (c.scope.as_deref(), c.until),
                (Some(scope), NOW + 3_600_000),
                "{endpoint:?}"
            );
        }
        // A claim of no known shape, or of a scope that is no family's, still rests the
        // account for such a request.
        for claim in ["overage", "seven_day_oauth_apps"] {
            let c = cooldown_for_429(&said(claim), NOW, None, None);
            assert_eq!((c.scope, c.until), (None, NOW + 3_600_000), "{claim}");
        }
        assert_eq!(claimed_window("seven_day_opus").as_deref(), Some("7d_opus"));
        assert_eq!(claimed_window(" Five_Hour ").as_deref(), Some("5h"));
        assert_eq!(claimed_window("five_hours"), None);
        assert_eq!(claimed_window("seven_day_"), None);
    }

    #[test]
    fn a_model_refused_with_a_retry_after_under_a_second_rests_a_second_as_a_throttle_does() {
        // Found by the engine's model test: a 429 refusing a model's window (no reset given)
        // with `retry-after-ms: 1` rested that model for 1 ms, where a bare throttle rests at
        // least a second; with no reopening spread (`OAUTH_POOL_JITTER_MS=0`) the next request
        // for the model went straight back to the account that had just refused it.
        for (name, value) in [("retry-after-ms", "1"), ("retry-after", "0.001")] {
            let l = Limits::from_headers(
                &headers(&[
                    (name, value),
                    ("anthropic-ratelimit-unified-7d_opus-status", "rejected"),
                ]),
                now(),
            );
            for endpoint in [None, Some(MESSAGE_BATCHES)] {
                let c = cooldown_for_429(&l, NOW, Some("opus"), endpoint);
                assert_eq!(c.scope.as_deref(), Some("opus"));
                assert!(
                    c.until >= NOW + 1_000,
                    "{name}: {value} rested the model {} ms",
                    c.until - NOW
                );
            }
        }
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
                name: "5h".into(),
                status: Some(if hard { "rejected".into() } else { "allowed".into() }),
                reset: reset.map(|r| NOW + r),
                ..Window::default()
            });
            let c = cooldown_for_429(&l, NOW, None, None);
            prop_assert!(c.until > NOW);
            prop_assert!(c.until <= NOW + MAX_COOLDOWN_MS);
        }
    }

    /// A request let in before another's 429 and answered after it: its windows (less used,
    /// `allowed`) are older news, whichever answer came last; a window that rolled is news.
    #[test]
    fn windows_are_ordered_by_when_their_request_was_sent_not_when_answered() {
        const H: i64 = 3_600_000;
        let w = |u: f64, reset: i64, sent: i64| Window {
            name: "5h".into(),
            utilization: Some(u),
            reset: Some(reset),
            updated_at: Some(sent),
            ..Default::default()
        };
        let refused = w(1.01, H, 200);
        let mut known = vec![refused.clone()];
        merge_windows(&mut known, &[w(0.5, H, 100)]);
        assert_eq!(
            known,
            vec![refused.clone()],
            "the earlier-sent answer is older news"
        );
        merge_windows(&mut known, &[w(0.02, 6 * H, 150)]);
        assert_eq!(known[0].utilization, Some(0.02), "a later period is news");
        let all = seen_over_stored(vec![refused.clone()], vec![w(0.5, H, 100)]);
        assert_eq!(
            all,
            vec![refused],
            "another process heard later: the store's stands"
        );
        let all = seen_over_stored(vec![w(0.5, H, 100)], vec![w(0.9, H, 300)]);
        assert_eq!(all[0].utilization, Some(0.9));
    }

    #[test]
    fn what_this_process_saw_lies_over_the_store_unless_the_store_is_newer() {
        const H: i64 = 3_600_000;
        let w = |name: &str, u: f64, reset: i64| Window {
            name: name.into(),
            utilization: Some(u),
            reset: Some(reset),
            ..Default::default()
        };
        let stored = vec![
            w("5h", 0.2, H),
            w("7d", 0.5, 9 * H),
            w("7d_sonnet", 0.97, 9 * H),
        ];
        let seen = vec![w("5h", 0.4, H), w("7d", 0.9, 5 * H)];
        let all = seen_over_stored(stored.clone(), seen);
        let get = |name: &str| all.iter().find(|x| x.name == name).unwrap().clone();
        assert_eq!(
            get("5h").utilization,
            Some(0.4),
            "same period: what this process saw"
        );
        assert_eq!(
            get("7d").reset,
            Some(9 * H),
            "the store's window is of a later period"
        );
        assert_eq!(
            get("7d_sonnet").utilization,
            Some(0.97),
            "another process's scoped window counts"
        );
        assert_eq!(all.len(), 3);

        // Through a clock that is off, the same period's reset moves by a second or so: what
        // this process saw last still wins.
        let seen = vec![w("7d", 0.6, 9 * H - 800)];
        let all = seen_over_stored(stored, seen);
        let get = |name: &str| all.iter().find(|x| x.name == name).unwrap().clone();
        assert_eq!(get("7d").utilization, Some(0.6));
        assert!(later_period(Some(SAME_PERIOD_MS + 2), Some(1)));
        assert!(!later_period(Some(SAME_PERIOD_MS), Some(1)));
        assert!(later_period(Some(1), None) && !later_period(None, Some(1)));
    }

    #[test]
    fn a_window_heard_of_before_the_clock_went_back_keeps_what_it_had_left() {
        let at = 1_800_000_000_000;
        let mut w = Window {
            name: "5h".into(),
            reset: Some(at + 60_000),
            updated_at: Some(at),
            ..Default::default()
        };
        // Within two minutes of the clock that heard it (a fleet host a little behind): as is.
        w.settle_clock(at - 100_000);
        assert_eq!(w.reset, Some(at + 60_000));
        // Two hours back: the minute it had left, from now.
        let now = at - 7_200_000;
        w.settle_clock(now);
        assert_eq!((w.reset, w.updated_at), (Some(now + 60_000), Some(now)));
        w.settle_clock(now);
        assert_eq!(w.reset, Some(now + 60_000), "once");
        // Not known when it was heard of: as is.
        let mut old = Window {
            reset: Some(at),
            ..Default::default()
        };
        old.settle_clock(at - 3_600_000);
        assert_eq!(old.reset, Some(at));
        // Further ahead than any reset the pool writes (a garbled one): none.
        old.settle_clock(at - BELIEVED_AHEAD_MS - 1);
        assert_eq!(old.reset, None);
    }

    #[test]
    fn endpoints_with_limits_of_their_own() {
        let cases = [
            ("/v1/messages/count_tokens", Some(COUNT_TOKENS)),
            ("/v1/messages/count_tokens/", Some(COUNT_TOKENS)),
            ("/v1/messages/batches", Some(MESSAGE_BATCHES)),
            (
                "/v1/messages/batches/msgbatch_01abc2def3/results",
                Some(MESSAGE_BATCHES),
            ),
            ("/v1/files", Some(FILES_API)),
            ("/v1/files/file_011abc4def/content", Some(FILES_API)),
            ("/v1/messages", None),
            ("/v1/models", None),
            ("/v1/complete", None),
            ("/v2/files", None),
            ("/files", None),
            ("", None),
        ];
        for (path, expected) in cases {
            assert_eq!(endpoint_limits(path), expected, "{path}");
        }
        // A model family never takes an endpoint's key (each holds a `_`).
        for model in [
            "count_tokens",
            "message_batches",
            "files_api",
            "claude-files-api",
        ] {
            let family = model_family(model);
            assert!(
                family
                    .as_deref()
                    .is_none_or(|f| ![COUNT_TOKENS, MESSAGE_BATCHES, FILES_API].contains(&f)),
                "{model}: {family:?}"
            );
        }
        assert_eq!(scope_text(COUNT_TOKENS), "token counting");
        assert_eq!(scope_text("sonnet"), "sonnet models");
    }
}
