//! A per-process cache of executable memory mappings that outlives the process.
//!
//! Stacks are aggregated in the kernel and read at the end of a capture, when short-lived
//! processes (and `dlclose`d libraries) may be gone. [`MapsCache::refresh`] is therefore called
//! repeatedly *during* a capture: it parses `/proc/PID/maps` and, for every file-backed executable
//! mapping, keeps an open file descriptor (from `/proc/PID/map_files/`, which works for deleted
//! files and for files in other mount namespaces) plus the file's GNU build ID. The symbolizer
//! later reads the file through `/proc/self/fd/N`, whether or not the process still exists.
//!
//! Call [`MapsCache::forget`] when a process execs or exits (after its stacks were symbolized).
//!
//! The main binary's mappings also remember the name the program was started as when that is a
//! symlink to it ([`CachedMapping::started_as`], [`started_as`]): Debian's `/usr/bin/redis-server`
//! is a symlink to `redis-check-rdb`, and `/proc/PID/maps` only shows the target.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

/// One line of `/proc/PID/maps`, as the kernel printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapLine {
    pub start: u64,
    pub end: u64,
    /// `r-xp` and the like.
    pub perms: String,
    /// Offset into the file of the first mapped byte.
    pub offset: u64,
    /// `major:minor` of the device, in hex as printed (`fd:01`).
    pub dev: String,
    pub inode: u64,
    /// File path or pseudo name (`[heap]`, `[vdso]`); `None` for anonymous memory. A trailing
    /// ` (deleted)` is removed and reported in [`MapLine::deleted`].
    pub path: Option<String>,
    /// The mapped file was deleted (or replaced) after it was mapped.
    pub deleted: bool,
}

impl MapLine {
    pub fn is_executable(&self) -> bool {
        self.perms.as_bytes().get(2) == Some(&b'x')
    }

    /// Backed by a file (`/usr/lib/...`, also `/memfd:...`), not anonymous or a pseudo mapping.
    pub fn is_file_backed(&self) -> bool {
        self.inode != 0 && self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// A kernel-provided pseudo mapping such as `[vdso]`, `[heap]` or `[stack]`.
    pub fn is_pseudo(&self) -> bool {
        self.path.as_deref().is_some_and(|p| p.starts_with('['))
    }
}

const DELETED_SUFFIX: &str = " (deleted)";

/// Splits off the next whitespace-separated field.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_line(line: &str) -> Option<MapLine> {
    let (range, rest) = next_field(line)?;
    let (perms, rest) = next_field(rest)?;
    let (offset, rest) = next_field(rest)?;
    let (dev, rest) = next_field(rest)?;
    let (inode, rest) = next_field(rest)?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end < start || perms.len() != 4 {
        return None;
    }
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let inode = inode.parse::<u64>().ok()?;
    // The path is the rest of the line after the padding; it may itself contain spaces.
    let raw_path = rest.trim_start_matches([' ', '\t']);
    let (path, deleted) = if raw_path.is_empty() {
        (None, false)
    } else if let Some(p) = raw_path.strip_suffix(DELETED_SUFFIX) {
        (Some(p.to_string()), true)
    } else {
        (Some(raw_path.to_string()), false)
    };
    Some(MapLine {
        start,
        end,
        perms: perms.to_string(),
        offset,
        dev: dev.to_string(),
        inode,
        path,
        deleted,
    })
}

/// Parses the text of `/proc/PID/maps`. Lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// An open mapped file, shared by every mapping (of any process) of the same file.
#[derive(Debug)]
struct CachedFile {
    id: u64,
    file: File,
    build_id: Option<String>,
}

/// A cached executable mapping of one process.
#[derive(Debug, Clone)]
pub struct CachedMapping {
    /// Unique within the [`MapsCache`] while the mapping is cached.
    pub id: u64,
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Path as the process sees it (without ` (deleted)`), or a pseudo name such as `[vdso]`.
    pub path: String,
    pub deleted: bool,
    pub dev: String,
    pub inode: u64,
    /// GNU build ID as lowercase hex, when the file has one.
    pub build_id: Option<String>,
    /// For the main binary's mappings: the path the program was started as, when that is a
    /// symlink to `path` (`/usr/bin/redis-server` for `/usr/bin/redis-check-rdb`). `path` stays
    /// the real file; this is the name to show ([`CachedMapping::display_path`]).
    pub started_as: Option<String>,
    file: Option<Arc<CachedFile>>,
}

