//! The whole node: a process is known by its container and pod, read from the node itself.
//! These tests lay out cgroups as the kubelet and containerd do (the systemd driver on cgroup
//! v2, the cgroupfs driver on a cgroup v1 hierarchy) and the kubelet's pod log directory, move a
//! workload in, and check what the agent says of it.

use std::path::{Path, PathBuf};

use stallscope_tests::*;

const NAMESPACE: &str = "stallscope-test";

use stallscope_tests::node::{POD_LOGS, cgroup_mount, remove_cgroup_dirs};

/// A cgroup made for the test and the kubelet's pod directory, with the workload moved in;
/// everything is undone on drop (the workload moved back to the root cgroup first).
struct PodLayout {
    mount: PathBuf,
    dirs: Vec<PathBuf>,
    pod_log: PathBuf,
    made_pods_dir: bool,
    pid: u32,
}

impl PodLayout {
    fn new(mount: &Path, rel: &str, uid: &str, pod: &str, pid: u32) -> PodLayout {
        let mut dirs = Vec::new();
        let mut p = mount.to_path_buf();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p.push(part);
            if !p.exists() {
                std::fs::create_dir(&p)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", p.display()));
                dirs.push(p.clone());
            }
        }
        let pods = Path::new(POD_LOGS);
        let made_pods_dir = !pods.exists();
        let pod_log = pods.join(format!("{NAMESPACE}_{pod}_{uid}"));
        std::fs::create_dir_all(&pod_log).expect("creating the pod log directory");
        let layout = PodLayout {
            mount: mount.to_path_buf(),
            dirs,
            pod_log,
            made_pods_dir,
            pid,
        };
        std::fs::write(p.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", p.display()));
        layout
    }
}

impl Drop for PodLayout {
    fn drop(&mut self) {
        let _ = std::fs::write(self.mount.join("cgroup.procs"), self.pid.to_string());
        remove_cgroup_dirs(&self.dirs);
        let _ = std::fs::remove_dir(&self.pod_log);
        if self.made_pods_dir {
            let _ = std::fs::remove_dir(POD_LOGS);
        }
    }
}

/// Attaches to a workload in the layout and checks the summary, summary.json and every
/// sample's labels name its container and pod.
fn check_pod(mount: &Path, rel_of: impl Fn(&str, &str) -> String, runtime: Option<&str>) {
    let w = Workload::spawn("offcpu_mix", &[]);
    // Ids unique to this run (a leftover of an earlier run cannot match).
    let n = format!("{:08x}", w.pid());
    let uid = format!("{n}-1111-4222-8333-444455556666");
    let id = format!("{n}{}", "0123456789abcdef".repeat(3))
        .chars()
        .take(64)
        .collect::<String>();
    let pod = format!("web-{}", w.pid());
    let _layout = PodLayout::new(mount, &rel_of(&uid, &id), &uid, &pod, w.pid());
    let run = attach_ok(&w, "2s", "cpu,offcpu", &[]);

    let short = &id[..12];
    let expected = match runtime {
        Some(r) => format!("target: container {short} ({r}), pod {NAMESPACE}/{pod}"),
        None => format!("target: container {short}, pod {NAMESPACE}/{pod}"),
    };
    assert!(
        run.stdout.contains(&expected),
        "want {expected:?} in:\n{}",
        run.stdout
    );
    let v = summary_json(&run);
    assert_eq!(v["identity"]["container"], id.as_str(), "{}", v["identity"]);
    assert_eq!(v["identity"]["pod_uid"], uid.as_str());
    assert_eq!(v["identity"]["pod"], pod.as_str());
    assert_eq!(v["identity"]["namespace"], NAMESPACE);
    for file in ["cpu.pb.gz", "offcpu.pb.gz"] {
        let p = read_profile(run.file(file));
        assert!(!p.samples.is_empty(), "{file} is empty");
        for s in &p.samples {
            assert_eq!(
                sample_label(s, "pod").as_deref(),
                Some(pod.as_str()),
                "{file}"
            );
            assert_eq!(
                sample_label(s, "namespace").as_deref(),
                Some(NAMESPACE),
                "{file}"
            );
            assert_eq!(
                sample_label(s, "container").as_deref(),
                Some(id.as_str()),
                "{file}"
            );
        }
    }
}

/// The systemd cgroup driver with containerd, on cgroup v2.
#[test]
fn a_pods_process_under_the_systemd_driver_is_labelled_with_its_container_and_pod() {
    require_root();
    let mount = cgroup_mount("cgroup2", None).expect("a cgroup2 mount on this machine");
    check_pod(
        &mount,
        |uid, id| {
            let uid_ = uid.replace('-', "_");
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"
            )
        },
        Some("containerd"),
    );
}

