//! Refreshed tokens a process could not write into the pool file (a file broken by a hand edit,
//! deleted or replaced, its lock held past the write's wait), kept beside it in
//! `<pool>.unsaved-<pid>.json` (0600) until a write of any process takes them. The refresh token
//! in the pool is spent by then: kept only in memory, the new tokens went with the process (an
//! OpenCode closed, or killed, before the file was mended lost the login).
//!
//! A process never rewrites a file: each change of the tokens it holds unsaved is a new file
//! (`<pool>.unsaved-<pid>-<nanos>.json`), and the ones it wrote before go once it is in place.
//! Every file store write reads all of them (`found`) and removes exactly those it took
//! (`remove`): rewritten in place, a file read by a write waiting for the pool's lock could gain
//! tokens meanwhile that the write then removed unread.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::Digest;

use super::file::{create_private_dir, owner_read_write, parent_dir, persist, sync_dir};
use crate::pool::Pool;
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
/// Files read at most per write: each is a change of a process's unsaved tokens not taken yet.
const MAX_FILES: usize = 64;
/// Files named as ours looked at most per write, the newest first (each read is bounded).
const MAX_LOOKED_AT: usize = 512;

fn prefix(pool: &Path) -> String {
    format!(
        "{}.unsaved-",
        pool.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// The files this process wrote and has not removed yet, with a digest of what each holds: only
/// these are its own to replace (a process gone may have had the same pid).
static WRITTEN: std::sync::Mutex<Vec<(PathBuf, [u8; 32])>> = std::sync::Mutex::new(Vec::new());

fn written() -> std::sync::MutexGuard<'static, Vec<(PathBuf, [u8; 32])>> {
    WRITTEN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes the directory `pool`'s kept files go in (the fleet store's `~/.aidevops`), 0700 under
/// any umask, if it is not there.
pub fn make_dir(pool: &Path) -> crate::error::Result<()> {
    create_private_dir(&parent_dir(pool))
}

/// Keeps `tokens` in a new file of this process's (written whole, then renamed into place), and
/// removes those it wrote before for `pool`; with none, only removes those. The same tokens as
/// its file still in place say are not written again: each bookkeeping write made while the pool
/// file was gone wrote one more file with nothing new in it.
/// Returns the file that holds them now (none when there are none).
pub fn keep(pool: &Path, tokens: &[KeptTokens]) -> std::io::Result<Option<PathBuf>> {
    let dir = parent_dir(pool);
    let prefix = prefix(pool);
    let mine = |p: &PathBuf| {
        p.parent() == Some(dir.as_path())
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
    };
    let before: Vec<(PathBuf, [u8; 32])> =
        written().iter().filter(|(p, _)| mine(p)).cloned().collect();
    let mut kept = None;
    if !tokens.is_empty() {
        let bytes = contents(tokens);
        let digest: [u8; 32] = sha2::Sha256::digest(&*bytes).into();
        let unchanged =
            |(p, d): &(PathBuf, [u8; 32])| *d == digest && fs::symlink_metadata(p).is_ok();
        if before.len() == 1 && before.iter().all(unchanged) {
            return Ok(before.first().map(|(p, _)| p.clone()));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path = dir.join(format!("{prefix}{}-{nanos}.json", std::process::id()));
        write_new(&dir, &prefix, &path, &bytes)?;
        written().push((path.clone(), digest));
        kept = Some(path);
    }
    for (old, _) in &before {
        match fs::remove_file(old) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => written().retain(|(p, _)| p != old),
        }
    }
    Ok(kept)
}

fn contents(tokens: &[KeptTokens]) -> zeroize::Zeroizing<Vec<u8>> {
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
    zeroize::Zeroizing::new(
        serde_json::to_vec(&json!({ "version": 1, "tokens": entries })).unwrap_or_default(),
    )
}

fn write_new(dir: &Path, prefix: &str, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Not the pool's temp name: another process's clean-up of orphaned temps takes those.
    let temp_prefix = format!(".{prefix}{}.", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&temp_prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o600));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    // The mode given at create is cut by the umask: under 0377 the file was 0000, and the next
    // process could not read the tokens it was kept for (it presented the spent one).
    owner_read_write(tmp.as_file())?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    persist(tmp, path).map_err(std::io::Error::other)?;
    sync_dir(dir);
    Ok(())
}

