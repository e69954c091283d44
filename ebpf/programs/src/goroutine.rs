//! Goroutine-level block profile of a Go program: what Go's own block profile records
//! (`runtime.blockevent`), from outside, whatever rate the program set. Two uprobes on the
//! target's executable, attached to that process only:
//! - `go_gopark`, at `runtime.gopark`'s entry: the goroutine (`g`, kept in r14 by Go's
//!   register ABI) parks for a wait reason (third argument, rcx) that Go's block profile
//!   records (channel operations, select, sync primitives: `GoProc::block_reasons`): its
//!   park time is kept in `GO_PARKED`. Other parks (network, sleep, the runtime's idle
//!   workers) are left at one map lookup.
//! - `go_ready`, at `runtime.ready`'s entry (first argument `gp`, rax): another goroutine or
//!   the timer code makes it runnable, where Go ends a block event. The wait is sampled by
//!   duration like every block event (`--block-rate`) and only a kept one is unwound, from
//!   the parked goroutine's saved registers (`g.sched`), which `mcall` wrote before the
//!   goroutine could be readied.
//!
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
    BlockKey, CONFIG_BLOCK, Counter, GO_PARKED_ENTRIES, GO_PROCS_ENTRIES, GOROUTINE_TID, GoParkKey,
    GoParked,
};

use crate::{
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

#[inline(always)]
fn read_user_u64(addr: u64) -> Option<u64> {
    // SAFETY: the helper checks the address and fails on a fault.
    unsafe { bpf_probe_read_user(addr as *const u64) }.ok()
}

#[uprobe]
pub fn go_gopark(ctx: ProbeContext) -> u32 {
    let tgid = ctx.tgid();
    if !is_target(tgid) || config().flags & CONFIG_BLOCK == 0 {
        return 0;
    }
    // SAFETY: read-only use of a live map value.
    let Some(proc) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    // SAFETY: a uprobe's context is the user registers at the probe (constant offsets).
    let (g, reason) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rcx & 0xff) };
    if proc.block_reasons[(reason / 64) as usize & 3] & (1 << (reason % 64)) == 0 {
        return 0;
    }
    let key = GoParkKey { tgid, _pad: 0, g };
    let parked = GoParked {
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        reason,
    };
    if GO_PARKED.insert(key, parked, 0).is_err() {
        count(Counter::GoParkedFull);
    }
    0
}

#[uprobe]
pub fn go_ready(ctx: ProbeContext) -> u32 {
    let tgid = ctx.tgid();
    if !is_target(tgid) {
        return 0;
    }
    let cfg = config();
    if cfg.flags & CONFIG_BLOCK == 0 {
        return 0;
    }
    // SAFETY: a uprobe's context is the user registers at the probe.
    let gp = unsafe { (*ctx.regs).rax };
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
    let Some(proc) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    let (pc_off, sp_off, bp_off) = (proc.sched_pc, proc.sched_sp, proc.sched_bp);
    // SAFETY: helper without arguments.
    let waited = unsafe { bpf_ktime_get_ns() }.saturating_sub(parked.ts);
    count(Counter::GoBlockEventsSeen);
    let Some((count_scaled, delay)) = sample_by_duration(waited, cfg.block_rate_ns) else {
        return 0;
    };
    count(Counter::GoBlockEventsRecorded);
    let regs = (
        read_user_u64(gp + pc_off as u64),
        read_user_u64(gp + sp_off as u64),
        read_user_u64(gp + bp_off as u64),
    );
    let user_stack = match regs {
        (Some(pc), Some(sp), Some(bp)) => user_stack_handle_at::<SLOT_UPROBE>(tgid, pc, sp, bp),
        _ => {
            count(Counter::UserStackLost);
            stallscope_common::USER_STACK_LOST
        }
    };
    let key = BlockKey {
        tgid,
        tid: GOROUTINE_TID | parked.reason as u32,
        user_stack,
    };
    if !add_pair_or_insert(&BLOCK, &key, count_scaled, delay) {
        count(Counter::AggMapFull);
    }
    0
}
