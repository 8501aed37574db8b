//! Phase observers: every phase reported started (unless skipped) and finished exactly once,
//! with every outcome kind (ok, failed, timed out, panicked, cancelled, skipped) and every
//! phase kind (async, sync, noop), in order, also under 8 concurrent callers; a panicking
//! observer changes nothing.

use lifecycle_core::{
    cleanup_phases, CleanupReport, Phase, PhaseKind, PhaseObserver, PhaseOutcome,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One observer call, with the outcome reduced to its `Display` text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call<P> {
    Started(P, PhaseKind),
    Finished(P, PhaseKind, String),
}

/// Records every call, in order.
struct Recorder<P>(Mutex<Vec<(Call<P>, Duration)>>);

impl<P> Default for Recorder<P> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<P: Clone> Recorder<P> {
    fn calls(&self) -> Vec<Call<P>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn durations(&self) -> Vec<Duration> {
        self.0.lock().unwrap().iter().map(|&(_, d)| d).collect()
    }
}

impl<P: lifecycle_core::PhaseId> PhaseObserver<P> for Recorder<P> {
    fn phase_started(&self, phase: P, kind: PhaseKind) {
        let call = Call::Started(phase, kind);
        self.0.lock().unwrap().push((call, Duration::ZERO));
    }

    fn phase_finished(
        &self,
        phase: P,
        kind: PhaseKind,
        outcome: &PhaseOutcome,
        duration: Duration,
    ) {
        assert!(
            !matches!(outcome, PhaseOutcome::AlreadyDone(_)),
            "{phase}: {outcome}"
        );
        let call = Call::Finished(phase, kind, outcome.to_string());
        self.0.lock().unwrap().push((call, duration));
    }
}

#[cleanup_phases]
struct KindsPhases {
    skipped: Phase,
    ok_async: Phase,
    failed: Phase,
    #[phase(timeout = "50ms")]
    timed_out: Phase,
    panicked: Phase,
    sync_ok: Phase,
    noop: Phase,
}

fn kinds() -> KindsOrchestrator {
    KindsOrchestrator::new(KindsPhases {
        skipped: Phase::new(|| async { Ok::<(), std::io::Error>(()) }),
        ok_async: Phase::new(|| async {
            tokio::task::yield_now().await;
            Ok::<(), std::io::Error>(())
        }),
        failed: Phase::new(|| async { Err::<(), _>("disk busy") }),
        timed_out: Phase::new(|| async {
            tokio::time::sleep(Duration::from_hours(1)).await;
            Ok::<(), std::io::Error>(())
        }),
        panicked: Phase::new(|| async {
            panic!("agent vanished");
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        }),
        sync_ok: Phase::sync(|| Ok::<(), std::io::Error>(())),
        noop: Phase::noop(),
    })
}

use KindsPhase as K;
use PhaseKind::{Async, Noop};

fn started(phase: KindsPhase, kind: PhaseKind) -> Call<KindsPhase> {
    Call::Started(phase, kind)
}

fn finished(phase: KindsPhase, kind: PhaseKind, outcome: &str) -> Call<KindsPhase> {
    Call::Finished(phase, kind, outcome.to_owned())
}

/// Every outcome but `Cancelled` (next test), every kind; the paused clock lets the hour-long
/// phase time out at once.
#[tokio::test(start_paused = true)]
async fn every_outcome_and_kind_reported_once_in_order() {
    let recorder = Arc::new(Recorder::default());
    let mut orchestrator = kinds().with_observer(recorder.clone());
    let report = orchestrator.execute_from(K::OkAsync).await;
    assert_eq!(
        report.failed_phases(),
        [K::Failed, K::TimedOut, K::Panicked],
        "{report}"
    );
    let first_run = vec![
        finished(K::Skipped, Async, "skipped"),
        started(K::OkAsync, Async),
        finished(K::OkAsync, Async, "ok"),
        started(K::Failed, Async),
        finished(K::Failed, Async, "failed: disk busy"),
        started(K::TimedOut, Async),
        finished(K::TimedOut, Async, "timed out after 50ms"),
        started(K::Panicked, Async),
        finished(K::Panicked, Async, "panicked: agent vanished"),
        started(K::SyncOk, PhaseKind::Sync),
        finished(K::SyncOk, PhaseKind::Sync, "ok"),
        started(K::Noop, Noop),
        finished(K::Noop, Noop, "ok"),
    ];
    assert_eq!(recorder.calls(), first_run);
    // Durations are the report's.
    let durations = recorder.durations();
    assert_eq!(durations[0], Duration::ZERO, "skipped");
    assert_eq!(durations[2], report.get(K::OkAsync).duration);
    assert_eq!(durations[12], Duration::ZERO, "noop");

    // Everything is done: a second run reports AlreadyDone to its caller, nothing to the
    // observer.
    let again = orchestrator.execute().await;
    assert!(matches!(
        again.get(K::Skipped).outcome,
        PhaseOutcome::AlreadyDone(_)
    ));
    assert_eq!(recorder.calls(), first_run);

    // After a reset the phases run again, and are reported again (the skipped one now runs).
    orchestrator.reset();
    let _ = orchestrator.execute().await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), first_run.len() + 14);
    assert_eq!(
        calls[first_run.len()..first_run.len() + 2],
        [
            started(K::Skipped, Async),
            finished(K::Skipped, Async, "ok")
        ]
    );

    // Detached: nothing more is reported.
    orchestrator.reset();
    orchestrator.set_observer(None);
    let _ = orchestrator.execute().await;
    assert_eq!(recorder.calls(), calls);
}

