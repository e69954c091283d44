//! Many capture windows on one probe attachment: `agent serve`'s profile requests.
//!
//! Scrapers (Pyroscope, Alloy's `pyroscope.scrape`, a `go tool pprof` per pod) ask for
//! windows of different processes at overlapping times. Each used to get a collector of its
//! own (its programs verified, its maps allocated: about 150 MB of kernel memory each) or a
//! 429. Here one collector serves them all, on one thread that owns it:
//! 1. a request names a target ([`Target`]: a process or a group), one profile kind and a
//!    length. Its processes become targets next to those of the windows already open; the
//!    programs record what the open windows together ask for (the union of their flags; the
//!    CPU sampler while one wants CPU), and each window keeps only its processes' records
//!    (every record's key has its process);
//! 2. a process is in one window at a time: a request for the same target and length
//!    within [`COALESCE`] of a window's start (a scraper pulling every profile kind of a pod at
//!    once) joins that window and gets its own kind from it; any other request for a process
//!    already in a window is refused with the time left ([`Refused::InUse`]);
//! 3. at a window's end its processes stop being targets, their records are read, turned into
//!    raw profiles as a single window's are ([`super::assemble`]), and deleted with their
//!    per-thread state ([`Collector::forget_processes`]);
//! 4. the stack maps are shared: they are emptied when no window is open, and a new window
//!    waits for that once the user stacks map is half full (so a window never starts with
//!    too little room; counted in each profile's comments as the attachment's losses).
//!
//! The counters are the attachment's: a window's are what was counted while it was open, by
//! every window open then (its profile says how many).

use std::collections::HashSet;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use stallscope_common::{CONFIG_BLOCK, CONFIG_FOLLOW, CONFIG_MUTEX, CONFIG_OFFCPU, Config};

use super::{
    Assembly, CaptureSpec, Members, Records, SCAN_TICKS, TICK, Target, assemble, follow_group,
    look, refresh_members, sync_unwind_tables, take_followed, views,
};
use crate::{
    error::Error,
    kernel::{self, Collector, Counters},
    model::{ProfileKind, RawProfile},
    options::Rates,
    profiles::accounting,
    report::summary::EndReason,
    targets::{Joined, Member},
    unwind::{maps::MapsCache, tables::UnwindRegistry},
};

/// A request for the same target and length this soon after a window opened joins it.
pub const COALESCE: Duration = Duration::from_secs(2);

/// One profile request.
pub struct Request {
    pub target: Target,
    pub kind: ProfileKind,
    pub duration: Duration,
    pub reply: tokio::sync::oneshot::Sender<Result<Outcome, Refused>>,
}

/// What a request gets: its raw profile and what the symbolizer and `/metrics` need.
pub struct Outcome {
    pub raw: RawProfile,
    /// The mutex profile's waiter side.
    pub lock_waiters: Option<RawProfile>,
    pub maps: Arc<MapsCache>,
    /// What the attachment counted while the window was open.
    pub counters: Counters,
    /// What it counted since the previous window ended (for cumulative metrics: each event
    /// once however many windows saw it).
    pub new_counters: Counters,
    pub map_fill: Vec<kernel::MapFill>,
    pub program_stats: Vec<kernel::ProgramStats>,
    pub end: EndReason,
    /// The most windows open at once while this one was.
    pub peers: usize,
    pub members: Vec<Member>,
    pub elapsed: Duration,
}

/// Why a request got no window.
#[derive(Debug)]
pub enum Refused {
    /// A process of the target is in another window, which ends in `seconds_left`.
    InUse { pid: u32, seconds_left: u64 },
    /// As many windows as allowed are open.
    Full { max: usize },
    /// The window failed.
    Failed(Error),
}

/// Starts the thread that owns `collector` (its programs loaded) and serves windows on it.
pub fn spawn(
    collector: Collector,
    rates: Rates,
    max_windows: usize,
    bpf_stats: bool,
) -> Result<mpsc::Sender<Request>, Error> {
    let (tx, rx) = mpsc::channel();
    let session = Session {
        collector,
        unwind: UnwindRegistry::new(),
        rates,
        max_windows,
        bpf_stats,
        stats: None,
        windows: Vec::new(),
        pending: Vec::new(),
        attached: Attached::default(),
        last_counters: Counters::default(),
        dirty: true,
    };
    std::thread::Builder::new()
        .name("profile-windows".into())
        .spawn(move || session.run(rx))
        .map_err(|e| Error::internal("starting the profile window thread", e))?;
    Ok(tx)
}

