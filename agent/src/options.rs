//! Option values shared by the commands and the engine, with their parsers: the sampling
//! [`Rates`] from clap to the kernel's [`Config`], and the time parser they use.

use stallscope_common::Config;

/// Sampling rates, the same for `attach`, `capture` and `serve` (its /debug/pprof windows):
/// parsed by clap, carried by the window's spec and facts, written to summary.json, and made
/// into the kernel's `Config` by [`Rates::config`], each under the kernel's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args, serde::Serialize)]
pub struct Rates {
    /// CPU sampling frequency in Hz (per CPU).
    #[arg(short = 'F', long = "frequency", default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency_hz: u64,

    /// Block profile rate, like Go's SetBlockProfileRate: a wait of d is recorded with
    /// probability min(1, d/rate) and weighted so totals stay unbiased. 1 records every wait.
    /// Takes ns or a duration (100us, 1ms); at most 4s.
    #[arg(long = "block-rate", default_value = "100us", value_parser = parse_nanos)]
    pub block_rate_ns: u64,

    /// Off-CPU profile rate, the same sampling as --block-rate: an interval of d off CPU is
    /// recorded with probability min(1, d/rate) and weighted max(d, rate), so totals per stack
    /// stay unbiased while short waits cost less to record. 1 records every interval.
    /// Takes ns or a duration (100us, 1ms); at most 4s.
    #[arg(long = "offcpu-rate", default_value = "100us", value_parser = parse_nanos)]
    pub offcpu_rate_ns: u64,

    /// Mutex profile fraction, like Go's SetMutexProfileFraction: 1 in N contention events is
    /// recorded (decided in the kernel) and its values multiplied by N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub mutex_fraction: u64,

    /// Mutex profile rate, on top of --mutex-fraction: a release that caused a delay d (and a
    /// wait of d, on the waiters' side) is recorded with probability min(1, d/rate) and
    /// weighted max(d, rate), as --block-rate does. 1 records every event.
    /// Takes ns or a duration (100us, 1ms); at most 4s.
    #[arg(long = "mutex-rate", default_value = "100us", value_parser = parse_nanos)]
    pub mutex_rate_ns: u64,

    /// Entries in each in-kernel aggregation map: the distinct (stack, wait class, thread)
    /// keys one window can hold per profile. An event that finds its map full is dropped and
    /// counted (`agg_map_full` in summary.json, stallscope_bpf_events_dropped_total
    /// {reason="agg_map_full"}): raise it then. About 100 bytes of kernel memory per entry and
    /// map. 64 to 1048576.
    #[arg(long, default_value_t = stallscope_common::AGG_MAP_ENTRIES, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub map_entries: u32,

    /// Most hits a second of a Go program's runtime uprobes (its goroutines' block and mutex
    /// profiles) before they are detached for the rest of the window, said in the profiles:
    /// each hit is a trap into the kernel that the target pays (about 5 us on the VM where it
    /// was measured, 2 per goroutine wait). Checked every second. 0: no limit.
    #[arg(long = "go-probe-limit", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub go_probe_limit: u64,
}

impl Rates {
    /// The kernel's configuration for a window recording `flags` (`CONFIG_*`), off-CPU
    /// intervals from `offcpu_min_ns` up; `window_start_ns` is set as the window opens.
    pub fn config(&self, flags: u64, offcpu_min_ns: u64) -> Config {
        Config {
            flags,
            offcpu_min_ns,
            block_rate_ns: self.block_rate_ns,
            mutex_fraction: self.mutex_fraction,
            offcpu_rate_ns: self.offcpu_rate_ns,
            mutex_rate_ns: self.mutex_rate_ns,
            window_start_ns: 0,
        }
    }
}

/// Parses a nanosecond count: a bare integer is ns, otherwise a duration (`100us`, `1ms`).
/// Capped at 4 s (the kernel's sampling arithmetic works in 32-bit fractions of it).
pub fn parse_nanos(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty time; use ns or e.g. 100us, 1ms".into());
    }
    // Compared before any narrowing: a huge value must not wrap into a small one.
    let ns: u128 = match s.parse::<u128>() {
        Ok(n) => n,
        Err(_) if s.starts_with('-') => {
            return Err(format!(
                "{} is negative; use ns or e.g. 100us, 1ms",
                shown(s)
            ));
        }
        Err(_) if s.bytes().all(|b| b.is_ascii_digit()) => u128::MAX,
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("invalid time {} ({e}); use ns or e.g. 100us, 1ms", shown(s)))?
            .as_nanos(),
    };
    if ns > 4_000_000_000 {
        return Err(too_long(s, "4s"));
    }
    Ok(ns as u64)
}

pub fn too_long(s: &str, max: &str) -> String {
    format!("{} is too long; at most {max}", shown(s))
}

/// A value as quoted in a message: at most 64 characters of it (an argument can be huge).
pub fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(MAX).collect();
    format!("{head:?}... ({} bytes)", s.len())
}
