//! The pool file on disk: private, atomic, serialized across processes, never lost.
//!
//! - Reads take no lock: every write is a rename of a complete file, so a reader always sees one
//!   whole generation.
//! - Writes happen under an exclusive kernel lock on a separate `<pool>.lock` file that is never
//!   renamed or deleted (locking the data file itself would lock an inode that the next rename
//!   orphans). The kernel drops the lock when its holder dies, so there are no stale locks.
//!   Inside it, the aidevops plugin's own lock is taken too (`legacy_lock.rs`): that plugin
//!   keeps writing the same file for its other providers.
//! - A write is: temp file created 0600 in the same directory (`O_EXCL`, random name), write,
//!   fsync, keep the previous generation as `<pool>.bak`, rename over the pool, fsync the dir.
//! - A file that does not parse is refused with `POOL_CORRUPT` and never written over.
//! - Whether the file changed since it was read (`stamp`, before each request) is asked of a
//!   watch of its directory first (`watch.rs`, Linux), and of a lookup of the path when the
//!   watch cannot tell.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::legacy_lock::LegacyLock;
use super::rescue;
use super::Written;
use crate::error::{Error, Result};
use crate::fsread::{self, ReadError};
use crate::pool::{Pool, ReadCopy};

/// The largest pool file we read: a thousand accounts take well under 2 MB.
const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// What a login leaves itself below `MAX_FILE_BYTES` (`try_write_room`).
const LOGIN_ROOM: u64 = 64 * 1024;
/// Temp files a cut write left read at most per write (`orphaned_tokens`), the newest first:
/// each is removed once a write is in place, so more than a few means something else writes
/// them. Those past it are removed only once `STALE_TEMP` old.
const MAX_ORPHANS_READ: usize = 16;
/// How long a writer waits for the lock. Holders keep it for a read-modify-write only (the
/// token HTTP call is under a per-account lock), so this is generous.
const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a file that does not parse is read again before it is refused as corrupt. Another
/// program writing it in place (an editor's save, `jq … > pool.json`, `cp`, a sync tool) leaves
/// it empty or cut short for a moment: a request, or a write of ours, that met that moment failed
/// with `POOL_CORRUPT` (four requests in five, measured, with a file rewritten every 10 ms).
/// Such a write takes milliseconds; one still unfinished past this is a file left bad.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(500);
/// How often a file that does not parse is read again within `SETTLE_LIMIT`.
const SETTLE_STEP: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    /// Changes in the file's directory as the kernel reports them (Linux).
    #[cfg(target_os = "linux")]
    watch: std::sync::Arc<std::sync::Mutex<super::watch::DirWatch>>,
}

/// The stamp of each file (by path) that stayed unparsable for a whole `SETTLE_LIMIT`: read
/// again unchanged, it is refused at once (a file left bad costs each request no wait). Kept for
/// the whole process, not per `FileStore`: each call of the API (`loadPool`, `listAccounts`,
/// `poolStatus`) and each step of `doctor` opens a store of its own, and each waited the whole
/// limit again for a file already known to be left bad.
fn left_bad() -> &'static std::sync::Mutex<std::collections::HashMap<PathBuf, FileStamp>> {
    static LEFT_BAD: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<PathBuf, FileStamp>>,
    > = std::sync::OnceLock::new();
    LEFT_BAD.get_or_init(Default::default)
}

