//! Networking through CNI (SPEC §11): the task's network namespace, the CNI plugins run in
//! it, the TAP device QEMU gets by file descriptor, and the release `network_cleanup` does.
//!
//! ```text
//!  shim's namespace (the "host")         task's namespace (given, or made by the shim)
//!  ┌──────────────────────────┐          ┌──────────────────────────────────────────┐
//!  │ bridge (CNI `bridge`)    │── veth ──│ eth0 (CNI) ◀─ tc mirred ─▶ TAP ── fd ──▶ QEMU
//!  └──────────────────────────┘          └──────────────────────────────────────────┘
//! ```
//!
//! [`Network::attach`] runs the configuration list's plugins (`ADD`) with the task's
//! namespace, makes a TAP device beside the CNI interface and wires the two together with
//! tc redirects, and gives the guest the CNI result's addresses, routes and DNS (as kernel
//! arguments the agent applies before it announces readiness). The guest NIC takes the CNI
//! interface's MAC address, so the bridge sees one station.
//!
//! Everything it allocates is recorded first, in `<state root>/<id>.net/record.json`, and
//! the directory is locked while its owner lives. [`Network::release`] (the
//! `network_cleanup` phase, after `vm_shutdown`) runs `DEL` with the same configuration, the
//! same container id and the cached result (the IPAM lease is released), removes the TAP and
//! the namespace if the shim made it, then the directory. It is idempotent, and so is
//! [`release_recorded`], which does the same from the record after the owner died (the
//! containerd shim's `delete` action, or the next attach of the same id).

pub mod cni;
pub mod netns;
pub mod tap;

pub use spinbox_protocol::net::{GuestDns, GuestNetwork, GuestRoute};

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::vm::{NetworkDevice, TapFd, VmId};
use serde::{Deserialize, Serialize};

/// The CNI interface name in the task's namespace, unless configured otherwise.
pub const DEFAULT_IFNAME: &str = "eth0";

/// The TAP device's name in the task's namespace.
pub const TAP_NAME: &str = "sbtap0";

/// Where CNI plugins are looked for, unless configured otherwise: Debian's
/// `containernetworking-plugins`, then the upstream default.
pub const DEFAULT_BIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// The record's file name in a network directory.
const RECORD_FILE: &str = "record.json";

/// The lock file's name in a network directory (locked while its owner lives).
const LOCK_FILE: &str = "lock";

/// The shim-made namespace's file name in a network directory.
const NETNS_FILE: &str = "netns";

/// How VMs are connected to a network (the `network` settings of the shim's config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The CNI network configuration list (`.conflist` JSON).
    pub conflist: PathBuf,
    /// Directories the plugins are looked for in (default [`DEFAULT_BIN_DIRS`]).
    pub bin_dirs: Vec<PathBuf>,
    /// The interface name CNI creates in the task's namespace (default
    /// [`DEFAULT_IFNAME`]).
    pub ifname: String,
    /// Bound on each plugin run (default 30 s).
    pub plugin_timeout: Duration,
}

impl NetworkConfig {
    /// A configuration of `conflist` with the defaults.
    pub fn new(conflist: impl Into<PathBuf>) -> Self {
        Self {
            conflist: conflist.into(),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            ifname: DEFAULT_IFNAME.to_owned(),
            plugin_timeout: Duration::from_secs(30),
        }
    }

    /// Checks the values (not the files): an absolute list path, a valid interface name, a
    /// non-zero timeout, at least one plugin directory.
    pub fn validate(&self) -> Result<(), String> {
        if !self.conflist.is_absolute() {
            return Err(format!(
                "network conflist {} must be an absolute path",
                self.conflist.display()
            ));
        }
        if self.bin_dirs.is_empty() {
            return Err("network bin_dirs must name at least one directory".to_owned());
        }
        let valid_name = !self.ifname.is_empty()
            && self.ifname.len() < 16
            && self
                .ifname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && self.ifname != TAP_NAME;
        if !valid_name {
            return Err(format!(
                "network ifname {:?} is not a valid interface name (1-15 of [A-Za-z0-9._-])",
                self.ifname
            ));
        }
        if self.plugin_timeout.is_zero() {
            return Err("network plugin_timeout_ms must be greater than 0".to_owned());
        }
        Ok(())
    }
}

