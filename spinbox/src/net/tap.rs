//! The TAP device QEMU gets by file descriptor, wired to the CNI interface.
