//! VM backends (SPEC §4, §8): the seam between the shim facade and a VMM.
//!
//! ```text
//!   shim facade (crate::shim)          knows VmSpec, VmBackend, Vm, ExitInfo, agent client
//!        │   VmBackend::start → Arc<dyn Vm>
//!        ▼
//!   ┌──────────── backend trait (this module) ────────────┐
//!   │ start · wait_ready · agent_address · exit_watch      │
//!   │ stop (graceful hook → forced) · leftovers · pid      │
//!   └──────────────────────────────────────────────────────┘
//!        │                                  │
//!        ▼                                  ▼
//!   qemu::QemuBackend                  fake::FakeBackend (test-util)
//!   QEMU + vhost-device-vsock,         in-process, a ttrpc agent on a
//!   QMP, escalation, accelerator       unix socket, scripted faults
//! ```
//!
//! A backend starts a VM from a [`VmSpec`] and hands back a [`Vm`]: the guest agent's
//! [`AgentAddress`], a watch of the VM's exit carrying a typed [`ExitInfo`] (filled in by
//! the backend: exit status, the VMM's shutdown reason, guest panic), a graceful-then-forced
//! [`Vm::stop`] with a typed [`StopOutcome`] or [`StopError`], and the on-disk
//! [`Vm::leftovers`] it created. The agent protocol itself is generic: the facade talks to
//! the agent with [`agent::AgentClient`] over whatever address the backend gives.
//! Devices that come later (shared filesystems, disks, NICs, hotplug) are added as methods
//! of [`Vm`].
//!
//! | file | what is inside |
//! |---|---|
//! | this module | [`VmBackend`], [`Vm`], [`VmSpec`], [`ExitInfo`], [`BootError`], [`StopOutcome`], [`StopError`] |
//! | [`stop`] | the escalation policy and steps, the graceful hook and its error |
//! | [`agent`] | the agent's ttrpc client: timeouts, dial, dial with retry |
//! | [`vsock`] | reaching a guest port: hybrid vsock (`CONNECT`/`OK`), unix |
//! | `process` (internal) | spawning a VMM or helper in its own process group, hardened (`harden`: dies with us, no inherited fds, no capabilities, seccomp); the reaper and exit watch |
//! | `state_dir` (internal) | the private per-VM directory for sockets and logs |
//! | `shared_task` (internal) | work that runs once on its own task, every caller gets the result |
//! | [`kvm`] | `check_kvm()`: `/dev/kvm` and `KVM_GET_API_VERSION` |
//! | [`assets`] | the provisioned QEMU, kernel, initramfs and vsock backend |
//! | [`qemu`] | the QEMU backend: config → argv, instance, QMP, escalation, accelerator probe, vsock daemon |

/// Declares a module that is internal, and public (hidden from the docs) with the
/// `test-util` feature, for the integration tests and tools that drive the parts directly.
macro_rules! internal_mod {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[cfg(feature = "test-util")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "test-util"))]
        #[allow(dead_code, unreachable_pub)]
        pub(crate) mod $name;
    };
}

pub mod agent;
pub mod assets;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
mod harden;
mod id;
pub mod kvm;
internal_mod!(process);
pub mod qemu;
internal_mod!(shared_task);
internal_mod!(state_dir);
pub mod stop;
pub mod vsock;

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use id::{IdError, VmId, MAX_ID_LEN};
pub use state_dir::{state_root_from, StateDirError, SYSTEM_STATE_ROOT};
use stop::{EscalationPolicy, GracefulError, GracefulHook, ShutdownStep, StepReport};
use vsock::AgentAddress;

/// A boxed error of a backend's own type (downcast it to the backend's error enum).
pub type BackendError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Longest unix socket path in bytes (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Fewest vCPUs a VM may have.
pub const MIN_CPUS: u16 = 1;
/// Most vCPUs a VM may have (QEMU's `-smp` limit for the machine types used).
pub const MAX_CPUS: u16 = 255;
/// Least guest memory in MiB: the Debian kernel and the agent's initramfs boot in it.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Most guest memory in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

/// A unix socket path that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocketPathError {
    /// The path is longer than `sun_path` allows.
    #[error(
        "unix socket path {} is {len} bytes, longer than the {MAX_SOCKET_PATH}-byte limit: \
         choose a shorter state root or VM id",
        path.display()
    )]
    TooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// The path holds a NUL byte.
    #[error("unix socket path {} contains a NUL byte", path.display())]
    Nul {
        /// The socket path.
        path: PathBuf,
    },
}

