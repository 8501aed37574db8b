//! What the real-VM benchmarks share: their run count and their statistics.

use std::time::Duration;

/// Runs per scenario: `--runs N`; `default` under `cargo bench` (which passes `--bench`);
/// one (a smoke run that keeps the benchmark from rotting) under `cargo test
/// --all-targets`, which runs bench targets without `--bench`.
pub fn runs_from_args(default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    let default = if args.iter().any(|a| a == "--bench") {
        default
    } else {
        1
    };
    args.iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Median, min and max of `samples`, in milliseconds (`samples` must not be empty).
///
/// ```
/// use std::time::Duration;
/// let ms = Duration::from_millis;
/// assert_eq!(tests::bench::stats(&[ms(3), ms(1), ms(2), ms(10)]), (2.5, 1.0, 10.0));
/// ```
pub fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        f64::midpoint(ms[n / 2 - 1], ms[n / 2])
    };
    (median, ms[0], ms[n - 1])
}
