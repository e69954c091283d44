//! Root tests of `agent dump --pid N`: thread dumps of running workloads whose threads are in
//! known states, taken without stopping them. `agent dump ... -o DIR` writes DIR/dump.txt or
//! DIR/dump.json (the harness's `run_agent` always passes `-o`).
//!
//! Run: `cargo test --release -p stallscope-tests --test dump -- --test-threads=1` as root.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent::dump::model::{Dump, State, Thread, WaitObject};
use stallscope_tests::*;

/// Runs `agent dump --pid <w> <extra...>` and returns the run and the file it wrote.
fn dump_run(w: &Workload, extra: &[&str]) -> (AgentRun, String) {
    let pid = w.pid_str();
    let mut args = vec!["dump", "--pid", pid.as_str()];
    args.extend_from_slice(extra);
    let run = run_agent(&args);
    run.assert_success();
    let json = extra.windows(2).any(|a| a == ["--format", "json"]);
    let file = run.file(if json { "dump.json" } else { "dump.txt" });
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    (run, text)
}

fn dump_json(w: &Workload) -> (AgentRun, Dump) {
    let (run, text) = dump_run(w, &["--format", "json"]);
    let dump: Dump = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the JSON dump does not parse as the documented model: {e}"));
    (run, dump)
}

fn thread_named<'a>(d: &'a Dump, name: &str) -> &'a Thread {
    d.threads
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no thread named {name:?} in the dump"))
}

fn functions(t: &Thread) -> Vec<&str> {
    t.user_stack.iter().map(|f| f.function.as_str()).collect()
}

fn start_routine(t: &Thread) -> Option<&str> {
    t.created
        .as_ref()?
        .start_routine
        .as_ref()
        .map(|f| f.function.as_str())
}

/// The wall-clock time at which `at` happened.
fn wall_at(at: Instant) -> SystemTime {
    SystemTime::now() - at.elapsed()
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// The thread ids of a live process, from /proc.
fn tids_of(pid: u32) -> BTreeSet<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect()
}

