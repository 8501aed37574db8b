//! The shim facade (SPEC §4.7, §8): [`ShimStateMachine`] + [`CleanupOrchestrator`](crate::cleanup::CleanupOrchestrator) + a
//! [`VmBackend`] as one lifecycle. It knows the backend only through the trait.
//!
//! | operation | states | cleanup |
//! |---|---|---|
//! | [`Shim::create`] | `Idle` → `Creating` → `Created` (→ `Idle` on failure) | on failure, all seven phases |
//! | [`Shim::start`] | `Created` → `Running` | none |
//! | [`Shim::delete`] | `Created` or `Running` → `Deleting` → `ShuttingDown` | all seven phases |
//! | [`Shim::shutdown`] | any → `ShuttingDown` (intentional) | all seven phases |
//! | the VM exits unasked, while up | `Created` or `Running` → `ShuttingDown`, cause recorded | all seven phases |
//! | the VM exits unasked, while booting | `Creating` → `Idle`; `create` fails with the cause | all seven phases |
//!
//! # Who tears a VM down
//!
//! Each creation makes a *session* (its VM, agent connections, console forwarder, exit
//! cause and cleanup orchestrator). Exactly one party owns a session's teardown, claimed by
//! one compare-and-swap on the session's own generated state machine; everyone else joins
//! that run:
//!
//! ```text
//!  create fails / is dropped ─┐
//!  delete ────────────────────┤  claim_teardown (CAS)   ┌─ winner: records the reason
//!  shutdown ──────────────────┼────────────────────────▶┤   (and the exit cause it knows)
//!  VM exit watcher ───────────┘                         └─ losers: join
//!                                     │
//!                                     ▼
//!        one run of the seven phases, on its own task (survives cancelled callers)
//! ```
//!
//! The creation publishes a VM (`Booting` → `Up`) through the same atomic, so it can only
//! publish a VM whose teardown nobody has claimed; the VM exiting before that fails the
//! creation, after it makes a crash. The shim's own [`ShimState`] says which operations are
//! admitted; the session's says who tears down. Events come from the framework's observers:
//! every transition of the shim's machine and every phase, whatever its outcome.
//!
//! The phases do real work: `hotplug_stop` stops the CPU and memory hotplug controllers
//! and waits for a resize in flight ([`Shim::resize`] is refused after it),
//! `io_shutdown` stops the console forwarding, `conn_close` closes the shim's agent
//! connections, `vm_shutdown` stops the VM through the backend with the agent's
//! `PrepareShutdown` + `Shutdown` as its graceful step, `network_cleanup` releases the VM's
//! CNI network (`DEL`, the TAP, a namespace the shim made: [`crate::net`]) once QEMU is
//! gone, `mount_cleanup` removes what the VM created on disk (and nothing else), and
//! `event_close` ends the event stream when the teardown is the shim's last.

mod config;
mod console;
mod container;
mod events;
mod session;
#[cfg(test)]
mod tests;

pub use config::{ConfigError, ShimConfig};
pub use container::{ContainerError, STDIO_DRAIN};
pub use events::{
    BootTimings, EventReceiver, ExitCause, ShimEvent, CONSOLE_RESERVE, EVENT_CAPACITY,
};

use crate::cleanup::CleanupPhase;
use crate::hotplug::ResizeError;
use crate::rootfs::RootfsError;
use crate::state::{ShimSnapshot, ShimState, ShimStateMachine};
use crate::task::stdio::{Forwarders, ProcessIo, StdioError};
use crate::task::{ContainerSpec, SpecError, TaskError};
use crate::vm::agent::{dial_with_retry, AgentClient, AgentInfo, DialError, RpcError};
use crate::vm::vsock::AgentAddress;
use crate::vm::{BootError, VmBackend, VmId};
use events::EventSender;
use lifecycle_core::{CleanupReport, Transition, TransitionObserver};
use session::{lock, Reason, Session, SessionState};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The report of a teardown.
pub type ShimReport = CleanupReport<CleanupPhase>;

