//! The aidevops plugin's own lock on the pool file, taken by every write of ours as well.
//!
//! The opencode-aidevops plugin hands its Anthropic pool to this package but keeps writing the
//! same `~/.aidevops/oauth-pool.json` for its other providers (OpenAI, Cursor, Google), and older
//! installs may still write the Anthropic list too. Each of its writes reads the whole file,
//! changes it and writes the whole file back, under a lock of its own: a directory
//! `<pool>.lock.d` made with `mkdir`, holding an `owner` file `{"pid":…,"ts":…}`; a lock whose
//! pid is gone or whose `ts` is more than 10 s old is stale and removed
//! (`.agents/plugins/opencode-aidevops/oauth-pool-storage.mjs`, `withPoolLock`, marcusquinn/aidevops
//! @ ad4eefaf3). A write of ours between its read and its write would be undone by it, a rotated
//! refresh token with it (the one in the file is then spent: the account is logged out). So a
//! write of ours takes that lock too, after the kernel lock on `<pool>.lock` (always in that
//! order; its writers take only this one and the aidevops shell helpers only the kernel lock,
//! so no two processes can wait on each other in a cycle).
//!
//! Where the directory cannot be made or is not a directory, no aidevops writer can hold it
//! either (its `mkdir` fails the same way), and the write goes ahead without it.

use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The aidevops plugin's rule: a lock held longer than this is stale.
const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long a writer of ours waits for an aidevops writer (whose holds last milliseconds)
/// before saying `POOL_BUSY`: past the stale limit, so that a dead holder never makes us fail.
const WAIT_LIMIT: Duration = Duration::from_secs(15);
/// The owner file is at most a few dozen bytes; anything far larger is not an owner file.
const OWNER_LIMIT: u64 = 4096;
/// A live holder whose stamp looks past the stale limit is watched this long (the monotonic
/// clock) before its lock is broken: holds last milliseconds, so a holder that is still at work
/// is gone by then, and one that is not (stopped, or its lock leaked) is broken soon after.
/// Without it, a wall clock stepped forward (NTP, a VM resumed) made every live holder's stamp
/// look old, and a writer of ours broke the lock of an aidevops writer between its read and its
/// write: one of the two writes was lost.
const AGED_CONFIRM: Duration = Duration::from_millis(500);

/// Held while a write of ours is in progress; released on drop, only if it is still ours.
#[derive(Debug)]
pub struct LegacyLock {
    dir: PathBuf,
    /// The owner text we wrote (None: the directory is ours but its owner file could not be
    /// written).
    owner: Option<String>,
}

/// What is at `<pool>.lock.d` when our `mkdir` finds something there.
enum Holder {
    /// An aidevops writer (or one of ours) holds it: wait. With what its owner file says (None:
    /// no owner file yet).
    Live(Option<String>),
    /// A live pid whose stamp is past the stale limit by the wall clock: stale once watched
    /// unchanged for `AGED_CONFIRM`.
    Aged(String),
    /// Its holder is gone or too old: remove it, then try again.
    Stale(Option<String>),
    /// Not a lock anyone can hold (not a directory): go ahead without it.
    Unusable,
}

