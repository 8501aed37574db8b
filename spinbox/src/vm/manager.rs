//! The VM manager (SPEC §4.5): one real VM — QEMU, its `vhost-device-vsock` backend and
//! the guest agent — with a cached agent client, fresh dials, exit notification and one
//! idempotent shutdown.
//!
//! # Boot
//!
//! 1. a private directory `<state root>/.vsock/<id>` (0700; `.vsock` is never a valid VM
//!    id, so it cannot collide with a VM's state directory) with the readiness listener
//!    `vm.vsock_1025` bound in it;
//! 2. `vhost-device-vsock` started on it (guest CID [`VmSpec::guest_cid`]);
//! 3. QEMU started ([`QemuInstance::start`]) with the kernel, the agent initramfs and a
//!    `vhost-user-vsock-pci` device;
//! 4. the agent's readiness notice awaited on the listener (or QEMU's exit, or the
//!    bound) — the host never dials a booting guest, which can wedge the backend;
//! 5. the agent dialled with retry and pinged; that client is cached.
//!
//! Any failure undoes what was done, in reverse.
//!
//! # Shutdown
//!
//! The escalation of [`super::escalation`] with a [`GracefulHook`] that calls the agent's
//! `PrepareShutdown` then `Shutdown` and closes the connection (which tells the agent
//! its reply arrived); then the backend is stopped and reaped and its directory removed.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use spinbox_protocol::{AGENT_PORT, READY_PORT, READY_PREFIX};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;

use super::agent::{dial, dial_with_retry, AgentClient, DialError, RetryPolicy};
use super::assets::{Assets, AssetsError};
use super::config::{AgentChannel, QemuConfig, VmId};
use super::escalation::{EscalationPolicy, GracefulHook};
use super::host_probe::AccelChoice;
use super::instance::{QemuInstance, ShutdownError, ShutdownOutcome, StartError, StartOptions};
use super::shared_task::SharedTask;
use super::vsock::AgentAddress;
use super::vsock_daemon::{DaemonError, VsockDaemon};

/// Longest readiness line accepted.
const MAX_READY_LINE: u64 = 128;

/// Which kernel image to boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelImage {
    /// The uncompressed ELF `vmlinux` through its PVH entry (fastest under TCG).
    #[default]
    Vmlinux,
    /// The compressed bzImage, as Debian ships it.
    BzImage,
}

/// What to boot and how long to wait for it.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM's ID (names its state directories).
    pub id: VmId,
    /// The assets; `None` locates them ([`Assets::locate`]).
    pub assets: Option<Assets>,
    /// vCPUs (default 1).
    pub cpus: u16,
    /// Memory in MiB (default 256).
    pub memory_mib: u32,
    /// Accelerator choice (default: probe).
    pub accel: AccelChoice,
    /// Kernel image (default vmlinux).
    pub kernel: KernelImage,
    /// The guest's vsock CID (default 3).
    pub guest_cid: u32,
    /// QEMU start options (state root, QMP timeouts).
    pub start: StartOptions,
    /// Bound on QEMU start → agent readiness notice (default 60 s: a hang guard; under
    /// TCG a boot takes about 2 s).
    pub ready_timeout: Duration,
    /// Bound on each agent RPC (default 10 s).
    pub rpc_timeout: Duration,
    /// Backoff of the dials made by the manager (default [`RetryPolicy::default`]).
    pub retry: RetryPolicy,
    /// Shutdown escalation timeouts.
    pub escalation: EscalationPolicy,
    /// Extra kernel arguments, appended to the command line (e.g. `spinbox.agent=mute`
    /// for fault tests). Each must be one argument: no whitespace or control characters.
    pub kernel_args: Vec<String>,
}

impl VmSpec {
    /// A spec with the defaults above.
    pub fn new(id: VmId) -> Self {
        Self {
            id,
            assets: None,
            cpus: 1,
            memory_mib: 256,
            accel: AccelChoice::Auto,
            kernel: KernelImage::Vmlinux,
            guest_cid: 3,
            start: StartOptions::default(),
            ready_timeout: Duration::from_mins(1),
            rpc_timeout: super::agent::DEFAULT_RPC_TIMEOUT,
            retry: RetryPolicy::default(),
            escalation: EscalationPolicy::default(),
            kernel_args: Vec::new(),
        }
    }
}

