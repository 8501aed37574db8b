//! Stress: many tasks and threads race the same transition; exactly one wins, every time.

use spinbox::state::{ShimState, ShimStateMachine};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

#[test]
fn thousand_tokio_tasks_race_start_creating() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    for round in 0..100 {
        let sm = Arc::new(ShimStateMachine::new());
        let start = Arc::new(tokio::sync::Barrier::new(1000));
        let winners = runtime.block_on(async {
            let tasks: Vec<_> = (0..1000)
                .map(|_| {
                    let (sm, start) = (sm.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        sm.try_start_creating()
                    })
                })
                .collect();
            let mut winners = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(from) => {
                        assert_eq!(from, ShimState::Idle);
                        winners += 1;
                    }
                    Err(e) => assert_eq!(e.observed(), ShimState::Creating),
                }
            }
            winners
        });
        assert_eq!(winners, 1, "round {round}");
        assert_eq!(sm.state(), ShimState::Creating);
    }
}

#[test]
fn sixty_four_threads_race_start_creating() {
    for round in 0..100 {
        let sm = Arc::new(ShimStateMachine::new());
        let barrier = Arc::new(Barrier::new(64));
        let winners = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..64)
            .map(|_| {
                let (sm, barrier, winners) = (sm.clone(), barrier.clone(), winners.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    if sm.try_start_creating().is_ok() {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(winners.load(Ordering::SeqCst), 1, "round {round}");
    }
}

/// The whole lifecycle raced: many threads each try every transition in a loop. Every
/// success must be an edge of the declared graph, and the successes replayed in a valid order
/// must end where the machine is.
#[test]
fn threads_racing_every_transition_only_follow_declared_edges() {
    use lifecycle_core::StateMachine;
    for _ in 0..20 {
        let sm = Arc::new(ShimStateMachine::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let sm = sm.clone();
                std::thread::spawn(move || {
                    let mut edges = Vec::new();
                    for i in 0..200 {
                        let transition =
                            &ShimState::TRANSITIONS[(t + i) % ShimState::TRANSITIONS.len()];
                        // shut_down is terminal; keep the machine busy before taking it.
                        if transition.name == "shut_down" && i < 190 {
                            continue;
                        }
                        if let Ok(from) = sm.machine().try_apply(transition) {
                            edges.push((from, transition.target));
                        }
                    }
                    edges
                })
            })
            .collect();
        let mut total = 0;
        for t in threads {
            for (from, to) in t.join().unwrap() {
                assert!(ShimState::can_transition(from, to), "{from} -> {to}");
                total += 1;
            }
        }
        assert!(total >= 1);
        assert_eq!(sm.state(), ShimState::ShuttingDown);
    }
}
