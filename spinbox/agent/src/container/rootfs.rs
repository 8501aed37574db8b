//! The first process's filesystem plan: the [`Step`]s that make the rootfs its `/`.
//!
//! In order: every mount made recursively private (nothing propagates back to the agent);
//! the root staged (an overlay on a tmpfs at the state directory, or the owned rootfs bound
//! onto itself, as `pivot_root` needs a mount point); `/proc`, a minimal `/dev`, `/sys`
//! read-only; the guest's `/etc/resolv.conf` bound read-only onto the rootfs's when the
//! agent configured the guest's network (see [`crate::net`]); `pivot_root`; the hostname.
//! The plan is built in the agent, where allocating is allowed, and walked by the child
//! (see [`super::child`]).

use std::ffi::{c_ulong, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::libc;

use super::child::{Stage, Step};
use super::{cstring, path_cstring, ContainerError, ContainerSpec};

/// The device nodes bound into the container's `/dev` from the agent's.
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// `/dev/fd` and the stdio links, as `(target, name)`.
const DEV_LINKS: [(&str, &str); 4] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
];

const NOSUID_NOEXEC_NODEV: c_ulong = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;

/// Builds the plan for `spec`, with `state_dir` as the overlay's mount point.
pub fn plan(spec: &ContainerSpec, state_dir: &Path) -> Result<Vec<Step>, ContainerError> {
    let mut plan = Plan(Vec::new());
    plan.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        Stage::MakePrivate,
    )?;
    let root = if spec.rootfs_owned {
        plan.bind(&spec.rootfs, &spec.rootfs, libc::MS_REC, Stage::BindRootfs)?;
        spec.rootfs.clone()
    } else {
        plan.overlay(&spec.rootfs, state_dir)?
    };
    plan.filesystems(&root)?;
    if let Some(resolv_conf) = crate::net::guest_resolv_conf() {
        plan.resolv_conf(resolv_conf, &spec.rootfs, &root)?;
    }
    plan.0.push(Step::PivotRoot {
        new_root: path(&root)?,
    });
    plan.0.push(Step::Hostname {
        name: text(spec.hostname())?,
    });
    Ok(plan.0)
}

fn path(p: &Path) -> Result<CString, ContainerError> {
    Ok(path_cstring(p)?)
}

fn text(s: &str) -> Result<CString, ContainerError> {
    Ok(cstring(s, "mount option")?)
}

struct Plan(Vec<Step>);

