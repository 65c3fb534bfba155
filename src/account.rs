//! One account of the pool file (`anthropic[]` in `crate::pool`): its credential, status,
//! cooldowns and windows as stored, with unknown fields kept verbatim; and the time helpers the
//! file's fields are written in.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::Result;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    Idle,
    RateLimited,
    AuthError,
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Idle => "idle",
            Status::RateLimited => "rate-limited",
            Status::AuthError => "auth-error",
            Status::Disabled => "disabled",
        }
    }

    /// Read as a person may write it by hand (`"Disabled"`, `" disabled "`): read exactly, a
    /// disabled account in another case was served as idle.
    pub fn parse(s: &str) -> Option<Status> {
        let s = s.trim();
        [
            Status::Active,
            Status::Idle,
            Status::RateLimited,
            Status::AuthError,
            Status::Disabled,
        ]
        .into_iter()
        .find(|status| status.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub email: String,
    /// `"oauth"` (the default when absent) or `"api"` (a Console API key in `key`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// Access-token expiry, epoch milliseconds. None is not written: aidevops's `check` reads
    /// a missing one as 0 and failed on `null` (every API key this pool added had one).
    #[serde(
        default,
        deserialize_with = "epoch_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(default = "idle_status")]
    pub status: String,
    /// Epoch milliseconds; always written, `null` when not cooling.
    #[serde(default, deserialize_with = "cooldown_end")]
    pub rate_limit_until: Option<i64>,
    #[serde(
        default,
        deserialize_with = "whole_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    /// The fields the pool fills with a default that the entry did not have when it was read.
    #[serde(skip)]
    pub unstated: Unstated,
}

/// Which of `expires` and `rateLimitUntil` (fields every account the pool writes has, `null`
/// for none) an entry was read without: `loadPool` hands it back without them while they are
/// still none, so that a file of the JavaScript predecessor, which writes `cooldownUntil` and no
/// `rateLimitUntil`, loads unchanged. (A `status` left out reads as the `idle` it means.)
#[derive(Debug, Clone, Copy, Default)]
pub struct Unstated {
    pub expires: bool,
    pub rate_limit_until: bool,
}

/// `cooldownsSetAt`: when, by this machine's clock, the account's cooldown and backoff ends were
/// last set (epoch ms).
const SET_AT: &str = "cooldownsSetAt";
/// A clock found this far behind `cooldownsSetAt` was stepped back. Less is left alone: a step
/// that small lengthens a cooldown by as little, and two hosts of a fleet store whose clocks
/// disagree by less (`oauth-pool doctor` warns past 2 s) must not shorten each other's
/// cooldowns at every write.
pub const CLOCK_STEP_MS: i64 = 120_000;
/// Whether `at`, a time this machine's clock gave, is ahead of the clock reading `now` by more
/// than a step (`CLOCK_STEP_MS`): the clock was set back since. What such a time orders (the
/// request sent last, the latest word of a window) counts as no later than now, or nothing
/// heard after the step would be news until the clock is back where it was.
pub fn set_back_since(at: i64, now: i64) -> bool {
    at.saturating_sub(now) > CLOCK_STEP_MS
}

/// `cooldownsReset`: how many times `reset-cooldowns` ran on the account. What a running process
/// decided on its own without writing it (the rest after a 401 no new token answered) lasts only
/// while this is no more than it was when that was decided: more is a reset since.
const RESETS: &str = "cooldownsReset";
/// `cooldownsResetAt`: when `reset-cooldowns` last ran on the account. A window heard before it
/// holds no reserve line: a 429's exhausted window (use past 100 %) held a reserved account
/// until the window's reset, hours, though the command said its cooldown was cleared, and no
/// request went to it that could have said otherwise.
const RESET_AT: &str = "cooldownsResetAt";

fn idle_status() -> String {
    Status::Idle.as_str().to_string()
}

/// Accepts integers and floats (JavaScript writes `Date.now() + x * 1000`), and reads seconds
/// as `seconds_as_ms` does.
fn epoch_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let f = n
                .as_f64()
                .ok_or_else(|| serde::de::Error::custom("not a number"))?;
            // A negative time (`-1`, a writer's "none") is long past, as 0 is, and kept as
            // written: refused, it made the whole entry unreadable and its account unused.
            if !f.is_finite() {
                return Err(serde::de::Error::custom("epoch out of range"));
            }
            let ms = seconds_as_ms(f);
            if ms.abs() > 1e15 {
                return Err(serde::de::Error::custom("epoch out of range"));
            }
            Ok(Some(ms as i64))
        }
        // A number written as text, or an ISO date (a hand edit, a `jq` or Python helper), as
        // `cooldownUntil` is read (`epoch_ms_of`): refused, it made the whole entry unreadable.
        Some(text @ Value::String(_)) => epoch_ms_of(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom("expected epoch milliseconds, found a string that is no time")
        }),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected epoch milliseconds, found {}",
            kind_of(&other)
        ))),
    }
}

/// A cooldown's end, read as `epoch_ms` reads a time, except that a number past any epoch
/// (microseconds, `1e300`) is garbled and read as none, as such an end in aidevops's
/// `cooldownUntil` or `modelCooldowns` is: refused, it made the whole entry unreadable, and the
/// account went unused, where a cooldown's end is no credential to keep.
fn cooldown_end<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    if let Some(Value::Number(n)) = &v {
        let garbled = n
            .as_f64()
            .is_none_or(|f| !f.is_finite() || seconds_as_ms(f).abs() > 1e15);
        if garbled {
            return Ok(None);
        }
    }
    epoch_ms(v.unwrap_or(Value::Null)).map_err(serde::de::Error::custom)
}

/// A whole number as JSON allows it to be written: `1.0`, `1e2`, `-0` (Python's `json`, a hand
/// edit) are the integers they say; as an `i64` field they made the whole account unreadable.
/// A fraction is refused: no integer says what it meant.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::{Error, Unexpected};
    const EXPECTED: &str = "a whole number";
    let v = Option::<Value>::deserialize(d)?;
    let unexpected = match &v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => return Ok(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.007e15 => return Ok(Some(f as i64)),
            (None, Some(f)) => Unexpected::Float(f),
            (None, None) => Unexpected::Other("a number out of range"),
        },
        Some(Value::Bool(b)) => Unexpected::Bool(*b),
        Some(Value::String(s)) => Unexpected::Str(s),
        Some(Value::Array(_)) => Unexpected::Seq,
        Some(Value::Object(_)) => Unexpected::Map,
    };
    Err(D::Error::invalid_type(unexpected, &EXPECTED))
}

