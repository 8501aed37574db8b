//! The real-containerd harness: a private containerd per test, entirely inside a temporary
//! directory, that finds `containerd-shim-spinbox-v1` through its `PATH`; a bounded `ctr`
//! runner; an OCI image tarball builder; and leak checks over `/proc` and `mountinfo` that
//! fail closed.
//!
//! Nothing here skips: a missing `containerd`, `ctr` or asset is a failure that says how to
//! provision it (`scripts/provision`).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

/// containerd's name for the runtime under test.
pub const RUNTIME: &str = "io.containerd.spinbox.v1";
/// The containerd namespace every test works in.
pub const NAMESPACE: &str = "spinbox-test";
/// The shim binary cargo built for these tests.
pub const SHIM_BINARY: &str = env!("CARGO_BIN_EXE_containerd-shim-spinbox-v1");
/// containerd's runtime v2 task plugin: bundles live in `<state>/<this>/<namespace>/<id>`.
const TASK_PLUGIN: &str = "io.containerd.runtime.v2.task";
/// The environment variable the shim reads its settings file from.
const SHIM_CONFIG_ENV: &str = "SPINBOX_SHIM_CONFIG";
/// The assets directory's environment variable.
const ASSETS_ENV: &str = "SPINBOX_ASSETS";

/// How long a `ctr` command that boots or stops a VM may take (TCG on a loaded 2-core CI
/// machine with three VMs up is slow).
pub const VM_TIMEOUT: Duration = Duration::from_mins(2);
/// How long any other `ctr` command may take.
pub const CTR_TIMEOUT: Duration = Duration::from_secs(30);
/// How long things may take to disappear after the command that releases them returned.
pub const GONE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd may take to answer `ctr version` after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long containerd may take to exit on SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many VMs the suite runs at once, over all tests (the CI machine has 2 cores).
const VM_SLOTS: usize = 3;

/// The provisioned assets directory: `$SPINBOX_ASSETS`, else `target/assets` of this
/// workspace.
pub fn assets_dir() -> PathBuf {
    std::env::var_os(ASSETS_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/assets"),
            PathBuf::from,
        )
}

/// The busybox rootfs the assets name (`rootfs` in `manifest.json`); panics, saying how to
/// provision it, when there is none.
pub fn busybox_rootfs() -> PathBuf {
    let dir = assets_dir();
    let assets = spinbox_manifest::Assets::load(&dir).unwrap_or_else(|e| {
        panic!(
            "VM assets unusable in {} ({e}): run scripts/provision, or point {ASSETS_ENV} at a \
             provisioned directory",
            dir.display()
        )
    });
    let rootfs = assets.rootfs.unwrap_or_else(|| {
        panic!(
            "the assets in {} have no busybox rootfs: run scripts/provision",
            dir.display()
        )
    });
    assert!(
        rootfs.join("bin/busybox").is_file(),
        "{} has no bin/busybox: run scripts/provision",
        rootfs.display()
    );
    rootfs
}

/// `name` in `PATH`, or a panic saying how to install it.
pub fn required_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not in PATH: the containerd shim's tests need a real containerd \
                 (Debian's `containerd` package: `apt-get install containerd`, which \
                 scripts/provision does)"
            )
        })
}

/// One of the suite's [`VM_SLOTS`] VM slots; released on drop.
pub struct VmSlots {
    count: usize,
}

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOTS_FREED: Condvar = Condvar::new();

impl VmSlots {
    /// Waits until `count` (at most [`VM_SLOTS`]) VMs may start.
    pub fn acquire(count: usize) -> Self {
        assert!(count <= VM_SLOTS, "at most {VM_SLOTS} VMs at once");
        let mut used = SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *used + count > VM_SLOTS {
            used = SLOTS_FREED
                .wait(used)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += count;
        Self { count }
    }
}

impl Drop for VmSlots {
    fn drop(&mut self) {
        let mut used = SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= self.count;
        SLOTS_FREED.notify_all();
    }
}

/// What a finished command gave.
#[derive(Debug)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Output {
    /// The exit code; `None` when a signal ended it.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// A `ctr` command running in the background.
pub struct Running {
    child: Child,
    what: String,
    out: Arc<Mutex<Vec<u8>>>,
    stdout: JoinHandle<()>,
    stderr: JoinHandle<Vec<u8>>,
    stdin: Option<JoinHandle<()>>,
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Copies `r` into `into` as it comes.
fn read_into(mut r: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = r.read(&mut buf) {
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(&buf[..n]);
        }
    })
}

