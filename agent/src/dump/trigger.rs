//! `agent attach --dump-when COND`: when to write a thread dump of the target by itself, and a
//! rate limit so a condition that keeps holding does not write a dump at every check (pure).
//!
//! Syntax: comma-separated terms, e.g. `state=futex,threads>=8,for=30s,every=5m`:
//! - `state=S[|S...]`: the states counted (`futex`, `io`, `sleep`, `syscall`, `disk`,
//!   `runnable`, `running`, `stopped`, `traced`, `zombie`, `idle`, `sleeping`, or `blocked` for
//!   every state but running and runnable). Default: `blocked`.
//! - `threads>=N` (also `>`, `=`, `<=`, `<`): how many threads must be in those states.
//!   Default: `threads>=1`.
//! - `for=T`: count only threads that have been in the state at least T (`500ms`, `30s`,
//!   `2m`). Default: 0.
//! - `deadlock`: instead of counting, holds when the wait-for graph has a cycle (this needs a
//!   full dump at each check, the counting conditions only the kernel's task iterator).
//! - `every=T`: at most one dump per T, at least 1s. Default: 1m.

use std::str::FromStr;
use std::time::{Duration, Instant};

use super::model::{Dump, State};

/// How the count of matching threads is compared with `threads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Gt,
    Eq,
    Le,
    Lt,
}

impl Cmp {
    fn holds(self, a: usize, b: usize) -> bool {
        match self {
            Cmp::Ge => a >= b,
            Cmp::Gt => a > b,
            Cmp::Eq => a == b,
            Cmp::Le => a <= b,
            Cmp::Lt => a < b,
        }
    }
}

/// What the condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Count threads in `states` (empty: every blocked state) for at least `min_in_state`.
    Threads {
        states: Vec<State>,
        cmp: Cmp,
        threads: usize,
        min_in_state: Duration,
    },
    /// A deadlock (a cycle of threads waiting for each other).
    Deadlock,
}

/// A parsed `--dump-when`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpWhen {
    pub condition: Condition,
    /// Minimum time between two dumps.
    pub every: Duration,
}

/// Default minimum time between two triggered dumps.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(60);

/// One thread as a trigger sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadObs {
    pub state: State,
    pub in_state_ns: Option<u64>,
}

fn parse_state(s: &str) -> Result<Option<State>, String> {
    Ok(Some(match s.trim() {
        "blocked" => return Ok(None),
        "futex" | "futex_wait" | "futex wait" => State::FutexWait,
        "io" | "io_wait" | "io wait" => State::IoWait,
        "sleep" => State::Sleep,
        "syscall" => State::Syscall,
        "disk" => State::Disk,
        "runnable" => State::Runnable,
        "running" => State::Running,
        "stopped" => State::Stopped,
        "traced" => State::Traced,
        "zombie" => State::Zombie,
        "idle" => State::Idle,
        "sleeping" => State::Sleeping,
        other => {
            return Err(format!(
                "unknown state {other:?}; use futex, io, sleep, syscall, disk, runnable, \
                 running, stopped, traced, zombie, idle, sleeping or blocked"
            ));
        }
    }))
}

/// The shortest `every=`: the condition is checked once a second.
const MIN_EVERY: Duration = Duration::from_secs(1);

fn parse_time(s: &str, what: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        // Not from_secs_f64: it panics on a number of seconds too large for a Duration.
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{what}={s:?} is too long; use e.g. 500ms, 30s, 2m"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{what}={s:?} is not a duration ({e}); use e.g. 500ms, 30s, 2m"))
}