/// Why `create` was refused or failed. Every failure after the transition to `Creating`
/// has torn down what was started and returned the shim to `Idle` (or left it
/// `ShuttingDown` when a shutdown came in).
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The configuration is invalid; nothing was started and the state did not change.
    #[error("invalid configuration")]
    Config(#[source] ConfigError),
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
    /// Starting or booting the VM failed (QEMU's stderr tail or the console tail where
    /// relevant).
    #[error("booting the VM failed")]
    Boot(#[source] BootError),
    /// The VM booted but its agent could not be reached.
    #[error("cannot reach the agent after boot")]
    Agent(#[source] DialError),
    /// The agent's `Info` call failed.
    #[error("the agent's Info call failed")]
    Info(#[source] RpcError),
    /// The VM exited on its own after its agent answered, before the creation finished.
    #[error("the VM exited during creation: {0}")]
    VmExited(ExitCause),
    /// Shutdown was requested while the VM was being created.
    #[error("shutdown was requested during creation")]
    ShutDownDuringCreate,
    /// The container spec is invalid; nothing was started and the state did not change.
    #[error("invalid container")]
    Spec(#[source] SpecError),
    /// The container's rootfs could not be made available to the guest.
    #[error("cannot share the container's rootfs")]
    Rootfs(#[source] RootfsError),
    /// The agent could not create the container.
    #[error("the agent could not create the container")]
    Container(#[source] TaskError),
    /// The container's stdio could not be attached.
    #[error("cannot attach the container's stdio")]
    Stdio(#[source] StdioError),
    /// The VM could not be connected to its network (a failing CNI plugin is named, with
    /// its message); what was allocated was released.
    #[error("cannot connect the VM to its network")]
    Network(#[source] crate::net::NetworkError),
    /// The backend's start panicked (a bug); the creation's teardown ran.
    #[error("the VM start task panicked")]
    StartPanicked,
}

/// Why `start` was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Nothing to start: no VM was created (or its creation failed).
    #[error("nothing to start: the shim is idle")]
    NotCreated,
    /// The VM is still being created.
    #[error("the VM is still being created")]
    CreationInProgress,
    /// The shim was already started.
    #[error("the shim is already running")]
    AlreadyRunning,
    /// The VM is being deleted.
    #[error("the VM is being deleted")]
    Deleting,
    /// The shim is shutting down (a shutdown, a finished delete, or the VM exited).
    #[error("the shim is shutting down")]
    ShuttingDown,
    /// The agent could not start the container's process (the shim stays `Created`).
    #[error("the container's process did not start")]
    Container(#[source] TaskError),
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
    /// Another delete is in progress.
    #[error("the VM is already being deleted")]
    AlreadyDeleting,
    /// The shim is shutting down (a shutdown, a finished delete, or the VM exited).
    #[error("the shim is shutting down")]
    ShuttingDown,
}

/// Why the shim's agent connection is not available.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The shim is neither `Created` nor `Running`.
    #[error("the VM is not up (the shim is {0})")]
    NotRunning(ShimState),
    /// A fresh connection failed.
    #[error("cannot reach the agent")]
    Dial(#[source] DialError),
}

/// What a successful `create` learned.
#[derive(Debug, Clone)]
pub struct Created {
    /// Boot timings (VM start → readiness → first agent call).
    pub timings: BootTimings,
    /// The agent's `Info`.
    pub info: AgentInfo,
    /// The VMM's pid, if it is a process.
    pub vm_pid: Option<u32>,
    /// The container's first process's pid in the guest, when a container was created.
    pub container_pid: Option<u32>,
}

/// Sends every transition of the shim's machine to the event stream.
#[derive(Debug)]
pub(crate) struct StateEvents(Arc<EventSender>);

impl TransitionObserver<ShimState> for StateEvents {
    fn on_transition(&self, transition: &'static Transition<ShimState>, from: ShimState) {
        self.0.send(ShimEvent::State {
            from,
            to: transition.target,
        });
    }
}

/// What every session of a shim shares.
#[derive(Debug)]
pub(crate) struct Shared {
    id: VmId,
    config: ShimConfig,
    backend: Arc<dyn VmBackend>,
    sm: ShimStateMachine<StateEvents>,
    events: Arc<EventSender>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    receiver: Mutex<Option<EventReceiver>>,
    /// The current (or last) session; `None` before the first creation and after a failed one.
    session: Mutex<Option<Arc<Session>>>,
    /// The exit cause of the last failed creation's VM, if it had one.
    last_cause: Mutex<Option<ExitCause>>,
    /// Held by `start` (see there).
    starting: tokio::sync::Mutex<()>,
}

/// The VM shim: one VM's lifecycle over a [`VmBackend`]. Cheap to clone; clones share the
/// shim. Dropping the last clone without [`Shim::shutdown`] kills the VM through the
/// backend's handles but runs no cleanup phases.
#[derive(Clone, Debug)]
pub struct Shim {
    inner: Arc<Inner>,
}

/// Tears down a creation whose `create` future was dropped before it finished.
struct CancelGuard {
    shim: Shim,
    session: Option<Arc<Session>>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let shim = self.shim.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                shim.fail_creation(&session, Reason::Cancelled).await;
            });
        } else {
            // No runtime (it is shutting down): the backend's handles kill what they
            // started when the session is dropped.
            tracing::warn!("create cancelled outside a runtime; no cleanup ran");
        }
    }
}

/// A VM's sizes, as [`Shim::resize`] and [`Shim::resources`] report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// vCPUs plugged.
    pub cpus: u16,
    /// Memory in MiB (boot memory and hot-added devices).
    pub memory_mib: u32,
    /// The boot sizes and maximums.
    pub room: crate::vm::hotplug::HotplugRoom,
}

impl Shim {
    /// A shim for the VM `id`, in [`ShimState::Idle`], whose VMs `backend` runs.
    pub fn new(id: VmId, config: ShimConfig, backend: Arc<dyn VmBackend>) -> Self {
        let (events, receiver) = EventSender::new();
        let events = Arc::new(events);
        Self {
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    id,
                    config,
                    backend,
                    sm: ShimStateMachine::with_observer(StateEvents(Arc::clone(&events))),
                    events,
                }),
                receiver: Mutex::new(Some(receiver)),
                session: Mutex::new(None),
                last_cause: Mutex::new(None),
                starting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The VM's ID.
    pub fn id(&self) -> &VmId {
        &self.inner.shared.id
    }

    /// The shim's state and intentional-shutdown flag, read now.
    pub fn state(&self) -> ShimSnapshot {
        self.inner.shared.sm.snapshot()
    }

    /// The event stream (bounded: see [`ShimEvent`] and [`EVENT_CAPACITY`]). There is one
    /// consumer: the first call gets it, later calls `None`. It ends (`recv` returns
    /// `None`) when the shim's final teardown is done.
    pub fn events(&self) -> Option<EventReceiver> {
        lock(&self.inner.receiver).take()
    }

    fn session(&self) -> Option<Arc<Session>> {
        lock(&self.inner.session).clone()
    }

    /// Why the VM exited, once it has (recorded by every teardown and by crashes); after a
    /// failed creation, why that creation's VM exited.
    pub fn exit_cause(&self) -> Option<ExitCause> {
        match self.session() {
            Some(session) => session.cause.get().cloned(),
            None => lock(&self.inner.last_cause).clone(),
        }
    }

    /// The VMM's pid, while a VM exists and its backend runs it as a process.
    pub fn vm_pid(&self) -> Option<u32> {
        self.session()?.vm.get()?.pid()
    }

    /// The guest's network settings (address, routes, DNS from the CNI result), while a VM
    /// with a network exists.
    pub fn network(&self) -> Option<crate::net::GuestNetwork> {
        Some(self.session()?.network.get()?.guest().clone())
    }

    /// Where the VM's agent listens (for connections of your own), while a VM exists.
    pub fn agent_address(&self) -> Option<AgentAddress> {
        Some(self.session()?.vm.get()?.agent_address())
    }

    /// Ends the current VM at once (the backend's forced kill), whatever its state; a
    /// teardown in progress then finds it exited. Does nothing without a VM.
    pub async fn kill_vm(&self) {
        let vm = self.session().and_then(|s| s.vm.get().cloned());
        if let Some(vm) = vm {
            vm.kill().await;
        }
    }

    /// A new connection to the agent of the created or running VM. `conn_close` drops the
    /// shim's clone of it (the connection closes once yours is dropped too) and the VM's stop
    /// ends it for good. Fails at once unless the shim is `Created` or `Running`.
    pub async fn agent(&self) -> Result<AgentClient, AgentError> {
        let state = self.inner.shared.sm.state();
        let session = self
            .session()
            .filter(|_| matches!(state, ShimState::Created | ShimState::Running))
            .ok_or(AgentError::NotRunning(state))?;
        let vm = session.vm.get().ok_or(AgentError::NotRunning(state))?;
        let config = &self.inner.shared.config;
        let client = dial_with_retry(&vm.agent_address(), config.rpc_timeout, config.dial_retry)
            .await
            .map_err(AgentError::Dial)?;
        if !session.adopt(&client, false) {
            // The teardown closed the connections while this one was dialled.
            return Err(AgentError::NotRunning(self.inner.shared.sm.state()));
        }
        Ok(client)
    }

    /// Resizes the created or running VM by hotplug (SPEC §12): each of `cpus` and
    /// `memory_mib` that is given becomes the VM's new size — within the boot size and the
    /// maximum ([`ShimConfig::max_cpus`], [`ShimConfig::max_memory_mib`]), memory rounded up
    /// to 128 MiB — and, once set, is pinned there: its controller no longer changes it (a
    /// resize that fails pins nothing). Returns the sizes reached. One change, serialized with the controllers' own: the teardown's
    /// `hotplug_stop` waits for all of it, and refuses resizes after it.
    pub async fn resize(
        &self,
        cpus: Option<u16>,
        memory_mib: Option<u32>,
    ) -> Result<Resources, ResizeError> {
        let state = self.inner.shared.sm.state();
        let controllers = self
            .session()
            .filter(|_| matches!(state, ShimState::Created | ShimState::Running))
            .ok_or(ResizeError::NotRunning(state))?
            .controllers()
            .ok_or(ResizeError::Closed)?;
        let resizer = controllers.resizer();
        let (cpus, memory_mib) = if cpus.is_none() && memory_mib.is_none() {
            (resizer.cpus().await?, resizer.memory_mib().await?)
        } else {
            resizer.resize(cpus, memory_mib).await?
        };
        Ok(Resources {
            cpus,
            memory_mib,
            room: resizer.room(),
        })
    }

    /// The created or running VM's sizes now and its growth room.
    pub async fn resources(&self) -> Result<Resources, ResizeError> {
        self.resize(None, None).await
    }

    /// Creates the VM: `Idle` → `Creating`, start, agent ready, `Info`, → `Created`.
    /// [`Shim::start`] then makes it `Running`.
    ///
    /// The configuration is validated first; an invalid one changes nothing. On failure
    /// every cleanup phase runs, the shim returns to `Idle`, and the error names the failed
    /// step. Cancel-safe: dropping the future tears down what it started (on a task of its
    /// own) and returns the shim to `Idle`, and a concurrent [`Shim::shutdown`] completes.
    pub async fn create(&self) -> Result<Created, CreateError> {
        self.create_with(None).await
    }

    /// [`Shim::create`] with a container: its rootfs is shared into the VM before it
    /// starts (through [`ShimConfig::rootfs_transport`]), and once the agent answers, the
    /// container is created with its first process held before `execve` and its stdio
    /// attached to `io`. `Created` then means the container is created; [`Shim::start`]
    /// runs its process. The spec is validated first: an invalid one changes nothing.
    pub async fn create_container(
        &self,
        spec: ContainerSpec,
        io: ProcessIo,
    ) -> Result<Created, CreateError> {
        spec.validate().map_err(CreateError::Spec)?;
        self.create_with(Some((spec, io))).await
    }

    async fn create_with(
        &self,
        container: Option<(ContainerSpec, ProcessIo)>,
    ) -> Result<Created, CreateError> {
        let shared = &self.inner.shared;
        shared.config.validate().map_err(CreateError::Config)?;
        if let Err(e) = shared.sm.try_start_creating() {
            return Err(match e.observed() {
                ShimState::Creating => CreateError::CreationInProgress,
                ShimState::Created | ShimState::Running => CreateError::AlreadyCreated,
                ShimState::Deleting => CreateError::Deleting,
                ShimState::Idle | ShimState::ShuttingDown => CreateError::ShuttingDown,
            });
        }
        // A new creation is not an intentional shutdown, unless a shutdown came in since.
        shared.sm.set_intentional_shutdown(false);
        if shared.sm.is_shutting_down() {
            shared.sm.set_intentional_shutdown(true);
        }
        let session = Session::new(Arc::clone(shared), shared.config.spec(shared.id.clone()));
        {
            // Under the slot's lock, so a shutdown either sees this session (and tears it
            // down) or has already installed its own (and this creation stops here).
            let mut slot = lock(&self.inner.session);
            if shared.sm.is_shutting_down() {
                drop(slot);
                let _ = shared.sm.try_mark_creation_failed();
                return Err(CreateError::ShutDownDuringCreate);
            }
            *slot = Some(Arc::clone(&session));
        }
        let mut guard = CancelGuard {
            shim: self.clone(),
            session: Some(Arc::clone(&session)),
        };
        let result = self.create_in(&session, container).await;
        // The guard stays armed through the failure handling below: if this future is
        // dropped there, it finishes the job (every step of it is idempotent).
        let outcome = match result {
            Ok(created) => Ok(created),
            Err(Failure::Creation(reason, error)) => {
                self.fail_creation(&session, reason).await;
                Err(Self::creation_error(&session, error))
            }
            Err(Failure::Crashed) => {
                // A shutdown or the VM's exit moved the shim to ShuttingDown just as it was
                // created; whoever claimed the teardown runs it (a shutdown that has not
                // claimed it yet finds it claimed in its name).
                session.mark_final();
                let _ = session.claim(Reason::Shutdown);
                let _ = session.tear_down().await;
                Err(Self::creation_error(
                    &session,
                    CreateError::ShutDownDuringCreate,
                ))
            }
        };
        guard.session = None;
        outcome
    }

    async fn create_in(
        &self,
        session: &Arc<Session>,
        container: Option<(ContainerSpec, ProcessIo)>,
    ) -> Result<Created, Failure> {
        let shared = &self.inner.shared;
        let fail = |e| Failure::Creation(Reason::CreateFailed, e);
        let rootfs = container.as_ref().map(|(spec, _)| spec.clone());
        let vm = match session.spawn_start(rootfs).await {
            Ok(Ok(vm)) => vm,
            Ok(Err(e)) => return Err(fail(e)),
            Err(_) => return Err(fail(CreateError::StartPanicked)),
        };
        let claimed = || Failure::Creation(Reason::CreateFailed, CreateError::ShutDownDuringCreate);
        let ready = match session.until_claimed(vm.wait_ready()).await {
            None => return Err(claimed()),
            Some(Ok(ready)) => ready,
            Some(Err(BootError::ExitedBeforeReady { exit, console_tail })) => {
                // An exit nobody asked for: claim it as such (or find the watcher did).
                let _ = session.claim_exit(exit.clone());
                return Err(Failure::Creation(
                    Reason::ExitedDuringBoot,
                    CreateError::Boot(BootError::ExitedBeforeReady { exit, console_tail }),
                ));
            }
            Some(Err(e)) => return Err(fail(CreateError::Boot(e))),
        };
        session.set_ready();
        let after_ready = Instant::now();
        let config = &shared.config;
        let client = session
            .until_claimed(dial_with_retry(
                &vm.agent_address(),
                config.rpc_timeout,
                config.dial_retry,
            ))
            .await
            .ok_or_else(claimed)?
            .map_err(|e| fail(CreateError::Agent(e)))?;
        let first_rpc = ready + after_ready.elapsed();
        if !session.adopt(&client, true) {
            // The teardown claimed the session and closed its connections while this one
            // was dialled; dropping `client` closes it.
            return Err(claimed());
        }
        let info = session
            .until_claimed(client.info())
            .await
            .ok_or_else(claimed)?
            .map_err(|e| fail(CreateError::Info(e)))?;
        let container_pid = match container {
            None => None,
            Some((spec, io)) => Some(
                self.create_container_in(session, &vm, &client, spec, io)
                    .await?,
            ),
        };
        // The agent answered; the VM may still have died since.
        let exited = vm.exit_watch().borrow().clone();
        if let Some(exit) = exited {
            let _ = session.claim_exit(exit.clone());
            let cause = session
                .cause
                .get()
                .cloned()
                .unwrap_or_else(|| ExitCause::new(exit, false));
            return Err(Failure::Creation(
                Reason::ExitedDuringBoot,
                CreateError::VmExited(cause),
            ));
        }
        let timings = BootTimings {
            ready,
            ready_to_first_rpc: first_rpc.saturating_sub(ready),
            first_rpc,
        };
        shared.events.send(ShimEvent::Booted(timings));
        if session.state.try_publish().is_err() {
            return Err(claimed());
        }
        session.start_hotplug(Arc::clone(&vm), client.clone());
        if shared.sm.try_mark_created().is_err() {
            // A shutdown (or the exit watcher) moved the shim to ShuttingDown.
            return Err(Failure::Crashed);
        }
        if !session.state.is_up() {
            // The VM exited between the publication and the transition.
            return Err(Failure::Crashed);
        }
        Ok(Created {
            timings,
            info,
            vm_pid: vm.pid(),
            container_pid,
        })
    }

    /// The container part of a creation: `CreateContainer`, then its stdio attached.
    async fn create_container_in(
        &self,
        session: &Arc<Session>,
        vm: &Arc<dyn crate::vm::Vm>,
        client: &AgentClient,
        spec: ContainerSpec,
        io: ProcessIo,
    ) -> Result<u32, Failure> {
        let fail = |e| Failure::Creation(Reason::CreateFailed, e);
        let claimed = || Failure::Creation(Reason::CreateFailed, CreateError::ShutDownDuringCreate);
        let mounts = session
            .rootfs
            .get()
            .map_or(&[][..], |r| r.mounts.as_slice());
        let task = client.task();
        let pid = session
            .until_claimed(task.create_container(&spec, mounts, io.streams()))
            .await
            .ok_or_else(claimed)?
            .map_err(|e| fail(CreateError::Container(e)))?;
        let forwarders = session
            .until_claimed(Forwarders::attach(
                &vm.agent_address(),
                self.inner.shared.config.rpc_timeout,
                &spec.id,
                "",
                io,
            ))
            .await
            .ok_or_else(claimed)?
            .map_err(|e| fail(CreateError::Stdio(e)))?;
        if !session.keep_container(spec.id, task, &forwarders) {
            return Err(claimed());
        }
        Ok(pid)
    }

    /// The error `create` returns: the claimant's story when someone else claimed the
    /// teardown, else `own`.
    fn creation_error(session: &Session, own: CreateError) -> CreateError {
        match (session.reason(), own) {
            (_, e @ CreateError::VmExited(_)) => e,
            (Some(Reason::Shutdown), _) => CreateError::ShutDownDuringCreate,
            (Some(Reason::ExitedDuringBoot | Reason::Crash), CreateError::Boot(e))
                if !matches!(e, BootError::ExitedBeforeReady { .. }) =>
            {
                Self::exit_error(session).unwrap_or(CreateError::Boot(e))
            }
            (Some(Reason::ExitedDuringBoot | Reason::Crash), CreateError::ShutDownDuringCreate) => {
                Self::exit_error(session).unwrap_or(CreateError::ShutDownDuringCreate)
            }
            (_, e) => e,
        }
    }

    fn exit_error(session: &Session) -> Option<CreateError> {
        let cause = session.cause.get()?.clone();
        Some(if session.was_ready() {
            CreateError::VmExited(cause)
        } else {
            CreateError::Boot(BootError::ExitedBeforeReady {
                console_tail: session.console_tail(),
                exit: crate::vm::ExitInfo {
                    status: cause.status,
                    shutdown_reason: cause.shutdown_reason,
                    guest_panicked: cause.guest_panicked,
                    helper_died: cause.helper_died,
                },
            })
        })
    }

    /// A creation failed (or was dropped): claim or join the teardown, then back to `Idle`
    /// unless a shutdown came in.
    async fn fail_creation(&self, session: &Arc<Session>, reason: Reason) {
        let _ = session.claim(reason);
        let _ = session.tear_down().await;
        let shared = &self.inner.shared;
        // Under the slot's lock: back to Idle and the session gone together, or — when a
        // shutdown came in — the session stays for the shutdown to join (it ends the stream).
        let mut slot = lock(&self.inner.session);
        if shared.sm.try_mark_creation_failed().is_ok()
            && slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, session))
        {
            *slot = None;
            lock(&self.inner.last_cause).clone_from(&session.cause.get().cloned());
        }
    }

    /// Starts the created VM: `Created` → `Running`. Refused (state unchanged) from any
    /// other state. A crash or shutdown after the transition is handled like any crash or
    /// shutdown of a running shim.
    ///
    /// With a container, its first process is let run (the agent's `Start`) before the
    /// transition; if that fails the shim stays `Created` and the error says why. Starts
    /// are serialized: a second concurrent start gets [`StartError::AlreadyRunning`].
    pub async fn start(&self) -> Result<(), StartError> {
        let shared = &self.inner.shared;
        let refused = |state| match state {
            ShimState::Idle => StartError::NotCreated,
            ShimState::Creating => StartError::CreationInProgress,
            ShimState::Running => StartError::AlreadyRunning,
            ShimState::Deleting => StartError::Deleting,
            ShimState::Created | ShimState::ShuttingDown => StartError::ShuttingDown,
        };
        let _one_at_a_time = self.inner.starting.lock().await;
        let state = shared.sm.state();
        if state != ShimState::Created {
            return Err(refused(state));
        }
        if let Some((id, task)) = self.session().and_then(|s| s.container_task()) {
            task.start(&id).await.map_err(StartError::Container)?;
        }
        if let Err(e) = shared.sm.try_start() {
            return Err(refused(e.observed()));
        }
        Ok(())
    }

    /// Deletes the VM: `Created` or `Running` → `Deleting`, every cleanup phase, →
    /// `ShuttingDown`.
    /// Returns the cleanup report (check [`CleanupReport::has_errors`]). Sets the
    /// intentional-shutdown flag. If the VM crashed meanwhile, this joins the crash's
    /// teardown.
    pub async fn delete(&self) -> Result<ShimReport, DeleteError> {
        let shared = &self.inner.shared;
        if let Err(e) = shared.sm.try_start_deleting() {
            return Err(match e.observed() {
                ShimState::Idle => DeleteError::NotCreated,
                ShimState::Creating => DeleteError::CreationInProgress,
                ShimState::Deleting => DeleteError::AlreadyDeleting,
                ShimState::Created | ShimState::Running | ShimState::ShuttingDown => {
                    DeleteError::ShuttingDown
                }
            });
        }
        shared.sm.set_intentional_shutdown(true);
        // A Created or Running shim holds the session that created it.
        let Some(session) = self.session() else {
            return Err(DeleteError::NotCreated);
        };
        session.mark_final();
        let _ = session.claim(Reason::Delete);
        let report = session.tear_down().await;
        let _ = shared.sm.try_shut_down();
        shared.events.close();
        Ok(report)
    }

    /// Shuts the shim down from any state: sets the intentional-shutdown flag, →
    /// `ShuttingDown`, runs every cleanup phase (or joins the teardown in progress, which
    /// includes stopping a VM still being started), and returns the report. Idempotent:
    /// later calls return the same report.
    pub async fn shutdown(&self) -> ShimReport {
        let shared = &self.inner.shared;
        let _ = shared.sm.try_shut_down();
        shared.sm.set_intentional_shutdown(true);
        let session = {
            let mut slot = lock(&self.inner.session);
            if let Some(s) = slot.as_ref() {
                Arc::clone(s)
            } else {
                // Nothing was created: a session with no VM whose phases end the stream.
                let s =
                    Session::empty_final(Arc::clone(shared), shared.config.spec(shared.id.clone()));
                *slot = Some(Arc::clone(&s));
                s
            }
        };
        session.mark_final();
        let _ = session.claim(Reason::Shutdown);
        let report = session.tear_down().await;
        shared.events.close();
        report
    }
}

/// How `create_in` failed.
enum Failure {
    /// Before the shim went `Created`: claim (for this reason) or join, then `Idle`.
    Creation(Reason, CreateError),
    /// After: the crash (or shutdown) that owns the teardown moves the shim on.
    Crashed,
}

impl Session {
    fn console_tail(&self) -> String {
        let Some(path) = self.vm.get().and_then(|vm| vm.console_log()) else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(30).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<Shim>();
    let _ = SessionState::Booting;
}
