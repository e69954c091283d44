//! Continuous per-process metrics of `agent serve`, from `/proc` alone: no probe is attached
//! between profile requests, so a target pays nothing while nobody is profiling it.
//!
//! Every sampling interval, for each thread of each target:
//! - `/proc/PID/task/TID/schedstat` gives the exact time on CPU, the exact time spent runnable
//!   in the run queue, and the number of timeslices, so CPU and `runnable` seconds are exact;
//! - the rest of the interval the thread was blocked; that time goes to the wait class of the
//!   thread's state (`stat` state, and the syscall it is in from `syscall` for a sleeping
//!   thread: futex, io, sleep, other syscall, disk, stopped), observed at the sample (or at
//!   the previous one when the thread is running now: it woke up during the interval);
//! - the run-queue latency histogram gets, per thread and interval, `timeslices` observations
//!   of the interval's mean run-queue wait (so `_sum` and `_count` are exact, and the buckets
//!   are the per-thread, per-interval means).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

/// Thread states and wait classes shown in metrics (a bounded label set).
pub const CLASSES: [&str; 9] = [
    "running", "runnable", "futex", "io", "sleep", "syscall", "disk", "stopped", "other",
];
const RUNNING: usize = 0;
const RUNNABLE: usize = 1;
const FUTEX: usize = 2;
const IO: usize = 3;
const SLEEP: usize = 4;
const SYSCALL: usize = 5;
const DISK: usize = 6;
const STOPPED: usize = 7;
const OTHER: usize = 8;

/// Upper bounds (seconds) of the run-queue latency histogram buckets.
pub const RUNQ_BUCKETS: [f64; 12] = [
    1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 1e-3, 4e-3, 16e-3, 64e-3, 256e-3, 1.0, 4.0,
];

/// The class of a thread from its `stat` state letter and, when sleeping, its syscall number
/// (`None`: not in a syscall, or unreadable).
pub fn class_of(state: char, syscall: Option<i64>) -> usize {
    match state {
        'R' => RUNNING,
        'D' => DISK,
        'T' | 't' => STOPPED,
        'S' => match syscall {
            Some(202 | 449) => FUTEX,
            Some(7 | 23 | 232 | 270 | 271 | 281 | 441) => IO,
            Some(35 | 230) => SLEEP,
            Some(n) if n >= 0 => SYSCALL,
            _ => OTHER,
        },
        _ => OTHER,
    }
}

/// Parses `/proc/.../syscall`: the number first, `running` while on CPU, `-1` outside one.
pub fn parse_syscall(text: &str) -> Option<i64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Parses `/proc/.../schedstat`: (ns on CPU, ns waiting in the run queue, timeslices).
pub fn parse_schedstat(text: &str) -> Option<(u64, u64, u64)> {
    let mut f = text.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((f.next()??, f.next()??, f.next()??))
}

/// Comm, state letter, start time (field 22) and flags (field 9) of `/proc/.../stat`.
pub fn parse_stat(text: &str) -> Option<(String, char, u64, u64)> {
    let (comm, state, start) = crate::system::parse_stat(text)?;
    let rest = text.get(text.rfind(')')? + 1..)?;
    let flags = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some((comm, state, start, flags))
}

/// What one thread looked like at the previous sample.
#[derive(Debug, Clone, Copy)]
struct ThreadPrev {
    run_ns: u64,
    wait_ns: u64,
    slices: u64,
    class: usize,
    at: Instant,
}

/// Continuous metrics of one process (identified by pid and start time).
#[derive(Debug, Clone)]
pub struct ProcStats {
    pub pid: u32,
    pub start_ticks: u64,
    pub comm: String,
    threads: HashMap<u32, ThreadPrev>,
    pub cpu_seconds: f64,
    /// Off-CPU seconds by class (`running` stays 0).
    pub offcpu_seconds: [f64; CLASSES.len()],
    /// Threads by class at the last sample.
    pub threads_by_state: [u64; CLASSES.len()],
    /// Cumulative counts per bucket (not yet cumulated across buckets), plus +Inf last.
    pub runq_buckets: [u64; RUNQ_BUCKETS.len() + 1],
    pub runq_sum: f64,
    pub runq_count: u64,
}

/// One thread as read in one sample.
#[derive(Debug, Clone, Copy)]
pub struct ThreadSample {
    pub tid: u32,
    pub state: char,
    pub syscall: Option<i64>,
    pub run_ns: u64,
    pub wait_ns: u64,
    pub slices: u64,
}

