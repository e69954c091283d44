//! `agent serve`: a long-running agent with Prometheus metrics and Go-style profile endpoints.
//!
//! - `/metrics`: continuous per-process metrics read from `/proc` ([`procstat`]: no probe is
//!   attached for them), plus the agent's own health ([`health`]).
//! - `/debug/pprof/{profile,offcpu,block,mutex}?pid=N&seconds=S`: one bounded capture window
//!   ([`attach::capture_with`]) on a long-lived, already verified collector ([`profiler`]);
//!   the probes are attached for the window only and detach at its end.
//! - `/debug/pprof/threads?pid=N&debug=1|2`: a thread dump (`agent dump`).
//!
//! Security: loopback by default; any other address needs a bearer token ([`http`]).
//! Hostile clients: GET without a body only, time limits per request ([`http`]); bounded
//! connections and a header timeout ([`server`]).

pub mod health;
pub mod http;
pub mod procstat;
pub mod profiler;
pub mod server;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{cli::ServeArgs, error::Error, system};

use procstat::ProcStats;

/// Tracked processes (bounded by `--max-targets`).
#[derive(Debug, Default)]
pub struct Targets {
    /// By pid; a pid whose start time changed is a new process and a new entry.
    pub procs: BTreeMap<u32, ProcStats>,
    /// `--pid` targets: tracked while they live, never re-added after they exit.
    pub explicit: HashSet<u32>,
    /// Processes seen but not tracked because of `--max-targets` (last scan).
    pub untracked: u64,
}

/// Everything the HTTP handlers share.
pub struct Shared {
    pub targets: Mutex<Targets>,
    pub health: health::Health,
    pub profiler: profiler::Profiler,
    pub token: Option<String>,
    pub max_seconds: u64,
    /// `--request-timeout`: the time limit of a request (profiles: `seconds` plus it).
    pub request_timeout: Duration,
    pub listen: SocketAddr,
}

/// Largest auth token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// Refuses a non-loopback listen address without a token, and reads the token.
pub fn auth_token(args: &ServeArgs) -> Result<Option<String>, Error> {
    let token = match &args.auth_token_file {
        None => None,
        Some(path) => {
            // A token other users can read authenticates them too.
            if let Ok(meta) = std::fs::metadata(path) {
                use std::os::unix::fs::PermissionsExt;
                // Not a FIFO that blocks the start, nor /dev/zero, nor a directory.
                if !meta.is_file() {
                    return Err(Error::Usage(format!(
                        "the auth token file {} is not a regular file; write the token into a \
                         file (chmod 600) and pass that",
                        path.display()
                    )));
                }
                if meta.len() > MAX_TOKEN_FILE {
                    return Err(Error::Usage(format!(
                        "the auth token file {} is {} bytes; a token file holds one token \
                         (at most {MAX_TOKEN_FILE} bytes)",
                        path.display(),
                        meta.len()
                    )));
                }
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(Error::Usage(format!(
                        "the auth token file {} can be read by other users (mode {mode:04o}); \
                         make it private: chmod 600 {}",
                        path.display(),
                        path.display()
                    )));
                }
            }
            let bytes = std::fs::read(path).map_err(|e| {
                Error::Usage(format!(
                    "cannot read the auth token file {}: {e}",
                    path.display()
                ))
            })?;
            let token = String::from_utf8_lossy(&bytes).trim().to_string();
            if token.is_empty() || token.chars().any(char::is_whitespace) {
                return Err(Error::Usage(format!(
                    "the auth token file {} must hold one token (no spaces)",
                    path.display()
                )));
            }
            // A client sends it in a header, which carries visible ASCII only.
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::Usage(format!(
                    "the auth token in {} has characters other than visible ASCII, which no \
                     client can send in an Authorization header; use e.g. \
                     `openssl rand -hex 32 > {}`",
                    path.display(),
                    path.display()
                )));
            }
            Some(token)
        }
    };
    if !args.listen.ip().is_loopback() && token.is_none() {
        return Err(Error::Usage(format!(
            "refusing to listen on {} without authentication: profiles and thread dumps expose \
             any process's code and state. Listen on loopback (--listen 127.0.0.1:{}), or pass \
             --auth-token-file FILE so that every request needs `Authorization: Bearer <token>`",
            args.listen,
            args.listen.port()
        )));
    }
    Ok(token)
}

