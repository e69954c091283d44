//! After the window: raw profiles symbolized, the mutex profile's lock analysis, the pprof and
//! folded files, and each profile's section of the summary.

use std::path::PathBuf;

use crate::{
    error::Error,
    export,
    model::{ProfileKind, RawProfile},
    profiles::locks,
    report::summary as report,
    symbolize::Symbolizer,
    unwind::maps::MapsCache,
};

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
    let waiters = lock_waiters.map(|w| {
        let mut w = symbolizer.symbolize(w, maps);
        locks::drop_go_runtime_futex(&mut w);
        w
    });
    for raw in raws {
        let kind = raw.kind;
        let mut profile = symbolizer.symbolize(raw, maps);
        locks::prepare_go(&mut profile);
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
        // In a group's window, the lock is looked up in the releasing process.
        let pid = report::label_of(s, "pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or(pid);
        if let Some(addr) = locks::lock_of(s)
            && !names.contains_key(&addr)
            && let Some(sym) = symbolizer.data_symbol(pid, addr, maps)
        {
            names.insert(addr, sym);
        }
    }
    locks::name_locks(profile, &names);
    profile.comments.push(format!(
        "{removed} wake-ups of {} non-lock futex words (condition variables, semaphores, joins) left out",
        not_locks.len()
    ));
    report::locks_section(profile, &waiters, &names, top_n.min(5))
}
