//! Hostile input (issue 17): tables of bad values for every command-line flag of every
//! subcommand and for every HTTP route and parameter of `agent serve`, each row with the exit
//! status (or HTTP status) it must get and a piece of the message that says why; then slow
//! clients (a half-sent request line, an idle keep-alive connection), more connections than
//! `--max-connections`, bodies and other methods. Nothing may panic: every row also checks
//! that the agent did not die of a signal, did not exit 101, and printed no "panicked".
//!
//! The command-line table is checked against `agent <sub> --help`: a flag added without rows
//! here fails the test.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use stallscope_tests::serve_kit::{Serve, die_with_parent, get_request, parse_reply, send};
use stallscope_tests::{TempDir, agent_path, require_root};

/// A PID above any possible pid_max (2^22): never a process.
const NO_PID: &str = "99999999";

// ---------------------------------------------------------------------------------------------
// Processes: killed on drop
// ---------------------------------------------------------------------------------------------

/// A child killed (SIGKILL) and reaped on drop unless it already exited.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Output of one agent run.
struct Run {
    status: ExitStatus,
    text: String,
}

/// Runs the agent with `args` in `cwd`; killed if it takes more than `limit`.
fn run_agent(args: &[OsString], cwd: &Path, limit: Duration) -> Run {
    let mut cmd = Command::new(agent_path());
    cmd.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut g = Guard(cmd.spawn().expect("starting the agent"));
    let mut out = g.0.stdout.take().unwrap();
    let mut err = g.0.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = g.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent {:?} still running after {limit:?}",
            shorten(&format!("{args:?}"))
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.join().unwrap()),
        String::from_utf8_lossy(&e.join().unwrap())
    );
    Run { status, text }
}

