//! The gateway key clients must present: from the environment, or generated once into a 0600
//! file beside the pool file and read back bounded.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::secret::Secret;
use crate::store::Store;
use crate::{config, fsread};

const KEY_FILE_MAX: u64 = 4096;
const KEY_PREFIX: &str = "oauth-pool-gw-";

/// The key clients must present: `OAUTH_POOL_GATEWAY_KEY`, else a key generated once into a
/// 0600 file beside the pool file (`<pool>.gateway-key`), read bounded like any file we did not
/// just write.
pub fn gateway_key(store: &Store) -> Result<Secret> {
    if let Some(k) = config::env(config::var::GATEWAY_KEY).filter(|k| !k.trim().is_empty()) {
        return Ok(Secret::new(k.trim()));
    }
    let path = key_path(store)?;
    match read_key(&path)? {
        Some(key) => Ok(key),
        None => create_key(&path),
    }
}

/// The key in `path`, or None when there is no such file.
fn read_key(path: &Path) -> Result<Option<Secret>> {
    match fsread::read_regular(path, KEY_FILE_MAX, false) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            if text.len() < 16 {
                return Err(Error::InvalidArgument(format!(
                    "the gateway key file {} is too short to be a key: remove it to make a new one",
                    path.display()
                )));
            }
            Ok(Some(Secret::new(text)))
        }
        Err(fsread::ReadError::NotFound) => Ok(None),
        Err(e) => Err(Error::InvalidArgument(format!(
            "the gateway key file {} refused: {e}",
            path.display()
        ))),
    }
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

fn create_key(path: &Path) -> Result<Secret> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| Error::InvalidArgument(format!("no OS randomness: {e}")))?;
    use base64::Engine as _;
    let key = Secret::new(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ));
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create directory", e))?;
    // Written whole under a name of its own, then linked into place: another process never
    // reads a key file that is still empty, and if one links its key first, that key wins.
    let mut temp = path.as_os_str().to_os_string();
    temp.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let written = opts.open(&temp).and_then(|mut f| {
        use std::io::Write;
        f.write_all(key.expose().as_bytes())
            .and_then(|_| f.sync_all())
    });
    let linked = written.and_then(|_| std::fs::hard_link(&temp, path));
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_key(path)?.ok_or_else(|| {
                Error::InvalidArgument(format!("the gateway key file {} vanished", path.display()))
            })
        }
        Err(e) => Err(Error::io(path, "write gateway key", e)),
    }
}
