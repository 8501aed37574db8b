//! The `vhost-device-vsock` child: a vhost-user vsock backend that gives a QEMU guest a
//! real virtio-vsock device on hosts without `/dev/vhost-vsock`, and exposes it to the
//! host as hybrid vsock (see [`crate::vm::vsock`]).
//!
//! It runs in its own process group, is started before QEMU (QEMU connects to its
//! vhost-user socket at start) and stopped after QEMU has exited; it is reaped by the
//! same reaper design as QEMU ([`QemuProcess`] is process-agnostic).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::vm::check_socket;
use crate::vm::process::{ProcessError, QemuProcess};

/// How often start-up checks whether the backend's socket exists yet.
const SOCKET_POLL: Duration = Duration::from_millis(5);

/// Errors of the backend daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A socket path would not fit `sun_path`.
    #[error("invalid vsock socket path")]
    Path(#[source] crate::vm::SocketPathError),
    /// The binary could not be executed.
    #[error("cannot start vhost-device-vsock")]
    Spawn(#[source] ProcessError),
    /// It exited before creating its socket.
    #[error("vhost-device-vsock exited at start with {status}; log:\n{log_tail}")]
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The end of its log.
        log_tail: String,
    },
    /// Its socket did not appear in time (it was killed).
    #[error("vhost-device-vsock did not create {} within {after:?}", socket.display())]
    Timeout {
        /// The socket waited for.
        socket: PathBuf,
        /// The bound.
        after: Duration,
    },
    /// It survived SIGKILL.
    #[error("vhost-device-vsock (pid {pid}) did not exit after SIGKILL")]
    NotReaped {
        /// Its pid.
        pid: u32,
    },
}

/// A running `vhost-device-vsock` serving one VM.
#[derive(Debug)]
pub struct VsockDaemon {
    process: QemuProcess,
    vhost_socket: PathBuf,
    uds: PathBuf,
    log: PathBuf,
}

impl VsockDaemon {
    /// Starts the backend for guest `cid` with its sockets in `dir` (which must exist):
    /// `vhost.sock` (for QEMU) and `vm.vsock` (hybrid vsock for the host; guest → host
    /// connections to port N go to `vm.vsock_N`). Returns once `vhost.sock` exists.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        cid: u32,
        timeout: Duration,
    ) -> Result<Self, DaemonError> {
        let vhost_socket = dir.join("vhost.sock");
        let uds = dir.join("vm.vsock");
        // The longest path the daemon derives: `vm.vsock_<port>`.
        check_socket(&dir.join("vm.vsock_4294967295")).map_err(DaemonError::Path)?;
        let log = dir.join("vhost-device-vsock.log");
        let mut spec = std::ffi::OsString::from(format!("guest-cid={cid},socket="));
        spec.push(vhost_socket.as_os_str());
        spec.push(",uds-path=");
        spec.push(uds.as_os_str());
        let argv = vec!["--vm".into(), spec];
        let process = QemuProcess::spawn(binary, &argv, &log).map_err(DaemonError::Spawn)?;
        tracing::debug!(pid = process.pid(), "vhost-device-vsock started");
        let daemon = Self {
            process,
            vhost_socket,
            uds,
            log,
        };
        let start = Instant::now();
        while !daemon.vhost_socket.exists() {
            if let Some(status) = daemon.process.exit_status() {
                return Err(DaemonError::Exited {
                    status,
                    log_tail: daemon.log_tail(),
                });
            }
            if start.elapsed() >= timeout {
                let _ = daemon.stop(Duration::ZERO).await;
                return Err(DaemonError::Timeout {
                    socket: daemon.vhost_socket.clone(),
                    after: timeout,
                });
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
        Ok(daemon)
    }

    /// The vhost-user socket QEMU connects to.
    pub fn vhost_socket(&self) -> &Path {
        &self.vhost_socket
    }

    /// The hybrid vsock socket the host connects to.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// Where guest → host connections to `port` arrive: `<uds>_<port>`.
    pub fn host_listener_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// The daemon's pid (and process group).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// A watch of its exit status (set once it has exited and been reaped).
    pub fn exit_watch(&self) -> tokio::sync::watch::Receiver<Option<ExitStatus>> {
        self.process.exit_watch()
    }

    /// The exit status, once it has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// Stops it: SIGTERM, up to `grace` for it to exit, then SIGKILL; waits for the reap
    /// and removes its sockets. Returns its exit status (at once if it already exited).
    pub async fn stop(&self, grace: Duration) -> Result<ExitStatus, DaemonError> {
        let status = if let Some(s) = self.process.exit_status() {
            s
        } else {
            let _ = self.process.signal(Signal::SIGTERM).await;
            if let Some(s) = self.process.wait_exit_timeout(grace).await {
                s
            } else {
                let _ = self.process.signal(Signal::SIGKILL).await;
                self.process
                    .wait_exit_timeout(Duration::from_secs(5))
                    .await
                    .ok_or(DaemonError::NotReaped {
                        pid: self.process.pid(),
                    })?
            }
        };
        for p in [&self.vhost_socket, &self.uds] {
            let _ = std::fs::remove_file(p);
        }
        Ok(status)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}
