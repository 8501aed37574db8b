//! What a freshly cloned child runs before `execve`.
//!
//! The agent (and the host test binary) is multi-threaded, so between `clone` and `execve`
//! the child may only make async-signal-safe calls: another thread may have held the
//! allocator's or stdio's lock at the moment of the clone, and that lock is never released
//! in the child. Everything is therefore prepared by the parent — every path, argument and
//! environment entry as a `CString`, the `argv`/`envp` pointer arrays, the mount plan as a
//! list of [`Step`]s — and the child only walks those with raw system calls: no allocation,
//! no formatting, no locks, nothing that can panic (no indexing; iteration only).
//!
//! Credentials are changed with raw `setgroups`/`setresgid`/`setresuid` system calls, not
//! the libc wrappers: glibc and musl broadcast those to every thread they believe exists,
//! and after a raw `clone` their thread list still names the parent's threads.
//!
//! Failures are reported to the parent as an 8-byte record (`Stage`, errno) on a
//! close-on-exec pipe; a successful `execve` closes it, which the parent reads as
//! end-of-file.

use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CString};
use std::os::fd::RawFd;
use std::ptr;

use nix::libc;

/// The fd the report pipe is moved to in the child.
const REPORT_FD: c_int = 3;
/// The fd the start pipe is moved to in the child.
const START_FD: c_int = 4;
/// The first fd above the ones the child keeps; everything from here is closed.
const FIRST_FREE_FD: c_int = 5;

/// Where the child was when it failed (or that it is ready); sent as a `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    /// Not a failure: setup finished; the child waits for the start signal.
    Ready = 0,
    /// Joining the container's namespaces (exec).
    Setns,
    /// Moving the stdio and report fds into place, closing the rest.
    Fds,
    /// Making every mount private to the new mount namespace.
    MakePrivate,
    /// Mounting the tmpfs that holds the overlay's writable layer.
    OverlayTmpfs,
    /// Creating a directory.
    Mkdir,
    /// Mounting the overlay (`ENODEV`: the kernel has no overlayfs).
    Overlay,
    /// Bind-mounting an owned rootfs onto itself.
    BindRootfs,
    /// Mounting `/proc`.
    Proc,
    /// Mounting the `/dev` tmpfs.
    Dev,
    /// Creating or bind-mounting a device node.
    Device,
    /// Mounting `/dev/shm`.
    Shm,
    /// Creating a `/dev` symlink.
    Symlink,
    /// Mounting `/sys` read-only.
    Sys,
    /// `pivot_root` into the new root and detaching the old one (or, when the old root is
    /// the initramfs, moving the new root over `/` and `chroot`ing into it).
    PivotRoot,
    /// Setting the hostname.
    Hostname,
    /// Starting a new session.
    Setsid,
    /// Applying a resource limit.
    Rlimit,
    /// Setting the supplementary groups.
    Setgroups,
    /// Setting the group id.
    Setgid,
    /// Setting the user id.
    Setuid,
    /// Changing to the working directory.
    Chdir,
    /// Waiting for the start signal.
    WaitStart,
    /// `execve` (after searching `PATH`).
    Exec,
    /// Bind-mounting the guest's `/etc/resolv.conf` read-only onto the rootfs's.
    ResolvConf,
}

impl Stage {
    const ALL: [Stage; 25] = [
        Stage::Ready,
        Stage::Setns,
        Stage::Fds,
        Stage::MakePrivate,
        Stage::OverlayTmpfs,
        Stage::Mkdir,
        Stage::Overlay,
        Stage::BindRootfs,
        Stage::Proc,
        Stage::Dev,
        Stage::Device,
        Stage::Shm,
        Stage::Symlink,
        Stage::Sys,
        Stage::PivotRoot,
        Stage::Hostname,
        Stage::Setsid,
        Stage::Rlimit,
        Stage::Setgroups,
        Stage::Setgid,
        Stage::Setuid,
        Stage::Chdir,
        Stage::WaitStart,
        Stage::Exec,
        Stage::ResolvConf,
    ];

    /// The stage a report names, if it names one.
    pub fn from_raw(raw: u32) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| *s as u32 == raw)
    }
}