/// Every kept file beside `pool` that reads as ours, with its tokens, the oldest first. A file
/// that does not (a link, a FIFO, another user's, too large, not our JSON) is passed over and
/// left as it is.
pub fn found(pool: &Path) -> Vec<(PathBuf, Vec<KeptTokens>)> {
    let prefix = prefix(pool);
    let Ok(entries) = fs::read_dir(parent_dir(pool)) else {
        return Vec::new();
    };
    let mut candidates = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|rest| rest.split_once('-'))
            .is_some_and(|(pid, nanos)| {
                [pid, nanos]
                    .iter()
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
        if ours {
            candidates.push(entry.path());
        }
    }
    // The newest read first, and only files that read as ours counted: 64 older ones that did
    // not (junk under our name, or tokens of a login made again since, which fit nowhere and
    // stay) took every place, and the newest, of the live token, went unread: the spent one
    // was presented. Landing does not depend on the order (`apply_kept`); they are handed on
    // oldest first.
    // One look at each file's time, not one per comparison.
    candidates.sort_by_cached_key(|p| {
        std::cmp::Reverse(fs::symlink_metadata(p).and_then(|m| m.modified()).ok())
    });
    let mut found = Vec::new();
    for path in candidates.into_iter().take(MAX_LOOKED_AT) {
        match read(&path) {
            Some(tokens) => found.push((path, tokens)),
            None => {
                tracing::warn!(path = %path.display(), "a file of unsaved tokens that cannot be read is left as it is")
            }
        }
        if found.len() == MAX_FILES {
            break;
        }
    }
    found.reverse();
    found
}

fn read(path: &Path) -> Option<Vec<KeptTokens>> {
    let file = crate::fsread::open_regular(path, false).ok()?;
    let meta = file.metadata().ok()?;
    if crate::fsread::foreign_owner(&meta).is_some() {
        return None;
    }
    let bytes = crate::fsread::read_capped(&file, MAX_BYTES).ok()?;
    parse(&bytes)
}

/// The tokens of a kept file's bytes (its writer's temp, cut before its rename, holds the same).
pub fn parse(bytes: &[u8]) -> Option<Vec<KeptTokens>> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
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

/// The files processes kept tokens in (`store::rescue`), as read.
pub type KeptFiles = Vec<(std::path::PathBuf, Vec<KeptTokens>)>;

/// What `apply_kept` did: each account whose kept tokens landed, with the refresh token they
/// replaced (spent, for the refresh journal), and the files that may go (all theirs landed, held
/// already, or of an account no longer in the pool).
#[derive(Default)]
pub struct KeptLanded {
    pub spent: Vec<(String, Secret)>,
    /// The refresh token of each kept set of tokens that landed.
    pub taken: Vec<Secret>,
    pub done: Vec<std::path::PathBuf>,
}

/// Writes the tokens processes kept on disk (`store::rescue`) into `pool`, each where its
/// account still holds the refresh token spent for it. As often as one lands another may follow
/// it: a chain of two (a process refreshed the tokens another kept, and could not write either)
/// lands whole whatever order the files were read in; taken one pass in that order, the later
/// link found the pool not holding its spent token yet, was dropped, and the earlier left the
/// spent token of the later in the pool. Tokens the pool holds already change nothing (a
/// refused login is not brought back by an old file). A file with tokens that fit nowhere yet
/// stays: the pool may be an older state put back, which a later link continues.
pub fn apply_kept(pool: &mut Pool, files: &[(std::path::PathBuf, Vec<KeptTokens>)]) -> KeptLanded {
    apply_kept_with(pool, files, &spent_in_journal)
}

/// Whether the machine's refresh journal records `token` spent with its successor saved: a pool
/// holding it is an older state of the file put back (a sync tool, a snapshot, an editor's undo,
/// a writer that took no lock). Its `expires` alone is no evidence: a login made since may end
/// sooner (Claude Code's imported, or one stored with `expires: 0` to refresh at first use),
/// and such a login was overwritten and noted spent.
pub fn spent_in_journal(token: &Secret) -> bool {
    super::journal::Journal::for_user()
        .is_some_and(|j| j.spent_and_saved(&super::journal::tag(token)))
}

