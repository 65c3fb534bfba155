//! Whether the pool file may have changed, without looking its path up: the file's directory
//! watched with inotify (Linux). The file store asks before each request (`FileStore::stamp`).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::file::FileStamp;

/// How long the last lookup of the path is trusted while its directory reports no change. What
/// the directory cannot report: a directory above it replaced, a change made through another
/// file system's view (NFS). Any change made on this machine to the file or its directory
/// (our writers' renames, an edit in place, the directory moved) is reported at once.
const PATH_RECHECK: Duration = Duration::from_secs(1);
/// Reads of the watch's queue per check, at most: a directory busy with other files (a log
/// appended without pause) costs a check a few reads, then a lookup of the path.
const MAX_REPORT_READS: usize = 4;
/// Pools watched at once in one process. Each watch takes one of the user's inotify instances
/// (128 by default, shared with editors and every other tool); a process with more pools than
/// this (a test run, a script going through many files) looks the others up before each request.
#[cfg(not(test))]
const MAX_WATCHED_POOLS: usize = 4;
#[cfg(test)]
const MAX_WATCHED_POOLS: usize = usize::MAX;
static WATCHED_POOLS: AtomicUsize = AtomicUsize::new(0);

/// Takes one of `limit` places counted by `count`; false when all are taken.
fn claim(count: &AtomicUsize, limit: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

/// An inotify instance for one more watched pool, within `MAX_WATCHED_POOLS`.
fn new_instance() -> Option<inotify::Inotify> {
    if !claim(&WATCHED_POOLS, MAX_WATCHED_POOLS) {
        return None;
    }
    let made = inotify::Inotify::init().ok();
    if made.is_none() {
        WATCHED_POOLS.fetch_sub(1, Ordering::AcqRel);
    }
    made
}

/// The pool file's directory watched with inotify, so that the check before each request is
/// one non-blocking read that finds nothing (well under a microsecond) instead of a path lookup
/// (about 5 µs, measured in place under Bun). Without inotify (no instance left, no directory
/// yet) every check looks the path up, as on other systems.
#[derive(Debug, Default)]
pub struct DirWatch {
    /// `None` until first used; `Some(None)` when no inotify instance could be had.
    inotify: Option<Option<inotify::Inotify>>,
    watching: Option<inotify::WatchDescriptor>,
    /// The stamp the path showed at its last lookup, and when.
    last: Option<(Option<FileStamp>, Instant)>,
    /// The watch ended (its directory moved or deleted): watch the path's directory anew.
    ended: bool,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        if let Some(Some(_)) = &self.inotify {
            WATCHED_POOLS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl DirWatch {
    /// The last lookup's stamp, when nothing has changed since in the directory about the file
    /// `name` (and the lookup is recent); `None`: look the path up (after `prepare`). Reports
    /// about other entries of the directory (locks, temp files, other tools' files) are read
    /// and change nothing.
    pub fn unchanged(&mut self, name: &OsStr) -> Option<Option<FileStamp>> {
        let (stamp, at) = self.last?;
        if self.watching.is_none() || at.elapsed() >= PATH_RECHECK {
            return None;
        }
        for _ in 0..MAX_REPORT_READS {
            match self.read_reports(name) {
                Ok(false) => continue,
                Ok(true) => return None,
                // A report about another entry ended the watch (it reports once): what comes
                // after it is not reported, so the path is looked up and the watch set again.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return (!self.ended).then_some(stamp)
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Reads one batch of what the directory reported (`WouldBlock`: nothing): whether any of it
    /// is about the file `name` or the directory itself (or an overflow of the queue), noting
    /// whether the watch ended (the directory moved or deleted).
    fn read_reports(&mut self, name: &OsStr) -> std::io::Result<bool> {
        use inotify::EventMask;
        let Some(Some(inotify)) = self.inotify.as_mut() else {
            return Err(std::io::ErrorKind::Unsupported.into());
        };
        let mut buffer = [0u8; 4096];
        let ended = EventMask::IGNORED | EventMask::MOVE_SELF | EventMask::DELETE_SELF;
        let mut about_file = false;
        for event in inotify.read_events(&mut buffer)? {
            self.ended |= event.mask.intersects(ended);
            about_file |= event.name.is_none_or(|n| n == name);
        }
        Ok(about_file)
    }

    /// Before a lookup of the path: the directory watched, and what it reported so far read, so
    /// that any change after this point is reported to the next check.
    pub fn prepare(&mut self, dir: &Path, name: &OsStr) {
        self.last = None;
        if self.inotify.get_or_insert_with(new_instance).is_none() {
            return;
        }
        // Bounded: a directory written to without pause must not hold a request here.
        for _ in 0..16 * MAX_REPORT_READS {
            if self.read_reports(name).is_err() {
                break;
            }
        }
        let Some(Some(inotify)) = self.inotify.as_mut() else {
            return;
        };
        if std::mem::take(&mut self.ended) {
            if let Some(wd) = self.watching.take() {
                let _ = inotify.watches().remove(wd);
            }
        }
        if self.watching.is_none() {
            use inotify::WatchMask;
            let mask = WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::MODIFY
                | WatchMask::ATTRIB
                | WatchMask::CLOSE_WRITE
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR
                // One report, then the watch ends (until the next lookup sets it again): all a
                // check asks is whether anything changed since the last look. Kept going, the
                // watch of a process idle while others write collected every report of theirs
                // in the kernel until its next request: 1.3 MB of kernel memory per idle
                // process after 2,000 writes (measured), up to the queue's 16,384 reports.
                | WatchMask::ONESHOT;
            self.watching = inotify.watches().add(dir, mask).ok();
        }
    }

    pub fn looked_up(&mut self, stamp: Option<FileStamp>) {
        if self.watching.is_some() {
            self.last = Some((stamp, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes of reports the kernel holds for the watch, unread.
    fn queued(w: &DirWatch) -> usize {
        use std::os::fd::AsRawFd;
        let Some(Some(inotify)) = w.inotify.as_ref() else {
            panic!("no watch");
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer it is given.
        let r = unsafe { libc::ioctl(inotify.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(r, 0);
        usize::try_from(n).unwrap()
    }

    #[test]
    fn a_watch_left_alone_while_others_write_holds_one_report() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        std::fs::write(&path, "{}").unwrap();
        let name = path.file_name().unwrap();
        let look = |w: &mut DirWatch| {
            w.prepare(dir.path(), name);
            let stamp = std::fs::symlink_metadata(&path)
                .ok()
                .map(|m| crate::store::file::stamp_of(&m));
            w.looked_up(stamp);
        };
        let mut w = DirWatch::default();
        look(&mut w);
        assert!(w.unchanged(name).is_some(), "nothing changed");
        // Another process's writes, as the pool's writers make them: a temp file, renamed over.
        for i in 0..300 {
            let tmp = dir.path().join(format!(".pool.json.tmp{i}"));
            std::fs::write(&tmp, "{\"anthropic\": []}").unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        let held = queued(&w);
        assert!(
            held <= 128,
            "{held} bytes of reports held for an idle watch"
        );
        assert!(w.unchanged(name).is_none(), "the change is seen");
        look(&mut w);
        assert!(w.unchanged(name).is_some());
        // A report about another entry: the watch is spent, so the next check looks.
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert!(w.unchanged(name).is_none());
        look(&mut w);
        assert!(w.unchanged(name).is_some());
        std::fs::write(&path, "{}").unwrap();
        assert!(w.unchanged(name).is_none(), "an edit in place is seen");
    }

    #[test]
    fn watched_pools_are_bounded() {
        let count = std::sync::atomic::AtomicUsize::new(0);
        assert!(claim(&count, 2));
        assert!(claim(&count, 2));
        assert!(!claim(&count, 2), "both places taken");
        count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        assert!(claim(&count, 2), "a place given back is taken again");
    }
}
