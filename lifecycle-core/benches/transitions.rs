//! Generated `try_*` methods against the hand-written compare-exchange, on every path: one
//! source, several sources, `*`, and one source with 2 threads contending.
//!
//! The configuration is in every group's name, as the `tracing` feature changes what a
//! successful transition compiles to:
//!
//! ```text
//! cargo bench -p lifecycle-core --bench transitions                     # <path>_no_tracing
//! cargo bench -p lifecycle-core --bench transitions --features tracing  # <path>_tracing
//! ```
//!
//! With `tracing` no subscriber is installed: the cost measured is the disabled callsite's
//! check. Targets: ≤ 1.05× the hand-written machine without `tracing`, ≤ 1.15× with it. Each
//! round trip (the path measured, then a single-source transition back to `Running`) leaves
//! the machine where it started, so every iteration does the same work; the ratios of this
//! run are printed at the end.
#![allow(missing_docs)]

#[path = "baseline/hand_written.rs"]
mod hand_written;

use criterion::Criterion;
use hand_written::{contended_group, print_ratios, HandWritten, RUNNING};
use lifecycle_core::state_machine;
use std::hint::black_box;
use std::sync::atomic::AtomicU8;

// No terminal state, so every round trip can return to `Running` through transitions:
// both sides of each comparison do only compare-exchanges (a `force` back would add a traced
// swap to the generated side alone).
#[state_machine(machine = Vm, transitions(
    start: NotStarted => Running,
    pause: Running => Paused,
    resume: Paused => Running,
    stop: Running | Paused => Stopped,
    restart: Stopped => Running,
    fail: * => Failed,
    recover: Failed => Running,
))]
enum VmState {
    #[initial]
    NotStarted,
    Running,
    Paused,
    Stopped,
    Failed,
}

const CONFIG: &str = if cfg!(feature = "tracing") {
    "tracing"
} else {
    "no_tracing"
};

fn running() -> (HandWritten, Vm) {
    let vm = Vm::new();
    vm.try_start().unwrap();
    (HandWritten(AtomicU8::new(RUNNING)), vm)
}

fn group_name(path: &str) -> String {
    format!("{path}_{CONFIG}")
}

/// One group: the hand-written round trip, then the generated one.
fn compare(c: &mut Criterion, path: &str, hand: impl Fn(), generated: impl Fn()) {
    let mut g = c.benchmark_group(group_name(path));
    g.bench_function("hand_written_atomic", |b| b.iter(&hand));
    g.bench_function("generated", |b| b.iter(&generated));
    g.finish();
}

fn uncontended(c: &mut Criterion) {
    let (hand, vm) = running();
    compare(
        c,
        "single_source",
        || {
            black_box(hand.pause()).ok();
            black_box(hand.resume()).ok();
        },
        || {
            black_box(vm.try_pause()).ok();
            black_box(vm.try_resume()).ok();
        },
    );
    compare(
        c,
        "multi_source",
        || {
            black_box(hand.stop()).ok();
            black_box(hand.restart()).ok();
        },
        || {
            black_box(vm.try_stop()).ok();
            black_box(vm.try_restart()).ok();
        },
    );
    compare(
        c,
        "any",
        || {
            black_box(hand.fail()).ok();
            black_box(hand.recover()).ok();
        },
        || {
            black_box(vm.try_fail()).ok();
            black_box(vm.try_recover()).ok();
        },
    );
}

/// Two threads race `pause`/`resume` on one machine: about half the attempts are refused,
/// so this also measures the refusal path.
fn contended_2_threads(c: &mut Criterion) {
    let (hand, vm) = running();
    let group = group_name("contended_2_threads");
    let cases: [(&str, &(dyn Fn() + Sync)); 2] = [
        ("hand_written_atomic", &|| {
            black_box(hand.pause()).ok();
            black_box(hand.resume()).ok();
        }),
        ("generated", &|| {
            black_box(vm.try_pause()).ok();
            black_box(vm.try_resume()).ok();
        }),
    ];
    contended_group(c, &group, &cases);
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c);
    contended_2_threads(&mut c);
    c.final_summary();
    // In criterion's test mode (`cargo test --all-targets`) nothing is measured.
    if std::env::args().any(|a| a == "--bench") {
        let groups = [
            "single_source",
            "multi_source",
            "any",
            "contended_2_threads",
        ]
        .map(group_name);
        print_ratios(&groups.each_ref().map(String::as_str));
    }
}
