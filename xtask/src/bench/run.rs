//! The measuring kit every part uses: workloads started in their own process group with a
//! parent-death signal, tracers (the agent, bpftrace) with their CPU, memory and BPF time read
//! from outside, and timed interleaved pairs of a baseline and a traced run.

use super::*;

pub(super) fn check_interrupted() -> Result<()> {
    if SIGNAL.load(Ordering::SeqCst) != 0 {
        bail!("interrupted");
    }
    Ok(())
}

/// Spawns `cmd` in its own process group, SIGKILLed if xtask dies.
pub(super) fn spawn(cmd: &mut Command) -> Result<Child> {
    stallscope_testkit::spawn::detached(cmd)
        .spawn()
        .with_context(|| format!("starting `{}`", display(cmd)))
}

pub(super) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Reads lines of a child's stream on a thread, sending each one.
pub(super) fn line_reader(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line matching `want`, checking for Ctrl-C.
pub(super) fn wait_line(
    rx: &Receiver<String>,
    timeout: Duration,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        check_interrupted()?;
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) if want(&line) => return Ok(line),
            Ok(_) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("{what}: the stream ended first"),
            Err(RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                bail!("{what}: nothing after {timeout:?}")
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// `wait4` on a child: `None` while it runs (with `hang` false), else its wait status, its
/// user+system CPU seconds and its peak RSS (KiB).
pub(super) fn wait_rusage(pid: u32, hang: bool) -> Result<Option<(i32, f64, u64)>> {
    let mut status = 0;
    // SAFETY: rusage is plain data written by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if hang { 0 } else { libc::WNOHANG };
    // SAFETY: waiting for our own child.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, flags, &mut ru) };
    if r < 0 {
        bail!("waiting for {pid}: {}", std::io::Error::last_os_error());
    }
    if r == 0 {
        return Ok(None);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Some((
        status,
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as u64,
    )))
}

/// A workload run's own figures.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Run {
    /// Elapsed time of its work, as it measured it, s.
    pub(super) wall: f64,
    /// user+system CPU of the whole process (its threads, including BPF programs run in their
    /// context), s. Less sensitive than `wall` to other load on the machine.
    pub(super) cpu: f64,
}

/// A benchmark workload: started, waiting for "go" on stdin, timed by itself.
#[derive(Clone)]
pub(super) struct Spec {
    pub(super) bin: PathBuf,
    pub(super) args: Vec<String>,
}

impl Spec {
    pub(super) fn new(bin: &Path, args: &[u64]) -> Self {
        Self {
            bin: bin.to_path_buf(),
            args: args.iter().map(u64::to_string).collect(),
        }
    }

    /// `bench_pingpong-21136-1-0`: names the agent's output directory.
    pub(super) fn name(&self) -> String {
        let bin = self.bin.file_name().unwrap_or_default().to_string_lossy();
        std::iter::once(bin.into_owned())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// A running workload; killed and reaped on drop unless it finished.
pub(super) struct Workload {
    pub(super) child: Child,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) lines: Receiver<String>,
    pub(super) reaped: bool,
}

impl Workload {
    pub(super) fn start(spec: &Spec) -> Result<Self> {
        let mut cmd = Command::new(&spec.bin);
        cmd.args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // A higher scheduling weight (nice -10, baseline and traced runs alike), so that other
        // processes on a small shared machine disturb the timings less, without starving them.
        // SAFETY: setpriority is async-signal-safe; its threads inherit it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpriority(libc::PRIO_PROCESS, 0, WORKLOAD_NICE);
                Ok(())
            });
        }
        let mut child = spawn(&mut cmd)?;
        let stdin = child.stdin.take();
        let lines = line_reader(child.stdout.take().expect("piped"));
        let w = Self {
            child,
            stdin,
            lines,
            reaped: false,
        };
        wait_line(
            &w.lines,
            Duration::from_secs(30),
            "waiting for the workload's \"ready\"",
            |l| l == "ready",
        )?;
        Ok(w)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("workload started twice")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the workload's own timing and reaps it.
    pub(super) fn finish(&mut self) -> Result<Run> {
        let line = wait_line(
            &self.lines,
            Duration::from_secs(300),
            "waiting for the workload to finish",
            |l| l.starts_with("elapsed_ns "),
        )?;
        let ns: f64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad workload output {line:?}"))?;
        let (_, cpu, _) = wait_rusage(self.pid(), true)?.context("wait4 returned early")?;
        self.reaped = true;
        Ok(Run {
            wall: ns / 1e9,
            cpu,
        })
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a traced run (agent or bpftrace) cost, seen from outside.
#[derive(Clone, Debug, Default)]
pub(super) struct Cost {
    /// The workload's own run time, s.
    pub(super) window_s: f64,
    /// CPU time of the tracer's threads during the window, ns.
    pub(super) window_cpu_ns: u64,
    /// Resident memory of the tracer at the end of the window, KiB.
    pub(super) rss_kib: u64,
    /// user + system CPU of the tracer's whole life (load, capture, symbolize, write), s.
    pub(super) total_cpu_s: f64,
    /// Peak resident memory of the tracer's whole life, KiB.
    pub(super) maxrss_kib: u64,
    /// Spawn to ready (agent: "attached"; bpftrace: "Attaching"), s.
    pub(super) ready_s: f64,
    /// Per program name: (run time ns, runs) during the window. Empty unless bpf_stats was on.
    pub(super) progs: BTreeMap<String, (u64, u64)>,
    /// The agent's output directory.
    pub(super) out_dir: Option<PathBuf>,
    /// The run's summary.json (`Null` without one).
    pub(super) summary: serde_json::Value,
}

impl Cost {
    pub(super) fn cpu_share(&self) -> f64 {
        self.window_cpu_ns as f64 / 1e9 / self.window_s
    }

    pub(super) fn prog_runs(&self) -> u64 {
        self.progs.values().map(|p| p.1).sum()
    }

    pub(super) fn prog_ns(&self) -> u64 {
        self.progs.values().map(|p| p.0).sum()
    }

    /// Table rows `| {prefix}program | runs/s | ns/run |` for the programs that ran.
    pub(super) fn prog_rows(&self, prefix: &str, s: &mut String) {
        for (name, (ns, cnt)) in self.progs.iter().filter(|(_, (_, c))| *c > 0) {
            let _ = writeln!(
                s,
                "| {prefix}{name} | {:.0} | {:.0} |",
                *cnt as f64 / self.window_s,
                *ns as f64 / *cnt as f64
            );
        }
    }
}

/// A tracer process: the agent or bpftrace.
pub(super) struct Tracer {
    pub(super) child: Child,
    pub(super) pid: u32,
    pub(super) started: Instant,
    pub(super) ready: Receiver<()>,
    pub(super) stdout: Arc<Mutex<String>>,
    pub(super) stderr: Arc<Mutex<String>>,
    pub(super) readers: Vec<JoinHandle<()>>,
    pub(super) reaped: bool,
    /// When it was last asked to stop (SIGINT).
    pub(super) interrupted: Option<Instant>,
}

/// Keeps at most this much of a tracer's output.
pub(super) const OUTPUT_CAP: usize = 4 << 20;

impl Tracer {
    /// Starts `cmd`; it is ready when a line of stdout (or stderr) contains `ready_on`.
    pub(super) fn start(
        cmd: &mut Command,
        ready_on: &'static str,
        on_stderr: bool,
    ) -> Result<Self> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = spawn(cmd)?;
        let pid = child.id();
        let (tx, ready) = mpsc::channel();
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for (stream, buf, watch) in [
            (
                Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
                stdout.clone(),
                !on_stderr,
            ),
            (
                Box::new(child.stderr.take().expect("piped")),
                stderr.clone(),
                on_stderr,
            ),
        ] {
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if watch && line.contains(ready_on) {
                        let _ = tx.send(());
                    }
                    let mut b = buf.lock().expect("not poisoned");
                    if b.len() < OUTPUT_CAP {
                        b.push_str(&line);
                        b.push('\n');
                    }
                }
            }));
        }
        Ok(Self {
            child,
            pid,
            started,
            ready,
            stdout,
            stderr,
            readers,
            reaped: false,
            interrupted: None,
        })
    }

    /// `agent attach` in `mode`, writing to target/bench/out/<mode>-<what>.
    pub(super) fn agent(ctx: &Ctx, mode: &Mode, pid: u32, what: &str) -> Result<(Self, PathBuf)> {
        let out = ctx.dir.join("out").join(format!("{}-{what}", mode.key));
        let mut cmd = Command::new(&ctx.agent);
        cmd.args([
            "-v",
            "attach",
            "--pid",
            &pid.to_string(),
            "--duration",
            "600s",
        ])
        .args(mode.args)
        .arg("-o")
        .arg(&out);
        if mode.serve {
            let mut cmd = Command::new(&ctx.agent);
            cmd.args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--pid",
                &pid.to_string(),
            ]);
            // It verifies its programs after it starts serving, then says "profiles ready".
            return Ok((Self::start(&mut cmd, "profiles ready", true)?, out));
        }
        Ok((Self::start(&mut cmd, "attached to", true)?, out))
    }

    /// bpftrace running `script` (its `$1` is `pid`).
    pub(super) fn bpftrace(ctx: &Ctx, script: &BpftraceScript, pid: u32) -> Result<Self> {
        let path = ctx.dir.join(format!("{}.bt", script.name));
        std::fs::write(&path, script.text)?;
        // bpftrace 0.17 attaches tracepoints through tracefs, which is not mounted on these
        // machines: mount it in a private mount namespace, seen by bpftrace alone.
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "sh", "-c"])
            .arg(
                "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing; \
                 exec bpftrace \"$0\" \"$1\"",
            )
            .arg(&path)
            .arg(pid.to_string());
        Self::start(&mut cmd, "Attaching", false)
    }

    pub(super) fn wait_ready(&self, timeout: Duration) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            match self.ready.recv_timeout(Duration::from_millis(20)) {
                Ok(()) => return Ok(self.started.elapsed().as_secs_f64()),
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child_status() {
                        bail!(
                            "the tracer exited ({status}) before it was ready: {}",
                            self.stderr_tail()
                        );
                    }
                    if Instant::now() >= deadline {
                        bail!(
                            "the tracer was not ready after {timeout:?}: {}",
                            self.stderr_tail()
                        );
                    }
                }
            }
        }
    }

    pub(super) fn child_status(&self) -> Result<Option<i32>> {
        let mut status = 0;
        // SAFETY: WNOWAIT leaves the child waitable; status is a local.
        let r = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            if r == 0 && info.si_pid() != 0 {
                status = info.si_status();
                1
            } else {
                r
            }
        };
        Ok((r == 1).then_some(status))
    }

    pub(super) fn stderr_tail(&self) -> String {
        let e = self.stderr.lock().expect("not poisoned");
        let lines: Vec<&str> = e.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    pub(super) fn interrupt(&mut self) {
        signal(self.pid, libc::SIGINT);
        self.interrupted = Some(Instant::now());
    }

    /// Waits for the tracer to exit (SIGINT after `timeout`, SIGKILL 30 s later). Returns its
    /// whole-life CPU seconds and peak RSS (KiB), and its stdout.
    pub(super) fn finish(mut self, timeout: Duration) -> Result<(f64, u64, String)> {
        let deadline = Instant::now() + timeout;
        let mut escalated = 0;
        let (status, cpu, maxrss) = loop {
            if let Some(r) = wait_rusage(self.pid, false)? {
                self.reaped = true;
                break r;
            }
            if Instant::now() > deadline {
                match escalated {
                    0 => signal(self.pid, libc::SIGINT),
                    1 => signal(self.pid, libc::SIGKILL),
                    _ => {}
                }
                escalated += 1;
                std::thread::sleep(Duration::from_secs(if escalated == 1 { 30 } else { 1 }));
            } else if self
                .interrupted
                .is_some_and(|t| t.elapsed() > Duration::from_secs(10))
            {
                // Told to stop 10 s ago and still running: say it again.
                self.interrupt();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = std::mem::take(&mut *self.stdout.lock().expect("not poisoned"));
        // Told to stop before it installed its SIGINT handler, it dies of the signal: fine.
        let ok = (libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
            || (self.interrupted.is_some()
                && libc::WIFSIGNALED(status)
                && libc::WTERMSIG(status) == libc::SIGINT);
        if !ok || escalated > 0 {
            bail!(
                "the tracer failed (wait status {status:#x}{}): {}",
                if escalated > 0 {
                    ", had to be signalled"
                } else {
                    ""
                },
                self.stderr_tail()
            );
        }
        Ok((cpu, maxrss, out))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `pid` holds an fd whose link reads `link`.
pub(super) fn wait_for_fd(pid: u32, link: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        check_interrupted()?;
        let found = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == link));
        if found {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("{pid} has no {link} fd after {timeout:?}")
}

/// CPU time of every thread of `pid` so far, ns (`/proc/PID/task/*/schedstat`).
pub(super) fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub(super) fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// One BPF program held by a process, from the fdinfo of its fd.
#[derive(Clone, Copy, Default, Debug)]
pub(super) struct ProgStat {
    pub(super) run_time_ns: u64,
    pub(super) run_cnt: u64,
    pub(super) verified_insns: u64,
}

/// The BPF programs `pid` holds, by program id.
pub(super) fn prog_stats(pid: u32) -> BTreeMap<u32, ProgStat> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return out;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let is_prog =
            std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
        if let Some((id, st)) =
            parse_prog_fdinfo(&std::fs::read_to_string(info).unwrap_or_default())
        {
            out.insert(id, st);
        }
    }
    out
}

pub(super) fn parse_prog_fdinfo(text: &str) -> Option<(u32, ProgStat)> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((
        field("prog_id")? as u32,
        ProgStat {
            run_time_ns: field("run_time_ns").unwrap_or(0),
            run_cnt: field("run_cnt").unwrap_or(0),
            verified_insns: field("verified_insns").unwrap_or(0),
        },
    ))
}

/// Program names by id (`bpftool prog show`; the kernel keeps the first 15 characters).
pub(super) fn prog_names() -> HashMap<u32, String> {
    let text = probe(Command::new("bpftool").args(["prog", "show"])).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let id = id.trim().parse().ok()?;
            let mut words = rest.split_whitespace();
            words.find(|w| *w == "name")?;
            Some((id, words.next()?.to_string()))
        })
        .collect()
}

