//! Command-line interface (clap). Parsing only: the work is done in `commands/`. The rates
//! every profiling command shares are [`Rates`], one struct from here to the kernel.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::dump::DumpFormat;
use crate::model::ProfileKind;
use crate::options::{Rates, parse_nanos, shown, too_long};

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "Stallscope: where an unmodified Linux process spends its time (CPU, off-CPU, locks, I/O, run queue)",
    long_about = None,
)]
pub struct Cli {
    /// More output: -v shows the BPF programs' own diagnostics and the agent's steps, -vv more.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Profile one running process for a while and write pprof files, folded stacks and a summary.
    Attach(AttachArgs),
    /// Print a thread dump of a running process without stopping it: every thread's state, time
    /// in state, user and kernel stack, and pthread-mutex deadlocks (reported first).
    Dump(DumpArgs),
    /// Incident capture: one bounded window, one bundle with CPU, off-CPU, block and mutex
    /// profiles, flame graphs, thread dumps at the start and end, process facts and a
    /// summary.md that names the most likely culprit.
    Capture(CaptureArgs),
    /// Run until stopped, serving Prometheus metrics (/metrics) of the target processes and
    /// Go-style profiles of any process (/debug/pprof/...) over HTTP.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs --auth-token-file.
    #[arg(long, default_value = "127.0.0.1:6060")]
    pub listen: std::net::SocketAddr,

    /// Process to export metrics for (repeatable). Profiles can be taken of any process.
    #[arg(short, long, value_parser = parse_pid)]
    pub pid: Vec<u32>,

    /// Export metrics for every process (up to --max-targets), following new ones.
    #[arg(long)]
    pub all: bool,

    /// Most processes tracked at once (bounds the metrics' cardinality).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_targets: u32,

    /// Processes of one container with series of their own in /metrics (the first seen keep
    /// them for their life; a place an exit frees goes to the busiest summed process); the
    /// container's others are summed into one pid="other" series, and
    /// stallscope_processes_summed counts them.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_processes_per_container: u32,

    /// File holding a token: every request must then carry `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// How often the continuous metrics are sampled from /proc (at least 100ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Longest profile a request may ask for (`seconds` above it is capped), in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub max_seconds: u64,

    /// Profile windows open at the same time, for different targets (one probe attachment
    /// serves them all); more get 429 Too Many Requests.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_concurrent_profiles: u32,

    /// Most HTTP connections open at once. A connection beyond it is answered at once with
    /// 503 Service Unavailable (Retry-After: 1) and closed, and counted in
    /// stallscope_profile_rejected_total{reason="connections"}.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections: u32,

    /// Time a client has to send a request's line and headers, counted from when its
    /// connection opens or its previous response ends: a slower client (or a keep-alive
    /// connection idle for that long) is disconnected. 100ms to 10m.
    #[arg(long, default_value = "10s", value_parser = parse_http_timeout)]
    pub header_timeout: Duration,

    /// Longest time a request may take before it is answered 503 Service Unavailable; a
    /// profile request gets its `seconds` plus this. 100ms to 10m.
    #[arg(long, default_value = "30s", value_parser = parse_http_timeout)]
    pub request_timeout: Duration,

    #[command(flatten)]
    pub rates: Rates,

    /// Measure the BPF programs' run time during profile windows (BPF_ENABLE_STATS, shown as
    /// stallscope_bpf_program_run_seconds_total). While a window runs, every BPF program on
    /// the machine then pays two clock reads per run.
    #[arg(long)]
    pub bpf_stats: bool,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Length of the window, e.g. 30s. Ctrl-C ends it early and still writes a complete bundle.
    #[arg(short, long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Directory for the bundle (created if missing).
    #[arg(short, long, default_value = "capture")]
    pub output: PathBuf,

    /// Also pack the bundle into this .tar.gz.
    #[arg(long, value_name = "FILE")]
    pub archive: Option<PathBuf>,

    #[command(flatten)]
    pub rates: Rates,

    #[command(flatten)]
    pub labels: ThreadLabels,
}

