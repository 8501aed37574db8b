//! Network namespaces: created and bound to a file, entered on a thread, removed.
//!
//! A namespace lives as long as something holds it: here, a bind mount of the namespace
//! file (`/proc/thread-self/ns/net`) onto a regular file, the way `ip netns add` does it.
//! Entering one (`setns`) changes the calling *thread* only, so [`run_in`] and
//! [`run_in_async`] always do it on a new thread that ends with the closure: no thread of
//! the caller (a tokio worker, say) ever changes namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// The file system magic of `nsfs`, the file system of namespace files.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Adds the path to an error's message, keeping its kind.
fn with_path(err: &io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(err.kind(), format!("{what} {}: {err}", path.display()))
}

/// Creates a new network namespace and binds it onto `path`.
///
/// `path` becomes an empty regular file (mode 0600) over which the namespace is bind
/// mounted; its parent directory must exist. The namespace is made on a dedicated
/// short-lived thread (`unshare(CLONE_NEWNET)` then the bind mount), so no other thread
/// changes namespace. The namespace has only a `lo` link, down.
///
/// Fails with [`io::ErrorKind::AlreadyExists`] if `path` exists. On failure nothing is
/// left behind (the file is removed).
pub fn create(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| with_path(&e, "creating the namespace file", path))?;
    let target = path.to_path_buf();
    let made = thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(io::Error::from)
        })
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
        });
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(with_path(&e, "creating a network namespace at", path));
    }
    Ok(())
}

/// Removes the network namespace bound at `path`: detaches the mount and unlinks the file.
///
/// A path that is not mounted (any more) is just unlinked, and a missing path is `Ok`: the
/// call is idempotent. Anything but a namespace mount or an empty regular file (a
/// directory, a file with data) is refused with [`io::ErrorKind::InvalidInput`] and left
/// alone. The namespace itself goes away once nothing else (a process in it,
/// an open file descriptor, another bind mount) holds it.
pub fn remove(path: &Path) -> io::Result<()> {
    // Only namespace mounts are detached (never, say, a file system mounted at a wrong
    // path); a namespace bound twice over the same file takes two rounds.
    while is_netns(path) {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            // EINVAL: not a mount point (a namespace file itself, e.g. /proc/N/ns/net).
            Err(Errno::EINVAL | Errno::ENOENT) => break,
            Err(e) => return Err(with_path(&e.into(), "unmounting the namespace", path)),
        }
    }
    // Unlink only what `create` leaves once unmounted: an empty regular file (a wrong
    // path must not cost someone's data).
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a namespace file (nor the empty file under one)",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_path(&e, "inspecting the namespace file", path)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(with_path(&e, "removing the namespace file", path)),
    }
}

/// Whether `path` is a namespace file (on `nsfs`), such as a namespace bound by [`create`].
///
/// Only the file system is checked, not the namespace's type. Any error (a missing path)
/// gives `false`.
// `f_type`'s type differs between targets (i64 here, i32 or u32 elsewhere).
#[allow(clippy::useless_conversion)]
pub fn is_netns(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| i64::from(s.filesystem_type().0) == NSFS_MAGIC)
}

/// Opens the namespace at `path` and spawns the thread that enters it and runs `body` with
/// the outcome of entering it.
fn spawn_in<R: Send + 'static>(
    path: &Path,
    body: impl FnOnce(io::Result<()>) -> R + Send + 'static,
) -> io::Result<thread::JoinHandle<R>> {
    let file = File::open(path).map_err(|e| with_path(&e, "opening the namespace", path))?;
    let owned: PathBuf = path.to_path_buf();
    thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let entered = setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| with_path(&e.into(), "entering the network namespace", &owned));
            drop(file);
            body(entered)
        })
        .map_err(|e| with_path(&e, "spawning a thread for the namespace", path))
}

