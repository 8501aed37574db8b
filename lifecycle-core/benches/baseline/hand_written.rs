//! The hand-written baseline of the transition benchmarks: an `AtomicU8` doing exactly the
//! compare-exchanges a generated machine over `NotStarted | Running | Paused | Stopped |
//! Failed` does (lifecycle-core's benchmark declares it), and the 2-thread contention harness. Shared by `lifecycle-core/benches/transitions.rs` and
//! `tests/benches/transitions.rs` (through `#[path]`), so both measure against the same code.

use criterion::{BenchmarkId, Criterion};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// `Running`'s discriminant.
pub const RUNNING: u8 = 1;
/// `Paused`'s discriminant.
pub const PAUSED: u8 = 2;
/// `Stopped`'s discriminant.
pub const STOPPED: u8 = 3;
/// `Failed`'s discriminant.
pub const FAILED: u8 = 4;

/// The hand-written equivalent of the generated machine.
pub struct HandWritten(pub AtomicU8);

impl HandWritten {
    /// `Running → Paused`.
    #[inline]
    pub fn pause(&self) -> Result<u8, u8> {
        self.cas(RUNNING, PAUSED)
    }
    /// `Paused → Running`.
    #[inline]
    pub fn resume(&self) -> Result<u8, u8> {
        self.cas(PAUSED, RUNNING)
    }
    /// `Running | Paused → Stopped`.
    #[inline]
    pub fn stop(&self) -> Result<u8, u8> {
        self.enter_from_any_of(STOPPED, |s| s == RUNNING || s == PAUSED)
    }
    /// `Stopped → Running`.
    #[inline]
    pub fn restart(&self) -> Result<u8, u8> {
        self.cas(STOPPED, RUNNING)
    }
    /// `* → Failed`: any state but `Failed`.
    #[inline]
    pub fn fail(&self) -> Result<u8, u8> {
        self.enter_from_any_of(FAILED, |s| s != FAILED)
    }
    /// `Failed → Running`.
    #[inline]
    pub fn recover(&self) -> Result<u8, u8> {
        self.cas(FAILED, RUNNING)
    }
    #[inline]
    fn cas(&self, from: u8, to: u8) -> Result<u8, u8> {
        self.0
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
    }
    #[inline]
    fn enter_from_any_of(&self, target: u8, source: impl Fn(u8) -> bool) -> Result<u8, u8> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            if !source(current) {
                return Err(current);
            }
            match self
                .0
                .compare_exchange_weak(current, target, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(from) => return Ok(from),
                Err(actual) => current = actual,
            }
        }
    }
}

/// One benchmark per case, each running its operation on 2 threads at once.
pub fn contended_group(c: &mut Criterion, group: &str, cases: &[(&str, &(dyn Fn() + Sync))]) {
    let mut g = c.benchmark_group(group);
    for &(name, op) in cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), &op, |b, op| {
            b.iter_custom(|iters| contended(iters, *op));
        });
    }
    g.finish();
}

/// Runs `op` `iters` times on each of 2 threads at once and returns the wall clock of the
/// whole contended run (criterion divides it by `iters`).
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

/// Prints `generated` / `hand_written_atomic` for each group, from the medians criterion
/// just wrote (`<target>/criterion/<group>/<bench>/new/estimates.json`). Silent when a
/// group was filtered out or criterion ran in test mode (no estimates).
pub fn print_ratios(groups: &[&str]) {
    let root = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    let median = |group: &str, bench: &str| -> Option<f64> {
        let path = root
            .join("criterion")
            .join(group)
            .join(bench)
            .join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let median = &text[text.find("\"median\"")?..];
        let value = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
        let end = value.find([',', '}'])?;
        value[..end].trim().parse().ok()
    };
    for group in groups {
        if let (Some(generated), Some(hand)) = (
            median(group, "generated"),
            median(group, "hand_written_atomic"),
        ) {
            println!(
                "{group}: generated {generated:.2} ns / hand_written_atomic {hand:.2} ns = {:.3}",
                generated / hand
            );
        }
    }
}
