//! One pool file's live state inside this process, shared by every `createPoolFetch` and plugin
//! instance that names the same file: the parsed pool (re-read only when the file changes),
//! the in-flight refreshes, session pins, and batched bookkeeping.
//!
//! The credential protocol lives here: a refresh token is presented at most once machine-wide.
//! In-process, refreshes of one account are single-flight (a tokio mutex per account). Across
//! processes, a per-account lock file is held from re-read through the HTTP call to the durable
//! write; whoever gets it second re-reads the file and adopts the fresher token instead.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::account::{iso_time, normalize_email, now_ms, Account, Pool, Status};
use crate::error::{Error, Result};
use crate::oauth;
use crate::ratelimit::{Cooldown, Limits};
use crate::secret::Secret;
use crate::store::{FileLock, FileStamp, Store};

/// Refresh this long before expiry so requests in flight never carry a dying token.
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;
const REFRESH_LOCK_TIMEOUT: Duration = Duration::from_secs(75);
/// Bookkeeping (lastUsed, active, quota) is written at most this often per process.
const FLUSH_DELAY: Duration = Duration::from_millis(1000);
/// Session pins are forgotten after this long without a request.
const SESSION_TTL: Duration = Duration::from_secs(6 * 3600);
/// After a token-endpoint failure without `retry-after`, wait this long before trying again.
const TOKEN_BACKOFF_DEFAULT_MS: i64 = 30_000;

pub enum Credential {
    Bearer(Secret),
    ApiKey(Secret),
}

#[derive(Default)]
struct Bookkeeping {
    last_used: HashMap<String, i64>,
    active: Option<String>,
    quota: HashMap<String, Value>,
    last_error: HashMap<String, String>,
    last_failover: Option<Value>,
}

pub struct PoolRuntime {
    store: Store,
    cache: Mutex<Option<(FileStamp, Arc<Pool>)>>,
    refreshing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Tokens obtained by a refresh whose write to the file failed: used until a write succeeds.
    unsaved: Mutex<HashMap<String, (Secret, Secret, i64)>>,
    /// Cooldowns and auth errors this process decided, applied before the file catches up.
    cooling: Mutex<HashMap<String, i64>>,
    auth_failed: Mutex<HashMap<String, Instant>>,
    sticky: Mutex<Option<String>>,
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    pending: Mutex<Bookkeeping>,
    flush_scheduled: AtomicBool,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<PoolRuntime>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Arc<PoolRuntime>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking file work on tokio's blocking pool, never on a worker or the JS thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::InvalidArgument(format!("background task failed: {e}")))?
}

