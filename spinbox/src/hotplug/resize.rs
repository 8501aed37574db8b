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
    /// MiB (rounded up to whole memory blocks, see [`Resizer::set_memory`]) — and pins it,
    /// so its controller stops changing it. Both are one change: [`Resizer::close`] waits
    /// for all of it. Returns the sizes reached.
    pub async fn resize(
        &self,
        cpus: Option<u16>,
        memory_mib: Option<u32>,
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
        if let Some(n) = cpus {
            self.cpus_pinned.store(true, Ordering::Release);
            self.apply_cpus(n).await?;
        }
        if let Some(m) = memory_mib {
            self.memory_pinned.store(true, Ordering::Release);
            self.apply_memory(m).await?;
        }
        // Read under the lock too: `close` returning means no device query is left either.
        let sizes = (self.cpus().await?, self.memory_mib().await?);
        drop(closed);
        Ok(sizes)
    }

    /// Sets the vCPU count: adds vCPUs at the lowest free positions and has the guest online
    /// them, or removes the highest hot-added ones (the guest offlines them first).
    pub async fn set_cpus(&self, target: u16) -> Result<u16, ResizeError> {
        let room = self.room();
        check(
            "vCPU count",
            target.into(),
            room.boot_cpus.into(),
            room.max_cpus.into(),
        )?;
        let closed = self.op.lock().await;
        if *closed {
            return Err(ResizeError::Closed);
        }
        self.apply_cpus(target).await?;
        let cpus = self.cpus().await;
        drop(closed);
        cpus
    }

    /// [`Resizer::set_cpus`]'s change, with the operation lock held.
    async fn apply_cpus(&self, target: u16) -> Result<(), ResizeError> {
        let slots = self.vm.cpu_slots().await?;
        let plugged = slots.iter().filter(|s| s.plugged).count();
        let target_n = usize::from(target);
        if target_n > plugged {
            for s in slots.iter().filter(|s| !s.plugged).take(target_n - plugged) {
                self.vm.add_cpu(s.slot).await?;
            }
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

    /// Sets the memory size in MiB. Growing adds one device of the difference rounded up
    /// to the memory block (128 MiB), at most up to the maximum, and waits until the guest
    /// onlined it; shrinking removes the newest devices while the size stays at or above
    /// the target (the guest may refuse to give memory back).
    pub async fn set_memory(&self, target_mib: u32) -> Result<u32, ResizeError> {
        let room = self.room();
        check(
            "memory (MiB)",
            target_mib.into(),
            room.boot_memory_mib.into(),
            room.max_memory_mib.into(),
        )?;
        let closed = self.op.lock().await;
        if *closed {
            return Err(ResizeError::Closed);
        }
        self.apply_memory(target_mib).await?;
        let memory = self.memory_mib().await;
        drop(closed);
        memory
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
