use lifecycle_core::state_machine;

#[state_machine(machine = Door, transitions(open: Closed => Open))]
enum Door {
    #[initial]
    Closed,
    Open,
}

fn main() {
    let _ = Door::Closed;
}
