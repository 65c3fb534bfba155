//! The machine's record of which refresh tokens were spent, and through which store.
//!
//! A store's own lock keeps one refresh per token among the processes that share it, but the
//! same login can sit in two stores on one machine (a pool file copied to a second path, `store
//! copy` to PostgreSQL while an OpenCode started before still uses the file, a backup or `.bak`
//! put back, the same login twice in one pool). Each store then presents the token on its own:
//! the second gets `invalid_grant`, and the token endpoint may revoke the whole login, so the
//! store that refreshed first loses it too. This journal, per user and machine, holds a tag of
//! each refresh token presented (never the token), the store and account that presented it, and
//! whether the tokens that replaced it were saved. A store about to present a token another store
//! or account already spent, or that it spent itself before it went back in time, does not
//! present it, and says where the live login is.
//!
//! It is touched only around a refresh, under its own lock. Whatever goes wrong with it (no home,
//! a busy lock, a full disk, a file that does not parse) lets the refresh go on as before: a
//! journal must never cost a login. A file that does not parse is kept aside and replaced.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::file::{
    check_maker, check_owner, parent_dir, persist, remove_orphaned_temps, sync_dir, temp_in,
    FileLock,
};
use crate::account::iso_time_seconds;
use crate::error::{Error, Result};
use crate::fsread::{self, ReadError};
use crate::secret::Secret;

/// The journal's file name, in `~/.aidevops` (beside the default pool and the store key).
pub const FILE_NAME: &str = "oauth-pool-refreshes.json";
/// At most this many entries (the newest kept): months of refreshes of dozens of accounts. No
/// entry goes for its age: judged by the clock of the process writing, one whose clock was 30
/// days off dropped every record of a spent token, and a copy of a login then presented one (the
/// endpoint revoked the login in every pool holding it).
const KEEP_ENTRIES: usize = 5000;
/// A file larger than this is not a journal of ours.
const MAX_BYTES: u64 = 4 * 1024 * 1024;
/// How long a refresh waits for the journal's lock before it goes on without it.
const LOCK_PATIENCE: Duration = Duration::from_secs(2);
/// A token another store presented this recently, with no saved successor yet, may be in its
/// refresh right now (a refresh takes at most a minute: 30 s, and once more after a lost answer).
const IN_FLIGHT_MS: i64 = 120_000;
/// A presenter that still lives holds its token out this long at most, however long it was
/// stopped (Ctrl-Z, a suspended laptop): it may read the answer, or present once more, when it
/// resumes, and the token presented meanwhile by another process revoked the login. Not for
/// ever: the pid may have gone to another process since.
const LIVING_PRESENTER_MS: i64 = 24 * 3600 * 1000;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Entry {
    /// `tag()` of the refresh token presented.
    token: String,
    /// `Store::journal_id()` of the store that presented it.
    store: String,
    email: String,
    /// When it was presented, or when its successor was saved (epoch ms).
    at: i64,
    /// Whether the tokens that replaced it were saved in that store.
    #[serde(default)]
    saved: bool,
    /// The process that presented it: another process of the same store finds it in flight
    /// while that process lives (its refresh lock file was removed meanwhile, by a clean-up of
    /// lock files or a directory put back, and the lock no longer kept the next one out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// Fields a later version writes, kept as they came.
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Entry {
    fn new(token: &str, store: &str, email: &str, at: i64, saved: bool, pid: Option<u32>) -> Entry {
        Entry {
            token: token.to_string(),
            store: store.to_string(),
            email: email.to_string(),
            at,
            saved,
            pid,
            extra: serde_json::Map::new(),
        }
    }
}

/// The journal as this version reads it. What it cannot read is written back as it came: a
/// later version's journal was rewritten without its fields and numbered 1, and one entry this
/// version could not read (a record of a new kind) threw the whole journal away, every record of
/// a spent token with it, and a copy of a login then presented a spent token.
#[derive(Default, Debug)]
struct Book {
    version: u32,
    refreshes: Vec<Entry>,
    /// Entries this version cannot read.
    unread: Vec<serde_json::Value>,
    /// Top-level fields of a later version.
    extra: serde_json::Map<String, serde_json::Value>,
}

/// The journal as it is on disk.
#[derive(Serialize, Deserialize)]
struct BookFile {
    #[serde(default)]
    version: serde_json::Value,
    #[serde(default)]
    refreshes: Vec<serde_json::Value>,
    #[serde(flatten)]
    extra: serde_json::Map<String, serde_json::Value>,
}

impl Book {
    fn from_file(file: BookFile) -> Book {
        let mut book = Book {
            version: file
                .version
                .as_u64()
                .map_or(0, |v| u32::try_from(v).unwrap_or(u32::MAX)),
            extra: file.extra,
            ..Book::default()
        };
        for value in file.refreshes {
            // Read from a borrow: each entry is copied only when this version cannot read it.
            match Entry::deserialize(&value) {
                Ok(entry) => book.refreshes.push(entry),
                Err(_) => book.unread.push(value),
            }
        }
        book
    }

    fn to_file(&self) -> BookFile {
        let mut refreshes: Vec<serde_json::Value> = self
            .refreshes
            .iter()
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect();
        refreshes.extend(self.unread.iter().cloned());
        BookFile {
            // Never lowered: a later version's journal stays its.
            version: self.version.max(1).into(),
            refreshes,
            extra: self.extra.clone(),
        }
    }
}

/// Why a token is not to be presented: where it was spent, by whom, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Spent {
    pub store: String,
    pub email: String,
    pub at: i64,
    /// The same store and account spent it: the store went back in time.
    pub restored: bool,
}

