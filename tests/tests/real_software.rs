//! Root tests against real software whose threads' behaviour is known: Debian's Redis (idle
//! background threads on condition variables; I/O threads parked on `io_threads_mutex`),
//! CPython's GIL (the machine's `python3`; four CPU-bound threads share one lock) and Debian's
//! PostgreSQL (an idle postmaster in select/epoll; commits wait for the WAL flush). Servers are
//! started on free loopback ports with their data in temporary directories, and stopped and
//! removed by drop guards whatever the test's outcome.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use agent::model::Sample;
use stallscope_tests::*;

const SETUP_HINT: &str = "run `cargo xtask setup` as root: it installs Debian's redis-server, \
                          redis-tools and postgresql";

/// Nanoseconds as seconds, for messages.
fn s(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// The window of an attach or capture of `d_ns` is about that long (never shorter, and not
/// much longer even on a loaded machine).
fn check_window(th: &Threads, d_ns: i64) {
    assert!(
        th.window_ns >= d_ns - 50_000_000 && th.window_ns <= d_ns + d_ns / 4,
        "window of a {:.1} s capture is {:.3} s",
        s(d_ns),
        s(th.window_ns)
    );
}

/// Samples of one thread (by its `tid` label).
fn samples_of(p: &Profile, tid: u32) -> Vec<&Sample> {
    let tid = tid.to_string();
    p.samples
        .iter()
        .filter(|s| sample_label(s, "tid").as_deref() == Some(tid.as_str()))
        .collect()
}

fn describe(p: &Profile, s: &Sample) -> String {
    format!("{:?} values {:?} {}", s.labels, s.values, stack_text(p, s))
}

/// Sum of one value over samples, by wait class.
fn by_class(p: &Profile, samples: &[&Sample], value_type: &str) -> BTreeMap<String, i64> {
    let vi = value_index(p, value_type);
    let mut out = BTreeMap::new();
    for s in samples {
        *out.entry(sample_label(s, "wait_class").unwrap_or_default())
            .or_insert(0) += s.values[vi];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// Started through Debian's symlink (`redis-server -> redis-check-rdb`): the profiles must name
/// the binary as started.
const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_BENCHMARK: &str = "/usr/bin/redis-benchmark";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

struct Redis {
    server: Workload,
    port: u16,
    _dir: TempDir,
}

/// `redis-server` on a free loopback port with two I/O threads (the main thread and
/// `io_thd_1`) and no persistence, its working directory a temporary one.
fn start_redis() -> Redis {
    for p in [REDIS_SERVER, REDIS_BENCHMARK, REDIS_CLI] {
        require_executable(p, SETUP_HINT);
    }
    let dir = TempDir::new("stallscope-redis");
    let port = free_tcp_port();
    let mut cmd = Command::new(REDIS_SERVER);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--io-threads", "2", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--logfile", ""])
        .arg("--dir")
        .arg(dir.path());
    let server = Workload::spawn_command(
        "redis-server",
        cmd,
        Some("Ready to accept connections"),
        Duration::from_secs(20),
    );
    Redis {
        server,
        port,
        _dir: dir,
    }
}

/// `redis-benchmark -p PORT -c 50 -n N -t TESTS -q`: bounded, killed on drop.
fn redis_benchmark(port: u16, n: u32, tests: &str) -> Workload {
    let mut cmd = Command::new(REDIS_BENCHMARK);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", "50"])
        .args(["-n", &n.to_string(), "-t", tests, "-q"])
        .stderr(Stdio::null());
    Workload::spawn_command("redis-benchmark", cmd, None, Duration::ZERO)
}

/// A field of `redis-cli INFO <section>`.
fn redis_info(port: u16, section: &str, field: &str) -> Option<i64> {
    let out = Command::new(REDIS_CLI)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "info", section])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until `n` clients are connected (the benchmark is running).
