use lifecycle_core::state_machine;

// The generated machine is `Machine<O = NoObserver>`: a state enum or a machine named `O`
// would be shadowed by that type parameter.
mod enum_named_o {
    use super::state_machine;

    #[state_machine(transitions(go: A => B))]
    enum O {
        #[initial]
        A,
        B,
    }
}

mod machine_named_o {
    use super::state_machine;

    #[state_machine(machine = O, transitions(go: A => B))]
    enum S {
        #[initial]
        A,
        B,
    }
}

fn main() {}