impl CachedMapping {
    /// The file offset that `addr` (an address inside this mapping) corresponds to.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.start).wrapping_add(self.offset)
    }

    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }

    /// A path that opens the cached file (`/proc/self/fd/N`), valid while this mapping is cached,
    /// even after the process exited or the file was deleted. `None` if it could not be opened.
    pub fn open_path(&self) -> Option<PathBuf> {
        self.file
            .as_ref()
            .map(|f| PathBuf::from(format!("/proc/self/fd/{}", f.file.as_raw_fd())))
    }

    /// Identity of the cached open file (distinct files never share one while cached).
    pub fn file_id(&self) -> Option<u64> {
        self.file.as_ref().map(|f| f.id)
    }

    /// A pseudo mapping such as `[vdso]` (no file behind it).
    pub fn is_pseudo(&self) -> bool {
        self.path.starts_with('[')
    }

    /// Last path component, for display (`libc.so.6`).
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The path to show: [`CachedMapping::started_as`] when known, else `path`.
    pub fn display_path(&self) -> &str {
        self.started_as.as_deref().unwrap_or(&self.path)
    }

    /// Last component of [`CachedMapping::display_path`] (`redis-server`).
    pub fn display_name(&self) -> &str {
        let p = self.display_path();
        p.rsplit('/').next().unwrap_or(p)
    }

    fn same_as(&self, l: &MapLine) -> bool {
        self.start == l.start
            && self.end == l.end
            && self.offset == l.offset
            && self.inode == l.inode
            && self.dev == l.dev
            && Some(self.path.as_str()) == l.path.as_deref()
    }
}

impl ProcMaps {
    /// The started-as name for a mapping of `path`: only the current main binary has one.
    fn started_as_of(&self, path: &str) -> Option<String> {
        match (&self.exe, &self.started_as) {
            (Some(exe), Some((for_exe, name))) if exe == path && for_exe == exe => name.clone(),
            _ => None,
        }
    }

    /// Records the started-as name of the current main binary and applies it to its mappings.
    fn set_started_as(&mut self, name: Option<String>) {
        let Some(exe) = self.exe.clone() else {
            return;
        };
        self.started_as = Some((exe, name));
        for i in 0..self.mappings.len() {
            self.mappings[i].started_as = self.started_as_of(&self.mappings[i].path);
        }
    }
}

#[derive(Debug, Default)]
struct ProcMaps {
    /// Target of `/proc/PID/exe` (the main binary), without ` (deleted)`.
    exe: Option<String>,
    /// Start time of the process (clock ticks after boot), to notice pid reuse.
    start_time: Option<u64>,
    /// [`started_as`] for the main binary `.0` (looked up once per main binary).
    started_as: Option<(String, Option<String>)>,
    /// Sorted by `start`, non-overlapping.
    mappings: Vec<CachedMapping>,
    /// The address spaces it had before its last execs (oldest first, at most
    /// `PREVIOUS_ADDRESS_SPACES`): stacks taken before an exec point into them.
    previous: Vec<Vec<CachedMapping>>,
}

/// Address spaces kept per process after it execs (a process exec'ing in a loop must not
/// keep every binary it ran open).
const PREVIOUS_ADDRESS_SPACES: usize = 4;

/// Field 22 (`starttime`) of `/proc/PID/stat`.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

/// Field 22 (`starttime`) of `/proc/PID/stat` text.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // `comm` (field 2) may contain spaces and parentheses: fields resume after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Executable mappings of the processes being profiled, kept across their exit.
///
/// `Send`, so it can be filled on one thread and handed to the symbolizer's thread.
#[derive(Debug, Default)]
pub struct MapsCache {
    procs: HashMap<u32, ProcMaps>,
    /// Open files by (device, inode) as printed in the maps, shared between processes.
    files: HashMap<(String, u64), Arc<CachedFile>>,
    next_id: u64,
}