#[cleanup_phases]
struct HangPhases {
    before: Phase,
    hang: Phase,
    after: Phase,
}

/// Dropping the `execute` future mid-phase reports the phase `Cancelled`, from the drop, once;
/// the next run carries on with the phases after it.
#[tokio::test]
async fn dropping_the_run_mid_phase_reports_cancelled() {
    let entered = Arc::new(Notify::new());
    let hang = {
        let entered = Arc::clone(&entered);
        Phase::new(move || {
            let entered = Arc::clone(&entered);
            async move {
                entered.notify_one();
                std::future::pending::<()>().await;
                Ok::<(), std::io::Error>(())
            }
        })
    };
    let recorder = Arc::new(Recorder::default());
    let orchestrator = HangOrchestrator::new(HangPhases {
        before: Phase::sync(|| Ok::<(), std::io::Error>(())),
        hang,
        after: Phase::noop(),
    })
    .with_observer(recorder.clone());
    tokio::select! {
        _ = orchestrator.execute() => panic!("the hanging phase cannot finish"),
        () = entered.notified() => {}
    }
    // The `select!` dropped the run while `hang` was running.
    assert_eq!(
        recorder.calls(),
        [
            Call::Started(HangPhase::Before, PhaseKind::Sync),
            Call::Finished(HangPhase::Before, PhaseKind::Sync, "ok".into()),
            Call::Started(HangPhase::Hang, PhaseKind::Async),
            Call::Finished(HangPhase::Hang, PhaseKind::Async, "cancelled".into()),
        ]
    );
    let report = orchestrator.execute().await;
    assert!(matches!(
        report.get(HangPhase::Hang).outcome.original(),
        PhaseOutcome::Cancelled
    ));
    assert_eq!(
        recorder.calls()[4..],
        [
            Call::Started(HangPhase::After, PhaseKind::Noop),
            Call::Finished(HangPhase::After, PhaseKind::Noop, "ok".into()),
        ]
    );
}

#[cleanup_phases]
struct RacePhases {
    a: Phase,
    b: Phase,
    c: Phase,
    d: Phase,
    e: Phase,
    f: Phase,
    g: Phase,
}

fn racing() -> RaceOrchestrator {
    let yielding = || {
        Phase::new(|| async {
            tokio::task::yield_now().await;
            Ok::<(), std::io::Error>(())
        })
    };
    RaceOrchestrator::new(RacePhases {
        a: yielding(),
        b: Phase::new(|| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Err::<(), _>("b failed")
        }),
        c: Phase::sync(|| Ok::<(), std::io::Error>(())),
        d: yielding(),
        e: Phase::noop(),
        f: yielding(),
        g: Phase::new(|| async { Ok::<(), std::io::Error>(()) }),
    })
}

/// Spawns `n` callers of `orchestrator`: caller `partial.0` runs `execute_from(partial.1)`,
/// the others `execute()`.
fn spawn_callers(
    orchestrator: &Arc<RaceOrchestrator>,
    n: usize,
    partial: (usize, RacePhase),
) -> Vec<tokio::task::JoinHandle<CleanupReport<RacePhase>>> {
    (0..n)
        .map(|i| {
            let orchestrator = Arc::clone(orchestrator);
            tokio::spawn(async move {
                if i == partial.0 {
                    orchestrator.execute_from(partial.1).await
                } else {
                    orchestrator.execute().await
                }
            })
        })
        .collect()
}

