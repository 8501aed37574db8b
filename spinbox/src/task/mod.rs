//! Containers in the VM, host side (SPEC §9): what to run ([`ContainerSpec`],
//! [`ProcessSpec`]), the agent's `Task` service ([`TaskClient`]) and the stdio streams
//! ([`stdio`]).
//!
//! ```text
//!  host                                         guest agent
//!  TaskClient ── ttrpc, vsock port 1024 ───────▶ Task service ─ container runtime
//!  stdio::Forwarders                              (namespaces, pivot_root, overlay)
//!    stdin  ── vsock stream, port 1026 ────────▶ process's stdin pipe
//!    stdout ◀─ vsock stream, port 1026 ───────── process's stdout pipe
//!    stderr ◀─ vsock stream, port 1026 ───────── process's stderr pipe
//! ```
//!
//! An exit is never reported before the output: the agent answers `Wait` only once every
//! attached output stream has carried its last byte and been closed, and the host's
//! [`stdio::Forwarders::outputs_done`] waits for its own copies to reach end-of-file.

mod client;
pub mod stdio;

use std::path::PathBuf;

pub use client::{ProcessState, TaskClient, TaskError};
use spinbox_protocol::agent;

/// The most bytes of arguments plus environment a process may be given (the guest
/// kernel's `execve` limit is larger; this keeps requests well inside one ttrpc message).
pub const MAX_ARGS_ENV_BYTES: usize = 1 << 20;

/// A process to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program and its arguments; `args[0]` is looked up in `PATH` unless it holds `/`.
    pub args: Vec<String>,
    /// The environment, `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// The working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
    /// Resource limits set before the program starts.
    pub rlimits: Vec<Rlimit>,
}

/// A resource limit (`setrlimit`) for a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource as the OCI spec names it: `RLIMIT_NOFILE`, `RLIMIT_NPROC`, … (the
    /// agent refuses a name it does not know).
    pub resource: String,
    /// The soft limit.
    pub soft: u64,
    /// The hard limit (at least `soft`).
    pub hard: u64,
}

/// The `PATH` a process gets when its environment names none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl ProcessSpec {
    /// `args` as root in `/`, with `PATH` set to [`DEFAULT_PATH`].
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: PathBuf::from("/"),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            rlimits: Vec::new(),
        }
    }

    /// Checks what can be checked on the host, so a bad request fails before a VM boots.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.args.first().is_none_or(String::is_empty) {
            return Err(SpecError::EmptyArgs);
        }
        let mut total = 0usize;
        for (i, arg) in self.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(SpecError::Nul(format!("args[{i}]")));
            }
            total += arg.len() + 1;
        }
        for entry in &self.env {
            if entry.contains('\0') {
                return Err(SpecError::Nul("env".into()));
            }
            match entry.split_once('=') {
                Some((key, _)) if !key.is_empty() => {}
                _ => return Err(SpecError::BadEnv(entry.clone())),
            }
            total += entry.len() + 1;
        }
        if total > MAX_ARGS_ENV_BYTES {
            return Err(SpecError::TooLarge(total));
        }
        if !self.cwd.is_absolute() {
            return Err(SpecError::RelativeCwd(self.cwd.clone()));
        }
        for (i, limit) in self.rlimits.iter().enumerate() {
            if !limit.resource.starts_with("RLIMIT_") {
                return Err(SpecError::BadRlimit(limit.resource.clone()));
            }
            if limit.soft > limit.hard {
                return Err(SpecError::RlimitOrder(limit.resource.clone()));
            }
            if self.rlimits[..i]
                .iter()
                .any(|l| l.resource == limit.resource)
            {
                return Err(SpecError::DuplicateRlimit(limit.resource.clone()));
            }
        }
        if self.cwd.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(SpecError::Nul("cwd".into()));
        }
        Ok(())
    }

    pub(crate) fn to_proto(&self) -> agent::Process {
        let mut p = agent::Process::new();
        p.args.clone_from(&self.args);
        p.env.clone_from(&self.env);
        p.cwd = self.cwd.to_string_lossy().into_owned();
        p.uid = self.uid;
        p.gid = self.gid;
        p.additional_gids.clone_from(&self.additional_gids);
        p.rlimits = self
            .rlimits
            .iter()
            .map(|l| {
                let mut r = agent::Rlimit::new();
                r.resource.clone_from(&l.resource);
                r.soft = l.soft;
                r.hard = l.hard;
                r
            })
            .collect();
        p
    }
}

