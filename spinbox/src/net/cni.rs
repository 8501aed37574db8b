//! Running CNI plugins: configuration lists, `ADD` and `DEL`, results and errors.
//!
//! This follows the CNI specification (<https://www.cni.dev/docs/spec/>) for network
//! configuration lists of `cniVersion` 0.3.0, 0.3.1, 0.4.0 and 1.0.0: [`add`] runs the
//! list's plugins in order, each given the previous one's result as `prevResult`; [`del`]
//! runs them in reverse. `CHECK`, `GC`, `STATUS`, capabilities (`runtimeConfig`) and result
//! caching by the library are not implemented: the caller keeps the [`CniResult`] of `ADD`
//! (it serializes to the plugins' own JSON) to give it to `DEL`.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// The `cniVersion`s supported.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// The `PATH` plugins get when the shim has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a CNI operation failed; the plugin errors name the plugin (its `type`).
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The network configuration list is unreadable or invalid.
    #[error("CNI configuration{}: {why}", path_suffix(path.as_deref()))]
    Config {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// What is wrong.
        why: String,
    },
    /// The invocation's parameters are invalid (e.g. an empty container ID).
    #[error("CNI invocation: {why}")]
    Invocation {
        /// What is wrong.
        why: String,
    },
    /// No executable for the plugin in the plugin directories.
    #[error("CNI plugin {plugin:?} not found in {}", dirs_list(dirs))]
    NotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// The plugin failed: it exited non-zero.
    #[error(
        "CNI plugin {plugin:?} failed {command} (code {code}): {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// `ADD` or `DEL`.
        command: &'static str,
        /// The error code of the plugin's error JSON (0 when it printed none).
        code: u64,
        /// The error JSON's `msg`, or the plugin's stderr when it printed no error JSON.
        msg: String,
        /// The error JSON's `details` (or the exit status when there was no error JSON).
        details: String,
    },
    /// The plugin could not be run (spawned, written to, waited for).
    #[error("CNI plugin {plugin:?}: running it failed: {source}")]
    Exec {
        /// The plugin's `type`.
        plugin: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The plugin did not finish in time; it was killed (with its process group).
    #[error("CNI plugin {plugin:?} did not finish within {after:?}")]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// The time limit.
        after: Duration,
    },
    /// The plugin succeeded but its result is not a valid CNI result.
    #[error("CNI plugin {plugin:?} returned a bad result: {why}")]
    BadResult {
        /// The plugin's `type`.
        plugin: String,
        /// What is wrong with it.
        why: String,
    },
    /// A stored result (e.g. a cached `ADD` result) is not a valid CNI result.
    #[error("invalid CNI result: {why}")]
    InvalidResult {
        /// What is wrong with it.
        why: String,
    },
}

fn path_suffix(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

fn dirs_list(dirs: &[PathBuf]) -> String {
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    format!("[{}]", list.join(", "))
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

/// A CNI network configuration list (the `.conflist` format).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network's name.
    pub name: String,
    /// The list's `cniVersion`, one of [`SUPPORTED_VERSIONS`].
    pub cni_version: String,
    /// The plugins' configurations, in order; each has a plain file name as `type`.
    pub plugins: Vec<Value>,
    /// `disableCheck` (kept for callers; `CHECK` is not run here).
    pub disable_check: bool,
    /// The whole list as read, to re-serialize.
    pub raw: Value,
}

/// The `type` of a plugin configuration (validated by [`NetworkConfigList::from_json`]).
fn plugin_type(plugin: &Value) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

impl NetworkConfigList {
    /// Reads and validates a configuration list file.
    pub fn load(path: &Path) -> Result<Self, CniError> {
        let text = std::fs::read_to_string(path).map_err(|e| CniError::Config {
            path: Some(path.to_path_buf()),
            why: format!("cannot read it: {e}"),
        })?;
        Self::from_json(&text).map_err(|e| match e {
            CniError::Config { why, .. } => CniError::Config {
                path: Some(path.to_path_buf()),
                why,
            },
            other => other,
        })
    }

    /// Parses and validates a configuration list: `name` non-empty, `cniVersion`
    /// supported, `plugins` non-empty, each an object whose `type` is a plain file name.
    pub fn from_json(text: &str) -> Result<Self, CniError> {
        let bad = |why: String| CniError::Config { path: None, why };
        let raw: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = raw
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(bad("`name` must be a non-empty string".into())),
        };
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(bad("`cniVersion` must be a string".into())),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(bad(format!(
                "unsupported cniVersion {cni_version:?} (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            )));
        }
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) if !p.is_empty() => p.clone(),
            _ => return Err(bad("`plugins` must be a non-empty array".into())),
        };
        for (i, plugin) in plugins.iter().enumerate() {
            if !plugin.is_object() {
                return Err(bad(format!("plugin {i} is not a JSON object")));
            }
            match plugin.get("type") {
                Some(Value::String(t)) if is_plain_name(t) => {}
                Some(Value::String(t)) => {
                    return Err(bad(format!(
                        "plugin {i}: type {t:?} is not a plain file name"
                    )))
                }
                _ => return Err(bad(format!("plugin {i} has no string `type`"))),
            }
        }
        let disable_check = obj
            .get("disableCheck")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            name,
            cni_version,
            plugins,
            disable_check,
            raw,
        })
    }

    /// The list as JSON (as read).
    pub fn to_json(&self) -> String {
        self.raw.to_string()
    }

    /// Whether `DEL` gets `prevResult` (from cniVersion 0.4.0 on).
    fn del_takes_prev_result(&self) -> bool {
        !matches!(self.cni_version.as_str(), "0.3.0" | "0.3.1")
    }
}

