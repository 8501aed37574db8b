use lifecycle_core::state_machine;

#[state_machine(transitions(
    go: A => B,
    orphan_out: Orphan => A,
))]
enum S {
    #[initial]
    A,
    B,
    Orphan,
}

fn main() {}
