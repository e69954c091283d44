//! A fake Kubernetes node: pods' cgroups laid out as the kubelet's systemd driver and
//! containerd make them on cgroup v2, the kubelet's pod log directories (where the agent reads
//! pod names), and processes moved in. Everything is undone on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

/// Where a cgroup filesystem of `fstype` (`cgroup2`, or `cgroup` with the controller
/// `option`) is mounted.
pub fn cgroup_mount(fstype: &str, option: Option<&str>) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 4 && f[2] == fstype && option.is_none_or(|o| f[3].split(',').any(|x| x == o)))
            .then(|| PathBuf::from(f[1]))
    })
}

/// Removes cgroup directories, deepest (last) first. A cgroup goes with rmdir once empty, and
/// a killed process may take a moment to leave it: each is tried for up to a second.
pub fn remove_cgroup_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        for _ in 0..50 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The kubelet's pod log directories, where the agent reads a pod's namespace and name.
pub const POD_LOGS: &str = "/var/log/pods";

/// One pod of a [`FakeNode`]: one container.
pub struct Pod {
    /// The pod's name (`svc-N`).
    pub name: String,
    pub uid: String,
    /// The container's 64-hex-digit id.
    pub container_id: String,
    /// The container's cgroup directory.
    pub scope: PathBuf,
    /// The processes in it, in the order they were started.
    pub pids: Vec<u32>,
}

/// Pods of one container each, with their processes; undone on drop (the processes moved back
/// to the root cgroup, killed and reaped, the cgroups and pod directories removed).
pub struct FakeNode {
    mount: PathBuf,
    dirs: Vec<PathBuf>,
    pod_logs: Vec<PathBuf>,
    made_pod_logs: bool,
    children: Vec<Child>,
    pub namespace: String,
    pub pods: Vec<Pod>,
}

impl FakeNode {
    /// `pods` pods `svc-0`, `svc-1`... in `namespace` on the cgroup v2 mount, under
    /// `kubepods.slice/kubepods-besteffort.slice`, each with `per_pod` processes:
    /// `process(pod, k)` is the command of pod `pod`'s `k`-th process (started with stdio
    /// closed, in a process group of its own, killed if the starter dies). Ids and UIDs carry
    /// this process's pid, so two runs never collide.
    pub fn build(
        namespace: &str,
        pods: usize,
        per_pod: usize,
        mut process: impl FnMut(usize, usize) -> Command,
    ) -> Result<FakeNode> {
        let mount = cgroup_mount("cgroup2", None).context("no cgroup2 mount on this machine")?;
        let mut node = FakeNode {
            mount: mount.clone(),
            dirs: Vec::new(),
            pod_logs: Vec::new(),
            made_pod_logs: !Path::new(POD_LOGS).exists(),
            children: Vec::new(),
            namespace: namespace.to_string(),
            pods: Vec::new(),
        };
        let slice = mount.join("kubepods.slice/kubepods-besteffort.slice");
        for d in [mount.join("kubepods.slice"), slice.clone()] {
            if !d.exists() {
                std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
                node.dirs.push(d);
            }
        }
        let tag = format!("{:08x}", std::process::id());
        for i in 0..pods {
            let uid = format!("{tag}-{i:04x}-4000-8000-{i:012x}");
            let container_id = format!("{tag}{i:08x}{}", "cd".repeat(24));
            let name = format!("svc-{i}");
            let pod_dir = slice.join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ));
            let scope = pod_dir.join(format!("cri-containerd-{container_id}.scope"));
            for d in [&pod_dir, &scope] {
                std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
                node.dirs.push(d.clone());
            }
            let log = Path::new(POD_LOGS).join(format!("{namespace}_{name}_{uid}"));
            std::fs::create_dir_all(&log).with_context(|| format!("creating {}", log.display()))?;
            node.pod_logs.push(log);
            let mut pids = Vec::new();
            for k in 0..per_pod {
                let mut cmd = process(i, k);
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                crate::spawn::detached(&mut cmd);
                let child = cmd
                    .spawn()
                    .with_context(|| format!("starting {:?}", cmd.get_program()))?;
                pids.push(child.id());
                node.children.push(child);
                std::fs::write(scope.join("cgroup.procs"), pids[k].to_string())
                    .with_context(|| format!("moving a process into {}", scope.display()))?;
            }
            node.pods.push(Pod {
                name,
                uid,
                container_id,
                scope,
                pids,
            });
        }
        Ok(node)
    }

    /// The pid of this node's processes' tag in ids and UIDs (what sets them apart on a node
    /// that has other pods).
    pub fn tag(&self) -> String {
        format!("{:08x}", std::process::id())
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = std::fs::write(self.mount.join("cgroup.procs"), c.id().to_string());
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_cgroup_dirs(&self.dirs);
        for p in &self.pod_logs {
            let _ = std::fs::remove_dir(p);
        }
        if self.made_pod_logs {
            let _ = std::fs::remove_dir(POD_LOGS);
        }
    }
}
