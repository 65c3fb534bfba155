//! The pool file's data model: `{ "version"?: 1, "anthropic": Account[], ...anything else }`.
//! Unknown fields at every level are kept verbatim, and an account entry that does not parse is
//! kept as it was (and reported) rather than dropped: nothing the user wrote is ever lost.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::secret::Secret;

pub const POOL_VERSION: u64 = 1;

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

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "active" => Status::Active,
            "idle" => Status::Idle,
            "rate-limited" => Status::RateLimited,
            "auth-error" => Status::AuthError,
            "disabled" => Status::Disabled,
            _ => return None,
        })
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
    /// Access-token expiry, epoch milliseconds.
    #[serde(default, deserialize_with = "epoch_ms")]
    pub expires: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(default = "idle_status")]
    pub status: String,
    /// Epoch milliseconds; always written, `null` when not cooling.
    #[serde(default, deserialize_with = "epoch_ms")]
    pub rate_limit_until: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn idle_status() -> String {
    Status::Idle.as_str().to_string()
}

/// Accepts integers and floats (JavaScript writes `Date.now() + x * 1000`), and reads values
/// below 1e12 as seconds: a shell helper once wrote seconds, and "expired in 1970" would make
/// every such account look dead.
fn epoch_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let f = n
                .as_f64()
                .ok_or_else(|| serde::de::Error::custom("not a number"))?;
            if !f.is_finite() || f < 0.0 {
                return Err(serde::de::Error::custom("epoch out of range"));
            }
            let ms = if f < 1e12 { f * 1000.0 } else { f };
            if ms > 1e15 {
                return Err(serde::de::Error::custom("epoch out of range"));
            }
            Ok(Some(ms as i64))
        }
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected epoch milliseconds, found {}",
            kind_of(&other)
        ))),
    }
}

/// JavaScript numbers arrive as floats: whole ones (epochs, counts, priorities) are written
/// back as integers, as JavaScript's own JSON.stringify would write them.
fn integral(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.007e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(integral).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, integral(v))).collect())
        }
        other => other,
    }
}

/// An epoch from the file: milliseconds, or seconds when below 1e12 (see `epoch_ms`).
fn epoch_ms_of(v: &Value) -> Option<i64> {
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    let ms = if f < 1e12 { f * 1000.0 } else { f };
    (ms <= 1e15).then_some(ms as i64)
}

fn kind_of(v: &Value) -> &'static str {
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
            ..Account::blank(email, now)
        }
    }

    pub fn is_api_key(&self) -> bool {
        self.kind.as_deref() == Some("api")
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
            _ if self.cooling_at(now) => Status::RateLimited,
            Some(Status::Active) => Status::Active,
            _ => Status::Idle,
        }
    }

    /// When this account's cooldown ends: the later of our `rateLimitUntil` and `cooldownUntil`,
    /// which the aidevops plugin and its shell helper write (epoch ms; 0 or null: none).
    pub fn cooldown_until(&self) -> Option<i64> {
        let theirs = self
            .extra
            .get("cooldownUntil")
            .and_then(epoch_ms_of)
            .filter(|t| *t > 0);
        self.rate_limit_until.max(theirs)
    }

    pub fn cooling_at(&self, now: i64) -> bool {
        self.cooldown_until().is_some_and(|t| t > now)
    }

    /// Cools the account until at least `until` (cooldowns only move forward). A file that
    /// carries aidevops's `cooldownUntil` gets it too, so its tools see our cooldowns.
    pub fn cool_until(&mut self, until: i64) {
        let merged = self.rate_limit_until.map_or(until, |t| t.max(until));
        self.rate_limit_until = Some(merged);
        if self.extra.contains_key("cooldownUntil") {
            let theirs = self.cooldown_until().unwrap_or(merged).max(merged);
            self.extra
                .insert("cooldownUntil".into(), Value::from(theirs));
        }
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
        if let Some(map) = self
            .extra
            .get("limits")
            .and_then(|l| l.get("windows"))
            .and_then(Value::as_object)
        {
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
                })
            })
            .collect()
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
    pub fn model_cooldown_until(&self, family: &str) -> Option<i64> {
        self.extra
            .get("modelCooldowns")
            .and_then(|m| m.get(family))
            .and_then(epoch_ms_of)
            .filter(|t| *t > 0)
    }

    /// Rests `family` on this account until at least `until`; passed ones are dropped.
    pub fn cool_model_until(&mut self, family: &str, until: i64, now: i64) {
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
                .get(family)
                .and_then(epoch_ms_of)
                .map_or(until, |t| t.max(until));
            m.insert(family.to_string(), Value::from(merged));
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
            && self.has_credential()
    }

    pub fn priority(&self) -> i64 {
        self.priority.unwrap_or(0)
    }

    /// `lastUsed` as epoch milliseconds (0 when never used or unreadable).
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

    pub fn last_used_ms(&self) -> i64 {
        self.last_used
            .as_deref()
            .and_then(parse_iso_ms)
            .unwrap_or(0)
    }
}

