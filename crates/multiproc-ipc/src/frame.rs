//! Python's message framing, as pure functions.
//!
//! Every message on a [`Connection`](crate::Connection) is a header followed by the payload
//! (Python's `Connection._send_bytes` / `_recv_bytes`):
//!
//! ```text
//! n <= 0x7fffffff : [ n as big-endian i32 ]                          [ n payload bytes ]
//! n >  0x7fffffff : [ ff ff ff ff ] [ n as big-endian u64 ]          [ n payload bytes ]
//! ```
//!
//! Between the two ends of one [`pipe()`](crate::pipe()) a third form appears on the pipe:
//! `ff ff ff fe` (`-2`, a length Python never writes) announces that the next message, framed
//! as above, travels on the pair's side socket. Every other connection refuses it as an
//! invalid length.
//!
//! ```
//! use multiproc_ipc::frame::{decode_header, encode_header, Header};
//!
//! let mut out = Vec::new();
//! encode_header(3, &mut out);
//! assert_eq!(out, [0, 0, 0, 3]);
//! assert_eq!(decode_header(&out[..2])?, Header::Needed(4));
//! assert_eq!(decode_header(&out)?, Header::Len { len: 3, header_len: 4 });
//! # Ok::<(), multiproc_ipc::Error>(())
//! ```

use crate::Error;

/// The longest payload that still uses the 4-byte header.
pub const MAX_SHORT_LEN: usize = 0x7fff_ffff;

/// The length of the longest header (the large-message form).
pub const MAX_HEADER_LEN: usize = 12;

/// The 4-byte field that, between the two ends of one [`pipe()`](crate::pipe()), announces
/// that the next message travels on the pair's side socket (a negative length Python never
/// writes, so a Python peer can never produce it). Any other connection refuses it like
/// every negative length other than `-1` ([`Error::InvalidLength`]).
pub(crate) const SIDE_MARKER: i32 = -2;

/// The state of a header being parsed by [`decode_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The bytes given are not a whole header: it is at least this many bytes long in total
    /// (4, or 12 once the large-message marker was seen).
    Needed(usize),
    /// A complete header.
    Len {
        /// The payload length it announces.
        len: u64,
        /// The header's own length (4 or 12); the payload starts there.
        header_len: usize,
    },
}

/// Returns the header for a payload of `len` bytes and how many bytes of the array it uses.
pub(crate) fn header(len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
    let mut bytes = [0; MAX_HEADER_LEN];
    match i32::try_from(len) {
        Ok(short) => {
            bytes[..4].copy_from_slice(&short.to_be_bytes());
            (bytes, 4)
        }
        Err(_) => {
            bytes[..4].copy_from_slice(&(-1i32).to_be_bytes());
            bytes[4..].copy_from_slice(&(len as u64).to_be_bytes());
            (bytes, MAX_HEADER_LEN)
        }
    }
}

/// Appends the header of a `len`-byte payload to `out`: 4 bytes up to [`MAX_SHORT_LEN`],
/// 12 bytes above.
pub fn encode_header(len: usize, out: &mut Vec<u8>) {
    let (bytes, used) = header(len);
    out.extend_from_slice(&bytes[..used]);
}

/// Parses the header at the start of `bytes` (which may also hold the payload and further
/// messages).
///
/// Both header forms are accepted for any length, as Python accepts them.
///
/// # Errors
///
/// [`Error::InvalidLength`] when the 4-byte field is negative but not `-1`.
pub fn decode_header(bytes: &[u8]) -> Result<Header, Error> {
    let Some(&short) = bytes.first_chunk::<4>() else {
        return Ok(Header::Needed(4));
    };
    match i32::from_be_bytes(short) {
        -1 => Ok(match bytes[4..].first_chunk::<8>() {
            Some(&long) => Header::Len {
                len: u64::from_be_bytes(long),
                header_len: MAX_HEADER_LEN,
            },
            None => Header::Needed(MAX_HEADER_LEN),
        }),
        len => match u64::try_from(len) {
            Ok(len) => Ok(Header::Len { len, header_len: 4 }),
            Err(_) => Err(Error::InvalidLength(len)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(len: usize) -> Vec<u8> {
        let mut out = vec![0xaa];
        encode_header(len, &mut out);
        assert_eq!(out.remove(0), 0xaa, "encode_header must append");
        out
    }

    #[test]
    fn header_forms_match_python() {
        assert_eq!(encoded(0), [0, 0, 0, 0]);
        assert_eq!(encoded(3), [0, 0, 0, 3]);
        assert_eq!(encoded(16385), [0, 0, 0x40, 0x01]);
        assert_eq!(encoded(0x7fff_ffff), [0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(
            encoded(0x8000_0000),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0]
        );
        // Python 3.13 wrote `ffffffff 0000000080000005` for a 2 147 483 653-byte message.
        assert_eq!(
            encoded(2_147_483_653),
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0x80, 0, 0, 0x05]
        );
    }

    #[test]
    fn decode_round_trips_every_form() {
        for len in [
            0,
            1,
            3,
            16384,
            16385,
            MAX_SHORT_LEN,
            MAX_SHORT_LEN + 1,
            2_147_483_653,
        ] {
            let bytes = encoded(len);
            let header_len = bytes.len();
            assert_eq!(
                decode_header(&bytes).unwrap(),
                Header::Len {
                    len: len as u64,
                    header_len
                }
            );
            for cut in 0..header_len {
                let needed = if cut < 4 { 4 } else { MAX_HEADER_LEN };
                assert_eq!(
                    decode_header(&bytes[..cut]).unwrap(),
                    Header::Needed(needed)
                );
            }
        }
    }

    #[test]
    fn decode_ignores_what_follows_the_header() {
        let mut bytes = encoded(3);
        bytes.extend_from_slice(b"abc\0\0\0\x01x");
        assert_eq!(
            decode_header(&bytes).unwrap(),
            Header::Len {
                len: 3,
                header_len: 4
            }
        );
    }

    #[test]
    fn large_form_is_accepted_for_small_lengths() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(
            decode_header(&bytes).unwrap(),
            Header::Len {
                len: 5,
                header_len: 12
            }
        );
    }

    #[test]
    fn negative_lengths_are_invalid() {
        let bytes = (-5i32).to_be_bytes();
        assert!(matches!(
            decode_header(&bytes),
            Err(Error::InvalidLength(-5))
        ));
        let bytes = i32::MIN.to_be_bytes();
        assert!(matches!(
            decode_header(&bytes),
            Err(Error::InvalidLength(i32::MIN))
        ));
    }
}