/// `apply_kept`, asking `spent` whether a token an account holds is known spent.
pub fn apply_kept_with(
    pool: &mut Pool,
    files: &[(std::path::PathBuf, Vec<KeptTokens>)],
    spent: &dyn Fn(&Secret) -> bool,
) -> KeptLanded {
    let mut landed = KeptLanded::default();
    if pool.file_missing {
        return landed;
    }
    let mut left: Vec<&KeptTokens> = files.iter().flat_map(|(_, t)| t).collect();
    loop {
        let before = left.len();
        left.retain(|t| {
            let by_name = pool
                .find(&t.email)
                .is_some_and(|a| !a.is_api_key() && a.refresh.as_ref() == Some(&t.presented));
            let holder = if by_name {
                pool.find_mut(&t.email)
            } else {
                pool.accounts_mut()
                    .find(|a| !a.is_api_key() && a.refresh.as_ref() == Some(&t.presented))
            };
            match holder {
                Some(a) => {
                    a.set_tokens(&t.access, &t.refresh, t.expires);
                    spent_by(&mut landed, &a.email, t);
                    false
                }
                None => true,
            }
        });
        if left.is_empty() {
            break;
        }
        if left.len() == before {
            // The newest kept tokens of an account holding a token the journal knows spent: an
            // older state of the pool put back (`spent_in_journal`). They continue its login;
            // left waiting, the account was refused ("put back to an earlier state"). A login
            // made again since holds a token never spent, and keeps it, however soon it ends.
            let newest = left
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    !left
                        .iter()
                        .any(|o| o.expires > t.expires && o.email == t.email)
                })
                .find(|(_, t)| {
                    pool.find(&t.email).is_some_and(|a| {
                        !a.is_api_key()
                            && a.refresh.as_ref() != Some(&t.refresh)
                            && a.expires.is_some_and(|e| e < t.expires)
                            && a.refresh.as_ref().is_some_and(spent)
                    })
                })
                .map(|(i, _)| i);
            let Some(i) = newest else { break };
            let t = left.remove(i);
            if let Some(a) = pool.find_mut(&t.email) {
                // The older token it held was spent before theirs: a copy holding it is as old.
                let older = a.refresh.replace(t.refresh.clone());
                a.set_tokens(&t.access, &t.refresh, t.expires);
                let email = a.email.clone();
                spent_by(&mut landed, &email, t);
                if let Some(older) = older.filter(|o| !o.is_empty()) {
                    landed.spent.push((email, older));
                }
            }
        }
    }
    let fits_nowhere = |t: &KeptTokens| {
        let held = pool
            .accounts()
            .any(|a| a.refresh.as_ref() == Some(&t.refresh));
        // A link of a chain another kept file continues: its refresh token was spent for them.
        let continued = files
            .iter()
            .flat_map(|(_, tokens)| tokens)
            .any(|o| o.presented == t.refresh && o.refresh != t.refresh);
        // An entry kept unread may be its login (a hand edit broke a field): not gone.
        let gone = pool.find(&t.email).is_none()
            && !pool
                .accounts()
                .any(|a| a.refresh.as_ref() == Some(&t.presented))
            && !pool.unreadable_may_be(&t.email, &[&t.presented, &t.refresh]);
        !held && !continued && !gone
    };
    for (path, tokens) in files {
        if !tokens
            .iter()
            .any(|t| left.iter().any(|l| std::ptr::eq(*l, t)) && fits_nowhere(t))
        {
            landed.done.push(path.clone());
        }
    }
    landed
}

/// Notes `t`'s presented token spent for `email`'s tokens: only when the endpoint named a
/// successor. One that handed the same token back (or none, which keeps it) did not spend it, and
/// noted spent it refused the live login.
fn spent_by(landed: &mut KeptLanded, email: &str, t: &KeptTokens) {
    landed.taken.push(t.refresh.clone());
    if t.refresh != t.presented {
        landed.spent.push((email.to_string(), t.presented.clone()));
    }
}

/// What each kept file's tokens are to `pool` (`oauth-pool doctor`): "waiting" (the pool holds
/// the refresh token spent for them: the next write takes them), "written" (the pool holds them
/// already: the next write removes the file), "gone" (their account is no longer in the pool)
/// or "unmatched" (the account holds other tokens: logged in again since, or an older pool
/// put back). With no pool to read (missing, or refused), every one is "waiting".
pub fn kept_states(pool: Option<&Pool>, files: &KeptFiles) -> Vec<Vec<(String, &'static str)>> {
    let landed = pool.filter(|p| !p.file_missing).map(|p| {
        let mut trial = p.clone();
        let landed = apply_kept(&mut trial, files);
        (p, landed.taken)
    });
    files
        .iter()
        .map(|(_, tokens)| {
            tokens
                .iter()
                .map(|t| {
                    let state = match &landed {
                        None => "waiting",
                        Some((_, taken)) if taken.contains(&t.refresh) => "waiting",
                        Some((p, _))
                            if p.accounts().any(|a| a.refresh.as_ref() == Some(&t.refresh)) =>
                        {
                            "written"
                        }
                        Some((p, _)) if p.find(&t.email).is_none() => "gone",
                        Some(_) => "unmatched",
                    };
                    (t.email.clone(), state)
                })
                .collect()
        })
        .collect()
}

