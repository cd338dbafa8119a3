//! The `trib` binary: parses the command line, runs it, and turns the outcome into an
//! exit code (see `trib --help`).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tributary_cli::{Cli, Io, Session, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("trib: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut io = Io::process();
    let outcome = runtime.block_on(run(cli, &mut io, &mut Session::new()));
    // A reader blocked on a terminal must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "trib: {e}");
            ExitCode::from(e.code)
        }
    }
}
