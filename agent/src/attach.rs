//! `agent attach`: one bounded capture of one process, then symbolize, write and summarize.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use stallscope_common::{
    CONFIG_BLOCK, CONFIG_MUTEX, CONFIG_OFFCPU, Config, KernelOffsets, dump::DumpTask,
};

use crate::{
    accounting,
    cli::AttachArgs,
    collect::{self, Collector},
    error::Error,
    export,
    kbtf::KernelBtf,
    locks,
    model::{ProfileKind, RawProfile},
    procmaps::MapsCache,
    profiles::{self, Window},
    report::{self, CaptureFacts, EndReason},
    symbolize::Symbolizer,
    system,
    unwinder::UnwindRegistry,
};

/// How often the capture loop refreshes the target's memory maps and checks it is alive.
const TICK: Duration = Duration::from_millis(250);

/// What `attach` wrote, for the caller (and tests).
#[derive(Debug)]
pub struct AttachOutcome {
    pub files: Vec<PathBuf>,
    pub summary: String,
}

/// Offsets of kernel structures the programs need, from the running kernel's BTF.
pub fn kernel_offsets() -> Result<KernelOffsets, Error> {
    let btf = KernelBtf::from_sys_fs().map_err(|e| Error::BpfLoad(e.to_string()))?;
    // The task iterator's offsets from the same parse (the window's first look needs them).
    crate::dump::init_kernel_offsets(&btf);
    let off = |path: &[&str]| {
        btf.member_path_offset("task_struct", path)
            .map_err(|e| Error::BpfLoad(format!("{e} (needed to read scheduler events)")))
    };
    Ok(KernelOffsets {
        task_pid: off(&["pid"])?,
        task_tgid: off(&["tgid"])?,
        task_sum_exec_runtime: off(&["se", "sum_exec_runtime"])?,
        task_start_time: off(&["start_time"])?,
    })
}

/// What to record in one capture window.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    pub profiles: Vec<ProfileKind>,
    pub duration: Duration,
    pub frequency: u64,
    pub block_rate: u64,
    pub mutex_fraction: u64,
    pub offcpu_min: u64,
    pub offcpu_rate: u64,
    pub mutex_rate: u64,
    /// Label samples with their thread id (`tid`) as well as the thread's name.
    pub tid_labels: bool,
    /// Thread dumps during the window (`attach`'s SIGUSR1 and `--dump-when`).
    pub dumps: Option<DumpOptions>,
    /// Entries in each aggregation map (`--map-entries`).
    pub map_entries: u32,
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
    pub fn from_args(args: &AttachArgs) -> Self {
        Self {
            profiles: args.profile.clone(),
            duration: args.duration,
            frequency: args.rates.frequency,
            block_rate: args.rates.block_rate,
            mutex_fraction: args.rates.mutex_fraction,
            offcpu_min: args.offcpu_min,
            offcpu_rate: args.rates.offcpu_rate,
            mutex_rate: args.rates.mutex_rate,
            tid_labels: !args.labels.no_tid_label,
            dumps: Some(DumpOptions {
                dir: args.output.clone(),
                when: args.dump_when.clone(),
                signal_target: args.signal_target,
                // (tokio's signal() panics outside a runtime.)
                requests: tokio::runtime::Handle::try_current()
                    .ok()
                    .and_then(|_| {
                        tokio::signal::unix::signal(
                            tokio::signal::unix::SignalKind::user_defined1(),
                        )
                        .ok()
                    })
                    .map(|s| std::sync::Arc::new(tokio::sync::Mutex::new(s))),
            }),
            map_entries: args.rates.map_entries,
        }
    }

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
    pub counters: collect::Counters,
    pub elapsed: Duration,
    pub end: EndReason,
    /// CPUs the sampler was attached to (0 without a CPU profile).
    pub cpus: usize,
    pub runq: Option<profiles::RunqStats>,
    /// Entries in the aggregation maps at the end of the window.
    pub map_fill: Vec<collect::MapFill>,
    /// Run time and runs of each attached program (zero unless kernel.bpf_stats_enabled).
    pub program_stats: Vec<collect::ProgramStats>,
    /// Every thread's time in the window.
    pub accounting: accounting::Accounting,
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

