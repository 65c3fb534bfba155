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
pub mod files;
pub mod headers;
pub mod limits;
#[cfg(test)]
mod model_tests;
pub mod overlay;
pub mod select;
pub mod usage;
pub mod verdict;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::account::{now_ms, Account};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::store::{Stamp, Store, Written};

pub use credentials::Credential;
pub use events::{Event, Notice};
pub use exchange::{Attempt, Exchange, Step, Synthetic, Verdict};
pub use headers::RequestMeta;
use limits::Window;
use overlay::{lock, Overlay};

/// What a write's change gives back, whatever its caller's type (`Engine::write_under`).
type WriteOut = Box<dyn std::any::Any + Send>;
type BoxedChange = Box<dyn FnOnce(&mut Pool) -> Result<WriteOut> + Send>;

pub struct Engine {
    store: Store,
    cache: Mutex<Option<(Stamp, Arc<Pool>)>>,
    /// The last pool read, kept through invalidations: what is served while the store is down.
    last_good: Mutex<Option<Arc<Pool>>>,
    overlay: Overlay,
    credentials: credentials::Credentials,
    book: bookkeeping::Bookkeeping,
    /// This process's seed for spreading reopenings (`jitter`).
    seed: [u8; 16],
    /// What was learnt after the request it concerns stopped listening (a refresh it left
    /// behind, the end of a stream it was handed): the next request to end tells it.
    told_late: Mutex<Vec<Event>>,
    /// email -> the held request sent to it first after a wait: the other requests this process
    /// held for it wait for that one's answer (dropping the sender tells them).
    reopening: Mutex<HashMap<String, tokio::sync::watch::Sender<()>>>,
}

/// What a request that was held does before it sends to `email` (see `Engine::reopen`).
pub enum Reopen {
    /// Send: it is the first, and the others wait until the guard goes (its answer judged).
    First(ReopenGuard),
    /// Wait for the first one's answer (the receiver's `changed()` ends then), then choose again.
    After(tokio::sync::watch::Receiver<()>),
}

pub struct ReopenGuard {
    engine: Arc<Engine>,
    email: String,
}

impl Drop for ReopenGuard {
    fn drop(&mut self) {
        lock(&self.engine.reopening).remove(&self.email);
    }
}

/// Where one answer's usage is counted: its account and model, in this engine.
pub struct UsageSink {
    pub engine: Arc<Engine>,
    pub email: String,
    pub model: String,
    /// The request makes a file or a batch (`POST /v1/files`, `/v1/messages/batches`): the
    /// answer's `id` names what the account now holds.
    pub creates: bool,
    /// When the request was sent (see `Exchange::sent_at`).
    pub sent_at: i64,
}

impl UsageSink {
    /// Whether the answer is to be tapped: for its usage unless counting is off
    /// (`OAUTH_POOL_USAGE=off`); always when it names a file or a batch just made (with counting
    /// off, the next request for it went to the account in use and met its 404 first), and
    /// always an event stream, whose `error` event may say the account met its rate limit.
    pub fn wanted(&self, event_stream: bool) -> bool {
        self.creates || event_stream || usage::enabled()
    }

    /// Records what the tap read of the delivered answer once it ended: its usage (nothing when
    /// it reported none), and for a file or a batch just made, which account holds it, so that
    /// the next request for it goes there first (not to whichever account is in use by then,
    /// which answers 404).
    pub fn record(&self, tap: &mut usage::UsageTap) {
        let counts = tap.finish().filter(|_| usage::enabled());
        if tap.take_stream_error().as_deref() == Some(verdict::STREAM_RATE_LIMIT) {
            self.engine
                .rest_after_stream_limit(&self.email, &self.model);
        }
        if let Some(id) = tap.take_id().filter(|_| self.creates) {
            if headers::is_resource_id(&id) {
                self.engine.overlay.holds(&id, &self.email, self.sent_at);
            }
        }
        let Some(counts) = counts else { return };
        let window = self
            .engine
            .overlay
            .windows(&self.email, now_ms())
            .into_iter()
            .find(|w| w.name == "5h")
            .and_then(|w| w.reset);
        let (who, model) = (self.email.clone(), self.model.clone());
        self.engine.note(false, move |p| {
            p.usage(&who, &model, window, now_ms(), counts)
        });
    }
}

