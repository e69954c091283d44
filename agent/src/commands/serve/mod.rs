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
#[derive(Debug)]
pub struct Targets {
    /// By pid; a pid whose start time changed is a new process and a new entry.
    pub procs: BTreeMap<u32, ProcStats>,
    /// `--pid` targets: tracked while they live, never re-added after they exit.
    pub explicit: HashSet<u32>,
    /// Processes seen but not tracked because of `--max-targets` (last scan).
    pub untracked: u64,
    /// Processes of one container with series of their own (`--max-processes-per-container`);
    /// the container's others are summed into its `pid="other"` series.
    pub per_container: usize,
    /// By container id: what the container's summed processes that exited had counted (its
    /// `pid="other"` counters stay monotonic). Dropped with the container's last process.
    pub folded_gone: BTreeMap<String, ProcStats>,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            procs: BTreeMap::new(),
            explicit: HashSet::new(),
            untracked: 0,
            per_container: DEFAULT_PER_CONTAINER,
            folded_gone: BTreeMap::new(),
        }
    }
}

/// One set of series of `/metrics`: its labels and its figures.
pub type Row = (String, ProcStats);

/// `--max-processes-per-container`'s default.
pub const DEFAULT_PER_CONTAINER: usize = 10;

impl Targets {
    /// Starts tracking a process found by `--all` (its identity read by the caller): it gets
    /// series of its own unless its container already has `per_container` processes with
    /// them (it keeps them for its life; a summed process may be given a place that frees up,
    /// [`Targets::promote`]).
    fn add(&mut self, mut p: ProcStats) {
        if let Some(c) = &p.identity.container {
            let own = self
                .procs
                .values()
                .filter(|q| q.own_series && q.identity.container.as_ref() == Some(c))
                .count();
            p.own_series = own < self.per_container;
        }
        self.procs.insert(p.pid, p);
    }

    /// Stops tracking `pid`; a summed process's counts stay in its container's sum.
    fn remove(&mut self, pid: u32) {
        let Some(p) = self.procs.remove(&pid) else {
            return;
        };
        let Some(c) = p.identity.container.clone() else {
            return;
        };
        if !p.own_series {
            self.folded_gone
                .entry(c.clone())
                .or_insert_with(|| other_row(&p))
                .absorb(&p, false);
        }
        if !self
            .procs
            .values()
            .any(|q| q.identity.container.as_ref() == Some(&c))
        {
            self.folded_gone.remove(&c);
        }
    }

    /// Gives the places of a container's own-series processes that exited to the busiest of
    /// its summed ones (by CPU and lock-wait seconds so far). A promoted process's series
    /// start from zero; what it counted before stays in the container's sum (`folded_gone`),
    /// so no counter goes back.
    fn promote(&mut self) {
        let mut by_container: BTreeMap<String, (usize, Vec<(f64, u32)>)> = BTreeMap::new();
        for p in self.procs.values() {
            if let Some(c) = &p.identity.container {
                let e = by_container.entry(c.clone()).or_default();
                if p.own_series {
                    e.0 += 1;
                } else {
                    e.1.push((p.cpu_seconds + p.lock_seconds(), p.pid));
                }
            }
        }
        for (c, (own, mut summed)) in by_container {
            if own >= self.per_container || summed.is_empty() {
                continue;
            }
            summed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, pid) in summed.into_iter().take(self.per_container - own) {
                let Some(p) = self.procs.get(&pid) else {
                    continue;
                };
                let row = other_row(p);
                self.folded_gone
                    .entry(c.clone())
                    .or_insert(row)
                    .absorb(p, false);
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.reset_counters();
                    p.own_series = true;
                }
            }
        }
    }

    /// The series rows of `/metrics`: every process with its own, then one `pid="other"`
    /// row per container with summed processes (live and exited), and how many live ones
    /// each sums.
    pub fn rows(&self) -> (Vec<Row>, Vec<(String, u64)>) {
        let mut rows: Vec<(String, ProcStats)> = Vec::new();
        let mut others: BTreeMap<String, (ProcStats, u64)> = BTreeMap::new();
        for (c, gone) in &self.folded_gone {
            others.insert(c.clone(), (gone.clone(), 0));
        }
        for p in self.procs.values() {
            match (&p.identity.container, p.own_series) {
                (Some(c), false) => {
                    let e = others.entry(c.clone()).or_insert_with(|| (other_row(p), 0));
                    e.0.absorb(p, true);
                    e.1 += 1;
                }
                _ => rows.push((p.labels(), p.clone())),
            }
        }
        let mut folded = Vec::new();
        for (_, (o, n)) in others {
            let ids = procstat::identity_labels(&o.identity);
            folded.push((ids[1..].to_string(), n));
            rows.push((o.labels(), o));
        }
        (rows, folded)
    }
}

