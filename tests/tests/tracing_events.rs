//! With lifecycle-core's `tracing` feature: a debug event per successful transition (machine,
//! transition, from, to), none for a refused one; a span per cleanup phase and a warning
//! listing the failed phases; a warning for each panic of a phase observer.

use lifecycle_core::Phase;
use spinbox::cleanup::{CleanupOrchestrator, CleanupPhases};
use spinbox::state::AtomicShimState;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records every event and span as `name: field=value …` lines.
#[derive(Default, Clone)]
struct Recorder(Arc<Lines>);

#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    next: AtomicU64,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("span {}:", span.metadata().name()));
        span.record(&mut fields);
        self.0.lines.lock().unwrap().push(fields.0);
        Id::from_u64(self.0.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(format!("{}:", event.metadata().level()));
        event.record(&mut fields);
        self.0.lines.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn recorded(f: impl FnOnce()) -> Vec<String> {
    let recorder = Recorder::default();
    tracing::subscriber::with_default(recorder.clone(), f);
    let lines = recorder.0.lines.lock().unwrap().clone();
    lines
}

#[test]
fn each_successful_transition_emits_one_debug_event() {
    let lines = recorded(|| {
        let sm = AtomicShimState::new();
        sm.try_start_creating().unwrap();
        assert!(sm.try_start_deleting().is_err(), "refused: no event");
        sm.try_mark_created().unwrap();
    });
    let transitions: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("state transition"))
        .collect();
    assert_eq!(transitions.len(), 2, "{lines:#?}");
    assert!(transitions[0].starts_with("DEBUG:"), "{lines:#?}");
    for field in [
        "machine=AtomicShimState",
        "transition=start_creating",
        "from=idle",
        "to=creating",
    ] {
        assert!(
            transitions[0].contains(field),
            "{field} in {}",
            transitions[0]
        );
    }
    for field in ["transition=mark_created", "from=creating", "to=created"] {
        assert!(
            transitions[1].contains(field),
            "{field} in {}",
            transitions[1]
        );
    }
}

#[test]
fn cleanup_spans_each_phase_and_warns_about_failures() {
    let lines = recorded(|| {
        let ok = || Phase::new(|| async { Ok::<(), std::io::Error>(()) });
        let orch = CleanupOrchestrator::new(CleanupPhases {
            hotplug_stop: ok(),
            io_shutdown: ok(),
            conn_close: Phase::new(|| async { Err::<(), _>("socket gone") }),
            vm_shutdown: ok(),
            network_cleanup: ok(),
            mount_cleanup: Phase::sync(|| Err::<(), _>("busy")),
            event_close: ok(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _ = rt.block_on(orch.execute());
    });
    let spans: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("span cleanup_phase"))
        .collect();
    assert_eq!(spans.len(), 7, "{lines:#?}");
    assert!(spans[0].contains("phase=hotplug_stop") && spans[6].contains("phase=event_close"));
    let warning = lines
        .iter()
        .find(|l| l.starts_with("WARN:"))
        .unwrap_or_else(|| panic!("a warning in {lines:#?}"));
    assert!(warning.contains("conn_close, mount_cleanup"), "{warning}");
}

#[lifecycle_core::cleanup_phases]
struct WatchedPhases {
    stop_vm: Phase,
    remove_dir: Phase,
}

/// An observer that panics in both hooks.
struct BrokenObserver;

impl lifecycle_core::PhaseObserver<WatchedPhase> for BrokenObserver {
    fn phase_started(&self, phase: WatchedPhase, _: lifecycle_core::PhaseKind) {
        panic!("observer broke on {phase}");
    }

    fn phase_finished(
        &self,
        phase: WatchedPhase,
        _: lifecycle_core::PhaseKind,
        _: &lifecycle_core::PhaseOutcome,
        _: std::time::Duration,
    ) {
        panic!("observer broke after {phase}");
    }
}

#[test]
fn a_panicking_phase_observer_is_ignored_with_a_warning() {
    let lines = recorded(|| {
        let orch = WatchedOrchestrator::new(WatchedPhases {
            stop_vm: Phase::new(|| async { Ok::<(), std::io::Error>(()) }),
            remove_dir: Phase::sync(|| Ok::<(), std::io::Error>(())),
        })
        .with_observer(Arc::new(BrokenObserver));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let report = rt.block_on(orch.execute());
        assert!(!report.has_errors(), "{report}");
    });
    let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("WARN:")).collect();
    assert_eq!(warnings.len(), 4, "{lines:#?}");
    for (warning, fields) in warnings.iter().zip([
        [
            "phase=stop_vm",
            "hook=phase_started",
            "panic=observer broke on stop_vm",
        ],
        [
            "phase=stop_vm",
            "hook=phase_finished",
            "panic=observer broke after stop_vm",
        ],
        [
            "phase=remove_dir",
            "hook=phase_started",
            "panic=observer broke on remove_dir",
        ],
        [
            "phase=remove_dir",
            "hook=phase_finished",
            "panic=observer broke after remove_dir",
        ],
    ]) {
        for field in fields.iter().chain(&["phase observer panicked"]) {
            assert!(warning.contains(field), "{field} in {warning}");
        }
    }
}
