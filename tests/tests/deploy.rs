//! deploy/'s Kubernetes manifests: valid against Kubernetes' own schemas (`kubernetes-validate
//! --strict`, which bundles them: no cluster), and what they promise: the node's pids, no
//! privileged mode, exactly the capabilities the agent documents, the probes, the token from
//! a Secret, read-only host mounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use stallscope_tests::*;

/// Where `cargo xtask setup` installed the Python tools (`pip install --target`).
fn python_tools() -> PathBuf {
    let dir = std::env::var_os("STALLSCOPE_PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/python"));
    assert!(
        dir.join("kubernetes_validate").is_dir(),
        "kubernetes-validate is not installed in {}: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

fn python(args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .env("PYTHONPATH", python_tools())
        .args(args)
        .output()
        .expect("running python3")
}

fn validate(path: &Path) -> (bool, String) {
    let out = python(&[
        "-m",
        "kubernetes_validate",
        "--strict",
        path.to_str().unwrap(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("deploy"))
        .expect("deploy/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    v.sort();
    v
}

#[test]
fn manifests_are_valid_kubernetes_strictly() {
    let files = manifests();
    assert!(!files.is_empty(), "no manifests in deploy/");
    for f in &files {
        let (ok, text) = validate(f);
        assert!(ok, "{}:\n{text}", f.display());
        assert!(text.contains("passed"), "{text}");
    }
    // The check can fail: a field Kubernetes does not know is refused in strict mode.
    let tmp = TempDir::new("stallscope-deploy");
    let bad = tmp.path().join("bad.yaml");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&bad, text.replacen("hostPID: true", "hostPid: true", 1)).unwrap();
    let (ok, out) = validate(&bad);
    assert!(!ok, "a misspelt field passed:\n{out}");
}

#[test]
fn the_daemonset_runs_with_the_documented_capabilities_and_nothing_more() {
    let path = workspace_root().join("deploy/stallscope.yaml");
    let out = python(&[
        "-c",
        "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let docs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ds = docs
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| format!("CAP_{}", v.as_str().unwrap()))
        .collect();
    let documented: Vec<String> = agent::system::NODE_CAPABILITIES
        .iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(
        added, documented,
        "the DaemonSet's capabilities vs the agent's list"
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"serve") && args.contains(&"--all"),
        "{args:?}"
    );
    let token_arg = args
        .iter()
        .find_map(|a| a.strip_prefix("--auth-token-file="))
        .expect("a token file");
    // The token is a Secret's file, readable by its owner only.
    let vols = pod["volumes"].as_array().unwrap();
    let mounts = c["volumeMounts"].as_array().unwrap();
    let token_mount = mounts
        .iter()
        .find(|m| token_arg.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the token file's mount");
    let token_vol = vols
        .iter()
        .find(|v| v["name"] == token_mount["name"])
        .unwrap();
    assert!(token_vol["secret"]["secretName"].is_string(), "{token_vol}");
    assert_eq!(token_vol["secret"]["defaultMode"], 0o400);
    // Every host path is mounted read-only.
    for v in vols.iter().filter(|v| v["hostPath"].is_object()) {
        let m = mounts.iter().find(|m| m["name"] == v["name"]).unwrap();
        assert_eq!(m["readOnly"], true, "{m}");
    }
}
