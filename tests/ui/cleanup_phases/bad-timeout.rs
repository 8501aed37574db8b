use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
struct TeardownPhases {
    #[phase(timeout = "5 parsecs")]
    io_shutdown: Phase,
    #[phase(timeout = "0ms")]
    vm_shutdown: Phase,
    #[phase(timeout = "30")]
    event_close: Phase,
}

fn main() {}
