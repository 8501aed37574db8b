//! A running QEMU VM: start (config → state dir → exec → QMP), observe exit, shut down.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UnixListener;

use super::accel::{resolve_accelerator, sandbox_supported, Accelerator};
use super::config::{ConfigError, HostFeatures, QemuConfig, RuntimePaths, SandboxMode};
use super::escalation::escalate;
use super::qmp::{QmpClient, QmpError};
use crate::vm::process::{ProcessError, QemuProcess};
use crate::vm::shared_task::SharedTask;
use crate::vm::state_dir::{StateDir, StateDirError};
use crate::vm::stop::{EscalationPolicy, GracefulError, GracefulHook, ShutdownStep, StepReport};
use crate::vm::VmId;

/// How much of QEMU's stderr log a start error carries.
const STDERR_TAIL_BYTES: u64 = 4096;

/// Options for [`QemuInstance::start`].
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Parent of the per-VM state directory (default: `/run/spinbox`).
    pub state_root: PathBuf,
    /// Bound on exec → QMP connection accepted (default 10 s; only a wedged QEMU hits it,
    /// an exiting one is reported as soon as it exits).
    pub connect_timeout: Duration,
    /// Bound on the QMP handshake, and the default command timeout (default 5 s).
    pub qmp_timeout: Duration,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self {
            state_root: PathBuf::from(crate::vm::state_dir::SYSTEM_STATE_ROOT),
            connect_timeout: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(5),
        }
    }
}

/// The phase of start-up that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPhase {
    /// Validating the configuration and building the command line.
    Config,
    /// Creating the state directory and the QMP listener.
    StateDir,
    /// Executing the QEMU binary.
    Exec,
    /// Waiting for QEMU to connect to the QMP socket.
    QmpConnect,
    /// Greeting and `qmp_capabilities`.
    QmpHandshake,
}

/// Why a VM did not start. Every variant after `exec` carries the tail of QEMU's stderr.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("invalid QEMU configuration")]
    Config(#[source] ConfigError),
    /// The state directory could not be created.
    #[error("cannot prepare the state directory")]
    StateDir(#[source] StateDirError),
    /// The QMP listener could not be bound.
    #[error("cannot listen on QMP socket {}", path.display())]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be executed.
    #[error("cannot start QEMU")]
    Exec(#[source] ProcessError),
    /// QEMU exited during start-up.
    #[error("QEMU exited during {phase:?} with {status}; stderr:\n{stderr_tail}")]
    Exited {
        /// The phase it exited in.
        phase: StartPhase,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// QEMU did not reach the next phase in time (it was killed).
    #[error("QEMU did not finish {phase:?} within {after:?}; stderr:\n{stderr_tail}")]
    Timeout {
        /// The phase.
        phase: StartPhase,
        /// The bound that expired.
        after: Duration,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The QMP handshake failed while QEMU kept running (it was killed).
    #[error("QMP handshake failed; stderr:\n{stderr_tail}")]
    Qmp {
        /// The QMP error.
        #[source]
        source: QmpError,
        /// The end of QEMU's stderr.
        stderr_tail: String,
    },
}

impl StartError {
    /// The phase that failed.
    pub fn phase(&self) -> StartPhase {
        match self {
            StartError::Config(_) => StartPhase::Config,
            StartError::StateDir(_) | StartError::Listen { .. } => StartPhase::StateDir,
            StartError::Exec(_) => StartPhase::Exec,
            StartError::Exited { phase, .. } | StartError::Timeout { phase, .. } => *phase,
            StartError::Qmp { .. } => StartPhase::QmpHandshake,
        }
    }

    /// The tail of QEMU's stderr, when QEMU ran.
    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            StartError::Exited { stderr_tail, .. }
            | StartError::Timeout { stderr_tail, .. }
            | StartError::Qmp { stderr_tail, .. } => Some(stderr_tail),
            _ => None,
        }
    }
}

/// Errors of [`QemuInstance::shutdown`]; shared by every concurrent caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShutdownError {
    /// QEMU survived SIGKILL; the state directory was left in place.
    #[error("QEMU could not be stopped")]
    NotReaped(#[source] super::escalation::NotReaped),
    /// QEMU is gone but its state directory could not be removed.
    #[error("QEMU stopped ({ended_by:?}) but its state directory remains")]
    Cleanup {
        /// The step that ended QEMU.
        ended_by: ShutdownStep,
        /// The removal error.
        #[source]
        source: Arc<StateDirError>,
    },
}

/// How a shutdown ended.
#[derive(Debug, Clone)]
pub struct ShutdownOutcome {
    /// The step during which QEMU exited.
    pub ended_by: ShutdownStep,
    /// QEMU's exit status.
    pub exit_status: ExitStatus,
    /// From the start of the shutdown to QEMU reaped and the state directory removed.
    pub elapsed: Duration,
    /// Every escalation step attempted.
    pub steps: Vec<StepReport>,
    /// The graceful hook's error, if it ran and failed.
    pub graceful_error: Option<GracefulError>,
}

/// The shared result of the (single) shutdown.
pub type ShutdownResult = Result<ShutdownOutcome, ShutdownError>;

struct Inner {
    id: VmId,
    state_dir: StateDir,
    process: QemuProcess,
    qmp: QmpClient,
    argv: Vec<OsString>,
    accelerator: Accelerator,
    shutdown: SharedTask<ShutdownResult>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone: the process handle's drop makes the reaper SIGKILL the group;
        // the directory goes now so no socket or log outlives the instance.
        if self.state_dir.path().exists() {
            if let Err(e) = self.state_dir.remove() {
                tracing::warn!(error = %e, "state directory left behind");
            }
        }
    }
}

/// A started QEMU VM. Cheap to clone; clones share the VM.
#[derive(Clone)]
pub struct QemuInstance {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QemuInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuInstance")
            .field("id", &self.inner.id)
            .field("pid", &self.inner.process.pid())
            .field("state_dir", &self.inner.state_dir.path())
            .finish_non_exhaustive()
    }
}

