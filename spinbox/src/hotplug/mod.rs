//! CPU and memory hotplug (SPEC §12): the controller policy and its loop.

pub mod policy;
