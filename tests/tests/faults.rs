//! Faults an agent left running on a node must survive without hurting its target: root tests.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stallscope_tests::*;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// Whether the kernel still has the BPF program (or link) with this id: `BPF_*_GET_FD_BY_ID`
/// gives a file descriptor while it exists and ENOENT once it is freed.
fn bpf_object_exists(cmd: libc::c_long, id: u32) -> bool {
    // union bpf_attr for these commands: { u32 id; u32 next_id; u32 open_flags; }
    let attr: [u32; 3] = [id, 0, 0];
    // SAFETY: bpf(2) with a small attribute struct on the stack, its size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: a descriptor the call just opened.
        unsafe { libc::close(fd as libc::c_int) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
}

/// The BPF program and link ids the process holds descriptors of (from /proc/PID/fdinfo).
fn bpf_ids(pid: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut progs, mut links) = (Vec::new(), Vec::new());
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir)
        .expect("fdinfo")
        .filter_map(Result::ok)
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        for line in text.lines() {
            let mut kv = line.splitn(2, ':');
            let (k, v) = (kv.next().unwrap_or(""), kv.next().unwrap_or("").trim());
            match (k, v.parse::<u32>()) {
                ("prog_id", Ok(id)) => progs.push(id),
                ("link_id", Ok(id)) => links.push(id),
                _ => {}
            }
        }
    }
    progs.sort_unstable();
    progs.dedup();
    links.sort_unstable();
    links.dedup();
    (progs, links)
}

/// `agent attach` killed with SIGKILL in the middle of a window (every profile on): every
/// program and link it had loaded is gone from the kernel (attachments are held by its
/// descriptors, nothing is pinned), and the target runs on.
#[test]
fn a_killed_agent_leaves_nothing_attached_and_the_target_runs_on() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let out = TempDir::new("stallscope-kill");
    let mut agent = Command::new(agent_path())
        .args([
            "attach",
            "--pid",
            &w.pid_str(),
            "--profile",
            "cpu,offcpu,block,mutex",
            "--duration",
            "60s",
            "-o",
        ])
        .arg(out.path())
        // "attached to ..." is an info line.
        .env("STALLSCOPE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let stderr = BufReader::new(agent.stderr.take().expect("stderr"));
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.expect("agent stderr");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("attached to") {
            break;
        }
    }
    assert!(
        seen.contains("attached to"),
        "the agent never attached:\n{seen}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (progs, links) = bpf_ids(agent.id());
    assert!(
        progs.len() >= 5,
        "the agent holds too few programs to test with: {progs:?}"
    );
    agent.kill().expect("SIGKILL");
    agent.wait().expect("reaping the agent");

    let deadline = Instant::now() + Duration::from_secs(10);
    let left = || -> Vec<String> {
        let p = progs
            .iter()
            .filter(|&&id| bpf_object_exists(BPF_PROG_GET_FD_BY_ID, id))
            .map(|id| format!("program {id}"));
        let l = links
            .iter()
            .filter(|&&id| bpf_object_exists(BPF_LINK_GET_FD_BY_ID, id))
            .map(|id| format!("link {id}"));
        p.chain(l).collect()
    };
    let mut remaining = left();
    while !remaining.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        remaining = left();
    }
    assert!(
        remaining.is_empty(),
        "still in the kernel 10 s after the agent was killed: {remaining:?} (of programs \
         {progs:?}, links {links:?})"
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", w.pid())).expect("target stat");
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("?");
    assert!(
        matches!(state, "S" | "R"),
        "the target must run on after the agent's death: state {state}"
    );
}