/// Why a network could not be attached or released.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The configuration list is unusable.
    #[error("cannot load the CNI configuration {}", path.display())]
    Config {
        /// The list's path.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: cni::CniError,
    },
    /// A CNI plugin failed (its name and message are in the source).
    #[error("CNI {command} failed")]
    Cni {
        /// `ADD` or `DEL`.
        command: &'static str,
        /// The plugin's error.
        #[source]
        source: cni::CniError,
    },
    /// The shim could not make the task's network namespace.
    #[error("cannot create the network namespace {}", path.display())]
    Netns {
        /// The namespace's file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The namespace named by the task does not exist or is not a network namespace.
    #[error("{} is not a network namespace", path.display())]
    NotNetns {
        /// The path the task named.
        path: PathBuf,
    },
    /// The task's namespace already has the interface CNI would make, or the TAP: it holds
    /// someone else's network (another VM's, or CRI's), which is left alone.
    #[error("the network namespace {} already has {ifname}; it is not this task's to configure", netns.display())]
    Busy {
        /// The namespace.
        netns: PathBuf,
        /// The interface found there.
        ifname: String,
    },
    /// The TAP device could not be made or wired.
    #[error("cannot connect the VM to {ifname}")]
    Tap {
        /// The CNI interface.
        ifname: String,
        /// The error (boxed: netlink errors are large).
        #[source]
        source: Box<tap::TapError>,
    },
    /// The CNI result cannot be given to the guest.
    #[error("the CNI result cannot configure the guest: {0}")]
    Guest(String),
    /// Another live shim holds this id's network.
    #[error("the network of {id} is held by a live shim ({})", dir.display())]
    InUse {
        /// The VM id.
        id: String,
        /// Its network directory.
        dir: PathBuf,
    },
    /// The record or its directory could not be written, read or removed.
    #[error("network record {}", path.display())]
    Record {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What a network directory records: enough to release everything after its owner died.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    /// The CNI container id (the VM id).
    pub container_id: String,
    /// The task's namespace.
    pub netns: PathBuf,
    /// Whether the shim made the namespace (and must remove it).
    pub netns_created: bool,
    /// The CNI interface name.
    pub ifname: String,
    /// The TAP device's name.
    pub tap: String,
    /// Whether this network made the TAP (only then does a release remove a link of that
    /// name).
    #[serde(default)]
    pub tap_created: bool,
    /// The configuration list's text as used by `ADD` (`DEL` uses the same).
    pub conflist: String,
    /// The plugin directories.
    pub bin_dirs: Vec<PathBuf>,
    /// Bound on each plugin run, in milliseconds.
    pub plugin_timeout_ms: u64,
    /// The `ADD` result, once there is one (`DEL` gets it as `prevResult`).
    pub result: Option<serde_json::Value>,
}

impl NetworkRecord {
    fn invocation(&self) -> cni::Invocation {
        cni::Invocation {
            container_id: self.container_id.clone(),
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            bin_dirs: self.bin_dirs.clone(),
            timeout: Duration::from_millis(self.plugin_timeout_ms),
            args: Vec::new(),
        }
    }

    fn write(&self, dir: &Path) -> Result<(), NetworkError> {
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(".record.tmp");
        let record_err = |source| NetworkError::Record {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec(self).map_err(|e| record_err(io::Error::other(e)))?;
        std::fs::write(&tmp, text).map_err(record_err)?;
        std::fs::rename(&tmp, &path).map_err(record_err)
    }

    fn read(dir: &Path) -> Result<Option<Self>, NetworkError> {
        let path = dir.join(RECORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| NetworkError::Record {
                        path,
                        source: io::Error::new(io::ErrorKind::InvalidData, e),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NetworkError::Record { path, source }),
        }
    }
}

/// The network directory of VM `id` under `state_root`.
pub fn network_dir(state_root: &Path, id: &VmId) -> PathBuf {
    state_root.join(format!("{}.net", id.as_str()))
}

/// A VM's attached network: the namespace, the CNI allocation and the TAP device, until
/// [`Network::release`].
#[derive(Debug)]
pub struct Network {
    dir: PathBuf,
    record: NetworkRecord,
    /// Held while this network lives; a free lock marks a dead owner's directory. Closed
    /// once a release removed the directory.
    lock: Mutex<Option<File>>,
    /// The shim's copy of the TAP descriptor (QEMU inherits its own).
    tap: Mutex<Option<TapFd>>,
    guest: GuestNetwork,
}

impl Network {
    /// Attaches VM `id` to the network `config` describes, in the namespace `netns` (the
    /// task's, which must exist) or, with `None`, one the shim makes. A directory left by
    /// a dead owner of the same id is released first.
    ///
    /// On failure everything allocated so far is released again (`DEL` included), and the
    /// error names the plugin and its message.
    pub async fn attach(
        config: &NetworkConfig,
        state_root: &Path,
        id: &VmId,
        netns: Option<&Path>,
    ) -> Result<Self, NetworkError> {
        config.validate().map_err(|why| NetworkError::Config {
            path: config.conflist.clone(),
            source: cni::CniError::Config {
                path: Some(config.conflist.clone()),
                why,
            },
        })?;
        let conflist =
            std::fs::read_to_string(&config.conflist).map_err(|e| NetworkError::Config {
                path: config.conflist.clone(),
                source: cni::CniError::Config {
                    path: Some(config.conflist.clone()),
                    why: e.to_string(),
                },
            })?;
        let list = cni::NetworkConfigList::from_json(&conflist).map_err(|source| {
            NetworkError::Config {
                path: config.conflist.clone(),
                source,
            }
        })?;
        if let Some(path) = netns {
            if !netns::is_netns(path) {
                return Err(NetworkError::NotNetns {
                    path: path.to_owned(),
                });
            }
            // A namespace that already has our interface or TAP is someone else's network
            // (another VM's, or CRI's own): refused before anything runs, so no rollback
            // (whose DEL would delete their interface) touches it.
            for name in [config.ifname.as_str(), TAP_NAME] {
                let (ns, link) = (path.to_owned(), name.to_owned());
                let taken = blocking(move || Ok(tap::link_exists(&ns, &link)))
                    .await
                    .map_err(|source| NetworkError::Netns {
                        path: path.to_owned(),
                        source,
                    })?
                    .map_err(|source| NetworkError::Tap {
                        ifname: name.to_owned(),
                        source: Box::new(source),
                    })?;
                if taken {
                    return Err(NetworkError::Busy {
                        netns: path.to_owned(),
                        ifname: name.to_owned(),
                    });
                }
            }
        }
        let dir = network_dir(state_root, id);
        let netns_created = netns.is_none();
        let record = NetworkRecord {
            container_id: id.as_str().to_owned(),
            netns: netns.map_or_else(|| dir.join(NETNS_FILE), Path::to_owned),
            netns_created,
            ifname: config.ifname.clone(),
            tap: TAP_NAME.to_owned(),
            tap_created: false,
            conflist,
            bin_dirs: config.bin_dirs.clone(),
            plugin_timeout_ms: u64::try_from(config.plugin_timeout.as_millis()).unwrap_or(u64::MAX),
            result: None,
        };
        let lock = claim_dir(state_root, id, &dir, &record).await?;
        let mut network = Network {
            dir,
            record,
            lock: Mutex::new(Some(lock)),
            tap: Mutex::new(None),
            guest: GuestNetwork::default(),
        };
        match network.connect(&list).await {
            Ok(()) => Ok(network),
            Err(e) => {
                if let Err(undo) = network.release().await {
                    tracing::warn!(
                        id = %id,
                        error = %crate::check::error_chain(&undo),
                        "network rollback left something behind"
                    );
                }
                Err(e)
            }
        }
    }

    /// The steps after the directory is claimed: namespace, `ADD`, TAP, guest settings.
    async fn connect(&mut self, list: &cni::NetworkConfigList) -> Result<(), NetworkError> {
        if self.record.netns_created {
            let path = self.record.netns.clone();
            blocking(move || netns::create(&path))
                .await
                .map_err(|source| NetworkError::Netns {
                    path: self.record.netns.clone(),
                    source,
                })?;
        }
        let result = cni::add(list, &self.record.invocation())
            .await
            .map_err(|source| NetworkError::Cni {
                command: "ADD",
                source,
            })?;
        self.record.result = Some(result.raw.clone());
        self.record.write(&self.dir)?;
        let tap = tap::attach_async(
            self.record.netns.clone(),
            self.record.ifname.clone(),
            self.record.tap.clone(),
        )
        .await
        .map_err(|source| NetworkError::Tap {
            ifname: self.record.ifname.clone(),
            source: Box::new(source),
        })?;
        self.guest = guest_network(&result, &self.record.ifname, tap.mac, tap.mtu)?;
        *lock(&self.tap) = Some(TapFd::new(tap.fd));
        self.record.tap_created = true;
        self.record.write(&self.dir)?;
        Ok(())
    }

    /// The VM's NIC for `VmSpec::nics`: the TAP descriptor and the guest MAC; `None` once
    /// [`Network::close_tap`] or [`Network::release`] closed the shim's descriptor.
    pub fn device(&self) -> Option<NetworkDevice> {
        let tap = lock(&self.tap).clone()?;
        Some(NetworkDevice {
            tap,
            mac: self.guest.mac,
        })
    }

    /// What the guest configures: addresses, routes, DNS.
    pub fn guest(&self) -> &GuestNetwork {
        &self.guest
    }

    /// The kernel arguments that give the guest its configuration.
    pub fn kernel_args(&self) -> Result<Vec<String>, NetworkError> {
        self.guest
            .to_kernel_args()
            .map_err(|e| NetworkError::Guest(e.to_string()))
    }

    /// Closes the shim's copy of the TAP descriptor (once the VMM inherited its own, the
    /// device then lives as long as the VMM).
    pub fn close_tap(&self) {
        drop(lock(&self.tap).take());
    }

    /// What this network recorded.
    pub fn record(&self) -> &NetworkRecord {
        &self.record
    }

    /// Its directory (`<state root>/<id>.net`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Releases everything (the `network_cleanup` phase; run it once the VM no longer
    /// holds the TAP): closes the shim's TAP descriptor, removes the TAP, runs `DEL`, removes
    /// the namespace the shim made, then the directory. Idempotent; every step runs even
    /// when an earlier one failed, and the first error is returned.
    pub async fn release(&self) -> Result<(), NetworkError> {
        drop(lock(&self.tap).take());
        release_parts(&self.dir, &self.record).await?;
        drop(lock(&self.lock).take());
        Ok(())
    }
}

/// Releases what the record in `dir` names (a network whose owner died): `DEL` with the
/// recorded configuration and result, the TAP, the namespace the shim made, the directory.
/// `Ok` when there is no directory; [`NetworkError::InUse`] while a live owner holds it.
pub async fn release_recorded(dir: &Path) -> Result<(), NetworkError> {
    let lock = match File::open(dir.join(LOCK_FILE)) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(NetworkError::Record {
                path: dir.to_owned(),
                source,
            })
        }
    };
    if let Some(lock) = &lock {
        if !try_lock(lock) {
            return Err(NetworkError::InUse {
                id: dir
                    .file_name()
                    .map(|n| n.to_string_lossy().trim_end_matches(".net").to_owned())
                    .unwrap_or_default(),
                dir: dir.to_owned(),
            });
        }
        // The file we locked must still be the directory's lock: between our open and our
        // lock, someone else may have released this directory and a new owner renamed its
        // own into place. Then the directory we looked at is gone, and the one there now is
        // the new owner's (whose lock we would not get).
        if !same_file(lock, &dir.join(LOCK_FILE)) {
            return Ok(());
        }
    }
    match NetworkRecord::read(dir)? {
        Some(record) => release_parts(dir, &record).await,
        None => remove_dir(dir),
    }
}

