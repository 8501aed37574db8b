//! Test-only behaviours, compiled only with the `test-knobs` feature (the provisioner's test
//! initramfs) and chosen by a kernel argument. The production agent has none of this: not
//! the code, not the argument strings.

use spinbox_protocol::AGENT_PORT;
use tokio::sync::mpsc;

use crate::{AgentError, PowerOff};

/// The kernel argument that makes the agent mute: for fault tests of hosts facing an agent
/// that never answers.
const MUTE_ARG: &str = "spinbox.agent=mute";
/// The kernel argument that makes the agent stubborn: it answers every RPC but ignores every
/// request to power off (the `Shutdown` RPC and the ACPI power button), for tests and
/// benchmarks of the host's shutdown escalation against an uncooperative guest.
const STUBBORN_ARG: &str = "spinbox.agent=stubborn";

/// The behaviour the kernel command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    /// [`MUTE_ARG`]: see [`serve_mute`].
    Mute,
    /// [`STUBBORN_ARG`]: serve, but ignore every request to power off.
    Stubborn,
}

/// Each knob's kernel argument.
const KNOBS: [(&str, Knob); 2] = [(MUTE_ARG, Knob::Mute), (STUBBORN_ARG, Knob::Stubborn)];

/// The knob on `/proc/cmdline`, if any (mute wins over stubborn), logged.
pub fn from_cmdline() -> Option<Knob> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (arg, knob) = KNOBS
        .into_iter()
        .find(|(arg, _)| cmdline.split_whitespace().any(|a| a == *arg))?;
    tracing::warn!(arg, "test knob on the kernel command line");
    Some(knob)
}

/// Stubborn mode's set-up: by default the kernel reboots at once on ctrl-alt-delete (QEMU
/// then exits under -no-reboot); turned off, it only sends SIGINT to PID 1, which the agent
/// ignores.
pub fn ignore_ctrl_alt_delete() {
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!(error = %e, "cannot turn off ctrl-alt-delete");
    }
}

/// Mute mode ([`MUTE_ARG`]): announce readiness and accept connections on the agent port,
/// but never read or answer; only the power button ends it.
pub async fn serve_mute(mut power_rx: mpsc::Receiver<PowerOff>) -> Result<PowerOff, AgentError> {
    use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT))
        .map_err(AgentError::Listen)?;
    tracing::warn!(
        port = AGENT_PORT,
        "mute mode: accepting connections, answering nothing"
    );
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    tokio::spawn(crate::ready::announce());
    Ok(power_rx.recv().await.unwrap_or(PowerOff::PowerButton))
}
