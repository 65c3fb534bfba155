//! One request through the pool, attempt by attempt. A driver asks `next()` for the account and
//! the headers to send, sends, and asks `judge()` what the answer means: deliver it, or try
//! again (`next()` then says on which account, or answers for the pool when none can serve).
//!
//! - Each account is tried at most once per request, plus one retry on it after a 401 brought a
//!   new token, so the attempts never exceed twice the accounts.
//! - Nothing is replayed once an answer is delivered: the body belongs to the caller from then on.
//! - When no account can serve and some only cool down, the answer is the pool's own 429 whose
//!   `retry-after` is the real wait; never an unauthenticated request.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use tokio_util::sync::CancellationToken;

use super::credentials::Credential;
use super::events::Event;
use super::headers::{with_credential, RequestMeta};
use super::limits::Limits;
use super::select::{self, Candidate, Preference};
use super::verdict::{self, Decision};
use super::Engine;
use crate::account::{iso_time, now_ms};
use crate::error::{Error, Result};
use crate::pool::Pool;
use crate::printable::printable;
use crate::store::{REFRESH_LOCK_BRIEF, REFRESH_LOCK_TIMEOUT};

/// How a person adds or logs in an account, on every host: these messages reach OpenCode 1.18,
/// OpenCode 2 (whose login is its connect flow) and the gateway's clients alike.
macro_rules! login_ways {
    () => {
        "`oauth-pool add`, or OpenCode's Anthropic Pool login (`opencode auth login` on 1.18, `/connect` on 2.x)"
    };
}

/// How often a held request looks at the store for an account usable before its cooldown said:
/// a stat of the file (the fleet store's generation, asked at most every 250 ms per process).
const HOLD_RECHECK: Duration = Duration::from_secs(1);
/// How long held requests wait for the answer to the first of them sent back to an account: a
/// 429 or a stream's head comes within a second or two.
const REOPEN_PATIENCE: Duration = Duration::from_secs(10);
/// How long the answer after a failover (or the pool's 429) waits for the write of the
/// cooldowns the request met: a slow disk or a locked store costs the caller at most this.
const COOLDOWN_WRITE_PATIENCE: Duration = Duration::from_secs(1);

pub enum Step {
    /// Send the request with these headers (the caller's, plus the account's credential).
    Send(Attempt),
    /// Answer for the pool: every usable account is cooling down.
    Answer(Synthetic),
}

pub struct Attempt {
    pub email: String,
    pub headers: HeaderMap,
}

pub struct Synthetic {
    pub status: u16,
    pub status_text: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Holding covers this wait, but it is longer than the driver lets a request be held at
    /// once (`Exchange::cap_hold`): the caller is to wait it out and ask again.
    pub host_waits: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand this answer to the caller.
    Deliver,
    /// Drop this answer; `next()` again.
    Retry,
}

pub struct Exchange {
    engine: Arc<Engine>,
    meta: RequestMeta,
    /// The model family asked for, which scoped windows and a model's rests are keyed by. A
    /// throttle of an endpoint with limits of its own (`meta.endpoint`) rests that endpoint.
    family: Option<String>,
    /// How long this request may still wait for a cooling account (`OAUTH_POOL_HOLD_MAX_MS`).
    hold_left: std::time::Duration,
    /// The longest one hold may last, set by a driver whose host gives up on a request that
    /// has no answer by then (`cap_hold`).
    hold_cap: Option<std::time::Duration>,
    tried: HashSet<String>,
    refreshed: HashSet<String>,
    retry_same: Option<String>,
    /// The token the 401's adoption or refresh gave, for that retry: the pool this process
    /// reads may be older (a fleet store in its backoff serves the last pool read), and the
    /// refused token went out again, its second 401 taken for "log in again".
    /// With the token that 401 refused: the pool's own newer one (another process's refresh
    /// since) wins over both.
    retry_token: Option<(String, crate::secret::Secret, crate::secret::Secret)>,
    moved_from: Option<(String, String)>,
    current: Option<(String, Credential)>,
    /// When the current attempt was handed out to be sent (epoch ms): what its answer says is
    /// as of then (see `limits::newer`).
    sent_at: i64,
    /// The status of the last answer judged.
    status: u16,
    events: Vec<Event>,
    /// The store could not be reached, read, written or locked for an account: said when no
    /// account could serve.
    store_error: Option<Error>,
    /// Why an account got no token for this request (a refresh that failed): said when no
    /// account could serve, instead of a bare "refused".
    no_token: HashMap<String, String>,
    /// What the API said of the 401 that refused an account's credential in this request:
    /// quoted when no account could serve.
    refused_saying: HashMap<String, String>,
    /// Accounts whose spent refresh token the journal kept this request from presenting: why,
    /// and where the live login is.
    elsewhere: HashMap<String, String>,
    /// This request was held and has not sent since: it goes back in turn (`Engine::reopen`).
    held: bool,
    /// It is the first back to its account after a wait, until its answer is judged.
    reopening: Option<super::ReopenGuard>,
    /// An account rested in this request and its cooldown may not be in the store yet: the
    /// answer the caller gets waits for that write (`COOLDOWN_WRITE_PATIENCE`), so that the
    /// file says `rate-limited` once the caller has the answer (it did a few ms later, and
    /// another process, or the caller reading the file, found the account idle).
    cooled_unwritten: bool,
    /// Where what cannot wait for the request's end is told (a hold beginning), if anywhere.
    notice: Option<super::events::Notice>,
    /// The body was read for the files it refers to (`read_body`).
    body_read: bool,
    /// The account known to hold what the request needs answered it 429: no other account can
    /// see that, so the request waits for this one (the pool's 429, or a hold) instead of
    /// collecting the others' 404s.
    bound: Option<String>,
    /// An account answered 404 for what the request names: the pool is looking for the one
    /// that holds it (`next_to_ask`).
    searching: bool,
    /// Fired when the driver stops (`release_holds_on`): the request is held no longer.
    release: Option<CancellationToken>,
    /// A subscription's third-party refusal sent this process's next requests to the pool's
    /// Console keys (`keys_instead`): said in its event.
    keys_instead: bool,
}

impl Exchange {
    pub fn new(engine: Arc<Engine>, meta: RequestMeta) -> Exchange {
        let family = meta.model.as_deref().and_then(super::limits::model_family);
        // A client that says how long it waits for an answer (the Anthropic SDKs) aborts a hold
        // past that and sends the request again, to be held again: after its retries it said
        // "Request timed out" and nothing of the pool's wait. Half of it is held; a longer wait
        // is the pool's 429 with its `retry-after`, which the SDK sleeps before asking again,
        // and the other half is left for the answer itself.
        let hold_cap = meta.client_timeout.map(|t| t / 2);
        Exchange {
            engine,
            meta,
            family,
            hold_left: crate::settings::millis(crate::config::var::HOLD_MAX_MS),
            hold_cap,
            tried: HashSet::new(),
            refreshed: HashSet::new(),
            retry_same: None,
            retry_token: None,
            moved_from: None,
            current: None,
            sent_at: 0,
            status: 0,
            events: Vec::new(),
            store_error: None,
            no_token: HashMap::new(),
            refused_saying: HashMap::new(),
            elsewhere: HashMap::new(),
            held: false,
            reopening: None,
            cooled_unwritten: false,
            notice: None,
            body_read: false,
            bound: None,
            searching: false,
            release: None,
            keys_instead: false,
        }
    }

    /// Whether the driver is to hand the request's body to `read_body` now: a Messages body
    /// not read yet, before it is first sent (`answered` None) once this process knows which
    /// account holds some file (until then it costs nothing), and after a 404 (`answered`
    /// Some(404)): a file made elsewhere, which another account may hold. A body the driver
    /// does not hold whole (a stream) is not read.
    pub fn wants_body(&self, answered: Option<u16>) -> bool {
        self.meta.may_refer
            && !self.body_read
            && match answered {
                None => self.engine.overlay.knows_files(),
                Some(status) => status == 404,
            }
    }

    /// Reads the file the request's body refers to (`files::referred`): the request goes to
    /// the account known to hold it, even one resting; one not known is asked of the account in
    /// use, then of the next on its 404, and learned from the one that serves it.
    pub fn read_body(&mut self, body: &[u8]) {
        self.body_read = true;
        let overlay = &self.engine.overlay;
        self.meta.file = super::files::referred(body, |id| overlay.holder(id).is_some());
        if let Some(file) = &self.meta.file {
            tracing::debug!(file = %file, "the request refers to a file");
        }
    }

    /// Where to tell at once what cannot wait for the request's end: a hold beginning (it may
    /// last hours). Without it, that is told with the request's other events, at its end.
    pub fn tell_at_once(&mut self, notice: super::events::Notice) {
        self.notice = Some(notice);
    }

    /// Holds this request at most `cap` at once. For a driver whose host stops waiting for an
    /// answer after a while and sends the request again (OpenCode 2 gives its http hooks and
    /// the send 5 minutes for the answer's head, then retries on its own): a hold past that was
    /// cut by the host, held again by its retry, and the session ended with the host's timeout.
    /// A longer wait that holding covers is answered with the pool's 429 instead, marked
    /// `host_waits`, with the holding message: the host waits it out and asks again.
    pub fn cap_hold(&mut self, cap: std::time::Duration) {
        // The client's own limit (`Exchange::new`) stands when it is the shorter.
        self.hold_cap = Some(self.hold_cap.map_or(cap, |c| c.min(cap)));
    }

