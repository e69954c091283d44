//! The only module that touches aya: loads the BPF object, attaches and detaches programs, and
//! reads the kernel's aggregation maps into plain data ([`CpuRecord`], [`Counters`]).
//! Everything downstream (model, symbolize, export) is testable without root.

pub mod btf;
pub mod offsets;
pub mod tasks;

use std::collections::HashMap as StdHashMap;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, StackTraceMap},
    programs::{
        PerfEvent, Program,
        perf_event::{
            PerfEventConfig, PerfEventLinkId, PerfEventScope, SamplePolicy, SoftwareEvent,
        },
        tp_btf::BtfTracePointLinkId,
        uprobe::{UProbeLinkId, UProbeScope},
    },
    util::online_cpus,
};
use stallscope_common::{
    BLOCK_COUNT_SCALE, COUNTER_SLOTS, Config, Counter, CounterGroup, EXIT_TRACKED, KernelOffsets,
    MutexKey, MutexValue, ProcMappings, STACK_LOST, USER_STACK_LOST, USER_STACK_NONE,
    USER_STACK_NOT_STARTED, UnwindRow, UserStack, runq_bucket_low,
};

use stallscope_common::maps::{self, MapSpec};

use crate::error::Error;

/// The BPF object built by agent/build.rs (aya-build) from ebpf/programs.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stallscope"));

/// A fixed-point count (× `BLOCK_COUNT_SCALE`) rounded to a whole one. Each kept event
/// counts at least one (its weight is ≥ 1), so no recorded count rounds to zero.
fn unscale(count_scaled: u64) -> u64 {
    (count_scaled + BLOCK_COUNT_SCALE / 2) / BLOCK_COUNT_SCALE
}

/// One window's event and loss counters ([`Counter`]: the kernel's summed over CPUs, and the two
/// the agent counts as it reads the maps). Serialized as `{name: value}` in slot order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters([u64; COUNTER_SLOTS as usize]);

impl Default for Counters {
    fn default() -> Self {
        Self([0; COUNTER_SLOTS as usize])
    }
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    pub fn set(&mut self, c: Counter, v: u64) {
        self.0[c as usize] = v;
    }

    /// Every counter with its value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }

    /// What was counted since `earlier` (an attachment's counters only grow until it is
    /// reset).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = self.clone();
        for (o, e) in out.0.iter_mut().zip(earlier.0) {
            *o = o.saturating_sub(e);
        }
        out
    }

    /// The sum of a group's counters.
    pub fn group_sum(&self, g: CounterGroup) -> u64 {
        self.iter()
            .filter(|(c, _)| c.info().group == g)
            .map(|(_, v)| v)
            .sum()
    }
}

impl serde::Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut m = s.serialize_map(Some(Counter::ALL.len()))?;
        for (c, v) in self.iter() {
            m.serialize_entry(c.info().name, &v)?;
        }
        m.end()
    }
}

/// A part of a stack as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackPart {
    /// Addresses, leaf first (may be empty: no such part, e.g. a user-mode sample's kernel part).
    Frames(Vec<u64>),
    /// The kernel failed to capture it (already counted in [`Counters`]).
    Lost,
    /// A new thread's wait before its first run: it had no user stack of its own yet.
    NotStarted,
}

/// One aggregated CPU sample bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuRecord {
    pub tgid: u32,
    pub tid: u32,
    pub user: StackPart,
    pub kernel: StackPart,
    pub count: u64,
}

/// One aggregated off-CPU bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffcpuRecord {
    pub tgid: u32,
    pub tid: u32,
    /// `stallscope_common::wait_class::*`
    pub class: u32,
    /// Syscall number for the `syscall` class, else -1.
    pub syscall: i32,
    pub user: StackPart,
    pub kernel: StackPart,
    pub count: u64,
    pub total_ns: u64,
}

/// One block-profile bucket (Go's sampling already applied in the kernel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    pub tgid: u32,
    pub tid: u32,
    pub user: StackPart,
    /// Estimated contentions × `BLOCK_COUNT_SCALE`.
    pub count_scaled: u64,
    pub delay_ns: u64,
}

/// Mutex-profile bucket: a futex word and a stack (the releasing thread's for holders, the
/// waiting thread's for waiters), values already weighted by the mutex fraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutexRecord {
    pub tgid: u32,
    /// The releasing thread (holders) or the waiting thread (waiters).
    pub tid: u32,
    pub uaddr: u64,
    pub user: StackPart,
    pub count: u64,
    pub delay_ns: u64,
}

/// One bucket of the run-queue latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunqBucket {
    pub tgid: u32,
    pub bucket: u32,
    /// Lowest latency of the bucket, ns.
    pub low_ns: u64,
    pub count: u64,
}

/// A thread that was off CPU when the state was read (its interval is still open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenInterval {
    pub tid: u32,
    pub tgid: u32,
    pub class: u32,
    pub syscall: i32,
    pub off_ts: u64,
    pub wake_ts: u64,
    pub user: StackPart,
    pub kernel: StackPart,
}

/// Wall time on CPU of one thread as the probes measured it (`ThreadState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnCpu {
    /// ktime of the last switch-in when it is on CPU now (0: off CPU, or never seen going on).
    pub on_ts: u64,
    /// Wall time on CPU between switch-ins and switch-outs seen.
    pub oncpu_ns: u64,
    /// ktime of the first switch-out not preceded by a switch-in seen (0: none).
    pub first_out_ts: u64,
}

