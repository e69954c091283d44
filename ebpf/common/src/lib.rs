//! Types shared by Stallscope's BPF programs and its agent.
//!
//! Everything is `#[repr(C)]` plain data with explicit padding so both sides agree on the layout.
//! With the `user` feature the types implement `aya::Pod` so the agent can read them from maps.
#![no_std]

/// Declares a type shared by the programs and the agent: `#[repr(C)]`, and a compile-time check
/// that its size is the sum of its fields' sizes. Implicit padding would hold bytes nobody set:
/// in a map key they make equal keys differ, and `aya::Pod` (the agent reads these from maps)
/// promises there is none.
macro_rules! shared {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }
        const _: () = assert!(
            core::mem::size_of::<$name>() == 0 $(+ core::mem::size_of::<$ty>())*,
            concat!(stringify!($name), " has implicit padding: add explicit _pad fields")
        );
    };
}

/// Deepest stack the kernel records (`PERF_MAX_STACK_DEPTH`).
pub const MAX_STACK_DEPTH: usize = 127;

/// Entries in the stack-trace map. Without `BPF_F_REUSE_STACKID` a bucket collision makes
/// `bpf_get_stackid` fail with `-EEXIST`, which we count instead of recording a wrong stack.
pub const STACK_MAP_ENTRIES: u32 = 65536;

/// Entries in each aggregation map (distinct stacks × classes per capture).
pub const AGG_MAP_ENTRIES: u32 = 65536;

/// Target processes are a bitmap indexed by tgid, one bit per possible pid: one array load
/// decides whether an event is for a target (a hash look-up cost most of a non-target event).
/// Covers `PID_MAX_LIMIT` (2^22 on 64-bit).
pub const TARGET_BITMAP_WORDS: u32 = 1 << 16;

/// The bitmap word and bit of `tgid`, or `None` beyond the bitmap.
#[inline(always)]
pub fn target_bit(tgid: u32) -> Option<(u32, u64)> {
    let word = tgid >> 6;
    if word >= TARGET_BITMAP_WORDS {
        return None;
    }
    Some((word, 1u64 << (tgid & 63)))
}

/// Indexes into the `COUNTERS` per-CPU array. The agent sums them over CPUs and shows them; the
/// last two are counted by the agent itself when it reads the maps (the kernel leaves their
/// slots at zero). Each has one name, group and help text ([`Counter::info`]), from which the
/// summary's counts, the pprof comments, `/metrics` and the JSON are derived.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    CpuSamples = 0,
    CpuSamplesTarget = 1,
    UserStackLost = 2,
    KernelStackLost = 3,
    StackCollision = 4,
    AggMapFull = 5,
    OffcpuSwitchOut = 6,
    OffcpuRecorded = 7,
    OffcpuBelowMin = 8,
    ThreadMapFull = 9,
    BlockEventsSeen = 10,
    BlockEventsRecorded = 11,
    RunqHistFull = 12,
    // 13 is unused.
    UnwindCfiFrames = 14,
    UnwindFpFrames = 15,
    UnwindTruncated = 16,
    UserStackMapFull = 17,
    MutexEventsSeen = 18,
    MutexEventsRecorded = 19,
    LockTableFull = 20,
    UserStackCacheHit = 21,
    UserStackWalked = 22,
    FirstSeenFull = 23,
    ExitedFull = 24,
    OffcpuSampledOut = 25,
    // 26 was the deferred futex-call stacks, gone with the futex hooks.
    SwitchMissed = 27,
    /// Counted by the agent: stored user stacks whose frames do not hash to their handle.
    UserStackCorrupt = 28,
    /// Counted by the agent: runs of its programs the kernel skipped (`recursion_misses`).
    ProgRunsSkipped = 29,
    ProcessesFollowed = 30,
    FollowMapFull = 31,
    GoBlockEventsSeen = 32,
    GoBlockEventsRecorded = 33,
    GoParkedFull = 34,
    GoProbeHits = 35,
}

/// What a counter counts, for `/metrics` (one family per group) and the summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterGroup {
    /// Events seen and recorded (`stallscope_kernel_events_total`).
    Event,
    /// Events dropped or not seen: something is missing from the profiles
    /// (`stallscope_kernel_dropped_total`).
    Dropped,
    /// Stacks lost: the event is kept without (part of) its stack (`stallscope_stacks_lost_total`).
    StackLost,
    /// How the user-stack unwinder worked (frames by method, walks and cache hits).
    Unwind,
}

