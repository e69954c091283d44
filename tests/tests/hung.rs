//! Root tests against a hung service (`tests/workloads/hung.c`): the main thread ("hung", the
//! binary's name) holds `stuck_lock` for good while it keeps working, `lock_waiter` is blocked
//! on that lock, `cond_idler` on a condition variable nobody signals and `pipe_reader` in
//! read() on a pipe nobody writes. Every wait began well before the agent attached: the probes
//! never see them start, so only the seeded waits (the task iterator's look when the window
//! opens) can account for them.

use std::collections::HashSet;
use std::time::Duration;

use agent::model::Sample;
use stallscope_tests::*;

/// Starts `hung` and waits until its waits are old: "ready" + 1.5 s.
fn start_hung() -> Workload {
    let w = Workload::spawn("hung", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        w.exit_status().is_none(),
        "hung exited: {:?}",
        w.exit_status()
    );
    w
}

/// The threads hung.c starts, besides its main thread, with the wait each must be in: wait
/// class, wait object (futex waits only) and the function of hung.c on the stack.
const WAITERS: &[(&str, &str, Option<&str>, &str)] = &[
    ("lock_waiter", "lock", Some("mutex"), "take_the_lock"),
    ("cond_idler", "futex", Some("condvar"), "wait_for_work"),
    ("pipe_reader", "syscall:read", None, "read_request"),
];

/// The markdown section whose heading contains `needle`: the heading line and the lines up to the
/// next heading.
fn section_with(markdown: &str, needle: &str) -> Option<String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with('#') && l.contains(needle))?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('#'))
        .map_or(lines.len(), |i| start + 1 + i);
    Some(lines[start..end].join("\n"))
}

fn describe(p: &Profile, s: &Sample) -> String {
    format!("{:?} {}", s.labels, stack_text(p, s))
}

/// threads.json accounts for all four threads over the whole window, the three blocked ones
/// entirely off CPU in waits seeded from the window's start; the off-CPU profile puts each
/// blocked thread's whole wait in the right class, object and stack, and its per-thread totals
/// are threads.json's.
#[test]
fn hung_threads_are_accounted_and_classified() {
    require_root();
    let w = start_hung();
    let run = attach_ok(&w, "4s", "cpu,offcpu,mutex,block", &[]);
    let th = read_threads(run.file("threads.json"));
    let window = th.window_ns;
    assert!(
        (3_900_000_000..=5_000_000_000).contains(&window),
        "window of a 4 s attach is {:.3} s",
        window as f64 / 1e9
    );
    let names: HashSet<&str> = th.threads.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        th.threads.len(),
        4,
        "want hung's 4 threads in threads.json: {}",
        th.text
    );
    assert_eq!(
        names,
        HashSet::from(["hung", "lock_waiter", "cond_idler", "pipe_reader"]),
        "thread names: {}",
        th.text
    );
    // Nobody was created or exited: each was alive the whole window (within 2%: a thread's
    // window starts when the task iterator looked at it, right at the window's start).
    for t in &th.threads {
        assert!(
            !t.created && !t.exited && !t.incomplete,
            "thread {} {:?} created/exited/incomplete: {}",
            t.tid,
            t.name,
            th.text
        );
        assert!(
            t.alive_ns <= window + 1_000_000 && t.alive_ns >= window * 98 / 100,
            "thread {} {:?} alive {:.3} s of a {:.3} s window",
            t.tid,
            t.name,
            t.alive_ns as f64 / 1e9,
            window as f64 / 1e9
        );
    }
    th.assert_invariant();
    for &(name, _, _, _) in WAITERS {
        let t = th.one(name);
        assert!(
            t.seeded,
            "{name} was blocked before the window: its wait must be seeded: {}",
            th.text
        );
        assert!(
            t.offcpu_ns * 100 >= t.alive_ns * 98,
            "{name} is blocked for good but off CPU only {:.3} s of {:.3} s",
            t.offcpu_ns as f64 / 1e9,
            t.alive_ns as f64 / 1e9
        );
        assert!(
            t.cpu_ns <= 5_000_000 && t.oncpu_ns <= 5_000_000,
            "{name} never runs, yet cpu {} ns, on CPU {} ns",
            t.cpu_ns,
            t.oncpu_ns
        );
    }
    // The holder keeps working (a CPU loop with short sleeps).
    let main = th.one("hung");
    assert!(
        main.cpu_ns >= window / 20,
        "the main thread works, yet it ran only {:.3} s of {:.3} s",
        main.cpu_ns as f64 / 1e9,
        window as f64 / 1e9
    );

    let p = read_profile(run.file("offcpu.pb.gz"));
    for &(name, class, object, function) in WAITERS {
        let t = th.one(name);
        let mine: Vec<&Sample> = p
            .samples
            .iter()
            .filter(|s| sample_label(s, "thread").as_deref() == Some(name))
            .collect();
        assert!(
            !mine.is_empty(),
            "no off-CPU samples labelled thread={name}"
        );
        for s in &mine {
            let d = describe(&p, s);
            assert_eq!(
                sample_label(s, "tid"),
                Some(t.tid.to_string()),
                "tid label of {name}'s sample: {d}"
            );
            assert_eq!(
                sample_label(s, "wait_class").as_deref(),
                Some(class),
                "wait class of {name}'s sample: {d}"
            );
            if let Some(object) = object {
                assert_eq!(
                    sample_label(s, "wait_object").as_deref(),
                    Some(object),
                    "wait object of {name}'s sample: {d}"
                );
            }
            assert!(
                stack_has(&p, s, function),
                "{function} not on the stack: {d}"
            );
        }
        // threads.json tells the classes apart as the profile does (lock vs idle futex).
        assert_eq!(
            t.class_ns(class),
            t.offcpu_ns,
            "{name}: all its off-CPU time is {class} in threads.json: {:?}",
            t.offcpu_by_class
        );
    }
    // Per thread, the profile's off-CPU time is threads.json's (±1 ms).
    let by_tid = total_by_tid(&p, "off-cpu");
    for t in &th.threads {
        let in_profile = by_tid.get(&t.tid).copied().unwrap_or(0);
        assert!(
            (in_profile - t.offcpu_ns).abs() <= 1_000_000,
            "thread {} {:?}: {in_profile} ns off CPU in offcpu.pb.gz, {} ns in threads.json",
            t.tid,
            t.name,
            t.offcpu_ns
        );
    }
    // A lock that is never released causes no mutex-profile event: the stuck waiter shows only
    // in the off-CPU profile.
    let mutex = read_profile(run.file("mutex.pb.gz"));
    assert_eq!(
        total(&mutex, "delay"),
        0,
        "stuck_lock is never released, yet the mutex profile has delay: {:?}",
        mutex.samples
    );
}