/// What is attached now.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
struct Attached {
    cpu: bool,
    offcpu: bool,
    follow: bool,
    /// The `Config` flags set.
    flags: u64,
}

struct Session {
    collector: Collector,
    unwind: UnwindRegistry,
    rates: Rates,
    max_windows: usize,
    bpf_stats: bool,
    stats: Option<std::os::fd::OwnedFd>,
    windows: Vec<Open>,
    /// Requests waiting for the stack maps to be emptied.
    pending: Vec<Request>,
    attached: Attached,
    /// The counters when the last window ended.
    last_counters: Counters,
    /// The maps hold something from an earlier window.
    dirty: bool,
}

/// One open window.
struct Open {
    target: Target,
    spec: CaptureSpec,
    members: Members,
    maps: MapsCache,
    start_views: Vec<accounting::ThreadView>,
    t0_ktime: u64,
    t0: Instant,
    started: SystemTime,
    at_open: Counters,
    waiters: Vec<(
        ProfileKind,
        tokio::sync::oneshot::Sender<Result<Outcome, Refused>>,
    )>,
    ticks: u32,
    end: Option<EndReason>,
    peers: usize,
    /// Kinds added by a request that joined the window, and how long after its start.
    late: Vec<(ProfileKind, Duration)>,
}

impl Open {
    fn deadline(&self) -> Instant {
        self.t0 + self.spec.duration
    }

    fn flags(&self) -> u64 {
        self.spec.profiles.iter().fold(0, |f, k| f | kind_flag(*k))
    }
}

fn kind_flag(k: ProfileKind) -> u64 {
    match k {
        ProfileKind::Cpu => 0,
        ProfileKind::Offcpu => CONFIG_OFFCPU,
        ProfileKind::Block => CONFIG_BLOCK,
        ProfileKind::Mutex => CONFIG_MUTEX,
    }
}

