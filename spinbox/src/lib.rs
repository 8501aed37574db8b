//! # spinbox
//!
//! The VM shim lifecycle built on `lifecycle-core`.
//!
//! ```text
//!  spinbox CLI / your engine
//!        │
//!        ▼
//!  shim::Shim ── ShimStateMachine (state) + CleanupOrchestrator (cleanup) + sessions
//!        │  Arc<dyn vm::VmBackend>
//!        ▼
//!  vm::VmBackend / vm::Vm ── the seam: start, wait_ready, agent address, exit watch, stop
//!        │                                   │
//!        ▼                                   ▼
//!  vm::qemu::QemuBackend               vm::fake::FakeBackend (feature `test-util`)
//! ```
//!
//! | module | what is inside |
//! |---|---|
//! | [`state`] | `ShimState`, declared with `#[state_machine]`, and the shim's state machine with its intentional-shutdown flag |
//! | [`cleanup`] | `CleanupPhases`, declared with `#[cleanup_phases]`: the seven teardown phases |
//! | [`shim`] | the facade: create (with or without a container), start, wait, exec, kill, delete, shutdown, crash handling, bounded events; generic over the backend |
//! | [`task`] | containers in the VM, host side: specs, the agent's `Task` client, the stdio streams |
//! | [`vm`] | the backend seam ([`vm::VmBackend`], [`vm::Vm`], [`vm::ExitInfo`]), the generic parts (agent client, vsock transport, KVM check, assets) and the QEMU backend ([`vm::qemu`]) |
//! | [`hotplug`] | vCPU and memory resizing of a running VM: the controllers' policy, the resizer, the controllers `hotplug_stop` stops |
//! | [`net`] | networking through CNI: the task's network namespace, the plugins' `ADD`/`DEL`, the TAP device QEMU gets, the record `network_cleanup` releases |
//! | [`rootfs`] | a container's rootfs made reachable by the guest: 9p export, EROFS image, virtiofs daemon |
//! | [`check`] | what the host lacks for a real VM, as findings |
//!
//! # Public API
//!
//! Everything public, in one place (each item has exactly this one path):
//!
//! - [`state`]: [`ShimState`](state::ShimState), [`AtomicShimState`](state::AtomicShimState),
//!   [`ShimStateMachine`](state::ShimStateMachine), [`ShimSnapshot`](state::ShimSnapshot).
//! - [`cleanup`]: [`CleanupPhases`](cleanup::CleanupPhases), [`CleanupPhase`](cleanup::CleanupPhase),
//!   [`CleanupOrchestrator`](cleanup::CleanupOrchestrator).
//! - [`shim`]: [`Shim`](shim::Shim), [`ShimConfig`](shim::ShimConfig), [`ConfigError`](shim::ConfigError),
//!   [`CreateError`](shim::CreateError), [`StartError`](shim::StartError), [`DeleteError`](shim::DeleteError),
//!   [`AgentError`](shim::AgentError), [`ContainerError`](shim::ContainerError), [`STDIO_DRAIN`](shim::STDIO_DRAIN),
//!   [`Created`](shim::Created), [`BootTimings`](shim::BootTimings), [`ShimEvent`](shim::ShimEvent),
//!   [`EventReceiver`](shim::EventReceiver), [`ExitCause`](shim::ExitCause), [`ShimReport`](shim::ShimReport),
//!   [`EVENT_CAPACITY`](shim::EVENT_CAPACITY), [`CONSOLE_RESERVE`](shim::CONSOLE_RESERVE),
//!   [`Resources`](shim::Resources).
//! - [`hotplug`]: [`Resizer`](hotplug::Resizer), [`ResizeError`](hotplug::ResizeError),
//!   [`Controllers`](hotplug::Controllers), [`HotplugConfig`](hotplug::HotplugConfig),
//!   [`HotplugReport`](hotplug::HotplugReport), and [`hotplug::policy`] ([`Policy`](hotplug::Policy),
//!   the decision logic and the controller loop).
//! - [`vm`]: the seam — [`VmBackend`](vm::VmBackend), [`Vm`](vm::Vm), [`VmSpec`](vm::VmSpec),
//!   [`SpecError`](vm::SpecError), [`ExitInfo`](vm::ExitInfo), [`HelperExit`](vm::HelperExit), [`ExitWatch`](vm::ExitWatch),
//!   [`BootError`](vm::BootError), [`BackendError`](vm::BackendError), [`StopRequest`](vm::StopRequest),
//!   [`StopOutcome`](vm::StopOutcome), [`StopError`](vm::StopError), [`VmId`](vm::VmId),
//!   [`NetworkDevice`](vm::NetworkDevice), [`TapFd`](vm::TapFd),
//!   [`IdError`](vm::IdError), the limits ([`MIN_CPUS`](vm::MIN_CPUS), [`MAX_CPUS`](vm::MAX_CPUS),
//!   [`MIN_MEMORY_MIB`](vm::MIN_MEMORY_MIB), [`MAX_MEMORY_MIB`](vm::MAX_MEMORY_MIB),
//!   [`MAX_ID_LEN`](vm::MAX_ID_LEN), [`MAX_SOCKET_PATH`](vm::MAX_SOCKET_PATH),
//!   [`MEMORY_BLOCK_MIB`](vm::MEMORY_BLOCK_MIB), [`MAX_MEMORY_SLOTS`](vm::MAX_MEMORY_SLOTS)),
//!   [`check_socket`](vm::check_socket), [`SocketPathError`](vm::SocketPathError),
//!   [`state_root_from`](vm::state_root_from), [`SYSTEM_STATE_ROOT`](vm::SYSTEM_STATE_ROOT),
//!   [`StateDirError`](vm::StateDirError);
//!   [`vm::stop`] (escalation policy, steps, graceful hook and error); [`vm::agent`] (the agent
//!   client); [`vm::hotplug`] (vCPU positions, memory devices, growth room, errors); [`vm::vsock`] (agent addresses); [`vm::kvm`]; [`vm::assets`]; [`vm::qemu`]
//!   ([`QemuBackend`](vm::qemu::QemuBackend), its config, [`QemuVm`](vm::qemu::QemuVm) and the
//!   accelerator probe).
//! - [`task`]: [`ContainerSpec`](task::ContainerSpec) (with [`HostMount`](task::HostMount)s), [`ProcessSpec`](task::ProcessSpec),
//!   [`SpecError`](task::SpecError), [`ExitStatus`](task::ExitStatus),
//!   [`TaskClient`](task::TaskClient), [`TaskError`](task::TaskError), [`ProcessState`](task::ProcessState),
//!   [`valid_name`](task::valid_name), [`DEFAULT_PATH`](task::DEFAULT_PATH),
//!   [`MAX_ARGS_ENV_BYTES`](task::MAX_ARGS_ENV_BYTES); [`task::stdio`] (the streams and their forwarders).
//! - [`net`]: [`Network`](net::Network), [`NetworkConfig`](net::NetworkConfig),
//!   [`NetworkError`](net::NetworkError), [`NetworkRecord`](net::NetworkRecord),
//!   [`release_recorded`](net::release_recorded), [`network_dir`](net::network_dir), the guest's
//!   settings ([`GuestNetwork`](net::GuestNetwork), [`GuestRoute`](net::GuestRoute),
//!   [`GuestDns`](net::GuestDns)), the constants, and [`net::cni`] (configuration lists,
//!   `ADD`/`DEL`, results), [`net::netns`] and [`net::tap`].
//! - [`rootfs`]: how a rootfs reaches the guest (transports, prepare, release).
//! - [`check`]: [`check_host`](check::check_host), [`check_containerd`](check::check_containerd), [`Finding`](check::Finding), [`Level`](check::Level),
//!   [`which`](check::which), [`error_chain`](check::error_chain), [`QEMU_BINARY`](check::QEMU_BINARY).
//!
//! The feature `test-util` adds `vm::fake` (an in-process backend) and makes the QEMU
//! backend's parts public, hidden from the docs, for integration tests. The library reads no
//! environment variable: the CLI (`src/bin/spinbox.rs`) reads `SPINBOX_ACCEL`,
//! `SPINBOX_ASSETS`, `SPINBOX_STATE_ROOT` and `XDG_RUNTIME_DIR` and passes explicit values.

#[cfg(not(loom))]
pub mod check;
pub mod cleanup;
#[cfg(not(loom))]
pub mod hotplug;
#[cfg(not(loom))]
pub mod net;
#[cfg(not(loom))]
pub mod rootfs;
#[cfg(not(loom))]
pub mod shim;
pub mod state;
#[cfg(not(loom))]
pub mod task;
// The VM layer does I/O through tokio's net/process, which tokio leaves out under
// `--cfg loom`; the loom models cover the lock-free state machine and cleanup instead.
#[cfg(not(loom))]
pub mod vm;
