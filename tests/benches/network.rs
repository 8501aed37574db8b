//! Network benchmark (SPEC §11, issue 15) on real VMs under the host's accelerator (TCG
//! here). `cargo bench -p tests --bench network -- [--runs N]` (default 5; needs
//! `scripts/provision` and Debian's CNI plugins). Under `cargo test --all-targets` it runs
//! once (a smoke run).
//!
//! Everything runs inside a network namespace this benchmark creates (the CNI bridge lives
//! there, with no route out); nothing else is contacted.
//!
//! * **Create latency**: `Shim::create` (QEMU exec → agent answered) of a VM on the bridge,
//!   against the same creation without a network, measured alternately in the same run; and
//!   the network's own part, `Network::attach` (namespace, CNI `ADD`, TAP) plus its release.
//! * **TCP throughput**, both directions, of 32 MiB between the test's namespace and a
//!   container in the VM, against the same transfer between the test's namespace and a plain
//!   network namespace attached to the same bridge by the same plugins (a Rust socket on
//!   each side). In the guest, busybox `nc -l` receives (reading to the end), and busybox
//!   `httpd` sends a 32 MiB file (with `sendfile`). `dd | nc` as the sender reached only
//!   3.4 MiB/s where `httpd` reaches ~50 MiB/s over the same NIC: that measured busybox
//!   `nc`'s copy loop, not the network. Each figure is connected → the peer closed, timed on the test's side.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spinbox::net::{cni, netns, Network, NetworkConfig};
use spinbox::shim::{Shim, ShimConfig};
use spinbox::task::stdio::ProcessIo;
use spinbox::task::{ContainerSpec, ProcessSpec};
use spinbox::vm::qemu::{probe_accelerator, QemuBackend, QemuBackendConfig};

/// Bytes per transfer.
const TRANSFER: usize = 32 * 1024 * 1024;
const SUBNET: &str = "10.231.20.0/24";
const PORT_IN: u16 = 7100;
const PORT_OUT: u16 = 7101;

fn conflist(dir: &Path) -> PathBuf {
    let list = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "sbbench",
        "plugins": [{
            "type": "bridge",
            "bridge": "sbt-bench",
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join("ipam"),
                "ranges": [[{ "subnet": SUBNET }]],
            },
        }],
    });
    let path = dir.join("sbbench.conflist");
    std::fs::write(&path, list.to_string()).expect("write the conflist");
    path
}

fn shim_config(root: &Path, network: Option<NetworkConfig>) -> ShimConfig {
    ShimConfig {
        state_root: root.to_owned(),
        network,
        rootfs_tools: spinbox::rootfs::Tools::from_assets(
            &tests::assets::assets(),
            std::env::var_os("PATH").as_deref(),
        ),
        ..ShimConfig::default()
    }
}

/// Sends `TRANSFER` bytes to `addr` (bounded connect retries), then waits for the peer to
/// close; returns the time from connected to closed.
fn send_to(addr: SocketAddr) -> Duration {
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_mins(2)))
        .unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    let t = Instant::now();
    let mut left = TRANSFER;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("send");
        left -= n;
    }
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("wait for the peer to close");
    t.elapsed()
}

/// Connects to `addr` (bounded retries), sends `request`, and reads until the peer closes;
/// returns the bytes read and the time from connected to closed.
fn fetch(addr: SocketAddr, request: &[u8]) -> (usize, Duration) {
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_mins(2)))
        .unwrap();
    let t = Instant::now();
    stream.write_all(request).expect("send the request");
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).expect("receive") {
            0 => break,
            n => total += n,
        }
    }
    (total, t.elapsed())
}

/// Connects to `addr`, retrying 240 times 250 ms apart (the server may not listen yet).
fn connect(addr: SocketAddr) -> TcpStream {
    for _ in 0..240 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("cannot connect to {addr}");
}

/// Accepts one connection on `listener` and answers it with `TRANSFER` bytes, then closes.
fn serve_once(listener: &TcpListener) {
    let (mut stream, _) = listener.accept().expect("accept");
    let chunk = vec![0u8; 64 * 1024];
    let mut left = TRANSFER;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.write_all(&chunk[..n]).expect("send");
        left -= n;
    }
}

fn mib_per_s(d: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let mib = TRANSFER as f64 / (1024.0 * 1024.0);
    mib / d.as_secs_f64()
}

fn median_rate(samples: &[Duration]) -> f64 {
    let (ms, _, _) = tests::bench::stats(samples);
    mib_per_s(Duration::from_secs_f64(ms / 1000.0))
}

