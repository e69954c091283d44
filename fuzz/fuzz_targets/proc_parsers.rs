//! The `/proc` text parsers on arbitrary text: maps, stat (three parsers of it), status fields,
//! the effective capabilities, and the serve sampler's syscall and schedstat parsers.
//! None may panic; what they parse must survive being printed the way the kernel prints it and
//! parsed again.
#![no_main]

use agent::unwind::maps::{MapLine, parse_maps, parse_stat_start_time};
use agent::commands::serve::procstat;
use agent::system::{parse_cap_eff, parse_stat, stat_flags, status_field};
use libfuzzer_sys::fuzz_target;

/// A maps line as the kernel prints it.
fn render_map(m: &MapLine) -> String {
    format!(
        "{:x}-{:x} {} {:08x} {} {} {}{}",
        m.start,
        m.end,
        m.perms,
        m.offset,
        m.dev,
        m.inode,
        m.path.as_deref().unwrap_or(""),
        if m.deleted { " (deleted)" } else { "" }
    )
}

/// A stat line with `comm`, `state`, `flags` (field 9) and `start` (field 22).
fn render_stat(comm: &str, state: char, flags: u64, start: u64) -> String {
    format!("42 ({comm}) {state} 1 42 42 0 -1 {flags} 0 0 0 0 7 3 0 0 20 0 1 0 {start} 0 0\n")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    // /proc/PID/maps
    let maps = parse_maps(text);
    for m in &maps {
        assert!(m.start <= m.end, "{m:?}");
        assert_eq!(m.perms.len(), 4, "{m:?}");
        assert!(!m.path.as_deref().is_some_and(str::is_empty), "{m:?}");
        let _ = (m.is_executable(), m.is_file_backed(), m.is_pseudo());
        // One line at a time: a path may end in '\r', which a following "\n" would eat.
        assert_eq!(parse_maps(&render_map(m)), [m.clone()]);
    }

    // /proc/PID/stat
    let start_time = parse_stat_start_time(text);
    let flags = stat_flags(text);
    if let Some((comm, state, start)) = parse_stat(text) {
        assert!(!state.is_whitespace());
        let again = render_stat(&comm, state, 0, start);
        assert_eq!(parse_stat(&again), Some((comm.clone(), state, start)));
        assert_eq!(parse_stat_start_time(&again), Some(start));
    }
    if let Some(start) = start_time {
        assert_eq!(
            parse_stat_start_time(&render_stat("x", 'S', 0, start)),
            Some(start)
        );
    }
    if let Some(f) = flags {
        assert_eq!(stat_flags(&render_stat("x", 'S', f, 0)), Some(f));
    }
    if let Some((comm, state, start, flags)) = procstat::parse_stat(text) {
        let again = render_stat(&comm, state, flags, start);
        assert_eq!(
            procstat::parse_stat(&again),
            Some((comm, state, start, flags))
        );
    }

    // /proc/PID/status
    if let Some(cap) = parse_cap_eff(text) {
        assert_eq!(
            parse_cap_eff(&format!("Name:\tx\nCapEff:\t{cap:016x}\n")),
            Some(cap)
        );
    }
    for name in ["Tgid", "PPid", "Kthread", "Threads"] {
        if let Some(v) = status_field::<u64>(text, name) {
            assert_eq!(status_field::<u64>(&format!("{name}:\t{v}\n"), name), Some(v));
        }
    }
    // A field name taken from the input itself.
    if let Some(name) = text.lines().next().and_then(|l| l.split(':').next()) {
        let _ = status_field::<u64>(text, name);
        let _ = status_field::<String>(text, name);
    }

    // /proc/PID/task/TID/syscall and schedstat
    let nr = procstat::parse_syscall(text);
    if let Some((uaddr, op, sp)) = procstat::parse_futex_call(text) {
        assert_eq!(nr, Some(202));
        let again = format!("202 {uaddr:#x} {op:#x} 0x0 0x0 0x0 0x0 {sp:#x} 0x0\n");
        assert_eq!(procstat::parse_futex_call(&again), Some((uaddr, op, sp)));
    }
    let word = data.first().map(|&b| u32::from(b));
    if let Some(s) = procstat::syscall_of(text, |_| word) {
        assert_eq!(Some(s.nr), nr);
        assert!(!s.lock || s.nr == 202);
    }
    if let Some((run, wait, slices)) = procstat::parse_schedstat(text) {
        assert_eq!(
            procstat::parse_schedstat(&format!("{run} {wait} {slices}\n")),
            Some((run, wait, slices))
        );
    }
});
