//! The [`FakeVm`](super::fake::FakeVm)'s simulated hotplug: vCPUs and memory devices kept
//! in memory, each change taking the script's `hotplug_delay`, every step logged so tests
//! can see an operation finish before the VM stopped; and the fake agent's `Resources`
//! service, which reports what is plugged.

use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use spinbox_protocol::agent::{OnlineCpusRequest, UsageRequest, UsageResponse};
use spinbox_protocol::agent_ttrpc::Resources;
use ttrpc::asynchronous::TtrpcContext;

use super::hotplug::{CpuSlot, CpuState, HotplugError, HotplugRoom, MemoryDevice};
use super::MEMORY_BLOCK_MIB;

/// One step of a fake VM's life that hotplug tests order against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeHotplugEvent {
    /// A device change began (`add_cpu`, `remove_cpu`, `add_memory`, `remove_memory`).
    Began(&'static str),
    /// It ended.
    Ended(&'static str),
    /// The VM's stop began.
    StopBegan,
}

/// What is plugged.
#[derive(Debug)]
pub(crate) struct FakeHotplug {
    room: HotplugRoom,
    delay: Duration,
    state: Mutex<State>,
    /// One change at a time, as QEMU's backend does.
    one: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    cpus: u16,
    memory: Vec<MemoryDevice>,
    next: u64,
    log: Vec<FakeHotplugEvent>,
    /// Ticks of busy time reported, per vCPU: tests set the utilisation they want.
    busy_percent: u64,
    busy_ticks: u64,
    total_ticks: u64,
}

fn slot(n: u16) -> CpuSlot {
    CpuSlot {
        socket: 0,
        core: n.into(),
        thread: 0,
    }
}

impl FakeHotplug {
    pub(crate) fn new(room: HotplugRoom, delay: Duration) -> Self {
        Self {
            room,
            delay,
            state: Mutex::new(State {
                cpus: room.boot_cpus,
                ..State::default()
            }),
            one: tokio::sync::Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn room(&self) -> HotplugRoom {
        self.room
    }

    pub(crate) fn log(&self) -> Vec<FakeHotplugEvent> {
        self.state().log.clone()
    }

    pub(crate) fn push(&self, event: FakeHotplugEvent) {
        self.state().log.push(event);
    }

    pub(crate) fn set_busy_percent(&self, percent: u64) {
        self.state().busy_percent = percent.min(100);
    }

    pub(crate) fn cpus(&self) -> Vec<CpuState> {
        let plugged = self.state().cpus;
        (0..self.room.max_cpus)
            .map(|n| CpuState {
                slot: slot(n),
                plugged: n < plugged,
                hotplugged: n < plugged && n >= self.room.boot_cpus,
            })
            .collect()
    }

    async fn change<T>(
        &self,
        what: &'static str,
        apply: impl FnOnce(&mut State) -> Result<T, HotplugError>,
    ) -> Result<T, HotplugError> {
        let _one = self.one.lock().await;
        self.push(FakeHotplugEvent::Began(what));
        tokio::time::sleep(self.delay).await;
        let result = apply(&mut self.state());
        self.push(FakeHotplugEvent::Ended(what));
        result
    }

    pub(crate) async fn add_cpu(&self, at: CpuSlot) -> Result<(), HotplugError> {
        let max = self.room.max_cpus;
        self.change("add_cpu", |s| {
            if at != slot(s.cpus) || s.cpus >= max {
                return Err(HotplugError::NoRoom {
                    what: "a vCPU",
                    detail: format!("{at} is not the next free position"),
                });
            }
            s.cpus += 1;
            Ok(())
        })
        .await
    }

    pub(crate) async fn remove_cpu(&self, at: CpuSlot) -> Result<(), HotplugError> {
        let boot = self.room.boot_cpus;
        self.change("remove_cpu", |s| {
            if s.cpus <= boot || at != slot(s.cpus - 1) {
                return Err(HotplugError::NotRemovable {
                    what: "a vCPU",
                    detail: format!("{at} is not the last hot-added vCPU"),
                });
            }
            s.cpus -= 1;
            Ok(())
        })
        .await
    }

    pub(crate) fn memory(&self) -> Vec<MemoryDevice> {
        self.state().memory.clone()
    }

    pub(crate) async fn add_memory(&self, size_mib: u32) -> Result<MemoryDevice, HotplugError> {
        if size_mib == 0 || !size_mib.is_multiple_of(MEMORY_BLOCK_MIB) {
            return Err(HotplugError::MemorySize(size_mib));
        }
        let room = self.room;
        self.change("add_memory", |s| {
            let plugged: u64 = s.memory.iter().map(|d| u64::from(d.size_mib)).sum();
            if u64::from(room.boot_memory_mib) + plugged + u64::from(size_mib)
                > u64::from(room.max_memory_mib)
                || s.memory.len() >= usize::from(room.memory_slots)
            {
                return Err(HotplugError::NoRoom {
                    what: "memory",
                    detail: format!("{size_mib} MiB does not fit"),
                });
            }
            s.next += 1;
            let dev = MemoryDevice {
                id: format!("fakedimm{}", s.next),
                size_mib,
            };
            s.memory.push(dev.clone());
            Ok(dev)
        })
        .await
    }

    pub(crate) async fn remove_memory(&self, id: &str) -> Result<(), HotplugError> {
        self.change("remove_memory", |s| {
            let before = s.memory.len();
            s.memory.retain(|d| d.id != id);
            if s.memory.len() == before {
                return Err(HotplugError::NotRemovable {
                    what: "memory",
                    detail: format!("no hot-added memory device {id:?}"),
                });
            }
            Ok(())
        })
        .await
    }

    /// The counters the fake agent reports: busy time grows by the set percentage of
    /// 100 ticks per vCPU on every reading.
    fn usage(&self) -> UsageResponse {
        let mut s = self.state();
        let cpus = u64::from(s.cpus);
        s.total_ticks += 100 * cpus;
        s.busy_ticks += s.busy_percent * cpus;
        let plugged: u32 = s.memory.iter().map(|d| d.size_mib).sum();
        let total_kib = u64::from(self.room.boot_memory_mib + plugged) * 1024;
        let mut r = UsageResponse::new();
        r.online_cpus = s.cpus.into();
        r.present_cpus = s.cpus.into();
        r.cpu_busy_ticks = s.busy_ticks;
        r.cpu_total_ticks = s.total_ticks;
        r.mem_total_kib = total_kib;
        r.mem_available_kib = total_kib / 2;
        r
    }
}

/// The fake agent's `Resources` service.
pub(crate) struct FakeResources(pub(crate) Weak<super::fake::FakeVm>);

#[async_trait::async_trait]
impl Resources for FakeResources {
    async fn usage(&self, _: &TtrpcContext, _: UsageRequest) -> ttrpc::Result<UsageResponse> {
        self.0
            .upgrade()
            .map(|vm| vm.hotplug.usage())
            .ok_or_else(|| ttrpc::Error::Others("the fake VM is gone".into()))
    }

    async fn online_cpus(
        &self,
        _: &TtrpcContext,
        req: OnlineCpusRequest,
    ) -> ttrpc::Result<UsageResponse> {
        let vm = self
            .0
            .upgrade()
            .ok_or_else(|| ttrpc::Error::Others("the fake VM is gone".into()))?;
        let u = vm.hotplug.usage();
        if u.present_cpus < req.present_at_least {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::DEADLINE_EXCEEDED,
                format!(
                    "{} vCPUs present, {} expected",
                    u.present_cpus, req.present_at_least
                ),
            )));
        }
        Ok(u)
    }
}
