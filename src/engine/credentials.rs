//! The credential protocol: a refresh token is presented at most once, machine-wide (one
//! exception: a single retry with the same token when the first answer was lost).
//!
//! In this process, refreshes of one account are single-flight (a tokio mutex per account).
//! Across processes, the store's per-account refresh lock is held from the re-read through the
//! token call to the durable write; whoever gets it second re-reads and adopts the fresher token
//! instead. New tokens that cannot be written (disk full, read-only directory, a file broken by a
//! hand edit) keep the lock: other processes wait rather than spend the old refresh token, and
//! every later write of this process tries to save them again.
//!
//! A refresh runs as its own task: a caller that aborts returns at once, and the refresh
//! finishes in the background for the next request (dropping it mid-call could lose tokens the
//! server already rotated).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::events::Event;
use super::overlay::lock;
use super::verdict::CredentialKind;
use super::Engine;
use crate::account::{now_ms, Account};
use crate::error::{Error, Result};
use crate::oauth;
use crate::pool::Pool;
use crate::secret::Secret;
use crate::store::journal::{self, Claim, Journal};
use crate::store::{RefreshLock, Trial, REFRESH_LOCK_TIMEOUT};

/// How long a refresh waits on the refresh journal (its lock waits at most 2 s of this; the rest
/// is its file's read and write) before it goes on without it.
const JOURNAL_PATIENCE: Duration = Duration::from_secs(5);
/// How long `refresh_now` (`oauth-pool refresh`) keeps trying to write new tokens it could not
/// save before it reports them unsaved, and how often.
const UNSAVED_PATIENCE: Duration = Duration::from_secs(60);
const UNSAVED_LOOK: Duration = Duration::from_secs(1);
/// How often a refresh that found its token claimed by another process of the fleet store looks
/// again (for that process's tokens, or its claim gone stale).
const CLAIM_POLL: Duration = Duration::from_millis(250);

/// Refreshes (and logins) whose new tokens are not written yet, in the whole process: the
/// refresh token (or code) each presented is spent, and the only copy of its successor is in
/// this process's memory until the write lands. A host that exits meanwhile loses the login
/// (`settle_unwritten`).
static UNWRITTEN: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One refresh, or one login's code exchange, from presenting its token or code to writing the
/// answer.
pub struct Unwritten;

impl Unwritten {
    pub fn begin() -> Unwritten {
        *lock(&UNWRITTEN.0) += 1;
        Unwritten
    }
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        let mut n = lock(&UNWRITTEN.0);
        *n = n.saturating_sub(1);
        if *n == 0 {
            UNWRITTEN.1.notify_all();
        }
    }
}

/// Waits up to `limit` for the refreshes whose new tokens are not written yet (at once when
/// there are none). True when none is left. The refreshes run on the runtime's threads, so the
/// thread that waits may be the one a host is exiting on.
pub fn settle_unwritten(limit: Duration) -> bool {
    let n = lock(&UNWRITTEN.0);
    match UNWRITTEN.1.wait_timeout_while(n, limit, |n| *n > 0) {
        Ok((n, _)) => *n == 0,
        Err(poisoned) => *poisoned.into_inner().0 == 0,
    }
}

/// Refresh this long before expiry so requests in flight never carry a dying token.
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;
/// After a token-endpoint failure without `retry-after`, wait this long before trying again.
const TOKEN_BACKOFF_DEFAULT_MS: i64 = 30_000;
/// How often unsaved tokens are tried again when nothing else writes (and, while the pool file
/// is gone, how often it is looked for).
pub(crate) const UNSAVED_RETRY: Duration = Duration::from_secs(5);
/// How long a refresh's request waits for the write of its new tokens before they are served
/// from memory (kept with the refresh lock, and written as soon as the store lets us). A write
/// takes milliseconds; what holds it longer is a writer that stopped with the pool's lock (an
/// OpenCode suspended with Ctrl-Z), and the store's own 60 s wait stalled the request behind it.
const REFRESH_WRITE_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub enum Credential {
    Bearer(Secret),
    ApiKey(Secret),
}

impl Credential {
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::Bearer(_) => CredentialKind::OAuth,
            Credential::ApiKey(_) => CredentialKind::ApiKey,
        }
    }

    pub fn secret(&self) -> &Secret {
        match self {
            Credential::Bearer(s) | Credential::ApiKey(s) => s,
        }
    }
}

/// Tokens a refresh obtained but could not write yet, with the refresh lock still held.
struct Unsaved {
    access: Secret,
    refresh: Secret,
    expires: i64,
    /// The refresh token that was spent to get these: the stored one, until the write lands.
    presented: Secret,
    error: String,
    /// The failed write's `err.code`, for a caller that asked for this refresh.
    code: &'static str,
    since: i64,
    _lock: RefreshLock,
    /// The fleet store's claim on the spent token, kept beating until these are written.
    _claim: Option<crate::store::postgres::ClaimBeat>,
}

/// Lets the journal's entry for a token that was not spent go, before the locks do: the next
/// in line (another process of this store, which finds it in flight while this one lives)
/// presents it then.
async fn released_in_journal(
    journal: Option<Journal>,
    here: Option<String>,
    tag: String,
    email: &str,
) {
    if let (Some(j), Some(here)) = (journal, here) {
        let who = email.to_string();
        let releasing = crate::store::blocking(move || {
            j.released(&tag, &here, &who);
            Ok(())
        });
        let _ = tokio::time::timeout(JOURNAL_PATIENCE, releasing).await;
    }
}

/// The refresh of `tag` ended without saved tokens, perhaps spent (a lost answer, a 2xx that is
/// no token answer): the journal keeps it presented, no longer held by this process's call.
async fn ended_in_journal(
    journal: Option<Journal>,
    here: Option<String>,
    tag: String,
    email: &str,
) {
    if let (Some(j), Some(here)) = (journal, here) {
        let who = email.to_string();
        let ending = crate::store::blocking(move || {
            j.ended(&tag, &here, &who);
            Ok(())
        });
        let _ = tokio::time::timeout(JOURNAL_PATIENCE, ending).await;
    }
}

/// The account `email` in `pool`, or, renamed since it was read (a script's `savePool`), the one
/// that holds the refresh token `presented`: the same login, whose refresh goes on.
fn holder_of<'p>(pool: &'p Pool, email: &str, presented: &Secret) -> Option<&'p Account> {
    pool.find(email).or_else(|| {
        pool.accounts()
            .find(|a| !a.is_api_key() && a.refresh.as_ref() == Some(presented))
    })
}

/// A journal entry made for a refresh token not presented yet: a refresh that ends before its
/// token call (its lock lost, the fleet store's claim not granted, the request dropped) lets it
/// go, or other processes of the store would find the token in flight (`POOL_BUSY`) for up to
/// two minutes for a presentation that never happened.
struct NotPresented {
    /// The journal, the token's tag, the store's journal id and the account.
    entry: Option<(Journal, String, String, String)>,
}

impl NotPresented {
    /// The token is going out: the entry stands until the refresh's outcome is known.
    fn presented(mut self) {
        self.entry = None;
    }
}

impl Drop for NotPresented {
    fn drop(&mut self) {
        if let Some((journal, tag, here, email)) = self.entry.take() {
            let releasing = crate::store::blocking(move || {
                journal.released(&tag, &here, &email);
                Ok(())
            });
            let spawned = crate::runtime::spawn(async move {
                let _ = tokio::time::timeout(JOURNAL_PATIENCE, releasing).await;
            });
            if let Err(why) = spawned {
                tracing::warn!(error = %why, "the refresh journal's entry for a token not presented stays until it is two minutes old");
            }
        }
    }
}

/// What a write must carry for one account's unsaved tokens (also as kept on disk).
pub use crate::store::rescue::KeptTokens as UnsavedTokens;

#[derive(Default)]
pub struct Credentials {
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    unsaved: Mutex<HashMap<String, Unsaved>>,
    /// The access token this process's last refresh obtained (to tell a refresh from an adoption).
    last_issued: Mutex<Option<Secret>>,
    /// Refreshes this process made (the gateway's metrics).
    refreshes: std::sync::atomic::AtomicU64,
    /// email -> the refresh token the endpoint refused (`invalid_grant`): a request that waited
    /// on that refresh finds it here and does not present the dead token again.
    refused: Mutex<HashMap<String, Secret>>,
    /// email -> the tokens this process saved last, with the refresh token they replaced. A
    /// writer that takes no lock (aidevops's bash manage commands read the file, change it and
    /// move a copy over it) can put the spent token back over them: every write of this process
    /// puts these back in its place (`apply_successors`), where the login was lost before.
    successors: Mutex<HashMap<String, UnsavedTokens>>,
    /// The file this process's unsaved tokens are kept in beside the pool (`store::rescue`),
    /// while there is one: what `TokensUnsaved` tells the user.
    pub(crate) kept_file: Mutex<Option<std::path::PathBuf>>,
    /// email -> what the token endpoint answered when this process's last refresh of it failed
    /// in a way waiting mends (a 5xx, 429 or 408: the endpoint answered, and said later). Only
    /// those waits are the pool's 429 when no account cools (`Exchange::exhausted`): a refusal
    /// or an endpoint never reached (a wrong URL, a TLS failure) made a host retry for ever, its
    /// cause unsaid. Another process's wait, whose cause this one does not know, is not.
    passing_failures: Mutex<HashMap<String, String>>,
    /// email -> tokens a refresh obtained whose write into the pool is under way. They are kept
    /// on disk beside the pool with the unsaved ones until it lands: the write may wait up to
    /// `REFRESH_WRITE_PATIENCE` for the pool's lock (a writer stopped with Ctrl-Z, aidevops's
    /// lock), and a process ended meanwhile (killed, or Ctrl-C past the exit's wait) lost them
    /// with the login, its refresh token spent.
    writing: Mutex<HashMap<String, UnsavedTokens>>,
}