/// The cgroupfs driver, on a cgroup v1 hierarchy (pids), the container a bare id.
#[test]
fn a_pods_process_under_the_cgroupfs_driver_is_labelled_with_its_container_and_pod() {
    require_root();
    let mount = cgroup_mount("cgroup", Some("pids")).expect("a cgroup v1 pids hierarchy");
    check_pod(
        &mount,
        |uid, id| format!("kubepods/burstable/pod{uid}/{id}"),
        None,
    );
}

/// A process outside any container gets no such labels and no `target:` line.
#[test]
fn a_process_outside_containers_has_no_pod_labels() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let run = attach_ok(&w, "1s", "offcpu", &[]);
    assert!(!run.stdout.contains("target: container"), "{}", run.stdout);
    let p = read_profile(run.file("offcpu.pb.gz"));
    assert!(p.samples.iter().all(|s| sample_label(s, "pod").is_none()));
    assert!(summary_json(&run)["identity"]["container"].is_null());
}

/// A process in its own PID namespace (`unshare --pid --fork`, as a container runtime starts
/// one): the agent takes its host pid and says its pid in the namespace (1 here).
#[test]
fn a_process_in_its_own_pid_namespace_shows_both_pids() {
    require_root();
    let mut cmd = std::process::Command::new("unshare");
    // --kill-child: the namespace (its init, our workload) dies with unshare, which the
    // Workload kills on drop; the guard below kills it too if unshare went first.
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(workload_path("offcpu_mix"));
    let unshare = Workload::spawn_command(
        "unshare offcpu_mix",
        cmd,
        Some("ready"),
        std::time::Duration::from_secs(10),
    );
    // The workload is unshare's child, pid 1 in the new namespace.
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        unshare.pid(),
        unshare.pid()
    ))
    .expect("unshare's children");
    let pid: u32 = children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child of unshare: {children:?}"));
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: plain syscall; killing a namespace's init ends the whole namespace.
            unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        }
    }
    let _init = KillOnDrop(pid);
    let run = attach_pid_ok(pid, "1s", "offcpu", &[]);
    assert!(
        run.stdout.contains("target: pid 1 in its PID namespace"),
        "{}",
        run.stdout
    );
    assert_eq!(summary_json(&run)["identity"]["ns_pid"], 1);
    assert_eq!(summary_json(&run)["pid"], pid);
}

/// A pod, a container and a cgroup as targets: a pre-forking workload in a pod's cgroup (the
/// systemd driver on cgroup v2) and another process outside it. Profiled by `--pod UID`,
/// `--pod NAMESPACE/NAME`, `--container ID-PREFIX` and `--cgroup DIR`, a profile has the
/// pod's processes and only them: the parent and the workers it forks in the window (which
/// inherit its cgroup), each sample labelled with its pid and the pod.
#[test]
fn a_pod_container_or_cgroup_profile_has_only_its_processes() {
    require_root();
    let mount = cgroup_mount("cgroup2", None).expect("a cgroup2 mount on this machine");
    let outside = Workload::spawn("cpu_split", &[]);
    let w = Workload::spawn("forking_workers", &["-1", "2", "0.3", "0.5"]);
    let n = format!("{:08x}", w.pid());
    let uid = format!("{n}-2222-4333-8444-555566667777");
    let id = format!("{n}{}", "fedcba9876543210".repeat(4))
        .chars()
        .take(64)
        .collect::<String>();
    let pod = format!("workers-{}", w.pid());
    let rel = format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{id}.scope",
        uid.replace('-', "_")
    );
    let _layout = PodLayout::new(&mount, &rel, &uid, &pod, w.pid());
    let by_name = format!("{NAMESPACE}/{pod}");
    let dir = mount.join(&rel);
    let selectors: [(&str, &str); 4] = [
        ("--pod", uid.as_str()),
        ("--pod", by_name.as_str()),
        ("--container", &id[..12]),
        ("--cgroup", dir.to_str().unwrap()),
    ];
    for (i, (flag, value)) in selectors.iter().enumerate() {
        let tmp = TempDir::new("stallscope-podgroup");
        let out = tmp.path().join("out");
        let (agent, stderr) = spawn_attach(
            &[
                flag,
                value,
                "--profile",
                "cpu,offcpu",
                "--duration",
                "1500ms",
            ],
            &out,
            std::process::Stdio::null(),
        );
        // The first window sees the workers forked (they stay in the pod until they exit).
        if i == 0 {
            // SAFETY: signal to our own child.
            unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
        }
        let status = agent.wait_with_output().expect("the agent").status;
        let stderr = stderr.join().unwrap_or_default();
        assert!(status.success(), "{flag} {value}: {stderr}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        let members: Vec<u64> = v["group"]["members"]
            .as_array()
            .unwrap_or_else(|| panic!("{flag} {value}: no group in {v}"))
            .iter()
            .filter_map(|m| m["pid"].as_u64())
            .collect();
        assert!(
            members.contains(&u64::from(w.pid())) && !members.contains(&u64::from(outside.pid())),
            "{flag} {value}: members {members:?}"
        );
        let cpu = read_profile(out.join("cpu.pb.gz"));
        let off = read_profile(out.join("offcpu.pb.gz"));
        assert!(
            !off.samples.is_empty(),
            "{flag} {value}: no off-CPU samples"
        );
        for (p, s) in cpu
            .samples
            .iter()
            .map(|s| (&cpu, s))
            .chain(off.samples.iter().map(|s| (&off, s)))
        {
            let pid: u64 = sample_label(s, "pid")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{flag} {value}: no pid label: {:?}", s.labels));
            assert!(
                members.contains(&pid),
                "{flag} {value}: a sample of pid {pid}, not a member of {members:?}"
            );
            assert_eq!(sample_label(s, "pod").as_deref(), Some(pod.as_str()));
            assert!(
                !stack_has(p, s, "hot_a"),
                "{flag} {value}: the outside process's frame"
            );
        }
        if i == 0 {
            assert_eq!(
                members.len(),
                3,
                "{flag} {value}: the parent and its 2 workers"
            );
            assert!(
                cpu.samples
                    .iter()
                    .any(|s| stack_has(&cpu, s, "worker_burn")),
                "{flag} {value}: no worker's CPU"
            );
        }
    }
    // A pod that is not on this node: the error says so and what to check.
    let run = run_agent(&["attach", "--pod", "nowhere/none", "--duration", "1s"]);
    assert!(!run.status.success());
    assert!(
        run.output()
            .contains("no process is in pod nowhere/none now")
            && run.output().contains("/var/log/pods"),
        "{}",
        run.output()
    );
}

