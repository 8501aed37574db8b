//! Behaviour tests of the engine: order, at-most-once, errors, timeouts, panics,
//! cancellation, concurrent callers, and running without a Tokio runtime.

use super::test_phases::{TestError, TestOrchestrator, TestPhases, T};
use super::test_support::{block_on, YieldOnce};
use super::{BoxError, CleanupEngine, CleanupReport, Phase, PhaseId, PhaseOutcome};
use core::time::Duration;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// What a test phase does when it runs.
#[derive(Debug, Clone, Copy)]
enum Act {
    Ok,
    Fail,
    /// `tokio::task::yield_now()` mid-way, then Ok.
    Yield,
    /// Sleeps this many milliseconds mid-way, then Ok.
    Sleep(u64),
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Start(T),
    End(T),
}

/// Counts each phase's runs and logs every start and end.
#[derive(Default)]
struct Probe {
    runs: [AtomicUsize; 7],
    log: Mutex<Vec<Event>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn record(&self, event: Event) {
        self.log.lock().unwrap().push(event);
    }

    fn phase(self: &Arc<Self>, phase: T, act: Act) -> Phase {
        let probe = Arc::clone(self);
        Phase::new(move || {
            let probe = Arc::clone(&probe);
            async move {
                probe.runs[phase.index()].fetch_add(1, Ordering::SeqCst);
                probe.record(Event::Start(phase));
                match act {
                    Act::Ok | Act::Fail => {}
                    Act::Yield => tokio::task::yield_now().await,
                    Act::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    Act::Panic => panic!("boom in {phase}"),
                }
                probe.record(Event::End(phase));
                match act {
                    Act::Fail => Err(TestError(phase.name())),
                    _ => Ok(()),
                }
            }
        })
    }

    fn engine(self: &Arc<Self>, acts: [Act; 7]) -> CleanupEngine<T> {
        CleanupEngine::new(
            T::ALL
                .iter()
                .zip(acts)
                .map(|(&phase, act)| self.phase(phase, act))
                .collect(),
        )
    }

    fn runs(&self) -> Vec<usize> {
        self.runs.iter().map(|r| r.load(Ordering::SeqCst)).collect()
    }

    fn log(&self) -> Vec<Event> {
        self.log.lock().unwrap().clone()
    }

    /// The log is `Start(a), End(a), Start(b), End(b), …` with `a < b < …`: no two phases
    /// overlapped and they ran in order. Returns the phases that ran.
    fn assert_sequential(&self) -> Vec<T> {
        let log = self.log();
        assert_eq!(log.len() % 2, 0, "unfinished phase in {log:?}");
        let mut ran = Vec::new();
        for pair in log.chunks(2) {
            let (Event::Start(a), Event::End(b)) = (pair[0], pair[1]) else {
                panic!("phases overlapped: {log:?}");
            };
            assert_eq!(a, b, "phases overlapped: {log:?}");
            if let Some(&last) = ran.last() {
                assert!(a.index() > T::index(last), "out of order: {log:?}");
            }
            ran.push(a);
        }
        ran
    }
}

fn outcome(report: &CleanupReport<T>, phase: T) -> &PhaseOutcome {
    &report.get(phase).outcome
}

fn is_already_done(outcome: &PhaseOutcome, inner: fn(&PhaseOutcome) -> bool) -> bool {
    matches!(outcome, PhaseOutcome::AlreadyDone(o) if inner(o))
}

fn ok(o: &PhaseOutcome) -> bool {
    matches!(o, PhaseOutcome::Ok)
}

fn failed(o: &PhaseOutcome) -> bool {
    matches!(o, PhaseOutcome::Failed(_))
}

fn skipped(o: &PhaseOutcome) -> bool {
    matches!(o, PhaseOutcome::Skipped)
}

fn cancelled(o: &PhaseOutcome) -> bool {
    matches!(o, PhaseOutcome::Cancelled)
}

const ALL_OK: [Act; 7] = [Act::Ok; 7];

