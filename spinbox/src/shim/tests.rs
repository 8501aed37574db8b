//! The facade's races and faults on the fake backend (no QEMU): each test asserts the final
//! state, the report, the event sequence and the exit cause. Races run on a multi-thread
//! runtime with the racers on separate tasks.

use super::*;
use crate::hotplug::ResizeError;
use crate::vm::fake::{FakeBackend, FakeScript, FakeVm};
use crate::vm::stop::EscalationPolicy;
use lifecycle_core::{PhaseKind, PhaseOutcome};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(10);

struct Rig {
    shim: Shim,
    backend: Arc<FakeBackend>,
    events: EventReceiver,
    root: tempfile::TempDir,
}

fn rig(script: FakeScript) -> Rig {
    rig_with(script, |_| {})
}

fn rig_with(script: FakeScript, tweak: impl FnOnce(&mut ShimConfig)) -> Rig {
    let root = tempfile::tempdir().unwrap();
    let mut config = ShimConfig {
        state_root: root.path().to_owned(),
        start_timeout: Duration::from_secs(5),
        rpc_timeout: Duration::from_secs(2),
        shutdown: EscalationPolicy {
            graceful: Duration::from_millis(500),
            ..EscalationPolicy::default()
        },
        ..ShimConfig::default()
    };
    tweak(&mut config);
    let backend = Arc::new(FakeBackend::new(script));
    let shim = Shim::new(
        VmId::new("vm1").unwrap(),
        config,
        Arc::clone(&backend) as Arc<dyn VmBackend>,
    );
    let events = shim.events().unwrap();
    Rig {
        shim,
        backend,
        events,
        root,
    }
}

