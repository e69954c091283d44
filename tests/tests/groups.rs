//! Process groups: `attach --pid N --children` records the process and every process it forks,
//! those forked after attach included, from their fork on; each sample says its process.

use std::time::Duration;

use stallscope_tests::*;

/// Pids the workload printed as `forked PID`.
fn forked_pids(w: &Workload) -> Vec<u32> {
    w.stdout_lines()
        .iter()
        .filter_map(|l| l.strip_prefix("forked ")?.trim().parse().ok())
        .collect()
}

/// A pre-forking parent forks 3 workers after the window opened; each burns 0.3 s of CPU in
/// worker_burn, then blocks reading a pipe in worker_wait until the parent writes 1 s after the
/// fork, then exits. With --children: the workers are members from their fork (summary.json,
/// the followed counter), their CPU time per pid is the 0.3 s they burned, their waits are in
/// the off-CPU profile, every sample carries its process's pid and comm, and every worker's
/// thread-seconds add up.
#[test]
fn workers_forked_after_attach_are_recorded_from_their_fork() {
    require_root();
    let w = Workload::spawn("forking_workers", &["-1", "3", "0.3", "1"]);
    let tmp = TempDir::new("stallscope-children");
    let out = tmp.path().join("out");
    let stdout = std::fs::File::create(tmp.path().join("stdout.txt")).unwrap();
    let (agent, stderr) = spawn_attach(
        &[
            "--pid",
            &w.pid_str(),
            "--children",
            "--profile",
            "cpu,offcpu",
            "--duration",
            "4s",
        ],
        &out,
        stdout,
    );
    // SAFETY: signal to our own child: fork now.
    unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
    w.wait_for_line("workers done", Duration::from_secs(10));
    let status = agent.wait_with_output().expect("the agent").status;
    let stderr = stderr.join().unwrap_or_default();
    let summary = std::fs::read_to_string(tmp.path().join("stdout.txt")).unwrap_or_default();
    assert!(status.success(), "the agent failed:\n{stderr}\n{summary}");
    let workers = forked_pids(&w);
    assert_eq!(workers.len(), 3, "{:?}", w.stdout_lines());

    // The summary and summary.json name the group and every member.
    assert!(
        summary.contains(&format!("pid {} and its descendants", w.pid()))
            && summary.contains("processes: 4 (3 forked in the window, 3 exited)"),
        "{summary}"
    );
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("summary.json is JSON");
    let members = v["group"]["members"].as_array().expect("group.members");
    assert_eq!(members.len(), 4, "{}", v["group"]);
    for m in members {
        let pid = m["pid"].as_u64().unwrap() as u32;
        if pid == w.pid() {
            assert_eq!(m["joined"], "at_start", "{m}");
            assert_eq!(m["exited"], false, "{m}");
        } else {
            assert!(workers.contains(&pid), "{pid} is no worker: {m}");
            assert_eq!(m["joined"], "forked", "{m}");
            assert_eq!(m["parent"], w.pid(), "{m}");
            assert_eq!(m["exited"], true, "{m}");
            assert_eq!(m["comm"], "forking_workers", "{m}");
        }
    }
    assert_eq!(v["counters"]["processes_followed"], 3, "{}", v["counters"]);
    assert_eq!(v["counters"]["follow_map_full"], 0);

    // Every sample says its process; each worker's CPU is the 0.3 s it burned, in worker_burn.
    let cpu = read_profile(out.join("cpu.pb.gz"));
    let vi = value_index(&cpu, "cpu");
    let mut by_pid = std::collections::HashMap::<u32, (i64, i64)>::new();
    for s in &cpu.samples {
        let pid: u32 = sample_label(s, "pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("a CPU sample without a pid label: {:?}", s.labels));
        assert_eq!(
            sample_label(s, "comm").as_deref(),
            Some("forking_workers"),
            "{:?}",
            s.labels
        );
        let e = by_pid.entry(pid).or_default();
        e.0 += s.values[vi];
        if stack_has(&cpu, s, "worker_burn") {
            e.1 += s.values[vi];
        }
    }
    for pid in &workers {
        let (all, burn) = by_pid.get(pid).copied().unwrap_or_default();
        let secs = all as f64 / 1e9;
        assert!(
            (0.18..=0.45).contains(&secs),
            "worker {pid}: {secs:.3} s of CPU in the profile, it burned 0.3 s: {by_pid:?}"
        );
        assert!(
            burn * 10 >= all * 8,
            "worker {pid}: {burn} of {all} ns in worker_burn"
        );
    }
    assert!(
        by_pid.keys().all(|p| *p == w.pid() || workers.contains(p)),
        "samples of processes outside the group: {by_pid:?}"
    );

    // Each worker's wait on the pipe, by its own stack.
    let off = read_profile(out.join("offcpu.pb.gz"));
    let oi = value_index(&off, "off-cpu");
    for pid in &workers {
        let waited: i64 = off
            .samples
            .iter()
            .filter(|s| sample_label(s, "pid") == Some(pid.to_string()))
            .filter(|s| stack_has(&off, s, "worker_wait"))
            .map(|s| s.values[oi])
            .sum();
        assert!(
            (0.2e9..=1.2e9).contains(&(waited as f64)),
            "worker {pid} waited {:.3} s in worker_wait (about 1 s less its burn expected)",
            waited as f64 / 1e9
        );
    }

    // Every worker's time adds up, from its fork to its exit.
    let threads = read_threads(out.join("threads.json"));
    for pid in &workers {
        let t = threads
            .tid(*pid)
            .unwrap_or_else(|| panic!("worker {pid} missing from threads.json: {}", threads.text));
        assert!(t.created && t.exited, "{t:?}");
        assert!(t.invariant_error().is_none(), "{:?}", t.invariant_error());
    }
    threads.assert_invariant();
}

/// Without --children the same workload's workers are not recorded: only the parent's pid.
#[test]
fn without_children_forked_workers_are_left_out() {
    require_root();
    let w = Workload::spawn("forking_workers", &["-1", "2", "0.2", "0.5"]);
    let tmp = TempDir::new("stallscope-nochildren");
    let out = tmp.path().join("out");
    let (agent, stderr) = spawn_attach(
        &[
            "--pid",
            &w.pid_str(),
            "--profile",
            "cpu",
            "--duration",
            "2s",
        ],
        &out,
        std::process::Stdio::null(),
    );
    // SAFETY: signal to our own child.
    unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
    w.wait_for_line("workers done", Duration::from_secs(10));
    let status = agent.wait_with_output().expect("the agent").status;
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "{stderr}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(v["group"].is_null(), "{}", v["group"]);
    assert_eq!(v["counters"]["processes_followed"], 0);
    let cpu = read_profile(out.join("cpu.pb.gz"));
    assert!(
        cpu.samples
            .iter()
            .all(|s| !stack_has(&cpu, s, "worker_burn")),
        "a worker's CPU in a profile of its parent alone"
    );
}

/// `agent dump --pid N --children`: every process of the tree, one dump after the other, each
/// worker blocked reading the pipe in worker_wait; `--format json` has them under `processes`.
#[test]
fn a_dump_of_a_process_tree_has_every_process() {
    require_root();
    let w = Workload::spawn("forking_workers", &["-1", "2", "0.05", "30"]);
    // SAFETY: signal to our own child.
    unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while forked_pids(&w).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            w.stdout_lines()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers = forked_pids(&w);
    // Past their 50 ms burn, into the pipe read.
    std::thread::sleep(Duration::from_millis(500));
    let pid = w.pid_str();
    let out = std::process::Command::new(agent_path())
        .args(["dump", "--pid", &pid, "--children"])
        .output()
        .expect("running the agent");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!(
            "group: pid {pid} and its descendants: 3 processes, 3 threads"
        )),
        "{text}"
    );
    for p in &workers {
        let at = text
            .find(&format!("thread {p} "))
            .unwrap_or_else(|| panic!("worker {p} missing:\n{text}"));
        let rest = &text[at..];
        let end = rest[1..].find("\nthread ").map_or(rest.len(), |i| i + 1);
        assert!(
            rest[..end].contains("worker_wait"),
            "worker {p} not in worker_wait:\n{}",
            &rest[..end]
        );
    }
    let out = std::process::Command::new(agent_path())
        .args(["dump", "--pid", &pid, "--children", "--format", "json"])
        .output()
        .expect("running the agent");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let pids: Vec<u64> = v["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|d| d["pid"].as_u64())
        .collect();
    let mut want: Vec<u64> = workers.iter().map(|&p| u64::from(p)).collect();
    want.push(u64::from(w.pid()));
    want.sort_unstable();
    assert_eq!(pids, want, "{}", v["group"]);
}

