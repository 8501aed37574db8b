//! `containerd-shim-spinbox-v1` under a real containerd (Debian's 1.6), driven with `ctr`:
//! every test starts its own containerd in a temporary directory ([`common::Containerd`])
//! and proves that what a task held is gone afterwards.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Containerd, Kind};

/// The image the suite builds and imports.
const IMAGE: &str = "docker.io/spinbox-test/busybox:latest";

/// Builds the busybox OCI image tarball in the test's directory and imports it.
fn import_busybox(c: &Containerd) {
    let work = c.dir().join("image");
    std::fs::create_dir_all(&work).expect("create the image work directory");
    let tarball = common::build_oci_image(&c.rootfs, &work, "latest");
    c.ctr_ok_in(
        &[
            "image",
            "import",
            "--base-name",
            "docker.io/spinbox-test/busybox",
            &tarball.display().to_string(),
        ],
        common::VM_TIMEOUT,
    );
}

/// The harness itself, no VM: containerd starts in its directory and answers, the image
/// imports and unpacks into an overlayfs snapshot, and containerd stops leaving nothing.
#[test]
fn harness_containerd_and_image() {
    let mut c = Containerd::start();
    let version = c.ctr_ok(&["version"]);
    c.check(version.contains("Server:"), || {
        format!("ctr version: {version}")
    });
    let plugins = c.ctr_ok(&["plugins", "ls"]);
    c.check(
        plugins
            .lines()
            .any(|l| l.contains("overlayfs") && l.trim_end().ends_with("ok")),
        || {
            format!(
                "containerd's overlayfs snapshotter is not usable in {} (an overlayfs \
                 snapshotter needs a directory on a filesystem overlayfs can use as its upper \
                 layer, e.g. ext4, not overlayfs itself; point TMPDIR elsewhere): {plugins}",
                c.dir().display()
            )
        },
    );

    import_busybox(&c);
    let images = c.ctr_ok(&["image", "ls"]);
    c.check(images.contains(IMAGE), || format!("image ls: {images}"));
    let check = c.ctr_ok(&["image", "check"]);
    c.check(
        check
            .lines()
            .any(|l| l.starts_with(IMAGE) && l.contains("complete")),
        || format!("image check: {check}"),
    );
    // Unpacked: the layer is a committed overlayfs snapshot holding busybox.
    let snapshots = c.ctr_ok(&["snapshot", "--snapshotter", "overlayfs", "ls"]);
    c.check(snapshots.contains("Committed"), || {
        format!("no committed snapshot: {snapshots}")
    });
    let layer_has_busybox = std::fs::read_dir(
        c.root
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots"),
    )
    .expect("overlayfs snapshots directory")
    .flatten()
    .any(|e| e.path().join("fs/bin/busybox").is_file());
    c.check(layer_has_busybox, || "no snapshot holds bin/busybox".into());

    c.check_nothing_left(&[], None);
    stop_and_check(&mut c);
}

/// Stops containerd and fails unless it is gone with its socket.
fn stop_and_check(c: &mut Containerd) {
    let pid = c.pid();
    c.stop();
    c.check(!common::pid_alive(pid), || "containerd still runs".into());
    let address = c.address.clone();
    c.check(!Path::new(&address).exists(), || {
        format!("{} left", address.display())
    });
}

