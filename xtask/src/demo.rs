//! `cargo xtask demo`: build the bundled demo workload, start it, attach the agent to it, and
//! clean up the workload whatever happens (agent failure, Ctrl-C, SIGTERM).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{SIGNAL, check, display, install_signal_handlers, target_dir, workspace_root};

/// The profiles the demo asks for (`--profile a,b`). Add `offcpu`, `block`, ... as they land.
pub const DEMO_PROFILES: &[&str] = &["cpu", "offcpu", "block", "mutex"];
const DEMO_DURATION: &str = "10s";
/// Relative to the workspace root.
const DEMO_OUT: &str = "out/demo";

/// The demo workload; SIGKILLed and reaped on drop.
struct Workload {
    child: Child,
}

impl Drop for Workload {
    fn drop(&mut self) {
        let pid = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        println!("stopped the demo workload (pid {pid})");
    }
}

fn compile_demo() -> Result<std::path::PathBuf> {
    let bin =
        stallscope_testkit::workloads::build("demo").context("compiling the demo workload")?;
    println!("ok: {} is built", bin.display());
    Ok(bin)
}

fn start_workload(bin: &Path) -> Result<(Workload, u32)> {
    let mut cmd = Command::new(bin);
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    stallscope_testkit::spawn::detached(&mut cmd);
    println!("$ {} &", display(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let workload = Workload { child };

    // Wait for "ready", then keep draining its stdout so it never blocks on a full pipe.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("ready")
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the demo workload exited before it printed \"ready\"")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if SIGNAL.load(Ordering::SeqCst) != 0 {
                    bail!("interrupted");
                }
                if Instant::now() > deadline {
                    bail!("the demo workload did not print \"ready\" within 10 s");
                }
            }
        }
    }
    println!("demo workload running: pid {pid}");
    Ok((workload, pid))
}

pub fn demo() -> Result<()> {
    println!("== demo");
    let bin = compile_demo()?;
    install_signal_handlers();
    let (workload, pid) = start_workload(&bin)?;

    let agent = target_dir().join("release/agent");
    let out = workspace_root().join(DEMO_OUT);
    let mut cmd = Command::new(&agent);
    cmd.current_dir(workspace_root())
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--duration",
            DEMO_DURATION,
        ])
        .args(["--profile", &DEMO_PROFILES.join(",")])
        .arg("-o")
        .arg(DEMO_OUT);
    // The agent ends its capture early and writes what it has on SIGINT.
    cmd.process_group(0);
    stallscope_testkit::spawn::die_with_parent(&mut cmd, libc::SIGINT);
    let shown = display(&cmd);
    println!("$ {shown}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", agent.display()))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            println!("(signal {sig}: asking the agent to stop and write what it has)");
            // SAFETY: kill with a pid we spawned and have not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(workload);
    check(status, &shown)?;

    println!();
    println!("files in {}:", out.display());
    let mut entries: Vec<_> = std::fs::read_dir(&out)
        .with_context(|| format!("the agent exited 0 but {} is missing", out.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let len = e.metadata().map(|m| m.len()).unwrap_or(0);
        println!("  {}  ({len} bytes)", e.path().display());
    }
    println!();
    println!("open them with:");
    for p in DEMO_PROFILES {
        println!("  go tool pprof -top {DEMO_OUT}/{p}.pb.gz");
    }
    println!("  go tool pprof -list 'crunch_' {DEMO_OUT}/cpu.pb.gz");
    Ok(())
}