/// How long the boot took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimings {
    /// QEMU start → readiness notice.
    pub ready: Duration,
    /// Readiness notice → first `Ping` answered.
    pub ready_to_first_ping: Duration,
    /// QEMU start → first `Ping` answered.
    pub first_ping: Duration,
}

/// Errors of the manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The manager already has a VM (one VM per manager).
    #[error("VM {id} already exists in this manager")]
    AlreadyExists {
        /// The existing (or being created) VM's ID.
        id: String,
    },
    /// The manager has no VM.
    #[error("no VM has been created")]
    NoVm,
    /// The assets could not be located.
    #[error("VM assets unavailable")]
    Assets(#[source] AssetsError),
    /// The private vsock directory or the readiness listener could not be made.
    #[error("cannot prepare {}", path.display())]
    Prepare {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The vsock backend did not start.
    #[error("vsock backend failed")]
    Daemon(#[source] DaemonError),
    /// QEMU did not start.
    #[error("QEMU did not start")]
    Start(#[source] StartError),
    /// QEMU exited before the agent announced readiness.
    #[error("QEMU exited with {status} before the agent was ready; console:\n{console_tail}")]
    ExitedBeforeReady {
        /// QEMU's exit status.
        status: ExitStatus,
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
    /// The readiness connection did not carry `READY …`.
    #[error("malformed readiness notice {0:?}")]
    BadReady(String),
    /// Dialling the agent failed.
    #[error("cannot dial the agent")]
    Dial(#[source] DialError),
    /// An extra kernel argument is empty or holds whitespace or control characters.
    #[error("invalid kernel argument {0:?}: one argument, no whitespace or control characters")]
    BadKernelArg(String),
}

/// Errors of [`VmManager::shutdown`]; shared by every concurrent caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VmShutdownError {
    /// QEMU could not be stopped or cleaned up.
    #[error("QEMU shutdown failed")]
    Qemu(#[source] ShutdownError),
    /// The vsock backend could not be stopped.
    #[error("vsock backend shutdown failed")]
    Daemon(#[source] Arc<DaemonError>),
    /// The vsock directory could not be removed.
    #[error("cannot remove {}", path.display())]
    Cleanup {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// How a VM shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmShutdown {
    /// QEMU's escalation, exit status and timing.
    pub qemu: ShutdownOutcome,
    /// The backend's exit status.
    pub daemon_status: ExitStatus,
    /// Whether the graceful hook (`PrepareShutdown` + `Shutdown`) succeeded.
    pub graceful_error: Option<String>,
}

/// The shared result of the (single) shutdown.
pub type VmShutdownResult = Result<VmShutdown, VmShutdownError>;

struct Vm {
    id: VmId,
    instance: QemuInstance,
    daemon: VsockDaemon,
    vsock_dir: PathBuf,
    address: AgentAddress,
    rpc_timeout: Duration,
    retry: RetryPolicy,
    escalation: EscalationPolicy,
    cached: tokio::sync::Mutex<Option<AgentClient>>,
    timings: BootTimings,
    shutdown: SharedTask<VmShutdownResult>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Dropped without shutdown: the process handles kill QEMU and the backend; the
        // directory must not outlive them.
        let _ = std::fs::remove_dir_all(&self.vsock_dir);
    }
}

enum Slot {
    Empty,
    Creating(VmId),
    Ready(Arc<Vm>),
}

/// Manages one VM. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct VmManager {
    slot: Mutex<Slot>,
}

impl Default for VmManager {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for VmManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let state = match &*slot {
            Slot::Empty => "empty".to_owned(),
            Slot::Creating(id) => format!("creating {id}"),
            Slot::Ready(vm) => format!("vm {}", vm.id),
        };
        f.debug_struct("VmManager").field("vm", &state).finish()
    }
}

/// Puts the manager back to empty unless disarmed (a failed or cancelled `create`).
struct ResetOnDrop<'a>(&'a VmManager, bool);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        if self.1 {
            *self.0.lock() = Slot::Empty;
        }
    }
}

impl VmManager {
    /// A manager with no VM.
    pub fn new() -> Self {
        Self {
            slot: Mutex::new(Slot::Empty),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn vm(&self) -> Result<Arc<Vm>, ManagerError> {
        match &*self.lock() {
            Slot::Ready(vm) => Ok(Arc::clone(vm)),
            Slot::Empty | Slot::Creating(_) => Err(ManagerError::NoVm),
        }
    }

    /// Boots the VM (see the module docs) and returns once its agent answered a `Ping`.
    /// A manager holds one VM for its whole life: a second `create` — concurrent, or
    /// after a successful one, even once it is shut down — is
    /// [`ManagerError::AlreadyExists`]. A failed `create` leaves nothing behind and the
    /// manager empty.
    pub async fn create(&self, spec: VmSpec) -> Result<BootTimings, ManagerError> {
        {
            let mut slot = self.lock();
            match &*slot {
                Slot::Empty => *slot = Slot::Creating(spec.id.clone()),
                Slot::Creating(id) => {
                    return Err(ManagerError::AlreadyExists { id: id.to_string() })
                }
                Slot::Ready(vm) => {
                    return Err(ManagerError::AlreadyExists {
                        id: vm.id.to_string(),
                    })
                }
            }
        }
        // If this future is dropped mid-way, the slot must not stay `Creating`.
        let mut reset = ResetOnDrop(self, true);
        let vm = boot(spec).await?;
        let timings = vm.timings;
        *self.lock() = Slot::Ready(Arc::new(vm));
        reset.1 = false;
        Ok(timings)
    }

    /// The QEMU instance (QMP, pid, logs), if a VM was created.
    pub fn instance(&self) -> Option<QemuInstance> {
        self.vm().ok().map(|vm| vm.instance.clone())
    }

    /// The boot timings, if a VM was created.
    pub fn boot_timings(&self) -> Option<BootTimings> {
        self.vm().ok().map(|vm| vm.timings)
    }

    /// The agent's address (hybrid vsock through the backend).
    pub fn agent_address(&self) -> Option<AgentAddress> {
        self.vm().ok().map(|vm| vm.address.clone())
    }

    /// The backend daemon's pid.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.vm().ok().map(|vm| vm.daemon.pid())
    }

    /// The private vsock directory (backend sockets and log).
    pub fn vsock_dir(&self) -> Option<PathBuf> {
        self.vm().ok().map(|vm| vm.vsock_dir.clone())
    }

    /// The cached agent client (dialled with retry if there is none).
    pub async fn client(&self) -> Result<AgentClient, ManagerError> {
        let vm = self.vm()?;
        let mut cached = vm.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            return Ok(c.clone());
        }
        let c = dial_with_retry(&vm.address, vm.rpc_timeout, vm.retry)
            .await
            .map_err(ManagerError::Dial)?;
        *cached = Some(c.clone());
        Ok(c)
    }

    /// A fresh connection to the agent (one attempt, verified by a `Ping`).
    pub async fn dial(&self) -> Result<AgentClient, ManagerError> {
        let vm = self.vm()?;
        dial(&vm.address, vm.rpc_timeout)
            .await
            .map_err(ManagerError::Dial)
    }

    /// A fresh connection, retried on transient failures per `policy`.
    pub async fn dial_with_retry(&self, policy: RetryPolicy) -> Result<AgentClient, ManagerError> {
        let vm = self.vm()?;
        dial_with_retry(&vm.address, vm.rpc_timeout, policy)
            .await
            .map_err(ManagerError::Dial)
    }

    /// A fresh connection to another guest port (verified by a `Ping`), retried per
    /// `policy` — for services other than the agent, and for probing.
    pub async fn dial_port(
        &self,
        port: u32,
        policy: RetryPolicy,
    ) -> Result<AgentClient, ManagerError> {
        let vm = self.vm()?;
        let address = AgentAddress::Hybrid {
            socket: vm.daemon.uds().to_owned(),
            port,
        };
        dial_with_retry(&address, vm.rpc_timeout, policy)
            .await
            .map_err(ManagerError::Dial)
    }

    /// Calls `callback` once QEMU has exited, for any reason (at once if it has).
    pub fn on_exit<F>(&self, callback: F) -> Result<(), ManagerError>
    where
        F: FnOnce(ExitStatus) + Send + 'static,
    {
        self.vm()?.instance.on_exit(callback);
        Ok(())
    }

    /// Waits for QEMU to exit, for any reason, and be reaped.
    pub async fn wait_exit(&self) -> Result<ExitStatus, ManagerError> {
        let vm = self.vm()?;
        Ok(vm.instance.wait_exit().await)
    }

    /// Shuts the VM down: agent `PrepareShutdown` + `Shutdown` as the escalation's
    /// graceful step, then the rest of the escalation as needed; then the backend is
    /// stopped and reaped and the vsock directory removed.
    ///
    /// Idempotent and concurrency-safe: the first call runs it on its own task (it
    /// completes even if the caller is cancelled); every call gets the same result.
    pub async fn shutdown(&self) -> Result<VmShutdownResult, ManagerError> {
        let vm = self.vm()?;
        let task = Arc::clone(&vm);
        let pid = vm.instance.pid();
        Ok(vm
            .shutdown
            .run(
                move || async move { run_shutdown(&task).await },
                // The task died without publishing (a panic): report it as QEMU not reaped.
                || {
                    Err(VmShutdownError::Qemu(ShutdownError::NotReaped(
                        super::escalation::NotReaped {
                            pid,
                            steps: Vec::new(),
                        },
                    )))
                },
            )
            .await)
    }
}

async fn run_shutdown(vm: &Vm) -> VmShutdownResult {
    let cached = vm.cached.lock().await.take();
    let address = vm.address.clone();
    let timeout = vm.rpc_timeout;
    let (err_tx, err_rx) = std::sync::mpsc::channel::<String>();
    let hook: GracefulHook = Box::new(move || {
        Box::pin(async move {
            let r: Result<(), String> = async {
                let client = match cached {
                    Some(c) => c,
                    None => dial(&address, timeout).await.map_err(|e| e.to_string())?,
                };
                client.prepare_shutdown().await.map_err(|e| e.to_string())?;
                client.shutdown().await.map_err(|e| e.to_string())?;
                // Closing the connection is what tells the agent its reply arrived.
                drop(client);
                Ok(())
            }
            .await;
            if let Err(e) = &r {
                let _ = err_tx.send(e.clone());
            }
            r
        })
    });
    let qemu = vm.instance.shutdown_with(&vm.escalation, Some(hook)).await;
    let daemon = vm.daemon.stop(Duration::from_secs(3)).await;
    let removed = std::fs::remove_dir_all(&vm.vsock_dir);
    let qemu = qemu.map_err(VmShutdownError::Qemu)?;
    let daemon_status = daemon.map_err(|e| VmShutdownError::Daemon(Arc::new(e)))?;
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(VmShutdownError::Cleanup {
                path: vm.vsock_dir.clone(),
                source: Arc::new(e),
            })
        }
    }
    tracing::info!(id = %vm.id, ended_by = ?qemu.ended_by, "VM and vsock backend stopped");
    Ok(VmShutdown {
        qemu,
        daemon_status,
        graceful_error: err_rx.try_recv().ok(),
    })
}

