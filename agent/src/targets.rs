//! What a command profiles: one process (`--pid N`), or a group of processes whose members
//! change while the window is open: a process and its descendants (`--pid N --children`), a
//! cgroup (`--cgroup PATH`), a container (`--container ID`) or a pod
//! (`--pod UID|NAMESPACE/NAME`).
//!
//! A group is resolved from `/proc` ([`scan`], then [`Selector::members`], which is pure). The
//! window ([`crate::window`]) resolves it at the start and again every second, and the kernel
//! makes a process forked by a member a member at its fork (`CONFIG_FOLLOW`), so that a worker
//! started after attach is recorded from its first instruction. A process that was a member
//! stays one while it lives (a worker whose parent exited is reparented, but still the
//! service's).

use std::path::Path;

use crate::{error::Error, identity};

/// How a process came to be in a group's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Joined {
    /// A member when the window opened.
    AtStart,
    /// Forked by a member in the window: recorded from its fork.
    Forked,
    /// Found in a later scan of `/proc` (recorded from then).
    Scanned,
}

/// A `--cgroup`/`cgroup=` argument as a selector: a hierarchy path, or a directory under
/// `/sys/fs/cgroup` (which must exist).
pub fn cgroup_selector(path: &str) -> Result<Selector, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cg = parse_cgroup_arg(path, &mountinfo)?;
    if cg.controllers.is_some() && !Path::new(path).is_dir() {
        return Err(format!(
            "no cgroup directory {path}: list the cgroups with `systemd-cgls` or look at \
             /proc/PID/cgroup of a process in it"
        ));
    }
    Ok(Selector::Cgroup(cg))
}

/// One process of a window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Member {
    pub pid: u32,
    pub comm: String,
    #[serde(skip)]
    pub info: Option<crate::system::ProcessInfo>,
    /// Its parent when it was forked by a member.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    pub joined: Joined,
    pub exited: bool,
    #[serde(skip_serializing_if = "crate::identity::Identity::is_empty")]
    pub identity: crate::identity::Identity,
}

/// The kubelet's pod log directories (`NAMESPACE_NAME_UID`), where pod names are read from.
pub const PODS_DIR: &str = "/var/log/pods";

/// A pod, by UID or by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRef {
    Uid(String),
    Name { namespace: String, name: String },
}

/// A cgroup: its path from its hierarchy's root, and which hierarchy when it was given as a
/// path under a mount (`Some("")` the unified v2 one, `Some("pids")` a v1 one), else any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub path: String,
    pub controllers: Option<String>,
}

/// The processes a command is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pid(u32),
    /// The process and every descendant, those forked later included.
    Children(u32),
    /// Every process in the cgroup or below it.
    Cgroup(Cgroup),
    /// Every process of the container whose id starts with this (at least 4 hex digits).
    Container(String),
    Pod(PodRef),
}

/// One process as a scan of `/proc` saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    /// The text of `/proc/PID/cgroup` (empty unless the selector needs it).
    pub cgroup: String,
}

impl Selector {
    /// More than one process, or processes that may come and go.
    pub fn is_group(&self) -> bool {
        !matches!(self, Selector::Pid(_))
    }

    /// The process the user named, if one was.
    pub fn root_pid(&self) -> Option<u32> {
        match self {
            Selector::Pid(p) | Selector::Children(p) => Some(*p),
            _ => None,
        }
    }

    /// Whether [`scan`] must read every process's cgroup for [`Selector::members`].
    pub fn needs_cgroups(&self) -> bool {
        matches!(
            self,
            Selector::Cgroup(_) | Selector::Container(_) | Selector::Pod(_)
        )
    }

    /// How the summary names it.
    pub fn describe(&self) -> String {
        match self {
            Selector::Pid(p) => format!("pid {p}"),
            Selector::Children(p) => format!("pid {p} and its descendants"),
            Selector::Cgroup(c) => format!("cgroup {}", c.path),
            Selector::Container(id) => format!("container {id}"),
            Selector::Pod(PodRef::Uid(u)) => format!("pod {u}"),
            Selector::Pod(PodRef::Name { namespace, name }) => format!("pod {namespace}/{name}"),
        }
    }

