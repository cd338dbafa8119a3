//! `trib produce`: each line of standard input or a file becomes one record.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;
use tributary::{Client, DeliveryHandle, Error, ProducerConfig, Record};

use crate::Io;
use crate::error::CliError;
use crate::streams::key_value;

/// Options of `trib produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The stream to write.
    pub stream: String,
    /// Read lines from this file instead of standard input.
    #[arg(short, long)]
    pub file: Option<PathBuf>,
    /// The key of every record.
    #[arg(short, long, conflicts_with = "key_field")]
    pub key: Option<String>,
    /// Take each record's key from this field of the line, which must then be a JSON
    /// object (a.b reads a nested field; strings are used as they are, other values as
    /// JSON text).
    #[arg(long, value_name = "FIELD")]
    pub key_field: Option<String>,
    /// A header on every record (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = key_value)]
    pub headers: Vec<(String, String)>,
    /// Send at most this many records per second.
    #[arg(long, value_name = "RECORDS_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Most records per batch: lines are handed over to the producer one by one as they
    /// come, and it batches them (the engine's own default when not given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: Option<u64>,
}

/// One input line turned into a record, or why it could not be.
type Line = Result<Record, String>;

pub(crate) async fn run(args: ProduceArgs, client: Client, io: &mut Io) -> Result<(), CliError> {
    tributary::raw::validate_stream_name(&args.stream).map_err(CliError::from)?;
    // Fail on a missing stream before reading any input.
    client
        .admin()
        .await
        .map_err(|e| CliError::engine("opening admin", &e))?
        .describe_stream(&args.stream)
        .await
        .map_err(|e| CliError::engine(&format!("stream {:?}", args.stream), &e))?;
    let input: Box<dyn BufRead + Send> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?,
        )),
        None => std::mem::replace(&mut io.stdin, Box::new(std::io::empty())),
    };
    let (lines_tx, mut lines) = mpsc::channel::<Line>(1024);
    let shape = Shape {
        key: args.key.clone().map(Bytes::from),
        key_field: args.key_field.as_deref().map(json_pointer),
        headers: args
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), Bytes::from(v.clone())))
            .collect(),
    };
    // Reading blocks; a thread of its own lets lines typed at a terminal go out at once.
    let reader = tokio::task::spawn_blocking(move || read_lines(input, &shape, &lines_tx));
    let mut config = ProducerConfig::default();
    if let Some(batch) = args.batch {
        config = config.with_batch_records(usize::try_from(batch).unwrap_or(usize::MAX));
    }
    let producer = client
        .producer_with(config)
        .await
        .map_err(|e| CliError::engine("opening a producer", &e))?;
    let started = Instant::now();
    let mut confirmed = Confirmed::default();
    let mut handed_over = 0u64;
    let mut failure = None;
    while let Some(line) = lines.recv().await {
        let record = match line {
            Ok(record) => record,
            Err(why) => {
                failure = Some(CliError::usage(why));
                break;
            }
        };
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(handed_over as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        match producer.enqueue(&args.stream, record).await {
            Ok(handle) => confirmed.pending.push_back(handle),
            Err(e) => {
                failure = Some(CliError::engine(&format!("sending to {:?}", args.stream), &e));
                break;
            }
        }
        handed_over += 1;
        if confirmed.pending.len() > MAX_PENDING
            && let Some(oldest) = confirmed.pending.pop_front()
        {
            // Handles resolve out of order across partitions: the oldest may wait on a
            // partition that is away while the others resolve behind it. Waiting for it
            // bounds what resolved handles hold, besides the producer's buffer.
            let outcome = oldest.await;
            confirmed.take(outcome);
        }
        if let Err(e) = confirmed.collect_done(&args.stream) {
            failure = Some(e);
            break;
        }
    }
    drop(lines);
    let closed = producer.close().await;
    if let Err(e) = confirmed.wait_all(&args.stream).await {
        failure.get_or_insert(e);
    }
    let elapsed = started.elapsed().as_secs_f64();
    writeln!(
        io.stderr,
        "produced {} records to {} in {elapsed:.2} s",
        confirmed.count, args.stream
    )
    .map_err(|e| CliError::io("writing standard error", &e))?;
    if let Some(failure) = failure {
        // The reader may be blocked on a terminal; the process exit ends it.
        return Err(failure);
    }
    reader.await.map_err(|e| CliError {
        code: 1,
        message: format!("reading input failed: {e}"),
    })??;
    closed.map_err(|e| CliError::engine("closing the producer", &e))
}