/// A counter's name (snake case: the JSON key), group, label value in its group's `/metrics`
/// family, and help.
#[derive(Clone, Copy, Debug)]
pub struct CounterInfo {
    pub name: &'static str,
    pub label: &'static str,
    pub group: CounterGroup,
    pub help: &'static str,
}

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 34] = [
        Counter::CpuSamples,
        Counter::CpuSamplesTarget,
        Counter::UserStackLost,
        Counter::KernelStackLost,
        Counter::StackCollision,
        Counter::AggMapFull,
        Counter::OffcpuSwitchOut,
        Counter::OffcpuRecorded,
        Counter::OffcpuBelowMin,
        Counter::ThreadMapFull,
        Counter::BlockEventsSeen,
        Counter::BlockEventsRecorded,
        Counter::RunqHistFull,
        Counter::UnwindCfiFrames,
        Counter::UnwindFpFrames,
        Counter::UnwindTruncated,
        Counter::UserStackMapFull,
        Counter::MutexEventsSeen,
        Counter::MutexEventsRecorded,
        Counter::LockTableFull,
        Counter::UserStackCacheHit,
        Counter::UserStackWalked,
        Counter::FirstSeenFull,
        Counter::ExitedFull,
        Counter::OffcpuSampledOut,
        Counter::SwitchMissed,
        Counter::UserStackCorrupt,
        Counter::ProgRunsSkipped,
        Counter::ProcessesFollowed,
        Counter::FollowMapFull,
        Counter::GoBlockEventsSeen,
        Counter::GoBlockEventsRecorded,
        Counter::GoParkedFull,
        Counter::GoProbeHits,
    ];

    pub const fn info(self) -> CounterInfo {
        use CounterGroup::*;
        let (name, group, help) = match self {
            Counter::CpuSamples => (
                "cpu_samples",
                Event,
                "perf cpu-clock samples taken (any process).",
            ),
            Counter::CpuSamplesTarget => (
                "cpu_samples_target",
                Event,
                "CPU samples of a target process.",
            ),
            Counter::UserStackLost => (
                "user_stack_lost",
                StackLost,
                "User stacks that could not be taken.",
            ),
            Counter::KernelStackLost => (
                "kernel_stack_lost",
                StackLost,
                "Kernel stacks that could not be taken (bpf_get_stackid failed).",
            ),
            Counter::StackCollision => (
                "stack_collision",
                Dropped,
                "Kernel stacks whose stack-map bucket held a different stack (-EEXIST): never merged, the stack is lost.",
            ),
            Counter::AggMapFull => (
                "agg_map_full",
                Dropped,
                "Events dropped because their aggregation map was full (raise --map-entries).",
            ),
            Counter::OffcpuSwitchOut => (
                "offcpu_switch_out",
                Event,
                "Switch-outs of target threads (off-CPU intervals begun).",
            ),
            Counter::OffcpuRecorded => (
                "offcpu_recorded",
                Event,
                "Off-CPU intervals recorded (ended by a switch-in, at least --offcpu-min long, kept by --offcpu-rate).",
            ),
            Counter::OffcpuBelowMin => (
                "offcpu_below_min",
                Event,
                "Off-CPU intervals shorter than --offcpu-min, left out on purpose.",
            ),
            Counter::ThreadMapFull => (
                "thread_map_full",
                Dropped,
                "Events lost because the per-thread state table was full.",
            ),
            Counter::GoBlockEventsSeen => (
                "go_block_events_seen",
                Event,
                "Goroutine waits of a Go program that ended (runtime.ready after runtime.gopark, for a wait reason Go's block profile records).",
            ),
            Counter::GoBlockEventsRecorded => (
                "go_block_events_recorded",
                Event,
                "Goroutine waits kept by the block-rate sampling and recorded.",
            ),
            Counter::GoProbeHits => (
                "go_probe_hits",
                Event,
                "Hits of the Go runtime's uprobes in targets (each a trap into the kernel, paid by the target).",
            ),
            Counter::GoParkedFull => (
                "go_parked_full",
                Dropped,
                "Goroutine parks not followed: the table of parked goroutines was full (their waits are missing from the block profile).",
            ),
            Counter::BlockEventsSeen => (
                "block_events_seen",
                Event,
                "Futex waits that ended (block-profile candidates).",
            ),
            Counter::BlockEventsRecorded => (
                "block_events_recorded",
                Event,
                "Futex waits kept by the block-rate sampling and recorded.",
            ),
            Counter::RunqHistFull => (
                "runq_hist_full",
                Dropped,
                "Run-queue latencies lost because the histogram map was full.",
            ),
            Counter::UnwindCfiFrames => (
                "unwind_cfi_frames",
                Unwind,
                "User frames unwound with CFI rows.",
            ),
            Counter::UnwindFpFrames => (
                "unwind_fp_frames",
                Unwind,
                "User frames unwound with frame pointers.",
            ),
            Counter::UnwindTruncated => (
                "unwind_truncated",
                Unwind,
                "User stacks cut at the deepest frame the unwinder walks.",
            ),
            Counter::UserStackMapFull => (
                "user_stack_map_full",
                Dropped,
                "User stacks lost because the user-stack map was full.",
            ),
            Counter::MutexEventsSeen => (
                "mutex_events_seen",
                Event,
                "Futex wake-ups that ended a span of waiting to charge (mutex-profile candidates).",
            ),
            Counter::MutexEventsRecorded => (
                "mutex_events_recorded",
                Event,
                "Futex wake-ups kept by --mutex-fraction and --mutex-rate sampling and recorded.",
            ),
            Counter::LockTableFull => (
                "lock_table_full",
                Dropped,
                "Futex waits not tracked because the lock table was full.",
            ),
            Counter::UserStackCacheHit => (
                "user_stack_cache_hit",
                Unwind,
                "User stacks taken from the walk cache (same registers and stack words as a walk before).",
            ),
            Counter::UserStackWalked => (
                "user_stack_walked",
                Unwind,
                "User stacks walked frame by frame.",
            ),
            Counter::FirstSeenFull => (
                "first_seen_full",
                Dropped,
                "Threads off CPU since before the window that could not be followed (first-seen table full).",
            ),
            Counter::ExitedFull => (
                "exited_full",
                Dropped,
                "Exited threads whose CPU time was lost (exit table full).",
            ),
            Counter::OffcpuSampledOut => (
                "offcpu_sampled_out",
                Event,
                "Off-CPU intervals left out by --offcpu-rate sampling, on purpose (the kept ones carry their weight).",
            ),
            Counter::SwitchMissed => (
                "switch_missed",
                Dropped,
                "Target switch-ins or switch-outs not seen (in twice or out twice in a row): recovered from the thread's CPU time and counted.",
            ),
            Counter::UserStackCorrupt => (
                "user_stack_corrupt",
                StackLost,
                "Stored user stacks whose frames did not hash to their handle (a walk overwritten mid-way): lost.",
            ),
            Counter::ProgRunsSkipped => (
                "prog_runs_skipped",
                Dropped,
                "Runs of the agent's programs the kernel skipped because another BPF program was running on that CPU.",
            ),
            Counter::ProcessesFollowed => (
                "processes_followed",
                Event,
                "New processes forked by a member of a target group, made targets at their fork (--children, --cgroup, --container, --pod).",
            ),
            Counter::FollowMapFull => (
                "follow_map_full",
                Dropped,
                "Forked members the agent was not told of (table full): recorded from their fork, found by the next scan of /proc.",
            ),
        };
        // The stacks-lost family's labels predate the names.
        let label = match self {
            Counter::UserStackLost => "user",
            Counter::KernelStackLost => "kernel",
            Counter::UserStackCorrupt => "user_corrupt",
            _ => name,
        };
        CounterInfo {
            name,
            label,
            group,
            help,
        }
    }

    /// Whether the agent counts it (the kernel never writes its slot).
    pub const fn agent_side(self) -> bool {
        matches!(self, Counter::UserStackCorrupt | Counter::ProgRunsSkipped)
    }
}

