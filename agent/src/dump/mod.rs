//! Thread dumps of an unmodified, running process: every thread's state, time in state, user
//! and kernel stack and start routine, plus pthread-mutex deadlocks, without stopping it (no
//! ptrace, no signal). `agent dump --pid N`; also a library call for `agent attach` triggers.
//!
//! How (docs/ARCHITECTURE.md, "Thread dumps"):
//! 1. The BPF task iterator (`ebpf/programs/src/dump.rs`, via [`Collector::dump_tasks`]) reads
//!    each thread's scheduler state, saved user registers and kernel stack in one pass, in the
//!    agent's own context. Threads blocked long before the agent started are there like the
//!    others: nothing depends on having seen them block.
//! 2. User stacks are unwound here ([`stack`]) from those registers with `.eh_frame` CFI,
//!    reading the target's memory through `/proc/PID/mem`.
//! 3. Symbolization ([`Symbolizer`]), then the state ([`state`]), what a futex waiter waits on
//!    and who holds it, and the wait-for graph's cycles ([`waitfor`]).
//! 4. Text ([`text`]) or JSON (serde of [`model::Dump`], docs/dump-schema.md).

pub mod capture;
pub mod golocks;
pub mod goroutines;
pub mod model;
pub mod stack;
pub mod state;
pub mod text;
pub mod trigger;
pub mod waitfor;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::kernel::Collector;
use crate::symbolize::Symbolizer;
use crate::unwind::maps::MapsCache;

pub use capture::{check_trigger, observe, take_dump};
pub use model::Dump;
pub use text::Detail;

/// `agent dump --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    Text,
    Json,
}

/// How many threads the summary lists as longest blocked.
pub const LONGEST_BLOCKED: usize = 5;

/// Threads counted by state, and the longest-blocked ones.
pub fn summarize(threads: &[model::Thread]) -> model::Summary {
    let mut counts: HashMap<model::State, usize> = HashMap::new();
    for t in threads {
        *counts.entry(t.state).or_default() += 1;
    }
    let mut by_state: Vec<model::StateCount> = counts
        .into_iter()
        .map(|(state, count)| model::StateCount { state, count })
        .collect();
    by_state.sort_by_key(|c| (std::cmp::Reverse(c.count), c.state));
    let mut blocked: Vec<model::BlockedThread> = threads
        .iter()
        .filter(|t| t.state.is_blocked())
        .filter_map(|t| {
            Some(model::BlockedThread {
                tid: t.tid,
                name: t.name.clone(),
                state: t.state,
                in_state_ns: t.in_state_ns?,
            })
        })
        .collect();
    blocked.sort_by_key(|b| (std::cmp::Reverse(b.in_state_ns), b.tid));
    blocked.truncate(LONGEST_BLOCKED);
    let mut objects: HashMap<model::WaitObject, usize> = HashMap::new();
    for t in threads
        .iter()
        .filter(|t| t.state == model::State::FutexWait)
    {
        let o = t
            .wait
            .as_ref()
            .map_or(model::WaitObject::Unknown, |w| w.object);
        *objects.entry(o).or_default() += 1;
    }
    let mut futex_by_object: Vec<model::ObjectCount> = objects
        .into_iter()
        .map(|(object, count)| model::ObjectCount {
            object,
            count,
            lock: object.is_lock(),
        })
        .collect();
    futex_by_object.sort_by_key(|c| (std::cmp::Reverse(c.count), c.object.label()));
    model::Summary {
        threads: threads.len(),
        by_state,
        longest_blocked: blocked,
        futex_by_object,
    }
}

/// The dump in the requested format.
pub fn render(dump: &Dump, format: DumpFormat, detail: Detail) -> String {
    match format {
        DumpFormat::Text => text::render(dump, detail),
        DumpFormat::Json => {
            let mut s = serde_json::to_string_pretty(dump).expect("the model serializes");
            s.push('\n');
            s
        }
    }
}

pub(crate) fn extension(format: DumpFormat) -> &'static str {
    match format {
        DumpFormat::Text => "txt",
        DumpFormat::Json => "json",
    }
}

