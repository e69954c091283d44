//! Harness for Stallscope's root integration tests: builds the workload programs in
//! `tests/workloads/`, starts them, runs the real agent binary against them, and reads what it
//! wrote.
//!
//! The tests in `tests/tests/*.rs` need root (they load BPF programs): run them with
//! `cargo xtask test`, which builds `target/release/agent` and runs them one at a time. Run by
//! hand as root: `STALLSCOPE_AGENT=$PWD/target/release/agent cargo test --release -p
//! stallscope-tests -- --test-threads=1`. `STALLSCOPE_KEEP=1` keeps the agent's output
//! directories for a look afterwards.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use agent::model::{Line, Profile};

pub mod serve_kit;

use stallscope_testkit::spawn::die_with_parent;
pub use stallscope_testkit::workloads::{C_FLAGS, build_c, sources as workloads_src};
pub use stallscope_testkit::{http, node, workspace_root};

/// Panics unless running as root: root tests must fail, not silently pass, without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and must run as root (euid is {euid}); run `cargo xtask test` as root"
    );
}

// ---------------------------------------------------------------------------------------------
// Building workloads
// ---------------------------------------------------------------------------------------------

/// The path of a built workload, building it on first use (once per test binary).
pub fn workload_path(name: &str) -> PathBuf {
    type Built = Mutex<HashMap<String, Result<PathBuf, String>>>;
    static BUILT: OnceLock<Built> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    built
        .entry(name.to_string())
        .or_insert_with(|| stallscope_testkit::workloads::build(name).map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Running workloads
// ---------------------------------------------------------------------------------------------

/// Lines a child printed, with the time each arrived.
#[derive(Default)]
struct Lines {
    lines: Mutex<(Vec<(Instant, String)>, bool)>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().0.push((Instant::now(), line));
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lines.lock().unwrap().1 = true;
        self.changed.notify_all();
    }

    /// Waits until a line containing `needle` arrives; returns when it arrived.
    fn wait_for(&self, needle: &str, timeout: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.lock().unwrap();
        loop {
            if let Some((t, _)) = g.0.iter().find(|(_, l)| l.contains(needle)) {
                return Ok(*t);
            }
            if g.1 {
                return Err("its stdout closed (did it exit?)".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("timed out after {timeout:?}"));
            }
            g = self.changed.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    fn all(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .0
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A running workload program. It is reaped as soon as it exits (as a real parent would, so the
/// agent never sees a lingering zombie), and SIGKILLed and reaped on drop.
pub struct Workload {
    name: String,
    pid: u32,
    /// Signals go through a pidfd: never to a recycled pid after the process was reaped.
    pidfd: Option<OwnedFd>,
    stdout: Arc<Lines>,
    exit: Arc<Mutex<Option<Exit>>>,
    reaper: Option<JoinHandle<()>>,
    started: Instant,
}

#[derive(Clone, Copy)]
struct Exit {
    at: Instant,
    status: ExitStatus,
    /// User + system CPU time of the whole process (all its threads), from wait4's rusage.
    cpu: Duration,
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Waits for `pid` with wait4 (which, unlike `Child::wait`, gives its CPU usage).
fn reap(pid: u32) -> Option<Exit> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: plain syscall on our own child, with valid out pointers.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
    Some(Exit {
        at: Instant::now(),
        status: ExitStatus::from_raw(status),
        cpu: timeval(ru.ru_utime) + timeval(ru.ru_stime),
    })
}

impl Workload {
    /// Builds (if needed) and starts `tests/workloads/<name>`, and waits up to 10 s for it to
    /// print its "ready" line.
    pub fn spawn(name: &str, args: &[&str]) -> Workload {
        let path = workload_path(name);
        let mut cmd = Command::new(&path);
        cmd.args(args);
        Workload::spawn_command(name, cmd, Some("ready"), Duration::from_secs(10))
    }

    /// Starts any program (a server, an interpreter, a load generator) as a workload called
    /// `name`: stdin closed, stdout piped and kept line by line (stderr as `cmd` says), SIGKILLed
    /// when the test thread dies and SIGKILLed and reaped on drop. With `ready`, waits up to
    /// `timeout` for a line of its stdout containing it.
    pub fn spawn_command(
        name: &str,
        mut cmd: Command,
        ready: Option<&str>,
        timeout: Duration,
    ) -> Workload {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let started = Instant::now();
        let mut child: Child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", Path::new(cmd.get_program()).display()));
        let pid = child.id();
        let pidfd = pidfd_open(pid);
        let stdout = Arc::new(Lines::default());
        let pipe = child.stdout.take().expect("piped stdout");
        let lines = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines.close();
        });
        // The reaper thread waits for it instead of `child`: dropping a `Child` neither kills
        // nor waits.
        drop(child);
        let exit = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&exit);
        let reaper = std::thread::spawn(move || {
            *slot.lock().unwrap() = reap(pid);
        });
        let w = Workload {
            name: name.to_string(),
            pid,
            pidfd,
            stdout,
            exit,
            reaper: Some(reaper),
            started,
        };
        if let Some(ready) = ready
            && let Err(e) = w.stdout.wait_for(ready, timeout)
        {
            panic!(
                "workload {name} (pid {pid}) did not print {ready:?}: {e}; it printed {:?}, exit status {:?}",
                w.stdout.all(),
                w.exit_status()
            );
        }
        w
    }

    /// Every line of its stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.all()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn pid_str(&self) -> String {
        self.pid.to_string()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Exit status, once it has exited (it is reaped right away).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.lock().unwrap().map(|e| e.status)
    }

    /// When it exited, if it has.
    pub fn exited_at(&self) -> Option<Instant> {
        self.exit.lock().unwrap().map(|e| e.at)
    }

    /// CPU time (user + system, all threads) the process has used so far, or in all once it
    /// exited. Read it before and after a capture: the difference is the CPU time the profiler
    /// could have sampled, whatever else the machine was doing.
    pub fn cpu_time(&self) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(e) = *self.exit.lock().unwrap() {
                return e.cpu;
            }
            if let Some(t) = proc_cpu_time(self.pid) {
                return t;
            }
            // Exited between the two looks: the reaper is about to record it.
            assert!(
                Instant::now() < deadline,
                "no CPU time for workload {} (pid {})",
                self.name,
                self.pid
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a line of its stdout containing `needle`; returns when it was printed.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Instant {
        self.stdout.wait_for(needle, timeout).unwrap_or_else(|e| {
            panic!(
                "workload {} never printed {needle:?}: {e}; it printed {:?}",
                self.name,
                self.stdout.all()
            )
        })
    }

    /// Waits for it to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exit_status() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "workload {} (pid {}) still running after {timeout:?}",
                self.name,
                self.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&self) {
        match &self.pidfd {
            // SAFETY: plain syscall on an fd we own; ESRCH after exit is harmless.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            None => {
                if self.exit_status().is_none() {
                    // SAFETY: plain syscall; the process is not reaped yet.
                    unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        }
    }
}

/// utime + stime of a live process (all threads) from /proc/PID/stat; `None` once it is gone
/// or a zombie.
fn proc_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill();
        if let Some(r) = self.reaper.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running the agent
// ---------------------------------------------------------------------------------------------

/// The agent binary: `$STALLSCOPE_AGENT`, else `<workspace>/target/release/agent`.
pub fn agent_path() -> PathBuf {
    let p = std::env::var_os("STALLSCOPE_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/agent"));
    assert!(
        p.is_file(),
        "agent binary not found at {}: run the root tests with `cargo xtask test` (it builds \
         the agent and sets STALLSCOPE_AGENT), or build it with `cargo xtask build`",
        p.display()
    );
    p
}

/// A directory under the system temp dir, removed on drop unless `STALLSCOPE_KEEP=1`.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var("STALLSCOPE_KEEP").is_ok_and(|v| v == "1") {
            eprintln!("STALLSCOPE_KEEP=1: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What one run of the agent did.
pub struct AgentRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The `-o` directory the agent was given (it did not exist before: the agent creates it).
    pub out_dir: PathBuf,
    /// Wall time from starting the agent to its exit.
    pub elapsed: Duration,
    pub args: Vec<String>,
    _tmp: TempDir,
}

impl AgentRun {
    /// stdout and stderr together, for looking for a message wherever the agent printed it.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// A file in the output directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.out_dir.join(name)
    }

    /// Panics, showing what the agent printed, unless it exited 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "agent {:?} failed: {}\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The run's `summary.json` (docs/summary-schema.md), which `attach` and `capture` write.
pub fn summary_json(run: &AgentRun) -> serde_json::Value {
    stallscope_testkit::summary::read(&run.out_dir)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", run.output()))
}

/// One counter of the run's `summary.json` by its name (`stallscope_common::Counter`).
pub fn counter(run: &AgentRun, name: &str) -> u64 {
    let v = summary_json(run);
    stallscope_testkit::summary::counter(&v, name)
        .unwrap_or_else(|| panic!("no counter {name:?} in summary.json: {}", v["counters"]))
}

/// `agent attach --pid <w> --duration <duration> --profile <profiles> <extra...>`, asserting
/// that it succeeded.
pub fn attach_ok(w: &Workload, duration: &str, profiles: &str, extra: &[&str]) -> AgentRun {
    attach_pid_ok(w.pid(), duration, profiles, extra)
}

/// `attach --profile <profiles> --duration <duration> -o out` started in the background,
/// returned once it said it attached, with its stderr (read to the end by a thread, so the
/// agent never blocks on a full pipe).
pub fn attach_in_background(
    w: &Workload,
    out: &Path,
    profiles: &str,
    duration: &str,
) -> (Child, std::thread::JoinHandle<String>) {
    spawn_attach(
        &[
            "--pid",
            &w.pid_str(),
            "--profile",
            profiles,
            "--duration",
            duration,
        ],
        out,
        Stdio::null(),
    )
}

/// `agent attach <args> -o out` started in the background, returned once it said it attached,
/// with its stderr (read to the end by a thread, so the agent never blocks on a full pipe).
/// Its summary goes to `stdout`.
pub fn spawn_attach(
    args: &[&str],
    out: &Path,
    stdout: impl Into<Stdio>,
) -> (Child, std::thread::JoinHandle<String>) {
    let mut agent = Command::new(agent_path())
        .arg("attach")
        .args(args)
        .arg("-o")
        .arg(out)
        // "attached to ..." is an info line.
        .env("STALLSCOPE_LOG", "info")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the agent");
    let mut stderr = BufReader::new(agent.stderr.take().expect("stderr"));
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("attached to") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("attached to"),
        "the agent never attached:\n{seen}"
    );
    let rest = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut seen);
        seen
    });
    (agent, rest)
}

