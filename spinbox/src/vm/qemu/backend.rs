//! [`QemuBackend`]: the [`VmBackend`] that runs QEMU with a `vhost-device-vsock` backend
//! for the agent's vsock, and [`QemuVm`], one such VM.
//!
//! # Start
//!
//! 1. the spec is validated ([`VmSpec::validate`]) and the assets' files checked;
//! 2. a private directory `<state root>/.vsock/<id>` (0700; `.vsock` is never a valid VM
//!    id, so it cannot collide with a VM's state directory) with the readiness listener
//!    `vm.vsock_1025` bound in it; an existing directory means another VM owns the id,
//!    and it is left untouched;
//! 3. `vhost-device-vsock` started on it (guest CID [`QemuBackendConfig::guest_cid`]);
//! 4. QEMU started ([`QemuInstance::start`]) with the kernel, the agent initramfs and a
//!    `vhost-user-vsock-pci` device;
//! 5. a task that publishes the VM's [`ExitInfo`] once QEMU has been reaped *and* its QMP
//!    connection has ended, so the last `SHUTDOWN` / `GUEST_PANICKED` events are in it.
//!
//! [`Vm::wait_ready`] then waits for the agent's readiness notice on the listener (or
//! QEMU's exit, or the bound): the host never dials a booting guest, which can wedge the
//! backend. Any failure of the start undoes what was done, in reverse.
//!
//! # Stop
//!
//! [`QemuInstance::shutdown_with`] (the escalation of [`super::escalation`], whose first
//! step is the facade's graceful hook), then the daemon is stopped and reaped and the vsock
//! directory removed. The instance's shutdown runs once and is shared, so concurrent stops
//! agree; the daemon stop and the removal are idempotent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spinbox_protocol::{AGENT_PORT, READY_PORT, READY_PREFIX};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::accel::{resolve_accelerator, AccelChoice, Accelerator};
use super::config::{
    AgentChannel, Disk, DiskFormat, FsShare, Machine, MemoryHotplug, OnReset, QemuConfig,
    SandboxMode,
};
use super::hotplug::QemuHotplug;
use super::instance::{QemuInstance, ShutdownError, StartOptions};
use super::qmp::QmpEventKind;
use super::vsock_daemon::VsockDaemon;
use crate::vm::assets::Assets;
use crate::vm::hotplug::{CpuSlot, CpuState, HotplugError, HotplugRoom, MemoryDevice};
use crate::vm::state_dir::{prepare_root, StateDir, StateDirError};
use crate::vm::vsock::AgentAddress;
use crate::vm::{
    BootError, ExitInfo, ExitWatch, HelperExit, Share, StopError, StopOutcome, StopRequest, Vm,
    VmBackend, VmId, VmSpec,
};

/// Longest readiness line accepted.
const MAX_READY_LINE: u64 = 128;

/// How long the exit publisher waits, after QEMU was reaped, for its QMP connection to
/// end (it ends with the process; this only bounds a wedged socket).
const QMP_DRAIN: Duration = Duration::from_millis(500);

/// Most memory devices a VM may hot-add: `vhost-device-vsock` (0.3) maps at most 8 memory
/// regions (it has no `CONFIGURE_MEM_SLOTS`), and the boot memory takes one. QEMU refuses
/// the eighth DIMM with "a used vhost backend has no free memory slots left".
pub const MAX_VHOST_USER_MEMORY_SLOTS: u16 = 7;

/// Boot memory from which q35 puts part of it above 4 GiB (two memory regions instead of
/// one; QEMU's `pc_q35_init`, not measured here).
const Q35_SPLIT_MIB: u32 = 2816;

/// The kernel argument that makes the guest online hot-added memory itself, in the
/// movable zone so it can be offlined and removed again.
pub const MEMORY_ONLINE_ARG: &str = "memhp_default_state=online_movable";

/// Which kernel image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelImage {
    /// The uncompressed ELF `vmlinux` through its PVH entry (fastest under TCG).
    #[default]
    Vmlinux,
    /// The compressed bzImage, as Debian ships it.
    BzImage,
}