/// The process that wrote a kept file, by its name, and whether it is still running (it retries
/// the write itself while it runs).
pub fn writer(path: &Path) -> Option<(i64, bool)> {
    let name = path.file_name()?.to_string_lossy();
    let pid: i64 = name
        .split(".unsaved-")
        .last()?
        .split('-')
        .next()?
        .parse()
        .ok()?;
    Some((pid, super::legacy_lock::is_alive(pid)))
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
        // Another process's, of a pid this one may share: never this one's to remove.
        let other = dir.path().join(format!(
            "oauth-pool.json.unsaved-{}-1.json",
            std::process::id()
        ));
        fs::write(&other, r#"{"tokens":[]}"#).unwrap();
        keep(&pool, &[tokens("a@x", 1)]).unwrap();
        keep(&pool, &[tokens("a@x", 1), tokens("b@x", 2)]).unwrap();
        let all: Vec<_> = found(&pool)
            .into_iter()
            .filter(|(p, _)| *p != other)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "a new file for each change, the one before removed"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&all[0].0).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = all[0].1.iter().map(|t| t.email.as_str()).collect();
        assert_eq!(names, ["a@x", "b@x"]);
        assert_eq!(all[0].1[1].refresh.expose(), "refresh-2");
        keep(&pool, &[]).unwrap();
        assert!(other.exists());
        fs::remove_file(&other).unwrap();
        assert!(found(&pool).is_empty());
        assert!(
            fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no temp left"
        );
    }

    #[test]
    fn the_same_tokens_are_not_written_again_while_their_file_is_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("oauth-pool.json");
        let listed = || {
            let mut names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            names
        };
        keep(&pool, &[tokens("a@x", 1)]).unwrap();
        let first = listed();
        assert_eq!(first.len(), 1);
        for _ in 0..3 {
            keep(&pool, &[tokens("a@x", 1)]).unwrap();
        }
        assert_eq!(listed(), first, "nothing new: the file stays as it was");
        // Taken by another process's write: written again, since only it tells of them.
        fs::remove_file(&first[0]).unwrap();
        keep(&pool, &[tokens("a@x", 1)]).unwrap();
        assert_eq!(listed().len(), 1);
        assert_ne!(listed(), first);
        let again = listed();
        keep(&pool, &[tokens("a@x", 2)]).unwrap();
        let changed = listed();
        assert_eq!(changed.len(), 1);
        assert_ne!(changed, again, "changed tokens are a new file");
        assert_eq!(found(&pool)[0].1[0].refresh.expose(), "refresh-2");
        keep(&pool, &[]).unwrap();
        assert!(listed().is_empty());
    }

    #[test]
    fn the_newest_are_read_when_older_files_fill_every_place() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("oauth-pool.json");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for n in 0..MAX_FILES + 16 {
            let path = dir
                .path()
                .join(format!("oauth-pool.json.unsaved-7-{n}.json"));
            // Junk under our name, and tokens of a login made again since (they fit nowhere).
            if n % 10 == 0 {
                fs::write(&path, "not json").unwrap();
            } else {
                fs::write(
                    &path,
                    r#"{"tokens":[{"email":"a@x","access":"a","refresh":"r","expires":1,"presented":"p"}]}"#,
                )
                .unwrap();
            }
            let file = fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(old + std::time::Duration::from_secs(n as u64))
                .unwrap();
        }
        keep(&pool, &[tokens("a@x", 9)]).unwrap();
        let all = found(&pool);
        assert_eq!(all.len(), MAX_FILES);
        assert_eq!(
            all.last().unwrap().1[0].refresh.expose(),
            "refresh-9",
            "the newest, handed on last"
        );
        keep(&pool, &[]).unwrap();
    }

    #[test]
    fn files_that_are_not_ours_are_passed_over_and_left() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("oauth-pool.json");
        let broken = dir.path().join("oauth-pool.json.unsaved-12-1.json");
        fs::write(&broken, "{").unwrap();
        fs::write(dir.path().join("oauth-pool.json.unsaved-x-1.json"), "{}").unwrap();
        fs::write(
            dir.path().join("oauth-pool.json.unsaved-13-1.json"),
            vec![b' '; MAX_BYTES as usize + 1],
        )
        .unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                &broken,
                dir.path().join("oauth-pool.json.unsaved-14-1.json"),
            )
            .unwrap();
            let fifo = std::ffi::CString::new(
                dir.path()
                    .join("oauth-pool.json.unsaved-15-1.json")
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
