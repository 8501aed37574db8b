//! One cleanup run of 7 no-op async phases through spinbox's generated orchestrator (plus the
//! `reset` needed to repeat it) against a hand-written async function awaiting the same 7
//! closures in sequence (SPEC §5.2). Both run on the same current-thread runtime.

use criterion::{criterion_group, criterion_main, Criterion};
use lifecycle_core::Phase;
use spinbox::cleanup::{CleanupOrchestrator, CleanupPhases};
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;

type PhaseFuture = Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

/// An async phase that does nothing (the body a real phase would replace).
#[allow(clippy::unused_async)] // it must be a future to stand for an async phase
async fn noop() -> Result<(), std::io::Error> {
    Ok(())
}

fn phase() -> Phase {
    Phase::new(noop)
}

fn orchestrator() -> CleanupOrchestrator {
    CleanupOrchestrator::new(CleanupPhases {
        hotplug_stop: phase(),
        io_shutdown: phase(),
        conn_close: phase(),
        vm_shutdown: phase(),
        network_cleanup: phase(),
        mount_cleanup: phase(),
        event_close: phase(),
    })
}

/// The baseline: the same seven calls, awaited in order, errors collected by hand.
async fn hand_written(phases: &[fn() -> PhaseFuture; 7]) -> usize {
    let mut failed = 0;
    for phase in phases {
        if phase().await.is_err() {
            failed += 1;
        }
    }
    failed
}

fn boxed_noop() -> PhaseFuture {
    Box::pin(noop())
}

fn cleanup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("cleanup_7_noop_phases");
    let phases = [boxed_noop as fn() -> _; 7];
    g.bench_function("hand_written_sequence", |b| {
        b.iter(|| black_box(rt.block_on(hand_written(black_box(&phases)))));
    });
    let mut orch = orchestrator();
    g.bench_function("generated_orchestrator", |b| {
        b.iter(|| {
            orch.reset();
            let report = rt.block_on(orch.execute());
            black_box(report.has_errors())
        });
    });
    // The explicit no-op (`Phase::noop()`), for phases that do not apply: nothing to call.
    let mut noops = CleanupOrchestrator::new(CleanupPhases {
        hotplug_stop: Phase::noop(),
        io_shutdown: Phase::noop(),
        conn_close: Phase::noop(),
        vm_shutdown: Phase::noop(),
        network_cleanup: Phase::noop(),
        mount_cleanup: Phase::noop(),
        event_close: Phase::noop(),
    });
    g.bench_function("generated_orchestrator_noop_phases", |b| {
        b.iter(|| {
            noops.reset();
            let report = rt.block_on(noops.execute());
            black_box(report.has_errors())
        });
    });
    g.finish();
}

criterion_group!(benches, cleanup);
criterion_main!(benches);