/// The guest kernel's command line, beyond the console and the caller's
/// [`VmSpec::kernel_args`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelArgs {
    /// `quiet panic=-1` plus what shortens the boot without changing what the guest can do:
    /// no crypto self-tests at boot (`cryptomgr.notests`), expedited RCU grace periods
    /// (`rcupdate.rcu_expedited=1`), no IO-APIC timer check (`no_timer_check`), and, under
    /// TCG only, `mitigations=off`: an emulated CPU does not speculate the way the
    /// mitigations assume, while patching every return site and flushing on each switch
    /// costs about a fifth of the boot. Under KVM the guest keeps its mitigations.
    #[default]
    Tuned,
    /// `quiet panic=-1` only: the configuration before the tuning, kept as the benchmark's
    /// reference.
    Plain,
}

impl KernelArgs {
    /// The arguments for a guest run by `accelerator`.
    pub fn for_accelerator(self, accelerator: Accelerator) -> Vec<&'static str> {
        let mut args = vec!["console=ttyS0", "quiet", "panic=-1"];
        if self == KernelArgs::Tuned {
            args.extend([
                "cryptomgr.notests",
                "rcupdate.rcu_expedited=1",
                "no_timer_check",
            ]);
            if accelerator == Accelerator::Tcg {
                args.push("mitigations=off");
            }
        }
        args
    }
}

/// The firmware QEMU runs before the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// qboot (`qboot.rom`, shipped with QEMU): a minimal firmware that only boots Linux,
    /// much quicker than `SeaBIOS` to reach the kernel, with the same ACPI tables (QEMU
    /// builds them).
    #[default]
    Qboot,
    /// QEMU's default for the machine (`SeaBIOS` on q35): the reference configuration.
    Default,
}

/// The QEMU backend's own settings.
#[derive(Debug, Clone)]
pub struct QemuBackendConfig {
    /// The provisioned QEMU, kernel, initramfs and `vhost-device-vsock`.
    pub assets: Assets,
    /// Accelerator choice (default: probe).
    pub accel: AccelChoice,
    /// Kernel image (default vmlinux).
    pub kernel: KernelImage,
    /// Machine type (default q35).
    pub machine: Machine,
    /// The kernel command line's base (default: tuned for a short boot).
    pub kernel_args: KernelArgs,
    /// The firmware (default: qboot).
    pub firmware: Firmware,
    /// What a guest reset does (default: QEMU exits, so a rebooting guest ends the VM).
    pub on_reset: OnReset,
    /// QEMU's `-sandbox` (default: on where the binary supports it).
    pub sandbox: SandboxMode,
    /// The guest's vsock CID (default 3).
    pub guest_cid: u32,
    /// Bound on exec → QMP connected (default 10 s).
    pub connect_timeout: Duration,
    /// Bound on the QMP handshake and each QMP command (default 5 s).
    pub qmp_timeout: Duration,
    /// Bound on reading the readiness line once connected (default 10 s).
    pub ready_line_timeout: Duration,
    /// Bound on the guest releasing a vCPU or memory device being removed (default 10 s).
    pub removal_timeout: Duration,
}

impl QemuBackendConfig {
    /// The defaults above, with `assets`.
    pub fn new(assets: Assets) -> Self {
        Self {
            assets,
            accel: AccelChoice::Auto,
            kernel: KernelImage::Vmlinux,
            machine: Machine::Q35,
            kernel_args: KernelArgs::Tuned,
            firmware: Firmware::Qboot,
            on_reset: OnReset::Exit,
            sandbox: SandboxMode::Auto,
            guest_cid: 3,
            connect_timeout: Duration::from_secs(10),
            qmp_timeout: Duration::from_secs(5),
            ready_line_timeout: Duration::from_secs(10),
            removal_timeout: Duration::from_secs(10),
        }
    }
}

