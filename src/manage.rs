//! Account management used by the plugin's tool, the CLI and the library: add, remove, enable,
//! priorities, cooldown reset, import, and the views people read (no secrets in any of them).
//! Every change goes through `Store::update` (locked read-modify-write).

use std::path::Path;

use serde_json::{json, Value};

use crate::account::{normalize_email, now_ms, Account, Pool, Status};
use crate::error::{Error, Result};
use crate::oauth::Tokens;
use crate::secret::Secret;
use crate::store::Store;

pub fn summary(a: &Account, now: i64) -> Value {
    json!({
        "email": a.email,
        "type": if a.is_api_key() { "api" } else { "oauth" },
        "status": a.effective_status(now).as_str(),
        "rateLimitUntil": a.rate_limit_until.filter(|t| *t > now),
        "priority": a.priority(),
        "enabled": a.is_enabled(),
        "added": a.added,
        "lastUsed": a.last_used,
        "expires": a.expires,
        "lastError": a.extra.get("lastError").and_then(Value::as_str),
        "quota": a.extra.get("quota").cloned(),
    })
}

pub fn list(pool: &Pool, now: i64) -> Vec<Value> {
    pool.accounts().map(|a| summary(a, now)).collect()
}

pub fn status(pool: &Pool, path: &Path, now: i64) -> Value {
    let count = |status: Status| {
        pool.accounts()
            .filter(|a| a.effective_status(now) == status)
            .count()
    };
    let invalid: Vec<Value> = pool
        .invalid_entries()
        .map(|(i, r)| json!({"index": i, "reason": r}))
        .collect();
    let soonest = pool
        .accounts()
        .filter_map(|a| a.rate_limit_until.filter(|t| *t > now))
        .min();
    json!({
        "path": path.display().to_string(),
        "accounts": list(pool, now),
        "counts": {
            "active": count(Status::Active),
            "idle": count(Status::Idle),
            "rate-limited": count(Status::RateLimited),
            "auth-error": count(Status::AuthError),
            "disabled": count(Status::Disabled),
            "invalid": invalid.len(),
            "total": pool.accounts().count(),
            "usable": pool.accounts().filter(|a| a.usable_at(now)).count(),
        },
        "soonestReset": soonest,
        "lastFailover": pool.extra.get("lastFailover").cloned(),
        "invalid": invalid,
    })
}

/// Adds an OAuth account from a completed login; the same email again updates its tokens.
pub fn add_oauth(store: &Store, tokens: &Tokens) -> Result<(String, bool)> {
    let email = tokens
        .email
        .clone()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| format!("unknown-{}@anthropic-pool", tokens.refresh.fingerprint()));
    let now = now_ms();
    let account = Account::new_oauth(
        &email,
        tokens.access.clone(),
        tokens.refresh.clone(),
        tokens.expires,
        now,
    );
    let added = store.update(|pool| Ok(pool.upsert(account)))?;
    Ok((email, added))
}

pub fn add_api_key(store: &Store, key: &str, email: Option<&str>) -> Result<(String, bool)> {
    let key = key.trim();
    if key.len() < 8 || key.chars().any(char::is_whitespace) {
        return Err(Error::InvalidArgument(
            "that does not look like an API key (expected something like sk-ant-api03-...)".into(),
        ));
    }
    let secret = Secret::new(key);
    let email = email
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("api-key-{}", secret.fingerprint()));
    let account = Account::new_api_key(&email, secret, now_ms());
    let added = store.update(|pool| Ok(pool.upsert(account)))?;
    Ok((email, added))
}

pub fn remove(store: &Store, email: &str) -> Result<usize> {
    store.update(|pool| match pool.remove(email) {
        0 => Err(Error::AccountNotFound(email.to_string())),
        n => Ok(n),
    })
}

pub fn set_enabled(store: &Store, email: &str, enabled: bool) -> Result<()> {
    store.update(|pool| {
        let a = pool
            .find_mut(email)
            .ok_or_else(|| Error::AccountNotFound(email.to_string()))?;
        if enabled {
            a.enabled = None;
            if a.status_enum() == Some(Status::Disabled) {
                a.status = Status::Idle.as_str().into();
            }
        } else {
            a.enabled = Some(false);
            a.status = Status::Disabled.as_str().into();
        }
        Ok(())
    })
}