#[tokio::test]
async fn runs_every_phase_once_in_order() {
    let probe = Probe::new();
    let engine = probe.engine(ALL_OK);
    let report = engine.execute().await;
    assert_eq!(probe.assert_sequential(), T::ALL);
    assert_eq!(probe.runs(), [1; 7]);
    assert_eq!(report.phases().len(), 7);
    for (entry, &phase) in report.phases().iter().zip(T::ALL) {
        assert_eq!(entry.phase, phase);
        assert!(ok(&entry.outcome), "{report}");
    }
    assert!(!report.has_errors());
    assert!(engine.is_complete());
}

#[tokio::test]
async fn continues_after_errors_and_collects_them_all() {
    let probe = Probe::new();
    let mut acts = ALL_OK;
    acts[0] = Act::Fail;
    acts[3] = Act::Fail;
    acts[6] = Act::Fail;
    let report = probe.engine(acts).execute().await;
    assert_eq!(probe.assert_sequential(), T::ALL);
    assert_eq!(probe.runs(), [1; 7]);
    assert!(report.has_errors());
    assert_eq!(
        report.failed_phases(),
        [T::HotplugStop, T::VmShutdown, T::EventClose]
    );
    let PhaseOutcome::Failed(failure) = outcome(&report, T::VmShutdown) else {
        panic!("{report}");
    };
    assert_eq!(failure.to_string(), "vm_shutdown");
    assert!(ok(outcome(&report, T::MountCleanup)));
}

#[tokio::test]
async fn second_run_reruns_nothing_and_reports_already_done() {
    let probe = Probe::new();
    let mut acts = ALL_OK;
    acts[2] = Act::Fail;
    acts[4] = Act::Sleep(2);
    let engine = probe.engine(acts);
    let first = engine.execute().await;
    let second = engine.execute().await;
    assert_eq!(probe.runs(), [1; 7]);
    for (a, b) in first.phases().iter().zip(second.phases()) {
        let PhaseOutcome::AlreadyDone(inner) = &b.outcome else {
            panic!("{second}");
        };
        assert_eq!(inner.to_string(), a.outcome.to_string());
        assert_eq!(
            a.duration, b.duration,
            "AlreadyDone keeps the original duration"
        );
    }
    assert!(second.get(T::NetworkCleanup).duration >= Duration::from_millis(2));
    assert_eq!(second.failed_phases(), [T::ConnClose]);
    // A third run from a later phase also runs nothing.
    let third = engine.execute_from(T::MountCleanup).await;
    assert_eq!(probe.runs(), [1; 7]);
    assert!(third
        .phases()
        .iter()
        .all(|r| matches!(r.outcome, PhaseOutcome::AlreadyDone(_))));
}

#[tokio::test]
async fn noop_phases_are_ok_and_run_nothing() {
    let probe = Probe::new();
    let actions = T::ALL
        .iter()
        .map(|&p| {
            if p.index() % 2 == 0 {
                Phase::noop()
            } else {
                probe.phase(p, Act::Ok)
            }
        })
        .collect();
    let report = CleanupEngine::<T>::new(actions).execute().await;
    assert_eq!(probe.runs(), [0, 1, 0, 1, 0, 1, 0]);
    assert_eq!(
        probe.assert_sequential(),
        [T::IoShutdown, T::VmShutdown, T::MountCleanup]
    );
    assert!(report.phases().iter().all(|r| ok(&r.outcome)));
    assert_eq!(report.get(T::HotplugStop).duration, Duration::ZERO);
}

/// No-op phases take the fast path (straight to DONE, no clock, nothing recorded): later
/// runs still report them `AlreadyDone(Ok)` in no time, and a run that only met no-ops and
/// final phases reports a zero total.
#[test]
fn noop_fast_path_reports_like_any_other_phase() {
    let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect());
    let first = block_on(engine.execute());
    assert!(first.phases().iter().all(|r| ok(&r.outcome)), "{first}");
    assert_eq!(engine.completed_phases(), T::ALL);
    let second = block_on(engine.execute());
    for r in second.phases() {
        assert!(is_already_done(&r.outcome, ok), "{second}");
        assert_eq!(r.duration, Duration::ZERO);
    }
    assert_eq!(second.total_duration(), Duration::ZERO);
}

