//! What every child the VM layer spawns (the VMM, the vsock daemon) gets between `fork` and
//! `exec` (SPEC §6.6, §6.8):
//!
//! 1. **It dies with its parent.** `PR_SET_PDEATHSIG(SIGKILL)`, then a check that the parent
//!    is still the one that forked it (if it died in between, the child kills itself). The
//!    signal follows the *thread* that forked: children are spawned from the runtime's
//!    worker threads, which live as long as the runtime, never from `spawn_blocking`.
//! 2. **It inherits only stdin, stdout and stderr**, and the descriptors its caller names
//!    (a VM's TAP devices, [`crate::vm::VmSpec::nics`]). Every other descriptor is marked
//!    close-on-exec (`close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, or one `fcntl` per fd on
//!    kernels before 5.11), so descriptors the caller leaked to us stop at the exec, while
//!    the standard library's own exec-error pipe keeps working.
//! 3. **When started as root, it keeps one capability.** The bounding set is emptied but
//!    for `CAP_DAC_READ_SEARCH`, ambient and inheritable capabilities are cleared, so the exec
//!    grants only that one, and `no_new_privs` is set. uid 0 stays the owner of the
//!    root-owned state directory and of `/dev/kvm`; `CAP_DAC_READ_SEARCH` is kept because
//!    the kernel, initramfs and binaries may sit below a directory root reaches only through
//!    its DAC override (a 0750 home directory, say). No capability that writes, signals,
//!    mounts, loads or administers anything remains.
//! 4. **A seccomp filter** (x86-64) refuses (`EPERM`) the system calls neither child has any
//!    use for, and every x32-ABI call:
//!    mounting, module loading, kexec, reboot, ptrace, swap, BPF, perf, keyrings, namespace
//!    changes and clock setting. `execve` stays allowed (the filter is installed before the
//!    exec it must permit); QEMU adds its own `-sandbox` filter on top.
//!
//! Only async-signal-safe calls (raw syscalls) run in the child.

/// `CAP_DAC_READ_SEARCH` (`linux/capability.h`): the one capability a root-started child keeps.
const CAP_DAC_READ_SEARCH: libc::c_int = 2;

/// `CLOSE_RANGE_CLOEXEC` (`linux/close_range.h`).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// System calls the children never need; refused with `EPERM`.
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
];

/// The BPF program of the filter: kill on a foreign architecture, `EPERM` for [`DENIED`],
/// allow the rest.
fn seccomp_program() -> Vec<libc::sock_filter> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: u16::try_from(code).expect("BPF opcode"),
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: u16::try_from(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K).expect("BPF opcode"),
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    // offsetof(struct seccomp_data, arch) = 4, nr = 0.
    let jge = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: u16::try_from(libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K).expect("BPF opcode"),
        jt,
        jf,
        k,
    };
    let n = DENIED.len();
    let mut p = vec![
        stmt(ld, 4),
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(ld, 0),
        // x32 numbers reach the same calls under another number: refuse them all.
        jge(X32_SYSCALL_BIT, u8::try_from(n + 1).expect("short list"), 0),
    ];
    for (i, nr) in DENIED.iter().enumerate() {
        // Match: jump over the remaining checks and the ALLOW to the EPERM return.
        let to_deny = u8::try_from(n - i).expect("short list");
        p.push(jeq(u32::try_from(*nr).expect("syscall number"), to_deny, 0));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(
        ret,
        libc::SECCOMP_RET_ERRNO | u32::try_from(libc::EPERM).expect("errno"),
    ));
    p
}