pub fn set_priority(store: &Store, email: &str, priority: i64) -> Result<()> {
    store.update(|pool| {
        let a = pool
            .find_mut(email)
            .ok_or_else(|| Error::AccountNotFound(email.to_string()))?;
        a.priority = Some(priority);
        Ok(())
    })
}

pub fn reset_cooldowns(store: &Store) -> Result<usize> {
    store.update(|pool| {
        let mut changed = 0;
        for a in pool.accounts_mut() {
            let cooling =
                a.rate_limit_until.is_some() || a.status_enum() == Some(Status::RateLimited);
            if cooling {
                a.rate_limit_until = None;
                if a.status_enum() == Some(Status::RateLimited) {
                    a.status = Status::Idle.as_str().into();
                }
                changed += 1;
            }
            a.extra.remove("refreshBackoffUntil");
        }
        Ok(changed)
    })
}

/// Reads Claude Code's `~/.claude/.credentials.json` (`claudeAiOauth`) into the pool. The
/// caller supplies the email when the file has none (it usually has none).
pub fn import_claude_code(credentials: &Path, email: Option<&str>) -> Result<Tokens> {
    let bytes = std::fs::read(credentials)
        .map_err(|e| Error::io(credentials, "read Claude Code credentials", e))?;
    let bytes = zeroize::Zeroizing::new(bytes);
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidArgument(format!("{} is not JSON: {e}", credentials.display()))
    })?;
    let o = v.get("claudeAiOauth").unwrap_or(&v);
    let s = |k: &str| o.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let access = s("accessToken").ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} holds no claudeAiOauth.accessToken",
            credentials.display()
        ))
    })?;
    let refresh = s("refreshToken").ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} holds no claudeAiOauth.refreshToken",
            credentials.display()
        ))
    })?;
    let expires = o.get("expiresAt").and_then(Value::as_i64).unwrap_or(0);
    let email = email
        .map(normalize_email)
        .or_else(|| s("email").map(str::to_string));
    Ok(Tokens {
        access: Secret::new(access),
        refresh: Secret::new(refresh),
        expires,
        email,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("p.json"));
        let t = Tokens {
            access: "a".into(),
            refresh: "r".into(),
            expires: now_ms() + 3_600_000,
            email: Some("a@x".into()),
        };
        assert_eq!(add_oauth(&store, &t).unwrap(), ("a@x".into(), true));
        assert_eq!(add_oauth(&store, &t).unwrap(), ("a@x".into(), false));
        let (email, added) = add_api_key(&store, "fake-console-key-xyz", None).unwrap();
        assert!(added && email.starts_with("api-key-"));
        assert!(add_api_key(&store, "short", None).is_err());
        set_priority(&store, "a@x", 3).unwrap();
        set_enabled(&store, "a@x", false).unwrap();
        let pool = store.load().unwrap();
        let s = status(&pool, store.path(), now_ms());
        assert_eq!(s["counts"]["disabled"], json!(1));
        assert_eq!(s["counts"]["total"], json!(2));
        let text = s.to_string();
        assert!(!text.contains("fake-console-key-xyz") && !text.contains("\"r\""));
        set_enabled(&store, "a@x", true).unwrap();
        store
            .update(|p| {
                let a = p.find_mut("a@x").unwrap();
                a.status = "rate-limited".into();
                a.rate_limit_until = Some(now_ms() + 60_000);
                Ok(())
            })
            .unwrap();
        assert_eq!(reset_cooldowns(&store).unwrap(), 1);
        assert_eq!(store.load().unwrap().find("a@x").unwrap().status, "idle");
        assert_eq!(
            remove(&store, "nobody@x").unwrap_err().code(),
            "ACCOUNT_NOT_FOUND"
        );
        assert_eq!(remove(&store, "A@x").unwrap(), 1);
    }

    #[test]
    fn claude_code_credentials_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join(".credentials.json");
        std::fs::write(
            &creds,
            r#"{"claudeAiOauth":{"accessToken":"at","refreshToken":"rt","expiresAt":1800000000000,"scopes":[]}}"#,
        )
        .unwrap();
        let t = import_claude_code(&creds, Some("Me@X")).unwrap();
        assert_eq!(t.email.as_deref(), Some("me@x"));
        assert_eq!(t.expires, 1_800_000_000_000);
        std::fs::write(&creds, "{}").unwrap();
        assert!(import_claude_code(&creds, None).is_err());
    }
}
