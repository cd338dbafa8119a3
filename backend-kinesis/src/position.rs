//! Kinesis positions as Tributary offsets.
//!
//! An offset is the record's sequence number followed by six digits of sub-sequence
//! number: the index of a user record inside a KPL aggregate, `000000` for a record
//! that is not aggregated. So offsets order exactly as Kinesis and KCL order records
//! (sequence number, then sub-sequence), and every user record of an aggregate has an
//! offset of its own to acknowledge.

use std::str::FromStr;

use tributary_core::{Error, Offset, Result};

/// Digits of sub-sequence number at the end of an offset.
const SUB_DIGITS: usize = 6;
/// One more than the largest sub-sequence number an offset holds.
pub(crate) const MAX_SUB_SEQUENCE: u32 = 1_000_000;

/// A Kinesis record position: sequence number and sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KinesisPosition {
    /// The sequence number Kinesis gave the record (decimal).
    pub sequence_number: String,
    /// The user record's index inside a KPL aggregate; 0 otherwise.
    pub sub_sequence: u32,
}

impl KinesisPosition {
    /// The position of a record that is not aggregated.
    pub fn new(sequence_number: impl Into<String>) -> Self {
        Self {
            sequence_number: sequence_number.into(),
            sub_sequence: 0,
        }
    }

    /// This position as an offset.
    ///
    /// # Errors
    /// `InvalidInput` for a sequence number that is not a decimal number or a
    /// sub-sequence number of a million or more.
    pub fn to_offset(&self) -> Result<Offset> {
        let digits_ok = !self.sequence_number.is_empty()
            && self.sequence_number.bytes().all(|b| b.is_ascii_digit())
            && !self.sequence_number.starts_with('0');
        if !digits_ok {
            return Err(Error::invalid_input(format!(
                "{:?} is not a Kinesis sequence number",
                self.sequence_number
            )));
        }
        if self.sub_sequence >= MAX_SUB_SEQUENCE {
            return Err(Error::invalid_input(format!(
                "sub-sequence number {} is out of range (below {MAX_SUB_SEQUENCE})",
                self.sub_sequence
            )));
        }
        Offset::from_str(&format!("{}{:06}", self.sequence_number, self.sub_sequence))
    }

    /// The position an offset stands for.
    ///
    /// # Errors
    /// `InvalidInput` for an offset that no Kinesis record has.
    pub fn from_offset(offset: &Offset) -> Result<Self> {
        let text = offset.to_string();
        if text.len() <= SUB_DIGITS {
            return Err(Error::invalid_input(format!(
                "offset {text} is not a Kinesis offset (sequence number followed by {SUB_DIGITS} digits)"
            )));
        }
        let (sequence, sub) = text.split_at(text.len() - SUB_DIGITS);
        let sub_sequence = sub
            .parse()
            .map_err(|_| Error::invalid_input(format!("offset {text} is not a Kinesis offset")))?;
        Ok(Self {
            sequence_number: sequence.to_string(),
            sub_sequence,
        })
    }
}

/// The offset of a record that is not aggregated, for sequence numbers from Kinesis.
pub(crate) fn offset_of(sequence_number: &str, sub_sequence: u32) -> Result<Offset> {
    KinesisPosition {
        sequence_number: sequence_number.to_string(),
        sub_sequence,
    }
    .to_offset()
    .map_err(|e| {
        Error::new(
            tributary_core::ErrorKind::Corruption,
            format!("Kinesis returned {}", e.message()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_roundtrip_and_order_like_kinesis() -> Result<()> {
        let a = "49590338271490256608559692538361571095921575989136588898";
        let b = "49590338271490256608559692540925702759324208523137515618";
        let positions = [
            KinesisPosition::new(a),
            KinesisPosition {
                sequence_number: a.into(),
                sub_sequence: 1,
            },
            KinesisPosition {
                sequence_number: a.into(),
                sub_sequence: 999_999,
            },
            KinesisPosition::new(b),
        ];
        let offsets: Vec<Offset> = positions
            .iter()
            .map(KinesisPosition::to_offset)
            .collect::<Result<_>>()?;
        for pair in offsets.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
        }
        for (p, o) in positions.iter().zip(&offsets) {
            assert_eq!(&KinesisPosition::from_offset(o)?, p);
        }
        Ok(())
    }

    #[test]
    fn bad_positions_are_refused() {
        assert!(KinesisPosition::new("12a").to_offset().is_err());
        assert!(KinesisPosition::new("").to_offset().is_err());
        assert!(KinesisPosition::from_offset(&Offset::new(12)).is_err());
        let too_big = KinesisPosition {
            sequence_number: "1".into(),
            sub_sequence: MAX_SUB_SEQUENCE,
        };
        assert!(too_big.to_offset().is_err());
    }
}
