//! The agent's own metrics (the `prometheus` crate): kernel-side events and losses of the
//! profile windows, BPF map fill and program run time, symbolizer cache, targets, HTTP
//! requests, and the agent process's CPU and memory (the crate's process collector).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder as _, Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::Error;
use stallscope_common::{Counter, CounterGroup};

use crate::kernel::{Counters, MapFill, ProgramStats};

const PROGRAMS: [&str; 4] = [
    "cpu_sample",
    "sched_switch",
    "sched_waking",
    "sched_wakeup_new",
];
/// `reason` label values of stallscope_profile_rejected_total.
pub const REJECTIONS: [&str; 10] = [
    "busy",
    "bad_request",
    "unauthorized",
    "not_found",
    "method",
    "body",
    "timeout",
    "connections",
    "header_timeout",
    "malformed",
];
/// Profile kinds served (label values of the profile metrics).
pub const KINDS: [&str; 5] = ["profile", "offcpu", "block", "mutex", "threads"];

/// Cumulative (run time ns, runs) per (collector slot, program), as last read.
type ProgramTotals = HashMap<(usize, &'static str), (u64, u64)>;

/// Handles to the agent's own metrics (cheap to clone).
#[derive(Clone)]
pub struct Health {
    registry: Registry,
    events: IntCounterVec,
    dropped: IntCounterVec,
    stacks_lost: IntCounterVec,
    unwind: IntCounterVec,
    map_entries: IntGaugeVec,
    map_max: IntGaugeVec,
    prog_seconds: prometheus::CounterVec,
    prog_runs: IntCounterVec,
    /// Last cumulative program stats per (collector slot, program), to add deltas.
    prog_last: Arc<Mutex<ProgramTotals>>,
    symbolizer_files: IntGauge,
    targets: IntGauge,
    untracked: IntGauge,
    exits: prometheus::IntCounter,
    sample_seconds: Gauge,
    pub requests: IntCounterVec,
    pub profiles_active: IntGauge,
    pub profile_seconds: prometheus::CounterVec,
    pub rejected: IntCounterVec,
    pub profile_windows: IntGaugeVec,
}

fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C, Error> {
    r.register(Box::new(c.clone()))
        .map_err(|e| Error::internal("registering a metric", e))?;
    Ok(c)
}

fn err(e: prometheus::Error) -> Error {
    Error::internal("creating a metric", e)
}

impl Health {
    pub fn new() -> Result<Self, Error> {
        let r = Registry::new();
        let cv = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, Error> {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), &[label]).map_err(err)?,
            )
        };
        let events = cv(
            "stallscope_bpf_events_total",
            "Kernel-side events seen and recorded during profile windows.",
            "event",
        )?;
        let dropped = cv(
            "stallscope_bpf_events_dropped_total",
            "Events the kernel programs could not record, by reason (map full, stack collision).",
            "reason",
        )?;
        let stacks_lost = cv(
            "stallscope_bpf_stacks_lost_total",
            "Stacks that could not be captured during profile windows, by part (user, kernel, \
             user_corrupt: a stored user stack that did not hash to its handle).",
            "part",
        )?;
        let map_entries = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "stallscope_bpf_map_entries",
                    "Entries in each BPF aggregation map at the end of the last profile window.",
                ),
                &["map"],
            )
            .map_err(err)?,
        )?;
        let map_max = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "stallscope_bpf_map_max_entries",
                    "Capacity of each BPF aggregation map.",
                ),
                &["map"],
            )
            .map_err(err)?,
        )?;
        let prog_seconds = reg(
            &r,
            prometheus::CounterVec::new(
                Opts::new(
                    "stallscope_bpf_program_run_seconds_total",
                    "Time the kernel spent running each BPF program (0 unless kernel.bpf_stats_enabled=1).",
                ),
                &["program"],
            )
            .map_err(err)?,
        )?;
        let prog_runs = cv(
            "stallscope_bpf_program_runs_total",
            "Runs of each BPF program (0 unless kernel.bpf_stats_enabled=1).",
            "program",
        )?;
        let g = |name: &str, help: &str| -> Result<IntGauge, Error> {
            reg(&r, IntGauge::new(name, help).map_err(err)?)
        };
        let symbolizer_files = g(
            "stallscope_symbolizer_cached_files",
            "Files the symbolizer keeps parsed (debug info, symbol tables).",
        )?;
        let targets = g(
            "stallscope_targets",
            "Processes whose continuous metrics are exported.",
        )?;
        let untracked = g(
            "stallscope_targets_untracked",
            "Processes not tracked because of --max-targets (with --all).",
        )?;
        let exits = reg(
            &r,
            prometheus::IntCounter::new(
                "stallscope_target_exits_total",
                "Targets that exited (their series were removed).",
            )
            .map_err(err)?,
        )?;
        let sample_seconds = reg(
            &r,
            Gauge::new(
                "stallscope_sample_duration_seconds",
                "Time the last /proc sampling pass took.",
            )
            .map_err(err)?,
        )?;
        let requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "stallscope_http_requests_total",
                    "HTTP requests by handler and status code.",
                ),
                &["handler", "code"],
            )
            .map_err(err)?,
        )?;
        let profiles_active = g(
            "stallscope_profiles_active",
            "Profile windows (probes attached) running now.",
        )?;
        let profile_seconds = reg(
            &r,
            prometheus::CounterVec::new(
                Opts::new(
                    "stallscope_profile_window_seconds_total",
                    "Time probes were attached for profile requests, by profile.",
                ),
                &["profile"],
            )
            .map_err(err)?,
        )?;
        let rejected = cv(
            "stallscope_profile_rejected_total",
            "HTTP requests and connections refused, by reason (busy: 429, bad_request: 400/414, \
             unauthorized: 401, not_found: 404, method: 405, body: 413, timeout: 503 after \
             --request-timeout, connections: 503 beyond --max-connections, header_timeout: \
             closed after --header-timeout, malformed: 400/431 from the HTTP parser).",
            "reason",
        )?;
        let profile_windows = reg(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "stallscope_profile_collectors",
                    "Loaded BPF collectors for profile windows, by state (ready, loading, failed).",
                ),
                &["state"],
            )
            .map_err(err)?,
        )?;
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .map_err(|e| Error::internal("registering the process collector", e))?;
        // Every label value exists from the start, so each series reads 0 rather than nothing.
        let unwind = cv(
            "stallscope_bpf_unwind_total",
            "How the user-stack unwinder worked during profile windows (frames by method, \
             truncated stacks, walks and walk-cache hits).",
            "what",
        )?;
        for m in crate::kernel::FILL_MAPS {
            map_entries.with_label_values(&[m]);
            map_max.with_label_values(&[m]);
        }
        for p in PROGRAMS {
            prog_seconds.with_label_values(&[p]);
            prog_runs.with_label_values(&[p]);
        }
        for k in KINDS {
            profile_seconds.with_label_values(&[k]);
        }
        for r in REJECTIONS {
            rejected.with_label_values(&[r]);
        }
        for s in ["ready", "loading", "failed"] {
            profile_windows.with_label_values(&[s]);
        }
        let health = Self {
            registry: r,
            events,
            dropped,
            stacks_lost,
            unwind,
            map_entries,
            map_max,
            prog_seconds,
            prog_runs,
            prog_last: Arc::default(),
            symbolizer_files,
            targets,
            untracked,
            exits,
            sample_seconds,
            requests,
            profiles_active,
            profile_seconds,
            rejected,
            profile_windows,
        };
        // Every counter's series exists from the start, reading 0 rather than nothing.
        for c in Counter::ALL {
            let i = c.info();
            health.family(i.group).with_label_values(&[i.label]);
        }
        Ok(health)
    }

    /// The family of a counter group.
    fn family(&self, g: CounterGroup) -> &IntCounterVec {
        match g {
            CounterGroup::Event => &self.events,
            CounterGroup::Dropped => &self.dropped,
            CounterGroup::StackLost => &self.stacks_lost,
            CounterGroup::Unwind => &self.unwind,
        }
    }

    /// Adds one profile window's kernel counters (they start from zero every window).
    pub fn record_window(
        &self,
        slot: usize,
        c: &Counters,
        fill: &[MapFill],
        progs: &[ProgramStats],
    ) {
        for (counter, v) in c.iter() {
            let i = counter.info();
            self.family(i.group).with_label_values(&[i.label]).inc_by(v);
        }
        for f in fill {
            self.map_entries
                .with_label_values(&[f.map])
                .set(f.entries as i64);
            self.map_max
                .with_label_values(&[f.map])
                .set(f.max_entries as i64);
        }
        let mut last = self.prog_last.lock().unwrap_or_else(|e| e.into_inner());
        for p in progs {
            let prev = last
                .insert((slot, p.program), (p.run_time_ns, p.run_count))
                .unwrap_or((0, 0));
            self.prog_seconds
                .with_label_values(&[p.program])
                .inc_by(p.run_time_ns.saturating_sub(prev.0) as f64 / 1e9);
            self.prog_runs
                .with_label_values(&[p.program])
                .inc_by(p.run_count.saturating_sub(prev.1));
        }
    }

    pub fn set_symbolizer_files(&self, n: usize) {
        self.symbolizer_files.set(n as i64);
    }

    pub fn record_sample(&self, targets: usize, untracked: u64, exits: u64, took: Duration) {
        self.targets.set(targets as i64);
        self.untracked.set(untracked as i64);
        self.exits.inc_by(exits);
        self.sample_seconds.set(took.as_secs_f64());
    }

    /// The agent's families in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("encoding metrics: {e}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
