//! Stress: 16 concurrent `execute` / `execute_from` callers on phases that sleep random short
//! times. Each phase runs at most once (once unless a racing `execute_from` skipped it), in
//! order, with no overlap, and every caller gets a full report.

use lifecycle_core::Phase;
use spinbox::cleanup::{CleanupOrchestrator, CleanupPhase, CleanupPhases};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn jitter(seed: &AtomicUsize) -> Duration {
    // A small xorshift: deterministic per test run, different per call.
    let mut x = seed.fetch_add(0x9E37_79B9, Ordering::Relaxed) as u64 | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_micros(x % 3000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_callers_each_phase_once_in_order() {
    let seed = Arc::new(AtomicUsize::new(12345));
    for round in 0..25 {
        let log = Arc::new(Mutex::new(Vec::<(usize, bool)>::new()));
        let runs: Arc<[AtomicUsize; 7]> = Arc::new(Default::default());
        let phase = |i: usize| {
            let (log, runs, seed) = (log.clone(), runs.clone(), seed.clone());
            Phase::new(move || {
                let (log, runs, seed) = (log.clone(), runs.clone(), seed.clone());
                async move {
                    runs[i].fetch_add(1, Ordering::SeqCst);
                    log.lock().unwrap().push((i, true));
                    tokio::time::sleep(jitter(&seed)).await;
                    log.lock().unwrap().push((i, false));
                    Ok::<(), std::io::Error>(())
                }
            })
        };
        let orch = Arc::new(CleanupOrchestrator::new(CleanupPhases {
            hotplug_stop: phase(0),
            io_shutdown: phase(1),
            conn_close: phase(2),
            vm_shutdown: phase(3),
            network_cleanup: phase(4),
            mount_cleanup: phase(5),
            event_close: phase(6),
        }));
        let callers: Vec<_> = (0..16)
            .map(|c| {
                let (orch, seed) = (orch.clone(), seed.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(jitter(&seed)).await;
                    if c % 4 == 3 {
                        orch.execute_from(CleanupPhase::ALL[c % 7]).await
                    } else {
                        orch.execute().await
                    }
                })
            })
            .collect();
        for caller in callers {
            let report = caller.await.unwrap();
            assert_eq!(report.phases().len(), 7);
            assert!(!report.has_errors());
        }
        let runs: Vec<usize> = runs.iter().map(|r| r.load(Ordering::SeqCst)).collect();
        assert!(runs.iter().all(|&r| r <= 1), "round {round}: {runs:?}");
        // A late `execute_from` may claim a still-pending earlier phase as skipped, so the
        // phases that ran need not be contiguous; they must run in increasing order, once,
        // never overlapping.
        let ran: Vec<usize> = (0..7).filter(|&i| runs[i] == 1).collect();
        assert!(!ran.is_empty());
        let log = log.lock().unwrap();
        let expected: Vec<(usize, bool)> =
            ran.iter().flat_map(|&i| [(i, true), (i, false)]).collect();
        assert_eq!(*log, expected, "round {round}: in order, never overlapping");
        assert!(orch.is_complete());
    }
}
