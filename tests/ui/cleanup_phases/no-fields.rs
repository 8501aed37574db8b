use lifecycle_core::cleanup_phases;

#[cleanup_phases]
struct TeardownPhases {}

fn main() {}
