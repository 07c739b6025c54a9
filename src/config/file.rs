//! Reading a file the config names (the config file itself, a `*_file` secret): only a
//! regular file (symlinks followed: Kubernetes mounts are links), of a bounded size, and
//! never a read that blocks. The wrong path must not hang the start or a reload (opening
//! a FIFO for reading waits for a writer, forever) nor be read into memory whole (a log,
//! `/dev/zero`, which has no end).

use std::io::Read;
use std::path::Path;

/// The largest config file read: far above any real one (a thousand targets and sinks fit
/// in a few hundred KiB), far below what hurts.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The text of the regular file at `path`, at most `max` bytes. Opened non-blocking, so a
/// FIFO opens at once and is then refused; the file type and size are checked on the open
/// descriptor (what is read is what was checked); the read stops at `max + 1` bytes
/// whatever the size said (a file still growing).
pub fn read_regular(path: &Path, max: u64) -> std::io::Result<String> {
    use rustix::fs::{FileType, Mode, OFlags};
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&fd)?;
    let what = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => None,
        FileType::Directory => Some("a directory"),
        FileType::Fifo => Some("a FIFO"),
        FileType::Socket => Some("a socket"),
        FileType::CharacterDevice | FileType::BlockDevice => Some("a device"),
        _ => Some("not a file"),
    };
    if let Some(what) = what {
        return Err(std::io::Error::other(format!(
            "it is {what}, not a regular file"
        )));
    }
    let too_large = || std::io::Error::other(format!("it is larger than {}", human(max)));
    if stat.st_size as u64 > max {
        return Err(too_large());
    }
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::with_capacity(stat.st_size as usize);
    (&mut file).take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "it is not UTF-8 text"))
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_devices_directories_and_large_files_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        // Opening it for reading would wait for a writer; here it is refused at once.
        let e = read_regular(&fifo, 1024).unwrap_err();
        assert!(e.to_string().contains("a FIFO, not a regular file"), "{e}");
        let zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_regular(&zero, 1024).unwrap_err();
        assert!(e.to_string().contains("a device"), "{e}");
        let e = read_regular(dir.path(), 1024).unwrap_err();
        assert!(e.to_string().contains("a directory"), "{e}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let e = read_regular(&big, 1024).unwrap_err();
        assert!(e.to_string().contains("larger than 1 KiB"), "{e}");
        let ok = dir.path().join("ok.toml");
        std::fs::write(&ok, "a = 1\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert_eq!(read_regular(&link, 1024).unwrap(), "a = 1\n");
    }
}
