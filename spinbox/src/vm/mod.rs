//! The QEMU VM manager (SPEC §4.1–4.6): host checks, typed configuration → argv,
//! per-VM state directories, the QEMU process, the QMP client and shutdown escalation.
//!
//! | file | what is inside |
//! |---|---|
//! | [`agent`] | the agent's ttrpc client: timeouts, dial, dial with retry |
//! | [`vsock`] | reaching a guest port: AF_VSOCK, hybrid vsock (`CONNECT`/`OK`), unix |
//! | [`vsock_daemon`] | the `vhost-device-vsock` child (vhost-user vsock backend) |
//! | [`manager`] | [`VmManager`]: one real VM, agent clients, exit watch, shutdown |
//! | [`assets`] | where the provisioned QEMU, kernel, initramfs and vsock backend are |
//! | [`kvm`] | `check_kvm()`: `/dev/kvm` and `KVM_GET_API_VERSION` |
//! | [`host_probe`] | which accelerator really works here; `-sandbox` support |
//! | [`config`] | [`QemuConfig`] and its escaped argument vector; VM ID rules |
//! | [`state_dir`] | the private per-VM directory for sockets and logs |
//! | [`process`] | spawning QEMU in its own process group; the reaper and exit watch |
//! | [`qmp`] | the QMP wire decoder and async client |
//! | [`escalation`] | graceful → guest request → quit → SIGTERM → SIGKILL |
//! | [`instance`] | [`QemuInstance`]: start, exit notification, shutdown |

pub mod agent;
pub mod assets;
pub mod config;
pub mod escalation;
pub mod host_probe;
pub mod instance;
pub mod kvm;
pub mod manager;
pub mod process;
pub mod qmp;
pub mod shared_task;
pub mod state_dir;
pub mod vsock;
pub mod vsock_daemon;

pub use agent::{AgentClient, AgentInfo, DialError, RetryPolicy, RpcError};
pub use assets::{Assets, AssetsError};
pub use config::{AgentChannel, Disk, DiskFormat, Machine, QemuConfig, SandboxMode, VmId};
pub use escalation::{EscalationPolicy, GracefulHook, GuestRequest, ShutdownStep};
pub use host_probe::{AccelChoice, Accelerator};
pub use instance::{QemuInstance, ShutdownOutcome, StartError, StartOptions, StartPhase};
pub use kvm::{check_kvm, KvmError};
pub use manager::{
    BootTimings, KernelImage, ManagerError, VmManager, VmShutdown, VmShutdownError, VmSpec,
};
pub use qmp::{QmpClient, QmpError, QmpEvent, QmpEventKind};
pub use vsock::{AgentAddress, ConnectError};
