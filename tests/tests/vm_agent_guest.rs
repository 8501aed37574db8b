//! A real guest (Debian kernel, the static agent as /init, vhost-device-vsock) under
//! TCG, checked end to end through one boot of the QEMU backend: readiness, Ping, Info, two
//! connections used at once, a dial to a port nothing listens on, then a stop whose graceful
//! step is the agent's `PrepareShutdown` + `Shutdown` (twice and concurrently), the exit
//! info, and nothing left behind.

mod vm_common;

use std::time::Duration;

use spinbox::vm::agent::{dial, dial_with_retry, shutdown_hook, DialError, RetryPolicy};
use spinbox::vm::stop::{EscalationPolicy, ShutdownStep};
use spinbox::vm::vsock::AgentAddress;
use spinbox::vm::{StopRequest, Vm};
use vm_common::{
    assert_alive, assert_not_our_child, assert_root_clean, assert_vm_gone, guest, Fixture,
};

/// Hang guard for a whole boot or shutdown under TCG on 2 busy cores.
use vm_common::BOOT_GUARD as GUARD;

const RPC: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_serves_the_agent_and_shuts_down_gracefully() {
    let fx = Fixture::new();
    let (backend, spec) = guest(&fx, "guest-e2e");
    let assets = backend.config().assets.clone();
    let vm = vm_common::boot(&backend, &spec).await;
    let pid = vm.pid().expect("QEMU pid");
    let daemon_pid = vm.daemon_pid();
    assert_alive(pid);
    assert_alive(daemon_pid);
    let state_dir = vm.instance().state_dir().to_owned();
    let vsock_dir = vm.vsock_dir().to_owned();
    assert_eq!(vm.leftovers(), [state_dir.clone(), vsock_dir.clone()]);
    // A second readiness wait answers at once with the first's result.
    vm.wait_ready().await.expect("ready again");

    // The same id in the same root is another VM's: refused, nothing of it touched.
    let err = backend.start_qemu(&spec).await.expect_err("id taken");
    assert!(
        matches!(err, spinbox::vm::BootError::AlreadyExists(_)),
        "{err:?}"
    );
    assert!(state_dir.exists() && vsock_dir.exists());

    let address = vm.agent_address();
    let first = dial_with_retry(&address, RPC, RetryPolicy::default())
        .await
        .expect("dial");
    first.ping().await.expect("ping");
    let info = first.info().await.expect("info");
    eprintln!("guest info: {info:?}");
    assert_boot_timeline(&info);
    assert_eq!(info.kernel_release, assets.kernel_release);
    assert!(
        info.kernel_version.contains(&assets.kernel_package_version),
        "uname -v {:?} does not name package version {}",
        info.kernel_version,
        assets.kernel_package_version
    );
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(info.uptime > Duration::ZERO);

    // Two connections used at the same time.
    let fresh = dial(&address, RPC).await.expect("fresh dial");
    let (a, b, c, d) = tokio::join!(first.ping(), fresh.ping(), first.info(), fresh.info());
    a.expect("first ping");
    b.expect("fresh ping");
    assert_eq!(c.expect("first info").kernel_release, assets.kernel_release);
    assert_eq!(d.expect("fresh info").kernel_release, assets.kernel_release);
    drop(fresh);

    // A guest port nothing listens on: the backend closes each attempt before `OK`
    // (transient), so the dial retries until its bound and then says so.
    let idle = AgentAddress::Hybrid {
        socket: vm.vsock_uds().to_owned(),
        port: 4242,
    };
    let policy = RetryPolicy {
        total: Duration::from_millis(600),
        ..RetryPolicy::default()
    };
    let err = dial_with_retry(&idle, RPC, policy)
        .await
        .expect_err("nobody listens on 4242");
    eprintln!("dial to an idle port: {err}");
    match err {
        DialError::GaveUp { attempts, last, .. } => {
            assert!(attempts > 1, "gave up after {attempts} attempt(s)");
            assert!(last.is_transient(), "last error not transient: {last}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    // The backend is still healthy after that.
    first.ping().await.expect("ping after the idle-port dial");

    // Stop: twice concurrently and once more afterwards; one stop, one outcome.
    let request = |client| StopRequest {
        policy: EscalationPolicy::default(),
        graceful: Some(shutdown_hook(address.clone(), RPC, client)),
    };
    let (r1, r2) = tokio::time::timeout(GUARD, async {
        tokio::join!(vm.stop(request(Some(first))), vm.stop(request(None)))
    })
    .await
    .expect("stop hung");
    let r1 = r1.expect("stop");
    let r2 = r2.expect("stop");
    let r3 = vm.stop(request(None)).await.expect("stop");
    eprintln!("stop: {r1:?}");
    for r in [&r2, &r3] {
        assert_eq!(r.exit, r1.exit);
    }
    assert!(r1.graceful_error.is_none(), "{:?}", r1.graceful_error);
    assert_eq!(r1.ended_by, ShutdownStep::Graceful);
    assert!(r1.exit.status.success(), "QEMU exit {}", r1.exit);
    assert_eq!(r1.exit.shutdown_reason.as_deref(), Some("guest-shutdown"));
    assert_eq!(*vm.exit_watch().borrow(), Some(r1.exit.clone()));
    assert!(vm.leftovers().is_empty(), "{:?}", vm.leftovers());

    assert_vm_gone(pid, &state_dir);
    assert_not_our_child(daemon_pid, "vhost-device-vsock");
    assert!(
        !vsock_dir.exists(),
        "vsock dir {} remains",
        vsock_dir.display()
    );
    assert_root_clean(&fx);
}

/// The agent's start, in guest uptime: every step reported, in order, before the answer.
fn assert_boot_timeline(info: &spinbox::vm::agent::AgentInfo) {
    let boot = info.boot;
    let (init, modules, serving) = (
        boot.init_started.expect("init_started"),
        boot.modules_loaded.expect("modules_loaded"),
        boot.serving.expect("serving"),
    );
    assert!(
        init <= modules && modules <= serving && serving <= info.uptime,
        "{boot:?} vs uptime {:?}",
        info.uptime
    );
}