impl LegacyLock {
    /// The lock for the pool file at `pool`, or None when no aidevops writer can hold it.
    pub fn acquire(pool: &Path) -> Result<Option<LegacyLock>> {
        let dir = lock_dir(pool);
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        // The owner record we are waiting on, and since when (the monotonic clock): a lock that
        // stays as it is for the stale limit is stale, whatever the wall clock says. A wall
        // clock stepped back (NTP, a VM snapshot) made a leaked lock's stamp, or an ownerless
        // directory's time, lie in the future: it looked fresh for hours, and every write of
        // ours waited 15 s and failed with `POOL_BUSY` meanwhile.
        let mut watched: Option<(Option<String>, Instant)> = None;
        loop {
            match make_private_dir(&dir) {
                Ok(()) => {
                    let owner = owner_text();
                    let written = write_owner(&dir, &owner);
                    if let Err(e) = &written {
                        // Its writers wait on a lock without an owner; we hold the directory.
                        tracing::warn!(path = %dir.display(), error = %e, "could not write the aidevops lock's owner file");
                    }
                    let owner = written.ok().map(|()| owner);
                    return Ok(Some(LegacyLock { dir, owner }));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => refuse_foreign(pool)?,
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "the aidevops lock cannot be taken; writing without it");
                    return Ok(None);
                }
            }
            let judged = match holder(&dir) {
                Holder::Live(seen) if watched_for(&mut watched, &seen) >= STALE_AFTER => {
                    Holder::Stale(seen)
                }
                Holder::Aged(seen) => {
                    let seen = Some(seen);
                    if watched_for(&mut watched, &seen) >= AGED_CONFIRM {
                        Holder::Stale(seen)
                    } else {
                        Holder::Live(seen)
                    }
                }
                other => other,
            };
            match judged {
                Holder::Live(_) | Holder::Aged(_) => {}
                Holder::Stale(seen) => match remove_stale(&dir, seen.as_deref()) {
                    Removal::Gone => continue,
                    Removal::Retaken => {}
                    Removal::Stuck => {
                        // Nobody can take it again (its writers' `mkdir` fails as ours does).
                        tracing::warn!(path = %dir.display(), "a stale aidevops lock cannot be removed; writing without it");
                        return Ok(None);
                    }
                },
                Holder::Unusable => {
                    tracing::warn!(path = %dir.display(), "the aidevops lock path is not a directory; writing without it");
                    return Ok(None);
                }
            }
            if start.elapsed() >= WAIT_LIMIT {
                return Err(Error::PoolBusy {
                    path: dir,
                    seconds: WAIT_LIMIT.as_secs(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// How long the lock has been seen with this owner record, restarting the watch when the
/// record changed (another holder took it meanwhile).
fn watched_for(watched: &mut Option<(Option<String>, Instant)>, seen: &Option<String>) -> Duration {
    match watched {
        Some((record, since)) if record == seen => since.elapsed(),
        _ => {
            *watched = Some((seen.clone(), Instant::now()));
            Duration::ZERO
        }
    }
}

impl Drop for LegacyLock {
    fn drop(&mut self) {
        let owner = self.dir.join("owner");
        match &self.owner {
            // Broken as stale by another writer meanwhile: what is there now is theirs.
            Some(ours) if read_owner(&owner).as_deref() != Some(ours.as_str()) => return,
            Some(_) => {
                let _ = fs::remove_file(&owner);
            }
            None => {}
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// `POOL_INSECURE` when `<pool>.lock.d` is a directory of another user's: its writers of this
/// pool run as this user, and one planted in a shared directory (sticky, so this user cannot
/// remove it) held every write for the wait limit and then failed it `POOL_BUSY`, as if a
/// process held it, after a login's code was spent. Another user's lock file is refused the same.
pub fn refuse_foreign(pool: &Path) -> Result<()> {
    let dir = lock_dir(pool);
    let Ok(meta) = fs::symlink_metadata(&dir) else {
        return Ok(());
    };
    match crate::fsread::foreign_owner(&meta) {
        // An empty one left long ago (a run under sudo that crashed) in a directory of this
        // user's goes as a stale lock of ours does; one in a sticky directory cannot.
        Some(_)
            if meta.is_dir()
                && dir_older_than_limit(&meta, SystemTime::now())
                && fs::remove_dir(&dir).is_ok() =>
        {
            Ok(())
        }
        Some(uid) if meta.is_dir() => Err(Error::PoolInsecure {
            path: dir,
            reason: format!(
                "the aidevops lock directory is owned by uid {uid}, not by this user: have it removed (it holds no secret, and is made anew)"
            ),
        }),
        _ => Ok(()),
    }
}

/// `<pool>.lock.d`, as the aidevops plugin names it (its lock file's name plus `.d`).
pub fn lock_dir(pool: &Path) -> PathBuf {
    let mut name = pool.file_name().unwrap_or_default().to_os_string();
    name.push(".lock.d");
    pool.with_file_name(name)
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    // The mode given to mkdir is cut by the umask (0500 under 0277, and the owner file could
    // not be made in it); chmod's is not. Made, it is held: a failed chmod costs only the
    // owner file, as a failed write of it does.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// The owner record the aidevops plugin writes and reads: our pid, and now in epoch ms.
fn owner_text() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{{\"pid\":{},\"ts\":{ms}}}", std::process::id())
}

fn write_owner(dir: &Path, owner: &str) -> std::io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let path = dir.join("owner");
    let mut file = opts.open(&path)?;
    let written =
        crate::store::file::owner_read_write(&file).and_then(|()| file.write_all(owner.as_bytes()));
    if written.is_err() {
        // A short owner file (a full disk) would outlive our hold of the directory, and every
        // writer, ours and the aidevops plugin's, would wait out the stale limit on a lock that
        // nobody holds. The file is ours (`create_new`).
        let _ = fs::remove_file(&path);
    }
    written
}

fn read_owner(path: &Path) -> Option<String> {
    let bytes = crate::fsread::read_regular(path, OWNER_LIMIT, false).ok()?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn holder(dir: &Path) -> Holder {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        // Released between our mkdir and this look: try again at once.
        return Holder::Stale(None);
    };
    if !meta.is_dir() {
        return Holder::Unusable;
    }
    let now = SystemTime::now();
    match read_owner(&dir.join("owner")) {
        Some(text) => match parse_owner(&text) {
            Some((pid, ts)) if is_alive(pid) && !older_than(ts, now) => Holder::Live(Some(text)),
            Some((pid, _)) if is_alive(pid) => Holder::Aged(text),
            Some(_) => Holder::Stale(Some(text)),
            // An owner file being written (the plugin makes the directory, then the file).
            None if !dir_older_than_limit(&meta, now) => Holder::Live(Some(text)),
            None => Holder::Stale(Some(text)),
        },
        // A holder that died between its mkdir and its owner file leaves a directory the
        // plugin's own writers wait on for ever; once it is past the stale limit, it is removed.
        None if dir_older_than_limit(&meta, now) => Holder::Stale(None),
        None => Holder::Live(None),
    }
}

fn parse_owner(text: &str) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let pid = v.get("pid")?.as_i64()?;
    let ts = v
        .get("ts")
        .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))?;
    Some((pid, ts))
}

fn older_than(ts_ms: i64, now: SystemTime) -> bool {
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    now_ms.saturating_sub(ts_ms) > STALE_AFTER.as_millis() as i64
}

fn dir_older_than_limit(meta: &fs::Metadata, now: SystemTime) -> bool {
    meta.modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// Whether a process `pid` exists (one of another user counts: it exists).
pub(super) fn is_alive(pid: i64) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        // No cheap check here: the age rule alone tells a dead holder.
        pid > 0
    }
}

enum Removal {
    /// Removed (or gone already): try to take it.
    Gone,
    /// Another writer took it anew since it was judged: wait for it.
    Retaken,
    /// It stays (it holds more than an owner file): nobody can take it.
    Stuck,
}

/// Removes a stale lock, unless it changed since it was judged (another writer may have
/// removed it and taken it anew meanwhile). Never recursive: a directory holding anything
/// other than an owner file is left as it is.
fn remove_stale(dir: &Path, seen: Option<&str>) -> Removal {
    let owner = dir.join("owner");
    if let Some(seen) = seen {
        if read_owner(&owner).as_deref() != Some(seen) {
            return Removal::Retaken;
        }
        let _ = fs::remove_file(&owner);
    }
    match fs::remove_dir(dir) {
        Ok(()) => Removal::Gone,
        Err(e) if e.kind() == ErrorKind::NotFound => Removal::Gone,
        // A writer took it between our look and the removal (its owner file is in it now): wait
        // for it like any holder. Writing without the lock there made two writers at once.
        Err(_) if owner.exists() => Removal::Retaken,
        Err(_) => Removal::Stuck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_in(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("oauth-pool.json")
    }

    /// An ownerless stale directory that a writer takes while it is being removed (the owner
    /// file lands between the look and the removal) is a held lock, not one to write without.
    #[test]
    fn a_stale_lock_taken_as_it_is_removed_is_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        plant(&pool, "{\"pid\":1,\"ts\":1}");
        assert!(matches!(
            remove_stale(&lock_dir(&pool), None),
            Removal::Retaken
        ));
        assert!(
            lock_dir(&pool).join("owner").exists(),
            "the new holder's lock stays"
        );
        fs::remove_file(lock_dir(&pool).join("owner")).unwrap();
        fs::write(lock_dir(&pool).join("junk"), "x").unwrap();
        assert!(matches!(
            remove_stale(&lock_dir(&pool), None),
            Removal::Stuck
        ));
    }

    fn plant(pool: &Path, owner: &str) {
        let dir = lock_dir(pool);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("owner"), owner).unwrap();
    }

    #[test]
    fn held_by_us_it_names_our_pid_and_goes_away_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        let lock = LegacyLock::acquire(&pool).unwrap().unwrap();
        let owner = fs::read_to_string(lock_dir(&pool).join("owner")).unwrap();
        let (pid, ts) = parse_owner(&owner).unwrap();
        assert_eq!(pid, std::process::id() as i64);
        assert!(!older_than(ts, SystemTime::now()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(lock_dir(&pool)), 0o700);
            assert_eq!(mode(lock_dir(&pool).join("owner")), 0o600);
        }
        drop(lock);
        assert!(!lock_dir(&pool).exists());
    }

    #[test]
    fn a_live_holder_is_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        // A live pid (ours) and a fresh stamp: the aidevops plugin holds it.
        plant(&pool, &owner_text());
        let dir = lock_dir(&pool);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            fs::remove_file(dir.join("owner")).unwrap();
            fs::remove_dir(&dir).unwrap();
        });
        let start = Instant::now();
        let lock = LegacyLock::acquire(&pool).unwrap();
        assert!(lock.is_some());
        assert!(
            start.elapsed() >= Duration::from_millis(140),
            "waited for the holder"
        );
        releaser.join().unwrap();
    }

