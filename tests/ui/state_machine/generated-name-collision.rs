use lifecycle_core::state_machine;

#[state_machine(transitions(
    go_on: A => B,
    goOn: B => A,
))]
enum S {
    #[initial]
    A,
    B,
}

fn main() {}
