//! Encoding helpers: every builder appends to a caller-owned `Vec<u8>` (typically a pooled
//! per-connection output buffer) and back-patches the length word, so a message is written in one
//! pass without knowing its size up front.
//!
//! Encoders are infallible. Their inputs are either views that were decoded (and so satisfy the
//! protocol) or values the proxy made itself; two contract violations are defused rather than
//! propagated: a C string with an interior NUL is cut at the NUL (the frame stays well-formed),
//! and a message over 4 GiB or a list over 65535 elements saturates its length/count (the peer
//! then rejects it). Both are caught by `debug_assert!` in tests.

/// Append one tagged message: `tag`, a length word back-patched after `body` ran, then the body.
pub fn write_message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    write_length_prefixed(out, body);
}

/// Append a length word (counting itself) followed by what `body` writes. Used for tagged
/// messages after the tag and for untagged startup-phase packets.
pub(crate) fn write_length_prefixed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = out.len().saturating_sub(start);
    debug_assert!(u32::try_from(len).is_ok(), "message longer than 4 GiB");
    let word = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    if let Some(slot) = out.get_mut(start..start.saturating_add(4)) {
        slot.copy_from_slice(&word);
    }
}

/// A C string: the bytes up to (not including) any interior NUL, then a NUL.
pub(crate) fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0);
    debug_assert!(end.is_none(), "C string with interior NUL");
    let s = match end {
        Some(n) => s.get(..n).unwrap_or_default(),
        None => s,
    };
    out.extend_from_slice(s);
    out.push(0);
}

pub(crate) fn put_i16(out: &mut Vec<u8>, v: i16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// An element count as the wire's 16-bit field.
pub(crate) fn put_count(out: &mut Vec<u8>, n: usize) {
    debug_assert!(u16::try_from(n).is_ok(), "more than 65535 elements");
    put_u16(out, u16::try_from(n).unwrap_or(u16::MAX));
}

/// A raw region of fixed-size elements preceded by its element count.
pub(crate) fn put_counted(out: &mut Vec<u8>, raw: &[u8], elem: usize) {
    put_count(out, raw.len() / elem.max(1));
    out.extend_from_slice(raw);
}

/// A value as Int32 length (-1 for NULL) followed by its bytes.
pub(crate) fn put_value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_i32(out, -1),
        Some(v) => {
            debug_assert!(i32::try_from(v.len()).is_ok(), "value longer than 2 GiB");
            put_i32(out, i32::try_from(v.len()).unwrap_or(i32::MAX));
            out.extend_from_slice(v);
        }
    }
}

/// A count placeholder followed by the values of `values`; the count is patched afterwards.
pub(crate) fn put_values<'v>(
    out: &mut Vec<u8>,
    values: impl IntoIterator<Item = Option<&'v [u8]>>,
) {
    let at = out.len();
    put_u16(out, 0);
    let mut n = 0usize;
    for v in values {
        put_value(out, v);
        n = n.saturating_add(1);
    }
    debug_assert!(u16::try_from(n).is_ok(), "more than 65535 values");
    let count = u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(slot) = out.get_mut(at..at.saturating_add(2)) {
        slot.copy_from_slice(&count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_patches_length() {
        let mut out = vec![0xaa];
        write_message(&mut out, b'Q', |b| put_cstr(b, b"SELECT 1"));
        assert_eq!(out, b"\xaaQ\0\0\0\x0dSELECT 1\0");
    }

    #[test]
    fn values_count_is_patched() {
        let mut out = Vec::new();
        put_values(&mut out, [Some(&b"ab"[..]), None]);
        assert_eq!(out, b"\0\x02\0\0\0\x02ab\xff\xff\xff\xff");
    }
}