/// The harness's leak checks, no VM: the process check and the sampler see a process naming
/// the test's directory, then see it gone; the mount check and the sampler see a tmpfs
/// mounted in it, then see it gone.
#[test]
fn harness_leak_checks_see_then_prove_gone() {
    let mut c = Containerd::start();
    // The process check sees a process naming the directory, then sees it gone.
    let marker = c.dir().join("marker");
    let sampler = c.sample();
    std::fs::write(&marker, "").expect("write the marker");
    let mut tail = Command::new("tail")
        .arg("-f")
        .arg(&marker)
        .spawn()
        .expect("spawn tail");
    let tail_pid = i32::try_from(tail.id()).expect("pid");
    // Found once it has exec'd `tail` (before, its command line is this test's).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = c.processes();
        if found
            .iter()
            .any(|p| p.pid == tail_pid && p.kind() == Kind::Other)
        {
            break;
        }
        c.check(Instant::now() < deadline, || {
            format!("the tail naming the directory was not found: {found:#?}")
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    sampler.wait_round();
    tail.kill().expect("kill our tail");
    tail.wait().expect("reap our tail");
    c.check(c.processes().is_empty(), || {
        format!("processes left: {:#?}", c.processes())
    });

    // The mount check sees a tmpfs in the directory, then sees it gone.
    let point = c.dir().join("mnt");
    std::fs::create_dir(&point).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "spinbox-test", &point.display().to_string()])
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount a tmpfs (the suite runs as root)");
    let mounts = c.new_mounts();
    let point_text = point.display().to_string();
    let mounted = mounts.iter().any(|m| m.contains(&point_text));
    sampler.wait_round();
    let unmounted = Command::new("umount")
        .arg(&point)
        .status()
        .expect("run umount");
    assert!(unmounted.success(), "umount {point_text}");
    c.check(mounted, || format!("the tmpfs was not seen: {mounts:#?}"));
    c.check(c.new_mounts().is_empty(), || {
        format!("mounts left: {:#?}", c.new_mounts())
    });

    // The sampler saw both.
    let seen = sampler.finish().unwrap_or_else(|e| c.fail(&e));
    c.check(seen.procs.contains_key(&tail_pid), || {
        format!("the sampler missed the tail: {seen:#?}")
    });
    c.check(seen.mounts.iter().any(|m| m.contains(&point_text)), || {
        format!("the sampler missed the tmpfs: {seen:#?}")
    });
    c.check_nothing_left(&[], None);
    stop_and_check(&mut c);
}

/// `ctr run --runtime io.containerd.spinbox.v1 --rootfs <the test's busybox copy> [extra] ID
/// ARGS...` as arguments.
fn run_args<'a>(
    c: &'a Containerd,
    extra: &[&'a str],
    id: &'a str,
    args: &[&'a str],
) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--runtime", common::RUNTIME]
        .iter()
        .map(ToString::to_string)
        .collect();
    v.extend(extra.iter().map(ToString::to_string));
    // ctr's FIFOs in the test's directory, not /run/containerd/fifo.
    v.push("--fifo-dir".into());
    v.push(c.dir().join("fifo").display().to_string());
    v.push("--rootfs".into());
    v.push(c.rootfs.display().to_string());
    v.push(id.into());
    v.extend(args.iter().map(ToString::to_string));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Fails unless containerd lists no task and no container any more.
fn check_no_task_or_container(c: &Containerd) {
    let tasks = c.ctr_ok(&["task", "ls", "-q"]);
    c.check(tasks.trim().is_empty(), || format!("tasks left: {tasks}"));
    let containers = c.ctr_ok(&["container", "ls", "-q"]);
    c.check(containers.trim().is_empty(), || {
        format!("containers left: {containers}")
    });
}

/// `ctr run --rm` prints what the container prints and exits with its exit code; while it
/// ran a shim, a QEMU and a vhost-device-vsock existed and the shim's state was used; after
/// it nothing is left.
#[test]
fn run_rm_prints_and_exits_with_the_code() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let sampler = c.sample();
    let started = Instant::now();
    let args = run_args(
        &c,
        &["--rm"],
        "exit7",
        &["/bin/sh", "-c", "echo hello; exit 7"],
    );
    let out = c.ctr_in(&strs(&args), None, common::VM_TIMEOUT);
    eprintln!("ctr run --rm (exit 7): {:?}", started.elapsed());
    c.check(out.code() == Some(7), || {
        format!("expected exit code 7: {out:?}")
    });
    c.check(out.stdout == "hello\n", || {
        format!("expected `hello`: {out:?}")
    });
    let seen = c.check_seen_vms(sampler, 1);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[], Some(&seen));
}