/// How profiles name threads, the same for `attach` and `capture`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ThreadLabels {
    /// Leave the `tid` label out of the profiles (smaller files: samples of threads with one
    /// name merge). The `thread` label (the thread's name) stays.
    #[arg(long)]
    pub no_tid_label: bool,

    /// In the .folded files, put the thread's name as the root frame (a flame graph per
    /// thread). Off-CPU files then start with `thread;wait_class;...`.
    #[arg(long)]
    pub folded_thread_root: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Process to dump (every thread of it); or a group (--children, --cgroup, --container,
    /// --pod): every process of it, one after the other.
    #[command(flatten)]
    pub target: TargetArgs,

    /// Output format: text (like a Go goroutine dump) or json (schema in docs/dump-schema.md).
    #[arg(long, value_enum, default_value_t = DumpFormat::Text)]
    pub format: DumpFormat,

    /// Text detail, like Go's debug=N: 2 prints every thread, 1 groups threads with identical
    /// state and stack, with counts.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub debug: u8,

    /// Write the dump to DIR/dump.txt (or DIR/dump.json) instead of printing it.
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// For a Go process: dump its OS threads, not its goroutines (the text dump of a Go
    /// program shows its goroutines by default; the JSON dump is always of threads).
    #[arg(long)]
    pub threads: bool,
}

/// Which processes a command is about: one (`--pid`), or a group.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Process to profile (every thread of it, including threads it starts during the capture).
    #[arg(short, long, value_parser = parse_pid,
          required_unless_present_any = ["cgroup", "container", "pod"])]
    pub pid: Option<u32>,

    /// With --pid: its descendants too, and every process they fork during the window (from
    /// the fork on). Samples carry `pid` and `comm` labels.
    #[arg(long, requires = "pid")]
    pub children: bool,

    /// Every process in this cgroup or below it: a path from the hierarchy's root as
    /// /proc/PID/cgroup shows it (/kubepods.slice/...), or a directory under /sys/fs/cgroup.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["pid", "container", "pod"])]
    pub cgroup: Option<String>,

    /// Every process of the container with this id (or id prefix, at least 4 hex digits).
    #[arg(long, value_name = "ID", value_parser = crate::targets::parse_container,
          conflicts_with_all = ["pid", "pod"])]
    pub container: Option<String>,

    /// Every process of this pod on this node: its UID, or NAMESPACE/NAME (names are read
    /// from the kubelet's /var/log/pods).
    #[arg(long, value_name = "UID|NAMESPACE/NAME", value_parser = crate::targets::parse_pod,
          conflicts_with = "pid")]
    pub pod: Option<crate::targets::PodRef>,
}

impl TargetArgs {
    /// The selector the arguments name (a `--cgroup` directory is checked to exist).
    pub fn selector(&self) -> Result<crate::targets::Selector, crate::error::Error> {
        use crate::targets::Selector;
        if let Some(pid) = self.pid {
            return Ok(if self.children {
                Selector::Children(pid)
            } else {
                Selector::Pid(pid)
            });
        }
        if let Some(path) = &self.cgroup {
            return crate::targets::cgroup_selector(path).map_err(crate::error::Error::Usage);
        }
        if let Some(id) = &self.container {
            return Ok(Selector::Container(id.clone()));
        }
        if let Some(pod) = &self.pod {
            return Ok(Selector::Pod(pod.clone()));
        }
        Err(crate::error::Error::Usage(
            "name what to profile: --pid N (with --children for its descendants), --cgroup \
             PATH, --container ID or --pod UID|NAMESPACE/NAME"
                .into(),
        ))
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// How long to capture, e.g. 10s, 1m, 500ms. Ctrl-C ends the capture early and still writes
    /// what was collected.
    #[arg(short, long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Profiles to take, comma separated: cpu, offcpu, block, mutex.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    pub profile: Vec<ProfileKind>,

    #[command(flatten)]
    pub rates: Rates,

    #[command(flatten)]
    pub labels: ThreadLabels,

    /// Ignore off-CPU intervals shorter than this (ns or a duration such as 10us).
    #[arg(long = "offcpu-min", default_value = "0", value_parser = parse_nanos)]
    pub offcpu_min_ns: u64,

    /// Directory for the output files (created if missing).
    #[arg(short, long, default_value = "out")]
    pub output: PathBuf,

    /// Write a thread dump (dump-<pid>-<ms>.txt in the output directory) whenever COND holds,
    /// at most once per `every` (default 1m, at least 1s): e.g. `state=futex,threads>=8,for=30s` or
    /// `deadlock,every=5m`. SIGUSR1 to the agent writes one at any time.
    #[arg(long, value_name = "COND", value_parser = parse_dump_when)]
    pub dump_when: Option<crate::dump::trigger::DumpWhen>,

    /// Also send this signal to the target after each dump, for runtimes that print their own
    /// (e.g. QUIT for a JVM). Off by default; refused as QUIT for a Go program (it would exit).
    #[arg(long, value_name = "SIG", value_parser = parse_target_signal)]
    pub signal_target: Option<i32>,

    /// Rows in the printed top table.
    #[arg(long, default_value_t = 15)]
    pub top: usize,
}

/// Longest duration any option takes (a year): bounds every deadline computed from one.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses "10s", "1m30s", "250ms"; a bare number means seconds. At most a year.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 10s, 2m, 500ms".into());
    }
    let d = if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!(
                "invalid duration {}; use e.g. 10s, 2m, 500ms",
                shown(s)
            ));
        }
        Duration::try_from_secs_f64(secs).map_err(|_| too_long(s, "1 year (365d)"))?
    } else {
        humantime::parse_duration(s).map_err(|e| {
            format!(
                "invalid duration {} ({e}); use e.g. 10s, 2m, 500ms",
                shown(s)
            )
        })?
    };
    if d.is_zero() {
        return Err("the duration must be more than zero".into());
    }
    if d > MAX_DURATION {
        return Err(too_long(s, "1 year (365d)"));
    }
    Ok(d)
}

