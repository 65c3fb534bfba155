//! The policy engine: which account serves a request, with which credential, and what an answer
//! means for it. Drivers (the Rust fetch, OpenCode 2's http hooks, the gateway) move the bytes
//! and ask the engine; none of them decides a cooldown itself.
//!
//! - `exchange`: one request through the pool, attempt by attempt (`next`, then `judge`).
//! - `verdict`: what a status (and a 400's body) means: the policy table.
//! - `limits`: `retry-after` and the unified rate-limit windows; how long a 429 rests.
//! - `select`: who serves next (session pin, sticky, priority, least recently used, threshold).
//! - `credentials`: adopt-or-refresh, one refresh per token generation.
//! - `overlay`: what this process decided before the store says so.
//! - `bookkeeping`: the writes that record it all, batched, off the answer's path.
//!
//! One `Engine` per store per process, shared by every fetch and plugin instance naming it.

pub mod bookkeeping;
pub mod credentials;
pub mod events;
pub mod exchange;
pub mod limits;
pub mod overlay;
pub mod select;
pub mod verdict;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};

use crate::account::{now_ms, Account, Pool};
use crate::error::Result;
use crate::store::{Stamp, Store};

pub use credentials::Credential;
pub use events::Event;
pub use exchange::{Attempt, Exchange, RequestMeta, Step, Synthetic, Verdict};
use overlay::{lock, Overlay};

pub struct Engine {
    store: Store,
    cache: Mutex<Option<(Stamp, Arc<Pool>)>>,
    overlay: Overlay,
    credentials: credentials::Credentials,
    book: bookkeeping::Bookkeeping,
}

fn registry() -> &'static Mutex<HashMap<String, Arc<Engine>>> {
    static REG: OnceLock<Mutex<HashMap<String, Arc<Engine>>>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

impl Engine {
    /// The process's engine for `store`: two plugin instances naming one pool share it, so they
    /// share single-flight refreshes and never wait on each other's locks.
    pub fn for_store(store: Store) -> Arc<Engine> {
        let mut reg = lock(registry());
        reg.entry(store.key())
            .or_insert_with(|| {
                Arc::new(Engine {
                    store,
                    cache: Mutex::new(None),
                    overlay: Overlay::default(),
                    credentials: Default::default(),
                    book: Default::default(),
                })
            })
            .clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One request through the pool.
    pub fn exchange(self: &Arc<Self>, meta: RequestMeta) -> Exchange {
        Exchange::new(self.clone(), meta)
    }

    /// The pool as stored now. A `stat` per call; the file is parsed only when it changed.
    pub async fn snapshot(&self) -> Result<Arc<Pool>> {
        let stamp = self.store.stamp();
        if let (Some(stamp), Some((cached, pool))) = (stamp, lock(&self.cache).as_ref()) {
            if *cached == stamp {
                return Ok(pool.clone());
            }
        }
        let (pool, stamp) = self.store.load_stamped().await?;
        let pool = Arc::new(pool);
        if let Some(stamp) = stamp {
            *lock(&self.cache) = Some((stamp, pool.clone()));
        }
        Ok(pool)
    }

    fn invalidate(&self) {
        *lock(&self.cache) = None;
    }

    /// A locked read-modify-write of the store that also saves tokens an earlier refresh could
    /// not write: every write of this process retries them.
    pub(crate) async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let unsaved = self.credentials.unsaved_tokens();
        let result = self
            .store
            .update(move |pool| {
                let written = credentials::apply_unsaved(pool, &unsaved);
                change(pool).map(|t| (t, written))
            })
            .await;
        self.invalidate();
        let (t, written) = result?;
        self.credentials.saved(&written);
        Ok(t)
    }

    /// Whether `a` may serve a request now, with what this process knows that the store may not
    /// show yet.
    pub fn usable(&self, a: &Account, now: i64) -> bool {
        a.usable_at(now)
            && self.overlay.cooling_until(&a.email, now).is_none()
            && !self.overlay.is_refused(a)
    }

    /// When this account is usable again, if all it does is cool down.
    pub fn cooling_until(&self, a: &Account, now: i64) -> Option<i64> {
        if !a.is_enabled()
            || a.auth_error_is_ours()
            || !a.has_credential()
            || self.overlay.is_refused(a)
        {
            return None;
        }
        let until = a
            .cooldown_until()
            .max(self.overlay.cooling_until(&a.email, now))?;
        (until > now).then_some(until)
    }

    /// `reset-cooldowns`, enable: forget what this process decided on its own.
    pub fn reset_memory(&self) {
        self.overlay.clear();
        self.invalidate();
    }

    /// What this process knows that `manage::status` cannot read from the store: tokens held in
    /// memory because they could not be written, and accounts whose refresh lock is held.
    pub async fn runtime_status(&self, pool: &Pool) -> Value {
        let unsaved: Vec<Value> = self
            .credentials
            .unsaved_report()
            .into_iter()
            .map(|(email, since, error)| json!({ "email": email, "since": since, "error": error }))
            .collect();
        let mut locked = Vec::new();
        for a in pool.accounts().filter(|a| !a.is_api_key()) {
            if self.store.refresh_lock_held(&a.email).await {
                locked.push(Value::from(a.email.clone()));
            }
        }
        json!({ "unsavedTokens": unsaved, "refreshLocked": locked, "checkedAt": now_ms() })
    }
}
