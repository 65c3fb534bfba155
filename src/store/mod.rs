//! Where the pool lives. The engine sees one interface, `Store`, whatever the backend: the pool
//! file on this machine (`file`), or a database shared by a fleet. Every method is async and
//! never blocks a tokio worker (file I/O runs on the blocking pool).
//!
//! The protocol every backend keeps: reads see one whole generation; `update` is a locked
//! read-modify-write that never loses another writer's change; `refresh_lock` serializes the
//! spending of one account's refresh token from the re-read to the durable write, across every
//! process that shares the store.

pub mod crypto;
pub mod elsewhere;
pub mod file;
pub mod journal;
mod legacy_lock;
pub mod netfs;
mod pg_url;
pub mod postgres;
#[cfg(test)]
mod processes;
pub mod rescue;
#[cfg(target_os = "linux")]
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::{FileLock, FileStamp, FileStore, Room, Trial};
pub use postgres::PgStore;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::pool::{Pool, ReadCopy};

/// A change to the pool, made under the store's write lock.
type Change<T> = Box<dyn FnOnce(&mut Pool) -> Result<T> + Send>;
/// What a change took of the tokens kept for the fleet store (`Store::landing_kept`).
type KeptSlot = Arc<std::sync::Mutex<Option<rescue::KeptLanded>>>;

/// How long a process waits for another to finish refreshing the same account.
pub const REFRESH_LOCK_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a request waits for that when another account could serve it instead: a refresh
/// takes well under a second, but one stuck on a silent token endpoint holds the lock for up to
/// a minute, and the request should move on rather than wait it out.
pub const REFRESH_LOCK_BRIEF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub enum Store {
    File(FileStore),
    Postgres(Arc<PgStore>),
}

/// What an update left in the store.
#[derive(Debug)]
pub enum Written<S> {
    /// Nothing needed writing: the stored generation is the one read.
    Unchanged,
    /// The generation written, as a read of it would give it, and its stamp.
    Generation(Pool, S),
    /// Written, but what is stored now is not known without reading it.
    Unknown,
}

/// A cheap identity of one generation of the stored pool, to skip re-reading it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    File(FileStamp),
    Generation(i64),
}

/// Held while one account's refresh token is being spent; dropping it lets the next process in
/// (and a process that dies lets go of it: the kernel closes its file, the database its
/// connection).
#[derive(Debug)]
pub enum RefreshLock {
    /// The account's lock, and its refresh token's once claimed (`Store::claim_refresh`).
    File(FileLock, std::sync::Mutex<Option<file::TokenLock>>),
    Postgres(postgres::PgRefreshLock),
}

impl RefreshLock {
    /// Ok while the lock is still held (see `PgRefreshLock::confirm`); a file lock is held until
    /// it is dropped.
    pub async fn confirm(&self) -> Result<()> {
        match self {
            RefreshLock::File(..) => Ok(()),
            RefreshLock::Postgres(p) => p.confirm().await,
        }
    }

    fn fleet(&self) -> Option<&postgres::PgRefreshLock> {
        match self {
            RefreshLock::File(..) => None,
            RefreshLock::Postgres(p) => Some(p),
        }
    }

    /// Hands over the refresh token's own lock (`Store::claim_refresh`), the account's kept: held
    /// by tokens kept unsaved, it was one more descriptor for as long as they wait, and under a
    /// descriptor shortage the runtime's next socket (Bun's fetch) found none and ended the
    /// process. The kept tokens' file (`rescue`) tells another process of them meanwhile. Its
    /// file is removed when the lock returned is dropped: by the caller, outside its own locks.
    pub fn take_token_lock(&self) -> Option<file::TokenLock> {
        match self {
            RefreshLock::File(_, token) => token.lock().ok().and_then(|mut held| held.take()),
            RefreshLock::Postgres(_) => None,
        }
    }

    /// Whether this is the fleet store's lock, whose write may fail on its own connection and
    /// then be made on the store's (`Store::update_under`).
    pub fn is_fleet(&self) -> bool {
        self.fleet().is_some()
    }
}

