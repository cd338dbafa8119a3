//! `trib mirror SRC DST`: the facade's [`tributary::mirror`] at a terminal.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use tributary::{Config, MirrorOptions, MirrorProgress, StartFrom};

use crate::error::CliError;
use crate::{Io, Session, Target};

/// Options of `trib mirror`.
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The source: STREAM on the command line's engine, or URL#STREAM, or
    /// CONNECTION#STREAM (a named connection of the config file).
    pub source: String,
    /// The destination, in the same forms; the stream must exist.
    pub destination: String,
    /// The source consumer group that records the mirror's progress (default:
    /// trib-mirror-DESTINATION_STREAM-HASH, HASH of the destination's URL or connection
    /// as written). A mirror started again with the same group
    /// resumes where the last one committed; two running ones share the partitions.
    #[arg(short, long)]
    pub group: Option<String>,
    /// Where a group with no commits starts: earliest or latest.
    #[arg(long, default_value = "earliest", value_parser = ["earliest", "latest"])]
    pub from: String,
    /// Most records per read, write and commit.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Stop once the source had nothing new for this long (default: run until interrupted).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub idle: Option<Duration>,
    /// Do not turn on the header envelope of a Kinesis side (records with headers then
    /// cannot be written to Kinesis).
    #[arg(long)]
    pub no_envelope: bool,
    /// How often to show throughput and lag (default: 1s on a terminal, else 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Print progress and the final totals as JSON lines on standard output.
    #[arg(long)]
    pub json: bool,
}

/// `[URL-or-connection#]stream`.
fn split_endpoint(text: &str) -> (Option<&str>, &str) {
    match text.rsplit_once('#') {
        Some((engine, stream)) => (Some(engine), stream),
        None => (None, text),
    }
}

pub(crate) async fn run(
    args: MirrorArgs,
    target: &Target,
    session: &mut Session,
    io: &mut Io,
) -> Result<(), CliError> {
    let (source_engine, source_stream) = split_endpoint(&args.source);
    let (destination_engine, destination_stream) = split_endpoint(&args.destination);
    let envelope = !args.no_envelope;
    let adjust = |config: &mut Config| {
        if envelope {
            config.keep_headers();
        }
    };
    let source = session.client_for(target, source_engine, adjust).await?;
    let destination = session.client_for(target, destination_engine, adjust).await?;
    // The default group names the destination, engine included: mirrors of one source
    // into same-named streams of two engines must not share (and split) a group.
    let group = args.group.clone().unwrap_or_else(|| {
        let engine = destination_engine.unwrap_or_default();
        format!(
            "trib-mirror-{destination_stream}-{:08x}",
            tributary::raw::murmur2(engine.as_bytes()) as u32
        )
    });
    let mut options = MirrorOptions::new(source_stream, destination_stream, group);
    options.start = if args.from == "latest" {
        StartFrom::Latest
    } else {
        StartFrom::Earliest
    };
    options.batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    options.max_records = args.count;
    options.stop_when_idle = args.idle;
    options.progress_every = args.interval.unwrap_or(if io.terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    let bar = (io.terminal && !args.json).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let stop = async {
        // Without a signal handler (never on the platforms we build for) run until killed.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let mut report_error = None;
    let stderr = &mut io.stderr;
    let stdout = &mut io.stdout;
    let outcome = tributary::mirror(&source, &destination, &options, stop, |p| {
        let written = if args.json {
            writeln!(stdout, "{}", progress_json(p)).and_then(|()| stdout.flush())
        } else if let Some(bar) = &bar {
            bar.set_message(progress_line(p));
            Ok(())
        } else {
            writeln!(stderr, "{}", progress_line(p))
        };
        if let Err(e) = written {
            report_error.get_or_insert(e);
        }
    })
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let progress = outcome.map_err(CliError::from)?;
    if let Some(e) = report_error {
        return Err(CliError::io("writing progress", &e));
    }
    if !args.json {
        writeln!(
            io.stderr,
            "mirrored {} records ({} resent) from {} to {} in {:.1} s",
            progress.mirrored,
            progress.resent,
            args.source,
            args.destination,
            progress.elapsed.as_secs_f64()
        )
        .map_err(|e| CliError::io("writing standard error", &e))?;
    }
    Ok(())
}

fn progress_line(p: &MirrorProgress) -> String {
    let lag = p
        .lag
        .map_or_else(|| "-".to_owned(), |l| format!("{:.1} s", l.as_secs_f64()));
    format!(
        "mirrored {}  {:.0} records/s  {:.2} MB/s  lag {lag}  resent {}",
        p.mirrored,
        p.records_per_sec,
        p.bytes_per_sec / 1e6,
        p.resent
    )
}

fn progress_json(p: &MirrorProgress) -> serde_json::Value {
    serde_json::json!({
        "mirrored": p.mirrored,
        "resent": p.resent,
        "elapsed_secs": p.elapsed.as_secs_f64(),
        "records_per_sec": p.records_per_sec,
        "bytes_per_sec": p.bytes_per_sec,
        "lag_secs": p.lag.map(|l| l.as_secs_f64()),
    })
}
