//! Behaviour of spinbox's generated `CleanupOrchestrator`: every scenario of the Go cleanup
//! package it descends from, plus panics, timeouts and concurrent callers.

use lifecycle_core::{Phase, PhaseOutcome};
use spinbox::cleanup::{CleanupOrchestrator, CleanupPhase, CleanupPhases};
use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A shared log of phase starts and ends, and per-phase run counters.
#[derive(Default)]
struct Recorder {
    log: Mutex<Vec<String>>,
    runs: [AtomicUsize; 7],
}

impl Recorder {
    fn phase(self: &Arc<Self>, phase: CleanupPhase, behaviour: Behaviour) -> Phase {
        let rec = self.clone();
        Phase::new(move || {
            let rec = rec.clone();
            async move {
                rec.runs[phase.index()].fetch_add(1, Ordering::SeqCst);
                rec.log.lock().unwrap().push(format!("start {phase}"));
                match behaviour {
                    Behaviour::Yield => {
                        for _ in 0..3 {
                            tokio::task::yield_now().await;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Behaviour::Hang => std::future::pending::<()>().await,
                    Behaviour::Panic => panic!("{phase} exploded"),
                    Behaviour::Fail | Behaviour::Ok => {}
                }
                rec.log.lock().unwrap().push(format!("end {phase}"));
                if behaviour == Behaviour::Fail {
                    return Err(std::io::Error::other(format!("{phase} broke")));
                }
                Ok(())
            }
        })
    }

    fn orchestrator(
        self: &Arc<Self>,
        behaviour: impl Fn(CleanupPhase) -> Behaviour,
    ) -> CleanupOrchestrator {
        use CleanupPhase as P;
        let p = |phase| self.phase(phase, behaviour(phase));
        CleanupOrchestrator::new(CleanupPhases {
            hotplug_stop: p(P::HotplugStop),
            io_shutdown: p(P::IoShutdown),
            conn_close: p(P::ConnClose),
            vm_shutdown: p(P::VmShutdown),
            network_cleanup: p(P::NetworkCleanup),
            mount_cleanup: p(P::MountCleanup),
            event_close: p(P::EventClose),
        })
    }

    fn runs(&self) -> Vec<usize> {
        self.runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
    }

    /// Phases in the order they started; asserts none overlapped.
    fn order(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        let mut order = Vec::new();
        for pair in log.chunks(2) {
            let phase = pair[0].strip_prefix("start ").expect("a start");
            if let Some(end) = pair.get(1) {
                assert_eq!(end, &format!("end {phase}"), "phases overlapped: {log:?}");
            }
            order.push(phase.to_owned());
        }
        order
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Behaviour {
    Ok,
    Yield,
    Fail,
    Hang,
    Panic,
}

const NAMES: [&str; 7] = [
    "hotplug_stop",
    "io_shutdown",
    "conn_close",
    "vm_shutdown",
    "network_cleanup",
    "mount_cleanup",
    "event_close",
];

#[test]
fn phase_enum() {
    let names: Vec<&str> = CleanupPhase::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, NAMES);
    assert_eq!(CleanupPhase::COUNT, 7);
    assert_eq!(CleanupPhase::HotplugStop.to_string(), "hotplug_stop");
    assert!(CleanupPhase::HotplugStop < CleanupPhase::EventClose);
    assert_eq!(CleanupPhase::MountCleanup.index(), 5);
    assert_eq!(CleanupPhase::VmShutdown.default_timeout(), None);
}

#[tokio::test]
async fn runs_in_order() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|_| Behaviour::Ok);
    let report = orch.execute().await;
    assert!(!report.has_errors());
    assert_eq!(rec.order(), NAMES);
    let phases: Vec<CleanupPhase> = report.phases().iter().map(|r| r.phase).collect();
    assert_eq!(phases, CleanupPhase::ALL);
    assert!(report
        .phases()
        .iter()
        .all(|r| matches!(r.outcome, PhaseOutcome::Ok)));
    assert!(report.into_result().is_ok());
}

#[tokio::test]
async fn collects_every_error_and_keeps_going() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|p| match p {
        CleanupPhase::IoShutdown | CleanupPhase::NetworkCleanup => Behaviour::Fail,
        _ => Behaviour::Ok,
    });
    let report = orch.execute().await;
    assert_eq!(rec.order(), NAMES, "every phase attempted despite failures");
    assert_eq!(
        report.failed_phases(),
        [CleanupPhase::IoShutdown, CleanupPhase::NetworkCleanup]
    );
    let err = report.into_result().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cleanup failed in 2 of 7 phases: io_shutdown (failed), network_cleanup (failed)"
    );
    assert_eq!(err.source().unwrap().to_string(), "io_shutdown broke");
    let causes: Vec<String> = err
        .failures()
        .iter()
        .map(|f| f.source().expect("a cause").to_string())
        .collect();
    assert_eq!(causes, ["io_shutdown broke", "network_cleanup broke"]);
    assert_eq!(err.failures()[1].phase(), CleanupPhase::NetworkCleanup);
}

#[tokio::test]
async fn second_run_is_idempotent() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|_| Behaviour::Ok);
    let _ = orch.execute().await;
    let again = orch.execute().await;
    assert_eq!(rec.runs(), [1; 7], "nothing runs twice");
    assert!(again
        .phases()
        .iter()
        .all(|r| matches!(&r.outcome, PhaseOutcome::AlreadyDone(prev) if matches!(**prev, PhaseOutcome::Ok))));
    assert!(!again.has_errors());
}

