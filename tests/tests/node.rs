//! The whole node: a process is known by its container and pod, read from the node itself.
//! These tests lay out cgroups as the kubelet and containerd do (the systemd driver on cgroup
//! v2, the cgroupfs driver on a cgroup v1 hierarchy) and the kubelet's pod log directory, move a
//! workload in, and check what the agent says of it.

use std::path::{Path, PathBuf};

use stallscope_tests::*;

const NAMESPACE: &str = "stallscope-test";

/// Where a cgroup filesystem of `fstype` (`cgroup2`, or `cgroup` with `option`) is mounted.
fn cgroup_mount(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[2] == fstype && option.is_none_or(|o| f[3].split(',').any(|x| x == o)))
            .then(|| PathBuf::from(f[1]))
    })
}

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
        let pods = Path::new("/var/log/pods");
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
        for d in self.dirs.iter().rev() {
            // A cgroup is removed with rmdir once empty; the workload may take a moment to go.
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir(&self.pod_log);
        if self.made_pods_dir {
            let _ = std::fs::remove_dir("/var/log/pods");
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
