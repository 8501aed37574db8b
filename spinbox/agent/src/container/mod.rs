//! The guest's container runtime: isolated processes from a rootfs directory.
//!
//! A [`Container`] is a process tree in its own mount, PID, UTS and IPC namespaces, with
//! the rootfs as `/` (`pivot_root`), a fresh `/proc`, a minimal `/dev` (tmpfs with
//! `null`, `zero`, `full`, `random`, `urandom` and `tty` bound from the agent's `/dev`, and a
//! `/dev/shm` tmpfs), `/sys` read-only and its own hostname. Unless the spec says the rootfs
//! is the container's own, `/` is an overlay whose writable layer is a tmpfs, so the rootfs
//! directory is never modified.
//!
//! # Life cycle (like runc's create/start split)
//!
//! [`Container::create`] clones the first process into new namespaces; it builds the
//! filesystem, drops to the requested credentials, then reports "ready" on a pipe and blocks
//! reading a second pipe. `create` returns once it has read "ready" (or the failing stage
//! and errno). [`Container::start`] writes one byte to the start pipe; the child then calls
//! `execve`, and `start` returns when the close-on-exec report pipe reaches end-of-file (or
//! carries the `execve` error). [`Container::exec`] runs another process in the same
//! namespaces; [`Container::delete`] kills what is left and removes the state directory.
//!
//! Every mount is made inside the container's mount namespace after it was made
//! recursively private, so nothing propagates to the agent's mounts; the namespace and all
//! its mounts vanish with the container's last process.
//!
//! # Exit statuses and reaping
//!
//! One reaper (see [`reaper`]) reaps every child of the agent and routes each status to the
//! process that registered for it; statuses of orphans are reaped and dropped.
//!
//! # PID 1 semantics
//!
//! The first process is PID 1 of its namespace: the kernel delivers to it only the signals
//! it has a handler for (and `SIGKILL`/`SIGSTOP` from the agent). A shell without a `trap`
//! therefore survives `SIGTERM`, as it does under runc. When it exits, the kernel kills every
//! other process of the namespace.

mod child;
pub mod reaper;
mod rootfs;
mod spec;
mod stdio;

#[cfg(test)]
pub mod busybox_rootfs;
#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

pub use child::Stage;
pub use reaper::{ExitStatus, Reaper};
#[cfg(test)]
pub use rootfs::DEVICES;
pub(crate) use spec::valid_name;
pub use spec::{ContainerSpec, ProcessSpec, Rlimit, RlimitResource, SpecError};
pub use stdio::{OutputPipe, ProcessStdio};

use child::{ChildFds, ChildPlan, ExecPointers, PreparedProcess, Step};

/// How long `delete` waits for killed processes to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a container operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The spec was refused before anything was created.
    #[error("invalid spec")]
    Spec(#[from] SpecError),
    /// The kernel has no overlay filesystem (in the guest: the `overlay` module is not
    /// loaded).
    #[error(
        "overlayfs is not available: load the overlay module, or give the container its own rootfs"
    )]
    OverlayUnavailable,
    /// A path cannot be written into overlayfs mount options.
    #[error("path {0:?} contains ',', ':' or '\\', which overlayfs options cannot carry")]
    OverlayPath(PathBuf),
    /// The state directory exists: a container with this id exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// A system call in the agent failed.
    #[error("{what}")]
    Io {
        /// What the agent was doing.
        what: &'static str,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The child failed while setting up, at this stage.
    #[error("process setup failed at {stage:?}")]
    Setup {
        /// Where it failed.
        stage: Stage,
        /// The errno of the failing call.
        #[source]
        errno: nix::errno::Errno,
    },
    /// The child died without reporting anything.
    #[error("the process died during setup ({0:?})")]
    DiedInSetup(Option<ExitStatus>),
    /// The child's report could not be understood.
    #[error("malformed setup report")]
    BadReport,
    /// `start` on a container that is not in the created state.
    #[error("container is {0:?}, not created")]
    NotCreated(ContainerState),
    /// `exec` on a container that is not running.
    #[error("container is {0:?}, not running")]
    NotRunning(ContainerState),
    /// Sending a signal failed.
    #[error("cannot send {signal} to {pid}")]
    Kill {
        /// The signal.
        signal: Signal,
        /// The target (negative: a process group).
        pid: i32,
        /// The failure.
        #[source]
        errno: nix::errno::Errno,
    },
    /// Killed processes were not reaped in time.
    #[error("processes still alive {0:?} after SIGKILL")]
    Unkillable(Duration),
    /// The reaper stopped delivering statuses (it never does while the agent runs).
    #[error("the reaper is gone")]
    ReaperGone,
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Created; the first process waits for `start`.
    Created,
    /// Started; the first process has not exited.
    Running,
    /// The first process exited.
    Stopped(ExitStatus),
}

