//! What the kernel recorded, made into profiles and accounts; pure functions of plain data,
//! unit-tested without root:
//! - this module: [`crate::kernel`]'s records into [`RawProfile`]s by kind (cpu, offcpu, block,
//!   mutex): sample types, weights, labels;
//! - [`accounting`]: every thread-second of the window (on CPU, off CPU by class, unaccounted);
//! - [`locks`]: after symbolization, which futex words are locks, their names, the most
//!   contended ones with holders and waiters.

pub mod accounting;
pub mod locks;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use stallscope_common::{BLOCK_COUNT_SCALE, GOROUTINE_TID, wait_class};

use crate::{
    kernel::{
        BlockRecord, CpuRecord, MutexRecord, OffcpuRecord, OpenInterval, RunqBucket, StackPart,
    },
    model::{Label, ProfileKind, RawProfile, RawSample, RawStack, ValueType},
};

/// The `wait_class` label value of a class (and syscall number, for `syscall:<name>`).
pub fn wait_class_name(class: u32, syscall: i32) -> String {
    match class {
        wait_class::RUNNABLE => "runnable".into(),
        wait_class::FUTEX => "futex".into(),
        wait_class::IO => "io".into(),
        wait_class::SLEEP => "sleep".into(),
        wait_class::SYSCALL => format!("syscall:{}", syscall_name(syscall)),
        wait_class::DISK => "disk".into(),
        wait_class::STOPPED => "stopped".into(),
        _ => "other".into(),
    }
}

/// x86-64 syscall name, or the number when unknown.
pub fn syscall_name(nr: i32) -> String {
    if nr < 0 {
        return "unknown".into();
    }
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => nr.to_string(),
    }
}

/// The `thread_state` label of a new thread's wait before its first run (no user stack yet).
pub const NOT_STARTED: &str = "not started";

/// Turns kernel stack parts into a [`RawStack`]; a part the kernel failed to capture becomes a
/// `stack_lost` label so the sample still counts and the loss is visible in pprof.
pub fn raw_stack(user: &StackPart, kernel: &StackPart) -> (RawStack, Vec<Label>) {
    let mut labels = Vec::new();
    let mut take = |part: &StackPart, which: &str| match part {
        StackPart::Frames(f) => f.clone(),
        StackPart::Lost => {
            labels.push(Label::Str("stack_lost".into(), which.into()));
            Vec::new()
        }
        StackPart::NotStarted => {
            labels.push(Label::Str("thread_state".into(), NOT_STARTED.into()));
            Vec::new()
        }
    };
    let stack = RawStack {
        user: take(user, "user"),
        kernel: take(kernel, "kernel"),
    };
    (stack, labels)
}

/// Window facts shared by every profile of one capture.
#[derive(Debug, Clone)]
pub struct Window {
    pub start: SystemTime,
    pub duration: Duration,
    pub comments: Vec<String>,
    /// Thread names by tid: every sample gets a `thread` label (and `tid` with `tid_labels`).
    pub threads: HashMap<u32, String>,
    /// Label samples with their thread id too (off: smaller profiles, merged across threads
    /// of one name).
    pub tid_labels: bool,
    /// Labels of each process (by pid) its samples carry: its `container`, `pod` and
    /// `namespace` when it runs in one ([`process_labels`]), and in a group's window its
    /// `pid` and `comm`.
    pub process: HashMap<u32, Vec<Label>>,
    /// The wait reasons' names of each Go process whose goroutines the block profile
    /// and mutex profiles followed (by pid; index: `runtime.waitReason`).
    pub go_wait_reasons: HashMap<u32, Vec<String>>,
}

/// The labels a process's samples carry for its place on the node (none outside a container),
/// so that `-tagfocus=pod=...` works on a profile of a pod's process.
pub fn process_labels(id: &crate::identity::Identity) -> Vec<Label> {
    let mut l = Vec::new();
    for (k, v) in [
        ("container", &id.container),
        ("pod", &id.pod),
        ("pod_uid", &id.pod_uid),
        ("namespace", &id.namespace),
    ] {
        if let Some(v) = v {
            l.push(Label::Str(k.into(), v.clone()));
        }
    }
    l
}

