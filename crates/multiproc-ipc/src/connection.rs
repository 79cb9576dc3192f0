//! [`Connection`] and [`pipe`].

use std::collections::VecDeque;
use std::fmt;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, retry_on_intr};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::pipe::{PipeFlags, pipe_with};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use multiproc_core::reduction;

use crate::{Error, Reader, Writer};

use crate::frame::{self, Header, MAX_HEADER_LEN};

/// Messages up to this size go out as one `write()` of header and payload (Python's rule).
const SMALL_MESSAGE: usize = 16 * 1024;
/// The size of the read buffer; one `read()` normally brings a whole small message.
const READ_BUF: usize = 64 * 1024;
/// The most memory reserved ahead of the bytes that actually arrived, whatever a header claims.
const MAX_AHEAD: usize = 64 * 1024 * 1024;
/// Buffers that grew beyond this for one big message are shrunk back afterwards.
const RETAIN: usize = 1024 * 1024;
/// The most memory zeroed for one `recvmsg` (which takes initialised memory), whatever a
/// header announces: more than a Unix socket's buffer holds, which bounds what one read
/// brings, so reading a large message costs no more than twice its size in memory traffic
/// (zeroing the rest of a 64 MiB reservation before every read made it quadratic).
const SOCKET_WINDOW: usize = 256 * 1024;
/// The largest pipe buffer a connection asks for (Linux's default `pipe-max-size`).
const MAX_PIPE_CAPACITY: usize = 1024 * 1024;

/// The most fds one message can carry (the kernel's `SCM_MAX_FD`).
pub const MAX_HANDLE_FDS: usize = 253;
/// The most received fds a connection keeps queued for messages not yet received; fds a
/// peer sends beyond it (without messages that claim them) are closed.
const MAX_QUEUED_FDS: usize = 1024;

/// Creates a pair of connected duplex [`Connection`]s (Python's `multiprocessing.Pipe()`).
///
/// Both ends can send and receive. Messages of up to 16 KiB travel on two OS pipes, the
/// first end reading pipe A and writing pipe B, the second the reverse: lower latency than
/// the socketpair Python uses. Larger messages, and values holding handles (a `Connection`,
/// a `Lock` …), travel on a Unix socket between the two ends, announced on the pipe (a
/// socket moves large messages several times faster than a pipe, and passes fds). Each
/// message is framed as Python frames it; the announcement is a header Python never writes,
/// so these ends talk to each other, not to a Python process: for a Python peer use
/// [`socketpair`] or [`Connection::from_fds`]. For a one-way channel whose ends are typed,
/// use [`simplex`].
///
/// All fds are close-on-exec; hand a connection to a child process as a `Process` argument.
///
/// ```
/// let (mut a, mut b) = multiproc_ipc::pipe()?;
/// a.send_bytes(b"ping")?;
/// assert_eq!(b.recv_bytes()?, b"ping");
/// b.send(&7u8)?;
/// assert_eq!(a.recv::<u8>()?, 7);
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// ```python
/// a, b = multiprocessing.Pipe()
/// ```
///
/// # Errors
///
/// [`Error::Io`] when the pipes or the socket cannot be created (for example too many open
/// files).
pub fn pipe() -> Result<(Connection, Connection), Error> {
    let (read_a, write_a) = pipe_with(PipeFlags::CLOEXEC).map_err(os)?;
    let (read_b, write_b) = pipe_with(PipeFlags::CLOEXEC).map_err(os)?;
    let (side_a, side_b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os)?;
    widen_send_buffer(&side_a);
    widen_send_buffer(&side_b);
    let mut a = Connection::from_fds(Some(read_a), Some(write_b));
    let mut b = Connection::from_fds(Some(read_b), Some(write_a));
    a.side = Some(Side::new(side_a));
    b.side = Some(Side::new(side_b));
    Ok((a, b))
}

/// What a Unix socket of a connection asks for as its send buffer.
const SOCKET_SEND_BUFFER: usize = 256 * 1024;

/// Asks for a send buffer of [`SOCKET_SEND_BUFFER`] on a Unix socket of ours: the kernel
/// doubles the request, capped at `net.core.wmem_max` first, so a stock kernel (whose default
/// buffer is `wmem_default`, 208 KiB, and `wmem_max` the same) gives 416 KiB, and this
/// machine (`wmem_max` 4 MiB) 512 KiB. A stream of 64 KiB messages then runs several messages
/// ahead of its reader instead of about three (measured in `docs/decisions.md`, "The side
/// socket asks for a wider send buffer"). Only a limit: no memory is taken until bytes are in
/// flight. Refused (it never is for a Unix socket), the default stays.
fn widen_send_buffer(socket: &OwnedFd) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(socket, SOCKET_SEND_BUFFER);
}

/// Creates a pair of connected duplex [`Connection`]s over a Unix socketpair, exactly what
/// Python's `multiprocessing.Pipe()` creates; these can carry handles, and a Python
/// `Connection` can be at the other end.
///
/// A value holding handles that own file descriptors (a `Connection`, a
/// `multiproc_sync::Lock`, a shared value …) sent with [`Connection::send`] arrives as a
/// working handle: its fds travel with the message (`SCM_RIGHTS`), as Python can send a
/// `Connection` over a `Connection`. [`send_bytes`](Connection::send_bytes) /
/// [`recv_bytes`](Connection::recv_bytes) frame messages as Python does, as over [`pipe`].
/// Small messages are slower than over [`pipe`]'s pipes (see `docs/benchmarks.md`).
///
/// ```
/// let (mut a, mut b) = multiproc_ipc::socketpair()?;
/// let (mut x, mut y) = multiproc_ipc::pipe()?;
/// a.send(&x)?; // a Connection travels over a Connection
/// let mut x2: multiproc_ipc::Connection = b.recv()?;
/// x2.send_bytes(b"through the received end")?;
/// assert_eq!(y.recv_bytes()?, b"through the received end");
/// # drop(x);
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::Io`] when the sockets cannot be created.
pub fn socketpair() -> Result<(Connection, Connection), Error> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(os)?;
    widen_send_buffer(&a);
    widen_send_buffer(&b);
    let a2 = rustix::io::fcntl_dupfd_cloexec(&a, 0).map_err(os)?;
    let b2 = rustix::io::fcntl_dupfd_cloexec(&b, 0).map_err(os)?;
    Ok((
        Connection::from_fds(Some(a), Some(a2)),
        Connection::from_fds(Some(b), Some(b2)),
    ))
}

/// Creates a one-way channel: a [`Reader`] and a [`Writer`] (Python's
/// `multiprocessing.Pipe(duplex=False)`, reader first as in Python).
///
/// The ends are distinct types, so the wrong direction does not compile:
///
/// ```compile_fail
/// let (r, mut w) = multiproc_ipc::simplex()?;
/// let _ = w.recv_bytes(); // a Writer cannot receive
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// ```
/// let (mut r, mut w) = multiproc_ipc::simplex()?;
/// w.send_bytes(b"one way")?;
/// assert_eq!(r.recv_bytes()?, b"one way");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// ```python
/// r, w = multiprocessing.Pipe(duplex=False)
/// ```
///
/// # Errors
///
/// [`Error::Io`] when the pipe cannot be created.
pub fn simplex() -> Result<(Reader, Writer), Error> {
    let (read, write) = pipe_with(PipeFlags::CLOEXEC).map_err(os)?;
    Ok((
        Reader(Connection::from_fds(Some(read), None)),
        Writer(Connection::from_fds(None, Some(write))),
    ))
}

