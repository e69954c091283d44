//! The capture window engine every command runs (`attach`, `capture`, `serve`'s profile
//! requests, the bench):
//! 1. [`check_target`]: privileges, BTF, a live process;
//! 2. [`capture`] (or [`capture_with`] on a long-lived collector): load the programs
//!    ([`crate::kernel`]), look at every thread once (the task iterator: waits that began before
//!    the window), attach what the [`CaptureSpec`] asks for, refresh the target's mappings and
//!    unwind tables while the window is open, answer dump requests, look at the threads again at
//!    the end, detach, and read the maps into raw profiles and the thread-seconds accounting:
//!    a [`Captured`];
//! 3. [`finish::write_profiles`]: symbolize, lock analysis, pprof and folded files, and each
//!    profile's summary section.

pub mod finish;
pub mod shared;

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use stallscope_common::{
    CONFIG_BLOCK, CONFIG_FOLLOW, CONFIG_MUTEX, CONFIG_OFFCPU, Config, dump::DumpTask,
};

use crate::{
    error::Error,
    kernel::{self, Collector},
    model::{ProfileKind, RawProfile},
    options::Rates,
    profiles::{self, Window, accounting},
    report::summary::{self as report, EndReason},
    symbolize::Symbolizer,
    system,
    targets::{Joined, Member, Selector},
    unwind::{maps::MapsCache, tables::UnwindRegistry},
};

/// How often the capture loop refreshes the target's memory maps and checks it is alive.
const TICK: Duration = Duration::from_millis(250);

/// A group's members are looked for in `/proc` every this many ticks (its members' forks are
/// followed by the kernel at once).
const SCAN_TICKS: u32 = 4;

/// What a window records: one process or a group ([`Selector`]), and the process named first
/// (the one named, or the group's lowest pid at the start): the summary's target, and the
/// process `attach`'s thread dumps are of.
#[derive(Debug, Clone)]
pub struct Target {
    pub selector: Selector,
    pub lead: system::ProcessInfo,
}

impl Target {
    /// One process (checked by [`check_target`]).
    pub fn single(lead: system::ProcessInfo) -> Self {
        Target {
            selector: Selector::Pid(lead.pid),
            lead,
        }
    }
}

/// What to record in one capture window.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    pub profiles: Vec<ProfileKind>,
    pub duration: Duration,
    /// How often to record (and the aggregation maps' size).
    pub rates: Rates,
    /// Off-CPU intervals shorter than this are not recorded (`--offcpu-min`), ns.
    pub offcpu_min_ns: u64,
    /// Label samples with their thread id (`tid`) as well as the thread's name.
    pub tid_labels: bool,
    /// Thread dumps during the window (`attach`'s SIGUSR1 and `--dump-when`).
    pub dumps: Option<DumpOptions>,
}

/// SIGUSR1 listened to by a running `agent attach` (shared: `CaptureSpec` is cloned).
pub type DumpSignal = std::sync::Arc<tokio::sync::Mutex<tokio::signal::unix::Signal>>;

/// Thread dumps a running `agent attach` writes on request: on SIGUSR1, and when
/// `--dump-when` holds (rate-limited). `signal_target` is also sent to the target after each.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub dir: PathBuf,
    pub when: Option<crate::dump::trigger::DumpWhen>,
    pub signal_target: Option<i32>,
    /// SIGUSR1, listened to from the command's start: a request sent while the programs
    /// load is answered when the window opens, where the signal's default action would have
    /// killed the agent. `None` outside a runtime (no window runs there).
    pub requests: Option<DumpSignal>,
}

/// What woke the capture loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoopEvent {
    /// The periodic tick (maps refreshed).
    Tick,
    /// SIGUSR1: write a thread dump now.
    DumpRequest,
}

impl CaptureSpec {
    fn wants(&self, k: ProfileKind) -> bool {
        self.profiles.contains(&k)
    }
}

