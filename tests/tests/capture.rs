//! Root tests of `agent capture --pid N -d D -o DIR [--archive F]`: a complete bundle whose
//! summary names the culprit of a known problem, and says nothing is wrong with an idle process.

use std::path::Path;

use stallscope_tests::*;

fn capture(w: &Workload, duration: &str, extra: &[&str]) -> AgentRun {
    let pid = w.pid_str();
    let mut args = vec!["capture", "--pid", pid.as_str(), "--duration", duration];
    args.extend_from_slice(extra);
    let run = run_agent(&args);
    run.assert_success();
    run
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file the manifest lists exists with the listed size; every profile opens in
/// `go tool pprof`; every SVG is well-formed XML with an <svg> root.
fn check_bundle(run: &AgentRun) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&run.file("manifest.json"))).expect("manifest.json is JSON");
    let files = manifest["files"].as_array().expect("files list");
    for f in files {
        let rel = f["path"].as_str().unwrap();
        let path = run.file(rel);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{rel} listed but missing: {e}"))
            .len();
        if rel != "manifest.json" {
            assert_eq!(len, f["bytes"].as_u64().unwrap(), "size of {rel}");
        }
    }
    let names: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    for kind in ["cpu", "offcpu", "block", "mutex"] {
        for ext in ["pb.gz", "folded", "svg"] {
            let name = format!("{kind}.{ext}");
            assert!(
                names.contains(&name.as_str()),
                "{name} missing from {names:?}"
            );
        }
        go_pprof_top(run.file(&format!("{kind}.pb.gz")));
        let svg = read(&run.file(&format!("{kind}.svg")));
        // inferno's SVGs carry a DOCTYPE, which the parser refuses unless told.
        let opts = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&svg, opts)
            .unwrap_or_else(|e| panic!("{kind}.svg is not well-formed XML: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
    }
    for name in [
        "summary.md",
        "threads-start.txt",
        "threads-start.json",
        "proc/status",
        "proc/limits",
        "threads_over_time.csv",
        "metrics.json",
        "summary.json",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    manifest
}

/// A lock convoy: summary.md leads with lock contention and names the slow critical section,
/// its file:line and the lock; the archive unpacks to the same files.
#[test]
fn lock_convoy_summary_names_the_slow_section() {
    require_root();
    let w = Workload::spawn("mutex_convoy", &[]);
    let archive_dir = TempDir::new("stallscope-archive");
    let archive = archive_dir.path().join("bundle.tar.gz");
    let run = capture(&w, "5s", &["--archive", archive.to_str().unwrap()]);
    check_bundle(&run);
    let summary = read(&run.file("summary.md"));
    let first = summary
        .lines()
        .find(|l| l.starts_with("## "))
        .expect("a finding heading");
    assert!(
        first.starts_with("## Most likely: Lock contention") && first.contains("slow_section"),
        "first finding: {first}\n{summary}"
    );
    assert!(summary.contains("big_lock"), "{summary}");
    assert!(
        summary.contains("mutex_convoy.c:"),
        "culprit file:line: {summary}"
    );
    assert!(run.stdout.contains("slow_section"), "{}", run.stdout);

    // The archive unpacks to the same files, byte for byte.
    let unpack = TempDir::new("stallscope-unpack");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpack.path())
        .status()
        .expect("tar");
    assert!(status.success());
    let top = unpack.path().join(run.out_dir.file_name().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_str(&read(&run.file("manifest.json"))).unwrap();
    let mut compared = 0;
    for f in manifest["files"].as_array().unwrap() {
        let rel = f["path"].as_str().unwrap();
        if rel == "manifest.json" {
            continue;
        }
        let a = std::fs::read(run.file(rel)).unwrap();
        let b =
            std::fs::read(top.join(rel)).unwrap_or_else(|e| panic!("{rel} not in archive: {e}"));
        assert!(a == b, "{rel} differs in the archive");
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} files compared");
}

/// An idle service: the summary says nothing is wrong instead of inventing a culprit.
#[test]
fn idle_process_is_reported_as_fine() {
    require_root();
    let w = Workload::spawn("idle_service", &[]);
    let run = capture(&w, "3s", &[]);
    check_bundle(&run);
    let summary = read(&run.file("summary.md"));
    assert!(summary.contains("## Nothing looks wrong"), "{summary}");
    assert!(!summary.contains("Most likely"), "{summary}");
}
