//! Least privilege: the agent as a non-root user (65534) holding only the capabilities it
//! documents (`agent::system::NODE_CAPABILITIES`, what deploy/'s DaemonSet adds), run with
//! `setpriv`, against a root process: `dump`, `attach` and `serve` work; without one of them
//! the agent says which it misses, or what it could not do and why.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use stallscope_tests::serve_kit::{Serve, http_get};
use stallscope_tests::*;

/// `setpriv` to uid/gid 65534 with exactly `caps` (`CAP_BPF`...) as its ambient set, then the
/// agent.
fn as_nobody_with(caps: &[&str]) -> Command {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all{list}"))
        .arg(format!("--ambient-caps=-all{list}"))
        .arg(format!("--bounding-set=-all{list}"))
        .arg("--")
        .arg(agent_path());
    cmd
}

fn documented() -> Vec<&'static str> {
    agent::system::NODE_CAPABILITIES
        .iter()
        .map(|(c, _)| *c)
        .collect()
}

/// A directory the unprivileged agent can write its files in.
fn open_dir() -> TempDir {
    let d = TempDir::new("stallscope-nobody");
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

fn output(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().expect("running setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_documented_capabilities_are_enough_for_dump_attach_and_serve() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let caps = documented();

    // dump: every thread with its user stack (the sleeper's function by name).
    let mut dump = as_nobody_with(&caps);
    dump.args(["dump", "--pid", &w.pid_str()]);
    let (code, out, err) = output(dump);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("cannot read"), "{out}");
    assert!(out.contains("sleep_forever"), "{out}");

    // attach: the profiles and summary.json, symbolized.
    let dir = open_dir();
    let mut attach = as_nobody_with(&caps);
    attach
        .args(["attach", "--pid", &w.pid_str(), "--duration", "2s"])
        .args(["--profile", "cpu,offcpu", "-o"])
        .arg(dir.path().join("out"));
    let (code, out, err) = output(attach);
    assert_eq!(code, 0, "{err}\n{out}");
    let p = read_profile(dir.path().join("out/offcpu.pb.gz"));
    assert!(
        p.samples.iter().any(|s| stack_has(&p, s, "sleep_forever")),
        "no symbolized sleeper in the off-CPU profile:\n{out}"
    );

    // serve: metrics of the target and a profile over HTTP.
    let serve = Serve::start_with(as_nobody_with(&caps), &["--pid", &w.pid_str()], true);
    let t = Duration::from_secs(30);
    let m = http_get(serve.addr, "/metrics", None, t);
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains(&format!("pid=\"{}\"", w.pid())),
        "{}",
        m.body
    );
    let r = http_get(
        serve.addr,
        &format!("/debug/pprof/profile?pid={}&seconds=1", w.pid()),
        None,
        t,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.bytes.is_empty());
}

#[test]
fn without_one_capability_the_agent_names_what_is_missing() {
    require_root();
    let w = Workload::spawn("offcpu_mix", &[]);
    let caps = documented();
    let without =
        |drop: &str| -> Vec<&str> { caps.iter().copied().filter(|c| *c != drop).collect() };
    for missing in ["CAP_BPF", "CAP_PERFMON"] {
        let mut dump = as_nobody_with(&without(missing));
        dump.args(["dump", "--pid", &w.pid_str()]);
        let (code, _, err) = output(dump);
        assert_eq!(code, 1, "without {missing}: {err}");
        assert!(
            err.contains(&format!("missing: {missing}")),
            "without {missing}: {err}"
        );
    }
    for missing in ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"] {
        let mut dump = as_nobody_with(&without(missing));
        dump.args(["dump", "--pid", &w.pid_str()]);
        let (code, out, err) = output(dump);
        assert_eq!(code, 0, "without {missing}: {err}");
        assert!(
            out.contains("no user stacks")
                && out.contains("CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"),
            "without {missing} the dump should say why it has no stacks:\n{out}"
        );
    }
}