/// Number of slots in `COUNTERS` (room to grow without changing the map).
pub const COUNTER_SLOTS: u32 = 64;

const _: () = assert!((Counter::GoProbeHits as u32) < COUNTER_SLOTS);

shared! {
    /// Key of the CPU-sample aggregation map: one entry per (process, user stack, kernel stack).
    /// Stack ids are indexes into the stack-trace map, or negative when there was no stack.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CpuKey {
        pub tgid: u32,
        pub kernel_stack: i32,
        /// Hash of the user stack in `USER_STACKS`, or `USER_STACK_NONE`/`USER_STACK_LOST`.
        pub user_stack: u64,
        /// The sampled thread (profiles carry `tid` and `thread` labels).
        pub tid: u32,
        pub _pad: u32,
    }
}

/// Stack id meaning "this part of the stack is empty" (a user-mode sample has no kernel part).
pub const STACK_NONE: i32 = -1;
/// Stack id meaning "capturing this stack failed" (counted in `UserStackLost`/`KernelStackLost`).
pub const STACK_LOST: i32 = -2;

shared! {
    /// One row of a DWARF CFI unwind table (from `.eh_frame`), compiled by the agent for the BPF
    /// unwinder. A row applies from `pc` (an ELF virtual address of the mapped file) up to the next
    /// row's `pc`. On x86-64 the return address is always at CFA - 8.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct UnwindRow {
        pub pc: u64,
        /// CFA = (register named by `cfa_reg`) + `cfa_offset`.
        pub cfa_offset: i32,
        /// 0: the caller's rbp is the current rbp (unchanged); otherwise it was saved at
        /// CFA + `rbp_offset` (negative).
        pub rbp_offset: i16,
        /// One of `CFA_REG_*`.
        pub cfa_reg: u8,
        /// `ROW_*` flags.
        pub flags: u8,
    }
}

/// CFA is relative to rsp.
pub const CFA_REG_SP: u8 = 0;
/// CFA is relative to rbp.
pub const CFA_REG_BP: u8 = 1;
/// No usable rule at this pc (DWARF expression, unusual register, or a gap between FDEs): the
/// unwinder falls back to frame pointers.
pub const CFA_REG_NONE: u8 = 2;
/// The row marks the outermost frame (return address undefined, e.g. `_start`, `clone3`).
pub const ROW_END_OF_STACK: u8 = 1;

/// Wait classes of an off-CPU interval (the thread-level counterparts of Go's goroutine states).
pub mod wait_class {
    /// Preempted or woken and waiting in the run queue.
    pub const RUNNABLE: u32 = 0;
    /// futex wait: a lock or condition variable.
    pub const FUTEX: u32 = 1;
    /// epoll_wait, poll, select and their variants.
    pub const IO: u32 = 2;
    /// nanosleep, clock_nanosleep.
    pub const SLEEP: u32 = 3;
    /// Any other blocking syscall; the key's `syscall` names it.
    pub const SYSCALL: u32 = 4;
    /// Uninterruptible sleep (D state): disk, page faults, some kernel locks.
    pub const DISK: u32 = 5;
    /// Stopped or traced.
    pub const STOPPED: u32 = 6;
    /// Interruptible sleep outside any known syscall.
    pub const OTHER: u32 = 7;
}

