//! The typed QEMU configuration and its translation into an argument vector.
//!
//! No shell is involved: every argument is one `OsString`. Values placed inside QEMU's
//! `key=value,key=value` option lists have their commas doubled (QEMU's escape), keys
//! are always written explicitly (so a value containing `=` cannot become a key), and
//! values that QEMU would reinterpret anyway (NUL bytes, commas in `-initrd`) are refused.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::accel::{AccelChoice, Accelerator};
use crate::vm::{check_socket, range, VmId, MAX_SHARE_NAME};

/// Errors in a [`QemuConfig`] or in the paths it is combined with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A QEMU object ID (disk, chardev name) is not `[A-Za-z][A-Za-z0-9_-]*`.
    #[error("invalid {what} {value:?}: must start with a letter and hold only letters, digits, `_` and `-`")]
    InvalidName {
        /// What the name is for.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A value contains a NUL byte, which no argv element can carry.
    #[error("{what} contains a NUL byte")]
    NulByte {
        /// Which value.
        what: &'static str,
    },
    /// A value contains a comma where QEMU offers no escape for it.
    #[error("{what} {value:?} contains a comma, which QEMU would split on")]
    Comma {
        /// Which value.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// A unix socket path is longer than `sun_path` allows.
    #[error(transparent)]
    Socket(#[from] crate::vm::SocketPathError),
    /// The vCPU count or memory size is out of range.
    #[error(transparent)]
    Range(#[from] crate::vm::SpecError),
    /// A mount tag or disk serial is not 1 to [`MAX_SHARE_NAME`] characters of
    /// `[A-Za-z0-9_.-]`.
    #[error("invalid {what} {value:?}: 1 to {MAX_SHARE_NAME} characters of `A-Z a-z 0-9 _ . -`")]
    InvalidGuestName {
        /// What the name is for.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
    /// Hotplug growth room on a machine type without ACPI hotplug.
    #[error("{machine} has no CPU or memory hotplug: use q35 for growth room")]
    NoHotplug {
        /// The machine type.
        machine: &'static str,
    },
    /// An initrd or kernel command line was given without a kernel.
    #[error("{what} given without a kernel")]
    NeedsKernel {
        /// `initrd` or `kernel command line`.
        what: &'static str,
    },
}


/// The QEMU machine type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Machine {
    /// `q35`: PCI Express, ACPI. Devices are attached over PCI.
    Q35,
    /// `microvm`: minimal, virtio-mmio devices, fastest boot.
    Microvm,
    /// `none`: no board, no CPUs, no devices. Starts in milliseconds and serves QMP fully,
    /// which makes it the fixture for QMP and process-lifecycle tests.
    None,
}

impl Machine {
    fn name(&self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
            Machine::None => "none",
        }
    }

    /// Suffix of virtio device models: `-device` on virtio-mmio boards, `-pci` otherwise.
    fn virtio_suffix(&self) -> &'static str {
        match self {
            Machine::Microvm => "device",
            Machine::Q35 | Machine::None => "pci",
        }
    }
}

/// A disk image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image.
    Raw,
    /// A qcow2 image.
    Qcow2,
}

/// A virtio block disk.
///
/// It is attached with `-blockdev driver=file,filename=…`, never `-drive file=…`, because
/// `-drive` treats prefixes such as `nbd:` or `json:` in the file name as protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// QEMU node name: `[A-Za-z][A-Za-z0-9_-]*`; the device's id is `<id>-dev`.
    pub id: String,
    /// Image path (commas are escaped).
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Attach read-only.
    pub read_only: bool,
    /// The serial the guest sees (`/sys/block/vd*/serial`): 1 to [`MAX_SHARE_NAME`]
    /// characters of `[A-Za-z0-9_.-]`.
    pub serial: Option<String>,
}

/// A host filesystem shared with the guest, found there by its mount tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsShare {
    /// QEMU's own 9p server exports `path` (`-fsdev local` + `virtio-9p`).
    ///
    /// The export uses `security_model=none`: the guest sees the host files' real owners
    /// and modes, QEMU reads them with its own credentials, and no extended attribute is
    /// read or written per access (`mapped-xattr` would store the guest's owners and
    /// modes in `user.virtfs.*` attributes: a `getxattr` on every lookup, meaningful only
    /// for a tree written through it, and unusable on a read-only export of an existing
    /// rootfs). Writes are refused when `read_only`. `multidevs=remap` gives every file a
    /// unique inode number in the guest even when the directory spans several host
    /// filesystems (bind mounts), instead of QEMU's default of warning about collisions.
    ///
    /// Sandboxing: QEMU's 9p server answers the guest with plain file system calls
    /// (`openat`, `fstatat`, `preadv`, `getdents64`, `readlinkat`, `fgetxattr`) from its
    /// worker threads, none of which is in `-sandbox`'s denied groups (obsolete calls,
    /// privilege changes, `fork`/`exec`, scheduling and priority), nor in the spawn's own
    /// filter. The spawn leaves QEMU only `CAP_DAC_READ_SEARCH`: enough to read every file of
    /// the export, not to write into files it does not own; read-only exports are what the
    /// rootfs transport uses (a guest overlay takes the writes).
    NineP {
        /// QEMU fsdev id: `[A-Za-z][A-Za-z0-9_-]*`; the device's id is `<id>-dev`.
        id: String,
        /// The mount tag (1 to [`MAX_SHARE_NAME`] characters of `[A-Za-z0-9_.-]`).
        tag: String,
        /// The exported directory (commas are escaped).
        path: PathBuf,
        /// Export read-only.
        read_only: bool,
    },
    /// A `vhost-user-fs` device served by a daemon (e.g. `virtiofsd`) listening on
    /// `socket`; guest memory is made shareable (`memory-backend-memfd,share=on`).
    VhostUserFs {
        /// QEMU chardev id: `[A-Za-z][A-Za-z0-9_-]*`; the device's id is `<id>-dev`.
        id: String,
        /// The mount tag (1 to [`MAX_SHARE_NAME`] characters of `[A-Za-z0-9_.-]`).
        tag: String,
        /// The daemon's socket (relative paths resolve in the state directory).
        socket: PathBuf,
    },
}

