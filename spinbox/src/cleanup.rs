//! The shim's teardown: [`CleanupPhases`], declared with `#[cleanup_phases]`, and the
//! generated [`CleanupPhase`] enum and [`CleanupOrchestrator`].
//!
//! The order matters: nothing may still use a resource when the phase that releases it runs.
//! Hotplug controllers stop before the I/O they drive; I/O stops before the agent connection
//! it flows over; the connection closes before the VM goes away; the VM is gone before its
//! network and mounts are released; the event channel closes last, so every earlier phase
//! can still report through it.

use lifecycle_core::{cleanup_phases, Phase};

/// One action per teardown phase, in teardown order. Give every field; use
/// [`Phase::noop`] for a phase that does not apply.
#[cleanup_phases]
pub struct CleanupPhases {
    /// Stop CPU and memory hotplug controllers.
    pub hotplug_stop: Phase,
    /// Close the I/O forwarders (console log, stdio).
    pub io_shutdown: Phase,
    /// Close the ttrpc connections to the guest agent.
    pub conn_close: Phase,
    /// Stop the VM: the shutdown escalation, ending with QEMU reaped.
    pub vm_shutdown: Phase,
    /// Release network allocations: CNI `DEL` (the IPAM lease), the TAP device, a network
    /// namespace the shim made.
    pub network_cleanup: Phase,
    /// Unmount host-side resources and remove the VM's state directory.
    pub mount_cleanup: Phase,
    /// Close the event channel, which tells its consumers the shim is done.
    pub event_close: Phase,
}
