//! `spinbox run --net` on a real VM under TCG (SPEC §11), inside a network namespace this
//! test creates (the CNI bridge lives there; no route out, no masquerading, bounded
//! traffic): the container sees its address and reaches the bridge; `kill -9` of the CLI
//! leaves its lease behind, and the next run of the same id releases it (the CLI's stale
//! cleanup) before it runs and releases its own.

#[path = "cli_common/mod.rs"]
mod cli_common;

use cli_common::{read_until, rest};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use spinbox::net::netns;

/// The test's "host" namespace, with a bridge network's configuration list.
struct Fixture {
    dir: tempfile::TempDir,
    host: PathBuf,
    conflist: PathBuf,
    leases: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host-netns");
        netns::create(&host).expect("create the test's namespace");
        let data = dir.path().join("ipam");
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "sbcli",
            "plugins": [{
                "type": "bridge",
                "bridge": "sbt-cli",
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": data,
                    "ranges": [[{ "subnet": "10.231.10.0/24" }]],
                },
            }],
        });
        let conflist = dir.path().join("sbcli.conflist");
        std::fs::write(&conflist, list.to_string()).unwrap();
        Self {
            leases: data.join("sbcli"),
            dir,
            host,
            conflist,
        }
    }

    /// Runs `spinbox args…` from a thread inside the namespace (the child inherits it).
    fn spinbox(&self, args: Vec<String>) -> (Child, BufReader<ChildStdout>) {
        let root = self.dir.path().join("state");
        let mut child = netns::run_in(&self.host, move || {
            Command::new(env!("CARGO_BIN_EXE_spinbox"))
                .args(&args)
                .env("SPINBOX_STATE_ROOT", root)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        })
        .expect("enter the namespace")
        .expect("spinbox runs");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        (child, stdout)
    }

    /// Leased addresses. Fails closed.
    fn leases(&self) -> Vec<String> {
        let entries = match std::fs::read_dir(&self.leases) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => panic!("cannot list {}: {e}", self.leases.display()),
        };
        let mut found: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        found.sort();
        found
    }

    fn net_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("state").join(format!("{id}.net"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = netns::remove(&self.host);
    }
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("cannot read /proc/self/mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m) == path)
}

#[test]
fn a_killed_runs_network_is_released_by_the_next_run_whose_container_sees_the_network() {
    let fx = Fixture::new();
    let conf = fx.conflist.display().to_string();
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = ["run", "--net", &conf, "--id", "cli-net"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };

    // A kept VM: its address is printed, its lease and namespace exist.
    let (mut child, mut stdout) = fx.spinbox(args(&["--keep"]));
    let seen = read_until(&mut stdout, "VM running; Ctrl-C to delete it");
    let line = seen
        .lines()
        .find(|l| l.contains(" network: "))
        .unwrap_or_else(|| panic!("no network line:\n{seen}"));
    let ip = line
        .split(" network: ")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    assert!(ip.starts_with("10.231.10."), "{line}");
    assert_eq!(fx.leases(), vec![ip.clone()]);
    let ns = fx.net_dir("cli-net").join("netns");
    assert!(mounted(&ns), "the run's namespace");

    // kill -9: QEMU dies with the CLI, the network stays allocated.
    kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert_eq!(fx.leases(), vec![ip.clone()], "a killed run cannot release");
    assert!(mounted(&ns));

    // The next run of the id releases the dead run's network first, then its container
    // sees eth0 with an address and reaches the bridge (the gateway).
    let (mut child, mut stdout) = fx.spinbox(args(&[
        "--",
        "/bin/sh",
        "-c",
        "ip -4 -o addr show eth0 && ping -c 1 -W 10 10.231.10.1 >/dev/null && echo reached-gateway",
    ]));
    let (code, out, err) = rest(&mut child, &mut stdout);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("inet 10.231.10."), "{out}");
    assert!(out.contains("reached-gateway"), "{out}");
    // Nothing of either run is left.
    assert_eq!(fx.leases(), Vec::<String>::new(), "{err}");
    assert!(!mounted(&ns));
    assert!(!fx.net_dir("cli-net").exists());
}

#[test]
fn a_missing_conflist_is_a_one_line_error() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_spinbox"))
        .args(["run", "--net", "/nonexistent/net.conflist", "--", "true"])
        .env("SPINBOX_STATE_ROOT", root.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--net /nonexistent/net.conflist: no such CNI configuration list"),
        "{err}"
    );
}