/// ctr's stdin reaches the container through the FIFOs: `echo abc | ctr run --rm … cat`
/// prints `abc` and exits 0 once stdin ends.
#[test]
fn stdin_reaches_the_container() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let sampler = c.sample();
    let args = run_args(&c, &["--rm"], "stdin", &["cat"]);
    let out = c.ctr_in(&strs(&args), Some(b"abc\n"), common::VM_TIMEOUT);
    c.check(out.code() == Some(0), || {
        format!("expected exit code 0: {out:?}")
    });
    c.check(out.stdout == "abc\n", || format!("expected `abc`: {out:?}"));
    let seen = c.check_seen_vms(sampler, 1);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[], Some(&seen));
}

/// `ctr events` in the background, once it is subscribed: a namespace label it was started
/// before is seen in its output.
fn subscribe_events(c: &Containerd) -> common::Running {
    let mut events = c.spawn_ctr(&["events"], None);
    let deadline = Instant::now() + common::CTR_TIMEOUT;
    for round in 0.. {
        let label = format!("spinbox.test/probe={round}");
        c.ctr_ok(&["namespaces", "label", common::NAMESPACE, &label]);
        if events.wait_stdout("/namespaces/update", Duration::from_millis(200)) {
            return events;
        }
        c.check(Instant::now() < deadline, || {
            format!("`ctr events` saw no event: {}", events.stdout_so_far())
        });
    }
    unreachable!()
}

/// The `/tasks/exit` events of `ctr events` output: `(container_id, id, exit_status)`.
fn exit_events(events: &str) -> Vec<(String, String, u64)> {
    events
        .lines()
        .filter(|l| l.contains("/tasks/exit"))
        .filter_map(|l| {
            let json = &l[l.find('{')?..];
            let v: serde_json::Value = serde_json::from_str(json).ok()?;
            Some((
                v["container_id"].as_str()?.to_owned(),
                v["id"].as_str()?.to_owned(),
                v["exit_status"].as_u64().unwrap_or(0),
            ))
        })
        .collect()
}