/// Whether `location` names a PostgreSQL database rather than a file.
/// `Store::spent_tokens`, on this thread: for a check made under the pool's lock, where a
/// refresh that wrote its tokens before the lock was taken has its presentation in the journal.
pub fn spent_now(tokens: &[(String, String)]) -> Vec<(String, journal::Spent)> {
    let Some(j) = journal::Journal::for_user().filter(|_| !tokens.is_empty()) else {
        return Vec::new();
    };
    let tags: Vec<String> = tokens.iter().map(|(_, t)| t.clone()).collect();
    let spent = j.spent_among(&tags, crate::account::now_ms());
    tokens
        .iter()
        .filter_map(|(email, tag)| {
            let (_, s) = spent.iter().find(|(t, _)| t == tag)?;
            Some((email.clone(), s.clone()))
        })
        .collect()
}

/// The copy's accounts and the tags of their refresh tokens, for `spent_now`.
pub fn refresh_tags(pool: &Pool) -> Vec<(String, String)> {
    pool.accounts()
        .filter_map(|a| Some((a.email.clone(), journal::tag(a.refresh.as_ref()?))))
        .collect()
}

pub fn is_database(location: &str) -> bool {
    let l = location.trim().to_ascii_lowercase();
    l.starts_with("postgres://") || l.starts_with("postgresql://")
}

/// A std mutex's guard, poisoned or not: a panic while one was held leaves plain data behind
/// (maps, a cached value), and the process keeps going with it.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking file work on tokio's blocking pool, never on a worker or the JS thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    // A test's clock goes with the work (`account::test_clock`).
    #[cfg(test)]
    let f = {
        let offset = crate::account::test_clock::offset();
        move || {
            crate::account::test_clock::set(offset);
            f()
        }
    };
    // Boxed: tokio's task code is compiled once per result type, not once per caller.
    let f: Box<dyn FnOnce() -> Result<T> + Send> = Box::new(crate::config::in_caller_env(f));
    match crate::runtime::blocking(f).await {
        Ok(result) => result,
        Err(crate::runtime::NotRun::NoThread(why)) => Err(Error::NoThread(why)),
        Err(crate::runtime::NotRun::Lost) => Err(Error::InvalidArgument(
            "background task failed (it panicked, or the runtime stopped)".into(),
        )),
    }
}

impl Store {
    /// The store named by `explicit` (a path, or a postgres:// URL), else `OAUTH_POOL_STORE`,
    /// else the pool file (`OAUTH_POOL_PATH`, `~/.aidevops/oauth-pool.json`).
    pub fn from_config(explicit: Option<&str>) -> Result<Store> {
        // Given but blank is a mistake, never "the default pool" (`savePool(pool, "")` wrote
        // over the user's own pool file).
        if let Some(e) = explicit {
            return Store::open(e);
        }
        if let Some(url) =
            crate::config::env(crate::config::var::STORE).filter(|u| !u.trim().is_empty())
        {
            if !is_database(&url) {
                return Err(Error::InvalidArgument(
                    "OAUTH_POOL_STORE takes a postgres:// URL (unset it to use the pool file)"
                        .into(),
                ));
            }
            return Store::open(&url);
        }
        Ok(Store::File(FileStore::new(crate::config::pool_path(None)?)))
    }

    /// A file path or a postgres:// URL.
    pub fn open(location: &str) -> Result<Store> {
        if is_database(location) {
            return Ok(Store::Postgres(Arc::new(PgStore::open(location)?)));
        }
        Ok(Store::File(FileStore::new(crate::config::pool_path(
            Some(location),
        )?)))
    }

    pub fn file(path: impl Into<PathBuf>) -> Store {
        Store::File(FileStore::new(path))
    }

    /// What a person reads to know which pool this is (a path; never a password).
    pub fn describe(&self) -> String {
        match self {
            Store::File(f) => f.path().display().to_string(),
            Store::Postgres(p) => p.shown().to_string(),
        }
    }

    /// The key under which one process keeps one engine per store.
    pub fn key(&self) -> String {
        match self {
            Store::File(f) => format!("file:{}", f.path().display()),
            Store::Postgres(p) => format!("pg:{}#{}", p.shown(), p.identity()),
        }
    }

