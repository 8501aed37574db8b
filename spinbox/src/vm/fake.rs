//! [`FakeBackend`]: an in-process [`VmBackend`] for tests of the facade, with no QEMU.
//!
//! Each [`FakeVm`] serves a real ttrpc agent (the `System` service) on a unix socket in its
//! own state directory `<state root>/<id>`, so the facade's agent client, dials and
//! graceful shutdown run for real; the "VM" is that server plus an exit watch. A
//! [`FakeScript`] injects the faults the facade must survive: a slow or failing start, a
//! guest that never becomes ready or exits while booting, an exit triggered by the agent's
//! `Info` call (so it lands after the agent answered but before the facade marks the VM
//! created), a guest that ignores shutdown, a stop that fails. [`FakeVm::crash`] makes the
//! VM exit from outside at any moment.
//!
//! Built for this crate's unit tests and, with the `test-util` feature, for other crates'.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use spinbox_protocol::agent::{
    InfoRequest, InfoResponse, PingRequest, PingResponse, PrepareShutdownRequest,
    PrepareShutdownResponse, ShutdownRequest, ShutdownResponse,
};
use spinbox_protocol::agent_ttrpc::{create_resources, create_system, System};
use tokio::sync::{watch, Notify};
use ttrpc::asynchronous::TtrpcContext;

pub use super::fake_hotplug::FakeHotplugEvent;
use super::fake_hotplug::{FakeHotplug, FakeResources};
use super::hotplug::{CpuSlot, CpuState, HotplugError, HotplugRoom, MemoryDevice};
use super::shared_task::SharedTask;
use super::stop::ShutdownStep;
use super::vsock::AgentAddress;
use super::{
    BootError, ExitInfo, ExitWatch, StopError, StopOutcome, StopRequest, Vm, VmBackend, VmId,
    VmSpec,
};

/// What the fake VMs started from now on do. The default is a well-behaved VM that is
/// ready at once and powers off when the agent is asked to.
// A script is a set of independent switches; bools read best here.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Clone, Default)]
pub struct FakeScript {
    /// How long `start` takes.
    pub start_delay: Duration,
    /// `start` fails (after `start_delay`) with [`BootError::Start`].
    pub fail_start: bool,
    /// `start` panics (a backend bug the facade must survive).
    pub panic_start: bool,
    /// How long after the start the agent announces readiness.
    pub ready_delay: Duration,
    /// The agent never announces readiness (the spec's bound ends the wait).
    pub never_ready: bool,
    /// The VM exits with status 1 `ready_delay` after the start, instead of becoming ready.
    pub exit_during_boot: bool,
    /// The agent's `Info` call makes the VM exit (status 1, reason `guest-reset`): the VM
    /// dies after it became ready, while the agent answers; the exit is published before
    /// the reply is sent.
    pub exit_on_info: bool,
    /// How long the agent takes to answer `Info`.
    pub info_delay: Duration,
    /// The agent answers `Shutdown` but the guest never powers off: the stop ends with the
    /// forced step (status SIGKILL).
    pub ignore_shutdown: bool,
    /// How long each stop takes before it ends the VM.
    pub stop_delay: Duration,
    /// The stop fails with [`StopError::NotReaped`] (the VM stays "running").
    pub fail_stop: bool,
    /// How long each hotplug change (add or remove a vCPU or memory) takes.
    pub hotplug_delay: Duration,
}

