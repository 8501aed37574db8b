//! vCPU and memory hotplug through QMP (SPEC §12).
//!
//! - vCPUs: `query-hotpluggable-cpus` lists every position `-smp maxcpus=` made; a vCPU is
//!   added with `device_add` of the listed type at a free position's socket/core/thread
//!   ids, and removed with `device_del`, after which the guest's ACPI handler offlines and
//!   ejects it.
//! - Memory: a backend object (`memory-backend-memfd,share=on` when vhost-user devices must
//!   see guest memory, as the vsock daemon must; else `memory-backend-ram`) plus a
//!   `pc-dimm` on it. Removal is `device_del` of the DIMM — the guest offlines the memory
//!   and ejects it, or refuses (`ACPI_DEVICE_OST` with a failure status) — then `object-del`.
//!
//! One vCPU operation and one memory operation at a time per VM (a mutex each), so device
//! ids and the room checks never race (the shim's `Resizer` serializes all of them); a
//! listing waits for a memory operation in flight. A removal the guest does not complete
//! within the bound is reported and the device stays listed; when the guest completes it
//! later, the next memory operation or listing finds the DIMM gone from QEMU and deletes
//! its backend. A backend whose `object-del` failed is retried the same way.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::qmp::{QmpClient, QmpEventKind};
use crate::vm::hotplug::{CpuSlot, CpuState, HotplugError, HotplugRoom, MemoryDevice};
use crate::vm::MEMORY_BLOCK_MIB;

/// How often a removal looks whether the device is gone.
const POLL: Duration = Duration::from_millis(20);

/// The QOM path prefix of devices added with an id (`device_add`), as opposed to the boot
/// vCPUs under `/machine/unattached`.
const PERIPHERAL: &str = "/machine/peripheral/";

/// `_OST` status codes of a failed ejection (ACPI 6.x, 6.3.5): not supported, device in
/// use, device busy, dependent device.
const EJECT_FAILED: std::ops::RangeInclusive<u64> = 0x80..=0x83;

/// `_OST` source event of an ejection request.
const OST_EJECT: u64 = 3;

/// The memory devices this VM hot-added, and the counter naming the next one.
#[derive(Debug, Default)]
struct Memory {
    next: u64,
    devices: Vec<MemoryDevice>,
    /// Memory backends whose DIMM is gone but whose `object-del` has not succeeded yet.
    stale: Vec<String>,
}

/// The memory backend object of the DIMM `id` (`hpdimmN` → `hpmemN`).
fn backend_of(id: &str) -> String {
    format!("hpmem{}", id.trim_start_matches("hpdimm"))
}

/// A QEMU VM's hotplug state.
#[derive(Debug)]
pub(crate) struct QemuHotplug {
    room: HotplugRoom,
    /// Hot-added memory must be shareable (vhost-user devices map guest memory).
    shared_memory: bool,
    /// Bound on a guest releasing a removed device.
    removal_timeout: Duration,
    memory: tokio::sync::Mutex<Memory>,
    /// Serializes vCPU operations.
    cpus: tokio::sync::Mutex<()>,
}

