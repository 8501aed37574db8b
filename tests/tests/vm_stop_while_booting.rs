//! A stop that lands while a readiness wait is in progress (on another task) ends the wait
//! at once with `BootError::Stopped` and closes the readiness listener then — not when the
//! last handle of the VM is dropped, which a shim keeping its session may never do. This
//! race leaked the listener's fd in CI.

mod vm_common;

use std::time::Duration;

use spinbox::vm::stop::EscalationPolicy;
use spinbox::vm::{BootError, StopRequest, Vm};
use vm_common::{assert_alive, assert_vm_gone, guest, Fixture, BOOT_GUARD};

fn open_fds() -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("cannot list /proc/self/fd: the leak check cannot run")
        .map(|e| {
            let e = e.expect("fd entry");
            let target = std::fs::read_link(e.path())
                .map_or_else(|_| "?".into(), |t| t.display().to_string());
            format!("{}→{target}", e.file_name().to_string_lossy())
        })
        .collect();
    fds.sort();
    fds
}

/// Sockets listening on `path` according to /proc/net/unix (fails closed).
fn listening_on(path: &std::path::Path) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix")
        .expect("cannot read /proc/net/unix: the leak check cannot run");
    let path = path.to_string_lossy();
    table
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(path.as_ref()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_readiness_wait_ends_it_and_closes_the_listener() {
    let fx = Fixture::new();
    let (backend, spec) = guest(&fx, "stop-booting");
    let fds_before = open_fds();
    let vm = tokio::time::timeout(BOOT_GUARD, backend.start_qemu(&spec))
        .await
        .expect("start hung")
        .expect("start failed");
    let pid = vm.pid().expect("QEMU pid");
    assert_alive(pid);
    let ready_socket = vm.vsock_uds().with_file_name(format!(
        "{}_{}",
        vm.vsock_uds().file_name().unwrap().to_string_lossy(),
        spinbox_protocol::READY_PORT
    ));
    assert_eq!(
        listening_on(&ready_socket),
        1,
        "the readiness listener {} must be seen open first",
        ready_socket.display()
    );
    let wait_task = {
        let vm = std::sync::Arc::clone(&vm);
        tokio::spawn(async move { vm.wait_ready().await })
    };
    // The guest needs ~2 s to boot under TCG: the wait is in progress, on another worker.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let outcome = tokio::time::timeout(
        BOOT_GUARD,
        vm.stop(StopRequest {
            policy: EscalationPolicy::default(),
            graceful: None,
        }),
    )
    .await
    .expect("stop hung")
    .expect("stop failed");
    eprintln!("stopped while booting: {outcome:?}");
    let waited = tokio::time::timeout(BOOT_GUARD, wait_task)
        .await
        .expect("the readiness wait outlived the stop")
        .expect("the readiness wait panicked");
    assert!(matches!(waited, Err(BootError::Stopped)), "{waited:?}");
    // A later wait gives the same answer at once.
    assert!(matches!(vm.wait_ready().await, Err(BootError::Stopped)));
    // The handle is still alive, and yet the listener is closed and no fd is left.
    assert_eq!(listening_on(&ready_socket), 0);
    assert_eq!(open_fds(), fds_before);
    let state_dir = vm.instance().state_dir().to_owned();
    drop(vm);
    assert_vm_gone(pid, &state_dir);
}
