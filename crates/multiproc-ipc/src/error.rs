//! The error type of this crate.

/// An error of a [`Connection`](crate::Connection) operation, of its constructors
/// ([`pipe`](crate::pipe()) …) or of [`wait`](crate::wait()).
///
/// Python raises `EOFError`, `OSError`, `BrokenPipeError` and `BufferTooShort` for these
/// cases; here each one is a variant that can be matched on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The other end closed the connection before a new message began (Python's `EOFError`).
    #[error("the other end closed the connection")]
    Eof,
    /// The other end closed the connection in the middle of a message (Python's
    /// `OSError("got end of file during message")`).
    ///
    /// The counts are payload bytes, or header bytes when the end came inside a header.
    #[error("got end of file during message: expected {expected} bytes, received {received}")]
    Truncated {
        /// The number of bytes the header announced (or the header's own length).
        expected: u64,
        /// The number of those bytes that arrived.
        received: u64,
    },
    /// A header announced a message longer than the receiver's limit (Python's
    /// `OSError("bad message length")`). Nothing was allocated, and the read side of the
    /// connection is now unusable ([`Error::Poisoned`]).
    ///
    /// Without a limit set, `limit` is `isize::MAX`, the largest buffer Rust can allocate.
    #[error("bad message length: a message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The length the header announced.
        size: u64,
        /// The limit in force.
        limit: usize,
    },
    /// A 4-byte header held a negative length other than `-1` (the marker of the 12-byte
    /// form): the stream is corrupt. The read side is now unusable ([`Error::Poisoned`]).
    #[error("bad message length: invalid length {0} in a message header")]
    InvalidLength(i32),
    /// An earlier read lost the message boundaries (a bad message length, or an I/O error in
    /// the middle of a message), so the read side was disabled and its fd closed.
    #[error(
        "the connection can no longer be read: an earlier message had a bad length or failed \
         midway, so the message boundaries are lost"
    )]
    Poisoned,
    /// The message is longer than the buffer given to
    /// [`recv_bytes_into`](crate::Connection::recv_bytes_into); the whole message is here
    /// (Python's `BufferTooShort`, whose `args[0]` is the message).
    #[error("the buffer is too short for the message of {} bytes", .0.len())]
    BufferTooShort(Vec<u8>),
    /// The reading end is closed, so nothing can be written (Python's `BrokenPipeError`).
    #[error("broken pipe: the other end of the connection is closed")]
    BrokenPipe,
    /// The connection is write-only.
    #[error("connection is write-only")]
    NotReadable,
    /// The connection is read-only.
    #[error("connection is read-only")]
    NotWritable,
    /// The connection was closed with [`close`](crate::Connection::close).
    #[error("handle is closed")]
    Closed,
    /// The value could not be encoded with postcard.
    #[error("cannot encode the message: {0}")]
    Encode(String),
    /// The value holds handles that own file descriptors (a `Connection`, a `Lock`, a shared
    /// value …), and this connection cannot pass fds: it is a plain pipe (a
    /// [`simplex`](crate::simplex()) writer, or a connection made with
    /// [`from_fds`](crate::Connection::from_fds) over pipes). Nothing was sent.
    ///
    /// Send handles over a [`pipe`](crate::pipe()) or [`socketpair`](crate::socketpair())
    /// connection, or hand them to a child as a `Process` argument.
    #[error(
        "cannot send a `{value_type}` over this connection: it holds {} handle file          descriptor(s) ({}), and a plain pipe cannot pass file descriptors; send it over a          connection from `pipe()` or `socketpair()`, or hand it to the child as a Process          argument",
        .fds.len(), .fds.join(", ")
    )]
    HandlesNeedSocket {
        /// The type of the value given to `send`.
        value_type: &'static str,
        /// What each fd the value holds is (from `/proc/self/fd`, e.g. `pipe:[1234]`).
        fds: Vec<String>,
    },
    /// The message could not be decoded with postcard into the requested type: corrupt data,
    /// a message too short or too long for the type, or fds announced but not received. The
    /// message was consumed; the connection stays usable.
    ///
    /// postcard is not self-describing, so a value sent as another type of the same shape
    /// (`-1i32` read as `u32`) decodes without an error: both ends must agree on the type.
    #[error("cannot decode the message: {0}")]
    Decode(String),
    /// No whole message arrived within the timeout of
    /// [`recv_timeout`](crate::Connection::recv_timeout) or
    /// [`recv_bytes_timeout`](crate::Connection::recv_bytes_timeout). Whatever part of a
    /// message arrived stays buffered for the next receive; the connection stays usable.
    #[error("no whole message arrived within {0:?}")]
    Timeout(std::time::Duration),
    /// The authkey challenge/response failed (Python's `AuthenticationError`): the peer
    /// used another key, answered with a digest that was rejected, or did not speak the
    /// handshake protocol (a message that is not a challenge, a malformed or oversized
    /// handshake message). Nothing of the application was exchanged; the connection should
    /// be dropped. See [`deliver_challenge`](crate::deliver_challenge).
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// The peer did not complete the authkey handshake within the deadline (see
    /// [`ListenerBuilder::handshake_timeout`](crate::ListenerBuilder::handshake_timeout)):
    /// it stalled, or is too slow. The connection was dropped; the listener goes on.
    #[error("the peer did not complete the authentication handshake within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// No peer connected within the timeout of
    /// [`Listener::accept_timeout`](crate::Listener::accept_timeout), or the connection to a
    /// server was not established within [`ClientBuilder::timeout`](crate::ClientBuilder::timeout).
    #[error("no connection within {0:?}")]
    ConnectTimeout(std::time::Duration),
    /// The listener was closed with [`Listener::close`](crate::Listener::close) (Python's
    /// `OSError('listener is closed')`).
    #[error("listener is closed")]
    ListenerClosed,
    /// An address that cannot be used: an empty or too long Unix socket path or abstract name
    /// (at most 107 bytes), or a string that is no address.
    #[error("invalid address: {0}")]
    InvalidAddress(String),
    /// An operating-system error.
    #[error("I/O error on the connection: {0}")]
    Io(#[from] std::io::Error),
}