/// How the host reaches the agent inside the guest.
///
/// Relative socket paths are resolved inside the VM's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentChannel {
    /// A vhost-user-vsock device whose backend (e.g. `vhost-device-vsock`) listens on
    /// `backend_socket`. Guest memory is made shareable (`memory-backend-memfd,share=on`).
    VhostUserVsock {
        /// The backend's vhost-user socket (the backend must be started before QEMU).
        backend_socket: PathBuf,
    },
}

/// What QEMU does when the guest resets (reboots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReset {
    /// QEMU exits (`-no-reboot`): a guest reboot, a triple fault or ctrl-alt-delete ends
    /// the VM, so a guest that goes down never comes back unnoticed.
    #[default]
    Exit,
    /// The guest reboots and QEMU keeps running: how the Go upstream boots its VMs (for
    /// baselines that reproduce it).
    Reboot,
}

/// Whether to pass `-sandbox on` (QEMU's seccomp filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Enable it when the binary supports it (detected once per binary).
    #[default]
    Auto,
    /// Always enable it (QEMU refuses to start if unsupported).
    On,
    /// Never enable it.
    Off,
}

/// Room for hot-added memory devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHotplug {
    /// Most memory in MiB, boot memory included (`maxmem`), above `memory_mib`.
    pub max_mib: u32,
    /// How many memory devices may be plugged (`slots`, 1–256).
    pub slots: u16,
}

/// A QEMU virtual machine's configuration.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The VM's identifier (names its state directory).
    pub id: VmId,
    /// The QEMU binary (a path or a name looked up in `PATH`).
    pub binary: PathBuf,
    /// The machine type.
    pub machine: Machine,
    /// Accelerator choice; [`AccelChoice::Auto`] probes (see [`super::accel`]).
    pub accel: AccelChoice,
    /// Number of vCPUs (1–255). Not passed for [`Machine::None`].
    pub cpus: u16,
    /// Guest memory in MiB (16–1048576). Not passed for [`Machine::None`].
    pub memory_mib: u32,
    /// Most vCPUs, for hot-added ones (`-smp maxcpus=`); `None` or `cpus` for no room.
    pub max_cpus: Option<u16>,
    /// Room for hot-added memory (`-m slots=,maxmem=`); `None` for no room.
    pub memory_hotplug: Option<MemoryHotplug>,
    /// Kernel image for direct boot.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (one argv element; any text but NUL).
    pub cmdline: Option<String>,
    /// Disks.
    pub disks: Vec<Disk>,
    /// Shared filesystems.
    pub fs_shares: Vec<FsShare>,
    /// Network interfaces: `-netdev tap,fd=N` with a virtio-net device each, named
    /// `net<i>`; the descriptors must stay open until QEMU has started, which inherits
    /// them.
    pub nics: Vec<crate::vm::NetworkDevice>,
    /// Agent channel.
    pub agent: Option<AgentChannel>,
    /// Seccomp sandbox.
    pub sandbox: SandboxMode,
    /// What a guest reset does (default: QEMU exits).
    pub on_reset: OnReset,
    /// Firmware image for `-bios` (a path, or a file name QEMU looks up in its data
    /// directories); `None` for QEMU's default (`SeaBIOS` on q35).
    pub firmware: Option<PathBuf>,
}

impl QemuConfig {
    /// A configuration with defaults: `qemu-system-x86_64`, q35, automatic accelerator,
    /// 1 vCPU, 256 MiB, no kernel, no disks, no agent, sandbox when supported, QEMU exits
    /// when the guest resets.
    pub fn new(id: VmId) -> Self {
        Self {
            id,
            binary: PathBuf::from("qemu-system-x86_64"),
            machine: Machine::Q35,
            accel: AccelChoice::Auto,
            cpus: 1,
            memory_mib: 256,
            max_cpus: None,
            memory_hotplug: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            disks: Vec::new(),
            fs_shares: Vec::new(),
            nics: Vec::new(),
            agent: None,
            sandbox: SandboxMode::Auto,
            on_reset: OnReset::Exit,
            firmware: None,
        }
    }

