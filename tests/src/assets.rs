//! The provisioned VM assets, for the real-VM suites and benchmarks: the test harness is an
//! edge, so it is where the assets directory is chosen.

use std::path::{Path, PathBuf};

use spinbox_manifest::{Assets, ASSETS_ENV};

/// The assets directory: `$SPINBOX_ASSETS`, else `target/assets` of this workspace (where
/// `scripts/provision` puts them).
pub fn dir() -> PathBuf {
    std::env::var_os(ASSETS_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || {
                let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")); // <workspace>/tests
                crate_dir
                    .parent()
                    .unwrap_or(crate_dir)
                    .join("target/assets")
            },
            PathBuf::from,
        )
}

/// The provisioned assets, booting the production agent. Panics, saying how to provision,
/// when they are missing or stale: real-VM tests fail rather than skip.
pub fn assets() -> Assets {
    let dir = dir();
    Assets::load(&dir).unwrap_or_else(|e| panic!("{}", hint(&e, &dir)))
}

/// The provisioned assets booting the test agent, which obeys `spinbox.agent=mute` and
/// `spinbox.agent=stubborn` on the kernel command line. Panics like [`assets`].
pub fn test_assets() -> Assets {
    assets()
        .with_test_agent()
        .unwrap_or_else(|e| panic!("{}", hint(&e, &dir())))
}

fn hint(e: &dyn std::error::Error, dir: &Path) -> String {
    format!(
        "VM assets unusable in {} ({e}): run scripts/provision (scripts/test-all does) \
         before the tests, or point {ASSETS_ENV} at a provisioned directory",
        dir.display()
    )
}
