//! Process groups (`--children`, `--cgroup`, `--container`, `--pod`): a process forked by a
//! target is a target from its fork, before its first instruction, so a worker started after
//! attach is recorded from its birth. The agent learns of it from `FOLLOWED` at its next tick
//! (its mappings, unwind tables, labels) and scans `/proc` for members that did not come from
//! a member's fork.

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
};
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{CONFIG_FOLLOW, Counter, FOLLOWED_ENTRIES};

use crate::{
    offcpu::{config, task_pid, task_tgid},
    shared::{count, is_target, set_target},
};

/// Processes forked by a target in this window, for the agent: child tgid → parent tgid.
#[map]
pub static FOLLOWED: HashMap<Key<maps::FOLLOWED>, Value<maps::FOLLOWED>> =
    HashMap::with_max_entries(FOLLOWED_ENTRIES, 0);

/// sched_process_fork(struct task_struct *parent, struct task_struct *child): fires for every
/// new task; a new thread (same tgid) is already covered by its process's bit.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> u32 {
    let parent: *const u8 = ctx.arg(0);
    let child: *const u8 = ctx.arg(1);
    if config().flags & CONFIG_FOLLOW == 0 {
        return 0;
    }
    let ptgid = task_tgid(parent);
    let ctgid = task_tgid(child);
    // A new process leads its thread group; a new thread does not.
    if ctgid == ptgid || ctgid != task_pid(child) || !is_target(ptgid) {
        return 0;
    }
    set_target(ctgid);
    count(Counter::ProcessesFollowed);
    if FOLLOWED.insert(ctgid, ptgid, 0).is_err() {
        count(Counter::FollowMapFull);
    }
    0
}
