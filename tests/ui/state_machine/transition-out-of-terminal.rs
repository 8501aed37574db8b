use lifecycle_core::state_machine;

#[state_machine(transitions(
    stop: Running => Stopped,
    revive: Stopped => Running,
))]
enum S {
    #[initial]
    Running,
    #[terminal]
    Stopped,
}

fn main() {}
