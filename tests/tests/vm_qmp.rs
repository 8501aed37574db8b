//! QMP against a real QEMU (`-machine none`, TCG): handshake, status, pause/resume with
//! events, quit, and a command timeout against a SIGSTOP-frozen QEMU.

mod vm_common;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spinbox::vm::qemu::qmp::{QmpError, QmpEvent, QmpEventKind};
use spinbox::vm::stop::GuestRequest;
use spinbox::vm::stop::{EscalationPolicy, ShutdownStep};
use tokio::sync::broadcast;
use vm_common::{assert_vm_gone, Fixture, HANG_GUARD};

async fn next_event(rx: &mut broadcast::Receiver<QmpEvent>) -> QmpEventKind {
    tokio::time::timeout(HANG_GUARD, rx.recv())
        .await
        .expect("no event")
        .expect("event stream closed")
        .kind
}

/// `-machine none` has no guest to press a power button for: go straight to `quit`.
fn quick_policy() -> EscalationPolicy {
    EscalationPolicy {
        guest_request: GuestRequest::None,
        ..EscalationPolicy::default()
    }
}

#[tokio::test]
async fn handshake_status_stop_cont_and_quit() {
    let fx = Fixture::new();
    let vm = fx.start_none("qmp-basic").await;
    let pid = vm.pid();
    let dir = vm.state_dir().to_owned();
    assert!(dir.join("qemu.log").exists());

    let (exit_tx, exit_rx) = tokio::sync::oneshot::channel();
    vm.on_exit(move |status| {
        let _ = exit_tx.send(status);
    });

    let qmp = vm.qmp().clone();
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(status.status, "running");
    assert!(status.running);

    let mut events = qmp.events();
    qmp.stop().await.expect("stop");
    assert_eq!(next_event(&mut events).await, QmpEventKind::Stop);
    let status = qmp.query_status().await.expect("query-status");
    assert_eq!(status.status, "paused");
    assert!(!status.running);

    qmp.cont().await.expect("cont");
    assert_eq!(next_event(&mut events).await, QmpEventKind::Resume);

    qmp.quit(Duration::from_secs(10)).await.expect("quit");
    assert_eq!(
        next_event(&mut events).await,
        QmpEventKind::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into()
        }
    );
    let status = tokio::time::timeout(HANG_GUARD, vm.wait_exit())
        .await
        .expect("exit");
    assert!(status.success(), "{status}");
    let cb = tokio::time::timeout(HANG_GUARD, exit_rx)
        .await
        .expect("callback")
        .expect("callback dropped");
    assert_eq!(cb, status);

    let out = vm
        .shutdown(&EscalationPolicy::default())
        .await
        .expect("shutdown");
    assert_eq!(out.ended_by, ShutdownStep::AlreadyExited);
    assert_vm_gone(pid, &dir);
    fx.assert_root_empty();
}

#[tokio::test]
async fn unknown_command_is_a_typed_error() {
    let fx = Fixture::new();
    let vm = fx.start_none("qmp-unknown").await;
    let err = vm.qmp().execute("no-such-command", None).await.unwrap_err();
    assert!(
        matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
        "{err}"
    );
    let (pid, dir) = (vm.pid(), vm.state_dir().to_owned());
    vm.shutdown(&quick_policy()).await.expect("shutdown");
    assert_vm_gone(pid, &dir);
}

#[tokio::test]
async fn command_times_out_against_a_frozen_qemu() {
    let fx = Fixture::new();
    let vm = fx.start_none("qmp-frozen").await;
    let pid = Pid::from_raw(i32::try_from(vm.pid()).expect("pid"));
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let err = vm
        .qmp()
        .execute_with_timeout("query-status", None, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    // Thawed, it answers again; the late reply to the timed-out call is discarded.
    kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let status = vm
        .qmp()
        .query_status()
        .await
        .expect("query-status after SIGCONT");
    assert!(status.running);
    let out = vm.shutdown(&quick_policy()).await.expect("shutdown");
    assert_eq!(out.ended_by, ShutdownStep::QmpQuit);
    assert_vm_gone(vm.pid(), vm.state_dir());
}

#[tokio::test]
async fn argv_is_safe_and_sandboxed_when_supported() {
    let fx = Fixture::new();
    let vm = fx.start_none("qmp-argv").await;
    let argv: Vec<String> = vm
        .argv()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for f in ["-nodefaults", "-no-user-config", "-no-reboot"] {
        assert!(argv.iter().any(|a| a == f), "{f} missing: {argv:?}");
    }
    let supported =
        spinbox::vm::qemu::accel::sandbox_supported(std::path::Path::new("qemu-system-x86_64"))
            .await;
    assert_eq!(argv.iter().any(|a| a == "-sandbox"), supported);
    eprintln!("sandbox supported: {supported}; argv: {argv:?}");
    vm.shutdown(&quick_policy()).await.expect("shutdown");
}

#[tokio::test]
async fn accelerator_probe_answers_and_is_cached() {
    let bin = std::path::Path::new("qemu-system-x86_64");
    let first = tokio::time::timeout(HANG_GUARD, spinbox::vm::qemu::accel::probe_accelerator(bin))
        .await
        .expect("probe hung");
    eprintln!(
        "accelerator probe: {:?} ({})",
        first.accelerator, first.reason
    );
    assert!(!first.reason.is_empty());
    let second = spinbox::vm::qemu::accel::probe_accelerator(bin).await;
    assert_eq!(first, second);
}
