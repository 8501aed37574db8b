//! loom models of concurrent cleanup runs through a `#[cleanup_phases]` orchestrator: every
//! interleaving of two callers (within loom's default bounds). Run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p tests --test loom_cleanup`.
#![cfg(loom)]

use lifecycle_core::{cleanup_phases, Phase, PhaseOutcome};
use loom::sync::Arc;
use loom::thread;
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

/// Model 6a: two concurrent `execute` calls run each phase exactly once, in order, and both
/// see every outcome (including the failure, whoever ran it).
#[test]
fn two_concurrent_executes() {
    loom::model(|| {
        let counters = Arc::new(Counters::default());
        let orch = Arc::new(orchestrator(&counters, 1));
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
    });
}

/// Model 6b: `execute_from` racing `execute`: whatever interleaving, no phase runs twice,
/// no phase runs after a later one, and the first phase either ran (before the others) or
/// was skipped.
#[test]
fn execute_from_racing_execute() {
    loom::model(|| {
        let counters = Arc::new(Counters::default());
        let orch = Arc::new(orchestrator(&counters, usize::MAX));
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
    });
}