/// No syscall in progress (or unknown).
pub const NO_SYSCALL: i32 = -1;

/// A `select`/`pselect6` with no descriptors (`nfds` 0) or a `poll`/`ppoll` with none: a timed
/// sleep written with an I/O call (PostgreSQL's `pg_usleep` in its spinlock backoff, portable
/// code's `usleep`), not a wait for I/O. `arg0` and `arg1` are the call's first two arguments.
#[inline(always)]
pub fn is_fdless_wait(nr: i64, arg0: u64, arg1: u64) -> bool {
    match nr {
        23 | 270 => arg0 == 0,
        7 | 271 => arg1 == 0,
        _ => false,
    }
}

shared! {
    /// Per-thread state, in a plain (not per-CPU) hash map keyed by tid: a thread leaves the CPU
    /// on one CPU and comes back on another.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ThreadState {
        /// ktime when it switched out (0: on CPU, or unknown).
        pub off_ts: u64,
        /// ktime when it was woken while off CPU (0: not woken yet).
        pub wake_ts: u64,
        /// The futex word of the wait in progress (valid with `THREAD_FUTEX_WAIT`).
        pub sys_arg0: u64,
        /// User stack at switch-out (handle into `USER_STACKS`).
        pub user_stack: u64,
        pub tgid: u32,
        /// Current syscall number, or `NO_SYSCALL`.
        pub syscall: i32,
        /// Class of the current off-CPU interval (`wait_class::*`).
        pub class: u32,
        pub kernel_stack: i32,
        /// `THREAD_*` flags.
        pub flags: u32,
        /// (Was implicit padding; named so every byte of the value is set.)
        pub _pad: u32,
        /// ktime of its last switch-in seen (0: not seen since the state was made).
        pub on_ts: u64,
        /// Wall time on CPU between the switch-ins and switch-outs seen, ns. It includes time the
        /// hypervisor stole from the vCPU, which the scheduler's CPU time leaves out.
        pub oncpu_ns: u64,
        /// ktime of the first switch-out not preceded by a switch-in seen (the agent adds the time
        /// on CPU before it: from the window's start or the thread's first switch-in).
        pub first_out_ts: u64,
        /// Its CPU time (`se.sum_exec_runtime`) at `off_ts`: when its next switch-in is not shown
        /// to the probes, the CPU time it used since tells how much of the time since `off_ts`
        /// it ran, and the rest is the wait.
        pub off_exec_ns: u64,
    }
}

/// The thread's current futex wait was counted as a waiter in `LOCKS`.
pub const THREAD_LOCK_WAITER: u32 = 1;
/// The thread is blocked in a futex wait since its switch-out (`sys_arg0` is the word), until
/// its wakeup.
pub const THREAD_FUTEX_WAIT: u32 = 4;

shared! {
    /// Key of the off-CPU aggregation map.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct OffcpuKey {
        pub tgid: u32,
        pub class: u32,
        /// The syscall for `wait_class::SYSCALL` (else `NO_SYSCALL`).
        pub syscall: i32,
        pub kernel_stack: i32,
        pub user_stack: u64,
        /// The thread that was off CPU: per-thread accounting and `tid`/`thread` labels.
        pub tid: u32,
        pub _pad: u32,
    }
}

shared! {
    /// Estimated count and total time of the intervals aggregated under one key, with the
    /// duration-weighted sampling (`Config::offcpu_rate_ns`) applied: `count_scaled` is the
    /// number of intervals × `BLOCK_COUNT_SCALE`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct OffcpuValue {
        pub count_scaled: u64,
        pub total_ns: u64,
    }
}

shared! {
    /// Key of the block-profile map: the waiter's user stack.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct BlockKey {
        pub tgid: u32,
        /// The waiting thread.
        pub tid: u32,
        pub user_stack: u64,
    }
}

/// `BlockKey::tid` of a goroutine's block event (a Go program's `gopark` → `ready`), with the
/// goroutine's wait reason (`runtime.waitReason`) in the low byte. Thread ids are below
/// 2^22 (`pid_max`), so the bit never names a thread.
pub const GOROUTINE_TID: u32 = 0x8000_0000;

shared! {
    /// A Go program whose goroutines the block and mutex profiles follow (`GO_PROCS`, by
    /// tgid): where its runtime keeps what the probes read, and which wait reasons Go's own
    /// block and mutex profiles record (bit `reason % 64` of word `reason / 64`), for this
    /// binary's Go version.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GoProc {
        /// Offsets in `runtime.g` of `sched.pc`, `sched.sp`, `sched.bp`.
        pub sched_pc: u32,
        pub sched_sp: u32,
        pub sched_bp: u32,
        /// Offset of `runtime.g.m`, and of `runtime.m.curg` (the goroutine an M runs).
        pub g_m: u32,
        pub m_curg: u32,
        /// Offset of `runtime.g.waitreason` when `go_gopark` is at `gopark`'s call of
        /// `mcall` (the reason is stored by then); 0 at its entry (the reason is in rcx).
        pub park_reason_in_g: u32,
        pub block_reasons: [u64; 4],
        /// The reasons of a goroutine waiting for a `sync.Mutex` or `sync.RWMutex` (with
        /// the lock's address from `runtime_SemacquireMutex`).
        pub mutex_reasons: [u64; 4],
    }
}

