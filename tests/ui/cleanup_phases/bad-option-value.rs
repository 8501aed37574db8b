use lifecycle_core::{cleanup_phases, Phase};

// Each mistake is reported once; `crate = "lifecycle_core"` between them still applies.
#[cleanup_phases(phase = "Step", crate = "lifecycle_core", orchestrator = Teardown Runner)]
struct TeardownPhases {
    io_shutdown: Phase,
}

fn main() {}