/// One end of a message channel, framed as Python's `multiprocessing.connection.Connection`.
///
/// [`send_bytes`](Self::send_bytes) / [`recv_bytes`](Self::recv_bytes) exchange raw messages
/// byte-for-byte compatible with Python's; [`send`](Self::send) / [`recv`](Self::recv) carry
/// any serde type encoded with postcard (Python's `send`/`recv` pickle instead). Message
/// boundaries are preserved; an empty message is a message. Over a [`pipe`] or a
/// [`socketpair`] a sent value may hold handles (their fds travel with the message).
///
/// A connection is not safe for concurrent use by several readers (or several writers) on the
/// same underlying pipe, in one process or several: like Python's, it needs an outside lock
/// for that. Sending takes `&mut self`, so within one process the borrow checker enforces it.
///
/// Dropping a connection closes its fds; [`close`](Self::close) does so early.
///
/// ```
/// let (mut a, mut b) = multiproc_ipc::pipe()?;
/// a.send(&("ping", 1u32))?;
/// let (word, n): (String, u32) = b.recv()?;
/// b.send_bytes(format!("{word}-pong {n}").as_bytes())?;
/// assert_eq!(a.recv_bytes()?, b"ping-pong 1");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
pub struct Connection {
    read: Option<OwnedFd>,
    write: Option<OwnedFd>,
    /// The write fd is a socket: handles can travel (`SCM_RIGHTS`).
    write_socket: bool,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    limit: Option<usize>,
    poisoned: bool,
    /// Capacity the write pipe was grown to for large messages (0: not yet tried).
    pipe_capacity: usize,
    /// [`pipe`]'s side socket, for large messages and handles.
    side: Option<Side>,
}

/// The Unix socket between the two ends of a [`pipe`]: a message longer than
/// [`SMALL_MESSAGE`], or one that carries fds, goes there as an ordinary frame, announced on
/// the pipe by a [`frame::SIDE_MARKER`] header, so the pipe keeps the order of messages.
///
/// Payloads are read from the socket straight into their destination: the side's read
/// buffer holds headers (and small messages with fds), never reading past a header it needs.
struct Side {
    fd: OwnedFd,
    rbuf: ReadBuf,
}

impl Side {
    fn new(fd: OwnedFd) -> Self {
        Side {
            fd,
            rbuf: ReadBuf::side(),
        }
    }
}

impl Connection {
    /// Makes a connection from an fd to read messages from and an fd to write them to.
    ///
    /// Either may be `None` (a write-only or read-only end). For a socket, which carries both
    /// directions on one fd, pass the socket and a duplicate of it (`try_clone`); a Unix
    /// socket is recognised and then carries handles as [`socketpair`]'s ends do (a TCP
    /// socket cannot). The fds
    /// must be in blocking mode; a connection with neither fd is closed.
    pub fn from_fds(read: Option<OwnedFd>, write: Option<OwnedFd>) -> Self {
        let read_socket = read.as_ref().is_some_and(is_socket);
        let write_socket = write.as_ref().is_some_and(is_socket);
        Connection {
            read,
            write,
            write_socket,
            rbuf: ReadBuf {
                socket: read_socket,
                ..ReadBuf::default()
            },
            wbuf: Vec::new(),
            limit: None,
            poisoned: false,
            pipe_capacity: 0,
            side: None,
        }
    }

