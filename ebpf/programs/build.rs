use which::which;

/// Rebuild when `bpf-linker` changes (it is an undeclared build tool of this crate).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker not found on PATH: run `cargo xtask setup` first"),
    }
}
