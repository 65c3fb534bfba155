//! The pool file's data model: `{ "version"?: 1, "anthropic": Account[], ...anything else }`.
//! Unknown fields at every level are kept verbatim, and an account entry that does not parse is
//! kept as it was (and reported) rather than dropped: nothing the user wrote is ever lost.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::account::{kind_of, normalize_email, Account, Status};
use crate::error::{Error, Result};
use crate::secret::Secret;

pub const POOL_VERSION: u64 = 1;

/// What a refusal of a pool of a later format says (`FileStore::corrupt` gives it its own advice).
pub const NEWER_FORMAT: &str = "written by a newer opencode-oauth-pool";

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

/// One element of the `anthropic` array: an account, or an entry we could not read, kept as is.
#[derive(Debug, Clone)]
pub enum Entry {
    Valid(Box<Account>),
    Invalid { raw: Value, reason: String },
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // A field of `extra` that the account names too (no read makes one) is written
            // once, `extra`'s value in the named field's place, as a tree of the entry has it.
            Entry::Valid(a) if a.extra.keys().any(|k| Account::NAMED.contains(&k.as_str())) => {
                let mut value = serde_json::to_value(a).map_err(serde::ser::Error::custom)?;
                stated_null(a, &mut value);
                value.serialize(s)
            }
            // An `expires: null` the file said is written as it was (none is otherwise left out).
            Entry::Valid(a) if a.expires.is_none() && !a.unstated.expires && !a.is_api_key() => {
                let mut value = serde_json::to_value(a).map_err(serde::ser::Error::custom)?;
                stated_null(a, &mut value);
                value.serialize(s)
            }
            Entry::Valid(a) => a.serialize(s),
            Entry::Invalid { raw, .. } => raw.serialize(s),
        }
    }
}

/// `a`'s tree with the `expires: null` its file said: a none is not written (aidevops's `check`
/// failed on a `null` one, which every API key this pool added had), but one the file holds stays.
fn stated_null(a: &Account, value: &mut Value) {
    // A key never expires: its `null` (every key the previous release added has one) goes.
    if a.expires.is_none() && !a.unstated.expires && !a.is_api_key() {
        if let Some(map) = value.as_object_mut() {
            map.entry("expires").or_insert(Value::Null);
        }
    }
}

/// A parse error's message without the values it quotes (`invalid type: string "…"`): the value
/// in a mistyped field may be a token (a refresh token pasted under `priority`), and the reason
/// is shown by `list`, `status`, `doctor` and the tool.
fn without_quoted_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    crate::secret::scrub_tokens(&out)
}

impl Entry {
    /// The entry as a tree, moved, not copied: what `serde_json::to_value` makes of it.
    fn into_value(self) -> Value {
        match self {
            Entry::Valid(mut a) => {
                let extra = std::mem::take(&mut a.extra);
                let Ok(Value::Object(mut map)) = serde_json::to_value(&a) else {
                    // An account is always an object; should it not be, it is copied whole.
                    a.extra = extra;
                    return serde_json::to_value(&a).unwrap_or(Value::Null);
                };
                for (k, v) in extra {
                    map.insert(k, v);
                }
                let mut value = Value::Object(map);
                stated_null(&a, &mut value);
                value
            }
            Entry::Invalid { raw, .. } => raw,
        }
    }

    /// The entry's email, also for an unreadable entry that has one.
    pub fn email(&self) -> Option<&str> {
        match self {
            Entry::Valid(a) => Some(&a.email),
            Entry::Invalid { raw, .. } => raw.get("email").and_then(Value::as_str),
        }
    }

    /// The entries of the `anthropic` array. An entry whose email a readable entry before it
    /// already has is kept as it is and reported, never served: everything the pool does for an
    /// account (choose it, refresh it, record its use) names it by email and lands on the first,
    /// so the second was never served, and when the first was disabled, refused or cooling the
    /// second's turn sent the first's credential.
    fn all_from_values(items: Vec<Value>) -> Vec<Entry> {
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        items
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let earlier = raw
                    .get("email")
                    .and_then(Value::as_str)
                    .and_then(|e| seen.get(e));
                if let Some(first) = earlier {
                    let reason = format!(
                        "a second entry for this email (entry #{first} is the account): remove one of them (`remove '#{i}'` removes this one)"
                    );
                    return Entry::Invalid { raw, reason };
                }
                let entry = Entry::from_value(raw);
                if let Entry::Valid(a) = &entry {
                    seen.insert(a.email.clone(), i);
                }
                entry
            })
            .collect()
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
        // A kind the pool does not know (another tool's `google-oauth`) is no login of ours: read
        // as one, its access token went to the API as a bearer and its refresh token to the
        // token endpoint.
        let problem = problem.or_else(|| match raw.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if crate::account::known_kind(t) => None,
            Some(_) => Some(
                "`type` is neither \"oauth\" nor \"api\": an entry of a kind the pool does not know is kept as it is and never sent".to_string(),
            ),
        });
        if let Some(reason) = problem {
            return Entry::Invalid { raw, reason };
        }
        let Value::Object(map) = raw else {
            let reason = format!("entry is {}, not an object", kind_of(&raw));
            return Entry::Invalid { raw, reason };
        };
        // Only the fields `Account` names go through its deserializer: given the whole entry,
        // its catch-all (`extra`, a serde `flatten`) buffered every other field (a month of
        // usage) into serde's own tree and built it again, and the entry was copied first to be
        // kept should it not parse. The rest is moved into `extra` as it is, in its order.
        let named: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| Account::NAMED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let unstated = crate::account::Unstated {
            expires: !named.contains_key("expires"),
            rate_limit_until: !named.contains_key("rateLimitUntil"),
        };
        match serde_json::from_value::<Account>(Value::Object(named)) {
            Ok(mut a) => {
                a.unstated = unstated;
                a.extra = map
                    .into_iter()
                    .filter(|(k, _)| !Account::NAMED.contains(&k.as_str()))
                    .collect();
                a.keep_our_auth_error();
                Entry::Valid(Box::new(a))
            }
            Err(e) => Entry::Invalid {
                raw: Value::Object(map),
                reason: without_quoted_values(&e.to_string()),
            },
        }
    }
}

/// A pool serialized in the file's order (see `Pool::into_value`), borrowing what it writes.
struct FileOrder<'a>(&'a Pool);

impl Serialize for FileOrder<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let pool = self.0;
        // A section named as ours are (no read leaves one in `extra`) takes our key's place in
        // the tree: written as the tree has it.
        if pool.extra.contains_key("anthropic") || pool.extra.contains_key("version") {
            return pool.to_value().serialize(s);
        }
        let mut map = s.serialize_map(None)?;
        if let Some(v) = pool.version_written() {
            map.serialize_entry("version", v)?;
        }
        let mut entries = Some(&pool.anthropic);
        for (i, (k, v)) in pool.extra.iter().enumerate() {
            if i == pool.anthropic_at {
                if let Some(entries) = entries.take() {
                    map.serialize_entry("anthropic", entries)?;
                }
            }
            map.serialize_entry(k, v)?;
        }
        if let Some(entries) = entries {
            map.serialize_entry("anthropic", entries)?;
        }
        map.end()
    }
}

/// The JSON text of a file a person may have saved on Windows: a UTF-8 byte order mark (Notepad,
/// PowerShell 5's `Set-Content -Encoding UTF8`) is passed over, as RFC 8259 lets a reader do; it
/// made the pool "not valid: expected value at line 1 column 1". UTF-16 (PowerShell 5's `>` and
/// `Out-File`) is refused, saying so: it cannot be read as the UTF-8 that JSON files are.
pub fn json_text(bytes: &[u8]) -> Result<&[u8], String> {
    const UTF16: &str =
        "it is UTF-16 text (as Windows PowerShell's `>` and Out-File write), not UTF-8: save it as UTF-8";
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => Ok(rest),
        [0xFF, 0xFE, ..] | [0xFE, 0xFF, ..] => Err(UTF16.into()),
        // No mark, but the first character's other byte is zero: `{` as UTF-16.
        [0, c, ..] | [c, 0, ..] if *c != 0 => Err(UTF16.into()),
        _ => Ok(bytes),
    }
}

/// JavaScript writes a string cut inside a character pair (`"quota 😀".slice(0, 7)`, a message
/// shortened by another tool sharing the file) as a lone surrogate escape, `"\ud83d"`, which
/// `JSON.parse` and Python read and serde_json refuses: one such field anywhere made the whole
/// pool unreadable. `text` with each lone `\uD800`-`\uDFFF` escape in a string read as `\ufffd`,
/// as a UTF-8 encoder (Node's `Buffer`, `TextEncoder`) writes one; `None` when there is none.
/// The replacement has the same length, so positions in a later parse error stay the file's.
fn lone_surrogates_replaced(text: &[u8]) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let surrogate_at = |i: usize| -> Option<u16> {
        if text.get(i..i + 2)? != b"\\u" {
            return None;
        }
        let hex = std::str::from_utf8(text.get(i + 2..i + 6)?).ok()?;
        u16::from_str_radix(hex, 16)
            .ok()
            .filter(|u| (0xD800..=0xDFFF).contains(u))
    };
    let mut out: Option<zeroize::Zeroizing<Vec<u8>>> = None;
    let (mut i, mut copied, mut in_string) = (0, 0, false);
    while let Some(&b) = text.get(i) {
        match b {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match surrogate_at(i) {
                Some(0xD800..=0xDBFF)
                    if surrogate_at(i + 6).is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) =>
                {
                    i += 12
                }
                Some(_) => {
                    let buf = out.get_or_insert_with(|| {
                        zeroize::Zeroizing::new(Vec::with_capacity(text.len()))
                    });
                    buf.extend_from_slice(text.get(copied..i).unwrap_or_default());
                    buf.extend_from_slice(b"\\ufffd");
                    i += 6;
                    copied = i;
                }
                None => i += 2,
            },
            _ => i += 1,
        }
    }
    let mut buf = out?;
    buf.extend_from_slice(text.get(copied..).unwrap_or_default());
    Some(buf)
}

/// A JSON value as JavaScript's `JSON.parse` reads it where serde_json would refuse it: past a
/// UTF-8 byte order mark, with a lone surrogate escape read as U+FFFD (`lone_surrogates_replaced`)
/// and a number too large for a double read as the largest one (`1e400`: `JSON.parse` gives
/// `Infinity`). For a token endpoint's answer, whose refresh token is spent once it is sent: an
/// answer a JavaScript client reads was refused whole, and the rotated token in it lost with
/// the login. `None` when it is not JSON even so.
pub fn value_read_leniently(bytes: &[u8]) -> Option<Value> {
    let text = json_text(bytes).ok()?;
    let replaced = lone_surrogates_replaced(text);
    let text: &[u8] = replaced.as_ref().map_or(text, |v| v.as_slice());
    match serde_json::from_slice(text) {
        Ok(v) => Some(v),
        Err(e) if e.is_syntax() || e.is_data() => {
            serde_json::from_slice(&numbers_in_range(text)).ok()
        }
        Err(_) => None,
    }
}