impl PoolRuntime {
    /// The shared runtime for `path`: two plugin instances in one process get the same one, so
    /// they share single-flight refreshes and never wait on each other's file locks.
    pub fn for_path(path: &Path) -> Arc<PoolRuntime> {
        let mut reg = lock(registry());
        reg.entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(PoolRuntime {
                    store: Store::new(path),
                    cache: Mutex::new(None),
                    refreshing: Mutex::default(),
                    unsaved: Mutex::default(),
                    cooling: Mutex::default(),
                    auth_failed: Mutex::default(),
                    sticky: Mutex::new(None),
                    sessions: Mutex::default(),
                    pending: Mutex::default(),
                    flush_scheduled: AtomicBool::new(false),
                })
            })
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The pool as the file says now. A `stat` per call; the file is parsed only when changed.
    pub async fn snapshot(&self) -> Result<Arc<Pool>> {
        let stamp = self.store.stamp();
        if let (Some(stamp), Some((cached, pool))) = (stamp, lock(&self.cache).as_ref()) {
            if *cached == stamp {
                return Ok(pool.clone());
            }
        }
        let store = self.store.clone();
        let (pool, stamp) = blocking(move || store.load_stamped()).await?;
        let pool = Arc::new(pool);
        if let Some(stamp) = stamp {
            *lock(&self.cache) = Some((stamp, pool.clone()));
        }
        Ok(pool)
    }

    /// Whether `a` may serve a request now, including what this process learned but has not
    /// seen land in the file yet.
    pub fn usable(&self, a: &Account, now: i64) -> bool {
        let key = normalize_email(&a.email);
        if !a.usable_at(now) {
            return false;
        }
        if lock(&self.cooling).get(&key).is_some_and(|t| *t > now) {
            return false;
        }
        !lock(&self.auth_failed).contains_key(&key)
    }

    /// The moment this account becomes usable again, if it is only cooling.
    pub fn cooling_until(&self, a: &Account, now: i64) -> Option<i64> {
        let key = normalize_email(&a.email);
        if !a.is_enabled()
            || a.status_enum() == Some(Status::AuthError)
            || !a.has_credential()
            || lock(&self.auth_failed).contains_key(&key)
        {
            return None;
        }
        let mine = lock(&self.cooling).get(&key).copied();
        let until = a.rate_limit_until.max(mine)?;
        (until > now).then_some(until)
    }

    pub fn five_hour(&self, a: &Account) -> Option<(f64, Option<i64>)> {
        let key = normalize_email(&a.email);
        let pending = lock(&self.pending).quota.get(&key).cloned();
        let q = pending.or_else(|| a.extra.get("quota").cloned())?;
        let w = q.get("fiveHour")?;
        let u = w.get("utilization")?.as_f64()?;
        Some((u, w.get("resetsAt").and_then(Value::as_i64)))
    }

    // ---- session pins -------------------------------------------------------------------

    pub fn pinned(&self, session: Option<&str>, parent: Option<&str>) -> Option<String> {
        let sessions = lock(&self.sessions);
        let live = |id: &str| {
            sessions
                .get(id)
                .filter(|(_, at)| at.elapsed() < SESSION_TTL)
                .map(|(e, _)| e.clone())
        };
        session.and_then(live).or_else(|| parent.and_then(live))
    }

    pub fn sticky(&self) -> Option<String> {
        lock(&self.sticky).clone()
    }

    // ---- credentials ----------------------------------------------------------------------

    /// A credential for `email` from `pool` (the caller's snapshot), fresh enough to send.
    /// Refreshes (once, machine-wide) when the access token is within the margin of its expiry.
    pub async fn credential(&self, pool: &Pool, email: &str) -> Result<Credential> {
        let account = pool
            .find(email)
            .ok_or_else(|| Error::AccountNotFound(email.to_string()))?;
        if account.is_api_key() {
            return account
                .key
                .clone()
                .map(Credential::ApiKey)
                .ok_or_else(|| Error::NoUsableAccount(format!("{email} has no API key")));
        }
        if let Some((access, _, expires)) = lock(&self.unsaved).get(&normalize_email(email)) {
            if *expires - REFRESH_MARGIN_MS > now_ms() {
                return Ok(Credential::Bearer(access.clone()));
            }
        }
        if let Some(access) = fresh_access(account, now_ms()) {
            return Ok(Credential::Bearer(access));
        }
        self.refresh_account(email, None)
            .await
            .map(Credential::Bearer)
    }

    /// After a 401: adopt a token another process wrote, or refresh even though the clock says
    /// the token is valid (servers revoke early). `rejected` is the token that got the 401.
    pub async fn after_unauthorized(&self, email: &str, rejected: &Secret) -> Result<Secret> {
        self.refresh_account(email, Some(rejected)).await
    }

    async fn refresh_account(&self, email: &str, rejected: Option<&Secret>) -> Result<Secret> {
        let key = normalize_email(email);
        let flight = lock(&self.refreshing)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _in_process = flight.lock().await;

        // Whoever held the flight before us may have refreshed already.
        let usable_now = |a: &Account| -> Option<Secret> {
            let access = fresh_access(a, now_ms())?;
            match rejected {
                Some(r) if r == &access => None,
                _ => Some(access),
            }
        };
        if let Some((access, _, expires)) = lock(&self.unsaved).get(&key) {
            if *expires - REFRESH_MARGIN_MS > now_ms() && rejected != Some(access) {
                return Ok(access.clone());
            }
        }
        let pool = self.snapshot().await?;
        let account = pool
            .find(email)
            .ok_or_else(|| Error::AccountNotFound(email.to_string()))?;
        if let Some(access) = usable_now(account) {
            return Ok(access);
        }

        // Across processes: hold the account's refresh lock from re-read to durable write.
        let lock_path = refresh_lock_path(self.store.path(), &key);
        let file_lock =
            blocking(move || FileLock::acquire(&lock_path, REFRESH_LOCK_TIMEOUT)).await?;
        let store = self.store.clone();
        let pool = blocking(move || store.load()).await?;
        let account = pool
            .find(email)
            .ok_or_else(|| Error::AccountNotFound(email.to_string()))?
            .clone();
        if let Some(access) = usable_now(&account) {
            tracing::debug!(account = %email, "adopted a token another process refreshed");
            return Ok(access);
        }
        let presented = match lock(&self.unsaved).get(&key) {
            Some((_, refresh, _)) => refresh.clone(),
            None => account
                .refresh
                .clone()
                .filter(|r| !r.is_empty())
                .ok_or_else(|| {
                    Error::OAuthInvalidGrant("the account has no refresh token".into())
                })?,
        };
        let backoff = account
            .extra
            .get("refreshBackoffUntil")
            .and_then(Value::as_i64)
            .filter(|t| *t > now_ms());
        if let Some(until) = backoff {
            let err = Error::OAuthHttp {
                status: 429,
                detail: format!(
                    "the token endpoint asked us to wait until {}",
                    iso_time(until)
                ),
                retry_after: Some(((until - now_ms()) / 1000).max(1) as u64),
            };
            return self.serve_old_or(&account, rejected, err);
        }

        tracing::debug!(account = %email, token = %presented.fingerprint(), "refreshing access token");
        let mut outcome = oauth::refresh(&presented).await;
        if let Err(Error::Network { .. }) = &outcome {
            // The server may have rotated the token and lost the answer. One more try with the
            // same token settles it: success, or invalid_grant (then a login is needed). Never
            // a loop.
            tokio::time::sleep(Duration::from_millis(250)).await;
            outcome = oauth::refresh(&presented).await;
        }
        let result = match outcome {
            Ok(tokens) => {
                let (access, refresh, expires) = (
                    tokens.access.clone(),
                    tokens.refresh.clone(),
                    tokens.expires,
                );
                let store = self.store.clone();
                let who = email.to_string();
                let write = blocking(move || {
                    store.update(|pool| {
                        // An account removed meanwhile stays removed.
                        if let Some(a) = pool.find_mut(&who) {
                            a.access = Some(access);
                            a.refresh = Some(refresh);
                            a.expires = Some(expires);
                            a.extra.remove("refreshBackoffUntil");
                            if a.status_enum() == Some(Status::AuthError) {
                                a.status = Status::Idle.as_str().into();
                            }
                        }
                        Ok(())
                    })
                })
                .await;
                if let Err(e) = write {
                    tracing::warn!(account = %email, error = %e, "refreshed, but could not save the new token; keeping it in memory");
                    lock(&self.unsaved).insert(
                        key.clone(),
                        (
                            tokens.access.clone(),
                            tokens.refresh.clone(),
                            tokens.expires,
                        ),
                    );
                } else {
                    lock(&self.unsaved).remove(&key);
                }
                lock(&self.auth_failed).remove(&key);
                Ok(tokens.access)
            }
            Err(Error::OAuthInvalidGrant(reason)) => {
                // Someone outside our lock may have rotated it: adopt a newer token if the file
                // has one, otherwise the account needs a new login. Tokens are never deleted.
                let store = self.store.clone();
                let reread = blocking(move || store.load()).await?;
                let newer = reread
                    .find(email)
                    .filter(|a| a.refresh.as_ref() != Some(&presented));
                if let Some(access) = newer.and_then(|a| fresh_access(a, now_ms())) {
                    Ok(access)
                } else {
                    self.mark_auth_error(
                        email,
                        &format!("refresh token rejected ({reason}): log in again"),
                    )
                    .await;
                    Err(Error::OAuthInvalidGrant(reason))
                }
            }
            Err(e) => {
                let wait_ms = match &e {
                    Error::OAuthHttp {
                        retry_after: Some(s),
                        ..
                    } => (*s as i64) * 1000,
                    _ => TOKEN_BACKOFF_DEFAULT_MS,
                };
                let until = now_ms() + wait_ms;
                let store = self.store.clone();
                let who = email.to_string();
                let _ = blocking(move || {
                    store.update(|pool| {
                        if let Some(a) = pool.find_mut(&who) {
                            a.extra.insert("refreshBackoffUntil".into(), json!(until));
                        }
                        Ok(())
                    })
                })
                .await;
                self.serve_old_or(&account, rejected, e)
            }
        };
        drop(file_lock);
        self.invalidate_cache();
        result
    }

    /// After a transient refresh failure, an access token that has not expired still works.
    fn serve_old_or(
        &self,
        account: &Account,
        rejected: Option<&Secret>,
        err: Error,
    ) -> Result<Secret> {
        match (&account.access, account.expires) {
            (Some(a), Some(exp)) if exp > now_ms() + 10_000 && rejected != Some(a) => Ok(a.clone()),
            _ => Err(err),
        }
    }

    fn invalidate_cache(&self) {
        *lock(&self.cache) = None;
    }

    // ---- state changes ---------------------------------------------------------------------

    pub async fn mark_auth_error(&self, email: &str, why: &str) {
        let key = normalize_email(email);
        lock(&self.auth_failed).insert(key, Instant::now());
        let store = self.store.clone();
        let who = email.to_string();
        let why = why.to_string();
        let result = blocking(move || {
            store.update(|pool| {
                if let Some(a) = pool.find_mut(&who) {
                    a.status = Status::AuthError.as_str().into();
                    a.extra.insert("lastError".into(), json!(why));
                }
                Ok(())
            })
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(account = %email, error = %e, "could not record auth-error");
        }
        self.invalidate_cache();
    }

    /// Records a cooldown at once in memory (this process skips the account immediately) and
    /// returns the write to the file, for the caller to await off the failover path.
    /// Concurrent 429s on one account produce one write, not a storm.
    pub fn cool(
        self: &Arc<Self>,
        email: &str,
        cooldown: &Cooldown,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let key = normalize_email(email);
        {
            let mut cooling = lock(&self.cooling);
            if cooling.get(&key).is_some_and(|t| *t >= cooldown.until) {
                return None;
            }
            cooling.insert(key, cooldown.until);
        }
        let store = self.store.clone();
        let who = email.to_string();
        let until = cooldown.until;
        let why = cooldown.describe();
        let me = self.clone();
        Some(tokio::spawn(async move {
            let result = blocking(move || {
                store.update(|pool| {
                    if let Some(a) = pool.find_mut(&who) {
                        // Cooldowns only move forward; only reset-cooldowns shortens one.
                        let merged = a.rate_limit_until.map_or(until, |t| t.max(until));
                        a.rate_limit_until = Some(merged);
                        if a.status_enum() != Some(Status::AuthError) && a.is_enabled() {
                            a.status = Status::RateLimited.as_str().into();
                        }
                        a.extra.insert("lastError".into(), json!(why));
                    }
                    Ok(())
                })
            })
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not record a cooldown in the pool file");
            }
            me.invalidate_cache();
        }))
    }

    /// Bookkeeping after a served request: batched, never a write per request.
    pub fn served(self: &Arc<Self>, email: &str, session: Option<&str>, limits: Option<&Limits>) {
        let key = normalize_email(email);
        let now = now_ms();
        *lock(&self.sticky) = Some(email.to_string());
        if let Some(s) = session {
            let mut sessions = lock(&self.sessions);
            if sessions.len() > 10_000 {
                sessions.retain(|_, (_, at)| at.elapsed() < SESSION_TTL);
            }
            sessions.insert(s.to_string(), (email.to_string(), Instant::now()));
        }
        {
            let mut p = lock(&self.pending);
            p.last_used.insert(key.clone(), now);
            p.active = Some(key.clone());
            if let Some(q) = limits.and_then(|l| quota_json(l, now)) {
                p.quota.insert(key, q);
            }
        }
        lock(&self.cooling).retain(|_, t| *t > now);
        self.schedule_flush();
    }

    pub fn note_error(self: &Arc<Self>, email: &str, message: &str) {
        lock(&self.pending)
            .last_error
            .insert(normalize_email(email), message.to_string());
        self.schedule_flush();
    }

    pub fn note_failover(self: &Arc<Self>, from: &str, to: Option<&str>, reason: &str) {
        lock(&self.pending).last_failover = Some(json!({
            "at": now_ms(), "from": from, "to": to, "reason": reason
        }));
        self.schedule_flush();
    }

    fn schedule_flush(self: &Arc<Self>) {
        if self.flush_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_DELAY).await;
            me.flush().await;
        });
    }

    /// Writes pending bookkeeping in one locked update.
    pub async fn flush(self: &Arc<Self>) {
        self.flush_scheduled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *lock(&self.pending));
        if batch.last_used.is_empty()
            && batch.quota.is_empty()
            && batch.last_error.is_empty()
            && batch.last_failover.is_none()
        {
            return;
        }
        let store = self.store.clone();
        let result = blocking(move || {
            store.update(|pool| {
                apply_bookkeeping(pool, &batch, now_ms());
                Ok(())
            })
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not write usage bookkeeping");
        }
        self.invalidate_cache();
    }

    pub fn reset_memory(&self) {
        lock(&self.cooling).clear();
        lock(&self.auth_failed).clear();
    }
}