impl MapsCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Re-reads `/proc/PID/maps`: keeps cached mappings that are unchanged, adds new ones
    /// (libraries loaded with `dlopen` since the last call) and drops cached mappings that a new
    /// mapping now overlaps. Cached mappings that disappeared without replacement (`dlclose`) are
    /// kept, because stacks collected earlier may still point into them.
    ///
    /// Fails if the process is gone or its maps are unreadable (permissions); the cache for the
    /// pid is then left as it was.
    pub fn refresh(&mut self, pid: u32) -> io::Result<()> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading /proc/{pid}/maps (is the process alive, and are we root?): {e}"),
            )
        })?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let p = p.to_string_lossy().into_owned();
                match p.strip_suffix(DELETED_SUFFIX) {
                    Some(s) => s.to_string(),
                    None => p,
                }
            });
        let start_time = proc_start_time(pid);
        let started = exe.as_deref().map(|exe| {
            let known = self
                .procs
                .get(&pid)
                .filter(|p| start_time.is_none() || p.start_time == start_time)
                .and_then(|p| p.started_as.as_ref())
                .filter(|(e, _)| e == exe);
            match known {
                Some((_, name)) => name.clone(),
                None => read_started_as(pid, exe),
            }
        });
        self.update(pid, &parse_maps(&text), exe, start_time);
        if let (Some(proc), Some(name)) = (self.procs.get_mut(&pid), started) {
            proc.set_started_as(name);
        }
        Ok(())
    }

    /// Merges freshly parsed maps lines of `pid` into the cache (see [`MapsCache::refresh`]).
    fn update(
        &mut self,
        pid: u32,
        lines: &[MapLine],
        exe: Option<String>,
        start_time: Option<u64>,
    ) {
        let mut procs = std::mem::take(&mut self.procs);
        let proc = procs.entry(pid).or_default();
        // A different start time means the pid was reused; a different main binary means the
        // process called exec. Either way the old mappings describe another address space.
        let reused =
            start_time.is_some() && proc.start_time.is_some() && start_time != proc.start_time;
        let execed = exe.is_some() && proc.exe.is_some() && exe != proc.exe;
        if reused {
            tracing::debug!(pid, "pid reused; dropping cached mappings");
            proc.mappings.clear();
            proc.previous.clear();
        } else if execed {
            // The same process with a new address space: what it sampled before the exec is
            // still to be symbolized against the old one.
            tracing::debug!(pid, "exec; the old address space kept for earlier stacks");
            proc.previous.push(std::mem::take(&mut proc.mappings));
            if proc.previous.len() > PREVIOUS_ADDRESS_SPACES {
                proc.previous.remove(0);
            }
        }
        if exe.is_some() {
            proc.exe = exe;
        }
        if start_time.is_some() {
            proc.start_time = start_time;
        }
        for line in lines.iter().filter(|l| l.is_executable()) {
            let keep = line.is_file_backed()
                || matches!(line.path.as_deref(), Some("[vdso]") | Some("[vsyscall]"));
            if !keep || proc.mappings.iter().any(|m| m.same_as(line)) {
                continue;
            }
            proc.mappings
                .retain(|m| m.end <= line.start || m.start >= line.end);
            let mut mapping = self.new_mapping(pid, line);
            mapping.started_as = proc.started_as_of(&mapping.path);
            let at = proc.mappings.partition_point(|m| m.start < mapping.start);
            proc.mappings.insert(at, mapping);
        }
        self.procs = procs;
        self.gc_files();
    }

    /// Drops everything cached for `pid` (call on exec and exit, once its stacks were symbolized).
    pub fn forget(&mut self, pid: u32) {
        if self.procs.remove(&pid).is_some() {
            self.gc_files();
        }
    }

    /// The cached mapping of `pid` that contains `addr`: in its current address space, else in
    /// the ones it had before its last execs, newest first. (With address-space randomization,
    /// the default, an exec puts the new binary and libraries elsewhere; without it an address
    /// of the old image that the new one also maps is taken for the new one.)
    pub fn find(&self, pid: u32, addr: u64) -> Option<&CachedMapping> {
        let proc = self.procs.get(&pid)?;
        let find_in = |maps: &'_ [CachedMapping]| -> Option<usize> {
            let i = maps.partition_point(|m| m.start <= addr).checked_sub(1)?;
            maps[i].contains(addr).then_some(i)
        };
        if let Some(i) = find_in(&proc.mappings) {
            return Some(&proc.mappings[i]);
        }
        proc.previous
            .iter()
            .rev()
            .find_map(|maps| find_in(maps).map(|i| &maps[i]))
    }

    /// The mappings of `pid`'s current address space, sorted by address.
    pub fn mappings(&self, pid: u32) -> &[CachedMapping] {
        self.procs.get(&pid).map_or(&[], |p| &p.mappings)
    }

    /// Path of the main binary of `pid`, when known.
    pub fn exe(&self, pid: u32) -> Option<&str> {
        self.procs.get(&pid)?.exe.as_deref()
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.procs.keys().copied()
    }

    /// Whether the open file with this [`CachedMapping::file_id`] is still cached.
    pub fn file_alive(&self, file_id: u64) -> bool {
        self.files.values().any(|f| f.id == file_id)
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn new_mapping(&mut self, pid: u32, line: &MapLine) -> CachedMapping {
        let file = if line.is_file_backed() {
            self.open_file(pid, line)
        } else {
            None
        };
        CachedMapping {
            id: self.next_id(),
            start: line.start,
            end: line.end,
            offset: line.offset,
            path: line.path.clone().unwrap_or_default(),
            deleted: line.deleted,
            dev: line.dev.clone(),
            inode: line.inode,
            build_id: file.as_ref().and_then(|f| f.build_id.clone()),
            started_as: None,
            file,
        }
    }

    fn open_file(&mut self, pid: u32, line: &MapLine) -> Option<Arc<CachedFile>> {
        let key = (line.dev.clone(), line.inode);
        if let Some(f) = self.files.get(&key) {
            return Some(Arc::clone(f));
        }
        let file = open_mapped_file(pid, line)?;
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let build_id = match blazesym::helper::read_elf_build_id(&fd_path) {
            Ok(id) => id.map(|b| hex(&b)),
            Err(e) => {
                tracing::debug!(pid, path = ?line.path, "no ELF build ID: {e}");
                None
            }
        };
        let cached = Arc::new(CachedFile {
            id: self.next_id(),
            file,
            build_id,
        });
        self.files.insert(key, Arc::clone(&cached));
        Some(cached)
    }

    /// Closes files that no cached mapping refers to any more.
    fn gc_files(&mut self) {
        self.files.retain(|_, f| Arc::strong_count(f) > 1);
    }
}

