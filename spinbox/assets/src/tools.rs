//! Host tools: apt (QEMU, xz-utils, the kernel package), cargo (vhost-device-vsock,
//! the agent), rustup (the musl target).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The agent's target: static, no libc on the guest side.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

/// Errors running host tools.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A command could not be run at all.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}):\n{stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of its stderr.
        stderr: String,
    },
    /// A command's output was not what was expected.
    #[error("unexpected output from `{command}`: {why}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        why: String,
    },
}

/// Runs `cmd`, capturing output; a non-zero exit is an error carrying stderr's tail.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let command = format!("{cmd:?}").replace('"', "");
    tracing::debug!(%command, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        return Err(ToolError::Failed {
            command,
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(out)
}

/// `name` found in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn as_root(program: &str) -> Command {
    if nix::unistd::geteuid().is_root() || which("sudo").is_none() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// Refreshes apt's package lists.
pub fn apt_update() -> Result<(), ToolError> {
    tracing::info!("apt-get update");
    run(as_root("apt-get").args(["update", "-qq"])).map(drop)
}

/// Installs QEMU (`qemu-system-x86`), `xz`, `busybox-static` (the container tests'
/// rootfs is built from its static `/bin/busybox`), `erofs-utils` (`mkfs.erofs`, which
/// builds EROFS rootfs images), `containerd` (`containerd` and `ctr`, which the
/// containerd shim's tests run) and `containernetworking-plugins` (the CNI plugins in
/// `/usr/lib/cni` the network tests run) when missing; returns QEMU's path.
pub fn ensure_host_packages() -> Result<PathBuf, ToolError> {
    let mut need = Vec::new();
    if which("qemu-system-x86_64").is_none() {
        need.push("qemu-system-x86");
    }
    if which("xz").is_none() {
        need.push("xz-utils");
    }
    if !Path::new("/bin/busybox").is_file() {
        need.push("busybox-static");
    }
    if which("mkfs.erofs").is_none() {
        need.push("erofs-utils");
    }
    if which("containerd").is_none() || which("ctr").is_none() {
        need.push("containerd");
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        need.push("containernetworking-plugins");
    }
    apt_install(&need)?;
    which("qemu-system-x86_64").ok_or_else(|| ToolError::Output {
        command: "apt-get install qemu-system-x86".into(),
        why: "qemu-system-x86_64 is still not in PATH".into(),
    })
}

/// `apt-get install`s `packages` (after an `apt-get update`), unless the list is empty.
fn apt_install(packages: &[&str]) -> Result<(), ToolError> {
    if packages.is_empty() {
        return Ok(());
    }
    apt_update()?;
    tracing::info!(?packages, "apt-get install");
    run(as_root("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages))
    .map(drop)
}

/// `mkfs.erofs`, which [`ensure_host_packages`] installed.
pub fn mkfs_erofs() -> Result<PathBuf, ToolError> {
    which("mkfs.erofs").ok_or_else(|| ToolError::Output {
        command: "apt-get install erofs-utils".into(),
        why: "mkfs.erofs is still not in PATH".into(),
    })
}

/// Whether the Debian package `name` is installed.
fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs `virtiofsd` into `root` unless it is there (the build needs the libseccomp
/// and libcap-ng headers, installed from Debian when missing); returns the binary.
pub fn ensure_virtiofsd(root: &Path, version: &str) -> Result<PathBuf, ToolError> {
    let bin = root.join("bin").join("virtiofsd");
    if bin.is_file() {
        return Ok(bin);
    }
    let need: Vec<&str> = ["libseccomp-dev", "libcap-ng-dev", "pkg-config"]
        .into_iter()
        .filter(|p| !dpkg_installed(p))
        .collect();
    apt_install(&need)?;
    tracing::info!(version, "cargo install virtiofsd (a few minutes)");
    run(cargo()
        .args([
            "install",
            "--locked",
            "--quiet",
            "virtiofsd",
            "--version",
            version,
        ])
        .arg("--root")
        .arg(root))?;
    Ok(bin)
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Installs `vhost-device-vsock` into `root` unless it is there; returns the binary.
pub fn ensure_vhost_device_vsock(root: &Path, version: &str) -> Result<PathBuf, ToolError> {
    let bin = root.join("bin").join("vhost-device-vsock");
    if bin.is_file() {
        return Ok(bin);
    }
    tracing::info!(
        version,
        "cargo install vhost-device-vsock (about a minute or four)"
    );
    run(cargo()
        .args([
            "install",
            "--locked",
            "--quiet",
            "vhost-device-vsock",
            "--version",
            version,
        ])
        .arg("--root")
        .arg(root))?;
    Ok(bin)
}

/// Adds the agent's target to the toolchain unless it is there.
pub fn ensure_agent_target() -> Result<(), ToolError> {
    let installed = run(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == AGENT_TARGET)
    {
        tracing::info!(target = AGENT_TARGET, "rustup target add");
        run(Command::new("rustup").args(["target", "add", AGENT_TARGET]))?;
    }
    Ok(())
}

/// Builds the static agent with `features` and returns its path. Every build writes the same
/// path: use the binary before the next build.
pub fn build_agent(features: &[&str]) -> Result<PathBuf, ToolError> {
    tracing::info!(?features, "building the agent");
    let mut build = cargo();
    build.args([
        "build",
        "--quiet",
        "--locked",
        "-p",
        "spinbox-agent",
        "--profile",
        "agent",
        "--target",
        AGENT_TARGET,
        "--message-format=json-render-diagnostics",
    ]);
    if !features.is_empty() {
        build.arg(format!("--features={}", features.join(",")));
    }
    let out = run(&mut build)?;
    let command = "cargo build -p spinbox-agent".to_owned();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "spinbox-agent" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err(ToolError::Output {
        command,
        why: "no spinbox-agent executable reported".into(),
    })
}
