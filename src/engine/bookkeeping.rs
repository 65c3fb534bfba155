//! Writes that record what happened (cooldowns, refusals, last use, quota, errors), batched and
//! never on an answer's path: the decision is already in the overlay, the file catches up in the
//! background. Cooldowns and refusals are written at once (other processes must honour them);
//! last-use bookkeeping at most once a second. A write that fails is kept and tried again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::overlay::lock;
use super::Engine;
use crate::account::{iso_time, now_ms, Pool, Status};
use crate::secret::scrub_tokens;

const FLUSH_DELAY: Duration = Duration::from_millis(1000);
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Default, Clone)]
pub struct Pending {
    last_used: HashMap<String, i64>,
    active: Option<String>,
    quota: HashMap<String, Value>,
    last_error: HashMap<String, String>,
    last_failover: Option<Value>,
    /// email -> (until, why)
    cooldowns: HashMap<String, (i64, String)>,
    /// email -> (tag of the refused credential, why)
    refused: HashMap<String, (Option<String>, String)>,
    refresh_backoff: HashMap<String, i64>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.last_used.is_empty()
            && self.active.is_none()
            && self.quota.is_empty()
            && self.last_error.is_empty()
            && self.last_failover.is_none()
            && self.cooldowns.is_empty()
            && self.refused.is_empty()
            && self.refresh_backoff.is_empty()
    }

    /// Puts back a batch whose write failed; whatever was recorded since is newer and wins.
    fn merge_older(&mut self, old: Pending) {
        for (k, v) in old.last_used {
            self.last_used.entry(k).or_insert(v);
        }
        if self.active.is_none() {
            self.active = old.active;
        }
        for (k, v) in old.quota {
            self.quota.entry(k).or_insert(v);
        }
        for (k, v) in old.last_error {
            self.last_error.entry(k).or_insert(v);
        }
        if self.last_failover.is_none() {
            self.last_failover = old.last_failover;
        }
        for (k, v) in old.cooldowns {
            let e = self.cooldowns.entry(k).or_insert(v.clone());
            if v.0 > e.0 {
                *e = v;
            }
        }
        for (k, v) in old.refused {
            self.refused.entry(k).or_insert(v);
        }
        for (k, v) in old.refresh_backoff {
            self.refresh_backoff.entry(k).or_insert(v);
        }
    }
}

#[derive(Default)]
pub struct Bookkeeping {
    pending: Mutex<Pending>,
    scheduled: AtomicBool,
    /// One flush at a time; `flush()` returning means every earlier write has finished.
    flushing: tokio::sync::Mutex<()>,
    retry_delay: Mutex<Option<Duration>>,
}

impl Bookkeeping {
    pub fn record(&self, change: impl FnOnce(&mut Pending)) {
        change(&mut lock(&self.pending));
    }
}

impl Pending {
    pub fn served(&mut self, email: &str, now: i64, quota: Option<Value>) {
        self.last_used.insert(email.to_string(), now);
        self.active = Some(email.to_string());
        if let Some(q) = quota {
            self.quota.insert(email.to_string(), q);
        }
    }

    pub fn error(&mut self, email: &str, message: &str) {
        self.last_error
            .insert(email.to_string(), scrub_tokens(message));
    }

    pub fn failover(&mut self, from: &str, to: Option<&str>, reason: &str, now: i64) {
        self.last_failover = Some(json!({ "at": now, "from": from, "to": to, "reason": reason }));
    }

    pub fn cooldown(&mut self, email: &str, until: i64, why: &str) {
        let e = self
            .cooldowns
            .entry(email.to_string())
            .or_insert((until, why.to_string()));
        if until >= e.0 {
            *e = (until, why.to_string());
        }
    }

    pub fn refused(&mut self, email: &str, tag: Option<String>, why: &str) {
        self.refused
            .insert(email.to_string(), (tag, scrub_tokens(why)));
    }

    pub fn refresh_backoff(&mut self, email: &str, until: i64) {
        self.refresh_backoff.insert(email.to_string(), until);
    }
}

impl Engine {
    /// Records bookkeeping and makes sure a write follows: at once when `urgent` (cooldowns,
    /// refusals), else within a second.
    pub(crate) fn note(self: &Arc<Self>, urgent: bool, change: impl FnOnce(&mut Pending)) {
        self.book.record(change);
        if urgent {
            let me = self.clone();
            tokio::spawn(async move { me.flush().await });
        } else if !self.book.scheduled.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_DELAY).await;
                me.flush().await;
            });
        }
    }

    /// Writes everything pending now (and tokens a refresh could not save before), and returns
    /// once every earlier write has finished. A failed write is kept for the next try.
    pub async fn flush(self: &Arc<Self>) {
        let _one = self.book.flushing.lock().await;
        self.book.scheduled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *lock(&self.book.pending));
        if batch.is_empty() && !self.credentials.has_unsaved() {
            return;
        }
        let copy = batch.clone();
        let result = self
            .write(move |pool| {
                apply(pool, &copy, now_ms());
                Ok(())
            })
            .await;
        match result {
            Ok(()) => *lock(&self.book.retry_delay) = None,
            Err(e) => {
                tracing::warn!(error = %e, "could not write to the pool; will try again");
                lock(&self.book.pending).merge_older(batch);
                let delay = {
                    let mut d = lock(&self.book.retry_delay);
                    let next = d.map_or(RETRY_MIN, |d| (d * 2).min(RETRY_MAX));
                    *d = Some(next);
                    next
                };
                self.retry_later(delay);
            }
        }
    }

    /// Tries the pending writes again after `delay` (also how unsaved tokens get saved when
    /// nothing else happens).
    pub(crate) fn retry_later(self: &Arc<Self>, delay: Duration) {
        if self.book.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            me.flush().await;
        });
    }
}

