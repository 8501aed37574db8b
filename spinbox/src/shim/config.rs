//! [`ShimConfig`]: every timeout of the shim's lifecycle in one place, with defaults that work
//! under software emulation (TCG), loadable from a JSON file.

use crate::hotplug::{HotplugConfig, Policy};
use crate::net::NetworkConfig;
use crate::rootfs::{RootfsTransport, Tools};
use crate::vm::agent::RetryPolicy;
use crate::vm::state_dir::SYSTEM_STATE_ROOT;
use crate::vm::stop::EscalationPolicy;
use crate::vm::{SpecError, VmId, VmSpec};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shim's settings. [`Default`] gives values that work under TCG on a 2-core host.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// Bound on QEMU start → the agent's readiness notice (default 60 s; a TCG boot takes
    /// about 2 s, so this only ends a wedged guest).
    pub start_timeout: Duration,
    /// Bound on each agent RPC (default 10 s).
    pub rpc_timeout: Duration,
    /// Backoff of agent dials: 20 ms doubling to 500 ms, bounded by 10 s in all.
    pub dial_retry: RetryPolicy,
    /// The shutdown escalation: graceful (agent) 10 s, guest power request 5 s, QMP quit
    /// 3 s, SIGTERM 3 s, SIGKILL 5 s.
    pub shutdown: EscalationPolicy,
    /// Where per-VM state directories go (default `/run/spinbox`; the CLI reads
    /// `SPINBOX_STATE_ROOT` and `XDG_RUNTIME_DIR`). Must be absolute.
    pub state_root: PathBuf,
    /// vCPUs (default 1).
    pub cpus: u16,
    /// Guest memory in MiB (default 256, at least [`MIN_MEMORY_MIB`](crate::vm::MIN_MEMORY_MIB)).
    pub memory_mib: u32,
    /// Most vCPUs the VM may grow to by hotplug (default `None`: `cpus`, no growth room).
    pub max_cpus: Option<u16>,
    /// Most memory in MiB the VM may grow to by hotplug (default `None`: `memory_mib`, no
    /// growth room); the room above `memory_mib` is a multiple of 128 MiB.
    pub max_memory_mib: Option<u32>,
    /// Memory hotplug slots (default 4; see `VmSpec::memory_slots`; the QEMU backend takes
    /// at most 7).
    pub memory_slots: u16,
    /// The hotplug controllers' settings (see [`HotplugConfig`]).
    pub hotplug: HotplugConfig,
    /// Extra kernel arguments (see `VmSpec::kernel_args`).
    pub kernel_args: Vec<String>,
    /// How a container's rootfs reaches the guest (default: the transport BENCHMARKS.md
    /// chose, see [`RootfsTransport`]).
    pub rootfs_transport: RootfsTransport,
    /// The host tools the rootfs transports run (`mkfs.erofs`, `virtiofsd`). Default:
    /// none known (the library reads no `PATH`): the CLI takes them from the provisioned
    /// assets and `PATH` ([`Tools::from_assets`]); a transport whose tool is missing fails
    /// the creation with a clear error.
    pub rootfs_tools: Tools,
    /// The VM's network (default `None`: no NIC). With one, every VM is connected through
    /// CNI before it starts (see [`crate::net`]).
    pub network: Option<NetworkConfig>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            start_timeout: Duration::from_mins(1),
            rpc_timeout: Duration::from_secs(10),
            dial_retry: RetryPolicy::default(),
            shutdown: EscalationPolicy::default(),
            state_root: PathBuf::from(SYSTEM_STATE_ROOT),
            cpus: 1,
            memory_mib: 256,
            max_cpus: None,
            max_memory_mib: None,
            memory_slots: 4,
            hotplug: HotplugConfig::default(),
            kernel_args: Vec::new(),
            rootfs_transport: RootfsTransport::default(),
            rootfs_tools: Tools::default(),
            network: None,
        }
    }
}

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid config JSON.
    #[error("invalid config file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of range.
    #[error("invalid config value: {0}")]
    Invalid(String),
    /// The VM settings are out of range.
    #[error("invalid VM settings")]
    Spec(#[from] SpecError),
}

