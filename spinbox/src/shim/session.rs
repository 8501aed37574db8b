//! One VM session: everything one creation sets up, its teardown, and the rule that decides
//! who runs that teardown.
//!
//! # Ownership of the teardown
//!
//! ```text
//!            publish (create: agent answered, VM alive)
//!   Booting ─────────────────────────────────────────▶ Up
//!      │                                                │
//!      │ claim_teardown            claim_teardown       │
//!      └──────────────▶ TearingDown ◀───────────────────┘
//!                           │ finish (the seven phases ran)
//!                           ▼
//!                          Done
//! ```
//!
//! Exactly one party owns a session's teardown: the one whose `claim_teardown`
//! compare-and-swap wins. The candidates are a failing or cancelled `create`, `delete`,
//! `shutdown`, and the exit watcher (the VM exited on its own). The winner records why
//! ([`Reason`]) and the exit cause where it knows it; everyone else — winner included —
//! then *joins* the one run of the cleanup phases ([`Session::tear_down`]), which executes
//! on its own task, so it completes even if every caller is cancelled. `publish` and
//! `claim_teardown` leave `Booting` through the same atomic, so a creation can only
//! publish a VM that nobody has started to tear down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use lifecycle_core::{state_machine, BoxError, Phase, PhaseKind, PhaseObserver, PhaseOutcome};
use tokio::sync::watch;

use super::console::ConsoleForwarder;
use super::container::SessionContainer;
use super::events::{EventSender, ExitCause, ShimEvent};
use super::CreateError;
use super::{Shared, ShimReport};
use crate::cleanup::{CleanupOrchestrator, CleanupPhase, CleanupPhases};
use crate::hotplug::{Controllers, Resizer};
use crate::task::ContainerSpec;
use crate::vm::agent::{shutdown_hook, AgentClient};
use crate::vm::shared_task::SharedTask;
use crate::vm::{ExitInfo, StopRequest, Vm, VmSpec};

/// Where a session is in its life; see the module docs.
#[state_machine(machine = AtomicSessionState, transitions(
    /// The creation publishes the VM: its agent answered and nobody claimed the teardown.
    publish: Booting => Up,
    /// Claims the teardown: exactly one caller wins; everyone else joins its run.
    claim_teardown: Booting | Up => TearingDown,
    /// The cleanup phases have run.
    finish: TearingDown => Done,
))]
pub(crate) enum SessionState {
    /// The VM is being started and its agent awaited.
    #[initial]
    Booting,
    /// The VM is up: the creation succeeded.
    Up,
    /// Its teardown was claimed and is running.
    TearingDown,
    /// Torn down.
    #[terminal]
    Done,
}

/// Why a session is torn down: recorded by the party that claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The creation failed (boot, agent, `Info`).
    CreateFailed,
    /// The `create` future was dropped before it finished.
    Cancelled,
    /// The VM exited before the creation published it.
    ExitedDuringBoot,
    /// The VM exited after it was up.
    Crash,
    /// `delete`.
    Delete,
    /// `shutdown`.
    Shutdown,
}

impl Reason {
    /// Whether the shim itself stopped the VM.
    fn intentional(self) -> bool {
        !matches!(self, Reason::ExitedDuringBoot | Reason::Crash)
    }
}

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) spec: VmSpec,
    pub(crate) state: AtomicSessionState,
    reason: OnceLock<Reason>,
    /// Set by delete, shutdown and a crash after the VM was up: this teardown ends the shim.
    is_final: AtomicBool,
    /// The guest announced readiness during the creation.
    ready: AtomicBool,
    pub(crate) vm: OnceLock<Arc<dyn Vm>>,
    /// `true` once the start attempt has ended (the VM is in `vm`, or it failed).
    started: watch::Sender<bool>,
    /// `true` once the teardown is claimed (after the reason is recorded).
    claimed: watch::Sender<bool>,
    console: OnceLock<ConsoleForwarder>,
    /// The shim's agent connections; `conn_close` closes them and refuses new ones.
    connections: Mutex<Connections>,
    pub(crate) cause: OnceLock<ExitCause>,
    /// The container's rootfs share, prepared before the VM started.
    pub(crate) rootfs: OnceLock<crate::rootfs::PreparedRootfs>,
    /// The container, once created in the guest.
    pub(crate) container: OnceLock<SessionContainer>,
    /// Host mounts made for the container's rootfs (`ContainerSpec::rootfs_mounts`), in
    /// the order made; `mount_cleanup` unmounts them in reverse.
    pub(crate) host_mounts: Mutex<Vec<std::path::PathBuf>>,
    /// The VM's network, attached before it started; `network_cleanup` releases it.
    pub(crate) network: OnceLock<crate::net::Network>,
    /// The hotplug controllers, once the VM is up; `hotplug_stop` stops them and closes
    /// the slot, after which none is started.
    hotplug: Mutex<HotplugSlot>,
    cleanup: CleanupOrchestrator,
    teardown: SharedTask<Option<ShimReport>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state.state())
            .field("reason", &self.reason.get())
            .finish_non_exhaustive()
    }
}