/// An empty `pid="other"` row for `p`'s container.
fn other_row(p: &ProcStats) -> ProcStats {
    let mut o = ProcStats::new(0, 0, "other".into());
    o.identity = crate::identity::Identity {
        container: p.identity.container.clone(),
        runtime: p.identity.runtime,
        pod_uid: p.identity.pod_uid.clone(),
        pod: p.identity.pod.clone(),
        namespace: p.identity.namespace.clone(),
        ..Default::default()
    };
    o
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
    let mut targets = Targets {
        per_container: args.max_processes_per_container as usize,
        ..Targets::default()
    };
    for &pid in &args.pid {
        let info = system::process_info(pid)?;
        if info.tgid != info.pid {
            return Err(Error::Usage(format!(
                "{pid} is a thread of process {}; pass the process id: --pid {}",
                info.tgid, info.tgid
            )));
        }
        targets.explicit.insert(pid);
        let mut p = ProcStats::new(pid, info.start_ticks, info.comm);
        p.identity = crate::identity::of_process(pid);
        targets.procs.insert(pid, p);
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
    let exits = apply_pass(
        &mut t,
        samples,
        listed,
        max_targets,
        &crate::identity::of_process,
    );
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
/// `max_targets`, each with fresh metrics and its container and pod (`identity_of`).
/// Returns how many targets exited.
pub fn apply_pass(
    t: &mut Targets,
    observed: Vec<Observation>,
    listed: Option<Vec<(u32, u64, String)>>,
    max_targets: usize,
    identity_of: &dyn Fn(u32) -> crate::identity::Identity,
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
                    t.remove(pid);
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
            let mut p = ProcStats::new(pid, start, comm);
            p.identity = identity_of(pid);
            t.add(p);
        }
        t.untracked = untracked;
    }
    t.promote();
    exits
}

