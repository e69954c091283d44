//! Off-CPU and block profiles.
//!
//! - `sched_switch` (BTF tracepoint; current == prev): a target thread leaving the CPU gets its
//!   switch-out time, stacks and wait class stored in `THREADS` (keyed by tid, not per-CPU);
//!   the thread coming in (`next`) closes its interval into `OFFCPU`.
//! - `sched_wakeup`: the time a sleeping thread became runnable, so the interval splits into
//!   the wait itself and the run-queue latency after it (`runnable`).
//! - `futex_enter`/`futex_exit` (`syscalls:sys_enter_futex`/`sys_exit_futex`): the mutex profile's
//!   waits and wakes, the block profile (sampled in the kernel with Go's `SetBlockProfileRate`
//!   semantics), and the user stack of the futex waits the off-CPU sampling kept. No other
//!   syscall is hooked: the class of a thread's wait comes from its saved user registers at
//!   the switch-out (`current_syscall`).
//! - A target thread's last switch-out (`TASK_DEAD`) moves its state from `THREADS` to
//!   `EXITED`, for the window's accounting.
//!
//! Off-CPU intervals are sampled like the block profile (`Config::offcpu_rate_ns`): an
//! interval of `d` is kept with probability min(1, d/rate) and weighted max(d, rate). A wait
//! inside a futex call gets its user stack only if it is kept, once, at the call's end (the
//! user registers cannot change before it returns); other waits take it at the switch-out.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs},
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap},
    programs::{BtfTracePointContext, TracePointContext},
};
use stallscope_common::{
    AGG_MAP_ENTRIES, BlockKey, BlockValue, CONFIG_BLOCK, CONFIG_MUTEX, CONFIG_OFFCPU, Config,
    Counter, EXIT_TRACKED, FirstSeen, KernelOffsets, NO_SYSCALL, OffcpuKey, OffcpuValue,
    PENDING_RUNQ, PENDING_WAIT, PendingWait, RunqKey, STACK_NONE, THREAD_IN_FUTEX,
    THREAD_LOCK_WAITER, THREAD_STACK_DEFERRED, THREAD_SYS_STACK, ThreadExit, ThreadState,
    USER_STACK_LOST, USER_STACK_NONE, USER_STACK_NOT_STARTED, is_fdless_wait, runq_bucket,
    wait_class,
};

use crate::{
    mutex,
    shared::{
        add_or_insert, add_pair_or_insert, count, is_target, kernel_stack, sample_by_duration,
    },
    unwind::{SLOT_TRACEPOINT, user_stack_handle},
};

/// Threads tracked at once (all target threads that are or were off CPU in the window).
const THREAD_ENTRIES: u32 = 65536;

#[map]
static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Target threads whose first switch-in the probes saw without having seen them leave the
/// CPU: threads already off CPU when the window opened (and new threads). Written once per
/// thread; the agent ends the waits it seeded at the window's start with it.
#[map]
static FIRST_SEEN: HashMap<u32, FirstSeen> = HashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Target threads that exited in the window, with their CPU time (per-thread accounting).
#[map]
static EXITED: HashMap<u32, ThreadExit> = HashMap::with_max_entries(THREAD_ENTRIES, 0);

#[map]
static OFFCPU: HashMap<OffcpuKey, OffcpuValue> = HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
static BLOCK: HashMap<BlockKey, BlockValue> = HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
static RUNQ_HIST: HashMap<RunqKey, u64> = HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Offsets into kernel structures, set by the agent from the kernel's BTF before loading.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_sum_exec_runtime: 0,
    task_start_time: 0,
};

// x86-64 syscall numbers.
const SYS_POLL: i32 = 7;
const SYS_SELECT: i32 = 23;
const SYS_NANOSLEEP: i32 = 35;
const SYS_FUTEX: i32 = 202;
const SYS_CLOCK_NANOSLEEP: i32 = 230;
const SYS_EPOLL_WAIT: i32 = 232;
const SYS_PSELECT6: i32 = 270;
const SYS_PPOLL: i32 = 271;
const SYS_EPOLL_PWAIT: i32 = 281;
const SYS_EPOLL_PWAIT2: i32 = 441;
const SYS_FUTEX_WAITV: i32 = 449;

