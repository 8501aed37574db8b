//! VM backends (SPEC §4, §8): the seam between the shim facade and a VMM.
//!
//! ```text
//!   shim facade (crate::shim)          knows VmSpec, VmBackend, Vm, ExitInfo, agent client
//!        │   VmBackend::start → Arc<dyn Vm>
//!        ▼
//!   ┌──────────── backend trait (this module) ────────────┐
//!   │ start · wait_ready · agent_address · exit_watch      │
//!   │ stop (graceful hook → forced) · leftovers · pid      │
//!   │ hotplug: cpu_slots · add/remove_cpu · add/remove_mem │
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
//! Shared filesystems and disks are attached when the VM starts, listed in
//! [`VmSpec::shares`] (see [`Share`]); vCPUs and memory come and go while it runs through
//! [`Vm`]'s hotplug methods, within the room [`VmSpec`] gave it.
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
//! | [`hotplug`] | vCPU and memory hotplug's types: [`HotplugRoom`], [`CpuSlot`], [`MemoryDevice`], [`HotplugError`] |
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
#[cfg(any(test, feature = "test-util"))]
mod fake_hotplug;
mod harden;
pub mod hotplug;
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

use hotplug::{CpuSlot, CpuState, HotplugError, HotplugRoom, MemoryDevice};
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
/// The guest's memory block size in MiB (x86-64 Linux with less than 64 GiB): memory is
/// hot-added and removed in multiples of it.
pub const MEMORY_BLOCK_MIB: u32 = 128;
/// Most memory hotplug slots (QEMU's ACPI limit for DIMMs).
pub const MAX_MEMORY_SLOTS: u16 = 256;

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
    /// The memory growth room is not a multiple of the guest's memory block.
    #[error(
        "the memory growth room (maximum minus boot memory) must be a multiple of \
         {MEMORY_BLOCK_MIB} MiB, the guest's memory block size, got {room} MiB"
    )]
    MemoryRoom {
        /// The room in MiB.
        room: u32,
    },
    /// An extra kernel argument is empty or holds whitespace or control characters.
    #[error("invalid kernel argument {0:?}: one argument, no whitespace or control characters")]
    KernelArg(String),
    /// The state root is not an absolute path.
    #[error("the state root {} must be an absolute path", .0.display())]
    RelativeStateRoot(PathBuf),
    /// A share's tag or serial is empty, too long, or holds a character outside
    /// `[A-Za-z0-9_.-]`.
    #[error(
        "invalid {what} {value:?}: 1 to {max} characters of `A-Z a-z 0-9 _ . -`",
        max = MAX_SHARE_NAME
    )]
    ShareName {
        /// `9p tag`, `virtiofs tag` or `disk serial`.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// Two shares of the same kind of name (tags, or serials) use the same one.
    #[error("two shares use the {what} {value:?}")]
    DuplicateShare {
        /// `tag` or `serial`.
        what: &'static str,
        /// The repeated value.
        value: String,
    },
    /// A share's host path is not absolute.
    #[error("the {what} {} must be an absolute path", path.display())]
    RelativeSharePath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A virtiofs socket path is longer than `sun_path` allows.
    #[error(
        "the virtiofs socket {} is longer than the {MAX_SOCKET_PATH}-byte unix socket limit",
        .0.display()
    )]
    ShareSocket(PathBuf),
    /// A share's host path holds a NUL byte.
    #[error("the {what} {} contains a NUL byte", path.display())]
    NulInSharePath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
}

/// Longest share tag or disk serial. The virtio-blk serial field is 20 bytes
/// (`VIRTIO_BLK_ID_BYTES`); 9p tags may be longer, but one limit keeps names
/// interchangeable between transports.
pub const MAX_SHARE_NAME: usize = 20;

