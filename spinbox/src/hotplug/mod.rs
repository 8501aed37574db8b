//! CPU and memory hotplug of a running VM (SPEC §12), above the backend seam's device
//! operations ([`crate::vm::Vm::add_cpu`] and the others, [`crate::vm::hotplug`]):
//!
//! | module | what is inside |
//! |---|---|
//! | [`policy`] | the controllers' policy ([`Policy`]), its pure decision logic and the controller loop |
//! | `resize` | [`Resizer`]: one VM's size changed one step at a time, the guest agent onlining what is added |
//! | `controllers` | [`Controllers`]: the CPU and memory controllers of one VM, started when it is up, stopped by `hotplug_stop` |

mod controllers;
pub mod policy;
mod resize;

pub use controllers::{Controllers, HotplugConfig, HotplugReport};
pub use policy::Policy;
pub use resize::{ResizeError, Resizer};
