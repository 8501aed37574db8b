use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
#[allow(non_snake_case)]
struct TeardownPhases {
    io_shutdown: Phase,
    vm_stop: Phase,
    IoShutdown: Phase,
}

fn main() {}