    /// Duplicates this end: a second `Connection` on the same channel (new fds, the same size
    /// limit), for example to hand one end to several children while keeping it.
    ///
    /// Bytes this end has already read ahead stay with this end. As with the original, only
    /// one process at a time should read (and one write) each direction.
    ///
    /// ```
    /// let (mut a, mut b) = multiproc_ipc::pipe()?;
    /// let mut a2 = a.try_clone()?;
    /// a2.send_bytes(b"from the clone")?;
    /// drop(a2);
    /// a.send_bytes(b"from the original")?;
    /// assert_eq!(b.recv_bytes()?, b"from the clone");
    /// assert_eq!(b.recv_bytes()?, b"from the original");
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] on a closed connection; [`Error::Io`] when an fd cannot be
    /// duplicated (too many open files).
    pub fn try_clone(&self) -> Result<Connection, Error> {
        if self.is_closed() && !self.poisoned {
            return Err(Error::Closed);
        }
        let dup = |fd: &Option<OwnedFd>| -> Result<Option<OwnedFd>, Error> {
            fd.as_ref()
                .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(os))
                .transpose()
        };
        let mut clone = Connection::from_fds(dup(&self.read)?, dup(&self.write)?);
        if let Some(side) = &self.side {
            let fd = rustix::io::fcntl_dupfd_cloexec(&side.fd, 0).map_err(os)?;
            clone.side = Some(Side::new(fd));
        }
        clone.limit = self.limit;
        clone.poisoned = self.poisoned;
        Ok(clone)
    }

    /// Sends `buf` as one message (Python's `send_bytes`), byte-for-byte as Python frames it.
    ///
    /// Blocks until all of it is written (or handed to the pipe's buffer).
    ///
    /// # Errors
    ///
    /// [`Error::BrokenPipe`] when the reading end is gone; [`Error::NotWritable`] /
    /// [`Error::Closed`] on a read-only or closed connection; [`Error::Io`] otherwise.
    pub fn send_bytes(&mut self, buf: &[u8]) -> Result<(), Error> {
        if buf.len() > SMALL_MESSAGE {
            let (header, used) = frame::header(buf.len());
            return self.write_large(&mut [IoSlice::new(&header[..used]), IoSlice::new(buf)]);
        }
        let (fd, wbuf) = self.writer()?;
        wbuf.clear();
        frame::encode_header(buf.len(), wbuf);
        wbuf.extend_from_slice(buf);
        write_all(fd, wbuf)
    }

    /// Writes a frame longer than [`SMALL_MESSAGE`]: over the side socket of a [`pipe`],
    /// otherwise on the write fd (a pipe grown for it first).
    fn write_large(&mut self, frame: &mut [IoSlice<'_>]) -> Result<(), Error> {
        if self.side.is_none() {
            self.grow_pipe(frame.iter().map(|part| part.len()).sum());
        }
        let fd = self.write_end()?;
        match &self.side {
            Some(side) => send_via_side(fd, side.fd.as_fd(), frame, &[]),
            None => write_all_vectored(fd, frame),
        }
    }

    /// Sends `value` encoded with postcard as one message (Python's `send`, with postcard
    /// in place of pickle).
    ///
    /// The payload is the number of file descriptors the message carries (a postcard varint,
    /// one byte `0` for plain data) followed by the postcard encoding of `value`. Over a
    /// [`pipe`] or a socket ([`socketpair`]) the value may hold handles that own fds (a `Connection`, a
    /// `multiproc_sync::Lock`, a shared value …): the fds travel with the message and the
    /// receiver gets working handles. For a large `Vec<u8>` or `&[u8]`, wrap it in
    /// `serde_bytes` or use [`send_bytes`](Self::send_bytes): serde encodes a plain
    /// `Vec<u8>` element by element (several times slower).
    ///
    /// # Errors
    ///
    /// [`Error::HandlesNeedSocket`] when the value holds handles and this connection is a plain
    /// pipe ([`simplex`], or [`from_fds`](Self::from_fds) over pipes);
    /// [`Error::Encode`] when serde or postcard refuse the value, or it holds more than
    /// [`MAX_HANDLE_FDS`] fds; and the errors of [`send_bytes`](Self::send_bytes).
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let (_, wbuf) = self.writer()?;
        // Room for the longest header, patched once the payload length is known, and the fd
        // count (0: plain data).
        wbuf.clear();
        wbuf.resize(MAX_HEADER_LEN + 1, 0);
        let fds = match postcard::serialize_with_flavor(value, VecFlavor(wbuf)) {
            Ok(()) => Vec::new(),
            // Perhaps a handle that owns an fd: those serialise only into an fd table.
            Err(plain) => self.encode_with_handles(value, plain)?,
        };
        let (_, wbuf) = self.writer()?;
        let (header, used) = frame::header(wbuf.len() - MAX_HEADER_LEN);
        let start = MAX_HEADER_LEN - used;
        wbuf[start..MAX_HEADER_LEN].copy_from_slice(&header[..used]);
        let message = std::mem::take(wbuf);
        let frame = &message[start..];
        let result = if !fds.is_empty() {
            let fd = self.write_end()?;
            match &self.side {
                Some(side) => send_via_side(fd, side.fd.as_fd(), &mut [IoSlice::new(frame)], &fds),
                None => send_with_fds(fd, frame, &fds),
            }
        } else if frame.len() - used > SMALL_MESSAGE {
            self.write_large(&mut [IoSlice::new(frame)])
        } else {
            let (fd, _) = self.writer()?;
            write_all(fd, frame)
        };
        if message.capacity() <= RETAIN {
            self.wbuf = message;
        }
        result
    }

    /// Encodes `value` through `multiproc_core::reduction`, collecting the fds of its handles,
    /// into `wbuf` after the header room; returns the fds. `plain` is the error of the plain
    /// encoding, reported when the value holds no handle.
    fn encode_with_handles<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
        plain: postcard::Error,
    ) -> Result<Vec<OwnedFd>, Error> {
        let (bytes, fds) = match reduction::encode(value) {
            Ok(encoded) => encoded,
            Err(_) => return Err(Error::Encode(describe_postcard_error(&plain))),
        };
        if fds.is_empty() {
            return Err(Error::Encode(describe_postcard_error(&plain)));
        }
        if !self.carries_handles() {
            return Err(Error::HandlesNeedSocket {
                value_type: std::any::type_name::<T>(),
                fds: fds.iter().map(describe_fd).collect(),
            });
        }
        if fds.len() > MAX_HANDLE_FDS {
            return Err(Error::Encode(format!(
                "the value holds {} file descriptors; one message carries at most {MAX_HANDLE_FDS}",
                fds.len()
            )));
        }
        let (_, wbuf) = self.writer()?;
        wbuf.truncate(MAX_HEADER_LEN);
        // `fds.len() <= 253`: the varint is one or two bytes.
        let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        postcard::serialize_with_flavor(&count, VecFlavor(wbuf))
            .map_err(|e| Error::Encode(e.to_string()))?;
        wbuf.extend_from_slice(&bytes);
        Ok(fds)
    }

    /// Receives one message (Python's `recv_bytes`).
    ///
    /// Blocks until a whole message arrived.
    ///
    /// # Errors
    ///
    /// [`Error::Eof`] when the other end closed the connection and every message was read;
    /// [`Error::Truncated`] when it closed in the middle of a message;
    /// [`Error::MessageTooLarge`] / [`Error::InvalidLength`] for a bad header, after which
    /// reads fail with [`Error::Poisoned`]; [`Error::NotReadable`] / [`Error::Closed`] on a
    /// write-only or closed connection; [`Error::Io`] otherwise.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, Error> {
        self.recv_frame(|rbuf, fd, len, _| {
            let mut out = Vec::new();
            rbuf.read_to_vec(fd, len, &mut out)?;
            Ok(out)
        })
    }

    /// Receives one message into `buf` and returns its length (Python's `recv_bytes_into`;
    /// for Python's `offset`, pass `&mut buf[offset..]`).
    ///
    /// # Errors
    ///
    /// [`Error::BufferTooShort`] with the whole message when it does not fit (the message is
    /// consumed), and the errors of [`recv_bytes`](Self::recv_bytes).
    ///
    /// ```
    /// let (mut a, mut b) = multiproc_ipc::pipe()?;
    /// a.send_bytes(&[1, 2, 3])?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.recv_bytes_into(&mut buf)?, 3);
    /// a.send_bytes(&[0; 9])?;
    /// let err = b.recv_bytes_into(&mut buf).unwrap_err();
    /// assert!(matches!(err, multiproc_ipc::Error::BufferTooShort(msg) if msg.len() == 9));
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_frame(|rbuf, fd, len, _| match buf.get_mut(..len) {
            Some(dst) => rbuf.read_to_slice(fd, dst).map(|()| len),
            None => {
                let mut message = Vec::new();
                rbuf.read_to_vec(fd, len, &mut message)?;
                Err(Error::BufferTooShort(message))
            }
        })
    }

    /// Receives one message and decodes it with postcard (Python's `recv`).
    ///
    /// The message is decoded straight from the connection's read buffer: nothing is
    /// allocated per message beyond what `T` itself needs. Handles in the value (sent over a
    /// [`socketpair`]) come back working, with the fds that travelled with the message.
    ///
    /// postcard is not self-describing: a message decodes as any type of the same shape (a
    /// `-1i32` read as `u32` gives a number, not an error), so both ends must agree on `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the message is not a valid encoding of `T` (corrupt, too short,
    /// bytes left over, or its fds did not arrive with it); the message and its fds are
    /// consumed and the connection stays usable. Also the errors of
    /// [`recv_bytes`](Self::recv_bytes).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.recv_frame(|rbuf, fd, len, at| {
            rbuf.fill_to(fd, len)?;
            let ReadBuf { buf, pos, fds, .. } = rbuf;
            let result = decode_message(&buf[*pos..*pos + len], |count| fds.take(at, count));
            rbuf.consume(len);
            rbuf.shrink();
            result
        })
    }

    /// Receives one message like [`recv`](Self::recv), waiting at most `timeout` for all of
    /// it.
    ///
    /// The deadline covers the whole message, not only its start: a peer that stalls in the
    /// middle of a message cannot hold the call past it. What arrived of an incomplete
    /// message stays buffered, and the next receive continues from there, so a timeout never
    /// desynchronises the stream. (The message passes through the connection's read buffer,
    /// one copy more than [`recv`](Self::recv) makes for large messages.)
    ///
    /// ```
    /// use std::time::Duration;
    /// let (mut a, mut b) = multiproc_ipc::pipe()?;
    /// let err = b.recv_timeout::<u32>(Duration::from_millis(10)).unwrap_err();
    /// assert!(matches!(err, multiproc_ipc::Error::Timeout(_)));
    /// a.send(&5u32)?;
    /// assert_eq!(b.recv_timeout::<u32>(Duration::from_secs(60))?, 5);
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the message is not all there by the deadline, and those of
    /// [`recv`](Self::recv).
    pub fn recv_timeout<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, Error> {
        self.buffer_message(timeout)?;
        let result = self.recv();
        self.rbuf.shrink();
        result
    }

    /// Receives one message like [`recv_bytes`](Self::recv_bytes), waiting at most `timeout`
    /// for all of it (see [`recv_timeout`](Self::recv_timeout): an incomplete message stays
    /// buffered for the next call).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the message is not all there by the deadline, and those of
    /// [`recv_bytes`](Self::recv_bytes).
    pub fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Vec<u8>, Error> {
        self.buffer_message(timeout)?;
        let result = self.recv_bytes();
        self.rbuf.shrink();
        result
    }

    /// Reads until a whole message (or the end of the stream, or a bad header) is buffered;
    /// [`Error::Timeout`] if that does not happen within `timeout`. Consumes nothing.
    fn buffer_message(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now().checked_add(timeout);
        let max = self.limit.unwrap_or(isize::MAX as usize);
        let (fd, rbuf) = self.reader()?;
        if !rbuf.buffer_frame(fd, deadline, max)? {
            return Err(Error::Timeout(timeout));
        }
        let marker = frame::SIDE_MARKER.to_be_bytes();
        if let Some(side) = &mut self.side
            && self.rbuf.pending().starts_with(&marker)
            && !side.rbuf.buffer_frame(side.fd.as_fd(), deadline, max)?
        {
            return Err(Error::Timeout(timeout));
        }
        Ok(())
    }

    /// Returns whether a message (or the end of the stream) is ready to be received (Python's
    /// `poll`).
    ///
    /// `None` waits forever, `Some(Duration::ZERO)` only checks. A whole message already read
    /// ahead counts at once; otherwise, as in Python, the connection is ready when its fd has
    /// bytes (the first of a message: the receive may still wait for the rest) or is at its
    /// end (the next receive then reports [`Error::Eof`]).
    ///
    /// # Errors
    ///
    /// [`Error::NotReadable`] / [`Error::Closed`] / [`Error::Poisoned`] when the connection
    /// cannot be read; [`Error::Io`] when `poll()` fails.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let (fd, rbuf) = self.reader()?;
        if rbuf.has_message() {
            return Ok(true);
        }
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        wait_readable(fd, deadline)
    }

    /// Sets the largest message this end accepts; `None` (the default, as in Python) means
    /// no limit.
    ///
    /// A header announcing more is refused with [`Error::MessageTooLarge`] before anything is
    /// allocated, and the read side is disabled afterwards (Python's `recv_bytes(maxlength)`).
    /// Even without a limit, memory is only reserved as bytes actually arrive, so a corrupt
    /// header cannot make the process allocate what it claims.
    pub fn set_max_message_size(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// The largest message this end accepts (see [`set_max_message_size`](Self::set_max_message_size)).
    pub fn max_message_size(&self) -> Option<usize> {
        self.limit
    }

    /// Closes both fds (Python's `close`). Idempotent; dropping the connection does the same.
    pub fn close(&mut self) {
        self.read = None;
        self.write = None;
        self.side = None;
        self.rbuf = ReadBuf::default();
        self.wbuf = Vec::new();
        self.poisoned = false;
    }

    /// Returns whether the connection has no fd left (Python's `closed`).
    pub fn is_closed(&self) -> bool {
        self.read.is_none() && self.write.is_none()
    }

    /// Returns whether messages can be received (Python's `readable`).
    pub fn readable(&self) -> bool {
        self.read.is_some()
    }

    /// Returns whether messages can be sent (Python's `writable`).
    pub fn writable(&self) -> bool {
        self.write.is_some()
    }

    /// Returns whether handles can be sent: the write fd is a Unix socket (as with
    /// [`socketpair`]), or this is an end of a [`pipe`] (its side socket carries them).
    pub fn carries_handles(&self) -> bool {
        self.write.is_some() && (self.write_socket || self.side.is_some())
    }

    /// The fd messages are read from, if any; to wait for readiness together with other fds
    /// (or use [`wait`](crate::wait()), which also sees messages already read ahead).
    ///
    /// Bytes already buffered by the connection do not show on the fd: check
    /// [`poll`](Self::poll) with [`Duration::ZERO`] before waiting on it.
    pub fn read_fd(&self) -> Option<BorrowedFd<'_>> {
        self.read.as_ref().map(AsFd::as_fd)
    }

    /// The fd messages are written to, if any.
    pub fn write_fd(&self) -> Option<BorrowedFd<'_>> {
        self.write.as_ref().map(AsFd::as_fd)
    }

    /// The side socket of a [`pipe`] end, which carries its large messages and handles; for
    /// tests and the fuzz harness, which write raw frames through it. Not a stable API.
    #[doc(hidden)]
    pub fn side_fd(&self) -> Option<BorrowedFd<'_>> {
        self.side.as_ref().map(|side| side.fd.as_fd())
    }

    /// Whether a whole message (or a bad header) is already buffered: a receive would not
    /// block. Used by [`wait`](crate::wait()).
    pub(crate) fn has_buffered_message(&self) -> bool {
        self.read.is_some() && self.rbuf.has_message()
    }

    /// The read fd, or why there is none.
    pub(crate) fn readable_fd(&self) -> Result<BorrowedFd<'_>, Error> {
        match &self.read {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(self.no_reader()),
        }
    }

    fn no_reader(&self) -> Error {
        if self.poisoned {
            Error::Poisoned
        } else if self.is_closed() {
            Error::Closed
        } else {
            Error::NotReadable
        }
    }

    fn reader(&mut self) -> Result<(BorrowedFd<'_>, &mut ReadBuf), Error> {
        let err = self.no_reader();
        match &self.read {
            Some(fd) => Ok((fd.as_fd(), &mut self.rbuf)),
            None => Err(err),
        }
    }

    /// Grows the kernel buffer of the write pipe (64 KiB by default) towards the message size,
    /// up to [`MAX_PIPE_CAPACITY`], so a large message goes out in few writes and the reader
    /// is woken less often. Tried once per size step; a refusal (a socket, or the per-user
    /// pipe memory limit) is not an error.
    fn grow_pipe(&mut self, len: usize) {
        let want = (len + MAX_HEADER_LEN)
            .next_power_of_two()
            .min(MAX_PIPE_CAPACITY);
        if want <= self.pipe_capacity {
            return;
        }
        if let Some(fd) = &self.write {
            self.pipe_capacity = rustix::pipe::fcntl_setpipe_size(fd, want).unwrap_or(usize::MAX);
        }
    }

    /// The write fd, or why there is none.
    fn write_end(&self) -> Result<BorrowedFd<'_>, Error> {
        match &self.write {
            Some(fd) => Ok(fd.as_fd()),
            None if self.is_closed() => Err(Error::Closed),
            None => Err(Error::NotWritable),
        }
    }

    fn writer(&mut self) -> Result<(BorrowedFd<'_>, &mut Vec<u8>), Error> {
        match &self.write {
            Some(fd) => Ok((fd.as_fd(), &mut self.wbuf)),
            None if self.is_closed() => Err(Error::Closed),
            None => Err(Error::NotWritable),
        }
    }

    /// Reads a header, checks its length, then lets `payload` read the payload (given the
    /// stream position of the header, which places the message's fds). Errors that lose the
    /// message boundaries disable the read side.
    fn recv_frame<T>(
        &mut self,
        payload: impl FnOnce(&mut ReadBuf, BorrowedFd<'_>, usize, u64) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let limit = self.limit;
        let no_reader = self.no_reader();
        let Connection {
            read, rbuf, side, ..
        } = self;
        let (mut fd, mut rbuf) = match read.as_ref() {
            Some(fd) => (fd.as_fd(), rbuf),
            None => return Err(no_reader),
        };
        let mut at = rbuf.position();
        let mut header = rbuf.read_header(fd, limit);
        if let (Err(Error::InvalidLength(frame::SIDE_MARKER)), Some(side)) = (&header, side) {
            // The message is on the side socket.
            rbuf.consume(4);
            (fd, rbuf) = (side.fd.as_fd(), &mut side.rbuf);
            at = rbuf.position();
            header = match rbuf.read_header(fd, limit) {
                Err(Error::Eof) => Err(Error::Truncated {
                    expected: MAX_HEADER_LEN as u64,
                    received: 0,
                }),
                other => other,
            };
        }
        let result = match header {
            Ok(len) => {
                // Fds that arrived wholly before this message belong to no message left.
                rbuf.fds.discard_before(at);
                payload(rbuf, fd, len, at)
            }
            // A bad header: the boundaries of every later message are unknown.
            Err(e @ (Error::MessageTooLarge { .. } | Error::InvalidLength(_))) => {
                self.poison();
                return Err(e);
            }
            // Nothing was consumed (an incomplete header stays buffered): the stream is intact.
            Err(e) => return Err(e),
        };
        // An I/O error mid-payload leaves an unknown part of the message unread.
        if let Err(Error::Io(_)) = result {
            self.poison();
        }
        result
    }

    /// Disables the read side for good (Python's `_bad_message_length`), closing its fd so a
    /// writer blocked on a full pipe gets `BrokenPipe` instead of waiting forever. The side
    /// socket, which also sends, is shut down for reading instead (its peer's sends then fail
    /// with `BrokenPipe` too; the socket is shared with this end's clones).
    fn poison(&mut self) {
        self.read = None;
        self.rbuf = ReadBuf::default();
        if let Some(side) = &mut self.side {
            side.rbuf = ReadBuf::side();
            // Not being able to shut it down (it cannot fail on a connected socket) leaves a
            // peer's large send blocked, as on a pipe whose reader never reads.
            let _ = rustix::net::shutdown(&side.fd, rustix::net::Shutdown::Read);
        }
        self.poisoned = true;
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("read", &self.read.as_ref().map(AsRawFd::as_raw_fd))
            .field("write", &self.write.as_ref().map(AsRawFd::as_raw_fd))
            .field("side", &self.side.as_ref().map(|s| s.fd.as_raw_fd()))
            .field("buffered", &self.rbuf.pending().len())
            .field("closed", &self.is_closed())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// The wire form of a [`Connection`] handed to a child or sent over a socket: both fds travel
/// through the fd table of `multiproc_core::reduction`, the bytes read ahead but not yet
/// received travel inline, with the fds that arrived for them.
#[derive(Serialize)]
struct WireRef<'a> {
    #[serde(serialize_with = "ser_opt_fd")]
    read: &'a Option<OwnedFd>,
    #[serde(serialize_with = "ser_opt_fd")]
    write: &'a Option<OwnedFd>,
    pending: &'a [u8],
    limit: Option<u64>,
    poisoned: bool,
    queued: Vec<WireBatchRef<'a>>,
    side: Option<WireSideRef<'a>>,
}

/// The wire form of a [`Side`]: its socket, and what its buffer read ahead.
#[derive(Serialize)]
struct WireSideRef<'a> {
    fd: FdRef<'a>,
    pending: &'a [u8],
    queued: Vec<WireBatchRef<'a>>,
}

