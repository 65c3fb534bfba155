//! Writes that record what happened (cooldowns, refusals, last use, quota, errors), batched and
//! never on an answer's path: the decision is already in the overlay, the file catches up in the
//! background. Cooldowns and refusals are written at once (other processes must honour them);
//! last-use bookkeeping at most once a second, and while other processes keep the store busy,
//! at a quiet moment within 10 s. A write that fails is kept and tried again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::limits::{Limits, SAME_PERIOD_MS};
use super::overlay::{lock, Decided};
use super::usage::Counts;
use super::Engine;
use crate::account::{iso_time, now_ms, Status};
use crate::pool::Pool;
use crate::secret::scrub_tokens;

const FLUSH_DELAY: Duration = Duration::from_millis(1000);
/// A store written by any process within this long is busy: last use, windows and usage wait
/// for a moment without writes. Twenty processes each writing once a second rewrote the whole
/// pool file twenty times a second, and each of them read and parsed it again before nearly
/// every request (with a month of usage in it, 480 KB: more than a core of a 2-core machine).
const QUIET: Duration = Duration::from_secs(1);
/// How long bookkeeping waits for a quiet store at most, from when it was recorded: on a busy
/// machine each process still writes at least this often (and a process killed loses at most
/// this much of it).
const MAX_DELAY: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The most models a day's or a window's usage names; the rest are counted under `OTHER_MODELS`.
const MAX_MODELS: usize = 64;
const OTHER_MODELS: &str = "(other models)";
/// Usage by day is kept this long (`last30Days`).
const USAGE_DAYS: i64 = 30;
/// Usage by 5-hour window is kept this long: a week's windows (the weekly window's span) and a
/// day more. Only the current one is shown; a month of them (144 per account) was most of a pool
/// file that twenty processes read again after each other's writes (471 KB with four accounts).
const USAGE_WINDOW_DAYS: i64 = 8;
/// 5-hour windows kept per account, the latest: 8 days of them is 39. A window is known by the
/// reset its answers report; an upstream whose reset moved with every answer made one window per
/// answer (one a second under load), bounded only by the days kept and the file's size limit.
const MAX_WINDOW_BUCKETS: usize = 64;
const DAY_MS: i64 = 86_400_000;
const FIVE_HOURS_MS: i64 = 5 * 3_600_000;

/// (email, model, day "YYYY-MM-DD", 5-hour window reset) -> counts.
type UsageKey = (String, String, String, i64);

#[derive(Default, Clone)]
pub struct Pending {
    last_used: HashMap<String, i64>,
    /// The account that served the request sent last, and when that request was sent.
    active: Option<(String, i64)>,
    /// email -> what answers said of its limits, each part as of the latest-sent request that
    /// said it (`Limits::sent_at`, `Window::updated_at`).
    limits: HashMap<String, Limits>,
    last_error: HashMap<String, String>,
    last_failover: Option<Value>,
    /// (email, model family or None for the whole account) -> the cooldown
    cooldowns: HashMap<(String, Option<String>), Cooling>,
    usage: HashMap<UsageKey, Counts>,
    /// email -> (tag of the refused credential, why)
    refused: HashMap<String, (Option<String>, String)>,
    /// email -> (tag of the refresh token the token endpoint failed for, wait until, when decided)
    refresh_backoff: HashMap<String, (Option<String>, i64, Decided)>,
    /// The clock was found stepped back since some cooldown was set: rewrite them onto it.
    settle_clock: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.last_used.is_empty()
            && self.active.is_none()
            && self.limits.is_empty()
            && self.usage.is_empty()
            && self.last_error.is_empty()
            && self.last_failover.is_none()
            && self.cooldowns.is_empty()
            && self.refused.is_empty()
            && self.refresh_backoff.is_empty()
            && !self.settle_clock
    }

    /// Puts back a batch whose write failed; whatever was recorded since is newer and wins.
    fn merge_older(&mut self, old: Pending) {
        for (k, v) in old.last_used {
            self.last_used.entry(k).or_insert(v);
        }
        if let Some((email, at)) = old.active {
            self.active_since(&email, at);
        }
        for (email, limits) in old.limits {
            self.seen(&email, limits);
        }
        for (k, v) in old.usage {
            self.add_counts(k, &v);
        }
        for (k, v) in old.last_error {
            self.last_error.entry(k).or_insert(v);
        }
        if self.last_failover.is_none() {
            self.last_failover = old.last_failover;
        }
        for (k, v) in old.cooldowns {
            let e = self.cooldowns.entry(k.clone()).or_insert(v.clone());
            if v.0 > e.0 {
                *e = v;
            }
            self.cap_scoped(&k);
        }
        for (k, v) in old.refused {
            self.refused.entry(k).or_insert(v);
        }
        for (k, v) in old.refresh_backoff {
            self.refresh_backoff.entry(k).or_insert(v);
        }
        self.settle_clock |= old.settle_clock;
    }
}

/// A cooldown to write: until, why, when decided, and the account's `reset-cooldowns` count in
/// the pool it was decided on, when known.
type Cooling = (i64, String, Decided, Option<u64>);

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

    /// Nothing recorded waits to be written, no write is scheduled, and none is under way (a
    /// write under way holds its batch outside `pending`: a process exiting then must wait for
    /// it, or what it holds is lost). Looked at in this order: a write that starts meanwhile
    /// takes `flushing` before it empties `scheduled` and `pending`.
    pub(crate) fn is_idle(&self) -> bool {
        !self.scheduled.load(Ordering::Acquire)
            && lock(&self.pending).is_empty()
            && self.flushing.try_lock().is_ok()
    }
}

impl Pending {
    /// `email` served a request sent at `sent_at`, answered at `now`.
    pub fn served(&mut self, email: &str, now: i64, sent_at: i64, limits: Option<Limits>) {
        let used = self.last_used.entry(email.to_string()).or_insert(now);
        *used = (*used).max(now);
        self.active_since(email, sent_at);
        if let Some(l) = limits {
            self.seen(email, l);
        }
    }

    /// The account in use is the one that served the request sent last, not the one answered
    /// last: a slow answer to an earlier request must not undo a move made since.
    fn active_since(&mut self, email: &str, sent_at: i64) {
        let later = |at: i64| at <= sent_at || crate::account::set_back_since(at, now_ms());
        if self.active.as_ref().is_none_or(|(_, at)| later(*at)) {
            self.active = Some((email.to_string(), sent_at));
        }
    }

    /// The limits an answer reported (a served one, or a 429), laid over those recorded before
    /// unless they are older news (see `merge_limits`).
    pub fn seen(&mut self, email: &str, limits: Limits) {
        match self.limits.get_mut(email) {
            Some(known) => merge_limits(known, &limits),
            None => {
                self.limits.insert(email.to_string(), limits);
            }
        }
    }

    pub fn usage(
        &mut self,
        email: &str,
        model: &str,
        window: Option<i64>,
        now: i64,
        counts: Counts,
    ) {
        // The 5-hour window the answer fell in: its reset as the last answer said, else a fixed
        // 5-hour bucket.
        let window = window
            .filter(|r| *r > now && *r - now <= FIVE_HOURS_MS)
            .unwrap_or((now / FIVE_HOURS_MS + 1) * FIVE_HOURS_MS);
        self.add_counts(
            (email.to_string(), model.to_string(), day_of(now), window),
            &counts,
        );
    }

