//! Refreshed tokens a process could not write into the pool file (a file broken by a hand edit,
//! deleted or replaced, its lock held past the write's wait), kept beside it in
//! `<pool>.unsaved-<pid>.json` (0600) until a write of any process takes them. The refresh token
//! in the pool is spent by then: kept only in memory, the new tokens went with the process (an
//! OpenCode closed, or killed, before the file was mended lost the login).
//!
//! A process rewrites its own file whenever the tokens it holds unsaved change, and every file
//! store write reads all of them (`found`) and removes those it took (`remove`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::file::{parent_dir, persist, sync_dir};
use crate::secret::Secret;

/// One account's tokens kept unsaved, and the refresh token spent for them (the one the pool
/// still holds until they are written).
#[derive(Clone, Debug)]
pub struct KeptTokens {
    pub email: String,
    pub access: Secret,
    pub refresh: Secret,
    pub expires: i64,
    pub presented: Secret,
}

/// A file past this is no file of ours (a handful of accounts' tokens take a few KB).
const MAX_BYTES: u64 = 256 * 1024;
/// Files read at most per write: each is a process that ended with tokens unsaved.
const MAX_FILES: usize = 64;

fn prefix(pool: &Path) -> String {
    format!(
        "{}.unsaved-",
        pool.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// This process's file beside `pool`.
pub fn own_path(pool: &Path) -> PathBuf {
    parent_dir(pool).join(format!("{}{}.json", prefix(pool), std::process::id()))
}

/// Keeps `tokens` in this process's file (written whole, then renamed into place), or removes
/// the file when there are none left.
pub fn keep(pool: &Path, tokens: &[KeptTokens]) -> std::io::Result<()> {
    let path = own_path(pool);
    if tokens.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let dir = parent_dir(pool);
    let entries: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({
                "email": t.email,
                "access": t.access.expose(),
                "refresh": t.refresh.expose(),
                "expires": t.expires,
                "presented": t.presented.expose(),
            })
        })
        .collect();
    let bytes = zeroize::Zeroizing::new(
        serde_json::to_vec(&json!({ "version": 1, "tokens": entries })).unwrap_or_default(),
    );
    // Not the pool's temp name: another process's clean-up of orphaned temps takes those.
    let temp_prefix = format!(".{}{}.", prefix(pool), std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&temp_prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(&dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    persist(tmp, &path).map_err(std::io::Error::other)?;
    sync_dir(&dir);
    Ok(())
}

/// Every kept file beside `pool` that reads as ours, with its tokens. A file that does not (a
/// link, a FIFO, another user's, too large, not our JSON) is passed over and left as it is.
pub fn found(pool: &Path) -> Vec<(PathBuf, Vec<KeptTokens>)> {
    let prefix = prefix(pool);
    let Ok(entries) = fs::read_dir(parent_dir(pool)) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            continue;
        }
        let path = entry.path();
        match read(&path) {
            Some(tokens) => found.push((path, tokens)),
            None => {
                tracing::warn!(path = %path.display(), "a file of unsaved tokens that cannot be read is left as it is")
            }
        }
        if found.len() >= MAX_FILES {
            break;
        }
    }
    found
}

fn read(path: &Path) -> Option<Vec<KeptTokens>> {
    let file = crate::fsread::open_regular(path, false).ok()?;
    let meta = file.metadata().ok()?;
    if crate::fsread::foreign_owner(&meta).is_some() {
        return None;
    }
    let bytes = crate::fsread::read_capped(&file, MAX_BYTES).ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    let text = |t: &Value, field: &str| -> Option<Secret> {
        t.get(field)?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    value
        .get("tokens")?
        .as_array()?
        .iter()
        .map(|t| {
            Some(KeptTokens {
                email: t.get("email")?.as_str()?.to_string(),
                access: text(t, "access")?,
                refresh: text(t, "refresh")?,
                expires: t.get("expires")?.as_i64()?,
                presented: text(t, "presented")?,
            })
        })
        .collect()
}

/// Removes the files whose tokens a write took.
pub fn remove(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a file of unsaved tokens a write took");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(email: &str, n: u8) -> KeptTokens {
        KeptTokens {
            email: email.into(),
            access: Secret::new(format!("access-{n}")),
            refresh: Secret::new(format!("refresh-{n}")),
            expires: 1_900_000_000_000,
            presented: Secret::new(format!("spent-{n}")),
        }
    }

    #[test]
    fn kept_tokens_are_found_again_and_go_when_none_are_left() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("oauth-pool.json");
        keep(&pool, &[tokens("a@x", 1), tokens("b@x", 2)]).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(own_path(&pool)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let all = found(&pool);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, own_path(&pool));
        let names: Vec<_> = all[0].1.iter().map(|t| t.email.as_str()).collect();
        assert_eq!(names, ["a@x", "b@x"]);
        assert_eq!(all[0].1[1].refresh.expose(), "refresh-2");
        keep(&pool, &[]).unwrap();
        assert!(found(&pool).is_empty());
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no temp left"
        );
    }

    #[test]
    fn files_that_are_not_ours_are_passed_over_and_left() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("oauth-pool.json");
        let broken = dir.path().join("oauth-pool.json.unsaved-12.json");
        fs::write(&broken, "{").unwrap();
        fs::write(dir.path().join("oauth-pool.json.unsaved-x.json"), "{}").unwrap();
        fs::write(
            dir.path().join("oauth-pool.json.unsaved-13.json"),
            vec![b' '; MAX_BYTES as usize + 1],
        )
        .unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&broken, dir.path().join("oauth-pool.json.unsaved-14.json"))
                .unwrap();
            let fifo = std::ffi::CString::new(
                dir.path()
                    .join("oauth-pool.json.unsaved-15.json")
                    .to_string_lossy()
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        }
        assert!(found(&pool).is_empty());
        assert!(broken.exists());
    }
}