impl Plan {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: c_ulong,
        data: Option<&str>,
        stage: Stage,
    ) -> Result<(), ContainerError> {
        self.0.push(Step::Mount {
            source: source.map(text).transpose()?,
            target: path(target)?,
            fstype: fstype.map(text).transpose()?,
            flags,
            data: data.map(text).transpose()?,
            stage,
        });
        Ok(())
    }

    fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        flags: c_ulong,
        stage: Stage,
    ) -> Result<(), ContainerError> {
        self.0.push(Step::Mount {
            source: Some(path(source)?),
            target: path(target)?,
            fstype: None,
            flags: libc::MS_BIND | flags,
            data: None,
            stage,
        });
        Ok(())
    }

    fn mkdir(&mut self, dir: &Path, mode: libc::mode_t) -> Result<(), ContainerError> {
        self.0.push(Step::Mkdir {
            path: path(dir)?,
            mode,
        });
        Ok(())
    }

    /// An overlay of `lower` with a tmpfs upper layer, both at `state_dir`; returns the
    /// merged directory.
    fn overlay(&mut self, lower: &Path, state_dir: &Path) -> Result<PathBuf, ContainerError> {
        for p in [lower, state_dir] {
            if p.as_os_str()
                .as_bytes()
                .iter()
                .any(|b| matches!(b, b',' | b':' | b'\\'))
            {
                return Err(ContainerError::OverlayPath(p.to_owned()));
            }
        }
        let (upper, work, merged) = (
            state_dir.join("upper"),
            state_dir.join("work"),
            state_dir.join("merged"),
        );
        self.mount(
            Some("tmpfs"),
            state_dir,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=700"),
            Stage::OverlayTmpfs,
        )?;
        for (dir, mode) in [(&upper, 0o755), (&work, 0o700), (&merged, 0o755)] {
            self.mkdir(dir, mode)?;
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        self.mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            0,
            Some(&options),
            Stage::Overlay,
        )?;
        Ok(merged)
    }

    /// Binds the guest's `source` (`/etc/resolv.conf`) read-only onto `root`'s, as Docker
    /// does, when the rootfs (`rootfs`, the overlay's lower layer or `root` itself) has
    /// `/etc/resolv.conf` as a regular file, or has an `/etc` directory without one (the
    /// file is then created, in the overlay's upper layer or the owned rootfs). A symbolic
    /// link or anything else there is left alone.
    fn resolv_conf(
        &mut self,
        source: &Path,
        rootfs: &Path,
        root: &Path,
    ) -> Result<(), ContainerError> {
        let existing = std::fs::symlink_metadata(rootfs.join("etc/resolv.conf"));
        let create = match existing {
            Ok(m) if m.file_type().is_file() => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !std::fs::symlink_metadata(rootfs.join("etc")).is_ok_and(|m| m.is_dir()) {
                    return Ok(());
                }
                true
            }
            _ => {
                tracing::debug!(rootfs = %rootfs.display(), "not binding resolv.conf over a non-file");
                return Ok(());
            }
        };
        let target = root.join("etc/resolv.conf");
        if create {
            self.0.push(Step::Touch {
                path: path(&target)?,
            });
        }
        self.bind(source, &target, 0, Stage::ResolvConf)?;
        // A bind mount takes MS_RDONLY only on a remount.
        self.bind(
            source,
            &target,
            libc::MS_REMOUNT | libc::MS_RDONLY | NOSUID_NOEXEC_NODEV,
            Stage::ResolvConf,
        )
    }

    /// `/proc`, `/dev` (with `/dev/shm`) and a read-only `/sys` under `root`.
    fn filesystems(&mut self, root: &Path) -> Result<(), ContainerError> {
        for (dir, mode) in [("proc", 0o555), ("dev", 0o755), ("sys", 0o555)] {
            self.mkdir(&root.join(dir), mode)?;
        }
        self.mount(
            Some("proc"),
            &root.join("proc"),
            Some("proc"),
            NOSUID_NOEXEC_NODEV,
            None,
            Stage::Proc,
        )?;
        let dev = root.join("dev");
        self.mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
            Stage::Dev,
        )?;
        for name in DEVICES {
            self.0.push(Step::Touch {
                path: path(&dev.join(name))?,
            });
            self.bind(
                &Path::new("/dev").join(name),
                &dev.join(name),
                0,
                Stage::Device,
            )?;
        }
        self.mkdir(&dev.join("shm"), 0o1777)?;
        self.mount(
            Some("shm"),
            &dev.join("shm"),
            Some("tmpfs"),
            NOSUID_NOEXEC_NODEV,
            Some("mode=1777,size=65536k"),
            Stage::Shm,
        )?;
        for (target, name) in DEV_LINKS {
            self.0.push(Step::Symlink {
                target: text(target)?,
                link: path(&dev.join(name))?,
            });
        }
        self.mount(
            Some("sysfs"),
            &root.join("sys"),
            Some("sysfs"),
            NOSUID_NOEXEC_NODEV | libc::MS_RDONLY,
            None,
            Stage::Sys,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps binding `src` over `<root>/etc/resolv.conf` for a rootfs made by `make`.
    fn resolv_steps(make: impl FnOnce(&Path)) -> Vec<Step> {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs).expect("mkdir");
        make(&rootfs);
        let mut plan = Plan(Vec::new());
        plan.resolv_conf(Path::new("/etc/resolv.conf"), &rootfs, Path::new("/merged"))
            .expect("plan");
        plan.0
    }

    fn is_bind(step: &Step, read_only: bool) -> bool {
        matches!(step, Step::Mount { source: Some(s), target, flags, stage: Stage::ResolvConf, .. }
            if s.as_bytes() == b"/etc/resolv.conf"
                && target.as_bytes() == b"/merged/etc/resolv.conf"
                && flags & libc::MS_BIND != 0
                && (flags & libc::MS_RDONLY != 0) == read_only
                && (flags & libc::MS_REMOUNT != 0) == read_only)
    }

    #[test]
    fn resolv_conf_is_bound_read_only_where_the_rootfs_has_one() {
        // A regular file: bound, then remounted read-only.
        let steps = resolv_steps(|r| {
            std::fs::create_dir(r.join("etc")).expect("etc");
            std::fs::write(r.join("etc/resolv.conf"), "").expect("file");
        });
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            is_bind(&steps[0], false) && is_bind(&steps[1], true),
            "{steps:?}"
        );

        // An /etc without the file: the file is created first.
        let steps = resolv_steps(|r| std::fs::create_dir(r.join("etc")).expect("etc"));
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert!(
            matches!(&steps[0], Step::Touch { path } if path.as_bytes() == b"/merged/etc/resolv.conf"),
            "{steps:?}"
        );
        assert!(
            is_bind(&steps[1], false) && is_bind(&steps[2], true),
            "{steps:?}"
        );

        // No /etc, or a symbolic link where the file would be: left alone.
        assert!(resolv_steps(|_| {}).is_empty());
        let steps = resolv_steps(|r| {
            std::fs::create_dir(r.join("etc")).expect("etc");
            std::os::unix::fs::symlink("../run/resolv.conf", r.join("etc/resolv.conf"))
                .expect("symlink");
        });
        assert!(steps.is_empty(), "{steps:?}");
    }
}