/// Errors of the QEMU backend's parts, carried in [`BootError::Start`].
#[derive(Debug, thiserror::Error)]
pub enum QemuStartError {
    /// A provisioned file is missing.
    #[error("{what} {} is missing (re-run scripts/provision)", path.display())]
    MissingAsset {
        /// Which asset.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// The vsock daemon did not start.
    #[error(transparent)]
    Daemon(#[from] super::vsock_daemon::DaemonError),
    /// QEMU did not start.
    #[error(transparent)]
    Qemu(#[from] super::instance::StartError),
}

/// Starts QEMU VMs.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    config: QemuBackendConfig,
}

impl QemuBackend {
    /// A backend with `config`.
    pub fn new(config: QemuBackendConfig) -> Self {
        Self { config }
    }

    /// Its settings.
    pub fn config(&self) -> &QemuBackendConfig {
        &self.config
    }

    /// Starts a VM and returns it as its concrete type (for QEMU-specific tests and tools).
    pub async fn start_qemu(&self, spec: &VmSpec) -> Result<Arc<QemuVm>, BootError> {
        spec.validate().map_err(BootError::Spec)?;
        if spec.max_memory_mib > spec.memory_mib {
            // q35 splits boot memory of 2816 MiB or more below and above 4 GiB: two regions.
            let boot_regions = if spec.memory_mib >= Q35_SPLIT_MIB {
                2
            } else {
                1
            };
            crate::vm::range(
                "memory slots (vhost-device-vsock maps at most 8 memory regions, the boot \
                 memory's included)",
                spec.memory_slots.into(),
                1,
                (MAX_VHOST_USER_MEMORY_SLOTS + 1 - boot_regions).into(),
            )
            .map_err(BootError::Spec)?;
        }
        check_shares(&spec.shares)?;
        let assets = &self.config.assets;
        let kernel = match self.config.kernel {
            KernelImage::Vmlinux => &assets.vmlinux,
            KernelImage::BzImage => &assets.bzimage,
        };
        for (what, path) in [
            ("kernel", kernel),
            ("initramfs", &assets.initramfs),
            ("vhost-device-vsock", &assets.vhost_device_vsock),
        ] {
            if !path.is_file() {
                return Err(start_error(
                    "the VM",
                    QemuStartError::MissingAsset {
                        what,
                        path: path.clone(),
                    },
                ));
            }
        }
        // The VM's state directory first: its lock says whether the id is taken by a live VM
        // (refused, nothing touched) or was left by a dead shim (its files are removed).
        let state_dir = StateDir::create(&spec.state_root, &spec.id).map_err(|e| match e {
            StateDirError::AlreadyExists { .. } => BootError::AlreadyExists(spec.id.clone()),
            e => BootError::Root(e),
        })?;
        let vsock_dir = spec.state_root.join(".vsock").join(spec.id.as_str());
        // Holding the id's lock proves no live VM owns this id: a vsock directory under it
        // is a dead shim's leftover.
        match std::fs::remove_dir_all(&vsock_dir) {
            Ok(()) => {
                tracing::warn!(path = %vsock_dir.display(), "removed a dead shim's vsock directory");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                let _ = state_dir.remove();
                return Err(BootError::Prepare {
                    path: vsock_dir,
                    source,
                });
            }
        }
        if let Err(e) = create_private_dir(&vsock_dir, &spec.id) {
            let _ = state_dir.remove();
            return Err(e);
        }
        match self.start_in(spec, kernel, &vsock_dir, state_dir).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&vsock_dir);
                if let Some(parent) = vsock_dir.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                Err(e)
            }
        }
    }

    async fn start_in(
        &self,
        spec: &VmSpec,
        kernel: &Path,
        vsock_dir: &Path,
        state_dir: StateDir,
    ) -> Result<Arc<QemuVm>, BootError> {
        let c = &self.config;
        let daemon = VsockDaemon::start(
            &c.assets.vhost_device_vsock,
            vsock_dir,
            c.guest_cid,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| {
            let _ = state_dir.remove();
            start_error("vhost-device-vsock", QemuStartError::Daemon(e))
        });
        let daemon = daemon?;
        let ready_path = daemon.host_listener_path(READY_PORT);
        let listener = match UnixListener::bind(&ready_path) {
            Ok(l) => l,
            Err(source) => {
                let _ = daemon.stop(Duration::from_secs(3)).await;
                let _ = state_dir.remove();
                return Err(BootError::Prepare {
                    path: ready_path,
                    source,
                });
            }
        };

        let mut config = QemuConfig::new(spec.id.clone());
        config.binary.clone_from(&c.assets.qemu);
        // Resolved here (the probe is cached) because the command line depends on it.
        let accelerator = resolve_accelerator(&c.assets.qemu, c.accel).await;
        config.accel = AccelChoice::Fixed(accelerator);
        config.sandbox = c.sandbox;
        config.machine = c.machine.clone();
        config.on_reset = c.on_reset;
        config.firmware = match c.firmware {
            // Found by name in QEMU's data directories, like its default firmware.
            Firmware::Qboot => Some(PathBuf::from("qboot.rom")),
            Firmware::Default => None,
        };
        config.cpus = spec.cpus;
        config.memory_mib = spec.memory_mib;
        config.max_cpus = Some(spec.max_cpus);
        let memory_room = spec.max_memory_mib > spec.memory_mib;
        config.memory_hotplug = memory_room.then_some(MemoryHotplug {
            max_mib: spec.max_memory_mib,
            slots: spec.memory_slots,
        });
        config.kernel = Some(kernel.to_owned());
        config.initrd = Some(c.assets.initramfs.clone());
        let base = c.kernel_args.for_accelerator(accelerator);
        let cmdline = base
            .iter()
            .copied()
            .chain(memory_room.then_some(MEMORY_ONLINE_ARG))
            .chain(spec.kernel_args.iter().map(String::as_str));
        config.cmdline = Some(cmdline.collect::<Vec<_>>().join(" "));
        config.agent = Some(AgentChannel::VhostUserVsock {
            backend_socket: daemon.vhost_socket().to_owned(),
        });
        attach_shares(&mut config, &spec.shares);
        config.nics.clone_from(&spec.nics);
        let options = StartOptions {
            state_root: spec.state_root.clone(),
            connect_timeout: c.connect_timeout,
            qmp_timeout: c.qmp_timeout,
        };

        let started = Instant::now();
        let instance = match QemuInstance::start_in_dir(&config, &options, state_dir.clone()).await
        {
            Ok(i) => i,
            Err(e) => {
                let _ = daemon.stop(Duration::from_secs(3)).await;
                return Err(start_error("QEMU", QemuStartError::Qemu(e)));
            }
        };
        let exit = publish_exit(&instance, &daemon);
        let address = AgentAddress::Hybrid {
            socket: daemon.uds().to_owned(),
            port: AGENT_PORT,
        };
        Ok(Arc::new(QemuVm {
            hotplug: QemuHotplug::new(
                // QEMU 7.2 under TCG segfaults on a vCPU `device_add` after any vCPU
                // `device_del` (measured: add, remove, add → SIGSEGV).
                spec.hotplug_room(accelerator != Accelerator::Tcg),
                config.needs_shared_memory(),
                c.removal_timeout,
            ),
            id: spec.id.clone(),
            state_dir,
            instance,
            daemon,
            vsock_dir: vsock_dir.to_owned(),
            address,
            started,
            ready_timeout: spec.ready_timeout,
            ready_line_timeout: c.ready_line_timeout,
            ready: tokio::sync::Mutex::new(Ready::Waiting(listener, ready_path)),
            stopping: watch::Sender::new(false),
            exit,
        }))
    }
}