/// One element of the `anthropic` array: an account, or an entry we could not read, kept as is.
#[derive(Debug, Clone)]
pub enum Entry {
    Valid(Box<Account>),
    Invalid { raw: Value, reason: String },
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Entry::Valid(a) => a.serialize(s),
            Entry::Invalid { raw, .. } => raw.serialize(s),
        }
    }
}

impl Entry {
    /// The entry's email, also for an unreadable entry that has one.
    pub fn email(&self) -> Option<&str> {
        match self {
            Entry::Valid(a) => Some(&a.email),
            Entry::Invalid { raw, .. } => raw.get("email").and_then(Value::as_str),
        }
    }

    fn from_value(raw: Value) -> Entry {
        let problem = match &raw {
            Value::Object(map) => match map.get("email") {
                Some(Value::String(e)) if !e.trim().is_empty() => None,
                Some(_) => Some("email is not a non-empty string".to_string()),
                None => Some("no email".to_string()),
            },
            other => Some(format!("entry is {}, not an object", kind_of(other))),
        };
        if let Some(reason) = problem {
            return Entry::Invalid { raw, reason };
        }
        match serde_json::from_value::<Account>(raw.clone()) {
            Ok(a) => Entry::Valid(Box::new(a)),
            Err(e) => Entry::Invalid {
                raw,
                reason: e.to_string(),
            },
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Pool {
    pub version: Option<Value>,
    pub anthropic: Vec<Entry>,
    pub extra: Map<String, Value>,
}

impl Pool {
    /// Parses the file's JSON. The top level must be an object whose `anthropic`, when present,
    /// is an array; anything else is a corrupt file. Bad entries inside the array are kept.
    pub fn from_value(value: Value) -> Result<Pool, String> {
        let Value::Object(mut map) = value else {
            return Err(format!(
                "the top level is {}, not an object",
                kind_of(&value)
            ));
        };
        let anthropic = match map.shift_remove("anthropic") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items.into_iter().map(Entry::from_value).collect(),
            Some(other) => {
                return Err(format!(
                    "\"anthropic\" is {}, not an array",
                    kind_of(&other)
                ))
            }
        };
        let version = map.shift_remove("version");
        Ok(Pool {
            version,
            anthropic,
            extra: map,
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<Pool, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Pool::from_value(value)
    }

    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        // `version: 1` says nothing (it is the only version) and aidevops's shell helper wipes a
        // pool whose top level has a key that is not an array (`version`, ours) or `_`-prefixed:
        // only another version is written back.
        if let Some(v) = self
            .version
            .as_ref()
            .filter(|v| v.as_u64() != Some(POOL_VERSION))
        {
            map.insert("version".into(), v.clone());
        }
        let entries = self
            .anthropic
            .iter()
            .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
            .collect();
        map.insert("anthropic".into(), Value::Array(entries));
        for (k, v) in &self.extra {
            map.insert(k.clone(), v.clone());
        }
        Value::Object(map)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.to_value()).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Strict validation for pools handed to us by a caller (`savePool`): unlike a file on disk,
    /// a bad entry here is the caller's bug and is refused rather than kept.
    pub fn from_caller(value: Value) -> Result<Pool> {
        // `savePool({})` would otherwise replace every account with none.
        match value.get("anthropic") {
            Some(Value::Array(_)) => {}
            Some(other) => {
                return Err(Error::PoolInvalid(format!(
                    "\"anthropic\" is {}, not an array of accounts",
                    kind_of(other)
                )))
            }
            None => {
                return Err(Error::PoolInvalid(
                    "a pool needs an \"anthropic\" array (use [] for no accounts)".into(),
                ))
            }
        }
        let pool = Pool::from_value(integral(value)).map_err(Error::PoolInvalid)?;
        for (i, e) in pool.anthropic.iter().enumerate() {
            if let Entry::Invalid { reason, .. } = e {
                return Err(Error::PoolInvalid(format!("anthropic[{i}]: {reason}")));
            }
        }
        Ok(pool)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.anthropic.iter().filter_map(|e| match e {
            Entry::Valid(a) => Some(a.as_ref()),
            Entry::Invalid { .. } => None,
        })
    }

    pub fn accounts_mut(&mut self) -> impl Iterator<Item = &mut Account> {
        self.anthropic.iter_mut().filter_map(|e| match e {
            Entry::Valid(a) => Some(a.as_mut()),
            Entry::Invalid { .. } => None,
        })
    }

    pub fn invalid_entries(&self) -> impl Iterator<Item = (usize, &str)> {
        self.anthropic
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Invalid { reason, .. } => Some((i, reason.as_str())),
                Entry::Valid(_) => None,
            })
    }

    /// The account with exactly this email, else the only one whose email differs from it just
    /// in case or surrounding spaces. Two entries that differ only in case are two accounts
    /// (the JavaScript predecessor could write both): exact match wins, never a guess.
    pub fn find(&self, email: &str) -> Option<&Account> {
        let i = self.position(email)?;
        match &self.anthropic[i] {
            Entry::Valid(a) => Some(a.as_ref()),
            Entry::Invalid { .. } => None,
        }
    }

    pub fn find_mut(&mut self, email: &str) -> Option<&mut Account> {
        let i = self.position(email)?;
        match &mut self.anthropic[i] {
            Entry::Valid(a) => Some(a.as_mut()),
            Entry::Invalid { .. } => None,
        }
    }

    fn position(&self, email: &str) -> Option<usize> {
        let valid = |e: &Entry| matches!(e, Entry::Valid(_));
        if let Some(i) = self
            .anthropic
            .iter()
            .position(|e| valid(e) && e.email() == Some(email))
        {
            return Some(i);
        }
        let key = normalize_email(email);
        let mut loose =
            self.anthropic.iter().enumerate().filter(|(_, e)| {
                valid(e) && e.email().map(normalize_email).as_deref() == Some(&key)
            });
        match (loose.next(), loose.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    }

    /// The entries a person means by `target` (for remove, enable, priority): every entry with
    /// exactly that email (readable or not), else the one entry equal up to case, else `#N`,
    /// the N-th entry (how unreadable entries without an email are named).
    pub fn resolve(&self, target: &str) -> Result<Vec<usize>> {
        let target = target.trim();
        if let Some(n) = target
            .strip_prefix('#')
            .and_then(|n| n.parse::<usize>().ok())
        {
            return if n < self.anthropic.len() {
                Ok(vec![n])
            } else {
                Err(Error::AccountNotFound(target.to_string()))
            };
        }
        let exact: Vec<usize> = self
            .anthropic
            .iter()
            .enumerate()
            .filter(|(_, e)| e.email().map(str::trim) == Some(target))
            .map(|(i, _)| i)
            .collect();
        if !exact.is_empty() {
            return Ok(exact);
        }
        let key = normalize_email(target);
        let loose: Vec<usize> = self
            .anthropic
            .iter()
            .enumerate()
            .filter(|(_, e)| e.email().map(normalize_email).as_deref() == Some(&key))
            .map(|(i, _)| i)
            .collect();
        match loose.len() {
            0 => Err(Error::AccountNotFound(target.to_string())),
            1 => Ok(loose),
            _ => Err(Error::InvalidArgument(format!(
                "{target:?} matches {} accounts that differ only in case ({}): give the exact email",
                loose.len(),
                loose
                    .iter()
                    .filter_map(|i| self.anthropic[*i].email())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Groups of account emails that differ only in case: reported by `status` and `doctor`.
    pub fn case_clashes(&self) -> Vec<Vec<String>> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for email in self.anthropic.iter().filter_map(Entry::email) {
            let key = normalize_email(email);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => {
                    if !members.iter().any(|m| m == email) {
                        members.push(email.to_string())
                    }
                }
                None => groups.push((key, vec![email.to_string()])),
            }
        }
        groups
            .into_iter()
            .map(|(_, m)| m)
            .filter(|m| m.len() > 1)
            .collect()
    }

    /// Adds an account, or, when one with the same email exists, replaces its credentials and
    /// clears its error state while keeping everything else the user set (priority, extras).
    /// Returns true when a new account was added.
    pub fn upsert(&mut self, incoming: Account) -> bool {
        if let Some(existing) = self.find_mut(&incoming.email) {
            existing.kind = incoming.kind;
            existing.refresh = incoming.refresh;
            existing.access = incoming.access;
            existing.key = incoming.key;
            existing.expires = incoming.expires;
            existing.clear_cooldown();
            existing.extra.remove("modelCooldowns");
            existing.extra.remove("authErrorToken");
            if matches!(
                existing.status_enum(),
                Some(Status::AuthError) | Some(Status::RateLimited) | None
            ) {
                existing.status = Status::Idle.as_str().into();
            }
            false
        } else {
            self.anthropic.push(Entry::Valid(Box::new(incoming)));
            true
        }
    }

    /// Removes the entries `target` names (see `resolve`). Returns how many went.
    pub fn remove(&mut self, target: &str) -> Result<usize> {
        let mut doomed = self.resolve(target)?;
        doomed.sort_unstable();
        for i in doomed.iter().rev() {
            self.anthropic.remove(*i);
        }
        Ok(doomed.len())
    }
}

pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

pub fn iso_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn parse_iso_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn legacy() -> Value {
        json!({
            "anthropic": [{
                "email": "a@example.com", "refresh": "r0", "access": "a0",
                "expires": 1711234567000u64, "added": "2026-03-19T10:00:00.000Z",
                "lastUsed": "2026-03-19T11:00:00.000Z", "status": "active", "rateLimitUntil": null,
                "cooldownUntil": 5, "accountId": "x"
            }],
            "openai": [{"email": "o@example.com", "whatever": [1, 2]}],
            "_pending_anthropic": {"k": "v"}
        })
    }

    #[test]
    fn legacy_file_round_trips_with_unknown_fields() {
        let pool = Pool::from_value(legacy()).unwrap();
        let a = pool.find("A@Example.com").unwrap();
        assert_eq!(a.expires, Some(1711234567000));
        assert_eq!(a.extra.get("accountId"), Some(&json!("x")));
        let out = pool.to_value();
        assert_eq!(out["openai"], legacy()["openai"]);
        assert_eq!(out["_pending_anthropic"], json!({"k": "v"}));
        assert_eq!(out["anthropic"][0]["cooldownUntil"], json!(5));
        assert_eq!(out["anthropic"][0]["refresh"], json!("r0"));
        assert_eq!(out["anthropic"][0]["rateLimitUntil"], Value::Null);
        assert!(out.get("version").is_none(), "version 1 is not written");
        let again = Pool::from_value(out.clone()).unwrap().to_value();
        assert_eq!(again, out);
    }

    #[test]
    fn seconds_are_read_as_seconds() {
        let pool =
            Pool::from_value(json!({"anthropic": [{"email": "a@x", "expires": 1711234567}]}))
                .unwrap();
        assert_eq!(pool.find("a@x").unwrap().expires, Some(1711234567000));
    }

    #[test]
    fn bad_entries_are_kept_and_reported() {
        let v = json!({"anthropic": [
            {"email": "ok@x", "access": "a"},
            {"email": 5},
            {"email": "bad@x", "expires": "soon"},
            7
        ]});
        let pool = Pool::from_value(v.clone()).unwrap();
        assert_eq!(pool.accounts().count(), 1);
        assert_eq!(pool.invalid_entries().count(), 3);
        let out = pool.to_value();
        assert_eq!(out["anthropic"][1], v["anthropic"][1]);
        assert_eq!(out["anthropic"][2], v["anthropic"][2]);
        assert_eq!(out["anthropic"][3], json!(7));
        assert!(Pool::from_caller(v).is_err());
        for bad in [
            json!({}),
            json!({"anthropic": null}),
            json!({"x": 1}),
            json!({"anthropic": {}}),
        ] {
            assert_eq!(Pool::from_caller(bad).unwrap_err().code(), "POOL_INVALID");
        }
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(Pool::from_value(json!([])).is_err());
        assert!(Pool::from_value(json!(3)).is_err());
        assert!(Pool::from_value(json!({"anthropic": {}})).is_err());
        assert!(Pool::parse(b"").is_err());
        assert!(Pool::parse(b"\xEF\xBB\xBF{}").is_err());
        assert!(Pool::parse(b"{\"anthropic\": [").is_err());
        assert!(Pool::from_value(json!({})).unwrap().anthropic.is_empty());
    }

    #[test]
    fn upsert_updates_same_email_and_keeps_settings() {
        let mut pool = Pool::default();
        let now = 1_800_000_000_000;
        assert!(pool.upsert(Account::new_oauth(
            "a@x",
            "a1".into(),
            "r1".into(),
            now,
            now
        )));
        pool.find_mut("a@x").unwrap().priority = Some(5);
        pool.find_mut("a@x").unwrap().status = "auth-error".into();
        assert!(!pool.upsert(Account::new_oauth(
            " A@X ",
            "a2".into(),
            "r2".into(),
            now,
            now
        )));
        assert_eq!(pool.accounts().count(), 1);
        let a = pool.find("a@x").unwrap();
        assert_eq!(a.access.as_ref().unwrap().expose(), "a2");
        assert_eq!(a.priority, Some(5));
        assert_eq!(a.status, "idle");
        assert!(pool.upsert(Account::new_api_key("k@x", "sk".into(), now)));
        assert_eq!(pool.remove("A@x").unwrap(), 1);
        assert_eq!(pool.accounts().count(), 1);
    }

    #[test]
    fn emails_differing_in_case_are_two_accounts() {
        let now = 1_800_000_000_000;
        let mut pool = Pool::from_value(json!({"anthropic": [
            {"email": "Ann@x", "access": "a1"},
            {"email": "ann@x", "access": "a2"},
            {"email": "bad@x", "expires": "soon"},
            7
        ]}))
        .unwrap();
        assert_eq!(
            pool.find("ann@x")
                .unwrap()
                .access
                .as_ref()
                .unwrap()
                .expose(),
            "a2"
        );
        assert_eq!(
            pool.find("Ann@x")
                .unwrap()
                .access
                .as_ref()
                .unwrap()
                .expose(),
            "a1"
        );
        assert!(pool.find("ANN@X").is_none(), "ambiguous: no guess");
        assert_eq!(
            pool.case_clashes(),
            vec![vec!["Ann@x".to_string(), "ann@x".to_string()]]
        );
        assert_eq!(
            pool.resolve("ANN@x").unwrap_err().code(),
            "INVALID_ARGUMENT"
        );
        assert_eq!(pool.remove("ann@x").unwrap(), 1);
        assert_eq!(pool.find("ANN@X").unwrap().email, "Ann@x");
        // Unreadable entries are reachable by email, or by #index when they have none.
        assert_eq!(pool.remove("bad@x").unwrap(), 1);
        assert_eq!(pool.remove("#1").unwrap(), 1);
        assert_eq!(pool.anthropic.len(), 1);
        assert!(!pool.upsert(Account::new_api_key("ann@x", "k".into(), now)));
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
    fn aidevops_cooldowns_and_foreign_auth_errors() {
        let now = 1_800_000_000_000i64;
        let mut a = Account::new_oauth("a@x", "a".into(), "r".into(), now + 10_000_000, now);
        a.extra.insert("cooldownUntil".into(), json!(now + 60_000));
        assert!(a.cooling_at(now), "their cooldownUntil counts");
        a.rate_limit_until = Some(now + 120_000);
        assert_eq!(
            a.cooldown_until(),
            Some(now + 120_000),
            "the later of the two wins"
        );
        a.cool_until(now + 300_000);
        assert_eq!(
            a.extra["cooldownUntil"],
            json!(now + 300_000),
            "mirrored for their tools"
        );
        a.clear_cooldown();
        assert!(!a.cooling_at(now));
        assert_eq!(a.extra["cooldownUntil"], Value::Null);
        for zero in [json!(0), json!(null)] {
            a.extra.insert("cooldownUntil".into(), zero);
            assert_eq!(a.cooldown_until(), None);
        }
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

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-zA-Z_]{1,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Pool::parse(&bytes);
        }

        #[test]
        fn every_parsed_pool_round_trips(extra in arb_json(), entry in arb_json(), email in "[a-z]{1,6}@x") {
            let mut top = serde_json::Map::new();
            top.insert("other".into(), extra.clone());
            let mut acct = match entry.clone() { Value::Object(m) => m, _ => serde_json::Map::new() };
            acct.insert("email".into(), Value::from(email));
            top.insert("anthropic".into(), Value::Array(vec![Value::Object(acct), entry]));
            let pool = Pool::from_value(Value::Object(top)).unwrap();
            let once = pool.to_value();
            let twice = Pool::from_value(once.clone()).unwrap().to_value();
            proptest::prop_assert_eq!(&once, &twice);
            proptest::prop_assert_eq!(&once["other"], &extra);
        }
    }

    #[test]
    fn iso_round_trip() {
        let ms = 1_711_234_567_123;
        assert_eq!(iso_time(ms), "2024-03-23T22:56:07.123Z");
        assert_eq!(parse_iso_ms(&iso_time(ms)), Some(ms));
    }
}
