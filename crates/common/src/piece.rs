//! Piece math: how a task of a given length is cut into fixed-size pieces.
//!
//! Piece length follows Dragonfly's rule: `next_power_of_two(len / 500)` clamped to
//! [`MIN_PIECE_LENGTH`, `MAX_PIECE_LENGTH`], so a task has at most ~500 pieces and
//! small files are one piece.

/// Smallest piece length chosen automatically (4 MiB).
pub const MIN_PIECE_LENGTH: u64 = 4 * 1024 * 1024;
/// Largest piece length chosen automatically (64 MiB).
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;
/// Target number of pieces per task when choosing a piece length.
const TARGET_PIECE_COUNT: u64 = 500;

/// The piece length for content of `content_length` bytes.
pub fn piece_length_for(content_length: u64) -> u64 {
    (content_length / TARGET_PIECE_COUNT)
        .max(1)
        .checked_next_power_of_two()
        .unwrap_or(MAX_PIECE_LENGTH)
        .clamp(MIN_PIECE_LENGTH, MAX_PIECE_LENGTH)
}

/// One piece of a task: its number and the byte range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PieceRange {
    /// Zero-based piece number.
    pub number: u32,
    /// Offset of the first byte in the content.
    pub offset: u64,
    /// Length in bytes (the last piece may be short).
    pub length: u64,
}

impl PieceRange {
    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }

    /// The HTTP `Range` header value for this piece (`bytes=first-last`).
    pub fn http_range(&self) -> String {
        format!("bytes={}-{}", self.offset, self.end().saturating_sub(1))
    }
}

/// How a task of known length is laid out in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceLayout {
    content_length: u64,
    piece_length: u64,
}

/// A piece layout that cannot exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Piece length zero.
    #[error("piece length must be greater than zero")]
    ZeroPieceLength,
    /// More pieces than a u32 can number.
    #[error(
        "{content_length} bytes in pieces of {piece_length} bytes is more than {} pieces",
        u32::MAX
    )]
    TooManyPieces {
        /// Content length asked for.
        content_length: u64,
        /// Piece length asked for.
        piece_length: u64,
    },
}

impl PieceLayout {
    /// A layout with the automatic piece length for this content length.
    pub fn auto(content_length: u64) -> Self {
        Self {
            content_length,
            piece_length: piece_length_for(content_length),
        }
    }

    /// A layout with an explicit piece length.
    pub fn new(content_length: u64, piece_length: u64) -> Result<Self, LayoutError> {
        if piece_length == 0 {
            return Err(LayoutError::ZeroPieceLength);
        }
        if content_length.div_ceil(piece_length) > u64::from(u32::MAX) {
            return Err(LayoutError::TooManyPieces {
                content_length,
                piece_length,
            });
        }
        Ok(Self {
            content_length,
            piece_length,
        })
    }

    /// Total content length in bytes.
    pub fn content_length(&self) -> u64 {
        self.content_length
    }

    /// Length of every piece but possibly the last.
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    /// Number of pieces (zero for empty content).
    pub fn piece_count(&self) -> u32 {
        // new() and auto() bound this: auto's piece length >= 4 MiB keeps any u64 length in range
        // only up to 16 PiB, so saturate rather than wrap beyond that.
        u32::try_from(self.content_length.div_ceil(self.piece_length)).unwrap_or(u32::MAX)
    }

    /// The range of piece `number`, or `None` past the end.
    pub fn piece(&self, number: u32) -> Option<PieceRange> {
        let offset = u64::from(number).checked_mul(self.piece_length)?;
        if offset >= self.content_length {
            return None;
        }
        Some(PieceRange {
            number,
            offset,
            length: self.piece_length.min(self.content_length - offset),
        })
    }

    /// The piece that holds byte `offset`, or `None` past the end.
    pub fn piece_at(&self, offset: u64) -> Option<PieceRange> {
        let number = u32::try_from(offset / self.piece_length).ok()?;
        self.piece(number)
    }

    /// All pieces in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceRange> + '_ {
        (0..self.piece_count()).filter_map(|n| self.piece(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn piece_length_rule() {
        assert_eq!(piece_length_for(0), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(1), MIN_PIECE_LENGTH);
        assert_eq!(piece_length_for(1 << 30), MIN_PIECE_LENGTH); // 1 GiB / 500 = 2.1 MB -> 4 MiB
        assert_eq!(piece_length_for(4 << 30), 16 << 20); // 8.6 MB -> 16 MiB
        assert_eq!(piece_length_for(100 << 30), MAX_PIECE_LENGTH);
        assert_eq!(piece_length_for(u64::MAX), MAX_PIECE_LENGTH);
    }

    #[test]
    fn empty_content_has_no_pieces() {
        let layout = PieceLayout::auto(0);
        assert_eq!(layout.piece_count(), 0);
        assert_eq!(layout.pieces().count(), 0);
        assert_eq!(layout.piece(0), None);
    }

    #[test]
    fn bad_layouts_are_errors() {
        assert_eq!(PieceLayout::new(10, 0), Err(LayoutError::ZeroPieceLength));
        assert!(matches!(
            PieceLayout::new(u64::MAX, 1),
            Err(LayoutError::TooManyPieces { .. })
        ));
    }

    #[test]
    fn http_range_is_inclusive() {
        let layout = PieceLayout::new(10, 4).unwrap();
        let ranges: Vec<_> = layout.pieces().map(|p| p.http_range()).collect();
        assert_eq!(ranges, ["bytes=0-3", "bytes=4-7", "bytes=8-9"]);
    }

    proptest! {
        #[test]
        fn pieces_cover_content_exactly(len in 0u64..(1 << 40), pl_exp in 9u32..27) {
            let layout = PieceLayout::new(len, 1 << pl_exp).unwrap();
            let mut next = 0u64;
            let mut count = 0u32;
            for p in layout.pieces().take(100_000) {
                prop_assert_eq!(p.number, count);
                prop_assert_eq!(p.offset, next, "gap or overlap before piece {}", p.number);
                prop_assert!(p.length > 0);
                prop_assert!(p.length <= layout.piece_length());
                next = p.end();
                count += 1;
            }
            if layout.piece_count() <= 100_000 {
                prop_assert_eq!(next, len);
                prop_assert_eq!(count, layout.piece_count());
            }
        }

        #[test]
        fn only_last_piece_is_short(len in 1u64..(1 << 36)) {
            let layout = PieceLayout::auto(len);
            let last = layout.piece(layout.piece_count() - 1).unwrap();
            prop_assert_eq!(last.end(), len);
            prop_assert_eq!(last.length, len - (u64::from(layout.piece_count()) - 1) * layout.piece_length());
            if layout.piece_count() > 1 {
                let before = layout.piece(layout.piece_count() - 2).unwrap();
                prop_assert_eq!(before.length, layout.piece_length());
            }
            prop_assert!(layout.piece(layout.piece_count()).is_none());
        }

        #[test]
        fn piece_at_finds_the_covering_piece(len in 1u64..(1 << 36), frac in 0.0f64..1.0) {
            let layout = PieceLayout::auto(len);
            let off = ((len as f64) * frac) as u64 % len;
            let p = layout.piece_at(off).unwrap();
            prop_assert!(p.offset <= off && off < p.end());
        }

        #[test]
        fn auto_piece_length_is_bounded_power_of_two(len in any::<u64>()) {
            let pl = piece_length_for(len);
            prop_assert!(pl.is_power_of_two());
            prop_assert!((MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&pl));
        }
    }
}
