//! What every loom model file shares: [`model`], which checks a model under loom's default
//! bounds and prints how many interleavings it explored — counted by the model itself, so
//! the count needs no `LOOM_LOG` output (which runs to gigabytes).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Checks `f` under every interleaving loom explores (its default bounds, or those set by
/// `LOOM_MAX_PREEMPTIONS` and friends) and prints `<test>: explored N interleavings`.
#[track_caller]
pub fn model(f: impl Fn() + Sync + Send + 'static) {
    // The test's name (libtest names the thread after it), or where the model is declared.
    let name = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map_or_else(|| std::panic::Location::caller().to_string(), str::to_owned);
    // A plain std counter: it is not part of the model, so loom does not track it, and the
    // explored state space stays the code under test's.
    let iterations = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&iterations);
    loom::model::Builder::new().check(move || {
        counter.fetch_add(1, Ordering::Relaxed);
        f();
    });
    println!(
        "{name}: explored {} interleavings",
        iterations.load(Ordering::Relaxed)
    );
}