/// Runs until SIGINT/SIGTERM.
pub async fn run(args: &ServeArgs) -> Result<(), Error> {
    let token = auth_token(args)?;
    system::check_privileges()?;
    system::check_btf()?;
    let mut targets = Targets::default();
    for &pid in &args.pid {
        let info = system::process_info(pid)?;
        if info.tgid != info.pid {
            return Err(Error::Usage(format!(
                "{pid} is a thread of process {}; pass the process id: --pid {}",
                info.tgid, info.tgid
            )));
        }
        targets.explicit.insert(pid);
        targets
            .procs
            .insert(pid, ProcStats::new(pid, info.start_ticks, info.comm));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let listen = listener
        .local_addr()
        .map_err(|e| Error::internal("listening socket", e))?;

    let health = health::Health::new()?;
    let profiler = profiler::Profiler::start(args, health.clone())?;
    let shared = Arc::new(Shared {
        targets: Mutex::new(targets),
        health,
        profiler,
        token,
        max_seconds: args.max_seconds,
        request_timeout: args.request_timeout,
        listen,
    });

    let sampler = tokio::spawn(sample_loop(
        Arc::clone(&shared),
        args.interval,
        args.all,
        args.max_targets as usize,
    ));
    eprintln!("stallscope: serving on http://{listen}/metrics and http://{listen}/debug/pprof/");
    let app = http::router(Arc::clone(&shared));
    let limits = server::Limits {
        max_connections: args.max_connections as usize,
        header_timeout: args.header_timeout,
    };
    let served = server::serve(
        listener,
        app,
        shared.health.clone(),
        limits,
        shutdown_signal,
    )
    .await;
    sampler.abort();
    served.map_err(|e| Error::internal("HTTP server", e))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// Samples `/proc` every `interval` on a blocking thread.
async fn sample_loop(shared: Arc<Shared>, interval: Duration, all: bool, max_targets: usize) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = Arc::clone(&shared);
        let _ = tokio::task::spawn_blocking(move || sample_once(&s, all, max_targets)).await;
    }
}

/// Processes to track with `--all`: every user-space process but this agent.
fn all_processes() -> Vec<(u32, u64, String)> {
    let me = std::process::id();
    let mut out = Vec::new();
    for pid in crate::targets::proc_pids() {
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        const PF_KTHREAD: u64 = 0x0020_0000;
        if let Some((comm, state, start, flags)) = procstat::parse_stat(&stat)
            && flags & PF_KTHREAD == 0
            && state != 'Z'
            && state != 'X'
        {
            out.push((pid, start, comm));
        }
    }
    out.sort();
    out
}

/// One pass: drops exited targets (and reused pids), adds new processes with `--all`, and
/// folds a `/proc` sample of every thread into each target's metrics.
pub fn sample_once(shared: &Shared, all: bool, max_targets: usize) {
    let t0 = Instant::now();
    let listed = if all { Some(all_processes()) } else { None };
    // Read outside the lock: a scrape never waits for /proc.
    let pids: Vec<(u32, u64)> = {
        let t = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.procs.values().map(|p| (p.pid, p.start_ticks)).collect()
    };
    let mut samples = Vec::with_capacity(pids.len());
    for (pid, start) in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| procstat::parse_stat(&s))
            .is_some_and(|(_, state, st, _)| st == start && state != 'Z' && state != 'X');
        let threads = if alive {
            procstat::read_threads(pid)
        } else {
            None
        };
        samples.push((pid, start, threads, Instant::now()));
    }
    let mut t = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
    let exits = apply_pass(&mut t, samples, listed, max_targets);
    let (n, untracked) = (t.procs.len(), t.untracked);
    drop(t);
    shared
        .health
        .record_sample(n, untracked, exits, t0.elapsed());
}

/// What one pass read of a tracked process: pid, the start time it was tracked with, its
/// threads (`None`: gone, or the pid now names another process), when they were read.
pub type Observation = (u32, u64, Option<Vec<procstat::ThreadSample>>, Instant);

