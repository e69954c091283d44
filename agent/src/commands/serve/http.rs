//! HTTP routes of `agent serve` (axum): `/metrics`, `/debug/pprof/...`, bearer-token auth,
//! and the checks every request passes first ([`guard`]): GET (or HEAD) only, no body, a
//! time limit. Connection-level limits (how many, header timeout) are in [`super::server`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::{
    Router,
    extract::{Path, RawQuery, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::model::ProfileKind;
use crate::options::shown;
use crate::targets::{self, Selector};

use super::{Shared, profiler::ProfileError};

/// Default `seconds` of a profile request, as Go's `net/http/pprof`.
pub const DEFAULT_SECONDS: u64 = 30;

/// Longest query string a profile endpoint reads (it takes three short parameters).
pub const MAX_QUERY_BYTES: usize = 4096;

/// Most parameters in one query.
pub const MAX_PARAMS: usize = 16;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/pprof", get(index))
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/{name}", get(pprof))
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), auth))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

/// Why a request is answered before any route sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    /// `reason` label of stallscope_profile_rejected_total.
    pub reason: &'static str,
    pub message: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

/// Profile endpoints whose request takes a window of `seconds` (their time limit is set by
/// [`pprof`]).
fn window_route(path: &str) -> bool {
    matches!(
        path.strip_prefix("/debug/pprof/"),
        Some("profile" | "offcpu" | "block" | "mutex")
    )
}

/// Every route is a GET without a body: anything else is refused with the reason. HEAD is
/// served on the cheap pages only: on a profile or dump it would take a window (or a dump)
/// to answer nothing.
pub fn check_request(method: &Method, path: &str, headers: &HeaderMap) -> Result<(), Refusal> {
    let heavy = path.starts_with("/debug/pprof/") && path != "/debug/pprof/";
    if *method != Method::GET && (*method != Method::HEAD || heavy) {
        let allowed = if heavy { "GET" } else { "GET, HEAD" };
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "method",
            message: format!(
                "method {} is not served: every endpoint of this agent is read-only; use {allowed}",
                shown(method.as_str())
            ),
            allow: Some(allowed),
        });
    }
    let length = headers.get(header::CONTENT_LENGTH);
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || length.is_some_and(|v| v.to_str().ok().map(str::trim) != Some("0"));
    if has_body {
        return Err(Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            reason: "body",
            message: "requests take no body here: every endpoint is a GET with its parameters in \
                      the query string (e.g. /debug/pprof/profile?pid=N&seconds=S)"
                .into(),
            allow: None,
        });
    }
    Ok(())
}

/// Refuses what [`check_request`] refuses, and answers 503 when a request outlives its time
/// limit (`--request-timeout`; profile windows set their own, see [`pprof`]).
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Err(r) = check_request(req.method(), req.uri().path(), req.headers()) {
        s.health.rejected.with_label_values(&[r.reason]).inc();
        let mut resp = text(r.status, r.message);
        if let Some(allow) = r.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        // The client may still be sending the body: do not keep the connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    if window_route(req.uri().path()) {
        return next.run(req).await;
    }
    let limit = s.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => timed_out(&s, limit, "--request-timeout"),
    }
}

fn timed_out(s: &Shared, limit: Duration, what: &str) -> Response {
    s.health.rejected.with_label_values(&["timeout"]).inc();
    let loading = s
        .health
        .profile_windows
        .with_label_values(&["loading"])
        .get();
    let hint = if loading > 0 {
        "; the BPF programs were still being verified (see stallscope_profile_collectors), retry"
    } else {
        "; the agent may be overloaded (see /metrics), retry later or raise --request-timeout"
    };
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the request did not finish within {} ({what}){hint}",
            humantime::format_duration(limit)
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

async fn not_found(State(s): State<Arc<Shared>>, uri: axum::http::Uri) -> Response {
    s.health.rejected.with_label_values(&["not_found"]).inc();
    text(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint {}; this agent serves /metrics and /debug/pprof/ (see /)",
            shown(uri.path())
        ),
    )
}