impl FromStr for DumpWhen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut states: Option<Vec<State>> = None;
        let mut count: Option<(Cmp, usize)> = None;
        let mut min_in_state = Duration::ZERO;
        let mut deadlock = false;
        let mut every = DEFAULT_EVERY;
        let terms: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect();
        if terms.is_empty() {
            return Err("empty condition; e.g. state=futex,threads>=8,for=30s or deadlock".into());
        }
        for term in terms {
            if term == "deadlock" {
                deadlock = true;
            } else if let Some(v) = term.strip_prefix("state=") {
                let mut list = Vec::new();
                for part in v.split('|') {
                    // `blocked` means "every blocked state": an empty list.
                    if let Some(st) = parse_state(part)? {
                        list.push(st);
                    } else {
                        list.clear();
                        states = Some(Vec::new());
                        break;
                    }
                }
                if states.is_none() {
                    states = Some(list);
                }
            } else if let Some(rest) = term.strip_prefix("threads") {
                let (cmp, n) = [
                    (">=", Cmp::Ge),
                    ("<=", Cmp::Le),
                    (">", Cmp::Gt),
                    ("<", Cmp::Lt),
                    ("=", Cmp::Eq),
                ]
                .iter()
                .find_map(|(op, cmp)| rest.strip_prefix(op).map(|n| (*cmp, n)))
                .ok_or_else(|| format!("{term:?}: write threads>=N (or >, =, <=, <)"))?;
                let n = n
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{term:?}: {n:?} is not a number of threads"))?;
                count = Some((cmp, n));
            } else if let Some(v) = term.strip_prefix("for=") {
                min_in_state = parse_time(v, "for")?;
            } else if let Some(v) = term.strip_prefix("every=") {
                every = parse_time(v, "every")?;
                if every < MIN_EVERY {
                    return Err(format!(
                        "every={}: at least 1s (the condition is checked once a second; a \
                         shorter limit would write a dump at every check)",
                        v.trim()
                    ));
                }
            } else {
                return Err(format!(
                    "unknown term {term:?}; terms are state=S, threads>=N, for=T, every=T and deadlock"
                ));
            }
        }
        let condition = if deadlock {
            if states.is_some() || count.is_some() || !min_in_state.is_zero() {
                return Err(
                    "deadlock cannot be combined with state=, threads or for=; use one or the other"
                        .into(),
                );
            }
            Condition::Deadlock
        } else {
            let (cmp, threads) = count.unwrap_or((Cmp::Ge, 1));
            Condition::Threads {
                states: states.unwrap_or_default(),
                cmp,
                threads,
                min_in_state,
            }
        };
        Ok(DumpWhen { condition, every })
    }
}

impl DumpWhen {
    /// Whether checking the condition needs a full dump (stacks, lock owners) rather than the
    /// kernel's view of the threads' states.
    pub fn needs_full_dump(&self) -> bool {
        self.condition == Condition::Deadlock
    }

    /// Threads that count towards the condition (0 for `deadlock`).
    pub fn matching(&self, threads: &[ThreadObs]) -> usize {
        let Condition::Threads {
            states,
            min_in_state,
            ..
        } = &self.condition
        else {
            return 0;
        };
        // In u128: a `for=` beyond u64 nanoseconds (585 years) must not wrap to a short one.
        let min = min_in_state.as_nanos();
        threads
            .iter()
            .filter(|t| {
                if states.is_empty() {
                    t.state.is_blocked()
                } else {
                    states.contains(&t.state)
                }
            })
            .filter(|t| min == 0 || t.in_state_ns.is_some_and(|ns| u128::from(ns) >= min))
            .count()
    }

    /// Whether a counting condition holds for these threads (`false` for `deadlock`: use
    /// [`Self::holds_for_dump`]).
    pub fn holds(&self, threads: &[ThreadObs]) -> bool {
        match &self.condition {
            Condition::Threads {
                cmp, threads: n, ..
            } => cmp.holds(self.matching(threads), *n),
            Condition::Deadlock => false,
        }
    }

    /// Whether the condition holds for a full dump.
    pub fn holds_for_dump(&self, dump: &Dump) -> bool {
        match self.condition {
            Condition::Deadlock => !dump.deadlocks.is_empty(),
            Condition::Threads { .. } => {
                let obs: Vec<ThreadObs> = dump
                    .threads
                    .iter()
                    .map(|t| ThreadObs {
                        state: t.state,
                        in_state_ns: t.in_state_ns,
                    })
                    .collect();
                self.holds(&obs)
            }
        }
    }
}

impl DumpWhen {
    /// For `deadlock`: whether the cheap view of the threads makes a full dump worth taking.
    /// A deadlocked thread sits in a futex wait; one that has waited less than `min` is not
    /// yet worth a look (it is likely a passing contention). Counting conditions: always.
    pub fn worth_full_check(&self, threads: &[ThreadObs], min: Duration) -> bool {
        if self.condition != Condition::Deadlock {
            return true;
        }
        let min = min.as_nanos();
        threads.iter().any(|t| {
            t.state == State::FutexWait && t.in_state_ns.is_some_and(|ns| u128::from(ns) >= min)
        })
    }
}

/// Futex waits shorter than this are not checked for a deadlock.
pub const DEADLOCK_MIN_WAIT: Duration = Duration::from_secs(1);

/// A `--dump-when` condition with its rate limit: the state a running `agent attach` keeps.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub when: DumpWhen,
    limit: RateLimit,
}

impl Trigger {
    pub fn new(when: DumpWhen) -> Self {
        let limit = RateLimit::new(when.every);
        Self { when, limit }
    }

    /// Whether a dump should be written now, given whether the condition holds. Records the
    /// dump when it says yes.
    pub fn fire(&mut self, holds: bool, now: Instant) -> bool {
        holds && self.limit.allow(now)
    }
}

