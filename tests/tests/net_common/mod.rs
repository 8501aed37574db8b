//! Network test fixtures: a "host" network namespace the test creates (the CNI bridge lives
//! there), with no route out, and a CNI configuration list for it.
//!
//! Everything a network test does runs on a thread inside that namespace
//! ([`TestNet::run`]): the shim, its CNI plugins, QEMU, and the test's own sockets. The
//! namespace has no other interface than the bridge the plugins make and its veths, no
//! default route and no masquerading; dropping the fixture removes it (and the bridge with
//! it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use spinbox::net::{netns, NetworkConfig};

/// Held by each network test from its first step to its last, fixtures included: making and
/// removing a namespace opens descriptors on a helper thread, which must not run while
/// another test of the binary counts its descriptors.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A test's "host" namespace and its network.
pub struct TestNet {
    pub dir: tempfile::TempDir,
    /// The namespace's file.
    pub host: PathBuf,
    /// The configuration list.
    pub conflist: PathBuf,
    /// host-local's lease directory for this network (`<dataDir>/<name>`).
    pub leases: PathBuf,
    /// The network's name.
    pub name: String,
}

/// The addresses a test network hands out.
pub struct Subnet<'a> {
    /// `10.x.y.0/24`.
    pub subnet: &'a str,
    /// First and last address to hand out (`None`: the whole subnet).
    pub range: Option<(&'a str, &'a str)>,
}

impl TestNet {
    /// A namespace with a bridge network `name` on `subnet` (bridge `sbt-<name>`, the
    /// gateway address on the bridge, no masquerading); `extra` plugins are chained after
    /// the bridge.
    pub fn new(name: &str, subnet: &Subnet<'_>, extra: &[serde_json::Value]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host-netns");
        netns::create(&host).expect("create the test's host network namespace");
        let data = dir.path().join("ipam");
        let mut range = serde_json::json!({ "subnet": subnet.subnet });
        if let Some((start, end)) = subnet.range {
            range["rangeStart"] = start.into();
            range["rangeEnd"] = end.into();
        }
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": format!("sbt-{name}"),
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "dataDir": data,
                "ranges": [[range]],
            },
        })];
        plugins.extend(extra.iter().cloned());
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": plugins,
        });
        let conflist = dir.path().join(format!("{name}.conflist"));
        std::fs::write(&conflist, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
        Self {
            leases: data.join(name),
            dir,
            host,
            conflist,
            name: name.to_owned(),
        }
    }

    /// The shim's network settings for this network.
    pub fn config(&self) -> NetworkConfig {
        NetworkConfig::new(&self.conflist)
    }

    /// Runs `f` on a thread inside the host namespace (threads and processes it starts
    /// inherit it) and returns its result; a panic in `f` fails the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let result = netns::run_in(&self.host, move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        })
        .expect("enter the test's host namespace");
        match result {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// The leased addresses (host-local's files named by an IP). Fails closed.
    pub fn leases(&self) -> Vec<String> {
        let entries = match std::fs::read_dir(&self.leases) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", self.leases.display()),
        };
        let mut found: Vec<String> = entries
            .map(|e| {
                e.expect("lease entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        found.sort();
        found
    }

    /// Whether host-local ever reserved an address on this network.
    pub fn ever_leased(&self) -> bool {
        self.leases.join("last_reserved_ip.0").exists()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Err(e) = netns::remove(&self.host) {
            eprintln!("cannot remove {}: {e}", self.host.display());
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace. Fails closed.
pub fn is_mounted(path: &Path) -> bool {
    let table =
        std::fs::read_to_string("/proc/self/mountinfo").expect("cannot read /proc/self/mountinfo");
    let wanted = path.to_string_lossy().into_owned();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mount_point| mount_point == wanted)
}

/// The host-side interfaces a CNI result names (those without a sandbox), from the
/// network record in `dir`.
pub fn host_interfaces(record_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(record_dir.join("record.json")).unwrap_or_else(|e| {
        panic!(
            "cannot read the network record in {}: {e}",
            record_dir.display()
        )
    });
    let record: serde_json::Value = serde_json::from_str(&text).expect("record JSON");
    record["result"]["interfaces"]
        .as_array()
        .expect("the record holds the ADD result's interfaces")
        .iter()
        .filter(|i| {
            i.get("sandbox")
                .is_none_or(|s| s.as_str().is_none_or(str::is_empty))
        })
        .filter_map(|i| i["name"].as_str().map(str::to_owned))
        .collect()
}

/// Connects to `addr` (bounded: `tries` attempts `every` apart), sends `payload`, closes
/// the sending side and returns everything read back until the peer closes.
pub fn echo_round_trip(
    addr: std::net::SocketAddr,
    payload: &[u8],
    tries: u32,
    every: Duration,
) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut stream = None;
    let mut last = None;
    for _ in 0..tries {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                last = Some(e);
                std::thread::sleep(every);
            }
        }
    }
    let mut stream =
        stream.unwrap_or_else(|| panic!("cannot connect to {addr} in {tries} tries: {last:?}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reader = {
        let mut r = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut back = Vec::new();
            r.read_to_end(&mut back).map(|_| back)
        })
    };
    stream.write_all(payload).expect("send");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("close the sending side");
    reader
        .join()
        .expect("reader thread")
        .expect("read the echo")
}