    /// The members among `procs` now, in pid order. `pod_uids` are the UIDs the pod's name
    /// stands for (from [`pod_uids`]; unused by other selectors).
    pub fn members(&self, procs: &[ProcEntry], pod_uids: &[String]) -> Vec<u32> {
        let mut out: Vec<u32> = match self {
            Selector::Pid(p) => procs
                .iter()
                .filter(|e| e.pid == *p)
                .map(|e| e.pid)
                .collect(),
            Selector::Children(root) => descendants(*root, procs),
            Selector::Cgroup(c) => procs
                .iter()
                .filter(|e| in_cgroup(&e.cgroup, c))
                .map(|e| e.pid)
                .collect(),
            Selector::Container(id) => procs
                .iter()
                .filter(|e| {
                    identity::parse_cgroup(&e.cgroup)
                        .container
                        .is_some_and(|c| c.starts_with(id.as_str()))
                })
                .map(|e| e.pid)
                .collect(),
            Selector::Pod(p) => {
                let uids: Vec<&str> = match p {
                    PodRef::Uid(u) => vec![u.as_str()],
                    PodRef::Name { .. } => pod_uids.iter().map(String::as_str).collect(),
                };
                procs
                    .iter()
                    .filter(|e| {
                        identity::parse_cgroup(&e.cgroup)
                            .pod_uid
                            .is_some_and(|u| uids.contains(&u.as_str()))
                    })
                    .map(|e| e.pid)
                    .collect()
            }
        };
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The members now, read from `/proc` (and the kubelet's pod directories for a pod by
    /// name).
    pub fn resolve(&self) -> Vec<u32> {
        let uids = match self {
            Selector::Pod(PodRef::Name { namespace, name }) => {
                pod_uids(Path::new(PODS_DIR), namespace, name)
            }
            _ => Vec::new(),
        };
        self.members(&scan(self.needs_cgroups()), &uids)
    }

    /// The error for a group with no process in it, saying where to look.
    pub fn empty_error(&self) -> Error {
        let hint = match self {
            Selector::Pid(p) | Selector::Children(p) => return Error::NoSuchProcess(*p),
            Selector::Cgroup(_) => {
                "check the path (relative to the hierarchy's root, e.g. /kubepods.slice/..., or \
                 under /sys/fs/cgroup) and that its cgroup.procs lists a process"
            }
            Selector::Container(_) => {
                "check the id (`crictl ps` or `docker ps` print it; a prefix of at least 4 hex \
                 digits is enough) and that the container runs on this node"
            }
            Selector::Pod(PodRef::Uid(_)) => {
                "check the UID (`kubectl get pod NAME -o jsonpath='{.metadata.uid}'`) and that \
                 the pod runs on this node"
            }
            Selector::Pod(PodRef::Name { .. }) => {
                "pod names are read from the kubelet's /var/log/pods/NAMESPACE_NAME_UID \
                 directories: check the name, that the pod runs on this node and that /var/log/pods \
                 is mounted (or pass the pod's UID)"
            }
        };
        Error::EmptyGroup {
            what: self.describe(),
            hint,
        }
    }
}

/// `root` and its descendants among `procs` (by parent pid).
fn descendants(root: u32, procs: &[ProcEntry]) -> Vec<u32> {
    if !procs.iter().any(|e| e.pid == root) {
        return Vec::new();
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|e| e.ppid == parent && e.pid != parent)
                .map(|e| e.pid),
        );
        i += 1;
    }
    out
}

/// Whether a process whose `/proc/PID/cgroup` reads `text` is in cgroup `c` or below it.
fn in_cgroup(text: &str, c: &Cgroup) -> bool {
    text.lines().any(|line| {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        if c.controllers.as_deref().is_some_and(|want| {
            want.split(',')
                .any(|w| !controllers.split(',').any(|h| h == w))
                || (want.is_empty() != controllers.is_empty())
        }) {
            return false;
        }
        let base = c.path.trim_end_matches('/');
        path == c.path
            || base.is_empty()
            || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
    })
}

/// Parses a `/proc/PID/stat` text's parent pid (field 4).
pub fn stat_ppid(text: &str) -> Option<u32> {
    let close = text.rfind(')')?;
    text.get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pids of `/proc` now (processes and kernel threads).
pub fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
}

/// Every process now (kernel threads left out), with its cgroup text when `cgroups`.
pub fn scan(cgroups: bool) -> Vec<ProcEntry> {
    let mut out = Vec::new();
    for pid in proc_pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Kernel threads are children of kthreadd (2), or pid 2 itself.
        let Some(ppid) = stat_ppid(&stat) else {
            continue;
        };
        if pid == 2 || ppid == 2 {
            continue;
        }
        let cgroup = if cgroups {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
        } else {
            String::new()
        };
        out.push(ProcEntry { pid, ppid, cgroup });
    }
    out
}

/// The UIDs of the pod `namespace/name` in the kubelet's `NAMESPACE_NAME_UID` directories
/// under `pods_dir` (more than one while a pod of that name is being replaced).
pub fn pod_uids(pods_dir: &Path, namespace: &str, name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(pods_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let mut parts = f.splitn(3, '_');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(ns), Some(n), Some(uid)) if ns == namespace && n == name => {
                    Some(uid.to_string())
                }
                _ => None,
            }
        })
        .collect();
    out.sort();
    out
}