fn apply_bookkeeping(pool: &mut Pool, batch: &Bookkeeping, now: i64) {
    for a in pool.accounts_mut() {
        let key = normalize_email(&a.email);
        // A cooldown that has passed is cleared in the file too.
        if a.status_enum() == Some(Status::RateLimited) && !a.cooling_at(now) {
            a.status = Status::Idle.as_str().into();
            a.rate_limit_until = None;
        }
        if a.rate_limit_until.is_some() && !a.cooling_at(now) {
            a.rate_limit_until = None;
        }
        if let Some(t) = batch.last_used.get(&key) {
            let newer = a.last_used_ms() < *t;
            if newer {
                a.last_used = Some(iso_time(*t));
            }
        }
        if let Some(active) = &batch.active {
            let status = a.status_enum();
            if &key == active {
                if a.is_enabled() && status != Some(Status::AuthError) && !a.cooling_at(now) {
                    a.status = Status::Active.as_str().into();
                }
            } else if status == Some(Status::Active) {
                a.status = Status::Idle.as_str().into();
            }
        }
        if let Some(q) = batch.quota.get(&key) {
            a.extra.insert("quota".into(), q.clone());
        }
        if let Some(e) = batch.last_error.get(&key) {
            a.extra.insert("lastError".into(), json!(e));
        }
    }
    if let Some(f) = &batch.last_failover {
        pool.extra.insert("lastFailover".into(), f.clone());
    }
}

