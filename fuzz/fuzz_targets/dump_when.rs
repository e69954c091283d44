//! The `--dump-when` condition parser and the other value parsers of the command line
//! (`--signal-target`, durations, `--offcpu-rate`) on arbitrary text. A condition
//! that parses must print back to one that parses to the same thing.
#![no_main]

use std::time::Duration;

use agent::cli::parse_duration;
use agent::options::parse_nanos;
use agent::dump::model::State;
use agent::dump::trigger::{Cmp, Condition, DumpWhen, ThreadObs, parse_signal};
use libfuzzer_sys::fuzz_target;

fn render_time(d: Duration) -> String {
    format!("{}s {}ns", d.as_secs(), d.subsec_nanos())
}

/// `--dump-when` text for a parsed condition.
fn render(w: &DumpWhen) -> String {
    let mut terms = Vec::new();
    match &w.condition {
        Condition::Deadlock => terms.push("deadlock".to_string()),
        Condition::Threads {
            states,
            cmp,
            threads,
            min_in_state,
        } => {
            if states.is_empty() {
                terms.push("state=blocked".into());
            } else {
                let names: Vec<&str> = states.iter().map(|s| s.label()).collect();
                terms.push(format!("state={}", names.join("|")));
            }
            let op = match cmp {
                Cmp::Ge => ">=",
                Cmp::Gt => ">",
                Cmp::Eq => "=",
                Cmp::Le => "<=",
                Cmp::Lt => "<",
            };
            terms.push(format!("threads{op}{threads}"));
            terms.push(format!("for={}", render_time(*min_in_state)));
        }
    }
    terms.push(format!("every={}", render_time(w.every)));
    terms.join(",")
}

/// `matching` counts exactly the threads in the states for at least `for=`, whatever its size.
fn check_matching(w: &DumpWhen) {
    let states = [State::FutexWait, State::Running, State::Disk, State::Sleep];
    let times = [
        None,
        Some(0),
        Some(1),
        Some(1_000_000_000),
        Some(1 << 62),
        Some(u64::MAX),
    ];
    let threads: Vec<ThreadObs> = states
        .iter()
        .flat_map(|&state| {
            times
                .iter()
                .map(move |&in_state_ns| ThreadObs { state, in_state_ns })
        })
        .collect();
    let expected = match &w.condition {
        Condition::Deadlock => 0,
        Condition::Threads {
            states,
            min_in_state,
            ..
        } => threads
            .iter()
            .filter(|t| {
                if states.is_empty() {
                    t.state.is_blocked()
                } else {
                    states.contains(&t.state)
                }
            })
            .filter(|t| {
                min_in_state.is_zero()
                    || t.in_state_ns
                        .is_some_and(|ns| Duration::from_nanos(ns) >= *min_in_state)
            })
            .count(),
    };
    assert_eq!(w.matching(&threads), expected, "{w:?}");
    let _ = (w.needs_full_dump(), w.holds(&threads));
    let _ = w.worth_full_check(&threads, w.every);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(w) = text.parse::<DumpWhen>() {
        let again = render(&w);
        assert_eq!(again.parse::<DumpWhen>().as_ref(), Ok(&w), "{again:?}");
        check_matching(&w);
    }

    if let Ok(sig) = parse_signal(text) {
        assert!((1..=64).contains(&sig));
    }

    if let Ok(d) = parse_duration(text) {
        assert!(!d.is_zero());
    }

    let ns = parse_nanos(text);
    if let Ok(n) = ns {
        assert!(n <= 4_000_000_000);
    }
    // A duration the cap refuses must not come back as a smaller number.
    let t = text.trim();
    if t.parse::<u64>().is_err()
        && let Ok(d) = humantime::parse_duration(t)
    {
        match ns {
            Ok(n) => assert_eq!(u128::from(n), d.as_nanos(), "{t:?}"),
            Err(_) => assert!(d.as_nanos() > 4_000_000_000, "{t:?} refused"),
        }
    }
});