// futex operations that wait (after masking FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME).
const FUTEX_CMD_MASK: u32 = !(128 | 256);
const FUTEX_WAIT: u32 = 0;
const FUTEX_LOCK_PI: u32 = 6;
const FUTEX_WAIT_BITSET: u32 = 9;
const FUTEX_WAIT_REQUEUE_PI: u32 = 11;
const FUTEX_LOCK_PI2: u32 = 13;
const FUTEX_WAKE: u32 = 1;
const FUTEX_WAKE_OP: u32 = 5;
const FUTEX_UNLOCK_PI: u32 = 7;
const FUTEX_WAKE_BITSET: u32 = 10;

// task states (prev_state of sched_switch).
const TASK_UNINTERRUPTIBLE: u32 = 0x2;
const TASK_STOPPED: u32 = 0x4;
const TASK_TRACED: u32 = 0x8;
const TASK_DEAD: u32 = 0x80;
const TASK_NOLOAD: u32 = 0x400;

// Offsets of struct pt_regs (x86-64 uapi layout, stable).
/// `ThreadState::syscall` of a select or poll without descriptors: a timed sleep.
const SYS_FDLESS_WAIT: i32 = -2;

const PT_REGS_R11: usize = 48;
const PT_REGS_AX: usize = 80;
const PT_REGS_CX: usize = 88;
const PT_REGS_SI: usize = 104;
const PT_REGS_DI: usize = 112;
const PT_REGS_ORIG_AX: usize = 120;
const PT_REGS_IP: usize = 128;
const PT_REGS_FLAGS: usize = 144;

// The records of the syscalls:sys_enter_* tracepoints: the arguments from offset 16, 8 bytes each.
const SYS_ENTER_ARG0: usize = 16;
const SYS_ENTER_ARG1: usize = 24;

const ENOSYS: u64 = 38;
/// Beyond every x86-64 syscall number: larger `orig_ax` values are not syscalls.
const MAX_SYSCALL_NR: u64 = 1024;

