//! The gateway key clients must present: from the environment, or generated once into a 0600
//! file beside the pool file and read back bounded.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::store::Store;
use crate::{config, fsread};

const KEY_FILE_MAX: u64 = 4096;
const KEY_PREFIX: &str = "oauth-pool-gw-";
/// The shortest key taken: a generated one has 46 characters.
const KEY_MIN: usize = 16;

/// A key a client can present and nobody guesses: visible ASCII (a header value with anything
/// else never matches), at least `KEY_MIN` long.
fn usable(key: &Secret) -> bool {
    key.is_token_shaped() && key.expose().len() >= KEY_MIN
}

/// The key clients must present: `OAUTH_POOL_GATEWAY_KEY`, else a key generated once into a
/// 0600 file beside the pool file (`<pool>.gateway-key`), read bounded like any file we did not
/// just write. With it, the file this call made, if it made one: a gateway started on a pool
/// file moved without its key file (or with another `--path`) has a key no client holds yet,
/// and its clients, refused, were told nothing of why.
pub fn gateway_key(store: &Store) -> Result<(Secret, Option<PathBuf>)> {
    // ASCII blanks only: a key padded with no-break spaces (copied off a page) was taken without
    // them, while a client sending the value as written was refused.
    if let Some(k) = config::env(config::var::GATEWAY_KEY).filter(|k| !k.trim_ascii().is_empty()) {
        let key = Secret::new(k.trim_ascii());
        if !usable(&key) {
            return Err(Error::InvalidArgument(format!(
                "{} must be {KEY_MIN} to 4,096 visible ASCII characters (no spaces or control characters): a client could not present it, or could guess it",
                config::var::GATEWAY_KEY.name()
            )));
        }
        return Ok((key, None));
    }
    let path = key_path(store)?;
    crate::store::file::remove_stale_temps(&path);
    match read_key(&path)? {
        Some(key) => Ok((key, None)),
        None => create_key(&path),
    }
}

/// The key in `path`, or None when there is no such file. Held to the pool file's rules: a
/// regular file of this user's, tightened to 0600 when it was wider.
fn read_key(path: &Path) -> Result<Option<Secret>> {
    let refused = |why: String| {
        Error::InvalidArgument(format!(
            "the gateway key file {} refused: {why}",
            path.display()
        ))
    };
    let Some(found) = fsread::read_own_key(path, KEY_FILE_MAX).map_err(refused)? else {
        return Ok(None);
    };
    let key = Secret::new(String::from_utf8_lossy(&found.bytes).trim_ascii());
    if !usable(&key) {
        return Err(refused(format!(
            "it does not hold a key (at least {KEY_MIN} visible ASCII characters): remove it to make a new one"
        )));
    }
    found.keep_private(path);
    Ok(Some(key))
}

fn key_path(store: &Store) -> Result<PathBuf> {
    // The fleet store has no file: the key goes where this host's pool file would be.
    let pool = match store.path() {
        Some(p) => p.to_path_buf(),
        None => config::pool_path(None)?,
    };
    let mut name = pool.file_name().unwrap_or_default().to_os_string();
    name.push(".gateway-key");
    Ok(pool.with_file_name(name))
}

/// A new key in `path`, and `path` when it is this call's (another process may link its key
/// first: that one is read and was not made here).
fn create_key(path: &Path) -> Result<(Secret, Option<PathBuf>)> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| Error::InvalidArgument(format!("no OS randomness: {e}")))?;
    use base64::Engine as _;
    let key = Secret::new(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ));
    crate::store::file::check_maker(path).map_err(|why| {
        Error::InvalidArgument(format!(
            "the gateway key file {} cannot be made: {why}",
            path.display()
        ))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::store::file::create_private_dir(dir)?;
    // Written whole under a name of its own, then renamed into place only if there is none:
    // another process never reads a key file that is still empty, and if one makes its key
    // first, that key wins.
    let linked = crate::store::file::create_whole(path, key.expose().as_bytes());
    match linked {
        Ok(()) => Ok((key, Some(path.to_path_buf()))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(path)?.map(|key| (key, None)).ok_or_else(|| {
                Error::InvalidArgument(format!("the gateway key file {} vanished", path.display()))
            })
        }
        Err(e) => Err(Error::io(path, "write gateway key", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_left_by_a_maker_killed_midway_neither_blocks_the_next_nor_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth-pool.json.gateway-key");
        // What a maker killed between its write and its link left (named by its pid, as
        // earlier versions named it), met by a maker given the same pid: a container's gateway
        // starts as the same pid each time. Its exclusive create failed ("vanished") for ever.
        let mut left = path.as_os_str().to_os_string();
        left.push(format!(".{}.tmp", std::process::id()));
        std::fs::write(&left, "oauth-pool-gw-left-by-a-killed-maker").unwrap();
        let (made, created) = create_key(&path).unwrap();
        assert_eq!(created.as_deref(), Some(path.as_path()));
        assert_eq!(read_key(&path).unwrap().unwrap().expose(), made.expose());
        // Young, it may be a live maker's: kept. Past `STALE_TEMP`, the next start removes it.
        crate::store::file::remove_stale_temps(&path);
        assert!(std::path::Path::new(&left).exists());
        let old = std::time::SystemTime::now() - crate::store::file::STALE_TEMP;
        std::fs::File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let other = dir.path().join("other.json.gateway-key.1.tmp");
        std::fs::write(&other, "not ours").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(old)
            .unwrap();
        crate::store::file::remove_stale_temps(&path);
        assert!(!std::path::Path::new(&left).exists());
        assert!(other.exists(), "another pool's is not this one's to remove");
        assert!(path.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_key_file_must_hold_a_key_and_is_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oauth-pool.json.gateway-key");
        for bad in [
            &b"short"[..],
            &[0u8; 32][..],
            b"a key with spaces in the middle",
            b"0123456789abcdef\x01xyz",
            b"\xff\xfe0123456789abcdef",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = read_key(&path).unwrap_err();
            assert_eq!(err.code(), "INVALID_ARGUMENT", "{bad:?}");
            assert!(err.to_string().contains("does not hold a key"), "{err}");
        }
        std::fs::write(&path, "oauth-pool-gw-0123456789abcdef\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let key = read_key(&path).unwrap().unwrap();
        assert_eq!(key.expose(), "oauth-pool-gw-0123456789abcdef");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "tightened");
        }
        assert!(read_key(&dir.path().join("missing")).unwrap().is_none());
        // A key made where no directory was: the directory is private too.
        let fresh = dir
            .path()
            .join("new-home")
            .join("oauth-pool.json.gateway-key");
        let (made, created) = create_key(&fresh).unwrap();
        assert_eq!(read_key(&fresh).unwrap().unwrap().expose(), made.expose());
        assert_eq!(created.as_deref(), Some(fresh.as_path()), "made here");
        // Made by another process first: read, and not said to be made here.
        let (again, created) = create_key(&fresh).unwrap();
        assert_eq!((again.expose(), created), (made.expose(), None));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(fresh.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        // A file someone else owns could hold a key they chose (checkable only as root here).
        #[cfg(unix)]
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let err = read_key(&path).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
    }
}
