//! Generated `try_*` transitions against hand-written baselines (SPEC §5.1).
//!
//! Each benchmark performs a round trip that leaves the machine where it started, so every
//! iteration does the same work:
//! - single source: `pause` (Running → Paused) then `resume` (Paused → Running);
//! - multi source: `stop` (Running | Paused → Stopped), then a reset to Running;
//! - any: `fail` (`*` → Stopped), then a reset to Running.
//!
//! Baselines: a hand-written `AtomicU8` doing exactly the same compare-exchanges, a
//! `Mutex<enum>` machine, and rust-fsm (a `&mut self` state-machine crate) behind a `Mutex`.
//! "contended" variants run the same loop on 2 threads sharing one machine.
//!
//! The single-source group also runs the generated machine with a counting
//! `TransitionObserver` (one relaxed atomic add per transition), beside the hand-written
//! machine doing the same add: the observer hook itself should cost nothing more.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lifecycle_core::{Transition, TransitionObserver};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};
use tests::firecracker::{FirecrackerVm, VmState};

const NOT_STARTED: u8 = 0;
const RUNNING: u8 = 1;
const PAUSED: u8 = 2;
const STOPPED: u8 = 3;

/// The hand-written equivalent of the generated machine.
struct HandWritten(AtomicU8);

impl HandWritten {
    #[inline]
    fn pause(&self) -> Result<u8, u8> {
        self.0
            .compare_exchange(RUNNING, PAUSED, Ordering::AcqRel, Ordering::Acquire)
    }
    #[inline]
    fn resume(&self) -> Result<u8, u8> {
        self.0
            .compare_exchange(PAUSED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
    }
    #[inline]
    fn stop(&self) -> Result<u8, u8> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current != RUNNING && current != PAUSED {
                return Err(current);
            }
            match self.0.compare_exchange_weak(
                current,
                STOPPED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(from) => return Ok(from),
                Err(actual) => current = actual,
            }
        }
    }
    #[inline]
    fn fail(&self) -> Result<u8, u8> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if current == STOPPED {
                return Err(current);
            }
            match self.0.compare_exchange_weak(
                current,
                STOPPED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(from) => return Ok(from),
                Err(actual) => current = actual,
            }
        }
    }
    #[inline]
    fn force(&self, to: u8) -> u8 {
        self.0.swap(to, Ordering::AcqRel)
    }
}

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

fn multi_source_and_any(c: &mut Criterion) {
    let mut g = c.benchmark_group("multi_source");
    let hand = HandWritten(AtomicU8::new(RUNNING));
    g.bench_function("hand_written_atomic", |b| {
        b.iter(|| {
            black_box(hand.stop()).ok();
            black_box(hand.force(RUNNING));
        });
    });
    let vm = running_generated();
    g.bench_function("generated", |b| {
        b.iter(|| {
            black_box(vm.try_stop()).ok();
            black_box(vm.force(VmState::Running));
        });
    });
    g.finish();

    let mut g = c.benchmark_group("any");
    let hand = HandWritten(AtomicU8::new(RUNNING));
    g.bench_function("hand_written_atomic", |b| {
        b.iter(|| {
            black_box(hand.fail()).ok();
            black_box(hand.force(RUNNING));
        });
    });
    let vm = running_generated();
    g.bench_function("generated", |b| {
        b.iter(|| {
            black_box(vm.try_fail()).ok();
            black_box(vm.force(VmState::Running));
        });
    });
    g.finish();
    let _ = NOT_STARTED;
}

/// Runs `op` `iters` times on each of 2 threads at once; the time is the wall clock of the
/// whole contended run divided by nothing (criterion divides by `iters`).
fn contended(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            barrier.wait();
            for _ in 0..iters {
                op();
            }
        });
        barrier.wait();
        let start = Instant::now();
        for _ in 0..iters {
            op();
        }
        worker.join().unwrap();
        start.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("contended_2_threads");
    let hand = HandWritten(AtomicU8::new(RUNNING));
    let vm = running_generated();
    let locked = Locked(Mutex::new(VmState::Running));
    let fsm: Fsm = Mutex::new(rust_fsm::StateMachine::new());
    let cases: [(&str, &(dyn Fn() + Sync)); 4] = [
        ("hand_written_atomic", &|| {
            black_box(hand.pause()).ok();
            black_box(hand.resume()).ok();
        }),
        ("generated", &|| {
            black_box(vm.try_pause()).ok();
            black_box(vm.try_resume()).ok();
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
    for (name, op) in cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &op, |b, op| {
            b.iter_custom(|iters| contended(iters, *op));
        });
    }
    g.finish();
}

criterion_group!(benches, single_source, multi_source_and_any, two_threads);
criterion_main!(benches);
