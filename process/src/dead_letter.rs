//! The record a processor writes to its dead-letter stream for a record it gave up on.

use tributary_core::{Error, Received, Record, Timestamp};

/// Header names a dead-letter record carries, after the source record's own headers.
pub mod headers {
    /// The engine the record was read from (`kafka`, `kinesis`, `native`, `memory`, ...).
    pub const ENGINE: &str = "tributary.dead-letter.engine";
    /// The stream it was read from.
    pub const STREAM: &str = "tributary.dead-letter.stream";
    /// Its partition (or shard).
    pub const PARTITION: &str = "tributary.dead-letter.partition";
    /// Its offset (or sequence number).
    pub const OFFSET: &str = "tributary.dead-letter.offset";
    /// The last error, as text.
    pub const ERROR: &str = "tributary.dead-letter.error";
    /// Why it was given up: `handler` (the handler kept failing) or `decode` (its value
    /// could not be decoded).
    pub const REASON: &str = "tributary.dead-letter.reason";
    /// How many times the handler ran on it (0 for a record that could not be decoded).
    pub const ATTEMPTS: &str = "tributary.dead-letter.attempts";
    /// When it first failed, in milliseconds since the Unix epoch.
    pub const FIRST_FAILURE: &str = "tributary.dead-letter.first-failure-ms";
}

/// Why a record went to the dead-letter stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    Handler,
    Decode,
}

/// The record to write for `source`, given up for `reason` after `attempts` handler
/// runs: its key, value and headers as read, its timestamp when it had one, and
/// headers naming where it came from and why it is here.
pub(crate) fn dead_letter(
    engine: &str,
    source: &Received,
    reason: Reason,
    error: &dyn std::fmt::Display,
    attempts: u32,
    first_failure: Timestamp,
) -> Record {
    let mut record = Record::new(source.value.clone());
    record.key = source.key.clone();
    record.headers = source.headers.clone();
    record.timestamp = source.timestamp;
    let reason = match reason {
        Reason::Handler => "handler",
        Reason::Decode => "decode",
    };
    let fields = [
        (headers::ENGINE, engine.to_string()),
        (headers::STREAM, source.stream.to_string()),
        (headers::PARTITION, source.partition.to_string()),
        (headers::OFFSET, source.offset.to_string()),
        (headers::ERROR, error.to_string()),
        (headers::REASON, reason.to_string()),
        (headers::ATTEMPTS, attempts.to_string()),
        (headers::FIRST_FAILURE, first_failure.as_millis().to_string()),
    ];
    for (name, value) in fields {
        record.headers.push(name, value.into_bytes());
    }
    record
}

/// The error a processor stops with when it gives a record up and has no dead-letter
/// stream to put it in.
pub(crate) fn nowhere_to_put(source: &Received, error: &dyn std::fmt::Display, attempts: u32) -> Error {
    Error::new(
        tributary_core::ErrorKind::InvalidInput,
        format!(
            "record {}/{}@{} failed after {attempts} attempt(s) and the processor has no dead-letter stream, so it stops rather than skip it: {error}",
            source.stream, source.partition, source.offset
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tributary_core::{Bytes, Headers, Offset, PartitionId};

    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_record_and_names_its_source_and_failure() {
        let mut source_headers = Headers::default();
        source_headers.push("trace", Bytes::from_static(b"t-1"));
        let source = Received {
            stream: Arc::from("orders"),
            partition: PartitionId::from_index(3),
            offset: Offset::new(42),
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(b"payload"),
            headers: source_headers,
            timestamp: Some(Timestamp::from_millis(5)),
        };
        let record = dead_letter(
            "kafka",
            &source,
            Reason::Handler,
            &"boom",
            4,
            Timestamp::from_millis(1_000),
        );
        assert_eq!(record.value, source.value);
        assert_eq!(record.key, source.key);
        assert_eq!(record.timestamp, source.timestamp);
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("trace").as_deref(),
            Some("t-1"),
            "the source's headers are kept"
        );
        assert_eq!(header(headers::ENGINE).as_deref(), Some("kafka"));
        assert_eq!(header(headers::STREAM).as_deref(), Some("orders"));
        assert_eq!(header(headers::PARTITION), Some(source.partition.to_string()));
        assert_eq!(header(headers::OFFSET), Some(source.offset.to_string()));
        assert_eq!(header(headers::ERROR).as_deref(), Some("boom"));
        assert_eq!(header(headers::REASON).as_deref(), Some("handler"));
        assert_eq!(header(headers::ATTEMPTS).as_deref(), Some("4"));
        assert_eq!(header(headers::FIRST_FAILURE).as_deref(), Some("1000"));
        let stop = nowhere_to_put(&source, &"boom", 4);
        assert!(stop.message().contains("orders/"), "{stop}");
        assert!(stop.message().contains("boom"), "{stop}");
    }
}