    /// Checks everything that does not depend on the host or the state directory.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.machine != Machine::None {
            // QEMU's own bounds; the guest's floor (`MIN_MEMORY_MIB`) is checked on the spec.
            range(
                "vCPU count",
                self.cpus.into(),
                crate::vm::MIN_CPUS.into(),
                crate::vm::MAX_CPUS.into(),
            )?;
            range(
                "memory (MiB)",
                self.memory_mib.into(),
                16,
                crate::vm::MAX_MEMORY_MIB.into(),
            )?;
            if let Some(max) = self.max_cpus {
                range(
                    "maximum vCPU count",
                    max.into(),
                    self.cpus.into(),
                    crate::vm::MAX_CPUS.into(),
                )?;
            }
            if let Some(m) = self.memory_hotplug {
                range(
                    "maximum memory (MiB)",
                    m.max_mib.into(),
                    u64::from(self.memory_mib) + 1,
                    crate::vm::MAX_MEMORY_MIB.into(),
                )?;
                range(
                    "memory slots",
                    m.slots.into(),
                    1,
                    crate::vm::MAX_MEMORY_SLOTS.into(),
                )?;
            }
            if self.has_hotplug_room() && self.machine != Machine::Q35 {
                return Err(ConfigError::NoHotplug {
                    machine: self.machine.name(),
                });
            }
        }
        no_nul("QEMU binary", self.binary.as_os_str())?;
        if let Some(f) = &self.firmware {
            no_nul("firmware path", f.as_os_str())?;
        }
        if let Some(k) = &self.kernel {
            no_nul("kernel path", k.as_os_str())?;
        }
        if let Some(i) = &self.initrd {
            if self.kernel.is_none() {
                return Err(ConfigError::NeedsKernel { what: "initrd" });
            }
            no_nul("initrd path", i.as_os_str())?;
            // `-initrd` splits on commas for multiboot modules and has no escape.
            if i.as_os_str().as_bytes().contains(&b',') {
                return Err(ConfigError::Comma {
                    what: "initrd path",
                    value: i.display().to_string(),
                });
            }
        }
        if let Some(c) = &self.cmdline {
            if self.kernel.is_none() {
                return Err(ConfigError::NeedsKernel {
                    what: "kernel command line",
                });
            }
            no_nul("kernel command line", OsStr::new(c))?;
        }
        for d in &self.disks {
            qemu_name("disk id", &d.id)?;
            no_nul("disk path", d.path.as_os_str())?;
            if let Some(serial) = &d.serial {
                guest_name("disk serial", serial)?;
            }
        }
        for f in &self.fs_shares {
            match f {
                FsShare::NineP { id, tag, path, .. } => {
                    qemu_name("9p share id", id)?;
                    guest_name("9p mount tag", tag)?;
                    no_nul("9p directory", path.as_os_str())?;
                }
                FsShare::VhostUserFs { id, tag, socket } => {
                    qemu_name("virtiofs share id", id)?;
                    guest_name("virtiofs mount tag", tag)?;
                    no_nul("virtiofs socket", socket.as_os_str())?;
                }
            }
        }
        match &self.agent {
            Some(AgentChannel::VhostUserVsock { backend_socket }) => {
                no_nul("vhost-user socket", backend_socket.as_os_str())?;
            }
            None => {}
        }
        Ok(())
    }

    /// Whether vCPUs or memory may be hot-added.
    pub fn has_hotplug_room(&self) -> bool {
        self.max_cpus.is_some_and(|m| m > self.cpus) || self.memory_hotplug.is_some()
    }

    /// Builds QEMU's argument vector (without the binary itself).
    ///
    /// `paths` says where the state directory's files are; `host` carries the resolved
    /// accelerator and sandbox support. Pure: no I/O, so it is unit- and property-tested.
    pub fn to_argv(
        &self,
        paths: &RuntimePaths,
        host: HostFeatures,
    ) -> Result<Vec<OsString>, ConfigError> {
        self.validate()?;
        let mut a = Argv::default();
        a.flag("-nodefaults");
        a.flag("-no-user-config");
        if self.on_reset == OnReset::Exit {
            a.flag("-no-reboot");
        }
        a.opt("-display", "none");
        if let Some(f) = &self.firmware {
            a.opt("-bios", f.as_os_str());
        }
        a.opt("-name", KeyVal::new().kv("guest", self.id.as_str()).build());

        let mut machine = KeyVal::new().kv("type", self.machine.name());
        let shared_memory = self.needs_shared_memory();
        if shared_memory {
            machine = machine.kv("memory-backend", "mem");
        }
        a.opt("-machine", machine.build());
        a.opt(
            "-accel",
            KeyVal::new()
                .kv("accel", host.accelerator.qemu_name())
                .build(),
        );
        if self.machine != Machine::None {
            a.opt("-cpu", host.accelerator.cpu_model());
            let mut smp = KeyVal::new().kv("cpus", &self.cpus.to_string());
            if let Some(max) = self.max_cpus.filter(|&m| m > self.cpus) {
                smp = smp.kv("maxcpus", &max.to_string());
            }
            a.opt("-smp", smp.build());
            let mut m = KeyVal::new().kv("size", &format!("{}M", self.memory_mib));
            if let Some(h) = self.memory_hotplug {
                m = m
                    .kv("slots", &h.slots.to_string())
                    .kv("maxmem", &format!("{}M", h.max_mib));
            }
            a.opt("-m", m.build());
        }
        if shared_memory {
            a.opt(
                "-object",
                KeyVal::with_head("memory-backend-memfd")
                    .kv("id", "mem")
                    .kv("size", &format!("{}M", self.memory_mib))
                    .kv("share", "on")
                    .build(),
            );
        }
        if host.sandbox {
            a.opt(
                "-sandbox",
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            );
        }
        if let Some(k) = &self.kernel {
            a.opt("-kernel", k.as_os_str());
        }
        if let Some(i) = &self.initrd {
            a.opt("-initrd", i.as_os_str());
        }
        if let Some(c) = &self.cmdline {
            a.opt("-append", c.as_str());
        }

        // Serial console → log file.
        a.opt(
            "-chardev",
            KeyVal::with_head("file")
                .kv("id", "serial0")
                .kv_os("path", paths.serial_log.as_os_str())
                .build(),
        );
        a.opt("-serial", "chardev:serial0");

        // QMP: QEMU connects to a socket the host already listens on, so the host never
        // polls for a socket to appear and an early exit is seen as an exit, not a timeout.
        check_socket(&paths.qmp_socket)?;
        a.opt(
            "-chardev",
            KeyVal::with_head("socket")
                .kv("id", "qmp")
                .kv_os("path", paths.qmp_socket.as_os_str())
                .build(),
        );
        a.opt(
            "-mon",
            KeyVal::new()
                .kv("chardev", "qmp")
                .kv("mode", "control")
                .build(),
        );

        self.push_disks(&mut a);
        self.push_fs_shares(&mut a, paths)?;
        self.push_nics(&mut a);
        self.push_agent(&mut a, paths)?;
        Ok(a.0)
    }

    /// The descriptors QEMU must inherit (the NICs' TAP devices).
    pub fn inherited_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.nics.iter().map(|n| n.tap.raw()).collect()
    }

    fn push_nics(&self, a: &mut Argv) {
        let suffix = self.machine.virtio_suffix();
        for (i, nic) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            a.opt(
                "-netdev",
                KeyVal::with_head("tap")
                    .kv("id", &id)
                    .kv("fd", &nic.tap.raw().to_string())
                    .build(),
            );
            let mut device = KeyVal::new()
                .kv("driver", &format!("virtio-net-{suffix}"))
                .kv("id", &format!("{id}-dev"))
                .kv("netdev", &id)
                .kv("mac", &spinbox_protocol::net::format_mac(nic.mac));
            if suffix == "pci" {
                // No PXE option ROM: nothing boots from the network, and the ROM file is
                // one more thing the host would need.
                device = device.kv("romfile", "");
            }
            a.opt("-device", device.build());
        }
    }

    /// Whether a vhost-user device is attached: its daemon maps guest memory, which must
    /// then be a shareable memfd.
    pub fn needs_shared_memory(&self) -> bool {
        matches!(self.agent, Some(AgentChannel::VhostUserVsock { .. }))
            || self
                .fs_shares
                .iter()
                .any(|f| matches!(f, FsShare::VhostUserFs { .. }))
    }

    fn push_fs_shares(&self, a: &mut Argv, paths: &RuntimePaths) -> Result<(), ConfigError> {
        let suffix = self.machine.virtio_suffix();
        for f in &self.fs_shares {
            match f {
                FsShare::NineP {
                    id,
                    tag,
                    path,
                    read_only,
                } => {
                    let mut fsdev = KeyVal::with_head("local")
                        .kv("id", id)
                        .kv_os("path", path.as_os_str())
                        .kv("security_model", "none")
                        .kv("multidevs", "remap");
                    if *read_only {
                        fsdev = fsdev.kv("readonly", "on");
                    }
                    a.opt("-fsdev", fsdev.build());
                    a.opt(
                        "-device",
                        KeyVal::new()
                            .kv("driver", &format!("virtio-9p-{suffix}"))
                            .kv("id", &format!("{id}-dev"))
                            .kv("fsdev", id)
                            .kv("mount_tag", tag)
                            .build(),
                    );
                }
                FsShare::VhostUserFs { id, tag, socket } => {
                    let p = paths.resolve(socket);
                    check_socket(&p)?;
                    a.opt(
                        "-chardev",
                        KeyVal::with_head("socket")
                            .kv("id", id)
                            .kv_os("path", p.as_os_str())
                            .build(),
                    );
                    a.opt(
                        "-device",
                        KeyVal::new()
                            .kv("driver", &format!("vhost-user-fs-{suffix}"))
                            .kv("id", &format!("{id}-dev"))
                            .kv("chardev", id)
                            .kv("tag", tag)
                            .build(),
                    );
                }
            }
        }
        Ok(())
    }

    fn push_disks(&self, a: &mut Argv) {
        let suffix = self.machine.virtio_suffix();
        for d in &self.disks {
            let file_node = format!("{}-file", d.id);
            let ro = if d.read_only { "on" } else { "off" };
            a.opt(
                "-blockdev",
                KeyVal::new()
                    .kv("driver", "file")
                    .kv("node-name", &file_node)
                    .kv_os("filename", d.path.as_os_str())
                    .kv("read-only", ro)
                    .build(),
            );
            let fmt = match d.format {
                DiskFormat::Raw => "raw",
                DiskFormat::Qcow2 => "qcow2",
            };
            a.opt(
                "-blockdev",
                KeyVal::new()
                    .kv("driver", fmt)
                    .kv("node-name", &d.id)
                    .kv("file", &file_node)
                    .kv("read-only", ro)
                    .build(),
            );
            let mut device = KeyVal::new()
                .kv("driver", &format!("virtio-blk-{suffix}"))
                .kv("id", &format!("{}-dev", d.id))
                .kv("drive", &d.id);
            if let Some(serial) = &d.serial {
                device = device.kv("serial", serial);
            }
            a.opt("-device", device.build());
        }
    }

    fn push_agent(&self, a: &mut Argv, paths: &RuntimePaths) -> Result<(), ConfigError> {
        let suffix = self.machine.virtio_suffix();
        match &self.agent {
            Some(AgentChannel::VhostUserVsock { backend_socket }) => {
                let p = paths.resolve(backend_socket);
                check_socket(&p)?;
                a.opt(
                    "-chardev",
                    KeyVal::with_head("socket")
                        .kv("id", "agent")
                        .kv_os("path", p.as_os_str())
                        .build(),
                );
                a.opt(
                    "-device",
                    KeyVal::new()
                        .kv("driver", &format!("vhost-user-vsock-{suffix}"))
                        .kv("chardev", "agent")
                        .build(),
                );
            }
            None => {}
        }
        Ok(())
    }
}