impl Session {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let now = Instant::now();
            let mut wake = next_tick;
            for w in &self.windows {
                wake = wake.min(w.deadline());
            }
            match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(req) => self.request(req),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TICK;
            }
            self.close_due();
        }
        for w in &mut self.windows {
            w.end = Some(EndReason::Interrupted);
        }
        self.close_due();
    }

    fn request(&mut self, req: Request) {
        let pids: HashSet<u32> = std::iter::once(req.target.lead.pid)
            .chain(req.target.selector.resolve())
            .collect();
        if let Some(w) = self
            .windows
            .iter_mut()
            .find(|w| w.members.live().any(|p| pids.contains(&p)))
        {
            let same = w.target.selector == req.target.selector
                && w.spec.duration == req.duration
                && w.t0.elapsed() < COALESCE;
            if same {
                if !w.spec.profiles.contains(&req.kind) {
                    w.late.push((req.kind, w.t0.elapsed()));
                    w.spec.profiles.push(req.kind);
                    w.spec.profiles.sort_by_key(|k| *k as u8);
                }
                w.waiters.push((req.kind, req.reply));
                if let Err(e) = self.reattach() {
                    tracing::warn!("attaching for a joined request: {e}");
                }
                return;
            }
            let pid = w
                .members
                .live()
                .find(|p| pids.contains(p))
                .unwrap_or(req.target.lead.pid);
            let left = w.deadline().saturating_duration_since(Instant::now());
            let _ = req.reply.send(Err(Refused::InUse {
                pid,
                seconds_left: left.as_secs() + 1,
            }));
            return;
        }
        if self.windows.len() + self.pending.len() >= self.max_windows {
            let _ = req.reply.send(Err(Refused::Full {
                max: self.max_windows,
            }));
            return;
        }
        if !self.windows.is_empty() && self.stacks_half_full() {
            self.pending.push(req);
            return;
        }
        if let Err(e) = self.open(req.target, req.kind, req.duration, req.reply) {
            tracing::warn!("opening a profile window: {e:?}");
        }
    }

    /// The user stacks map is at least half full (new windows wait for it to be emptied).
    fn stacks_half_full(&self) -> bool {
        self.collector
            .map_fill()
            .iter()
            .find(|f| f.map == <stallscope_common::maps::USER_STACKS as stallscope_common::maps::MapSpec>::NAME)
            .is_some_and(|f| f.entries * 2 >= f.max_entries)
    }

    fn open(
        &mut self,
        target: Target,
        kind: ProfileKind,
        duration: Duration,
        reply: tokio::sync::oneshot::Sender<Result<Outcome, Refused>>,
    ) -> Result<(), ()> {
        let fail = |reply: tokio::sync::oneshot::Sender<Result<Outcome, Refused>>, e: Error| {
            let _ = reply.send(Err(Refused::Failed(e)));
        };
        if self.windows.is_empty() && self.dirty {
            if let Err(e) = self.collector.reset_window() {
                fail(reply, e);
                return Err(());
            }
            self.last_counters = Counters::default();
            self.dirty = false;
        }
        if self.windows.is_empty() && self.bpf_stats && self.stats.is_none() {
            self.stats = kernel::enable_bpf_stats()
                .map_err(|e| tracing::warn!("{e}"))
                .ok();
        }
        let spec = CaptureSpec {
            profiles: vec![kind],
            duration,
            rates: self.rates,
            offcpu_min_ns: 0,
            tid_labels: true,
            dumps: None,
        };
        let group = target.selector.is_group();
        let mut pids = vec![target.lead.pid];
        if group {
            pids.extend(target.selector.resolve());
            pids.sort_unstable();
            pids.dedup();
        }
        // The slow part (reading mappings, compiling unwind tables) before the window opens.
        let mut maps = MapsCache::new();
        for &pid in &pids {
            if maps.refresh(pid).is_ok()
                && let Err(e) =
                    sync_unwind_tables(&mut self.collector, &mut self.unwind, &maps, pid)
            {
                tracing::warn!("unwind tables of {pid}: {e}");
            }
        }
        let w = Open {
            target,
            spec,
            members: Members::default(),
            maps,
            start_views: Vec::new(),
            t0_ktime: 0,
            t0: Instant::now(),
            started: SystemTime::now(),
            at_open: Counters::default(),
            waiters: vec![(kind, reply)],
            ticks: 0,
            end: None,
            peers: self.windows.len() + 1,
            late: Vec::new(),
        };
        self.dirty = true;
        let flags = w.flags();
        self.windows.push(w);
        if let Err(e) = self.reattach() {
            let w = self.windows.pop().expect("pushed above");
            for (_, r) in w.waiters {
                fail(r, Error::internal("attaching the probes", e.chain()));
            }
            let _ = self.reattach();
            return Err(());
        }
        let mut w = self.windows.pop().expect("pushed above");
        // The window opens now: its processes become targets, then every thread is looked
        // at once, the probes recording (as a single window's first look).
        w.t0 = Instant::now();
        w.started = SystemTime::now();
        w.t0_ktime = kernel::ktime_now();
        w.at_open = self.collector.counters().unwrap_or_default();
        let stacks = flags & CONFIG_OFFCPU != 0;
        for &pid in &pids {
            let joined = w.members.join(
                &mut self.collector,
                &mut self.unwind,
                &mut w.maps,
                pid,
                Joined::AtStart,
                None,
            );
            match joined {
                Ok(_) => {}
                Err(e) if pid == w.target.lead.pid => {
                    self.forget(&w, &HashSet::new());
                    for (_, r) in w.waiters {
                        fail(r, Error::internal("adding the target", e.chain()));
                    }
                    let _ = self.reattach();
                    return Err(());
                }
                Err(e) => tracing::warn!("adding member {pid}: {e}"),
            }
        }
        if w.spec.profiles.contains(&ProfileKind::Block)
            || w.spec.profiles.contains(&ProfileKind::Mutex)
        {
            w.members.follow_goroutines(&mut self.collector);
        }
        // Every member's threads first, their stacks after (as a single window's first look).
        let start_tasks = look(&mut self.collector, &w.members);
        w.start_views = views(&start_tasks, &w.maps, stacks);
        let open = self.windows.len() + 1;
        for other in &mut self.windows {
            other.peers = other.peers.max(open);
        }
        w.peers = open;
        tracing::info!(
            "profile window of {} for {:?}: {:?} ({} open)",
            w.target.selector.describe(),
            w.spec.duration,
            w.spec.profiles,
            self.windows.len() + 1
        );
        self.windows.push(w);
        Ok(())
    }

    /// Attaches what the open windows together ask for and detaches the rest.
    fn reattach(&mut self) -> Result<(), Error> {
        let cpu = self
            .windows
            .iter()
            .any(|w| w.spec.profiles.contains(&ProfileKind::Cpu));
        let flags = self.windows.iter().fold(0, |f, w| f | w.flags());
        let offcpu = flags != 0;
        let follow = self.windows.iter().any(|w| w.target.selector.is_group());
        if cpu && !self.attached.cpu {
            self.collector.start_cpu(self.rates.frequency_hz)?;
            self.attached.cpu = true;
        } else if !cpu && self.attached.cpu {
            self.collector.stop_cpu();
            self.attached.cpu = false;
        }
        // The off-CPU programs and the fork follower detach together.
        if (self.attached.offcpu && !offcpu) || (self.attached.follow && !follow) {
            self.collector.stop_offcpu();
            self.attached.offcpu = false;
            self.attached.follow = false;
        }
        if offcpu && !self.attached.offcpu {
            self.collector.start_offcpu()?;
            self.attached.offcpu = true;
        }
        if follow && !self.attached.follow {
            self.collector.start_follow()?;
            self.attached.follow = true;
        }
        let flags = flags | if follow { CONFIG_FOLLOW } else { 0 };
        if flags != self.attached.flags {
            self.collector.set_config(if flags == 0 {
                Config::default()
            } else {
                Config {
                    window_start_ns: kernel::ktime_now(),
                    ..self.rates.config(flags, 0)
                }
            })?;
            self.attached.flags = flags;
        }
        Ok(())
    }

    fn tick(&mut self) {
        if self.windows.is_empty() {
            if !self.pending.is_empty() {
                // Through `request` again: two of them may be for one process.
                for req in std::mem::take(&mut self.pending) {
                    self.request(req);
                }
            }
            return;
        }
        let forked = if self.attached.follow {
            take_followed(&mut self.collector)
        } else {
            Vec::new()
        };
        // A fork of a process of a single-process window is made a target by the kernel
        // (the follower is on for another window): no window wants it.
        let mut unclaimed = HashSet::new();
        for &(child, parent) in &forked {
            let claimed = self
                .windows
                .iter()
                .any(|w| w.target.selector.is_group() && w.members.by_pid.contains_key(&parent));
            if !claimed {
                let _ = self.collector.remove_target(child);
                unclaimed.insert(child);
            }
        }
        if !unclaimed.is_empty() {
            let _ = self.collector.forget_processes(&unclaimed, &HashSet::new());
        }
        for w in &mut self.windows {
            w.ticks += 1;
            w.members.reap(&mut self.collector);
            let group = w.target.selector.is_group();
            if !group && w.members.live().next().is_none() {
                w.end = Some(EndReason::TargetExited);
                continue;
            }
            if group {
                let mine: Vec<(u32, u32)> = forked
                    .iter()
                    .copied()
                    .filter(|(_, parent)| w.members.by_pid.contains_key(parent))
                    .collect();
                let stacks = w.flags() & CONFIG_OFFCPU != 0;
                follow_group(
                    &mut self.collector,
                    &mut self.unwind,
                    &mut w.maps,
                    &mut w.members,
                    &w.target.selector,
                    w.ticks.is_multiple_of(SCAN_TICKS),
                    &mut w.start_views,
                    stacks,
                    &mine,
                );
                if w.target.selector.root_pid().is_some() && w.members.live().next().is_none() {
                    w.end = Some(EndReason::TargetExited);
                    continue;
                }
            }
            refresh_members(
                &mut self.collector,
                &mut self.unwind,
                &mut w.maps,
                &w.members,
            );
            // The hit counter is the attachment's: another window's Go program counts too.
            if w.ticks.is_multiple_of(4) {
                let limit = w.spec.rates.go_probe_limit;
                w.members
                    .check_go_cost(&mut self.collector, limit, w.t0.elapsed());
            }
        }
    }

    /// Ends the windows whose time is up (or whose target exited).
    fn close_due(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.windows.len() {
            let w = &self.windows[i];
            if w.end.is_some() || now >= w.deadline() {
                let w = self.windows.remove(i);
                self.close(w);
            } else {
                i += 1;
            }
        }
    }

    fn close(&mut self, mut w: Open) {
        let end = w.end.unwrap_or(EndReason::Completed);
        // The last look at its threads with the probes still on, then its end time.
        let end_tasks = look(&mut self.collector, &w.members);
        let end_ts = kernel::ktime_now();
        let elapsed = w.t0.elapsed();
        for &pid in w.members.by_pid.keys() {
            let _ = self.collector.remove_target(pid);
            self.collector.detach_go(pid);
        }
        let program_stats = self.collector.program_stats();
        let stacks = w.flags() & CONFIG_OFFCPU != 0;
        let end_views = views(&end_tasks, &w.maps, stacks);
        let pids: HashSet<u32> = w.members.by_pid.keys().copied().collect();
        let wants = |k: ProfileKind| w.spec.profiles.contains(&k);
        let read = Records::read(&self.collector, self.attached.offcpu, &wants, |tgid| {
            pids.contains(&tgid)
        });
        let tids: HashSet<u32> = w
            .start_views
            .iter()
            .chain(&end_views)
            .map(|v| v.tid)
            .collect();
        self.forget(&w, &tids);
        let mut records = match read {
            Ok(r) => r,
            Err(e) => {
                let msg = e.chain();
                for (_, r) in w.waiters.drain(..) {
                    let _ = r.send(Err(Refused::Failed(Error::internal(
                        "reading the window's records",
                        msg.clone(),
                    ))));
                }
                let _ = self.reattach();
                self.idle_if_empty();
                return;
            }
        };
        let cumulative = records.counters.clone();
        let new_counters = cumulative.since(&self.last_counters);
        self.last_counters = cumulative.clone();
        records.counters = cumulative.since(&w.at_open);
        let group = w.target.selector.is_group();
        let mut assembled = assemble(
            records,
            &Assembly {
                start_views: &w.start_views,
                end_views: &end_views,
                t0_ktime: w.t0_ktime,
                end_ts,
                started: w.started,
                elapsed,
                group,
            },
            &w.members,
            &w.spec,
        );
        if w.peers > 1 {
            for raw in assembled
                .raws
                .iter_mut()
                .chain(assembled.lock_waiters.iter_mut())
            {
                raw.comments.push(format!(
                    "the probes were shared by up to {} profile windows: the event and loss \
                     counters above are theirs together",
                    w.peers
                ));
            }
        }
        for (kind, after) in &w.late {
            if let Some(raw) = assembled.raws.iter_mut().find(|r| r.kind == *kind) {
                raw.comments.push(format!(
                    "this request joined a window opened {:.1} s earlier for another profile of \
                     the same target: its {} events are recorded from then",
                    after.as_secs_f64(),
                    kind.name()
                ));
            }
        }
        let maps = Arc::new(std::mem::take(&mut w.maps));
        let members: Vec<Member> = std::mem::take(&mut w.members.by_pid)
            .into_values()
            .collect();
        // Counted once, by the window's first request.
        let mut new_counters = Some(new_counters);
        for (kind, reply) in w.waiters.drain(..) {
            let raw = assembled.raws.iter().find(|r| r.kind == kind).cloned();
            let out = match raw {
                Some(raw) => Ok(Outcome {
                    raw,
                    lock_waiters: if kind == ProfileKind::Mutex {
                        assembled.lock_waiters.clone()
                    } else {
                        None
                    },
                    maps: Arc::clone(&maps),
                    counters: assembled.counters.clone(),
                    new_counters: new_counters.take().unwrap_or_default(),
                    map_fill: assembled.map_fill.clone(),
                    program_stats: program_stats.clone(),
                    end,
                    peers: w.peers,
                    members: members.clone(),
                    elapsed,
                }),
                None => Err(Refused::Failed(Error::bug(format!(
                    "no {} profile assembled",
                    kind.name()
                )))),
            };
            let _ = reply.send(out);
        }
        if let Err(e) = self.reattach() {
            tracing::warn!("detaching after a window: {e}");
        }
        self.idle_if_empty();
    }

    /// Deletes a closed window's records and per-thread state.
    fn forget(&mut self, w: &Open, tids: &HashSet<u32>) {
        let pids: HashSet<u32> = w.members.by_pid.keys().copied().collect();
        for &pid in &pids {
            let _ = self.collector.remove_target(pid);
        }
        if let Err(e) = self.collector.forget_processes(&pids, tids) {
            tracing::warn!("deleting a window's records: {e}");
        }
    }

    /// With no window open: everything detached, statistics off, the maps emptied at the
    /// next window's start.
    fn idle_if_empty(&mut self) {
        if self.windows.is_empty() {
            self.stats = None;
            if self.pending.is_empty() {
                return;
            }
            for req in std::mem::take(&mut self.pending) {
                self.request(req);
            }
        }
    }
}
