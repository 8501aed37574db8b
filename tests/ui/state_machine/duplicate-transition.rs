use lifecycle_core::state_machine;

#[state_machine(transitions(
    go: A => B,
    go: B => A,
))]
enum S {
    #[initial]
    A,
    B,
}

fn main() {}