/// Where the VM's runtime files live (normally taken from its state directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePaths {
    /// The state directory (relative agent socket paths resolve against it).
    pub dir: PathBuf,
    /// The QMP socket the host listens on.
    pub qmp_socket: PathBuf,
    /// The serial console log.
    pub serial_log: PathBuf,
}

impl RuntimePaths {
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.dir.join(p)
        }
    }
}

/// Facts about the host and binary that shape the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFeatures {
    /// The accelerator to use.
    pub accelerator: Accelerator,
    /// Whether to pass `-sandbox on`.
    pub sandbox: bool,
}

fn no_nul(what: &'static str, v: &OsStr) -> Result<(), ConfigError> {
    if v.as_bytes().contains(&0) {
        Err(ConfigError::NulByte { what })
    } else {
        Ok(())
    }
}

/// A name the guest sees (a mount tag, a disk serial).
fn guest_name(what: &'static str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= MAX_SHARE_NAME
        && v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidGuestName {
            what,
            value: v.to_owned(),
        })
    }
}

fn qemu_name(what: &'static str, v: &str) -> Result<(), ConfigError> {
    let mut chars = v.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && v.len() <= 64;
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidName {
            what,
            value: v.to_owned(),
        })
    }
}

/// Escapes a value for a QEMU option list: every `,` becomes `,,`.
pub fn escape_value(v: &OsStr) -> OsString {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + 4);
    for &b in bytes {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// Builds a `key=value,…` option list with escaped values.
struct KeyVal(OsString);

impl KeyVal {
    fn new() -> Self {
        Self(OsString::new())
    }

    /// Starts with a constant implied value (a backend or object type chosen by this code).
    fn with_head(head: &'static str) -> Self {
        Self(OsString::from(head))
    }

    fn kv(self, key: &'static str, value: &str) -> Self {
        self.kv_os(key, OsStr::new(value))
    }

    fn kv_os(mut self, key: &'static str, value: &OsStr) -> Self {
        if !self.0.is_empty() {
            self.0.push(",");
        }
        self.0.push(key);
        self.0.push("=");
        self.0.push(escape_value(value));
        self
    }

    fn build(self) -> OsString {
        self.0
    }
}

#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn flag(&mut self, f: &'static str) {
        self.0.push(f.into());
    }
    fn opt(&mut self, o: &'static str, v: impl Into<OsString>) {
        self.0.push(o.into());
        self.0.push(v.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn paths() -> RuntimePaths {
        RuntimePaths {
            dir: "/run/spinbox/vm".into(),
            qmp_socket: "/run/spinbox/vm/qmp.sock".into(),
            serial_log: "/run/spinbox/vm/console.log".into(),
        }
    }

    fn host() -> HostFeatures {
        HostFeatures {
            accelerator: Accelerator::Tcg,
            sandbox: true,
        }
    }

    /// Splits a QEMU option list the way QEMU does: `,,` is a literal comma, a single `,`
    /// ends a pair, the first `=` separates key from value.
    fn parse_keyval(s: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut pairs = Vec::new();
        let mut cur = Vec::new();
        let mut i = 0;
        let mut items = Vec::new();
        while i < s.len() {
            if s[i] == b',' {
                if s.get(i + 1) == Some(&b',') {
                    cur.push(b',');
                    i += 2;
                    continue;
                }
                items.push(std::mem::take(&mut cur));
            } else {
                cur.push(s[i]);
            }
            i += 1;
        }
        items.push(cur);
        for it in items {
            // QEMU splits the key at the first `=` of the *raw* text; escaped commas
            // never occur in keys here, so splitting the unescaped item is equivalent.
            match it.iter().position(|&b| b == b'=') {
                Some(p) => pairs.push((it[..p].to_vec(), it[p + 1..].to_vec())),
                None => pairs.push((Vec::new(), it)),
            }
        }
        pairs
    }

    fn config_with(path: &Path, text: String, id: &str) -> QemuConfig {
        let mut c = QemuConfig::new(VmId::new(id).unwrap());
        c.kernel = Some(path.to_owned());
        c.cmdline = Some(text);
        c.disks.push(Disk {
            id: "root".into(),
            path: path.to_owned(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: None,
        });
        c.agent = Some(AgentChannel::VhostUserVsock {
            backend_socket: "vhost.sock".into(),
        });
        c
    }

    #[test]
    fn argv_has_the_safety_flags_and_no_shell() {
        let c = config_with(Path::new("/img/root.raw"), "console=ttyS0".into(), "vm1");
        let argv = c.to_argv(&paths(), host()).unwrap();
        let s: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for f in ["-nodefaults", "-no-user-config", "-no-reboot"] {
            assert!(s.iter().any(|a| a == f), "{f} missing in {s:?}");
        }
        assert!(s
            .windows(2)
            .any(|w| w[0] == "-accel" && w[1] == "accel=tcg"));
        assert!(s.windows(2).any(|w| w[0] == "-cpu" && w[1] == "max"));
        assert!(s.iter().any(|a| a.starts_with("on,")));
        assert!(s
            .iter()
            .any(|a| a == "socket,id=qmp,path=/run/spinbox/vm/qmp.sock"));
        assert!(s
            .iter()
            .any(|a| a == "socket,id=agent,path=/run/spinbox/vm/vhost.sock"));
    }

    #[test]
    fn kvm_uses_host_cpu_and_sandbox_is_optional() {
        let c = QemuConfig::new(VmId::new("a").unwrap());
        let argv = c
            .to_argv(
                &paths(),
                HostFeatures {
                    accelerator: Accelerator::Kvm,
                    sandbox: false,
                },
            )
            .unwrap();
        assert!(argv.windows(2).any(|w| w[0] == "-cpu" && w[1] == "host"));
        assert!(!argv.iter().any(|a| a == "-sandbox"));
    }

    #[test]
    fn commas_in_paths_are_doubled() {
        let c = config_with(Path::new("/img/a,b,driver=nbd"), "x".into(), "vm1");
        let argv = c.to_argv(&paths(), host()).unwrap();
        let bd = argv
            .iter()
            .find(|a| a.to_string_lossy().contains("filename="))
            .unwrap();
        assert_eq!(
            bd.to_string_lossy(),
            "driver=file,node-name=root-file,filename=/img/a,,b,,driver=nbd,read-only=on"
        );
        let pairs = parse_keyval(bd.as_bytes());
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[2].1, b"/img/a,b,driver=nbd");
    }

    #[test]
    fn refusals() {
        let mut c = QemuConfig::new(VmId::new("a").unwrap());
        c.initrd = Some("/x".into());
        assert_eq!(
            c.validate(),
            Err(ConfigError::NeedsKernel { what: "initrd" })
        );
        c.kernel = Some("/k".into());
        c.initrd = Some("/x,y".into());
        assert!(matches!(c.validate(), Err(ConfigError::Comma { .. })));
        c.initrd = None;
        c.cmdline = Some("a\0b".into());
        assert!(matches!(c.validate(), Err(ConfigError::NulByte { .. })));
        c.cmdline = None;
        c.kernel = Some(PathBuf::from(OsString::from_vec(b"/k\0".to_vec())));
        assert!(matches!(c.validate(), Err(ConfigError::NulByte { .. })));
        c.kernel = None;
        c.disks.push(Disk {
            id: "bad,id".into(),
            path: "/d".into(),
            format: DiskFormat::Qcow2,
            read_only: false,
            serial: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::InvalidName { .. })));
        c.disks.clear();
        c.cpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Range(_))));
        c.cpus = 1;
        c.agent = Some(AgentChannel::VhostUserVsock {
            backend_socket: PathBuf::from(OsString::from_vec(b"s\0".to_vec())),
        });
        assert!(matches!(c.validate(), Err(ConfigError::NulByte { .. })));
    }

    #[test]
    fn growth_room_becomes_maxcpus_slots_and_maxmem() {
        let mut c = config_with(Path::new("/img/root.raw"), "console=ttyS0".into(), "vm1");
        let opt = |c: &QemuConfig, name: &str| -> String {
            let argv = c.to_argv(&paths(), host()).unwrap();
            let i = argv.iter().position(|a| a == name).unwrap();
            argv[i + 1].to_string_lossy().into_owned()
        };
        assert_eq!(opt(&c, "-smp"), "cpus=1");
        assert_eq!(opt(&c, "-m"), "size=256M");
        // A maximum equal to the boot count is no room.
        c.max_cpus = Some(1);
        assert_eq!(opt(&c, "-smp"), "cpus=1");
        c.max_cpus = Some(4);
        c.memory_hotplug = Some(MemoryHotplug {
            max_mib: 1024,
            slots: 3,
        });
        assert_eq!(opt(&c, "-smp"), "cpus=1,maxcpus=4");
        assert_eq!(opt(&c, "-m"), "size=256M,slots=3,maxmem=1024M");
        assert!(c.has_hotplug_room());

        c.max_cpus = Some(0);
        assert!(matches!(c.validate(), Err(ConfigError::Range(_))));
        c.max_cpus = Some(2);
        for (max_mib, slots) in [(256, 1), (1024, 0), (1024, 257)] {
            c.memory_hotplug = Some(MemoryHotplug { max_mib, slots });
            assert!(matches!(c.validate(), Err(ConfigError::Range(_))), "{max_mib} {slots}");
        }
        c.memory_hotplug = None;
        c.machine = Machine::Microvm;
        assert_eq!(
            c.validate(),
            Err(ConfigError::NoHotplug { machine: "microvm" })
        );
    }

    #[test]
    fn a_nic_is_a_tap_netdev_by_fd_with_a_virtio_net_device() {
        let mut c = config_with(Path::new("/img/root.raw"), "console=ttyS0".into(), "vm1");
        let tap = crate::vm::TapFd::new(std::fs::File::open("/dev/null").unwrap().into());
        let fd = tap.raw();
        c.nics.push(crate::vm::NetworkDevice {
            tap,
            mac: [0x52, 0x54, 0, 0xab, 0xcd, 0x0e],
        });
        let argv: Vec<String> = c
            .to_argv(&paths(), host())
            .unwrap()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let after = |name: &str, prefix: &str| {
            argv.windows(2)
                .find(|w| w[0] == name && w[1].starts_with(prefix))
                .map_or_else(|| panic!("no {name} {prefix}…: {argv:?}"), |w| w[1].clone())
        };
        assert_eq!(after("-netdev", "tap"), format!("tap,id=net0,fd={fd}"));
        assert_eq!(
            after("-device", "driver=virtio-net"),
            "driver=virtio-net-pci,id=net0-dev,netdev=net0,mac=52:54:00:ab:cd:0e,romfile="
        );
        assert_eq!(c.inherited_fds(), vec![fd]);
        c.machine = Machine::Microvm;
        let argv = c.to_argv(&paths(), host()).unwrap();
        assert!(argv
            .iter()
            .any(|a| a.to_string_lossy().starts_with("driver=virtio-net-device,")));
    }

    #[test]
    fn long_socket_paths_are_a_clear_error() {
        let c = QemuConfig::new(VmId::new("a").unwrap());
        let dir = PathBuf::from(format!("/{}", "d".repeat(120)));
        let p = RuntimePaths {
            qmp_socket: dir.join("qmp.sock"),
            serial_log: dir.join("console.log"),
            dir,
        };
        let err = c.to_argv(&p, host()).unwrap_err();
        assert!(matches!(err, ConfigError::Socket(_)));
        assert!(err.to_string().contains("107"));
        let ok = PathBuf::from(format!("/{}", "s".repeat(106)));
        assert!(check_socket(&ok).is_ok());
        assert!(check_socket(&PathBuf::from(format!("/{}", "s".repeat(107)))).is_err());
    }

    #[test]
    fn shares_become_fsdev_blockdev_and_vhost_user_fs_with_shared_memory() {
        let mut c = QemuConfig::new(VmId::new("a").unwrap());
        c.disks.push(Disk {
            id: "share1".into(),
            path: "/w/r.erofs".into(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: Some("ctr-1".into()),
        });
        c.fs_shares.push(FsShare::NineP {
            id: "share0".into(),
            tag: "root.fs".into(),
            path: "/srv/a,b".into(),
            read_only: true,
        });
        let argv = c.to_argv(&paths(), host()).unwrap();
        let s: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pair = |o: &str, v: &str| s.windows(2).any(|w| w[0] == o && w[1] == v);
        assert!(
            pair(
                "-fsdev",
                "local,id=share0,path=/srv/a,,b,security_model=none,multidevs=remap,readonly=on"
            ),
            "{s:?}"
        );
        assert!(pair(
            "-device",
            "driver=virtio-9p-pci,id=share0-dev,fsdev=share0,mount_tag=root.fs"
        ));
        assert!(pair(
            "-device",
            "driver=virtio-blk-pci,id=share1-dev,drive=share1,serial=ctr-1"
        ));
        // No vhost-user device: guest memory stays private.
        assert!(!c.needs_shared_memory());
        assert!(!s.iter().any(|a| a.starts_with("memory-backend-memfd")));

        c.fs_shares.push(FsShare::VhostUserFs {
            id: "share2".into(),
            tag: "vfs".into(),
            socket: "/w/v.sock".into(),
        });
        assert!(c.needs_shared_memory());
        let argv = c.to_argv(&paths(), host()).unwrap();
        let s: Vec<String> = argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let pair = |o: &str, v: &str| s.windows(2).any(|w| w[0] == o && w[1] == v);
        assert!(pair("-chardev", "socket,id=share2,path=/w/v.sock"), "{s:?}");
        assert!(pair(
            "-device",
            "driver=vhost-user-fs-pci,id=share2-dev,chardev=share2,tag=vfs"
        ));
        assert!(pair("-machine", "type=q35,memory-backend=mem"));
        assert!(pair(
            "-object",
            "memory-backend-memfd,id=mem,size=256M,share=on"
        ));
        // A writable 9p export has no `readonly` key.
        c.fs_shares[0] = FsShare::NineP {
            id: "share0".into(),
            tag: "t".into(),
            path: "/srv".into(),
            read_only: false,
        };
        let argv = c.to_argv(&paths(), host()).unwrap();
        assert!(argv
            .iter()
            .any(|a| a == "local,id=share0,path=/srv,security_model=none,multidevs=remap"));
    }

    #[test]
    fn bad_tags_serials_and_share_ids_are_refused() {
        let base = QemuConfig::new(VmId::new("a").unwrap());
        let nine_p = |id: &str, tag: &str| FsShare::NineP {
            id: id.into(),
            tag: tag.into(),
            path: "/srv".into(),
            read_only: true,
        };
        for (share, what) in [
            (nine_p("share0", "a,b"), "9p mount tag"),
            (nine_p("share0", ""), "9p mount tag"),
            (nine_p("share0", &"t".repeat(21)), "9p mount tag"),
            (nine_p("share0", "a b"), "9p mount tag"),
            (nine_p("0share", "t"), "9p share id"),
            (
                FsShare::VhostUserFs {
                    id: "v".into(),
                    tag: "x=y".into(),
                    socket: "/s".into(),
                },
                "virtiofs mount tag",
            ),
        ] {
            let mut c = base.clone();
            c.fs_shares.push(share);
            let e = c.validate().unwrap_err();
            let got = match &e {
                ConfigError::InvalidGuestName { what, .. } | ConfigError::InvalidName { what, .. } => *what,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, what, "{e}");
        }
        let mut c = base.clone();
        c.disks.push(Disk {
            id: "d".into(),
            path: "/d".into(),
            format: DiskFormat::Raw,
            read_only: true,
            serial: Some("s,drive=x".into()),
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InvalidGuestName { what: "disk serial", .. })
        ));
        let mut c = base;
        c.fs_shares.push(FsShare::NineP {
            id: "s".into(),
            tag: "t".into(),
            path: PathBuf::from(OsString::from_vec(b"/a\0b".to_vec())),
            read_only: true,
        });
        assert_eq!(
            c.validate(),
            Err(ConfigError::NulByte {
                what: "9p directory"
            })
        );
    }

    /// Option names whose values are option lists, with the keys each may carry.
    fn expected_keys(opt: &str, value: &[u8]) -> Option<&'static [&'static str]> {
        Some(match opt {
            "-name" => &["guest"],
            "-machine" => &["type", "memory-backend"],
            "-accel" => &["accel"],
            "-smp" => &["cpus", "maxcpus"],
            "-m" => &["size", "slots", "maxmem"],
            "-mon" => &["chardev", "mode"],
            "-blockdev" => &["driver", "node-name", "filename", "file", "read-only"],
            "-device" => &[
                "driver", "drive", "chardev", "id", "name", "serial", "fsdev", "mount_tag", "tag",
            ],
            "-fsdev" => &["", "id", "path", "security_model", "multidevs", "readonly"],
            "-chardev" if value.starts_with(b"file,") => &["", "id", "path"],
            "-chardev" => &["", "id", "path", "server", "wait"],
            "-object" => &["", "id", "size", "share"],
            _ => return None,
        })
    }

    /// Bytes mostly from the alphabet a caller would use, mixed with the characters QEMU's
    /// parsers treat specially (`,` `=`, spaces, quotes, newlines) and arbitrary bytes; in
    /// about one case in four, a NUL at a random place.
    fn hostile_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        let bytes = proptest::collection::vec(
            prop_oneof![
                6 => proptest::sample::select(b"abcdefghijklmnopqrstuvwxyz0123456789/._-".to_vec()),
                2 => proptest::sample::select(b",,= \"'\n\\:".to_vec()),
                1 => 1..=u8::MAX,
            ],
            1..max,
        );
        (bytes, proptest::option::weighted(0.25, any::<proptest::sample::Index>())).prop_map(
            |(mut bytes, nul)| {
                if let Some(at) = nul {
                    bytes.insert(at.index(bytes.len() + 1), 0);
                }
                bytes
            },
        )
    }

    /// A string in the same spirit, from `alphabet` mostly (hostile characters include
    /// non-ASCII; a NUL in about one case in four).
    fn hostile_text(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
        let chars = proptest::collection::vec(
            prop_oneof![
                12 => proptest::sample::select(alphabet.chars().collect::<Vec<_>>()),
                2 => proptest::sample::select(vec![',', '=', '"', '\'', '\n', 'é', '\u{202e}']),
                1 => any::<char>().prop_filter("NUL is placed separately", |c| *c != '\0'),
            ],
            0..max,
        );
        (chars, proptest::option::weighted(0.25, any::<proptest::sample::Index>())).prop_map(
            |(mut chars, nul)| {
                if let Some(at) = nul {
                    chars.insert(at.index(chars.len() + 1), '\0');
                }
                chars.into_iter().collect()
            },
        )
    }

    /// The refusal `to_argv` must give for these inputs, by the documented rules (checked in
    /// this order: kernel path, command line, 9p mount tag, vhost-user socket), or `None` if
    /// it must build an argv.
    fn expected_refusal(path: &Path, text: &str, tag: &str, socket: &Path) -> Option<ConfigError> {
        if path.as_os_str().as_bytes().contains(&0) {
            return Some(ConfigError::NulByte { what: "kernel path" });
        }
        if text.contains('\0') {
            return Some(ConfigError::NulByte {
                what: "kernel command line",
            });
        }
        let tag_ok = !tag.is_empty()
            && tag.len() <= MAX_SHARE_NAME
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !tag_ok {
            return Some(ConfigError::InvalidGuestName {
                what: "9p mount tag",
                value: tag.to_owned(),
            });
        }
        check_socket(socket).err().map(ConfigError::Socket)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever a caller puts in paths, command lines and mount tags, the argv is either
        /// refused with exactly the error the rules name, or every option list in it carries
        /// only the keys this module writes and each escaped value reads back exactly as
        /// given. Every case reaches an assertion.
        #[test]
        fn no_input_introduces_an_option_key(
            path in hostile_bytes(140),
            text in hostile_text("abcdefghijklmnopqrstuvwxyz0123456789=. ", 80),
            tag in hostile_text("abcdefghijklmnopqrstuvwxyz0123456789._-", 24),
        ) {
            let path = PathBuf::from(OsString::from_vec(path));
            let mut c = config_with(&path, text.clone(), "vm1");
            c.agent = Some(AgentChannel::VhostUserVsock { backend_socket: path.clone() });
            c.fs_shares.push(FsShare::NineP {
                id: "share0".into(),
                tag: tag.clone(),
                path: path.clone(),
                read_only: true,
            });
            let socket = paths().resolve(&path);
            let result = c.to_argv(&paths(), host());
            match (expected_refusal(&path, &text, &tag, &socket), result) {
                (Some(expected), Err(got)) => {
                    prop_assert_eq!(got.to_string(), expected.to_string());
                }
                (Some(expected), Ok(argv)) => {
                    prop_assert!(false, "expected {expected:?}, got an argv {argv:?}");
                }
                (None, Err(got)) => prop_assert!(false, "refused a valid input: {got:?}"),
                (None, Ok(argv)) => {
                    let mut checked_filename = false;
                    let mut checked_share = (false, false);
                    let mut i = 0;
                    while i < argv.len() {
                        let opt = argv[i].to_string_lossy().into_owned();
                        prop_assert!(opt.starts_with('-'), "value where an option belongs: {opt}");
                        if matches!(opt.as_str(), "-nodefaults" | "-no-user-config" | "-no-reboot") {
                            i += 1;
                            continue;
                        }
                        let v = argv[i + 1].as_bytes();
                        if opt == "-append" {
                            prop_assert_eq!(v, text.as_bytes());
                        }
                        if let Some(keys) = expected_keys(&opt, v) {
                            for (k, val) in parse_keyval(v) {
                                let k = String::from_utf8_lossy(&k).into_owned();
                                prop_assert!(keys.contains(&k.as_str()), "{opt}: unexpected key {k:?} in {:?}", argv[i + 1]);
                                if k == "filename" {
                                    prop_assert_eq!(&val[..], path.as_os_str().as_bytes());
                                    checked_filename = true;
                                }
                                if opt == "-fsdev" && k == "path" {
                                    prop_assert_eq!(&val[..], path.as_os_str().as_bytes());
                                    checked_share.0 = true;
                                }
                                if k == "mount_tag" {
                                    prop_assert_eq!(&val[..], tag.as_bytes());
                                    checked_share.1 = true;
                                }
                                if opt == "-chardev" && k == "path" && v.starts_with(b"socket,id=agent") {
                                    prop_assert_eq!(&val[..], socket.as_os_str().as_bytes());
                                }
                            }
                        }
                        i += 2;
                    }
                    prop_assert!(checked_filename, "the disk's filename was not found in {argv:?}");
                    prop_assert_eq!(checked_share, (true, true), "the 9p share was not found in {:?}", argv);
                }
            }
        }

        /// Any id is either a valid [`VmId`] or refused with the rule it breaks; a valid
        /// one reaches the argv as `-name guest=<id>` unchanged.
        #[test]
        fn ids_are_refused_or_used_verbatim(id in hostile_text("abcdefghijklmnopqrstuvwxyz0123456789._-", 30)) {
            let by_rule = !id.is_empty()
                && id.len() <= crate::vm::id::MAX_ID_LEN
                && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                && !id.starts_with(['.', '_', '-'])
                && !id.ends_with(['.', '_', '-'])
                && !id.as_bytes().windows(2).any(|w| [w[0], w[1]].iter().all(|b| matches!(b, b'.' | b'_' | b'-')));
            match VmId::new(id.clone()) {
                Err(e) => prop_assert!(!by_rule, "valid id {id:?} refused: {e}"),
                Ok(vm_id) => {
                    prop_assert!(by_rule, "invalid id {id:?} accepted");
                    let argv = QemuConfig::new(vm_id).to_argv(&paths(), host()).unwrap();
                    let name = argv.windows(2).find(|w| w[0] == "-name").map(|w| w[1].clone());
                    prop_assert_eq!(name, Some(OsString::from(format!("guest={id}"))));
                }
            }
        }
    }
}
