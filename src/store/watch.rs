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
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(stamp),
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
                | WatchMask::ONLYDIR;
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