/// An epoch from the file in milliseconds, seconds read as `seconds_as_ms` does. A number
/// written as text (`jq --arg`, a shell helper), or an ISO date, is that time: read as none, a
/// `cooldownUntil` of "4102444800000" left the account served while it cooled.
pub(crate) fn epoch_ms_of(v: &Value) -> Option<i64> {
    let f = match v {
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .or_else(|| parse_iso_ms(text.trim()).map(|ms| ms as f64)),
        other => other.as_f64(),
    };
    let f = f.filter(|f| f.is_finite() && *f >= 0.0)?;
    let ms = seconds_as_ms(f);
    (ms <= 1e15).then_some(ms as i64)
}

/// An epoch from 1e9 to 1e12 is seconds (September 2001 to the year 33658; as milliseconds it
/// would be January 1970 to 2001): a shell helper once wrote seconds, and "expired in 1970" would
/// make every such account look dead. Below 1e9 it is long past in either unit and is taken as it
/// is, so that the milliseconds the pool writes back read as the same time: read as seconds, an
/// `expires` of 5 grew a thousandfold at each write until the spent token looked good until 2128.
fn seconds_as_ms(f: f64) -> f64 {
    if (1e9..1e12).contains(&f) {
        f * 1000.0
    } else {
        f
    }
}

/// Epoch milliseconds as the pool writes them (at least 1e12: 2001 on); seconds, zeros and
/// anything else are left as they are when times are moved between clocks (`shift_times`).
fn is_epoch_ms(v: i64) -> bool {
    (1_000_000_000_000..1_000_000_000_000_000).contains(&v)
}

/// `v` moved by `delta` ms when it is an epoch in milliseconds; otherwise as it is.
fn shift_value(v: &mut Value, delta: i64) {
    let moved = match v.as_i64() {
        Some(ms) if is_epoch_ms(ms) => Some(Value::from(ms.saturating_add(delta))),
        Some(_) => None,
        None => v
            .as_f64()
            .filter(|f| f.is_finite() && is_epoch_ms(*f as i64))
            .map(|f| Value::from(f + delta as f64)),
    };
    if let Some(m) = moved {
        *v = m;
    }
}

/// An ISO time moved by `delta` ms, when it is one as the pool writes them (so that moving it
/// back gives the same text); otherwise as it is.
fn shift_iso(s: &mut String, delta: i64) {
    if let Some(ms) = parse_iso_ms(s).filter(|ms| iso_time(*ms) == *s && is_epoch_ms(*ms)) {
        *s = iso_time(ms.saturating_add(delta));
    }
}

/// Each of `keys` in `obj` (an object, or nothing) moved by `delta`.
fn shift_fields(obj: Option<&mut Value>, keys: &[&str], delta: i64) {
    if let Some(o) = obj.and_then(Value::as_object_mut) {
        for k in keys {
            if let Some(v) = o.get_mut(*k) {
                shift_value(v, delta);
            }
        }
    }
}

/// How far the clock reading `now` is behind the one that heard of stored window `w` (its
/// `updatedAt`), when it was stepped back since.
fn window_set_back(w: &Value, now: i64) -> Option<i64> {
    w.get("updatedAt")
        .and_then(epoch_ms_of)
        .map(|at| at.saturating_sub(now))
        .filter(|back| *back > CLOCK_STEP_MS)
}

pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Account {
    /// A refresh's tokens in place of the account's: its token endpoint's wait goes, and a
    /// refusal of the tokens it replaces with it.
    pub fn set_tokens(&mut self, access: &Secret, refresh: &Secret, expires: i64) {
        self.access = Some(access.clone());
        self.refresh = Some(refresh.clone());
        self.expires = Some(expires);
        self.extra.shift_remove("refreshBackoffUntil");
        if self.status_enum() == Some(Status::AuthError) {
            self.status = Status::Idle.as_str().into();
            self.extra.shift_remove("authErrorToken");
        }
    }

    /// The fields of an entry that have a field of their own here (all the rest is `extra`).
    pub(crate) const NAMED: [&'static str; 12] = [
        "email",
        "type",
        "refresh",
        "access",
        "key",
        "expires",
        "added",
        "lastUsed",
        "status",
        "rateLimitUntil",
        "priority",
        "enabled",
    ];

    fn blank(email: &str, now: i64) -> Self {
        Account {
            email: email.to_string(),
            kind: None,
            refresh: None,
            access: None,
            key: None,
            expires: None,
            added: Some(iso_time(now)),
            last_used: None,
            status: idle_status(),
            rate_limit_until: None,
            priority: None,
            enabled: None,
            extra: Map::new(),
            unstated: Unstated::default(),
        }
    }

    pub fn new_oauth(email: &str, access: Secret, refresh: Secret, expires: i64, now: i64) -> Self {
        Account {
            refresh: Some(refresh),
            access: Some(access),
            expires: Some(expires),
            ..Account::blank(email, now)
        }
    }

    pub fn new_api_key(email: &str, key: Secret, now: i64) -> Self {
        Account {
            kind: Some("api".into()),
            key: Some(key),
            // A key does not expire: no `expires` is written for it.
            unstated: Unstated {
                expires: true,
                rate_limit_until: false,
            },
            ..Account::blank(email, now)
        }
    }

    pub fn is_api_key(&self) -> bool {
        self.kind
            .as_deref()
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("api"))
    }

    pub fn status_enum(&self) -> Option<Status> {
        Status::parse(&self.status)
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled != Some(false) && self.status_enum() != Some(Status::Disabled)
    }

    pub fn has_credential(&self) -> bool {
        if self.is_api_key() {
            self.key.as_ref().is_some_and(|k| !k.is_empty())
        } else {
            self.access.as_ref().is_some_and(|a| !a.is_empty())
                || self.refresh.as_ref().is_some_and(|r| !r.is_empty())
        }
    }

    /// The status a person should see at `now`: a cooldown that has passed reads as idle, so a
    /// stale `rate-limited` never sticks past its time.
    pub fn effective_status(&self, now: i64) -> Status {
        if !self.is_enabled() {
            return Status::Disabled;
        }
        match self.status_enum() {
            Some(Status::AuthError) => Status::AuthError,
            _ if self.cooling_at(now) || self.token_wait_until(now).is_some() => {
                Status::RateLimited
            }
            Some(Status::Active) => Status::Active,
            _ => Status::Idle,
        }
    }

    /// When this account's cooldown ends, as the clock reads `now`: the later of our
    /// `rateLimitUntil` and `cooldownUntil`, which the aidevops plugin and its shell helper
    /// write (epoch ms; 0 or null: none), less any step back of the clock since it was set.
    pub fn cooldown_until(&self, now: i64) -> Option<i64> {
        self.stored_cooldown_until()
            .map(|t| t.saturating_sub(self.clock_set_back(now)))
            .and_then(|t| crate::engine::limits::believed_end(t, now))
    }

    /// The stored end, as written (whatever the clock did since).
    pub fn stored_cooldown_until(&self) -> Option<i64> {
        let theirs = self
            .extra
            .get("cooldownUntil")
            .and_then(epoch_ms_of)
            .filter(|t| *t > 0);
        let ours = self.rate_limit_until.filter(|_| !self.reset_by_them());
        ours.max(theirs)
    }

    /// Whether the aidevops plugin's own `reset-cooldowns` ran on the account since we cooled it:
    /// it clears `cooldownUntil` and sets the status back, and knows nothing of `rateLimitUntil`.
    /// Our cooldowns are mirrored into a `cooldownUntil` the entry carries (`cool_until`), so one
    /// cleared while ours stands, the status no longer `rate-limited`, was cleared by them; the
    /// account kept cooling for the full hour after their tool said it was cleared.
    fn reset_by_them(&self) -> bool {
        let cleared = self
            .extra
            .get("cooldownUntil")
            .is_some_and(|v| epoch_ms_of(v).is_none_or(|t| t <= 0));
        cleared
            && self.rate_limit_until.is_some()
            && self.status_enum() != Some(Status::RateLimited)
    }

    pub fn cooling_at(&self, now: i64) -> bool {
        self.cooldown_until(now).is_some_and(|t| t > now)
    }

    /// How far the clock reading `now` is behind the one that set this account's cooldowns
    /// (`cooldownsSetAt`), when it was stepped back since (NTP correcting a clock that ran fast,
    /// a VM restored); 0 otherwise. Every cooldown and backoff end is a time of day: after a
    /// step back of two hours, a 60 s `retry-after` benched the account two hours and a minute,
    /// and a token endpoint's one-second backoff kept an expired token from being refreshed as
    /// long. Less this, each lasts at most what was left of it when it was set.
    pub fn clock_set_back(&self, now: i64) -> i64 {
        self.extra
            .get(SET_AT)
            .and_then(epoch_ms_of)
            .map(|at| at.saturating_sub(now))
            .filter(|back| *back > CLOCK_STEP_MS)
            .unwrap_or(0)
    }

    /// Rewrites the stored cooldown and backoff ends onto the clock as it reads `now` (when it
    /// was stepped back since they were set) and stamps them as set at `now`: called before any
    /// of them is written, so that every end the account holds is of one clock.
    pub fn settle_clock(&mut self, now: i64) {
        let back = self.clock_set_back(now);
        if back > 0 {
            let earlier = |t: i64| if t > 0 { t.saturating_sub(back) } else { t };
            self.rate_limit_until = self.rate_limit_until.map(earlier);
            for key in ["cooldownUntil", "refreshBackoffUntil"] {
                if let Some(t) = self.extra.get(key).and_then(epoch_ms_of) {
                    self.extra.insert(key.into(), Value::from(earlier(t)));
                }
            }
            if let Some(m) = self
                .extra
                .get_mut("modelCooldowns")
                .and_then(Value::as_object_mut)
            {
                for v in m.values_mut() {
                    if let Some(t) = epoch_ms_of(v) {
                        *v = Value::from(earlier(t));
                    }
                }
            }
        }
        self.extra.insert(SET_AT.into(), Value::from(now));
    }

    /// Until when the token endpoint is left alone for this account (`refreshBackoffUntil`), as
    /// the clock reads `now`; None when no such wait runs at `now`.
    pub fn refresh_backoff_until(&self, now: i64) -> Option<i64> {
        self.extra
            .get("refreshBackoffUntil")
            .and_then(epoch_ms_of)
            .map(|t| t.saturating_sub(self.clock_set_back(now)))
            .filter(|t| *t > now)
    }

    /// Until when this account cannot serve because its access token needs a refresh and the
    /// token endpoint asked to be left alone (`refreshBackoffUntil`); None when that is not so.
    /// Every request meanwhile fails over or fails `POOL_NO_ACCOUNT`: it rests, whatever its
    /// cooldown says (`reset-cooldowns` lifts it as one).
    pub fn token_wait_until(&self, now: i64) -> Option<i64> {
        if self.is_api_key() || crate::engine::credentials::fresh_access(self, now).is_some() {
            return None;
        }
        self.refresh_backoff_until(now)
    }

    /// When this account can serve again, as the clock reads `now`: the later of its cooldown
    /// and its token wait; None when neither runs.
    pub fn resting_until(&self, now: i64) -> Option<i64> {
        self.cooldown_until(now)
            .filter(|t| *t > now)
            .max(self.token_wait_until(now))
    }

    pub fn set_refresh_backoff(&mut self, until: i64, now: i64) {
        self.settle_clock(now);
        self.extra
            .insert("refreshBackoffUntil".into(), Value::from(until));
    }

    /// Cools the account until at least `until` (cooldowns only move forward). A file that
    /// carries aidevops's `cooldownUntil` gets it too, so its tools see our cooldowns.
    pub fn cool_until(&mut self, until: i64, now: i64) {
        self.settle_clock(now);
        if self.reset_by_them() {
            self.rate_limit_until = None;
        }
        // A garbled end (`believed_end`) is not kept by the max: the new one would be read as
        // none with it.
        let believed = |t: i64| crate::engine::limits::believed_end(t, now);
        let merged = self
            .rate_limit_until
            .and_then(believed)
            .map_or(until, |t| t.max(until));
        self.rate_limit_until = Some(merged);
        if self.extra.contains_key("cooldownUntil") {
            let theirs = self
                .stored_cooldown_until()
                .and_then(believed)
                .unwrap_or(merged)
                .max(merged);
            self.extra
                .insert("cooldownUntil".into(), Value::from(theirs));
        }
    }

    /// How many times `reset-cooldowns` ran on this account (see `RESETS`).
    pub fn cooldown_resets(&self) -> u64 {
        self.extra.get(RESETS).and_then(Value::as_u64).unwrap_or(0)
    }

    /// `reset-cooldowns`: every process learns from this that what it rests on its own, decided
    /// before now, is lifted.
    pub fn count_cooldown_reset(&mut self) {
        let n = self.cooldown_resets().saturating_add(1);
        self.extra.insert(RESETS.into(), Value::from(n));
    }

    /// When `reset-cooldowns` last ran on this account (epoch ms, its host's clock).
    pub fn cooldowns_reset_at(&self) -> Option<i64> {
        self.extra.get(RESET_AT).and_then(Value::as_i64)
    }

    /// `reset-cooldowns` at `now`: what the windows said before it holds no reserve line.
    pub fn mark_cooldowns_reset(&mut self, now: i64) {
        self.count_cooldown_reset();
        self.extra.insert(RESET_AT.into(), Value::from(now));
    }

    /// Ends every cooldown (`reset-cooldowns`, or one that has passed).
    pub fn clear_cooldown(&mut self) {
        self.rate_limit_until = None;
        if self.extra.contains_key("cooldownUntil") {
            self.extra.insert("cooldownUntil".into(), Value::Null);
        }
    }

    /// The rate-limit windows last seen for this account (`limits.windows` keyed by name; files
    /// written before windows were generic keep `quota.fiveHour` / `quota.sevenDay`).
    pub fn windows(&self) -> Vec<crate::engine::limits::Window> {
        use crate::engine::limits::Window;
        #[cfg(test)]
        WINDOW_READS.with(|n| n.set(n.get() + 1));
        if let Some(map) = self.stored_windows() {
            return map
                .iter()
                .filter_map(|(name, w)| {
                    let mut w: Window = serde_json::from_value(w.clone()).ok()?;
                    w.name = name.clone();
                    Some(w)
                })
                .collect();
        }
        let Some(q) = self.extra.get("quota") else {
            return Vec::new();
        };
        [("5h", "fiveHour"), ("7d", "sevenDay")]
            .iter()
            .filter_map(|(name, key)| {
                let w = q.get(*key)?;
                Some(Window {
                    name: (*name).to_string(),
                    status: w.get("status").and_then(Value::as_str).map(str::to_string),
                    reset: w.get("resetsAt").and_then(epoch_ms_of),
                    utilization: w.get("utilization").and_then(Value::as_f64),
                    surpassed_threshold: None,
                    updated_at: None,
                })
            })
            .collect()
    }

    /// Whether a stored window was heard of before the clock reading `now` was stepped back
    /// (`Window::clock_set_back`).
    pub fn windows_set_back(&self, now: i64) -> bool {
        self.stored_windows()
            .into_iter()
            .flat_map(|m| m.values())
            .any(|w| window_set_back(w, now).is_some())
    }

    /// Moves the stored windows onto the clock as it reads `now` when it was stepped back since
    /// they were heard of (`Window::settle_clock`), and `limits.updatedAt` with them; called
    /// before anything is laid over them. Read through the step, a window's reset is what it had
    /// left counted from whenever it is read, so it would end only once the clock is back where
    /// it was, and every answer until then was older news than what the file held.
    pub fn settle_windows(&mut self, now: i64) {
        let Some(limits) = self.extra.get_mut("limits").and_then(Value::as_object_mut) else {
            return;
        };
        if let Some(at) = limits.get("updatedAt").and_then(epoch_ms_of) {
            if at.saturating_sub(now) > CLOCK_STEP_MS {
                limits.insert("updatedAt".into(), Value::from(now));
            }
        }
        let Some(windows) = limits.get_mut("windows").and_then(Value::as_object_mut) else {
            return;
        };
        for w in windows.values_mut() {
            let Some(back) = window_set_back(w, now) else {
                continue;
            };
            let Some(w) = w.as_object_mut() else { continue };
            for key in ["reset", "updatedAt"] {
                if let Some(t) = w.get(key).and_then(epoch_ms_of) {
                    w.insert(key.into(), Value::from(t.saturating_sub(back)));
                }
            }
        }
    }

    /// Moves every time of day the pool keeps for this account by `delta` ms: token expiry,
    /// cooldowns, waits and their stamp, last use, windows (resets and when they were heard of)
    /// and the 5-hour usage buckets, which are keyed by a reset. The fleet store keeps them on
    /// the database server's clock and each host in memory on its own (`store::postgres`).
    /// Fields it does not know, and values that are not epoch milliseconds, are left as they are;
    /// moving back by `delta` gives the entry as it was.
    pub fn shift_times(&mut self, delta: i64) {
        if delta == 0 {
            return;
        }
        let shift = |t: &mut Option<i64>| {
            if let Some(ms) = t.filter(|ms| is_epoch_ms(*ms)) {
                *t = Some(ms.saturating_add(delta));
            }
        };
        shift(&mut self.expires);
        shift(&mut self.rate_limit_until);
        for s in [&mut self.added, &mut self.last_used].into_iter().flatten() {
            shift_iso(s, delta);
        }
        for key in ["cooldownUntil", "refreshBackoffUntil", SET_AT] {
            if let Some(v) = self.extra.get_mut(key) {
                shift_value(v, delta);
            }
        }
        if let Some(m) = self
            .extra
            .get_mut("modelCooldowns")
            .and_then(Value::as_object_mut)
        {
            m.values_mut().for_each(|v| shift_value(v, delta));
        }
        if let Some(limits) = self.extra.get_mut("limits") {
            shift_fields(Some(limits), &["updatedAt", "reset"], delta);
            shift_fields(limits.get_mut("overage"), &["reset"], delta);
            if let Some(ws) = limits.get_mut("windows").and_then(Value::as_object_mut) {
                for w in ws.values_mut() {
                    shift_fields(Some(w), &["reset", "updatedAt"], delta);
                }
            }
        }
        if let Some(q) = self.extra.get_mut("quota") {
            for name in ["fiveHour", "sevenDay"] {
                shift_fields(q.get_mut(name), &["resetsAt"], delta);
            }
        }
        if let Some(buckets) = self
            .extra
            .get_mut("usage")
            .and_then(|u| u.get_mut("windows"))
            .and_then(Value::as_object_mut)
        {
            let moved: Map<String, Value> = std::mem::take(buckets)
                .into_iter()
                .map(|(k, v)| match k.parse::<i64>() {
                    Ok(ms) if is_epoch_ms(ms) && ms.to_string() == k => {
                        (ms.saturating_add(delta).to_string(), v)
                    }
                    _ => (k, v),
                })
                .collect();
            *buckets = moved;
        }
    }

    fn stored_windows(&self) -> Option<&Map<String, Value>> {
        self.extra
            .get("limits")
            .and_then(|l| l.get("windows"))
            .and_then(Value::as_object)
    }

    /// The share of every window kept for the account's owner (`reserve`, 0 to 1): the pool
    /// stops using the account once a window's utilization reaches `1 - reserve`.
    pub fn reserve(&self) -> Option<f64> {
        self.extra
            .get("reserve")
            .and_then(Value::as_f64)
            .filter(|r| r.is_finite() && *r > 0.0 && *r <= 1.0)
    }

    /// When this account is usable again for models of `family` (`modelCooldowns`: a quota of
    /// one model family that left the others usable).
    pub fn model_cooldown_until(&self, family: &str, now: i64) -> Option<i64> {
        self.stored_model_cooldown_until(family)
            .map(|t| t.saturating_sub(self.clock_set_back(now)))
            .and_then(|t| crate::engine::limits::believed_end(t, now))
    }

    /// The rest of `family` as written, not adjusted for a clock stepped back since.
    pub fn stored_model_cooldown_until(&self, family: &str) -> Option<i64> {
        self.extra
            .get("modelCooldowns")
            .and_then(|m| m.get(family))
            .and_then(epoch_ms_of)
            .filter(|t| *t > 0)
    }

    /// Rests `family` on this account until at least `until`; passed ones are dropped.
    pub fn cool_model_until(&mut self, family: &str, until: i64, now: i64) {
        self.settle_clock(now);
        let entry = self
            .extra
            .entry("modelCooldowns")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Some(m) = entry.as_object_mut() {
            // Passed ones go, after the reopening spread (`OAUTH_POOL_JITTER_MS`, at most 60 s).
            m.retain(|_, v| epoch_ms_of(v).is_some_and(|t| t + 60_000 > now));
            let merged = m
                .shift_remove(family)
                .as_ref()
                .and_then(epoch_ms_of)
                .and_then(|t| crate::engine::limits::believed_end(t, now))
                .map_or(until, |t| t.max(until));
            // Last in the map: of the rests ending together, the one decided last stays.
            m.insert(family.to_string(), Value::from(merged));
            if m.len() > crate::engine::limits::MAX_SCOPED_COOLDOWNS {
                let mut ends: Vec<(String, i64)> = m
                    .iter()
                    .map(|(k, v)| (k.clone(), epoch_ms_of(v).unwrap_or(0)))
                    .collect();
                for k in crate::engine::limits::cap_scoped(&mut ends, &family.to_string()) {
                    m.remove(&k);
                }
            }
        }
    }

    /// An `auth-error` this pool set: the refused credential's tag is recorded in
    /// `authErrorToken` and is still the account's credential. Only a new login clears it.
    pub fn auth_error_is_ours(&self) -> bool {
        self.status_enum() == Some(Status::AuthError)
            && self.extra.get("authErrorToken").and_then(Value::as_str)
                == self.credential_tag().as_deref()
            && self.extra.contains_key("authErrorToken")
    }

    /// An `auth-error` of ours written over by another program (aidevops's `reset-cooldowns` sets
    /// every `auth-error` back to `idle`) while the refused credential is still the account's:
    /// read as the `auth-error` it is. Read as `idle`, every view called the login usable while
    /// every request was `POOL_NO_ACCOUNT`, and a new process presented the refused refresh token
    /// again. Only a new login clears it; a disabled account stays disabled (`enable` puts the
    /// mark back).
    pub(crate) fn keep_our_auth_error(&mut self) {
        if matches!(
            self.status_enum(),
            Some(Status::AuthError) | Some(Status::Disabled)
        ) {
            return;
        }
        let Some(refused) = self.extra.get("authErrorToken").and_then(Value::as_str) else {
            return;
        };
        if self.credential_tag().as_deref() == Some(refused) {
            self.status = Status::AuthError.as_str().into();
        }
    }

    /// An `auth-error` someone else set (aidevops's helper marks one on a transient refresh
    /// failure, with a backoff in `cooldownUntil`): once that cooldown has passed, the account
    /// is tried again, and its refresh token is presented once to find out.
    pub fn auth_error_unverified(&self) -> bool {
        self.status_enum() == Some(Status::AuthError) && !self.auth_error_is_ours()
    }

    /// Whether a request may be sent with this account at `now`.
    pub fn usable_at(&self, now: i64) -> bool {
        self.is_enabled()
            && !self.auth_error_is_ours()
            && !self.cooling_at(now)
            && self.token_wait_until(now).is_none()
            && self.has_credential()
    }

    pub fn priority(&self) -> i64 {
        self.priority.unwrap_or(0)
    }

    /// A short tag of the credential in use (refresh token, else access token; the key for API
    /// members): an auth-error belongs to the credential that failed, and a new login, with new
    /// tokens, clears it.
    pub fn credential_tag(&self) -> Option<String> {
        let secret = if self.is_api_key() {
            self.key.as_ref()
        } else {
            self.refresh
                .as_ref()
                .filter(|r| !r.is_empty())
                .or(self.access.as_ref())
        };
        secret.filter(|s| !s.is_empty()).map(Secret::fingerprint)
    }

    /// `lastUsed` as epoch milliseconds (0 when never used or unreadable).
    pub fn last_used_ms(&self) -> i64 {
        self.last_used
            .as_deref()
            .and_then(parse_iso_ms)
            .unwrap_or(0)
    }
}

