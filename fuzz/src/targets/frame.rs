//! The `frame` target: Python's message framing as [`multiproc_ipc::frame`] parses it and as a
//! [`Connection`] receives it, from a peer that writes arbitrary bytes.
//!
//! Input: `[mode] [a: u16 LE] [b: u16 LE] [stream …]` (missing bytes read as 0).
//! `mode` picks the channel (bits 0–1: a pipe, a socketpair, a `pipe()` pair whose first
//! `b` stream bytes go to its pipe and the rest to its side socket, or a pipe (`b` even) or
//! socketpair (`b` odd) that a thread writes in chunks of `b / 2` bytes while the receiver
//! reads, so that frames arrive cut anywhere), the receive method
//! (bits 2–4), whether the writer stays open (bit 5: only the timeout receives are used then,
//! which must return `Timeout` instead of blocking; for the chunked socket: attach a stray fd,
//! a pipe end, to every seventh chunk, as a misbehaving peer could) and the size limit
//! (bits 6–7: none, `a`, `a << 8`, none). `a` is also the buffer length of `recv_bytes_into`.
//!
//! The stream (at most 60 KiB, which a pipe's buffer holds) is written whole before anything
//! is read, except by the chunking thread; then messages are received until the stream ends.
//! Rules checked:
//! - no panic; every error is a typed one (`Io` never happens here);
//! - the messages and the final error of `recv_bytes`, `recv_bytes_into` and
//!   `recv_bytes_timeout` are exactly those of a plain reference parser of the stream;
//! - a bad length poisons the read side; the end of the stream is sticky;
//! - no single allocation exceeds the limit (or, without one, 64 MiB: the most a connection
//!   reserves ahead of the bytes that arrived), whatever a header claims;
//! - no fd is left open once the connection is dropped (stray fds are closed, not leaked);
//! - `decode_header` is consistent with `encode_header` on the input's first bytes.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use multiproc_ipc::frame::{self, Header};
use multiproc_ipc::{Connection, Error};

/// The most stream bytes written (a pipe's default buffer is 64 KiB: no writer thread needed).
const MAX_STREAM: usize = 60 * 1024;
/// What a connection may reserve ahead of the bytes that arrived (multiproc-ipc's `MAX_AHEAD`).
const MAX_AHEAD: usize = 64 << 20;
/// Allocations that do not depend on a claimed length: read buffers (64 KiB), serde's cautious
/// preallocation of a `Vec` (1 MiB), the stream itself.
const BASE_ALLOCATION: usize = (1 << 20) + (128 << 10);

/// Runs one input; panics when it breaks a rule.
pub fn run(data: &[u8]) {
    check_header_codec(data);
    let input = Input::parse(data);
    let fds_before = open_fds();
    crate::reset_largest_allocation();
    let outcomes = receive_all(&input);
    let largest = crate::largest_allocation();
    assert_eq!(open_fds(), fds_before, "fds left open");
    let bound = input.limit.unwrap_or(usize::MAX).min(MAX_AHEAD) + BASE_ALLOCATION;
    assert!(
        largest <= bound,
        "allocated {largest} bytes at once (bound {bound}) for {} stream bytes",
        input.stream.len()
    );
    if input.method.is_differential() {
        let expected = reference(&input);
        assert_eq!(outcomes, expected, "{input:?}");
    }
}

