//! Transition observers: every successful `try_*` is reported exactly once, with the state it
//! left, by whichever thread won; every `force` is reported; refusals are not; the machine
//! without an observer stays one byte.

use lifecycle_core::{NoObserver, StateMachine, Transition, TransitionObserver};
use spinbox::state::{AtomicShimState, ShimState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use tests::firecracker::{FirecrackerVm, VmState};

const STATES: usize = 4;
const TRANSITIONS: usize = 5;

/// Counts every report by (transition, state left) and every force by (from, to).
struct Counts {
    transitions: [[AtomicUsize; STATES]; TRANSITIONS],
    forces: [[AtomicUsize; STATES]; STATES],
}

impl Default for Counts {
    fn default() -> Self {
        Self {
            transitions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicUsize::new(0))),
            forces: std::array::from_fn(|_| std::array::from_fn(|_| AtomicUsize::new(0))),
        }
    }
}

fn index_of(transition: &Transition<VmState>) -> usize {
    VmState::TRANSITIONS
        .iter()
        .position(|t| t == transition)
        .expect("a table entry")
}

impl TransitionObserver<VmState> for Counts {
    fn on_transition(&self, transition: &'static Transition<VmState>, from: VmState) {
        assert!(transition.allows(from), "{} from {from}", transition.name);
        self.transitions[index_of(transition)][from as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn on_force(&self, from: VmState, to: VmState) {
        self.forces[from as usize][to as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Counts {
    fn snapshot(&self) -> (Vec<Vec<usize>>, Vec<Vec<usize>>) {
        let read = |row: &[AtomicUsize; STATES]| -> Vec<usize> {
            row.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        };
        (
            self.transitions.iter().map(read).collect(),
            self.forces.iter().map(read).collect(),
        )
    }
}

/// 8 threads race every transition of the Firecracker lifecycle, reviving the VM with
/// `force` whenever they stop it. What each thread saw succeed, summed, must be exactly what
/// the observer was told: same count per (transition, state left), same forces.
#[test]
fn eight_threads_every_success_and_force_reported_exactly_once() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 5_000;
    let vm = Arc::new(FirecrackerVm::with_observer(Counts::default()));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (vm, barrier) = (Arc::clone(&vm), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut seen = vec![vec![0_usize; STATES]; TRANSITIONS];
                let mut forced = vec![vec![0_usize; STATES]; STATES];
                barrier.wait();
                for i in 0..ROUNDS {
                    let index = (t + i) % TRANSITIONS;
                    // Through `try_apply` half of the time: it must report the same way.
                    let result = if i % 2 == 0 {
                        vm.try_apply(&VmState::TRANSITIONS[index])
                    } else {
                        match index {
                            0 => vm.try_start(),
                            1 => vm.try_pause(),
                            2 => vm.try_resume(),
                            3 => vm.try_stop(),
                            _ => vm.try_fail(),
                        }
                    };
                    if let Ok(from) = result {
                        seen[index][from as usize] += 1;
                    }
                    if vm.is_stopped() {
                        let to = if i % 3 == 0 {
                            VmState::NotStarted
                        } else {
                            VmState::Running
                        };
                        let from = vm.force(to);
                        forced[from as usize][to as usize] += 1;
                    }
                }
                (seen, forced)
            })
        })
        .collect();
    let mut seen = vec![vec![0_usize; STATES]; TRANSITIONS];
    let mut forced = vec![vec![0_usize; STATES]; STATES];
    for thread in threads {
        let (s, f) = thread.join().unwrap();
        for (total, own) in seen.iter_mut().flatten().zip(s.iter().flatten()) {
            *total += own;
        }
        for (total, own) in forced.iter_mut().flatten().zip(f.iter().flatten()) {
            *total += own;
        }
    }
    let successes: usize = seen.iter().flatten().sum();
    assert!(successes > 1_000, "the threads made progress: {successes}");
    let (reported, reported_forces) = vm.observer().snapshot();
    assert_eq!(reported, seen, "one report per successful transition");
    assert_eq!(reported_forces, forced, "one report per force");
}

/// An ordered log of reports, for single-threaded checks.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl TransitionObserver<ShimState> for Log {
    fn on_transition(&self, transition: &'static Transition<ShimState>, from: ShimState) {
        let target = transition.target;
        self.0
            .lock()
            .unwrap()
            .push(format!("{}: {from} -> {target}", transition.name));
    }