#[inline(always)]
fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
fn offsets() -> KernelOffsets {
    // SAFETY: a constant in .rodata written by the loader; volatile so it isn't folded to 0.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
fn task_pid(task: *const u8) -> u32 {
    let off = offsets().task_pid as usize;
    // SAFETY: `task` is a BTF-typed task_struct pointer and `off` a constant the verifier reads
    // from the frozen .rodata: it checks the access against the kernel's BTF and turns it into a
    // fault-handling load, cheaper than a bpf_probe_read_kernel call.
    unsafe { core::ptr::read_volatile(task.add(off) as *const u32) }
}

#[inline(always)]
fn task_tgid(task: *const u8) -> u32 {
    let off = offsets().task_tgid as usize;
    // SAFETY: as in `task_pid`.
    unsafe { core::ptr::read_volatile(task.add(off) as *const u32) }
}

/// The current thread's (tgid, tid), read from its task_struct: `bpf_get_current_task_btf` is
/// inlined by the JIT (a per-CPU load) where `bpf_get_current_pid_tgid` is a call.
#[inline(always)]
fn current_ids() -> (u32, u32) {
    // SAFETY: helper without arguments; returns the BTF-typed current task.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    (task_tgid(task), task_pid(task))
}

/// Whether `task` belongs to a target process, without touching the thread table.
#[inline(always)]
fn is_target_task(task: *const u8) -> bool {
    is_target(task_tgid(task))
}

/// A u64 member of `task` at offset `off`.
#[inline(always)]
fn task_u64(task: *const u8, off: u32) -> u64 {
    // SAFETY: as in `task_pid`.
    unsafe { core::ptr::read_volatile(task.add(off as usize) as *const u64) }
}

#[inline(always)]
fn is_futex_wait(op: u32) -> bool {
    matches!(
        op & FUTEX_CMD_MASK,
        FUTEX_WAIT | FUTEX_WAIT_BITSET | FUTEX_LOCK_PI | FUTEX_LOCK_PI2 | FUTEX_WAIT_REQUEUE_PI
    )
}

#[inline(always)]
fn is_futex_wake(op: u32) -> bool {
    matches!(
        op & FUTEX_CMD_MASK,
        FUTEX_WAKE | FUTEX_WAKE_BITSET | FUTEX_WAKE_OP | FUTEX_UNLOCK_PI
    )
}

#[inline(always)]
fn syscall_class(st: &ThreadState) -> u32 {
    match st.syscall {
        SYS_FUTEX | SYS_FUTEX_WAITV => wait_class::FUTEX,
        SYS_EPOLL_WAIT | SYS_EPOLL_PWAIT | SYS_EPOLL_PWAIT2 | SYS_POLL | SYS_PPOLL | SYS_SELECT
        | SYS_PSELECT6 => wait_class::IO,
        SYS_NANOSLEEP | SYS_CLOCK_NANOSLEEP | SYS_FDLESS_WAIT => wait_class::SLEEP,
        NO_SYSCALL => wait_class::OTHER,
        _ => wait_class::SYSCALL,
    }
}

/// The syscall the current thread is in, from its saved user registers, or `NO_SYSCALL`;
/// `SYS_FDLESS_WAIT` for a select or poll without descriptors (a sleep: `is_fdless_wait`).
///
/// `orig_ax` holds the syscall number during a syscall, but also an exception's error code
/// (a page fault's is a small number) or an interrupt's negated vector. A syscall is told
/// apart by what its entry saved: the `syscall` instruction put the user's rip in rcx and its
/// rflags in r11, and the kernel set `ax` to -ENOSYS until the call returns; an exception's
/// frame holds the user's own registers there. 32-bit (int 0x80) calls are not recognized.
#[inline(always)]
fn current_syscall() -> i32 {
    // SAFETY: BTF-typed current task; the helper returns its user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    if regs.is_null() {
        return NO_SYSCALL;
    }
    // SAFETY: a BTF-typed struct pt_regs pointer: constant-offset loads the verifier checks.
    let read = |off: usize| unsafe { core::ptr::read_volatile(regs.add(off) as *const u64) };
    let nr = read(PT_REGS_ORIG_AX);
    if nr >= MAX_SYSCALL_NR
        || read(PT_REGS_AX) != ENOSYS.wrapping_neg()
        || read(PT_REGS_CX) != read(PT_REGS_IP)
        || read(PT_REGS_R11) != read(PT_REGS_FLAGS)
    {
        return NO_SYSCALL;
    }
    if is_fdless_wait(nr as i64, read(PT_REGS_DI), read(PT_REGS_SI)) {
        return SYS_FDLESS_WAIT;
    }
    nr as i32
}

/// The current thread's user stack. In a futex call it is taken once and kept for the rest of
/// the call (a futex call's user registers cannot change before it returns): the switch-out,
/// the mutex profile and the block profile of one wait share one look-up.
#[inline(always)]
/// Each program calls it from one place only: every inlined copy of the unwinder is verified
/// again, which is what loading time grows with.
fn syscall_stack(tgid: u32, st: &mut ThreadState) -> u64 {
    if st.flags & THREAD_SYS_STACK != 0 {
        return st.sys_stack;
    }
    let h = user_stack_handle::<SLOT_TRACEPOINT>(tgid);
    if st.flags & THREAD_IN_FUTEX != 0 {
        st.sys_stack = h;
        st.flags |= THREAD_SYS_STACK;
    }
    h
}

/// Adds a kept interval (`count_scaled`, weighted `ns`) under the thread's current stacks.
#[inline(always)]
fn record(tid: u32, class: u32, st: &ThreadState, count_scaled: u64, ns: u64) {
    let syscall = if class == wait_class::SYSCALL {
        st.syscall
    } else {
        NO_SYSCALL
    };
    record_key(
        OffcpuKey {
            tid,
            _pad: 0,
            tgid: st.tgid,
            class,
            syscall,
            kernel_stack: st.kernel_stack,
            user_stack: st.user_stack,
        },
        count_scaled,
        ns,
    );
}