async fn release_parts(dir: &Path, record: &NetworkRecord) -> Result<(), NetworkError> {
    let mut first: Option<NetworkError> = None;
    let mut keep = |e: NetworkError| {
        tracing::warn!(dir = %dir.display(), error = %crate::check::error_chain(&e), "network release step failed");
        if first.is_none() {
            first = Some(e);
        }
    };
    // The TAP, if this network made it: gone with its last descriptor unless one leaked.
    if record.tap_created && netns::is_netns(&record.netns) {
        if let Err(source) = tap::remove_async(record.netns.clone(), record.tap.clone()).await {
            keep(NetworkError::Tap {
                ifname: record.tap.clone(),
                source: Box::new(source),
            });
        }
    }
    match cni::NetworkConfigList::from_json(&record.conflist) {
        Ok(list) => {
            let prev = match &record.result {
                Some(raw) => match cni::CniResult::from_value(raw.clone()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "cached CNI result unreadable; DEL without it");
                        None
                    }
                },
                None => None,
            };
            if let Err(source) = cni::del(&list, &record.invocation(), prev.as_ref()).await {
                keep(NetworkError::Cni {
                    command: "DEL",
                    source,
                });
            }
        }
        Err(source) => keep(NetworkError::Config {
            path: dir.join(RECORD_FILE),
            source,
        }),
    }
    if record.netns_created {
        let path = record.netns.clone();
        if let Err(source) = blocking(move || netns::remove(&path)).await {
            keep(NetworkError::Netns {
                path: record.netns.clone(),
                source,
            });
        }
    }
    match first {
        // Kept on failure, so a later release (or the delete action) can try again.
        Some(e) => Err(e),
        None => remove_dir(dir),
    }
}