/// The number of open fds of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// `decode_header` on the raw input agrees with `encode_header` and never overreaches.
fn check_header_codec(data: &[u8]) {
    match frame::decode_header(data) {
        Ok(Header::Needed(n)) => assert!((n == 4 || n == 12) && n > data.len()),
        Ok(Header::Len { len, header_len }) => {
            assert!(header_len == 4 || header_len == 12);
            assert!(header_len <= data.len());
            if header_len == 4 {
                assert!(len <= frame::MAX_SHORT_LEN as u64);
            }
            let len = usize::try_from(len).expect("64-bit");
            let mut out = Vec::new();
            frame::encode_header(len, &mut out);
            let again = frame::decode_header(&out).expect("an encoded header decodes");
            assert_eq!(
                again,
                Header::Len {
                    len: len as u64,
                    header_len: out.len()
                }
            );
        }
        Err(Error::InvalidLength(n)) => {
            assert!(n < -1);
            assert_eq!(data[..4], n.to_be_bytes());
        }
        Err(other) => panic!("decode_header: unexpected {other:?}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    /// A plain pipe (`Connection::from_fds`).
    Pipe,
    /// A Unix socketpair (`socketpair()`).
    Socket,
    /// A `pipe()` pair: its pipe and its side socket.
    PipePair,
    /// A pipe or a socketpair written by a thread in chunks of `chunk` bytes.
    Chunked {
        socket: bool,
        chunk: usize,
        stray_fds: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Bytes,
    Into,
    TypedBytes,
    TypedTuple,
    BytesTimeout,
    TypedTimeout,
    PollThenBytes,
    /// Each message with the next method of the blocking four (or the two timeout ones).
    Mixed,
}

impl Method {
    /// Whether the outcomes are compared with the reference parser.
    fn is_differential(self) -> bool {
        matches!(self, Method::Bytes | Method::Into | Method::BytesTimeout)
    }
}

#[derive(Debug)]
struct Input<'a> {
    channel: Channel,
    method: Method,
    keep_open: bool,
    limit: Option<usize>,
    buf_len: usize,
    split: usize,
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn parse(data: &'a [u8]) -> Self {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let mode = byte(0);
        let a = usize::from(u16::from_le_bytes([byte(1), byte(2)]));
        let b = usize::from(u16::from_le_bytes([byte(3), byte(4)]));
        let stream = data.get(5..).unwrap_or(&[]);
        let stream = &stream[..stream.len().min(MAX_STREAM)];
        let channel = match mode & 3 {
            0 => Channel::Pipe,
            1 => Channel::Socket,
            2 => Channel::PipePair,
            _ => Channel::Chunked {
                socket: b & 1 == 1,
                chunk: (b >> 1).max(1),
                stray_fds: b & 1 == 1 && mode & 0x20 != 0,
            },
        };
        // A receive that times out while the thread still writes would be a race, not a bug.
        let keep_open = mode & 0x20 != 0 && !matches!(channel, Channel::Chunked { .. });
        let method = match (mode >> 2) & 7 {
            0 => Method::Bytes,
            1 => Method::Into,
            2 => Method::TypedBytes,
            3 => Method::TypedTuple,
            4 => Method::BytesTimeout,
            5 => Method::TypedTimeout,
            6 => Method::PollThenBytes,
            _ => Method::Mixed,
        };
        // With the writer open a blocking receive would wait forever at the end.
        let method = match method {
            Method::Bytes | Method::Into | Method::PollThenBytes if keep_open => {
                Method::BytesTimeout
            }
            Method::TypedBytes | Method::TypedTuple if keep_open => Method::TypedTimeout,
            m => m,
        };
        let limit = match mode >> 6 {
            1 => Some(a),
            2 => Some(a << 8),
            _ => None,
        };
        Input {
            channel,
            method,
            keep_open,
            limit,
            buf_len: a,
            split: b.min(stream.len()),
            stream,
        }
    }
}

/// What one receive gave, comparable with the reference parser.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Message(Vec<u8>),
    TooShort(Vec<u8>),
    Decoded,
    Undecodable,
    Eof,
    Truncated { expected: u64, received: u64 },
    TooLarge { size: u64, limit: usize },
    Invalid(i32),
    Poisoned,
    Timeout,
}

/// Writes the stream into a fresh channel and receives from it until it ends.
fn receive_all(input: &Input<'_>) -> Vec<Outcome> {
    let (mut conn, mut writer) = feed(input);
    conn.set_max_message_size(input.limit);
    let mut outcomes = Vec::new();
    let mut received = 0usize;
    // Every message but the last consumes at least a 4-byte header (or marker).
    for i in 0..input.stream.len() + 2 {
        let outcome = receive_one(&mut conn, input, i);
        if let Outcome::Message(m) | Outcome::TooShort(m) = &outcome {
            received += m.len();
            assert!(received <= input.stream.len(), "more bytes out than in");
            if let (Outcome::Message(m), Some(limit)) = (&outcome, input.limit) {
                assert!(m.len() <= limit, "a message over the limit was received");
            }
        }
        let end = match &outcome {
            Outcome::Eof | Outcome::Poisoned | Outcome::Timeout => Some(outcome.clone_kind()),
            Outcome::TooLarge { .. } | Outcome::Invalid(_) => Some(Outcome::Poisoned),
            // Over a `pipe()` pair a side frame cut short is followed by the rest of the pipe.
            Outcome::Truncated { .. } if input.channel != Channel::PipePair => Some(Outcome::Eof),
            _ => None,
        };
        outcomes.push(outcome);
        if let Some(next) = end {
            // The state is sticky: the next receive reports the same end.
            let again = receive_one(&mut conn, input, i + 1);
            assert_eq!(again, next, "after {:?}", outcomes.last());
            break;
        }
    }
    drop(conn);
    if let Some(thread) = writer
        .take()
        .and_then(|w| w.downcast::<std::thread::JoinHandle<()>>().ok())
    {
        thread.join().expect("the chunking writer panicked");
    }
    outcomes
}

impl Outcome {
    fn clone_kind(&self) -> Outcome {
        match self {
            Outcome::Eof => Outcome::Eof,
            Outcome::Timeout => Outcome::Timeout,
            _ => Outcome::Poisoned,
        }
    }
}

/// The writing side, kept open until the receives are done when `keep_open`.
type Writer = Option<Box<dyn std::any::Any>>;

/// A receiving connection whose peer wrote the stream (and, unless `keep_open`, closed).
fn feed(input: &Input<'_>) -> (Connection, Writer) {
    let keep = |w: Box<dyn std::any::Any>| input.keep_open.then_some(w);
    match input.channel {
        Channel::Pipe => {
            let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .expect("pipe (too many open files?)");
            write_all(w.as_fd(), input.stream);
            (Connection::from_fds(Some(r), None), keep(Box::new(w)))
        }
        Channel::Socket => {
            let (a, b) = multiproc_ipc::socketpair().expect("socketpair");
            write_all(a.write_fd().expect("writable"), input.stream);
            (b, keep(Box::new(a)))
        }
        Channel::PipePair => {
            let (a, b) = multiproc_ipc::pipe().expect("pipe()");
            let (on_pipe, on_side) = input.stream.split_at(input.split);
            write_all(a.write_fd().expect("writable"), on_pipe);
            write_all(a.side_fd().expect("a pipe() end has a side"), on_side);
            (b, keep(Box::new(a)))
        }
        Channel::Chunked {
            socket,
            chunk,
            stray_fds,
        } => {
            let (r, w) = if socket {
                rustix::net::socketpair(
                    rustix::net::AddressFamily::UNIX,
                    rustix::net::SocketType::STREAM,
                    rustix::net::SocketFlags::CLOEXEC,
                    None,
                )
                .expect("socketpair")
            } else {
                rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
            };
            // Over a pipe the thread holds a second read end until it is done, so that a
            // receiver that closes its own (a poisoned read side) does not make a write fail
            // (SIGPIPE); the pipe holds the whole stream, so no write blocks. A socket's buffer
            // fills with a few hundred one-byte writes, so there the thread writes with
            // `MSG_NOSIGNAL` and stops when the receiver is gone.
            let reader_copy =
                (!socket).then(|| rustix::io::fcntl_dupfd_cloexec(&r, 0).expect("dup"));
            let stream = input.stream.to_vec();
            let thread = std::thread::spawn(move || {
                for (i, part) in stream.chunks(chunk).enumerate() {
                    if socket {
                        let stray = (stray_fds && i % 7 == 0).then(|| {
                            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                                .expect("pipe")
                                .0
                        });
                        if !send_all(w.as_fd(), part, stray.as_ref()) {
                            break;
                        }
                    } else {
                        write_all(w.as_fd(), part);
                    }
                }
                drop((w, reader_copy));
            });
            (Connection::from_fds(Some(r), None), Some(Box::new(thread)))
        }
    }
}

/// Sends all of `bytes` on a socket without `SIGPIPE`, `stray` attached to the first bytes;
/// `false` when the peer is gone.
fn send_all(fd: BorrowedFd<'_>, mut bytes: &[u8], stray: Option<&OwnedFd>) -> bool {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let strays: Vec<BorrowedFd<'_>> = stray.iter().map(|fd| fd.as_fd()).collect();
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !strays.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(&strays)));
    }
    while !bytes.is_empty() {
        let sent = rustix::net::sendmsg(
            fd,
            &[std::io::IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        );
        match sent {
            Ok(n) => {
                control.clear();
                bytes = &bytes[n..];
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => return false,
            Err(e) => panic!("sending the stream: {e}"),
        }
    }
    true
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("writing the stream: {e}"),
        }
    }
}