/// Time this machine's CPUs spent in interrupts or stolen by the hypervisor since boot, all
/// CPUs summed (`irq`, `softirq` and `steal` of /proc/stat's `cpu` line). A thread that is
/// current meanwhile is on CPU by the wall clock (the CPU sampler's timer) but that time is not
/// in its own CPU time.
pub fn machine_uncharged() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        fields.len() >= 8,
        "no steal column in /proc/stat: {stat:.200}"
    );
    let ticks = fields[5] + fields[6] + fields[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// `agent attach` for any process (one the test did not start itself, such as a PostgreSQL
/// backend), asserting that it succeeded.
pub fn attach_pid_ok(pid: u32, duration: &str, profiles: &str, extra: &[&str]) -> AgentRun {
    let pid = pid.to_string();
    let mut args = vec![
        "attach",
        "--pid",
        pid.as_str(),
        "--duration",
        duration,
        "--profile",
        profiles,
    ];
    args.extend_from_slice(extra);
    let run = run_agent(&args);
    run.assert_success();
    run
}

/// `agent capture --pid <pid> --duration <duration> <extra...>`, asserting that it succeeded.
pub fn capture_pid_ok(pid: u32, duration: &str, extra: &[&str]) -> AgentRun {
    let pid = pid.to_string();
    let mut args = vec!["capture", "--pid", pid.as_str(), "--duration", duration];
    args.extend_from_slice(extra);
    let run = run_agent(&args);
    run.assert_success();
    run
}

/// Runs the agent with `args` plus `-o <fresh temp dir>`, with a generous timeout (two minutes).
pub fn run_agent(args: &[&str]) -> AgentRun {
    run_agent_with_timeout(args, Duration::from_secs(120))
}

/// Runs the agent with `args` plus `-o <fresh temp dir>`. After `timeout` it gets SIGINT (it
/// should write what it has and exit), 10 s later SIGKILL, and the test fails.
pub fn run_agent_with_timeout(args: &[&str], timeout: Duration) -> AgentRun {
    let agent = agent_path();
    let tmp = TempDir::new("stallscope-test");
    let out_dir = tmp.path().join("out");
    let mut all_args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all_args.push("-o".into());
    all_args.push(out_dir.to_string_lossy().into_owned());

    let mut cmd = Command::new(&agent);
    cmd.args(&all_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd, libc::SIGKILL);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", agent.display()));
    let out = read_all(child.stdout.take().expect("piped"));
    let err = read_all(child.stderr.take().expect("piped"));

    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for the agent") {
            break s;
        }
        let waited = start.elapsed();
        if waited > timeout + Duration::from_secs(10) {
            let _ = child.kill();
            break child.wait().expect("waiting for the agent");
        }
        if waited > timeout && !timed_out {
            timed_out = true;
            // SAFETY: plain syscall to our own, not yet reaped, child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    eprintln!(
        "$ {} {}\n({status} after {elapsed:.2?})\n--- agent stdout\n{stdout}\n--- agent stderr\n{stderr}",
        agent.display(),
        all_args.join(" ")
    );
    assert!(
        !timed_out,
        "agent {all_args:?} did not finish within {timeout:?} (stopped with SIGINT/SIGKILL)"
    );
    AgentRun {
        status,
        stdout,
        stderr,
        out_dir,
        elapsed,
        args: all_args,
        _tmp: tmp,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading profiles
// ---------------------------------------------------------------------------------------------

/// Decodes a gzipped pprof file with the agent's own decoder.
pub fn read_profile(path: impl AsRef<Path>) -> Profile {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(!bytes.is_empty(), "{} is empty", path.display());
    agent::export::pprof::decode(&bytes)
        .unwrap_or_else(|e| panic!("decoding {}: {e}", path.display()))
}

/// The index of a sample type (`samples`, `cpu`, ...), panicking with the types present.
pub fn value_index(p: &Profile, value_type: &str) -> usize {
    p.value_index(value_type).unwrap_or_else(|| {
        panic!(
            "profile has no {value_type:?} sample type; it has {:?}",
            p.sample_types
        )
    })
}

/// Sum of one sample type over all samples.
pub fn total(p: &Profile, value_type: &str) -> i64 {
    p.total(value_index(p, value_type))
}

/// The name of the innermost function of a sample: the innermost line of its first (leaf)
/// location, or the address when that location has no symbol.
pub fn leaf_function(p: &Profile, s: &agent::model::Sample) -> String {
    match s.locations.first().map(|&l| &p.locations[l]) {
        Some(loc) => match loc.lines.first() {
            Some(line) => line.function.clone(),
            None => format!("{:#x}", loc.address),
        },
        None => "<empty stack>".to_string(),
    }
}

/// Flat value per function: each sample's value goes to its leaf function.
pub fn flat_by_function(p: &Profile, value_type: &str) -> HashMap<String, i64> {
    let i = value_index(p, value_type);
    let mut out = HashMap::new();
    for s in &p.samples {
        *out.entry(leaf_function(p, s)).or_insert(0) += s.values[i];
    }
    out
}

/// Cumulative value per function: each sample's value goes once to every function on its stack.
pub fn cum_by_function(p: &Profile, value_type: &str) -> HashMap<String, i64> {
    let i = value_index(p, value_type);
    let mut out = HashMap::new();
    for s in &p.samples {
        let names: HashSet<&str> = p
            .frames_root_first(s)
            .into_iter()
            .map(|l| l.function.as_str())
            .collect();
        for n in names {
            *out.entry(n.to_string()).or_insert(0) += s.values[i];
        }
    }
    out
}

/// Functions by flat value, largest first (ties by name).
pub fn top_flat(p: &Profile, value_type: &str) -> Vec<(String, i64)> {
    let mut v: Vec<_> = flat_by_function(p, value_type).into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Every line (of every location) that names `function`.
pub fn lines_of<'a>(p: &'a Profile, function: &str) -> Vec<&'a Line> {
    p.locations
        .iter()
        .flat_map(|l| l.lines.iter())
        .filter(|l| l.function == function)
        .collect()
}

/// The line numbers of `function`'s source lines in profile `p` that point into a file ending
/// with `file_suffix`. Panics, listing what the profile has, when there are none.
pub fn source_lines(p: &Profile, function: &str, file_suffix: &str) -> Vec<u32> {
    let lines = lines_of(p, function);
    let good: Vec<u32> = lines
        .iter()
        .filter(|l| l.file.as_deref().is_some_and(|f| f.ends_with(file_suffix)))
        .filter_map(|l| l.line)
        .filter(|&n| n > 0)
        .collect();
    assert!(
        !good.is_empty(),
        "{function} has no file:line in {file_suffix}; its lines in the profile: {lines:?}"
    );
    good
}

/// The lines of `file` from the first one containing `signature` to the next line that is a
/// lone `}` (the end of a C or Go function written in the usual style), 1-based, inclusive.
pub fn function_span(file: &Path, signature: &str) -> std::ops::RangeInclusive<u32> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains(signature))
        .unwrap_or_else(|| panic!("{signature:?} not found in {}", file.display()));
    let end = lines[start..]
        .iter()
        .position(|l| l.trim_end() == "}")
        .map(|i| start + i)
        .unwrap_or_else(|| panic!("no closing brace after {signature:?} in {}", file.display()));
    (start as u32 + 1)..=(end as u32 + 1)
}