impl ProcStats {
    pub fn new(pid: u32, start_ticks: u64, comm: String) -> Self {
        Self {
            pid,
            start_ticks,
            comm,
            threads: HashMap::new(),
            cpu_seconds: 0.0,
            offcpu_seconds: [0.0; CLASSES.len()],
            threads_by_state: [0; CLASSES.len()],
            runq_buckets: [0; RUNQ_BUCKETS.len() + 1],
            runq_sum: 0.0,
            runq_count: 0,
        }
    }

    /// Folds in one sample of every live thread taken at `now`. Threads seen for the first
    /// time only set a baseline; threads gone since the last sample are forgotten.
    pub fn update(&mut self, now: Instant, threads: &[ThreadSample]) {
        self.threads_by_state = [0; CLASSES.len()];
        let mut next = HashMap::with_capacity(threads.len());
        for t in threads {
            let class = class_of(t.state, t.syscall);
            self.threads_by_state[class] += 1;
            if let Some(p) = self.threads.get(&t.tid) {
                let dt = now.saturating_duration_since(p.at).as_nanos() as u64;
                let run = t.run_ns.saturating_sub(p.run_ns);
                let wait = t.wait_ns.saturating_sub(p.wait_ns);
                let slices = t.slices.saturating_sub(p.slices);
                let blocked = dt.saturating_sub(run + wait);
                self.cpu_seconds += run as f64 / 1e9;
                self.offcpu_seconds[RUNNABLE] += wait as f64 / 1e9;
                // Blocked time belongs to what the thread waits on now, or, when it runs now,
                // to what it waited on at the previous sample.
                let blocked_class = if class == RUNNING { p.class } else { class };
                let blocked_class = if blocked_class == RUNNING {
                    OTHER
                } else {
                    blocked_class
                };
                if blocked > 0 {
                    self.offcpu_seconds[blocked_class] += blocked as f64 / 1e9;
                }
                if slices > 0 {
                    let mean = wait as f64 / 1e9 / slices as f64;
                    let b = RUNQ_BUCKETS
                        .iter()
                        .position(|&le| mean <= le)
                        .unwrap_or(RUNQ_BUCKETS.len());
                    self.runq_buckets[b] += slices;
                    self.runq_count += slices;
                    self.runq_sum += wait as f64 / 1e9;
                }
            }
            next.insert(
                t.tid,
                ThreadPrev {
                    run_ns: t.run_ns,
                    wait_ns: t.wait_ns,
                    slices: t.slices,
                    class,
                    at: now,
                },
            );
        }
        self.threads = next;
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }
}

/// Reads every thread of `pid` (`None` once the process is gone).
pub fn read_threads(pid: u32) -> Option<Vec<ThreadSample>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) else {
            continue;
        };
        let Some((_, state, _, _)) = parse_stat(&stat) else {
            continue;
        };
        let Some((run_ns, wait_ns, slices)) = std::fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| parse_schedstat(&s))
        else {
            continue;
        };
        // The syscall only matters (and is only cheap to read) for a sleeping thread.
        let syscall = if state == 'S' {
            std::fs::read_to_string(format!("{base}/syscall"))
                .ok()
                .and_then(|s| parse_syscall(&s))
        } else {
            None
        };
        out.push(ThreadSample {
            tid,
            state,
            syscall,
            run_ns,
            wait_ns,
            slices,
        });
    }
    Some(out)
}

