use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => B))]
enum S {
    #[initial]
    A = 0,
    B = 256,
}

fn main() {}
