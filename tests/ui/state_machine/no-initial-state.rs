use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => B))]
enum S {
    A,
    B,
}

fn main() {}
