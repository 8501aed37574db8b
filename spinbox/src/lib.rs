//! # spinbox
//!
//! The VM shim lifecycle built on `lifecycle-core`.

pub mod cleanup;
#[cfg(not(loom))]
pub mod shim;
pub mod state;
// The VM manager does I/O through tokio's net/process, which tokio leaves out under
// `--cfg loom`; the loom models cover the lock-free state machine and cleanup instead.
#[cfg(not(loom))]
pub mod vm;