shared! {
    /// A parked goroutine (`GO_PARKED`, `GO_SEMA`): its process and its `g`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct GoParkKey {
        pub tgid: u32,
        pub _pad: u32,
        pub g: u64,
    }
}

/// `GoParked::flags`: the wait is a block-profile event.
pub const GO_PARK_BLOCK: u32 = 1;
/// `GoParked::flags`: the goroutine waits for the lock at `GoParked::addr` (mutex profile).
pub const GO_PARK_LOCK: u32 = 2;

shared! {
    /// When a goroutine parked (ktime), why (`runtime.waitReason`), what for.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GoParked {
        pub ts: u64,
        pub reason: u32,
        pub flags: u32,
        /// The lock's semaphore (`&sync.Mutex.sema`) of a `GO_PARK_LOCK` wait.
        pub addr: u64,
    }
}

shared! {
    /// A goroutine about to wait for a lock (`runtime_SemacquireMutex`): the semaphore's
    /// address and when.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct GoSema {
        pub addr: u64,
        pub ts: u64,
    }
}

/// A `GoSema` older than this at the goroutine's park is stale (the semaphore was acquired
/// without parking; the park is for something else).
pub const GO_SEMA_MAX_AGE_NS: u64 = 10_000_000;

/// Goroutines parked at once that the block profile can follow.
pub const GO_PARKED_ENTRIES: u32 = 65536;
/// Go programs followed at once.
pub const GO_PROCS_ENTRIES: u32 = 256;

shared! {
    /// Block-profile values with Go's sampling already applied: `count_milli` is the estimated
    /// number of contentions × `BLOCK_COUNT_SCALE` (fractional counts `r/d` add up exactly).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct BlockValue {
        pub count_scaled: u64,
        pub delay_ns: u64,
    }
}

/// Fixed-point scale of `BlockValue::count_scaled` and `OffcpuValue::count_scaled`.
pub const BLOCK_COUNT_SCALE: u64 = 1000;

/// Go's block-profile sampling (>= 1.17) of an event lasting `d` ns, given a uniform random
/// `r`: kept with probability min(1, d/rate); a kept event counts max(1, rate/d) (×
/// `BLOCK_COUNT_SCALE`) and weighs max(d, rate) ns, so that sums over many events are
/// unbiased. `None`: left out. A `rate` ≤ 1 keeps every event at its own weight.
#[inline(always)]
pub fn weighted_sample(d: u64, rate: u64, r: u32) -> Option<(u64, u64)> {
    let d = d.max(1);
    if rate <= 1 || d >= rate {
        return Some((BLOCK_COUNT_SCALE, d));
    }
    // Keep when r / 2^32 < d / rate. `rate` is at most a few seconds (< 2^32 ns · 2^31), so
    // neither side overflows.
    if (r as u64) * rate >= d << 32 {
        return None;
    }
    Some((rate * BLOCK_COUNT_SCALE / d, rate))
}

/// Run-queue latency histogram: log-linear buckets, `RUNQ_SUB_BUCKETS` per power of two.
pub const RUNQ_SUB_BITS: u32 = 3;
pub const RUNQ_SUB_BUCKETS: u32 = 1 << RUNQ_SUB_BITS;
pub const RUNQ_BUCKETS: u32 = 64 * RUNQ_SUB_BUCKETS;

/// Bucket of a latency in ns: values below `RUNQ_SUB_BUCKETS` map to themselves; above, the
/// power of two and the next `RUNQ_SUB_BITS` bits choose the bucket (≤ 12.5% relative error).
#[inline(always)]
pub fn runq_bucket(ns: u64) -> u32 {
    if ns < RUNQ_SUB_BUCKETS as u64 {
        return ns as u32;
    }
    let log = 63 - ns.leading_zeros();
    let sub = ((ns >> (log - RUNQ_SUB_BITS)) as u32) & (RUNQ_SUB_BUCKETS - 1);
    (log - RUNQ_SUB_BITS + 1) * RUNQ_SUB_BUCKETS + sub
}

/// Lowest latency (ns) that falls in `bucket` (inverse of [`runq_bucket`]).
pub fn runq_bucket_low(bucket: u32) -> u64 {
    if bucket < RUNQ_SUB_BUCKETS {
        return bucket as u64;
    }
    let log = bucket / RUNQ_SUB_BUCKETS + RUNQ_SUB_BITS - 1;
    let sub = (bucket % RUNQ_SUB_BUCKETS) as u64;
    (1u64 << log) | (sub << (log - RUNQ_SUB_BITS))
}

shared! {
    /// Key of the run-queue latency histogram.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RunqKey {
        pub tgid: u32,
        pub bucket: u32,
    }
}