/// Boots a VM; on failure, undoes every step done.
async fn boot(spec: VmSpec) -> Result<Vm, ManagerError> {
    if let Some(bad) = spec
        .kernel_args
        .iter()
        .find(|a| a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ManagerError::BadKernelArg(bad.clone()));
    }
    let assets = match spec.assets.clone() {
        Some(a) => a,
        None => Assets::locate().map_err(ManagerError::Assets)?,
    };
    let vsock_dir = spec.start.state_root.join(".vsock").join(spec.id.as_str());
    create_private_dir(&vsock_dir)?;
    let result = boot_in(&spec, &assets, &vsock_dir).await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&vsock_dir);
    }
    result
}

fn create_private_dir(dir: &Path) -> Result<(), ManagerError> {
    use std::os::unix::fs::DirBuilderExt;
    let prep = |source| ManagerError::Prepare {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(prep)?;
    }
    // Not recursive: an existing directory means another VM (or a crash's leftover).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(prep)
}

async fn boot_in(spec: &VmSpec, assets: &Assets, vsock_dir: &Path) -> Result<Vm, ManagerError> {
    let daemon = VsockDaemon::start(
        &assets.vhost_device_vsock,
        vsock_dir,
        spec.guest_cid,
        Duration::from_secs(10),
    )
    .await
    .map_err(ManagerError::Daemon)?;
    let ready_path = daemon.host_listener_path(READY_PORT);
    let listener = match UnixListener::bind(&ready_path) {
        Ok(l) => l,
        Err(source) => {
            let _ = daemon.stop(Duration::from_secs(3)).await;
            return Err(ManagerError::Prepare {
                path: ready_path,
                source,
            });
        }
    };

    let mut config = QemuConfig::new(spec.id.clone());
    config.binary.clone_from(&assets.qemu);
    config.accel = spec.accel;
    config.cpus = spec.cpus;
    config.memory_mib = spec.memory_mib;
    config.kernel = Some(match spec.kernel {
        KernelImage::Vmlinux => assets.vmlinux.clone(),
        KernelImage::BzImage => assets.bzimage.clone(),
    });
    config.initrd = Some(assets.initramfs.clone());
    let mut cmdline = "console=ttyS0 quiet panic=-1".to_owned();
    for arg in &spec.kernel_args {
        cmdline.push(' ');
        cmdline.push_str(arg);
    }
    config.cmdline = Some(cmdline);
    config.agent = Some(AgentChannel::VhostUserVsock {
        backend_socket: daemon.vhost_socket().to_owned(),
    });

    let started = Instant::now();
    let instance = match QemuInstance::start(&config, &spec.start).await {
        Ok(i) => i,
        Err(e) => {
            let _ = daemon.stop(Duration::from_secs(3)).await;
            return Err(ManagerError::Start(e));
        }
    };
    let address = AgentAddress::Hybrid {
        socket: daemon.uds().to_owned(),
        port: AGENT_PORT,
    };
    let vm = Vm {
        id: spec.id.clone(),
        instance,
        daemon,
        vsock_dir: vsock_dir.to_owned(),
        address,
        rpc_timeout: spec.rpc_timeout,
        retry: spec.retry,
        escalation: spec.escalation,
        cached: tokio::sync::Mutex::new(None),
        timings: BootTimings {
            ready: Duration::ZERO,
            ready_to_first_ping: Duration::ZERO,
            first_ping: Duration::ZERO,
        },
        shutdown: SharedTask::default(),
    };
    match finish_boot(vm, listener, &ready_path, spec.ready_timeout, started).await {
        Ok(vm) => Ok(vm),
        Err((vm, e)) => {
            let _ = vm.instance.shutdown(&vm.escalation).await;
            let _ = vm.daemon.stop(Duration::from_secs(3)).await;
            Err(e)
        }
    }
}

