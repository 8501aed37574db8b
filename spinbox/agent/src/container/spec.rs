//! The typed container and process specifications, validated before any process starts.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The search path used to find `args[0]` when the process environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a container is made of: a root filesystem and its first process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name: 1–64 characters of `[A-Za-z0-9_.-]`, starting with a letter
    /// or digit (it names a directory under the runtime's state root).
    pub id: String,
    /// The directory that becomes the container's `/` (absolute).
    pub rootfs: PathBuf,
    /// `true`: the rootfs is the container's own and its writes land in it. `false`: the
    /// rootfs is the read-only lower layer of an overlay whose writable layer is a tmpfs
    /// that lives and dies with the container's mount namespace.
    pub rootfs_owned: bool,
    /// The UTS hostname; the container id when `None`.
    pub hostname: Option<String>,
    /// The first process (PID 1 of the container's PID namespace).
    pub process: ProcessSpec,
}

/// A process to run inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The program and its arguments; `args[0]` is looked up in the environment's `PATH`
    /// (or [`DEFAULT_PATH`]) unless it contains a `/`.
    pub args: Vec<String>,
    /// The environment, as `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// The working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// The user id the process runs as.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary group ids (none when empty).
    pub additional_gids: Vec<u32>,
    /// Resource limits applied before the program starts.
    pub rlimits: Vec<Rlimit>,
    /// Whether a terminal is wanted: refused with [`SpecError::Unsupported`] for now.
    pub terminal: bool,
}

impl ProcessSpec {
    /// A process running `args` as root in `/`, with only `PATH` set.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the Task service builds specs from requests")
    )]
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
            terminal: false,
        }
    }

    /// Checks everything that can be checked before a process exists.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.terminal {
            return Err(SpecError::Unsupported("terminal allocation"));
        }
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(SpecError::EmptyArgs);
        }
        for (i, arg) in self.args.iter().enumerate() {
            no_nul(arg.as_bytes(), || format!("args[{i}]"))?;
        }
        for entry in &self.env {
            no_nul(entry.as_bytes(), || "env".to_owned())?;
            match entry.split_once('=') {
                Some((key, _)) if !key.is_empty() => {}
                _ => return Err(SpecError::BadEnv(entry.clone())),
            }
        }
        if !self.cwd.is_absolute() {
            return Err(SpecError::RelativeCwd(self.cwd.clone()));
        }
        no_nul(self.cwd.as_os_str().as_encoded_bytes(), || "cwd".to_owned())?;
        let mut seen = HashSet::new();
        for limit in &self.rlimits {
            if !seen.insert(limit.resource) {
                return Err(SpecError::DuplicateRlimit(limit.resource));
            }
            if limit.soft > limit.hard {
                return Err(SpecError::RlimitOrder(*limit));
            }
        }
        Ok(())
    }

    /// The value of `PATH` in the process environment, or [`DEFAULT_PATH`].
    pub(crate) fn search_path(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
    }
}

impl ContainerSpec {
    /// Checks the id, hostname, rootfs and process.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.id) {
            return Err(SpecError::InvalidId(self.id.clone()));
        }
        if let Some(name) = &self.hostname {
            if !valid_name(name) {
                return Err(SpecError::InvalidHostname(name.clone()));
            }
        }
        if !self.rootfs.is_absolute() {
            return Err(SpecError::RelativeRootfs(self.rootfs.clone()));
        }
        no_nul(self.rootfs.as_os_str().as_encoded_bytes(), || {
            "rootfs".to_owned()
        })?;
        check_dir(&self.rootfs)?;
        self.process.validate()
    }

    /// The hostname the container gets.
    pub(crate) fn hostname(&self) -> &str {
        self.hostname.as_deref().unwrap_or(&self.id)
    }
}

fn check_dir(path: &Path) -> Result<(), SpecError> {
    let meta = std::fs::metadata(path).map_err(|source| SpecError::Rootfs {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(SpecError::Rootfs {
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
        })
    }
}

/// 1–64 characters of `[A-Za-z0-9_.-]`, the first a letter or digit.
pub(crate) fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn no_nul(bytes: &[u8], field: impl FnOnce() -> String) -> Result<(), SpecError> {
    if bytes.contains(&0) {
        Err(SpecError::Nul(field()))
    } else {
        Ok(())
    }
}

/// The resources a process spec can limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RlimitResource {
    /// `RLIMIT_NOFILE`: open file descriptors.
    NoFile,
    /// `RLIMIT_NPROC`: processes of the user.
    NProc,
    /// `RLIMIT_CORE`: core file size.
    Core,
    /// `RLIMIT_STACK`: stack size.
    Stack,
    /// `RLIMIT_FSIZE`: size of files written.
    FileSize,
    /// `RLIMIT_CPU`: CPU seconds.
    Cpu,
}

