//! The one refusal every engine gives a broadcast consumer asked to `ack` or `commit`.

use crate::error::{Error, Result};

/// What a broadcast consumer is asked to do that needs a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupOperation {
    /// `Consumer::ack`.
    Ack,
    /// `Consumer::commit` and the commits it makes on close.
    Commit,
}

/// The consumer's group state, or the `Unsupported` error a broadcast consumer gives
/// for `operation` (`member` is `None` for a broadcast consumer), with the same words
/// on every engine.
///
/// # Errors
///
/// `Unsupported` when `member` is `None`.
pub fn group_only<T>(member: Option<T>, operation: GroupOperation) -> Result<T> {
    member.ok_or_else(|| {
        let verb = match operation {
            GroupOperation::Ack => "acknowledge to",
            GroupOperation::Commit => "commit to",
        };
        Error::unsupported(format!(
            "a broadcast consumer has no group to {verb}; use ConsumerConfig::group"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn a_member_passes_and_a_broadcast_reader_is_refused_by_operation() {
        assert_eq!(group_only(Some(7), GroupOperation::Ack).unwrap(), 7);
        let ack = group_only(None::<u8>, GroupOperation::Ack).unwrap_err();
        assert_eq!(ack.kind(), ErrorKind::Unsupported);
        assert!(ack.to_string().contains("no group to acknowledge to"), "{ack}");
        let commit = group_only(None::<u8>, GroupOperation::Commit).unwrap_err();
        assert!(
            commit
                .to_string()
                .contains("no group to commit to; use ConsumerConfig::group"),
            "{commit}"
        );
    }
}
