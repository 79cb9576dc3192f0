//! [`Connection`] and [`pipe`].

use std::fmt;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::buffer::spare_capacity;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::{Errno, retry_on_intr};
use rustix::pipe::{PipeFlags, pipe_with};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::frame::{self, Header, MAX_HEADER_LEN};

/// Messages up to this size go out as one `write()` of header and payload (Python's rule).
const SMALL_MESSAGE: usize = 16 * 1024;
/// The size of the read buffer; one `read()` normally brings a whole small message.
const READ_BUF: usize = 64 * 1024;
/// The most memory reserved ahead of the bytes that actually arrived, whatever a header claims.
const MAX_AHEAD: usize = 64 * 1024 * 1024;
/// Buffers that grew beyond this for one big message are shrunk back afterwards.
const RETAIN: usize = 1024 * 1024;
/// The largest pipe buffer a connection asks for (Linux's default `pipe-max-size`).
const MAX_PIPE_CAPACITY: usize = 1024 * 1024;

/// Creates a pair of connected [`Connection`]s (Python's `multiprocessing.Pipe(duplex)`).
///
/// With `duplex`, both ends can send and receive: they are two OS pipes, the first end
/// reading pipe A and writing pipe B, the second the reverse (faster than the socketpair
/// Python uses; the messages on the wire are the same). Without `duplex`, the first end is
/// read-only and the second write-only, in Python's order: `let (r, w) = pipe(false)?`.
///
/// All fds are close-on-exec; hand a connection to a child process as a `Process` argument.
///
/// ```
/// let (mut r, mut w) = multiproc_ipc::pipe(false)?;
/// w.send_bytes(b"one way")?;
/// assert_eq!(r.recv_bytes()?, b"one way");
/// assert!(w.recv_bytes().is_err()); // write-only
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
///
/// ```python
/// r, w = multiprocessing.Pipe(duplex=False)
/// ```
///
/// # Errors
///
/// [`Error::Io`] when the pipes cannot be created (for example too many open files).
pub fn pipe(duplex: bool) -> Result<(Connection, Connection), Error> {
    let (read_a, write_a) = pipe_with(PipeFlags::CLOEXEC).map_err(os)?;
    if duplex {
        let (read_b, write_b) = pipe_with(PipeFlags::CLOEXEC).map_err(os)?;
        Ok((
            Connection::from_fds(Some(read_a), Some(write_b)),
            Connection::from_fds(Some(read_b), Some(write_a)),
        ))
    } else {
        Ok((
            Connection::from_fds(Some(read_a), None),
            Connection::from_fds(None, Some(write_a)),
        ))
    }
}

/// One end of a message channel, framed as Python's `multiprocessing.connection.Connection`.
///
/// [`send_bytes`](Self::send_bytes) / [`recv_bytes`](Self::recv_bytes) exchange raw messages
/// byte-for-byte compatible with Python's; [`send`](Self::send) / [`recv`](Self::recv) carry
/// any serde type encoded with postcard (Python's `send`/`recv` pickle instead). Message
/// boundaries are preserved; an empty message is a message.
///
/// A connection is not safe for concurrent use by several readers (or several writers) on the
/// same underlying pipe, in one process or several: like Python's, it needs an outside lock
/// for that. Sending takes `&mut self`, so within one process the borrow checker enforces it.
///
/// Dropping a connection closes its fds; [`close`](Self::close) does so early.
///
/// ```
/// let (mut a, mut b) = multiproc_ipc::pipe(true)?;
/// a.send(&("ping", 1u32))?;
/// let (word, n): (String, u32) = b.recv()?;
/// b.send_bytes(format!("{word}-pong {n}").as_bytes())?;
/// assert_eq!(a.recv_bytes()?, b"ping-pong 1");
/// # Ok::<(), multiproc_ipc::Error>(())
/// ```
pub struct Connection {
    read: Option<OwnedFd>,
    write: Option<OwnedFd>,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    limit: Option<usize>,
    poisoned: bool,
    /// Capacity the write pipe was grown to for large messages (0: not yet tried).
    pipe_capacity: usize,
}