fn remove_dir(dir: &Path) -> Result<(), NetworkError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetworkError::Record {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Makes `dir` ours: prepared under a temporary name with its lock held and `record`
/// written, then renamed into place, so nobody ever sees it unlocked or without a record.
/// A directory left by a dead owner is released first.
async fn claim_dir(
    state_root: &Path,
    id: &VmId,
    dir: &Path,
    record: &NetworkRecord,
) -> Result<File, NetworkError> {
    let record_err = |path: &Path| {
        let path = path.to_owned();
        move |source| NetworkError::Record { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_root)
        .map_err(record_err(state_root))?;
    for _ in 0..4 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = state_root.join(format!(".{}.net.{}.{n}", id.as_str(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(record_err(&tmp))?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp.join(LOCK_FILE))
            .map_err(record_err(&tmp))?;
        if !try_lock(&lock) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(NetworkError::Record {
                path: tmp,
                source: io::Error::other("cannot lock a fresh directory"),
            });
        }
        record.write(&tmp)?;
        match std::fs::rename(&tmp, dir) {
            Ok(()) => return Ok(lock),
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                let _ = std::fs::remove_dir_all(&tmp);
                tracing::warn!(dir = %dir.display(), "releasing the network of a dead shim");
                release_recorded(dir).await?;
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(NetworkError::Record {
                    path: dir.to_owned(),
                    source,
                });
            }
        }
    }
    Err(NetworkError::InUse {
        id: id.as_str().to_owned(),
        dir: dir.to_owned(),
    })
}

/// Whether the open `file` is the file at `path` now (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `true` when taken.
fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs `f` on tokio's blocking pool (namespace work joins a thread of its own).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("network task failed: {e}"))))
}

