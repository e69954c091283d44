//! CPU sampler: a software cpu-clock perf event on every online CPU runs `cpu_sample`; samples
//! of target processes are counted per (tgid, user stack, kernel stack) in the kernel.

use aya_ebpf::{
    EbpfContext,
    macros::{map, perf_event},
    maps::HashMap,
    programs::PerfEventContext,
};
use aya_log_ebpf::warn;
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{AGG_MAP_ENTRIES, Counter, CpuKey};

use crate::{
    shared::{add_or_insert, count, is_target, kernel_stack},
    unwind::{SLOT_PERF, user_stack_handle},
};

/// Sample counts per (process, user stack, kernel stack).
#[map]
static CPU_SAMPLES: HashMap<Key<maps::CPU_SAMPLES>, Value<maps::CPU_SAMPLES>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    count(Counter::CpuSamples);
    let tgid = ctx.tgid();
    // Idle (pid 0) and every non-target process leave here, after one map lookup.
    if ctx.pid() == 0 || !is_target(tgid) {
        return 0;
    }
    count(Counter::CpuSamplesTarget);
    let key = CpuKey {
        tgid,
        kernel_stack: kernel_stack(&ctx),
        user_stack: user_stack_handle::<SLOT_PERF>(tgid),
        tid: ctx.pid(),
        _pad: 0,
    };
    if !add_or_insert(&CPU_SAMPLES, &key, 1) {
        count(Counter::AggMapFull);
        warn!(&ctx, "stallscope: cpu sample map full, sample dropped");
    }
    0
}
