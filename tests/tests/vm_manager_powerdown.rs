//! A real guest powered off by the ACPI power button (QMP `system_powerdown`): the agent
//! watches the button from before it announces readiness, so the press is never lost.
//! The manager's exit notification fires (callback and await), and a later shutdown
//! finds QEMU already gone and still cleans up everything.

mod vm_common;

use spinbox::vm::{ShutdownStep, VmManager};
use vm_common::{assert_not_our_child, assert_root_clean, assert_vm_gone, guest_spec, Fixture};

use vm_common::BOOT_GUARD as GUARD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_powerdown_powers_the_guest_off() {
    let fx = Fixture::new();
    let mgr = VmManager::new();
    vm_common::boot(&mgr, guest_spec(&fx, "guest-powerdown")).await;
    let instance = mgr.instance().expect("instance");
    let (pid, state_dir) = (instance.pid(), instance.state_dir().to_owned());
    let daemon_pid = mgr.daemon_pid().expect("daemon pid");

    let (tx, rx) = tokio::sync::oneshot::channel();
    mgr.on_exit(move |status| {
        let _ = tx.send(status);
    })
    .expect("vm");

    instance
        .qmp()
        .system_powerdown()
        .await
        .expect("system_powerdown");
    let status = tokio::time::timeout(GUARD, mgr.wait_exit())
        .await
        .expect("guest ignored the power button")
        .expect("vm");
    assert!(status.success(), "QEMU exit {status:?}");
    let notified = tokio::time::timeout(GUARD, rx)
        .await
        .expect("exit callback hung")
        .expect("exit callback dropped");
    assert_eq!(notified, status);

    let r = mgr.shutdown().await.expect("vm").expect("shutdown");
    assert_eq!(r.qemu.ended_by, ShutdownStep::AlreadyExited);
    assert_vm_gone(pid, &state_dir);
    assert_not_our_child(daemon_pid, "vhost-device-vsock");
    assert_root_clean(&fx);
}
