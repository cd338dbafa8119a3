#![doc = include_str!("../README.md")]

mod bench;
mod connection;
mod consume;
mod error;
mod generate;
mod mirror;
mod produce;
mod streams;

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use bench::BenchArgs;
pub use connection::Session;
pub use consume::ConsumeArgs;
pub use error::CliError;
pub use mirror::MirrorArgs;
pub use produce::ProduceArgs;
pub use streams::StreamsCommand;

/// `trib`: produce, consume, administer, mirror and benchmark streams on Kafka, Kinesis,
/// the embedded native engine or the in-memory engine.
#[derive(Debug, Parser)]
#[command(name = "trib", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Cli {
    /// Which engine to talk to: the connection options.
    #[command(flatten)]
    pub target: Target,
    /// Log more (-v: debug, -vv: trace) on standard error.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
The engine comes from, in this order: --url, --connection, TRIBUTARY_URL,
TRIBUTARY_CONNECTION, then the `default` connection of the config file
(--config, else ./tributary.toml, else ~/.config/tributary/tributary.toml).

Exit codes: 0 done; 1 the engine or the system failed; 2 bad usage, configuration
or input; 3 a stream (or other named thing) does not exist; 4 it already exists.
Ctrl-C stops consume and mirror cleanly (commit, leave the group) with 0.";

/// Where commands connect to.
#[derive(Clone, Debug, Default, Args)]
pub struct Target {
    /// Backend URL, e.g. memory://, native:///var/lib/trib, kafka://127.0.0.1:9092,
    /// kinesis://?region=eu-west-1 [env: TRIBUTARY_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// A named connection of the config file [env: TRIBUTARY_CONNECTION]
    #[arg(short = 'c', long, global = true, value_name = "NAME")]
    pub connection: Option<String>,
    /// The config file with named connections (default: ./tributary.toml, then
    /// ~/.config/tributary/tributary.toml)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, create, delete, describe and resize streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Write lines from standard input or a file as records.
    Produce(ProduceArgs),
    /// Print a stream's records, as a group member or an independent reader.
    Consume(ConsumeArgs),
    /// Copy a stream into another stream, on the same or another engine, resumably.
    Mirror(MirrorArgs),
    /// Measure throughput and latency of producers and consumers on a fresh stream.
    Bench(BenchArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for trib and each of its commands into a directory.
    Man {
        /// The directory (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// Standard input, output and error of one run; tests give buffers.
pub struct Io {
    /// Where `produce` reads lines when no file is named.
    pub stdin: Box<dyn BufRead + Send>,
    /// Records, listings and reports.
    pub stdout: Box<dyn Write + Send>,
    /// Progress and summaries.
    pub stderr: Box<dyn Write + Send>,
    /// Whether standard error is a terminal (progress bars only then).
    pub terminal: bool,
}

impl Io {
    /// The process's own standard streams.
    pub fn process() -> Self {
        use std::io::IsTerminal;
        Self {
            stdin: Box::new(std::io::BufReader::new(std::io::stdin())),
            stdout: Box::new(std::io::BufWriter::new(std::io::stdout())),
            stderr: Box::new(std::io::stderr()),
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

/// Runs one parsed command line.
///
/// # Errors
/// A [`CliError`] carrying the message and the exit code. Not cancel safe (a command
/// dropped mid-way may leave a batch written but not reported).
pub async fn run(cli: Cli, io: &mut Io, session: &mut Session) -> Result<(), CliError> {
    let target = &cli.target;
    let outcome = match cli.command {
        Command::Streams(command) => streams::run(command, session.client(target).await?, io).await,
        Command::Produce(args) => produce::run(args, session.client(target).await?, io).await,
        Command::Consume(args) => consume::run(args, session.client(target).await?, io).await,
        Command::Mirror(args) => mirror::run(args, target, session, io).await,
        Command::Bench(args) => bench::run(args, session.client(target).await?, io).await,
        Command::Completions { shell } => generate::completions(shell, io),
        Command::Man { dir } => generate::man_pages(&dir, io),
    };
    let flushed = io
        .stdout
        .flush()
        .map_err(|e| CliError::io("writing standard output", &e));
    outcome.and(flushed)
}