/// What identifies one generation of the file cheaply, to skip re-parsing an unchanged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ino: u64,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore {
            path: path.into(),
            #[cfg(target_os = "linux")]
            watch: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lock_path(&self) -> PathBuf {
        sibling(&self.path, ".lock")
    }

    pub fn backup_path(&self) -> PathBuf {
        sibling(&self.path, ".bak")
    }

    /// The per-account lock held from re-read to durable write while a refresh token is spent.
    /// Named by a hash of the lower-cased email, so two spellings of one address share it.
    pub fn refresh_lock_path(&self, email: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(crate::account::normalize_email(email).as_bytes());
        let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        sibling(&self.path, &format!(".{tag}.refresh.lock"))
    }

    /// The lock held, beside the account's, while one refresh token is out: named by the
    /// token's journal tag, so that a process that finds the same token under another name (the
    /// account renamed while the token was out) waits for it instead of presenting it too.
    pub fn token_lock_path(&self, tag: &str) -> PathBuf {
        let short: String = tag.chars().take(12).collect();
        sibling(&self.path, &format!(".{short}.token.lock"))
    }

    /// Takes the token's lock without waiting: None when another holder has it.
    pub fn try_token_lock(&self, tag: &str) -> Result<Option<TokenLock>> {
        let path = self.token_lock_path(tag);
        match FileLock::acquire(&path, Duration::ZERO) {
            Ok(lock) => Ok(Some(TokenLock { lock, path })),
            Err(Error::PoolBusy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Names of the temp files our writers create next to the pool (`<prefix>*<suffix>`).
    pub fn temp_pattern(&self) -> (String, &'static str) {
        (temp_prefix(&self.path), ".tmp")
    }

    /// Whether some process holds this account's refresh lock right now (a non-blocking probe;
    /// a missing lock file means nobody does).
    pub fn refresh_lock_held(&self, email: &str) -> bool {
        let path = self.refresh_lock_path(email);
        let Ok(file) = fsread::open_regular(&path, false) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(fs::TryLockError::WouldBlock) => true,
            Err(fs::TryLockError::Error(_)) => false,
        }
    }

    /// Reads the pool without locking. A missing file is an empty pool.
    pub fn load(&self) -> Result<Pool> {
        Ok(self.read()?.map(|(p, _)| p).unwrap_or_default())
    }

    /// Reads the pool and the stamp of the generation read (None when the file is missing).
    pub fn load_stamped(&self) -> Result<(Pool, Option<FileStamp>)> {
        Ok(match self.read()? {
            Some((p, s)) => (p, Some(s)),
            None => (Pool::default(), None),
        })
    }

    /// The stamp of the file as it is now, or None if it does not exist.
    pub fn stamp(&self) -> Option<FileStamp> {
        #[cfg(target_os = "linux")]
        let mut watch = super::lock(&self.watch);
        #[cfg(target_os = "linux")]
        {
            let name = self.path.file_name().unwrap_or_default();
            if let Some(stamp) = watch.unchanged(name) {
                return stamp;
            }
            watch.prepare(&parent_dir(&self.path), name);
        }
        let stamp = fs::symlink_metadata(&self.path).ok().map(|m| stamp_of(&m));
        #[cfg(target_os = "linux")]
        watch.looked_up(stamp);
        stamp
    }

    /// How long ago the file was last written (its modification time), if it exists.
    pub fn written_ago(&self) -> Option<Duration> {
        let modified = fs::symlink_metadata(&self.path).ok()?.modified().ok()?;
        Some(
            std::time::SystemTime::now()
                .duration_since(modified)
                .unwrap_or(Duration::ZERO),
        )
    }

    /// Replaces the whole pool (the `savePool` semantics), under the lock.
    pub fn save(&self, pool: &Pool) -> Result<()> {
        self.save_read_at(pool, &ReadCopy::default())
    }

    /// `save` of a copy `loadPool` gave (`ReadCopy::default()`: replace whatever is there):
    /// accounts added since it was read are kept, those removed since stay out
    /// (`ReadCopy::reconcile`).
    pub fn save_read_at(&self, pool: &Pool, read: &ReadCopy) -> Result<()> {
        self.check_writable()?;
        let _lock = FileLock::acquire(&self.lock_path(), LOCK_TIMEOUT)?;
        let _aidevops = LegacyLock::acquire(&self.path)?;
        // Refuse to replace a file we would refuse to read: a symlink or a foreign file is
        // someone else's, and a corrupt one is evidence the user must look at.
        let mut previous = self.read()?;
        let mut pool = pool.clone();
        let mut landed = rescue::KeptLanded::default();
        if let Some((stored, _)) = &mut previous {
            // Tokens kept beside the pool are the stored state's: the copy's account still
            // holding the token spent for them holds a spent token.
            landed = self.land_kept(stored);
            let kept_spent: Vec<(String, String)> = landed
                .spent
                .iter()
                .flat_map(|(email, presented)| {
                    pool.accounts()
                        .filter(|a| a.refresh.as_ref() == Some(presented))
                        .map(|a| (a.email.clone(), email.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            // Asked now, under the lock: asked before it, a refresh whose write this save waited
            // behind was not in it yet, and its spent token was written back.
            let spent: Vec<(String, String)> = super::spent_now(&super::refresh_tags(&pool))
                .into_iter()
                .map(|(email, spent)| (email, spent.email))
                .chain(read.spent.iter().cloned())
                .chain(kept_spent)
                .collect();
            for email in pool.keep_newer_state(stored, &spent) {
                tracing::info!(account = %email, "kept the stored tokens: newer than those saved");
            }
            read.reconcile(&mut pool, stored);
        }
        self.write_locked(
            &zeroize::Zeroizing::new(pool.to_bytes()),
            previous.is_some(),
        )?;
        self.kept_landed(landed);
        remove_refresh_locks(self, &pool);
        Ok(())
    }

    /// Tokens processes kept beside the pool (`rescue`), put into `pool` as read under the lock:
    /// every write takes them, whichever program asked for it (a login, `priority`, `savePool`,
    /// a request's bookkeeping). Only the engine's did, and a pool written by the CLI and then
    /// copied elsewhere (`store copy`) carried the spent token.
    fn land_kept(&self, pool: &mut Pool) -> rescue::KeptLanded {
        if pool.file_missing {
            return rescue::KeptLanded::default();
        }
        let mut files = rescue::found(&self.path);
        files.extend(orphaned_tokens(&self.path, pool));
        if files.is_empty() {
            return rescue::KeptLanded::default();
        }
        rescue::apply_kept(pool, &files)
    }

    /// Once the write that took kept tokens is in place: their files go, and the tokens they
    /// replaced are recorded as spent in the refresh journal (a pool put back holding one is
    /// caught).
    fn kept_landed(&self, landed: rescue::KeptLanded) {
        rescue::remove(&landed.done);
        if landed.spent.is_empty() {
            return;
        }
        if let Some(j) = super::journal::Journal::for_user() {
            let here = super::journal::file_identity(&self.path);
            let now = crate::account::now_ms();
            for (email, presented) in landed.spent {
                j.saved(&super::journal::tag(&presented), &here, &email, now);
            }
        }
    }

    /// Locks, re-reads the file, applies `change`, and writes the result if it differs from
    /// what was read. Every mutation of the pool goes through here, so no update is lost.
    pub fn update<T>(&self, change: impl FnOnce(&mut Pool) -> Result<T>) -> Result<T> {
        self.update_written(change).map(|(out, _)| out)
    }

    /// `update`, also saying what it left in the file: the generation it wrote, as a read of it
    /// would give it, with its stamp (a cache of the file then stays current across this
    /// process's own writes instead of reading each back), or that nothing needed writing.
    pub fn update_written<T>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T>,
    ) -> Result<(T, Written<FileStamp>)> {
        self.update_with(change, false)
    }

    /// `update_written` for a change that only updates what the file holds (the bookkeeping
    /// after a request, a cooldown, a refresh's tokens, an edit of named accounts): a pool file
    /// that is not there has nothing to update, and nothing is made for it. Taking the lock
    /// made the directory (0700) and the lock file again: a `~/.aidevops` removed to start over,
    /// or by a sync tool for a moment, came back holding a lock file and nothing else after the
    /// next request's bookkeeping. The change still runs, on the empty pool a missing file reads
    /// as (`file_missing`, so it keeps new tokens for the file's return), and says what it says
    /// (an account not found, tokens not saved); the pool is made only by the changes that
    /// create one on purpose (`update`, `save`: a login, an import, `savePool`).
    pub fn update_existing<T>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T>,
    ) -> Result<(T, Written<FileStamp>)> {
        self.update_with(change, true)
    }

    fn update_with<T>(
        &self,
        change: impl FnOnce(&mut Pool) -> Result<T>,
        existing_only: bool,
    ) -> Result<(T, Written<FileStamp>)> {
        self.check_writable()?;
        let lock = if existing_only {
            self.lock_existing()?
        } else {
            Some(FileLock::acquire(&self.lock_path(), LOCK_TIMEOUT)?)
        };
        let Some(_lock) = lock else {
            return Ok((change_nothing(change)?, Written::Unchanged));
        };
        let _aidevops = LegacyLock::acquire(&self.path)?;
        let current = self.read()?;
        let existed = current.is_some();
        if existing_only && !existed {
            return Ok((change_nothing(change)?, Written::Unchanged));
        }
        let mut pool = current.map(|(p, _)| p).unwrap_or_default();
        pool.file_missing = !existed;
        let before = zeroize::Zeroizing::new(pool.to_bytes());
        let landed = self.land_kept(&mut pool);
        let out = change(&mut pool)?;
        let after = zeroize::Zeroizing::new(pool.to_bytes());
        if after == before {
            // Nothing landed, but files of tokens the pool holds already (or of accounts gone)
            // go: `doctor` says the next write removes them.
            self.kept_landed(landed);
            return Ok((out, Written::Unchanged));
        }
        let stamp = self.write_locked(&after, existed)?;
        self.kept_landed(landed);
        remove_refresh_locks(self, &pool);
        // What a read of the bytes just written would give, without reading them back: a parse
        // of a pool with a month of usage is most of what a bookkeeping write costs.
        let written = match (stamp, pool.into_read()) {
            (Some(stamp), Ok(pool)) => Written::Generation(pool, stamp),
            _ => Written::Unknown,
        };
        Ok((out, written))
    }

    /// The write lock for `update_existing`, making nothing that a pool file that is gone would
    /// not have had: the lock file as it is, or one made beside a pool file that has none (a
    /// file another program wrote, or whose lock file was deleted), never its directory. None:
    /// there is no pool file to update (then or while the lock was sought).
    fn lock_existing(&self) -> Result<Option<FileLock>> {
        let path = self.lock_path();
        if let Some(lock) = FileLock::acquire_making(&path, LOCK_TIMEOUT, Making::Nothing)? {
            return Ok(Some(lock));
        }
        match fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => FileLock::acquire_making(&path, LOCK_TIMEOUT, Making::File),
        }
    }

    fn read(&self) -> Result<Option<(Pool, FileStamp)>> {
        self.read_settled()
    }

    /// Reads the pool as `load` does (this user's regular file, bounded), but leaves a wide
    /// mode as it is: for a look at a pool that is not the one in use (`doctor` comparing the
    /// logins of the pools on this machine), which must change nothing. None when missing.
    /// A file that does not parse is not waited for: what is midway through being written is
    /// no concern of a look (doctor waited `SETTLE_LIMIT` for each corrupt pool it looked at).
    pub fn peek(&self) -> Result<Option<Pool>> {
        match self.read_once(false) {
            Ok(read) => Ok(read.map(|(p, _)| p)),
            Err(Unread::Failed(e) | Unread::Unparsable(e, _)) => Err(e),
        }
    }

    /// `read_once`, again while the file does not parse and is not known to be left so, up to
    /// `SETTLE_LIMIT`: what another program is midway through writing in place is waited for.
    fn read_settled(&self) -> Result<Option<(Pool, FileStamp)>> {
        let started = Instant::now();
        loop {
            let (err, stamp) = match self.read_once(true) {
                Ok(read) => {
                    let mut left_bad = super::lock(left_bad());
                    if !left_bad.is_empty() {
                        left_bad.remove(&self.path);
                    }
                    return Ok(read);
                }
                Err(Unread::Failed(e)) => return Err(e),
                Err(Unread::Unparsable(e, stamp)) => (e, stamp),
            };
            let mut left_bad = super::lock(left_bad());
            if left_bad.get(&self.path) == Some(&stamp) {
                return Err(err);
            }
            if started.elapsed() >= SETTLE_LIMIT {
                tracing::warn!(path = %self.path.display(), "the pool file does not parse, and did not settle within {} ms", SETTLE_LIMIT.as_millis());
                left_bad.insert(self.path.clone(), stamp);
                return Err(err);
            }
            drop(left_bad);
            std::thread::sleep(SETTLE_STEP);
        }
    }

    fn read_once(&self, tighten: bool) -> std::result::Result<Option<(Pool, FileStamp)>, Unread> {
        let Some((file, meta)) = self.open_checked().map_err(Unread::Failed)? else {
            return Ok(None);
        };
        let path = &self.path;
        if meta.len() > MAX_FILE_BYTES {
            return Err(Unread::Failed(self.corrupt(format!(
                "it is {} bytes, far beyond any pool",
                meta.len()
            ))));
        }
        let bytes = match fsread::read_capped(&file, MAX_FILE_BYTES) {
            Ok(b) => b,
            Err(ReadError::TooLarge(n)) => {
                return Err(Unread::Failed(
                    self.corrupt(format!("it grew beyond {n} bytes while being read")),
                ))
            }
            Err(e) => {
                return Err(Unread::Failed(Error::io(
                    path,
                    "read",
                    std::io::Error::other(e.to_string()),
                )))
            }
        };
        let pool = match Pool::parse(&bytes) {
            Ok(pool) => pool,
            // A file of a later format is whole: nothing to wait for.
            Err(reason) if reason.contains(crate::pool::NEWER_FORMAT) => {
                return Err(Unread::Failed(self.corrupt(reason)))
            }
            Err(reason) => {
                // As it is now, after the read: a writer that went on meanwhile changed it.
                let stamp = file
                    .metadata()
                    .map(|m| stamp_of(&m))
                    .unwrap_or(stamp_of(&meta));
                return Err(Unread::Unparsable(self.corrupt(reason), stamp));
            }
        };
        // Only once it is known to be a pool: a path pointed at some other file of this user's
        // (`--path /etc/passwd` as root, or a `package.json`, which parses as a pool with no
        // accounts) must leave that file as it was.
        if tighten && pool.is_shaped_as_pool_file() {
            fsread::tighten_mode(path, &file, &meta);
        }
        Ok(Some((pool, stamp_of(&meta))))
    }

    /// The pool file opened for reading, checked to be a regular file of this user's (None when
    /// there is none). Writers ask it first too: a path we would refuse to read gets no lock
    /// file (nor anything else) beside it.
    fn open_checked(&self) -> Result<Option<(File, fs::Metadata)>> {
        let path = &self.path;
        let insecure = |reason: String| Error::PoolInsecure {
            path: path.to_path_buf(),
            reason,
        };
        let file = match fsread::open_regular(path, false) {
            Ok(f) => f,
            Err(ReadError::NotFound) => return Ok(None),
            Err(ReadError::Symlink) => {
                return Err(insecure(
                    "it is a symbolic link; give the real file's path instead (OAUTH_POOL_PATH, --path or the plugin's path option, whichever named this one)".into(),
                ))
            }
            Err(ReadError::NotRegular(kind)) => {
                return Err(insecure(format!("it is {kind}, not a regular file")))
            }
            Err(ReadError::TooLarge(n)) => {
                return Err(self.corrupt(format!("it is larger than {n} bytes")))
            }
            Err(ReadError::Io(e)) => {
                // Another user's file is refused as such, also when its mode keeps us from
                // opening it (a pool in a shared directory, `sudo -u` without `-H`).
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    if let Ok(meta) = fs::symlink_metadata(path) {
                        check_owner(path, &meta)?;
                    }
                }
                return Err(Error::io(path, "open", e));
            }
        };
        let meta = file.metadata().map_err(|e| Error::io(path, "stat", e))?;
        check_owner(path, &meta)?;
        Ok(Some((file, meta)))
    }

    /// Whether the pool file's next write has room, tried before something that cannot be
    /// undone (a refresh token spent on request, a login's one-time code): a temp file as large
    /// as the file plus a margin for new tokens is written, synced and removed. A full disk, a
    /// quota or a read-only mount then costs nothing: the refresh or the exchange is not made.
    /// A pool file that is not there has no refresh token to spend; a login for a pool to be
    /// made is tried in its directory, or when that is not there yet in the nearest directory
    /// above it, where the first write makes it (nothing is made for a trial). Skipped there, a
    /// directory that cannot be made (a read-only mount, a parent not ours) lost the login:
    /// its code spent, its tokens with nowhere to go.
    pub fn try_write_room(&self, before: Trial) -> Result<()> {
        let dir = parent_dir(&self.path);
        let (dir, size) = match fs::symlink_metadata(&self.path) {
            Ok(meta) => (dir, meta.len()),
            Err(_) if before == Trial::Login => match directory_to_make(&dir) {
                Ok(dir) => (dir, 0),
                Err(e) => {
                    return Err(Error::io(
                        &self.path,
                        "making the pool's directory, checked before exchanging the login's code (the code was not spent)",
                        e,
                    ))
                }
            },
            Err(_) => return Ok(()),
        };
        // A login's entry (its tokens, names and dates) is a few hundred bytes; more room is left
        // for the bookkeeping that follows. Past the size a read takes, the code was spent and
        // the login lived only in this process.
        // A file mounted on its own is read and never replaced (`rename` over a mount point is
        // EBUSY): the trial below passed in its directory, the refresh spent the token, and the
        // new tokens stayed in the container's copy of the directory while the host's file kept
        // the spent one. Nor are the locks and the journal beside it shared with the host.
        refuse_mounted_alone(&self.path, before)?;
        if before == Trial::Login && size.saturating_add(LOGIN_ROOM) > MAX_FILE_BYTES {
            return Err(Error::PoolInvalid(format!(
                "{} is {size} bytes, too near the {MAX_FILE_BYTES} a read takes to hold another login (the code was not spent): remove what another tool keeps in it, or use another pool file",
                self.path.display()
            )));
        }
        if before == Trial::Login {
            // The lock the write takes: one that is a directory, a FIFO or a link failed the
            // write after the code was spent, and the login lived only in this process. Held
            // by another process, it is a lock all the same.
            match FileLock::acquire_making(&self.lock_path(), Duration::ZERO, Making::Nothing) {
                Ok(_) | Err(Error::PoolBusy { .. }) => {}
                Err(e) => return Err(e),
            }
            // And the aidevops plugin's lock, which the write takes after it.
            super::legacy_lock::refuse_foreign(&self.path)?;
        }
        let trial = || -> std::io::Result<()> {
            let tmp = temp_in(&dir, &self.path).map_err(std::io::Error::other)?;
            fill_zeros(tmp.as_file(), size)
        };
        trial().map_err(|e| {
            let what = match before {
                Trial::Refresh => {
                    "a trial write before refreshing (nothing was refreshed: the stored refresh token is unspent)"
                }
                Trial::Login => {
                    "a trial write before exchanging the login's code (the code was not spent: fix the disk and log in again)"
                }
            };
            Error::io(&self.path, what, e)
        })
    }

    /// Room for the pool file's next write, held while a refresh token is being spent: a disk
    /// that fills during the token call (another program's log, a download) left the new tokens
    /// with nowhere to go, held only by a process that might end before the disk is freed, and
    /// the login went with it. Dropping it frees as much as the write takes. An unnamed file
    /// (nothing to see or leave behind, gone with the process).
    ///
    /// `Err` (`POOL_IO`) when the disk has no room for it (full, over quota, mounted read-only):
    /// the new tokens could not be saved either, so the refresh token must not be spent. `None`
    /// when there is no file to write (nothing to refresh from it) or the hold failed otherwise,
    /// and the refresh goes on as before.
    pub fn hold_write_room(&self) -> Result<Option<Room>> {
        let Ok(meta) = fs::symlink_metadata(&self.path) else {
            return Ok(None);
        };
        refuse_mounted_alone(&self.path, Trial::Refresh)?;
        let held = tempfile::tempfile_in(parent_dir(&self.path))
            .and_then(|file| fill_zeros(&file, meta.len()).map(|()| Room(file)));
        match held {
            Ok(room) => Ok(Some(room)),
            Err(e) if no_room(&e) => Err(Error::io(
                &self.path,
                "holding room for the new tokens before refreshing (nothing was refreshed: the stored refresh token is unspent; free disk space)",
                e,
            )),
            Err(_) => Ok(None),
        }
    }

    /// What a writer asks before it makes anything (a lock file, a temp, the directory): that
    /// the file is one it would read, or, when there is none yet, that one it makes there would
    /// not shut the directory's owner out (`check_maker`).
    fn check_writable(&self) -> Result<()> {
        super::netfs::warn_once(&self.path);
        if self.open_checked()?.is_none() {
            check_maker(&self.path).map_err(|reason| Error::PoolInsecure {
                path: self.path.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    fn corrupt(&self, reason: String) -> Error {
        let bak = self.backup_path();
        // The .bak is read like any file we did not just write: regular, bounded, never blocking.
        let bak_ok = read_own(&bak).is_some_and(|b| Pool::parse(&b).is_ok());
        let hint = if reason.contains(crate::pool::NEWER_FORMAT) {
            "upgrade opencode-oauth-pool wherever this pool is used (OpenCode sessions started \
             before the upgrade too); do not restore an older copy or move it aside: the newer \
             version's logins are in it"
                .to_string()
        } else if bak_ok {
            format!(
                "the last good copy is {}: inspect both, then restore it with `cp {} {}`",
                bak.display(),
                shell_word(&bak.display().to_string()),
                shell_word(&self.path.display().to_string())
            )
        } else {
            "fix it by hand or move it aside (no good .bak copy exists); the pool is not used until then"
                .to_string()
        };
        Error::PoolCorrupt {
            path: self.path.clone(),
            reason,
            hint,
        }
    }

    /// Writes `pool` atomically. The caller holds the lock.
    /// Returns the stamp the file has once written (that of the temp file renamed into place:
    /// the same inode, length and modification time), when it could be read.
    fn write_locked(&self, bytes: &[u8], keep_backup: bool) -> Result<Option<FileStamp>> {
        let path = &self.path;
        // A file no reader would take (`MAX_FILE_BYTES`) is not written: the last good one stays.
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::PoolInvalid(format!(
                "it would be {} bytes, more than the {MAX_FILE_BYTES} a read takes; {} was left as it was",
                bytes.len(),
                path.display()
            )));
        }
        let dir = parent_dir(path);
        create_private_dir(&dir)?;

        let mut tmp = temp_in(&dir, path)?;
        tmp.write_all(bytes)
            .map_err(|e| Error::io(tmp.path(), "write", e))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| Error::io(tmp.path(), "fsync", e))?;
        let stamp = tmp.as_file().metadata().ok().map(|m| stamp_of(&m));

        if keep_backup {
            self.keep_newer_backup();
            // The generation being replaced becomes the .bak; a failure here costs the backup,
            // never the write.
            if let Err(e) = self.backup_current(&dir) {
                tracing::warn!(path = %path.display(), error = %e, "could not keep a .bak copy");
            }
        } else {
            self.keep_earlier_backup();
        }
        persist(tmp, path)?;
        sync_dir(&dir);
        // Once this write is in place (its own temp is renamed): a write that fails leaves what
        // an earlier one left, which the next write may take (`orphaned_tokens`).
        remove_read_orphaned_temps(path);
        Ok(stamp)
    }

    /// The pool file is being made anew while a `.bak` holding accounts is there: the file was
    /// deleted (by hand, by a tool), and that backup may be the only copy of those logins, which
    /// the second write from now would replace. It moves aside to `<pool>.bak-<UTC time>`, which
    /// nothing replaces or removes (`oauth-pool doctor` points at it), unless one kept aside
    /// earlier holds the very same bytes: a file deleted again and again with the same backup
    /// behind it (restored from a copy, deleted by a tool) made one more such file each time.
    fn keep_earlier_backup(&self) {
        let bak = self.backup_path();
        let Some(bytes) = read_own(&bak) else {
            return;
        };
        let holds_accounts = Pool::parse(&bytes)
            .is_ok_and(|p| p.accounts().next().is_some() || p.invalid_entries().next().is_some());
        if holds_accounts {
            self.keep_aside(&bytes, "the pool file was missing");
        }
    }

    /// The pool file was put back to an earlier state (a backup, a sync tool, an editor's undo)
    /// while the `.bak` holds a later one: a login's token in the file was spent, its successor
    /// saved (the refresh journal says so), and the `.bak` holds another token for it that was
    /// never presented, the live one. The write replacing the `.bak` (the one recording the spent
    /// token's refusal, first) deleted the only copy of that login; the `.bak` is kept aside
    /// instead, as when the file was deleted (`keep_earlier_backup`). Both files are read at each
    /// write (bounded, a few KB, off the request path); the journal only when a token differs.
    fn keep_newer_backup(&self) {
        let bak = self.backup_path();
        let (Some(current), Some(backup)) = (read_own(&self.path), read_own(&bak)) else {
            return;
        };
        let (Ok(current), Ok(backup)) = (Pool::parse(&current), Pool::parse(&backup)) else {
            return;
        };
        let differing: Vec<(String, String)> = current
            .accounts()
            .filter_map(|a| {
                let here = a.refresh.as_ref().filter(|r| !r.is_empty())?;
                let there = backup.find(&a.email)?.refresh.as_ref()?;
                (here.expose() != there.expose() && !there.is_empty())
                    .then(|| (super::journal::tag(here), super::journal::tag(there)))
            })
            .collect();
        if differing.is_empty()
            || !super::journal::Journal::for_user()
                .is_some_and(|j| j.later_beside_spent(&differing))
        {
            return;
        }
        if let Some(bytes) = read_own(&bak) {
            self.keep_aside(&bytes, "the pool file was put back to an earlier state");
        }
    }

    /// Moves the `.bak` (holding `bytes`) to `<pool>.bak-<UTC time>`, unless a copy kept aside
    /// already holds the same bytes. `why`: for the log line.
    fn keep_aside(&self, bytes: &[u8], why: &str) {
        let bak = self.backup_path();
        if let Some(same) = self.kept_backups().into_iter().find(|kept| {
            fsread::read_regular(kept, MAX_FILE_BYTES, false).is_ok_and(|k| *k == *bytes)
        }) {
            tracing::info!(kept = %same.display(), "{why}; its backup is already kept aside");
            return;
        }
        let time: String = crate::account::iso_time(crate::account::now_ms())
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        // Never over another one (two made anew within a millisecond): rename(2) replaces.
        let aside = (0..)
            .map(|n| match n {
                0 => sibling(&self.path, &format!(".bak-{time}")),
                n => sibling(&self.path, &format!(".bak-{time}-{n}")),
            })
            .find(|p| fs::symlink_metadata(p).is_err())
            .unwrap_or_else(|| sibling(&self.path, &format!(".bak-{time}")));
        match fs::rename(&bak, &aside) {
            Ok(()) => {
                // It holds logins, under a name of ours nothing removes: private, whatever mode
                // the backup was left with (a 0644 one kept its mode).
                #[cfg(unix)]
                owner_only(&aside);
                tracing::warn!(kept = %aside.display(), "{why}; the backup is kept aside")
            }
            Err(e) => {
                tracing::warn!(path = %bak.display(), error = %e, "could not keep the earlier backup aside")
            }
        }
    }

    /// The backups kept aside so far (`<pool>.bak-*`).
    fn kept_backups(&self) -> Vec<PathBuf> {
        let prefix = format!(
            "{}.bak-",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        );
        let Ok(entries) = fs::read_dir(parent_dir(&self.path)) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect()
    }

    fn backup_current(&self, dir: &Path) -> std::io::Result<()> {
        let bak = self.backup_path();
        // Named like our temps, so a writer killed between link and rename leaves nothing that
        // the next writer does not clean up.
        let staging = dir.join(format!(
            "{}bak-{}.tmp",
            temp_prefix(&self.path),
            random_suffix()
        ));
        if fs::hard_link(&self.path, &staging).is_err() {
            // Filesystems without hard links: copy into a private temp instead.
            // A copy is of the bytes there now, which another program writing the file in place
            // may have left cut short: such a copy would replace a good backup with a bad one.
            let bytes = zeroize::Zeroizing::new(fs::read(&self.path)?);
            if Pool::parse(&bytes).is_err() {
                return Err(std::io::Error::other(
                    "the file changed while it was copied; the earlier backup stays",
                ));
            }
            let mut tmp = temp_in(dir, &self.path).map_err(std::io::Error::other)?;
            tmp.write_all(&bytes)?;
            tmp.as_file().sync_all()?;
            tmp.persist(&bak).map_err(|e| e.error)?;
            return Ok(());
        }
        let renamed = fs::rename(&staging, &bak);
        // rename(2) does nothing when both names already link the same inode (a writer died
        // right after making the .bak): the staging name must not linger.
        let _ = fs::remove_file(&staging);
        renamed
    }
}

/// `change` for a pool file that is not there (`FileStore::update_existing`): run on the empty
/// pool such a file reads as, its answer kept and anything it changed there not written.
fn change_nothing<T>(change: impl FnOnce(&mut Pool) -> Result<T>) -> Result<T> {
    let mut pool = Pool {
        file_missing: true,
        ..Pool::default()
    };
    let before = zeroize::Zeroizing::new(pool.to_bytes());
    let out = change(&mut pool)?;
    if *zeroize::Zeroizing::new(pool.to_bytes()) != *before {
        tracing::warn!("a change of accounts met no pool file, and made none");
    }
    Ok(out)
}

/// Why one read of the pool file gave no pool.
enum Unread {
    /// Refused for good: not ours, unreadable, too large, of a later format.
    Failed(Error),
    /// Its content does not parse: maybe a write in place under way (the file's stamp then).
    Unparsable(Error, FileStamp),
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Room on the pool file's disk held for its next write (`FileStore::hold_write_room`).
pub struct Room(#[allow(dead_code)] File);

/// Whether `e` says the disk has no room for a write: full, over quota, or mounted read-only.
pub(crate) fn no_room(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::ReadOnlyFilesystem
    )
}

/// Writes and syncs the pool file's size plus a margin for new tokens in zeros: blocks a write
/// of the file would take, made the file's own.
fn fill_zeros(mut file: &File, size: u64) -> std::io::Result<()> {
    const MARGIN: u64 = 8 * 1024;
    let zeros = [0u8; 16 * 1024];
    let mut left = size + MARGIN;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

/// `dir` when it is a directory, else the nearest of its ancestors that is one, under which the
/// write makes the rest; an error when the first that is there is something else (a file, a
/// link to nothing: the write could not make the directory).
fn directory_to_make(dir: &Path) -> std::io::Result<PathBuf> {
    let mut at = Some(dir);
    while let Some(p) = at {
        match (fs::symlink_metadata(p), fs::metadata(p)) {
            (_, Ok(meta)) if meta.is_dir() => return Ok(p.to_path_buf()),
            (Err(_), _) => at = p.parent().filter(|q| !q.as_os_str().is_empty()),
            (Ok(link), Err(_)) if link.file_type().is_symlink() => {
                return Err(std::io::Error::other(format!(
                    "{} is a symbolic link to nothing",
                    p.display()
                )))
            }
            _ => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    p.display()
                )))
            }
        }
    }
    Ok(PathBuf::from("."))
}

