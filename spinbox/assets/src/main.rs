//! `spinbox-assets`: provisions everything a real spinbox VM needs, in one command, into
//! the assets directory (`$SPINBOX_ASSETS`, else `target/assets` of this workspace), and
//! records it in `manifest.json` ([`spinbox_manifest`]):
//!
//! 1. QEMU, xz-utils, busybox-static, erofs-utils, containerd (`containerd` and `ctr`,
//!    for the containerd shim's tests) and containernetworking-plugins (the CNI plugins the
//!    network tests run) from Debian (`apt-get install`) when missing;
//! 2. the current Debian kernel: the package `linux-image-amd64` depends on is
//!    downloaded (`apt-get download`), unpacked (`dpkg-deb -x`), its bzImage kept, the
//!    ELF `vmlinux` extracted from the bzImage's xz payload, and the modules the agent
//!    needs resolved from their `depends=` modinfo — cached per package version;
//! 3. `vhost-device-vsock` (`cargo install --locked`), cached per version; with
//!    `--with-virtiofsd`, `virtiofsd` too (for the rootfs benchmark's virtiofs transport:
//!    not a Debian bookworm package), cached per version and recorded from then on;
//! 4. the static musl agent (`cargo build --profile agent`) and the uncompressed `newc`
//!    initramfs holding it as `/init` with the modules and their load order; then the same
//!    with the agent's `test-knobs` feature, the test initramfs (`test_initramfs` in the
//!    manifest) that the host's fault tests boot.
//!
//! Run it again at any time: cached steps cost a few milliseconds.

// The container tests' rootfs builder (std only), shared with the agent's tests.
#[path = "../../agent/src/container/busybox_rootfs.rs"]
#[allow(dead_code, reason = "the agent's tests use the rest of it")]
mod busybox_rootfs;
mod cpio;
mod kernel;
mod modules;
mod tools;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use spinbox_manifest::{Assets, ASSETS_ENV, MANIFEST_FILE};

/// The `vhost-device-vsock` release installed.
const VHOST_DEVICE_VSOCK_VERSION: &str = "0.3.0";

/// The `virtiofsd` release installed with `--with-virtiofsd`.
const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The command-line usage.
const USAGE: &str = "usage: spinbox-assets [--with-virtiofsd]";

/// Errors of the provisioning.
#[derive(Debug, thiserror::Error)]
enum ProvisionError {
    /// A host tool step failed.
    #[error(transparent)]
    Tool(#[from] tools::ToolError),
    /// The kernel step failed.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// The busybox rootfs could not be built.
    #[error("cannot build the busybox rootfs")]
    Rootfs(#[from] busybox_rootfs::RootfsError),
    /// Writing an output failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let mut with_virtiofsd = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--with-virtiofsd" => with_virtiofsd = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("spinbox-assets: unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let dir = assets_dir();
    let started = Instant::now();
    match provision(&dir, with_virtiofsd) {
        Ok(assets) => {
            tracing::info!(
                dir = %dir.display(),
                kernel = %assets.kernel_release,
                elapsed = ?started.elapsed(),
                "VM assets ready"
            );
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                let _ = write!(msg, ": {c}");
                cur = c.source();
            }
            eprintln!("spinbox-assets: {msg}");
            std::process::exit(1);
        }
    }
}

/// Where to provision: `$SPINBOX_ASSETS`, else `target/assets` of the workspace this tool
/// belongs to (it is a development tool, run by cargo from the workspace).
fn assets_dir() -> PathBuf {
    std::env::var_os(ASSETS_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || {
                let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")); // <workspace>/spinbox/assets
                crate_dir
                    .ancestors()
                    .nth(2)
                    .unwrap_or(crate_dir)
                    .join("target/assets")
            },
            PathBuf::from,
        )
}

fn provision(dir: &Path, with_virtiofsd: bool) -> Result<Assets, ProvisionError> {
    // Canonical, so the manifest's paths are absolute even for a relative $SPINBOX_ASSETS.
    let dir = &std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::canonicalize(dir))
        .map_err(|source| ProvisionError::Write {
            path: dir.to_owned(),
            source,
        })?;
    let qemu = tools::ensure_host_packages()?;
    let mkfs_erofs = tools::mkfs_erofs()?;
    let virtiofsd_root = dir.join("virtiofsd").join(VIRTIOFSD_VERSION);
    // Once installed it stays recorded, so a plain re-provisioning does not drop it.
    let virtiofsd = if with_virtiofsd {
        Some(tools::ensure_virtiofsd(&virtiofsd_root, VIRTIOFSD_VERSION)?)
    } else {
        Some(virtiofsd_root.join("bin/virtiofsd")).filter(|p| p.is_file())
    };
    let kernel = kernel::provision(&dir.join("kernel"))?;
    let vdv = tools::ensure_vhost_device_vsock(
        &dir.join("vhost-device-vsock")
            .join(VHOST_DEVICE_VSOCK_VERSION),
        VHOST_DEVICE_VSOCK_VERSION,
    )?;
    tools::ensure_agent_target()?;
    // Each build overwrites the binary: pack it before the next one.
    let initramfs = dir.join("initramfs.cpio");
    kernel::write_initramfs(&tools::build_agent(&[])?, &kernel, &initramfs)?;
    let test_initramfs = dir.join("initramfs-test.cpio");
    kernel::write_initramfs(
        &tools::build_agent(&["test-knobs"])?,
        &kernel,
        &test_initramfs,
    )?;
    let assets = Assets {
        qemu,
        kernel_package: kernel.package.clone(),
        kernel_package_version: kernel.version.clone(),
        kernel_release: kernel.release.clone(),
        bzimage: kernel.bzimage.clone(),
        vmlinux: kernel.vmlinux.clone(),
        initramfs,
        test_initramfs: Some(test_initramfs),
        vhost_device_vsock: vdv,
        mkfs_erofs: Some(mkfs_erofs),
        virtiofsd,
        rootfs: Some(provision_rootfs(dir)?),
    };
    write_atomic(&dir.join(MANIFEST_FILE), assets.to_manifest().as_bytes())?;
    Ok(assets)
}

