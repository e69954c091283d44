//! HTTP routes of `agent serve` (axum): `/metrics`, `/debug/pprof/...`, bearer-token auth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::{
    Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};

use crate::model::ProfileKind;

use super::{Shared, profiler::ProfileError};

/// Default `seconds` of a profile request, as Go's `net/http/pprof`.
pub const DEFAULT_SECONDS: u64 = 30;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/debug/pprof", get(index))
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/{name}", get(pprof))
        .route("/", get(root))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), auth))
        .with_state(shared)
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

/// Compares in time independent of where the strings differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// With a token configured, every request needs `Authorization: Bearer <token>`.
async fn auth(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
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
        "stallscope /debug/pprof/ — Go-style profiles of any process, by pid\n\n\
         profiles (seconds defaults to 30, capped by --max-seconds):\n  \
         /debug/pprof/profile?pid=N&seconds=S   CPU (samples/count, cpu/nanoseconds)\n  \
         /debug/pprof/offcpu?pid=N&seconds=S    off-CPU time by wait class\n  \
         /debug/pprof/block?pid=N&seconds=S     time blocked on futexes (Go block profile)\n  \
         /debug/pprof/mutex?pid=N&seconds=S     lock delay charged to the holder (Go mutex profile)\n  \
         /debug/pprof/threads?pid=N&debug=1|2   thread dump (1: grouped, 2: every thread)\n\n\
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
    pub pid: u32,
    pub seconds: u64,
    /// `seconds` asked for, when it was above the cap.
    pub capped_from: Option<u64>,
    pub debug: u8,
}

/// Validates `pid`, `seconds` and `debug`, with messages that say what is wrong.
pub fn parse_query(q: &HashMap<String, String>, max_seconds: u64) -> Result<ProfileQuery, String> {
    let pid = match q.get("pid") {
        None => return Err("missing pid: add ?pid=N (the process to profile)".into()),
        Some(p) => p
            .parse::<u32>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("pid must be a positive process id, not {p:?}"))?,
    };
    let asked = match q.get("seconds") {
        None => DEFAULT_SECONDS,
        Some(s) => s.parse::<u64>().ok().filter(|&s| s > 0).ok_or_else(|| {
            format!("seconds must be a whole number of seconds above 0, not {s:?}")
        })?,
    };
    let debug = match q.get("debug").map(String::as_str) {
        None | Some("2") => 2,
        Some("1") => 1,
        Some("0") => 2,
        Some(d) => return Err(format!("debug must be 1 or 2, not {d:?}")),
    };
    for k in q.keys() {
        if !matches!(k.as_str(), "pid" | "seconds" | "debug" | "gc") {
            return Err(format!(
                "unknown parameter {k:?}; known: pid, seconds, debug"
            ));
        }
    }
    Ok(ProfileQuery {
        pid,
        seconds: asked.min(max_seconds),
        capped_from: (asked > max_seconds).then_some(asked),
        debug,
    })
}

async fn pprof(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    _headers: HeaderMap,
) -> Response {
    let kind = match name.as_str() {
        "profile" => Some(ProfileKind::Cpu),
        "offcpu" => Some(ProfileKind::Offcpu),
        "block" => Some(ProfileKind::Block),
        "mutex" => Some(ProfileKind::Mutex),
        "threads" | "goroutine" => None,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown profile {name:?}; available: profile, offcpu, block, mutex, threads (see /debug/pprof/)"
                ),
            );
        }
    };
    let handler = kind.map_or("threads", super::profiler::kind_name);
    let resp = match parse_query(&q, s.max_seconds) {
        Err(m) => {
            s.health.rejected.with_label_values(&["bad_request"]).inc();
            text(StatusCode::BAD_REQUEST, m)
        }
        Ok(q) => match kind {
            None => match s.profiler.dump(q.pid, q.debug).await {
                Ok(body) => text(StatusCode::OK, body),
                Err(e) => error_response(&s, e),
            },
            Some(kind) => profile(&s, kind, q).await,
        },
    };
    s.health
        .requests
        .with_label_values(&[handler, resp.status().as_str()])
        .inc();
    resp
}

async fn profile(s: &Arc<Shared>, kind: ProfileKind, q: ProfileQuery) -> Response {
    let permit = match s.profiler.try_permit() {
        Ok(p) => p,
        Err(e) => return error_response(s, e),
    };
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
            .profile(
                permit,
                kind,
                q.pid,
                Duration::from_secs(q.seconds),
                comments,
            )
            .await
    });
    match task.await {
        Ok(Ok(bytes)) => (
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
            .into_response(),
        Ok(Err(e)) => error_response(s, e),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profile task failed: {e}"),
        ),
    }
}

fn error_response(s: &Shared, e: ProfileError) -> Response {
    match e {
        ProfileError::Busy => {
            s.health.rejected.with_label_values(&["busy"]).inc();
            let mut r = text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many profiles at once (--max-concurrent-profiles); retry when the running one ends",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
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
            (ok.pid, ok.seconds, ok.capped_from, ok.debug),
            (42, 5, None, 2)
        );
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
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
