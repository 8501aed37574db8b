use lifecycle_core::state_machine;

#[state_machine(transitions(go: A => B))]
struct NotAnEnum {
    state: u8,
}

fn main() {}