/// Escapes a Prometheus label value.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// The per-process families in the Prometheus text format (one HELP/TYPE block each).
pub fn render(procs: &[&ProcStats]) -> String {
    let mut out = String::new();
    let labels = |p: &ProcStats| format!("pid=\"{}\",comm=\"{}\"", p.pid, escape_label(&p.comm));
    let _ = writeln!(
        out,
        "# HELP stallscope_offcpu_seconds_total Time threads of the process spent off CPU, by wait class (runnable: in the run queue), summed over threads.\n# TYPE stallscope_offcpu_seconds_total counter"
    );
    for p in procs {
        for (i, class) in CLASSES.iter().enumerate().skip(1) {
            let _ = writeln!(
                out,
                "stallscope_offcpu_seconds_total{{{},class=\"{class}\"}} {}",
                labels(p),
                p.offcpu_seconds[i]
            );
        }
    }
    let per_proc = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&ProcStats) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for p in procs {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(p), value(p));
        }
    };
    per_proc(
        &mut out,
        "stallscope_lock_wait_seconds_total",
        "Time threads of the process spent waiting in futex (locks, condition variables), summed over threads.",
        &|p| p.offcpu_seconds[FUTEX],
    );
    per_proc(
        &mut out,
        "stallscope_cpu_seconds_total",
        "CPU time of the process's threads (scheduler accounting).",
        &|p| p.cpu_seconds,
    );
    let _ = writeln!(
        out,
        "# HELP stallscope_threads Threads of the process by state at the last sample (running includes runnable).\n# TYPE stallscope_threads gauge"
    );
    for p in procs {
        for (i, state) in CLASSES.iter().enumerate() {
            if i == RUNNABLE {
                continue;
            }
            let _ = writeln!(
                out,
                "stallscope_threads{{{},state=\"{state}\"}} {}",
                labels(p),
                p.threads_by_state[i]
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP stallscope_runqueue_latency_seconds Run-queue wait per timeslice (per thread and sampling interval, the mean; sum and count are exact).\n# TYPE stallscope_runqueue_latency_seconds histogram"
    );
    for p in procs {
        let mut cum = 0;
        for (i, le) in RUNQ_BUCKETS.iter().enumerate() {
            cum += p.runq_buckets[i];
            let _ = writeln!(
                out,
                "stallscope_runqueue_latency_seconds_bucket{{{},le=\"{le}\"}} {cum}",
                labels(p)
            );
        }
        cum += p.runq_buckets[RUNQ_BUCKETS.len()];
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_bucket{{{},le=\"+Inf\"}} {cum}",
            labels(p)
        );
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_sum{{{}}} {}",
            labels(p),
            p.runq_sum
        );
        let _ = writeln!(
            out,
            "stallscope_runqueue_latency_seconds_count{{{}}} {}",
            labels(p),
            p.runq_count
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn classes() {
        assert_eq!(CLASSES[class_of('S', Some(202))], "futex");
        assert_eq!(CLASSES[class_of('S', Some(232))], "io");
        assert_eq!(CLASSES[class_of('S', Some(230))], "sleep");
        assert_eq!(CLASSES[class_of('S', Some(0))], "syscall");
        assert_eq!(CLASSES[class_of('S', None)], "other");
        assert_eq!(CLASSES[class_of('S', Some(-1))], "other");
        assert_eq!(CLASSES[class_of('D', None)], "disk");
        assert_eq!(CLASSES[class_of('R', None)], "running");
        assert_eq!(CLASSES[class_of('t', None)], "stopped");
        assert_eq!(parse_syscall("202 0x1 0x2"), Some(202));
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_schedstat("10 20 3\n"), Some((10, 20, 3)));
        let (comm, state, start, flags) =
            parse_stat("7 (a (b) c) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 555 1 1")
                .unwrap();
        assert_eq!(
            (comm.as_str(), state, start, flags),
            ("a (b) c", 'S', 555, 4194560)
        );
    }

    #[test]
    fn accounting_splits_an_interval() {
        let t0 = Instant::now();
        let mut p = ProcStats::new(1, 2, "w".into());
        let s = |state, syscall, run_ns, wait_ns, slices| ThreadSample {
            tid: 10,
            state,
            syscall,
            run_ns,
            wait_ns,
            slices,
        };
        p.update(t0, &[s('S', Some(202), 1_000, 0, 1)]);
        assert_eq!(p.cpu_seconds, 0.0);
        // 1 s later: 0.2 s on CPU, 0.1 s in the run queue over 10 slices, 0.7 s blocked.
        let t1 = t0 + Duration::from_secs(1);
        p.update(t1, &[s('S', Some(202), 200_001_000, 100_000_000, 11)]);
        assert!((p.cpu_seconds - 0.2).abs() < 1e-9);
        assert!((p.offcpu_seconds[RUNNABLE] - 0.1).abs() < 1e-9);
        assert!((p.offcpu_seconds[FUTEX] - 0.7).abs() < 1e-9);
        assert_eq!(p.runq_count, 10);
        assert!((p.runq_sum - 0.1).abs() < 1e-9);
        // 10 ms mean: the 16 ms bucket.
        assert_eq!(p.runq_buckets[7], 10);
        // Running now: the blocked part goes to the previous class.
        let t2 = t1 + Duration::from_secs(1);
        p.update(t2, &[s('R', None, 200_001_000, 100_000_000, 11)]);
        assert!((p.offcpu_seconds[FUTEX] - 1.7).abs() < 1e-9);
        assert_eq!(p.threads_by_state[RUNNING], 1);
        // A thread that exited is forgotten.
        p.update(t2, &[]);
        assert_eq!(p.thread_count(), 0);
        let text = render(&[&p]);
        assert!(
            text.contains(
                "stallscope_offcpu_seconds_total{pid=\"1\",comm=\"w\",class=\"futex\"} 1.7"
            )
        );
        assert!(text.contains(
            "stallscope_runqueue_latency_seconds_bucket{pid=\"1\",comm=\"w\",le=\"+Inf\"} 10"
        ));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