/// The hotplug controllers' place in a session.
enum HotplugSlot {
    /// Not started yet, or running.
    Open(Option<Arc<Controllers>>),
    /// `hotplug_stop` ran.
    Closed,
}

/// The shim's agent connections of one session.
#[derive(Default)]
struct Connections {
    clients: Vec<AgentClient>,
    /// The connection the graceful shutdown uses; `vm_shutdown` takes (and closes) it.
    control: Option<AgentClient>,
    /// `conn_close` has run: no connection is adopted any more.
    closed: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reports every phase on the shim's event stream; the `event_close` phase's finish is the
/// stream's last event when the teardown is final.
struct PhaseEvents(Arc<EventSender>);

impl PhaseObserver<CleanupPhase> for PhaseEvents {
    fn phase_started(&self, phase: CleanupPhase, kind: PhaseKind) {
        self.0.send(ShimEvent::PhaseStarted { phase, kind });
    }

    fn phase_finished(
        &self,
        phase: CleanupPhase,
        kind: PhaseKind,
        outcome: &PhaseOutcome,
        duration: Duration,
    ) {
        let event = ShimEvent::PhaseFinished {
            phase,
            kind,
            outcome: outcome.clone(),
            duration,
        };
        if phase == CleanupPhase::EventClose {
            self.0.event_close_finished(event);
        } else {
            self.0.send(event);
        }
    }
}

type PhaseFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

/// A phase running `f` on the session, if it still exists.
fn phase(weak: &Weak<Session>, f: fn(Arc<Session>) -> PhaseFuture) -> Phase {
    let weak = weak.clone();
    Phase::new(move || {
        let session = weak.upgrade();
        async move {
            match session {
                Some(session) => f(session).await,
                None => Ok(()),
            }
        }
    })
}

impl Session {
    /// A new session in `Booting`, for `spec`.
    pub(crate) fn new(shared: Arc<Shared>, spec: VmSpec) -> Arc<Self> {
        Arc::new_cyclic(|weak: &Weak<Session>| {
            let final_weak = weak.clone();
            let phases = CleanupPhases {
                hotplug_stop: phase(weak, |s| Box::pin(async move { s.stop_hotplug().await })),
                io_shutdown: phase(weak, |s| {
                    Box::pin(async move {
                        // Both run whatever the other's outcome.
                        let container = s.stop_container_io().await;
                        let console = s.stop_console().await;
                        container.and(console)
                    })
                }),
                conn_close: phase(weak, |s| {
                    Box::pin(async move {
                        // Dropping the last clone of a client closes its connection. A dial
                        // that finishes after this point finds the door closed.
                        let mut connections = lock(&s.connections);
                        connections.closed = true;
                        connections.clients.clear();
                        if let Some(container) = s.container.get() {
                            container.close_task();
                        }
                        Ok(())
                    })
                }),
                vm_shutdown: phase(weak, |s| Box::pin(async move { s.stop_vm().await })),
                network_cleanup: phase(weak, |s| {
                    Box::pin(async move { s.release_network().await })
                }),
                mount_cleanup: phase(weak, |s| {
                    Box::pin(async move {
                        s.remove_leftovers()?;
                        s.release_rootfs().await
                    })
                }),
                event_close: Phase::sync(move || {
                    if let Some(s) = final_weak.upgrade() {
                        if s.is_final.load(Ordering::Acquire) {
                            let _ = s.shared.sm.try_shut_down();
                            s.shared.events.close_after_event_close();
                        }
                    }
                    Ok::<(), BoxError>(())
                }),
            };
            let cleanup = CleanupOrchestrator::new(phases)
                .with_observer(Arc::new(PhaseEvents(Arc::clone(&shared.events))));
            Session {
                shared,
                spec,
                state: AtomicSessionState::new(),
                reason: OnceLock::new(),
                is_final: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                vm: OnceLock::new(),
                started: watch::Sender::new(false),
                claimed: watch::Sender::new(false),
                console: OnceLock::new(),
                connections: Mutex::new(Connections::default()),
                cause: OnceLock::new(),
                rootfs: OnceLock::new(),
                container: OnceLock::new(),
                host_mounts: Mutex::new(Vec::new()),
                network: OnceLock::new(),
                hotplug: Mutex::new(HotplugSlot::Open(None)),
                cleanup,
                teardown: SharedTask::default(),
            }
        })
    }