impl RlimitResource {
    /// The kernel's resource number, as `prlimit64(2)` takes it (glibc and musl give the
    /// constants different C types).
    pub(crate) fn raw(self) -> i64 {
        use nix::libc;
        i64::from(match self {
            Self::NoFile => libc::RLIMIT_NOFILE,
            Self::NProc => libc::RLIMIT_NPROC,
            Self::Core => libc::RLIMIT_CORE,
            Self::Stack => libc::RLIMIT_STACK,
            Self::FileSize => libc::RLIMIT_FSIZE,
            Self::Cpu => libc::RLIMIT_CPU,
        })
    }
}

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource limited.
    pub resource: RlimitResource,
    /// The soft limit (what the process sees).
    pub soft: u64,
    /// The hard limit (the ceiling the soft limit can be raised to).
    pub hard: u64,
}

/// Why a spec was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The container id is not a safe directory name.
    #[error("container id {0:?} is not 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit")]
    InvalidId(String),
    /// The hostname is not a plain name.
    #[error(
        "hostname {0:?} is not 1-64 characters of [A-Za-z0-9_.-] starting with a letter or digit"
    )]
    InvalidHostname(String),
    /// The process has no program to run.
    #[error("the process has no arguments (or an empty program name)")]
    EmptyArgs,
    /// A string the kernel takes as a C string contains a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(String),
    /// An environment entry has no `=` or an empty key.
    #[error("environment entry {0:?} is not KEY=VALUE")]
    BadEnv(String),
    /// The working directory is relative.
    #[error("working directory {0:?} is not absolute")]
    RelativeCwd(PathBuf),
    /// The rootfs path is relative.
    #[error("rootfs {0:?} is not an absolute path")]
    RelativeRootfs(PathBuf),
    /// The rootfs is missing or not a directory.
    #[error("cannot use rootfs {path:?}")]
    Rootfs {
        /// The rootfs path.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
    /// A resource is limited twice.
    #[error("rlimit {0:?} is given twice")]
    DuplicateRlimit(RlimitResource),
    /// A soft limit exceeds its hard limit.
    #[error("rlimit {:?}: soft limit {} exceeds hard limit {}", .0.resource, .0.soft, .0.hard)]
    RlimitOrder(Rlimit),
    /// A feature this runtime does not offer yet.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rootfs: &Path) -> ContainerSpec {
        ContainerSpec {
            id: "c1".into(),
            rootfs: rootfs.to_owned(),
            rootfs_owned: false,
            hostname: None,
            process: ProcessSpec::new(["sh"]),
        }
    }

    type Mutation = Box<dyn Fn(&mut ContainerSpec)>;

    #[test]
    fn refusals_name_the_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = spec(dir.path());
        ok.validate().expect("a plain spec is valid");

        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.id = "../x".into()), "container id"),
            (Box::new(|s| s.id = String::new()), "container id"),
            (Box::new(|s| s.id = "a".repeat(65)), "container id"),
            (Box::new(|s| s.hostname = Some("a b".into())), "hostname"),
            (Box::new(|s| s.process.args.clear()), "no arguments"),
            (
                Box::new(|s| s.process.args = vec![String::new()]),
                "no arguments",
            ),
            (
                Box::new(|s| s.process.args.push("a\0b".into())),
                "args[1] contains a NUL",
            ),
            (
                Box::new(|s| s.process.env.push("NOEQUALS".into())),
                "KEY=VALUE",
            ),
            (Box::new(|s| s.process.env.push("=v".into())), "KEY=VALUE"),
            (
                Box::new(|s| s.process.env.push("K=\0".into())),
                "env contains a NUL",
            ),
            (Box::new(|s| s.process.cwd = "tmp".into()), "not absolute"),
            (
                Box::new(|s| s.rootfs = "rel".into()),
                "not an absolute path",
            ),
            (
                Box::new(|s| s.rootfs = "/nonexistent/rootfs".into()),
                "cannot use rootfs",
            ),
            (
                Box::new(|s| s.rootfs = "/proc/self/status".into()),
                "cannot use rootfs",
            ),
            (
                Box::new(|s| s.process.terminal = true),
                "unsupported: terminal",
            ),
            (
                Box::new(|s| {
                    s.process.rlimits = vec![Rlimit {
                        resource: RlimitResource::NoFile,
                        soft: 2,
                        hard: 1,
                    }];
                }),
                "exceeds hard limit",
            ),
            (
                Box::new(|s| {
                    let l = Rlimit {
                        resource: RlimitResource::Core,
                        soft: 0,
                        hard: 0,
                    };
                    s.process.rlimits = vec![l, l];
                }),
                "given twice",
            ),
        ];
        for (mutate, expected) in cases {
            let mut bad = ok.clone();
            mutate(&mut bad);
            let err = bad.validate().expect_err(expected);
            assert!(
                err.to_string().contains(expected),
                "{err} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn path_search_uses_the_last_path_entry() {
        let mut p = ProcessSpec::new(["x"]);
        assert_eq!(p.search_path(), DEFAULT_PATH);
        p.env.push("PATH=/opt/bin".into());
        assert_eq!(p.search_path(), "/opt/bin");
        p.env.clear();
        assert_eq!(p.search_path(), DEFAULT_PATH);
    }
}