fn wait_for_clients(r: &Redis, n: i64, bench: &Workload) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let clients = redis_info(r.port, "clients", "connected_clients").unwrap_or(0);
        if clients >= n {
            return;
        }
        assert!(
            bench.exit_status().is_none(),
            "redis-benchmark exited ({:?}) before {n} clients connected: {:?}",
            bench.exit_status(),
            bench.stdout_lines()
        );
        assert!(
            Instant::now() < deadline,
            "only {clients} clients connected to redis after 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The profile names the binary as it was started (`/usr/bin/redis-server`), never as the file
/// the symlink points to (`redis-check-rdb`), in its mappings and in the names of unsymbolized
/// functions (`redis-server+0x...`).
fn assert_named_as_started(p: &Profile, what: &str) {
    let files: Vec<&str> = p.mappings.iter().map(|m| m.file.as_str()).collect();
    assert!(
        files.contains(&REDIS_SERVER),
        "{what}: no mapping named {REDIS_SERVER}: {files:?}"
    );
    assert!(
        !files.iter().any(|f| f.contains("redis-check-rdb")),
        "{what}: a mapping is named after the symlink's target: {files:?}"
    );
    let functions: HashSet<&str> = p
        .locations
        .iter()
        .flat_map(|l| l.lines.iter())
        .map(|l| l.function.as_str())
        .collect();
    let wrong: Vec<&&str> = functions
        .iter()
        .filter(|f| f.contains("redis-check-rdb"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: functions named after the symlink's target: {wrong:?}"
    );
}

/// Idle Redis: the background I/O threads (`bio_*`) wait on condition variables all window,
/// from waits seeded when the window opened; every thread-second is accounted for.
#[test]
fn redis_idle_bio_threads_wait_on_condition_variables() {
    require_root();
    let r = start_redis();
    // Let every thread settle into its idle wait.
    std::thread::sleep(Duration::from_millis(1000));
    let pid = r.server.pid();
    let tasks = proc_threads(pid);
    let bio: Vec<&(u32, String)> = tasks
        .iter()
        .filter(|(_, n)| n.starts_with("bio_"))
        .collect();
    // Redis 7.0 names them bio_close_file, bio_aof_fsync, bio_lazy_free (7.2: bio_aof).
    let bio_names: Vec<&str> = bio.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        bio.len() == 3
            && bio_names.contains(&"bio_close_file")
            && bio_names.contains(&"bio_lazy_free")
            && bio_names.iter().any(|n| n.starts_with("bio_aof")),
        "want redis's three bio threads, /proc/{pid}/task has {tasks:?}"
    );

    let run = attach_ok(&r.server, "4s", "offcpu,cpu", &[]);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 4_000_000_000);
    th.assert_invariant();
    // Every thread that was there is accounted for; any other was created in the window.
    for (tid, name) in &tasks {
        assert!(
            th.tid(*tid).is_some(),
            "thread {tid} {name:?} missing from threads.json: {}",
            th.text
        );
    }
    for t in &th.threads {
        assert!(
            t.created || tasks.iter().any(|(tid, _)| *tid == t.tid),
            "thread {} {:?} in threads.json was neither there before nor created: {}",
            t.tid,
            t.name,
            th.text
        );
    }
    // Threads alive all window: alive = threads × window (within 2%).
    let whole: Vec<&ThreadAcct> = th
        .threads
        .iter()
        .filter(|t| !t.created && !t.exited)
        .collect();
    let alive: i64 = whole.iter().map(|t| t.alive_ns).sum();
    let want = whole.len() as i64 * th.window_ns;
    assert!(
        alive <= want + 5_000_000 && alive >= want * 98 / 100,
        "{} threads alive all window: {:.3} thread-seconds, want {:.3}: {}",
        whole.len(),
        s(alive),
        s(want),
        th.text
    );

    let p = read_profile(run.file("offcpu.pb.gz"));
    for (tid, name) in &bio {
        let t = th
            .tid(*tid)
            .unwrap_or_else(|| panic!("{name} not in threads.json"));
        assert!(t.seeded, "{name} was idle before the window: {}", th.text);
        assert!(
            t.offcpu_ns * 100 >= t.alive_ns * 98,
            "{name} idle but off CPU only {:.3} s of {:.3} s",
            s(t.offcpu_ns),
            s(t.alive_ns)
        );
        let mine = samples_of(&p, *tid);
        assert!(!mine.is_empty(), "no off-CPU samples of {name} (tid {tid})");
        for smp in &mine {
            let d = describe(&p, smp);
            assert_eq!(
                sample_label(smp, "thread").as_deref(),
                Some(name.as_str()),
                "{d}"
            );
            assert_eq!(
                sample_label(smp, "wait_class").as_deref(),
                Some("futex"),
                "{name} waits on a condition variable, not a lock: {d}"
            );
            assert_eq!(
                sample_label(smp, "wait_object").as_deref(),
                Some("condvar"),
                "{name}'s wait object: {d}"
            );
        }
    }
    // The I/O thread, by contrast, is parked on a real lock: io_threads_mutex[1], which the
    // main thread holds while threaded I/O is off.
    for (tid, name) in tasks.iter().filter(|(_, n)| n.starts_with("io_thd_")) {
        let mine = samples_of(&p, *tid);
        assert!(!mine.is_empty(), "no off-CPU samples of {name} (tid {tid})");
        for smp in &mine {
            let d = describe(&p, smp);
            assert_eq!(
                (
                    sample_label(smp, "wait_class").as_deref(),
                    sample_label(smp, "wait_object").as_deref()
                ),
                (Some("lock"), Some("mutex")),
                "{name} waits for io_threads_mutex: {d}"
            );
            assert!(stack_has(&p, smp, "IOThreadMain"), "{d}");
        }
    }
    // The main thread idles in epoll_wait (waking 10 times a second for serverCron).
    let main = th
        .tid(pid)
        .unwrap_or_else(|| panic!("main thread {pid} not in threads.json: {}", th.text));
    assert!(
        main.class_ns("io") * 100 >= main.alive_ns * 90,
        "idle redis main thread in io (epoll) only {:.3} s of {:.3} s: {:?}",
        s(main.class_ns("io")),
        s(main.alive_ns),
        main.offcpu_by_class
    );
    assert_named_as_started(&p, "idle redis offcpu.pb.gz");
}

