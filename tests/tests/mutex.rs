//! Root tests of the mutex profile (`--profile mutex`): delay charged to the stack of the thread
//! that released the lock (Go >= 1.22 semantics), against workloads with a known culprit.

use agent::model::{Label, Sample};
use stallscope_tests::*;

fn attach(w: &Workload, duration: &str, extra: &[&str]) -> AgentRun {
    attach_ok(w, duration, "mutex", extra)
}

fn in_stack(p: &Profile, s: &Sample, function: &str) -> bool {
    p.frames_root_first(s)
        .iter()
        .any(|l| l.function == function)
}

/// Share of the delay whose releasing stack contains `function`.
fn delay_share(p: &Profile, function: &str) -> f64 {
    let di = value_index(p, "delay");
    let all: i64 = p.samples.iter().map(|s| s.values[di]).sum();
    let mine: i64 = p
        .samples
        .iter()
        .filter(|s| in_stack(p, s, function))
        .map(|s| s.values[di])
        .sum();
    assert!(all > 0, "no delay recorded at all");
    mine as f64 / all as f64
}

fn label<'a>(s: &'a Sample, key: &str) -> Option<&'a str> {
    s.labels.iter().find_map(|l| match l {
        Label::Str(k, v) if k == key => Some(v.as_str()),
        _ => None,
    })
}

/// One slow holder (2 ms) among three fast ones (20 µs): the slow section carries at least 80%
/// of the delay although the fast holders release the lock (and wake waiters) far more often.
#[test]
fn slow_critical_section_carries_the_delay() {
    require_root();
    let w = Workload::spawn("mutex_convoy", &[]);
    let run = attach(&w, "5s", &[]);
    let p = read_profile(run.file("mutex.pb.gz"));
    let types: Vec<(&str, &str)> = p
        .sample_types
        .iter()
        .map(|v| (v.r#type.as_str(), v.unit.as_str()))
        .collect();
    assert_eq!(types, [("contentions", "count"), ("delay", "nanoseconds")]);
    let slow = delay_share(&p, "slow_section");
    assert!(
        slow >= 0.80,
        "slow_section carries {:.1}% of the delay",
        slow * 100.0
    );
    // The fast holders released the lock with waiters more often than the slow one did.
    let ci = value_index(&p, "contentions");
    let count_of = |f: &str| -> i64 {
        p.samples
            .iter()
            .filter(|s| in_stack(&p, s, f))
            .map(|s| s.values[ci])
            .sum()
    };
    assert!(
        count_of("fast_section") > count_of("slow_section"),
        "fast holders woke waiters {} times, the slow one {}",
        count_of("fast_section"),
        count_of("slow_section")
    );
    // Samples name the lock, and the summary names the culprit.
    assert!(
        p.samples
            .iter()
            .all(|s| label(s, "lock_name") == Some("big_lock")),
        "every sample is on big_lock"
    );
    assert!(run.stdout.contains("(big_lock)"), "{}", run.stdout);
    // go tool pprof agrees: slow_section is on top by cumulative delay among our functions.
    let top = go_pprof(
        &["-top", "-cum", "-sample_index=delay"],
        run.file("mutex.pb.gz"),
    );
    assert!(top.contains("slow_section"), "{top}");
}

/// No contention: nothing to charge, an empty (but valid) profile.
#[test]
fn no_contention_gives_an_empty_profile() {
    require_root();
    let w = Workload::spawn("mutex_uncontended", &[]);
    let run = attach(&w, "2s", &[]);
    let p = read_profile(run.file("mutex.pb.gz"));
    assert_eq!(total(&p, "delay"), 0, "delay recorded without contention");
    assert!(p.samples.is_empty(), "{:?}", p.samples);
}

/// A writer holding a rwlock 5 ms at a time starves readers: the delay goes to the writer's
/// section.
#[test]
fn rwlock_writer_is_charged_for_starving_readers() {
    require_root();
    let w = Workload::spawn("rwlock_writer", &[]);
    let run = attach(&w, "4s", &[]);
    let p = read_profile(run.file("mutex.pb.gz"));
    let writer = delay_share(&p, "writer_section");
    assert!(
        writer >= 0.80,
        "writer_section carries {:.1}% of the delay",
        writer * 100.0
    );
}

/// `--mutex-fraction 10` keeps 1 in 10 events in the kernel and multiplies by 10. The waiting
/// the mutex profile charges to holders is the waiters' time, which the block profile at rate 1
/// measures exactly in the same window: both fractions must match it within 20%, and the
/// sampled run records far fewer events. The workload is steady (holders sleep in their
/// critical sections): with CPU-bound holders on a shared machine, a preempted holder makes a
/// few huge spans, and 1-in-10 sampling of so heavy a tail was seen 58% off in a CI run.
#[test]
fn mutex_fraction_estimates_the_same_totals() {
    require_root();
    let w = Workload::spawn("mutex_steady", &[]);
    let run = |fraction: &str| {
        // The fraction alone: --mutex-rate 1 turns the duration-weighted sampling off.
        let extra = [
            "--block-rate",
            "1",
            "--mutex-rate",
            "1",
            "--mutex-fraction",
            fraction,
        ];
        attach_ok(&w, "6s", "mutex,block", &extra)
    };
    let mut recorded = Vec::new();
    let mut shares = Vec::new();
    let mut last = None;
    for fraction in ["1", "10"] {
        let r = run(fraction);
        let mutex = read_profile(r.file("mutex.pb.gz"));
        let block = read_profile(r.file("block.pb.gz"));
        let (m, b) = (total(&mutex, "delay") as f64, total(&block, "delay") as f64);
        assert!(b > 0.5e9, "the convoy waited only {:.3} s", b / 1e9);
        assert!(
            (m - b).abs() <= 0.20 * b,
            "fraction {fraction}: mutex delay {:.3} s vs waiters' time {:.3} s in the same window",
            m / 1e9,
            b / 1e9
        );
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("lock releases with waiters"))
            .unwrap_or_else(|| panic!("no mutex accounting line in {}", r.stdout))
            .to_string();
        let nums: Vec<u64> = line
            .split([' ', ','])
            .filter_map(|w| w.parse().ok())
            .collect();
        recorded.push((nums[0], nums[1]));
        shares.push(delay_share(&mutex, "slow_hold"));
        last = Some(mutex);
    }
    let (seen, rec) = recorded[1];
    assert!(
        (rec as f64) < 0.25 * seen as f64,
        "fraction 10 recorded {rec} of {seen} releases"
    );
    assert_eq!(
        recorded[0].0, recorded[0].1,
        "fraction 1 records every release"
    );
    let ps = last.expect("two runs");
    assert_eq!(ps.period, 10);
    // The 2 ms holder causes most of the delay (on this VM's timers a 50 µs nap lasts longer,
    // so the exact share was seen at 81-82%), and 1-in-10 sampling keeps that share within
    // its sampling noise (seen 79.5% against 81.6%).
    let (exact, sampled) = (shares[0], shares[1]);
    assert!(exact >= 0.75, "fraction 1: slow_hold {:.1}%", exact * 100.0);
    assert!(
        (sampled - exact).abs() <= 0.10,
        "fraction 10: slow_hold {:.1}% against {:.1}% at fraction 1",
        sampled * 100.0,
        exact * 100.0
    );
}
