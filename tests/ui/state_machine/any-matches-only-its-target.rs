use lifecycle_core::state_machine;

// `*` never includes its target: here it would match nothing.
#[state_machine(transitions(
    finish: * => Idle,
    end: Idle => Done,
))]
enum S {
    #[initial]
    Idle,
    #[terminal]
    Done,
}

fn main() {}
