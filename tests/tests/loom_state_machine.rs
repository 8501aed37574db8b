//! loom models of the generated state machines: every interleaving (within loom's default
//! bounds) of the racing operations is explored. Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p tests --test loom_state_machine`
//! (scripts/test-all does); without `--cfg loom` this file is empty.
#![cfg(loom)]

mod loom_common;

use lifecycle_core::{LifecycleState, Transition, TransitionObserver};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use loom_common::model;
use spinbox::state::{AtomicShimState, ShimState};
use tests::firecracker::{FirecrackerVm, VmState};

/// Model 1: N threads race the same single-source transition. Exactly one wins; every loser
/// reports the state it observed (the winner's target); the final state is the target.
fn race_same_transition(threads: usize) {
    model(move || {
        let sm = Arc::new(AtomicShimState::new());
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let sm = sm.clone();
                thread::spawn(move || sm.try_start_creating())
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        for r in &results {
            match r {
                Ok(from) => assert_eq!(*from, ShimState::Idle),
                Err(e) => assert_eq!(e.observed(), ShimState::Creating),
            }
        }
        assert_eq!(sm.state(), ShimState::Creating);
    });
}

#[test]
fn two_threads_race_one_transition() {
    race_same_transition(2);
}

#[test]
fn three_threads_race_one_transition() {
    race_same_transition(3);
}

/// Model 2: `start_deleting` and `shut_down` race out of Running. The outcome must be one a
/// sequential order produces: deleting first (both succeed, via Deleting), or shut_down first
/// (start_deleting refused, observing ShuttingDown).
#[test]
fn different_transitions_from_the_same_state() {
    model(|| {
        let sm = Arc::new(AtomicShimState::new());
        let _ = sm.force(ShimState::Running);
        let deleter = {
            let sm = sm.clone();
            thread::spawn(move || sm.try_start_deleting())
        };
        let stopper = {
            let sm = sm.clone();
            thread::spawn(move || sm.try_shut_down())
        };
        let deleting = deleter.join().unwrap();
        let shut_down = stopper.join().unwrap();
        match (deleting, shut_down) {
            // start_deleting, then shut_down from Deleting.
            (Ok(ShimState::Running), Ok(ShimState::Deleting)) => {}
            // shut_down first; start_deleting then sees ShuttingDown.
            (Err(e), Ok(ShimState::Running)) => assert_eq!(e.observed(), ShimState::ShuttingDown),
            other => panic!("no sequential order produces {other:?}"),
        }
        assert_eq!(sm.state(), ShimState::ShuttingDown);
    });
}

/// Model 3: the multi-source `stop` (Running | Paused → Stopped) races a thread flipping the
/// machine between those two sources. `stop` always succeeds exactly once from a state the
/// machine really was in, the flipper's operations fail only because the VM stopped, and the
/// machine never leaves the declared graph or loses an update.
#[test]
fn multi_source_transition_racing_moves_between_sources() {
    model(|| {
        let vm = Arc::new(FirecrackerVm::new());
        vm.try_start().unwrap();
        let flipper = {
            let vm = vm.clone();
            thread::spawn(move || (vm.try_pause(), vm.try_resume()))
        };
        let stopped_from = vm
            .try_stop()
            .expect("stop is allowed from both live states");
        let (pause, resume) = flipper.join().unwrap();
        match (stopped_from, pause, resume) {
            // stop first: both flips refused, observing Stopped.
            (VmState::Running, Err(p), Err(r)) => {
                assert_eq!(p.observed(), VmState::Stopped);
                assert_eq!(r.observed(), VmState::Stopped);
            }
            // pause, then stop from Paused; resume refused.
            (VmState::Paused, Ok(VmState::Running), Err(r)) => {
                assert_eq!(r.observed(), VmState::Stopped);
            }
            // pause, resume, then stop from Running.
            (VmState::Running, Ok(VmState::Running), Ok(VmState::Paused)) => {}
            other => panic!("no sequential order produces {other:?}"),
        }
        assert_eq!(vm.state(), VmState::Stopped);
    });
}

