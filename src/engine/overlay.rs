//! What this process knows before the pool file does: cooldowns it decided, credentials it saw
//! refused, which account each OpenCode session uses, and the account it served last (sticky).
//! Applied on top of every snapshot, so a decision takes effect at once, whatever the file's
//! write lock is doing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::account::Account;

/// Session pins are forgotten after this long without a request.
const SESSION_TTL: Duration = Duration::from_secs(6 * 3600);
/// How long a cooldown this process decided still counts here after the store holds it: a
/// request that read the pool just before the write must not see the account open.
pub(super) const STORED_GRACE: Duration = Duration::from_secs(1);
/// A cooldown ending at most this long after one already known is that one: the requests in
/// flight on an account when it starts refusing are refused together, each bare 429 (or one with
/// the same `retry-after`) counted from its own arrival, a few ms after the last. Each was news
/// by those ms, and each was written to the pool at once (a locked, fsynced write apiece, while
/// the first was still being written); the first one stands for them all.
const SAME_COOLDOWN_MS: i64 = 1_000;
/// Pins kept at most (a client that names a new session per request must not grow the process
/// without bound): two generations of half as many, the older one dropped when the newer fills,
/// so a session in use stays pinned and a quiet one goes after at least 5,000 newer ones.
const MAX_SESSIONS: usize = 10_000;

/// Cooldowns this process holds before one it decides sweeps out those that no longer count.
const SWEEP_COOLING_PAST: usize = 64;

pub(crate) use crate::store::lock;

use super::limits::Window;

/// Which requests a cooldown holds back: the whole account, or one model family on it.
type Scope = Option<String>;
/// Until when (epoch ms), since when the store holds it, and when it was decided.
type Cooling = (i64, Option<Instant>, Decided);

/// Whether this process's copy of a cooldown still counts: once the store has held it a while,
/// the store is the truth (a `reset-cooldowns` may have cleared it there).
fn ours(stored: &Option<Instant>) -> bool {
    stored.is_none_or(|at| at.elapsed() < STORED_GRACE)
}

/// Whether a cooldown is worth keeping at `now`: not over, and still this process's to say.
fn still_counts((until, stored, _): &Cooling, now: i64) -> bool {
    *until > now && ours(stored)
}

/// When a cooldown was decided, by the wall clock (epoch ms) and by the monotonic one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Decided(i64, Instant);

impl Decided {
    pub(crate) fn now() -> Decided {
        Decided(crate::account::now_ms(), Instant::now())
    }

    /// When it was decided, by the monotonic clock.
    pub(crate) fn instant(&self) -> Instant {
        self.1
    }

    /// Decided just now, when the wall clock read `wall`.
    #[cfg(test)]
    pub(crate) fn when_the_clock_read(wall: i64) -> Decided {
        Decided(wall, Instant::now())
    }

    /// How far the wall clock was stepped back since (0 when it was not): the monotonic clock
    /// says how much time passed. A cooldown this process decided an instant before NTP set the
    /// clock back two hours counted two hours too long while its own copy applied (and for ever
    /// when the store could not take it).
    pub(crate) fn clock_set_back(&self) -> i64 {
        let elapsed = i64::try_from(self.1.elapsed().as_millis()).unwrap_or(i64::MAX);
        let back = self
            .0
            .saturating_add(elapsed)
            .saturating_sub(crate::account::now_ms());
        if back > crate::account::CLOCK_STEP_MS {
            back
        } else {
            0
        }
    }
}

#[derive(Default)]
pub struct Overlay {
    /// (email, scope) -> cooling until (epoch ms), and since when the store holds it.
    cooling: Mutex<HashMap<(String, Scope), Cooling>>,
    /// email -> tag of the credential that was refused. A new login brings a new credential,
    /// whose tag differs: the mark then no longer applies, in this process or any other.
    refused: Mutex<HashMap<String, Option<String>>>,
    /// email -> the rest after a 401 that no new token answered, and the one after a
    /// third-party refusal. Tied to the credential like a refusal (a login since then is not
    /// resting), and to the account's `reset-cooldowns` count (a reset since then, from any
    /// process, lifts it).
    resting: Mutex<HashMap<String, Rests>>,
    /// The account that served the request sent last, and when that was sent.
    sticky: Mutex<Option<(String, i64)>>,
    sessions: Mutex<Pins>,
    /// resource id (a file, a batch) -> the account found holding it.
    holders: Mutex<Pins>,
    /// Some file's holder was learned: from then on Messages bodies are looked into for the
    /// files they refer to (before, that costs nothing: `Exchange::wants_body`).
    knows_files: std::sync::atomic::AtomicBool,
    /// email -> the windows answers reported (the store has them a second later).
    windows: Mutex<HashMap<String, Vec<Window>>>,
    /// The last "every account cools" reported. One report per change.
    all_cooling: Mutex<Option<Told>>,
    /// The last hold announced. One notice per cooldown, however many requests wait.
    holding: Mutex<Option<Told>>,
}

