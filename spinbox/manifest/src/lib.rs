//! The VM assets manifest: `manifest.json` in an assets directory, written by the
//! provisioner (`spinbox-assets`, run by `scripts/provision`) and read by `spinbox`.
//!
//! The manifest names, by absolute path, QEMU, the Debian kernel (bzImage and the extracted
//! ELF `vmlinux`), the agent initramfs and `vhost-device-vsock`. [`Assets::load`] reads it
//! from a directory the caller names; this crate reads no environment. Finding the
//! directory is the job of the program's edge (a CLI, a test harness), with two helpers:
//! [`ASSETS_ENV`], the variable that conventionally overrides it, and [`dir_beside_exe`],
//! the `assets` directory of the cargo target directory an executable was built in.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable that, by convention, names the assets directory. Read it at
/// the edge of a program and pass the directory to [`Assets::load`].
pub const ASSETS_ENV: &str = "SPINBOX_ASSETS";

/// The manifest's file name inside the assets directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest format [`Assets::to_manifest`] writes and [`Assets::load`] accepts, stored as
/// `"format"` beside the fields of [`Assets`]. Bumped whenever a manifest written before would
/// be misread, so an old one is refused ([`AssetsError::Outdated`]) and provisioned again.
///
/// 2: `initramfs` holds the production agent (no test knobs); `test_initramfs` added.
/// Manifests without the field are format 1.
pub const MANIFEST_FORMAT: u32 = 2;

/// Errors loading the assets.
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
    /// The manifest was written in another format (by an older or newer provisioner).
    #[error(
        "manifest {} has format {found}, this build reads {MANIFEST_FORMAT} \
         (re-run the provisioning: `scripts/provision`)",
        path.display()
    )]
    Outdated {
        /// The manifest's path.
        path: PathBuf,
        /// The format it declares.
        found: u32,
    },
    /// The manifest names no test-agent initramfs ([`Assets::with_test_agent`]).
    #[error(
        "the VM assets have no test-agent initramfs (re-run the provisioning: \
         `scripts/provision`)"
    )]
    NoTestAgent,
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
    /// The gzip'd `newc` initramfs: the production agent as `/init` plus the modules it
    /// loads.
    pub initramfs: PathBuf,
    /// The same initramfs with the agent built with its `test-knobs` feature (it obeys
    /// `spinbox.agent=mute` and `spinbox.agent=stubborn` on the kernel command line), for
    /// fault tests; see [`Assets::with_test_agent`]. `None` where only production assets
    /// were installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_initramfs: Option<PathBuf>,
    /// The `vhost-device-vsock` binary (vhost-user vsock backend).
    pub vhost_device_vsock: PathBuf,
    /// `mkfs.erofs` (Debian's `erofs-utils`), which builds EROFS rootfs images. `None` in
    /// manifests written before the provisioner installed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mkfs_erofs: Option<PathBuf>,
    /// `virtiofsd`, installed only on request (`spinbox-assets --with-virtiofsd`): it is
    /// not a Debian bookworm package and is built from crates.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtiofsd: Option<PathBuf>,
    /// A small container rootfs: a directory holding Debian's static busybox and its
    /// applets, `/etc/passwd` and `/etc/group` (root and `user`, uid 1000). The CLI's
    /// default rootfs and the container tests'. `None` where it was not provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
}