#[tokio::test]
async fn sync_phases_run_inline_and_convert_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let actions = T::ALL
        .iter()
        .map(|&p| {
            let calls = Arc::clone(&calls);
            Phase::sync(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                match p {
                    T::IoShutdown => Err("plain str error".into()),
                    T::MountCleanup => Err(BoxError::from(format!("umount {p}"))),
                    _ => Ok(()),
                }
            })
        })
        .collect();
    let report = CleanupEngine::<T>::new(actions).execute().await;
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    assert_eq!(report.failed_phases(), [T::IoShutdown, T::MountCleanup]);
    assert_eq!(
        outcome(&report, T::MountCleanup).to_string(),
        "failed: umount mount_cleanup"
    );
}

#[tokio::test]
async fn execute_from_skips_earlier_phases_and_runs_later_ones() {
    let probe = Probe::new();
    let engine = probe.engine(ALL_OK);
    let report = engine.execute_from(T::VmShutdown).await;
    assert_eq!(probe.runs(), [0, 0, 0, 1, 1, 1, 1]);
    assert_eq!(probe.assert_sequential(), &T::ALL[3..]);
    for &p in &T::ALL[..3] {
        assert!(skipped(outcome(&report, p)), "{report}");
    }
    for &p in &T::ALL[3..] {
        assert!(ok(outcome(&report, p)), "{report}");
    }
    assert!(!report.has_errors(), "skipping is not an error");
    assert!(engine.is_complete());

    // A later full run can never run an earlier phase after a later one ran.
    let again = engine.execute().await;
    assert_eq!(probe.runs(), [0, 0, 0, 1, 1, 1, 1]);
    assert!(is_already_done(outcome(&again, T::HotplugStop), skipped));
    assert!(is_already_done(outcome(&again, T::EventClose), ok));
}

/// The generated orchestrator drives this engine (the crate's own tests declare their phases
/// with the macro, as users do).
#[tokio::test]
async fn the_generated_orchestrator_wraps_the_engine() {
    let orchestrator = TestOrchestrator::new(TestPhases {
        hotplug_stop: Phase::noop(),
        io_shutdown: Phase::noop(),
        conn_close: Phase::sync(|| Err::<(), _>(TestError("closed"))),
        vm_shutdown: Phase::noop(),
        network_cleanup: Phase::noop(),
        mount_cleanup: Phase::noop(),
        event_close: Phase::noop(),
    });
    let report = orchestrator.execute().await;
    assert_eq!(report.failed_phases(), [T::ConnClose]);
    assert!(orchestrator.is_complete());
    assert_eq!(orchestrator.engine().completed_phases(), T::ALL);
}

/// `execute_from` is the recovery path for phases that never applied: they are skipped for
/// good (until `reset`), are not counted as completed, and do not keep the engine from being
/// complete. Through the generated orchestrator, as users call it.
#[tokio::test]
async fn skipped_phases_stay_skipped_until_reset() {
    let probe = Probe::new();
    let act = |phase| probe.phase(phase, Act::Ok);
    let mut orchestrator = TestOrchestrator::new(TestPhases {
        hotplug_stop: act(T::HotplugStop),
        io_shutdown: act(T::IoShutdown),
        conn_close: act(T::ConnClose),
        vm_shutdown: act(T::VmShutdown),
        network_cleanup: act(T::NetworkCleanup),
        mount_cleanup: act(T::MountCleanup),
        event_close: act(T::EventClose),
    });
    let report = orchestrator.execute_from(T::ConnClose).await;
    assert!(!report.has_errors(), "{report}");
    assert_eq!(orchestrator.completed_phases(), &T::ALL[2..]);
    assert_eq!(orchestrator.skipped_phases(), &T::ALL[..2]);
    assert!(orchestrator.is_complete());

    // A later full run does not run them after the later phases.
    let again = orchestrator.execute().await;
    assert_eq!(probe.runs(), [0, 0, 1, 1, 1, 1, 1]);
    assert!(is_already_done(outcome(&again, T::HotplugStop), skipped));
    assert_eq!(orchestrator.skipped_phases(), &T::ALL[..2]);

    // Only `reset` makes them runnable again; then every phase runs, in order.
    orchestrator.reset();
    assert!(orchestrator.completed_phases().is_empty());
    assert!(orchestrator.skipped_phases().is_empty());
    let fresh = orchestrator.execute().await;
    assert!(fresh.phases().iter().all(|r| ok(&r.outcome)), "{fresh}");
    assert_eq!(probe.runs(), [1, 1, 2, 2, 2, 2, 2]);
    assert_eq!(orchestrator.completed_phases(), T::ALL);
}

