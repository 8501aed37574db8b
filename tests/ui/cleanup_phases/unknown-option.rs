use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases(runner = Teardown)]
struct TeardownPhases {
    io_shutdown: Phase,
}

fn main() {}