impl Window {
    /// The labels of a block- or mutex-profile sample of `tid`: a goroutine's
    /// (`GOROUTINE_TID` and its wait reason: `wait_reason`, as Go names it) or a thread's.
    fn event_labels(&self, tgid: u32, tid: u32) -> Vec<Label> {
        if tid & GOROUTINE_TID == 0 {
            return self.thread_labels(tgid, tid);
        }
        let reason = (tid & 0xff) as usize;
        let name = self
            .go_wait_reasons
            .get(&tgid)
            .and_then(|r| r.get(reason))
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("wait reason {reason}"));
        let mut l = vec![Label::Str("wait_reason".into(), name)];
        l.extend(self.thread_labels(tgid, 0));
        l
    }

    /// The `thread` and `tid` labels of a sample of thread `tid` (none for tid 0: unknown),
    /// then those of its process `tgid`.
    pub fn thread_labels(&self, tgid: u32, tid: u32) -> Vec<Label> {
        let mut l = Vec::new();
        if tid != 0 {
            let name = self
                .threads
                .get(&tid)
                .cloned()
                .unwrap_or_else(|| "?".into());
            l.push(Label::Str("thread".into(), name));
            if self.tid_labels {
                l.push(Label::Str("tid".into(), tid.to_string()));
            }
        }
        if let Some(p) = self.process.get(&tgid) {
            l.extend(p.iter().cloned());
        }
        l
    }
}

/// CPU profile: a sample stands for one sampling period of CPU time (1/frequency s).
pub fn cpu_profile(records: &[CpuRecord], frequency: u64, w: &Window) -> RawProfile {
    let period = 1_000_000_000 / frequency.max(1) as i64;
    let samples = records
        .iter()
        .map(|r| {
            let (stack, mut labels) = raw_stack(&r.user, &r.kernel);
            labels.extend(w.thread_labels(r.tgid, r.tid));
            RawSample {
                pid: r.tgid,
                stack,
                values: vec![r.count as i64, r.count as i64 * period],
                labels,
            }
        })
        .collect();
    finish(RawProfile {
        kind: ProfileKind::Cpu,
        sample_types: vec![
            ValueType::new("samples", "count"),
            ValueType::new("cpu", "nanoseconds"),
        ],
        default_sample_type: Some("cpu".into()),
        period_type: ValueType::new("cpu", "nanoseconds"),
        period,
        start: w.start,
        duration: w.duration,
        samples,
        comments: w.comments.clone(),
    })
}

/// Closes intervals still open when the capture ended at `end_ts` (ktime), splitting a woken
/// thread's interval into its wait and its run-queue time, as the kernel side does.
pub fn close_open_intervals(open: &[OpenInterval], end_ts: u64, min_ns: u64) -> Vec<OffcpuRecord> {
    let mut out = Vec::new();
    let mut push = |o: &OpenInterval, class: u32, ns: u64| {
        if ns >= min_ns.max(1) {
            out.push(OffcpuRecord {
                tgid: o.tgid,
                tid: o.tid,
                class,
                syscall: if class == wait_class::SYSCALL {
                    o.syscall
                } else {
                    -1
                },
                user: o.user.clone(),
                kernel: o.kernel.clone(),
                count: 1,
                total_ns: ns,
            });
        }
    };
    for o in open {
        if o.off_ts == 0 || o.off_ts >= end_ts {
            continue;
        }
        if o.class != wait_class::RUNNABLE && o.wake_ts > o.off_ts && o.wake_ts <= end_ts {
            push(o, o.class, o.wake_ts - o.off_ts);
            push(o, wait_class::RUNNABLE, end_ts - o.wake_ts);
        } else {
            push(o, o.class, end_ts - o.off_ts);
        }
    }
    out
}

