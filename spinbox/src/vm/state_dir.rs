//! The per-VM state directory: a private (0700) folder holding the VM's sockets and logs.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::VmId;

/// Errors creating or removing a state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The root directory could not be created.
    #[error("cannot create state root {}", path.display())]
    CreateRoot {
        /// The root path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The root (or a shared directory in it) is not a private directory of ours: a symlink,
    /// not a directory, owned by another user, or writable by others.
    #[error("{} is not a safe state root: {why}", path.display())]
    UnsafeRoot {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A directory for this VM ID already exists (another VM, or a leftover of a crash).
    #[error("state directory {} already exists", path.display())]
    AlreadyExists {
        /// The VM's directory.
        path: PathBuf,
    },
    /// The VM's directory could not be created.
    #[error("cannot create state directory {}", path.display())]
    Create {
        /// The VM's directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The VM's directory could not be removed.
    #[error("cannot remove state directory {}", path.display())]
    Remove {
        /// The VM's directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The system-wide state root, used when nothing else is configured.
pub const SYSTEM_STATE_ROOT: &str = "/run/spinbox";

/// The state root from the environment's values, read by the caller at its edge (the CLI):
/// `state_root_env` (`$SPINBOX_STATE_ROOT`), else `xdg_runtime_dir` (`$XDG_RUNTIME_DIR`)
/// joined with `spinbox`, else [`SYSTEM_STATE_ROOT`]. Empty values count as unset.
pub fn state_root_from(
    state_root_env: Option<std::ffi::OsString>,
    xdg_runtime_dir: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(root) = state_root_env.filter(|v| !v.is_empty()) {
        return PathBuf::from(root);
    }
    if let Some(xdg) = xdg_runtime_dir.filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("spinbox");
    }
    PathBuf::from(SYSTEM_STATE_ROOT)
}

/// Creates `dir` (and its parents) with mode 0700 if missing, then checks that it is safe
/// to create and delete VM files in: a real directory (not a symlink), owned by the
/// effective user, not writable by group or others. Within such a directory nobody else can
/// plant or swap an entry, so nothing below it is followed through another user's link.
pub fn prepare_root(dir: &Path) -> Result<(), StateDirError> {
    use std::os::unix::fs::MetadataExt;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateDirError::CreateRoot {
            path: dir.to_owned(),
            source,
        })?;
    let unsafe_root = |why| StateDirError::UnsafeRoot {
        path: dir.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|source| StateDirError::CreateRoot {
        path: dir.to_owned(),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_root("it is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(unsafe_root("it is not a directory"));
    }
    // SAFETY: geteuid has no preconditions.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Err(unsafe_root("it is owned by another user"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_root("it is writable by group or others"));
    }
    Ok(())
}

/// A VM's private directory, `<root>/<vm id>`, mode 0700, locked (`flock` on its `lock`
/// file) for as long as any clone of this value lives.
///
/// The lock is what tells a live VM's directory from a dead shim's leftovers: a directory
/// whose lock is held belongs to a live VM and is never touched; one whose lock is free
/// was left by a shim that died, and [`StateDir::create`] removes it (with a warning) before
/// creating its own. A directory without a lock file (being created this instant) counts as
/// live.
///
/// It is removed by [`StateDir::remove`]; dropping it without removing leaves it in place
/// (the owning instance removes it during shutdown, after QEMU has been reaped).
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
    /// Held until [`StateDir::remove`] (or the last clone is dropped).
    lock: std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>,
    stale_removed: bool,
}

/// The lock file's name inside a state directory.
const LOCK_FILE: &str = "lock";

/// Takes `flock(LOCK_EX | LOCK_NB)` on `file`: `Ok(false)` when another holder has it.
fn try_lock(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

fn open_lock(path: &Path, create: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path.join(LOCK_FILE))
}

/// Whether `file` (whose lock we hold) is still the lock file at `dir/lock`: a lock on a
/// file that was unlinked or replaced meanwhile proves nothing.
fn still_current(file: &std::fs::File, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(held), Ok(now)) = (file.metadata(), std::fs::symlink_metadata(dir.join(LOCK_FILE)))
    else {
        return false;
    };
    held.dev() == now.dev() && held.ino() == now.ino() && held.nlink() > 0
}

/// A name, unique in this process and `root`, to move a stale directory to before removal.
fn graveyard_name(root: &Path, id: &VmId) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    root.join(format!(".stale-{}-{}-{n}", id.as_str(), std::process::id()))
}