/// Whether `name` is a plain file name: non-empty, no `/`, no NUL, not `.` or `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// The runtime's side of a CNI call: who, where, which plugins, how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_CONTAINERID`: the container (sandbox) ID.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface to create in the namespace (e.g. `eth0`).
    pub ifname: String,
    /// The directories searched for plugin executables, in order; also `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// The time limit of each plugin run.
    pub timeout: Duration,
    /// `CNI_ARGS` as key/value pairs (joined as `K1=V1;K2=V2`); may be empty.
    pub args: Vec<(String, String)>,
}

impl Invocation {
    /// Checks the parameters the plugins would otherwise reject less clearly.
    fn validate(&self) -> Result<(), CniError> {
        let bad = |why: String| Err(CniError::Invocation { why });
        // The specification's container ID: alphanumerics, `_`, `.` and `-`, not empty.
        if self.container_id.is_empty()
            || !self
                .container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return bad(format!("invalid container ID {:?}", self.container_id));
        }
        if !self.netns.is_absolute() {
            return bad(format!(
                "the namespace path {} is not absolute",
                self.netns.display()
            ));
        }
        if self.ifname.is_empty()
            || self.ifname.len() > 15
            || !is_plain_name(&self.ifname)
            || self
                .ifname
                .contains(|c: char| c == ':' || c.is_whitespace())
        {
            return bad(format!("invalid interface name {:?}", self.ifname));
        }
        if self.bin_dirs.is_empty() {
            return bad("no plugin directories".into());
        }
        if let Some(d) = self
            .bin_dirs
            .iter()
            .find(|d| d.to_string_lossy().contains(':'))
        {
            return bad(format!("plugin directory {} contains `:`", d.display()));
        }
        if self.timeout.is_zero() {
            return bad("zero timeout".into());
        }
        for (k, v) in &self.args {
            if k.is_empty() || k.contains(['=', ';']) || v.contains(';') {
                return bad(format!("invalid CNI_ARGS pair {k:?}={v:?}"));
            }
        }
        Ok(())
    }

    /// Finds the executable of plugin `ty` in the plugin directories.
    fn find(&self, ty: &str) -> Result<PathBuf, CniError> {
        for dir in &self.bin_dirs {
            let path = dir.join(ty);
            if let Ok(meta) = std::fs::metadata(&path) {
                if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                    return Ok(path);
                }
            }
        }
        Err(CniError::NotFound {
            plugin: ty.to_owned(),
            dirs: self.bin_dirs.clone(),
        })
    }
}

/// An interface of a [`CniResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniInterface {
    /// The interface's name.
    pub name: String,
    /// Its MAC address, as the plugin wrote it.
    pub mac: Option<String>,
    /// The namespace it is in (the `CNI_NETNS` path) when in the container; `None` on the
    /// host side.
    pub sandbox: Option<String>,
}

/// An IP address of a [`CniResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CniIp {
    /// The address.
    pub address: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The index in [`CniResult::interfaces`] of the interface holding it.
    pub interface: Option<usize>,
}

/// A route of a [`CniResult`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CniRoute {
    /// The destination network.
    pub dst: IpAddr,
    /// The destination's prefix length.
    pub prefix: u8,
    /// The gateway (`None`: the default gateway of the interface).
    pub gw: Option<IpAddr>,
}

/// The DNS settings of a [`CniResult`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniDns {
    /// Name servers, in order of preference.
    pub nameservers: Vec<IpAddr>,
    /// The local domain.
    pub domain: Option<String>,
    /// Search domains.
    pub search: Vec<String>,
    /// Resolver options.
    pub options: Vec<String>,
}

/// The result of `ADD` (the last plugin's), for cniVersion 0.3.0 to 1.0.0.
///
/// Serializes (serde) to the plugin's own JSON (`raw`) and deserializes from it, so it can
/// be cached in a file and given back to [`del`] after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct CniResult {
    /// The result as the plugin printed it.
    pub raw: Value,
    /// Its `cniVersion`.
    pub cni_version: String,
    /// The interfaces created.
    pub interfaces: Vec<CniInterface>,
    /// The IP addresses assigned.
    pub ips: Vec<CniIp>,
    /// The routes.
    pub routes: Vec<CniRoute>,
    /// The DNS settings.
    pub dns: CniDns,
}

/// The wire shapes of a result (only the fields used).
mod wire {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Result {
        pub(super) cni_version: String,
        #[serde(default)]
        pub(super) interfaces: Vec<Interface>,
        #[serde(default)]
        pub(super) ips: Vec<Ip>,
        #[serde(default)]
        pub(super) routes: Vec<Route>,
        #[serde(default)]
        pub(super) dns: Dns,
    }

    #[derive(Deserialize)]
    pub(super) struct Interface {
        pub(super) name: String,
        pub(super) mac: Option<String>,
        pub(super) sandbox: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Ip {
        pub(super) address: String,
        pub(super) gateway: Option<String>,
        pub(super) interface: Option<usize>,
    }

    #[derive(Deserialize)]
    pub(super) struct Route {
        pub(super) dst: String,
        pub(super) gw: Option<String>,
    }

    #[derive(Deserialize, Default)]
    pub(super) struct Dns {
        #[serde(default)]
        pub(super) nameservers: Vec<String>,
        pub(super) domain: Option<String>,
        #[serde(default)]
        pub(super) search: Vec<String>,
        #[serde(default)]
        pub(super) options: Vec<String>,
    }
}

/// Parses `a.b.c.d/n` (or an IPv6 CIDR).
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not an address/prefix"))?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: bad IP address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{s:?}: bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("{s:?}: prefix length over {max}"));
    }
    Ok((addr, prefix))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?}: bad IP address"))
}

impl TryFrom<Value> for CniResult {
    type Error = String;