/// A container: a rootfs directory on the host and its first process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// 1–64 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    pub id: String,
    /// The host directory that becomes the container's `/` (absolute).
    pub rootfs: PathBuf,
    /// `true`: the container's writes land in `rootfs`. `false` (the default): `rootfs` is
    /// never modified; the container writes into an overlay that dies with it.
    pub rootfs_owned: bool,
    /// The hostname; the id when `None`.
    pub hostname: Option<String>,
    /// The first process.
    pub process: ProcessSpec,
    /// Host mounts that make up `rootfs` (containerd's snapshot mounts: an overlay, a bind):
    /// mounted on `rootfs`, in order, on the host before it is shared into the VM, and
    /// unmounted in reverse order by `mount_cleanup`. Empty (the default): `rootfs` is used
    /// as it is.
    pub rootfs_mounts: Vec<HostMount>,
    /// The task's network namespace (an OCI `network` namespace path), for a shim with a
    /// network configured: the CNI plugins run with it, and it is left in place at the
    /// end. `None` (the default): the shim makes one and removes it at the end. Ignored
    /// without a configured network.
    pub netns: Option<PathBuf>,
}

/// A mount the shim makes on the host (see [`ContainerSpec::rootfs_mounts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostMount {
    /// The filesystem type (`overlay`, `bind`, …).
    pub fstype: String,
    /// The source (a device, a directory, `overlay`).
    pub source: String,
    /// `mount -o` options: flags (`ro`, `rbind`, `nosuid`, …) and filesystem data
    /// (`lowerdir=…`).
    pub options: Vec<String>,
}

impl ContainerSpec {
    /// A container `id` running `process` from `rootfs`, which it does not modify.
    pub fn new(id: impl Into<String>, rootfs: impl Into<PathBuf>, process: ProcessSpec) -> Self {
        Self {
            id: id.into(),
            rootfs: rootfs.into(),
            rootfs_owned: false,
            hostname: None,
            process,
            rootfs_mounts: Vec::new(),
            netns: None,
        }
    }

    /// Checks the id, hostname, rootfs path and process.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.id) {
            return Err(SpecError::InvalidId(self.id.clone()));
        }
        if let Some(h) = &self.hostname {
            if !valid_name(h) {
                return Err(SpecError::InvalidHostname(h.clone()));
            }
        }
        if !self.rootfs.is_absolute() {
            return Err(SpecError::RelativeRootfs(self.rootfs.clone()));
        }
        for m in &self.rootfs_mounts {
            let all = [&m.fstype, &m.source].into_iter().chain(&m.options);
            if m.fstype.is_empty() || all.into_iter().any(|s| s.contains('\0')) {
                return Err(SpecError::InvalidMount(format!("{m:?}")));
            }
        }
        self.process.validate()
    }
}

