use lifecycle_core::state_machine;

// `S::INITIAL` would name the variant, not the generated constant: the trait's `INITIAL`
// would silently be `S::INITIAL` the state.
#[state_machine(transitions(go: Idle => INITIAL))]
#[allow(non_camel_case_types)]
enum S {
    #[initial]
    Idle,
    INITIAL,
}

fn main() {
    let _ = AtomicS::new().try_go();
}