#[derive(Deserialize)]
struct WireSide {
    fd: FdOwned,
    pending: Vec<u8>,
    queued: Vec<WireBatch>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(with = "multiproc_core::reduction::opt_fd")]
    read: Option<OwnedFd>,
    #[serde(with = "multiproc_core::reduction::opt_fd")]
    write: Option<OwnedFd>,
    pending: Vec<u8>,
    limit: Option<u64>,
    poisoned: bool,
    queued: Vec<WireBatch>,
    side: Option<WireSide>,
}

/// A batch of received fds, its positions relative to the first pending byte.
#[derive(Serialize)]
struct WireBatchRef<'a> {
    start: u64,
    end: u64,
    fds: Vec<FdRef<'a>>,
}

#[derive(Deserialize)]
struct WireBatch {
    start: u64,
    end: u64,
    fds: Vec<FdOwned>,
}

struct FdRef<'a>(&'a OwnedFd);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        reduction::serialize_fd(self.0.as_fd(), serializer)
    }
}

struct FdOwned(OwnedFd);

impl<'de> Deserialize<'de> for FdOwned {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        reduction::deserialize_fd(deserializer).map(FdOwned)
    }
}

fn ser_opt_fd<S: Serializer>(fd: &&Option<OwnedFd>, serializer: S) -> Result<S::Ok, S::Error> {
    multiproc_core::reduction::opt_fd::serialize(fd, serializer)
}