/// Redis under redis-benchmark: every thread-second of the busy main and I/O threads is
/// accounted for, the CPU profile has both, and names the binary as started.
#[test]
fn redis_under_benchmark_accounts_busy_threads() {
    require_root();
    let r = start_redis();
    let pid = r.server.pid();
    // Far more requests than a loaded 2-CPU machine serves in the window; killed after it.
    let bench = redis_benchmark(r.port, 1_000_000, "set,get");
    wait_for_clients(&r, 25, &bench);
    let run = attach_ok(&r.server, "4s", "cpu,offcpu,mutex", &[]);
    assert!(
        bench.exit_status().is_none(),
        "redis-benchmark finished ({:?}) before the window closed: the window was not all under \
         load; raise -n",
        bench.exit_status()
    );
    drop(bench);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 4_000_000_000);
    th.assert_invariant();

    let cpu = read_profile(run.file("cpu.pb.gz"));
    let ci = value_index(&cpu, "cpu");
    let main_cpu: i64 = samples_of(&cpu, pid).iter().map(|s| s.values[ci]).sum();
    assert!(main_cpu > 0, "no CPU samples of the main thread under load");
    for smp in samples_of(&cpu, pid) {
        assert_eq!(
            sample_label(smp, "thread").as_deref(),
            Some("redis-server"),
            "{}",
            describe(&cpu, smp)
        );
    }
    let io_threads: Vec<(u32, String)> = proc_threads(pid)
        .into_iter()
        .filter(|(_, n)| n.starts_with("io_thd_"))
        .collect();
    assert_eq!(
        io_threads.len(),
        1,
        "--io-threads 2 starts one I/O thread besides the main thread: {:?}",
        proc_threads(pid)
    );
    for (tid, name) in &io_threads {
        let mine = samples_of(&cpu, *tid);
        assert!(
            !mine.is_empty(),
            "no CPU samples of {name} (tid {tid}) under load"
        );
        for smp in mine {
            assert_eq!(
                sample_label(smp, "thread").as_deref(),
                Some(name.as_str()),
                "{}",
                describe(&cpu, smp)
            );
        }
    }
    assert_named_as_started(&cpu, "busy redis cpu.pb.gz");
    assert!(
        cpu.locations
            .iter()
            .flat_map(|l| l.lines.iter())
            .any(|l| l.function.starts_with("redis-server+0x")),
        "no unsymbolized redis function named redis-server+0x... in the CPU profile"
    );

    // What the mutex profile shows under steady load (asserted in the next test, with load
    // that starts and stops): with 50 busy clients threaded I/O stays on, the I/O thread
    // spins instead of parking on io_threads_mutex, and there are no handoffs to see.
    let mutex = read_profile(run.file("mutex.pb.gz"));
    let names: HashSet<String> = mutex
        .samples
        .iter()
        .filter_map(|s| sample_label(s, "lock_name"))
        .collect();
    eprintln!(
        "mutex profile under steady load: {} samples, {} ns of delay, locks {names:?}",
        mutex.samples.len(),
        total(&mutex, "delay")
    );
}

