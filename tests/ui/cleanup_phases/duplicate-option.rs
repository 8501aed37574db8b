use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases(orchestrator = Teardown, phase = Step, orchestrator = Stopper)]
struct TeardownPhases {
    io_shutdown: Phase,
}

fn main() {}
