//! The CPU and memory controllers of one VM: background tasks that sample the guest through
//! the agent and resize the VM through its [`Resizer`] under a [`Policy`], and their stop,
//! which the `hotplug_stop` cleanup phase runs.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::policy::{
    run_controller, Actuator, Bounds, BoxError, ControllerReport, Policy, Sample, Sampler,
};
use super::resize::Resizer;

/// The hotplug settings of a shim.
#[derive(Debug, Clone, PartialEq)]
pub struct HotplugConfig {
    /// Run the controllers where the VM has growth room (default `true`). Without them the
    /// VM changes size only on explicit resizes.
    pub auto: bool,
    /// The CPU controller's policy (units: vCPUs).
    pub cpu: Policy,
    /// The memory controller's policy (units: MiB).
    pub memory: Policy,
    /// Bound on the guest taking a hot-added vCPU or memory device (default 10 s; the
    /// agent waits for a vCPU at most a minute).
    pub online_timeout: Duration,
}

impl Default for HotplugConfig {
    fn default() -> Self {
        Self {
            auto: true,
            cpu: Policy::cpu(),
            memory: Policy::memory(),
            online_timeout: Duration::from_secs(10),
        }
    }
}

/// What the controllers did, when they were stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HotplugReport {
    /// The CPU controller's report, if it ran.
    pub cpu: Option<ControllerReport>,
    /// The memory controller's report, if it ran.
    pub memory: Option<ControllerReport>,
}

/// Samples the guest's CPU utilisation: busy ticks over all ticks since the last reading.
struct CpuSampler {
    resizer: Arc<Resizer>,
    last: Mutex<Option<(u64, u64)>>,
}

#[async_trait::async_trait]
impl Sampler for CpuSampler {
    async fn sample(&self) -> Result<Option<Sample>, BoxError> {
        if self.resizer.cpus_pinned() {
            return Ok(None);
        }
        let usage = self.resizer.agent().usage().await?;
        // The vCPUs the guest can use: plugged and online. A vCPU plugged by a change whose
        // onlining failed counts as missing, so a busy guest asks for it again and the next
        // change onlines it.
        let current = u32::from(self.resizer.cpus().await?).min(usage.online_cpus);
        let now = (usage.cpu_busy_ticks, usage.cpu_total_ticks);
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(now);
        let Some((busy0, total0)) = last else {
            return Ok(None);
        };
        let total = now.1.saturating_sub(total0);
        if total == 0 {
            return Ok(None);
        }
        #[allow(clippy::cast_precision_loss)] // tick counts far below 2^52
        let utilisation = now.0.saturating_sub(busy0) as f64 * 100.0 / total as f64;
        Ok(Some(Sample {
            current,
            utilisation,
        }))
    }
}

/// Samples the guest's memory use: (`MemTotal` − `MemAvailable`) / `MemTotal`.
struct MemorySampler(Arc<Resizer>);

#[async_trait::async_trait]
impl Sampler for MemorySampler {
    async fn sample(&self) -> Result<Option<Sample>, BoxError> {
        if self.0.memory_pinned() {
            return Ok(None);
        }
        let usage = self.0.agent().usage().await?;
        if usage.mem_total_kib == 0 {
            return Ok(None);
        }
        #[allow(clippy::cast_precision_loss)] // KiB counts far below 2^52
        let utilisation = usage.mem_total_kib.saturating_sub(usage.mem_available_kib) as f64
            * 100.0
            / usage.mem_total_kib as f64;
        Ok(Some(Sample {
            current: self.0.memory_mib().await?,
            utilisation,
        }))
    }
}

struct CpuActuator(Arc<Resizer>);

#[async_trait::async_trait]
impl Actuator for CpuActuator {
    async fn resize(&self, target: u32) -> Result<u32, BoxError> {
        let target = u16::try_from(target)?;
        Ok(self.0.set_cpus(target).await?.into())
    }
}

struct MemoryActuator(Arc<Resizer>);

#[async_trait::async_trait]
impl Actuator for MemoryActuator {
    async fn resize(&self, target: u32) -> Result<u32, BoxError> {
        Ok(self.0.set_memory(target).await?)
    }
}

/// One VM's running controllers and its resizer; see the module docs.
#[derive(Debug)]
pub struct Controllers {
    resizer: Arc<Resizer>,
    stop: watch::Sender<bool>,
    cpu: Mutex<Option<JoinHandle<ControllerReport>>>,
    memory: Mutex<Option<JoinHandle<ControllerReport>>>,
}

impl Controllers {
    /// Starts a controller for each resource the VM has growth room for (none when
    /// `config.auto` is off). Must be called within a tokio runtime.
    pub fn start(resizer: Arc<Resizer>, config: &HotplugConfig) -> Self {
        let (stop, _) = watch::channel(false);
        let room = resizer.room();
        let cpu = (config.auto && room.cpus()).then(|| {
            let bounds = Bounds {
                min: room.boot_cpus.into(),
                max: room.max_cpus.into(),
            };
            let sampler = CpuSampler {
                resizer: Arc::clone(&resizer),
                last: Mutex::new(None),
            };
            let actuator = CpuActuator(Arc::clone(&resizer));
            let mut policy = config.cpu.clone();
            // A backend that cannot take vCPUs back: growing is all the controller can do.
            policy.scale_down &= room.cpus_removable;
            let rx = stop.subscribe();
            tokio::spawn(async move {
                run_controller("cpu", policy, bounds, &sampler, &actuator, rx).await
            })
        });
        let memory = (config.auto && room.memory()).then(|| {
            // Each change is one memory device of `step`: the slots bound the growth too.
            let by_slots = u32::from(room.memory_slots)
                .saturating_mul(config.memory.step)
                .saturating_add(room.boot_memory_mib);
            let bounds = Bounds {
                min: room.boot_memory_mib,
                max: room.max_memory_mib.min(by_slots),
            };
            let sampler = MemorySampler(Arc::clone(&resizer));
            let actuator = MemoryActuator(Arc::clone(&resizer));
            let (policy, rx) = (config.memory.clone(), stop.subscribe());
            tokio::spawn(async move {
                run_controller("memory", policy, bounds, &sampler, &actuator, rx).await
            })
        });
        Self {
            resizer,
            stop,
            cpu: Mutex::new(cpu),
            memory: Mutex::new(memory),
        }
    }

    /// The resizer the controllers use (for explicit resizes).
    pub fn resizer(&self) -> &Arc<Resizer> {
        &self.resizer
    }

    /// Stops both controllers — each finishes a resize in flight first — and the resizer:
    /// waits for the change in flight (a controller's or an explicit one) and refuses later
    /// ones. Idempotent: a second call returns an empty report. An error says a controller
    /// task panicked; the resizer is closed all the same.
    pub async fn stop(&self) -> Result<HotplugReport, BoxError> {
        self.stop.send_replace(true);
        self.resizer.close().await;
        let cpu = self
            .cpu
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Both joined before either's failure is reported.
        let cpu = match cpu {
            Some(task) => Some(task.await),
            None => None,
        };
        let memory = match memory {
            Some(task) => Some(task.await),
            None => None,
        };
        Ok(HotplugReport {
            cpu: cpu
                .transpose()
                .map_err(|e| format!("the CPU controller failed: {e}"))?,
            memory: memory
                .transpose()
                .map_err(|e| format!("the memory controller failed: {e}"))?,
        })
    }
}