/// Why an account cannot serve a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// It can.
    No,
    /// Only until then: a cooldown (with this process's jitter), or its reserve line until the
    /// window resets.
    Until(i64),
    /// Not by waiting: disabled, refused, or without a credential.
    Out,
}

/// Reopenings are spread over this much (ms): `OAUTH_POOL_JITTER_MS`, 0 (none) by default.
pub fn jitter_max() -> i64 {
    crate::settings::millis(crate::config::var::JITTER_MS).as_millis() as i64
}

/// Engines the registry keeps before it forgets idle ones (least recently asked for first). A
/// process that goes through many pools (`poolStatus`, `savePool` or a fetch per path: a script,
/// a test run, a service managing pools) kept one engine per path for its whole life, with its
/// maps, its cached pool and its directory watch (one of the few inotify instances allowed).
const MAX_ENGINES: usize = 64;

/// store key -> (its engine, when it was last asked for).
type Registry = HashMap<String, (Arc<Engine>, u64)>;

fn registry() -> &'static Mutex<(Registry, u64)> {
    static REG: OnceLock<Mutex<(Registry, u64)>> = OnceLock::new();
    REG.get_or_init(Default::default)
}

/// Forgets the least recently asked-for engines that nothing else holds and that have nothing
/// left to do (no bookkeeping to write, no tokens waiting to be saved, no task of theirs
/// running: a task holds its engine), until the registry is under `MAX_ENGINES`. An engine in
/// use is never dropped, so two engines never serve one store in one process.
fn forget_idle(reg: &mut Registry) {
    if reg.len() < MAX_ENGINES {
        return;
    }
    let mut idle: Vec<(u64, String)> = reg
        .iter()
        .filter(|(_, (e, _))| Arc::strong_count(e) == 1 && e.is_idle())
        .map(|(k, (_, used))| (*used, k.clone()))
        .collect();
    idle.sort_unstable();
    let excess = reg.len() + 1 - MAX_ENGINES;
    for (_, key) in idle.into_iter().take(excess) {
        reg.remove(&key);
    }
}

