//! Reads structure member offsets from the kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! aya-ebpf has no CO-RE field relocations for Rust programs, so the agent looks the offsets up
//! here and hands them to the programs as constants. Only what that needs is parsed: type
//! records (to skip them) and struct/union members.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no member {member} in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: String,
    /// `size_or_type`: the referenced type for typedef/const/volatile/restrict/type_tag.
    type_ref: u32,
    members: Vec<Member>,
}

/// The parsed type table: enough to find member offsets by name.
pub struct KernelBtf {
    /// Index = type id (id 0 is `void`).
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?;
        let name = |off: u32| -> String {
            let s = strings.get(off as usize..).unwrap_or(&[]);
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            String::from_utf8_lossy(&s[..end]).into_owned()
        };
        let mut types = vec![Type {
            kind: 0,
            name: String::new(),
            type_ref: 0,
            members: vec![],
        }];
        let mut pos = 0usize;
        while pos + 12 <= types_bytes.len() {
            let name_off = u32_at(types_bytes, pos)?;
            let info = u32_at(types_bytes, pos + 4)?;
            let type_ref = u32_at(types_bytes, pos + 8)?;
            pos += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kflag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                1 => 4,  // INT
                3 => 12, // ARRAY
                4 | 5 => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        let off = u32_at(types_bytes, m + 8)?;
                        members.push(Member {
                            name: name(u32_at(types_bytes, m)?),
                            type_id: u32_at(types_bytes, m + 4)?,
                            bit_offset: if kflag { off & 0xff_ffff } else { off },
                        });
                    }
                    vlen * 12
                }
                6 => vlen * 8,   // ENUM
                13 => vlen * 8,  // FUNC_PROTO
                14 => 4,         // VAR
                15 => vlen * 12, // DATASEC
                17 => 4,         // DECL_TAG
                19 => vlen * 12, // ENUM64
                0..=19 => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            pos += extra;
            types.push(Type {
                kind,
                type_ref,
                name: name(name_off),
                members,
            });
        }
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        for (id, t) in types.iter().enumerate() {
            if (t.kind == KIND_STRUCT || t.kind == KIND_UNION) && !t.name.is_empty() {
                by_name.entry(t.name.clone()).or_default().push(id as u32);
            }
        }
        Ok(Self { types, by_name })
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous struct/union members.
    pub fn member_offset(&self, r#struct: &str, member: &str) -> Result<u32, BtfError> {
        let ids = self
            .by_name
            .get(r#struct)
            .ok_or_else(|| BtfError::NoStruct(r#struct.into()))?;
        for &id in ids {
            if let Some(bits) = self.find(id, member, 0) {
                return Ok(bits / 8);
            }
        }
        Err(BtfError::NoMember {
            strukt: r#struct.into(),
            member: member.into(),
        })
    }

    /// Byte offset of a nested member in `struct name`: `["sched_info", "last_arrival"]` is
    /// the offset of `sched_info` plus that of `last_arrival` inside `sched_info`'s type. Each
    /// step looks into anonymous struct/union members like [`Self::member_offset`].
    pub fn member_path_offset(&self, r#struct: &str, path: &[&str]) -> Result<u32, BtfError> {
        let ids = self
            .by_name
            .get(r#struct)
            .ok_or_else(|| BtfError::NoStruct(r#struct.into()))?;
        'candidates: for &id in ids {
            let (mut ty, mut bits) = (id, 0);
            for member in path {
                match self.find_member(ty, member, bits) {
                    Some((b, type_id)) => (ty, bits) = (self.resolve(type_id), b),
                    None => continue 'candidates,
                }
            }
            return Ok(bits / 8);
        }
        Err(BtfError::NoMember {
            strukt: r#struct.into(),
            member: path.join("."),
        })
    }

    fn find(&self, id: u32, member: &str, base_bits: u32) -> Option<u32> {
        self.find_member(id, member, base_bits)
            .map(|(bits, _)| bits)
    }

    /// Bit offset and type id of `member` of type `id`, looking into anonymous members.
    fn find_member(&self, id: u32, member: &str, base_bits: u32) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            if m.name == member {
                return Some((base_bits + m.bit_offset, m.type_id));
            }
        }
        for m in t.members.iter().filter(|m| m.name.is_empty()) {
            let inner = self.resolve(m.type_id);
            if let Some(found) = self.find_member(inner, member, base_bits + m.bit_offset) {
                return Some(found);
            }
        }
        None
    }

    /// Follows typedef/const/volatile to the underlying struct or union id.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..16 {
            match self.types.get(id as usize) {
                // typedef, volatile, const, restrict, type_tag
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.type_ref,
                _ => return id,
            }
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: struct outer { int a; union { int pid; }; } with `pid` at byte 8.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0pid\0";
        let mut types = Vec::new();
        let push = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // [1] INT "int" size 4
        push(&mut types, 1);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        // [2] UNION anon, 1 member: pid (type 1) at 0
        push(&mut types, 0);
        push(&mut types, (5 << 24) | 1);
        push(&mut types, 4);
        push(&mut types, 13);
        push(&mut types, 1);
        push(&mut types, 0);
        // [3] STRUCT outer, 2 members: a at 0, anon union at 64 bits
        push(&mut types, 5);
        push(&mut types, (4 << 24) | 2);
        push(&mut types, 12);
        push(&mut types, 11);
        push(&mut types, 1);
        push(&mut types, 0);
        push(&mut types, 0);
        push(&mut types, 2);
        push(&mut types, 64);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1);
        out.push(0);
        push(&mut out, 24);
        push(&mut out, 0);
        push(&mut out, types.len() as u32);
        push(&mut out, types.len() as u32);
        push(&mut out, strings.len() as u32);
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = KernelBtf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "pid").unwrap(), 8);
        assert_eq!(btf.member_path_offset("outer", &["pid"]).unwrap(), 8);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("inner", "pid"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"not btf at all, not at all").is_err());
    }

    #[test]
    fn this_kernel_has_task_struct_pid() {
        // The machine's own BTF (present on every machine this project runs on; see FACTS).
        let btf = KernelBtf::from_sys_fs().expect("read /sys/kernel/btf/vmlinux");
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4, "pid and tgid are adjacent in task_struct");
        let se = btf.member_offset("task_struct", "se").unwrap();
        let sum = btf
            .member_path_offset("task_struct", &["se", "sum_exec_runtime"])
            .unwrap();
        assert_eq!(
            sum,
            se + btf
                .member_offset("sched_entity", "sum_exec_runtime")
                .unwrap()
        );
        assert_eq!(
            btf.member_path_offset("task_struct", &["pid"]).unwrap(),
            pid
        );
        assert!(
            btf.member_path_offset("task_struct", &["se", "nope"])
                .is_err()
        );
    }
}