/// Builds the busybox rootfs into `<dir>/rootfs` (afresh each time: it is small, and a
/// half-built one from an interrupted run must not survive).
fn provision_rootfs(dir: &Path) -> Result<PathBuf, ProvisionError> {
    let root = dir.join("rootfs");
    let tmp = dir.join("rootfs.tmp");
    let write = |path: &Path| {
        let path = path.to_owned();
        move |source| ProvisionError::Write { path, source }
    };
    for d in [&tmp, &root] {
        match std::fs::remove_dir_all(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write(d)(e)),
        }
    }
    std::fs::create_dir_all(&tmp).map_err(write(&tmp))?;
    busybox_rootfs::build(&tmp)?;
    // Every applet, not only the tests' few: it is the CLI's default rootfs.
    let list = std::process::Command::new(busybox_rootfs::BUSYBOX)
        .arg("--list")
        .output()
        .map_err(write(Path::new(busybox_rootfs::BUSYBOX)))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = tmp.join("bin").join(applet);
        if !applet.is_empty() && !applet.contains('/') && !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(write(&link))?;
        }
    }
    std::fs::rename(&tmp, &root).map_err(write(&root))?;
    Ok(root)
}

/// Writes `path` through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ProvisionError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| ProvisionError::Write {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `/init` in a `newc` initramfs.
    fn init_of(initramfs: &Path) -> Vec<u8> {
        let archive = std::fs::read(initramfs).expect("read the initramfs");
        cpio::parse(&archive)
            .into_iter()
            .find(|(name, ..)| name == "init")
            .expect("an /init entry")
            .4
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// The provisioned production agent has no test knobs; the test agent has them all.
    #[test]
    fn test_knobs_are_only_in_the_test_initramfs() {
        let dir = assets_dir();
        let assets = Assets::load(&dir)
            .unwrap_or_else(|e| panic!("{e}: run scripts/provision before the tests"));
        let production = init_of(&assets.initramfs);
        let test = init_of(
            assets
                .test_initramfs
                .as_deref()
                .expect("the provisioner records a test initramfs"),
        );
        assert!(production.starts_with(b"\x7fELF"), "/init is not ELF");
        assert!(test.starts_with(b"\x7fELF"), "test /init is not ELF");
        // The test agent logs the knob it obeys, so each argument is in it whole.
        for knob in ["spinbox.agent=mute", "spinbox.agent=stubborn"] {
            assert!(
                contains(&test, knob.as_bytes()),
                "{knob} is not in the test agent"
            );
        }
        assert!(
            !contains(&production, b"spinbox.agent="),
            "a test knob is in the production agent of {}",
            assets.initramfs.display()
        );
    }
}
