//! The Debian kernel: download, unpack, `vmlinux` extraction, module selection, and the
//! initramfs built from it and the agent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cpio::CpioWriter;
use crate::modules::{self, ModuleError};
use crate::tools::{self, run, ToolError};

/// The meta-package whose dependency names the current kernel ABI package.
const META_PACKAGE: &str = "linux-image-amd64";

/// Modules the agent loads (dependencies are added from modinfo), and whether each may
/// be missing (built into the kernel). Order matters only among independent modules.
const WANTED: &[(&str, bool)] = &[
    ("virtio_pci", false),
    ("virtio_mmio", true),
    ("virtio_console", true),
    ("vmw_vsock_virtio_transport", false),
    ("button", true),
    ("evdev", true),
];

/// Module groups the agent loads on demand, before the first mount that needs them (never
/// at boot: boot time is benchmarked). Each group is written to `on-demand` as one line,
/// `<group>: a.ko b.ko ...`, its modules with their dependencies first, leaving out those
/// the boot `load-order` already loads. Debian builds all of these as modules; the flag
/// (as in [`WANTED`]) would allow one to be built in.
const ON_DEMAND: &[(&str, &[(&str, bool)])] = &[
    ("overlay", &[("overlay", false)]),
    ("9p", &[("9pnet_virtio", false), ("9p", false)]),
    // erofs needs libcrc32c, whose init asks the crypto API for "crc32c" (a `softdep`,
    // which modinfo's `depends=` does not carry): without the generic implementation
    // loaded first, libcrc32c fails with ENOENT (there is no modprobe in the guest).
    (
        "erofs",
        &[
            ("virtio_blk", false),
            ("crc32c_generic", true),
            ("erofs", false),
        ],
    ),
    ("virtiofs", &[("virtiofs", false)]),
    // The virtio-net NIC of a VM with a network (`spinbox.net.*` kernel arguments); its
    // dependencies (net_failover, failover) come from modinfo.
    ("net", &[("virtio_net", false)]),
];

/// The xz stream magic (`FD 37 7A 58 5A 00`) that starts the bzImage's payload.
const XZ_MAGIC: &[u8] = &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00];

