//! A real server under load: Debian's Redis with and without the agent, interleaved.

use super::*;

pub(super) const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// The tests `redis-benchmark` runs (`-t set,get`), as its CSV names them.
pub(super) const REDIS_TESTS: [&str; 2] = ["SET", "GET"];

/// Connections of `redis-benchmark` (`-c`).
pub(super) const REDIS_CLIENTS: u32 = 50;

/// Throughput (requests/s) per test of one `redis-benchmark` run.
pub(super) type Rps = BTreeMap<String, f64>;

pub(super) struct Redis {
    /// `redis-server --version`'s `v=`.
    pub(super) version: String,
    /// Requests per test (`-n`).
    pub(super) requests: u64,
    /// Per pair: the run without the agent and the one with it.
    pub(super) base: Vec<Rps>,
    pub(super) with: Vec<Rps>,
    /// The agent's CPU during each traced benchmark, as a share of one core.
    pub(super) agent_cpu: Vec<f64>,
    /// The agent's peak RSS (KiB) and the losses its summary counted, per traced run.
    pub(super) agent_maxrss_kib: Vec<f64>,
    pub(super) agent_losses: Vec<u64>,
}

impl Redis {
    /// Traced / baseline throughput of `test`, per pair.
    pub(super) fn ratios(&self, test: &str) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .filter_map(|(b, w)| Some(w.get(test)? / b.get(test)?))
            .collect()
    }

    pub(super) fn base_median(&self, test: &str) -> f64 {
        median(
            &self
                .base
                .iter()
                .filter_map(|b| b.get(test).copied())
                .collect::<Vec<_>>(),
        )
    }

    /// "SET x0.97 (0.95..0.99), GET ...": met when every test's median is at least 0.98.
    pub(super) fn budget(&self) -> Option<(String, bool)> {
        let mut parts = Vec::new();
        let mut ok = true;
        for t in REDIS_TESTS {
            let r = self.ratios(t);
            if r.is_empty() {
                return None;
            }
            let (lo, hi) = min_max(&r);
            ok &= median(&r) >= 0.98;
            parts.push(format!("{t} x{:.3} ({lo:.3}..{hi:.3})", median(&r)));
        }
        Some((
            format!(
                "{} (median of {} pairs; agent {:.1}% of one core)",
                parts.join(", "),
                self.base.len(),
                median(&self.agent_cpu) * 100.0
            ),
            ok,
        ))
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub(super) struct Reaped(pub(super) Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Both are no-ops on a child already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
pub(super) struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a child at the workloads' nice value (as `Workload::start` does).
pub(super) fn at_workload_nice(cmd: &mut Command) -> &mut Command {
    // SAFETY: setpriority is async-signal-safe; its threads inherit it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpriority(libc::PRIO_PROCESS, 0, WORKLOAD_NICE);
            Ok(())
        })
    }
}

/// `redis-server` in the foreground on a free loopback port, no persistence, two I/O threads
/// (which also read: without `io-threads-do-reads`, Redis 7.0 threads only the writes).
pub(super) struct RedisServer {
    pub(super) child: Reaped,
    pub(super) port: u16,
    pub(super) log: PathBuf,
}