/// Folded stacks (`a;b;c N`) summed by leaf frame. Annotations after the name (` [k]`, `_[k]`,
/// ` (inline)`, ...) are cut off.
pub fn folded_by_leaf(path: impl AsRef<Path>) -> HashMap<String, u64> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (stack, count) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("{}:{}: not `stack count`: {line:?}", path.display(), n + 1));
        let count: u64 = count.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{}:{}: count is not a number: {line:?}",
                path.display(),
                n + 1
            )
        });
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        let leaf = leaf
            .split([' ', '('])
            .next()
            .unwrap_or(leaf)
            .trim_end_matches("_[k]")
            .trim_end_matches("_[i]")
            .to_string();
        *out.entry(leaf).or_insert(0) += count;
    }
    out
}

/// The value of a sample's label `key` (string labels as they are, numeric ones in decimal),
/// e.g. `thread`, `tid`, `wait_class`, `wait_object`, `lock_name`.
pub fn sample_label(s: &agent::model::Sample, key: &str) -> Option<String> {
    s.labels.iter().find_map(|l| match l {
        agent::model::Label::Str(k, v) if k == key => Some(v.clone()),
        agent::model::Label::Num(k, v, _) if k == key => Some(v.to_string()),
        _ => None,
    })
}

/// Whether any frame (inlined ones included) of the sample's stack is `function`.
pub fn stack_has(p: &Profile, s: &agent::model::Sample, function: &str) -> bool {
    p.frames_root_first(s)
        .iter()
        .any(|l| l.function == function)
}