/// One receive with the input's method (the `i`-th one, for `Mixed`).
fn receive_one(conn: &mut Connection, input: &Input<'_>, i: usize) -> Outcome {
    let method = match input.method {
        Method::Mixed if input.keep_open => [Method::BytesTimeout, Method::TypedTimeout][i % 2],
        Method::Mixed => [
            Method::Bytes,
            Method::Into,
            Method::TypedBytes,
            Method::TypedTuple,
            Method::PollThenBytes,
        ][i % 5],
        m => m,
    };
    // A chunking writer is still at work: wait for it (it closes when done), never race it.
    let timeout = match input.channel {
        Channel::Chunked { .. } => Duration::from_secs(60),
        _ => Duration::ZERO,
    };
    let result = match method {
        Method::Bytes => conn.recv_bytes().map(Outcome::Message),
        Method::Into => {
            let mut buf = vec![0u8; input.buf_len];
            conn.recv_bytes_into(&mut buf)
                .map(|n| Outcome::Message(buf[..n].to_vec()))
        }
        Method::TypedBytes => conn.recv::<Vec<u8>>().map(|_| Outcome::Decoded),
        Method::TypedTuple => conn
            .recv::<(u8, String, Connection)>()
            .map(|_| Outcome::Decoded),
        Method::BytesTimeout => conn.recv_bytes_timeout(timeout).map(Outcome::Message),
        Method::TypedTimeout => conn
            .recv_timeout::<Vec<u8>>(timeout)
            .map(|_| Outcome::Decoded),
        Method::PollThenBytes => {
            // The writer is closed (or, chunking, will be): there is always a message or the
            // end of the stream.
            match multiproc_ipc::wait(&[&*conn], Some(timeout)) {
                Ok(ready) => assert_eq!(ready, [0], "wait: a closed writer is always ready"),
                Err(Error::Poisoned) => {}
                Err(e) => panic!("wait: {e:?}"),
            }
            conn.recv_bytes().map(Outcome::Message)
        }
        Method::Mixed => unreachable!("resolved above"),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => error_outcome(e),
    }
}

