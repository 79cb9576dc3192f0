//! Errors of managers and proxies.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of failure the server reported: Python's exception class, where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// A missing key (Python's `KeyError`).
    KeyError,
    /// An index out of range (Python's `IndexError`).
    IndexError,
    /// A value that is not there or not allowed (Python's `ValueError`), e.g. `list.remove` of
    /// a missing item or `task_done` called too often.
    ValueError,
    /// A namespace attribute that is not set (Python's `AttributeError`).
    AttributeError,
    /// A proxy's types differ from the object's (two proxies of one object made with other
    /// type parameters).
    TypeMismatch,
    /// The object no longer exists on the server (its last reference went).
    NoSuchObject,
    /// A name that no object was published under.
    NoSuchName,
    /// A method that the registered type does not expose.
    NotExposed,
    /// A queue was empty (Python's `queue.Empty`).
    Empty,
    /// A bounded queue was full (Python's `queue.Full`).
    Full,
    /// A lock or condition used wrongly, e.g. releasing what is not held (Python's
    /// `RuntimeError`).
    RuntimeError,
    /// A barrier was broken or reset while waiting (Python's `BrokenBarrierError`).
    BrokenBarrier,
    /// A function run on the server (`update_with`, `sort`) failed or panicked.
    Function,
    /// A method of a registered type returned an error or panicked.
    Method,
    /// The request could not be understood (a bug, or a client of another version).
    Protocol,
}

impl fmt::Display for RemoteErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            RemoteErrorKind::KeyError => "KeyError",
            RemoteErrorKind::IndexError => "IndexError",
            RemoteErrorKind::ValueError => "ValueError",
            RemoteErrorKind::AttributeError => "AttributeError",
            RemoteErrorKind::TypeMismatch => "type mismatch",
            RemoteErrorKind::NoSuchObject => "no such object",
            RemoteErrorKind::NoSuchName => "no such name",
            RemoteErrorKind::NotExposed => "not exposed",
            RemoteErrorKind::Empty => "Empty",
            RemoteErrorKind::Full => "Full",
            RemoteErrorKind::RuntimeError => "RuntimeError",
            RemoteErrorKind::BrokenBarrier => "BrokenBarrierError",
            RemoteErrorKind::Function => "function failed",
            RemoteErrorKind::Method => "method failed",
            RemoteErrorKind::Protocol => "protocol error",
        };
        f.write_str(s)
    }
}

/// An error raised on the server, with its message (Python's re-raised exception or
/// `RemoteError`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RemoteError {
    /// What kind of failure.
    pub kind: RemoteErrorKind,
    /// The server's message.
    pub message: String,
}

/// Why a manager or proxy operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    /// The server refused the operation (a missing key, an index out of range, a type
    /// mismatch …), with its message.
    #[error("{0}")]
    Remote(#[from] RemoteError),
    /// The server cannot be reached or went away during the call (it died, was shut down, or
    /// the connection broke).
    #[error("the manager's server at {address} is gone: {reason}")]
    ServerGone {
        /// The server's address.
        address: String,
        /// What happened.
        reason: String,
    },
    /// A connection-level error: wrong authkey, handshake timeout, address in use …
    #[error(transparent)]
    Connection(#[from] multiproc_ipc::Error),
    /// Starting or stopping the server process failed.
    #[error(transparent)]
    Process(#[from] multiproc_core::Error),
    /// A value could not be encoded (for example a handle that owns a file descriptor: those
    /// cannot be stored by a manager, as in Python).
    #[error("cannot encode the value for the manager: {0}")]
    Encode(String),
    /// A reply could not be decoded as the proxy's type.
    #[error("cannot decode the server's reply: {0}")]
    Decode(String),
    /// A function could not be named across processes (see `FnRef`).
    #[error(transparent)]
    FnRef(#[from] multiproc_core::FnRefError),
    /// The manager was shut down (its constructors refuse to make objects).
    #[error("the manager is {0}")]
    State(&'static str),
    /// A shared-memory segment could not be made ([`SharedMemoryManager`](crate::SharedMemoryManager)).
    #[error("shared memory: {0}")]
    SharedMemory(String),
}

impl ManagerError {
    /// The server's error, if the server refused the operation.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ManagerError::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// The kind of the server's error, if the server refused the operation.
    pub fn remote_kind(&self) -> Option<RemoteErrorKind> {
        self.remote().map(|e| e.kind)
    }
}

/// `Result` with [`ManagerError`].
pub type Result<T, E = ManagerError> = std::result::Result<T, E>;
