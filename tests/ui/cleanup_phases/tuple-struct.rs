use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
struct TeardownPhases(Phase, Phase);

fn main() {}