/// Folds one pass into the targets: updates live ones, removes exited ones (and pids that
/// now name another process), and with `--all` (`listed`) adds new processes up to
/// `max_targets`, each with fresh metrics. Returns how many targets exited.
pub fn apply_pass(
    t: &mut Targets,
    observed: Vec<Observation>,
    listed: Option<Vec<(u32, u64, String)>>,
    max_targets: usize,
) -> u64 {
    let mut exits = 0;
    for (pid, start, threads, at) in observed {
        match threads {
            Some(threads) => {
                if let Some(p) = t.procs.get_mut(&pid)
                    && p.start_ticks == start
                {
                    p.update(at, &threads);
                }
            }
            None => {
                // Exited (or its pid now names another process): its series go away.
                if t.procs.get(&pid).is_some_and(|p| p.start_ticks == start) {
                    t.procs.remove(&pid);
                    exits += 1;
                    tracing::info!("target {pid} exited; its series are removed");
                }
            }
        }
    }
    if let Some(listed) = listed {
        let mut untracked = 0;
        for (pid, start, comm) in listed {
            if t.procs.contains_key(&pid) {
                continue;
            }
            if t.procs.len() >= max_targets {
                untracked += 1;
                continue;
            }
            // A new process (possibly on a reused pid): fresh metrics, nothing inherited.
            t.procs.insert(pid, ProcStats::new(pid, start, comm));
        }
        t.untracked = untracked;
    }
    exits
}

/// The `/metrics` text: the per-process families, then the agent's own.
pub fn metrics_text(shared: &Shared) -> String {
    let mut out = {
        let t = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
        let procs: Vec<&ProcStats> = t.procs.values().collect();
        procstat::render(&procs)
    };
    out.push_str(&shared.health.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn args(extra: &[&str]) -> ServeArgs {
        let mut v = vec!["agent", "serve"];
        v.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(v).unwrap().command {
            crate::cli::Command::Serve(a) => a,
            _ => unreachable!(),
        }
    }

    fn thread(tid: u32, run_ns: u64) -> procstat::ThreadSample {
        procstat::ThreadSample {
            tid,
            state: 'R',
            syscall: None,
            run_ns,
            wait_ns: 0,
            slices: 1,
        }
    }

    #[test]
    fn exits_and_reused_pids() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut t = Targets::default();
        t.procs.insert(5, ProcStats::new(5, 100, "old".into()));
        t.procs.insert(6, ProcStats::new(6, 100, "other".into()));
        apply_pass(
            &mut t,
            vec![(5, 100, Some(vec![thread(5, 0)]), t0)],
            None,
            10,
        );
        apply_pass(
            &mut t,
            vec![(5, 100, Some(vec![thread(5, 500_000_000)]), t1)],
            None,
            10,
        );
        assert!((t.procs[&5].cpu_seconds - 0.5).abs() < 1e-9);
        // Pid 5 now names a process started later: the old one is gone, and with --all the
        // new one comes in with nothing inherited. Pid 6 exited.
        let listed = vec![(5, 200, "new".into()), (7, 300, "third".into())];
        let exits = apply_pass(
            &mut t,
            vec![(5, 100, None, t1), (6, 100, None, t1)],
            Some(listed),
            2,
        );
        assert_eq!(exits, 2);
        let p = &t.procs[&5];
        assert_eq!(
            (p.start_ticks, p.comm.as_str(), p.cpu_seconds),
            (200, "new", 0.0)
        );
        assert_eq!(t.procs.keys().copied().collect::<Vec<_>>(), vec![5, 7]);
        assert_eq!(t.untracked, 0);
        // Bounded: a third process is counted, not tracked.
        let listed = vec![
            (5, 200, "new".into()),
            (7, 300, "third".into()),
            (8, 9, "x".into()),
        ];
        apply_pass(&mut t, vec![], Some(listed), 2);
        assert_eq!(t.procs.len(), 2);
        assert_eq!(t.untracked, 1);
    }

    #[test]
    fn public_address_needs_a_token() {
        assert_eq!(auth_token(&args(&[])).unwrap(), None);
        assert_eq!(auth_token(&args(&["--listen", "[::1]:0"])).unwrap(), None);
        let e = auth_token(&args(&["--listen", "0.0.0.0:6060"])).unwrap_err();
        assert!(e.to_string().contains("--auth-token-file"), "{e}");
        assert_eq!(e.exit_code(), 2);
        let dir = std::env::temp_dir().join(format!("stallscope-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        let a = args(&[
            "--listen",
            "0.0.0.0:6060",
            "--auth-token-file",
            f.to_str().unwrap(),
        ]);
        // Written with the default umask: readable by others, refused.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = auth_token(&a).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let a = args(&[
            "--listen",
            "0.0.0.0:6060",
            "--auth-token-file",
            f.to_str().unwrap(),
        ]);
        assert_eq!(auth_token(&a).unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&f, "\n").unwrap();
        assert!(auth_token(&a).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
