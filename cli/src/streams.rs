//! `trib streams ...`: the admin commands.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use tributary::{Client, PartitionState, StreamInfo, StreamSpec};

use crate::Io;
use crate::error::CliError;

/// The stream admin commands.
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Print the names of all streams, one per line.
    List,
    /// Create a stream.
    Create {
        /// Its name.
        name: String,
        /// Partitions (Kinesis: shards); the engine's default when absent.
        #[arg(short, long)]
        partitions: Option<u32>,
        /// How long records are kept, e.g. 7d or 12h; the engine's default when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<Duration>,
        /// An engine-specific option, e.g. -o cleanup.policy=compact (repeatable).
        #[arg(short = 'o', long = "option", value_name = "KEY=VALUE", value_parser = key_value)]
        options: Vec<(String, String)>,
    },
    /// Delete a stream and its records.
    Delete {
        /// Its name.
        name: String,
    },
    /// Print a stream's partitions, their state and offsets.
    Describe {
        /// Its name.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change the number of partitions (Kafka: add; Kinesis: reshard to this many open shards).
    SetPartitions {
        /// The stream.
        name: String,
        /// The new number of partitions.
        count: u32,
    },
}

/// Reads `KEY=VALUE`.
pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub(crate) async fn run(command: StreamsCommand, client: Client, io: &mut Io) -> Result<(), CliError> {
    let admin = client
        .admin()
        .await
        .map_err(|e| CliError::engine("opening admin", &e))?;
    let out = |e: std::io::Error| CliError::io("writing standard output", &e);
    match command {
        StreamsCommand::List => {
            let mut names = admin
                .list_streams()
                .await
                .map_err(|e| CliError::engine("listing streams", &e))?;
            names.sort();
            for name in names {
                writeln!(io.stdout, "{name}").map_err(out)?;
            }
        }
        StreamsCommand::Create {
            name,
            partitions,
            retention,
            options,
        } => {
            let mut spec = StreamSpec::new(&name);
            spec.partitions = partitions;
            spec.retention = retention;
            spec.options.extend(options);
            admin
                .create_stream(&spec)
                .await
                .map_err(|e| CliError::engine(&format!("creating stream {name:?}"), &e))?;
            writeln!(io.stderr, "created stream {name}").map_err(out)?;
        }
        StreamsCommand::Delete { name } => {
            admin
                .delete_stream(&name)
                .await
                .map_err(|e| CliError::engine(&format!("deleting stream {name:?}"), &e))?;
            writeln!(io.stderr, "deleted stream {name}").map_err(out)?;
        }
        StreamsCommand::Describe { name, json } => {
            let info = admin
                .describe_stream(&name)
                .await
                .map_err(|e| CliError::engine(&format!("describing stream {name:?}"), &e))?;
            if json {
                serde_json::to_writer_pretty(&mut io.stdout, &info)
                    .map_err(|e| CliError::usage(format!("cannot print {name} as JSON: {e}")))?;
                writeln!(io.stdout).map_err(out)?;
            } else {
                print_table(&info, &mut io.stdout).map_err(out)?;
            }
        }
        StreamsCommand::SetPartitions { name, count } => {
            admin.set_partitions(&name, count).await.map_err(|e| {
                CliError::engine(&format!("setting the partitions of {name:?} to {count}"), &e)
            })?;
            writeln!(io.stderr, "stream {name} now has {count} open partitions").map_err(out)?;
        }
    }
    Ok(())
}

fn print_table(info: &StreamInfo, out: &mut dyn Write) -> std::io::Result<()> {
    let retention = info.retention.map_or_else(
        || "engine default".to_owned(),
        |r| humantime::format_duration(r).to_string(),
    );
    writeln!(
        out,
        "stream {}  partitions {}  retention {retention}",
        info.name,
        info.partitions.len()
    )?;
    writeln!(
        out,
        "{:<28} {:<7} {:>22} {:>22}  parents",
        "partition", "state", "low", "high"
    )?;
    for p in &info.partitions {
        let state = match p.state {
            PartitionState::Open => "open",
            PartitionState::Closed => "closed",
        };
        let offset =
            |o: &Option<tributary::Offset>| o.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string);
        let parents: Vec<&str> = p.parents.iter().map(|id| id.as_str()).collect();
        writeln!(
            out,
            "{:<28} {state:<7} {:>22} {:>22}  {}",
            p.id.as_str(),
            offset(&p.low),
            offset(&p.high),
            if parents.is_empty() {
                "-".to_owned()
            } else {
                parents.join(",")
            }
        )?;
    }
    Ok(())
}