/// A detached task: listed RUNNING; its VM's processes, bundle, shim socket and state exist;
/// `ctr task exec` runs a second process (its output and exit code come back); SIGTERM to an
/// exec'd process ends it with 143; SIGKILL to the task ends it with 137 (the exit event and
/// `ctr task delete`'s status say so); `ctr task delete` and `ctr container rm` leave
/// nothing.
#[test]
fn detached_task_exec_kill_delete() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let id = "detached";
    let started = Instant::now();
    let args = run_args(&c, &["-d"], id, &["sleep", "1000"]);
    c.ctr_ok_in(&strs(&args), common::VM_TIMEOUT);
    eprintln!("ctr run -d: {:?}", started.elapsed());
    c.wait_task_status(id, "RUNNING", common::VM_TIMEOUT);
    let alive = c.observe_task(id);

    // What a VM task cannot do is refused by name, and the task runs on. (containerd
    // swallows a Stats error, and `ctr -t` needs a console: those are unit-tested.)
    let expected = "pausing a task is not supported by spinbox";
    let out = c.ctr(&["task", "pause", id]);
    c.check(
        !out.status.success() && out.stderr.contains(expected),
        || format!("ctr task pause should fail with {expected:?}: {out:?}"),
    );
    let status = c.task_status(id);
    c.check(status.as_ref().is_some_and(|s| s.1 == "RUNNING"), || {
        format!("the task runs on after refused calls: {status:?}")
    });

    let exec = c.ctr_in(
        &[
            "task",
            "exec",
            "--exec-id",
            "exec1",
            id,
            "/bin/sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 3",
        ],
        None,
        common::VM_TIMEOUT,
    );
    c.check(exec.code() == Some(3), || {
        format!("exec: expected 3: {exec:?}")
    });
    c.check(exec.stdout == "exec-out\n", || {
        format!("exec stdout: {exec:?}")
    });
    c.check(exec.stderr.contains("exec-err"), || {
        format!("exec stderr: {exec:?}")
    });

    let events = subscribe_events(&c);
    let mut long = c.spawn_ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "exec2",
            id,
            "/bin/sh",
            "-c",
            "echo ready; exec sleep 1000",
        ],
        None,
    );
    c.check(long.wait_stdout("ready", common::VM_TIMEOUT), || {
        format!("exec2 never said ready: {}", long.stdout_so_far())
    });
    c.ctr_ok(&["task", "kill", "--exec-id", "exec2", id]);
    let long = long.wait(common::VM_TIMEOUT).unwrap_or_else(|e| c.fail(&e));
    c.check(long.code() == Some(143), || {
        format!("exec2 after SIGTERM: expected 143: {long:?}")
    });
    c.check(
        c.task_status(id).is_some_and(|(_, s)| s == "RUNNING"),
        || "the task stopped when an exec'd process was killed".into(),
    );

    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    c.wait_task_status(id, "STOPPED", common::VM_TIMEOUT);
    // The exit event may trail the status by a little.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !exit_events(&events.stdout_so_far())
            .iter()
            .any(|e| e.1 == id)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = events.stop().unwrap_or_else(|e| c.fail(&e));
    let exits = exit_events(&events.stdout);
    c.check(exits.contains(&(id.into(), "exec2".into(), 143)), || {
        format!("no /tasks/exit for exec2 with 143: {}", events.stdout)
    });
    c.check(exits.contains(&(id.into(), id.into(), 137)), || {
        format!("no /tasks/exit for the task with 137: {}", events.stdout)
    });

    let deleted = c.ctr_in(&["task", "delete", id], None, common::VM_TIMEOUT);
    // ctr 1.6 reports a non-zero status of the deleted task as a warning, exiting 0.
    c.check(
        deleted.status.success() && deleted.stderr.contains("non-zero exit code 137"),
        || format!("ctr task delete: expected the task's status 137: {deleted:?}"),
    );
    c.ctr_ok(&["container", "rm", id]);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[&alive], None);
}

/// An image-based container: the busybox image the suite builds is imported; `ctr run --rm
/// IMAGE` gets containerd's overlay snapshot mounts to the shim, the container sees the
/// image and writes to its upper layer; the overlay mount existed while it ran; afterwards
/// nothing is left and only the image's committed snapshot remains.
#[test]
fn image_container_runs_on_overlay_mounts() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    import_busybox(&c);
    let sampler = c.sample();
    let fifo = c.dir().join("fifo").display().to_string();
    let out = c.ctr_in(
        &[
            "run",
            "--rm",
            "--runtime",
            common::RUNTIME,
            "--fifo-dir",
            &fifo,
            IMAGE,
            "image",
            "/bin/sh",
            "-c",
            "test -x /bin/busybox && echo written > /tmp/f && cat /tmp/f && echo image-ok",
        ],
        None,
        common::VM_TIMEOUT,
    );
    c.check(out.code() == Some(0), || {
        format!("expected exit code 0: {out:?}")
    });
    c.check(out.stdout == "written\nimage-ok\n", || {
        format!("output: {out:?}")
    });
    let seen = c.check_seen_vms(sampler, 1);
    c.check(seen.mounts.iter().any(|m| m.contains(" overlay ")), || {
        format!(
            "no overlay mount seen while the container ran: {:#?}",
            seen.mounts
        )
    });
    check_no_task_or_container(&c);
    c.check_nothing_left(&[], Some(&seen));
    let snapshots = c.ctr_ok(&["snapshot", "ls"]);
    c.check(
        snapshots.lines().skip(1).all(|l| l.contains("Committed")),
        || format!("the container's snapshot is left: {snapshots}"),
    );
}

