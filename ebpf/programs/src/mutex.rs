//! Mutex profile: delay charged to the critical section that caused it (Go >= 1.22 semantics).
//!
//! Per futex word we track its waiters ([`LockState`]). The delay a holder causes is the sum,
//! over the waiters blocked while it held the lock, of their waiting time in that span; the span
//! ends when the holder releases the lock by waking a waiter (`FUTEX_WAKE`, `FUTEX_WAKE_BITSET`,
//! `FUTEX_WAKE_OP`, `FUTEX_UNLOCK_PI`), and its delay is charged to the releasing thread's stack.
//! All of it is seen from the scheduler: a waiter begins when it switches out blocked in a
//! futex wait, and ends when it is woken; the waker, current at that wakeup, is the releaser
//! when its own registers say it is in a futex call waking that word.
//! So a slow holder that makes three threads queue is charged for all three waits, not the
//! innocent fast holder that happens to perform the next wake-up.
//!
//! Condition variables also wait and wake on futex words; the kernel cannot tell them apart, so
//! it records them too, with the waiters' stacks (`LOCK_WAITERS`), and the agent classifies each
//! word by those stacks (a word waited on in `pthread_cond_wait` is a condition, not a lock).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{helpers::bpf_get_prandom_u32, macros::map, maps::HashMap};
use stallscope_common::maps::{self, Key, Value};
use stallscope_common::{
    AGG_MAP_ENTRIES, Config, Counter, LockKey, LockState, MutexKey, MutexValue,
};

use crate::shared::{add_pair_or_insert, count, sample_by_duration};

/// Futex words with waiters seen in the window.
#[map]
static LOCKS: HashMap<Key<maps::LOCKS>, Value<maps::LOCKS>> = HashMap::with_max_entries(16384, 0);

/// Delay by (futex word, releasing thread's stack).
#[map]
static MUTEX: HashMap<Key<maps::MUTEX>, Value<maps::MUTEX>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

/// Waits by (futex word, waiting thread's stack): the waiter side of each word.
#[map]
static LOCK_WAITERS: HashMap<Key<maps::LOCK_WAITERS>, Value<maps::LOCK_WAITERS>> =
    HashMap::with_max_entries(AGG_MAP_ENTRIES, 0);

#[inline(always)]
fn xadd(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a live map value; the add is atomic across CPUs.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// The mutex profile's sampling of an event of `d` ns: 1-in-`fraction` (Go's
/// `SetMutexProfileFraction`, weight N), then duration-weighted by `mutex_rate_ns` like the
/// block profile. The kept event's (count × `BLOCK_COUNT_SCALE`, delay) with both weights
/// applied, or `None` to skip it. Decided before the stack is taken, which only kept events pay.
#[inline(always)]
pub fn sample(cfg: &Config, d: u64) -> Option<(u64, u64)> {
    let n = cfg.mutex_fraction;
    if n > 1 {
        // SAFETY: helper without arguments.
        let r = unsafe { bpf_get_prandom_u32() } as u64;
        if !r.is_multiple_of(n) {
            return None;
        }
    }
    let n = n.max(1);
    let (c, w) = sample_by_duration(d, cfg.mutex_rate_ns)?;
    Some((c.wrapping_mul(n), w.wrapping_mul(n)))
}

#[inline(always)]
fn add_value(map: &HashMap<MutexKey, MutexValue>, key: &MutexKey, count_n: u64, delay: u64) {
    if !add_pair_or_insert(map, key, count_n, delay) {
        count(Counter::AggMapFull);
    }
}

/// A target thread blocks waiting on the futex word `uaddr` (at its switch-out). Returns
/// whether it was counted (its end must then be reported with [`wait_end`] or
/// [`waiter_done`]).
#[inline(always)]
pub fn wait_begin(tgid: u32, uaddr: u64, now: u64) -> bool {
    let key = LockKey {
        tgid,
        _pad: 0,
        uaddr,
    };
    let p = match LOCKS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let _ = LOCKS.insert(key, LockState::default(), 1 /* BPF_NOEXIST */);
            match LOCKS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    count(Counter::LockTableFull);
                    return false;
                }
            }
        }
    };
    // SAFETY: live map value. `sum_start` first: a release reading between the two adds sees
    // `W` short by about `now` and drops it (see `release`).
    unsafe {
        xadd(&raw mut (*p).sum_start, now);
        xadd(&raw mut (*p).n_start, 1);
    }
    true
}

