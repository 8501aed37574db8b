//! When the agent reached each step of its start, in guest uptime (`CLOCK_BOOTTIME`, which
//! needs no `/proc`), reported by `Info` so the host can tell where a boot's time goes.

use std::sync::OnceLock;

use nix::time::{clock_gettime, ClockId};

/// A step of the agent's start.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// `main` began.
    InitStarted,
    /// Filesystems mounted and modules loaded.
    ModulesLoaded,
    /// The ttrpc server listens.
    Serving,
}

static MARKS: [OnceLock<f64>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];

/// Records `step` now (the first record of each step stays).
pub fn mark(step: Step) {
    if let Ok(t) = clock_gettime(ClockId::CLOCK_BOOTTIME) {
        #[allow(clippy::cast_precision_loss)] // seconds since boot fit an f64 exactly enough
        let secs = t.tv_sec() as f64 + f64::from(u32::try_from(t.tv_nsec()).unwrap_or(0)) / 1e9;
        let _ = MARKS[step as usize].set(secs);
    }
}

/// The recorded steps, 0 for those not reached.
pub fn get(step: Step) -> f64 {
    MARKS[step as usize].get().copied().unwrap_or(0.0)
}
