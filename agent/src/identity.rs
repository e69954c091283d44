//! Who a process is on its node, from the node itself (no API server): its container id and
//! runtime, and its pod's UID, from `/proc/PID/cgroup`; the pod's name and namespace from the
//! kubelet's pod log directories (`/var/log/pods/NAMESPACE_NAME_UID/`) when they are there;
//! its PID in its own PID namespace (`NSpid` in `/proc/PID/status`).
//!
//! The cgroup layouts recognized (cgroup v2 `0::PATH` and cgroup v1 `N:controllers:PATH` lines):
//! - systemd driver: `.../kubepods-burstable-pod<UID_with_underscores>.slice/
//!   cri-containerd-<ID>.scope` (also `crio-<ID>.scope`, `docker-<ID>.scope`);
//! - cgroupfs driver: `/kubepods/burstable/pod<UID>/<ID>` (and `/kubepods/pod<UID>/<ID>`);
//! - Docker alone: `/system.slice/docker-<ID>.scope` or `/docker/<ID>`.

use std::path::Path;

/// A process's place on the node. Empty fields: not in a container (or a layout not known).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The container id (64 hex digits for containerd, CRI-O and Docker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// `containerd`, `cri-o` or `docker`, when the cgroup path says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    /// The pod's UID, with dashes (the systemd driver writes underscores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// From the kubelet's pod log directory, when it is on this node's filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The PID inside the process's own PID namespace, when it is in one (else `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
}

impl Identity {
    /// Nothing known: not in a container or a namespace of its own.
    pub fn is_empty(&self) -> bool {
        *self == Identity::default()
    }
}