/// `capture` of a process tree: the bundle has a thread dump of each process at both ends of
/// the window, summary.json lists the group, and the profiles carry every process's samples
/// (the workers' pipe waits in the off-CPU profile, each labelled with its pid).
#[test]
fn a_capture_of_a_process_tree_dumps_and_profiles_every_process() {
    require_root();
    // Two workers forked at once, each blocked reading a pipe for 30 s after 0.1 s of CPU.
    let w = Workload::spawn("forking_workers", &["0", "2", "0.1", "30"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while forked_pids(&w).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let workers = forked_pids(&w);
    assert_eq!(workers.len(), 2, "{:?}", w.stdout_lines());
    std::thread::sleep(Duration::from_millis(300));
    let run = capture_pid_ok(w.pid(), "2s", &["--children"]);
    assert!(
        run.stdout.contains(&format!(
            "capture of pid {} and its descendants (3 processes",
            w.pid()
        )),
        "{}",
        run.stdout
    );
    for pid in &workers {
        for stem in ["threads-start", "threads-end"] {
            let text = std::fs::read_to_string(run.file(&format!("{stem}-{pid}.txt")))
                .unwrap_or_else(|e| panic!("{stem}-{pid}.txt: {e}"));
            assert!(text.contains("worker_wait"), "{stem}-{pid}: {text}");
        }
    }
    let v = summary_json(&run);
    let members: Vec<u64> = v["group"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no group in {v}"))
        .iter()
        .filter_map(|m| m["pid"].as_u64())
        .collect();
    assert_eq!(members.len(), 3, "{members:?}");
    let off = read_profile(run.file("offcpu.pb.gz"));
    let vi = value_index(&off, "off-cpu");
    let window = off.duration.as_nanos() as i64;
    for pid in &workers {
        let waited: i64 = off
            .samples
            .iter()
            .filter(|s| sample_label(s, "pid") == Some(pid.to_string()))
            .filter(|s| stack_has(&off, s, "worker_wait"))
            .map(|s| s.values[vi])
            .sum();
        assert!(
            waited * 100 >= window * 90 && waited <= window + 50_000_000,
            "worker {pid} was blocked all along: {waited} ns in a {window} ns window"
        );
    }
}

/// `serve`'s routes take a group: a CPU profile of `pid=N&children=1` records the workers the
/// parent forks during the window (each sample under its pid), and `threads` of the same
/// group dumps each process.
#[test]
fn serve_profiles_and_dumps_a_process_tree() {
    use stallscope_tests::serve_kit::{Serve, http_get};
    require_root();
    let w = Workload::spawn("forking_workers", &["-1", "2", "0.5", "10"]);
    let serve = Serve::start(&[], true);
    let addr = serve.addr;
    let path = format!("/debug/pprof/profile?pid={}&children=1&seconds=3", w.pid());
    let req = std::thread::spawn(move || http_get(addr, &path, None, Duration::from_secs(60)));
    // The window opens at once (the programs are loaded): fork in it.
    std::thread::sleep(Duration::from_millis(700));
    // SAFETY: signal to our own child: fork now.
    unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
    let r = req.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let workers = forked_pids(&w);
    assert_eq!(workers.len(), 2, "{:?}", w.stdout_lines());
    let p = agent::export::pprof::decode(&r.bytes).expect("pprof bytes");
    for pid in &workers {
        let burn: usize = p
            .samples
            .iter()
            .filter(|s| sample_label(s, "pid") == Some(pid.to_string()))
            .filter(|s| stack_has(&p, s, "worker_burn"))
            .count();
        assert!(
            burn > 0,
            "worker {pid}'s burn is not in the group's profile"
        );
    }
    let r = serve.get(&format!(
        "/debug/pprof/threads?pid={}&children=1&debug=2",
        w.pid()
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains(&format!(
            "group: pid {} and its descendants: 3 processes",
            w.pid()
        )),
        "{}",
        r.body
    );
    for pid in &workers {
        assert!(
            r.body.contains(&format!("process {pid}")),
            "worker {pid} missing from the group's dump:\n{}",
            r.body
        );
    }
}
