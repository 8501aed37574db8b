use lifecycle_core::state_machine;

// Two mistakes, two errors, in one build.
#[state_machine(atomic = u8, transitions(open: Closed => Open), transitions(close: Open => Closed))]
enum DoorState {
    #[initial]
    Closed,
    #[terminal]
    Open,
}

fn main() {}