    /// A session with no VM, already claimed by `shutdown`: its teardown only ends the stream.
    pub(crate) fn empty_final(shared: Arc<Shared>, spec: VmSpec) -> Arc<Self> {
        let s = Self::new(shared, spec);
        s.started.send_replace(true);
        s.mark_final();
        let _ = s.claim(Reason::Shutdown);
        s
    }

    /// Starts the hotplug controllers of the VM that is up (resizing through `agent`),
    /// unless `hotplug_stop` already ran: the check and the start are one step under the
    /// slot's lock, so no controller outlives the phase.
    pub(crate) fn start_hotplug(&self, vm: Arc<dyn Vm>, agent: AgentClient) {
        let config = &self.shared.config.hotplug;
        let mut slot = lock(&self.hotplug);
        if let HotplugSlot::Open(place) = &mut *slot {
            let resizer = Arc::new(Resizer::new(vm, agent, config.online_timeout));
            *place = Some(Arc::new(Controllers::start(resizer, config)));
        }
    }

    /// The running controllers (for explicit resizes), until `hotplug_stop`.
    pub(crate) fn controllers(&self) -> Option<Arc<Controllers>> {
        match &*lock(&self.hotplug) {
            HotplugSlot::Open(c) => c.clone(),
            HotplugSlot::Closed => None,
        }
    }

    /// The `hotplug_stop` phase: stops the controllers, each after its resize in flight,
    /// and waits for an explicit resize in flight; no device change follows.
    async fn stop_hotplug(&self) -> Result<(), BoxError> {
        let controllers = match std::mem::replace(&mut *lock(&self.hotplug), HotplugSlot::Closed) {
            HotplugSlot::Open(c) => c,
            HotplugSlot::Closed => None,
        };
        if let Some(c) = controllers {
            let report = c.stop().await?;
            tracing::debug!(id = %self.spec.id, ?report, "hotplug controllers stopped");
        }
        Ok(())
    }