/// Runs a whole capture. Prints progress to stderr on a terminal; returns the summary text.
pub async fn run(args: &AttachArgs) -> Result<AttachOutcome, Error> {
    if args.profile.is_empty() {
        return Err(Error::Usage("--profile needs at least one profile".into()));
    }
    // First: it starts listening for SIGUSR1 (dump requests).
    let spec = CaptureSpec::from_args(args);
    let target = check_target(args.pid)?;
    if let Some(sig) = args.signal_target {
        let exe = std::fs::read_link(format!("/proc/{}/exe", target.pid)).unwrap_or_default();
        crate::dump::trigger::check_signal_target(sig, &exe).map_err(Error::Usage)?;
    }
    prepare_output(&args.output)?;

    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let Captured {
        raws,
        lock_waiters,
        maps,
        counters,
        elapsed,
        end,
        cpus,
        runq,
        mut accounting,
        ..
    } = capture(&target, &spec, ctrl_c, std::io::stderr().is_terminal()).await?;

    let mut facts = CaptureFacts {
        pid: target.pid,
        comm: target.comm.clone(),
        requested: args.duration,
        elapsed,
        end,
        frequency: args.rates.frequency,
        cpus,
        counters,
        profiles: args.profile.clone(),
        block_rate_ns: args.rates.block_rate,
        mutex_fraction: args.rates.mutex_fraction,
        runq,
        accounting: None,
    };

    restore_output(&args.output)?;
    // blazesym's symbolizer is not Send: it lives on this blocking thread for the whole batch.
    let out = OutputOptions {
        dir: args.output.clone(),
        pid: target.pid,
        top_n: args.top,
        folded_thread_root: args.labels.folded_thread_root,
    };
    let Written {
        files,
        sections,
        profiles,
    } = tokio::task::spawn_blocking(move || {
        let mut symbolizer = Symbolizer::new();
        write_profiles(&mut symbolizer, raws, lock_waiters, &maps, &out)
    })
    .await
    .map_err(|e| Error::Internal(format!("symbolization thread failed: {e}")))??;
    if let Some(p) = profiles.iter().find(|p| p.kind == ProfileKind::Offcpu) {
        accounting.classes_from(p);
    }
    let threads_json = args.output.join("threads.json");
    export::folded::write_text(
        &threads_json,
        &serde_json::to_string_pretty(&accounting).unwrap_or_default(),
    )
    .map_err(|source| Error::Output {
        path: threads_json.clone(),
        source,
    })?;
    facts.accounting = Some(accounting);

    let mut files = files;
    files.push(threads_json);
    let summary = report::render_summary(&facts, &sections, &files);
    Ok(AttachOutcome { files, summary })
}

/// Where and how [`write_profiles`] writes.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    pub dir: PathBuf,
    /// The target (lock symbols are looked up in its address space).
    pub pid: u32,
    /// Rows of the summary's top tables.
    pub top_n: usize,
    /// Thread names as the root frames of the .folded files.
    pub folded_thread_root: bool,
}

/// What [`write_profiles`] produced.
pub struct Written {
    pub files: Vec<PathBuf>,
    /// The summary section of each profile.
    pub sections: Vec<String>,
    /// The symbolized profiles, as written.
    pub profiles: Vec<crate::model::Profile>,
}

