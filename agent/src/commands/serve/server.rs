//! The accept loop of `agent serve` (hyper directly: `axum::serve` has no limits to set).
//!
//! - At most `--max-connections` connections at once; one more is answered `503` with
//!   `Retry-After` and closed (a few at a time: beyond that it is closed unanswered).
//! - `--header-timeout`: hyper's header-read timer, started when a connection waits for a
//!   request head (when it opens, and again after each response on a keep-alive connection),
//!   and not reset by bytes that trickle in: a slow client (slowloris) and an idle keep-alive
//!   connection are both closed when it expires.
//! - Request heads above [`MAX_HEAD_BYTES`] are answered `431` by hyper.
//! - Shutdown (SIGINT/SIGTERM): no new connections, idle ones closed, requests in progress
//!   finish (each is bounded by its time limit); a second signal stops at once.
//!
//! Every refusal is counted in `stallscope_profile_rejected_total{reason}`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::health::Health;

/// Largest request head (request line and headers) read into memory.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Connections beyond the limit answered 503 at once; more are closed unanswered.
const REFUSING_AT_ONCE: usize = 16;

/// Connection limits (from `serve`'s options).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `signal()` completes, then stops gracefully; a second
/// `signal()` during the stop ends it at once.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    app: Router,
    health: Health,
    limits: Limits,
    signal: F,
) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let refusing = Arc::new(Semaphore::new(REFUSING_AT_ONCE));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let stop = signal();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of fds (EMFILE/ENFILE) and the like: wait rather than spin; a
                    // connection aborted before it was accepted is nothing.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::Interrupted
                    ) {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => {
                let svc = TowerToHyperService::new(app.clone());
                let conn_health = health.clone();
                let builder = builder.clone();
                let stop_rx = stop_rx.clone();
                tokio::spawn(async move {
                    connection(stream, svc, builder, stop_rx, conn_health).await;
                    drop(permit);
                });
            }
            Err(_) => {
                health.rejected.with_label_values(&["connections"]).inc();
                match Arc::clone(&refusing).try_acquire_owned() {
                    Ok(p) => {
                        tokio::spawn(refuse(stream, max, p));
                    }
                    // A flood: closed without an answer.
                    Err(_) => drop(stream),
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let busy = max - permits.available_permits();
    if busy > 0 {
        eprintln!(
            "stallscope: stopping; {busy} connection(s) still open, waiting for their requests \
             to finish (Ctrl-C again to stop now)"
        );
    }
    tokio::select! {
        _ = permits.acquire_many(max as u32) => {}
        _ = signal() => eprintln!("stallscope: stopping now"),
    }
    Ok(())
}

/// One connection: HTTP/1.1 with the header timeout, until it closes or the server stops.
async fn connection(
    stream: TcpStream,
    svc: TowerToHyperService<Router>,
    builder: http1::Builder,
    mut stop: watch::Receiver<bool>,
    health: Health,
) {
    let _ = stream.set_nodelay(true);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    let reason = if e.is_timeout() {
                        Some("header_timeout")
                    } else if e.is_parse() || e.is_parse_too_large() {
                        // hyper answered 400, 414 or 431 itself.
                        Some("malformed")
                    } else {
                        None
                    };
                    match reason {
                        Some(r) => {
                            health.rejected.with_label_values(&[r]).inc();
                            tracing::debug!("connection closed: {e}");
                        }
                        None => tracing::debug!("connection ended: {e}"),
                    }
                }
                return;
            }
            _ = stop.wait_for(|&s| s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The answer to a connection beyond `--max-connections`: 503, then a short drain of what the
/// client sent (closing with unread data would reset the connection and lose the answer).
async fn refuse(mut stream: TcpStream, max: usize, _permit: OwnedSemaphorePermit) {
    let body = format!(
        "too many connections: this agent serves at most {max} at once (--max-connections); \
         retry in a moment\n"
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{Instant, timeout};

    async fn start(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        watch::Sender<u32>,
        tokio::task::JoinHandle<()>,
        Health,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" })).route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "slow"
            }),
        );
        // The n-th call of `signal` waits for the n-th signal (a value of n).
        let (tx, rx) = watch::channel(0u32);
        let health = Health::new().unwrap();
        let h = health.clone();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = tokio::spawn(async move {
            let signal = move || {
                let mut rx = rx.clone();
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move {
                    let _ = rx.wait_for(|&v| v >= n).await;
                }
            };
            serve(listener, app, h, limits, signal).await.unwrap();
        });
        (addr, tx, task, health)
    }

    /// Reads until EOF (or 3 s): what the server sent before closing.
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn rejected(h: &Health, reason: &str) -> u64 {
        h.rejected.with_label_values(&[reason]).get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_idle_clients_are_closed_after_the_header_timeout() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_millis(300),
        };
        let (addr, stop, task, health) = start(limits).await;
        // Half a request line, then nothing: closed at the timeout, not before.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HT").await.unwrap();
        let t0 = Instant::now();
        let got = read_all(&mut s).await;
        let took = t0.elapsed();
        assert!(got.is_empty(), "{got}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // Bytes trickling in do not extend it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        for b in b"GET / HTTP/1.1\r\nHost: x\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let _ = read_all(&mut s).await;
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        // A keep-alive connection: answered, then closed once idle for the timeout.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let t0 = Instant::now();
        let got = read_all(&mut s).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("ok"),
            "{got}"
        );
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        // A request that takes longer than the header timeout is not cut short by it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut s).await;
        assert!(got.ends_with("slow"), "{got}");
        assert!(rejected(&health, "header_timeout") >= 2);
        // A malformed request line: hyper's 400, counted.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x01\x02 / HTTP/1.1\r\n\r\n").await.unwrap();
        let got = read_all(&mut s).await;
        assert!(got.starts_with("HTTP/1.1 400"), "{got}");
        // A head above MAX_HEAD_BYTES: 431.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES * 2)
        );
        let _ = s.write_all(big.as_bytes()).await;
        let got = read_all(&mut s).await;
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
        assert!(rejected(&health, "malformed") >= 1);
        stop.send(1).unwrap();
        timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_beyond_the_limit_get_503_and_the_server_still_answers() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(20),
        };
        let (addr, stop, task, health) = start(limits).await;
        let a = TcpStream::connect(addr).await.unwrap();
        let b = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 503"), "{got}");
        assert!(
            got.contains("--max-connections") && got.contains("retry-after: 1"),
            "{got}"
        );
        assert_eq!(rejected(&health, "connections"), 1);
        drop((a, b));
        // The slots free up as the server sees the clients go.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let got = read_all(&mut s).await;
            if got.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "still refused: {got}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Graceful stop: a request in progress finishes, then the server returns.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!task.is_finished(), "waits for the request in progress");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
        let got = read_all(&mut s).await;
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("slow"),
            "{got}"
        );
        timeout(Duration::from_secs(3), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_signal_stops_at_once() {
        let limits = Limits {
            max_connections: 4,
            header_timeout: Duration::from_secs(20),
        };
        let (addr, stop, task, _) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"GET /slow HTTP/1.1
Host: x

",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(1).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.send(2).unwrap();
        timeout(Duration::from_millis(300), task)
            .await
            .unwrap()
            .unwrap();
    }
}
