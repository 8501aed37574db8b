//! Shares attached at boot (`VmSpec::shares`) on a real guest under TCG: a rootfs exported
//! over 9p and the same rootfs as an EROFS image on a virtio-blk disk, both prepared by
//! `spinbox::rootfs`. QMP shows the devices with their tags, serial and read-only state;
//! after the stop and the release nothing is left (process, state directory, image).
//! Whether the guest mounts them is the agent's side, tested with the Task service.

mod vm_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use spinbox::rootfs::{prepare_with, RootfsTransport, Tools};
use spinbox::vm::agent::shutdown_hook;
use spinbox::vm::stop::EscalationPolicy;
use spinbox::vm::{BootError, Share, SpecError, StopRequest, Vm};
use vm_common::{assert_alive, assert_root_clean, assert_vm_gone, guest, Fixture, BOOT_GUARD};

const RPC: Duration = Duration::from_secs(10);

/// A small rootfs-like tree.
fn tree(root: &Path) -> PathBuf {
    let dir = root.join("rootfs");
    std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
    std::fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hello\n").expect("write");
    std::fs::write(dir.join("data"), vec![1u8; 64 * 1024]).expect("write");
    dir
}

async fn qom_get(vm: &spinbox::vm::qemu::QemuVm, path: &str, property: &str) -> Value {
    vm.instance()
        .qmp()
        .execute(
            "qom-get",
            Some(json!({ "path": path, "property": property })),
        )
        .await
        .unwrap_or_else(|e| panic!("qom-get {path} {property}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_p_and_disk_shares_are_attached_and_everything_is_released() {
    let fx = Fixture::new();
    let (backend, mut spec) = guest(&fx, "shares");
    let tools = Tools::from_assets(
        &backend.config().assets,
        std::env::var_os("PATH").as_deref(),
    );
    let dir = tree(fx.tmp.path());
    let work = fx.tmp.path().join("work");
    std::fs::create_dir(&work).expect("mkdir work");
    let nine_p = prepare_with(&tools, RootfsTransport::NineP, &dir, &work, "root9p")
        .await
        .expect("9p prepare");
    let erofs = prepare_with(&tools, RootfsTransport::Erofs, &dir, &work, "rootblk")
        .await
        .expect("erofs prepare");
    let image = work.join("rootblk.erofs");
    assert!(image.is_file(), "no image built");
    spec.shares = vec![nine_p.share.clone(), erofs.share.clone()];

    let vm = vm_common::boot(&backend, &spec).await;
    let pid = vm.pid().expect("QEMU pid");
    assert_alive(pid);
    let state_dir = vm.instance().state_dir().to_owned();

    // The 9p device: its tag, and the fsdev behind it.
    let p9 = "/machine/peripheral/share0-dev";
    assert_eq!(qom_get(&vm, p9, "mount_tag").await, json!("root9p"));
    assert_eq!(qom_get(&vm, p9, "fsdev").await, json!("share0"));
    assert_eq!(
        qom_get(&vm, p9, "type").await,
        json!("virtio-9p-pci"),
        "the 9p device has another type"
    );
    // The disk: its serial, and a read-only backend on the image.
    let blk = "/machine/peripheral/share1-dev";
    assert_eq!(qom_get(&vm, blk, "serial").await, json!("rootblk"));
    assert_eq!(qom_get(&vm, blk, "type").await, json!("virtio-blk-pci"));
    let block = vm
        .instance()
        .qmp()
        .execute("query-block", None)
        .await
        .expect("query-block");
    let disk = block
        .as_array()
        .expect("query-block returns a list")
        .iter()
        .find(|b| b["inserted"]["node-name"] == "share1")
        .unwrap_or_else(|| panic!("no block device on node share1 in {block}"));
    assert_eq!(disk["inserted"]["ro"], json!(true), "{disk}");
    assert_eq!(
        disk["inserted"]["image"]["filename"],
        json!(image.to_str().expect("utf-8 path")),
        "{disk}"
    );
    // The 9p export is read-only: the fsdev option is on QEMU's command line as given.
    let argv: Vec<String> = vm
        .instance()
        .argv()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert!(
        argv.iter().any(|a| a.starts_with("local,id=share0,")
            && a.ends_with(",security_model=none,multidevs=remap,readonly=on")),
        "{argv:?}"
    );

    let request = StopRequest {
        policy: EscalationPolicy::default(),
        graceful: Some(shutdown_hook(vm.agent_address(), RPC, None)),
    };
    tokio::time::timeout(BOOT_GUARD, vm.stop(request))
        .await
        .expect("stop hung")
        .expect("stop failed");
    assert_vm_gone(pid, &state_dir);
    assert_root_clean(&fx);

    // After QEMU: the shim's mount_cleanup releases the rootfs.
    assert_eq!(erofs.leftovers(), std::slice::from_ref(&image));
    erofs.release().await.expect("release erofs");
    nine_p.release().await.expect("release 9p");
    assert!(!image.exists(), "the image remains");
    assert!(erofs.leftovers().is_empty() && nine_p.leftovers().is_empty());
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("read work")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "left in the work directory: {left:?}");
    assert!(dir.join("bin/hello").is_file(), "the rootfs was touched");
}

#[tokio::test]
async fn bad_shares_are_refused_before_anything_starts() {
    let fx = Fixture::new();
    let (backend, mut spec) = guest(&fx, "bad-shares");
    spec.shares = vec![Share::NineP {
        tag: "t".into(),
        path: "relative/dir".into(),
        read_only: true,
    }];
    let err = backend.start_qemu(&spec).await.expect_err("relative path");
    assert!(
        matches!(
            err,
            BootError::Spec(SpecError::RelativeSharePath {
                what: "9p directory",
                ..
            })
        ),
        "{err:?}"
    );
    let missing = fx.tmp.path().join("missing");
    spec.shares = vec![Share::NineP {
        tag: "t".into(),
        path: missing.clone(),
        read_only: true,
    }];
    let err = backend.start_qemu(&spec).await.expect_err("missing dir");
    assert!(
        matches!(&err, BootError::Prepare { path, source } if *path == missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    // A directory where an image belongs.
    spec.shares = vec![Share::Disk {
        serial: "s".into(),
        path: fx.tmp.path().to_owned(),
        read_only: true,
    }];
    let err = backend
        .start_qemu(&spec)
        .await
        .expect_err("directory as image");
    assert!(matches!(err, BootError::Prepare { .. }), "{err:?}");
    assert!(err.source_chain_contains("a regular file"), "{err:?}");
    assert_root_clean(&fx);
}

trait ChainContains {
    fn source_chain_contains(&self, needle: &str) -> bool;
}

impl<E: std::error::Error> ChainContains for E {
    fn source_chain_contains(&self, needle: &str) -> bool {
        let mut cur: Option<&dyn std::error::Error> = Some(self);
        while let Some(e) = cur {
            if e.to_string().contains(needle) {
                return true;
            }
            cur = e.source();
        }
        false
    }
}