/// The guest's settings from a CNI result: the addresses of `ifname`, the routes (a
/// route without a gateway takes its family's gateway, if any), the DNS.
fn guest_network(
    result: &cni::CniResult,
    ifname: &str,
    mac: [u8; 6],
    mtu: u32,
) -> Result<GuestNetwork, NetworkError> {
    let ips = result.container_ips(ifname);
    if ips.is_empty() {
        return Err(NetworkError::Guest(format!(
            "the result gives {ifname} no IP address"
        )));
    }
    let addresses = ips.iter().map(|ip| (ip.address, ip.prefix)).collect();
    let gateway_of = |v4: bool| {
        ips.iter()
            .filter_map(|ip| ip.gateway)
            .find(|gw| gw.is_ipv4() == v4)
    };
    let routes = result
        .routes
        .iter()
        .map(|r| GuestRoute {
            dst: r.dst,
            prefix: r.prefix,
            gateway: r.gw.or_else(|| gateway_of(r.dst.is_ipv4())),
        })
        .collect();
    let dns = GuestDns {
        nameservers: result.dns.nameservers.clone(),
        search: result
            .dns
            .search
            .iter()
            .chain(result.dns.domain.iter())
            .cloned()
            .collect(),
        options: result.dns.options.clone(),
    };
    Ok(GuestNetwork {
        mac,
        mtu: Some(mtu),
        addresses,
        routes,
        dns,
    })
}

