//! A container's rootfs on the agent's side: the request's [`Mount`]s, mounted in order on
//! one directory, and unmounted (in reverse) when the container is deleted.
//!
//! Sources by filesystem type:
//! * `9p`, `virtiofs`: the source is the device's tag (`trans=virtio` is added for 9p
//!   when the options name no transport);
//! * `bind`: the source is an absolute path in the agent's filesystem (a rootfs already in
//!   the guest; the host tests use it); the option `ro` makes the bind read-only;
//! * anything else (`erofs`, `ext4`, ...): a block device, named `serial=<S>` (the virtio
//!   disk whose `/sys/block/vd*/serial` is `S`, waited for up to [`DEVICE_WAIT`]) or by an
//!   absolute path.
//!
//! Before the first mount of a type, the agent loads its kernel module group (see
//! [`module_group`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use spinbox_protocol::agent::Mount;

/// How long a `serial=` source may take to appear (a disk hot-plugged just before).
pub const DEVICE_WAIT: Duration = Duration::from_secs(5);

/// How long a busy rootfs mount is retried before it is detached lazily: the container's
/// mount namespace, which pins it, is freed asynchronously after its last process.
const UNMOUNT_WAIT: Duration = Duration::from_secs(5);

/// Why a rootfs mount could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The request is malformed (empty type, bad source, ...).
    #[error("mount {index}: {why}")]
    Invalid {
        /// The mount's position in the request.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// The kernel module group for the filesystem could not be loaded.
    #[error("cannot load the kernel modules for {fstype}")]
    Modules {
        /// The filesystem type.
        fstype: String,
        /// The failure.
        #[source]
        source: crate::init::InitError,
    },
    /// No virtio disk has the serial.
    #[error("no virtio block device has serial {0:?} (waited {DEVICE_WAIT:?})")]
    NoDevice(String),
    /// mount(2) failed.
    #[error("cannot mount {fstype} {source_name:?} on {target:?}")]
    Mount {
        /// The filesystem type.
        fstype: String,
        /// The source as given.
        source_name: String,
        /// The mount point.
        target: PathBuf,
        /// The errno.
        #[source]
        errno: nix::Error,
    },
    /// umount2(2) failed, even lazily.
    #[error("cannot unmount {0:?}")]
    Unmount(PathBuf, #[source] nix::Error),
}

/// The kernel module group a filesystem type needs (see `/lib/modules/on-demand`), if any.
pub fn module_group(fstype: &str) -> Option<&'static str> {
    match fstype {
        "9p" => Some("9p"),
        "virtiofs" => Some("virtiofs"),
        "erofs" => Some("erofs"),
        "overlay" => Some("overlay"),
        _ => None,
    }
}

/// Loads `group` from `modules` (no-op when `None`: a host test, or a kernel with
/// everything built in).
pub fn load_group(modules: Option<&Path>, fstype: &str, group: &str) -> Result<(), MountError> {
    let Some(dir) = modules else {
        return Ok(());
    };
    crate::init::load_group(dir, group).map_err(|source| MountError::Modules {
        fstype: fstype.to_owned(),
        source,
    })
}

/// The mounts made on a rootfs directory. Unmounted by [`RootfsMounts::release`], or
/// best-effort when dropped without it (a failed create).
#[derive(Debug)]
pub struct RootfsMounts {
    target: PathBuf,
    count: usize,
}

impl RootfsMounts {
    /// Mounts `mounts` in order on `target` (which exists), loading module groups first
    /// (from `modules`). On failure, what was mounted is unmounted. Blocking.
    pub fn mount_all(
        mounts: &[Mount],
        target: &Path,
        modules: Option<&Path>,
    ) -> Result<Self, MountError> {
        let mut made = Self {
            target: target.to_owned(),
            count: 0,
        };
        for (index, m) in mounts.iter().enumerate() {
            mount_one(index, m, target, modules)?;
            made.count += 1;
        }
        Ok(made)
    }

    /// Unmounts everything, last mount first. A busy mount is retried for a while, then
    /// detached lazily (logged). Blocking.
    pub fn release(mut self) -> Result<(), MountError> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> Result<(), MountError> {
        while self.count > 0 {
            unmount(&self.target)?;
            self.count -= 1;
        }
        Ok(())
    }
}

impl Drop for RootfsMounts {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_all() {
            tracing::error!(error = %crate::error_chain(&e), "rootfs mount left behind");
        }
    }
}