#[tokio::test]
async fn execute_from_after_partial_failure_recovers_the_rest() {
    let probe = Probe::new();
    let engine = probe.engine(ALL_OK);
    let first = engine.execute_from(T::NetworkCleanup).await;
    assert_eq!(first.failed_phases(), []);
    let from_start = engine.execute_from(T::HotplugStop).await;
    assert_eq!(probe.runs(), [0, 0, 0, 0, 1, 1, 1]);
    assert!(is_already_done(
        outcome(&from_start, T::IoShutdown),
        skipped
    ));
}

#[tokio::test]
async fn reset_runs_everything_again() {
    let probe = Probe::new();
    let mut engine = probe
        .engine(ALL_OK)
        .with_timeout(T::ConnClose, Duration::from_secs(9));
    let _ = engine.execute_from(T::ConnClose).await;
    assert!(engine.is_complete());
    engine.reset();
    assert!(engine.completed_phases().is_empty());
    assert!(!engine.is_complete());
    assert_eq!(engine.timeout(T::ConnClose), Some(Duration::from_secs(9)));
    let report = engine.execute().await;
    assert_eq!(probe.runs(), [1, 1, 2, 2, 2, 2, 2]);
    assert!(report.phases().iter().all(|r| ok(&r.outcome)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_phases_tracks_progress() {
    let started = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let actions = T::ALL
        .iter()
        .map(|&p| {
            let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
            Phase::new(move || {
                let (started, gate) = (Arc::clone(&started), Arc::clone(&gate));
                async move {
                    if p == T::ConnClose {
                        started.notify_one();
                        gate.notified().await;
                    }
                    Ok::<(), TestError>(())
                }
            })
        })
        .collect();
    let engine = Arc::new(CleanupEngine::<T>::new(actions));
    assert!(engine.completed_phases().is_empty());
    let run = tokio::spawn({
        let engine = Arc::clone(&engine);
        async move { engine.execute().await }
    });
    started.notified().await;
    assert_eq!(engine.completed_phases(), [T::HotplugStop, T::IoShutdown]);
    assert!(!engine.is_complete());
    gate.notify_one();
    let report = run.await.unwrap();
    assert!(!report.has_errors());
    assert_eq!(engine.completed_phases(), T::ALL);
    assert!(engine.is_complete());
}

#[tokio::test]
async fn combined_error_names_every_failed_phase() {
    let probe = Probe::new();
    let mut acts = ALL_OK;
    acts[3] = Act::Fail;
    let mut actions: Vec<Phase> = T::ALL
        .iter()
        .zip(acts)
        .map(|(&p, act)| probe.phase(p, act))
        .collect();
    actions[5] = Phase::new(core::future::pending::<Result<(), TestError>>);
    let engine =
        CleanupEngine::<T>::new(actions).with_timeout(T::MountCleanup, Duration::from_millis(20));
    let err = engine.execute().await.into_result().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cleanup failed in 2 of 7 phases: vm_shutdown (failed), \
         mount_cleanup (timed out after 20ms)"
    );
    let source = std::error::Error::source(&err).expect("first cause");
    assert!(source.is::<TestError>());
    assert_eq!(source.to_string(), "vm_shutdown");
    let failures = err.failures();
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0].phase(), T::VmShutdown);
    assert!(std::error::Error::source(&failures[0])
        .unwrap()
        .is::<TestError>());
    assert_eq!(failures[1].phase(), T::MountCleanup);
    assert!(matches!(
        failures[1].outcome(),
        PhaseOutcome::TimedOut(d) if *d == Duration::from_millis(20)
    ));
    assert_eq!(err.report().phases().len(), 7);
    // Every phase after the failures still ran.
    assert_eq!(probe.runs(), [1, 1, 1, 1, 1, 0, 1]);
}