impl StateDir {
    /// Creates `<root>/<id>` with mode 0700 and locks it (the root is created too, also
    /// 0700, and must be safe: see [`prepare_root`]).
    ///
    /// A directory held by a live VM is [`StateDirError::AlreadyExists`] and is not
    /// touched, so two VMs never share sockets. One left by a dead shim (its lock is free)
    /// is removed first; [`StateDir::stale_removed`] says so.
    pub fn create(root: &Path, id: &VmId) -> Result<Self, StateDirError> {
        prepare_root(root)?;
        // `id` is validated: no separators, no `..`, so this stays under `root`.
        let path = root.join(id.as_str());
        let mut stale_removed = false;
        for _ in 0..8 {
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let lock = open_lock(&path, true)
                        .and_then(|f| try_lock(&f).map(|held| (f, held)))
                        .map_err(|source| StateDirError::Create {
                            path: path.clone(),
                            source,
                        })?;
                    match lock {
                        // Ours only if nobody moved our fresh directory away meanwhile.
                        (file, true) if still_current(&file, &path) => {
                            return Ok(Self {
                                path,
                                lock: std::sync::Arc::new(std::sync::Mutex::new(Some(file))),
                                stale_removed,
                            })
                        }
                        (_, true) => {}
                        // Someone judged our fresh directory stale and locked it: theirs now.
                        (_, false) => return Err(StateDirError::AlreadyExists { path }),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let Ok(lock) = open_lock(&path, false) else {
                        // No lock file (or a symlink in its place): being created, or not
                        // ours to judge. Leave it.
                        return Err(StateDirError::AlreadyExists { path });
                    };
                    match try_lock(&lock) {
                        Ok(true) if still_current(&lock, &path) => {
                            tracing::warn!(
                                path = %path.display(),
                                "removing the stale state directory of a VM whose shim died"
                            );
                            // Moved away under its lock first, so nobody who opened the old
                            // lock file can take it for the live one later.
                            let grave = graveyard_name(root, id);
                            std::fs::rename(&path, &grave).map_err(|source| {
                                StateDirError::Remove {
                                    path: path.clone(),
                                    source,
                                }
                            })?;
                            std::fs::remove_dir_all(&grave).map_err(|source| {
                                StateDirError::Remove {
                                    path: grave.clone(),
                                    source,
                                }
                            })?;
                            stale_removed = true;
                        }
                        // The lock file we opened was replaced meanwhile: look again.
                        Ok(true) => {}
                        _ => return Err(StateDirError::AlreadyExists { path }),
                    }
                }
                Err(source) => return Err(StateDirError::Create { path, source }),
            }
        }
        Err(StateDirError::AlreadyExists { path })
    }

    /// Whether the lock is still held (the VM's life is not over).
    pub fn is_locked(&self) -> bool {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// Releases the lock: the VM's files are gone and the id is free for another VM.
    pub fn release(&self) {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Whether creating this directory first removed a dead shim's leftover.
    pub fn stale_removed(&self) -> bool {
        self.stale_removed
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The QMP socket's path.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The serial console log's path.
    pub fn serial_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's stderr (and stdout) log.
    pub fn stderr_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// Resolves a path that is relative to this directory; absolute paths are kept.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.join(p)
        }
    }

    /// Removes the directory and everything in it. Already gone counts as success. The
    /// lock stays held (the lock file is unlinked, its descriptor open) until
    /// [`StateDir::release`] or the last clone is dropped, so whoever owns other files of
    /// the VM can remove them first.
    pub fn remove(&self) -> Result<(), StateDirError> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateDirError::Remove {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_private_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let id = VmId::new("vm-1").unwrap();
        let dir = StateDir::create(&root.path().join("nested"), &id).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(dir.qmp_socket().starts_with(dir.path()));
        assert!(matches!(
            StateDir::create(&root.path().join("nested"), &id),
            Err(StateDirError::AlreadyExists { .. })
        ));
        std::fs::write(dir.serial_log(), b"x").unwrap();
        dir.remove().unwrap();
        assert!(!dir.path().exists());
        dir.remove().unwrap();
    }

    #[test]
    fn a_live_directory_is_refused_and_a_stale_one_replaced() {
        let root = tempfile::tempdir().unwrap();
        let id = VmId::new("vm-1").unwrap();
        let live = StateDir::create(root.path(), &id).unwrap();
        std::fs::write(live.serial_log(), b"live").unwrap();
        // Held (by this process's other open file description): refused, untouched.
        assert!(matches!(
            StateDir::create(root.path(), &id),
            Err(StateDirError::AlreadyExists { .. })
        ));
        assert_eq!(std::fs::read(live.serial_log()).unwrap(), b"live");
        assert!(!live.stale_removed());
        // The holder goes away without removing it (a shim that died): stale.
        let path = live.path().to_owned();
        drop(live);
        assert!(path.join("console.log").exists());
        let fresh = StateDir::create(root.path(), &id).unwrap();
        assert!(fresh.stale_removed());
        assert!(!fresh.serial_log().exists(), "the stale files were removed");
        // A directory with no lock file is not ours to judge.
        let other = VmId::new("vm-2").unwrap();
        std::fs::create_dir(root.path().join("vm-2")).unwrap();
        assert!(matches!(
            StateDir::create(root.path(), &other),
            Err(StateDirError::AlreadyExists { .. })
        ));
        assert!(root.path().join("vm-2").exists());
        // Releasing closes the lock: no descriptor outlives the VM.
        let clone = fresh.clone();
        fresh.remove().unwrap();
        assert!(clone.is_locked());
        fresh.release();
        assert!(!clone.is_locked(), "the lock file stayed open");
    }

    /// Racers over one stale directory: never two owners at once (each owner checks it
    /// holds the current lock file).
    #[test]
    fn racing_creators_over_a_stale_directory_get_one_owner() {
        let root = tempfile::tempdir().unwrap();
        let id = VmId::new("vm-r").unwrap();
        for _ in 0..200 {
            drop(StateDir::create(root.path(), &id).unwrap()); // leaves a stale dir
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(3));
            let racers: Vec<_> = (0..3)
                .map(|_| {
                    let (root, id, barrier) =
                        (root.path().to_owned(), id.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        StateDir::create(&root, &id).ok()
                    })
                })
                .collect();
            let owners: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            let live: Vec<StateDir> = owners.into_iter().flatten().collect();
            assert!(live.len() <= 1, "{} owners of one id", live.len());
            for dir in live {
                dir.remove().unwrap();
                dir.release();
            }
        }
    }

    #[test]
    fn unsafe_roots_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = prepare_root(&shared).unwrap_err();
        assert!(err.to_string().contains("writable by group or others"), "{err}");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let err = prepare_root(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let id = VmId::new("vm-1").unwrap();
        assert!(StateDir::create(&link, &id).is_err());
        assert!(!elsewhere.join("vm-1").exists(), "created through the link");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_root(&file).is_err());
        prepare_root(&tmp.path().join("fresh/nested")).unwrap();
    }

    #[test]
    fn state_root_from_the_environment_values() {
        assert_eq!(
            state_root_from(Some("/a".into()), Some("/x".into())),
            PathBuf::from("/a")
        );
        assert_eq!(
            state_root_from(Some("".into()), Some("/x".into())),
            PathBuf::from("/x/spinbox")
        );
        assert_eq!(state_root_from(None, None), PathBuf::from(SYSTEM_STATE_ROOT));
    }
}
