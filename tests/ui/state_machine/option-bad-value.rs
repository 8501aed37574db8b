use lifecycle_core::state_machine;

// The bad `machine` value is the only error: the transitions still apply.
#[state_machine(machine = "Door", transitions(open: Closed => Open))]
enum DoorState {
    #[initial]
    Closed,
    #[terminal]
    Open,
}

fn main() {}
