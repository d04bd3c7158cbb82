//! Checked big-endian reader over one message: every read either succeeds or returns a
//! [`DecodeError`] naming the offset of the field it could not read. No indexing, no
//! unchecked arithmetic, no panics.

use super::{DecodeError, DecodeErrorKind};
use crate::Lsn;

/// The largest value PostgreSQL can send in one field (`MaxAllocSize - 1`, 1 GiB - 1). A
/// longer length cannot come from a real server, so it is reported as invalid rather than as
/// a truncation.
const MAX_FIELD_LEN: usize = 0x3fff_ffff;

pub(super) struct Reader<'a> {
    /// Unread part of the message.
    rest: &'a [u8],
    /// Length of the whole message, so that `offset = len - rest.len()`.
    len: usize,
}

/// Out of line so that the success path of every read stays small enough to inline.
#[cold]
#[inline(never)]
pub(super) fn error(offset: usize, kind: DecodeErrorKind) -> DecodeError {
    DecodeError { offset, kind }
}

impl<'a> Reader<'a> {
    #[inline]
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { rest: buf, len: buf.len() }
    }

    /// Offset of the next unread byte from the start of the message.
    #[inline]
    pub(super) fn offset(&self) -> usize {
        self.len - self.rest.len()
    }

    #[inline]
    pub(super) fn remaining(&self) -> usize {
        self.rest.len()
    }

    #[cold]
    #[inline(never)]
    fn truncated(&self, field: &'static str, size: usize) -> DecodeError {
        let needed = size.saturating_sub(self.rest.len());
        error(self.offset(), DecodeErrorKind::Truncated { field, needed })
    }

    #[inline]
    fn read_array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self.rest.split_first_chunk::<N>() {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(*head)
            }
            None => Err(self.truncated(field, N)),
        }
    }

    #[inline]
    pub(super) fn read_u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.read_array::<1>(field).map(|[b]| b)
    }

    #[inline]
    pub(super) fn read_i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.read_array(field).map(i16::from_be_bytes)
    }

    #[inline]
    pub(super) fn read_i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.read_array(field).map(i32::from_be_bytes)
    }

    /// An `Int32` that PostgreSQL sends for an unsigned 32-bit value (xid, OID).
    #[inline]
    pub(super) fn read_u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.read_array(field).map(u32::from_be_bytes)
    }

    #[inline]
    pub(super) fn read_i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.read_array(field).map(i64::from_be_bytes)
    }

    #[inline]
    pub(super) fn read_lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.read_array(field).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// Exactly `n` bytes, borrowed from the message.
    #[inline]
    pub(super) fn read_bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        match self.rest.split_at_checked(n) {
            Some((head, tail)) => {
                self.rest = tail;
                Ok(head)
            }
            None => Err(self.truncated(field, n)),
        }
    }

    /// An `Int32` length followed by that many bytes. A negative length or one larger than
    /// any PostgreSQL value is `InvalidLength` at the length field; a plausible length with
    /// too few bytes left is `Truncated` at the data.
    #[inline]
    pub(super) fn read_len_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.offset();
        let len = self.read_i32(field)?;
        let n = checked_len(len, MAX_FIELD_LEN).ok_or_else(|| invalid_length(at, len))?;
        self.read_bytes(n, field)
    }

    /// A non-negative `Int16` element count. The count is not trusted for anything but the
    /// loop bound: callers size allocations with [`Self::capacity_for`].
    #[inline]
    pub(super) fn read_count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let at = self.offset();
        let n = self.read_i16(field)?;
        usize::try_from(n).map_err(|_| invalid_length(at, n))
    }

    /// A non-negative `Int32` element count; see [`Self::read_count16`].
    #[inline]
    pub(super) fn read_count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let at = self.offset();
        let n = self.read_i32(field)?;
        checked_len(n, usize::MAX).ok_or_else(|| invalid_length(at, n))
    }

    /// A capacity for `count` elements of at least `min_size` bytes each that the remaining
    /// input could actually hold, so a forged count cannot cause a huge allocation.
    #[inline]
    pub(super) fn capacity_for(&self, count: usize, min_size: usize) -> usize {
        count.min(self.rest.len() / min_size.max(1))
    }

    /// A NUL-terminated UTF-8 string, without its terminator.
    #[inline]
    pub(super) fn read_cstr(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.offset();
        let nul = self.rest.iter().position(|&b| b == 0);
        let Some((s, [_nul, tail @ ..])) = nul.and_then(|n| self.rest.split_at_checked(n)) else {
            return Err(error(at, DecodeErrorKind::UnterminatedString));
        };
        self.rest = tail;
        std::str::from_utf8(s).map_err(|_| error(at, DecodeErrorKind::InvalidUtf8))
    }

    /// Ends the message: any unread byte is an error at the first such byte.
    #[inline]
    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(error(self.offset(), DecodeErrorKind::TrailingBytes(self.rest.len())))
        }
    }
}

#[inline]
fn checked_len(len: i32, max: usize) -> Option<usize> {
    usize::try_from(len).ok().filter(|&n| n <= max)
}

#[cold]
#[inline(never)]
fn invalid_length(offset: usize, len: impl Into<i64>) -> DecodeError {
    error(offset, DecodeErrorKind::InvalidLength(len.into()))
}
