//! A real guest (Debian kernel, the static agent as /init, vhost-device-vsock) under
//! TCG, checked end to end through one boot: readiness, Ping, Info, a cached client and
//! a fresh dial at once, a dial to a port nothing listens on, `PrepareShutdown` + `Shutdown`
//! through the manager's shutdown (twice and concurrently), and nothing left behind.

mod vm_common;

use std::time::Duration;

use spinbox::vm::{DialError, ManagerError, RetryPolicy, ShutdownStep, VmManager};
use vm_common::{assert_not_our_child, assert_root_clean, assert_vm_gone, guest_spec, Fixture};

/// Hang guard for a whole boot or shutdown under TCG on 2 busy cores.
use vm_common::BOOT_GUARD as GUARD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guest_serves_the_agent_and_shuts_down_gracefully() {
    let fx = Fixture::new();
    let spec = guest_spec(&fx, "guest-e2e");
    let assets = spec.assets.clone().expect("assets");
    let mgr = VmManager::new();
    assert!(matches!(mgr.client().await, Err(ManagerError::NoVm)));

    vm_common::boot(&mgr, spec.clone()).await;
    let instance = mgr.instance().expect("instance");
    let pid = instance.pid();
    let daemon_pid = mgr.daemon_pid().expect("daemon pid");
    let state_dir = instance.state_dir().to_owned();
    let vsock_dir = mgr.vsock_dir().expect("vsock dir");

    // One VM per manager.
    assert!(matches!(
        mgr.create(spec).await,
        Err(ManagerError::AlreadyExists { .. })
    ));

    // Ping and Info through the cached client.
    let cached = mgr.client().await.expect("cached client");
    cached.ping().await.expect("ping");
    let info = cached.info().await.expect("info");
    eprintln!("guest info: {info:?}");
    assert_eq!(info.kernel_release, assets.kernel_release);
    assert!(
        info.kernel_version.contains(&assets.kernel_package_version),
        "uname -v {:?} does not name package version {}",
        info.kernel_version,
        assets.kernel_package_version
    );
    assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(info.uptime > Duration::ZERO);

    // A cached client and a fresh dial, used at the same time.
    let fresh = mgr.dial().await.expect("fresh dial");
    let (a, b, c, d) = tokio::join!(cached.ping(), fresh.ping(), cached.info(), fresh.info());
    a.expect("cached ping");
    b.expect("fresh ping");
    assert_eq!(
        c.expect("cached info").kernel_release,
        assets.kernel_release
    );
    assert_eq!(d.expect("fresh info").kernel_release, assets.kernel_release);
    drop(fresh);

    // A guest port nothing listens on: the backend closes each attempt before `OK`
    // (transient), so the dial retries until its bound and then says so.
    let policy = RetryPolicy {
        total: Duration::from_millis(600),
        ..RetryPolicy::default()
    };
    let err = mgr
        .dial_port(4242, policy)
        .await
        .expect_err("nobody listens on 4242");
    eprintln!("dial to an idle port: {err}");
    match err {
        ManagerError::Dial(DialError::GaveUp { attempts, last, .. }) => {
            assert!(attempts > 1, "gave up after {attempts} attempt(s)");
            assert!(last.is_transient(), "last error not transient: {last}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    // The backend is still healthy after that.
    cached.ping().await.expect("ping after the idle-port dial");
    drop(cached);

    // Shutdown: twice concurrently and once more afterwards; one shutdown, one result.
    let (r1, r2) = tokio::time::timeout(GUARD, async {
        tokio::join!(mgr.shutdown(), mgr.shutdown())
    })
    .await
    .expect("shutdown hung");
    let r1 = r1.expect("vm").expect("shutdown");
    let r2 = r2.expect("vm").expect("shutdown");
    let r3 = mgr.shutdown().await.expect("vm").expect("shutdown");
    assert_eq!(r1, r2);
    assert_eq!(r1, r3);
    eprintln!("shutdown: {r1:?}");
    assert_eq!(r1.graceful_error, None);
    assert_eq!(r1.qemu.ended_by, ShutdownStep::Graceful);
    assert!(
        r1.qemu.exit_status.success(),
        "QEMU exit {:?}",
        r1.qemu.exit_status
    );

    assert_vm_gone(pid, &state_dir);
    assert_not_our_child(daemon_pid, "vhost-device-vsock");
    assert!(
        !vsock_dir.exists(),
        "vsock dir {} remains",
        vsock_dir.display()
    );
    assert_root_clean(&fx);
}
