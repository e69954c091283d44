//! Dump triggers of a running `agent attach`: SIGUSR1 writes a thread dump of the target into
//! the output directory, and `--dump-when COND` writes one by itself when COND holds.

use std::{process::Command, time::Duration};

use stallscope_tests::*;

fn dumps_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("dump-") && n.ends_with(".txt")
        })
        .collect();
    v.sort();
    v
}

/// SIGUSR1 to a running attach: each signal writes a dump of the target (every thread, the
/// sleeper in `sleep` under sleep_forever, the poller in `io wait`), the capture goes on and
/// completes normally.
#[test]
fn sigusr1_writes_a_thread_dump() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let out = TempDir::new("stallscope-usr1");
    let dir = out.path().join("out");
    // Requests once the window is open: signals sent while the programs load are answered
    // when it opens, but as one (a pending signal is not queued twice).
    let (agent, stderr) = attach_in_background(&w, &dir, "offcpu", "6s");
    // Three requests, 700 ms apart: each writes its own dump. Both threads sleep 100 ms at a
    // time (nanosleep, epoll_wait), so a dump can truly catch either one runnable or running
    // just after a wake (under the hypervisor's steal that lasts milliseconds, and the dump
    // takes a while to read every thread); every dump catching one so is what would be wrong.
    const DUMPS: usize = 3;
    for _ in 0..DUMPS {
        // SAFETY: signal to our own child.
        unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(700));
    }
    let status = agent
        .wait_with_output()
        .expect("waiting for the agent")
        .status;
    let stderr = stderr.join().expect("the stderr reader");
    assert!(status.success(), "agent failed: {stderr}");
    let dumps = dumps_in(&dir);
    assert_eq!(dumps.len(), DUMPS, "dumps: {dumps:?}; stderr: {stderr}");
    assert_eq!(
        stderr.matches("wrote thread dump").count(),
        DUMPS,
        "{stderr}"
    );
    let texts: Vec<String> = dumps
        .iter()
        .map(|d| std::fs::read_to_string(d).unwrap())
        .collect();
    for text in &texts {
        for needle in [
            "\"sleeper\" [",
            "sleep_forever",
            "\"poller\" [",
            "poll_forever",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
    }
    for state in ["\"sleeper\" [sleep", "\"poller\" [io wait"] {
        assert!(
            texts.iter().any(|t| t.contains(state)),
            "no dump has {state:?}:\n{}",
            texts.join("\n----\n")
        );
    }
    // The capture went on: its profile was written.
    assert!(dir.join("offcpu.pb.gz").exists());
}

/// `--dump-when 'state=io,threads>=1,for=10ms'` holds nearly all the time for offcpu_mix (its
/// poller waits in epoll_wait 100 ms at a time): a dump is written by itself, and only one in
/// the window because of the default rate limit (1 per minute). The condition is checked once
/// a second, each check a single look at the poller's state: the window gives it five looks
/// (with three, a CI run on a loaded machine once found none holding).
#[test]
fn dump_when_condition_writes_one_rate_limited_dump() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let run = run_agent(&[
        "attach",
        "--pid",
        &w.pid_str(),
        "--duration",
        "6s",
        "--profile",
        "cpu",
        "--dump-when",
        "state=io,threads>=1,for=10ms",
    ]);
    run.assert_success();
    let dumps = dumps_in(&run.out_dir);
    assert_eq!(dumps.len(), 1, "dumps: {dumps:?}\n{}", run.stderr);
    let text = std::fs::read_to_string(&dumps[0]).unwrap();
    assert!(text.contains("poll_forever"), "{text}");
}

#[test]
fn bad_conditions_and_signals_are_usage_errors() {
    let out = Command::new(agent_path())
        .args(["attach", "--pid", "1", "--dump-when", "state=nonsense"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(agent_path())
        .args(["attach", "--pid", "1", "--signal-target", "SIGNOPE"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