/// Adds to `OFFCPU`; the interval was counted as recorded when it was kept (`interval`).
#[inline(always)]
fn record_key(key: OffcpuKey, count_scaled: u64, ns: u64) {
    if !add_pair_or_insert(&OFFCPU, &key, count_scaled, ns) {
        count(Counter::AggMapFull);
    }
}

/// The sampling decision for an interval of `ns` of class `class` that just ended: left out,
/// recorded, or (its stack deferred) added to the thread's pending waits.
#[inline(always)]
fn interval(tid: u32, class: u32, st: &mut ThreadState, ns: u64, cfg: &Config) {
    if ns < cfg.offcpu_min_ns {
        count(Counter::OffcpuBelowMin);
        return;
    }
    let Some((n, w)) = sample_by_duration(ns, cfg.offcpu_rate_ns) else {
        count(Counter::OffcpuSampledOut);
        return;
    };
    count(Counter::OffcpuRecorded);
    if st.flags & THREAD_STACK_DEFERRED != 0 {
        let slot = if class == wait_class::RUNNABLE {
            PENDING_RUNQ
        } else {
            PENDING_WAIT
        };
        let p = &mut st.pending[slot];
        p.count_scaled += n;
        p.ns += w;
        count(Counter::OffcpuDeferred);
        return;
    }
    record(tid, class, st, n, w);
}

#[inline(always)]
fn record_runq(tgid: u32, ns: u64) {
    let key = RunqKey {
        tgid,
        bucket: runq_bucket(ns),
    };
    if !add_or_insert(&RUNQ_HIST, &key, 1) {
        count(Counter::RunqHistFull);
    }
}

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
///              unsigned int prev_state)
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> u32 {
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // Current is prev. Most switches on a machine are between other processes: they leave
    // after two reads of a tgid and two bitmap look-ups (no helper call), before the clock or
    // the configuration is read. The idle task's tgid 0 is never a target.
    let tgid = task_tgid(prev);
    let prev_is_target = is_target(tgid);
    let next_is_target = is_target_task(next);
    if !prev_is_target && !next_is_target {
        return 0;
    }
    let cfg = config();
    let prev_state = ctx.arg::<u64>(3) as u32;
    if cfg.flags & CONFIG_OFFCPU == 0 {
        if prev_is_target && prev_state & TASK_DEAD != 0 {
            // Not recording: a dying thread's state must not outlive it.
            let _ = THREADS.remove(task_pid(prev));
        }
        return 0;
    }
    let tid = task_pid(prev);
    let prev_is_target = prev_is_target && tid != 0;
    let now = unsafe { bpf_ktime_get_ns() };
    if prev_is_target {
        let preempt: u64 = ctx.arg(0);
        if prev_state & TASK_DEAD != 0 {
            thread_died(prev, tid, tgid, now, &cfg);
        } else {
            switch_out(&ctx, tid, tgid, preempt != 0, prev_state, now, &cfg);
        }
    }
    // Switch-in of next: close its interval if we saw it leave.
    if next_is_target {
        let next_tid = task_pid(next);
        if next_tid != 0 {
            switch_in(next_tid, now, &cfg);
        }
    }
    0
}