    fn try_from(raw: Value) -> Result<Self, String> {
        let w: wire::Result = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        if !SUPPORTED_VERSIONS.contains(&w.cni_version.as_str()) {
            return Err(format!(
                "unsupported cniVersion {:?} (supported: {})",
                w.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        let interfaces: Vec<CniInterface> = w
            .interfaces
            .into_iter()
            .map(|i| CniInterface {
                name: i.name,
                mac: i.mac,
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
            })
            .collect();
        let ips = w
            .ips
            .into_iter()
            .map(|ip| {
                let (address, prefix) = parse_cidr(&ip.address)?;
                if ip.interface.is_some_and(|i| i >= interfaces.len()) {
                    return Err(format!(
                        "IP {} names interface {:?} of {}",
                        ip.address,
                        ip.interface,
                        interfaces.len()
                    ));
                }
                Ok(CniIp {
                    address,
                    prefix,
                    gateway: ip.gateway.as_deref().map(parse_ip).transpose()?,
                    interface: ip.interface,
                })
            })
            .collect::<Result<_, String>>()?;
        let routes = w
            .routes
            .into_iter()
            .map(|r| {
                let (dst, prefix) = parse_cidr(&r.dst)?;
                Ok(CniRoute {
                    dst,
                    prefix,
                    gw: r.gw.as_deref().map(parse_ip).transpose()?,
                })
            })
            .collect::<Result<_, String>>()?;
        let dns = CniDns {
            nameservers: w
                .dns
                .nameservers
                .iter()
                .map(|s| parse_ip(s))
                .collect::<Result<_, String>>()?,
            domain: w.dns.domain,
            search: w.dns.search,
            options: w.dns.options,
        };
        Ok(Self {
            raw,
            cni_version: w.cni_version,
            interfaces,
            ips,
            routes,
            dns,
        })
    }
}

impl From<CniResult> for Value {
    fn from(result: CniResult) -> Value {
        result.raw
    }
}

impl CniResult {
    /// Parses a result (e.g. one cached with [`CniResult::to_json`]).
    pub fn from_json(text: &str) -> Result<Self, CniError> {
        let raw: Value = serde_json::from_str(text).map_err(|e| CniError::InvalidResult {
            why: format!("not JSON: {e}"),
        })?;
        Self::from_value(raw)
    }

    /// Parses a result from JSON already read.
    pub fn from_value(raw: Value) -> Result<Self, CniError> {
        Self::try_from(raw).map_err(|why| CniError::InvalidResult { why })
    }

    /// The result as JSON, as the plugin printed it.
    pub fn to_json(&self) -> String {
        self.raw.to_string()
    }

    /// The IPs of the container's interface `ifname`: those whose `interface` index names
    /// an interface called `ifname` with a `sandbox`. When no IP has an `interface` index,
    /// all IPs.
    pub fn container_ips(&self, ifname: &str) -> Vec<CniIp> {
        if self.ips.iter().all(|ip| ip.interface.is_none()) {
            return self.ips.clone();
        }
        self.ips
            .iter()
            .filter(|ip| {
                ip.interface
                    .and_then(|i| self.interfaces.get(i))
                    .is_some_and(|i| i.name == ifname && i.sandbox.is_some())
            })
            .copied()
            .collect()
    }
}

impl fmt::Display for CniResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ips: Vec<String> = self
            .ips
            .iter()
            .map(|ip| format!("{}/{}", ip.address, ip.prefix))
            .collect();
        write!(f, "CNI result {} [{}]", self.cni_version, ips.join(", "))
    }
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
        }
    }
}

/// The plugin's standard input: its configuration with the list's `name` and `cniVersion`
/// and, when given, `prevResult`.
fn plugin_stdin(list: &NetworkConfigList, plugin: &Value, prev: Option<&Value>) -> Vec<u8> {
    let mut conf = plugin.clone();
    if let Some(obj) = conf.as_object_mut() {
        obj.insert("name".into(), Value::String(list.name.clone()));
        obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        match prev {
            Some(p) => {
                obj.insert("prevResult".into(), p.clone());
            }
            None => {
                obj.remove("prevResult");
            }
        }
    }
    conf.to_string().into_bytes()
}

/// The error a plugin reported: its error JSON on stdout, else its stderr.
fn plugin_error(
    ty: &str,
    command: Command,
    status: std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> CniError {
    #[derive(Deserialize)]
    struct ErrorJson {
        code: u64,
        msg: String,
        #[serde(default)]
        details: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorJson>(stdout) {
        return CniError::Plugin {
            plugin: ty.to_owned(),
            command: command.as_str(),
            code: e.code,
            msg: e.msg,
            details: e.details,
        };
    }
    let text = if stderr.iter().all(u8::is_ascii_whitespace) {
        stdout
    } else {
        stderr
    };
    CniError::Plugin {
        plugin: ty.to_owned(),
        command: command.as_str(),
        code: 0,
        msg: String::from_utf8_lossy(text).trim().to_owned(),
        details: status.to_string(),
    }
}

/// Spawns `cmd`, retrying a few times on `ETXTBSY` (a plugin executable just written, whose
/// write descriptor a concurrently forked child of this process briefly holds).
async fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Runs one plugin and returns its standard output.
async fn run_plugin(
    list: &NetworkConfigList,
    inv: &Invocation,
    plugin: &Value,
    command: Command,
    prev: Option<&Value>,
) -> Result<Vec<u8>, CniError> {
    let ty = plugin_type(plugin);
    let exe = inv.find(ty)?;
    let exec = |source| CniError::Exec {
        plugin: ty.to_owned(),
        source,
    };
    let cni_path = std::env::join_paths(&inv.bin_dirs).map_err(|e| CniError::Invocation {
        why: format!("plugin directories: {e}"),
    })?;
    let args: Vec<String> = inv.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| OsString::from(DEFAULT_PATH)),
        )
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if !args.is_empty() {
        cmd.env("CNI_ARGS", args.join(";"));
    }
    let mut child = spawn(&mut cmd).await.map_err(exec)?;
    let pid = child.id();
    let input = plugin_stdin(list, plugin, prev);
    let mut stdin = child.stdin.take();
    let run = async {
        let write = async {
            if let Some(mut s) = stdin.take() {
                // A plugin may exit without reading its input: a broken pipe is its
                // exit status's business.
                let _ = s.write_all(&input).await;
                drop(s);
            }
        };
        let ((), out) = tokio::join!(write, child.wait_with_output());
        out
    };
    tokio::pin!(run);
    let Ok(out) = tokio::time::timeout(inv.timeout, &mut run).await else {
        // The child is not reaped yet (its wait is pending), so its ID still names its
        // process group: kill the group, its helpers included.
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        return Err(CniError::Timeout {
            plugin: ty.to_owned(),
            after: inv.timeout,
        });
    };
    let out = out.map_err(exec)?;
    if !out.status.success() {
        return Err(plugin_error(
            ty,
            command,
            out.status,
            &out.stdout,
            &out.stderr,
        ));
    }
    Ok(out.stdout)
}