/// Adds the spec's shares to `config`, each under a QEMU id derived from its position
/// (tags and serials are the guest's names, not QEMU's).
fn attach_shares(config: &mut QemuConfig, shares: &[Share]) {
    for (i, share) in shares.iter().enumerate() {
        match share {
            Share::NineP {
                tag,
                path,
                read_only,
            } => config.fs_shares.push(FsShare::NineP {
                id: format!("share{i}"),
                tag: tag.clone(),
                path: path.clone(),
                read_only: *read_only,
            }),
            Share::VhostUserFs { tag, socket } => config.fs_shares.push(FsShare::VhostUserFs {
                id: format!("share{i}"),
                tag: tag.clone(),
                socket: socket.clone(),
            }),
            Share::Disk {
                serial,
                path,
                read_only,
            } => config.disks.push(Disk {
                id: format!("share{i}"),
                path: path.clone(),
                format: DiskFormat::Raw,
                read_only: *read_only,
                serial: Some(serial.clone()),
            }),
        }
    }
}

/// Checks that every share's host side exists and has the right kind, so a missing
/// directory, image or daemon socket is a clear error before anything is started.
fn check_shares(shares: &[Share]) -> Result<(), BootError> {
    use std::os::unix::fs::FileTypeExt;
    for share in shares {
        let (path, ok, want): (&Path, fn(&std::fs::FileType) -> bool, &str) = match share {
            Share::NineP { path, .. } => (path, std::fs::FileType::is_dir, "a directory"),
            Share::Disk { path, .. } => (path, std::fs::FileType::is_file, "a regular file"),
            Share::VhostUserFs { socket, .. } => {
                (socket, std::fs::FileType::is_socket, "a unix socket")
            }
        };
        match std::fs::metadata(path) {
            Ok(m) if ok(&m.file_type()) => {}
            Ok(_) => {
                return Err(BootError::Prepare {
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the share of {:?} must be {want}", share.guest_name()),
                    ),
                })
            }
            Err(source) => {
                return Err(BootError::Prepare {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(())
}

fn start_error(what: &'static str, e: QemuStartError) -> BootError {
    BootError::Start {
        what,
        source: Box::new(e),
    }
}

/// Creates `dir` (0700) in its parent, which must be a safe root (see
/// [`prepare_root`]). An existing `dir` belongs to another VM (or a dead one's leftovers):
/// refused, and not touched.
fn create_private_dir(dir: &Path, id: &VmId) -> Result<(), BootError> {
    use std::os::unix::fs::DirBuilderExt;
    // Another VM's stop may remove the shared `.vsock` parent between the check and the
    // mkdir (it removes it when empty): then prepare it again.
    for _ in 0..3 {
        if let Some(vsock_root) = dir.parent() {
            if let Some(root) = vsock_root.parent() {
                prepare_root(root).map_err(BootError::Root)?;
            }
            prepare_root(vsock_root).map_err(BootError::Root)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BootError::AlreadyExists(id.clone()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BootError::Prepare {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
    Err(BootError::Prepare {
        path: dir.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Publishes the VM's [`ExitInfo`] once QEMU is reaped and its QMP connection has ended.
/// If the vsock daemon dies first, the agent is unreachable for good: QEMU is killed and
/// the exit says why.
fn publish_exit(instance: &QemuInstance, daemon: &VsockDaemon) -> ExitWatch {
    let (tx, rx) = watch::channel(None);
    let mut events = instance.qmp().events();
    let qmp = instance.qmp().clone();
    // Weak: a dropped VM's process handles must still let the reaper kill QEMU.
    let process = instance.process().downgrade();
    let mut exit = instance.process().exit_watch();
    let mut daemon_exit = daemon.exit_watch();
    tokio::spawn(async move {
        let mut helper_died = None;
        let mut watch_daemon = true;
        let status = loop {
            if let Some(s) = *exit.borrow_and_update() {
                break s;
            }
            let daemon_status = *daemon_exit.borrow_and_update();
            if let (Some(status), true) = (daemon_status, watch_daemon) {
                watch_daemon = false;
                // No full handle left: the VM is being dropped, and both die anyway.
                if let Some(process) = process.upgrade() {
                    tracing::error!(%status, "vhost-device-vsock died; killing its VM");
                    helper_died = Some(HelperExit {
                        what: "vhost-device-vsock",
                        status,
                    });
                    let _ = process.signal(nix::sys::signal::Signal::SIGKILL).await;
                }
                continue;
            }
            tokio::select! {
                changed = exit.changed() => if changed.is_err() {
                    // The process handle is gone without an exit (cannot happen: the reaper
                    // publishes before it ends); nothing to publish.
                    return;
                },
                changed = daemon_exit.changed(), if watch_daemon => {
                    // Its reaper publishes before it ends; after that only QEMU is left.
                    watch_daemon = changed.is_ok();
                }
            }
        };
        // QMP's last events precede its end of stream; wait for it, boundedly.
        let _ = tokio::time::timeout(QMP_DRAIN, qmp.ended()).await;
        let mut info = ExitInfo {
            status,
            shutdown_reason: None,
            guest_panicked: false,
            helper_died,
        };
        loop {
            match events.try_recv() {
                Ok(event) => match event.kind {
                    QmpEventKind::Shutdown { reason, .. } => info.shutdown_reason = Some(reason),
                    QmpEventKind::GuestPanicked { .. } => info.guest_panicked = true,
                    _ => {}
                },
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        tx.send_replace(Some(info));
    });
    rx
}

enum Ready {
    Waiting(UnixListener, PathBuf),
    Done(Result<Duration, ReadyFailure>),
}

/// A cloneable record of a failed readiness wait (the first caller gets the full error).
#[derive(Debug, Clone)]
enum ReadyFailure {
    Exited(ExitInfo, String),
    Timeout(Duration, String),
    BadReady(String),
    Accept(PathBuf, std::io::ErrorKind, String),
    Stopped,
}

impl ReadyFailure {
    fn to_error(&self) -> BootError {
        match self.clone() {
            ReadyFailure::Exited(exit, console_tail) => {
                BootError::ExitedBeforeReady { exit, console_tail }
            }
            ReadyFailure::Timeout(after, console_tail) => BootError::ReadyTimeout {
                after,
                console_tail,
            },
            ReadyFailure::BadReady(line) => BootError::BadReady(line),
            ReadyFailure::Stopped => BootError::Stopped,
            ReadyFailure::Accept(path, kind, msg) => BootError::Prepare {
                path,
                source: std::io::Error::new(kind, msg),
            },
        }
    }
}

/// A running QEMU VM with its vsock daemon.
pub struct QemuVm {
    id: VmId,
    /// Holds the id's lock until every file of the VM is gone.
    state_dir: StateDir,
    instance: QemuInstance,
    daemon: VsockDaemon,
    vsock_dir: PathBuf,
    address: AgentAddress,
    started: Instant,
    ready_timeout: Duration,
    ready_line_timeout: Duration,
    ready: tokio::sync::Mutex<Ready>,
    /// Set by `stop`: a readiness wait in progress ends (and closes its listener) at once.
    stopping: watch::Sender<bool>,
    exit: ExitWatch,
    hotplug: QemuHotplug,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm")
            .field("id", &self.id)
            .field("pid", &self.instance.pid())
            .field("daemon_pid", &self.daemon.pid())
            .finish_non_exhaustive()
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Dropped without a stop: the last process handles go with it, so the reapers kill
        // QEMU and the daemon (the exit publisher holds only a weak handle); the directory
        // must not outlive them.
        let _ = std::fs::remove_dir_all(&self.vsock_dir);
    }
}

impl QemuVm {
    /// The QEMU instance (QMP, process, logs).
    pub fn instance(&self) -> &QemuInstance {
        &self.instance
    }

    /// The vsock daemon's pid.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The private vsock directory (daemon sockets and log).
    pub fn vsock_dir(&self) -> &Path {
        &self.vsock_dir
    }

    /// The hybrid vsock socket (for other guest ports than the agent's).
    pub fn vsock_uds(&self) -> &Path {
        self.daemon.uds()
    }

    /// Device changes are refused once a stop began or the VM exited.
    fn check_running(&self) -> Result<(), HotplugError> {
        if *self.stopping.borrow() || self.exit.borrow().is_some() {
            Err(HotplugError::Stopping)
        } else {
            Ok(())
        }
    }

    async fn wait_ready_inner(
        &self,
        listener: &UnixListener,
        path: &Path,
    ) -> Result<Duration, ReadyFailure> {
        let elapsed = self.started.elapsed();
        let remaining = self.ready_timeout.saturating_sub(elapsed);
        let console = || console_tail(&self.instance.serial_log());
        let mut exit = self.exit.clone();
        let accepted = tokio::select! {
            r = tokio::time::timeout(remaining, listener.accept()) => r,
            info = exit.wait_for(Option::is_some) => {
                let info = info.ok().and_then(|i| i.clone()).expect("published");
                return Err(ReadyFailure::Exited(info, console()));
            }
        };
        let mut stream = match accepted {
            Ok(Ok((s, _))) => s,
            Ok(Err(e)) => {
                return Err(ReadyFailure::Accept(
                    path.to_owned(),
                    e.kind(),
                    e.to_string(),
                ))
            }
            Err(_) => return Err(ReadyFailure::Timeout(self.ready_timeout, console())),
        };
        let mut line = String::new();
        let read = tokio::time::timeout(
            self.ready_line_timeout,
            (&mut stream).take(MAX_READY_LINE).read_to_string(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) || !line.starts_with(READY_PREFIX) {
            return Err(ReadyFailure::BadReady(line));
        }
        let ready = self.started.elapsed();
        tracing::info!(id = %self.id, ?ready, agent = line.trim_end(), "agent ready");
        Ok(ready)
    }
}

#[async_trait::async_trait]
impl VmBackend for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn start(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>, BootError> {
        Ok(self.start_qemu(spec).await?)
    }
}

#[async_trait::async_trait]
impl Vm for QemuVm {
    fn id(&self) -> &VmId {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        Some(self.instance.pid())
    }

    async fn wait_ready(&self) -> Result<Duration, BootError> {
        let mut ready = self.ready.lock().await;
        let result = match &*ready {
            Ready::Done(r) => return r.clone().map_err(|f| f.to_error()),
            Ready::Waiting(listener, path) => {
                let mut stopping = self.stopping.subscribe();
                tokio::select! {
                    r = self.wait_ready_inner(listener, path) => r,
                    _ = stopping.wait_for(|s| *s) => Err(ReadyFailure::Stopped),
                }
            }
        };
        // Answered (not cancelled): the listener is no longer needed.
        if let Ready::Waiting(_, path) = &*ready {
            let _ = std::fs::remove_file(path);
        }
        *ready = Ready::Done(result.clone());
        result.map_err(|f| f.to_error())
    }

    fn agent_address(&self) -> AgentAddress {
        self.address.clone()
    }

    fn exit_watch(&self) -> ExitWatch {
        self.exit.clone()
    }

    fn console_log(&self) -> Option<PathBuf> {
        Some(self.instance.serial_log())
    }

    async fn stop(&self, request: StopRequest) -> Result<StopOutcome, StopError> {
        let start = Instant::now();
        // A readiness wait nobody finished: close its listener now, not when the VM is
        // dropped (a later `wait_ready` says the VM was stopped). A wait in progress ends at
        // once on `stopping` and releases the lock (a `try_lock` here would lose that race
        // and leave the listener open for as long as the VM handle lives).
        self.stopping.send_replace(true);
        {
            let mut ready = self.ready.lock().await;
            if let Ready::Waiting(_, path) = &*ready {
                let _ = std::fs::remove_file(path);
                *ready = Ready::Done(Err(ReadyFailure::Stopped));
            }
        }
        let qemu = self
            .instance
            .shutdown_with(&request.policy, request.graceful)
            .await;
        let daemon = self.daemon.stop(Duration::from_secs(3)).await;
        let removed = match std::fs::remove_dir_all(&self.vsock_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        // The shared `.vsock` parent goes with the last VM using it (not empty: kept).
        if let Some(parent) = self.vsock_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        let qemu = qemu.map_err(|e| match e {
            ShutdownError::NotReaped(n) => StopError::NotReaped {
                pid: n.pid,
                steps: n.steps,
            },
            ShutdownError::Cleanup { source, .. } => StopError::Cleanup {
                path: self.instance.state_dir().to_owned(),
                source,
            },
        })?;
        daemon.map_err(|e| StopError::Helper {
            what: "vhost-device-vsock",
            source: Arc::new(e),
        })?;
        removed.map_err(|e| StopError::Cleanup {
            path: self.vsock_dir.clone(),
            source: Arc::new(e),
        })?;
        // Every file of the VM is gone: the id is free.
        self.state_dir.release();
        // Published once QMP has ended, which the shutdown's close of QMP makes immediate.
        let mut exit = self.exit.clone();
        let exit = match tokio::time::timeout(QMP_DRAIN * 2, exit.wait_for(Option::is_some)).await {
            Ok(Ok(info)) => info.clone().expect("published"),
            _ => ExitInfo {
                status: qemu.exit_status,
                shutdown_reason: None,
                guest_panicked: false,
                helper_died: None,
            },
        };
        tracing::info!(id = %self.id, ended_by = ?qemu.ended_by, "VM and vsock daemon stopped");
        Ok(StopOutcome {
            ended_by: qemu.ended_by,
            exit,
            elapsed: start.elapsed(),
            steps: qemu.steps,
            graceful_error: qemu.graceful_error,
        })
    }

    async fn kill(&self) {
        let _ = self
            .instance
            .process()
            .signal(nix::sys::signal::Signal::SIGKILL)
            .await;
    }

    fn hotplug_room(&self) -> HotplugRoom {
        self.hotplug.room()
    }

    async fn cpu_slots(&self) -> Result<Vec<CpuState>, HotplugError> {
        self.hotplug.cpu_slots(self.instance.qmp()).await
    }

    async fn add_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.add_cpu(self.instance.qmp(), slot).await
    }

    async fn remove_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.remove_cpu(self.instance.qmp(), slot).await
    }

    async fn memory_devices(&self) -> Result<Vec<MemoryDevice>, HotplugError> {
        self.hotplug.memory_devices(self.instance.qmp()).await
    }

    async fn add_memory(&self, size_mib: u32) -> Result<MemoryDevice, HotplugError> {
        self.check_running()?;
        self.hotplug.add_memory(self.instance.qmp(), size_mib).await
    }

    async fn remove_memory(&self, id: &str) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.remove_memory(self.instance.qmp(), id).await
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        // Once the lock is released the paths may belong to another VM.
        if !self.state_dir.is_locked() {
            return Vec::new();
        }
        [self.instance.state_dir().to_owned(), self.vsock_dir.clone()]
            .into_iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .collect()
    }
}

/// The last lines of the serial console.
pub(crate) fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_args_keep_mitigations_under_kvm_and_plain_is_the_old_line() {
        let tcg = KernelArgs::Tuned.for_accelerator(Accelerator::Tcg);
        let kvm = KernelArgs::Tuned.for_accelerator(Accelerator::Kvm);
        assert!(tcg.contains(&"mitigations=off"));
        assert!(!kvm.iter().any(|a| a.starts_with("mitigations")));
        assert_eq!(tcg.len(), kvm.len() + 1);
        for accel in [Accelerator::Tcg, Accelerator::Kvm] {
            assert_eq!(
                KernelArgs::Plain.for_accelerator(accel).join(" "),
                "console=ttyS0 quiet panic=-1"
            );
            assert!(KernelArgs::Tuned.for_accelerator(accel).starts_with(&[
                "console=ttyS0",
                "quiet",
                "panic=-1"
            ]));
        }
    }
}
