//! Lock analysis on symbolized profiles: which futex words are locks (and which are condition
//! variables, semaphores, joins, idle parking), and the most contended locks with their holder
//! and waiter stacks. Pure functions of [`Profile`]s.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::dump::{model::WaitObject, state};
use crate::model::{Label, Profile, ProfileKind, Sample};

/// Functions that wait on a futex word that is not a lock: the kernel cannot tell them apart,
/// the waiter's stack can.
const NOT_LOCK_WAITS: &[&str] = &[
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "pthread_cond_clockwait",
    "__pthread_cond_wait_common",
    "sem_wait",
    "sem_timedwait",
    "sem_clockwait",
    "__new_sem_wait_slow",
    "pthread_barrier_wait",
    "pthread_join",
    "__pthread_clockjoin_ex",
    "runtime.notesleep",
    "runtime.notetsleep_internal",
    "std::sync::condvar",
    "Condvar::wait",
];

/// Functions of language runtimes and servers that wait for one of their own locks, whatever
/// they sleep in (a condition variable, a semaphore, epoll on a latch): such a wait is lock
/// contention, not an idle thread. Matched as prefixes of the frames' names.
const RUNTIME_LOCK_WAITS: &[(&str, WaitObject)] = &[
    // Go's runtime locks (`runtime.lock`).
    ("runtime.lock2", WaitObject::Mutex),
    ("runtime.lockWithRank", WaitObject::Mutex),
    ("runtime.lockSlow", WaitObject::Mutex),
    // CPython's global interpreter lock (a mutex and a condition variable).
    ("take_gil", WaitObject::Mutex),
    // PostgreSQL's lightweight locks (reader/writer, on semaphores) and heavyweight locks
    // (rows, tables: a latch, so epoll).
    ("LWLockAcquire", WaitObject::RwLock),
    ("LWLockWaitForVar", WaitObject::RwLock),
    ("ProcSleep", WaitObject::Mutex),
];

/// Frames (innermost first) looked at to tell what a wait waits on.
const WAIT_FRAMES: usize = 24;

fn innermost_names<'a>(p: &'a Profile, s: &Sample) -> Vec<&'a str> {
    let frames = p.frames_root_first(s);
    frames
        .iter()
        .rev()
        .map(|l| l.function.as_str())
        .take(WAIT_FRAMES)
        .collect()
}

/// A runtime's or server's own lock that a wait waits for (see [`RUNTIME_LOCK_WAITS`]).
fn runtime_lock_of(names: &[&str]) -> Option<WaitObject> {
    names.iter().find_map(|f| {
        RUNTIME_LOCK_WAITS
            .iter()
            .find(|(r, _)| f.starts_with(r))
            .map(|(_, o)| *o)
    })
}

/// What a futex wait waits on, from its stack: a runtime's own lock, else the glibc function
/// it waits in, innermost first.
pub fn wait_object_of(p: &Profile, s: &Sample) -> WaitObject {
    let names = innermost_names(p, s);
    runtime_lock_of(&names).unwrap_or_else(|| state::wait_object(0, &names[..names.len().min(12)]))
}

/// The `wait_object` label value of a futex wait.
pub fn wait_object_label(o: WaitObject) -> &'static str {
    match o {
        WaitObject::Mutex => "mutex",
        WaitObject::PiMutex | WaitObject::PiDeadlockPark => "pi_mutex",
        WaitObject::RwLock => "rwlock",
        WaitObject::ConditionVariable => "condvar",
        WaitObject::Semaphore => "semaphore",
        WaitObject::Join => "join",
        WaitObject::Barrier => "barrier",
        WaitObject::Unknown => "futex",
    }
}