fn vmm(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> HotplugError {
    HotplugError::Vmm {
        what,
        source: Box::new(e),
    }
}

fn cpu_id(slot: CpuSlot) -> String {
    format!("hpcpu-{}-{}-{}", slot.socket, slot.core, slot.thread)
}

/// One entry of `query-hotpluggable-cpus`.
#[derive(Debug, Clone)]
struct Listed {
    state: CpuState,
    driver: String,
    props: Value,
}

impl QemuHotplug {
    pub(crate) fn new(room: HotplugRoom, shared_memory: bool, removal_timeout: Duration) -> Self {
        Self {
            room,
            shared_memory,
            removal_timeout,
            memory: tokio::sync::Mutex::default(),
            cpus: tokio::sync::Mutex::default(),
        }
    }

    pub(crate) fn room(&self) -> HotplugRoom {
        self.room
    }

    async fn list_cpus(qmp: &QmpClient) -> Result<Vec<Listed>, HotplugError> {
        let v = qmp
            .execute("query-hotpluggable-cpus", None)
            .await
            .map_err(|e| vmm("list hotpluggable vCPUs", e))?;
        let entries = v.as_array().ok_or_else(|| HotplugError::Vmm {
            what: "list hotpluggable vCPUs",
            source: format!("unexpected reply {v}").into(),
        })?;
        let mut out = Vec::new();
        for e in entries {
            let props = e.get("props").cloned().unwrap_or(Value::Null);
            let id = |k: &str| {
                props
                    .get(k)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0)
            };
            let qom = e.get("qom-path").and_then(Value::as_str);
            out.push(Listed {
                state: CpuState {
                    slot: CpuSlot {
                        socket: id("socket-id"),
                        core: id("core-id"),
                        thread: id("thread-id"),
                    },
                    plugged: qom.is_some(),
                    hotplugged: qom.is_some_and(|p| p.starts_with(PERIPHERAL)),
                },
                driver: e
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                props,
            });
        }
        out.sort_by_key(|l| l.state.slot);
        Ok(out)
    }

    pub(crate) async fn cpu_slots(&self, qmp: &QmpClient) -> Result<Vec<CpuState>, HotplugError> {
        Ok(Self::list_cpus(qmp)
            .await?
            .into_iter()
            .map(|l| l.state)
            .collect())
    }

    pub(crate) async fn add_cpu(&self, qmp: &QmpClient, slot: CpuSlot) -> Result<(), HotplugError> {
        let _one = self.cpus.lock().await;
        let listed = Self::list_cpus(qmp).await?;
        let Some(entry) = listed.iter().find(|l| l.state.slot == slot) else {
            return Err(HotplugError::NoRoom {
                what: "a vCPU",
                detail: format!("the VM has no vCPU position {slot}"),
            });
        };
        if entry.state.plugged {
            return Err(HotplugError::NoRoom {
                what: "a vCPU",
                detail: format!("{slot} already holds one"),
            });
        }
        let mut args = json!({ "driver": entry.driver, "id": cpu_id(slot) });
        if let (Some(args), Some(props)) = (args.as_object_mut(), entry.props.as_object()) {
            for (k, v) in props {
                args.insert(k.clone(), v.clone());
            }
        }
        qmp.execute("device_add", Some(args))
            .await
            .map_err(|e| vmm("add a vCPU", e))?;
        tracing::info!(%slot, "vCPU hot-added");
        Ok(())
    }

    pub(crate) async fn remove_cpu(
        &self,
        qmp: &QmpClient,
        slot: CpuSlot,
    ) -> Result<(), HotplugError> {
        if !self.room.cpus_removable {
            return Err(HotplugError::NotRemovable {
                what: "a vCPU",
                detail: "QEMU under TCG crashes when a vCPU is plugged after one was unplugged, \
                         so hot-added vCPUs stay (they can be removed under KVM)"
                    .into(),
            });
        }
        let _one = self.cpus.lock().await;
        let listed = Self::list_cpus(qmp).await?;
        match listed.iter().find(|l| l.state.slot == slot) {
            Some(l) if l.state.hotplugged => {}
            Some(l) if l.state.plugged => {
                return Err(HotplugError::NotRemovable {
                    what: "a vCPU",
                    detail: format!("the vCPU at {slot} is a boot vCPU"),
                })
            }
            _ => {
                return Err(HotplugError::NotRemovable {
                    what: "a vCPU",
                    detail: format!("no vCPU at {slot}"),
                })
            }
        }
        let id = cpu_id(slot);
        let mut events = qmp.events();
        qmp.execute("device_del", Some(json!({ "id": id })))
            .await
            .map_err(|e| vmm("remove a vCPU", e))?;
        self.wait_gone(&mut events, &id, || async {
            Ok(!Self::list_cpus(qmp)
                .await?
                .iter()
                .any(|l| l.state.slot == slot && l.state.plugged))
        })
        .await?;
        tracing::info!(%slot, "vCPU removed");
        Ok(())
    }

    pub(crate) async fn memory_devices(
        &self,
        qmp: &QmpClient,
    ) -> Result<Vec<MemoryDevice>, HotplugError> {
        let mut memory = self.memory.lock().await;
        Self::reconcile(qmp, &mut memory).await?;
        Ok(memory.devices.clone())
    }

    /// Drops the devices QEMU no longer has (a removal the guest completed after its bound)
    /// and deletes their backends, retrying those whose deletion failed before.
    async fn reconcile(qmp: &QmpClient, memory: &mut Memory) -> Result<(), HotplugError> {
        if memory.devices.is_empty() && memory.stale.is_empty() {
            return Ok(());
        }
        let listed = Self::dimm_ids(qmp).await?;
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut memory.devices)
            .into_iter()
            .partition(|d| listed.contains(&d.id));
        memory.devices = kept;
        for d in gone {
            tracing::info!(id = %d.id, "the guest released a memory device after its bound");
            memory.stale.push(backend_of(&d.id));
        }
        for object in std::mem::take(&mut memory.stale) {
            Self::delete_backend(qmp, object, &mut memory.stale).await;
        }
        Ok(())
    }

    /// `object-del` of a memory backend whose DIMM is gone; kept in `stale` for a retry
    /// when it fails.
    async fn delete_backend(qmp: &QmpClient, object: String, stale: &mut Vec<String>) {
        if let Err(e) = qmp
            .execute("object-del", Some(json!({ "id": object })))
            .await
        {
            tracing::warn!(%object, error = %e, "cannot delete a memory backend; will retry");
            stale.push(object);
        }
    }

    /// The ids of the memory devices QEMU has.
    async fn dimm_ids(qmp: &QmpClient) -> Result<Vec<String>, HotplugError> {
        let v = qmp
            .execute("query-memory-devices", None)
            .await
            .map_err(|e| vmm("list memory devices", e))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.pointer("/data/id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    pub(crate) async fn add_memory(
        &self,
        qmp: &QmpClient,
        size_mib: u32,
    ) -> Result<MemoryDevice, HotplugError> {
        if size_mib == 0 || !size_mib.is_multiple_of(MEMORY_BLOCK_MIB) {
            return Err(HotplugError::MemorySize(size_mib));
        }
        let mut memory = self.memory.lock().await;
        Self::reconcile(qmp, &mut memory).await?;
        let plugged: u64 = memory.devices.iter().map(|d| u64::from(d.size_mib)).sum();
        let room = u64::from(self.room.max_memory_mib - self.room.boot_memory_mib);
        if plugged + u64::from(size_mib) > room {
            return Err(HotplugError::NoRoom {
                what: "memory",
                detail: format!(
                    "{size_mib} MiB more would exceed the maximum of {} MiB ({} MiB in use)",
                    self.room.max_memory_mib,
                    u64::from(self.room.boot_memory_mib) + plugged
                ),
            });
        }
        if memory.devices.len() >= usize::from(self.room.memory_slots) {
            return Err(HotplugError::NoRoom {
                what: "memory",
                detail: format!("all {} memory slots are used", self.room.memory_slots),
            });
        }
        memory.next += 1;
        let n = memory.next;
        let (object, device) = (format!("hpmem{n}"), format!("hpdimm{n}"));
        let bytes = u64::from(size_mib) << 20;
        let backend = if self.shared_memory {
            json!({ "qom-type": "memory-backend-memfd", "id": object, "size": bytes, "share": true })
        } else {
            json!({ "qom-type": "memory-backend-ram", "id": object, "size": bytes })
        };
        qmp.execute("object-add", Some(backend))
            .await
            .map_err(|e| vmm("create a memory backend", e))?;
        let added = qmp
            .execute(
                "device_add",
                Some(json!({ "driver": "pc-dimm", "id": device, "memdev": object })),
            )
            .await;
        if let Err(e) = added {
            // Undo the backend so a failed add leaves nothing.
            if let Err(undo) = qmp
                .execute("object-del", Some(json!({ "id": object })))
                .await
            {
                tracing::warn!(%object, error = %undo, "cannot delete the memory backend of a failed add; will retry");
                memory.stale.push(object);
            }
            return Err(vmm("add a memory device", e));
        }
        let dev = MemoryDevice {
            id: device,
            size_mib,
        };
        memory.devices.push(dev.clone());
        tracing::info!(id = %dev.id, size_mib, "memory hot-added");
        Ok(dev)
    }

    pub(crate) async fn remove_memory(
        &self,
        qmp: &QmpClient,
        id: &str,
    ) -> Result<(), HotplugError> {
        let mut memory = self.memory.lock().await;
        Self::reconcile(qmp, &mut memory).await?;
        let Some(index) = memory.devices.iter().position(|d| d.id == id) else {
            return Err(HotplugError::NotRemovable {
                what: "memory",
                detail: format!("no hot-added memory device {id:?}"),
            });
        };
        let mut events = qmp.events();
        qmp.execute("device_del", Some(json!({ "id": id })))
            .await
            .map_err(|e| vmm("remove a memory device", e))?;
        self.wait_gone(&mut events, id, || async {
            Ok(!Self::dimm_ids(qmp).await?.iter().any(|d| d == id))
        })
        .await?;
        memory.devices.remove(index);
        // The DIMM is gone; its backend goes now, or with the next memory operation.
        Self::delete_backend(qmp, backend_of(id), &mut memory.stale).await;
        tracing::info!(%id, "memory removed");
        Ok(())
    }

    /// Waits until `gone` says the device left, the guest refuses the ejection
    /// (`ACPI_DEVICE_OST` naming it with a failure status), or the bound passes.
    async fn wait_gone<F, Fut>(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<super::qmp::QmpEvent>,
        id: &str,
        gone: F,
    ) -> Result<(), HotplugError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<bool, HotplugError>>,
    {
        let deadline = tokio::time::Instant::now() + self.removal_timeout;
        loop {
            if gone().await? {
                return Ok(());
            }
            let tick = tokio::time::sleep(POLL);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    () = &mut tick => break,
                    event = events.recv() => match event {
                        Ok(event) => {
                            if let Some(reason) = refusal(&event.kind, id) {
                                return Err(HotplugError::Refused { device: id.to_owned(), reason });
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return Err(HotplugError::Stopping),
                    },
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HotplugError::Timeout {
                    device: id.to_owned(),
                    after: self.removal_timeout,
                });
            }
        }
    }
}

