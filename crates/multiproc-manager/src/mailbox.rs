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
/// The CPU each side last published from, plus one (0: not known).
const SERVER_CPU: usize = 4;
const CLIENT_CPU: usize = 5;
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

/// How long a side spins before it sleeps, when the other side runs on another CPU.
const SPIN: Duration = Duration::from_micros(50);
/// How long a server thread spins for the next request before it sleeps.
const SERVER_SPIN: Duration = Duration::from_micros(50);
/// How often a server thread may move off its client's CPU.
const MOVE_EVERY: Duration = Duration::from_millis(1);
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

fn this_cpu() -> u32 {
    rustix::thread::sched_getcpu() as u32 + 1
}

/// Publishes `state`, waking the other side if it sleeps (`sleeper` is its flag); records
/// the CPU it was published from (`cpu` is this side's word).
fn publish(m: &Mailbox, state: u32, sleeper: usize, cpu: usize) {
    m[cpu].store(this_cpu(), Relaxed);
    m[STATE].store(state, SeqCst);
    if m[sleeper].load(SeqCst) != 0 {
        let _ = futex::wake(&m[STATE], futex::Flags::empty(), 1);
    }
}

/// Waits until `STATE` is one of `want` (the in-mailbox and on-socket states), spinning first,
/// then sleeping on the futex with `my_flag` set; checks `alive` between sleeps.
fn wait_for(
    m: &Mailbox,
    want: (u32, u32),
    my_flag: usize,
    other_cpu: usize,
    alive: &dyn Fn() -> bool,
) -> Found {
    let found = wait_inner(m, want, my_flag, other_cpu, alive);
    // The server thread, woken on the CPU its client runs on (the scheduler puts a woken
    // thread beside its waker), moves to another: two threads of two processes taking turns
    // on one CPU pay a context switch each way (tens of µs on a VM), where two CPUs spinning
    // answer in about one.
    if my_flag == SERVER_SLEEPS
        && matches!(found, Found::Here(_))
        && m[other_cpu].load(Relaxed) == this_cpu()
    {
        leave_cpu();
    }
    found
}

/// Moves the calling thread off its CPU (briefly excluding it from the thread's affinity),
/// at most every [`MOVE_EVERY`] per thread, and only when another CPU is allowed.
fn leave_cpu() {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = Instant::now();
    if LAST.with(|l| l.get().is_some_and(|t| now.duration_since(t) < MOVE_EVERY)) {
        return;
    }
    LAST.with(|l| l.set(Some(now)));
    let Ok(allowed) = rustix::thread::sched_getaffinity(None) else {
        return;
    };
    let cpu = rustix::thread::sched_getcpu();
    if allowed.count() < 2 || !allowed.is_set(cpu) {
        return;
    }
    let mut elsewhere = allowed;
    elsewhere.unset(cpu);
    if rustix::thread::sched_setaffinity(None, &elsewhere).is_ok() {
        let _ = rustix::thread::sched_setaffinity(None, &allowed);
    }
}

/// [`wait_for`] without the move.
fn wait_inner(
    m: &Mailbox,
    want: (u32, u32),
    my_flag: usize,
    other_cpu: usize,
    alive: &dyn Fn() -> bool,
) -> Found {
    let seen = |s: u32| {
        if s == want.0 {
            // The other process wrote the length: a bad one ends the connection.
            let len = m[LEN].load(Relaxed) as usize;
            Some(if len <= CAPACITY {
                Found::Here(len)
            } else {
                Found::Gone
            })
        } else if s == want.1 {
            Some(Found::OnSocket)
        } else {
            None
        }
    };
    // Spinning pays only when the other side runs on another CPU: on this one (a woken thread
    // is often put beside its waker) it could not run until the spin ended, every call.
    let spin = if my_flag == SERVER_SLEEPS {
        SERVER_SPIN
    } else {
        SPIN
    };
    if my_flag == CLIENT_SLEEPS || m[other_cpu].load(Relaxed) != this_cpu() {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(f) = seen(m[STATE].load(Acquire)) {
                return f;
            }
            spins += 1;
            if spins % 64 == 0 && start.elapsed() > spin {
                break;
            }
            std::hint::spin_loop();
        }
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
        publish(m, REQUEST, SERVER_SLEEPS, CLIENT_CPU);
        true
    } else {
        publish(m, REQUEST_ON_SOCKET, SERVER_SLEEPS, CLIENT_CPU);
        false
    }
}

/// Client: waits for the reply.
pub(crate) fn wait_reply(m: &Mailbox, alive: &dyn Fn() -> bool) -> Found {
    wait_for(
        m,
        (REPLY, REPLY_ON_SOCKET),
        CLIENT_SLEEPS,
        SERVER_CPU,
        alive,
    )
}

/// Client: the reply was read; the mailbox is free again.
pub(crate) fn done(m: &Mailbox) {
    m[STATE].store(IDLE, Release);
}

/// Server: waits for the next request.
pub(crate) fn wait_request(m: &Mailbox, alive: &dyn Fn() -> bool) -> Found {
    wait_for(
        m,
        (REQUEST, REQUEST_ON_SOCKET),
        SERVER_SLEEPS,
        CLIENT_CPU,
        alive,
    )
}

/// Server: puts `reply` in the mailbox (or says it follows on the socket: the caller then
/// sends it there, after this returns `false`).
pub(crate) fn send_reply(m: &Mailbox, reply: &[u8]) -> bool {
    if reply.len() <= CAPACITY {
        write_bytes(m, reply);
        publish(m, REPLY, CLIENT_SLEEPS, SERVER_CPU);
        true
    } else {
        publish(m, REPLY_ON_SOCKET, CLIENT_SLEEPS, SERVER_CPU);
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
