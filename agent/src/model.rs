//! Plain data that flows from `collect` to `symbolize` and `export`: stacks, samples, value types.
//!
//! Nothing here touches aya, the kernel or the file system; it is unit-tested without root.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Which profile a [`RawProfile`] is. Decides the file names and the default sample type.
/// `--profile` parses it by [`ProfileKind::name`] (clap's `ValueEnum`, names in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum ProfileKind {
    Cpu,
    Offcpu,
    Block,
    Mutex,
}

impl ProfileKind {
    /// The file stem used for outputs: `cpu.pb.gz`, `cpu.folded`, ...
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::Offcpu => "offcpu",
            ProfileKind::Block => "block",
            ProfileKind::Mutex => "mutex",
        }
    }
}

/// A pprof value type such as `samples/count` or `cpu/nanoseconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub r#type: String,
    pub unit: String,
}

impl ValueType {
    pub fn new(r#type: &str, unit: &str) -> Self {
        Self {
            r#type: r#type.to_string(),
            unit: unit.to_string(),
        }
    }
}

/// A stack as the kernel captured it, leaf first. `user[0]` is the exact instruction pointer of
/// the sampled/blocked thread; the following entries are return addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RawStack {
    pub user: Vec<u64>,
    pub kernel: Vec<u64>,
}

/// A pprof label: `key=value` (string) or `key=num unit` (numeric).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Label {
    Str(String, String),
    Num(String, i64, String),
    /// An address (a lock's futex word): a number until export writes it as the string label
    /// `0x…` (a numeric pprof label would print in decimal; `-tagfocus=lock=0x…` wants hex).
    Addr(String, u64),
}

impl Label {
    pub fn key(&self) -> &str {
        match self {
            Label::Str(k, _) | Label::Num(k, _, _) | Label::Addr(k, _) => k,
        }
    }
}

/// How an address label is written out (pprof, folded, summaries).
pub fn addr_text(a: u64) -> String {
    format!("{a:#x}")
}

/// One aggregated sample before symbolization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// Process the stack belongs to (user addresses are resolved in its address space).
    pub pid: u32,
    pub stack: RawStack,
    /// One value per entry of [`RawProfile::sample_types`].
    pub values: Vec<i64>,
    pub labels: Vec<Label>,
}

/// What a capture produced for one profile kind, with everything needed to write it out.
#[derive(Debug, Clone)]
pub struct RawProfile {
    pub kind: ProfileKind,
    pub sample_types: Vec<ValueType>,
    /// The sample type `go tool pprof` shows first (pprof `default_sample_type`).
    pub default_sample_type: Option<String>,
    pub period_type: ValueType,
    pub period: i64,
    pub start: SystemTime,
    pub duration: Duration,
    pub samples: Vec<RawSample>,
    /// Free-text notes carried into the pprof `comment` field (accounting, drops, lost stacks).
    pub comments: Vec<String>,
}

impl RawProfile {
    /// Adds samples with identical (pid, stack, labels) together.
    pub fn merge_duplicates(&mut self) {
        let mut index: HashMap<(u32, RawStack, Vec<Label>), usize> = HashMap::new();
        let mut out: Vec<RawSample> = Vec::with_capacity(self.samples.len());
        for s in self.samples.drain(..) {
            let key = (s.pid, s.stack.clone(), s.labels.clone());
            match index.get(&key) {
                Some(&i) => {
                    for (a, b) in out[i].values.iter_mut().zip(&s.values) {
                        *a += *b;
                    }
                }
                None => {
                    index.insert(key, out.len());
                    out.push(s);
                }
            }
        }
        self.samples = out;
    }

    /// Sum of one value column over all samples.
    pub fn total(&self, value_index: usize) -> i64 {
        self.samples.iter().map(|s| s.values[value_index]).sum()
    }
}

/// One source line of a location. A location has several when functions were inlined into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Line {
    pub function: String,
    /// The function's name before demangling, when it differs.
    pub system_name: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A memory mapping of the target process (or the kernel).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mapping {
    pub start: u64,
    pub limit: u64,
    pub offset: u64,
    /// File path as the process sees it (`/usr/lib/x86_64-linux-gnu/libc.so.6`, `[kernel]`, ...).
    pub file: String,
    /// GNU build ID as lowercase hex, when the file has one.
    pub build_id: Option<String>,
    pub has_functions: bool,
    pub has_filenames: bool,
    pub has_line_numbers: bool,
    pub has_inline_frames: bool,
}

/// A symbolized address: `lines[0]` is the innermost (inlined) function, the last one the
/// function whose code this is (pprof's convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub address: u64,
    /// Index into [`Profile::mappings`].
    pub mapping: Option<usize>,
    pub lines: Vec<Line>,
    pub kernel: bool,
}

/// A symbolized sample: `locations` are indexes into [`Profile::locations`], leaf first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub locations: Vec<usize>,
    pub values: Vec<i64>,
    pub labels: Vec<Label>,
}

/// A symbolized profile: what every exporter (pprof, folded, top table, SVG) reads.
#[derive(Debug, Clone)]
pub struct Profile {
    pub kind: ProfileKind,
    pub sample_types: Vec<ValueType>,
    pub default_sample_type: Option<String>,
    pub period_type: ValueType,
    pub period: i64,
    pub start: SystemTime,
    pub duration: Duration,
    pub samples: Vec<Sample>,
    pub locations: Vec<Location>,
    pub mappings: Vec<Mapping>,
    pub comments: Vec<String>,
}

impl Profile {
    /// Function names of a sample from the root to the leaf, with inlined frames expanded.
    pub fn frames_root_first(&self, sample: &Sample) -> Vec<&Line> {
        let mut out = Vec::new();
        for &loc in sample.locations.iter().rev() {
            for line in self.locations[loc].lines.iter().rev() {
                out.push(line);
            }
        }
        out
    }

    pub fn value_index(&self, r#type: &str) -> Option<usize> {
        self.sample_types.iter().position(|v| v.r#type == r#type)
    }

    pub fn total(&self, value_index: usize) -> i64 {
        self.samples.iter().map(|s| s.values[value_index]).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(user: &[u64], v: i64) -> RawSample {
        RawSample {
            pid: 1,
            stack: RawStack {
                user: user.to_vec(),
                kernel: vec![],
            },
            values: vec![v, v * 10],
            labels: vec![],
        }
    }

    #[test]
    fn merge_adds_identical_stacks() {
        let mut p = RawProfile {
            kind: ProfileKind::Cpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            default_sample_type: None,
            period_type: ValueType::new("cpu", "nanoseconds"),
            period: 10,
            start: SystemTime::UNIX_EPOCH,
            duration: Duration::from_secs(1),
            samples: vec![sample(&[1, 2], 1), sample(&[1, 3], 2), sample(&[1, 2], 4)],
            comments: vec![],
        };
        p.merge_duplicates();
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0].values, vec![5, 50]);
        assert_eq!(p.total(0), 7);
    }
}
