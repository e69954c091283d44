//! pprof output: gzipped `profile.proto` (github.com/google/pprof/proto/profile.proto), the
//! format `go tool pprof` reads.
//!
//! [`encode`]/[`write`] turn a symbolized [`model::Profile`] into pprof; [`decode`] reads one back
//! (for tests, and for profiles fetched from elsewhere). [`validate`] runs before anything is
//! written, so a structurally broken profile never reaches disk.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message as _;

use crate::model::{self, Label, Line, Location, Mapping, ProfileKind, Sample, ValueType};
use crate::symbolize::{KERNEL_ADDRESS_START, KERNEL_MAPPING_FILE};

/// What can go wrong producing or reading a pprof file.
#[derive(Debug, thiserror::Error)]
pub enum PprofError {
    #[error("invalid profile: {0} (this is a bug in the code that built the profile)")]
    Invalid(String),
    #[error("cannot decode pprof data: {0} (is this a gzipped profile.proto file?)")]
    Decode(String),
    #[error("cannot write {}: {source} (check the directory exists and is writable)", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("i/o error while compressing or decompressing: {0}")]
    Io(#[from] std::io::Error),
}

/// The profile.proto messages, written by hand with the upstream field numbers.
pub mod proto {
    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, PartialEq, ::prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Checks what pprof readers rely on: at least one sample type, one value per sample type in
/// every sample, sample → location → mapping indexes in range, a default sample type that exists.
/// A profile without samples is valid.
pub fn validate(p: &model::Profile) -> Result<(), PprofError> {
    let invalid = |m: String| Err(PprofError::Invalid(m));
    if p.sample_types.is_empty() {
        return invalid("no sample types".into());
    }
    if let Some(d) = &p.default_sample_type
        && !p.sample_types.iter().any(|t| &t.r#type == d)
    {
        return invalid(format!(
            "default sample type {d:?} is not one of the sample types"
        ));
    }
    for (i, s) in p.samples.iter().enumerate() {
        if s.values.len() != p.sample_types.len() {
            return invalid(format!(
                "sample {i} has {} values but there are {} sample types",
                s.values.len(),
                p.sample_types.len()
            ));
        }
        if let Some(&l) = s.locations.iter().find(|&&l| l >= p.locations.len()) {
            return invalid(format!(
                "sample {i} refers to location {l}, but there are only {}",
                p.locations.len()
            ));
        }
        for label in &s.labels {
            let key = label.key();
            if key.is_empty() {
                return invalid(format!("sample {i} has a label with an empty key"));
            }
        }
    }
    for (i, l) in p.locations.iter().enumerate() {
        if let Some(m) = l.mapping
            && m >= p.mappings.len()
        {
            return invalid(format!(
                "location {i} refers to mapping {m}, but there are only {}",
                p.mappings.len()
            ));
        }
    }
    for (i, m) in p.mappings.iter().enumerate() {
        if m.limit < m.start {
            return invalid(format!("mapping {i} ({}) ends before it starts", m.file));
        }
    }
    Ok(())
}

/// Builds the string table, `""` first.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Self::default();
        s.get("");
        s
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

fn nanos_i64(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Converts to the protobuf message (ids are 1-based indexes).
pub fn to_proto(p: &model::Profile) -> Result<proto::Profile, PprofError> {
    validate(p)?;
    let mut st = Strings::new();
    fn vt(v: &ValueType, st: &mut Strings) -> proto::ValueType {
        proto::ValueType {
            r#type: st.get(&v.r#type),
            unit: st.get(&v.unit),
        }
    }
    let sample_type = p.sample_types.iter().map(|v| vt(v, &mut st)).collect();
    let period_type = Some(vt(&p.period_type, &mut st));

    let mapping = p
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.offset,
            filename: st.get(&m.file),
            build_id: m.build_id.as_deref().map_or(0, |b| st.get(b)),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        })
        .collect();

    let mut functions: Vec<proto::Function> = Vec::new();
    let mut function_ids: HashMap<(&str, Option<&str>, Option<&str>), u64> = HashMap::new();
    let mut location = Vec::with_capacity(p.locations.len());
    for (i, l) in p.locations.iter().enumerate() {
        let mut lines = Vec::with_capacity(l.lines.len());
        for line in &l.lines {
            let key = (
                line.function.as_str(),
                line.system_name.as_deref(),
                line.file.as_deref(),
            );
            let id = match function_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let id = functions.len() as u64 + 1;
                    let name = st.get(&line.function);
                    functions.push(proto::Function {
                        id,
                        name,
                        system_name: line.system_name.as_deref().map_or(name, |s| st.get(s)),
                        filename: line.file.as_deref().map_or(0, |f| st.get(f)),
                        start_line: 0,
                    });
                    function_ids.insert(key, id);
                    id
                }
            };
            lines.push(proto::Line {
                function_id: id,
                line: line.line.map_or(0, i64::from),
                column: 0,
            });
        }
        location.push(proto::Location {
            id: i as u64 + 1,
            mapping_id: l.mapping.map_or(0, |m| m as u64 + 1),
            address: l.address,
            line: lines,
            is_folded: false,
        });
    }

