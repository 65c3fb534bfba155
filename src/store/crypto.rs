//! Tokens at rest in the fleet store: AES-256-GCM (ring) with a key the database never sees, so
//! a dump of it holds no usable token. Every sealed value is bound (as associated data) to where
//! it belongs, the account's email and the field, so a value moved to another row does not open.
//!
//! The key: `OAUTH_POOL_STORE_KEY` (32 bytes as 64 hex digits or base64), else the 0600 file
//! `~/.aidevops/oauth-pool-store.key` that `oauth-pool store init` creates. A wrong key is found
//! by a sealed check value in the store and refused before anything is read or written.

use std::path::PathBuf;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::config;
use crate::error::{Error, Result};
use crate::fsread;

const PREFIX: &str = "enc:v1:";
/// What every sealed value begins with (the store asks for one by it).
pub(crate) const SEAL_PREFIX: &str = PREFIX;
/// What the check value holds (sealed, in the store's meta table).
pub const CHECK: &str = "opencode-oauth-pool key check";

pub struct SealKey {
    key: LessSafeKey,
    /// Where the key came from, for messages (never the key).
    pub source: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealKey([REDACTED] from {})", self.source)
    }
}

fn parse_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let t = text.trim();
    if t.len() == 64 && t.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes: Option<Vec<u8>> = (0..32)
            .map(|i| u8::from_str_radix(&t[i * 2..i * 2 + 2], 16).ok())
            .collect();
        return bytes.map(Zeroizing::new);
    }
    let decoded = STANDARD
        .decode(t)
        .or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')))
        .ok()?;
    (decoded.len() == 32).then(|| Zeroizing::new(decoded))
}

/// The default key file.
pub fn key_file() -> Option<PathBuf> {
    config::home_dir().map(|h| h.join(".aidevops").join("oauth-pool-store.key"))
}

