//! The opt-in envelope that carries headers and the event timestamp inside a Kinesis
//! record's data, which has room for neither.
//!
//! Version 1 layout, all integers big-endian:
//!
//! ```text
//! magic      4 bytes  00 54 52 42 ("\0TRB")
//! version    1 byte   01
//! flags      1 byte   bit 0: an event timestamp follows
//! timestamp  8 bytes  milliseconds since the Unix epoch, signed (only with bit 0)
//! count      2 bytes  number of headers
//! headers    count × (name length: 2 bytes, name: UTF-8, value length: 4 bytes, value)
//! value      the rest: the record's value, unchanged
//! ```
//!
//! A reader with the envelope on delivers data without the magic as it is (records
//! from other producers); data with the magic that does not parse, or of a newer
//! version, is delivered as it is too, with a warning, so one odd record never blocks a
//! shard.

use bytes::{BufMut, Bytes, BytesMut};
use tributary_core::{Headers, Timestamp};

const MAGIC: [u8; 4] = *b"\0TRB";
const VERSION: u8 = 1;
const HAS_TIMESTAMP: u8 = 1;

/// The envelope's size for these headers and timestamp, without the value.
pub(crate) fn overhead(headers: &Headers, timestamp: Option<Timestamp>) -> usize {
    let fixed = MAGIC.len() + 2 + 2 + if timestamp.is_some() { 8 } else { 0 };
    fixed
        + headers
            .iter()
            .map(|(name, value)| 2 + name.len() + 4 + value.len())
            .sum::<usize>()
}

/// Wraps a value with its headers and timestamp.
///
/// # Errors
/// A message when there are more than 65,535 headers, a name is longer than 65,535
/// bytes or a value longer than 4 GiB.
pub(crate) fn wrap(value: &Bytes, headers: &Headers, timestamp: Option<Timestamp>) -> Result<Bytes, String> {
    let count = u16::try_from(headers.len()).map_err(|_| {
        format!(
            "{} headers do not fit the envelope (at most 65535)",
            headers.len()
        )
    })?;
    let mut out = BytesMut::with_capacity(overhead(headers, timestamp) + value.len());
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(if timestamp.is_some() { HAS_TIMESTAMP } else { 0 });
    if let Some(t) = timestamp {
        out.put_i64(t.as_millis());
    }
    out.put_u16(count);
    for (name, value) in headers.iter() {
        let name_len = u16::try_from(name.len())
            .map_err(|_| format!("header name of {} bytes is too long (at most 65535)", name.len()))?;
        let value_len = u32::try_from(value.len()).map_err(|_| {
            format!(
                "header {name:?} has a value of {} bytes (at most 4 GiB)",
                value.len()
            )
        })?;
        out.put_u16(name_len);
        out.put_slice(name.as_bytes());
        out.put_u32(value_len);
        out.put_slice(value);
    }
    out.put_slice(value);
    Ok(out.freeze())
}

/// What a record's data holds once unwrapped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unwrapped {
    pub(crate) value: Bytes,
    pub(crate) headers: Headers,
    pub(crate) timestamp: Option<Timestamp>,
}

/// Unwraps data written by [`wrap`]; data without the envelope comes back as the value.
pub(crate) fn unwrap(data: Bytes) -> Unwrapped {
    if !data.starts_with(&MAGIC) {
        return plain(data);
    }
    match parse(&data) {
        Ok(unwrapped) => unwrapped,
        Err(why) => {
            tracing::warn!("a record starts like a Tributary envelope but {why}: delivered as it is");
            plain(data)
        }
    }
}

fn plain(value: Bytes) -> Unwrapped {
    Unwrapped {
        value,
        headers: Headers::new(),
        timestamp: None,
    }
}

fn parse(data: &Bytes) -> Result<Unwrapped, String> {
    let mut at = MAGIC.len();
    let mut take = |n: usize| -> Result<Bytes, String> {
        let end = at
            .checked_add(n)
            .filter(|&end| end <= data.len())
            .ok_or("is truncated")?;
        let out = data.slice(at..end);
        at = end;
        Ok(out)
    };
    let head = take(2)?;
    let (version, flags) = (head[0], head[1]);
    if version != VERSION {
        return Err(format!(
            "has envelope version {version}, newer than this reader's {VERSION}"
        ));
    }
    if flags & !HAS_TIMESTAMP != 0 {
        return Err(format!("has unknown envelope flags {flags:#04x}"));
    }
    let timestamp = if flags & HAS_TIMESTAMP != 0 {
        let raw = take(8)?;
        let mut millis = [0u8; 8];
        millis.copy_from_slice(&raw);
        Some(Timestamp::from_millis(i64::from_be_bytes(millis)))
    } else {
        None
    };
    let count = be_u16(&take(2)?);
    let mut headers = Headers::new();
    for _ in 0..count {
        let name_len = usize::from(be_u16(&take(2)?));
        let name =
            String::from_utf8(take(name_len)?.to_vec()).map_err(|_| "has a header name that is not UTF-8")?;
        let value_len = usize::try_from(be_u32(&take(4)?)).map_err(|_| "has an oversized header")?;
        headers.push(name, take(value_len)?);
    }
    let value = data.slice(at..);
    Ok(Unwrapped {
        value,
        headers,
        timestamp,
    })
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])
}

fn be_u32(b: &[u8]) -> u32 {
    let mut raw = [0u8; 4];
    for (i, byte) in b.iter().take(4).enumerate() {
        raw[i] = *byte;
    }
    u32::from_be_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_and_without_headers() -> Result<(), String> {
        let mut headers = Headers::new();
        headers.push("content-type", Bytes::from_static(b"text/plain"));
        headers.push("ünï 🎉", Bytes::from_static(&[0, 255]));
        headers.push("empty", Bytes::new());
        headers.push("content-type", Bytes::from_static(b"dup"));
        let value = Bytes::from_static(b"\0TRB payload that looks like an envelope");
        for (h, t) in [
            (headers.clone(), Some(Timestamp::from_millis(-5))),
            (Headers::new(), None),
            (headers, None),
        ] {
            let wrapped = wrap(&value, &h, t)?;
            assert_eq!(wrapped.len(), overhead(&h, t) + value.len());
            assert_eq!(
                unwrap(wrapped),
                Unwrapped {
                    value: value.clone(),
                    headers: h,
                    timestamp: t
                }
            );
        }
        Ok(())
    }

    #[test]
    fn foreign_and_damaged_data_is_delivered_as_it_is() -> Result<(), String> {
        let foreign = Bytes::from_static(b"{\"from\":\"another producer\"}");
        assert_eq!(unwrap(foreign.clone()).value, foreign);
        let mut headers = Headers::new();
        headers.push("h", Bytes::from_static(b"v"));
        let wrapped = wrap(&Bytes::from_static(b"x"), &headers, None)?;
        for cut in MAGIC.len()..wrapped.len() - 1 {
            let damaged = wrapped.slice(..cut);
            let got = unwrap(damaged.clone());
            assert_eq!(got.value, damaged, "cut at {cut}");
        }
        let mut newer = wrapped.to_vec();
        newer[4] = 2;
        assert_eq!(unwrap(Bytes::from(newer.clone())).value, Bytes::from(newer));
        Ok(())
    }

    #[test]
    fn random_data_never_panics() {
        for _ in 0..2000 {
            let len = fastrand::usize(..64);
            let mut data: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
            if fastrand::bool() {
                data.splice(0..0, MAGIC.iter().copied().chain([VERSION]));
            }
            let _ = unwrap(Bytes::from(data));
        }
    }
}
