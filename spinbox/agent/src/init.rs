//! PID 1 duties: mounting the kernel filesystems, loading modules, syncing and powering
//! off, and the never-exit rule.

use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Where the initramfs keeps the modules and their `load-order` list.
pub const MODULE_DIR: &str = "/lib/modules";

/// The list of module groups loaded on demand (not at boot), in [`MODULE_DIR`]: one line
/// per group, `<group>: a.ko b.ko ...`, each group's modules in dependency order.
pub const ON_DEMAND_LIST: &str = "on-demand";

/// Errors of early initialisation.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A kernel filesystem could not be mounted.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// The filesystem type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The error from mount(2).
        #[source]
        source: nix::Error,
    },
    /// The module list could not be read.
    #[error("cannot read {}", path.display())]
    ReadList {
        /// The list's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A module file could not be opened.
    #[error("cannot open module {}", path.display())]
    OpenModule {
        /// The module's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a module.
    #[error("finit_module refused {}", path.display())]
    LoadModule {
        /// The module's path.
        path: PathBuf,
        /// The error from `finit_module(2)`.
        #[source]
        source: nix::Error,
    },
}

/// Mounts proc, sysfs and devtmpfs (the kernel does not mount devtmpfs for an initramfs).
pub fn mount_filesystems() -> Result<(), InitError> {
    for (fstype, target) in [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")] {
        let _ = std::fs::create_dir_all(target);
        match mount(
            Some(fstype),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            None::<&str>,
        ) {
            // Already mounted (e.g. devtmpfs with CONFIG_DEVTMPFS_MOUNT) is fine.
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    fstype,
                    target,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Loads `<dir>/<name>` for every name in `<dir>/load-order`, in order. The provisioner
/// wrote that order from each module's `depends=` modinfo (there is no modules.dep).
/// A module that is already present (`EEXIST`) counts as loaded. A missing list means an
/// initramfs without modules (a kernel with everything built in).
pub fn load_modules(dir: &Path) -> Result<(), InitError> {
    let list_path = dir.join("load-order");
    let list = match std::fs::read_to_string(&list_path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(InitError::ReadList {
                path: list_path,
                source,
            })
        }
    };
    let started = std::time::Instant::now();
    let params = CString::default();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(name);
        let file = File::open(&path).map_err(|source| InitError::OpenModule {
            path: path.clone(),
            source,
        })?;
        match nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => return Err(InitError::LoadModule { path, source }),
        }
    }
    tracing::info!(elapsed = ?started.elapsed(), "modules loaded");
    Ok(())
}

/// The groups [`load_group`] has loaded, by `(directory, group)`.
static LOADED_GROUPS: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Loads the modules of `group` listed in `<dir>/on-demand`, in order, once per process:
/// a second call (from any thread) returns at once; concurrent callers wait for the first
/// one. A module already present (`EEXIST`) counts as loaded. A missing list, or a group
/// the list does not name, means there is nothing to load (the kernel has it built in).
/// A failed load is not remembered: the next call tries again. Blocks: call it off the
/// async runtime's thread.
pub fn load_group(dir: &Path, group: &str) -> Result<(), InitError> {
    // The lock is held while loading, so concurrent callers wait for the outcome; nothing
    // panics while holding it, and the list stays consistent if something did.
    let mut loaded = LOADED_GROUPS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if loaded.iter().any(|(d, g)| d == dir && g == group) {
        return Ok(());
    }
    let list_path = dir.join(ON_DEMAND_LIST);
    let list = match std::fs::read_to_string(&list_path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(InitError::ReadList {
                path: list_path,
                source,
            })
        }
    };
    let modules = list
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim() == group)
        .map(|(_, modules)| modules.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    for name in &modules {
        load_module(&dir.join(name))?;
    }
    tracing::info!(group, ?modules, elapsed = ?started.elapsed(), "module group loaded");
    loaded.push((dir.to_owned(), group.to_owned()));
    Ok(())
}

/// Loads one module file; `EEXIST` (already loaded) is success.
fn load_module(path: &Path) -> Result<(), InitError> {
    let file = File::open(path).map_err(|source| InitError::OpenModule {
        path: path.to_owned(),
        source,
    })?;
    match nix::kmod::finit_module(
        &file,
        &CString::default(),
        nix::kmod::ModuleInitFlags::empty(),
    ) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(source) => Err(InitError::LoadModule {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Syncs and powers the machine off. Not PID 1 (a test run on a host): exits instead.
pub fn power_off(pid1: bool) -> ! {
    nix::unistd::sync();
    if pid1 {
        let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        // Only reached if the kernel refused; exiting would panic the kernel, so halt.
        eprintln!("spinbox-agent: power off failed: {err:?}");
        loop {
            std::thread::park();
        }
    }
    std::process::exit(0);
}

/// Logs a fatal error to the console, then syncs and powers off (PID 1 never exits).
pub fn fatal(pid1: bool, message: &str) -> ! {
    // eprintln rather than tracing: the subscriber may be what failed.
    eprintln!("spinbox-agent: fatal: {message}");
    if pid1 {
        power_off(true);
    }
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_load_from_the_on_demand_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        // No list: nothing to load (everything built in).
        load_group(dir.path(), "erofs").expect("no list");
        std::fs::write(
            dir.path().join(ON_DEMAND_LIST),
            "overlay:\n9p: missing.ko\n",
        )
        .expect("write the list");
        // A group without modules, and a group the list does not name, load nothing.
        load_group(dir.path(), "overlay").expect("empty group");
        load_group(dir.path(), "virtiofs").expect("unnamed group");
        // A failure is reported, and not remembered as loaded.
        for _ in 0..2 {
            let err = load_group(dir.path(), "9p").expect_err("missing module");
            assert!(
                matches!(&err, InitError::OpenModule { path, .. } if path.ends_with("missing.ko")),
                "{err:?}"
            );
        }
    }
}