/// Runs `ADD` through the list's plugins in order and returns the last one's result.
///
/// Each plugin gets its configuration with the list's `name` and `cniVersion` injected and
/// the previous plugin's result as `prevResult`; the environment is cleared except `PATH`
/// and the `CNI_*` variables. Each plugin run is bounded by `inv.timeout` (the plugin and
/// its process group are killed on expiry).
///
/// On failure this does not roll back: the plugins that succeeded keep what they made
/// (veths, IP leases). The caller must run [`del`] (with no previous result, or the one it
/// has) to release them, as the CNI specification asks of runtimes.
pub async fn add(list: &NetworkConfigList, inv: &Invocation) -> Result<CniResult, CniError> {
    inv.validate()?;
    let mut previous: Option<CniResult> = None;
    for plugin in &list.plugins {
        let ty = plugin_type(plugin);
        let out = run_plugin(
            list,
            inv,
            plugin,
            Command::Add,
            previous.as_ref().map(|r| &r.raw),
        )
        .await?;
        let raw: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
            plugin: ty.to_owned(),
            why: format!("not JSON: {e}"),
        })?;
        let result = CniResult::try_from(raw).map_err(|why| CniError::BadResult {
            plugin: ty.to_owned(),
            why,
        })?;
        previous = Some(result);
    }
    previous.ok_or_else(|| CniError::Config {
        path: None,
        why: "no plugins".into(),
    })
}