/// Three containers at once, each in its own VM (three QEMUs seen together), each with its
/// own output and exit code; then nothing is left.
#[test]
fn three_containers_at_once() {
    let _slots = common::VmSlots::acquire(3);
    let c = Containerd::start();
    let sampler = c.sample();
    let started = Instant::now();
    let outs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let c = &c;
                s.spawn(move || {
                    let id = format!("c{i}");
                    let script = format!("echo from-{id}; exit {}", 10 + i);
                    let args = run_args(c, &["--rm"], &id, &["/bin/sh", "-c", &script]);
                    c.ctr_in(&strs(&args), None, common::VM_TIMEOUT)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a run thread panicked"))
            .collect()
    });
    eprintln!("three ctr run --rm at once: {:?}", started.elapsed());
    for (i, out) in outs.iter().enumerate() {
        c.check(
            out.code() == Some(10 + i32::try_from(i).unwrap_or(0)),
            || format!("c{i}: expected exit code {}: {out:?}", 10 + i),
        );
        c.check(out.stdout == format!("from-c{i}\n"), || {
            format!("c{i}: output {out:?}")
        });
    }
    let seen = c.check_seen_vms(sampler, 3);
    c.check(seen.most_qemus_at_once == 3, || {
        format!(
            "the three VMs never ran at once (at most {} QEMUs seen together)",
            seen.most_qemus_at_once
        )
    });
    check_no_task_or_container(&c);
    c.check_nothing_left(&[], Some(&seen));
}

/// QEMU killed (SIGKILL) under a running (attached) `ctr run --rm`: ctr returns with status 137
/// and nothing is left.
#[test]
fn qemu_killed_under_ctr_run() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let id = "qemukill";
    let args = run_args(
        &c,
        &["--rm"],
        id,
        &["/bin/sh", "-c", "echo ready; exec sleep 1000"],
    );
    let mut run = c.spawn_ctr(&strs(&args), None);
    c.check(run.wait_stdout("ready", common::VM_TIMEOUT), || {
        format!("the container never said ready: {}", run.stdout_so_far())
    });
    let alive = c.observe_task(id);
    for q in &alive.qemu {
        common::sigkill(q.pid);
    }
    let out = run.wait(common::VM_TIMEOUT).unwrap_or_else(|e| c.fail(&e));
    c.check(out.code() == Some(137), || {
        format!("ctr run after QEMU was killed: expected 137: {out:?}")
    });
    check_no_task_or_container(&c);
    c.check_nothing_left(&[&alive], None);
}