/// A target thread that exited during the window, as its last switch-out saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitedThread {
    pub tid: u32,
    pub tgid: u32,
    /// ktime of its exit.
    pub exit_ts: u64,
    /// Its CPU time over its whole life, ns.
    pub cpu_ns: u64,
    /// ktime of its creation.
    pub start_ts: u64,
    pub name: String,
    /// What the probes measured of its time on CPU, up to its exit (`on_ts` is 0).
    pub oncpu: OnCpu,
    /// It had per-thread state in the kernel at its exit: the probes saw it leave the CPU (or
    /// be born) in the window and recorded its waits themselves.
    pub tracked: bool,
}

/// How full one aggregation map was at the end of a window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub max_entries: u64,
}

/// Cumulative run time and run count of one loaded program (`bpf_prog_info`); both stay 0
/// unless BPF statistics are enabled (`kernel.bpf_stats_enabled=1` or `BPF_ENABLE_STATS`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProgramStats {
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// Aggregation maps whose fill is reported (`/metrics`).
pub const FILL_MAPS: [&str; 8] = [
    maps::CPU_SAMPLES::NAME,
    maps::OFFCPU::NAME,
    maps::BLOCK::NAME,
    maps::RUNQ_HIST::NAME,
    maps::MUTEX::NAME,
    maps::LOCK_WAITERS::NAME,
    maps::THREADS::NAME,
    maps::USER_STACKS::NAME,
];

/// The kernel programs behind the off-CPU, block and mutex profiles, each a BTF tracepoint
/// program on the tracepoint of its own name. No syscall is hooked: enabling even one syscall tracepoint sends every
/// syscall of every process on the machine through the kernel's tracing slow path (measured
/// +70 ns per call on this project's machines), and fentry on `__x64_sys_*` is refused by
/// kernels under lockdown (EPERM).
const OFFCPU_PROGRAMS: [&str; 3] = ["sched_switch", "sched_waking", "sched_wakeup_new"];

/// The Go runtime's uprobes: `runtime.gopark`'s entry, `runtime.ready`'s entry, the entries
/// of its lock waits (`runtime_SemacquireMutex`).
const GO_PROGRAMS: [&str; 3] = ["go_gopark", "go_ready", "go_semacquire"];

/// Where the goroutine probes of one Go process go (read from its executable by
/// `dump::goroutines::runtime_probes`).
#[derive(Debug, Clone)]
pub struct GoProbes {
    /// The executable to probe (`/proc/PID/exe`).
    pub exe: std::path::PathBuf,
    /// File offsets of `runtime.gopark` and `runtime.ready`.
    pub gopark_offset: u64,
    pub ready_offset: u64,
    /// File offsets of the `runtime_SemacquireMutex` variants the binary has.
    pub semacquire_offsets: Vec<u64>,
    pub proc: stallscope_common::GoProc,
}