/// Model 4: `force` races a `try_*`; whichever wins, force returns the state it replaced and
/// the machine ends in the forced state.
#[test]
fn force_racing_a_transition() {
    model(|| {
        let sm = Arc::new(AtomicShimState::new());
        let forcer = {
            let sm = sm.clone();
            thread::spawn(move || sm.force(ShimState::ShuttingDown))
        };
        let tried = sm.try_start_creating();
        let replaced = forcer.join().unwrap();
        match (tried, replaced) {
            (Ok(ShimState::Idle), ShimState::Creating) => {}
            (Err(e), ShimState::Idle) => assert_eq!(e.observed(), ShimState::ShuttingDown),
            other => panic!("no sequential order produces {other:?}"),
        }
        assert_eq!(sm.state(), ShimState::ShuttingDown);
    });
}

/// Model 5: publication. Data written (non-atomically) before a successful transition is
/// visible to a thread that observes the target state; loom reports a data race otherwise.
#[test]
fn writes_before_a_transition_are_visible_to_observers_of_its_target() {
    model(|| {
        let sm = Arc::new(AtomicShimState::new());
        let data = Arc::new(UnsafeCell::new(0_u32));
        sm.try_start_creating().unwrap();
        let writer = {
            let (sm, data) = (sm.clone(), data.clone());
            thread::spawn(move || {
                // SAFETY: no reader touches `data` before it observes Created, which this
                // thread publishes only after the write.
                data.with_mut(|p| unsafe { *p = 42 });
                sm.try_mark_created().unwrap();
            })
        };
        let via_state = sm.is_created();
        let via_transition = sm.try_start_deleting().is_ok();
        if via_state || via_transition {
            // SAFETY: Created was observed, so the write happened-before this read.
            let seen = data.with(|p| unsafe { *p });
            assert_eq!(seen, 42);
        }
        writer.join().unwrap();
    });
}

/// Rows and columns of [`Reports`]: the largest table's transitions and states (`ShimState`:
/// six of each).
const TABLE: usize = 6;

/// Counts observer reports per (transition, state left) in loom atomics, so loom also
/// explores where each report falls against the other threads' operations.
struct Reports([[loom::sync::atomic::AtomicUsize; TABLE]; TABLE]);

impl Reports {
    fn new() -> Self {
        Self(std::array::from_fn(|_| {
            std::array::from_fn(|_| loom::sync::atomic::AtomicUsize::new(0))
        }))
    }

