//! Root tests of the off-CPU and block profiles against workloads whose waits are known:
//! `agent attach --pid N --duration D --profile offcpu,block -o DIR` writes DIR/offcpu.pb.gz
//! (`events/count`, `off-cpu/nanoseconds`, string label `wait_class`) and DIR/block.pb.gz
//! (`contentions/count`, `delay/nanoseconds`, Go block-profile sampling).

use std::time::Duration;

use agent::model::{Label, Sample};
use stallscope_tests::*;

fn wait_class(s: &Sample) -> Option<&str> {
    s.labels.iter().find_map(|l| match l {
        Label::Str(k, v) if k == "wait_class" => Some(v.as_str()),
        _ => None,
    })
}

fn has_function(p: &Profile, s: &Sample, function: &str) -> bool {
    p.frames_root_first(s)
        .iter()
        .any(|l| l.function == function)
}

/// Sum of `value_type` over samples whose stack contains `function` and whose wait class is
/// `class` (any class when `None`), in seconds.
fn seconds(p: &Profile, value_type: &str, function: &str, class: Option<&str>) -> f64 {
    let vi = value_index(p, value_type);
    let ns: i64 = p
        .samples
        .iter()
        .filter(|s| has_function(p, s, function))
        .filter(|s| class.is_none() || wait_class(s) == class)
        .map(|s| s.values[vi])
        .sum();
    ns as f64 / 1e9
}

fn within(value: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        (value - want).abs() <= want * tolerance,
        "{what}: {value:.3} s, want {want:.3} s ±{:.0}%",
        tolerance * 100.0
    );
}

