use lifecycle_core::state_machine;

// One error, at the second `machine`: the transitions still apply, so `Open` is not
// reported unreachable.
#[state_machine(machine = Door, transitions(open: Closed => Open), machine = Gate)]
enum DoorState {
    #[initial]
    Closed,
    #[terminal]
    Open,
}

fn main() {}