fn quota_json(limits: &Limits, now: i64) -> Option<Value> {
    if !limits.has_quota_info() {
        return None;
    }
    let window = |claim: &str| {
        limits.window(claim).map(
            |w| json!({ "utilization": w.utilization, "resetsAt": w.reset, "status": w.status }),
        )
    };
    let mut q = serde_json::Map::new();
    if let Some(w) = window("5h") {
        q.insert("fiveHour".into(), w);
    }
    if let Some(w) = window("7d") {
        q.insert("sevenDay".into(), w);
    }
    if let Some(s) = &limits.status {
        q.insert("status".into(), json!(s));
    }
    q.insert("updatedAt".into(), json!(now));
    Some(Value::Object(q))
}

/// The access token if it is present and not within the refresh margin of its expiry. An
/// unknown expiry is trusted: a 401 will tell.
fn fresh_access(a: &Account, now: i64) -> Option<Secret> {
    let access = a.access.clone().filter(|s| !s.is_empty())?;
    match a.expires {
        Some(exp) if exp - REFRESH_MARGIN_MS <= now => None,
        _ => Some(access),
    }
}

pub fn refresh_lock_path(pool: &Path, email_key: &str) -> PathBuf {
    let digest = Sha256::digest(email_key.as_bytes());
    let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    let mut name = pool.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{tag}.refresh.lock"));
    pool.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bookkeeping_moves_active_and_clears_passed_cooldowns() {
        let now = now_ms();
        let mut pool = Pool::default();
        pool.upsert(Account::new_oauth(
            "a@x",
            "a".into(),
            "r".into(),
            now + 1e7 as i64,
            now,
        ));
        pool.upsert(Account::new_oauth(
            "b@x",
            "a".into(),
            "r".into(),
            now + 1e7 as i64,
            now,
        ));
        pool.find_mut("a@x").unwrap().status = "active".into();
        pool.find_mut("b@x").unwrap().status = "rate-limited".into();
        pool.find_mut("b@x").unwrap().rate_limit_until = Some(now - 5);
        let mut batch = Bookkeeping::default();
        batch.last_used.insert("b@x".into(), now);
        batch.active = Some("b@x".into());
        apply_bookkeeping(&mut pool, &batch, now);
        assert_eq!(pool.find("a@x").unwrap().status, "idle");
        assert_eq!(pool.find("b@x").unwrap().status, "active");
        assert_eq!(pool.find("b@x").unwrap().rate_limit_until, None);
        assert_eq!(pool.find("b@x").unwrap().last_used_ms(), now);
    }

    #[test]
    fn refresh_lock_paths_are_per_account_and_stable() {
        let p = Path::new("/tmp/x/oauth-pool.json");
        assert_eq!(refresh_lock_path(p, "a@x"), refresh_lock_path(p, "a@x"));
        assert_ne!(refresh_lock_path(p, "a@x"), refresh_lock_path(p, "b@x"));
        assert!(refresh_lock_path(p, "a@x")
            .to_string_lossy()
            .ends_with(".refresh.lock"));
    }
}