/// Tells futex waits apart by what they wait on, in an off-CPU or block profile: every futex
/// wait gets a `wait_object` label (`mutex`, `rwlock`, `pi_mutex`, `condvar`, `semaphore`,
/// `join`, `barrier`, `futex`), and in the off-CPU profile the lock waits move from
/// `wait_class=futex` to `wait_class=lock`, so that `futex` is left with idle waits. A wait
/// for a runtime's or server's own lock ([`RUNTIME_LOCK_WAITS`]: CPython's GIL, PostgreSQL's
/// row locks, which sleep in epoll) is a lock wait whatever it sleeps in.
pub fn classify_futex_waits(p: &mut Profile) {
    if !matches!(p.kind, ProfileKind::Offcpu | ProfileKind::Block) {
        return;
    }
    let offcpu = p.kind == ProfileKind::Offcpu;
    let objects: Vec<Option<WaitObject>> = p
        .samples
        .iter()
        .map(|s| {
            if is_goroutine_event(s) {
                return None;
            }
            let class = s.labels.iter().find_map(|l| match l {
                Label::Str(k, v) if k == "wait_class" => Some(v.as_str()),
                _ => None,
            });
            match class {
                _ if !offcpu => Some(wait_object_of(p, s)),
                Some("futex") => Some(wait_object_of(p, s)),
                // Preempted, stopped or unknown: not waiting for anything of its own.
                Some("runnable" | "stopped") | None => None,
                // A runtime's lock that sleeps in epoll, a semaphore syscall...
                Some(_) => runtime_lock_of(&innermost_names(p, s)),
            }
        })
        .collect();
    for (s, o) in p.samples.iter_mut().zip(objects) {
        let Some(o) = o else { continue };
        if offcpu && o.is_lock() {
            for l in &mut s.labels {
                if let Label::Str(k, v) = l
                    && k == "wait_class"
                {
                    *v = "lock".into();
                }
            }
        }
        s.labels.push(Label::Str(
            "wait_object".into(),
            wait_object_label(o).into(),
        ));
    }
}

/// The Go runtime's frames between a blocking call and the park (`runtime.gopark`), left out
/// of a goroutine's block-profile stack as Go's own skip count leaves them out: Go's stacks
/// start at `runtime.chanrecv1`, `runtime.selectgo`, `sync.(*Mutex).Lock`,
/// `sync.(*WaitGroup).Wait`, `sync.(*Cond).Wait`.
const GO_PARK_FRAMES: &[&str] = &[
    "runtime.gopark",
    "runtime.goparkunlock",
    "runtime.chanrecv",
    "runtime.chansend",
    "runtime.semacquire1",
    "runtime.notifyListWait",
    "sync.runtime_notifyListWait",
    "sync.runtime_Semacquire",
    "sync.runtime_SemacquireMutex",
    "sync.runtime_SemacquireRWMutex",
    "sync.runtime_SemacquireRWMutexR",
    "sync.runtime_SemacquireWaitGroup",
    "sync.(*Mutex).lockSlow",
    "internal/sync.runtime_SemacquireMutex",
    "internal/sync.(*Mutex).lockSlow",
    // Go 1.24 and later: sync.Mutex is internal/sync's, whose Lock Go's stacks skip too.
    "internal/sync.(*Mutex).Lock",
];

/// The Go runtime's frames between a lock's release and the wake-up of its waiter
/// (`runtime.ready`, reached through `systemstack`), left out of a goroutine's mutex-profile
/// stack as Go's skip count leaves them out: Go's stacks start at `sync.(*Mutex).Unlock`,
/// `sync.(*RWMutex).Unlock`.
const GO_UNLOCK_FRAMES: &[&str] = &[
    "runtime.systemstack_switch",
    "runtime.systemstack_switch.abi0",
    "runtime.goready",
    "runtime.goready.func1",
    "runtime.readyWithTime",
    "runtime.semrelease1",
    "sync.runtime_Semrelease",
    "sync.(*Mutex).unlockSlow",
    "internal/sync.runtime_Semrelease",
    "internal/sync.(*Mutex).unlockSlow",
    "internal/sync.(*Mutex).Unlock",
];

/// Whether a sample is a goroutine's block event (labelled with Go's `wait_reason`), not a
/// thread's futex wait.
pub fn is_goroutine_event(s: &Sample) -> bool {
    s.labels
        .iter()
        .any(|l| matches!(l, Label::Str(k, _) if k == "wait_reason"))
}

/// Goroutine samples start at the blocking call, as in Go's own block profile
/// ([`GO_PARK_FRAMES`] left out), or at the release, as in its mutex profile
/// ([`GO_UNLOCK_FRAMES`]); a location with an inlined frame of another function stays.
pub fn trim_go_runtime_frames(p: &mut Profile) {
    let frames = match p.kind {
        ProfileKind::Block => GO_PARK_FRAMES,
        ProfileKind::Mutex => GO_UNLOCK_FRAMES,
        _ => return,
    };
    let runtime = |line: &crate::model::Line| frames.contains(&line.function.as_str());
    // Per location: how many of its innermost (inlined) lines are the runtime's.
    let inner: Vec<usize> = p
        .locations
        .iter()
        .map(|l| l.lines.iter().take_while(|line| runtime(line)).count())
        .collect();
    // A location whose innermost lines are the runtime's, with those lines left out (a new
    // location: another sample may keep the whole one).
    let mut trimmed: HashMap<usize, usize> = HashMap::new();
    for i in 0..p.samples.len() {
        if !is_goroutine_event(&p.samples[i]) {
            continue;
        }
        let locs = &p.samples[i].locations;
        let skip = locs
            .iter()
            .take_while(|&&l| inner[l] == p.locations[l].lines.len() && inner[l] > 0)
            .count();
        if skip == locs.len() {
            continue;
        }
        let first = locs[skip];
        let mut kept: Vec<usize> = locs[skip..].to_vec();
        if inner[first] > 0 {
            let n = p.locations.len();
            let new = *trimmed.entry(first).or_insert(n);
            if new == n {
                let mut loc = p.locations[first].clone();
                loc.lines.drain(..inner[first]);
                p.locations.push(loc);
            }
            kept[0] = new;
        }
        p.samples[i].locations = kept;
    }
}

