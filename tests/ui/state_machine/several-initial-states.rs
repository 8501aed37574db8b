use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => B))]
enum S {
    #[initial]
    A,
    #[initial]
    B,
}

fn main() {}