/// The file form: every field optional, durations in milliseconds; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    start_timeout_ms: Option<u64>,
    rpc_timeout_ms: Option<u64>,
    dial_initial_ms: Option<u64>,
    dial_max_delay_ms: Option<u64>,
    dial_total_ms: Option<u64>,
    shutdown_graceful_ms: Option<u64>,
    shutdown_guest_request_ms: Option<u64>,
    shutdown_quit_ms: Option<u64>,
    shutdown_sigterm_ms: Option<u64>,
    shutdown_sigkill_ms: Option<u64>,
    state_root: Option<PathBuf>,
    cpus: Option<u16>,
    memory_mib: Option<u32>,
    max_cpus: Option<u16>,
    max_memory_mib: Option<u32>,
    memory_slots: Option<u16>,
    #[serde(flatten)]
    hotplug: HotplugFile,
    rootfs_transport: Option<String>,
    network: Option<NetworkFile>,
}

/// The `network` object of the file form.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    conflist: PathBuf,
    bin_dirs: Option<Vec<PathBuf>>,
    ifname: Option<String>,
    plugin_timeout_ms: Option<u64>,
}

impl NetworkFile {
    fn into_config(self) -> NetworkConfig {
        let mut config = NetworkConfig::new(self.conflist);
        if let Some(dirs) = self.bin_dirs {
            config.bin_dirs = dirs;
        }
        if let Some(name) = self.ifname {
            config.ifname = name;
        }
        if let Some(ms) = self.plugin_timeout_ms {
            config.plugin_timeout = Duration::from_millis(ms);
        }
        config
    }
}

/// The hotplug keys of the file form.
#[derive(Debug, Default, Deserialize)]
struct HotplugFile {
    hotplug_auto: Option<bool>,
    hotplug_online_timeout_ms: Option<u64>,
    cpu_policy: Option<PolicyFile>,
    memory_policy: Option<PolicyFile>,
}

impl HotplugFile {
    fn apply(self, config: &mut HotplugConfig) -> Result<(), ConfigError> {
        if let Some(auto) = self.hotplug_auto {
            config.auto = auto;
        }
        match self.hotplug_online_timeout_ms {
            Some(ms) if ms == 0 || ms > u64::from(spinbox_protocol::MAX_ONLINE_CPUS_WAIT_MS) => {
                return Err(ConfigError::Invalid(format!(
                    "hotplug_online_timeout_ms must be between 1 and {}, got {ms}",
                    spinbox_protocol::MAX_ONLINE_CPUS_WAIT_MS
                )))
            }
            Some(ms) => config.online_timeout = Duration::from_millis(ms),
            None => {}
        }
        if let Some(p) = self.cpu_policy {
            p.apply("cpu_policy", &mut config.cpu)?;
        }
        if let Some(p) = self.memory_policy {
            p.apply("memory_policy", &mut config.memory)?;
            if !config
                .memory
                .step
                .is_multiple_of(crate::vm::MEMORY_BLOCK_MIB)
            {
                return Err(ConfigError::Invalid(format!(
                    "memory_policy: step must be a multiple of {} MiB",
                    crate::vm::MEMORY_BLOCK_MIB
                )));
            }
        }
        Ok(())
    }
}

/// A hotplug policy's file form: what it leaves out keeps its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    interval_ms: Option<u64>,
    scale_up_threshold: Option<f64>,
    scale_down_threshold: Option<f64>,
    scale_up_stability: Option<u32>,
    scale_down_stability: Option<u32>,
    scale_up_cooldown_ms: Option<u64>,
    scale_down_cooldown_ms: Option<u64>,
    scale_down: Option<bool>,
    step: Option<u32>,
}

impl PolicyFile {
    fn apply(self, name: &str, policy: &mut Policy) -> Result<(), ConfigError> {
        let ms = Duration::from_millis;
        if let Some(v) = self.interval_ms {
            policy.interval = ms(v);
        }
        if let Some(v) = self.scale_up_threshold {
            policy.scale_up_threshold = v;
        }
        if let Some(v) = self.scale_down_threshold {
            policy.scale_down_threshold = v;
        }
        if let Some(v) = self.scale_up_stability {
            policy.scale_up_stability = v;
        }
        if let Some(v) = self.scale_down_stability {
            policy.scale_down_stability = v;
        }
        if let Some(v) = self.scale_up_cooldown_ms {
            policy.scale_up_cooldown = ms(v);
        }
        if let Some(v) = self.scale_down_cooldown_ms {
            policy.scale_down_cooldown = ms(v);
        }
        if let Some(v) = self.scale_down {
            policy.scale_down = v;
        }
        if let Some(v) = self.step {
            policy.step = v;
        }
        policy
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))
    }
}