    /// Adds `counts` under `key`, bounded as the file's usage is (`add_usage`), for while the
    /// store cannot be written (a read-only mount, a full disk: the batch is kept and grows until
    /// a write lands): a window's usage goes with one of the same period, past
    /// `MAX_WINDOW_BUCKETS` the oldest window's goes with the next, and past `MAX_MODELS` models
    /// the rest count as one. A client naming a new model per request, or a server moving its
    /// reset on every answer, added a key per request for as long as writes failed.
    fn add_counts(&mut self, key: UsageKey, counts: &Counts) {
        let (email, model, day, window) = key;
        let mut windows: Vec<i64> = self
            .usage
            .keys()
            .filter(|(e, ..)| *e == email)
            .map(|(.., w)| *w)
            .collect();
        windows.sort_unstable();
        windows.dedup();
        let near = windows.iter().copied().min_by_key(|w| w.abs_diff(window));
        let window = match near {
            Some(w) if w.abs_diff(window) <= SAME_PERIOD_MS as u64 => w,
            _ if windows.len() >= MAX_WINDOW_BUCKETS => {
                if window < windows[0] {
                    windows[0]
                } else {
                    let (oldest, next) = (windows[0], windows[1]);
                    let moved: Vec<(UsageKey, Counts)> = self
                        .usage
                        .extract_if(|(e, .., w), _| *e == email && *w == oldest)
                        .collect();
                    for ((e, m, d, _), c) in moved {
                        self.add_model_counts((e, m, d, next), &c);
                    }
                    window
                }
            }
            _ => window,
        };
        self.add_model_counts((email, model, day, window), counts);
    }

    /// Adds `counts` under `key`, or under `OTHER_MODELS` when its day and window name
    /// `MAX_MODELS` others already.
    fn add_model_counts(&mut self, mut key: UsageKey, counts: &Counts) {
        if !self.usage.contains_key(&key) {
            let models = self
                .usage
                .keys()
                .filter(|(e, m, d, w)| {
                    *e == key.0 && *d == key.2 && *w == key.3 && m != OTHER_MODELS
                })
                .count();
            if models >= MAX_MODELS {
                key.1 = OTHER_MODELS.to_string();
            }
        }
        self.usage.entry(key).or_default().add(counts);
    }

    pub fn error(&mut self, email: &str, message: &str) {
        self.last_error
            .insert(email.to_string(), scrub_tokens(message));
    }

    pub fn failover(&mut self, from: &str, to: Option<&str>, reason: &str, now: i64) {
        self.last_failover = Some(json!({ "at": now, "from": from, "to": to, "reason": reason }));
    }

    /// A cooldown decided now; `resets`: the account's `reset-cooldowns` count in the pool it
    /// was decided on, when known. One that a `reset-cooldowns` ran after is not written: the
    /// write waits for the lock (and is batched), and landed after the reset, undoing it.
    pub fn cooldown(
        &mut self,
        email: &str,
        scope: Option<&str>,
        until: i64,
        why: &str,
        resets: Option<u64>,
    ) {
        let decided = (until, why.to_string(), Decided::now(), resets);
        let key = (email.to_string(), scope.map(str::to_string));
        let e = self.cooldowns.entry(key.clone()).or_insert(decided.clone());
        if until >= e.0 {
            *e = decided;
        }
        self.cap_scoped(&key);
    }

    /// As many rests of families and endpoints per account as the file keeps
    /// (`Account::cool_model_until`), for while it cannot be written: one per request of a
    /// client naming new families piled up here till then. `key` was just decided and stays.
    fn cap_scoped(&mut self, key: &(String, Option<String>)) {
        if key.1.is_none() {
            return;
        }
        let mut scoped: Vec<(Option<String>, (i64, std::time::Instant))> = self
            .cooldowns
            .iter()
            .filter(|((e, s), _)| *e == key.0 && s.is_some())
            .map(|((_, s), c)| (s.clone(), (c.0, c.2.instant())))
            .collect();
        for s in super::limits::cap_scoped(&mut scoped, &key.1) {
            self.cooldowns.remove(&(key.0.clone(), s));
        }
    }

    pub fn refused(&mut self, email: &str, tag: Option<String>, why: &str) {
        self.refused
            .insert(email.to_string(), (tag, scrub_tokens(why)));
    }

    pub fn refresh_backoff(&mut self, email: &str, tag: Option<String>, until: i64) {
        self.refresh_backoff
            .insert(email.to_string(), (tag, until, Decided::now()));
    }

    pub fn settle_clock(&mut self) {
        self.settle_clock = true;
    }
}

impl Engine {
    /// When the clock was stepped back since an account's cooldowns were set, they are written
    /// onto it at once: read through the step, a cooldown is as long as it had left when set,
    /// counted from whenever it is read (`Account::cooldown_until`), so it would end only once
    /// the clock is back where it was; written, it ends at a time of day again.
    /// Rate-limit windows likewise (`Account::settle_windows`).
    pub(crate) fn settle_clock_if_stepped(self: &Arc<Self>, pool: &crate::pool::Pool) {
        let now = now_ms();
        if pool
            .accounts()
            .any(|a| a.clock_set_back(now) > 0 || a.windows_set_back(now))
        {
            self.note(true, Pending::settle_clock);
        }
    }

