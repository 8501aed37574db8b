//! The shim facade (SPEC §4.7): [`ShimStateMachine`] + [`CleanupOrchestrator`] + the
//! [`VmManager`] as one lifecycle.
//!
//! | operation | states | cleanup |
//! |---|---|---|
//! | [`Shim::create`] | `Idle` → `Creating` → `Running` (→ `Idle` on failure) | on failure, from the phase matching what was set up |
//! | [`Shim::delete`] | `Running` → `Deleting` → `ShuttingDown` | all seven phases |
//! | [`Shim::shutdown`] | any → `ShuttingDown` (intentional) | all seven phases |
//! | VM exits unasked | `Running` → `Deleting` → `ShuttingDown`, cause recorded | all seven phases |
//!
//! Each creation gets its own [`VmManager`] and its own orchestrator, whose phases do real
//! work: `io_shutdown` stops the console forwarding, `conn_close` closes the shim's agent
//! clients, `vm_shutdown` runs the escalation (agent `PrepareShutdown` + `Shutdown` first),
//! `mount_cleanup` removes what is left of the VM's directories and `event_close` ends the
//! event stream. `hotplug_stop` and `network_cleanup` are explicit no-ops: spinbox has no
//! hotplug controllers and no networking yet.
//!
//! Concurrent calls are safe: the state machine admits one creator and one teardown owner,
//! and every teardown path joins the same orchestrator run, so the phases run once and
//! every caller gets the report.

mod config;
mod console;
mod events;

pub use config::{ConfigError, ShimConfig};
pub use events::{ExitCause, ShimEvent};

use crate::cleanup::{CleanupOrchestrator, CleanupPhase, CleanupPhases};
use crate::state::{ShimState, ShimStateMachine};
use crate::vm::agent::{AgentClient, AgentInfo, RpcError};
use crate::vm::config::VmId;
use crate::vm::instance::StartOptions;
use crate::vm::manager::{BootTimings, ManagerError, VmManager, VmSpec};
use crate::vm::qmp::QmpEventKind;
use crate::vm::state_dir::default_state_root;
use console::ConsoleForwarder;
use events::EventSender;
use lifecycle_core::{BoxError, CleanupReport, Phase, TransitionError};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// A phase action's future.
type PhaseFuture = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// The report of a teardown.
pub type ShimReport = CleanupReport<CleanupPhase>;

