//! A second, different lifecycle (Firecracker-style, in `tests/src/firecracker.rs`) declared
//! with the same macro: multi-source and `*` transitions, default `u8` repr, a custom machine
//! name.

use lifecycle_core::{LifecycleState, StateMachine};
use std::sync::{Arc, Barrier};
use tests::firecracker::{FirecrackerVm, VmState};

#[test]
fn defaults() {
    assert_eq!(std::mem::size_of::<FirecrackerVm>(), 1);
    let vm = FirecrackerVm::new();
    assert_eq!(vm.state(), VmState::NotStarted);
    assert_eq!(VmState::ALL.len(), 4);
    assert_eq!(VmState::NotStarted.to_raw(), 0);
    assert_eq!(VmState::Stopped.to_raw(), 3);
    assert_eq!(VmState::NotStarted.to_string(), "not_started");
    assert_eq!(<VmState as LifecycleState>::TYPE_NAME, "VmState");
}

#[test]
fn pause_resume_cycle() {
    let vm = FirecrackerVm::new();
    assert_eq!(vm.try_start(), Ok(VmState::NotStarted));
    for _ in 0..3 {
        assert_eq!(vm.try_pause(), Ok(VmState::Running));
        assert!(vm.is_paused());
        assert_eq!(vm.try_pause().unwrap_err().observed(), VmState::Paused);
        assert_eq!(vm.try_resume(), Ok(VmState::Paused));
    }
    assert!(vm.is_running());
}

#[test]
fn multi_source_stop_from_either_live_state() {
    let vm = FirecrackerVm::new();
    vm.try_start().unwrap();
    assert_eq!(vm.try_stop(), Ok(VmState::Running));
    let vm = FirecrackerVm::new();
    vm.try_start().unwrap();
    vm.try_pause().unwrap();
    assert_eq!(vm.try_stop(), Ok(VmState::Paused));
    assert!(vm.is_stopped());

    let vm = FirecrackerVm::new();
    let err = vm.try_stop().unwrap_err();
    assert_eq!(err.observed(), VmState::NotStarted);
    assert_eq!(err.allowed_sources(), &[VmState::Running, VmState::Paused]);
    assert_eq!(
        err.to_string(),
        "transition `stop` to `stopped` refused: machine is `not_started`, expected `running` or `paused`"
    );
}

#[test]
fn fail_from_anywhere_but_stopped() {
    for &state in VmState::ALL {
        let vm = FirecrackerVm::new();
        let _ = vm.force(state);
        let result = vm.try_fail();
        if state == VmState::Stopped {
            assert_eq!(result.unwrap_err().observed(), VmState::Stopped);
        } else {
            assert_eq!(result, Ok(state));
        }
        assert!(vm.is_stopped());
    }
}

/// Threads race `stop` (multi-source) against `pause`/`resume` flipping the machine between
/// the sources: `stop` succeeds exactly once, and the machine ends Stopped, never elsewhere.
#[test]
fn multi_source_racing_moves_between_its_sources() {
    for _ in 0..50 {
        let vm = Arc::new(FirecrackerVm::new());
        vm.try_start().unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let flippers: Vec<_> = (0..2)
            .map(|_| {
                let (vm, barrier) = (vm.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..200 {
                        let _ = vm.try_pause();
                        let _ = vm.try_resume();
                    }
                })
            })
            .collect();
        let stoppers: Vec<_> = (0..2)
            .map(|_| {
                let (vm, barrier) = (vm.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    std::thread::yield_now();
                    vm.try_stop()
                })
            })
            .collect();
        for f in flippers {
            f.join().unwrap();
        }
        let results: Vec<_> = stoppers.into_iter().map(|s| s.join().unwrap()).collect();
        let wins: Vec<_> = results.iter().filter_map(|r| r.ok()).collect();
        assert_eq!(wins.len(), 1, "{results:?}");
        assert!(matches!(wins[0], VmState::Running | VmState::Paused));
        for err in results.iter().filter_map(|r| r.err()) {
            assert_eq!(err.observed(), VmState::Stopped);
        }
        assert_eq!(vm.state(), VmState::Stopped);
    }
}

#[test]
fn table_and_diagram() {
    assert_eq!(VmState::TRANSITIONS.len(), 5);
    assert!(VmState::can_transition(VmState::Paused, VmState::Stopped));
    assert!(!VmState::can_transition(
        VmState::NotStarted,
        VmState::Paused
    ));
    assert!(!VmState::can_transition(VmState::Stopped, VmState::Running));
    assert_eq!(
        VmState::MERMAID,
        "stateDiagram-v2
    [*] --> NotStarted
    NotStarted --> Running: start
    Running --> Paused: pause
    Paused --> Running: resume
    Running --> Stopped: stop
    Paused --> Stopped: stop
    NotStarted --> Stopped: fail
    Running --> Stopped: fail
    Paused --> Stopped: fail
    Stopped --> [*]
"
    );
    let vm = FirecrackerVm::default();
    assert_eq!(
        vm.try_apply(&VmState::TRANSITIONS[0]),
        Ok(VmState::NotStarted)
    );
    assert_eq!(format!("{vm:?}"), "FirecrackerVm { state: Running }");
}