/// What a trial write comes before (`FileStore::try_write_room`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    Refresh,
    Login,
}

pub(super) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

pub(super) fn temp_in(dir: &Path, path: &Path) -> Result<tempfile::NamedTempFile> {
    // tempfile creates with O_EXCL and mode 0600 from the start: no window with wider bits.
    let prefix = temp_prefix(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let tmp = builder.tempfile_in(dir).map_err(|e| {
        // A directory made read-only on purpose is said as such (`refuse_unwritable_dir`).
        refuse_unwritable_dir(dir)
            .err()
            .unwrap_or_else(|| Error::io(dir, "create temp file", e))
    })?;
    owner_read_write(tmp.as_file()).map_err(|e| Error::io(tmp.path(), "set mode 0600", e))?;
    Ok(tmp)
}

/// The mode given at create is cut by the umask: under 0277 a file made 0600 is 0400, and the
/// next writer's open of it fails. fchmod is not cut.
pub(crate) fn owner_read_write(file: &File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Ok(())
    }
}

/// Makes `path` holding `bytes` (0600), whole or not at all: written and synced under a temp
/// name of its own (`<name>.<random>.tmp`), then renamed into place only if nothing is there
/// (`AlreadyExists` then, and the temp is removed). A reader never sees it empty or cut short,
/// and two makers never share a temp name: one named by the maker's pid, left by a maker
/// killed mid-write, was met again by the next maker given that pid (a container's gateway,
/// started as the same pid each time), whose exclusive create then failed for ever.
pub(crate) fn create_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = parent_dir(path);
    let mut builder = tempfile::Builder::new();
    let prefix = format!(
        "{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(&dir)?;
    owner_read_write(tmp.as_file())?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    sync_dir(&dir);
    Ok(())
}

/// How old a temp file of `create_whole` is before it counts as left by a maker that died
/// (kill -9, a power cut) between its write and its rename: a live maker takes milliseconds.
pub(crate) const STALE_TEMP: Duration = Duration::from_secs(10 * 60);