    #[test]
    fn stale_holders_are_removed_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let gone = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        // A dead holder at once; a live one whose stamp is old once it stayed so a moment.
        for (owner, within) in [
            (
                format!("{{\"pid\":{gone},\"ts\":{now_ms}}}"),
                Duration::from_secs(1),
            ),
            (
                format!(
                    "{{\"pid\":{},\"ts\":{}}}",
                    std::process::id(),
                    now_ms - 11_000
                ),
                AGED_CONFIRM + Duration::from_secs(2),
            ),
        ] {
            plant(&pool, &owner);
            let start = Instant::now();
            let lock = LegacyLock::acquire(&pool).unwrap().unwrap();
            assert!(start.elapsed() < within, "{owner}");
            assert_ne!(lock.owner.as_deref(), Some(owner.as_str()));
            drop(lock);
            assert!(!lock_dir(&pool).exists());
        }
    }

    fn epoch_ms() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }

    #[test]
    fn a_clock_stepped_forward_does_not_break_a_live_holder_s_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        // A live holder that stamped its lock just before the clock jumped 11 s forward: its
        // stamp looks old, and its write is a few milliseconds from done.
        let theirs = format!(
            "{{\"pid\":{},\"ts\":{}}}",
            std::process::id(),
            epoch_ms() - 11_000
        );
        plant(&pool, &theirs);
        let dir = lock_dir(&pool);
        let holder = std::thread::spawn({
            let theirs = theirs.clone();
            move || {
                std::thread::sleep(Duration::from_millis(150));
                // Its release finds its own lock: nobody broke it meanwhile.
                let still = fs::read_to_string(dir.join("owner")).ok();
                fs::remove_file(dir.join("owner")).ok();
                fs::remove_dir(&dir).ok();
                still == Some(theirs)
            }
        });
        let lock = LegacyLock::acquire(&pool).unwrap();
        assert!(lock.is_some());
        assert!(
            holder.join().unwrap(),
            "a writer of ours broke the lock of a live aidevops writer mid-write"
        );
    }

    #[test]
    fn a_clock_stepped_back_does_not_make_a_leaked_lock_wait_for_hours() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        // Stamped an hour "ahead": the clock was stepped back after, and its live holder (the
        // pid is ours) leaked it. Watched unchanged for the stale limit, it is stale.
        let leaked = format!(
            "{{\"pid\":{},\"ts\":{}}}",
            std::process::id(),
            epoch_ms() + 3_600_000
        );
        plant(&pool, &leaked);
        let start = Instant::now();
        let lock = LegacyLock::acquire(&pool).unwrap().unwrap();
        assert!(
            start.elapsed() >= STALE_AFTER,
            "not broken before the limit"
        );
        assert_ne!(lock.owner.as_deref(), Some(leaked.as_str()));
    }

    #[test]
    fn a_clock_stepped_back_does_not_make_an_ownerless_lock_wait_for_hours() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        // A holder died between its mkdir and its owner file; then the clock went back an hour.
        fs::create_dir(lock_dir(&pool)).unwrap();
        fs::File::open(lock_dir(&pool))
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        assert!(LegacyLock::acquire(&pool).unwrap().is_some());
    }

    #[test]
    fn a_directory_without_owner_waits_only_until_the_stale_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        fs::create_dir(lock_dir(&pool)).unwrap();
        let meta = fs::symlink_metadata(lock_dir(&pool)).unwrap();
        assert!(
            matches!(holder(&lock_dir(&pool)), Holder::Live(None)),
            "being made"
        );
        let later = SystemTime::now() + STALE_AFTER + Duration::from_secs(1);
        assert!(dir_older_than_limit(&meta, later));
        // Aged past the limit (its time set back), it is taken.
        let old = fs::File::open(lock_dir(&pool)).unwrap();
        old.set_modified(SystemTime::now() - STALE_AFTER - Duration::from_secs(5))
            .unwrap();
        assert!(LegacyLock::acquire(&pool).unwrap().is_some());
    }

    #[test]
    fn a_stale_lock_that_cannot_be_removed_is_written_past_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        plant(&pool, "{\"pid\":1,\"ts\":1}");
        fs::write(lock_dir(&pool).join("stray"), "x").unwrap();
        let start = Instant::now();
        assert!(LegacyLock::acquire(&pool).unwrap().is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(
            lock_dir(&pool).join("stray").exists(),
            "nothing of it removed but its owner"
        );
    }

    #[test]
    fn something_else_at_the_path_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        fs::write(lock_dir(&pool), "not a lock").unwrap();
        assert!(LegacyLock::acquire(&pool).unwrap().is_none());
        assert_eq!(fs::read_to_string(lock_dir(&pool)).unwrap(), "not a lock");
    }

    #[test]
    fn a_lock_broken_as_stale_and_taken_by_another_is_not_released_by_us() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = pool_in(&tmp);
        let lock = LegacyLock::acquire(&pool).unwrap().unwrap();
        let theirs = "{\"pid\":1,\"ts\":1}";
        fs::write(lock_dir(&pool).join("owner"), theirs).unwrap();
        drop(lock);
        assert_eq!(
            fs::read_to_string(lock_dir(&pool).join("owner")).unwrap(),
            theirs
        );
    }
}