shared! {
    /// Capture settings the programs read from the `CONFIG` array (index 0).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Config {
        /// `CONFIG_*` bits: what to record.
        pub flags: u64,
        /// Off-CPU intervals shorter than this are not recorded.
        pub offcpu_min_ns: u64,
        /// Go's block-profile rate in ns (`SetBlockProfileRate`); ≤ 1 records every event.
        pub block_rate_ns: u64,
        /// Go's mutex-profile fraction (`SetMutexProfileFraction`): 1 in N contention events is
        /// kept and weighted by N. 0 or 1 keeps all.
        pub mutex_fraction: u64,
        /// Off-CPU sampling rate in ns, with the block profile's semantics: an interval of `d` is
        /// kept with probability min(1, d/rate) and weighted max(d, rate); ≤ 1 keeps every one.
        pub offcpu_rate_ns: u64,
        /// The same duration-weighted sampling for the mutex profile, on top of `mutex_fraction`:
        /// of a release's delay (holder side) and of a wait (waiter side).
        pub mutex_rate_ns: u64,
        /// ktime the window opened at: a thread created in it is waiting to be started from its
        /// creation (`task_struct.start_time`), or from here if it was created before.
        pub window_start_ns: u64,
    }
}

pub const CONFIG_OFFCPU: u64 = 1;
pub const CONFIG_BLOCK: u64 = 2;
pub const CONFIG_MUTEX: u64 = 4;
/// A process forked by a target is a target from its fork (process groups).
pub const CONFIG_FOLLOW: u64 = 8;

/// Entries in `FOLLOWED`: processes forked by targets in one window that the agent has not
/// read yet (it reads them every tick).
pub const FOLLOWED_ENTRIES: u32 = 4096;

shared! {
    /// A futex word of a process (a lock, a condition variable, ...).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct LockKey {
        pub tgid: u32,
        pub _pad: u32,
        pub uaddr: u64,
    }
}

shared! {
    /// Waiters of one futex word, kept so that the waiting time they accumulate can be charged to
    /// whoever ends each span by waking them. With `W(t) = sum_end - sum_start + (n_start - n_end)·t`
    /// (wrapping arithmetic), `W` is the total waiter-time so far: every field is updated with an
    /// atomic add, and a release charges `W(now) - charged`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct LockState {
        pub n_start: u64,
        pub n_end: u64,
        pub sum_start: u64,
        pub sum_end: u64,
        /// `W` at the last release.
        pub charged: u64,
    }
}

shared! {
    /// Key of the mutex-profile maps: a futex word and a stack (the releasing thread's in
    /// `MUTEX`, the waiting thread's in `LOCK_WAITERS`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MutexKey {
        pub tgid: u32,
        /// The releasing thread (`MUTEX`) or the waiting thread (`LOCK_WAITERS`).
        pub tid: u32,
        pub uaddr: u64,
        pub user_stack: u64,
    }
}

shared! {
    /// Contention events (× `BLOCK_COUNT_SCALE`) and delay, with the sampling's weights (mutex
    /// fraction and mutex rate) already applied.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MutexValue {
        pub count_scaled: u64,
        pub delay_ns: u64,
    }
}

shared! {
    /// Kernel structure offsets the agent reads from the kernel's BTF and passes to the programs
    /// as constants (a hand-rolled CO-RE: aya-ebpf has no field relocations for Rust).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct KernelOffsets {
        /// `task_struct.pid`
        pub task_pid: u32,
        /// `task_struct.tgid`
        pub task_tgid: u32,
        /// `task_struct.se.sum_exec_runtime` (CPU time of an exiting thread)
        pub task_sum_exec_runtime: u32,
        /// `task_struct.start_time` (CLOCK_MONOTONIC ns)
        pub task_start_time: u32,
    }
}

shared! {
    /// What the probes saw of a target thread they never saw leave the CPU: a thread that was
    /// already off CPU when the window opened (value of `FIRST_SEEN`, keyed by tid). The agent
    /// seeds its wait from the task iterator's view at the window's start and ends it here.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FirstSeen {
        /// ktime of its first wakeup (0: none seen before it ran).
        pub wake_ts: u64,
        /// ktime of its first switch-in (0: not yet).
        pub in_ts: u64,
    }
}

/// `ThreadExit::flags`: the thread had per-thread state (`THREADS`) when it exited, so the
/// probes saw it leave the CPU or be born in the window, and its waits are theirs to record.
pub const EXIT_TRACKED: u32 = 1;

shared! {
    /// A target thread that exited during the window (value of `EXITED`, keyed by tid): what the
    /// per-thread accounting needs after the thread is gone.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ThreadExit {
        pub tgid: u32,
        /// `EXIT_*` bits.
        pub flags: u32,
        /// ktime of its last switch-out.
        pub exit_ts: u64,
        /// CPU time of the whole thread life, ns (`se.sum_exec_runtime`).
        pub sum_exec_ns: u64,
        /// `task_struct.start_time` (ktime).
        pub start_ts: u64,
        pub comm: [u8; 16],
        /// `ThreadState::oncpu_ns` with the last stretch on CPU up to the exit added.
        pub oncpu_ns: u64,
        /// `ThreadState::first_out_ts` (0: it never left the CPU in a way the probes saw).
        pub first_out_ts: u64,
    }
}

/// Deepest user stack the BPF unwinder walks.
pub const MAX_USER_FRAMES: usize = 96;

/// Rows in the unwind-row array shared by all processes (16 bytes each).
pub const UNWIND_ROWS_MAX: u32 = 1 << 20;

/// Executable mappings per process the unwinder knows (sorted by `start`).
pub const MAX_EXEC_MAPPINGS: usize = 64;

