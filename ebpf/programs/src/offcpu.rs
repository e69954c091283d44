//! Off-CPU, block and mutex-profile events, all from the scheduler's tracepoints: no syscall
//! is hooked.
//!
//! - `sched_switch` (BTF tracepoint; current == prev): a target thread leaving the CPU gets its
//!   switch-out time, user stack and wait class stored in `THREADS` (keyed by tid, not
//!   per-CPU); the thread coming in (`next`) closes its interval into `OFFCPU`. The class of a
//!   wait comes from the thread's saved user registers (`current_syscall`), and a futex wait's
//!   word and operation too (`futex_wait_begins`).
//! - `sched_waking` (current is the waker): the time a sleeping thread was woken, so the
//!   interval splits into the wait itself and the run-queue latency after it (`runnable`). A
//!   futex wait ends here: the block profile (sampled in the kernel with Go's
//!   `SetBlockProfileRate` semantics) and the mutex profile's waiter side, and its release
//!   side when the waker is waking that word (`futex_woken`).
//! - A target thread's last switch-out (`TASK_DEAD`) moves its state from `THREADS` to
//!   `EXITED`, for the window's accounting.
//!
//! Off-CPU intervals are sampled like the block profile (`Config::offcpu_rate_ns`): an
//! interval of `d` is kept with probability min(1, d/rate) and weighted max(d, rate). Every
//! switch-out takes the user stack (the walk cache makes a repeated one cheap): no later hook
//! runs in the thread's own context to take it once the wait's length is known.