/// Off-CPU profile: every interval a thread spent off CPU, by the stack it left with, labelled
/// with its wait class.
pub fn offcpu_profile(records: &[OffcpuRecord], w: &Window) -> RawProfile {
    let samples = records
        .iter()
        .map(|r| {
            let (stack, mut labels) = raw_stack(&r.user, &r.kernel);
            labels.insert(
                0,
                Label::Str("wait_class".into(), wait_class_name(r.class, r.syscall)),
            );
            labels.extend(w.thread_labels(r.tgid, r.tid));
            RawSample {
                pid: r.tgid,
                stack,
                values: vec![r.count as i64, r.total_ns as i64],
                labels,
            }
        })
        .collect();
    finish(RawProfile {
        kind: ProfileKind::Offcpu,
        sample_types: vec![
            ValueType::new("events", "count"),
            ValueType::new("off-cpu", "nanoseconds"),
        ],
        default_sample_type: Some("off-cpu".into()),
        period_type: ValueType::new("off-cpu", "nanoseconds"),
        period: 1,
        start: w.start,
        duration: w.duration,
        samples,
        comments: w.comments.clone(),
    })
}

/// Block profile (Go semantics): contentions and delay by the waiter's user stack.
pub fn block_profile(records: &[BlockRecord], rate_ns: u64, w: &Window) -> RawProfile {
    let samples = records
        .iter()
        .map(|r| {
            let (stack, mut labels) = raw_stack(&r.user, &StackPart::Frames(Vec::new()));
            labels.extend(w.event_labels(r.tgid, r.tid));
            let count = (r.count_scaled + BLOCK_COUNT_SCALE / 2) / BLOCK_COUNT_SCALE;
            RawSample {
                pid: r.tgid,
                stack,
                values: vec![count.max(1) as i64, r.delay_ns as i64],
                labels,
            }
        })
        .collect();
    let mut comments = w.comments.clone();
    comments.push(format!(
        "block profile rate: {rate_ns} ns (Go SetBlockProfileRate semantics)"
    ));
    finish(RawProfile {
        kind: ProfileKind::Block,
        sample_types: vec![
            ValueType::new("contentions", "count"),
            ValueType::new("delay", "nanoseconds"),
        ],
        default_sample_type: Some("delay".into()),
        period_type: ValueType::new("contentions", "count"),
        period: 1,
        start: w.start,
        duration: w.duration,
        samples,
        comments,
    })
}

/// Mutex profile (Go semantics): contentions and delay by the stack of the thread that released
/// the lock, labelled with the lock's address. `waiters` gives the same shape for the waiting
/// side (used to tell locks from condition variables and for the summary; not written).
pub fn mutex_profile(records: &[MutexRecord], fraction: u64, w: &Window) -> RawProfile {
    let samples = records
        .iter()
        .map(|r| {
            let (stack, mut labels) = raw_stack(&r.user, &StackPart::Frames(Vec::new()));
            labels.insert(0, Label::Addr("lock".into(), r.uaddr));
            labels.extend(w.event_labels(r.tgid, r.tid));
            RawSample {
                pid: r.tgid,
                stack,
                values: vec![r.count as i64, r.delay_ns as i64],
                labels,
            }
        })
        .collect();
    let mut comments = w.comments.clone();
    comments.push(format!(
        "mutex profile fraction: {} (Go SetMutexProfileFraction semantics; values are multiplied by it)",
        fraction.max(1)
    ));
    finish(RawProfile {
        kind: ProfileKind::Mutex,
        sample_types: vec![
            ValueType::new("contentions", "count"),
            ValueType::new("delay", "nanoseconds"),
        ],
        default_sample_type: Some("delay".into()),
        period_type: ValueType::new("contentions", "count"),
        period: fraction.max(1) as i64,
        start: w.start,
        duration: w.duration,
        samples,
        comments,
    })
}

fn finish(mut p: RawProfile) -> RawProfile {
    p.merge_duplicates();
    p
}

/// Run-queue latency percentiles of one process, from the kernel's log-linear histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunqStats {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Lower bound of the highest non-empty bucket (≤ 12.5% below the true maximum).
    pub max_ns: u64,
}