/// Writes `dir/name` (creating `dir`), returning its path.
pub(crate) fn write_into(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Output {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(name);
    // A temporary file, then a rename: a dump on disk is always whole.
    crate::output::write_atomically(&path, contents.as_bytes()).map_err(|source| {
        Error::Output {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// Takes a dump of `pid` and writes it to `dir/dump-<pid>-<unix ms>.<txt|json>` (the call for
/// triggers in a running `agent attach`, where several dumps share one directory). Returns
/// the file written.
pub fn write_dump(
    collector: &mut Collector,
    pid: u32,
    maps: &MapsCache,
    symbolizer: &mut Symbolizer,
    dir: &Path,
    format: DumpFormat,
    detail: Detail,
) -> Result<PathBuf, Error> {
    let dump = take_dump(collector, pid, maps, symbolizer)?;
    write_rendered(&dump, dir, format, detail)
}

/// Writes `dump` to `dir/dump-<pid>-<unix ms>.<txt|json>`.
pub fn write_rendered(
    dump: &Dump,
    dir: &Path,
    format: DumpFormat,
    detail: Detail,
) -> Result<PathBuf, Error> {
    let name = format!(
        "dump-{}-{}.{}",
        dump.pid,
        dump.taken_at_unix_ms,
        extension(format)
    );
    write_into(dir, &name, &render(dump, format, detail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::State;
    use waitfor::tests::{thread, waiting};

    #[test]
    fn summary_counts_and_longest_blocked() {
        let mut threads = vec![thread(1, "main")];
        for i in 0..7 {
            let mut t = waiting(10 + i, "w", 0x10, "l", 1);
            t.in_state_ns = Some(u64::from(i) * 1000);
            threads.push(t);
        }
        let mut running = thread(2, "spin");
        running.state = State::Running;
        running.in_state_ns = Some(u64::MAX);
        threads.push(running);
        let s = summarize(&threads);
        assert_eq!(s.threads, 9);
        assert_eq!(
            s.by_state
                .iter()
                .map(|c| (c.state, c.count))
                .collect::<Vec<_>>(),
            vec![
                (State::FutexWait, 7),
                (State::Running, 1),
                (State::Sleep, 1)
            ]
        );
        // The 7 waiters wait on mutexes: lock waits, not idle.
        assert_eq!(
            s.futex_by_object,
            vec![model::ObjectCount {
                object: model::WaitObject::Mutex,
                count: 7,
                lock: true
            }]
        );
        let text = text::render(
            &Dump {
                schema_version: model::SCHEMA_VERSION,
                pid: 1,
                process_name: "p".into(),
                exe: None,
                taken_at: String::new(),
                taken_at_unix_ms: 0,
                deadlocks: vec![],
                summary: s.clone(),
                threads: vec![],
                notes: vec![],
                timings: model::Timings::default(),
            },
            Detail::Grouped,
        );
        assert!(text.contains("7 futex wait (7 mutex: lock wait)"), "{text}");
        // Running threads are not "blocked"; the 1 s sleeper is the longest.
        assert_eq!(
            s.longest_blocked.iter().map(|b| b.tid).collect::<Vec<_>>(),
            vec![1, 16, 15, 14, 13]
        );
    }

    #[test]
    fn json_round_trip() {
        let mut t = waiting(101, "worker-1", 0xa0, "lock_a", 102);
        t.created = Some(model::Created {
            start_routine: None,
            started_at_unix_ms: 5,
            age_ns: 6,
        });
        let threads = vec![t, waiting(102, "worker-2", 0xb0, "lock_b", 101)];
        let dump = Dump {
            schema_version: model::SCHEMA_VERSION,
            pid: 100,
            process_name: "bank".into(),
            exe: None,
            taken_at: "2026-05-01T12:00:00.000Z".into(),
            taken_at_unix_ms: 1,
            deadlocks: waitfor::find_deadlocks(&threads),
            summary: summarize(&threads),
            threads,
            notes: vec!["a note".into()],
            timings: model::Timings::default(),
        };
        let json = render(&dump, DumpFormat::Json, Detail::EveryThread);
        let back: Dump = serde_json::from_str(&json).unwrap();
        assert_eq!(back, dump);
        // The documented spelling of states and wait objects.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["threads"][0]["state"], "futex_wait");
        assert_eq!(v["threads"][0]["wait"]["object"], "mutex");
        assert_eq!(v["threads"][0]["wait"]["address"], "0xa0");
        assert_eq!(v["deadlocks"][0]["cycle"][1]["owner_tid"], 101);
        assert_eq!(v["schema_version"], 1);
    }
}