/// Two threads deadlocked on two mutexes taken in opposite order, 3 s before the agent starts,
/// and a third blocked behind them: the deadlock is reported first, naming both threads, their
/// functions and the locks' symbols; durations are within ±1 s of the truth; the process lives.
#[test]
fn deadlock_formed_before_the_agent_started() {
    require_root();
    let w = Workload::spawn("dump_deadlock", &[]);
    let ready = w.wait_for_line("ready", Duration::from_secs(1));
    // The workload prints "ready" 200 ms after the two threads blocked (100 ms for "auditor").
    let blocked_at = unix_secs(wall_at(ready)) - 0.2;
    std::thread::sleep(Duration::from_secs(3));

    let (_run, d) = dump_json(&w);
    let ab = thread_named(&d, "xfer-ab");
    let ba = thread_named(&d, "xfer-ba");
    let auditor = thread_named(&d, "auditor");
    assert_eq!(d.deadlocks.len(), 1, "{:#?}", d.deadlocks);
    let dl = &d.deadlocks[0];
    let cycle: Vec<(u32, u32)> = dl.cycle.iter().map(|e| (e.tid, e.owner_tid)).collect();
    let (lo, hi) = (ab.tid.min(ba.tid), ab.tid.max(ba.tid));
    assert_eq!(cycle, vec![(lo, hi), (hi, lo)], "{dl:#?}");
    let syms: BTreeSet<&str> = dl
        .cycle
        .iter()
        .map(|e| e.wait.symbol.as_deref().unwrap_or("?"))
        .collect();
    assert_eq!(syms, BTreeSet::from(["lock_a", "lock_b"]));
    assert_eq!(dl.blocked_behind, vec![auditor.tid]);

    // Each waits for the lock the other holds, in the function that took it.
    for (t, func, lock, owner, start) in [
        (ab, "transfer_ab", "lock_b", ba.tid, "xfer_ab_thread"),
        (ba, "transfer_ba", "lock_a", ab.tid, "xfer_ba_thread"),
    ] {
        assert_eq!(t.state, State::FutexWait, "{}", t.name);
        let wait = t.wait.as_ref().expect("a futex wait has its object");
        assert_eq!(wait.object, WaitObject::Mutex);
        assert_eq!(wait.symbol.as_deref(), Some(lock));
        assert_eq!(wait.owner_tid, Some(owner));
        let f = functions(t);
        assert!(f.contains(&func), "{} stack {f:?}", t.name);
        let lock_fn = f.iter().position(|n| n.contains("pthread_mutex_lock"));
        let caller = f.iter().position(|n| *n == func);
        assert!(
            lock_fn.is_some() && lock_fn < caller,
            "{}: pthread_mutex_lock must be called by {func} (DWARF unwinding keeps that frame): {f:?}",
            t.name
        );
        assert_eq!(start_routine(t), Some(start), "{} created by", t.name);
    }

    // Time in state, for threads that blocked before the agent existed.
    let taken = d.taken_at_unix_ms as f64 / 1000.0;
    for (t, blocked) in [
        (ab, blocked_at),
        (ba, blocked_at),
        (auditor, blocked_at + 0.1),
    ] {
        let want = taken - blocked;
        let got = t.in_state_ns.expect("time in state is known") as f64 / 1e9;
        eprintln!("{}: in state {got:.3} s, truth {want:.3} s", t.name);
        assert!(
            (got - want).abs() <= 1.0,
            "{}: {got:.3} s in state, but it blocked {want:.3} s before the dump",
            t.name
        );
        assert!(want >= 3.0, "the test slept 3 s before dumping");
    }

    // The text form: the DEADLOCK line first, with both stacks before the summary.
    let (_run, text) = dump_run(&w, &[]);
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("thread dump"));
    let first = first.unwrap_or_default();
    assert!(
        first.starts_with("DEADLOCK: thread "),
        "first line: {first:?}\n{text}"
    );
    for needle in ["\"xfer-ab\"", "\"xfer-ba\"", "(lock_a)", "(lock_b)"] {
        assert!(first.contains(needle), "{needle} missing from {first:?}");
    }
    let before_summary = &text[..text.find("threads by state:").expect("a summary")];
    assert!(before_summary.contains("transfer_ab(...)"), "{text}");
    assert!(before_summary.contains("transfer_ba(...)"), "{text}");
    assert!(
        text.contains("threads by state: 3 futex wait (3 mutex: lock wait), 1 syscall (4 threads)"),
        "{text}"
    );

    // Not stopped, not killed: still there, still deadlocked, not in a stopped state.
    assert!(w.exit_status().is_none(), "the workload exited");
    let st = thread_state(w.pid(), w.pid()).expect("the process is alive");
    assert!(st == 'S', "process state {st:?} after the dump");
}