/// A container id: at least 12 lowercase hex digits.
fn container_id(s: &str) -> Option<&str> {
    (s.len() >= 12
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(s)
}

/// A pod UID as the kubelet writes it, underscores (systemd) made dashes.
fn pod_uid(s: &str) -> Option<String> {
    let uid = s.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// Container and pod from one cgroup path.
fn from_path(path: &str) -> (Option<String>, Option<&'static str>, Option<String>) {
    let mut container = None;
    let mut runtime = None;
    let mut pod = None;
    for part in path.split('/') {
        // systemd: kubepods-burstable-pod<UID>.slice, kubepods-pod<UID>.slice
        if let Some(rest) = part.strip_suffix(".slice")
            && let Some(i) = rest.rfind("-pod")
        {
            pod = pod_uid(&rest[i + 4..]).or(pod);
        }
        // cgroupfs: pod<UID>
        if let Some(rest) = part.strip_prefix("pod") {
            pod = pod_uid(rest).or(pod);
        }
        let scoped = part.strip_suffix(".scope").unwrap_or(part);
        for (prefix, name) in [
            ("cri-containerd-", "containerd"),
            ("crio-", "cri-o"),
            ("docker-", "docker"),
        ] {
            if let Some(id) = scoped.strip_prefix(prefix).and_then(container_id) {
                container = Some(id.to_string());
                runtime = Some(name);
            }
        }
        // cgroupfs: a bare id under a pod directory or under /docker.
        if container.is_none()
            && let Some(id) = container_id(part)
            && (pod.is_some() || path.starts_with("/docker/"))
        {
            container = Some(id.to_string());
            runtime = path.starts_with("/docker/").then_some("docker");
        }
    }
    (container, runtime, pod)
}

/// Container and pod from the text of `/proc/PID/cgroup` (v2's line first, then v1's).
pub fn parse_cgroup(text: &str) -> Identity {
    let mut id = Identity::default();
    let mut lines: Vec<&str> = text.lines().collect();
    // The unified hierarchy (0::) is the one a v2 or hybrid system's kubelet uses.
    lines.sort_by_key(|l| !l.starts_with("0::"));
    for line in lines {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let (container, runtime, pod) = from_path(path);
        if id.container.is_none() {
            id.container = container;
            id.runtime = id.runtime.or(runtime);
        }
        if id.pod_uid.is_none() {
            id.pod_uid = pod;
        }
        if id.container.is_some() && id.pod_uid.is_some() {
            break;
        }
    }
    id
}

/// The pid in the innermost PID namespace, from `/proc/PID/status`'s `NSpid:` line, when the
/// process is in a namespace of its own (more than one pid on the line).
pub fn parse_ns_pid(status: &str) -> Option<u32> {
    let pids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    (pids.len() > 1).then(|| *pids.last().unwrap_or(&0))
}

/// Namespace and name of the pod with `uid`, from the kubelet's `NAMESPACE_NAME_UID`
/// directories under `pods_dir` (`/var/log/pods`). Names cannot hold `_` (they are DNS labels),
/// so the split is unambiguous.
pub fn pod_name(pods_dir: &Path, uid: &str) -> Option<(String, String)> {
    for e in std::fs::read_dir(pods_dir).ok()?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let mut parts = name.splitn(3, '_');
        if let (Some(ns), Some(pod), Some(u)) = (parts.next(), parts.next(), parts.next())
            && u == uid
        {
            return Some((ns.to_string(), pod.to_string()));
        }
    }
    None
}

/// The identity of process `pid` as this node shows it (what cannot be read stays empty).
pub fn of_process(pid: u32) -> Identity {
    let mut id = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| parse_cgroup(&t))
        .unwrap_or_default();
    id.ns_pid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| parse_ns_pid(&s));
    if let Some(uid) = &id.pod_uid
        && let Some((ns, pod)) = pod_name(Path::new("/var/log/pods"), uid)
    {
        id.namespace = Some(ns);
        id.pod = Some(pod);
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c9a7b2e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    const UID: &str = "8d1e5a3c-2b4f-4c6d-9e7f-0a1b2c3d4e5f";

    #[test]
    fn systemd_driver_containerd_v2() {
        let uid_ = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
        );
        let id = parse_cgroup(&text);
        assert_eq!(id.container.as_deref(), Some(ID));
        assert_eq!(id.runtime, Some("containerd"));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn cgroupfs_driver_v1_and_crio_and_docker() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{ID}\n11:memory:/kubepods/besteffort/pod{UID}/{ID}\n0::/\n"
        );
        let id = parse_cgroup(&text);
        assert_eq!(id.container.as_deref(), Some(ID));
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        assert_eq!(id.runtime, None);
        let crio = parse_cgroup(&format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
            UID.replace('-', "_")
        ));
        assert_eq!(crio.runtime, Some("cri-o"));
        assert_eq!(crio.pod_uid.as_deref(), Some(UID));
        let docker = parse_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(
            (docker.container.as_deref(), docker.runtime),
            (Some(ID), Some("docker"))
        );
        assert_eq!(docker.pod_uid, None);
        let docker_v1 = parse_cgroup(&format!("4:cpu,cpuacct:/docker/{ID}\n"));
        assert_eq!(docker_v1.container.as_deref(), Some(ID));
    }

    #[test]
    fn not_in_a_container() {
        for text in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/ssh.service\n",
            "0::/\n",
            "",
            "garbage",
            "0::/kubepods.slice/kubepods-podnot_a_uid.slice/cri-containerd-xyz.scope\n",
        ] {
            let id = parse_cgroup(text);
            assert_eq!((id.container, id.pod_uid), (None, None), "{text:?}");
        }
    }

    #[test]
    fn ns_pid_and_pod_directories() {
        assert_eq!(parse_ns_pid("Name:\tx\nNSpid:\t4242\t7\n"), Some(7));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), None);
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
        let dir = std::env::temp_dir().join(format!("stallscope-pods-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(format!("shop_checkout-7f9c_{UID}"))).unwrap();
        std::fs::create_dir_all(
            dir.join("kube-system_coredns-1_00000000-0000-0000-0000-000000000000"),
        )
        .unwrap();
        assert_eq!(
            pod_name(&dir, UID),
            Some(("shop".to_string(), "checkout-7f9c".to_string()))
        );
        assert_eq!(pod_name(&dir, "11111111-1111-1111-1111-111111111111"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