#[tokio::test]
async fn panicking_phases_are_recorded_and_next_phase_runs() {
    let probe = Probe::new();
    let mut actions: Vec<Phase> = T::ALL
        .iter()
        .map(|&p| {
            probe.phase(
                p,
                if p == T::IoShutdown {
                    Act::Panic
                } else {
                    Act::Ok
                },
            )
        })
        .collect();
    actions[4] = Phase::sync(|| -> Result<(), TestError> { panic!("sync boom") });
    actions[5] = Phase::new(|| -> core::future::Ready<Result<(), TestError>> {
        panic!("{}", String::from("panicked building the future"))
    });
    let report = CleanupEngine::<T>::new(actions).execute().await;
    assert_eq!(
        report.failed_phases(),
        [T::IoShutdown, T::NetworkCleanup, T::MountCleanup]
    );
    let texts: Vec<String> = report
        .failed_phases()
        .iter()
        .map(|&p| outcome(&report, p).to_string())
        .collect();
    assert_eq!(
        texts,
        [
            "panicked: boom in io_shutdown",
            "panicked: sync boom",
            "panicked: panicked building the future"
        ]
    );
    assert_eq!(probe.runs(), [1, 1, 1, 1, 0, 0, 1]);
    assert!(ok(outcome(&report, T::EventClose)));
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A phase that never finishes, signals `started` when it begins and sets `dropped`
/// when its future is dropped.
fn hanging(started: &Arc<Notify>, dropped: &Arc<AtomicBool>) -> Phase {
    let (started, dropped) = (Arc::clone(started), Arc::clone(dropped));
    Phase::new(move || {
        let flag = DropFlag(Arc::clone(&dropped));
        let started = Arc::clone(&started);
        async move {
            let _flag = flag;
            started.notify_one();
            core::future::pending::<Result<(), TestError>>().await
        }
    })
}

#[tokio::test]
async fn hung_phase_times_out_is_dropped_and_next_phase_runs() {
    let probe = Probe::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Ok)).collect();
    actions[2] = hanging(&Arc::new(Notify::new()), &dropped);
    let engine =
        CleanupEngine::<T>::new(actions).with_timeout(T::ConnClose, Duration::from_millis(30));
    let report = engine.execute().await;
    let entry = report.get(T::ConnClose);
    assert!(
        matches!(entry.outcome, PhaseOutcome::TimedOut(d) if d == Duration::from_millis(30)),
        "{report}"
    );
    assert!(entry.duration >= Duration::from_millis(30));
    assert!(
        dropped.load(Ordering::SeqCst),
        "abandoned future is dropped"
    );
    assert_eq!(probe.runs(), [1, 1, 0, 1, 1, 1, 1]);
    assert_eq!(report.failed_phases(), [T::ConnClose]);
}

#[tokio::test]
async fn phase_within_its_timeout_is_ok() {
    let probe = Probe::new();
    let mut acts = ALL_OK;
    acts[1] = Act::Sleep(1);
    let engine = probe
        .engine(acts)
        .with_timeout(T::IoShutdown, Duration::from_secs(10));
    let report = engine.execute().await;
    assert!(ok(outcome(&report, T::IoShutdown)), "{report}");
}

#[test]
fn timeouts_start_at_defaults_and_can_be_overridden() {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Two {
        A,
        B,
    }
    impl PhaseId for Two {
        const ALL: &'static [Self] = &[Two::A, Two::B];
        fn index(self) -> usize {
            self as usize
        }
        fn name(self) -> &'static str {
            match self {
                Two::A => "a",
                Two::B => "b",
            }
        }
        fn default_timeout(self) -> Option<Duration> {
            (self == Two::A).then_some(Duration::from_secs(5))
        }
    }
    impl core::fmt::Display for Two {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str(self.name())
        }
    }
    let mut engine = CleanupEngine::<Two>::new(vec![Phase::noop(), Phase::noop()]);
    assert_eq!(engine.timeout(Two::A), Some(Duration::from_secs(5)));
    assert_eq!(engine.timeout(Two::B), None);
    engine = engine.with_timeout(Two::B, Duration::from_millis(7));
    assert_eq!(engine.timeout(Two::B), Some(Duration::from_millis(7)));
    engine.set_timeout(Two::A, None);
    assert_eq!(engine.timeout(Two::A), None);
}