/// How every `Spent::explain` begins: an account's `lastError` that starts so was refused by the
/// journal, and says itself where the live login is.
pub const NOT_REFRESHED: &str = "not refreshed: ";

impl Spent {
    /// What a person reads on the account (`lastError`, the toast, `status`): where the live
    /// login is, and what to do. `here` is the store about to present the token.
    pub fn explain(&self, email: &str, here: &str) -> String {
        let when = iso_time_seconds(self.at);
        let why = if self.restored {
            format!(
                "{here} was put back to an earlier state (a backup, a snapshot or an older copy restored over it): this refresh token was already spent here on {when}, and the tokens that replaced it were saved then; put back the newer pool if you have it (the copy it replaced is kept as {here}.bak-<time> when it was the newer: `oauth-pool doctor` lists it), else log in again"
            )
        } else if self.store.starts_with(BY_EXPORT) {
            format!(
                "its refresh token was presented by {} on {when} (a script's call; a refresh token works once, and the tokens that replaced it went to that script); log in again",
                self.store
            )
        } else if self.store == here {
            format!(
                "this pool holds the same login under {} too, which refreshed it on {when} (a refresh token works once); remove {email} (one login is one account), or log in again under it",
                self.email
            )
        } else {
            format!(
                "this login was refreshed through the pool at {} on {when}, which holds it now (a refresh token works once: presenting it again here would get it refused, and could log that pool out too); use that pool, or log in again here",
                self.store
            )
        };
        format!("{NOT_REFRESHED}{why}")
    }
}

/// What the library's `refresh(token)` export is recorded as in the journal (with its process
/// and call): it presents a token outside any pool, and a pool holding that token must not
/// present it after it.
pub const BY_EXPORT: &str = "the library's refresh()";

/// What the journal says about presenting a token.
#[derive(Debug, PartialEq)]
pub enum Claim {
    /// Present it (recorded as presented by this store and account).
    Go,
    /// Spent already, its successor saved: do not present it.
    Spent(Spent),
    /// Another store or account presented it moments ago and has not saved a successor yet.
    InFlight { store: String },
}

