use lifecycle_core::state_machine;

#[state_machine(transitions(go: Idle => to_raw))]
#[allow(non_camel_case_types)]
enum S {
    #[initial]
    Idle,
    to_raw,
}

fn main() {}
