//! The profile endpoints' query handling (`/debug/pprof/*?pid=N&seconds=S&debug=D`, or a
//! group in place of `pid`), as serve
//! runs it: the raw query string through `decode_query` (bounded size and count, strict
//! percent-decoding, each parameter once), then `parse_query` with an arbitrary
//! `--max-seconds`.
//! Input: 8 bytes of `--max-seconds` (little-endian, zero-padded), then the raw query string.
#![no_main]

use agent::commands::serve::http::{MAX_PARAMS, MAX_QUERY_BYTES, decode_query, parse_query};
use agent::targets::Selector;
use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(max_seconds) = u.arbitrary::<u64>() else {
        return;
    };
    // hyper hands serve the query as text: a request line that is not UTF-8 never gets here.
    let Ok(raw) = std::str::from_utf8(u.take_rest()) else {
        return;
    };
    let q = match decode_query(raw) {
        Ok(q) => q,
        Err((status, message)) => {
            assert!(status.is_client_error(), "{status} for {raw:?}");
            assert!(!message.is_empty());
            return;
        }
    };
    assert!(raw.len() <= MAX_QUERY_BYTES);
    assert!(q.len() <= MAX_PARAMS);
    let Ok(p) = parse_query(&q, max_seconds) else {
        return;
    };
    assert!(p.seconds <= max_seconds);
    assert!(matches!(p.debug, 0..=2));
    match p.capped_from {
        Some(asked) => assert!(asked > max_seconds && p.seconds == max_seconds),
        None => assert!(p.seconds > 0),
    }
    // What was accepted, written as a query again, is accepted the same way (a process or a
    // tree; the group selectors' values are checked by their own parsers' unit tests).
    let target = match p.target {
        Selector::Pid(pid) => format!("pid={pid}"),
        Selector::Children(pid) => format!("pid={pid}&children=1"),
        _ => return,
    };
    if let Selector::Pid(pid) | Selector::Children(pid) = p.target {
        assert!(pid > 0);
    }
    let asked = p.capped_from.unwrap_or(p.seconds);
    let again = format!("{target}&seconds={asked}&debug={}", p.debug);
    let q2 = decode_query(&again).expect("a query serve accepted, written again");
    assert_eq!(parse_query(&q2, max_seconds).as_ref(), Ok(&p));
});