/// Load in bursts: `redis-benchmark -c 50 -n 2000 -t set` at most 40 times, 300 ms apart,
/// until dropped.
struct Bursts {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl Bursts {
    fn start(port: u16) -> Bursts {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut done = 0;
            for _ in 0..40 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let b = redis_benchmark(port, 2000, "set");
                while b.exit_status().is_none() && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                drop(b);
                done += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
            done
        });
        Bursts {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Bursts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Redis parks its I/O thread on `io_threads_mutex[1]` (the main thread holds it while
/// threaded I/O is off) and lets it go when load arrives: with load that comes and goes, the
/// mutex profile shows those handoffs on that lock, charged to the releasing thread's stack —
/// the main thread starting threaded I/O (`startThreadedIO`, inlined into
/// `handleClientsWithPendingWritesUsingThreads`), or the I/O thread in `IOThreadMain` when the
/// main thread waits to stop it.
#[test]
fn redis_io_threads_mutex_handoffs_are_charged_to_the_releaser() {
    require_root();
    let r = start_redis();
    let pid = r.server.pid();
    let load = Bursts::start(r.port);
    std::thread::sleep(Duration::from_millis(500));
    let run = attach_ok(&r.server, "4s", "mutex", &[]);
    drop(load);
    let p = read_profile(run.file("mutex.pb.gz"));
    let di = value_index(&p, "delay");
    assert!(
        !p.samples.is_empty(),
        "no lock handoffs recorded in 4 s of bursts of load:\n{}",
        run.stdout
    );
    // pthread_mutex_t is 40 bytes: io_threads_mutex[1] is at +0x28.
    for smp in &p.samples {
        assert_eq!(
            sample_label(smp, "lock_name").as_deref(),
            Some("io_threads_mutex+0x28"),
            "{}",
            describe(&p, smp)
        );
        assert!(
            p.frames_root_first(smp)
                .iter()
                .any(|l| l.function.contains("pthread_mutex_unlock")),
            "charged where the lock was released: {}",
            describe(&p, smp)
        );
    }
    let main: Vec<&Sample> = samples_of(&p, pid);
    assert!(
        !main.is_empty(),
        "no handoff charged to the main thread:\n{}",
        run.stdout
    );
    for smp in &main {
        assert!(
            stack_has(&p, smp, "startThreadedIO")
                || stack_has(&p, smp, "handleClientsWithPendingWritesUsingThreads"),
            "the main thread releases io_threads_mutex when it starts threaded I/O: {}",
            describe(&p, smp)
        );
    }
    let main_delay: i64 = main.iter().map(|s| s.values[di]).sum();
    let io: Vec<&Sample> = p
        .samples
        .iter()
        .filter(|s| sample_label(s, "tid") != Some(pid.to_string()))
        .collect();
    for smp in &io {
        assert!(
            sample_label(smp, "thread").is_some_and(|t| t.starts_with("io_thd_"))
                && stack_has(&p, smp, "IOThreadMain"),
            "other handoffs are the I/O thread's, in IOThreadMain: {}",
            describe(&p, smp)
        );
    }
    // The I/O thread waits while threaded I/O is off (long); the main thread only while the
    // I/O thread briefly takes the lock to check in.
    let io_delay: i64 = io.iter().map(|s| s.values[di]).sum();
    assert!(
        main_delay > io_delay,
        "delay charged to the main thread {:.3} s, to the I/O thread {:.3} s",
        s(main_delay),
        s(io_delay)
    );
}

// ---------------------------------------------------------------------------------------------
// CPython
// ---------------------------------------------------------------------------------------------

/// Four pure-Python CPU loops (tests/workloads/gil.py) take turns on the GIL: together at most
/// about one CPU, each off CPU most of the time waiting for the GIL (a condition variable in
/// `take_gil`) or for a CPU. The capture's diagnosis says so instead of calling the thread
/// entry point hot.
#[test]
fn python_gil_serializes_cpu_bound_threads() {
    require_root();
    let python = python3_path();
    let mut cmd = Command::new(&python);
    cmd.arg(workloads_src().join("gil.py"));
    let w = Workload::spawn_command("gil.py", cmd, Some("ready"), Duration::from_secs(20));
    let workers: Vec<String> = (0..4).map(|n| format!("gil_worker_{n}")).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names: Vec<String> = proc_threads(w.pid()).into_iter().map(|(_, n)| n).collect();
        if workers.iter().all(|wn| names.contains(wn)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} (pid {}) never named its threads gil_worker_0..3: {names:?}",
            python.display(),
            w.pid()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let run = capture_pid_ok(w.pid(), "5s", &[]);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 5_000_000_000);
    th.assert_invariant();
    let mut cpu = 0;
    for name in &workers {
        let t = th.one(name);
        cpu += t.cpu_ns;
        // The GIL is CPython's own lock: its waits are lock waits, not idle futex waits.
        assert!(
            t.class_ns("lock") > t.class_ns("futex"),
            "{name}: GIL waits should be lock waits: {:?}",
            t.offcpu_by_class
        );
        let waiting = t.class_ns("lock") + t.class_ns("futex") + t.class_ns("runnable");
        assert!(
            waiting * 10 >= t.offcpu_ns * 9,
            "{name} off CPU {:.3} s, only {:.3} s of it waiting on the GIL or for a CPU: {:?}",
            s(t.offcpu_ns),
            s(waiting),
            t.offcpu_by_class
        );
        assert!(
            t.offcpu_ns * 10 >= t.alive_ns * 4,
            "{name} shares the GIL with three others, yet is off CPU only {:.3} s of {:.3} s",
            s(t.offcpu_ns),
            s(t.alive_ns)
        );
    }
    assert!(
        cpu * 10 <= th.window_ns * 13,
        "the 4 workers ran {:.3} s in {:.3} s: more than one GIL allows",
        s(cpu),
        s(th.window_ns)
    );
    assert!(
        cpu * 10 >= th.window_ns * 3,
        "the 4 CPU-bound workers ran only {:.3} s in {:.3} s",
        s(cpu),
        s(th.window_ns)
    );

    let path = run.file("summary.md");
    let summary =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        !summary.contains("start_thread is the hottest")
            && !summary.contains("`start_thread` is the hottest"),
        "the diagnosis blames the thread entry point:\n{summary}"
    );
    for needle in ["Serialized", "take_gil"] {
        assert!(
            summary.contains(needle),
            "summary.md does not mention {needle:?}:\n{summary}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The newest `/usr/lib/postgresql/<version>/bin` with initdb.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/<version>/bin/initdb: {SETUP_HINT}"))
        .1
}

/// uid and gid of the `postgres` user (Debian's package creates it).
fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam with a NUL-terminated name; the result is read before any other call.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    assert!(!pw.is_null(), "no `postgres` user: {SETUP_HINT}");
    // SAFETY: non-null, points to libc's static passwd entry.
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn run_output(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL cluster of our own: initdb'd into a temporary directory owned by `postgres`,
/// started with pg_ctl on a free port and a socket directory inside it; stopped (immediate)
/// and removed on drop.
struct Pg {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: u16,
    postmaster: u32,
    // Dropped after `drop` below has stopped the server.
    dir: TempDir,
}

impl Pg {
    /// Runs a PostgreSQL program as the `postgres` user.
    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"])
            .arg(self.bin.join(program));
        cmd
    }

    /// A client program (pgbench, pg_isready) pointed at this cluster.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        cmd
    }