#[tokio::test]
async fn dropped_caller_records_cancelled_and_waiter_does_not_hang() {
    let probe = Probe::new();
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Ok)).collect();
    actions[2] = hanging(&started, &dropped);
    let engine = CleanupEngine::<T>::new(actions);

    // The first caller claims conn_close, which hangs; it is dropped after 20ms. The
    // second caller starts once conn_close is running, and waits for it.
    let (first, second) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(20), engine.execute()),
        async {
            started.notified().await;
            tokio::time::timeout(Duration::from_secs(5), engine.execute()).await
        },
    );
    assert!(first.is_err(), "first caller was dropped mid-phase");
    let report = second.expect("the waiter must not hang");
    assert!(dropped.load(Ordering::SeqCst));
    assert!(
        is_already_done(outcome(&report, T::ConnClose), cancelled),
        "{report}"
    );
    assert!(is_already_done(outcome(&report, T::IoShutdown), ok));
    for &p in &T::ALL[3..] {
        assert!(
            ok(outcome(&report, p)),
            "the waiter runs the rest: {report}"
        );
    }
    assert_eq!(report.failed_phases(), [T::ConnClose]);
    assert_eq!(probe.runs(), [1, 1, 0, 1, 1, 1, 1]);
    assert!(engine.is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_task_records_cancelled_and_spawned_waiter_finishes() {
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicBool::new(false));
    let probe = Probe::new();
    let mut actions: Vec<Phase> = T::ALL.iter().map(|&p| probe.phase(p, Act::Yield)).collect();
    actions[4] = hanging(&started, &dropped);
    let engine = Arc::new(CleanupEngine::<T>::new(actions));
    let spawn = |engine: &Arc<CleanupEngine<T>>| {
        let engine = Arc::clone(engine);
        tokio::spawn(async move { engine.execute().await })
    };
    let runner = spawn(&engine);
    started.notified().await;
    let waiter = spawn(&engine);
    tokio::time::sleep(Duration::from_millis(20)).await;
    runner.abort();
    assert!(runner.await.unwrap_err().is_cancelled());
    let report = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter must not hang")
        .unwrap();
    assert!(dropped.load(Ordering::SeqCst));
    assert!(is_already_done(
        outcome(&report, T::NetworkCleanup),
        cancelled
    ));
    assert_eq!(report.failed_phases(), [T::NetworkCleanup]);
    assert_eq!(probe.runs(), [1, 1, 1, 1, 0, 1, 1]);
}

