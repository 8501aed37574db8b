//! The `System` ttrpc service.

use spinbox_protocol::agent::{
    InfoRequest, InfoResponse, PingRequest, PingResponse, PrepareShutdownRequest,
    PrepareShutdownResponse, ShutdownRequest, ShutdownResponse,
};
use spinbox_protocol::agent_ttrpc::System;
use tokio::sync::mpsc;
use ttrpc::asynchronous::TtrpcContext;

use crate::timeline::{self, Step};
use crate::PowerOff;

/// The service: stateless but for the channel that asks `main` to power off.
pub struct SystemService {
    power: mpsc::Sender<PowerOff>,
}

impl SystemService {
    /// A service that sends power-off requests on `power`.
    pub fn new(power: mpsc::Sender<PowerOff>) -> Self {
        Self { power }
    }
}

#[async_trait::async_trait]
impl System for SystemService {
    async fn ping(&self, _ctx: &TtrpcContext, _req: PingRequest) -> ttrpc::Result<PingResponse> {
        Ok(PingResponse::new())
    }

    async fn info(&self, _ctx: &TtrpcContext, _req: InfoRequest) -> ttrpc::Result<InfoResponse> {
        let mut r = InfoResponse::new();
        if let Ok(u) = nix::sys::utsname::uname() {
            r.kernel_release = u.release().to_string_lossy().into_owned();
            r.kernel_version = u.version().to_string_lossy().into_owned();
        }
        r.uptime_seconds = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or_default();
        crate::VERSION.clone_into(&mut r.agent_version);
        let boot = r.boot.mut_or_insert_default();
        boot.init_started = timeline::get(Step::InitStarted);
        boot.modules_loaded = timeline::get(Step::ModulesLoaded);
        boot.serving = timeline::get(Step::Serving);
        Ok(r)
    }

    async fn prepare_shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: PrepareShutdownRequest,
    ) -> ttrpc::Result<PrepareShutdownResponse> {
        // sync(2) blocks until the writeback is queued; keep it off the runtime thread.
        tokio::task::spawn_blocking(nix::unistd::sync)
            .await
            .map_err(|e| ttrpc::Error::Others(format!("sync task failed: {e}")))?;
        tracing::info!("filesystems synced");
        Ok(PrepareShutdownResponse::new())
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        tracing::info!("shutdown requested");
        // `main` waits for the host to close its connections (reply delivered) first.
        let _ = self.power.try_send(PowerOff::ShutdownRpc);
        Ok(ShutdownResponse::new())
    }
}