/// Opens the file behind a mapping: through `map_files` (deleted files, other mount namespaces),
/// else through the process's root, else by path. A file opened by path must still be the mapped
/// inode, so a binary upgraded on disk is not used to symbolize the old one.
fn open_mapped_file(pid: u32, line: &MapLine) -> Option<File> {
    let by_map_files = format!("/proc/{pid}/map_files/{:x}-{:x}", line.start, line.end);
    match File::open(&by_map_files) {
        Ok(f) => return Some(f),
        Err(e) => tracing::debug!("opening {by_map_files}: {e}; falling back to the path"),
    }
    let path = line.path.as_deref()?;
    if line.deleted {
        return None;
    }
    for candidate in [format!("/proc/{pid}/root{path}"), path.to_string()] {
        if let Ok(f) = File::open(&candidate)
            && f.metadata().is_ok_and(|m| m.ino() == line.inode)
        {
            return Some(f);
        }
    }
    tracing::debug!(
        pid,
        path,
        "cannot open mapped file; its frames stay unsymbolized"
    );
    None
}

/// What `lstat` says a path is, for [`started_as`]: a symlink carries its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathEntry {
    Dir,
    File,
    Symlink(String),
}

/// Where `execvp` looks when `PATH` is unset (glibc's is shorter; this is a superset).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Most symlinks followed in one path, as the kernel's `ELOOP` limit.
const MAX_SYMLINKS: usize = 40;

/// The path a program was started as, when it is a symlink whose canonical target is its main
/// binary `exe` (an absolute, canonical path as `/proc/PID/exe` shows it); `None` when it is not
/// (or is `exe` itself, or cannot be told).
///
/// Candidate names, in this order: `argv0`; its first word when it has spaces (programs that
/// rewrite their title, like redis: `/usr/bin/redis-server *:6379`); `comm` (the base name of the
/// path given to `execve`, at most 15 bytes), first in `exe`'s directory. A name with a `/` is
/// a path (relative ones from `cwd`); a name without is searched in each directory of
/// `path_env` (`PATH`, `:`-separated; an empty entry is `cwd`). The first candidate whose last
/// component is a symlink and whose canonical path is `exe` wins, shown as given (absolute, with
/// `.`, `..` and repeated `/` removed lexically).
///
/// `lstat` describes a path whose directories are already canonical (no symlinks), as `lstat(2)`
/// would, and `None` when it does not exist; symlinks are followed here, so a resolver that
/// looks inside another root (`/proc/PID/root`) follows absolute links within that root.
pub fn started_as(
    argv0: &str,
    comm: Option<&str>,
    exe: &str,
    path_env: &str,
    cwd: Option<&str>,
    lstat: impl Fn(&str) -> Option<PathEntry>,
) -> Option<String> {
    let mut names: Vec<&str> = vec![argv0];
    if let Some(first) = argv0.split_whitespace().next()
        && first != argv0
    {
        names.push(first);
    }
    let mut candidates: Vec<String> = Vec::new();
    for name in names {
        candidates.extend(name_candidates(name, path_env, cwd));
    }
    // A program that rewrote its argv[0] (PostgreSQL: `postgres: walwriter`) is looked up by
    // its comm beside its executable only: a link of that name elsewhere on PATH is a guess.
    if let Some(comm) = comm.filter(|c| !c.is_empty() && !c.contains('/'))
        && let Some((dir, _)) = exe.rsplit_once('/')
    {
        candidates.push(format!("{dir}/{comm}"));
    }
    candidates.into_iter().find(|c| {
        c != exe && is_symlink(c, &lstat) && canonicalize(c, &lstat).as_deref() == Some(exe)
    })
}

/// Absolute, lexically normalized paths that `name` may have been found at.
fn name_candidates(name: &str, path_env: &str, cwd: Option<&str>) -> Vec<String> {
    if name.is_empty() {
        return Vec::new();
    }
    let join = |dir: &str| match dir {
        "" => cwd.map(|c| format!("{c}/{name}")),
        d if d.starts_with('/') => Some(format!("{d}/{name}")),
        d => cwd.map(|c| format!("{c}/{d}/{name}")),
    };
    let raw: Vec<String> = if name.starts_with('/') {
        vec![name.to_string()]
    } else if name.contains('/') {
        join("").into_iter().collect()
    } else {
        path_env.split(':').filter_map(join).collect()
    };
    raw.iter().filter_map(|p| normalize(p)).collect()
}