shared! {
    /// One executable mapping of a process, for the BPF unwinder. A pc in `[start, end)` has the
    /// ELF virtual address `pc - bias` in the mapped file, whose CFI rows are
    /// `UNWIND_ROWS[rows_start .. rows_start + rows_len]` (none: frame pointers only).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct ExecMapping {
        pub start: u64,
        pub end: u64,
        pub bias: u64,
        pub rows_start: u32,
        pub rows_len: u32,
    }
}

shared! {
    /// The executable mappings of one process (value of `PROC_MAPPINGS`, keyed by tgid).
    #[derive(Clone, Copy, Debug)]
    pub struct ProcMappings {
        pub count: u32,
        pub _pad: u32,
        pub entries: [ExecMapping; MAX_EXEC_MAPPINGS],
    }
}

impl Default for ProcMappings {
    fn default() -> Self {
        Self {
            count: 0,
            _pad: 0,
            entries: [ExecMapping::default(); MAX_EXEC_MAPPINGS],
        }
    }
}

shared! {
    /// A user stack unwound in BPF, leaf first (value of `USER_STACKS`, keyed by its hash).
    #[derive(Clone, Copy, Debug)]
    pub struct UserStack {
        pub len: u32,
        /// `USTACK_*` bits.
        pub flags: u32,
        pub ips: [u64; MAX_USER_FRAMES],
    }
}

/// Stack words a cached walk may depend on (every word the walk read, at most this many).
pub const WALK_CACHE_READS: usize = 32;
/// The words a cached walk read lie within this many bytes above its stack pointer.
pub const WALK_CACHE_SPAN: u32 = 4096;

shared! {
    /// Key of the user-stack walk cache: a thread and the user instruction pointer it stopped at.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct WalkCacheKey {
        pub tid: u32,
        pub _pad: u32,
        pub ip: u64,
    }
}

shared! {
    /// A finished walk and everything it depended on. A walk is a pure function of the starting
    /// registers and the stack words it read (given the unwind rows), so when `sp` and `bp` are
    /// the same and every word at `sp + offs[i]` still holds `vals[i]`, walking again would give
    /// the same frames: `handle`.
    #[derive(Clone, Copy, Debug)]
    pub struct WalkCacheEntry {
        pub sp: u64,
        pub bp: u64,
        pub handle: u64,
        /// `WALK_GEN` when the walk was made.
        pub generation: u64,
        /// Bytes from `sp` that cover every read word (`max(offs) + 8`).
        pub span: u32,
        /// Words read.
        pub n: u32,
        /// Non-zero when the walk used the starting `bp` (a frame-pointer step or an rbp-based
        /// CFA before rbp was restored from the stack); otherwise `bp` need not match.
        pub bp_used: u32,
        /// Scratch bits of the BPF walker while the walk is being logged; 0 in the cache.
        pub walk_state: u32,
        pub offs: [u32; WALK_CACHE_READS],
        pub vals: [u64; WALK_CACHE_READS],
    }
}

/// The walk stopped at `MAX_USER_FRAMES` (the stack is truncated at the root end).
pub const USTACK_TRUNCATED: u32 = 1;
/// At least one frame was unwound with CFI rows (not frame pointers).
pub const USTACK_USED_CFI: u32 = 2;

/// User-stack handle meaning "no user stack" (a kernel thread) in aggregation keys.
pub const USER_STACK_NONE: u64 = 0;
/// User-stack handle meaning "capturing it failed" (counted).
pub const USER_STACK_LOST: u64 = 1;
/// User-stack handle of a new thread's wait before its first run (it has no stack of its own
/// yet: it starts where its creator's clone returns).
pub const USER_STACK_NOT_STARTED: u64 = 2;

/// The hash of a user stack (its handle in `USER_STACKS`) starts here (FNV-1a's basis)...
pub const STACK_HASH_INIT: u64 = 0xcbf2_9ce4_8422_2325;

/// ... takes each frame, leaf first, like this ...
#[inline(always)]
pub fn stack_hash_step(h: u64, ip: u64) -> u64 {
    (h ^ ip).wrapping_mul(0x0000_0100_0000_01b3)
}

/// ... and never collides with `USER_STACK_NONE`, `USER_STACK_LOST` or
/// `USER_STACK_NOT_STARTED`.
#[inline(always)]
pub fn stack_handle(h: u64) -> u64 {
    if h <= USER_STACK_NOT_STARTED {
        h + 3
    } else {
        h
    }
}

/// The handle of a stack of frames (leaf first): what the BPF unwinder stores it under, so the
/// agent can check that a stored stack is the one its handle names.
pub fn stack_hash(ips: &[u64]) -> u64 {
    stack_handle(
        ips.iter()
            .fold(STACK_HASH_INIT, |h, &ip| stack_hash_step(h, ip)),
    )
}