/// A connection is handed to a child process as a `Process` argument, or sent over a
/// [`socketpair`] connection: its fds are duplicated into the receiver, with the bytes it had
/// read ahead (and their fds) and its size limit. Serialising it outside
/// `multiproc_core::reduction::encode` fails.
///
/// A connection given to `Process::new` is moved into the process object and closed in the
/// parent when `start` returns (Python keeps its `child_conn` open until the program closes
/// it). A connection serialised by reference stays open in the sender: as in Python, only one
/// process should then go on reading (and one writing) each direction.
impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            read: &self.read,
            write: &self.write,
            pending: self.rbuf.pending(),
            limit: self.limit.map(|l| l as u64),
            poisoned: self.poisoned,
            queued: self.rbuf.queued_fds(),
            side: self.side.as_ref().map(|side| WireSideRef {
                fd: FdRef(&side.fd),
                pending: side.rbuf.pending(),
                queued: side.rbuf.queued_fds(),
            }),
        }
        .serialize(serializer)
    }
}

impl ReadBuf {
    /// The fd batches still queued, their positions relative to the first pending byte.
    fn queued_fds(&self) -> Vec<WireBatchRef<'_>> {
        let base = self.position();
        self.fds
            .batches
            .iter()
            .filter(|b| b.end > base)
            .map(|b| WireBatchRef {
                start: b.start.saturating_sub(base),
                end: b.end - base,
                fds: b.fds.iter().map(FdRef).collect(),
            })
            .collect()
    }

    /// Restores what a handed-over end had read ahead, and its fds.
    fn restore(&mut self, pending: Vec<u8>, queued: Vec<WireBatch>) {
        if !pending.is_empty() {
            self.total = pending.len() as u64;
            self.buf = pending;
        }
        for batch in queued {
            let fds = batch.fds.into_iter().map(|f| f.0).collect();
            self.fds.push(batch.start, batch.end, fds);
        }
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let mut conn = Connection::from_fds(wire.read, wire.write);
        // A limit beyond this machine's address space is no limit.
        conn.limit = wire.limit.and_then(|l| usize::try_from(l).ok());
        conn.poisoned = wire.poisoned;
        conn.rbuf.restore(wire.pending, wire.queued);
        conn.side = wire.side.map(|wire| {
            let mut side = Side::new(wire.fd.0);
            side.rbuf.restore(wire.pending, wire.queued);
            side
        });
        Ok(conn)
    }
}