/// The shim killed (SIGKILL) under a detached task: containerd notices the connection go and
/// runs the shim binary's `delete` action, whose status (137: the VM was killed; 255 would
/// mean the action failed) it publishes as the task's exit; `ctr task delete --force` and
/// `ctr container rm` then leave nothing: no QEMU, no vhost-device-vsock, no state.
#[test]
fn shim_killed_then_delete_cleans_up() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let id = "shimkill";
    let args = run_args(&c, &["-d"], id, &["sleep", "1000"]);
    c.ctr_ok_in(&strs(&args), common::VM_TIMEOUT);
    c.wait_task_status(id, "RUNNING", common::VM_TIMEOUT);
    let alive = c.observe_task(id);
    let events = subscribe_events(&c);
    common::sigkill(alive.shim.pid);
    let deadline = Instant::now() + common::VM_TIMEOUT;
    while !exit_events(&events.stdout_so_far())
        .iter()
        .any(|e| e.1 == id)
    {
        c.check(Instant::now() < deadline, || {
            format!(
                "no /tasks/exit for {id} after its shim was killed: {}",
                events.stdout_so_far()
            )
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = events.stop().unwrap_or_else(|e| c.fail(&e));
    let exits = exit_events(&events.stdout);
    c.check(exits.contains(&(id.into(), id.into(), 137)), || {
        format!("the delete action's exit should be 137: {}", events.stdout)
    });
    let status = c.task_status(id);
    eprintln!("after the shim was killed: task {status:?}");
    let killed = c.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    eprintln!("ctr task kill: {killed:?}");
    let deleted = c.ctr_in(&["task", "delete", "--force", id], None, common::VM_TIMEOUT);
    eprintln!("ctr task delete --force: {deleted:?}");
    c.check(
        deleted.status.success() || deleted.stderr.contains("not found"),
        || format!("ctr task delete --force: {deleted:?}"),
    );
    c.ctr_ok(&["container", "rm", id]);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[&alive], None);
}

/// `ctr run --runtime-config-path FILE` names the shim's settings over the environment's: the
/// VM's state goes to that file's `state_root` (QEMU's command line names it, the
/// environment's state root stays unused), and is gone afterwards.
#[test]
fn runtime_config_path_overrides_the_environment() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let alt_root = c.dir().join("alt-state");
    let alt_config = c.dir().join("alt-shim.json");
    let config = serde_json::json!({
        "assets": common::assets_dir().canonicalize().expect("assets").display().to_string(),
        "state_root": alt_root.display().to_string(),
    });
    std::fs::write(&alt_config, config.to_string()).expect("write the config");
    let sampler = c.sample();
    let alt_config_text = alt_config.display().to_string();
    let args = run_args(
        &c,
        &["--rm", "--runtime-config-path", &alt_config_text],
        "altcfg",
        &["/bin/sh", "-c", "echo alt"],
    );
    let out = c.ctr_in(&strs(&args), None, common::VM_TIMEOUT);
    c.check(out.code() == Some(0) && out.stdout == "alt\n", || {
        format!("ctr run with --runtime-config-path: {out:?}")
    });
    let seen = sampler.finish().unwrap_or_else(|e| c.fail(&e));
    let alt_text = alt_root.display().to_string();
    c.check(
        seen.procs
            .values()
            .any(|p| p.kind() == Kind::Qemu && p.cmdline.contains(&alt_text)),
        || format!("no QEMU named {alt_text}: {:#?}", seen.procs),
    );
    c.check(!seen.state_used, || {
        "the environment's state root was used despite --runtime-config-path".into()
    });
    check_no_task_or_container(&c);
    c.check_nothing_left(&[], Some(&seen));
    let left: Vec<String> = common::tree(&alt_root)
        .unwrap_or_else(|e| c.fail(&e))
        .into_iter()
        .filter(|e| e != common::NAMESPACE)
        .collect();
    c.check(left.is_empty(), || format!("left in {alt_text}: {left:?}"));
}