    fn start() -> Pg {
        let bin = pg_bin();
        let (uid, gid) = postgres_user();
        let dir = TempDir::new("stallscope-pg");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        for p in [dir.path(), sock.as_path()] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
        }
        let mut pg = Pg {
            bin,
            data,
            sock,
            port: free_tcp_port(),
            postmaster: 0,
            dir,
        };
        let out = run_output(
            pg.as_postgres("initdb")
                .arg("-D")
                .arg(&pg.data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
        );
        assert_ok(&out, "initdb");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            pg.sock.display()
        );
        let out = run_output(
            pg.as_postgres("pg_ctl")
                .arg("-D")
                .arg(&pg.data)
                .arg("-l")
                .arg(pg.dir.path().join("server.log"))
                .args(["-w", "-t", "60", "-o", &opts, "start"]),
        );
        let log = std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default();
        assert_ok(&out, &format!("pg_ctl start (server log:\n{log})"));
        let pidfile = pg.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile)
            .unwrap_or_else(|e| panic!("{}: {e}", pidfile.display()));
        pg.postmaster = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("no pid on the first line of {}", pidfile.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = run_output(pg.client("pg_isready").args(["-t", "5"]));
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "pg_isready still fails after 30 s: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// [`Pg::start`], then pgbench's tables created (scale 1).
    fn start_with_pgbench_tables() -> Pg {
        let pg = Pg::start();
        let out = run_output(
            pg.client("pgbench")
                .args(["-i", "-s", "1", "-q", "postgres"]),
        );
        assert_ok(&out, "pgbench -i -s 1");
        pg
    }

    /// Children of the postmaster whose command line (the process title) contains `needle`.
    fn children(&self, needle: &str) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid != Some(self.postmaster) {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim()
                .to_string();
            if cmdline.contains(needle) {
                out.push((pid, cmdline));
            }
        }
        out.sort();
        out
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // If pg_ctl could not stop it, kill the postmaster (only if it is still ours: its
        // command line names our data directory); its children exit when it dies.
        if self.postmaster != 0 {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.postmaster))
                .map(|c| String::from_utf8_lossy(&c).into_owned())
                .unwrap_or_default();
            if cmdline.contains(&*self.data.to_string_lossy()) {
                // SAFETY: plain syscall.
                unsafe { libc::kill(self.postmaster as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// An idle cluster: the postmaster (one thread) waits for connections all window, in io
/// (select or epoll), seeded from the window's start; the WAL writer wakes on its timer
/// and waits in io/sleep between.
#[test]
fn postgres_idle_postmaster_and_walwriter() {
    require_root();
    let pg = Pg::start();
    std::thread::sleep(Duration::from_millis(1000));
    let run = attach_pid_ok(pg.postmaster, "3s", "offcpu", &[]);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 3_000_000_000);
    th.assert_invariant();
    assert_eq!(
        th.threads.len(),
        1,
        "the postmaster has one thread: {}",
        th.text
    );
    let t = &th.threads[0];
    assert_eq!(t.tid, pg.postmaster, "{}", th.text);
    assert!(
        t.seeded,
        "the idle postmaster was waiting before the window: {}",
        th.text
    );
    assert!(
        t.offcpu_ns * 100 >= t.alive_ns * 98 && t.class_ns("io") * 100 >= t.alive_ns * 98,
        "the idle postmaster off CPU {:.3} s, in io {:.3} s, of {:.3} s: {:?}",
        s(t.offcpu_ns),
        s(t.class_ns("io")),
        s(t.alive_ns),
        t.offcpu_by_class
    );
    let p = read_profile(run.file("offcpu.pb.gz"));
    let vi = value_index(&p, "off-cpu");
    let io: i64 = p
        .samples
        .iter()
        .filter(|s| sample_label(s, "wait_class").as_deref() == Some("io"))
        .filter(|s| stack_has(&p, s, "PostmasterMain"))
        .map(|s| s.values[vi])
        .sum();
    assert!(
        io * 100 >= t.alive_ns * 98,
        "io waits under PostmasterMain {:.3} s of {:.3} s",
        s(io),
        s(t.alive_ns)
    );

    let walwriter = pg.children("walwriter");
    assert_eq!(
        walwriter.len(),
        1,
        "want one walwriter child of postmaster {}: {walwriter:?}",
        pg.postmaster
    );
    let run = attach_pid_ok(walwriter[0].0, "3s", "offcpu", &[]);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 3_000_000_000);
    th.assert_invariant();
    assert_eq!(
        th.threads.len(),
        1,
        "the walwriter has one thread: {}",
        th.text
    );
    let t = &th.threads[0];
    let waits: i64 = t.class_ns("io") + t.class_ns("sleep");
    assert!(
        waits * 10 >= t.alive_ns * 9,
        "idle walwriter in io/sleep {:.3} s of {:.3} s: {:?}",
        s(waits),
        s(t.alive_ns),
        t.offcpu_by_class
    );
    // An idle walwriter still flushes what others wrote to the WAL (autovacuum, the
    // checkpointer's records) every wal_writer_delay: a few ms in the disk class is true.
    let other: Vec<&String> = t
        .offcpu_by_class
        .keys()
        .filter(|c| !["io", "sleep", "runnable", "disk"].contains(&c.as_str()))
        .collect();
    assert!(
        other.is_empty(),
        "idle walwriter waits in {other:?}: {:?}",
        t.offcpu_by_class
    );
}

/// A backend serving pgbench: every thread-second accounted for, and commits wait for the WAL
/// flush: off-CPU time under `XLogFlush`, in fdatasync, as disk waits (the thread sleeps
/// uninterruptibly for the device), then runnable until it gets a CPU again.
#[test]
fn postgres_commits_wait_for_the_wal_flush() {
    require_root();
    let pg = Pg::start_with_pgbench_tables();
    // Bounded (-T); long enough to cover the agent's start and the window on a loaded machine
    // (the agent takes up to a few seconds to load), killed right after the window.
    let mut cmd = pg.client("pgbench");
    cmd.args(["-c", "2", "-T", "20", "postgres"])
        .stderr(Stdio::null());
    let bench = Workload::spawn_command("pgbench", cmd, None, Duration::ZERO);
    // pgbench's own setup connection (table check, vacuum) comes and goes first: take a
    // backend of its two clients, there now and half a second later.
    let deadline = Instant::now() + Duration::from_secs(15);
    let backend = loop {
        let before = pg.children("postgres: postgres postgres");
        if before.len() >= 2 {
            std::thread::sleep(Duration::from_millis(500));
            let now = pg.children("postgres: postgres postgres");
            if let Some(b) = now
                .iter()
                .find(|(pid, _)| before.iter().any(|(p, _)| p == pid))
            {
                break b.clone();
            }
        }
        assert!(
            bench.exit_status().is_none() && Instant::now() < deadline,
            "no two pgbench backends (postgres: postgres postgres ...) under postmaster {}: \
             {before:?}; pgbench {:?}",
            pg.postmaster,
            bench.exit_status()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = attach_pid_ok(backend.0, "3s", "offcpu,cpu", &[]);
    assert!(
        bench.exit_status().is_none(),
        "pgbench finished before the window closed"
    );
    drop(bench);
    let th = read_threads(run.file("threads.json"));
    check_window(&th, 3_000_000_000);
    th.assert_invariant();
    assert_eq!(th.threads.len(), 1, "a backend has one thread: {}", th.text);
    assert!(
        !th.threads[0].exited,
        "backend {backend:?} exited in the window: {}",
        th.text
    );

    let p = read_profile(run.file("offcpu.pb.gz"));
    let flush: Vec<&Sample> = p
        .samples
        .iter()
        .filter(|s| stack_has(&p, s, "XLogFlush"))
        .collect();
    let classes = by_class(&p, &flush, "off-cpu");
    eprintln!("off-CPU time under XLogFlush by wait class: {classes:?}");
    assert!(
        !flush.is_empty(),
        "no off-CPU time under XLogFlush in a backend serving pgbench (by class overall: {:?})",
        by_class(&p, &p.samples.iter().collect::<Vec<_>>(), "off-cpu")
    );
    let in_sync = |s: &Sample| {
        p.frames_root_first(s)
            .iter()
            .any(|l| l.function.contains("fdatasync") || l.function.contains("fsync"))
    };
    let disk: i64 = flush
        .iter()
        .filter(|s| sample_label(s, "wait_class").as_deref() == Some("disk"))
        .filter(|s| in_sync(s))
        .map(|s| s.values[value_index(&p, "off-cpu")])
        .sum();
    assert!(
        disk > 0,
        "no disk waits in fdatasync under XLogFlush (is the cluster on tmpfs? it is in {}): \
         {classes:?}",
        pg.dir.path().display()
    );
    // Waiting for the flush is never idle: no io class under XLogFlush, and sleep only in
    // PostgreSQL's spinlock backoff (perform_spin_delay sleeps with pg_usleep, a select
    // without descriptors: a sleep, not I/O).
    for smp in &flush {
        let class = sample_label(smp, "wait_class").unwrap_or_default();
        let backoff = p
            .frames_root_first(smp)
            .iter()
            .any(|l| l.function == "perform_spin_delay");
        assert!(
            class != "io" && (class != "sleep" || backoff),
            "a WAL flush wait classified {class}: {}",
            describe(&p, smp)
        );
    }
}

/// Debian's `/usr/bin/python3.11` is stripped (no `.symtab`, no DWARF); `python3.11-dbg` puts
/// its debug info in a separate file under `/usr/lib/debug/.build-id/`. The CPU profile names
/// CPython's own functions with their file and line from that split file, and the stripped
/// binary's build id is what finds it.
#[test]
fn split_debug_info_names_a_stripped_debian_python() {
    require_root();
    let python = "/usr/bin/python3.11";
    require_executable(
        python,
        "Debian's python3.11 and python3.11-dbg: run `cargo xtask setup` as root",
    );
    let build_id = build_id_of(python);
    let debug_file = format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    );
    assert!(
        std::path::Path::new(&debug_file).is_file(),
        "{debug_file} missing: python3.11-dbg must match the installed python3.11 \
         (`cargo xtask setup` installs both)"
    );
    let mut cmd = Command::new(python);
    cmd.arg(workloads_src().join("gil.py"));
    let w = Workload::spawn_command("python3.11", cmd, Some("ready"), Duration::from_secs(20));
    let run = attach_pid_ok(w.pid(), "2s", "cpu", &[]);
    let p = read_profile(run.file("cpu.pb.gz"));
    let lines = lines_of(&p, "_PyEval_EvalFrameDefault");
    assert!(
        lines.iter().any(|l| {
            l.line.is_some_and(|n| n > 0)
                && l.file
                    .as_deref()
                    .is_some_and(|f| f.ends_with("Python/ceval.c"))
        }),
        "_PyEval_EvalFrameDefault without Python/ceval.c:LINE from {debug_file}: {lines:?}"
    );
}

/// The GNU build id of an ELF file, from `readelf -n`.
fn build_id_of(path: &str) -> String {
    let out = Command::new("readelf")
        .args(["-n", path])
        .output()
        .expect("readelf (binutils) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no build id in `readelf -n {path}`:\n{text}"))
}

/// PostgreSQL profiled as a process tree, as a user asks about a service: `attach --pid
/// POSTMASTER --children` while pgbench connects after the window opened. The postmaster forks a
/// backend per connection: each is a member from its fork (summary.json `joined: forked`), its
/// queries' CPU is in the CPU profile and its WAL flushes in the off-CPU profile under its own
/// pid, and every member's thread-seconds add up.
#[test]
fn postgres_backends_forked_after_attach_are_profiled_by_process_tree() {
    require_root();
    let pg = Pg::start_with_pgbench_tables();
    let tmp = TempDir::new("stallscope-pgtree");
    let dir = tmp.path().join("out");
    let (agent, stderr) = spawn_attach(
        &[
            "--pid",
            &pg.postmaster.to_string(),
            "--children",
            "--profile",
            "cpu,offcpu",
            "--duration",
            "5s",
        ],
        &dir,
        Stdio::null(),
    );
    // Connections made now are backends forked in the window.
    let mut cmd = pg.client("pgbench");
    cmd.args(["-c", "3", "-T", "3", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let bench = run_output(&mut cmd);
    assert_ok(&bench, "pgbench -c 3 -T 3");
    let status = agent.wait_with_output().expect("the agent").status;
    let stderr = stderr.join().unwrap_or_default();
    assert!(status.success(), "the agent failed:\n{stderr}");

    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let members = v["group"]["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no group in summary.json: {v}"));
    let forked: Vec<u64> = members
        .iter()
        .filter(|m| m["joined"] == "forked" && m["parent"] == u64::from(pg.postmaster))
        .filter_map(|m| m["pid"].as_u64())
        .collect();
    // pgbench's 3 clients, and its setup connection before them.
    assert!(
        forked.len() >= 3,
        "backends forked by postmaster {} in the window: {forked:?} of {members:?}",
        pg.postmaster
    );
    let cpu = read_profile(dir.join("cpu.pb.gz"));
    let off = read_profile(dir.join("offcpu.pb.gz"));
    let of_backend = |p: &Profile, s: &Sample, f: &str| {
        sample_label(s, "pid")
            .and_then(|x| x.parse::<u64>().ok())
            .is_some_and(|pid| forked.contains(&pid))
            && stack_has(p, s, f)
    };
    let busy: Vec<u64> = forked
        .iter()
        .copied()
        .filter(|pid| {
            cpu.samples.iter().any(|s| {
                sample_label(s, "pid") == Some(pid.to_string())
                    && stack_has(&cpu, s, "PostgresMain")
            })
        })
        .collect();
    assert!(
        busy.len() >= 3,
        "backends with CPU samples under PostgresMain: {busy:?} of {forked:?}"
    );
    assert!(
        off.samples.iter().any(|s| of_backend(&off, s, "XLogFlush")),
        "no backend's WAL flush wait in the off-CPU profile"
    );
    let th = read_threads(dir.join("threads.json"));
    th.assert_invariant();
}

/// Debian's Prometheus is a stripped Go 1.19 binary (no symbol table, no DWARF): its CPU
/// profile, while it answers queries, names its frames from Go's own `.gopclntab` (before, every
/// frame was `prometheus+0x...`), with the handlers' packages in the stacks.
#[test]
fn prometheus_stripped_go_binary_is_profiled_with_function_names() {
    require_root();
    // Nothing to scrape (a closed port): the queries are its work.
    let run = attach_to_queried_prometheus(
        "/api/v1/query?query=rate(prometheus_http_requests_total%5B1m%5D)",
        "4s",
        "cpu",
    );
    let p = read_profile(run.file("cpu.pb.gz"));
    let samples = total(&p, "samples");
    assert!(samples >= 20, "only {samples} samples of a busy Prometheus");
    // Every frame of the prometheus binary has a name: no `prometheus+0x...` placeholders.
    let flat = flat_by_function(&p, "samples");
    let placeholders: i64 = flat
        .iter()
        .filter(|(f, _)| f.starts_with("prometheus+0x"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        placeholders * 50 <= samples,
        "{placeholders} of {samples} samples still unnamed: {:?}",
        top_flat(&p, "samples")
    );
    let cum = cum_by_function(&p, "samples");
    let handlers: i64 = cum
        .iter()
        .filter(|(f, _)| f.starts_with("net/http.") || f.contains("github.com/prometheus/"))
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    assert!(
        handlers * 4 >= samples,
        "the HTTP handlers' frames are in under a quarter of the samples: {:?}",
        top_flat(&p, "samples")
    );
    // file:line too, from the same table.
    assert!(
        !source_lines(&p, "runtime.mallocgc", "malloc.go").is_empty()
            || p.locations.iter().flat_map(|l| &l.lines).any(|l| l
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with(".go"))
                && l.line.is_some()),
        "no Go file:line in the profile"
    );
}

/// `agent attach` to Debian's Prometheus (nothing to scrape: a closed port) while a thread
/// sends it `query` over and over.
fn attach_to_queried_prometheus(query: &'static str, duration: &str, profiles: &str) -> AgentRun {
    use stallscope_tests::serve_kit::Prometheus;
    let prom = Prometheus::start("127.0.0.1:9".parse().unwrap(), None);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, addr) = (Arc::clone(&stop), prom.addr);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = stallscope_testkit::http::get(addr, query, b"", Duration::from_secs(5));
            }
        })
    };
    let run = attach_pid_ok(prom.pid(), duration, profiles, &[]);
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    run
}