    pub(crate) fn reason(&self) -> Option<Reason> {
        self.reason.get().copied()
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub(crate) fn was_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Keeps a clone of `client` for `conn_close` to close (and, with `control`, for the
    /// graceful shutdown to use). `false`, keeping nothing, once `conn_close` has run: the
    /// caller's clone is then the last one, and dropping it closes the connection.
    pub(crate) fn adopt(&self, client: &AgentClient, control: bool) -> bool {
        let mut connections = lock(&self.connections);
        if connections.closed {
            return false;
        }
        connections.clients.push(client.clone());
        if control {
            connections.control = Some(client.clone());
        }
        true
    }

    /// How many agent connections the session holds (for tests).
    #[cfg(test)]
    pub(crate) fn connections_held(&self) -> usize {
        let connections = lock(&self.connections);
        connections.clients.len() + usize::from(connections.control.is_some())
    }

    /// The VM exited on its own: claims the teardown for it (a crash once the VM is up, a
    /// failed boot before), records the cause as unexpected and reports it. `false` if
    /// someone else had claimed the teardown already (their stop records the cause).
    pub(crate) fn claim_exit(&self, info: ExitInfo) -> Option<SessionState> {
        let previous = self
            .claim_with(|previous| {
                if previous == SessionState::Up {
                    Reason::Crash
                } else {
                    Reason::ExitedDuringBoot
                }
            })
            .ok()?;
        let cause = self.record_exit(info, false);
        tracing::warn!(id = %self.spec.id, %cause, "VM exited unexpectedly");
        self.shared.events.send(ShimEvent::VmExited(cause));
        Some(previous)
    }

    pub(crate) fn mark_final(&self) {
        self.is_final.store(true, Ordering::Release);
    }

    /// Claims the teardown for `reason`. `Ok` with the state it left when this call won;
    /// `Err` with the state it found otherwise (someone else owns it: join it).
    pub(crate) fn claim(&self, reason: Reason) -> Result<SessionState, SessionState> {
        self.claim_with(|_| reason)
    }

    /// [`Self::claim`], with the reason chosen from the state the claim left.
    pub(crate) fn claim_with(
        &self,
        reason: impl FnOnce(SessionState) -> Reason,
    ) -> Result<SessionState, SessionState> {
        match self.state.try_claim_teardown() {
            Ok(previous) => {
                let _ = self.reason.set(reason(previous));
                self.claimed.send_replace(true);
                Ok(previous)
            }
            Err(e) => Err(e.observed()),
        }
    }

    /// Waits for `work` unless the teardown is claimed first (then `None`).
    pub(crate) async fn until_claimed<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        let mut claimed = self.claimed.subscribe();
        tokio::select! {
            out = work => Some(out),
            _ = claimed.wait_for(|c| *c) => None,
        }
    }

    /// Records the exit cause unless one is recorded already.
    pub(crate) fn record_exit(&self, info: ExitInfo, intentional: bool) -> ExitCause {
        self.cause
            .get_or_init(|| ExitCause::new(info, intentional))
            .clone()
    }

    /// Runs (or joins) the one teardown of this session and returns its report.
    pub(crate) async fn tear_down(self: &Arc<Self>) -> ShimReport {
        let me = Arc::clone(self);
        let report = self
            .teardown
            .run(
                move || async move { Some(me.run_teardown().await) },
                || None,
            )
            .await;
        match report {
            Some(report) => report,
            // The teardown task died (a panic outside the phases, which the engine catches):
            // the engine's own state still runs or reports each phase once.
            None => self.cleanup.execute().await,
        }
    }

    async fn run_teardown(&self) -> ShimReport {
        // The claimant records its reason just after its compare-and-swap; the phases read it.
        let mut claimed = self.claimed.subscribe();
        let _ = claimed.wait_for(|c| *c).await;
        // A start still in flight finishes first, so whatever it starts is torn down too.
        let mut started = self.started.subscribe();
        let _ = started.wait_for(|s| *s).await;
        let report = self.cleanup.execute().await;
        let _ = self.state.try_finish();
        report
    }

    /// Starts the VM on its own task (it completes even if `create` is dropped) and
    /// returns its handle.
    pub(crate) fn spawn_start(
        self: &Arc<Self>,
        container: Option<ContainerSpec>,
    ) -> tokio::task::JoinHandle<Result<Arc<dyn Vm>, CreateError>> {
        /// Marks the start attempt over however it ends — returned, or panicked — so a
        /// teardown waiting for it never hangs.
        struct Started(Arc<Session>);
        impl Drop for Started {
            fn drop(&mut self) {
                self.0.started.send_replace(true);
            }
        }
        let session = Arc::clone(self);
        tokio::spawn(async move {
            let _started = Started(Arc::clone(&session));
            let mut spec = session.spec.clone();
            if let Some(config) = &session.shared.config.network {
                let netns = container.as_ref().and_then(|c| c.netns.as_deref());
                let network =
                    crate::net::Network::attach(config, &spec.state_root, &spec.id, netns)
                        .await
                        .map_err(CreateError::Network)?;
                let network = session.network.get_or_init(|| network);
                spec.nics.extend(network.device());
                spec.kernel_args
                    .extend(network.kernel_args().map_err(CreateError::Network)?);
            }
            if let Some(container) = &container {
                let transport = session.shared.config.rootfs_transport;
                let prepared = session
                    .prepare_rootfs(container, transport)
                    .await
                    .map_err(CreateError::Rootfs)?;
                spec.shares.push(prepared.share.clone());
            }
            let result = session.shared.backend.start(&spec).await;
            // QEMU holds its own copy of the TAP now: the device lives as long as QEMU.
            drop(spec);
            if let Some(network) = session.network.get() {
                network.close_tap();
            }
            if let Ok(vm) = &result {
                let _ = session.vm.set(Arc::clone(vm));
                if let Some(log) = vm.console_log() {
                    let _ = session.console.set(ConsoleForwarder::start(
                        log,
                        Arc::clone(&session.shared.events),
                    ));
                }
                watch_exit(&session, vm);
            }
            result.map_err(CreateError::Boot)
        })
    }

    /// Keeps the created container for the teardown. `false` (keeping nothing, its
    /// forwarders closed) when the teardown was claimed meanwhile: it may have run
    /// `io_shutdown` already.
    pub(crate) fn keep_container(
        &self,
        id: String,
        task: crate::task::TaskClient,
        forwarders: &crate::task::stdio::Forwarders,
    ) -> bool {
        let kept = self
            .container
            .set(SessionContainer::new(id, task, forwarders.clone()))
            .is_ok();
        // Checked after keeping it: a teardown claimed before this point may or may not
        // have seen it; closing twice is harmless.
        if !kept || self.state.state() != SessionState::Booting {
            forwarders.abort_now();
            return false;
        }
        true
    }

    /// The container's id and `Task` client, while the connection is open.
    pub(crate) fn container_task(&self) -> Option<(String, crate::task::TaskClient)> {
        let container = self.container.get()?;
        Some((container.id.clone(), container.task()?))
    }

    async fn stop_console(&self) -> Result<(), BoxError> {
        if let Some(console) = self.console.get() {
            console.stop().await;
        }
        Ok(())
    }

    async fn stop_vm(&self) -> Result<(), BoxError> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        let control = lock(&self.connections).control.take();
        let hook = shutdown_hook(vm.agent_address(), self.shared.config.rpc_timeout, control);
        let outcome = vm
            .stop(StopRequest {
                policy: self.shared.config.shutdown,
                graceful: Some(hook),
            })
            .await?;
        if let Some(e) = &outcome.graceful_error {
            tracing::warn!(id = %self.spec.id, error = %e, "graceful shutdown failed; escalated");
        }
        let intentional = self.reason().is_none_or(Reason::intentional);
        self.record_exit(outcome.exit, intentional);
        Ok(())
    }

