//! Profile windows for `agent serve`: a small pool of long-lived collectors (each loaded and
//! verified once, at start, in the background; `--max-concurrent-profiles` of them), and one
//! thread that owns the symbolizer (blazesym's is not `Send`) and takes thread dumps.
//!
//! A request takes a free collector or gets "busy" (HTTP 429); the window attaches the
//! probes, detaches them when `seconds` are over (or the target exits, or the client leaves:
//! the window's future is dropped and the collector's attach state is reset at the next use
//! and on drop), then the records go to the symbolizer thread and come back as pprof bytes.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, oneshot};

use crate::cli::ServeArgs;
use crate::dump;
use crate::dump::DumpFormat;
use crate::error::Error;
use crate::export;
use crate::kernel::Collector;
use crate::model::{ProfileKind, RawProfile};
use crate::options::Rates;
use crate::symbolize::Symbolizer;
use crate::unwind::maps::MapsCache;
use crate::unwind::tables::UnwindRegistry;
use crate::window::{self, CaptureSpec, Captured};

use super::health::Health;

/// A loaded collector and the unwind tables it holds.
struct Slot {
    collector: Collector,
    unwind: UnwindRegistry,
}

enum SlotState {
    Loading,
    Ready(Box<Slot>),
    Failed(String),
}

struct ProfileJob {
    kind: ProfileKind,
    raws: Vec<RawProfile>,
    waiters: Option<RawProfile>,
    maps: MapsCache,
    pid: u32,
    comments: Vec<String>,
    reply: oneshot::Sender<Result<Vec<u8>, String>>,
}

enum Job {
    Profile(Box<ProfileJob>),
    Dump {
        pid: u32,
        debug: u8,
        reply: oneshot::Sender<Result<String, Error>>,
    },
}

pub struct Profiler {
    permits: Arc<Semaphore>,
    slots: Vec<Arc<Mutex<SlotState>>>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    health: Health,
    rates: Rates,
    bpf_stats: bool,
}

/// Why a profile request failed.
#[derive(Debug)]
pub enum ProfileError {
    /// Every collector is in use.
    Busy,
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

fn load_slot(map_entries: u32) -> Result<Slot, Error> {
    let mut collector = Collector::load(crate::kernel::offsets::scheduler_offsets()?, map_entries)?;
    collector.load_programs(true, true)?;
    Ok(Slot {
        collector,
        unwind: UnwindRegistry::new(),
    })
}

impl Profiler {
    /// Starts loading the collectors in the background and the symbolizer thread.
    pub fn start(args: &ServeArgs, health: Health) -> Result<Self, Error> {
        let n = args.max_concurrent_profiles as usize;
        let map_entries = args.rates.map_entries;
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let slot = Arc::new(Mutex::new(SlotState::Loading));
            // Held by the loader until the programs are verified: a request waits for it.
            let guard = Arc::clone(&slot)
                .try_lock_owned()
                .map_err(|_| Error::bug("collector slot already locked"))?;
            let h = health.clone();
            h.profile_windows.with_label_values(&["loading"]).inc();
            tokio::spawn(async move {
                let mut guard = guard;
                let t0 = std::time::Instant::now();
                let loaded = tokio::task::spawn_blocking(move || load_slot(map_entries)).await;
                h.profile_windows.with_label_values(&["loading"]).dec();
                *guard = match loaded {
                    Ok(Ok(slot)) => {
                        h.profile_windows.with_label_values(&["ready"]).inc();
                        eprintln!(
                            "stallscope: profiles ready (BPF programs of collector {i} verified in {:.1} s)",
                            t0.elapsed().as_secs_f64()
                        );
                        SlotState::Ready(Box::new(slot))
                    }
                    Ok(Err(e)) => {
                        h.profile_windows.with_label_values(&["failed"]).inc();
                        tracing::warn!("loading profile collector {i}: {e}");
                        SlotState::Failed(e.to_string())
                    }
                    Err(e) => {
                        h.profile_windows.with_label_values(&["failed"]).inc();
                        SlotState::Failed(format!("loading thread failed: {e}"))
                    }
                };
            });
            slots.push(slot);
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let h = health.clone();
        std::thread::Builder::new()
            .name("symbolizer".into())
            .spawn(move || symbolizer_thread(rx, h))
            .map_err(|e| Error::internal("starting the symbolizer thread", e))?;
        Ok(Self {
            permits: Arc::new(Semaphore::new(n)),
            slots,
            jobs: std::sync::Mutex::new(tx),
            health,
            rates: args.rates,
            bpf_stats: args.bpf_stats,
        })
    }