    let sample = p
        .samples
        .iter()
        .map(|s| proto::Sample {
            location_id: s.locations.iter().map(|&l| l as u64 + 1).collect(),
            value: s.values.clone(),
            label: s
                .labels
                .iter()
                .map(|l| match l {
                    Label::Str(k, v) => proto::Label {
                        key: st.get(k),
                        str: st.get(v),
                        num: 0,
                        num_unit: 0,
                    },
                    Label::Num(k, n, unit) => proto::Label {
                        key: st.get(k),
                        str: 0,
                        num: *n,
                        num_unit: if unit.is_empty() { 0 } else { st.get(unit) },
                    },
                    Label::Addr(k, a) => proto::Label {
                        key: st.get(k),
                        str: st.get(&model::addr_text(*a)),
                        num: 0,
                        num_unit: 0,
                    },
                })
                .collect(),
        })
        .collect();

    let comment = p.comments.iter().map(|c| st.get(c)).collect();
    let default_sample_type = p.default_sample_type.as_deref().map_or(0, |d| st.get(d));
    let time_nanos = p
        .start
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, nanos_i64);

    Ok(proto::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function: functions,
        string_table: st.table,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos,
        duration_nanos: nanos_i64(p.duration),
        period_type,
        period: p.period,
        comment,
        default_sample_type,
    })
}

/// Validates and encodes `p` as gzipped profile.proto bytes.
pub fn encode(p: &model::Profile) -> Result<Vec<u8>, PprofError> {
    let msg = to_proto(p)?;
    let raw = msg.encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(raw.len() / 4 + 64),
        Compression::default(),
    );
    gz.write_all(&raw)?;
    Ok(gz.finish()?)
}

