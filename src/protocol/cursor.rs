//! A checked reader over a message body, and the lazy iterators handed out by validated views.
//!
//! Every read returns `Result<_, DecodeError>`; nothing here indexes or unwraps. Views run the
//! cursor over the whole body once in `decode`; the iterators below re-walk regions that were
//! already validated, so they simply stop (return `None`) if the impossible happens.

use super::DecodeError;

/// Checked big-endian reader over a borrowed body. `tag` is only used in errors (0 = startup).
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    tag: u8,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(tag: u8, buf: &'a [u8]) -> Self {
        Cursor { buf, tag }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn eof(&self, what: &'static str) -> DecodeError {
        DecodeError::UnexpectedEof {
            tag: self.tag,
            what,
        }
    }

    pub(crate) fn invalid(&self, what: &'static str, value: impl Into<i64>) -> DecodeError {
        DecodeError::InvalidValue {
            tag: self.tag,
            what,
            value: value.into(),
        }
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(self.eof(what))?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self.buf.split_first_chunk::<N>().ok_or(self.eof(what))?;
        self.buf = tail;
        Ok(*head)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    /// A NUL-terminated string; returns it without the NUL and consumes the NUL.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul {
                tag: self.tag,
                what,
            })?;
        let s = self.bytes(nul, what)?;
        self.bytes(1, what)?;
        Ok(s)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Result<&'a [u8], DecodeError> {
        Ok(std::mem::take(&mut self.buf))
    }

    /// Succeeds only if everything was read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                tag: self.tag,
                extra: self.buf.len(),
            })
        }
    }

    /// A 16-bit element count (the wire says Int16; PostgreSQL and libpq read it unsigned).
    pub(crate) fn count(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.u16(what)
    }

    /// `n` fixed-size elements as one raw region.
    pub(crate) fn array_region(
        &mut self,
        n: u16,
        elem: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        self.bytes(usize::from(n) * elem, what)
    }

    /// An Int32 length followed by that many bytes; -1 means NULL. Other negatives are invalid.
    pub(crate) fn value(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, DecodeError> {
        let len = self.i32(what)?;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(self.invalid(what, n)),
            n => self.bytes(n.unsigned_abs() as usize, what).map(Some),
        }
    }

    /// `n` length-prefixed values as one raw region, validated.
    pub(crate) fn values_region(
        &mut self,
        n: u16,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let start = self.buf;
        for _ in 0..n {
            self.value(what)?;
        }
        Ok(self.since(start))
    }

    /// The bytes consumed since `start` (an earlier `remaining()`).
    pub(crate) fn since(&self, start: &'a [u8]) -> &'a [u8] {
        let used = start.len().saturating_sub(self.buf.len());
        start.get(..used).unwrap_or_default()
    }
}

/// Iterator over validated big-endian Int16 values (format codes).
#[derive(Debug, Clone)]
pub struct I16s<'a>(std::slice::ChunksExact<'a, u8>);

impl<'a> I16s<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        I16s(raw.chunks_exact(2))
    }
}

impl Iterator for I16s<'_> {
    type Item = i16;

    fn next(&mut self) -> Option<i16> {
        let c = self.0.next()?;
        <[u8; 2]>::try_from(c).ok().map(i16::from_be_bytes)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for I16s<'_> {}

/// Iterator over validated big-endian UInt32 values (type OIDs).
#[derive(Debug, Clone)]
pub struct Oids<'a>(std::slice::ChunksExact<'a, u8>);

impl<'a> Oids<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        Oids(raw.chunks_exact(4))
    }
}

impl Iterator for Oids<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let c = self.0.next()?;
        <[u8; 4]>::try_from(c).ok().map(u32::from_be_bytes)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Oids<'_> {}

/// Iterator over validated length-prefixed values (Bind parameters, DataRow columns,
/// FunctionCall arguments): `None` is SQL NULL.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    raw: &'a [u8],
    left: u16,
}