/// Errors of the kernel step.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// An apt/dpkg/xz command failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// The module set could not be resolved.
    #[error(transparent)]
    Modules(#[from] ModuleError),
    /// A file operation failed.
    #[error("cannot {what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The package's contents were not as expected.
    #[error("unexpected kernel package contents: {0}")]
    Layout(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> KernelError + 'a {
    move |source| KernelError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// A provisioned kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The versioned package name.
    pub package: String,
    /// Its version.
    pub version: String,
    /// `uname -r`.
    pub release: String,
    /// The bzImage.
    pub bzimage: PathBuf,
    /// The ELF vmlinux.
    pub vmlinux: PathBuf,
    /// The module directory (`*.ko`, `load-order` and `on-demand`).
    pub modules: PathBuf,
}

/// Resolves the current kernel package and provisions it under `root/<package>_<version>`
/// unless that is already complete.
pub fn provision(root: &Path) -> Result<Kernel, KernelError> {
    let (package, version) = if let Ok(pv) = current_package() {
        pv
    } else {
        // No package lists yet (fresh container): refresh once and ask again.
        tools::apt_update()?;
        current_package()?
    };
    let dir = root.join(format!("{package}_{version}"));
    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let kernel = Kernel {
        package: package.clone(),
        version: version.clone(),
        release: release.clone(),
        bzimage: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        modules: dir.join("modules"),
    };
    // The marker names the module selection it was made for: a changed selection unpacks
    // the package again.
    let done = dir.join(".complete");
    let stamp = wanted_stamp();
    if std::fs::read_to_string(&done).is_ok_and(|s| s == stamp) {
        tracing::info!(%package, %version, "kernel cached");
        return Ok(kernel);
    }
    tracing::info!(%package, %version, "downloading and unpacking the kernel");
    let work = root.join(format!(".work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("create", &work))?;
    let result = unpack_into(&work, &package, &release, &dir, &kernel);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    std::fs::write(&done, stamp).map_err(io("write", &done))?;
    Ok(kernel)
}

/// The module selection, as the cache marker records it.
fn wanted_stamp() -> String {
    let mut stamp = String::new();
    for (name, optional) in WANTED {
        stamp.push_str(name);
        if *optional {
            stamp.push('?');
        }
        stamp.push('\n');
    }
    for (group, modules) in ON_DEMAND {
        stamp.push_str(group);
        stamp.push(':');
        for (name, optional) in *modules {
            stamp.push(' ');
            stamp.push_str(name);
            if *optional {
                stamp.push('?');
            }
        }
        stamp.push('\n');
    }
    stamp
}

/// The package `linux-image-amd64` depends on, and its candidate version.
fn current_package() -> Result<(String, String), KernelError> {
    let out = run(Command::new("apt-cache").args(["depends", META_PACKAGE]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| ToolError::Output {
            command: format!("apt-cache depends {META_PACKAGE}"),
            why: "no linux-image-* dependency".into(),
        })?
        .to_owned();
    let out = run(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| ToolError::Output {
            command: format!("apt-cache show {package}"),
            why: "no Version field".into(),
        })?;
    Ok((package, version))
}

fn unpack_into(
    work: &Path,
    package: &str,
    release: &str,
    dir: &Path,
    kernel: &Kernel,
) -> Result<(), KernelError> {
    run(Command::new("apt-get")
        .args(["download", "-qq", package])
        .current_dir(work))?;
    let deb = std::fs::read_dir(work)
        .map_err(io("read", work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| KernelError::Layout("apt-get download produced no .deb".into()))?;
    let root = work.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;

    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&kernel.modules).map_err(io("create", &kernel.modules))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    std::fs::copy(&vmlinuz, &kernel.bzimage).map_err(io("copy", &vmlinuz))?;
    extract_vmlinux(&kernel.bzimage, &kernel.vmlinux)?;

    let tree_dir = root.join("lib/modules").join(release);
    let tree = modules::index(&tree_dir)?;
    let order = modules::resolve(&tree, WANTED)?;
    let mut list = String::new();
    for (name, path) in &order {
        let file = format!("{name}.ko");
        let dest = kernel.modules.join(&file);
        std::fs::copy(path, &dest).map_err(io("copy", path))?;
        list.push_str(&file);
        list.push('\n');
    }
    let list_path = kernel.modules.join("load-order");
    std::fs::write(&list_path, list).map_err(io("write", &list_path))?;
    tracing::info!(modules = ?order.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "modules selected");

    let at_boot: std::collections::HashSet<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
    let mut groups = String::new();
    for (group, wanted) in ON_DEMAND {
        let modules = modules::resolve(&tree, wanted)?;
        groups.push_str(group);
        groups.push(':');
        for (name, path) in modules
            .iter()
            .filter(|(n, _)| !at_boot.contains(n.as_str()))
        {
            let file = format!("{name}.ko");
            let dest = kernel.modules.join(&file);
            std::fs::copy(path, &dest).map_err(io("copy", path))?;
            groups.push(' ');
            groups.push_str(&file);
        }
        groups.push('\n');
    }
    let groups_path = kernel.modules.join("on-demand");
    std::fs::write(&groups_path, &groups).map_err(io("write", &groups_path))?;
    tracing::info!(%groups, "on-demand module groups");
    Ok(())
}

/// Decompresses the xz payload of `bzimage` (from its magic on; `--single-stream` stops
/// at the stream's end and ignores the trailer after it) into `out`, which must be ELF.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), KernelError> {
    let data = std::fs::read(bzimage).map_err(io("read", bzimage))?;
    let at = data
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .ok_or_else(|| KernelError::Layout("no xz payload in the bzImage".into()))?;
    let out_file = std::fs::File::create(out).map_err(io("create", out))?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(out_file)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Spawn {
            command: "xz -dc".into(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let payload = data[at..].to_vec();
    let writer = std::thread::spawn(move || {
        // xz stops reading at the stream's end: a broken pipe after that is expected.
        let _ = stdin.write_all(&payload);
    });
    let status = child.wait().map_err(|source| ToolError::Spawn {
        command: "xz -dc".into(),
        source,
    })?;
    let _ = writer.join();
    if !status.success() {
        return Err(KernelError::Layout(format!(
            "xz could not decompress the bzImage payload ({status})"
        )));
    }
    let head = std::fs::read(out).map_err(io("read", out))?;
    if !head.starts_with(b"\x7fELF") {
        return Err(KernelError::Layout(
            "the decompressed payload is not ELF".into(),
        ));
    }
    Ok(())
}

/// Builds the initramfs: `/init` (the agent), `/dev/console`, the mount points, and
/// `/lib/modules/{*.ko,load-order,on-demand}`. Written beside `out` and renamed over it.
pub fn write_initramfs(agent: &Path, kernel: &Kernel, out: &Path) -> Result<(), KernelError> {
    let agent_bytes = std::fs::read(agent).map_err(io("read", agent))?;
    let tmp = out.with_extension("tmp");
    let file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    // Uncompressed: the guest would spend more time inflating it (under TCG, ~50 ms of its
    // one vCPU) than QEMU spends copying the extra megabyte.
    let mut w = CpioWriter::new(std::io::BufWriter::new(file));
    let write = |r: std::io::Result<()>| r.map_err(io("write", &tmp));
    for d in ["dev", "proc", "sys", "lib", "lib/modules"] {
        write(w.dir(d, 0o755))?;
    }
    // The kernel opens /dev/console for /init's stdio before devtmpfs is mounted.
    write(w.char_dev("dev/console", 0o600, 5, 1))?;
    write(w.file("init", 0o755, &agent_bytes))?;
    let list_path = kernel.modules.join("load-order");
    let list = std::fs::read_to_string(&list_path).map_err(io("read", &list_path))?;
    let groups_path = kernel.modules.join("on-demand");
    let groups = std::fs::read_to_string(&groups_path).map_err(io("read", &groups_path))?;
    let mut files: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    for line in groups.lines() {
        let (_group, modules) = line.split_once(':').ok_or_else(|| {
            KernelError::Layout(format!(
                "malformed line {line:?} in {}",
                groups_path.display()
            ))
        })?;
        for name in modules.split_whitespace() {
            if !files.contains(&name) {
                files.push(name);
            }
        }
    }
    for name in files {
        let p = kernel.modules.join(name);
        let bytes = std::fs::read(&p).map_err(io("read", &p))?;
        write(w.file(&format!("lib/modules/{name}"), 0o644, &bytes))?;
    }
    write(w.file("lib/modules/load-order", 0o644, list.as_bytes()))?;
    write(w.file("lib/modules/on-demand", 0o644, groups.as_bytes()))?;
    let mut buf = w.finish().map_err(io("write", &tmp))?;
    buf.flush().map_err(io("write", &tmp))?;
    drop(buf);
    std::fs::rename(&tmp, out).map_err(io("rename", &tmp))?;
    Ok(())
}