impl SealKey {
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<SealKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| Error::StoreKey("the store key must be 32 bytes".into()))?;
        Ok(SealKey {
            key: LessSafeKey::new(unbound),
            source: source.to_string(),
        })
    }

    /// The configured key: `OAUTH_POOL_STORE_KEY`, else the key file.
    pub fn from_config() -> Result<SealKey> {
        if let Some(text) = config::env(config::var::STORE_KEY).filter(|k| !k.trim().is_empty()) {
            let bytes = parse_key(&text).ok_or_else(|| {
                Error::StoreKey(
                    "OAUTH_POOL_STORE_KEY must be 32 bytes written as 64 hex digits or as base64 (oauth-pool store init makes one)".into(),
                )
            })?;
            return SealKey::from_bytes(&bytes, "OAUTH_POOL_STORE_KEY");
        }
        let path = key_file().ok_or_else(|| {
            Error::StoreKey("no OAUTH_POOL_STORE_KEY and no home directory for a key file".into())
        })?;
        SealKey::from_key_file(&path)
    }

    fn from_key_file(path: &std::path::Path) -> Result<SealKey> {
        // Held to the gateway key file's rules: this user's, a regular file, made 0600 once it
        // is known to hold a key (this one opens every token of the fleet).
        match fsread::read_own_key(path, 4096) {
            Ok(Some(found)) if found.bytes.iter().all(u8::is_ascii_whitespace) => {
                // Nothing can have been sealed with a key never written: safe to make anew.
                Err(Error::StoreKey(format!(
                    "{} is empty: a `store init` of an earlier version stopped before it wrote the key. Remove it and run `oauth-pool store init` again",
                    path.display()
                )))
            }
            Ok(Some(found)) => {
                let text = String::from_utf8_lossy(&found.bytes);
                let key = parse_key(&text).ok_or_else(|| {
                    Error::StoreKey(format!(
                        "{} does not hold a 32-byte key (64 hex digits or base64)",
                        path.display()
                    ))
                })?;
                found.keep_private(path);
                SealKey::from_bytes(&key, &path.display().to_string())
            }
            Ok(None) => Err(Error::StoreKey(format!(
                "no store key: copy the key file of a host already using this store to {} (0600), or set OAUTH_POOL_STORE_KEY (the same on every host); for a new store, `oauth-pool store init <its URL>` creates the file",
                path.display()
            ))),
            Err(why) => Err(Error::StoreKey(format!("the key file {} refused: {why}", path.display()))),
        }
    }

    /// Creates the key file (0600, never overwritten) and returns the key it holds.
    pub fn create_file() -> Result<(SealKey, PathBuf)> {
        let path = key_file()
            .ok_or_else(|| Error::StoreKey("no home directory for the key file".into()))?;
        Ok((SealKey::create_at(&path)?, path))
    }

    /// The key file is made whole or not at all (written under a temp name, then renamed into
    /// place if there is none): made in place, a `store init` killed between the create and
    /// the write left an empty key that every host then refused, and that init would not replace.
    fn create_at(path: &std::path::Path) -> Result<SealKey> {
        let mut raw = Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut())
            .map_err(|e| Error::StoreKey(format!("no OS randomness: {e}")))?;
        let text = Zeroizing::new(format!("{}\n", STANDARD.encode(raw.as_ref())));
        crate::store::file::check_maker(path).map_err(|why| {
            Error::StoreKey(format!(
                "the key file {} cannot be made: {why}",
                path.display()
            ))
        })?;
        if let Some(dir) = path.parent() {
            crate::store::file::create_private_dir(dir)?;
        }
        crate::store::file::remove_stale_temps(path);
        crate::store::file::create_whole(path, text.as_bytes())
            .map_err(|e| Error::io(path, "create key file", e))?;
        SealKey::from_bytes(raw.as_ref(), &path.display().to_string())
    }

    /// `enc:v1:` + base64(nonce || ciphertext || tag).
    pub fn seal(&self, aad: &str, plain: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| Error::StoreKey(format!("no OS randomness: {e}")))?;
        let mut buf = Zeroizing::new(plain.as_bytes().to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| Error::StoreKey("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// The plain text of a sealed value. A value that is not sealed is refused: it proves
    /// nothing about the key (a plain key check would pass any key) and may have been planted.
    pub fn open(&self, aad: &str, value: &str) -> Result<Zeroizing<String>> {
        self.open_or(aad, value, || {
            Error::StoreKey(format!(
                "a sealed value does not open with the key from {}: is it the key this store was made with?",
                self.source
            ))
        })
    }

    /// `open`, with `refused` as the error when the value does not open with this key.
    fn open_or(
        &self,
        aad: &str,
        value: &str,
        refused: impl FnOnce() -> Error,
    ) -> Result<Zeroizing<String>> {
        let Some(b64) = value.strip_prefix(PREFIX) else {
            return Err(Error::StoreKey(
                "a value in the store that should be sealed is not (written without the store key?)".into(),
            ));
        };
        let mut raw = Zeroizing::new(
            STANDARD
                .decode(b64)
                .map_err(|_| Error::StoreKey("a sealed value in the store is damaged".into()))?,
        );
        if raw.len() < NONCE_LEN + 16 {
            return Err(Error::StoreKey(
                "a sealed value in the store is damaged".into(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&raw[..NONCE_LEN]);
        let body = &mut raw[NONCE_LEN..];
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                body,
            )
            .map_err(|_| refused())?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| Error::StoreKey("a sealed value in the store is damaged".into()))
    }
}

/// The fields of an account entry that hold a token or a key.
const SECRET_FIELDS: &[&str] = &["access", "refresh", "key"];

/// Another field of an account entry that is sealed when it holds text: a key or token a person
/// put under a name the pool does not read (`apiKey`, `accessToken`, `client_secret`) was stored
/// in the clear, in every dump. Such a field may be plain in a row (written before this, or by a
/// host of an earlier version), and is then read as it is. The pool's own `authErrorToken` is a
/// fingerprint, read by every version as written.
fn is_other_secret(field: &str) -> bool {
    if SECRET_FIELDS.contains(&field) || matches!(field, "email" | "authErrorToken") {
        return false;
    }
    let f = field.to_ascii_lowercase();
    ["key", "token", "secret", "password"]
        .iter()
        .any(|w| f.contains(w))
}

/// Another field of an account entry sealed whatever its name, for what it holds: a token's
/// text (`"bearer": "sk-ant-oat01-…"`), or, in an object or a list, a field named for a
/// credential (`"oauth": {"refresh_token": …}`) or a token's text at any depth. Those were
/// stored in the clear, in every dump. A field holding neither (usage windows, `quota`, whose
/// counters are `input_tokens`) stays readable.
fn holds_secret(value: &Value) -> bool {
    fn named_for_a_credential(name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        [
            "key",
            "token",
            "secret",
            "password",
            "authorization",
            "bearer",
            "credential",
        ]
        .iter()
        .any(|w| n.ends_with(w))
    }
    match value {
        Value::String(s) => s.contains("sk-ant-"),
        Value::Array(items) => items.iter().any(holds_secret),
        Value::Object(map) => map.iter().any(|(name, v)| {
            (named_for_a_credential(name) && !matches!(v, Value::Null | Value::Bool(_)))
                || holds_secret(v)
        }),
        _ => false,
    }
}

/// What a field sealed for what it holds (`holds_secret`) that is not text is stored as: its
/// JSON, sealed, after this mark (a plain sealed value opens to text).
const SEALED_JSON: &str = "json:";
/// Text that begins with a mark is sealed after this one: a note that began "json:" opened as
/// JSON, changed (`"json:[1,2]"` came back a list) or refused as damaged (every host locked
/// out of the store by one hand-written field). NUL first: no text a person writes begins so.
const SEALED_TEXT: &str = "\u{0}text:";

/// How the fleet store seals a pool: each secret field of an account on its own, and every
/// top-level section other than the accounts whole.
impl SealKey {
    /// Where a sealed value belongs: its account's email and field (a section: no email).
    fn aad(email: &str, field: &str) -> String {
        format!("{email}\0{field}")
    }

    /// Applies `change` to each secret field of an entry (with the entry's email, and whether
    /// it is one of `SECRET_FIELDS`), in place.
    fn map_secrets(
        mut entry: Value,
        mut change: impl FnMut(&str, &str, &Value, bool) -> Result<Value>,
    ) -> Result<Value> {
        let email = entry
            .get("email")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Some(map) = entry.as_object_mut() {
            let others: Vec<String> = map
                .iter()
                .filter(|(f, v)| {
                    !SECRET_FIELDS.contains(&f.as_str())
                        && !matches!(f.as_str(), "email" | "authErrorToken")
                        && (is_other_secret(f)
                            || holds_secret(v)
                            || matches!(v, Value::String(s) if is_sealed(s)))
                })
                .map(|(f, _)| f.clone())
                .collect();
            let fields = SECRET_FIELDS
                .iter()
                .map(|f| (f.to_string(), true))
                .chain(others.into_iter().map(|f| (f, false)));
            for (f, core) in fields {
                let changed = match map.get(&f) {
                    Some(v @ Value::String(_)) => change(&email, &f, v, core)?,
                    Some(v) if !core && !v.is_null() => change(&email, &f, v, core)?,
                    _ => continue,
                };
                map.insert(f, changed);
            }
        }
        Ok(entry)
    }

    /// What a field's opened text stands for: JSON after `SEALED_JSON`, text after
    /// `SEALED_TEXT`, else the text itself (a core field's always).
    fn opened_value(opened: String, core: bool) -> Value {
        if core {
            return Value::String(opened);
        }
        if let Some(text) = opened.strip_prefix(SEALED_TEXT) {
            return Value::String(text.to_string());
        }
        // A seal that opened holds what was sealed: what does not parse after the JSON mark
        // was text, sealed so before text had its own mark, never damage.
        let json = opened
            .strip_prefix(SEALED_JSON)
            .and_then(|json| serde_json::from_str(json).ok());
        json.unwrap_or(Value::String(opened))
    }

    /// An account entry as stored, its secret fields opened, read once the store's key check
    /// opened: this key is the store's, so a value that does not open was changed in its row
    /// (an email edited by hand, a value copied from another account: the seal is bound to both).
    pub fn open_entry(&self, entry: Value) -> Result<Value> {
        self.open_entry_or(entry, |email, field| {
            Error::StoreKey(format!(
                "the {field} of {email:?} in the store does not open, though the store key is right: its row was edited or its value copied from another account (a sealed value is bound to its account's email and field); nothing was used. Put the row back as it was, or delete it from oauth_pool_entries and log in to that account again"
            ))
        })
    }

    /// `open_entry` for a store without a key check, where this key is still in question.
    pub fn open_entry_checking_key(&self, entry: Value) -> Result<Value> {
        self.open_entry_or(entry, |_, _| {
            Error::StoreKey(format!(
                "an account in the store does not open with the key from {}: is it the key this store was made with?",
                self.source
            ))
        })
    }

    /// A sealed section opened only to learn whether this key is the store's (no key check).
    pub fn open_section_checking_key(&self, name: &str, sealed: &str) -> Result<()> {
        self.open_or(&Self::aad("", name), sealed, || {
            Error::StoreKey(format!(
                "a section in the store does not open with the key from {}: is it the key this store was made with?",
                self.source
            ))
        })
        .map(|_| ())
    }

    fn open_entry_or(&self, entry: Value, refused: impl Fn(&str, &str) -> Error) -> Result<Value> {
        Self::map_secrets(entry, |email, field, value, core| {
            // Not text (a field another program added beside ours): kept as it is.
            let Value::String(sealed) = value else {
                return Ok(value.clone());
            };
            // Plain text in a field sealed for its name: stored so by someone without the key,
            // and read as it is, never as a mark.
            if !core && !is_sealed(sealed) {
                return Ok(value.clone());
            }
            // Every token this store writes is sealed: a plain one was put there by someone
            // without the key, and is not used.
            if !is_sealed(sealed) {
                return Err(Error::StoreKey(format!(
                    "the {field} of {email:?} in the store is not sealed (written without the store key?); nothing was used"
                )));
            }
            let opened =
                self.open_or(&Self::aad(email, field), sealed, || refused(email, field))?;
            Ok(Self::opened_value(opened.to_string(), core))
        })
    }

    /// An account entry with its secret fields sealed.
    pub fn seal_entry(&self, entry: Value) -> Result<Value> {
        Self::map_secrets(entry, |email, field, value, core| {
            let plain = match value {
                Value::String(s)
                    if !core && (s.starts_with(SEALED_JSON) || s.starts_with(SEALED_TEXT)) =>
                {
                    format!("{SEALED_TEXT}{s}")
                }
                Value::String(s) => s.clone(),
                other => format!("{SEALED_JSON}{other}"),
            };
            Ok(Value::String(self.seal(&Self::aad(email, field), &plain)?))
        })
    }

    /// Top-level sections (other providers' accounts, `_pending_*`, our own records) are opaque
    /// to the pool and may hold tokens: each is sealed whole.
    pub fn open_section(&self, name: &str, value: Value) -> Result<Value> {
        match value {
            Value::String(s) if is_sealed(&s) => {
                let plain = self.open_or(&Self::aad("", name), &s, || {
                    Error::StoreKey(format!(
                        "the section {name:?} in the store does not open, though the store key is right: its row in oauth_pool_top was edited or renamed (a sealed section is bound to its name); nothing was used. Put the row back as it was"
                    ))
                })?;
                serde_json::from_str(&plain)
                    .map_err(|_| Error::StoreKey(format!("the sealed section {name} is damaged")))
            }
            _ => Err(Error::StoreKey(format!(
                "the section {name:?} in the store is not sealed (written without the store key?)"
            ))),
        }
    }

    pub fn seal_section(&self, name: &str, value: &Value) -> Result<Value> {
        Ok(Value::String(
            self.seal(&Self::aad("", name), &value.to_string())?,
        ))
    }
}

pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_whole_and_an_empty_one_is_said_to_be_safe_to_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth-pool-store.key");
        std::fs::write(&path, "").unwrap();
        let e = SealKey::from_key_file(&path).err().unwrap().to_string();
        assert!(e.contains("is empty") && e.contains("Remove it"), "{e}");
        assert!(
            SealKey::create_at(&path).is_err(),
            "an existing key file is never replaced"
        );
        std::fs::remove_file(&path).unwrap();
        let made = SealKey::create_at(&path).unwrap();
        let read = SealKey::from_key_file(&path).unwrap();
        let sealed = made.seal("a@x\0refresh", "fake-token").unwrap();
        assert_eq!(&*read.open("a@x\0refresh", &sealed).unwrap(), "fake-token");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing beside the key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    fn key(byte: u8) -> SealKey {
        SealKey::from_bytes(&[byte; 32], "test").unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_their_key_and_place() {
        let k = key(7);
        let sealed = k.seal("a@x\0refresh", "fake-token-SENTINEL").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("SENTINEL"));
        assert_eq!(
            &*k.open("a@x\0refresh", &sealed).unwrap(),
            "fake-token-SENTINEL"
        );
        assert_ne!(
            sealed,
            k.seal("a@x\0refresh", "fake-token-SENTINEL").unwrap(),
            "fresh nonce"
        );
        assert_eq!(
            k.open("b@x\0refresh", &sealed).unwrap_err().code(),
            "STORE_KEY",
            "bound to its row"
        );
        assert_eq!(
            key(8).open("a@x\0refresh", &sealed).unwrap_err().code(),
            "STORE_KEY"
        );
        assert_eq!(k.open("x", "plain").unwrap_err().code(), "STORE_KEY");
        assert!(k.open("x", "enc:v1:!!!").is_err());
    }

    #[test]
    fn text_that_begins_like_a_mark_comes_back_as_written() {
        let k = key(7);
        let entry = serde_json::json!({"email": "a@x", "access": "at", "refresh": "rt",
            "apiKeyHint": "json:[1,2]", "tokenNote": "json: ask Bob",
            "secretMarked": "\u{0}text:x", "secretList": [1, 2], "secretText": "plain"});
        let sealed = k.seal_entry(entry.clone()).unwrap();
        for f in [
            "apiKeyHint",
            "tokenNote",
            "secretMarked",
            "secretList",
            "secretText",
        ] {
            assert!(is_sealed(sealed[f].as_str().unwrap()), "{f}");
        }
        assert_eq!(k.open_entry(sealed).unwrap(), entry);
        // As stores before the text mark hold them: a list sealed as JSON opens as the list.
        let mut legacy = serde_json::json!({"email": "a@x", "access": "at", "refresh": "rt"});
        legacy["access"] = k.seal("a@x\0access", "at").unwrap().into();
        legacy["refresh"] = k.seal("a@x\0refresh", "rt").unwrap().into();
        legacy["secretList"] = k.seal("a@x\0secretList", "json:[1,2]").unwrap().into();
        // Text sealed unmarked then, which does not parse after the mark, is that text.
        legacy["secretOld"] = k.seal("a@x\0secretOld", "json: ask Bob").unwrap().into();
        // Plain text under a sealed name (written without the key) is read as it is.
        legacy["tokenNote"] = "json: ask Bob".into();
        let opened = k.open_entry(legacy).unwrap();
        assert_eq!(opened["secretList"], serde_json::json!([1, 2]));
        assert_eq!(opened["secretOld"], "json: ask Bob");
        assert_eq!(opened["tokenNote"], "json: ask Bob");
    }

    #[test]
    fn entries_and_sections_are_sealed_where_they_belong() {
        let k = key(7);
        let entry =
            serde_json::json!({"email": "a@x", "access": "at", "refresh": "rt", "priority": 2});
        let sealed = k.seal_entry(entry.clone()).unwrap();
        assert!(is_sealed(sealed["access"].as_str().unwrap()));
        assert!(is_sealed(sealed["refresh"].as_str().unwrap()));
        assert_eq!(sealed["priority"], 2);
        assert_eq!(k.open_entry(sealed.clone()).unwrap(), entry);
        // Moved to another account, a sealed token does not open; a plain one is refused.
        let mut moved = sealed.clone();
        moved["email"] = "b@x".into();
        assert!(k.open_entry(moved).is_err());
        assert!(k.open_entry(entry).is_err());
        // A key under a name the pool does not read is sealed too, and read plain as written
        // before; the pool's own fingerprint is left as it is.
        let other = serde_json::json!({"email": "a@x", "type": "api", "apiKey": "SENTINEL-1",
            "client_secret": "SENTINEL-2", "authErrorToken": "fp", "note": "n", "keys": 3});
        let sealed = k.seal_entry(other.clone()).unwrap();
        assert!(!sealed.to_string().contains("SENTINEL"), "{sealed}");
        assert_eq!(sealed["authErrorToken"], "fp");
        assert_eq!(sealed["note"], "n");
        assert_eq!(k.open_entry(sealed).unwrap(), other);
        assert_eq!(k.open_entry(other.clone()).unwrap(), other);
        // A credential under any name, found by what it holds: a token's text, or an object or
        // list holding one or a field named for one; counters named `*_tokens` stay readable.
        let held = serde_json::json!({"email": "a@x", "bearer": "sk-ant-oat01-SENTINEL-3",
            "oauth": {"refresh_token": "SENTINEL-4", "scope": "x"},
            "headers": ["Authorization: Bearer sk-ant-oat01-SENTINEL-5"],
            "usage": {"input_tokens": 5, "output_tokens": 7}, "quota": {"fiveHour": {"utilization": 0.1}}});
        let sealed = k.seal_entry(held.clone()).unwrap();
        assert!(!sealed.to_string().contains("SENTINEL"), "{sealed}");
        assert_eq!(sealed["usage"], held["usage"]);
        assert_eq!(sealed["quota"], held["quota"]);
        assert_eq!(k.open_entry(sealed.clone()).unwrap(), held);
        let mut moved = sealed;
        moved["email"] = "b@x".into();
        assert!(
            k.open_entry(moved).is_err(),
            "bound to its account as any sealed value"
        );
        let section = serde_json::json!([{"token": "t"}]);
        let sealed = k.seal_section("openai", &section).unwrap();
        assert_eq!(k.open_section("openai", sealed.clone()).unwrap(), section);
        assert!(k.open_section("other", sealed).is_err());
        assert!(k.open_section("openai", section).is_err());
    }

    #[test]
    fn keys_are_read_as_hex_or_base64() {
        assert_eq!(parse_key(&"ab".repeat(32)).unwrap().len(), 32);
        assert_eq!(parse_key(&STANDARD.encode([1u8; 32])).unwrap().len(), 32);
        assert!(parse_key("short").is_none());
        assert!(parse_key(&STANDARD.encode([1u8; 16])).is_none());
        assert!(!format!("{:?}", key(1)).contains("\\x01"));
    }
}
