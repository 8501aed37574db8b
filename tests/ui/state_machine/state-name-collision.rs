use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => ShuttingDown, again: A => Shutting_Down))]
#[allow(non_camel_case_types)]
enum S {
    #[initial]
    A,
    ShuttingDown,
    Shutting_Down,
}

fn main() {}