/// Debian's Prometheus (stripped Go) under queries, block and mutex profiles: the Go runtime
/// parking its threads (`runtime.futex` in `notesleep`, `runtime.lock`) is not reported as
/// blocking or lock contention (it was 22 s of "contention" in 5 s before), the profiles say
/// what they left out, and, the binary being stripped, that its goroutines were not followed.
#[test]
fn prometheus_block_and_mutex_profiles_leave_out_the_go_runtimes_thread_parking() {
    require_root();
    let run = attach_to_queried_prometheus("/api/v1/query?query=up", "3s", "block,mutex");
    let block = read_profile(run.file("block.pb.gz"));
    let mutex = read_profile(run.file("mutex.pb.gz"));
    for p in [&block, &mutex] {
        for s in &p.samples {
            assert!(
                !stack_has(p, s, "runtime.futex"),
                "{:?}: the runtime's own futex wait is in: {}",
                p.kind,
                stack_text(p, s)
            );
        }
    }
    let said =
        |p: &agent::model::Profile, needle: &str| p.comments.iter().any(|c| c.contains(needle));
    assert!(
        said(&block, "of the Go runtime parking its threads"),
        "{:?}",
        block.comments
    );
    assert!(
        said(&block, "not followed by the block and mutex profiles") && said(&block, "stripped"),
        "{:?}",
        block.comments
    );
    // The summary says it too, in place of the contention that was not.
    let out = run.output();
    assert!(
        out.contains("of the Go runtime parking its threads"),
        "{out}"
    );
    // The runtime parked its idle threads in the window: something was left out.
    assert!(counter(&run, "block_events_seen") > 0, "{out}");
}
