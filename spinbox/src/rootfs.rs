//! A container's rootfs (a host directory) made reachable from the guest (SPEC §9).
//!
//! [`prepare_with`] turns the directory into a [`Share`] for [`VmSpec::shares`] and the
//! [`GuestMount`]s the guest agent performs to see it, by one of three
//! [`RootfsTransport`]s:
//!
//! | transport | host side | guest side |
//! |---|---|---|
//! | [`RootfsTransport::NineP`] | nothing to build: QEMU's 9p server exports the directory read-only | `mount -t 9p <tag>` |
//! | [`RootfsTransport::Erofs`] | `mkfs.erofs` builds `<work_dir>/<name>.erofs`, attached read-only as a virtio-blk disk with serial `<name>` | `mount -t erofs` the disk with that serial |
//! | [`RootfsTransport::VirtioFs`] | a `virtiofsd --readonly` daemon on `<work_dir>/<name>.virtiofs.sock` | `mount -t virtiofs <tag>` |
//!
//! Every transport exports the directory read-only: the guest puts a writable overlay on
//! top, so the container's writes never reach the host's directory.
//!
//! [`PreparedRootfs::release`] (the shim's `mount_cleanup` phase, after QEMU has exited)
//! stops the daemon and removes what was created; it is idempotent. A [`PreparedRootfs`]
//! dropped without it still kills its daemon and removes its files. A [`prepare_with`] future
//! dropped midway kills `mkfs.erofs` (waiting for it to be reaped) and removes the
//! partial image.
//!
//! ```no_run
//! # async fn demo(spec: &mut spinbox::vm::VmSpec) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use spinbox::rootfs::{prepare_with, RootfsTransport, Tools};
//!
//! // The tools the provisioned assets record (`Tools::from_assets`), or those in PATH.
//! let tools = Tools::from_path(std::env::var_os("PATH").as_deref());
//! let rootfs = prepare_with(
//!     &tools,
//!     RootfsTransport::default(),
//!     Path::new("/srv/containers/c1/rootfs"),
//!     Path::new("/run/spinbox/c1"), // exists; the image or socket goes there
//!     "rootfs",                     // the guest's tag or disk serial
//! )
//! .await?;
//! spec.shares.push(rootfs.share.clone());
//! // … boot the VM; `CreateContainerRequest.rootfs` is `rootfs.mounts` (fstype, source,
//! // options), `rootfs_owned: false` so the guest puts an overlay on top …
//! // After QEMU has exited (the `mount_cleanup` phase):
//! rootfs.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`VmSpec::shares`]: crate::vm::VmSpec::shares

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::vm::process::QemuProcess;
use crate::vm::{check_socket, Share, SpecError};

/// How often the `mkfs.erofs` watcher checks for the process's end or a cancellation,
/// and start-up checks for the virtiofs socket.
const POLL: Duration = Duration::from_millis(2);

/// Bound on `virtiofsd` start → its socket exists.
const DAEMON_START: Duration = Duration::from_secs(10);

/// Grace between SIGTERM and SIGKILL when `virtiofsd` is stopped.
const DAEMON_GRACE: Duration = Duration::from_secs(2);

/// How a rootfs reaches the guest.
///
/// The default is [`Erofs`](Self::Erofs), chosen by the rootfs benchmark
/// (`tests/benches/rootfs.rs`, BENCHMARKS.md "Rootfs transport"): in the guest it reads
/// many small files about 4× faster than 9p and 2.5× faster than virtiofs, and a large file
/// as fast as either, with no daemon; it costs the image's build at create (about 3.4 ms
/// per MiB of rootfs on the benchmark's host) and the image's disk space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RootfsTransport {
    /// virtio-9p: QEMU's built-in server exports the directory (`9p`).
    NineP,
    /// A read-only EROFS image built on the host, attached as a virtio-blk disk (`erofs`).
    #[default]
    Erofs,
    /// virtiofs through a `virtiofsd` daemon (`virtiofs`).
    VirtioFs,
}

impl RootfsTransport {
    /// Every transport, in the order above.
    pub const ALL: [RootfsTransport; 3] = [
        RootfsTransport::NineP,
        RootfsTransport::Erofs,
        RootfsTransport::VirtioFs,
    ];

    /// The transport's name: `9p`, `erofs` or `virtiofs`.
    pub fn name(self) -> &'static str {
        match self {
            RootfsTransport::NineP => "9p",
            RootfsTransport::Erofs => "erofs",
            RootfsTransport::VirtioFs => "virtiofs",
        }
    }
}

impl fmt::Display for RootfsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a [`RootfsTransport`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rootfs transport {0:?}: expected 9p, erofs or virtiofs")]
pub struct UnknownTransport(pub String);

impl FromStr for RootfsTransport {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RootfsTransport::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownTransport(s.to_owned()))
    }
}

