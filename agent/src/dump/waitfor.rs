//! Deadlock detection: the wait-for graph of a process's threads and its cycles (pure).
//!
//! A thread waiting on a mutex waits for its owner (glibc keeps the owner's tid next to the
//! futex word; a PI futex word holds it); a thread in `pthread_join` waits for the joined thread.
//! Each thread waits for at most one other, so every cycle is found by following the single
//! outgoing edge from each thread.
//!
//! One deadlock the kernel finds itself: locking a priority-inheritance mutex that would close
//! a cycle fails with EDEADLK, and glibc then parks the thread forever on a dummy word
//! ([`WaitObject::PiDeadlockPark`]). Which mutex it wanted is lost, so its edge is inferred: it
//! waits for the one thread, among those whose waits lead to it, that can hold the lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::model::{Deadlock, DeadlockEdge, Thread, Wait, WaitObject};

/// The thread `t` waits for, when that is known.
fn waits_for(t: &Thread) -> Option<(&Wait, u32)> {
    let w = t.wait.as_ref()?;
    match w.object {
        WaitObject::Mutex | WaitObject::PiMutex | WaitObject::Join => {
            w.owner_tid.map(|owner| (w, owner))
        }
        _ => None,
    }
}

/// How one edge reads in a sentence: `waits for lock 0x... (sym) held by thread 12 "name"`.
pub fn edge_phrase(wait: &Wait, owner_tid: u32, owner_name: Option<&str>) -> String {
    let owner = match owner_name {
        Some(n) => format!("thread {owner_tid} \"{n}\""),
        None => format!("thread {owner_tid} (not a thread of this process any more)"),
    };
    match wait.object {
        WaitObject::Join => format!("waits for {owner} to exit (pthread_join)"),
        WaitObject::PiDeadlockPark => format!(
            "waits for a priority-inheritance mutex held by {owner} (the kernel refused the \
             lock with EDEADLK and glibc parked the thread for good)"
        ),
        _ => {
            let sym = wait
                .symbol
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            format!("waits for lock {}{sym} held by {owner}", wait.address)
        }
    }
}

/// An edge of the graph: the wait, the thread waited for, and whether it was inferred.
type Edge<'a> = (&'a Wait, u32, bool);

/// The thread a parked PI waiter `tid` waits for: among the threads whose chain of waits
/// leads to `tid`, the only one, or else the only one known to hold a lock (someone waits for
/// it). `None` when that does not single one out.
fn pi_park_target(next: &BTreeMap<u32, Edge<'_>>, tid: u32) -> Option<u32> {
    let leads_to_tid = |start: u32| {
        let mut at = start;
        for _ in 0..=next.len() {
            match next.get(&at) {
                Some(&(_, owner, _)) if owner == tid => return true,
                Some(&(_, owner, _)) => at = owner,
                None => return false,
            }
        }
        false
    };
    let tree: BTreeSet<u32> = next
        .keys()
        .copied()
        .filter(|&t| t != tid && leads_to_tid(t))
        .collect();
    if tree.len() == 1 {
        return tree.first().copied();
    }
    let owners: BTreeSet<u32> = next
        .values()
        .map(|&(_, owner, _)| owner)
        .filter(|o| tree.contains(o))
        .collect();
    (owners.len() == 1).then(|| *owners.first().expect("one"))
}