/// What `refresh_now` did: `refreshed` (this process spent the token), `adopted` (another
/// process had refreshed meanwhile), or `kept` (the stored refresh token is unchanged: the token
/// endpoint handed the same one back, or none). New tokens that could not be saved are an error.
pub struct RefreshReport {
    pub email: String,
    pub expires: Option<i64>,
    pub outcome: &'static str,
    pub events: Vec<Event>,
}

impl Credentials {
    fn flight(&self, email: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.flights)
            .entry(email.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    fn unsaved_access(&self, email: &str, rejected: Option<&Secret>) -> Option<Secret> {
        let unsaved = lock(&self.unsaved);
        let u = unsaved.get(email)?;
        (u.expires - REFRESH_MARGIN_MS > now_ms() && rejected != Some(&u.access))
            .then(|| u.access.clone())
    }

    /// The unsaved access token of `email` while it serves (`old_serves`' rule): due for a
    /// refresh, not yet expired.
    fn unsaved_serving(&self, email: &str, rejected: Option<&Secret>) -> Option<Secret> {
        let unsaved = lock(&self.unsaved);
        let u = unsaved.get(email)?;
        (u.expires > now_ms() + 10_000 && rejected != Some(&u.access)).then(|| u.access.clone())
    }

    /// Why `access`, this account's newest token, is not in the store yet (and the write's code).
    fn unsaved_because(&self, email: &str, access: &Secret) -> Option<(String, &'static str)> {
        let unsaved = lock(&self.unsaved);
        let u = unsaved.get(email).filter(|u| &u.access == access)?;
        Some((u.error.clone(), u.code))
    }

    /// What the token endpoint answered, when this process saw `email`'s last refresh fail in a
    /// way waiting mends.
    pub fn passing_failure(&self, email: &str) -> Option<String> {
        lock(&self.passing_failures).get(email).cloned()
    }

    fn kept_file_shown(&self) -> Option<String> {
        lock(&self.kept_file)
            .as_ref()
            .map(|p| p.display().to_string())
    }

    pub fn has_unsaved(&self) -> bool {
        !lock(&self.unsaved).is_empty()
    }

    /// `TokensUnsaved` for the first account whose new tokens are still only in this process.
    pub fn unsaved_error(&self) -> Option<Error> {
        let first = lock(&self.unsaved).keys().min().cloned()?;
        self.unsaved_error_of(&first)
    }

    /// `TokensUnsaved` for `email` when its newest tokens are still only in this process (which
    /// holds their refresh lock until they are written).
    fn unsaved_error_of(&self, email: &str) -> Option<Error> {
        let (reason, code) = lock(&self.unsaved)
            .get(email)
            .map(|u| (u.error.clone(), u.code))?;
        Some(Error::TokensUnsaved {
            email: email.to_string(),
            reason,
            code,
            kept: self.kept_file_shown(),
        })
    }

    pub fn unsaved_tokens(&self) -> Vec<UnsavedTokens> {
        lock(&self.unsaved)
            .iter()
            .map(|(email, u)| UnsavedTokens {
                email: email.clone(),
                access: u.access.clone(),
                refresh: u.refresh.clone(),
                expires: u.expires,
                presented: u.presented.clone(),
            })
            .collect()
    }

    /// What is kept on disk beside the pool: the unsaved tokens and those being written.
    pub fn tokens_to_keep(&self) -> Vec<UnsavedTokens> {
        let mut tokens = self.unsaved_tokens();
        tokens.extend(lock(&self.writing).values().cloned());
        tokens
    }

    /// Forgets the refresh flights and refused tokens of accounts the pool no longer has (a
    /// flight under way stays: its refresh ends and writes as it would).
    pub fn keep_only(&self, present: &std::collections::HashSet<&str>) {
        lock(&self.flights).retain(|e, f| present.contains(e.as_str()) || Arc::strong_count(f) > 1);
        lock(&self.refused).retain(|e, _| present.contains(e.as_str()));
    }

    /// The tokens of these accounts are durable now: release their refresh locks. Returns,
    /// for the refresh journal, each account's refresh token that its saved tokens replaced.
    /// `written` names each account with the refresh token the write carried: tokens refreshed
    /// again since (kept unsaved, the write already under way) stay kept.
    pub fn saved(&self, written: &[(String, Secret)]) -> Vec<(String, Secret)> {
        let mut spent = Vec::new();
        let mut landed = Vec::new();
        {
            let mut unsaved = lock(&self.unsaved);
            for (e, refresh) in written {
                if unsaved.get(e).is_some_and(|u| u.refresh != *refresh) {
                    continue;
                }
                if let Some(u) = unsaved.remove(e) {
                    tracing::info!(account = %e, "saved the tokens that could not be written before");
                    if u.refresh != u.presented {
                        spent.push((e.clone(), u.presented.clone()));
                        landed.push(UnsavedTokens {
                            email: e.clone(),
                            access: u.access.clone(),
                            refresh: u.refresh.clone(),
                            expires: u.expires,
                            presented: u.presented.clone(),
                        });
                    }
                }
            }
        }
        // Once `unsaved` is let go: `successors()` takes the two locks one at a time, and two
        // writes of one process holding one each waited on each other for ever.
        for t in landed {
            self.saved_successor(t);
        }
        spent
    }

    /// A refresh's tokens are in the store, in place of the refresh token they replaced.
    fn saved_successor(&self, tokens: UnsavedTokens) {
        lock(&self.successors).insert(tokens.email.clone(), tokens);
    }

    /// The tokens this process saved last for each account (`apply_successors`).
    pub fn successors(&self) -> Vec<UnsavedTokens> {
        let all: Vec<UnsavedTokens> = lock(&self.successors).values().cloned().collect();
        if all.is_empty() {
            return all;
        }
        // Tokens refreshed again since and not saved yet are newer: they are the ones put back.
        // One lock at a time (`saved` takes them in the other order).
        let unsaved = lock(&self.unsaved);
        all.into_iter()
            .filter(|t| !unsaved.contains_key(&t.email))
            .collect()
    }

    /// For status: which accounts hold unsaved tokens, since when, and why.
    pub fn unsaved_report(&self) -> Vec<(String, i64, String)> {
        lock(&self.unsaved)
            .iter()
            .map(|(e, u)| (e.clone(), u.since, u.error.clone()))
            .collect()
    }
}

pub use crate::store::rescue::{apply_kept, KeptFiles};

/// The entry of `email`'s login: by its name, else the one still holding `spent`, the refresh
/// token its newer tokens replaced (renamed meanwhile: a hand edit, a script's `savePool`).
fn holder_mut<'a>(pool: &'a mut Pool, email: &str, spent: &Secret) -> Option<&'a mut Account> {
    if pool.find(email).is_some() {
        return pool.find_mut(email);
    }
    pool.accounts_mut()
        .find(|a| !a.is_api_key() && a.refresh.as_ref() == Some(spent))
}

/// Writes unsaved tokens into `pool` where they still belong (the account still holds the
/// refresh token that was spent, or already ours). Returns the emails written.
pub fn apply_unsaved(pool: &mut Pool, tokens: &[UnsavedTokens]) -> Vec<String> {
    apply_unsaved_with(pool, tokens, &crate::store::rescue::spent_in_journal)
}

/// `apply_unsaved`, asking `spent` whether a token an account holds is known spent.
pub fn apply_unsaved_with(
    pool: &mut Pool,
    tokens: &[UnsavedTokens],
    spent: &dyn Fn(&Secret) -> bool,
) -> Vec<String> {
    let mut written = Vec::new();
    // No file at all is no removal: they wait for it to come back.
    if pool.file_missing {
        return written;
    }
    for t in tokens {
        let unread = pool.unreadable_may_be(&t.email, &[&t.presented, &t.refresh]);
        let holder = holder_mut(pool, &t.email, &t.presented);
        // An older state of the pool put back meanwhile (a sync tool, a snapshot, an editor's
        // undo) holds a token the journal knows spent (`rescue::spent_in_journal`): these
        // continue its login. Dropped as "logged in again", they went from memory and disk. A
        // login made since (never spent) keeps its place, however soon it ends.
        let put_back = |a: &Account| {
            !a.is_api_key()
                && a.expires.is_some_and(|e| e < t.expires)
                && a.refresh.as_ref().is_some_and(spent)
        };
        match holder {
            Some(a)
                if a.refresh.as_ref() == Some(&t.presented)
                    || a.refresh.as_ref() == Some(&t.refresh)
                    || put_back(a) =>
            {
                a.set_tokens(&t.access, &t.refresh, t.expires);
                written.push(t.email.clone());
            }
            // An entry kept unread may be this login (a hand edit broke a field): they wait
            // for it to be mended.
            None if unread => {}
            // Removed, or logged in again meanwhile: those tokens are not wanted any more.
            _ => written.push(t.email.clone()),
        }
    }
    written
}