/// The sample's stack as `root;...;leaf`, for messages.
pub fn stack_text(p: &Profile, s: &agent::model::Sample) -> String {
    p.frames_root_first(s)
        .iter()
        .map(|l| l.function.as_str())
        .collect::<Vec<_>>()
        .join(";")
}

/// Sum of `value_type` per `tid` label.
pub fn total_by_tid(p: &Profile, value_type: &str) -> HashMap<u32, i64> {
    let vi = value_index(p, value_type);
    let mut out = HashMap::new();
    for s in &p.samples {
        let tid = sample_label(s, "tid")
            .and_then(|t| t.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("sample without a numeric tid label: {:?}", s.labels));
        *out.entry(tid).or_insert(0) += s.values[vi];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Per-thread accounting (threads.json)
// ---------------------------------------------------------------------------------------------

/// One thread of `threads.json` (agent/src/profiles/accounting.rs `ThreadAccount`).
#[derive(Debug, Clone)]
pub struct ThreadAcct {
    pub tid: u32,
    pub name: String,
    pub alive_ns: i64,
    pub oncpu_ns: i64,
    pub cpu_ns: i64,
    pub offcpu_ns: i64,
    pub offcpu_by_class: std::collections::BTreeMap<String, i64>,
    pub unaccounted_ns: i64,
    pub seeded: bool,
    pub created: bool,
    pub exited: bool,
    pub incomplete: bool,
}

impl ThreadAcct {
    /// Off-CPU time in one wait class, ns (0 when absent).
    pub fn class_ns(&self, class: &str) -> i64 {
        self.offcpu_by_class.get(class).copied().unwrap_or(0)
    }

    /// What is wrong with `oncpu + offcpu = alive` for this thread, if anything: they must
    /// agree within 2% of `alive` plus 5 ms.
    pub fn invariant_error(&self) -> Option<String> {
        let sum = self.oncpu_ns + self.offcpu_ns;
        let diff = sum - self.alive_ns;
        let slack = self.alive_ns / 50 + 5_000_000;
        (diff.abs() > slack).then(|| {
            format!(
                "thread {} {:?}: on CPU {:.3} s + off CPU {:.3} s = {:.3} s, alive {:.3} s: {:+.1} ms \
                 ({:+.2}%), more than 2% + 5 ms (threads.json says unaccounted {:+.1} ms)",
                self.tid,
                self.name,
                self.oncpu_ns as f64 / 1e9,
                self.offcpu_ns as f64 / 1e9,
                sum as f64 / 1e9,
                self.alive_ns as f64 / 1e9,
                diff as f64 / 1e6,
                100.0 * diff as f64 / self.alive_ns.max(1) as f64,
                self.unaccounted_ns as f64 / 1e6
            )
        })
    }
}

/// `threads.json` of one window.
#[derive(Debug, Clone)]
pub struct Threads {
    pub window_ns: i64,
    pub thread_ns: i64,
    pub oncpu_ns: i64,
    pub cpu_ns: i64,
    pub offcpu_ns: i64,
    pub unaccounted_ns: i64,
    pub offcpu_recorded: bool,
    pub threads: Vec<ThreadAcct>,
    /// The file's text, for messages.
    pub text: String,
}

impl Threads {
    /// Threads called `name`.
    pub fn named(&self, name: &str) -> Vec<&ThreadAcct> {
        self.threads.iter().filter(|t| t.name == name).collect()
    }

    /// The one thread called `name`, panicking (with the file) unless there is exactly one.
    pub fn one(&self, name: &str) -> &ThreadAcct {
        let found = self.named(name);
        assert!(
            found.len() == 1,
            "want exactly one thread named {name:?} in threads.json, found {}: {}",
            found.len(),
            self.text
        );
        found[0]
    }

    /// For messages about a process with thousands of threads (whose whole file a CI log cuts
    /// off): the `n` threads whose time adds up worst, then the profile's counter comments.
    pub fn worst(&self, n: usize) -> String {
        let mut by: Vec<&ThreadAcct> = self.threads.iter().collect();
        by.sort_by_key(|t| std::cmp::Reverse(t.unaccounted_ns.unsigned_abs()));
        let mut s = format!(
            "{} threads, {:.3} thread-seconds, {:+.3} s unaccounted; the {} worst:\n",
            self.threads.len(),
            self.thread_ns as f64 / 1e9,
            self.unaccounted_ns as f64 / 1e9,
            n.min(by.len())
        );
        for t in by.iter().take(n) {
            s.push_str(&format!("  {t:?}\n"));
        }
        if let Some((_, comments)) = self.text.split_once("\n--- offcpu.pb.gz comments\n") {
            s.push_str(comments);
        }
        s
    }

    /// The thread with id `tid`.
    pub fn tid(&self, tid: u32) -> Option<&ThreadAcct> {
        self.threads.iter().find(|t| t.tid == tid)
    }

    /// Panics, listing every offender, unless every thread has `oncpu + offcpu = alive`
    /// within 2% + 5 ms.
    pub fn assert_invariant(&self) {
        let bad: Vec<String> = self
            .threads
            .iter()
            .filter_map(ThreadAcct::invariant_error)
            .collect();
        assert!(
            bad.is_empty(),
            "per-thread accounting does not add up (window {:.3} s):\n  {}\n{}",
            self.window_ns as f64 / 1e9,
            bad.join("\n  "),
            self.text
        );
    }
}

/// Reads and checks the shape of a `threads.json`.
pub fn read_threads(path: impl AsRef<Path>) -> Threads {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()));
    let int = |v: &serde_json::Value, k: &str| -> i64 {
        v[k].as_i64()
            .unwrap_or_else(|| panic!("{}: {k} is not an integer: {}", path.display(), v[k]))
    };
    let flag = |v: &serde_json::Value, k: &str| -> bool {
        v[k].as_bool()
            .unwrap_or_else(|| panic!("{}: {k} is not a boolean: {}", path.display(), v[k]))
    };
    let threads = v["threads"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no threads array", path.display()))
        .iter()
        .map(|t| ThreadAcct {
            tid: int(t, "tid") as u32,
            name: t["name"].as_str().unwrap_or_default().to_string(),
            alive_ns: int(t, "alive_ns"),
            oncpu_ns: int(t, "oncpu_ns"),
            cpu_ns: int(t, "cpu_ns"),
            offcpu_ns: int(t, "offcpu_ns"),
            offcpu_by_class: t["offcpu_by_class"]
                .as_object()
                .unwrap_or_else(|| panic!("{}: no offcpu_by_class", path.display()))
                .iter()
                .map(|(k, n)| (k.clone(), n.as_i64().unwrap_or(-1)))
                .collect(),
            unaccounted_ns: int(t, "unaccounted_ns"),
            seeded: flag(t, "seeded"),
            created: flag(t, "created"),
            exited: flag(t, "exited"),
            incomplete: flag(t, "incomplete"),
        })
        .collect();
    Threads {
        window_ns: int(&v, "window_ns"),
        thread_ns: int(&v, "thread_ns"),
        oncpu_ns: int(&v, "oncpu_ns"),
        cpu_ns: int(&v, "cpu_ns"),
        offcpu_ns: int(&v, "offcpu_ns"),
        unaccounted_ns: int(&v, "unaccounted_ns"),
        offcpu_recorded: flag(&v, "offcpu_recorded"),
        threads,
        text: with_counters(text, path),
    }
}

/// `text` with the kernel counters of the off-CPU profile beside `threads.json` (its pprof
/// comments), so that an accounting failure shows the losses next to it.
fn with_counters(mut text: String, threads_json: &Path) -> String {
    let off = threads_json.with_file_name("offcpu.pb.gz");
    let decoded = std::fs::read(&off)
        .ok()
        .and_then(|b| agent::export::pprof::decode(&b).ok());
    if let Some(p) = decoded {
        text.push_str("\n--- offcpu.pb.gz comments\n");
        for c in &p.comments {
            text.push_str(c);
            text.push('\n');
        }
    }
    text
}

/// tid → name of every thread of a live process, from /proc/PID/task/*/comm.
pub fn proc_threads(pid: u32) -> Vec<(u32, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out: Vec<(u32, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim_end().to_string()))
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Real software (servers, interpreters) the tests run
// ---------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

/// Panics with `hint` unless `path` is an executable file.
pub fn require_executable(path: impl AsRef<Path>, hint: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref();
    let ok = path
        .metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    assert!(
        ok,
        "{} is missing or not executable: {hint}",
        path.display()
    );
}

/// The real interpreter behind `python3` on PATH (`sys.executable`: pyenv's shims are shell
/// scripts), panicking with what to do when there is none.
pub fn python3_path() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            require_executable(&p, "python3 reported it as sys.executable");
            p
        }
        Ok(o) => panic!(
            "`python3 -c 'import sys; print(sys.executable)'` failed ({}): {}; the GIL test needs a \
             working CPython 3 as `python3` on PATH",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "python3 not found ({e}): the GIL test needs CPython 3 as `python3` on PATH (with \
             symbols, e.g. pyenv's build, for take_gil in the stacks)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// go tool pprof, the reference reader
// ---------------------------------------------------------------------------------------------

/// `go tool pprof -top -nodecount=30 <path>`, asserting that it succeeds.
pub fn go_pprof_top(path: impl AsRef<Path>) -> String {
    go_pprof(&["-top", "-nodecount=30"], path)
}

/// `go tool pprof <args> <path>`, asserting that it succeeds and returning its stdout.
pub fn go_pprof(args: &[&str], path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let out = stallscope_testkit::workloads::go()
        .unwrap_or_else(|e| panic!("{e:#}"))
        .args(["tool", "pprof"])
        .args(args)
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} {} failed ({}):\n{stdout}\n{stderr}",
        path.display(),
        out.status
    );
    eprintln!(
        "$ go tool pprof {} {}\n{stdout}{stderr}",
        args.join(" "),
        path.display()
    );
    stdout
}