impl ShimConfig {
    /// Reads a JSON file of overrides, e.g. `{"start_timeout_ms": 30000, "cpus": 2}`; what
    /// it leaves out keeps its default. Unknown keys are rejected, so a typo is not silently
    /// ignored.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_file_over(path, Self::default())
    }

    /// [`from_file`](Self::from_file), with what the file leaves out taken from `base`
    /// (e.g. a state root the caller found in its environment).
    pub fn from_file_over(path: &Path, base: Self) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json_over(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses JSON overrides (see [`from_file`](Self::from_file)).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_over(text, Self::default())
    }

    /// Parses JSON overrides onto `base`.
    pub fn from_json_over(text: &str, base: Self) -> Result<Self, ConfigError> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::new(),
            source,
        })?;
        let mut config = base;
        let ms = Duration::from_millis;
        let set = |target: &mut Duration, value: Option<u64>, name: &str| match value {
            Some(0) => Err(ConfigError::Invalid(format!(
                "{name} must be greater than 0"
            ))),
            Some(v) => {
                *target = ms(v);
                Ok(())
            }
            None => Ok(()),
        };
        set(
            &mut config.start_timeout,
            file.start_timeout_ms,
            "start_timeout_ms",
        )?;
        set(
            &mut config.rpc_timeout,
            file.rpc_timeout_ms,
            "rpc_timeout_ms",
        )?;
        set(
            &mut config.dial_retry.initial,
            file.dial_initial_ms,
            "dial_initial_ms",
        )?;
        set(
            &mut config.dial_retry.max_delay,
            file.dial_max_delay_ms,
            "dial_max_delay_ms",
        )?;
        set(
            &mut config.dial_retry.total,
            file.dial_total_ms,
            "dial_total_ms",
        )?;
        set(
            &mut config.shutdown.graceful,
            file.shutdown_graceful_ms,
            "shutdown_graceful_ms",
        )?;
        set(
            &mut config.shutdown.guest_request_wait,
            file.shutdown_guest_request_ms,
            "shutdown_guest_request_ms",
        )?;
        set(
            &mut config.shutdown.quit,
            file.shutdown_quit_ms,
            "shutdown_quit_ms",
        )?;
        set(
            &mut config.shutdown.sigterm,
            file.shutdown_sigterm_ms,
            "shutdown_sigterm_ms",
        )?;
        set(
            &mut config.shutdown.sigkill,
            file.shutdown_sigkill_ms,
            "shutdown_sigkill_ms",
        )?;
        if let Some(root) = file.state_root {
            config.state_root = root;
        }
        if let Some(n) = file.cpus {
            config.cpus = n;
        }
        if let Some(m) = file.memory_mib {
            config.memory_mib = m;
        }
        if let Some(n) = file.max_cpus {
            config.max_cpus = Some(n);
        }
        if let Some(m) = file.max_memory_mib {
            config.max_memory_mib = Some(m);
        }
        if let Some(n) = file.memory_slots {
            config.memory_slots = n;
        }
        file.hotplug.apply(&mut config.hotplug)?;
        if let Some(t) = file.rootfs_transport {
            config.rootfs_transport = t
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("rootfs_transport: {e}")))?;
        }
        if let Some(n) = file.network {
            config.network = Some(n.into_config());
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every value, before anything is started: the VM settings (vCPUs, memory,
    /// kernel arguments, an absolute state root) and the timeouts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = VmId::new("validate").expect("a valid id");
        self.spec(id).validate()?;
        for (name, d) in [
            ("start_timeout", self.start_timeout),
            ("rpc_timeout", self.rpc_timeout),
            ("dial total", self.dial_retry.total),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be greater than 0"
                )));
            }
        }
        if self.dial_retry.initial > self.dial_retry.max_delay {
            return Err(ConfigError::Invalid(
                "dial_initial_ms must not exceed dial_max_delay_ms".to_owned(),
            ));
        }
        if let Some(n) = &self.network {
            n.validate().map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }

    /// The backend-independent VM spec for `id`.
    pub fn spec(&self, id: VmId) -> VmSpec {
        VmSpec {
            id,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            max_cpus: self.max_cpus.unwrap_or(self.cpus),
            max_memory_mib: self.max_memory_mib.unwrap_or(self.memory_mib),
            memory_slots: self.memory_slots,
            kernel_args: self.kernel_args.clone(),
            state_root: self.state_root.clone(),
            ready_timeout: self.start_timeout,
            shares: Vec::new(),
            nics: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hotplug_keys() {
        let c = ShimConfig::from_json(
            r#"{"cpus": 2, "max_cpus": 4, "memory_mib": 256, "max_memory_mib": 768,
                "memory_slots": 3, "hotplug_auto": false, "hotplug_online_timeout_ms": 500,
                "cpu_policy": {"interval_ms": 100, "scale_up_threshold": 90, "step": 2},
                "memory_policy": {"scale_down": true, "step": 256}}"#,
        )
        .unwrap();
        let spec = c.spec(VmId::new("h").unwrap());
        assert_eq!(
            (spec.max_cpus, spec.max_memory_mib, spec.memory_slots),
            (4, 768, 3)
        );
        assert!(!c.hotplug.auto);
        assert_eq!(c.hotplug.online_timeout, Duration::from_millis(500));
        let defaults = Policy::cpu();
        assert_eq!(
            c.hotplug.cpu,
            Policy {
                interval: Duration::from_millis(100),
                scale_up_threshold: 90.0,
                step: 2,
                ..defaults
            }
        );
        assert!(c.hotplug.memory.scale_down);
        // No maximum given: no growth room.
        let spec = ShimConfig::from_json(r#"{"cpus": 2}"#)
            .unwrap()
            .spec(VmId::new("h").unwrap());
        assert_eq!((spec.max_cpus, spec.max_memory_mib), (2, 256));
        for (bad, says) in [
            (r#"{"max_cpus": 0}"#, "maximum vCPU count"),
            (r#"{"max_memory_mib": 300}"#, "multiple of 128"),
            (
                r#"{"cpu_policy": {"scale_up_threshold": 120}}"#,
                "cpu_policy",
            ),
            (
                r#"{"cpu_policy": {"scale_down_threshold": 90}}"#,
                "cpu_policy",
            ),
            (r#"{"memory_policy": {"step": 100}}"#, "multiple of 128"),
            (r#"{"hotplug_online_timeout_ms": 0}"#, "between 1 and 60000"),
            (
                r#"{"hotplug_online_timeout_ms": 60001}"#,
                "between 1 and 60000",
            ),
            (r#"{"cpu_policy": {"intervall_ms": 5}}"#, "unknown field"),
            (r#"{"hotplug_autoo": true}"#, "unknown field"),
        ] {
            let e = ShimConfig::from_json(bad).unwrap_err();
            let text = crate::check::error_chain(&e);
            assert!(text.contains(says), "{bad}: {text}");
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let c = ShimConfig::from_json("{}").unwrap();
        assert_eq!(c.start_timeout, Duration::from_mins(1));
        assert_eq!(c.dial_retry.initial, Duration::from_millis(20));
        assert_eq!(c.dial_retry.max_delay, Duration::from_millis(500));
        let c = ShimConfig::from_json(
            r#"{"start_timeout_ms": 1500, "cpus": 2, "shutdown_quit_ms": 100}"#,
        )
        .unwrap();
        assert_eq!(c.start_timeout, Duration::from_millis(1500));
        assert_eq!(c.cpus, 2);
        assert_eq!(c.shutdown.quit, Duration::from_millis(100));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let typo = ShimConfig::from_json(r#"{"start_timeout": 5}"#).unwrap_err();
        assert!(typo.to_string().contains("invalid config"), "{typo}");
        let e = ShimConfig::from_json(r#"{"rpc_timeout_ms": 0}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config value: rpc_timeout_ms must be greater than 0"
        );
        assert!(ShimConfig::from_json(r#"{"cpus": 0}"#).is_err());
        assert!(ShimConfig::from_json(r#"{"memory_mib": 8}"#).is_err());
        assert!(ShimConfig::from_json(r#"{"dial_initial_ms": 900}"#).is_err());
        assert!(ShimConfig::from_json("not json").is_err());
        let transport = ShimConfig::from_json(r#"{"rootfs_transport": "nfs"}"#).unwrap_err();
        assert!(
            transport
                .to_string()
                .starts_with("invalid config value: rootfs_transport: "),
            "{transport}"
        );
        assert!(ShimConfig::from_json(r#"{"cpus": -1}"#).is_err());
        assert!(ShimConfig::from_json(r#"{"cpus": 1000}"#).is_err());
        assert!(ShimConfig::from_json(r#"{"memory_mib": 4000000}"#).is_err());
        let relative = ShimConfig::from_json(r#"{"state_root": "run/here"}"#).unwrap_err();
        assert!(
            format!("{relative:?}").contains("RelativeStateRoot"),
            "{relative:?}"
        );
        let missing = ShimConfig::from_file(Path::new("/nonexistent/spinbox.json")).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/spinbox.json"));
    }
}