/// Fds received with messages and not yet claimed, in arrival order, each batch with the
/// stream positions of the read that brought it (`start..end`).
///
/// A sender attaches a message's fds to the first bytes of its frame, and the kernel hands
/// them over with the first read that touches those bytes, ending that read there. So a
/// message whose header starts at position `at` owns the batch whose read covered `at`; a
/// batch that ended before `at` belongs to an earlier message that did not claim it (a
/// misbehaving peer) and is closed.
#[derive(Default)]
struct FdQueue {
    batches: VecDeque<FdBatch>,
    queued: usize,
}

struct FdBatch {
    start: u64,
    end: u64,
    fds: Vec<OwnedFd>,
}

impl FdQueue {
    /// Queues a batch; beyond [`MAX_QUEUED_FDS`] the batch is closed instead.
    fn push(&mut self, start: u64, end: u64, fds: Vec<OwnedFd>) {
        if fds.is_empty() || self.queued + fds.len() > MAX_QUEUED_FDS {
            return;
        }
        self.queued += fds.len();
        self.batches.push_back(FdBatch { start, end, fds });
    }

    /// Closes every batch that arrived wholly before position `at`.
    fn discard_before(&mut self, at: u64) {
        while self.batches.front().is_some_and(|b| b.end <= at) {
            self.pop();
        }
    }

    fn pop(&mut self) -> Option<FdBatch> {
        let batch = self.batches.pop_front()?;
        self.queued -= batch.fds.len();
        Some(batch)
    }

    /// Takes the `count` fds of the message whose header starts at `at`.
    fn take(&mut self, at: u64, count: usize) -> Result<Vec<OwnedFd>, Error> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.discard_before(at);
        let front = self.batches.front();
        let arrived = match front {
            Some(b) if b.start <= at && at < b.end => b.fds.len(),
            _ => 0,
        };
        if arrived != count {
            if arrived > 0 {
                self.pop();
            }
            return Err(Error::Decode(format!(
                "the message announces {count} file descriptors but {arrived} arrived with it"
            )));
        }
        Ok(self.pop().map(|b| b.fds).unwrap_or_default())
    }
}

/// Decodes a typed message: its fd count, then the value (through `reduction::decode` when
/// it carries fds, which `take_fds` supplies).
fn decode_message<T: DeserializeOwned>(
    payload: &[u8],
    take_fds: impl FnOnce(usize) -> Result<Vec<OwnedFd>, Error>,
) -> Result<T, Error> {
    let (count, rest) = postcard::take_from_bytes::<u32>(payload).map_err(|e| {
        Error::Decode(format!(
            "not a typed message (no file-descriptor count): {e}"
        ))
    })?;
    if count == 0 {
        return match postcard::take_from_bytes(rest) {
            Ok((value, [])) => Ok(value),
            Ok((_, left)) => Err(Error::Decode(format!(
                "{} bytes left over after the value",
                left.len()
            ))),
            Err(e) => Err(Error::Decode(e.to_string())),
        };
    }
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > MAX_HANDLE_FDS {
        return Err(Error::Decode(format!(
            "the message announces {count} file descriptors (at most {MAX_HANDLE_FDS})"
        )));
    }
    let fds = take_fds(count)?;
    reduction::decode(rest, fds).map_err(|e| Error::Decode(e.to_string()))
}

/// Buffered reads: one `read()` normally brings a whole small message, often several.
///
/// `buf[pos..]` holds the bytes read but not yet consumed; from a pipe, bytes are read into
/// the spare capacity of `buf`, so the buffer is never zero-filled.
#[derive(Default)]
struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    /// The fd is a Unix socket: read with `recvmsg`, collecting fds.
    socket: bool,
    /// Never read ahead beyond the header or payload asked for (a [`Side`] socket, whose
    /// messages are large: their payloads are read straight into their destination).
    exact: bool,
    /// Bytes read from the fd so far (the stream position of the end of `buf`).
    total: u64,
    fds: FdQueue,
}