/// Checks a unix socket path's length against `sun_path`.
pub fn check_socket(path: &Path) -> Result<(), SocketPathError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(SocketPathError::Nul {
            path: path.to_owned(),
        });
    }
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(SocketPathError::TooLong {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    Ok(())
}

/// A [`VmSpec`] value out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// vCPUs or memory out of range.
    #[error("{what} must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// Which setting.
        what: &'static str,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
        /// The value given.
        got: u64,
    },
    /// An extra kernel argument is empty or holds whitespace or control characters.
    #[error("invalid kernel argument {0:?}: one argument, no whitespace or control characters")]
    KernelArg(String),
    /// The state root is not an absolute path.
    #[error("the state root {} must be an absolute path", .0.display())]
    RelativeStateRoot(PathBuf),
}

/// What to boot, independent of the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM's ID (names its state directories).
    pub id: VmId,
    /// vCPUs ([`MIN_CPUS`]..=[`MAX_CPUS`]).
    pub cpus: u16,
    /// Memory in MiB ([`MIN_MEMORY_MIB`]..=[`MAX_MEMORY_MIB`]).
    pub memory_mib: u32,
    /// Extra kernel arguments, appended to the backend's command line. Each must be one
    /// argument: no whitespace or control characters.
    pub kernel_args: Vec<String>,
    /// Where per-VM state directories go (absolute).
    pub state_root: PathBuf,
    /// Bound on VM start → the agent's readiness notice.
    pub ready_timeout: Duration,
}

impl VmSpec {
    /// Checks every value; backends call this before they start anything.
    pub fn validate(&self) -> Result<(), SpecError> {
        range(
            "vCPU count",
            self.cpus.into(),
            MIN_CPUS.into(),
            MAX_CPUS.into(),
        )?;
        range(
            "memory (MiB)",
            self.memory_mib.into(),
            MIN_MEMORY_MIB.into(),
            MAX_MEMORY_MIB.into(),
        )?;
        if let Some(bad) = self
            .kernel_args
            .iter()
            .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(SpecError::KernelArg(bad.clone()));
        }
        if !self.state_root.is_absolute() {
            return Err(SpecError::RelativeStateRoot(self.state_root.clone()));
        }
        Ok(())
    }
}

/// Checks `got` against `min..=max`.
pub(crate) fn range(what: &'static str, got: u64, min: u64, max: u64) -> Result<(), SpecError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(SpecError::OutOfRange {
            what,
            min,
            max,
            got,
        })
    }
}

/// How a VM ended, as its backend saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The VMM process's exit status.
    pub status: ExitStatus,
    /// The VMM's reason for the shutdown, if it gave one (QEMU: the `reason` of its last
    /// QMP `SHUTDOWN` event, e.g. `guest-shutdown`, `host-signal`, `host-qmp-quit`).
    pub shutdown_reason: Option<String>,
    /// Whether the guest reported a panic (QEMU: `GUEST_PANICKED`).
    pub guest_panicked: bool,
    /// A helper process the VM cannot work without died first, and the backend ended the
    /// VM because of it (QEMU: `vhost-device-vsock`, the agent's only channel).
    pub helper_died: Option<HelperExit>,
}

/// A backend's helper process that exited while its VM ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperExit {
    /// Which helper.
    pub what: &'static str,
    /// Its exit status.
    pub status: ExitStatus,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        if let Some(reason) = &self.shutdown_reason {
            write!(f, " ({reason})")?;
        }
        if self.guest_panicked {
            f.write_str(", guest panicked")?;
        }
        if let Some(helper) = &self.helper_died {
            write!(f, ", after {} exited ({})", helper.what, helper.status)?;
        }
        Ok(())
    }
}

/// A watch of a VM's exit: `None` while it runs, then its [`ExitInfo`], published once
/// and never changed.
pub type ExitWatch = watch::Receiver<Option<ExitInfo>>;

/// Why a VM did not start or did not become ready. Whatever was started has been undone
/// by the backend when this is returned from [`VmBackend::start`].
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The spec is invalid; nothing was started.
    #[error("invalid VM spec")]
    Spec(#[source] SpecError),
    /// The state root (or its `.vsock` directory) is not safe to use.
    #[error("unsafe state root")]
    Root(#[source] StateDirError),
    /// A file or directory the VM needs could not be made.
    #[error("cannot prepare {}", path.display())]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Another VM with this ID holds its state directory; nothing of it was touched.
    #[error("a VM with id {0} already exists in this state root")]
    AlreadyExists(VmId),
    /// A part of the backend failed to start (the VMM, or a helper daemon).
    #[error("{what} did not start")]
    Start {
        /// Which part.
        what: &'static str,
        /// The backend's own error.
        #[source]
        source: BackendError,
    },
    /// The VM exited before the agent announced readiness.
    #[error("the VM exited ({exit}) before the agent was ready; console:\n{console_tail}")]
    ExitedBeforeReady {
        /// How it exited.
        exit: ExitInfo,
        /// The end of the serial console.
        console_tail: String,
    },
    /// The agent did not announce readiness in time.
    #[error("the agent was not ready within {after:?}; console:\n{console_tail}")]
    ReadyTimeout {
        /// The bound.
        after: Duration,
        /// The end of the serial console.
        console_tail: String,
    },
    /// The readiness connection did not carry a valid notice.
    #[error("malformed readiness notice {0:?}")]
    BadReady(String),
    /// [`Vm::stop`] was called before the agent announced readiness.
    #[error("the VM was stopped before its agent was ready")]
    Stopped,
}

/// A request to stop a VM.
pub struct StopRequest {
    /// The escalation's timeouts.
    pub policy: EscalationPolicy,
    /// The graceful step (the agent's `PrepareShutdown` + `Shutdown`), run first.
    pub graceful: Option<GracefulHook>,
}

impl fmt::Debug for StopRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StopRequest")
            .field("policy", &self.policy)
            .field("graceful", &self.graceful.is_some())
            .finish()
    }
}

