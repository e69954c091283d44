//! `agent attach`: one bounded capture of one process or a group of them ([`crate::window`]), then symbolize,
//! write and summarize.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use crate::{
    cli::AttachArgs,
    error::Error,
    export,
    model::ProfileKind,
    output::{prepare_output, restore_output},
    report::{
        json,
        summary::{self as report},
    },
    symbolize::Symbolizer,
    window::{
        self, CaptureSpec, Captured, DumpOptions,
        finish::{OutputOptions, Written, write_profiles},
    },
};

/// What `attach` wrote, for the caller (and tests).
#[derive(Debug)]
pub struct AttachOutcome {
    pub files: Vec<PathBuf>,
    pub summary: String,
}

/// The window `attach`'s arguments ask for.
pub fn spec_of(args: &AttachArgs) -> CaptureSpec {
    CaptureSpec {
        profiles: args.profile.clone(),
        duration: args.duration,
        rates: args.rates,
        offcpu_min_ns: args.offcpu_min_ns,
        tid_labels: !args.labels.no_tid_label,
        dumps: Some(DumpOptions {
            dir: args.output.clone(),
            when: args.dump_when.clone(),
            signal_target: args.signal_target,
            // (tokio's signal() panics outside a runtime.)
            requests: tokio::runtime::Handle::try_current()
                .ok()
                .and_then(|_| {
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                        .ok()
                })
                .map(|s| std::sync::Arc::new(tokio::sync::Mutex::new(s))),
        }),
    }
}

/// Runs a whole capture. Prints progress to stderr on a terminal; returns the summary text.
pub async fn run(args: &AttachArgs) -> Result<AttachOutcome, Error> {
    if args.profile.is_empty() {
        return Err(Error::Usage("--profile needs at least one profile".into()));
    }
    // First: it starts listening for SIGUSR1 (dump requests).
    let spec = spec_of(args);
    let target = window::check_selector(&args.target.selector()?)?;
    if let Some(sig) = args.signal_target {
        let exe = std::fs::read_link(format!("/proc/{}/exe", target.lead.pid)).unwrap_or_default();
        crate::dump::trigger::check_signal_target(sig, &exe).map_err(Error::Usage)?;
    }
    prepare_output(&args.output)?;

    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let captured = window::capture(&target, &spec, ctrl_c, std::io::stderr().is_terminal()).await?;
    let mut facts =
        super::window_facts(&target, &captured, args.duration, args.rates, &args.profile);
    let Captured {
        raws,
        lock_waiters,
        maps,
        mut accounting,
        ..
    } = captured;

    restore_output(&args.output)?;
    // blazesym's symbolizer is not Send: it lives on this blocking thread for the whole batch.
    let out = OutputOptions {
        dir: args.output.clone(),
        pid: target.lead.pid,
        top_n: args.top,
        folded_thread_root: args.labels.folded_thread_root,
    };
    let Written {
        files,
        sections,
        profiles,
    } = tokio::task::spawn_blocking(move || {
        let mut symbolizer = Symbolizer::new();
        write_profiles(&mut symbolizer, raws, lock_waiters, &maps, &out)
    })
    .await
    .map_err(|e| Error::internal("symbolization thread failed", e))??;
    if let Some(p) = profiles.iter().find(|p| p.kind == ProfileKind::Offcpu) {
        accounting.classes_from(p);
    }
    let threads_json = args.output.join("threads.json");
    export::folded::write_text(
        &threads_json,
        &serde_json::to_string_pretty(&accounting).unwrap_or_default(),
    )
    .map_err(|source| Error::Output {
        path: threads_json.clone(),
        source,
    })?;
    facts.accounting = Some(accounting);

    let summary_json = args.output.join("summary.json");
    export::folded::write_text(&summary_json, &json::render(&facts, &profiles)).map_err(
        |source| Error::Output {
            path: summary_json.clone(),
            source,
        },
    )?;
    let mut files = files;
    files.push(threads_json);
    files.push(summary_json);
    let summary = report::render_summary(&facts, &sections, &files);
    Ok(AttachOutcome { files, summary })
}
