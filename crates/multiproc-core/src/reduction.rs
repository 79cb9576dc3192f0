//! Handing values that own file descriptors to a child process (Python's `reduction.py`).
//!
//! A handle that owns an fd (a [`Connection`](../../multiproc_ipc/struct.Connection.html), later a
//! queue or a lock arena) implements `Serialize`/`Deserialize` through [`fd`] (or [`opt_fd`]).
//! While a spawn or forkserver record is encoded with [`encode`], every such fd is duplicated
//! (close-on-exec) into the record's fd table and only its index is written; the child's
//! [`decode`] takes each fd back by index. Under fork nothing is encoded: the child inherits
//! the parent's memory and fds.
//!
//! Serialising an fd-owning handle outside [`encode`] (for example with plain
//! `postcard::to_allocvec`) is an error, not a silent loss of the fd.
//!
//! ```
//! use multiproc_core::reduction;
//! use std::os::fd::OwnedFd;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Handle {
//!     #[serde(with = "reduction::fd")]
//!     fd: OwnedFd,
//!     label: String,
//! }
//!
//! let (r, _w) = rustix::pipe::pipe().unwrap();
//! let (bytes, fds) = reduction::encode(&Handle { fd: r, label: "x".into() }).unwrap();
//! assert_eq!(fds.len(), 1);
//! let back: Handle = reduction::decode(&bytes, fds).unwrap();
//! assert_eq!(back.label, "x");
//! ```

use std::cell::RefCell;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An error while encoding or decoding a value handed to a child.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReductionError {
    /// postcard could not encode the value.
    #[error("cannot encode the value for the child: {0}")]
    Encode(String),
    /// postcard could not decode the record (corrupt data or a type mismatch).
    #[error("cannot decode the value sent by the parent: {0}")]
    Decode(String),
    /// Duplicating a file descriptor failed.
    #[error("cannot duplicate a file descriptor for the child: {0}")]
    Dup(#[source] std::io::Error),
    /// A function reference in the value was refused (another executable, wrong types, not made
    /// by this process tree).
    #[error("cannot decode a function reference: {0}")]
    FnRef(#[from] crate::fnref::FnRefError),
}

thread_local! {
    /// The reason behind the last custom serde error raised while encoding or decoding here
    /// (postcard keeps only "Serde Serialization Error"); taken by `encode`/`decode`.
    static REASON: RefCell<Option<Reason>> = const { RefCell::new(None) };
}

enum Reason {
    Message(String),
    FnRef(crate::fnref::FnRefError),
}

/// Records why a handle could not be encoded or decoded, for the error `encode`/`decode` return.
pub(crate) fn note_reason(msg: impl Into<String>) {
    REASON.with(|r| *r.borrow_mut() = Some(Reason::Message(msg.into())));
}

/// Records a refused function reference, for the error `decode` returns.
pub(crate) fn note_refusal(e: crate::fnref::FnRefError) {
    REASON.with(|r| *r.borrow_mut() = Some(Reason::FnRef(e)));
}

fn take_reason() -> Option<Reason> {
    REASON.with(|r| r.borrow_mut().take())
}

fn encode_error(e: impl std::fmt::Display) -> ReductionError {
    match take_reason() {
        Some(Reason::Message(m)) => ReductionError::Encode(m),
        Some(Reason::FnRef(f)) => ReductionError::FnRef(f),
        None => ReductionError::Encode(e.to_string()),
    }
}

fn decode_error(e: postcard::Error) -> ReductionError {
    match take_reason() {
        Some(Reason::Message(m)) => ReductionError::Decode(m),
        Some(Reason::FnRef(f)) => ReductionError::FnRef(f),
        None => ReductionError::Decode(e.to_string()),
    }
}

thread_local! {
    static ENCODE_TABLE: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static DECODE_TABLE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Restores the previous table when an encode/decode ends, also on unwind.
struct TableGuard<F: FnMut()>(F);
impl<F: FnMut()> Drop for TableGuard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// Encodes `value` with postcard, collecting the fds of the handles it contains.
///
/// The fds returned are close-on-exec duplicates, in the order of the indices written into the
/// bytes. Give both to [`decode`] in the receiving process.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>), ReductionError> {
    let mut bytes = Vec::new();
    let fds = encode_into(value, &mut bytes)?;
    Ok((bytes, fds))
}

/// [`encode`], appending the bytes to `out` (left as it was on an error).
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<Vec<OwnedFd>, ReductionError> {
    let mut previous = ENCODE_TABLE.with(|t| t.borrow_mut().replace(Vec::new()));
    let _restore = TableGuard(|| {
        let _ = ENCODE_TABLE.with(|t| std::mem::replace(&mut *t.borrow_mut(), previous.take()));
    });
    take_reason();
    let len = out.len();
    if let Err(e) = append_postcard(value, out) {
        out.truncate(len);
        return Err(encode_error(e));
    }
    Ok(ENCODE_TABLE
        .with(|t| t.borrow_mut().take())
        .unwrap_or_default())
}

/// Appends the postcard encoding of `value` to `out`, for values without handles that own
/// file descriptors (those fail with a message saying so): how a pool writes a chunk of task
/// arguments straight into its record. The bytes are postcard's; the encoder is our own,
/// about three times faster than postcard's for sequences of small values.
pub fn append<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), ReductionError> {
    take_reason();
    append_postcard(value, out).map_err(encode_error)
}

fn append_postcard<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), crate::wire::WireError> {
    crate::wire::append(value, out)
}

