//! Compile-fail tests: every declaration mistake is a compile error pointing at the
//! offending token. Regenerate the `.stderr` files with `TRYBUILD=overwrite` and read every
//! diff before committing.

#[test]
fn state_machine_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/state_machine/*.rs");
}

#[test]
fn cleanup_phases_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/cleanup_phases/*.rs");
}