/// A signal name or number for `--signal-target` (`QUIT`, `SIGQUIT`, `3`), as its number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n} is out of range (1-64)"))
        };
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => {
            return Err(format!(
                "unknown signal {s:?}; use a name such as QUIT, USR1, USR2 or a number"
            ));
        }
    })
}

/// The marker at the start of a Go binary's `.go.buildinfo` section (every Go build since 1.13
/// has one, stripped or not).
const GO_BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// Whether the ELF file at `path` is a Go program.
pub fn is_go_binary(path: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let keep = GO_BUILDINFO_MAGIC.len() - 1;
    let mut filled = 0;
    loop {
        let n = f.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(false);
        }
        let end = filled + n;
        if buf[..end]
            .windows(GO_BUILDINFO_MAGIC.len())
            .any(|w| w == GO_BUILDINFO_MAGIC)
        {
            return Ok(true);
        }
        // Keep the tail, in case the marker straddles two reads.
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        filled = end - tail;
    }
}

/// Checks a `--signal-target` choice against the target's binary: SIGQUIT makes the Go runtime
/// print its goroutines and then exit, so it is never sent to a Go program.
pub fn check_signal_target(sig: i32, exe: &std::path::Path) -> Result<(), String> {
    if sig == libc::SIGQUIT && is_go_binary(exe).unwrap_or(false) {
        return Err(format!(
            "{} is a Go program: SIGQUIT makes it print its goroutines and exit. Use agent \
             dump's own thread dump, or a signal the program handles",
            exe.display()
        ));
    }
    Ok(())
}

