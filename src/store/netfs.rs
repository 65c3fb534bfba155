//! Whether the pool's directory is on a file system whose locks do not reach every process that
//! may write the pool (reliability case 24). The pool's writes are serialized by `flock` on its
//! lock file: on NFS a lock is local to one client unless the server relays it (and with
//! `local_lock=all` never is), SMB/CIFS maps it to its own byte-range locks or not at all, and a
//! FUSE, 9P or VM share passes it to a server that may ignore it. Processes on two machines
//! (or a host and a VM) then both refresh the same token, and one of them loses its account.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The name of a file system, by its `statfs` `f_type` (Linux's magic numbers, `linux/magic.h`
/// and the file systems' own headers), when its locks may not exclude another machine's writer.
pub fn weak_locks(f_type: u32) -> Option<&'static str> {
    Some(match f_type {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x6573_5546 => "FUSE",
        0x0102_1997 => "9P",
        0x786F_4256 => "vboxsf",
        0x5346_414F | 0x6B41_4653 => "AFS",
        0x7375_7245 => "Coda",
        0x564C => "NCP",
        _ => return None,
    })
}

/// The `f_type` of the file system `dir` (or, while it does not exist yet, its nearest existing
/// parent) is on; None where it cannot be asked.
#[cfg(target_os = "linux")]
fn f_type_of(dir: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let existing = dir.ancestors().find(|p| p.exists())?;
    let c_path = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    let mut out = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `out` is written by statfs
    // before it is read, and only read when statfs says it succeeded.
    let done = unsafe { libc::statfs(c_path.as_ptr(), out.as_mut_ptr()) };
    if done != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `out`.
    let stat = unsafe { out.assume_init() };
    // The kernel's value is an unsigned 32-bit magic in a word whose sign and width differ
    // between architectures (CIFS's 0xFF534D42 reads negative where it is 32-bit signed).
    #[allow(clippy::unnecessary_cast)]
    let magic = stat.f_type as i64 as u64;
    Some((magic & 0xFFFF_FFFF) as u32)
}

#[cfg(not(target_os = "linux"))]
fn f_type_of(_dir: &Path) -> Option<u32> {
    None
}

/// The name of the file system `dir` is on, when its locks are weak (see [`weak_locks`]).
pub fn weak_locks_at(dir: &Path) -> Option<&'static str> {
    f_type_of(dir).and_then(weak_locks)
}

/// Logs, once per directory per process, that the pool at `path` is on such a file system.
pub fn warn_once(path: &Path) {
    static SEEN: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let dir = path.parent().unwrap_or(path).to_path_buf();
    {
        let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&dir) {
            return;
        }
        seen.push(dir.clone());
    }
    if let Some(kind) = weak_locks_at(&dir) {
        tracing::warn!(path = %dir.display(), filesystem = kind, "{}", advice(&dir, kind));
    }
}

/// What a person reads about a pool on such a file system (the log line and `doctor`).
pub fn advice(dir: &Path, kind: &str) -> String {
    format!(
        "{} is on {kind}, whose file locks may not exclude processes on other machines: two of them can refresh the same login at once, and one loses it. Use the pool from one machine only, or keep it on a local disk (OAUTH_POOL_PATH), or share it through the fleet store (OAUTH_POOL_STORE)",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_and_user_space_file_systems_have_weak_locks_local_ones_not() {
        for (magic, name) in [
            (0x6969, "NFS"),
            (0x517B, "SMB"),
            (0xFF53_4D42, "CIFS"),
            (0xFE53_4D42, "SMB2"),
            (0x6573_5546, "FUSE"),
            (0x0102_1997, "9P"),
            (0x786F_4256, "vboxsf"),
            (0x5346_414F, "AFS"),
            (0x6B41_4653, "AFS"),
            (0x7375_7245, "Coda"),
            (0x564C, "NCP"),
        ] {
            assert_eq!(weak_locks(magic), Some(name), "{magic:#x}");
        }
        // ext4, xfs, btrfs, tmpfs, zfs, f2fs, overlayfs: one kernel holds every lock.
        for magic in [
            0xEF53,
            0x5846_5342,
            0x9123_683E,
            0x0102_1994,
            0x2FC1_2FC1,
            0xF2F5_2010,
            0x794C_7630,
        ] {
            assert_eq!(weak_locks(magic), None, "{magic:#x}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_local_directory_and_one_not_made_yet_are_asked_of_their_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(f_type_of(dir.path()).is_some());
        assert_eq!(
            f_type_of(&dir.path().join("not").join("made")),
            f_type_of(dir.path())
        );
        assert_eq!(weak_locks_at(dir.path()), None);
    }

    #[test]
    fn the_advice_names_the_directory_and_what_to_do() {
        let text = advice(Path::new("/mnt/home/.aidevops"), "NFS");
        assert!(text.starts_with("/mnt/home/.aidevops is on NFS"), "{text}");
        assert!(text.contains("OAUTH_POOL_PATH") && text.contains("OAUTH_POOL_STORE"));
    }
}
