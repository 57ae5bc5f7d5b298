//! Reading configuration files: regular files only, bounded in size, never blocking on a
//! FIFO or a device. Every file sluice reads as configuration (the TOML file, the node
//! settings, each manifest) comes through [`read_file`]; what the text means is the rest of
//! `config`'s business.

use super::ConfigError;
use std::path::Path;

/// The most sluice reads from one configuration file, and from all the files of a manifests
/// directory together: 64 MiB (docs/operations.md, "Limits").
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a configuration file (TOML, a manifest, node settings) as text: only a regular
/// file, of at most `limit` bytes. A FIFO, a device (`/dev/zero`), a socket or a directory is
/// refused at once, without waiting for a writer; a file longer than `limit` (or one that
/// grows past it while being read, like a file of /proc) is refused after `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let fail = |message: String| ConfigError {
        origin: path.display().to_string(),
        line: 0,
        column: 0,
        message,
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes
    // nothing for a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(e.to_string()))?;
    let kind = file
        .metadata()
        .map_err(|e| fail(e.to_string()))?
        .file_type();
    let what = if kind.is_file() {
        None
    } else if kind.is_dir() {
        Some("a directory")
    } else if kind.is_fifo() {
        Some("a FIFO")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_block_device() {
        Some("a block device")
    } else if kind.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(fail(format!(
            "is {what}: configuration is read only from regular files"
        )));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > limit {
        return Err(fail(format!(
            "larger than {} MiB, the most sluice reads from configuration files \
             (docs/operations.md, \"Limits\")",
            limit / (1024 * 1024)
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Makes a FIFO at `path` (tests of the refusal of non-regular files).
#[cfg(test)]
pub(crate) fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status();
    assert!(
        matches!(made, Ok(s) if s.success()),
        "mkfifo {}: {made:?}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let dir = std::env::temp_dir().join(format!("sluice-read-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        // A FIFO nobody writes to: refused at once (reading it would wait forever).
        let fifo = dir.join("fifo.toml");
        mkfifo(&fifo);
        let e = read_file(&fifo, MAX_CONFIG_BYTES).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("is a FIFO: configuration is read only from regular files"),
            "{e}"
        );
        let e = read_file(Path::new("/dev/zero"), MAX_CONFIG_BYTES).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/dev/zero: is a character device: configuration is read only from regular files"
        );
        let e = read_file(&dir, MAX_CONFIG_BYTES).unwrap_err();
        assert!(e.message.contains("is a directory"), "{e}");
        // Bounded: one byte over the limit is refused, the limit itself is read.
        let big = dir.join("big.toml");
        std::fs::write(&big, "#".repeat(2 * 1024 * 1024 + 1)).unwrap();
        let e = read_file(&big, 2 * 1024 * 1024).unwrap_err();
        assert!(e.message.starts_with("larger than 2 MiB"), "{e}");
        std::fs::write(&big, "#".repeat(2 * 1024 * 1024)).unwrap();
        assert_eq!(
            read_file(&big, 2 * 1024 * 1024).unwrap().len(),
            2 * 1024 * 1024
        );
        std::fs::write(&big, [b'a', 0xff]).unwrap();
        let e = read_file(&big, 10).unwrap_err();
        assert!(e.message.contains("not UTF-8"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
