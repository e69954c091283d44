//! The profile endpoints' query validation (`/debug/pprof/*?pid=N&seconds=S&debug=D`): the raw
//! query string decoded into a map as axum's `Query<HashMap<String, String>>` decodes it
//! (serde_urlencoded), then `parse_query` with an arbitrary `--max-seconds`.
//! Input: 8 bytes of `--max-seconds` (little-endian, zero-padded), then the raw query string.
#![no_main]

use std::collections::HashMap;

use agent::serve::http::parse_query;
use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(max_seconds) = u.arbitrary::<u64>() else {
        return;
    };
    let raw = u.take_rest();
    // A request whose query does not decode gets axum's 400 before parse_query runs.
    let Ok(q) = serde_urlencoded::from_bytes::<HashMap<String, String>>(raw) else {
        return;
    };
    let Ok(p) = parse_query(&q, max_seconds) else {
        return;
    };
    assert!(p.pid > 0);
    assert!(p.seconds <= max_seconds);
    assert!(matches!(p.debug, 1 | 2));
    match p.capped_from {
        Some(asked) => assert!(asked > max_seconds && p.seconds == max_seconds),
        None => assert!(p.seconds > 0),
    }
    // What was accepted, written as a query again, is accepted the same way.
    let asked = p.capped_from.unwrap_or(p.seconds);
    let again = serde_urlencoded::to_string([
        ("pid", p.pid.to_string()),
        ("seconds", asked.to_string()),
        ("debug", p.debug.to_string()),
    ])
    .unwrap();
    let q2 = serde_urlencoded::from_str::<HashMap<String, String>>(&again).unwrap();
    assert_eq!(parse_query(&q2, max_seconds).as_ref(), Ok(&p));
});