/// A tag of a refresh token for the journal: longer than `Secret::fingerprint` (a collision
/// would stop a refresh), and not the token (SHA-256 of a random token reveals nothing usable).
pub fn tag(secret: &Secret) -> String {
    let mut h = Sha256::new();
    h.update(b"oauth-pool refresh journal\0");
    h.update(secret.expose().as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

/// Whether `path` is one of the files the journal of the user whose home is `home` writes or
/// moves (the journal, its lock, the copy of a broken one), however the directory is spelt.
pub fn is_its_file(path: &Path, home: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let ours = [
        FILE_NAME.to_string(),
        format!("{FILE_NAME}.lock"),
        format!("{FILE_NAME}.corrupt"),
    ];
    if !ours.iter().any(|n| n == name) {
        return false;
    }
    let dir = home.join(".aidevops");
    match (path.parent().map(fs::canonicalize), fs::canonicalize(&dir)) {
        (Some(Ok(a)), Ok(b)) => a == b,
        _ => path.parent() == Some(dir.as_path()),
    }
}

impl Journal {
    /// This user's journal, `~/.aidevops/oauth-pool-refreshes.json`; None without a home.
    pub fn for_user() -> Option<Journal> {
        // Unit tests run many engines at once on made-up tokens, and under whatever HOME the
        // developer has: they never share a journal (theirs is made with `Journal::at`).
        if cfg!(test) {
            return None;
        }
        crate::config::home_dir().map(|h| Journal::at(h.join(".aidevops").join(FILE_NAME)))
    }

    pub fn at(path: impl Into<PathBuf>) -> Journal {
        Journal { path: path.into() }
    }

    fn lock_path(&self) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        self.path.with_file_name(name)
    }

    /// Before presenting the refresh token tagged `token` of `email` in `store`. Blocking.
    /// Any trouble with the journal itself is `Go` (logged): the refresh goes on as before.
    pub fn claim(&self, token: &str, store: &str, email: &str, now: i64) -> Claim {
        let decided = self.change(|book| {
            let me = |e: &Entry| e.store == store && e.email == email;
            let found = book.refreshes.iter().position(|e| e.token == token);
            if let Some(i) = found {
                let e = &book.refreshes[i];
                if e.saved {
                    return (
                        false,
                        Claim::Spent(Spent {
                            store: e.store.clone(),
                            email: e.email.clone(),
                            at: e.at,
                            restored: me(e),
                        }),
                    );
                }
                // Either way round: a clock stepped back after the other store presented it
                // made its presentation look to be in the future, and the token was left to it
                // until the clock caught up (hours), though that refresh had long ended.
                let age = now.saturating_sub(e.at);
                let other_process = e.pid.is_some_and(|p| {
                    p != std::process::id() && super::legacy_lock::is_alive(p.into())
                });
                let recent = age > -IN_FLIGHT_MS
                    && age
                        < if other_process {
                            LIVING_PRESENTER_MS
                        } else {
                            IN_FLIGHT_MS
                        };
                // A presenter that is gone refreshes nothing now, in any store (the library's
                // `refresh()` of a script that was killed held the login for two minutes).
                let gone = e.pid.is_some_and(|p| {
                    p != std::process::id() && !super::legacy_lock::is_alive(p.into())
                });
                if recent && !gone && (!me(e) || other_process) {
                    return (
                        false,
                        Claim::InFlight {
                            store: e.store.clone(),
                        },
                    );
                }
                book.refreshes.remove(i);
            }
            book.refreshes.push(Entry::new(
                token,
                store,
                email,
                now,
                false,
                Some(std::process::id()),
            ));
            (true, Claim::Go)
        });
        decided.unwrap_or(Claim::Go)
    }

    /// The stores that presented a refresh token on this machine in the journal's month, the
    /// most recent first, at most `limit`: the pools `doctor` compares the one it checks with.
    /// Read without the lock (every write replaces the file whole); nothing when the journal is
    /// missing or unusable, which `doctor` cannot fix and a refresh reports.
    pub fn stores(&self, limit: usize) -> Vec<String> {
        let Ok(Some(mut book)) = self.read() else {
            return Vec::new();
        };
        book.refreshes.sort_by_key(|e| std::cmp::Reverse(e.at));
        let mut seen: Vec<String> = Vec::new();
        for e in book.refreshes {
            if seen.len() == limit {
                break;
            }
            if !seen.contains(&e.store) {
                seen.push(e.store);
            }
        }
        seen
    }

    /// Of `pairs` of refresh token tags (one login's in two copies of a pool), whether one holds
    /// a token spent with its successor saved (in any store) beside one never presented: the
    /// second copy is the later. Blocking; false when the journal is missing or unusable.
    pub fn later_beside_spent(&self, pairs: &[(String, String)]) -> bool {
        let Ok(Some(book)) = self.read() else {
            return false;
        };
        let saved = |t: &str| book.refreshes.iter().any(|e| e.saved && e.token == t);
        let presented = |t: &str| book.refreshes.iter().any(|e| e.token == t);
        pairs
            .iter()
            .any(|(spent, later)| saved(spent) && !presented(later))
    }

    /// Whether the refresh token tagged `token` was ever presented, by any store: one never
    /// presented is the newest of its line (a refresh's answer, or a login).
    pub fn presented(&self, token: &str) -> bool {
        let Ok(Some(book)) = self.read() else {
            return false;
        };
        book.refreshes.iter().any(|e| e.token == token)
    }

    pub fn spent_and_saved(&self, token: &str) -> bool {
        let Ok(Some(book)) = self.read() else {
            return false;
        };
        book.refreshes.iter().any(|e| e.saved && e.token == token)
    }

    /// Of the refresh tokens tagged `tags`, those spent with their successor saved (in any store:
    /// a token works once), and those presented within the last two minutes (a refresh out now,
    /// or one that wrote its tokens and has not noted it yet: a write waiting for the pool's lock
    /// behind it took the token for live, and wrote it back over its successor). Each with
    /// where; read without the lock (every write replaces the file whole), nothing when the
    /// journal is missing or unusable. Blocking.
    pub fn spent_among(&self, tags: &[String], now: i64) -> Vec<(String, Spent)> {
        let Ok(Some(book)) = self.read() else {
            return Vec::new();
        };
        let presented = |at: i64| {
            let age = now.saturating_sub(at);
            age > -IN_FLIGHT_MS && age < IN_FLIGHT_MS
        };
        book.refreshes
            .into_iter()
            .filter(|e| (e.saved || presented(e.at)) && tags.contains(&e.token))
            .map(|e| {
                let spent = Spent {
                    store: e.store,
                    email: e.email,
                    at: e.at,
                    restored: false,
                };
                (e.token, spent)
            })
            .collect()
    }

    /// The tokens that replaced `token` are saved in `store`: from now on nobody presents it.
    pub fn saved(&self, token: &str, store: &str, email: &str, now: i64) {
        self.change(|book| {
            let mine = book
                .refreshes
                .iter_mut()
                .find(|e| e.token == token && e.store == store && e.email == email);
            match mine {
                Some(e) => {
                    e.saved = true;
                    e.at = now;
                }
                None => book
                    .refreshes
                    .push(Entry::new(token, store, email, now, true, None)),
            }
            (true, ())
        });
    }

    /// The token endpoint answered `token` with the same refresh token (it does not rotate), or
    /// refused it at the first asking: it is not spent by this store, and another store
    /// presenting it is no reuse.
    pub fn released(&self, token: &str, store: &str, email: &str) {
        self.change(|book| {
            let before = book.refreshes.len();
            book.refreshes
                .retain(|e| !(e.token == token && e.store == store && e.email == email));
            (book.refreshes.len() != before, ())
        });
    }

    /// The refresh of `token` in `store` ended without saved tokens, perhaps spent: it stays
    /// presented (a store elsewhere waits the in-flight time), but no process holds it any more.
    /// Held by the presenter's pid, every other process of the store was kept from the login
    /// for as long as that process lived (`LIVING_PRESENTER_MS`), though its call had ended.
    pub fn ended(&self, token: &str, store: &str, email: &str) {
        self.change(|book| {
            let mine = book.refreshes.iter_mut().find(|e| {
                e.token == token
                    && e.store == store
                    && e.email == email
                    && !e.saved
                    && e.pid == Some(std::process::id())
            });
            match mine {
                Some(e) => {
                    e.pid = None;
                    (true, ())
                }
                None => (false, ()),
            }
        });
    }

    /// Under the lock: read, prune, let `f` decide (and say whether to write), write. None when
    /// the journal could not be used (then nothing is decided from it).
    fn change<T>(&self, f: impl FnOnce(&mut Book) -> (bool, T)) -> Option<T> {
        let skip = |why: String| {
            tracing::warn!(journal = %self.path.display(), error = %why, "the refresh journal cannot be used; refreshing without it");
        };
        if !self.path.exists() {
            if let Err(why) = check_maker(&self.path) {
                skip(why);
                return None;
            }
        }
        let _lock = match FileLock::acquire(&self.lock_path(), LOCK_PATIENCE) {
            Ok(l) => l,
            Err(e) => {
                skip(e.to_string());
                return None;
            }
        };
        let mut book = match self.read() {
            Ok(b) => b.unwrap_or_default(),
            Err(Unusable::Refused(why)) => {
                skip(why);
                return None;
            }
            Err(Unusable::Corrupt(why)) => {
                self.keep_aside(&why);
                Book::default()
            }
        };
        prune(&mut book);
        let (write, out) = f(&mut book);
        if write {
            prune(&mut book);
            if let Err(e) = self.write(&book) {
                skip(e.to_string());
                return None;
            }
        }
        Some(out)
    }

    fn read(&self) -> std::result::Result<Option<Book>, Unusable> {
        let file = match fsread::open_regular(&self.path, false) {
            Ok(f) => f,
            Err(ReadError::NotFound) => return Ok(None),
            Err(ReadError::TooLarge(_)) => {
                return Err(Unusable::Corrupt("it is far larger than a journal".into()))
            }
            Err(e) => return Err(Unusable::Refused(e.to_string())),
        };
        let meta = file
            .metadata()
            .map_err(|e| Unusable::Refused(e.to_string()))?;
        check_owner(&self.path, &meta).map_err(|e| Unusable::Refused(e.to_string()))?;
        let bytes = match fsread::read_capped(&file, MAX_BYTES) {
            Ok(b) => b,
            Err(ReadError::TooLarge(_)) => {
                return Err(Unusable::Corrupt("it is far larger than a journal".into()))
            }
            Err(e) => return Err(Unusable::Refused(e.to_string())),
        };
        match serde_json::from_slice::<BookFile>(&bytes) {
            Ok(file) => Ok(Some(Book::from_file(file))),
            // A later version's journal of another shape is that version's: left as it is (not
            // moved aside, its records of spent tokens are still good to it).
            Err(e) if later_version(&bytes) => Err(Unusable::Refused(format!(
                "it is of a later version, in a form this one cannot read ({e}); upgrade the package"
            ))),
            Err(e) => Err(Unusable::Corrupt(format!("it does not parse ({e})"))),
        }
    }

    /// A file that does not parse is moved aside (one kept, the last), never read again.
    fn keep_aside(&self, why: &str) {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(".corrupt");
        let aside = self.path.with_file_name(name);
        let moved = fs::rename(&self.path, &aside);
        tracing::warn!(
            journal = %self.path.display(),
            aside = %aside.display(),
            moved = moved.is_ok(),
            "the refresh journal was not usable ({why}): it was moved aside and a new one is started"
        );
    }

    fn write(&self, book: &Book) -> Result<()> {
        let bytes = serde_json::to_vec(&book.to_file())
            .map_err(|e| Error::InvalidArgument(format!("journal: {e}")))?;
        let dir = parent_dir(&self.path);
        // Every refresh rewrites the journal whole through a temp file: one that a crash or a
        // reboot cut short stayed for good, a copy of the journal each, since nothing else
        // removes them. Its writers make temps only under the lock held here.
        remove_orphaned_temps(&self.path);
        let mut tmp = temp_in(&dir, &self.path)?;
        use std::io::Write;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io(&self.path, "write", e))?;
        persist(tmp, &self.path)?;
        sync_dir(&dir);
        Ok(())
    }
}

