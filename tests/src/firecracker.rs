//! A Firecracker-style microVM lifecycle.

use lifecycle_core::state_machine;

/// A microVM's state as a Firecracker-like VMM tracks it.
#[state_machine(
    machine = FirecrackerVm,
    transitions(
        /// `InstanceStart`.
        start: NotStarted => Running,
        /// `PATCH /vm {"state": "Paused"}`.
        pause: Running => Paused,
        /// `PATCH /vm {"state": "Resumed"}`.
        resume: Paused => Running,
        /// `SendCtrlAltDel` or the process being stopped: from either live state.
        stop: Running | Paused => Stopped,
        /// The VMM failed; whatever it was doing is over.
        fail: * => Stopped,
    )
)]
pub enum VmState {
    /// Configured, not booted.
    #[initial]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
    /// Gone for good.
    #[terminal]
    Stopped,
}