/// Arranges for `command`'s child to be hardened as the module docs say. The descriptors
/// in `keep` (open in the parent, e.g. TAP devices) stay open across the exec under the
/// same numbers: the only exception to point 2.
pub(crate) fn harden_keeping(command: &mut tokio::process::Command, keep: &[libc::c_int]) {
    let keep = keep.to_vec();
    let parent = std::process::id();
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let program = seccomp_program();
    // SAFETY: the closure runs in the forked child before exec and only makes raw system
    // calls (async-signal-safe); the filter program was built before the fork, so nothing
    // allocates in the child.
    unsafe {
        command.pre_exec(move || {
            in_child(parent, as_root, &program);
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Returns the raw result; errors are ignored on purpose where a kernel may lack the call
/// (each step is a defence, not a requirement to start).
fn in_child(parent: u32, as_root: bool, program: &[libc::sock_filter]) {
    // SAFETY (for every block below): plain system calls with valid arguments; nothing here
    // touches memory the parent shares.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        // The parent died before the line above: nobody would reap or stop us.
        if u32::try_from(libc::getppid()).ok() != Some(parent) {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) != 0 {
            // Kernels before 5.11: one fcntl per possible fd, bounded (a limit of 10^9 open
            // files would otherwise take minutes before the exec).
            let max = libc::sysconf(libc::_SC_OPEN_MAX);
            let max = libc::c_int::try_from(max.clamp(0, 65536)).unwrap_or(65536);
            for fd in 3..max {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        if as_root {
            for cap in 0..64 {
                if cap != CAP_DAC_READ_SEARCH {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                }
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            // capset(2) with version 3: {effective, permitted, inheritable} for bits 0-31,
            // then for bits 32-63. Only CAP_DAC_READ_SEARCH stays effective and permitted:
            // with no_new_privs the exec can grant no more than is permitted now.
            let mut header = [0x2008_0522u32, 0];
            let keep = 1u32 << CAP_DAC_READ_SEARCH;
            let data = [keep, keep, 0, 0, 0, 0];
            libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr());
        }
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if cfg!(not(target_arch = "x86_64")) {
            return;
        }
        let prog = libc::sock_fprog {
            len: u16::try_from(program.len()).unwrap_or(0),
            filter: program.as_ptr().cast_mut(),
        };
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            std::ptr::from_ref(&prog),
            0,
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hardened child: no inherited extra fd, no capabilities, `no_new_privs`, a seccomp
    /// filter that refuses `unshare`, and it dies with the thread that forked it.
    #[tokio::test]
    async fn a_hardened_child_has_no_extra_fd_no_caps_and_a_filter() {
        // An fd the "caller" leaked: not close-on-exec.
        let leaked = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
        nix::fcntl::fcntl(
            &leaked,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let script = format!(
            "ls /proc/self/fd/{fd} >/dev/null 2>&1 && echo leaked || echo closed; \
             grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
             unshare -U true 2>/dev/null && echo unshare-allowed || echo unshare-refused"
        );
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        harden_keeping(&mut cmd, &[]);
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("closed"), "{text}");
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        assert!(text.contains("Seccomp:\t2"), "{text}");
        assert!(text.contains("unshare-refused"), "{text}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // Only CAP_DAC_READ_SEARCH (bit 2) is left.
            assert!(text.contains("CapEff:\t0000000000000004"), "{text}");
            assert!(text.contains("CapBnd:\t0000000000000004"), "{text}");
        }
        drop(leaked);
    }

    /// A descriptor the caller names (a TAP device's) reaches the child under its number;
    /// a close-on-exec one beside it does not.
    #[tokio::test]
    async fn a_named_descriptor_is_inherited_and_no_other() {
        let kept = std::fs::File::open("/dev/null").unwrap();
        let other = std::fs::File::open("/dev/null").unwrap();
        let (kept_fd, other_fd) = (
            std::os::fd::AsRawFd::as_raw_fd(&kept),
            std::os::fd::AsRawFd::as_raw_fd(&other),
        );
        let script = format!(
            "ls /proc/self/fd/{kept_fd} >/dev/null 2>&1 && echo kept-open; \
             ls /proc/self/fd/{other_fd} >/dev/null 2>&1 && echo other-open; true"
        );
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        harden_keeping(&mut cmd, &[kept_fd]);
        let out = cmd.output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("kept-open"), "{text}");
        assert!(!text.contains("other-open"), "{text}");
        // The parent's copy is still close-on-exec.
        let flags = nix::fcntl::fcntl(&kept, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn the_filter_allows_by_default_and_denies_the_list() {
        let p = seccomp_program();
        assert_eq!(p.len(), 5 + DENIED.len() + 2);
        assert_eq!(p[p.len() - 2].k, libc::SECCOMP_RET_ALLOW);
        // The x32 check and every deny jump land on the EPERM return.
        for (i, insn) in p[4..5 + DENIED.len()].iter().enumerate() {
            assert_eq!(4 + i + 1 + usize::from(insn.jt), p.len() - 1);
        }
    }
}