use aya_ebpf::{
    helpers::{bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_task_pt_regs},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap},
    programs::BtfTracePointContext,
};
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{
    AGG_MAP_ENTRIES, BlockKey, CONFIG_BLOCK, CONFIG_MUTEX, CONFIG_OFFCPU, Config, Counter,
    EXIT_TRACKED, FirstSeen, KernelOffsets, NO_SYSCALL, OffcpuKey, RunqKey, STACK_NONE,
    THREAD_FUTEX_WAIT, THREAD_LOCK_WAITER, ThreadExit, ThreadState, USER_STACK_NONE,
    USER_STACK_NOT_STARTED, is_fdless_wait, runq_bucket, wait_class,
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
static THREADS: HashMap<Key<maps::THREADS>, Value<maps::THREADS>> =
    HashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Target threads whose first switch-in the probes saw without having seen them leave the
/// CPU: threads already off CPU when the window opened (and new threads). Written once per
/// thread; the agent ends the waits it seeded at the window's start with it.
#[map]
static FIRST_SEEN: HashMap<Key<maps::FIRST_SEEN>, Value<maps::FIRST_SEEN>> =
    HashMap::with_max_entries(THREAD_ENTRIES, 0);

/// Target threads that exited in the window, with their CPU time (per-thread accounting).
#[map]
static EXITED: HashMap<Key<maps::EXITED>, Value<maps::EXITED>> =
    HashMap::with_max_entries(THREAD_ENTRIES, 0);

#[map]
static OFFCPU: HashMap<Key<maps::OFFCPU>, Value<maps::OFFCPU>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
pub(crate) static BLOCK: HashMap<Key<maps::BLOCK>, Value<maps::BLOCK>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
static RUNQ_HIST: HashMap<Key<maps::RUNQ_HIST>, Value<maps::RUNQ_HIST>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[map]
pub static CONFIG: Array<Value<maps::CONFIG>> = Array::with_max_entries(1, 0);

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
const PT_REGS_R8: usize = 72;
const PT_REGS_AX: usize = 80;
const PT_REGS_CX: usize = 88;
const PT_REGS_SI: usize = 104;
const PT_REGS_DI: usize = 112;
const PT_REGS_ORIG_AX: usize = 120;
const PT_REGS_IP: usize = 128;
const PT_REGS_FLAGS: usize = 144;

const ENOSYS: u64 = 38;
/// Beyond every x86-64 syscall number: larger `orig_ax` values are not syscalls.
const MAX_SYSCALL_NR: u64 = 1024;

#[inline(always)]
pub(crate) fn config() -> Config {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

#[inline(always)]
pub(crate) fn offsets() -> KernelOffsets {
    // SAFETY: a constant in .rodata written by the loader; volatile so it isn't folded to 0.
    unsafe { core::ptr::read_volatile(&KERNEL_OFFSETS) }
}

#[inline(always)]
pub(crate) fn task_pid(task: *const u8) -> u32 {
    let off = offsets().task_pid as usize;
    // SAFETY: `task` is a BTF-typed task_struct pointer and `off` a constant the verifier reads
    // from the frozen .rodata: it checks the access against the kernel's BTF and turns it into a
    // fault-handling load, cheaper than a bpf_probe_read_kernel call.
    unsafe { core::ptr::read_volatile(task.add(off) as *const u32) }
}

#[inline(always)]
pub(crate) fn task_tgid(task: *const u8) -> u32 {
    let off = offsets().task_tgid as usize;
    // SAFETY: as in `task_pid`.
    unsafe { core::ptr::read_volatile(task.add(off) as *const u32) }
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
    let Some(read) = current_regs() else {
        return NO_SYSCALL;
    };
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

/// The current thread's saved user registers, as a reader of the word at a `PT_REGS_*` offset.
#[inline(always)]
fn current_regs() -> Option<impl Fn(usize) -> u64> {
    // SAFETY: BTF-typed current task; the helper returns its user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u8;
    // SAFETY: a BTF-typed struct pt_regs pointer: constant-offset loads the verifier checks.
    (!regs.is_null()).then_some(move |off: usize| unsafe {
        core::ptr::read_volatile(regs.add(off) as *const u64)
    })
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

/// The sampling decision for an interval of `ns` of class `class` that just ended: left out
/// or recorded.
#[inline(always)]
fn interval(tid: u32, class: u32, st: &ThreadState, ns: u64, cfg: &Config) {
    if ns < cfg.offcpu_min_ns {
        count(Counter::OffcpuBelowMin);
        return;
    }
    let Some((n, w)) = sample_by_duration(ns, cfg.offcpu_rate_ns) else {
        count(Counter::OffcpuSampledOut);
        return;
    };
    count(Counter::OffcpuRecorded);
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
    if cfg.flags == 0 {
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
    // The stack first: the verifier walks the unwinder once per distinct state reaching it,
    // and before the branches below there are few. The off-CPU profile needs it for every
    // wait; the block and mutex profiles for futex waits only.
    let syscall = current_syscall();
    let user_stack = if cfg.flags & CONFIG_OFFCPU != 0 || syscall == SYS_FUTEX {
        user_stack_handle::<SLOT_TRACEPOINT>(tgid)
    } else {
        USER_STACK_NONE
    };
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
    st.syscall = syscall;
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
    // Out twice in a wait whose wakeup was not seen: the waiter count balances.
    end_unseen_wait(&mut st, now);
    if st.class == wait_class::FUTEX && cfg.flags & (CONFIG_BLOCK | CONFIG_MUTEX) != 0 {
        futex_wait_begins(&mut st, now, cfg);
    }
    st.user_stack = user_stack;
    // The kernel stack says something only when the wait class does not already: a thread
    // blocked in futex, poll/epoll or nanosleep is always in that syscall's wait path, and a
    // preempted one in the scheduler's preemption path. Capturing it (the kernel's ORC walk)
    // cost more than everything else in this program together.
    st.kernel_stack = match st.class {
        _ if cfg.flags & CONFIG_OFFCPU == 0 => STACK_NONE,
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
    // Its wakeup was not seen: the lock's waiter count must balance all the same.
    end_unseen_wait(st, now);
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
    if cfg.flags & CONFIG_OFFCPU == 0 {
        // The scheduler programs run for the block and mutex profiles too.
        st.wake_ts = 0;
        return;
    }
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

/// sched_waking(struct task_struct *p): a sleeping target thread is being woken. Unlike
/// `sched_wakeup`, which fires on the woken thread's CPU when the wakeup is queued there (an
/// IPI, with whatever runs there as current), this one always runs in the waker's context:
/// the mutex profile's releaser is current here.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> u32 {
    let task: *const u8 = ctx.arg(0);
    if !is_target_task(task) {
        return 0;
    }
    let cfg = config();
    if cfg.flags == 0 {
        return 0;
    }
    let tid = task_pid(task);
    match THREADS.get_ptr_mut(tid) {
        Some(p) => {
            // SAFETY: live map value.
            let st = unsafe { &mut *p };
            if st.off_ts != 0 && st.wake_ts == 0 {
                let now = unsafe { bpf_ktime_get_ns() };
                st.wake_ts = now;
                if st.flags & THREAD_FUTEX_WAIT != 0 {
                    futex_woken(tid, st, now, &cfg);
                }
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

/// The current thread blocks in a futex wait (its switch-out's class is `FUTEX`): the word
/// and operation come from its saved user registers, as the syscall number did. A waiting
/// operation starts a block-profile event and, for the mutex profile, a waiter of the word;
/// both end at the thread's wakeup (`futex_woken`), or, when that is not seen, at its
/// switch-in. No futex hook is needed: enabling one
/// syscall tracepoint costs every syscall of every process on the machine (measured +70 ns
/// per call here), and each traced call another +220 ns of the perf tracepoint path.
#[inline(always)]
fn futex_wait_begins(st: &mut ThreadState, now: u64, cfg: &Config) {
    // The registers `current_syscall` found to be a futex call's entry frame.
    let Some(read) = current_regs() else {
        return;
    };
    let (uaddr, op) = (read(PT_REGS_DI), read(PT_REGS_SI) as u32);
    if !is_futex_wait(op) {
        return;
    }
    st.sys_arg0 = uaddr;
    st.flags = THREAD_FUTEX_WAIT;
    if cfg.flags & CONFIG_MUTEX != 0 && mutex::wait_begin(st.tgid, uaddr, now) {
        st.flags |= THREAD_LOCK_WAITER;
    }
}

/// Ends a futex wait whose wakeup was not seen (the thread is switching in, or out again):
/// a counted waiter leaves its word's sums, so that they balance.
#[inline(always)]
fn end_unseen_wait(st: &mut ThreadState, now: u64) {
    if st.flags & THREAD_LOCK_WAITER != 0 {
        mutex::waiter_done(st.tgid, st.sys_arg0, now);
    }
    st.flags = 0;
}

/// Whether the current thread is waking waiters of the futex word `uaddr` of process `tgid`:
/// it is a thread of that process, inside a futex call whose operation wakes (or unlocks a
/// PI futex) on that word. Then it is the releaser the mutex profile charges. A wakeup from
/// anywhere else (a timeout, a signal, another word's requeue) releases nothing.
#[inline(always)]
fn current_wakes(tgid: u32, uaddr: u64) -> bool {
    // SAFETY: helper without arguments; returns the BTF-typed current task.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    if task_tgid(task) != tgid || current_syscall() != SYS_FUTEX {
        return false;
    }
    let Some(read) = current_regs() else {
        return false;
    };
    let op = read(PT_REGS_SI) as u32;
    is_futex_wake(op)
        && (read(PT_REGS_DI) == uaddr
            || (op & FUTEX_CMD_MASK == FUTEX_WAKE_OP && read(PT_REGS_R8) == uaddr))
}

/// A thread blocked in a futex wait since `st.off_ts` is woken (current is the waker): the
/// mutex profile charges the span to the waker when it released that word, and ends the
/// waiter; the block profile records the wait. Both under the waiter's stack of its
/// switch-out.
#[inline(always)]
fn futex_woken(tid: u32, st: &mut ThreadState, now: u64, cfg: &Config) {
    let (tgid, uaddr) = (st.tgid, st.sys_arg0);
    let waited = now.saturating_sub(st.off_ts);
    let lock_waiter = st.flags & THREAD_LOCK_WAITER != 0;
    st.flags = 0;
    if lock_waiter {
        if current_wakes(tgid, uaddr) {
            let releaser = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
            mutex::release(cfg, tgid, releaser, uaddr, now, || {
                user_stack_handle::<SLOT_TRACEPOINT>(tgid)
            });
        }
        if let Some(kept) = mutex::wait_end(cfg, tgid, uaddr, now, waited) {
            mutex::record_waiter(tgid, tid, uaddr, st.user_stack, kept);
        }
    }
    if cfg.flags & CONFIG_BLOCK == 0 {
        return;
    }
    let Some((count_scaled, delay)) = block_sample(cfg, waited) else {
        return;
    };
    let key = BlockKey {
        tgid,
        tid,
        user_stack: st.user_stack,
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