/// Thread dumps (the `dump_task` task iterator).
pub mod dump;
pub mod maps;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type below is declared with `shared!`: `#[repr(C)]` integers (and arrays
    // of them) whose size is checked at compile time to be the sum of their fields' (no
    // implicit padding).
    unsafe impl aya::Pod for CpuKey {}
    unsafe impl aya::Pod for UnwindRow {}
    unsafe impl aya::Pod for ThreadState {}
    unsafe impl aya::Pod for OffcpuKey {}
    unsafe impl aya::Pod for OffcpuValue {}
    unsafe impl aya::Pod for BlockKey {}
    unsafe impl aya::Pod for BlockValue {}
    unsafe impl aya::Pod for RunqKey {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for ExecMapping {}
    unsafe impl aya::Pod for ProcMappings {}
    unsafe impl aya::Pod for UserStack {}
    unsafe impl aya::Pod for WalkCacheKey {}
    unsafe impl aya::Pod for WalkCacheEntry {}
    unsafe impl aya::Pod for LockKey {}
    unsafe impl aya::Pod for LockState {}
    unsafe impl aya::Pod for MutexKey {}
    unsafe impl aya::Pod for MutexValue {}
    unsafe impl aya::Pod for FirstSeen {}
    unsafe impl aya::Pod for ThreadExit {}
    unsafe impl aya::Pod for GoProc {}
    unsafe impl aya::Pod for GoParkKey {}
    unsafe impl aya::Pod for GoParked {}
    unsafe impl aya::Pod for GoSema {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_counter_once_with_its_own_name() {
        use super::{COUNTER_SLOTS, Counter};
        let mut names: [&str; Counter::ALL.len()] = [""; Counter::ALL.len()];
        for w in Counter::ALL.windows(2) {
            assert!(w[0] < w[1], "ALL out of slot order at {:?}", w[1]);
        }
        for c in Counter::ALL {
            assert!((c as u32) < COUNTER_SLOTS);
            let i = c.info();
            assert!(!names.contains(&i.name), "{} twice", i.name);
            names[Counter::ALL.iter().position(|x| *x == c).unwrap()] = i.name;
            assert!(i.help.ends_with('.') && !i.help.is_empty(), "{c:?}'s help");
        }
        // The last variant is in ALL (a new one added at the end must be listed).
        assert_eq!(Counter::ALL.last(), Some(&Counter::GoProbeHits));
    }

    use super::*;

    #[test]
    fn stack_hashes_are_handles() {
        assert_eq!(stack_hash(&[]), STACK_HASH_INIT);
        assert_ne!(stack_hash(&[1, 2]), stack_hash(&[2, 1]));
        for ips in [[0u64; 0].as_slice(), &[0x401000], &[7, 8, 9]] {
            assert!(stack_hash(ips) > USER_STACK_NOT_STARTED);
        }
    }

    #[test]
    fn runq_buckets_are_monotonic_and_invert() {
        let mut last = 0;
        for ns in (0u64..100_000).chain([1 << 20, 3 << 30, u64::MAX / 2]) {
            let b = runq_bucket(ns);
            assert!(b >= last || ns > 100_000, "bucket of {ns} went down");
            assert!(b < RUNQ_BUCKETS, "bucket {b} of {ns} out of range");
            let low = runq_bucket_low(b);
            assert!(low <= ns, "{ns} below its bucket low {low}");
            assert!(ns - low <= low / 8 + 1, "{ns} too far from {low}");
            if ns <= 100_000 {
                last = b;
            }
        }
    }

    #[test]
    fn weighted_sampling_is_unbiased_over_its_random_draws() {
        // Every draw r in an even sweep of [0, 2^32): the kept events' weights must add up to
        // the events' own total, in count and in time.
        const DRAWS: u64 = 1 << 16;
        for (d, rate) in [
            (1, 100_000),
            (2_500, 100_000),
            (40_000, 100_000),
            (99_999, 100_000),
        ] {
            let (mut n, mut ns) = (0u64, 0u64);
            for i in 0..DRAWS {
                let r = (i << 32) / DRAWS;
                if let Some((c, w)) = weighted_sample(d, rate, r as u32) {
                    assert_eq!(w, rate, "a short event weighs the rate");
                    n += c;
                    ns += w;
                }
            }
            let want_ns = d as f64 * DRAWS as f64;
            assert!(
                (ns as f64 - want_ns).abs() <= rate as f64,
                "d={d}: {ns} ns kept for {want_ns}"
            );
            // Within one kept event's count of the truth.
            let want_n = (BLOCK_COUNT_SCALE * DRAWS) as f64;
            let one = (rate * BLOCK_COUNT_SCALE / d) as f64;
            assert!(
                (n as f64 - want_n).abs() <= one,
                "d={d}: count {n} for {want_n}"
            );
        }
    }

    #[test]
    fn long_events_and_rate_one_are_always_kept_at_their_own_weight() {
        for r in [0, 1 << 31, u32::MAX] {
            assert_eq!(weighted_sample(5, 1, r), Some((BLOCK_COUNT_SCALE, 5)));
            assert_eq!(weighted_sample(0, 0, r), Some((BLOCK_COUNT_SCALE, 1)));
            assert_eq!(
                weighted_sample(200_000, 100_000, r),
                Some((BLOCK_COUNT_SCALE, 200_000))
            );
        }
        // The largest rate the CLI takes (4 s) does not overflow.
        assert!(weighted_sample(3_999_999_999, 4_000_000_000, u32::MAX).is_none());
        assert!(weighted_sample(3_999_999_999, 4_000_000_000, 0).is_some());
    }
}