impl Running {
    /// What it has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(
            &self
                .out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned()
    }

    /// Waits at most `timeout` until its stdout contains `needle`; `false` if it did not
    /// (or it exited first).
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stdout_so_far().contains(needle) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                // Exited: its output may still be in the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return self.stdout_so_far().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills it (a command that runs until stopped, such as `ctr events`) and returns its
    /// output.
    pub fn stop(mut self) -> Result<Output, String> {
        // Ours and not yet reaped: the pid is still this child's.
        let _ = self.child.kill();
        self.wait(Duration::from_secs(5))
    }

    /// Waits at most `timeout` for it; on timeout it is killed and `Err` says so.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => break None,
                Err(e) => return Err(format!("cannot wait for `{}`: {e}", self.what)),
            }
        };
        let timed_out = status.is_none();
        let status = if let Some(s) = status {
            s
        } else {
            // Ours: spawned above and not yet reaped, so the pid is still this child.
            let _ = self.child.kill();
            self.child
                .wait()
                .map_err(|e| format!("cannot reap `{}`: {e}", self.what))?
        };
        if let Some(stdin) = self.stdin.take() {
            let _ = stdin.join();
        }
        let _ = self.stdout.join();
        let stdout = String::from_utf8_lossy(
            &self
                .out
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
        .into_owned();
        let stderr = String::from_utf8_lossy(&self.stderr.join().unwrap_or_default()).into();
        if timed_out {
            return Err(format!(
                "`{}` did not finish within {timeout:?} (killed)\nstdout: {stdout}\nstderr: \
                 {stderr}",
                self.what
            ));
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// A process whose command line names the test's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its id.
    pub pid: i32,
    /// Its arguments, space-separated.
    pub cmdline: String,
}

/// What kind of process a [`Proc`] is, from its program name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `containerd-shim-spinbox-v1`.
    Shim,
    /// `qemu-system-*`.
    Qemu,
    /// `vhost-device-vsock`.
    Vsock,
    /// `mkfs.erofs`.
    Mkfs,
    /// `ctr`.
    Ctr,
    /// Anything else.
    Other,
}

impl Proc {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        let program = self.cmdline.split(' ').next().unwrap_or_default();
        let name = Path::new(program)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match name {
            "containerd-shim-spinbox-v1" => Kind::Shim,
            "vhost-device-vsock" => Kind::Vsock,
            "mkfs.erofs" => Kind::Mkfs,
            "ctr" => Kind::Ctr,
            n if n.starts_with("qemu-system") => Kind::Qemu,
            _ => Kind::Other,
        }
    }
}

/// Every process whose command line contains `needle`, except `except`. Fails closed:
/// `/proc` that cannot be listed, or a command line that cannot be read for any reason but
/// the process having exited, is an error.
pub fn processes_naming(needle: &str, except: &[i32]) -> Result<Vec<Proc>, String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut found = Vec::new();
    let mut seen_any = false;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list /proc: {e}"))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        seen_any = true;
        if pid == me || except.contains(&pid) {
            continue;
        }
        let raw = match std::fs::read(entry.path().join("cmdline")) {
            Ok(raw) => raw,
            // Exited between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => {
                continue
            }
            Err(e) => return Err(format!("cannot read /proc/{pid}/cmdline: {e}")),
        };
        let cmdline = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if cmdline.contains(needle) {
            found.push(Proc { pid, cmdline });
        }
    }
    if !seen_any {
        return Err("/proc lists no process at all: not a usable procfs".into());
    }
    Ok(found)
}

/// The lines of `/proc/self/mountinfo` that mention any of `needles`. Fails closed.
pub fn mounts_naming(needles: &[&str]) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    if text.lines().next().is_none() {
        return Err("/proc/self/mountinfo is empty: not a usable procfs".into());
    }
    Ok(text
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_owned)
        .collect())
}