#[cfg(test)]
mod tests {
    //! Against Debian's CNI plugins, inside namespaces each test creates (the bridge lives
    //! in the test's own "host" namespace; no route out).
    use super::*;

    /// A test's host namespace with a bridge network on `subnet`.
    struct Fixture {
        dir: tempfile::TempDir,
        host: PathBuf,
        config: NetworkConfig,
        leases: PathBuf,
    }

    impl Fixture {
        fn new(name: &str, subnet: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let host = dir.path().join("host");
            netns::create(&host).unwrap();
            let list = serde_json::json!({
                "cniVersion": "1.0.0",
                "name": name,
                "plugins": [{
                    "type": "bridge",
                    "bridge": format!("sbu-{name}"),
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.path().join("ipam"),
                        "ranges": [[{ "subnet": subnet }]],
                    },
                }],
            });
            let conflist = dir.path().join("net.conflist");
            std::fs::write(&conflist, list.to_string()).unwrap();
            Self {
                leases: dir.path().join("ipam").join(name),
                host,
                config: NetworkConfig::new(conflist),
                dir,
            }
        }

        fn root(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        fn leases(&self) -> Vec<String> {
            let Ok(entries) = std::fs::read_dir(&self.leases) else {
                return Vec::new();
            };
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        }

        /// Runs `f` on a current-thread runtime on a thread inside the host namespace.
        fn run<T: Send + 'static>(
            &self,
            f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
        ) -> T {
            netns::run_in(&self.host, move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
            .unwrap()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = netns::remove(&self.host);
        }
    }

    fn id(s: &str) -> VmId {
        VmId::new(s).unwrap()
    }

    #[test]
    fn attach_gives_the_guest_the_lease_and_release_is_idempotent() {
        let fx = Fixture::new("sbunit1", "10.231.30.0/24");
        let (config, root) = (fx.config.clone(), fx.root());
        let (guest, mac, netns_path, dir) = fx.run(move || {
            Box::pin(async move {
                let n = Network::attach(&config, &root, &id("u1"), None)
                    .await
                    .expect("attach");
                let device = n.device().expect("the TAP descriptor");
                assert_eq!(device.mac, n.guest().mac);
                assert!(tap::link_exists(&n.record().netns, TAP_NAME).unwrap());
                let args = n.kernel_args().unwrap();
                assert!(args
                    .iter()
                    .any(|a| a.starts_with("spinbox.net.addr=10.231.30.")));
                let out = (
                    n.guest().clone(),
                    device.mac,
                    n.record().netns.clone(),
                    n.dir().to_owned(),
                );
                drop(device);
                n.release().await.expect("release");
                n.release().await.expect("a second release");
                out
            })
        });
        assert_ne!(mac, [0; 6]);
        assert_eq!(guest.addresses.len(), 1);
        assert!(fx.leases().is_empty(), "the lease is released");
        assert!(!netns_path.exists(), "the shim's namespace is removed");
        assert!(!dir.exists(), "the record is removed");
    }

    #[test]
    fn a_dead_owners_network_is_released_from_its_record_and_a_live_one_is_refused() {
        let fx = Fixture::new("sbunit2", "10.231.31.0/24");
        let (config, root) = (fx.config.clone(), fx.root());
        fx.run(move || {
            Box::pin(async move {
                let live = Network::attach(&config, &root, &id("u2"), None)
                    .await
                    .expect("attach");
                let dir = live.dir().to_owned();
                assert!(matches!(
                    release_recorded(&dir).await,
                    Err(NetworkError::InUse { .. })
                ));
                assert!(matches!(
                    Network::attach(&config, &root, &id("u2"), None).await,
                    Err(NetworkError::InUse { .. })
                ));
                // The owner dies without releasing (its lock goes with it).
                drop(live);
                assert!(dir.exists());
                release_recorded(&dir).await.expect("release the record");
                assert!(!dir.exists());
                release_recorded(&dir).await.expect("nothing to release");
            })
        });
        assert!(fx.leases().is_empty(), "the dead owner's lease is released");
    }

