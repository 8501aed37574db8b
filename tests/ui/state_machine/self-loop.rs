use lifecycle_core::state_machine;

#[state_machine(transitions(
    start: Idle => Running,
    refresh: Running => Running,
))]
enum S {
    #[initial]
    Idle,
    Running,
}

fn main() {}
