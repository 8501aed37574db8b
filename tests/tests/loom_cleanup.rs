//! loom models of concurrent cleanup runs through a `#[cleanup_phases]` orchestrator with a
//! phase observer: every interleaving of two callers (within loom's default bounds). Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p tests --test loom_cleanup`.
#![cfg(loom)]

mod loom_common;

use lifecycle_core::{cleanup_phases, Phase, PhaseKind, PhaseObserver, PhaseOutcome};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use loom_common::model;
// Plain std counters: loom runs the model's threads one at a time, so these need no
// tracking, and leaving them out keeps the explored state space to the engine's own
// synchronization.
use std::sync::atomic::{AtomicUsize, Ordering};

#[cleanup_phases]
struct ModelPhases {
    conn_close: Phase,
    vm_shutdown: Phase,
}

/// Per-phase run counters, plus an order check: each phase records how many phases had
/// finished when it started.
#[derive(Default)]
struct Counters {
    runs: [AtomicUsize; 2],
    started_after: [AtomicUsize; 2],
    finished: AtomicUsize,
}

fn orchestrator(counters: &Arc<Counters>, failing: usize) -> ModelOrchestrator {
    let phase = |i: usize| {
        let counters = counters.clone();
        Phase::new(move || {
            let counters = counters.clone();
            async move {
                counters.runs[i].fetch_add(1, Ordering::SeqCst);
                counters.started_after[i]
                    .store(counters.finished.load(Ordering::SeqCst), Ordering::SeqCst);
                loom::thread::yield_now();
                counters.finished.fetch_add(1, Ordering::SeqCst);
                if i == failing {
                    Err(std::io::Error::other("phase failed"))
                } else {
                    Ok(())
                }
            }
        })
    };
    ModelOrchestrator::new(ModelPhases {
        conn_close: phase(0),
        vm_shutdown: phase(1),
    })
}

/// What a phase observer was told, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Started(ModelPhase, PhaseKind),
    Finished(ModelPhase, PhaseKind, bool),
}

/// A log with no lock of its own: the engine promises its calls never overlap (each happens
/// before the next phase is claimed), and loom reports a data race on this cell otherwise.
struct UnlockedLog(UnsafeCell<Vec<Call>>);

// SAFETY: every access is checked by loom; the engine orders the observer's calls, and the
// model reads the log only after joining every run.
unsafe impl Sync for UnlockedLog {}

impl UnlockedLog {
    fn push(&self, call: Call) {
        // SAFETY: see the `Sync` impl; loom fails the model if two pushes race.
        self.0.with_mut(|log| unsafe { (*log).push(call) });
    }

    fn calls(&self) -> Vec<Call> {
        // SAFETY: called after every run was joined.
        self.0.with(|log| unsafe { (*log).clone() })
    }
}

impl PhaseObserver<ModelPhase> for UnlockedLog {
    fn phase_started(&self, phase: ModelPhase, kind: PhaseKind) {
        self.push(Call::Started(phase, kind));
    }

    fn phase_finished(
        &self,
        phase: ModelPhase,
        kind: PhaseKind,
        outcome: &PhaseOutcome,
        _: core::time::Duration,
    ) {
        assert!(!matches!(outcome, PhaseOutcome::AlreadyDone(_)));
        self.push(Call::Finished(
            phase,
            kind,
            matches!(outcome, PhaseOutcome::Skipped),
        ));
    }
}

fn unlocked_log() -> std::sync::Arc<UnlockedLog> {
    std::sync::Arc::new(UnlockedLog(UnsafeCell::new(Vec::new())))
}

const STARTED_THEN_FINISHED: [Call; 4] = [
    Call::Started(ModelPhase::ConnClose, PhaseKind::Async),
    Call::Finished(ModelPhase::ConnClose, PhaseKind::Async, false),
    Call::Started(ModelPhase::VmShutdown, PhaseKind::Async),
    Call::Finished(ModelPhase::VmShutdown, PhaseKind::Async, false),
];

/// Model 6a: two concurrent `execute` calls run each phase exactly once, in order, and both
/// see every outcome (including the failure, whoever ran it). The phase observer is told of
/// each phase once, started then finished, one phase at a time, in order.
#[test]
fn two_concurrent_executes() {
    model(|| {
        let counters = Arc::new(Counters::default());
        let log = unlocked_log();
        let orch = Arc::new(orchestrator(&counters, 1).with_observer(log.clone()));
        let other = {
            let orch = orch.clone();
            thread::spawn(move || loom::future::block_on(orch.execute()))
        };
        let mine = loom::future::block_on(orch.execute());
        let theirs = other.join().unwrap();
        for i in 0..2 {
            assert_eq!(
                counters.runs[i].load(Ordering::SeqCst),
                1,
                "phase {i} ran once"
            );
            assert_eq!(
                counters.started_after[i].load(Ordering::SeqCst),
                i,
                "phase {i} in order"
            );
        }
        for report in [&mine, &theirs] {
            assert_eq!(report.failed_phases(), [ModelPhase::VmShutdown]);
            assert_eq!(report.phases().len(), 2);
        }
        // Each phase was run by exactly one caller; the other saw it as already done.
        for phase in ModelPhase::ALL {
            let ran_here = [&mine, &theirs]
                .iter()
                .filter(|r| !matches!(r.get(*phase).outcome, PhaseOutcome::AlreadyDone(_)))
                .count();
            assert_eq!(ran_here, 1, "{phase}");
        }
        assert_eq!(log.calls(), STARTED_THEN_FINISHED);
    });
}

/// Model 6b: `execute_from` racing `execute`: whatever interleaving, no phase runs twice,
/// no phase runs after a later one, and the first phase either ran (before the others) or
/// was skipped. The observer is told of the first phase once, skipped (no start) or started
/// then finished, before the second. (`lifecycle-core`'s own models run without observer.)
#[test]
fn execute_from_racing_execute() {
    model(|| {
        let counters = Arc::new(Counters::default());
        let log = unlocked_log();
        let orch = Arc::new(orchestrator(&counters, usize::MAX).with_observer(log.clone()));
        let other = {
            let orch = orch.clone();
            thread::spawn(move || loom::future::block_on(orch.execute_from(ModelPhase::VmShutdown)))
        };
        let full = loom::future::block_on(orch.execute());
        let partial = other.join().unwrap();
        let first_ran = counters.runs[0].load(Ordering::SeqCst);
        assert!(first_ran <= 1);
        assert_eq!(counters.runs[1].load(Ordering::SeqCst), 1);
        assert_eq!(counters.started_after[1].load(Ordering::SeqCst), first_ran);
        assert!(!full.has_errors() && !partial.has_errors());
        assert!(orch.is_complete());
        let calls = log.calls();
        if first_ran == 1 {
            assert_eq!(calls, STARTED_THEN_FINISHED);
        } else {
            let skipped = Call::Finished(ModelPhase::ConnClose, PhaseKind::Async, true);
            assert_eq!(calls[0], skipped);
            assert_eq!(calls[1..], STARTED_THEN_FINISHED[2..]);
        }
    });
}
