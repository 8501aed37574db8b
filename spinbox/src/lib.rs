//! # spinbox
//!
//! The VM shim lifecycle built on `lifecycle-core`.
//!
//! | module | what is inside |
//! |---|---|
//! | [`state`] | `ShimState`, declared with `#[state_machine]`, and the shim's state machine with its intentional-shutdown flag |
//! | [`cleanup`] | `CleanupPhases`, declared with `#[cleanup_phases]`: the seven teardown phases |
//! | [`vm`] | the QEMU VM manager: KVM check, QEMU config and process, QMP, escalation, agent client, `VmManager` |
//! | [`shim`] | the facade tying the three together: create, delete, shutdown, crash handling, events |
//!
//! The `spinbox` binary (`src/bin/spinbox.rs`) drives a real VM through all of it.

pub mod cleanup;
#[cfg(not(loom))]
pub mod shim;
pub mod state;
// The VM manager does I/O through tokio's net/process, which tokio leaves out under
// `--cfg loom`; the loom models cover the lock-free state machine and cleanup instead.
#[cfg(not(loom))]
pub mod vm;
