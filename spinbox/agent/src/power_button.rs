//! The ACPI power button: the `button` driver exposes it as an input device named
//! "Power Button"; `evdev` gives it a `/dev/input/eventN` node. A key press of
//! `KEY_POWER` requests a power-off.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use tokio::sync::mpsc;

use crate::PowerOff;

/// `EV_KEY` event type.
const EV_KEY: u16 = 1;
/// `KEY_POWER` key code.
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit: `timeval` (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;

/// Finds the power button's event device, opens it now, and watches it on a thread.
/// Without one (no ACPI, module missing) it logs and returns.
pub fn watch(tx: mpsc::Sender<PowerOff>) {
    let Some(path) = find() else {
        tracing::warn!("no ACPI power button input device; system_powerdown will be ignored");
        return;
    };
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the power button");
            return;
        }
    };
    tracing::info!(path = %path.display(), "watching the power button");
    std::thread::spawn(move || read_events(file, &tx));
}

fn read_events(mut file: File, tx: &mpsc::Sender<PowerOff>) {
    let mut buf = [0u8; EVENT_SIZE];
    while file.read_exact(&mut buf).is_ok() {
        let kind = u16::from_ne_bytes([buf[16], buf[17]]);
        let code = u16::from_ne_bytes([buf[18], buf[19]]);
        let value = i32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]);
        if kind == EV_KEY && code == KEY_POWER && value == 1 {
            tracing::info!("power button pressed");
            let _ = tx.blocking_send(PowerOff::PowerButton);
            return;
        }
    }
}

/// `/dev/input/eventN` whose device is named "Power Button".
fn find() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/sys/class/input").ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("event") {
            continue;
        }
        let dev_name =
            std::fs::read_to_string(entry.path().join("device/name")).unwrap_or_default();
        if dev_name.trim() == "Power Button" {
            return Some(PathBuf::from("/dev/input").join(name));
        }
    }
    None
}