fn shorten(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

/// No panic, no signal: what every run must show whatever its input.
fn assert_no_crash(what: &str, status: ExitStatus, text: &str) {
    assert!(
        status.signal().is_none(),
        "{what}: killed by signal {:?}: {}",
        status.signal(),
        shorten(text)
    );
    assert_ne!(
        status.code(),
        Some(101),
        "{what}: panicked: {}",
        shorten(text)
    );
    assert!(
        !text.contains("panicked"),
        "{what}: panicked: {}",
        shorten(text)
    );
}

// ---------------------------------------------------------------------------------------------
// The command-line table
// ---------------------------------------------------------------------------------------------

/// Kinds of bad value tried on every flag.
#[derive(Clone, Copy, Debug)]
enum V {
    Empty,
    /// 10^30.
    Huge,
    /// 100 kB of digits.
    Big,
    Negative,
    /// Bytes that are not UTF-8.
    NonUtf8,
    Lit(&'static str),
}

impl V {
    fn bytes(self) -> Vec<u8> {
        match self {
            V::Empty => Vec::new(),
            V::Huge => format!("1{}", "0".repeat(30)).into_bytes(),
            V::Big => "9".repeat(100_000).into_bytes(),
            V::Negative => b"-1".to_vec(),
            V::NonUtf8 => vec![0xff, 0xfe, b'1'],
            V::Lit(s) => s.as_bytes().to_vec(),
        }
    }
}

/// One row: arguments, expected exit code, a substring of the output.
struct CliRow {
    args: Vec<OsString>,
    code: i32,
    needle: &'static str,
}

fn os(s: &str) -> OsString {
    OsString::from(s)
}

/// `base... --flag=VALUE` (the `=` form, so `-1` and the empty string are values).
fn flag_row(base: &[&str], flag: &str, v: V, code: i32, needle: &'static str) -> CliRow {
    let mut args: Vec<OsString> = base.iter().map(|s| os(s)).collect();
    let mut b = format!("{flag}=").into_bytes();
    b.extend(v.bytes());
    args.push(OsString::from_vec(b));
    CliRow { args, code, needle }
}

const NOT_A_PID: &str = "is not a process id";
const NO_PROCESS: &str = "no process with PID 99999999";
const NON_UTF8: &str = "invalid UTF-8";

/// The rows of a `--pid` flag (`base` lacks it).
fn pid_rows(rows: &mut Vec<CliRow>, base: &[&str]) {
    for (v, code, needle) in [
        (V::Empty, 2, NOT_A_PID),
        (V::Huge, 2, NOT_A_PID),
        (V::Big, 2, NOT_A_PID),
        (V::Negative, 2, "pass a positive PID"),
        (V::NonUtf8, 2, NON_UTF8),
        (V::Lit("0"), 2, "0 is not a process id"),
        (V::Lit("4294967296"), 2, "PIDs are at most"),
        (V::Lit("12abc"), 2, NOT_A_PID),
        (V::Lit("0x10"), 2, NOT_A_PID),
        (V::Lit(NO_PID), 1, NO_PROCESS),
    ] {
        rows.push(flag_row(base, "--pid", v, code, needle));
    }
    // The short form with a separate value.
    let mut args: Vec<OsString> = base.iter().map(|s| os(s)).collect();
    args.extend([os("-p"), os("-5")]);
    rows.push(CliRow {
        args,
        code: 2,
        needle: "unexpected argument '-5'",
    });
}

/// The group flags of `sub` (`attach`, `dump`, `capture`): `--children`, `--cgroup`, `--container`,
/// `--pod`.
fn group_rows(rows: &mut Vec<CliRow>, sub: &'static str) {
    let with_pid = [sub, "--pid", NO_PID];
    switch_row(rows, &with_pid, "--children");
    rows.push(flag_row(
        &[sub],
        "--children",
        V::Lit(""),
        2,
        "unexpected value",
    ));
    let args = vec![os(sub), os("--children")];
    rows.push(CliRow {
        args,
        code: 2,
        needle: "required arguments were not provided",
    });
    for (v, code, needle) in [
        (V::Empty, 2, "is not a cgroup path"),
        (V::Huge, 2, "is not a cgroup path"),
        (V::Big, 2, "is not a cgroup path"),
        (V::Negative, 2, "is not a cgroup path"),
        (V::NonUtf8, 2, NON_UTF8),
        (
            V::Lit("/sys/fs/cgroup/unified/no-such-cgroup"),
            2,
            "no cgroup directory",
        ),
        (
            V::Lit("/no-such-cgroup"),
            1,
            "no process is in cgroup /no-such-cgroup now",
        ),
    ] {
        rows.push(flag_row(&[sub], "--cgroup", v, code, needle));
    }
    for (v, code, needle) in [
        (V::Empty, 2, "is not a container id"),
        (
            V::Huge,
            1,
            "no process is in container 1000000000000000000000000000000",
        ),
        (V::Big, 2, "is not a container id"),
        (V::Negative, 2, "is not a container id"),
        (V::NonUtf8, 2, NON_UTF8),
        (V::Lit("abc"), 2, "a prefix of at least 4"),
        (V::Lit("zzzz"), 2, "is not a container id"),
    ] {
        rows.push(flag_row(&[sub], "--container", v, code, needle));
    }
    for (v, code, needle) in [
        (V::Empty, 2, "is not a pod"),
        (V::Huge, 2, "is not a pod"),
        (V::Big, 2, "is not a pod"),
        (V::Negative, 2, "is not a pod"),
        (V::NonUtf8, 2, NON_UTF8),
        (V::Lit("a/b/c"), 2, "NAMESPACE/NAME"),
        (
            V::Lit("00000000-0000-0000-0000-000000000000"),
            1,
            "no process is in pod 00000000-0000-0000-0000-000000000000 now",
        ),
        (V::Lit("nowhere/none"), 1, "/var/log/pods"),
    ] {
        rows.push(flag_row(&[sub], "--pod", v, code, needle));
    }
    // One target only.
    let args = vec![os(sub), os("--pid=1"), os("--pod=a/b")];
    rows.push(CliRow {
        args,
        code: 2,
        needle: "cannot be used with",
    });
}

/// Durations (`--duration`, `--interval`...): `ok` is what an accepted value leads to.
fn duration_rows(rows: &mut Vec<CliRow>, base: &[&str], flag: &str) {
    for (v, needle) in [
        (V::Empty, "empty duration"),
        (V::Huge, "too long"),
        (V::Big, "invalid duration"),
        (V::Negative, "invalid duration"),
        (V::NonUtf8, NON_UTF8),
        (V::Lit("1e30"), "too long"),
        (V::Lit("400d"), "too long"),
        (V::Lit("100000000000000000000000d"), "invalid duration"),
        (V::Lit("NaN"), "invalid duration"),
        (V::Lit("inf"), "invalid duration"),
        (V::Lit("0"), "more than zero"),
        (V::Lit("soon"), "use e.g. 10s"),
    ] {
        rows.push(flag_row(base, flag, v, 2, needle));
    }
}

/// Whole numbers parsed by clap (`range`: the message of an out-of-range value).
fn number_rows(rows: &mut Vec<CliRow>, base: &[&str], flag: &str, zero: Option<&'static str>) {
    for (v, needle) in [
        (V::Empty, "cannot parse integer from empty string"),
        (V::Huge, "number too large"),
        (V::Big, "number too large"),
        (V::NonUtf8, NON_UTF8),
        (V::Lit("12.5"), "invalid digit"),
        (V::Lit("1e3"), "invalid digit"),
        (V::Lit("ten"), "invalid digit"),
    ] {
        rows.push(flag_row(base, flag, v, 2, needle));
    }
    // clap says "-1 is not in 1..=N" or "invalid digit" depending on the integer type.
    rows.push(flag_row(base, flag, V::Negative, 2, "invalid value '-1'"));
    if let Some(needle) = zero {
        rows.push(flag_row(base, flag, V::Lit("0"), 2, needle));
    }
}

/// Nanosecond counts (`--block-rate`...), at most 4 s.
fn nanos_rows(rows: &mut Vec<CliRow>, base: &[&str], flag: &str) {
    for (v, needle) in [
        (V::Empty, "empty time"),
        (V::Huge, "too long"),
        (V::Big, "too long"),
        (V::Negative, "is negative"),
        (V::NonUtf8, NON_UTF8),
        // 2^64 ns is 18446744073.7 s: must not wrap around into 290 ms.
        (V::Lit("18446744074s"), "too long"),
        (V::Lit("5s"), "too long"),
        (V::Lit("fast"), "invalid time"),
        (V::Lit("1e3"), "invalid time"),
    ] {
        rows.push(flag_row(base, flag, v, 2, needle));
    }
}

fn rates_rows(rows: &mut Vec<CliRow>, base: &[&str]) {
    number_rows(rows, base, "--frequency", Some("0 is not in 1..=10000"));
    rows.push(flag_row(
        base,
        "--frequency",
        V::Lit("10001"),
        2,
        "is not in 1..=10000",
    ));
    for flag in ["--block-rate", "--offcpu-rate", "--mutex-rate"] {
        nanos_rows(rows, base, flag);
    }
    number_rows(
        rows,
        base,
        "--mutex-fraction",
        Some("0 is not in 1..=1000000"),
    );
    number_rows(
        rows,
        base,
        "--map-entries",
        Some("0 is not in 64..=1048576"),
    );
    for v in ["63", "1048577"] {
        rows.push(flag_row(
            base,
            "--map-entries",
            V::Lit(v),
            2,
            "is not in 64..=1048576",
        ));
    }
    number_rows(rows, base, "--go-probe-limit", None);
    rows.push(flag_row(
        base,
        "--go-probe-limit",
        V::Lit("100000001"),
        2,
        "is not in 0..=100000000",
    ));
}

/// A path flag (`-o`, `--archive`): anything but empty parses; the run then fails on the PID.
fn path_rows(rows: &mut Vec<CliRow>, base: &[&str], flag: &str) {
    rows.push(flag_row(base, flag, V::Empty, 2, "a value is required"));
    for v in [V::Huge, V::Big, V::Negative, V::NonUtf8] {
        rows.push(flag_row(base, flag, v, 1, NO_PROCESS));
    }
}

/// A switch given a value.
fn switch_row(rows: &mut Vec<CliRow>, base: &[&str], flag: &str) {
    rows.push(flag_row(base, flag, V::Lit("yes"), 2, "unexpected value"));
}

fn cli_rows(tmp: &Path, live_pid: u32) -> Vec<CliRow> {
    let mut rows = Vec::new();
    let live = live_pid.to_string();
    let long_dir = "x".repeat(100_000);
    let plain = |args: &[&str], code: i32, needle: &'static str| CliRow {
        args: args.iter().map(|s| os(s)).collect(),
        code,
        needle,
    };

    // The binary itself.
    rows.push(plain(&[], 2, "Usage:"));
    rows.push(plain(&["--help"], 0, "Commands:"));
    rows.push(plain(&["--version"], 0, "agent "));
    rows.push(plain(&["bogus"], 2, "unrecognized subcommand"));
    rows.push(plain(&[""], 2, "unrecognized subcommand"));
    rows.push(CliRow {
        args: vec![OsString::from_vec(vec![0xff, 0xfe])],
        code: 2,
        needle: "unrecognized subcommand",
    });
    rows.push(plain(&["--verbose=3", "dump"], 2, "unexpected value"));
    let many_v = format!("-{}", "v".repeat(300));
    rows.push(plain(&[&many_v, "dump", "--pid", NO_PID], 1, NO_PROCESS));
    for sub in ["attach", "dump", "capture", "serve"] {
        rows.push(plain(&[sub, "--help"], 0, "Usage:"));
        rows.push(plain(
            &[sub, "--bogus=1"],
            2,
            "unexpected argument '--bogus'",
        ));
        rows.push(CliRow {
            args: vec![os(sub), OsString::from_vec(b"--pid\xff=1".to_vec())],
            code: 2,
            needle: "unexpected argument",
        });
    }

    // attach
    let attach = ["attach", "--pid", NO_PID];
    rows.push(plain(&["attach"], 2, "--pid"));
    pid_rows(&mut rows, &["attach"]);
    group_rows(&mut rows, "attach");
    duration_rows(&mut rows, &attach, "--duration");
    for (v, needle) in [
        // clap's ValueEnum: the value, and every profile there is.
        (V::Empty, "a value is required for '--profile <PROFILE>'"),
        (V::Huge, "invalid value '1000"),
        (V::Big, "invalid value '9999"),
        (V::Negative, "invalid value '-1'"),
        (V::NonUtf8, "invalid value"),
        (
            V::Lit("cpu,,offcpu"),
            "a value is required for '--profile <PROFILE>'",
        ),
        (
            V::Lit("cpu,gpu"),
            "possible values: cpu, offcpu, block, mutex",
        ),
        (
            V::Lit("../../etc/passwd"),
            "invalid value '../../etc/passwd'",
        ),
    ] {
        rows.push(flag_row(&attach, "--profile", v, 2, needle));
    }
    rates_rows(&mut rows, &attach);
    nanos_rows(&mut rows, &attach, "--offcpu-min");
    path_rows(&mut rows, &attach, "--output");
    for (v, needle) in [
        (V::Empty, "empty condition"),
        (V::Huge, "unknown term"),
        (V::Big, "unknown term"),
        (V::Negative, "unknown term"),
        (V::NonUtf8, NON_UTF8),
        (V::Lit("for=1e30"), "too long"),
        (V::Lit("state=futex,every=1e300"), "too long"),
        (V::Lit("every=1e400"), "is not a duration"),
        (
            V::Lit("threads>=99999999999999999999"),
            "is not a number of threads",
        ),
        (V::Lit("threads>=-1"), "is not a number of threads"),
        (V::Lit("state="), "unknown state"),
        (V::Lit("=,=,="), "unknown term"),
    ] {
        rows.push(flag_row(&attach, "--dump-when", v, 2, needle));
    }
    for (v, needle) in [
        (V::Empty, "unknown signal"),
        (V::Huge, "unknown signal"),
        (V::Big, "unknown signal"),
        (V::Negative, "out of range"),
        (V::NonUtf8, NON_UTF8),
        (V::Lit("0"), "out of range"),
        (V::Lit("65"), "out of range"),
        (V::Lit("KILL"), "cannot be caught"),
        (V::Lit("9"), "cannot be caught"),
        (V::Lit("SIGSTOP"), "cannot be caught"),
    ] {
        rows.push(flag_row(&attach, "--signal-target", v, 2, needle));
    }
    number_rows(&mut rows, &attach, "--top", None);
    switch_row(&mut rows, &attach, "--no-tid-label");
    switch_row(&mut rows, &attach, "--folded-thread-root");
    // A live target with an output directory that cannot exist: refused before attaching.
    rows.push(CliRow {
        args: ["attach", "--pid", &live, "-d", "1s", "-o", &long_dir]
            .iter()
            .map(|s| os(s))
            .collect(),
        code: 1,
        needle: "File name too long",
    });

    // capture
    let capture = ["capture", "--pid", NO_PID];
    rows.push(plain(&["capture"], 2, "--pid"));
    pid_rows(&mut rows, &["capture"]);
    group_rows(&mut rows, "capture");
    duration_rows(&mut rows, &capture, "--duration");
    path_rows(&mut rows, &capture, "--output");
    path_rows(&mut rows, &capture, "--archive");
    rates_rows(&mut rows, &capture);
    switch_row(&mut rows, &capture, "--no-tid-label");
    switch_row(&mut rows, &capture, "--folded-thread-root");
    rows.push(CliRow {
        args: ["capture", "--pid", &live, "-d", "1s", "-o", &long_dir]
            .iter()
            .map(|s| os(s))
            .collect(),
        code: 1,
        needle: "File name too long",
    });

    // dump
    let dump = ["dump", "--pid", NO_PID];
    pid_rows(&mut rows, &["dump"]);
    group_rows(&mut rows, "dump");
    for (v, needle) in [
        (V::Empty, "a value is required"),
        (V::Huge, "possible values: text, json"),
        (V::Big, "possible values: text, json"),
        (V::Negative, "possible values: text, json"),
        // A value enum reads the bytes lossily: still its list of values.
        (V::NonUtf8, "possible values: text, json"),
        (V::Lit("xml"), "possible values: text, json"),
    ] {
        rows.push(flag_row(&dump, "--format", v, 2, needle));
    }
    number_rows(&mut rows, &dump, "--debug", Some("0 is not in 1..=2"));
    rows.push(flag_row(
        &dump,
        "--debug",
        V::Lit("3"),
        2,
        "is not in 1..=2",
    ));
    path_rows(&mut rows, &dump, "--output");
    // --threads (a Go program's OS threads instead of its goroutines): a switch; on a
    // process that is not there, the same error as without it.
    switch_row(&mut rows, &dump, "--threads");
    rows.push(plain(
        &["dump", "--pid", NO_PID, "--threads"],
        1,
        NO_PROCESS,
    ));
    rows.push(CliRow {
        args: ["dump", "--pid", &live, "-o", &long_dir]
            .iter()
            .map(|s| os(s))
            .collect(),
        code: 1,
        needle: "File name too long",
    });

    // serve: a missing --pid target makes any accepted value end at once.
    let serve = ["serve", "--listen", "127.0.0.1:0", "--pid", NO_PID];
    for (v, code, needle) in [
        (V::Empty, 2, "invalid socket address"),
        (V::Huge, 2, "invalid socket address"),
        (V::Big, 2, "invalid socket address"),
        (V::Negative, 2, "invalid socket address"),
        (V::NonUtf8, 2, NON_UTF8),
        (V::Lit("127.0.0.1:99999"), 2, "invalid socket address"),
        (V::Lit("localhost:80"), 2, "invalid socket address"),
        (V::Lit("1.2.3.4:80"), 2, "refusing to listen on 1.2.3.4:80"),
        (V::Lit("127.0.0.1:0"), 1, NO_PROCESS),
    ] {
        rows.push(flag_row(
            &["serve", "--pid", NO_PID],
            "--listen",
            v,
            code,
            needle,
        ));
    }
    pid_rows(&mut rows, &["serve", "--listen", "127.0.0.1:0"]);
    switch_row(&mut rows, &serve, "--all");
    number_rows(
        &mut rows,
        &serve,
        "--max-targets",
        Some("0 is not in 1..=1024"),
    );
    rows.push(flag_row(
        &serve,
        "--max-targets",
        V::Lit("1025"),
        2,
        "is not in 1..=1024",
    ));
    duration_rows(&mut rows, &serve, "--interval");
    rows.push(flag_row(
        &serve,
        "--interval",
        V::Lit("1ms"),
        2,
        "too short",
    ));
    number_rows(
        &mut rows,
        &serve,
        "--max-seconds",
        Some("0 is not in 1..=3600"),
    );
    number_rows(
        &mut rows,
        &serve,
        "--max-concurrent-profiles",
        Some("0 is not in 1..=256"),
    );
    number_rows(
        &mut rows,
        &serve,
        "--max-processes-per-container",
        Some("0 is not in 1..=1024"),
    );
    number_rows(
        &mut rows,
        &serve,
        "--max-connections",
        Some("0 is not in 1..=4096"),
    );
    rows.push(flag_row(
        &serve,
        "--max-connections",
        V::Lit("4097"),
        2,
        "is not in 1..=4096",
    ));
    for flag in ["--header-timeout", "--request-timeout"] {
        for (v, needle) in [
            (V::Empty, "empty duration"),
            (V::Huge, "at most 10m"),
            (V::Big, "invalid duration"),
            (V::Negative, "invalid duration"),
            (V::NonUtf8, NON_UTF8),
            (V::Lit("1ms"), "too short"),
            (V::Lit("11m"), "at most 10m"),
            (V::Lit("0"), "more than zero"),
            (V::Lit("x"), "invalid duration"),
        ] {
            rows.push(flag_row(&serve, flag, v, 2, needle));
        }
    }
    rates_rows(&mut rows, &serve);
    switch_row(&mut rows, &serve, "--bpf-stats");
    // --auth-token-file: paths, then contents.
    let token = |name: &str, content: &[u8], mode: u32| {
        let p = tmp.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        p.to_str().unwrap().to_string()
    };
    let readable = token("readable", b"s3cret\n", 0o644);
    let empty = token("empty", b"\n", 0o600);
    let spaced = token("spaced", b"two words\n", 0o600);
    let huge = token("huge", &vec![b'a'; 1 << 20], 0o600);
    let accented = token("accented", "t\u{f6}k\u{e9}n\n".as_bytes(), 0o600);
    let binary = token("binary", &[0xff, 0xfe, 0x00, b'\n'], 0o600);
    let fifo = tmp.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain syscall on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap().to_string();
    for (v, needle) in [
        (V::Empty, "a value is required"),
        (V::Huge, "cannot read the auth token file"),
        (V::Big, "File name too long"),
        (V::Negative, "cannot read the auth token file"),
        (V::NonUtf8, "cannot read the auth token file"),
        (V::Lit("/dev/zero"), "is not a regular file"),
        (V::Lit("/tmp"), "is not a regular file"),
        (V::Lit(leak(&fifo)), "is not a regular file"),
        (V::Lit(leak(&readable)), "chmod 600"),
        (V::Lit(leak(&empty)), "must hold one token"),
        (V::Lit(leak(&spaced)), "must hold one token"),
        (V::Lit(leak(&huge)), "at most 4096 bytes"),
        (V::Lit(leak(&accented)), "visible ASCII"),
        (V::Lit(leak(&binary)), "visible ASCII"),
    ] {
        rows.push(flag_row(&serve, "--auth-token-file", v, 2, needle));
    }
    rows
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// The long flags `agent <sub> --help` lists (`--help` and `--version` aside).
fn help_flags(sub: &str) -> BTreeSet<String> {
    let out = Command::new(agent_path())
        .args([sub, "--help"])
        .output()
        .expect("agent --help");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("--")))
        .map(|w| w.trim_end_matches(',').trim_end_matches("...").to_string())
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

#[test]
fn every_flag_with_bad_values() {
    require_root();
    let t0 = Instant::now();
    let tmp = TempDir::new("stallscope-hostile-cli");
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    die_with_parent(&mut sleep);
    let live = Guard(sleep.spawn().expect("sleep"));
    let rows = cli_rows(tmp.path(), live.0.id());

    // Every flag of every subcommand has rows.
    for sub in ["attach", "dump", "capture", "serve"] {
        let covered: BTreeSet<String> = rows
            .iter()
            .filter(|r| r.args.first().is_some_and(|a| a == sub))
            .flat_map(|r| r.args.iter().skip(1))
            .filter_map(|a| {
                let b = a.as_encoded_bytes();
                let flag = b.split(|&c| c == b'=').next()?;
                std::str::from_utf8(flag).ok().map(str::to_string)
            })
            .filter(|f| f.starts_with("--"))
            .collect();
        let missing: Vec<String> = help_flags(sub)
            .into_iter()
            .filter(|f| f != "--verbose" && !covered.contains(f))
            .collect();
        assert!(
            missing.is_empty(),
            "flags of `agent {sub}` without hostile rows: {missing:?}"
        );
    }

    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let what = format!("row {i} {}", shorten(&format!("{:?}", row.args)));
        let r = run_agent(&row.args, tmp.path(), Duration::from_secs(20));
        assert_no_crash(&what, r.status, &r.text);
        if r.status.code() != Some(row.code) || !r.text.contains(row.needle) {
            failures.push(format!(
                "{what}: exit {:?} (want {}), output lacks {:?}?\n    {}",
                r.status.code(),
                row.code,
                row.needle,
                shorten(&r.text.replace('\n', " "))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} command-line rows in {:.1} s",
        rows.len(),
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// How long a raw request waits for the server to answer and close.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// SIGTERM: the agent must exit 0 within 10 s and have printed no panic.
fn stop_cleanly(serve: Serve) {
    let (status, text) = serve.stop();
    assert_no_crash("agent serve", status, &text);
    assert_eq!(status.code(), Some(0), "{text}");
}

struct HttpRow {
    what: String,
    request: Vec<u8>,
    status: u16,
    needle: &'static str,
}

fn get_row(path: impl Into<String>, status: u16, needle: &'static str) -> HttpRow {
    let path = path.into();
    HttpRow {
        what: format!("GET {}", shorten(&path)),
        request: get_request(&path, b""),
        status,
        needle,
    }
}

fn raw_row(what: &str, request: Vec<u8>, status: u16, needle: &'static str) -> HttpRow {
    HttpRow {
        what: what.to_string(),
        request,
        status,
        needle,
    }
}

/// Bad values of every parameter, as raw query text.
const BAD_PID: &[(&str, &str)] = &[
    ("", "pid must be a positive process id"),
    ("-1", "pid must be a positive process id"),
    ("0", "pid must be a positive process id"),
    (
        "1000000000000000000000000000000",
        "pid must be a positive process id",
    ),
    ("abc", "pid must be a positive process id"),
    ("1.5", "pid must be a positive process id"),
    ("0x10", "pid must be a positive process id"),
    ("%20", "pid must be a positive process id"),
    ("%FF", "not UTF-8"),
    ("%C3%28", "not UTF-8"),
    ("%", "malformed percent-encoding"),
    ("%G1", "malformed percent-encoding"),
    ("99999999", "no process with PID 99999999"),
];
const BAD_SECONDS: &[(&str, &str)] = &[
    ("", "seconds must be"),
    ("-1", "seconds must be"),
    ("0", "seconds must be"),
    ("1000000000000000000000000000000", "seconds must be"),
    ("1.5", "seconds must be"),
    ("1e3", "seconds must be"),
    ("%FF", "not UTF-8"),
];
const BAD_DEBUG: &[(&str, &str)] = &[
    ("", "debug must be 0, 1 or 2"),
    ("-1", "debug must be 0, 1 or 2"),
    ("3", "debug must be 0, 1 or 2"),
    ("1000000000000000000000000000000", "debug must be 0, 1 or 2"),
    ("%FF", "not UTF-8"),
];

fn http_rows(kthread: Option<u32>) -> Vec<HttpRow> {
    let mut rows = vec![
        get_row("/", 200, "stallscope agent"),
        get_row("/metrics", 200, "stallscope_profile_rejected_total"),
        get_row("/debug/pprof/", 200, "/debug/pprof/profile?pid=N"),
        get_row("/debug/pprof", 200, "/debug/pprof/profile?pid=N"),
        get_row("/nope", 404, "no endpoint \"/nope\""),
        get_row("/metrics/x", 404, "no endpoint"),
        get_row("/debug/pprof/heap?pid=1", 404, "unknown profile \"heap\""),
        get_row("/debug/pprof/goroutinez", 404, "unknown profile"),
        get_row("/debug/pprof/PROFILE?pid=1", 404, "unknown profile"),
        get_row("/debug/pprof/..%2F..%2Fetc%2Fpasswd", 404, "unknown profile \"../../etc/passwd\""),
        get_row("/debug/pprof/../../etc/passwd", 404, "no endpoint"),
        get_row("/debug/pprof/%2e%2e", 404, "unknown profile \"..\""),
        get_row("/debug/pprof/profile%00", 404, "unknown profile \"profile\\0\""),
        get_row("/debug/pprof/%FF", 404, "not UTF-8"),
        get_row(format!("/debug/pprof/{}", "a".repeat(10_000)), 404, "bytes)"),
        get_row("//debug/pprof/profile", 404, "no endpoint"),
        get_row("/debug/pprof/profile", 400, "missing pid"),
        get_row("/debug/pprof/profile?", 400, "missing pid"),
        get_row("/debug/pprof/profile?&&&", 400, "missing pid"),
        get_row("/debug/pprof/profile?seconds=1", 400, "missing pid"),
        get_row("/debug/pprof/profile?pid=1&pid=2", 400, "given twice"),
        get_row("/debug/pprof/profile?pid=1&foo=1", 400, "unknown parameter \"foo\""),
        get_row("/debug/pprof/profile?pid=1&%FF=1", 400, "not UTF-8"),
        get_row(
            format!("/debug/pprof/profile?pid=1&{}=1", "k".repeat(2000)),
            400,
            "bytes)",
        ),
        get_row(
            format!("/debug/pprof/profile?pid=1&x={}", "9".repeat(5000)),
            414,
            "at most 4096",
        ),
        get_row(
            format!(
                "/debug/pprof/profile?{}",
                (0..100).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join("&")
            ),
            400,
            "too many parameters",
        ),
        // hyper's own answers: a head above 64 KiB, a URI it cannot parse.
        get_row(
            format!("/debug/pprof/profile?pid={}", "9".repeat(100_000)),
            414,
            "",
        ),
        raw_row(
            "GET with raw non-UTF-8 bytes in the path",
            b"GET /debug/pprof/\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "",
        ),
        raw_row(
            "a request line of garbage",
            b"\x01\x02\x03 / HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "",
        ),
        raw_row(
            "200 headers",
            {
                let h: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
                get_request("/", h.as_bytes())
            },
            431,
            "",
        ),
        raw_row(
            "an HTTP/2 preface on HTTP/1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
            0,
            "",
        ),
        raw_row(
            "a header value with non-UTF-8 bytes (ignored)",
            get_request("/", b"X-Junk: \xff\xfe\r\n"),
            200,
            "stallscope agent",
        ),
        // Methods and bodies.
        raw_row(
            "POST /metrics",
            b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
            405,
            "method \"POST\" is not served",
        ),
        raw_row(
            "PUT /debug/pprof/profile",
            b"PUT /debug/pprof/profile?pid=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                .to_vec(),
            405,
            "use GET",
        ),
        raw_row(
            "DELETE /",
            b"DELETE / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "read-only",
        ),
        raw_row(
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "is not served",
        ),
        raw_row(
            "a made-up method",
            b"BREW /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            405,
            "method \"BREW\"",
        ),
        raw_row(
            "HEAD /metrics",
            b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
            200,
            "",
        ),
        raw_row(
            "HEAD on a profile (would take a window)",
            b"HEAD /debug/pprof/profile?pid=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                .to_vec(),
            405,
            "",
        ),
        raw_row(
            "GET with a body",
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
                .to_vec(),
            413,
            "requests take no body",
        ),
        raw_row(
            "GET with a chunked body",
            b"GET /debug/pprof/profile?pid=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            413,
            "requests take no body",
        ),
        raw_row(
            "GET announcing a huge body",
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n"
                .to_vec(),
            413,
            "requests take no body",
        ),
        raw_row(
            "a negative Content-Length",
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "",
        ),
        raw_row(
            "GET with Content-Length: 0 (accepted)",
            b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            200,
            "stallscope agent",
        ),
    ];
    // Every route with every parameter's bad values.
    for name in [
        "profile",
        "offcpu",
        "block",
        "mutex",
        "threads",
        "goroutine",
    ] {
        for (v, needle) in BAD_PID {
            rows.push(get_row(format!("/debug/pprof/{name}?pid={v}"), 400, needle));
        }
        for (v, needle) in BAD_SECONDS {
            rows.push(get_row(
                format!("/debug/pprof/{name}?pid={NO_PID}&seconds={v}"),
                400,
                needle,
            ));
        }
        if name == "threads" || name == "goroutine" {
            for (v, needle) in BAD_DEBUG {
                rows.push(get_row(
                    format!("/debug/pprof/{name}?pid={NO_PID}&debug={v}"),
                    400,
                    needle,
                ));
            }
        }
        if let Some(k) = kthread {
            rows.push(get_row(
                format!("/debug/pprof/{name}?pid={k}&seconds=1"),
                400,
                "is a kernel thread",
            ));
        }
    }
    rows
}

fn first_kernel_thread() -> Option<u32> {
    (2..200u32).find(|p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .is_ok_and(|s| s.lines().any(|l| l == "Kthread:\t1"))
    })
}

fn rejected(metrics: &str, reason: &str) -> f64 {
    let key = format!("stallscope_profile_rejected_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in the metrics"))
}

#[test]
fn every_route_and_parameter_slow_clients_and_connection_limits() {
    require_root();
    let t0 = Instant::now();
    let mut sleep = Command::new("sleep");
    sleep.arg("60");
    die_with_parent(&mut sleep);
    let target = Guard(sleep.spawn().expect("sleep"));
    let mut serve = Serve::start(
        &[
            "--header-timeout",
            "1s",
            "--request-timeout",
            "500ms",
            "--max-connections",
            "4",
            "--max-seconds",
            "1",
        ],
        false,
    );

    // A time limit: a profile asked for while the programs are still being verified waits
    // for them, and gets 503 after seconds + --request-timeout (1.5 s).
    let r = serve.get(&format!(
        "/debug/pprof/profile?pid={}&seconds=1",
        target.0.id()
    ));
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("did not finish within 1s 500ms"),
        "{}",
        r.body
    );
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after"),
        "{}",
        r.headers
    );
    // That window goes on in the background (its collector busy: 429) until it ends.
    serve.wait_line("profiles ready", Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve
        .get(&format!("/debug/pprof/block?pid={NO_PID}"))
        .status
        == 429
    {
        assert!(Instant::now() < deadline, "the window never ended");
        std::thread::sleep(Duration::from_millis(100));
    }

    let rows = http_rows(first_kernel_thread());
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let r = send(serve.addr, &row.request, REPLY_WAIT);
        // A head too large is answered (414, 431) before it is read whole: the unread rest
        // can reset the connection before the client reads the answer.
        let status_ok =
            r.status == row.status || (matches!(row.status, 414 | 431) && r.status == 0);
        let ok = status_ok && r.body.contains(row.needle);
        // Echoed input is cut short: no answer repeats a huge value.
        let short = r.body.len() < 2000 || row.status == 200;
        if !ok || !short {
            failures.push(format!(
                "row {i} {}: {} (want {}), body lacks {:?}? {} bytes: {}",
                row.what,
                r.status,
                row.status,
                row.needle,
                r.body.len(),
                shorten(&r.body)
            ));
        }
        if row.status == 405 {
            assert!(
                r.headers.to_ascii_lowercase().contains("allow: get"),
                "{}",
                r.headers
            );
        }
        assert!(serve.alive(), "row {i} {}: the agent died", row.what);
    }
    assert!(
        failures.is_empty(),
        "{} of {} HTTP rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    eprintln!("{} HTTP rows", rows.len());

    // A slow client: half a request line, then nothing. Closed at the header timeout (1 s).
    let mut s = TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HT").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = t.elapsed();
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "closed after {took:?}, the header timeout is 1 s"
    );
    // Trickling one byte at a time does not extend it.
    let mut s = TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let t = Instant::now();
    let mut closed = false;
    for b in b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    {
        if s.write_all(&[*b]).is_err() || matches!(s.read(&mut [0u8; 16]), Ok(0)) {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        closed,
        "a client trickling its headers for {:?} was not cut off",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // An idle keep-alive connection: answered, then closed after the same timeout.
    let mut s = TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = parse_reply(&buf);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // More connections than --max-connections (4): the fifth is answered 503 at once.
    std::thread::sleep(Duration::from_millis(300));
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(serve.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let r = send(serve.addr, &get_request("/metrics", b""), REPLY_WAIT);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("at most 4 at once (--max-connections)"),
        "{}",
        r.body
    );
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // The four held ones were accepted, not refused.
    for mut h in held {
        h.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut b = [0u8; 64];
        assert!(
            !matches!(h.read(&mut b), Ok(n) if n > 0),
            "a connection within the limit got an answer before sending anything"
        );
    }
    // Once they are gone the server answers again.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        // Still refused or not, any answer (or none) is retried until the deadline.
        let r = send(serve.addr, &get_request("/metrics", b""), REPLY_WAIT);
        if r.status == 200 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "still refused: {r:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Nothing silent: every kind of refusal was counted.
    for reason in [
        "bad_request",
        "not_found",
        "method",
        "body",
        "timeout",
        "connections",
        "header_timeout",
        "malformed",
    ] {
        assert!(rejected(&metrics, reason) >= 1.0, "{reason} not counted");
    }
    stop_cleanly(serve);
    eprintln!("HTTP: {:.1} s", t0.elapsed().as_secs_f64());
}

/// With a token: every request without the right one is 401, whatever it sends.
#[test]
fn bearer_token_rows() {
    require_root();
    let dir = TempDir::new("stallscope-hostile-auth");
    let f = dir.path().join("token");
    std::fs::write(&f, "t0ken-for-hostile-tests\n").unwrap();
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let serve = Serve::start(&["--auth-token-file", f.to_str().unwrap()], false);
    let long = format!("Authorization: Bearer {}\r\n", "t".repeat(30_000));
    let rows: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "no header",
            Vec::new(),
            401,
            "missing or wrong bearer token",
        ),
        (
            "empty",
            b"Authorization: \r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "scheme only",
            b"Authorization: Bearer\r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "wrong",
            b"Authorization: Bearer nope\r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "a prefix of it",
            b"Authorization: Bearer t0ken\r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "it plus more",
            b"Authorization: Bearer t0ken-for-hostile-testsX\r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "Basic",
            b"Authorization: Basic dDBrZW4=\r\n".to_vec(),
            401,
            "bearer token",
        ),
        ("30 kB", long.into_bytes(), 401, "bearer token"),
        (
            "non-UTF-8",
            b"Authorization: Bearer \xff\xfe\r\n".to_vec(),
            401,
            "bearer token",
        ),
        (
            "twice, the first wrong",
            b"Authorization: Bearer nope\r\nAuthorization: Bearer t0ken-for-hostile-tests\r\n"
                .to_vec(),
            401,
            "bearer token",
        ),
        (
            "right",
            b"Authorization: Bearer t0ken-for-hostile-tests\r\n".to_vec(),
            200,
            "stallscope_targets",
        ),
        (
            "right, scheme in lower case",
            b"Authorization: bearer t0ken-for-hostile-tests\r\n".to_vec(),
            200,
            "stallscope_targets",
        ),
    ];
    for (what, header, status, needle) in &rows {
        let r = send(serve.addr, &get_request("/metrics", header), REPLY_WAIT);
        assert_eq!(r.status, *status, "{what}: {r:?}");
        assert!(r.body.contains(needle), "{what}: {}", shorten(&r.body));
        if *status == 401 {
            assert!(
                r.headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{what}: {}",
                r.headers
            );
        }
    }
    let r = send(
        serve.addr,
        &get_request(
            "/metrics",
            b"Authorization: Bearer t0ken-for-hostile-tests\r\n",
        ),
        REPLY_WAIT,
    );
    assert!(rejected(&r.body, "unauthorized") >= 10.0, "{}", r.body);
    stop_cleanly(serve);
}