/// A counted waiter of `uaddr` stops waiting at `now`: its end in the word's waiter sums.
#[inline(always)]
pub fn waiter_done(tgid: u32, uaddr: u64, now: u64) {
    let key = LockKey {
        tgid,
        _pad: 0,
        uaddr,
    };
    if let Some(p) = LOCKS.get_ptr_mut(key) {
        // SAFETY: live map value. `n_end` first: a release reading between the two adds then
        // sees `W` short by about `now` (dropped as implausible) rather than `now` too high
        // (which would be charged as a delay of the whole uptime).
        unsafe {
            xadd(&raw mut (*p).n_end, 1);
            xadd(&raw mut (*p).sum_end, now);
        }
    }
}

/// A counted waiter is woken (by a release, a timeout or a signal) after `waited` ns. Returns
/// the weighted (count, wait) to record on the waiter side ([`record_waiter`]), or `None` when
/// the sampling skips it.
#[inline(always)]
pub fn wait_end(cfg: &Config, tgid: u32, uaddr: u64, now: u64, waited: u64) -> Option<(u64, u64)> {
    waiter_done(tgid, uaddr, now);
    sample(cfg, waited)
}

/// Records a kept wait of thread `tid` on `uaddr` (weighted count and ns, from [`wait_end`])
/// under the waiter's stack (`LOCK_WAITERS`).
#[inline(always)]
pub fn record_waiter(tgid: u32, tid: u32, uaddr: u64, user_stack: u64, kept: (u64, u64)) {
    let k = MutexKey {
        tgid,
        tid,
        uaddr,
        user_stack,
    };
    add_value(&LOCK_WAITERS, &k, kept.0, kept.1);
}

/// `W(now)` of a lock. The loads are ordered against the waiters' adds so that a torn read
/// is only ever too small: `n_start` before `sum_start` (a waiter adds `sum_start`, then
/// `n_start`) and `sum_end` before `n_end` (a waiter adds `n_end`, then `sum_end`). In another
/// order a waiter ending between two loads made `W` too large by its end time (the machine's
/// uptime), charged as hours of delay.
#[inline(always)]
fn waiter_time(st: &LockState, now: u64) -> u64 {
    // SAFETY: volatile loads of a live map value's fields, in this order.
    let (n_start, sum_start, sum_end, n_end) = unsafe {
        (
            core::ptr::read_volatile(&raw const st.n_start),
            core::ptr::read_volatile(&raw const st.sum_start),
            core::ptr::read_volatile(&raw const st.sum_end),
            core::ptr::read_volatile(&raw const st.n_end),
        )
    };
    sum_end
        .wrapping_sub(sum_start)
        .wrapping_add(n_start.wrapping_sub(n_end).wrapping_mul(now))
}

/// The current thread (a target's) wakes a waiter of `uaddr`: it ends the span; charge the
/// waiting time accumulated since the last release to its stack (`stack`, taken only when
/// recorded), under `tid` (the releasing thread, or `GOROUTINE_TID` and the waiter's reason
/// for a goroutine that released a Go lock). One wake call that wakes several waiters ends the span at the first; the next
/// ones find little or nothing more to charge.
#[inline(always)]
pub fn release(
    cfg: &Config,
    tgid: u32,
    tid: u32,
    uaddr: u64,
    now: u64,
    stack: impl FnOnce() -> u64,
) {
    let key = LockKey {
        tgid,
        _pad: 0,
        uaddr,
    };
    let Some(p) = LOCKS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: live map value; a torn read against a concurrent waiter update is off by at most
    // that waiter's (near-zero) time so far.
    let st = unsafe { &mut *p };
    // A read that straddles a waiter's two adds is torn; read in this order it can only be
    // too small (by about `now`: negative, implausible), and it is gone a moment later, so it
    // is read once more before the release is given up.
    let mut w = waiter_time(st, now);
    if w.wrapping_sub(st.charged) > 1u64 << 50 {
        w = waiter_time(st, now);
    }
    let delay = w.wrapping_sub(st.charged);
    // Anything implausible (a torn read against a waiter's two adds, which can only make `W`
    // too small: see `wait_begin`/`wait_end`) is dropped, and `charged` keeps its value so the
    // next release charges from there.
    if delay == 0 || delay > 1u64 << 50 {
        return;
    }
    // Two threads releasing the same word at once (the lock was taken and released again
    // between an unlock and its wake) both read the same `charged` and both charge the span;
    // the last store wins, so only that span is charged twice (known, open: a compare-and-swap
    // needs BPF cpu v3 and the programs build for v1).
    st.charged = w;
    count(Counter::MutexEventsSeen);
    let Some((n, weighted)) = sample(cfg, delay) else {
        return;
    };
    count(Counter::MutexEventsRecorded);
    let k = MutexKey {
        tgid,
        tid,
        uaddr,
        user_stack: stack(),
    };
    add_value(&MUTEX, &k, n, weighted);
}