    /// Holds this request no longer once `release` fires: it gets the answer it would have had
    /// without holding (the pool's 429 and its `retry-after`). For a driver that stops (the
    /// gateway on SIGTERM): a held request waited out the drain time and was cut unanswered.
    pub fn release_holds_on(&mut self, release: CancellationToken) {
        self.release = Some(release);
    }

    fn released(&self) -> bool {
        self.release.as_ref().is_some_and(|r| r.is_cancelled())
    }

    /// The model asked for, learnt after the exchange began (a driver that read it from the
    /// body later); a model already known stays.
    pub fn learn_model(&mut self, model: Option<String>) {
        if self.meta.model.is_some() {
            return;
        }
        self.meta = std::mem::take(&mut self.meta).with_model(model);
        self.family = self
            .meta
            .model
            .as_deref()
            .and_then(super::limits::model_family);
    }

    /// Whether the exchange knows the model asked for.
    pub fn knows_model(&self) -> bool {
        self.meta.model.is_some()
    }

    /// Events so far (failovers, cooldowns, refusals); they belong to the caller.
    pub fn take_events(&mut self) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.events);
        events.extend(self.engine.take_told_late());
        events
    }

    /// The account that served the delivered answer.
    pub fn account(&self) -> Option<&str> {
        self.current.as_ref().map(|(e, _)| e.as_str())
    }

    /// Where the delivered answer's usage is to be counted (its account and model), and what it
    /// made is to be remembered.
    pub fn usage_sink(&self) -> Option<super::UsageSink> {
        let (email, _) = self.current.as_ref()?;
        use super::limits::{FILES_API, MESSAGE_BATCHES};
        Some(super::UsageSink {
            engine: self.engine.clone(),
            email: email.clone(),
            model: self.meta.model.clone().unwrap_or_else(|| "unknown".into()),
            creates: self.meta.resource.is_none()
                && matches!(self.meta.endpoint, Some(FILES_API | MESSAGE_BATCHES)),
            sent_at: self.sent_at,
        })
    }

    /// The next attempt: an account with a fresh credential on top of `base` (the caller's
    /// forwardable headers), or the pool's own answer. Fails with `POOL_NO_ACCOUNT` when no
    /// account can serve at all, `ABORT_ERR` at once when `cancel` fires.
    pub async fn next(&mut self, base: &HeaderMap, cancel: &CancellationToken) -> Result<Step> {
        self.current = None;
        self.reopening = None;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Aborted);
            }
            let pool = self.engine.snapshot().await?;
            self.engine.settle_clock_if_stepped(&pool);
            self.lift_rests_for_keys_if_none_left(&pool);
            let email = match self.retry_target(&pool) {
                Some(e) => e,
                None => match self.choose(&pool) {
                    Some(e) => e,
                    None => match self.exhausted(&pool)? {
                        Exhausted::Wait(held) => {
                            self.hold(&pool, held, cancel).await?;
                            continue;
                        }
                        Exhausted::Answer(step) => {
                            self.cooldowns_written().await;
                            return Ok(step);
                        }
                    },
                },
            };
            if self.held {
                match self.engine.reopen(&email) {
                    super::Reopen::First(guard) => self.reopening = Some(guard),
                    super::Reopen::After(mut first) => {
                        tokio::select! {
                            biased;
                            _ = cancel.cancelled() => return Err(Error::Aborted),
                            _ = first.changed() => {}
                            // A first whose driver lost it unjudged (its send failed on the
                            // JavaScript side, the exchange awaiting collection) holds no one long.
                            _ = tokio::time::sleep(REOPEN_PATIENCE) => {}
                        }
                        // Its answer is known: an account that refused it again is cooling,
                        // and this request holds on; one that served it serves this too.
                        self.held = false;
                        continue;
                    }
                }
                self.held = false;
            }
            self.announce_move(&email);
            let now = self
                .retry_credential(&pool, &email)
                .or_else(|| self.engine.credential_now(&pool, &email));
            let credential = match now {
                Some(credential) => Ok(credential),
                None => {
                    let patience = self.patience(&pool, &email);
                    self.engine
                        .credential(&pool, &email, patience, cancel, &mut self.events)
                        .await
                }
            };
            match credential {
                // A stored credential no header can carry (a hand-edited file) is this
                // account's problem, not the request's: the next account serves.
                Ok(credential) => match sending_headers(base, &credential) {
                    Ok(headers) => return Ok(self.attempt(email, credential, headers)),
                    Err(e) => self.no_credential(email, e),
                },
                Err(Error::Aborted) => return Err(Error::Aborted),
                Err(e) => self.no_credential(email, e),
            }
        }
    }

    /// `next()` when it can be answered without waiting: the pool as cached is current, the
    /// account's credential needs no refresh and nothing has to be held. `None`: call `next()`
    /// (nothing was changed). Lets a driver on the JavaScript thread decide in microseconds.
    pub fn try_next(&mut self, base: &HeaderMap) -> Option<Result<Step>> {
        let pool = self.engine.snapshot_now()?;
        self.engine.settle_clock_if_stepped(&pool);
        self.lift_rests_for_keys_if_none_left(&pool);
        // One that may no longer take the retry is `next()`'s to move on from.
        if self.retry_same.is_none() {
            // Not a retry: see `retry_target`.
            self.retry_token = None;
        }
        let email = match self.retry_same.clone() {
            Some(e) if self.may_retry_on(&pool, &e) => e,
            Some(_) => return None,
            None => match self.choose(&pool) {
                Some(e) => e,
                None => {
                    return match self.exhausted(&pool) {
                        Ok(Exhausted::Wait(_)) => None,
                        // `next()` waits for the cooldown's write first.
                        Ok(Exhausted::Answer(_)) if self.cooled_unwritten => None,
                        Ok(Exhausted::Answer(step)) => {
                            self.current = None;
                            Some(Ok(step))
                        }
                        Err(e) => Some(Err(e)),
                    };
                }
            },
        };
        let credential = self
            .retry_credential(&pool, &email)
            .or_else(|| self.engine.credential_now(&pool, &email))?;
        // One that cannot be sent is reported by `next()`.
        let headers = sending_headers(base, &credential).ok()?;
        self.current = None;
        self.retry_same = None;
        self.announce_move(&email);
        Some(Ok(self.attempt(email, credential, headers)))
    }

    /// The account a 401 brought a new token for, when it may still take the retry. While its
    /// token was adopted or refreshed, another request's 429 may have rested it (or a person
    /// disabled it): the retry then goes to the next account, as after its own 429, instead of
    /// into the limit just found.
    fn retry_target(&mut self, pool: &Pool) -> Option<String> {
        let Some(email) = self.retry_same.take() else {
            // Not a retry (or one that waited): the token it was to carry may be spent by now.
            self.retry_token = None;
            return None;
        };
        if self.may_retry_on(pool, &email) {
            return Some(email);
        }
        self.retry_token = None;
        tracing::debug!(account = %email, "rests since its 401: the retry goes elsewhere");
        self.tried.insert(email.clone());
        self.moved_from = Some((email, "got a new token after a 401, but rests since".into()));
        None
    }

    /// The token a 401's adoption or refresh gave `email`, once, for the retry that follows it
    /// at once (`retry_target`), unless the pool holds a newer one than either it or the token
    /// refused.
    fn retry_credential(&mut self, pool: &Pool, email: &str) -> Option<Credential> {
        let (e, token, rejected) = self.retry_token.take()?;
        let stored = pool.find(email).and_then(|a| a.access.as_ref());
        (e == email && stored.is_none_or(|s| *s == token || *s == rejected))
            .then_some(Credential::Bearer(token))
    }

    /// Whether `email` may still take the retry after its 401: what any choice of it needs (a
    /// resting account still answers for what it holds).
    fn may_retry_on(&self, pool: &Pool, email: &str) -> bool {
        pool.find(email)
            .is_some_and(|a| match self.blocked(a, now_ms()) {
                super::Blocked::No => true,
                super::Blocked::Until(_) => self.meta.names().is_some(),
                super::Blocked::Out => false,
            })
    }

    /// Reports the move of this request away from the account it left, now that it has a new one.
    fn announce_move(&mut self, email: &str) {
        let Some((from, reason)) = self.moved_from.take() else {
            return;
        };
        // Back to the account it left, once that one's rest is over (a held request): no move.
        if from == email {
            return;
        }
        self.events.push(
            Event::new(
                "failover",
                Some(&from),
                format!("{from} {reason}; this request moved to {email}"),
            )
            .to(email),
        );
        let (f, t, r) = (from.clone(), email.to_string(), reason.clone());
        self.engine
            .note(false, move |p| p.failover(&f, Some(&t), &r, now_ms()));
        // Debug: the event is each driver's to tell (the gateway's log says a cascade once).
        tracing::debug!(from = %from, to = %email, reason = %reason, "failover");
    }

    fn attempt(&mut self, email: String, credential: Credential, headers: HeaderMap) -> Step {
        // Which account each attempt goes to: without it a log at debug shows only the
        // exceptions, and "which account served this" cannot be read from it.
        tracing::debug!(account = %email, "sending the request");
        self.current = Some((email.clone(), credential));
        self.sent_at = sending_time();
        Step::Send(Attempt { email, headers })
    }

    fn no_credential(&mut self, email: String, e: Error) {
        tracing::warn!(account = %email, error = %e, "no usable credential");
        if e.code() != "OAUTH_INVALID_GRANT" {
            // An invalid grant was reported by the credential protocol already.
            self.events.push(Event::new(
                "unavailable",
                Some(&email),
                format!("{email}: {e}"),
            ));
        }
        if let Error::LoginElsewhere(why) = &e {
            let why = why.strip_prefix(&format!("{email}: ")).unwrap_or(why);
            self.elsewhere
                .insert(email.clone(), why.chars().take(1000).collect());
        }
        let (who, why) = (email.clone(), e.to_string());
        // Cut short: each account's reason is one item of a list a person reads.
        self.no_token
            .insert(email.clone(), why.chars().take(300).collect());
        // A refresh still under way writes its own outcome when it ends.
        if !matches!(e, Error::RefreshSlow { .. }) {
            self.engine.note(false, move |p| p.error(&who, &why));
        }
        // This machine's side failed (the store cannot be read, written or locked), not the
        // account: said as it is when no account serves, rather than as "no usable account"
        // or every account cooling (a read-only pool directory was answered as a 429 with an
        // hour's retry-after, and the only account's `POOL_IO` as a need to log in again).
        if matches!(
            e,
            Error::StoreUnavailable(_)
                | Error::PoolIo { .. }
                | Error::NoThread(_)
                | Error::PoolBusy { .. }
                | Error::RefreshBusy { .. }
                | Error::RefreshElsewhere { .. }
                | Error::RefreshClaimed { .. }
                | Error::PoolCorrupt { .. }
                | Error::PoolInsecure { .. }
                | Error::TokensUnsaved { .. }
        ) {
            self.store_error = Some(e);
        }
        self.tried.insert(email.clone());
        self.moved_from = Some((email, "could not get a token".into()));
    }

    /// Holding (opt-in): waits for the soonest account instead of answering the pool's 429;
    /// nothing goes upstream meanwhile, and an abort ends the wait at once. The store is looked
    /// at again every `HOLD_RECHECK`: an account usable sooner than its cooldown said (a
    /// `reset-cooldowns` or `enable` from a shell, a new login, another process or host that
    /// found the window reset) ends the wait then, not when this request's own timer runs out.
    ///
    /// The first request held for a cooldown says so at once, through the notice its driver set
    /// (`tell_at_once`): a held request's events otherwise reach its caller only when it ends,
    /// and a person watching saw nothing for as long as the hold lasted. The others held for the
    /// same cooldown say nothing (no storms); the first one logs when the hold begins and ends.
    async fn hold(&mut self, pool: &Pool, held: Held, cancel: &CancellationToken) -> Result<()> {
        let Held {
            until,
            email,
            message,
        } = held;
        let wait = std::time::Duration::from_millis((until - now_ms()).max(0) as u64 + 5);
        let announced = self.announce_hold(pool, &email, until, &message);
        if !announced {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "holding the request for a cooling account"
            );
        }
        let ended = |how: &str, started: tokio::time::Instant| {
            if announced {
                tracing::info!(
                    first = %email,
                    waited = %crate::wait::duration(started.elapsed().as_millis() as i64),
                    "hold over: {how}"
                );
            }
        };
        // Accounts usable already (one that could not get a token) are no news when seen again.
        let usable_before: HashSet<String> = self.usable_now(pool);
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        let release = self.release.clone().unwrap_or_default();
        let woke = loop {
            let next = deadline.min(tokio::time::Instant::now() + HOLD_RECHECK);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    ended("this request was aborted (any other held requests wait on)", started);
                    return Err(Error::Aborted);
                }
                _ = release.cancelled() => {
                    self.hold_left = std::time::Duration::ZERO;
                    ended("the gateway is stopping; held requests get the pool's 429", started);
                    return Ok(());
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            // A store that cannot be read now is asked again at the next look.
            let Ok(pool) = self.engine.snapshot().await else {
                continue;
            };
            // Held for the account holding what the request needs, now disabled, refused or
            // removed: no wait brings it back, and the request says so now, not at the end of
            // the hold.
            let holder_out = self.bound.as_ref().is_some_and(|b| {
                pool.find(b)
                    .is_none_or(|a| self.blocked(a, now_ms()) == super::Blocked::Out)
            });
            if holder_out {
                self.hold_left = self.hold_left.saturating_sub(started.elapsed());
                ended("the account it waited for cannot take it now", started);
                return Ok(());
            }
            let back: Vec<String> = self
                .usable_now(&pool)
                .into_iter()
                .filter(|e| !usable_before.contains(e))
                .collect();
            if !back.is_empty() {
                break Some(back);
            }
        };
        self.hold_left = self.hold_left.saturating_sub(started.elapsed());
        ended(
            match woke {
                Some(_) => "an account is usable before its cooldown said; requests go on",
                None => "the cooldown is over; requests go back to the account",
            },
            started,
        );
        match woke {
            // Only the accounts back early are asked again: one that refused this request
            // before the wait still cools (or could not get a token, and waits its turn).
            Some(back) => back.iter().for_each(|e| {
                self.tried.remove(e);
            }),
            // The accounts that refused before the wait may serve now; the hold budget bounds this.
            None => self.tried.clear(),
        }
        self.held = true;
        Ok(())
    }

    /// Says a hold for `email`'s cooldown (until `until`) begins, once per cooldown (no storms):
    /// a log line and a `holding` event, told at once where the driver set a notice. Whether
    /// this one said it.
    fn announce_hold(&mut self, pool: &Pool, email: &str, until: i64, message: &str) -> bool {
        let resets = pool.find(email).map_or(0, |a| a.cooldown_resets());
        if !self.engine.overlay.first_hold(email, until, resets) {
            return false;
        }
        // A request bound to the account holding what it needs waits for that account,
        // whether or not the others are cooling too.
        let why = if self.bound.is_some() {
            "the account holding what requests need is cooling: holding them for it"
        } else {
            "every account is cooling: holding requests for the first one"
        };
        tracing::info!(
            first = %email,
            until = %iso_time(until),
            wait = %crate::wait::duration(until - now_ms()),
            "{why}"
        );
        let event = Event::new("holding", Some(email), message).until(until);
        match &self.notice {
            Some(tell) => tell(event),
            None => self.events.push(event),
        }
        true
    }

    /// The accounts that could serve this request now, whatever it tried.
    fn usable_now(&self, pool: &Pool) -> HashSet<String> {
        let now = now_ms();
        pool.accounts()
            .filter(|a| self.blocked(a, now) == super::Blocked::No)
            .map(|a| a.email.clone())
            .collect()
    }

    /// How long to wait for a refresh of `email` that is already under way elsewhere: briefly
    /// when another account could serve the request instead, else as long as a refresh may take.
    fn patience(&self, pool: &Pool, email: &str) -> Duration {
        if self.another_could_serve(pool, email) {
            REFRESH_LOCK_BRIEF
        } else {
            REFRESH_LOCK_TIMEOUT
        }
    }

    /// Whether `choose_from` would find an account with `email` passed over too, found without
    /// ranking them (no window read). Asked after every 404 of a search: ranking every account
    /// there too made a search through 300 accounts cost 430 ms of CPU.
    fn another_could_serve(&self, pool: &Pool, email: &str) -> bool {
        let now = now_ms();
        let open = |a: &crate::account::Account| a.email != email && !self.tried.contains(&a.email);
        if let Some(bound) = &self.bound {
            return pool
                .find(bound)
                .is_some_and(|a| open(a) && self.blocked(a, now) != super::Blocked::Out);
        }
        // A resting account is asked for what the request names (`resting_holder`).
        let names = self.meta.names().is_some();
        pool.accounts()
            .filter(|a| open(a))
            .any(|a| match self.blocked(a, now) {
                super::Blocked::No => true,
                super::Blocked::Until(_) => names,
                super::Blocked::Out => false,
            })
    }

    fn choose(&self, pool: &Pool) -> Option<String> {
        self.choose_from(pool, &self.tried)
    }

    /// The account to try next, passing over those in `passed`.
    fn choose_from(&self, pool: &Pool, passed: &HashSet<String>) -> Option<String> {
        let now = now_ms();
        if let Some(bound) = &self.bound {
            let a = pool.find(bound)?;
            return (!passed.contains(bound) && self.blocked(a, now) != super::Blocked::Out)
                .then(|| bound.clone());
        }
        if let Some(holder) = self.known_holder(pool, passed, now) {
            return Some(holder);
        }
        if self.searching {
            return self.next_to_ask(pool, passed, now);
        }
        let family = self.family.as_deref();
        let candidates: Vec<Candidate> = pool
            .accounts()
            .map(|a| {
                let windows = self
                    .engine
                    .windows(a)
                    .into_iter()
                    // A window without a readable reset never ends: counted, one garbled
                    // header kept its account past the soft threshold for good (the reserve
                    // line, `blocked`, counts only windows that end as well).
                    .filter(|w| w.applies_to(family) && w.reset.is_some_and(|t| t > now))
                    .filter_map(|w| w.utilization.map(|u| (u, w.reset)))
                    .collect();
                let usable = self.blocked(a, now) == super::Blocked::No;
                Candidate::from_account(a, usable, windows, now)
            })
            .collect();
        let pinned = self
            .engine
            .overlay
            .pinned(self.meta.session.as_deref(), self.meta.parent.as_deref());
        let sticky = self.engine.overlay.sticky();
        let pref = Preference {
            session: pinned.as_deref(),
            sticky: sticky.as_deref(),
            soft_threshold: crate::settings::soft_threshold(),
        };
        select::choose(&candidates, passed, &pref)
            .map(|c| c.email.clone())
            .or_else(|| self.resting_holder(pool, passed, now))
    }

    /// For a request naming a resource (a file, a batch): an account left only because it
    /// rests. A cooldown rests what an account sends to the model; what it holds is still its
    /// own to hand out.
    fn resting_holder(&self, pool: &Pool, passed: &HashSet<String>, now: i64) -> Option<String> {
        self.meta.names()?;
        pool.accounts()
            .find(|a| !passed.contains(&a.email) && self.blocked(a, now) != super::Blocked::Out)
            .map(|a| a.email.clone())
    }

    /// The next account to ask for what the request names, once one said 404: only the account
    /// holding it can answer, so there is nothing to rank (ranking every account at each of the
    /// search's steps read every account's windows as many times as there are accounts). The
    /// first in the file not asked yet that can serve now, else the first that only rests.
    fn next_to_ask(&self, pool: &Pool, passed: &HashSet<String>, now: i64) -> Option<String> {
        let open = || pool.accounts().filter(|a| !passed.contains(&a.email));
        open()
            .find(|a| self.blocked(a, now) == super::Blocked::No)
            .or_else(|| open().find(|a| self.blocked(a, now) != super::Blocked::Out))
            .map(|a| a.email.clone())
    }

    /// The account known to hold the resource the request names, when it can be asked.
    fn known_holder(&self, pool: &Pool, passed: &HashSet<String>, now: i64) -> Option<String> {
        let holder = self.engine.overlay.holder(self.meta.names()?)?;
        let a = pool.find(&holder)?;
        (!passed.contains(&holder) && self.blocked(a, now) != super::Blocked::Out).then_some(holder)
    }

    /// Whether `a` can serve this request (`Engine::blocked_for`).
    fn blocked(&self, a: &crate::account::Account, now: i64) -> super::Blocked {
        self.engine
            .blocked_for(a, self.family.as_deref(), self.meta.endpoint, now)
    }

    /// What the answer to the last attempt means. `body` is the bounded start of the body when
    /// `verdict::needs_body(status)`; `said`, the `error.type` of an `error` event in the opening
    /// of an event stream (`verdict::reads_opening`); `cancel` aborts a refresh this may start.
    pub async fn judge(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        said: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Verdict> {
        let verdict = self.judge_answer(status, headers, body, said, cancel).await;
        if matches!(verdict, Ok(Verdict::Deliver)) {
            self.cooldowns_written().await;
        }
        verdict
    }

    /// Waits, bounded, for the write of the cooldowns this request noted (`cooled_unwritten`).
    async fn cooldowns_written(&mut self) {
        if std::mem::take(&mut self.cooled_unwritten) {
            let _ = tokio::time::timeout(COOLDOWN_WRITE_PATIENCE, self.engine.flush()).await;
        }
    }

    async fn judge_answer(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        said: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<Verdict> {
        let Some((email, credential)) = self.current.clone() else {
            return Ok(Verdict::Deliver);
        };
        self.status = status;
        // A 404 to a request naming a resource (a file, a batch) may be another account's to
        // answer, while one that has not been asked is left.
        let elsewhere = status == 404
            && self.meta.names().is_some()
            && match self.engine.snapshot().await {
                Ok(pool) => self.another_could_serve(&pool, &email),
                Err(_) => false,
            };
        let (decision, limits, now) =
            self.decide(status, headers, body, said, &email, &credential, elsewhere);
        match decision {
            Decision::RefreshAndRetry => {
                self.refreshed.insert(email.clone());
                let rejected = credential.secret().clone();
                // The credential the 401 is about, should the account have to rest: a login
                // while it rests is not resting.
                let (patience, tag) = match self.engine.snapshot().await {
                    Ok(pool) => (
                        self.patience(&pool, &email),
                        pool.find(&email).and_then(|a| a.credential_tag()),
                    ),
                    Err(_) => (REFRESH_LOCK_TIMEOUT, None),
                };
                match self
                    .engine
                    .after_unauthorized(&email, &rejected, patience, cancel, &mut self.events)
                    .await
                {
                    Ok(token) => {
                        self.retry_token = Some((email.clone(), token, rejected));
                        self.retry_same = Some(email);
                    }
                    Err(Error::Aborted) => return Err(Error::Aborted),
                    // `invalid_grant` marked the account already. Anything else (the token
                    // endpoint down, busy, answering garbage) is no verdict on the login: the
                    // account rests until the endpoint may be asked again, and is not marked.
                    Err(e) if e.code() == "OAUTH_INVALID_GRANT" => {
                        tracing::warn!(account = %email, error = %e, "401 and no new token");
                        self.move_on(email, "was refused (401)".into());
                    }
                    // This machine's disk, not the login nor the token endpoint: no rest (its
                    // wait was answered as every account "rate-limited"), and said as it is
                    // when no account serves.
                    Err(e @ Error::TokensUnsaved { .. }) => {
                        tracing::warn!(account = %email, error = %e, "401 on tokens not saved yet");
                        self.move_on(
                            email,
                            "was refused (401) and its new tokens are not saved yet".into(),
                        );
                        self.store_error = Some(e);
                    }
                    Err(e) => {
                        tracing::warn!(account = %email, error = %e, "401 and no new token for now");
                        // The account's reset count as the store holds it now, after the failed
                        // refresh wrote its wait: a `reset-cooldowns` that ran before this rest
                        // is older news and must not lift it when it is read later.
                        let (present, resets) = match self.engine.snapshot().await {
                            Ok(pool) => pool
                                .find(&email)
                                .map_or((false, None), |a| (true, Some(a.cooldown_resets()))),
                            Err(_) => (true, None),
                        };
                        // An account removed meanwhile is not rested: nothing chooses it, and the
                        // same address logged in again is a new login, which a rest tied to no
                        // credential held back for the token endpoint's wait.
                        if present {
                            self.rest_after_unauthorized(&email, tag, resets, &e);
                        }
                        self.move_on(email, "was refused (401) and has no new token yet".into());
                    }
                }
                Ok(Verdict::Retry)
            }
            Decision::RefusedAndMove => {
                // What the API said, quoted: a refusal no login answers ("not supported") told
                // only to "log in again" sent people round and round.
                let reason =
                    body.and_then(|body| verdict::refusal_reason(body, &[credential.secret()]));
                let said = reason
                    .as_ref()
                    .map_or(String::new(), |reason| format!(", saying \"{reason}\""));
                if let Some(reason) = reason {
                    self.refused_saying.insert(email.clone(), reason);
                }
                let why = match credential {
                    Credential::ApiKey(_) => format!("the API refused the key (401{said}): add a working one under this name (`oauth-pool add-key --email <name>`)"),
                    Credential::Bearer(_) => format!("the API refused the token twice (401{said}): log in again"),
                };
                self.refuse(&email, &credential, &why).await;
                self.move_on(email, format!("was refused (401{said})"));
                Ok(Verdict::Retry)
            }
            Decision::DeliverThirdPartyRefusal => {
                if let Ok(pool) = self.engine.snapshot().await {
                    self.keys_instead = self.keys_instead(&pool, &credential, now);
                }
                Ok(self.settle(decision, email, &limits, now, said.is_some()))
            }
            other => Ok(self.settle(other, email, &limits, now, said.is_some())),
        }
    }

    /// After a subscription's third-party refusal, when the pool holds a Console key this
    /// request could use: every subscription rests in this process for
    /// `verdict::THIRD_PARTY_REST_MS` (the refused answer itself is delivered, not retried), so
    /// that the next requests go to the keys. Whether it did. `reset-cooldowns` lifts the rest.
    fn keys_instead(&self, pool: &Pool, refused: &Credential, now: i64) -> bool {
        if !matches!(refused, Credential::Bearer(_)) {
            return false;
        }
        let key_usable = pool
            .accounts()
            .any(|a| a.is_api_key() && self.blocked(a, now) != super::Blocked::Out);
        if !key_usable {
            return false;
        }
        let until = now.saturating_add(verdict::THIRD_PARTY_REST_MS);
        for a in pool.accounts().filter(|a| !a.is_api_key()) {
            let rest = super::overlay::Rest {
                tag: None,
                until,
                resets: Some(a.cooldown_resets()),
                for_keys: true,
            };
            self.engine.overlay.rest(&a.email, rest);
        }
        true
    }

    /// The subscriptions rest after a third-party refusal so that requests go to the pool's
    /// Console keys (`keys_instead`); once no key can serve (refused, disabled, removed), the
    /// rest is lifted: every account rested for the rest of the hour and each request failed,
    /// where a subscription's answer (its refusal, delivered, or a reply) was still to be had.
    fn lift_rests_for_keys_if_none_left(&self, pool: &Pool) {
        if !self.engine.overlay.rests_for_keys() {
            return;
        }
        let now = now_ms();
        let key_left = pool
            .accounts()
            .any(|a| a.is_api_key() && self.blocked(a, now) != super::Blocked::Out);
        if key_left {
            return;
        }
        for email in self.engine.overlay.lift_rests_for_keys() {
            tracing::info!(account = %email, "no Console key left to serve: the subscription is asked again");
        }
    }

    /// `judge()` when the answer means no I/O (delivered, or a 429 that moves the request on);
    /// `None` for a 401, which needs `judge()` (nothing was changed).
    pub fn try_judge(
        &mut self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        said: Option<&str>,
    ) -> Option<Verdict> {
        // After a failover, delivering waits for the cooldown's write: `judge()`'s.
        if self.cooled_unwritten {
            return None;
        }
        self.status = status;
        let Some((email, credential)) = self.current.as_ref() else {
            return Some(Verdict::Deliver);
        };
        // Which accounts are left to ask needs the pool: `judge()` reads it when it is not at hand.
        let elsewhere = status == 404
            && self.meta.names().is_some()
            && self.another_could_serve(&*self.engine.snapshot_now()?, email);
        let (decision, limits, now) =
            self.decide(status, headers, body, said, email, credential, elsewhere);
        match decision {
            Decision::RefreshAndRetry | Decision::RefusedAndMove => None,
            Decision::DeliverThirdPartyRefusal => {
                let pool = self.engine.snapshot_now()?;
                let (email, credential) = (email.clone(), credential.clone());
                self.keys_instead = self.keys_instead(&pool, &credential, now);
                Some(self.settle(decision, email, &limits, now, said.is_some()))
            }
            other => Some(self.settle(other, email.clone(), &limits, now, said.is_some())),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        status: u16,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        said: Option<&str>,
        email: &str,
        credential: &Credential,
        elsewhere: bool,
    ) -> (Decision, Limits, i64) {
        let now = now_ms();
        let limits = Limits::from_headers(headers, crate::account::system_now())
            .without_secret(credential.secret())
            .sent_at(self.sent_at);
        let asked = verdict::Asked {
            kind: credential.kind(),
            refreshed_already: self.refreshed.contains(email),
            family: self.family.as_deref(),
            endpoint: self.meta.endpoint,
            elsewhere,
        };
        (
            verdict::decide(status, &limits, body, said, asked, now),
            limits,
            now,
        )
    }

    /// The decisions that need no I/O: deliver (and say so for a third-party refusal), or cool
    /// the account and move on. `in_stream`: the answer's event stream said why.
    /// The request ended without an answer its driver judged (given up, or its send failed):
    /// the requests held behind its reopening choose again at once.
    pub fn give_up(&mut self) {
        self.reopening = None;
    }

    fn settle(
        &mut self,
        decision: Decision,
        email: String,
        limits: &Limits,
        now: i64,
        in_stream: bool,
    ) -> Verdict {
        let verdict = self.settle_answer(decision, email, limits, now, in_stream);
        // What it said is recorded: the requests held with this one may go (or hold on).
        self.reopening = None;
        verdict
    }

    fn settle_answer(
        &mut self,
        decision: Decision,
        email: String,
        limits: &Limits,
        now: i64,
        in_stream: bool,
    ) -> Verdict {
        match decision {
            // A 401's decisions are `judge()`'s own and never come here; delivering is the safe
            // reading should one ever do.
            Decision::Deliver | Decision::RefreshAndRetry | Decision::RefusedAndMove => {
                self.served(&email, limits, now);
                Verdict::Deliver
            }
            Decision::LookElsewhere => {
                self.searching = true;
                // Not a failover: the account is as good as before, it just does not hold this.
                tracing::debug!(account = %email, "the resource asked for is not this account's");
                self.tried.insert(email);
                self.current = None;
                Verdict::Retry
            }
            Decision::DeliverThirdPartyRefusal => {
                tracing::warn!(account = %email, "third-party use refused by Anthropic");
                let next = if self.keys_instead {
                    "; the next hour's requests go to the pool's Console keys (`oauth-pool reset-cooldowns` tries the subscriptions again)"
                } else {
                    ""
                };
                self.events.push(Event::new(
                    "third-party-refused",
                    Some(&email),
                    format!("{email}: Anthropic refused this subscription for third-party apps (the 400 says usage is billed as extra usage); not retried on other accounts{next}"),
                ));
                let who = email.clone();
                self.engine.note(false, move |p| {
                    p.error(&who, "third-party use refused by Anthropic (400)")
                });
                self.served(&email, limits, now);
                Verdict::Deliver
            }
            Decision::DeliverAccountRefusal(refusal) => {
                // Delivered, nobody benched (the contract's 400 and 403): the account's
                // `lastError` says what mends it, for `list` and `status` to show.
                tracing::warn!(account = %email, refusal = ?refusal, "the API refuses the account itself");
                let (who, why) = (email.clone(), refusal.describe());
                self.engine.note(false, move |p| p.error(&who, why));
                self.served(&email, limits, now);
                Verdict::Deliver
            }
            Decision::CoolAndMove(cooldown) => {
                let mut why = cooldown.describe();
                if in_stream {
                    why.push_str(" (said in the answer's event stream, before any content)");
                }
                if !limits.windows.is_empty() {
                    self.engine.overlay.note_windows(&email, &limits.windows);
                    let (who, seen) = (email.clone(), limits.clone());
                    self.engine.note(false, move |p| p.seen(&who, seen));
                }
                let told = self.engine.rest(&email, &cooldown, &why);
                self.cooled_unwritten = true;
                self.events.push(told);
                let holder = self
                    .meta
                    .names()
                    .and_then(|id| self.engine.overlay.holder(id));
                if holder.as_deref() == Some(email.as_str()) {
                    self.bound = holder;
                }
                self.move_on(email, why);
                Verdict::Retry
            }
        }
    }

    fn move_on(&mut self, email: String, reason: String) {
        self.tried.insert(email.clone());
        self.moved_from = Some((email, reason));
        self.current = None;
    }

    /// A 401 that a refresh could not answer for now: this process leaves the account alone
    /// until the token endpoint may be asked again (other processes learn the same wait through
    /// the shared refresh backoff), and says why.
    fn rest_after_unauthorized(
        &mut self,
        email: &str,
        tag: Option<String>,
        resets: Option<u64>,
        e: &Error,
    ) {
        let until = now_ms().saturating_add(super::credentials::backoff_ms(e));
        let rest = super::overlay::Rest {
            tag,
            until,
            resets,
            for_keys: false,
        };
        self.engine.overlay.rest(email, rest);
        let why = format!(
            "401 from the API and no new token yet ({e}); tried again {}",
            crate::wait::until(until, now_ms())
        );
        self.events.push(Event::new(
            "unavailable",
            Some(email),
            format!("{email}: {why}"),
        ));
        let who = email.to_string();
        self.engine.note(false, move |p| p.error(&who, &why));
    }

    /// Marks `email` refused, tied to its credential, when it still holds `refused`: by the time
    /// the answer came, another process may have refreshed it or its owner logged in again, and
    /// the new credential was never refused (marking it kept a working account out).
    async fn refuse(&mut self, email: &str, refused: &Credential, why: &str) {
        let holds = |a: &crate::account::Account| match refused {
            Credential::Bearer(token) => a.access.as_ref() == Some(token),
            Credential::ApiKey(key) => a.key.as_ref() == Some(key),
        };
        let tag = match self.engine.snapshot().await {
            Ok(pool) => {
                // Tokens this process holds unsaved are the account's too.
                let in_use = self.engine.credential_now(&pool, email);
                let unsaved = in_use.is_some_and(|c| c.secret() == refused.secret());
                match pool.find(email) {
                    Some(a) if unsaved || holds(a) => a.credential_tag(),
                    Some(_) => return,
                    None => None,
                }
            }
            Err(_) => None,
        };
        self.engine.refuse(email, tag, why);
        self.events.push(match refused {
            Credential::ApiKey(_) => {
                Event::new("auth-error", Some(email), format!("{email}: {why}")).about_api_key()
            }
            Credential::Bearer(_) => Event::new(
                "auth-error",
                Some(email),
                format!("{email} needs a new login: {why}"),
            ),
        });
    }

    fn served(&mut self, email: &str, limits: &Limits, now: i64) {
        let sent_at = self.sent_at;
        match &self.meta.resource {
            // A request for a file or a batch goes where that lives: it says nothing of which
            // account the conversation is to go on with.
            Some(id) => {
                if (200..300).contains(&self.status) {
                    self.engine.overlay.holds(id, email, sent_at);
                }
            }
            None => {
                // A message about a file: the account that served it holds the file.
                if let Some(file) = self.meta.file.as_deref() {
                    if (200..300).contains(&self.status) {
                        self.engine.overlay.holds(file, email, sent_at);
                    }
                }
                // One to an endpoint with limits of its own (counting tokens, making a batch)
                // says nothing of the conversation either: served by another account after a
                // throttle there, the conversation stays where its prompt cache is.
                if self.meta.endpoint.is_none() {
                    self.engine
                        .overlay
                        .served(email, self.meta.session.as_deref(), now, sent_at);
                }
            }
        }
        if !limits.windows.is_empty() {
            self.engine.overlay.note_windows(email, &limits.windows);
        }
        let seen = limits.has_quota_info().then(|| limits.clone());
        let who = email.to_string();
        self.engine
            .note(false, move |p| p.served(&who, now, sent_at, seen));
    }

    /// No account can take the request. If some are only cooling (or past their reserve line),
    /// the pool answers one 429 whose `retry-after` is the real wait, or, when holding is on and
    /// the wait fits, waits; otherwise it says plainly why nothing is usable.
    fn exhausted(&mut self, pool: &Pool) -> Result<Exhausted> {
        // An account that is not cooling could have served but for the store.
        if let Some(e) = self.store_error.take() {
            return Err(e);
        }
        let now = now_ms();
        let family = self.family.as_deref();
        // Bound to the account holding what the request needs, only its wait counts.
        let counts =
            |a: &crate::account::Account| self.bound.as_ref().is_none_or(|b| *b == a.email);
        let soonest = pool
            .accounts()
            .filter(|a| counts(a))
            .filter_map(|a| match self.blocked(a, now) {
                super::Blocked::Until(t) => Some((t, a.email.clone())),
                _ => None,
            })
            .min_by_key(|(t, _)| *t);
        // A login that could not serve only because the token endpoint asked to be left alone
        // serves again when that wait ends: the pool's wait is no longer than that (it said the
        // cooling account's 8 days while the login was usable in 30 s). With no account cooling
        // at all, that wait is the answer too: an endpoint down for a moment while every access
        // token had expired was POOL_NO_ACCOUNT, "no token", which a host does not retry.
        // With none cooling, only a wait this process saw begin with an answer that says
        // "later" (a 5xx, 429 or 408): a refusal, or an endpoint never reached, made a host
        // retry the 429 for ever, its cause unsaid, where POOL_NO_ACCOUNT says it.
        // Once the pool answers, its wait is the soonest of them all.
        let only_token_waits = soonest.is_none();
        let waits: Vec<(i64, String)> = pool
            .accounts()
            .filter(|a| self.tried.contains(&a.email) && counts(a))
            .filter_map(|a| {
                let until = self.engine.token_wait(pool, a, now)?;
                Some((until, a.email.clone()))
            })
            .collect();
        let answers = !only_token_waits
            || waits
                .iter()
                .any(|(_, e)| self.engine.credentials.passing_failure(e).is_some());
        let soonest = waits
            .into_iter()
            .chain(soonest)
            .filter(|_| answers)
            .min_by_key(|(t, _)| *t);
        let endpoint_said = match (&soonest, only_token_waits) {
            (Some((_, e)), true) => self
                .engine
                .credentials
                .passing_failure(e)
                .or_else(|| self.no_token.get(e).cloned())
                .unwrap_or_else(|| "it failed, and is left alone a while".into()),
            _ => String::new(),
        };
        if let Some((until, email)) = soonest {
            let wait = std::time::Duration::from_millis((until - now).max(0) as u64);
            let hold = !self.hold_left.is_zero() && wait <= self.hold_left && !self.released();
            let secs = ((until - now) as f64 / 1000.0).ceil().max(1.0) as i64;
            // Say "for sonnet models" ("for token counting") only when other requests would
            // still be served.
            // What holds the first account longest: the endpoint's own rest, or the model's.
            let by_endpoint = self.meta.endpoint.filter(|endpoint| {
                pool.find(&email).is_some_and(|a| {
                    self.engine.blocked(a, Some(endpoint), now) == super::Blocked::Until(until)
                })
            });
            let scope = by_endpoint.or(family);
            // Served, that is: a login waiting for the token endpoint serves no model either.
            let scoped =
                scope.is_some() && pool.accounts().any(|a| self.engine.usable(pool, a, now));
            // The first account back is a login waiting for the token endpoint, not a limit.
            let first_refreshes = pool
                .find(&email)
                .and_then(|a| self.engine.token_wait(pool, a, now))
                == Some(until);
            // The first account back is held by its own reserve line, no limit of the API's:
            // "rate-limited" alone sent people looking for a limit `status` did not show.
            let first_reserved = !first_refreshes
                && pool
                    .find(&email)
                    .is_some_and(|a| self.engine.held(pool, a, now).1 == Some((until, "reserve")));
            let first = if first_refreshes {
                format!(" or waiting for the token endpoint; the first one ({email}) is refreshed again")
            } else {
                format!("; the first one ({email}) is usable again")
            };
            let models = scope
                .filter(|_| scoped)
                .map(|f| format!(" for {}", super::limits::scope_text(f)))
                .unwrap_or_default();
            let limited = if first_reserved {
                format!("rate-limited{models} or held at its reserve line (`oauth-pool reserve`)")
            } else {
                format!("rate-limited{models}")
            };
            // Bound: what the request needs is that account's alone (its path's resource, or
            // the file its body refers to); the others could only answer 404.
            let needs = self
                .bound
                .is_some()
                .then(|| self.meta.names().unwrap_or("what this request needs"));
            let when = crate::wait::until(until, now);
            if hold {
                let message = match needs {
                    Some(id) => format!(
                        "anthropic-pool: {id} is {email}'s, which is rate-limited{models}; requests for it wait for that account, usable again {when} (OAUTH_POOL_HOLD_MAX_MS)"
                    ),
                    None if only_token_waits => format!(
                        "anthropic-pool: no account has a usable access token, and the token endpoint is not taking refreshes now ({endpoint_said}); requests wait for the first login ({email}), refreshed again {when} (OAUTH_POOL_HOLD_MAX_MS)"
                    ),
                    None if first_refreshes => format!(
                        "anthropic-pool: every account is rate-limited{models} or waiting for the token endpoint; requests wait for the first one ({email}), refreshed again {when} (OAUTH_POOL_HOLD_MAX_MS)"
                    ),
                    None => format!(
                        "anthropic-pool: every account is {limited}; requests wait for the first one ({email}), usable again {when} (OAUTH_POOL_HOLD_MAX_MS)"
                    ),
                };
                let message = pool.without_its_secrets(&message);
                if self.hold_cap.is_some_and(|cap| wait > cap) {
                    let why = if needs.is_some() {
                        "holder-cooling"
                    } else {
                        "all-accounts-cooling"
                    };
                    self.announce_hold(pool, &email, until, &message);
                    return Ok(Exhausted::Answer(pool_429(message, secs, why, true)));
                }
                return Ok(Exhausted::Wait(Held {
                    until,
                    email,
                    message,
                }));
            }
            // Holding is the answer for headless work that would rather wait than fail; say so,
            // since a 429 is where its user learns the pool is out.
            let holding = if self.released() {
                "; the pool gateway is stopping, so it is not held"
            } else if crate::settings::millis(crate::config::var::HOLD_MAX_MS).is_zero() {
                "; set OAUTH_POOL_HOLD_MAX_MS to have requests wait instead"
            } else {
                "; that is longer than requests wait (OAUTH_POOL_HOLD_MAX_MS)"
            };
            let message = match needs {
                Some(id) => format!(
                    "anthropic-pool: {id} is {email}'s (no other account can see it), and {email} is rate-limited{models}: usable again {when}{holding}"
                ),
                None if only_token_waits => format!(
                    "anthropic-pool: no account has a usable access token, and the token endpoint is not taking refreshes now ({endpoint_said}); the first login ({email}) is refreshed again {when}{holding}"
                ),
                None => format!("anthropic-pool: every account is {limited}{first} {when}{holding}"),
            };
            let message = pool.without_its_secrets(&message);
            let resets = pool.find(&email).map_or(0, |a| a.cooldown_resets());
            if needs.is_none() && self.engine.overlay.first_all_cooling(&email, until, resets) {
                tracing::info!(first = %email, until = %iso_time(until), "every account is cooling");
                self.events
                    .push(Event::new("all-cooling", Some(&email), &message).until(until));
            }
            let why = if needs.is_some() {
                "holder-cooling"
            } else {
                "all-accounts-cooling"
            };
            return Ok(Exhausted::Answer(pool_429(message, secs, why, false)));
        }
        // Bound: the others were never asked, and could only have answered 404.
        if let Some(holder) = self.bound.clone() {
            return Err(Error::NoUsableAccount(printable(
                &pool.without_its_secrets(&self.holder_out(pool, &holder, now)),
            )));
        }
        let total = pool.accounts().count();
        let unreadable = unreadable_entries(pool);
        let why = if total == 0 && !unreadable.is_empty() {
            // Entries, none of them readable: "has no accounts, add one" sent the person to log
            // in again while the file showed them their accounts.
            format!(
                "anthropic-pool has no usable account in {}: its {} cannot be read; `oauth-pool list` says why for each: fix or remove them (`oauth-pool remove '#N'`), or add an account with {}",
                self.engine.store().describe(),
                unreadable,
                login_ways!()
            )
        } else if total == 0 {
            format!(
                "anthropic-pool has no accounts in {}: add one with {}",
                self.engine.store().describe(),
                login_ways!()
            )
        } else {
            // Named up to a point: a message is read by a person (a file of 100,000 entries made
            // it 25 MB).
            const NAMED: usize = 12;
            let (mut login_refused, mut key_refused, mut disabled, mut no_login, mut no_key) =
                (false, false, false, false, false);
            let mut states: Vec<String> = pool
                .accounts()
                .take(NAMED)
                .map(|a| {
                    let s = self.state_of(a, now);
                    // A login the journal kept from being spent here lives elsewhere: its reason
                    // says where and what to do (a bare "auth-error … need a new login" sent a
                    // person to log in again while the login was alive in the other pool).
                    if s == "auth-error" {
                        if let Some(why) = self.login_elsewhere(a) {
                            return format!("{} (auth-error: {why})", a.email);
                        }
                    }
                    // Refused here: what the API said may be why no login helps.
                    let shown = match self.refused_saying.get(&a.email) {
                        Some(said) if s == "auth-error" => {
                            format!("auth-error: its 401 said \"{said}\"")
                        }
                        _ => s.clone(),
                    };
                    // A refused key is mended by another key, not a login.
                    login_refused |= s == "auth-error" && !a.is_api_key();
                    key_refused |= s == "auth-error" && a.is_api_key();
                    disabled |= s == "disabled";
                    no_login |= s == "no token";
                    no_key |= s == "no key";
                    format!("{} ({shown})", a.email)
                })
                .collect();
            if total > NAMED {
                states.push(format!("and {} more", total - NAMED));
            }
            // Only the advice that fits: a token endpoint that is down is no reason to log in.
            let mut advice = Vec::new();
            if login_refused || total > NAMED {
                advice.push(concat!(
                    "logins in auth-error need a new login (",
                    login_ways!(),
                    ")"
                ));
            }
            if key_refused || total > NAMED {
                advice.push("API keys in auth-error were refused: add a working key under the same name (`oauth-pool add-key --email <email>`)");
            }
            if disabled || total > NAMED {
                advice.push("disabled ones can be enabled with `oauth-pool enable <email>` or the model-accounts-pool tool");
            }
            if no_login {
                advice.push(concat!(
                    "one with no token needs a login (",
                    login_ways!(),
                    ")"
                ));
            }
            if no_key {
                advice.push("an API-key entry with no `key` needs one (`oauth-pool add-key --email <email>`)");
            }
            let advice = advice.join("; ");
            let mut first = advice.chars();
            let advice = match first.next() {
                Some(c) => format!(". {}{}", c.to_ascii_uppercase(), first.as_str()),
                None => String::new(),
            };
            format!(
                "anthropic-pool has no usable account: {}{advice}{}",
                states.join(", "),
                if unreadable.is_empty() {
                    String::new()
                } else {
                    format!("; its {unreadable} cannot be read (`oauth-pool list` says why)")
                }
            )
        };
        // Emails and reasons from the file: OpenCode shows this message as it is.
        Err(Error::NoUsableAccount(printable(
            &pool.without_its_secrets(&why),
        )))
    }
}

/// The store's entries the pool cannot read, as "2 entries (a@x, '#3')" (empty when there are
/// none): each named by its email, or by its place when it has none or the name holds a credential.
fn unreadable_entries(pool: &Pool) -> String {
    const NAMED: usize = 12;
    let count = pool.invalid_entries().count();
    if count == 0 {
        return String::new();
    }
    let mut names: Vec<String> = pool
        .invalid_entries()
        .take(NAMED)
        .map(|(i, _)| match pool.anthropic[i].email() {
            Some(e) if !e.trim().is_empty() && crate::secret::scrub_tokens(e) == e => e.to_string(),
            _ => format!("'#{i}'"),
        })
        .collect();
    if count > NAMED {
        names.push(format!("and {} more", count - NAMED));
    }
    let entries = if count == 1 { "entry" } else { "entries" };
    format!("{count} {entries} ({})", names.join(", "))
}

/// How a command this message suggests names `a`: its email, or, when the name holds a
/// credential (every message shows it `[redacted]`, a command no one can run), its place in the
/// file, `'#N'` as `oauth-pool list` shows it, which every command naming an account takes.
fn command_target(pool: &Pool, a: &crate::account::Account) -> String {
    if crate::secret::scrub_tokens(&a.email) == a.email {
        return a.email.clone();
    }
    pool.accounts_placed()
        .find(|(_, b)| std::ptr::eq(*b, a))
        .map_or_else(|| a.email.clone(), |(place, _)| format!("'#{place}'"))
}

impl Exchange {
    /// Why `a` did not serve this request, as the pool's "no usable account" says it.
    fn state_of(&self, a: &crate::account::Account, now: i64) -> String {
        if self.blocked(a, now) == super::Blocked::No {
            match self.no_token.get(&a.email) {
                Some(why) => format!("no token: {why}"),
                None => "refused this request".to_string(),
            }
        } else if self.engine.overlay.is_refused(a) {
            "auth-error".to_string()
        } else if a.is_enabled() && !a.auth_error_is_ours() && !a.has_credential() {
            // Its status says `idle` (usable), and the sentence said so of an account that was
            // never sent anything: an entry with no token, or a key written under another name.
            if a.is_api_key() { "no key" } else { "no token" }.to_string()
        } else {
            a.effective_status(now).as_str().to_string()
        }
    }

    /// The request needs what only `holder` holds (after its 429 here), and `holder` cannot
    /// take it: disabled, in need of a new login, or gone from the pool. Said of that account
    /// alone: the list of every account, the others "refused this request", sent a person
    /// looking at accounts that were never asked.
    fn holder_out(&self, pool: &Pool, holder: &str, now: i64) -> String {
        let id = self.meta.names().unwrap_or("what this request needs");
        let start = format!(
            "anthropic-pool: {id} is held by {holder} (no other account can see it, so none was asked)"
        );
        let login = concat!("with ", login_ways!());
        let Some(a) = pool.find(holder) else {
            return format!(
                "{start}, and {holder} is no longer in the pool: log it in again {login} to reach {id}"
            );
        };
        match self.state_of(a, now).as_str() {
            "disabled" => format!(
                "{start}, and {holder} is disabled: enable it (`oauth-pool enable {}` or the model-accounts-pool tool) to reach {id}",
                command_target(pool, a)
            ),
            "auth-error" => match self.login_elsewhere(a) {
                Some(why) => format!("{start}, and {holder} is in auth-error: {why}"),
                None => format!(
                    "{start}, and {holder} needs a new login: log it in again {login} to reach {id}"
                ),
            },
            s => format!("{start}, and {holder} could not take it ({s})"),
        }
    }

    /// Why `a`'s login is not here but in another pool (or this pool went back in time): what
    /// the journal said in this request, else what it said before (the account's `lastError`).
    fn login_elsewhere(&self, a: &crate::account::Account) -> Option<String> {
        if let Some(why) = self.elsewhere.get(&a.email) {
            return Some(why.clone());
        }
        // Written as the request's error ("a@x: not refreshed: …") after the refusal's own.
        let said = a
            .extra
            .get("lastError")
            .and_then(serde_json::Value::as_str)?;
        let said = said.strip_prefix(&format!("{}: ", a.email)).unwrap_or(said);
        said.starts_with(crate::store::journal::NOT_REFRESHED)
            .then(|| said.chars().take(1000).collect())
    }
}

/// The time an attempt is handed out to be sent (epoch ms), later than any handed out before in
/// this process: two requests sent in one millisecond are still ordered (a tie let the earlier
/// one's late answer pass for the later one's). It runs ahead of the clock only while more than
/// a thousand attempts a second go out, and by no more than that excess. After the clock was
/// stepped back it follows the clock again (it stayed where the clock had been, and the windows
/// an answer reported were stamped two hours ahead of their resets, which are on the clock):
/// what was stamped before the step counts as no later than now where it is compared
/// (`account::set_back_since`).
fn sending_time() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    // Kept on the machine's clock: a test's clock ahead of it (`account::test_clock`) is its
    // thread's alone, and is added after.
    let now = crate::account::wall_ms();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = if crate::account::set_back_since(last, now) {
            now
        } else {
            now.max(last.saturating_add(1))
        };
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next.saturating_add(crate::account::test_clock::offset()),
            Err(seen) => last = seen,
        }
    }
}