/// One data row of `go tool pprof -top`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    pub flat: String,
    pub flat_pct: f64,
    pub cum_pct: f64,
    /// The function name (with pprof's own suffixes such as ` (inline)` left on).
    pub name: String,
}

/// Parses the rows under the `flat  flat%   sum%        cum   cum%` header of `-top` output.
pub fn parse_pprof_top(output: &str) -> Vec<TopRow> {
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap_or(f64::NAN);
    output
        .lines()
        .skip_while(|l| !(l.contains("flat%") && l.contains("cum%")))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| TopRow {
                flat: f[0].to_string(),
                flat_pct: pct(f[1]),
                cum_pct: pct(f[4]),
                name: f[5..].join(" "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent::model::{Location, ProfileKind, Sample, ValueType};

    fn line(f: &str) -> Line {
        Line {
            function: f.into(),
            system_name: None,
            file: Some(format!("/src/{f}.c")),
            line: Some(10),
        }
    }

    fn loc(lines: &[&str]) -> Location {
        Location {
            address: 0x1000,
            mapping: None,
            lines: lines.iter().map(|f| line(f)).collect(),
            kernel: false,
        }
    }

    /// Locations: 0 = leaf `inlined` inside `a`, 1 = `a`, 2 = `main`; samples:
    /// [0, 2] (inlined-in-a <- main) x3, [1, 1, 2] (recursive a <- main) x2, [2] x1.
    fn profile() -> Profile {
        let s = |locations: Vec<usize>, v: i64| Sample {
            locations,
            values: vec![v, v * 100],
            labels: vec![],
        };
        Profile {
            kind: ProfileKind::Cpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            default_sample_type: None,
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 100,
            start: UNIX_EPOCH,
            duration: Duration::from_secs(1),
            samples: vec![s(vec![0, 2], 3), s(vec![1, 1, 2], 2), s(vec![2], 1)],
            locations: vec![loc(&["inlined", "a"]), loc(&["a"]), loc(&["main"])],
            mappings: vec![],
            comments: vec![],
        }
    }

    #[test]
    fn flat_goes_to_innermost_line_of_leaf_location() {
        let p = profile();
        let flat = flat_by_function(&p, "cpu");
        assert_eq!(flat.get("inlined"), Some(&300));
        assert_eq!(flat.get("a"), Some(&200));
        assert_eq!(flat.get("main"), Some(&100));
        assert_eq!(flat.values().sum::<i64>(), total(&p, "cpu"));
        assert_eq!(top_flat(&p, "samples")[0], ("inlined".to_string(), 3));
    }

    #[test]
    fn cum_counts_each_function_once_per_sample() {
        let p = profile();
        let cum = cum_by_function(&p, "samples");
        assert_eq!(cum.get("main"), Some(&6));
        assert_eq!(cum.get("a"), Some(&5), "recursion must not count twice");
        assert_eq!(cum.get("inlined"), Some(&3));
    }

    #[test]
    #[should_panic(expected = "no \"delay\" sample type")]
    fn unknown_value_type_panics() {
        flat_by_function(&profile(), "delay");
    }

    #[test]
    fn pprof_top_rows() {
        let out = "File: gohot\nType: cpu\nDuration: 5s, Total samples = 4.95s (99.00%)\n\
                   Showing nodes accounting for 4.95s, 100% of 4.95s total\n      \
                   flat  flat%   sum%        cum   cum%\n     \
                   4.90s 98.99% 98.99%      4.90s 98.99%  main.hotLoop\n     \
                   0.05s  1.01%   100%      4.95s   100%  main.main (inline)\n";
        let rows = parse_pprof_top(out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "main.hotLoop");
        assert_eq!(rows[0].flat, "4.90s");
        assert!((rows[0].flat_pct - 98.99).abs() < 1e-9);
        assert_eq!(rows[1].name, "main.main (inline)");
        assert!((rows[1].cum_pct - 100.0).abs() < 1e-9);
    }

    #[test]
    fn folded_leaves() {
        let tmp = TempDir::new("stallscope-folded");
        let f = tmp.path().join("cpu.folded");
        std::fs::write(
            &f,
            "main;hot_a 30\nmain;hot_b 10\nmain;hot_a 5\nmain;hot_b;do_syscall_64_[k] 2\n",
        )
        .unwrap();
        let by_leaf = folded_by_leaf(&f);
        assert_eq!(by_leaf.get("hot_a"), Some(&35));
        assert_eq!(by_leaf.get("hot_b"), Some(&10));
        assert_eq!(by_leaf.get("do_syscall_64"), Some(&2));
    }

    #[test]
    fn span_of_a_c_function() {
        let span = function_span(&workloads_src().join("cpu_split.c"), "void hot_a(void)");
        assert!(span.end() - span.start() >= 2, "{span:?}");
    }

    #[test]
    fn workload_lifecycle_without_root() {
        // Needs gcc, not root: builds, starts, waits for "ready", kills and reaps.
        let w = Workload::spawn("exit_early", &["0.2"]);
        assert!(w.pid() > 0);
        let status = w.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "{status}");
        let cpu = w.cpu_time();
        assert!(
            // At most its 0.2 s of wall time (plus start-up); at least some, even on a busy machine.
            cpu >= Duration::from_millis(10) && cpu <= Duration::from_millis(400),
            "exit_early 0.2 burned {cpu:?} of CPU"
        );
        let w = Workload::spawn("cpu_split", &[]);
        let pid = w.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let before = w.cpu_time();
        std::thread::sleep(Duration::from_millis(300));
        let used = w.cpu_time() - before;
        assert!(
            used >= Duration::from_millis(100),
            "cpu_split used {used:?} in 300 ms"
        );
        drop(w);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "workload still there after drop"
        );
    }
}
