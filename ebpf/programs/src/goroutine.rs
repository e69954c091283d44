//! Goroutine-level block and mutex profiles of a Go program: what Go's own profiles record
//! (`runtime.blockevent`, `runtime.mutexevent`), from outside, whatever rates the program set.
//! Uprobes on the target's executable, attached to that process only:
//! - `go_semacquire`, at `sync.runtime_SemacquireMutex` (and the RWMutex and `internal/sync`
//!   variants): a goroutine (`g`, kept in r14 by Go's register ABI) is about to wait for the
//!   lock whose semaphore is its first argument (rax); kept in `GO_SEMA` for its park.
//! - `go_gopark`, at `runtime.gopark`'s call of `mcall` (or its entry): the goroutine parks
//!   for a wait reason (in `g.waitreason` by then; the third argument, rcx, at the entry). One Go's block profile records (channel operations, select, sync waits:
//!   `GoProc::block_reasons`) keeps its park time in `GO_PARKED`; a lock wait
//!   (`GoProc::mutex_reasons` with a fresh `GO_SEMA`) also joins the lock's waiters in
//!   `LOCKS`, as a thread's futex wait does. Other parks (network, sleep, the runtime's idle
//!   workers) cost one or two map lookups.
//! - `go_ready`, at `runtime.ready`'s call of `casgstatus` (or its entry; `gp` in rax at
//!   both): another goroutine or
//!   the timer code makes it runnable, where Go ends a block event. The wait is sampled by
//!   duration like every block event (`--block-rate`) and only a kept one is unwound, from
//!   the parked goroutine's saved registers (`g.sched`, which `mcall` wrote before the
//!   goroutine could be readied). For a lock waiter, the goroutine running `ready` released
//!   the lock (`semrelease1`): the waiters' time since the last release is charged to its
//!   stack, read from its own `g.sched` (`ready` runs on the system stack: r14 is the M's
//!   `g0`, and `g0.m.curg` the releasing goroutine, saved by `systemstack`).
//!
//! The probes sit on `call rel32` instructions where the agent finds exactly one call of the
//! expected function: the kernel emulates a call instead of single-stepping it out of line,
//! which saves a second trap per hit (a function's entry is a `cmp` with memory, stepped).
//! No uretprobe (it rewrites return addresses on the stack, which Go's stack copying and
//! traceback do not expect) and nothing written to the target's memory.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{
    BlockKey, CONFIG_BLOCK, CONFIG_MUTEX, Counter, GO_PARK_BLOCK, GO_PARK_LOCK, GO_PARKED_ENTRIES,
    GO_PROCS_ENTRIES, GO_SEMA_MAX_AGE_NS, GOROUTINE_TID, GoParkKey, GoParked, GoProc, GoSema,
    USER_STACK_LOST,
};

use crate::{
    mutex,
    offcpu::{BLOCK, config},
    shared::{add_pair_or_insert, count, is_target, sample_by_duration},
    unwind::{SLOT_UPROBE, user_stack_handle_at},
};

/// Go programs followed, by tgid (written by the agent when it attaches the probes).
#[map]
static GO_PROCS: HashMap<Key<maps::GO_PROCS>, Value<maps::GO_PROCS>> =
    HashMap::with_max_entries(GO_PROCS_ENTRIES, 0);

/// Parked goroutines awaiting their `ready`.
#[map]
static GO_PARKED: HashMap<Key<maps::GO_PARKED>, Value<maps::GO_PARKED>> =
    HashMap::with_max_entries(GO_PARKED_ENTRIES, 0);

/// Goroutines about to wait for a lock, with its semaphore.
#[map]
static GO_SEMA: HashMap<Key<maps::GO_SEMA>, Value<maps::GO_SEMA>> =
    HashMap::with_max_entries(GO_PARKED_ENTRIES, 0);

#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[inline(always)]
fn has_reason(mask: &[u64; 4], reason: u64) -> bool {
    mask[(reason / 64) as usize & 3] & (1 << (reason % 64)) != 0
}

/// The stack of goroutine `g` from its saved registers (`g.sched`).
#[inline(always)]
fn goroutine_stack(proc: &GoProc, tgid: u32, g: u64) -> u64 {
    let regs = (
        read_user_u64(g + proc.sched_pc as u64),
        read_user_u64(g + proc.sched_sp as u64),
        read_user_u64(g + proc.sched_bp as u64),
    );
    match regs {
        (Some(pc), Some(sp), Some(bp)) if pc != 0 => {
            user_stack_handle_at::<SLOT_UPROBE>(tgid, pc, sp, bp)
        }
        _ => {
            count(Counter::UserStackLost);
            USER_STACK_LOST
        }
    }
}