/// A process of a container: its pid, exit status and output drain.
#[derive(Debug, Clone)]
pub struct Process {
    pid: Pid,
    exit: reaper::ExitWatch,
    undrained: watch::Receiver<usize>,
}

impl Process {
    /// The pid, as the agent sees it.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The exit status, if the process has exited.
    pub fn status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits for the process to exit.
    pub async fn wait(&self) -> Result<ExitStatus, ContainerError> {
        let mut rx = self.exit.clone();
        let status = *rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ContainerError::ReaperGone)?;
        status.ok_or(ContainerError::ReaperGone)
    }

    /// Waits for the process to exit **and** for its stdout and stderr to be drained (read
    /// to end-of-file, or dropped): the status to report to whoever forwards the output.
    pub async fn wait_reported(&self) -> Result<ExitStatus, ContainerError> {
        let status = self.wait().await?;
        let mut undrained = self.undrained.clone();
        // The guards live in the `OutputPipe`s; the count only reaches 0 through them.
        undrained
            .wait_for(|n| *n == 0)
            .await
            .map_err(|_| ContainerError::ReaperGone)?;
        Ok(status)
    }

    /// Sends `signal` to the process, or to its process group when `group` is set.
    pub fn signal(&self, signal: Signal, group: bool) -> Result<(), ContainerError> {
        let pid = if group {
            -self.pid.as_raw()
        } else {
            self.pid.as_raw()
        };
        let reaper = Reaper::global().map_err(io_err("cannot start the reaper"))?;
        match reaper.signal_unreaped(self.pid, Pid::from_raw(pid), signal) {
            // Not sent when already reaped: the process is gone.
            Ok(_sent) => Ok(()),
            Err(errno) => Err(ContainerError::Kill { signal, pid, errno }),
        }
    }
}

/// A container; see the module documentation.
#[derive(Debug)]
pub struct Container {
    id: String,
    state_dir: PathBuf,
    init: Process,
    /// The start pipe's write end, until `start`.
    start: Option<OwnedFd>,
    /// The report pipe, until `start` has read the `execve` outcome.
    report: Option<pipe::Receiver>,
    pid_ns: PidNamespace,
    execs: Vec<Process>,
}

/// Why [`Container::delete`] did not delete.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// The container is running and `force` was not given; here it is back.
    #[error("container {:?} is running; delete it with force", .0.id)]
    Running(Box<Container>),
    /// Killing, reaping or removing failed.
    #[error("cannot delete the container")]
    Failed(#[source] ContainerError),
}

fn cstring(bytes: impl Into<Vec<u8>>, field: &str) -> Result<CString, SpecError> {
    CString::new(bytes).map_err(|_| SpecError::Nul(field.to_owned()))
}

fn path_cstring(path: &Path) -> Result<CString, SpecError> {
    cstring(path.as_os_str().as_bytes(), "path")
}

impl PreparedProcess {
    fn new(spec: &ProcessSpec) -> Result<Self, SpecError> {
        spec.validate()?;
        let strings = |v: &[String], field: &str| -> Result<Vec<CString>, SpecError> {
            v.iter().map(|s| cstring(s.as_bytes(), field)).collect()
        };
        let program = &spec.args[0];
        let candidates = if program.contains('/') {
            vec![cstring(program.as_bytes(), "args[0]")?]
        } else {
            spec.search_path()
                .split(':')
                .filter(|dir| !dir.is_empty())
                .map(|dir| cstring(format!("{dir}/{program}"), "PATH"))
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            candidates,
            argv: strings(&spec.args, "args")?,
            envp: strings(&spec.env, "env")?,
            cwd: path_cstring(&spec.cwd)?,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
            rlimits: spec
                .rlimits
                .iter()
                .map(|l| (l.resource.raw(), [l.soft, l.hard]))
                .collect(),
        })
    }
}