/// A sleeping thread, a polling thread and a spinning thread in one process, all three
/// profiles in one run: sleep and io time each ≈ the capture, under the function that waits;
/// the CPU-bound thread has (almost) no off-CPU time and is on top of the CPU profile.
#[test]
fn sleep_io_and_cpu_bound_threads_are_classified() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let run = attach_ok(&w, "5s", "cpu,offcpu,block", &[]);
    let p = read_profile(run.file("offcpu.pb.gz"));
    let types: Vec<(&str, &str)> = p
        .sample_types
        .iter()
        .map(|v| (v.r#type.as_str(), v.unit.as_str()))
        .collect();
    assert_eq!(types, [("events", "count"), ("off-cpu", "nanoseconds")]);
    let d = p.duration.as_secs_f64();
    assert!(d > 4.5 && d < 6.0, "profile duration {d}");

    let sleep = seconds(&p, "off-cpu", "sleep_forever", Some("sleep"));
    within(sleep, d, 0.05, "sleep time under sleep_forever");
    let io = seconds(&p, "off-cpu", "poll_forever", Some("io"));
    within(io, d, 0.05, "io time under poll_forever");
    // Nothing of the sleeper is classified as io or the poller as sleep.
    assert!(seconds(&p, "off-cpu", "sleep_forever", Some("io")) < 0.01);
    assert!(seconds(&p, "off-cpu", "poll_forever", Some("sleep")) < 0.01);
    // The CPU-bound thread never blocks: its only off-CPU time is waiting for a CPU when
    // preempted, and that plus its CPU time (from the CPU profile, an independent mechanism)
    // accounts for the wall time.
    let spin_off = seconds(&p, "off-cpu", "spin_forever", None);
    let spin_runnable = seconds(&p, "off-cpu", "spin_forever", Some("runnable"));
    assert!(
        spin_off - spin_runnable < 0.01 * d,
        "CPU-bound thread blocked for {:.3} s of {d:.3} s",
        spin_off - spin_runnable
    );
    let cpu = read_profile(run.file("cpu.pb.gz"));
    let spin_cpu: i64 = cpu
        .samples
        .iter()
        .filter(|s| has_function(&cpu, s, "spin_forever"))
        .map(|s| s.values[value_index(&cpu, "cpu")])
        .sum();
    let spin_cpu = spin_cpu as f64 / 1e9;
    within(
        spin_cpu + spin_runnable,
        d,
        0.05,
        "CPU time + run-queue time of the CPU-bound thread",
    );

    // The reference reader filters by the label.
    let io_top = go_pprof(
        &["-top", "-tagfocus=wait_class=io"],
        run.file("offcpu.pb.gz"),
    );
    assert!(io_top.contains("poll_forever"), "{io_top}");
    assert!(!io_top.contains("sleep_forever"), "{io_top}");

    // CPU profile from the same run: the spinner is where the CPU went.
    let top = top_flat(&cpu, "cpu");
    assert_eq!(top[0].0, "spin_forever", "top of the CPU profile: {top:?}");
    // The block profile exists and is valid (this workload takes no locks).
    let block = read_profile(run.file("block.pb.gz"));
    assert_eq!(block.sample_types[1].r#type, "delay");
    assert!(run.stdout.contains("by wait class"), "{}", run.stdout);
}

/// A thread hopping between the two CPUs (it sleeps on one and wakes on the other): its
/// off-CPU time is not inflated beyond the wall-clock time, nor lost.
#[test]
fn migrating_thread_is_not_inflated() {
    require_root();
    let w = Workload::spawn("migrate", &[]);
    let run = attach_ok(&w, "5s", "offcpu", &[]);
    let p = read_profile(run.file("offcpu.pb.gz"));
    let d = p.duration.as_secs_f64();
    let off = seconds(&p, "off-cpu", "hop_forever", None);
    assert!(
        off <= d * 1.02 && off >= d * 0.80,
        "off-CPU time of the hopping thread {off:.3} s over {d:.3} s of wall time"
    );
    let sleep = seconds(&p, "off-cpu", "hop_forever", Some("sleep"));
    assert!(sleep >= d * 0.5, "sleep {sleep:.3} s of {d:.3} s");
}

/// Two CPU-bound threads pinned to one CPU: each waits in the run queue about half the time.
#[test]
fn pinned_cpu_bound_pair_is_runnable_half_the_time() {
    require_root();
    let w = Workload::spawn("pinned_pair", &[]);
    let run = attach_ok(&w, "5s", "offcpu", &[]);
    let p = read_profile(run.file("offcpu.pb.gz"));
    let d = p.duration.as_secs_f64();
    for f in ["burn_a", "burn_b"] {
        let runnable = seconds(&p, "off-cpu", f, Some("runnable"));
        within(runnable, d / 2.0, 0.10, &format!("runnable time of {f}"));
    }
    assert!(
        run.stdout.contains("run-queue latency"),
        "summary shows run-queue latency: {}",
        run.stdout
    );
}

/// `--block-rate 1ms` on a mix of ~100 µs and 10 ms futex waits estimates the same totals as
/// `--block-rate 1` (every wait), within 15%, while recording far fewer events in the kernel.
#[test]
fn block_rate_sampling_is_unbiased_and_cheaper() {
    require_root();
    let w = Workload::spawn("futex_mix", &[]);
    let all = attach_ok(&w, "6s", "block", &["--block-rate", "1"]);
    let sampled = attach_ok(&w, "6s", "block", &["--block-rate", "1ms"]);
    let pa = read_profile(all.file("block.pb.gz"));
    let ps = read_profile(sampled.file("block.pb.gz"));
    // Per second, so the two windows' small length differences don't matter.
    let rate = |p: &Profile, t: &str| total(p, t) as f64 / p.duration.as_secs_f64();
    for t in ["contentions", "delay"] {
        let (a, s) = (rate(&pa, t), rate(&ps, t));
        assert!(
            (s - a).abs() <= 0.15 * a,
            "{t}/s: rate 1 gives {a:.1}, rate 1ms gives {s:.1} (more than 15% apart)"
        );
    }
    // Both wait kinds are there, under their functions, in the sampled profile too.
    for p in [&pa, &ps] {
        assert!(seconds(p, "delay", "long_wait", None) > 0.0);
        assert!(seconds(p, "delay", "short_wait", None) > 0.0);
    }
    let seen_all = counter(&all, "block_events_seen");
    let rec_all = counter(&all, "block_events_recorded");
    let seen_s = counter(&sampled, "block_events_seen");
    let rec_s = counter(&sampled, "block_events_recorded");
    assert_eq!(seen_all, rec_all, "rate 1 records every wait");
    assert!(seen_s > 1000, "the workload waits often: {seen_s}");
    assert!(
        (rec_s as f64) < 0.5 * seen_s as f64,
        "rate 1ms recorded {rec_s} of {seen_s} waits: not far fewer"
    );
}

/// One thread blocks at the same instruction with the same registers through two call paths
/// (`same_site.c`: 5 × 1 ms under `via_short`, then 5 × 3 ms under `via_long`). The kernel's
/// walk cache must tell them apart by the stack words the walk read: each path gets its own
/// share (3:1), while most stacks still come from the cache.
#[test]
fn walk_cache_tells_call_paths_apart() {
    require_root();
    let w = Workload::spawn("same_site", &[]);
    let run = attach_ok(&w, "4s", "offcpu", &[]);
    let p = read_profile(run.file("offcpu.pb.gz"));
    let d = p.duration.as_secs_f64();
    let short = seconds(&p, "off-cpu", "via_short", Some("sleep"));
    let long = seconds(&p, "off-cpu", "via_long", Some("sleep"));
    // Sleeps overshoot by the timer slack (~50-100 µs each), which pulls the ratio below 3.
    let ratio = long / short;
    assert!(
        (2.6..=3.2).contains(&ratio),
        "via_long {long:.3} s / via_short {short:.3} s = {ratio:.2}, want about 3"
    );
    within(short + long, d, 0.05, "sleep time under the two paths");
    let both = seconds(&p, "off-cpu", "nap", Some("sleep"));
    within(both, short + long, 0.01, "sleep time under nap");
    let hits = counter(&run, "user_stack_cache_hit");
    let walked = counter(&run, "user_stack_walked");
    assert!(
        hits > walked,
        "walk cache barely used: {hits} hits, {walked} walks"
    );
}

/// The CPU sampler runs from a timer interrupt and can interrupt a tracepoint program's stack
/// walk on the same CPU. At 10 kHz on a switch-heavy lock convoy, every stored user stack must
/// still be the stack its handle names: the agent re-hashes them all and counts any mismatch
/// as a corrupt (lost) stack (`user_stack_corrupt` in summary.json). (The race is narrow: with both
/// programs sharing one scratch slot this test still passed twice in two runs, so it guards
/// the separation and the count rather than proving the race.)
#[test]
fn stacks_survive_the_sampler_interrupting_a_walk() {
    require_root();
    let w = Workload::spawn("mutex_convoy", &[]);
    let run = attach_ok(&w, "3s", "cpu,offcpu,block,mutex", &["-F", "10000"]);
    let corrupt = counter(&run, "user_stack_corrupt");
    assert_eq!(corrupt, 0, "{}", run.stdout);
    let walked = counter(&run, "user_stack_walked");
    let samples = counter(&run, "cpu_samples");
    assert!(
        walked >= 50 && samples >= 5_000,
        "the test needs many walks and samples at once: {walked} walks, {samples} samples\n{}",
        run.stdout
    );
}

/// Off-CPU time made of waits below the default `--offcpu-rate` (100 us: `handoff.c`, two
/// threads taking turns and one napping 20 us at a time), so most intervals are left out. Two
/// agents watch the same windows of the same process at once, one recording every interval
/// (`--offcpu-rate 1`), one at the default rate: the kept intervals' weights must give the same
/// off-CPU seconds per second within 5% (in all, in the napper's sleeps) while far fewer
/// intervals are recorded. The players' split between futex waits and run-queue time gets 10%:
/// the two windows open a little apart (each agent loads its own programs) and that split
/// drifts with the napper's competition for the CPUs (-8% seen once in 5 runs, the total -1.3%). In every window, every thread is accounted (on CPU + off CPU = alive within 2%)
/// and the players' estimated off-CPU time is within 5% of their true one (alive - on CPU).
#[test]
fn default_offcpu_rate_keeps_the_totals_of_rate_one() {
    require_root();
    let w = Workload::spawn("handoff", &[]);
    let mut runs = Vec::new();
    for _round in 0..2 {
        let (all, sampled) = std::thread::scope(|s| {
            let all = s.spawn(|| attach_ok(&w, "3s", "offcpu", &["--offcpu-rate", "1"]));
            let sampled = s.spawn(|| attach_ok(&w, "3s", "offcpu", &["--offcpu-rate", "100us"]));
            (
                all.join().expect("rate 1"),
                sampled.join().expect("default rate"),
            )
        });
        runs.push(("1", all));
        runs.push(("100us", sampled));
    }
    let mut figures = Vec::new();
    for (rate, run) in &runs {
        let p = read_profile(run.file("offcpu.pb.gz"));
        let threads = read_threads(run.file("threads.json"));
        for t in &threads.threads {
            if let Some(e) = t.invariant_error() {
                panic!("--offcpu-rate {rate}: {e}\n{}", threads.text);
            }
        }
        let players: Vec<_> = threads
            .threads
            .iter()
            .filter(|t| t.name == "ping" || t.name == "pong")
            .collect();
        assert_eq!(players.len(), 2, "{}", threads.text);
        let truth: i64 = players.iter().map(|t| t.alive_ns - t.oncpu_ns).sum();
        let estimated: i64 = players.iter().map(|t| t.offcpu_ns).sum();
        within(
            estimated as f64 / 1e9,
            truth as f64 / 1e9,
            0.05,
            &format!("--offcpu-rate {rate}: the players' off-CPU time against alive - on CPU"),
        );
        let recorded = counter(run, "offcpu_recorded");
        let left_out = counter(run, "offcpu_sampled_out");
        if *rate == "1" {
            assert_eq!(left_out, 0, "rate 1 leaves nothing out");
        } else {
            // Most waits here are a few µs, some tens (a wake-up across CPUs in this VM).
            assert!(
                recorded < left_out,
                "rate {rate}: {recorded} intervals recorded, {left_out} left out: not fewer"
            );
        }
        figures.push((*rate, p));
    }
    // Off-CPU seconds per second of window, summed over the two rounds, by what is measured.
    let per_s = |p: &Profile, class: Option<&str>, function: &str| {
        let vi = value_index(p, "off-cpu");
        let ns: i64 = p
            .samples
            .iter()
            .filter(|s| class.is_none() || wait_class(s) == class)
            .filter(|s| has_function(p, s, function))
            .map(|s| s.values[vi])
            .sum();
        ns as f64 / 1e9 / p.duration.as_secs_f64()
    };
    for (what, class, function, tolerance) in [
        ("the players' off-CPU time", None, "player", 0.05),
        ("the players' futex waits", Some("futex"), "player", 0.10),
        ("the napper's sleeps", Some("sleep"), "nap", 0.05),
        (
            "the players' run-queue time",
            Some("runnable"),
            "player",
            0.10,
        ),
    ] {
        let sum = |want: &str| -> f64 {
            figures
                .iter()
                .filter(|(r, _)| *r == want)
                .map(|(_, p)| per_s(p, class, function))
                .sum()
        };
        let (all, sampled) = (sum("1"), sum("100us"));
        eprintln!("{what}, s/s over 2 windows: rate 1 {all:.3}, default rate {sampled:.3}");
        assert!(
            all > 0.05,
            "{what}: too little to compare ({all:.3} s/s at rate 1)"
        );
        within(
            sampled,
            all,
            tolerance,
            &format!("{what} per second (2 windows)"),
        );
    }
}

/// Two agents on one process at once (two engineers paged for the same service): each loads
/// its own programs and maps, and each sees the whole of the known waits.
#[test]
fn two_agents_on_one_process_both_see_every_wait() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| attach_ok(&w, "3s", "offcpu", &[]));
        let b = s.spawn(|| attach_ok(&w, "3s", "offcpu", &[]));
        (
            a.join().expect("first agent"),
            b.join().expect("second agent"),
        )
    });
    for run in [&a, &b] {
        let p = read_profile(run.file("offcpu.pb.gz"));
        let d = p.duration.as_secs_f64();
        within(
            seconds(&p, "off-cpu", "sleep_forever", Some("sleep")),
            d,
            0.05,
            "sleep time under sleep_forever, two agents at once",
        );
        within(
            seconds(&p, "off-cpu", "poll_forever", Some("io")),
            d,
            0.05,
            "io time under poll_forever, two agents at once",
        );
    }
}