/// `--pod`'s value: a UID (36 characters, dashes at 8, 13, 18, 23) or `NAMESPACE/NAME`.
pub fn parse_pod(s: &str) -> Result<PodRef, String> {
    let uid_shape = s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    if uid_shape {
        return Ok(PodRef::Uid(s.to_ascii_lowercase()));
    }
    let dns_label = |x: &str| {
        !x.is_empty()
            && x.len() <= 253
            && x.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    match s.split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_label(name) => Ok(PodRef::Name {
            namespace: ns.to_string(),
            name: name.to_string(),
        }),
        _ => Err(format!(
            "{s:?} is not a pod: pass its UID (e.g. 8d1e5a3c-2b4f-4c6d-9e7f-0a1b2c3d4e5f) or \
             NAMESPACE/NAME (e.g. shop/checkout-7f9c)"
        )),
    }
}

/// `--container`'s value: a container id or a prefix of one (at least 4 hex digits).
pub fn parse_container(s: &str) -> Result<String, String> {
    // Runtimes print ids with a scheme at times (containerd://, docker://, cri-o://).
    let id = s.rsplit("://").next().unwrap_or(s).to_ascii_lowercase();
    if id.len() >= 4 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(id)
    } else {
        Err(format!(
            "{s:?} is not a container id: pass the id `crictl ps` or `docker ps` prints (hex \
             digits; a prefix of at least 4 is enough)"
        ))
    }
}

