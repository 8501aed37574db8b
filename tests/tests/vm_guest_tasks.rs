//! A real guest's `Task` service (the Debian kernel, the static agent as /init): each
//! rootfs transport's kernel module group loads on demand in the guest (the mount that
//! follows fails only because no such device exists), and a container over an overlay
//! (its module loaded on demand too) is created, fails to start a missing program, and is
//! deleted, its stdout and stderr attached over the real vsock stdio port (hybrid vsock)
//! and closed empty before `Wait` answers; then the guest stops gracefully.

mod vm_common;

use std::path::Path;
use std::time::Duration;

use spinbox::vm::agent::{dial_with_retry, shutdown_hook, RetryPolicy};
use spinbox::vm::stop::{EscalationPolicy, ShutdownStep};
use spinbox::vm::{StopRequest, Vm};
use spinbox_protocol::agent::{
    CreateContainerRequest, DeleteRequest, Mount, Process, StartRequest, StateRequest, Stdio,
    WaitRequest,
};
use spinbox_protocol::agent_ttrpc::TaskClient;
use spinbox_protocol::{stdio_header, StdioStream, STDIO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
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

/// Reads one line, byte by byte (nothing after it is consumed).
async fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await.expect("read a line");
        line.push(b);
        if b == b'\n' {
            return String::from_utf8(line).expect("utf-8 line");
        }
    }
}

/// A stdio stream through the hybrid vsock socket: the agent's reply line and the stream.
async fn stdio_stream(uds: &Path, header: &str) -> (String, UnixStream) {
    let mut s = UnixStream::connect(uds)
        .await
        .expect("connect the vsock socket");
    s.write_all(format!("CONNECT {STDIO_PORT}\n").as_bytes())
        .await
        .expect("write CONNECT");
    let ok = within("CONNECT", read_line(&mut s)).await;
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(header.as_bytes())
        .await
        .expect("write the header");
    let reply = within("the header reply", read_line(&mut s)).await;
    (reply, s)
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
    module_groups_load(&task).await;
    overlay_container_with_stdio(&task, vm.vsock_uds()).await;
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

/// Each rootfs transport's module group loads in the guest.
async fn module_groups_load(task: &TaskClient) {
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
}

/// A container over an overlay of the initramfs root, its outputs over real vsock.
async fn overlay_container_with_stdio(task: &TaskClient, uds: &Path) {
    // An overlay over the initramfs root (bound): created (overlay loaded on demand), the
    // start fails on the missing program, the delete removes it.
    let (reply, mut refused) = stdio_stream(uds, "nope - stdout\n").await;
    assert_eq!(reply, "error no container \"nope\"\n");
    let mut rest = Vec::new();
    within("close", refused.read_to_end(&mut rest))
        .await
        .expect("closed after the error");
    assert!(rest.is_empty());

    let mut req = create_request("ovl", mount("bind", "/"), false, "/no/such/program");
    req.stdio = Some(Stdio {
        stdout: true,
        stderr: true,
        ..Default::default()
    })
    .into();
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
    let mut outputs = Vec::new();
    for stream in [StdioStream::Stdout, StdioStream::Stderr] {
        let (reply, s) = stdio_stream(uds, &stdio_header("ovl", "", stream)).await;
        assert_eq!(reply, "ok\n", "{stream:?}");
        outputs.push(s);
    }
    let start = StartRequest {
        container_id: "ovl".into(),
        ..Default::default()
    };
    let (code, message) = failure(within("start", task.start(ctx(), &start)).await);
    eprintln!("start: {message}");
    assert_eq!(code, Code::INTERNAL, "{message}");
    // The process died in setup: both outputs end empty, and Wait answers.
    for mut s in outputs {
        let mut out = Vec::new();
        within("output", s.read_to_end(&mut out))
            .await
            .expect("read output");
        assert!(out.is_empty(), "{out:?}");
    }
    let wait = WaitRequest {
        container_id: "ovl".into(),
        ..Default::default()
    };
    let status = within("wait", task.wait(ctx(), &wait))
        .await
        .expect("wait")
        .status;
    eprintln!("wait: {status:?}");
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
}
