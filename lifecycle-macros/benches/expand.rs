//! Macro cost (SPEC §5.3): in-process expansion time of spinbox's two declarations.
//!
//! A proc-macro crate exports nothing but its macros, so the bench compiles the macro's own
//! modules into itself (`#[path]`) and times their `expand` functions on the input rustc
//! hands them: each declaration is read from spinbox's source file, doc comments included
//! (as `#[doc = "..."]` attributes). Reading and tokenizing the source is done once, outside
//! the timing.
// Bench targets build with `cfg(test)`, so the included modules bring their unit tests along.
#![allow(dead_code, unused_imports, missing_docs, clippy::all, clippy::pedantic)]

// The macro's modules ask `proc_macro` whether they run inside the compiler (here: no).
extern crate proc_macro;

#[path = "../src/case.rs"]
mod case;
#[path = "../src/cleanup_phases/mod.rs"]
mod cleanup_phases;
#[path = "../src/ctxt.rs"]
mod ctxt;
#[path = "../src/declarations.rs"]
mod declarations;
#[path = "../src/item.rs"]
mod item;
#[path = "../src/options.rs"]
mod options;
#[path = "../src/state_machine/mod.rs"]
mod state_machine;

use criterion::{criterion_group, criterion_main, Criterion};
use declarations::{attribute_input, SHIM_STATE_SOURCE};
use proc_macro2::TokenStream;
use std::hint::black_box;

const CLEANUP_SOURCE: &str = include_str!("../../spinbox/src/cleanup.rs");

fn expansion(c: &mut Criterion) {
    let (args, item) = attribute_input(SHIM_STATE_SOURCE, "ShimState", "state_machine");
    let (cleanup_args, cleanup) =
        attribute_input(CLEANUP_SOURCE, "CleanupPhases", "cleanup_phases");
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
        b.iter(|| {
            black_box(cleanup_phases::expand(
                cleanup_args.clone(),
                cleanup.clone(),
            ))
        });
    });
    g.finish();
}

criterion_group!(benches, expansion);
criterion_main!(benches);
