//! A minimal writer of the `newc` cpio format, the one the Linux kernel unpacks as an
//! initramfs (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to a multiple of 4, then the data padded to a multiple of 4.
//! The archive ends with an entry named `TRAILER!!!`.

use std::fmt::Write as _;
use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// Writes a `newc` archive entry by entry. Timestamps are 0 and owners root, so the same
/// inputs give the same bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// A directory with permission bits `perm`.
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, 2, (0, 0), &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, 1, (0, 0), data)
    }

    /// A character device node `major:minor`.
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        Ok(self.out)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "cpio entry too large");
        let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            let _ = write!(header, "{f:08x}");
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4)) % 4;
        self.put(&[0u8; 3][..usize::try_from(n).unwrap_or(0)])
    }
}

/// Reads an archive back (for tests; panics on a malformed one): per entry before the
/// trailer, (name, mode, rdevmajor, rdevminor, data).
#[cfg(test)]
pub fn parse(mut b: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0usize;
    loop {
        assert_eq!(&b[..6], b"070701");
        let field = |i: usize| {
            u32::from_str_radix(std::str::from_utf8(&b[6 + i * 8..14 + i * 8]).unwrap(), 16)
                .unwrap()
        };
        let (mode, size, maj, min, namesize) = (
            field(1),
            field(6) as usize,
            field(9),
            field(10),
            field(11) as usize,
        );
        let name = std::str::from_utf8(&b[110..110 + namesize - 1])
            .unwrap()
            .to_owned();
        assert_eq!(b[110 + namesize - 1], 0);
        let data_at = (off + 110 + namesize).next_multiple_of(4) - off;
        let data = b[data_at..data_at + size].to_vec();
        let next = (off + data_at + size).next_multiple_of(4) - off;
        off += next;
        b = &b[next..];
        if name == "TRAILER!!!" {
            assert!(b.is_empty());
            return out;
        }
        out.push((name, mode, maj, min, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_padding() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        w.file("init", 0o755, b"abcde").unwrap();
        w.file("x", 0o644, b"").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "dev");
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!((entries[1].2, entries[1].3), (5, 1));
        assert_eq!(entries[1].1, 0o020_600);
        assert_eq!(entries[2].4, b"abcde");
        assert_eq!(entries[2].1, 0o100_755);
        assert!(entries[3].4.is_empty());
    }

    #[test]
    fn same_input_same_bytes() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("a", 0o644, b"123").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }
}
