//! A real guest's `Task` service (the Debian kernel, the static agent as /init): each
//! rootfs transport's kernel module group loads on demand in the guest (the mount that
//! follows fails only because no such device exists), and a container over an overlay
//! (its module loaded on demand too) is created, fails to start a missing program, and is
//! deleted; then the guest stops gracefully.

mod vm_common;

use std::time::Duration;

use spinbox::vm::agent::{dial_with_retry, shutdown_hook, RetryPolicy};
use spinbox::vm::stop::{EscalationPolicy, ShutdownStep};
use spinbox::vm::{StopRequest, Vm};
use spinbox_protocol::agent::{
    CreateContainerRequest, DeleteRequest, Mount, Process, StartRequest, StateRequest,
};
use spinbox_protocol::agent_ttrpc::TaskClient;
use ttrpc::Code;
use vm_common::{assert_root_clean, assert_vm_gone, guest, Fixture};

use vm_common::BOOT_GUARD as GUARD;

/// Bound on one RPC (a module load under TCG, the serial wait of 5 s).
const RPC: Duration = Duration::from_secs(30);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

fn create_request(id: &str, mount: Mount, owned: bool, program: &str) -> CreateContainerRequest {
    CreateContainerRequest {
        id: id.into(),
        rootfs: vec![mount],
        rootfs_owned: owned,
        process: Some(Process {
            args: vec![program.into()],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

fn mount(fstype: &str, source: &str) -> Mount {
    Mount {
        fstype: fstype.into(),
        source: source.into(),
        ..Default::default()
    }
}

/// The code and message of a failed call.
fn failure<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code.enum_value_or_default(), s.message),
        other => panic!("expected an error status, got {other:?}"),
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took longer than {RPC:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_groups_load_on_demand_and_a_container_lives_and_dies() {
    let fx = Fixture::new();
    let (backend, spec) = guest(&fx, "guest-tasks");
    let vm = vm_common::boot(&backend, &spec).await;
    let pid = vm.pid().expect("QEMU pid");
    let state_dir = vm.instance().state_dir().to_owned();
    let address = vm.agent_address();
    let system = dial_with_retry(&address, RPC, RetryPolicy::default())
        .await
        .expect("dial");
    let raw = spinbox::vm::vsock::connect(&address, RPC)
        .await
        .expect("connect");
    let task = TaskClient::new(raw);

    // Each group loads (a failed module load would say "kernel modules"); the mount then
    // fails for want of a device.
    for (id, m, expected) in [
        ("p9", mount("9p", "nosuchtag"), "cannot mount 9p"),
        (
            "vfs",
            mount("virtiofs", "nosuchtag"),
            "cannot mount virtiofs",
        ),
        (
            "ero",
            mount("erofs", "serial=nosuch"),
            "no virtio block device has serial",
        ),
    ] {
        let req = create_request(id, m, true, "/init");
        let (code, message) = failure(within(id, task.create_container(ctx(), &req)).await);
        eprintln!("{id}: {message}");
        assert_eq!(code, Code::INTERNAL, "{message}");
        assert!(
            message.contains(expected) && !message.contains("kernel modules"),
            "{id}: {message}"
        );
        let state = StateRequest {
            container_id: id.into(),
            ..Default::default()
        };
        assert_eq!(
            failure(within("state", task.state(ctx(), &state)).await).0,
            Code::NOT_FOUND
        );
    }

    // An overlay over the initramfs root (bound): created (overlay loaded on demand), the
    // start fails on the missing program, the delete removes it.
    let req = create_request("ovl", mount("bind", "/"), false, "/no/such/program");
    let created = within("create", task.create_container(ctx(), &req))
        .await
        .expect("create over an overlay");
    assert!(created.pid > 1);
    let state = StateRequest {
        container_id: "ovl".into(),
        ..Default::default()
    };
    let s = within("state", task.state(ctx(), &state))
        .await
        .expect("state");
    assert_eq!((s.status.as_str(), s.pid), ("created", created.pid));
    let start = StartRequest {
        container_id: "ovl".into(),
        ..Default::default()
    };
    let (code, message) = failure(within("start", task.start(ctx(), &start)).await);
    eprintln!("start: {message}");
    assert_eq!(code, Code::INTERNAL, "{message}");
    let delete = DeleteRequest {
        container_id: "ovl".into(),
        ..Default::default()
    };
    within("delete", task.delete(ctx(), &delete))
        .await
        .expect("delete");
    assert_eq!(
        failure(within("state", task.state(ctx(), &state)).await).0,
        Code::NOT_FOUND
    );
    drop(task);

    let request = StopRequest {
        policy: EscalationPolicy::default(),
        graceful: Some(shutdown_hook(address.clone(), RPC, Some(system))),
    };
    let r = tokio::time::timeout(GUARD, vm.stop(request))
        .await
        .expect("stop hung")
        .expect("stop");
    assert!(r.graceful_error.is_none(), "{:?}", r.graceful_error);
    assert_eq!(r.ended_by, ShutdownStep::Graceful);
    assert_vm_gone(pid, &state_dir);
    assert_root_clean(&fx);
}