impl Rig {
    /// Every event until the stream ends.
    async fn drain(&mut self) -> Vec<ShimEvent> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(BOUND, self.events.recv()).await {
                Ok(Some(e)) => out.push(e),
                Ok(None) => return out,
                Err(tokio::time::error::Elapsed { .. }) => {
                    panic!("the stream did not end; so far: {out:#?}")
                }
            }
        }
    }

    /// The events available now (the stream stays open).
    fn pending(&mut self) -> Vec<ShimEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    fn vm(&self) -> Arc<FakeVm> {
        self.backend.last_vm().expect("a VM was started")
    }

    fn vm_dir_exists(&self) -> bool {
        self.root.path().join("vm1").exists()
    }

    /// `create` on a task of its own.
    fn spawn_create(&self) -> tokio::task::JoinHandle<Result<Created, CreateError>> {
        let shim = self.shim.clone();
        tokio::spawn(async move { shim.create().await })
    }

    /// `create` then `start`: the shim is `Running`.
    async fn create_started(&self) {
        self.shim.create().await.unwrap();
        assert_eq!(self.shim.state().state, ShimState::Created);
        self.shim.start().await.unwrap();
        assert_eq!(self.shim.state().state, Running);
    }

    /// Waits (bounded) until `done` holds.
    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while !done(self) {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn vm_started(r: &Rig) -> bool {
    r.backend.last_vm().is_some()
}

fn start_called(r: &Rig) -> bool {
    r.backend.starts() > 0
}

fn states(events: &[ShimEvent]) -> Vec<(ShimState, ShimState)> {
    events
        .iter()
        .filter_map(|e| match e {
            ShimEvent::State { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// `(phase, started?)` for starts and `(phase, outcome)` names for finishes, in order.
fn phases(events: &[ShimEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ShimEvent::PhaseStarted { phase, .. } => Some(format!("{phase}:start")),
            ShimEvent::PhaseFinished { phase, outcome, .. } => Some(format!(
                "{phase}:{}",
                match outcome {
                    PhaseOutcome::Ok => "ok",
                    PhaseOutcome::Failed(_) => "failed",
                    PhaseOutcome::TimedOut(_) => "timed_out",
                    PhaseOutcome::Panicked(_) => "panicked",
                    PhaseOutcome::Cancelled => "cancelled",
                    PhaseOutcome::Skipped => "skipped",
                    PhaseOutcome::AlreadyDone(_) => "already_done",
                }
            )),
            _ => None,
        })
        .collect()
}

/// All seven phases, started and finished ok, in order.
fn all_phases_ok() -> Vec<String> {
    CleanupPhase::ALL
        .iter()
        .flat_map(|p| [format!("{p}:start"), format!("{p}:ok")])
        .collect()
}

fn exited(events: &[ShimEvent]) -> Vec<ExitCause> {
    events
        .iter()
        .filter_map(|e| match e {
            ShimEvent::VmExited(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

use ShimState::{Creating, Deleting, Idle, Running, ShuttingDown};

/// `ShimState::Created`, not imported: `Created` is also `create`'s result type.
const CREATED: ShimState = ShimState::Created;

/// The states of a creation that succeeded and a start, then a shutdown.
const SHUT_DOWN_AFTER_START: [(ShimState, ShimState); 4] = [
    (Idle, Creating),
    (Creating, CREATED),
    (CREATED, Running),
    (Running, ShuttingDown),
];

/// The states of a creation that failed.
const FAILED_CREATE: [(ShimState, ShimState); 2] = [(Idle, Creating), (Creating, Idle)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_delete_runs_every_phase_once_and_ends_the_stream() {
    let mut r = rig(FakeScript::default());
    let created = r.shim.create().await.unwrap();
    assert_eq!(created.info.kernel_release, "fake");
    assert_eq!(r.shim.state().state, CREATED);
    r.shim.start().await.unwrap();
    assert_eq!(r.shim.state().state, Running);
    assert!(r.vm_dir_exists());
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [
            (Idle, Creating),
            (Creating, CREATED),
            (CREATED, Running),
            (Running, Deleting),
            (Deleting, ShuttingDown)
        ]
    );
    assert_eq!(phases(&events), all_phases_ok());
    // Every phase does real work now (network_cleanup releases a network when the VM has
    // one): none is reported as a no-op. The stream's last event is event_close's.
    assert!(!events.iter().any(|e| matches!(
        e,
        ShimEvent::PhaseStarted {
            kind: PhaseKind::Noop,
            ..
        }
    )));
    assert!(matches!(
        events.last(),
        Some(ShimEvent::PhaseFinished {
            phase: CleanupPhase::EventClose,
            ..
        })
    ));
    assert!(events.iter().any(|e| matches!(e, ShimEvent::Booted(_))));
    let cause = r.shim.exit_cause().unwrap();
    assert!(cause.intentional && cause.status.success(), "{cause}");
    assert_eq!(cause.shutdown_reason.as_deref(), Some("guest-shutdown"));
    assert_eq!(r.vm().stops(), 1);
    assert!(!r.vm_dir_exists(), "mount_cleanup left the VM's directory");
    assert!(r.shim.state().intentional_shutdown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_of_an_idle_shim_ends_the_stream_without_a_vm() {
    let mut r = rig(FakeScript::default());
    let report = r.shim.shutdown().await;
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    assert_eq!(states(&events), [(Idle, ShuttingDown)]);
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(r.backend.starts(), 0);
    assert!(r.shim.exit_cause().is_none());
    // Idempotent: the same report again, no new phase run.
    let again = r.shim.shutdown().await;
    assert_eq!(again.phases().len(), report.phases().len());
    assert!(matches!(
        r.shim.create().await,
        Err(CreateError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_returns_to_idle_and_the_next_create_works() {
    let mut r = rig(FakeScript {
        fail_start: true,
        ..FakeScript::default()
    });
    let err = r.shim.create().await.unwrap_err();
    assert!(
        matches!(err, CreateError::Boot(BootError::Start { .. })),
        "{err:?}"
    );
    assert_eq!(r.shim.state().state, Idle);
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    assert_eq!(phases(&events), all_phases_ok());
    assert!(r.shim.exit_cause().is_none());
    // The stream stays open and a new creation succeeds.
    r.backend.set_script(FakeScript::default());
    r.create_started().await;
    let report = r.shim.shutdown().await;
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    assert_eq!(states(&events), SHUT_DOWN_AFTER_START);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_gets_ready_fails_in_bounded_time_and_leaves_nothing() {
    let mut r = rig_with(
        FakeScript {
            never_ready: true,
            ..FakeScript::default()
        },
        |c| c.start_timeout = Duration::from_millis(300),
    );
    let err = r.shim.create().await.unwrap_err();
    assert!(
        matches!(err, CreateError::Boot(BootError::ReadyTimeout { .. })),
        "{err:?}"
    );
    assert_eq!(r.shim.state().state, Idle);
    assert_eq!(r.vm().stops(), 1);
    assert!(!r.vm_dir_exists());
    assert_eq!(r.backend.running(), 0);
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    assert_eq!(phases(&events), all_phases_ok());
    // The VM was stopped by the shim: an intentional exit.
    assert!(r.shim.exit_cause().unwrap().intentional);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_exiting_while_booting_fails_the_creation_with_its_cause() {
    let mut r = rig(FakeScript {
        exit_during_boot: true,
        ready_delay: Duration::from_millis(50),
        ..FakeScript::default()
    });
    let err = r.shim.create().await.unwrap_err();
    let CreateError::Boot(BootError::ExitedBeforeReady { exit, .. }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(exit.status.code(), Some(1));
    assert!(exit.guest_panicked);
    assert_eq!(r.shim.state().state, Idle);
    let cause = r.shim.exit_cause().unwrap();
    assert!(!cause.intentional && cause.guest_panicked);
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    let exits = exited(&events);
    assert_eq!(exits.len(), 1, "{events:#?}");
    assert!(!exits[0].intentional && exits[0].guest_panicked);
    assert_eq!(phases(&events), all_phases_ok());
    assert!(!r.vm_dir_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_exiting_after_the_agent_answered_never_reaches_created() {
    let mut r = rig(FakeScript {
        exit_on_info: true,
        ..FakeScript::default()
    });
    let err = r.shim.create().await.unwrap_err();
    let CreateError::VmExited(cause) = &err else {
        panic!("{err:?}");
    };
    assert!(!cause.intentional);
    assert_eq!(cause.shutdown_reason.as_deref(), Some("guest-reset"));
    assert_eq!(r.shim.state().state, Idle);
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    assert!(!events.iter().any(|e| matches!(
        e,
        ShimEvent::State {
            to: CREATED | Running,
            ..
        }
    )));
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(r.backend.running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_running_shuts_down_with_the_cause_and_no_delete() {
    let mut r = rig(FakeScript::default());
    r.create_started().await;
    r.vm()
        .crash(ExitStatus::from_raw(9), Some("host-signal"), false);
    let events = r.drain().await;
    assert_eq!(states(&events), SHUT_DOWN_AFTER_START);
    let exits = exited(&events);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].status.signal(), Some(9));
    assert!(!exits[0].intentional);
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(r.shim.exit_cause().unwrap(), exits[0]);
    assert!(!r.shim.state().intentional_shutdown);
    assert!(!r.vm_dir_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_a_crash_is_refused_and_shutdown_returns_the_crash_report() {
    let mut r = rig(FakeScript::default());
    r.create_started().await;
    r.vm().crash(ExitStatus::from_raw(9), None, false);
    let events = r.drain().await;
    assert_eq!(exited(&events).len(), 1);
    assert!(matches!(
        r.shim.delete().await,
        Err(DeleteError::ShuttingDown)
    ));
    let report = r.shim.shutdown().await;
    assert!(!report.has_errors(), "{report}");
    assert_eq!(r.vm().stops(), 1);
    let cause = r.shim.exit_cause().unwrap();
    assert!(
        !cause.intentional,
        "a shutdown after the crash does not rewrite its cause"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_deletes_one_runs_the_other_is_refused() {
    let mut r = rig(FakeScript {
        stop_delay: Duration::from_millis(100),
        ..FakeScript::default()
    });
    r.create_started().await;
    let (a, b) = (r.shim.clone(), r.shim.clone());
    let ta = tokio::spawn(async move { a.delete().await });
    let tb = tokio::spawn(async move { b.delete().await });
    let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
    let (ok, refused): (Vec<_>, Vec<_>) = [ra, rb].into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1);
    assert!(matches!(
        refused[0],
        Err(DeleteError::AlreadyDeleting | DeleteError::ShuttingDown)
    ));
    assert_eq!(r.vm().stops(), 1);
    let events = r.drain().await;
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(states(&events).last(), Some(&(Deleting, ShuttingDown)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_racing_a_create_is_refused_until_it_is_created() {
    let mut r = rig(FakeScript {
        ready_delay: Duration::from_millis(200),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    let deleter = r.shim.clone();
    let delete = tokio::spawn(async move {
        loop {
            match deleter.delete().await {
                Err(DeleteError::NotCreated | DeleteError::CreationInProgress) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                other => return other,
            }
        }
    });
    create.await.unwrap().unwrap();
    let report = delete.await.unwrap().unwrap();
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [
            (Idle, Creating),
            (Creating, CREATED),
            (CREATED, Deleting),
            (Deleting, ShuttingDown)
        ]
    );
    assert!(r.shim.exit_cause().unwrap().intentional);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_boot_stops_the_booting_vm_and_fails_the_create() {
    let mut r = rig(FakeScript {
        ready_delay: Duration::from_secs(30),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    r.wait_for("the VM to start", vm_started).await;
    let report = tokio::time::timeout(BOUND, r.shim.shutdown())
        .await
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    let err = create.await.unwrap().unwrap_err();
    assert!(matches!(err, CreateError::ShutDownDuringCreate), "{err:?}");
    assert_eq!(r.shim.state().state, ShuttingDown);
    assert!(r.shim.state().intentional_shutdown);
    assert_eq!(r.vm().stops(), 1);
    assert_eq!(r.backend.running(), 0);
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [(Idle, Creating), (Creating, ShuttingDown)]
    );
    assert_eq!(phases(&events), all_phases_ok());
    assert!(r.shim.exit_cause().unwrap().intentional);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_the_backend_is_still_starting_waits_and_stops_it() {
    let mut r = rig(FakeScript {
        start_delay: Duration::from_millis(200),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    r.wait_for("the start to begin", start_called).await;
    let report = r.shim.shutdown().await;
    assert!(!report.has_errors(), "{report}");
    assert!(matches!(
        create.await.unwrap(),
        Err(CreateError::ShutDownDuringCreate)
    ));
    assert_eq!(
        r.vm().stops(),
        1,
        "the VM started after the claim was not stopped"
    );
    assert_eq!(r.backend.running(), 0);
    assert!(!r.vm_dir_exists());
    let events = r.drain().await;
    assert_eq!(phases(&events), all_phases_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_create_tears_down_and_returns_to_idle() {
    let mut r = rig(FakeScript {
        ready_delay: Duration::from_secs(30),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    r.wait_for("the VM to start", vm_started).await;
    create.abort();
    assert!(create.await.unwrap_err().is_cancelled());
    r.wait_for("the shim to return to Idle", |r| {
        r.shim.state().state == Idle
    })
    .await;
    assert_eq!(r.vm().stops(), 1);
    assert_eq!(r.backend.running(), 0);
    assert!(!r.vm_dir_exists());
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    assert_eq!(phases(&events), all_phases_ok());
    // The shim is usable again, and its shutdown completes.
    let report = tokio::time::timeout(BOUND, r.shim.shutdown())
        .await
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    r.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_dropped_during_start_then_shutdown_at_once_leaves_nothing() {
    let mut r = rig(FakeScript {
        start_delay: Duration::from_millis(100),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    r.wait_for("the start to begin", start_called).await;
    create.abort();
    let report = tokio::time::timeout(BOUND, r.shim.shutdown())
        .await
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    // The start completes on its own task; what it started is stopped.
    r.wait_for("the started VM to be stopped", |r| {
        r.backend.last_vm().is_some_and(|vm| vm.stops() > 0)
    })
    .await;
    assert_eq!(r.backend.running(), 0);
    assert_eq!(r.shim.state().state, ShuttingDown);
    r.drain().await;
    assert!(!r.vm_dir_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vm_exiting_during_delete_is_joined_not_fought() {
    let mut r = rig(FakeScript {
        stop_delay: Duration::from_millis(200),
        ..FakeScript::default()
    });
    r.create_started().await;
    let deleter = r.shim.clone();
    let delete = tokio::spawn(async move { deleter.delete().await });
    r.wait_for("the stop to begin", |r| r.vm().stops() > 0)
        .await;
    r.vm()
        .crash(ExitStatus::from_raw(9), Some("host-signal"), false);
    let report = delete.await.unwrap().unwrap();
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    // The exit watcher lost the claim to the delete: no crash event, no second teardown.
    assert!(exited(&events).is_empty(), "{events:#?}");
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(states(&events).last(), Some(&(Deleting, ShuttingDown)));
    let cause = r.shim.exit_cause().unwrap();
    assert!(cause.intentional);
    assert_eq!(cause.status.signal(), Some(9));
    assert_eq!(r.vm().stops(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_ignores_shutdown_is_forced_off() {
    let mut r = rig(FakeScript {
        ignore_shutdown: true,
        ..FakeScript::default()
    });
    r.create_started().await;
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    let cause = r.shim.exit_cause().unwrap();
    assert_eq!(cause.status.signal(), Some(9));
    assert!(cause.intentional);
    let events = r.drain().await;
    assert_eq!(phases(&events), all_phases_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stop_is_reported_and_the_vm_files_are_kept() {
    let mut r = rig(FakeScript {
        fail_stop: true,
        ..FakeScript::default()
    });
    r.create_started().await;
    let report = r.shim.delete().await.unwrap();
    assert_eq!(
        report.failed_phases(),
        [CleanupPhase::VmShutdown, CleanupPhase::MountCleanup]
    );
    let events = r.drain().await;
    let p = phases(&events);
    assert!(p.contains(&"vm_shutdown:failed".to_owned()), "{p:?}");
    assert!(p.contains(&"event_close:ok".to_owned()), "{p:?}");
    assert_eq!(r.shim.state().state, ShuttingDown);
    assert!(
        r.vm_dir_exists(),
        "files of a VM that may still run were removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shutdowns_share_one_teardown() {
    let mut r = rig(FakeScript {
        stop_delay: Duration::from_millis(50),
        ..FakeScript::default()
    });
    r.create_started().await;
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let shim = r.shim.clone();
            tokio::spawn(async move { shim.shutdown().await })
        })
        .collect();
    for c in callers {
        let report = c.await.unwrap();
        assert!(!report.has_errors(), "{report}");
    }
    assert_eq!(r.vm().stops(), 1);
    let events = r.drain().await;
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(states(&events), SHUT_DOWN_AFTER_START);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_admit_one() {
    let mut r = rig(FakeScript {
        ready_delay: Duration::from_millis(50),
        ..FakeScript::default()
    });
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let shim = r.shim.clone();
            tokio::spawn(async move { shim.create().await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CreateError::CreationInProgress | CreateError::AlreadyCreated) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(r.backend.starts(), 1);
    assert!(!r.shim.shutdown().await.has_errors());
    r.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused_before_anything_starts() {
    let mut r = rig_with(FakeScript::default(), |c| c.memory_mib = 1);
    let err = r.shim.create().await.unwrap_err();
    assert!(matches!(err, CreateError::Config(_)), "{err:?}");
    assert_eq!(r.shim.state().state, Idle);
    assert_eq!(r.backend.starts(), 0);
    assert!(r.pending().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_is_refused_at_once_unless_created_or_running() {
    let r = rig(FakeScript::default());
    assert!(matches!(
        r.shim.agent().await,
        Err(AgentError::NotRunning(Idle))
    ));
    r.shim.create().await.unwrap();
    let client = r.shim.agent().await.unwrap();
    client.ping().await.unwrap();
    r.shim.start().await.unwrap();
    let running = r.shim.agent().await.unwrap();
    running.ping().await.unwrap();
    assert!(!r.shim.shutdown().await.has_errors());
    let started = std::time::Instant::now();
    assert!(matches!(
        r.shim.agent().await,
        Err(AgentError::NotRunning(ShuttingDown))
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
    // conn_close closed the connections handed out.
    assert!(client.ping().await.is_err());
    assert!(running.ping().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dialled_across_conn_close_is_not_kept() {
    // The real-QEMU race: a dial (by `create` or `agent`) answered just after `conn_close`
    // ran. Its clone must not be kept by a session nobody will tear down again.
    let r = rig(FakeScript::default());
    r.create_started().await;
    let session = r.shim.session().expect("a session");
    let late = r.shim.agent().await.unwrap();
    // Before the teardown: the shim's connection from `create` (kept twice, as a client and
    // as the control connection) and this one.
    assert_eq!(session.connections_held(), 3);
    assert!(!r.shim.shutdown().await.has_errors());
    assert_eq!(session.connections_held(), 0);
    assert!(!session.adopt(&late, true));
    assert!(!session.adopt(&late, false));
    assert_eq!(session.connections_held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_vm_directory_is_refused_and_left_untouched() {
    let r = rig(FakeScript::default());
    let theirs = r.root.path().join("vm1");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("console.log"), b"another VM's").unwrap();
    let err = r.shim.create().await.unwrap_err();
    assert!(
        matches!(err, CreateError::Boot(BootError::AlreadyExists(_))),
        "{err:?}"
    );
    assert_eq!(
        std::fs::read(theirs.join("console.log")).unwrap(),
        b"another VM's"
    );
    assert_eq!(r.shim.state().state, Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_dropped_after_the_agent_answered_the_dial_tears_down() {
    let mut r = rig(FakeScript {
        info_delay: Duration::from_secs(30),
        ..FakeScript::default()
    });
    let create = r.spawn_create();
    // The dial was answered (it pings) and `Info` is in flight.
    r.wait_for("the Info call", |r| {
        r.backend.last_vm().is_some_and(|vm| vm.info_calls() > 0)
    })
    .await;
    create.abort();
    r.wait_for("the shim to return to Idle", |r| {
        r.shim.state().state == Idle
    })
    .await;
    assert_eq!(r.vm().stops(), 1);
    assert_eq!(r.backend.running(), 0);
    assert!(!r.vm_dir_exists());
    let events = r.pending();
    assert_eq!(states(&events), FAILED_CREATE);
    assert_eq!(phases(&events), all_phases_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_shutdown_still_completes_and_a_later_call_gets_its_report() {
    let mut r = rig(FakeScript {
        stop_delay: Duration::from_millis(200),
        ..FakeScript::default()
    });
    r.create_started().await;
    let shim = r.shim.clone();
    let first = tokio::spawn(async move { shim.shutdown().await });
    r.wait_for("the stop to begin", |r| r.vm().stops() > 0)
        .await;
    first.abort();
    let report = tokio::time::timeout(BOUND, r.shim.shutdown())
        .await
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    assert_eq!(r.vm().stops(), 1);
    assert!(r.vm().has_exited());
    let events = r.drain().await;
    assert_eq!(phases(&events), all_phases_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_start_fails_the_create_without_hanging() {
    let mut r = rig(FakeScript {
        panic_start: true,
        ..FakeScript::default()
    });
    let err = tokio::time::timeout(BOUND, r.shim.create())
        .await
        .expect("create hung on a panicked start")
        .unwrap_err();
    assert!(matches!(err, CreateError::StartPanicked), "{err:?}");
    assert_eq!(r.shim.state().state, Idle);
    assert_eq!(phases(&r.pending()), all_phases_ok());
    let report = tokio::time::timeout(BOUND, r.shim.shutdown())
        .await
        .unwrap();
    assert!(!report.has_errors(), "{report}");
    r.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_each_wrong_state_is_refused_with_its_error_and_changes_nothing() {
    let mut r = rig(FakeScript {
        ready_delay: Duration::from_millis(200),
        stop_delay: Duration::from_millis(300),
        ..FakeScript::default()
    });
    assert!(matches!(r.shim.start().await, Err(StartError::NotCreated)));
    assert_eq!(r.shim.state().state, Idle);

    let create = r.spawn_create();
    r.wait_for("the VM to start", vm_started).await;
    assert_eq!(r.shim.state().state, Creating);
    assert!(matches!(
        r.shim.start().await,
        Err(StartError::CreationInProgress)
    ));
    assert_eq!(r.shim.state().state, Creating);
    create.await.unwrap().unwrap();
    assert_eq!(r.shim.state().state, CREATED);

    r.shim.start().await.unwrap();
    assert!(matches!(
        r.shim.start().await,
        Err(StartError::AlreadyRunning)
    ));
    assert_eq!(r.shim.state().state, Running);

    let deleter = r.shim.clone();
    let delete = tokio::spawn(async move { deleter.delete().await });
    r.wait_for("the stop to begin", |r| r.vm().stops() > 0)
        .await;
    assert_eq!(r.shim.state().state, Deleting);
    assert!(matches!(r.shim.start().await, Err(StartError::Deleting)));
    assert_eq!(r.shim.state().state, Deleting);
    let report = delete.await.unwrap().unwrap();
    assert!(!report.has_errors(), "{report}");

    assert_eq!(r.shim.state().state, ShuttingDown);
    assert!(matches!(
        r.shim.start().await,
        Err(StartError::ShuttingDown)
    ));
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [
            (Idle, Creating),
            (Creating, CREATED),
            (CREATED, Running),
            (Running, Deleting),
            (Deleting, ShuttingDown)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_created_runs_every_phase_once_without_a_start() {
    let mut r = rig(FakeScript::default());
    r.shim.create().await.unwrap();
    assert_eq!(r.shim.state().state, CREATED);
    assert!(matches!(
        r.shim.create().await,
        Err(CreateError::AlreadyCreated)
    ));
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [
            (Idle, Creating),
            (Creating, CREATED),
            (CREATED, Deleting),
            (Deleting, ShuttingDown)
        ]
    );
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(r.vm().stops(), 1);
    assert!(r.shim.exit_cause().unwrap().intentional);
    assert!(r.shim.state().intentional_shutdown);
    assert!(!r.vm_dir_exists());
    assert!(matches!(
        r.shim.start().await,
        Err(StartError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_created_shuts_down_with_the_cause_like_one_while_running() {
    let mut r = rig(FakeScript::default());
    r.shim.create().await.unwrap();
    assert_eq!(r.shim.state().state, CREATED);
    r.vm()
        .crash(ExitStatus::from_raw(9), Some("host-signal"), false);
    let events = r.drain().await;
    assert_eq!(
        states(&events),
        [
            (Idle, Creating),
            (Creating, CREATED),
            (CREATED, ShuttingDown)
        ]
    );
    let exits = exited(&events);
    assert_eq!(exits.len(), 1);
    assert_eq!(exits[0].status.signal(), Some(9));
    assert!(!exits[0].intentional);
    assert_eq!(phases(&events), all_phases_ok());
    assert_eq!(r.shim.exit_cause().unwrap(), exits[0]);
    assert!(!r.shim.state().intentional_shutdown);
    assert!(!r.vm_dir_exists());
    assert!(matches!(
        r.shim.start().await,
        Err(StartError::ShuttingDown)
    ));
    assert!(matches!(
        r.shim.delete().await,
        Err(DeleteError::ShuttingDown)
    ));
}

/// `start`, `delete` and `shutdown` released together on worker threads of their own, many
/// times: whichever order the CASes take, one teardown runs and the outcomes agree with the
/// transitions recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_racing_delete_and_shutdown_agree_on_one_order() {
    let mut started_first = 0;
    for _ in 0..40 {
        let mut r = rig(FakeScript::default());
        r.shim.create().await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(3));
        let (b1, b2, b3) = (Arc::clone(&barrier), Arc::clone(&barrier), barrier);
        let (s1, s2, s3) = (r.shim.clone(), r.shim.clone(), r.shim.clone());
        let start = tokio::spawn(async move {
            b1.wait().await;
            s1.start().await
        });
        let delete = tokio::spawn(async move {
            b2.wait().await;
            s2.delete().await
        });
        let shutdown = tokio::spawn(async move {
            b3.wait().await;
            s3.shutdown().await
        });
        let (start, delete, shutdown) = (
            start.await.unwrap(),
            delete.await.unwrap(),
            shutdown.await.unwrap(),
        );
        assert!(!shutdown.has_errors(), "{shutdown}");
        if let Ok(report) = &delete {
            assert!(!report.has_errors(), "{report}");
        }
        let events = tokio::time::timeout(BOUND, r.drain()).await.unwrap();
        // The observer reports each transition after its CAS, so racing transitions may be
        // sent in either order: compare them as a set.
        let mut seen = states(&events);
        seen.sort_unstable_by_key(|&(from, to)| (from as u8, to as u8));
        let mut expected = vec![(Idle, Creating), (Creating, CREATED)];
        let last = match (&start, &delete) {
            (Ok(()), Ok(_)) => {
                expected.extend([(CREATED, Running), (Running, Deleting)]);
                Deleting
            }
            (Ok(()), Err(DeleteError::ShuttingDown)) => {
                expected.push((CREATED, Running));
                Running
            }
            (Err(StartError::Deleting | StartError::ShuttingDown), Ok(_)) => {
                expected.push((CREATED, Deleting));
                Deleting
            }
            (Err(StartError::ShuttingDown), Err(DeleteError::ShuttingDown)) => CREATED,
            other => panic!("outcomes that no order explains: {other:?}"),
        };
        expected.push((last, ShuttingDown));
        expected.sort_unstable_by_key(|&(from, to)| (from as u8, to as u8));
        assert_eq!(seen, expected, "start {start:?}, delete {delete:?}");
        if start.is_ok() {
            started_first += 1;
        }
        assert_eq!(r.shim.state().state, ShuttingDown);
        assert!(r.shim.state().intentional_shutdown);
        assert_eq!(phases(&events), all_phases_ok());
        assert_eq!(r.vm().stops(), 1);
        assert_eq!(r.backend.running(), 0);
        assert!(!r.vm_dir_exists());
    }
    // Not an assertion on the scheduler, only a record of what the runs covered.
    eprintln!("start won {started_first} of 40 races");
}

// ---------------------------------------------------------------------------------------
// Hotplug (SPEC §12) on the fake backend.
// ---------------------------------------------------------------------------------------

fn with_room(cpus: u16, memory_mib: u32) -> impl FnOnce(&mut ShimConfig) {
    move |c| {
        c.max_cpus = Some(cpus);
        c.max_memory_mib = Some(memory_mib);
        c.hotplug.auto = false;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_resizes_stay_in_the_room_and_pin_the_size() {
    let mut r = rig_with(FakeScript::default(), with_room(4, 1024));
    r.shim.create().await.unwrap();
    let now = r.shim.resources().await.unwrap();
    assert_eq!((now.cpus, now.memory_mib), (1, 256));
    let grown = r.shim.resize(Some(3), Some(300)).await.unwrap();
    // 44 MiB more rounds up to one 128 MiB block.
    assert_eq!((grown.cpus, grown.memory_mib), (3, 384));
    let shrunk = r.shim.resize(Some(2), Some(256)).await.unwrap();
    assert_eq!((shrunk.cpus, shrunk.memory_mib), (2, 256));
    for (cpus, memory) in [
        (Some(5), None),
        (Some(0), None),
        (None, Some(2048)),
        (None, Some(255)),
    ] {
        let e = r.shim.resize(cpus, memory).await.unwrap_err();
        assert!(matches!(e, ResizeError::OutOfRange { .. }), "{e:?}");
    }
    assert!(r
        .vm()
        .hotplug_log()
        .contains(&crate::vm::fake::FakeHotplugEvent::Ended("add_memory")));
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    r.drain().await;
    let e = r.shim.resize(Some(2), None).await.unwrap_err();
    assert!(matches!(e, ResizeError::NotRunning(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_waits_in_hotplug_stop_for_a_resize_in_flight() {
    use crate::vm::fake::FakeHotplugEvent::{Began, Ended, StopBegan};
    let script = FakeScript {
        hotplug_delay: Duration::from_millis(300),
        ..FakeScript::default()
    };
    let mut r = rig_with(script, with_room(2, 256));
    r.shim.create().await.unwrap();
    r.shim.start().await.unwrap();
    let shim = r.shim.clone();
    let resize = tokio::spawn(async move { shim.resize(Some(2), None).await });
    let vm = r.vm();
    tokio::time::timeout(BOUND, async {
        while !vm.hotplug_log().contains(&Began("add_cpu")) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the resize began");
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    assert_eq!(resize.await.unwrap().unwrap().cpus, 2);
    assert_eq!(
        vm.hotplug_log(),
        [Began("add_cpu"), Ended("add_cpu"), StopBegan]
    );
    assert_eq!(phases(&r.drain().await), all_phases_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_controller_grows_a_busy_vm_to_its_maximum_and_stops_with_it() {
    let mut r = rig_with(FakeScript::default(), |c| {
        c.max_cpus = Some(3);
        c.hotplug.cpu = crate::hotplug::Policy {
            interval: Duration::from_millis(20),
            scale_up_stability: 2,
            scale_up_cooldown: Duration::ZERO,
            scale_down: false,
            ..crate::hotplug::Policy::cpu()
        };
    });
    r.shim.create().await.unwrap();
    r.vm().set_cpu_busy_percent(95);
    tokio::time::timeout(BOUND, async {
        while r.shim.resources().await.unwrap().cpus < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the controller grew the VM to 3 vCPUs");
    // A pinned size is left alone: an explicit resize down stays down while still busy.
    r.shim.resize(Some(1), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(r.shim.resources().await.unwrap().cpus, 1);
    let report = r.shim.delete().await.unwrap();
    assert!(!report.has_errors(), "{report}");
    assert_eq!(phases(&r.drain().await), all_phases_ok());
    let log = r.vm().hotplug_log();
    assert_eq!(
        log.last(),
        Some(&crate::vm::fake::FakeHotplugEvent::StopBegan),
        "{log:?}"
    );
}