/// Decodes a value produced by [`encode`], handing each handle its fd back by index.
///
/// Fds that no handle claimed are closed when this returns.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<T, ReductionError> {
    let table = fds.into_iter().map(Some).collect();
    let mut previous = DECODE_TABLE.with(|t| t.borrow_mut().replace(table));
    let _restore = TableGuard(|| {
        let _ = DECODE_TABLE.with(|t| std::mem::replace(&mut *t.borrow_mut(), previous.take()));
    });
    take_reason();
    postcard::from_bytes(bytes).map_err(decode_error)
}

/// Writes `fd` into the active encode table; used by handles' `Serialize` impls.
pub fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, serializer: S) -> Result<S::Ok, S::Error> {
    let index = ENCODE_TABLE.with(|t| -> Result<u32, String> {
        let mut table = t.borrow_mut();
        let table = table.as_mut().ok_or_else(|| {
            "a handle owning a file descriptor can only be serialised while it is handed to a \
             child process (as a Process argument)"
                .to_string()
        })?;
        let dup = rustix::io::fcntl_dupfd_cloexec(fd, 0)
            .map_err(|e| format!("cannot duplicate fd for the child: {e}"))?;
        table.push(dup);
        u32::try_from(table.len() - 1).map_err(|_| "too many file descriptors".to_string())
    });
    match index {
        Ok(i) => i.serialize(serializer),
        Err(msg) => {
            note_reason(msg.clone());
            Err(S::Error::custom(msg))
        }
    }
}

/// Reads an fd index and takes the fd from the active decode table; used by handles'
/// `Deserialize` impls.
pub fn deserialize_fd<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    DECODE_TABLE.with(|t| {
        let mut table = t.borrow_mut();
        let table = table.as_mut().ok_or_else(|| {
            let msg = "a handle owning a file descriptor can only be decoded where its fds \
                       arrived (in a child, or from a connection that carries fds)";
            note_reason(msg);
            D::Error::custom(msg)
        })?;
        table.get_mut(index).and_then(Option::take).ok_or_else(|| {
            let msg = format!("fd table has no entry {index} (or it was taken twice)");
            note_reason(msg.clone());
            D::Error::custom(msg)
        })
    })
}

/// `#[serde(with = "multiproc_core::reduction::fd")]` for an [`OwnedFd`] field.
pub mod fd {
    use super::*;

    /// Serialises the fd through the active fd table.
    pub fn serialize<S: Serializer>(fd: &OwnedFd, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_fd(fd.as_fd(), serializer)
    }

    /// Takes the fd back from the active fd table.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<OwnedFd, D::Error> {
        deserialize_fd(deserializer)
    }
}

/// `#[serde(with = "multiproc_core::reduction::opt_fd")]` for an `Option<OwnedFd>` field.
pub mod opt_fd {
    use super::*;

    /// Serialises the fd, if any, through the active fd table.
    pub fn serialize<S: Serializer>(
        fd: &Option<OwnedFd>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        struct Wrap<'a>(&'a OwnedFd);
        impl Serialize for Wrap<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_fd(self.0.as_fd(), s)
            }
        }
        fd.as_ref().map(Wrap).serialize(serializer)
    }

    /// Takes the fd, if any, back from the active fd table.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OwnedFd>, D::Error> {
        struct Wrap(OwnedFd);
        impl<'de> Deserialize<'de> for Wrap {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_fd(d).map(Wrap)
            }
        }
        Ok(Option::<Wrap>::deserialize(deserializer)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Two {
        #[serde(with = "fd")]
        a: OwnedFd,
        #[serde(with = "opt_fd")]
        b: Option<OwnedFd>,
        #[serde(with = "opt_fd")]
        c: Option<OwnedFd>,
    }

    #[test]
    fn round_trip_keeps_order_and_none() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let (bytes, fds) = encode(&Two {
            a: r,
            b: None,
            c: Some(w),
        })
        .unwrap();
        assert_eq!(fds.len(), 2);
        let back: Two = decode(&bytes, fds).unwrap();
        assert!(back.b.is_none());
        rustix::io::write(back.c.as_ref().unwrap(), b"hi").unwrap();
        let mut buf = [0u8; 2];
        rustix::io::read(&back.a, &mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn serialising_outside_encode_is_an_error() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        #[derive(Serialize)]
        struct One {
            #[serde(with = "fd")]
            a: OwnedFd,
        }
        let err = postcard::to_allocvec(&One { a: r }).unwrap_err();
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn missing_fd_is_a_decode_error() {
        let (r, _w) = rustix::pipe::pipe().unwrap();
        #[derive(Serialize, Deserialize)]
        struct One {
            #[serde(with = "fd")]
            a: OwnedFd,
        }
        let (bytes, _fds) = encode(&One { a: r }).unwrap();
        assert!(matches!(
            decode::<One>(&bytes, Vec::new()),
            Err(ReductionError::Decode(_))
        ));
    }
}