#[inline(always)]
fn switch_out(
    ctx: &BtfTracePointContext,
    tid: u32,
    tgid: u32,
    preempt: bool,
    prev_state: u32,
    now: u64,
    cfg: &Config,
) {
    let state = prev_state & 0xff_ffff;
    count(Counter::OffcpuSwitchOut);
    let existing = THREADS.get_ptr_mut(tid);
    let mut st = match existing {
        // SAFETY: copy of a live map value.
        Some(p) => unsafe { *p },
        None => ThreadState {
            tgid,
            ..ThreadState::default()
        },
    };
    let prev: *const u8 = ctx.arg(1);
    // The interval before this one first, under its own class, syscall and stack.
    if st.on_ts != 0 {
        st.oncpu_ns += now.saturating_sub(st.on_ts);
    } else if st.off_ts != 0 {
        // Out twice in a row: the switch-in between was not seen.
        recover_missed_switch_in(tid, &mut st, prev, now, cfg);
    } else if st.first_out_ts == 0 {
        st.first_out_ts = now;
    }
    st.syscall = current_syscall();
    st.class = if preempt || state == 0 {
        wait_class::RUNNABLE
    } else if state & (TASK_STOPPED | TASK_TRACED) != 0 {
        wait_class::STOPPED
    } else if state & TASK_UNINTERRUPTIBLE != 0 && state & TASK_NOLOAD == 0 {
        wait_class::DISK
    } else {
        syscall_class(&st)
    };
    st.off_exec_ns = task_u64(prev, offsets().task_sum_exec_runtime);
    st.on_ts = 0;
    st.off_ts = now;
    st.wake_ts = 0;
    st.tgid = tgid;
    let in_futex = st.flags & THREAD_IN_FUTEX != 0;
    if in_futex
        && st.flags & THREAD_SYS_STACK == 0
        && (st.class == wait_class::FUTEX || st.class == wait_class::RUNNABLE)
    {
        // Taken at the call's end, and only if the sampling keeps this interval.
        st.flags |= THREAD_STACK_DEFERRED;
        st.user_stack = USER_STACK_NONE;
    } else {
        st.user_stack = syscall_stack(tgid, &mut st);
    }
    // The kernel stack says something only when the wait class does not already: a thread
    // blocked in futex, poll/epoll or nanosleep is always in that syscall's wait path, and a
    // preempted one in the scheduler's preemption path. Capturing it (the kernel's ORC walk)
    // cost more than everything else in this program together.
    st.kernel_stack = match st.class {
        wait_class::FUTEX | wait_class::IO | wait_class::SLEEP | wait_class::RUNNABLE => STACK_NONE,
        _ => kernel_stack(ctx),
    };
    match existing {
        // SAFETY: writing back into the live map value of this thread; only this thread's
        // own switch-out and the wakeup path write it.
        Some(p) => unsafe { *p = st },
        None => {
            if THREADS.insert(tid, st, 0).is_err() {
                count(Counter::ThreadMapFull);
            }
        }
    }
}

#[inline(always)]
fn switch_in(tid: u32, now: u64, cfg: &Config) {
    let Some(p) = THREADS.get_ptr_mut(tid) else {
        first_seen(tid, now, true);
        return;
    };
    // SAFETY: live map value of this thread.
    let st = unsafe { &mut *p };
    if st.off_ts == 0 && st.on_ts != 0 {
        // In twice in a row: the switch-out between was not seen.
        count(Counter::SwitchMissed);
    }
    st.on_ts = now;
    if st.off_ts == 0 {
        // Never seen leaving the CPU (its state came from a syscall entry): nothing to close,
        // but if it was off CPU when the window opened its seeded wait ends here.
        first_seen(tid, now, true);
        return;
    }
    close_interval(tid, st, now, cfg);
}

/// Ends the off-CPU interval that began at `st.off_ts` at `in_ts` (the switch-in, seen or
/// recovered), split at the wakeup into the wait and the run-queue time after it.
#[inline(always)]
fn close_interval(tid: u32, st: &mut ThreadState, in_ts: u64, cfg: &Config) {
    let off = st.off_ts;
    st.off_ts = 0;
    if st.class != wait_class::RUNNABLE && st.wake_ts > off && st.wake_ts <= in_ts {
        // Blocked until the wakeup, then waited in the run queue.
        let blocked = st.wake_ts - off;
        let queued = in_ts - st.wake_ts;
        let class = st.class;
        interval(tid, class, st, blocked, cfg);
        record_runq(st.tgid, queued);
        interval(tid, wait_class::RUNNABLE, st, queued, cfg);
    } else {
        let ns = in_ts.saturating_sub(off);
        if st.class == wait_class::RUNNABLE {
            record_runq(st.tgid, ns);
        }
        let class = st.class;
        interval(tid, class, st, ns, cfg);
    }
    st.wake_ts = 0;
}

