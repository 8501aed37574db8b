//! Networking through CNI (SPEC §11): the task's network namespace, the CNI plugins run in
//! it, the TAP device QEMU gets by file descriptor, and the release `network_cleanup` does.

pub mod cni;
pub mod netns;
pub mod tap;
