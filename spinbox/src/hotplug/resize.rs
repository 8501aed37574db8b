//! [`Resizer`]: changes a running VM's vCPU count or memory size through the backend's
//! hotplug methods and the guest agent, one change at a time. The controllers and explicit
//! resizes ([`Shim::resize`](crate::shim::Shim::resize), containerd's `Update`) both go
//! through it; [`Resizer::close`] waits for a change in flight and refuses later ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::vm::agent::{AgentClient, RpcError};
use crate::vm::hotplug::{HotplugError, HotplugRoom};
use crate::vm::{Vm, MEMORY_BLOCK_MIB};

/// How often a memory hot-add looks whether the guest onlined it.
const ONLINE_POLL: Duration = Duration::from_millis(20);

/// Why a resize failed. A partial change (some vCPUs added) is reported by the sizes the
/// next [`Resizer::cpus`] / [`Resizer::memory_mib`] read.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// The target is outside the VM's [boot, maximum] range.
    #[error("{what} must be between {min} and {max} (the boot size and the maximum), got {got}")]
    OutOfRange {
        /// `vCPU count` or `memory (MiB)`.
        what: &'static str,
        /// The boot size.
        min: u64,
        /// The maximum.
        max: u64,
        /// The target asked for.
        got: u64,
    },
    /// The VM or its backend refused or failed a device change.
    #[error("hotplug failed")]
    Hotplug(#[from] HotplugError),
    /// The guest agent failed to online what was added, or to report its sizes.
    #[error("the guest agent failed")]
    Agent(#[from] RpcError),
    /// The guest did not online hot-added memory in time (the device stays plugged).
    #[error("the guest did not online {mib} MiB of hot-added memory within {after:?}")]
    MemoryNotOnline {
        /// The size added.
        mib: u32,
        /// The bound.
        after: Duration,
    },
    /// The shim has no created or running VM.
    #[error("the shim is {0:?}: only a created or running VM can be resized")]
    NotRunning(crate::state::ShimState),
    /// The hotplug controllers were stopped (the VM is being torn down).
    #[error("the VM is being torn down: no more resizes")]
    Closed,
}

/// Changes one VM's size; see the module docs.
#[derive(Debug)]
pub struct Resizer {
    vm: Arc<dyn Vm>,
    agent: AgentClient,
    online_timeout: Duration,
    /// One change at a time; `true` once closed.
    op: tokio::sync::Mutex<bool>,
    cpus_pinned: AtomicBool,
    memory_pinned: AtomicBool,
}

impl Resizer {
    /// A resizer of `vm`, onlining through `agent`, waiting at most `online_timeout` for
    /// the guest to take a hot-added device.
    pub fn new(vm: Arc<dyn Vm>, agent: AgentClient, online_timeout: Duration) -> Self {
        Self {
            vm,
            agent,
            online_timeout,
            op: tokio::sync::Mutex::new(false),
            cpus_pinned: AtomicBool::new(false),
            memory_pinned: AtomicBool::new(false),
        }
    }

    /// The VM's boot sizes and growth room.
    pub fn room(&self) -> HotplugRoom {
        self.vm.hotplug_room()
    }

    /// The guest agent this resizer samples and onlines through.
    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// vCPUs plugged now.
    pub async fn cpus(&self) -> Result<u16, ResizeError> {
        let slots = self.vm.cpu_slots().await?;
        Ok(u16::try_from(slots.iter().filter(|s| s.plugged).count()).unwrap_or(u16::MAX))
    }

    /// Memory now in MiB: the boot memory and every hot-added device.
    pub async fn memory_mib(&self) -> Result<u32, ResizeError> {
        let added: u32 = self
            .vm
            .memory_devices()
            .await?
            .iter()
            .map(|d| d.size_mib)
            .sum();
        Ok(self.room().boot_memory_mib + added)
    }

    /// Whether an explicit resize pinned the vCPU count (its controller then leaves it).
    pub fn cpus_pinned(&self) -> bool {
        self.cpus_pinned.load(Ordering::Acquire)
    }

    /// Whether an explicit resize pinned the memory size.
    pub fn memory_pinned(&self) -> bool {
        self.memory_pinned.load(Ordering::Acquire)
    }

    /// An explicit resize: sets each size that is given — the vCPU count, the memory in
    /// MiB (rounded up to whole memory blocks, see [`Resizer::set_memory`]) — and, once it
    /// is set, pins it, so its controller stops changing it (a resize that fails pins
    /// nothing). Both are one change: [`Resizer::close`] waits for all of it. Returns the
    /// sizes reached.
    pub async fn resize(
        &self,
        cpus: Option<u16>,
        memory_mib: Option<u32>,
    ) -> Result<(u16, u32), ResizeError> {
        self.change(cpus, memory_mib, true).await
    }

    /// Sets the vCPU count: adds vCPUs at the lowest free positions and has the guest online
    /// them (and any plugged one still offline), or removes the highest hot-added ones (the
    /// guest offlines them first). A pinned count is left as it is: this is the controllers'
    /// path, and an explicit resize may have pinned it while this call waited.
    pub async fn set_cpus(&self, target: u16) -> Result<u16, ResizeError> {
        Ok(self.change(Some(target), None, false).await?.0)
    }

    /// Sets the memory size in MiB. Growing adds one device of the difference rounded up
    /// to the memory block (128 MiB), at most up to the maximum, and waits until the guest
    /// onlined it; shrinking removes the newest devices while the size stays at or above
    /// the target (the guest may refuse to give memory back). A pinned size is left as it is,
    /// as with [`Resizer::set_cpus`].
    pub async fn set_memory(&self, target_mib: u32) -> Result<u32, ResizeError> {
        Ok(self.change(None, Some(target_mib), false).await?.1)
    }

    /// One change: the targets checked against the room, then applied under the operation
    /// lock (pinned if asked), and the sizes read before the lock is released, so that
    /// `close` returning means no device operation or query of it is left.
    async fn change(
        &self,
        cpus: Option<u16>,
        memory_mib: Option<u32>,
        pin: bool,
    ) -> Result<(u16, u32), ResizeError> {
        let room = self.room();
        if let Some(n) = cpus {
            check(
                "vCPU count",
                n.into(),
                room.boot_cpus.into(),
                room.max_cpus.into(),
            )?;
        }
        if let Some(m) = memory_mib {
            check(
                "memory (MiB)",
                m.into(),
                room.boot_memory_mib.into(),
                room.max_memory_mib.into(),
            )?;
        }
        let closed = self.op.lock().await;
        if *closed {
            return Err(ResizeError::Closed);
        }
        // A controller's change leaves a size alone that an explicit resize pinned while
        // it waited for the lock.
        if let Some(n) = cpus.filter(|_| pin || !self.cpus_pinned()) {
            self.apply_cpus(n).await?;
            if pin {
                self.cpus_pinned.store(true, Ordering::Release);
            }
        }
        if let Some(m) = memory_mib.filter(|_| pin || !self.memory_pinned()) {
            self.apply_memory(m).await?;
            if pin {
                self.memory_pinned.store(true, Ordering::Release);
            }
        }
        let sizes = (self.cpus().await?, self.memory_mib().await?);
        drop(closed);
        Ok(sizes)
    }

    /// [`Resizer::set_cpus`]'s change, with the operation lock held.
    async fn apply_cpus(&self, target: u16) -> Result<(), ResizeError> {
        let slots = self.vm.cpu_slots().await?;
        let plugged = slots.iter().filter(|s| s.plugged).count();
        let target_n = usize::from(target);
        if target_n >= plugged {
            for s in slots.iter().filter(|s| !s.plugged).take(target_n - plugged) {
                self.vm.add_cpu(s.slot).await?;
            }
            // Also onlines a vCPU an earlier change plugged but the guest did not take.
            self.agent.online_cpus(target, self.online_timeout).await?;
        } else {
            for s in slots
                .iter()
                .rev()
                .filter(|s| s.hotplugged)
                .take(plugged - target_n)
            {
                self.vm.remove_cpu(s.slot).await?;
            }
        }
        Ok(())
    }

    /// [`Resizer::set_memory`]'s change, with the operation lock held.
    async fn apply_memory(&self, target_mib: u32) -> Result<(), ResizeError> {
        let room = self.room();
        let devices = self.vm.memory_devices().await?;
        let mut current = room.boot_memory_mib + devices.iter().map(|d| d.size_mib).sum::<u32>();
        if target_mib > current {
            let size = (target_mib - current)
                .div_ceil(MEMORY_BLOCK_MIB)
                .saturating_mul(MEMORY_BLOCK_MIB)
                .min((room.max_memory_mib - current) / MEMORY_BLOCK_MIB * MEMORY_BLOCK_MIB);
            if size > 0 {
                let before = self.agent.usage().await?.mem_total_kib;
                self.vm.add_memory(size).await?;
                self.wait_memory_online(before + u64::from(size) * 1024, size)
                    .await?;
            }
        } else {
            for d in devices.iter().rev() {
                if current - d.size_mib < target_mib {
                    break;
                }
                self.vm.remove_memory(&d.id).await?;
                current -= d.size_mib;
            }
        }
        Ok(())
    }

    async fn wait_memory_online(&self, total_kib: u64, mib: u32) -> Result<(), ResizeError> {
        let deadline = tokio::time::Instant::now() + self.online_timeout;
        loop {
            if self.agent.usage().await?.mem_total_kib >= total_kib {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ResizeError::MemoryNotOnline {
                    mib,
                    after: self.online_timeout,
                });
            }
            tokio::time::sleep(ONLINE_POLL).await;
        }
    }

    /// Waits for a change in flight to finish, then refuses every later one.
    pub async fn close(&self) {
        *self.op.lock().await = true;
    }
}