impl ReadBuf {
    /// The read buffer of a [`Side`] socket.
    fn side() -> Self {
        ReadBuf {
            socket: true,
            exact: true,
            ..ReadBuf::default()
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The stream position of the first pending byte.
    fn position(&self) -> u64 {
        self.total - self.pending().len() as u64
    }

    /// Whether a whole message, or a header a receive would refuse at once, is buffered.
    fn has_message(&self) -> bool {
        match frame::decode_header(self.pending()) {
            Ok(Header::Needed(_)) => false,
            Ok(Header::Len { len, header_len }) => {
                (self.pending().len() - header_len) as u64 >= len
            }
            Err(_) => true,
        }
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.pos = 0;
            self.buf.clear();
        }
    }

    /// Drops everything buffered (after the end of the stream came inside a message).
    fn discard(&mut self) -> u64 {
        let dropped = self.pending().len() as u64;
        self.pos = 0;
        self.buf.clear();
        dropped
    }

    /// Gives back the memory of a buffer that grew for one big message.
    fn shrink(&mut self) {
        if self.buf.capacity() > RETAIN {
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.shrink_to(READ_BUF);
        }
    }

    /// Reads once into `dst` (retrying `EINTR`): `recvmsg` on a socket, queueing the fds that
    /// arrive, `read` otherwise.
    fn read_into(&mut self, fd: BorrowedFd<'_>, dst: &mut [u8]) -> Result<usize, Error> {
        self.read_vectored(fd, &mut [IoSliceMut::new(dst)])
    }

    /// [`read_into`](Self::read_into) for several buffers (`readv`).
    fn read_vectored(
        &mut self,
        fd: BorrowedFd<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Result<usize, Error> {
        let n = if self.socket {
            recv_with_fds(fd, bufs, self.total, &mut self.fds)?
        } else {
            retry_on_intr(|| rustix::io::readv(fd, bufs)).map_err(os)?
        };
        self.total += n as u64;
        Ok(n)
    }

    /// Reads once straight into `dst` (the rest of a payload), and whatever follows it, up to
    /// the longest header, into the buffer: a stream of large messages then takes one read
    /// per message, and no copy. Returns the bytes read into `dst`, 0 at the end of the
    /// stream. Precondition: nothing is pending.
    fn read_split(&mut self, fd: BorrowedFd<'_>, dst: &mut [u8]) -> Result<usize, Error> {
        debug_assert!(self.pending().is_empty());
        let mut next = [0u8; MAX_HEADER_LEN];
        let n = self.read_vectored(fd, &mut [IoSliceMut::new(dst), IoSliceMut::new(&mut next)])?;
        let into_dst = n.min(dst.len());
        self.buf.extend_from_slice(&next[..n - into_dst]);
        Ok(into_dst)
    }

    /// Reads once (retrying `EINTR`), making room for `want` pending bytes but reserving at
    /// most [`MAX_AHEAD`] beyond what arrived. Returns the number of bytes read, 0 at the end of
    /// the stream. Precondition: fewer than `want` bytes are pending.
    fn fill(&mut self, fd: BorrowedFd<'_>, want: usize) -> Result<usize, Error> {
        let full = self.buf.len() == self.buf.capacity();
        if self.pos > 0 && (full || self.pos + want > self.buf.capacity()) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            let target = want.max(READ_BUF);
            self.buf
                .reserve_exact((target - self.buf.len()).min(MAX_AHEAD));
        }
        if self.socket {
            // `recvmsg` takes initialised memory: zero a window of what is needed (at least
            // 16 KiB, so that several small messages come in one read, unless `exact`).
            let start = self.buf.len();
            let needed = want.saturating_sub(self.pending().len());
            let needed = if self.exact {
                needed
            } else {
                needed.max(16 * 1024)
            };
            let window = (self.buf.capacity() - start).min(needed).min(SOCKET_WINDOW);
            self.buf.resize(start + window, 0);
            let mut data = std::mem::take(&mut self.buf);
            let result = self.read_into(fd, &mut data[start..]);
            data.truncate(start + *result.as_ref().unwrap_or(&0));
            self.buf = data;
            return result;
        }
        let n =
            retry_on_intr(|| rustix::io::read(fd, spare_capacity(&mut self.buf))).map_err(os)?;
        self.total += n as u64;
        Ok(n)
    }

    /// Reads until a whole message, the end of the stream or a header a receive would refuse
    /// is buffered (`true`), or `deadline` passed first (`false`). Consumes nothing.
    fn buffer_frame(
        &mut self,
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
        max: usize,
    ) -> Result<bool, Error> {
        loop {
            let want = match frame::decode_header(self.pending()) {
                Ok(Header::Needed(n)) => n,
                Ok(Header::Len { len, header_len }) => match usize::try_from(len) {
                    Ok(n) if n <= max => match n.checked_add(header_len) {
                        Some(total) => total,
                        None => return Ok(true),
                    },
                    // The receive reports the bad header.
                    _ => return Ok(true),
                },
                Err(_) => return Ok(true),
            };
            if self.pending().len() >= want {
                return Ok(true);
            }
            if !wait_readable(fd, deadline)? {
                return Ok(false);
            }
            if self.fill(fd, want)? == 0 {
                // The end of the stream: the receive reports `Eof` or `Truncated`.
                return Ok(true);
            }
        }
    }

    /// Makes sure at least `want` bytes are pending.
    fn fill_to(&mut self, fd: BorrowedFd<'_>, want: usize) -> Result<(), Error> {
        while self.pending().len() < want {
            if self.fill(fd, want)? == 0 {
                return Err(Error::Truncated {
                    expected: want as u64,
                    received: self.discard(),
                });
            }
        }
        Ok(())
    }

    /// Reads and consumes a header; returns the payload length.
    fn read_header(&mut self, fd: BorrowedFd<'_>, limit: Option<usize>) -> Result<usize, Error> {
        loop {
            match frame::decode_header(self.pending())? {
                Header::Len { len, header_len } => {
                    let max = limit.unwrap_or(isize::MAX as usize);
                    return match usize::try_from(len) {
                        Ok(n) if n <= max => {
                            self.consume(header_len);
                            Ok(n)
                        }
                        _ => Err(Error::MessageTooLarge {
                            size: len,
                            limit: max,
                        }),
                    };
                }
                Header::Needed(want) => {
                    if self.fill(fd, want)? == 0 {
                        return match self.discard() {
                            0 => Err(Error::Eof),
                            received => Err(Error::Truncated {
                                expected: want as u64,
                                received,
                            }),
                        };
                    }
                }
            }
        }
    }

    /// Moves up to `dst.len()` pending bytes into `dst`; returns how many.
    fn take_pending(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.pending().len());
        dst[..n].copy_from_slice(&self.pending()[..n]);
        self.consume(n);
        n
    }

    /// Reads a payload of exactly `dst.len()` bytes into `dst`.
    fn read_to_slice(&mut self, fd: BorrowedFd<'_>, dst: &mut [u8]) -> Result<(), Error> {
        let mut got = self.take_pending(dst);
        while got < dst.len() {
            let rest = &mut dst[got..];
            // A short tail goes through the buffer, so the same read can bring what follows.
            let read = if rest.len() < READ_BUF && !self.exact {
                self.fill(fd, rest.len())?;
                self.take_pending(rest)
            } else {
                self.read_split(fd, rest)?
            };
            if read == 0 {
                return Err(Error::Truncated {
                    expected: dst.len() as u64,
                    received: got as u64,
                });
            }
            got += read;
        }
        Ok(())
    }