/// The in-process backend; see the module docs.
#[derive(Debug, Default)]
pub struct FakeBackend {
    script: Mutex<FakeScript>,
    starts: AtomicUsize,
    vms: Mutex<Vec<Arc<FakeVm>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeBackend {
    /// A backend whose VMs follow `script`.
    pub fn new(script: FakeScript) -> Self {
        Self {
            script: Mutex::new(script),
            ..Self::default()
        }
    }

    /// Changes what VMs started from now on do.
    pub fn set_script(&self, script: FakeScript) {
        *lock(&self.script) = script;
    }

    /// How many times `start` was called.
    pub fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    /// The VM started last (the backend keeps every VM it started, for inspection).
    pub fn last_vm(&self) -> Option<Arc<FakeVm>> {
        lock(&self.vms).last().cloned()
    }

    /// How many started VMs are still alive (not stopped, not exited).
    pub fn running(&self) -> usize {
        lock(&self.vms)
            .iter()
            .filter(|vm| vm.exit.borrow().is_none())
            .count()
    }
}

/// One fake VM.
pub struct FakeVm {
    id: VmId,
    script: FakeScript,
    dir: PathBuf,
    socket: PathBuf,
    started: Instant,
    exit: watch::Sender<Option<ExitInfo>>,
    /// The agent was asked to power off (and does, unless the script ignores it).
    power_off: Notify,
    server: tokio::sync::Mutex<Option<ttrpc::asynchronous::Server>>,
    stop: SharedTask<Result<StopOutcome, StopError>>,
    stops: AtomicUsize,
    infos: AtomicUsize,
    ready_timeout: Duration,
    pub(crate) hotplug: FakeHotplug,
    this: Weak<FakeVm>,
}

impl std::fmt::Debug for FakeVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVm")
            .field("id", &self.id)
            .field("exit", &*self.exit.borrow())
            .finish_non_exhaustive()
    }
}

fn status(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

fn killed(signal: i32) -> ExitStatus {
    ExitStatus::from_raw(signal)
}

impl FakeVm {
    /// Makes the VM exit now, as if its VMM died: `status` as a wait status (e.g.
    /// `ExitStatus::from_raw(9)` for SIGKILL), with the given shutdown reason and panic
    /// flag. Does nothing if it has already exited.
    pub fn crash(&self, status: ExitStatus, shutdown_reason: Option<&str>, guest_panicked: bool) {
        self.exit_with(ExitInfo {
            status,
            shutdown_reason: shutdown_reason.map(str::to_owned),
            guest_panicked,
            helper_died: None,
        });
    }

    /// How many stops actually ran (at most one, however many callers).
    pub fn stops(&self) -> usize {
        self.stops.load(Ordering::SeqCst)
    }

    /// How many `Info` calls the agent has received.
    pub fn info_calls(&self) -> usize {
        self.infos.load(Ordering::SeqCst)
    }

    /// Every hotplug change's beginning and end, and the stop's beginning, in order.
    pub fn hotplug_log(&self) -> Vec<FakeHotplugEvent> {
        self.hotplug.log()
    }

    /// Sets the vCPU utilisation (percent) the fake agent's `Usage` reports from now on.
    pub fn set_cpu_busy_percent(&self, percent: u64) {
        self.hotplug.set_busy_percent(percent);
    }

    /// Whether the VM has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    fn exit_with(&self, info: ExitInfo) {
        self.exit.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            tracing::debug!(id = %self.id, exit = %info, "fake VM exited");
            *slot = Some(info);
            true
        });
    }

    async fn run_stop(self: Arc<Self>, request: StopRequest) -> Result<StopOutcome, StopError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
        self.hotplug.push(FakeHotplugEvent::StopBegan);
        let start = Instant::now();
        let mut steps = Vec::new();
        let mut graceful_error = None;
        let mut ended_by = ShutdownStep::AlreadyExited;
        if !self.has_exited() {
            tokio::time::sleep(self.script.stop_delay).await;
            if self.script.fail_stop {
                return Err(StopError::NotReaped {
                    pid: std::process::id(),
                    steps,
                });
            }
            if let Some(hook) = request.graceful {
                let step = Instant::now();
                let mut exit = self.exit.subscribe();
                let waited = tokio::time::timeout(request.policy.graceful, async {
                    if let Err(e) = hook().await {
                        graceful_error = Some(e);
                        return false;
                    }
                    exit.wait_for(Option::is_some).await.is_ok()
                })
                .await;
                let ended_vm = matches!(waited, Ok(true));
                steps.push(super::stop::StepReport {
                    step: ShutdownStep::Graceful,
                    elapsed: step.elapsed(),
                    ended_vm,
                    note: graceful_error.as_ref().map(ToString::to_string),
                });
                if ended_vm {
                    ended_by = ShutdownStep::Graceful;
                }
            }
            if !self.has_exited() {
                self.crash(killed(9), Some("host-signal"), false);
                steps.push(super::stop::StepReport {
                    step: ShutdownStep::SigKill,
                    elapsed: Duration::ZERO,
                    ended_vm: true,
                    note: None,
                });
                ended_by = ShutdownStep::SigKill;
            }
        }
        if let Some(mut server) = self.server.lock().await.take() {
            let _ = server.shutdown().await;
        }
        let exit = self.exit.borrow().clone().expect("the VM has exited");
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StopError::Cleanup {
                    path: self.dir.clone(),
                    source: Arc::new(e),
                })
            }
            _ => {}
        }
        Ok(StopOutcome {
            ended_by,
            exit,
            elapsed: start.elapsed(),
            steps,
            graceful_error,
        })
    }
}