/// `text` with each number outside a string that a double cannot hold written as the largest
/// one of its sign.
fn numbers_in_range(text: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut out = zeroize::Zeroizing::new(Vec::with_capacity(text.len()));
    let (mut i, mut in_string) = (0, false);
    while let Some(&b) = text.get(i) {
        if in_string {
            out.push(b);
            match b {
                b'\\' => {
                    if let Some(&next) = text.get(i + 1) {
                        out.push(next);
                    }
                    i += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let end = text
                .get(i..)
                .unwrap_or_default()
                .iter()
                .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .map_or(text.len(), |n| i + n);
            let number = text.get(i..end).unwrap_or_default();
            match std::str::from_utf8(number)
                .ok()
                .and_then(|n| n.parse::<f64>().ok())
            {
                Some(f) if f.is_infinite() => out.extend_from_slice(if f < 0.0 {
                    b"-1.7976931348623157e308"
                } else {
                    b"1.7976931348623157e308"
                }),
                _ => out.extend_from_slice(number),
            }
            i = end;
        } else {
            in_string = b == b'"';
            out.push(b);
            i += 1;
        }
    }
    out
}

/// What `savePool` knows of the copy it is given when `loadPool` gave it: when it was read
/// (epoch ms) and its accounts as read. Both `None`: a pool built by hand, which replaces what
/// is there.
#[derive(Debug, Clone, Default)]
pub struct ReadCopy {
    pub at: Option<i64>,
    pub held: Option<Pool>,
    /// The copy's accounts whose refresh token this machine's journal records as spent, its
    /// successor saved (`Store::spent_tokens`): whatever the expiries say, the stored tokens
    /// are the live ones. Each with the name it was spent under (the copy may have renamed it).
    pub spent: Vec<(String, String)>,
}

impl ReadCopy {
    /// Into `copy`, before it replaces `stored`: the accounts added since it was read
    /// (`Pool::keep_added_since`), what other writers changed since in what the copy holds as
    /// read (`Pool::keep_credentials_changed_since`, `Pool::keep_fields_changed_since`), and out
    /// of it the accounts removed since (`Pool::drop_removed_since`).
    pub fn reconcile(&self, copy: &mut Pool, stored: &Pool) {
        if let Some(held) = &self.held {
            for email in copy.keep_not_read(stored, held) {
                tracing::info!(account = %email, "kept an account added since the copy was read");
            }
        } else if let Some(at) = self.at {
            for email in copy.keep_added_since(stored, at) {
                tracing::info!(account = %email, "kept an account added since the copy was read");
            }
        }
        if let Some(held) = &self.held {
            for email in copy.keep_credentials_changed_since(stored, held) {
                tracing::info!(account = %email, "kept the stored credentials: changed since the copy was read");
            }
            for email in copy.keep_fields_changed_since(stored, held) {
                tracing::info!(account = %email, "kept the stored settings and state the copy held as read: changed since");
            }
            for section in copy.keep_sections_changed_since(stored, held) {
                tracing::info!(%section, "kept another writer's section as stored: changed since the copy was read");
            }
            for email in copy.drop_removed_since(stored, held) {
                tracing::info!(account = %email, "left out an account removed since the copy was read");
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Pool {
    pub version: Option<Value>,
    pub anthropic: Vec<Entry>,
    pub extra: Map<String, Value>,
    /// How many of `extra`'s keys come before `anthropic` in the file.
    pub anthropic_at: usize,
    /// Handed to a change in place of a pool file that is not there (never written to one): a
    /// change that misses an account cannot tell a removal from a file deleted for a moment (a
    /// sync tool, `git checkout`, an editor replacing it), and must not drop new tokens for it.
    pub file_missing: bool,
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
        // Where the other writers' sections stand around ours: a file that begins with
        // `openai` (aidevops writes the providers in the order they were first logged in) is
        // written back so, not with `anthropic` moved to the top.
        let anthropic_at = map
            .keys()
            .filter(|k| *k != "version")
            .position(|k| k == "anthropic")
            .unwrap_or(0);
        let anthropic = match map.shift_remove("anthropic") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => Entry::all_from_values(items),
            Some(other) => {
                return Err(format!(
                    "\"anthropic\" is {}, not an array",
                    kind_of(&other)
                ))
            }
        };
        let version = map.shift_remove("version");
        // A later format is refused, never read and written back as this one: the versions of
        // the package run side by side for days (an OpenCode session keeps the copy it started
        // with), and this build would drop or undo what it cannot know the newer one means.
        // A number written as a string ("2", by a hand or a shell helper) says the same.
        if let Some(n) = version
            .as_ref()
            .and_then(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse::<f64>().ok()))
            })
            .filter(|n| *n > POOL_VERSION as f64)
        {
            return Err(format!(
                "it is pool format {n}, {NEWER_FORMAT} than this one (which reads format {POOL_VERSION})"
            ));
        }
        Ok(Pool {
            version,
            anthropic,
            extra: map,
            anthropic_at,
            file_missing: false,
        })
    }

    pub fn parse(bytes: &[u8]) -> Result<Pool, String> {
        // A parse into a tree keeps the last of two equal keys and drops the other silently:
        // "anthropic" twice, or "refresh" twice in an account, would lose what the first held
        // at the next write. Such a file is refused (and kept) like any other corrupt one.
        let text = json_text(bytes)?;
        match lone_surrogates_replaced(text) {
            Some(mended) => Pool::from_value(crate::unique_keys::parse(&mended)?),
            None => Pool::from_value(crate::unique_keys::parse(text)?),
        }
    }

    /// Whether the file read is shaped as a pool file, not some other JSON object a path was
    /// pointed at (`package.json`, an OpenCode config): beside `anthropic` and `version`, every
    /// section is another provider's array (aidevops's logins), empty, or `_`-prefixed, as
    /// aidevops's own helper keeps the file.
    pub fn is_shaped_as_pool_file(&self) -> bool {
        self.extra
            .iter()
            .all(|(key, value)| value.is_array() || value.is_null() || key.starts_with('_'))
    }

    /// The version written back: `version: 1` says nothing (it is the only version) and
    /// aidevops's shell helper wipes a pool whose top level has a key that is not an array
    /// (`version`, ours) or `_`-prefixed: only another version is written back.
    fn version_written(&self) -> Option<&Value> {
        self.version
            .as_ref()
            .filter(|v| v.as_u64() != Some(POOL_VERSION))
    }

    /// The pool as the file's tree, a copy (`loadPool`, the fleet store's rows).
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }

    /// The pool as the file's tree, moved into it: the top level's keys in the order they are
    /// written (`version`, then the other sections with `anthropic` where it stood).
    pub fn into_value(self) -> Value {
        let mut map = Map::new();
        if let Some(v) = self.version_written() {
            map.insert("version".into(), v.clone());
        }
        let entries = self.anthropic.into_iter().map(Entry::into_value).collect();
        let mut entries = Some(Value::Array(entries));
        for (i, (k, v)) in self.extra.into_iter().enumerate() {
            if i == self.anthropic_at {
                if let Some(entries) = entries.take() {
                    map.insert("anthropic".into(), entries);
                }
            }
            map.insert(k, v);
        }
        if let Some(entries) = entries {
            map.insert("anthropic".into(), entries);
        }
        Value::Object(map)
    }

    /// The pool as `loadPool` hands it over: `into_value`'s tree, each account without the
    /// fields it was read without (`Unstated`) while they are still none. The file's own
    /// accounts always get them, as every account the pool writes has them.
    pub fn into_loaded_value(self) -> Value {
        let unstated: Vec<_> = self
            .anthropic
            .iter()
            .map(|e| match e {
                Entry::Valid(a) => Some(a.unstated),
                Entry::Invalid { .. } => None,
            })
            .collect();
        let mut value = self.into_value();
        let entries = value
            .get_mut("anthropic")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten();
        for (entry, unstated) in entries.zip(unstated) {
            let (Some(u), Some(entry)) = (unstated, entry.as_object_mut()) else {
                continue;
            };
            for (absent, key) in [
                (u.expires, "expires"),
                (u.rate_limit_until, "rateLimitUntil"),
            ] {
                if absent && entry.get(key) == Some(&Value::Null) {
                    entry.shift_remove(key);
                }
            }
        }
        value
    }

    /// The file's bytes: `into_value`'s tree pretty-printed, with a final newline, written
    /// straight from the pool. Made as that tree first, a bookkeeping write of a pool of 300
    /// accounts with a month of usage (14 MB) copied every entry and section into it, twice
    /// (the bytes before the change and after), 90 of the 146 ms the bytes took.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&FileOrder(self)).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The pool a read of `to_bytes()` gives, made from this one without writing and parsing
    /// it (the generation a write left, which the engine keeps): the same tree, each entry read
    /// again from it as a read does (`from_value`). Only a float may read back differently in
    /// its last digit (serde_json's parse of one is not exact); no check the pool makes looks
    /// that closely.
    pub fn into_read(self) -> Result<Pool, String> {
        Pool::from_value(self.into_value())
    }

    /// What a caller's copy held as read (`savePool`'s `held`), its numbers read as the copy's
    /// are (`from_caller`): compared with the copy, a whole number that crossed as a float
    /// differed from itself, and every section looked changed by the copy.
    pub fn from_held(value: Value) -> Option<Pool> {
        Pool::from_value(integral(value)).ok()
    }

    /// Strict validation for pools handed to us by a caller (`savePool`): unlike a file on disk,
    /// a bad entry here is the caller's bug and is refused rather than kept.
    pub fn from_caller(value: Value) -> Result<Pool> {
        Pool::from_caller_read(value, None)
    }

    /// `from_caller`, where an unreadable entry exactly as `read` (the pool `loadPool` gave, which
    /// lists such entries as they are) holds it is kept verbatim: `savePool(await loadPool())`
    /// of a file holding one was refused, and a script that loads, edits and saves was stuck.
    pub fn from_caller_read(value: Value, read: Option<&Pool>) -> Result<Pool> {
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
        let as_read = |raw: &Value| {
            read.is_some_and(|r| {
                r.anthropic
                    .iter()
                    .any(|e| matches!(e, Entry::Invalid { raw: was, .. } if was == raw))
            })
        };
        for (i, e) in pool.anthropic.iter().enumerate() {
            if let Entry::Invalid { reason, raw } = e {
                if as_read(raw) {
                    continue;
                }
                return Err(Error::PoolInvalid(format!("anthropic[{i}]: {reason}")));
            }
        }
        Ok(pool)
    }

    /// What a copy read earlier missed, kept from `stored` (the pool as it is now), for every
    /// account in both:
    /// - a later generation of tokens (they differ and the stored ones expire later: a refresh
    ///   happened since the copy was read). Writing back the spent refresh token would get the
    ///   account's whole token family revoked at the next refresh, logging the user out.
    /// - a refusal of the credential the copy still holds (`auth-error` with its
    ///   `authErrorToken`): written back as usable, the refused login would be tried again.
    ///
    /// Returns the accounts whose tokens were kept.
    /// `spent`: accounts whose refresh token the copy holds was spent, its successor saved (the
    /// refresh journal), each with the name it was spent under: their stored tokens are the
    /// later generation whatever the expiries say (a refresh while the clock ran fast, or a
    /// shorter lifetime, gave the live tokens the earlier expiry, and the spent token was
    /// written back). An account the copy renamed is found under the name its token was spent
    /// under, when the copy has no account of that name: found by its new name alone, a plain
    /// copy (`JSON.parse` of the file) renamed while a refresh ran wrote the spent token back.
    pub fn keep_newer_state(&mut self, stored: &Pool, spent: &[(String, String)]) -> Vec<String> {
        let names: std::collections::HashSet<String> = self
            .accounts()
            .map(|a| crate::account::normalize_email(&a.email))
            .collect();
        let mut kept = Vec::new();
        for a in self.accounts_mut() {
            let spent_under = spent
                .iter()
                .find(|(copy, _)| copy == &a.email)
                .map(|(_, under)| under);
            // Asked first: the copy may have given this login the name of another it took out
            // (stored still under that name), whose tokens are not this login's.
            let renamed = spent_under.and_then(|under| {
                let s = stored.find(under)?;
                let other = crate::account::normalize_email(&s.email)
                    != crate::account::normalize_email(&a.email);
                (other && !names.contains(&crate::account::normalize_email(&s.email))).then_some(s)
            });
            let Some(s) = renamed.or_else(|| stored.find(&a.email)) else {
                continue;
            };
            // A copy saying no expiry against a stored one that says it: the stored tokens came
            // from the token endpoint since (an entry written without one is older than any
            // refresh), and the copy's, written over them, were a spent token (`store copy` of a
            // host's file onto a fleet store another host refreshed).
            let newer = matches!((s.expires, a.expires), (Some(s), Some(a)) if s > a)
                || matches!((s.expires, a.expires), (Some(_), None))
                || spent_under.is_some();
            let differs = s.refresh.is_some() && a.refresh.is_some() && s.refresh != a.refresh;
            if newer && differs {
                a.access = s.access.clone();
                a.refresh = s.refresh.clone();
                a.expires = s.expires;
                kept.push(a.email.clone());
            }
            let refused = s.extra.get("authErrorToken");
            let same_credential = refused
                .and_then(Value::as_str)
                .is_some_and(|refused| a.credential_tag().as_deref() == Some(refused));
            if s.status_enum() == Some(Status::AuthError)
                && same_credential
                && !a.extra.contains_key("authErrorToken")
            {
                a.status = s.status.clone();
                for field in ["authErrorToken", "lastError"] {
                    if let Some(v) = s.extra.get(field) {
                        a.extra.insert(field.into(), v.clone());
                    }
                }
            }
        }
        kept
    }

    /// The accounts of `stored` (the pool as it is now) added after `since` (epoch ms: when the
    /// copy being saved was read; one added in that same millisecond is in the copy) that the copy does not hold, added to it: a login another
    /// process added meanwhile. The copy cannot have meant to remove an account it never saw,
    /// and replacing the pool with it lost that login. An `added` later than a minute from now
    /// (a clock set wrong, a hand edit) is no sign of that, and such an account stays removable.
    /// Returns their names.
    pub fn keep_added_since(&mut self, stored: &Pool, since: i64) -> Vec<String> {
        let until = crate::account::now_ms().saturating_add(60_000);
        self.keep_stored(stored, |s| {
            s.added
                .as_deref()
                .and_then(crate::account::parse_iso_ms)
                .is_some_and(|at| at > since && at <= until)
        })
    }

    /// The accounts of `stored` (the pool as it is now) that neither the copy nor what it read
    /// (`held`) holds, added to it: added by another process after the copy was read. Told by
    /// what was read, not by `added`: a login stamps `added` before it waits for the pool's lock,
    /// so one whose write landed after a read begun later looked older than the read, and the
    /// save dropped it (its one-time code already spent).
    pub fn keep_not_read(&mut self, stored: &Pool, held: &Pool) -> Vec<String> {
        self.keep_stored(stored, |s| held.find(&s.email).is_none())
    }

    /// The accounts of `stored` this copy lacks that `keep` picks, added to it; their names.
    fn keep_stored(&mut self, stored: &Pool, keep: impl Fn(&Account) -> bool) -> Vec<String> {
        let added: Vec<Account> = stored
            .accounts()
            .filter(|s| self.find(&s.email).is_none() && keep(s))
            .cloned()
            .collect();
        let names = added.iter().map(|a| a.email.clone()).collect();
        self.anthropic
            .extend(added.into_iter().map(|a| Entry::Valid(Box::new(a))));
        names
    }

    /// For each account of the copy whose tokens (or key) are still as it read them (`held`),
    /// those `stored` holds now when they differ: another process changed them since (a refresh,
    /// a login again, a new key), and the copy's are older. `keep_newer_state` tells that by the
    /// expiry alone, which an entry may not state (an older writer's, one written by hand): the
    /// spent refresh token was written back and the login lost, and a key replaced meanwhile
    /// came back. Credentials the copy changed itself are its own and stay, and so do tokens
    /// the stored ones are said to expire before. Returns the names.
    ///
    /// An account the copy renamed is found by the tokens it was read with, under the name it
    /// had: matched by name alone, it was neither stored nor read, and a refresh made meanwhile
    /// under the old name was lost with the spent token written under the new one.
    pub fn keep_credentials_changed_since(&mut self, stored: &Pool, held: &Pool) -> Vec<String> {
        let copy = self.clone();
        let mut kept = Vec::new();
        for a in self.accounts_mut() {
            let pair = match (stored.find(&a.email), held.find(&a.email)) {
                (Some(s), Some(h)) => Some((s, h)),
                (None, None) => held
                    .accounts()
                    .find(|h| {
                        !h.is_api_key()
                            && h.refresh.is_some()
                            && h.refresh == a.refresh
                            && copy.find(&h.email).is_none()
                    })
                    .and_then(|h| Some((stored.find(&h.email)?, h))),
                _ => None,
            };
            let Some((s, h)) = pair else {
                continue;
            };
            let mut changed = false;
            let tokens_as_read = a.refresh == h.refresh && a.access == h.access;
            // Stored tokens that end sooner are an older file put back (a sync tool, an
            // editor's undo), not a refresh: the copy's stay.
            let older = matches!((s.expires, a.expires), (Some(s), Some(a)) if s < a);
            if tokens_as_read
                && !older
                && s.refresh.is_some()
                && (s.refresh != a.refresh || s.access != a.access)
            {
                a.refresh = s.refresh.clone();
                a.access = s.access.clone();
                a.expires = s.expires;
                changed = true;
            }
            if a.key == h.key && s.key.is_some() && s.key != a.key {
                a.key = s.key.clone();
                changed = true;
            }
            if changed {
                kept.push(a.email.clone());
            }
        }
        kept
    }

    /// The pool's other sections (another writer's: the aidevops plugin keeps `openai` and its
    /// `_pending_*` markers beside `anthropic`) as `keep_fields_changed_since` treats an
    /// account's fields: one the copy holds as read takes what is stored now (changed, added or
    /// removed since), one the copy changed keeps the copy's. Replaced by the copy's stale value,
    /// the plugin's refreshed OpenAI login went back to its spent token. Returns their names.
    pub fn keep_sections_changed_since(&mut self, stored: &Pool, held: &Pool) -> Vec<String> {
        let names: Vec<String> = held
            .extra
            .keys()
            .chain(stored.extra.keys())
            .cloned()
            .collect();
        let mut kept = Vec::new();
        for name in names {
            let (read, now) = (held.extra.get(&name), stored.extra.get(&name));
            if self.extra.get(&name) != read || now == read || kept.contains(&name) {
                continue;
            }
            match now {
                Some(v) => self.extra.insert(name.clone(), v.clone()),
                None => self.extra.shift_remove(&name),
            };
            kept.push(name);
        }
        kept
    }

    /// The copy's accounts, each field the copy holds as it was read (`held`) that another
    /// writer changed since in `stored` taken from `stored`: a script's `loadPool`, one edit,
    /// `savePool` wrote back every other field as it read them, undoing a cooldown another
    /// process recorded meanwhile (its next request went straight back into the limit), a
    /// `disable`, a priority, the last use and the usage other processes wrote. A field both
    /// changed keeps the copy's: it is the change the save was made for. Credentials are
    /// `keep_credentials_changed_since`'s and the name is the account's; an account the copy
    /// holds that was not read or is not stored is left alone. Returns the names changed.
    pub fn keep_fields_changed_since(&mut self, stored: &Pool, held: &Pool) -> Vec<String> {
        fn take<T: PartialEq + Clone>(mine: &mut T, read: &T, now: &T) -> bool {
            let theirs = *mine == *read && *now != *read;
            if theirs {
                *mine = now.clone();
            }
            theirs
        }
        let mut kept = Vec::new();
        for a in self.accounts_mut() {
            let (Some(s), Some(h)) = (stored.find(&a.email), held.find(&a.email)) else {
                continue;
            };
            let mut changed = take(&mut a.kind, &h.kind, &s.kind);
            changed |= take(&mut a.added, &h.added, &s.added);
            changed |= take(&mut a.last_used, &h.last_used, &s.last_used);
            changed |= take(&mut a.status, &h.status, &s.status);
            changed |= take(
                &mut a.rate_limit_until,
                &h.rate_limit_until,
                &s.rate_limit_until,
            );
            changed |= take(&mut a.priority, &h.priority, &s.priority);
            changed |= take(&mut a.enabled, &h.enabled, &s.enabled);
            let names: Vec<String> = h.extra.keys().chain(s.extra.keys()).cloned().collect();
            for name in names {
                let (read, now) = (h.extra.get(&name), s.extra.get(&name));
                if a.extra.get(&name) != read || now == read {
                    continue;
                }
                match now {
                    Some(v) => a.extra.insert(name, v.clone()),
                    None => a.extra.shift_remove(&name),
                };
                changed = true;
            }
            if changed {
                kept.push(a.email.clone());
            }
        }
        kept
    }

    /// The accounts of the copy that it held when it was read (`held`: its accounts as read),
    /// that `stored` (the pool as it is now) holds no more, and whose credentials the copy still
    /// holds as read, taken out of the copy: another process removed them since, and saving the
    /// copy brought a removed account back. One whose refresh token, access token or key the
    /// copy changed holds a credential the file never had (the script refreshed it, a new key)
    /// and stays: dropping it would lose that credential. An entry of that name still stored,
    /// even one made unreadable since, is no removal. Returns the names taken out.
    pub fn drop_removed_since(&mut self, stored: &Pool, held: &Pool) -> Vec<String> {
        let mut dropped = Vec::new();
        self.anthropic.retain(|e| {
            let Entry::Valid(a) = e else {
                return true;
            };
            let as_read = held
                .find(&a.email)
                .is_some_and(|h| h.refresh == a.refresh && h.access == a.access && h.key == a.key);
            let name = normalize_email(&a.email);
            let removed = as_read
                && !stored
                    .anthropic
                    .iter()
                    .any(|s| s.email().map(normalize_email).as_deref() == Some(name.as_str()));
            if removed {
                dropped.push(a.email.clone());
            }
            !removed
        });
        dropped
    }

    /// Moves every time of day the pool keeps by `delta` ms (`Account::shift_times`, and the
    /// last failover's time); unreadable entries and other sections are left as they are.
    pub fn shift_times(&mut self, delta: i64) {
        if delta == 0 {
            return;
        }
        for a in self.accounts_mut() {
            a.shift_times(delta);
        }
        let at = match self.extra.get_mut(crate::manage::META_KEY) {
            Some(Value::Array(items)) => items.iter_mut().find(|v| v.is_object()),
            other => other,
        }
        .and_then(|m| m.get_mut("lastFailover"))
        .and_then(|f| f.get_mut("at"));
        if let Some(at) = at {
            if let Some(ms) = at.as_i64().filter(|ms| *ms >= 1_000_000_000_000) {
                *at = Value::from(ms.saturating_add(delta));
            }
        }
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.anthropic.iter().filter_map(|e| match e {
            Entry::Valid(a) => Some(a.as_ref()),
            Entry::Invalid { .. } => None,
        })
    }

    /// The accounts with their place in the file's list (from 0): the `#N` by which the CLI
    /// and the tools name an entry, unreadable entries counted.
    pub fn accounts_placed(&self) -> impl Iterator<Item = (usize, &Account)> {
        self.anthropic
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Valid(a) => Some((i, a.as_ref())),
                Entry::Invalid { .. } => None,
            })
    }

    /// Removes a top-level section of the file, `anthropic` staying where it stood among the
    /// others (a section before it gone, it was written one place late).
    pub fn remove_section(&mut self, key: &str) -> Option<Value> {
        let at = self.extra.keys().position(|k| k == key)?;
        let value = self.extra.shift_remove(key)?;
        if at < self.anthropic_at {
            self.anthropic_at -= 1;
        }
        Some(value)
    }

    pub fn accounts_mut(&mut self) -> impl Iterator<Item = &mut Account> {
        self.anthropic.iter_mut().filter_map(|e| match e {
            Entry::Valid(a) => Some(a.as_mut()),
            Entry::Invalid { .. } => None,
        })
    }

    /// Whether an entry kept unread (`invalid`) may be the login of `email` holding one of
    /// `tokens`: one named so, or whose `refresh` is one of them. Such a login is not gone: a hand
    /// edit that broke a field leaves it in the file, to be mended.
    pub fn unreadable_may_be(&self, email: &str, tokens: &[&Secret]) -> bool {
        let name = normalize_email(email);
        self.anthropic.iter().any(|e| match e {
            Entry::Invalid { raw, .. } => {
                e.email().is_some_and(|n| normalize_email(n) == name)
                    || raw
                        .get("refresh")
                        .and_then(Value::as_str)
                        .is_some_and(|r| tokens.iter().any(|t| t.expose() == r))
            }
            Entry::Valid(_) => false,
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
    /// exactly that email (readable or not), else every entry with that email up to blanks
    /// around it when they are all spelled alike, else the one entry equal up to case, else
    /// `#N`, the N-th entry (how unreadable entries without an email are named).
    pub fn resolve(&self, target: &str) -> Result<Vec<usize>> {
        let spelled = |matches: &dyn Fn(&str) -> bool| -> Vec<usize> {
            self.anthropic
                .iter()
                .enumerate()
                .filter(|(_, e)| e.email().is_some_and(matches))
                .map(|(i, _)| i)
                .collect()
        };
        // Emails that differ in the blanks around them are different accounts (README): a
        // hand-written ` a@x.com ` beside `a@x.com` was removed with it, its login lost.
        let mut exact = spelled(&|email| email == target);
        let target = target.trim();
        if exact.is_empty() {
            exact = spelled(&|email| email.trim() == target);
            let first = exact.first().and_then(|i| self.anthropic[*i].email());
            if exact.iter().any(|i| self.anthropic[*i].email() != first) {
                let places: Vec<String> = exact
                    .iter()
                    .map(|i| format!("#{i} {:?}", self.anthropic[*i].email().unwrap_or_default()))
                    .collect();
                return Err(Error::InvalidArgument(format!(
                    "{target:?} matches {} accounts that differ only in the blanks around them ({}): give the email exactly as written, or its place",
                    exact.len(),
                    places.join(", ")
                )));
            }
        }
        // An exact email first: an account named `#0` (a label, or what a server called it) is
        // that account, never whatever entry happens to be first.
        let place = target
            .strip_prefix('#')
            .and_then(|n| n.parse::<usize>().ok());
        if !exact.is_empty() {
            // `list` names an unreadable entry by its place: a command given it must not act
            // on another account that happens to be named so.
            if let Some(n) = place.filter(|n| *n < self.anthropic.len() && !exact.contains(n)) {
                return Err(Error::InvalidArgument(format!(
                    "{target} is both the name of the entry at #{} and the place of another entry (#{n}): change that name in the pool file first",
                    exact[0]
                )));
            }
            return Ok(exact);
        }
        if let Some(n) = place {
            return if n < self.anthropic.len() {
                Ok(vec![n])
            } else {
                Err(self.not_found(target))
            };
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
            0 => Err(self.not_found(target)),
            1 => Ok(loose),
            _ => Err(Error::InvalidArgument(format!(
                "{target:?} matches {} accounts that differ only in case or Unicode form ({}): give the exact email",
                loose.len(),
                loose
                    .iter()
                    .filter_map(|i| self.anthropic[*i].email())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Every key and token the pool holds, each member's.
    pub fn secrets(&self) -> Vec<&crate::secret::Secret> {
        self.accounts()
            .flat_map(|a| [a.key.as_ref(), a.access.as_ref(), a.refresh.as_ref()])
            .flatten()
            .collect()
    }

    /// `text` (a message that names accounts) without any key or token of the pool's, or a
    /// piece of one: a name holding one (a hand edit, a label given before names were checked,
    /// a key of no known shape) was quoted with it whole in the pool's own errors.
    pub fn without_its_secrets(&self, text: &str) -> String {
        crate::secret::scrub_pieces(text, &self.secrets())
    }

    /// The names of entries holding a piece of the pool's keys or tokens (`secret::hide_names`).
    pub fn names_holding_secrets(&self) -> Vec<String> {
        crate::secret::holding_pieces(
            self.anthropic.iter().filter_map(Entry::email),
            &self.secrets(),
        )
    }

    /// `ACCOUNT_NOT_FOUND` for what a person typed, which may be one of the pool's keys or a
    /// piece of it (given where a name goes, without its prefix or in another case).
    pub fn not_found(&self, target: &str) -> Error {
        Error::AccountNotFound(self.without_its_secrets(target))
    }

    /// Groups of account emails that differ only in case: reported by `status` and `doctor`.
    pub fn case_clashes(&self) -> Vec<Vec<String>> {
        // By a map of the lower-cased emails: a file of many thousand entries (written by some
        // other tool) took minutes with a search of the groups for each entry.
        let mut groups: Vec<Vec<String>> = Vec::new();
        let mut by_key: std::collections::HashMap<String, usize> = Default::default();
        for email in self.anthropic.iter().filter_map(Entry::email) {
            match by_key.entry(normalize_email(email)) {
                std::collections::hash_map::Entry::Occupied(slot) => {
                    let members = &mut groups[*slot.get()];
                    if !members.iter().any(|m| m == email) {
                        members.push(email.to_string())
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(groups.len());
                    groups.push(vec![email.to_string()]);
                }
            }
        }
        groups.into_iter().filter(|m| m.len() > 1).collect()
    }

    /// Adds an account, or, when one with the same email exists, replaces its credentials and
    /// clears its error state while keeping everything else the user set (priority, extras).
    /// Returns true when a new account was added.
    pub fn upsert(&mut self, incoming: Account) -> bool {
        if let Some(existing) = self.find_mut(&incoming.email) {
            existing.kind = incoming.kind;
            // A credential of the other kind stays in the entry: a login over an API-key
            // account keeps the key (and a key added over a login, the tokens), never lost.
            if incoming.refresh.is_some() || incoming.access.is_some() {
                existing.refresh = incoming.refresh;
                existing.access = incoming.access;
                existing.expires = incoming.expires;
                // The token endpoint's wait was about the replaced refresh token.
                existing.extra.shift_remove("refreshBackoffUntil");
            }
            if incoming.key.is_some() {
                existing.key = incoming.key;
            }
            existing.clear_cooldown();
            existing.extra.shift_remove("modelCooldowns");
            existing.extra.shift_remove("authErrorToken");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_a_kind_the_pool_does_not_know_is_kept_unread_and_never_served() {
        let raw = json!({"email": "g@x", "type": "google-oauth", "access": "ga", "refresh": "gr", "expires": 1});
        let pool = Pool::from_value(json!({"anthropic": [
            raw.clone(),
            {"email": "k@x", "type": " API ", "key": "the-key-0123"},
            {"email": "o@x", "type": "OAuth", "access": "a", "refresh": "r"},
            {"email": "n@x", "type": null, "access": "a", "refresh": "r"},
        ]}))
        .unwrap();
        assert!(pool.find("g@x").is_none());
        let (at, why) = pool.invalid_entries().next().unwrap();
        assert_eq!(at, 0);
        assert!(why.contains("neither \"oauth\" nor \"api\""), "{why}");
        assert!(pool.find("k@x").unwrap().is_api_key());
        assert!(!pool.find("o@x").unwrap().is_api_key());
        assert!(!pool.find("n@x").unwrap().is_api_key());
        assert_eq!(pool.to_value()["anthropic"][0], raw, "kept as written");
    }
    use serde_json::json;

    #[test]
    fn a_copy_holding_a_token_the_journal_knows_spent_takes_the_stored_ones_whatever_they_expire() {
        const T: i64 = 1_800_000_000_000;
        let pool = |refresh: &str, expires: i64| {
            Pool::from_value(json!({ "anthropic": [
                { "email": "a@x.test", "refresh": refresh, "access": format!("a-{refresh}"), "expires": expires },
            ]}))
            .unwrap()
        };
        // Refreshed while the clock ran fast, then again with it right: the live tokens expire
        // sooner than the spent ones the copy holds.
        let stored = pool("r2", T);
        let mut copy = pool("r1", T + 3 * 3_600_000);
        assert!(copy.clone().keep_newer_state(&stored, &[]).is_empty());
        assert_eq!(
            copy.keep_newer_state(&stored, &[("a@x.test".to_string(), "a@x.test".to_string())]),
            vec!["a@x.test".to_string()]
        );
        let a = copy.find("a@x.test").unwrap();
        assert_eq!(a.refresh.as_ref().unwrap().expose(), "r2");
        assert_eq!(a.expires, Some(T));

        // A plain copy that renamed it: found under the name the journal says its token was
        // spent under, unless the copy has an account of that name (then it is not this one).
        let mut renamed = pool("r1", T + 3 * 3_600_000);
        renamed.find_mut("a@x.test").unwrap().email = "b@x.test".into();
        let spent = [("b@x.test".to_string(), "A@x.test".to_string())];
        assert_eq!(
            renamed.clone().keep_newer_state(&stored, &[]),
            Vec::<String>::new()
        );
        let mut both = renamed.clone();
        both.anthropic.push(stored.anthropic[0].clone());
        assert!(both.keep_newer_state(&stored, &spent).is_empty());
        assert_eq!(
            renamed.keep_newer_state(&stored, &spent),
            vec!["b@x.test".to_string()]
        );
        let b = renamed.find("b@x.test").unwrap();
        assert_eq!(b.refresh.as_ref().unwrap().expose(), "r2");

        // Renamed onto the name of another login the copy took out, still stored under it: the
        // tokens are this login's, found under the name they were spent under, not the other's.
        let mut onto = pool("r1", T + 3 * 3_600_000);
        onto.find_mut("a@x.test").unwrap().email = "other@x.test".into();
        let mut with_other = stored.clone();
        with_other.anthropic.push(
            Pool::from_value(json!({ "anthropic": [
                { "email": "other@x.test", "refresh": "other-r", "access": "other-a", "expires": T + 9 * 3_600_000 },
            ]}))
            .unwrap()
            .anthropic
            .remove(0),
        );
        let spent = [("other@x.test".to_string(), "a@x.test".to_string())];
        assert_eq!(
            onto.keep_newer_state(&with_other, &spent),
            vec!["other@x.test".to_string()]
        );
        let o = onto.find("other@x.test").unwrap();
        assert_eq!(o.refresh.as_ref().unwrap().expose(), "r2");
    }

    #[test]
    fn other_writers_sections_held_as_read_take_what_is_stored() {
        let pool = |v: Value| Pool::from_value(v).unwrap();
        let held =
            pool(json!({"anthropic": [], "openai": [{"refresh": "g1"}], "gone": 1, "mine": 1}));
        let stored =
            pool(json!({"anthropic": [], "openai": [{"refresh": "g2"}], "new": true, "mine": 2}));
        let mut copy = pool(
            json!({"anthropic": [], "openai": [{"refresh": "g1"}], "gone": 1, "mine": 3, "own": 4}),
        );
        let mut kept = copy.keep_sections_changed_since(&stored, &held);
        kept.sort();
        assert_eq!(kept, ["gone", "new", "openai"]);
        assert_eq!(
            copy.extra["openai"],
            json!([{"refresh": "g2"}]),
            "changed since: stored"
        );
        assert!(!copy.extra.contains_key("gone"), "removed since: out");
        assert_eq!(copy.extra["new"], json!(true), "added since: kept");
        assert_eq!(
            copy.extra["mine"],
            json!(3),
            "changed by the copy: the copy's"
        );
        assert_eq!(copy.extra["own"], json!(4), "added by the copy: the copy's");
        // A section the copy took out stays out, whatever became of it since.
        let mut dropped = pool(json!({"anthropic": []}));
        dropped.keep_sections_changed_since(&stored, &held);
        assert!(!dropped.extra.contains_key("openai") && !dropped.extra.contains_key("mine"));
        // Numbers that crossed as floats are the same numbers (`from_held`).
        let floats = Pool::from_held(json!({"anthropic": [], "n": 5.0})).unwrap();
        assert_eq!(floats.extra["n"], json!(5));
    }

    #[test]
    fn a_copy_that_renamed_an_account_takes_the_tokens_refreshed_under_its_old_name() {
        let pool = |email: &str, refresh: &str| {
            Pool::from_value(json!({ "anthropic": [
                { "email": email, "refresh": refresh, "access": format!("a-{refresh}"), "expires": 5 },
                { "email": "other@x.test", "refresh": "ro", "access": "ao", "expires": 5 },
            ]}))
            .unwrap()
        };
        let held = pool("a@x.test", "r1");
        // Refreshed under the old name while the copy renamed it.
        let mut stored = pool("a@x.test", "r2");
        stored.find_mut("a@x.test").unwrap().expires = Some(6);
        let mut copy = pool("b@x.test", "r1");
        assert_eq!(
            copy.keep_credentials_changed_since(&stored, &held),
            ["b@x.test"]
        );
        let b = copy.find("b@x.test").unwrap();
        assert_eq!(b.refresh.as_ref().unwrap().expose(), "r2");
        assert_eq!(b.access.as_ref().unwrap().expose(), "a-r2");
        // A copy that holds both names made a second entry, not a rename: each keeps its own.
        let mut both = pool("b@x.test", "r1");
        let a = Account::new_oauth("a@x.test", "a-r1".into(), "r1".into(), 5, 0);
        both.anthropic.push(Entry::Valid(Box::new(a)));
        both.keep_credentials_changed_since(&stored, &held);
        let b = both.find("b@x.test").unwrap();
        assert_eq!(b.refresh.as_ref().unwrap().expose(), "r1");
    }

    #[test]
    fn a_stale_copy_never_writes_back_spent_tokens() {
        const T: i64 = 1_800_000_000_000;
        let pool = |refresh: &str, expires: i64| {
            Pool::from_value(json!({ "anthropic": [
                { "email": "A@x.test", "refresh": refresh, "access": format!("a-{refresh}"), "expires": expires },
                { "email": "b@x.test", "refresh": "rb", "access": "ab", "expires": T },
            ]}))
            .unwrap()
        };
        let stored = pool("r2", T + 2_000);
        // Read before the refresh, changed, saved after it: the stored generation stays.
        let mut stale = pool("r1", T + 1_000);
        stale.find_mut("b@x.test").unwrap().priority = Some(3);
        assert_eq!(
            stale.keep_newer_state(&stored, &[]),
            vec!["A@x.test".to_string()]
        );
        let a = stale.find("a@x.test").unwrap();
        assert_eq!(a.refresh.as_ref().unwrap().expose(), "r2");
        assert_eq!(a.access.as_ref().unwrap().expose(), "a-r2");
        assert_eq!(a.expires, Some(T + 2_000));
        assert_eq!(stale.find("b@x.test").unwrap().priority, Some(3));
        // A copy that says no expiry (`null`, or none) against the stored one that says it: the
        // stored tokens came from a refresh since (`store copy` of a file onto a fleet store
        // another host refreshed), and the copy's refresh token is spent.
        for entry in [
            json!({ "email": "a@x.test", "refresh": "r1", "access": "a-r1", "expires": null }),
            json!({ "email": "a@x.test", "refresh": "r1", "access": "a-r1" }),
        ] {
            let mut undated = Pool::from_value(json!({ "anthropic": [entry] })).unwrap();
            assert_eq!(
                undated.keep_newer_state(&stored, &[]),
                vec!["a@x.test".to_string()]
            );
            let a = undated.find("a@x.test").unwrap();
            assert_eq!(a.refresh.as_ref().unwrap().expose(), "r2");
        }
        // A refusal the copy missed stays, while the copy holds the refused credential.
        let mut refused = pool("r2", T + 2_000);
        let b = refused.find_mut("b@x.test").unwrap();
        b.status = "auth-error".into();
        let tag = b.credential_tag().unwrap();
        b.extra.insert("authErrorToken".into(), json!(tag));
        let mut stale = pool("r2", T + 2_000);
        stale.keep_newer_state(&refused, &[]);
        assert_eq!(stale.find("b@x.test").unwrap().status, "auth-error");
        let mut relogged = pool("r2", T + 2_000);
        relogged.find_mut("b@x.test").unwrap().refresh = Some("rb-new".into());
        relogged.keep_newer_state(&refused, &[]);
        assert_eq!(
            relogged.find("b@x.test").unwrap().status,
            "idle",
            "a new login is usable"
        );
        // A newer login saved over older stored tokens is the caller's to write.
        let mut fresh = pool("r3", T + 3_000);
        assert!(fresh.keep_newer_state(&stored, &[]).is_empty());
        assert_eq!(
            fresh
                .find("a@x.test")
                .unwrap()
                .refresh
                .as_ref()
                .unwrap()
                .expose(),
            "r3"
        );
    }

    #[test]
    fn a_copy_saved_back_keeps_the_logins_added_since_it_was_read() {
        let now = crate::account::now_ms();
        let at = |ms: i64| crate::account::iso_time(ms);
        let stored = Pool::from_value(json!({ "anthropic": [
            { "email": "old@x.test", "refresh": "r1", "added": at(now - 86_400_000) },
            { "email": "removed@x.test", "refresh": "r2", "added": at(now - 60_000) },
            { "email": "new@x.test", "refresh": "r3", "added": at(now - 1_000) },
            { "email": "future@x.test", "refresh": "r4", "added": at(now + 86_400_000) },
            { "email": "undated@x.test", "refresh": "r5" },
        ]}))
        .unwrap();
        // Read 30 s ago, with old@ and removed@; removed@ taken out on purpose.
        let mut copy = Pool::from_value(json!({ "anthropic": [
            { "email": "old@x.test", "refresh": "r1", "added": at(now - 86_400_000) },
        ]}))
        .unwrap();
        assert_eq!(
            copy.keep_added_since(&stored, now - 30_000),
            vec!["new@x.test".to_string()]
        );
        let names: Vec<_> = copy.accounts().map(|a| a.email.as_str()).collect();
        assert_eq!(names, ["old@x.test", "new@x.test"]);
        let kept = copy.find("new@x.test").and_then(|a| a.refresh.as_ref());
        assert_eq!(kept.map(|r| r.expose()), Some("r3"));
    }

    #[test]
    fn a_copy_saved_back_keeps_a_login_it_never_read_whatever_its_added_time() {
        let now = crate::account::now_ms();
        let at = |ms: i64| crate::account::iso_time(ms);
        // A login stamped before the read began, written after it: not in what was read.
        let stored = Pool::from_value(json!({ "anthropic": [
            { "email": "old@x.test", "refresh": "r1", "added": at(now - 86_400_000) },
            { "email": "late@x.test", "refresh": "r2", "added": at(now - 5_000) },
            { "email": "undated@x.test", "refresh": "r3" },
            { "email": "dropped@x.test", "refresh": "r4", "added": at(now - 1_000) },
        ]}))
        .unwrap();
        let held = Pool::from_value(json!({ "anthropic": [
            { "email": "old@x.test", "refresh": "r1", "added": at(now - 86_400_000) },
            { "email": "dropped@x.test", "refresh": "r4", "added": at(now - 1_000) },
        ]}))
        .unwrap();
        // The copy took dropped@ out on purpose.
        let mut copy = Pool::from_value(json!({ "anthropic": [
            { "email": "old@x.test", "refresh": "r1", "added": at(now - 86_400_000) },
        ]}))
        .unwrap();
        let read = ReadCopy {
            at: Some(now - 1_000),
            held: Some(held),
            spent: Vec::new(),
        };
        read.reconcile(&mut copy, &stored);
        let names: Vec<_> = copy.accounts().map(|a| a.email.as_str()).collect();
        assert_eq!(names, ["old@x.test", "late@x.test", "undated@x.test"]);
    }

    #[test]
    fn a_copy_saved_back_takes_credentials_changed_since_unless_it_changed_them_itself() {
        let held = Pool::from_value(json!({ "anthropic": [
            { "email": "refreshed@x.test", "refresh": "r1", "access": "a1" },
            { "email": "renewed@x.test", "refresh": "r2", "access": "a2" },
            { "email": "keyed@x.test", "type": "api", "key": "k1" },
            { "email": "same@x.test", "refresh": "r3", "access": "a3" },
            { "email": "restored@x.test", "refresh": "r4", "access": "a4", "expires": 20 },
        ]}))
        .unwrap();
        let stored = Pool::from_value(json!({ "anthropic": [
            { "email": "refreshed@x.test", "refresh": "r1-next", "access": "a1-next", "expires": 9 },
            { "email": "renewed@x.test", "refresh": "r2-other", "access": "a2-other" },
            { "email": "keyed@x.test", "type": "api", "key": "k2" },
            { "email": "same@x.test", "refresh": "r3", "access": "a3" },
            { "email": "restored@x.test", "refresh": "r4-before", "access": "a4-before", "expires": 10 },
        ]}))
        .unwrap();
        let mut copy = Pool::from_value(json!({ "anthropic": [
            { "email": "refreshed@x.test", "refresh": "r1", "access": "a1", "priority": 2 },
            { "email": "renewed@x.test", "refresh": "r2-mine", "access": "a2-mine" },
            { "email": "keyed@x.test", "type": "api", "key": "k1" },
            { "email": "same@x.test", "refresh": "r3", "access": "a3" },
            { "email": "restored@x.test", "refresh": "r4", "access": "a4", "expires": 20 },
        ]}))
        .unwrap();
        assert_eq!(
            copy.keep_credentials_changed_since(&stored, &held),
            ["refreshed@x.test", "keyed@x.test"]
        );
        let a = copy.find("refreshed@x.test").unwrap();
        assert_eq!(a.refresh.as_ref().map(|r| r.expose()), Some("r1-next"));
        assert_eq!(a.access.as_ref().map(|r| r.expose()), Some("a1-next"));
        assert_eq!((a.expires, a.priority), (Some(9), Some(2)));
        let mine = copy.find("renewed@x.test").unwrap();
        assert_eq!(mine.refresh.as_ref().map(|r| r.expose()), Some("r2-mine"));
        let keyed = copy.find("keyed@x.test").unwrap();
        assert_eq!(keyed.key.as_ref().map(|k| k.expose()), Some("k2"));
        let restored = copy.find("restored@x.test").unwrap();
        assert_eq!(restored.refresh.as_ref().map(|r| r.expose()), Some("r4"));
    }

    #[test]
    fn a_copy_saved_back_takes_the_fields_others_changed_since_and_keeps_its_own_changes() {
        let held = Pool::from_value(json!({ "anthropic": [
            { "email": "edited@x.test", "refresh": "r1", "priority": 1, "status": "idle",
              "rateLimitUntil": null, "lastUsed": "2026-12-01T00:00:00Z", "usage": { "n": 1 } },
            { "email": "untouched@x.test", "refresh": "r2", "reserve": 0.2 },
            { "email": "both@x.test", "refresh": "r3", "priority": 1 },
        ]}))
        .unwrap();
        let stored = Pool::from_value(json!({ "anthropic": [
            { "email": "edited@x.test", "refresh": "r1", "priority": 1, "status": "rate_limited",
              "rateLimitUntil": 9_000, "cooldownsSetAt": 8_000,
              "lastUsed": "2026-12-02T00:00:00Z", "usage": { "n": 2 } },
            { "email": "untouched@x.test", "refresh": "r2", "enabled": false },
            { "email": "both@x.test", "refresh": "r3", "priority": 5 },
            { "email": "unread@x.test", "refresh": "r4", "priority": 9 },
        ]}))
        .unwrap();
        let mut copy = Pool::from_value(json!({ "anthropic": [
            { "email": "edited@x.test", "refresh": "r1", "priority": 3, "status": "idle",
              "rateLimitUntil": null, "lastUsed": "2026-12-01T00:00:00Z", "usage": { "n": 1 } },
            { "email": "untouched@x.test", "refresh": "r2", "reserve": 0.2 },
            { "email": "both@x.test", "refresh": "r3", "priority": 2 },
            { "email": "unread@x.test", "refresh": "r4", "priority": 1 },
        ]}))
        .unwrap();
        assert_eq!(
            copy.keep_fields_changed_since(&stored, &held),
            ["edited@x.test", "untouched@x.test"]
        );
        let edited = copy.find("edited@x.test").unwrap();
        assert_eq!(edited.priority, Some(3), "the copy's own change stays");
        assert_eq!(edited.status, "rate_limited");
        assert_eq!(edited.rate_limit_until, Some(9_000));
        assert_eq!(edited.last_used.as_deref(), Some("2026-12-02T00:00:00Z"));
        assert_eq!(edited.extra.get("cooldownsSetAt"), Some(&json!(8_000)));
        assert_eq!(edited.extra.get("usage"), Some(&json!({ "n": 2 })));
        let untouched = copy.find("untouched@x.test").unwrap();
        assert_eq!(
            untouched.enabled,
            Some(false),
            "a disable made meanwhile stays"
        );
        assert_eq!(
            untouched.extra.get("reserve"),
            None,
            "a field removed meanwhile stays removed"
        );
        assert_eq!(
            copy.find("both@x.test").unwrap().priority,
            Some(2),
            "both changed it: the copy's"
        );
        assert_eq!(
            copy.find("unread@x.test").unwrap().priority,
            Some(1),
            "not read: the copy's"
        );
    }

    #[test]
    fn a_copy_saved_back_leaves_out_what_was_removed_since_unless_it_holds_new_credentials() {
        let stored = Pool::from_value(json!({ "anthropic": [
            { "email": "stays@x.test", "refresh": "r1" },
            { "email": "spoiled@x.test", "refresh": 7 },
        ]}))
        .unwrap();
        let held = Pool::from_value(json!({ "anthropic": [
            { "email": "stays@x.test", "refresh": "r1" },
            { "email": "spoiled@x.test", "refresh": "r6" },
            { "email": "gone@x.test", "refresh": "r2", "access": "a2" },
            { "email": "renewed@x.test", "refresh": "r3" },
            { "email": "keyed@x.test", "type": "api", "key": "k4" },
        ]}))
        .unwrap();
        let mut copy = Pool::from_value(json!({ "anthropic": [
            { "email": "stays@x.test", "refresh": "r1", "priority": 2 },
            { "email": "Gone@X.test", "refresh": "r2", "access": "a2", "priority": 5 },
            { "email": "renewed@x.test", "refresh": "r3-new" },
            { "email": "keyed@x.test", "type": "api", "key": "k4-new" },
            { "email": "by-hand@x.test", "refresh": "r5" },
            { "email": "spoiled@x.test", "refresh": "r6" },
        ]}))
        .unwrap();
        assert!(
            stored.find("spoiled@x.test").is_none(),
            "unreadable in the store"
        );
        assert_eq!(
            copy.drop_removed_since(&stored, &held),
            vec!["Gone@X.test".to_string()]
        );
        let names: Vec<_> = copy.accounts().map(|a| a.email.as_str()).collect();
        assert_eq!(
            names,
            [
                "stays@x.test",
                "renewed@x.test",
                "keyed@x.test",
                "by-hand@x.test",
                "spoiled@x.test"
            ]
        );
    }

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
    fn a_predecessor_entry_loads_as_its_file_says_and_is_written_whole() {
        // The JavaScript predecessor writes `cooldownUntil`, never `rateLimitUntil`; an entry
        // may lack `expires` too. A `null` the file says stays.
        let file = json!({"anthropic": [
            {"email": "a@x", "refresh": "r", "access": "a", "expires": 1711234567000u64,
             "status": "rate-limited", "cooldownUntil": 4102444800000u64},
            {"email": "b@x", "refresh": "r", "status": "idle"},
            {"email": "c@x", "refresh": "r", "expires": null, "status": "idle", "rateLimitUntil": null}
        ]});
        let pool = Pool::from_value(file.clone()).unwrap();
        assert_eq!(pool.clone().into_loaded_value(), file);
        // What the pool writes has every field of an account, but an `expires` it has none of
        // and the file did not say (aidevops's `check` failed on a `null` one).
        let written = pool.clone().into_value();
        for entry in written["anthropic"].as_array().unwrap() {
            for key in ["status", "rateLimitUntil"] {
                assert!(entry.get(key).is_some(), "{key} in {entry}");
            }
        }
        let expires: Vec<Option<&Value>> = written["anthropic"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.get("expires"))
            .collect();
        assert_eq!(
            expires,
            [Some(&json!(1711234567000u64)), None, Some(&Value::Null)]
        );
        let bytes: Value = serde_json::from_slice(&pool.to_bytes()).unwrap();
        assert_eq!(bytes, written, "the bytes written say the same");
        let key = Account::new_api_key("k@x", Secret::new("the-key-0123"), 1);
        let mut with_key = Pool::default();
        with_key.upsert(key);
        let bytes: Value = serde_json::from_slice(&with_key.to_bytes()).unwrap();
        assert!(bytes["anthropic"][0].get("expires").is_none(), "{bytes}");
        // A key the previous release wrote with `expires: null` is written without it.
        let old_key = Pool::from_value(json!({"anthropic": [
            {"email": "k@x", "type": "api", "key": "the-key-0123", "expires": null},
        ]}))
        .unwrap();
        let bytes: Value = serde_json::from_slice(&old_key.to_bytes()).unwrap();
        assert!(bytes["anthropic"][0].get("expires").is_none(), "{bytes}");
        assert!(old_key.into_value()["anthropic"][0]
            .get("expires")
            .is_none());
        // A default the pool set since it was read is no longer what the file said: shown.
        let mut changed = pool;
        if let Some(Entry::Valid(a)) = changed.anthropic.get_mut(1) {
            a.rate_limit_until = Some(4102444800000);
            a.status = "rate-limited".into();
        }
        let loaded = changed.into_loaded_value();
        assert_eq!(
            loaded["anthropic"][1]["rateLimitUntil"],
            json!(4102444800000u64)
        );
        assert_eq!(loaded["anthropic"][1]["status"], json!("rate-limited"));
        // A status left out is the idle it means.
        let bare = Pool::from_value(json!({"anthropic": [{"email": "d@x"}]})).unwrap();
        assert_eq!(
            bare.into_loaded_value()["anthropic"][0],
            json!({"email": "d@x", "status": "idle"})
        );
        assert!(loaded["anthropic"][1].get("expires").is_none());
    }

    #[test]
    fn a_value_javascript_reads_is_read_leniently() {
        let read = |t: &[u8]| value_read_leniently(t);
        let v =
            read(br#"{"expires_in":1e400,"low":-2E+999,"s":"1e400 \" 9e999","n":[1.5,-0,3e2]}"#)
                .unwrap();
        assert_eq!(v["expires_in"], json!(f64::MAX));
        assert_eq!(v["low"], json!(f64::MIN));
        assert_eq!(
            v["s"],
            json!("1e400 \" 9e999"),
            "a string's text is its own"
        );
        assert_eq!(v["n"], json!([1.5, -0.0, 300.0]));
        let v = read(b"\xEF\xBB\xBF{\"a\":\"x \\ud83d\"}").unwrap();
        assert_eq!(v["a"], json!("x \u{fffd}"));
        for not_json in [&b"<html>"[..], b"", b"{\"a\":1e400", b"\xFF\xFE{}"] {
            assert_eq!(read(not_json), None, "{not_json:?}");
        }
    }

    #[test]
    fn a_file_saved_on_windows_is_read_or_refused_saying_why() {
        let text = br#"{"anthropic": [{"email": "bom@x", "access": "a"}]}"#;
        let marked = [&b"\xEF\xBB\xBF"[..], text].concat();
        assert!(Pool::parse(&marked).unwrap().find("bom@x").is_some());
        let crlf = String::from_utf8_lossy(text).replace(' ', "\r\n");
        assert!(Pool::parse(crlf.as_bytes())
            .unwrap()
            .find("bom@x")
            .is_some());
        let utf16: Vec<u8> = String::from_utf8_lossy(text)
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for bytes in [[&[0xFF, 0xFE][..], &utf16].concat(), utf16.clone()] {
            let why = Pool::parse(&bytes).unwrap_err();
            assert!(
                why.contains("UTF-16") && why.contains("save it as UTF-8"),
                "{why}"
            );
        }
        // A file of zeros (a write lost to a crash) is no UTF-16: it just does not parse.
        assert!(!Pool::parse(&[0u8; 64]).unwrap_err().contains("UTF-16"));
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
    fn a_string_javascript_cut_inside_a_character_pair_is_read() {
        let cut = br#"{"anthropic": [{"email": "a@x", "lastError": "quota \ud83d", "note": "\uDE00 \\ud83d \ud83d\ude00"}], "x": "\ud800\ud800"}"#;
        let pool = Pool::parse(cut).unwrap();
        let a = pool.find("a@x").unwrap();
        assert_eq!(a.extra["lastError"], json!("quota \u{fffd}"));
        // An escaped backslash is no escape; a whole pair stays the character it is.
        assert_eq!(a.extra["note"], json!("\u{fffd} \\ud83d \u{1f600}"));
        assert_eq!(pool.extra["x"], json!("\u{fffd}\u{fffd}"));
        // Outside a string it is no string's, and the error says where, as before.
        let err = Pool::parse(br#"{"anthropic": [], "x": \ud800}"#).unwrap_err();
        assert!(err.contains("column 24"), "{err}");
        assert!(lone_surrogates_replaced(br#"{"a": "\u00e9 \ud83d\ude00"}"#).is_none());
    }

    #[test]
    fn a_later_format_is_refused_and_this_one_read() {
        for later in [json!(2), json!(1.5), json!(10), json!("2"), json!(" 3 ")] {
            let why = Pool::from_value(json!({"version": later, "anthropic": []})).unwrap_err();
            assert!(why.contains(NEWER_FORMAT), "{why}");
        }
        for this in [
            json!(1),
            json!(1.0),
            json!(0),
            json!("1"),
            json!("x"),
            json!(null),
        ] {
            let pool = Pool::from_value(json!({"version": this, "anthropic": []})).unwrap();
            assert_eq!(pool.version, Some(this));
        }
    }

    #[test]
    fn wrong_shapes_are_refused() {
        assert!(Pool::from_value(json!([])).is_err());
        assert!(Pool::from_value(json!(3)).is_err());
        assert!(Pool::from_value(json!({"anthropic": {}})).is_err());
        assert!(Pool::parse(b"").is_err());
        // UTF-16; a UTF-8 byte order mark is read past (a_file_saved_on_windows_…).
        assert!(Pool::parse(b"\xFF\xFE{\0}\0").is_err());
        assert!(Pool::parse(b"{\"anthropic\": [").is_err());
        let twice = Pool::parse(br#"{"anthropic": [{"email": "a@x"}], "anthropic": []}"#);
        assert!(twice.unwrap_err().contains("\"anthropic\" appears twice"));
        let nested = br#"{"anthropic": [{"email": "a@x", "refresh": "r1", "refresh": "r2"}]}"#;
        assert!(Pool::parse(nested)
            .unwrap_err()
            .contains("\"refresh\" appears twice"));
        assert!(Pool::parse(
            br#"{"anthropic": [{"email": "a@x"}, {"email": "b@x"}], "x": {"a": {"a": 1}}}"#
        )
        .is_ok());
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
        pool.find_mut("a@x")
            .unwrap()
            .extra
            .insert("refreshBackoffUntil".into(), json!(now + 600_000));
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
        assert!(
            !a.extra.contains_key("refreshBackoffUntil"),
            "the token endpoint's wait was the old refresh token's"
        );
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
    fn emails_that_differ_in_the_blanks_around_them_are_named_apart() {
        let pool = Pool::from_value(json!({"anthropic": [
            {"email": "a@x.com", "refresh": "r1"},
            {"email": " a@x.com ", "refresh": "r2"},
            {"email": " b@x.com", "refresh": "r3"},
            {"email": "c@x.com", "refresh": "r4"},
            {"email": "c@x.com", "refresh": "r5"}
        ]}))
        .unwrap();
        assert_eq!(pool.resolve("a@x.com").unwrap(), vec![0]);
        assert_eq!(pool.resolve(" a@x.com ").unwrap(), vec![1]);
        let ambiguous = pool.resolve("a@x.com ").unwrap_err();
        assert_eq!(
            ambiguous.code(),
            "INVALID_ARGUMENT",
            "two spellings, neither given: no guess"
        );
        assert!(
            ambiguous
                .to_string()
                .contains(r##"#0 "a@x.com", #1 " a@x.com ""##),
            "{ambiguous}"
        );
        assert_eq!(pool.resolve("b@x.com").unwrap(), vec![2], "one spelling");
        assert_eq!(
            pool.resolve("c@x.com").unwrap(),
            vec![3, 4],
            "one spelling twice"
        );
    }

    #[test]
    fn a_second_entry_for_an_email_is_kept_and_reported_never_served() {
        let raw = json!({"anthropic": [
            {"email": "dup@x", "refresh": "r1", "enabled": false, "zeta": 1, "expires": 1711234567},
            {"email": "dup@x", "type": "api", "key": "k2", "expires": 1711234567, "alpha": [1]},
            {"email": "Dup@x", "refresh": "r3"},
            {"email": "late@x", "priority": "high"},
            {"email": "late@x", "refresh": "r4"},
            {"email": "late@x", "refresh": "r5"},
        ]});
        let pool = Pool::from_value(raw.clone()).unwrap();
        let Entry::Invalid { raw: kept, reason } = &pool.anthropic[1] else {
            panic!("the second dup@x is not an account of its own");
        };
        assert_eq!(kept, &raw["anthropic"][1], "kept as it was written");
        assert!(reason.contains("#0") && reason.contains("'#1'"), "{reason}");
        let a = pool.find("dup@x").unwrap();
        assert_eq!(a.refresh.as_ref().unwrap().expose(), "r1");
        assert!(!a.is_enabled(), "the first stays what it is: disabled");
        assert!(
            matches!(pool.anthropic[2], Entry::Valid(_)),
            "another case is another account"
        );
        // The first readable entry is the account, whatever unreadable one came before.
        assert!(matches!(pool.anthropic[3], Entry::Invalid { .. }));
        assert!(matches!(pool.anthropic[4], Entry::Valid(_)));
        assert!(matches!(pool.anthropic[5], Entry::Invalid { .. }));
        let written = pool.to_value();
        for i in [1, 3, 5] {
            assert_eq!(
                written["anthropic"][i], raw["anthropic"][i],
                "written back as read"
            );
        }
        assert_eq!(
            Pool::from_caller(raw).unwrap_err().code(),
            "POOL_INVALID",
            "savePool refuses it"
        );
    }

    #[test]
    fn the_sections_of_other_writers_keep_their_order() {
        let raw = json!({"openai": [{"a": 1}], "_pending": {"b": 2}, "anthropic": [], "cursor": [], "_z": 0});
        let pool = Pool::from_value(raw.clone()).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&pool.to_value()), keys(&raw));
        let mut with_failover = Pool::from_value(
            json!({"anthropic": [], "lastFailover": {}, "openai": [], "cursor": [], "google": []}),
        )
        .unwrap();
        with_failover.remove_section("lastFailover");
        assert_eq!(
            keys(&with_failover.to_value()),
            ["anthropic", "openai", "cursor", "google"]
        );
        // A section before ours gone: ours stays between the same neighbours.
        let mut before = Pool::from_value(
            json!({"lastFailover": {}, "openai": [], "anthropic": [], "cursor": []}),
        )
        .unwrap();
        before.remove_section("lastFailover");
        assert_eq!(keys(&before.to_value()), ["openai", "anthropic", "cursor"]);
        let versioned = json!({"version": 2, "openai": [], "anthropic": []});
        assert!(Pool::from_value(versioned).is_err());
        let v0 = json!({"openai": [], "version": 0, "anthropic": [], "cursor": []});
        assert_eq!(
            keys(&Pool::from_value(v0).unwrap().to_value()),
            ["version", "openai", "anthropic", "cursor"]
        );
        let none = json!({"openai": [], "cursor": []});
        assert_eq!(
            keys(&Pool::from_value(none).unwrap().to_value()),
            ["anthropic", "openai", "cursor"]
        );
    }

    #[test]
    fn whole_numbers_in_any_json_spelling_and_statuses_in_any_case() {
        let pool = Pool::parse(
            br#"{"anthropic": [
                {"email": "a@x", "priority": 1.0},
                {"email": "b@x", "priority": 1e2},
                {"email": "c@x", "priority": -0},
                {"email": "d@x", "priority": 2.5},
                {"email": "e@x", "priority": 1e300},
                {"email": "f@x", "status": " Disabled "},
                {"email": "g@x", "status": "AUTH-ERROR"},
                {"email": "h@x", "status": "billing-error"}
            ]}"#,
        )
        .unwrap();
        let priority = |e: &str| pool.find(e).map(|a| a.priority);
        assert_eq!(priority("a@x"), Some(Some(1)));
        assert_eq!(priority("b@x"), Some(Some(100)));
        assert_eq!(priority("c@x"), Some(Some(0)));
        for fraction in [3, 4] {
            let Entry::Invalid { reason, .. } = &pool.anthropic[fraction] else {
                panic!("no integer says what {fraction} meant");
            };
            assert!(reason.contains("expected a whole number"), "{reason}");
        }
        let status = |e: &str| pool.find(e).unwrap().status_enum();
        assert_eq!(status("f@x"), Some(Status::Disabled));
        assert!(!pool.find("f@x").unwrap().is_enabled());
        assert_eq!(status("g@x"), Some(Status::AuthError));
        assert_eq!(status("h@x"), None, "unknown: usable, as before");
        assert_eq!(
            pool.find("f@x").unwrap().status,
            " Disabled ",
            "kept as written"
        );
    }

    #[test]
    fn a_key_typed_where_a_name_goes_is_not_quoted_back() {
        // Found by a review: `remove <key without its prefix>` printed it whole.
        let body = "WlNEWI5rGB2uWILCZTuzvqjgQcxbjus5OiJhnBK8VDdY";
        let key = ["sk", "ant", "api03", body].join("-");
        let mut pool = Pool::default();
        pool.upsert(Account::new_api_key(
            "k@x",
            key.as_str().into(),
            1_800_000_000_000,
        ));
        for typed in [
            body.to_string(),
            body.to_ascii_lowercase(),
            key.to_ascii_uppercase(),
            body[5..30].to_string(),
        ] {
            let err = pool.remove(&typed).unwrap_err();
            assert_eq!(err.code(), "ACCOUNT_NOT_FOUND");
            let text = err.to_string();
            assert!(
                !text
                    .to_ascii_lowercase()
                    .contains(&body[8..20].to_ascii_lowercase()),
                "{text}"
            );
        }
        let err = pool.remove("nobody@x").unwrap_err();
        assert!(err.to_string().contains("nobody@x"), "{err}");
    }

    #[test]
    fn an_email_that_looks_like_an_index_names_its_own_account() {
        let mut pool = Pool::default();
        let now = 1_800_000_000_000;
        pool.upsert(Account::new_oauth(
            "alice@x",
            "a".into(),
            "r".into(),
            now,
            now,
        ));
        pool.upsert(Account::new_api_key("#0", "k".into(), now));
        // Both the name of the entry at #1 and the place of another: neither is removed (found
        // by a review: `list` told to remove an unreadable entry by its place, and the command
        // removed an account so named instead).
        let err = pool.remove("#0").unwrap_err();
        assert_eq!(err.code(), "INVALID_ARGUMENT");
        assert!(err.to_string().contains("entry at #1"), "{err}");
        assert_eq!(pool.anthropic.len(), 2);
        assert_eq!(pool.remove("#1").unwrap(), 1, "by its place");
        assert!(pool.find("alice@x").is_some(), "the first entry stays");
        assert!(pool.find("#0").is_none());
        assert_eq!(pool.remove("#0").unwrap(), 1, "now the index");
        assert_eq!(pool.anthropic.len(), 0);
        // A name `#N` past the pool's end is no place: the account so named.
        pool.upsert(Account::new_api_key("#5", "k".into(), now));
        assert_eq!(pool.remove("#5").unwrap(), 1);
    }

    #[test]
    fn a_credential_of_the_other_kind_is_kept() {
        let mut pool = Pool::default();
        let now = 1_800_000_000_000;
        pool.upsert(Account::new_api_key("both@x", "key-1".into(), now));
        pool.upsert(Account::new_oauth(
            "both@x",
            "a".into(),
            "r".into(),
            now,
            now,
        ));
        let a = pool.find("both@x").unwrap();
        assert!(!a.is_api_key());
        assert_eq!(
            a.key.as_ref().unwrap().expose(),
            "key-1",
            "the key stays in the entry"
        );
        assert_eq!(a.refresh.as_ref().unwrap().expose(), "r");
    }

    #[test]
    fn an_unreadable_entry_is_described_without_its_values() {
        let pool = Pool::from_value(json!({"anthropic": [
            {"email": "typo@x", "priority": "fake-refresh-SENTINEL-0123456789"}
        ]}))
        .unwrap();
        let Entry::Invalid { reason, .. } = &pool.anthropic[0] else {
            panic!("a string priority is unreadable");
        };
        assert!(!reason.contains("SENTINEL"), "{reason}");
        assert!(reason.contains("invalid type: string"), "{reason}");
    }

    #[test]
    fn names_that_cannot_be_emails() {
        for ok in ["a@x", "api-key-1", "Ünïcode@例え.jp", "a b@x"] {
            assert!(crate::account::acceptable_email(ok), "{ok}");
        }
        let long = "a".repeat(255);
        for bad in [
            "",
            "#0",
            "a\u{1b}[2J@x",
            "a\n@x",
            "a\u{202e}@x",
            "a\u{200b}@x",
            "a\u{0}@x",
            long.as_str(),
            // Found by a review: each read as the name without it.
            "s\u{ad}erver@x",
            "a\u{61c}b@x",
            "a\u{3164}@x",
            "a\u{fe0f}@x",
            "a\u{34f}@x",
            "a\u{e0100}@x",
            "a\u{fffa}@x",
        ] {
            assert!(!crate::account::acceptable_email(bad), "{bad:?}");
        }
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

    /// A `version`: 0 to 2 (2 is refused by a read), or anything.
    fn arb_version() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![(0i64..3).prop_map(Value::from), arb_json()]
    }

    /// An `anthropic` entry: mostly an object with an email, named fields of any type (most
    /// unreadable) and fields of its own; sometimes anything at all.
    fn arb_entry() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let named = prop_oneof![
            arb_json(),
            (1_000_000_000_000i64..2_000_000_000_000).prop_map(Value::from),
            (0i64..100_000).prop_map(|n| Value::from(n as f64 / 100.0)),
        ];
        let account = (
            "[a-c]@x",
            proptest::collection::vec((0..Account::NAMED.len(), named), 0..5),
            proptest::collection::vec(("[a-zA-Z]{1,8}", arb_json()), 0..4),
        )
            .prop_map(|(email, named, own)| {
                let mut map = serde_json::Map::new();
                for (k, v) in own {
                    map.insert(k, v);
                }
                map.insert("email".into(), Value::from(email));
                for (i, v) in named {
                    map.insert(Account::NAMED[i].into(), v);
                }
                Value::Object(map)
            });
        prop_oneof![4 => account, 1 => arb_json()]
    }

    /// An entry is read as `Account`'s own deserializer reads the whole entry (what it did
    /// before only the named fields went through it): the same account, fields in the same
    /// order, the same refusals.
    #[test]
    fn an_entry_reads_as_the_whole_entry_through_the_deserializer() {
        let mut full = Account::new_oauth("a@x", "a".into(), "r".into(), 1, 1);
        full.kind = Some("oauth".into());
        full.key = Some("k".into());
        full.last_used = Some("t".into());
        full.rate_limit_until = Some(2);
        full.priority = Some(3);
        full.enabled = Some(true);
        let named: Vec<String> = match serde_json::to_value(&full).unwrap() {
            Value::Object(m) => m.keys().cloned().collect(),
            _ => unreachable!(),
        };
        assert_eq!(named, Account::NAMED, "every named field, and only those");
        let entries = [
            json!({"zeta": 1, "email": "a@x", "usage": {"days": {"d": {"m": {"requests": 1}}}}, "refresh": "r", "alpha": [1, {"b": null}], "expires": 1711234567, "status": "active"}),
            json!({"email": "a@x", "type": "api", "key": "k", "priority": 2.0, "enabled": false, "rateLimitUntil": null, "limits": {}}),
            json!({"email": "a@x", "priority": "high", "usage": {}}),
            json!({"email": "a@x", "expires": "soon"}),
            json!({"email": "a@x", "enabled": 1, "x": 2}),
            json!({"email": "a@x", "refresh": 5}),
            json!({"email": "a@x", "status": null}),
            json!({"email": "a@x", "lastUsed": null, "added": 3}),
        ];
        for raw in entries {
            let before = match serde_json::from_value::<Account>(raw.clone()) {
                Ok(a) => Ok(serde_json::to_string(&a).unwrap()),
                Err(e) => Err(without_quoted_values(&e.to_string())),
            };
            let now = match Entry::from_value(raw.clone()) {
                Entry::Valid(a) => Ok(serde_json::to_string(&a).unwrap()),
                Entry::Invalid { raw: kept, reason } => {
                    assert_eq!(serde_json::to_string(&kept).unwrap(), raw.to_string());
                    Err(reason)
                }
            };
            assert_eq!(now, before, "{raw}");
        }
    }

    /// A pool used every day for a month: `accounts` accounts with limits, windows and usage
    /// per day (30) and 5-hour window (144) for three models, as `JSON.stringify(pool, null, 2)`
    /// writes it (the shape the many-processes test and a heavy user's file have).
    pub(crate) fn month_of_usage(accounts: usize) -> Vec<u8> {
        usage_history(accounts, 144)
    }

    /// `month_of_usage` with `windows` 5-hour windows per account (the engine keeps 8 days of
    /// them now, 39: a heavy user's file as this build writes it).
    pub(crate) fn usage_history(accounts: usize, windows: i64) -> Vec<u8> {
        let now: i64 = 1_800_000_000_000;
        let c = || json!({ "requests": 1234, "input": 5678901, "output": 234567, "cacheRead": 34567890, "cacheWrite": 1234567 });
        let models = ["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"];
        let per_model = || Value::Object(models.iter().map(|m| (m.to_string(), c())).collect());
        let entries: Vec<Value> = (0..accounts)
            .map(|i| {
                let days: serde_json::Map<String, Value> = (1..30)
                    .map(|d| (crate::engine::bookkeeping::day_of(now - d * 86_400_000), per_model()))
                    .collect();
                let windows: serde_json::Map<String, Value> = (1..windows)
                    .map(|w| (((now / 18_000_000 - w) * 18_000_000).to_string(), per_model()))
                    .collect();
                let window = |u: f64| json!({ "utilization": u, "status": "allowed", "reset": now + 3_600_000, "updatedAt": now - 1000 });
                json!({
                    "email": format!("user{i}@example.com"),
                    "refresh": format!("fake-refresh-{i}"),
                    "access": format!("fake-access-{i}"),
                    "expires": now + 3_600_000,
                    "added": "2026-11-29T11:39:58.616Z",
                    "lastUsed": "2026-11-29T11:39:58.639Z",
                    "status": "idle",
                    "rateLimitUntil": null,
                    "priority": i,
                    "limits": {
                        "updatedAt": now - 1000, "status": "allowed", "representativeClaim": "five_hour",
                        "windows": { "5h": window(0.4), "7d": window(0.6), "7d_sonnet": window(0.7) }
                    },
                    "modelCooldowns": {},
                    "usage": { "days": days, "windows": windows },
                })
            })
            .collect();
        let mut out = serde_json::to_vec_pretty(&json!({
            "anthropic": entries,
            "_oauthPool": { "lastFailover": { "at": now, "from": "user0@example.com", "to": "user1@example.com", "reason": "5h window exhausted" } },
        }))
        .unwrap();
        out.push(b'\n');
        out
    }

    /// Where a read of the pool file spends its time (not a check: prints figures, run with
    /// `cargo test --release --lib where_a_read_spends -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn where_a_read_spends_its_time() {
        use std::time::Instant;
        fn median(mut f: impl FnMut(), n: usize) -> f64 {
            let mut t: Vec<f64> = (0..n)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            t.sort_by(|a, b| a.partial_cmp(b).unwrap());
            t[n / 2]
        }
        for accounts in [3, 4, 6] {
            for history in [false, true] {
                let bytes = if history {
                    month_of_usage(accounts)
                } else {
                    let mut p = Pool::parse(&month_of_usage(accounts)).unwrap();
                    for a in p.accounts_mut() {
                        a.extra.shift_remove("usage");
                    }
                    p.to_bytes()
                };
                let dir = tempfile::tempdir().unwrap();
                let store = crate::store::FileStore::new(dir.path().join("pool.json"));
                std::fs::write(store.path(), &bytes).unwrap();
                let n = if history { 200 } else { 2000 };
                let read = median(|| drop(std::fs::read(store.path()).unwrap()), n);
                let value = median(|| drop(serde_json::from_slice::<Value>(&bytes).unwrap()), n);
                let keys = median(|| crate::unique_keys::check(&bytes).unwrap(), n);
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                let convert = median(|| drop(Pool::from_value(v.clone()).unwrap()), n);
                let clone = median(|| drop(v.clone()), n);
                let parse = median(|| drop(Pool::parse(&bytes).unwrap()), n);
                let load = median(|| drop(store.load_stamped().unwrap()), n);
                println!(
                    "{accounts} accounts{}, {} KB: read {read:.3} ms, to Value {value:.3}, duplicate keys {keys:.3}, to Pool {:.3} (of it a Value clone {clone:.3}), Pool::parse {parse:.3}, load {load:.3}",
                    if history { " with a month of usage" } else { "" },
                    bytes.len() / 1024,
                    convert - clone,
                );
            }
        }
    }

    /// `Pool::to_value` as it was before the bytes were written straight from the pool: the
    /// reference the file's bytes must still match.
    fn tree_as_before(pool: &Pool) -> Value {
        let mut map = Map::new();
        if let Some(v) = pool
            .version
            .as_ref()
            .filter(|v| v.as_u64() != Some(POOL_VERSION))
        {
            map.insert("version".into(), v.clone());
        }
        let entries = pool
            .anthropic
            .iter()
            .map(|e| match e {
                // With the `expires: null` the file said, which a write keeps.
                Entry::Valid(a) => {
                    let mut value = serde_json::to_value(a).unwrap_or(Value::Null);
                    stated_null(a, &mut value);
                    value
                }
                Entry::Invalid { raw, .. } => raw.clone(),
            })
            .collect();
        let mut entries = Some(Value::Array(entries));
        for (i, (k, v)) in pool.extra.iter().enumerate() {
            if i == pool.anthropic_at {
                if let Some(entries) = entries.take() {
                    map.insert("anthropic".into(), entries);
                }
            }
            map.insert(k.clone(), v.clone());
        }
        if let Some(entries) = entries {
            map.insert("anthropic".into(), entries);
        }
        Value::Object(map)
    }

    fn bytes_as_before(pool: &Pool) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&tree_as_before(pool)).unwrap();
        out.push(b'\n');
        out
    }

    /// What a pool holds, for comparing two: its bytes, its version and where `anthropic`
    /// stands, and which entries are unreadable and why.
    fn held(pool: &Pool) -> (String, Option<Value>, usize, bool, Vec<Option<String>>) {
        let entries = pool
            .anthropic
            .iter()
            .map(|e| match e {
                Entry::Valid(_) => None,
                Entry::Invalid { reason, .. } => Some(reason.clone()),
            })
            .collect();
        (
            String::from_utf8(pool.to_bytes()).unwrap(),
            pool.version.clone(),
            pool.anthropic_at,
            pool.file_missing,
            entries,
        )
    }

    /// The bytes, the tree and the generation kept after a write, each as they were made before
    /// (through a copy of the whole pool into a tree, then a parse of the bytes written).
    fn same_as_before(pool: &Pool) {
        let bytes = bytes_as_before(pool);
        assert_eq!(
            String::from_utf8(pool.to_bytes()).unwrap(),
            String::from_utf8(bytes.clone()).unwrap()
        );
        assert_eq!(pool.to_value(), tree_as_before(pool));
        assert_eq!(pool.clone().into_value(), tree_as_before(pool));
        match (pool.clone().into_read(), Pool::parse(&bytes)) {
            (Ok(kept), Ok(read)) => assert_eq!(held(&kept), held(&read)),
            (Err(kept), Err(read)) => assert_eq!(kept, read),
            (kept, read) => panic!(
                "kept {:?}, read {:?}",
                kept.map(|p| held(&p)),
                read.map(|p| held(&p))
            ),
        }
    }

    #[test]
    fn the_bytes_written_are_those_of_the_tree_for_hostile_pools() {
        let raw = br#"{
            "openai": [{"email": "o@x", "refresh": "o"}],
            "_meta": {"b": 1, "a": [true, null, 1.5, -0.0, 1e300, "\u0000\u2028\"\\/ \ud83d\ude00"]},
            "anthropic": [
                {"zeta": {"deep": [[[{}]]]}, "email": "a@x", "refresh": "r1", "usage": {"days": {"2026-11-30": {"m": {"requests": 1}}}}, "access": "a1", "expires": 1711234567, "alpha": [], "priority": 2.0},
                {"email": "b@x", "type": "api", "key": "k", "enabled": false, "status": "Disabled ", "rateLimitUntil": null, "limits": {}},
                "not an object",
                {"no": "email"},
                {"email": "c@x", "priority": "high", "keep": "me"},
                {"email": "a@x", "refresh": "second"},
                {"email": "d@x", "expires": "soon"},
                7, null, [], {}
            ],
            "cursor": {"x": [1, 2, {"y": "z"}]},
            "zed": 0.1
        }"#;
        let mut pools = vec![Pool::default(), Pool::parse(raw).unwrap()];
        for top in [
            json!({"version": 0, "openai": [], "anthropic": [], "cursor": []}),
            json!({"openai": [], "version": 1.0, "cursor": [], "anthropic": [{"email": "e@x"}]}),
            json!({"version": null, "anthropic": [{"email": "e@x"}], "after": {}}),
            json!({"version": "1", "before": "x"}),
            json!({"version": 1, "before": "x", "anthropic": null}),
            json!({"anthropic": [{"email": "e@x", "lastUsed": "t", "x": {"y": []}}]}),
        ] {
            pools.push(Pool::from_value(top).unwrap());
        }
        // What no read makes, but a change could: a section or an entry field named as ours
        // are, the version of a pool read before, `anthropic` past the sections left.
        let mut named_twice = Pool::parse(raw).unwrap();
        named_twice
            .extra
            .insert("anthropic".into(), json!("theirs"));
        named_twice.extra.insert("version".into(), json!(3));
        named_twice.version = Some(json!(0));
        pools.push(named_twice);
        let mut entry_twice = Pool::parse(raw).unwrap();
        for a in entry_twice.accounts_mut() {
            a.extra.insert("status".into(), json!("from extra"));
            a.extra.insert("email".into(), json!(5));
        }
        pools.push(entry_twice);
        let mut changed = Pool::parse(raw).unwrap();
        changed.remove_section("openai");
        changed.remove_section("_meta");
        changed.remove_section("cursor");
        changed.remove_section("zed");
        changed.anthropic_at = 7;
        changed.version = Some(json!(1));
        changed.file_missing = true;
        changed.upsert(Account::new_oauth("new@x", "a".into(), "r".into(), 1, 1));
        changed.upsert(Account::new_api_key("a@x", "k2".into(), 1));
        pools.push(changed);
        // Changes that a read of the bytes would not take as they are in memory.
        let mut unreadable = Pool::parse(raw).unwrap();
        for a in unreadable.accounts_mut() {
            a.expires = Some(5_000_000_000_000_000);
        }
        pools.push(unreadable);
        let mut renamed = Pool::parse(raw).unwrap();
        for a in renamed.accounts_mut() {
            a.email = "same@x".into();
        }
        pools.push(renamed);
        let mut newer = Pool::parse(raw).unwrap();
        newer.version = Some(json!(2));
        pools.push(newer);
        for pool in &pools {
            same_as_before(pool);
        }
    }

    /// The median of `n` runs of `f`, in ms.
    fn median_ms(mut f: impl FnMut(), n: usize) -> f64 {
        let mut t: Vec<f64> = (0..n)
            .map(|_| {
                let s = std::time::Instant::now();
                f();
                s.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t[n / 2]
    }

    /// This thread's CPU time, in ms.
    #[cfg(unix)]
    fn thread_cpu_ms() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 * 1000.0 + t.tv_nsec as f64 / 1e6
    }

    /// Where a bookkeeping write of the pool file spends its time, and a read of the same file
    /// (not a check: prints figures, run with
    /// `cargo test --release --lib where_a_write_spends -- --ignored --nocapture`): 6 and 300
    /// accounts with a month of usage as this build keeps it (30 days, 8 days of 5-hour windows).
    #[test]
    #[ignore]
    #[cfg(unix)]
    fn where_a_write_spends_its_time() {
        for (accounts, n) in [(6, 200), (300, 15)] {
            let bytes = usage_history(accounts, 39);
            let dir = tempfile::tempdir().unwrap();
            let store = crate::store::FileStore::new(dir.path().join("pool.json"));
            std::fs::write(store.path(), &bytes).unwrap();
            let pool = Pool::parse(&bytes).unwrap();
            assert_eq!(pool.to_bytes(), bytes, "the file is as the pool writes it");
            let parse = median_ms(|| drop(Pool::parse(&bytes).unwrap()), n);
            let load = median_ms(|| drop(store.load_stamped().unwrap()), n);
            let to_bytes = median_ms(|| drop(pool.to_bytes()), n);
            let tree_bytes = median_ms(|| drop(bytes_as_before(&pool)), n);
            let tree = median_ms(|| drop(tree_as_before(&pool)), n);
            let clone = median_ms(|| drop(pool.clone()), n);
            let into_read = {
                let mut t: Vec<f64> = (0..n)
                    .map(|_| {
                        let p = pool.clone();
                        let s = std::time::Instant::now();
                        drop(p.into_read().unwrap());
                        s.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect();
                t.sort_by(|a, b| a.partial_cmp(b).unwrap());
                t[n / 2]
            };
            // What the engine's bookkeeping does to one account after a request.
            let mut k = 0i64;
            let mut write = || {
                k += 1;
                store
                    .update_existing(|p| {
                        let a = p.accounts_mut().next().unwrap();
                        a.last_used = Some(crate::account::iso_time(1_800_000_000_000 + k));
                        a.extra.insert("requests".into(), Value::from(k));
                        Ok(())
                    })
                    .unwrap()
            };
            let written = median_ms(|| drop(write()), n);
            let mut cpu: Vec<f64> = (0..n)
                .map(|_| {
                    let s = thread_cpu_ms();
                    drop(write());
                    thread_cpu_ms() - s
                })
                .collect();
            cpu.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let cpu = cpu[n / 2];
            println!(
                "{accounts} accounts, {} KB: read {load:.2} ms (of it the parse {parse:.2}); \
                 bookkeeping write {written:.2} ms, {cpu:.2} ms of CPU: a read, the bytes twice \
                 {to_bytes:.2} (through a tree copy {tree_bytes:.2}, the copy alone {tree:.2}), \
                 the generation written {into_read:.2} (a parse of the bytes {parse:.2}), \
                 write and fsync; a Pool clone {clone:.2}",
                bytes.len() / 1024,
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = Pool::parse(&bytes);
        }

        #[test]
        fn an_entry_reads_as_the_deserializer_reads_it_whole(entry in arb_json(), email in "[a-z]{1,6}@x", named in proptest::collection::vec((0..Account::NAMED.len(), arb_json()), 0..4)) {
            let mut map = match entry { Value::Object(m) => m, _ => serde_json::Map::new() };
            for (i, v) in named {
                map.insert(Account::NAMED[i].into(), v);
            }
            map.insert("email".into(), Value::from(email));
            let raw = Value::Object(map);
            // A `type` the pool does not know is refused before the deserializer is asked.
            let unknown_kind = match raw.get("type") {
                None | Some(Value::Null) => false,
                Some(Value::String(t)) => !crate::account::known_kind(t),
                Some(_) => true,
            };
            let before = if unknown_kind {
                Err("`type` is neither \"oauth\" nor \"api\": an entry of a kind the pool does not know is kept as it is and never sent".to_string())
            } else {
                serde_json::from_value::<Account>(raw.clone())
                    .map(|a| serde_json::to_string(&a).unwrap())
                    .map_err(|e| without_quoted_values(&e.to_string()))
            };
            let now = match Entry::from_value(raw.clone()) {
                Entry::Valid(a) => Ok(serde_json::to_string(&a).unwrap()),
                Entry::Invalid { raw: kept, reason } => {
                    proptest::prop_assert_eq!(&kept, &raw);
                    Err(reason)
                }
            };
            proptest::prop_assert_eq!(now, before);
        }

        #[test]
        fn the_bytes_written_are_those_of_the_tree(
            sections in proptest::collection::vec(("[a-z_]{1,6}", arb_json()), 0..5),
            at in 0usize..6,
            version in proptest::option::of(arb_version()),
            entries in proptest::collection::vec(arb_entry(), 0..5),
            change in 0u8..6,
        ) {
            let mut top = serde_json::Map::new();
            let at = at.min(sections.len());
            for (i, (k, v)) in sections.into_iter().enumerate() {
                if i == at {
                    top.insert("anthropic".into(), Value::Array(entries.clone()));
                }
                top.insert(k, v);
            }
            top.entry("anthropic").or_insert(Value::Array(entries));
            if let Some(v) = version {
                top.insert("version".into(), v);
            }
            let Ok(mut pool) = Pool::from_value(Value::Object(top)) else {
                return Ok(());
            };
            match change {
                1 => {
                    pool.upsert(Account::new_oauth("new@x", "a".into(), "r".into(), 1, 1));
                }
                2 => {
                    if let Some(k) = pool.extra.keys().next().cloned() {
                        pool.remove_section(&k);
                    }
                }
                3 => {
                    for a in pool.accounts_mut() {
                        a.extra.insert("status".into(), Value::from("extra's"));
                    }
                }
                4 => {
                    for a in pool.accounts_mut() {
                        a.email = "same@x".into();
                        a.rate_limit_until = Some(1_800_000_000_000);
                    }
                }
                5 => pool.version = Some(Value::from(1)),
                _ => {}
            }
            same_as_before(&pool);
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
}