fn check(what: &'static str, got: u64, min: u64, max: u64) -> Result<(), ResizeError> {
    if (min..=max).contains(&got) {
        Ok(())
    } else {
        Err(ResizeError::OutOfRange {
            what,
            min,
            max,
            got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::agent::{dial_with_retry, RetryPolicy};
    use crate::vm::fake::{FakeBackend, FakeScript};
    use crate::vm::{VmBackend, VmId, VmSpec};

    async fn fake_resizer(root: &std::path::Path) -> Resizer {
        let spec = VmSpec {
            id: VmId::new("r").unwrap(),
            cpus: 1,
            memory_mib: 256,
            max_cpus: 4,
            max_memory_mib: 1024,
            memory_slots: 2,
            kernel_args: Vec::new(),
            state_root: root.to_owned(),
            ready_timeout: Duration::from_secs(5),
            shares: Vec::new(),
            nics: Vec::new(),
        };
        let vm = FakeBackend::new(FakeScript::default())
            .start(&spec)
            .await
            .unwrap();
        let agent = dial_with_retry(
            &vm.agent_address(),
            Duration::from_secs(2),
            RetryPolicy::default(),
        )
        .await
        .unwrap();
        Resizer::new(vm, agent, Duration::from_secs(2))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pinned_size_is_left_to_explicit_resizes() {
        let root = tempfile::tempdir().unwrap();
        let r = fake_resizer(root.path()).await;
        assert_eq!(r.set_cpus(2).await.unwrap(), 2);
        assert!(!r.cpus_pinned());
        assert_eq!(r.resize(Some(3), None).await.unwrap(), (3, 256));
        assert!(r.cpus_pinned() && !r.memory_pinned());
        // The controllers' path leaves the pinned count alone, not the memory.
        assert_eq!(r.set_cpus(4).await.unwrap(), 3);
        assert_eq!(r.set_memory(512).await.unwrap(), 512);
        // A failed explicit resize pins nothing: out of the slots (2 devices).
        assert_eq!(r.set_memory(640).await.unwrap(), 640);
        let e = r.resize(None, Some(1024)).await.unwrap_err();
        assert!(
            matches!(e, ResizeError::Hotplug(HotplugError::NoRoom { .. })),
            "{e:?}"
        );
        assert!(!r.memory_pinned());
        r.close().await;
        assert!(matches!(r.set_cpus(1).await, Err(ResizeError::Closed)));
        assert!(matches!(
            r.resize(Some(1), None).await,
            Err(ResizeError::Closed)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_rounds_up_to_blocks_and_shrinks_by_whole_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = fake_resizer(root.path()).await;
        assert_eq!(r.set_memory(257).await.unwrap(), 384);
        assert_eq!(r.set_memory(1000).await.unwrap(), 1024);
        // 1024 - 640 (the second device) would fall below 800: nothing is removed.
        assert_eq!(r.set_memory(800).await.unwrap(), 1024);
        assert_eq!(r.set_memory(256).await.unwrap(), 256);
        let e = r.set_memory(1025).await.unwrap_err();
        assert!(
            matches!(e, ResizeError::OutOfRange { max: 1024, .. }),
            "{e:?}"
        );
    }
}
