use lifecycle_core::state_machine;

#[state_machine(transitions(finish: Up => Dnoe))]
enum S {
    #[initial]
    Up,
    #[terminal]
    Done,
}

fn main() {}
