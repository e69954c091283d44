//! Faults an agent left running on a node must survive without hurting its target: root tests.

use std::process::Command;
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
    let (mut agent, _stderr) =
        attach_in_background(&w, out.path(), "cpu,offcpu,block,mutex", "60s");
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

/// With every profile on, the agent runs programs on the scheduler's BTF tracepoints and the
/// CPU sampler only: no syscall tracepoint, raw or per-syscall. Enabling even one sends every
/// syscall of every process on the machine through the kernel's tracing slow path (+70 ns a
/// call measured here, BENCHMARKS.md), which the futex hooks of an earlier design cost.
#[test]
fn every_profile_hooks_the_scheduler_not_the_syscalls() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let out = TempDir::new("stallscope-hooks");
    let (mut agent, _stderr) =
        attach_in_background(&w, out.path(), "cpu,offcpu,block,mutex", "60s");
    std::thread::sleep(Duration::from_millis(500));
    let (progs, _links) = bpf_ids(agent.id());
    let mut seen = Vec::new();
    for id in &progs {
        let o = Command::new("bpftool")
            .args(["-j", "prog", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("bpftool JSON");
        let kind = v["type"].as_str().unwrap_or("?").to_string();
        let name = v["name"].as_str().unwrap_or("?").to_string();
        seen.push(format!("{name} ({kind})"));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let hooked: Vec<&String> = seen
        .iter()
        .filter(|p| !p.ends_with("(tracing)") && !p.ends_with("(perf_event)"))
        .collect();
    assert!(
        hooked.is_empty() && seen.iter().any(|p| p.starts_with("sched_switch")),
        "programs other than BTF tracepoints and the sampler: {hooked:?} (all: {seen:?})"
    );
    assert!(
        !seen
            .iter()
            .any(|p| p.contains("sys_e") || p.contains("futex")),
        "a syscall hook: {seen:?}"
    );
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = TempDir::new("stallscope-smallfs");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("running mount");
        assert!(
            st.success(),
            "mounting a {size} tmpfs on {}",
            dir.path().display()
        );
        SmallFs { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Files of the output directory that are not whole results: the write-then-rename
/// temporaries, or profiles that don't decode.
fn half_written(dir: &std::path::Path) -> Vec<String> {
    let mut bad = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.contains(".tmp") || name.ends_with(".partial") {
            bad.push(name.clone());
        }
        if name.ends_with(".pb.gz") {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            if agent::export::pprof::decode(&bytes).is_err() {
                bad.push(format!("{name} (does not decode)"));
            }
        }
    }
    bad
}

/// An output directory on a nearly full filesystem is refused before anything attaches, with
/// the reason; one that fills up during the window gives an error naming the full disk, and
/// leaves only whole files behind (each written then renamed).
#[test]
fn a_full_disk_is_named_and_leaves_no_half_written_file() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let tiny = SmallFs::mount("256k");
    let run = Command::new(agent_path())
        .args(["attach", "--pid", &w.pid_str(), "--duration", "1s", "-o"])
        .arg(tiny.path().join("out"))
        .env("STALLSCOPE_LOG", "info")
        .output()
        .expect("running the agent");
    assert!(!run.status.success(), "attach to a 256 KiB tmpfs succeeded");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        out.contains("KiB are free") && !out.contains("attached to"),
        "want a refusal naming the free space, before attaching:\n{out}"
    );

    let fs = SmallFs::mount("4m");
    let dir = fs.path().join("out");
    let (mut agent, stderr) = attach_in_background(&w, &dir, "cpu,offcpu", "3s");
    // Fill the filesystem while the window is open.
    let fill = fs.path().join("filler");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let status = agent.wait().expect("waiting for the agent");
    let stderr = stderr.join().unwrap_or_default();
    assert!(
        !status.success(),
        "the agent succeeded on a full disk:\n{stderr}"
    );
    assert!(
        stderr.contains("No space left on device") && stderr.contains("choose another directory"),
        "want an error naming the full disk:\n{stderr}"
    );
    let bad = half_written(&dir);
    assert!(bad.is_empty(), "half-written files left: {bad:?}");
}

/// The output directory removed while the window is open: the agent makes it again and writes
/// every result there, and says so.
#[test]
fn an_output_directory_removed_mid_window_is_made_again() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let tmp = TempDir::new("stallscope-removed");
    let dir = tmp.path().join("out");
    let (mut agent, stderr) = attach_in_background(&w, &dir, "cpu,offcpu", "3s");
    std::fs::remove_dir_all(&dir).expect("removing the output directory");
    let status = agent.wait().expect("waiting for the agent");
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "the agent failed:\n{stderr}");
    assert!(stderr.contains("created it again"), "{stderr}");
    for f in ["cpu.pb.gz", "offcpu.pb.gz", "threads.json"] {
        assert!(dir.join(f).is_file(), "{f} missing from {}", dir.display());
    }
    let bad = half_written(&dir);
    assert!(bad.is_empty(), "half-written files left: {bad:?}");
}

/// The target execs a different binary mid-window (same pid, new address space): the CPU and
/// off-CPU profiles name both binaries' functions, each at a file:line inside its own source,
/// and the window goes on to its end.
#[test]
fn a_target_that_execs_mid_window_has_both_binaries_frames() {
    require_root();
    let second = workload_path("exec_second");
    let w = Workload::spawn("exec_first", &[second.to_str().unwrap()]);
    let out = TempDir::new("stallscope-exec");
    let dir = out.path().join("out");
    let (agent, stderr) = attach_in_background(&w, &dir, "cpu,offcpu", "5s");
    std::thread::sleep(Duration::from_millis(2_000));
    // SAFETY: signal to our own child.
    unsafe { libc::kill(w.pid() as libc::pid_t, libc::SIGUSR1) };
    w.wait_for_line("second binary running", Duration::from_secs(5));
    let status = agent
        .wait_with_output()
        .expect("waiting for the agent")
        .status;
    let stderr = stderr.join().expect("the stderr reader");
    assert!(status.success(), "the agent failed: {stderr}");
    assert!(
        w.exit_status().is_none(),
        "the target died: {:?}",
        w.stdout_lines()
    );
    let run_file = |name: &str| dir.join(name);
    let cpu = read_profile(run_file("cpu.pb.gz"));
    let off = read_profile(run_file("offcpu.pb.gz"));
    let on_cpu = cum_by_function(&cpu, "samples");
    let off_cpu = cum_by_function(&off, "off-cpu");
    for (p, value, by, function, file) in [
        (
            &cpu,
            "samples",
            &on_cpu,
            "first_binary_spin",
            "exec_first.c",
        ),
        (
            &cpu,
            "samples",
            &on_cpu,
            "second_binary_spin",
            "exec_second.c",
        ),
        (
            &off,
            "off-cpu",
            &off_cpu,
            "first_binary_nap",
            "exec_first.c",
        ),
        (
            &off,
            "off-cpu",
            &off_cpu,
            "second_binary_nap",
            "exec_second.c",
        ),
    ] {
        let got = by.get(function).copied().unwrap_or(0);
        assert!(
            got > 0,
            "no {function} in the profile; its functions: {:?}",
            top_flat(p, value)
        );
        let signature = format!("void {function}(");
        let span = function_span(&workloads_src().join(file), &signature);
        let lines = source_lines(p, function, file);
        assert!(
            lines.iter().all(|n| span.contains(n)),
            "{function} has lines {lines:?}, outside its definition at {file}:{span:?}"
        );
    }
}