/// Whether `email` may name a new account: at most 254 characters (an address's limit), none of
/// them a control or invisible formatting character (they would rewrite a terminal or hide
/// what is shown), and not `#` first (`#N` names the N-th entry). Emails come from people and
/// from the token endpoint's profile: both are held to this.
pub fn acceptable_email(email: &str) -> bool {
    // The secret search's list (a soft hyphen, U+061C, variation selectors, Hangul fillers: a
    // review found `s\u{ad}erver@x.test` taken beside `server@x.test`, the two alike on screen),
    // and the interlinear annotation marks.
    let invisible =
        |c: char| crate::secret::is_invisible(c) || matches!(c, '\u{fff9}'..='\u{fffb}');
    !email.is_empty()
        && email.chars().count() <= 254
        && !email.starts_with('#')
        && !email.chars().any(|c| c.is_control() || invisible(c))
}

/// A name a token endpoint or its profile gives a login, taken when it names an account and holds
/// no credential (`team sk-ant-...`): a name is shown where a token never is (lists, logs, the
/// tool's answers); otherwise the login goes under a name of the pool's.
pub fn acceptable_server_email(email: &str) -> bool {
    acceptable_email(email) && crate::secret::scrub_tokens(email) == email
}

/// A name as names are compared: trimmed, in lower case and in one Unicode normal form (NFC). A
/// name typed decomposed (`u` and a combining diaeresis, as macOS and some pastes give `ü`) was
/// no account, and a key already held under it was "in the pool as" a name that read the same.
/// Whether an entry's `type` is one the pool serves: `oauth` or `api`, in any case and without
/// surrounding spaces (a hand-written `"API"` key was sent as a login's bearer).
pub fn known_kind(kind: &str) -> bool {
    let kind = kind.trim();
    kind.eq_ignore_ascii_case("oauth") || kind.eq_ignore_ascii_case("api")
}

