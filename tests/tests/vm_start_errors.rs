//! Start-up failures are typed, name their phase, carry QEMU's stderr when QEMU ran, and
//! leave nothing behind. None of them waits for a timeout.

mod vm_common;

use std::path::PathBuf;

use spinbox::vm::qemu::config::{ConfigError, Disk, DiskFormat, Machine, QemuConfig};
use spinbox::vm::qemu::instance::{QemuInstance, StartError, StartPhase};
use spinbox::vm::qemu::{AccelChoice, Accelerator};
use vm_common::{Fixture, HANG_GUARD};

async fn start_err(fx: &Fixture, config: &QemuConfig) -> StartError {
    let r = tokio::time::timeout(HANG_GUARD, QemuInstance::start(config, &fx.opts()))
        .await
        .expect("start hung instead of failing");
    let err = r.expect_err("start should fail");
    eprintln!("{:?}: {err}", err.phase());
    fx.assert_root_empty();
    err
}

#[tokio::test]
async fn missing_binary_is_an_exec_error() {
    let fx = Fixture::new();
    let mut c = vm_common::none_config("err-binary");
    c.binary = PathBuf::from("/nonexistent/qemu-system-x86_64");
    let err = start_err(&fx, &c).await;
    assert_eq!(err.phase(), StartPhase::Exec);
    assert!(matches!(err, StartError::Exec(_)), "{err:?}");
    assert!(err.stderr_tail().is_none());
}

#[tokio::test]
async fn missing_kernel_reports_qemu_stderr() {
    let fx = Fixture::new();
    let mut c = vm_common::none_config("err-kernel");
    c.machine = Machine::Microvm;
    c.accel = AccelChoice::Fixed(Accelerator::Tcg);
    c.kernel = Some(fx.tmp.path().join("no-such-vmlinux"));
    let err = start_err(&fx, &c).await;
    assert!(
        matches!(
            err.phase(),
            StartPhase::QmpConnect | StartPhase::QmpHandshake
        ),
        "{err:?}"
    );
    assert!(matches!(err, StartError::Exited { .. }), "{err:?}");
    let tail = err.stderr_tail().expect("stderr tail");
    assert!(tail.contains("no-such-vmlinux"), "{tail}");
}

#[tokio::test]
async fn bad_argument_reports_qemu_stderr() {
    let fx = Fixture::new();
    // `-kernel` is not supported by `-machine none`: QEMU refuses the argument and exits.
    let mut c = vm_common::none_config("err-arg");
    c.kernel = Some(PathBuf::from("/boot/vmlinuz"));
    let err = start_err(&fx, &c).await;
    assert!(matches!(err, StartError::Exited { .. }), "{err:?}");
    let tail = err.stderr_tail().expect("stderr tail");
    assert!(tail.contains("-kernel"), "{tail}");
}

#[tokio::test]
async fn missing_disk_image_reports_qemu_stderr() {
    let fx = Fixture::new();
    let mut c = vm_common::none_config("err-disk");
    c.machine = Machine::Microvm;
    c.disks.push(Disk {
        id: "root".into(),
        path: fx.tmp.path().join("missing,disk.img"),
        format: DiskFormat::Raw,
        read_only: true,
        serial: None,
    });
    let err = start_err(&fx, &c).await;
    assert!(matches!(err, StartError::Exited { .. }), "{err:?}");
    // The comma reached QEMU escaped: it names the whole path, not a split one.
    let tail = err.stderr_tail().expect("stderr tail");
    assert!(tail.contains("missing,disk.img"), "{tail}");
}

#[tokio::test]
async fn invalid_config_fails_before_anything_is_created() {
    let fx = Fixture::new();
    let mut c = vm_common::none_config("err-config");
    c.machine = Machine::Q35;
    c.cpus = 0;
    let err = start_err(&fx, &c).await;
    assert_eq!(err.phase(), StartPhase::Config);
    assert!(
        !fx.root().exists(),
        "state root created for an invalid config"
    );
}

#[tokio::test]
async fn too_long_socket_path_is_a_config_error() {
    let fx = Fixture::new();
    let c = vm_common::none_config(&"x".repeat(76));
    let mut opts = fx.opts();
    opts.state_root = fx.tmp.path().join("r".repeat(40));
    let err = tokio::time::timeout(HANG_GUARD, QemuInstance::start(&c, &opts))
        .await
        .expect("hung")
        .expect_err("must fail");
    assert_eq!(err.phase(), StartPhase::Config);
    assert!(
        matches!(
            err,
            StartError::Config(ConfigError::Socket(
                spinbox::vm::SocketPathError::TooLong { .. }
            ))
        ),
        "{err:?}"
    );
    // The VM's directory was removed again (the root itself may stay).
    assert!(!opts.state_root.join("x".repeat(76)).exists());
}

#[tokio::test]
async fn second_vm_with_the_same_id_is_a_state_dir_error() {
    let fx = Fixture::new();
    let vm = fx.start_none("err-dup").await;
    let err = tokio::time::timeout(
        HANG_GUARD,
        QemuInstance::start(&vm_common::none_config("err-dup"), &fx.opts()),
    )
    .await
    .expect("hung")
    .expect_err("duplicate id must fail");
    assert_eq!(err.phase(), StartPhase::StateDir);
    // The running VM's directory is untouched.
    assert!(vm.state_dir().exists());
    let policy = spinbox::vm::stop::EscalationPolicy {
        guest_request: spinbox::vm::stop::GuestRequest::None,
        ..Default::default()
    };
    vm.shutdown(&policy).await.expect("shutdown");
    fx.assert_root_empty();
}