enum Unusable {
    /// Not ours to touch (a symlink, another user's, not a regular file): left alone.
    Refused(String),
    /// Ours, but not a journal: moved aside.
    Corrupt(String),
}

/// Whether `bytes` are JSON whose `version` is past this version's (1).
fn later_version(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("version").and_then(serde_json::Value::as_f64))
        .is_some_and(|v| v > 1.0)
}

fn prune(book: &mut Book) {
    let over = book.unread.len().saturating_sub(KEEP_ENTRIES);
    book.unread.drain(..over);
    book.refreshes.sort_by_key(|e| e.at);
    let over = book.refreshes.len().saturating_sub(KEEP_ENTRIES);
    book.refreshes.drain(..over);
}

/// The name a file store goes by in the journal: its path with links resolved, so that two
/// spellings of one file are one store.
pub fn file_identity(path: &Path) -> String {
    if let Ok(p) = fs::canonicalize(path) {
        return p.display().to_string();
    }
    match (path.parent().map(fs::canonicalize), path.file_name()) {
        (Some(Ok(dir)), Some(name)) => dir.join(name).display().to_string(),
        _ => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(dir.path().join("home").join(FILE_NAME));
        (dir, j)
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_token_another_live_process_of_the_same_store_has_out_is_in_flight() {
        let (_d, j) = journal();
        let out = |pid: u32| Book {
            version: 1,
            refreshes: vec![Entry::new(
                "t1",
                "/a/pool.json",
                "x@y",
                NOW,
                false,
                Some(pid),
            )],
            ..Book::default()
        };
        fs::create_dir_all(j.path.parent().unwrap()).unwrap();
        // pid 1 lives as long as the machine does.
        j.write(&out(1)).unwrap();
        assert_eq!(
            j.claim("t1", "/a/pool.json", "x@y", NOW + 1000),
            Claim::InFlight {
                store: "/a/pool.json".into()
            }
        );
        // Gone (no such pid): its token is this process's to present.
        j.write(&out(u32::MAX >> 2)).unwrap();
        assert_eq!(j.claim("t1", "/a/pool.json", "x@y", NOW + 1000), Claim::Go);
        // This process's own: presented again after its own failure.
        assert_eq!(j.claim("t1", "/a/pool.json", "x@y", NOW + 2000), Claim::Go);
        // Long ago, by a process that still lives (pid 1): it may be stopped with the answer
        // unread, and holds the token out (found by a review: after two minutes another
        // process presented it, and the endpoint revoked the login), for a day at most.
        j.write(&out(1)).unwrap();
        assert!(matches!(
            j.claim("t1", "/a/pool.json", "x@y", NOW + IN_FLIGHT_MS),
            Claim::InFlight { .. }
        ));
        assert!(matches!(
            j.claim("t1", "/b/pool.json", "x@y", NOW + 3_600_000),
            Claim::InFlight { .. }
        ));
        assert_eq!(
            j.claim("t1", "/a/pool.json", "x@y", NOW + LIVING_PRESENTER_MS),
            Claim::Go
        );
    }

    #[test]
    fn a_token_spent_and_saved_elsewhere_is_not_presented_again() {
        let (_d, j) = journal();
        assert_eq!(j.claim("t1", "/a/pool.json", "x@y", NOW), Claim::Go);
        // Another store at the same moment: the first may be refreshing it right now.
        assert_eq!(
            j.claim("t1", "/b/pool.json", "x@y", NOW + 1000),
            Claim::InFlight {
                store: "/a/pool.json".into()
            }
        );
        j.saved("t1", "/a/pool.json", "x@y", NOW + 2000);
        let Claim::Spent(s) = j.claim("t1", "/b/pool.json", "x@y", NOW + 3000) else {
            panic!("spent elsewhere must be refused")
        };
        assert!(!s.restored);
        assert!(s
            .explain("x@y", "/b/pool.json")
            .contains("refreshed through the pool at /a/pool.json"));
        // The store that spent it, put back in time, holds it again.
        let Claim::Spent(s) = j.claim("t1", "/a/pool.json", "x@y", NOW + 4000) else {
            panic!("its own spent token must be refused")
        };
        assert!(s.restored);
        assert!(s.explain("x@y", "/a/pool.json").contains("put back"));
        // The same login under another name in the same store.
        let Claim::Spent(s) = j.claim("t1", "/a/pool.json", "twin@y", NOW + 5000) else {
            panic!("a twin must be refused")
        };
        assert!(s
            .explain("twin@y", "/a/pool.json")
            .contains("under x@y too"));
    }

    #[test]
    fn a_token_handed_back_unrotated_stays_presentable_everywhere() {
        let (_d, j) = journal();
        assert_eq!(j.claim("t1", "/a", "x", NOW), Claim::Go);
        j.released("t1", "/a", "x");
        assert_eq!(
            j.claim("t1", "/a", "x", NOW + 20),
            Claim::Go,
            "this store again"
        );
        j.released("t1", "/a", "x");
        assert_eq!(
            j.claim("t1", "/b", "x", NOW + 40),
            Claim::Go,
            "another store at once"
        );
    }

    #[test]
    fn a_presentation_without_a_saved_successor_does_not_block() {
        let (_d, j) = journal();
        assert_eq!(j.claim("t1", "/a", "x", NOW), Claim::Go);
        // The same store again (a failed or interrupted refresh): go.
        assert_eq!(j.claim("t1", "/a", "x", NOW + 1000), Claim::Go);
        // Another store once the first is surely no longer refreshing: go, and it is its now.
        assert_eq!(
            j.claim("t1", "/b", "x", NOW + IN_FLIGHT_MS + 2000),
            Claim::Go
        );
        assert!(matches!(
            j.claim("t1", "/a", "x", NOW + IN_FLIGHT_MS + 3000),
            Claim::InFlight { .. }
        ));
    }

    #[test]
    fn a_refresh_that_ended_unsaved_is_held_by_no_process() {
        let (_d, j) = journal();
        assert_eq!(j.claim("t1", "/a", "x", NOW), Claim::Go);
        let pid = |j: &Journal| j.read().ok().flatten().unwrap().refreshes[0].pid;
        assert_eq!(pid(&j), Some(std::process::id()));
        // Another store's ended refresh is not this one's to end.
        j.ended("t1", "/b", "x");
        assert_eq!(pid(&j), Some(std::process::id()));
        j.ended("t1", "/a", "x");
        assert_eq!(
            pid(&j),
            None,
            "no process holds it: another of the store may present it"
        );
        assert!(!j.read().ok().flatten().unwrap().refreshes[0].saved);
        // Still presented: another store waits the in-flight time, then goes.
        assert!(matches!(
            j.claim("t1", "/b", "x", NOW + 1000),
            Claim::InFlight { .. }
        ));
        assert_eq!(
            j.claim("t1", "/b", "x", NOW + IN_FLIGHT_MS + 1000),
            Claim::Go
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_leave_a_token_in_flight_for_good() {
        let (_d, j) = journal();
        assert_eq!(j.claim("t1", "/a", "x", NOW), Claim::Go);
        // The clock steps back an hour; the other store's refresh ended long ago unsaved.
        assert_eq!(j.claim("t1", "/b", "x", NOW - 3_600_000), Claim::Go);
        // Stepped back by seconds only: it may still be under way.
        assert_eq!(j.claim("t2", "/a", "x", NOW), Claim::Go);
        assert!(matches!(
            j.claim("t2", "/b", "x", NOW - 5_000),
            Claim::InFlight { .. }
        ));
    }

    #[test]
    fn the_journal_is_private_bounded_and_holds_no_token() {
        let (_d, j) = journal();
        // Made at run time: no token-shaped literal in the source.
        let body = "fake-refresh-value-".repeat(3);
        let secret = Secret::new(format!("{}-{body}", ["sk", "ant", "ort01"].join("-")));
        let t = tag(&secret);
        assert_eq!(t.len(), 32);
        j.claim(&t, "/a", "x", NOW);
        j.saved(&t, "/a", "x", NOW);
        let text = fs::read_to_string(&j.path).unwrap();
        assert!(!text.contains("sk-ant") && !text.contains("fake-refresh-value"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&j.path), 0o600);
            assert_eq!(mode(j.path.parent().unwrap()), 0o700);
        }
        // No entry goes for its age, whatever the writer's clock says (one 40 days fast, or
        // slow); the oldest beyond the cap do.
        const DAY: i64 = 24 * 3600 * 1000;
        j.saved("old", "/a", "x", NOW - 90 * DAY);
        j.saved("fast", "/a", "x", NOW + 40 * DAY);
        j.saved("slow", "/a", "x", NOW - 40 * DAY);
        let book = j.read().ok().flatten().unwrap();
        for kept in ["old", "fast", "slow"] {
            assert!(book.refreshes.iter().any(|e| e.token == kept), "{kept}");
        }
        let entry = |i: usize| Entry::new(&format!("n{i}"), "/a", "x", NOW - i as i64, true, None);
        let mut book = Book {
            version: 1,
            refreshes: (0..KEEP_ENTRIES + 10).map(entry).collect(),
            ..Book::default()
        };
        prune(&mut book);
        assert_eq!(book.refreshes.len(), KEEP_ENTRIES);
        assert!(book
            .refreshes
            .iter()
            .all(|e| e.at > NOW - KEEP_ENTRIES as i64));
    }

    /// Found by a review: a later version's journal was rewritten numbered 1 and without its
    /// fields, and one entry of a new kind threw the whole journal away with every record of a
    /// spent token; a copy of the login then presented one.
    #[test]
    fn a_later_versions_journal_is_read_for_what_it_says_and_written_back_whole() {
        let (_d, j) = journal();
        fs::create_dir_all(j.path.parent().unwrap()).unwrap();
        let later = serde_json::json!({
            "version": 2,
            "hosts": {"h1": "a host"},
            "refreshes": [
                {"token": "spent", "store": "/b/pool.json", "email": "x@y", "at": NOW, "saved": true, "via": "gateway"},
                {"kind": "lease", "until": NOW + 1000},
                {"token": 7, "store": "/c", "email": "z", "at": NOW},
            ],
        });
        fs::write(&j.path, later.to_string()).unwrap();
        assert!(matches!(
            j.claim("spent", "/a/pool.json", "x@y", NOW + 10),
            Claim::Spent(_)
        ));
        j.saved("fresh", "/a/pool.json", "x@y", NOW + 20);
        let written: serde_json::Value =
            serde_json::from_slice(&fs::read(&j.path).unwrap()).unwrap();
        assert_eq!(written["version"], 2);
        assert_eq!(written["hosts"], later["hosts"]);
        let entries = written["refreshes"].as_array().unwrap();
        assert_eq!(entries.len(), 4, "{written}");
        assert!(entries.contains(&later["refreshes"][0]), "{written}");
        assert!(entries.contains(&later["refreshes"][1]), "{written}");
        assert!(entries.contains(&later["refreshes"][2]), "{written}");
        assert!(!j.path.with_extension("json.corrupt").exists());

        // Of a shape this version cannot read at all: left as it is, not moved aside.
        let other = r#"{"version":3,"refreshes":{"by-token":{}}}"#;
        fs::write(&j.path, other).unwrap();
        assert!(matches!(j.claim("t", "/a", "x", NOW), Claim::Go));
        assert_eq!(fs::read_to_string(&j.path).unwrap(), other);
    }

    #[test]
    fn a_broken_journal_never_blocks_a_refresh_and_is_kept_aside() {
        let (_d, j) = journal();
        fs::create_dir_all(j.path.parent().unwrap()).unwrap();
        fs::write(&j.path, b"{ not json").unwrap();
        assert_eq!(j.claim("t1", "/a", "x", NOW), Claim::Go);
        let aside = j.path.with_file_name(format!("{FILE_NAME}.corrupt"));
        assert_eq!(fs::read(&aside).unwrap(), b"{ not json");
        // The new journal works.
        j.saved("t1", "/a", "x", NOW);
        assert!(matches!(j.claim("t1", "/b", "x", NOW), Claim::Spent(_)));

        // A symlink, a directory, a FIFO: left alone, and the refresh goes on.
        #[cfg(unix)]
        {
            fs::remove_file(&j.path).unwrap();
            std::os::unix::fs::symlink(&aside, &j.path).unwrap();
            assert_eq!(j.claim("t2", "/a", "x", NOW), Claim::Go);
            assert_eq!(fs::read(&aside).unwrap(), b"{ not json");
            fs::remove_file(&j.path).unwrap();
            let fifo = std::ffi::CString::new(j.path.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
            assert_eq!(j.claim("t3", "/a", "x", NOW), Claim::Go);
        }
    }

    #[test]
    fn the_stores_seen_are_listed_once_each_newest_first_and_bounded() {
        let (_d, j) = journal();
        assert!(j.stores(10).is_empty(), "no journal yet");
        j.saved("t1", "/a", "x", NOW);
        j.saved("t2", "/b", "x", NOW + 10);
        j.saved("t3", "/a", "y", NOW + 20);
        j.saved("t4", "postgres://u@db/pool", "x", NOW + 30);
        assert_eq!(j.stores(10), ["postgres://u@db/pool", "/a", "/b"]);
        assert_eq!(j.stores(2), ["postgres://u@db/pool", "/a"]);
        fs::write(&j.path, b"{ not json").unwrap();
        assert!(j.stores(10).is_empty(), "an unusable journal lists nothing");
    }

    #[test]
    fn its_files_are_known_however_the_directory_is_spelt() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".aidevops")).unwrap();
        fs::create_dir_all(home.join("elsewhere")).unwrap();
        let spelt = home.join("elsewhere").join("..").join(".aidevops");
        for name in [
            FILE_NAME,
            "oauth-pool-refreshes.json.lock",
            "oauth-pool-refreshes.json.corrupt",
        ] {
            assert!(is_its_file(&home.join(".aidevops").join(name), &home));
            assert!(is_its_file(&spelt.join(name), &home), "{name}");
        }
        assert!(!is_its_file(
            &home.join(".aidevops").join("oauth-pool.json"),
            &home
        ));
        assert!(!is_its_file(&home.join("elsewhere").join(FILE_NAME), &home));
        // Not made yet: the directory is compared as written.
        let other = dir.path().join("other");
        assert!(is_its_file(
            &other.join(".aidevops").join(FILE_NAME),
            &other
        ));
    }

    #[test]
    fn two_spellings_of_one_file_are_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("pool.json");
        fs::write(&real, b"{}").unwrap();
        let spelled = dir.path().join(".").join("pool.json");
        assert_eq!(file_identity(&real), file_identity(&spelled));
        // One not made yet: its directory's real path.
        let missing = dir.path().join(".").join("new.json");
        assert!(file_identity(&missing).ends_with("new.json"));
        assert!(!file_identity(&missing).contains("/./"));
    }
}