fn text(code: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Compares in time independent of where the strings differ (only a length difference
/// returns early, and the token's length is no secret worth keeping).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, every request needs `Authorization: Bearer <token>`.
/// Paths answered without the bearer token: the kubelet's probes carry none, and they tell
/// nothing about any process.
const PROBE_PATHS: [&str; 2] = ["/healthz", "/readyz"];

async fn auth(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(token) = s
        .token
        .as_ref()
        .filter(|_| !PROBE_PATHS.contains(&req.uri().path()))
    {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            s.health.rejected.with_label_values(&["unauthorized"]).inc();
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token>` with the token of --auth-token-file",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"stallscope\""),
            );
            return r;
        }
    }
    next.run(req).await
}

async fn root() -> Response {
    text(
        StatusCode::OK,
        "stallscope agent: /metrics (Prometheus), /debug/pprof/ (profiles of any process)",
    )
}

/// Liveness: the agent answers HTTP.
async fn healthz() -> Response {
    text(StatusCode::OK, "ok")
}

/// Readiness: at least one profile collector is loaded (its programs verified), so a profile
/// request can open a window; 503 saying why not (still loading, or every one failed).
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let n = |state: &str| s.health.profile_windows.with_label_values(&[state]).get();
    let (ready, loading, failed) = (n("ready"), n("loading"), n("failed"));
    if ready > 0 {
        text(
            StatusCode::OK,
            format!("ready: {ready} profile collectors loaded"),
        )
    } else if loading > 0 {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {loading} profile collectors still loading (verifying the BPF programs)"
            ),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no profile collector could load ({failed} failed; the log says why)"
            ),
        )
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let s2 = Arc::clone(&s);
    let body = tokio::task::spawn_blocking(move || super::metrics_text(&s2))
        .await
        .unwrap_or_default();
    s.health
        .requests
        .with_label_values(&["metrics", "200"])
        .inc();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn index(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::from(
        "stallscope /debug/pprof/ — Go-style profiles of any process or group\n\n\
         profiles (seconds defaults to 30, capped by --max-seconds):\n  \
         /debug/pprof/profile?pid=N&seconds=S   CPU (samples/count, cpu/nanoseconds)\n  \
         /debug/pprof/offcpu?pid=N&seconds=S    off-CPU time by wait class\n  \
         /debug/pprof/block?pid=N&seconds=S     time blocked on futexes (Go block profile)\n  \
         /debug/pprof/mutex?pid=N&seconds=S     lock delay charged to the holder (Go mutex profile)\n  \
         /debug/pprof/threads?pid=N&debug=1|2   thread dump (1: grouped, 2: every thread)\n  \
         /debug/pprof/goroutine?pid=N           a Go program's goroutine profile (pprof)\n  \
         /debug/pprof/goroutine?pid=N&debug=1|2 a Go program's goroutines, in Go's text (else threads)\n\n\
         in place of pid=N: pid=N&children=1 (and its descendants), container=ID,\n  \
         pod=UID or pod=NAMESPACE/NAME, cgroup=PATH; samples carry pid and comm labels\n\n\
         e.g. go tool pprof http://HOST/debug/pprof/block?pid=N&seconds=10\n\n\
         targets (continuous metrics on /metrics):\n",
    );
    out = out.replace("HOST", &s.listen.to_string());
    {
        let t = s.targets.lock().unwrap_or_else(|e| e.into_inner());
        if t.procs.is_empty() {
            out.push_str("  (none: start with --pid N or --all)\n");
        }
        for p in t.procs.values() {
            out.push_str(&format!(
                "  pid {:>7}  {:<16} {} threads\n",
                p.pid,
                p.comm,
                p.thread_count()
            ));
        }
    }
    text(StatusCode::OK, out)
}

/// Parsed query of a profile request.
#[derive(Debug, PartialEq)]
pub struct ProfileQuery {
    /// The process (`pid=N`, with `children=1` its descendants too) or group (`container=`,
    /// `pod=`, `cgroup=`).
    pub target: Selector,
    pub seconds: u64,
    /// `seconds` asked for, when it was above the cap.
    pub capped_from: Option<u64>,
    pub debug: u8,
}

/// Validates `pid`, `seconds` and `debug`, with messages that say what is wrong.
pub fn parse_query(q: &HashMap<String, String>, max_seconds: u64) -> Result<ProfileQuery, String> {
    let target = parse_target(q)?;
    let asked = match q.get("seconds") {
        None => DEFAULT_SECONDS,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| {
                format!(
                    "seconds must be a whole number of seconds above 0 and at most \
                     {max_seconds} (--max-seconds), not {}",
                    shown(s)
                )
            })?
        }
        Some(s) => {
            return Err(format!(
                "seconds must be a whole number of seconds above 0, not {}",
                shown(s)
            ));
        }
    };
    let debug = match q.get("debug").map(String::as_str) {
        None | Some("0") => 0,
        Some("1") => 1,
        Some("2") => 2,
        Some(d) => return Err(format!("debug must be 0, 1 or 2, not {}", shown(d))),
    };
    let mut keys: Vec<&String> = q.keys().collect();
    keys.sort();
    for k in keys {
        if !matches!(
            k.as_str(),
            "pid" | "children" | "container" | "pod" | "cgroup" | "seconds" | "debug" | "gc"
        ) {
            return Err(format!(
                "unknown parameter {}; known: pid, children, container, pod, cgroup, seconds, debug",
                shown(k)
            ));
        }
    }
    Ok(ProfileQuery {
        target,
        seconds: asked.min(max_seconds),
        capped_from: (asked > max_seconds).then_some(asked),
        debug,
    })
}

/// The target of a request: exactly one of `pid` (with `children=1`: and its descendants),
/// `container`, `pod` and `cgroup`.
fn parse_target(q: &HashMap<String, String>) -> Result<Selector, String> {
    let named: Vec<&str> = ["pid", "container", "pod", "cgroup"]
        .into_iter()
        .filter(|k| q.contains_key(*k))
        .collect();
    let children = match q.get("children").map(String::as_str) {
        None | Some("0") => false,
        Some("1") => true,
        Some(c) => return Err(format!("children must be 0 or 1, not {}", shown(c))),
    };
    if children && named != ["pid"] {
        return Err("children=1 goes with pid=N (the process whose descendants to add)".into());
    }
    let value = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    match named.as_slice() {
        [] => Err(
            "missing pid: add ?pid=N (the process to profile; children=1 adds its \
                   descendants), or name a group: container=ID, pod=UID or pod=NAMESPACE/NAME, \
                   cgroup=PATH"
                .into(),
        ),
        ["pid"] => {
            let p = value("pid");
            let pid =
                p.parse::<u32>().ok().filter(|&p| p > 0).ok_or_else(|| {
                    format!("pid must be a positive process id, not {}", shown(p))
                })?;
            Ok(if children {
                Selector::Children(pid)
            } else {
                Selector::Pid(pid)
            })
        }
        ["container"] => targets::parse_container(value("container"))
            .map(Selector::Container)
            .map_err(|_| {
                format!(
                    "container must be a container id (hex digits, a prefix of at least 4), \
                     not {}",
                    shown(value("container"))
                )
            }),
        ["pod"] => targets::parse_pod(value("pod"))
            .map(Selector::Pod)
            .map_err(|e| {
                if value("pod").len() > 80 {
                    format!(
                        "pod must be a UID or NAMESPACE/NAME, not {}",
                        shown(value("pod"))
                    )
                } else {
                    e
                }
            }),
        ["cgroup"] => targets::cgroup_selector(value("cgroup")),
        more => Err(format!("name one target, not {}", more.join(" and "))),
    }
}

/// Decodes one `%XX`/`+` escaped part of a query string; refuses a malformed escape and
/// bytes that are not UTF-8, rather than guessing.
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let Some(h) = hex else {
                    return Err(format!(
                        "malformed percent-encoding in {}: % must be followed by two hex digits",
                        shown(s)
                    ));
                };
                let v = (h[0] as char).to_digit(16).unwrap_or(0) * 16
                    + (h[1] as char).to_digit(16).unwrap_or(0);
                out.push(v as u8);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        format!(
            "{} is not UTF-8 text once decoded (e.g. %FF); parameters are plain numbers such as pid=1234",
            shown(s)
        )
    })
}

/// Splits and decodes a raw query string (`a=1&b=2`): bounded in size and count, every
/// parameter at most once.
pub fn decode_query(raw: &str) -> Result<HashMap<String, String>, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    if raw.len() > MAX_QUERY_BYTES {
        return Err((
            StatusCode::URI_TOO_LONG,
            format!(
                "the query string is {} bytes; at most {MAX_QUERY_BYTES} (the parameters are pid, seconds and debug)",
                raw.len()
            ),
        ));
    }
    let mut out = HashMap::new();
    for (n, part) in raw.split('&').filter(|p| !p.is_empty()).enumerate() {
        if n >= MAX_PARAMS {
            return Err(bad(format!(
                "too many parameters ({} or more); the parameters are pid, seconds and debug",
                MAX_PARAMS + 1
            )));
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k).map_err(bad)?;
        let v = percent_decode(v).map_err(bad)?;
        if out.contains_key(&k) {
            return Err(bad(format!(
                "parameter {} given twice; pass it once",
                shown(&k)
            )));
        }
        out.insert(k, v);
    }
    Ok(out)
}

async fn pprof(
    State(s): State<Arc<Shared>>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    _headers: HeaderMap,
) -> Response {
    let name = match name {
        Ok(Path(n)) => n,
        Err(_) => {
            s.health.rejected.with_label_values(&["not_found"]).inc();
            return text(
                StatusCode::NOT_FOUND,
                "unknown profile (its name is not UTF-8 text once decoded); available: profile, offcpu, block, mutex, threads, goroutine (see /debug/pprof/)",
            );
        }
    };
    let kind = match name.as_str() {
        "profile" => Some(ProfileKind::Cpu),
        "offcpu" => Some(ProfileKind::Offcpu),
        "block" => Some(ProfileKind::Block),
        "mutex" => Some(ProfileKind::Mutex),
        "threads" | "goroutine" => None,
        _ => {
            s.health.rejected.with_label_values(&["not_found"]).inc();
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown profile {}; available: profile, offcpu, block, mutex, threads, goroutine (see /debug/pprof/)",
                    shown(&name)
                ),
            );
        }
    };
    let handler = kind.map_or("threads", super::profiler::kind_name);
    let parsed = decode_query(raw.as_deref().unwrap_or(""))
        .and_then(|q| parse_query(&q, s.max_seconds).map_err(|m| (StatusCode::BAD_REQUEST, m)));
    let resp = match parsed {
        Err((code, m)) => {
            s.health.rejected.with_label_values(&["bad_request"]).inc();
            text(code, m)
        }
        Ok(q) => match kind {
            // Without debug, as Go serves it: the goroutine profile in pprof.
            None if name == "goroutine" && q.debug == 0 => {
                match s.profiler.goroutine_profile(q.target).await {
                    Ok(bytes) => pprof_response(bytes),
                    Err(e) => error_response(&s, e),
                }
            }
            // The text (debug=1: grouped; 2, or none for the threads: every one).
            None => match s
                .profiler
                .dump(
                    q.target,
                    if q.debug == 0 { 2 } else { q.debug },
                    name == "goroutine",
                )
                .await
            {
                Ok(body) => text(StatusCode::OK, body),
                Err(e) => error_response(&s, e),
            },
            Some(kind) => {
                // The window, then symbolizing: `seconds` plus the usual request time.
                let limit = Duration::from_secs(q.seconds) + s.request_timeout;
                match tokio::time::timeout(limit, profile(&s, kind, q)).await {
                    Ok(r) => r,
                    Err(_) => timed_out(&s, limit, "seconds + --request-timeout"),
                }
            }
        },
    };
    s.health
        .requests
        .with_label_values(&[handler, resp.status().as_str()])
        .inc();
    resp
}

async fn profile(s: &Arc<Shared>, kind: ProfileKind, q: ProfileQuery) -> Response {
    let mut comments = Vec::new();
    if let Some(asked) = q.capped_from {
        comments.push(format!(
            "seconds={asked} capped to {} (--max-seconds)",
            q.seconds
        ));
    }
    // The window runs in its own task: a client that goes away does not cut it short with
    // probes left attached.
    let s2 = Arc::clone(s);
    let task = tokio::spawn(async move {
        s2.profiler
            .profile(kind, q.target, Duration::from_secs(q.seconds), comments)
            .await
    });
    match task.await {
        Ok(Ok(bytes)) => pprof_response(bytes),
        Ok(Err(e)) => error_response(s, e),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile task failed: {e}"),
        ),
    }
}

/// A gzipped pprof profile, as Go's net/http/pprof sends one.
fn pprof_response(bytes: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"profile\"",
            ),
        ],
        bytes,
    )
        .into_response()
}

fn error_response(s: &Shared, e: ProfileError) -> Response {
    match e {
        ProfileError::Busy { why, retry_after } => {
            s.health.rejected.with_label_values(&["busy"]).inc();
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, why);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            r
        }
        ProfileError::BadRequest(m) => {
            s.health.rejected.with_label_values(&["bad_request"]).inc();
            text(StatusCode::BAD_REQUEST, m)
        }
        ProfileError::Internal(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_validation() {
        let ok = parse_query(&q(&[("pid", "42"), ("seconds", "5")]), 60).unwrap();
        assert_eq!(
            (&ok.target, ok.seconds, ok.capped_from, ok.debug),
            (&Selector::Pid(42), 5, None, 0)
        );
        let target = |pairs: &[(&str, &str)]| parse_query(&q(pairs), 60).map(|p| p.target);
        assert_eq!(
            target(&[("pid", "42"), ("children", "1")]),
            Ok(Selector::Children(42))
        );
        assert_eq!(
            target(&[("pid", "42"), ("children", "0")]),
            Ok(Selector::Pid(42))
        );
        assert_eq!(
            target(&[("container", "0123456789ab")]),
            Ok(Selector::Container("0123456789ab".into()))
        );
        assert_eq!(
            target(&[("pod", "default/web")]),
            Ok(Selector::Pod(targets::PodRef::Name {
                namespace: "default".into(),
                name: "web".into()
            }))
        );
        assert!(matches!(
            target(&[("cgroup", "/system.slice/x.service")]),
            Ok(Selector::Cgroup(_)) | Err(_)
        ));
        let capped = parse_query(&q(&[("pid", "42"), ("seconds", "600")]), 60).unwrap();
        assert_eq!((capped.seconds, capped.capped_from), (60, Some(600)));
        assert_eq!(parse_query(&q(&[("pid", "1")]), 60).unwrap().seconds, 30);
        assert_eq!(parse_query(&q(&[("pid", "1")]), 10).unwrap().seconds, 10);
        for bad in [
            q(&[]),
            q(&[("pid", "abc")]),
            q(&[("pid", "0")]),
            q(&[("pid", "-3")]),
            q(&[("pid", "1"), ("seconds", "0")]),
            q(&[("pid", "1"), ("seconds", "1.5")]),
            q(&[("pid", "1"), ("debug", "3")]),
            q(&[("pid", "1"), ("pdi", "3")]),
        ] {
            assert!(parse_query(&bad, 60).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_query(&q(&[("pid", "1"), ("debug", "1")]), 60)
                .unwrap()
                .debug,
            1
        );
        // No debug, or 0: the goroutine route's pprof (the threads' route takes it as 2).
        for d in [None, Some("0")] {
            let mut pairs = vec![("pid", "1")];
            pairs.extend(d.map(|d| ("debug", d)));
            assert_eq!(parse_query(&q(&pairs), 60).unwrap().debug, 0, "{d:?}");
        }
    }

    /// Rows: raw query, expected status, a substring of the message.
    #[test]
    fn raw_query_rows() {
        let long = format!("pid=1&x={}", "a".repeat(MAX_QUERY_BYTES));
        let many = (0..40)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        let huge = "9".repeat(40);
        let rows: &[(&str, u16, &str)] = &[
            ("", 400, "missing pid"),
            ("pid=", 400, "pid must be"),
            ("pid", 400, "pid must be"),
            ("pid=-1", 400, "pid must be"),
            ("pid=0", 400, "pid must be"),
            ("pid=4294967296", 400, "pid must be"),
            (&format!("pid={huge}"), 400, "pid must be"),
            ("pid=1e3", 400, "pid must be"),
            ("pid=%FF", 400, "not UTF-8"),
            ("pid=%C3%28", 400, "not UTF-8"),
            ("pid=%", 400, "malformed percent-encoding"),
            ("pid=%4", 400, "malformed percent-encoding"),
            ("pid=%+1", 400, "malformed percent-encoding"),
            ("pid=%zz", 400, "malformed percent-encoding"),
            ("%FF=1", 400, "not UTF-8"),
            ("pid=1&pid=2", 400, "given twice"),
            ("pid=1&seconds=", 400, "seconds must be"),
            ("pid=1&seconds=-5", 400, "seconds must be"),
            ("pid=1&seconds=0", 400, "seconds must be"),
            ("pid=1&seconds=1.5", 400, "seconds must be"),
            ("pid=1&seconds=NaN", 400, "seconds must be"),
            (&format!("pid=1&seconds={huge}"), 400, "at most 60"),
            ("pid=1&debug=", 400, "debug must be"),
            ("pid=1&debug=256", 400, "debug must be"),
            ("pid=1&PID=1", 400, "unknown parameter"),
            ("pid=1&..%2F..%2Fetc=1", 400, "unknown parameter"),
            ("pid=1&container=abcd", 400, "name one target"),
            ("pod=a/b&cgroup=/x", 400, "name one target"),
            ("children=1", 400, "goes with pid"),
            ("container=abcd&children=1", 400, "goes with pid"),
            ("pid=1&children=yes", 400, "children must be"),
            ("container=xyz", 400, "container"),
            ("pod=", 400, "pod"),
            (&long, 414, "at most 4096"),
            (&many, 400, "too many parameters"),
        ];
        for (raw, status, needle) in rows {
            let got = decode_query(raw)
                .and_then(|q| parse_query(&q, 60).map_err(|m| (StatusCode::BAD_REQUEST, m)));
            let (code, msg) = got.expect_err(raw);
            assert_eq!(code.as_u16(), *status, "{raw}: {msg}");
            assert!(msg.contains(needle), "{raw}: {msg}");
            // Echoed values are cut short: a 4 kB value is not sent back whole.
            assert!(msg.len() < 400, "{raw}: {} bytes", msg.len());
        }
        let ok = decode_query("pid=42&seconds=5&debug=1&&gc=1").unwrap();
        let q = parse_query(&ok, 60).unwrap();
        assert_eq!((q.target, q.seconds, q.debug), (Selector::Pid(42), 5, 1));
        let enc = decode_query("pid=%34%32&seconds=+5").unwrap();
        assert_eq!(enc["pid"], "42");
        assert!(
            parse_query(&enc, 60).is_err(),
            "seconds=' 5' is not a number"
        );
    }

    #[test]
    fn requests_without_body_and_other_methods_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let none = h(&[]);
        for (method, path) in [
            (Method::GET, "/metrics"),
            (Method::HEAD, "/metrics"),
            (Method::HEAD, "/"),
            (Method::HEAD, "/debug/pprof/"),
            (Method::GET, "/debug/pprof/profile"),
        ] {
            assert_eq!(
                check_request(&method, path, &none),
                Ok(()),
                "{method} {path}"
            );
        }
        assert_eq!(
            check_request(&Method::GET, "/metrics", &h(&[("content-length", "0")])),
            Ok(())
        );
        for (method, path, headers, status, allow) in [
            (Method::POST, "/metrics", h(&[]), 405, Some("GET, HEAD")),
            (Method::PUT, "/", h(&[]), 405, Some("GET, HEAD")),
            (
                Method::DELETE,
                "/debug/pprof/profile",
                h(&[]),
                405,
                Some("GET"),
            ),
            (Method::OPTIONS, "/metrics", h(&[]), 405, Some("GET, HEAD")),
            (
                Method::HEAD,
                "/debug/pprof/profile",
                h(&[]),
                405,
                Some("GET"),
            ),
            (
                Method::HEAD,
                "/debug/pprof/threads",
                h(&[]),
                405,
                Some("GET"),
            ),
            (
                Method::GET,
                "/metrics",
                h(&[("content-length", "5")]),
                413,
                None,
            ),
            (
                Method::GET,
                "/debug/pprof/profile",
                h(&[("transfer-encoding", "chunked")]),
                413,
                None,
            ),
        ] {
            let r = check_request(&method, path, &headers).expect_err(path);
            assert_eq!(
                (r.status.as_u16(), r.allow),
                (status, allow),
                "{method} {path}"
            );
            assert!(!r.message.is_empty());
        }
        let custom = Method::from_bytes(b"BREW").unwrap();
        let r = check_request(&custom, "/", &none).unwrap_err();
        assert!(r.message.contains("\"BREW\""), "{}", r.message);
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