    fn on_force(&self, from: ShimState, to: ShimState) {
        self.0
            .lock()
            .unwrap()
            .push(format!("force: {from} -> {to}"));
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn reports_successes_and_forces_not_refusals() {
    let sm = AtomicShimState::with_observer(Log::default());
    assert_eq!(sm.try_start_creating(), Ok(ShimState::Idle));
    assert!(sm.try_start_creating().is_err());
    assert!(sm.try_start_deleting().is_err());
    assert_eq!(sm.force(ShimState::Running), ShimState::Creating);
    assert_eq!(sm.try_shut_down(), Ok(ShimState::Running));
    assert!(sm.try_shut_down().is_err());
    assert!(sm.try_apply(&ShimState::TRANSITIONS[0]).is_err());
    assert_eq!(
        sm.observer().lines(),
        [
            "start_creating: idle -> creating",
            "force: creating -> running",
            "shut_down: running -> shutting_down",
        ]
    );
}

static LOG: Log = Log(Mutex::new(Vec::new()));
/// `with_observer` is `const`: an observed machine can be a `static` too.
static OBSERVED: AtomicShimState<&Log> = AtomicShimState::with_observer(&LOG);

#[test]
fn const_observed_machine_in_a_static() {
    assert_eq!(OBSERVED.try_start_creating(), Ok(ShimState::Idle));
    assert!(std::ptr::eq(*OBSERVED.observer(), &raw const LOG));
    assert_eq!(LOG.lines(), ["start_creating: idle -> creating"]);
}

/// Generic code over `StateMachine` reports through the observer the machine carries; the
/// observer may be a trait object behind an `Arc`, shared with whoever reads it.
#[test]
fn shared_dyn_observer_through_the_state_machine_trait() {
    fn run_through<M: StateMachine<State = ShimState>>(machine: &M) {
        for transition in &ShimState::TRANSITIONS[..2] {
            machine.try_apply(transition).unwrap();
        }
        machine.force(ShimState::Idle);
    }
    let log = Arc::new(Log::default());
    let observer: Arc<dyn TransitionObserver<ShimState> + Send + Sync> = log.clone();
    let sm = AtomicShimState::with_observer(observer);
    run_through(&sm);
    // Boxed and borrowed observers forward too.
    let boxed = AtomicShimState::with_observer(Box::new(Arc::clone(&log)));
    let borrowed = AtomicShimState::with_observer(&*log);
    run_through(&boxed);
    run_through(&borrowed);
    let once = [
        "start_creating: idle -> creating",
        "mark_created: creating -> created",
        "force: created -> idle",
    ];
    assert_eq!(log.lines(), once.repeat(3));
}

#[test]
fn unobserved_machine_is_still_one_byte() {
    assert_eq!(std::mem::size_of::<NoObserver>(), 0);
    assert_eq!(std::mem::size_of::<AtomicShimState>(), 1);
    assert_eq!(std::mem::size_of::<AtomicShimState<NoObserver>>(), 1);
    assert_eq!(
        std::mem::size_of::<FirecrackerVm<&Log>>(),
        2 * std::mem::size_of::<usize>(),
        "an observer adds its own size"
    );
    let sm = AtomicShimState::new();
    assert_eq!(*sm.observer(), NoObserver);
    assert_eq!(format!("{sm:?}"), "AtomicShimState { state: Idle }");
}