    /// The name this store goes by in the refresh journal (`journal.rs`): the pool file's real
    /// path, or the database as shown (no password). Blocking for a file (it resolves links).
    pub fn journal_id(&self) -> String {
        match self {
            Store::File(f) => journal::file_identity(f.path()),
            Store::Postgres(p) => p.shown().to_string(),
        }
    }

    /// The refresh tokens among `tokens` (by account) that this machine's refresh journal
    /// records as spent, their successors saved: `(account, where it was spent)`. Never one to
    /// write back over the live login. Nothing without a journal, or when it does not answer
    /// within a few seconds (a home on a file system that hangs).
    pub async fn spent_tokens(tokens: Vec<(String, String)>) -> Vec<(String, journal::Spent)> {
        if tokens.is_empty() {
            return Vec::new();
        }
        let asking = blocking(move || Ok(spent_now(&tokens)));
        match tokio::time::timeout(Duration::from_secs(5), asking).await {
            Ok(Ok(spent)) => spent,
            _ => Vec::new(),
        }
    }

    /// Which pool this is, however its path was spelt (links and `..` resolved): a copy `loadPool`
    /// read is saved back to the same pool when this is the same.
    pub async fn identity(&self) -> String {
        match self {
            Store::File(f) => {
                let path = f.path().to_path_buf();
                let shown = path.display().to_string();
                blocking(move || Ok(journal::file_identity(&path)))
                    .await
                    .unwrap_or(shown)
            }
            Store::Postgres(_) => self.key(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::File(f) => Some(f.path()),
            Store::Postgres(_) => None,
        }
    }

    /// Where tokens a refresh could not write are kept on this host (`rescue`): beside the pool
    /// file; for the fleet store, under a name of its own in `~/.aidevops` (no file of that name
    /// is made, only the kept ones beside it). A database lost while a token was out left the new
    /// tokens in memory only, and they went with the process: the login with them.
    pub fn rescue_path(&self) -> Option<PathBuf> {
        match self {
            Store::File(f) => Some(f.path().to_path_buf()),
            Store::Postgres(p) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(p.shown().as_bytes());
                let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                crate::config::home_dir().map(|h| {
                    h.join(".aidevops")
                        .join(format!("oauth-pool-store-{id}.json"))
                })
            }
        }
    }

    /// The stamp of the stored generation now: a `stat` for the file; the database's generation,
    /// asked at most every 250 ms, so another host's write is seen within a second.
    pub async fn stamp(&self) -> Result<Option<Stamp>> {
        match self {
            Store::File(f) => Ok(f.stamp().map(Stamp::File)),
            Store::Postgres(p) => p.generation().await.map(|g| Some(Stamp::Generation(g))),
        }
    }

    /// The stamp when it can be had without waiting: the file's `stat` (a syscall); the fleet
    /// store's generation only while the last one asked is fresh. `None`: ask `stamp()`.
    pub fn stamp_now(&self) -> Option<Stamp> {
        match self {
            Store::File(f) => f.stamp().map(Stamp::File),
            Store::Postgres(p) => p.generation_cached().map(Stamp::Generation),
        }
    }

    /// How long ago the store was last written, when a look costs no more than a `stat` (the
    /// file's modification time; a time ahead of the clock reads as now). `None` for the fleet
    /// store, and when the file is missing.
    pub fn written_ago(&self) -> Option<Duration> {
        match self {
            Store::File(f) => f.written_ago(),
            Store::Postgres(_) => None,
        }
    }

    pub async fn load(&self) -> Result<Pool> {
        self.load_stamped().await.map(|(p, _)| p)
    }

    pub async fn load_stamped(&self) -> Result<(Pool, Option<Stamp>)> {
        match self {
            Store::File(f) => {
                let f = f.clone();
                let (pool, stamp) = blocking(move || f.load_stamped()).await?;
                Ok((pool, stamp.map(Stamp::File)))
            }
            Store::Postgres(p) => {
                let (pool, g) = p.load_generation().await?;
                Ok((pool, Some(Stamp::Generation(g))))
            }
        }
    }

