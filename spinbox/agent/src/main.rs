//! The spinbox guest agent. It runs as `/init` of the initramfs the project builds:
//!
//! 1. mounts `/proc`, `/sys` and `/dev` (devtmpfs) — see [`init`];
//! 2. loads the kernel modules listed in `/lib/modules/load-order`, in that order, with
//!    `finit_module` (virtio, virtio-pci, vsock, the virtio vsock transport, the ACPI
//!    button and evdev); then, when the kernel command line has `spinbox.net.*` arguments,
//!    configures the guest's NIC from them (loading the `net` module group first) and
//!    writes `/etc/resolv.conf` — see [`net`]; a failure there is fatal, like any other
//!    initialisation error;
//! 3. opens the ACPI power button's input device (so a QMP `system_powerdown` that comes
//!    any time after readiness is seen) — see [`power_button`];
//! 4. starts the child reaper (as PID 1 it inherits every orphan) — see
//!    [`container::reaper`];
//! 5. takes stdio streams on vsock port 1026 and serves the ttrpc `System` and `Task`
//!    services on vsock port 1024 — see [`service`], [`task`], [`listener`]; the kernel
//!    modules a container's filesystems need are loaded on demand, by group, from
//!    `/lib/modules/on-demand` (see [`init::load_group`]);
//! 6. announces readiness by connecting to the host (CID 2, port 1025) — see [`ready`];
//! 7. powers off on `Shutdown` (once the reply is delivered) or on the power button.
//!
//! Built with the `test-knobs` feature (the test initramfs only), it also obeys the kernel
//! arguments `spinbox.agent=mute` and `spinbox.agent=stubborn`, for the host's fault tests.
//!
//! As PID 1 it must never exit: any fatal error or panic is logged to the console, the
//! filesystems are synced, and the machine is powered off.

mod container;
mod init;
mod listener;
mod net;
mod power_button;
mod ready;
mod resources;
mod service;
mod task;
#[cfg(feature = "test-knobs")]
mod test_knobs;
mod timeline;

use std::sync::Arc;
use std::time::Duration;

use spinbox_protocol::agent_ttrpc::{create_resources, create_system, create_task};
use spinbox_protocol::{AGENT_PORT, STDIO_PORT};
use tokio::sync::mpsc;

/// The agent's version, reported by `Info` and in the readiness line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long to wait, after the `Shutdown` reply, for the host to close its connections
/// (which proves the reply arrived) before powering off anyway.
const DELIVERY_WAIT: Duration = Duration::from_secs(3);

/// Why the agent stopped serving.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    /// Early initialisation (mounts, modules) failed.
    #[error("initialisation failed")]
    Init(#[source] init::InitError),
    /// The network the kernel command line describes could not be configured.
    #[error("network configuration failed")]
    Network(#[source] net::NetError),
    /// The tokio runtime could not be built.
    #[error("cannot build the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The vsock listener could not be bound.
    #[error("cannot listen on vsock port {AGENT_PORT}")]
    Listen(#[source] std::io::Error),
    /// The stdio vsock listener could not be bound.
    #[error("cannot listen on vsock port {STDIO_PORT}")]
    ListenStdio(#[source] std::io::Error),
    /// The child reaper could not be started.
    #[error("cannot start the child reaper")]
    Reaper(#[source] std::io::Error),
    /// The ttrpc server did not start.
    #[error("cannot start the ttrpc server")]
    Serve(#[source] ttrpc::Error),
}

/// Why the guest is powering off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOff {
    /// The host called `Shutdown`.
    ShutdownRpc,
    /// The ACPI power button was pressed (QMP `system_powerdown`).
    PowerButton,
}

fn main() {
    timeline::mark(timeline::Step::InitStarted);
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let pid1 = std::process::id() == 1;
    std::panic::set_hook(Box::new(move |info| {
        init::fatal(pid1, &format!("panic: {info}"));
    }));
    let err = match run(pid1) {
        Ok(reason) => {
            tracing::info!(?reason, "powering off");
            init::power_off(pid1);
        }
        Err(e) => e,
    };
    init::fatal(pid1, &error_chain(&err));
}

/// Runs the agent until a power-off is requested.
fn run(pid1: bool) -> Result<PowerOff, AgentError> {
    if pid1 {
        init::mount_filesystems().map_err(AgentError::Init)?;
        init::load_modules(std::path::Path::new(init::MODULE_DIR)).map_err(AgentError::Init)?;
    }
    timeline::mark(timeline::Step::ModulesLoaded);
    if pid1 {
        // Before readiness: the host must never see a ready guest without its network.
        net::configure_from_cmdline(Some(std::path::Path::new(init::MODULE_DIR)))
            .map_err(AgentError::Network)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(serve(pid1))
}

async fn serve(pid1: bool) -> Result<PowerOff, AgentError> {
    let (power_tx, mut power_rx) = mpsc::channel::<PowerOff>(4);
    // Before readiness: a press that arrives after the host sees "ready" must not be lost.
    power_button::watch(power_tx.clone());

    #[cfg(feature = "test-knobs")]
    let stubborn = match test_knobs::from_cmdline() {
        Some(test_knobs::Knob::Mute) => return test_knobs::serve_mute(power_rx).await,
        Some(test_knobs::Knob::Stubborn) => {
            test_knobs::ignore_ctrl_alt_delete();
            true
        }
        None => false,
    };
    #[cfg(not(feature = "test-knobs"))]
    let stubborn = false;

    // As PID 1 the agent inherits every orphan of the guest: reap from the start.
    container::Reaper::global().map_err(AgentError::Reaper)?;
    let tasks = task::Tasks::new(task::Config {
        run_root: task::RUN_ROOT.into(),
        modules: pid1.then(|| init::MODULE_DIR.into()),
    });
    task::listen_stdio(tasks.clone(), STDIO_PORT).map_err(AgentError::ListenStdio)?;
    let (listener, connections) = listener::bind(AGENT_PORT).map_err(AgentError::Listen)?;
    let service = service::SystemService::new(power_tx);
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(listener)
        .register_service(create_system(Arc::new(service)))
        .register_service(create_task(Arc::new(task::TaskService(tasks))))
        .register_service(create_resources(Arc::new(
            resources::ResourcesService::new("/"),
        )));
    server.start().await.map_err(AgentError::Serve)?;
    timeline::mark(timeline::Step::Serving);
    tracing::info!(port = AGENT_PORT, "serving ttrpc on vsock");
    tokio::spawn(ready::announce());

    let reason = loop {
        let Some(reason) = power_rx.recv().await else {
            // Every sender is gone (cannot happen while the service runs): treat it as the
            // power button, unless stubborn, which waits for nothing more.
            if stubborn {
                std::future::pending::<()>().await;
            }
            break PowerOff::PowerButton;
        };
        if !stubborn {
            break reason;
        }
        tracing::warn!(?reason, "stubborn mode: ignoring the request to power off");
    };
    if reason == PowerOff::ShutdownRpc {
        // The reply is queued in the kernel; powering off now can drop it. The host
        // closes its connection once it has read the reply: wait for that, bounded.
        if !connections.wait_all_closed(DELIVERY_WAIT).await {
            tracing::warn!(
                open = connections.open(),
                "host kept connections open; powering off anyway"
            );
        }
    }
    Ok(reason)
}

/// The error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
