#![no_std]
// The programs live in the `stallscope` binary (src/main.rs); this empty library lets the agent
// declare a build-dependency on this crate so cargo rebuilds it when the BPF code changes.