/// Whether `s` is a valid container or exec id (and hostname).
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A [`ContainerSpec`] or [`ProcessSpec`] that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Bad container or exec id.
    #[error(
        "invalid id {0:?}: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    InvalidId(String),
    /// Bad hostname.
    #[error(
        "invalid hostname {0:?}: 1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit"
    )]
    InvalidHostname(String),
    /// The rootfs path is relative.
    #[error("the rootfs {} must be an absolute path", .0.display())]
    RelativeRootfs(PathBuf),
    /// A rootfs mount has no type or a NUL byte.
    #[error("invalid rootfs mount {0}: a type is required and no field may hold a NUL")]
    InvalidMount(String),
    /// No program to run.
    #[error("no command: args is empty or args[0] is empty")]
    EmptyArgs,
    /// A NUL byte where the kernel cannot take one.
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// An environment entry is not `KEY=VALUE` with a non-empty key.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// The working directory is relative.
    #[error("the working directory {} must be an absolute path", .0.display())]
    RelativeCwd(PathBuf),
    /// A resource limit name that is not `RLIMIT_*`.
    #[error("unknown resource limit {0:?}: expected an RLIMIT_* name")]
    BadRlimit(String),
    /// A soft limit above its hard limit.
    #[error("resource limit {0}: the soft limit exceeds the hard limit")]
    RlimitOrder(String),
    /// A resource limited twice.
    #[error("resource limit {0} is given twice")]
    DuplicateRlimit(String),
    /// Arguments and environment too large.
    #[error("arguments and environment take {0} bytes, more than {MAX_ARGS_ENV_BYTES}")]
    TooLarge(usize),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            Self::Exited(c) => c,
            Self::Signaled(s) => 128 + s,
        }
    }

    pub(crate) fn from_proto(s: &agent::ExitStatus) -> Self {
        if s.signal == 0 {
            Self::Exited(s.exit_code)
        } else {
            Self::Signaled(s.signal)
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit code {c}"),
            Self::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        let ok = ContainerSpec::new("c1", "/r", ProcessSpec::new(["true"]));
        assert_eq!(ok.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut ContainerSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(
            with(&|s| s.id = "-x".into()),
            SpecError::InvalidId("-x".into())
        );
        assert_eq!(
            with(&|s| s.id = "a b".into()),
            SpecError::InvalidId("a b".into())
        );
        assert_eq!(
            with(&|s| s.id = "x".repeat(65)),
            SpecError::InvalidId("x".repeat(65))
        );
        assert_eq!(
            with(&|s| s.hostname = Some(String::new())),
            SpecError::InvalidHostname(String::new())
        );
        assert_eq!(
            with(&|s| s.rootfs = "r".into()),
            SpecError::RelativeRootfs("r".into())
        );
        assert_eq!(with(&|s| s.process.args.clear()), SpecError::EmptyArgs);
        assert_eq!(
            with(&|s| s.process.args = vec![String::new()]),
            SpecError::EmptyArgs
        );
        assert_eq!(
            with(&|s| s.process.args.push("a\0b".into())),
            SpecError::Nul("args[1]".into())
        );
        assert_eq!(
            with(&|s| s.process.env.push("=v".into())),
            SpecError::BadEnv("=v".into())
        );
        assert_eq!(
            with(&|s| s.process.env.push("NOVALUE".into())),
            SpecError::BadEnv("NOVALUE".into())
        );
        assert_eq!(
            with(&|s| s.process.cwd = "tmp".into()),
            SpecError::RelativeCwd("tmp".into())
        );
        assert!(matches!(
            with(&|s| s.process.args.push("x".repeat(MAX_ARGS_ENV_BYTES))),
            SpecError::TooLarge(_)
        ));
        let limit = |resource: &str, soft, hard| Rlimit {
            resource: resource.into(),
            soft,
            hard,
        };
        assert_eq!(
            with(&|s| s.process.rlimits.push(limit("NOFILE", 1, 1))),
            SpecError::BadRlimit("NOFILE".into())
        );
        assert_eq!(
            with(&|s| s.process.rlimits.push(limit("RLIMIT_NOFILE", 2, 1))),
            SpecError::RlimitOrder("RLIMIT_NOFILE".into())
        );
        assert_eq!(
            with(&|s| s.process.rlimits = vec![limit("RLIMIT_NOFILE", 1, 1); 2]),
            SpecError::DuplicateRlimit("RLIMIT_NOFILE".into())
        );
    }

    #[test]
    fn exit_statuses_read_like_a_shell() {
        let mut s = agent::ExitStatus::new();
        s.exit_code = 7;
        assert_eq!(ExitStatus::from_proto(&s), ExitStatus::Exited(7));
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        s.signal = 9;
        s.exit_code = 137;
        assert_eq!(ExitStatus::from_proto(&s), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(ExitStatus::Signaled(9).to_string(), "killed by signal 9");
    }
}