fn apply(pool: &mut Pool, batch: &Pending, now: i64) {
    for a in pool.accounts_mut() {
        let email = a.email.clone();
        // A cooldown that has passed is cleared in the file too.
        if a.status_enum() == Some(Status::RateLimited) && !a.cooling_at(now) {
            a.status = Status::Idle.as_str().into();
        }
        if a.rate_limit_until.is_some() && !a.cooling_at(now) {
            a.clear_cooldown();
        }
        if let Some((until, why)) = batch.cooldowns.get(&email) {
            // Cooldowns only move forward; only reset-cooldowns shortens one.
            if *until > now {
                a.cool_until(*until);
                if a.status_enum() != Some(Status::AuthError) && a.is_enabled() {
                    a.status = Status::RateLimited.as_str().into();
                }
                a.extra.insert("lastError".into(), json!(why));
            }
        }
        if let Some((tag, why)) = batch.refused.get(&email) {
            // Only the credential that was refused: a new login since then stays usable.
            if a.credential_tag() == *tag {
                a.status = Status::AuthError.as_str().into();
                a.extra.insert("lastError".into(), json!(why));
                if let Some(tag) = tag {
                    a.extra.insert("authErrorToken".into(), json!(tag));
                }
            }
        }
        if let Some(until) = batch.refresh_backoff.get(&email) {
            a.extra.insert("refreshBackoffUntil".into(), json!(until));
        }
        if let Some(t) = batch.last_used.get(&email) {
            if a.last_used_ms() < *t {
                a.last_used = Some(iso_time(*t));
            }
        }
        if let Some(active) = &batch.active {
            let status = a.status_enum();
            if &email == active {
                if a.is_enabled() && status != Some(Status::AuthError) && !a.cooling_at(now) {
                    a.status = Status::Active.as_str().into();
                }
            } else if status == Some(Status::Active) {
                a.status = Status::Idle.as_str().into();
            }
        }
        if let Some(q) = batch.quota.get(&email) {
            a.extra.insert("quota".into(), q.clone());
        }
        if let Some(e) = batch.last_error.get(&email) {
            a.extra.insert("lastError".into(), json!(e));
        }
    }
    if let Some(f) = &batch.last_failover {
        pool.extra.remove("lastFailover");
        let meta = pool
            .extra
            .entry(crate::manage::META_KEY)
            .or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert("lastFailover".into(), f.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;

    fn pool_of(now: i64) -> Pool {
        let mut pool = Pool::default();
        for e in ["a@x", "b@x"] {
            pool.upsert(Account::new_oauth(
                e,
                "a".into(),
                "r".into(),
                now + 10_000_000,
                now,
            ));
        }
        pool
    }

    #[test]
    fn bookkeeping_moves_active_and_clears_passed_cooldowns() {
        let now = now_ms();
        let mut pool = pool_of(now);
        pool.find_mut("a@x").unwrap().status = "active".into();
        pool.find_mut("b@x").unwrap().status = "rate-limited".into();
        pool.find_mut("b@x").unwrap().rate_limit_until = Some(now - 5);
        let mut batch = Pending::default();
        batch.served("b@x", now, None);
        apply(&mut pool, &batch, now);
        assert_eq!(pool.find("a@x").unwrap().status, "idle");
        assert_eq!(pool.find("b@x").unwrap().status, "active");
        assert_eq!(pool.find("b@x").unwrap().rate_limit_until, None);
        assert_eq!(pool.find("b@x").unwrap().last_used_ms(), now);
    }

    #[test]
    fn a_refusal_lands_only_on_the_credential_it_was_about() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let old_tag = pool.find("a@x").unwrap().credential_tag();
        let mut batch = Pending::default();
        batch.refused("a@x", old_tag.clone(), "401 twice");
        batch.refused("b@x", old_tag, "401 twice");
        pool.find_mut("b@x").unwrap().refresh = Some("new-login".into());
        apply(&mut pool, &batch, now);
        assert_eq!(pool.find("a@x").unwrap().status, "auth-error");
        assert_eq!(
            pool.find("b@x").unwrap().status,
            "idle",
            "a new login since is kept usable"
        );
    }

    #[test]
    fn cooldowns_only_move_forward_and_failed_batches_merge_back() {
        let now = now_ms();
        let mut pool = pool_of(now);
        pool.find_mut("a@x").unwrap().rate_limit_until = Some(now + 50_000);
        let mut batch = Pending::default();
        batch.cooldown("a@x", now + 10_000, "short");
        apply(&mut pool, &batch, now);
        assert_eq!(
            pool.find("a@x").unwrap().rate_limit_until,
            Some(now + 50_000)
        );
        let mut newer = Pending::default();
        newer.cooldown("a@x", now + 90_000, "newer");
        newer.merge_older(batch);
        assert_eq!(newer.cooldowns["a@x"].0, now + 90_000);
    }
}