/// `serve --interval`: at least 100ms (a faster /proc scan of every target costs a CPU).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!(
            "{} is too short; sample /proc at most every 100ms",
            shown(s.trim())
        ));
    }
    Ok(d)
}

/// `serve --header-timeout` and `--request-timeout`: 100ms to 10m.
pub fn parse_http_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s).map_err(|e| {
        if e.contains("too long") {
            too_long(s.trim(), "10m")
        } else {
            e
        }
    })?;
    if d < Duration::from_millis(100) {
        return Err(format!("{} is too short; at least 100ms", shown(s.trim())));
    }
    if d > Duration::from_secs(600) {
        return Err(too_long(s.trim(), "10m"));
    }
    Ok(d)
}

/// A process id: a positive number (0 names no process).
pub fn parse_pid(s: &str) -> Result<u32, String> {
    let t = s.trim();
    match t.parse::<u64>() {
        Ok(0) => Err("0 is not a process id; pass a positive PID (see `ps`)".into()),
        Ok(n) => u32::try_from(n).map_err(|_| {
            format!("{n} is not a process id: PIDs are at most 4194304 (/proc/sys/kernel/pid_max)")
        }),
        Err(_) if t.starts_with('-') => Err(format!(
            "{} is not a process id; pass a positive PID (see `ps`)",
            shown(t)
        )),
        Err(_) => Err(format!(
            "{} is not a process id; pass a number (see `ps`)",
            shown(t)
        )),
    }
}

/// `attach --signal-target`: any signal but KILL and STOP, which no runtime can catch to
/// print anything and which would end or freeze the target.
pub fn parse_target_signal(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let sig = match name.strip_prefix("SIG").unwrap_or(&name) {
        "KILL" => libc::SIGKILL,
        "STOP" => libc::SIGSTOP,
        _ => crate::dump::trigger::parse_signal(s)?,
    };
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return Err(format!(
            "signal {} cannot be caught: it would {} the target instead of making it print \
             anything; use a signal its runtime handles (e.g. QUIT for a JVM)",
            shown(s.trim()),
            if sig == libc::SIGKILL {
                "kill"
            } else {
                "freeze"
            }
        ));
    }
    Ok(sig)
}