/// The `/metrics` text: the per-process families, then the agent's own.
pub fn metrics_text(shared: &Shared) -> String {
    let (rows, folded) = {
        let t = shared.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.rows()
    };
    let rows: Vec<(String, &ProcStats)> = rows.iter().map(|(l, p)| (l.clone(), p)).collect();
    let mut out = procstat::render_rows(&rows);
    out.push_str(&procstat::render_folded(&folded));
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

    fn no_identity(_: u32) -> crate::identity::Identity {
        crate::identity::Identity::default()
    }

    /// pids 10-14 in container "c1", 20 in "c2", 30 on the host.
    fn in_containers(pid: u32) -> crate::identity::Identity {
        let container = match pid {
            10..=19 => Some("c1".to_string()),
            20..=29 => Some("c2".to_string()),
            _ => None,
        };
        crate::identity::Identity {
            pod: container.as_ref().map(|c| format!("pod-{c}")),
            container,
            ..Default::default()
        }
    }

    #[test]
    fn a_containers_processes_beyond_the_bound_are_summed() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut t = Targets {
            per_container: 2,
            ..Targets::default()
        };
        let listed = |pids: &[u32]| -> Vec<(u32, u64, String)> {
            pids.iter().map(|&p| (p, 1, format!("p{p}"))).collect()
        };
        let all = [10, 11, 12, 13, 20, 30];
        apply_pass(&mut t, vec![], Some(listed(&all)), 100, &in_containers);
        let obs = |run_ns: u64, at| -> Vec<Observation> {
            all.iter()
                .map(|&p| (p, 1, Some(vec![thread(p, run_ns)]), at))
                .collect()
        };
        apply_pass(&mut t, obs(0, t0), None, 100, &in_containers);
        apply_pass(&mut t, obs(1_000_000_000, t1), None, 100, &in_containers);
        let (rows, folded) = t.rows();
        let labels: Vec<&str> = rows.iter().map(|(l, _)| l.as_str()).collect();
        // The first two of c1 have their own series; 12 and 13 are summed; c2 and the host
        // process are under the bound.
        assert_eq!(rows.len(), 5, "{labels:?}");
        assert!(labels.contains(&"pid=\"10\",comm=\"p10\",container=\"c1\",pod=\"pod-c1\""));
        assert!(labels.contains(&"pid=\"30\",comm=\"p30\""));
        let other = rows
            .iter()
            .find(|(l, _)| l.starts_with("pid=\"other\",comm=\"other\",container=\"c1\""))
            .map(|(_, p)| p)
            .expect("c1's other row");
        assert!((other.cpu_seconds - 2.0).abs() < 1e-9);
        assert_eq!(other.threads_by_state.iter().sum::<u64>(), 2);
        assert_eq!(
            folded,
            vec![("container=\"c1\",pod=\"pod-c1\"".to_string(), 2)]
        );
        // 12 (summed) and 10 (own) exit: the sum keeps 12's seconds (counters never go
        // back), 10's series goes, and its place goes to 13, the summed one left, whose
        // series start from zero while its 2 s so far stay in the sum.
        let t2 = t1 + Duration::from_secs(1);
        let mut o = obs(2_000_000_000, t2);
        o.retain(|x| x.0 != 10 && x.0 != 12);
        o.push((10, 1, None, t2));
        o.push((12, 1, None, t2));
        apply_pass(&mut t, o, None, 100, &in_containers);
        let (rows, folded) = t.rows();
        let other = rows
            .iter()
            .find(|(l, _)| l.contains("comm=\"other\""))
            .map(|(_, p)| p)
            .expect("c1's other row");
        assert!(
            (other.cpu_seconds - 3.0).abs() < 1e-9,
            "{}",
            other.cpu_seconds
        );
        assert_eq!(folded[0].1, 0);
        assert!(!rows.iter().any(|(l, _)| l.starts_with("pid=\"10\"")));
        assert!(t.procs[&13].own_series);
        assert_eq!(t.procs[&13].cpu_seconds, 0.0);
        // Its next second counts in its own series; the sum stays.
        let t3 = t2 + Duration::from_secs(1);
        let o: Vec<Observation> = [11, 13, 20, 30]
            .iter()
            .map(|&p| (p, 1, Some(vec![thread(p, 3_000_000_000)]), t3))
            .collect();
        apply_pass(&mut t, o, None, 100, &in_containers);
        assert!((t.procs[&13].cpu_seconds - 1.0).abs() < 1e-9);
        let (rows, _) = t.rows();
        let other = rows
            .iter()
            .find(|(l, _)| l.contains("comm=\"other\""))
            .map(|(_, p)| p)
            .expect("c1's sum of what exited");
        assert!((other.cpu_seconds - 3.0).abs() < 1e-9);
        // A new process of c1 is summed: its two places are taken.
        apply_pass(
            &mut t,
            vec![],
            Some(listed(&[11, 13, 14, 20, 30])),
            100,
            &in_containers,
        );
        assert!(!t.procs[&14].own_series);
        // The container's last process exits: its sum goes too.
        for p in [11, 13, 14] {
            apply_pass(&mut t, vec![(p, 1, None, t2)], None, 100, &in_containers);
        }
        let (rows, folded) = t.rows();
        assert!(folded.is_empty() && t.folded_gone.is_empty());
        assert!(!rows.iter().any(|(l, _)| l.contains("c1")));
        let text =
            procstat::render_rows(&rows.iter().map(|(l, p)| (l.clone(), p)).collect::<Vec<_>>());
        assert!(text.contains("container=\"c2\""), "{text}");
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
            &no_identity,
        );
        apply_pass(
            &mut t,
            vec![(5, 100, Some(vec![thread(5, 500_000_000)]), t1)],
            None,
            10,
            &no_identity,
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
            &no_identity,
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
        apply_pass(&mut t, vec![], Some(listed), 2, &no_identity);
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