/// Removes the temp files `create_whole` (and earlier versions, which named them by pid) left
/// beside `path` when killed mid-write, once `STALE_TEMP` old: they hold a key nobody uses,
/// and nothing else ever removed them. No lock covers a maker, so a younger one may be a live
/// maker's and is left.
pub(crate) fn remove_stale_temps(path: &Path) {
    let prefix = format!(
        "{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    let now = std::time::SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.ends_with(".tmp")) {
            continue;
        }
        let stale = entry.metadata().is_ok_and(|m| {
            m.is_file()
                && m.modified()
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age >= STALE_TEMP)
        });
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The tokens in a temp file a writer left between its fsync and its rename (killed, the
/// power cut): of a refresh, the only copy of its new tokens, which the next write used to
/// delete unread while the pool still held the spent token (presented again, the login was
/// revoked). Taken, as kept tokens are, for each account whose token in the pool the journal
/// has seen presented, where the temp's was never presented: the newer of the two. A temp
/// holding nothing newer goes as before, once a write is in place.
pub fn orphaned_tokens(path: &Path, pool: &Pool) -> Vec<(PathBuf, Vec<rescue::KeptTokens>)> {
    let temps = orphaned_temps(path);
    if temps.is_empty() {
        return Vec::new();
    }
    // Needed for a pool's temp only (which of two tokens is the newer); a kept-tokens temp
    // names the token it replaced.
    let journal = super::journal::Journal::for_user();
    let tag = super::journal::tag;
    let mut out = Vec::new();
    for (temp, _) in temps.into_iter().take(MAX_ORPHANS_READ) {
        let Ok(file) = fsread::open_regular(&temp, false) else {
            continue;
        };
        // Written by our writer, 0600: one another user, or a looser mode, made is no cut
        // write of ours, and taking its tokens would put someone else's login in this pool.
        let private = file.metadata().is_ok_and(|m| {
            fsread::foreign_owner(&m).is_none() && {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    m.permissions().mode() & 0o077 == 0
                }
                #[cfg(not(unix))]
                {
                    true
                }
            }
        });
        if !private {
            continue;
        }
        let Ok(bytes) = fsread::read_capped(&file, MAX_FILE_BYTES) else {
            continue;
        };
        // A kept-tokens writer's temp (`rescue`), cut between its fsync and its rename: the
        // only copy of a refresh's new tokens, which were deleted unread as a pool temp holding
        // no account. They land as kept files do, only where the pool still holds the token
        // spent for them (`apply_kept`).
        if let Some(kept) = rescue::parse(&bytes).filter(|k| !k.is_empty()) {
            tracing::warn!(path = %temp.display(), "a write of kept tokens was cut before its rename; the tokens it held are taken");
            out.push((temp, kept));
            continue;
        }
        let Some(journal) = journal.as_ref() else {
            continue;
        };
        let Ok(left) = Pool::parse(&bytes) else {
            continue;
        };
        let newer: Vec<rescue::KeptTokens> = left
            .accounts()
            .filter(|t| !t.is_api_key())
            .filter_map(|t| {
                let held = pool.find(&t.email)?.refresh.clone()?;
                let (access, refresh) = (t.access.clone()?, t.refresh.clone()?);
                let newer = refresh != held
                    && !refresh.is_empty()
                    && journal.presented(&tag(&held))
                    && !journal.presented(&tag(&refresh));
                newer.then(|| rescue::KeptTokens {
                    email: t.email.clone(),
                    access,
                    refresh,
                    expires: t.expires.unwrap_or(0),
                    presented: held,
                })
            })
            .collect();
        if !newer.is_empty() {
            tracing::warn!(path = %temp.display(), "a write was cut before its rename; the tokens it held are taken");
            out.push((temp, newer));
        }
    }
    out
}

/// Temp files of ours left by a writer that died mid-write. We hold the lock, and writers only
/// create temps under it, so every such file is an orphan. They hold tokens: remove them.
/// The refresh journal's writer calls it too, under the journal's lock, for its own temps.
/// Ours are `.<name>.<random>.tmp`, the random part without a dot: another pool in the same
/// directory whose name begins with this one's and a dot (`oauth-pool.json.work` beside
/// `oauth-pool.json`) has temps that begin with this prefix too, made under its own lock, not
/// ours; removing a live one failed that pool's write.
pub(super) fn remove_orphaned_temps(path: &Path) {
    for (temp, _) in orphaned_temps(path) {
        let _ = fs::remove_file(temp);
    }
}

/// `remove_orphaned_temps` after a write of the pool, which read the newest (`orphaned_tokens`):
/// those past them wait until stale, as one unread may hold a cut refresh's tokens.
fn remove_read_orphaned_temps(path: &Path) {
    let now = SystemTime::now();
    for (i, (temp, modified)) in orphaned_temps(path).into_iter().enumerate() {
        let stale = modified
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= STALE_TEMP);
        if i < MAX_ORPHANS_READ || stale {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Whether a write of the pool at `path` left a temp file (cut before its rename).
pub fn has_orphaned_temps(path: &Path) -> bool {
    !orphaned_temps(path).is_empty()
}

/// The pool's temp files no write of a live process holds (`remove_orphaned_temps`), called
/// under the pool's lock: this user's regular files, the newest first, with when each was
/// written. Another user's (a shared directory) are neither read nor removed.
fn orphaned_temps(path: &Path) -> Vec<(PathBuf, Option<SystemTime>)> {
    let dir = parent_dir(path);
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
        else {
            continue;
        };
        // The writer of kept tokens (`rescue`) makes its temps outside the pool's lock:
        // `.<name>.unsaved-<pid>.<random>.tmp`, an orphan once its process is gone.
        let kept_orphan = rest
            .strip_prefix("unsaved-")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(pid, random)| {
                !random.contains('.')
                    && pid
                        .parse::<i64>()
                        .is_ok_and(|pid| !super::legacy_lock::is_alive(pid))
            });
        let ours = !rest.contains('.') || kept_orphan;
        if !ours {
            continue;
        }
        // Not followed: a symlink is no temp of ours.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_file() && fsread::foreign_owner(&meta).is_none() {
            out.push((entry.path(), meta.modified().ok()));
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    out
}

#[cfg(windows)]
pub(super) fn persist(mut tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    // Windows refuses to replace a file another process holds open without FILE_SHARE_DELETE
    // (editors, scanners): retry briefly before failing, and never lose the temp's content.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tmp.persist(path) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tmp = e.file;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(Error::io(path, "replace", e.error)),
        }
    }
}

#[cfg(not(windows))]
pub(super) fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.persist(path).map(|_| ()).map_err(|e| {
        if e.error.raw_os_error() == Some(libc::EBUSY) && is_mount_point(path) {
            Error::io(path, "rename", std::io::Error::other(MOUNTED_ALONE))
        } else {
            Error::io(path, "rename", e.error)
        }
    })
}

/// A refresh or a login refused before anything is spent when `path` is mounted on its own.
fn refuse_mounted_alone(path: &Path, before: Trial) -> Result<()> {
    if !is_mount_point(path) {
        return Ok(());
    }
    let what = match before {
        Trial::Refresh => "a refresh (nothing was refreshed: the stored refresh token is unspent)",
        Trial::Login => "a login (the code was not spent)",
    };
    Err(Error::io(path, what, std::io::Error::other(MOUNTED_ALONE)))
}

const MOUNTED_ALONE: &str = "the pool file is mounted on its own (as `docker run -v <file>:<file>` mounts it): it can be read but never replaced; mount its directory instead";

/// Whether `path` is itself a mount point, as a file bind-mounted alone is. The kernel says so
/// (statx's `STATX_ATTR_MOUNT_ROOT`, Linux 5.8); before it, a line of /proc/self/mountinfo
/// naming it (its fifth field, with space, tab, newline and backslash in octal escapes), which
/// also names a mount hidden under a later one of its directory. Only Linux mounts a single
/// file; elsewhere it never is.
pub(crate) fn is_mount_point(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::io::Read;
        if let Some(root) = mount_root(path) {
            return root;
        }
        let Ok(real) = fs::canonicalize(path) else {
            return false;
        };
        let mut info = Vec::new();
        let read = File::open("/proc/self/mountinfo")
            .and_then(|f| f.take(16 * 1024 * 1024).read_to_end(&mut info));
        if read.is_err() {
            return false;
        }
        let real = real.as_os_str().as_encoded_bytes();
        info.split(|&b| b == b'\n')
            .filter_map(|line| line.split(|&b| b == b' ').nth(4))
            .any(|point| unescape_mount_point(point) == real)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        false
    }
}

/// What statx says of `path` being the root of a mount; none where it cannot say (a kernel
/// before 5.8, or before statx). Through syscall(2): libc's wrapper would tie the `.node` to
/// glibc 2.28.
#[cfg(target_os = "linux")]
fn mount_root(path: &Path) -> Option<bool> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut answer = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `name` is a NUL-terminated path and `answer` a statx buffer the kernel fills.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_statx,
            libc::AT_FDCWD,
            name.as_ptr(),
            0,
            0u32,
            answer.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the call succeeded, so the kernel wrote the buffer (zeroed before in any case).
    let answer = unsafe { answer.assume_init() };
    let flag = libc::STATX_ATTR_MOUNT_ROOT as u64;
    (answer.stx_attributes_mask & flag != 0).then_some(answer.stx_attributes & flag != 0)
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
#[cfg(target_os = "linux")]
fn unescape_mount_point(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let digits = field.get(i + 1..i + 4);
        match digits {
            Some(d) if field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) => {
                out.push(
                    d.iter()
                        .fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')),
                );
                i += 4;
            }
            _ => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

pub(super) fn sync_dir(dir: &Path) {
    // The rename is durable only once the directory entry is; Windows has no directory fsync.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// The directory (and any missing parent) made 0700: it holds tokens and keys. Each one made
/// is set 0700 before the next is made in it: the mode given to mkdir is cut by the umask, and
/// under 0277 a directory made 0700 was 0500, which nothing could then be written in.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return refuse_unwritable_dir(dir);
    }
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    for made in missing.into_iter().rev() {
        match builder.create(made) {
            Ok(()) => set_private_dir_mode(made)?,
            // Made by another process in the meantime: theirs, and made the same way.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && made.is_dir() => {}
            Err(e) => return Err(Error::io(made, "create directory", e)),
        }
    }
    Ok(())
}

/// A directory this process may not write in (its owner took the write bit away: `chmod 0500`,
/// `chmod -R u-w`) is left as it is: that is how a person keeps the pool from being changed.
/// Giving the owner's bits back (which an earlier build did, for directories an older build had
/// left 0500 under umask 0277) undid their chmod at the next request. The write is refused
/// before anything is made or spent, naming the directory and what to do; reads go on.
fn refuse_unwritable_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
            return Ok(());
        };
        // SAFETY: `c_path` is a NUL-terminated path that outlives the call; faccessat only reads it.
        let allowed = unsafe {
            libc::faccessat(
                libc::AT_FDCWD,
                c_path.as_ptr(),
                libc::W_OK | libc::X_OK,
                libc::AT_EACCESS,
            )
        } == 0;
        if allowed || std::io::Error::last_os_error().raw_os_error() != Some(libc::EACCES) {
            return Ok(());
        }
        let mode = fs::metadata(dir).map_or(0, |m| m.permissions().mode() & 0o7777);
        Err(Error::io(
            dir,
            "write in the pool's directory",
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "it is mode {mode:04o}, which does not let this user write in it; nothing was changed (if that was not on purpose: chmod u+w {}; or set OAUTH_POOL_PATH to a file in a directory you can write)",
                    dir.display()
                ),
            ),
        ))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// A lock file of this user's left 0400 by an older build under a umask taking the owner's own
/// bits (0277): opening it for writing is refused, and every write failed with "Permission
/// denied" after an upgrade. Set back to 0600 (it holds no secret; 0600 is what is made now).
/// Whether it was.
#[cfg(unix)]
fn restore_lock_mode(path: &Path) -> bool {
    let restored = owner_only(path);
    if restored {
        tracing::info!(path = %path.display(), "set a lock file left unwritable by an older build back to 0600");
    }
    restored
}

/// `path` made 0600 through a read-only descriptor of the file itself (no symbolic link
/// followed), only when it is a regular file this user owns. Whether it was.
#[cfg(unix)]
fn owner_only(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() || fsread::foreign_owner(&meta).is_some() {
        return false;
    }
    owner_read_write(&file).is_ok()
}