impl Assets {
    /// Reads `<dir>/manifest.json`, checks its [format](MANIFEST_FORMAT) and that every file
    /// it names exists.
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
        // The format first: a manifest of another format may not parse as this one.
        let parse_err = |path: &Path| {
            let path = path.to_owned();
            |source| AssetsError::Parse { path, source }
        };
        let Format { format } = serde_json::from_str(&text).map_err(parse_err(&path))?;
        if format != MANIFEST_FORMAT {
            return Err(AssetsError::Outdated {
                path,
                found: format,
            });
        }
        let assets: Self = serde_json::from_str(&text).map_err(parse_err(&path))?;
        let files = [
            ("QEMU binary", Some(&assets.qemu)),
            ("bzImage", Some(&assets.bzimage)),
            ("vmlinux", Some(&assets.vmlinux)),
            ("initramfs", Some(&assets.initramfs)),
            ("test initramfs", assets.test_initramfs.as_ref()),
            ("vhost-device-vsock", Some(&assets.vhost_device_vsock)),
            ("mkfs.erofs", assets.mkfs_erofs.as_ref()),
            ("virtiofsd", assets.virtiofsd.as_ref()),
            ("busybox rootfs", assets.rootfs.as_ref()),
        ];
        for (what, p) in files {
            if let Some(p) = p.filter(|p| !p.exists()) {
                return Err(AssetsError::Missing {
                    what,
                    path: p.clone(),
                });
            }
        }
        Ok(assets)
    }

    /// The manifest's text: these fields and `"format": MANIFEST_FORMAT`, pretty-printed.
    pub fn to_manifest(&self) -> String {
        #[derive(Serialize)]
        struct Manifest<'a> {
            format: u32,
            #[serde(flatten)]
            assets: &'a Assets,
        }
        serde_json::to_string_pretty(&Manifest {
            format: MANIFEST_FORMAT,
            assets: self,
        })
        .expect("paths and strings serialise")
    }

    /// A copy that boots the test agent: its `initramfs` is [`test_initramfs`]
    /// (`spinbox.agent=mute` and `spinbox.agent=stubborn` then work as kernel arguments).
    /// [`AssetsError::NoTestAgent`] when the manifest names none.
    ///
    /// [`test_initramfs`]: Assets::test_initramfs
    pub fn with_test_agent(&self) -> Result<Assets, AssetsError> {
        let test = self
            .test_initramfs
            .clone()
            .ok_or(AssetsError::NoTestAgent)?;
        Ok(Assets {
            initramfs: test,
            ..self.clone()
        })
    }
}

/// The manifest's format field alone (absent: format 1).
#[derive(Deserialize)]
struct Format {
    #[serde(default = "format_1")]
    format: u32,
}

fn format_1() -> u32 {
    1
}