pub fn normalize_email(email: &str) -> String {
    let lower = email.trim().to_lowercase();
    if lower.is_ascii() {
        return lower;
    }
    use unicode_normalization::UnicodeNormalization;
    lower.nfc().collect()
}

pub fn iso_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `iso_time` to the second, for a time a person reads in a message. Milliseconds tell a person
/// nothing there, and a host reads the message too: OpenCode 1.18 retries, silently for about a
/// minute, any failure whose text holds 429, 500, 502, 503, 504 or 524 anywhere, and 6 in 1000
/// millisecond values are one of those.
pub fn iso_time_seconds(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An RFC 3339 time as epoch ms: with `Z`, with no zone (read as UTC), or with an offset such as
/// `+01:00`, which humantime refuses: a helper on a machine not set to UTC writes one
/// (`datetime.now().astimezone().isoformat()`), and such an `expires` made the entry unreadable,
/// such a `cooldownUntil` no cooldown at all.
pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let v = s.trim();
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
    };
    // The offset is read first: humantime takes `+01:00` after a fraction of a second and
    // ignores it (`13:00:00.000+01:00` read as 13:00 UTC).
    let Some((stamp, offset)) = v
        .len()
        .checked_sub(6)
        .and_then(|at| v.split_at_checked(at))
        .filter(|(_, offset)| offset.starts_with(['+', '-']))
    else {
        return ms(humantime::parse_rfc3339_weak(v).ok()?);
    };
    let bytes = offset.as_bytes();
    let sign = if bytes[0] == b'+' { 1 } else { -1 };
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = offset.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if bytes.get(3) != Some(&b':') {
        return None;
    }
    let (hours, minutes) = (digits(1..3)?, digits(4..6)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    let local = ms(humantime::parse_rfc3339_weak(stamp).ok()?)?;
    local.checked_sub(sign * (hours * 60 + minutes) * 60_000)
}