    /// Reads a payload of `len` bytes, appending it to `out` (empty on entry), growing `out`
    /// only as bytes arrive.
    fn read_to_vec(
        &mut self,
        fd: BorrowedFd<'_>,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let buffered = len.min(self.pending().len());
        out.reserve_exact(len.min(MAX_AHEAD).max(buffered));
        out.extend_from_slice(&self.pending()[..buffered]);
        self.consume(buffered);
        while out.len() < len {
            let rest = len - out.len();
            let read = if rest < READ_BUF && !self.exact {
                self.fill(fd, rest)?;
                let n = rest.min(self.pending().len());
                out.extend_from_slice(&self.pending()[..n]);
                self.consume(n);
                n
            } else {
                if out.len() == out.capacity() {
                    out.reserve_exact(rest.min(MAX_AHEAD));
                }
                self.read_within(fd, out, rest)?
            };
            if read == 0 {
                return Err(Error::Truncated {
                    expected: len as u64,
                    received: out.len() as u64,
                });
            }
        }
        Ok(())
    }

    /// Reads into the spare capacity of `out`, at most `max` bytes (never past the message).
    fn read_within(
        &mut self,
        fd: BorrowedFd<'_>,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, Error> {
        // From a side socket too: within a payload no fds can arrive (they come with a frame's
        // first bytes, read with its header).
        if (!self.socket || self.exact) && out.capacity() - out.len() <= max {
            let n = retry_on_intr(|| rustix::io::read(fd, spare_capacity(out))).map_err(os)?;
            self.total += n as u64;
            return Ok(n);
        }
        // An initialised window of at most `max` bytes (the allocator gave more than asked,
        // or `recvmsg` needs initialised memory).
        let start = out.len();
        let window = (out.capacity() - start).clamp(1, max).min(SOCKET_WINDOW);
        out.resize(start + window, 0);
        let result = self.read_into(fd, &mut out[start..]);
        out.truncate(start + *result.as_ref().unwrap_or(&0));
        result
    }
}

/// One `recvmsg` into `dst` (retrying `EINTR`) with `MSG_CMSG_CLOEXEC`; the fds that arrive
/// are queued with the stream positions this read covers (`at..at + n`).
fn recv_with_fds(
    fd: BorrowedFd<'_>,
    bufs: &mut [IoSliceMut<'_>],
    at: u64,
    queue: &mut FdQueue,
) -> Result<usize, Error> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_HANDLE_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = retry_on_intr(|| {
        rustix::net::recvmsg(fd, &mut *bufs, &mut control, RecvFlags::CMSG_CLOEXEC)
    })
    .map_err(os)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    queue.push(at, at + msg.bytes as u64, fds);
    Ok(msg.bytes)
}

/// Sends a frame over a [`pipe`]'s side socket (`fds` attached to its first bytes), announced
/// on the pipe by a [`frame::SIDE_MARKER`] header. As much of the frame as the socket takes
/// without blocking goes first, so that the reader, woken by the marker, usually finds the
/// frame there; then the marker; then the rest, blocking (the reader reads the socket only
/// after the marker).
fn send_via_side(
    pipe: BorrowedFd<'_>,
    socket: BorrowedFd<'_>,
    mut frame: &mut [IoSlice<'_>],
    fds: &[OwnedFd],
) -> Result<(), Error> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_HANDLE_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(Error::Encode(format!(
            "cannot attach {} file descriptors to one message",
            fds.len()
        )));
    }
    let mut announced = false;
    let mut flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    while !frame.is_empty() {
        match rustix::net::sendmsg(socket, frame, &mut control, flags) {
            Ok(0) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                // The fds went with the first bytes.
                control.clear();
                IoSlice::advance_slices(&mut frame, n);
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if !announced => {
                write_all(pipe, &frame::SIDE_MARKER.to_be_bytes())?;
                announced = true;
                flags = SendFlags::NOSIGNAL;
            }
            Err(e) => return Err(write_error(e)),
        }
    }
    if !announced {
        write_all(pipe, &frame::SIDE_MARKER.to_be_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` with `fds` attached to the first `sendmsg`, then the rest.
fn send_with_fds(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[OwnedFd]) -> Result<(), Error> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_HANDLE_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(Error::Encode(format!(
            "cannot attach {} file descriptors to one message",
            fds.len()
        )));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            fd,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(write_error(e)),
        }
    };
    write_all(fd, &bytes[sent..])
}

/// Waits until `fd` is readable or at its end; `false` when `deadline` passed first (`None`:
/// no deadline).
fn wait_readable(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> Result<bool, Error> {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timespec = remaining.and_then(|r| Timespec::try_from(r).ok());
        match rustix::event::poll(&mut fds, timespec.as_ref()) {
            // POLLIN, and POLLHUP at the end of the stream, both mean ready.
            Ok(ready) => return Ok(ready > 0),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(os(e)),
        }
    }
}

/// Whether `fd` is a Unix socket (which can pass fds); a TCP socket is read and written as a
/// pipe is.
fn is_socket(fd: &OwnedFd) -> bool {
    rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// What an fd is, for an error message (`pipe:[1234]`, `/memfd:multiproc-heap (deleted)` …).
fn describe_fd(fd: &OwnedFd) -> String {
    let raw = fd.as_raw_fd();
    match std::fs::read_link(format!("/proc/self/fd/{raw}")) {
        Ok(target) => target.to_string_lossy().into_owned(),
        Err(_) => format!("fd {raw}"),
    }
}

/// postcard's message for an error, with the reason its serde custom errors drop.
fn describe_postcard_error(e: &postcard::Error) -> String {
    match e {
        postcard::Error::SerdeSerCustom => format!(
            "{e}: a Serialize implementation refused the value (postcard does not keep its \
             reason)"
        ),
        _ => e.to_string(),
    }
}

fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Error> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(0) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(write_error(e)),
        }
    }
    Ok(())
}

fn write_all_vectored(fd: BorrowedFd<'_>, mut bufs: &mut [IoSlice<'_>]) -> Result<(), Error> {
    while !bufs.is_empty() {
        match rustix::io::writev(fd, bufs) {
            Ok(0) => return Err(Error::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(Errno::INTR) => {}
            Err(e) => return Err(write_error(e)),
        }
    }
    Ok(())
}

fn write_error(e: Errno) -> Error {
    if e == Errno::PIPE {
        Error::BrokenPipe
    } else {
        os(e)
    }
}

fn os(e: Errno) -> Error {
    Error::Io(e.into())
}

/// A postcard output that appends to a borrowed, reused `Vec`.
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