/// A host directory or image made available to the guest, attached when the VM starts.
///
/// The guest finds it by its tag (9p, virtiofs: `mount -t 9p <tag>`) or its serial (a
/// virtio-blk disk: `/sys/block/vd*/serial`). Tags and serials are 1 to
/// [`MAX_SHARE_NAME`] characters of `[A-Za-z0-9_.-]`, unique among the VM's shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Share {
    /// A host directory exported by the VMM itself over virtio-9p (QEMU's built-in 9p
    /// server): nothing to start, every guest file access is a round trip to QEMU.
    NineP {
        /// The mount tag the guest names.
        tag: String,
        /// The host directory (absolute).
        path: PathBuf,
        /// Export it read-only (writes fail with `EROFS` in the guest).
        read_only: bool,
    },
    /// A virtiofs (vhost-user-fs) device whose daemon (e.g. `virtiofsd`), started by the
    /// caller, listens on `socket`. Needs shared guest memory, which the backend sets up.
    VhostUserFs {
        /// The mount tag the guest names.
        tag: String,
        /// The daemon's vhost-user socket (absolute).
        socket: PathBuf,
    },
    /// A raw image attached as a virtio-blk disk carrying `serial`.
    Disk {
        /// The disk's serial, which the guest reads to find it.
        serial: String,
        /// The raw image (absolute).
        path: PathBuf,
        /// Attach it read-only.
        read_only: bool,
    },
}

impl Share {
    /// The name the guest finds the share by: its tag, or the disk's serial.
    pub fn guest_name(&self) -> &str {
        match self {
            Share::NineP { tag, .. } | Share::VhostUserFs { tag, .. } => tag,
            Share::Disk { serial, .. } => serial,
        }
    }

    /// Checks the tag or serial and the host path.
    pub fn validate(&self) -> Result<(), SpecError> {
        let (what, path_what, path) = match self {
            Share::NineP { path, .. } => ("9p tag", "9p directory", path),
            Share::VhostUserFs { socket, .. } => ("virtiofs tag", "virtiofs socket", socket),
            Share::Disk { path, .. } => ("disk serial", "disk image", path),
        };
        let name = self.guest_name();
        if name.is_empty()
            || name.len() > MAX_SHARE_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(SpecError::ShareName {
                what,
                value: name.to_owned(),
            });
        }
        if path.as_os_str().as_bytes().contains(&0) {
            return Err(SpecError::NulInSharePath {
                what: path_what,
                path: path.clone(),
            });
        }
        if !path.is_absolute() {
            return Err(SpecError::RelativeSharePath {
                what: path_what,
                path: path.clone(),
            });
        }
        if let Share::VhostUserFs { socket, .. } = self {
            if socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(SpecError::ShareSocket(socket.clone()));
            }
        }
        Ok(())
    }

    /// Whether the guest names it by a tag (a filesystem share) rather than a disk serial.
    fn is_tagged(&self) -> bool {
        !matches!(self, Share::Disk { .. })
    }
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
    /// Most vCPUs the VM may grow to by hotplug (`cpus`..=[`MAX_CPUS`]); equal to `cpus`
    /// for no growth room.
    pub max_cpus: u16,
    /// Most memory in MiB the VM may grow to by hotplug (`memory_mib`..=[`MAX_MEMORY_MIB`]);
    /// equal to `memory_mib` for no growth room. The room (`max_memory_mib - memory_mib`)
    /// is a multiple of [`MEMORY_BLOCK_MIB`].
    pub max_memory_mib: u32,
    /// How many memory devices may be hot-added (1..=[`MAX_MEMORY_SLOTS`]; used only when
    /// there is memory growth room).
    pub memory_slots: u16,
    /// Extra kernel arguments, appended to the backend's command line. Each must be one
    /// argument: no whitespace or control characters.
    pub kernel_args: Vec<String>,
    /// Where per-VM state directories go (absolute).
    pub state_root: PathBuf,
    /// Bound on VM start → the agent's readiness notice.
    pub ready_timeout: Duration,
    /// Directories and images attached to the VM at start (none by default).
    pub shares: Vec<Share>,
    /// Network interfaces: each a TAP device the host opened, handed to the VMM by file
    /// descriptor (none by default).
    pub nics: Vec<NetworkDevice>,
}