/// One step of the child's filesystem setup.
#[derive(Debug)]
pub enum Step {
    /// `mount(2)`.
    Mount {
        /// The source (device, directory or a name for pseudo filesystems).
        source: Option<CString>,
        /// The mount point.
        target: CString,
        /// The filesystem type (none for bind and propagation changes).
        fstype: Option<CString>,
        /// `MS_*` flags.
        flags: c_ulong,
        /// Filesystem options.
        data: Option<CString>,
        /// The stage a failure is reported as.
        stage: Stage,
    },
    /// `mkdir(2)`; an existing directory is fine.
    Mkdir {
        /// The directory.
        path: CString,
        /// Its mode (before the umask).
        mode: libc::mode_t,
    },
    /// Creates an empty file to bind a device node onto.
    Touch {
        /// The file.
        path: CString,
    },
    /// `symlink(2)`; an existing link is fine.
    Symlink {
        /// What the link points to.
        target: CString,
        /// The link.
        link: CString,
    },
    /// `pivot_root(new_root)`, then the old root is detached and `/` becomes the cwd. When
    /// the old root is the initramfs (`pivot_root` fails with `EINVAL`), `new_root` is
    /// moved over `/` and becomes the root by `chroot` instead.
    PivotRoot {
        /// The new root, a mount point.
        new_root: CString,
    },
    /// `sethostname(2)`.
    Hostname {
        /// The name.
        name: CString,
    },
}

/// A process's fully prepared credentials, limits, directory and command.
#[derive(Debug)]
pub struct PreparedProcess {
    /// `args[0]` itself when it contains a `/`, else each `PATH` entry joined with it.
    pub candidates: Vec<CString>,
    /// The arguments.
    pub argv: Vec<CString>,
    /// The environment, `KEY=VALUE`.
    pub envp: Vec<CString>,
    /// The working directory.
    pub cwd: CString,
    /// The user id.
    pub uid: libc::uid_t,
    /// The group id.
    pub gid: libc::gid_t,
    /// The supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// `(resource, [soft, hard])` as `prlimit64(2)` takes them.
    pub rlimits: Vec<(i64, [u64; 2])>,
}

/// The `argv` and `envp` arrays (NULL-terminated), built before the clone.
pub struct ExecPointers {
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

impl ExecPointers {
    /// Points into `process`, which must outlive the returned value.
    pub fn new(process: &PreparedProcess) -> Self {
        let array = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(ptr::null()))
                .collect()
        };
        Self {
            argv: array(&process.argv),
            envp: array(&process.envp),
        }
    }
}

/// The fds the child starts from (all close-on-exec in the parent).
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    /// Read end of the stdin pipe.
    pub stdin: RawFd,
    /// Write end of the stdout pipe.
    pub stdout: RawFd,
    /// Write end of the stderr pipe.
    pub stderr: RawFd,
    /// Write end of the report pipe.
    pub report: RawFd,
    /// The start pipe's read end (the container's first process only).
    pub start: Option<RawFd>,
}

/// What the child does before `execve`.
pub struct ChildPlan<'a> {
    /// Namespaces to join first: `(fd, CLONE_NEW*)` (exec only).
    pub setns: &'a [(RawFd, c_int)],
    /// The filesystem setup (the container's first process only).
    /// The filesystem setup (the container's first process only).
    pub steps: &'a [Step],
    /// The process to become.
    pub process: &'a PreparedProcess,
    /// Its `argv` and `envp` arrays.
    pub pointers: &'a ExecPointers,
    /// The fds it starts from.
    pub fds: ChildFds,
}

/// Creates a child with `clone(2)` and `flags` (`CLONE_NEW*`); the child runs `plan` and
/// never returns. Returns the child's pid in the parent.
pub fn clone_child(flags: c_int, plan: &ChildPlan<'_>) -> std::io::Result<nix::unistd::Pid> {
    let flags = c_ulong::try_from(flags | libc::SIGCHLD).unwrap_or(c_ulong::MAX);
    // SAFETY: a raw clone without CLONE_VM and with a NULL stack behaves like fork: the
    // child gets a copy-on-write copy of the address space and continues on its copy of
    // this stack. The child only runs `child_main`, which makes async-signal-safe system
    // calls on data prepared before this call and never returns (see the module docs).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            ptr::null_mut::<c_void>(),
            ptr::null_mut::<c_void>(),
            ptr::null_mut::<c_void>(),
            0usize,
        )
    };
    match ret {
        -1 => Err(std::io::Error::last_os_error()),
        // SAFETY: we are the child of the clone above; see `child_main`'s contract.
        0 => unsafe { child_main(plan) },
        pid => Ok(nix::unistd::Pid::from_raw(
            i32::try_from(pid).unwrap_or(i32::MAX),
        )),
    }
}

fn errno() -> c_int {
    nix::errno::Errno::last_raw()
}

/// Reports `stage` and `err` on the report fd and exits.
fn fail(report: c_int, stage: Stage, err: c_int) -> ! {
    send(report, stage, err);
    // SAFETY: `_exit` is async-signal-safe and ends the process.
    unsafe { libc::_exit(126) }
}