/// Reads the child's setup report: `Ok(true)` for "ready", `Ok(false)` for end-of-file
/// after a successful `execve`.
async fn read_report(
    report: &mut pipe::Receiver,
    process: &Process,
) -> Result<bool, ContainerError> {
    let mut record = [0u8; 8];
    let mut got = 0;
    while got < record.len() {
        let n = report
            .read(&mut record[got..])
            .await
            .map_err(io_err("cannot read the setup report"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    match got {
        0 => Ok(false),
        8 => {
            let (stage, errno) = record.split_at(4);
            let stage =
                u32::from_ne_bytes(stage.try_into().map_err(|_| ContainerError::BadReport)?);
            let errno =
                i32::from_ne_bytes(errno.try_into().map_err(|_| ContainerError::BadReport)?);
            let stage = Stage::from_raw(stage).ok_or(ContainerError::BadReport)?;
            if stage == Stage::Ready {
                return Ok(true);
            }
            // The child exits after reporting; collect it so the error is final.
            let _ = process.wait().await;
            let errno = nix::errno::Errno::from_raw(errno);
            if stage == Stage::Overlay && errno == nix::errno::Errno::ENODEV {
                return Err(ContainerError::OverlayUnavailable);
            }
            Err(ContainerError::Setup { stage, errno })
        }
        _ => Err(ContainerError::BadReport),
    }
}

/// The `(device, inode)` of a process's PID namespace.
fn pid_ns_id(pid: Pid) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/ns/pid"))?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether `/proc/<pid>/stat` says the process is a zombie (state `Z`, the first field
/// after the command name in parentheses).
fn is_zombie(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The container's PID namespace, held open: a namespace's inode number is reused once
/// the namespace is freed, and holding it keeps `kill(all)` from ever matching the
/// processes of a later container.
#[derive(Debug)]
struct PidNamespace {
    _held: std::fs::File,
    id: (u64, u64),
}

impl PidNamespace {
    fn of(pid: Pid) -> Result<Self, ContainerError> {
        use std::os::unix::fs::MetadataExt;
        let err = io_err("cannot open the container's PID namespace");
        let held = std::fs::File::open(format!("/proc/{pid}/ns/pid")).map_err(err)?;
        let meta = held
            .metadata()
            .map_err(io_err("cannot stat the container's PID namespace"))?;
        Ok(Self {
            _held: held,
            id: (meta.dev(), meta.ino()),
        })
    }
}

fn overlay_available() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
    })
}

impl Container {
    /// Creates the container: its first process, in new namespaces, set up and held
    /// before `execve` until [`Container::start`]. `state_root` holds a directory per
    /// container (the overlay's mount point), removed by [`Container::delete`].
    pub async fn create(
        spec: &ContainerSpec,
        state_root: &Path,
    ) -> Result<(Container, ProcessStdio), ContainerError> {
        spec.validate()?;
        if !spec.rootfs_owned && !overlay_available() {
            return Err(ContainerError::OverlayUnavailable);
        }
        let state_dir = state_root.join(&spec.id);
        std::fs::create_dir_all(state_root).map_err(io_err("cannot create the state root"))?;
        match std::fs::create_dir(&state_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(spec.id.clone()))
            }
            Err(e) => return Err(io_err("cannot create the state directory")(e)),
        }
        // Removed on failure, and if this future is dropped midway (the held child then
        // dies too: its start pipe closes). Nothing is mounted there on this side.
        let mut guard = RemoveDirOnDrop(Some(&state_dir));
        let created = Self::create_in(spec, &state_dir).await;
        if created.is_ok() {
            guard.0 = None;
        }
        created
    }

    async fn create_in(
        spec: &ContainerSpec,
        state_dir: &Path,
    ) -> Result<(Container, ProcessStdio), ContainerError> {
        let process = PreparedProcess::new(&spec.process)?;
        let steps = rootfs::plan(spec, state_dir)?;
        let (start_r, start_w) = stdio::cloexec_pipe().map_err(io_err("cannot create a pipe"))?;
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        let (init, stdio, mut report) =
            spawn(flags, &[], &steps, &process, Some(&start_r))?.finish()?;
        drop(start_r);
        let ready = async {
            if read_report(&mut report, &init).await? {
                PidNamespace::of(init.pid)
            } else {
                Err(ContainerError::DiedInSetup(init.wait().await.ok()))
            }
        };
        let pid_ns = match ready.await {
            Ok(ns) => ns,
            Err(e) => {
                // Whatever went wrong, no half-created container stays behind.
                let _ = init.signal(Signal::SIGKILL, false);
                let _ = tokio::time::timeout(KILL_WAIT, init.wait()).await;
                return Err(e);
            }
        };
        let container = Container {
            id: spec.id.clone(),
            state_dir: state_dir.to_owned(),
            init,
            start: Some(start_w),
            report: Some(report),
            pid_ns,
            execs: Vec::new(),
        };
        Ok((container, stdio))
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first process.
    pub fn init(&self) -> &Process {
        &self.init
    }

    /// Where the container is in its life.
    pub fn state(&self) -> ContainerState {
        match self.init.status() {
            Some(status) => ContainerState::Stopped(status),
            None if self.start.is_some() => ContainerState::Created,
            None => ContainerState::Running,
        }
    }

    /// Lets the first process `execve`; returns once it has (or reports why not).
    pub async fn start(&mut self) -> Result<(), ContainerError> {
        let state = self.state();
        let (Some(start), Some(mut report)) = (self.start.take(), self.report.take()) else {
            return Err(ContainerError::NotCreated(state));
        };
        if state != ContainerState::Created {
            return Err(ContainerError::NotCreated(state));
        }
        let mut start =
            pipe::Sender::from_owned_fd(start).map_err(io_err("cannot use the start pipe"))?;
        start
            .write_all(&[1])
            .await
            .map_err(io_err("cannot signal the start"))?;
        drop(start);
        if read_report(&mut report, &self.init).await? {
            // A second "ready": the child broke the protocol.
            Err(ContainerError::BadReport)
        } else {
            Ok(())
        }
    }

    /// Waits for the first process to exit.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the Task service waits on the init Process")
    )]
    pub async fn wait(&self) -> Result<ExitStatus, ContainerError> {
        self.init.wait().await
    }

    /// Sends `signal` to the first process, or with `all` to every process in the
    /// container's PID namespace.
    pub fn kill(&self, signal: Signal, all: bool) -> Result<(), ContainerError> {
        if all {
            for pid in self.processes()? {
                match kill(pid, signal) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(errno) => {
                        return Err(ContainerError::Kill {
                            signal,
                            pid: pid.as_raw(),
                            errno,
                        })
                    }
                }
            }
        }
        self.init.signal(signal, false)
    }

    /// The agent-side pids of every live (not zombie) process in the container's PID
    /// namespace.
    pub fn processes(&self) -> Result<Vec<Pid>, ContainerError> {
        let mut pids = Vec::new();
        let entries = std::fs::read_dir("/proc").map_err(io_err("cannot list /proc"))?;
        for entry in entries {
            let entry = entry.map_err(io_err("cannot list /proc"))?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let pid = Pid::from_raw(pid);
            // A process that exits meanwhile simply drops out; a zombie (dead, waiting
            // for its parent in the container to reap it) is not live.
            if pid_ns_id(pid).is_ok_and(|ns| ns == self.pid_ns.id) && !is_zombie(pid) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Runs another process in the container's namespaces.
    pub async fn exec(
        &mut self,
        spec: &ProcessSpec,
    ) -> Result<(Process, ProcessStdio), ContainerError> {
        let state = self.state();
        if state != ContainerState::Running {
            return Err(ContainerError::NotRunning(state));
        }
        let process = PreparedProcess::new(spec)?;
        let open = |ns: &str| {
            std::fs::File::open(format!("/proc/{}/ns/{ns}", self.init.pid))
                .map(OwnedFd::from)
                .map_err(io_err("cannot open a namespace of the container"))
        };
        let pid_ns = open("pid")?;
        let others = [
            (open("mnt")?, libc::CLONE_NEWNS),
            (open("uts")?, libc::CLONE_NEWUTS),
            (open("ipc")?, libc::CLONE_NEWIPC),
        ];
        // setns(CLONE_NEWPID) changes the PID namespace of the calling thread's future
        // children only, and for good: it is done on a thread of its own that clones the
        // child and ends. The child joins the other namespaces itself (joining a mount
        // namespace needs a single-threaded process).
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("exec".into())
            .spawn(move || {
                let joined = nix::sched::setns(&pid_ns, nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(|e| ContainerError::Setup {
                        stage: Stage::Setns,
                        errno: e,
                    });
                let setns: Vec<_> = others
                    .iter()
                    .map(|(fd, ns)| (fd.as_raw_fd(), *ns))
                    .collect();
                let _ = tx.send(joined.and_then(|()| spawn(0, &setns, &[], &process, None)));
            })
            .map_err(io_err("cannot start the exec thread"))?;
        let (exec, stdio, mut report) =
            rx.await.map_err(|_| ContainerError::BadReport)??.finish()?;
        self.execs.retain(|p| p.status().is_none());
        self.execs.push(exec.clone());
        if read_report(&mut report, &exec).await? {
            return Err(ContainerError::BadReport);
        }
        Ok((exec, stdio))
    }

    /// Deletes the container: refused while running unless `force`, which kills every
    /// process first. A created (never started) container is killed without `force`.
    /// Afterwards no process of the container is left, its mount namespace (and every
    /// mount in it) is gone with them, and the state directory is removed.
    pub async fn delete(mut self, force: bool) -> Result<(), DeleteError> {
        if self.state() == ContainerState::Running && !force {
            return Err(DeleteError::Running(Box::new(self)));
        }
        self.start = None;
        self.kill(Signal::SIGKILL, true)
            .map_err(DeleteError::Failed)?;
        for process in std::iter::once(&self.init).chain(&self.execs) {
            tokio::time::timeout(KILL_WAIT, process.wait())
                .await
                .map_err(|_| DeleteError::Failed(ContainerError::Unkillable(KILL_WAIT)))?
                .map_err(DeleteError::Failed)?;
        }
        std::fs::remove_dir(&self.state_dir)
            .map_err(|e| DeleteError::Failed(io_err("cannot remove the state directory")(e)))
    }
}

/// A container dropped without [`Container::delete`] (a panic, a lost task) still leaves
/// no process behind: its first process is killed, which ends its PID namespace; the
/// (empty, on this side) state directory is removed.
impl Drop for Container {
    fn drop(&mut self) {
        if self.init.status().is_none() {
            let _ = self.init.signal(Signal::SIGKILL, false);
        }
        // Already gone after a successful delete.
        let _ = std::fs::remove_dir(&self.state_dir);
    }
}

/// Removes an (empty) directory when dropped, unless disarmed.
struct RemoveDirOnDrop<'a>(Option<&'a Path>);

impl Drop for RemoveDirOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.0 {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A child just cloned: its pid and exit watch, the parent's pipe ends as plain fds.
struct Spawned {
    pid: Pid,
    exit: reaper::ExitWatch,
    fds: stdio::ParentFds,
    report: OwnedFd,
}

impl Spawned {
    /// Turns the fds into tokio types (inside a runtime); kills the child if that fails.
    fn finish(self) -> Result<(Process, ProcessStdio, pipe::Receiver), ContainerError> {
        let converted = self.fds.into_stdio().and_then(|(stdio, undrained)| {
            Ok((
                stdio,
                undrained,
                pipe::Receiver::from_owned_fd(self.report)?,
            ))
        });
        match converted {
            Ok((stdio, undrained, report)) => Ok((
                Process {
                    pid: self.pid,
                    exit: self.exit,
                    undrained,
                },
                stdio,
                report,
            )),
            Err(e) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                Err(io_err("cannot register the stdio pipes")(e))
            }
        }
    }
}

/// Creates the pipes and clones a child running the plan, registered with the reaper.
fn spawn(
    flags: libc::c_int,
    setns: &[(std::os::fd::RawFd, libc::c_int)],
    steps: &[Step],
    process: &PreparedProcess,
    start: Option<&OwnedFd>,
) -> Result<Spawned, ContainerError> {
    let reaper = Reaper::global().map_err(io_err("cannot start the reaper"))?;
    let (child_stdio, fds) = stdio::pipes().map_err(io_err("cannot create the stdio pipes"))?;
    let (report, report_w) = stdio::cloexec_pipe().map_err(io_err("cannot create a pipe"))?;
    let pointers = ExecPointers::new(process);
    let plan = ChildPlan {
        setns,
        steps,
        process,
        pointers: &pointers,
        fds: ChildFds {
            stdin: child_stdio.stdin.as_raw_fd(),
            stdout: child_stdio.stdout.as_raw_fd(),
            stderr: child_stdio.stderr.as_raw_fd(),
            report: report_w.as_raw_fd(),
            start: start.map(AsRawFd::as_raw_fd),
        },
    };
    let (pid, exit) = reaper
        .spawn(|| child::clone_child(flags, &plan))
        .map_err(io_err("cannot clone the process"))?;
    // The child has its copies; ours must go so that end-of-file can arrive.
    drop((child_stdio, report_w));
    Ok(Spawned {
        pid,
        exit,
        fds,
        report,
    })
}