/// Why `create` was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Another `create` is in progress.
    #[error("a VM is already being created")]
    CreationInProgress,
    /// The VM already exists.
    #[error("the VM is already created")]
    AlreadyCreated,
    /// The VM is being deleted.
    #[error("the VM is being deleted")]
    Deleting,
    /// The shim is shutting down; it creates nothing more.
    #[error("the shim is shutting down")]
    ShuttingDown,
    /// Booting the VM failed; nothing of it is left. Carries the manager's error (QEMU's
    /// stderr tail or the console tail where relevant).
    #[error("booting the VM failed")]
    Boot(#[source] ManagerError),
    /// The VM booted but its agent did not answer `Info`; the VM was torn down.
    #[error("the agent did not answer after boot")]
    Agent(#[source] ManagerError),
    /// The agent's `Info` call failed; the VM was torn down.
    #[error("the agent's Info call failed")]
    Info(#[source] RpcError),
    /// Shutdown was requested while the VM was being created; it was torn down.
    #[error("shutdown was requested during creation")]
    ShutDownDuringCreate,
}

/// Why `delete` was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// Nothing to delete: no VM was created (or its creation failed).
    #[error("no VM to delete: the shim is idle")]
    NotCreated,
    /// The VM is still being created.
    #[error("the VM is still being created")]
    CreationInProgress,
    /// Another delete (or a crash teardown) is in progress.
    #[error("the VM is already being deleted")]
    AlreadyDeleting,
    /// The shim is shutting down.
    #[error("the shim is shutting down")]
    ShuttingDown,
}

/// What a successful `create` learned.
#[derive(Debug, Clone)]
pub struct Created {
    /// Boot timings (QEMU start → readiness → first ping).
    pub timings: BootTimings,
    /// The agent's `Info`.
    pub info: AgentInfo,
    /// QEMU's pid.
    pub qemu_pid: u32,
}

/// What the phases of one VM share. Holds no reference back to the shim.
struct Parts {
    id: VmId,
    manager: VmManager,
    console: OnceLock<ConsoleForwarder>,
    clients: Mutex<Vec<AgentClient>>,
    events: Arc<EventSender>,
    sm: Arc<ShimStateMachine>,
    final_teardown: Arc<AtomicBool>,
    state_root: PathBuf,
    clues: Arc<Mutex<ExitClues>>,
}

impl Parts {
    /// The shim's final step: → `ShuttingDown` (announced), then the end of the stream.
    fn finish(&self) {
        let _ = announced(
            &self.events,
            self.sm.try_shut_down(),
            ShimState::ShuttingDown,
        );
        self.events.close();
    }
}

/// What QMP said before QEMU went away.
#[derive(Debug, Default)]
struct ExitClues {
    shutdown_reason: Option<String>,
    guest_panicked: bool,
}

/// One creation: its manager, phases and orchestrator.
struct Generation {
    parts: Arc<Parts>,
    cleanup: CleanupOrchestrator,
    /// `true` once `create` has finished, successfully or not.
    created: watch::Sender<bool>,
}

struct Inner {
    id: VmId,
    config: ShimConfig,
    sm: Arc<ShimStateMachine>,
    events: Arc<EventSender>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<ShimEvent>>>,
    generation: Mutex<Option<Arc<Generation>>>,
    exit_cause: Mutex<Option<ExitCause>>,
    final_teardown: Arc<AtomicBool>,
}

/// The VM shim: one VM's lifecycle. Cheap to clone; clones share the shim.
#[derive(Clone)]
pub struct Shim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim")
            .field("id", &self.inner.id)
            .field("state", &self.inner.sm.snapshot())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A phase whose start and end are reported on the event stream.
fn tracked<F, Fut>(events: &Arc<EventSender>, phase: CleanupPhase, f: F) -> Phase
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let events = Arc::clone(events);
    Phase::new(move || {
        let events = Arc::clone(&events);
        let work = f();
        async move {
            events.send(ShimEvent::PhaseStarted(phase));
            let start = Instant::now();
            let result = work.await;
            events.send(ShimEvent::PhaseFinished {
                phase,
                error: result.as_ref().err().map(ToString::to_string),
                duration: start.elapsed(),
            });
            result
        }
    })
}

/// A transition's result, announced on the event stream when it succeeded.
fn announced(
    events: &EventSender,
    result: Result<ShimState, TransitionError<ShimState>>,
    to: ShimState,
) -> Result<ShimState, TransitionError<ShimState>> {
    if let Ok(from) = result {
        events.send(ShimEvent::State { from, to });
    }
    result
}

fn remove_dir(path: &std::path::Path) -> Result<(), BoxError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display()).into()),
    }
}

impl Generation {
    fn new(parts: Parts) -> Self {
        let parts = Arc::new(parts);
        let events = &parts.events;
        let p = |f: fn(Arc<Parts>) -> PhaseFuture, phase: CleanupPhase| {
            let parts = Arc::clone(&parts);
            tracked(events, phase, move || f(Arc::clone(&parts)))
        };
        let cleanup = CleanupOrchestrator::new(CleanupPhases {
            // No CPU or memory hotplug controllers exist yet.
            hotplug_stop: Phase::noop(),
            io_shutdown: p(
                |parts| {
                    Box::pin(async move {
                        if let Some(console) = parts.console.get() {
                            console.stop().await;
                        }
                        Ok(())
                    })
                },
                CleanupPhase::IoShutdown,
            ),
            conn_close: p(
                |parts| {
                    Box::pin(async move {
                        // Dropping the last clone of a client closes its connection.
                        lock(&parts.clients).clear();
                        Ok(())
                    })
                },
                CleanupPhase::ConnClose,
            ),
            vm_shutdown: p(
                |parts| {
                    Box::pin(async move {
                        match parts.manager.shutdown().await {
                            Ok(Ok(_)) | Err(ManagerError::NoVm) => Ok(()),
                            Ok(Err(e)) => Err(e.into()),
                            Err(e) => Err(e.into()),
                        }
                    })
                },
                CleanupPhase::VmShutdown,
            ),
            // spinbox sets up no networking yet.
            network_cleanup: Phase::noop(),
            mount_cleanup: p(
                |parts| {
                    Box::pin(async move {
                        // The manager removes these on shutdown; this catches whatever a
                        // failure left behind. No disk overlays exist yet.
                        remove_dir(&parts.state_root.join(parts.id.as_str()))?;
                        remove_dir(&parts.state_root.join(".vsock").join(parts.id.as_str()))
                    })
                },
                CleanupPhase::MountCleanup,
            ),
            event_close: {
                let parts = Arc::clone(&parts);
                Phase::sync(move || {
                    // A failed creation returns the shim to Idle: its stream stays open.
                    if parts.final_teardown.load(Ordering::Acquire) {
                        parts.finish();
                    }
                    Ok::<(), BoxError>(())
                })
            },
        });
        let (created, _) = watch::channel(false);
        Self {
            parts,
            cleanup,
            created,
        }
    }
}