/// `n` concurrent `execute` calls, `rounds` times, on phases that yield and sleep.
async fn concurrent_executes(n: usize, rounds: usize) {
    let acts = [
        Act::Yield,
        Act::Fail,
        Act::Sleep(1),
        Act::Yield,
        Act::Fail,
        Act::Ok,
        Act::Sleep(1),
    ];
    for _ in 0..rounds {
        let probe = Probe::new();
        let engine = Arc::new(probe.engine(acts));
        let calls: Vec<_> = (0..n)
            .map(|_| {
                let engine = Arc::clone(&engine);
                tokio::spawn(async move { engine.execute().await })
            })
            .collect();
        let mut reports = Vec::new();
        for call in calls {
            reports.push(call.await.unwrap());
        }
        assert_eq!(probe.runs(), [1; 7], "each phase ran exactly once");
        assert_eq!(
            probe.assert_sequential(),
            T::ALL,
            "in order, never overlapping"
        );
        for report in &reports {
            assert_eq!(report.phases().len(), 7);
            assert_eq!(
                report.failed_phases(),
                [T::IoShutdown, T::NetworkCleanup],
                "every caller sees every failure: {report}"
            );
            for (entry, &phase) in report.phases().iter().zip(T::ALL) {
                assert_eq!(entry.phase, phase);
            }
        }
        for &phase in T::ALL {
            let runners = reports
                .iter()
                .filter(|r| !matches!(outcome(r, phase), PhaseOutcome::AlreadyDone(_)))
                .count();
            assert_eq!(runners, 1, "exactly one caller ran {phase}");
            for r in &reports {
                assert!(
                    failed(outcome(r, phase))
                        || ok(outcome(r, phase))
                        || is_already_done(outcome(r, phase), ok)
                        || is_already_done(outcome(r, phase), failed),
                    "{r}"
                );
            }
        }
        assert!(engine.is_complete());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_executes_run_each_phase_exactly_once() {
    concurrent_executes(2, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_executes_run_each_phase_exactly_once() {
    concurrent_executes(8, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_from_racing_execute_keeps_order() {
    for _ in 0..50 {
        let probe = Probe::new();
        let engine = Arc::new(probe.engine([Act::Yield; 7]));
        let from = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.execute_from(T::VmShutdown).await })
        };
        let all = {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.execute().await })
        };
        let (from, all) = (from.await.unwrap(), all.await.unwrap());
        probe.assert_sequential();
        let runs = probe.runs();
        assert_eq!(&runs[3..], [1; 4]);
        for &phase in T::ALL {
            let outcomes = [outcome(&from, phase), outcome(&all, phase)];
            let own: Vec<_> = outcomes
                .iter()
                .filter(|o| !matches!(o, PhaseOutcome::AlreadyDone(_)))
                .collect();
            assert_eq!(own.len(), 1, "{phase} claimed once: {from}\n{all}");
            if skipped(own[0]) {
                assert!(phase.index() < 3);
                assert_eq!(runs[phase.index()], 0);
            } else {
                assert!(ok(own[0]));
                assert_eq!(runs[phase.index()], 1);
            }
        }
        assert!(!from.has_errors() && !all.has_errors());
    }
}

#[test]
fn runs_without_a_tokio_runtime_across_threads() {
    for _ in 0..20 {
        let runs: Arc<[AtomicUsize; 7]> = Arc::default();
        let actions = T::ALL
            .iter()
            .map(|&p| {
                let runs = Arc::clone(&runs);
                Phase::new(move || {
                    runs[p.index()].fetch_add(1, Ordering::SeqCst);
                    async move {
                        YieldOnce(false).await;
                        std::thread::sleep(Duration::from_micros(200));
                        YieldOnce(false).await;
                        Ok::<(), TestError>(())
                    }
                })
            })
            .collect();
        let engine = Arc::new(CleanupEngine::<T>::new(actions));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || block_on(engine.execute()))
            })
            .collect();
        for thread in threads {
            let report = thread.join().unwrap();
            assert_eq!(report.phases().len(), 7);
            assert!(!report.has_errors(), "{report}");
        }
        let runs: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        assert_eq!(runs, [1; 7]);
    }
}

#[test]
fn timeout_outside_tokio_is_recorded_not_propagated() {
    let actions = T::ALL
        .iter()
        .map(|_| Phase::new(|| async { Ok::<(), TestError>(()) }))
        .collect();
    let engine =
        CleanupEngine::<T>::new(actions).with_timeout(T::IoShutdown, Duration::from_secs(1));
    let report = block_on(engine.execute());
    assert!(
        matches!(outcome(&report, T::IoShutdown), PhaseOutcome::Panicked(_)),
        "{report}"
    );
    assert_eq!(report.failed_phases(), [T::IoShutdown]);
}

#[test]
fn engine_is_send_and_sync_and_its_futures_are_send() {
    fn assert_send_sync<X: Send + Sync>(_: &X) {}
    fn assert_send<X: Send>(_: &X) {}
    let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect());
    assert_send_sync(&engine);
    assert_send(&engine.execute());
    assert_send(&engine.execute_from(T::ConnClose));
}

#[test]
#[should_panic(expected = "got 6 phase actions for 7 phases")]
fn new_rejects_a_wrong_number_of_actions() {
    let _ = CleanupEngine::<T>::new((0..6).map(|_| Phase::noop()).collect());
}

#[test]
fn debug_shows_each_phase_state() {
    let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect())
        .with_timeout(T::VmShutdown, Duration::from_secs(3));
    let _ = block_on(engine.execute_from(T::IoShutdown));
    let text = format!("{engine:?}");
    assert!(text.contains("hotplug_stop: Phase(noop) skipped"), "{text}");
    assert!(
        text.contains("vm_shutdown: Phase(noop) done timeout=3s"),
        "{text}"
    );
}

#[test]
fn distinct_phases_in_reports() {
    let engine = CleanupEngine::<T>::new((0..7).map(|_| Phase::noop()).collect());
    let report = block_on(engine.execute());
    let phases: HashSet<T> = report.phases().iter().map(|r| r.phase).collect();
    assert_eq!(phases.len(), 7);
}