/// chmod is not cut by the umask, as the mode given to mkdir is.
pub(crate) fn set_private_dir_mode(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(dir, "set mode 0700 on directory", e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

pub(super) fn check_owner(path: &Path, meta: &fs::Metadata) -> Result<()> {
    match fsread::foreign_owner(meta) {
        Some(uid) => Err(Error::PoolInsecure {
            path: path.to_path_buf(),
            reason: format!(
                "it is owned by uid {uid}, not by this user{}",
                if is_root() {
                    format!(" (root): run this as uid {uid} (without sudo, or `sudo -u '#{uid}'`)")
                } else if uid == 0 {
                    // What an earlier version run with `sudo -E` left in a user's home.
                    format!(
                        " (made by a command run as root? give it back with `sudo chown \"$(id -u):$(id -g)\" {}`)",
                        path.display()
                    )
                } else {
                    String::new()
                }
            ),
        }),
        None => Ok(()),
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// Whether this process may make the file at `path` (the reason when not). Root making a file
/// (or the directory for it) in a directory of another user's, as `sudo -E oauth-pool add` or a
/// root service pointed at a user's pool does, left a 0600 file of root's there: that user's
/// OpenCode could no longer read its own pool, nor make a new one. The nearest directory that
/// exists on the way decides; nothing is made when it is not root's.
pub(crate) fn check_maker(path: &Path) -> std::result::Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if !is_root() {
            return Ok(());
        }
        let mut dir = parent_dir(path);
        let meta = loop {
            match fs::metadata(&dir) {
                Ok(meta) => break meta,
                Err(_) => match dir.parent() {
                    Some(up) if !up.as_os_str().is_empty() => dir = up.to_path_buf(),
                    _ => return Ok(()),
                },
            }
        };
        let uid = meta.uid();
        if uid != 0 {
            return Err(format!(
                "it does not exist yet, and {} belongs to uid {uid}: a file root made there would lock that user out of it; run this as uid {uid} (without sudo, or `sudo -u '#{uid}'`)",
                dir.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(super) fn stamp_of(meta: &fs::Metadata) -> FileStamp {
    FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        ino: {
            use std::os::unix::fs::MetadataExt;
            meta.ino()
        },
    }
}

/// What taking a lock may make when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Making {
    /// The directory (0700) and the lock file (0600).
    DirAndFile,
    /// The lock file, in a directory that is there.
    File,
    /// Nothing: only a lock file that is there is taken.
    Nothing,
}

/// A refresh token's lock (`FileStore::try_token_lock`): its file goes with it, one per token
/// generation would pile up otherwise. Removed while held, so that a process that opened it
/// meanwhile finds its lock names no file and takes the new one (`FileLock::acquire`).
#[derive(Debug)]
pub struct TokenLock {
    lock: FileLock,
    path: PathBuf,
}

impl Drop for TokenLock {
    fn drop(&mut self) {
        if names(&self.path, &self.lock.file) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// An exclusive advisory lock on a dedicated file, released on drop or when the process dies.
/// Blocking: call it from a blocking thread, never from the JS thread or a tokio worker.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Locks the file at `path` (made when missing), waiting up to `timeout`. Held, it is still
    /// the file of that name: a lock file removed by its last holder (a removed account's refresh
    /// lock, `remove_refresh_locks`) may have been locked here as it went, and that lock would
    /// be held alongside the one of the new file of that name; it is let go and the new one
    /// taken instead.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<FileLock> {
        Self::acquire_making(path, timeout, Making::DirAndFile)?.ok_or_else(|| {
            Error::io(
                path,
                "open lock file",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    /// `acquire`, making only what `making` allows when it is missing. None: the file (with
    /// `Making::Nothing`) or its directory is not there.
    fn acquire_making(path: &Path, timeout: Duration, making: Making) -> Result<Option<FileLock>> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            // Told as the whole wait, not what was left of it when this try began ("59 s").
            let Some(lock) = Self::acquire_once(path, left, making).map_err(|e| match e {
                Error::PoolBusy { path, .. } => Error::PoolBusy {
                    path,
                    seconds: timeout.as_secs(),
                },
                other => other,
            })?
            else {
                return Ok(None);
            };
            if names(path, &lock.file) {
                return Ok(Some(lock));
            }
        }
    }

    fn acquire_once(path: &Path, timeout: Duration, making: Making) -> Result<Option<FileLock>> {
        if making == Making::DirAndFile {
            create_private_dir(&parent_dir(path))?;
        } else {
            // The aidevops lock (a directory made beside the pool) and the write that follow
            // need it writable too: said before a lock file is made or its mode touched.
            refuse_unwritable_dir(&parent_dir(path))?;
        }
        let mut opts = OpenOptions::new();
        opts.read(true)
            .write(true)
            .create(making != Making::Nothing)
            .truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
        }
        let file = opts.open(path);
        #[cfg(unix)]
        let file = match file {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) && restore_lock_mode(path) => {
                opts.open(path)
            }
            opened => opened,
        };
        let file = match file {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && making != Making::DirAndFile => {
                return Ok(None)
            }
            opened => opened,
        };
        let file = file.map_err(|e| match e.raw_os_error() {
            #[cfg(unix)]
            Some(libc::ELOOP) => Error::PoolInsecure {
                path: path.to_path_buf(),
                reason: "the lock file is a symbolic link".into(),
            },
            // A directory cannot be opened for writing: not a regular file, as a FIFO there is.
            #[cfg(unix)]
            Some(libc::EISDIR) => Error::PoolInsecure {
                path: path.to_path_buf(),
                reason: "the lock file is not a regular file".into(),
            },
            // One of another user's (root's, left by a command run with sudo) that we cannot
            // open: what to do about it, not just "Permission denied".
            #[cfg(unix)]
            Some(libc::EACCES) => match fs::symlink_metadata(path)
                .ok()
                .and_then(|m| fsread::foreign_owner(&m))
            {
                Some(uid) => Error::PoolInsecure {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the lock file is owned by uid {uid}, not by this user: remove it (it holds no secret, and is made anew)"
                    ),
                },
                None => Error::io(path, "open lock file", e),
            },
            _ => Error::io(path, "open lock file", e),
        })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(path, "stat lock file", e))?;
        if !meta.is_file() {
            return Err(Error::PoolInsecure {
                path: path.to_path_buf(),
                reason: "the lock file is not a regular file".into(),
            });
        }
        // Another user's, left open to writing in a shared directory: whoever owns it can hold
        // it for ever, and every write here would wait out its minute as if a process of ours did.
        if let Some(uid) = fsread::foreign_owner(&meta) {
            return Err(Error::PoolInsecure {
                path: path.to_path_buf(),
                reason: format!(
                    "the lock file is owned by uid {uid}, not by this user: remove it (it holds no secret, and is made anew)"
                ),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Just made under a umask that took the owner's bits (0277): the next open for
            // writing would be refused.
            if meta.permissions().mode() & 0o600 != 0o600 {
                owner_read_write(&file).map_err(|e| Error::io(path, "set mode 0600", e))?;
            }
        }
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Some(FileLock { file })),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(path, "lock", e)),
            }
            if start.elapsed() >= timeout {
                return Err(Error::PoolBusy {
                    path: path.to_path_buf(),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

/// A file beside the pool, read as one we did not just write (regular, bounded, never blocking),
/// if it is this user's: another user's `.bak` planted in a shared directory was offered as the
/// pool's last good copy, to be restored over it.
fn read_own(path: &Path) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let file = fsread::open_regular(path, false).ok()?;
    let meta = file.metadata().ok()?;
    if fsread::foreign_owner(&meta).is_some() {
        return None;
    }
    fsread::read_capped(&file, MAX_FILE_BYTES).ok()
}

/// Whether `path` names the open `file` (not a file made since under that name, nor nothing).
fn names(path: &Path, file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::symlink_metadata(path)) {
            (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, file);
        true
    }
}

/// The accounts' refresh lock files beside `pool_path` that no account of `pool` uses: those of
/// removed or renamed accounts. Run after every write, not only after one that removes an
/// account: accounts removed by another program (the aidevops plugin, an editor, `jq`) left
/// their files for good, since no write of ours ever removed anything. The look costs one
/// listing of the directory, as the temp files' sweep does. Each is removed only while this
/// process holds its lock and its name still names the file locked: a refresh under way keeps
/// its file (removed by a later write), and a process that had opened it to wait finds, once it
/// holds it, that the name is gone, and locks the file made anew instead (`FileLock::acquire`).
/// Without this a pool used for years kept one file for every account it ever held.
fn remove_refresh_locks(store: &FileStore, pool: &Pool) {
    let dir = parent_dir(&store.path);
    let kept: std::collections::HashSet<PathBuf> = pool
        .accounts()
        .map(|a| store.refresh_lock_path(&a.email))
        .collect();
    let prefix = format!(
        "{}.",
        store.path.file_name().unwrap_or_default().to_string_lossy()
    );
    let Ok(entries) = fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // A token's lock left by a process that died holding it goes the same way.
        let is_refresh_lock = name.strip_prefix(&prefix).is_some_and(|rest| {
            [".refresh.lock", ".token.lock"].iter().any(|suffix| {
                rest.strip_suffix(suffix).is_some_and(|tag| {
                    tag.len() == 12 && tag.bytes().all(|b| b.is_ascii_hexdigit())
                })
            })
        });
        let path = entry.path();
        if !is_refresh_lock || kept.contains(&path) {
            continue;
        }
        let Ok(file) = fsread::open_regular(&path, false) else {
            continue;
        };
        if file.try_lock().is_ok() {
            if names(&path, &file) {
                let _ = fs::remove_file(&path);
            }
            let _ = file.unlock();
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

/// `text` as one POSIX shell word a person can paste: as it is when it holds only characters no
/// shell reads specially, else in single quotes. A path with a space broke the `cp` it was put in.
pub(crate) fn shell_word(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@._+%=:,/-".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::Account;
    use serde_json::json;

    fn tmp_store() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("sub").join("oauth-pool.json"));
        (dir, store)
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_token_lock_is_held_once_and_its_file_goes_with_it() {
        let (_d, store) = tmp_store();
        store.save(&Pool::default()).unwrap();
        let tag = "0123456789abcdef0123456789abcdef";
        let first = store.try_token_lock(tag).unwrap().expect("free");
        let path = store.token_lock_path(tag);
        assert!(path.exists());
        assert!(store.try_token_lock(tag).unwrap().is_none(), "held");
        assert!(
            store.try_token_lock("fedcba9876543210").unwrap().is_some(),
            "another token's"
        );
        drop(first);
        assert!(!path.exists(), "removed as it is let go");
        assert!(store.try_token_lock(tag).unwrap().is_some());
    }

    #[test]
    fn a_pool_no_reader_would_take_is_not_written() {
        let (_d, store) = tmp_store();
        store.save(&Pool::default()).unwrap();
        let before = fs::read(store.path()).unwrap();
        let err = store
            .update(|p| {
                let big = "x".repeat(MAX_FILE_BYTES as usize + 1);
                p.extra
                    .insert("_big".into(), serde_json::Value::String(big));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.code(), "POOL_INVALID", "{err}");
        assert_eq!(
            fs::read(store.path()).unwrap(),
            before,
            "the last good file stays"
        );
    }

    #[test]
    fn missing_file_is_empty_pool() {
        let (_d, store) = tmp_store();
        assert_eq!(store.load().unwrap().anthropic.len(), 0);
    }

    /// The check before each request (through the directory watch on Linux) sees every way the file
    /// changes as soon as the path's own stat would.
    #[test]
    fn the_stamp_follows_every_change_of_the_file_at_once() {
        let (dir, store) = tmp_store();
        let path = store.path().to_path_buf();
        let by_path = || fs::symlink_metadata(&path).ok().map(|m| stamp_of(&m));
        assert_eq!(store.stamp(), None);
        store.save(&Pool::default()).unwrap();
        let first = store.stamp();
        assert!(first.is_some());
        assert_eq!(store.stamp(), by_path());
        assert_eq!(store.stamp(), first, "unchanged");
        #[cfg(target_os = "linux")]
        {
            let name = path.file_name().unwrap();
            let watched = || super::super::lock(&store.watch).unchanged(name).is_some();
            assert!(watched(), "checked through the watch");
            // Other files in the directory come and go: the watch reports once and ends (see
            // `DirWatch`), so the next check looks the path up, finds the file as it was, and
            // watches again.
            let neighbour = path.with_file_name("neighbour.json");
            fs::write(&neighbour, "{}").unwrap();
            fs::remove_file(&neighbour).unwrap();
            assert!(!watched(), "looked up once after a neighbour's change");
            assert_eq!(store.stamp(), first, "and the file is as it was");
            assert!(watched(), "watched again");
        }

        // Replaced by a rename (what every writer of ours does), twice in a row.
        for n in 0..2 {
            let other = dir.path().join(format!("other-{n}.json"));
            fs::write(
                &other,
                format!("{{\"version\":1,\"anthropic\":[],\"n\":{n}}}"),
            )
            .unwrap();
            fs::rename(&other, &path).unwrap();
            assert_eq!(store.stamp(), by_path(), "rename {n}");
            assert_ne!(store.stamp(), first);
        }

        // Rewritten by another writer the way ours write (a .bak hard link, then a rename).
        let writer = FileStore::new(&path);
        for n in 0..3 {
            let before = store.stamp();
            writer
                .update(|p| {
                    p.extra.insert("n".into(), json!(n));
                    Ok(())
                })
                .unwrap();
            assert_eq!(store.stamp(), by_path(), "write {n}");
            assert_ne!(store.stamp(), before, "write {n}");
        }

        // Edited in place.
        let before = store.stamp();
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b" ")
            .unwrap();
        assert_eq!(store.stamp(), by_path());
        assert_ne!(store.stamp(), before);

        // With a second name, replaced under the first.
        let link = dir.path().join("hard-link.json");
        fs::hard_link(&path, &link).unwrap();
        let linked = store.stamp();
        let other = dir.path().join("other-linked.json");
        fs::write(&other, "{\"version\":1,\"anthropic\":[]}").unwrap();
        fs::rename(&other, &path).unwrap();
        assert_eq!(store.stamp(), by_path());
        assert_ne!(store.stamp(), linked);

        // Gone.
        fs::remove_file(&path).unwrap();
        assert_eq!(store.stamp(), None);
        assert_eq!(store.stamp(), None);
    }

    /// The pool's directory moved away and another put in its place: seen at once, and so are
    /// the changes made in the new one afterwards.
    #[test]
    fn a_replaced_directory_is_seen_at_once() {
        let (dir, store) = tmp_store();
        store.save(&Pool::default()).unwrap();
        let by_path = || {
            fs::symlink_metadata(store.path())
                .ok()
                .map(|m| stamp_of(&m))
        };
        let old = store.stamp();
        let sub = store.path().parent().unwrap().to_path_buf();
        fs::rename(&sub, dir.path().join("moved")).unwrap();
        assert_eq!(store.stamp(), None);
        fs::create_dir(&sub).unwrap();
        fs::write(
            store.path(),
            "{\"version\":1,\"anthropic\":[],\"other\":true}",
        )
        .unwrap();
        assert_eq!(store.stamp(), by_path());
        assert_ne!(store.stamp(), old);
        let other = sub.join("next.json");
        fs::write(&other, "{\"version\":1,\"anthropic\":[],\"next\":1}").unwrap();
        let before = store.stamp();
        fs::rename(&other, store.path()).unwrap();
        assert_eq!(store.stamp(), by_path());
        assert_ne!(store.stamp(), before);
    }

    /// Whatever sits at the path is looked at, never opened for reading: a FIFO does not block.
    #[cfg(unix)]
    #[test]
    fn the_stamp_of_a_fifo_does_not_block() {
        let (_d, store) = tmp_store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(store.path().as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let first = store.stamp();
        assert!(first.is_some());
        assert_eq!(store.stamp(), first);
        assert!(matches!(store.load(), Err(Error::PoolInsecure { .. })));
    }

    #[test]
    fn an_update_says_what_it_wrote_as_a_read_of_it_would() {
        let (_d, store) = tmp_store();
        let ((), written) = store
            .update_written(|p| {
                p.upsert(Account::new_oauth("a@x", "a".into(), "r".into(), 1, 1));
                p.extra
                    .insert("note".into(), serde_json::json!({ "kept": [1, 2] }));
                Ok(())
            })
            .unwrap();
        let Written::Generation(pool, stamp) = written else {
            panic!("a changed pool is written: {written:?}");
        };
        let (read, read_stamp) = store.load_stamped().unwrap();
        assert_eq!(pool.to_bytes(), read.to_bytes());
        assert_eq!(Some(stamp), read_stamp);
        assert_eq!(Some(stamp), store.stamp(), "the path's own stat agrees");
        let ((), again) = store.update_written(|_| Ok(())).unwrap();
        assert!(matches!(again, Written::Unchanged), "{again:?}");
        assert_eq!(Some(stamp), store.stamp(), "nothing was rewritten");
        // A change a read does not take as it stands in memory: an expiry past what a read
        // accepts makes the entry unreadable, in the generation kept as in the file.
        let ((), written) = store
            .update_written(|p| {
                p.find_mut("a@x").unwrap().expires = Some(5_000_000_000_000_000);
                Ok(())
            })
            .unwrap();
        let Written::Generation(pool, _) = written else {
            panic!("a changed pool is written: {written:?}");
        };
        let read = store.load().unwrap();
        assert_eq!(pool.to_bytes(), read.to_bytes());
        let unreadable = |p: &Pool| {
            p.invalid_entries()
                .map(|(i, r)| (i, r.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(unreadable(&pool), unreadable(&read));
        assert_eq!(unreadable(&pool).len(), 1);
    }

    #[test]
    fn a_deleted_pool_file_never_costs_the_backup_of_its_accounts() {
        let (_d, store) = tmp_store();
        let add = |email: &str| {
            store
                .update(|p| {
                    p.upsert(Account::new_oauth(email, "a".into(), "r".into(), 1, 1));
                    Ok(())
                })
                .unwrap()
        };
        add("a@x");
        add("b@x"); // the .bak now holds a@x
        fs::remove_file(store.path()).unwrap();
        assert_eq!(
            store.load().unwrap().accounts().count(),
            0,
            "missing: empty"
        );
        // A new login makes the file anew, a second write would have replaced the .bak.
        add("new@x");
        add("other@x");
        let dir = store.path().parent().unwrap();
        let kept: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".json.bak-"))
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        let earlier = Pool::parse(&fs::read(&kept[0]).unwrap()).unwrap();
        assert!(earlier.find("a@x").is_some());
        #[cfg(unix)]
        assert_eq!(mode(&kept[0]), 0o600);
        let count = || {
            fs::read_dir(dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(".json.bak-"))
                .count()
        };
        // Making a file anew with no accounts behind it keeps nothing aside.
        fs::remove_file(store.path()).unwrap();
        fs::write(store.backup_path(), br#"{"anthropic":[]}"#).unwrap();
        add("third@x");
        assert_eq!(count(), 1);
        // The same backup behind a file deleted again (restored from that copy, deleted again):
        // it is kept already, once is enough; a different one is kept too.
        let earlier_bytes = fs::read(&kept[0]).unwrap();
        for round in 0..3 {
            fs::remove_file(store.path()).unwrap();
            fs::write(store.backup_path(), &earlier_bytes).unwrap();
            add(&format!("again{round}@x"));
        }
        assert_eq!(count(), 1, "one copy of the same backup");
        assert_eq!(fs::read(&kept[0]).unwrap(), earlier_bytes);
        for round in 0..2 {
            fs::remove_file(store.path()).unwrap();
            let mut other = earlier.clone();
            other.upsert(Account::new_oauth(
                &format!("d{round}@x"),
                "a".into(),
                "r".into(),
                1,
                1,
            ));
            fs::write(store.backup_path(), other.to_bytes()).unwrap();
            // Left readable by others (a copy, a restore): kept aside private all the same.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(store.backup_path(), fs::Permissions::from_mode(0o644))
                    .unwrap();
            }
            add(&format!("later{round}@x"));
        }
        assert_eq!(count(), 3, "each different backup is kept");
        #[cfg(unix)]
        for kept in fs::read_dir(dir).unwrap().flatten() {
            if kept.file_name().to_string_lossy().contains(".json.bak-") {
                assert_eq!(mode(&kept.path()), 0o600, "{:?}", kept.path());
            }
        }
    }

    #[test]
    fn update_round_trip_with_private_modes_and_backup() {
        let (_d, store) = tmp_store();
        store
            .update(|p| {
                p.upsert(Account::new_oauth("a@x", "a".into(), "r".into(), 1, 1));
                Ok(())
            })
            .unwrap();
        store
            .update(|p| {
                p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        let pool = store.load().unwrap();
        assert_eq!(pool.accounts().count(), 2);
        let bak = Pool::parse(&fs::read(store.backup_path()).unwrap()).unwrap();
        assert_eq!(bak.accounts().count(), 1);
        #[cfg(unix)]
        {
            assert_eq!(mode(store.path()), 0o600);
            assert_eq!(mode(&store.backup_path()), 0o600);
            assert_eq!(mode(&store.lock_path()), 0o600);
            assert_eq!(mode(store.path().parent().unwrap()), 0o700);
        }
        let leftovers: Vec<_> = fs::read_dir(store.path().parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn unchanged_update_writes_nothing() {
        let (_d, store) = tmp_store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let original = b"{\"anthropic\":[],\"x\":1}";
        fs::write(store.path(), original).unwrap();
        store.update(|_| Ok(())).unwrap();
        assert_eq!(fs::read(store.path()).unwrap(), original);
    }

    /// The bookkeeping after a request (or a cooldown, a refresh's tokens, an edit of named
    /// accounts) that met a pool directory removed meanwhile (`rm -rf ~/.aidevops` to start over,
    /// a sync tool) took the lock, and taking it made the directory and the lock file again:
    /// a directory holding a lock file and nothing else was left behind.
    #[test]
    fn an_update_of_accounts_makes_nothing_for_a_pool_that_is_gone() {
        let (_d, store, whole) = store_holding_a();
        let dir = store.path().parent().unwrap().to_path_buf();
        let touch = |p: &mut Pool| {
            let found = p.find_mut("a@x").map(|a| a.priority = Some(7)).is_some();
            // What a change of accounts must not do for a file that is gone: it is not written.
            p.extra.insert("_stray".into(), json!(1));
            Ok((p.file_missing, found))
        };
        fs::remove_dir_all(&dir).unwrap();
        let ((missing, found), written) = store.update_existing(touch).unwrap();
        assert!(
            missing && !found,
            "the change ran on the empty pool of a missing file"
        );
        assert!(matches!(written, Written::Unchanged));
        assert!(!dir.exists(), "the directory was made again");
        let err = store
            .update_existing(|p| p.remove("a@x").map(|_| ()))
            .unwrap_err();
        assert_eq!(err.code(), "ACCOUNT_NOT_FOUND", "the change's own answer");
        assert!(!dir.exists());

        // The directory is there, the pool file and its lock file are not: no lock file is made.
        create_private_dir(&dir).unwrap();
        store.update_existing(touch).unwrap();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing made in it");

        // The file back, without its lock file (copied in, or written by another program): it is
        // updated, and its lock file made beside it.
        fs::write(store.path(), &whole).unwrap();
        let ((missing, found), _) = store.update_existing(touch).unwrap();
        assert!(!missing && found);
        assert!(store.lock_path().exists());
        assert_eq!(store.load().unwrap().find("a@x").unwrap().priority, Some(7));

        // A pool made on purpose (a login, an import, `savePool`) still makes what it needs.
        fs::remove_dir_all(&dir).unwrap();
        store
            .update(|p| {
                p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        assert!(store.load().unwrap().find("b@x").is_some());
        #[cfg(unix)]
        {
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(store.path()), 0o600);
            assert_eq!(mode(&store.lock_path()), 0o600);
        }
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn mount_points_are_told_from_files_and_directories_on_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("oauth-pool.json");
        fs::write(&file, "{}").unwrap();
        assert!(!is_mount_point(&file));
        assert!(!is_mount_point(dir.path()));
        assert!(is_mount_point(Path::new("/proc")));
        assert!(!is_mount_point(&dir.path().join("missing")));
        assert_eq!(
            unescape_mount_point(br"/a\040b\011c\134d"),
            b"/a b\tc\\d".to_vec()
        );
    }

    /// The trial write before a refresh asked for leaves nothing behind and changes nothing; a
    /// pool with no file has nothing to try.
    #[test]
    fn a_trial_write_leaves_the_directory_as_it_was() {
        let (_d, store) = tmp_store();
        store.try_write_room(Trial::Refresh).unwrap();
        store.try_write_room(Trial::Login).unwrap();
        assert!(!store.path().parent().unwrap().exists(), "nothing made");
        let (_d, store, whole) = store_holding_a();
        let dir = store.path().parent().unwrap().to_path_buf();
        let names = |d: &Path| {
            let mut n: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            n.sort();
            n
        };
        let listed = names(&dir);
        store.try_write_room(Trial::Refresh).unwrap();
        assert_eq!(names(&dir), listed);
        assert_eq!(fs::read(store.path()).unwrap(), whole);
        // A login for a pool to be made is tried in its directory, and leaves it as it was.
        fs::remove_file(store.path()).unwrap();
        let listed = names(&dir);
        store.try_write_room(Trial::Login).unwrap();
        assert_eq!(names(&dir), listed);
        // One whose directory is not there yet, in the directory above: nothing made or left.
        let deeper = FileStore::new(dir.join("not-yet").join("deeper").join("oauth-pool.json"));
        deeper.try_write_room(Trial::Login).unwrap();
        assert_eq!(names(&dir), listed);
    }

    /// Found by a review: another user's aidevops lock directory in a shared (sticky) directory,
    /// which this user cannot remove, held every write for 15 s and failed it `POOL_BUSY` ("locked
    /// by another process"), after a login's code was spent. It is refused at once, as another
    /// user's lock file is, and before the code goes out.
    #[cfg(unix)]
    #[test]
    fn another_users_aidevops_lock_directory_is_refused_at_once() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (_d, store, _) = store_holding_a();
        let planted = super::super::legacy_lock::lock_dir(store.path());
        fs::create_dir(&planted).unwrap();
        fs::write(
            planted.join("owner"),
            format!("{{\"pid\":{},\"ts\":9999999999999}}", std::process::id()),
        )
        .unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let err = store.try_write_room(Trial::Login).unwrap_err();
        assert_eq!(err.code(), "POOL_INSECURE", "{err}");
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let started = Instant::now();
        let err = store
            .update(|p| {
                p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.code(), "POOL_INSECURE", "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Its own (this user's) is a lock like any other: waited for, then taken.
        std::os::unix::fs::chown(&planted, Some(0), Some(0)).unwrap();
        fs::remove_file(planted.join("owner")).unwrap();
        fs::remove_dir(&planted).unwrap();
        store.try_write_room(Trial::Login).unwrap();

        // An empty one, another user's: refused while it may be a writer's just made, removed
        // once past the stale limit (a run under sudo that crashed), as a stale lock of ours is.
        fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let err = store.try_write_room(Trial::Login).unwrap_err();
        assert_eq!(err.code(), "POOL_INSECURE", "{err}");
        fs::File::open(&planted)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
        store.try_write_room(Trial::Login).unwrap();
        assert!(!planted.exists());
    }

    /// Found by a review: a login's trial passed, its code was spent, and the write failed on
    /// the lock (a directory, a FIFO, a link) or on a directory it could not make (under a link
    /// to nothing, or a file), and the login lived only in the process. Each is refused before
    /// the code is sent now; a lock another process holds is a lock all the same.
    #[cfg(unix)]
    #[test]
    fn a_login_trial_refuses_a_lock_or_a_directory_the_write_would_fail_on() {
        let (_d, store, _) = store_holding_a();
        let lock = store.lock_path();
        let refused = |store: &FileStore, what: &str| {
            let err = store.try_write_room(Trial::Login).unwrap_err();
            assert!(
                matches!(err.code(), "POOL_IO" | "POOL_INSECURE"),
                "{what}: {err}"
            );
        };
        for make in [
            &(|p: &Path| fs::create_dir(p).unwrap()) as &dyn Fn(&Path),
            &|p: &Path| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            },
            &|p: &Path| std::os::unix::fs::symlink("/nonexistent/elsewhere", p).unwrap(),
        ] {
            let _ = fs::remove_file(&lock);
            let _ = fs::remove_dir(&lock);
            make(&lock);
            refused(&store, "lock");
            // The refresh's trial does not look at the lock: its write waits for it as ever.
            store.try_write_room(Trial::Refresh).unwrap();
        }
        let _ = fs::remove_file(&lock);
        let _ = fs::remove_dir(&lock);
        let held = FileLock::acquire(&lock, LOCK_TIMEOUT).unwrap();
        store.try_write_room(Trial::Login).unwrap();
        drop(held);
        store.try_write_room(Trial::Login).unwrap();

        let dir = store.path().parent().unwrap().to_path_buf();
        std::os::unix::fs::symlink(dir.join("gone"), dir.join("dangling")).unwrap();
        refused(
            &FileStore::new(dir.join("dangling").join("oauth-pool.json")),
            "a link to nothing",
        );
        refused(
            &FileStore::new(dir.join("dangling").join("deeper").join("oauth-pool.json")),
            "under a link to nothing",
        );
        refused(
            &FileStore::new(store.path().join("oauth-pool.json")),
            "under a file",
        );
    }

    /// A store whose file holds account a@x, and the file's bytes.
    fn store_holding_a() -> (tempfile::TempDir, FileStore, Vec<u8>) {
        let (d, store) = tmp_store();
        store
            .update(|p| {
                p.upsert(Account::new_api_key("a@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        let whole = fs::read(store.path()).unwrap();
        (d, store, whole)
    }

    /// Another program finishing its write of `whole` in place over the file, `after` from now.
    fn finish_write_later(
        store: &FileStore,
        whole: &[u8],
        after: Duration,
    ) -> std::thread::JoinHandle<()> {
        let (path, whole) = (store.path().to_path_buf(), whole.to_vec());
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let mut f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all(&whole).unwrap();
        })
    }

    /// Another program writing the file in place leaves it cut short for a moment: a read (and
    /// a write's re-read) waits for the rest, and a file left so is refused once the wait ends,
    /// then at once while it stays as it is.
    #[test]
    fn a_file_cut_short_for_a_moment_is_waited_for() {
        let (_d, store, whole) = store_holding_a();
        fs::write(store.path(), &whole[..whole.len() / 2]).unwrap();
        let writer = finish_write_later(&store, &whole, Duration::from_millis(100));
        store
            .update(|p| {
                p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        writer.join().unwrap();
        assert!(store.load().unwrap().find("a@x").is_some());
        let bak = Pool::parse(&fs::read(store.backup_path()).unwrap()).unwrap();
        assert!(bak.find("a@x").is_some(), "the backup is the whole file");
        fs::write(store.path(), b"{").unwrap();
        let started = Instant::now();
        assert_eq!(store.load().unwrap_err().code(), "POOL_CORRUPT");
        assert!(started.elapsed() >= SETTLE_LIMIT);
        assert_eq!(store.load().unwrap_err().code(), "POOL_CORRUPT");
        fs::write(store.path(), &whole).unwrap();
        assert!(store.load().unwrap().find("a@x").is_some());
    }

    /// A look at another pool (`peek`, doctor's comparison of logins) takes a file that does
    /// not parse as it is: it is not read again for `SETTLE_LIMIT`, whose end would have marked
    /// it left bad.
    #[test]
    fn a_peek_does_not_wait_for_a_file_that_does_not_parse() {
        let (_d, store) = tmp_store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        fs::write(store.path(), b"{").unwrap();
        assert_eq!(store.peek().unwrap_err().code(), "POOL_CORRUPT");
        assert!(
            !super::super::lock(left_bad()).contains_key(store.path()),
            "not waited for"
        );
        // The pool in use still waits, and then knows it left bad.
        assert_eq!(store.load().unwrap_err().code(), "POOL_CORRUPT");
        assert!(super::super::lock(left_bad()).contains_key(store.path()));
    }

    /// A file left bad is known so to the whole process: another store of the same path (each
    /// call of the API, each step of `doctor` opens one) refuses it at once, as the first store
    /// does, instead of waiting the whole limit again.
    #[test]
    fn a_file_left_bad_is_refused_at_once_by_every_store_of_its_path() {
        let (_d, store, whole) = store_holding_a();
        fs::write(store.path(), b"{").unwrap();
        assert_eq!(store.load().unwrap_err().code(), "POOL_CORRUPT");
        // Repaired well within the limit: a store that waited again would read it whole.
        let repair = finish_write_later(&store, &whole, SETTLE_LIMIT / 2);
        let another = FileStore::new(store.path());
        assert_eq!(another.load().unwrap_err().code(), "POOL_CORRUPT");
        repair.join().unwrap();
        assert!(another.load().unwrap().find("a@x").is_some());
    }

    #[test]
    fn corrupt_files_are_refused_and_untouched() {
        let (_d, store) = tmp_store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let cases: Vec<Vec<u8>> = vec![
            b"{\"anthropic\": [".to_vec(),
            Vec::new(),
            vec![0u8; 64],
            // UTF-16 (a byte order mark of UTF-8 is read past: `Pool::parse`).
            b"\xFF\xFE{\0}\0".to_vec(),
            b"[]".to_vec(),
            b"42".to_vec(),
            b"{\"anthropic\": 5}".to_vec(),
        ];
        for case in cases {
            fs::write(store.path(), &case).unwrap();
            let err = store.load().unwrap_err();
            assert_eq!(err.code(), "POOL_CORRUPT", "{case:?}");
            let err = store
                .update(|p| {
                    p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                    Ok(())
                })
                .unwrap_err();
            assert_eq!(err.code(), "POOL_CORRUPT");
            assert!(store.save(&Pool::default()).is_err());
            assert_eq!(fs::read(store.path()).unwrap(), case);
        }
    }

    /// A newer version of the package on the same file (an npm update while OpenCode sessions
    /// keep the version they started with) may change the format: this one then refuses the
    /// file, writes nothing and says to upgrade, never to move the file aside.
    #[test]
    fn a_pool_of_a_later_format_is_refused_untouched_with_what_to_do() {
        let (_d, store) = tmp_store();
        // Two writes: a good .bak of this format is beside it, as after the newer one's first.
        for email in ["a@x", "b@x"] {
            store
                .update(|p| {
                    p.upsert(Account::new_api_key(email, "k".into(), 1));
                    Ok(())
                })
                .unwrap();
        }
        let later = b"{\"version\": 2, \"anthropic\": [{\"email\": \"b@x\"}]}".to_vec();
        fs::write(store.path(), &later).unwrap();
        let err = store.load().unwrap_err();
        assert_eq!(err.code(), "POOL_CORRUPT");
        let msg = err.to_string();
        assert!(
            msg.contains("pool format 2") && msg.contains("upgrade"),
            "{msg}"
        );
        assert!(
            !msg.contains("cp "),
            "no older copy restored over it: {msg}"
        );
        let change = store.update(|p| {
            p.upsert(Account::new_api_key("c@x", "k".into(), 1));
            Ok(())
        });
        assert_eq!(change.unwrap_err().code(), "POOL_CORRUPT");
        assert!(store.save(&Pool::default()).is_err());
        assert_eq!(fs::read(store.path()).unwrap(), later);
    }

    #[test]
    fn corrupt_error_points_at_the_backup() {
        let (_d, store) = tmp_store();
        store
            .update(|p| {
                p.upsert(Account::new_api_key("b@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        store
            .update(|p| {
                p.upsert(Account::new_api_key("c@x", "k".into(), 1));
                Ok(())
            })
            .unwrap();
        fs::write(store.path(), b"{").unwrap();
        let msg = store.load().unwrap_err().to_string();
        assert!(msg.contains(".bak"), "{msg}");
        assert!(
            msg.contains(&format!(
                "`cp {}.bak {}`",
                store.path().display(),
                store.path().display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn a_path_is_one_shell_word() {
        assert_eq!(
            shell_word("/home/a/.aidevops/pool.json"),
            "/home/a/.aidevops/pool.json"
        );
        assert_eq!(shell_word("/home/a b/pool.json"), "'/home/a b/pool.json'");
        assert_eq!(shell_word("/tmp/it's;rm"), "'/tmp/it'\\''s;rm'");
        assert_eq!(shell_word("$HOME/p"), "'$HOME/p'");
        assert_eq!(shell_word(""), "''");
    }

    /// Root (`sudo -E`, a root service) never makes a file where another user keeps their pool:
    /// the nearest directory that exists decides, and nothing is made when it is not root's.
    #[cfg(unix)]
    #[test]
    fn root_makes_no_file_in_another_users_directory() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let (d, store) = tmp_store();
        let theirs = d.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        for path in [theirs.join("pool.json"), theirs.join("a/b/pool.json")] {
            let why = check_maker(&path).unwrap_err();
            assert!(why.contains("belongs to uid 65534"), "{why}");
            let err = FileStore::new(&path)
                .update(|p| {
                    p.upsert(Account::new_api_key("a@x", "k".into(), 1));
                    Ok(())
                })
                .unwrap_err();
            assert_eq!(err.code(), "POOL_INSECURE");
        }
        assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0, "nothing made");
        assert!(check_maker(store.path()).is_ok(), "root's own directory");
        store.save(&Pool::default()).unwrap();
    }

    /// The README's table: a lock file that is not a regular file is `POOL_INSECURE`. A
    /// directory there was `POOL_IO` ("Is a directory"), a FIFO `POOL_INSECURE`.
    #[cfg(unix)]
    #[test]
    fn a_lock_file_that_is_a_directory_is_refused_as_a_fifo_is() {
        let (_d, store) = tmp_store();
        store.save(&Pool::default()).unwrap();
        let lock = store.lock_path();
        let _ = fs::remove_file(&lock);
        fs::create_dir(&lock).unwrap();
        let err = store.update(|_| Ok(())).unwrap_err();
        assert_eq!(err.code(), "POOL_INSECURE", "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlink_is_refused_and_wide_modes_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let (d, store) = tmp_store();
        fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        let real = d.path().join("real.json");
        fs::write(&real, b"{\"anthropic\": []}").unwrap();
        std::os::unix::fs::symlink(&real, store.path()).unwrap();
        assert_eq!(store.load().unwrap_err().code(), "POOL_INSECURE");
        assert_eq!(
            store.save(&Pool::default()).unwrap_err().code(),
            "POOL_INSECURE"
        );
        assert_eq!(
            store.update(|_| Ok(())).unwrap_err().code(),
            "POOL_INSECURE"
        );
        // Nothing was made beside a path we refuse (`/dev/null.lock` once was).
        assert!(!store.lock_path().exists());
        fs::remove_file(store.path()).unwrap();
        fs::write(store.path(), b"{\"anthropic\": []}").unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        store.load().unwrap();
        assert_eq!(mode(store.path()), 0o600);
        // A path pointed at a file that is no pool (as `--path /etc/passwd` did, as root): the
        // file is refused and left exactly as it was, its mode too.
        fs::write(store.path(), b"root:x:0:0:root:/root:/bin/bash\n").unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(store.load().unwrap_err().code(), "POOL_CORRUPT");
        assert_eq!(mode(store.path()), 0o644);
        // A JSON object that is some other program's file reads as a pool with no accounts, and
        // is left as it was too; aidevops's file of other providers' logins is tightened.
        fs::write(store.path(), br#"{"name": "x", "version": "1.0.0"}"#).unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(store.load().unwrap().anthropic.is_empty());
        assert_eq!(mode(store.path()), 0o644);
        fs::write(store.path(), br#"{"openai": [], "_note": "x"}"#).unwrap();
        fs::set_permissions(store.path(), fs::Permissions::from_mode(0o644)).unwrap();
        store.load().unwrap();
        assert_eq!(mode(store.path()), 0o600);
    }

    #[test]
    fn orphaned_temps_are_cleaned_and_foreign_files_kept() {
        let (_d, store) = tmp_store();
        let dir = store.path().parent().unwrap().to_path_buf();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(".oauth-pool.json.abc123.tmp"), b"tokens").unwrap();
        fs::write(dir.join("other.tmp"), b"keep").unwrap();
        store
            .save(&Pool::from_value(json!({"anthropic": []})).unwrap())
            .unwrap();
        assert!(!dir.join(".oauth-pool.json.abc123.tmp").exists());
        assert!(dir.join("other.tmp").exists());
    }

    #[test]
    fn a_kept_tokens_writer_s_temp_goes_once_its_process_is_gone() {
        let (_d, store) = tmp_store();
        store.save(&Pool::default()).unwrap();
        let dir = store.path().parent().unwrap().to_path_buf();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let orphan = dir.join(format!(".oauth-pool.json.unsaved-{gone}.a1b2c3.tmp"));
        let live = dir.join(format!(
            ".oauth-pool.json.unsaved-{}.d4e5f6.tmp",
            std::process::id()
        ));
        fs::write(&orphan, b"tokens").unwrap();
        fs::write(&live, b"tokens").unwrap();
        store.save(&Pool::default()).unwrap();
        assert!(!orphan.exists(), "left by a writer that died mid-write");
        assert!(live.exists(), "a running writer's, outside the pool's lock");
    }

    #[test]
    fn a_kept_tokens_writer_s_temp_cut_before_its_rename_lands_its_tokens() {
        let (_d, store) = tmp_store();
        store
            .update(|p| {
                p.upsert(Account::new_oauth("a@x", "a0".into(), "t0".into(), 1, 1));
                Ok(())
            })
            .unwrap();
        let dir = store.path().parent().unwrap().to_path_buf();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let orphan = dir.join(format!(".oauth-pool.json.unsaved-{gone}.a1b2c3.tmp"));
        let tokens = json!({"version": 1, "tokens": [{
            "email": "a@x", "access": "a1", "refresh": "t1",
            "expires": 1_900_000_000_000i64, "presented": "t0",
        }]});
        fs::write(&orphan, tokens.to_string()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&orphan, fs::Permissions::from_mode(0o600)).unwrap();
        }
        store.update(|_| Ok(())).unwrap();
        let pool = store.load().unwrap();
        let a = pool.find("a@x").unwrap();
        assert_eq!(
            a.refresh.as_ref().unwrap().expose(),
            "t1",
            "the cut write's tokens taken"
        );
        assert_eq!(a.access.as_ref().unwrap().expose(), "a1");
        assert!(!orphan.exists(), "gone once its tokens landed");
    }

    #[test]
    fn every_write_takes_the_tokens_kept_beside_the_pool() {
        let (_d, store) = tmp_store();
        store
            .update(|p| {
                p.upsert(Account::new_oauth("a@x", "a0".into(), "t0".into(), 1, 1));
                // Logged in again since the tokens kept for it: its token ends after theirs.
                p.upsert(Account::new_oauth(
                    "b@x",
                    "b0".into(),
                    "u0".into(),
                    2_000_000_000_000,
                    1,
                ));
                Ok(())
            })
            .unwrap();
        let dir = store.path().parent().unwrap().to_path_buf();
        let kept = |n: u32, email: &str, presented: &str, refresh: &str| {
            let path = dir.join(format!("oauth-pool.json.unsaved-1-{n}.json"));
            let tokens = json!({"version": 1, "tokens": [{
                "email": email, "access": format!("access-{refresh}"), "refresh": refresh,
                "expires": 1_900_000_000_000i64, "presented": presented,
            }]});
            fs::write(&path, tokens.to_string()).unwrap();
            path
        };
        let refresh = |email: &str| {
            store
                .load()
                .unwrap()
                .find(email)
                .and_then(|a| a.refresh.clone())
                .map(|r| r.expose().to_string())
        };
        let waiting = kept(1, "a@x", "t0", "t1");
        let unmatched = kept(2, "b@x", "a-token-never-held", "u9");
        // A change of nothing (a CLI's `priority` of an account not there, say) writes them.
        store.update(|_| Ok(())).unwrap();
        assert_eq!(refresh("a@x").as_deref(), Some("t1"));
        assert_eq!(refresh("b@x").as_deref(), Some("u0"));
        assert!(!waiting.exists(), "landed: its file goes");
        assert!(unmatched.exists(), "fits nowhere: kept");

        // `savePool` of a copy read before the next kept tokens: the stored state is theirs,
        // and the copy's token is the spent one.
        let copy = store.load().unwrap();
        let next = kept(3, "a@x", "t1", "t2");
        store.save_read_at(&copy, &ReadCopy::default()).unwrap();
        assert_eq!(refresh("a@x").as_deref(), Some("t2"));
        assert!(!next.exists());
        assert!(unmatched.exists());
    }

    #[test]
    fn a_write_leaves_the_temp_of_another_pool_whose_name_begins_with_this_one_s() {
        let (_d, store) = tmp_store();
        let dir = store.path().parent().unwrap().to_path_buf();
        let work = FileStore::new(dir.join("oauth-pool.json.work"));
        work.save(&Pool::default()).unwrap();
        // That pool's writer, at work under its own lock, not this pool's.
        let mut live = temp_in(&dir, work.path()).unwrap();
        live.write_all(b"{\"anthropic\": []}").unwrap();
        assert!(live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&temp_prefix(store.path())));
        store.save(&Pool::default()).unwrap();
        assert!(live.path().exists(), "another pool's live temp was removed");
        persist(live, work.path()).unwrap();
        assert!(work.load().is_ok());
    }

    #[test]
    fn a_removed_account_s_refresh_lock_goes_with_it_unless_held() {
        let (_d, store) = tmp_store();
        store
            .update(|p| {
                for e in ["a@x", "b@x", "c@x"] {
                    p.upsert(Account::new_oauth(e, "a".into(), "r".into(), 1, 1));
                }
                Ok(())
            })
            .unwrap();
        for e in ["a@x", "b@x", "c@x"] {
            drop(FileLock::acquire(&store.refresh_lock_path(e), Duration::from_secs(1)).unwrap());
        }
        let exists = |e: &str| store.refresh_lock_path(e).exists();
        let refreshing =
            FileLock::acquire(&store.refresh_lock_path("c@x"), Duration::from_secs(1)).unwrap();
        store
            .update(|p| {
                p.remove("a@x")?;
                p.remove("c@x")?;
                Ok(())
            })
            .unwrap();
        assert!(!exists("a@x"), "removed with its account");
        assert!(exists("b@x"), "an account in the pool keeps its lock file");
        assert!(exists("c@x"), "a refresh under way keeps its lock file");
        drop(refreshing);
        // The next removal takes what an earlier one had to leave.
        store
            .update(|p| {
                p.remove("b@x")?;
                Ok(())
            })
            .unwrap();
        assert!(!exists("b@x") && !exists("c@x"));
        assert!(store.lock_path().exists(), "the pool's own lock file stays");
    }

    /// A process waiting on a refresh lock whose file its holder removes (the account went)
    /// locks the file of that name made anew, never the removed one: two holders at once would
    /// spend one refresh token twice.
    #[cfg(unix)]
    #[test]
    fn a_lock_whose_file_is_removed_while_waited_for_is_taken_on_the_new_file() {
        let (_d, store) = tmp_store();
        let path = store.refresh_lock_path("a@x");
        let holder = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        let waiting = {
            let path = path.clone();
            std::thread::spawn(move || FileLock::acquire(&path, Duration::from_secs(10)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(100));
        fs::remove_file(&path).unwrap();
        drop(holder);
        let waiter = waiting.join().unwrap();
        assert!(
            names(&path, &waiter.file),
            "it holds the file the name names"
        );
        let other = fsread::open_regular(&path, false).unwrap();
        assert!(
            matches!(other.try_lock(), Err(fs::TryLockError::WouldBlock)),
            "and nobody else can take it"
        );
    }

    /// Found by a review: a wait of 60 s was told as "more than 59 s" (what was left of it
    /// when the last try began).
    #[test]
    fn a_lock_held_past_the_wait_is_told_as_the_whole_wait() {
        let (_d, store) = tmp_store();
        let path = store.refresh_lock_path("a@x");
        let _holder = FileLock::acquire(&path, Duration::from_secs(1)).unwrap();
        match FileLock::acquire(&path, Duration::from_secs(2)) {
            Err(Error::PoolBusy { seconds, .. }) => assert_eq!(seconds, 2),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn lock_excludes_threads_in_one_process() {
        let (_d, store) = tmp_store();
        let store = std::sync::Arc::new(store);
        store.save(&Pool::default()).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        store
                            .update(|p| {
                                let n = p.extra.get("n").and_then(|v| v.as_i64()).unwrap_or(0);
                                p.extra.insert("n".into(), json!(n + 1));
                                p.extra.insert(format!("t{t}"), json!(i));
                                Ok(())
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(store.load().unwrap().extra["n"], json!(100));
    }
}