/// A guest network interface backed by a TAP device the host opened (SPEC §11).
///
/// The VMM inherits the descriptor at its start; the caller keeps its own copy open until
/// the VM has started (the spec holds it), and closes it when the VM is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDevice {
    /// The TAP device's file descriptor.
    pub tap: TapFd,
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
}

/// A shared TAP file descriptor; two are equal when they are the same descriptor.
#[derive(Debug, Clone)]
pub struct TapFd(std::sync::Arc<std::os::fd::OwnedFd>);

impl TapFd {
    /// Takes ownership of `fd`.
    pub fn new(fd: std::os::fd::OwnedFd) -> Self {
        Self(std::sync::Arc::new(fd))
    }

    /// The descriptor's number in this process.
    pub fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&*self.0)
    }
}

impl PartialEq for TapFd {
    fn eq(&self, other: &Self) -> bool {
        self.raw() == other.raw()
    }
}

impl Eq for TapFd {}

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
        range(
            "maximum vCPU count",
            self.max_cpus.into(),
            self.cpus.into(),
            MAX_CPUS.into(),
        )?;
        range(
            "maximum memory (MiB)",
            self.max_memory_mib.into(),
            self.memory_mib.into(),
            MAX_MEMORY_MIB.into(),
        )?;
        if self.max_memory_mib > self.memory_mib {
            let room = self.max_memory_mib - self.memory_mib;
            if !room.is_multiple_of(MEMORY_BLOCK_MIB) {
                return Err(SpecError::MemoryRoom { room });
            }
            range(
                "memory slots",
                self.memory_slots.into(),
                1,
                MAX_MEMORY_SLOTS.into(),
            )?;
        }
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
        let mut seen = std::collections::HashSet::new();
        for share in &self.shares {
            share.validate()?;
            let what = if share.is_tagged() { "tag" } else { "serial" };
            if !seen.insert((what, share.guest_name())) {
                return Err(SpecError::DuplicateShare {
                    what,
                    value: share.guest_name().to_owned(),
                });
            }
        }
        Ok(())
    }
    /// The growth room this spec gives, for a backend that can also take hot-added vCPUs
    /// back (`cpus_removable`) or not.
    pub fn hotplug_room(&self, cpus_removable: bool) -> HotplugRoom {
        HotplugRoom {
            boot_cpus: self.cpus,
            max_cpus: self.max_cpus,
            boot_memory_mib: self.memory_mib,
            max_memory_mib: self.max_memory_mib,
            memory_slots: self.memory_slots,
            cpus_removable,
        }
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

    /// The VM's boot sizes and growth room (from its [`VmSpec`]).
    fn hotplug_room(&self) -> HotplugRoom;

    /// Every vCPU position and what holds it, in (socket, core, thread) order.
    async fn cpu_slots(&self) -> Result<Vec<CpuState>, HotplugError>;

    /// Plugs a vCPU at a free position. The guest still has to online it.
    async fn add_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError>;

    /// Unplugs a hot-added vCPU and waits (bounded) until the guest released it.
    async fn remove_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError>;

    /// The memory devices hot-added so far, oldest first.
    async fn memory_devices(&self) -> Result<Vec<MemoryDevice>, HotplugError>;

    /// Plugs `size_mib` of memory (a multiple of [`MEMORY_BLOCK_MIB`]) as one device, within
    /// the maximum and the slots.
    async fn add_memory(&self, size_mib: u32) -> Result<MemoryDevice, HotplugError>;

    /// Unplugs a hot-added memory device and waits (bounded) until the guest released it;
    /// the guest may refuse (memory it cannot migrate away), and then it stays.
    async fn remove_memory(&self, id: &str) -> Result<(), HotplugError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(shares: Vec<Share>) -> VmSpec {
        VmSpec {
            id: VmId::new("s").unwrap(),
            cpus: 1,
            memory_mib: 256,
            max_cpus: 1,
            max_memory_mib: 256,
            memory_slots: 1,
            kernel_args: Vec::new(),
            state_root: "/run/spinbox".into(),
            ready_timeout: Duration::from_secs(1),
            shares,
            nics: Vec::new(),
        }
    }

    fn nine_p(tag: &str, path: &str) -> Share {
        Share::NineP {
            tag: tag.into(),
            path: path.into(),
            read_only: true,
        }
    }

    fn disk(serial: &str, path: &str) -> Share {
        Share::Disk {
            serial: serial.into(),
            path: path.into(),
            read_only: true,
        }
    }

    #[test]
    fn growth_room_is_validated() {
        let mut s = spec(Vec::new());
        s.max_cpus = 4;
        s.max_memory_mib = 256 + 384;
        s.memory_slots = 2;
        assert_eq!(s.validate(), Ok(()));
        s.max_memory_mib = 256 + 100;
        assert_eq!(s.validate(), Err(SpecError::MemoryRoom { room: 100 }));
        s.max_memory_mib = 128;
        assert!(matches!(
            s.validate(),
            Err(SpecError::OutOfRange {
                what: "maximum memory (MiB)",
                ..
            })
        ));
        s.max_memory_mib = 512;
        s.memory_slots = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::OutOfRange {
                what: "memory slots",
                ..
            })
        ));
        s.memory_slots = 1;
        s.max_cpus = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::OutOfRange {
                what: "maximum vCPU count",
                ..
            })
        ));
        // No memory room: the slot count does not matter.
        s.max_cpus = 1;
        s.max_memory_mib = 256;
        s.memory_slots = 0;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn shares_are_validated() {
        assert_eq!(spec(Vec::new()).validate(), Ok(()));
        let ok = vec![
            nine_p("root.fs-1_A", "/srv/a"),
            disk("root.fs-1_A", "/srv/a.erofs"),
            Share::VhostUserFs {
                tag: "vfs".into(),
                socket: "/run/v.sock".into(),
            },
        ];
        // A tag and a serial may be equal: the guest finds them in different places.
        assert_eq!(spec(ok).validate(), Ok(()));
        for bad in [
            "",
            "a b",
            "a,b",
            "a/b",
            "é",
            &"x".repeat(MAX_SHARE_NAME + 1),
        ] {
            let e = spec(vec![nine_p(bad, "/srv")]).validate().unwrap_err();
            assert!(
                matches!(&e, SpecError::ShareName { what: "9p tag", value } if value == bad),
                "{bad:?}: {e:?}"
            );
            let e = spec(vec![disk(bad, "/i")]).validate().unwrap_err();
            assert!(
                matches!(
                    e,
                    SpecError::ShareName {
                        what: "disk serial",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
        assert_eq!(
            spec(vec![nine_p("a", "/x"), nine_p("a", "/y")]).validate(),
            Err(SpecError::DuplicateShare {
                what: "tag",
                value: "a".into()
            })
        );
        assert_eq!(
            spec(vec![
                nine_p("a", "/x"),
                Share::VhostUserFs {
                    tag: "a".into(),
                    socket: "/s".into()
                }
            ])
            .validate(),
            Err(SpecError::DuplicateShare {
                what: "tag",
                value: "a".into()
            })
        );
        assert_eq!(
            spec(vec![disk("d", "/x"), disk("d", "/y")]).validate(),
            Err(SpecError::DuplicateShare {
                what: "serial",
                value: "d".into()
            })
        );
        assert!(matches!(
            spec(vec![nine_p("a", "rel/dir")]).validate(),
            Err(SpecError::RelativeSharePath {
                what: "9p directory",
                ..
            })
        ));
        assert!(matches!(
            spec(vec![disk("a", "/x\0y")]).validate(),
            Err(SpecError::NulInSharePath { .. })
        ));
        let long = format!("/{}", "s".repeat(MAX_SOCKET_PATH));
        assert!(matches!(
            spec(vec![Share::VhostUserFs {
                tag: "a".into(),
                socket: long.into()
            }])
            .validate(),
            Err(SpecError::ShareSocket(_))
        ));
    }
}