/// The loaded BPF programs and their maps, plus the links of what is attached now.
pub struct Collector {
    ebpf: Ebpf,
    cpu_links: Vec<PerfEventLinkId>,
    tp_links: Vec<(&'static str, BtfTracePointLinkId)>,
    /// The Go runtime's uprobes: (process followed, program, link).
    go_links: Vec<(u32, &'static str, UProbeLinkId)>,
    stacks: StackTraceMap<MapData>,
    btf: Option<Btf>,
}

type UserStackCache = StdHashMap<u64, StackPart>;

/// Loads (verifies) one program: the CPU sampler, or a BTF tracepoint program on the
/// tracepoint of its own name (`btf`: the kernel's, needed for those).
fn load_program(name: &str, prog: &mut Program, btf: Option<&Btf>) -> Result<(), Error> {
    match prog {
        Program::PerfEvent(p) => p.load().map_err(|e| Error::bpf_load(name, e)),
        Program::UProbe(p) => p
            .load()
            .map_err(|e| Error::bpf_load(format!("{name} (uprobe)"), e)),
        Program::BtfTracePoint(p) => {
            let btf = btf.ok_or_else(|| Error::bug(format!("{name}: no kernel BTF read")))?;
            p.load(name, btf)
                .map_err(|e| Error::bpf_load(format!("{name} (BTF tracepoint)"), e))
        }
        _ => Err(Error::bug(format!(
            "{name}: not a program type the agent loads"
        ))),
    }
}

/// The monotonic clock the BPF programs use (`bpf_ktime_get_ns`), in ns.
pub fn ktime_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: plain syscall writing into a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Turns on the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`) for as long as the
/// returned fd is open, so [`Collector::program_stats`] reports run time and runs. While on,
/// every BPF program on the machine pays two clock reads per run.
pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd, Error> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::internal("enabling BPF run-time statistics", e))
}

/// The aggregation maps `--map-entries` sizes: one per profile (and the mutex profile's
/// waiter side).
const AGGREGATION_MAPS: [&str; 5] = [
    maps::CPU_SAMPLES::NAME,
    maps::OFFCPU::NAME,
    maps::BLOCK::NAME,
    maps::MUTEX::NAME,
    maps::LOCK_WAITERS::NAME,
];

impl Collector {
    /// Loads the BPF object (verifies every program), with `map_entries` entries in each
    /// aggregation map.
    pub fn load(offsets: KernelOffsets, map_entries: u32) -> Result<Self, Error> {
        if BPF_OBJECT.is_empty() {
            return Err(Error::bug(
                "this agent was built with AYA_BUILD_SKIP=1 and has no BPF programs; \
                 rebuild it with `cargo xtask build`",
            ));
        }
        let mut loader = EbpfLoader::new();
        loader.override_global("KERNEL_OFFSETS", &offsets, true);
        for name in AGGREGATION_MAPS {
            loader.map_max_entries(name, map_entries);
        }
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|e| Error::bpf_load("the BPF object", e))?;
        // Every shared map (its key and value sizes are checked where it is opened).
        if let Some((name, _, _)) = maps::ALL.iter().find(|(n, _, _)| ebpf.map(n).is_none()) {
            return Err(Error::bug(format!(
                "the BPF object has no map {name}: the agent and its programs are out of sync \
                 (rebuild with `cargo xtask build`)"
            )));
        }
        let stacks = StackTraceMap::try_from(
            ebpf.take_map("STACKS")
                .ok_or_else(|| Error::bug("STACKS map missing from BPF object"))?,
        )
        .map_err(|e| Error::internal("STACKS map", e))?;
        Ok(Self {
            ebpf,
            cpu_links: Vec::new(),
            tp_links: Vec::new(),
            go_links: Vec::new(),
            stacks,
            btf: None,
        })
    }

    /// Starts forwarding the BPF programs' aya-log records to the `log` crate. The returned
    /// future drives the forwarding; spawn it on the runtime.
    pub fn take_logger(
        &mut self,
    ) -> Result<impl std::future::Future<Output = ()> + Send + 'static, Error> {
        let logger =
            aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| Error::internal("aya-log", e))?;
        // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd owns the logger.
        let mut fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }
        .map_err(|e| Error::internal("aya-log fd", e))?;
        Ok(async move {
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    return;
                };
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        })
    }

    /// Adds a process (tgid) to the set the programs record.
    pub fn add_target(&mut self, tgid: u32) -> Result<(), Error> {
        self.set_target_bit(tgid, true)
    }

    /// Sets or clears `tgid`'s bit in the programs' target bitmap.
    fn set_target_bit(&mut self, tgid: u32, on: bool) -> Result<(), Error> {
        let (word, bit) = stallscope_common::target_bit(tgid)
            .ok_or_else(|| Error::bug(format!("pid {tgid} is beyond the target bitmap")))?;
        let mut bits = self.array_mut::<maps::TARGET_BITS>()?;
        let old = bits
            .get(&word, 0)
            .map_err(|e| Error::internal("target bitmap", e))?;
        let new = if on { old | bit } else { old & !bit };
        bits.set(word, new, 0)
            .map_err(|e| Error::internal("target bitmap", e))
    }

    /// Removes a process from the set the programs record (and its unwinder mappings).
    pub fn remove_target(&mut self, tgid: u32) -> Result<(), Error> {
        self.set_target_bit(tgid, false)?;
        let mut mappings = self.hash_mut::<maps::PROC_MAPPINGS>()?;
        let _ = mappings.remove(&tgid);
        Ok(())
    }

    /// Empties the aggregation maps, per-thread and per-lock state, both stack maps and the
    /// counters, so that a long-lived collector (`agent serve`) starts every capture window
    /// from nothing. Call it with nothing attached.
    pub fn reset_window(&mut self) -> Result<(), Error> {
        fn clear<M: MapSpec>(c: &mut Collector) -> Result<(), Error>
        where
            M::Key: aya::Pod,
            M::Value: aya::Pod,
        {
            let mut map = c.hash_mut::<M>()?;
            let keys: Vec<M::Key> = map.keys().filter_map(Result::ok).collect();
            for k in keys {
                let _ = map.remove(&k);
            }
            Ok(())
        }
        clear::<maps::CPU_SAMPLES>(self)?;
        clear::<maps::OFFCPU>(self)?;
        clear::<maps::BLOCK>(self)?;
        clear::<maps::RUNQ_HIST>(self)?;
        clear::<maps::MUTEX>(self)?;
        clear::<maps::LOCK_WAITERS>(self)?;
        clear::<maps::LOCKS>(self)?;
        clear::<maps::THREADS>(self)?;
        clear::<maps::FIRST_SEEN>(self)?;
        clear::<maps::EXITED>(self)?;
        clear::<maps::FOLLOWED>(self)?;
        clear::<maps::USER_STACKS>(self)?;
        // Cached walks name handles in USER_STACKS, just emptied.
        clear::<maps::WALK_CACHE>(self)?;
        let ids: Vec<u32> = self.stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = self.stacks.remove(&id);
        }
        let ncpus = aya::util::nr_cpus()
            .map_err(|(what, e)| Error::internal(format!("counting CPUs ({what})"), e))?;
        let mut counters = self.per_cpu_array_mut::<maps::COUNTERS>()?;
        for idx in 0..COUNTER_SLOTS {
            let zeros = aya::maps::PerCpuValues::try_from(vec![0u64; ncpus])
                .map_err(|e| Error::internal("zeroing counters", e))?;
            counters
                .set(idx, zeros, 0)
                .map_err(|e| Error::internal(format!("zeroing counter {idx}"), e))?;
        }
        Ok(())
    }

    /// Deletes what the maps hold for the processes `tgids` (per-thread state also for the
    /// threads `tids`), so that a process leaving a window of a long-lived attachment shared
    /// by several (`agent serve`) starts its next one from nothing. The stack maps and the
    /// counters are the attachment's and stay.
    pub fn forget_processes(
        &mut self,
        tgids: &std::collections::HashSet<u32>,
        tids: &std::collections::HashSet<u32>,
    ) -> Result<(), Error> {
        fn forget<M: MapSpec>(
            c: &mut Collector,
            gone: impl Fn(&M::Key, &M::Value) -> bool,
        ) -> Result<(), Error>
        where
            M::Key: aya::Pod,
            M::Value: aya::Pod,
        {
            let mut map = c.hash_mut::<M>()?;
            let keys: Vec<M::Key> = map
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, v)| gone(k, v))
                .map(|(k, _)| k)
                .collect();
            for k in keys {
                let _ = map.remove(&k);
            }
            Ok(())
        }
        let of = |tgid: u32| tgids.contains(&tgid);
        forget::<maps::CPU_SAMPLES>(self, |k, _| of(k.tgid))?;
        forget::<maps::OFFCPU>(self, |k, _| of(k.tgid))?;
        forget::<maps::BLOCK>(self, |k, _| of(k.tgid))?;
        forget::<maps::RUNQ_HIST>(self, |k, _| of(k.tgid))?;
        forget::<maps::MUTEX>(self, |k, _| of(k.tgid))?;
        forget::<maps::LOCK_WAITERS>(self, |k, _| of(k.tgid))?;
        forget::<maps::LOCKS>(self, |k, _| of(k.tgid))?;
        forget::<maps::THREADS>(self, |tid, st| of(st.tgid) || tids.contains(tid))?;
        forget::<maps::FIRST_SEEN>(self, |tid, _| tids.contains(tid))?;
        forget::<maps::EXITED>(self, |_, x| of(x.tgid))?;
        forget::<maps::FOLLOWED>(self, |child, _| of(*child))?;
        Ok(())
    }

    /// A typed, writable view of the BPF map `name`.
    fn map_mut<'a, M>(&'a mut self, name: &str) -> Result<M, Error>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        M::try_from(
            self.ebpf
                .map_mut(name)
                .ok_or_else(|| Error::bug(format!("{name} map missing from BPF object")))?,
        )
        .map_err(|e| Error::internal(format!("{name} map"), e))
    }

    /// Loads (verifies) the programs a capture needs, so attaching later is quick and the
    /// capture window is not eaten by verification. The programs are verified at once, one
    /// thread each: the kernel verifies a privileged loader's programs in parallel, and the
    /// scheduler programs' verification is most of the time from attach to the first sample.
    pub fn load_programs(&mut self, cpu: bool, offcpu: bool) -> Result<(), Error> {
        if offcpu {
            self.read_btf()?;
        }
        let btf = self.btf.as_ref();
        let wanted = |name: &str| {
            (cpu && name == "cpu_sample") || (offcpu && OFFCPU_PROGRAMS.contains(&name))
        };
        let jobs: Vec<(&str, &mut Program)> = self
            .ebpf
            .programs_mut()
            .filter(|(name, prog)| wanted(name) && prog.fd().is_err())
            .collect();
        std::thread::scope(|scope| {
            let loads: Vec<_> = jobs
                .into_iter()
                .map(|(name, prog)| scope.spawn(move || load_program(name, prog, btf)))
                .collect();
            loads.into_iter().try_for_each(|l| {
                l.join()
                    .unwrap_or_else(|_| Err(Error::bug("a program's load thread panicked")))
            })
        })
    }

    fn perf_program(&mut self) -> Result<&mut PerfEvent, Error> {
        self.ebpf
            .program_mut("cpu_sample")
            .ok_or_else(|| Error::bug("cpu_sample program missing"))?
            .try_into()
            .map_err(|e| Error::internal("cpu_sample", e))
    }

    /// Attaches the CPU sampler: a software cpu-clock perf event at `frequency` Hz on every
    /// online CPU. Returns the number of CPUs attached.
    pub fn start_cpu(&mut self, frequency: u64) -> Result<usize, Error> {
        self.load_programs(true, false)?;
        let cpus = online_cpus()
            .map_err(|(what, e)| Error::internal(format!("listing online CPUs ({what})"), e))?;
        for cpu in &cpus {
            let prog = self.perf_program()?;
            let link = prog
                .attach(
                    PerfEventConfig::Software(SoftwareEvent::CpuClock),
                    PerfEventScope::AllProcessesOneCpu { cpu: *cpu },
                    SamplePolicy::Frequency(frequency),
                    false,
                )
                .map_err(|e| Error::attach(format!("cpu-clock perf event on CPU {cpu}"), e))?;
            self.cpu_links.push(link);
        }
        Ok(cpus.len())
    }

    /// Detaches the CPU sampler (idempotent). The samples stay in the map to be read.
    pub fn stop_cpu(&mut self) {
        let Some(prog) = self.ebpf.program_mut("cpu_sample") else {
            return;
        };
        let Ok(prog): Result<&mut PerfEvent, _> = prog.try_into() else {
            return;
        };
        for link in self.cpu_links.drain(..) {
            if let Err(e) = prog.detach(link) {
                tracing::warn!("detaching cpu sampler: {e}");
            }
        }
    }

    /// Sets what the tracepoint programs record (off-CPU, block) and their thresholds.
    pub fn set_config(&mut self, config: Config) -> Result<(), Error> {
        let mut map = self.array_mut::<maps::CONFIG>()?;
        map.set(0, config, 0)
            .map_err(|e| Error::internal("writing CONFIG", e))
    }

    /// Attaches the scheduler tracepoints behind the off-CPU, block and mutex profiles (BTF
    /// tracepoints: no tracefs needed). What they record is chosen by [`Self::set_config`].
    pub fn start_offcpu(&mut self) -> Result<(), Error> {
        self.load_programs(false, true)?;
        for prog_name in OFFCPU_PROGRAMS {
            self.attach_tp(prog_name)?;
        }
        Ok(())
    }

    /// Attaches a loaded BTF tracepoint program; [`Collector::stop_offcpu`] detaches it.
    fn attach_tp(&mut self, prog_name: &'static str) -> Result<(), Error> {
        let attached = self.program(prog_name).and_then(|prog| match prog {
            Program::BtfTracePoint(p) => p
                .attach()
                .map_err(|e| Error::attach(format!("BTF tracepoint {prog_name}"), e)),
            _ => Err(Error::bug(format!("{prog_name}: unexpected type"))),
        })?;
        self.tp_links.push((prog_name, attached));
        Ok(())
    }

    /// Attaches the fork follower (`sched_process_fork`): with `CONFIG_FOLLOW` set, a process
    /// forked by a target becomes one at its fork. Detached by [`Collector::stop_offcpu`].
    pub fn start_follow(&mut self) -> Result<(), Error> {
        const PROG: &str = "sched_process_fork";
        self.load_hooked(PROG)?;
        self.attach_tp(PROG)
    }

    /// Processes the fork follower made targets, child → parent, taken out of the map (each
    /// is read once).
    pub fn take_followed(&mut self) -> Result<Vec<(u32, u32)>, Error> {
        let mut map = self.hash_mut::<maps::FOLLOWED>()?;
        let mut out = Vec::new();
        for entry in map.iter() {
            out.push(entry.map_err(|e| Error::internal("reading FOLLOWED", e))?);
        }
        for (child, _) in &out {
            let _ = map.remove(child);
        }
        Ok(out)
    }

    /// Loads (verifies) a BTF tracepoint program (attached to the tracepoint of its own name)
    /// unless it is loaded.
    fn load_hooked(&mut self, prog_name: &'static str) -> Result<(), Error> {
        self.read_btf()?;
        let btf = self.btf.as_ref();
        let prog = self
            .ebpf
            .program_mut(prog_name)
            .ok_or_else(|| Error::bug(format!("{prog_name} program missing")))?;
        if prog.fd().is_err() {
            load_program(prog_name, prog, btf)?;
        }
        Ok(())
    }

    /// Reads the kernel's BTF (once per collector): BTF tracepoint programs and the task
    /// iterator are loaded against it.
    fn read_btf(&mut self) -> Result<(), Error> {
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().map_err(|e| {
                Error::bpf_load("reading the kernel BTF /sys/kernel/btf/vmlinux", e)
            })?);
        }
        Ok(())
    }

    fn program(&mut self, prog_name: &str) -> Result<&mut Program, Error> {
        self.ebpf
            .program_mut(prog_name)
            .ok_or_else(|| Error::bug(format!("{prog_name} program missing")))
    }

    /// Follows the goroutines of Go process `pid` for the block and mutex profiles: its
    /// `GO_PROCS` entry, and the uprobes of [`GO_PROGRAMS`] on its executable, firing for that
    /// process only. They record while `CONFIG_BLOCK` or `CONFIG_MUTEX` is set;
    /// [`Collector::stop_go`] detaches them.
    pub fn attach_go(&mut self, pid: u32, probes: &GoProbes) -> Result<(), Error> {
        for name in GO_PROGRAMS {
            let prog = self.program(name)?;
            if prog.fd().is_err() {
                load_program(name, prog, None)?;
            }
        }
        self.hash_mut::<maps::GO_PROCS>()?
            .insert(pid, probes.proc, 0)
            .map_err(|e| Error::internal("writing GO_PROCS", e))?;
        let scope = std::num::NonZeroU32::new(pid)
            .map(UProbeScope::OneProcess)
            .ok_or_else(|| Error::bug("pid 0"))?;
        let points = [
            (GO_PROGRAMS[0], probes.gopark_offset),
            (GO_PROGRAMS[1], probes.ready_offset),
        ]
        .into_iter()
        .chain(
            probes
                .semacquire_offsets
                .iter()
                .map(|o| (GO_PROGRAMS[2], *o)),
        );
        for (name, offset) in points {
            let link = match self.program(name)? {
                Program::UProbe(p) => p
                    .attach(offset, &probes.exe, scope)
                    .map_err(|e| Error::attach(format!("uprobe {name} on process {pid}"), e))?,
                _ => return Err(Error::bug(format!("{name}: not a uprobe"))),
            };
            self.go_links.push((pid, name, link));
        }
        Ok(())
    }

    /// Detaches the Go runtime's uprobes and forgets the processes and goroutines they
    /// followed (idempotent). What they recorded stays in `BLOCK` and `MUTEX`.
    pub fn stop_go(&mut self) {
        let pids: std::collections::HashSet<u32> = self.go_links.iter().map(|l| l.0).collect();
        for pid in pids {
            self.detach_go(pid);
        }
    }

    /// [`Collector::stop_go`] for one process (a long-lived attachment's window ending).
    pub fn detach_go(&mut self, pid: u32) {
        let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.go_links)
            .into_iter()
            .partition(|l| l.0 == pid);
        self.go_links = others;
        for (_, name, link) in mine {
            if let Some(Program::UProbe(p)) = self.ebpf.program_mut(name)
                && let Err(e) = p.detach(link)
            {
                tracing::warn!("detaching {name} from {pid}: {e}");
            }
        }
        fn forget<M: MapSpec>(c: &mut Collector, gone: impl Fn(&M::Key) -> bool)
        where
            M::Key: aya::Pod,
            M::Value: aya::Pod,
        {
            if let Ok(mut map) = c.hash_mut::<M>() {
                let keys: Vec<M::Key> = map
                    .keys()
                    .filter_map(Result::ok)
                    .filter(|k| gone(k))
                    .collect();
                for k in keys {
                    let _ = map.remove(&k);
                }
            }
        }
        forget::<maps::GO_PROCS>(self, |k| *k == pid);
        forget::<maps::GO_PARKED>(self, |k| k.tgid == pid);
        forget::<maps::GO_SEMA>(self, |k| k.tgid == pid);
    }

    /// Detaches the off-CPU/block/mutex programs and the fork follower (idempotent). Recorded data stays readable.
    pub fn stop_offcpu(&mut self) {
        for (prog_name, link) in self.tp_links.drain(..) {
            let Some(prog) = self.ebpf.program_mut(prog_name) else {
                continue;
            };
            let r = match prog {
                Program::BtfTracePoint(p) => p.detach(link),
                _ => continue,
            };
            if let Err(e) = r {
                tracing::warn!("detaching {prog_name}: {e}");
            }
        }
    }

    /// Reads the kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, Error> {
        let map = self.per_cpu_array::<maps::COUNTERS>()?;
        let read = |c: Counter| -> Result<u64, Error> {
            let idx = c as u32;
            debug_assert!(idx < COUNTER_SLOTS);
            let per_cpu = map
                .get(&idx, 0)
                .map_err(|e| Error::internal(format!("reading counter {c:?}"), e))?;
            Ok(per_cpu.iter().sum())
        };
        let mut c = Counters::default();
        for counter in Counter::ALL {
            if !counter.agent_side() {
                c.set(counter, read(counter)?);
            }
        }
        c.set(Counter::ProgRunsSkipped, self.prog_runs_missed());
        c.set(Counter::UserStackCorrupt, self.count_corrupt_stacks()?);
        Ok(c)
    }

    /// Reads every CPU sample bucket with its stacks resolved to addresses.
    pub fn cpu_records(&self) -> Result<Vec<CpuRecord>, Error> {
        let map = self.hash::<maps::CPU_SAMPLES>()?;
        let mut cache: StdHashMap<i32, StackPart> = StdHashMap::new();
        let mut ucache = UserStackCache::new();
        let mut out = Vec::new();
        for entry in map.iter() {
            let (key, count) = entry.map_err(|e| Error::internal("reading CPU_SAMPLES", e))?;
            out.push(CpuRecord {
                tgid: key.tgid,
                tid: key.tid,
                user: self.user_stack(key.user_stack, &mut ucache),
                kernel: self.stack(key.kernel_stack, &mut cache),
                count,
            });
        }
        Ok(out)
    }

    /// Reads every off-CPU bucket.
    pub fn offcpu_records(&self) -> Result<Vec<OffcpuRecord>, Error> {
        let map = self.hash::<maps::OFFCPU>()?;
        let mut cache = StdHashMap::new();
        let mut ucache = UserStackCache::new();
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry.map_err(|e| Error::internal("reading OFFCPU", e))?;
            out.push(OffcpuRecord {
                tgid: k.tgid,
                tid: k.tid,
                class: k.class,
                syscall: k.syscall,
                user: self.user_stack(k.user_stack, &mut ucache),
                kernel: self.stack(k.kernel_stack, &mut cache),
                count: unscale(v.count_scaled),
                total_ns: v.total_ns,
            });
        }
        Ok(out)
    }

    /// Reads every block-profile bucket.
    pub fn block_records(&self) -> Result<Vec<BlockRecord>, Error> {
        let map = self.hash::<maps::BLOCK>()?;
        let mut ucache = UserStackCache::new();
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, v) = entry.map_err(|e| Error::internal("reading BLOCK", e))?;
            out.push(BlockRecord {
                tgid: k.tgid,
                tid: k.tid,
                user: self.user_stack(k.user_stack, &mut ucache),
                count_scaled: v.count_scaled,
                delay_ns: v.delay_ns,
            });
        }
        Ok(out)
    }

    /// Reads the mutex profile: (delay by releasing stack, waits by waiting stack).
    pub fn mutex_records(&self) -> Result<(Vec<MutexRecord>, Vec<MutexRecord>), Error> {
        let mut ucache = UserStackCache::new();
        let mut read = |map: HashMap<&MapData, MutexKey, MutexValue>,
                        name: &str|
         -> Result<Vec<MutexRecord>, Error> {
            let mut out = Vec::new();
            for entry in map.iter() {
                let (k, v) = entry.map_err(|e| Error::internal(format!("reading {name}"), e))?;
                out.push(MutexRecord {
                    tgid: k.tgid,
                    tid: k.tid,
                    uaddr: k.uaddr,
                    user: self.user_stack(k.user_stack, &mut ucache),
                    count: unscale(v.count_scaled),
                    delay_ns: v.delay_ns,
                });
            }
            Ok(out)
        };
        Ok((
            read(self.hash::<maps::MUTEX>()?, maps::MUTEX::NAME)?,
            read(self.hash::<maps::LOCK_WAITERS>()?, maps::LOCK_WAITERS::NAME)?,
        ))
    }

    /// Reads the run-queue latency histogram.
    pub fn runq_histogram(&self) -> Result<Vec<RunqBucket>, Error> {
        let map = self.hash::<maps::RUNQ_HIST>()?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (k, count) = entry.map_err(|e| Error::internal("reading RUNQ_HIST", e))?;
            out.push(RunqBucket {
                tgid: k.tgid,
                bucket: k.bucket,
                low_ns: runq_bucket_low(k.bucket),
                count,
            });
        }
        out.sort_by_key(|b| (b.tgid, b.bucket));
        Ok(out)
    }

    /// Threads that are off CPU right now, with when and how they left.
    pub fn open_intervals(&self) -> Result<Vec<OpenInterval>, Error> {
        let map = self.hash::<maps::THREADS>()?;
        let mut cache = StdHashMap::new();
        let mut ucache = UserStackCache::new();
        let mut out = Vec::new();
        for entry in map.iter() {
            let (tid, st) = entry.map_err(|e| Error::internal("reading THREADS", e))?;
            if st.off_ts == 0 {
                continue;
            }
            out.push(OpenInterval {
                tid,
                tgid: st.tgid,
                class: st.class,
                syscall: st.syscall,
                off_ts: st.off_ts,
                wake_ts: st.wake_ts,
                user: self.user_stack(st.user_stack, &mut ucache),
                kernel: self.stack(st.kernel_stack, &mut cache),
            });
        }
        Ok(out)
    }

    /// Threads whose first switch-in (or wakeup) the probes saw without seeing them leave the
    /// CPU: tid → (first wakeup, first switch-in) in ktime, 0 when not seen.
    pub fn first_seen(&self) -> Result<StdHashMap<u32, (u64, u64)>, Error> {
        let map = self.hash::<maps::FIRST_SEEN>()?;
        let mut out = StdHashMap::new();
        for entry in map.iter() {
            let (tid, f) = entry.map_err(|e| Error::internal("reading FIRST_SEEN", e))?;
            out.insert(tid, (f.wake_ts, f.in_ts));
        }
        Ok(out)
    }

    /// Threads that have per-thread state in the kernel now (the probes saw them run), with
    /// the wall time on CPU the probes measured.
    pub fn tracked_threads(&self) -> Result<StdHashMap<u32, OnCpu>, Error> {
        let map = self.hash::<maps::THREADS>()?;
        let mut out = StdHashMap::new();
        for entry in map.iter() {
            let (tid, st) = entry.map_err(|e| Error::internal("reading THREADS", e))?;
            out.insert(
                tid,
                OnCpu {
                    on_ts: st.on_ts,
                    oncpu_ns: st.oncpu_ns,
                    first_out_ts: st.first_out_ts,
                },
            );
        }
        Ok(out)
    }

    /// Target threads that exited during the window.
    pub fn exited_threads(&self) -> Result<Vec<ExitedThread>, Error> {
        let map = self.hash::<maps::EXITED>()?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (tid, x) = entry.map_err(|e| Error::internal("reading EXITED", e))?;
            let end = x.comm.iter().position(|&c| c == 0).unwrap_or(x.comm.len());
            out.push(ExitedThread {
                tid,
                tgid: x.tgid,
                exit_ts: x.exit_ts,
                cpu_ns: x.sum_exec_ns,
                start_ts: x.start_ts,
                name: String::from_utf8_lossy(&x.comm[..end]).into_owned(),
                oncpu: OnCpu {
                    on_ts: 0,
                    oncpu_ns: x.oncpu_ns,
                    first_out_ts: x.first_out_ts,
                },
                tracked: x.flags & EXIT_TRACKED != 0,
            });
        }
        out.sort_by_key(|x| x.tid);
        Ok(out)
    }

    /// The sum of the loaded programs' `recursion_misses`, from their fdinfo (aya's
    /// `ProgramInfo` does not expose it). A program whose fdinfo can't be read counts 0.
    fn prog_runs_missed(&self) -> u64 {
        use std::os::fd::{AsFd, AsRawFd};
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .filter_map(|fd| {
                let raw = fd.as_fd().as_raw_fd();
                std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()
            })
            .filter_map(|info| crate::system::status_field::<u64>(&info, "recursion_misses"))
            .sum()
    }

    /// Stored user stacks whose frames do not match their handle (see [`verified_frames`]):
    /// reading them gives a lost stack.
    fn count_corrupt_stacks(&self) -> Result<u64, Error> {
        let map = self.hash::<maps::USER_STACKS>()?;
        Ok(map
            .iter()
            .filter_map(Result::ok)
            .filter(|(h, st)| verified_frames(*h, st).is_none())
            .count() as u64)
    }

    /// A typed view of the BPF map `name` (a `HashMap`, `Array`, `PerCpuArray`...).
    fn map_ref<'a, M>(&'a self, name: &str) -> Result<M, Error>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        M::try_from(
            self.ebpf
                .map(name)
                .ok_or_else(|| Error::bug(format!("{name} map missing from BPF object")))?,
        )
        .map_err(|e| Error::internal(format!("{name} map"), e))
    }

    /// Shared map `M` (`stallscope_common::maps`) as a hash map (or LRU hash map).
    fn hash<M: MapSpec>(&self) -> Result<HashMap<&MapData, M::Key, M::Value>, Error>
    where
        M::Key: aya::Pod,
        M::Value: aya::Pod,
    {
        self.map_ref(M::NAME)
    }

    fn hash_mut<M: MapSpec>(&mut self) -> Result<HashMap<&mut MapData, M::Key, M::Value>, Error>
    where
        M::Key: aya::Pod,
        M::Value: aya::Pod,
    {
        self.map_mut(M::NAME)
    }

    fn array_mut<M: MapSpec<Key = u32>>(&mut self) -> Result<Array<&mut MapData, M::Value>, Error>
    where
        M::Value: aya::Pod,
    {
        self.map_mut(M::NAME)
    }

    fn per_cpu_array<M: MapSpec<Key = u32>>(&self) -> Result<PerCpuArray<&MapData, M::Value>, Error>
    where
        M::Value: aya::Pod,
    {
        self.map_ref(M::NAME)
    }

    fn per_cpu_array_mut<M: MapSpec<Key = u32>>(
        &mut self,
    ) -> Result<PerCpuArray<&mut MapData, M::Value>, Error>
    where
        M::Value: aya::Pod,
    {
        self.map_mut(M::NAME)
    }

    /// Entries in each aggregation map now, against its capacity.
    pub fn map_fill(&self) -> Vec<MapFill> {
        let mut out = Vec::new();
        for name in FILL_MAPS {
            let entries = match name {
                maps::CPU_SAMPLES::NAME => self.count_keys::<maps::CPU_SAMPLES>(),
                maps::OFFCPU::NAME => self.count_keys::<maps::OFFCPU>(),
                maps::BLOCK::NAME => self.count_keys::<maps::BLOCK>(),
                maps::RUNQ_HIST::NAME => self.count_keys::<maps::RUNQ_HIST>(),
                maps::MUTEX::NAME => self.count_keys::<maps::MUTEX>(),
                maps::LOCK_WAITERS::NAME => self.count_keys::<maps::LOCK_WAITERS>(),
                maps::THREADS::NAME => self.count_keys::<maps::THREADS>(),
                maps::USER_STACKS::NAME => self.count_keys::<maps::USER_STACKS>(),
                _ => None,
            };
            let max_entries = self
                .ebpf
                .map(name)
                .and_then(|m| match m {
                    aya::maps::Map::HashMap(d) => d.info().ok(),
                    _ => None,
                })
                .map(|i| u64::from(i.max_entries()));
            if let (Some(entries), Some(max_entries)) = (entries, max_entries) {
                out.push(MapFill {
                    map: name,
                    entries,
                    max_entries,
                });
            }
        }
        out
    }

    fn count_keys<M: MapSpec>(&self) -> Option<u64>
    where
        M::Key: aya::Pod,
        M::Value: aya::Pod,
    {
        let map = self.hash::<M>().ok()?;
        Some(map.keys().filter(|k| k.is_ok()).count() as u64)
    }

    /// Run time and run count of every loaded program.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        let mut out = Vec::new();
        for (name, prog) in self.ebpf.programs() {
            let Ok(info) = prog.info() else {
                continue;
            };
            let program = match name {
                "cpu_sample" => "cpu_sample",
                "sched_switch" => "sched_switch",
                "sched_waking" => "sched_waking",
                "sched_wakeup_new" => "sched_wakeup_new",
                _ => continue,
            };
            out.push(ProgramStats {
                program,
                run_time_ns: info.run_time().as_nanos() as u64,
                run_count: info.run_count(),
            });
        }
        out
    }

    /// Uploads compiled CFI rows into the shared row array at `start`.
    pub fn upload_unwind_rows(&mut self, start: u32, rows: &[UnwindRow]) -> Result<(), Error> {
        let mut map = self.array_mut::<maps::UNWIND_ROWS>()?;
        for (i, row) in rows.iter().enumerate() {
            map.set(start + i as u32, *row, 0).map_err(|e| {
                Error::internal(format!("writing unwind row {}", start as usize + i), e)
            })?;
        }
        Ok(())
    }

    /// Sets the executable-mapping table of a process for the unwinder.
    pub fn set_proc_mappings(&mut self, tgid: u32, m: &ProcMappings) -> Result<(), Error> {
        let mut map = self.hash_mut::<maps::PROC_MAPPINGS>()?;
        let unchanged = map
            .get(&tgid, 0)
            .is_ok_and(|old| old.count == m.count && old.entries[..] == m.entries[..]);
        if unchanged {
            return Ok(());
        }
        map.insert(tgid, *m, 0)
            .map_err(|e| Error::internal(format!("writing the mappings of {tgid}"), e))?;
        // Walks cached under the old table may have gone differently: retire them.
        let mut generation = self.array_mut::<maps::WALK_GEN>()?;
        let g = generation.get(&0, 0).unwrap_or(0);
        generation
            .set(0, g.wrapping_add(1), 0)
            .map_err(|e| Error::internal("bumping the walk-cache generation", e))
    }

    fn user_stack(&self, handle: u64, cache: &mut UserStackCache) -> StackPart {
        if handle == USER_STACK_NONE {
            return StackPart::Frames(Vec::new());
        }
        if handle == USER_STACK_LOST {
            return StackPart::Lost;
        }
        if handle == USER_STACK_NOT_STARTED {
            return StackPart::NotStarted;
        }
        if let Some(p) = cache.get(&handle) {
            return p.clone();
        }
        let part = match self.hash::<maps::USER_STACKS>() {
            Ok(map) => match map.get(&handle, 0) {
                Ok(st) => match verified_frames(handle, &st) {
                    Some(f) => StackPart::Frames(f),
                    None => StackPart::Lost,
                },
                Err(_) => StackPart::Lost,
            },
            Err(_) => StackPart::Lost,
        };
        cache.insert(handle, part.clone());
        part
    }

    fn stack(&self, id: i32, cache: &mut StdHashMap<i32, StackPart>) -> StackPart {
        if id == STACK_LOST {
            return StackPart::Lost;
        }
        if id < 0 {
            return StackPart::Frames(Vec::new());
        }
        cache
            .entry(id)
            .or_insert_with(|| match self.stacks.get(&(id as u32), 0) {
                Ok(st) => StackPart::Frames(st.frames().iter().map(|f| f.ip).collect()),
                Err(_) => StackPart::Lost,
            })
            .clone()
    }
}

/// The frames of a stored user stack, if they are the stack its handle names (the handle is
/// their hash): a walk overwritten mid-way by another program on the same CPU would store
/// frames under a hash they do not have.
pub fn verified_frames(handle: u64, st: &UserStack) -> Option<Vec<u64>> {
    let n = (st.len as usize).min(st.ips.len());
    let frames = &st.ips[..n];
    (stallscope_common::stack_hash(frames) == handle).then(|| frames.to_vec())
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop_cpu();
        self.stop_offcpu();
    }
}