/// Fifty pods of ten processes each on the systemd driver's layout, and `serve --all` with a
/// bound of 3 processes per container: every series of a pod's process names its container,
/// pod and namespace; each container has at most 3 processes with series of their own plus one
/// `pid="other"` sum of the rest, whose CPU and thread counts are the rest's, and
/// `stallscope_processes_summed` counts them (7 each); the whole text stays bounded.
#[test]
fn metrics_of_500_processes_in_50_containers_are_labelled_and_bounded() {
    use stallscope_tests::serve_kit::{Serve, sample};
    require_root();
    let node = stallscope_tests::node::FakeNode::build(NAMESPACE, 50, 10, |_, _| {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600");
        cmd
    })
    .unwrap_or_else(|e| panic!("laying out the node: {e:#}"));
    let tag = node.tag();
    let pods: Vec<(String, String, Vec<u32>)> = node
        .pods
        .iter()
        .map(|p| (p.container_id.clone(), p.name.clone(), p.pids.clone()))
        .collect();
    let serve = Serve::start(
        &[
            "--all",
            "--max-targets",
            "1024",
            "--max-processes-per-container",
            "3",
            "--interval",
            "200ms",
        ],
        false,
    );
    // Two samples: a baseline, then figures.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let text = serve.metrics();
    let mut own_total = 0;
    for (id, name, pids) in &pods {
        let labels = format!("container=\"{id}\"");
        let own: Vec<&u32> = pids
            .iter()
            .filter(|p| text.contains(&format!("stallscope_cpu_seconds_total{{pid=\"{p}\",")))
            .collect();
        assert_eq!(
            own.len(),
            3,
            "{name}: processes with their own series {own:?}"
        );
        own_total += own.len();
        for p in &own {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("stallscope_cpu_seconds_total{{pid=\"{p}\",")))
                .unwrap();
            assert!(
                line.contains(&labels)
                    && line.contains(&format!("pod=\"{name}\""))
                    && line.contains(&format!("namespace=\"{NAMESPACE}\"")),
                "{line}"
            );
        }
        assert_eq!(
            sample(
                &text,
                "stallscope_processes_summed",
                &[("container", id.as_str()), ("pod", name.as_str())]
            ),
            Some(7.0),
            "{name}"
        );
        // The sum's threads are the 7 other sleeps, each sleeping.
        assert_eq!(
            sample(
                &text,
                "stallscope_threads",
                &[
                    ("pid", "other"),
                    ("container", id.as_str()),
                    ("state", "sleep")
                ]
            ),
            Some(7.0),
            "{name}"
        );
    }
    assert_eq!(own_total, 150);
    // Bounded: 4 CPU series per container, not 10.
    let pod_series = text
        .lines()
        .filter(|l| l.starts_with("stallscope_cpu_seconds_total{") && l.contains(&tag))
        .count();
    assert_eq!(pod_series, 200);
    drop(serve);
    drop(node);
}
