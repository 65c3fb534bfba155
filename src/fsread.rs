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

fn kind_of(ft: &std::fs::FileType) -> &'static str {
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