    /// Records bookkeeping and makes sure a write follows: at once when `urgent` (cooldowns,
    /// refusals), else within a second.
    pub(crate) fn note(self: &Arc<Self>, urgent: bool, change: impl FnOnce(&mut Pending)) {
        self.book.record(change);
        if urgent {
            let me = self.clone();
            self.spawn(async move {
                let _ = me.flush().await;
            });
        } else if !self.book.scheduled.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            self.spawn(async move {
                let since = tokio::time::Instant::now();
                tokio::time::sleep(FLUSH_DELAY).await;
                me.wait_for_quiet(since + MAX_DELAY).await;
                let _ = me.flush().await;
            });
        }
    }

    /// Waits until the store has gone `QUIET` without a write (of any process), or until
    /// `deadline`. Each waiting process looks again at a moment of its own within the next
    /// `QUIET` (`spread`), so the first to find the store quiet writes and the others see that
    /// write and wait on: the processes of a busy machine take turns instead of all writing the
    /// moment the store falls quiet.
    async fn wait_for_quiet(&self, deadline: tokio::time::Instant) {
        loop {
            let Some(ago) = self.store.written_ago() else {
                return;
            };
            let now = tokio::time::Instant::now();
            if ago >= QUIET || now >= deadline {
                return;
            }
            let wait = QUIET - ago + spread(QUIET);
            tokio::time::sleep_until((now + wait).min(deadline)).await;
        }
    }

    /// `flush` for a caller that asked (`flushPool`): also an error while tokens a refresh got
    /// are still only in this process, whatever the write did. A pool file deleted while a
    /// refresh was out left them unwritable, and `flushPool` resolved: the caller ended and
    /// the login with it, told nothing.
    pub async fn flush_asked(self: &Arc<Self>) -> crate::error::Result<()> {
        self.flush().await?;
        match self.credentials.unsaved_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes everything pending now (and tokens a refresh could not save before), and returns
    /// once every earlier write has finished; the error when this one failed (what it held is
    /// kept for the next try).
    pub async fn flush(self: &Arc<Self>) -> crate::error::Result<()> {
        let _one = self.book.flushing.lock().await;
        self.book.scheduled.store(false, Ordering::Release);
        let batch = std::mem::take(&mut *lock(&self.book.pending));
        if batch.is_empty() && !self.credentials.has_unsaved() {
            return Ok(());
        }
        // Tokens kept for a pool file that is gone wait for it with a look, not a write: a write
        // makes the file's directory and lock file again (a `~/.aidevops` moved away on purpose
        // came back), and saves nothing while there is no file to hold them.
        if batch.is_empty() && self.file_gone() {
            self.retry_later(super::credentials::UNSAVED_RETRY);
            return Ok(());
        }
        let mut result = self.write_batch(&batch).await;
        let mut batch = batch;
        if matches!(result, Err(crate::error::Error::PoolInvalid(_))) && !batch.usage.is_empty() {
            // The counts would make a pool no reader takes: they go, and the cooldowns and
            // refusals of the batch, which other processes must see, are written without them.
            tracing::warn!("usage counts dropped: with them the pool would be too large to read");
            batch.usage.clear();
            result = self.write_batch(&batch).await;
        }
        match &result {
            Ok(()) => {
                *lock(&self.book.retry_delay) = None;
                // The store holds these cooldowns now and is their truth from here on: a
                // `reset-cooldowns` run by another process (the CLI while OpenCode runs) must
                // reopen the account here too, not an hour or a month later.
                for ((email, scope), (until, _, _, _)) in &batch.cooldowns {
                    self.overlay.stored(email, scope.as_deref(), *until);
                }
                // Tokens still unsaved after a write that landed wait for a pool file that is
                // gone (`apply_unsaved`): they are saved once it is back, whenever that is, not
                // only if this process happens to write again (other processes wait on the
                // account's refresh lock meanwhile).
                if self.credentials.has_unsaved() {
                    self.retry_later(super::credentials::UNSAVED_RETRY);
                }
            }
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
        result
    }

    /// The pool file is not there (a `stat`); never so for the fleet store.
    fn file_gone(&self) -> bool {
        matches!(self.store(), crate::store::Store::File(_)) && self.store().stamp_now().is_none()
    }

    async fn write_batch(self: &Arc<Self>, batch: &Pending) -> crate::error::Result<()> {
        let copy = batch.clone();
        self.write(move |pool| {
            apply(pool, &copy, now_ms());
            Ok(())
        })
        .await
    }

    /// A refusal of `email`'s credential written at once, under its refresh lock: a process
    /// queued on the lock reads it there and does not present the refused token again.
    pub(crate) async fn write_refusal_under(
        self: &Arc<Self>,
        held: &crate::store::RefreshLock,
        email: &str,
        tag: Option<String>,
        why: &str,
    ) -> crate::error::Result<()> {
        let mut batch = Pending::default();
        batch.refused(email, tag, why);
        self.write_under(Some(held), move |pool| {
            apply(pool, &batch, now_ms());
            Ok(())
        })
        .await
    }

    /// Tries the pending writes again after `delay` (also how unsaved tokens get saved when
    /// nothing else happens).
    pub(crate) fn retry_later(self: &Arc<Self>, delay: Duration) {
        if self.book.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        self.spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.flush().await;
        });
    }
}

/// A random duration below `max`.
fn spread(max: Duration) -> Duration {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(u64::from_le_bytes(b) % ms)
}

/// The UTC day of `ms`, "YYYY-MM-DD" (how usage is kept by day).
pub(crate) fn day_of(ms: i64) -> String {
    crate::account::iso_time(ms).chars().take(10).collect()
}

/// A newer answer's windows replace those of the same name (`limits::newer`), and its overall
/// status, claim and overage those known, when its request was sent later; the rest stays.
fn merge_limits(known: &mut Limits, fresh: &Limits) {
    super::limits::settle_windows(&mut known.windows, now_ms());
    super::limits::merge_windows(&mut known.windows, &fresh.windows);
    let known_set_back = known
        .sent_at
        .is_some_and(|at| crate::account::set_back_since(at, now_ms()));
    if fresh.sent_at < known.sent_at && !known_set_back {
        return;
    }
    known.sent_at = fresh.sent_at;
    if fresh.status.is_some() {
        known.status = fresh.status.clone();
        known.reset = fresh.reset;
    }
    if fresh.representative_claim.is_some() {
        known.representative_claim = fresh.representative_claim.clone();
    }
    if fresh.overage != Default::default() {
        known.overage = fresh.overage.clone();
    }
}

/// The fields of a window in `limits.windows` that this build writes.
const WINDOW_FIELDS: [&str; 5] = [
    "status",
    "reset",
    "utilization",
    "surpassedThreshold",
    "updatedAt",
];

/// The account's `limits`: `{ updatedAt, status?, representativeClaim?, overage?, windows: {
/// <name>: { status?, reset?, utilization?, surpassedThreshold?, updatedAt } } }`, each
/// `updatedAt` the time the request that said it was sent (`at` when that is not known). What
/// the file holds from a request sent later (another process's) is kept; windows of other
/// names, seen earlier, too.
fn store_limits(a: &mut crate::account::Account, limits: &Limits, at: i64) {
    let entry = a.extra.entry("limits").or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    let Some(obj) = entry.as_object_mut() else {
        return;
    };
    // Heard of before the clock was stepped back (a batch written after the step): onto the
    // clock as it is now, as what the file holds was moved (`Account::settle_windows`).
    let now = at;
    let at = limits
        .sent_at
        .filter(|s| s.saturating_sub(now) <= crate::account::CLOCK_STEP_MS)
        .unwrap_or(now);
    let stored_at = obj.get("updatedAt").and_then(Value::as_i64);
    if stored_at.is_none_or(|s| s <= at) {
        obj.insert("updatedAt".into(), json!(at));
        if let Some(s) = &limits.status {
            obj.insert("status".into(), json!(s));
        }
        if let Some(c) = &limits.representative_claim {
            obj.insert("representativeClaim".into(), json!(c));
        }
        if limits.overage != Default::default() {
            obj.insert("overage".into(), json!(limits.overage));
        }
    }
    let windows = obj.entry("windows").or_insert_with(|| json!({}));
    if !windows.is_object() {
        *windows = json!({});
    }
    if let Some(map) = windows.as_object_mut() {
        for w in &limits.windows {
            let mut w = w.clone();
            w.settle_clock(now);
            w.updated_at.get_or_insert(at);
            let stored = map
                .get(&w.name)
                .and_then(|v| serde_json::from_value::<super::limits::Window>(v.clone()).ok());
            if stored.is_some_and(|s| super::limits::newer(&s, &w)) {
                continue;
            }
            let Value::Object(mut fresh) = json!(w) else {
                continue;
            };
            fresh.remove("name");
            // What this build knows of a window is replaced (a value the answer no longer
            // reports goes); what another build keeps there (a newer copy on the same file) stays.
            let slot = map.entry(w.name.clone()).or_insert_with(|| json!({}));
            match slot.as_object_mut() {
                Some(kept) => {
                    kept.retain(|k, _| !WINDOW_FIELDS.contains(&k.as_str()));
                    kept.extend(fresh);
                }
                None => *slot = Value::Object(fresh),
            }
        }
        // Past the cap (`MAX_WINDOWS`), the windows updated longest ago go.
        while map.len() > super::limits::MAX_WINDOWS {
            let updated = |v: &Value| v.get("updatedAt").and_then(Value::as_i64).unwrap_or(0);
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, v)| updated(v))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
    }
}