impl Shim {
    /// A shim for the VM `id`, in [`ShimState::Idle`].
    pub fn new(id: VmId, config: ShimConfig) -> Self {
        let (events, receiver) = EventSender::new();
        Self {
            inner: Arc::new(Inner {
                id,
                config,
                sm: Arc::new(ShimStateMachine::new()),
                events: Arc::new(events),
                receiver: Mutex::new(Some(receiver)),
                generation: Mutex::new(None),
                exit_cause: Mutex::new(None),
                final_teardown: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// The VM's ID.
    pub fn id(&self) -> &VmId {
        &self.inner.id
    }

    /// The state machine (state, intentional-shutdown flag, snapshot).
    pub fn state(&self) -> &ShimStateMachine {
        &self.inner.sm
    }

    /// The event stream. There is one consumer: the first call gets it, later calls `None`.
    /// It ends (`recv` returns `None`) when the shim's final teardown closes it.
    pub fn events(&self) -> Option<mpsc::UnboundedReceiver<ShimEvent>> {
        lock(&self.inner.receiver).take()
    }

    /// Why the VM exited, once it has (set by every teardown path and by crashes).
    pub fn exit_cause(&self) -> Option<ExitCause> {
        lock(&self.inner.exit_cause).clone()
    }

    /// QEMU's pid, while a VM exists.
    pub fn qemu_pid(&self) -> Option<u32> {
        let generation = lock(&self.inner.generation).clone()?;
        generation.parts.manager.instance().map(|i| i.pid())
    }

    /// Where the running VM's agent listens (for fresh connections of your own).
    pub fn agent_address(&self) -> Option<crate::vm::vsock::AgentAddress> {
        let generation = lock(&self.inner.generation).clone()?;
        generation.parts.manager.agent_address()
    }

    /// The manager's cached agent client for the running VM.
    pub async fn agent(&self) -> Result<AgentClient, ManagerError> {
        let generation = lock(&self.inner.generation)
            .clone()
            .ok_or(ManagerError::NoVm)?;
        generation.parts.manager.client().await
    }

    fn spec(&self) -> VmSpec {
        let c = &self.inner.config;
        let mut spec = VmSpec::new(self.inner.id.clone());
        spec.cpus = c.cpus;
        spec.memory_mib = c.memory_mib;
        spec.accel = c.accel;
        spec.kernel = c.kernel;
        spec.assets.clone_from(&c.assets);
        spec.kernel_args.clone_from(&c.kernel_args);
        spec.ready_timeout = c.start_timeout;
        spec.rpc_timeout = c.rpc_timeout;
        spec.retry = c.dial_retry;
        spec.escalation = c.shutdown;
        spec.start = StartOptions {
            state_root: self.state_root(),
            qmp_timeout: c.qmp_timeout,
            ..StartOptions::default()
        };
        spec
    }

    /// Fresh per-VM parts sharing the shim's stream, state machine and flags.
    fn parts(&self) -> Parts {
        Parts {
            id: self.inner.id.clone(),
            manager: VmManager::new(),
            console: OnceLock::new(),
            clients: Mutex::new(Vec::new()),
            events: Arc::clone(&self.inner.events),
            sm: Arc::clone(&self.inner.sm),
            final_teardown: Arc::clone(&self.inner.final_teardown),
            state_root: self.state_root(),
            clues: Arc::new(Mutex::new(ExitClues::default())),
        }
    }

    fn state_root(&self) -> PathBuf {
        self.inner
            .config
            .state_root
            .clone()
            .unwrap_or_else(default_state_root)
    }

    /// Creates the VM: `Idle` → `Creating`, boot, agent ready, `Info`, → `Running`.
    ///
    /// On failure the cleanup runs from the phase matching what was set up (from
    /// `mount_cleanup` when the boot failed — the manager has undone the boot itself — and
    /// every phase once the VM was up), the shim returns to `Idle`, and the error names the
    /// failed step.
    pub async fn create(&self) -> Result<Created, CreateError> {
        let events = &self.inner.events;
        if let Err(e) = announced(
            events,
            self.inner.sm.try_start_creating(),
            ShimState::Creating,
        ) {
            return Err(match e.observed() {
                ShimState::Creating => CreateError::CreationInProgress,
                ShimState::Running => CreateError::AlreadyCreated,
                ShimState::Deleting => CreateError::Deleting,
                ShimState::Idle | ShimState::ShuttingDown => CreateError::ShuttingDown,
            });
        }
        let generation = Arc::new(Generation::new(self.parts()));
        *lock(&self.inner.generation) = Some(Arc::clone(&generation));
        let result = self.boot(&generation).await;
        let outcome = match result {
            Ok(created) => {
                if announced(events, self.inner.sm.try_mark_created(), ShimState::Running).is_ok() {
                    Ok(created)
                } else {
                    // Shutdown took the shim while it was creating: tear the new VM down.
                    let _ = generation.cleanup.execute().await;
                    Err(CreateError::ShutDownDuringCreate)
                }
            }
            Err((error, from)) => {
                let _ = generation.cleanup.execute_from(from).await;
                let _ = announced(
                    events,
                    self.inner.sm.try_mark_creation_failed(),
                    ShimState::Idle,
                );
                Err(error)
            }
        };
        generation.created.send_replace(true);
        outcome
    }

    /// Boots and checks the VM; on failure, the error and the phase cleanup must start from.
    async fn boot(
        &self,
        generation: &Arc<Generation>,
    ) -> Result<Created, (CreateError, CleanupPhase)> {
        let parts = &generation.parts;
        let timings = match parts.manager.create(self.spec()).await {
            Ok(timings) => timings,
            // The manager undid the boot; only leftovers in directories may remain.
            Err(e) => return Err((CreateError::Boot(e), CleanupPhase::MountCleanup)),
        };
        self.inner.events.send(ShimEvent::Booted(timings));
        let instance = parts.manager.instance().ok_or((
            CreateError::Boot(ManagerError::NoVm),
            CleanupPhase::HotplugStop,
        ))?;
        let qemu_pid = instance.pid();
        let _ = parts.console.set(ConsoleForwarder::start(
            instance.serial_log(),
            Arc::clone(&parts.events),
        ));
        // Collect what QMP says about the VM's end; the task ends with the QMP connection.
        let mut qmp_events = instance.qmp().events();
        let clues = Arc::clone(&parts.clues);
        tokio::spawn(async move {
            loop {
                let event = match qmp_events.recv().await {
                    Ok(event) => event,
                    // Missed some events: the later ones still count.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                match event.kind {
                    QmpEventKind::Shutdown { reason, .. } => {
                        lock(&clues).shutdown_reason = Some(reason);
                    }
                    QmpEventKind::GuestPanicked { .. } => lock(&clues).guest_panicked = true,
                    _ => {}
                }
            }
        });
        // Observe the VM's exit without keeping the shim alive.
        let weak = Arc::downgrade(&self.inner);
        let this_generation = Arc::downgrade(generation);
        parts
            .manager
            .on_exit(move |status| {
                tokio::spawn(on_vm_exit(weak, this_generation, status));
            })
            .map_err(|e| (CreateError::Agent(e), CleanupPhase::HotplugStop))?;
        // The shim's own connection (closed by `conn_close`); the manager keeps its cached
        // one for the graceful shutdown in `vm_shutdown`.
        let client = parts
            .manager
            .dial_with_retry(self.inner.config.dial_retry)
            .await
            .map_err(|e| (CreateError::Agent(e), CleanupPhase::HotplugStop))?;
        lock(&parts.clients).push(client.clone());
        let info = client
            .info()
            .await
            .map_err(|e| (CreateError::Info(e), CleanupPhase::HotplugStop))?;
        Ok(Created {
            timings,
            info,
            qemu_pid,
        })
    }

    /// Deletes the VM: `Running` → `Deleting`, every cleanup phase, → `ShuttingDown`. Returns the
    /// cleanup report (check [`CleanupReport::has_errors`]).
    pub async fn delete(&self) -> Result<ShimReport, DeleteError> {
        let started = announced(
            &self.inner.events,
            self.inner.sm.try_start_deleting(),
            ShimState::Deleting,
        );
        if let Err(e) = started {
            return Err(match e.observed() {
                ShimState::Idle => DeleteError::NotCreated,
                ShimState::Creating => DeleteError::CreationInProgress,
                ShimState::Deleting => DeleteError::AlreadyDeleting,
                ShimState::Running | ShimState::ShuttingDown => DeleteError::ShuttingDown,
            });
        }
        Ok(self.teardown().await)
    }

    /// Shuts the shim down from any state: sets the intentional-shutdown flag, → `ShuttingDown`,
    /// runs every cleanup phase (joining a teardown already in progress, and waiting for a
    /// creation in progress to finish first), and returns the report. Idempotent.
    pub async fn shutdown(&self) -> ShimReport {
        self.inner.sm.set_intentional_shutdown(true);
        let _ = announced(
            &self.inner.events,
            self.inner.sm.try_shut_down(),
            ShimState::ShuttingDown,
        );
        self.teardown().await
    }

    /// Runs (or joins) the current VM's cleanup as the shim's final teardown.
    async fn teardown(&self) -> ShimReport {
        self.inner.final_teardown.store(true, Ordering::Release);
        let generation = lock(&self.inner.generation).clone();
        let report = match generation {
            Some(generation) => {
                // A creation in progress finishes (or fails) first, so the VM it may still
                // boot is torn down too.
                let mut created = generation.created.subscribe();
                let _ = created.wait_for(|done| *done).await;
                let report = generation.cleanup.execute().await;
                self.record_exit(&generation, true);
                report
            }
            None => {
                // Nothing was ever created: the phases find nothing to do but end the stream.
                Generation::new(self.parts()).cleanup.execute().await
            }
        };
        // The event_close phase did this unless an earlier (failed-creation) run had already
        // done the phases; both are idempotent.
        if let Some(generation) = lock(&self.inner.generation).clone() {
            generation.parts.finish();
        } else {
            self.inner.events.close();
        }
        report
    }

    fn record_exit(&self, generation: &Generation, intentional: bool) {
        let Some(instance) = generation.parts.manager.instance() else {
            return;
        };
        let Some(status) = instance.exit_status() else {
            return;
        };
        let clues = lock(&generation.parts.clues);
        let mut cause = lock(&self.inner.exit_cause);
        if cause.is_none() {
            *cause = Some(ExitCause {
                status,
                shutdown_reason: clues.shutdown_reason.clone(),
                guest_panicked: clues.guest_panicked,
                intentional,
            });
        }
    }
}

/// QEMU exited. If nobody asked for it and the shim is `Running`, the shim claims the
/// teardown (`Running` → `Deleting`), records the cause, cleans up and shuts down.
async fn on_vm_exit(
    shim: Weak<Inner>,
    generation: Weak<Generation>,
    status: std::process::ExitStatus,
) {
    let (Some(inner), Some(generation)) = (shim.upgrade(), generation.upgrade()) else {
        return;
    };
    let shim = Shim { inner };
    if shim.inner.sm.is_intentional_shutdown()
        || announced(
            &shim.inner.events,
            shim.inner.sm.try_start_deleting(),
            ShimState::Deleting,
        )
        .is_err()
    {
        // A delete, a shutdown or a failing creation owns the teardown.
        return;
    }
    // Give QMP's last events a moment to be read: they are already in the socket buffer.
    tokio::task::yield_now().await;
    shim.record_exit(&generation, false);
    let cause = shim.exit_cause().unwrap_or(ExitCause {
        status,
        shutdown_reason: None,
        guest_panicked: false,
        intentional: false,
    });
    tracing::warn!(id = %shim.inner.id, %cause, "VM exited unexpectedly");
    shim.inner.events.send(ShimEvent::VmExited(cause));
    let _ = shim.teardown().await;
}
