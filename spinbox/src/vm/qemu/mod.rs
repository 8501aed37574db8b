//! The QEMU backend (SPEC §4): [`QemuBackend`] and the parts only QEMU needs.
//!
//! | file | what is inside |
//! |---|---|
//! | `backend` | [`QemuBackend`] / [`QemuVm`]: the [`VmBackend`](super::VmBackend) implementation |
//! | `config` | the typed QEMU configuration and its escaped argument vector |
//! | `instance` | [`QemuInstance`]: start, exit notification, shutdown |
//! | `qmp` | the QMP wire decoder and async client ([`QmpClient`]) |
//! | `hotplug` | vCPU and memory hotplug over QMP |
//! | `escalation` | graceful → guest request → quit → SIGTERM → SIGKILL |
//! | `accel` | which accelerator really works here ([`probe_accelerator`]); `-sandbox` support |
//! | `vsock_daemon` | the `vhost-device-vsock` child (vhost-user vsock backend) |
//!
//! Only the items re-exported here are public; the modules are public (and hidden from the
//! docs) with the `test-util` feature, for the integration tests.

internal_mod!(accel);
mod backend;
internal_mod!(config);
internal_mod!(escalation);
mod hotplug;
internal_mod!(instance);
internal_mod!(qmp);
internal_mod!(vsock_daemon);

pub use accel::{probe_accelerator, AccelChoice, Accelerator, ProbeResult, UnknownAccelerator};
pub use backend::{
    Firmware, KernelArgs, KernelImage, QemuBackend, QemuBackendConfig, QemuStartError, QemuVm,
    MAX_VHOST_USER_MEMORY_SLOTS, MEMORY_ONLINE_ARG,
};
pub use config::{Machine, OnReset, SandboxMode};
pub use instance::{QemuInstance, StartError};
pub use qmp::{QmpClient, QmpError};
pub use vsock_daemon::DaemonError;