/// The wall clock (epoch ms) the pool decides by. In tests it runs ahead of the machine's by what
/// `test_clock::advance` moved it on this thread, so that cooldowns, window resets and token
/// lifetimes can pass without waiting.
pub fn now_ms() -> i64 {
    wall_ms().saturating_add(test_clock::offset())
}

/// `now_ms` as a `SystemTime`, for what parses dates against it (`retry-after`).
pub fn system_now() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms().max(0) as u64)
}

/// The machine's wall clock (epoch ms), whatever a test moved.
pub(crate) fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
thread_local! {
    /// How often this thread read an account's windows (`Account::windows`): the work a choice
    /// of account costs grows with it.
    pub(crate) static WINDOW_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(not(test))]
pub(crate) mod test_clock {
    #[inline(always)]
    pub fn offset() -> i64 {
        0
    }
}

/// A clock a test moves forward: per thread (tests run in parallel, each on its own thread), and
/// carried into the file work it hands to the blocking pool (`store::blocking`). A test on a
/// current-thread runtime has everything the engine spawns on its own thread.
#[cfg(test)]
pub(crate) mod test_clock {
    use std::cell::Cell;

    thread_local! {
        static OFFSET: Cell<i64> = const { Cell::new(0) };
    }

    pub fn offset() -> i64 {
        OFFSET.with(Cell::get)
    }

    /// Moves this thread's clock on by `ms` (never back).
    pub fn advance(ms: i64) {
        OFFSET.with(|o| o.set(o.get().saturating_add(ms.max(0))));
    }