fn error_outcome(e: Error) -> Outcome {
    match e {
        Error::Eof => Outcome::Eof,
        Error::Truncated { expected, received } => Outcome::Truncated { expected, received },
        Error::MessageTooLarge { size, limit } => Outcome::TooLarge { size, limit },
        Error::InvalidLength(n) => Outcome::Invalid(n),
        Error::Poisoned => Outcome::Poisoned,
        Error::BufferTooShort(m) => Outcome::TooShort(m),
        Error::Decode(_) => Outcome::Undecodable,
        Error::Timeout(_) => Outcome::Timeout,
        other => panic!("not a typed error for a bad stream: {other:?}"),
    }
}

/// Python's `_recv_bytes` over the stream, written out plainly: what `recv_bytes` (or
/// `recv_bytes_into`, or `recv_bytes_timeout`) must give.
fn reference(input: &Input<'_>) -> Vec<Outcome> {
    let max = input.limit.unwrap_or(isize::MAX as usize);
    let (mut pipe, mut side) = match input.channel {
        Channel::PipePair => {
            let (p, s) = input.stream.split_at(input.split);
            (p, Some(s))
        }
        _ => (input.stream, None),
    };
    let mut out = Vec::new();
    loop {
        let from_side = pipe.get(..4) == Some(&(-2i32).to_be_bytes()[..]) && side.is_some();
        let mut next = if from_side {
            pipe = &pipe[4..];
            let rest = side.as_mut().expect("checked");
            match parse(rest, max) {
                // The marker promised a frame: its absence is a truncation.
                Outcome::Eof => Outcome::Truncated {
                    expected: 12,
                    received: 0,
                },
                other => other,
            }
        } else {
            parse(&mut pipe, max)
        };
        if input.keep_open && matches!(next, Outcome::Eof | Outcome::Truncated { .. }) {
            next = Outcome::Timeout;
        }
        if let (Outcome::Message(m), Method::Into) = (&next, input.method)
            && m.len() > input.buf_len
        {
            next = Outcome::TooShort(m.clone());
        }
        let end = match next {
            Outcome::Message(_) | Outcome::TooShort(_) => false,
            Outcome::Truncated { .. } => side.is_none() || input.keep_open,
            _ => true,
        };
        out.push(next);
        if end {
            return out;
        }
    }
}

/// Parses one frame off the front of `stream`.
fn parse(stream: &mut &[u8], max: usize) -> Outcome {
    let data = *stream;
    if data.is_empty() {
        return Outcome::Eof;
    }
    let mut truncated = |expected: usize, received: usize| {
        *stream = &[];
        Outcome::Truncated {
            expected: expected as u64,
            received: received as u64,
        }
    };
    let Some(short) = data.first_chunk::<4>() else {
        return truncated(4, data.len());
    };
    let (len, header_len) = match i32::from_be_bytes(*short) {
        -1 => match data[4..].first_chunk::<8>() {
            Some(long) => (u64::from_be_bytes(*long), 12),
            None => return truncated(12, data.len()),
        },
        n if n < 0 => return Outcome::Invalid(n),
        n => (n as u64, 4),
    };
    if len > max as u64 {
        return Outcome::TooLarge {
            size: len,
            limit: max,
        };
    }
    let payload = &data[header_len..];
    let len = len as usize;
    if payload.len() < len {
        return truncated(len, payload.len());
    }
    *stream = &payload[len..];
    Outcome::Message(payload[..len].to_vec())
}
