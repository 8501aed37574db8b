//! Where the VM assets are: QEMU, the Debian kernel (bzImage and the extracted ELF
//! `vmlinux`), the agent initramfs and `vhost-device-vsock`.
//!
//! They are provisioned by one command, `cargo run -p spinbox-assets` (see
//! `scripts/provision`), into the assets directory, which then holds a
//! [`manifest.json`](MANIFEST_FILE) describing them. The directory is
//! `$SPINBOX_ASSETS` when set, else `target/assets` in this workspace.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable overriding the assets directory.
pub const ASSETS_ENV: &str = "SPINBOX_ASSETS";

/// The manifest's file name inside the assets directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Errors locating the assets.
#[derive(Debug, thiserror::Error)]
pub enum AssetsError {
    /// No manifest: the assets were never provisioned into this directory.
    #[error(
        "no VM assets in {} (run `scripts/provision` or `cargo run -p spinbox-assets`, \
         or point {ASSETS_ENV} at a provisioned directory)",
        dir.display()
    )]
    NotProvisioned {
        /// The assets directory searched.
        dir: PathBuf,
    },
    /// The manifest could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("malformed manifest {}", path.display())]
    Parse {
        /// The manifest's path.
        path: PathBuf,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// A file the manifest names is missing.
    #[error("{what} {} named by the manifest is missing (re-run the provisioning)", path.display())]
    Missing {
        /// Which asset.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
}

/// The provisioned assets, as recorded in `manifest.json` (paths are absolute).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assets {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The Debian kernel package, e.g. `linux-image-6.1.0-56-amd64`.
    pub kernel_package: String,
    /// That package's version, e.g. `6.1.192-2` (Debian kernels print it in `uname -v`).
    pub kernel_package_version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The compressed kernel (bzImage), as shipped.
    pub bzimage: PathBuf,
    /// The uncompressed ELF kernel, booted through its PVH entry (no in-guest
    /// decompression: ~3 s faster under TCG).
    pub vmlinux: PathBuf,
    /// The gzip'd `newc` initramfs: the agent as `/init` plus the modules it loads.
    pub initramfs: PathBuf,
    /// The `vhost-device-vsock` binary (vhost-user vsock backend).
    pub vhost_device_vsock: PathBuf,
}

impl Assets {
    /// Locates the assets in [`assets_dir`] and checks every file exists.
    pub fn locate() -> Result<Self, AssetsError> {
        Self::load(&assets_dir())
    }

    /// Reads `<dir>/manifest.json` and checks every file it names exists.
    pub fn load(dir: &Path) -> Result<Self, AssetsError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AssetsError::NotProvisioned {
                    dir: dir.to_owned(),
                })
            }
            Err(source) => return Err(AssetsError::Read { path, source }),
        };
        let assets: Self =
            serde_json::from_str(&text).map_err(|source| AssetsError::Parse { path, source })?;
        for (what, p) in [
            ("QEMU binary", &assets.qemu),
            ("bzImage", &assets.bzimage),
            ("vmlinux", &assets.vmlinux),
            ("initramfs", &assets.initramfs),
            ("vhost-device-vsock", &assets.vhost_device_vsock),
        ] {
            if !p.exists() {
                return Err(AssetsError::Missing {
                    what,
                    path: p.clone(),
                });
            }
        }
        Ok(assets)
    }
}

/// The assets directory: `$SPINBOX_ASSETS`, else `target/assets` of this workspace.
pub fn assets_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    default_assets_dir()
}

/// `target/assets` under the workspace root this crate was built in.
pub fn default_assets_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .unwrap_or(manifest_dir)
        .join("target")
        .join("assets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_manifest_says_how_to_provision() {
        let dir = tempfile::tempdir().unwrap();
        let err = Assets::load(dir.path()).unwrap_err();
        assert!(matches!(err, AssetsError::NotProvisioned { .. }));
        assert!(err.to_string().contains("spinbox-assets"));
    }

    #[test]
    fn manifest_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, b"x").unwrap();
            p
        };
        let assets = Assets {
            qemu: f("qemu"),
            kernel_package: "linux-image-6.1.0-1-amd64".into(),
            kernel_package_version: "6.1.1-1".into(),
            kernel_release: "6.1.0-1-amd64".into(),
            bzimage: f("vmlinuz"),
            vmlinux: f("vmlinux"),
            initramfs: f("initramfs.cpio.gz"),
            vhost_device_vsock: f("vdv"),
        };
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            serde_json::to_string(&assets).unwrap(),
        )
        .unwrap();
        assert_eq!(Assets::load(dir.path()).unwrap(), assets);
        std::fs::remove_file(&assets.vmlinux).unwrap();
        assert!(matches!(
            Assets::load(dir.path()),
            Err(AssetsError::Missing {
                what: "vmlinux",
                ..
            })
        ));
    }
}
