//! What the host lacks for a real VM, as a list of [`Finding`]s (`spinbox check` prints
//! them): QEMU on the `PATH`, KVM (and whether the probe would really use it), and the
//! provisioned kernel, initramfs and `vhost-device-vsock`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::vm::assets::Assets;
use crate::vm::kvm::check_kvm;
use crate::vm::qemu::probe_accelerator;

/// The QEMU binary looked for on the `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The containerd shim's binary, looked up where containerd looks for it: its `PATH`, then
/// the directory of the `containerd` binary.
pub const CONTAINERD_SHIM: &str = "containerd-shim-spinbox-v1";

/// The containerd shim's config file when neither the runtime options nor its environment
/// name one.
pub const CONTAINERD_SHIM_CONFIG: &str = "/etc/spinbox/containerd-shim.json";

/// The containerd shim's assets directory when its config names none.
pub const CONTAINERD_SHIM_ASSETS: &str = "/var/lib/spinbox/assets";

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Present and usable.
    Ok,
    /// Worth knowing; a VM still runs (e.g. no usable KVM: TCG is used).
    Note,
    /// A VM cannot run until this is fixed.
    Missing,
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious it is.
    pub level: Level,
    /// What was found, in words.
    pub what: String,
    /// How to fix it, for [`Level::Missing`].
    pub fix: Option<String>,
}

impl Finding {
    fn ok(what: String) -> Self {
        Self {
            level: Level::Ok,
            what,
            fix: None,
        }
    }

    fn note(what: String) -> Self {
        Self {
            level: Level::Note,
            what,
            fix: None,
        }
    }

    fn missing(what: String, fix: &str) -> Self {
        Self {
            level: Level::Missing,
            what,
            fix: Some(fix.to_owned()),
        }
    }
}

/// An error and its sources on one line: `error: cause: cause` (newlines become ` | `),
/// as `spinbox` prints them.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text.replace('\n', " | ")
}