#[uprobe]
pub fn go_semacquire(ctx: ProbeContext) -> u32 {
    let tgid = ctx.tgid();
    if !is_target(tgid) {
        return 0;
    }
    count(Counter::GoProbeHits);
    if config().flags & CONFIG_MUTEX == 0 {
        return 0;
    }
    // SAFETY: a uprobe's context is the user registers at the probe (constant offsets).
    let (g, addr) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax) };
    let key = GoParkKey { tgid, _pad: 0, g };
    let sema = GoSema {
        addr,
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
    };
    let _ = GO_SEMA.insert(key, sema, 0);
    0
}

#[uprobe]
pub fn go_gopark(ctx: ProbeContext) -> u32 {
    let tgid = ctx.tgid();
    if !is_target(tgid) {
        return 0;
    }
    count(Counter::GoProbeHits);
    let flags = config().flags;
    if flags & (CONFIG_BLOCK | CONFIG_MUTEX) == 0 {
        return 0;
    }
    // SAFETY: read-only use of a live map value.
    let Some(proc) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    // SAFETY: a uprobe's context is the user registers at the probe (constant offsets).
    let (g, rcx) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rcx) };
    let reason = if proc.park_reason_in_g == 0 {
        rcx & 0xff
    } else {
        // SAFETY: the helper checks the address and fails on a fault.
        match unsafe { bpf_probe_read_user((g + proc.park_reason_in_g as u64) as *const u8) } {
            Ok(r) => r as u64,
            Err(_) => return 0,
        }
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = GoParkKey { tgid, _pad: 0, g };
    let mut parked = GoParked {
        ts: now,
        reason: reason as u32,
        flags: 0,
        addr: 0,
    };
    if flags & CONFIG_BLOCK != 0 && has_reason(&proc.block_reasons, reason) {
        parked.flags |= GO_PARK_BLOCK;
    }
    if flags & CONFIG_MUTEX != 0 && has_reason(&proc.mutex_reasons, reason) {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(sema) = unsafe { GO_SEMA.get(key) }.copied() {
            let _ = GO_SEMA.remove(key);
            if now.saturating_sub(sema.ts) < GO_SEMA_MAX_AGE_NS
                && mutex::wait_begin(tgid, sema.addr, now)
            {
                parked.flags |= GO_PARK_LOCK;
                parked.addr = sema.addr;
            }
        }
    }
    if parked.flags == 0 {
        return 0;
    }
    if GO_PARKED.insert(key, parked, 0).is_err() {
        count(Counter::GoParkedFull);
        if parked.flags & GO_PARK_LOCK != 0 {
            mutex::waiter_done(tgid, parked.addr, now);
        }
    }
    0
}

#[uprobe]
pub fn go_ready(ctx: ProbeContext) -> u32 {
    let tgid = ctx.tgid();
    if !is_target(tgid) {
        return 0;
    }
    count(Counter::GoProbeHits);
    let cfg = config();
    // SAFETY: a uprobe's context is the user registers at the probe.
    let (gp, g0) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let key = GoParkKey {
        tgid,
        _pad: 0,
        g: gp,
    };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(parked) = (unsafe { GO_PARKED.get(key) }).copied() else {
        return 0;
    };
    let _ = GO_PARKED.remove(key);
    // SAFETY: read-only use of a live map value.
    let Some(proc) = (unsafe { GO_PROCS.get(tgid) }).copied() else {
        return 0;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let waited = now.saturating_sub(parked.ts);
    let tid = GOROUTINE_TID | parked.reason;
    if parked.flags & GO_PARK_LOCK != 0 {
        // The releaser, then the waiter leaves the lock's waiters (as for a futex wait).
        mutex::release(&cfg, tgid, tid, parked.addr, now, || {
            let curg = read_user_u64(g0 + proc.g_m as u64)
                .and_then(|m| read_user_u64(m + proc.m_curg as u64))
                .unwrap_or(0);
            if curg == 0 {
                count(Counter::UserStackLost);
                return USER_STACK_LOST;
            }
            goroutine_stack(&proc, tgid, curg)
        });
        mutex::waiter_done(tgid, parked.addr, now);
    }
    if parked.flags & GO_PARK_BLOCK == 0 || cfg.flags & CONFIG_BLOCK == 0 {
        return 0;
    }
    count(Counter::GoBlockEventsSeen);
    let Some((count_scaled, delay)) = sample_by_duration(waited, cfg.block_rate_ns) else {
        return 0;
    };
    count(Counter::GoBlockEventsRecorded);
    let key = BlockKey {
        tgid,
        tid,
        user_stack: goroutine_stack(&proc, tgid, gp),
    };
    if !add_pair_or_insert(&BLOCK, &key, count_scaled, delay) {
        count(Counter::AggMapFull);
    }
    0
}