/// The fake guest's agent.
struct FakeAgent {
    vm: Weak<FakeVm>,
}

#[async_trait::async_trait]
impl System for FakeAgent {
    async fn ping(&self, _: &TtrpcContext, _: PingRequest) -> ttrpc::Result<PingResponse> {
        Ok(PingResponse::new())
    }

    async fn info(&self, _: &TtrpcContext, _: InfoRequest) -> ttrpc::Result<InfoResponse> {
        let mut r = InfoResponse::new();
        r.kernel_release = "fake".into();
        r.agent_version = "fake".into();
        let delay = self.vm.upgrade().map(|vm| {
            vm.infos.fetch_add(1, Ordering::SeqCst);
            vm.script.info_delay
        });
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(vm) = self.vm.upgrade() {
            r.uptime_seconds = vm.started.elapsed().as_secs_f64();
            if vm.script.exit_on_info {
                vm.crash(status(1), Some("guest-reset"), false);
            }
        }
        Ok(r)
    }

    async fn prepare_shutdown(
        &self,
        _: &TtrpcContext,
        _: PrepareShutdownRequest,
    ) -> ttrpc::Result<PrepareShutdownResponse> {
        Ok(PrepareShutdownResponse::new())
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        if let Some(vm) = self.vm.upgrade() {
            vm.power_off.notify_one();
        }
        Ok(ShutdownResponse::new())
    }
}

#[async_trait::async_trait]
impl VmBackend for FakeBackend {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>, BootError> {
        self.starts.fetch_add(1, Ordering::SeqCst);
        spec.validate().map_err(BootError::Spec)?;
        let script = lock(&self.script).clone();
        tokio::time::sleep(script.start_delay).await;
        assert!(!script.panic_start, "scripted start panic");
        if script.fail_start {
            return Err(BootError::Start {
                what: "the fake VMM",
                source: "scripted start failure".into(),
            });
        }
        let dir = spec.state_root.join(spec.id.as_str());
        std::fs::create_dir_all(&spec.state_root).map_err(|source| BootError::Prepare {
            path: spec.state_root.clone(),
            source,
        })?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BootError::AlreadyExists(spec.id.clone()))
            }
            Err(source) => return Err(BootError::Prepare { path: dir, source }),
        }
        let socket = dir.join("agent.sock");
        let vm = Arc::new_cyclic(|this| FakeVm {
            id: spec.id.clone(),
            script: script.clone(),
            dir: dir.clone(),
            socket: socket.clone(),
            started: Instant::now(),
            exit: watch::Sender::new(None),
            power_off: Notify::new(),
            server: tokio::sync::Mutex::new(None),
            stop: SharedTask::default(),
            stops: AtomicUsize::new(0),
            infos: AtomicUsize::new(0),
            ready_timeout: spec.ready_timeout,
            hotplug: FakeHotplug::new(spec.hotplug_room(true), script.hotplug_delay),
            this: this.clone(),
        });
        let mut server = match serve(&socket, &vm) {
            Ok(s) => s,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(BootError::Prepare {
                    path: socket,
                    source,
                });
            }
        };
        if let Err(e) = server.start().await {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(BootError::Prepare {
                path: socket,
                source: std::io::Error::other(e.to_string()),
            });
        }
        *vm.server.lock().await = Some(server);
        // The guest: powers off when the agent is asked to, unless scripted not to.
        let weak = Arc::downgrade(&vm);
        tokio::spawn(async move {
            let Some(vm) = weak.upgrade() else { return };
            let mut exit = vm.exit.subscribe();
            tokio::select! {
                () = vm.power_off.notified() => {
                    if !vm.script.ignore_shutdown {
                        vm.exit_with(ExitInfo {
                            status: status(0),
                            shutdown_reason: Some("guest-shutdown".into()),
                            guest_panicked: false,
                            helper_died: None,
                        });
                    }
                }
                _ = exit.wait_for(Option::is_some) => {}
            }
        });
        if vm.script.exit_during_boot {
            let weak = Arc::downgrade(&vm);
            let after = vm.script.ready_delay;
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Some(vm) = weak.upgrade() {
                    vm.crash(status(1), Some("guest-panic"), true);
                }
            });
        }
        lock(&self.vms).push(Arc::clone(&vm));
        Ok(vm)
    }
}