/// The same deadlock with every kind of pthread mutex: recursive and error-checking mutexes
/// keep their owner next to the futex word like default ones; robust ones wait through
/// `__pthread_mutex_lock_full`; with priority inheritance the kernel refuses the lock that
/// closes the cycle (EDEADLK) and glibc parks that thread for good, so its edge is inferred.
#[test]
fn deadlocks_of_every_mutex_kind() {
    require_root();
    for kind in ["recursive", "errorcheck", "robust", "pi"] {
        let w = Workload::spawn("dump_deadlock", &[kind]);
        let (_run, d) = dump_json(&w);
        let ab = thread_named(&d, "xfer-ab").tid;
        let ba = thread_named(&d, "xfer-ba").tid;
        assert_eq!(d.deadlocks.len(), 1, "{kind}: {:#?}", d.deadlocks);
        let dl = &d.deadlocks[0];
        let edges: Vec<(u32, u32)> = dl.cycle.iter().map(|e| (e.tid, e.owner_tid)).collect();
        let (lo, hi) = (ab.min(ba), ab.max(ba));
        assert_eq!(edges, vec![(lo, hi), (hi, lo)], "{kind}: {dl:#?}");
        assert_eq!(
            dl.blocked_behind,
            vec![thread_named(&d, "auditor").tid],
            "{kind}"
        );
        let inferred: Vec<bool> = dl.cycle.iter().map(|e| e.inferred).collect();
        if kind == "pi" {
            // xfer-ba was refused lock_a: it is the parked one.
            let parked = dl
                .cycle
                .iter()
                .find(|e| e.inferred)
                .expect("one inferred edge");
            assert_eq!(parked.tid, ba, "{dl:#?}");
            assert_eq!(parked.wait.object, WaitObject::PiDeadlockPark);
            let ab_wait = &dl.cycle.iter().find(|e| e.tid == ab).unwrap().wait;
            assert_eq!(ab_wait.object, WaitObject::PiMutex);
            assert_eq!(ab_wait.symbol.as_deref(), Some("lock_b"));
        } else {
            assert_eq!(inferred, vec![false, false], "{kind}");
            for e in &dl.cycle {
                assert_eq!(e.wait.object, WaitObject::Mutex, "{kind}");
            }
        }
        for e in &dl.cycle {
            let waited = e.waiting_ns.expect("time in state") as f64 / 1e9;
            assert!(waited > 0.1 && waited < 10.0, "{kind}: {waited} s");
        }
    }
}

/// 100 threads waiting on one condition variable: `--debug 1` groups them into one group of
/// 100 with their shared stack.
#[test]
fn condvar_waiters_group_into_one() {
    require_root();
    let w = Workload::spawn("dump_condvar", &["100"]);
    let (_run, text) = dump_run(&w, &["--debug", "1"]);
    let header: Vec<&str> = text.lines().filter(|l| l.contains("threads [")).collect();
    let group = header
        .iter()
        .find(|l| l.starts_with("100 threads [futex wait 0x"))
        .unwrap_or_else(|| panic!("no group of 100 futex waiters:\n{text}"));
    assert!(
        group.contains("work_ready") && group.contains("condition variable"),
        "{group}"
    );
    assert!(group.ends_with("and 80 more"), "{group}");
    // Its stack follows: cond wait called by wait_for_work.
    let after = &text[text.find(group).unwrap()..];
    let stack: Vec<&str> = after
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    let cond = stack.iter().position(|l| l.contains("pthread_cond_wait"));
    let caller = stack.iter().position(|l| l.starts_with("wait_for_work("));
    assert!(
        cond.is_some() && cond < caller,
        "group stack:\n{}",
        stack.join("\n")
    );
    // Nothing else in the dump has "consumer" threads: the group is all of them.
    assert_eq!(
        header.iter().filter(|l| l.contains("futex wait")).count(),
        1,
        "{header:#?}"
    );
    assert!(
        text.contains(
            "threads by state: 100 futex wait (100 condition variable: idle), 1 syscall (101 threads)"
        ),
        "{text}"
    );

    let (_run, d) = dump_json(&w);
    let consumers: Vec<&Thread> = d.threads.iter().filter(|t| t.name == "consumer").collect();
    assert_eq!(consumers.len(), 100);
    for t in consumers {
        let wait = t.wait.as_ref().unwrap();
        assert_eq!(wait.object, WaitObject::ConditionVariable, "{}", t.tid);
        assert!(
            wait.symbol
                .as_deref()
                .unwrap_or("")
                .starts_with("work_ready")
        );
        assert_eq!(start_routine(t), Some("consumer"));
    }
}

