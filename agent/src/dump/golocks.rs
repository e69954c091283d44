//! Deadlocks of a Go program's goroutines on `sync.Mutex` and `sync.RWMutex` locks, found in
//! one reading of its goroutines ([`super::goroutines`]).
//!
//! Which lock a goroutine waits for is known: the runtime queues it on the lock's semaphore
//! in `runtime.semtable`. Who holds a lock is not: a `sync.Mutex` is a state word and a
//! semaphore, and its fast path (inlined into the caller) records no owner. The holder is
//! inferred from the stacks: a goroutine that locked `mu` and is still inside the function
//! that did keeps `&mu` in its frame when the function defers `mu.Unlock()` (the deferred
//! call's receiver) or uses the lock again. An edge "A waits for a lock B holds" is drawn only
//! when B is the **only** other lock-waiting goroutine whose stack (from its parked frame up)
//! holds the lock's address, and the lock is locked; a cycle of such edges is a deadlock.
//! A holder that keeps no reference (a global locked without a defer) leaves its edge out:
//! the cycle is then not named rather than guessed.

/// Which of a lock's semaphores a goroutine waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `sync.Mutex.Lock` (an `RWMutex`'s writers' own mutex too).
    Mutex,
    /// `sync.RWMutex.Lock` waiting for the readers to leave.
    RwWriter,
    /// `sync.RWMutex.RLock` waiting for a writer.
    RwReader,
}

impl LockKind {
    /// From a waiting goroutine's functions, innermost first: the lock call it is in; `None`
    /// for a semaphore that is not a lock's (`WaitGroup`, `Cond`).
    pub fn of<'a>(functions: impl IntoIterator<Item = &'a str>) -> Option<LockKind> {
        for f in functions {
            let Some(method) = f
                .strip_prefix("sync.")
                .or_else(|| f.strip_prefix("internal/sync."))
            else {
                continue;
            };
            return match method {
                "(*Mutex).Lock" | "(*Mutex).lockSlow" => Some(LockKind::Mutex),
                "(*RWMutex).Lock" => Some(LockKind::RwWriter),
                "(*RWMutex).RLock" => Some(LockKind::RwReader),
                // The runtime's shims (`runtime_SemacquireMutex`): the caller says.
                m if m.starts_with("runtime_") => continue,
                _ => None,
            };
        }
        None
    }

    /// Where the semaphore waited on is in the lock.
    pub fn sema_offset(self) -> u64 {
        match self {
            LockKind::Mutex => 4,
            LockKind::RwWriter => 8,
            LockKind::RwReader => 12,
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            LockKind::Mutex => "sync.Mutex",
            LockKind::RwWriter | LockKind::RwReader => "sync.RWMutex",
        }
    }
}

/// One goroutine waiting for a lock.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWait {
    pub goid: u64,
    /// The lock's address.
    pub lock: u64,
    pub kind: LockKind,
    /// Addresses of locks its stack holds.
    pub refs: Vec<u64>,
    /// False when the lock's state says it is free now (being handed over): no holder.
    pub locked: bool,
}

/// For each wait, the one goroutine (index into `waits`) inferred to hold its lock.
pub fn holders(waits: &[LockWait]) -> Vec<Option<usize>> {
    // Lock -> the waiters whose stacks hold it, other than its own waiters.
    let mut by_lock: std::collections::HashMap<u64, Vec<usize>> = Default::default();
    for (j, v) in waits.iter().enumerate() {
        for &r in &v.refs {
            if r != v.lock {
                by_lock.entry(r).or_default().push(j);
            }
        }
    }
    waits
        .iter()
        .map(|w| match by_lock.get(&w.lock).map(Vec::as_slice) {
            Some(&[j]) if w.locked => Some(j),
            _ => None,
        })
        .collect()
}