/// A cooldown told: the account, until when, and its `reset-cooldowns` count then. A reset
/// since (from a shell too) makes the same cooldown met again news: its user was told the
/// accounts were back, and heard nothing when they were all cooling again.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Told {
    email: String,
    until: i64,
    resets: u64,
}

/// Whether `fresh` is news after `last`, which it replaces unless it judged by an older read
/// of the pool (a reset count lower than one already seen).
fn first_told(last: &Mutex<Option<Told>>, email: &str, until: i64, resets: u64) -> bool {
    let fresh = Told {
        email: email.to_string(),
        until,
        resets,
    };
    let mut last = lock(last);
    match last.as_ref() {
        Some(l) if l.email == fresh.email && fresh.resets < l.resets => false,
        Some(l) if *l == fresh => false,
        _ => {
            *last = Some(fresh);
            true
        }
    }
}

/// A rest after a 401 (or after a third-party refusal, with no tag): the refused credential's
/// tag, until when, the account's `reset-cooldowns` count when it was decided (`None`: not
/// known, no reset lifts it), and whether it is there to send requests to the pool's Console
/// keys (a third-party refusal's), which ends with the last key that could serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rest {
    pub tag: Option<String>,
    pub until: i64,
    pub resets: Option<u64>,
    pub for_keys: bool,
}

/// An account's rests, one of each kind (`Rest::for_keys`), kept apart: one replacing the other
/// lost a 401's rest to a third-party refusal's, and once that was lifted (no key left) the
/// refused token was sent again before the token endpoint's wait was over.
#[derive(Default)]
struct Rests([Option<Rest>; 2]);

impl Rests {
    fn slot(&mut self, for_keys: bool) -> &mut Option<Rest> {
        &mut self.0[usize::from(for_keys)]
    }

