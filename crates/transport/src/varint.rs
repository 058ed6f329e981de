//! QUIC variable-length integers (RFC 9000 §16), minimal encoding only (`protocol.md` §4.1).
//!
//! Every value has exactly one accepted encoding: the shortest. A longer form (e.g. `0x40 0x01`
//! for 1) is refused, so that any frame that decodes re-encodes byte-identically.

/// The largest value a varint can hold: 2^62 - 1.
pub const MAX: u64 = (1 << 62) - 1;

/// Result of reading a varint from the front of a buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Read {
    /// The value and the number of bytes it took.
    Value(u64, usize),
    /// The buffer ends inside the varint; at least this many bytes are needed in total.
    Incomplete(usize),
    /// A longer encoding than necessary.
    NonMinimal,
}

/// Number of bytes `v` takes.
pub fn len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `v` (which must be ≤ [`MAX`]; larger values are clamped by the callers' limits and
/// debug-asserted here) in its minimal encoding.
pub fn put(out: &mut Vec<u8>, v: u64) {
    debug_assert!(v <= MAX);
    match len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Reads a varint from the front of `buf`.
pub fn get(buf: &[u8]) -> Read {
    let Some(&first) = buf.first() else {
        return Read::Incomplete(1);
    };
    let n = 1usize << (first >> 6);
    if buf.len() < n {
        return Read::Incomplete(n);
    }
    let mut v = u64::from(first & 0x3f);
    for &b in &buf[1..n] {
        v = (v << 8) | u64::from(b);
    }
    if len(v) != n {
        return Read::NonMinimal;
    }
    Read::Value(v, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 Appendix A.1.
        assert_eq!(
            get(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Read::Value(151_288_809_941_952_652, 8)
        );
        assert_eq!(get(&[0x9d, 0x7f, 0x3e, 0x7d]), Read::Value(494_878_333, 4));
        assert_eq!(get(&[0x7b, 0xbd]), Read::Value(15_293, 2));
        assert_eq!(get(&[0x25]), Read::Value(37, 1));
        // The RFC's non-minimal two-byte 37 is refused here.
        assert_eq!(get(&[0x40, 0x25]), Read::NonMinimal);
    }

    #[test]
    fn boundaries_round_trip() {
        for v in [0, 63, 64, 16_383, 16_384, 1_073_741_823, 1_073_741_824, MAX] {
            let mut b = Vec::new();
            put(&mut b, v);
            assert_eq!(b.len(), len(v));
            assert_eq!(get(&b), Read::Value(v, b.len()));
            assert_eq!(
                get(&b[..b.len() - 1]),
                if b.len() == 1 {
                    Read::Incomplete(1)
                } else {
                    Read::Incomplete(b.len())
                }
            );
        }
    }
}