    fn count(&self, transition: usize, from: usize) -> usize {
        self.0[transition][from].load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<S: LifecycleState> TransitionObserver<S> for Reports {
    fn on_transition(&self, transition: &'static Transition<S>, from: S) {
        assert!(
            transition.allows(from),
            "reported from a state it cannot leave"
        );
        let index = S::TRANSITIONS
            .iter()
            .position(|t| t == transition)
            .expect("a table entry");
        let from = S::ALL.iter().position(|&s| s == from).unwrap();
        self.0[index][from].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Asserts the observer saw exactly the successes: one report per `Ok`, with its `from`.
fn assert_reported<S: LifecycleState>(reports: &Reports, successes: &[(usize, S)]) {
    for (index, _) in S::TRANSITIONS.iter().enumerate() {
        for (from_index, &from) in S::ALL.iter().enumerate() {
            let expected = successes
                .iter()
                .filter(|&&(i, f)| i == index && f == from)
                .count();
            assert_eq!(
                reports.count(index, from_index),
                expected,
                "transition {index} from {from}"
            );
        }
    }
}

/// `shut_down`'s index in `ShimState::TRANSITIONS`.
const SHUT_DOWN: usize = 5;

/// Model 6: three threads race transitions on an observed machine (two `start_creating`, one
/// `shut_down`). Whatever the interleaving, the observer got exactly one report per successful
/// `try_*`, with the state it really left.
#[test]
fn observer_sees_each_success_of_three_racing_threads_once() {
    model(|| {
        let sm = Arc::new(AtomicShimState::with_observer(Reports::new()));
        let creators: Vec<_> = (0..2)
            .map(|_| {
                let sm = sm.clone();
                thread::spawn(move || sm.try_start_creating().map(|from| (0, from)))
            })
            .collect();
        let mut successes: Vec<(usize, ShimState)> = sm
            .try_shut_down()
            .map(|from| (SHUT_DOWN, from))
            .into_iter()
            .collect();
        for creator in creators {
            successes.extend(creator.join().unwrap());
        }
        assert!(
            successes.iter().any(|&(i, _)| i == SHUT_DOWN),
            "shut_down always wins"
        );
        assert_reported(sm.observer(), &successes);
    });
}

/// Model 7: two threads, multi-source and single-source transitions on an observed
/// Firecracker machine (`pause` then `resume` racing `stop`).
#[test]
fn observer_sees_each_success_of_two_racing_threads_once() {
    model(|| {
        let vm = Arc::new(FirecrackerVm::with_observer(Reports::new()));
        let _ = vm.force(VmState::Running);
        let flipper = {
            let vm = vm.clone();
            thread::spawn(move || {
                let pause = vm.try_pause().map(|from| (1, from));
                let resume = vm.try_resume().map(|from| (2, from));
                [pause, resume]
            })
        };
        let stop = vm.try_stop().map(|from| (3, from));
        let mut successes: Vec<(usize, VmState)> = stop.into_iter().collect();
        successes.extend(flipper.join().unwrap().into_iter().flatten());
        assert_reported(vm.observer(), &successes);
        assert_eq!(vm.state(), VmState::Stopped);
    });
}

/// Model 8: out of Created, `start`, `start_deleting` and `shut_down` race on three threads.
/// Every outcome is one a sequential order produces, and each transition's `from` agrees with
/// the others' results.
#[test]
fn start_racing_delete_and_shutdown_from_created() {
    model(|| {
        let sm = Arc::new(AtomicShimState::new());
        let _ = sm.force(ShimState::Created);
        let starter = {
            let sm = sm.clone();
            thread::spawn(move || sm.try_start())
        };
        let deleter = {
            let sm = sm.clone();
            thread::spawn(move || sm.try_start_deleting())
        };
        // Only shut_down reaches ShuttingDown, so it always succeeds.
        let shut_down_from = sm
            .try_shut_down()
            .expect("shut_down from a non-terminal state");
        let started = starter.join().unwrap();
        let deleting = deleter.join().unwrap();
        match (&started, &deleting, shut_down_from) {
            // start, start_deleting, shut_down.
            (Ok(ShimState::Created), Ok(ShimState::Running), ShimState::Deleting)
            // start, shut_down; start_deleting sees ShuttingDown.
            | (Ok(ShimState::Created), Err(_), ShimState::Running)
            // start_deleting first; start sees Deleting or (after shut_down) ShuttingDown.
            | (Err(_), Ok(ShimState::Created), ShimState::Deleting)
            // shut_down first; both others see ShuttingDown.
            | (Err(_), Err(_), ShimState::Created) => {}
            other => panic!("no sequential order produces {other:?}"),
        }
        if let Err(e) = &deleting {
            assert_eq!(e.observed(), ShimState::ShuttingDown);
        }
        if let Err(e) = &started {
            let expected: &[ShimState] = if deleting.is_ok() {
                &[ShimState::Deleting, ShimState::ShuttingDown]
            } else {
                &[ShimState::ShuttingDown]
            };
            assert!(
                expected.contains(&e.observed()),
                "start saw {}",
                e.observed()
            );
        }
        assert_eq!(sm.state(), ShimState::ShuttingDown);
    });
}
