//! The shim on a real VM: create → `Created` → start → `Running` → delete → `ShuttingDown`, with the event stream,
//! the cleanup report and the exit cause, and nothing left behind.

mod shim_common;

use lifecycle_core::PhaseOutcome;
use shim_common::{drain, serial, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::shim::{CreateError, DeleteError, ShimEvent, StartError};
use spinbox::state::ShimState;
use tokio::time::timeout;

fn states(events: &[ShimEvent]) -> Vec<(ShimState, ShimState)> {
    events
        .iter()
        .filter_map(|e| match e {
            ShimEvent::State { from, to } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

/// The stream of a create → delete: booted, every phase finished ok (the no-op ones
/// included), `event_close` last, and console lines forwarded.
fn assert_full_teardown_reported(events: &[ShimEvent]) {
    assert!(events.iter().any(|e| matches!(e, ShimEvent::Booted(_))));
    // Every phase is reported, the no-op ones included, each finished ok.
    let finished: Vec<CleanupPhase> = events
        .iter()
        .filter_map(|e| match e {
            ShimEvent::PhaseFinished {
                phase,
                outcome: PhaseOutcome::Ok,
                ..
            } => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(finished, CleanupPhase::ALL);
    assert!(matches!(
        events.last(),
        Some(ShimEvent::PhaseFinished {
            phase: CleanupPhase::EventClose,
            ..
        })
    ));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ShimEvent::Console(line) if !line.is_empty())),
        "the serial console was forwarded"
    );
}

#[test]
fn create_then_delete() {
    serial(|| async {
        let vm = TestVm::new("shim-life");
        let mut events = vm.shim.events().expect("first consumer");
        assert!(vm.shim.events().is_none(), "one consumer only");

        let created = timeout(HANG_GUARD, vm.shim.create())
            .await
            .unwrap()
            .expect("created");
        assert_eq!(vm.shim.state().state, ShimState::Created);
        assert!(
            created.info.kernel_release.ends_with("-amd64"),
            "{:?}",
            created.info
        );
        assert!(created.timings.first_rpc >= created.timings.ready);
        eprintln!(
            "boot: ready {:?}, first agent call {:?} (ready → call {:?})",
            created.timings.ready, created.timings.first_rpc, created.timings.ready_to_first_rpc
        );
        let pid = created.vm_pid.expect("QEMU runs as a process");
        TestVm::assert_alive(pid);
        // The API refuses what the state forbids.
        assert!(matches!(
            vm.shim.create().await,
            Err(CreateError::AlreadyCreated)
        ));
        vm.shim
            .agent()
            .await
            .expect("agent connection")
            .ping()
            .await
            .expect("ping while created");
        vm.shim.start().await.expect("started");
        assert_eq!(vm.shim.state().state, ShimState::Running);
        assert!(matches!(
            vm.shim.start().await,
            Err(StartError::AlreadyRunning)
        ));
        vm.shim
            .agent()
            .await
            .expect("agent connection")
            .ping()
            .await
            .expect("ping while running");

        let report = timeout(HANG_GUARD, vm.shim.delete())
            .await
            .unwrap()
            .expect("deleted");
        eprintln!("{report}");
        assert!(!report.has_errors(), "{report}");
        assert!(matches!(
            report.get(CleanupPhase::VmShutdown).outcome,
            PhaseOutcome::Ok
        ));
        assert_eq!(vm.shim.state().state, ShimState::ShuttingDown);
        assert!(matches!(
            vm.shim.delete().await,
            Err(DeleteError::ShuttingDown)
        ));
        assert!(matches!(
            vm.shim.create().await,
            Err(CreateError::ShuttingDown)
        ));

        let cause = vm.shim.exit_cause().expect("exit recorded");
        assert!(cause.intentional && cause.status.success(), "{cause}");
        assert_eq!(
            cause.shutdown_reason.as_deref(),
            Some("guest-shutdown"),
            "the agent powered off"
        );

        let events = drain(&mut events).await;
        assert_eq!(
            states(&events),
            [
                (ShimState::Idle, ShimState::Creating),
                (ShimState::Creating, ShimState::Created),
                (ShimState::Created, ShimState::Running),
                (ShimState::Running, ShimState::Deleting),
                (ShimState::Deleting, ShimState::ShuttingDown),
            ]
        );
        assert_full_teardown_reported(&events);
        vm.assert_nothing_left().await;
    });
}

#[test]
fn shutdown_of_an_idle_shim_ends_the_stream() {
    serial(|| async {
        let vm = TestVm::new("shim-idle");
        let mut events = vm.shim.events().unwrap();
        assert!(matches!(
            vm.shim.delete().await,
            Err(DeleteError::NotCreated)
        ));
        assert!(matches!(vm.shim.start().await, Err(StartError::NotCreated)));
        let report = vm.shim.shutdown().await;
        assert!(!report.has_errors(), "{report}");
        assert!(vm.shim.state().intentional_shutdown);
        assert_eq!(
            states(&drain(&mut events).await),
            [(ShimState::Idle, ShimState::ShuttingDown)]
        );
        // Idempotent.
        assert!(!vm.shim.shutdown().await.has_errors());
        vm.assert_nothing_left().await;
    });
}