/// Waits for readiness, dials and pings; on error hands the VM back for teardown.
async fn finish_boot(
    mut vm: Vm,
    listener: UnixListener,
    ready_path: &Path,
    ready_timeout: Duration,
    started: Instant,
) -> Result<Vm, (Vm, ManagerError)> {
    let accepted = tokio::select! {
        r = tokio::time::timeout(ready_timeout, listener.accept()) => r,
        status = vm.instance.wait_exit() => {
            let console_tail = console_tail(&vm.instance.serial_log());
            return Err((vm, ManagerError::ExitedBeforeReady { status, console_tail }));
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(ready_path);
    let mut stream = match accepted {
        Ok(Ok((s, _))) => s,
        Ok(Err(source)) => {
            return Err((
                vm,
                ManagerError::Prepare {
                    path: ready_path.to_owned(),
                    source,
                },
            ))
        }
        Err(_) => {
            let console_tail = console_tail(&vm.instance.serial_log());
            return Err((
                vm,
                ManagerError::ReadyTimeout {
                    after: ready_timeout,
                    console_tail,
                },
            ));
        }
    };
    let mut line = String::new();
    let read = tokio::time::timeout(
        vm.rpc_timeout,
        (&mut stream).take(MAX_READY_LINE).read_to_string(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(_))) || !line.starts_with(READY_PREFIX) {
        return Err((vm, ManagerError::BadReady(line)));
    }
    let ready = started.elapsed();
    tracing::info!(id = %vm.id, ?ready, agent = line.trim_end(), "agent ready");
    let client = match dial_with_retry(&vm.address, vm.rpc_timeout, vm.retry).await {
        Ok(c) => c,
        Err(e) => return Err((vm, ManagerError::Dial(e))),
    };
    let first_ping = started.elapsed();
    vm.timings = BootTimings {
        ready,
        ready_to_first_ping: first_ping.saturating_sub(ready),
        first_ping,
    };
    *vm.cached.get_mut() = Some(client);
    Ok(vm)
}

/// The last lines of the serial console.
fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