/// Finds `name` in the directories of `path_var` (a `PATH` value).
pub fn which(path_var: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Checks the host: QEMU found through `path_var` (the caller's `PATH`), KVM, and the assets
/// provisioned in `assets_dir`. Never fails: every problem is a finding.
pub async fn check_host(path_var: Option<&OsStr>, assets_dir: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let qemu = which(path_var, QEMU_BINARY);
    match &qemu {
        Some(path) => {
            let version = tokio::process::Command::new(path)
                .arg("--version")
                .kill_on_drop(true)
                .output()
                .await
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown version".to_owned());
            findings.push(Finding::ok(format!("QEMU: {} ({version})", path.display())));
        }
        None => findings.push(Finding::missing(
            format!("QEMU: {QEMU_BINARY} not on PATH"),
            "apt-get install qemu-system-x86",
        )),
    }
    match check_kvm() {
        Ok(version) => {
            let usable = match &qemu {
                Some(path) => {
                    let probe = probe_accelerator(path).await;
                    format!("probe picks {:?}: {}", probe.accelerator, probe.reason)
                }
                None => "cannot probe without QEMU".to_owned(),
            };
            findings.push(Finding::ok(format!(
                "KVM: /dev/kvm answers API version {version}; {usable}"
            )));
        }
        Err(e) => findings.push(Finding::note(format!(
            "KVM unusable ({}); VMs run under TCG (software emulation), slower but complete",
            error_chain(&e)
        ))),
    }
    match Assets::load(assets_dir) {
        Ok(assets) => {
            findings.push(Finding::ok(format!(
                "kernel: {} {} ({})",
                assets.kernel_package,
                assets.kernel_package_version,
                assets.vmlinux.display()
            )));
            findings.push(Finding::ok(format!(
                "initramfs: {}",
                assets.initramfs.display()
            )));
            findings.push(Finding::ok(format!(
                "vhost-device-vsock: {} (the agent is reached over hybrid vsock)",
                assets.vhost_device_vsock.display()
            )));
        }
        Err(e) => findings.push(Finding::missing(
            format!(
                "kernel, initramfs, vhost-device-vsock in {} ({})",
                assets_dir.display(),
                error_chain(&e)
            ),
            "scripts/provision",
        )),
    }
    findings
}

/// Checks what `ctr run --runtime io.containerd.spinbox.v1` needs: `containerd` found
/// through `path_var`, the shim binary where containerd finds it (the same `PATH`, or beside
/// `containerd`), and the assets the shim's config file `config` names. Without containerd,
/// the shim findings are notes: `spinbox run` does not need them.
pub fn check_containerd(path_var: Option<&OsStr>, config: &Path) -> Vec<Finding> {
    let mut findings = Vec::new();
    let Some(containerd) = which(path_var, "containerd") else {
        findings.push(Finding::note(
            "containerd: not on PATH (only needed to run spinbox under containerd: \
             apt-get install containerd)"
                .to_owned(),
        ));
        return findings;
    };
    findings.push(Finding::ok(format!("containerd: {}", containerd.display())));
    let beside = containerd.parent().map(|d| d.join(CONTAINERD_SHIM));
    let shim = which(path_var, CONTAINERD_SHIM).or(beside.filter(|p| p.is_file()));
    match shim {
        Some(shim) => findings.push(Finding::ok(format!(
            "containerd shim: {} (runtime io.containerd.spinbox.v1)",
            shim.display()
        ))),
        None => findings.push(Finding::missing(
            format!("containerd shim: {CONTAINERD_SHIM} is neither on PATH nor beside containerd"),
            "cargo build --release -p containerd-shim-spinbox && \
             install -m 0755 target/release/containerd-shim-spinbox-v1 /usr/local/bin/",
        )),
    }
    let assets = match std::fs::read_to_string(config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.push(Finding::note(format!(
                "containerd shim config: {} does not exist; the defaults apply",
                config.display()
            )));
            PathBuf::from(CONTAINERD_SHIM_ASSETS)
        }
        Err(e) => {
            findings.push(Finding::missing(
                format!(
                    "containerd shim config: cannot read {}: {e}",
                    config.display()
                ),
                "make it readable",
            ));
            return findings;
        }
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                findings.push(Finding::ok(format!(
                    "containerd shim config: {}",
                    config.display()
                )));
                v.get("assets")
                    .and_then(serde_json::Value::as_str)
                    .map_or_else(|| PathBuf::from(CONTAINERD_SHIM_ASSETS), PathBuf::from)
            }
            Err(e) => {
                findings.push(Finding::missing(
                    format!(
                        "containerd shim config: {} is not JSON: {e}",
                        config.display()
                    ),
                    "fix the file (README: Use with containerd)",
                ));
                return findings;
            }
        },
    };
    match Assets::load(&assets) {
        Ok(_) => findings.push(Finding::ok(format!(
            "containerd shim assets: {}",
            assets.display()
        ))),
        Err(e) => findings.push(Finding::missing(
            format!(
                "containerd shim assets: none in {} ({})",
                assets.display(),
                error_chain(&e)
            ),
            "scripts/provision, then name target/assets as `assets` in the shim config",
        )),
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn missing_qemu_and_assets_are_findings_with_fixes() {
        let empty = tempfile::tempdir().unwrap();
        let findings = check_host(Some(empty.path().as_os_str()), empty.path()).await;
        let missing: Vec<_> = findings
            .iter()
            .filter(|f| f.level == Level::Missing)
            .collect();
        assert_eq!(missing.len(), 2, "{findings:?}");
        assert!(missing[0].what.contains(QEMU_BINARY));
        assert_eq!(
            missing[0].fix.as_deref(),
            Some("apt-get install qemu-system-x86")
        );
        assert!(missing[1]
            .what
            .contains(&empty.path().display().to_string()));
        assert_eq!(missing[1].fix.as_deref(), Some("scripts/provision"));
    }

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_containerd_shim_is_looked_for_where_containerd_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shim.json");
        // No containerd: a note only.
        let findings = check_containerd(Some(dir.path().as_os_str()), &config);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].level, Level::Note);
        // containerd without the shim: missing, with the fix.
        executable(dir.path(), "containerd");
        let findings = check_containerd(Some(dir.path().as_os_str()), &config);
        assert_eq!(findings[1].level, Level::Missing, "{findings:?}");
        assert!(findings[1].fix.as_deref().unwrap().contains("install"));
        // The shim beside containerd, a config naming assets that are not there.
        executable(dir.path(), CONTAINERD_SHIM);
        std::fs::write(&config, r#"{"assets": "/nonexistent/assets"}"#).unwrap();
        let findings = check_containerd(Some(dir.path().as_os_str()), &config);
        let levels: Vec<Level> = findings.iter().map(|f| f.level).collect();
        assert_eq!(
            levels,
            [Level::Ok, Level::Ok, Level::Ok, Level::Missing],
            "{findings:?}"
        );
        assert!(findings[3].what.contains("/nonexistent/assets"));
        std::fs::write(&config, "{").unwrap();
        let findings = check_containerd(Some(dir.path().as_os_str()), &config);
        assert_eq!(findings.last().unwrap().level, Level::Missing);
        assert!(findings.last().unwrap().what.contains("not JSON"));
    }

    #[tokio::test]
    async fn qemu_on_the_path_is_found_with_its_version() {
        let bin = tempfile::tempdir().unwrap();
        let qemu = bin.path().join(QEMU_BINARY);
        std::fs::write(&qemu, "#!/bin/sh\necho 'QEMU emulator version 9.9.9'\n").unwrap();
        std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent".into(), bin.path().to_owned()]).unwrap();
        assert_eq!(which(Some(&path), QEMU_BINARY), Some(qemu.clone()));
        let findings = check_host(Some(&path), bin.path()).await;
        assert_eq!(findings[0].level, Level::Ok);
        assert!(findings[0].what.contains("9.9.9"), "{:?}", findings[0]);
    }
}