    /// Locked read-modify-write; `change` sees the pool as stored now.
    pub fn update<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send + '_ {
        // Boxed: the read-modify-write (both stores', blocking and async) is compiled once per
        // result type instead of once per caller's closure.
        self.update_boxed(Box::new(change))
    }

    async fn update_boxed<T: Send + 'static>(&self, change: Change<T>) -> Result<T> {
        match self {
            Store::File(f) => {
                let f = f.clone();
                blocking(move || f.update(change)).await
            }
            Store::Postgres(p) => p.update(change).await,
        }
    }

    /// `update` for a change that only updates what the store holds: a pool file that is not
    /// there is not made, nor its directory or lock file (`FileStore::update_existing`).
    pub fn update_existing<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T>> + Send + '_ {
        let written = self.update_written_boxed(Box::new(change), true);
        async move { written.await.map(|(out, _)| out) }
    }

    /// `update`, also saying what it left in the store (see `Written`): the file store knows
    /// the generation it wrote; the fleet store's is read again when needed.
    pub fn update_written<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(T, Written<Stamp>)>> + Send + '_ {
        self.update_written_boxed(Box::new(change), false)
    }

    /// `update_written` for a change that only updates what the store holds (`update_existing`).
    pub fn update_existing_written<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(T, Written<Stamp>)>> + Send + '_ {
        self.update_written_boxed(Box::new(change), true)
    }

    async fn update_written_boxed<T: Send + 'static>(
        &self,
        change: Change<T>,
        existing_only: bool,
    ) -> Result<(T, Written<Stamp>)> {
        match self {
            Store::File(f) => {
                let f = f.clone();
                let (out, written) = blocking(move || {
                    if existing_only {
                        f.update_existing(change)
                    } else {
                        f.update_written(change)
                    }
                })
                .await?;
                let written = match written {
                    Written::Generation(pool, stamp) => {
                        Written::Generation(pool, Stamp::File(stamp))
                    }
                    Written::Unchanged => Written::Unchanged,
                    Written::Unknown => Written::Unknown,
                };
                Ok((out, written))
            }
            Store::Postgres(p) => {
                let (change, landed) = self.landing_kept(change).await;
                let out = p.update(change).await?;
                self.kept_landed(landed).await;
                Ok((out, Written::Unknown))
            }
        }
    }

    /// `change`, taking first the tokens this host's processes kept on disk for the fleet store
    /// (`rescue_path`), as every write of the file store takes those beside it: only the engine's
    /// writes did, and `priority`, `reset-cooldowns` or `store copy` left the spent token in the
    /// store (and another host presented it). What landed is in the slot once the change ran.
    async fn landing_kept<T: Send + 'static>(&self, change: Change<T>) -> (Change<T>, KeptSlot) {
        let slot: KeptSlot = Arc::new(std::sync::Mutex::new(None));
        let Some(path) = self.rescue_path().filter(|_| self.path().is_none()) else {
            return (change, slot);
        };
        let files = blocking(move || Ok(rescue::found(&path)))
            .await
            .unwrap_or_default();
        if files.is_empty() {
            return (change, slot);
        }
        let landed = slot.clone();
        let change: Change<T> = Box::new(move |pool: &mut Pool| {
            let took = rescue::apply_kept(pool, &files);
            if let Ok(mut held) = landed.lock() {
                *held = Some(took);
            }
            change(pool)
        });
        (change, slot)
    }

    /// Once a write that took kept tokens is in: their files go, and the journal learns that the
    /// tokens they replaced are spent (as the file store's `kept_landed`).
    async fn kept_landed(&self, slot: KeptSlot) {
        let landed = slot.lock().ok().and_then(|mut held| held.take());
        let Some(landed) = landed else { return };
        let here = self.journal_id();
        let _ = blocking(move || {
            rescue::remove(&landed.done);
            if let Some(j) = journal::Journal::for_user() {
                let now = crate::account::now_ms();
                for (email, presented) in landed.spent {
                    j.saved(&journal::tag(&presented), &here, &email, now);
                }
            }
            Ok(())
        })
        .await;
    }

    /// Replaces the whole pool (`store copy`).
    pub async fn save(&self, pool: Pool) -> Result<()> {
        self.save_read_at(pool, ReadCopy::default()).await
    }

    /// Replaces the whole pool with a copy `loadPool` gave (`savePool`): accounts added since it
    /// was read are kept, those removed since stay out (`ReadCopy::reconcile`).
    pub async fn save_read_at(&self, pool: Pool, mut read: ReadCopy) -> Result<()> {
        match self {
            // The journal is asked under the file's lock (`FileStore::save_read_at`).
            Store::File(f) => {
                let f = f.clone();
                blocking(move || f.save_read_at(&pool, &read)).await
            }
            Store::Postgres(p) => {
                read.spent = Self::spent_tokens(refresh_tags(&pool))
                    .await
                    .into_iter()
                    .map(|(email, spent)| (email, spent.email))
                    .collect();
                p.save(pool, read).await
            }
        }
    }

    /// The account's refresh lock, waiting for another holder up to `patience`
    /// (`POOL_BUSY` past it).
    pub async fn refresh_lock(&self, email: &str, patience: Duration) -> Result<RefreshLock> {
        match self {
            Store::File(f) => {
                let path = f.refresh_lock_path(email);
                let lock = blocking(move || FileLock::acquire(&path, patience)).await?;
                Ok(RefreshLock::File(lock, Default::default()))
            }
            Store::Postgres(p) => p
                .refresh_lock(email, patience)
                .await
                .map(RefreshLock::Postgres),
        }
    }

    /// Whether the store's next write has room (`FileStore::try_write_room`); the fleet store
    /// has no disk of ours to fill.
    pub async fn try_write_room(&self, before: Trial) -> Result<()> {
        match self {
            Store::File(f) => {
                let f = f.clone();
                blocking(move || f.try_write_room(before)).await
            }
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Room held for the next write while a refresh token is spent
    /// (`FileStore::hold_write_room`): `Err` when the disk has no room for it, and the token
    /// must not be spent. The fleet store has no disk of ours to fill.
    pub async fn hold_write_room(&self) -> Result<Option<Room>> {
        match self {
            Store::File(f) => {
                let f = f.clone();
                match blocking(move || f.hold_write_room()).await {
                    Err(e @ Error::PoolIo { .. }) => Err(e),
                    // No thread for it: the refresh goes on without the room, as it did.
                    Err(_) => Ok(None),
                    held => held,
                }
            }
            Store::Postgres(_) => Ok(None),
        }
    }

    /// Claims the refresh token tagged `tag` before it is presented
    /// (`PgStore::claim_refresh`): false when another process of the fleet store has it out.
    /// Made in the fleet store's refresh lock's transaction, which it ends (`relock`). For a
    /// file, the token's own lock (`FileStore::try_token_lock`), held with the account's: false
    /// while another process holds it.
    pub async fn claim_refresh(&self, tag: &str, held: &RefreshLock) -> Result<bool> {
        match (self, held) {
            // The account's lock is not enough: renamed while its token was out, the account's
            // other name has a lock of its own, and a process needing it under that name
            // presented the same token (the login revoked) whenever the journal could not tell.
            (Store::File(f), RefreshLock::File(_, token)) => {
                if token.lock().map(|t| t.is_some()).unwrap_or(false) {
                    return Ok(true);
                }
                let (f, tag) = (f.clone(), tag.to_string());
                match blocking(move || f.try_token_lock(&tag)).await {
                    Ok(Some(lock)) => {
                        if let Ok(mut held) = token.lock() {
                            *held = Some(lock);
                        }
                        Ok(true)
                    }
                    Ok(None) => Ok(false),
                    // One that cannot be taken at all (no descriptor left, a directory in its
                    // place) leaves the refresh to the account's lock and the journal, as
                    // before it existed: refused, the request failed over, and the runtime
                    // carrying that one (Bun) met the shortage itself and ended the process.
                    Err(e) => {
                        tracing::warn!(error = %e, "the refresh token's lock cannot be taken; refreshing under the account's lock alone");
                        Ok(true)
                    }
                }
            }
            (Store::File(_), _) => Ok(true),
            (Store::Postgres(p), _) => p.claim_refresh(tag, held.fleet()).await,
        }
    }

    /// Takes the fleet store's refresh lock again once a claim ended its transaction
    /// (`PgStore::retake_refresh_lock`): true when it did, and the pool must be read again under
    /// it. A file's lock is held throughout.
    pub async fn relock(&self, held: &RefreshLock, patience: Duration) -> Result<bool> {
        match (self, held) {
            (Store::Postgres(p), RefreshLock::Postgres(l)) if !l.is_held() => {
                p.retake_refresh_lock(l, patience).await.map(|()| true)
            }
            _ => Ok(false),
        }
    }

    /// The pool as stored now, read under the account's refresh lock: on the lock's own
    /// connection for the fleet store (see `PgRefreshLock`).
    pub async fn load_under(&self, held: &RefreshLock) -> Result<Pool> {
        match (self, held) {
            (Store::Postgres(p), RefreshLock::Postgres(l)) if l.is_held() => p.load_locked(l).await,
            _ => self.load().await,
        }
    }

    /// `update_existing_written` under the account's refresh lock: for the fleet store, in the
    /// lock's own transaction, which it commits (`PgStore::update_locked`).
    pub fn update_under<'a, T: Send + 'static>(
        &'a self,
        held: &'a RefreshLock,
        change: impl FnOnce(&mut Pool) -> Result<T> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(T, Written<Stamp>)>> + Send + 'a {
        let change: Change<T> = Box::new(change);
        async move {
            match (self, held) {
                (Store::Postgres(p), RefreshLock::Postgres(l)) if l.is_held() => {
                    let (change, landed) = self.landing_kept(change).await;
                    let out = p.update_locked(l, change).await?;
                    self.kept_landed(landed).await;
                    Ok((out, Written::Unknown))
                }
                _ => self.update_written_boxed(change, true).await,
            }
        }
    }

    /// Keeps this process's claim alive while its guard lives (`PgStore::keep_claim`), once it
    /// has checked that the claim still stands: `RefreshClaimed` (POOL_BUSY) when another host
    /// took it over, and the token is not to be presented.
    pub async fn keep_claim(
        &self,
        email: &str,
        tag: &str,
        held: &RefreshLock,
    ) -> Result<Option<postgres::ClaimBeat>> {
        match self {
            Store::File(_) => Ok(None),
            Store::Postgres(p) => match p.keep_claim(email, tag, held.fleet()).await? {
                Some(beat) => Ok(Some(beat)),
                None => Err(Error::RefreshClaimed {
                    email: email.to_string(),
                    store: self.describe(),
                }),
            },
        }
    }

    /// Whether the claim `beat` keeps still stands, checked on its own connection right before
    /// the token goes out again: `RefreshClaimed` (POOL_BUSY) when another host took it over.
    /// No claim (the file store) always stands.
    pub async fn claim_stands(
        &self,
        email: &str,
        beat: Option<&postgres::ClaimBeat>,
    ) -> Result<()> {
        match beat {
            Some(b) if !b.renew_now().await? => Err(Error::RefreshClaimed {
                email: email.to_string(),
                store: self.describe(),
            }),
            _ => Ok(()),
        }
    }

    /// Lets go of a claim (`PgStore::release_refresh`) once the token is known not spent.
    pub async fn release_refresh(&self, tag: &str) {
        if let Store::Postgres(p) = self {
            p.release_refresh(tag).await;
        }
    }

    /// Whether another process is spending this account's refresh token right now (or holds
    /// new tokens it could not save yet).
    pub async fn refresh_lock_held(&self, email: &str) -> bool {
        match self {
            Store::File(f) => {
                let f = f.clone();
                let email = email.to_string();
                blocking(move || Ok(f.refresh_lock_held(&email)))
                    .await
                    .unwrap_or(false)
            }
            Store::Postgres(p) => p.refresh_lock_held(email).await,
        }
    }
}
