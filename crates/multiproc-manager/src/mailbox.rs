//! The fast path of a local connection: a request/reply mailbox in shared memory.
//!
//! A round trip over a Unix socket costs two wake-ups of sleeping threads (18-25 µs on a small
//! VM, as much as Python's whole manager call). A client on the same machine therefore hands
//! the server thread of its connection a mailbox (a [`SharedSlice`] of the shared heap, sent
//! over the socket) and from then on writes each request into it and reads the reply from it.
//! Both sides spin briefly before they sleep on a futex in the mailbox, so a client that calls
//! again and again (and a server that answers at once) exchange messages without a system call.
//!
//! The socket stays: a request or reply larger than the mailbox travels on it (the mailbox says
//! so), and its end tells each side that the other is gone (a process that dies closes it), so a
//! sleeping side wakes every [`SLICE`] to look.
//!
//! Layout (32-bit words): `STATE` (the futex word), `LEN` (bytes of the message), the two
//! sleeping flags, then the message, four bytes a word. Only atomics touch it, as the heap
//! requires; the copies are relaxed loads and stores ordered by the release store of `STATE`
//! and the acquire load that sees it.

use std::os::fd::BorrowedFd;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use multiproc_core::heap::{ATOMIC_KINDS, SharedSlice};
use rustix::thread::futex;

/// The heap kind of a mailbox (a mailbox received is checked to be one).
const KIND: u8 = ATOMIC_KINDS + 0x20;

const STATE: usize = 0;
const LEN: usize = 1;
const SERVER_SLEEPS: usize = 2;
const CLIENT_SLEEPS: usize = 3;
/// The message starts on the second cache line.
const DATA: usize = 16;
/// Words of message: 16 KiB.
const DATA_WORDS: usize = 4096;

/// The largest message that travels in the mailbox.
pub(crate) const CAPACITY: usize = DATA_WORDS * 4;

/// Nothing pending.
const IDLE: u32 = 0;
/// A request is in the mailbox.
const REQUEST: u32 = 1;
/// A request follows on the socket (too large for the mailbox).
const REQUEST_ON_SOCKET: u32 = 2;
/// The reply is in the mailbox.
const REPLY: u32 = 3;
/// The reply follows on the socket.
const REPLY_ON_SOCKET: u32 = 4;

/// How long a side spins (busy) before it yields between looks.
const BUSY: Duration = Duration::from_micros(4);
/// How long a side keeps looking (yielding the CPU between looks) before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// How long a sleeping side sleeps before it checks that the other side is still there.
const SLICE: Duration = Duration::from_millis(100);

/// One connection's mailbox (the same object in the client and in the server thread).
pub(crate) type Mailbox = SharedSlice<AtomicU32>;

/// A new, idle mailbox.
pub(crate) fn new() -> std::io::Result<Mailbox> {
    SharedSlice::new(DATA + DATA_WORDS, KIND)
}

/// Whether a mailbox received from a client is one.
pub(crate) fn valid(m: &Mailbox) -> bool {
    m.kind() == KIND && m.len() == DATA + DATA_WORDS
}

/// What a waiting side found.
pub(crate) enum Found {
    /// The message is in the mailbox (its length).
    Here(usize),
    /// The message is on the socket.
    OnSocket,
    /// The other side is gone (its end of the socket closed).
    Gone,
}

fn write_bytes(m: &Mailbox, bytes: &[u8]) {
    let words = &m[DATA..DATA + bytes.len().div_ceil(4)];
    for (w, chunk) in words.iter().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u32::from_le_bytes(b), Relaxed);
    }
    m[LEN].store(bytes.len() as u32, Relaxed);
}

/// Copies the message (of `len` bytes) out of the mailbox into `out`.
pub(crate) fn read_bytes(m: &Mailbox, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.reserve(len);
    for w in &m[DATA..DATA + len.div_ceil(4)] {
        out.extend_from_slice(&w.load(Relaxed).to_le_bytes());
    }
    out.truncate(len);
}