/// `attach --dump-when`: the condition parser, after a check that its times (`for=`,
/// `every=`) are durations this agent can count to (a bare number too large for a Duration
/// must be an error, not a panic in the parser).
pub fn parse_dump_when(s: &str) -> Result<crate::dump::trigger::DumpWhen, String> {
    for term in s.split(',') {
        if let Some((key, value)) = term.split_once('=')
            && matches!(key.trim(), "for" | "every")
            && let Ok(secs) = value.trim().parse::<f64>()
            && secs.is_finite()
            && secs > MAX_DURATION.as_secs_f64()
        {
            return Err(format!(
                "{}={} is too long; at most 1 year (365d)",
                key.trim(),
                shown(value.trim())
            ));
        }
    }
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn hostile_values() {
        // Huge: an error, never a panic (Duration::from_secs_f64 panics on overflow).
        for bad in [
            "1e30", "1e20", "inf", "NaN", "", " ", "-0.5", "400d", "1e-10",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("365d").is_ok());
        let e = parse_duration(&"9".repeat(100_000)).unwrap_err();
        assert!(
            e.len() < 300,
            "the value is cut short in the message: {} bytes",
            e.len()
        );
        // A huge rate must not wrap around u64 into a small one (2^64 ns ~ 18446744074 s).
        for bad in [
            "18446744074s",
            "18446744073709551616",
            &"9".repeat(50),
            "-1",
            "",
            "5s",
        ] {
            assert!(parse_nanos(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_nanos("0").unwrap(), 0);
        assert_eq!(parse_pid("42").unwrap(), 42);
        for bad in ["0", "-1", "4294967296", "", "1e3", "abc", &"9".repeat(30)] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
        assert!(parse_interval("10ms").is_err());
        assert!(parse_interval("100ms").is_ok());
        assert!(parse_http_timeout("1h").is_err());
        assert!(parse_http_timeout("1ms").is_err());
        assert!(parse_target_signal("KILL").is_err());
        assert!(parse_target_signal("9").is_err());
        assert!(parse_target_signal("SIGSTOP").is_err());
        assert_eq!(parse_target_signal("QUIT").unwrap(), libc::SIGQUIT);
        let e = parse_target_signal("sigkill").unwrap_err();
        assert!(e.contains("cannot be caught"), "{e}");
        for bad in ["for=1e30", "state=futex,for=1e300", "deadlock,every=1e20"] {
            assert!(parse_dump_when(bad).is_err(), "{bad}");
        }
        assert!(parse_dump_when("deadlock,every=5m").is_ok());
    }

    #[test]
    fn nanos() {
        assert_eq!(parse_nanos("1").unwrap(), 1);
        assert_eq!(parse_nanos("100us").unwrap(), 100_000);
        assert_eq!(parse_nanos("1ms").unwrap(), 1_000_000);
        assert!(parse_nanos("5s").is_err());
        assert!(parse_nanos("fast").is_err());
    }

    #[test]
    fn profiles_list() {
        let cli =
            Cli::try_parse_from(["agent", "attach", "--pid", "1", "--profile", "cpu"]).unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(a.profile, vec![ProfileKind::Cpu]);
        let cli = Cli::try_parse_from([
            "agent",
            "attach",
            "-p",
            "1",
            "--profile",
            "cpu,offcpu,block",
        ])
        .unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(
            a.profile,
            vec![ProfileKind::Cpu, ProfileKind::Offcpu, ProfileKind::Block]
        );
        let e = Cli::try_parse_from(["agent", "attach", "--pid", "1", "--profile", "gpu"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'gpu'") && e.contains("possible values: cpu, offcpu, block, mutex"),
            "{e}"
        );
        // Every kind parses by the name its files carry.
        for kind in [
            ProfileKind::Cpu,
            ProfileKind::Offcpu,
            ProfileKind::Block,
            ProfileKind::Mutex,
        ] {
            let cli = Cli::try_parse_from(["agent", "attach", "-p", "1", "--profile", kind.name()])
                .unwrap();
            let Command::Attach(a) = cli.command else {
                panic!("not attach")
            };
            assert_eq!(a.profile, vec![kind]);
        }
        assert!(Cli::try_parse_from(["agent", "attach"]).is_err());
    }

    #[test]
    fn serve_args() {
        let cli = Cli::try_parse_from(["agent", "serve", "--pid", "7", "--pid", "8"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.pid, vec![7, 8]);
        assert_eq!(s.listen.to_string(), "127.0.0.1:6060");
        assert_eq!((s.max_seconds, s.max_concurrent_profiles), (60, 16));
        assert_eq!(s.max_connections, 64);
        assert_eq!(
            (s.header_timeout, s.request_timeout),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert!(Cli::try_parse_from(["agent", "serve", "--max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["agent", "serve", "--listen", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["agent", "serve", "--max-targets", "0"]).is_err());
    }

    #[test]
    fn dump_args() {
        let cli = Cli::try_parse_from(["agent", "dump", "--pid", "7"]).unwrap();
        let Command::Dump(d) = cli.command else {
            panic!("not dump")
        };
        assert_eq!(
            (d.target.pid.unwrap(), d.format, d.debug, d.output),
            (7, DumpFormat::Text, 2, None)
        );
        let cli = Cli::try_parse_from([
            "agent", "dump", "-p", "7", "--format", "json", "--debug", "1", "-o", "/tmp/x",
        ])
        .unwrap();
        let Command::Dump(d) = cli.command else {
            panic!("not dump")
        };
        assert_eq!((d.format, d.debug), (DumpFormat::Json, 1));
        assert_eq!(d.output, Some(PathBuf::from("/tmp/x")));
        for bad in [
            &["agent", "dump"][..],
            &["agent", "dump", "--pid", "7", "--debug", "3"],
            &["agent", "dump", "--pid", "7", "--format", "xml"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