/// Puts back tokens this process saved (`Credentials::successors`) where an account holds the
/// refresh token they replaced again: a lock-free writer's copy of the file, read before our
/// write and moved over it after. The spent token would be refused at the next refresh, and the
/// login lost with it. Returns the emails put back.
pub fn apply_successors(pool: &mut Pool, successors: &[UnsavedTokens]) -> Vec<String> {
    if successors.is_empty() {
        return Vec::new();
    }
    apply_successors_with(pool, successors, &crate::store::rescue::spent_in_journal)
}

/// `apply_successors`, asking `spent` whether a refresh token is known spent.
pub fn apply_successors_with(
    pool: &mut Pool,
    successors: &[UnsavedTokens],
    spent: &dyn Fn(&Secret) -> bool,
) -> Vec<String> {
    let mut put = Vec::new();
    if pool.file_missing {
        return put;
    }
    for t in successors {
        let Some(a) = holder_mut(pool, &t.email, &t.presented) else {
            continue;
        };
        if a.is_api_key() || a.refresh.is_none() || a.refresh.as_ref() == Some(&t.refresh) {
            continue;
        }
        // The very token these replaced, or an older one the journal knows spent (a copy read
        // before an earlier refresh). A login made since holds a token never spent, and stays.
        let back = a.refresh.as_ref() == Some(&t.presented)
            || (a.expires.is_some_and(|e| e < t.expires) && a.refresh.as_ref().is_some_and(spent));
        // Refreshed again since by another process: ours are spent too, and its are the login.
        if back && !spent(&t.refresh) {
            tracing::warn!(account = %a.email, "the pool file was put back to a refresh token this process had spent (a writer that takes no lock); writing the tokens that replaced it again");
            a.set_tokens(&t.access, &t.refresh, t.expires);
            put.push(a.email.clone());
        }
    }
    put
}

/// The access token if it is present and not within the refresh margin of its expiry. An
/// unknown expiry is trusted: a 401 will tell.
pub fn fresh_access(a: &Account, now: i64) -> Option<Secret> {
    let access = a.access.clone().filter(|s| !s.is_empty())?;
    match a.expires {
        Some(exp) if exp - REFRESH_MARGIN_MS <= now => None,
        _ => Some(access),
    }
}

