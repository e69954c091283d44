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
        text.contains("available: cpu, offcpu, block, mutex"),
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
