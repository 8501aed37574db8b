//! The `Resources` ttrpc service (SPEC §12): the guest's CPU and memory counters, which the
//! host's hotplug controllers sample, and the onlining of hot-added vCPUs.
//!
//! Everything is read from (and written to) files under a root directory, `/` in the
//! guest, so the parsing and the onlining are tested on the host against a fake tree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use spinbox_protocol::agent::{OnlineCpusRequest, UsageRequest, UsageResponse};
use spinbox_protocol::agent_ttrpc::Resources;
use ttrpc::asynchronous::TtrpcContext;
use ttrpc::Code;

/// How often `OnlineCpus` looks for the vCPUs it waits for.
const POLL: Duration = Duration::from_millis(10);

/// Longest wait `OnlineCpus` accepts.
const MAX_WAIT_MS: u32 = spinbox_protocol::MAX_ONLINE_CPUS_WAIT_MS;

/// The service, over the files under `root`.
pub struct ResourcesService {
    root: PathBuf,
}

impl ResourcesService {
    /// A service reading `root`/proc and `root`/sys (`/` in the guest).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn cpu_dir(&self) -> PathBuf {
        self.root.join("sys/devices/system/cpu")
    }

    /// Reads every counter.
    fn usage(&self) -> Result<UsageResponse, String> {
        let cpu = self.cpu_dir();
        let mut r = UsageResponse::new();
        r.online_cpus = count_cpus(&read(&cpu.join("online"))?)?;
        r.present_cpus = count_cpus(&read(&cpu.join("present"))?)?;
        (r.cpu_busy_ticks, r.cpu_total_ticks) = cpu_ticks(&read(&self.root.join("proc/stat"))?)?;
        (r.mem_total_kib, r.mem_available_kib) = meminfo(&read(&self.root.join("proc/meminfo"))?)?;
        Ok(r)
    }

    /// Onlines every present vCPU that is offline; returns how many it onlined.
    fn online_present(&self) -> Result<u32, String> {
        let cpu = self.cpu_dir();
        let present = cpu_list(&read(&cpu.join("present"))?)?;
        let online = cpu_list(&read(&cpu.join("online"))?)?;
        let mut onlined = 0;
        for n in present.into_iter().filter(|n| !online.contains(n)) {
            let file = cpu.join(format!("cpu{n}/online"));
            std::fs::write(&file, b"1").map_err(|e| format!("{}: {e}", file.display()))?;
            onlined += 1;
        }
        Ok(onlined)
    }
    /// `OnlineCpus`: waits (bounded) for the vCPUs asked for to be present, onlines every
    /// present one that is offline, and answers with the counters.
    async fn online_wait(&self, req: OnlineCpusRequest) -> ttrpc::Result<UsageResponse> {
        if req.timeout_ms > MAX_WAIT_MS {
            return Err(status(
                Code::INVALID_ARGUMENT,
                format!("timeout_ms {} is above {MAX_WAIT_MS}", req.timeout_ms),
            ));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(req.timeout_ms.into());
        let present = self.cpu_dir().join("present");
        loop {
            let now = read(&present)
                .and_then(|t| count_cpus(&t))
                .map_err(|e| status(Code::INTERNAL, e))?;
            if now >= req.present_at_least {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(status(
                    Code::DEADLINE_EXCEEDED,
                    format!(
                        "{now} vCPUs present after {} ms, {} expected",
                        req.timeout_ms, req.present_at_least
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let onlined = self
            .online_present()
            .map_err(|e| status(Code::INTERNAL, e))?;
        if onlined > 0 {
            tracing::info!(onlined, "onlined hot-added vCPUs");
        }
        ResourcesService::usage(self).map_err(|e| status(Code::INTERNAL, e))
    }
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a kernel CPU list (`0-3,5\n`; empty when none) into the CPU numbers.
fn cpu_list(text: &str) -> Result<Vec<u32>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("malformed CPU list {:?}", text.trim());
        let (first, last): (u32, u32) = if let Some((a, b)) = part.split_once('-') {
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        } else {
            let n: u32 = part.parse().map_err(|_| bad())?;
            (n, n)
        };
        if last < first || last - first > 4096 {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

fn count_cpus(text: &str) -> Result<u32, String> {
    cpu_list(text).map(|l| u32::try_from(l.len()).unwrap_or(u32::MAX))
}

/// `/proc/stat`'s aggregate `cpu` line → (busy, total) ticks. Busy is everything but idle
/// and iowait; guest time is already inside user and nice, so it is left out of the sum.
fn cpu_ticks(stat: &str) -> Result<(u64, u64), String> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or("/proc/stat has no aggregate cpu line")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("malformed /proc/stat line {line:?}"))?;
    if fields.len() < 4 {
        return Err(format!("malformed /proc/stat line {line:?}"));
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// `/proc/meminfo` → (`MemTotal`, `MemAvailable`) in KiB.
fn meminfo(text: &str) -> Result<(u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("/proc/meminfo has no {name}"))
    };
    Ok((field("MemTotal")?, field("MemAvailable")?))
}

#[async_trait::async_trait]
impl Resources for ResourcesService {
    async fn usage(&self, _ctx: &TtrpcContext, _req: UsageRequest) -> ttrpc::Result<UsageResponse> {
        ResourcesService::usage(self).map_err(|e| status(Code::INTERNAL, e))
    }

    async fn online_cpus(
        &self,
        _ctx: &TtrpcContext,
        req: OnlineCpusRequest,
    ) -> ttrpc::Result<UsageResponse> {
        self.online_wait(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 1000 20 3 2 0 0 0\ncpu0 100 5 50 1000 20 3 2 0 0 0\nintr 1\n";
    const MEMINFO: &str = "MemTotal:         405940 kB\nMemFree:          300000 kB\n\
                           MemAvailable:     350000 kB\n";

    fn tree(present: &str, online: &str, offline: &[u32]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("sys/devices/system/cpu");
        std::fs::create_dir_all(&cpu).unwrap();
        std::fs::write(cpu.join("present"), present).unwrap();
        std::fs::write(cpu.join("online"), online).unwrap();
        for n in offline {
            std::fs::create_dir_all(cpu.join(format!("cpu{n}"))).unwrap();
            std::fs::write(cpu.join(format!("cpu{n}/online")), "0\n").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(dir.path().join("proc/stat"), STAT).unwrap();
        std::fs::write(dir.path().join("proc/meminfo"), MEMINFO).unwrap();
        dir
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list("0\n"), Ok(vec![0]));
        assert_eq!(cpu_list("0-2,5,7-8\n"), Ok(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(cpu_list("\n"), Ok(vec![]));
        for bad in ["a", "3-1", "0-", "1,,x", "0-99999"] {
            assert!(cpu_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counters_are_parsed() {
        assert_eq!(cpu_ticks(STAT), Ok((160, 1180)));
        assert_eq!(meminfo(MEMINFO), Ok((405_940, 350_000)));
        assert!(cpu_ticks("intr 1\n").is_err());
        assert!(cpu_ticks("cpu  1 x 3 4\n").is_err());
        assert!(meminfo("MemTotal: 5 kB\n")
            .unwrap_err()
            .contains("MemAvailable"));
        let dir = tree("0-3\n", "0-1\n", &[]);
        let u = ResourcesService::new(dir.path()).usage().unwrap();
        assert_eq!((u.present_cpus, u.online_cpus), (4, 2));
        assert_eq!((u.cpu_busy_ticks, u.cpu_total_ticks), (160, 1180));
        assert_eq!((u.mem_total_kib, u.mem_available_kib), (405_940, 350_000));
    }

    #[tokio::test]
    async fn online_cpus_onlines_the_offline_present_ones() {
        let dir = tree("0-2\n", "0\n", &[1, 2]);
        let service = ResourcesService::new(dir.path());
        let req = OnlineCpusRequest {
            present_at_least: 3,
            timeout_ms: 0,
            ..Default::default()
        };
        let ctx_free = service.online_present().unwrap();
        assert_eq!(ctx_free, 2);
        for n in [1, 2] {
            let f = dir
                .path()
                .join(format!("sys/devices/system/cpu/cpu{n}/online"));
            assert_eq!(std::fs::read_to_string(f).unwrap(), "1");
        }
        // Too few present within the bound: DEADLINE_EXCEEDED, naming the counts.
        let wait = OnlineCpusRequest {
            present_at_least: 4,
            timeout_ms: 30,
            ..Default::default()
        };
        let err = wait_for(&service, wait).await.unwrap_err();
        assert!(
            matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == Code::DEADLINE_EXCEEDED
                && s.message.contains("3 vCPUs present")),
            "{err:?}"
        );
        assert!(wait_for(&service, req).await.is_ok());
        let too_long = OnlineCpusRequest {
            present_at_least: 1,
            timeout_ms: MAX_WAIT_MS + 1,
            ..Default::default()
        };
        assert!(matches!(
            wait_for(&service, too_long).await,
            Err(ttrpc::Error::RpcStatus(s)) if s.code() == Code::INVALID_ARGUMENT
        ));
    }

    #[tokio::test]
    async fn online_cpus_waits_for_a_cpu_to_appear() {
        let dir = tree("0\n", "0\n", &[]);
        let service = ResourcesService::new(dir.path());
        let cpu = dir.path().join("sys/devices/system/cpu");
        let later = cpu.clone();
        let appear = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::create_dir_all(later.join("cpu1")).unwrap();
            std::fs::write(later.join("cpu1/online"), "0\n").unwrap();
            std::fs::write(later.join("present"), "0-1\n").unwrap();
        });
        let req = OnlineCpusRequest {
            present_at_least: 2,
            timeout_ms: 5_000,
            ..Default::default()
        };
        let u = wait_for(&service, req).await.unwrap();
        appear.await.unwrap();
        assert_eq!(u.present_cpus, 2);
        assert_eq!(
            std::fs::read_to_string(cpu.join("cpu1/online")).unwrap(),
            "1"
        );
    }

    /// Calls the trait method the way the server does, without a connection.
    async fn wait_for(
        service: &ResourcesService,
        req: OnlineCpusRequest,
    ) -> ttrpc::Result<UsageResponse> {
        service.online_wait(req).await
    }
}
