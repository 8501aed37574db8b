//! The OCI runtime spec (`config.json` of a bundle, and an exec's process) as far as a
//! container in a spinbox VM uses it.
//!
//! Used: `process` (`args`, `env`, `cwd`, `user.uid`/`gid`/`additionalGids`, `rlimits`,
//! `terminal`), `root.path`, `hostname`, and the path of a `network` namespace in
//! `linux.namespaces` (the shim's CNI plugins run with it). Other namespaces, cgroups,
//! seccomp and capabilities are the VM's business: the guest runs the container in its own
//! namespaces, and the VM is the isolation boundary.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use spinbox::task::{ProcessSpec, Rlimit};

#[derive(Debug, Deserialize)]
struct Spec {
    process: Option<Process>,
    root: Option<Root>,
    #[serde(default)]
    hostname: String,
    linux: Option<Linux>,
}

#[derive(Debug, Deserialize)]
struct Linux {
    #[serde(default)]
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
struct Namespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct Root {
    path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Process {
    #[serde(default)]
    terminal: bool,
    #[serde(default)]
    user: User,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    rlimits: Vec<OciRlimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct OciRlimit {
    #[serde(rename = "type")]
    kind: String,
    hard: u64,
    soft: u64,
}

/// What the shim needs from a bundle's `config.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The first process.
    pub process: ProcessSpec,
    /// `root.path`, made absolute against the bundle.
    pub root: PathBuf,
    /// The hostname, if the spec sets one.
    pub hostname: Option<String>,
    /// The path of the `network` namespace the spec names, if it names one with a path.
    pub netns: Option<PathBuf>,
}

/// Why a spec cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// The JSON does not parse as a spec.
    #[error("invalid OCI spec: {0}")]
    Parse(String),
    /// The spec has no process.
    #[error("the OCI spec has no process")]
    NoProcess,
    /// The spec has no root.
    #[error("the OCI spec has no root")]
    NoRoot,
    /// The network namespace path is not absolute.
    #[error("the OCI spec's network namespace path {0:?} is not absolute")]
    RelativeNetns(PathBuf),
    /// A terminal was asked for.
    #[error("terminals are not supported by spinbox (process.terminal is true)")]
    Terminal,
}

fn process(p: Process) -> Result<ProcessSpec, SpecError> {
    if p.terminal {
        return Err(SpecError::Terminal);
    }
    let mut spec = ProcessSpec::new(p.args);
    if !p.env.is_empty() {
        spec.env = p.env;
    }
    if let Some(cwd) = p.cwd {
        spec.cwd = cwd;
    }
    spec.uid = p.user.uid;
    spec.gid = p.user.gid;
    spec.additional_gids = p.user.additional_gids;
    spec.rlimits = p
        .rlimits
        .into_iter()
        .map(|r| Rlimit {
            resource: r.kind,
            soft: r.soft,
            hard: r.hard,
        })
        .collect();
    Ok(spec)
}

/// Parses a bundle's `config.json` text; `bundle` is where relative root paths start.
pub fn parse_bundle(json: &str, bundle: &Path) -> Result<Bundle, SpecError> {
    let spec: Spec = serde_json::from_str(json).map_err(|e| SpecError::Parse(e.to_string()))?;
    let root = spec.root.ok_or(SpecError::NoRoot)?.path;
    let netns = spec
        .linux
        .into_iter()
        .flat_map(|l| l.namespaces)
        .find(|n| n.kind == "network")
        .and_then(|n| n.path)
        .filter(|p| !p.as_os_str().is_empty());
    if let Some(path) = netns.as_ref().filter(|p| !p.is_absolute()) {
        return Err(SpecError::RelativeNetns(path.clone()));
    }
    Ok(Bundle {
        netns,
        process: process(spec.process.ok_or(SpecError::NoProcess)?)?,
        root: if root.is_absolute() {
            root
        } else {
            bundle.join(root)
        },
        hostname: Some(spec.hostname).filter(|h| !h.is_empty()),
    })
}

/// Parses an exec's process (the JSON of an OCI `process` object).
pub fn parse_process(json: &[u8]) -> Result<ProcessSpec, SpecError> {
    let p: Process = serde_json::from_slice(json).map_err(|e| SpecError::Parse(e.to_string()))?;
    process(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ctr_spec_maps_onto_the_container() {
        let json = r#"{
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 11]},
                "args": ["/bin/sh", "-c", "echo hi"],
                "env": ["PATH=/bin", "A=b"],
                "cwd": "/tmp",
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "capabilities": {"bounding": ["CAP_CHOWN"]}
            },
            "root": {"path": "rootfs"},
            "hostname": "web",
            "linux": {"namespaces": [{"type": "pid"}]}
        }"#;
        let b = parse_bundle(json, Path::new("/b")).expect("valid");
        assert_eq!(b.root, Path::new("/b/rootfs"));
        assert_eq!(b.hostname.as_deref(), Some("web"));
        assert_eq!(b.process.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(b.process.env, ["PATH=/bin", "A=b"]);
        assert_eq!(b.process.cwd, Path::new("/tmp"));
        assert_eq!((b.process.uid, b.process.gid), (1000, 100));
        assert_eq!(b.process.additional_gids, [10, 11]);
        assert_eq!(
            b.process.rlimits,
            [Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 512,
                hard: 1024
            }]
        );
    }

    #[test]
    fn an_absolute_root_and_no_env_keep_their_defaults() {
        let json = r#"{"process": {"args": ["ls"]}, "root": {"path": "/srv/root"}}"#;
        let b = parse_bundle(json, Path::new("/b")).expect("valid");
        assert_eq!(b.root, Path::new("/srv/root"));
        assert_eq!(b.hostname, None);
        assert_eq!(b.netns, None);
        assert_eq!(b.process, ProcessSpec::new(["ls"]));
    }

    #[test]
    fn the_network_namespace_path_is_passed_through() {
        let json = r#"{"process": {"args": ["ls"]}, "root": {"path": "/r"},
            "linux": {"namespaces": [{"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-1234"}]}}"#;
        let b = parse_bundle(json, Path::new("/b")).expect("valid");
        assert_eq!(
            b.netns.as_deref(),
            Some(Path::new("/var/run/netns/cni-1234"))
        );
        // A network namespace without a path: the shim makes one.
        let json = r#"{"process": {"args": ["ls"]}, "root": {"path": "/r"},
            "linux": {"namespaces": [{"type": "network"}]}}"#;
        assert_eq!(parse_bundle(json, Path::new("/b")).unwrap().netns, None);
        let json = r#"{"process": {"args": ["ls"]}, "root": {"path": "/r"},
            "linux": {"namespaces": [{"type": "network", "path": "netns/x"}]}}"#;
        assert_eq!(
            parse_bundle(json, Path::new("/b")),
            Err(SpecError::RelativeNetns("netns/x".into()))
        );
    }

    #[test]
    fn unusable_specs_are_refused() {
        let p = Path::new("/b");
        assert_eq!(
            parse_bundle(r#"{"root": {"path": "/r"}}"#, p),
            Err(SpecError::NoProcess)
        );
        assert_eq!(
            parse_bundle(r#"{"process": {"args": ["x"]}}"#, p),
            Err(SpecError::NoRoot)
        );
        assert_eq!(
            parse_bundle(
                r#"{"process": {"args": ["x"], "terminal": true}, "root": {"path": "/r"}}"#,
                p
            ),
            Err(SpecError::Terminal)
        );
        assert!(matches!(parse_bundle("{", p), Err(SpecError::Parse(_))));
        assert!(matches!(
            parse_process(br#"{"args": "not a list"}"#),
            Err(SpecError::Parse(_))
        ));
        assert_eq!(
            parse_process(br#"{"args": ["sh"], "terminal": true}"#),
            Err(SpecError::Terminal)
        );
    }
}
