//! Profile windows for `agent serve`: one long-lived collector (loaded and verified once, at
//! start, in the background) serving every request's window at once
//! ([`crate::window::shared`]: up to `--max-concurrent-profiles` windows share one probe
//! attachment), and one thread that owns the symbolizer (blazesym's is not `Send`) and takes
//! thread dumps.
//!
//! A request's window runs to its end even if the client leaves (its reply is dropped); the
//! records go to the symbolizer thread and come back as pprof bytes.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::{Mutex, oneshot};

use crate::cli::ServeArgs;
use crate::dump;
use crate::dump::DumpFormat;
use crate::error::Error;
use crate::export;
use crate::kernel::Collector;
use crate::model::{ProfileKind, RawProfile};
use crate::options::Rates;
use crate::symbolize::Symbolizer;
use crate::targets::Selector;
use crate::unwind::maps::MapsCache;
use crate::window::{self, shared};

use super::health::Health;

enum SessionState {
    Loading,
    Ready(mpsc::Sender<shared::Request>),
    Failed(String),
}

struct ProfileJob {
    kind: ProfileKind,
    raw: RawProfile,
    waiters: Option<RawProfile>,
    maps: Arc<MapsCache>,
    pid: u32,
    comments: Vec<String>,
    reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

enum Job {
    Profile(Box<ProfileJob>),
    Dump {
        selector: Selector,
        debug: u8,
        /// A Go program's goroutines where it is one (`/debug/pprof/goroutine`).
        goroutines: bool,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    /// Go's goroutine profile of one Go process, gzipped pprof.
    GoroutineProfile {
        pid: u32,
        reply: oneshot::Sender<Result<Vec<u8>, Error>>,
    },
}

pub struct Profiler {
    session: Arc<Mutex<SessionState>>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    health: Health,
    rates: Rates,
    bpf_stats: bool,
    max_windows: usize,
}

/// Why a profile request failed.
#[derive(Debug)]
pub enum ProfileError {
    /// No window now: why, and in how many seconds to retry.
    Busy {
        why: String,
        retry_after: u64,
    },
    /// The request names something unusable (no such process...).
    BadRequest(String),
    Internal(String),
}

impl From<Error> for ProfileError {
    fn from(e: Error) -> Self {
        match e {
            Error::Usage(m) => ProfileError::BadRequest(m),
            e @ (Error::NoSuchProcess(_)
            | Error::EmptyGroup { .. }
            | Error::Zombie { .. }
            | Error::KernelThread { .. }
            | Error::ProcDenied { .. }) => ProfileError::BadRequest(e.to_string()),
            e => ProfileError::Internal(e.chain()),
        }
    }
}

fn load_collector(map_entries: u32) -> Result<Collector, Error> {
    let mut collector = Collector::load(crate::kernel::offsets::scheduler_offsets()?, map_entries)?;
    collector.load_programs(true, true)?;
    if let Err(e) =
        crate::kernel::offsets::task_offsets().and_then(|_| collector.load_dump_iterator())
    {
        tracing::warn!("loading the task iterator: {e} (no seeded waits, no accounting)");
    }
    Ok(collector)
}

impl Profiler {
    /// Starts loading the collector in the background and the symbolizer thread.
    pub fn start(args: &ServeArgs, health: Health) -> Result<Self, Error> {
        let max_windows = args.max_concurrent_profiles as usize;
        let rates = args.rates;
        let bpf_stats = args.bpf_stats;
        let session = Arc::new(Mutex::new(SessionState::Loading));
        // Held by the loader until the programs are verified: a request waits for it.
        let guard = Arc::clone(&session)
            .try_lock_owned()
            .map_err(|_| Error::bug("profile session already locked"))?;
        let h = health.clone();
        h.profile_windows.with_label_values(&["loading"]).inc();
        tokio::spawn(async move {
            let mut guard = guard;
            let t0 = std::time::Instant::now();
            let started = tokio::task::spawn_blocking(move || {
                shared::spawn(
                    load_collector(rates.map_entries)?,
                    rates,
                    max_windows,
                    bpf_stats,
                )
            })
            .await;
            h.profile_windows.with_label_values(&["loading"]).dec();
            *guard = match started {
                Ok(Ok(tx)) => {
                    h.profile_windows.with_label_values(&["ready"]).inc();
                    eprintln!(
                        "stallscope: profiles ready (BPF programs verified in {:.1} s)",
                        t0.elapsed().as_secs_f64()
                    );
                    SessionState::Ready(tx)
                }
                Ok(Err(e)) => {
                    h.profile_windows.with_label_values(&["failed"]).inc();
                    tracing::warn!("loading the profile collector: {e}");
                    SessionState::Failed(e.to_string())
                }
                Err(e) => {
                    h.profile_windows.with_label_values(&["failed"]).inc();
                    SessionState::Failed(format!("loading thread failed: {e}"))
                }
            };
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let h = health.clone();
        std::thread::Builder::new()
            .name("symbolizer".into())
            .spawn(move || symbolizer_thread(rx, h))
            .map_err(|e| Error::internal("starting the symbolizer thread", e))?;
        Ok(Self {
            session,
            jobs: std::sync::Mutex::new(tx),
            health,
            rates,
            bpf_stats,
            max_windows,
        })
    }

    fn send(&self, job: Job) -> Result<(), ProfileError> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))
    }

