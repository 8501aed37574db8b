//! Model checks of concurrent runs (`RUSTFLAGS="--cfg loom" cargo test --release -p
//! lifecycle-core --lib loom`): every interleaving of the engine's atomics and locks, within a
//! preemption bound, keeps each phase run exactly once and in order, and wakes waiters. Each
//! model prints how many interleavings it explored.

use super::test_support::{block_on, YieldOnce};
use crate::cleanup::{Phase, PhaseOutcome};
use crate::cleanup_phases;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[cleanup_phases(crate = crate, phase = L)]
struct Model {
    a: Phase,
    b: Phase,
}

type Log = Arc<Mutex<Vec<L>>>;

/// Phase `b`: a synchronous action that logs itself.
fn inline(log: &Log) -> Phase {
    let log = Arc::clone(log);
    Phase::sync(move || {
        log.lock().unwrap().push(L::B);
        Ok::<(), &'static str>(())
    })
}

fn engine(log: &Log) -> ModelOrchestrator {
    let yielding = {
        let log = Arc::clone(log);
        Phase::new(move || {
            let log = Arc::clone(&log);
            async move {
                YieldOnce(false).await;
                log.lock().unwrap().push(L::A);
                Err::<(), _>("a failed")
            }
        })
    };
    let inline = inline(log);
    ModelOrchestrator::new(Model {
        a: yielding,
        b: inline,
    })
}

/// Checks `f` under every interleaving within a preemption bound of 3, and prints how many
/// it explored: a count the model keeps itself, so no `LOOM_LOG` output is needed.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    // A plain std counter: it is not part of the model, so loom does not track it.
    let iterations = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&iterations);
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    // The same line as the `tests` crate's models print (scripts/test-all shows them).
    println!(
        "{name}: explored {} interleavings",
        iterations.load(Ordering::Relaxed)
    );
}

#[test]
fn loom_two_executes_run_each_phase_once_in_order() {
    model("two_executes_run_each_phase_once_in_order", || {
        let log = Log::default();
        let engine = Arc::new(engine(&log));
        let other = {
            let engine = Arc::clone(&engine);
            loom::thread::spawn(move || block_on(engine.execute()))
        };
        let mine = block_on(engine.execute());
        let theirs = other.join().unwrap();
        assert_eq!(*log.lock().unwrap(), [L::A, L::B]);
        for report in [&mine, &theirs] {
            assert_eq!(report.failed_phases(), [L::A]);
        }
        for &phase in L::ALL {
            let runners = [&mine, &theirs]
                .iter()
                .filter(|r| !matches!(r.get(phase).outcome, PhaseOutcome::AlreadyDone(_)))
                .count();
            assert_eq!(runners, 1);
        }
        assert!(engine.is_complete());
    });
}

#[test]
fn loom_execute_from_racing_execute() {
    model("execute_from_racing_execute", || {
        let log = Log::default();
        let engine = Arc::new(engine(&log));
        let other = {
            let engine = Arc::clone(&engine);
            loom::thread::spawn(move || block_on(engine.execute_from(L::B)))
        };
        let all = block_on(engine.execute());
        let from = other.join().unwrap();
        let ran = log.lock().unwrap().clone();
        assert!(ran == [L::A, L::B] || ran == [L::B], "{ran:?}");
        let skipped = matches!(from.get(L::A).outcome, PhaseOutcome::Skipped);
        assert_eq!(skipped, ran == [L::B]);
        let claims = AtomicUsize::new(0);
        for report in [&all, &from] {
            if !matches!(report.get(L::B).outcome, PhaseOutcome::AlreadyDone(_)) {
                claims.fetch_add(1, Ordering::Relaxed);
            }
        }
        assert_eq!(claims.load(Ordering::Relaxed), 1);
        assert!(engine.is_complete());
    });
}

/// The no-op fast path (`PENDING → DONE` in one CAS, nothing recorded) racing a caller that
/// finds the phase done: both report `Ok`, exactly one as the runner, and the phase after it
/// still runs once, after it.
#[test]
fn loom_noop_fast_path_racing_execute() {
    model("noop_fast_path_racing_execute", || {
        let log = Log::default();
        let engine = Arc::new(ModelOrchestrator::new(Model {
            a: Phase::noop(),
            b: inline(&log),
        }));
        let other = {
            let engine = Arc::clone(&engine);
            loom::thread::spawn(move || block_on(engine.execute()))
        };
        let mine = block_on(engine.execute());
        let theirs = other.join().unwrap();
        assert_eq!(*log.lock().unwrap(), [L::B]);
        let runners = [&mine, &theirs]
            .iter()
            .filter(|r| matches!(r.get(L::A).outcome, PhaseOutcome::Ok))
            .count();
        assert_eq!(runners, 1);
        for report in [&mine, &theirs] {
            assert!(!report.has_errors());
            assert!(!report.get(L::A).outcome.is_error());
        }
        assert!(engine.is_complete());
    });
}