fn unmount(target: &Path) -> Result<(), MountError> {
    let deadline = Instant::now() + UNMOUNT_WAIT;
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(nix::Error::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(nix::Error::EBUSY) => {
                tracing::warn!(?target, "rootfs still busy; detaching it lazily");
                return umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|e| MountError::Unmount(target.to_owned(), e));
            }
            Err(e) => return Err(MountError::Unmount(target.to_owned(), e)),
        }
    }
}

/// `mount -o` options split into flags and the filesystem's data string.
fn parse_options(options: &[String]) -> (MsFlags, Vec<String>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.iter().flat_map(|o| o.split(',')) {
        match option {
            "" | "rw" | "defaults" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => data.push(other.to_owned()),
        }
    }
    (flags, data)
}

fn mount_one(
    index: usize,
    m: &Mount,
    target: &Path,
    modules: Option<&Path>,
) -> Result<(), MountError> {
    let invalid = |why: String| MountError::Invalid { index, why };
    let fstype = m.fstype.as_str();
    if fstype.is_empty() || m.source.is_empty() {
        return Err(invalid("fstype and source must be set".into()));
    }
    if [fstype, m.source.as_str()]
        .into_iter()
        .chain(m.options.iter().map(String::as_str))
        .any(|s| s.contains('\0'))
    {
        return Err(invalid("a NUL byte in fstype, source or options".into()));
    }
    let (flags, mut data) = parse_options(&m.options);
    let failed = |errno| MountError::Mount {
        fstype: fstype.to_owned(),
        source_name: m.source.clone(),
        target: target.to_owned(),
        errno,
    };
    if fstype == "bind" {
        let source = Path::new(&m.source);
        if !source.is_absolute() {
            return Err(invalid(format!(
                "a bind source must be an absolute path, not {:?}",
                m.source
            )));
        }
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(failed)?;
        if flags.contains(MsFlags::MS_RDONLY) {
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
            if let Err(e) = mount(None::<&str>, target, None::<&str>, remount, None::<&str>) {
                let _ = umount2(target, MntFlags::empty());
                return Err(failed(e));
            }
        }
        return Ok(());
    }
    if let Some(group) = module_group(fstype) {
        load_group(modules, fstype, group)?;
    }
    let source: PathBuf = match fstype {
        "9p" | "virtiofs" => {
            if fstype == "9p" && !data.iter().any(|o| o.starts_with("trans=")) {
                data.push("trans=virtio".into());
            }
            PathBuf::from(&m.source)
        }
        _ => {
            if let Some(serial) = m.source.strip_prefix("serial=") {
                if fstype != "erofs" {
                    // erofs's group carries virtio_blk; other block filesystems need it too.
                    load_group(modules, fstype, "erofs")?;
                }
                device_by_serial(serial, DEVICE_WAIT)?
            } else if Path::new(&m.source).is_absolute() {
                PathBuf::from(&m.source)
            } else {
                return Err(invalid(format!(
                    "a {fstype} source must be serial=<S> or an absolute device path, not {:?}",
                    m.source
                )));
            }
        }
    };
    let data = data.join(",");
    mount(
        Some(&source),
        target,
        Some(fstype),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(failed)
}

/// The `/dev/vdX` whose `/sys/block/vdX/serial` is `serial`, waiting up to `wait`.
fn device_by_serial(serial: &str, wait: Duration) -> Result<PathBuf, MountError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(dev) = find_serial(Path::new("/sys/block"), serial) {
            return Ok(Path::new("/dev").join(dev));
        }
        if Instant::now() >= deadline {
            return Err(MountError::NoDevice(serial.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The name of the `vd*` entry of `sys_block` whose `serial` file holds `serial`.
fn find_serial(sys_block: &Path, serial: &str) -> Option<String> {
    std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with("vd"))
        .find(|name| {
            std::fs::read_to_string(sys_block.join(name).join("serial"))
                .is_ok_and(|s| s.trim_end_matches(['\n', '\0']) == serial)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_options(&["ro,trans=virtio".into(), "nodev".into()]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, ["trans=virtio"]);
    }

    #[test]
    fn devices_are_found_by_serial() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (dev, serial) in [("vda", "root"), ("vdb", "layer0\n"), ("sda", "layer1")] {
            std::fs::create_dir(dir.path().join(dev)).expect("mkdir");
            std::fs::write(dir.path().join(dev).join("serial"), serial).expect("write");
        }
        assert_eq!(find_serial(dir.path(), "layer0").as_deref(), Some("vdb"));
        assert_eq!(find_serial(dir.path(), "root").as_deref(), Some("vda"));
        // Only virtio disks count.
        assert_eq!(find_serial(dir.path(), "layer1"), None);
        assert!(matches!(
            device_by_serial("nope", Duration::ZERO),
            Err(MountError::NoDevice(_))
        ));
    }
}