/// Every file and directory under `dir` (relative paths), sorted; empty when `dir` does not
/// exist. Other errors fail.
pub fn tree(dir: &Path) -> Result<Vec<String>, String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), String> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let path = entry.path();
            out.push(
                path.strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
            let ty = entry
                .file_type()
                .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
            if ty.is_dir() {
                walk(base, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// What a [`Sampler`] saw while it ran.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every process seen (by pid; the last command line seen).
    pub procs: BTreeMap<i32, Proc>,
    /// Every new mount line seen.
    pub mounts: HashSet<String>,
    /// Whether the shim's state root ever held a file or directory besides the namespace's.
    pub state_used: bool,
    /// Every shim socket named by a bundle's `address` file.
    pub sockets: HashSet<PathBuf>,
    /// The most QEMU processes seen in one sampling round.
    pub most_qemus_at_once: usize,
}

impl Seen {
    /// How many distinct processes of `kind` were seen.
    pub fn count(&self, kind: Kind) -> usize {
        self.procs.values().filter(|p| p.kind() == kind).count()
    }
}

/// Samples, every 25 ms in a thread, the processes, mounts and shim state of a test, so a
/// check can show that what it later proves gone existed (for `ctr run --rm`, which gives no
/// moment to look from the outside).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    thread: JoinHandle<Result<Seen, String>>,
}

impl Sampler {
    /// Waits until one whole sampling round started after this call (at most 5 s).
    pub fn wait_round(&self) {
        let start = self.rounds.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.rounds.load(Ordering::SeqCst) < start + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops sampling; what was seen, or the first error reading `/proc`.
    pub fn finish(self) -> Result<Seen, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .unwrap_or_else(|_| Err("the sampler panicked".into()))
    }
}

/// A private containerd in a temporary directory, stopped (and only it) on drop.
pub struct Containerd {
    child: Option<Child>,
    /// The gRPC socket.
    pub address: PathBuf,
    /// containerd's `root`.
    pub root: PathBuf,
    /// containerd's `state`.
    pub state: PathBuf,
    /// The shim's `state_root`.
    pub state_root: PathBuf,
    /// A private copy of the busybox rootfs, for `ctr run --rootfs`.
    pub rootfs: PathBuf,
    /// containerd's log (its stdout and stderr).
    pub log: PathBuf,
    mounts_before: HashSet<String>,
    started: Instant,
    // Last: removed after containerd has stopped.
    dir: tempfile::TempDir,
}

/// Spawns `containerd --config FILE` with the shim's `PATH` and config, its output in `log`,
/// from a thread inside `netns` when one is given (containerd and its shims inherit it).
fn spawn_containerd(
    containerd: &Path,
    config_file: &Path,
    path_var: &std::ffi::OsStr,
    shim_config: &Path,
    log: std::fs::File,
    netns: Option<&Path>,
) -> Child {
    let stdout = log.try_clone().expect("log file");
    let (containerd, config_file, path_var, shim_config) = (
        containerd.to_owned(),
        config_file.to_owned(),
        path_var.to_owned(),
        shim_config.to_owned(),
    );
    let spawn = move || {
        Command::new(containerd)
            .arg("--config")
            .arg(&config_file)
            .env("PATH", path_var)
            .env(SHIM_CONFIG_ENV, &shim_config)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .expect("spawn containerd")
    };
    match netns {
        Some(ns) => {
            spinbox::net::netns::run_in(ns, spawn).expect("enter the test's network namespace")
        }
        None => spawn(),
    }
}

impl Containerd {
    /// Starts containerd in a fresh temporary directory (with a private copy of the busybox
    /// rootfs) and waits until `ctr version` answers.
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// [`Containerd::start`], with containerd (and so its shims, their CNI plugins and
    /// VMs) in the network namespace at `netns`, which the test created.
    pub fn start_in(netns: Option<&Path>) -> Self {
        let containerd = required_tool("containerd");
        required_tool("ctr");
        let rootfs_src = busybox_rootfs();
        assert!(
            Path::new(SHIM_BINARY).is_file(),
            "the shim binary {SHIM_BINARY} is missing"
        );
        let dir = tempfile::Builder::new()
            .prefix("spinbox-ctr-")
            .tempdir()
            .expect("create the test's temporary directory");
        let base = dir.path().to_owned();
        let path = |p: &str| base.join(p);
        let (address, root, state) = (path("c.sock"), path("root"), path("state"));
        let (state_root, rootfs, log) = (
            path("spinbox-state"),
            path("rootfs"),
            path("containerd.log"),
        );
        let shim_config = path("shim.json");

        let copied = Command::new("cp")
            .arg("-a")
            .arg(&rootfs_src)
            .arg(&rootfs)
            .status()
            .expect("run cp");
        assert!(copied.success(), "cp -a {} failed", rootfs_src.display());

        let shim = serde_json::json!({
            "assets": assets_dir().canonicalize().expect("the assets directory").display().to_string(),
            "state_root": state_root.display().to_string(),
        });
        std::fs::write(&shim_config, shim.to_string()).expect("write the shim config");

        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
# What needs CNI, block devices, special filesystems or tracing collectors: absent here, and
# not what is tested. overlayfs and native stay.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[debug]
  level = "debug"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = state.display(),
            address = address.display(),
            opt = path("opt").display(),
        );
        let config_file = path("config.toml");
        std::fs::write(&config_file, config).expect("write config.toml");

        let shim_dir = Path::new(SHIM_BINARY)
            .parent()
            .expect("the shim's directory");
        let mut search = vec![shim_dir.to_owned()];
        search.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let log_file = std::fs::File::create(&log).expect("create the containerd log");
        let mounts_before = mounts_naming(&[&base.display().to_string()])
            .expect("read mountinfo")
            .into_iter()
            .collect();
        let child = spawn_containerd(
            &containerd,
            &config_file,
            &std::env::join_paths(search).expect("PATH"),
            &shim_config,
            log_file,
            netns,
        );
        let mut me = Self {
            child: Some(child),
            address,
            root,
            state,
            state_root,
            rootfs,
            log,
            mounts_before,
            started: Instant::now(),
            dir,
        };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    self.fail(&format!("containerd exited while starting ({status})"));
                }
            }
            let out = self.ctr_with(&["version"], None, Duration::from_secs(5));
            if matches!(&out, Ok(o) if o.status.success() && o.stdout.contains("Server:")) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "containerd did not answer `ctr version` within {START_TIMEOUT:?}: {out:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The test's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's process id.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map_or(0, |c| i32::try_from(c.id()).unwrap_or(0))
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("({e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with `msg` and containerd's log tail.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n----- containerd log ({}), last lines -----\n{}\n-----",
            self.log.display(),
            self.log_tail(80)
        )
    }

    /// Panics with `msg` and the log tail unless `cond`.
    #[track_caller]
    pub fn check(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(NAMESPACE)
            .args(args);
        cmd
    }

    /// Starts `ctr --address SOCK --namespace spinbox-test ARGS` in the background, with
    /// `stdin` written to its standard input (then closed) or none at all.
    pub fn spawn_ctr(&self, args: &[&str], stdin: Option<&[u8]>) -> Running {
        let what = format!("ctr {}", args.join(" "));
        let mut child = self
            .ctr_command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("cannot run `{what}`: {e}")));
        let stdin = stdin.map(|data| {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            })
        });
        let out = Arc::new(Mutex::new(Vec::new()));
        let stdout = read_into(child.stdout.take().expect("stdout pipe"), Arc::clone(&out));
        let stderr = read_all(child.stderr.take().expect("stderr pipe"));
        Running {
            child,
            what,
            out,
            stdout,
            stderr,
            stdin,
        }
    }

    fn ctr_with(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, String> {
        self.spawn_ctr(args, stdin).wait(timeout)
    }

    /// Runs `ctr ARGS` within `timeout`; fails (with the log tail) on a timeout.
    pub fn ctr_in(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Output {
        self.ctr_with(args, stdin, timeout)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// Runs `ctr ARGS` within [`CTR_TIMEOUT`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(args, None, CTR_TIMEOUT)
    }

    /// Runs `ctr ARGS` within `timeout` and fails unless it succeeds; its stdout.
    pub fn ctr_ok_in(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.ctr_in(args, None, timeout);
        self.check(out.status.success(), || {
            format!("`ctr {}` failed: {out:?}", args.join(" "))
        });
        out.stdout
    }

    /// Runs `ctr ARGS` within [`CTR_TIMEOUT`] and fails unless it succeeds; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctr_ok_in(args, CTR_TIMEOUT)
    }

    /// The `ctr task ls` row of task `id`: `(pid, status)`, `None` when it is not listed.
    pub fn task_status(&self, id: &str) -> Option<(String, String)> {
        let out = self.ctr_ok(&["task", "ls"]);
        out.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&id) && cols.len() >= 3)
                .then(|| (cols[1].to_owned(), cols[2].to_owned()))
        })
    }

    /// Polls `ctr task ls` until task `id`'s status is `status`, within `timeout`.
    pub fn wait_task_status(&self, id: &str, status: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.task_status(id);
            if now.as_ref().is_some_and(|(_, s)| s == status) {
                return;
            }
            self.check(Instant::now() < deadline, || {
                format!("task {id} not {status} within {timeout:?}: {now:?}")
            });
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// containerd's bundle (task state directory) of task `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state.join(TASK_PLUGIN).join(NAMESPACE).join(id)
    }

    /// The processes naming the test directory, containerd excepted.
    pub fn processes(&self) -> Vec<Proc> {
        processes_naming(&self.dir().display().to_string(), &[self.pid()])
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// The mount lines naming the test directory that were not there before containerd
    /// started.
    pub fn new_mounts(&self) -> Vec<String> {
        mounts_naming(&[&self.dir().display().to_string()])
            .unwrap_or_else(|e| self.fail(&e))
            .into_iter()
            .filter(|l| !self.mounts_before.contains(l))
            .collect()
    }

    /// The shim state root's content, the (empty) namespace directory excepted.
    pub fn shim_state_entries(&self) -> Vec<String> {
        tree(&self.state_root)
            .unwrap_or_else(|e| self.fail(&e))
            .into_iter()
            .filter(|e| e != NAMESPACE)
            .collect()
    }

    /// Starts sampling processes, mounts and the shim state root (see [`Sampler`]).
    pub fn sample(&self) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let rounds = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&rounds);
        let needle = self.dir().display().to_string();
        let except = [self.pid()];
        let before = self.mounts_before.clone();
        let state_root = self.state_root.clone();
        let bundles = self.state.join(TASK_PLUGIN).join(NAMESPACE);
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            loop {
                let last = flag.load(Ordering::SeqCst);
                let round = processes_naming(&needle, &except)?;
                let qemus = round.iter().filter(|p| p.kind() == Kind::Qemu).count();
                seen.most_qemus_at_once = seen.most_qemus_at_once.max(qemus);
                for p in round {
                    // The latest command line: a child forked by the shim shows the
                    // shim's until it execs its own program.
                    seen.procs.insert(p.pid, p);
                }
                for m in mounts_naming(&[&needle])? {
                    if !before.contains(&m) {
                        seen.mounts.insert(m);
                    }
                }
                if tree(&state_root)?.iter().any(|e| e != NAMESPACE) {
                    seen.state_used = true;
                }
                for bundle in tree(&bundles)?.iter().filter(|e| !e.contains('/')) {
                    if let Ok(address) =
                        std::fs::read_to_string(bundles.join(bundle).join("address"))
                    {
                        seen.sockets.insert(socket_path(&address));
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                if last {
                    return Ok(seen);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Sampler {
            stop,
            rounds,
            thread,
        }
    }

    /// Finishes `sampler` and fails unless it saw a shim, a QEMU, a `vhost-device-vsock`
    /// each (at least `vms` of each) and the shim's state in use.
    pub fn check_seen_vms(&self, sampler: Sampler, vms: usize) -> Seen {
        let seen = sampler.finish().unwrap_or_else(|e| self.fail(&e));
        for kind in [Kind::Shim, Kind::Qemu, Kind::Vsock] {
            self.check(seen.count(kind) >= vms, || {
                format!(
                    "expected to see {vms} {kind:?} process(es) at work, saw {}: {:#?}",
                    seen.count(kind),
                    seen.procs
                )
            });
        }
        self.check(seen.sockets.len() >= vms, || {
            format!(
                "expected {vms} shim socket(s) named in bundles, saw {:?}",
                seen.sockets
            )
        });
        self.check(seen.state_used, || {
            format!(
                "the shim's state root {} never held anything",
                self.state_root.display()
            )
        });
        seen
    }

    /// What task `id` holds while it runs: its shim, QEMU and `vhost-device-vsock` processes,
    /// its bundle, the shim's socket and state. Fails unless all of them are there now.
    pub fn observe_task(&self, id: &str) -> Alive {
        let bundle = self.bundle(id);
        let address_file = bundle.join("address");
        let address = std::fs::read_to_string(&address_file).unwrap_or_else(|e| {
            self.fail(&format!(
                "cannot read the shim address {}: {e}",
                address_file.display()
            ))
        });
        let socket = socket_path(&address);
        self.check(
            std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()),
            || format!("the shim socket {} is not a socket", socket.display()),
        );
        let procs = self.processes();
        let id_arg = format!(" -id {id} ");
        let shim: Vec<Proc> = procs
            .iter()
            .filter(|p| p.kind() == Kind::Shim && format!("{} ", p.cmdline).contains(&id_arg))
            .cloned()
            .collect();
        let state_root = self.state_root.display().to_string();
        let of_kind = |kind| -> Vec<Proc> {
            procs
                .iter()
                .filter(|p| p.kind() == kind && p.cmdline.contains(&state_root))
                .cloned()
                .collect()
        };
        let (qemu, vsock) = (of_kind(Kind::Qemu), of_kind(Kind::Vsock));
        self.check(
            shim.len() == 1 && !qemu.is_empty() && !vsock.is_empty(),
            || {
                format!(
                    "task {id}: expected its shim, a QEMU and a vhost-device-vsock alive; \
                 processes: {procs:#?}"
                )
            },
        );
        let state = self.shim_state_entries();
        self.check(!state.is_empty(), || {
            format!("task {id} runs but the shim state root is empty")
        });
        Alive {
            id: id.to_owned(),
            shim: shim[0].clone(),
            qemu,
            vsock,
            bundle,
            socket,
        }
    }

    /// Waits (at most [`GONE_TIMEOUT`]) until nothing of the test's tasks is left, then
    /// fails unless: containerd's log shows no panic, no process names the test directory (containerd aside), no mount made
    /// since containerd started names it, the shim's state root is empty, no task bundle
    /// remains, and every process and socket of `alive` and every socket `seen` is gone.
    pub fn check_nothing_left(&self, alive: &[&Alive], seen: Option<&Seen>) {
        let deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            let report = self.leftovers(alive, seen);
            if report.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("left behind after {GONE_TIMEOUT:?}:\n{report}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn leftovers(&self, alive: &[&Alive], seen: Option<&Seen>) -> String {
        let mut report = String::new();
        // A shim's panic reaches containerd's log through the shim's log FIFO or stderr.
        let log = std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| self.fail(&format!("cannot read {}: {e}", self.log.display())));
        for line in log.lines().filter(|l| l.contains("panicked at")) {
            let _ = writeln!(report, "a panic in containerd's log: {line}");
        }
        for socket in seen.iter().flat_map(|s| &s.sockets) {
            if std::fs::symlink_metadata(socket).is_ok() {
                let _ = writeln!(report, "shim socket {} exists", socket.display());
            }
        }
        for p in self.processes() {
            let _ = writeln!(report, "process {} ({:?}): {}", p.pid, p.kind(), p.cmdline);
        }
        for a in alive {
            for p in std::iter::once(&a.shim).chain(&a.qemu).chain(&a.vsock) {
                if pid_alive(p.pid) {
                    let _ = writeln!(
                        report,
                        "task {}: pid {} still exists: {}",
                        a.id, p.pid, p.cmdline
                    );
                }
            }
            if std::fs::symlink_metadata(&a.socket).is_ok() {
                let _ = writeln!(
                    report,
                    "task {}: shim socket {} exists",
                    a.id,
                    a.socket.display()
                );
            }
            if a.bundle.exists() {
                let _ = writeln!(
                    report,
                    "task {}: bundle {} exists",
                    a.id,
                    a.bundle.display()
                );
            }
        }
        for m in self.new_mounts() {
            let _ = writeln!(report, "mount: {m}");
        }
        for e in self.shim_state_entries() {
            let _ = writeln!(report, "shim state: {}", self.state_root.join(e).display());
        }
        let bundles = self.state.join(TASK_PLUGIN).join(NAMESPACE);
        for e in tree(&bundles).unwrap_or_else(|e| self.fail(&e)) {
            if !e.contains('/') {
                let _ = writeln!(report, "task bundle: {}", bundles.join(e).display());
            }
        }
        report
    }

    /// Best effort after a failed test, through containerd's own API: kill and delete every
    /// task and container of the namespace, so no VM outlives the test.
    fn clean_up_tasks(&self) {
        let Ok(ls) = self.ctr_with(&["task", "ls", "-q"], None, CTR_TIMEOUT) else {
            return;
        };
        for id in ls.stdout.split_whitespace() {
            let _ = self.ctr_with(&["task", "kill", "-s", "SIGKILL", id], None, CTR_TIMEOUT);
            let _ = self.ctr_with(&["task", "delete", "--force", id], None, VM_TIMEOUT);
        }
        if let Ok(ls) = self.ctr_with(&["container", "ls", "-q"], None, CTR_TIMEOUT) {
            for id in ls.stdout.split_whitespace() {
                let _ = self.ctr_with(&["container", "rm", id], None, CTR_TIMEOUT);
            }
        }
    }

    /// Stops containerd: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // Our child, not yet reaped: the pid is still containerd's.
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            self.clean_up_tasks();
        }
        self.stop();
        eprintln!(
            "{}: containerd ran {:.1?}",
            std::thread::current().name().unwrap_or("?"),
            self.started.elapsed()
        );
        let left = processes_naming(&self.dir().display().to_string(), &[]).unwrap_or_default();
        if !left.is_empty() {
            eprintln!(
                "processes naming {} outlive the test: {left:#?}",
                self.dir().display()
            );
        }
        // Mounts under the test's own directory would keep it from being removed.
        for line in mounts_naming(&[&self.dir().display().to_string()]).unwrap_or_default() {
            if self.mounts_before.contains(&line) {
                continue;
            }
            if let Some(point) = line.split(' ').nth(4) {
                if Path::new(point).starts_with(self.dir()) {
                    let _ = Command::new("umount").arg("--lazy").arg(point).status();
                }
            }
        }
    }
}