/// `--cgroup`'s value: a path from a hierarchy's root (`/kubepods.slice/...`), or a directory
/// under a cgroup mount (`/sys/fs/cgroup/...`), which also says which hierarchy (`mountinfo`:
/// this process's `/proc/self/mountinfo`).
pub fn parse_cgroup_arg(s: &str, mountinfo: &str) -> Result<Cgroup, String> {
    if !s.starts_with('/') {
        return Err(format!(
            "{s:?} is not a cgroup path: pass it from the hierarchy's root, as /proc/PID/cgroup \
             shows it (e.g. /kubepods.slice/...), or as a directory under /sys/fs/cgroup"
        ));
    }
    // The longest cgroup mount point the path is under.
    let mut best: Option<(&str, &str, String)> = None;
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = pre.split_whitespace().collect();
        let post: Vec<&str> = post.split_whitespace().collect();
        let (Some(&root), Some(&mount), Some(&fstype)) =
            (fields.get(3), fields.get(4), post.first())
        else {
            continue;
        };
        let controllers = match fstype {
            "cgroup2" => String::new(),
            "cgroup" => {
                let opts = post.get(2).copied().unwrap_or("");
                let known = [
                    "cpu",
                    "cpuacct",
                    "cpuset",
                    "memory",
                    "devices",
                    "freezer",
                    "net_cls",
                    "net_prio",
                    "blkio",
                    "perf_event",
                    "hugetlb",
                    "pids",
                    "rdma",
                    "misc",
                ];
                let mut c: Vec<&str> = opts
                    .split(',')
                    .filter_map(|o| {
                        known
                            .contains(&o)
                            .then_some(o)
                            .or_else(|| o.strip_prefix("name=").map(|_| o))
                    })
                    .collect();
                c.sort_unstable();
                c.join(",")
            }
            _ => continue,
        };
        let under = s == mount || s.strip_prefix(mount).is_some_and(|r| r.starts_with('/'));
        if under && best.as_ref().is_none_or(|(m, _, _)| mount.len() > m.len()) {
            best = Some((mount, root, controllers));
        }
    }
    Ok(match best {
        Some((mount, root, controllers)) => {
            let rest = &s[mount.len()..];
            let root = root.trim_end_matches('/');
            Cgroup {
                path: if rest.is_empty() && root.is_empty() {
                    "/".to_string()
                } else {
                    format!("{root}{rest}")
                },
                controllers: Some(controllers),
            }
        }
        None => Cgroup {
            path: s.to_string(),
            controllers: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, cgroup: &str) -> ProcEntry {
        ProcEntry {
            pid,
            ppid,
            cgroup: cgroup.into(),
        }
    }

    const UID: &str = "8d1e5a3c-2b4f-4c6d-9e7f-0a1b2c3d4e5f";
    const ID: &str = "3f1c9a7b2e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    #[test]
    fn children_are_the_whole_subtree() {
        let procs = [
            p(1, 0, ""),
            p(10, 1, ""),
            p(11, 10, ""),
            p(12, 11, ""),
            p(13, 1, ""),
            p(14, 12, ""),
        ];
        assert_eq!(
            Selector::Children(10).members(&procs, &[]),
            vec![10, 11, 12, 14]
        );
        assert_eq!(Selector::Pid(11).members(&procs, &[]), vec![11]);
        assert!(Selector::Children(99).members(&procs, &[]).is_empty());
    }

    #[test]
    fn cgroups_match_the_path_and_below_in_the_right_hierarchy() {
        let a = "0::/kubepods.slice/pod-a.slice/cri-containerd-1.scope\n";
        let b = "12:pids:/kubepods.slice/pod-b.slice\n0::/user.slice\n";
        let c = "0::/kubepods.slice/pod-ab.slice\n";
        let procs = [p(1, 0, a), p(2, 0, b), p(3, 0, c)];
        let sel = |path: &str, ctl: Option<&str>| {
            Selector::Cgroup(Cgroup {
                path: path.into(),
                controllers: ctl.map(Into::into),
            })
            .members(&procs, &[])
        };
        assert_eq!(sel("/kubepods.slice/pod-a.slice", None), vec![1]);
        assert_eq!(sel("/kubepods.slice", None), vec![1, 2, 3]);
        assert_eq!(sel("/kubepods.slice", Some("")), vec![1, 3]);
        assert_eq!(sel("/kubepods.slice/pod-b.slice", Some("pids")), vec![2]);
        assert_eq!(
            sel("/kubepods.slice/pod-b.slice", Some("")),
            Vec::<u32>::new()
        );
        assert_eq!(sel("/kubepods.slice/pod-a", None), Vec::<u32>::new());
        assert_eq!(sel("/", Some("")), vec![1, 2, 3]);
    }

    #[test]
    fn containers_and_pods() {
        let uid_ = UID.replace('-', "_");
        let in_pod = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope\n"
        );
        let procs = [
            p(5, 1, &in_pod),
            p(6, 1, "0::/user.slice\n"),
            p(7, 5, &in_pod),
        ];
        assert_eq!(
            Selector::Container(ID[..12].into()).members(&procs, &[]),
            vec![5, 7]
        );
        assert_eq!(
            Selector::Container("ffff".into()).members(&procs, &[]),
            Vec::<u32>::new()
        );
        assert_eq!(
            Selector::Pod(PodRef::Uid(UID.into())).members(&procs, &[]),
            vec![5, 7]
        );
        let by_name = Selector::Pod(PodRef::Name {
            namespace: "shop".into(),
            name: "checkout".into(),
        });
        assert_eq!(by_name.members(&procs, &[UID.to_string()]), vec![5, 7]);
        assert!(by_name.members(&procs, &[]).is_empty());
    }

    #[test]
    fn pod_names_resolve_through_the_kubelet_directories() {
        let dir = std::env::temp_dir().join(format!("stallscope-podref-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(format!("shop_checkout_{UID}"))).unwrap();
        std::fs::create_dir_all(dir.join("shop_cart_00000000-0000-0000-0000-000000000000"))
            .unwrap();
        assert_eq!(pod_uids(&dir, "shop", "checkout"), vec![UID.to_string()]);
        assert!(pod_uids(&dir, "other", "checkout").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn arguments_parse_or_say_what_to_pass() {
        assert_eq!(parse_pod(UID), Ok(PodRef::Uid(UID.into())));
        assert_eq!(
            parse_pod("shop/checkout-7f9c"),
            Ok(PodRef::Name {
                namespace: "shop".into(),
                name: "checkout-7f9c".into()
            })
        );
        for bad in ["", "shop", "Shop/x", "a/b/c", "/x", "x/"] {
            assert!(parse_pod(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_container(&format!("containerd://{ID}")),
            Ok(ID.to_string())
        );
        assert_eq!(parse_container("3F1C9A"), Ok("3f1c9a".to_string()));
        for bad in ["abc", "xyz123", ""] {
            assert!(parse_container(bad).is_err(), "{bad:?}");
        }
        assert!(parse_cgroup_arg("kubepods.slice", "").is_err());
    }

    #[test]
    fn cgroup_directories_become_hierarchy_paths() {
        let mountinfo = "\
25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
";
        assert_eq!(
            parse_cgroup_arg("/sys/fs/cgroup/unified/kubepods.slice/x.scope", mountinfo),
            Ok(Cgroup {
                path: "/kubepods.slice/x.scope".into(),
                controllers: Some(String::new())
            })
        );
        assert_eq!(
            parse_cgroup_arg("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1", mountinfo),
            Ok(Cgroup {
                path: "/kubepods/pod1".into(),
                controllers: Some("cpu,cpuacct".into())
            })
        );
        assert_eq!(
            parse_cgroup_arg("/sys/fs/cgroup/pids", mountinfo).map(|c| c.path),
            Ok("/".into())
        );
        assert_eq!(
            parse_cgroup_arg("/kubepods.slice", mountinfo),
            Ok(Cgroup {
                path: "/kubepods.slice".into(),
                controllers: None
            })
        );
        assert_eq!(stat_ppid("42 (a b) c) S 7 42 42 0"), Some(7));
    }
}
