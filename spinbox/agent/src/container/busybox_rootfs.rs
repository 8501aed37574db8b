//! A minimal root filesystem from Debian's `busybox-static`, for the container tests.
//!
//! Self-contained (std only), so the provisioner can reuse it for the guest's test rootfs.
//! `scripts/provision` installs `busybox-static`, which puts a static `/bin/busybox` on the
//! host.

use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets linked into `/bin`.
pub const APPLETS: &[&str] = &[
    "sh",
    "echo",
    "cat",
    "sleep",
    "id",
    "hostname",
    "ls",
    "mount",
    "ps",
    "true",
    "false",
    "dd",
    "sha256sum",
    "yes",
    "head",
    "env",
    "pwd",
    "kill",
    "touch",
    "rm",
    "mkdir",
    "wc",
    "grep",
    "test",
    "stat",
];

/// The unprivileged user in `/etc/passwd` and `/etc/group`.
pub const USER: (&str, u32) = ("user", 1000);

/// Why the rootfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// busybox is not installed.
    #[error("{BUSYBOX} not found: run scripts/provision (it installs Debian's busybox-static)")]
    NoBusybox(#[source] io::Error),
    /// `/bin/busybox` is dynamically linked (Debian's `busybox`, not `busybox-static`):
    /// it would not run in a rootfs without its libraries.
    #[error("{BUSYBOX} is not statically linked: install busybox-static (scripts/provision does)")]
    NotStatic,
    /// Writing the tree failed.
    #[error("cannot write {0:?}")]
    Write(PathBuf, #[source] io::Error),
}

/// Builds the rootfs in `dir` (which exists): `bin/busybox` and its applets, `etc/passwd`
/// and `etc/group` with root and [`USER`], and the `proc`, `dev`, `sys`, `tmp`, `root` and
/// home directories.
pub fn build(dir: &Path) -> Result<(), RootfsError> {
    let w = |p: PathBuf| move |e| RootfsError::Write(p, e);
    let elf = std::fs::read(BUSYBOX).map_err(RootfsError::NoBusybox)?;
    if has_interpreter(&elf) {
        return Err(RootfsError::NotStatic);
    }
    for d in [
        "bin",
        "etc",
        "proc",
        "dev",
        "sys",
        "tmp",
        "root",
        "home/user",
    ] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(w(p))?;
    }
    let tmp = dir.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).map_err(w(tmp))?;
    let bin = dir.join("bin/busybox");
    std::fs::copy(BUSYBOX, &bin).map_err(w(bin))?;
    for applet in APPLETS {
        let p = dir.join("bin").join(applet);
        symlink("busybox", &p).map_err(w(p))?;
    }
    let (user, id) = USER;
    let files = [
        (
            "etc/passwd",
            format!("root:x:0:0:root:/root:/bin/sh\n{user}:x:{id}:{id}::/home/{user}:/bin/sh\n"),
        ),
        ("etc/group", format!("root:x:0:\n{user}:x:{id}:\n")),
    ];
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(w(p))?;
    }
    Ok(())
}

/// Whether an ELF64 little-endian file asks for a program interpreter (`PT_INTERP`), as
/// every dynamically linked executable does. Anything unreadable counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let field = |at: usize, len: usize| elf.get(at..at + len);
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (field(0x20, 8), field(0x36, 2), field(0x38, 2))
    else {
        return true;
    };
    let phoff = u64::from_le_bytes(phoff.try_into().unwrap_or_default());
    let phentsize = usize::from(u16::from_le_bytes(phentsize.try_into().unwrap_or_default()));
    let phnum = usize::from(u16::from_le_bytes(phnum.try_into().unwrap_or_default()));
    let Ok(phoff) = usize::try_from(phoff) else {
        return true;
    };
    if !elf.starts_with(b"\x7fELF") || phentsize < 4 {
        return true;
    }
    (0..phnum).any(|i| {
        field(phoff + i * phentsize, 4)
            .is_none_or(|t| u32::from_le_bytes(t.try_into().unwrap_or_default()) == PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hosts_shell_is_dynamic_and_busybox_static() {
        let sh = std::fs::read("/bin/sh").expect("read /bin/sh");
        assert!(super::has_interpreter(&sh), "/bin/sh looks static");
        let busybox = std::fs::read(super::BUSYBOX).expect("busybox: run scripts/provision");
        assert!(
            !super::has_interpreter(&busybox),
            "busybox-static looks dynamic"
        );
        assert!(super::has_interpreter(b"not an elf"));
    }
}