/// Leaves out a Go program's threads waiting in the runtime's own futex calls
/// (`runtime.futex`: an idle M parked in `notesleep`, a `runtime.lock`): the Go runtime
/// parking its threads, not goroutines blocking. Go's own block and mutex profiles never show
/// them, and the goroutines' waits are followed apart (`wait_reason` samples). Returns how
/// many events and how much of the main value were left out (also said in a comment).
pub fn drop_go_runtime_futex(p: &mut Profile) -> (i64, i64) {
    if !matches!(p.kind, ProfileKind::Block | ProfileKind::Mutex) {
        return (0, 0);
    }
    let ci = p.value_index("contentions").unwrap_or(0);
    let vi = p.value_index("delay").unwrap_or(p.sample_types.len() - 1);
    let runtime_futex: Vec<bool> = p
        .samples
        .iter()
        .map(|s| {
            !is_goroutine_event(s)
                && s.locations
                    .iter()
                    .flat_map(|&l| p.locations[l].lines.iter())
                    .next()
                    .is_some_and(|l| l.function == "runtime.futex")
        })
        .collect();
    let (mut n, mut v) = (0, 0);
    let mut keep = runtime_futex.iter();
    p.samples.retain(|s| {
        let drop = *keep.next().unwrap_or(&false);
        if drop {
            n += s.values[ci];
            v += s.values[vi];
        }
        !drop
    });
    if n > 0 {
        p.comments.push(format!(
            "{n} futex waits ({:.3} s) of the Go runtime parking its threads (runtime.futex: idle Ms, runtime.lock) left out: not goroutine blocking, which Go's own profiles show and this one follows by goroutine",
            v as f64 / 1e9
        ));
    }
    (n, v)
}

/// A block or mutex profile of Go programs made to read as Go's own: the runtime's thread
/// parking left out ([`drop_go_runtime_futex`]), goroutine stacks starting at the blocking
/// call or the release ([`trim_go_runtime_frames`]).
pub fn prepare_go(p: &mut Profile) {
    drop_go_runtime_futex(p);
    trim_go_runtime_frames(p);
}

/// The `lock` label of a sample: its futex word's address.
pub fn lock_of(s: &Sample) -> Option<u64> {
    s.labels.iter().find_map(|l| match l {
        Label::Addr(k, a) if k == "lock" => Some(*a),
        _ => None,
    })
}

/// Lock addresses (labels) whose waiters waited in something other than a lock: condition
/// variables, semaphores, barriers, joins, Go's idle M parking.
pub fn non_lock_words(waiters: &Profile) -> HashSet<u64> {
    let mut out = HashSet::new();
    for s in &waiters.samples {
        let Some(lock) = lock_of(s) else { continue };
        let not_lock = waiters
            .frames_root_first(s)
            .iter()
            .any(|l| NOT_LOCK_WAITS.iter().any(|f| l.function.contains(f)));
        if not_lock {
            out.insert(lock);
        }
    }
    out
}

/// Removes samples of non-lock words from a mutex (or waiters) profile; returns how many
/// contention events were removed.
pub fn drop_words(p: &mut Profile, words: &HashSet<u64>) -> i64 {
    let ci = p.value_index("contentions").unwrap_or(0);
    let mut removed = 0;
    p.samples.retain(|s| match lock_of(s) {
        Some(l) if words.contains(&l) => {
            removed += s.values[ci];
            false
        }
        _ => true,
    });
    removed
}