impl Engine {
    /// The credential `credential()` would give when it needs no I/O (an API key, an unsaved or
    /// unexpired token); `None` when a refresh or a verification is due, or on any error.
    pub fn credential_now(&self, pool: &Pool, email: &str) -> Option<Credential> {
        let account = pool.find(email)?;
        if account.is_api_key() {
            return account
                .key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Credential::ApiKey);
        }
        if let Some(access) = self.credentials.unsaved_access(email, None) {
            return Some(Credential::Bearer(access));
        }
        if account.auth_error_unverified() {
            return None;
        }
        fresh_access(account, now_ms()).map(Credential::Bearer)
    }

    /// Until when `a` cannot serve because its access token needs a refresh and the token
    /// endpoint asked to be left alone (`refreshBackoffUntil`); None when that is not so.
    pub fn token_wait(&self, pool: &Pool, a: &Account, now: i64) -> Option<i64> {
        if a.is_api_key() || self.credential_now(pool, &a.email).is_some() {
            return None;
        }
        a.refresh_backoff_until(now)
    }

    /// A credential for `email` (from the caller's snapshot), fresh enough to send. Refreshes
    /// when the access token is within the margin of its expiry.
    ///
    /// `patience`: how long to wait for another refresh of the account already under way (in
    /// this process or another) before giving up with `POOL_BUSY`.
    pub async fn credential(
        self: &Arc<Self>,
        pool: &Pool,
        email: &str,
        patience: Duration,
        cancel: &CancellationToken,
        events: &mut Vec<Event>,
    ) -> Result<Credential> {
        let account = pool.find(email).ok_or_else(|| pool.not_found(email))?;
        if account.is_api_key() {
            return account
                .key
                .clone()
                .filter(|k| !k.is_empty())
                .map(Credential::ApiKey)
                .ok_or_else(|| {
                    Error::NoUsableAccount(crate::printable::printable(&format!(
                        "{email} has no API key"
                    )))
                });
        }
        if let Some(access) = self.credentials.unsaved_access(email, None) {
            return Ok(Credential::Bearer(access));
        }
        // An auth-error someone else set is verified by presenting the refresh token once:
        // a new token revives the account, invalid_grant makes the mark ours (final).
        if account.auth_error_unverified() {
            return self
                .refresh(email, account.access.clone(), patience, cancel, events)
                .await
                .map(Credential::Bearer);
        }
        if let Some(access) = fresh_access(account, now_ms()) {
            return Ok(Credential::Bearer(access));
        }
        self.refresh(email, None, patience, cancel, events)
            .await
            .map(Credential::Bearer)
    }

    /// `oauth-pool refresh <email>`: spends the refresh token now, under the same protocol, unless
    /// another process refreshed meanwhile (then its token is adopted). For shell helpers that
    /// used to refresh on their own, outside the pool's lock.
    pub async fn refresh_now(self: &Arc<Self>, email: &str) -> Result<RefreshReport> {
        let pool = self.store.load().await?;
        // Named as every other command names an account (`Pool::resolve`): its email, else its
        // `#N`, else in another case. By its email as written only, an account whose name holds
        // a credential (`list` shows `[redacted] (#0)`) could be refreshed only by typing it.
        let found = pool.resolve(email)?;
        let entry = found
            .iter()
            .map(|i| &pool.anthropic[*i])
            .find(|e| matches!(e, crate::pool::Entry::Valid(_)))
            .or_else(|| found.first().map(|i| &pool.anthropic[*i]));
        let account = match entry {
            Some(crate::pool::Entry::Valid(a)) => a,
            Some(crate::pool::Entry::Invalid { reason, .. }) => {
                return Err(Error::InvalidArgument(format!(
                    "the entry {email} is unreadable ({reason}): fix it in the file or remove it"
                )))
            }
            None => return Err(pool.not_found(email)),
        };
        if account.is_api_key() {
            return Err(Error::InvalidArgument(format!(
                "{email} is a Console API key: there is nothing to refresh"
            )));
        }
        let email = account.email.clone();
        let before = account.refresh.clone();
        // Asked for, not needed by a request: nothing is waiting on a token that could not be
        // saved, and a process that ends (the CLI does at once) would take the new one with it.
        self.store.try_write_room(Trial::Refresh).await?;
        // Tokens a process kept beside the pool (`store::rescue`) are written first: the pool's
        // refresh token is spent for them, and only a write of some process takes them (this
        // one's refresh adopted them, and the file stayed, with the pool still holding the spent
        // token, and "kept" reported).
        if !self.kept_elsewhere().await.is_empty()
            || self
                .store
                .path()
                .is_some_and(crate::store::file::has_orphaned_temps)
        {
            self.write(|_| Ok(())).await?;
        }
        let mut events = Vec::new();
        let never = CancellationToken::new();
        let access = self
            .refresh(
                &email,
                account.access.clone(),
                REFRESH_LOCK_TIMEOUT,
                &never,
                &mut events,
            )
            .await?;
        // "kept" said the token endpoint had nothing new while the pool's refresh token was in
        // fact spent and its successor lost with this process (a CLI ends right after). The
        // write is tried again for a while first: a writer holding the pool's lock past the
        // refresh's patience (an OpenCode stopped with Ctrl-Z, let go on `fg`) left the CLI to
        // end with the only copy of the new tokens.
        let trying_until = tokio::time::Instant::now() + UNSAVED_PATIENCE;
        while let Some((reason, code)) = self.credentials.unsaved_because(&email, &access) {
            if tokio::time::Instant::now() >= trying_until {
                return Err(Error::TokensUnsaved {
                    email,
                    reason,
                    code,
                    kept: self.credentials.kept_file_shown(),
                });
            }
            tokio::time::sleep(UNSAVED_LOOK).await;
            // Every write retries the unsaved tokens first; this one changes nothing else.
            let _ = self.write(|_| Ok(())).await;
        }
        let after = self.store.load().await?;
        let now = after.find(&email);
        let spent = now.and_then(|a| a.refresh.clone()) != before;
        Ok(RefreshReport {
            email,
            expires: now.and_then(|a| a.expires),
            outcome: if !spent {
                "kept"
            } else if self.refreshed_by_us(&access) {
                "refreshed"
            } else {
                "adopted"
            },
            events,
        })
    }

    /// How many access tokens this process has refreshed.
    pub fn refreshes(&self) -> u64 {
        self.credentials
            .refreshes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refreshed_by_us(&self, access: &Secret) -> bool {
        lock(&self.credentials.last_issued).as_ref() == Some(access)
    }

    /// After a 401: adopt a token another process wrote, or refresh even though the clock says
    /// the token is valid (servers revoke early). `rejected` is the token that got the 401.
    pub async fn after_unauthorized(
        self: &Arc<Self>,
        email: &str,
        rejected: &Secret,
        patience: Duration,
        cancel: &CancellationToken,
        events: &mut Vec<Event>,
    ) -> Result<Secret> {
        self.refresh(email, Some(rejected.clone()), patience, cancel, events)
            .await
    }

    /// Runs the protocol in its own task; returns early (Aborted) when the caller aborts, and
    /// with `RefreshSlow` after `patience` when it is brief (another account could serve the
    /// request): a refresh stuck on a silent token endpoint takes up to a minute, and the request
    /// moves on rather than wait it out. Either way the refresh goes on to its end and writes
    /// what it got, and the next request tells what it said.
    pub async fn refresh(
        self: &Arc<Self>,
        email: &str,
        rejected: Option<Secret>,
        patience: Duration,
        cancel: &CancellationToken,
        events: &mut Vec<Event>,
    ) -> Result<Secret> {
        let (told, heard) = tokio::sync::oneshot::channel();
        let me = self.clone();
        let who = email.to_string();
        crate::runtime::spawn_boxed(async move {
            let mut events = Vec::new();
            let result = me
                .refresh_protocol(&who, rejected.as_ref(), patience, &mut events)
                .await;
            if let Err((_, events)) = told.send((result, events)) {
                me.tell_later(events);
            }
        });
        let move_on = (patience < REFRESH_LOCK_TIMEOUT).then_some(patience);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Aborted),
            done = heard => match done {
                Ok((result, mut evs)) => {
                    events.append(&mut evs);
                    result
                }
                Err(_) => Err(Error::InvalidArgument("the refresh task failed".into())),
            },
            () = tokio::time::sleep(move_on.unwrap_or_default()), if move_on.is_some() => {
                Err(Error::RefreshSlow {
                    email: email.to_string(),
                    seconds: patience.as_secs(),
                })
            }
        }
    }

    /// After another process rotated the refresh token this one was about to present: the access
    /// token it got (`adopted`, when still usable), else the old one while it lasts, else
    /// `RefreshClaimed` (the holder's tokens are not there yet, or already spent).
    fn adopt_or_wait(
        &self,
        email: &str,
        adopted: Option<Secret>,
        account: &Account,
        rejected: Option<&Secret>,
    ) -> Result<Secret> {
        if let Some(access) = adopted {
            tracing::debug!(account = %email, "adopted a token another process refreshed");
            self.invalidate();
            return Ok(access);
        }
        let busy = Error::RefreshClaimed {
            email: email.to_string(),
            store: self.store.describe(),
        };
        serve_old_or(account, rejected, busy)
    }

    async fn refresh_protocol(
        self: &Arc<Self>,
        email: &str,
        rejected: Option<&Secret>,
        patience: Duration,
        events: &mut Vec<Event>,
    ) -> Result<Secret> {
        let started = Instant::now();
        let flight = self.credentials.flight(email);
        let Ok(_in_process) = tokio::time::timeout(patience, flight.lock()).await else {
            return Err(Error::RefreshBusy {
                email: email.to_string(),
                seconds: patience.as_secs(),
            });
        };
        let usable_now = |a: &Account| -> Option<Secret> {
            let access = fresh_access(a, now_ms())?;
            (rejected != Some(&access)).then_some(access)
        };

        // Whoever held the flight before us may have refreshed already.
        if let Some(access) = self.credentials.unsaved_access(email, rejected) {
            return Ok(access);
        }
        // New tokens this process could not write hold the account's refresh lock: waiting on
        // it waited on ourselves, 75 s, and then told of a refresh under way that was none (and
        // a rest after a 401 as a rate limit). A write tries them again; still unsaved, the
        // failure is told as it is.
        if self.credentials.unsaved_error_of(email).is_some() {
            // Due for a refresh, their access token still serves while it lasts (as a pool's
            // does when its refresh cannot be made).
            if let Some(access) = self.credentials.unsaved_serving(email, rejected) {
                return Ok(access);
            }
            let _ = self.write(|_| Ok(())).await;
            if let Some(unsaved) = self.credentials.unsaved_error_of(email) {
                return Err(unsaved);
            }
        }
        let pool = self.snapshot().await?;
        let account = pool.find(email).ok_or_else(|| pool.not_found(email))?;
        if let Some(access) = usable_now(account) {
            return Ok(access);
        }
        let refused_before = account.auth_error_is_ours();

        // Across processes: hold the account's refresh lock from re-read to durable write. While
        // the access token still works (it is only within its refresh margin), a refresh another
        // process has under way is not waited for, and the token serves: a holder stopped
        // mid-refresh (Ctrl-Z, SIGSTOP) kept every other process's requests waiting their 75 s
        // for `POOL_BUSY`, the token good for minutes yet.
        let left = if old_serves(account, rejected) {
            Duration::ZERO
        } else {
            patience.saturating_sub(started.elapsed())
        };
        let refresh_lock = match self.store.refresh_lock(email, left).await {
            Err(Error::PoolBusy { .. }) => {
                let busy = Error::RefreshBusy {
                    email: email.to_string(),
                    seconds: patience.as_secs(),
                };
                return serve_old_or(account, rejected, busy);
            }
            // A lock that cannot be made (a read-only mount, a full disk, a store that is down)
            // is no refresh, as a disk without room for the new tokens is: the access token
            // still in its margin serves while it lasts.
            Err(e) => {
                tracing::warn!(account = %email, error = %e, "the refresh lock cannot be taken; not refreshing");
                return serve_old_or(account, rejected, e);
            }
            Ok(lock) => lock,
        };
        let mut pool = self.store.load_under(&refresh_lock).await?;
        // Tokens a process that ended could not write (`store::rescue`): their refresh token is
        // the live one, the pool's is spent.
        let kept = self.kept_and_orphaned(&pool).await;
        let _ = apply_kept(&mut pool, &kept);
        // Ours, saved and then undone by a writer that takes no lock: written back at once (a
        // process reading the spent token would be refused it, and an older release would
        // present it), and taken from here if that write fails. The fleet store's lock holds
        // the row this write would wait for; its next write under the lock puts them back.
        if !apply_successors(&mut pool, &self.credentials.successors()).is_empty()
            && !refresh_lock.is_fleet()
        {
            let _ = self.write(|_| Ok(())).await;
        }
        let account = pool
            .find(email)
            .ok_or_else(|| pool.not_found(email))?
            .clone();
        if let Some(access) = usable_now(&account) {
            tracing::debug!(account = %email, "adopted a token another process refreshed");
            self.invalidate();
            return Ok(access);
        }
        let presented = account
            .refresh
            .clone()
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Error::OAuthInvalidGrant("the account has no refresh token".into()))?;
        // Refused while this waited for the lock, by the process that held it (it writes the
        // refusal under the lock): presenting the token again would only be refused again. A
        // mark read before (`oauth-pool refresh` of an account refused after a 401) is tried.
        if account.auth_error_is_ours() && !refused_before {
            lock(&self.credentials.refused).insert(email.to_string(), presented.clone());
            self.overlay.refuse(email, account.credential_tag());
            return Err(Error::OAuthInvalidGrant(
                "refused already for this token: log in again".into(),
            ));
        }
        if let Some(until) = account.refresh_backoff_until(now_ms()) {
            let err = Error::RefreshBackoff {
                until: crate::wait::at(until, now_ms()),
                retry_after: ((until - now_ms()) / 1000).max(1) as u64,
            };
            return serve_old_or(&account, rejected, err);
        }

        if lock(&self.credentials.refused).get(email) == Some(&presented) {
            return Err(Error::OAuthInvalidGrant(
                "refused already for this token: log in again".into(),
            ));
        }
        if let Err(e) = refresh_lock.confirm().await {
            return serve_old_or(&account, rejected, e);
        }
        // The lock may yet be lost while the token is out (the fleet store's session ended): the
        // claim, committed first, keeps the next holder from presenting the same token.
        // While its holder lives (its claim beats), this waits for what it gets, up to
        // `patience`; a holder gone (its claim no longer beating) leaves the token to us.
        let claim_tag = journal::tag(&presented);
        let mut told = false;
        loop {
            match self.store.claim_refresh(&claim_tag, &refresh_lock).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return serve_old_or(&account, rejected, e),
            }
            if !told {
                tracing::info!(account = %email, "another process has this refresh token out; waiting for its tokens instead of presenting it too");
                told = true;
            }
            if started.elapsed() + CLAIM_POLL >= patience {
                return self.adopt_or_wait(email, None, &account, rejected);
            }
            tokio::time::sleep(CLAIM_POLL).await;
            let now = self.store.load().await?;
            match holder_of(&now, email, &presented) {
                Some(a) if a.refresh.as_ref() != Some(&presented) => {
                    return self.adopt_or_wait(email, usable_now(a), &account, rejected);
                }
                Some(_) => {}
                None => return Err(now.not_found(email)),
            }
        }
        // The fleet store's claim ended the lock's transaction: the lock is taken again, to the
        // write, and the pool read again under it. The token may have been rotated meanwhile
        // (read before the claim was granted, as when another host's claim ran out while this one
        // waited): it is presented only if still stored.
        let left = patience.saturating_sub(started.elapsed());
        let relocked = match self.store.relock(&refresh_lock, left).await {
            Ok(again) => again,
            Err(e) => {
                self.store.release_refresh(&claim_tag).await;
                let e = match e {
                    Error::PoolBusy { .. } => Error::RefreshBusy {
                        email: email.to_string(),
                        seconds: patience.as_secs(),
                    },
                    other => other,
                };
                return serve_old_or(&account, rejected, e);
            }
        };
        // A file's token lock taken after a wait: its holder may have rotated the token meanwhile.
        if relocked || (told && !refresh_lock.is_fleet()) {
            let now = match self.store.load_under(&refresh_lock).await {
                Ok(pool) => pool,
                Err(e) => {
                    self.store.release_refresh(&claim_tag).await;
                    return serve_old_or(&account, rejected, e);
                }
            };
            match holder_of(&now, email, &presented) {
                Some(a) if a.refresh.as_ref() == Some(&presented) => {}
                Some(a) => {
                    self.store.release_refresh(&claim_tag).await;
                    return self.adopt_or_wait(email, usable_now(a), &account, rejected);
                }
                None => {
                    self.store.release_refresh(&claim_tag).await;
                    return Err(now.not_found(email));
                }
            }
        } else if told {
            if let Err(e) = refresh_lock.confirm().await {
                self.store.release_refresh(&claim_tag).await;
                return serve_old_or(&account, rejected, e);
            }
        }
        // Room for the new tokens' write, held through the token call. A disk with none (full,
        // over quota, read-only) could not save them: the successor of the spent token would live
        // only in this process, and go with it (OpenCode quitting before the disk is freed).
        // Nothing is spent then, as `refresh_now` refuses: the old access token serves while it
        // lasts, else the request moves on as after a failed refresh.
        let room = match self.store.hold_write_room().await {
            Ok(room) => room,
            Err(e) => {
                tracing::warn!(account = %email, error = %e, "no room on disk for new tokens; not refreshing");
                self.store.release_refresh(&claim_tag).await;
                return serve_old_or(&account, rejected, e);
            }
        };
        // The same login in another store on this machine, or this store put back in time:
        // the journal knows the token spent, and presenting it would cost the live login too.
        let journal = Journal::for_user();
        let (here, tag) = (self.store.clone(), journal::tag(&presented));
        let claim = match journal.clone() {
            Some(j) => {
                let (who, tag) = (email.to_string(), tag.clone());
                let asking = crate::store::blocking(move || {
                    let here = here.journal_id();
                    let claim = j.claim(&tag, &here, &who, now_ms());
                    Ok((here, claim))
                });
                // A home on a file system that hangs (NFS gone) must not hold the refresh, and
                // the requests waiting on it: past this the refresh goes on without the journal.
                match tokio::time::timeout(JOURNAL_PATIENCE, asking).await {
                    Ok(answer) => answer.ok(),
                    Err(_) => {
                        tracing::warn!(account = %email, "the refresh journal did not answer in time; refreshing without it");
                        None
                    }
                }
            }
            None => None,
        };
        let here = claim.as_ref().map(|(h, _)| h.clone());
        match claim.map(|(_, c)| c) {
            Some(Claim::Spent(spent)) => {
                let why = spent.explain(email, here.as_deref().unwrap_or_default());
                tracing::warn!(account = %email, token = %presented.fingerprint(), "{why}");
                lock(&self.credentials.refused).insert(email.to_string(), presented.clone());
                self.refuse(email, account.credential_tag(), &why);
                events.push(Event::new(
                    "auth-error",
                    Some(email),
                    format!("{email} needs the live login: {why}"),
                ));
                self.store.release_refresh(&claim_tag).await;
                return Err(Error::LoginElsewhere(format!("{email}: {why}")));
            }
            Some(Claim::InFlight { store }) if Some(&store) == here.as_ref() => {
                tracing::info!(account = %email, "another process of this pool has this refresh token out (its refresh lock file was removed meanwhile); not presenting it here");
                let busy = Error::RefreshClaimed {
                    email: email.to_string(),
                    store,
                };
                self.store.release_refresh(&claim_tag).await;
                return serve_old_or(&account, rejected, busy);
            }
            Some(Claim::InFlight { store }) => {
                tracing::info!(account = %email, other = %store, "another pool on this machine is refreshing this login right now; not presenting it here");
                let busy = Error::RefreshElsewhere {
                    email: email.to_string(),
                    store,
                };
                self.store.release_refresh(&claim_tag).await;
                return serve_old_or(&account, rejected, busy);
            }
            Some(Claim::Go) | None => {}
        }
        let not_presented = NotPresented {
            entry: journal
                .clone()
                .zip(here.clone())
                .map(|(j, h)| (j, tag.clone(), h, email.to_string())),
        };
        // On a connection of its own, and checked to still stand: a claim taken over meanwhile
        // (its answer late past `CLAIM_MS`) is another host's token out.
        let claim_beat = match self
            .store
            .keep_claim(email, &claim_tag, &refresh_lock)
            .await
        {
            Ok(beat) => beat,
            Err(e) => {
                if !matches!(e, Error::RefreshClaimed { .. }) {
                    self.store.release_refresh(&claim_tag).await;
                }
                return serve_old_or(&account, rejected, e);
            }
        };
        not_presented.presented();
        tracing::debug!(account = %email, token = %presented.fingerprint(), "refreshing access token");
        let _unwritten = Unwritten::begin();
        // Its first answer lost, the token goes out again only while the claim still stands.
        let (answer, asked_twice) = oauth::refresh_once_more_if_lost_and(&presented, || {
            self.store.claim_stands(email, claim_beat.as_ref())
        })
        .await;
        // The claim was lost while the first answer was out: the token may be spent, and
        // another host has it out. Nothing is released or rested; that host's tokens come.
        if let Err(e @ (Error::RefreshClaimed { .. } | Error::StoreUnavailable(_))) = answer {
            return serve_old_or(&account, rejected, e);
        }
        // A new refresh token with nothing else usable is saved like any rotation (the presented
        // token is spent), beside the access token the account had; the request is then served
        // as after a failed refresh, and the endpoint rests as after one.
        let answer = match answer {
            Err(Error::OAuthRotatedUnusable { refresh, detail }) => {
                let tokens = oauth::Tokens {
                    access: account.access.clone().unwrap_or_default(),
                    refresh,
                    expires: account.expires.unwrap_or(0),
                    email: None,
                };
                let failed = Error::OAuthHttp {
                    what: "token endpoint",
                    status: 200,
                    detail,
                    retry_after: None,
                };
                Ok((tokens, Some(failed)))
            }
            other => other.map(|tokens| (tokens, None)),
        };
        match answer {
            Ok((tokens, unusable)) => {
                let (access, refresh, expires) = (
                    tokens.access.clone(),
                    tokens.refresh.clone(),
                    tokens.expires,
                );
                let backoff = unusable
                    .as_ref()
                    .map(|e| now_ms().saturating_add(backoff_ms(e)));
                if unusable.is_none() {
                    *lock(&self.credentials.last_issued) = Some(access.clone());
                }
                self.credentials
                    .refreshes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let who = email.to_string();
                let (a2, r2, spent) = (access.clone(), refresh.clone(), presented.clone());
                let store_path = self.store.path().map(Path::to_path_buf).unwrap_or_default();
                // The entry as read under the lock ends at `read_expires`: one that holds another
                // token said to end before it is an older state of the pool put back meanwhile (a
                // sync tool, a snapshot restored, an editor's undo), whose token was spent before
                // ours; these tokens continue its login. Dropping them lost the login with them.
                let read_expires = account.expires;
                let put_back = move |a: &Account| matches!((a.expires, read_expires), (Some(then), Some(read)) if then < read);
                let change = move |pool: &mut Pool| {
                    // An account removed meanwhile stays removed. One logged in again meanwhile
                    // (the CLI does not wait for a refresh under way) keeps its new login: these
                    // tokens continue the family it replaced. A file gone for a moment removed
                    // nothing: they are kept unsaved until it is back (the spent token in it).
                    if pool.file_missing {
                        return Err(Error::io(
                            store_path,
                            "save the new tokens",
                            std::io::Error::new(
                                std::io::ErrorKind::NotFound,
                                "the pool file is not there (deleted, or being replaced)",
                            ),
                        ));
                    }
                    // Renamed meanwhile, the entry still holding the spent token is this login,
                    // and dropping the tokens lost it.
                    // An entry holding these tokens already took them from beside the pool,
                    // where they were kept while this write waited (this write's own reading).
                    let holder = match holder_mut(pool, &who, &spent) {
                        Some(a) => Some(a),
                        // Renamed meanwhile, and its entry took these tokens from beside the pool.
                        None => holder_mut(pool, &who, &r2),
                    };
                    Ok(match holder {
                        Some(a)
                            if a.refresh.as_ref() == Some(&spent)
                                || a.refresh.as_ref() == Some(&r2)
                                || put_back(a) =>
                        {
                            let kept = (a.access.clone(), a.expires);
                            a.set_tokens(&a2, &r2, expires);
                            if let Some(until) = backoff {
                                // Only the refresh token is new: the access token stays as it was.
                                (a.access, a.expires) = kept;
                                a.set_refresh_backoff(until, now_ms());
                            }
                            None
                        }
                        Some(a) => fresh_access(a, now_ms()),
                        None => None,
                    })
                };
                // On disk before the write waits for the pool's lock (see `writing`); a write
                // of any process takes them from there, this one's too.
                let kept_while_writing = refresh != presented && self.store.path().is_some();
                if kept_while_writing {
                    lock(&self.credentials.writing).insert(
                        email.to_string(),
                        UnsavedTokens {
                            email: email.to_string(),
                            access: access.clone(),
                            refresh: refresh.clone(),
                            expires,
                            presented: presented.clone(),
                        },
                    );
                    self.keep_unsaved_on_disk().await;
                }
                // A write given up on may still land: the tokens are the same, and the retry
                // of unsaved tokens takes them as already written (`apply_unsaved`).
                let mut write = tokio::time::timeout(
                    REFRESH_WRITE_PATIENCE,
                    self.write_under(Some(&refresh_lock), change.clone()),
                )
                .await
                .unwrap_or_else(|_| Err(self.write_too_slow()));
                // The fleet store's lock lost with its connection (a DBA, a restart) while the
                // token was out: the claim still stands, and the write is made on another.
                if write.is_err() && refresh_lock.is_fleet() {
                    write =
                        tokio::time::timeout(REFRESH_WRITE_PATIENCE, self.write(change.clone()))
                            .await
                            .unwrap_or_else(|_| Err(self.write_too_slow()));
                }
                // The disk filled during the call: the room held for this write is let go and
                // the write tried once more in it, before the tokens are left to this process.
                // Only then: another failure (a lock held, a broken file) would wait twice.
                let no_room = |e: &Error| {
                    matches!(e, Error::PoolIo { source, .. } if matches!(
                        source.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    ))
                };
                if let (Err(e), Some(room)) = (&write, room) {
                    if no_room(e) {
                        let _ = crate::store::blocking(move || {
                            drop(room);
                            Ok(())
                        })
                        .await;
                        write = tokio::time::timeout(REFRESH_WRITE_PATIENCE, self.write(change))
                            .await
                            .unwrap_or_else(|_| Err(self.write_too_slow()));
                    }
                }
                self.overlay.clear_refused(email);
                if kept_while_writing {
                    lock(&self.credentials.writing).remove(email);
                    // Written: the file goes (or keeps only what is still unsaved). Not written:
                    // the tokens are unsaved now, and kept so below.
                    if write.is_ok() {
                        self.keep_unsaved_on_disk().await;
                    }
                }
                if write.is_ok() && refresh == presented {
                    self.store.release_refresh(&claim_tag).await;
                }
                if let (Ok(_), Some(j), Some(here)) = (&write, journal, here) {
                    let who = email.to_string();
                    // A token endpoint that hands the same refresh token back (or none, which
                    // keeps it) did not spend it: it is no more spent than before.
                    let rotated = refresh != presented;
                    let noting = crate::store::blocking(move || {
                        if rotated {
                            j.saved(&tag, &here, &who, now_ms());
                        } else {
                            j.released(&tag, &here, &who);
                        }
                        Ok(())
                    });
                    let _ = tokio::time::timeout(JOURNAL_PATIENCE, noting).await;
                }
                if matches!(write, Ok(None)) && unusable.is_none() && refresh != presented {
                    self.credentials.saved_successor(UnsavedTokens {
                        email: email.to_string(),
                        access: access.clone(),
                        refresh: refresh.clone(),
                        expires,
                        presented: presented.clone(),
                    });
                }
                if let Ok(Some(login)) = write {
                    tracing::debug!(account = %email, "logged in again during the refresh; the new login is used");
                    self.invalidate();
                    return Ok(login);
                }
                if let Err(e) = write {
                    let (why, code) = (e.to_string(), e.code());
                    tracing::warn!(account = %email, error = %why, "refreshed, but could not save the new tokens; keeping them (and the refresh lock) until they can be written");
                    events.push(Event::new(
                        "tokens-unsaved",
                        Some(email),
                        format!(
                            "{email}: new tokens could not be saved ({why}); they are kept in memory and other processes wait for them. Fix the pool file or free disk space; the save is retried"
                        ),
                    ));
                    lock(&self.credentials.unsaved).insert(
                        email.to_string(),
                        Unsaved {
                            access: access.clone(),
                            refresh,
                            expires,
                            presented,
                            error: why,
                            code,
                            since: now_ms(),
                            _lock: refresh_lock,
                            _claim: claim_beat,
                        },
                    );
                    self.keep_unsaved_on_disk().await;
                    // Kept on disk (where a process after the same token reads them) before the
                    // token's lock goes; the account's stays held with them.
                    let token_lock = lock(&self.credentials.unsaved)
                        .get(email)
                        .and_then(|u| u._lock.take_token_lock());
                    if let Some(token_lock) = token_lock {
                        let _ = crate::store::blocking(move || {
                            drop(token_lock);
                            Ok(())
                        })
                        .await;
                    }
                    self.retry_later(UNSAVED_RETRY);
                }
                match unusable {
                    Some(e) => serve_old_or(&account, rejected, e),
                    None => Ok(access),
                }
            }
            Err(Error::OAuthInvalidGrant(reason)) => {
                if !asked_twice {
                    self.store.release_refresh(&claim_tag).await;
                }
                // Someone outside our lock may have rotated it: adopt a newer token if the store
                // has one, otherwise the account needs a new login. Tokens are never deleted.
                let reread = match self.store.load_under(&refresh_lock).await {
                    Ok(pool) => pool,
                    Err(_) => self.store.load().await?,
                };
                let newer = reread
                    .find(email)
                    .filter(|a| a.refresh.as_ref() != Some(&presented));
                if let Some(access) = newer.and_then(|a| fresh_access(a, now_ms())) {
                    self.invalidate();
                    return Ok(access);
                }
                // Refused at the first asking, the token was not spent by it: the journal lets it
                // go, so that another store holding it (a copy of the pool) is told its own
                // refusal now, instead of "still being refreshed" until the in-flight time
                // passed. Refused at the second, the first's lost answer may have spent it.
                if let (false, Some(j), Some(here)) = (asked_twice, journal, here) {
                    let who = email.to_string();
                    let releasing = crate::store::blocking(move || {
                        j.released(&tag, &here, &who);
                        Ok(())
                    });
                    let _ = tokio::time::timeout(JOURNAL_PATIENCE, releasing).await;
                }
                lock(&self.credentials.refused).insert(email.to_string(), presented.clone());
                let why = format!("refresh token rejected ({reason}): log in again");
                self.refuse(email, account.credential_tag(), &why);
                // Before the lock goes: the processes queued on it read the refusal, instead of
                // each presenting the refused token once more. The fleet store writes it in the
                // lock's own transaction; a failed write leaves it to the pending one.
                let _ = tokio::time::timeout(
                    REFRESH_WRITE_PATIENCE,
                    self.write_refusal_under(&refresh_lock, email, account.credential_tag(), &why),
                )
                .await;
                events.push(Event::new(
                    "auth-error",
                    Some(email),
                    format!("{email} needs a new login: {why}"),
                ));
                Err(Error::OAuthInvalidGrant(reason))
            }
            // Nothing was sent (the endpoint's URL is not one we send to): no rest for the
            // endpoint, so a corrected setting is used at once.
            Err(e @ Error::InsecureEndpoint { .. }) => {
                self.store.release_refresh(&claim_tag).await;
                released_in_journal(journal, here, tag, email).await;
                serve_old_or(&account, rejected, e)
            }
            Err(e) => {
                // Refused by the endpoint, or never sent: not spent, and another host may present
                // it once the rest is over. A lost answer may have spent it: the claim stands.
                let unspent = matches!(
                    &e,
                    Error::OAuthHttp { status, .. } if *status >= 400
                ) || matches!(
                    &e,
                    Error::Network {
                        never_connected: true,
                        ..
                    }
                );
                if unspent {
                    self.store.release_refresh(&claim_tag).await;
                    // Nor does the journal hold it as out: another process of this pool (which
                    // finds it in flight while this one lives) presents it once the rest is over.
                    released_in_journal(journal, here, tag, email).await;
                } else {
                    // Perhaps spent, and no longer in flight: held as this process's, it kept
                    // every other process of the pool from refreshing the login for as long as
                    // this one lived (a day), while this one presented it again after its rest.
                    ended_in_journal(journal, here, tag, email).await;
                }
                let passing = matches!(&e, Error::OAuthHttp { status, .. }
                    if *status >= 500 || matches!(status, 408 | 429));
                if passing {
                    let said: String = e.to_string().chars().take(300).collect();
                    lock(&self.credentials.passing_failures).insert(email.to_string(), said);
                } else {
                    lock(&self.credentials.passing_failures).remove(email);
                }
                // Written before the locks go: the next in line (in this process or another)
                // re-reads and must find it, or it presents the same token again.
                let until = now_ms().saturating_add(backoff_ms(&e));
                let (who, spent) = (email.to_string(), presented.clone());
                let rest = move |pool: &mut Pool| {
                    // A new login since then has its own refresh token, not yet refused.
                    match pool.find_mut(&who) {
                        Some(a) if a.refresh.as_ref() == Some(&spent) => {
                            a.set_refresh_backoff(until, now_ms());
                        }
                        _ => {}
                    }
                    Ok(())
                };
                let mut written = self.write_under(Some(&refresh_lock), rest.clone()).await;
                if written.is_err() && refresh_lock.is_fleet() {
                    written = self.write(rest).await;
                }
                if written.is_err() {
                    let (who, tag) = (email.to_string(), account.credential_tag());
                    self.note(true, move |p| p.refresh_backoff(&who, tag, until));
                }
                serve_old_or(&account, rejected, e)
            }
        }
    }

    /// Tokens of a refresh kept unsaved have landed: the journal learns that the refresh tokens
    /// they replaced are spent, as it does when a refresh's own write lands. Without it, the
    /// journal held those as presented and never saved, which blocks nobody: a copy of the pool
    /// presented one later and got it refused (and the login revoked, at a strict endpoint).
    pub(crate) fn journal_landed(self: &Arc<Self>, spent: Vec<(String, Secret)>) {
        let Some(j) = Journal::for_user() else {
            return;
        };
        let store = self.store.clone();
        self.spawn(async move {
            let _ = crate::store::blocking(move || {
                let here = store.journal_id();
                for (email, presented) in spent {
                    j.saved(&journal::tag(&presented), &here, &email, now_ms());
                }
                Ok(())
            })
            .await;
        });
    }

    /// A refresh's write that did not land within `REFRESH_WRITE_PATIENCE`.
    fn write_too_slow(&self) -> Error {
        let seconds = REFRESH_WRITE_PATIENCE.as_secs();
        match self.store.path() {
            Some(path) => Error::PoolBusy {
                path: path.to_path_buf(),
                seconds,
            },
            None => Error::StoreUnavailable(format!(
                "{} did not take the new tokens within {seconds} s",
                self.store.describe()
            )),
        }
    }

    /// The credential in use for `email` is refused: this process stops using it at once, and
    /// the store learns it in the background (tied to that credential, so a new login clears it).
    pub(crate) fn refuse(self: &Arc<Self>, email: &str, tag: Option<String>, why: &str) {
        self.overlay.refuse(email, tag.clone());
        let (who, why) = (email.to_string(), why.to_string());
        self.note(true, move |p| p.refused(&who, tag, &why));
    }
}

