//! A real guest powered off by the ACPI power button (QMP `system_powerdown`): the agent
//! watches the button from before it announces readiness, so the press is never lost. The
//! backend's exit watch publishes the exit with QEMU's shutdown reason, and a later stop
//! finds QEMU already gone and still cleans up everything.

mod vm_common;

use spinbox::vm::stop::{EscalationPolicy, ShutdownStep};
use spinbox::vm::{StopRequest, Vm};
use vm_common::{
    assert_alive, assert_not_our_child, assert_root_clean, assert_vm_gone, guest, Fixture,
};

use vm_common::BOOT_GUARD as GUARD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_powerdown_powers_the_guest_off() {
    let fx = Fixture::new();
    let (backend, spec) = guest(&fx, "guest-powerdown");
    let vm = vm_common::boot(&backend, &spec).await;
    let (pid, state_dir) = (vm.instance().pid(), vm.instance().state_dir().to_owned());
    let daemon_pid = vm.daemon_pid();
    assert_alive(pid);

    let mut exit = vm.exit_watch();
    vm.instance()
        .qmp()
        .system_powerdown()
        .await
        .expect("system_powerdown");
    let info = tokio::time::timeout(GUARD, exit.wait_for(Option::is_some))
        .await
        .expect("guest ignored the power button")
        .expect("exit watch")
        .clone()
        .expect("published");
    assert!(info.status.success(), "QEMU exit {info}");
    assert_eq!(
        info.shutdown_reason.as_deref(),
        Some("guest-shutdown"),
        "{info}"
    );
    assert!(!info.guest_panicked);

    let r = vm
        .stop(StopRequest {
            policy: EscalationPolicy::default(),
            graceful: None,
        })
        .await
        .expect("stop");
    assert_eq!(r.ended_by, ShutdownStep::AlreadyExited);
    assert_eq!(r.exit, info);
    assert_vm_gone(pid, &state_dir);
    assert_not_our_child(daemon_pid, "vhost-device-vsock");
    assert_root_clean(&fx);
}