/// How long a process that is exiting waits for its last writes (`flush_before_exit`).
pub const EXIT_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes what every engine of this process still has to write (bookkeeping, tokens a refresh
/// could not save), blocking the calling thread up to `limit`; returns how many engines had
/// something. For a process about to exit: `process.exit()` ends it without running what its
/// event loop had scheduled, the pool's delayed writes with it (a host that exits right after
/// its last answer lost that answer's usage, and up to a second of every other bookkeeping).
/// Starts nothing when nothing waits (the runtime stays unstarted in a process that never used
/// it). From inside the runtime it cannot block, and does nothing.
pub fn flush_before_exit(limit: std::time::Duration) -> usize {
    let engines: Vec<Arc<Engine>> = lock(registry())
        .0
        .values()
        .filter(|(e, _)| !e.is_idle())
        .map(|(e, _)| e.clone())
        .collect();
    if engines.is_empty() || tokio::runtime::Handle::try_current().is_ok() {
        return 0;
    }
    let Ok(rt) = crate::runtime::runtime() else {
        return 0;
    };
    let count = engines.len();
    rt.block_on(async move {
        let all = async {
            for engine in &engines {
                let _ = engine.flush().await;
            }
        };
        // Past the limit (the pool's lock held by a stopped process) the process exits anyway:
        // what was not written is lost, as with a process killed.
        let _ = tokio::time::timeout(limit, all).await;
    });
    count
}

/// Events kept for the next request to end, at most (`Engine::tell_later`).
const TOLD_LATE_KEPT: usize = 64;

impl Engine {
    /// Keeps `events` for the next request to end (`Exchange::take_events`); the latest
    /// `TOLD_LATE_KEPT` of them, should no request come for a long while.
    pub fn tell_later(&self, events: impl IntoIterator<Item = Event>) {
        let mut kept = lock(&self.told_late);
        kept.extend(events);
        let over = kept.len().saturating_sub(TOLD_LATE_KEPT);
        kept.drain(..over);
    }

    /// What was kept for the next request to end, taken.
    pub fn take_told_late(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.told_late))
    }

    /// A stream delivered as a 200 said `rate_limit_error` in an `error` event after its content
    /// began (one said in its opening, before any content, moved the request on instead:
    /// `verdict::reads_opening`, so no error is acted on twice): the limit was met mid-answer,
    /// and the stream ended there. Nothing can move that request any more (its caller sees the
    /// error, and OpenCode retries such an error), but the account rests as after a 429 that
    /// said no more, so that the retry and the next requests go to another account rather than
    /// back into the same limit.
    fn rest_after_stream_limit(self: &Arc<Self>, email: &str, model: &str) {
        let family = limits::model_family(model);
        let cooldown = verdict::stream_limit_cooldown(now_ms(), family.as_deref(), None);
        let why = format!(
            "{} (said in the answer's event stream)",
            cooldown.describe()
        );
        let told = self.rest(email, &cooldown, &why);
        self.tell_later([told]);
    }

    /// Rests `email` as `cooldown` says, in this process at once and in the store right after
    /// (unless a `reset-cooldowns` runs first), and returns what tells a person.
    pub(crate) fn rest(
        self: &Arc<Self>,
        email: &str,
        cooldown: &limits::Cooldown,
        why: &str,
    ) -> Event {
        let until = cooldown.until;
        // The one line at info a cooldown makes in the log (the gateway keeps its copy of the
        // event at debug), so it says the wait as a person reads it too.
        tracing::info!(
            account = %email,
            until = %crate::account::iso_time(until),
            why = %why,
            "rate limited, usable again {}",
            crate::wait::until(until, now_ms())
        );
        let scope = cooldown.scope.clone();
        // The store's own rest of that scope as last read, as written (as ours is): whether it
        // still holds ours.
        let stored = self.last_read();
        let stored = stored.as_ref().and_then(|p| p.find(email));
        let in_store = stored.and_then(|a| match scope.as_deref() {
            None => a.stored_cooldown_until(),
            Some(s) => a.stored_model_cooldown_until(s),
        });
        if self.overlay.cool(email, scope.as_deref(), until, in_store) {
            let resets = stored.map(|a| a.cooldown_resets());
            let (who, w) = (email.to_string(), why.to_string());
            self.note(true, move |p| {
                p.cooldown(&who, scope.as_deref(), until, &w, resets)
            });
        }
        Event::new(
            "rate-limited",
            Some(email),
            format!("{email}: {why} until {}", crate::wait::at(until, now_ms())),
        )
        .until(until)
    }

    /// The process's engine for `store`: two plugin instances naming one pool share it, so they
    /// share single-flight refreshes and never wait on each other's locks.
    pub fn for_store(store: Store) -> Arc<Engine> {
        let mut guard = lock(registry());
        let (reg, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        let key = store.key();
        if let Some((engine, used)) = reg.get_mut(&key) {
            *used = now;
            return engine.clone();
        }
        forget_idle(reg);
        let mut seed = [0u8; 16];
        let _ = getrandom::fill(&mut seed);
        let engine = Arc::new(Engine {
            store,
            cache: Mutex::new(None),
            last_good: Mutex::new(None),
            overlay: Overlay::default(),
            credentials: Default::default(),
            book: Default::default(),
            seed,
            told_late: Mutex::new(Vec::new()),
            reopening: Mutex::new(HashMap::new()),
        });
        reg.insert(key, (engine.clone(), now));
        engine
    }

    /// Nothing of this engine's waits to be written (bookkeeping, unsaved tokens).
    fn is_idle(&self) -> bool {
        self.book.is_idle() && !self.credentials.has_unsaved()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// One request through the pool.
    pub fn exchange(self: &Arc<Self>, meta: RequestMeta) -> Exchange {
        Exchange::new(self.clone(), meta)
    }

    /// The pool as stored now, parsed only when it changed (a `stat` of the file; the fleet
    /// store's generation). When the fleet store cannot be reached, the last pool read is served:
    /// the access tokens in it keep working, and only a refresh needs the database.
    pub async fn snapshot(&self) -> Result<Arc<Pool>> {
        match self.read_snapshot().await {
            Err(Error::StoreUnavailable(why)) => match lock(&self.last_good).clone() {
                Some(pool) => {
                    tracing::debug!(why = %why, "store unreachable; serving from the last pool read");
                    Ok(pool)
                }
                None => Err(Error::StoreUnavailable(why)),
            },
            other => other,
        }
    }

    /// The cached pool when the store's stamp says it is current and that can be known without
    /// waiting (see `Store::stamp_now`); `None`: use `snapshot()`. For drivers that decide on the
    /// JavaScript thread without a round trip to the runtime.
    /// The pool as last read, however old.
    fn last_read(&self) -> Option<Arc<Pool>> {
        lock(&self.last_good).clone()
    }

    pub fn snapshot_now(&self) -> Option<Arc<Pool>> {
        let stamp = self.store.stamp_now()?;
        let cache = lock(&self.cache);
        let (cached, pool) = cache.as_ref()?;
        (*cached == stamp).then(|| pool.clone())
    }

    async fn read_snapshot(&self) -> Result<Arc<Pool>> {
        let stamp = self.store.stamp().await?;
        if let (Some(stamp), Some((cached, pool))) = (stamp, lock(&self.cache).as_ref()) {
            if *cached == stamp {
                return Ok(pool.clone());
            }
        }
        let (pool, stamp) = self.store.load_stamped().await?;
        crate::secret::hide_names(pool.names_holding_secrets());
        let present: std::collections::HashSet<&str> =
            pool.accounts().map(|a| a.email.as_str()).collect();
        self.overlay.keep_only(&present);
        self.credentials.keep_only(&present);
        let pool = Arc::new(pool);
        if let Some(stamp) = stamp {
            *lock(&self.cache) = Some((stamp, pool.clone()));
        }
        *lock(&self.last_good) = Some(pool.clone());
        Ok(pool)
    }

    fn invalidate(&self) {
        *lock(&self.cache) = None;
    }

    /// A locked read-modify-write of the store that also saves tokens an earlier refresh could
    /// not write: every write of this process retries them. The engine only updates accounts
    /// the store holds: a pool file that is gone is not made again, nor its directory or lock
    /// file (`Store::update_existing_written`).
    pub(crate) async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.write_under(None, change).await
    }

    /// `write`, under an account's refresh lock when given: the fleet store writes in the lock's
    /// own transaction, and commits it (`Store::update_under`).
    pub(crate) async fn write_under<T: Send + 'static>(
        self: &Arc<Self>,
        held: Option<&crate::store::RefreshLock>,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        // One body for every caller's change (each closure is a type of its own, and the body,
        // instantiated for each, was most of what a fix to it cost the `.node`).
        let boxed: BoxedChange =
            Box::new(move |pool: &mut Pool| change(pool).map(|t| Box::new(t) as WriteOut));
        let out = self.write_boxed(held, boxed).await?;
        out.downcast::<T>()
            .map(|t| *t)
            .map_err(|_| Error::PoolInvalid("a write's result was of another type".into()))
    }

    async fn write_boxed(
        self: &Arc<Self>,
        held: Option<&crate::store::RefreshLock>,
        change: BoxedChange,
    ) -> Result<WriteOut> {
        // Those processes kept on disk land first, as in every write of the file store (tokens
        // this one refreshed since continue theirs: their refresh token is the one it
        // presented). Only this process's own are reported as written: another's file naming
        // an account this one holds unsaved tokens of (taken again since) said nothing of those.
        let own = self.credentials.unsaved_tokens();
        let carried = own.clone();
        let successors = self.credentials.successors();
        let change = move |pool: &mut Pool| {
            let written = credentials::apply_unsaved(pool, &carried);
            credentials::apply_successors(pool, &successors);
            change(pool).map(|t| (t, written))
        };
        let result = match held {
            Some(lock) => self.store.update_under(lock, change).await,
            None => self.store.update_existing_written(change).await,
        };
        let ((t, written), stored) = match result {
            Ok(done) => done,
            Err(e) => {
                self.invalidate();
                return Err(e);
            }
        };
        match stored {
            // Our own write need not be read back: the next request decides on the calling
            // thread instead of waiting for a read of the file it just wrote.
            Written::Generation(pool, stamp) => {
                let pool = Arc::new(pool);
                *lock(&self.cache) = Some((stamp, pool.clone()));
                *lock(&self.last_good) = Some(pool);
            }
            Written::Unchanged => {}
            Written::Unknown => self.invalidate(),
        }
        let written: Vec<(String, crate::secret::Secret)> = own
            .iter()
            .filter(|t| written.contains(&t.email))
            .map(|t| (t.email.clone(), t.refresh.clone()))
            .collect();
        let spent = self.credentials.saved(&written);
        if !spent.is_empty() {
            self.journal_landed(spent);
        }
        if !own.is_empty() {
            self.keep_unsaved_on_disk().await;
        }
        Ok(t)
    }

    /// The tokens processes kept on disk beside the pool file (`store::rescue`), and the files
    /// that hold them; for the fleet store, those this host's processes kept in `~/.aidevops`
    /// (`Store::rescue_path`).
    pub(crate) async fn kept_elsewhere(&self) -> credentials::KeptFiles {
        let Some(path) = self.store.rescue_path() else {
            return Vec::new();
        };
        crate::store::blocking(move || Ok(crate::store::rescue::found(&path)))
            .await
            .unwrap_or_default()
    }

    /// `kept_elsewhere`, with the tokens a pool write cut before its rename left in its temp
    /// file (`store::file::orphaned_tokens`), judged against `pool`.
    pub(crate) async fn kept_and_orphaned(&self, pool: &Pool) -> credentials::KeptFiles {
        let mut kept = self.kept_elsewhere().await;
        if let Some(path) = self.store.path().map(std::path::Path::to_path_buf) {
            let pool = pool.clone();
            kept.extend(
                crate::store::blocking(move || {
                    Ok(crate::store::file::orphaned_tokens(&path, &pool))
                })
                .await
                .unwrap_or_default(),
            );
        }
        kept
    }

    /// This process's unsaved tokens kept on disk as they are now (`store::rescue`): written
    /// when a refresh's tokens could not be, removed once none are left.
    pub(crate) async fn keep_unsaved_on_disk(&self) {
        let Some(path) = self.store.rescue_path() else {
            return;
        };
        let fleet = self.store.path().is_none();
        let tokens = self.credentials.tokens_to_keep();
        let kept = crate::store::blocking(move || {
            if fleet && !tokens.is_empty() {
                crate::store::rescue::make_dir(&path)?;
            }
            crate::store::rescue::keep(&path, &tokens).map_err(|e| {
                crate::error::Error::io(&path, "keep the unsaved tokens beside the pool", e)
            })
        })
        .await;
        match kept {
            Ok(file) => *lock(&self.credentials.kept_file) = file,
            Err(e) => {
                *lock(&self.credentials.kept_file) = None;
                tracing::warn!(error = %e, "unsaved tokens could not be kept on disk: they live only in this process");
            }
        }
    }

    /// Runs `task` in the background: on the current runtime, or on the addon's when recorded
    /// from the JavaScript thread (a judgement made there, a body dropped there).
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Err(why) = crate::runtime::spawn(task) {
            tracing::warn!(%why, "bookkeeping waits for the next write");
        }
    }

    /// How much later than `until` this process reopens `email`: 0 to `OAUTH_POOL_JITTER_MS`,
    /// fixed per process, account and cooldown, so that twenty processes waiting on one reset
    /// do not all send in the same millisecond.
    pub fn jitter(&self, email: &str, until: i64) -> i64 {
        let max = jitter_max();
        if max <= 0 {
            return 0;
        }
        let digest = Sha256::new()
            .chain_update(self.seed)
            .chain_update(email.as_bytes())
            .chain_update(until.to_le_bytes())
            .finalize();
        let mut n = [0u8; 8];
        n.copy_from_slice(&digest[..8]);
        (u64::from_le_bytes(n) % max as u64) as i64
    }

    /// Held requests going back to `email` after their wait: one goes first, the others of this
    /// process wait for its answer, so an account still limited is refused once, not once per
    /// held request (each 429 rested it again).
    pub fn reopen(self: &Arc<Self>, email: &str) -> Reopen {
        let mut reopening = lock(&self.reopening);
        if let Some(first) = reopening.get(email) {
            return Reopen::After(first.subscribe());
        }
        reopening.insert(email.to_string(), tokio::sync::watch::channel(()).0);
        Reopen::First(ReopenGuard {
            engine: self.clone(),
            email: email.to_string(),
        })
    }

    /// The windows to judge `a` by: those the store holds (other processes' too, such as a
    /// scoped window this process never saw), with what this process saw laid over them, unless
    /// the store's is of a later period (its reset is later: another process saw it roll).
    /// Each is moved onto the clock first when it was stepped back since it was heard of.
    pub fn windows(&self, a: &Account) -> Vec<Window> {
        let now = now_ms();
        let mut stored = a.windows();
        limits::settle_windows(&mut stored, now);
        limits::seen_over_stored(stored, self.overlay.windows(&a.email, now))
    }

    /// Whether `a` can serve a request for models of `family` at `now`, and if not, until when.
    pub fn blocked(&self, a: &Account, family: Option<&str>, now: i64) -> Blocked {
        if !a.is_enabled()
            || a.auth_error_is_ours()
            || !a.has_credential()
            || self.overlay.is_refused(a)
        {
            return Blocked::Out;
        }
        let cooldown = a
            .cooldown_until(now)
            .max(family.and_then(|f| a.model_cooldown_until(f, now)))
            .max(self.overlay.cooling_until(&a.email, family, now))
            .max(self.overlay.resting_until(a, now))
            .map(|t| t + self.jitter(&a.email, t));
        match cooldown.max(self.reserve_end(a, family, now)) {
            Some(t) if t > now => Blocked::Until(t),
            _ => Blocked::No,
        }
    }

    /// Until when `a`'s reserve line holds it back from requests for `family`: the latest reset
    /// of a window that applies to them and is past the line.
    fn reserve_end(&self, a: &Account, family: Option<&str>, now: i64) -> Option<i64> {
        let r = a.reserve()?;
        // What was heard before the last `reset-cooldowns` is no line (`cooldownsResetAt`): the
        // next answer says where the window stands.
        let reset_at = a.cooldowns_reset_at().map(|t| t.min(now));
        let heard_since_reset = |w: &limits::Window| match (reset_at, w.updated_at) {
            (None, _) => true,
            (Some(r), Some(heard)) => heard > r,
            (Some(_), None) => false,
        };
        self.windows(a)
            .iter()
            .filter(|w| w.applies_to(family) && w.reset.is_some_and(|t| t > now))
            .filter(|w| heard_since_reset(w))
            .filter(|w| {
                w.utilization
                    .is_some_and(|u| limits::past_reserve_line(u, r))
            })
            .filter_map(|w| w.reset)
            .max()
    }

    /// `blocked` for a request that may also fall under an endpoint's limits of its own
    /// (`limits::endpoint_limits`): that endpoint's rest holds it back, and so does its model's
    /// (a model's exhausted quota is not lifted by asking through another endpoint).
    pub fn blocked_for(
        &self,
        a: &Account,
        family: Option<&str>,
        endpoint: Option<&str>,
        now: i64,
    ) -> Blocked {
        let by_model = self.blocked(a, family, now);
        let Some(endpoint) = endpoint else {
            return by_model;
        };
        match (by_model, self.blocked(a, Some(endpoint), now)) {
            (Blocked::Out, _) | (_, Blocked::Out) => Blocked::Out,
            (Blocked::Until(x), Blocked::Until(y)) => Blocked::Until(x.max(y)),
            (Blocked::Until(t), Blocked::No) | (Blocked::No, Blocked::Until(t)) => {
                Blocked::Until(t)
            }
            (Blocked::No, Blocked::No) => Blocked::No,
        }
    }

    /// Whether `a` may serve a request now (any model), with what this process knows: a token
    /// that needs a refresh the token endpoint asked to hold off cannot serve either.
    pub fn usable(&self, pool: &Pool, a: &Account, now: i64) -> bool {
        self.blocked(a, None, now) == Blocked::No && self.token_wait(pool, a, now).is_none()
    }

    /// What the views add to `a`'s stored fields: whether a request would be sent with it now,
    /// and until when it is held back, with why (its reserve line, a rest of this process's
    /// own, or its cooldown: stored, or this process's jitter past its end).
    pub fn held(&self, pool: &Pool, a: &Account, now: i64) -> (bool, Option<(i64, &'static str)>) {
        let usable = self.usable(pool, a, now);
        let Blocked::Until(until) = self.blocked(a, None, now) else {
            return (usable, None);
        };
        // The reserve is why only when its end is the one said: a window of another model's past
        // the line does not hold the account, and one ending before the cooldown is not the wait.
        let why = if self.reserve_end(a, None, now).is_some_and(|t| t >= until) {
            "reserve"
        } else if self.overlay.resting_until(a, now).is_some_and(|t| t > now) {
            "rest"
        } else {
            "cooldown"
        };
        (usable, Some((until, why)))
    }

    /// `reset-cooldowns`: forget what this process decided on its own.
    pub fn reset_memory(&self) {
        self.overlay.clear();
        self.invalidate();
    }

    /// Enable, disable: forget what this process decided on its own about `email` only. Every
    /// account's went before, and with it a rest after a 401 that no new token answered, which
    /// only this process holds: another account then went back to its refused token at once.
    pub fn forget(&self, email: &str) {
        self.overlay.forget(email);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(prefix: &str) -> usize {
        lock(registry())
            .0
            .keys()
            .filter(|k| k.contains(prefix))
            .count()
    }

    fn account(fields: serde_json::Value) -> Account {
        let mut entry =
            serde_json::json!({ "type": "oauth", "email": "a@x", "refresh": "r", "access": "a" });
        if let (Some(entry), Some(fields)) = (entry.as_object_mut(), fields.as_object()) {
            entry.extend(fields.clone());
        }
        serde_json::from_value(entry).unwrap()
    }

    #[test]
    fn an_end_in_the_file_further_ahead_than_the_pool_writes_is_read_as_none() {
        // Found by a review: the 8-day cap applied to what answers said only. A year-ahead reset
        // or cooldown in the file (an older build, a hand edit, another program) held the
        // account for the year, the pool's 429 said so, and `reset-cooldowns` found nothing.
        let dir = std::env::temp_dir().join(format!("oauth-pool-believed-{}", std::process::id()));
        let engine = Engine::for_store(Store::file(dir.join("p.json")));
        let now = crate::account::now_ms();
        let day = 24 * 3600 * 1000;
        let held =
            |fields: serde_json::Value| engine.blocked(&account(fields), Some("sonnet"), now);
        for (ahead, believed) in [(2 * day, true), (8 * day, true), (365 * day, false)] {
            let end = now + ahead;
            let cases = [
                serde_json::json!({ "rateLimitUntil": end }),
                serde_json::json!({ "cooldownUntil": end }),
                serde_json::json!({ "modelCooldowns": { "sonnet": end } }),
                serde_json::json!({ "reserve": 0.2, "limits": { "windows": { "5h": { "utilization": 0.9, "reset": end } } } }),
                serde_json::json!({ "reserve": 0.2, "quota": { "fiveHour": { "utilization": 0.9, "resetsAt": end } } }),
            ];
            for fields in cases {
                let expected = if believed {
                    Blocked::Until(end)
                } else {
                    Blocked::No
                };
                let got = held(fields.clone());
                // A believed cooldown's end carries this process's reopening spread.
                let matches = match (got, expected) {
                    (Blocked::Until(t), Blocked::Until(e)) => t >= e && t <= e + 60_000,
                    (g, e) => g == e,
                };
                assert!(matches, "{fields}: {got:?}");
            }
        }
        // A new cooldown is kept beside a garbled one: the max of the two was the garbled one,
        // read as none, and the new one went with it.
        let mut a = account(
            serde_json::json!({ "rateLimitUntil": now + 365 * day, "cooldownUntil": now + 365 * day }),
        );
        a.cool_until(now + 3_600_000, now);
        assert_eq!(a.cooldown_until(now), Some(now + 3_600_000));
        a.cool_model_until("opus", now + 60_000, now);
        let mut b = account(serde_json::json!({ "modelCooldowns": { "opus": now + 365 * day } }));
        b.cool_model_until("opus", now + 60_000, now);
        assert_eq!(b.model_cooldown_until("opus", now), Some(now + 60_000));
    }

    #[test]
    fn held_names_the_reserve_only_when_its_line_is_what_holds_the_account() {
        // Found by a review: a cooldown's hold was said as the reserve's when another model's
        // window was past the line.
        let dir = std::env::temp_dir().join(format!("oauth-pool-held-{}", std::process::id()));
        let engine = Engine::for_store(Store::file(dir.join("p.json")));
        let now = crate::account::now_ms();
        let pool = Pool::default();
        let hour = 3_600_000;
        let cooling = account(serde_json::json!({
            "rateLimitUntil": now + hour, "reserve": 0.2,
            "limits": { "windows": { "7d_opus": { "utilization": 0.9, "reset": now + 5 * hour } } }
        }));
        assert_eq!(
            engine.held(&pool, &cooling, now).1.map(|(_, why)| why),
            Some("cooldown")
        );
        let reserved = account(serde_json::json!({
            "reserve": 0.2, "limits": { "windows": { "5h": { "utilization": 0.9, "reset": now + 5 * hour } } }
        }));
        assert_eq!(
            engine.held(&pool, &reserved, now).1,
            Some((now + 5 * hour, "reserve"))
        );
    }

    #[test]
    fn what_is_told_late_goes_to_the_next_request_once_and_is_bounded() {
        let dir = std::env::temp_dir().join(format!("oauth-pool-told-{}", std::process::id()));
        let engine = Engine::for_store(Store::file(dir.join("p.json")));
        engine.tell_later(
            (0..TOLD_LATE_KEPT + 10).map(|i| Event::new("auth-error", None, format!("{i}"))),
        );
        let told = engine.take_told_late();
        assert_eq!(told.len(), TOLD_LATE_KEPT, "the latest kept");
        assert_eq!(told[0].message, "10");
        assert!(engine.take_told_late().is_empty(), "told once");
    }

    #[test]
    fn the_registry_forgets_idle_engines_and_keeps_those_in_use() {
        let dir = std::env::temp_dir().join(format!("oauth-pool-registry-{}", std::process::id()));
        let path = |i: usize| dir.join(format!("p{i}.json"));
        let prefix = dir.display().to_string();
        // Held by a caller (a fetch, the gateway): kept however many pools come after it.
        let held = Engine::for_store(Store::file(path(0)));
        // Not held, but with bookkeeping still to write: kept until it is written.
        let pending = Engine::for_store(Store::file(path(1)));
        pending.book.record(|p| p.served("a@x", 0, 0, None));
        drop(pending);
        for i in 2..MAX_ENGINES * 4 {
            drop(Engine::for_store(Store::file(path(i))));
            assert!(
                registered(&prefix) <= MAX_ENGINES + 2,
                "{} engines kept",
                registered(&prefix)
            );
        }
        assert!(Arc::ptr_eq(&held, &Engine::for_store(Store::file(path(0)))));
        let again = Engine::for_store(Store::file(path(1)));
        assert!(
            !again.book.is_idle(),
            "the engine with pending bookkeeping is the same one"
        );
        // The most recent idle ones stay (their in-process decisions with them).
        let last = path(MAX_ENGINES * 4 - 1).display().to_string();
        assert!(lock(registry()).0.keys().any(|k| k.ends_with(&last)));
    }
}
