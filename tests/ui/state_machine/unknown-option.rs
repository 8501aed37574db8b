use lifecycle_core::state_machine;

#[state_machine(atomic = u8, transitions(go: A => B))]
enum S {
    #[initial]
    A,
    B,
}

fn main() {}