/// An `ACPI_DEVICE_OST` event saying the guest failed to eject `id`, as a reason.
fn refusal(kind: &QmpEventKind, id: &str) -> Option<String> {
    let QmpEventKind::Other { name, data } = kind else {
        return None;
    };
    if name != "ACPI_DEVICE_OST" {
        return None;
    }
    let info = data.get("info")?;
    if info.get("device").and_then(Value::as_str) != Some(id)
        || info.get("source").and_then(Value::as_u64) != Some(OST_EJECT)
    {
        return None;
    }
    let status = info.get("status").and_then(Value::as_u64)?;
    EJECT_FAILED.contains(&status).then(|| {
        let what = match status {
            0x80 => "ejection not supported",
            0x81 => "device in use",
            0x82 => "device busy (memory it could not offline)",
            _ => "dependent device",
        };
        format!("{what} (_OST status {status:#x})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_read_from_ost_events() {
        let ev = |device: &str, source: u64, status: u64| QmpEventKind::Other {
            name: "ACPI_DEVICE_OST".into(),
            data: json!({"info": {"device": device, "source": source, "status": status,
                                   "slot": "0", "slot-type": "DIMM"}}),
        };
        assert!(refusal(&ev("hpdimm1", 3, 0x82), "hpdimm1")
            .unwrap()
            .contains("device busy"));
        // In progress, success, another device, an insertion: not a refusal.
        assert_eq!(refusal(&ev("hpdimm1", 3, 0x84), "hpdimm1"), None);
        assert_eq!(refusal(&ev("hpdimm1", 3, 0), "hpdimm1"), None);
        assert_eq!(refusal(&ev("hpdimm2", 3, 0x82), "hpdimm1"), None);
        assert_eq!(refusal(&ev("hpdimm1", 1, 0x82), "hpdimm1"), None);
        assert_eq!(refusal(&QmpEventKind::Stop, "hpdimm1"), None);
    }

    #[test]
    fn cpu_ids_name_the_position() {
        let slot = CpuSlot {
            socket: 0,
            core: 3,
            thread: 1,
        };
        assert_eq!(cpu_id(slot), "hpcpu-0-3-1");
        assert_eq!(slot.to_string(), "socket 0 core 3 thread 1");
    }
}
