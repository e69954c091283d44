//! Maps and helpers used by several programs.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, StackTrace},
    programs::tracing::StackIdContext,
};
use stallscope_common::maps::{self, Value};
use stallscope_common::{
    COUNTER_SLOTS, Counter, STACK_LOST, STACK_MAP_ENTRIES, STACK_NONE, TARGET_BITMAP_WORDS,
    target_bit,
};

/// Processes (tgid) being profiled: bit `tgid % 64` of word `tgid / 64` (see `target_bit`).
#[map]
pub static TARGET_BITS: Array<Value<maps::TARGET_BITS>> =
    Array::with_max_entries(TARGET_BITMAP_WORDS, 0);

/// Stack traces referenced by the aggregation maps (user and kernel stacks).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(STACK_MAP_ENTRIES, 0);

/// Event and loss counters, per CPU (summed by the agent).
#[map]
pub static COUNTERS: PerCpuArray<Value<maps::COUNTERS>> =
    PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

const EFAULT: i32 = 14;
const EEXIST: i32 = 17;

#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot; programs don't preempt each other on one CPU for these types.
        unsafe { *p += 1 };
    }
}

/// Duration-weighted sampling of an event of `d` ns at `rate` (`weighted_sample`), drawing
/// the random number only when the decision needs one. The kept event's (count ×
/// `BLOCK_COUNT_SCALE`, weighted ns), or `None`.
#[inline(always)]
pub fn sample_by_duration(d: u64, rate: u64) -> Option<(u64, u64)> {
    let r = if rate > 1 && d < rate {
        // SAFETY: helper without arguments.
        unsafe { aya_ebpf::helpers::bpf_get_prandom_u32() }
    } else {
        0
    };
    stallscope_common::weighted_sample(d, rate, r)
}

#[inline(always)]
pub fn is_target(tgid: u32) -> bool {
    // An array look-up, which the verifier inlines: no helper call, no hashing.
    match target_bit(tgid) {
        Some((word, bit)) => TARGET_BITS.get(word).is_some_and(|w| w & bit != 0),
        None => false,
    }
}

/// Makes `tgid` a target. The agent sets and clears bits from user space with a read and a
/// write of the word; this adds the bit atomically, and the agent re-asserts the bits of the
/// processes it reads from `FOLLOWED` at its next tick, should its write of the same word
/// have raced with this one.
#[inline(always)]
pub fn set_target(tgid: u32) {
    let Some((word, bit)) = target_bit(tgid) else {
        return;
    };
    if let Some(w) = TARGET_BITS.get_ptr_mut(word) {
        // SAFETY: `w` points at a live array slot. Adding a bit that is not set is setting it;
        // a new process's tgid is forked once, so no two CPUs add the same bit.
        unsafe {
            if *w & bit == 0 {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(w, bit);
            }
        }
    }
}

/// The kernel stack of the current task: `STACK_NONE` when there is none (a sample taken in
/// user mode), `STACK_LOST` when capturing it failed (counted).
#[inline(always)]
pub fn kernel_stack<C: StackIdContext>(ctx: &C) -> i32 {
    match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id as i32,
        Err(e) if -e == EFAULT => STACK_NONE,
        Err(e) => {
            if -e == EEXIST {
                count(Counter::StackCollision);
            } else {
                count(Counter::KernelStackLost);
            }
            STACK_LOST
        }
    }
}

/// Atomically adds `n` to the counter at `key`, inserting it when absent. `false` when the map
/// is full (the caller counts the drop).
#[inline(always)]
pub fn add_or_insert<K>(map: &HashMap<K, u64>, key: &K, n: u64) -> bool {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: `v` points at a live u64 map value; the add is atomic across CPUs (BPF
        // `lock xadd`; the BPF target has no compare-and-swap, so no `AtomicU64::fetch_add`).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, n) };
        return true;
    }
    if map.insert(key, n, BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    // Another CPU may have inserted the same key in between: add to that entry.
    match map.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: as above.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(v, n) };
            true
        }
        None => false,
    }
}

/// A map value of two `u64` counters side by side (`#[repr(C)]`), added to atomically.
pub trait Pair: Copy {
    fn pair(a: u64, b: u64) -> Self;
}

impl Pair for stallscope_common::OffcpuValue {
    fn pair(a: u64, b: u64) -> Self {
        Self {
            count_scaled: a,
            total_ns: b,
        }
    }
}

impl Pair for stallscope_common::BlockValue {
    fn pair(a: u64, b: u64) -> Self {
        Self {
            count_scaled: a,
            delay_ns: b,
        }
    }
}

impl Pair for stallscope_common::MutexValue {
    fn pair(a: u64, b: u64) -> Self {
        Self {
            count_scaled: a,
            delay_ns: b,
        }
    }
}

/// Atomically adds `(a, b)` to the pair at `key`, inserting it when absent. Two CPUs inserting
/// the same new key at once both land: the loser of the `BPF_NOEXIST` insert adds to the
/// winner's entry. `false` when the map is full (the caller counts the drop).
#[inline(always)]
pub fn add_pair_or_insert<K, V: Pair>(map: &HashMap<K, V>, key: &K, a: u64, b: u64) -> bool {
    #[inline(always)]
    fn add<V>(v: *mut V, a: u64, b: u64) {
        let p = v as *mut u64;
        // SAFETY: `v` points at a live map value made of two u64 (`Pair`), each add is atomic.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, a);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p.add(1), b);
        }
    }
    if let Some(v) = map.get_ptr_mut(key) {
        add(v, a, b);
        return true;
    }
    if map.insert(key, V::pair(a, b), BPF_NOEXIST as u64).is_ok() {
        return true;
    }
    match map.get_ptr_mut(key) {
        Some(v) => {
            add(v, a, b);
            true
        }
        None => false,
    }
}