/// What the runs measured.
#[derive(Default)]
struct Samples {
    with_net: Vec<Duration>,
    without: Vec<Duration>,
    attach: Vec<Duration>,
    vm_in: Vec<Duration>,
    vm_out: Vec<Duration>,
    plain_in: Vec<Duration>,
    plain_out: Vec<Duration>,
}

async fn bench(dir: PathBuf, runs: usize) {
    let assets = tests::assets::assets();
    let accel = probe_accelerator(&assets.qemu).await;
    println!("accelerator: {:?} ({})", accel.accelerator, accel.reason);
    println!("runs: {runs}, transfer: {} MiB\n", TRANSFER / (1024 * 1024));
    let rootfs = assets.rootfs.clone().expect("run scripts/provision");
    let backend = Arc::new(QemuBackend::new(QemuBackendConfig::new(assets)));
    let net = NetworkConfig::new(conflist(&dir));
    let root = dir.join("state");
    let mut s = Samples::default();
    create_latency(&backend, &net, &root, runs, &mut s).await;
    vm_throughput(&backend, &net, &root, &rootfs, runs, &mut s).await;
    plain_throughput(&net, &dir, runs, &mut s).await;
    report(&s, accel.accelerator);
}

/// Create latency, alternating with and without a network; and the network's own part.
async fn create_latency(
    backend: &Arc<QemuBackend>,
    net: &NetworkConfig,
    root: &Path,
    runs: usize,
    s: &mut Samples,
) {
    for run in 0..runs {
        for networked in [true, false] {
            let config = shim_config(root, networked.then(|| net.clone()));
            let id = format!("nb-{run}-{networked}").parse().unwrap();
            let shim = Shim::new(id, config, backend.clone());
            let t = Instant::now();
            shim.create().await.expect("create");
            let took = t.elapsed();
            if networked {
                assert!(shim.network().is_some());
                s.with_net.push(took);
            } else {
                s.without.push(took);
            }
            let report = shim.delete().await.expect("delete");
            assert!(!report.has_errors(), "{report}");
        }
        let id = format!("na-{run}").parse().unwrap();
        let t = Instant::now();
        let attached = Network::attach(net, root, &id, None).await.expect("attach");
        attached.release().await.expect("release");
        s.attach.push(t.elapsed());
    }
}

/// TCP both ways between the test's namespace and a container in the VM.
async fn vm_throughput(
    backend: &Arc<QemuBackend>,
    net: &NetworkConfig,
    root: &Path,
    rootfs: &Path,
    runs: usize,
    s: &mut Samples,
) {
    for run in 0..runs {
        let shim = Shim::new(
            format!("nt-{run}").parse().unwrap(),
            shim_config(root, Some(net.clone())),
            backend.clone(),
        );
        // The guest serves a file over HTTP (busybox httpd sends it with sendfile) and
        // reads one connection to its end (busybox nc), then stays up.
        let count = TRANSFER / 65536;
        let script = format!(
            "dd if=/dev/zero of=/tmp/blob bs=65536 count={count} 2>/dev/null && \
             httpd -p {PORT_OUT} -h /tmp && nc -l -p {PORT_IN} >/dev/null; exec sleep 600"
        );
        let spec = ContainerSpec::new("c1", rootfs, ProcessSpec::new(["/bin/sh", "-c", &script]));
        shim.create_container(spec, ProcessIo::null())
            .await
            .expect("create");
        shim.start().await.expect("start");
        let ip = guest_ip(&shim);
        // Guest → test namespace first: the HTTP server is up before nc listens.
        let (bytes, took) = tokio::task::spawn_blocking(move || {
            fetch(SocketAddr::new(ip, PORT_OUT), b"GET /blob HTTP/1.0\r\n\r\n")
        })
        .await
        .unwrap();
        assert!(
            bytes > TRANSFER,
            "the guest sent the whole file ({bytes} bytes)"
        );
        s.vm_out.push(took);
        // Test namespace → guest: the guest's nc reads to the end and exits, closing it.
        let took = tokio::task::spawn_blocking(move || send_to(SocketAddr::new(ip, PORT_IN)))
            .await
            .unwrap();
        s.vm_in.push(took);
        let report = shim.delete().await.expect("delete");
        assert!(!report.has_errors(), "{report}");
    }
}

