//! The QEMU child process: spawned in its own process group, watched by one reaper task.
//!
//! The reaper task owns the [`tokio::process::Child`]. It publishes the exit status on a
//! `watch` channel (so any number of waiters, the shutdown escalation and exit callbacks
//! all see the same value) and is the only place that signals the process group. Because
//! signals are sent from the task that also reaps, a signal can never reach a recycled pid:
//! until the reaper has collected the exit status, the pid (and group id) stays reserved.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot, watch};

/// Errors spawning or signalling QEMU.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file for QEMU's stderr could not be created.
    #[error("cannot create log file {}", path.display())]
    Log {
        /// The log path.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `exec` failed (missing binary, not executable, …).
    #[error("cannot execute {}", binary.display())]
    Spawn {
        /// The binary.
        binary: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The spawned child has no pid (it was already reaped).
    #[error("QEMU exited before its pid could be read")]
    NoPid,
    /// Sending a signal failed.
    #[error("cannot send {signal} to QEMU's process group")]
    Signal {
        /// The signal.
        signal: Signal,
        /// The error from `killpg`.
        #[source]
        source: nix::Error,
    },
    /// The process has already exited; nothing was signalled.
    #[error("QEMU has already exited")]
    Exited,
}

type SignalRequest = (Signal, oneshot::Sender<Result<(), ProcessError>>);

/// A running (or exited) QEMU process.
///
/// Dropping the last handle makes the reaper kill the process group with SIGKILL and reap
/// it: a forgotten VM does not outlive its owner.
#[derive(Debug, Clone)]
pub struct QemuProcess {
    pid: u32,
    exit: watch::Receiver<Option<ExitStatus>>,
    signals: mpsc::Sender<SignalRequest>,
}

/// See [`QemuProcess::downgrade`].
#[derive(Debug, Clone)]
pub struct WeakProcess {
    signals: mpsc::WeakSender<SignalRequest>,
    exit: watch::Receiver<Option<ExitStatus>>,
    pid: u32,
}

impl WeakProcess {
    /// The full handle, while one still exists.
    pub fn upgrade(&self) -> Option<QemuProcess> {
        Some(QemuProcess {
            pid: self.pid,
            exit: self.exit.clone(),
            signals: self.signals.upgrade()?,
        })
    }
}

impl QemuProcess {
    /// Spawns `binary argv…` in a new process group with stdin closed and stdout and
    /// stderr appended to `log`.
    pub fn spawn(binary: &Path, argv: &[OsString], log: &Path) -> Result<Self, ProcessError> {
        Self::spawn_keeping(binary, argv, log, &[])
    }

    /// [`QemuProcess::spawn`], with the descriptors `keep` inherited under the same numbers
    /// (they must stay open until this returns).
    pub fn spawn_keeping(
        binary: &Path,
        argv: &[OsString],
        log: &Path,
        keep: &[std::os::fd::RawFd],
    ) -> Result<Self, ProcessError> {
        let log_err = |source| ProcessError::Log {
            path: log.to_owned(),
            source,
        };
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(log_err)?;
        let stdout = stderr.try_clone().map_err(log_err)?;
        let mut command = Command::new(binary);
        super::harden::harden_keeping(&mut command, keep);
        let mut child = command
            .args(argv)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            // Last resort only: the reaper normally kills and reaps explicitly.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                binary: binary.to_owned(),
                source,
            })?;
        let pid = child.id().ok_or(ProcessError::NoPid)?;
        tracing::debug!(pid, binary = %binary.display(), "QEMU spawned");
        let (exit_tx, exit) = watch::channel(None);
        let (signals, mut rx) = mpsc::channel::<SignalRequest>(8);
        tokio::spawn(async move {
            let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
            let mut handles_alive = true;
            let status = loop {
                tokio::select! {
                    biased;
                    status = child.wait() => break status,
                    req = rx.recv(), if handles_alive => {
                        if let Some((signal, reply)) = req {
                            // The child is not reaped yet (we are not inside `wait`), so
                            // the group id still names our QEMU.
                            let r = killpg(group, signal)
                                .map_err(|source| ProcessError::Signal { signal, source });
                            let _ = reply.send(r);
                        } else {
                            handles_alive = false;
                            tracing::warn!(pid, "QEMU handle dropped while running; killing it");
                            let _ = killpg(group, Signal::SIGKILL);
                        }
                    }
                }
            };
            match status {
                Ok(s) => {
                    tracing::debug!(pid, status = %s, "QEMU exited");
                    let _ = exit_tx.send(Some(s));
                }
                Err(e) => {
                    // `wait` only fails if the child was reaped elsewhere; report it as a
                    // signal death so waiters are released rather than hanging.
                    tracing::error!(pid, error = %e, "waiting for QEMU failed");
                    let _ = exit_tx.send(Some(std::os::unix::process::ExitStatusExt::from_raw(9)));
                }
            }
        });
        Ok(Self { pid, exit, signals })
    }

    /// A handle that does not keep the process alive: when every [`QemuProcess`] is
    /// dropped the reaper still kills it, whatever weak handles remain.
    pub fn downgrade(&self) -> WeakProcess {
        WeakProcess {
            signals: self.signals.downgrade(),
            exit: self.exit.clone(),
            pid: self.pid,
        }
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, if the process has exited (and been reaped).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// A receiver of the exit status (`None` while running).
    pub fn exit_watch(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.clone()
    }

    /// Waits until the process has exited and been reaped.
    pub async fn wait_exit(&self) -> ExitStatus {
        let mut rx = self.exit.clone();
        loop {
            if let Some(s) = *rx.borrow_and_update() {
                return s;
            }
            if rx.changed().await.is_err() {
                // The reaper always publishes before ending; this is unreachable in
                // practice, but never hang: report the last value seen.
                return (*rx.borrow())
                    .unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9));
            }
        }
    }

    /// Waits for exit at most `timeout`; `None` if still running.
    pub async fn wait_exit_timeout(&self, timeout: std::time::Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.wait_exit()).await.ok()
    }

    /// Sends `signal` to QEMU's process group, unless it has already exited.
    pub async fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        if self.exit_status().is_some() {
            return Err(ProcessError::Exited);
        }
        let (tx, rx) = oneshot::channel();
        if self.signals.send((signal, tx)).await.is_err() {
            return Err(ProcessError::Exited);
        }
        rx.await.unwrap_or(Err(ProcessError::Exited))
    }
}