#[tokio::test]
async fn noop_phases() {
    let orch = CleanupOrchestrator::new(CleanupPhases {
        hotplug_stop: Phase::noop(),
        io_shutdown: Phase::noop(),
        conn_close: Phase::noop(),
        vm_shutdown: Phase::noop(),
        network_cleanup: Phase::noop(),
        mount_cleanup: Phase::noop(),
        event_close: Phase::sync(|| Ok::<(), std::io::Error>(())),
    });
    let report = orch.execute().await;
    assert!(!report.has_errors());
    assert!(orch.is_complete());
}

#[tokio::test]
async fn partial_run_from_a_phase() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|_| Behaviour::Ok);
    let report = orch.execute_from(CleanupPhase::VmShutdown).await;
    assert_eq!(rec.order(), &NAMES[3..]);
    for r in &report.phases()[..3] {
        assert!(matches!(r.outcome, PhaseOutcome::Skipped), "{r:?}");
    }
    // Skipped phases never run later, even when a full run is asked for.
    let full = orch.execute().await;
    assert_eq!(rec.runs(), [0, 0, 0, 1, 1, 1, 1]);
    assert!(matches!(&full.get(CleanupPhase::HotplugStop).outcome,
        PhaseOutcome::AlreadyDone(prev) if matches!(**prev, PhaseOutcome::Skipped)));
}

#[tokio::test]
async fn completed_phases_and_reset() {
    let rec = Arc::new(Recorder::default());
    let mut orch = rec.orchestrator(|_| Behaviour::Ok);
    assert!(orch.completed_phases().is_empty());
    let _ = orch.execute_from(CleanupPhase::MountCleanup).await;
    // The phases that ran; the ones execute_from passed by are skipped, not completed.
    assert_eq!(orch.completed_phases(), &CleanupPhase::ALL[5..]);
    assert_eq!(orch.skipped_phases(), &CleanupPhase::ALL[..5]);
    assert!(orch.is_complete());
    orch.reset();
    assert!(orch.completed_phases().is_empty());
    assert!(orch.skipped_phases().is_empty());
    assert!(!orch.is_complete());
    let _ = orch.execute().await;
    assert_eq!(rec.runs(), [1, 1, 1, 1, 1, 2, 2]);
}

#[tokio::test]
async fn panicking_phase_is_recorded_and_next_phase_runs() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|p| {
        if p == CleanupPhase::ConnClose {
            Behaviour::Panic
        } else {
            Behaviour::Ok
        }
    });
    let report = orch.execute().await;
    assert!(matches!(&report.get(CleanupPhase::ConnClose).outcome,
        PhaseOutcome::Panicked(msg) if msg == "conn_close exploded"));
    assert_eq!(rec.runs(), [1; 7]);
    assert_eq!(report.failed_phases(), [CleanupPhase::ConnClose]);
}

#[tokio::test]
async fn phase_that_never_finishes_times_out() {
    let rec = Arc::new(Recorder::default());
    let orch = rec
        .orchestrator(|p| {
            if p == CleanupPhase::VmShutdown {
                Behaviour::Hang
            } else {
                Behaviour::Ok
            }
        })
        .with_timeout(CleanupPhase::VmShutdown, Duration::from_millis(50));
    assert_eq!(
        orch.timeout(CleanupPhase::VmShutdown),
        Some(Duration::from_millis(50))
    );
    let report = orch.execute().await;
    assert!(matches!(
        report.get(CleanupPhase::VmShutdown).outcome,
        PhaseOutcome::TimedOut(t) if t == Duration::from_millis(50)
    ));
    assert_eq!(rec.runs(), [1; 7], "the phases after it still ran");
    let text = report.into_result().unwrap_err().to_string();
    assert!(
        text.contains("vm_shutdown (timed out after 50ms)"),
        "{text}"
    );
}

async fn concurrent_executes(callers: usize) {
    for round in 0..20 {
        let rec = Arc::new(Recorder::default());
        let orch = Arc::new(rec.orchestrator(|p| {
            if p == CleanupPhase::NetworkCleanup {
                Behaviour::Fail
            } else {
                Behaviour::Yield
            }
        }));
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let orch = orch.clone();
                tokio::spawn(async move {
                    // A crash handler racing a delete request: some start part-way.
                    if i % 3 == 2 {
                        orch.execute_from(CleanupPhase::HotplugStop).await
                    } else {
                        orch.execute().await
                    }
                })
            })
            .collect();
        for task in tasks {
            let report = task.await.unwrap();
            assert_eq!(report.phases().len(), 7);
            assert_eq!(
                report.failed_phases(),
                [CleanupPhase::NetworkCleanup],
                "round {round}"
            );
            assert!(report.has_errors());
        }
        assert_eq!(rec.runs(), [1; 7], "round {round}: each phase exactly once");
        assert_eq!(rec.order(), NAMES, "round {round}: order kept, no overlap");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_concurrent_executes() {
    concurrent_executes(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_executes() {
    concurrent_executes(8).await;
}

#[tokio::test]
async fn report_displays_as_a_table() {
    let rec = Arc::new(Recorder::default());
    let orch = rec.orchestrator(|_| Behaviour::Ok);
    let text = orch.execute().await.to_string();
    for name in NAMES {
        assert!(text.contains(name), "{text}");
    }
    assert!(format!("{orch:?}").starts_with("CleanupOrchestrator"));
}
