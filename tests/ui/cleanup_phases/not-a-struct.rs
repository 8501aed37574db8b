use lifecycle_core::cleanup_phases;

#[cleanup_phases]
enum Phases {
    First,
    Second,
}

fn main() {}
