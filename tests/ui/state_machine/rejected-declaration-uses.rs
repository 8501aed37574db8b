use lifecycle_core::state_machine;

// One mistake, one error: the machine and its methods still exist (as stubs), so the uses
// below add nothing.
#[state_machine(transitions(
    start: Idle => Runing,
    stop: Running => Idle,
))]
#[derive(PartialOrd)]
pub enum S {
    #[initial]
    Idle,
    Running,
}

fn main() {
    let machine: AtomicS = AtomicS::new();
    let _ = machine.try_start();
    let _ = machine.try_stop();
    assert!(machine.is_idle() || machine.state() == S::Running);
    assert!(S::Idle < S::Running);
    assert_eq!(S::ALL.len(), S::TRANSITIONS.len());
    println!("{} {} {}", S::INITIAL.name(), S::Idle, S::Running.to_raw());
}