fn send(report: c_int, stage: Stage, err: c_int) {
    let mut record = [0u8; 8];
    let (a, b) = record.split_at_mut(4);
    a.copy_from_slice(&(stage as u32).to_ne_bytes());
    b.copy_from_slice(&err.to_ne_bytes());
    // SAFETY: writes 8 bytes from a live stack buffer; a pipe write this small is atomic.
    // A failure cannot be reported anywhere; the parent then sees end-of-file.
    let _ = unsafe { libc::write(report, record.as_ptr().cast(), record.len()) };
}

/// Runs `f`, a system call returning -1 on error, failing at `stage` unless the errno is
/// `tolerated`.
fn check(report: c_int, stage: Stage, tolerated: c_int, f: impl FnOnce() -> c_long) {
    check_ret(report, stage, tolerated, f());
}

/// Fails at `stage` if `ret`, just returned by a system call, is -1 and the errno is not
/// `tolerated`.
fn check_ret(report: c_int, stage: Stage, tolerated: c_int, ret: c_long) {
    if ret == -1 {
        let err = errno();
        if err != tolerated {
            fail(report, stage, err);
        }
    }
}

fn opt_ptr(s: Option<&CString>) -> *const c_char {
    s.map_or(ptr::null(), |s| s.as_ptr())
}

/// The child's life before `execve`.
///
/// # Safety
///
/// Only in a child just created by [`clone_child`]: it must be the only thread of its
/// process, and every pointer in `plan` must point to memory copied from the parent.
unsafe fn child_main(plan: &ChildPlan<'_>) -> ! {
    let fds = plan.fds;
    let mut report = fds.report;
    // SAFETY: sigaction and rt_sigprocmask on stack values; both are async-signal-safe.
    unsafe { reset_signals() };
    for &(fd, nstype) in plan.setns {
        // SAFETY: setns on an fd the parent opened; no memory is involved.
        check(report, Stage::Setns, 0, || unsafe {
            c_long::from(libc::setns(fd, nstype))
        });
    }

    // Move stdio to 0–2, the report pipe to 3 and the start pipe to 4, then close every
    // other fd: another thread may have been creating pipes for another process when we
    // were cloned, and a stray copy of its write end would keep that output from ever
    // reaching end-of-file. Copies go above 4 first so no source is overwritten early.
    // SAFETY (this block): fcntl/dup2/dup3/close_range on fds; no memory is involved.
    unsafe {
        let high = |fd: RawFd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_FREE_FD);
        let copies = [
            fds.stdin,
            fds.stdout,
            fds.stderr,
            report,
            fds.start.unwrap_or(0),
        ]
        .map(high);
        if copies.iter().any(|fd| *fd < 0) {
            fail(report, Stage::Fds, errno());
        }
        let [stdin, stdout, stderr, report_copy, start] = copies;
        report = report_copy;
        if libc::dup2(stdin, 0) < 0
            || libc::dup2(stdout, 1) < 0
            || libc::dup2(stderr, 2) < 0
            || libc::dup3(report_copy, REPORT_FD, libc::O_CLOEXEC) < 0
            || (fds.start.is_some() && libc::dup3(start, START_FD, libc::O_CLOEXEC) < 0)
        {
            fail(report, Stage::Fds, errno());
        }
        report = REPORT_FD;
        if libc::syscall(libc::SYS_close_range, FIRST_FREE_FD, c_int::MAX, 0) < 0 {
            // Kernels before 5.9: close one by one.
            for fd in FIRST_FREE_FD..4096 {
                libc::close(fd);
            }
        }
        if fds.start.is_none() {
            libc::close(START_FD);
        }
    }

    for step in plan.steps {
        // SAFETY: each call passes pointers to NUL-terminated strings owned by `plan`.
        unsafe { run_step(report, step) };
    }

    // SAFETY (this block): credential, limit and directory system calls on prepared data.
    unsafe {
        check(report, Stage::Setsid, 0, || c_long::from(libc::setsid()));
        for (resource, limit) in &plan.process.rlimits {
            check(report, Stage::Rlimit, 0, || {
                libc::syscall(libc::SYS_prlimit64, 0, *resource, limit.as_ptr(), 0usize)
            });
        }
        let p = plan.process;
        check(report, Stage::Setgroups, 0, || {
            libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr())
        });
        check(report, Stage::Setgid, 0, || {
            libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid)
        });
        check(report, Stage::Setuid, 0, || {
            libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid)
        });
        check(report, Stage::Chdir, 0, || {
            c_long::from(libc::chdir(p.cwd.as_ptr()))
        });

        if fds.start.is_some() {
            send(report, Stage::Ready, 0);
            let mut byte = 0u8;
            loop {
                let n = libc::read(START_FD, ptr::addr_of_mut!(byte).cast(), 1);
                if n == 1 {
                    break;
                }
                if n == 0 {
                    // The container was deleted before it started.
                    libc::_exit(0);
                }
                if errno() != libc::EINTR {
                    fail(report, Stage::WaitStart, errno());
                }
            }
            libc::close(START_FD);
        }

        // Like execvp: a missing candidate moves on; any other error is remembered.
        let mut err = libc::ENOENT;
        for path in &plan.process.candidates {
            libc::execve(
                path.as_ptr(),
                plan.pointers.argv.as_ptr(),
                plan.pointers.envp.as_ptr(),
            );
            let e = errno();
            if e != libc::ENOENT && e != libc::ENOTDIR {
                err = e;
            }
        }
        fail(report, Stage::Exec, err)
    }
}

