//! The whole node: `agent serve --all` over 500 processes in 50 containers (cgroups laid out as
//! the kubelet's systemd driver and containerd make them, the kubelet's pod directories), at the
//! default sampling interval: the agent's CPU and memory, `/metrics` latency and size; then
//! profile windows: one 10 s request against eight at once for eight processes (one probe
//! attachment serves them all), the agent's CPU for each and how long the requests took.

use super::*;

pub(super) struct Node {
    pub(super) processes: usize,
    pub(super) containers: usize,
    pub(super) tracked_secs: f64,
    /// Agent CPU while idle (no profile), share of one CPU.
    pub(super) idle_cpu: f64,
    pub(super) rss_kib: u64,
    pub(super) hwm_kib: u64,
    pub(super) scrape_ms: Vec<f64>,
    pub(super) scrape_bytes: usize,
    pub(super) series: usize,
    /// (requests at once, agent CPU seconds over the window, slowest request's wall time s).
    pub(super) windows: Vec<(usize, f64, f64)>,
}

const CONTAINERS: usize = 50;
const PER_CONTAINER: usize = 10;
const NAMESPACE: &str = "stallscope-bench";

/// The cgroups, pod directories and processes of the fake node; undone on drop.
struct Layout {
    mount: PathBuf,
    dirs: Vec<PathBuf>,
    pod_logs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Layout {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = std::fs::write(self.mount.join("cgroup.procs"), c.id().to_string());
            let _ = c.kill();
            let _ = c.wait();
        }
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for p in &self.pod_logs {
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

/// 50 pods of one container each; in each, 9 sleeping processes and one `cpu_split` (a
/// process that runs, so the window requests have CPU to record).
fn layout(busy: &Path) -> Result<(Layout, Vec<u32>)> {
    let mount = cgroup2_mount().context("no cgroup2 mount")?;
    let mut l = Layout {
        mount: mount.clone(),
        dirs: Vec::new(),
        pod_logs: Vec::new(),
        children: Vec::new(),
    };
    let slice = mount.join("kubepods.slice/kubepods-besteffort.slice");
    for d in [mount.join("kubepods.slice"), slice.clone()] {
        if !d.exists() {
            std::fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            l.dirs.push(d);
        }
    }
    let tag = format!("{:08x}", std::process::id());
    let mut busy_pids = Vec::new();
    for i in 0..CONTAINERS {
        let uid = format!("{tag}-{i:04x}-4000-8000-{i:012x}");
        let id = format!("{tag}{i:08x}{}", "cd".repeat(24));
        let pod_dir = slice.join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ));
        let scope = pod_dir.join(format!("cri-containerd-{id}.scope"));
        for d in [&pod_dir, &scope] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
            l.dirs.push(d.clone());
        }
        let log = Path::new("/var/log/pods").join(format!("{NAMESPACE}_svc-{i}_{uid}"));
        std::fs::create_dir_all(&log)?;
        l.pod_logs.push(log);
        for k in 0..PER_CONTAINER {
            let mut cmd = if k == 0 {
                Command::new(busy)
            } else {
                let mut c = Command::new("sleep");
                c.arg("3600");
                c
            };
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = spawn(&mut cmd)?;
            std::fs::write(scope.join("cgroup.procs"), child.id().to_string())
                .context("moving a process into its container")?;
            if k == 0 {
                busy_pids.push(child.id());
            }
            l.children.push(child);
        }
    }
    Ok((l, busy_pids))
}

/// GET `path` from `addr`; the body and how long the whole answer took.
fn get(addr: &str, path: &str, timeout: Duration) -> Result<(Vec<u8>, f64)> {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let elapsed = t.elapsed().as_secs_f64();
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default().to_string()
                + " "
                + &String::from_utf8_lossy(&raw[head_end..])
                    .chars()
                    .take(300)
                    .collect::<String>()
        );
    }
    Ok((raw[head_end + 4..].to_vec(), elapsed))
}

