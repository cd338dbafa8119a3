//! A durable mark: a few numbers in two CRC-checked slots written in turn without a sync
//! of their own. A torn or lost write leaves the older slot, so a mark read back never
//! claims more than was once written; marks say how far data was synced, for recovery
//! to tell lost synced data from an unsynced tail.

/// Bytes of one slot holding `words` numbers: magic, CRC-32C, sequence, the numbers.
pub(crate) const fn slot_len(words: usize) -> usize {
    16 + 8 * words
}

/// One slot: `magic`, the CRC-32C of the rest, `seq` and `words`, little-endian.
pub(crate) fn encode<const N: usize>(magic: [u8; 4], seq: u64, words: [u64; N]) -> Vec<u8> {
    let mut slot = vec![0u8; slot_len(N)];
    slot[0..4].copy_from_slice(&magic);
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    for (i, w) in words.iter().enumerate() {
        slot[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
    }
    let crc = crc32c::crc32c(&slot[8..]);
    slot[4..8].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The newest valid slot of the first two in `bytes`: (sequence, numbers).
pub(crate) fn decode<const N: usize>(magic: [u8; 4], bytes: &[u8]) -> Option<(u64, [u64; N])> {
    let word = |slot: &[u8], at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().unwrap_or([0; 8]));
    bytes
        .chunks_exact(slot_len(N))
        .take(2)
        .filter(|slot| slot[0..4] == magic)
        .filter(|slot| slot[4..8] == crc32c::crc32c(&slot[8..]).to_le_bytes())
        .map(|slot| (word(slot, 8), std::array::from_fn(|i| word(slot, 16 + 8 * i))))
        .max_by_key(|(seq, _)| *seq)
}

/// Where slot `seq` goes: the slots alternate.
pub(crate) fn position(seq: u64, words: usize) -> u64 {
    (seq % 2) * slot_len(words) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 4] = *b"TST\x01";

    #[test]
    fn the_newest_valid_slot_wins() {
        let mut file = vec![0u8; 2 * slot_len(2)];
        let at = |seq| usize::try_from(position(seq, 2)).unwrap_or(0);
        file[at(4)..at(4) + slot_len(2)].copy_from_slice(&encode(MAGIC, 4, [1, 2]));
        file[at(5)..at(5) + slot_len(2)].copy_from_slice(&encode(MAGIC, 5, [3, 4]));
        assert_eq!(decode::<2>(MAGIC, &file), Some((5, [3, 4])));
        file[at(5) + 20] ^= 1;
        assert_eq!(decode::<2>(MAGIC, &file), Some((4, [1, 2])), "a torn newer slot");
        file[at(4) + 17] ^= 1;
        assert_eq!(decode::<2>(MAGIC, &file), None);
        assert_eq!(
            decode::<2>(*b"XXX\x01", &encode(MAGIC, 1, [1, 2])),
            None,
            "another mark"
        );
        assert_eq!(decode::<2>(MAGIC, &file[..5]), None);
    }
}