/// A mount the guest agent performs to see the rootfs (the agent protocol's `Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The filesystem type: `9p`, `erofs` or `virtiofs`.
    pub fstype: String,
    /// The source: a mount tag, or `serial=<S>` for the virtio-blk disk with serial `S`.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// The host tools the transports run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tools {
    /// `mkfs.erofs` (Debian's `erofs-utils`), for [`RootfsTransport::Erofs`].
    pub mkfs_erofs: Option<PathBuf>,
    /// `virtiofsd`, for [`RootfsTransport::VirtioFs`].
    pub virtiofsd: Option<PathBuf>,
}

impl Tools {
    /// The tools found in `path` (a `PATH` value, which the caller reads: the library
    /// reads no environment).
    pub fn from_path(path: Option<&std::ffi::OsStr>) -> Self {
        Self {
            mkfs_erofs: which(path, "mkfs.erofs"),
            virtiofsd: which(path, "virtiofsd"),
        }
    }

    /// The tools the provisioned assets record, each falling back to `path` (a `PATH`
    /// value).
    pub fn from_assets(assets: &crate::vm::assets::Assets, path: Option<&std::ffi::OsStr>) -> Self {
        let path = Self::from_path(path);
        Self {
            mkfs_erofs: assets.mkfs_erofs.clone().or(path.mkfs_erofs),
            virtiofsd: assets.virtiofsd.clone().or(path.virtiofsd),
        }
    }
}

