use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
struct TeardownPhases {
    #[phase(retries = 3)]
    io_shutdown: Phase,
}

fn main() {}