/// What a running task holds (see [`Containerd::observe_task`]).
#[derive(Debug, Clone)]
pub struct Alive {
    /// The task id.
    pub id: String,
    /// Its shim.
    pub shim: Proc,
    /// Its QEMU process(es).
    pub qemu: Vec<Proc>,
    /// Its `vhost-device-vsock` process(es).
    pub vsock: Vec<Proc>,
    /// containerd's bundle for it.
    pub bundle: PathBuf,
    /// The shim's ttrpc socket.
    pub socket: PathBuf,
}

/// The socket path of a shim address (`unix:///run/containerd/s/<hex>`).
fn socket_path(address: &str) -> PathBuf {
    PathBuf::from(address.trim().trim_start_matches("unix://"))
}

/// Whether a process `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `sha256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in hash {
        let _ = write!(hex, "{b:02x}");
    }
    format!("sha256:{hex}")
}

/// Writes `bytes` as a blob of the OCI layout `layout`; its descriptor's `(digest, size)`.
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let d = digest(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).expect("create blobs/sha256");
    std::fs::write(dir.join(d.trim_start_matches("sha256:")), bytes).expect("write a blob");
    (d, bytes.len())
}

/// Builds, in `work`, an OCI image tarball (`oci-layout`, `index.json` whose manifest has
/// `org.opencontainers.image.ref.name` = `tag`, the manifest, a config with
/// `rootfs.diff_ids`, one uncompressed layer made by the system `tar` from `rootfs`) for
/// `ctr image import`; returns its path.
pub fn build_oci_image(rootfs: &Path, work: &Path, tag: &str) -> PathBuf {
    let layout = work.join("oci-layout-dir");
    std::fs::create_dir_all(&layout).expect("create the layout directory");
    let layer_file = work.join("layer.tar");
    let status = Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@0",
            "-C",
        ])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer_file)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of {} failed", rootfs.display());
    let layer = std::fs::read(&layer_file).expect("read the layer");
    std::fs::remove_file(&layer_file).expect("remove the layer file");
    let (layer_digest, layer_size) = put_blob(&layout, &layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    });
    let (config_digest, config_size) = put_blob(&layout, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = put_blob(&layout, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).expect("write index.json");
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    let tarball = work.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("run tar");
    assert!(status.success(), "tar of the OCI layout failed");
    tarball
}

/// Kills `pid` with SIGKILL (a process the test found by its command line naming the
/// test's directory: a descendant of the test's containerd).
pub fn sigkill(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
}