/// Reads the counter `dump_many` keeps in `path`.
fn read_counter(path: &Path) -> u64 {
    let b = std::fs::read(path).unwrap();
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// One `agent dump --format json` of `pid`, timed.
struct TimedDump {
    /// From starting the agent to its exit.
    wall: Duration,
    /// The agent's CPU time (user + system), from wait4.
    cpu: Duration,
    dump: Dump,
}

// The child is reaped with wait4 (for its CPU time), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed_dump(pid: u32) -> TimedDump {
    use std::process::{Command, Stdio};
    let tmp = TempDir::new("stallscope-dump-timed");
    let out = tmp.path().join("out");
    let t0 = Instant::now();
    let mut child = Command::new(agent_path())
        .args(["dump", "--pid", &pid.to_string(), "--format", "json", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 on our own child, which `child` never waits for.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = t0.elapsed();
    assert_eq!(r, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "agent dump --pid {pid} failed ({status:#x}): {stderr}"
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let text = std::fs::read_to_string(out.join("dump.json")).unwrap();
    TimedDump {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        dump: serde_json::from_str(&text).expect("the documented JSON model"),
    }
}

/// A counting thread's progress around and during `reps` dumps run back to back, and the dumps.
struct Progress {
    threads: usize,
    dumps: Vec<TimedDump>,
    rate_before: f64,
    rate_during: f64,
    /// Longest time the counter was seen not to move while the agent ran.
    longest_stall: Duration,
    /// Process states (`/proc/PID/task/TID/stat`) the counting thread was seen in meanwhile.
    states_seen: BTreeSet<char>,
}

/// The tid of the thread named `name` in process `pid`.
fn tid_named(pid: u32, name: &str) -> u32 {
    tids_of(pid)
        .into_iter()
        .find(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
        .unwrap_or_else(|| panic!("process {pid} has no thread {name:?}"))
}

/// A thread's state letter from /proc/PID/task/TID/stat.
fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

fn dump_while_counting(n: usize, reps: usize) -> Progress {
    let tmp = TempDir::new("stallscope-dump-counter");
    let counter = tmp.path().join("count");
    let n_arg = n.to_string();
    let w = Workload::spawn("dump_many", &[n_arg.as_str(), counter.to_str().unwrap()]);

    let sample_for = |d: Duration| {
        let (t0, c0) = (Instant::now(), read_counter(&counter));
        std::thread::sleep(d);
        (read_counter(&counter) - c0) as f64 / t0.elapsed().as_secs_f64()
    };
    let rate_before = sample_for(Duration::from_millis(300));

    // Sample the counter and the counting thread's state every millisecond while the agent
    // runs.
    let (pid, counting_tid) = (w.pid(), tid_named(w.pid(), "counter"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, counter) = (stop.clone(), counter.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut states = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((Instant::now(), read_counter(&counter)));
                states.extend(thread_state(pid, counting_tid));
                std::thread::sleep(Duration::from_millis(1));
            }
            (samples, states)
        })
    };
    let dumps: Vec<TimedDump> = (0..reps).map(|_| timed_dump(pid)).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, states_seen) = sampler.join().unwrap();
    let (first, last) = (samples.first().unwrap(), samples.last().unwrap());
    let rate_during = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64();
    let mut longest_stall = Duration::ZERO;
    let mut since = samples[0];
    for &s in &samples[1..] {
        if s.1 != since.1 {
            since = s;
        }
        longest_stall = longest_stall.max(s.0 - since.0);
    }
    assert!(w.exit_status().is_none(), "the workload exited");
    Progress {
        threads: n,
        dumps,
        rate_before,
        rate_during,
        longest_stall,
        states_seen,
    }
}

fn check_progress(p: &Progress) {
    let d = &p.dumps[0];
    eprintln!(
        "{} threads: agent {:.0} ms (CPU {:.0} ms), dump {:.1} ms ({:?}); counter {:.2e}/s \
         before, {:.2e}/s during ({:.0}%), longest stall {:?}, states seen {:?}",
        p.threads,
        d.wall.as_secs_f64() * 1e3,
        d.cpu.as_secs_f64() * 1e3,
        d.dump.timings.total_us as f64 / 1e3,
        d.dump.timings,
        p.rate_before,
        p.rate_during,
        100.0 * p.rate_during / p.rate_before,
        p.longest_stall,
        p.states_seen
    );
    // A dumper that stops the process (ptrace, SIGSTOP) freezes the counter for the whole dump
    // or for each thread in turn, and the thread shows as stopped (T) or traced (t). Without a
    // stop its rate may still drop: on 2 cores the agent, this test's sampler and whatever else
    // runs compete with it for CPU (a saturated machine has shown stalls of 300 ms).
    assert!(
        p.rate_during > 0.0,
        "the counting thread did not count during the dump"
    );
    assert!(
        p.longest_stall < Duration::from_millis(500),
        "the counter stood still for {:?} during the dump",
        p.longest_stall
    );
    assert!(
        !p.states_seen.contains(&'T') && !p.states_seen.contains(&'t'),
        "the counting thread was stopped or traced during the dump: {:?}",
        p.states_seen
    );
    let counter = thread_named(&p.dumps[0].dump, "counter");
    assert!(
        matches!(counter.state, State::Running | State::Runnable),
        "the counting thread is {:?}",
        counter.state
    );
}

/// Whether the machine is saturated (1-minute load average above the number of CPUs): wall
/// times then measure the other load as much as the agent.
fn machine_saturated() -> bool {
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    load > cpus as f64
}

/// Asserts the 1 s budget for dumping 1000 threads, unless the machine is saturated by other
/// work (then the figure is only reported).
fn check_budget(total_us: u64) {
    if machine_saturated() {
        eprintln!(
            "machine saturated (load above the CPU count): dump of 1000 threads took {} ms, \
             budget not asserted",
            total_us / 1000
        );
        return;
    }
    assert!(
        total_us < 1_000_000,
        "dumping 1000 threads took {} ms (budget 1 s)",
        total_us / 1000
    );
}

/// A thread counting in a loop keeps counting while its process is dumped.
#[test]
fn counting_thread_keeps_counting_during_the_dump() {
    require_root();
    let p = dump_while_counting(10, 1);
    check_progress(&p);
    assert_eq!(
        p.dumps[0].dump.threads.len(),
        12,
        "main + counter + 10 waiters"
    );
}

/// 1000 threads in three kinds of waits: every one of them is in the dump with its state,
/// its stack and its start routine.
#[test]
fn a_thousand_threads_dump_completely() {
    require_root();
    let w = Workload::spawn("dump_many", &["1000"]);
    let live = tids_of(w.pid());
    let (run, d) = dump_json(&w);
    assert_eq!(live.len(), 1001);
    let dumped: BTreeSet<u32> = d.threads.iter().map(|t| t.tid).collect();
    assert_eq!(
        dumped, live,
        "the dump must have exactly the process's threads"
    );
    let mut by_kind = [0usize; 3];
    for t in d.threads.iter().filter(|t| t.name.starts_with("w-")) {
        let i: usize = t.name[2..].parse().unwrap();
        let (state, func) = match i % 3 {
            0 => (State::FutexWait, "wait_on_cond"),
            1 => (State::Sleep, "sleep_long"),
            _ => (State::Syscall, "read_pipe"),
        };
        assert_eq!(t.state, state, "{} ({})", t.name, t.tid);
        let f = functions(t);
        assert!(
            f.contains(&func),
            "{}: {f:?} ({:?})",
            t.name,
            t.user_stack_error
        );
        assert_eq!(start_routine(t), Some("waiter"), "{}: {f:?}", t.name);
        if i % 3 == 2 {
            assert_eq!(t.syscall.as_ref().map(|s| s.name.as_str()), Some("read"));
        }
        by_kind[i % 3] += 1;
    }
    // Names are 15 bytes at most: "w-0" .. "w-999" all fit.
    assert_eq!(by_kind, [334, 333, 333]);
    check_budget(d.timings.total_us);
    eprintln!("1000 threads: {:?}, agent run {:?}", d.timings, run.elapsed);
}

/// A process whose main thread exited (pthread_exit) while another runs on: the main thread is
/// a zombie, the other thread is dumped with its stack from the process's memory.
#[test]
fn main_thread_exited_but_process_lives() {
    require_root();
    let w = Workload::spawn("dump_zombie_main", &[]);
    std::thread::sleep(Duration::from_millis(200));
    let (_run, d) = dump_json(&w);
    assert_eq!(d.threads.len(), 2);
    let main = &d.threads[0];
    assert!(main.main && main.tid == w.pid());
    assert_eq!(main.state, State::Zombie);
    let server = thread_named(&d, "server");
    assert_eq!(server.state, State::Sleep);
    assert!(
        functions(server).contains(&"keep_serving"),
        "{:?}",
        functions(server)
    );
    assert_eq!(start_routine(server), Some("server"));
    assert!(
        d.exe.as_deref().unwrap_or("").ends_with("dump_zombie_main"),
        "{:?}",
        d.exe
    );
}

/// Exit codes: 2 for a thread id instead of a process id, 1 for a process that does not exist.
#[test]
fn usage_and_missing_process_errors() {
    require_root();
    let w = Workload::spawn("dump_deadlock", &[]);
    let tid = *tids_of(w.pid()).iter().find(|&&t| t != w.pid()).unwrap();
    let tid_s = tid.to_string();
    let run = run_agent(&["dump", "--pid", tid_s.as_str()]);
    assert_eq!(run.status.code(), Some(2), "{}", run.output());
    assert!(
        run.stderr.contains(&format!("--pid {}", w.pid())),
        "{}",
        run.stderr
    );
    // pid_max is at most 2^22: this pid does not exist.
    let run = run_agent(&["dump", "--pid", "4194305"]);
    assert_eq!(run.status.code(), Some(1), "{}", run.output());
    assert!(
        run.stderr.contains("no process with PID 4194305"),
        "{}",
        run.stderr
    );
}

/// Dump time for 10, 100 and 1000 threads and the target's progress during the dump
/// (BENCHMARKS.md, "Thread dumps"). Asserts the 1 s budget for 1000 threads (unless the machine
/// is saturated by other work).
#[test]
fn benchmark_dump_times() {
    require_root();
    const REPS: usize = 5;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    // Warm up the page cache (debug info, BTF) so the figures are those of later dumps.
    dump_while_counting(10, 1);
    let mut rows = Vec::new();
    for n in [10, 100, 1000] {
        let p = dump_while_counting(n, REPS);
        let (wall, wall_lo, wall_hi) = median(p.dumps.iter().map(|d| ms(d.wall)).collect());
        let (cpu, _, _) = median(p.dumps.iter().map(|d| ms(d.cpu)).collect());
        let part = |f: fn(&agent::dump::model::Timings) -> u64| {
            median(
                p.dumps
                    .iter()
                    .map(|d| f(&d.dump.timings) as f64 / 1e3)
                    .collect(),
            )
            .0
        };
        let total = part(|t| t.total_us);
        rows.push(format!(
            "| {n} | {wall:.0} ({wall_lo:.0}-{wall_hi:.0}) | {cpu:.0} | {total:.0} | {:.0} | {:.1} | \
             {:.0} | {:.0} | {:.0}% | {} | {:?} |",
            part(|t| t.setup_us),
            part(|t| t.kernel_us),
            part(|t| t.unwind_us),
            part(|t| t.symbolize_us),
            100.0 * p.rate_during / p.rate_before,
            p.longest_stall.as_millis(),
            p.states_seen
        ));
        for d in &p.dumps {
            assert_eq!(d.dump.threads.len(), n + 2, "main + counter + {n} waiters");
        }
        if n == 1000 {
            check_budget((total * 1e3) as u64);
        }
    }

    // The same 1000 threads dumped three times by one agent process (what triggers in a running
    // `agent attach` do): the one-time costs go, the symbolizer's caches stay warm.
    let w = Workload::spawn("dump_many", &["1000"]);
    let mut maps = agent::unwind::maps::MapsCache::new();
    maps.refresh(w.pid()).unwrap();
    let mut collector = agent::kernel::Collector::load(
        agent::kernel::offsets::scheduler_offsets().unwrap(),
        stallscope_common::AGG_MAP_ENTRIES,
    )
    .unwrap();
    let mut symbolizer = agent::symbolize::Symbolizer::new();
    let mut repeated = Vec::new();
    for i in 1..=3 {
        let d = agent::dump::take_dump(&mut collector, w.pid(), &maps, &mut symbolizer).unwrap();
        assert_eq!(d.threads.len(), 1001);
        repeated.push(format!(
            "| {i} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} |",
            d.timings.total_us as f64 / 1e3,
            d.timings.setup_us as f64 / 1e3,
            d.timings.kernel_us as f64 / 1e3,
            d.timings.unwind_us as f64 / 1e3,
            d.timings.symbolize_us as f64 / 1e3,
        ));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "load average at the end: {load}\n\
         | threads | agent wall, ms: median (range) | agent CPU, ms | dump | setup | kernel \
         iterator | unwind | symbolize | counter rate during the dumps | longest counter stall, \
         ms | counting thread states seen |\n|---|---|---|---|---|---|---|---|---|---|---|\n{}\n\n\
         | dump of 1000 threads by one agent process | dump, ms | setup | kernel iterator | \
         unwind | symbolize |\n|---|---|---|---|---|---|\n{}",
        rows.join("\n"),
        repeated.join("\n")
    );
}

/// The library calls behind `agent attach --dump-when` (wired into attach separately): a
/// deadlock condition and a counting condition write a dump when they hold, at most once per
/// period, and not when they do not; SIGQUIT is refused for a Go target.
#[test]
fn triggers_write_dumps_when_conditions_hold() {
    use agent::dump::DumpFormat;
    use agent::dump::trigger::{Trigger, check_signal_target};
    require_root();
    let w = Workload::spawn("dump_deadlock", &[]);
    // Deadlock checks wait for a futex wait of a second.
    std::thread::sleep(Duration::from_millis(1200));
    let tmp = TempDir::new("stallscope-dump-trigger");
    let mut maps = agent::unwind::maps::MapsCache::new();
    maps.refresh(w.pid()).unwrap();
    let mut collector = agent::kernel::Collector::load(
        agent::kernel::offsets::scheduler_offsets().unwrap(),
        stallscope_common::AGG_MAP_ENTRIES,
    )
    .unwrap();
    let mut symbolizer = agent::symbolize::Symbolizer::new();
    let mut check = |t: &mut Trigger| {
        agent::dump::check_trigger(
            t,
            &mut collector,
            w.pid(),
            &maps,
            &mut symbolizer,
            tmp.path(),
            DumpFormat::Text,
        )
        .unwrap()
    };

    let mut deadlock = Trigger::new("deadlock,every=1h".parse().unwrap());
    let written = check(&mut deadlock).expect("a deadlock: a dump is written");
    let name = written.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("dump-{}-", w.pid())) && name.ends_with(".txt"),
        "{name}"
    );
    let text = std::fs::read_to_string(&written).unwrap();
    assert!(text.contains("DEADLOCK: thread "), "{text}");
    assert_eq!(check(&mut deadlock), None, "rate limited to one per hour");

    let mut three = Trigger::new("state=futex,threads>=3,for=1s,every=1h".parse().unwrap());
    assert!(
        check(&mut three).is_some(),
        "three threads wait on mutexes for > 1 s"
    );
    let mut four = Trigger::new("state=futex,threads>=4".parse().unwrap());
    assert_eq!(
        check(&mut four),
        None,
        "only three threads are in futex waits"
    );
    let mut long = Trigger::new("state=futex,for=1h".parse().unwrap());
    assert_eq!(check(&mut long), None, "nobody has waited an hour");
    let files = std::fs::read_dir(tmp.path()).unwrap().count();
    assert_eq!(files, 2);

    assert!(check_signal_target(libc::SIGQUIT, &workload_path("gohot")).is_err());
    assert!(check_signal_target(libc::SIGQUIT, &workload_path("dump_deadlock")).is_ok());
}
