//! `agent dump`: one thread dump of a running process ([`crate::dump`]), or of every process
//! of a group, as text or JSON, to stdout or a file.

use stallscope_common::KernelOffsets;

use crate::{
    cli::DumpArgs,
    dump::{Detail, DumpFormat, extension, goroutines, render, take_dump, write_into},
    error::Error,
    kernel::Collector,
    symbolize::Symbolizer,
    system,
    targets::Selector,
    unwind::maps::MapsCache,
};

/// `agent dump`: returns what to print on stdout (the dump, or with `-o` where it was written).
pub fn run(args: &DumpArgs) -> Result<String, Error> {
    system::check_privileges()?;
    system::check_btf()?;
    let selector = args.target.selector()?;
    match selector {
        Selector::Pid(pid) => run_one(args, pid),
        _ => run_group(args, &selector),
    }
}

/// The dump of every process of a group, in pid order: the text dumps one after the other
/// (each starts with its process), or one JSON object `{"group", "processes": [dump, ...]}`.
fn run_group(args: &DumpArgs, selector: &Selector) -> Result<String, Error> {
    let pids = selector.resolve();
    if pids.is_empty() {
        return Err(selector.empty_error());
    }
    let mut collector =
        Collector::load(KernelOffsets::default(), stallscope_common::AGG_MAP_ENTRIES)?;
    let mut symbolizer = Symbolizer::new();
    let mut dumps = Vec::new();
    let mut gone = Vec::new();
    for pid in pids {
        let mut maps = MapsCache::new();
        // A member that exited (or is a zombie) since the look at /proc is left out, said.
        if system::process_info(pid).is_err() || maps.refresh(pid).is_err() {
            gone.push(pid);
            continue;
        }
        match take_dump(&mut collector, pid, &maps, &mut symbolizer) {
            Ok(d) => dumps.push(d),
            Err(Error::NoSuchProcess(_)) => gone.push(pid),
            Err(e) => return Err(e),
        }
    }
    if dumps.is_empty() {
        return Err(selector.empty_error());
    }
    let threads: usize = dumps.iter().map(|d| d.threads.len()).sum();
    let detail = if args.debug == 1 {
        Detail::Grouped
    } else {
        Detail::EveryThread
    };
    let out = match args.format {
        crate::dump::DumpFormat::Text => {
            let mut s = format!(
                "group: {}: {} processes, {threads} threads\n",
                selector.describe(),
                dumps.len()
            );
            if !gone.is_empty() {
                s.push_str(&format!("exited before their dump: {gone:?}\n"));
            }
            for d in &dumps {
                s.push('\n');
                s.push_str(&render(d, args.format, detail));
            }
            s
        }
        crate::dump::DumpFormat::Json => {
            let v = serde_json::json!({
                "group": selector.describe(),
                "exited_before_dump": gone,
                "processes": dumps,
            });
            let mut s = serde_json::to_string_pretty(&v).expect("the model serializes");
            s.push('\n');
            s
        }
    };
    match &args.output {
        None => Ok(out),
        Some(dir) => {
            let path = write_into(dir, &format!("dump.{}", extension(args.format)), &out)?;
            Ok(format!(
                "wrote the dump of {} processes, {threads} threads, to {}\n",
                dumps.len(),
                path.display()
            ))
        }
    }
}

/// The dump of one process.
fn run_one(args: &DumpArgs, pid: u32) -> Result<String, Error> {
    // Zombies and kernel threads are told apart from missing processes (a process whose main
    // thread exited, with others running, is dumped).
    system::process_info(pid)?;
    let tgid = target_tgid(pid)?;
    if tgid != pid {
        return Err(Error::Usage(format!(
            "{pid} is a thread of process {tgid}; pass the process id: --pid {tgid}"
        )));
    }
    let mut maps = MapsCache::new();
    maps.refresh(pid)
        .map_err(|e| Error::proc_read(pid, "maps", &e))?;
    // Only the task iterator is loaded, and it takes its offsets from `DUMP_CONFIG`: the
    // profiling programs' `KERNEL_OFFSETS` are never used here, so the kernel's BTF is not
    // parsed a second time for them.
    let mut symbolizer = Symbolizer::new();
    // A Go program: its goroutines, in Go's own format (read from its memory, not stopped).
    let mut go_note = None;
    if !args.threads {
        let go = match args.format {
            DumpFormat::Text => goroutines::try_dump(pid, &maps, &mut symbolizer, args.debug == 1),
            DumpFormat::Json => goroutines::try_dump_json(pid, &maps, &mut symbolizer),
        };
        match go {
            Some(Ok(out)) => return deliver(args, out, "goroutines"),
            // JSON has no room for a note before the document: it goes to stderr.
            Some(Err(why)) if args.format == DumpFormat::Json => tracing::warn!("{why}"),
            Some(Err(why)) => go_note = Some(why),
            None => {}
        }
    }
    let mut collector =
        Collector::load(KernelOffsets::default(), stallscope_common::AGG_MAP_ENTRIES)?;
    let dump = take_dump(&mut collector, pid, &maps, &mut symbolizer)?;
    let detail = if args.debug == 1 {
        Detail::Grouped
    } else {
        Detail::EveryThread
    };
    let out = go_note.unwrap_or_default() + &render(&dump, args.format, detail);
    deliver(args, out, &format!("{} threads", dump.threads.len()))
}

/// The dump on stdout, or with `-o` written to DIR/dump.txt|json and where it was written.
fn deliver(args: &DumpArgs, out: String, what: &str) -> Result<String, Error> {
    match &args.output {
        None => Ok(out),
        Some(dir) => {
            let path = write_into(dir, &format!("dump.{}", extension(args.format)), &out)?;
            Ok(format!("wrote the dump of {what} to {}\n", path.display()))
        }
    }
}

/// The thread group of `pid`, if some thread of it is alive. Unlike a profile, a dump is still
/// useful when the main thread has exited (a zombie) while other threads run on.
fn target_tgid(pid: u32) -> Result<u32, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| Error::NoSuchProcess(pid))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(pid);
    let live = |tid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
            .ok()
            .and_then(|s| system::parse_stat(&s))
            .is_some_and(|(_, state, _)| state != 'Z' && state != 'X')
    };
    let any_live = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|_| Error::NoSuchProcess(pid))?
        .filter_map(Result::ok)
        .any(|e| live(&e.file_name().to_string_lossy()));
    if !any_live {
        return Err(Error::NoSuchProcess(pid));
    }
    Ok(tgid)
}