/// Handles kept at most before the oldest is awaited.
const MAX_PENDING: usize = 100_000;

/// The records handed over, in order, until each is confirmed. The first failure ends
/// the run: a record cannot be resent behind the records of its key handed over after
/// it (the engine already retried what it could).
#[derive(Default)]
struct Confirmed {
    pending: VecDeque<DeliveryHandle>,
    count: u64,
    first_failure: Option<Error>,
}

impl Confirmed {
    /// Takes in the outcomes already known, oldest first.
    fn collect_done(&mut self, stream: &str) -> Result<(), CliError> {
        while let Some(handle) = self.pending.front_mut() {
            match handle.try_result() {
                None => break,
                Some(outcome) => {
                    self.pending.pop_front();
                    self.take(outcome);
                }
            }
        }
        self.failed(stream)
    }

    /// Waits for every outcome.
    async fn wait_all(&mut self, stream: &str) -> Result<(), CliError> {
        while let Some(handle) = self.pending.pop_front() {
            let outcome = handle.await;
            self.take(outcome);
        }
        self.failed(stream)
    }

    fn take(&mut self, outcome: tributary::Result<tributary::Delivery>) {
        match outcome {
            Ok(_) => self.count += 1,
            Err(e) => {
                self.first_failure.get_or_insert(e);
            }
        }
    }

    fn failed(&mut self, stream: &str) -> Result<(), CliError> {
        match self.first_failure.take() {
            None => Ok(()),
            Some(e) => Err(CliError::engine(
                &format!(
                    "sending to {stream:?} ({} record(s) confirmed before this failure)",
                    self.count
                ),
                &e,
            )),
        }
    }
}

/// How a line becomes a record.
struct Shape {
    key: Option<Bytes>,
    key_field: Option<String>,
    headers: Vec<(String, Bytes)>,
}

/// `a.b` as the JSON pointer `/a/b`.
fn json_pointer(field: &str) -> String {
    field
        .split('.')
        .map(|part| format!("/{}", part.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Reads lines until the input ends, the receiver is gone, or a line is malformed
/// (which is sent as the last item).
fn read_lines(
    mut input: Box<dyn BufRead + Send>,
    shape: &Shape,
    out: &mpsc::Sender<Line>,
) -> Result<(), CliError> {
    let mut number = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .map_err(|e| CliError::io("reading input", &e))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let item = to_record(&line, shape).map_err(|why| format!("line {number}: {why}"));
        let stop = item.is_err();
        if out.blocking_send(item).is_err() || stop {
            return Ok(());
        }
    }
}

fn to_record(line: &[u8], shape: &Shape) -> Result<Record, String> {
    let mut record = Record::new(Bytes::copy_from_slice(line));
    if let Some(pointer) = &shape.key_field {
        let value: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| format!("not JSON ({e}), but --key-field needs a JSON object"))?;
        let key = match value.pointer(pointer) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => {
                return Err(format!(
                    "no key field {:?} in {}",
                    pointer_to_field(pointer),
                    preview(line)
                ));
            }
            Some(other) => other.to_string(),
        };
        record = record.with_key(key);
    } else if let Some(key) = &shape.key {
        record = record.with_key(key.clone());
    }
    for (name, value) in &shape.headers {
        record = record.with_header(name.clone(), value.clone());
    }
    Ok(record)
}

fn pointer_to_field(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key_field: Option<&str>) -> Shape {
        Shape {
            key: None,
            key_field: key_field.map(json_pointer),
            headers: vec![("source".into(), Bytes::from_static(b"cli"))],
        }
    }

    #[test]
    fn keys_come_from_nested_fields_and_non_strings_are_json_text() {
        let r = to_record(br#"{"user":{"id":42},"n":1}"#, &shape(Some("user.id"))).unwrap_or_default();
        assert_eq!(r.key.as_deref(), Some(&b"42"[..]));
        assert_eq!(r.headers.get("source").map(|v| &v[..]), Some(&b"cli"[..]));
        let r = to_record(br#"{"user":"ann"}"#, &shape(Some("user"))).unwrap_or_default();
        assert_eq!(r.key.as_deref(), Some(&b"ann"[..]));
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        let e = to_record(b"not json", &shape(Some("user")))
            .err()
            .unwrap_or_default();
        assert!(e.contains("not JSON"), "{e}");
        let e = to_record(br#"{"other":1}"#, &shape(Some("user.id")))
            .err()
            .unwrap_or_default();
        assert!(e.contains("no key field \"user.id\""), "{e}");
    }
}
