//! Placeholder: the QEMU VM manager is being written (issue 5).