/// The pool's own 429: the wait in whole seconds (`retry-after`) and the message a person reads.
fn pool_429(message: String, secs: i64, why: &str, host_waits: bool) -> Step {
    let body = serde_json::json!({
        "type": "error",
        "error": { "type": "rate_limit_error", "message": printable(&message) }
    });
    let mut headers = vec![
        ("content-type".into(), "application/json".into()),
        ("retry-after".into(), secs.to_string()),
        ("x-oauth-pool".into(), why.into()),
    ];
    // Said on the answer too, for a driver that hands the host a Response (OpenCode 1.18's
    // provider fetch): its `retry-after` is a wait holding covers, to be sat out, not cut short.
    if host_waits {
        headers.push((HOST_WAITS_HEADER.into(), "true".into()));
    } else if secs > LONGEST_CLIENT_WAIT_SECS {
        // The Anthropic SDKs sleep any `retry-after`, and asked again after each: every key at
        // its spend limit (8 days) or every window spent (hours) held a script silent for days.
        // Past a minute they throw the pool's message at once (the AI SDK gives up on such a
        // wait by itself; the OpenCode drivers keep their own rules: `waitOpenCodeCanBear`, the
        // 2.x `retry` hook).
        headers.push(("x-should-retry".into(), "false".into()));
    }
    Step::Answer(Synthetic {
        status: 429,
        status_text: "Too Many Requests",
        headers,
        body: Bytes::from(body.to_string()),
        host_waits,
    })
}