/// Percentiles from histogram buckets of one process (`buckets` sorted or not).
pub fn runq_stats(buckets: &[RunqBucket]) -> Option<RunqStats> {
    let mut b: Vec<&RunqBucket> = buckets.iter().filter(|b| b.count > 0).collect();
    if b.is_empty() {
        return None;
    }
    b.sort_by_key(|b| b.bucket);
    let total: u64 = b.iter().map(|b| b.count).sum();
    let pct = |q: f64| -> u64 {
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for x in &b {
            seen += x.count;
            if seen >= rank {
                return x.low_ns;
            }
        }
        b.last().map(|x| x.low_ns).unwrap_or(0)
    };
    Some(RunqStats {
        count: total,
        p50_ns: pct(0.50),
        p99_ns: pct(0.99),
        max_ns: b.last().map(|x| x.low_ns).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stallscope_common::runq_bucket;

    fn w() -> Window {
        Window {
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            comments: vec!["c".into()],
            threads: HashMap::from([(5, "worker".to_string())]),
            tid_labels: true,
            process: HashMap::new(),
            go_wait_reasons: HashMap::from([(9, vec!["".to_string(), "chan receive".to_string()])]),
        }
    }

    #[test]
    fn a_goroutines_block_event_is_labelled_with_its_wait_reason_not_a_thread() {
        let rec = |tgid, reason| BlockRecord {
            tgid,
            tid: GOROUTINE_TID | reason,
            user: StackPart::Frames(vec![1]),
            count_scaled: 1000,
            delay_ns: 5,
        };
        let p = block_profile(&[rec(9, 1), rec(9, 7), rec(1, 1)], 1, &w());
        let labels: Vec<&Vec<Label>> = p.samples.iter().map(|s| &s.labels).collect();
        assert_eq!(
            labels[0],
            &vec![Label::Str("wait_reason".into(), "chan receive".into())]
        );
        assert_eq!(
            labels[1],
            &vec![Label::Str("wait_reason".into(), "wait reason 7".into())]
        );
        assert_eq!(
            labels[2],
            &vec![Label::Str("wait_reason".into(), "wait reason 1".into())]
        );
    }

    #[test]
    fn cpu_profile_weights_and_merges() {
        let recs = vec![
            CpuRecord {
                tgid: 7,
                tid: 5,
                user: StackPart::Frames(vec![0x10, 0x20]),
                kernel: StackPart::Frames(vec![]),
                count: 3,
            },
            CpuRecord {
                tgid: 7,
                tid: 5,
                user: StackPart::Lost,
                kernel: StackPart::Frames(vec![0xffff_0001]),
                count: 2,
            },
        ];
        let p = cpu_profile(&recs, 100, &w());
        assert_eq!(p.period, 10_000_000);
        assert_eq!(p.total(0), 5);
        assert_eq!(p.total(1), 50_000_000);
        let lost = p.samples.iter().find(|s| s.stack.user.is_empty()).unwrap();
        assert_eq!(
            lost.labels,
            vec![
                Label::Str("stack_lost".into(), "user".into()),
                Label::Str("thread".into(), "worker".into()),
                Label::Str("tid".into(), "5".into()),
            ]
        );
    }

    #[test]
    fn class_names() {
        assert_eq!(wait_class_name(wait_class::IO, -1), "io");
        assert_eq!(wait_class_name(wait_class::SYSCALL, 0), "syscall:read");
        assert_eq!(wait_class_name(wait_class::SYSCALL, 99999), "syscall:99999");
        assert_eq!(wait_class_name(wait_class::RUNNABLE, -1), "runnable");
    }

    #[test]
    fn offcpu_labels_and_totals() {
        let recs = vec![
            OffcpuRecord {
                tgid: 1,
                tid: 5,
                class: wait_class::SLEEP,
                syscall: -1,
                user: StackPart::Frames(vec![1]),
                kernel: StackPart::Frames(vec![]),
                count: 10,
                total_ns: 1_000_000_000,
            },
            OffcpuRecord {
                tgid: 1,
                tid: 5,
                class: wait_class::SYSCALL,
                syscall: 0,
                user: StackPart::Frames(vec![1]),
                kernel: StackPart::Frames(vec![]),
                count: 1,
                total_ns: 5,
            },
        ];
        let p = offcpu_profile(&recs, &w());
        assert_eq!(p.samples.len(), 2, "different classes stay apart");
        assert_eq!(p.total(1), 1_000_000_005);
        assert_eq!(
            p.samples[1].labels[0],
            Label::Str("wait_class".into(), "syscall:read".into())
        );
    }

    #[test]
    fn block_counts_are_rounded_from_fixed_point() {
        let recs = vec![BlockRecord {
            tgid: 1,
            tid: 6,
            user: StackPart::Frames(vec![1]),
            count_scaled: 12_600,
            delay_ns: 40,
        }];
        let p = block_profile(&recs, 1000, &w());
        assert_eq!(p.samples[0].values, vec![13, 40]);
        // A thread the window has no name for is still told apart by its tid.
        assert_eq!(
            p.samples[0].labels,
            vec![
                Label::Str("thread".into(), "?".into()),
                Label::Str("tid".into(), "6".into())
            ]
        );
        assert!(p.comments.iter().any(|c| c.contains("rate: 1000 ns")));
    }

    #[test]
    fn open_intervals_split_at_wakeup() {
        let o = OpenInterval {
            tid: 5,
            tgid: 1,
            class: wait_class::FUTEX,
            syscall: 202,
            off_ts: 100,
            wake_ts: 150,
            user: StackPart::Frames(vec![1]),
            kernel: StackPart::Frames(vec![]),
        };
        let r = close_open_intervals(std::slice::from_ref(&o), 170, 0);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].class, r[0].total_ns), (wait_class::FUTEX, 50));
        assert_eq!((r[1].class, r[1].total_ns), (wait_class::RUNNABLE, 20));
        let not_woken = OpenInterval { wake_ts: 0, ..o };
        let r = close_open_intervals(&[not_woken], 170, 0);
        assert_eq!((r[0].class, r[0].total_ns), (wait_class::FUTEX, 70));
        assert!(close_open_intervals(&r_open(), 170, 100).is_empty());
    }

    fn r_open() -> Vec<OpenInterval> {
        vec![OpenInterval {
            tid: 1,
            tgid: 1,
            class: wait_class::SLEEP,
            syscall: -1,
            off_ts: 160,
            wake_ts: 0,
            user: StackPart::Lost,
            kernel: StackPart::Lost,
        }]
    }

    #[test]
    fn mutex_samples_carry_the_lock_address() {
        let recs = vec![MutexRecord {
            tgid: 1,
            tid: 5,
            uaddr: 0x55d0_c0a0_40a0,
            user: StackPart::Frames(vec![1, 2]),
            count: 10,
            delay_ns: 500,
        }];
        let p = mutex_profile(&recs, 10, &w());
        assert_eq!(p.period, 10);
        assert_eq!(p.samples[0].values, vec![10, 500]);
        assert_eq!(
            p.samples[0].labels[0],
            Label::Addr("lock".into(), 0x55d0c0a040a0)
        );
    }

    #[test]
    fn runq_percentiles() {
        let mut buckets = Vec::new();
        // 98 short waits of 1 µs, 2 long of 1 ms.
        for (ns, n) in [(1_000u64, 98u64), (1_000_000, 2)] {
            let b = runq_bucket(ns);
            buckets.push(RunqBucket {
                tgid: 1,
                bucket: b,
                low_ns: stallscope_common::runq_bucket_low(b),
                count: n,
            });
        }
        let s = runq_stats(&buckets).unwrap();
        assert_eq!(s.count, 100);
        assert!(s.p50_ns <= 1_000 && s.p50_ns > 850, "{s:?}");
        assert!(s.p99_ns > 850_000, "{s:?}");
        assert_eq!(s.max_ns, s.p99_ns);
        assert!(runq_stats(&[]).is_none());
    }
}