/// How a stop ended.
#[derive(Debug, Clone)]
pub struct StopOutcome {
    /// The step during which the VM exited.
    pub ended_by: ShutdownStep,
    /// How the VM exited.
    pub exit: ExitInfo,
    /// From the start of the stop to the VM reaped and its files removed.
    pub elapsed: Duration,
    /// Every escalation step attempted.
    pub steps: Vec<StepReport>,
    /// The graceful step's error, if it ran and failed (the escalation went on).
    pub graceful_error: Option<GracefulError>,
}

/// Why a stop failed. Shared by every caller of [`Vm::stop`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopError {
    /// The VMM survived SIGKILL (a process stuck in the kernel); its files were left.
    #[error("the VMM (pid {pid}) could not be stopped")]
    NotReaped {
        /// Its pid.
        pid: u32,
        /// Every step attempted.
        steps: Vec<StepReport>,
    },
    /// A helper process (e.g. the vsock daemon) could not be stopped.
    #[error("{what} could not be stopped")]
    Helper {
        /// Which helper.
        what: &'static str,
        /// Its error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The VM stopped but a file or directory it created could not be removed.
    #[error("cannot remove {}", path.display())]
    Cleanup {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A VM backend: starts VMs (SPEC §8).
#[async_trait::async_trait]
pub trait VmBackend: Send + Sync + fmt::Debug + 'static {
    /// The backend's name (`qemu`, `fake`), for logs and reports.
    fn name(&self) -> &'static str;

    /// Starts a VM from `spec`: validates it (nothing is started when it is invalid), starts
    /// the VMM and its helpers, and returns once the VMM runs (the guest may still be
    /// booting: see [`Vm::wait_ready`]). On error nothing of the VM is left. Dropping the
    /// future kills whatever it had started.
    async fn start(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>, BootError>;
}

/// One running VM of a backend. Every method takes `&self`; the facade shares it.
#[async_trait::async_trait]
pub trait Vm: Send + Sync + fmt::Debug + 'static {
    /// The VM's ID.
    fn id(&self) -> &VmId;

    /// The VMM's process id, if it is a process.
    fn pid(&self) -> Option<u32>;

    /// Waits until the guest agent announced readiness, and returns the time from the
    /// start to that notice. Fails when the VM exits first or the spec's bound passes.
    /// Cancel-safe while it waits for the guest to connect (cancelling during the short
    /// read of the notice itself loses it); a second call returns the first call's answer.
    async fn wait_ready(&self) -> Result<Duration, BootError>;

    /// Where the guest agent listens.
    fn agent_address(&self) -> AgentAddress;

    /// A watch of the VM's exit; the [`ExitInfo`] is complete when published.
    fn exit_watch(&self) -> ExitWatch;

    /// The serial console's log file, if the backend keeps one.
    fn console_log(&self) -> Option<PathBuf>;

    /// Stops the VM: the graceful hook, then the backend's forced steps, each bounded by
    /// the policy and cut short when the VM exits; then its helpers are stopped and the
    /// files it created removed. Idempotent and concurrency-safe: every caller gets the
    /// first stop's outcome; later requests' policies and hooks are not used. The
    /// escalation runs on its own task (it completes even if the caller is cancelled); the
    /// shim calls `stop` from its teardown task, which is never cancelled.
    async fn stop(&self, request: StopRequest) -> Result<StopOutcome, StopError>;

    /// The files and directories this VM created that still exist (all gone after a
    /// successful stop).
    fn leftovers(&self) -> Vec<PathBuf>;

    /// Ends the VM at once, skipping every graceful step (QEMU: SIGKILL to its process
    /// group); a stop in progress then finds it exited and finishes. For an impatient
    /// operator's second Ctrl-C.
    async fn kill(&self);
}
