//! Root tests of the CPU profile: `agent attach --pid N --duration D --profile cpu -o DIR
//! [--frequency F]` writes DIR/cpu.pb.gz (sample types `samples/count`, `cpu/nanoseconds`) and
//! DIR/cpu.folded, prints a summary and exits 0.
//!
//! Each test checks numbers against what the workload is known to do.

use std::time::{Duration, Instant};

use stallscope_tests::*;

const HZ: f64 = 499.0;

/// Sample types, period and the cpu/nanoseconds column agree with the sampling frequency.
fn check_cpu_profile_shape(p: &Profile, hz: f64) {
    let types: Vec<(&str, &str)> = p
        .sample_types
        .iter()
        .map(|v| (v.r#type.as_str(), v.unit.as_str()))
        .collect();
    assert!(
        types.contains(&("samples", "count")) && types.contains(&("cpu", "nanoseconds")),
        "sample types: {types:?}"
    );
    let want_period = 1e9 / hz;
    assert!(
        (p.period as f64 - want_period).abs() <= want_period * 0.01,
        "period {} ns, want 1e9/{hz} = {want_period:.0} ns",
        p.period
    );
    let samples = total(p, "samples");
    let ns = total(p, "cpu");
    assert!(samples > 0, "no samples at all");
    let per_sample = ns as f64 / samples as f64;
    assert!(
        (per_sample - want_period).abs() <= want_period * 0.01,
        "cpu/nanoseconds per sample is {per_sample:.0}, want {want_period:.0} ({ns} ns over {samples} samples)"
    );
    assert!(
        p.duration >= Duration::from_millis(500),
        "profile duration not set: {:?}",
        p.duration
    );
}

/// `samples` against the CPU time the target used while the agent ran (`cpu`, measured by the
/// kernel's own accounting, so the check holds on a busy machine too). The agent sampled for
/// `window` of its `elapsed` run time, so up to `elapsed - window` of that CPU time could fall
/// outside the window. The sampler's timer runs on the wall clock: while the target is current,
/// time in interrupts and time the hypervisor steals are not in its CPU time but still get
/// samples, so the machine's interrupt and steal time meanwhile (all CPUs: an upper bound)
/// adds to what the CPU time allows.
fn check_sample_count(
    what: &str,
    samples: f64,
    hz: f64,
    (cpu, steal): (Duration, Duration),
    window: f64,
    elapsed: Duration,
) {
    let cpu = cpu.as_secs_f64();
    let steal = steal.as_secs_f64();
    let outside = (elapsed.as_secs_f64() - window).max(0.0);
    let max = 1.05 * hz * (cpu + steal) + 5.0;
    let min = 0.9 * hz * (cpu - outside).max(0.0);
    eprintln!(
        "{what}: {samples} samples; the target used {cpu:.2} s of CPU while the agent ran \
         ({elapsed:.2?}, window {window} s; {steal:.2} s in interrupts or stolen on the machine): expected \
         {min:.0}..{max:.0} at {hz} Hz"
    );
    assert!(
        samples <= max,
        "{what}: {samples} samples is more than {cpu:.2} s of CPU (and {steal:.2} s in interrupts or stolen) at \
         {hz} Hz can give ({max:.0})"
    );
    assert!(
        samples >= min,
        "{what}: {samples} samples is less than 90% of the {:.2} s of CPU the target used inside \
         the window at {hz} Hz ({min:.0})",
        cpu - outside
    );
}

/// Every file:line the profile gives for `function` lies inside its definition in `file`.
fn check_lines_inside(p: &Profile, function: &str, file: &str, signature: &str) {
    let src = workloads_src().join(file);
    let span = function_span(&src, signature);
    let file_name = src.file_name().unwrap().to_str().unwrap();
    let lines = source_lines(p, function, file_name);
    for n in &lines {
        assert!(
            span.contains(n),
            "{function} has line {n}, outside its definition at {file}:{span:?} (all: {lines:?})"
        );
    }
}

#[test]
fn cpu_split_3_to_1() {
    require_root();
    let w = Workload::spawn("cpu_split", &[]);
    let (cpu0, steal0) = (w.cpu_time(), machine_uncharged());
    let run = attach_ok(&w, "5s", "cpu", &["--frequency", "499"]);
    let cpu = (w.cpu_time() - cpu0, machine_uncharged() - steal0);
    let p = read_profile(run.file("cpu.pb.gz"));
    check_cpu_profile_shape(&p, HZ);

    // One thread burning one CPU for 5 s at 499 Hz: about 2495 samples on an idle core.
    let samples = total(&p, "samples") as f64;
    check_sample_count("cpu_split", samples, HZ, cpu, 5.0, run.elapsed);
    assert!(
        samples >= 500.0,
        "only {samples} samples: too few to judge a 3:1 split (is the machine that busy?)"
    );

    let flat = flat_by_function(&p, "cpu");
    let a = *flat.get("hot_a").unwrap_or(&0) as f64;
    let b = *flat.get("hot_b").unwrap_or(&0) as f64;
    let all = total(&p, "cpu") as f64;
    assert!(b > 0.0, "no hot_b samples; flat: {:?}", top_flat(&p, "cpu"));
    let ratio = a / b;
    eprintln!("hot_a/hot_b = {ratio:.3} (hot_a {a} ns, hot_b {b} ns, all {all} ns)");
    assert!(
        (2.55..=3.45).contains(&ratio),
        "hot_a/hot_b = {ratio:.3}, want 3.0 ±15%; flat: {:?}",
        top_flat(&p, "cpu")
    );
    assert!(
        (a + b) / all >= 0.9,
        "hot_a + hot_b are only {:.1}% of the CPU time; flat: {:?}",
        100.0 * (a + b) / all,
        top_flat(&p, "cpu")
    );

    check_lines_inside(&p, "hot_a", "cpu_split.c", "void hot_a(void)");
    check_lines_inside(&p, "hot_b", "cpu_split.c", "void hot_b(void)");

    // Both are called from main: a complete frame-pointer walk shows it above them.
    let cum = cum_by_function(&p, "cpu");
    let main = *cum.get("main").unwrap_or(&0) as f64;
    assert!(
        main >= 0.9 * (a + b),
        "main's cumulative time {main} ns should cover hot_a + hot_b ({} ns)",
        a + b
    );

    // The folded stacks say the same.
    let folded = folded_by_leaf(run.file("cpu.folded"));
    let fa = *folded.get("hot_a").unwrap_or(&0) as f64;
    let fb = *folded.get("hot_b").unwrap_or(&0) as f64;
    assert!(
        fb > 0.0 && (2.55..=3.45).contains(&(fa / fb)),
        "cpu.folded: hot_a {fa} / hot_b {fb}, want 3.0 ±15%"
    );

    // The reference reader agrees, and the summary names both functions with their file.
    let top = parse_pprof_top(&go_pprof_top(run.file("cpu.pb.gz")));
    assert_eq!(
        top.first().map(|r| r.name.as_str()),
        Some("hot_a"),
        "go tool pprof -top: {top:?}"
    );
    let out = run.output();
    for needle in ["hot_a", "hot_b", "cpu_split.c"] {
        assert!(
            out.contains(needle),
            "the summary does not mention {needle}:\n{out}"
        );
    }
}

#[test]
fn go_hot_function_first() {
    require_root();
    let w = Workload::spawn("gohot", &[]);
    let (cpu0, steal0) = (w.cpu_time(), machine_uncharged());
    // Default frequency (99 Hz).
    let run = attach_ok(&w, "5s", "cpu", &[]);
    let cpu = (w.cpu_time() - cpu0, machine_uncharged() - steal0);
    let p = read_profile(run.file("cpu.pb.gz"));
    check_cpu_profile_shape(&p, 99.0);

    // A Go program burning one CPU for 5 s at 99 Hz: about 495 samples on an idle core.
    let samples = total(&p, "samples") as f64;
    check_sample_count("gohot", samples, 99.0, cpu, 5.0, run.elapsed);
    assert!(samples >= 100.0, "only {samples} samples");
    let top = top_flat(&p, "samples");
    let (name, n) = &top[0];
    assert_eq!(name, "main.hotLoop", "top flat functions: {top:?}");
    assert!(
        *n as f64 >= 0.8 * samples,
        "main.hotLoop has {n} of {samples} samples; it is all the program does"
    );
    check_lines_inside(&p, "main.hotLoop", "gohot/main.go", "func hotLoop(");

    // The walk reaches the root of the goroutine (runtime.main). main.main, between the two, is
    // not required: hotLoop is a frameless leaf (Go gives small leaves no frame pointer), and a
    // frame-pointer walk from a frameless leaf skips its caller.
    let cum = cum_by_function(&p, "samples");
    assert!(
        *cum.get("runtime.main").unwrap_or(&0) as f64 >= 0.95 * *n as f64,
        "hotLoop's stacks should reach runtime.main; cum: {cum:?}"
    );

    let rows = parse_pprof_top(&go_pprof_top(run.file("cpu.pb.gz")));
    let first = rows.first().expect("go tool pprof -top printed no rows");
    assert_eq!(first.name, "main.hotLoop", "go tool pprof -top: {rows:?}");
    assert!(first.flat_pct >= 80.0, "go tool pprof -top: {rows:?}");
}

/// The same program built as releases and distribution packages are (`-ldflags=-s -w`: no
/// symbol table, no DWARF): its frames are named from Go's own `.gopclntab`, with file:line,
/// in the agent's profile and for `go tool pprof`.
#[test]
fn a_stripped_go_binary_is_symbolized_from_its_pclntab() {
    require_root();
    let bin = stallscope_testkit::workloads::build_go_stripped("gohot")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let out = std::process::Command::new("readelf")
        .arg("-S")
        .arg(&bin)
        .output()
        .unwrap();
    let sections = String::from_utf8_lossy(&out.stdout);
    assert!(
        !sections.contains(".symtab") && !sections.contains(".debug_info"),
        "not stripped: {sections}"
    );
    let w = Workload::spawn_command(
        "gohot-stripped",
        std::process::Command::new(&bin),
        Some("ready"),
        std::time::Duration::from_secs(10),
    );
    let run = attach_ok(&w, "3s", "cpu", &[]);
    let p = read_profile(run.file("cpu.pb.gz"));
    let samples = total(&p, "samples");
    let top = top_flat(&p, "samples");
    let (name, n) = &top[0];
    assert_eq!(name, "main.hotLoop", "top flat functions: {top:?}");
    assert!(*n as f64 >= 0.8 * samples as f64, "{top:?}");
    check_lines_inside(&p, "main.hotLoop", "gohot/main.go", "func hotLoop(");
    let cum = cum_by_function(&p, "samples");
    assert!(
        *cum.get("runtime.main").unwrap_or(&0) as f64 >= 0.95 * *n as f64,
        "runtime.main named too: {cum:?}"
    );
    let rows = parse_pprof_top(&go_pprof_top(run.file("cpu.pb.gz")));
    assert_eq!(
        rows.first().map(|r| r.name.as_str()),
        Some("main.hotLoop"),
        "{rows:?}"
    );
}

#[test]
fn thread_created_after_attach_is_counted() {
    require_root();
    // Main prints "ready", sleeps 2 s, then starts a thread spinning in late_worker_spin.
    let w = Workload::spawn("late_thread", &["2"]);
    let (cpu0, steal0) = (w.cpu_time(), machine_uncharged());
    let agent_started = Instant::now();
    let run = attach_ok(&w, "5s", "cpu", &["--frequency", "499"]);
    let cpu = (w.cpu_time() - cpu0, machine_uncharged() - steal0);
    let thread_started = w.wait_for_line("late thread started", Duration::ZERO);
    let p = read_profile(run.file("cpu.pb.gz"));
    check_cpu_profile_shape(&p, HZ);

    // The 5 s window [A, A+5] starts after the agent did (A >= agent_started) and ends before
    // it exited (A + 5 <= agent_started + elapsed). The thread spins from `thread_started` on,
    // about 2 s in, so inside the window for at least 5 - late ~ 3 s and at most
    // min(5, elapsed - late) of wall time: ~60% of one CPU over the 5 s, and we ask for 40%.
    let late = thread_started.saturating_duration_since(agent_started);
    assert!(
        late >= Duration::from_millis(1500),
        "the thread started only {late:?} after the agent: not \"after attach\""
    );
    let min_spin = (5.0 - late.as_secs_f64()).max(0.0);
    let max_spin = (run.elapsed.as_secs_f64() - late.as_secs_f64()).clamp(0.0, 5.0);
    let flat = flat_by_function(&p, "samples");
    let spin = *flat.get("late_worker_spin").unwrap_or(&0) as f64;
    let all = total(&p, "samples") as f64;
    eprintln!(
        "late_worker_spin: {spin} samples of {all}; thread started {late:?} after the agent, \
         so it spun {min_spin:.2}..{max_spin:.2} s of the window: {:.0}..{:.0} samples on an idle CPU",
        HZ * min_spin,
        HZ * max_spin
    );
    assert!(
        spin >= 0.4 * HZ * 5.0,
        "late_worker_spin has {spin} samples, less than 40% of a CPU over the 5 s capture; top: {:?}",
        top_flat(&p, "samples")
    );
    assert!(
        spin <= 1.05 * HZ * max_spin + 5.0,
        "late_worker_spin has {spin} samples, more than one CPU for {max_spin:.2} s at {HZ} Hz gives"
    );
    // Main only sleeps: the process's CPU time is the late thread's.
    check_sample_count("late_worker_spin", spin, HZ, cpu, 5.0, run.elapsed);
    // Main only sleeps: nearly every sample is the late thread's, in late_worker_spin or in
    // the kernel on top of it (interrupt exits, which a busy VM's steal makes many of).
    let under = *cum_by_function(&p, "samples")
        .get("late_worker_spin")
        .unwrap_or(&0) as f64;
    assert!(
        under >= 0.9 * all,
        "late_worker_spin is on {under} of {all} stacks; top: {:?}",
        top_flat(&p, "samples")
    );
    check_lines_inside(
        &p,
        "late_worker_spin",
        "late_thread.c",
        "void late_worker_spin(void)",
    );
}

#[test]
fn target_exits_mid_capture() {
    require_root();
    // Burns CPU in doomed_spin for 2 s after "ready", then exits 0; the capture asks for 8 s.
    let w = Workload::spawn("exit_early", &["2"]);
    let (cpu0, steal0) = (w.cpu_time(), machine_uncharged());
    let agent_started = Instant::now();
    let run = attach_ok(&w, "8s", "cpu", &["--frequency", "499"]);

    let status = w
        .exit_status()
        .expect("the workload should have exited during the capture");
    assert!(status.success(), "exit_early: {status}");
    let exited = w
        .exited_at()
        .unwrap()
        .saturating_duration_since(agent_started);
    let out = run.output().to_lowercase();
    eprintln!(
        "target exited {exited:?} after the agent started; the agent ran {:?}",
        run.elapsed
    );
    assert!(
        out.contains("exited"),
        "the agent should say that the process exited:\n{out}"
    );
    assert!(
        run.elapsed < Duration::from_secs(7) || out.contains("early"),
        "the target exited after {exited:?}, but the agent ran the whole {:?} without saying it \
         ended early",
        run.elapsed
    );

    let p = read_profile(run.file("cpu.pb.gz"));
    check_cpu_profile_shape(&p, HZ);
    let flat = flat_by_function(&p, "samples");
    let spin = *flat.get("doomed_spin").unwrap_or(&0) as f64;
    let all = total(&p, "samples") as f64;
    // It spun until it exited, `exited` after the agent started, using `cpu` of CPU time from
    // then on; the window started only after the agent's own start-up, so fewer samples than
    // that, but at least 0.2 s worth.
    // (Plus the machine's interrupt and steal time meanwhile: see check_sample_count.)
    let (cpu, steal) = (w.cpu_time() - cpu0, machine_uncharged() - steal0);
    let max = 1.05 * HZ * (cpu.as_secs_f64().min(exited.as_secs_f64()) + steal.as_secs_f64()) + 5.0;
    eprintln!(
        "doomed_spin: {spin} samples of {all}; it used {cpu:?} of CPU after the agent started \
         ({steal:?} in interrupts or stolen on the machine): at most {max:.0} samples"
    );
    assert!(
        spin >= 0.2 * HZ,
        "doomed_spin has {spin} samples; top: {:?}",
        top_flat(&p, "samples")
    );
    assert!(
        spin <= max,
        "doomed_spin has {spin} samples, more than {cpu:?} of CPU (and {steal:?} in interrupts or stolen) at \
         {HZ} Hz gives ({max:.0})"
    );
    // Nearly every sample is the spinner's, in doomed_spin or in the kernel on top of it.
    let under = *cum_by_function(&p, "samples")
        .get("doomed_spin")
        .unwrap_or(&0) as f64;
    assert!(
        under >= 0.9 * all,
        "doomed_spin is on {under} of {all} stacks; top: {:?}",
        top_flat(&p, "samples")
    );
    // Symbolized although the process was gone by then.
    check_lines_inside(
        &p,
        "doomed_spin",
        "exit_early.c",
        "void doomed_spin(double seconds)",
    );
    let folded = folded_by_leaf(run.file("cpu.folded"));
    assert!(
        folded.get("doomed_spin").is_some_and(|&n| n > 0),
        "cpu.folded has no doomed_spin: {folded:?}"
    );
}