/// A thread leaving the CPU (or dying) while still marked off it since `st.off_ts`: its
/// switch-in was not shown to the probes (the kernel's own `sched_switch` tracepoint never
/// shows some, for new threads mostly; counted). The CPU time it used since `off_ts` tells how
/// long it ran: the interval is closed that long before `now`, and that time is on CPU.
#[inline(always)]
fn recover_missed_switch_in(
    tid: u32,
    st: &mut ThreadState,
    task: *const u8,
    now: u64,
    cfg: &Config,
) {
    count(Counter::SwitchMissed);
    let exec = task_u64(task, offsets().task_sum_exec_runtime);
    let since = now.saturating_sub(st.off_ts);
    let ran = exec.saturating_sub(st.off_exec_ns).min(since);
    close_interval(tid, st, now - ran, cfg);
    st.oncpu_ns += ran;
}

/// Notes the first wakeup (`switch_in` false) or switch-in of a target thread the probes never
/// saw leave the CPU (no `THREADS` entry): once per thread and window.
#[inline(always)]
fn first_seen(tid: u32, now: u64, switch_in: bool) {
    if let Some(p) = FIRST_SEEN.get_ptr_mut(tid) {
        // SAFETY: live map value; only this thread's own wakeup and switch-in write it.
        let f = unsafe { &mut *p };
        if switch_in && f.in_ts == 0 {
            f.in_ts = now;
        }
        return;
    }
    let f = if switch_in {
        FirstSeen {
            wake_ts: 0,
            in_ts: now,
        }
    } else {
        FirstSeen {
            wake_ts: now,
            in_ts: 0,
        }
    };
    if FIRST_SEEN.insert(tid, f, 1 /* BPF_NOEXIST */).is_err() && FIRST_SEEN.get_ptr(tid).is_none()
    {
        count(Counter::FirstSeenFull);
    }
}

/// sched_wakeup(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    if !is_target_task(task) || config().flags & CONFIG_OFFCPU == 0 {
        return 0;
    }
    let tid = task_pid(task);
    match THREADS.get_ptr_mut(tid) {
        Some(p) => {
            // SAFETY: live map value.
            let st = unsafe { &mut *p };
            if st.off_ts != 0 && st.wake_ts == 0 {
                st.wake_ts = unsafe { bpf_ktime_get_ns() };
            }
        }
        None => first_seen(tid, unsafe { bpf_ktime_get_ns() }, false),
    }
    0
}

/// sched_wakeup_new(struct task_struct *p): a new thread of a target, waiting to be started
/// from its creation until its first switch-in. No other hook sees that wait begin (the new
/// thread never switched out), and on a process that creates threads by the thousand it is a
/// large part of their lives. It begins at the creation (`start_time`), not at this wakeup:
/// the creator may be preempted in between, for milliseconds on a busy machine.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    let cfg = config();
    if !is_target_task(task) || cfg.flags & CONFIG_OFFCPU == 0 {
        return 0;
    }
    let tid = task_pid(task);
    let now = unsafe { bpf_ktime_get_ns() };
    let created = task_u64(task, offsets().task_start_time);
    let st = ThreadState {
        tgid: task_tgid(task),
        off_ts: created.max(cfg.window_start_ns).min(now),
        class: wait_class::RUNNABLE,
        syscall: NO_SYSCALL,
        user_stack: USER_STACK_NOT_STARTED,
        kernel_stack: STACK_NONE,
        off_exec_ns: task_u64(task, offsets().task_sum_exec_runtime),
        ..ThreadState::default()
    };
    if THREADS.insert(tid, st, 1 /* BPF_NOEXIST */).is_err() && THREADS.get_ptr(tid).is_none() {
        count(Counter::ThreadMapFull);
    }
    0
}