/// The baseline: the same transfers with a plain namespace on the same bridge, attached
/// by the same plugins (a Rust socket on each side).
async fn plain_throughput(net: &NetworkConfig, dir: &Path, runs: usize, s: &mut Samples) {
    let list = cni::NetworkConfigList::load(&net.conflist).expect("conflist");
    let plain = dir.join("plain-netns");
    netns::create(&plain).expect("plain namespace");
    let inv = cni::Invocation {
        container_id: "plain".into(),
        netns: plain.clone(),
        ifname: "eth0".into(),
        bin_dirs: net.bin_dirs.clone(),
        timeout: Duration::from_secs(30),
        args: Vec::new(),
    };
    let result = cni::add(&list, &inv)
        .await
        .expect("ADD the plain namespace");
    let address = result
        .ips
        .iter()
        .map(|i| i.address)
        .find(IpAddr::is_ipv4)
        .expect("an address");
    for _ in 0..runs {
        let listener = netns::run_in(&plain, move || TcpListener::bind(("0.0.0.0", PORT_IN)))
            .unwrap()
            .expect("listen in the plain namespace");
        let receiver = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            std::io::copy(&mut stream, &mut std::io::sink()).expect("receive")
        });
        let took = tokio::task::spawn_blocking(move || send_to(SocketAddr::new(address, PORT_IN)))
            .await
            .unwrap();
        assert_eq!(receiver.join().unwrap(), TRANSFER as u64);
        s.plain_in.push(took);

        let listener = netns::run_in(&plain, move || TcpListener::bind(("0.0.0.0", PORT_OUT)))
            .unwrap()
            .expect("listen in the plain namespace");
        let server = std::thread::spawn(move || serve_once(&listener));
        let (bytes, took) =
            tokio::task::spawn_blocking(move || fetch(SocketAddr::new(address, PORT_OUT), b""))
                .await
                .unwrap();
        server.join().unwrap();
        assert_eq!(bytes, TRANSFER);
        s.plain_out.push(took);
    }
    cni::del(&list, &inv, Some(&result)).await.expect("DEL");
    netns::remove(&plain).expect("remove the plain namespace");
}

fn report(s: &Samples, accel: spinbox::vm::qemu::Accelerator) {
    let (with, with_lo, with_hi) = tests::bench::stats(&s.with_net);
    let (base, base_lo, base_hi) = tests::bench::stats(&s.without);
    let (net, net_lo, net_hi) = tests::bench::stats(&s.attach);
    println!("| create ({accel:?}) | median | min–max | ratio to no network |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `Shim::create` with a CNI bridge network | {with:.1} ms | {with_lo:.1}–{with_hi:.1} ms | {:.3} |",
        with / base
    );
    println!(
        "| baseline: `Shim::create` without a network | {base:.1} ms | {base_lo:.1}–{base_hi:.1} ms | 1.000 |"
    );
    println!(
        "| the network alone: `Network::attach` + `release` | {net:.1} ms | {net_lo:.1}–{net_hi:.1} ms | {:.3} |",
        net / base
    );
    println!(
        "\nadded create latency (median with − median without): {:.1} ms\n",
        with - base
    );
    println!(
        "| TCP, {} MiB | VM (busybox in the guest) | baseline: plain namespace | ratio |",
        TRANSFER / (1024 * 1024)
    );
    println!("|---|---:|---:|---:|");
    for (name, vm, plain) in [
        (
            "test namespace → guest (guest: `nc -l`)",
            &s.vm_in,
            &s.plain_in,
        ),
        (
            "guest → test namespace (guest: `httpd`, sendfile)",
            &s.vm_out,
            &s.plain_out,
        ),
    ] {
        let (vm_rate, plain_rate) = (median_rate(vm), median_rate(plain));
        println!(
            "| {name} | {vm_rate:.1} MiB/s | {plain_rate:.1} MiB/s | {:.3} |",
            vm_rate / plain_rate
        );
    }
}

fn guest_ip(shim: &Shim) -> IpAddr {
    shim.network()
        .expect("network")
        .addresses
        .iter()
        .map(|(ip, _)| *ip)
        .find(IpAddr::is_ipv4)
        .expect("an IPv4 address")
}

fn main() {
    let runs = tests::bench::runs_from_args(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let host = dir.path().join("host-netns");
    netns::create(&host).expect("create the benchmark's namespace");
    let path = dir.path().to_owned();
    let outcome = netns::run_in(&host, move || {
        std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(bench(path, runs));
        })
    })
    .expect("enter the namespace");
    netns::remove(&host).expect("remove the namespace");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
