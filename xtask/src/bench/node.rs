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

/// GET `path` from `addr` (200 or an error): the body and how long the whole answer took.
fn get(addr: &std::net::SocketAddr, path: &str, timeout: Duration) -> Result<(Vec<u8>, f64)> {
    let r = stallscope_testkit::http::get_ok(*addr, path, timeout)?;
    Ok((r.bytes, r.took.as_secs_f64()))
}

pub(super) fn measure(ctx: &Ctx) -> Result<Node> {
    let busy = compile_workload("cpu_split")?;
    // 50 pods of one container each; in each, one `cpu_split` (a process that runs, so the
    // window requests have CPU to record) and 9 sleeping processes.
    let layout =
        stallscope_testkit::node::FakeNode::build(NAMESPACE, CONTAINERS, PER_CONTAINER, |_, k| {
            if k == 0 {
                Command::new(&busy)
            } else {
                let mut c = Command::new("sleep");
                c.arg("3600");
                c
            }
        })
        .context("laying out the fake node")?;
    let busy_pids: Vec<u32> = layout.pods.iter().map(|p| p.pids[0]).collect();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut cmd = Command::new(&ctx.agent);
    cmd.args(["serve", "--all", "--max-targets", "1024", "--listen"])
        .arg(addr.to_string())
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
                    let path = format!("/debug/pprof/profile?pid={pid}&seconds=10");
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
