//! `Update`: containerd's resource limits (`ctr task update --cpu-quota/--cpu-period
//! --memory-limit`, CRI's `UpdateContainerResources`) mapped onto the VM's size.
//!
//! The request carries the OCI `LinuxResources` as JSON in a protobuf `Any`. The VM is the
//! container's whole machine, so its limits become the VM's size: `cpu.quota / cpu.period`
//! rounded up is the vCPU count, `memory.limit` rounded up to MiB is the memory size (the
//! shim rounds it up to 128 MiB blocks). Each must lie between the VM's boot size and its
//! maximum; no limit (absent, zero or negative) leaves that resource as it is.

use serde::Deserialize;

/// The parts of OCI `LinuxResources` that size a VM.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct LinuxResources {
    /// CPU limits.
    #[serde(default)]
    pub cpu: Option<Cpu>,
    /// Memory limits.
    #[serde(default)]
    pub memory: Option<Memory>,
}

/// OCI `LinuxCPU` (the fields used).
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Cpu {
    /// CPU time per period, in microseconds (`-1` or absent: no limit).
    #[serde(default)]
    pub quota: Option<i64>,
    /// The period, in microseconds.
    #[serde(default)]
    pub period: Option<u64>,
}

/// OCI `LinuxMemory` (the field used).
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct Memory {
    /// The memory limit in bytes (`-1` or absent: no limit).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// The VM size a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Target {
    /// vCPUs, when the request limits CPU.
    pub cpus: Option<u16>,
    /// Memory in MiB, when the request limits memory.
    pub memory_mib: Option<u32>,
}

/// Reads the request's resources: the `Any`'s value must be `LinuxResources` JSON.
pub fn target(type_url: &str, value: &[u8]) -> Result<Target, String> {
    if !type_url.ends_with("LinuxResources") {
        return Err(format!(
            "resources of type {type_url:?}: only OCI LinuxResources can be applied"
        ));
    }
    let r: LinuxResources = serde_json::from_slice(value)
        .map_err(|e| format!("resources are not valid LinuxResources JSON: {e}"))?;
    let mut t = Target::default();
    if let Some(cpu) = r.cpu {
        if let (Some(quota), Some(period)) = (cpu.quota, cpu.period) {
            if let (Ok(quota @ 1..), 1..) = (u64::try_from(quota), period) {
                let n = quota.div_ceil(period);
                t.cpus = Some(u16::try_from(n).map_err(|_| format!("{n} vCPUs is too many"))?);
            }
        }
    }
    if let Some(limit) = r.memory.and_then(|m| m.limit) {
        if let Ok(bytes @ 1..) = u64::try_from(limit) {
            let mib = bytes.div_ceil(1 << 20);
            t.memory_mib =
                Some(u32::try_from(mib).map_err(|_| format!("{mib} MiB of memory is too much"))?);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

    #[test]
    fn limits_become_sizes() {
        let t = target(
            URL,
            br#"{"cpu":{"quota":150000,"period":100000},"memory":{"limit":536870913}}"#,
        )
        .unwrap();
        assert_eq!(
            t,
            Target {
                cpus: Some(2),
                memory_mib: Some(513)
            }
        );
        // No limits: nothing changes.
        let none = target(
            URL,
            br#"{"cpu":{"quota":-1,"period":100000},"memory":{"limit":-1}}"#,
        );
        assert_eq!(none, Ok(Target::default()));
        assert_eq!(target(URL, b"{}"), Ok(Target::default()));
        assert_eq!(
            target(URL, br#"{"cpu":{"quota":100000,"period":0}}"#),
            Ok(Target::default())
        );
    }

    #[test]
    fn bad_resources_are_clear_errors() {
        assert!(target("types.example/Other", b"{}")
            .unwrap_err()
            .contains("only OCI LinuxResources"));
        assert!(target(URL, b"not json")
            .unwrap_err()
            .contains("not valid LinuxResources JSON"));
        assert!(target(URL, br#"{"cpu":{"quota":100000000000,"period":1}}"#)
            .unwrap_err()
            .contains("too many"));
    }
}