/// At most one event per `every`: the first is always allowed.
#[derive(Debug, Clone)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether an event at `now` is allowed; if so it is recorded.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(state: State, secs: f64) -> ThreadObs {
        ThreadObs {
            state,
            in_state_ns: Some((secs * 1e9) as u64),
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        let w: DumpWhen = "state=futex,threads>=8,for=30s,every=5m".parse().unwrap();
        assert_eq!(
            w,
            DumpWhen {
                condition: Condition::Threads {
                    states: vec![State::FutexWait],
                    cmp: Cmp::Ge,
                    threads: 8,
                    min_in_state: Duration::from_secs(30),
                },
                every: Duration::from_secs(300),
            }
        );
        let w: DumpWhen = "state=futex|disk, threads>2".parse().unwrap();
        assert_eq!(
            w.condition,
            Condition::Threads {
                states: vec![State::FutexWait, State::Disk],
                cmp: Cmp::Gt,
                threads: 2,
                min_in_state: Duration::ZERO,
            }
        );
        assert_eq!(w.every, DEFAULT_EVERY);
        let w: DumpWhen = "for=1.5".parse().unwrap();
        assert_eq!(
            w.condition,
            Condition::Threads {
                states: vec![],
                cmp: Cmp::Ge,
                threads: 1,
                min_in_state: Duration::from_millis(1500),
            }
        );
        let w: DumpWhen = "deadlock,every=10s".parse().unwrap();
        assert_eq!(w.condition, Condition::Deadlock);
        assert!(w.needs_full_dump());
        let w: DumpWhen = "state=blocked|futex".parse().unwrap();
        assert_eq!(
            w.condition,
            Condition::Threads {
                states: vec![],
                cmp: Cmp::Ge,
                threads: 1,
                min_in_state: Duration::ZERO
            }
        );
    }

    /// Found by the dump_when fuzz target: a bare number of seconds too large for a Duration
    /// panicked in Duration::from_secs_f64.
    #[test]
    fn a_rate_limit_under_a_second_is_an_error() {
        for bad in [
            "every=0s",
            "every=0",
            "every=500ms",
            "state=futex,every=0.5",
        ] {
            let e = bad.parse::<DumpWhen>().unwrap_err();
            assert!(e.contains("at least 1s"), "{bad}: {e}");
        }
        let w: DumpWhen = "every=1s".parse().unwrap();
        assert_eq!(w.every, Duration::from_secs(1));
    }

    #[test]
    fn huge_bare_seconds_are_an_error() {
        let input = format!("every=00{}", "5".repeat(41)); // the crashing input
        let err = input.parse::<DumpWhen>().unwrap_err();
        assert!(err.contains("too long"), "{err}");
        for bad in [
            "for=1e30",
            "every=1e300",
            "state=futex,for=18446744073709551616",
        ] {
            assert!(bad.parse::<DumpWhen>().is_err(), "{bad}");
        }
        let w: DumpWhen = "every=18446744073".parse().unwrap();
        assert_eq!(w.every, Duration::from_secs(18_446_744_073));
    }

    /// A `for=` longer than u64 nanoseconds wrapped around to a short one when compared with
    /// the threads' time in state: 1e12 s counted threads waiting about 3.9e9 s.
    #[test]
    fn for_beyond_u64_nanoseconds_does_not_wrap() {
        let w: DumpWhen = "for=1000000000000s".parse().unwrap();
        let threads = [ThreadObs {
            state: State::FutexWait,
            in_state_ns: Some(10_000_000_000_000_000_000),
        }];
        assert_eq!(w.matching(&threads), 0);
        assert!(!w.holds(&threads));
        let threads = [ThreadObs {
            state: State::FutexWait,
            in_state_ns: Some(u64::MAX),
        }];
        assert_eq!(w.matching(&threads), 0);
    }

    #[test]
    fn rejects_with_a_hint() {
        for (bad, hint) in [
            ("", "empty condition"),
            ("state=blah", "unknown state"),
            ("threads~3", "threads>=N"),
            ("threads>=lots", "not a number"),
            ("for=soon", "not a duration"),
            ("colour=red", "unknown term"),
            ("deadlock,threads>=2", "cannot be combined"),
        ] {
            let err = bad.parse::<DumpWhen>().unwrap_err();
            assert!(err.contains(hint), "{bad:?}: {err}");
        }
    }

    #[test]
    fn evaluates_counts_and_durations() {
        let threads = [
            obs(State::FutexWait, 40.0),
            obs(State::FutexWait, 31.0),
            obs(State::FutexWait, 5.0),
            obs(State::Running, 100.0),
            obs(State::Sleep, 100.0),
            ThreadObs {
                state: State::FutexWait,
                in_state_ns: None,
            },
        ];
        let w: DumpWhen = "state=futex,threads>=2,for=30s".parse().unwrap();
        assert_eq!(w.matching(&threads), 2);
        assert!(w.holds(&threads));
        let w: DumpWhen = "state=futex,threads>=3,for=30s".parse().unwrap();
        assert!(!w.holds(&threads));
        // Unknown time in state counts only when no minimum is asked for.
        let w: DumpWhen = "state=futex".parse().unwrap();
        assert_eq!(w.matching(&threads), 4);
        // Default: every blocked state (not running/runnable).
        let w: DumpWhen = "for=1m".parse().unwrap();
        assert_eq!(w.matching(&threads), 1);
        let w: DumpWhen = "threads<2,state=running".parse().unwrap();
        assert!(w.holds(&threads));
        let w: DumpWhen = "deadlock".parse().unwrap();
        assert!(!w.holds(&threads));
    }

    #[test]
    fn deadlock_checks_wait_for_a_long_futex_wait() {
        let w: DumpWhen = "deadlock".parse().unwrap();
        let min = Duration::from_secs(1);
        assert!(!w.worth_full_check(&[obs(State::FutexWait, 0.5), obs(State::Sleep, 9.0)], min));
        assert!(w.worth_full_check(&[obs(State::FutexWait, 1.5)], min));
        let w: DumpWhen = "state=sleep".parse().unwrap();
        assert!(w.worth_full_check(&[], min));
    }

    #[test]
    fn trigger_fires_when_the_condition_holds_at_most_once_per_period() {
        let mut t = Trigger::new("state=futex,every=10s".parse().unwrap());
        let t0 = Instant::now();
        assert!(!t.fire(false, t0));
        assert!(t.fire(true, t0));
        assert!(!t.fire(true, t0 + Duration::from_secs(5)));
        assert!(t.fire(true, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("QUIT"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("sigusr2"), Ok(libc::SIGUSR2));
        assert_eq!(parse_signal("3"), Ok(3));
        assert!(parse_signal("0").is_err());
        assert!(
            parse_signal("KILLALL")
                .unwrap_err()
                .contains("unknown signal")
        );
    }

    #[test]
    fn go_binaries_are_recognized() {
        let dir = std::env::temp_dir().join(format!("stallscope-go-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The marker across the 1 MiB read boundary, as in a large binary.
        let mut data = vec![0u8; (1 << 20) - 5];
        data.extend_from_slice(GO_BUILDINFO_MAGIC);
        data.extend_from_slice(&[0; 100]);
        let go = dir.join("go");
        std::fs::write(&go, &data).unwrap();
        assert!(is_go_binary(&go).unwrap());
        assert!(
            check_signal_target(libc::SIGQUIT, &go)
                .unwrap_err()
                .contains("Go program")
        );
        assert!(check_signal_target(libc::SIGUSR1, &go).is_ok());
        // A C binary of the system (this test binary itself holds the marker as a constant).
        let me = std::path::PathBuf::from("/bin/sh");
        assert!(!is_go_binary(&me).unwrap());
        assert!(check_signal_target(libc::SIGQUIT, &me).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limit() {
        let mut r = RateLimit::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.allow(t0));
        assert!(!r.allow(t0 + Duration::from_secs(59)));
        assert!(r.allow(t0 + Duration::from_secs(60)));
        assert!(!r.allow(t0 + Duration::from_secs(61)));
    }
}