fn which(path: Option<&std::ffi::OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why a rootfs could not be prepared or released.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A host mount of the rootfs (`ContainerSpec::rootfs_mounts`) failed.
    #[error("cannot mount {mount}")]
    HostMount {
        /// What was mounted where.
        mount: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The name cannot be a mount tag or disk serial.
    #[error("invalid rootfs name")]
    Name(#[source] SpecError),
    /// The rootfs path is relative.
    #[error("the rootfs {} must be an absolute path", .0.display())]
    RelativeRootfs(PathBuf),
    /// The rootfs does not exist or cannot be examined.
    #[error("cannot use the rootfs {}", path.display())]
    Rootfs {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The rootfs is not a directory.
    #[error("the rootfs {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The work directory is relative.
    #[error("the work directory {} must be an absolute path", .0.display())]
    RelativeWorkDir(PathBuf),
    /// The work directory does not exist or is not a directory.
    #[error("cannot use the work directory {}", path.display())]
    WorkDir {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A socket path would not fit `sun_path`.
    #[error(transparent)]
    Socket(#[from] crate::vm::SocketPathError),
    /// The transport needs a tool this host lacks.
    #[error("the {transport} rootfs transport needs `{tool}`, which was not found: {how}")]
    Unavailable {
        /// The transport.
        transport: RootfsTransport,
        /// The missing tool.
        tool: &'static str,
        /// How to get it.
        how: &'static str,
    },
    /// A tool could not be run.
    #[error("cannot run {}", tool.display())]
    Spawn {
        /// The tool.
        tool: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `mkfs.erofs` failed.
    #[error("mkfs.erofs failed ({status}) building {}:\n{stderr}", image.display())]
    Mkfs {
        /// The image it was building (removed).
        image: PathBuf,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// `virtiofsd` exited before creating its socket.
    #[error("virtiofsd exited at start with {status}; log:\n{log_tail}")]
    DaemonExited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// `virtiofsd`'s socket did not appear in time (it was killed).
    #[error("virtiofsd did not create {} within {after:?}", socket.display())]
    DaemonTimeout {
        /// The socket.
        socket: PathBuf,
        /// The bound.
        after: Duration,
    },
    /// `virtiofsd` survived SIGKILL.
    #[error("virtiofsd (pid {pid}) could not be stopped")]
    DaemonNotReaped {
        /// Its pid.
        pid: u32,
    },
    /// A file created for the rootfs could not be removed.
    #[error("cannot remove {}", path.display())]
    Remove {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A rootfs made ready for the guest: the share to attach and the mounts to perform.
///
/// Release it with [`PreparedRootfs::release`] once the VM has exited. Dropping it kills
/// its daemon and removes its files too, without reporting errors.
#[derive(Debug)]
pub struct PreparedRootfs {
    /// The transport used.
    pub transport: RootfsTransport,
    /// What to put in [`VmSpec::shares`](crate::vm::VmSpec::shares).
    pub share: Share,
    /// The mounts the guest agent performs, in order (the container's rootfs is the
    /// last).
    pub mounts: Vec<GuestMount>,
    /// Files created on the host (the image, the daemon's socket and log).
    created: Vec<PathBuf>,
    /// The virtiofs daemon, until released.
    daemon: Mutex<Option<QemuProcess>>,
}

impl PreparedRootfs {
    /// The files this rootfs created on the host that still exist (none after
    /// [`release`](Self::release)).
    pub fn leftovers(&self) -> Vec<PathBuf> {
        self.created
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .cloned()
            .collect()
    }

    /// The daemon's pid, while it runs (virtiofs only).
    pub fn daemon_pid(&self) -> Option<u32> {
        let daemon = self
            .daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        daemon
            .as_ref()
            .filter(|d| d.exit_status().is_none())
            .map(QemuProcess::pid)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after a grace) and removes every file
    /// created. Idempotent: a second call finds nothing to do. Call it after the VM has
    /// exited (the daemon serves it until then).
    pub async fn release(&self) -> Result<(), RootfsError> {
        let daemon = self
            .daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(daemon) = daemon {
            stop_daemon(&daemon).await?;
            self.daemon
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
        }
        for path in &self.created {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RootfsError::Remove {
                        path: path.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

impl Drop for PreparedRootfs {
    fn drop(&mut self) {
        // The last handle of the daemon: its reaper kills and reaps it.
        let daemon = self
            .daemon
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if daemon.is_some() {
            tracing::warn!("a virtiofs rootfs dropped without release: killing its daemon");
        }
        drop(daemon);
        for path in &self.created {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn stop_daemon(daemon: &QemuProcess) -> Result<(), RootfsError> {
    if daemon.exit_status().is_some() {
        return Ok(());
    }
    let _ = daemon.signal(Signal::SIGTERM).await;
    if daemon.wait_exit_timeout(DAEMON_GRACE).await.is_some() {
        return Ok(());
    }
    let _ = daemon.signal(Signal::SIGKILL).await;
    daemon
        .wait_exit_timeout(Duration::from_secs(5))
        .await
        .map(drop)
        .ok_or(RootfsError::DaemonNotReaped { pid: daemon.pid() })
}

/// Makes `rootfs_dir` reachable by the guest through `transport`, under `name` (the mount
/// tag or disk serial: 1 to [`MAX_SHARE_NAME`](crate::vm::MAX_SHARE_NAME) characters of
/// `[A-Za-z0-9_.-]`). Files it creates go in `work_dir` (which must exist), named after
/// `name`; a stale file of that name (a dead shim's) is replaced.
///
/// Dropping the future midway kills the tool it runs and removes what it had created.
pub async fn prepare_with(
    tools: &Tools,
    transport: RootfsTransport,
    rootfs_dir: &Path,
    work_dir: &Path,
    name: &str,
) -> Result<PreparedRootfs, RootfsError> {
    check_rootfs(rootfs_dir)?;
    check_work_dir(work_dir)?;
    // The name must be a valid tag or serial: checked through the share's own rule.
    Share::NineP {
        tag: name.to_owned(),
        path: rootfs_dir.to_owned(),
        read_only: true,
    }
    .validate()
    .map_err(RootfsError::Name)?;
    match transport {
        RootfsTransport::NineP => Ok(PreparedRootfs {
            transport,
            share: Share::NineP {
                tag: name.to_owned(),
                path: rootfs_dir.to_owned(),
                read_only: true,
            },
            mounts: vec![GuestMount {
                fstype: "9p".into(),
                source: name.to_owned(),
                options: [
                    "ro",
                    "trans=virtio",
                    "version=9p2000.L",
                    "msize=524288",
                    "cache=loose",
                ]
                .map(String::from)
                .to_vec(),
            }],
            created: Vec::new(),
            daemon: Mutex::new(None),
        }),
        RootfsTransport::Erofs => {
            let mkfs = tools
                .mkfs_erofs
                .as_deref()
                .ok_or(RootfsError::Unavailable {
                    transport,
                    tool: "mkfs.erofs",
                    how: "install Debian's erofs-utils (scripts/provision does)",
                })?;
            let image = work_dir.join(format!("{name}.erofs"));
            build_erofs(mkfs, rootfs_dir, &image).await?;
            Ok(PreparedRootfs {
                transport,
                share: Share::Disk {
                    serial: name.to_owned(),
                    path: image.clone(),
                    read_only: true,
                },
                mounts: vec![GuestMount {
                    fstype: "erofs".into(),
                    source: format!("serial={name}"),
                    options: vec!["ro".into()],
                }],
                created: vec![image],
                daemon: Mutex::new(None),
            })
        }
        RootfsTransport::VirtioFs => {
            let bin = tools.virtiofsd.as_deref().ok_or(RootfsError::Unavailable {
                transport,
                tool: "virtiofsd",
                how: "it is not a Debian bookworm package: provision it with \
                      `spinbox-assets --with-virtiofsd` (cargo install virtiofsd)",
            })?;
            start_virtiofsd(bin, rootfs_dir, work_dir, name).await
        }
    }
}

fn check_rootfs(dir: &Path) -> Result<(), RootfsError> {
    if !dir.is_absolute() {
        return Err(RootfsError::RelativeRootfs(dir.to_owned()));
    }
    let meta = std::fs::metadata(dir).map_err(|source| RootfsError::Rootfs {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(RootfsError::NotADirectory(dir.to_owned()));
    }
    Ok(())
}

fn check_work_dir(dir: &Path) -> Result<(), RootfsError> {
    if !dir.is_absolute() {
        return Err(RootfsError::RelativeWorkDir(dir.to_owned()));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(RootfsError::WorkDir {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        }),
        Err(source) => Err(RootfsError::WorkDir {
            path: dir.to_owned(),
            source,
        }),
    }
}

fn remove_stale(path: &Path) -> Result<(), RootfsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(path = %path.display(), "removed a stale rootfs file");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RootfsError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The `mkfs.erofs` run in progress. Dropped before it finished (the future was
/// cancelled), it kills the process, waits for its watcher thread to reap it (so nothing
/// writes the image any more) and removes the partial image.
struct MkfsRun {
    cancel: Arc<AtomicBool>,
    watcher: Option<std::thread::JoinHandle<()>>,
    image: PathBuf,
    finished: bool,
}

impl Drop for MkfsRun {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            // Returns within a poll interval plus the kill: the process cannot ignore it.
            let _ = w.join();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}

/// Builds an uncompressed EROFS image of `dir` at `image`.
///
/// The process is owned by one watcher thread, the only one that kills or reaps it, so a
/// signal never reaches a recycled pid.
async fn build_erofs(mkfs: &Path, dir: &Path, image: &Path) -> Result<(), RootfsError> {
    remove_stale(image)?;
    let mut child = Command::new(mkfs)
        // Quiet about progress; keeps owners, modes and extended attributes; no compression
        // (reads cost no decompression in a slow guest).
        .arg("--quiet")
        .arg(image)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RootfsError::Spawn {
            tool: mkfs.to_owned(),
            source,
        })?;
    let mut stderr = child.stderr.take();
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watcher = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("mkfs.erofs".into())
            .spawn(move || {
                let reader = std::thread::spawn(move || {
                    let mut text = String::new();
                    if let Some(s) = stderr.as_mut() {
                        let _ = s.take(64 * 1024).read_to_string(&mut text);
                    }
                    text
                });
                let status = loop {
                    if cancel.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        break child.wait();
                    }
                    match child.try_wait() {
                        Ok(Some(s)) => break Ok(s),
                        Ok(None) => std::thread::sleep(POLL),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break Err(e);
                        }
                    }
                };
                let text = reader.join().unwrap_or_default();
                let _ = tx.send((status, text));
            })
            .map_err(|source| RootfsError::Spawn {
                tool: mkfs.to_owned(),
                source,
            })?
    };
    let mut run = MkfsRun {
        cancel,
        watcher: Some(watcher),
        image: image.to_owned(),
        finished: false,
    };
    let outcome = rx.await;
    run.finished = true;
    if let Some(w) = run.watcher.take() {
        let _ = w.join();
    }
    let (status, stderr) = outcome.map_err(|_| RootfsError::Spawn {
        tool: mkfs.to_owned(),
        source: std::io::Error::other("the mkfs.erofs watcher ended without a result"),
    })?;
    let status = status.map_err(|source| RootfsError::Spawn {
        tool: mkfs.to_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        let _ = std::fs::remove_file(image);
        Err(RootfsError::Mkfs {
            image: image.to_owned(),
            status,
            stderr,
        })
    }
}

async fn start_virtiofsd(
    bin: &Path,
    dir: &Path,
    work_dir: &Path,
    name: &str,
) -> Result<PreparedRootfs, RootfsError> {
    let socket = work_dir.join(format!("{name}.virtiofs.sock"));
    check_socket(&socket)?;
    let log = work_dir.join(format!("{name}.virtiofsd.log"));
    // virtiofsd writes its pid next to the socket.
    let pid_file = work_dir.join(format!("{name}.virtiofs.sock.pid"));
    for stale in [&socket, &log, &pid_file] {
        remove_stale(stale)?;
    }
    let argv: Vec<std::ffi::OsString> = vec![
        "--socket-path".into(),
        socket.clone().into(),
        "--shared-dir".into(),
        dir.into(),
        "--readonly".into(),
        // The hardened spawn leaves the daemon no capability but reading: its namespace
        // sandbox (which needs `unshare`, refused by the spawn's filter) cannot be set up,
        // and the write capabilities it would keep for a writable export are not there to
        // keep, so the list is emptied. Its own seccomp filter kills it at start without
        // them (a call outside its list on that path): the spawn's filter stays on.
        "--sandbox".into(),
        "none".into(),
        "--seccomp".into(),
        "none".into(),
        "--modcaps=-chown:-dac_override:-fowner:-fsetid:-setgid:-setuid:-mknod:-setfcap".into(),
        // Keep the file descriptor limit it was given (raising it needs a capability).
        "--rlimit-nofile".into(),
        "0".into(),
        "--cache".into(),
        "auto".into(),
        // Opening by file handle needs a capability it does not have.
        "--inode-file-handles=never".into(),
    ];
    let process = QemuProcess::spawn(bin, &argv, &log).map_err(|e| RootfsError::Spawn {
        tool: bin.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let prepared = PreparedRootfs {
        transport: RootfsTransport::VirtioFs,
        share: Share::VhostUserFs {
            tag: name.to_owned(),
            socket: socket.clone(),
        },
        mounts: vec![GuestMount {
            fstype: "virtiofs".into(),
            source: name.to_owned(),
            options: vec!["ro".into()],
        }],
        created: vec![socket.clone(), pid_file, log.clone()],
        daemon: Mutex::new(Some(process.clone())),
    };
    // From here on, dropping `prepared` (an error, or the future dropped) kills the daemon.
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = process.exit_status() {
            return Err(RootfsError::DaemonExited {
                status,
                log_tail: tail(&log),
            });
        }
        if start.elapsed() >= DAEMON_START {
            let _ = prepared.release().await;
            return Err(RootfsError::DaemonTimeout {
                socket,
                after: DAEMON_START,
            });
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(prepared)
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// `mkfs.erofs` as provisioned: the tests never skip when it is missing.
    fn tools() -> Tools {
        let tools = Tools::from_path(std::env::var_os("PATH").as_deref());
        assert!(
            tools.mkfs_erofs.is_some(),
            "mkfs.erofs is not in PATH: run scripts/provision (it installs erofs-utils)"
        );
        tools
    }

    /// A small tree: a file, a nested file, a symlink, an empty directory.
    fn tree(root: &Path) -> PathBuf {
        let dir = root.join("rootfs");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        std::fs::write(dir.join("hello"), b"hello\n").unwrap();
        std::fs::write(dir.join("bin/tool"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("bin/tool", dir.join("link")).unwrap();
        dir
    }

    /// Pids of this process's children (every thread's), failing closed.
    fn children() -> Vec<u32> {
        let mut out = Vec::new();
        for t in std::fs::read_dir("/proc/self/task").expect("list /proc/self/task") {
            let t = t.expect("a /proc/self/task entry");
            match std::fs::read_to_string(t.path().join("children")) {
                Ok(s) => out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("cannot read {}/children: {e}", t.path().display()),
            }
        }
        out
    }

    /// The child of this process whose command line holds `marker`.
    fn child_with(marker: &str) -> Option<u32> {
        children().into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn transport_names_round_trip() {
        assert_eq!(RootfsTransport::default(), RootfsTransport::Erofs);
        for t in RootfsTransport::ALL {
            assert_eq!(t.to_string().parse::<RootfsTransport>(), Ok(t));
        }
        assert_eq!("9p".parse(), Ok(RootfsTransport::NineP));
        assert_eq!("virtiofs".parse(), Ok(RootfsTransport::VirtioFs));
        let err = "nfs".parse::<RootfsTransport>().unwrap_err();
        assert!(err.to_string().contains("9p, erofs or virtiofs"), "{err}");
    }

    #[tokio::test]
    async fn bad_rootfs_work_dir_and_name_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let work = tmp.path();
        for t in RootfsTransport::ALL {
            let e = prepare_with(&tools(), t, Path::new("rootfs"), work, "r")
                .await
                .unwrap_err();
            assert!(matches!(e, RootfsError::RelativeRootfs(_)), "{t}: {e:?}");
            let missing = tmp.path().join("missing");
            let e = prepare_with(&tools(), t, &missing, work, "r")
                .await
                .unwrap_err();
            assert!(
                matches!(&e, RootfsError::Rootfs { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
                "{t}: {e:?}"
            );
            let e = prepare_with(&tools(), t, &dir.join("hello"), work, "r")
                .await
                .unwrap_err();
            assert!(matches!(e, RootfsError::NotADirectory(_)), "{t}: {e:?}");
            assert!(e.to_string().contains("not a directory"));
            let e = prepare_with(&tools(), t, &dir, Path::new("work"), "r")
                .await
                .unwrap_err();
            assert!(matches!(e, RootfsError::RelativeWorkDir(_)), "{t}: {e:?}");
            let e = prepare_with(&tools(), t, &dir, &tmp.path().join("nowork"), "r")
                .await
                .unwrap_err();
            assert!(matches!(e, RootfsError::WorkDir { .. }), "{t}: {e:?}");
            for name in ["", "a/b", "a,b", "../x", &"n".repeat(21)] {
                let e = prepare_with(&tools(), t, &dir, work, name)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(e, RootfsError::Name(SpecError::ShareName { .. })),
                    "{t} {name:?}: {e:?}"
                );
            }
        }
        // Nothing was created by any refusal.
        let mut left: Vec<_> = std::fs::read_dir(work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["rootfs"]);
    }

    #[tokio::test]
    async fn nine_p_exports_the_directory_read_only_and_creates_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let p = prepare_with(&tools(), RootfsTransport::NineP, &dir, tmp.path(), "ctr-1")
            .await
            .unwrap();
        assert_eq!(
            p.share,
            Share::NineP {
                tag: "ctr-1".into(),
                path: dir.clone(),
                read_only: true
            }
        );
        assert_eq!(p.mounts.len(), 1);
        assert_eq!(p.mounts[0].fstype, "9p");
        assert_eq!(p.mounts[0].source, "ctr-1");
        assert!(p.mounts[0].options.iter().any(|o| o == "ro"));
        assert!(p.mounts[0].options.iter().any(|o| o == "trans=virtio"));
        assert!(p.leftovers().is_empty());
        p.release().await.unwrap();
        p.release().await.unwrap();
        assert!(dir.join("hello").is_file(), "release touched the rootfs");
    }

    #[tokio::test]
    async fn erofs_builds_an_image_and_release_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let image = work.join("ctr-2.erofs");
        // A dead shim's leftover is replaced.
        std::fs::write(&image, b"stale").unwrap();
        let p = prepare_with(&tools(), RootfsTransport::Erofs, &dir, &work, "ctr-2")
            .await
            .unwrap();
        assert_eq!(
            p.share,
            Share::Disk {
                serial: "ctr-2".into(),
                path: image.clone(),
                read_only: true
            }
        );
        assert_eq!(
            p.mounts,
            [GuestMount {
                fstype: "erofs".into(),
                source: "serial=ctr-2".into(),
                options: vec!["ro".into()],
            }]
        );
        let bytes = std::fs::read(&image).unwrap();
        // The EROFS superblock's magic, little-endian at byte 1024.
        assert_eq!(
            bytes[1024..1028],
            0xE0F5_E1E2u32.to_le_bytes(),
            "not an EROFS image"
        );
        assert!(bytes.len() > 100_000, "the file's data is not in the image");
        assert_eq!(p.leftovers(), std::slice::from_ref(&image));
        p.release().await.unwrap();
        assert!(!image.exists(), "the image remains after release");
        assert!(p.leftovers().is_empty());
        p.release().await.unwrap();
        assert!(dir.join("bin/tool").is_file(), "release touched the rootfs");
    }

    #[tokio::test]
    async fn erofs_dropped_without_release_removes_its_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let p = prepare_with(&tools(), RootfsTransport::Erofs, &dir, tmp.path(), "d")
            .await
            .unwrap();
        let image = tmp.path().join("d.erofs");
        assert!(image.is_file());
        drop(p);
        assert!(!image.exists());
    }

    #[tokio::test]
    async fn a_failing_mkfs_reports_its_stderr_and_leaves_no_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let fake = script(
            tmp.path(),
            "mkfs-fails",
            r#"echo partial > "$2"; echo "no space left on the test device" >&2; exit 3"#,
        );
        let tools = Tools {
            mkfs_erofs: Some(fake),
            virtiofsd: None,
        };
        let e = prepare_with(&tools, RootfsTransport::Erofs, &dir, tmp.path(), "f")
            .await
            .unwrap_err();
        match &e {
            RootfsError::Mkfs { status, stderr, .. } => {
                assert_eq!(status.code(), Some(3));
                assert!(
                    stderr.contains("no space left on the test device"),
                    "{stderr}"
                );
            }
            other => panic!("expected a mkfs error, got {other:?}"),
        }
        assert!(
            !tmp.path().join("f.erofs").exists(),
            "a partial image remains"
        );
    }

    /// A prepare dropped while `mkfs.erofs` runs: the process is seen running and the
    /// partial image seen on disk first, then both are proven gone.
    #[tokio::test]
    async fn a_dropped_prepare_kills_mkfs_and_removes_the_partial_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let marker = "3600.271828";
        let fake = script(
            tmp.path(),
            "mkfs-slow",
            &format!(r#"echo partial > "$2"; exec sleep {marker}"#),
        );
        let tools = Tools {
            mkfs_erofs: Some(fake),
            virtiofsd: None,
        };
        let image = tmp.path().join("slow.erofs");
        let mut fut = Box::pin(prepare_with(
            &tools,
            RootfsTransport::Erofs,
            &dir,
            tmp.path(),
            "slow",
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            tokio::select! {
                r = &mut fut => panic!("the slow mkfs finished: {r:?}"),
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
            if let (Some(pid), true) = (child_with(marker), image.exists()) {
                break pid;
            }
            assert!(Instant::now() < deadline, "the fake mkfs never started");
        };
        drop(fut);
        assert!(
            !children().contains(&pid),
            "mkfs (pid {pid}) is still a child after the drop"
        );
        assert!(child_with(marker).is_none());
        assert!(!image.exists(), "the partial image remains");
    }

    /// A stand-in for `virtiofsd`: creates the "socket" (`$2`) and its pid file, then
    /// sleeps under `marker` until signalled.
    fn fake_virtiofsd(dir: &Path, marker: &str) -> Tools {
        let fake = script(
            dir,
            "virtiofsd-fake",
            &format!(r#"touch "$2" "$2.pid"; echo serving >&2; exec sleep {marker}"#),
        );
        Tools {
            mkfs_erofs: None,
            virtiofsd: Some(fake),
        }
    }

    async fn gone_within(pid: u32, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while children().contains(&pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn virtiofs_daemon_runs_until_release_which_stops_it_and_removes_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let marker = "3600.314159";
        let tools = fake_virtiofsd(tmp.path(), marker);
        let p = prepare_with(&tools, RootfsTransport::VirtioFs, &dir, &work, "vfs")
            .await
            .unwrap();
        let socket = work.join("vfs.virtiofs.sock");
        assert_eq!(
            p.share,
            Share::VhostUserFs {
                tag: "vfs".into(),
                socket: socket.clone()
            }
        );
        assert_eq!(p.mounts[0].fstype, "virtiofs");
        assert_eq!(p.mounts[0].source, "vfs");
        let pid = p.daemon_pid().expect("the daemon runs");
        assert!(children().contains(&pid), "the daemon is not our child");
        // The daemon is the script until it `exec`s `sleep <marker>`: wait for that, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while child_with(marker).is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(child_with(marker), Some(pid));
        assert_eq!(p.leftovers().len(), 3, "{:?}", p.leftovers());
        p.release().await.unwrap();
        assert!(!children().contains(&pid), "the daemon survived release");
        assert!(p.daemon_pid().is_none());
        assert!(p.leftovers().is_empty(), "{:?}", p.leftovers());
        let left: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        p.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn virtiofs_dropped_without_release_kills_its_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let marker = "3600.577215";
        let tools = fake_virtiofsd(tmp.path(), marker);
        let p = prepare_with(&tools, RootfsTransport::VirtioFs, &dir, tmp.path(), "vd")
            .await
            .unwrap();
        let pid = p.daemon_pid().expect("the daemon runs");
        assert!(children().contains(&pid));
        drop(p);
        assert!(
            gone_within(pid, Duration::from_secs(10)).await,
            "the daemon (pid {pid}) outlived its dropped rootfs"
        );
        assert!(!tmp.path().join("vd.virtiofs.sock").exists());
    }

    #[tokio::test]
    async fn a_virtiofs_daemon_exiting_at_start_reports_its_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let fake = script(
            tmp.path(),
            "virtiofsd-fails",
            r#"echo "cannot serve the test directory" >&2; exit 4"#,
        );
        let tools = Tools {
            mkfs_erofs: None,
            virtiofsd: Some(fake),
        };
        let e = prepare_with(&tools, RootfsTransport::VirtioFs, &dir, tmp.path(), "vx")
            .await
            .unwrap_err();
        match &e {
            RootfsError::DaemonExited { status, log_tail } => {
                assert_eq!(status.code(), Some(4));
                assert!(
                    log_tail.contains("cannot serve the test directory"),
                    "{log_tail}"
                );
            }
            other => panic!("expected DaemonExited, got {other:?}"),
        }
        assert!(!tmp.path().join("vx.virtiofsd.log").exists());
    }

    #[tokio::test]
    async fn virtiofs_without_the_daemon_says_how_to_get_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tree(tmp.path());
        let tools = Tools {
            mkfs_erofs: None,
            virtiofsd: None,
        };
        let e = prepare_with(&tools, RootfsTransport::VirtioFs, &dir, tmp.path(), "v")
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                RootfsError::Unavailable {
                    tool: "virtiofsd",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("--with-virtiofsd"), "{e}");
        let e = prepare_with(&tools, RootfsTransport::Erofs, &dir, tmp.path(), "v")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("erofs-utils"), "{e}");
    }
}

/// `mount(8)`'s flag options; everything else is filesystem data.
const MOUNT_FLAGS: &[(&str, libc::c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, true),
    ("rw", libc::MS_RDONLY, false),
    ("nosuid", libc::MS_NOSUID, true),
    ("suid", libc::MS_NOSUID, false),
    ("nodev", libc::MS_NODEV, true),
    ("dev", libc::MS_NODEV, false),
    ("noexec", libc::MS_NOEXEC, true),
    ("exec", libc::MS_NOEXEC, false),
    ("noatime", libc::MS_NOATIME, true),
    ("relatime", libc::MS_RELATIME, true),
    ("strictatime", libc::MS_STRICTATIME, true),
    ("sync", libc::MS_SYNCHRONOUS, true),
    ("async", libc::MS_SYNCHRONOUS, false),
    ("bind", libc::MS_BIND, true),
    ("rbind", libc::MS_BIND | libc::MS_REC, true),
];

/// Splits `mount -o` options into flags and the data string.
fn mount_flags(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = 0;
    let mut data = Vec::new();
    for o in options {
        match MOUNT_FLAGS.iter().find(|(name, _, _)| name == o) {
            Some((_, f, true)) => flags |= f,
            Some((_, f, false)) => flags &= !f,
            None => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Mounts `m` on `target` (the host side of a container's rootfs; see
/// `ContainerSpec::rootfs_mounts`). A `bind` mount's source is bound; `ro` on a bind is
/// applied by a remount, as `mount(8)` does.
pub(crate) fn mount_host(target: &Path, m: &crate::task::HostMount) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let invalid = |what| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let (mut flags, data) = mount_flags(&m.options);
    let is_bind = m.fstype == "bind" || flags & libc::MS_BIND != 0;
    if is_bind {
        flags |= libc::MS_BIND;
    }
    // The kernel takes at most one page of mount data.
    if data.len() >= 4096 {
        return Err(invalid(
            "the mount options are longer than a page (4095 bytes)",
        ));
    }
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| invalid("a NUL byte in the mount"));
    let source = cstr(m.source.as_bytes())?;
    let target_c = cstr(target.as_os_str().as_bytes())?;
    let fstype = cstr(m.fstype.as_bytes())?;
    let data_c = cstr(data.as_bytes())?;
    let mount = |flags: libc::c_ulong, data: *const libc::c_void| {
        // SAFETY: every pointer is a valid NUL-terminated string living across the call.
        let r = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                flags,
                data,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        data_c.as_ptr().cast()
    };
    // A bind ignores MS_RDONLY on the first call: it takes a remount.
    let first = if is_bind {
        flags & !libc::MS_RDONLY
    } else {
        flags
    };
    mount(first, data_ptr)?;
    if is_bind && flags & libc::MS_RDONLY != 0 {
        if let Err(e) = mount(
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        ) {
            let _ = unmount_host(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts the topmost mount on `target`; when it is busy, detaches it (it goes once its
/// last user does). A target with nothing mounted on it is an error. The shim's
/// `mount_cleanup` uses it for `ContainerSpec::rootfs_mounts`, and so does a containerd shim
/// cleaning up after a dead server.
pub fn unmount_host(target: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    tracing::warn!(target = %target.display(), "rootfs mount busy; detaching it");
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod host_mount_tests {
    use super::*;
    use crate::task::HostMount;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (flags, data) = mount_flags(&o(&["ro", "nosuid", "lowerdir=/a:/b", "index=off"]));
        assert_eq!(flags, libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(data, "lowerdir=/a:/b,index=off");
        let (flags, data) = mount_flags(&o(&["rbind", "ro", "rw"]));
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(data, "");
    }

    fn mounted(target: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let t = target.to_str().expect("utf-8 path");
        info.lines().any(|l| l.split(' ').nth(4) == Some(t))
    }

    #[test]
    fn a_read_only_bind_mount_is_made_then_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, target) = (dir.path().join("src"), dir.path().join("target"));
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(src.join("file"), "x").expect("write");
        let m = HostMount {
            fstype: "bind".into(),
            source: src.display().to_string(),
            options: vec!["rbind".into(), "ro".into()],
        };
        mount_host(&target, &m).expect("mount");
        assert!(mounted(&target));
        assert_eq!(
            std::fs::read_to_string(target.join("file")).expect("read"),
            "x"
        );
        let err = std::fs::write(target.join("new"), "y").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        unmount_host(&target).expect("unmount");
        assert!(!mounted(&target));
        assert!(unmount_host(&target).is_err(), "nothing left to unmount");
    }

    #[test]
    fn a_failed_mount_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = HostMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", dir.path().join("missing").display())],
        };
        let err = mount_host(dir.path(), &m).expect_err("no lowerdir");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        assert!(!mounted(dir.path()));
        let long = HostMount {
            options: vec!["x".repeat(5000)],
            ..m
        };
        assert_eq!(
            mount_host(dir.path(), &long).expect_err("too long").kind(),
            std::io::ErrorKind::InvalidInput
        );
    }
}
