//! The process-wide child reaper.
//!
//! The agent is PID 1: every orphan in the guest is re-parented to it and must be reaped,
//! yet the container runtime must still learn the exit status of the processes it started.
//! Both are served by one reaper thread and one rule:
//!
//! * The thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`: it wakes when some child is a
//!   zombie **without reaping it**. It then takes the registry lock and reaps every zombie
//!   with `waitid(P_ALL, WEXITED | WNOHANG)`, sending each status to the waiter registered
//!   for that pid; a status nobody registered for (an orphan) is logged and dropped.
//! * A child is created only inside [`Reaper::spawn`], which holds the same lock across
//!   `clone` and the registration. A child that dies at once stays a zombie until the lock
//!   is released, so its status cannot be reaped before its waiter exists.
//!
//! No signal handler is involved (nothing is lost when SIGCHLDs coalesce, and the host
//! tests' threads need no special signal mask); waiting on a thread of its own keeps the
//! reaper independent of any tokio runtime. When there is no child at all, `waitid` fails
//! with `ECHILD` and the thread sleeps on a condition variable until the next spawn, or for
//! [`ORPHAN_POLL`] (an orphan can be re-parented to PID 1 without any spawn of ours).
//!
//! The rule for the rest of the agent: every child process is created through
//! [`Reaper::spawn`]; anything else (`std::process::Command::status`) would race the reaper
//! for its child's status.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

/// How long the reaper sleeps, with no child of its own, before looking for orphans.
pub const ORPHAN_POLL: Duration = Duration::from_secs(1);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal (this number) killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal number.
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(sig) => 128 + sig,
        }
    }
}

/// Where a registered child's status is sent; `None` until it exits.
pub type ExitWatch = watch::Receiver<Option<ExitStatus>>;

#[derive(Default)]
struct Registry {
    waiters: HashMap<Pid, watch::Sender<Option<ExitStatus>>>,
    /// Bumped by every spawn, so a reaper that found no child notices one spawned since.
    spawns: u64,
}

/// The one reaper of this process; see the module documentation.
pub struct Reaper {
    registry: Mutex<Registry>,
    spawned: Condvar,
}

impl Reaper {
    /// The process-wide reaper, its thread started on first use.
    pub fn global() -> Result<&'static Reaper, std::io::Error> {
        static REAPER: OnceLock<Reaper> = OnceLock::new();
        static THREAD: OnceLock<Result<(), std::io::ErrorKind>> = OnceLock::new();
        let reaper = REAPER.get_or_init(|| Reaper {
            registry: Mutex::new(Registry::default()),
            spawned: Condvar::new(),
        });
        let started = THREAD.get_or_init(|| {
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || reaper.run())
                .map(drop)
                .map_err(|e| e.kind())
        });
        match started {
            Ok(()) => Ok(reaper),
            Err(kind) => Err(std::io::Error::new(
                *kind,
                "the reaper thread could not be started",
            )),
        }
    }

    /// Runs `clone_child` — which must create at most one child and return its pid — with
    /// reaping paused, and registers the child before reaping resumes.
    pub fn spawn<E>(
        &self,
        clone_child: impl FnOnce() -> Result<Pid, E>,
    ) -> Result<(Pid, ExitWatch), E> {
        let mut registry = self.lock();
        let pid = clone_child()?;
        let (tx, rx) = watch::channel(None);
        registry.waiters.insert(pid, tx);
        registry.spawns = registry.spawns.wrapping_add(1);
        drop(registry);
        self.spawned.notify_all();
        Ok((pid, rx))
    }

    /// Sends `signal` to `target` (a pid, or a negative process group id) while `child`,
    /// a registered child, has not been reaped: holding the lock that reaping needs, so
    /// `child`'s pid (and its group id) cannot have been reused by another process. Returns
    /// `false`, sending nothing, if `child` was already reaped.
    pub fn signal_unreaped(&self, child: Pid, target: Pid, signal: Signal) -> Result<bool, Errno> {
        let registry = self.lock();
        if !registry.waiters.contains_key(&child) {
            return Ok(false);
        }
        match kill(target, signal) {
            Ok(()) | Err(Errno::ESRCH) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Nothing panics while holding the lock, and the map stays consistent if it did.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let spawns = self.lock().spawns;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(_) => self.reap_all(),
                Err(Errno::EINTR) => {}
                Err(Errno::ECHILD) => {
                    let registry = self.lock();
                    if registry.spawns == spawns {
                        let _sleep = self
                            .spawned
                            .wait_timeout(registry, ORPHAN_POLL)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "waitid failed; reaper retries");
                    std::thread::sleep(ORPHAN_POLL);
                }
            }
        }
    }

    /// Reaps every zombie, routing statuses to their waiters.
    fn reap_all(&self) {
        let mut registry = self.lock();
        loop {
            let (pid, status) = match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _core)) => {
                    (pid, ExitStatus::Signaled(sig as i32))
                }
                Ok(_) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitid(WNOHANG) failed");
                    return;
                }
            };
            // The receivers keep the value after the sender is dropped.
            if let Some(tx) = registry.waiters.remove(&pid) {
                tx.send_replace(Some(status));
            } else {
                tracing::debug!(%pid, ?status, "reaped an orphan");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks a child that exits with `code` at once.
    fn exit_child(code: i32) -> Result<Pid, Errno> {
        // SAFETY: the child calls only `_exit`, which is async-signal-safe.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => unsafe_exit(code),
            nix::unistd::ForkResult::Parent { child } => Ok(child),
        }
    }

    fn unsafe_exit(code: i32) -> ! {
        // SAFETY: `_exit` ends the process without running any user-space code.
        unsafe { nix::libc::_exit(code) }
    }

    #[tokio::test]
    async fn every_registered_child_gets_its_own_status_and_orphans_are_reaped() {
        let reaper = Reaper::global().expect("reaper");
        let mut watches = Vec::new();
        for code in 0..40 {
            watches.push((code, reaper.spawn(|| exit_child(code)).expect("fork")));
        }
        // Unregistered children (as orphans re-parented to PID 1 would be): reaped, not
        // delivered to anyone.
        let mut orphans = Vec::new();
        for _ in 0..5 {
            let mut registry = reaper.lock();
            orphans.push(exit_child(99).expect("fork"));
            registry.spawns += 1;
            drop(registry);
            reaper.spawned.notify_all();
        }
        for (code, (pid, mut rx)) in watches {
            let status =
                tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
                    .await
                    .expect("status within 10 s")
                    .map(|s| *s)
                    .expect("status sent");
            assert_eq!(status, Some(ExitStatus::Exited(code)), "child {pid}");
        }
        for pid in orphans {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "orphan {pid} never reaped"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    #[test]
    fn shell_codes() {
        assert_eq!(ExitStatus::Exited(7).shell_code(), 7);
        assert_eq!(ExitStatus::Signaled(15).shell_code(), 143);
    }
}