impl<'a> Values<'a> {
    pub(crate) fn new(raw: &'a [u8], count: u16) -> Self {
        Values { raw, left: count }
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Option<&'a [u8]>> {
        self.left = self.left.checked_sub(1)?;
        let mut c = Cursor::new(0, self.raw);
        let v = c.value("value").ok();
        self.raw = c.remaining();
        if v.is_none() {
            self.left = 0;
        }
        v
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Values<'_> {}

/// Iterator over validated NUL-terminated strings in a region (each string includes its NUL).
#[derive(Debug, Clone)]
pub(crate) struct CStrs<'a>(&'a [u8]);

impl<'a> CStrs<'a> {
    pub(crate) fn new(raw: &'a [u8]) -> Self {
        CStrs(raw)
    }
}

impl<'a> Iterator for CStrs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut c = Cursor::new(0, self.0);
        let s = c.cstr("string").ok();
        self.0 = if s.is_some() { c.remaining() } else { &[] };
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_integers_big_endian() {
        let mut c = Cursor::new(
            b'x',
            &[0, 1, 0xff, 0xfe, 0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 7],
        );
        assert_eq!(c.u16("a").unwrap(), 1);
        assert_eq!(c.i16("b").unwrap(), -2);
        assert_eq!(c.u32("c").unwrap(), 2);
        assert_eq!(c.i32("d").unwrap(), -1);
        assert_eq!(c.u8("e").unwrap(), 7);
        c.finish().unwrap();
        assert_eq!(
            c.u8("f"),
            Err(DecodeError::UnexpectedEof {
                tag: b'x',
                what: "f"
            })
        );
    }

    #[test]
    fn short_reads_do_not_consume() {
        let mut c = Cursor::new(b'x', &[1, 2, 3]);
        assert!(c.u32("n").is_err());
        assert_eq!(c.remaining(), &[1, 2, 3]);
        assert!(c.bytes(4, "b").is_err());
        assert_eq!(c.bytes(3, "b").unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn cstr_requires_nul() {
        let mut c = Cursor::new(b'Q', b"ab\0cd");
        assert_eq!(c.cstr("s").unwrap(), b"ab");
        assert_eq!(
            c.cstr("t"),
            Err(DecodeError::MissingNul {
                tag: b'Q',
                what: "t"
            })
        );
        assert_eq!(
            c.finish(),
            Err(DecodeError::TrailingBytes {
                tag: b'Q',
                extra: 2
            })
        );
        assert_eq!(c.rest().unwrap(), b"cd");
        c.finish().unwrap();
    }

    #[test]
    fn values_reject_negative_lengths_other_than_minus_one() {
        let mut c = Cursor::new(b'D', &[0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(
            c.value("column"),
            Err(DecodeError::InvalidValue {
                tag: b'D',
                what: "column",
                value: -2
            })
        );
        let raw = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, b'z'];
        let mut c = Cursor::new(b'D', &raw);
        let region = c.values_region(2, "column").unwrap();
        assert_eq!(region, &raw);
        let vals: Vec<_> = Values::new(region, 2).collect();
        assert_eq!(vals, vec![None, Some(&b"z"[..])]);
    }

    #[test]
    fn value_length_beyond_body_is_eof() {
        let mut c = Cursor::new(b'D', &[0x7f, 0xff, 0xff, 0xff, 1]);
        assert!(matches!(
            c.value("column"),
            Err(DecodeError::UnexpectedEof { .. })
        ));
    }

    #[test]
    fn iterators() {
        assert_eq!(
            I16s::new(&[0, 1, 0xff, 0xff]).collect::<Vec<_>>(),
            vec![1, -1]
        );
        assert_eq!(Oids::new(&[0, 0, 0, 23]).len(), 1);
        assert_eq!(
            CStrs::new(b"a\0bc\0").collect::<Vec<_>>(),
            vec![&b"a"[..], &b"bc"[..]]
        );
    }
}