/// How long the token endpoint is left alone after `e`: what it asked for, else a default; at
/// most the 8-day cap on any rest (its `retry-after` is read up to 30 days, and a login was left
/// unrefreshed, and after a 401 out of the pool, for all of them).
pub(crate) fn backoff_ms(e: &Error) -> i64 {
    let ms = match e {
        // Another refresh is under way: its token is adopted once written.
        Error::RefreshBusy { seconds, .. } | Error::RefreshSlow { seconds, .. } => {
            (*seconds as i64).saturating_mul(1000)
        }
        Error::OAuthHttp {
            retry_after: Some(s),
            ..
        }
        | Error::RefreshBackoff { retry_after: s, .. } => (*s as i64).saturating_mul(1000),
        _ => TOKEN_BACKOFF_DEFAULT_MS,
    };
    ms.min(super::limits::MAX_COOLDOWN_MS)
}

/// After a transient refresh failure, an access token that has not expired still works.
fn serve_old_or(account: &Account, rejected: Option<&Secret>, err: Error) -> Result<Secret> {
    match (&account.access, old_serves(account, rejected)) {
        (Some(a), true) => Ok(a.clone()),
        _ => Err(err),
    }
}

/// Whether the account's access token, though due for a refresh, still serves: it expires more
/// than 10 s from now and is not the one a 401 refused.
fn old_serves(account: &Account, rejected: Option<&Secret>) -> bool {
    match (&account.access, account.expires) {
        (Some(a), Some(exp)) => exp > now_ms() + 10_000 && rejected != Some(a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `successors()` (each write's start) and `saved()` (a write that landed unsaved tokens)
    /// each took both of their locks, in opposite orders: two writes of one process at once
    /// waited on each other for ever (found by a review).
    #[test]
    fn the_successors_and_the_unsaved_tokens_are_never_waited_on_together() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let creds = Arc::new(Credentials::default());
        creds.saved_successor(UnsavedTokens {
            email: "b@x".into(),
            access: Secret::new("ab"),
            refresh: Secret::new("rb2"),
            expires: 1,
            presented: Secret::new("rb1"),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (creds, stop) = (creds.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = creds.successors();
                }
            })
        };
        let writer = {
            let (creds, stop) = (creds.clone(), stop.clone());
            let path = dir.path().join("a.lock");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let held =
                        crate::store::FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
                    lock(&creds.unsaved).insert(
                        "a@x".into(),
                        Unsaved {
                            access: Secret::new("aa"),
                            refresh: Secret::new("ra2"),
                            expires: 1,
                            presented: Secret::new("ra1"),
                            error: "x".into(),
                            code: "POOL_IO",
                            since: 0,
                            _lock: RefreshLock::File(held, Default::default()),
                            _claim: None,
                        },
                    );
                    let _ = creds.saved(&[("a@x".to_string(), Secret::new("ra2"))]);
                }
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !(reader.is_finished() && writer.is_finished()) {
            assert!(
                std::time::Instant::now() < deadline,
                "successors() and saved() waited on each other"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            creds.successors().len(),
            2,
            "the landed tokens are remembered too"
        );
    }

    #[test]
    fn saved_tokens_undone_by_a_lock_free_writer_are_put_back() {
        let saved = |presented: &str, refresh: &str, expires: i64| UnsavedTokens {
            email: "a@x".into(),
            access: Secret::new(format!("access-{refresh}")),
            refresh: Secret::new(refresh),
            expires,
            presented: Secret::new(presented),
        };
        let pool = |refresh: &str, expires: i64| {
            Pool::from_value(serde_json::json!({"anthropic": [
                {"email": "a@x", "refresh": refresh, "access": "old", "expires": expires,
                 "status": "auth-error", "authErrorToken": "x", "priority": 3},
            ]}))
            .unwrap()
        };
        let refresh_of = |p: &Pool| p.find("a@x").unwrap().refresh.clone().unwrap();
        let nothing_spent = |_: &Secret| false;
        // The spent token back in the file: ours again, the refusal it drew cleared, the rest of
        // the writer's change (here the priority) kept.
        let mut back = pool("t1", 1_000);
        assert_eq!(
            apply_successors_with(&mut back, &[saved("t1", "t2", 2_000)], &nothing_spent),
            ["a@x"]
        );
        let a = back.find("a@x").unwrap();
        assert_eq!(refresh_of(&back).expose(), "t2");
        assert_eq!(a.access.as_ref().unwrap().expose(), "access-t2");
        assert_eq!(a.status, "idle");
        assert_eq!(a.priority, Some(3));
        // Renamed by the writer: the entry holding the spent token.
        let mut renamed = Pool::from_value(serde_json::json!({"anthropic": [
            {"email": "b@x", "refresh": "t1", "access": "old", "expires": 1_000},
        ]}))
        .unwrap();
        assert_eq!(
            apply_successors_with(&mut renamed, &[saved("t1", "t2", 2_000)], &nothing_spent),
            ["b@x"]
        );
        // Ours in place, a login made since, or a token refreshed again by another process:
        // nothing to put back.
        for (refresh, expires) in [("t2", 2_000), ("login", 500), ("t3", 3_000)] {
            let mut p = pool(refresh, expires);
            assert!(
                apply_successors_with(&mut p, &[saved("t1", "t2", 2_000)], &nothing_spent)
                    .is_empty(),
                "{refresh}"
            );
            assert_eq!(refresh_of(&p).expose(), refresh);
        }
        // An older token the journal knows spent, ending before ours: put back too.
        let spent_t0 = |t: &Secret| t.expose() == "t0";
        let mut older = pool("t0", 500);
        assert_eq!(
            apply_successors_with(&mut older, &[saved("t1", "t2", 2_000)], &spent_t0),
            ["a@x"]
        );
        // Ours spent since by another process (it holds their successor): not put back.
        let spent_t2 = |t: &Secret| t.expose() == "t2";
        let mut spent_since = pool("t1", 1_000);
        assert!(
            apply_successors_with(&mut spent_since, &[saved("t1", "t2", 2_000)], &spent_t2)
                .is_empty()
        );
        assert_eq!(refresh_of(&spent_since).expose(), "t1");
        // A key under the name is not a login.
        let mut key = Pool::from_value(serde_json::json!({"anthropic": [
            {"email": "a@x", "type": "api", "key": "k"},
        ]}))
        .unwrap();
        assert!(
            apply_successors_with(&mut key, &[saved("t1", "t2", 2_000)], &nothing_spent).is_empty()
        );
    }

    #[test]
    fn kept_tokens_land_as_a_chain_whatever_order_they_come_in() {
        let kept = |presented: &str, refresh: &str| UnsavedTokens {
            email: "a@x".into(),
            access: Secret::new(format!("access-{refresh}")),
            refresh: Secret::new(refresh),
            expires: 1_900_000_000_000,
            presented: Secret::new(presented),
        };
        let pool = || {
            Pool::from_value(serde_json::json!({"anthropic": [
                {"email": "a@x", "refresh": "t0", "access": "old", "expires": 1,
                 "status": "auth-error", "authErrorToken": "x"},
            ]}))
            .unwrap()
        };
        let file = |name: &str, t: UnsavedTokens| (std::path::PathBuf::from(name), vec![t]);
        let chain = vec![file("f2", kept("t1", "t2")), file("f1", kept("t0", "t1"))];
        let mut p = pool();
        let landed = apply_kept(&mut p, &chain);
        let a = p.find("a@x").unwrap();
        assert_eq!(
            a.refresh.as_ref().unwrap().expose(),
            "t2",
            "the chain's end"
        );
        let spent: Vec<&str> = landed.spent.iter().map(|(_, s)| s.expose()).collect();
        assert_eq!(spent, ["t0", "t1"]);
        assert_eq!(landed.done.len(), 2);
        // Tokens the pool holds already change nothing (a refusal of them stays), and go.
        let mut held = pool();
        held.find_mut("a@x").unwrap().refresh = Some(Secret::new("t1"));
        let landed = apply_kept(&mut held, &[file("f1", kept("t0", "t1"))]);
        assert!(landed.spent.is_empty() && landed.done.len() == 1);
        assert_eq!(held.find("a@x").unwrap().status, "auth-error");
        // An older state of the pool put back (its token known spent, and ending before
        // theirs): they continue its login, and what it held and what they replaced are spent.
        let spent_t0 = |t: &Secret| t.expose() == "t0";
        let mut back = pool();
        let landed = crate::store::rescue::apply_kept_with(
            &mut back,
            &[file("f2", kept("t1", "t2"))],
            &spent_t0,
        );
        assert_eq!(
            back.find("a@x").unwrap().refresh.as_ref().unwrap().expose(),
            "t2"
        );
        let spent: Vec<&str> = landed.spent.iter().map(|(_, s)| s.expose()).collect();
        assert_eq!(spent, ["t1", "t0"]);
        assert_eq!(landed.done.len(), 1);
        // A chain over a put-back pool lands its end; the link it continues goes too.
        let mut back = pool();
        let landed = crate::store::rescue::apply_kept_with(
            &mut back,
            &[file("f1", kept("t5", "t6")), file("f2", kept("t6", "t7"))],
            &spent_t0,
        );
        assert_eq!(
            back.find("a@x").unwrap().refresh.as_ref().unwrap().expose(),
            "t7"
        );
        assert_eq!(landed.done.len(), 2);
        // A login made since that ends sooner (Claude Code's imported, one stored with
        // `expires: 0`) but was never spent keeps its place, and is not noted spent.
        let mut imported = pool();
        imported.find_mut("a@x").unwrap().refresh = Some(Secret::new("imported"));
        let landed = crate::store::rescue::apply_kept_with(
            &mut imported,
            &[file("f2", kept("t1", "t2"))],
            &spent_t0,
        );
        assert_eq!(
            imported
                .find("a@x")
                .unwrap()
                .refresh
                .as_ref()
                .unwrap()
                .expose(),
            "imported"
        );
        assert!(landed.spent.is_empty() && landed.done.is_empty());
        let mut imported = pool();
        imported.find_mut("a@x").unwrap().refresh = Some(Secret::new("imported"));
        assert_eq!(
            apply_unsaved_with(&mut imported, &[kept("t1", "t2")], &spent_t0),
            ["a@x"],
            "taken as logged in again"
        );
        assert_eq!(
            imported
                .find("a@x")
                .unwrap()
                .refresh
                .as_ref()
                .unwrap()
                .expose(),
            "imported"
        );
        // A login made again since (a token that ends later) keeps it; theirs fit nowhere and
        // stay kept.
        let mut again = pool();
        let a = again.find_mut("a@x").unwrap();
        (a.refresh, a.expires) = (Some(Secret::new("login")), Some(2_000_000_000_000));
        let landed = apply_kept(&mut again, &[file("f2", kept("t1", "t2"))]);
        assert_eq!(
            again
                .find("a@x")
                .unwrap()
                .refresh
                .as_ref()
                .unwrap()
                .expose(),
            "login"
        );
        assert!(landed.spent.is_empty() && landed.done.is_empty());
        // A token endpoint that handed the same refresh token back did not spend it.
        let mut same = pool();
        let landed = apply_kept(&mut same, &[file("f0", kept("t0", "t0"))]);
        assert_eq!(
            same.find("a@x").unwrap().access.as_ref().unwrap().expose(),
            "access-t0"
        );
        assert!(landed.spent.is_empty(), "the live token is not noted spent");
        assert_eq!(landed.done.len(), 1);
        // An entry kept unread under its name (a hand edit broke a field) is not gone: the file
        // stays for it to be mended.
        let mut unread = Pool::from_value(serde_json::json!({"anthropic": [
            {"email": "a@x", "refresh": "t1", "priority": "high"},
        ]}))
        .unwrap();
        assert!(unread.find("a@x").is_none());
        let landed = apply_kept(&mut unread, &[file("f2", kept("t1", "t2"))]);
        assert!(landed.done.is_empty());
        let mut renamed_unread = Pool::from_value(serde_json::json!({"anthropic": [
            {"email": "b@x", "refresh": "t1", "priority": "high"},
        ]}))
        .unwrap();
        assert!(
            apply_kept(&mut renamed_unread, &[file("f2", kept("t1", "t2"))])
                .done
                .is_empty()
        );
        assert_eq!(
            apply_unsaved(&mut renamed_unread, &[kept("t1", "t2")]),
            Vec::<String>::new(),
            "the owning process keeps them too"
        );
        let mut older = pool();
        assert_eq!(
            apply_unsaved_with(&mut older, &[kept("t1", "t2")], &spent_t0),
            ["a@x"]
        );
        assert_eq!(
            older
                .find("a@x")
                .unwrap()
                .refresh
                .as_ref()
                .unwrap()
                .expose(),
            "t2",
            "landed on the pool put back"
        );
        // Of an account no longer in the pool: they go.
        let mut gone = pool();
        gone.find_mut("a@x").unwrap().email = "b@x".into();
        gone.find_mut("b@x").unwrap().refresh = Some(Secret::new("other"));
        assert_eq!(
            apply_kept(&mut gone, &[file("f2", kept("t1", "t2"))])
                .done
                .len(),
            1
        );
        // A pool file that is not there takes nothing.
        let mut missing = pool();
        missing.file_missing = true;
        let landed = apply_kept(&mut missing, &chain);
        assert!(landed.spent.is_empty() && landed.done.is_empty());
    }

    /// Claims `t1` for store /b until the journal answers `want` (the release runs on a
    /// blocking thread), for at most five seconds.
    fn claim_from_b_becomes(journal: &Journal, want: &Claim) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if &journal.claim("t1", "/b/pool.json", "x@y", now_ms()) == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_journal_entry_for_a_token_never_presented_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::at(dir.path().join("home").join("refreshes.json"));
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let in_flight = Claim::InFlight {
            store: "/a/pool.json".into(),
        };
        // A runtime of the test's own: the addon's is process-wide, and another test checks
        // that nothing built it before its first task.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();

        // Presented: the entry stands for whoever asks next.
        assert_eq!(
            journal.claim("t1", "/a/pool.json", "x@y", now_ms()),
            Claim::Go
        );
        let entry = || {
            Some((
                journal.clone(),
                "t1".into(),
                "/a/pool.json".into(),
                "x@y".into(),
            ))
        };
        let going = NotPresented { entry: entry() };
        runtime.block_on(async move { going.presented() });
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            journal.claim("t1", "/b/pool.json", "x@y", now_ms()),
            in_flight
        );

        // Ended before the token call (a lock lost, a claim not granted, the request dropped):
        // the entry goes, and another store may present the token it never spent.
        let ended = NotPresented { entry: entry() };
        runtime.block_on(async move { drop(ended) });
        assert!(claim_from_b_becomes(&journal, &Claim::Go));
    }
}