/// Runs `DEL` through the list's plugins in reverse order.
///
/// `prev_result` (the cached `ADD` result) is given to the plugins as `prevResult` from
/// cniVersion 0.4.0 on. The namespace need not exist any more: `CNI_NETNS` is set to its
/// path anyway and the plugins release what they hold outside it (IP leases). `DEL` is
/// idempotent for well-behaved plugins.
///
/// A failing plugin does not stop the others (so one broken plugin does not keep the rest
/// from releasing their resources): all run, and the first error is returned.
pub async fn del(
    list: &NetworkConfigList,
    inv: &Invocation,
    prev_result: Option<&CniResult>,
) -> Result<(), CniError> {
    inv.validate()?;
    let prev = prev_result
        .filter(|_| list.del_takes_prev_result())
        .map(|r| &r.raw);
    let mut first = None;
    for plugin in list.plugins.iter().rev() {
        if let Err(e) = run_plugin(list, inv, plugin, Command::Del, prev).await {
            tracing::warn!(error = %e, "CNI DEL failed; continuing with the other plugins");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The plugin types of a list, for messages and checks.
pub fn plugin_types(list: &NetworkConfigList) -> Vec<&str> {
    list.plugins.iter().map(plugin_type).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    /// A tempdir of fake plugins, each a `/bin/sh` script logging its command, input and
    /// environment before running its body.
    struct Fakes {
        dir: tempfile::TempDir,
    }

    impl Fakes {
        fn new() -> Self {
            let f = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir(f.bin()).unwrap();
            fs::create_dir(f.log()).unwrap();
            f
        }

        fn bin(&self) -> PathBuf {
            self.dir.path().join("bin")
        }

        fn log(&self) -> PathBuf {
            self.dir.path().join("log")
        }

        fn plugin(&self, name: &str, body: &str) {
            let log = self.log();
            let script = format!(
                "#!/bin/sh\n\
                 d='{}'\n\
                 cat > \"$d/{name}.$CNI_COMMAND.stdin\"\n\
                 echo \"{name} $CNI_COMMAND\" >> \"$d/order\"\n\
                 env > \"$d/{name}.$CNI_COMMAND.env\"\n\
                 {body}\n",
                log.display()
            );
            let path = self.bin().join(name);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }

        /// A plugin printing a 1.0.0 result with one interface and address `ip`.
        fn ok_plugin(&self, name: &str, ip: &str) {
            self.plugin(name, &format!("printf '%s' '{}'", result_json(name, ip)));
        }

        fn inv(&self) -> Invocation {
            Invocation {
                container_id: "ctr1".into(),
                netns: self.dir.path().join("netns"),
                ifname: "eth0".into(),
                bin_dirs: vec![self.dir.path().join("empty"), self.bin()],
                timeout: Duration::from_secs(10),
                args: vec![
                    ("IgnoreUnknown".into(), "1".into()),
                    ("K8S_POD_NAME".into(), "p".into()),
                ],
            }
        }

        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.log().join(name)).unwrap_or_default()
        }

        fn stdin(&self, name: &str) -> Value {
            serde_json::from_str(&self.read(name)).unwrap()
        }
    }

    fn result_json(name: &str, ip: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"{name}"}},{{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/ns"}}],"ips":[{{"address":"{ip}","gateway":"10.0.0.1","interface":1}}],"routes":[{{"dst":"0.0.0.0/0"}}],"dns":{{"nameservers":["10.0.0.53"],"search":["example"]}}}}"#
        )
    }

    fn list(version: &str, types: &[&str]) -> NetworkConfigList {
        let plugins: Vec<Value> = types
            .iter()
            .map(|t| serde_json::json!({"type": t, "opt": t}))
            .collect();
        NetworkConfigList::from_json(
            &serde_json::json!({"cniVersion": version, "name": "net1", "plugins": plugins})
                .to_string(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn add_chains_and_del_reverses() {
        let f = Fakes::new();
        f.ok_plugin("one", "10.0.0.2/24");
        f.ok_plugin("two", "10.0.0.3/24");
        let l = list("1.0.0", &["one", "two"]);
        let inv = f.inv();
        let result = add(&l, &inv).await.unwrap();
        assert_eq!(f.read("order"), "one ADD\ntwo ADD\n");
        // The result is the last plugin's.
        assert_eq!(result.interfaces[0].name, "two");
        assert_eq!(result.ips[0].address, "10.0.0.3".parse::<IpAddr>().unwrap());
        // Configurations: name and version injected, prevResult chained.
        let one_in = f.stdin("one.ADD.stdin");
        assert_eq!(one_in["name"], "net1");
        assert_eq!(one_in["cniVersion"], "1.0.0");
        assert_eq!(one_in["type"], "one");
        assert_eq!(one_in["opt"], "one");
        assert!(one_in.get("prevResult").is_none());
        let two_in = f.stdin("two.ADD.stdin");
        let one_result: Value = serde_json::from_str(&result_json("one", "10.0.0.2/24")).unwrap();
        assert_eq!(two_in["prevResult"], one_result);
        // Environment: the CNI variables and PATH, nothing else of ours.
        let env = f.read("one.ADD.env");
        for want in [
            "CNI_COMMAND=ADD".to_owned(),
            "CNI_CONTAINERID=ctr1".to_owned(),
            format!("CNI_NETNS={}", inv.netns.display()),
            "CNI_IFNAME=eth0".to_owned(),
            format!(
                "CNI_PATH={}:{}",
                inv.bin_dirs[0].display(),
                inv.bin_dirs[1].display()
            ),
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p".to_owned(),
        ] {
            assert!(env.lines().any(|l| l == want), "{want} missing from\n{env}");
        }
        for line in env.lines() {
            let key = line.split('=').next().unwrap();
            assert!(
                key.starts_with("CNI_") || ["PATH", "PWD", "SHLVL", "_"].contains(&key),
                "unexpected variable {line}"
            );
        }
        // DEL: reverse order, the cached result as prevResult.
        del(&l, &inv, Some(&result)).await.unwrap();
        assert_eq!(f.read("order"), "one ADD\ntwo ADD\ntwo DEL\none DEL\n");
        assert_eq!(f.stdin("one.DEL.stdin")["prevResult"], result.raw);
        assert_eq!(f.stdin("two.DEL.stdin")["prevResult"], result.raw);
        assert!(f
            .read("one.DEL.env")
            .lines()
            .any(|l| l == "CNI_COMMAND=DEL"));
        // Before 0.4.0, DEL gets no prevResult.
        let old = list("0.3.1", &["one"]);
        del(&old, &inv, Some(&result)).await.unwrap();
        let one_del = f.stdin("one.DEL.stdin");
        assert!(one_del.get("prevResult").is_none());
        assert_eq!(one_del["cniVersion"], "0.3.1");
        // No CNI_ARGS when there are none.
        let mut bare = inv.clone();
        bare.args.clear();
        del(&l, &bare, None).await.unwrap();
        assert!(!f.read("one.DEL.env").contains("CNI_ARGS"));
        assert!(f.stdin("one.DEL.stdin").get("prevResult").is_none());
    }

    #[tokio::test]
    async fn plugin_errors_are_typed() {
        let f = Fakes::new();
        f.ok_plugin("one", "10.0.0.2/24");
        f.ok_plugin("two", "10.0.0.3/24");
        f.plugin(
            "bad",
            r#"printf '%s' '{"cniVersion":"1.0.0","code":11,"msg":"boom","details":"why"}'; exit 1"#,
        );
        f.plugin("mute", "echo 'it broke' >&2; exit 2");
        f.plugin("garbage", "echo 'not json'");
        f.plugin(
            "v020",
            r#"printf '%s' '{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}'"#,
        );
        let inv = f.inv();

        // ADD stops at the failing plugin; the error names it and carries its JSON.
        let err = add(&list("1.0.0", &["one", "bad", "two"]), &inv)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"CNI plugin "bad" failed ADD (code 11): boom: why"#
        );
        assert!(matches!(
            &err,
            CniError::Plugin { plugin, command: "ADD", code: 11, msg, details }
                if plugin == "bad" && msg == "boom" && details == "why"
        ));
        assert_eq!(f.read("order"), "one ADD\nbad ADD\n");

        // No error JSON: stderr is the message.
        let err = add(&list("1.0.0", &["mute"]), &inv).await.unwrap_err();
        assert!(
            matches!(&err, CniError::Plugin { plugin, code: 0, msg, .. }
                if plugin == "mute" && msg == "it broke"),
            "{err:?}"
        );
        // Success with a bad result.
        let err = add(&list("1.0.0", &["garbage"]), &inv).await.unwrap_err();
        assert!(matches!(&err, CniError::BadResult { plugin, .. } if plugin == "garbage"));
        let err = add(&list("1.0.0", &["v020"]), &inv).await.unwrap_err();
        assert!(
            matches!(&err, CniError::BadResult { plugin, why } if plugin == "v020" && why.contains("0.2.0")),
            "{err:?}"
        );

        // A missing plugin.
        let err = add(&list("1.0.0", &["nope"]), &inv).await.unwrap_err();
        assert!(
            matches!(&err, CniError::NotFound { plugin, dirs } if plugin == "nope" && dirs == &inv.bin_dirs)
        );
        assert!(err.to_string().contains("\"nope\" not found"));

        // DEL goes on past a failure and returns the first error.
        fs::remove_file(f.log().join("order")).unwrap();
        let err = del(&list("1.0.0", &["one", "bad", "mute", "two"]), &inv, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CniError::Plugin { plugin, command: "DEL", .. } if plugin == "mute")
        );
        assert_eq!(f.read("order"), "two DEL\nmute DEL\nbad DEL\none DEL\n");

        // Bad invocations.
        for change in [
            (|i: &mut Invocation| i.container_id.clear()) as fn(&mut Invocation),
            |i| i.container_id = "a/b".into(),
            |i| i.netns = "relative/ns".into(),
            |i| i.ifname = "a/b".into(),
            |i| i.ifname = "x".repeat(16),
            |i| i.bin_dirs.clear(),
            |i| i.timeout = Duration::ZERO,
            |i| i.args.push(("A;B".into(), "1".into())),
        ] {
            let mut bad = inv.clone();
            change(&mut bad);
            let err = add(&list("1.0.0", &["one"]), &bad).await.unwrap_err();
            assert!(matches!(err, CniError::Invocation { .. }), "{err:?}");
        }
    }

    #[tokio::test]
    async fn slow_plugin_times_out() {
        let f = Fakes::new();
        f.plugin("slow", "sleep 30 & wait");
        let mut inv = f.inv();
        inv.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = add(&list("1.0.0", &["slow"]), &inv).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, CniError::Timeout { plugin, after } if plugin == "slow" && *after == inv.timeout),
            "{err:?}"
        );
        assert!(err.to_string().contains("did not finish within 300ms"));
    }

    #[test]
    fn config_lists_are_validated() {
        let good = r#"{"cniVersion":"0.4.0","name":"n","disableCheck":true,
            "plugins":[{"type":"bridge","bridge":"b0"},{"type":"portmap"}]}"#;
        let l = NetworkConfigList::from_json(good).unwrap();
        assert_eq!(l.name, "n");
        assert_eq!(l.cni_version, "0.4.0");
        assert_eq!(plugin_types(&l), ["bridge", "portmap"]);
        assert!(l.disable_check);
        assert_eq!(NetworkConfigList::from_json(&l.to_json()).unwrap(), l);
        for (bad, expect) in [
            ("nope", "not JSON"),
            ("[]", "not a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}"#,
                "`name`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"","plugins":[{"type":"x"}]}"#,
                "`name`",
            ),
            (r#"{"name":"n","plugins":[{"type":"x"}]}"#, "`cniVersion`"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","plugins":[{"type":"x"}]}"#,
                "unsupported",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, "`plugins`"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "`plugins`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[3]}"#,
                "not a JSON object",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{}]}"#,
                "no string `type`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../x"}]}"#,
                "plain",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":".."}]}"#,
                "plain",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":""}]}"#,
                "plain",
            ),
        ] {
            let err = NetworkConfigList::from_json(bad).unwrap_err();
            assert!(
                matches!(&err, CniError::Config { path: None, why } if why.contains(expect)),
                "{bad}: {err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.conflist");
        let err = NetworkConfigList::load(&missing).unwrap_err();
        assert!(matches!(&err, CniError::Config { path: Some(p), .. } if p == &missing));
        let file = dir.path().join("bad.conflist");
        fs::write(&file, r#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#).unwrap();
        let err = NetworkConfigList::load(&file).unwrap_err();
        assert!(err.to_string().contains("bad.conflist"), "{err}");
        fs::write(&file, good).unwrap();
        assert_eq!(NetworkConfigList::load(&file).unwrap(), l);
    }

    #[test]
    fn results_parse_and_persist() {
        let v031 = r#"{"cniVersion":"0.3.1",
            "interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},
                          {"name":"veth1"},
                          {"name":"eth0","mac":"02:00:00:00:00:02","sandbox":"/var/run/netns/x"}],
            "ips":[{"version":"4","address":"10.1.0.5/16","gateway":"10.1.0.1","interface":2},
                   {"version":"6","address":"fd00::5/64","interface":2},
                   {"version":"4","address":"10.9.0.1/24","interface":0}],
            "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.2.0.0/16","gw":"10.1.0.254"}],
            "dns":{"nameservers":["10.1.0.53"],"domain":"d","search":["s"],"options":["ndots:2"]}}"#;
        let r = CniResult::from_json(v031).unwrap();
        assert_eq!(r.cni_version, "0.3.1");
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.interfaces[2].sandbox.as_deref(), Some("/var/run/netns/x"));
        assert_eq!(r.ips[1].address, "fd00::5".parse::<IpAddr>().unwrap());
        assert_eq!(r.ips[1].prefix, 64);
        assert_eq!(r.routes[1].gw, Some("10.1.0.254".parse().unwrap()));
        assert_eq!(r.routes[0].prefix, 0);
        assert_eq!(r.dns.options, ["ndots:2"]);
        assert_eq!(r.dns.domain.as_deref(), Some("d"));
        let ips: Vec<String> = r
            .container_ips("eth0")
            .iter()
            .map(|ip| format!("{}/{}", ip.address, ip.prefix))
            .collect();
        assert_eq!(ips, ["10.1.0.5/16", "fd00::5/64"]);
        assert!(r.container_ips("cni0").is_empty(), "not in the sandbox");
        // Persisted and read back.
        assert_eq!(CniResult::from_json(&r.to_json()).unwrap(), r);
        let via_serde: CniResult =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(via_serde, r);
        // No interface indexes: all IPs.
        let plain =
            CniResult::from_json(r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}"#)
                .unwrap();
        assert_eq!(plain.container_ips("eth0").len(), 1);
        assert!(plain.interfaces.is_empty() && plain.routes.is_empty());
        assert_eq!(plain.dns, CniDns::default());
        // Bad results.
        for bad in [
            r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#,
            r#"{"ips":[]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/33"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"x/3"}]}"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24","interface":0}]}"#,
            r#"{"cniVersion":"1.0.0","routes":[{"dst":"0.0.0.0/0","gw":"nope"}]}"#,
            r#"{"cniVersion":"1.0.0","dns":{"nameservers":["nope"]}}"#,
            "[",
        ] {
            assert!(
                matches!(
                    CniResult::from_json(bad),
                    Err(CniError::InvalidResult { .. })
                ),
                "{bad}"
            );
        }
    }
}