/// `agent capture` of the hung service: summary.md says it is stuck, names the waiter, the lock
/// and its holder, and does not call it fine.
#[test]
fn hung_capture_names_the_stuck_lock_and_its_holder() {
    require_root();
    let w = start_hung();
    let run = capture_pid_ok(w.pid(), "4s", &[]);
    let path = run.file("summary.md");
    let summary =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        !summary.contains("Nothing looks wrong"),
        "a hung service is reported as fine:\n{summary}"
    );
    for needle in ["Stuck", "lock_waiter", "stuck_lock", "hung"] {
        assert!(
            summary.contains(needle),
            "summary.md does not mention {needle:?}:\n{summary}"
        );
    }
    // The finding itself names the waiter, the lock and the holder (the main thread, named as
    // the binary): the page's title names the process "hung" anyway.
    let stuck = section_with(&summary, "Stuck")
        .unwrap_or_else(|| panic!("no finding heading with \"Stuck\":\n{summary}"));
    for needle in ["lock_waiter", "stuck_lock", "hung"] {
        assert!(
            stuck.contains(needle),
            "the Stuck finding does not name {needle:?}:\n{stuck}\n---\n{summary}"
        );
    }
    let th = read_threads(run.file("threads.json"));
    assert_eq!(th.threads.len(), 4, "{}", th.text);
    th.assert_invariant();
}

/// `--no-tid-label --folded-thread-root`: samples keep their `thread` label but lose `tid`,
/// and every `.folded` line starts with the thread's name (then, off CPU, the wait class).
#[test]
fn thread_label_options() {
    require_root();
    let w = start_hung();
    let run = attach_ok(
        &w,
        "2s",
        "cpu,offcpu",
        &["--no-tid-label", "--folded-thread-root"],
    );
    let p = read_profile(run.file("offcpu.pb.gz"));
    assert!(!p.samples.is_empty());
    for s in &p.samples {
        assert!(sample_label(s, "thread").is_some(), "no thread label");
        assert_eq!(sample_label(s, "tid"), None, "--no-tid-label");
    }
    let folded = std::fs::read_to_string(run.file("offcpu.folded")).unwrap();
    let names = ["hung", "lock_waiter", "cond_idler", "pipe_reader"];
    for line in folded.lines() {
        let root = line.split(';').next().unwrap_or_default();
        assert!(names.contains(&root), "root frame {root:?} in {line:?}");
    }
    for &(name, class, _, function) in WAITERS {
        let prefix = format!("{name};{class};");
        assert!(
            folded
                .lines()
                .any(|l| l.starts_with(&prefix) && l.contains(function)),
            "no line starting {prefix:?} through {function}:\n{folded}"
        );
    }
    let cpu = std::fs::read_to_string(run.file("cpu.folded")).unwrap();
    assert!(
        cpu.lines().all(|l| l.starts_with("hung;")),
        "only the main thread runs:\n{cpu}"
    );
}
