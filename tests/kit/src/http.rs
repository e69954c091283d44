//! A minimal HTTP/1 client for servers on loopback (`agent serve`, Prometheus), so neither
//! the tests nor the bench depend on a client crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

#[derive(Debug)]
pub struct Reply {
    /// 0: the server closed without an answer (or with no status code in it).
    pub status: u16,
    pub headers: String,
    pub body: String,
    /// The body as bytes (de-chunked, like `body`).
    pub bytes: Vec<u8>,
    /// From connecting to the end of the reply.
    pub took: Duration,
}

/// The bytes of `GET <path> HTTP/1.1` with `Host: <host>`, `extra_headers` (each line ending
/// in CRLF) and `Connection: close`.
pub fn get_request(host: &str, path: &str, extra_headers: &[u8]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    r.extend_from_slice(extra_headers);
    r.extend_from_slice(b"Connection: close\r\n\r\n");
    r
}

/// Sends `request` as is (loopback only) and reads until the server closes, `timeout` passes
/// or reading fails; returns what was read and how reading ended. A server that answers before
/// reading the whole request may reset the rest of it: a failed write is not an error.
pub fn exchange(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Result<(Vec<u8>, std::io::Result<()>)> {
    if !addr.ip().is_loopback() {
        bail!("{addr}: the kit only talks to loopback");
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    let _ = s.write_all(request);
    let mut raw = Vec::new();
    let end = s.read_to_end(&mut raw).map(drop);
    Ok((raw, end))
}

/// Parses a raw HTTP/1 reply; with no complete head, status 0 and the bytes as the body.
pub fn parse_reply(raw: &[u8]) -> Reply {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Reply {
            status: 0,
            headers: String::new(),
            body: String::from_utf8_lossy(raw).into_owned(),
            bytes: raw.to_vec(),
            took: Duration::ZERO,
        };
    };
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
        took: Duration::ZERO,
    }
}

/// GET `path` (with `extra_headers`, each line ending in CRLF): the whole reply, whatever its
/// status, or an error if the server did not answer in full within `timeout`.
pub fn get(addr: SocketAddr, path: &str, extra_headers: &[u8], timeout: Duration) -> Result<Reply> {
    let t = Instant::now();
    let request = get_request(&addr.to_string(), path, extra_headers);
    let (raw, end) = exchange(addr, &request, timeout)?;
    end.with_context(|| format!("reading the reply to GET {path}"))?;
    let mut r = parse_reply(&raw);
    r.took = t.elapsed();
    if r.status == 0 {
        bail!(
            "no HTTP reply to GET {path}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        );
    }
    Ok(r)
}

/// [`get`], and an error naming the status and the start of the body unless it is 200.
pub fn get_ok(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Reply> {
    let r = get(addr, path, b"", timeout)?;
    if r.status != 200 {
        bail!(
            "GET {path}: {} {}",
            r.status,
            r.body.chars().take(300).collect::<String>()
        );
    }
    Ok(r)
}

/// The body of a chunked reply; a truncated or malformed one ends where it stops making sense.
pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or_default()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if n == 0 {
            return out;
        }
        let Some(chunk) = b.get(eol + 2..eol + 2 + n) else {
            out.extend_from_slice(&b[eol + 2..]);
            return out;
        };
        out.extend_from_slice(chunk);
        b = b.get(eol + 2 + n + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_reply_is_joined_and_a_headless_one_has_status_0() {
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!((r.status, r.body.as_str()), (200, "abcde"));
        let r = parse_reply(b"garbage");
        assert_eq!((r.status, r.body.as_str()), (0, "garbage"));
        // Truncated in a chunk: what came is kept.
        assert_eq!(dechunk(b"5\r\nab"), b"ab");
    }

    #[test]
    fn only_loopback_is_talked_to() {
        let e = exchange(
            "192.0.2.1:80".parse().unwrap(),
            b"",
            Duration::from_millis(10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("loopback"), "{e}");
    }
}