/// containerd's `Update` with OCI `LinuxResources`, sent to the shim's socket as containerd
/// sends it (`Task.Update`; ctr 1.6 has no `task update`, and CRI is not in this test).
fn update(socket: &std::path::Path, id: &str, resources: &serde_json::Value) -> Result<(), String> {
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::shim_async::TaskClient;
    use containerd_shim_protos::ttrpc;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = ttrpc::asynchronous::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .map_err(|e| format!("connect to the shim: {e}"))?;
        let mut req = UpdateTaskRequest::new();
        req.id = id.into();
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources.to_string().into_bytes();
        req.resources = Some(any).into();
        let ctx = ttrpc::context::with_duration(common::VM_TIMEOUT);
        TaskClient::new(client)
            .update(ctx, &req)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

/// containerd's `Update` resizes the task's VM (SPEC §12): a CPU quota of two CPUs hot-adds
/// a vCPU the container sees (`nproc`), a memory limit of 512 MiB hot-adds memory it sees
/// (`MemTotal`), and a quota beyond the VM's maximum is refused by its range.
#[test]
fn task_update_resizes_the_vm() {
    let _slot = common::VmSlots::acquire(1);
    let c = Containerd::start();
    let config = c.dir().join("hotplug-shim.json");
    let text = serde_json::json!({
        "assets": common::assets_dir().canonicalize().expect("assets").display().to_string(),
        "state_root": c.state_root.display().to_string(),
        "max_cpus": 2,
        "max_memory_mib": 512,
        "hotplug_auto": false,
    });
    std::fs::write(&config, text.to_string()).expect("write the config");
    let config_text = config.display().to_string();
    let id = "resized";
    let args = run_args(
        &c,
        &["-d", "--runtime-config-path", &config_text],
        id,
        &["sleep", "1000"],
    );
    c.ctr_ok_in(&strs(&args), common::VM_TIMEOUT);
    c.wait_task_status(id, "RUNNING", common::VM_TIMEOUT);
    let alive = c.observe_task(id);
    let in_task = |exec_id: &str, script: &str| -> String {
        let out = c.ctr_in(
            &[
                "task",
                "exec",
                "--exec-id",
                exec_id,
                id,
                "/bin/sh",
                "-c",
                script,
            ],
            None,
            common::VM_TIMEOUT,
        );
        c.check(out.code() == Some(0), || {
            format!("exec {script:?}: {out:?}")
        });
        out.stdout.trim().to_owned()
    };
    let mem_kib = |line: String| -> u64 {
        line.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| c.fail(&format!("not a MemTotal line: {line:?}")))
    };
    c.check(in_task("n1", "nproc") == "1", || {
        "the VM boots with 1 vCPU".into()
    });
    let mem0 = mem_kib(in_task("m1", "grep MemTotal /proc/meminfo"));

    let grow = serde_json::json!({
        "cpu": {"quota": 200_000, "period": 100_000},
        "memory": {"limit": 536_870_912},
    });
    update(&alive.socket, id, &grow).unwrap_or_else(|e| c.fail(&format!("update: {e}")));
    let n = in_task("n2", "nproc");
    c.check(n == "2", || format!("nproc after the update: {n}"));
    let mem1 = mem_kib(in_task("m2", "grep MemTotal /proc/meminfo"));
    c.check(mem1 - mem0 == 256 * 1024, || {
        format!("MemTotal grew from {mem0} to {mem1} KiB, not by 256 MiB")
    });

    let too_many = serde_json::json!({"cpu": {"quota": 400_000, "period": 100_000}});
    let refused = update(&alive.socket, id, &too_many);
    c.check(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("between 1 and 2")),
        || format!("a quota of 4 CPUs should be refused by its range: {refused:?}"),
    );

    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
    c.wait_task_status(id, "STOPPED", common::VM_TIMEOUT);
    c.ctr_in(&["task", "delete", id], None, common::VM_TIMEOUT);
    c.ctr_ok(&["container", "rm", id]);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[&alive], None);
}

/// The network of a networked test: a "host" namespace (where containerd, the shim, its CNI
/// plugins and QEMU run, and where the CNI bridge lives, with no route out), a task
/// namespace, and a bridge configuration list; both namespaces are removed on drop.
struct TestNetwork {
    dir: tempfile::TempDir,
    host: std::path::PathBuf,
    task_ns: std::path::PathBuf,
    conflist: std::path::PathBuf,
}