/// Adds a `lock_name` label (the lock's symbol) to samples whose lock has one.
pub fn name_locks(p: &mut Profile, names: &HashMap<u64, String>) {
    for s in &mut p.samples {
        let name = lock_of(s).and_then(|l| names.get(&l)).cloned();
        if let Some(n) = name {
            s.labels.push(Label::Str("lock_name".into(), n));
        }
    }
}

/// One contended lock for the summary.
#[derive(Debug, Clone, PartialEq)]
pub struct LockSummary {
    pub lock: u64,
    pub name: Option<String>,
    pub delay_ns: i64,
    pub contentions: i64,
    /// (delay, sample) of the releasing stacks, largest first.
    pub holders: Vec<(i64, usize)>,
    /// (wait time, sample index in the waiters profile), largest first.
    pub waiters: Vec<(i64, usize)>,
}

/// The `n` locks with the most delay, each with its top `k` holder and waiter stacks.
pub fn top_locks(
    mutex: &Profile,
    waiters: &Profile,
    names: &HashMap<u64, String>,
    n: usize,
    k: usize,
) -> Vec<LockSummary> {
    let di = mutex.value_index("delay").unwrap_or(1);
    let ci = mutex.value_index("contentions").unwrap_or(0);
    let wdi = waiters.value_index("delay").unwrap_or(1);
    let mut by_lock: BTreeMap<u64, LockSummary> = BTreeMap::new();
    for (i, s) in mutex.samples.iter().enumerate() {
        let Some(lock) = lock_of(s) else { continue };
        let e = by_lock.entry(lock).or_insert_with(|| LockSummary {
            lock,
            name: names.get(&lock).cloned(),
            delay_ns: 0,
            contentions: 0,
            holders: vec![],
            waiters: vec![],
        });
        e.delay_ns += s.values[di];
        e.contentions += s.values[ci];
        e.holders.push((s.values[di], i));
    }
    for (i, s) in waiters.samples.iter().enumerate() {
        if let Some(e) = lock_of(s).and_then(|l| by_lock.get_mut(&l)) {
            e.waiters.push((s.values[wdi], i));
        }
    }
    let mut out: Vec<LockSummary> = by_lock.into_values().collect();
    out.sort_by_key(|l| std::cmp::Reverse(l.delay_ns));
    out.truncate(n);
    for l in &mut out {
        l.holders.sort_by_key(|h| std::cmp::Reverse(h.0));
        l.holders.truncate(k);
        l.waiters.sort_by_key(|w| std::cmp::Reverse(w.0));
        l.waiters.truncate(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Line, Location, ProfileKind, ValueType};
    use std::time::{Duration, SystemTime};

    fn profile(samples: Vec<(u64, &str, i64)>) -> Profile {
        // One location per distinct function name.
        let mut locations = Vec::new();
        let mut index = HashMap::new();
        let samples = samples
            .into_iter()
            .map(|(lock, func, v)| {
                let li = *index.entry(func.to_string()).or_insert_with(|| {
                    locations.push(Location {
                        address: locations.len() as u64 + 1,
                        mapping: None,
                        lines: vec![Line {
                            function: func.into(),
                            system_name: None,
                            file: None,
                            line: None,
                        }],
                        kernel: false,
                    });
                    locations.len() - 1
                });
                Sample {
                    locations: vec![li],
                    values: vec![1, v],
                    labels: vec![Label::Addr("lock".into(), lock)],
                }
            })
            .collect();
        Profile {
            kind: ProfileKind::Mutex,
            sample_types: vec![
                ValueType::new("contentions", "count"),
                ValueType::new("delay", "nanoseconds"),
            ],
            default_sample_type: Some("delay".into()),
            period_type: ValueType::new("contentions", "count"),
            period: 1,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            samples,
            locations,
            mappings: vec![],
            comments: vec![],
        }
    }

    #[test]
    fn a_go_block_profile_reads_as_gos_own() {
        // Locations 0..6: one per function, in this order.
        let mut p = profile(vec![
            (0, "runtime.gopark", 1),
            (0, "runtime.chanrecv", 1),
            (0, "runtime.chanrecv1", 1),
            (0, "main.recv", 1),
            (0, "runtime.futex", 1),
            (0, "runtime.notesleep", 1),
            (0, "pthread_mutex_lock", 1),
        ]);
        p.kind = ProfileKind::Block;
        let reason = || Label::Str("wait_reason".into(), "chan receive".into());
        p.samples.truncate(3);
        // A goroutine's wait, a thread parked by Go's runtime, a cgo thread's futex wait.
        p.samples[0].locations = vec![0, 1, 2, 3];
        p.samples[0].labels = vec![reason()];
        p.samples[1].locations = vec![4, 5];
        p.samples[1].values = vec![3, 30];
        p.samples[2].locations = vec![6, 3];
        // A goroutine stack of park frames only is kept whole.
        p.samples.push(Sample {
            locations: vec![0, 1],
            values: vec![1, 1],
            labels: vec![reason()],
        });
        prepare_go(&mut p);
        assert_eq!(p.samples.len(), 3, "the runtime's futex wait is left out");
        assert_eq!(
            p.samples[0].locations,
            vec![2, 3],
            "starts at runtime.chanrecv1"
        );
        assert_eq!(
            p.samples[1].locations,
            vec![6, 3],
            "a thread's stack is not trimmed"
        );
        assert_eq!(p.samples[2].locations, vec![0, 1]);
        assert!(
            p.comments[0].starts_with("3 futex waits (0.000 s) of the Go runtime parking"),
            "{:?}",
            p.comments
        );
        // A goroutine's wait is no futex wait: no wait_object.
        classify_futex_waits(&mut p);
        assert_eq!(p.samples[0].labels, vec![reason()]);
        assert!(
            p.samples[1]
                .labels
                .iter()
                .any(|l| matches!(l, Label::Str(k, _) if k == "wait_object"))
        );
    }

    #[test]
    fn lock_waits_leave_the_idle_futex_class() {
        let mut p = profile(vec![
            (0, "___pthread_mutex_lock", 5),
            (0, "___pthread_cond_wait", 7),
            (0, "__new_sem_wait_slow64", 3),
            (0, "runtime.lock2", 2),
            (0, "my_futex_thing", 1),
            (0, "take_gil", 4),
            (0, "ProcSleep", 6),
        ]);
        p.kind = ProfileKind::Offcpu;
        for s in &mut p.samples {
            s.labels = vec![Label::Str("wait_class".into(), "futex".into())];
        }
        // A sleep is no futex wait: left alone; a server's lock sleeping in epoll is a lock.
        p.samples[4].labels = vec![Label::Str("wait_class".into(), "sleep".into())];
        p.samples[6].labels = vec![Label::Str("wait_class".into(), "io".into())];
        classify_futex_waits(&mut p);
        let got: Vec<(String, Option<String>)> = p
            .samples
            .iter()
            .map(|s| {
                let get = |key: &str| {
                    s.labels.iter().find_map(|l| match l {
                        Label::Str(k, v) if k == key => Some(v.clone()),
                        _ => None,
                    })
                };
                (get("wait_class").unwrap(), get("wait_object"))
            })
            .collect();
        let want = [
            ("lock", Some("mutex")),
            ("futex", Some("condvar")),
            ("futex", Some("semaphore")),
            ("lock", Some("mutex")),
            ("sleep", None),
            ("lock", Some("mutex")),
            ("lock", Some("mutex")),
        ];
        let want: Vec<(String, Option<String>)> = want
            .iter()
            .map(|(c, o)| (c.to_string(), o.map(str::to_string)))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn condition_variables_are_not_locks() {
        let waiters = profile(vec![
            (0x10, "__lll_lock_wait", 5),
            (0x20, "___pthread_cond_wait", 7),
            (0x30, "runtime.notesleep", 1),
        ]);
        let words = non_lock_words(&waiters);
        assert_eq!(words, HashSet::from([0x20, 0x30]));
        let mut mutex = profile(vec![(0x10, "slow", 100), (0x20, "signaler", 50)]);
        assert_eq!(drop_words(&mut mutex, &words), 1);
        assert_eq!(mutex.samples.len(), 1);
    }

    #[test]
    fn top_locks_rank_by_delay_with_holders() {
        let mutex = profile(vec![
            (0x10, "slow_section", 900),
            (0x10, "fast_section", 100),
            (0x20, "other", 300),
        ]);
        let waiters = profile(vec![(0x10, "worker", 1000), (0x20, "w2", 300)]);
        let names = HashMap::from([(0x10, "big_lock".to_string())]);
        let mut named = mutex.clone();
        name_locks(&mut named, &names);
        assert!(
            named.samples[0]
                .labels
                .contains(&Label::Str("lock_name".into(), "big_lock".into()))
        );
        let top = top_locks(&mutex, &waiters, &names, 5, 3);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].lock, 0x10);
        assert_eq!(top[0].name.as_deref(), Some("big_lock"));
        assert_eq!(top[0].delay_ns, 1000);
        assert_eq!(top[0].holders[0].0, 900);
        assert_eq!(top[0].waiters.len(), 1);
    }
}
