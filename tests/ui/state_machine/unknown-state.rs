use lifecycle_core::state_machine;

#[state_machine(transitions(
    start: Idle => Runing,
))]
enum S {
    #[initial]
    Idle,
    Running,
}

fn main() {}
