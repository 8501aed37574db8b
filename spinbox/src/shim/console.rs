//! Forwards the guest's serial console (the log file QEMU writes) to the event stream and to
//! `tracing`, line by line, until the `io_shutdown` phase stops it.

use super::events::{EventSender, ShimEvent};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the forwarder looks for new console output. The file is written by QEMU, so
/// there is no readiness to wait on; a short poll keeps the stream live at negligible cost.
const POLL: Duration = Duration::from_millis(50);

/// A running forwarder.
pub(crate) struct ConsoleForwarder {
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl ConsoleForwarder {
    pub(crate) fn start(path: PathBuf, events: Arc<EventSender>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let Ok(file) = tokio::fs::File::open(&path).await else {
                return;
            };
            let mut reader = BufReader::new(file);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => {
                        // At the end for now: wait for more output or the stop signal.
                        if *stopped.borrow() {
                            return;
                        }
                        tokio::select! {
                            () = tokio::time::sleep(POLL) => {}
                            _ = stopped.changed() => {}
                        }
                    }
                    Ok(_) => {
                        let text = line.trim_end_matches(['\r', '\n']).to_owned();
                        tracing::debug!(target: "spinbox::console", "{text}");
                        events.send(ShimEvent::Console(text));
                    }
                }
            }
        });
        Self {
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Drains what is left and stops; idempotent.
    pub(crate) async fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().await.take() {
            let _ = task.await;
        }
    }
}