/// The real plugins (`/usr/lib/cni`, Debian's `containernetworking-plugins`), run as root
/// inside network namespaces the tests create: namespace "host" (where the bridge is made)
/// and namespace "ctr" (the container side). Skipped when the plugins are not installed.
#[cfg(test)]
mod real_tests {
    use super::*;
    use crate::net::netns::{self, tests::NsGuard};
    use crate::net::tap;
    use std::future::Future;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;

    const PLUGINS: &str = "/usr/lib/cni";

    fn have_plugins() -> bool {
        if !netns::tests::privileged() {
            return false;
        }
        let ok = ["bridge", "host-local"]
            .iter()
            .all(|p| Path::new(PLUGINS).join(p).exists());
        assert!(
            ok,
            "no CNI plugins in {PLUGINS}: run scripts/provision (Debian's containernetworking-plugins)"
        );
        ok
    }

    /// Runs an async operation on a thread inside the namespace at `ns`.
    fn in_ns<T, Fut>(ns: &Path, op: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T>,
    {
        netns::run_in(ns, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(op())
        })
        .unwrap()
    }

    fn conflist(name: &str, bridge: &str, data: &Path, range: &Value) -> NetworkConfigList {
        NetworkConfigList::from_json(
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": name,
                "plugins": [{
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": data,
                        "ranges": [[range]],
                    },
                }],
            })
            .to_string(),
        )
        .unwrap()
    }

    fn invocation(ctr: &Path) -> Invocation {
        Invocation {
            container_id: "sbtest-ctr".into(),
            netns: ctr.to_path_buf(),
            ifname: "eth0".into(),
            bin_dirs: vec![PathBuf::from(PLUGINS)],
            timeout: Duration::from_secs(30),
            args: Vec::new(),
        }
    }

    /// A TCP exchange from `host` to a listener in `ctr` at `ip`: a few bytes each way,
    /// all bounded by timeouts.
    fn tcp_exchange(host: &Path, ctr: &Path, ip: Ipv4Addr) {
        let addr = SocketAddr::from((ip, 7777));
        let (bound_tx, bound_rx) = mpsc::channel();
        let ctr = ctr.to_path_buf();
        let server = std::thread::spawn(move || {
            netns::run_in(&ctr, move || -> io::Result<Vec<u8>> {
                let listener = TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                let _ = bound_tx.send(());
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                let (mut conn, _) = loop {
                    match listener.accept() {
                        Ok(c) => break c,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if std::time::Instant::now() > deadline {
                                return Err(io::Error::new(io::ErrorKind::TimedOut, "accept"));
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) => return Err(e),
                    }
                };
                conn.set_nonblocking(false)?;
                conn.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut buf = [0u8; 4];
                conn.read_exact(&mut buf)?;
                conn.write_all(b"pong")?;
                Ok(buf.to_vec())
            })
        });
        bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("listener bound");
        let got = netns::run_in(host, move || -> io::Result<Vec<u8>> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"ping")?;
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf)?;
            Ok(buf.to_vec())
        })
        .unwrap()
        .unwrap();
        assert_eq!(got, b"pong");
        assert_eq!(server.join().unwrap().unwrap().unwrap(), b"ping");
    }

    /// The IPv4 header checksum.
    fn ip_checksum(header: &[u8]) -> u16 {
        let mut sum: u32 = header
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).unwrap()
    }

    /// An Ethernet frame holding an IPv4 UDP datagram (no UDP checksum).
    fn udp_frame(
        (src_mac, dst_mac): ([u8; 6], [u8; 6]),
        (src, dst): (Ipv4Addr, Ipv4Addr),
        (sport, dport): (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let udp_len = u16::try_from(8 + payload.len()).unwrap();
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
        ip.extend_from_slice(&src.octets());
        ip.extend_from_slice(&dst.octets());
        let sum = ip_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&src_mac);
        frame.extend_from_slice(&[0x08, 0x00]);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&sport.to_be_bytes());
        frame.extend_from_slice(&dport.to_be_bytes());
        frame.extend_from_slice(&udp_len.to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(payload);
        frame
    }

    /// Frames both ways through the TAP, as the guest would see them: a UDP datagram sent
    /// in `host` to `ip` comes out of the TAP descriptor (an ARP request for `ip` on the
    /// way is answered through the TAP), and a datagram written to the TAP reaches a
    /// socket in `host`. Bounded: a few frames, 5 s deadlines.
    fn tap_traffic(host: &Path, dev: &tap::TapDevice, ip: Ipv4Addr) {
        use std::net::UdpSocket;
        use std::os::fd::AsFd;
        let gateway = Ipv4Addr::new(10, 231, 0, 1);
        // A socket made in `host` stays there.
        let sock = netns::run_in(host, move || UdpSocket::bind((gateway, 0)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let port = sock.local_addr().unwrap().port();
        let mut tapf = std::fs::File::from(dev.fd.try_clone().unwrap());
        let flags = nix::fcntl::fcntl(dev.fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(dev.fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();

        sock.send_to(b"sbtest-down", (ip, 9999)).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        let gateway_mac = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no frame from the host side"
            );
            let n = match tapf.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => panic!("reading the TAP: {e}"),
            };
            let frame = &buf[..n];
            if n < 14 {
                continue;
            }
            let src: [u8; 6] = frame[6..12].try_into().unwrap();
            // ARP request for `ip`: answer as the guest would.
            if frame[12..14] == [0x08, 0x06] && n >= 42 && frame[20..22] == [0, 1] {
                if frame[38..42] == ip.octets() {
                    let mut reply = Vec::new();
                    reply.extend_from_slice(&src);
                    reply.extend_from_slice(&dev.mac);
                    reply.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
                    reply.extend_from_slice(&dev.mac);
                    reply.extend_from_slice(&ip.octets());
                    reply.extend_from_slice(&frame[22..32]);
                    tapf.write_all(&reply).unwrap();
                }
                continue;
            }
            if frame.windows(11).any(|w| w == b"sbtest-down") {
                assert_eq!(frame[0..6], dev.mac, "sent to the veth's MAC");
                break src;
            }
        };

        let up = udp_frame(
            (dev.mac, gateway_mac),
            (ip, gateway),
            (9999, port),
            b"sbtest-up",
        );
        tapf.write_all(&up).unwrap();
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"sbtest-up");
        assert_eq!(from, SocketAddr::from((ip, 9999)));
    }

    #[test]
    fn bridge_add_tap_del() {
        if !have_plugins() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = NsGuard::new(dir.path().join("host"));
        let ctr = NsGuard::new(dir.path().join("ctr"));
        let data = dir.path().join("ipam");
        let list = conflist(
            "sbtest",
            "sbtest0",
            &data,
            &serde_json::json!({"subnet": "10.231.0.0/24"}),
        );
        let inv = invocation(&ctr.0);

        let (l, i) = (list.clone(), inv.clone());
        let result = in_ns(&host.0, move || async move { add(&l, &i).await }).unwrap();
        // An address in the subnet on the container's eth0, leased in the data dir.
        let ips = result.container_ips("eth0");
        assert_eq!(ips.len(), 1, "{result:?}");
        let IpAddr::V4(ip) = ips[0].address else {
            panic!("not IPv4: {result:?}")
        };
        assert_eq!(ip.octets()[..3], [10, 231, 0]);
        assert_eq!(ips[0].prefix, 24);
        let lease = data.join("sbtest").join(ip.to_string());
        assert!(lease.exists(), "{} missing", lease.display());
        assert!(tap::link_exists(&ctr.0, "eth0").unwrap());
        // The bridge is in the test's "host" namespace, not the machine's.
        assert!(tap::link_exists(&host.0, "sbtest0").unwrap());
        assert!(!Path::new("/sys/class/net/sbtest0").exists());
        // The cached result survives a round trip.
        let cached = CniResult::from_json(&result.to_json()).unwrap();
        assert_eq!(cached, result);

        // Traffic across the bridge, before the TAP takes the veth's frames.
        tcp_exchange(&host.0, &ctr.0, ip);

        // The TAP: the veth's MAC, filters both ways, gone with its descriptor.
        let dev = tap::attach(&ctr.0, "eth0", "tap0").unwrap();
        let eth0 = result
            .interfaces
            .iter()
            .find(|i| i.name == "eth0" && i.sandbox.is_some())
            .unwrap();
        assert_eq!(
            Some(tap::format_mac(&dev.mac)),
            eth0.mac.as_ref().map(|m| m.to_lowercase())
        );
        let (tap_index, to_veth) = tap::redirect_targets(&ctr.0, "tap0").unwrap();
        let (veth_index, to_tap) = tap::redirect_targets(&ctr.0, "eth0").unwrap();
        assert_eq!(to_veth, [veth_index]);
        assert_eq!(to_tap, [tap_index]);
        tap_traffic(&host.0, &dev, ip);
        drop(dev);
        assert!(!tap::link_exists(&ctr.0, "tap0").unwrap());
        tap::remove(&ctr.0, "tap0").unwrap();

        // DEL releases the lease and the veth; it is idempotent.
        let (l, i, r) = (list.clone(), inv.clone(), cached.clone());
        in_ns(&host.0, move || async move { del(&l, &i, Some(&r)).await }).unwrap();
        assert!(!lease.exists());
        assert!(!tap::link_exists(&ctr.0, "eth0").unwrap());
        let (l, i, r) = (list.clone(), inv.clone(), cached.clone());
        in_ns(&host.0, move || async move { del(&l, &i, Some(&r)).await }).unwrap();
        // And with the namespace gone.
        netns::remove(&ctr.0).unwrap();
        let (l, i) = (list.clone(), inv.clone());
        in_ns(
            &host.0,
            move || async move { del(&l, &i, Some(&cached)).await },
        )
        .unwrap();
        let (l, i) = (list, inv);
        in_ns(&host.0, move || async move { del(&l, &i, None).await }).unwrap();
    }

    #[test]
    fn failing_real_config_is_a_plugin_error() {
        if !have_plugins() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let host = NsGuard::new(dir.path().join("host"));
        let ctr = NsGuard::new(dir.path().join("ctr"));
        let data = dir.path().join("ipam");
        let list = conflist(
            "sbtestbad",
            "sbtest1",
            &data,
            &serde_json::json!({"subnet": "10.231.1.0/24", "rangeStart": "10.232.0.5"}),
        );
        let inv = invocation(&ctr.0);
        let (l, i) = (list.clone(), inv.clone());
        let err = in_ns(&host.0, move || async move { add(&l, &i).await }).unwrap_err();
        assert!(
            matches!(&err, CniError::Plugin { plugin, command: "ADD", msg, .. }
                if plugin == "bridge" && msg.contains("10.232.0.5")),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("CNI plugin \"bridge\" failed ADD (code "),
            "{err}"
        );
        // The caller's cleanup after a failed ADD.
        let _ = in_ns(&host.0, move || async move { del(&list, &inv, None).await });
    }
}