    /// The window thread's inbox, once the programs are loaded (loading again if that failed
    /// at start, say on a transient error).
    async fn windows(&self) -> Result<mpsc::Sender<shared::Request>, ProfileError> {
        let mut guard = self.session.lock().await;
        if matches!(*guard, SessionState::Failed(_)) {
            let (rates, max, stats) = (self.rates, self.max_windows, self.bpf_stats);
            *guard = match tokio::task::spawn_blocking(move || {
                shared::spawn(load_collector(rates.map_entries)?, rates, max, stats)
            })
            .await
            {
                Ok(Ok(tx)) => SessionState::Ready(tx),
                Ok(Err(e)) => SessionState::Failed(e.to_string()),
                Err(e) => SessionState::Failed(e.to_string()),
            };
        }
        match &*guard {
            SessionState::Ready(tx) => Ok(tx.clone()),
            SessionState::Failed(e) => Err(ProfileError::Internal(format!(
                "the BPF programs could not be loaded: {e}"
            ))),
            SessionState::Loading => Err(ProfileError::Internal("collector still loading".into())),
        }
    }

    /// Takes one profile of `selector`'s processes for `seconds` and returns it as gzipped
    /// pprof bytes.
    pub async fn profile(
        &self,
        kind: ProfileKind,
        selector: Selector,
        seconds: Duration,
        mut comments: Vec<String>,
    ) -> Result<Vec<u8>, ProfileError> {
        let target = tokio::task::spawn_blocking(move || window::check_selector(&selector))
            .await
            .map_err(|e| ProfileError::Internal(e.to_string()))??;
        let lead = target.lead.pid;
        let describe = target.selector.describe();
        let windows = self.windows().await?;
        let (reply, rx) = oneshot::channel();
        windows
            .send(shared::Request {
                target,
                kind,
                duration: seconds,
                reply,
            })
            .map_err(|_| ProfileError::Internal("the profile window thread is gone".into()))?;
        self.health.profiles_active.inc();
        let started = std::time::Instant::now();
        let result = rx.await;
        self.health.profiles_active.dec();
        self.health
            .profile_seconds
            .with_label_values(&[kind_name(kind)])
            .inc_by(started.elapsed().as_secs_f64());
        let out = match result {
            Err(_) => {
                return Err(ProfileError::Internal(
                    "the profile window thread is gone".into(),
                ));
            }
            Ok(Err(shared::Refused::InUse { pid, seconds_left })) => {
                return Err(ProfileError::Busy {
                    why: format!(
                        "process {pid} of {describe} is in another profile window for \
                         {seconds_left} s more (a process is in one window at a time; the same \
                         target and seconds within {} s join it)",
                        shared::COALESCE.as_secs()
                    ),
                    retry_after: seconds_left,
                });
            }
            Ok(Err(shared::Refused::Full { max })) => {
                return Err(ProfileError::Busy {
                    why: format!(
                        "{max} profile windows are open (--max-concurrent-profiles); retry when \
                         one ends"
                    ),
                    retry_after: 5,
                });
            }
            Ok(Err(shared::Refused::Failed(e))) => return Err(e.into()),
            Ok(Ok(o)) => o,
        };
        self.health
            .record_window(0, &out.new_counters, &out.map_fill, &out.program_stats);
        if out.end == crate::report::summary::EndReason::TargetExited {
            comments.push(format!("{describe} exited during the window"));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Job::Profile(Box::new(ProfileJob {
            kind,
            raw: out.raw,
            waiters: out.lock_waiters,
            maps: out.maps,
            pid: lead,
            comments,
            reply,
        })))?;
        rx.await
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))?
            .map_err(ProfileError::Internal)
    }

    /// A thread dump of `selector`'s processes as text (`debug` 1: grouped, 2: every thread);
    /// with `goroutines`, a Go program's goroutines instead (`/debug/pprof/goroutine`).
    pub async fn dump(
        &self,
        selector: Selector,
        debug: u8,
        goroutines: bool,
    ) -> Result<String, ProfileError> {
        let s = selector.clone();
        tokio::task::spawn_blocking(move || window::check_selector(&s))
            .await
            .map_err(|e| ProfileError::Internal(e.to_string()))??;
        let (reply, rx) = oneshot::channel();
        self.send(Job::Dump {
            selector,
            debug,
            goroutines,
            reply,
        })?;
        Ok(rx
            .await
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))??)
    }
}