impl Connection {
    /// Makes a connection from an fd to read messages from and an fd to write them to.
    ///
    /// Either may be `None` (a write-only or read-only end). For a socket, which carries both
    /// directions on one fd, pass the socket and a duplicate of it (`try_clone`). The fds
    /// must be in blocking mode; a connection with neither fd is closed.
    pub fn from_fds(read: Option<OwnedFd>, write: Option<OwnedFd>) -> Self {
        Connection {
            read,
            write,
            rbuf: ReadBuf::default(),
            wbuf: Vec::new(),
            limit: None,
            poisoned: false,
            pipe_capacity: 0,
        }
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
            self.grow_pipe(buf.len());
        }
        let (fd, wbuf) = self.writer()?;
        if buf.len() <= SMALL_MESSAGE {
            wbuf.clear();
            frame::encode_header(buf.len(), wbuf);
            wbuf.extend_from_slice(buf);
            write_all(fd, wbuf)
        } else {
            let (header, used) = frame::header(buf.len());
            write_all_vectored(fd, &mut [IoSlice::new(&header[..used]), IoSlice::new(buf)])
        }
    }

    /// Sends `value` encoded with postcard as one message (Python's `send`, with postcard
    /// in place of pickle).
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when serde or postcard refuse the value (for example a handle that
    /// owns an fd, which can only travel as a `Process` argument), and the errors of
    /// [`send_bytes`](Self::send_bytes).
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let (_, wbuf) = self.writer()?;
        // Room for the longest header, patched once the payload length is known.
        wbuf.clear();
        wbuf.resize(MAX_HEADER_LEN, 0);
        postcard::serialize_with_flavor(value, VecFlavor(wbuf))
            .map_err(|e| Error::Encode(e.to_string()))?;
        let (header, used) = frame::header(wbuf.len() - MAX_HEADER_LEN);
        let start = MAX_HEADER_LEN - used;
        wbuf[start..MAX_HEADER_LEN].copy_from_slice(&header[..used]);
        let len = wbuf.len();
        if len > SMALL_MESSAGE {
            self.grow_pipe(len);
        }
        let (fd, wbuf) = self.writer()?;
        let result = write_all(fd, &wbuf[start..]);
        if wbuf.capacity() > RETAIN {
            *wbuf = Vec::new();
        }
        result
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
        self.recv_frame(|rbuf, fd, len| {
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
    /// let (mut a, mut b) = multiproc_ipc::pipe(true)?;
    /// a.send_bytes(&[1, 2, 3])?;
    /// let mut buf = [0u8; 8];
    /// assert_eq!(b.recv_bytes_into(&mut buf)?, 3);
    /// a.send_bytes(&[0; 9])?;
    /// let err = b.recv_bytes_into(&mut buf).unwrap_err();
    /// assert!(matches!(err, multiproc_ipc::Error::BufferTooShort(msg) if msg.len() == 9));
    /// # Ok::<(), multiproc_ipc::Error>(())
    /// ```
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.recv_frame(|rbuf, fd, len| match buf.get_mut(..len) {
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
    /// allocated per message beyond what `T` itself needs.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the message is not a valid encoding of `T` (wrong type, corrupt,
    /// or bytes left over); the message is consumed and the connection stays usable. Also the
    /// errors of [`recv_bytes`](Self::recv_bytes).
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, Error> {
        self.recv_frame(|rbuf, fd, len| {
            rbuf.fill_to(fd, len)?;
            let result = match postcard::take_from_bytes(&rbuf.pending()[..len]) {
                Ok((value, [])) => Ok(value),
                Ok((_, rest)) => Err(Error::Decode(format!(
                    "{} bytes left over after the value",
                    rest.len()
                ))),
                Err(e) => Err(Error::Decode(e.to_string())),
            };
            rbuf.consume(len);
            rbuf.shrink();
            result
        })
    }

    /// Receives one message like [`recv`](Self::recv), waiting at most `timeout` for it to
    /// start arriving; `Ok(None)` if nothing came.
    ///
    /// Once the first bytes are there the rest is read to the end; a peer that dies in the
    /// middle of a message ends the wait with [`Error::Truncated`], never a hang.
    ///
    /// # Errors
    ///
    /// Those of [`recv`](Self::recv) and [`poll`](Self::poll).
    pub fn recv_timeout<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<T>, Error> {
        if !self.poll(Some(timeout))? {
            return Ok(None);
        }
        self.recv().map(Some)
    }

    /// Receives one message like [`recv_bytes`](Self::recv_bytes), waiting at most `timeout`
    /// for it to start arriving; `Ok(None)` if nothing came.
    ///
    /// # Errors
    ///
    /// Those of [`recv_bytes`](Self::recv_bytes) and [`poll`](Self::poll).
    pub fn recv_bytes_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, Error> {
        if !self.poll(Some(timeout))? {
            return Ok(None);
        }
        self.recv_bytes().map(Some)
    }

    /// Returns whether a message (or the end of the stream) is ready to be received (Python's
    /// `poll`).
    ///
    /// `None` waits forever, `Some(Duration::ZERO)` only checks. The end of the stream counts
    /// as ready, as in Python: the next receive then reports [`Error::Eof`].
    ///
    /// # Errors
    ///
    /// [`Error::NotReadable`] / [`Error::Closed`] / [`Error::Poisoned`] when the connection
    /// cannot be read; [`Error::Io`] when `poll()` fails.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<bool, Error> {
        let (fd, rbuf) = self.reader()?;
        if !rbuf.pending().is_empty() {
            return Ok(true);
        }
        // A deadline too far to represent is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
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

    /// The fd messages are read from, if any; to wait for readiness together with other fds.
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

    fn reader(&mut self) -> Result<(BorrowedFd<'_>, &mut ReadBuf), Error> {
        match &self.read {
            Some(fd) => Ok((fd.as_fd(), &mut self.rbuf)),
            None if self.poisoned => Err(Error::Poisoned),
            None if self.is_closed() => Err(Error::Closed),
            None => Err(Error::NotReadable),
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

    fn writer(&mut self) -> Result<(BorrowedFd<'_>, &mut Vec<u8>), Error> {
        match &self.write {
            Some(fd) => Ok((fd.as_fd(), &mut self.wbuf)),
            None if self.is_closed() => Err(Error::Closed),
            None => Err(Error::NotWritable),
        }
    }

    /// Reads a header, checks its length, then lets `payload` read the payload. Errors that
    /// lose the message boundaries disable the read side.
    fn recv_frame<T>(
        &mut self,
        payload: impl FnOnce(&mut ReadBuf, BorrowedFd<'_>, usize) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let limit = self.limit;
        let (fd, rbuf) = self.reader()?;
        let result = match rbuf.read_header(fd, limit) {
            Ok(len) => payload(rbuf, fd, len),
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
    /// writer blocked on a full pipe gets `BrokenPipe` instead of waiting forever.
    fn poison(&mut self) {
        self.read = None;
        self.rbuf = ReadBuf::default();
        self.poisoned = true;
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("read", &self.read.as_ref().map(AsRawFd::as_raw_fd))
            .field("write", &self.write.as_ref().map(AsRawFd::as_raw_fd))
            .field("buffered", &self.rbuf.pending().len())
            .field("closed", &self.is_closed())
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

/// The wire form of a [`Connection`] handed to a child: both fds travel through the fd table
/// of `multiproc_core::reduction`, the bytes read ahead but not yet received travel inline.
#[derive(Serialize)]
struct WireRef<'a> {
    #[serde(serialize_with = "ser_opt_fd")]
    read: &'a Option<OwnedFd>,
    #[serde(serialize_with = "ser_opt_fd")]
    write: &'a Option<OwnedFd>,
    pending: &'a [u8],
    limit: Option<u64>,
    poisoned: bool,
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
}

fn ser_opt_fd<S: Serializer>(fd: &&Option<OwnedFd>, serializer: S) -> Result<S::Ok, S::Error> {
    multiproc_core::reduction::opt_fd::serialize(fd, serializer)
}

/// A connection is handed to a child process as a `Process` argument: its fds are duplicated
/// into the child, with the bytes it had read ahead and its size limit. Serialising it outside
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
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        let mut conn = Connection::from_fds(wire.read, wire.write);
        // A limit beyond this machine's address space is no limit.
        conn.limit = wire.limit.and_then(|l| usize::try_from(l).ok());
        conn.poisoned = wire.poisoned;
        if !wire.pending.is_empty() {
            conn.rbuf.buf = wire.pending;
        }
        Ok(conn)
    }
}

/// Buffered reads: one `read()` normally brings a whole small message, often several.
///
/// `buf[pos..]` holds the bytes read but not yet consumed; bytes are read into the spare
/// capacity of `buf`, so the buffer is never zero-filled.
#[derive(Default)]
struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl ReadBuf {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
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
        retry_on_intr(|| rustix::io::read(fd, spare_capacity(&mut self.buf))).map_err(os)
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
            let read = if rest.len() < READ_BUF {
                self.fill(fd, rest.len())?;
                self.take_pending(rest)
            } else {
                retry_on_intr(|| rustix::io::read(fd, &mut *rest)).map_err(os)?
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
            let read = if rest < READ_BUF {
                self.fill(fd, rest)?;
                let n = rest.min(self.pending().len());
                out.extend_from_slice(&self.pending()[..n]);
                self.consume(n);
                n
            } else {
                if out.len() == out.capacity() {
                    out.reserve_exact(rest.min(MAX_AHEAD));
                }
                read_within(fd, out, rest)?
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
}

/// Reads into the spare capacity of `out`, at most `max` bytes (never past the message).
fn read_within(fd: BorrowedFd<'_>, out: &mut Vec<u8>, max: usize) -> Result<usize, Error> {
    if out.capacity() - out.len() <= max {
        return retry_on_intr(|| rustix::io::read(fd, spare_capacity(out))).map_err(os);
    }
    // The allocator gave more than asked: read into an initialised window of `max` bytes.
    let start = out.len();
    out.resize(start + max, 0);
    let result = retry_on_intr(|| rustix::io::read(fd, &mut out[start..])).map_err(os);
    out.truncate(start + *result.as_ref().unwrap_or(&0));
    result
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