/// Gives the process default signal dispositions and an empty signal mask. `execve` resets
/// only caught signals; an ignored one (the Rust runtime ignores `SIGPIPE`) or a blocked
/// one (a thread's mask) would otherwise reach the container's program.
///
/// # Safety
///
/// Only from [`child_main`].
unsafe fn reset_signals() {
    // SAFETY (this function): the structures are plain C data on this stack; SIGKILL and
    // SIGSTOP refuse the change, which is fine.
    unsafe {
        // The kernel's `struct sigaction` (handler, flags, restorer, mask), all zero:
        // SIG_DFL. The raw call, because the C library refuses its reserved signals.
        let default = [0u64; 4];
        for sig in 1..=64 {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &raw const default,
                ptr::null_mut::<u64>(),
                std::mem::size_of::<u64>(),
            );
        }
        let empty: u64 = 0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &raw const empty,
            ptr::null_mut::<u64>(),
            std::mem::size_of::<u64>(),
        );
    }
}

/// # Safety
///
/// Only from [`child_main`].
unsafe fn run_step(report: c_int, step: &Step) {
    // SAFETY: every pointer passed is a NUL-terminated string owned by `step` (or a C
    // string literal), alive for the call; the calls only touch the filesystem.
    let (stage, tolerated, ret) = unsafe {
        match step {
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
                stage,
            } => {
                let ret = libc::mount(
                    opt_ptr(source.as_ref()),
                    target.as_ptr(),
                    opt_ptr(fstype.as_ref()),
                    *flags,
                    opt_ptr(data.as_ref()).cast(),
                );
                (*stage, 0, ret)
            }
            Step::Mkdir { path, mode } => (
                Stage::Mkdir,
                libc::EEXIST,
                libc::mkdir(path.as_ptr(), *mode),
            ),
            Step::Touch { path } => {
                let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
                let fd = libc::open(path.as_ptr(), flags, 0o666);
                if fd >= 0 {
                    libc::close(fd);
                }
                (Stage::Device, 0, fd.min(0))
            }
            Step::Symlink { target, link } => (
                Stage::Symlink,
                libc::EEXIST,
                libc::symlink(target.as_ptr(), link.as_ptr()),
            ),
            Step::PivotRoot { new_root } => {
                // The new root stacked over the old one, then the old one detached from
                // under it: no directory for the old root is needed inside the rootfs.
                let dot = c".".as_ptr();
                let failed = if libc::chdir(new_root.as_ptr()) < 0 {
                    true
                } else if libc::syscall(libc::SYS_pivot_root, dot, dot) == 0 {
                    libc::umount2(dot, libc::MNT_DETACH) < 0 || libc::chdir(c"/".as_ptr()) < 0
                } else if errno() == libc::EINVAL {
                    // The agent's root is the initramfs (rootfs), which pivot_root cannot
                    // take away (EINVAL): do as switch_root does, moving the new root over
                    // `/` and chrooting into it. A later setns into this mount namespace
                    // lands on the topmost mount of `/`, the new root, too.
                    libc::mount(dot, c"/".as_ptr(), ptr::null(), libc::MS_MOVE, ptr::null()) < 0
                        || libc::chroot(dot) < 0
                        || libc::chdir(c"/".as_ptr()) < 0
                } else {
                    true
                };
                (Stage::PivotRoot, 0, if failed { -1 } else { 0 })
            }
            Step::Hostname { name } => (
                Stage::Hostname,
                0,
                libc::sethostname(name.as_ptr(), name.as_bytes().len()),
            ),
        }
    };
    check_ret(report, stage, tolerated, c_long::from(ret));
}