/// Every cycle of the wait-for graph, each starting at its lowest tid, ordered by that tid.
/// A parked PI waiter whose partner cannot be inferred is reported alone, as a one-edge cycle
/// onto itself marked `inferred`.
pub fn find_deadlocks(threads: &[Thread]) -> Vec<Deadlock> {
    let by_tid: HashMap<u32, &Thread> = threads.iter().map(|t| (t.tid, t)).collect();
    // Edges to threads of this process only: a cycle can only run through them.
    let mut next: BTreeMap<u32, Edge<'_>> = threads
        .iter()
        .filter_map(|t| waits_for(t).map(|(w, owner)| (t.tid, (w, owner, false))))
        .filter(|(_, (_, owner, _))| by_tid.contains_key(owner))
        .collect();
    let parked: Vec<(u32, &Wait)> = threads
        .iter()
        .filter_map(|t| {
            let w = t.wait.as_ref()?;
            (w.object == WaitObject::PiDeadlockPark).then_some((t.tid, w))
        })
        .collect();
    let targets: Vec<(u32, &Wait, Option<u32>)> = parked
        .iter()
        .map(|&(tid, w)| (tid, w, pi_park_target(&next, tid)))
        .collect();
    for &(tid, w, target) in &targets {
        // Unknown partner: a cycle onto itself, so the kernel's finding is reported.
        next.insert(tid, (w, target.unwrap_or(tid), true));
    }

    // 0: not seen, 1: on the walk in progress, 2: done.
    let mut mark: HashMap<u32, u8> = HashMap::new();
    let mut cycles: Vec<Vec<u32>> = Vec::new();
    for &start in next.keys() {
        let mut path: Vec<u32> = Vec::new();
        let mut at = start;
        loop {
            match mark.get(&at).copied().unwrap_or(0) {
                2 => break,
                1 => {
                    let from = path.iter().position(|&t| t == at).expect("on the path");
                    cycles.push(path[from..].to_vec());
                    break;
                }
                _ => {}
            }
            mark.insert(at, 1);
            path.push(at);
            match next.get(&at) {
                Some(&(_, owner, _)) => at = owner,
                None => break,
            }
        }
        for t in path {
            mark.insert(t, 2);
        }
    }

    // Which cycle each thread ends up in, for the threads blocked behind a cycle.
    let mut cycle_of: HashMap<u32, usize> = HashMap::new();
    for (i, c) in cycles.iter().enumerate() {
        for &t in c {
            cycle_of.insert(t, i);
        }
    }
    let mut behind: Vec<Vec<u32>> = vec![Vec::new(); cycles.len()];
    for &tid in next.keys() {
        if cycle_of.contains_key(&tid) {
            continue;
        }
        let mut at = tid;
        for _ in 0..=next.len() {
            if let Some(&i) = cycle_of.get(&at) {
                behind[i].push(tid);
                break;
            }
            match next.get(&at) {
                Some(&(_, owner, _)) => at = owner,
                None => break,
            }
        }
    }

    let mut out: Vec<Deadlock> = cycles
        .into_iter()
        .zip(behind)
        .map(|(mut cycle, blocked_behind)| {
            let min = cycle
                .iter()
                .enumerate()
                .min_by_key(|&(_, t)| *t)
                .map_or(0, |(i, _)| i);
            cycle.rotate_left(min);
            let edges: Vec<DeadlockEdge> = cycle
                .iter()
                .map(|&tid| {
                    let (wait, owner, inferred) = next[&tid];
                    DeadlockEdge {
                        tid,
                        name: by_tid[&tid].name.clone(),
                        wait: wait.clone(),
                        owner_tid: owner,
                        waiting_ns: by_tid[&tid].in_state_ns,
                        inferred,
                    }
                })
                .collect();
            let description = describe(&edges, &blocked_behind, &by_tid);
            Deadlock {
                cycle: edges,
                blocked_behind,
                description,
            }
        })
        .collect();
    out.sort_by_key(|d| d.cycle.first().map(|e| e.tid));
    out
}