/// Checks the sequence one observer saw: per phase, in cleanup order, either
/// `Started, Finished` or a lone `Finished(Skipped)`; never two phases interleaved.
fn assert_one_phase_at_a_time(calls: &[Call<RacePhase>]) {
    let mut rest = calls;
    for &phase in RacePhase::ALL {
        match rest {
            [Call::Finished(p, _, outcome), tail @ ..] if *p == phase => {
                assert_eq!(outcome, "skipped", "{calls:#?}");
                rest = tail;
            }
            [Call::Started(p, _), Call::Finished(q, _, outcome), tail @ ..]
                if *p == phase && *q == phase =>
            {
                assert_ne!(outcome, "skipped", "{calls:#?}");
                rest = tail;
            }
            _ => panic!("{phase} not reported exactly once, in order: {calls:#?}"),
        }
    }
    assert!(rest.is_empty(), "{calls:#?}");
}

/// 8 concurrent callers (one of them starting part-way, so phases before it may be skipped)
/// on a multi-thread runtime: each phase reported exactly once, started before finished,
/// one phase at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_callers_each_phase_reported_once() {
    for round in 0..100 {
        let recorder = Arc::new(Recorder::default());
        let orchestrator = Arc::new(racing().with_observer(recorder.clone()));
        for caller in spawn_callers(&orchestrator, 8, (3, RacePhase::D)) {
            let report = caller.await.unwrap();
            assert_eq!(report.phases().len(), 7);
        }
        let calls = recorder.calls();
        assert_one_phase_at_a_time(&calls);
        let failed = calls
            .iter()
            .filter(|c| matches!(c, Call::Finished(RacePhase::B, _, o) if o == "failed: b failed"))
            .count();
        let skipped_b = calls
            .iter()
            .any(|c| matches!(c, Call::Finished(RacePhase::B, _, o) if o == "skipped"));
        assert_eq!(failed + usize::from(skipped_b), 1, "round {round}");
    }
}

/// An observer that panics in every hook.
struct Panicky;

impl PhaseObserver<RacePhase> for Panicky {
    fn phase_started(&self, phase: RacePhase, _: PhaseKind) {
        panic!("observer broke on the start of {phase}");
    }

    fn phase_finished(&self, phase: RacePhase, _: PhaseKind, _: &PhaseOutcome, _: Duration) {
        panic!("observer broke on the end of {phase}");
    }
}

/// A panicking observer is ignored: every phase still runs once, every caller gets the full
/// report, and a skipped phase is still published (concurrent callers do not hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_observer_changes_nothing() {
    for _ in 0..20 {
        let orchestrator = Arc::new(racing().with_observer(Arc::new(Panicky)));
        for caller in spawn_callers(&orchestrator, 3, (0, RacePhase::C)) {
            let report = tokio::time::timeout(Duration::from_secs(10), caller)
                .await
                .expect("no caller hangs")
                .unwrap();
            assert_eq!(report.phases().len(), 7);
            assert!(report.failed_phases().iter().all(|&p| p == RacePhase::B));
        }
        assert!(orchestrator.is_complete());
    }
}

#[cleanup_phases]
struct DropPhases {
    hang: Phase,
}

struct PanicOnCancel;

impl PhaseObserver<DropPhase> for PanicOnCancel {
    fn phase_finished(&self, _: DropPhase, _: PhaseKind, outcome: &PhaseOutcome, _: Duration) {
        panic!("observer broke on {outcome}");
    }
}

/// The `Cancelled` report runs inside a `Drop`; a panic there is caught too, and the phase is
/// still recorded.
#[tokio::test]
async fn a_panicking_observer_on_cancel_is_caught_in_drop() {
    let orchestrator = DropOrchestrator::new(DropPhases {
        hang: Phase::new(|| async {
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        }),
    })
    .with_observer(Arc::new(PanicOnCancel));
    let cut = tokio::time::timeout(Duration::from_millis(10), orchestrator.execute()).await;
    assert!(cut.is_err(), "the run was dropped mid-phase");
    let report = orchestrator.execute().await;
    assert!(matches!(
        report.get(DropPhase::Hang).outcome.original(),
        PhaseOutcome::Cancelled
    ));
}
