//! The QEMU VM manager (SPEC §4.1–4.3, §4.6). So far: the QMP client.

pub mod qmp;

pub use qmp::{QmpClient, QmpError, QmpEvent, QmpEventKind};