/// Adds this batch's counts to the account's `usage`: `{ days: { "YYYY-MM-DD": { <model>:
/// Counts } }, windows: { "<reset ms>": { <model>: Counts } } }`, the last 30 days and 8 days kept.
fn add_usage(a: &mut crate::account::Account, batch: &HashMap<UsageKey, Counts>, now: i64) {
    let mine: Vec<(&UsageKey, &Counts)> =
        batch.iter().filter(|((e, ..), _)| *e == a.email).collect();
    if mine.is_empty() {
        return;
    }
    let usage = a.extra.entry("usage").or_insert_with(|| json!({}));
    if !usage.is_object() {
        *usage = json!({});
    }
    let Some(u) = usage.as_object_mut() else {
        return;
    };
    // Old days and windows go by the clock of the process writing, but never past what the file
    // already holds: one request from a process whose clock was 40 days fast dropped every day
    // and window kept (and one 40 days slow counted on a day the next write dropped).
    let newest_day = u
        .get("days")
        .and_then(Value::as_object)
        .and_then(|days| days.keys().max().cloned());
    let newest_window = u
        .get("windows")
        .and_then(Value::as_object)
        .and_then(|w| w.keys().filter_map(|k| k.parse::<i64>().ok()).max());
    let newest_day_ms =
        newest_day.and_then(|d| crate::account::parse_iso_ms(&format!("{d}T00:00:00Z")));
    let oldest_day = first_usage_day(newest_day_ms.map_or(now, |newest| now.min(newest)));
    let windows_from =
        newest_window.map_or(now, |newest| now.min(newest)) - USAGE_WINDOW_DAYS * DAY_MS;
    let mut add = |section: &str, bucket: String, model: &str, c: &Counts| {
        let s = u.entry(section).or_insert_with(|| json!({}));
        if !s.is_object() {
            *s = json!({});
        }
        let Some(s) = s.as_object_mut() else { return };
        let bucket = match bucket.parse() {
            Ok(reset) if section == "windows" => same_period(s, reset).to_string(),
            _ => bucket,
        };
        let b = s.entry(bucket).or_insert_with(|| json!({}));
        if !b.is_object() {
            *b = json!({});
        }
        let Some(b) = b.as_object_mut() else { return };
        // Model names come from callers: past `MAX_MODELS` in one bucket, the rest count as one.
        let named = b.len() - usize::from(b.contains_key(OTHER_MODELS));
        let model = if model == OTHER_MODELS || b.contains_key(model) || named < MAX_MODELS {
            model
        } else {
            OTHER_MODELS
        };
        let slot = b.entry(model.to_string()).or_insert_with(|| json!({}));
        if !slot.is_object() {
            *slot = json!({});
        }
        let Some(kept) = slot.as_object_mut() else {
            return;
        };
        // Field by field, into the object as it is: a count another build keeps there (a newer
        // copy of the package on the same file) stays, and one count this build cannot read
        // costs only itself, not the others.
        let mut total = Counts::from_stored(kept);
        total.add(c);
        if let Value::Object(sums) = json!(total) {
            kept.extend(sums);
        }
    };
    for ((_, model, day, window), c) in mine {
        add("days", day.clone(), model, c);
        add("windows", window.to_string(), model, c);
    }
    if let Some(days) = u.get_mut("days").and_then(Value::as_object_mut) {
        days.retain(|d, _| d.as_str() >= oldest_day.as_str());
    }
    if let Some(windows) = u.get_mut("windows").and_then(Value::as_object_mut) {
        windows.retain(|w, _| w.parse::<i64>().is_ok_and(|t| t > windows_from));
        if windows.len() > MAX_WINDOW_BUCKETS {
            let mut resets: Vec<i64> = windows.keys().filter_map(|w| w.parse().ok()).collect();
            resets.sort_unstable();
            let oldest_kept = resets[resets.len() - MAX_WINDOW_BUCKETS];
            windows.retain(|w, _| w.parse::<i64>().is_ok_and(|t| t >= oldest_kept));
        }
    }
}

/// The oldest day of usage kept (`USAGE_DAYS` before today): what the file keeps and what
/// `last30Days` sums. Older days leave the file only when the account is counted again, so an
/// account idle for weeks still holds them, and the sum read them as this month's.
pub fn first_usage_day(now: i64) -> String {
    day_of(now - USAGE_DAYS * DAY_MS)
}

/// The bucket a window's usage goes to: one already kept for the same period (its reset within
/// `SAME_PERIOD_MS`: read through a clock that is off, the reset moves a little from answer to
/// answer and from process to process), else its own.
fn same_period(kept: &serde_json::Map<String, Value>, reset: i64) -> i64 {
    kept.keys()
        .filter_map(|k| k.parse::<i64>().ok())
        .filter(|k| k.abs_diff(reset) <= SAME_PERIOD_MS as u64)
        .min_by_key(|k| k.abs_diff(reset))
        .unwrap_or(reset)
}