fn serve(socket: &Path, vm: &Arc<FakeVm>) -> std::io::Result<ttrpc::asynchronous::Server> {
    let listener = tokio::net::UnixListener::bind(socket)?;
    let incoming = futures_util::stream::unfold(listener, |listener| async move {
        let item = listener.accept().await.map(|(s, _)| s);
        Some((item, listener))
    });
    Ok(ttrpc::asynchronous::Server::new()
        .add_listener(ttrpc::asynchronous::transport::Listener::new(incoming))
        .register_service(create_system(Arc::new(FakeAgent {
            vm: Arc::downgrade(vm),
        })))
        .register_service(create_resources(Arc::new(FakeResources(Arc::downgrade(
            vm,
        ))))))
}

#[async_trait::async_trait]
impl Vm for FakeVm {
    fn id(&self) -> &VmId {
        &self.id
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    async fn wait_ready(&self) -> Result<Duration, BootError> {
        let mut exit = self.exit.subscribe();
        let ready_at = self.started + self.script.ready_delay;
        let never = self.script.never_ready || self.script.exit_during_boot;
        let bound = self.started + self.ready_timeout;
        tokio::select! {
            info = exit.wait_for(Option::is_some) => {
                let exit = info.ok().and_then(|i| i.clone()).expect("published");
                Err(BootError::ExitedBeforeReady { exit, console_tail: String::new() })
            }
            () = tokio::time::sleep_until(if never { bound } else { ready_at }.into()) => {
                if never {
                    Err(BootError::ReadyTimeout { after: bound - self.started, console_tail: String::new() })
                } else {
                    Ok(self.started.elapsed())
                }
            }
        }
    }

    fn agent_address(&self) -> AgentAddress {
        AgentAddress::Unix(self.socket.clone())
    }

    fn exit_watch(&self) -> ExitWatch {
        self.exit.subscribe()
    }

    fn console_log(&self) -> Option<PathBuf> {
        None
    }

    async fn stop(&self, request: StopRequest) -> Result<StopOutcome, StopError> {
        // The stop runs on its own task, which needs an owned handle.
        let me = self
            .this
            .upgrade()
            .expect("a FakeVm is only reachable through its Arc");
        self.stop
            .run(
                move || me.run_stop(request),
                || {
                    Err(StopError::NotReaped {
                        pid: std::process::id(),
                        steps: Vec::new(),
                    })
                },
            )
            .await
    }

    async fn kill(&self) {
        self.crash(killed(9), Some("host-signal"), false);
    }

    fn leftovers(&self) -> Vec<PathBuf> {
        if self.dir.exists() {
            vec![self.dir.clone()]
        } else {
            Vec::new()
        }
    }

    fn hotplug_room(&self) -> HotplugRoom {
        self.hotplug.room()
    }

    async fn cpu_slots(&self) -> Result<Vec<CpuState>, HotplugError> {
        Ok(self.hotplug.cpus())
    }

    async fn add_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.add_cpu(slot).await
    }

    async fn remove_cpu(&self, slot: CpuSlot) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.remove_cpu(slot).await
    }

    async fn memory_devices(&self) -> Result<Vec<MemoryDevice>, HotplugError> {
        Ok(self.hotplug.memory())
    }

    async fn add_memory(&self, size_mib: u32) -> Result<MemoryDevice, HotplugError> {
        self.check_running()?;
        self.hotplug.add_memory(size_mib).await
    }

    async fn remove_memory(&self, id: &str) -> Result<(), HotplugError> {
        self.check_running()?;
        self.hotplug.remove_memory(id).await
    }
}

impl FakeVm {
    fn check_running(&self) -> Result<(), HotplugError> {
        if self.has_exited() || self.stops() > 0 {
            Err(HotplugError::Stopping)
        } else {
            Ok(())
        }
    }
}
