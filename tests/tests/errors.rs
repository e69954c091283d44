//! Errors a user can act on: exit codes (0 ok, 1 failure, 2 usage) and messages that say what
//! to do next.

use std::process::Command;

use stallscope_tests::*;

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(agent_path())
        .args(args)
        .output()
        .expect("running the agent");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn usage_errors_exit_2() {
    let (code, text) = agent(&["attach"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--pid"), "{text}");
    let (code, text) = agent(&["attach", "--pid", "1", "--profile", "gpu"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("possible values: cpu, offcpu, block, mutex"),
        "{text}"
    );
    let (code, text) = agent(&["attach", "--pid", "1", "--duration", "soon"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("use e.g. 10s"), "{text}");
    let (code, _) = agent(&["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn no_such_process_says_so() {
    require_root();
    // PIDs above pid_max never exist.
    let (code, text) = agent(&["attach", "--pid", "99999999", "--duration", "1s"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no process with PID 99999999"), "{text}");
}

#[test]
fn a_thread_id_is_redirected_to_its_process() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let task_dir = format!("/proc/{}/task", w.pid());
    let tid = std::fs::read_dir(&task_dir)
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|&t| t != w.pid())
        .expect("a second thread");
    let (code, text) = agent(&["attach", "--pid", &tid.to_string(), "--duration", "1s"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("--pid {}", w.pid())), "{text}");
}

#[test]
fn without_privileges_it_says_to_use_sudo() {
    require_root();
    // setpriv (util-linux) drops to nobody with no capabilities.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(agent_path())
        .args(["attach", "--pid", "1", "--duration", "1s", "-o", "/tmp"])
        .output()
        .expect("running setpriv");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("run it with sudo"), "{text}");
    assert!(text.contains("CAP_BPF"), "{text}");
}

/// A zombie (exited, not reaped) is not "no such process": the message says it is a zombie
/// and names its parent; the process whose main thread exited while others run is profiled.
#[test]
fn zombies_are_called_zombies_and_a_live_process_with_a_dead_main_thread_is_profiled() {
    require_root();
    // The child exits at once; its parent sleeps without reaping it.
    let mut parent = Command::new("python3")
        .args([
            "-c",
            "import os, sys, time\npid = os.fork()\nif pid == 0:\n    os._exit(0)\nprint(pid, flush=True)\ntime.sleep(30)\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .expect("child pid");
    let zombie = line.trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(200));
    for cmd in [
        vec!["attach", "--pid", &zombie, "--duration", "1s"],
        vec!["dump", "--pid", &zombie],
    ] {
        let (code, text) = agent(&cmd);
        assert_eq!(code, 1, "{cmd:?}: {text}");
        assert!(text.contains("is a zombie"), "{cmd:?}: {text}");
        assert!(
            text.contains(&format!("(PID {})", parent.id())),
            "{cmd:?} names the parent: {text}"
        );
    }
    let _ = parent.kill();
    let _ = parent.wait();

    let w = Workload::spawn("dump_zombie_main", &[]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let run = attach_ok(&w, "1s", "offcpu", &[]);
    let threads = read_threads(run.file("threads.json"));
    let server = threads.one("server");
    assert!(
        server.offcpu_ns > 500_000_000,
        "the live thread's waits are in the window: {}",
        threads.text
    );
}

/// A kernel thread has no user space: a usage error that says so, not an empty profile.
#[test]
fn a_kernel_thread_is_refused_with_the_reason() {
    require_root();
    let kthread = (2..200u32)
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == "Kthread:\t1"))
        })
        .expect("a kernel thread among the first PIDs");
    let (code, text) = agent(&["attach", "--pid", &kthread.to_string(), "--duration", "1s"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("is a kernel thread"), "{text}");
}

/// An output directory on /proc: the reason is the pseudo-filesystem, not "No such file".
#[test]
fn output_on_proc_names_the_pseudo_filesystem() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    for dir in ["/proc", "/proc/stallscope-out"] {
        let (code, text) = agent(&[
            "attach",
            "--pid",
            &w.pid_str(),
            "--duration",
            "1s",
            "-o",
            dir,
        ]);
        assert_eq!(code, 1, "{dir}: {text}");
        assert!(
            text.contains("proc, a kernel pseudo-filesystem") && text.contains("choose another"),
            "{dir}: {text}"
        );
    }
}

/// `agent dump --pid N | head -0`: the reader is gone before the dump is printed. The agent
/// ends quietly with exit 0 (no panic, no error line), as a writer into `head` should.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let mut child = Command::new(agent_path())
        .args(["dump", "--pid", &w.pid_str()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the agent");
    // Closed before the agent has loaded its iterator, let alone written the dump.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("waiting for the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
}
