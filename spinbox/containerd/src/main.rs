//! `containerd-shim-spinbox-v1`: the containerd runtime v2 shim of spinbox (work in progress).

fn main() {
    eprintln!("containerd-shim-spinbox-v1: not built yet");
    std::process::exit(1);
}