    /// A permit for one window, or `Busy`.
    pub fn try_permit(&self) -> Result<OwnedSemaphorePermit, ProfileError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ProfileError::Busy)
    }

    fn send(&self, job: Job) -> Result<(), ProfileError> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))
    }

    /// Takes one profile of `pid` for `seconds` and returns it as gzipped pprof bytes.
    pub async fn profile(
        &self,
        _permit: OwnedSemaphorePermit,
        kind: ProfileKind,
        pid: u32,
        seconds: Duration,
        mut comments: Vec<String>,
    ) -> Result<Vec<u8>, ProfileError> {
        let target = window::check_target(pid)?;
        let mut maps = MapsCache::new();
        maps.refresh(pid)
            .map_err(|e| Error::proc_read(pid, "maps", &e))?;
        // The permit guarantees a free slot; find it.
        let (index, mut guard) = 'found: {
            for (i, s) in self.slots.iter().enumerate() {
                if let Ok(g) = Arc::clone(s).try_lock_owned() {
                    break 'found (i, g);
                }
            }
            // A slot still loading holds its lock: wait for the first one.
            (0, Arc::clone(&self.slots[0]).lock_owned().await)
        };
        if matches!(*guard, SlotState::Failed(_)) {
            // Loading failed at start (say, a transient error): try once more now.
            let map_entries = self.rates.map_entries;
            *guard = match tokio::task::spawn_blocking(move || load_slot(map_entries)).await {
                Ok(Ok(s)) => SlotState::Ready(Box::new(s)),
                Ok(Err(e)) => SlotState::Failed(e.to_string()),
                Err(e) => SlotState::Failed(e.to_string()),
            };
        }
        let slot = match &mut *guard {
            SlotState::Ready(slot) => slot,
            SlotState::Failed(e) => {
                return Err(ProfileError::Internal(format!(
                    "the BPF programs could not be loaded: {e}"
                )));
            }
            SlotState::Loading => {
                return Err(ProfileError::Internal("collector still loading".into()));
            }
        };
        // Start from empty maps and zeroed counters (the previous window's are still there).
        slot.collector.reset_window()?;
        let spec = CaptureSpec {
            profiles: vec![kind],
            duration: seconds,
            rates: self.rates,
            offcpu_min_ns: 0,
            tid_labels: true,
            dumps: None,
        };
        // Statistics on for the window only (they cost every BPF program on the machine).
        let stats = if self.bpf_stats {
            crate::kernel::enable_bpf_stats()
                .map_err(|e| tracing::warn!("{e}"))
                .ok()
        } else {
            None
        };
        self.health.profiles_active.inc();
        let started = std::time::Instant::now();
        let result = window::capture_with(
            &mut slot.collector,
            &mut slot.unwind,
            maps,
            &window::Target::single(target.clone()),
            &spec,
            std::future::pending::<()>(),
            false,
        )
        .await;
        drop(stats);
        self.health.profiles_active.dec();
        self.health
            .profile_seconds
            .with_label_values(&[kind_name(kind)])
            .inc_by(started.elapsed().as_secs_f64());
        let Captured {
            raws,
            lock_waiters,
            maps,
            counters,
            map_fill,
            program_stats,
            end,
            ..
        } = result?;
        drop(guard);
        self.health
            .record_window(index, &counters, &map_fill, &program_stats);
        if end == crate::report::summary::EndReason::TargetExited {
            comments.push(format!("process {pid} exited during the window"));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Job::Profile(Box::new(ProfileJob {
            kind,
            raws,
            waiters: lock_waiters,
            maps,
            pid,
            comments,
            reply,
        })))?;
        rx.await
            .map_err(|_| ProfileError::Internal("the symbolizer thread is gone".into()))?
            .map_err(ProfileError::Internal)
    }

    /// A thread dump of `pid` as text (`debug` 1: grouped, 2: every thread).
    pub async fn dump(&self, pid: u32, debug: u8) -> Result<String, ProfileError> {
        window::check_target(pid)?;
        let (reply, rx) = oneshot::channel();
        self.send(Job::Dump { pid, debug, reply })?;
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
                    raws,
                    waiters,
                    maps,
                    pid,
                    comments,
                    reply,
                } = *job;
                let out = symbolize_one(&mut symbolizer, kind, raws, waiters, &maps, pid, comments);
                let _ = reply.send(out);
            }
            Job::Dump { pid, debug, reply } => {
                let out = (|| {
                    if dump_collector.is_none() {
                        dump_collector = Some(Collector::load(
                            crate::kernel::offsets::scheduler_offsets()?,
                            crate::kernel::DEFAULT_MAP_ENTRIES,
                        )?);
                    }
                    let collector = dump_collector.as_mut().expect("set above");
                    let mut maps = MapsCache::new();
                    maps.refresh(pid)
                        .map_err(|e| Error::proc_read(pid, "maps", &e))?;
                    let d = dump::take_dump(collector, pid, &maps, &mut symbolizer)?;
                    let detail = if debug == 1 {
                        dump::Detail::Grouped
                    } else {
                        dump::Detail::EveryThread
                    };
                    Ok(dump::render(&d, DumpFormat::Text, detail))
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
    raws: Vec<RawProfile>,
    waiters: Option<RawProfile>,
    maps: &MapsCache,
    pid: u32,
    comments: Vec<String>,
) -> Result<Vec<u8>, String> {
    let raw = raws
        .into_iter()
        .find(|r| r.kind == kind)
        .ok_or_else(|| format!("no {} profile was recorded", kind.name()))?;
    let mut profile = symbolizer.symbolize(raw, maps);
    crate::profiles::locks::classify_futex_waits(&mut profile);
    if kind == ProfileKind::Mutex
        && let Some(w) = waiters
    {
        let waiters = symbolizer.symbolize(w, maps);
        window::finish::prepare_mutex(&mut profile, &waiters, symbolizer, maps, pid, 0);
    }
    profile.comments.extend(comments);
    export::pprof::encode(&profile).map_err(|e| format!("encoding the profile: {e}"))
}
