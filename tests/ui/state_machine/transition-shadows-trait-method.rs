use lifecycle_core::state_machine;

#[state_machine(transitions(apply: Draft => Applied))]
enum Patch {
    #[initial]
    Draft,
    Applied,
}

fn main() {}
