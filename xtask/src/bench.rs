//! `cargo xtask bench`: what the agent costs, measured in one run and written to BENCHMARKS.md.
//!
//! Every slowdown is a comparison made in the same run: a workload timed without a tracer and
//! with it, in interleaved pairs (baseline, traced, baseline, traced, ...), median of the pairs'
//! ratios. BPF time per event comes from the kernel's own statistics (`bpf_stats_enabled`, then
//! `run_time_ns` / `run_cnt` in the fdinfo of each program fd), switched on only for the
//! measurement windows that need it (it costs a little per event itself) and restored at the
//! end. Nothing here asserts a time: figures are written down and compared with the budgets of
//! issues 8 and 13.
//!
//! Everything started here runs in its own process group with SIGKILL as its parent-death
//! signal, is killed and reaped when no longer needed, and a Ctrl-C stops the run cleanly.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::util::{
    SIGNAL, cargo, display, find_in_path, install_signal_handlers, is_root, probe, run, target_dir,
    workspace_root,
};

/// `cargo xtask bench` options.
#[derive(Args, Clone)]
pub struct BenchArgs {
    /// A short run (about 3 minutes): 3 pairs per figure, shorter workloads. Noisier figures.
    #[arg(long)]
    quick: bool,
    /// Interleaved (baseline, traced) pairs per slowdown figure [default: 5, 3 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50))]
    pairs: Option<u32>,
    /// Skip setup and build: use target/release/agent and its bench example as they are.
    #[arg(long)]
    no_build: bool,
    /// Run only these parts (comma list). The figures then go to target/bench/partial.md and
    /// BENCHMARKS.md is left alone.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Slowdown modes to measure (comma list of cpu, offcpu, offcpu_block, offcpu_block_r1,
    /// mutex, all, all_r1, serve_idle) [default: all of them]. With a subset, BENCHMARKS.md is
    /// left alone.
    #[arg(long, value_delimiter = ',', value_parser = parse_mode)]
    modes: Vec<&'static Mode>,
    /// Where the figures go [default: BENCHMARKS.md at the workspace root]. Only the part
    /// between this command's markers is replaced; the rest of the file is kept.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The parts of the benchmark, in the order they run.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Part {
    /// Target slowdown per mode, agent CPU and memory, BPF time per target event.
    Slowdown,
    /// A real server: Debian's Redis under `redis-benchmark`, without and with the agent.
    Redis,
    /// A non-target workload while the agent watches an idle process.
    Nontarget,
    /// Event rates up to and past what the agent records without loss.
    Stress,
    /// Symbolization of a profile with more than 10k unique frames, cold and warm.
    Symbolize,
    /// Attach to first sample, and where the load time goes.
    Latency,
    /// bpftrace doing the off-CPU aggregation on the same workload.
    Bpftrace,
    /// `agent dump` time for 10, 100 and 1000 threads (when the subcommand exists).
    Dump,
    /// Every fuzz target for 60 s (10 with --quick); the figures go to RELIABILITY.md.
    Fuzz,
}

const ALL_PARTS: [Part; 9] = [
    Part::Slowdown,
    Part::Redis,
    Part::Nontarget,
    Part::Stress,
    Part::Symbolize,
    Part::Latency,
    Part::Bpftrace,
    Part::Dump,
    Part::Fuzz,
];

const MARK_BEGIN: &str =
    "<!-- cargo xtask bench: begin. Generated; edit outside these markers, not inside. -->";
const MARK_END: &str = "<!-- cargo xtask bench: end -->";

/// The workloads' nice value (see `Workload::start`).
const WORKLOAD_NICE: libc::c_int = -10;

/// Workload flags, as the test workloads are built.
const CFLAGS: &[&str] = &["-O1", "-g", "-fno-omit-frame-pointer", "-pthread"];

/// A way of running the agent.
struct Mode {
    key: &'static str,
    label: &'static str,
    args: &'static [&'static str],
    /// Also measured on the CPU-bound workload.
    on_cpu_workload: bool,
    /// `agent serve --pid N` left idle (no profile requested) instead of `agent attach`.
    serve: bool,
}

const MODES: &[Mode] = &[
    Mode {
        key: "cpu",
        label: "cpu only (99 Hz)",
        args: &["--profile", "cpu"],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "offcpu",
        label: "offcpu only (what the bpftrace reference does)",
        args: &["--profile", "offcpu"],
        on_cpu_workload: false,
        serve: false,
    },
    Mode {
        key: "offcpu_block",
        label: "offcpu+block, default rates (100us)",
        args: &["--profile", "offcpu,block"],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "offcpu_block_r1",
        label: "offcpu+block, --block-rate 1 --offcpu-rate 1",
        args: &[
            "--profile",
            "offcpu,block",
            "--block-rate",
            "1",
            "--offcpu-rate",
            "1",
        ],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "mutex",
        label: "mutex, --mutex-fraction 1",
        args: &["--profile", "mutex", "--mutex-fraction", "1"],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "all",
        label: "all profiles, default rates",
        args: &["--profile", "cpu,offcpu,block,mutex"],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "all_r1",
        label: "all profiles, every event (--block-rate 1 --offcpu-rate 1 --mutex-rate 1)",
        args: &[
            "--profile",
            "cpu,offcpu,block,mutex",
            "--block-rate",
            "1",
            "--offcpu-rate",
            "1",
            "--mutex-rate",
            "1",
            "--mutex-fraction",
            "1",
        ],
        on_cpu_workload: true,
        serve: false,
    },
    Mode {
        key: "serve_idle",
        label: "serve idle (`agent serve --pid N`, no profile requested)",
        args: &[],
        on_cpu_workload: true,
        serve: true,
    },
];

fn mode(key: &str) -> &'static Mode {
    parse_mode(key).expect("known mode")
}

fn parse_mode(key: &str) -> Result<&'static Mode, String> {
    MODES.iter().find(|m| m.key == key).ok_or_else(|| {
        let keys: Vec<&str> = MODES.iter().map(|m| m.key).collect();
        format!("unknown mode {key:?}; modes: {}", keys.join(", "))
    })
}

/// A bpftrace program; `$1` is the workload's pid.
struct BpftraceScript {
    name: &'static str,
    text: &'static str,
}

/// The bpftrace reference: off-CPU time by (kernel stack, user stack) of the target's threads,
/// the same aggregation as `--profile offcpu` without wait classes.
const BPFTRACE_OFFCPU: BpftraceScript = BpftraceScript {
    name: "offcpu",
    text: BPFTRACE_OFFCPU_TEXT,
};

/// An empty program on every syscall: what `bpf_stats` reports for a program that does
/// nothing (the statistics' own clock reads and the call), the floor of every ns/run figure.
const BPFTRACE_EMPTY: BpftraceScript = BpftraceScript {
    name: "empty",
    text: "tracepoint:raw_syscalls:sys_enter { }\n",
};

/// Empty programs on the three events the off-CPU, block and mutex profiles hook: what a
/// tracer pays before it does anything. bpftrace 0.17 has no raw tracepoints, so these are perf
/// tracepoints, which also fill an event record per run (the agent's BTF tracepoints do not):
/// an upper bound of the floor; the agent's own floor is its non-target figure.
const BPFTRACE_HOOKS: BpftraceScript = BpftraceScript {
    name: "hooks",
    text: BPFTRACE_HOOKS_TEXT,
};

const BPFTRACE_HOOKS_TEXT: &str = "tracepoint:sched:sched_switch { }
tracepoint:sched:sched_waking { }
tracepoint:sched:sched_wakeup_new { }
";

const BPFTRACE_OFFCPU_TEXT: &str = r#"tracepoint:sched:sched_switch
{
  if (pid == $1) {
    @start[tid] = nsecs;
    @kstk[tid] = kstack;
    @ustk[tid] = ustack;
  }
  $s = @start[args->next_pid];
  if ($s) {
    @offcpu[@kstk[args->next_pid], @ustk[args->next_pid]] = sum(nsecs - $s);
    delete(@start[args->next_pid]);
  }
}
"#;

// ---------------------------------------------------------------------------------------------
// Entry point

