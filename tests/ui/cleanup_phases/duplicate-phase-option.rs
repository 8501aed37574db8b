use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
struct TeardownPhases {
    #[phase(timeout = "1s")]
    #[phase(timeout = "2s")]
    io_shutdown: Phase,
}

fn main() {}