/// What one capture window recorded, before symbolization. The programs are detached and
/// unloaded by the time it is returned.
pub struct Captured {
    /// One raw profile per requested kind, in the order cpu, offcpu, block, mutex.
    pub raws: Vec<RawProfile>,
    /// The mutex profile's waiter side (to tell locks from condition variables).
    pub lock_waiters: Option<RawProfile>,
    /// The target's mappings, kept across its exit, for the symbolizer.
    pub maps: MapsCache,
    pub counters: kernel::Counters,
    pub elapsed: Duration,
    pub end: EndReason,
    /// CPUs the sampler was attached to (0 without a CPU profile).
    pub cpus: usize,
    pub runq: Option<profiles::RunqStats>,
    /// Entries in the aggregation maps at the end of the window.
    pub map_fill: Vec<kernel::MapFill>,
    /// Run time and runs of each attached program (zero unless kernel.bpf_stats_enabled).
    pub program_stats: Vec<kernel::ProgramStats>,
    /// Every thread's time in the window.
    pub accounting: accounting::Accounting,
    /// The target's container and pod (empty outside one).
    pub identity: crate::identity::Identity,
    /// Every process of the window (one for a single target), in pid order.
    pub members: Vec<Member>,
}

/// [`check_target`] for a selector: a single process or a group with at least one live
/// member now.
pub fn check_selector(selector: &Selector) -> Result<Target, Error> {
    if let Some(pid) = selector.root_pid() {
        let lead = check_target(pid)?;
        return Ok(Target {
            selector: selector.clone(),
            lead,
        });
    }
    system::check_privileges()?;
    system::check_btf()?;
    let lead = selector
        .resolve()
        .into_iter()
        .find_map(|pid| system::process_info(pid).ok())
        .ok_or_else(|| selector.empty_error())?;
    Ok(Target {
        selector: selector.clone(),
        lead,
    })
}

/// Pre-flight checks shared by every command that profiles a process: privileges, BTF, and
/// that `pid` is a live process (not a thread id).
pub fn check_target(pid: u32) -> Result<system::ProcessInfo, Error> {
    system::check_privileges()?;
    system::check_btf()?;
    let target = system::process_info(pid)?;
    if target.tgid != target.pid {
        return Err(Error::Usage(format!(
            "{} is a thread of process {}; pass the process id: --pid {}",
            target.pid, target.tgid, target.tgid
        )));
    }
    Ok(target)
}

/// One bounded capture window of `target`: loads and verifies the programs, attaches what
/// `spec` asks for, waits for the duration (or `stop`, or the target's exit), detaches, and
/// reads the maps into raw profiles. Everything attached is detached when this returns, on
/// every path (the collector is dropped).
pub async fn capture(
    target: &Target,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
) -> Result<Captured, Error> {
    let mut maps = MapsCache::new();
    maps.refresh(target.lead.pid)
        .map_err(|e| Error::proc_read(target.lead.pid, "maps", &e))?;
    // Also reads the task iterator's offsets, from the same BTF parse, while no other parsed BTF
    // is alive (next to the loader's, a second parse added ~20 MiB to the peak RSS).
    let mut collector = Collector::load(
        crate::kernel::offsets::scheduler_offsets()?,
        spec.rates.map_entries,
    )?;
    match collector.take_logger() {
        Ok(fut) => {
            tokio::spawn(fut);
        }
        Err(e) => tracing::debug!("BPF log forwarding unavailable: {e}"),
    }
    let mut unwind = UnwindRegistry::new();
    capture_with(
        &mut collector,
        &mut unwind,
        maps,
        target,
        spec,
        stop,
        progress,
    )
    .await
}

/// [`capture`] with a collector that is already loaded (a long-lived one in `agent serve`,
/// with its unwind-table registry). The window ends with every program detached and the
/// target removed; a caller that reuses the collector empties its maps first
/// ([`Collector::reset_window`]).
pub async fn capture_with(
    collector: &mut Collector,
    unwind: &mut UnwindRegistry,
    mut maps: MapsCache,
    target: &Target,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
) -> Result<Captured, Error> {
    let wants = |k: ProfileKind| spec.wants(k);
    collector.stop_cpu();
    collector.stop_offcpu();
    let mut members = Members::default();
    let result = window(
        collector,
        unwind,
        &mut maps,
        target,
        &mut members,
        spec,
        stop,
        progress,
        wants,
    )
    .await;
    // Whatever happened, nothing stays attached and every member is forgotten.
    let _ = collector.set_config(Config::default());
    collector.stop_cpu();
    collector.stop_offcpu();
    collector.stop_go();
    for pid in members.by_pid.keys() {
        let _ = collector.remove_target(*pid);
    }
    let mut captured = result?;
    captured.maps = maps;
    captured.members = members.by_pid.into_values().collect();
    Ok(captured)
}