pub fn bench(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask bench` loads BPF programs, attaches to processes and switches \
             /proc/sys/kernel/bpf_stats_enabled: run it as root (sudo -E cargo xtask bench)"
        );
    }
    let parts: Vec<Part> = if args.only.is_empty() {
        ALL_PARTS.to_vec()
    } else {
        ALL_PARTS
            .iter()
            .copied()
            .filter(|p| args.only.contains(p))
            .collect()
    };
    if !args.no_build {
        crate::setup::setup(crate::setup::Options { no_apt: false })?;
        crate::build()?;
        println!("== build the symbolization benchmark");
        run(cargo().args([
            "build",
            "--release",
            "-p",
            "agent",
            "--example",
            "bench_symbolize",
        ]))?;
    }
    install_signal_handlers();
    let ctx = Ctx::new(args)?;
    let mut report = Report::new(&ctx);
    println!(
        "== bench: {} pairs per figure, ping-pong {} hand-offs/thread, CPU-bound {} rounds/thread",
        ctx.pairs, ctx.pingpong_n, ctx.cpu_n
    );
    for part in &parts {
        check_interrupted()?;
        println!("== bench: {part:?}");
        let started = Instant::now();
        let r = &mut report;
        let result = match part {
            Part::Slowdown => slowdown(&ctx).map(|x| r.slowdown = Some(x)),
            Part::Nontarget => nontarget(&ctx).map(|x| r.nontarget = Some(x)),
            Part::Stress => stress(&ctx).map(|x| r.stress = Some(x)),
            Part::Symbolize => symbolize(&ctx).map(|x| r.symbolize = Some(x)),
            Part::Latency => latency(&ctx).map(|x| r.latency = Some(x)),
            Part::Bpftrace => bpftrace(&ctx).map(|x| r.bpftrace = Some(x)),
            Part::Dump => dump(&ctx).map(|x| r.dump = Some(x)),
            Part::Redis => redis(&ctx).map(|x| r.redis = Some(x)),
            Part::Fuzz => crate::fuzz::fuzz(&crate::fuzz::FuzzArgs {
                seconds: if ctx.quick { 10 } else { 60 },
                targets: Vec::new(),
                fresh: false,
                record: true,
            })
            .map(|_| ()),
        };
        // A part that fails is reported as such; the others still run and are written down.
        if let Err(e) = result {
            check_interrupted()?;
            eprintln!("warning: {part:?} failed: {e:#}");
            report.failures.push(format!("{part:?}: {e:#}"));
        }
        println!(
            "   ({part:?} took {:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    report.finished(&ctx);
    let text = report.render(&ctx);
    let complete = parts.len() == ALL_PARTS.len() && args.modes.is_empty();
    let path = match (&args.output, complete) {
        (Some(p), _) => p.clone(),
        (None, true) => workspace_root().join("BENCHMARKS.md"),
        (None, false) => ctx.dir.join("partial.md"),
    };
    write_block(&path, &text)?;
    println!("{text}");
    println!("== bench: figures written to {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Context: binaries, sizes, the bpf_stats switch

struct Ctx {
    agent: PathBuf,
    pingpong: PathBuf,
    cpu: PathBuf,
    dir: PathBuf,
    pairs: usize,
    quick: bool,
    modes: Vec<&'static Mode>,
    /// What the workloads were sized to, s.
    run_secs: f64,
    /// Hand-offs per thread of the ping-pong, sized to `run_secs` here.
    pingpong_n: u64,
    /// The same for the ping-pong on one CPU.
    one_cpu_n: u64,
    /// The same for the unpinned ping-pong.
    free_pingpong_n: u64,
    /// Rounds per thread of the CPU-bound workload, sized likewise.
    cpu_n: u64,
    stats: BpfStats,
    cpus: usize,
    load_before: String,
    busy_before: Vec<String>,
}

impl Ctx {
    fn new(args: &BenchArgs) -> Result<Self> {
        let agent = target_dir().join("release/agent");
        if !agent.is_file() {
            bail!(
                "{} is missing: run without --no-build (or `cargo xtask build`)",
                agent.display()
            );
        }
        let dir = target_dir().join("bench");
        // The agent's output directories of an earlier run (named by workload size) go.
        let _ = std::fs::remove_dir_all(dir.join("out"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let pingpong = compile_workload("bench_pingpong")?;
        let cpu = compile_workload("bench_cpu")?;
        let quick = args.quick;
        let pairs = args.pairs.map_or(if quick { 3 } else { 5 }, |p| p as usize);
        // The ping-pong runs several times longer with the agent: it is the shorter one.
        let run_secs = if quick { 0.3 } else { 0.6 };
        let stats = BpfStats::new()?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let load_before = loadavg();
        let busy_before = busy_processes();
        if !busy_before.is_empty() {
            println!(
                "warning: other busy processes compete with the workloads: {}",
                busy_before.join(", ")
            );
        }
        let mut ctx = Self {
            agent,
            pingpong,
            cpu,
            dir,
            pairs,
            quick,
            modes: match args.modes.is_empty() {
                true => MODES.iter().collect(),
                false => args.modes.clone(),
            },
            run_secs,
            pingpong_n: 0,
            one_cpu_n: 0,
            free_pingpong_n: 0,
            cpu_n: 0,
            stats,
            cpus,
            load_before,
            busy_before,
        };
        println!("== bench: sizing the workloads to about {run_secs} s each");
        ctx.pingpong_n = ctx.calibrate(&ctx.pingpong, &[1, 0, 1], 20_000, run_secs)?;
        ctx.one_cpu_n = ctx.calibrate(&ctx.pingpong, &[1, 0, 2], 20_000, run_secs)?;
        ctx.free_pingpong_n = ctx.calibrate(&ctx.pingpong, &[1, 0, 0], 20_000, run_secs)?;
        ctx.cpu_n = ctx.calibrate(&ctx.cpu, &[ctx.cpus as u64], 20_000, 2.0 * run_secs)?;
        Ok(ctx)
    }

    /// Scales the workload's size so that it runs for about `secs` when it gets the CPUs: from
    /// the fastest of three runs (the machine's other load only ever makes a run slower).
    /// (`bin SIZE rest...`, the size being what is scaled.)
    fn calibrate(&self, bin: &Path, rest: &[u64], mut n: u64, secs: f64) -> Result<u64> {
        let spec = |n: u64| Spec::new(bin, &[&[n][..], rest].concat());
        let (t, _) = timed(self, &spec(n), &Tool::None, false)?;
        n = ((n as f64) * 0.2 / t.wall).max(100.0) as u64;
        let mut fastest = f64::INFINITY;
        for _ in 0..3 {
            let (t, _) = timed(self, &spec(n), &Tool::None, false)?;
            fastest = fastest.min(t.wall);
        }
        Ok(((n as f64) * secs / fastest).max(100.0) as u64)
    }

    /// The ping-pong with each pair's two threads pinned to CPUs 0 and 1: every hand-off
    /// wakes a thread on the other CPU (the steady regime of a two-thread hand-off).
    fn pingpong(&self, pairs: u64, path_bits: u64) -> Spec {
        Spec::new(
            &self.pingpong,
            &[(self.pingpong_n / pairs).max(100), pairs, path_bits, 1],
        )
    }

    /// The ping-pong with both threads on CPU 0: a hand-off is a direct switch.
    fn one_cpu_pingpong(&self) -> Spec {
        Spec::new(&self.pingpong, &[self.one_cpu_n, 1, 0, 2])
    }

    /// The ping-pong left to the scheduler (faster when it keeps a pair on one CPU): for the
    /// highest event rates.
    fn free_pingpong(&self, pairs: u64) -> Spec {
        Spec::new(
            &self.pingpong,
            &[(self.free_pingpong_n / pairs).max(100), pairs, 0, 0],
        )
    }

    fn cpu_bound(&self) -> Spec {
        Spec::new(&self.cpu, &[self.cpu_n, self.cpus as u64])
    }
}

fn compile_workload(name: &str) -> Result<PathBuf> {
    let src = workspace_root().join(format!("tests/workloads/{name}.c"));
    let dir = target_dir().join("workloads");
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join(name);
    gcc(&src, &bin, &[])?;
    Ok(bin)
}

fn gcc(src: &Path, bin: &Path, extra: &[&str]) -> Result<()> {
    let header = workspace_root().join("tests/workloads/bench_start.h");
    if crate::util::up_to_date(bin, &[src.to_path_buf(), header]) {
        return Ok(());
    }
    run(Command::new("gcc")
        .args(CFLAGS)
        .args(extra)
        .arg("-o")
        .arg(bin)
        .arg(src))
    .context("compiling a benchmark workload (is gcc installed? `cargo xtask setup` installs it)")
}

/// `/proc/sys/kernel/bpf_stats_enabled`: off except while a figure needs it; put back as it
/// was when dropped. When someone else had it on, it stays on (and the report says so).
struct BpfStats {
    original: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn new() -> Result<Self> {
        let original = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS} (BPF run-time statistics)"))?
            .trim()
            .to_string();
        let s = Self { original };
        s.set(false)?;
        Ok(s)
    }

    fn already_on(&self) -> bool {
        self.original != "0"
    }

    fn set(&self, on: bool) -> Result<()> {
        let v = if on || self.already_on() { "1" } else { "0" };
        std::fs::write(BPF_STATS, v).with_context(|| format!("writing {v} to {BPF_STATS}"))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.original) {
            eprintln!(
                "warning: could not restore {BPF_STATS} to {}: {e}",
                self.original
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn check_interrupted() -> Result<()> {
    if SIGNAL.load(Ordering::SeqCst) != 0 {
        bail!("interrupted");
    }
    Ok(())
}

/// Spawns `cmd` in its own process group, SIGKILLed if xtask dies.
fn spawn(cmd: &mut Command) -> Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and nothing is allocated between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            match libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting `{}`", display(cmd)))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill on a child we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Reads lines of a child's stream on a thread, sending each one.
fn line_reader(stream: impl Read + Send + 'static) -> Receiver<String> {
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
fn wait_line(
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
fn wait_rusage(pid: u32, hang: bool) -> Result<Option<(i32, f64, u64)>> {
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
struct Run {
    /// Elapsed time of its work, as it measured it, s.
    wall: f64,
    /// user+system CPU of the whole process (its threads, including BPF programs run in their
    /// context), s. Less sensitive than `wall` to other load on the machine.
    cpu: f64,
}

/// A benchmark workload: started, waiting for "go" on stdin, timed by itself.
#[derive(Clone)]
struct Spec {
    bin: PathBuf,
    args: Vec<String>,
}

impl Spec {
    fn new(bin: &Path, args: &[u64]) -> Self {
        Self {
            bin: bin.to_path_buf(),
            args: args.iter().map(u64::to_string).collect(),
        }
    }

    /// `bench_pingpong-21136-1-0`: names the agent's output directory.
    fn name(&self) -> String {
        let bin = self.bin.file_name().unwrap_or_default().to_string_lossy();
        std::iter::once(bin.into_owned())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join("-")
    }
}

/// A running workload; killed and reaped on drop unless it finished.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    reaped: bool,
}

impl Workload {
    fn start(spec: &Spec) -> Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("workload started twice")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for the workload's own timing and reaps it.
    fn finish(&mut self) -> Result<Run> {
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
struct Cost {
    /// The workload's own run time, s.
    window_s: f64,
    /// CPU time of the tracer's threads during the window, ns.
    window_cpu_ns: u64,
    /// Resident memory of the tracer at the end of the window, KiB.
    rss_kib: u64,
    /// user + system CPU of the tracer's whole life (load, capture, symbolize, write), s.
    total_cpu_s: f64,
    /// Peak resident memory of the tracer's whole life, KiB.
    maxrss_kib: u64,
    /// Spawn to ready (agent: "attached"; bpftrace: "Attaching"), s.
    ready_s: f64,
    /// Per program name: (run time ns, runs) during the window. Empty unless bpf_stats was on.
    progs: BTreeMap<String, (u64, u64)>,
    /// The agent's output directory.
    out_dir: Option<PathBuf>,
    /// The run's summary.json (`Null` without one).
    summary: serde_json::Value,
}

impl Cost {
    fn cpu_share(&self) -> f64 {
        self.window_cpu_ns as f64 / 1e9 / self.window_s
    }

    fn prog_runs(&self) -> u64 {
        self.progs.values().map(|p| p.1).sum()
    }

    fn prog_ns(&self) -> u64 {
        self.progs.values().map(|p| p.0).sum()
    }

    /// Table rows `| {prefix}program | runs/s | ns/run |` for the programs that ran.
    fn prog_rows(&self, prefix: &str, s: &mut String) {
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
struct Tracer {
    child: Child,
    pid: u32,
    started: Instant,
    ready: Receiver<()>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    reaped: bool,
    /// When it was last asked to stop (SIGINT).
    interrupted: Option<Instant>,
}

/// Keeps at most this much of a tracer's output.
const OUTPUT_CAP: usize = 4 << 20;

impl Tracer {
    /// Starts `cmd`; it is ready when a line of stdout (or stderr) contains `ready_on`.
    fn start(cmd: &mut Command, ready_on: &'static str, on_stderr: bool) -> Result<Self> {
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
    fn agent(ctx: &Ctx, mode: &Mode, pid: u32, what: &str) -> Result<(Self, PathBuf)> {
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
    fn bpftrace(ctx: &Ctx, script: &BpftraceScript, pid: u32) -> Result<Self> {
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

    fn wait_ready(&self, timeout: Duration) -> Result<f64> {
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

    fn child_status(&self) -> Result<Option<i32>> {
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

    fn stderr_tail(&self) -> String {
        let e = self.stderr.lock().expect("not poisoned");
        let lines: Vec<&str> = e.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    fn interrupt(&mut self) {
        signal(self.pid, libc::SIGINT);
        self.interrupted = Some(Instant::now());
    }

    /// Waits for the tracer to exit (SIGINT after `timeout`, SIGKILL 30 s later). Returns its
    /// whole-life CPU seconds and peak RSS (KiB), and its stdout.
    fn finish(mut self, timeout: Duration) -> Result<(f64, u64, String)> {
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
fn wait_for_fd(pid: u32, link: &str, timeout: Duration) -> Result<()> {
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
fn cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
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
struct ProgStat {
    run_time_ns: u64,
    run_cnt: u64,
    verified_insns: u64,
}

/// The BPF programs `pid` holds, by program id.
fn prog_stats(pid: u32) -> BTreeMap<u32, ProgStat> {
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

fn parse_prog_fdinfo(text: &str) -> Option<(u32, ProgStat)> {
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
fn prog_names() -> HashMap<u32, String> {
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

struct Snapshot {
    at: Instant,
    cpu_ns: u64,
    progs: BTreeMap<u32, ProgStat>,
}

fn snapshot(pid: u32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        cpu_ns: cpu_ns(pid),
        progs: prog_stats(pid),
    }
}

/// What runs alongside the timed workload.
enum Tool<'a> {
    None,
    /// The agent attached to the workload.
    Agent(&'a Mode),
    /// The agent attached to an idle process; the workload is not its target.
    AgentElsewhere(&'a Mode),
    Bpftrace(&'a BpftraceScript),
}

/// One timed run of `spec` with `tool` (stats: bpf_stats on for the window). Returns the
/// workload's own time and, with a tool, what the tool cost.
fn timed(ctx: &Ctx, spec: &Spec, tool: &Tool, stats: bool) -> Result<(Run, Option<Cost>)> {
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
fn pairs(ctx: &Ctx, what: &str, spec: &Spec, tool: &Tool) -> Result<Pairs> {
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
struct Pairs {
    base: Vec<Run>,
    with: Vec<Run>,
    costs: Vec<Cost>,
}

impl Pairs {
    fn ratios(&self, f: fn(&Run) -> f64) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .map(|(b, w)| f(w) / f(b) - 1.0)
            .collect()
    }

    /// Median wall-time slowdown, as a fraction.
    fn slowdown(&self) -> f64 {
        median(&self.ratios(|r| r.wall))
    }

    /// Median change of the workload's CPU time, as a fraction.
    fn cpu_slowdown(&self) -> f64 {
        median(&self.ratios(|r| r.cpu))
    }

    /// Median wall-time slowdown (range; baseline median), for a table cell.
    fn cell(&self) -> String {
        self.cell_of(|r| r.wall)
    }

    /// The same for the workload's CPU time.
    fn cpu_cell(&self) -> String {
        self.cell_of(|r| r.cpu)
    }

    fn cell_of(&self, f: fn(&Run) -> f64) -> String {
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

    fn median_cost(&self, f: impl Fn(&Cost) -> f64) -> f64 {
        median(&self.costs.iter().map(f).collect::<Vec<_>>())
    }
}

// ---------------------------------------------------------------------------------------------
// 1-3. Slowdown per mode, agent CPU and memory, BPF time per target event

struct ModeFigures {
    mode: &'static Mode,
    /// The ping-pong across two CPUs.
    pingpong: Pairs,
    /// The ping-pong on one CPU.
    one_cpu: Pairs,
    /// The ping-pong left to the scheduler (only for `UNPINNED_MODES`).
    unpinned: Option<Pairs>,
    cpu_bound: Option<Pairs>,
    /// One more ping-pong run with bpf_stats on (BPF time per event).
    instrumented: Cost,
    /// The same on the CPU-bound workload, for the modes that sample CPU.
    instrumented_cpu: Option<Cost>,
}

struct Slowdown {
    modes: Vec<ModeFigures>,
    /// Hand-offs per run of the two-CPU ping-pong, of the one-CPU one and of the unpinned one.
    handoffs: u64,
    one_cpu_handoffs: u64,
    unpinned_handoffs: u64,
    /// The agent has no `serve` subcommand (the serve idle mode was skipped).
    serve_missing: bool,
}

/// The modes also measured on the unpinned ping-pong (issue 13's budget names it for all
/// profiles; the others would add their run time for little).
const UNPINNED_MODES: &[&str] = &["all", "all_r1"];

fn slowdown(ctx: &Ctx) -> Result<Slowdown> {
    let pp = ctx.pingpong(1, 0);
    let one = ctx.one_cpu_pingpong();
    let free = ctx.free_pingpong(1);
    let cpu = ctx.cpu_bound();
    let mut modes = Vec::new();
    let mut serve_missing = false;
    for &m in &ctx.modes {
        if m.serve && probe(Command::new(&ctx.agent).args(["serve", "--help"])).is_none() {
            serve_missing = true;
            continue;
        }
        let tool = Tool::Agent(m);
        let pingpong = pairs(ctx, &format!("ping-pong, {}", m.key), &pp, &tool)?;
        let one_cpu = pairs(ctx, &format!("ping-pong 1 CPU, {}", m.key), &one, &tool)?;
        let unpinned = match UNPINNED_MODES.contains(&m.key) {
            true => Some(pairs(
                ctx,
                &format!("ping-pong unpinned, {}", m.key),
                &free,
                &tool,
            )?),
            false => None,
        };
        let cpu_bound = match m.on_cpu_workload {
            true => Some(pairs(
                ctx,
                &format!("cpu-bound, {}", m.key),
                &cpu,
                &Tool::Agent(m),
            )?),
            false => None,
        };
        let (_, cost) = timed(ctx, &pp, &Tool::Agent(m), true)?;
        // `agent attach` modes' args start with `--profile LIST`.
        let instrumented_cpu = match m.args.get(1).is_some_and(|p| p.contains("cpu")) {
            true => timed(ctx, &cpu, &Tool::Agent(m), true)?.1,
            false => None,
        };
        modes.push(ModeFigures {
            mode: m,
            pingpong,
            one_cpu,
            unpinned,
            cpu_bound,
            instrumented: cost.expect("agent run"),
            instrumented_cpu,
        });
    }
    Ok(Slowdown {
        modes,
        handoffs: 2 * ctx.pingpong_n,
        one_cpu_handoffs: 2 * ctx.one_cpu_n,
        unpinned_handoffs: 2 * ctx.free_pingpong_n,
        serve_missing,
    })
}

// ---------------------------------------------------------------------------------------------
// 2b. Non-target events

struct Nontarget {
    pairs: Pairs,
    instrumented: Cost,
}

fn nontarget(ctx: &Ctx) -> Result<Nontarget> {
    // On one CPU, where the cost per switch shows fully.
    let pp = ctx.one_cpu_pingpong();
    let tool = Tool::AgentElsewhere(mode("all_r1"));
    let pairs = pairs(ctx, "ping-pong, not the target", &pp, &tool)?;
    let (_, cost) = timed(ctx, &pp, &tool, true)?;
    Ok(Nontarget {
        pairs,
        instrumented: cost.expect("agent run"),
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Stress

struct StressRow {
    label: String,
    base: Run,
    with: Run,
    handoffs: u64,
    cost: Cost,
}

impl StressRow {
    fn switch_outs(&self) -> u64 {
        counter(&self.cost.summary, "offcpu_switch_out")
    }

    fn drops(&self) -> u64 {
        losses(&self.cost.summary)
    }

    /// Share of off-CPU time whose stack has no user frame at all (the kernel could not
    /// record the user stack: every thread of the workload is in user code when it blocks).
    fn no_user_stack_share(&self) -> Option<f64> {
        self.folded_share(|frames| frames.iter().all(|f| f.ends_with("_[k]")))
    }

    /// Share of off-CPU time charged after a thread exited (its last switch-out, in
    /// `do_task_dead`, opens an interval that nothing closes until the capture ends).
    fn after_exit_share(&self) -> Option<f64> {
        self.folded_share(|frames| frames.iter().any(|f| f.starts_with("do_task_dead")))
    }

    /// Share of `offcpu.folded`'s total whose frames (below the wait-class root) match.
    fn folded_share(&self, matches: impl Fn(&[&str]) -> bool) -> Option<f64> {
        let dir = self.cost.out_dir.as_ref()?;
        let text = std::fs::read_to_string(dir.join("offcpu.folded")).ok()?;
        let (mut total, mut hit) = (0u64, 0u64);
        for line in text.lines() {
            let Some((stack, v)) = line.rsplit_once(' ') else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            let frames: Vec<&str> = stack.split(';').skip(1).collect();
            total += v;
            if matches(&frames) {
                hit += v;
            }
        }
        (total > 0).then(|| hit as f64 / total as f64)
    }
}

struct Stress {
    rows: Vec<StressRow>,
    overflow: Option<StressRow>,
}

fn stress(ctx: &Ctx) -> Result<Stress> {
    let m = mode("all_r1");
    let ks: &[u64] = if ctx.quick { &[1, 4] } else { &[1, 2, 4, 8] };
    let mut rows = Vec::new();
    let run = |label: String, spec: Spec, handoffs: u64| -> Result<StressRow> {
        let (base, _) = timed(ctx, &spec, &Tool::None, false)?;
        let (with, cost) = timed(ctx, &spec, &Tool::Agent(m), true)?;
        let row = StressRow {
            label,
            base,
            with,
            handoffs,
            cost: cost.expect("agent run"),
        };
        println!(
            "   {}: {:.0} BPF runs/s, {:.0} target switch-outs/s, drops {}, {:+.1}%",
            row.label,
            row.cost.prog_runs() as f64 / row.cost.window_s,
            row.switch_outs() as f64 / row.cost.window_s,
            row.drops(),
            (with.wall / base.wall - 1.0) * 100.0
        );
        Ok(row)
    };
    for &k in ks {
        let spec = ctx.free_pingpong(k);
        let handoffs = 2 * k * (ctx.free_pingpong_n / k).max(100);
        rows.push(run(format!("{k} ping-pong pair(s)"), spec, handoffs)?);
    }
    // Past the user-stack table (16384 entries): 2^15 call paths, each its own stack.
    let spec = ctx.pingpong(1, 15);
    let overflow = run(
        "1 pair, 32768 distinct call paths".into(),
        spec,
        2 * ctx.pingpong_n,
    )?;
    Ok(Stress {
        rows,
        overflow: Some(overflow),
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Symbolization

/// Functions in the generated program (each with an inlined helper).
const BIG_FUNCTIONS: usize = 12_000;

struct Symbolize {
    figures: BTreeMap<String, String>,
    compile_s: f64,
}

fn symbolize(ctx: &Ctx) -> Result<Symbolize> {
    let src = ctx.dir.join("bigsyms.c");
    let bin = ctx.dir.join("bigsyms");
    // Rewritten only when it changes, so the binary is compiled once, not every run.
    let text = big_program(BIG_FUNCTIONS);
    if std::fs::read_to_string(&src).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&src, text)?;
    }
    let t = Instant::now();
    gcc(&src, &bin, &[])?;
    let compile_s = t.elapsed().as_secs_f64();
    let example = target_dir().join("release/examples/bench_symbolize");
    if !example.is_file() {
        bail!(
            "{} is missing: run without --no-build (it is built with `cargo build --release -p \
             agent --example bench_symbolize`)",
            example.display()
        );
    }
    let runs = if ctx.quick { 3 } else { 5 };
    let mut cmd = Command::new(&example);
    cmd.arg(&bin).arg(runs.to_string());
    let out = probe(&mut cmd).with_context(|| format!("`{}` failed", display(&cmd)))?;
    let figures: BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    println!("   {}", out.lines().collect::<Vec<_>>().join(", "));
    Ok(Symbolize { figures, compile_s })
}

/// A C program with `n` functions, each calling an inlined helper, that prints every
/// function's address (`fn 0x...`), then `ready`, and waits for stdin to close.
fn big_program(n: usize) -> String {
    let mut s = format!(
        "// Generated by `cargo xtask bench` (symbolization benchmark); not checked in.\n\
         // Built with: gcc {}\n\
         #include <stdio.h>\n\
         static volatile int sink;\n",
        CFLAGS.join(" ")
    );
    for i in 0..n {
        let _ = writeln!(
            s,
            "static inline __attribute__((always_inline)) int helper_{i}(int x) {{ return x * {} + sink; }}\n\
             __attribute__((noinline)) int function_{i}(int x) {{ return helper_{i}(x) ^ {i}; }}",
            i % 97 + 3
        );
    }
    s.push_str("typedef int (*fn_t)(int);\nstatic fn_t fns[] = {\n");
    for i in 0..n {
        let _ = writeln!(s, "  function_{i},");
    }
    s.push_str(
        "};\n\
         int main(void) {\n\
           for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++)\n\
             printf(\"fn %p\\n\", (void *)fns[i]);\n\
           printf(\"ready\\n\");\n\
           fflush(stdout);\n\
           while (getchar() != EOF)\n\
             ;\n\
           return 0;\n\
         }\n",
    );
    s
}

// ---------------------------------------------------------------------------------------------
// 6. Attach to first sample

/// One `agent attach` start, observed from outside by polling its fd table every few ms.
struct AttachTimeline {
    /// Seconds from spawn: first and last map fd before the first program.
    maps_done_s: f64,
    /// (seconds from spawn, program id, verified instructions), in load order.
    progs: Vec<(f64, u32, u64)>,
    attached_s: Option<f64>,
    first_sample_s: f64,
    names: HashMap<u32, String>,
}

struct Latency {
    /// Per mode key: the runs.
    runs: Vec<(&'static str, Vec<AttachTimeline>)>,
    /// `strace -T -e trace=bpf`: (bpf command, program name) -> (calls, seconds).
    strace: Option<BTreeMap<(String, String), (u64, f64)>>,
}

fn latency(ctx: &Ctx) -> Result<Latency> {
    let n = if ctx.quick { 3 } else { 5 };
    let mut runs = Vec::new();
    for key in ["cpu", "all"] {
        let m = mode(key);
        let mut v = Vec::new();
        for i in 0..n {
            let t = attach_timeline(ctx, m)?;
            println!(
                "   {key}: run {}/{n}: {} programs loaded by {:.2} s, first sample at {:.2} s",
                i + 1,
                t.progs.len(),
                t.progs.last().map_or(0.0, |p| p.0),
                t.first_sample_s
            );
            v.push(t);
        }
        runs.push((key, v));
    }
    let strace = match find_in_path("strace") {
        Some(_) => Some(strace_bpf(ctx, mode("all"))?),
        None => {
            println!("   (strace not installed: no per-syscall load breakdown)");
            None
        }
    };
    Ok(Latency { runs, strace })
}

fn attach_timeline(ctx: &Ctx, m: &Mode) -> Result<AttachTimeline> {
    // A busy target (its switches and syscalls start the moment a program is attached).
    let mut w = Workload::start(&Spec::new(&ctx.pingpong, &[100_000_000, 1, 0]))?;
    w.go()?;
    ctx.stats.set(true)?;
    let result = (|| {
        let (mut tracer, _) = Tracer::agent(ctx, m, w.pid(), "latency")?;
        let pid = tracer.pid;
        let start = tracer.started;
        let mut maps: HashMap<String, ()> = HashMap::new();
        let mut maps_done_s = 0.0;
        let mut progs: Vec<(f64, u32, u64)> = Vec::new();
        let mut attached_s = None;
        let first_sample_s = loop {
            check_interrupted()?;
            let now = start.elapsed().as_secs_f64();
            if now > 120.0 {
                bail!(
                    "no sample 120 s after starting the agent: {}",
                    tracer.stderr_tail()
                );
            }
            if attached_s.is_none() && tracer.ready.try_recv().is_ok() {
                attached_s = Some(now);
            }
            // Every fd every time: the loader opens and closes probe fds, so fd numbers are
            // reused; programs are told apart by their id.
            let mut runs = 0;
            for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                let fd = e.file_name().to_string_lossy().into_owned();
                let Ok(link) = std::fs::read_link(e.path()) else {
                    continue;
                };
                if link.as_os_str() == "anon_inode:bpf-map" {
                    if progs.is_empty() && maps.insert(fd, ()).is_none() {
                        maps_done_s = now;
                    }
                } else if link.as_os_str() == "anon_inode:bpf-prog" {
                    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
                        .unwrap_or_default();
                    if let Some((id, st)) = parse_prog_fdinfo(&info) {
                        if !progs.iter().any(|p| p.1 == id) {
                            progs.push((now, id, st.verified_insns));
                        }
                        runs += st.run_cnt;
                    }
                }
            }
            if runs > 0 {
                break now;
            }
            if let Ok(Some(status)) = tracer.child_status() {
                bail!(
                    "the agent exited ({status}) before its first sample: {}",
                    tracer.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let names = prog_names();
        // Programs the loader opened only to probe kernel features are gone by now.
        let open = prog_stats(pid);
        progs.retain(|p| open.contains_key(&p.1));
        if attached_s.is_none() {
            // The programs run from the moment they are attached, before the log line.
            attached_s = tracer.wait_ready(Duration::from_secs(30)).ok();
        }
        tracer.interrupt();
        tracer.finish(Duration::from_secs(120))?;
        Ok(AttachTimeline {
            maps_done_s,
            progs,
            attached_s,
            first_sample_s,
            names,
        })
    })();
    ctx.stats.set(false)?;
    result
}

/// Runs one attach under `strace -f -T -e trace=bpf` and sums the time of each bpf command
/// (BPF_PROG_LOAD per program: that is the verifier).
fn strace_bpf(ctx: &Ctx, m: &Mode) -> Result<BTreeMap<(String, String), (u64, f64)>> {
    let mut w = Workload::start(&Spec::new(&ctx.pingpong, &[100_000_000, 1, 0]))?;
    w.go()?;
    let log = ctx.dir.join("strace-bpf.txt");
    let out = ctx.dir.join("out").join("strace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-T", "-e", "trace=bpf", "-o"])
        .arg(&log)
        .arg(&ctx.agent)
        .args([
            "-v",
            "attach",
            "--pid",
            &w.pid().to_string(),
            "--duration",
            "1s",
        ])
        .args(m.args)
        .arg("-o")
        .arg(&out);
    let tracer = Tracer::start(&mut cmd, "attached to", true)?;
    tracer.wait_ready(Duration::from_secs(120))?;
    tracer.finish(Duration::from_secs(120))?;
    let text = std::fs::read_to_string(&log)?;
    Ok(parse_strace_bpf(&text))
}

fn parse_strace_bpf(text: &str) -> BTreeMap<(String, String), (u64, f64)> {
    let mut out: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(call) = line.split_once("bpf(").map(|x| x.1) else {
            continue;
        };
        let cmd = call.split(',').next().unwrap_or("").to_string();
        let name = call
            .split_once("prog_name=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map_or(String::new(), |(n, _)| n.to_string());
        let secs = line
            .rsplit_once('<')
            .and_then(|(_, r)| r.strip_suffix('>'))
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        let e = out.entry((cmd, name)).or_default();
        e.0 += 1;
        e.1 += secs;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 7. bpftrace reference

struct Bpftrace {
    pairs: Option<Pairs>,
    instrumented: Option<Cost>,
    /// ns per run of an empty program (`BPFTRACE_EMPTY`).
    floor_ns: Option<f64>,
    /// The ping-pong with empty programs on the agent's hooks (`BPFTRACE_HOOKS`).
    hooks: Option<Pairs>,
    missing: Option<String>,
}

impl Report {
    /// ns per run of a program that does nothing, when measured.
    fn floor_ns(&self) -> Option<f64> {
        self.bpftrace.as_ref()?.floor_ns
    }
}

fn bpftrace(ctx: &Ctx) -> Result<Bpftrace> {
    for tool in ["bpftrace", "unshare"] {
        if find_in_path(tool).is_none() {
            return Ok(Bpftrace {
                pairs: None,
                instrumented: None,
                floor_ns: None,
                hooks: None,
                missing: Some(format!("{tool} is not installed (`cargo xtask setup`)")),
            });
        }
    }
    // On one CPU, where the cost per switch shows fully (compared with the same regime).
    let pp = ctx.one_cpu_pingpong();
    let tool = Tool::Bpftrace(&BPFTRACE_OFFCPU);
    let offcpu_pairs = pairs(ctx, "ping-pong, bpftrace off-CPU", &pp, &tool)?;
    let (_, cost) = timed(ctx, &pp, &tool, true)?;
    let (_, empty) = timed(ctx, &pp, &Tool::Bpftrace(&BPFTRACE_EMPTY), true)?;
    let floor_ns = empty.and_then(|c| {
        let (ns, n) = c.progs.values().max_by_key(|v| v.1)?;
        Some(*ns as f64 / (*n).max(1) as f64)
    });
    println!("   empty program: {floor_ns:?} ns per run");
    let hooks = pairs(
        ctx,
        "ping-pong, empty programs on the agent's hooks",
        &pp,
        &Tool::Bpftrace(&BPFTRACE_HOOKS),
    )?;
    Ok(Bpftrace {
        pairs: Some(offcpu_pairs),
        instrumented: cost,
        floor_ns,
        hooks: Some(hooks),
        missing: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Thread dumps

struct DumpRow {
    threads: u64,
    times: Vec<f64>,
    /// The counting thread's progress during the dumps relative to before them.
    progress: Option<f64>,
}

struct Dump {
    rows: Vec<DumpRow>,
    missing: Option<String>,
}

fn dump(ctx: &Ctx) -> Result<Dump> {
    let missing = |why: &str| Dump {
        rows: Vec::new(),
        missing: Some(why.to_string()),
    };
    if probe(Command::new(&ctx.agent).args(["dump", "--help"])).is_none() {
        return Ok(missing("this agent has no `dump` subcommand yet"));
    }
    let src = workspace_root().join("tests/workloads/dump_many.c");
    if !src.is_file() {
        return Ok(missing(
            "tests/workloads/dump_many.c (its workload) is not there yet",
        ));
    }
    let bin = ctx.dir.join("dump_many");
    gcc(&src, &bin, &[])?;
    let reps = if ctx.quick { 3 } else { 5 };
    let mut rows = Vec::new();
    for threads in [10u64, 100, 1000] {
        let counter = ctx.dir.join("dump_counter");
        let _ = std::fs::remove_file(&counter);
        let mut cmd = Command::new(&bin);
        cmd.arg(threads.to_string())
            .arg(&counter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = spawn(&mut cmd)?;
        let lines = line_reader(child.stdout.take().expect("piped"));
        let w = Workload {
            child,
            stdin: None,
            lines,
            reaped: false,
        };
        wait_line(&w.lines, Duration::from_secs(60), "dump_many ready", |l| {
            l == "ready"
        })?;
        let read_counter = || -> u64 {
            std::fs::read(&counter)
                .ok()
                .and_then(|b| Some(u64::from_ne_bytes(b.get(..8)?.try_into().ok()?)))
                .unwrap_or(0)
        };
        let run_dump = || -> Result<f64> {
            let t = Instant::now();
            let mut c = Command::new(&ctx.agent);
            c.args(["dump", "--pid", &w.pid().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let status = spawn(&mut c)?.wait()?;
            if !status.success() {
                bail!("`{}` failed ({status})", display(&c));
            }
            Ok(t.elapsed().as_secs_f64())
        };
        run_dump()?; // warm-up (page cache, symbol files)
        let (c0, t0) = (read_counter(), Instant::now());
        std::thread::sleep(Duration::from_millis(500));
        let rate_idle = (read_counter() - c0) as f64 / t0.elapsed().as_secs_f64();
        let mut times = Vec::new();
        let (c1, t1) = (read_counter(), Instant::now());
        for _ in 0..reps {
            check_interrupted()?;
            times.push(run_dump()?);
        }
        let rate_dump = (read_counter() - c1) as f64 / t1.elapsed().as_secs_f64();
        println!(
            "   {threads} threads: median {:.3} s, counter at {:.0}% of its idle rate",
            median(&times),
            rate_dump / rate_idle * 100.0
        );
        rows.push(DumpRow {
            threads,
            times,
            progress: (rate_idle > 0.0).then(|| rate_dump / rate_idle),
        });
        drop(w);
        let _ = std::fs::remove_file(&counter);
    }
    Ok(Dump {
        rows,
        missing: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Parsing the agent's summary

/// A run's `summary.json` (docs/summary-schema.md); `Null` when it wrote none (serve, bpftrace).
fn summary_json(dir: Option<&Path>) -> serde_json::Value {
    dir.and_then(|d| std::fs::read_to_string(d.join("summary.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// One counter of a summary.json by name (0 when absent).
fn counter(summary: &serde_json::Value, name: &str) -> u64 {
    summary["counters"][name].as_u64().unwrap_or(0)
}

/// Everything a summary.json counts as lost: every dropped event and lost stack.
fn losses(summary: &serde_json::Value) -> u64 {
    use stallscope_common::{Counter, CounterGroup};
    Counter::ALL
        .into_iter()
        .map(|c| c.info())
        .filter(|i| matches!(i.group, CounterGroup::Dropped | CounterGroup::StackLost))
        .map(|i| counter(summary, i.name))
        .sum()
}

/// The non-zero losses of a summary.json by name, for the notes under a table.
fn losses_text(summary: &serde_json::Value) -> String {
    use stallscope_common::{Counter, CounterGroup};
    let named: Vec<String> = Counter::ALL
        .into_iter()
        .map(|c| c.info())
        .filter(|i| matches!(i.group, CounterGroup::Dropped | CounterGroup::StackLost))
        .filter_map(|i| {
            let n = counter(summary, i.name);
            (n > 0).then(|| format!("{} {n}", i.name))
        })
        .collect();
    if named.is_empty() {
        "nothing lost".into()
    } else {
        named.join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// Redis: a real server under load

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// The tests `redis-benchmark` runs (`-t set,get`), as its CSV names them.
const REDIS_TESTS: [&str; 2] = ["SET", "GET"];

/// Connections of `redis-benchmark` (`-c`).
const REDIS_CLIENTS: u32 = 50;

/// Throughput (requests/s) per test of one `redis-benchmark` run.
type Rps = BTreeMap<String, f64>;

struct Redis {
    /// `redis-server --version`'s `v=`.
    version: String,
    /// Requests per test (`-n`).
    requests: u64,
    /// Per pair: the run without the agent and the one with it.
    base: Vec<Rps>,
    with: Vec<Rps>,
    /// The agent's CPU during each traced benchmark, as a share of one core.
    agent_cpu: Vec<f64>,
    /// The agent's peak RSS (KiB) and the losses its summary counted, per traced run.
    agent_maxrss_kib: Vec<f64>,
    agent_losses: Vec<u64>,
}

impl Redis {
    /// Traced / baseline throughput of `test`, per pair.
    fn ratios(&self, test: &str) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.with)
            .filter_map(|(b, w)| Some(w.get(test)? / b.get(test)?))
            .collect()
    }

    fn base_median(&self, test: &str) -> f64 {
        median(
            &self
                .base
                .iter()
                .filter_map(|b| b.get(test).copied())
                .collect::<Vec<_>>(),
        )
    }

    /// "SET x0.97 (0.95..0.99), GET ...": met when every test's median is at least 0.98.
    fn budget(&self) -> Option<(String, bool)> {
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
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Both are no-ops on a child already waited for.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a child at the workloads' nice value (as `Workload::start` does).
fn at_workload_nice(cmd: &mut Command) -> &mut Command {
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
struct RedisServer {
    child: Reaped,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    fn start(dir: &Path) -> Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Waits until `redis-cli -p PORT ping` answers PONG.
    fn wait_pong(&mut self, timeout: Duration) -> Result<()> {
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
    fn benchmark(&mut self, n: u64) -> Result<Rps> {
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
fn parse_redis_csv(text: &str) -> Rps {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|x| x.trim().trim_matches('"'));
            let test = f.next()?.to_string();
            let rps = f.next()?.parse::<f64>().ok()?;
            Some((test, rps))
        })
        .collect()
}

fn redis(ctx: &Ctx) -> Result<Redis> {
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

// ---------------------------------------------------------------------------------------------
// The report

struct Report {
    date: String,
    kernel: String,
    commit: String,
    loads: String,
    stats_note: Option<String>,
    slowdown: Option<Slowdown>,
    nontarget: Option<Nontarget>,
    stress: Option<Stress>,
    symbolize: Option<Symbolize>,
    latency: Option<Latency>,
    bpftrace: Option<Bpftrace>,
    dump: Option<Dump>,
    redis: Option<Redis>,
    failures: Vec<String>,
}

/// Other processes that used more than a tenth of a core over one second (they compete with
/// the workloads on a small machine; the report names them).
fn busy_processes() -> Vec<String> {
    fn times() -> HashMap<u32, (String, u64)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (head, rest) = stat.rsplit_once(") ")?;
                let comm = head.split_once(" (")?.1.to_string();
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some((pid, (comm, ticks)))
            })
            .collect()
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let a = times();
    std::thread::sleep(Duration::from_secs(1));
    let mut busy: Vec<(f64, String)> = times()
        .into_iter()
        .filter_map(|(pid, (comm, t))| {
            let share = (t - a.get(&pid)?.1) as f64 / hz;
            (share > 0.1 && pid != std::process::id()).then(|| {
                (
                    share,
                    format!("{comm} (pid {pid}, {:.0}% of a core)", share * 100.0),
                )
            })
        })
        .collect();
    busy.sort_by(|x, y| y.0.total_cmp(&x.0));
    busy.into_iter().map(|b| b.1).collect()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Report {
    fn new(ctx: &Ctx) -> Self {
        let sh = |args: &[&str]| {
            probe(
                Command::new(args[0])
                    .args(&args[1..])
                    .current_dir(workspace_root()),
            )
            .unwrap_or_default()
            .trim()
            .to_string()
        };
        let dirty = !sh(&["git", "status", "--porcelain", "--", "agent", "ebpf"]).is_empty();
        Self {
            date: sh(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]),
            kernel: sh(&["uname", "-r"]),
            commit: format!(
                "{}{}",
                sh(&["git", "rev-parse", "--short", "HEAD"]),
                if dirty {
                    " + uncommitted changes in agent/ or ebpf/"
                } else {
                    ""
                }
            ),
            loads: String::new(),
            stats_note: ctx.stats.already_on().then(|| {
                "bpf_stats_enabled was already on when the run started (someone else's): the \
                 slowdown figures include its cost (two clock reads per program run)."
                    .to_string()
            }),
            slowdown: None,
            nontarget: None,
            stress: None,
            symbolize: None,
            latency: None,
            bpftrace: None,
            dump: None,
            redis: None,
            failures: Vec::new(),
        }
    }

    fn finished(&mut self, ctx: &Ctx) {
        self.loads = format!("{} at the start, {} at the end", ctx.load_before, loadavg());
    }

    fn render(&self, ctx: &Ctx) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{MARK_BEGIN}");
        let _ = writeln!(s, "## Agent overhead (`cargo xtask bench`)\n");
        let _ = writeln!(
            s,
            "Run {}{} on Linux {}, {} CPUs, agent at {}. Load average (1/5/15 min): {}. \
             Workloads: `tests/workloads/bench_pingpong.c` (two threads handing a token \
             through a mutex and a condition variable: {} hand-offs pinned to two CPUs, {} \
             pinned to one CPU, {} unpinned, each sized to about {:.1} s) and \
             `tests/workloads/bench_cpu.c` (one busy thread per CPU, {} rounds each, about \
             {:.1} s), sized from their fastest of three runs. Each slowdown is the median \
             of {} interleaved pairs of a baseline and a traced run (alternating which goes \
             first), with the range of the pairs; the agent attaches before the workload \
             starts its work and ends when it exits. The workloads run at nice {WORKLOAD_NICE} \
             (both runs of a pair) so that other processes disturb them less.\n",
            self.date,
            if ctx.quick { " (--quick)" } else { "" },
            self.kernel,
            ctx.cpus,
            self.commit,
            self.loads,
            2 * ctx.pingpong_n,
            2 * ctx.one_cpu_n,
            2 * ctx.free_pingpong_n,
            ctx.run_secs,
            ctx.cpu_n,
            2.0 * ctx.run_secs,
            ctx.pairs,
        );
        if !ctx.busy_before.is_empty() {
            let _ = writeln!(
                s,
                "Other processes busy when the run started (they compete with the workloads \
                 for the {} CPUs, so they add noise): {}.\n",
                ctx.cpus,
                ctx.busy_before.join(", ")
            );
        }
        for f in &self.failures {
            let _ = writeln!(s, "**This part failed and has no figures:** {f}\n");
        }
        if let Some(n) = &self.stats_note {
            let _ = writeln!(s, "Note: {n}\n");
        }
        self.render_budget(&mut s);
        self.render_slowdown(&mut s);
        self.render_bpf(&mut s);
        self.render_agent_cost(&mut s);
        self.render_stress(&mut s);
        self.render_symbolize(&mut s);
        self.render_latency(&mut s);
        self.render_bpftrace(&mut s);
        self.render_dump(&mut s);
        self.render_redis(&mut s);
        let _ = writeln!(s, "{MARK_END}");
        s
    }

    fn mode_figures(&self, key: &str) -> Option<&ModeFigures> {
        self.slowdown
            .as_ref()?
            .modes
            .iter()
            .find(|m| m.mode.key == key)
    }

    fn render_budget(&self, s: &mut String) {
        let _ = writeln!(s, "### Budgets (issues 8 and 13)\n");
        let _ = writeln!(
            s,
            "Rows marked (issue 13) are that issue's budgets; the others are issue 8's (or the \
             issue named). Issue 13's ping-pong budgets replace issue 8's ≤1% (all profiles at \
             default rates) and ≤3% (every event recorded) for the same modes.\n"
        );
        let _ = writeln!(s, "| budget | figure | met? |\n|---|---|---|");
        let mut row = |what: &str, figure: Option<(String, bool)>| {
            let (f, ok) = figure.unwrap_or(("not measured in this run".into(), false));
            let verdict = if f.starts_with("not measured") {
                "—"
            } else if ok {
                "met"
            } else {
                "**not met**"
            };
            let _ = writeln!(s, "| {what} | {f} | {verdict} |");
        };
        let slow = |key: &str, limit: f64| {
            self.mode_figures(key).map(|m| {
                let (two, one) = (m.pingpong.slowdown(), m.one_cpu.slowdown());
                (
                    format!(
                        "{:+.1}% on one CPU, {:+.1}% on two CPUs (wall; workload CPU {:+.1}%, \
                         {:+.1}%)",
                        one * 100.0,
                        two * 100.0,
                        m.one_cpu.cpu_slowdown() * 100.0,
                        m.pingpong.cpu_slowdown() * 100.0,
                    ),
                    one.max(two) <= limit,
                )
            })
        };
        // One regime of one mode against a limit on the median wall-time slowdown, as a
        // percentage or (times) a factor.
        let regime =
            |key: &str, of: fn(&ModeFigures) -> Option<&Pairs>, limit: f64, times: bool| {
                let p = of(self.mode_figures(key)?)?;
                let r = p.ratios(|r| r.wall);
                if r.is_empty() {
                    return None;
                }
                let (lo, hi) = min_max(&r);
                let (med, cpu) = (median(&r), p.cpu_slowdown());
                let f = |v: f64| match times {
                    true => format!("x{:.2}", 1.0 + v),
                    false => format!("{:+.1}%", v * 100.0),
                };
                Some((
                    format!(
                        "{} wall ({} .. {}); workload CPU {}",
                        f(med),
                        f(lo),
                        f(hi),
                        f(cpu)
                    ),
                    med <= limit,
                ))
            };
        row(
            "ping-pong on one CPU, all profiles at default rates: ≤ +15% (issue 13)",
            regime("all", |m| Some(&m.one_cpu), 0.15, false),
        );
        row(
            "ping-pong on two CPUs, all profiles at default rates: ≤ +3% (issue 13)",
            regime("all", |m| Some(&m.pingpong), 0.03, false),
        );
        row(
            "ping-pong unpinned, all profiles at default rates: ≤ x1.10 (issue 13)",
            regime("all", |m| m.unpinned.as_ref(), 0.10, true),
        );
        row(
            "ping-pong on one CPU, every event recorded (all profiles, `--block-rate 1 \
             --offcpu-rate 1 --mutex-rate 1 --mutex-fraction 1`): ≤ +40% (issue 13)",
            regime("all_r1", |m| Some(&m.one_cpu), 0.40, false),
        );
        row(
            "≤1% ping-pong slowdown, offcpu+block at the default rate",
            slow("offcpu_block", 0.01),
        );
        row(
            "≤3% ping-pong slowdown, offcpu+block at rate 1",
            slow("offcpu_block_r1", 0.03),
        );
        row(
            "≤2% ping-pong slowdown, mutex at fraction 1 (issue 4)",
            slow("mutex", 0.02),
        );
        row(
            "Redis 7 from Debian (`--io-threads 2`, `redis-benchmark -c 50 -t set,get`), all \
             profiles at default rates: throughput ≥ 0.98 of the same run without the agent \
             (issue 13)",
            self.redis.as_ref().and_then(Redis::budget),
        );
        row(
            "≤800 ns BPF time per target hand-off, all profiles at default rates (issue 13)",
            self.slowdown.as_ref().and_then(|sl| {
                let c = &self.mode_figures("all")?.instrumented;
                if c.prog_runs() == 0 {
                    return None;
                }
                let raw = c.prog_ns() as f64 / sl.handoffs as f64;
                let runs = c.prog_runs() as f64 / sl.handoffs as f64;
                let text = match self.floor_ns() {
                    Some(floor) => format!(
                        "{raw:.0} ns per hand-off (this decides); {:.0} ns with an empty \
                         program's {floor:.0} ns (the statistics' own cost) taken off each of \
                         the {runs:.1} program runs per hand-off",
                        raw - floor * runs
                    ),
                    None => format!(
                        "{raw:.0} ns per hand-off ({runs:.1} program runs; the empty-program \
                         floor is measured by the bpftrace part, not run here)"
                    ),
                };
                Some((text, raw <= 800.0))
            }),
        );
        row(
            "≤1 µs BPF time per target context switch, incl. stacks",
            self.mode_figures("all_r1").and_then(|m| {
                let (ns, cnt) = *m.instrumented.progs.get("sched_switch")?;
                let per = ns as f64 / cnt.max(1) as f64;
                let switches = m.instrumented.progs.get("sched_switch")?.1;
                let total = m.instrumented.prog_ns() as f64 / switches.max(1) as f64;
                Some((
                    format!(
                        "{per:.0} ns per sched_switch run; {total:.0} ns of all programs per switch"
                    ),
                    per <= 1000.0,
                ))
            }),
        );
        // The non-target run's per-event programs (the CPU sampler runs at its frequency, not
        // per event): (name, ns per run).
        let per_event = || -> Option<Vec<(String, f64)>> {
            let c = &self.nontarget.as_ref()?.instrumented;
            let v: Vec<_> = c
                .progs
                .iter()
                .filter(|(_, (_, runs))| *runs as f64 / c.window_s >= 1000.0)
                .map(|(k, (ns, runs))| (k.clone(), *ns as f64 / *runs as f64))
                .collect();
            (!v.is_empty()).then_some(v)
        };
        row(
            "≤50 ns BPF time per non-target event",
            per_event().and_then(|v| {
                let (name, per) = v.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
                Some(match self.floor_ns() {
                    Some(floor) => (
                        format!(
                            "worst {per:.0} ns ({name}): {:.0} ns above an empty program's \
                             {floor:.0} ns (the statistics' own cost)",
                            per - floor
                        ),
                        per - floor <= 50.0,
                    ),
                    None => (format!("worst {per:.0} ns ({name})"), per <= 50.0),
                })
            }),
        );
        row(
            "non-target syscall/switch: BPF time within 10 ns of an empty program (issue 13)",
            per_event().map(|v| {
                let Some(floor) = self.floor_ns() else {
                    let worst = v.iter().map(|x| x.1).fold(0.0, f64::max);
                    return (
                        format!(
                            "not measured in this run (the empty program is the bpftrace \
                             part's; worst non-target program {worst:.0} ns per run)"
                        ),
                        false,
                    );
                };
                let above: Vec<String> = v
                    .iter()
                    .map(|(name, per)| format!("{name} {:+.0} ns", per - floor))
                    .collect();
                let worst = v.iter().map(|x| x.1 - floor).fold(f64::MIN, f64::max);
                (
                    format!(
                        "{} against an empty program's {floor:.0} ns per run",
                        above.join(", ")
                    ),
                    worst <= 10.0,
                )
            }),
        );
        row(
            "agent ≤2% of one core (attach, during the capture)",
            self.slowdown.as_ref().map(|sl| {
                let (worst, label) = sl
                    .modes
                    .iter()
                    .filter(|m| !m.mode.serve)
                    .map(|m| (m.pingpong.median_cost(Cost::cpu_share), m.mode.key))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .unwrap_or((0.0, ""));
                (
                    format!("worst {:.1}% ({label}, ping-pong)", worst * 100.0),
                    worst <= 0.02,
                )
            }),
        );
        row(
            "agent ≤64 MiB RSS (attach)",
            self.slowdown.as_ref().map(|sl| {
                let (worst, label) = sl
                    .modes
                    .iter()
                    .filter(|m| !m.mode.serve)
                    .map(|m| (m.pingpong.median_cost(|c| c.maxrss_kib as f64), m.mode.key))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .unwrap_or((0.0, ""));
                (
                    format!("peak {:.0} MiB ({label})", worst / 1024.0),
                    worst <= 64.0 * 1024.0,
                )
            }),
        );
        row(
            "zero drops at 200k events/s",
            self.stress.as_ref().map(|st| {
                let clean = |r: &StressRow| {
                    r.drops() == 0 && r.no_user_stack_share().is_none_or(|v| v < 0.005)
                };
                let best = st
                    .rows
                    .iter()
                    .filter(|r| clean(r))
                    .map(|r| r.cost.prog_runs() as f64 / r.cost.window_s)
                    .fold(0.0, f64::max);
                let mut text = format!(
                    "{:.0}k BPF events/s with 0 drops (the highest clean rate reached here)",
                    best / 1000.0
                );
                let dropped: Vec<&str> = st
                    .rows
                    .iter()
                    .filter(|r| !clean(r))
                    .map(|r| r.label.as_str())
                    .collect();
                if !dropped.is_empty() {
                    let _ = write!(text, "; drops in: {}", dropped.join(", "));
                }
                if let Some(v) = st
                    .overflow
                    .as_ref()
                    .and_then(StressRow::no_user_stack_share)
                    .filter(|&v| v >= 0.005)
                {
                    let _ = write!(
                        text,
                        "; past 16384 distinct user stacks {:.0}% of off-CPU time lost its user \
                         stack{}",
                        v * 100.0,
                        if st.overflow.as_ref().is_some_and(|o| o.drops() == 0) {
                            " without being counted"
                        } else {
                            ""
                        }
                    );
                }
                (text, best >= 200_000.0)
            }),
        );
        row(
            "attach to first sample ≤1 s",
            self.latency.as_ref().and_then(|l| {
                let (_, runs) = l.runs.iter().find(|(k, _)| *k == "all")?;
                let v = median(&runs.iter().map(|r| r.first_sample_s).collect::<Vec<_>>());
                Some((format!("{v:.2} s (all profiles, median)"), v <= 1.0))
            }),
        );
        row(
            "thread dump of 1000 threads < 1 s (issue 5)",
            self.dump.as_ref().and_then(|d| {
                let r = d.rows.iter().find(|r| r.threads == 1000)?;
                let v = median(&r.times);
                Some((format!("{v:.2} s (median)"), v < 1.0))
            }),
        );
        let _ = writeln!(s);
    }

    fn render_slowdown(&self, s: &mut String) {
        let Some(sl) = &self.slowdown else { return };
        let _ = writeln!(s, "### 1. Target slowdown\n");
        let _ = writeln!(
            s,
            "Each cell: the median wall-time slowdown (range over the pairs; baseline median \
             time), then the median change of the workload's CPU time (user+system of the \
             process from `wait4`, which includes the BPF programs run in its threads' context). \
             Positive: slower or costlier with the agent. The ping-pong runs in two regimes: \
             its threads on two CPUs (about {:.0}k hand-offs/s here; every hand-off wakes the \
             other, often idle, CPU, whose wake-up latency in this VM dominates and partly \
             hides the agent's cost) and on one CPU (about {:.0}k hand-offs/s; a hand-off is a \
             direct switch, so the agent's cost per switch shows fully). Unpinned, the \
             scheduler moves between the two{}.\n",
            sl.handoffs as f64
                / median(
                    &sl.modes.first().map_or(vec![], |m| m
                        .pingpong
                        .base
                        .iter()
                        .map(|r| r.wall)
                        .collect())
                )
                / 1000.0,
            sl.one_cpu_handoffs as f64
                / median(
                    &sl.modes.first().map_or(vec![], |m| m
                        .one_cpu
                        .base
                        .iter()
                        .map(|r| r.wall)
                        .collect())
                )
                / 1000.0,
            sl.modes
                .iter()
                .find_map(|m| m.unpinned.as_ref())
                .map_or(String::new(), |p| format!(
                    " (measured for {}: about {:.0}k hand-offs/s, and the run times jump \
                     between the regimes, so its range is wide)",
                    UNPINNED_MODES.join(" and "),
                    sl.unpinned_handoffs as f64
                        / median(&p.base.iter().map(|r| r.wall).collect::<Vec<_>>())
                        / 1000.0
                )),
        );
        let _ = writeln!(
            s,
            "| mode | ping-pong, two CPUs | ping-pong, one CPU | ping-pong, unpinned | CPU-bound |\n|---|---|---|---|---|"
        );
        let both = |p: &Pairs| format!("{}; CPU {:+.1}%", p.cell(), p.cpu_slowdown() * 100.0);
        for m in &sl.modes {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                m.mode.label,
                both(&m.pingpong),
                both(&m.one_cpu),
                m.unpinned.as_ref().map_or("—".into(), both),
                m.cpu_bound.as_ref().map_or("—".into(), both),
            );
        }
        if sl.serve_missing {
            let _ = writeln!(
                s,
                "| serve idle | n/a: this agent has no `serve` subcommand | n/a | — | n/a |"
            );
        }
        let _ = writeln!(s);
    }

    fn render_bpf(&self, s: &mut String) {
        let Some(sl) = &self.slowdown else { return };
        let _ = writeln!(s, "### 2. BPF time per event\n");
        let _ = writeln!(
            s,
            "From `bpf_stats_enabled` (run_time_ns / run_cnt of each program over the workload's \
             run, one extra run per mode with the statistics on; they add two clock reads per \
             run, included here{}). Target: the ping-pong is the agent's target (a program run \
             may still be for another task, e.g. the idle task a target switches to). \
             \"per hand-off\": all programs' time divided by the {} token hand-offs.\n",
            self.floor_ns().map_or(String::new(), |f| format!(
                ": an empty program measures {f:.0} ns per run this way"
            )),
            sl.handoffs
        );
        let _ = writeln!(s, "| mode | program | runs/s | ns/run |\n|---|---|---|---|");
        for m in &sl.modes {
            let c = &m.instrumented;
            c.prog_rows(&format!("{} | ", m.mode.key), s);
            let _ = writeln!(
                s,
                "| {} | **all programs, per hand-off** | {:.0} hand-offs/s | **{:.0}** ({:.1}% of a hand-off's wall time) |",
                m.mode.key,
                sl.handoffs as f64 / c.window_s,
                c.prog_ns() as f64 / sl.handoffs as f64,
                c.prog_ns() as f64 / 1e9 / c.window_s * 100.0
            );
        }
        let cpu_rows: Vec<_> = sl
            .modes
            .iter()
            .filter_map(|m| Some((m.mode.key, m.instrumented_cpu.as_ref()?)))
            .collect();
        if !cpu_rows.is_empty() {
            let _ = writeln!(
                s,
                "\nCPU-bound workload (cpu_sample on a target's busy threads):\n\n| mode | program | runs/s | ns/run |\n|---|---|---|---|"
            );
            for (key, c) in cpu_rows {
                c.prog_rows(&format!("{key} | "), s);
            }
        }
        if let Some(n) = &self.nontarget {
            let _ = writeln!(
                s,
                "\nNon-target events: the agent (all profiles, every event) attached to an idle \
                 process while the one-CPU ping-pong, not its target, runs. Its slowdown: \
                 {} wall, {} CPU.\n\n| program | runs/s | ns/run |\n|---|---|---|",
                n.pairs.cell(),
                n.pairs.cpu_cell()
            );
            n.instrumented.prog_rows("", s);
        }
        let _ = writeln!(s);
    }

    fn render_agent_cost(&self, s: &mut String) {
        let Some(sl) = &self.slowdown else { return };
        let _ = writeln!(s, "### 3. Agent CPU and memory\n");
        let _ = writeln!(
            s,
            "Medians over the pairs' agent runs. \"During capture\": CPU of all the agent's \
             threads while the workload runs (`/proc/PID/task/*/schedstat`), as a share of \
             one core. \"Whole run\": user+system CPU of the agent process from start to exit \
             (load and verify the programs, capture, read maps, symbolize, write), and its \
             peak RSS (`getrusage` of the child). RSS during capture: VmRSS at the workload's \
             end.\n"
        );
        let _ = writeln!(
            s,
            "| mode | workload | CPU during capture (% of one core) | CPU whole run (s) | RSS during capture (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|---|"
        );
        for m in &sl.modes {
            for (name, p) in [
                ("ping-pong", Some(&m.pingpong)),
                ("CPU-bound", m.cpu_bound.as_ref()),
            ] {
                let Some(p) = p else { continue };
                let _ = writeln!(
                    s,
                    "| {} | {name} | {:.1} | {:.2} | {:.1} | {:.1} |",
                    m.mode.key,
                    p.median_cost(Cost::cpu_share) * 100.0,
                    p.median_cost(|c| c.total_cpu_s),
                    p.median_cost(|c| c.rss_kib as f64) / 1024.0,
                    p.median_cost(|c| c.maxrss_kib as f64) / 1024.0
                );
            }
        }
        let _ = writeln!(s);
    }

    fn render_stress(&self, s: &mut String) {
        let Some(st) = &self.stress else { return };
        let _ = writeln!(s, "### 4. Event rates and drops\n");
        let _ = writeln!(
            s,
            "All profiles, every event recorded (`--block-rate 1 --mutex-fraction 1`), more \
             ping-pong pairs for more events, unpinned (the scheduler may keep a pair on one \
             CPU, where hand-offs are fastest); the last row pinned, with 2^15 call paths. \"BPF events/s\": runs of the agent's programs \
             per second (scheduler and syscall events it handles). Drops: the agent's own \
             `losses:` line plus a full lock table. From `offcpu.folded`: \"no user stack\", \
             the share of off-CPU time whose stack has no user frame at all (the workload's \
             threads always block from user code, so the user part was lost); \"after thread \
             exit\", the share charged to stacks in `do_task_dead` (a thread's last switch-out, \
             after which it never runs again).\n"
        );
        let _ = writeln!(
            s,
            "| load | BPF events/s | target switch-outs/s | hand-offs/s (baseline → agent) | target slowdown (wall, CPU) | drops counted | no user stack | after thread exit |\n|---|---|---|---|---|---|---|---|"
        );
        for r in st.rows.iter().chain(&st.overflow) {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.0} → {:.0} | {:+.1}%, {:+.1}% | {} | {} | {} |",
                r.label,
                r.cost.prog_runs() as f64 / r.cost.window_s,
                r.switch_outs() as f64 / r.cost.window_s,
                r.handoffs as f64 / r.base.wall,
                r.handoffs as f64 / r.with.wall,
                (r.with.wall / r.base.wall - 1.0) * 100.0,
                (r.with.cpu / r.base.cpu - 1.0) * 100.0,
                r.drops(),
                pct(r.no_user_stack_share()),
                pct(r.after_exit_share())
            );
        }
        for r in st.rows.iter().filter(|r| r.drops() > 0) {
            let _ = writeln!(s, "\n{}: {}", r.label, losses_text(&r.cost.summary));
        }
        if let Some(o) = &st.overflow {
            let line = losses_text(&o.cost.summary);
            let per = o
                .cost
                .progs
                .get("sched_switch")
                .map_or(0.0, |(ns, c)| *ns as f64 / (*c).max(1) as f64);
            let _ = writeln!(
                s,
                "\nWith 32768 distinct call paths the agent's summary.json counted: {line}; \
                 sched_switch took {per:.0} ns per run at that stack depth.\n"
            );
        }
    }

    fn render_symbolize(&self, s: &mut String) {
        let Some(sy) = &self.symbolize else { return };
        let f = |k: &str| sy.figures.get(k).cloned().unwrap_or_else(|| "?".into());
        let _ = writeln!(s, "### 5. Symbolization\n");
        let _ = writeln!(
            s,
            "A generated C program with {BIG_FUNCTIONS} functions (each with an inlined helper; \
             `gcc -O1 -g`, compiled in {:.1} s or reused, not checked in), a CPU profile of {} samples \
             whose stacks cover {} unique user frames plus {} kernel frames, symbolized by \
             `agent::symbolize::Symbolizer` from `agent::unwind::maps::MapsCache` as `agent attach` \
             does (`agent/examples/bench_symbolize.rs`). Medians of {} runs.\n",
            sy.compile_s,
            f("samples"),
            f("user_frames"),
            f("kernel_frames"),
            f("runs")
        );
        let _ = writeln!(
            s,
            "| cold (new symbolizer) | warm (same symbolizer again) | maps cache refresh | pprof encode | locations resolved | inlined frames | peak RSS of the bench |\n|---|---|---|---|---|---|---|"
        );
        let rss: f64 = f("peak_rss_kib").parse().unwrap_or(0.0);
        let _ = writeln!(
            s,
            "| {} ms | {} ms | {} ms | {} ms ({} bytes) | {} of {} | {} | {:.0} MiB |\n",
            f("cold_ms"),
            f("warm_ms"),
            f("maps_ms"),
            f("pprof_encode_ms"),
            f("pprof_bytes"),
            f("resolved"),
            f("locations"),
            f("inlined_lines"),
            rss / 1024.0
        );
    }

    fn render_latency(&self, s: &mut String) {
        let Some(l) = &self.latency else { return };
        let _ = writeln!(s, "### 6. Attach to first sample\n");
        let _ = writeln!(
            s,
            "`agent attach` started on a running ping-pong; its fd table and the fdinfo of its \
             program fds polled every 5 ms. \"Programs loaded\": when the last program fd \
             appeared (BPF_PROG_LOAD returns after the verifier). First sample: the first run \
             of any of its programs. Medians of the runs.\n"
        );
        let _ = writeln!(
            s,
            "| profiles | maps created | programs loaded | attached (log line) | first sample |\n|---|---|---|---|---|"
        );
        for (key, runs) in &l.runs {
            let med = |f: &dyn Fn(&AttachTimeline) -> Option<f64>| {
                let v: Vec<f64> = runs.iter().filter_map(f).collect();
                if v.is_empty() {
                    "?".to_string()
                } else {
                    format!("{:.2} s", median(&v))
                }
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | **{}** |",
                mode(key).label,
                med(&|r| Some(r.maps_done_s)),
                med(&|r| r.progs.last().map(|p| p.0)),
                med(&|r| r.attached_s),
                med(&|r| Some(r.first_sample_s))
            );
        }
        if let Some((_, runs)) = l.runs.iter().find(|(k, _)| *k == "all")
            && let Some(r) = runs.first()
        {
            let _ = writeln!(
                s,
                "\nPrograms in load order (all profiles, first run): verified instructions \
                 (fdinfo `verified_insns`) and the time since the previous fd appeared.\n\n\
                 | program | verified insns | time to load |\n|---|---|---|"
            );
            let mut prev = r.maps_done_s;
            for (t, id, insns) in &r.progs {
                let name = r.names.get(id).map_or("?", String::as_str);
                let _ = writeln!(s, "| {name} | {insns} | {:.3} s |", t - prev);
                prev = *t;
            }
        }
        if let Some(st) = &l.strace {
            let _ = writeln!(
                s,
                "\n`strace -f -T -e trace=bpf` of one attach (all profiles): time inside each \
                 bpf() command (strace adds some µs per call).\n\n\
                 | bpf command | program | calls | seconds |\n|---|---|---|---|"
            );
            let mut rows: Vec<_> = st.iter().collect();
            rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
            for ((cmd, name), (calls, secs)) in rows.iter().take(14) {
                let _ = writeln!(s, "| {cmd} | {name} | {calls} | {secs:.3} |");
            }
        }
        let _ = writeln!(s);
    }

    fn render_bpftrace(&self, s: &mut String) {
        let Some(b) = &self.bpftrace else { return };
        let _ = writeln!(s, "### 7. Reference: bpftrace\n");
        if let Some(why) = &b.missing {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return;
        }
        let _ = writeln!(
            s,
            "bpftrace {} aggregating off-CPU time by (kernel stack, user stack) of the \
             ping-pong's threads on `sched_switch` (script below), on the one-CPU ping-pong, \
             same pairs protocol, against the agent's `offcpu only` on the same workload \
             (which also classifies waits and unwinds user stacks with DWARF CFI; bpftrace's \
             `ustack` follows frame pointers). BPF ns per run: from the runs with statistics \
             (bpftrace on one CPU, the agent on two).\n",
            probe(Command::new("bpftrace").arg("--version"))
                .unwrap_or_default()
                .trim()
                .trim_start_matches("bpftrace ")
        );
        let _ = writeln!(
            s,
            "| tracer | ping-pong slowdown | CPU during capture | peak RSS | ready after | BPF ns per run (sched_switch) |\n|---|---|---|---|---|---|"
        );
        let agent_off = self.mode_figures("offcpu");
        if let (Some(p), Some(c)) = (&b.pairs, &b.instrumented) {
            let per = c
                .progs
                .values()
                .max_by_key(|v| v.1)
                .map_or(0.0, |(ns, n)| *ns as f64 / (*n).max(1) as f64);
            let _ = writeln!(
                s,
                "| bpftrace | {} | {:.1}% | {:.0} MiB | {:.2} s | {per:.0} |",
                p.cell(),
                p.median_cost(Cost::cpu_share) * 100.0,
                p.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                p.median_cost(|c| c.ready_s)
            );
        }
        if let Some(m) = agent_off {
            let per = m
                .instrumented
                .progs
                .get("sched_switch")
                .map_or(0.0, |(ns, n)| *ns as f64 / (*n).max(1) as f64);
            let _ = writeln!(
                s,
                "| agent, offcpu only | {} | {:.1}% | {:.0} MiB | {:.2} s | {per:.0} |",
                m.one_cpu.cell(),
                m.one_cpu.median_cost(Cost::cpu_share) * 100.0,
                m.one_cpu.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                m.one_cpu.median_cost(|c| c.ready_s)
            );
        }
        if let Some(p) = &b.hooks {
            let _ = writeln!(
                s,
                "| bpftrace, empty programs on sched_switch, sched_waking, sched_wakeup_new | {} | {:.1}% | {:.0} MiB | {:.2} s | — |",
                p.cell(),
                p.median_cost(Cost::cpu_share) * 100.0,
                p.median_cost(|c| c.maxrss_kib as f64) / 1024.0,
                p.median_cost(|c| c.ready_s)
            );
        }
        let _ = writeln!(
            s,
            "\nThe empty programs do nothing but run: what any tracer of these three events \
             pays on this regime before it records anything (perf tracepoints, which also fill \
             an event record; the agent's BTF tracepoints do not, and its own floor is the \
             non-target figure in section 2).\n\n```\n{}```\n\n```\n{}```\n",
            BPFTRACE_OFFCPU_TEXT, BPFTRACE_HOOKS_TEXT
        );
    }

    fn render_dump(&self, s: &mut String) {
        let Some(d) = &self.dump else { return };
        let _ = writeln!(s, "### Thread dump time (`agent dump`)\n");
        if let Some(why) = &d.missing {
            let _ = writeln!(s, "Not measured: {why}.\n");
            return;
        }
        let _ = writeln!(
            s,
            "`agent dump --pid N` (wall time from start to exit, text output) on \
             `tests/workloads/dump_many.c` with N waiting threads and one counting thread; \
             \"progress\": the counting thread's rate while dumps run back to back, relative \
             to its rate just before (the process is not stopped).\n\n\
             | threads | median | range | progress |\n|---|---|---|---|"
        );
        for r in &d.rows {
            let (lo, hi) = min_max(&r.times);
            let _ = writeln!(
                s,
                "| {} | {:.3} s | {lo:.3} .. {hi:.3} s | {} |",
                r.threads,
                median(&r.times),
                r.progress
                    .map_or("?".into(), |p| format!("{:.0}%", p * 100.0))
            );
        }
        let _ = writeln!(s);
    }

    fn render_redis(&self, s: &mut String) {
        let Some(r) = &self.redis else { return };
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

/// Replaces this command's block in `path` (or appends it), keeping everything else.
fn write_block(path: &Path, block: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(MARK_BEGIN), old.find(MARK_END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            block.trim_end(),
            &old[e + MARK_END.len()..]
        ),
        _ if old.trim().is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{}\n\n{block}", old.trim_end()),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.1}%", v * 100.0))
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_sum_every_drop_and_lost_stack_and_nothing_else() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"counters": {"user_stack_lost": 1, "stack_collision": 3, "lock_table_full": 2,
                "cpu_samples": 99, "user_stack_walked": 7}}"#,
        )
        .unwrap();
        assert_eq!(losses(&v), 1 + 3 + 2);
        assert_eq!(counter(&v, "cpu_samples"), 99);
        assert_eq!(losses(&serde_json::Value::Null), 0);
        assert_eq!(
            losses_text(&v),
            "user_stack_lost 1, stack_collision 3, lock_table_full 2"
        );
    }

    #[test]
    fn fdinfo_and_strace() {
        let info = "pos:\t0\nprog_type:\t7\nprog_id:\t646\nrun_time_ns:\t1200\nrun_cnt:\t3\nverified_insns:\t264862\n";
        let (id, st) = parse_prog_fdinfo(info).unwrap();
        assert_eq!(
            (id, st.run_time_ns, st.run_cnt, st.verified_insns),
            (646, 1200, 3, 264862)
        );
        let log = "123 bpf(BPF_PROG_LOAD, {prog_type=BPF_PROG_TYPE_TRACING, insn_cnt=5, prog_name=\"sched_switch\", x=1}, 148) = 12 <1.500000>\n\
                   123 bpf(BPF_MAP_UPDATE_ELEM, {map_fd=3, key=0x1}, 32) = 0 <0.000010>\n\
                   123 bpf(BPF_MAP_UPDATE_ELEM, {map_fd=3, key=0x2}, 32) = 0 <0.000020>\n";
        let m = parse_strace_bpf(log);
        assert_eq!(
            m[&("BPF_PROG_LOAD".into(), "sched_switch".into())],
            (1, 1.5)
        );
        let (n, t) = m[&("BPF_MAP_UPDATE_ELEM".into(), String::new())];
        assert_eq!(n, 2);
        assert!((t - 0.00003).abs() < 1e-9);
    }

    #[test]
    fn block_is_replaced_and_the_rest_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("B.md");
        std::fs::write(&p, "# Benchmarks\n\n## Thread dumps\nkeep me\n").unwrap();
        write_block(&p, &format!("{MARK_BEGIN}\nfirst\n{MARK_END}\n")).unwrap();
        write_block(&p, &format!("{MARK_BEGIN}\nsecond\n{MARK_END}\n")).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("keep me") && text.contains("second") && !text.contains("first"));
        assert_eq!(text.matches(MARK_BEGIN).count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\"\n\
                   \"SET\",\"14892.03\",\"3.242\",\"0.136\"\n\
                   \"GET\",\"7426.66\",\"6.649\",\"0.120\"\n";
        let r = parse_redis_csv(csv);
        assert_eq!(r.len(), 2);
        assert_eq!((r["SET"], r["GET"]), (14892.03, 7426.66));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
    }
}
