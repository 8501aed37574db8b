//! Networking through CNI in real VMs (SPEC §11), under TCG. Every test runs inside
//! network namespaces it creates (`net_common::TestNet`: the bridge lives in the test's own
//! "host" namespace, with no route out and no masquerading), and its traffic is bounded.
//!
//! - A container answers TCP from the test's namespace: the bytes come back unchanged.
//! - Three VMs on one bridge get distinct addresses and reach each other.
//! - After delete the lease, the veth, the TAP, the shim-made namespace and the network
//!   record are gone, and `network_cleanup` ran after `vm_shutdown`.
//! - A failing plugin fails the create with a typed error naming it, after the address it
//!   had leased was released again.

#[path = "net_common/mod.rs"]
mod net_common;
#[path = "shim_common/mod.rs"]
mod shim_common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lifecycle_core::PhaseOutcome;
use net_common::{echo_round_trip, host_interfaces, is_mounted, Subnet, TestNet};
use shim_common::{config, serial, Collect, TestVm, HANG_GUARD};
use spinbox::cleanup::CleanupPhase;
use spinbox::net::{cni::CniError, netns, network_dir, tap, NetworkError};
use spinbox::shim::{CreateError, ShimConfig, ShimEvent};
use spinbox::task::stdio::ProcessIo;
use spinbox::task::{ContainerSpec, ExitStatus, ProcessSpec};

fn rootfs() -> std::path::PathBuf {
    tests::assets::assets()
        .rootfs
        .expect("the provisioner builds the busybox rootfs: run scripts/provision")
}

/// A test VM on `net`.
fn vm(net: &TestNet, id: &str) -> TestVm {
    let root = tempfile::tempdir().expect("tempdir");
    let mut config: ShimConfig = config(root.path());
    config.network = Some(net.config());
    TestVm::with(root, config, id, tests::assets::assets())
}

/// The VM's IPv4 address, from the shim.
fn address_of(vm: &TestVm) -> IpAddr {
    let net = vm.shim.network().expect("the VM has a network");
    net.addresses
        .iter()
        .map(|(ip, _)| *ip)
        .find(IpAddr::is_ipv4)
        .expect("an IPv4 address")
}

/// Runs `test` with `net` inside its host namespace, on the serial test runtime, bounded by
/// `bound`.
fn in_net<F, Fut>(net: &std::sync::Arc<TestNet>, bound: Duration, test: F)
where
    F: FnOnce(std::sync::Arc<TestNet>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let inner = std::sync::Arc::clone(net);
    net.run(move || {
        serial(|| async move {
            tokio::time::timeout(bound, test(inner))
                .await
                .expect("the test hung");
        });
    });
}

/// Asserts `network_cleanup` started after `vm_shutdown` finished, both succeeding.
fn network_cleanup_follows_vm_shutdown(all: &[ShimEvent]) {
    let at = |p: CleanupPhase, finished: bool| {
        all.iter()
            .position(|e| match e {
                ShimEvent::PhaseStarted { phase, .. } => !finished && *phase == p,
                ShimEvent::PhaseFinished { phase, outcome, .. } => {
                    finished && *phase == p && matches!(outcome, PhaseOutcome::Ok)
                }
                _ => false,
            })
            .unwrap_or_else(|| panic!("no {p:?} event (finished {finished})"))
    };
    assert!(
        at(CleanupPhase::VmShutdown, true) < at(CleanupPhase::NetworkCleanup, false),
        "network_cleanup starts after vm_shutdown finished"
    );
}

#[test]
fn a_container_echoes_tcp_from_the_test_namespace_and_delete_releases_everything() {
    let _exclusive = net_common::exclusive();
    let net = std::sync::Arc::new(TestNet::new(
        "sbecho",
        &Subnet {
            subnet: "10.231.7.0/24",
            range: None,
        },
        &[],
    ));
    in_net(&net, HANG_GUARD, |vm_net| async move {
        let vm = vm(&vm_net, "net-echo");
        let mut events = vm.shim.events().expect("events");
        let spec = ContainerSpec::new(
            "c1",
            rootfs(),
            ProcessSpec::new(["nc", "-l", "-p", "7000", "-e", "cat"]),
        );
        let created = vm
            .shim
            .create_container(spec, ProcessIo::null())
            .await
            .expect("create_container");
        TestVm::assert_alive(created.vm_pid.expect("QEMU pid"));
        vm.shim.start().await.expect("start");

        // Alive first: the lease, the record, the shim's namespace with its TAP,
        // the host-side veth.
        let ip = address_of(&vm);
        assert_eq!(vm_net.leases(), vec![ip.to_string()], "one lease, the VM's");
        let dir = network_dir(&vm.root(), vm.shim.id());
        let ns = dir.join("netns");
        assert!(
            netns::is_netns(&ns) && is_mounted(&ns),
            "the shim's namespace"
        );
        assert!(
            tap::link_exists(&ns, spinbox::net::TAP_NAME).unwrap(),
            "the TAP"
        );
        // The result names the bridge (which stays: it is the network) and the veth.
        let veths: Vec<String> = host_interfaces(&dir)
            .into_iter()
            .filter(|n| n != "sbt-sbecho")
            .collect();
        assert_eq!(
            veths.len(),
            1,
            "the result names the host-side veth: {veths:?}"
        );
        for v in &veths {
            assert!(tap::link_exists(&vm_net.host, v).unwrap(), "{v} exists");
        }

        // 256 KiB through the guest's `cat` and back.
        let payload: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let back = tokio::task::spawn_blocking(move || {
            echo_round_trip(
                SocketAddr::new(ip, 7000),
                &sent,
                120,
                Duration::from_millis(250),
            )
        })
        .await
        .unwrap();
        assert_eq!(back.len(), payload.len(), "bytes in = bytes out");
        assert!(back == payload, "the echo differs from what was sent");
        assert_eq!(vm.shim.wait().await.unwrap(), ExitStatus::Exited(0));

        let report = vm.shim.delete().await.expect("delete");
        assert!(!report.has_errors(), "{report}");
        // Gone: the lease, the record, the namespace, the veth.
        assert!(vm_net.ever_leased());
        assert_eq!(
            vm_net.leases(),
            Vec::<String>::new(),
            "the lease is released"
        );
        assert!(!dir.exists(), "the network record is removed");
        assert!(!is_mounted(&ns), "the shim's namespace is unmounted");
        for v in &veths {
            assert!(!tap::link_exists(&vm_net.host, v).unwrap(), "{v} is gone");
        }
        vm.assert_nothing_left().await;

        // network_cleanup ran after vm_shutdown had finished.
        network_cleanup_follows_vm_shutdown(&shim_common::drain(&mut events).await);
    });
}