    /// Sets this thread's offset (to carry it into another thread).
    pub fn set(ms: i64) {
        OFFSET.with(|o| o.set(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_another_unicode_normal_form_or_case_are_one_name() {
        let composed = "J\u{fc}rgen@x.test";
        let decomposed = "Ju\u{308}rgen@x.test";
        assert_eq!(normalize_email(decomposed), normalize_email(composed));
        assert_eq!(
            normalize_email(" J\u{dc}RGEN@X.test "),
            normalize_email(composed)
        );
        assert_ne!(normalize_email("Jurgen@x.test"), normalize_email(composed));
    }
    use serde_json::json;

    #[test]
    fn a_time_written_as_text_is_read_as_that_time_not_as_an_unreadable_entry() {
        // Found by a review: `cooldownUntil` read text and ISO dates, `expires` and
        // `rateLimitUntil` made the whole entry unreadable.
        for (written, ms) in [
            (json!("1787297400000"), 1_787_297_400_000i64),
            (json!(" 1787297400 "), 1_787_297_400_000),
            (json!("2026-08-21T08:10:00Z"), 1_787_299_800_000),
        ] {
            let a: Account = serde_json::from_value(json!({
                "type": "oauth", "email": "a@x", "refresh": "r", "access": "a",
                "expires": written, "rateLimitUntil": written
            }))
            .unwrap();
            assert_eq!(
                (a.expires, a.rate_limit_until),
                (Some(ms), Some(ms)),
                "{written}"
            );
        }
        let garbled = serde_json::from_value::<Account>(json!({
            "type": "oauth", "email": "a@x", "refresh": "r", "expires": "soon"
        }));
        assert!(garbled.is_err());
        // A cooldown's end past any epoch (microseconds, 1e300) is none, not an entry refused.
        let micros = now_ms() as f64 * 1000.0;
        for end in [json!(micros), json!(1e300), json!(-1e300)] {
            let a: Account = serde_json::from_value(json!({
                "type": "oauth", "email": "a@x", "refresh": "r", "rateLimitUntil": end
            }))
            .unwrap();
            assert_eq!(a.rate_limit_until, None, "{end}");
        }
    }

    #[test]
    fn epochs_read_back_as_the_same_time_after_each_write() {
        let read = |expires: Value| -> Value {
            let a: Account = serde_json::from_value(json!({
                "type": "oauth", "email": "a@x", "refresh": "r", "access": "a",
                "expires": expires, "rateLimitUntil": expires
            }))
            .unwrap();
            serde_json::to_value(&a).unwrap()
        };
        // Seconds, as a shell helper wrote them: milliseconds once, then kept.
        assert_eq!(
            read(json!(1_700_000_000))["expires"],
            json!(1_700_000_000_000i64)
        );
        assert_eq!(
            read(json!(1_700_000_000.5))["expires"],
            json!(1_700_000_000_500i64)
        );
        // A negative time (a writer's "none") is long past and kept as written: it made the
        // entry unreadable (found by a review).
        assert_eq!(read(json!(-1))["expires"], json!(-1));
        let past: Account = serde_json::from_value(json!({
            "type": "oauth", "email": "a@x", "refresh": "r", "access": "a",
            "expires": -1, "rateLimitUntil": -1.5
        }))
        .unwrap();
        assert_eq!(past.expires, Some(-1));
        assert!(!past.cooling_at(0));
        for written in [
            json!(-1),
            json!(0),
            json!(5),
            json!(999_999_999),
            json!(1_700_000_000),
        ] {
            let once = read(written.clone());
            let mut again = once.clone();
            for _ in 0..3 {
                again = read(again["expires"].clone());
            }
            assert_eq!(
                again["expires"], once["expires"],
                "{written}: moved at a write"
            );
            assert_eq!(
                read(once["rateLimitUntil"].clone())["rateLimitUntil"],
                once["rateLimitUntil"]
            );
            let ms = once["expires"].as_i64().unwrap();
            assert!(
                !(1_000_000_000..1_000_000_000_000).contains(&ms),
                "{written}: {ms}"
            );
        }
    }

    #[test]
    fn effective_status_clears_past_cooldowns() {
        let now = 1_800_000_000_000;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now, now);
        a.status = "rate-limited".into();
        a.rate_limit_until = Some(now - 1);
        assert_eq!(a.effective_status(now), Status::Idle);
        assert!(a.usable_at(now));
        a.rate_limit_until = Some(now + 1000);
        assert_eq!(a.effective_status(now), Status::RateLimited);
        assert!(!a.usable_at(now));
        a.enabled = Some(false);
        assert_eq!(a.effective_status(now), Status::Disabled);
    }

    #[test]
    fn model_rests_are_capped_and_the_ones_ending_soonest_go() {
        let now = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now + 10_000_000, now);
        a.cool_model_until("sonnet", now + 10 * 3_600_000, now);
        for i in 0..1_000 {
            a.cool_model_until(&format!("fam{i}"), now + 3_600_000 + i, now);
        }
        let m = a.extra["modelCooldowns"].as_object().unwrap();
        assert_eq!(m.len(), crate::engine::limits::MAX_SCOPED_COOLDOWNS);
        assert!(m.contains_key("sonnet"), "it ends last: kept");
        assert!(m.contains_key("fam999"), "the one just decided stays");
        assert!(!m.contains_key("fam0"));
        // The one just decided stays even when it ends soonest.
        a.cool_model_until("haiku", now + 1_000, now);
        assert!(a.model_cooldown_until("haiku", now).is_some());
        assert_eq!(
            a.extra["modelCooldowns"].as_object().unwrap().len(),
            crate::engine::limits::MAX_SCOPED_COOLDOWNS
        );
    }

    #[test]
    fn cooldowns_set_before_the_clock_went_back_last_no_longer_than_they_had_left() {
        let set = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), set + 10_000_000, set);
        a.extra.insert("cooldownUntil".into(), json!(0));
        a.cool_until(set + 60_000, set);
        a.cool_model_until("opus", set + 600_000, set);
        a.set_refresh_backoff(set + 1_000, set);
        // Ten seconds later the clock is stepped back two hours: each lasts what it had left
        // when it was set (the ten seconds since cannot be told).
        let now = set + 10_000 - 7_200_000;
        assert_eq!(a.clock_set_back(now), 7_190_000);
        assert_eq!(
            a.cooldown_until(now),
            Some(now + 60_000),
            "the minute's rest"
        );
        assert_eq!(a.model_cooldown_until("opus", now), Some(now + 600_000));
        assert_eq!(a.refresh_backoff_until(now), Some(now + 1_000));
        assert!(a.cooling_at(now));
        // A new cooldown rewrites the old ends onto the clock as it is, then stamps it (the
        // bookkeeping does the same as soon as a step is seen): they end at a time of day again.
        a.cool_model_until("sonnet", now + 30_000, now);
        assert_eq!(a.clock_set_back(now), 0);
        assert!(a.cooling_at(now + 59_000) && !a.cooling_at(now + 60_000));
        assert_eq!(a.rate_limit_until, Some(now + 60_000));
        assert_eq!(
            a.extra["cooldownUntil"],
            json!(now + 60_000),
            "their mirror too"
        );
        assert_eq!(a.extra["refreshBackoffUntil"], json!(now + 1_000));
        assert_eq!(a.model_cooldown_until("opus", now), Some(now + 600_000));
        assert_eq!(a.model_cooldown_until("sonnet", now), Some(now + 30_000));
        // A clock a little behind (another host of a fleet store) changes nothing; nor one ahead.
        assert_eq!(a.clock_set_back(now - 100_000), 0);
        assert_eq!(a.cooldown_until(now + 3_600_000), Some(now + 60_000));
    }

    #[test]
    fn a_token_endpoints_wait_rests_an_account_whose_token_needs_a_refresh() {
        let now = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now - 1_000, now);
        a.set_refresh_backoff(now + 30_000, now);
        assert_eq!(a.token_wait_until(now), Some(now + 30_000));
        assert!(!a.usable_at(now));
        assert_eq!(a.effective_status(now), Status::RateLimited);
        assert_eq!(a.resting_until(now), Some(now + 30_000));
        // A cooldown ending later is the later end.
        a.cool_until(now + 60_000, now);
        assert_eq!(a.resting_until(now), Some(now + 60_000));
        a.clear_cooldown();
        // Once the wait is over it is tried (and refreshed) again.
        assert!(a.usable_at(now + 30_001));
        assert_eq!(a.effective_status(now + 30_001), Status::Idle);
        // A token that is still good serves whatever the token endpoint said.
        a.expires = Some(now + 3_600_000);
        assert_eq!(a.token_wait_until(now), None);
        assert!(a.usable_at(now));
        // A key is never refreshed.
        let mut k = Account::new_api_key("k@x", "sk-ant-api03-x".into(), now);
        k.extra
            .insert("refreshBackoffUntil".into(), json!(now + 30_000));
        assert!(k.usable_at(now));
    }

    #[test]
    fn the_aidevops_plugins_own_reset_of_a_cooldown_we_mirrored_ends_ours_too() {
        let now = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now + 10_000_000, now);
        a.extra.insert("cooldownUntil".into(), json!(null));
        a.cool_until(now + 3_600_000, now);
        a.status = "rate-limited".into();
        assert_eq!(a.extra["cooldownUntil"], json!(now + 3_600_000));
        // Their reset: cooldownUntil cleared, the status idle; rateLimitUntil untouched.
        a.extra.insert("cooldownUntil".into(), json!(null));
        assert!(
            a.cooling_at(now),
            "still rate-limited by its status: not their reset"
        );
        a.status = "idle".into();
        assert!(!a.cooling_at(now));
        assert_eq!(a.cooldown_until(now), None);
        // A later cooldown of ours starts from it, not from the one they reset.
        a.cool_until(now + 60_000, now);
        assert_eq!(a.cooldown_until(now), Some(now + 60_000));
        // An entry without their field is ours alone: no reset to read.
        let mut b = Account::new_oauth("b@x", "a".into(), "r".into(), now + 10_000_000, now);
        b.cool_until(now + 60_000, now);
        assert!(b.cooling_at(now));
    }

    #[test]
    fn aidevops_cooldowns_and_foreign_auth_errors() {
        let now = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now + 10_000_000, now);
        a.extra.insert("cooldownUntil".into(), json!(now + 60_000));
        assert!(a.cooling_at(now), "their cooldownUntil counts");
        a.rate_limit_until = Some(now + 120_000);
        assert_eq!(
            a.cooldown_until(now),
            Some(now + 120_000),
            "the later of the two wins"
        );
        a.cool_until(now + 300_000, now);
        assert_eq!(
            a.extra["cooldownUntil"],
            json!(now + 300_000),
            "mirrored for their tools"
        );
        a.clear_cooldown();
        assert!(!a.cooling_at(now));
        assert_eq!(a.extra["cooldownUntil"], Value::Null);
        for zero in [json!(0), json!(null), json!("0"), json!("soon")] {
            a.extra.insert("cooldownUntil".into(), zero);
            assert_eq!(a.cooldown_until(now), None);
        }
        a.extra
            .insert("cooldownUntil".into(), json!((now + 60_000).to_string()));
        assert_eq!(
            a.cooldown_until(now),
            Some(now + 60_000),
            "a number as text"
        );
        a.extra.insert("cooldownUntil".into(), json!(null));
        // An auth-error someone else set: usable once its backoff is over, to be verified.
        a.status = "auth-error".into();
        assert!(a.auth_error_unverified() && a.usable_at(now));
        a.extra.insert("cooldownUntil".into(), json!(now + 60_000));
        assert!(!a.usable_at(now), "not before its backoff ends");
        a.extra.insert("cooldownUntil".into(), json!(null));
        // Ours: tied to the refused credential; a new login (new refresh token) lifts it.
        a.extra
            .insert("authErrorToken".into(), json!(a.credential_tag()));
        assert!(a.auth_error_is_ours() && !a.usable_at(now));
        a.refresh = Some("r2".into());
        assert!(!a.auth_error_is_ours() && a.usable_at(now));
    }

    /// The fleet store keeps times on the database server's clock: every time of day an entry
    /// holds moves by the difference, anything else stays, and moving back restores it exactly.
    #[test]
    fn times_move_between_clocks_and_back_exactly() {
        let t = 1_800_000_000_000i64;
        let raw = json!({
            "email": "a@x", "refresh": "r", "access": "a", "expires": t,
            "added": "2027-01-15T08:00:00.000Z", "lastUsed": "2027-01-15 08:00:00",
            "status": "rate-limited", "rateLimitUntil": t + 1, "priority": 3,
            "cooldownUntil": 0, "refreshBackoffUntil": t + 2, "cooldownsSetAt": t + 3,
            "cooldownsReset": 4, "reserve": 0.2,
            "modelCooldowns": { "opus": t + 4, "odd": { "until": t } },
            "limits": {
                "updatedAt": t + 5, "status": "allowed",
                "overage": { "reset": t + 6, "status": "allowed" },
                "windows": { "5h": { "utilization": 0.5, "reset": t + 7, "updatedAt": t + 8, "other": t } }
            },
            "quota": { "fiveHour": { "resetsAt": t + 9, "utilization": 0.1 } },
            "usage": {
                "days": { "2027-01-15": { "m": { "requests": 1 } } },
                "windows": { (t + 10).to_string(): { "m": { "requests": 1 } }, "junk": {} }
            },
            "custom": t
        });
        let a: Account = serde_json::from_value(raw.clone()).unwrap();
        let mut moved = a.clone();
        moved.shift_times(-600_000);
        let v = serde_json::to_value(&moved).unwrap();
        let back = |ms: i64| json!(ms - 600_000);
        assert_eq!(v["expires"], back(t));
        assert_eq!(v["added"], json!("2027-01-15T07:50:00.000Z"));
        assert_eq!(
            v["lastUsed"],
            json!("2027-01-15 08:00:00"),
            "not written by the pool: as is"
        );
        assert_eq!(v["rateLimitUntil"], back(t + 1));
        assert_eq!(v["cooldownUntil"], json!(0), "none stays none");
        assert_eq!(v["refreshBackoffUntil"], back(t + 2));
        assert_eq!(v["cooldownsSetAt"], back(t + 3));
        assert_eq!(v["cooldownsReset"], json!(4));
        assert_eq!(v["modelCooldowns"]["opus"], back(t + 4));
        assert_eq!(v["modelCooldowns"]["odd"], json!({ "until": t }));
        assert_eq!(v["limits"]["updatedAt"], back(t + 5));
        assert_eq!(v["limits"]["overage"]["reset"], back(t + 6));
        assert_eq!(v["limits"]["windows"]["5h"]["reset"], back(t + 7));
        assert_eq!(v["limits"]["windows"]["5h"]["updatedAt"], back(t + 8));
        assert_eq!(
            v["limits"]["windows"]["5h"]["other"],
            json!(t),
            "unknown: as is"
        );
        assert_eq!(v["quota"]["fiveHour"]["resetsAt"], back(t + 9));
        let buckets = v["usage"]["windows"].as_object().unwrap();
        assert!(
            buckets.contains_key(&(t + 10 - 600_000).to_string()) && buckets.contains_key("junk")
        );
        assert!(v["usage"]["days"].get("2027-01-15").is_some());
        assert_eq!(v["custom"], json!(t));
        moved.shift_times(600_000);
        assert_eq!(
            serde_json::to_value(&moved).unwrap(),
            serde_json::to_value(&a).unwrap()
        );
    }

    #[test]
    fn iso_round_trip() {
        let ms = 1_711_234_567_123;
        assert_eq!(iso_time(ms), "2024-03-23T22:56:07.123Z");
        assert_eq!(parse_iso_ms(&iso_time(ms)), Some(ms));
        assert_eq!(iso_time_seconds(1_711_234_567_503), "2024-03-23T22:56:07Z");
    }
}
