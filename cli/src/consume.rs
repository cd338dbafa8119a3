//! `trib consume`: print a stream's records.

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::{Args, ValueEnum};
use tributary::{Client, ConsumerConfig, Offset, Received, StartFrom, Timestamp};

use crate::Io;
use crate::error::CliError;

/// Options of `trib consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The stream to read.
    pub stream: String,
    /// Read as a member of this consumer group: partitions are shared with the group's
    /// other members, reading resumes at the group's commits, and what was printed is
    /// committed. Without it, every partition is read independently and nothing is
    /// committed.
    #[arg(short, long)]
    pub group: Option<String>,
    /// Where to start (a group: partitions it has no commit for): earliest, latest,
    /// offset:N, time:2026-11-25T10:00:00Z, time:UNIX_MILLIS, or ago:DURATION (ago:15m).
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub from: StartFrom,
    /// How to print each record.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
    /// The template of --format template (implies it): {stream} {partition} {offset}
    /// {key} {value} {timestamp} {header.NAME}, escapes \n \t \\ and {{ }}.
    #[arg(short, long)]
    pub template: Option<String>,
    /// Stop after this many records.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// Keep waiting for new records (until interrupted or --count is reached).
    #[arg(short, long)]
    pub follow: bool,
    /// Without --follow: stop once no record arrived for this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The value's bytes, then a newline.
    Raw,
    /// One JSON object per line: stream, partition, offset, key, value, headers,
    /// timestamp (bytes that are not UTF-8 as {"base64": "..."}).
    Json,
    /// The --template text.
    Template,
}

/// Reads a start position.
pub(crate) fn parse_start(text: &str) -> Result<StartFrom, String> {
    let expected = "expected earliest, latest, offset:N, time:RFC3339, time:UNIX_MILLIS or ago:DURATION";
    match text.split_once(':') {
        None if text == "earliest" => Ok(StartFrom::Earliest),
        None if text == "latest" => Ok(StartFrom::Latest),
        Some(("offset", n)) => n
            .parse::<Offset>()
            .map(StartFrom::At)
            .map_err(|e| format!("bad offset {n:?}: {e}")),
        Some(("time", t)) => {
            if let Ok(millis) = t.parse::<i64>() {
                return Ok(StartFrom::Timestamp(Timestamp::from_millis(millis)));
            }
            let at = humantime::parse_rfc3339_weak(t).map_err(|e| format!("bad time {t:?}: {e}"))?;
            let millis = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| format!("time {t:?} is before 1970"))?
                .as_millis();
            Ok(StartFrom::Timestamp(Timestamp::from_millis(
                i64::try_from(millis).unwrap_or(i64::MAX),
            )))
        }
        Some(("ago", d)) => {
            let ago = humantime::parse_duration(d).map_err(|e| format!("bad duration {d:?}: {e}"))?;
            Ok(StartFrom::Timestamp(Timestamp::now().saturating_sub(ago)))
        }
        _ => Err(format!("{expected}, got {text:?}")),
    }
}

pub(crate) async fn run(args: ConsumeArgs, client: Client, io: &mut Io) -> Result<(), CliError> {
    let format = match (&args.template, args.format) {
        (Some(template), Format::Raw | Format::Template) => Printer::Template(Template::parse(template)?),
        (Some(_), Format::Json) => {
            return Err(CliError::usage(
                "--template goes with --format template, not json",
            ));
        }
        (None, Format::Template) => return Err(CliError::usage("--format template needs --template TEXT")),
        (None, Format::Raw) => Printer::Raw,
        (None, Format::Json) => Printer::Json,
    };
    let config = match &args.group {
        Some(group) => ConsumerConfig::group(&args.stream, group),
        None => ConsumerConfig::broadcast(&args.stream),
    }
    .start_from(args.from.clone());
    let mut consumer = client
        .consumer(config)
        .await
        .map_err(|e| CliError::engine(&format!("reading stream {:?}", args.stream), &e))?;
    let grouped = args.group.is_some();
    let started = Instant::now();
    let mut printed = 0u64;
    // Without --follow, the idle clock starts once partitions are assigned (joining a
    // group can take seconds), or after 30 s whatever happens.
    let mut idle_since: Option<Instant> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let outcome: Result<(), CliError> = async {
        loop {
            let remaining = args.count.map(|n| n.saturating_sub(printed));
            if remaining == Some(0) {
                return Ok(());
            }
            let max = remaining.map_or(500, |r| r.min(500) as usize);
            let batch = tokio::select! {
                biased;
                Ok(()) = &mut interrupted => return Ok(()),
                batch = consumer.poll(max, Duration::from_millis(250)) => {
                    batch.map_err(|e| CliError::engine(&format!("reading stream {:?}", args.stream), &e))?
                }
            };
            if batch.is_empty() {
                if !args.follow {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    let assigned =
                        !consumer.assignment().is_empty() || started.elapsed() > Duration::from_secs(30);
                    if !assigned {
                        idle_since = None;
                    } else if since.elapsed() >= args.idle {
                        return Ok(());
                    }
                }
                continue;
            }
            idle_since = None;
            for record in &batch {
                format
                    .print(record, &mut io.stdout)
                    .map_err(|e| CliError::io("writing standard output", &e))?;
            }
            io.stdout
                .flush()
                .map_err(|e| CliError::io("writing standard output", &e))?;
            printed += batch.len() as u64;
            if grouped {
                for record in &batch {
                    consumer
                        .ack(&record.partition, &record.offset)
                        .map_err(|e| CliError::engine("acknowledging", &e))?;
                }
                match consumer.commit().await {
                    Ok(()) => {}
                    // A rebalance took partitions away before their records were
                    // committed: they will be delivered again (to this member or
                    // another), which is worth saying but not worth stopping for.
                    Err(e) if e.kind() == tributary::ErrorKind::NotAssigned => {
                        let _ = writeln!(io.stderr, "warning: {e}");
                    }
                    Err(e) => return Err(CliError::engine("committing", &e)),
                }
            }
        }
    }
    .await;
    let closed = consumer.close().await;
    outcome?;
    closed.map_err(|e| CliError::engine("closing the consumer", &e))
}

