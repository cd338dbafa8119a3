//! `trib produce`: each line of standard input or a file becomes one record.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use tokio::sync::mpsc;
use tributary::{Client, ErrorKind, Producer, Record};

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
    /// Most records per send (lines waiting are sent together).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub batch: u64,
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
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let batch = args.rate.map_or(batch, |rate| {
        batch.min(usize::try_from(rate / 20).unwrap_or(1).max(1))
    });
    let (lines_tx, mut lines) = mpsc::channel::<Line>(batch * 2);
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
    let producer = client
        .producer()
        .await
        .map_err(|e| CliError::engine("opening a producer", &e))?;
    let started = Instant::now();
    let mut produced = 0u64;
    let mut failure = None;
    while let Some(first) = lines.recv().await {
        let mut records = Vec::with_capacity(batch);
        let mut bad_line = None;
        match first {
            Ok(record) => records.push(record),
            Err(why) => bad_line = Some(why),
        }
        while bad_line.is_none() && records.len() < batch {
            match lines.try_recv() {
                Ok(Ok(record)) => records.push(record),
                Ok(Err(why)) => bad_line = Some(why),
                Err(_) => break,
            }
        }
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64(produced as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let count = records.len() as u64;
        if let Err(e) = send(&*producer, &args.stream, records).await {
            failure = Some(e);
            break;
        }
        produced += count;
        if let Some(why) = bad_line {
            failure = Some(CliError::usage(why));
            break;
        }
    }
    drop(lines);
    let closed = producer.close().await;
    let elapsed = started.elapsed().as_secs_f64();
    writeln!(
        io.stderr,
        "produced {produced} records to {} in {elapsed:.2} s",
        args.stream
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

/// Sends one batch, resending what a retryable failure hands back.
async fn send(producer: &dyn Producer, stream: &str, mut records: Vec<Record>) -> Result<(), CliError> {
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=10 {
        match producer.send(stream, records).await {
            Ok(_) => return Ok(()),
            Err(failed)
                if failed.is_retryable() && failed.kind() != ErrorKind::Indeterminate && attempt < 10 =>
            {
                tracing::warn!(error = %failed.error, unsent = failed.unsent.len(), "send failed; retrying");
                records = failed.unsent;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(failed) => {
                return Err(CliError::engine(
                    &format!(
                        "sending to {stream:?} ({} of the batch confirmed, {} not)",
                        failed.delivered.len(),
                        failed.unsent.len()
                    ),
                    &failed.error,
                ));
            }
        }
    }
    Ok(())
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
