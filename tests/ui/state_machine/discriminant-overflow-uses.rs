use lifecycle_core::state_machine;

// The implicit discriminant of `Stopped` is 256: one error, not rustc's overflow errors too.
#[state_machine(transitions(go: Idle => Running, stop: Running => Stopped))]
#[repr(u8)]
enum S {
    #[initial]
    Idle = 254,
    Running,
    Stopped,
}

fn main() {
    let _ = AtomicS::new().try_go();
}
