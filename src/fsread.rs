//! Reading a file the pool did not write itself (a credentials file, the `.bak`, a CA bundle, a
//! key file) without trusting what is at that path: regular files only, never more than a cap,
//! and an open that cannot block (a FIFO with no writer would hang a plain `open` forever, and
//! `/dev/zero` would fill memory).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

#[derive(Debug)]
pub enum ReadError {
    NotFound,
    /// A symbolic link where the caller refuses them.
    Symlink,
    /// A FIFO, socket, device or directory.
    NotRegular(&'static str),
    TooLarge(u64),
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotFound => write!(f, "it does not exist"),
            ReadError::Symlink => write!(f, "it is a symbolic link"),
            ReadError::NotRegular(kind) => write!(f, "it is {kind}, not a regular file"),
            ReadError::TooLarge(n) => write!(f, "it is larger than {n} bytes"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

pub fn kind_of(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_socket() {
            return "a socket";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading without blocking and checks, on the opened descriptor, that it is a
/// regular file (a swap of the path between a check and the open cannot slip a FIFO in).
pub fn open_regular(path: &Path, follow_symlinks: bool) -> Result<File, ReadError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound,
        _ => ReadError::Io(e),
    })?;
    if meta.file_type().is_symlink() && !follow_symlinks {
        return Err(ReadError::Symlink);
    }
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        if !follow_symlinks {
            flags |= libc::O_NOFOLLOW;
        }
        opts.custom_flags(flags);
    }
    if !meta.file_type().is_symlink() && !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(&meta.file_type())));
    }
    let file = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ReadError::NotFound,
        _ => {
            #[cfg(unix)]
            if e.raw_os_error() == Some(libc::ELOOP) {
                return ReadError::Symlink;
            }
            ReadError::Io(e)
        }
    })?;
    let opened = file.metadata().map_err(ReadError::Io)?;
    if !opened.is_file() {
        return Err(ReadError::NotRegular(kind_of(&opened.file_type())));
    }
    Ok(file)
}

/// The whole content of a regular file of at most `cap` bytes (zeroed when dropped: these files
/// hold tokens).
pub fn read_regular(
    path: &Path,
    cap: u64,
    follow_symlinks: bool,
) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let file = open_regular(path, follow_symlinks)?;
    read_capped(&file, cap)
}

pub fn read_capped(file: &File, cap: u64) -> Result<Zeroizing<Vec<u8>>, ReadError> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > cap {
        return Err(ReadError::TooLarge(cap));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(len as usize));
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_key_file_is_this_users_and_made_private_once_known() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(read_own_key(&path, 64).unwrap().is_none());
        std::fs::write(&path, "key-bytes").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = read_own_key(&path, 64).unwrap().unwrap();
        assert_eq!(&found.bytes[..], b"key-bytes");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&path),
            0o644,
            "left as it is until the caller knows it is a key"
        );
        found.keep_private(&path);
        assert_eq!(mode(&path), 0o600);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let why = read_own_key(&path, 64).err().unwrap();
            assert!(why.contains("owned by uid 65534"), "{why}");
        }
    }

    #[test]
    fn special_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(
            read_regular(&fifo, 1024, true),
            Err(ReadError::NotRegular("a FIFO"))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1024, true),
            Err(ReadError::NotRegular(_))
        ));
        assert!(matches!(
            read_regular(dir.path(), 1024, true),
            Err(ReadError::NotRegular("a directory"))
        ));
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; 2048]).unwrap();
        assert!(matches!(
            read_regular(&big, 1024, true),
            Err(ReadError::TooLarge(1024))
        ));
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&big, &link).unwrap();
        assert!(matches!(
            read_regular(&link, 4096, false),
            Err(ReadError::Symlink)
        ));
        assert_eq!(read_regular(&link, 4096, true).unwrap().len(), 2048);
        assert!(matches!(
            read_regular(&dir.path().join("none"), 1, true),
            Err(ReadError::NotFound)
        ));
    }
}

/// The owner of a file when it is not this user (None on systems without uids).
pub fn foreign_owner(meta: &std::fs::Metadata) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        (meta.uid() != me).then_some(meta.uid())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// A private file found readable by others is made 0600 (with a warning), not refused.
pub fn tighten_mode(path: &Path, file: &File, meta: &std::fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "a private file was readable by others; tightened to 0600");
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file, meta);
}

/// A key file of this user's: its bytes (at most `cap`), or None when there is none. Refused
/// (the reason, for the caller's message) when it is not a regular file or another user owns it:
/// whoever can write it chooses the key. Call `keep_private` once the bytes are known to be a key,
/// so that a path pointed at some other file leaves that file's mode as it was.
pub fn read_own_key(path: &Path, cap: u64) -> Result<Option<OwnKeyFile>, String> {
    let file = match open_regular(path, false) {
        Ok(f) => f,
        Err(ReadError::NotFound) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if let Some(owner) = foreign_owner(&meta) {
        return Err(format!(
            "it is owned by uid {owner}, not by this user: anyone who can write it chooses the key"
        ));
    }
    let bytes = read_capped(&file, cap).map_err(|e| e.to_string())?;
    Ok(Some(OwnKeyFile { bytes, file, meta }))
}

pub struct OwnKeyFile {
    pub bytes: Zeroizing<Vec<u8>>,
    file: File,
    meta: std::fs::Metadata,
}

impl OwnKeyFile {
    /// Tightens a mode wider than 0600 (with a warning).
    pub fn keep_private(&self, path: &Path) {
        tighten_mode(path, &self.file, &self.meta);
    }
}
