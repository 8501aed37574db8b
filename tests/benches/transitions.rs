//! Generated `try_*` transitions against the usual alternatives (SPEC §5.1), built **with
//! lifecycle-core's `tracing` feature** (this crate enables it for `tracing_events.rs`) and no
//! subscriber installed.
//!
//! The generated-against-hand-written comparison on every path (single source, multi source,
//! `*`, contended), without `tracing` and with it, is lifecycle-core's own benchmark:
//! `cargo bench -p lifecycle-core --bench transitions [--features tracing]`.
//!
//! Each benchmark here performs a round trip that leaves the machine where it started, so
//! every iteration does the same work: `pause` (Running → Paused) then `resume` (Paused →
//! Running).
//!
//! Baselines: a hand-written `AtomicU8` doing exactly the same compare-exchanges
//! (`lifecycle-core/benches/baseline/hand_written.rs`, shared with lifecycle-core's bench), a
//! `Mutex<enum>` machine, and rust-fsm (a `&mut self` state-machine crate) behind a `Mutex`.
//! "contended" variants run the same loop on 2 threads sharing one machine (the generated
//! machine's contended figures are in lifecycle-core's benchmark).
//!
//! The single-source group also runs the generated machine with a counting
//! `TransitionObserver` (one relaxed atomic add per transition), beside the hand-written
//! machine doing the same add: the observer hook itself should cost nothing more.

// Only the single-source half of the baseline is used here; the rest serves lifecycle-core's
// benchmark.
#[path = "../../lifecycle-core/benches/baseline/hand_written.rs"]
#[allow(dead_code)]
mod hand_written;

use criterion::Criterion;
use hand_written::{contended_group, print_ratios, HandWritten, RUNNING};
use lifecycle_core::{Transition, TransitionObserver};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use tests::firecracker::{FirecrackerVm, VmState};

/// An observer that counts transitions: one relaxed atomic add each.
#[derive(Default)]
struct Counting(AtomicU64);

impl TransitionObserver<VmState> for Counting {
    #[inline]
    fn on_transition(&self, _: &'static Transition<VmState>, _: VmState) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The hand-written machine plus the same count, by hand.
struct HandWrittenCounting(HandWritten, AtomicU64);

impl HandWrittenCounting {
    #[inline]
    fn counted(&self, result: Result<u8, u8>) -> Result<u8, u8> {
        if result.is_ok() {
            self.1.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// A `Mutex<enum>` machine, the usual lock-based alternative.
struct Locked(Mutex<VmState>);

impl Locked {
    fn transition(&self, from: &[VmState], to: VmState) -> Result<VmState, VmState> {
        let mut state = self.0.lock().unwrap();
        let current = *state;
        if from.contains(&current) {
            *state = to;
            Ok(current)
        } else {
            Err(current)
        }
    }
}

rust_fsm::state_machine! {
    vm(Running)
    Running(Pause) => Paused,
    Paused(Resume) => Running,
}

type Fsm = Mutex<rust_fsm::StateMachine<vm::Impl>>;

fn fsm_consume(m: &Fsm, input: &vm::Input) -> bool {
    m.lock().unwrap().consume(input).is_ok()
}

fn running_generated() -> FirecrackerVm {
    let vm = FirecrackerVm::new();
    vm.try_start().unwrap();
    vm
}

fn single_source(c: &mut Criterion) {
    let mut g = c.benchmark_group("single_source");
    let hand = HandWritten(AtomicU8::new(RUNNING));
    g.bench_function("hand_written_atomic", |b| {
        b.iter(|| {
            black_box(hand.pause()).ok();
            black_box(hand.resume()).ok();
        });
    });
    let vm = running_generated();
    g.bench_function("generated", |b| {
        b.iter(|| {
            black_box(vm.try_pause()).ok();
            black_box(vm.try_resume()).ok();
        });
    });
    let hand_counting = HandWrittenCounting(HandWritten(AtomicU8::new(RUNNING)), AtomicU64::new(0));
    g.bench_function("hand_written_atomic_counting", |b| {
        b.iter(|| {
            black_box(hand_counting.counted(hand_counting.0.pause())).ok();
            black_box(hand_counting.counted(hand_counting.0.resume())).ok();
        });
    });
    let observed = FirecrackerVm::with_observer(Counting::default());
    observed.try_start().unwrap();
    g.bench_function("generated_counting_observer", |b| {
        b.iter(|| {
            black_box(observed.try_pause()).ok();
            black_box(observed.try_resume()).ok();
        });
    });
    assert!(observed.observer().0.load(Ordering::Relaxed) > 0);
    let locked = Locked(Mutex::new(VmState::Running));
    g.bench_function("mutex_enum", |b| {
        b.iter(|| {
            black_box(locked.transition(&[VmState::Running], VmState::Paused)).ok();
            black_box(locked.transition(&[VmState::Paused], VmState::Running)).ok();
        });
    });
    let fsm: Fsm = Mutex::new(rust_fsm::StateMachine::new());
    g.bench_function("rust_fsm_mutex", |b| {
        b.iter(|| {
            black_box(fsm_consume(&fsm, &vm::Input::Pause));
            black_box(fsm_consume(&fsm, &vm::Input::Resume));
        });
    });
    g.finish();
}

fn two_threads(c: &mut Criterion) {
    let hand = HandWritten(AtomicU8::new(RUNNING));
    let locked = Locked(Mutex::new(VmState::Running));
    let fsm: Fsm = Mutex::new(rust_fsm::StateMachine::new());
    // The generated machine's contended figures, with and without `tracing`, come from
    // lifecycle-core's benchmark.
    let cases: [(&str, &(dyn Fn() + Sync)); 3] = [
        ("hand_written_atomic", &|| {
            black_box(hand.pause()).ok();
            black_box(hand.resume()).ok();
        }),
        ("mutex_enum", &|| {
            black_box(locked.transition(&[VmState::Running], VmState::Paused)).ok();
            black_box(locked.transition(&[VmState::Paused], VmState::Running)).ok();
        }),
        ("rust_fsm_mutex", &|| {
            black_box(fsm_consume(&fsm, &vm::Input::Pause));
            black_box(fsm_consume(&fsm, &vm::Input::Resume));
        }),
    ];
    contended_group(c, "contended_2_threads", &cases);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    single_source(&mut c);
    two_threads(&mut c);
    c.final_summary();
    // In criterion's test mode (`cargo test --all-targets`) nothing is measured.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios(&["single_source"]);
    }
}