/// Publishes `state`, waking the other side if it sleeps (`sleeper` is its flag).
fn publish(m: &Mailbox, state: u32, sleeper: usize) {
    m[STATE].store(state, SeqCst);
    if m[sleeper].load(SeqCst) != 0 {
        let _ = futex::wake(&m[STATE], futex::Flags::empty(), 1);
    }
}

/// Waits until `STATE` is one of `want` (the in-mailbox and on-socket states), spinning first,
/// then sleeping on the futex with `my_flag` set; checks `alive` between sleeps.
fn wait_for(m: &Mailbox, want: (u32, u32), my_flag: usize, alive: &dyn Fn() -> bool) -> Found {
    let seen = |s: u32| {
        if s == want.0 {
            Some(Found::Here(m[LEN].load(Relaxed) as usize))
        } else if s == want.1 {
            Some(Found::OnSocket)
        } else {
            None
        }
    };
    // Busy first; then yield between looks: should the other side have been woken on this
    // CPU (the scheduler puts a woken thread beside its waker), spinning would keep it from
    // running until the spin ends, every call.
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if let Some(f) = seen(m[STATE].load(Acquire)) {
            return f;
        }
        spins += 1;
        if spins % 64 == 0 {
            let waited = start.elapsed();
            if waited > SPIN {
                break;
            }
            if waited > BUSY {
                std::thread::yield_now();
                continue;
            }
        }
        std::hint::spin_loop();
    }
    loop {
        m[my_flag].store(1, SeqCst);
        let s = m[STATE].load(SeqCst);
        if let Some(f) = seen(s) {
            m[my_flag].store(0, Relaxed);
            return f;
        }
        let ts = rustix::time::Timespec::try_from(SLICE).expect("a small duration");
        let r = futex::wait(&m[STATE], futex::Flags::empty(), s, Some(&ts));
        m[my_flag].store(0, Relaxed);
        if let Some(f) = seen(m[STATE].load(Acquire)) {
            return f;
        }
        if matches!(r, Err(rustix::io::Errno::TIMEDOUT)) && !alive() {
            return Found::Gone;
        }
    }
}

/// Client: puts `request` in the mailbox (or says it follows on the socket, when it is too
/// large: the caller then sends it there).
pub(crate) fn send_request(m: &Mailbox, request: &[u8]) -> bool {
    if request.len() <= CAPACITY {
        write_bytes(m, request);
        publish(m, REQUEST, SERVER_SLEEPS);
        true
    } else {
        publish(m, REQUEST_ON_SOCKET, SERVER_SLEEPS);
        false
    }
}

/// Client: waits for the reply.
pub(crate) fn wait_reply(m: &Mailbox, alive: &dyn Fn() -> bool) -> Found {
    wait_for(m, (REPLY, REPLY_ON_SOCKET), CLIENT_SLEEPS, alive)
}

/// Client: the reply was read; the mailbox is free again.
pub(crate) fn done(m: &Mailbox) {
    m[STATE].store(IDLE, Release);
}

/// Server: waits for the next request.
pub(crate) fn wait_request(m: &Mailbox, alive: &dyn Fn() -> bool) -> Found {
    wait_for(m, (REQUEST, REQUEST_ON_SOCKET), SERVER_SLEEPS, alive)
}

/// Server: puts `reply` in the mailbox (or says it follows on the socket: the caller then
/// sends it there, after this returns `false`).
pub(crate) fn send_reply(m: &Mailbox, reply: &[u8]) -> bool {
    if reply.len() <= CAPACITY {
        write_bytes(m, reply);
        publish(m, REPLY, CLIENT_SLEEPS);
        true
    } else {
        publish(m, REPLY_ON_SOCKET, CLIENT_SLEEPS);
        false
    }
}

/// Whether the peer's end of a socket is still open: nothing to read and no hang-up (the
/// protocol sends nothing on the socket while a mailbox is in use, except large messages that
/// the reader expects).
pub(crate) fn peer_open(fd: Option<BorrowedFd<'_>>) -> bool {
    let Some(fd) = fd else { return false };
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP,
    )];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(n) if n > 0 => fds[0].revents().is_empty(),
        _ => true,
    }
}