/// `thread A "a" waits for lock L1 (s1) held by thread B "b", which waits for lock L2 (s2)
/// held by thread A "a"`.
fn describe(
    cycle: &[DeadlockEdge],
    blocked_behind: &[u32],
    threads: &HashMap<u32, &Thread>,
) -> String {
    if let [e] = cycle
        && e.wait.object == WaitObject::PiDeadlockPark
        && e.owner_tid == e.tid
    {
        let others = match blocked_behind {
            [] => "the other threads are not known".to_string(),
            tids => {
                let named: Vec<String> = tids
                    .iter()
                    .map(|t| format!("{t} \"{}\"", threads[t].name))
                    .collect();
                format!(
                    "with one of the threads that wait for it: {}",
                    named.join(", ")
                )
            }
        };
        return format!(
            "thread {} \"{}\" is parked for good: the kernel refused a priority-inheritance \
             mutex with EDEADLK (a deadlock, {others})",
            e.tid, e.name
        );
    }
    let name_of = |tid: u32| cycle.iter().find(|e| e.tid == tid).map(|e| e.name.as_str());
    let mut s = String::new();
    for (i, e) in cycle.iter().enumerate() {
        let phrase = edge_phrase(&e.wait, e.owner_tid, name_of(e.owner_tid));
        if i == 0 {
            s.push_str(&format!("thread {} \"{}\" {phrase}", e.tid, e.name));
        } else {
            s.push_str(&format!(", which {phrase}"));
        }
    }
    if cycle.len() == 1 {
        s.push_str(" (itself)");
    }
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::dump::model::State;

    pub(crate) fn thread(tid: u32, name: &str) -> Thread {
        Thread {
            tid,
            name: name.into(),
            main: false,
            state: State::Sleep,
            in_state_ns: Some(1_000_000_000),
            cpu: 0,
            syscall: None,
            wait: None,
            user_stack: vec![],
            user_stack_error: None,
            kernel_stack: vec![],
            created: None,
            cpu_time_ns: 0,
            voluntary_switches: 0,
            involuntary_switches: 0,
        }
    }

    pub(crate) fn waiting(tid: u32, name: &str, lock: u64, sym: &str, owner: u32) -> Thread {
        Thread {
            state: State::FutexWait,
            wait: Some(Wait {
                address: format!("{lock:#x}"),
                op: "FUTEX_WAIT_PRIVATE".into(),
                object: WaitObject::Mutex,
                symbol: Some(sym.into()),
                owner_tid: Some(owner),
            }),
            ..thread(tid, name)
        }
    }

    #[test]
    fn two_thread_cycle_is_reported_once_from_its_lowest_tid() {
        let threads = vec![
            thread(100, "main"),
            waiting(102, "worker-2", 0xb0, "lock_b", 101),
            waiting(101, "worker-1", 0xa0, "lock_a", 102),
            // Blocked behind the cycle, not part of it.
            waiting(103, "worker-3", 0xa0, "lock_a", 102),
            waiting(104, "worker-4", 0xc0, "lock_c", 103),
        ];
        let d = find_deadlocks(&threads);
        assert_eq!(d.len(), 1);
        let c = &d[0];
        assert_eq!(
            c.cycle
                .iter()
                .map(|e| (e.tid, e.owner_tid))
                .collect::<Vec<_>>(),
            vec![(101, 102), (102, 101)]
        );
        assert_eq!(c.blocked_behind, vec![103, 104]);
        assert_eq!(
            c.description,
            "thread 101 \"worker-1\" waits for lock 0xa0 (lock_a) held by thread 102 \"worker-2\", \
             which waits for lock 0xb0 (lock_b) held by thread 101 \"worker-1\""
        );
    }

    #[test]
    fn chains_without_cycles_are_not_deadlocks() {
        let threads = vec![
            thread(1, "holder"),
            waiting(2, "a", 0x10, "l1", 1),
            waiting(3, "b", 0x20, "l2", 2),
            // Owner not in the process (exited while holding): no cycle through it.
            waiting(4, "c", 0x30, "l3", 999),
        ];
        assert!(find_deadlocks(&threads).is_empty());
    }

    #[test]
    fn self_deadlock_and_three_cycles_and_joins() {
        let mut join = waiting(7, "joiner", 0x70, "", 5);
        join.wait.as_mut().unwrap().object = WaitObject::Join;
        let threads = vec![
            waiting(9, "self", 0x90, "m", 9),
            waiting(5, "a", 0x50, "la", 6),
            waiting(6, "b", 0x60, "lb", 7),
            join,
        ];
        let d = find_deadlocks(&threads);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].cycle.iter().map(|e| e.tid).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert!(
            d[0].description
                .ends_with("which waits for thread 5 \"a\" to exit (pthread_join)"),
            "{}",
            d[0].description
        );
        assert_eq!(d[1].cycle.len(), 1);
        assert!(
            d[1].description
                .ends_with("held by thread 9 \"self\" (itself)")
        );
    }

    fn parked(tid: u32, name: &str) -> Thread {
        let mut t = waiting(tid, name, 0x7f00_0000_1064, "", 0);
        let w = t.wait.as_mut().unwrap();
        w.object = WaitObject::PiDeadlockPark;
        w.symbol = None;
        w.owner_tid = None;
        t
    }

    #[test]
    fn kernel_reported_pi_deadlocks_infer_the_missing_edge() {
        // xfer-ba holds lock_b and was refused lock_a (held by xfer-ab) with EDEADLK;
        // xfer-ab waits for lock_b; auditor waits for lock_a behind them.
        let mut ab = waiting(11, "xfer-ab", 0xb0, "lock_b", 12);
        ab.wait.as_mut().unwrap().object = WaitObject::PiMutex;
        let mut auditor = waiting(13, "auditor", 0xa0, "lock_a", 11);
        auditor.wait.as_mut().unwrap().object = WaitObject::PiMutex;
        let d = find_deadlocks(&[ab, parked(12, "xfer-ba"), auditor]);
        assert_eq!(d.len(), 1, "{d:#?}");
        let c = &d[0];
        assert_eq!(
            c.cycle
                .iter()
                .map(|e| (e.tid, e.owner_tid, e.inferred))
                .collect::<Vec<_>>(),
            vec![(11, 12, false), (12, 11, true)]
        );
        assert_eq!(c.blocked_behind, vec![13]);
        assert!(c.description.contains("EDEADLK"), "{}", c.description);
        assert_eq!(c.cycle[0].waiting_ns, Some(1_000_000_000));
    }

    #[test]
    fn a_parked_thread_alone_is_still_reported() {
        let d = find_deadlocks(&[thread(1, "main"), parked(5, "lonely")]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].cycle[0].owner_tid, 5);
        assert!(d[0].cycle[0].inferred);
        assert!(
            d[0].description
                .starts_with("thread 5 \"lonely\" is parked for good")
        );
        // Two candidate partners, none known to hold a lock: not guessed.
        let d = find_deadlocks(&[
            parked(5, "p"),
            waiting(6, "a", 0x10, "l", 5),
            waiting(7, "b", 0x10, "l", 5),
        ]);
        assert_eq!(d[0].cycle.len(), 1);
        assert_eq!(d[0].blocked_behind, vec![6, 7]);
        assert!(
            d[0].description.ends_with(
                "(a deadlock, with one of the threads that wait for it: 6 \"a\", 7 \"b\")"
            ),
            "{}",
            d[0].description
        );
    }

    #[test]
    fn condition_variables_are_not_edges() {
        let mut cv = waiting(2, "w", 0x10, "cond", 1);
        cv.wait.as_mut().unwrap().object = WaitObject::ConditionVariable;
        let threads = vec![waiting(1, "a", 0x20, "l", 2), cv];
        assert!(find_deadlocks(&threads).is_empty());
    }
}