    #[test]
    fn the_next_attach_of_an_id_releases_a_dead_owners_network_first() {
        let fx = Fixture::new("sbunit3", "10.231.32.0/24");
        let (config, root) = (fx.config.clone(), fx.root());
        let leases = fx.leases.clone();
        fx.run(move || {
            Box::pin(async move {
                let first = Network::attach(&config, &root, &id("u3"), None)
                    .await
                    .unwrap();
                let old = first.guest().addresses[0].0.to_string();
                drop(first);
                let second = Network::attach(&config, &root, &id("u3"), None)
                    .await
                    .expect("attach over a dead owner's directory");
                let new = second.guest().addresses[0].0.to_string();
                assert_ne!(old, new, "host-local hands out the next address");
                assert!(
                    !leases.join(&old).exists(),
                    "the dead owner's lease is gone"
                );
                second.release().await.unwrap();
            })
        });
        assert!(fx.leases().is_empty());
    }

    #[test]
    fn a_given_namespace_is_used_and_left_in_place() {
        let fx = Fixture::new("sbunit4", "10.231.33.0/24");
        let task_ns = fx.dir.path().join("task-ns");
        netns::create(&task_ns).unwrap();
        let (config, root, ns) = (fx.config.clone(), fx.root(), task_ns.clone());
        fx.run(move || {
            Box::pin(async move {
                let n = Network::attach(&config, &root, &id("u4"), Some(&ns))
                    .await
                    .expect("attach");
                assert_eq!(n.record().netns, ns);
                assert!(!n.record().netns_created);
                assert!(tap::link_exists(&ns, "eth0").unwrap());
                n.release().await.unwrap();
                assert!(!tap::link_exists(&ns, "eth0").unwrap(), "DEL removed eth0");
            })
        });
        assert!(netns::is_netns(&task_ns), "the task's namespace stays");
        netns::remove(&task_ns).unwrap();
        assert!(fx.leases().is_empty());
    }

    #[test]
    fn a_namespace_that_already_has_a_network_is_refused_and_left_alone() {
        let fx = Fixture::new("sbunit6", "10.231.35.0/24");
        let task_ns = fx.dir.path().join("shared-ns");
        netns::create(&task_ns).unwrap();
        let (config, root, ns) = (fx.config.clone(), fx.root(), task_ns.clone());
        fx.run(move || {
            Box::pin(async move {
                let first = Network::attach(&config, &root, &id("u6a"), Some(&ns))
                    .await
                    .expect("the first attach");
                let second = Network::attach(&config, &root, &id("u6b"), Some(&ns)).await;
                assert!(
                    matches!(&second, Err(NetworkError::Busy { ifname, .. }) if ifname == "eth0"),
                    "{second:?}"
                );
                // The first network is untouched: its veth, TAP and lease are there.
                assert!(tap::link_exists(&ns, "eth0").unwrap());
                assert!(tap::link_exists(&ns, TAP_NAME).unwrap());
                assert!(!network_dir(&root, &id("u6b")).exists());
                first.release().await.unwrap();
            })
        });
        assert!(fx.leases().is_empty());
        netns::remove(&task_ns).unwrap();
    }

    #[test]
    fn the_sample_configuration_list_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cni/10-spinbox.conflist");
        let list = cni::NetworkConfigList::load(&path).expect("the sample parses");
        assert_eq!(list.name, "spinbox");
        assert_eq!(list.plugins.len(), 1);
        NetworkConfig::new(path).validate().unwrap();
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let fx = Fixture::new("sbunit5", "10.231.34.0/24");
        let (config, root) = (fx.config.clone(), fx.root());
        let not_ns = fx.dir.path().join("plain-file");
        std::fs::write(&not_ns, b"").unwrap();
        fx.run(move || {
            Box::pin(async move {
                let missing = NetworkConfig::new("/nonexistent/x.conflist");
                assert!(matches!(
                    Network::attach(&missing, &root, &id("u5"), None).await,
                    Err(NetworkError::Config { .. })
                ));
                assert!(matches!(
                    Network::attach(&config, &root, &id("u5"), Some(&not_ns)).await,
                    Err(NetworkError::NotNetns { .. })
                ));
                let mut relative = config.clone();
                relative.conflist = "net.conflist".into();
                assert!(relative.validate().is_err());
                let mut bad_if = config.clone();
                bad_if.ifname = "eth 0".into();
                assert!(bad_if.validate().is_err());
                assert!(!network_dir(&root, &id("u5")).exists());
            })
        });
    }
}