/// `syscalls:sys_enter_futex`: the mutex profile's waits and wakes. Every futex call on the
/// machine runs it; other processes leave after one bitmap look-up. (The per-syscall
/// tracepoint rather than fentry on `__x64_sys_futex`: the kernels this runs on may refuse
/// fentry programs, as lockdown does here.)
#[tracepoint(category = "syscalls", name = "sys_enter_futex")]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    // Attached but not recording (the window is opening or closing): no thread state, so that
    // a thread's first switch-in in the window is seen as such (`FIRST_SEEN`).
    let cfg = config();
    if cfg.flags == 0 {
        return 0;
    }
    let rec = ctx.as_ptr() as *const u8;
    // SAFETY: the tracepoint's record (`format`: uaddr at 16, op at 24, 8 bytes each): loads
    // from the context at constant offsets inside it, which the verifier checks.
    let (uaddr, op) = unsafe {
        (
            core::ptr::read_volatile(rec.add(SYS_ENTER_ARG0) as *const u64),
            core::ptr::read_volatile(rec.add(SYS_ENTER_ARG1) as *const u64) as u32,
        )
    };
    let now = unsafe { bpf_ktime_get_ns() };
    // The thread's state first: the mutex release below takes the thread's stack through it.
    let state = match THREADS.get_ptr_mut(tid) {
        Some(p) => Some(p),
        None => {
            let st = ThreadState {
                tgid,
                syscall: NO_SYSCALL,
                user_stack: USER_STACK_NONE,
                kernel_stack: STACK_NONE,
                ..ThreadState::default()
            };
            if THREADS.insert(tid, st, 0).is_err() {
                count(Counter::ThreadMapFull);
            }
            THREADS.get_ptr_mut(tid)
        }
    };
    if let Some(p) = state {
        // SAFETY: live map value of this thread.
        let st = unsafe { &mut *p };
        st.syscall = SYS_FUTEX;
        st.sys_enter_ts = now;
        st.sys_arg0 = uaddr;
        st.sys_arg1 = op;
        st.flags = THREAD_IN_FUTEX;
        st.pending = [PendingWait::default(); 2];
    }
    if cfg.flags & CONFIG_MUTEX == 0 {
        return 0;
    }
    // SAFETY: live map value of this thread.
    let st = state.map(|p| unsafe { &mut *p });
    if is_futex_wait(op) {
        // Only a thread with state can report its wait's end (at futex_exit).
        if let Some(st) = st
            && mutex::wait_begin(tgid, uaddr, now)
        {
            st.flags |= THREAD_LOCK_WAITER;
        }
    } else if is_futex_wake(op) {
        // Without thread state (the thread table is full, counted) the stack is not taken:
        // a second copy of the unwinder here would cost more verifier time than it is worth.
        mutex::release(&cfg, tgid, uaddr, now, || match st {
            Some(st) => syscall_stack(tgid, st),
            None => {
                count(Counter::UserStackLost);
                USER_STACK_LOST
            }
        });
    }
    0
}

/// `syscalls:sys_exit_futex`: the end of a futex wait (mutex and block profiles) and the
/// user stack of its kept off-CPU intervals.
#[tracepoint(category = "syscalls", name = "sys_exit_futex")]
pub fn futex_exit(_ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current_ids();
    if !is_target(tgid) {
        return 0;
    }
    let Some(p) = THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: live map value of this thread.
    let st = unsafe { &mut *p };
    if st.flags & THREAD_IN_FUTEX != 0 {
        futex_ended(tgid, tid, st);
    }
    st.syscall = NO_SYSCALL;
    st.sys_enter_ts = 0;
    st.flags = 0;
    st.pending = [PendingWait::default(); 2];
    0
}