/// Threads created by the thousand (`churn.c`: ~1,000 a second, each living well under a
/// millisecond): a new thread waits in the run queue from its creation to its first run, a wait
/// no switch-out begins. Without it 16.5% of these threads' lives went unaccounted in the soak.
/// Their time must add up (on CPU + off CPU = alive within 2%, summed over the threads created in
/// the window), and that first wait shows as run-queue time under `thread_state=not started`.
#[test]
fn new_threads_first_wait_in_the_run_queue_is_accounted() {
    require_root();
    let w = Workload::spawn("churn", &["6"]);
    // Every interval recorded: this test is about accounting, not the estimator. At the default
    // rate the born threads' waits (mostly < 100 us) are kept with probability d/rate, and over
    // ~0.2 s of them the estimate's standard deviation is sqrt(rate / total) ~ 2%, the
    // tolerance below (the estimator is tested by default_offcpu_rate_keeps_the_totals_of_rate_one).
    let run = attach_ok(&w, "3s", "offcpu", &["--offcpu-rate", "1"]);
    let th = read_threads(run.file("threads.json"));
    let born: Vec<&ThreadAcct> = th.threads.iter().filter(|t| t.created).collect();
    assert!(
        born.len() > 500,
        "want hundreds of threads created in the window, got {}: {}",
        born.len(),
        th.text
    );
    let alive: i64 = born.iter().map(|t| t.alive_ns).sum();
    let accounted: i64 = born.iter().map(|t| t.oncpu_ns + t.offcpu_ns).sum();
    assert!(
        (accounted - alive).abs() <= alive / 50,
        "{} threads created in the window: {:.3} s alive, {:.3} s on + off CPU ({:+.1}%)\n{}",
        born.len(),
        alive as f64 / 1e9,
        accounted as f64 / 1e9,
        100.0 * (accounted - alive) as f64 / alive.max(1) as f64,
        th.worst(12)
    );
    th.assert_invariant();
    let p = read_profile(run.file("offcpu.pb.gz"));
    let vi = value_index(&p, "off-cpu");
    let (mut first_runs, mut threads) = (0i64, std::collections::HashSet::new());
    for s in &p.samples {
        if sample_label(s, "thread_state").as_deref() == Some("not started") {
            assert_eq!(wait_class(s), Some("runnable"), "{}", stack_text(&p, s));
            assert!(
                s.locations.is_empty() || stack_text(&p, s).trim().is_empty(),
                "a thread before its first run has no user frames: {}",
                stack_text(&p, s)
            );
            first_runs += s.values[vi];
            threads.insert(sample_label(s, "tid"));
        }
    }
    assert!(
        first_runs > 0 && threads.len() > 100,
        "first runs: {:.3} s over {} threads\n{}",
        first_runs as f64 / 1e9,
        threads.len(),
        run.stdout
    );
    assert!(
        run.stdout.contains("[new thread, before its first run]"),
        "{}",
        run.stdout
    );
    let _ = w.wait_exit(Duration::from_secs(30));
}
