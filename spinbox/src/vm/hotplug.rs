//! Hot-plugging vCPUs and memory into a running VM (SPEC §12): the backend-neutral types
//! of the [`Vm`](super::Vm) methods that do it.
//!
//! A VM boots with growth room ([`VmSpec::max_cpus`](super::VmSpec::max_cpus),
//! [`VmSpec::max_memory_mib`](super::VmSpec::max_memory_mib)); the backend adds and removes
//! devices within it. What the guest does with them is the guest's business: the spinbox
//! agent onlines hot-added vCPUs when asked (`Resources.OnlineCpus`), and the kernel onlines
//! hot-added memory itself (`memhp_default_state=online_movable`, which keeps it removable).
//! A removal is a request the guest may refuse (memory it cannot migrate away): the
//! backend waits for the device to go, boundedly, and reports a refusal as an error.

use std::fmt;
use std::time::Duration;

use super::BackendError;

/// A vCPU position a VM can hold, as the VMM lists it (`query-hotpluggable-cpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuSlot {
    /// Socket id.
    pub socket: u32,
    /// Core id within the socket.
    pub core: u32,
    /// Thread id within the core.
    pub thread: u32,
}

impl fmt::Display for CpuSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "socket {} core {} thread {}",
            self.socket, self.core, self.thread
        )
    }
}

/// One vCPU position and what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuState {
    /// The position.
    pub slot: CpuSlot,
    /// A vCPU is plugged there.
    pub plugged: bool,
    /// That vCPU was hot-added (it can be removed); boot vCPUs cannot.
    pub hotplugged: bool,
}

/// A hot-added memory device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDevice {
    /// The backend's id for it.
    pub id: String,
    /// Its size in MiB.
    pub size_mib: u32,
}

/// A VM's sizes and growth room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRoom {
    /// vCPUs at boot (never removed).
    pub boot_cpus: u16,
    /// Most vCPUs.
    pub max_cpus: u16,
    /// Memory at boot in MiB (never removed).
    pub boot_memory_mib: u32,
    /// Most memory in MiB.
    pub max_memory_mib: u32,
    /// Most hot-added memory devices at once.
    pub memory_slots: u16,
    /// Whether hot-added vCPUs can be removed again. QEMU (7.2, measured) under TCG
    /// crashes when a vCPU is plugged after one was unplugged, so its backend keeps every
    /// vCPU it added there; the CPU controller then never scales down.
    pub cpus_removable: bool,
}

impl HotplugRoom {
    /// Whether vCPUs may be added.
    pub fn cpus(&self) -> bool {
        self.max_cpus > self.boot_cpus
    }

    /// Whether memory may be added.
    pub fn memory(&self) -> bool {
        self.max_memory_mib > self.boot_memory_mib
    }
}

/// Why a hotplug operation failed. What it had added is undone; a removal the guest did not
/// complete in time ([`HotplugError::Timeout`]) stays pending in the guest.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// The backend cannot hot-plug.
    #[error("the {backend} backend cannot hot-plug vCPUs or memory")]
    Unsupported {
        /// The backend's name.
        backend: &'static str,
    },
    /// The VM has no room for it: no free vCPU position, memory above the maximum, or no
    /// free memory slot.
    #[error("no room to add {what}: {detail}")]
    NoRoom {
        /// `a vCPU` or `memory`.
        what: &'static str,
        /// Which bound.
        detail: String,
    },
    /// Nothing to remove, or not removable (a boot vCPU, an unknown device).
    #[error("cannot remove {what}: {detail}")]
    NotRemovable {
        /// `a vCPU` or `memory`.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A memory size that is zero or not a multiple of the guest's memory block.
    #[error(
        "hot-added memory must be a positive multiple of {block} MiB, got {0} MiB",
        block = super::MEMORY_BLOCK_MIB
    )]
    MemorySize(u32),
    /// The guest refused to release a device (memory in use it cannot migrate).
    #[error("the guest refused to release {device}: {reason}")]
    Refused {
        /// The device.
        device: String,
        /// The guest's answer.
        reason: String,
    },
    /// The guest did not release a device in time; it stays plugged.
    #[error("the guest did not release {device} within {after:?}")]
    Timeout {
        /// The device.
        device: String,
        /// The bound.
        after: Duration,
    },
    /// The VM is stopping or has exited: no more device changes.
    #[error("the VM is stopping")]
    Stopping,
    /// The VMM refused or failed the operation.
    #[error("the VMM failed to {what}")]
    Vmm {
        /// What was asked.
        what: &'static str,
        /// The backend's own error.
        #[source]
        source: BackendError,
    },
}