enum Printer {
    Raw,
    Json,
    Template(Template),
}

impl Printer {
    fn print(&self, r: &Received, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Self::Raw => {
                out.write_all(&r.value)?;
                out.write_all(b"\n")
            }
            Self::Json => {
                let headers: serde_json::Map<String, serde_json::Value> = r
                    .headers
                    .iter()
                    .map(|(n, v)| (n.to_owned(), bytes_json(v)))
                    .collect();
                let line = serde_json::json!({
                    "stream": &*r.stream,
                    "partition": r.partition.as_str(),
                    "offset": r.offset.to_string(),
                    "key": r.key.as_deref().map(bytes_json),
                    "value": bytes_json(&r.value),
                    "headers": headers,
                    "timestamp": r.timestamp.map(Timestamp::as_millis),
                });
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")
            }
            Self::Template(t) => t.print(r, out),
        }
    }
}

/// Text when the bytes are UTF-8, else `{"base64": "..."}`.
fn bytes_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::Value::String(text.to_owned()),
        Err(_) => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// A parsed `--template`.
#[derive(Debug, PartialEq, Eq)]
struct Template(Vec<Part>);

#[derive(Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Stream,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Header(String),
}

impl Template {
    fn parse(text: &str) -> Result<Self, CliError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => literal.push('\n'),
                    Some('t') => literal.push('\t'),
                    Some('\\') => literal.push('\\'),
                    other => {
                        return Err(CliError::usage(format!(
                            "template {text:?}: unknown escape \\{}; use \\n, \\t or \\\\",
                            other.map(String::from).unwrap_or_default()
                        )));
                    }
                },
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(CliError::usage(format!(
                            "template {text:?}: {{{name} is not closed (write {{{{ for a lone {{)"
                        )));
                    }
                    let part = match name.as_str() {
                        "stream" => Part::Stream,
                        "partition" => Part::Partition,
                        "offset" => Part::Offset,
                        "key" => Part::Key,
                        "value" => Part::Value,
                        "timestamp" => Part::Timestamp,
                        _ => match name.strip_prefix("header.") {
                            Some(header) if !header.is_empty() => Part::Header(header.to_owned()),
                            _ => {
                                return Err(CliError::usage(format!(
                                    "template {text:?}: unknown placeholder {{{name}}}; known: {{stream}} \
                                     {{partition}} {{offset}} {{key}} {{value}} {{timestamp}} {{header.NAME}}"
                                )));
                            }
                        },
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                }
                '}' => {
                    return Err(CliError::usage(format!(
                        "template {text:?}: a lone }} (write }}}} for one)"
                    )));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self(parts))
    }

    fn print(&self, r: &Received, out: &mut dyn Write) -> std::io::Result<()> {
        for part in &self.0 {
            match part {
                Part::Text(t) => out.write_all(t.as_bytes())?,
                Part::Stream => out.write_all(r.stream.as_bytes())?,
                Part::Partition => out.write_all(r.partition.as_str().as_bytes())?,
                Part::Offset => write!(out, "{}", r.offset)?,
                Part::Key => out.write_all(r.key.as_deref().unwrap_or_default())?,
                Part::Value => out.write_all(&r.value)?,
                Part::Timestamp => {
                    if let Some(t) = r.timestamp {
                        write!(out, "{}", t.as_millis())?;
                    }
                }
                Part::Header(name) => out.write_all(r.headers.get(name).map_or(&[][..], |v| &v[..]))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_placeholders_escapes_and_braces() {
        let t = Template::parse(r"{partition}:{offset} {{{key}}}\t{header.trace}\n").ok();
        assert_eq!(
            t,
            Some(Template(vec![
                Part::Partition,
                Part::Text(":".into()),
                Part::Offset,
                Part::Text(" {".into()),
                Part::Key,
                Part::Text("}\t".into()),
                Part::Header("trace".into()),
                Part::Text("\n".into()),
            ]))
        );
        for bad in ["{nope}", r"\q", "a } b", "{header.}", "{value"] {
            let e = Template::parse(bad).err().map(|e| (e.code, e.message));
            assert!(
                matches!(&e, Some((2, m)) if m.contains("template")),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(parse_start("offset:42"), Ok(StartFrom::At(Offset::new(42))));
        assert_eq!(
            parse_start("time:1700000000000"),
            Ok(StartFrom::Timestamp(Timestamp::from_millis(1_700_000_000_000)))
        );
        assert_eq!(
            parse_start("time:2023-11-14T22:13:20Z"),
            Ok(StartFrom::Timestamp(Timestamp::from_millis(1_700_000_000_000)))
        );
        assert!(matches!(parse_start("ago:5m"), Ok(StartFrom::Timestamp(_))));
        for bad in ["first", "offset:x", "time:yesterday", "ago:soon"] {
            assert!(parse_start(bad).is_err(), "{bad}");
        }
    }
}