/// Symbolizes raw profiles and writes `<kind>.pb.gz` and `<kind>.folded` for each into
/// `out_dir` (the mutex profile first loses its non-lock futex words and gains lock names,
/// using `lock_waiters`). Run it on the thread that owns `symbolizer`.
pub fn write_profiles(
    symbolizer: &mut Symbolizer,
    raws: Vec<RawProfile>,
    lock_waiters: Option<RawProfile>,
    maps: &MapsCache,
    out: &OutputOptions,
) -> Result<Written, Error> {
    let OutputOptions {
        dir: ref out_dir,
        pid,
        top_n,
        folded_thread_root,
    } = *out;
    let mut written = Written {
        files: Vec::new(),
        sections: Vec::new(),
        profiles: Vec::new(),
    };
    let waiters = lock_waiters.map(|w| symbolizer.symbolize(w, maps));
    for raw in raws {
        let kind = raw.kind;
        let mut profile = symbolizer.symbolize(raw, maps);
        locks::classify_futex_waits(&mut profile);
        let mut lock_section = None;
        if let (ProfileKind::Mutex, Some(waiters)) = (kind, &waiters) {
            lock_section = Some(prepare_mutex(
                &mut profile,
                waiters,
                symbolizer,
                maps,
                pid,
                top_n,
            ));
        }
        let pb = out_dir.join(format!("{}.pb.gz", kind.name()));
        export::pprof::write(&profile, &pb).map_err(|e| Error::Output {
            path: pb.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        written.files.push(pb);
        let folded_path = out_dir.join(format!("{}.folded", kind.name()));
        export::folded::write_text(&folded_path, &folded_text(&profile, folded_thread_root))
            .map_err(|source| Error::Output {
                path: folded_path.clone(),
                source,
            })?;
        written.files.push(folded_path);
        let mut section = report::profile_section(&profile, top_n);
        if let Some(extra) = lock_section {
            section.push_str(&extra);
        }
        written.sections.push(section);
        written.profiles.push(profile);
    }
    Ok(written)
}

/// Folded stacks of a profile by its main value; off-CPU stacks get their wait class as the
/// root frame, so a flame graph splits by class first.
pub fn folded_text(profile: &crate::model::Profile, thread_root: bool) -> String {
    let value_index = report::main_value_index(profile);
    let offcpu = profile.kind == ProfileKind::Offcpu;
    export::folded::render_with_root(profile, value_index, |s| {
        let mut root = Vec::new();
        if thread_root {
            root.push(report::label_of(s, "thread").unwrap_or_else(|| "[no thread]".into()));
        }
        if offcpu && let Some(class) = report::wait_class_of(s) {
            root.push(class);
        }
        root
    })
}

/// One bounded capture window of `target`: loads and verifies the programs, attaches what
/// `spec` asks for, waits for the duration (or `stop`, or the target's exit), detaches, and
/// reads the maps into raw profiles. Everything attached is detached when this returns, on
/// every path (the collector is dropped).
pub async fn capture(
    target: &system::ProcessInfo,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
) -> Result<Captured, Error> {
    let mut maps = MapsCache::new();
    maps.refresh(target.pid)
        .map_err(|e| Error::proc_read(target.pid, "maps", &e))?;
    // Also reads the task iterator's offsets, from the same BTF parse, while no other parsed BTF
    // is alive (next to the loader's, a second parse added ~20 MiB to the peak RSS).
    let mut collector = Collector::load(kernel_offsets()?, spec.map_entries)?;
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
    target: &system::ProcessInfo,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
) -> Result<Captured, Error> {
    let wants = |k: ProfileKind| spec.wants(k);
    collector.stop_cpu();
    collector.stop_offcpu();
    collector.add_target(target.pid)?;
    let result = window(
        collector, unwind, &mut maps, target, spec, stop, progress, wants,
    )
    .await;
    // Whatever happened, nothing stays attached and the target is forgotten.
    let _ = collector.set_config(Config::default());
    collector.stop_cpu();
    collector.stop_offcpu();
    let _ = collector.remove_target(target.pid);
    let mut captured = result?;
    captured.maps = maps;
    Ok(captured)
}

#[allow(clippy::too_many_arguments)]
async fn window(
    collector: &mut Collector,
    unwind: &mut UnwindRegistry,
    maps: &mut MapsCache,
    target: &system::ProcessInfo,
    spec: &CaptureSpec,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
    wants: impl Fn(ProfileKind) -> bool,
) -> Result<Captured, Error> {
    sync_unwind_tables(collector, unwind, maps, target.pid)?;

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
    let config = Config {
        flags,
        offcpu_min_ns: spec.offcpu_min,
        block_rate_ns: spec.block_rate,
        mutex_fraction: spec.mutex_fraction,
        offcpu_rate_ns: spec.offcpu_rate,
        mutex_rate_ns: spec.mutex_rate,
        // Set as the window opens.
        window_start_ns: 0,
    };
    // Attached with nothing to record, then switched on right before the first look at the
    // threads: every interval recorded then starts after the window opened.
    collector.set_config(Config::default())?;
    collector.load_programs(wants(ProfileKind::Cpu), flags != 0)?;
    let started = SystemTime::now();
    let t0 = Instant::now();
    let mut cpus = 0;
    if wants(ProfileKind::Cpu) {
        cpus = collector.start_cpu(spec.frequency)?;
    }
    // The iterator and its offsets are ready before the window opens, so the first look at the
    // threads follows the switch-on within microseconds (the CPU sampler runs meanwhile).
    if let Err(e) = crate::dump::kernel_offsets().and_then(|_| collector.load_dump_iterator()) {
        tracing::warn!("loading the task iterator: {e} (no seeded waits, no accounting)");
    }
    if flags != 0 {
        collector.start_offcpu()?;
    }
    // Every thread as it is now, probes recording: those already off CPU get their waits
    // seeded from here (accounting.rs), and everyone's CPU time starts here.
    let t0_ktime = collect::ktime_now();
    collector.set_config(Config {
        window_start_ns: t0_ktime,
        ..config
    })?;
    let start_tasks = read_threads(collector, target.pid);
    let start_views = thread_views(target.pid, &start_tasks, maps, wants(ProfileKind::Offcpu));
    tracing::info!(
        "attached to {} ({}) for {:?}: {:?}",
        target.pid,
        target.comm,
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
    let end = capture_loop(
        target,
        maps,
        spec.duration,
        stop,
        progress,
        requests,
        |maps, ev| {
            match ev {
                LoopEvent::Tick => {
                    if let Err(e) = sync_unwind_tables(collector, unwind, maps, target.pid) {
                        tracing::warn!("updating unwind tables: {e}");
                    }
                    ticks += 1;
                    // --dump-when is checked every second (4 ticks).
                    if ticks.is_multiple_of(4)
                        && let (Some(t), Some(d)) = (trigger.as_mut(), spec.dumps.as_ref())
                    {
                        // A symbolizer per dump: the window's future must stay Send (serve).
                        let mut sym = Symbolizer::new();
                        let r = crate::dump::check_trigger(
                            t,
                            collector,
                            target.pid,
                            maps,
                            &mut sym,
                            &d.dir,
                            crate::cli::DumpFormat::Text,
                        );
                        match r {
                            Ok(Some(path)) => dump_written(&path, target.pid, d),
                            Ok(None) => {}
                            Err(e) => tracing::warn!("--dump-when check: {e}"),
                        }
                    }
                }
                LoopEvent::DumpRequest => {
                    if let Some(d) = spec.dumps.as_ref() {
                        let mut sym = Symbolizer::new();
                        match crate::dump::write_dump(
                            collector,
                            target.pid,
                            maps,
                            &mut sym,
                            &d.dir,
                            crate::cli::DumpFormat::Text,
                            crate::dump::Detail::EveryThread,
                        ) {
                            Ok(path) => dump_written(&path, target.pid, d),
                            Err(e) => eprintln!("stallscope: thread dump failed: {e}"),
                        }
                    }
                }
            }
        },
    )
    .await;
    // The last look at the threads (their CPU time) with the probes still on, then the end
    // time for intervals still open, then stop recording.
    let end_tasks = read_threads(collector, target.pid);
    let end_ts = collect::ktime_now();
    // The window ends here, not after the programs are detached: a syscall tracepoint's detach
    // waits for an RCU grace period (about 0.1-0.3 s seen here) in which nothing is recorded.
    let elapsed = t0.elapsed();
    collector.set_config(Config::default())?;
    let program_stats = collector.program_stats();
    collector.stop_cpu();
    collector.stop_offcpu();
    let end_views = thread_views(target.pid, &end_tasks, maps, wants(ProfileKind::Offcpu));

    let counters = collector.counters()?;
    let mut offcpu_records = Vec::new();
    let mut probes = accounting::ProbeView::default();
    if flags != 0 {
        probes = accounting::ProbeView {
            first_seen: collector.first_seen()?,
            tracked: collector.tracked_threads()?,
        };
    }
    let exited = if flags != 0 {
        collector.exited_threads()?
    } else {
        Vec::new()
    };
    let looks = accounting::Looks {
        start: &start_views,
        end: &end_views,
        exited: &exited,
        probes: &probes,
        t0: t0_ktime,
        t_end: end_ts,
    };
    if wants(ProfileKind::Offcpu) {
        offcpu_records = collector.offcpu_records()?;
        let open = collector.open_intervals()?;
        offcpu_records.extend(profiles::close_open_intervals(
            &open,
            end_ts,
            spec.offcpu_min,
        ));
        offcpu_records.extend(accounting::seeded_intervals(
            target.pid,
            &looks,
            spec.offcpu_min,
        ));
    }
    let accounting = accounting::account(&looks, &offcpu_records, wants(ProfileKind::Offcpu));
    let mut comments = report::counter_comments(&counters);
    comments.push(accounting.line());
    if flags != 0 {
        comments.push(format!(
            "sampling: off-CPU rate {} ns, mutex rate {} ns and fraction {}, block rate {} ns \
             (an event of d is kept with probability min(1, d/rate) and weighted max(d, rate): \
             totals are unbiased estimates; rate 1 records every event)",
            spec.offcpu_rate, spec.mutex_rate, spec.mutex_fraction, spec.block_rate
        ));
    }
    let window = Window {
        start: started,
        duration: elapsed,
        comments,
        threads: accounting.names(),
        tid_labels: spec.tid_labels,
    };
    let mut raws = Vec::new();
    if wants(ProfileKind::Cpu) {
        raws.push(profiles::cpu_profile(
            &collector.cpu_records()?,
            spec.frequency,
            &window,
        ));
    }
    let mut runq = None;
    if wants(ProfileKind::Offcpu) {
        raws.push(profiles::offcpu_profile(&offcpu_records, &window));
        runq = profiles::runq_stats(&collector.runq_histogram()?);
    }
    if wants(ProfileKind::Block) {
        raws.push(profiles::block_profile(
            &collector.block_records()?,
            spec.block_rate,
            &window,
        ));
    }
    let mut lock_waiters = None;
    if wants(ProfileKind::Mutex) {
        let (holders, waiters) = collector.mutex_records()?;
        raws.push(profiles::mutex_profile(
            &holders,
            spec.mutex_fraction,
            &window,
        ));
        lock_waiters = Some(profiles::mutex_profile(
            &waiters,
            spec.mutex_fraction,
            &window,
        ));
    }
    let map_fill = collector.map_fill();
    Ok(Captured {
        accounting,
        raws,
        lock_waiters,
        maps: MapsCache::new(),
        counters,
        elapsed,
        end,
        cpus,
        runq,
        map_fill,
        program_stats,
    })
}

/// Every thread of `pid` now, as the task iterator reads it (each record with its own
/// time). A failure costs the seeding and the accounting, not the window: it is logged.
fn read_threads(collector: &mut Collector, pid: u32) -> Vec<DumpTask> {
    let tasks = crate::dump::kernel_offsets().and_then(|o| collector.dump_tasks(pid, o));
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

/// Mutex profile after symbolization: drops futex words that are not locks (condition
/// variables and such, told apart by their waiters' stacks), names locks after their symbols,
/// and returns the "most contended locks" part of the summary.
pub fn prepare_mutex(
    profile: &mut crate::model::Profile,
    waiters: &crate::model::Profile,
    symbolizer: &mut Symbolizer,
    maps: &MapsCache,
    pid: u32,
    top_n: usize,
) -> String {
    let not_locks = locks::non_lock_words(waiters);
    let removed = locks::drop_words(profile, &not_locks);
    let mut waiters = waiters.clone();
    locks::drop_words(&mut waiters, &not_locks);
    let mut names = std::collections::HashMap::new();
    for s in &profile.samples {
        if let Some(l) = locks::lock_of(s)
            && !names.contains_key(l)
            && let Ok(addr) = u64::from_str_radix(l.trim_start_matches("0x"), 16)
            && let Some(sym) = symbolizer.data_symbol(pid, addr, maps)
        {
            names.insert(l.to_string(), sym);
        }
    }
    locks::name_locks(profile, &names);
    profile.comments.push(format!(
        "{removed} wake-ups of {} non-lock futex words (condition variables, semaphores, joins) left out",
        not_locks.len()
    ));
    report::locks_section(profile, &waiters, &names, top_n.min(5))
}

/// Waits for the capture window to end: duration elapsed, `stop` (Ctrl-C), or the target exited.
/// Refreshes the maps cache as it goes so late `dlopen`s and an early exit still symbolize.
#[allow(clippy::too_many_arguments)]
async fn capture_loop(
    target: &system::ProcessInfo,
    maps: &mut MapsCache,
    duration: Duration,
    stop: impl std::future::Future<Output = ()>,
    progress: bool,
    dump_requests: Option<DumpSignal>,
    mut on_event: impl FnMut(&MapsCache, LoopEvent),
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
            } => on_event(maps, LoopEvent::DumpRequest),
            _ = tick.tick() => {
                if !system::is_alive(target) {
                    break EndReason::TargetExited;
                }
                match maps.refresh(target.pid) {
                    Ok(()) => on_event(maps, LoopEvent::Tick),
                    Err(e) => tracing::debug!("refreshing maps of {}: {e}", target.pid),
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

/// Creates the output directory and checks files can be written in it, before anything is
/// attached; a failure names the reason (a pseudo-filesystem such as /proc, read-only, denied).
pub fn prepare_output(dir: &Path) -> Result<(), Error> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        let existing = dir
            .ancestors()
            .find(|a| a.is_dir())
            .unwrap_or(Path::new("/"));
        return Err(Error::OutputNotWritable {
            path: dir.to_path_buf(),
            reason: format!(
                "creating it in {} failed: {}",
                existing.display(),
                system::unwritable_reason(existing, &e)
            ),
        });
    }
    check_writable(dir)
}

/// Free space below which a window's files would likely not fit (a profile of a busy process
/// takes up to a few MiB): refused before anything attaches.
const MIN_FREE_BYTES: u64 = 1 << 20;

fn check_writable(dir: &Path) -> Result<(), Error> {
    let probe = dir.join(".stallscope-write-test");
    std::fs::write(&probe, b"").map_err(|e| Error::OutputNotWritable {
        path: dir.to_path_buf(),
        reason: system::unwritable_reason(dir, &e),
    })?;
    let _ = std::fs::remove_file(probe);
    if let Some(free) = system::free_bytes(dir)
        && free < MIN_FREE_BYTES
    {
        return Err(Error::OutputNotWritable {
            path: dir.to_path_buf(),
            reason: format!(
                "only {} KiB are free on its filesystem, and one window's profiles can take a \
                 few MiB; free some space there",
                free / 1024
            ),
        });
    }
    Ok(())
}

/// Before the results are written: a directory removed during the window is made again (the
/// profiles are in memory; losing them to an `rm` would help nobody), and said so.
fn restore_output(dir: &Path) -> Result<(), Error> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    eprintln!(
        "stallscope: the output directory {} was removed during the window; created it again",
        dir.display()
    );
    Ok(())
}