/// Runs `f` on a new thread inside the network namespace at `path` and returns its value.
///
/// The thread enters the namespace (`setns(CLONE_NEWNET)`) before `f` runs, so sockets,
/// threads and processes `f` creates belong to that namespace. Blocks until `f` returns; a
/// panic in `f` is resumed on the caller. Errors if the namespace cannot be opened or
/// entered (`path` missing, not a network namespace); `f` does not run then.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    match spawn_in(path, move |entered| entered.map(|()| f()))?.join() {
        Ok(result) => result,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// [`run_in`] for async callers: runs `f` on a new thread inside the namespace at `path`
/// and awaits its value without blocking the executor. A panic in `f` is resumed on the
/// caller.
pub async fn run_in_async<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in(path, move |entered| {
        let outcome = entered.map(|()| panic::catch_unwind(AssertUnwindSafe(f)));
        let _ = tx.send(outcome);
    })?;
    match rx.await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(payload))) => panic::resume_unwind(payload),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other(format!(
            "the thread in the network namespace {} ended without a result",
            path.display()
        ))),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks that the tests needing namespaces can run (as root, with `/dev/net/tun`):
    /// they fail, never skip, where they cannot. Always `true` when it returns.
    pub(crate) fn privileged() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root && Path::new("/dev/net/tun").exists(),
            "the network tests need root and /dev/net/tun (CI runs them as root)"
        );
        true
    }

    /// Removes the namespace at a path when dropped (also when a test fails).
    pub(crate) struct NsGuard(pub(crate) PathBuf);

    impl NsGuard {
        /// Creates a namespace at `path` and guards it.
        pub(crate) fn new(path: PathBuf) -> Self {
            create(&path).expect("create netns");
            Self(path)
        }
    }

    impl Drop for NsGuard {
        fn drop(&mut self) {
            let _ = remove(&self.0);
        }
    }

    fn own_netns_inode() -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    #[test]
    fn create_enter_remove() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns");
        let before = own_netns_inode();
        {
            let guard = NsGuard::new(path.clone());
            assert!(is_netns(&guard.0));
            let inside = run_in(&guard.0, own_netns_inode).unwrap();
            assert_ne!(inside, before);
            // Threads spawned inside inherit the namespace.
            let nested =
                run_in(&guard.0, || thread::spawn(own_netns_inode).join().unwrap()).unwrap();
            assert_eq!(nested, inside);
            assert_eq!(
                own_netns_inode(),
                before,
                "the caller's thread did not move"
            );
            // A second create on the same path fails and leaves the namespace alone.
            let err = create(&guard.0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
            assert!(is_netns(&guard.0));
            remove(&guard.0).unwrap();
            assert!(!guard.0.exists());
            remove(&guard.0).unwrap();
        }
        assert!(!is_netns(&path));
    }

    #[test]
    fn errors_are_clean() {
        let dir = tempfile::tempdir().unwrap();
        // Missing parent: nothing created.
        let bad = dir.path().join("missing/ns");
        assert_eq!(create(&bad).unwrap_err().kind(), io::ErrorKind::NotFound);
        // Not a namespace: cannot be entered.
        let plain = dir.path().join("plain");
        fs::write(&plain, b"").unwrap();
        assert!(!is_netns(&plain));
        assert!(run_in(&plain, || ()).is_err());
        assert!(run_in(&dir.path().join("nope"), || ()).is_err());
        // Removing an empty plain file or a missing path is fine.
        remove(&plain).unwrap();
        remove(&plain).unwrap();
        // Anything else is refused and kept.
        let data = dir.path().join("data");
        fs::write(&data, b"precious").unwrap();
        assert_eq!(
            remove(&data).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(fs::read(&data).unwrap(), b"precious");
        assert_eq!(
            remove(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[tokio::test]
    async fn run_in_async_works() {
        if !privileged() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let guard = NsGuard::new(dir.path().join("ns"));
        let before = own_netns_inode();
        let inside = run_in_async(&guard.0, own_netns_inode).await.unwrap();
        assert_ne!(inside, before);
        let plain = dir.path().join("plain");
        fs::write(&plain, b"").unwrap();
        assert!(run_in_async(&plain, || ()).await.is_err());
    }
}