pub(super) fn measure(ctx: &Ctx) -> Result<Node> {
    let busy = compile_workload("cpu_split")?;
    let (layout, busy_pids) = layout(&busy)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(&ctx.agent);
    cmd.args(["serve", "--all", "--max-targets", "1024", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut agent = spawn(&mut cmd)?;
    let apid = agent.id();
    let result = (|| -> Result<Node> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&addr, "/readyz", Duration::from_secs(5)).is_err() {
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!("agent serve was not ready after 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Settled: every process found and sampled a few times.
        std::thread::sleep(Duration::from_secs(5));
        let secs = if ctx.quick { 10.0 } else { 30.0 };
        let (c0, t0) = (cpu_ns(apid), Instant::now());
        let mut scrape_ms = Vec::new();
        let mut body = Vec::new();
        while t0.elapsed().as_secs_f64() < secs {
            check_interrupted()?;
            let (b, took) = get(&addr, "/metrics", Duration::from_secs(10))?;
            scrape_ms.push(took * 1e3);
            body = b;
            std::thread::sleep(Duration::from_secs(1));
        }
        let tracked_secs = t0.elapsed().as_secs_f64();
        let idle_cpu = (cpu_ns(apid) - c0) as f64 / 1e9 / tracked_secs;
        let text = String::from_utf8_lossy(&body).into_owned();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let rss_kib = status_kib(apid, "VmRSS:");
        let mut windows = Vec::new();
        for n in [1usize, 8] {
            check_interrupted()?;
            let c0 = cpu_ns(apid);
            let handles: Vec<_> = busy_pids
                .iter()
                .take(n)
                .map(|pid| {
                    let (addr, path) = (
                        addr.clone(),
                        format!("/debug/pprof/profile?pid={pid}&seconds=10"),
                    );
                    std::thread::spawn(move || get(&addr, &path, Duration::from_secs(60)))
                })
                .collect();
            let mut slowest: f64 = 0.0;
            for h in handles {
                let (_, took) = h.join().map_err(|_| anyhow::anyhow!("request thread"))??;
                slowest = slowest.max(took);
            }
            let cpu = (cpu_ns(apid) - c0) as f64 / 1e9;
            println!(
                "   {n} profile request(s) at once: agent {cpu:.2} CPU s, slowest {slowest:.1} s"
            );
            windows.push((n, cpu, slowest));
        }
        Ok(Node {
            processes: CONTAINERS * PER_CONTAINER,
            containers: CONTAINERS,
            tracked_secs,
            idle_cpu,
            rss_kib,
            hwm_kib: status_kib(apid, "VmHWM:"),
            scrape_bytes: body.len(),
            scrape_ms,
            series,
            windows,
        })
    })();
    let _ = agent.kill();
    let _ = agent.wait();
    drop(layout);
    let n = result?;
    println!(
        "   {} processes: agent {:.1}% of a CPU, RSS {} MiB, /metrics median {:.1} ms, {} series",
        n.processes,
        n.idle_cpu * 100.0,
        n.rss_kib / 1024,
        median(&n.scrape_ms),
        n.series
    );
    Ok(n)
}

impl Node {
    pub(super) fn render(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### The whole node (`agent serve --all`)\n\n\
             {} processes in {} containers (cgroups as the kubelet's systemd driver and \
             containerd lay them out, the kubelet's pod directories; 9 sleeping processes and one \
             `cpu_split` per container), `agent serve --all --max-targets 1024` at the default \
             interval (1 s) and `--max-processes-per-container` (10), over {:.0} s with one \
             `/metrics` scrape a second.\n\n\
             | agent CPU | RSS (peak) | `/metrics` median (range) | size | samples |\n\
             |---|---|---|---|---|\n\
             | {:.1}% of a CPU | {} MiB ({} MiB) | {:.1} ms ({:.1} .. {:.1}) | {} KiB | {} |\n",
            self.processes,
            self.containers,
            self.tracked_secs,
            self.idle_cpu * 100.0,
            self.rss_kib / 1024,
            self.hwm_kib / 1024,
            median(&self.scrape_ms),
            min_max(&self.scrape_ms).0,
            min_max(&self.scrape_ms).1,
            self.scrape_bytes / 1024,
            self.series
        );
        let _ = writeln!(
            s,
            "Profile windows (`/debug/pprof/profile?pid=N&seconds=10`, each for another \
             container's `cpu_split`), one request alone, then eight at once on the one probe \
             attachment:\n\n| requests | agent CPU over the window | slowest request |\n|---|---|---|"
        );
        for (n, cpu, slowest) in &self.windows {
            let _ = writeln!(s, "| {n} | {cpu:.2} s | {slowest:.1} s |");
        }
        let _ = writeln!(s);
    }
}