/// `/a/./b//c/../d` → `/a/b/d`; `None` for a relative path.
fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// Whether the last component of `path` is a symlink (its directories resolved first).
fn is_symlink(path: &str, lstat: &impl Fn(&str) -> Option<PathEntry>) -> bool {
    let Some((dir, last)) = path.rsplit_once('/') else {
        return false;
    };
    let Some(dir) = canonicalize(if dir.is_empty() { "/" } else { dir }, lstat) else {
        return false;
    };
    let full = if dir == "/" {
        format!("/{last}")
    } else {
        format!("{dir}/{last}")
    };
    matches!(lstat(&full), Some(PathEntry::Symlink(_)))
}

/// The canonical form of the absolute `path` (every symlink followed, as `realpath(3)`), or
/// `None` when some component does not exist, a file is used as a directory, or links loop.
fn canonicalize(path: &str, lstat: &impl Fn(&str) -> Option<PathEntry>) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    // Components still to walk, the next one last.
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let here = format!(
            "/{}",
            done.iter()
                .chain([&c])
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("/")
        );
        match lstat(&here)? {
            PathEntry::Dir => done.push(c),
            PathEntry::File => {
                if todo.iter().any(|t| !t.is_empty() && t != ".") {
                    return None;
                }
                done.push(c);
            }
            PathEntry::Symlink(target) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                if target.starts_with('/') {
                    done.clear();
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
        }
    }
    Some(format!("/{}", done.join("/")))
}