#[test]
fn three_vms_on_one_bridge_get_distinct_addresses_and_reach_each_other() {
    let _exclusive = net_common::exclusive();
    let net = std::sync::Arc::new(TestNet::new(
        "sbthree",
        &Subnet {
            subnet: "10.231.8.0/24",
            range: Some(("10.231.8.10", "10.231.8.12")),
        },
        &[],
    ));
    in_net(&net, HANG_GUARD * 2, |inner| async move {
        // Each pings all three (itself included), each at most 60 times 1 s apart,
        // then stays up until deleted.
        let script = "for p in 10.231.8.10 10.231.8.11 10.231.8.12; do n=0; \
                    until ping -c 1 -W 1 $p >/dev/null 2>&1; do n=$((n+1)); \
                    if [ $n -ge 60 ]; then echo unreachable $p; exit 1; fi; done; done; \
                    echo reached; exec sleep 600";
        let vms: Vec<TestVm> = ["net-a", "net-b", "net-c"]
            .iter()
            .map(|id| vm(&inner, id))
            .collect();
        let outs: Vec<Collect> = vms.iter().map(|_| Collect::default()).collect();
        let creates = vms.iter().zip(&outs).map(|(vm, out)| {
            let io = ProcessIo {
                stdin: None,
                stdout: Some(Box::new(out.clone())),
                stderr: None,
            };
            let spec =
                ContainerSpec::new("c1", rootfs(), ProcessSpec::new(["/bin/sh", "-c", script]));
            async move {
                vm.shim
                    .create_container(spec, io)
                    .await
                    .expect("create_container");
                vm.shim.start().await.expect("start");
            }
        });
        futures_util::future::join_all(creates).await;
        let mut ips: Vec<String> = vms.iter().map(|v| address_of(v).to_string()).collect();
        ips.sort();
        assert_eq!(
            ips,
            ["10.231.8.10", "10.231.8.11", "10.231.8.12"],
            "three distinct addresses from the range"
        );
        assert_eq!(inner.leases(), ips, "one lease each");
        for (vm, out) in vms.iter().zip(&outs) {
            let deadline = tokio::time::Instant::now() + Duration::from_mins(2);
            loop {
                let text = out.text();
                assert!(!text.contains("unreachable"), "{}: {text}", vm.shim.id());
                if text.contains("reached") {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} reached nobody in time",
                    vm.shim.id()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for vm in &vms {
            let report = vm.shim.delete().await.expect("delete");
            assert!(!report.has_errors(), "{report}");
        }
        // Checked once all three are gone: the VMs share this process's children
        // and descriptors.
        for vm in &vms {
            vm.assert_nothing_left().await;
        }
        assert_eq!(inner.leases(), Vec::<String>::new(), "every lease released");
    });
}

#[test]
fn a_failing_plugin_fails_the_create_with_its_name_and_releases_the_lease() {
    let _exclusive = net_common::exclusive();
    // The bridge leases an address, then `tuning` fails on a sysctl that does not exist:
    // the creation must release the lease and name `tuning`.
    let net = std::sync::Arc::new(TestNet::new(
        "sbfail",
        &Subnet {
            subnet: "10.231.9.0/24",
            range: None,
        },
        &[serde_json::json!({
            "type": "tuning",
            "sysctl": { "net.ipv4.conf.eth0.no_such_setting": "1" },
        })],
    ));
    in_net(&net, HANG_GUARD, |inner| async move {
        let vm = vm(&inner, "net-fail");
        let spec = ContainerSpec::new("c1", rootfs(), ProcessSpec::new(["true"]));
        let err = vm
            .shim
            .create_container(spec, ProcessIo::null())
            .await
            .expect_err("the tuning plugin fails");
        match &err {
            CreateError::Network(NetworkError::Cni {
                command: "ADD",
                source: CniError::Plugin { plugin, msg, .. },
            }) => {
                assert_eq!(plugin, "tuning");
                assert!(!msg.is_empty(), "the plugin's message is kept");
            }
            other => panic!("not a typed plugin error: {other:?}"),
        }
        let text = spinbox::check::error_chain(&err);
        assert!(text.contains("tuning"), "{text}");
        assert!(inner.ever_leased(), "the bridge had leased an address");
        assert_eq!(
            inner.leases(),
            Vec::<String>::new(),
            "the lease is released"
        );
        let dir = network_dir(&vm.root(), vm.shim.id());
        assert!(!dir.exists(), "no network record is left");
        assert!(!is_mounted(&dir.join("netns")), "no namespace is left");
        vm.assert_nothing_left().await;
    });
}
