//! Macro cost (SPEC §5.3): in-process expansion time of spinbox's two declarations.
//!
//! A proc-macro crate exports nothing but its macros, so the bench compiles the macro's own
//! modules into itself (`#[path]`) and times their `expand` functions on the same token input
//! rustc would hand them. Parsing the input from text is done once, outside the timing.
// Bench targets build with `cfg(test)`, so the included modules bring their unit tests along.
#![allow(dead_code, unused_imports, missing_docs, clippy::all, clippy::pedantic)]

#[path = "../src/case.rs"]
mod case;
#[path = "../src/cleanup_phases/mod.rs"]
mod cleanup_phases;
#[path = "../src/ctxt.rs"]
mod ctxt;
#[path = "../src/item.rs"]
mod item;
#[path = "../src/options.rs"]
mod options;
#[path = "../src/state_machine/mod.rs"]
mod state_machine;

use criterion::{criterion_group, criterion_main, Criterion};
use proc_macro2::TokenStream;
use std::hint::black_box;

const SHIM_ARGS: &str = "transitions(
    start_creating: Idle => Creating,
    mark_created: Creating => Running,
    mark_creation_failed: Creating => Idle,
    start_deleting: Running => Deleting,
    shut_down: * => ShuttingDown,
)";
const SHIM_ENUM: &str = "#[repr(u8)] pub enum ShimState {
    #[initial] Idle = 0, Creating = 1, Running = 2, Deleting = 3, #[terminal] ShuttingDown = 4,
}";
const CLEANUP_STRUCT: &str = "pub struct CleanupPhases {
    pub hotplug_stop: Phase, pub io_shutdown: Phase, pub conn_close: Phase,
    pub vm_shutdown: Phase, pub network_cleanup: Phase, pub mount_cleanup: Phase,
    pub event_close: Phase,
}";

fn tokens(text: &str) -> TokenStream {
    text.parse().expect("valid tokens")
}

fn expansion(c: &mut Criterion) {
    let (args, item) = (tokens(SHIM_ARGS), tokens(SHIM_ENUM));
    let cleanup = tokens(CLEANUP_STRUCT);
    let mut g = c.benchmark_group("expand");
    // The floor any attribute macro pays: parsing its input into a syn tree.
    g.bench_function("baseline_parse_shim_enum", |b| {
        b.iter(|| black_box(syn::parse2::<syn::Item>(item.clone()).expect("parses")));
    });
    g.bench_function("baseline_parse_cleanup_struct", |b| {
        b.iter(|| black_box(syn::parse2::<syn::Item>(cleanup.clone()).expect("parses")));
    });
    g.bench_function("state_machine_shim_state", |b| {
        b.iter(|| black_box(state_machine::expand(args.clone(), item.clone())));
    });
    g.bench_function("cleanup_phases_spinbox", |b| {
        b.iter(|| black_box(cleanup_phases::expand(TokenStream::new(), cleanup.clone())));
    });
    g.finish();
}

criterion_group!(benches, expansion);
criterion_main!(benches);