    fn has(&self, for_keys: bool) -> bool {
        self.0[usize::from(for_keys)].is_some()
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// A session's account, its last request, and when the request that pinned it was sent.
type Pin = (String, Instant, i64);

/// session id -> pin, in two generations.
#[derive(Default)]
struct Pins {
    recent: HashMap<String, Pin>,
    older: HashMap<String, Pin>,
}

impl Pins {
    fn get(&self, id: &str) -> Option<&Pin> {
        self.recent.get(id).or_else(|| self.older.get(id))
    }

    /// A request of session `id` sent at `sent_at` was served by `email`: the session's account
    /// unless a request sent later was served by another (a late answer does not move it back).
    fn insert(&mut self, id: &str, email: &str, sent_at: i64) {
        let now = crate::account::now_ms();
        let (email, sent_at) = match self.get(id) {
            Some((kept, _, at)) if *at > sent_at && !crate::account::set_back_since(*at, now) => {
                (kept.clone(), *at)
            }
            _ => (email.to_string(), sent_at),
        };
        if self.recent.len() >= MAX_SESSIONS / 2 && !self.recent.contains_key(id) {
            self.older = std::mem::take(&mut self.recent);
        }
        self.older.remove(id);
        self.recent
            .insert(id.to_string(), (email, Instant::now(), sent_at));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

impl Overlay {
    /// Records a cooldown (of `scope`, a model family, or the whole account); false when it is
    /// no news: one known already ends no more than `SAME_COOLDOWN_MS` before it.
    /// `in_store`: the store's own rest of that scope as last read (`None`: none there).
    pub fn cool(
        &self,
        email: &str,
        scope: Option<&str>,
        until: i64,
        in_store: Option<i64>,
    ) -> bool {
        let mut cooling = lock(&self.cooling);
        let key = (email.to_string(), scope.map(str::to_string));
        if let Some((t, stored, _)) = cooling.get(&key) {
            // A copy the store held and holds no longer was lifted there, by a new login or a
            // `reset-cooldowns` from another process, in the second this process's copy still
            // counts. The account refusing again says the same rest, and it was taken for the
            // copy already known: not written, and other processes went back to it.
            let lifted = stored.is_some()
                && in_store.is_none_or(|s| s.saturating_add(SAME_COOLDOWN_MS) < *t);
            // Only while this process's copy counts: once the store is the truth, any cooldown
            // is news. A `reset-cooldowns` from another process may have cleared it there, and
            // the account refusing again says the same reset: taken for the copy already known,
            // it was neither kept here nor written, and the account was asked on every request.
            if ours(stored) && !lifted && t.saturating_add(SAME_COOLDOWN_MS) >= until {
                return false;
            }
        }
        // What no longer counts goes here too once there is much of it, not only when a request
        // is served: while every answer is a refusal, nothing is served.
        if cooling.len() >= SWEEP_COOLING_PAST {
            let now = crate::account::now_ms();
            cooling.retain(|_, c| still_counts(c, now));
        }
        cooling.insert(key.clone(), (until, None, Decided::now()));
        if key.1.is_some() {
            let mut scoped: Vec<(Scope, (i64, Instant))> = cooling
                .iter()
                .filter(|((e, s), _)| e == email && s.is_some())
                .map(|((_, s), (t, _, decided))| (s.clone(), (*t, decided.1)))
                .collect();
            for s in super::limits::cap_scoped(&mut scoped, &key.1) {
                cooling.remove(&(email.to_string(), s));
            }
        }
        true
    }

    /// Notes that the store holds a cooldown (`until`): unless a later one was decided since,
    /// this process's own copy goes a moment later (`STORED_GRACE`), and what is stored counts
    /// from then on, a `reset-cooldowns` by another process (the CLI while OpenCode runs) too.
    pub fn stored(&self, email: &str, scope: Option<&str>, until: i64) {
        let mut cooling = lock(&self.cooling);
        let key = (email.to_string(), scope.map(str::to_string));
        if let Some((t, stored, _)) = cooling.get_mut(&key) {
            if *t <= until && stored.is_none() {
                *stored = Some(Instant::now());
            }
        }
    }

    /// The later of the account-wide cooldown and the one of `family`, if still running.
    pub fn cooling_until(&self, email: &str, family: Option<&str>, now: i64) -> Option<i64> {
        let cooling = lock(&self.cooling);
        let get = |scope: Option<&str>| {
            cooling
                .get(&(email.to_string(), scope.map(str::to_string)))
                .filter(|(_, stored, _)| ours(stored))
                .map(|(t, _, decided)| t.saturating_sub(decided.clock_set_back()))
        };
        get(None)
            .max(family.and_then(|f| get(Some(f))))
            .filter(|t| *t > now)
    }

    /// Merges the windows an answer reported with those seen before (an answer may carry only
    /// some: a model's scoped window comes with that model's requests).
    /// Those heard of before a step back of the clock are moved onto it first, or the fresh
    /// ones of the same period would be taken for older news.
    pub fn note_windows(&self, email: &str, fresh: &[Window]) {
        let mut all = lock(&self.windows);
        let known = all.entry(email.to_string()).or_default();
        super::limits::settle_windows(known, crate::account::now_ms());
        super::limits::merge_windows(known, fresh);
    }

    /// The windows answers reported, on the clock as it reads `now`.
    pub fn windows(&self, email: &str, now: i64) -> Vec<Window> {
        let mut all = lock(&self.windows);
        let Some(known) = all.get_mut(email) else {
            return Vec::new();
        };
        super::limits::settle_windows(known, now);
        known.clone()
    }

    /// Whether "every account cools, the first is back at `until`" is news (one report, not one
    /// per request: a peer wrote a 489 MB log cycling limited accounts).
    /// `resets`: `email`'s `reset-cooldowns` count in the pool the request judged by.
    pub fn first_all_cooling(&self, email: &str, until: i64, resets: u64) -> bool {
        first_told(&self.all_cooling, email, until, resets)
    }

    /// Whether a hold for `email` until `until` is news (`first_all_cooling`'s twin for held
    /// requests: fifty held requests make one notice).
    pub fn first_hold(&self, email: &str, until: i64, resets: u64) -> bool {
        first_told(&self.holding, email, until, resets)
    }

    pub fn refuse(&self, email: &str, tag: Option<String>) {
        lock(&self.refused).insert(email.to_string(), tag);
    }

    /// Whether `a`'s current credential is the one this process saw refused.
    pub fn is_refused(&self, a: &Account) -> bool {
        let mut refused = lock(&self.refused);
        match refused.get(&a.email) {
            Some(tag) if *tag == a.credential_tag() => true,
            Some(_) => {
                refused.remove(&a.email);
                false
            }
            None => false,
        }
    }

    /// Leaves `email` alone until `rest.until` while it holds the credential tagged `rest.tag`
    /// (`None`: whatever it holds) and no `reset-cooldowns` ran since `rest.resets`.
    pub fn rest(&self, email: &str, rest: Rest) {
        let mut resting = lock(&self.resting);
        let slot = resting
            .entry(email.to_string())
            .or_default()
            .slot(rest.for_keys);
        match slot {
            Some(r) if r.tag == rest.tag && r.resets == rest.resets => {
                r.until = r.until.max(rest.until)
            }
            _ => *slot = Some(rest),
        }
    }

    /// Until when `a` rests after a 401, if it still holds the credential that got it and no
    /// reset ran on it since (the CLI's `reset-cooldowns` while OpenCode runs: it left the
    /// account resting here for the token endpoint's whole wait, up to ten minutes).
    pub fn resting_until(&self, a: &Account, now: i64) -> Option<i64> {
        let mut resting = lock(&self.resting);
        let rests = resting.get_mut(&a.email)?;
        let mut until = None;
        for slot in &mut rests.0 {
            let Some(r) = slot.as_ref() else {
                continue;
            };
            let same_credential = r.tag.is_none() || r.tag == a.credential_tag();
            // Greater, not different: a request still judging by a pool read before the rest
            // was decided sees the count before it, and that is no reset.
            let no_reset_since = r.resets.is_none_or(|n| a.cooldown_resets() <= n);
            if r.until > now && same_credential && no_reset_since {
                until = until.max(Some(r.until));
            } else {
                *slot = None;
            }
        }
        if rests.is_empty() {
            resting.remove(&a.email);
        }
        until
    }

    /// Whether an account rests so that requests go to the pool's Console keys.
    pub fn rests_for_keys(&self) -> bool {
        lock(&self.resting).values().any(|r| r.has(true))
    }

    /// Ends the rests that send requests to the pool's Console keys: the accounts lifted.
    pub fn lift_rests_for_keys(&self) -> Vec<String> {
        let mut lifted = Vec::new();
        lock(&self.resting).retain(|email, r| {
            if r.slot(true).take().is_some() {
                lifted.push(email.clone());
            }
            !r.is_empty()
        });
        lifted
    }

    pub fn clear_refused(&self, email: &str) {
        lock(&self.refused).remove(email);
    }

    pub fn sticky(&self) -> Option<String> {
        lock(&self.sticky).as_ref().map(|(e, _)| e.clone())
    }

    pub fn pinned(&self, session: Option<&str>, parent: Option<&str>) -> Option<String> {
        let sessions = lock(&self.sessions);
        let live = |id: &str| {
            sessions
                .get(id)
                .filter(|(_, at, _)| at.elapsed() < SESSION_TTL)
                .map(|(e, _, _)| e.clone())
        };
        session.and_then(live).or_else(|| parent.and_then(live))
    }

    /// The account found holding the resource `id` (a file, a batch), if this process found one.
    pub fn holder(&self, id: &str) -> Option<String> {
        lock(&self.holders).get(id).map(|(e, _, _)| e.clone())
    }

    /// `email` answered a request for the resource `id`: it holds it. Not a choice of account
    /// for what comes next (the sticky account and the session's stay as they are).
    pub fn holds(&self, id: &str, email: &str, sent_at: i64) {
        lock(&self.holders).insert(id, email, sent_at);
        if id.starts_with("file_") {
            self.knows_files
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether this process ever learned which account holds a file.
    pub fn knows_files(&self) -> bool {
        self.knows_files.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The account that served a request sent at `sent_at` becomes sticky (and the session's)
    /// unless one served a request sent later: the latest choice stands, not the latest answer
    /// (a slow answer from an account that refused a later request since must not make it the
    /// one to use again). Cooldowns that have passed are forgotten.
    pub fn served(&self, email: &str, session: Option<&str>, now: i64, sent_at: i64) {
        {
            let mut sticky = lock(&self.sticky);
            let later = |at: i64| at <= sent_at || crate::account::set_back_since(at, now);
            if sticky.as_ref().is_none_or(|(_, at)| later(*at)) {
                *sticky = Some((email.to_string(), sent_at));
            }
        }
        if let Some(s) = session {
            lock(&self.sessions).insert(s, email, sent_at);
        }
        lock(&self.cooling).retain(|_, c| still_counts(c, now));
        *lock(&self.all_cooling) = None;
        *lock(&self.holding) = None;
    }

    /// `reset-cooldowns` and re-enabling: forget what this process decided.
    pub fn clear(&self) {
        lock(&self.cooling).clear();
        lock(&self.refused).clear();
        lock(&self.resting).clear();
        *lock(&self.all_cooling) = None;
        *lock(&self.holding) = None;
    }

    /// Forgets what this process knew of accounts the pool no longer has: a process that sees
    /// logins come and go for days (a service adding and removing accounts) kept each one's
    /// windows for its whole life. One added again is learnt anew, its rests from the store.
    pub fn keep_only(&self, present: &std::collections::HashSet<&str>) {
        lock(&self.cooling).retain(|(e, _), _| present.contains(e.as_str()));
        lock(&self.refused).retain(|e, _| present.contains(e.as_str()));
        lock(&self.resting).retain(|e, _| present.contains(e.as_str()));
        lock(&self.windows).retain(|e, _| present.contains(e.as_str()));
    }

    /// `clear`, for one account.
    pub fn forget(&self, email: &str) {
        lock(&self.cooling).retain(|(e, _), _| e != email);
        lock(&self.refused).remove(email);
        lock(&self.resting).remove(email);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_belongs_to_the_refused_credential() {
        let o = Overlay::default();
        let mut a = Account::new_oauth("a@x", "a1".into(), "r1".into(), 0, 0);
        o.refuse("a@x", a.credential_tag());
        assert!(o.is_refused(&a));
        // A new login (new refresh token) clears it.
        a.refresh = Some("r2".into());
        assert!(!o.is_refused(&a));
        a.refresh = Some("r1".into());
        assert!(!o.is_refused(&a), "the mark is gone, not hidden");
    }

    /// `reset-cooldowns` told its user every account was back: the same cooldown met again
    /// is told again (once), whether the reset ran here or in a shell (its count then higher).
    #[test]
    fn a_cooldown_met_again_after_a_reset_is_told_again_once() {
        let o = Overlay::default();
        assert!(o.first_all_cooling("a@x", 500, 0));
        assert!(!o.first_all_cooling("a@x", 500, 0), "once per cooldown");
        assert!(o.first_hold("a@x", 500, 0));
        assert!(!o.first_hold("a@x", 500, 0));
        o.clear();
        assert!(o.first_all_cooling("a@x", 500, 0), "after a reset here");
        assert!(o.first_hold("a@x", 500, 0), "after a reset here");
        assert!(!o.first_all_cooling("a@x", 500, 0));
        assert!(
            o.first_all_cooling("a@x", 500, 1),
            "after a reset from a shell"
        );
        assert!(o.first_hold("a@x", 500, 1), "after a reset from a shell");
        assert!(!o.first_all_cooling("a@x", 500, 1));
        assert!(
            !o.first_all_cooling("a@x", 500, 0),
            "a request that read the pool before the reset is no news"
        );
        assert!(!o.first_all_cooling("a@x", 500, 1), "nor one after it");
        assert!(
            o.first_all_cooling("b@x", 500, 0),
            "another account's count is its own"
        );
    }

    fn rest(tag: Option<String>, until: i64) -> Rest {
        Rest {
            tag,
            until,
            resets: Some(0),
            for_keys: false,
        }
    }

    #[test]
    fn a_rest_after_a_401_belongs_to_the_credential_that_got_it() {
        let o = Overlay::default();
        let mut a = Account::new_oauth("a@x", "a1".into(), "r1".into(), 0, 0);
        o.rest("a@x", rest(a.credential_tag(), 500));
        o.rest("a@x", rest(a.credential_tag(), 300));
        assert_eq!(o.resting_until(&a, 100), Some(500), "a rest only lengthens");
        assert_eq!(o.resting_until(&a, 500), None, "and ends");
        o.rest("a@x", rest(a.credential_tag(), 900));
        // Logged in again (new refresh token): the new login is not resting.
        a.refresh = Some("r2".into());
        assert_eq!(o.resting_until(&a, 100), None);
        a.refresh = Some("r1".into());
        assert_eq!(
            o.resting_until(&a, 100),
            None,
            "the rest is gone, not hidden"
        );
        // Without a known credential, it holds whatever the account holds.
        o.rest("a@x", rest(None, 900));
        assert_eq!(o.resting_until(&a, 100), Some(900));
        o.clear();
        assert_eq!(o.resting_until(&a, 100), None);
    }

    #[test]
    fn the_rests_sending_requests_to_the_keys_are_lifted_alone() {
        let o = Overlay::default();
        let a = Account::new_oauth("a@x", "a1".into(), "r1".into(), 0, 0);
        let b = Account::new_oauth("b@x", "b1".into(), "r1".into(), 0, 0);
        assert!(!o.rests_for_keys());
        o.rest(
            "a@x",
            Rest {
                for_keys: true,
                ..rest(None, 900)
            },
        );
        o.rest("b@x", rest(b.credential_tag(), 900));
        assert!(o.rests_for_keys());
        assert_eq!(o.lift_rests_for_keys(), ["a@x"]);
        assert!(!o.rests_for_keys());
        assert_eq!(o.resting_until(&a, 100), None);
        assert_eq!(o.resting_until(&b, 100), Some(900), "a 401's rest stays");
        // Both on one account: the later end holds it, and lifting the keys' leaves the 401's.
        o.rest(
            "b@x",
            Rest {
                for_keys: true,
                ..rest(None, 2000)
            },
        );
        assert_eq!(o.resting_until(&b, 100), Some(2000));
        assert_eq!(o.lift_rests_for_keys(), ["b@x"]);
        assert_eq!(
            o.resting_until(&b, 100),
            Some(900),
            "the 401's rest was not replaced"
        );
        o.forget("b@x");
        assert_eq!(o.resting_until(&b, 100), None);
    }

    /// `reset-cooldowns` run by another process reaches a rest this process keeps on its own;
    /// a rest decided after the reset (its count already read) is not lifted by it.
    #[test]
    fn a_reset_from_another_process_lifts_a_rest_decided_before_it_only() {
        let o = Overlay::default();
        let mut a = Account::new_oauth("a@x", "a1".into(), "r1".into(), 0, 0);
        o.rest("a@x", rest(a.credential_tag(), 900));
        assert_eq!(o.resting_until(&a, 100), Some(900));
        a.count_cooldown_reset();
        assert_eq!(o.resting_until(&a, 100), None, "the reset lifts it");
        a.count_cooldown_reset();
        assert_eq!(o.resting_until(&a, 100), None, "gone, not hidden");
        let decided_after = Rest {
            tag: a.credential_tag(),
            until: 900,
            resets: Some(a.cooldown_resets()),
            for_keys: false,
        };
        o.rest("a@x", decided_after);
        assert_eq!(
            o.resting_until(&a, 100),
            Some(900),
            "an older reset does not"
        );
        let mut read_before = a.clone();
        read_before.extra.insert("cooldownsReset".into(), 1.into());
        assert_eq!(
            o.resting_until(&read_before, 100),
            Some(900),
            "nor a pool read before it"
        );
        // Not known when it was decided (the store was never read): no reset lifts it.
        o.rest(
            "b@x",
            Rest {
                tag: None,
                until: 900,
                resets: None,
                for_keys: false,
            },
        );
        let mut b = Account::new_oauth("b@x", "b1".into(), "r1".into(), 0, 0);
        b.count_cooldown_reset();
        assert_eq!(o.resting_until(&b, 100), Some(900));
    }

    #[test]
    fn cooldowns_only_move_forward_and_expire() {
        let o = Overlay::default();
        assert!(o.cool("a@x", None, 100, None));
        assert!(!o.cool("a@x", None, 50, None));
        assert!(o.cool("a@x", None, 1_200, None));
        assert_eq!(o.cooling_until("a@x", None, 120), Some(1_200));
        assert_eq!(o.cooling_until("a@x", None, 1_200), None);
        // Refusals of requests in flight together, each counted from its own arrival: one.
        assert!(o.cool("z@x", None, 5_000, None));
        assert!(
            !o.cool("z@x", None, 5_000 + SAME_COOLDOWN_MS, None),
            "the same burst"
        );
        assert_eq!(o.cooling_until("z@x", None, 0), Some(5_000));
        assert!(o.cool("z@x", None, 6_001, None), "a longer one is news");
        assert!(o.cool("a@x", Some("sonnet"), 1_300, None));
        assert_eq!(o.cooling_until("a@x", Some("sonnet"), 1_250), Some(1_300));
        assert_eq!(
            o.cooling_until("a@x", Some("opus"), 1_250),
            None,
            "other models serve"
        );
        o.served("b@x", Some("ses"), 1_400, 1_400);
        assert_eq!(
            o.cooling_until("a@x", Some("sonnet"), 0),
            None,
            "passed cooldowns are dropped"
        );
        assert_eq!(o.pinned(Some("ses"), None).as_deref(), Some("b@x"));
        assert_eq!(o.pinned(Some("other"), Some("ses")).as_deref(), Some("b@x"));
        assert_eq!(o.sticky().as_deref(), Some("b@x"));
    }

    #[test]
    fn a_cooldown_decided_before_the_clock_went_back_keeps_its_length() {
        let o = Overlay::default();
        let now = crate::account::now_ms();
        // Decided a moment ago when the clock read two hours later than it does now: a 60 s
        // rest then ends about 60 s from now, not two hours and a minute.
        let before = now + 7_200_000;
        lock(&o.cooling).insert(
            ("a@x".to_string(), None),
            (before + 60_000, None, Decided::when_the_clock_read(before)),
        );
        let until = o.cooling_until("a@x", None, now).unwrap();
        assert!((until - (now + 60_000)).abs() < 1_000, "{}", until - now);
        // A clock that did not move: as decided.
        assert!(o.cool("b@x", None, now + 60_000, None));
        assert_eq!(o.cooling_until("b@x", None, now), Some(now + 60_000));
    }

    #[test]
    fn a_cooldown_the_store_holds_is_the_store_s_after_a_moment() {
        let o = Overlay::default();
        assert!(o.cool("a@x", Some("sonnet"), 500, None));
        assert!(o.cool("b@x", None, 500, None));
        o.stored("a@x", Some("sonnet"), 500);
        // Longer than what was written: decided after the write, it stays this process's.
        assert!(o.cool("b@x", None, 2_900, None));
        o.stored("b@x", None, 500);
        assert_eq!(
            o.cooling_until("a@x", Some("sonnet"), 0),
            Some(500),
            "still counted just after the write"
        );
        std::thread::sleep(STORED_GRACE + Duration::from_millis(20));
        assert_eq!(o.cooling_until("a@x", Some("sonnet"), 0), None);
        assert_eq!(o.cooling_until("b@x", None, 0), Some(2_900));
        // Within that moment, a copy the store held and no longer holds (a new login, a
        // `reset-cooldowns` from a shell) was lifted there: the same rest met again is news.
        assert!(o.cool("c@x", None, 900, None));
        o.stored("c@x", None, 900);
        assert!(!o.cool("c@x", None, 900, Some(900)), "the store holds it");
        assert!(!o.cool("c@x", None, 900, Some(2_000)), "or a later one");
        assert!(o.cool("c@x", None, 900, None), "lifted there");
        assert!(
            !o.cool("c@x", None, 900, None),
            "not stored again yet: a burst"
        );
        o.stored("c@x", None, 900);
        assert!(
            o.cool("c@x", None, 900, Some(-5_000)),
            "an older one is not ours"
        );
        lock(&o.cooling).remove(&("c@x".to_string(), None));
        // The store may have lost it since (a `reset-cooldowns` from a shell): the same rest
        // decided again is news, kept here and written again.
        assert!(o.cool("a@x", Some("sonnet"), 500, None));
        assert_eq!(o.cooling_until("a@x", Some("sonnet"), 0), Some(500));
        lock(&o.cooling).remove(&("a@x".to_string(), Some("sonnet".to_string())));
        o.served("c@x", None, 0, 0);
        assert_eq!(lock(&o.cooling).len(), 1, "forgotten entries are swept");
    }

    /// A slow answer to a request sent before a later one moved to another account (its 429):
    /// the account in use, and the session's, stay the later request's.
    #[test]
    fn a_late_answer_to_an_earlier_request_moves_neither_sticky_nor_pin_back() {
        let o = Overlay::default();
        o.served("b@x", Some("ses"), 500, 200);
        o.served("a@x", Some("ses"), 900, 100);
        assert_eq!(o.sticky().as_deref(), Some("b@x"));
        assert_eq!(o.pinned(Some("ses"), None).as_deref(), Some("b@x"));
        o.served("a@x", Some("ses"), 950, 300);
        assert_eq!(o.sticky().as_deref(), Some("a@x"));
        assert_eq!(o.pinned(Some("ses"), None).as_deref(), Some("a@x"));
    }

    /// A request sent before the clock was stepped back two hours is stamped two hours ahead of
    /// the ones sent after: it does not keep the account in use, or the session's, for two hours.
    #[test]
    fn a_request_sent_before_the_clock_went_back_is_not_the_latest_for_hours() {
        let o = Overlay::default();
        let now = crate::account::now_ms();
        o.served("a@x", Some("ses"), now, now + 7_200_000);
        o.served("b@x", Some("ses"), now, now);
        assert_eq!(o.sticky().as_deref(), Some("b@x"));
        assert_eq!(o.pinned(Some("ses"), None).as_deref(), Some("b@x"));
        // Less than a step apart: the order of sending stands.
        o.served("a@x", Some("ses"), now, now + 60_000);
        o.served("b@x", Some("ses"), now, now + 1_000);
        assert_eq!(o.sticky().as_deref(), Some("a@x"));
        assert_eq!(o.pinned(Some("ses"), None).as_deref(), Some("a@x"));
    }

    #[test]
    fn session_pins_stay_bounded_and_the_recent_ones_stay() {
        let o = Overlay::default();
        for i in 0..(MAX_SESSIONS * 3) {
            o.served("a@x", Some(&format!("ses_{i}")), 0, 0);
            assert!(lock(&o.sessions).len() <= MAX_SESSIONS);
        }
        let last = MAX_SESSIONS * 3 - 1;
        assert_eq!(
            o.pinned(Some(&format!("ses_{last}")), None).as_deref(),
            Some("a@x")
        );
        assert_eq!(
            o.pinned(Some("ses_0"), None),
            None,
            "the quietest went first"
        );
        // A session already pinned is updated in place, with no sweep.
        let before = lock(&o.sessions).len();
        o.served("b@x", Some(&format!("ses_{last}")), 0, 0);
        assert_eq!(lock(&o.sessions).len(), before);
        assert_eq!(
            o.pinned(Some(&format!("ses_{last}")), None).as_deref(),
            Some("b@x")
        );
    }

    /// The README's bounds, from the side a user meets: a session keeps its account through
    /// 5,000 newer sessions (the bound test above holds only the last one and the first gone,
    /// and kept passing with a bound of a few), and a pin quiet for 6 h pins nothing.
    #[test]
    fn a_pin_outlives_5000_newer_sessions_and_not_six_quiet_hours() {
        let o = Overlay::default();
        o.served("a@x", Some("ses_first"), 0, 0);
        for i in 0..5_000 {
            o.served("b@x", Some(&format!("ses_{i}")), 0, 0);
        }
        assert_eq!(o.pinned(Some("ses_first"), None).as_deref(), Some("a@x"));
        assert_eq!(
            o.pinned(Some("ses_sub"), Some("ses_first")).as_deref(),
            Some("a@x"),
            "a subagent still inherits it"
        );
        // An Instant 6 h back exists once the monotonic clock has run that long (any CI host).
        if let Some(quiet) = Instant::now().checked_sub(SESSION_TTL + Duration::from_secs(1)) {
            lock(&o.sessions)
                .recent
                .insert("ses_quiet".into(), ("c@x".into(), quiet, 0));
            assert_eq!(o.pinned(Some("ses_quiet"), None), None);
            assert_eq!(o.pinned(Some("ses_sub"), Some("ses_quiet")), None);
        }
    }

    #[test]
    fn rests_decided_while_nothing_is_served_stay_bounded() {
        let o = Overlay::default();
        let now = crate::account::now_ms();
        o.cool("a@x", None, now + 60_000, None);
        for i in 0..5_000 {
            // Passed ones go too, once there are many.
            o.cool(&format!("b{i}@x"), None, now - 1, None);
            assert!(o.cool("a@x", Some(&format!("fam{i}")), now + 3_600_000 + i, None));
        }
        let cooling = lock(&o.cooling);
        let scoped = cooling.keys().filter(|(_, s)| s.is_some()).count();
        assert_eq!(scoped, super::super::limits::MAX_SCOPED_COOLDOWNS);
        assert!(cooling.contains_key(&("a@x".to_string(), Some("fam4999".to_string()))));
        assert!(
            cooling.contains_key(&("a@x".to_string(), None)),
            "the account's own stays"
        );
        assert!(
            cooling.len() <= SWEEP_COOLING_PAST + 1,
            "{} held",
            cooling.len()
        );
    }

    #[test]
    fn what_was_known_of_accounts_gone_from_the_pool_goes() {
        let o = Overlay::default();
        let now = crate::account::now_ms();
        let w = |name: &str| Window {
            name: name.into(),
            utilization: Some(0.5),
            ..Window::default()
        };
        for i in 0..1_000 {
            let email = format!("gone{i}@x");
            o.note_windows(&email, &[w("5h"), w("7d")]);
            o.cool(&email, Some("sonnet"), now + 60_000, None);
            o.refuse(&email, None);
        }
        o.note_windows("kept@x", &[w("5h")]);
        o.cool("kept@x", None, now + 60_000, None);
        o.keep_only(&["kept@x"].into_iter().collect());
        assert_eq!(lock(&o.windows).len(), 1);
        assert_eq!(lock(&o.cooling).len(), 1);
        assert!(lock(&o.refused).is_empty());
        assert_eq!(o.windows("kept@x", now).len(), 1);
        assert_eq!(o.cooling_until("kept@x", None, now), Some(now + 60_000));
    }
}