pub(super) struct Snapshot {
    pub(super) at: Instant,
    pub(super) cpu_ns: u64,
    pub(super) progs: BTreeMap<u32, ProgStat>,
}

pub(super) fn snapshot(pid: u32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        cpu_ns: cpu_ns(pid),
        progs: prog_stats(pid),
    }
}

/// What runs alongside the timed workload.
pub(super) enum Tool<'a> {
    None,
    /// The agent attached to the workload.
    Agent(&'a Mode),
    /// The agent attached to an idle process; the workload is not its target.
    AgentElsewhere(&'a Mode),
    Bpftrace(&'a BpftraceScript),
}

/// One timed run of `spec` with `tool` (stats: bpf_stats on for the window). Returns the
/// workload's own time and, with a tool, what the tool cost.
pub(super) fn timed(
    ctx: &Ctx,
    spec: &Spec,
    tool: &Tool,
    stats: bool,
) -> Result<(Run, Option<Cost>)> {
    check_interrupted()?;
    let idle = match tool {
        Tool::AgentElsewhere(_) => Some(Workload::start(&ctx.pingpong(1, 0))?),
        _ => None,
    };
    let mut w = Workload::start(spec)?;
    let target = idle.as_ref().map_or(w.pid(), Workload::pid);
    let (tracer, out_dir) = match tool {
        Tool::None => (None, None),
        Tool::Agent(m) | Tool::AgentElsewhere(m) => {
            let (t, out) = Tracer::agent(ctx, m, target, &spec.name())?;
            (Some(t), Some(out))
        }
        Tool::Bpftrace(script) => (Some(Tracer::bpftrace(ctx, script, target)?), None),
    };
    let Some(mut tracer) = tracer else {
        w.go()?;
        return Ok((w.finish()?, None));
    };
    let ready_s = tracer.wait_ready(Duration::from_secs(120))?;
    if matches!(tool, Tool::Bpftrace(_)) {
        // bpftrace says "Attaching" before it attaches (and a SIGINT that early can be lost):
        // wait for its tracepoint's perf event fd.
        wait_for_fd(
            tracer.pid,
            "anon_inode:[perf_event]",
            Duration::from_secs(30),
        )?;
    }
    if stats {
        ctx.stats.set(true)?;
    }
    let before = snapshot(tracer.pid);
    w.go()?;
    let secs = w.finish();
    let after = snapshot(tracer.pid);
    let rss_kib = status_kib(tracer.pid, "VmRSS:");
    let names = if stats { prog_names() } else { HashMap::new() };
    if stats {
        ctx.stats.set(false)?;
    }
    let secs = secs?;
    if !matches!(tool, Tool::Agent(m) if !m.serve) {
        // `agent attach` ends by itself when its target exits; the others are told to stop.
        tracer.interrupt();
    }
    let (total_cpu_s, maxrss_kib, stdout) = tracer.finish(Duration::from_secs(120))?;
    drop(idle);
    // Kept for a look afterwards: the last run's summary, or bpftrace's maps.
    let keep = match &out_dir {
        Some(dir) => dir.join("summary.txt"),
        None => ctx.dir.join("bpftrace-output.txt"),
    };
    let _ = std::fs::write(keep, &stdout);
    let mut progs = BTreeMap::new();
    if stats {
        for (id, a) in &after.progs {
            let b = before.progs.get(id).copied().unwrap_or_default();
            let name = names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("prog{id}"));
            let e = progs.entry(name).or_insert((0, 0));
            e.0 += a.run_time_ns - b.run_time_ns;
            e.1 += a.run_cnt - b.run_cnt;
        }
    }
    let cost = Cost {
        window_s: after.at.duration_since(before.at).as_secs_f64(),
        window_cpu_ns: after.cpu_ns.saturating_sub(before.cpu_ns),
        rss_kib,
        total_cpu_s,
        maxrss_kib,
        ready_s,
        progs,
        summary: summary_json(out_dir.as_deref()),
        out_dir,
    };
    Ok((secs, Some(cost)))
}

/// Interleaved pairs of a baseline and a traced run, in alternating order (baseline first in
/// odd pairs, traced first in even ones, so a drift of the machine's load cancels out); prints
/// each pair as it goes.
pub(super) fn pairs(ctx: &Ctx, what: &str, spec: &Spec, tool: &Tool) -> Result<Pairs> {
    let mut p = Pairs::default();
    for i in 0..ctx.pairs {
        let (base, with, cost) = if i % 2 == 0 {
            let (base, _) = timed(ctx, spec, &Tool::None, false)?;
            let (with, cost) = timed(ctx, spec, tool, false)?;
            (base, with, cost)
        } else {
            let (with, cost) = timed(ctx, spec, tool, false)?;
            let (base, _) = timed(ctx, spec, &Tool::None, false)?;
            (base, with, cost)
        };
        println!(
            "   {what}: pair {}/{}: {:.3} s -> {:.3} s ({:+.1}%), CPU {:.3} s -> {:.3} s ({:+.1}%)",
            i + 1,
            ctx.pairs,
            base.wall,
            with.wall,
            (with.wall / base.wall - 1.0) * 100.0,
            base.cpu,
            with.cpu,
            (with.cpu / base.cpu - 1.0) * 100.0
        );
        p.base.push(base);
        p.with.push(with);
        p.costs.extend(cost);
    }
    Ok(p)
}

#[derive(Default)]
pub(super) struct Pairs {
    pub(super) base: Vec<Run>,
    pub(super) with: Vec<Run>,
    pub(super) costs: Vec<Cost>,
}

impl Pairs {
    pub(super) fn ratios(&self, f: fn(&Run) -> f64) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .map(|(b, w)| f(w) / f(b) - 1.0)
            .collect()
    }

    /// Median wall-time slowdown, as a fraction.
    pub(super) fn slowdown(&self) -> f64 {
        median(&self.ratios(|r| r.wall))
    }

    /// Median change of the workload's CPU time, as a fraction.
    pub(super) fn cpu_slowdown(&self) -> f64 {
        median(&self.ratios(|r| r.cpu))
    }

    /// Median wall-time slowdown (range; baseline median), for a table cell.
    pub(super) fn cell(&self) -> String {
        self.cell_of(|r| r.wall)
    }

    /// The same for the workload's CPU time.
    pub(super) fn cpu_cell(&self) -> String {
        self.cell_of(|r| r.cpu)
    }

    pub(super) fn cell_of(&self, f: fn(&Run) -> f64) -> String {
        let r = self.ratios(f);
        if r.is_empty() {
            return "n/a".into();
        }
        let (lo, hi) = min_max(&r);
        format!(
            "**{:+.1}%** ({:+.1} .. {:+.1}; {:.2} s)",
            median(&r) * 100.0,
            lo * 100.0,
            hi * 100.0,
            median(&self.base.iter().map(f).collect::<Vec<_>>())
        )
    }

    pub(super) fn median_cost(&self, f: impl Fn(&Cost) -> f64) -> f64 {
        median(&self.costs.iter().map(f).collect::<Vec<_>>())
    }
}