/// [`started_as`] for process `pid` (main binary `exe`) from `/proc/PID/cmdline`, `comm`,
/// `environ` (`PATH`, else [`DEFAULT_PATH`]) and `cwd`, resolving paths inside `/proc/PID/root`.
fn read_started_as(pid: u32, exe: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let comm = comm.as_deref().map(|c| c.trim_end_matches('\n'));
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let path_env = environ
        .split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"PATH="))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let root = format!("/proc/{pid}/root");
    let lstat = |p: &str| -> Option<PathEntry> {
        let full = format!("{root}{p}");
        let meta = std::fs::symlink_metadata(&full).ok()?;
        Some(if meta.file_type().is_symlink() {
            PathEntry::Symlink(
                std::fs::read_link(&full)
                    .ok()?
                    .to_string_lossy()
                    .into_owned(),
            )
        } else if meta.is_dir() {
            PathEntry::Dir
        } else {
            PathEntry::File
        })
    };
    let name = started_as(&argv0, comm, exe, &path_env, cwd.as_deref(), lstat);
    if let Some(name) = &name {
        tracing::debug!(pid, exe, name, "main binary started through a symlink");
    }
    name
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon
00e03000-00e24000 rw-p 00000000 00:00 0           [heap]
7f2b4c000000-7f2b4c021000 rw-p 00000000 00:00 0 
7f2b4f0e1000-7f2b4f2c8000 r-xp 00028000 fd:01 1054733                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2b50000000-7f2b50010000 r-xp 00001000 fd:01 99                         /tmp/my dir/lib with spaces.so (deleted)
7f2b51000000-7f2b51001000 r-xp 00000000 00:01 1234                       /memfd:jit (deleted)
7ffd5d9f5000-7ffd5d9f7000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";

    #[test]
    fn parses_all_kinds_of_lines() {
        let m = parse_maps(SAMPLE);
        assert_eq!(m.len(), 9);
        assert_eq!(
            m[0],
            MapLine {
                start: 0x400000,
                end: 0x452000,
                perms: "r-xp".into(),
                offset: 0,
                dev: "08:02".into(),
                inode: 173521,
                path: Some("/usr/bin/dbus-daemon".into()),
                deleted: false,
            }
        );
        assert!(m[0].is_executable() && m[0].is_file_backed());
        assert!(!m[1].is_executable());
        assert_eq!(m[2].path.as_deref(), Some("[heap]"));
        assert!(m[2].is_pseudo() && !m[2].is_file_backed());
        assert_eq!(m[3].path, None, "anonymous mapping with trailing space");
        assert!(!m[3].is_file_backed());
        assert_eq!(m[4].offset, 0x28000);
        assert_eq!(
            m[4].path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(m[5].path.as_deref(), Some("/tmp/my dir/lib with spaces.so"));
        assert!(m[5].deleted && m[5].is_file_backed());
        assert_eq!(m[6].path.as_deref(), Some("/memfd:jit"));
        assert!(m[6].deleted);
        assert_eq!(m[7].path.as_deref(), Some("[vdso]"));
        assert!(m[7].is_executable() && !m[7].is_file_backed());
        assert_eq!(m[8].start, 0xffffffffff600000);
    }

    #[test]
    fn cache_of_own_process_finds_code_and_survives_forget_of_others() {
        let pid = std::process::id();
        let mut cache = MapsCache::new();
        cache.refresh(pid).expect("own maps are readable");
        let addr = parses_all_kinds_of_lines as *const () as usize as u64;
        let m = cache.find(pid, addr).expect("own code is mapped");
        assert!(m.contains(addr));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(m.path, exe.to_string_lossy());
        let open = m.open_path().expect("file kept open");
        assert!(std::fs::metadata(&open).is_ok());
        assert!(m.build_id.as_deref().is_none_or(|b| b.len() >= 16));
        assert_eq!(cache.exe(pid), Some(&*exe.to_string_lossy()));

        // A second refresh keeps the same mappings (same ids).
        let id = m.id;
        cache.refresh(pid).unwrap();
        assert_eq!(cache.find(pid, addr).unwrap().id, id);

        cache.forget(pid + 1_000_000);
        assert!(cache.find(pid, addr).is_some());
        cache.forget(pid);
        assert!(cache.find(pid, addr).is_none());
        assert!(cache.files.is_empty(), "files closed once unused");
    }

    #[test]
    fn update_adds_keeps_replaces_and_drops_on_exec() {
        let pid = u32::MAX - 3; // no such process: files cannot be opened, names still kept
        let line = |start: u64, end: u64, path: &str, inode: u64| MapLine {
            start,
            end,
            perms: "r-xp".into(),
            offset: 0x1000,
            dev: "fd:01".into(),
            inode,
            path: Some(path.into()),
            deleted: false,
        };
        let app = line(0x40_0000, 0x50_0000, "/usr/bin/app", 1);
        let liba = line(0x7f00_0000, 0x7f10_0000, "/lib/liba.so", 2);
        let libb = line(0x7f20_0000, 0x7f30_0000, "/lib/libb.so", 3);
        let mut anon = line(0x9000_0000, 0x9010_0000, "", 0);
        anon.path = None;
        let mut data = line(0x60_0000, 0x61_0000, "/usr/bin/app", 1);
        data.perms = "rw-p".into();
        let mut c = MapsCache::new();
        let exe = Some("/usr/bin/app".to_string());
        c.update(
            pid,
            &[app.clone(), data, anon, liba.clone()],
            exe.clone(),
            Some(5),
        );
        assert_eq!(
            c.mappings(pid).len(),
            2,
            "only file-backed executable mappings"
        );
        let liba_id = c.find(pid, 0x7f00_0010).unwrap().id;
        assert_eq!(
            c.find(pid, 0x7f00_0010).unwrap().file_offset(0x7f00_0010),
            0x1010
        );
        assert!(c.find(pid, 0x7f00_0010).unwrap().open_path().is_none());
        assert!(c.find(pid, 0x9000_0000).is_none());
        assert!(c.find(pid, 0x7f10_0000).is_none(), "end is exclusive");

        // dlopen(libb), dlclose(liba): libb added, liba kept for earlier stacks.
        c.update(pid, &[app.clone(), libb.clone()], exe.clone(), Some(5));
        assert_eq!(c.mappings(pid).len(), 3);
        assert_eq!(c.find(pid, 0x7f00_0010).unwrap().id, liba_id);
        assert_eq!(c.find(pid, 0x7f20_0010).unwrap().path, "/lib/libb.so");

        // Something else mapped over liba's range replaces it.
        let libc2 = line(0x7f08_0000, 0x7f18_0000, "/lib/libc2.so", 4);
        c.update(pid, &[app.clone(), libc2], exe.clone(), Some(5));
        assert_eq!(c.find(pid, 0x7f00_0010).map(|m| m.path.as_str()), None);
        assert_eq!(c.find(pid, 0x7f08_0000).unwrap().path, "/lib/libc2.so");
        let starts: Vec<u64> = c.mappings(pid).iter().map(|m| m.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "sorted");

        // exec: a new main binary, a new address space; the old one still answers for the
        // addresses the new one does not map (stacks taken before the exec).
        let other = line(0x40_0000, 0x48_0000, "/usr/bin/other", 9);
        c.update(pid, &[other], Some("/usr/bin/other".into()), Some(5));
        assert_eq!(c.mappings(pid).len(), 1);
        assert_eq!(c.exe(pid), Some("/usr/bin/other"));
        assert_eq!(c.find(pid, 0x40_0010).unwrap().path, "/usr/bin/other");
        assert_eq!(c.find(pid, 0x49_0000).unwrap().path, "/usr/bin/app");
        assert_eq!(c.find(pid, 0x7f20_0010).unwrap().path, "/lib/libb.so");
        // Execs in a loop keep a bounded number of old address spaces.
        for n in 0..10u64 {
            let path = format!("/usr/bin/loop{n}");
            let l = line(0x40_0000, 0x48_0000, &path, 100 + n);
            c.update(pid, &[l], Some(path.clone()), Some(5));
        }
        assert!(
            c.find(pid, 0x49_0000).is_none(),
            "the oldest address spaces are dropped"
        );
        assert_eq!(c.procs[&pid].previous.len(), PREVIOUS_ADDRESS_SPACES);
        // pid reuse: a new start time drops every address space of the old process.
        c.update(pid, &[app], exe, Some(6));
        assert_eq!(c.mappings(pid).len(), 1);
        assert!(c.find(pid, 0x7f20_0010).is_none());
        assert_eq!(c.mappings(pid)[0].path, "/usr/bin/app");
    }

    /// A file system for [`started_as`]: Debian's redis links, merged /usr, alternatives.
    fn fake_lstat(p: &str) -> Option<PathEntry> {
        use PathEntry::*;
        Some(match p {
            "/usr" | "/usr/bin" | "/usr/local" | "/usr/local/bin" | "/etc"
            | "/etc/alternatives" | "/home" | "/home/u" => Dir,
            "/bin" => Symlink("usr/bin".into()),
            "/usr/bin/redis-server" => Symlink("redis-check-rdb".into()),
            "/usr/bin/redis-check-rdb" | "/usr/bin/vim.basic" | "/usr/local/bin/other" => File,
            "/usr/bin/editor" => Symlink("/etc/alternatives/editor".into()),
            "/etc/alternatives/editor" => Symlink("../../usr/bin/vim.basic".into()),
            "/usr/bin/other" => Symlink("vim.basic".into()),
            "/usr/bin/loop" => Symlink("loop2".into()),
            "/usr/bin/loop2" => Symlink("/usr/bin/loop".into()),
            "/home/u/redis" => Symlink("/usr/bin/redis-server".into()),
            "/usr/lib/postgresql/15/bin/postgres" => File,
            "/usr/local/bin/postgres" => Symlink("/usr/lib/postgresql/15/bin/postgres".into()),
            _ => return None,
        })
    }

    #[test]
    fn started_as_resolves_argv0_comm_path_and_symlink_chains() {
        const RDB: &str = "/usr/bin/redis-check-rdb";
        const PATH: &str = "/usr/local/bin:/usr/bin";
        let name = |argv0: &str, comm: Option<&str>, exe: &str, cwd: Option<&str>| {
            started_as(argv0, comm, exe, PATH, cwd, fake_lstat)
        };
        let server = Some("/usr/bin/redis-server".to_string());
        // Found through PATH, as a path, with a rewritten title, through comm.
        assert_eq!(name("redis-server", None, RDB, None), server);
        assert_eq!(name("/usr/bin/redis-server", None, RDB, None), server);
        assert_eq!(
            name("/usr/bin/redis-server *:6379", None, RDB, None),
            server
        );
        assert_eq!(name("redis-server *:6379", None, RDB, None), server);
        assert_eq!(name("", Some("redis-server"), RDB, None), server);
        assert_eq!(name("weird title", Some("redis-server"), RDB, None), server);
        // Relative paths from the working directory, shown normalized.
        assert_eq!(name("./redis-server", None, RDB, Some("/usr/bin")), server);
        assert_eq!(
            name("../bin//redis-server", None, RDB, Some("/usr/local")),
            server
        );
        assert_eq!(name("./redis-server", None, RDB, None), None, "no cwd");
        // Started under the real name: nothing to add.
        assert_eq!(
            name("redis-check-rdb", Some("redis-check-rd"), RDB, None),
            None
        );
        assert_eq!(name(RDB, None, RDB, None), None);
        // Merged /usr: `/bin/redis-check-rdb` is not itself a symlink; `/bin/redis-server` is.
        assert_eq!(name("/bin/redis-check-rdb", None, RDB, None), None);
        assert_eq!(
            name("/bin/redis-server", None, RDB, None).as_deref(),
            Some("/bin/redis-server")
        );
        // Chains of absolute and relative links (alternatives), and a link to a link.
        assert_eq!(
            name("editor", None, "/usr/bin/vim.basic", None).as_deref(),
            Some("/usr/bin/editor")
        );
        assert_eq!(
            name("/home/u/redis", None, RDB, None).as_deref(),
            Some("/home/u/redis")
        );
        // A symlink to another file; a file of the same name earlier in PATH is skipped.
        assert_eq!(name("/usr/bin/other", None, RDB, None), None);
        assert_eq!(
            name("other", None, "/usr/bin/vim.basic", None).as_deref(),
            Some("/usr/bin/other")
        );
        // A rewritten title is not looked up on PATH by the comm.
        const PG: &str = "/usr/lib/postgresql/15/bin/postgres";
        assert_eq!(
            name("postgres: walwriter ", Some("postgres"), PG, None),
            None
        );
        // Loops and missing files end.
        assert_eq!(name("loop", None, RDB, None), None);
        assert_eq!(name("missing", Some("missing"), RDB, None), None);
        assert_eq!(name("", None, RDB, None), None);
        // An unset PATH is the caller's business (DEFAULT_PATH); an empty entry is cwd.
        assert_eq!(
            started_as(
                "redis-server",
                None,
                RDB,
                ":/nowhere",
                Some("/usr/bin"),
                fake_lstat
            ),
            server
        );
        assert!(DEFAULT_PATH.split(':').any(|d| d == "/usr/bin"));
    }

    #[test]
    fn canonicalize_and_normalize() {
        assert_eq!(
            canonicalize("/bin/redis-server", &fake_lstat).as_deref(),
            Some("/usr/bin/redis-check-rdb")
        );
        assert_eq!(
            canonicalize("/usr/bin/editor", &fake_lstat).as_deref(),
            Some("/usr/bin/vim.basic")
        );
        assert_eq!(canonicalize("/", &fake_lstat).as_deref(), Some("/"));
        assert_eq!(
            canonicalize("/usr/bin/vim.basic/x", &fake_lstat),
            None,
            "ENOTDIR"
        );
        assert_eq!(canonicalize("/usr/bin/loop", &fake_lstat), None, "ELOOP");
        assert_eq!(canonicalize("usr/bin", &fake_lstat), None, "relative");
        assert_eq!(normalize("/a/./b//c/../d/").as_deref(), Some("/a/b/d"));
        assert_eq!(normalize("/..").as_deref(), Some("/"));
        assert_eq!(normalize("a/b"), None);
    }

    #[test]
    fn started_as_applies_only_to_the_main_binary() {
        let pid = u32::MAX - 5;
        let line = |start: u64, path: &str, inode: u64| MapLine {
            start,
            end: start + 0x1000,
            perms: "r-xp".into(),
            offset: 0,
            dev: "fd:01".into(),
            inode,
            path: Some(path.into()),
            deleted: false,
        };
        let app = line(0x40_0000, "/usr/bin/app-real", 1);
        let lib = line(0x7f00_0000, "/lib/liba.so", 2);
        let mut c = MapsCache::new();
        let exe = Some("/usr/bin/app-real".to_string());
        c.update(pid, std::slice::from_ref(&app), exe.clone(), Some(5));
        c.procs
            .get_mut(&pid)
            .unwrap()
            .set_started_as(Some("/usr/bin/app".into()));
        // A mapping added later gets it too; other files never.
        c.update(pid, &[app.clone(), lib], exe.clone(), Some(5));
        let m = c.find(pid, 0x40_0010).unwrap();
        assert_eq!(m.path, "/usr/bin/app-real", "the real path stays");
        assert_eq!(m.display_path(), "/usr/bin/app");
        assert_eq!(m.display_name(), "app");
        assert_eq!(m.file_name(), "app-real");
        let l = c.find(pid, 0x7f00_0010).unwrap();
        assert_eq!(
            (l.started_as.as_deref(), l.display_name()),
            (None, "liba.so")
        );
        c.update(
            pid,
            &[line(0x40_0000, "/usr/bin/app-real", 3)],
            exe,
            Some(5),
        );
        assert_eq!(
            c.find(pid, 0x40_0010).unwrap().display_path(),
            "/usr/bin/app"
        );
        // exec of another binary: the name does not carry over.
        let other = line(0x40_0000, "/usr/bin/other", 9);
        c.update(pid, &[other], Some("/usr/bin/other".into()), Some(5));
        assert_eq!(c.find(pid, 0x40_0010).unwrap().started_as, None);
        c.procs.get_mut(&pid).unwrap().set_started_as(None);
        assert_eq!(
            c.find(pid, 0x40_0010).unwrap().display_path(),
            "/usr/bin/other"
        );
    }

    #[test]
    fn own_process_was_not_started_through_a_symlink() {
        let pid = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_string_lossy();
        assert_eq!(read_started_as(pid, &exe), None);
        let mut cache = MapsCache::new();
        cache.refresh(pid).unwrap();
        let addr = parses_all_kinds_of_lines as *const () as usize as u64;
        assert_eq!(cache.find(pid, addr).unwrap().display_path(), exe);
    }

    #[test]
    fn stat_start_time_with_odd_comm() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 \
                    1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat_start_time(stat), Some(987654));
        assert_eq!(parse_stat_start_time("garbage"), None);
        assert!(proc_start_time(std::process::id()).is_some());
    }

    #[test]
    fn refresh_of_missing_process_fails_with_hint() {
        let mut cache = MapsCache::new();
        let err = cache.refresh(u32::MAX - 7).unwrap_err();
        assert!(err.to_string().contains("is the process alive"));
    }

    #[test]
    fn cache_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<MapsCache>();
    }
}
