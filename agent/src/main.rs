use std::process::ExitCode;

use clap::Parser as _;

use agent::cli::{Cli, Command};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info,agent=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STALLSCOPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // `init` also routes the `log` crate (aya-log's records from the BPF programs) to tracing.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout with exit 0 and usage errors with exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Attach(args) => agent::commands::attach::run(args)
                .await
                .and_then(|o| print_out(&o.summary)),
            Command::Capture(args) => agent::commands::capture::run(args)
                .await
                .and_then(|text| print_out(&text)),
            Command::Dump(args) => agent::commands::dump::run(args).and_then(|out| print_out(&out)),
            Command::Serve(args) => agent::commands::serve::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output left (`agent dump | head`): what it read was whole, the
        // files are written; end quietly, as `head` expects of a writer (ripgrep does the same).
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Writes a command's text to stdout (`print!` would panic on a closed pipe).
fn print_out(text: &str) -> Result<(), agent::error::Error> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| agent::error::Error::internal("writing to standard output", e))
}
