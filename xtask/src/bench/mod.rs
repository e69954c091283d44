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
//!
//! Each measurement is a module with `measure(&Ctx) -> Result<Figures>` and
//! `Figures::render`: [`slowdown`] (parts 1-3 and the non-target cost), [`stress`], [`symbolize`],
//! [`attach`] (attach to first sample), [`bpftrace`] (the floor), [`dump`], [`redis`]. [`run`] is
//! the kit they share (workloads, tracers, interleaved pairs), [`report`] the budgets and the
//! block written to BENCHMARKS.md. The root-free hot paths (CFI compilation, pprof encoding,
//! symbolization) are criterion benches: `cargo bench -p agent` (agent/benches/hot_paths.rs).

mod attach;
mod bpftrace;
mod dump;
mod golang;
mod node;
mod redis;
mod report;
mod run;
mod slowdown;
mod stress;
mod symbolize;

use attach::Latency;
use bpftrace::Bpftrace;
use dump::Dump;
use node::Node;
use redis::Redis;
use report::*;
use run::*;
use slowdown::{ModeFigures, Nontarget, Slowdown};
use stress::{Stress, StressRow};
use symbolize::Symbolize;

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
    /// Go programs: goroutine dump time (10k, 100k), and the goroutine block and mutex
    /// profiles' cost on a channel-heavy program next to Go's own profiling at rate 1.
    Go,
    /// Every fuzz target for 60 s (10 with --quick); the figures go to RELIABILITY.md.
    Fuzz,
    /// `serve --all` over 500 processes in 50 containers, and concurrent profile windows.
    Node,
}

const ALL_PARTS: [Part; 11] = [
    Part::Slowdown,
    Part::Redis,
    Part::Nontarget,
    Part::Stress,
    Part::Symbolize,
    Part::Latency,
    Part::Bpftrace,
    Part::Dump,
    Part::Go,
    Part::Node,
    Part::Fuzz,
];

const MARK_BEGIN: &str =
    "<!-- cargo xtask bench: begin. Generated; edit outside these markers, not inside. -->";
const MARK_END: &str = "<!-- cargo xtask bench: end -->";

/// The workloads' nice value (see `Workload::start`).
const WORKLOAD_NICE: libc::c_int = -10;

/// Workload flags, as the test workloads are built.
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
            Part::Slowdown => slowdown::measure(&ctx).map(|x| r.slowdown = Some(x)),
            Part::Nontarget => slowdown::measure_nontarget(&ctx).map(|x| r.nontarget = Some(x)),
            Part::Stress => stress::measure(&ctx).map(|x| r.stress = Some(x)),
            Part::Symbolize => symbolize::measure(&ctx).map(|x| r.symbolize = Some(x)),
            Part::Latency => attach::measure(&ctx).map(|x| r.latency = Some(x)),
            Part::Bpftrace => bpftrace::measure(&ctx).map(|x| r.bpftrace = Some(x)),
            Part::Dump => dump::measure(&ctx).map(|x| r.dump = Some(x)),
            Part::Go => golang::measure(&ctx).map(|x| r.go = Some(x)),
            Part::Redis => redis::measure(&ctx).map(|x| r.redis = Some(x)),
            Part::Node => node::measure(&ctx).map(|x| r.node = Some(x)),
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

/// `tests/workloads/<name>` built into `target/workloads` (the test kit's build).
fn compile_workload(name: &str) -> Result<PathBuf> {
    stallscope_testkit::workloads::build(name)
}

/// A generated or bench-only C program, built as the workloads are.
fn gcc(src: &Path, bin: &Path) -> Result<()> {
    stallscope_testkit::workloads::build_c(src, bin, &[], &[])
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
// Reading the agent's summary.json (the test kit's reader)

/// A run's `summary.json` (docs/summary-schema.md); `Null` when it wrote none (serve, bpftrace)
/// or it could not be read (said on stderr).
fn summary_json(dir: Option<&Path>) -> serde_json::Value {
    let Some(dir) = dir else {
        return serde_json::Value::Null;
    };
    stallscope_testkit::summary::read(dir).unwrap_or_else(|e| {
        eprintln!("warning: {e:#}");
        serde_json::Value::Null
    })
}

/// One counter of a summary.json by name (0 when absent).
fn counter(summary: &serde_json::Value, name: &str) -> u64 {
    stallscope_testkit::summary::counter(summary, name).unwrap_or(0)
}

use stallscope_testkit::summary::{losses, losses_text};

#[cfg(test)]
mod tests {
    use super::*;
    use attach::parse_strace_bpf;
    use redis::parse_redis_csv;

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
