//! Everything the BPF unwinder needs from the target, prepared in user space:
//! 1. [`maps`]: the target's executable mappings, cached with an open fd per file so that stacks
//!    of processes that exited still symbolize;
//! 2. [`cfi`]: an ELF file's `.eh_frame` compiled into the compact row table the BPF code searches;
//! 3. [`tables`]: one table per file, shared between processes, and each process's sorted mapping
//!    table, ready for [`crate::kernel`] to upload.

pub mod cfi;
pub mod maps;
pub mod tables;