impl RedisServer {
    pub(super) fn start(dir: &Path) -> Result<Self> {
        let mut last_err = None;
        // The free port is found by binding port 0 and closing it: someone may take it before
        // Redis binds it, so a few tries.
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free loopback port")?
                .port();
            let log = dir.join(format!("redis-{attempt}.log"));
            let out = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(REDIS_SERVER);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--io-threads", "2", "--io-threads-do-reads", "yes"])
                .args(["--daemonize", "no"])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            let mut server = Self {
                child: Reaped(spawn(at_workload_nice(&mut cmd))?),
                port,
                log,
            };
            match server.wait_pong(Duration::from_secs(15)) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    check_interrupted()?;
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.expect("tried"))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub(super) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Waits until `redis-cli -p PORT ping` answers PONG.
    pub(super) fn wait_pong(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            if let Some(status) = self.child.0.try_wait()? {
                bail!(
                    "redis-server exited ({status}) before it answered: {}",
                    self.log_tail()
                );
            }
            let pong =
                probe(Command::new("redis-cli").args(["-p", &self.port.to_string(), "ping"]));
            if pong.is_some_and(|p| p.trim() == "PONG") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer PONG after {timeout:?}: {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One `redis-benchmark -c 50 -t set,get -n N -q --csv` run against the server.
    pub(super) fn benchmark(&mut self, n: u64) -> Result<Rps> {
        let mut cmd = Command::new("redis-benchmark");
        cmd.args(["-p", &self.port.to_string()])
            .args(["-c", &REDIS_CLIENTS.to_string()])
            .args(["-t", &REDIS_TESTS.join(",").to_lowercase()])
            .args(["-n", &n.to_string(), "-q", "--csv"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = display(&cmd);
        let mut child = Reaped(spawn(at_workload_nice(&mut cmd))?);
        let out = line_reader(child.0.stdout.take().expect("piped"));
        let err = line_reader(child.0.stderr.take().expect("piped"));
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            check_interrupted()?;
            if let Some(status) = child.0.try_wait()? {
                break status;
            }
            if let Some(status) = self.child.0.try_wait()? {
                bail!(
                    "redis-server exited ({status}) during the benchmark: {}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!("`{shown}` still ran after 600 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The streams end with the process.
        let text: Vec<String> = out.iter().collect();
        let errors: Vec<String> = err.iter().collect();
        let rps = parse_redis_csv(&text.join("\n"));
        if !status.success() || REDIS_TESTS.iter().any(|t| !rps.contains_key(*t)) {
            bail!(
                "`{shown}` failed ({status}): {} {}",
                text.join(" | "),
                errors.join(" | ")
            );
        }
        Ok(rps)
    }
}

/// `"test","rps",...` rows of `redis-benchmark --csv` (the header's rps does not parse).
pub(super) fn parse_redis_csv(text: &str) -> Rps {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().trim_matches('"'));
            let test = f.next()?.to_string();
            let rps = f.next()?.parse::<f64>().ok()?;
            Some((test, rps))
        })
        .collect()
}

pub(super) fn measure(ctx: &Ctx) -> Result<Redis> {
    if !Path::new(REDIS_SERVER).is_file() || find_in_path("redis-benchmark").is_none() {
        bail!(
            "{REDIS_SERVER} or redis-benchmark is missing (Debian's redis-server and redis-tools): \
             run `cargo xtask setup`"
        );
    }
    let version = probe(Command::new(REDIS_SERVER).arg("--version"))
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v=").map(str::to_string))
        .unwrap_or_else(|| "?".into());
    let dir = TempDir(ctx.dir.join("redis"));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let mut server = RedisServer::start(&dir.0)?;
    // Sized from one warm-up run: its requests/s per test give the time per request.
    let secs = if ctx.quick { 1.0 } else { 2.5 };
    let warm_n = if ctx.quick { 20_000 } else { 50_000 };
    let warm = server.benchmark(warm_n)?;
    let per_request: f64 = REDIS_TESTS.iter().map(|t| 1.0 / warm[*t]).sum();
    let requests = (((secs / per_request) / 1000.0).round() as u64 * 1000).max(10_000);
    println!(
        "   redis {version}: warm-up {warm_n} requests per test: {} → {requests} requests per \
         test for about {secs} s per run",
        REDIS_TESTS
            .iter()
            .map(|t| format!("{t} {:.0}/s", warm[*t]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut r = Redis {
        version,
        requests,
        base: Vec::new(),
        with: Vec::new(),
        agent_cpu: Vec::new(),
        agent_maxrss_kib: Vec::new(),
        agent_losses: Vec::new(),
    };
    let agent_mode = mode("all");
    for i in 0..ctx.pairs {
        // Alternating which goes first, as `pairs` does.
        let mut base = None;
        let mut with = None;
        for traced in [i % 2 == 1, i % 2 == 0] {
            check_interrupted()?;
            if !traced {
                base = Some(server.benchmark(requests)?);
                continue;
            }
            let what = format!("redis-{}", i + 1);
            let (mut tracer, out) = Tracer::agent(ctx, agent_mode, server.pid(), &what)?;
            let out = TempDir(out);
            tracer.wait_ready(Duration::from_secs(120))?;
            let (cpu0, t0) = (cpu_ns(tracer.pid), Instant::now());
            let rps = server.benchmark(requests)?;
            let cpu = cpu_ns(tracer.pid).saturating_sub(cpu0) as f64 / 1e9;
            let share = cpu / t0.elapsed().as_secs_f64();
            tracer.interrupt();
            let (_, maxrss_kib, summary) = tracer.finish(Duration::from_secs(120))?;
            // Kept for a look afterwards: the last traced run's summary.
            let _ = std::fs::write(ctx.dir.join("redis-summary.txt"), &summary);
            r.agent_losses.push(losses(&summary_json(Some(&out.0))));
            drop(out);
            r.agent_cpu.push(share);
            r.agent_maxrss_kib.push(maxrss_kib as f64);
            with = Some(rps);
        }
        let (base, with) = (base.expect("ran"), with.expect("ran"));
        println!(
            "   redis: pair {}/{}: {}; agent {:.1}% of a core",
            i + 1,
            ctx.pairs,
            REDIS_TESTS
                .iter()
                .map(|t| format!(
                    "{t} {:.0} -> {:.0}/s (x{:.3})",
                    base[*t],
                    with[*t],
                    with[*t] / base[*t]
                ))
                .collect::<Vec<_>>()
                .join(", "),
            r.agent_cpu.last().copied().unwrap_or(0.0) * 100.0
        );
        r.base.push(base);
        r.with.push(with);
    }
    Ok(r)
}

impl Redis {
    pub(super) fn render(&self, s: &mut String) {
        let r = self;
        let _ = writeln!(s, "### Redis (a real server)\n");
        let _ = writeln!(
            s,
            "Debian's `redis-server` {} on a loopback port, no persistence (`--save '' \
             --appendonly no`), two I/O threads (`--io-threads 2 --io-threads-do-reads yes`: \
             without the second, Redis 7.0 threads only the writes), loaded by `redis-benchmark \
             -c {REDIS_CLIENTS} -t set,get -n {} -q --csv` (requests per test sized from a \
             warm-up run), one server for the whole part. {} interleaved pairs (alternating \
             which goes first) of a run without the agent and one with `agent attach --pid \
             <redis-server> --profile cpu,offcpu,block,mutex` at default rates, attached \
             before the benchmark starts and stopped with SIGINT after it. Server and client \
             run at nice {WORKLOAD_NICE}, as the workloads do. Throughput: redis-benchmark's \
             requests/s; the ratio is with the agent / without.\n",
            r.version,
            r.requests,
            r.base.len()
        );
        let _ = writeln!(
            s,
            "| test | throughput with the agent / without (median) | range | baseline (median) |\n|---|---|---|---|"
        );
        for t in REDIS_TESTS {
            let v = r.ratios(t);
            let (lo, hi) = min_max(&v);
            let _ = writeln!(
                s,
                "| {t} | **x{:.3}** | x{lo:.3} .. x{hi:.3} | {:.0} requests/s |",
                median(&v),
                r.base_median(t)
            );
        }
        let _ = writeln!(
            s,
            "\nThe agent during the traced benchmarks: {:.1}% of one core (median; all its \
             threads, `/proc/PID/task/*/schedstat`), peak RSS {:.0} MiB, losses counted in its \
             summary: {}.\n",
            median(&r.agent_cpu) * 100.0,
            median(&r.agent_maxrss_kib) / 1024.0,
            r.agent_losses
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