impl TestNetwork {
    fn new() -> Self {
        use spinbox::net::netns;
        let dir = tempfile::tempdir().expect("tempdir");
        let host = dir.path().join("host-ns");
        let task_ns = dir.path().join("task-ns");
        netns::create(&host).expect("the test's host namespace");
        netns::create(&task_ns).expect("the task's namespace");
        let conflist = dir.path().join("ctr.conflist");
        let list = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "sbctr",
            "plugins": [{
                "type": "bridge",
                "bridge": "sbt-ctr",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": dir.path().join("ipam"),
                    "ranges": [[{ "subnet": "10.231.11.0/24" }]],
                },
            }],
        });
        std::fs::write(&conflist, list.to_string()).expect("write the conflist");
        Self {
            dir,
            host,
            task_ns,
            conflist,
        }
    }

    /// The leased addresses. Fails closed.
    fn leases(&self) -> Vec<String> {
        match std::fs::read_dir(self.dir.path().join("ipam/sbctr")) {
            Ok(entries) => entries
                .map(|e| {
                    e.expect("lease entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("cannot list the leases: {e}"),
        }
    }

    /// Whether the task's namespace has a link `name`.
    fn has(&self, name: &str) -> bool {
        spinbox::net::tap::link_exists(&self.task_ns, name).expect("list the task's links")
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        for p in [&self.task_ns, &self.host] {
            let _ = spinbox::net::netns::remove(p);
        }
    }
}

/// A task whose OCI spec names a network namespace (`ctr run --with-ns network:PATH`), with
/// containerd inside the test's own host namespace ([`TestNetwork`]). The shim runs CNI in
/// the named namespace: the lease, `eth0` and the TAP appear, and the container sees its
/// address. Then the shim is killed: containerd's `delete` action releases the lease and the
/// devices from the shim's record, and leaves the namespace, which the test owns, in place.
#[test]
fn a_named_network_namespace_is_used_then_released_after_the_shim_dies() {
    let _slot = common::VmSlots::acquire(1);
    let net = TestNetwork::new();
    let c = Containerd::start_in(Some(&net.host));
    let config = c.dir().join("net-shim.json");
    let text = serde_json::json!({
        "assets": common::assets_dir().canonicalize().expect("assets").display().to_string(),
        "state_root": c.state_root.display().to_string(),
        "network": { "conflist": net.conflist.display().to_string() },
    });
    std::fs::write(&config, text.to_string()).expect("write the config");
    let (config_text, with_ns) = (
        config.display().to_string(),
        format!("network:{}", net.task_ns.display()),
    );
    let id = "netted";
    let args = run_args(
        &c,
        &[
            "-d",
            "--runtime-config-path",
            &config_text,
            "--with-ns",
            &with_ns,
        ],
        id,
        &["sleep", "1000"],
    );
    c.ctr_ok_in(&strs(&args), common::VM_TIMEOUT);
    c.wait_task_status(id, "RUNNING", common::VM_TIMEOUT);
    let alive = c.observe_task(id);

    let lease = net.leases();
    c.check(lease.len() == 1, || format!("one lease, got {lease:?}"));
    c.check(net.has("eth0") && net.has(spinbox::net::TAP_NAME), || {
        "eth0 and the TAP are in the task's namespace".into()
    });
    let out = c.ctr_in(
        &[
            "task",
            "exec",
            "--exec-id",
            "ip",
            id,
            "ip",
            "-4",
            "-o",
            "addr",
            "show",
            "eth0",
        ],
        None,
        common::VM_TIMEOUT,
    );
    c.check(out.stdout.contains(&format!("inet {}/", lease[0])), || {
        format!("the container sees its lease {lease:?}: {out:?}")
    });

    common::sigkill(alive.shim.pid);
    let deadline = Instant::now() + common::VM_TIMEOUT;
    while !(net.leases().is_empty() && !net.has("eth0") && !net.has(spinbox::net::TAP_NAME)) {
        c.check(Instant::now() < deadline, || {
            format!(
                "the delete action left the lease {:?} or a device; log:\n{}",
                net.leases(),
                c.log_tail(40)
            )
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    c.check(spinbox::net::netns::is_netns(&net.task_ns), || {
        "the task's namespace (not the shim's) stays".into()
    });
    let _ = c.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
    let _ = c.ctr_in(&["task", "delete", "--force", id], None, common::VM_TIMEOUT);
    c.ctr_ok(&["container", "rm", id]);
    check_no_task_or_container(&c);
    c.check_nothing_left(&[&alive], None);
}