/// The longest wait of the pool's 429 that a client is left to sleep and ask again after.
const LONGEST_CLIENT_WAIT_SECS: i64 = 60;

/// Marks the pool's 429 for a wait that holding covers but that is longer than the driver lets
/// one hold last (`Exchange::cap_hold`): the host is to wait the `retry-after`, then ask again.
const HOST_WAITS_HEADER: &str = "x-oauth-pool-host-waits";

enum Exhausted {
    Wait(Held),
    Answer(Step),
}

/// A wait for a cooling account (holding): until when, for which account, and what a person is
/// told when it begins.
struct Held {
    until: i64,
    email: String,
    message: String,
}

/// What goes upstream for an attempt with `credential`. Whoever carries the request, it says who
/// sends it: the caller's own user-agent when it set one (an SDK, OpenCode), else ours; never
/// another client's.
fn sending_headers(base: &HeaderMap, credential: &Credential) -> Result<HeaderMap> {
    let mut headers = with_credential(base, credential)?;
    if !headers.contains_key(reqwest::header::USER_AGENT) {
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(crate::http::USER_AGENT),
        );
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{Account, WINDOW_READS};
    use crate::store::Store;

    /// A 429's headers: the 5-hour window rejected, reset in an hour.
    fn five_hours_exhausted(now: i64) -> HeaderMap {
        let mut exhausted = HeaderMap::new();
        exhausted.insert(
            "anthropic-ratelimit-unified-5h-status",
            HeaderValue::from_static("rejected"),
        );
        let reset = ((now + 3_600_000) / 1000).to_string();
        exhausted.insert(
            "anthropic-ratelimit-unified-5h-reset",
            HeaderValue::from_str(&reset).unwrap(),
        );
        exhausted
    }

    fn two_logins(now: i64) -> Pool {
        let mut pool = Pool::default();
        for (i, email) in ["a@x", "b@x"].iter().enumerate() {
            let mut a = Account::new_oauth(
                email,
                format!("access-{i}").into(),
                format!("refresh-{i}").into(),
                now + 3_600_000,
                now,
            );
            // a@x first: the first choice of every request.
            a.priority = Some(if i == 0 { 1 } else { 0 });
            pool.upsert(a);
        }
        pool
    }

    /// `two_logins` in a pool file of a temporary directory (kept while the test runs), and an
    /// engine on it.
    async fn two_logins_stored() -> (tempfile::TempDir, Store, Arc<Engine>, i64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("pool.json"));
        let now = now_ms();
        store.save(two_logins(now)).await.unwrap();
        let engine = Engine::for_store(store.clone());
        (dir, store, engine, now)
    }

    /// Two requests on one account: one gets a 401 and adopts the token another process
    /// refreshed meanwhile, the other a 429 exhausting the account's 5-hour window. The retry
    /// after the 401 was sent to the account that had just been found exhausted (its 429 came,
    /// and the account rested again), though another account was free.
    #[tokio::test]
    async fn the_retry_after_a_401_does_not_go_to_an_account_that_rests_since() {
        let (_dir, store, engine, now) = two_logins_stored().await;
        let cancel = CancellationToken::new();
        let mut first = engine.exchange(RequestMeta::default());
        let mut second = engine.exchange(RequestMeta::default());
        for ex in [&mut first, &mut second] {
            let Ok(Step::Send(attempt)) = ex.next(&HeaderMap::new(), &cancel).await else {
                panic!("nothing sent");
            };
            assert_eq!(attempt.email, "a@x");
        }
        // Another process refreshed a@x's token.
        let mut pool = store.load().await.unwrap();
        pool.find_mut("a@x").unwrap().access = Some("access-new".to_string().into());
        store.save(pool).await.unwrap();
        let exhausted = five_hours_exhausted(now);
        let verdict = second
            .judge(429, &exhausted, Some(b"{}"), None, &cancel)
            .await
            .unwrap();
        assert_eq!(verdict, Verdict::Retry);
        let verdict = first
            .judge(401, &HeaderMap::new(), None, None, &cancel)
            .await
            .unwrap();
        assert_eq!(verdict, Verdict::Retry);
        let Ok(Step::Send(attempt)) = first.next(&HeaderMap::new(), &cancel).await else {
            panic!("nothing sent");
        };
        assert_eq!(attempt.email, "b@x", "sent to the account that rests");
        // The engine's deferred write of the cooldown must land before the temp dir goes: it
        // raced the removal, and the dir stayed in the temp directory with the pool in it.
        drop((first, second));
        engine.flush().await.unwrap();
    }

    /// The retry after a 401 sends the token the adoption gave (a fleet host in its store
    /// backoff read the refused one from its last pool read), unless the pool holds a newer one
    /// than both by then: a rotation since revoked the adopted token (found by a review).
    #[tokio::test]
    async fn the_retry_after_a_401_sends_the_newest_token_it_knows() {
        let (_dir, store, engine, _) = two_logins_stored().await;
        let cancel = CancellationToken::new();
        let bearer = |attempt: &Attempt| {
            attempt.headers["authorization"]
                .to_str()
                .unwrap()
                .to_string()
        };
        let rotate = |to: &'static str| {
            let store = store.clone();
            async move {
                let mut pool = store.load().await.unwrap();
                pool.find_mut("a@x").unwrap().access = Some(to.to_string().into());
                store.save(pool).await.unwrap();
            }
        };
        for newer_since in [false, true] {
            let mut ex = engine.exchange(RequestMeta::default());
            let Ok(Step::Send(attempt)) = ex.next(&HeaderMap::new(), &cancel).await else {
                panic!("nothing sent");
            };
            assert_eq!(attempt.email, "a@x");
            let adopted = if newer_since {
                "adopted-2"
            } else {
                "adopted-1"
            };
            rotate(adopted).await;
            let verdict = ex
                .judge(401, &HeaderMap::new(), None, None, &cancel)
                .await
                .unwrap();
            assert_eq!(verdict, Verdict::Retry);
            if newer_since {
                rotate("rotated-since").await;
            }
            let Ok(Step::Send(retry)) = ex.next(&HeaderMap::new(), &cancel).await else {
                panic!("no retry");
            };
            assert_eq!(retry.email, "a@x");
            let expected = if newer_since {
                "rotated-since"
            } else {
                adopted
            };
            assert_eq!(bearer(&retry), format!("Bearer {expected}"));
        }
        engine.flush().await.unwrap();
    }

    /// `reset-cooldowns` run from a shell (another process) while the only account is still
    /// limited: its next 429 says the same reset as the cooldown that was lifted. That was taken
    /// for no news (this process had decided it already), so it was neither kept nor written:
    /// every request went to the account again, met the limit again, and ended in "no usable
    /// account" (the account "refused this request") instead of the pool's 429 and its wait,
    /// until the lifted cooldown's time had passed; and other processes never learnt it.
    #[tokio::test]
    async fn a_limit_met_again_after_a_reset_from_another_process_rests_the_account_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::file(dir.path().join("pool.json"));
        let now = now_ms();
        let mut pool = two_logins(now);
        pool.remove("b@x").unwrap();
        store.save(pool).await.unwrap();
        let engine = Engine::for_store(store.clone());
        let cancel = CancellationToken::new();
        let exhausted = five_hours_exhausted(now);
        let limited = |mut ex: Exchange| {
            let (engine, exhausted, cancel) = (engine.clone(), exhausted.clone(), &cancel);
            async move {
                let Ok(Step::Send(attempt)) = ex.next(&HeaderMap::new(), cancel).await else {
                    panic!("nothing sent");
                };
                assert_eq!(attempt.email, "a@x");
                let verdict = ex.judge(429, &exhausted, Some(b"{}"), None, cancel).await;
                assert_eq!(verdict.unwrap(), Verdict::Retry);
                engine.flush().await.unwrap();
                ex.next(&HeaderMap::new(), cancel).await
            }
        };
        let first = limited(engine.exchange(RequestMeta::default())).await;
        assert!(matches!(first, Ok(Step::Answer(_))), "the pool's 429");
        // The store holds the cooldown, and is its truth from a moment later on.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        crate::manage::reset_cooldowns(&store).await.unwrap();
        let again = limited(engine.exchange(RequestMeta::default())).await;
        assert!(
            matches!(again, Ok(Step::Answer(_))),
            "the pool's 429, not: {:?}",
            again.err()
        );
        let stored = store.load().await.unwrap();
        assert!(
            stored.find("a@x").unwrap().cooling_at(now_ms()),
            "the store holds the rest again"
        );
        engine.flush().await.unwrap();
    }

    /// A file no account holds, asked through a pool of many: each account is asked once, and
    /// the accounts are ranked (each one's windows read) for the first choice only, not again
    /// after every 404 (twice per 404: 2 x 60 x 60 reads here, 430 ms of CPU with 300 accounts).
    #[test]
    fn a_search_through_many_accounts_ranks_them_once() {
        const N: usize = 60;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::file(dir.path().join("pool.json"));
            let now = now_ms();
            let mut pool = Pool::default();
            for i in 0..N {
                let mut a = Account::new_oauth(
                    &format!("m{i}@x"),
                    format!("access-{i}").into(),
                    format!("refresh-{i}").into(),
                    now + 3_600_000,
                    now,
                );
                let windows = serde_json::json!({ "windows": {
                    "5h": { "utilization": 0.1, "reset": now + 3_600_000 },
                    "7d": { "utilization": 0.2, "reset": now + 86_400_000 },
                } });
                a.extra.insert("limits".into(), windows);
                pool.upsert(a);
            }
            store.save(pool).await.unwrap();
            let engine = Engine::for_store(store);
            let meta = RequestMeta::default().with_url("/v1/files/file_011CNha8iCJcU1wXNR6q4V8w");
            let mut ex = engine.exchange(meta);
            let cancel = CancellationToken::new();
            let not_found =
                br#"{"type":"error","error":{"type":"not_found_error","message":"File not found"}}"#;
            WINDOW_READS.with(|n| n.set(0));
            let mut asked = HashSet::new();
            loop {
                let Ok(Step::Send(attempt)) = ex.next(&HeaderMap::new(), &cancel).await else {
                    panic!("no account was asked");
                };
                assert!(asked.insert(attempt.email), "an account asked twice");
                let verdict = ex
                    .judge(404, &HeaderMap::new(), Some(not_found), None, &cancel)
                    .await
                    .unwrap();
                if verdict == Verdict::Deliver {
                    break;
                }
            }
            assert_eq!(asked.len(), N, "every account is asked once");
            let reads = WINDOW_READS.with(|n| n.get());
            assert!(reads <= 3 * N, "{reads} reads of an account's windows");
            drop(ex);
            engine.flush().await.unwrap();
        });
    }
}