/// The `assets` directory of the cargo target directory `exe` was built in: for
/// `<target>/debug/spinbox` or `<target>/release/spinbox` it is `<target>/assets`, and so
/// it is for test and example binaries one level down
/// (`<target>/debug/deps/<test>-<hash>`, `<target>/debug/examples/<name>`).
///
/// Only the path is looked at (nothing is read from disk, nothing checks the directory
/// exists). `None` when `exe` is not in a `debug` or `release` profile directory: an
/// installed binary, or one built with a custom profile. A build for an explicit
/// `--target` triple (`<target>/<triple>/release/spinbox`) gives `<target>/<triple>/assets`.
///
/// ```
/// use std::path::Path;
/// use spinbox_manifest::dir_beside_exe;
///
/// assert_eq!(
///     dir_beside_exe(Path::new("/src/spinbox/target/release/spinbox")).as_deref(),
///     Some(Path::new("/src/spinbox/target/assets")),
/// );
/// assert_eq!(dir_beside_exe(Path::new("/usr/bin/spinbox")), None);
/// ```
pub fn dir_beside_exe(exe: &Path) -> Option<PathBuf> {
    let mut dir = exe.parent()?;
    if matches!(
        dir.file_name().and_then(OsStr::to_str),
        Some("deps" | "examples")
    ) {
        dir = dir.parent()?;
    }
    if !matches!(
        dir.file_name().and_then(OsStr::to_str),
        Some("debug" | "release")
    ) {
        return None;
    }
    Some(dir.parent()?.join("assets"))
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
        assert!(err.to_string().contains(ASSETS_ENV));
    }

    /// A manifest in `dir` naming files created there; returns what it records.
    fn provisioned(dir: &Path) -> Assets {
        let f = |n: &str| {
            let p = dir.join(n);
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
            initramfs: f("initramfs.cpio"),
            test_initramfs: Some(f("initramfs-test.cpio")),
            vhost_device_vsock: f("vdv"),
            mkfs_erofs: Some(f("mkfs.erofs")),
            virtiofsd: None,
            rootfs: None,
        };
        std::fs::write(dir.join(MANIFEST_FILE), assets.to_manifest()).unwrap();
        assets
    }

    #[test]
    fn manifest_round_trip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let assets = provisioned(dir.path());
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

    #[test]
    fn manifest_records_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let assets = provisioned(dir.path());
        let json: serde_json::Value = serde_json::from_str(&assets.to_manifest()).unwrap();
        assert_eq!(json["format"], MANIFEST_FORMAT);
        assert_eq!(json["initramfs"], assets.initramfs.to_str().unwrap());
    }

    #[test]
    fn manifest_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let assets = provisioned(dir.path());
        let mut json: serde_json::Value = serde_json::from_str(&assets.to_manifest()).unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        // Format 1 had no field (and no test initramfs); its initramfs held the test knobs.
        json.as_object_mut().unwrap().remove("format");
        json.as_object_mut().unwrap().remove("test_initramfs");
        std::fs::write(&path, json.to_string()).unwrap();
        let err = Assets::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, AssetsError::Outdated { found: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("scripts/provision"), "{err}");
        // A newer format is refused before its fields are looked at.
        std::fs::write(&path, r#"{"format": 3, "renamed": true}"#).unwrap();
        assert!(matches!(
            Assets::load(dir.path()),
            Err(AssetsError::Outdated { found: 3, .. })
        ));
    }

    #[test]
    fn test_agent_swaps_the_initramfs() {
        let dir = tempfile::tempdir().unwrap();
        let assets = provisioned(dir.path());
        let test = assets.with_test_agent().unwrap();
        assert_eq!(Some(&test.initramfs), assets.test_initramfs.as_ref());
        assert_ne!(test.initramfs, assets.initramfs);
        assert_eq!(test.vmlinux, assets.vmlinux);

        let production = Assets {
            test_initramfs: None,
            ..assets.clone()
        };
        std::fs::write(dir.path().join(MANIFEST_FILE), production.to_manifest()).unwrap();
        let loaded = Assets::load(dir.path()).unwrap();
        assert_eq!(loaded, production);
        let err = loaded.with_test_agent().unwrap_err();
        assert!(matches!(err, AssetsError::NoTestAgent));
        assert!(err.to_string().contains("scripts/provision"), "{err}");

        std::fs::write(dir.path().join(MANIFEST_FILE), assets.to_manifest()).unwrap();
        std::fs::remove_file(assets.test_initramfs.as_ref().unwrap()).unwrap();
        assert!(matches!(
            Assets::load(dir.path()),
            Err(AssetsError::Missing {
                what: "test initramfs",
                ..
            })
        ));
    }

    #[test]
    fn dir_beside_exe_finds_the_target_dir() {
        let beside = |exe: &str| dir_beside_exe(Path::new(exe));
        let assets = Some(PathBuf::from("/w/target/assets"));
        assert_eq!(beside("/w/target/debug/spinbox"), assets);
        assert_eq!(beside("/w/target/release/spinbox"), assets);
        assert_eq!(beside("/w/target/debug/deps/vm_agent-0123abcd"), assets);
        assert_eq!(
            beside("/w/target/release/deps/vm_lifecycle-0123abcd"),
            assets
        );
        assert_eq!(beside("/w/target/debug/examples/demo"), assets);
        // CARGO_TARGET_DIR may be anything: the profile directory decides.
        assert_eq!(
            beside("/tmp/build/debug/spinbox"),
            Some(PathBuf::from("/tmp/build/assets"))
        );
        assert_eq!(
            beside("/w/target/x86_64-unknown-linux-musl/release/spinbox"),
            Some(PathBuf::from("/w/target/x86_64-unknown-linux-musl/assets"))
        );
        assert_eq!(
            beside("relative/target/debug/spinbox"),
            Some(PathBuf::from("relative/target/assets"))
        );
    }

    #[test]
    fn dir_beside_exe_refuses_what_is_not_a_cargo_build() {
        for exe in [
            "/usr/bin/spinbox",
            "/usr/local/bin/spinbox",
            "/w/target/agent/spinbox",
            "/w/target/debug/deps/nested/x",
            "/debug",
            "spinbox",
            "",
        ] {
            assert_eq!(dir_beside_exe(Path::new(exe)), None, "{exe}");
        }
    }
}