fn apply(pool: &mut Pool, batch: &Pending, now: i64) {
    for a in pool.accounts_mut() {
        let email = a.email.clone();
        // A cooldown that has passed is cleared in the file too, once every process's reopening
        // (spread over the jitter, keyed by that cooldown) is behind it.
        let settled = now - super::jitter_max();
        // A clock stepped back since the account's cooldowns were set: they are rewritten onto
        // it, for every process and for the aidevops plugin's tools reading the file.
        if a.clock_set_back(now) > 0 {
            a.settle_clock(now);
        }
        a.settle_windows(now);
        let cooling_at_settled = a.cooldown_until(now).is_some_and(|t| t > settled);
        if a.status_enum() == Some(Status::RateLimited) && !cooling_at_settled {
            a.status = Status::Idle.as_str().into();
        }
        if a.rate_limit_until.is_some() && !cooling_at_settled {
            a.clear_cooldown();
        }
        // In the order they were decided: past the file's cap, of the rests ending together,
        // those decided last stay (`Account::cool_model_until`).
        let mut cooldowns: Vec<_> = batch.cooldowns.iter().collect();
        cooldowns.sort_by_key(|(_, (_, _, decided, _))| decided.instant());
        for ((who, scope), (until, why, decided, resets)) in cooldowns {
            // Decided before the clock was stepped back (the write waited for the lock, or for
            // the store to come back): as long as it was then, from the clock as it is now.
            let until = until.saturating_sub(decided.clock_set_back());
            // Cooldowns only move forward; only reset-cooldowns shortens one, and one it ran
            // after is not brought back.
            let reset_since = resets.is_some_and(|n| a.cooldown_resets() > n);
            if who != &email || until <= now || reset_since {
                continue;
            }
            match scope {
                None => {
                    a.cool_until(until, now);
                    if a.status_enum() != Some(Status::AuthError) && a.is_enabled() {
                        a.status = Status::RateLimited.as_str().into();
                    }
                }
                // A model's quota: the account stays usable for the other models.
                Some(family) => a.cool_model_until(family, until, now),
            }
            a.extra.insert("lastError".into(), json!(why));
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
        if let Some((tag, until, decided)) = batch.refresh_backoff.get(&email) {
            // Only for the refresh token it was about: a new login has not been tried.
            if a.credential_tag() == *tag {
                a.set_refresh_backoff(until.saturating_sub(decided.clock_set_back()), now);
            }
        }
        if let Some(t) = batch.last_used.get(&email) {
            // One written ahead of the clock (a clock that ran fast) gives way to a real use.
            if a.last_used_ms() < *t || a.last_used_ms() > now {
                a.last_used = Some(iso_time(*t));
            }
        }
        if let Some(limits) = batch.limits.get(&email) {
            store_limits(a, limits, now);
        }
        add_usage(a, &batch.usage, now);
        if let Some(e) = batch.last_error.get(&email) {
            a.extra.insert("lastError".into(), json!(e));
        }
    }
    // `active` is the account that served the latest-sent request; the one active before stays
    // so when that one cannot be (it cools since: a late answer from before its 429, or its
    // credential refused since). An `auth-error` another program wrote, for a credential the
    // pool never saw refused, is served (`auth_error_is_ours`), and serving it ends the mark:
    // it stayed `auth-error` in every view while it served, and `active` on one that did not.
    if let Some((active, _)) = &batch.active {
        let can_be = |a: &crate::account::Account| {
            a.is_enabled() && !a.auth_error_is_ours() && !a.cooling_at(now)
        };
        if pool.accounts().any(|a| &a.email == active && can_be(a)) {
            for a in pool.accounts_mut() {
                if &a.email == active {
                    a.status = Status::Active.as_str().into();
                } else if a.status_enum() == Some(Status::Active) {
                    a.status = Status::Idle.as_str().into();
                }
            }
        }
    }
    if let Some(f) = &batch.last_failover {
        // An older version kept its record at the top level; a section of that name in another
        // shape is another writer's and stays, as every field the pool does not own.
        if pool
            .extra
            .get("lastFailover")
            .is_some_and(crate::manage::is_recorded_failover)
        {
            pool.remove_section("lastFailover");
        }
        if let Some(m) = crate::manage::meta_mut(pool) {
            m.insert("lastFailover".into(), f.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;

    #[test]
    fn a_cooldown_decided_before_a_reset_cooldowns_is_not_written_after_it() {
        let now = now_ms();
        let mut pool = pool_of(now);
        // Decided on a pool read when neither account had been reset; then reset-cooldowns ran
        // on a@x (the CLI, while the write waited for the lock).
        pool.find_mut("a@x").unwrap().count_cooldown_reset();
        let mut batch = Pending::default();
        batch.cooldown("a@x", None, now + 60_000, "429", Some(0));
        batch.cooldown("b@x", None, now + 60_000, "429", Some(0));
        apply(&mut pool, &batch, now);
        assert_eq!(
            pool.find("a@x").unwrap().stored_cooldown_until(),
            None,
            "the reset stands"
        );
        assert_eq!(
            pool.find("b@x").unwrap().stored_cooldown_until(),
            Some(now + 60_000),
            "not reset since: written"
        );
        // Decided after the reset (its count read then): written.
        let mut batch = Pending::default();
        batch.cooldown("a@x", None, now + 90_000, "429", Some(1));
        apply(&mut pool, &batch, now);
        assert_eq!(
            pool.find("a@x").unwrap().stored_cooldown_until(),
            Some(now + 90_000)
        );
    }

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
    fn stored_windows_are_capped_the_longest_unheard_of_going_first() {
        let now = 1_800_000_000_000;
        let mut pool = pool_of(now);
        let a = pool.find_mut("a@x").unwrap();
        let window = |name: String| crate::engine::limits::Window {
            name,
            utilization: Some(0.1),
            ..Default::default()
        };
        for round in 0..4 {
            let limits = Limits {
                windows: (0..8).map(|i| window(format!("r{round}w{i}"))).collect(),
                ..Limits::default()
            };
            store_limits(a, &limits, now + round);
        }
        let windows = a.extra["limits"]["windows"].as_object().unwrap();
        assert_eq!(windows.len(), crate::engine::limits::MAX_WINDOWS);
        assert!(
            windows
                .keys()
                .all(|k| k.starts_with("r2") || k.starts_with("r3")),
            "{windows:?}"
        );
    }

    #[test]
    fn days_are_kept_a_month_and_five_hour_windows_eight_days() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        let mut batch = Pending::default();
        for days_ago in [0, 7, 9, 29, 31] {
            let at = now - days_ago * DAY_MS;
            batch.usage("a@x", "claude-sonnet-4-5", Some(at + 3_600_000), at, one);
        }
        apply(&mut pool, &batch, now);
        let usage = &pool.find("a@x").unwrap().extra["usage"];
        let days = usage["days"].as_object().unwrap();
        let windows = usage["windows"].as_object().unwrap();
        let kept_day = |ago: i64| days.contains_key(&day_of(now - ago * DAY_MS));
        let kept_window =
            |ago: i64| windows.contains_key(&(now - ago * DAY_MS + 3_600_000).to_string());
        assert!(kept_day(0) && kept_day(7) && kept_day(9) && kept_day(29) && !kept_day(31));
        assert!(kept_window(0) && kept_window(7) && !kept_window(9) && !kept_window(29));
    }

    #[test]
    fn a_writer_whose_clock_is_a_month_off_keeps_the_days_and_windows_kept() {
        let now = now_ms();
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        for shift in [40 * DAY_MS, -40 * DAY_MS] {
            let mut pool = pool_of(now);
            let mut kept = Pending::default();
            for days_ago in 0..10 {
                let at = now - days_ago * DAY_MS;
                kept.usage("a@x", "claude-sonnet-4-5", Some(at + 3_600_000), at, one);
            }
            apply(&mut pool, &kept, now);
            let off = now + shift;
            let mut late = Pending::default();
            late.usage("a@x", "claude-sonnet-4-5", Some(off + 3_600_000), off, one);
            apply(&mut pool, &late, off);
            let usage = &pool.find("a@x").unwrap().extra["usage"];
            let days = usage["days"].as_object().unwrap();
            let windows = usage["windows"].as_object().unwrap();
            for days_ago in 0..10 {
                assert!(
                    days.contains_key(&day_of(now - days_ago * DAY_MS)),
                    "shift {shift}: day -{days_ago}"
                );
            }
            assert!(
                days.contains_key(&day_of(off)),
                "shift {shift}: its own day"
            );
            assert!(
                windows.contains_key(&(now + 3_600_000).to_string()),
                "shift {shift}: {windows:?}"
            );
        }
    }

    #[test]
    fn usage_windows_stay_bounded_when_the_reported_reset_moves_with_every_answer() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        // A minute and a second apart: each its own period.
        let step = SAME_PERIOD_MS + 1_000;
        for round in 0..2 {
            let mut batch = Pending::default();
            for i in 0..125 {
                let reset = now + 60_000 + (round * 125 + i) * step;
                batch.usage("a@x", "claude-sonnet-4-5", Some(reset), now, one);
            }
            apply(&mut pool, &batch, now);
        }
        let windows = pool.find("a@x").unwrap().extra["usage"]["windows"]
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(windows.len(), MAX_WINDOW_BUCKETS);
        let latest = (now + 60_000 + 249 * step).to_string();
        assert!(windows.contains_key(&latest), "the latest window is kept");
        let first = (now + 60_000).to_string();
        assert!(!windows.contains_key(&first), "the oldest went first");
    }

    /// Read through a clock that is off, one window's reset differs by up to a second from answer
    /// to answer and from process to process: its usage stays in one bucket.
    #[test]
    fn a_window_whose_reset_wobbles_by_a_second_keeps_one_usage_bucket() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        let reset = now + 3_600_000;
        for wobble in [0, 700, -400, 1_100, -900] {
            let mut batch = Pending::default();
            batch.usage("a@x", "claude-sonnet-4-5", Some(reset + wobble), now, one);
            batch.usage("a@x", "claude-opus-4-1", Some(reset - wobble), now, one);
            apply(&mut pool, &batch, now);
        }
        let windows = &pool.find("a@x").unwrap().extra["usage"]["windows"];
        let buckets = windows.as_object().unwrap();
        assert_eq!(buckets.len(), 1, "{windows}");
        let bucket = &buckets[&reset.to_string()];
        assert_eq!(bucket["claude-sonnet-4-5"]["requests"], 5);
        assert_eq!(bucket["claude-opus-4-1"]["requests"], 5);
    }

    /// A newer build on the same file keeps more in a model's counts and in a window: this
    /// build adds to its own counts and replaces its own window values, and leaves the rest.
    #[test]
    fn counts_and_windows_keep_what_another_build_stored_there() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let day = day_of(now);
        let a = pool.find_mut("a@x").unwrap();
        a.extra.insert(
            "usage".into(),
            json!({ "days": { &day: { "claude-sonnet-4-5": {
                "requests": 5, "input": "unreadable", "output": 20, "webSearches": 7 } } } }),
        );
        a.extra.insert(
            "limits".into(),
            json!({ "windows": { "7d": {
                "utilization": 0.9, "surpassedThreshold": 0.75, "futureField": 2 } } }),
        );
        let mut batch = Pending::default();
        let one = Counts {
            requests: 1,
            output: 3,
            ..Counts::default()
        };
        batch.usage("a@x", "claude-sonnet-4-5", None, now, one);
        apply(&mut pool, &batch, now);
        let a = pool.find_mut("a@x").unwrap();
        let counts = &a.extra["usage"]["days"][&day]["claude-sonnet-4-5"];
        assert_eq!(counts["requests"], 6, "{counts}");
        assert_eq!(
            counts["output"], 23,
            "the other counts are not lost to one unreadable"
        );
        assert_eq!(counts["webSearches"], 7, "{counts}");

        let limits = Limits {
            windows: vec![crate::engine::limits::Window {
                name: "7d".into(),
                utilization: Some(0.2),
                ..Default::default()
            }],
            ..Limits::default()
        };
        store_limits(a, &limits, now);
        let window = &a.extra["limits"]["windows"]["7d"];
        assert_eq!(window["utilization"], 0.2);
        assert_eq!(window["futureField"], 2, "{window}");
        assert!(
            window.get("surpassedThreshold").is_none(),
            "a value the answer no longer reports goes: {window}"
        );
    }

    #[test]
    fn a_clock_found_stepped_back_has_the_stored_cooldowns_rewritten_onto_it() {
        let set = now_ms();
        let mut pool = pool_of(set);
        let mut batch = Pending::default();
        batch.cooldown("b@x", None, set + 60_000, "429", None);
        let tag = pool.find("b@x").unwrap().credential_tag();
        batch.refresh_backoff("b@x", tag, set + 30_000);
        apply(&mut pool, &batch, set);
        // Two hours back: the next write (it need carry nothing else) rewrites them.
        let now = set - 7_200_000;
        let mut batch = Pending::default();
        batch.settle_clock();
        assert!(!batch.is_empty());
        apply(&mut pool, &batch, now);
        let b = pool.find("b@x").unwrap();
        assert_eq!(b.rate_limit_until, Some(now + 60_000));
        assert_eq!(b.extra["refreshBackoffUntil"], json!(now + 30_000));
        assert_eq!(b.status, "rate-limited");
        assert_eq!(b.clock_set_back(now), 0);
    }

    #[test]
    fn a_cooldown_decided_before_the_clock_went_back_is_written_onto_it() {
        let now = now_ms();
        let mut pool = pool_of(now);
        // Decided when the clock read two hours later; written after it was stepped back.
        let then = now + 7_200_000;
        let mut batch = Pending::default();
        batch.cooldowns.insert(
            ("b@x".to_string(), None),
            (
                then + 60_000,
                "429".into(),
                Decided::when_the_clock_read(then),
                None,
            ),
        );
        batch.refresh_backoff.insert(
            "b@x".into(),
            (
                pool.find("b@x").unwrap().credential_tag(),
                then + 30_000,
                Decided::when_the_clock_read(then),
            ),
        );
        apply(&mut pool, &batch, now);
        let b = pool.find("b@x").unwrap();
        let until = b.rate_limit_until.unwrap();
        assert!((until - (now + 60_000)).abs() < 1_000, "{}", until - now);
        let backoff = b.refresh_backoff_until(now).unwrap();
        assert!(
            (backoff - (now + 30_000)).abs() < 1_000,
            "{}",
            backoff - now
        );
    }

    #[test]
    fn bookkeeping_moves_active_and_clears_passed_cooldowns() {
        let now = now_ms();
        let mut pool = pool_of(now);
        pool.find_mut("a@x").unwrap().status = "active".into();
        pool.find_mut("b@x").unwrap().status = "rate-limited".into();
        pool.find_mut("b@x").unwrap().rate_limit_until = Some(now - 100_000);
        let mut batch = Pending::default();
        batch.served("b@x", now, now, None);
        apply(&mut pool, &batch, now);
        assert_eq!(pool.find("a@x").unwrap().status, "idle");
        assert_eq!(pool.find("b@x").unwrap().status, "active");
        assert_eq!(pool.find("b@x").unwrap().rate_limit_until, None);
        assert_eq!(pool.find("b@x").unwrap().last_used_ms(), now);
    }

    #[test]
    fn serving_ends_an_auth_error_another_program_wrote_and_not_ours() {
        let now = now_ms();
        let mut pool = pool_of(now);
        // Written by another program: no `authErrorToken`, so the pool serves with it.
        pool.find_mut("a@x").unwrap().status = "auth-error".into();
        pool.find_mut("b@x").unwrap().status = "active".into();
        let mut batch = Pending::default();
        batch.served("a@x", now, now, None);
        apply(&mut pool, &batch, now);
        assert_eq!(pool.find("a@x").unwrap().status, "active");
        assert_eq!(pool.find("b@x").unwrap().status, "idle");
        // Ours (its credential refused): a late answer does not make it the active one.
        let b = pool.find_mut("b@x").unwrap();
        b.status = "auth-error".into();
        let tag = b.credential_tag();
        b.extra.insert("authErrorToken".into(), json!(tag));
        let mut batch = Pending::default();
        batch.served("b@x", now, now + 1, None);
        apply(&mut pool, &batch, now);
        assert_eq!(pool.find("b@x").unwrap().status, "auth-error");
        assert_eq!(pool.find("a@x").unwrap().status, "active");
    }

    /// A 429 on a@x (request sent at 200) moved the work to b@x; then a request sent to a@x at
    /// 100 is answered 200, later. Its limits are older news, in the batch and against what
    /// the file holds from another process; a@x, cooling, does not become the active one.
    #[test]
    fn a_late_answer_to_an_earlier_request_is_older_news() {
        use crate::engine::limits::Window;
        let now = now_ms();
        let mut pool = pool_of(now);
        let five = |u: f64, status: &str| Window {
            name: "5h".into(),
            utilization: Some(u),
            status: Some(status.into()),
            reset: Some(now + 3_600_000),
            ..Default::default()
        };
        let limits = |u: f64, status: &str, sent: i64| {
            Limits {
                status: Some(status.into()),
                windows: vec![five(u, status)],
                ..Limits::default()
            }
            .sent_at(sent)
        };
        let mut batch = Pending::default();
        batch.cooldown("a@x", None, now + 3_600_000, "5h window exhausted", None);
        batch.seen("a@x", limits(1.01, "rejected", now - 200));
        batch.served("b@x", now, now - 150, None);
        batch.served(
            "a@x",
            now,
            now - 300,
            Some(limits(0.5, "allowed", now - 300)),
        );
        apply(&mut pool, &batch, now);
        let a = pool.find("a@x").unwrap();
        assert_eq!(
            a.extra["limits"]["status"], "rejected",
            "{}",
            a.extra["limits"]
        );
        assert_eq!(a.windows()[0].utilization, Some(1.01));
        assert_eq!(a.status, "rate-limited");
        assert_eq!(pool.find("b@x").unwrap().status, "active");
        // The next batch of this process, or another's, holds only the late answer: the file's
        // newer word stays, and b@x stays the active one.
        let mut late = Pending::default();
        late.served(
            "a@x",
            now,
            now - 300,
            Some(limits(0.5, "allowed", now - 300)),
        );
        apply(&mut pool, &late, now);
        let a = pool.find("a@x").unwrap();
        assert_eq!(a.extra["limits"]["status"], "rejected");
        assert_eq!(a.extra["limits"]["windows"]["5h"]["utilization"], 1.01);
        assert_eq!(pool.find("b@x").unwrap().status, "active");
        // A request sent after the 429 says what is now.
        let mut fresh = Pending::default();
        fresh.served("a@x", now, now, Some(limits(0.3, "allowed", now)));
        apply(&mut pool, &fresh, now);
        assert_eq!(
            pool.find("a@x").unwrap().windows()[0].utilization,
            Some(0.3)
        );
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
    fn scoped_cooldowns_windows_and_usage_land_in_the_account() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let mut batch = Pending::default();
        batch.cooldown(
            "a@x",
            Some("sonnet"),
            now + 60_000,
            "7d_sonnet window exhausted",
            None,
        );
        let mut limits = Limits::default();
        limits.windows.push(crate::engine::limits::Window {
            name: "7d_sonnet".into(),
            utilization: Some(0.97),
            reset: Some(now + 60_000),
            ..Default::default()
        });
        batch.served("a@x", now, now, Some(limits));
        let c = Counts {
            requests: 1,
            input: 10,
            output: 5,
            cache_read: 2,
            cache_write: 1,
        };
        batch.usage("a@x", "claude-sonnet-4-5", Some(now + 3_600_000), now, c);
        batch.usage("a@x", "claude-sonnet-4-5", Some(now + 3_600_000), now, c);
        apply(&mut pool, &batch, now);
        let a = pool.find("a@x").unwrap();
        assert!(
            a.usable_at(now),
            "a model's quota leaves the account usable"
        );
        assert_eq!(a.model_cooldown_until("sonnet", now), Some(now + 60_000));
        assert_eq!(a.windows()[0].utilization, Some(0.97));
        let day = day_of(now);
        let u = &a.extra["usage"]["days"][&day]["claude-sonnet-4-5"];
        assert_eq!(
            (
                u["requests"].as_u64(),
                u["input"].as_u64(),
                u["cacheWrite"].as_u64()
            ),
            (Some(2), Some(20), Some(2))
        );
        // Applying again adds (each process adds its own counts under the lock).
        apply(&mut pool, &batch, now);
        assert_eq!(
            pool.find("a@x").unwrap().extra["usage"]["days"][&day]["claude-sonnet-4-5"]["output"],
            json!(20)
        );
    }

    #[test]
    fn usage_names_at_most_so_many_models_a_bucket() {
        let now = now_ms();
        let mut pool = pool_of(now);
        let mut batch = Pending::default();
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        for i in 0..MAX_MODELS + 6 {
            batch.usage(
                "a@x",
                &format!("model-{i}"),
                Some(now + 3_600_000),
                now,
                one,
            );
        }
        apply(&mut pool, &batch, now);
        let day = &pool.find("a@x").unwrap().extra["usage"]["days"][&day_of(now)];
        let models = day.as_object().unwrap();
        assert_eq!(models.len(), MAX_MODELS + 1);
        let named: u64 = models
            .values()
            .map(|c| c["requests"].as_u64().unwrap())
            .sum();
        assert_eq!(
            named,
            (MAX_MODELS + 6) as u64,
            "every request still counted"
        );
    }

    /// What a running process holds for an account (last use, usage, windows, a cooldown, a
    /// refusal) written after the account was removed, or removed and logged in again, from
    /// the CLI: nothing comes back, and a login since then is not refused.
    #[test]
    fn bookkeeping_for_a_removed_or_re_added_account() {
        let now = now_ms();
        let pool = pool_of(now);
        let old_tag = pool.find("a@x").unwrap().credential_tag();
        let mut batch = Pending::default();
        let one = Counts {
            requests: 1,
            ..Counts::default()
        };
        let limits = Limits {
            windows: vec![crate::engine::limits::Window {
                name: "5h".into(),
                utilization: Some(0.5),
                ..Default::default()
            }],
            ..Limits::default()
        };
        batch.served("a@x", now, now, Some(limits));
        batch.usage("a@x", "claude-sonnet-4-5", None, now, one);
        batch.cooldown("a@x", None, now + 60_000, "429", None);
        batch.refused("a@x", old_tag.clone(), "401 twice");
        batch.refresh_backoff("a@x", old_tag.clone(), now + 60_000);
        batch.error("a@x", "boom");

        // Kept, the account gets all of it.
        let mut kept = pool.clone();
        apply(&mut kept, &batch, now);
        let a = kept.find("a@x").unwrap();
        assert!(a.auth_error_is_ours());
        assert_eq!(a.extra["refreshBackoffUntil"], json!(now + 60_000));

        let mut removed = pool.clone();
        removed.remove("a@x").unwrap();
        let before = removed.to_value();
        apply(&mut removed, &batch, now);
        assert_eq!(removed.accounts().count(), 1);
        assert!(removed.find("a@x").is_none(), "not brought back");
        let b = |p: &Pool| serde_json::to_value(p.find("b@x").unwrap()).unwrap();
        assert_eq!(
            b(&removed)["status"],
            before["anthropic"][0]["status"],
            "the other account untouched"
        );

        // Removed, then logged in again under the same email: the same Anthropic account (the
        // token endpoint names it), so its use and limits count there; the refusal was the old
        // login's.
        let mut again = removed.clone();
        again.upsert(Account::new_oauth(
            "a@x",
            "a2".into(),
            "r2".into(),
            now + 10_000_000,
            now,
        ));
        apply(&mut again, &batch, now);
        let a = again.find("a@x").unwrap();
        assert_eq!(a.refresh.as_ref().unwrap().expose(), "r2");
        assert_ne!(a.status_enum(), Some(Status::AuthError), "{}", a.status);
        assert!(!a.auth_error_is_ours());
        assert!(
            !a.extra.contains_key("refreshBackoffUntil"),
            "the new login's refresh token was never tried"
        );
        assert_eq!(a.last_used_ms(), now);
        assert_eq!(
            a.extra["usage"]["days"][&day_of(now)]["claude-sonnet-4-5"]["requests"],
            1
        );

        // A `lastUsed` written ahead by a clock that ran three days fast gives way to a use.
        let mut ahead = again.clone();
        ahead.find_mut("a@x").unwrap().last_used = Some(iso_time(now + 3 * 86_400_000));
        let mut used = Pending::default();
        used.last_used.insert("a@x".into(), now - 1_000);
        apply(&mut ahead, &used, now);
        assert_eq!(ahead.find("a@x").unwrap().last_used_ms(), now - 1_000);
    }

    #[test]
    fn cooldowns_only_move_forward_and_failed_batches_merge_back() {
        let now = now_ms();
        let mut pool = pool_of(now);
        pool.find_mut("a@x").unwrap().rate_limit_until = Some(now + 50_000);
        let mut batch = Pending::default();
        batch.cooldown("a@x", None, now + 10_000, "short", None);
        apply(&mut pool, &batch, now);
        assert_eq!(
            pool.find("a@x").unwrap().rate_limit_until,
            Some(now + 50_000)
        );
        let mut newer = Pending::default();
        newer.cooldown("a@x", None, now + 90_000, "newer", None);
        newer.merge_older(batch);
        assert_eq!(newer.cooldowns[&("a@x".to_string(), None)].0, now + 90_000);
    }

    /// A clock stepped back two hours after a window was stored: the file's window is moved onto
    /// the clock (it lasts what it had left), so the next answer about the same period is news,
    /// not older than what the file held from before the step.
    #[test]
    fn stored_windows_are_moved_onto_a_clock_stepped_back_and_the_next_answer_lands() {
        let before = 1_800_000_000_000;
        let mut pool = pool_of(before);
        let window = |utilization: f64, reset: i64, at: i64| crate::engine::limits::Window {
            name: "5h".into(),
            utilization: Some(utilization),
            reset: Some(reset),
            updated_at: Some(at),
            ..Default::default()
        };
        let mut batch = Pending::default();
        let seen = |w| Limits {
            windows: vec![w],
            ..Limits::default()
        };
        batch.seen("a@x", seen(window(0.9, before + 60_000, before)));
        apply(&mut pool, &batch, before);
        // A second later NTP sets the clock back two hours.
        let now = before + 1_000 - 7_200_000;
        let mut batch = Pending::default();
        batch.seen("a@x", seen(window(0.95, now + 59_000, now)));
        apply(&mut pool, &batch, now);
        let a = pool.find("a@x").unwrap();
        let stored = &a.windows()[0];
        assert_eq!(
            stored.utilization,
            Some(0.95),
            "the answer after the step is news"
        );
        assert_eq!(stored.reset, Some(now + 59_000));
        // Another account's window, only read: moved too, by its own stamp.
        let b = pool.find_mut("b@x").unwrap();
        b.extra.insert(
            "limits".into(),
            json!({ "updatedAt": before, "windows": { "7d": { "utilization": 0.5, "reset": before + 3_600_000, "updatedAt": before, "kept": 1 } } }),
        );
        apply(&mut pool, &Pending::default(), now);
        let b = pool.find("b@x").unwrap();
        assert_eq!(b.extra["limits"]["updatedAt"], json!(now));
        let w = &b.extra["limits"]["windows"]["7d"];
        assert_eq!(
            w["reset"],
            json!(now + 3_600_000),
            "what it had left when heard of"
        );
        assert_eq!(w["updatedAt"], json!(now));
        assert_eq!(w["kept"], json!(1), "and what else it holds stays");
        // A clock that was not stepped changes nothing.
        let again = pool.clone();
        apply(&mut pool, &Pending::default(), now + 5_000);
        assert_eq!(pool.to_bytes(), again.to_bytes());
    }

    /// A process exits once its pools are idle (`flush_before_exit`); a write under way holds
    /// its batch outside `pending`, and the process must wait for it.
    #[test]
    fn a_write_under_way_is_not_idle() {
        let book = Bookkeeping::default();
        assert!(book.is_idle());
        let writing = book.flushing.try_lock().unwrap();
        assert!(!book.is_idle(), "a write under way");
        drop(writing);
        assert!(book.is_idle());
        book.record(|p| p.served("a@x", 1, 1, None));
        assert!(!book.is_idle(), "recorded, unwritten");
    }

    #[test]
    fn a_batch_kept_while_the_store_cannot_be_written_stays_bounded() {
        let now = now_ms();
        let one = Counts {
            requests: 1,
            input: 1,
            ..Counts::default()
        };
        let mut kept = Pending::default();
        // Every write fails: each round's batch is put back under the next one's.
        for round in 0..20 {
            let mut batch = Pending::default();
            for i in 0..1_000 {
                let n = round * 1_000 + i;
                // A new model per request, a reset moved by minutes on every answer, and a new
                // family refused per request.
                let reset = now + 60_000 + (n % 280) * 61_000;
                batch.usage("a@x", &format!("m-{n}"), Some(reset), now, one);
                batch.cooldown(
                    "a@x",
                    Some(&format!("fam{n}")),
                    now + 3_600_000 + n,
                    "429",
                    None,
                );
            }
            batch.merge_older(std::mem::take(&mut kept));
            kept = batch;
        }
        let windows: std::collections::HashSet<i64> = kept.usage.keys().map(|k| k.3).collect();
        assert!(
            windows.len() <= MAX_WINDOW_BUCKETS,
            "{} windows",
            windows.len()
        );
        assert!(
            kept.usage.len() <= MAX_WINDOW_BUCKETS * (MAX_MODELS + 1),
            "{} usage keys",
            kept.usage.len()
        );
        let total: u64 = kept.usage.values().map(|c| c.requests).sum();
        assert_eq!(total, 20_000, "every request still counted");
        assert_eq!(
            kept.cooldowns.len(),
            super::super::limits::MAX_SCOPED_COOLDOWNS,
            "the rests ending last"
        );
        assert!(kept
            .cooldowns
            .keys()
            .any(|(_, s)| s.as_deref() == Some("fam19999")));
        let mut pool = pool_of(now);
        apply(&mut pool, &kept, now);
        let stored = &pool.find("a@x").unwrap().extra["modelCooldowns"];
        assert_eq!(
            stored.as_object().unwrap().len(),
            super::super::limits::MAX_SCOPED_COOLDOWNS
        );
    }
}