    /// The `network_cleanup` phase: releases the network once the VM is gone (QEMU must no
    /// longer hold the TAP).
    async fn release_network(&self) -> Result<(), BoxError> {
        let Some(network) = self.network.get() else {
            return Ok(());
        };
        if let Some(vm) = self.vm.get() {
            if vm.exit_watch().borrow().is_none() {
                return Err("the VM is still running; its network is left in place".into());
            }
        }
        network.release().await?;
        Ok(())
    }

    fn remove_leftovers(&self) -> Result<(), BoxError> {
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        if vm.exit_watch().borrow().is_none() {
            return Err("the VM is still running; its files are left in place".into());
        }
        for path in vm.leftovers() {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", path.display()).into()),
            }
        }
        Ok(())
    }
}

/// Watches the VM's exit without keeping the session alive; an exit nobody asked for claims
/// the teardown.
fn watch_exit(session: &Arc<Session>, vm: &Arc<dyn Vm>) {
    let weak = Arc::downgrade(session);
    let mut exit = vm.exit_watch();
    tokio::spawn(async move {
        let info = match exit.wait_for(Option::is_some).await {
            Ok(info) => info.clone().expect("published"),
            Err(_) => return,
        };
        if let Some(session) = weak.upgrade() {
            on_exit(&session, info).await;
        }
    });
}

async fn on_exit(session: &Arc<Session>, info: ExitInfo) {
    let shared = Arc::clone(&session.shared);
    // Lost: a delete, a shutdown or a failing creation owns the teardown, and its
    // `vm_shutdown` records the cause.
    let Some(previous) = session.claim_exit(info) else {
        return;
    };
    if previous == SessionState::Up {
        // The VM was up: the shim is done. (Exits while booting fail the creation, which
        // returns the shim to Idle.)
        session.mark_final();
        let _ = shared.sm.try_shut_down();
        let _ = session.tear_down().await;
        shared.events.close();
    } else {
        let _ = session.tear_down().await;
    }
}