impl QemuInstance {
    /// Starts a VM: validates the config, resolves the accelerator and sandbox support,
    /// creates the state directory, listens on the QMP socket, executes QEMU and waits for
    /// it to connect and complete the QMP handshake. An early exit is reported as soon as
    /// it happens, with the tail of QEMU's stderr. On any failure nothing is left behind.
    pub async fn start(config: &QemuConfig, opts: &StartOptions) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let state_dir =
            StateDir::create(&opts.state_root, &config.id).map_err(StartError::StateDir)?;
        Self::start_in_dir(config, opts, state_dir).await
    }

    /// [`Self::start`] in a state directory the caller created (and locked) already; it is
    /// removed if the start fails.
    pub async fn start_in_dir(
        config: &QemuConfig,
        opts: &StartOptions,
        state_dir: StateDir,
    ) -> Result<Self, StartError> {
        if let Err(e) = config.validate() {
            let _ = state_dir.remove();
            return Err(StartError::Config(e));
        }
        let accelerator = resolve_accelerator(&config.binary, config.accel).await;
        let sandbox = match config.sandbox {
            SandboxMode::On => true,
            SandboxMode::Off => false,
            SandboxMode::Auto => sandbox_supported(&config.binary).await,
        };
        let host = HostFeatures {
            accelerator,
            sandbox,
        };
        match Self::start_in(config, opts, host, &state_dir).await {
            Ok(i) => Ok(i),
            Err(e) => {
                if let Err(rm) = state_dir.remove() {
                    tracing::warn!(error = %rm, "state directory left after failed start");
                }
                Err(e)
            }
        }
    }

    async fn start_in(
        config: &QemuConfig,
        opts: &StartOptions,
        host: HostFeatures,
        state_dir: &StateDir,
    ) -> Result<Self, StartError> {
        let paths = RuntimePaths {
            dir: state_dir.path().to_owned(),
            qmp_socket: state_dir.qmp_socket(),
            serial_log: state_dir.serial_log(),
        };
        let argv = config.to_argv(&paths, host).map_err(StartError::Config)?;
        let listener =
            UnixListener::bind(&paths.qmp_socket).map_err(|source| StartError::Listen {
                path: paths.qmp_socket.clone(),
                source,
            })?;
        let log = state_dir.stderr_log();
        let process = QemuProcess::spawn_keeping(&config.binary, &argv, &log, &config.inherited_fds())
            .map_err(StartError::Exec)?;
        tracing::info!(id = %config.id, pid = process.pid(), accel = accelerator_name(host), "QEMU started");

        // From here on, a failure must not leave QEMU running.
        let fail = |e: StartError| {
            let process = process.clone();
            async move {
                let _ = process.signal(nix::sys::signal::Signal::SIGKILL).await;
                process.wait_exit().await;
                e
            }
        };

        let accepted = tokio::select! {
            r = tokio::time::timeout(opts.connect_timeout, listener.accept()) => r,
            status = process.wait_exit() => {
                return Err(StartError::Exited { phase: StartPhase::QmpConnect, status, stderr_tail: stderr_tail(&log) });
            }
        };
        let stream = match accepted {
            Ok(Ok((s, _))) => s,
            Ok(Err(source)) => {
                return Err(fail(StartError::Listen {
                    path: paths.qmp_socket.clone(),
                    source,
                })
                .await)
            }
            Err(_) => {
                return Err(fail(StartError::Timeout {
                    phase: StartPhase::QmpConnect,
                    after: opts.connect_timeout,
                    stderr_tail: stderr_tail(&log),
                })
                .await)
            }
        };
        // One connection only; the socket file is no longer needed.
        drop(listener);
        let _ = std::fs::remove_file(&paths.qmp_socket);

        let qmp = match QmpClient::handshake(stream, opts.qmp_timeout).await {
            Ok(q) => q,
            Err(source) => {
                // QEMU closes the connection when it dies during machine init (missing
                // kernel, bad device): wait briefly on its exit to report that instead.
                if let Some(status) = process.wait_exit_timeout(opts.qmp_timeout).await {
                    return Err(StartError::Exited {
                        phase: StartPhase::QmpHandshake,
                        status,
                        stderr_tail: stderr_tail(&log),
                    });
                }
                return Err(fail(StartError::Qmp {
                    source,
                    stderr_tail: stderr_tail(&log),
                })
                .await);
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                id: config.id.clone(),
                state_dir: state_dir.clone(),
                process,
                qmp,
                argv,
                accelerator: host.accelerator,
                shutdown: SharedTask::default(),
            }),
        })
    }

    /// The VM's ID.
    pub fn id(&self) -> &VmId {
        &self.inner.id
    }

    /// QEMU's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.inner.process.pid()
    }

    /// The accelerator in use.
    pub fn accelerator(&self) -> Accelerator {
        self.inner.accelerator
    }

    /// The arguments QEMU was started with.
    pub fn argv(&self) -> &[OsString] {
        &self.inner.argv
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.inner.state_dir.path()
    }

    /// The serial console log.
    pub fn serial_log(&self) -> PathBuf {
        self.inner.state_dir.serial_log()
    }

    /// QEMU's stderr log.
    pub fn stderr_log(&self) -> PathBuf {
        self.inner.state_dir.stderr_log()
    }

    /// The QMP client.
    pub fn qmp(&self) -> &QmpClient {
        &self.inner.qmp
    }

    /// The process handle (signals, exit watch).
    pub fn process(&self) -> &QemuProcess {
        &self.inner.process
    }

    /// The exit status, once QEMU has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.inner.process.exit_status()
    }

    /// Waits for QEMU to exit (for any reason) and be reaped.
    pub async fn wait_exit(&self) -> ExitStatus {
        self.inner.process.wait_exit().await
    }

    /// Calls `callback` once QEMU has exited (immediately if it already has).
    ///
    /// The callback runs on a task that holds only the exit watch, not the instance.
    pub fn on_exit<F>(&self, callback: F)
    where
        F: FnOnce(ExitStatus) + Send + 'static,
    {
        let mut rx = self.inner.process.exit_watch();
        tokio::spawn(async move {
            loop {
                if let Some(s) = *rx.borrow_and_update() {
                    callback(s);
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Shuts the VM down with `policy` and no graceful hook. See [`Self::shutdown_with`].
    pub async fn shutdown(&self, policy: &EscalationPolicy) -> ShutdownResult {
        self.shutdown_with(policy, None).await
    }

    /// Shuts the VM down: escalation (graceful hook, guest request, quit, SIGTERM, SIGKILL), reap, close QMP, remove
    /// the state directory.
    ///
    /// Idempotent and concurrency-safe: the first call starts the work on its own task
    /// (so it completes even if that caller is cancelled); every call, concurrent or later,
    /// waits for and returns the same result. Later callers' `policy` and `graceful` are
    /// ignored.
    pub async fn shutdown_with(
        &self,
        policy: &EscalationPolicy,
        graceful: Option<GracefulHook>,
    ) -> ShutdownResult {
        let inner = Arc::clone(&self.inner);
        let policy = *policy;
        self.inner
            .shutdown
            .run(
                move || async move { run_shutdown(&inner, &policy, graceful).await },
                // The shutdown task panicked before publishing (it never should); the
                // process handle still guarantees QEMU is killed once dropped.
                || {
                    Err(ShutdownError::NotReaped(super::escalation::NotReaped {
                        pid: self.pid(),
                        steps: Vec::new(),
                    }))
                },
            )
            .await
    }
}

async fn run_shutdown(
    inner: &Inner,
    policy: &EscalationPolicy,
    graceful: Option<GracefulHook>,
) -> ShutdownResult {
    let start = Instant::now();
    let escalated = escalate(&inner.process, &inner.qmp, policy, graceful).await;
    inner.qmp.close().await;
    let escalated = match escalated {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "QEMU survived SIGKILL");
            return Err(ShutdownError::NotReaped(e));
        }
    };
    let removed = inner.state_dir.remove();
    let elapsed = start.elapsed();
    tracing::info!(
        id = %inner.id,
        ended_by = ?escalated.ended_by,
        status = %escalated.exit_status,
        ?elapsed,
        "VM shut down"
    );
    removed.map_err(|e| ShutdownError::Cleanup {
        ended_by: escalated.ended_by,
        source: Arc::new(e),
    })?;
    Ok(ShutdownOutcome {
        ended_by: escalated.ended_by,
        exit_status: escalated.exit_status,
        elapsed,
        steps: escalated.steps,
        graceful_error: escalated.graceful_error,
    })
}

fn accelerator_name(h: HostFeatures) -> &'static str {
    h.accelerator.qemu_name()
}

/// The last [`STDERR_TAIL_BYTES`] of the log, lossily decoded, trimmed to whole lines.
fn stderr_tail(log: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = std::fs::File::open(log)?;
        let len = f.metadata()?.len();
        let from = len.saturating_sub(STDERR_TAIL_BYTES);
        f.seek(SeekFrom::Start(from))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let mut s = String::from_utf8_lossy(&buf).into_owned();
        if from > 0 {
            if let Some(nl) = s.find('\n') {
                s.drain(..=nl);
            }
        }
        Ok(s.trim_end().to_owned())
    };
    read().unwrap_or_else(|e| format!("<stderr log unreadable: {e}>"))
}