/// The processes of a window so far.
#[derive(Default)]
pub(crate) struct Members {
    by_pid: BTreeMap<u32, Member>,
    /// Go processes whose goroutines the block profile follows: their wait reasons' names.
    go: BTreeMap<u32, Vec<String>>,
    /// Why a Go member's goroutines are not followed (a stripped binary...), for the profile.
    go_notes: Vec<String>,
    /// The Go probes' hit counter at the last cost check, and when (`None` once detached).
    go_hits: Option<(Instant, u64)>,
}

impl Members {
    fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_pid.values().filter(|m| !m.exited).map(|m| m.pid)
    }

    /// Makes `pid` a member: a target in the kernel, its mappings and unwind tables loaded,
    /// its identity read. `false` when it already was one.
    fn join(
        &mut self,
        collector: &mut Collector,
        unwind: &mut UnwindRegistry,
        maps: &mut MapsCache,
        pid: u32,
        joined: Joined,
        parent: Option<u32>,
    ) -> Result<bool, Error> {
        if self.by_pid.contains_key(&pid) {
            return Ok(false);
        }
        collector.add_target(pid)?;
        let info = system::process_info(pid).ok();
        if let Err(e) = maps.refresh(pid) {
            tracing::debug!("reading the maps of new member {pid}: {e}");
        } else if let Err(e) = sync_unwind_tables(collector, unwind, maps, pid) {
            tracing::warn!("unwind tables of {pid}: {e}");
        }
        self.by_pid.insert(
            pid,
            Member {
                pid,
                comm: info.as_ref().map(|i| i.comm.clone()).unwrap_or_default(),
                exited: info.is_none(),
                info,
                parent,
                joined,
                identity: crate::identity::of_process(pid),
            },
        );
        Ok(true)
    }

    /// Follows the goroutines of every live Go member for the block and mutex profiles
    /// (uprobes on its runtime's `gopark`, `ready` and lock waits). A Go member that cannot be followed is noted, not an
    /// error: its thread-level profile still is.
    fn follow_goroutines(&mut self, collector: &mut Collector) {
        let pids: Vec<u32> = self.live().filter(|p| !self.go.contains_key(p)).collect();
        for pid in pids {
            if !crate::dump::goroutines::is_go(Path::new(&format!("/proc/{pid}/exe"))) {
                continue;
            }
            let followed = crate::dump::goroutines::runtime_probes(pid)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    collector
                        .attach_go(pid, &p.probes)
                        .map(|()| p.wait_reasons)
                        .map_err(|e| e.to_string())
                });
            match followed {
                Ok(reasons) => {
                    self.go.insert(pid, reasons);
                    let hits = collector
                        .counters()
                        .map_or(0, |c| c.get(stallscope_common::Counter::GoProbeHits));
                    self.go_hits = Some((Instant::now(), hits));
                }
                Err(e) => {
                    tracing::warn!("goroutines of Go process {pid} not followed: {e}");
                    self.go_notes.push(format!(
                        "goroutines of Go process {pid} not followed by the block and mutex profiles: {e}"
                    ));
                }
            }
        }
    }

    /// Detaches the Go probes when they were hit more than `limit` times a second since the
    /// last check (each hit is a trap the target pays): the profiles keep what they recorded
    /// until then and say so.
    fn check_go_cost(&mut self, collector: &mut Collector, limit: u64, since_start: Duration) {
        let Some((then, before)) = self.go_hits else {
            return;
        };
        if self.go.is_empty() || limit == 0 {
            return;
        }
        let Ok(c) = collector.counters() else { return };
        let (now, hits) = (
            Instant::now(),
            c.get(stallscope_common::Counter::GoProbeHits),
        );
        self.go_hits = Some((now, hits));
        let rate = hits.saturating_sub(before) as f64 / now.duration_since(then).as_secs_f64();
        if rate <= limit as f64 {
            return;
        }
        for pid in self.go.keys() {
            collector.detach_go(*pid);
        }
        self.go_hits = None;
        let pids: Vec<String> = self.go.keys().map(u32::to_string).collect();
        let note = format!(
            "goroutines no longer followed after {:.1} s: the Go runtime's probes were hit {rate:.0} times a second (over --go-probe-limit {limit}; each hit is a trap into the kernel the target pays); the goroutine waits until then are in the profiles (process {})",
            since_start.as_secs_f64(),
            pids.join(", ")
        );
        tracing::warn!("{note}");
        self.go_notes.push(note);
    }

    /// Marks members that exited and stops recording them (their pid could be reused).
    fn reap(&mut self, collector: &mut Collector) {
        for m in self.by_pid.values_mut().filter(|m| !m.exited) {
            if !m.info.as_ref().is_some_and(system::is_alive) {
                m.exited = true;
                let _ = collector.remove_target(m.pid);
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn window(
    collector: &mut Collector,
    unwind: &mut UnwindRegistry,
    maps: &mut MapsCache,
    target: &Target,
    members: &mut Members,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
    wants: impl Fn(ProfileKind) -> bool,
) -> Result<Captured, Error> {
    let group = target.selector.is_group();
    let lead = target.lead.pid;
    members.join(collector, unwind, maps, lead, Joined::AtStart, None)?;
    sync_unwind_tables(collector, unwind, maps, lead)?;
    if group {
        for pid in target.selector.resolve() {
            members.join(collector, unwind, maps, pid, Joined::AtStart, None)?;
        }
    }

    let mut flags = 0;
    if wants(ProfileKind::Offcpu) {
        flags |= CONFIG_OFFCPU;
    }
    if wants(ProfileKind::Block) {
        flags |= CONFIG_BLOCK;
    }
    if wants(ProfileKind::Mutex) {
        flags |= CONFIG_MUTEX;
    }
    let mut config = spec.rates.config(flags, spec.offcpu_min_ns);
    if group {
        config.flags |= CONFIG_FOLLOW;
    }
    // Attached with nothing to record, then switched on right before the first look at the
    // threads: every interval recorded then starts after the window opened.
    collector.set_config(Config::default())?;
    collector.load_programs(wants(ProfileKind::Cpu), flags != 0)?;
    if group {
        collector.start_follow()?;
    }
    let started = SystemTime::now();
    // Its container and pod, read while it surely runs.
    let identity = members
        .by_pid
        .get(&lead)
        .map(|m| m.identity.clone())
        .unwrap_or_default();
    let t0 = Instant::now();
    let mut cpus = 0;
    if wants(ProfileKind::Cpu) {
        cpus = collector.start_cpu(spec.rates.frequency_hz)?;
    }
    // The iterator and its offsets are ready before the window opens, so the first look at the
    // threads follows the switch-on within microseconds (the CPU sampler runs meanwhile).
    if let Err(e) =
        crate::kernel::offsets::task_offsets().and_then(|_| collector.load_dump_iterator())
    {
        tracing::warn!("loading the task iterator: {e} (no seeded waits, no accounting)");
    }
    if flags != 0 {
        collector.start_offcpu()?;
    }
    if wants(ProfileKind::Block) || wants(ProfileKind::Mutex) {
        members.follow_goroutines(collector);
    }
    // Every thread as it is now, probes recording: those already off CPU get their waits
    // seeded from here (profiles::accounting), and everyone's CPU time starts here.
    let t0_ktime = kernel::ktime_now();
    collector.set_config(Config {
        window_start_ns: t0_ktime,
        ..config
    })?;
    // Every member's threads first, their stacks after: each look is within microseconds of
    // the switch-on. (A group's members looked at one by one, stacks unwound in between, were
    // seen up to 0.1 s late; a wait the probes recorded in that gap then began before the
    // thread's window did, and its thread-seconds did not add up.)
    let start_tasks = look(collector, members);
    let mut start_views = views(&start_tasks, maps, wants(ProfileKind::Offcpu));
    tracing::info!(
        "attached to {} ({}) for {:?}: {:?}",
        target.selector.describe(),
        target.lead.comm,
        spec.duration,
        spec.profiles
    );

    let mut trigger = spec
        .dumps
        .as_ref()
        .and_then(|d| d.when.clone())
        .map(crate::dump::trigger::Trigger::new);
    let mut ticks = 0u32;
    let requests = spec.dumps.as_ref().and_then(|d| d.requests.clone());
    let end = capture_loop(spec.duration, stop, progress, requests, |ev| {
        match ev {
            LoopEvent::Tick => {
                ticks += 1;
                members.reap(collector);
                if !group && members.live().next().is_none() {
                    return Some(EndReason::TargetExited);
                }
                if group {
                    let forked = take_followed(collector);
                    follow_group(
                        collector,
                        unwind,
                        maps,
                        members,
                        &target.selector,
                        ticks.is_multiple_of(SCAN_TICKS),
                        &mut start_views,
                        wants(ProfileKind::Offcpu),
                        &forked,
                    );
                    // A process tree ends with its last process; a cgroup, container or
                    // pod may get new ones until the window's end.
                    if target.selector.root_pid().is_some() && members.live().next().is_none() {
                        return Some(EndReason::TargetExited);
                    }
                }
                refresh_members(collector, unwind, maps, members);
                if ticks.is_multiple_of(4) {
                    members.check_go_cost(collector, spec.rates.go_probe_limit, t0.elapsed());
                }
                // --dump-when is checked every second (4 ticks).
                if ticks.is_multiple_of(4)
                    && let (Some(t), Some(d)) = (trigger.as_mut(), spec.dumps.as_ref())
                {
                    // A symbolizer per dump: the window's future must stay Send (serve).
                    let mut sym = Symbolizer::new();
                    let r = crate::dump::check_trigger(
                        t,
                        collector,
                        lead,
                        maps,
                        &mut sym,
                        &d.dir,
                        crate::dump::DumpFormat::Text,
                    );
                    match r {
                        Ok(Some(path)) => dump_written(&path, lead, d),
                        Ok(None) => {}
                        Err(e) => tracing::warn!("--dump-when check: {e}"),
                    }
                }
                None
            }
            LoopEvent::DumpRequest => {
                if let Some(d) = spec.dumps.as_ref() {
                    let mut sym = Symbolizer::new();
                    match crate::dump::write_dump(
                        collector,
                        lead,
                        maps,
                        &mut sym,
                        &d.dir,
                        crate::dump::DumpFormat::Text,
                        crate::dump::Detail::EveryThread,
                    ) {
                        Ok(path) => dump_written(&path, lead, d),
                        Err(e) => eprintln!("stallscope: thread dump failed: {e}"),
                    }
                }
                None
            }
        }
    })
    .await;
    // The last look at the threads (their CPU time) with the probes still on, then the end
    // time for intervals still open, then stop recording.
    let end_tasks = look(collector, members);
    let end_ts = kernel::ktime_now();
    // The window ends here, not after the programs are detached: a syscall tracepoint's detach
    // waits for an RCU grace period (about 0.1-0.3 s seen here) in which nothing is recorded.
    let elapsed = t0.elapsed();
    collector.set_config(Config::default())?;
    let program_stats = collector.program_stats();
    collector.stop_cpu();
    collector.stop_offcpu();
    if group {
        // The last forks' members, for their labels and maps.
        let forked = take_followed(collector);
        follow_group(
            collector,
            unwind,
            maps,
            members,
            &target.selector,
            false,
            &mut start_views,
            false,
            &forked,
        );
    }
    let end_views = views(&end_tasks, maps, wants(ProfileKind::Offcpu));

    let records = Records::read(collector, flags != 0, &wants, |_| true)?;
    let assembled = assemble(
        records,
        &Assembly {
            start_views: &start_views,
            end_views: &end_views,
            t0_ktime,
            end_ts,
            started,
            elapsed,
            group,
        },
        members,
        spec,
    );
    Ok(Captured {
        identity,
        members: Vec::new(),
        accounting: assembled.accounting,
        raws: assembled.raws,
        lock_waiters: assembled.lock_waiters,
        maps: MapsCache::new(),
        counters: assembled.counters,
        elapsed,
        end,
        cpus,
        runq: assembled.runq,
        map_fill: assembled.map_fill,
        program_stats,
    })
}

/// What the maps held at a window's end for the processes it kept, read with the probes
/// detached (or the processes no longer targets).
pub(crate) struct Records {
    pub counters: kernel::Counters,
    pub probes: accounting::ProbeView,
    pub exited: Vec<kernel::ExitedThread>,
    pub offcpu: Vec<kernel::OffcpuRecord>,
    pub open: Vec<kernel::OpenInterval>,
    pub cpu: Vec<kernel::CpuRecord>,
    pub block: Vec<kernel::BlockRecord>,
    pub holders: Vec<kernel::MutexRecord>,
    pub waiters: Vec<kernel::MutexRecord>,
    pub runq: Vec<kernel::RunqBucket>,
    pub map_fill: Vec<kernel::MapFill>,
}

impl Records {
    /// Reads what `wants` needs, keeping the records of the processes `keep` says yes to
    /// (per-thread state without a process is kept: it is looked up by thread id).
    pub(crate) fn read(
        collector: &Collector,
        offcpu_on: bool,
        wants: &impl Fn(ProfileKind) -> bool,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Self, Error> {
        let mut r = Records {
            counters: collector.counters()?,
            probes: accounting::ProbeView::default(),
            exited: Vec::new(),
            offcpu: Vec::new(),
            open: Vec::new(),
            cpu: Vec::new(),
            block: Vec::new(),
            holders: Vec::new(),
            waiters: Vec::new(),
            runq: Vec::new(),
            map_fill: collector.map_fill(),
        };
        if offcpu_on {
            r.probes = accounting::ProbeView {
                first_seen: collector.first_seen()?,
                tracked: collector.tracked_threads()?,
            };
            r.exited = collector.exited_threads()?;
            r.exited.retain(|x| keep(x.tgid));
        }
        if wants(ProfileKind::Offcpu) {
            r.offcpu = collector.offcpu_records()?;
            r.offcpu.retain(|x| keep(x.tgid));
            r.open = collector.open_intervals()?;
            r.open.retain(|x| keep(x.tgid));
            r.runq = collector.runq_histogram()?;
            r.runq.retain(|x| keep(x.tgid));
        }
        if wants(ProfileKind::Cpu) {
            r.cpu = collector.cpu_records()?;
            r.cpu.retain(|x| keep(x.tgid));
        }
        if wants(ProfileKind::Block) {
            r.block = collector.block_records()?;
            r.block.retain(|x| keep(x.tgid));
        }
        if wants(ProfileKind::Mutex) {
            (r.holders, r.waiters) = collector.mutex_records()?;
            r.holders.retain(|x| keep(x.tgid));
            r.waiters.retain(|x| keep(x.tgid));
        }
        Ok(r)
    }
}

/// The window's looks at the threads and its times, for [`assemble`].
pub(crate) struct Assembly<'a> {
    pub start_views: &'a [accounting::ThreadView],
    pub end_views: &'a [accounting::ThreadView],
    pub t0_ktime: u64,
    pub end_ts: u64,
    pub started: SystemTime,
    pub elapsed: Duration,
    pub group: bool,
}

/// A window's raw profiles and accounting, from its records.
pub(crate) struct Assembled {
    pub raws: Vec<RawProfile>,
    pub lock_waiters: Option<RawProfile>,
    pub runq: Option<profiles::RunqStats>,
    pub accounting: accounting::Accounting,
    pub counters: kernel::Counters,
    pub map_fill: Vec<kernel::MapFill>,
}

/// Turns a window's records into raw profiles (one per kind `spec` asks for, in the order
/// cpu, offcpu, block, mutex) and its thread-seconds accounting.
pub(crate) fn assemble(
    records: Records,
    a: &Assembly<'_>,
    members: &Members,
    spec: &CaptureSpec,
) -> Assembled {
    let wants = |k: ProfileKind| spec.wants(k);
    let Records {
        counters,
        probes,
        exited,
        mut offcpu,
        open,
        cpu,
        block,
        holders,
        waiters,
        runq,
        map_fill,
    } = records;
    let looks = accounting::Looks {
        start: a.start_views,
        end: a.end_views,
        exited: &exited,
        probes: &probes,
        t0: a.t0_ktime,
        t_end: a.end_ts,
    };
    if wants(ProfileKind::Offcpu) {
        offcpu.extend(profiles::close_open_intervals(
            &open,
            a.end_ts,
            spec.offcpu_min_ns,
        ));
        offcpu.extend(accounting::seeded_intervals(&looks, spec.offcpu_min_ns));
    }
    let accounting = accounting::account(&looks, &offcpu, wants(ProfileKind::Offcpu));
    let mut comments = report::counter_comments(&counters);
    comments.push(accounting.line());
    if spec.profiles.iter().any(|k| *k != ProfileKind::Cpu) {
        comments.push(format!(
            "sampling: off-CPU rate {} ns, mutex rate {} ns and fraction {}, block rate {} ns \
             (an event of d is kept with probability min(1, d/rate) and weighted max(d, rate): \
             totals are unbiased estimates; rate 1 records every event)",
            spec.rates.offcpu_rate_ns,
            spec.rates.mutex_rate_ns,
            spec.rates.mutex_fraction,
            spec.rates.block_rate_ns
        ));
    }
    let window = Window {
        start: a.started,
        duration: a.elapsed,
        comments,
        threads: accounting.names(),
        tid_labels: spec.tid_labels,
        process: members
            .by_pid
            .values()
            .map(|m| {
                let mut labels = Vec::new();
                if a.group {
                    labels.push(crate::model::Label::Str("pid".into(), m.pid.to_string()));
                    labels.push(crate::model::Label::Str("comm".into(), m.comm.clone()));
                }
                labels.extend(profiles::process_labels(&m.identity));
                (m.pid, labels)
            })
            .collect(),
        go_wait_reasons: members.go.iter().map(|(p, r)| (*p, r.clone())).collect(),
    };
    let mut raws = Vec::new();
    if wants(ProfileKind::Cpu) {
        raws.push(profiles::cpu_profile(
            &cpu,
            spec.rates.frequency_hz,
            &window,
        ));
    }
    let mut runq_stats = None;
    if wants(ProfileKind::Offcpu) {
        raws.push(profiles::offcpu_profile(&offcpu, &window));
        runq_stats = profiles::runq_stats(&runq);
    }
    let go_comments = |what: &str| {
        let mut c = members.go_notes.clone();
        if !members.go.is_empty() {
            c.push(format!(
                "goroutines followed ({what}): process {}",
                members
                    .go
                    .keys()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        c
    };
    if wants(ProfileKind::Block) {
        let mut p = profiles::block_profile(&block, spec.rates.block_rate_ns, &window);
        p.comments.extend(go_comments(
            "Go's block profile: channel operations, select, sync waits, from runtime.gopark to runtime.ready",
        ));
        raws.push(p);
    }
    let mut lock_waiters = None;
    if wants(ProfileKind::Mutex) {
        let mut p = profiles::mutex_profile(&holders, spec.rates.mutex_fraction, &window);
        p.comments.extend(go_comments(
            "Go's mutex profile: the waiters' time on a sync.Mutex or sync.RWMutex, charged to the goroutine that released it",
        ));
        raws.push(p);
        lock_waiters = Some(profiles::mutex_profile(
            &waiters,
            spec.rates.mutex_fraction,
            &window,
        ));
    }
    Assembled {
        raws,
        lock_waiters,
        runq: runq_stats,
        accounting,
        counters,
        map_fill,
    }
}

/// A tick of a group's window: the processes the kernel made members at their fork, and,
/// when `scan`, those a look at `/proc` finds (those get a first look at their threads, as
/// the window's start gave the others).
#[allow(clippy::too_many_arguments)]
fn follow_group(
    collector: &mut Collector,
    unwind: &mut UnwindRegistry,
    maps: &mut MapsCache,
    members: &mut Members,
    selector: &Selector,
    scan: bool,
    start_views: &mut Vec<accounting::ThreadView>,
    stacks: bool,
    forked: &[(u32, u32)],
) {
    for &(child, parent) in forked {
        // Set by the kernel already; set again in case a write of the same bitmap word from
        // here raced with the kernel's.
        let _ = collector.add_target(child);
        if let Err(e) = members.join(collector, unwind, maps, child, Joined::Forked, Some(parent)) {
            tracing::warn!("following forked process {child}: {e}");
        }
    }
    if !scan {
        return;
    }
    for pid in selector.resolve() {
        match members.join(collector, unwind, maps, pid, Joined::Scanned, None) {
            Ok(true) => {
                let tasks = read_threads(collector, pid);
                start_views.extend(thread_views(pid, &tasks, maps, stacks));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("adding member {pid}: {e}"),
        }
    }
}

/// Every live member's threads now, read one process after the other before any stack is
/// unwound ([`views`]): each look is within microseconds of the others.
fn look(collector: &mut Collector, members: &Members) -> Vec<(u32, Vec<DumpTask>)> {
    let live: Vec<u32> = members.live().collect();
    live.into_iter()
        .map(|pid| (pid, read_threads(collector, pid)))
        .collect()
}

/// The threads of [`look`] as plain views (user stacks of those off CPU when `stacks`).
fn views(
    looked: &[(u32, Vec<DumpTask>)],
    maps: &MapsCache,
    stacks: bool,
) -> Vec<accounting::ThreadView> {
    looked
        .iter()
        .flat_map(|(pid, tasks)| thread_views(*pid, tasks, maps, stacks))
        .collect()
}

/// Refreshes every live member's mappings and unwind tables (a tick of the window).
fn refresh_members(
    collector: &mut Collector,
    unwind: &mut UnwindRegistry,
    maps: &mut MapsCache,
    members: &Members,
) {
    for pid in members.live().collect::<Vec<_>>() {
        match maps.refresh(pid) {
            Ok(()) => {
                if let Err(e) = sync_unwind_tables(collector, unwind, maps, pid) {
                    tracing::warn!("updating unwind tables of {pid}: {e}");
                }
            }
            Err(e) => tracing::debug!("refreshing maps of {pid}: {e}"),
        }
    }
}

/// The processes the kernel made targets at their fork since the last call (child, parent).
fn take_followed(collector: &mut Collector) -> Vec<(u32, u32)> {
    collector.take_followed().unwrap_or_else(|e| {
        tracing::warn!("reading forked members: {e}");
        Vec::new()
    })
}

/// Every thread of `pid` now, as the task iterator reads it (each record with its own
/// time). A failure costs the seeding and the accounting, not the window: it is logged.
fn read_threads(collector: &mut Collector, pid: u32) -> Vec<DumpTask> {
    let tasks = crate::kernel::offsets::task_offsets().and_then(|o| collector.dump_tasks(pid, o));
    match tasks {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("reading the threads of {pid}: {e} (no seeded waits, no accounting)");
            Vec::new()
        }
    }
}

/// The threads of [`read_threads`] as plain views, with the user stacks of those off CPU
/// when `stacks`.
fn thread_views(
    pid: u32,
    tasks: &[DumpTask],
    maps: &MapsCache,
    stacks: bool,
) -> Vec<accounting::ThreadView> {
    let users = if stacks && !tasks.is_empty() {
        crate::dump::capture::user_stacks(pid, tasks, maps)
    } else {
        vec![Vec::new(); tasks.len()]
    };
    tasks
        .iter()
        .zip(&users)
        .filter_map(|(t, u)| accounting::view(t, u))
        .collect()
}

/// Waits for the capture window to end: duration elapsed, `stop` (Ctrl-C), or `on_event`
/// saying why it ends (the target exited). `on_event` refreshes the members' maps at each tick,
/// so late `dlopen`s and an early exit still symbolize.
async fn capture_loop(
    duration: Duration,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
    dump_requests: Option<DumpSignal>,
    mut on_event: impl FnMut(LoopEvent) -> Option<EndReason>,
) -> EndReason {
    // SIGUSR1 asks for a thread dump, on the stream the command opened at its start (only
    // `attach` wants dumps: other users of the window don't change the signal's handling).
    let mut usr1 = match &dump_requests {
        Some(s) => Some(s.lock().await),
        None => None,
    };
    let bar = if progress {
        progress_bar(duration)
    } else {
        None
    };
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(TICK);
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break EndReason::Completed,
            _ = &mut stop => break EndReason::Interrupted,
            Some(()) = async {
                match usr1.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(r) = on_event(LoopEvent::DumpRequest) {
                    break r;
                }
            }
            _ = tick.tick() => {
                if let Some(r) = on_event(LoopEvent::Tick) {
                    break r;
                }
                if let Some(bar) = &bar {
                    bar.set_position(start.elapsed().as_millis().min(duration.as_millis()) as u64);
                }
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    reason
}

/// Says where a dump went, and passes `--signal-target` on to the target.
fn dump_written(path: &Path, pid: u32, d: &DumpOptions) {
    eprintln!("stallscope: wrote thread dump {}", path.display());
    if let Some(sig) = d.signal_target {
        // SAFETY: plain syscall; the target was checked to be a live process at start.
        unsafe { libc::kill(pid as libc::pid_t, sig) };
    }
}

fn progress_bar(duration: Duration) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "capturing {bar:40.cyan/blue} {elapsed}/{duration} (Ctrl-C to stop early)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Compiles unwind tables of newly mapped files and refreshes the process's mapping table in
/// the kernel (cheap when nothing changed).
fn sync_unwind_tables(
    collector: &mut Collector,
    reg: &mut UnwindRegistry,
    maps: &MapsCache,
    pid: u32,
) -> Result<(), Error> {
    let pm = reg.prepare(pid, maps);
    for (start, rows) in reg.take_pending() {
        collector.upload_unwind_rows(start, &rows)?;
    }
    collector.set_proc_mappings(pid, &pm)
}