/// Validates, encodes and writes `p` to `path` atomically (temporary file in the same directory,
/// then rename): a reader never sees a partial or invalid file.
pub fn write(p: &model::Profile, path: &Path) -> Result<(), PprofError> {
    let bytes = encode(p)?;
    crate::output::write_atomically(path, &bytes).map_err(|source| PprofError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Decodes gzipped (or plain) profile.proto bytes into a [`model::Profile`].
///
/// profile.proto has no field for [`ProfileKind`]; it is inferred from the sample types
/// (`cpu` → Cpu, `contentions`/`delay` → Block, else Offcpu). Mutex profiles look exactly like
/// block profiles: use [`decode_as`] when the kind is known.
/// Locations whose mapping is [`KERNEL_MAPPING_FILE`] (or, without mapping, whose address is in
/// the kernel half) are kernel locations.
pub fn decode(gz_bytes: &[u8]) -> Result<model::Profile, PprofError> {
    let msg = decode_proto(gz_bytes)?;
    let kind = infer_kind(&msg);
    from_proto(&msg, kind)
}

/// [`decode`] with a known profile kind.
pub fn decode_as(gz_bytes: &[u8], kind: ProfileKind) -> Result<model::Profile, PprofError> {
    from_proto(&decode_proto(gz_bytes)?, kind)
}

/// Decodes gzipped (or plain) bytes into the protobuf message.
pub fn decode_proto(bytes: &[u8]) -> Result<proto::Profile, PprofError> {
    let raw;
    let data = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| PprofError::Decode(format!("gunzip: {e}")))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    proto::Profile::decode(data).map_err(|e| PprofError::Decode(e.to_string()))
}

fn infer_kind(msg: &proto::Profile) -> ProfileKind {
    let name = |i: i64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| msg.string_table.get(i))
            .map_or("", |s| s.as_str())
    };
    let types: Vec<&str> = msg.sample_type.iter().map(|t| name(t.r#type)).collect();
    if types.contains(&"cpu") {
        ProfileKind::Cpu
    } else if types.iter().any(|t| *t == "contentions" || *t == "delay") {
        ProfileKind::Block
    } else {
        ProfileKind::Offcpu
    }
}

/// Converts the protobuf message back to the model, checking every reference.
pub fn from_proto(msg: &proto::Profile, kind: ProfileKind) -> Result<model::Profile, PprofError> {
    let bad = |m: String| PprofError::Decode(m);
    if msg.string_table.first().is_some_and(|s| !s.is_empty()) {
        return Err(bad("string_table[0] is not empty".into()));
    }
    let string = |i: i64| -> Result<&str, PprofError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| msg.string_table.get(i))
            .map(|s| s.as_str())
            .ok_or_else(|| bad(format!("string index {i} out of range")))
    };
    let opt_string = |i: i64| -> Result<Option<String>, PprofError> {
        Ok(Some(string(i)?)
            .filter(|s| !s.is_empty())
            .map(str::to_string))
    };
    let value_type = |v: &proto::ValueType| -> Result<ValueType, PprofError> {
        Ok(ValueType::new(string(v.r#type)?, string(v.unit)?))
    };

    let mut mapping_index = HashMap::new();
    let mut mappings = Vec::with_capacity(msg.mapping.len());
    for m in &msg.mapping {
        if m.id == 0 || mapping_index.insert(m.id, mappings.len()).is_some() {
            return Err(bad(format!("mapping id {} is zero or repeated", m.id)));
        }
        mappings.push(Mapping {
            start: m.memory_start,
            limit: m.memory_limit,
            offset: m.file_offset,
            file: string(m.filename)?.to_string(),
            build_id: opt_string(m.build_id)?,
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        });
    }

    let functions: HashMap<u64, &proto::Function> =
        msg.function.iter().map(|f| (f.id, f)).collect();
    let mut location_index = HashMap::new();
    let mut locations = Vec::with_capacity(msg.location.len());
    for l in &msg.location {
        if l.id == 0 || location_index.insert(l.id, locations.len()).is_some() {
            return Err(bad(format!("location id {} is zero or repeated", l.id)));
        }
        let mapping = match l.mapping_id {
            0 => None,
            id => Some(
                *mapping_index
                    .get(&id)
                    .ok_or_else(|| bad(format!("location {} has unknown mapping {id}", l.id)))?,
            ),
        };
        let mut lines = Vec::with_capacity(l.line.len());
        for line in &l.line {
            let f = functions.get(&line.function_id).ok_or_else(|| {
                bad(format!(
                    "location {} has unknown function {}",
                    l.id, line.function_id
                ))
            })?;
            let function = string(f.name)?.to_string();
            let system_name = opt_string(f.system_name)?.filter(|s| *s != function);
            lines.push(Line {
                function,
                system_name,
                file: opt_string(f.filename)?,
                line: u32::try_from(line.line).ok().filter(|&n| n != 0),
            });
        }
        let kernel = match mapping {
            Some(m) => mappings[m].file == KERNEL_MAPPING_FILE,
            None => l.address >= KERNEL_ADDRESS_START,
        };
        locations.push(Location {
            address: l.address,
            mapping,
            lines,
            kernel,
        });
    }

    let mut samples = Vec::with_capacity(msg.sample.len());
    for s in &msg.sample {
        let locs = s
            .location_id
            .iter()
            .map(|id| {
                location_index
                    .get(id)
                    .copied()
                    .ok_or_else(|| bad(format!("sample refers to unknown location {id}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut labels = Vec::with_capacity(s.label.len());
        for l in &s.label {
            let key = string(l.key)?.to_string();
            labels.push(if l.str != 0 {
                Label::Str(key, string(l.str)?.to_string())
            } else {
                Label::Num(key, l.num, string(l.num_unit)?.to_string())
            });
        }
        samples.push(Sample {
            locations: locs,
            values: s.value.clone(),
            labels,
        });
    }

    let default_sample_type = opt_string(msg.default_sample_type)?;
    let period_type = match &msg.period_type {
        Some(v) => value_type(v)?,
        None => ValueType::new("", ""),
    };
    let profile = model::Profile {
        kind,
        sample_types: msg
            .sample_type
            .iter()
            .map(value_type)
            .collect::<Result<_, _>>()?,
        default_sample_type,
        period_type,
        period: msg.period,
        start: SystemTime::UNIX_EPOCH
            + Duration::from_nanos(u64::try_from(msg.time_nanos).unwrap_or(0)),
        duration: Duration::from_nanos(u64::try_from(msg.duration_nanos).unwrap_or(0)),
        samples,
        locations,
        mappings,
        comments: msg
            .comment
            .iter()
            .map(|&c| string(c).map(str::to_string))
            .collect::<Result<_, _>>()?,
    };
    validate(&profile).map_err(|e| bad(e.to_string()))?;
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(f: &str, file: Option<&str>, n: Option<u32>) -> Line {
        Line {
            function: f.into(),
            system_name: None,
            file: file.map(Into::into),
            line: n,
        }
    }

    pub(crate) fn sample_profile() -> model::Profile {
        model::Profile {
            kind: ProfileKind::Offcpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("offcpu", "nanoseconds"),
            ],
            default_sample_type: Some("offcpu".into()),
            period_type: ValueType::new("offcpu", "nanoseconds"),
            period: 1,
            start: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            duration: Duration::from_millis(30_000),
            samples: vec![
                Sample {
                    locations: vec![0, 1, 2],
                    values: vec![2, 2_000_000],
                    labels: vec![
                        Label::Str("wait".into(), "futex".into()),
                        Label::Num("tid".into(), 42, String::new()),
                        Label::Num("bytes".into(), 4096, "bytes".into()),
                    ],
                },
                Sample {
                    locations: vec![3, 2],
                    values: vec![1, 500],
                    labels: vec![],
                },
            ],
            locations: vec![
                Location {
                    address: 0xffff_ffff_8100_0010,
                    mapping: Some(2),
                    lines: vec![line("schedule", None, None)],
                    kernel: true,
                },
                Location {
                    address: 0x401010,
                    mapping: Some(0),
                    lines: vec![
                        line("inner", Some("/src/a.c"), Some(4)),
                        line("outer", Some("/src/a.c"), Some(8)),
                    ],
                    kernel: false,
                },
                Location {
                    address: 0x7f00_0000_1000,
                    mapping: Some(1),
                    lines: vec![Line {
                        function: "foo::bar".into(),
                        system_name: Some("_ZN3foo3barEv".into()),
                        file: None,
                        line: None,
                    }],
                    kernel: false,
                },
                Location {
                    address: 0x7f00_0000_2000,
                    mapping: None,
                    lines: vec![line("[unknown] 0x7f0000002000", None, None)],
                    kernel: false,
                },
            ],
            mappings: vec![
                Mapping {
                    start: 0x400000,
                    limit: 0x480000,
                    offset: 0,
                    file: "/usr/bin/app".into(),
                    build_id: Some("abcdef".into()),
                    has_functions: true,
                    has_filenames: true,
                    has_line_numbers: true,
                    has_inline_frames: true,
                },
                Mapping {
                    start: 0x7f00_0000_0000,
                    limit: 0x7f00_0010_0000,
                    offset: 0x1000,
                    file: "/usr/lib/libfoo.so".into(),
                    build_id: None,
                    has_functions: true,
                    ..Default::default()
                },
                Mapping {
                    start: 0xffff_ffff_8100_0010,
                    limit: 0xffff_ffff_8100_0011,
                    offset: 0,
                    file: KERNEL_MAPPING_FILE.into(),
                    build_id: None,
                    has_functions: true,
                    ..Default::default()
                },
            ],
            comments: vec!["dropped events: 0".into(), "lost stacks: 3".into()],
        }
    }

    fn assert_same(a: &model::Profile, b: &model::Profile) {
        assert_eq!(a.kind, b.kind);
        assert_eq!(a.sample_types, b.sample_types);
        assert_eq!(a.default_sample_type, b.default_sample_type);
        assert_eq!(a.period_type, b.period_type);
        assert_eq!(a.period, b.period);
        assert_eq!(a.start, b.start);
        assert_eq!(a.duration, b.duration);
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.locations, b.locations);
        assert_eq!(a.mappings, b.mappings);
        assert_eq!(a.comments, b.comments);
    }

    #[test]
    fn round_trip() {
        let p = sample_profile();
        let bytes = encode(&p).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let back = decode(&bytes).unwrap();
        assert_same(&p, &back);
        let msg = decode_proto(&bytes).unwrap();
        assert_eq!(msg.string_table[0], "");
        assert_eq!(msg.string_table[msg.default_sample_type as usize], "offcpu");
        assert_eq!(msg.comment.len(), 2);
        // Functions are shared between locations and carry the mangled name.
        assert_eq!(msg.function.len(), 5);
        let foo = msg
            .function
            .iter()
            .find(|f| msg.string_table[f.name as usize] == "foo::bar")
            .unwrap();
        assert_eq!(msg.string_table[foo.system_name as usize], "_ZN3foo3barEv");
    }

    #[test]
    fn an_address_label_is_written_as_hex_text() {
        let mut p = sample_profile();
        p.samples[0].labels = vec![Label::Addr("lock".into(), 0x55d0_c0a0_40a0)];
        let back = decode(&encode(&p).unwrap()).unwrap();
        assert_eq!(
            back.samples[0].labels,
            [Label::Str("lock".into(), "0x55d0c0a040a0".into())]
        );
    }

    #[test]
    fn round_trip_mutex_kind_and_empty_profile() {
        let mut p = sample_profile();
        p.kind = ProfileKind::Mutex;
        p.sample_types = vec![
            ValueType::new("contentions", "count"),
            ValueType::new("delay", "nanoseconds"),
        ];
        p.default_sample_type = None;
        assert_eq!(
            decode(&encode(&p).unwrap()).unwrap().kind,
            ProfileKind::Block
        );
        assert_same(
            &p,
            &decode_as(&encode(&p).unwrap(), ProfileKind::Mutex).unwrap(),
        );

        p.samples.clear();
        let back = decode_as(&encode(&p).unwrap(), ProfileKind::Mutex).unwrap();
        assert_same(&p, &back);
    }

    #[test]
    fn validation_rejects_broken_profiles() {
        let mut p = sample_profile();
        p.samples[1].values.push(1);
        assert!(matches!(encode(&p), Err(PprofError::Invalid(m)) if m.contains("3 values")));

        let mut p = sample_profile();
        p.samples[0].locations.push(99);
        assert!(matches!(encode(&p), Err(PprofError::Invalid(m)) if m.contains("location 99")));

        let mut p = sample_profile();
        p.locations[0].mapping = Some(7);
        assert!(validate(&p).is_err());

        let mut p = sample_profile();
        p.sample_types.clear();
        p.samples.clear();
        assert!(validate(&p).is_err());

        let mut p = sample_profile();
        p.default_sample_type = Some("nope".into());
        assert!(validate(&p).is_err());
    }

    #[test]
    fn write_is_atomic_and_refuses_invalid() {
        let dir = std::env::temp_dir().join(format!("pprof-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cpu.pb.gz");
        let mut bad = sample_profile();
        bad.samples[0].values.clear();
        assert!(write(&bad, &path).is_err());
        assert!(!path.exists(), "invalid profile never written");
        write(&sample_profile(), &path).unwrap();
        let back = decode(&std::fs::read(&path).unwrap()).unwrap();
        assert_same(&sample_profile(), &back);
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        let err = write(&sample_profile(), &dir.join("missing/x.pb.gz")).unwrap_err();
        assert!(err.to_string().contains("writable"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        assert!(decode(b"\x1f\x8bnot really gzip").is_err());
        assert!(decode(&[0xff; 10]).is_err());
        // Dangling references in a well-formed message.
        let mut msg = to_proto(&sample_profile()).unwrap();
        msg.sample[0].location_id.push(1000);
        assert!(from_proto(&msg, ProfileKind::Cpu).is_err());
        let mut msg = to_proto(&sample_profile()).unwrap();
        msg.function[0].name = 10_000;
        assert!(from_proto(&msg, ProfileKind::Cpu).is_err());
    }
}
