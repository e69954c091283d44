//! Clients of `agent serve` for the root tests: the agent serving on loopback, a minimal HTTP
//! client (no client crate), a real Prometheus scraping it, and readers of the exposition text.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{TempDir, agent_path};

/// Has the kernel SIGKILL the child started by `cmd` when the thread that started it dies, so a
/// crashed test leaves nothing running.
pub fn die_with_parent(cmd: &mut Command) {
    stallscope_testkit::spawn::die_with_parent(cmd, libc::SIGKILL);
}

/// A running `agent serve`, stopped (SIGTERM, then SIGKILL) on drop unless it already exited;
/// [`Serve::stop`] stops it and says how it ended.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stderr, line by line (also echoed to the test's stderr).
    pub stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Serve {
    /// Starts `agent serve --listen 127.0.0.1:0 <args>` and waits for its address; with
    /// `wait_profiles`, also until its BPF programs are verified (profiles can be taken).
    pub fn start(args: &[&str], wait_profiles: bool) -> Serve {
        Serve::start_with(Command::new(agent_path()), args, wait_profiles)
    }

    /// [`Serve::start`] with `agent` as the command that runs the agent (e.g. `setpriv ...
    /// agent`, to run it with fewer privileges).
    pub fn start_with(agent: Command, args: &[&str], wait_profiles: bool) -> Serve {
        let mut cmd = agent;
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("starting agent serve");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("piped");
        let l2 = Arc::clone(&lines);
        // Lines that are not UTF-8 are kept lossily: the pipe is read to its end whatever the
        // agent prints, so it never blocks on a full pipe.
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(pipe.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                eprintln!("[agent] {line}");
                l2.lock().unwrap().push(line);
                buf.clear();
            }
        });
        let mut s = Serve {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            stderr: lines,
            reader: Some(reader),
        };
        let line = s.wait_line("serving on http://", Duration::from_secs(30));
        let rest = &line[line.find("http://").unwrap() + 7..];
        s.addr = rest[..rest.find('/').unwrap()].parse().unwrap();
        if wait_profiles {
            // Verifying the programs takes seconds (more on a loaded machine).
            s.wait_line("profiles ready", Duration::from_secs(180));
        }
        s
    }

    /// Waits for a line of its stderr containing `needle`; panics if it exits first or
    /// `timeout` passes.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "agent serve exited ({status}) before printing {needle:?}: {:?}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent serve did not print {needle:?} within {timeout:?}: {:?}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn get(&self, path: &str) -> Reply {
        http_get(self.addr, path, None, Duration::from_secs(120))
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }

    /// Sends SIGTERM and waits up to 10 s for it to exit (panics if it does not, after a
    /// SIGKILL). Returns its exit status and all of its stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.terminate();
        let Some(status) = self.wait_exit(Duration::from_secs(10)) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "agent serve ignored SIGTERM for 10 s: {:?}",
                self.stderr.lock().unwrap()
            );
        };
        // It exited, so its stderr is at end of file: let the reader take the last lines.
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        let text = self.stderr.lock().unwrap().join("\n");
        (status, text)
    }

    fn terminate(&self) {
        // SAFETY: plain syscall to our own child, not yet reaped (callers checked).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        // Already reaped (stopped, or exited on its own): its pid may belong to another process.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.terminate();
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub use stallscope_testkit::http::{Reply, dechunk, parse_reply};

/// The bytes of `GET <path> HTTP/1.1` with `Host: test`, `extra_headers` (each line ending in
/// CRLF) and `Connection: close`.
pub fn get_request(path: &str, extra_headers: &[u8]) -> Vec<u8> {
    stallscope_testkit::http::get_request("test", path, extra_headers)
}

/// Sends raw bytes and parses whatever came back: a reply with status 0 if the server closed
/// (or `timeout` passed) without answering.
pub fn send(addr: SocketAddr, request: &[u8], timeout: Duration) -> Reply {
    let (raw, _) = stallscope_testkit::http::exchange(addr, request, timeout)
        .unwrap_or_else(|e| panic!("{e:#}"));
    parse_reply(&raw)
}

/// A plain HTTP/1.1 GET (loopback only), so the tests depend on no HTTP client crate. Panics
/// unless the server answers in full within `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, bearer: Option<&str>, timeout: Duration) -> Reply {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stallscope_testkit::http::get(addr, path, auth.as_bytes(), timeout)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on loopback scraping the agent every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(target: SocketAddr, bearer: Option<&str>) -> Prometheus {
        let dir = TempDir::new("stallscope-prom");
        let auth = match bearer {
            Some(t) => {
                let f = dir.path().join("token");
                std::fs::write(&f, t).unwrap();
                format!(
                    "    authorization:\n      type: Bearer\n      credentials_file: {}\n",
                    f.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: stallscope\n    scrape_interval: 1s\n    scrape_timeout: 1s\n{auth}    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::free_tcp_port())
            .parse()
            .unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("prometheus.log")).unwrap(),
            ));
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .expect("starting prometheus (Debian's `prometheus` package: run `cargo xtask setup`)");
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(addr).is_ok()
                && http_get(addr, "/-/ready", None, Duration::from_secs(5)).status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 60 s: {}",
                std::fs::read_to_string(p._dir.path().join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The Prometheus server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An instant query; panics on a parse or evaluation error. Returns the result vector.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let r = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(q)),
            None,
            Duration::from_secs(20),
        );
        let v: serde_json::Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("query {q:?}: bad JSON ({e}): {}", r.body));
        assert_eq!(
            v["status"], "success",
            "query {q:?} failed ({}): {}",
            r.status, r.body
        );
        match &v["data"]["result"] {
            serde_json::Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        }
    }

    /// Waits until `q` returns something.
    pub fn wait_for(&self, q: &str, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(q);
            if !r.is_empty() {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus query {q:?} returned nothing within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Families declared in a Prometheus text exposition (`# TYPE name type`).
pub fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// The value of the first series of `name` whose labels include every `labels` pair.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