/// The end of a followed futex call: the mutex profile's waiter accounting, the block profile
/// and the kept off-CPU intervals that wait for this call's stack. Runs when the window is
/// closing too (the intervals were kept while it was open; the waiter count must balance).
#[inline(always)]
fn futex_ended(tgid: u32, tid: u32, st: &mut ThreadState) {
    let enter = st.sys_enter_ts;
    let op = st.sys_arg1;
    let uaddr = st.sys_arg0;
    let cfg = config();
    let now = unsafe { bpf_ktime_get_ns() };
    let waited = now.saturating_sub(enter);
    // The mutex profile's waiter side, and whether this wait's stack is recorded there.
    let waiter_weight = if st.flags & THREAD_LOCK_WAITER != 0 {
        mutex::wait_end(&cfg, tgid, uaddr, now, waited)
    } else {
        None
    };
    let block = if is_futex_wait(op) && cfg.flags & CONFIG_BLOCK != 0 {
        block_sample(&cfg, waited)
    } else {
        None
    };
    let pending = st.flags & THREAD_STACK_DEFERRED != 0
        && (st.pending[PENDING_WAIT].count_scaled | st.pending[PENDING_RUNQ].count_scaled) != 0;
    if waiter_weight.is_none() && block.is_none() && !pending {
        return;
    }
    st.flags &= !THREAD_STACK_DEFERRED;
    let stack = syscall_stack(tgid, st);
    if pending {
        for (slot, class) in [
            (PENDING_WAIT, wait_class::FUTEX),
            (PENDING_RUNQ, wait_class::RUNNABLE),
        ] {
            let p = st.pending[slot];
            if p.count_scaled != 0 {
                record_key(
                    OffcpuKey {
                        tid,
                        _pad: 0,
                        tgid,
                        class,
                        syscall: NO_SYSCALL,
                        kernel_stack: STACK_NONE,
                        user_stack: stack,
                    },
                    p.count_scaled,
                    p.ns,
                );
            }
        }
    }
    if let Some(kept) = waiter_weight {
        mutex::record_waiter(tgid, uaddr, stack, kept);
    }
    let Some((count_scaled, delay)) = block else {
        return;
    };
    let key = BlockKey {
        tgid,
        tid,
        user_stack: stack,
    };
    if !add_pair_or_insert(&BLOCK, &key, count_scaled, delay) {
        count(Counter::AggMapFull);
    }
}

/// Go's block-profile sampling (>= 1.17) of a wait of `waited` ns, counted: keep with
/// probability min(1, d/rate); a kept event adds count += max(1, rate/d) (fixed point) and
/// delay += max(d, rate). `None`: not kept.
#[inline(always)]
fn block_sample(cfg: &Config, waited: u64) -> Option<(u64, u64)> {
    count(Counter::BlockEventsSeen);
    let kept = sample_by_duration(waited, cfg.block_rate_ns)?;
    count(Counter::BlockEventsRecorded);
    Some(kept)
}

/// A target thread's last switch-out (`prev_state` has `TASK_DEAD`; current is the thread):
/// the end of its life for the window's per-thread accounting, which keeps its CPU time, wall
/// time on CPU and name. Its life ends here rather than at `sched_process_exit`: after that
/// tracepoint an exiting thread still runs and waits (tearing down its memory map, often in
/// uninterruptible sleep on a busy process), and those waits are part of its life.
#[inline(always)]
fn thread_died(prev: *const u8, tid: u32, tgid: u32, now: u64, cfg: &Config) {
    let (mut oncpu_ns, mut first_out_ts, mut flags) = (0, 0, 0);
    if let Some(p) = THREADS.get_ptr_mut(tid) {
        // SAFETY: this thread's own live map value, removed below.
        let st = unsafe { &mut *p };
        flags = EXIT_TRACKED;
        if st.on_ts != 0 {
            st.oncpu_ns += now.saturating_sub(st.on_ts);
        } else if st.off_ts != 0 {
            // Leaving the CPU for good while marked off it (a new thread whose first
            // switch-in was not shown, mostly).
            recover_missed_switch_in(tid, st, prev, now, cfg);
        }
        oncpu_ns = st.oncpu_ns;
        first_out_ts = st.first_out_ts;
    }
    let _ = THREADS.remove(tid);
    let o = offsets();
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0u8; 16]);
    let exit = ThreadExit {
        tgid,
        flags,
        exit_ts: now,
        sum_exec_ns: task_u64(prev, o.task_sum_exec_runtime),
        start_ts: task_u64(prev, o.task_start_time),
        comm,
        oncpu_ns,
        first_out_ts,
    };
    if EXITED.insert(tid, exit, 0).is_err() {
        count(Counter::ExitedFull);
    }
}