/// The cycles of waits, each as indexes into `waits` (each waits for a lock the next one
/// holds), each starting at its lowest goroutine id; ordered by that id.
pub fn cycles(waits: &[LockWait]) -> Vec<Vec<usize>> {
    let next = holders(waits);
    // 0: not seen, 1: on the walk in progress, 2: done.
    let mut mark = vec![0u8; waits.len()];
    let mut out: Vec<Vec<usize>> = Vec::new();
    for start in 0..waits.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            if mark[i] == 2 {
                break;
            }
            if mark[i] == 1 {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut c: Vec<usize> = path[from..].to_vec();
                let low = (0..c.len()).min_by_key(|&k| waits[c[k]].goid).unwrap_or(0);
                c.rotate_left(low);
                out.push(c);
                break;
            }
            mark[i] = 1;
            path.push(i);
            at = next[i];
        }
        for p in path {
            mark[p] = 2;
        }
    }
    out.sort_by_key(|c| waits[c[0]].goid);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(goid: u64, lock: u64, refs: &[u64]) -> LockWait {
        LockWait {
            goid,
            lock,
            kind: LockKind::Mutex,
            refs: refs.to_vec(),
            locked: true,
        }
    }

    #[test]
    fn two_goroutines_each_holding_the_others_lock_are_a_cycle() {
        // 7 waits for B and holds A (its stack holds both); 8 the other way round.
        let waits = vec![wait(8, 0xa, &[0xa, 0xb]), wait(7, 0xb, &[0xb, 0xa])];
        assert_eq!(holders(&waits), vec![Some(1), Some(0)]);
        assert_eq!(cycles(&waits), vec![vec![1, 0]]);
    }

    #[test]
    fn waiters_of_a_lock_held_elsewhere_are_no_cycle() {
        // Three wait for A; whoever holds it waits for nothing (or references nothing).
        let waits = vec![
            wait(5, 0xa, &[0xa]),
            wait(6, 0xa, &[0xa]),
            wait(7, 0xa, &[0xa]),
        ];
        assert_eq!(holders(&waits), vec![None, None, None]);
        assert!(cycles(&waits).is_empty());
    }

    #[test]
    fn an_ambiguous_holder_draws_no_edge() {
        // Both 2 and 3 reference A: which holds it is not known.
        let waits = vec![
            wait(1, 0xa, &[0xb]),
            wait(2, 0xb, &[0xa]),
            wait(3, 0xc, &[0xa]),
        ];
        assert_eq!(holders(&waits)[0], None);
        assert!(cycles(&waits).is_empty());
    }

    #[test]
    fn a_free_lock_has_no_holder_and_a_tail_is_not_in_the_cycle() {
        let mut waits = vec![wait(1, 0xa, &[0xb]), wait(2, 0xb, &[0xa])];
        waits[0].locked = false;
        assert!(cycles(&waits).is_empty());
        // 9 waits for A, held by 1, which is in a cycle with 2: the cycle is 1 and 2 only.
        waits[0].locked = true;
        waits.push(wait(9, 0xa, &[]));
        assert_eq!(cycles(&waits), vec![vec![0, 1]]);
    }

    #[test]
    fn the_lock_call_names_the_semaphore() {
        assert_eq!(
            LockKind::of(["runtime.gopark", "sync.(*Mutex).lockSlow", "main.f"]),
            Some(LockKind::Mutex)
        );
        assert_eq!(
            LockKind::of(["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).Lock"]),
            Some(LockKind::Mutex)
        );
        assert_eq!(
            LockKind::of(["sync.runtime_SemacquireRWMutexR", "sync.(*RWMutex).RLock"]),
            Some(LockKind::RwReader),
            "the runtime_ shim is not a lock call: the next frame is"
        );
        assert_eq!(
            LockKind::of(["sync.(*RWMutex).RLock", "main.f"]),
            Some(LockKind::RwReader)
        );
        assert_eq!(LockKind::of(["sync.(*WaitGroup).Wait", "main.f"]), None);
        assert_eq!(LockKind::RwWriter.sema_offset(), 8);
    }
}
