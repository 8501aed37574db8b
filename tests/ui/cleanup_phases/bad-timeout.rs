use lifecycle_core::{cleanup_phases, Phase};

#[cleanup_phases]
struct TeardownPhases {
    #[phase(timeout = "5 parsecs")]
    io_shutdown: Phase,
    #[phase(timeout = "0ms")]
    vm_shutdown: Phase,
    #[phase(timeout = "30")]
    event_close: Phase,
    #[phase(timeout = "1.s")]
    conn_close: Phase,
    #[phase(timeout = "-5s")]
    net_down: Phase,
    #[phase(timeout = "0.0000000001s")]
    unmount: Phase,
    #[phase(timeout = "99999999999999999999s")]
    wait: Phase,
    // Accepted: decimals are exact.
    #[phase(timeout = "1.5s")]
    hotplug_stop: Phase,
}

fn main() {}