impl Profiler {
    /// Go's goroutine profile (pprof) of the Go process `selector` names
    /// (`/debug/pprof/goroutine` without `debug`).
    pub async fn goroutine_profile(&self, selector: Selector) -> Result<Vec<u8>, ProfileError> {
        let Selector::Pid(pid) = selector else {
            return Err(ProfileError::BadRequest(
                "the goroutine profile is of one process (pid=N); for a group, ask for its text \
                 with debug=1 or debug=2"
                    .into(),
            ));
        };
        let s = selector.clone();
        tokio::task::spawn_blocking(move || window::check_selector(&s))
            .await
            .map_err(|e| ProfileError::Internal(e.to_string()))??;
        let (reply, rx) = oneshot::channel();
        self.send(Job::GoroutineProfile { pid, reply })?;
        Ok(rx
            .await
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))??)
    }
}

/// Label value of a profile kind (the endpoint's name).
pub fn kind_name(kind: ProfileKind) -> &'static str {
    match kind {
        ProfileKind::Cpu => "profile",
        ProfileKind::Offcpu => "offcpu",
        ProfileKind::Block => "block",
        ProfileKind::Mutex => "mutex",
    }
}

/// Owns the symbolizer (and a collector for the dump iterator) for the agent's lifetime.
fn symbolizer_thread(rx: mpsc::Receiver<Job>, health: Health) {
    let mut symbolizer = Symbolizer::new();
    let mut dump_collector: Option<Collector> = None;
    while let Ok(job) = rx.recv() {
        match job {
            Job::Profile(job) => {
                let ProfileJob {
                    kind,
                    raw,
                    waiters,
                    maps,
                    pid,
                    comments,
                    reply,
                } = *job;
                let out = symbolize_one(&mut symbolizer, kind, raw, waiters, &maps, pid, comments);
                let _ = reply.send(out);
            }
            Job::Dump {
                selector,
                debug,
                goroutines,
                reply,
            } => {
                let out = (|| {
                    if dump_collector.is_none() {
                        dump_collector = Some(Collector::load(
                            crate::kernel::offsets::scheduler_offsets()?,
                            stallscope_common::AGG_MAP_ENTRIES,
                        )?);
                    }
                    let collector = dump_collector.as_mut().expect("set above");
                    let detail = if debug == 1 {
                        dump::Detail::Grouped
                    } else {
                        dump::Detail::EveryThread
                    };
                    let pids = match selector {
                        Selector::Pid(p) => vec![p],
                        ref s => s.resolve(),
                    };
                    let mut text = String::new();
                    let mut dumped = 0;
                    for &pid in &pids {
                        let mut maps = MapsCache::new();
                        if let Err(e) = maps.refresh(pid) {
                            if pids.len() == 1 {
                                return Err(Error::proc_read(pid, "maps", &e));
                            }
                            continue; // exited since the group was listed
                        }
                        if goroutines {
                            match dump::goroutines::try_dump(
                                pid,
                                &maps,
                                &mut symbolizer,
                                debug == 1,
                            ) {
                                Some(Ok(g)) => {
                                    text.push_str(&g);
                                    dumped += 1;
                                    continue;
                                }
                                Some(Err(why)) => text.push_str(&why),
                                None => {}
                            }
                        }
                        match dump::take_dump(collector, pid, &maps, &mut symbolizer) {
                            Ok(d) => {
                                text.push_str(&dump::render(&d, DumpFormat::Text, detail));
                                dumped += 1;
                            }
                            Err(e) if pids.len() == 1 => return Err(e),
                            Err(e) => tracing::debug!("dump of {pid}: {e}"),
                        }
                    }
                    if selector.is_group() {
                        text.insert_str(
                            0,
                            &format!("group: {}: {dumped} processes\n\n", selector.describe()),
                        );
                    }
                    Ok(text)
                })();
                let _ = reply.send(out);
            }
            Job::GoroutineProfile { pid, reply } => {
                let out = (|| {
                    let mut maps = MapsCache::new();
                    maps.refresh(pid)
                        .map_err(|e| Error::proc_read(pid, "maps", &e))?;
                    let exe = std::path::PathBuf::from(format!("/proc/{pid}/exe"));
                    if !dump::goroutines::is_go(&exe) {
                        return Err(Error::Usage(format!(
                            "process {pid} is not a Go program: it has no goroutines; its \
                             threads are at /debug/pprof/threads?pid={pid}"
                        )));
                    }
                    let p = dump::goroutines::goroutine_profile(pid, &maps, &mut symbolizer)
                        .map_err(|e| {
                            Error::Usage(format!(
                                "the goroutines of Go process {pid} could not be read: {e}; \
                                 its threads are at /debug/pprof/threads?pid={pid}"
                            ))
                        })?;
                    export::pprof::encode(&p)
                        .map_err(|e| Error::bug(format!("encoding the goroutine profile: {e}")))
                })();
                let _ = reply.send(out);
            }
        }
        health.set_symbolizer_files(symbolizer.cached_files());
    }
}

fn symbolize_one(
    symbolizer: &mut Symbolizer,
    kind: ProfileKind,
    raw: RawProfile,
    waiters: Option<RawProfile>,
    maps: &MapsCache,
    pid: u32,
    comments: Vec<String>,
) -> Result<Vec<u8>, String> {
    let mut profile = symbolizer.symbolize(raw, maps);
    crate::profiles::locks::prepare_go(&mut profile);
    crate::profiles::locks::classify_futex_waits(&mut profile);
    if kind == ProfileKind::Mutex
        && let Some(w) = waiters
    {
        let mut waiters = symbolizer.symbolize(w, maps);
        crate::profiles::locks::drop_go_runtime_futex(&mut waiters);
        window::finish::prepare_mutex(&mut profile, &waiters, symbolizer, maps, pid, 0);
    }
    profile.comments.extend(comments);
    export::pprof::encode(&profile).map_err(|e| format!("encoding the profile: {e}"))
}
