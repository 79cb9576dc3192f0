//! The shared byte ring under the queues: length-prefixed records in a ring of words in the
//! shared heap, one producer lock and one consumer lock, and one 64-bit commit word per side.
//!
//! The design and its measurements are in `research/queue-ring.md` (the spike that chose it);
//! `docs/decisions.md` ("Queues (issue 7)") says what this implementation adds.
//!
//! - **Records.** Each record is one header word and its payload padded to whole words. The
//!   header holds the payload length, the kind, a magic byte and 16 bits of the record's
//!   position, so a decoder that is handed garbage notices. An item whose record would take
//!   more than a quarter of the ring is written in chunks: `FIRST` (whose payload starts with
//!   the item's total length), `CONT`… and `LAST`. A `PAD` record fills the end of the ring when
//!   the next record does not fit before the wrap. `ABORT` ends a chunked item whose producer
//!   died or gave up.
//! - **Commit words.** `TAIL` and `HEAD` hold a byte position (low 40 bits, modulo 2^40) and an
//!   item count (high 24 bits). A producer writes records beyond `TAIL` and makes them visible
//!   with one release store of `TAIL`; a consumer copies a record out and then moves `HEAD`
//!   with one release store. A process killed at any point leaves both words consistent: the
//!   bytes a dead producer wrote beyond `TAIL` are overwritten by the next one, and an item a
//!   dead consumer copied without moving `HEAD` is delivered again. The count moves on `FULL`
//!   and `LAST` records only, so `qsize` is exact after any crash.
//! - **Locks.** Producers hold `plock` (a [`multiproc_sync::Lock`]: a process that dies
//!   holding it is detected and the lock taken over), consumers hold `clock`. A producer that
//!   takes `plock` over from a dead holder, or finds `CHUNKING` set (a producer that timed out
//!   mid-item), writes `ABORT` first. A consumer waiting mid-item checks in slices whether the
//!   producer is gone and writes the `ABORT` itself.
//! - **Wake-ups.** An event count per condition (a sequence word and a "sleepers" flag): a
//!   waiter spins briefly, then raises the flag and sleeps; the notifier calls `FUTEX_WAKE`
//!   only when it clears a raised flag, so once per sleep, however many notifications come
//!   before the sleeper runs again.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicU32, AtomicU64, fence};
use std::time::{Duration, Instant};

use multiproc_core::heap::{ATOMIC_KINDS, Shared, SharedSlice};
use multiproc_sync::{Acquired, Lock};
use serde::{Deserialize, Serialize};

/// The heap kind of a ring's words.
const RING_KIND: u8 = ATOMIC_KINDS + 1;

/// The smallest ring (bytes): four records of 1 KiB.
pub(crate) const MIN_RING: usize = 4096;
/// The largest ring (bytes).
pub(crate) const MAX_RING: usize = 1 << 30;
/// The default ring size (bytes).
pub(crate) const DEFAULT_RING: usize = 256 * 1024;

// Control words (64-bit), each group on its own cache line.
/// Producers' commit word: position | count << 40.
const TAIL: usize = 0;
/// Consumers' commit word.
const HEAD: usize = 8;
/// Nonzero while a chunked item is open (its producer died or gave up if no one holds plock).
const CHUNKING: usize = 16;
/// Items parked in feeder threads (counted by `qsize` and by `maxsize`).
const BUFFERED: usize = 17;
/// Slots of a `maxsize` queue taken by puts and not yet freed by a get.
const RESERVED: usize = 18;
/// Nonzero while the holder of plock sleeps waiting for space: an unbounded `put` buffers
/// instead of queueing behind it.
const STALLED: usize = 19;
/// The ring's size in bytes (checked against the words on receipt).
const CAPACITY: usize = 24;
/// `maxsize` (0: unbounded).
const MAXSIZE: usize = 25;
/// Flags fixed at creation (`JOINABLE`).
const FLAGS: usize = 26;
/// Items put and not yet marked done (`JoinableQueue`).
const UNFINISHED: usize = 32;
const CTL_WORDS: usize = 40;

/// `FLAGS`: the queue counts unfinished tasks.
pub(crate) const JOINABLE: u64 = 1;

// Event counts (32-bit futex words): `[sequence, sleepers flag]`, each on its own cache line.
const NOT_EMPTY: usize = 0;
const SPACE: usize = 16;
const ALL_DONE: usize = 32;
const SLOT_FREED: usize = 48;
const EV_WORDS: usize = 64;

const POS_BITS: u32 = 40;
const POS: u64 = (1 << POS_BITS) - 1;
const COUNT: u64 = (1 << 24) - 1;

// Record kinds.
const FULL: u8 = 1;
const FIRST: u8 = 2;
const CONT: u8 = 3;
const LAST: u8 = 4;
const PAD: u8 = 5;
const ABORT: u8 = 6;
const MAGIC: u64 = 0x5a;

/// How long a waiter spins (checks between `spin_loop` hints) before it yields: about 1 µs,
/// what a peer on another CPU takes to answer (`research/queue-ring.md` §2).
const SPIN: u32 = 24;
/// How many times a waiter then yields its CPU (checking between yields) before it sleeps:
/// a peer on the same CPU runs at once, and answers without a wake-up on either side (the
/// spike's fixed 100-check spin cost ~5 µs per round trip there); a peer on another CPU is
/// polled a little longer.
const YIELDS: u32 = 16;
/// How long a consumer in the middle of a chunked item sleeps before it checks whether the
/// producer is gone.
const MID_ITEM_SLICE: Duration = Duration::from_millis(20);
/// The most a consumer reserves ahead for a chunked item, whatever its `FIRST` claims (the
/// buffer grows with the chunks that actually arrive).
const MAX_AHEAD: usize = 1 << 20;

/// What [`Consumer::pop_claimed`] calls before `HEAD` moves past an item.
type Claim<'a> = &'a mut dyn FnMut(&[u8], u64);

/// When a wait ends: `None` never, else at that instant (in the past: do not wait).
pub(crate) type Deadline = Option<Instant>;

fn pos(word: u64) -> u64 {
    word & POS
}

fn count(word: u64) -> u64 {
    word >> POS_BITS
}

fn commit(pos: u64, count: u64) -> u64 {
    (pos & POS) | (count & COUNT) << POS_BITS
}

fn padded(len: usize) -> u64 {
    (len as u64).div_ceil(8) * 8
}

fn header(len: usize, kind: u8, at: u64) -> u64 {
    len as u64 | u64::from(kind) << 32 | MAGIC << 40 | ((at >> 3) & 0xffff) << 48
}

/// A record header, decoded and checked against where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) kind: u8,
    pub(crate) len: usize,
}

/// Decodes the header word found at byte position `at` of a ring whose largest record is
/// `max_record` bytes (header included); `None` if it is not a header this ring's producers
/// write there. Public to the crate for the fuzz target.
pub(crate) fn decode_header(word: u64, at: u64, max_record: u64) -> Option<Header> {
    let len = word & 0xffff_ffff;
    let kind = ((word >> 32) & 0xff) as u8;
    if (word >> 40) & 0xff != MAGIC || word >> 48 != (at >> 3) & 0xffff {
        return None;
    }
    if !(FULL..=ABORT).contains(&kind) {
        return None;
    }
    // PAD may span up to the end of the ring; every other record is bounded.
    if kind != PAD && 8 + padded(len as usize) > max_record {
        return None;
    }
    if kind == FIRST && len < 8 {
        return None;
    }
    Some(Header {
        kind,
        len: len as usize,
    })
}

/// The shared parts of a queue. Cloning shares them; serde hands them to another process.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "RingWire")]
pub(crate) struct Ring {
    ctl: Shared<[AtomicU64; CTL_WORDS]>,
    ev: Shared<[AtomicU32; EV_WORDS]>,
    data: SharedSlice<AtomicU64>,
    plock: Lock,
    clock: Lock,
    /// What the last producer of this process left (in this process's memory, not shared).
    #[serde(skip_serializing)]
    last: Arc<LastProducer>,
    /// What the last consumer of this process left (in this process's memory, not shared).
    #[serde(skip_serializing)]
    last_c: Arc<LastConsumer>,
}

/// The mirror of [`LastProducer`]: the commit word a consumer of this process left in `HEAD`,
/// and the producers' position it had seen then. While `HEAD` still holds that word, no other
/// consumer has taken anything since, so everything up to that position is still published
/// and unread, and the next consumer need not read `TAIL` (written by producers for every item)
/// until it gets there. Accessed only under clock.
#[derive(Default)]
struct LastConsumer {
    head: AtomicU64,
    tail: AtomicU64,
}

/// The commit word a producer of this process published last, and the consumers' position it
/// had seen then: while `TAIL` still holds that word, nobody has written since, so the
/// consumers are at that position or beyond, and the next producer need not read `HEAD` (a
/// cache line the consumers write for every item) until the ring looks full. Accessed only
/// under plock.
#[derive(Default)]
struct LastProducer {
    tail: AtomicU64,
    head: AtomicU64,
}

#[derive(Deserialize)]
struct RingWire {
    ctl: Shared<[AtomicU64; CTL_WORDS]>,
    ev: Shared<[AtomicU32; EV_WORDS]>,
    data: SharedSlice<AtomicU64>,
    plock: Lock,
    clock: Lock,
}

impl TryFrom<RingWire> for Ring {
    type Error = String;

    fn try_from(w: RingWire) -> Result<Ring, String> {
        let words = w.data.len();
        if w.data.kind() != RING_KIND
            || !words.is_power_of_two()
            || words * 8 < MIN_RING
            || w.ctl[CAPACITY].load(Relaxed) != (words * 8) as u64
        {
            return Err("not the ring of a queue".into());
        }
        Ok(Ring {
            ctl: w.ctl,
            ev: w.ev,
            data: w.data,
            plock: w.plock,
            clock: w.clock,
            last: Arc::default(),
            last_c: Arc::default(),
        })
    }
}

/// An error of the ring's protocol: the shared bytes are not what producers write.
#[derive(Debug)]
pub(crate) struct Corrupt(pub(crate) String);

/// Why a producer's operation stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The deadline passed.
    Timeout,
    /// There is no room now and the caller asked not to wait.
    NoRoom,
}

impl Ring {
    /// A new ring of `bytes` (a power of two in `MIN_RING..=MAX_RING`), `maxsize` (0:
    /// unbounded) and `flags`.
    pub(crate) fn new(bytes: usize, maxsize: u64, flags: u64) -> std::io::Result<Ring> {
        let bytes = bytes.clamp(MIN_RING, MAX_RING).next_power_of_two();
        let ring = Ring {
            ctl: Shared::new()?,
            ev: Shared::new()?,
            data: SharedSlice::new(bytes / 8, RING_KIND)?,
            plock: Lock::new().map_err(std::io::Error::other)?,
            clock: Lock::new().map_err(std::io::Error::other)?,
            last: Arc::default(),
            last_c: Arc::default(),
        };
        ring.ctl[CAPACITY].store(bytes as u64, Relaxed);
        ring.ctl[MAXSIZE].store(maxsize, Relaxed);
        ring.ctl[FLAGS].store(flags, Release);
        Ok(ring)
    }

    fn cap(&self) -> u64 {
        (self.data.len() * 8) as u64
    }

    /// Maps the ring's pages into this process now (see [`SharedSlice::prefault`]).
    pub(crate) fn prefault(&self) {
        self.data.prefault();
    }

    /// The largest record (header included) written whole; larger items are chunked.
    fn max_record(&self) -> u64 {
        self.cap() / 4
    }

    /// The consumers' byte position (modulo 2^40): every record before it has been taken.
    pub(crate) fn head_pos(&self) -> u64 {
        pos(self.ctl[HEAD].load(Acquire))
    }

    /// The ring's size in bytes.
    pub(crate) fn capacity(&self) -> usize {
        self.data.len() * 8
    }

    /// `maxsize`; 0 for an unbounded queue.
    pub(crate) fn maxsize(&self) -> u64 {
        self.ctl[MAXSIZE].load(Relaxed)
    }

    pub(crate) fn flags(&self) -> u64 {
        self.ctl[FLAGS].load(Relaxed)
    }

    /// Items in the ring (complete ones) plus items parked in feeders.
    pub(crate) fn qsize(&self) -> u64 {
        let tail = self.ctl[TAIL].load(Acquire);
        let head = self.ctl[HEAD].load(Acquire);
        (count(tail).wrapping_sub(count(head)) & COUNT) + self.ctl[BUFFERED].load(Relaxed)
    }

    /// Whether the ring holds no record (items parked in feeders are not seen).
    #[cfg(test)]
    pub(crate) fn ring_empty(&self) -> bool {
        pos(self.ctl[TAIL].load(Acquire)) == pos(self.ctl[HEAD].load(Acquire))
    }

    /// Counts an item parked in this process's feeder (`+1`) or written by it (`-1`).
    pub(crate) fn buffered(&self, delta: i64) {
        if delta >= 0 {
            self.ctl[BUFFERED].fetch_add(delta as u64, SeqCst);
        } else {
            self.ctl[BUFFERED].fetch_sub(delta.unsigned_abs(), SeqCst);
        }
    }

    /// Whether the producer holding plock sleeps for space.
    pub(crate) fn stalled(&self) -> bool {
        self.ctl[STALLED].load(Relaxed) != 0
    }

    // ---------------------------------------------------------------- maxsize slots

    /// Takes a slot of a `maxsize` queue if one is free now.
    pub(crate) fn try_reserve(&self) -> bool {
        let max = self.maxsize();
        let w = &self.ctl[RESERVED];
        let mut r = w.load(SeqCst);
        while r < max {
            match w.compare_exchange_weak(r, r + 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(now) => r = now,
            }
        }
        false
    }

    /// Takes a slot, waiting for one until `deadline` (`Stop::NoRoom` if it already passed).
    pub(crate) fn reserve(&self, deadline: Deadline) -> Result<(), Stop> {
        if self.try_reserve() {
            return Ok(());
        }
        if expired(deadline) {
            return Err(Stop::NoRoom);
        }
        let max = self.maxsize();
        let free = || self.ctl[RESERVED].load(SeqCst) < max;
        loop {
            if sleep_on(&self.ev[..], SLOT_FREED, &free, deadline) && self.try_reserve() {
                return Ok(());
            }
            if expired(deadline) {
                return if self.try_reserve() {
                    Ok(())
                } else {
                    Err(Stop::Timeout)
                };
            }
        }
    }

    /// Frees a slot (an item left the queue, or a put gave up).
    pub(crate) fn release_slot(&self) {
        if self.maxsize() == 0 {
            return;
        }
        let w = &self.ctl[RESERVED];
        let mut r = w.load(SeqCst);
        while r > 0 {
            match w.compare_exchange_weak(r, r - 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => r = now,
            }
        }
        notify(&self.ev[..], SLOT_FREED);
    }

    /// Slots taken (`maxsize` queues).
    pub(crate) fn reserved(&self) -> u64 {
        self.ctl[RESERVED].load(SeqCst)
    }

    // ---------------------------------------------------------------- unfinished tasks

    pub(crate) fn add_unfinished(&self, n: u64) {
        self.ctl[UNFINISHED].fetch_add(n, SeqCst);
    }

    /// Marks one task done; `false` if none was unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let w = &self.ctl[UNFINISHED];
        let mut v = w.load(SeqCst);
        loop {
            if v == 0 {
                return false;
            }
            match w.compare_exchange_weak(v, v - 1, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(now) => v = now,
            }
        }
        if v == 1 {
            notify(&self.ev[..], ALL_DONE);
        }
        true
    }

    pub(crate) fn unfinished(&self) -> u64 {
        self.ctl[UNFINISHED].load(SeqCst)
    }

    /// Waits until no task is unfinished; `false` if `deadline` passed first.
    pub(crate) fn join_tasks(&self, deadline: Deadline) -> bool {
        let done = || self.ctl[UNFINISHED].load(SeqCst) == 0;
        loop {
            if sleep_on(&self.ev[..], ALL_DONE, &done, deadline) {
                return true;
            }
            if expired(deadline) {
                return done();
            }
        }
    }

    // ---------------------------------------------------------------- producers

    /// Takes plock (until `deadline`) and returns a producer holding it; a producer that died
    /// holding it is taken over.
    #[inline]
    pub(crate) fn produce(&self, deadline: Deadline) -> Result<Producer<'_>, Stop> {
        self.producer(self.plock.acquire_raw(left(deadline)))
    }

    #[inline]
    fn producer(&self, got: Acquired) -> Result<Producer<'_>, Stop> {
        match got {
            Acquired::TimedOut => return Err(Stop::Timeout),
            // A producer killed while it waited for room left its flag up.
            Acquired::OwnerDied(_) => self.ctl[STALLED].store(0, Relaxed),
            Acquired::Yes => {}
        }
        let tail = self.ctl[TAIL].load(Acquire);
        let head = if tail == self.last.tail.load(Relaxed) {
            self.last.head.load(Relaxed)
        } else {
            pos(self.ctl[HEAD].load(Acquire))
        };
        Ok(Producer {
            ring: self,
            pos: pos(tail),
            count: count(tail),
            published: pos(tail),
            tail,
            head,
        })
    }

    /// [`produce`](Self::produce), waiting at most `wait` for plock; a free plock is taken
    /// without reading the clock, and a held one is waited for at once (a failed attempt to
    /// take it would check its holder's liveness, a few system calls).
    #[inline]
    pub(crate) fn produce_within(&self, wait: Duration) -> Result<Producer<'_>, Stop> {
        if !self.plock.is_locked() {
            let got = self.plock.try_acquire_raw();
            if got != Acquired::TimedOut {
                return self.producer(got);
            }
        }
        self.producer(self.plock.acquire_raw(Some(wait)))
    }

    // ---------------------------------------------------------------- consumers

    /// Waits, without taking clock, until a record is published and not yet taken (or
    /// `deadline`); whether one is. Consumers that wait here instead of inside
    /// [`Consumer::pop`] leave clock free, so a producer's notification wakes them without a
    /// lock hand-off (a pool's idle workers).
    pub(crate) fn wait_not_empty(&self, deadline: Deadline) -> bool {
        let ready = || pos(self.ctl[TAIL].load(Acquire)) != pos(self.ctl[HEAD].load(Acquire));
        loop {
            if sleep_on(&self.ev[..], NOT_EMPTY, &ready, deadline) {
                return true;
            }
            if expired(deadline) {
                return ready();
            }
        }
    }

    /// Takes clock (until `deadline`) and returns a consumer holding it.
    #[inline]
    pub(crate) fn consume(&self, deadline: Deadline) -> Option<Consumer<'_>> {
        match self.clock.acquire_raw(left(deadline)) {
            Acquired::TimedOut => None,
            Acquired::Yes | Acquired::OwnerDied(_) => {
                let head = self.ctl[HEAD].load(Acquire);
                let tail = if head == self.last_c.head.load(Relaxed) {
                    self.last_c.tail.load(Relaxed)
                } else {
                    pos(head)
                };
                Some(Consumer {
                    ring: self,
                    pos: pos(head),
                    count: count(head),
                    tail,
                    moved: false,
                })
            }
        }
    }

    fn word(&self, at: u64) -> &AtomicU64 {
        &self.data[((at >> 3) as usize) & (self.data.len() - 1)]
    }

    /// The `n` words from byte position `at` on, as the run up to the end of the ring and the
    /// run from its start (empty unless they wrap).
    fn words(&self, at: u64, n: usize) -> (&[AtomicU64], &[AtomicU64]) {
        let first = ((at >> 3) as usize) & (self.data.len() - 1);
        let to_end = self.data.len() - first;
        if n <= to_end {
            (&self.data[first..first + n], &[])
        } else {
            (&self.data[first..], &self.data[..n - to_end])
        }
    }
}

/// Stores `src` (whole words, little-endian) into `dst`, one relaxed store per word. An
/// indexed loop: twice the speed of a `chunks_exact` zip, which tests both iterators per word.
fn store_words(dst: &[AtomicU64], src: &[u8]) {
    let src = &src[..dst.len() * 8];
    for (i, w) in dst.iter().enumerate() {
        let word: [u8; 8] = src[i * 8..i * 8 + 8].try_into().expect("8 bytes");
        w.store(u64::from_le_bytes(word), Relaxed);
    }
}

/// Appends the words of `src` (little-endian) to `out`. Short runs (most records: a header's
/// worth of bytes) one word at a time; long ones by relaxed loads into a block on the stack
/// appended with one `memcpy` (a tight load loop, and a copy from L1, beat an append per word;
/// the block is zeroed once per call, which only a long run pays back).
fn load_words(src: &[AtomicU64], out: &mut Vec<u8>) {
    const BLOCK: usize = 512;
    if src.len() < BLOCK {
        for w in src {
            out.extend_from_slice(&w.load(Relaxed).to_le_bytes());
        }
        return;
    }
    let mut buf = [0u64; BLOCK];
    for block in src.chunks(BLOCK) {
        let buf = &mut buf[..block.len()];
        for (d, w) in buf.iter_mut().zip(block) {
            // In memory, `to_le()` of the word is its little-endian bytes.
            *d = w.load(Relaxed).to_le();
        }
        out.extend_from_slice(bytemuck::cast_slice(buf));
    }
}

/// Time left before `deadline` for a lock wait (`None`: forever).
fn left(deadline: Deadline) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn expired(deadline: Deadline) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Wakes every process sleeping on the event at `at`, if any. The sleepers' flag is cleared
/// by the notifier that wakes them: later notifications make no system call until one of
/// them sleeps again (a producer putting item after item while its consumer has not yet run
/// wakes it once, not once per item).
fn notify(ev: &[AtomicU32], at: usize) {
    fence(SeqCst);
    if ev[at + 1].load(Relaxed) != 0 && ev[at + 1].swap(0, SeqCst) != 0 {
        ev[at].fetch_add(1, Release);
        let _ = rustix::thread::futex::wake(
            &ev[at],
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }
}

/// Spins briefly, yields a few times, then sleeps once on the event at `at` until it is
/// notified or `until`;
/// returns whether `ready()` held (checked before and after the sleep).
fn sleep_on(ev: &[AtomicU32], at: usize, ready: &dyn Fn() -> bool, until: Deadline) -> bool {
    for _ in 0..SPIN {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    for _ in 0..YIELDS {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    // The sequence is read before the flag is raised: a notifier that clears the flag after
    // this has moved the sequence, and the futex wait below returns at once.
    let seq = ev[at].load(Acquire);
    ev[at + 1].swap(1, SeqCst);
    let ok = ready();
    if !ok {
        let nap = left(until);
        if nap != Some(Duration::ZERO) {
            let ts = nap.map(|d| {
                rustix::time::Timespec::try_from(d).unwrap_or(rustix::time::Timespec {
                    tv_sec: i64::MAX / 2,
                    tv_nsec: 0,
                })
            });
            let _ = rustix::thread::futex::wait(
                &ev[at],
                rustix::thread::futex::Flags::empty(),
                seq,
                ts.as_ref(),
            );
        }
    }
    ok || ready()
}

/// A producer holding plock. Records it writes become visible at [`publish`](Self::publish)
/// (and whenever it must wait); dropping it publishes and releases plock.
pub(crate) struct Producer<'a> {
    ring: &'a Ring,
    /// Where the next record goes.
    pos: u64,
    /// Items written (the commit word's count).
    count: u64,
    /// The position last published.
    published: u64,
    /// The commit word last published (or found).
    tail: u64,
    /// The consumers' position last seen (they may be further on).
    head: u64,
}

impl Producer<'_> {
    fn used(&self) -> u64 {
        self.pos.wrapping_sub(self.head) & POS
    }

    /// Bytes a record of `rec` bytes takes at the current position, with the padding before
    /// it when it does not fit before the end of the ring.
    fn footprint(&self, rec: u64) -> u64 {
        let to_end = self.ring.cap() - (self.pos % self.ring.cap());
        if rec > to_end { to_end + rec } else { rec }
    }

    fn has_room(&mut self, rec: u64) -> bool {
        let need = self.footprint(rec);
        if self.ring.cap() - self.used() >= need {
            return true;
        }
        self.head = pos(self.ring.ctl[HEAD].load(Acquire));
        self.ring.cap() - self.used() >= need
    }

    /// Makes the records written so far visible to consumers.
    pub(crate) fn publish(&mut self) {
        if self.published != self.pos {
            self.tail = commit(self.pos, self.count);
            self.ring.ctl[TAIL].store(self.tail, Release);
            self.published = self.pos;
            notify(&self.ring.ev[..], NOT_EMPTY);
        }
    }

    /// Waits until a record of `rec` bytes fits (publishing first), or `deadline`.
    fn wait_room(&mut self, rec: u64, deadline: Deadline) -> Result<(), Stop> {
        if self.has_room(rec) {
            return Ok(());
        }
        self.publish();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Stop::NoRoom);
        }
        let ring = self.ring;
        ring.ctl[STALLED].store(1, Relaxed);
        let need = self.footprint(rec);
        let (cap, my_pos) = (ring.cap(), self.pos);
        let room = || cap - (my_pos.wrapping_sub(pos(ring.ctl[HEAD].load(Acquire))) & POS) >= need;
        let result = loop {
            if sleep_on(&ring.ev[..], SPACE, &room, deadline) {
                break Ok(());
            }
            if expired(deadline) {
                break if room() { Ok(()) } else { Err(Stop::Timeout) };
            }
        };
        ring.ctl[STALLED].store(0, Relaxed);
        self.head = pos(ring.ctl[HEAD].load(Acquire));
        result
    }

    /// Writes one record at the current position (room checked), padding first if needed.
    fn write(&mut self, kind: u8, prefix: Option<u64>, payload: &[u8]) {
        let len = payload.len() + if prefix.is_some() { 8 } else { 0 };
        let rec = 8 + padded(len);
        let cap = self.ring.cap();
        let to_end = cap - (self.pos % cap);
        if rec > to_end {
            self.ring
                .word(self.pos)
                .store(header((to_end - 8) as usize, PAD, self.pos), Relaxed);
            self.pos = self.pos.wrapping_add(to_end) & POS;
        }
        let mut at = self.pos.wrapping_add(8);
        if let Some(p) = prefix {
            self.ring.word(at).store(p, Relaxed);
            at = at.wrapping_add(8);
        }
        let whole = payload.len() / 8;
        let (a, b) = self.ring.words(at, whole);
        let (pa, pb) = payload[..whole * 8].split_at(a.len() * 8);
        store_words(a, pa);
        store_words(b, pb);
        let rest = &payload[whole * 8..];
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            let at = at.wrapping_add((payload.len() - rest.len()) as u64);
            self.ring.word(at).store(u64::from_le_bytes(b), Relaxed);
        }
        self.ring
            .word(self.pos)
            .store(header(len, kind, self.pos), Relaxed);
        self.pos = self.pos.wrapping_add(rec) & POS;
        if kind == FULL || kind == LAST {
            self.count = (self.count + 1) & COUNT;
        }
    }

    /// Ends a chunked item left open by a producer that died or gave up.
    fn close_open_item(&mut self, deadline: Deadline) -> Result<(), Stop> {
        if self.ring.ctl[CHUNKING].load(Relaxed) != 0 {
            self.wait_room(8, deadline)?;
            self.write(ABORT, None, &[]);
            self.publish();
            self.ring.ctl[CHUNKING].store(0, Relaxed);
        }
        Ok(())
    }

    /// Whether an item of `len` encoded bytes can be written whole right now, without
    /// waiting for consumers.
    #[inline]
    pub(crate) fn fits_now(&mut self, len: usize) -> bool {
        if self.ring.ctl[CHUNKING].load(Relaxed) != 0 {
            return false;
        }
        let rec = 8 + padded(len);
        let max_record = self.ring.max_record();
        if rec <= max_record {
            return self.has_room(rec);
        }
        // Chunked: every chunk's header (and FIRST's length word), and one padding at most.
        let chunks = (len as u64).div_ceil(self.chunk_payload() as u64);
        let need = padded(len) + chunks * 16 + max_record;
        self.head = pos(self.ring.ctl[HEAD].load(Acquire));
        self.ring.cap() - self.used() >= need
    }

    /// Writes one item if it can be written whole right now ([`fits_now`](Self::fits_now)),
    /// without waiting (and without reading the clock); `false` if it cannot.
    #[inline]
    pub(crate) fn push_now(&mut self, item: &[u8]) -> bool {
        if !self.fits_now(item.len()) {
            return false;
        }
        if 8 + padded(item.len()) <= self.ring.max_record() {
            // `fits_now` found room for the record (and no chunked item open).
            self.write(FULL, None, item);
            return true;
        }
        self.push(item, Some(Instant::now())).is_ok()
    }

    /// [`push_now`](Self::push_now), else (an item written whole, not in chunks) publishes
    /// and yields the CPU until consumers make room, for at most `wait`: a consumer on this CPU
    /// drains the ring meanwhile, one on another CPU frees a record in well under a
    /// microsecond, and the put that found the ring full need not park its item (and every
    /// later one) in the feeder, whose thread would compete with both for the CPUs. Never
    /// sleeps; reads the clock only when the ring is full.
    pub(crate) fn push_soon(&mut self, item: &[u8], wait: Duration) -> bool {
        if self.push_now(item) {
            return true;
        }
        if 8 + padded(item.len()) > self.ring.max_record() {
            return false;
        }
        self.publish();
        let until = Instant::now() + wait;
        loop {
            for _ in 0..YIELDS {
                std::thread::yield_now();
                if self.push_now(item) {
                    return true;
                }
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    /// Writes an item larger than a record (in chunks), waiting for room for each chunk until
    /// `deadline`; `false` if it is not such an item, or if the deadline passed (the chunks
    /// written are then ended by `ABORT`, now or by the next producer, and consumers skip
    /// them). A `put` that can then park the whole item loses nothing by trying.
    pub(crate) fn push_chunked(&mut self, item: &[u8], deadline: Instant) -> bool {
        8 + padded(item.len()) > self.ring.max_record() && self.push(item, Some(deadline)).is_ok()
    }

    fn chunk_payload(&self) -> usize {
        (self.ring.max_record() - 16) as usize
    }

    /// Writes one item (chunked if large), waiting for room until `deadline`. On `Err` the
    /// item was not delivered (a chunked item already begun is ended by `ABORT`, now or by
    /// the next producer).
    pub(crate) fn push(&mut self, item: &[u8], deadline: Deadline) -> Result<(), Stop> {
        self.close_open_item(deadline)?;
        let rec = 8 + padded(item.len());
        if rec <= self.ring.max_record() {
            self.wait_room(rec, deadline)?;
            self.write(FULL, None, item);
            return Ok(());
        }
        let step = self.chunk_payload();
        let total = item.len() as u64;
        let mut chunks = item.chunks(step).peekable();
        let first = chunks.next().expect("a large item has a first chunk");
        self.wait_room(16 + padded(first.len()), deadline)?;
        self.ring.ctl[CHUNKING].store(1, Relaxed);
        self.write(FIRST, Some(total), first);
        while let Some(c) = chunks.next() {
            let kind = if chunks.peek().is_none() { LAST } else { CONT };
            if let Err(e) = self.wait_room(8 + padded(c.len()), deadline) {
                // Give the item up: end it now if there is room, else the next producer will.
                if self.has_room(8) {
                    self.write(ABORT, None, &[]);
                    self.ring.ctl[CHUNKING].store(0, Relaxed);
                }
                self.publish();
                return Err(e);
            }
            self.write(kind, None, c);
            if kind == CONT {
                // Let consumers copy chunks out while the next ones are written.
                self.publish();
            }
        }
        self.publish();
        self.ring.ctl[CHUNKING].store(0, Relaxed);
        Ok(())
    }
}

impl Drop for Producer<'_> {
    fn drop(&mut self) {
        self.publish();
        self.ring.last.tail.store(self.tail, Relaxed);
        self.ring.last.head.store(self.head, Relaxed);
        let _ = self.ring.plock.release();
    }
}

/// What [`Consumer::pop`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Popped {
    /// A whole item (its bytes are in the caller's buffer).
    Item,
    /// Nothing before the deadline.
    Timeout,
}

/// A consumer holding clock; dropping it releases clock.
pub(crate) struct Consumer<'a> {
    ring: &'a Ring,
    pos: u64,
    count: u64,
    /// A position up to which records are known to be published (`TAIL` seen, maybe moved on).
    tail: u64,
    /// Whether `HEAD` moved (consumers waiting for space get notified once at the end).
    moved: bool,
}

impl Consumer<'_> {
    fn advance(&mut self, rec: u64, item_done: bool) {
        self.pos = self.pos.wrapping_add(rec) & POS;
        if item_done {
            self.count = (self.count + 1) & COUNT;
        }
        self.ring.ctl[HEAD].store(commit(self.pos, self.count), Release);
        self.moved = true;
    }

    /// Tells a producer waiting for room that some was freed, once half the ring is free (a
    /// wake-up per item would cost more than the copy, `research/queue-ring.md` §4; the
    /// producer that waits holds the producer lock, so it is the only one).
    fn notify_space(&mut self) {
        if !self.moved {
            return;
        }
        self.moved = false;
        let ring = self.ring;
        fence(SeqCst);
        if ring.ev[SPACE + 1].load(Relaxed) == 0 {
            return;
        }
        let tail = pos(ring.ctl[TAIL].load(Acquire));
        let free = ring.cap() - (tail.wrapping_sub(self.pos) & POS);
        if free >= ring.cap() / 2 {
            notify(&ring.ev[..], SPACE);
        }
    }

    /// Appends the `len` bytes from byte position `from` to `out`.
    fn copy_out(&self, from: u64, len: usize, out: &mut Vec<u8>) {
        out.reserve(len);
        let (a, b) = self.ring.words(from, len / 8);
        load_words(a, out);
        load_words(b, out);
        let rest = len % 8;
        if rest != 0 {
            let at = from.wrapping_add((len - rest) as u64);
            out.extend_from_slice(&self.ring.word(at).load(Relaxed).to_le_bytes()[..rest]);
        }
    }

    /// Whether a record is there to read (`TAIL` beyond our position).
    fn available(&mut self) -> u64 {
        let known = self.tail.wrapping_sub(self.pos) & POS;
        if known != 0 {
            return known;
        }
        self.tail = pos(self.ring.ctl[TAIL].load(Acquire));
        self.tail.wrapping_sub(self.pos) & POS
    }

    /// Takes the next item into `out` (cleared first), waiting until `deadline` for one to
    /// begin (a chunked item that began is always finished or abandoned, whatever the
    /// deadline).
    pub(crate) fn pop(&mut self, deadline: Deadline, out: &mut Vec<u8>) -> Result<Popped, Corrupt> {
        let r = self.pop_inner(deadline, out, None);
        self.notify_space();
        r
    }

    /// [`pop`](Self::pop), calling `claim(bytes, at)` once the item's first record has been
    /// copied into `out` (`bytes`: what `out` holds then, the whole item unless it is chunked)
    /// and before `HEAD` moves past it; `at` is the position of that first record. A process
    /// that dies after `claim` and before `HEAD` moves leaves the item to the next consumer;
    /// `HEAD` beyond `at` says the item was taken (whole or in part).
    pub(crate) fn pop_claimed(
        &mut self,
        deadline: Deadline,
        out: &mut Vec<u8>,
        claim: &mut dyn FnMut(&[u8], u64),
    ) -> Result<Popped, Corrupt> {
        let r = self.pop_inner(deadline, out, Some(claim));
        self.notify_space();
        r
    }

    /// Takes up to `max` more items that are already there, without waiting.
    pub(crate) fn pop_ready(&mut self, max: usize, out: &mut Vec<Vec<u8>>) -> Result<(), Corrupt> {
        let past = Some(Instant::now());
        while out.len() < max && self.available() != 0 {
            let mut v = Vec::new();
            match self.pop_inner(past, &mut v, None)? {
                Popped::Item => out.push(v),
                Popped::Timeout => break,
            }
        }
        self.notify_space();
        Ok(())
    }

    fn pop_inner(
        &mut self,
        deadline: Deadline,
        out: &mut Vec<u8>,
        mut claim: Option<Claim<'_>>,
    ) -> Result<Popped, Corrupt> {
        let ring = self.ring;
        let cap = ring.cap();
        let max_record = ring.max_record();
        out.clear();
        // The total length of the chunked item being taken into `out`.
        let mut partial: Option<u64> = None;
        loop {
            let avail = self.available();
            if avail == 0 {
                self.notify_space();
                if partial.is_some() {
                    self.wait_mid_item()?;
                } else {
                    let my = self.pos;
                    let ready = || pos(ring.ctl[TAIL].load(Acquire)) != my;
                    if !sleep_on(&ring.ev[..], NOT_EMPTY, &ready, deadline) && expired(deadline) {
                        return Ok(Popped::Timeout);
                    }
                }
                continue;
            }
            let at = self.pos;
            let word = ring.word(at).load(Relaxed);
            let corrupt = |what: &str| {
                Corrupt(format!(
                    "queue ring corrupt at byte {} of {cap}: {what} (header {word:#018x})",
                    at % cap
                ))
            };
            let h = decode_header(word, at, max_record)
                .ok_or_else(|| corrupt("not a record header"))?;
            let rec = 8 + padded(h.len);
            if h.kind == PAD {
                if rec != cap - at % cap || rec > avail {
                    return Err(corrupt("padding that does not reach the end of the ring"));
                }
                self.advance(rec, false);
                continue;
            }
            if rec > avail {
                return Err(corrupt("a record longer than what was published"));
            }
            let body = at.wrapping_add(8);
            match h.kind {
                FULL => {
                    self.copy_out(body, h.len, out);
                    if let Some(claim) = claim.as_mut() {
                        claim(out, at);
                    }
                    self.advance(rec, true);
                    ring.release_slot();
                    return Ok(Popped::Item);
                }
                FIRST => {
                    let total = ring.word(body).load(Relaxed);
                    out.clear();
                    out.reserve((total as usize).min(MAX_AHEAD));
                    self.copy_out(body.wrapping_add(8), h.len - 8, out);
                    if out.len() as u64 > total {
                        return Err(corrupt("a first chunk longer than its item"));
                    }
                    if let Some(claim) = claim.as_mut() {
                        claim(out, at);
                    }
                    partial = Some(total);
                    self.advance(rec, false);
                }
                CONT | LAST => {
                    let last = h.kind == LAST;
                    if let Some(total) = partial.take() {
                        self.copy_out(body, h.len, out);
                        if out.len() as u64 > total || (last && out.len() as u64 != total) {
                            return Err(corrupt("chunks that do not add up to their item"));
                        }
                        self.advance(rec, last);
                        if last {
                            ring.release_slot();
                            return Ok(Popped::Item);
                        }
                        partial = Some(total);
                    } else {
                        // The rest of an item a dead consumer had begun: skip it.
                        self.advance(rec, last);
                        if last {
                            ring.release_slot();
                        }
                    }
                }
                ABORT => {
                    // The item's producer died (or gave up) in its middle: it never comes.
                    partial = None;
                    out.clear();
                    self.advance(rec, false);
                    ring.release_slot();
                }
                _ => return Err(corrupt("unknown record kind")),
            }
        }
    }

    /// Waits, in the middle of a chunked item, for its next chunk: in slices, after each of
    /// which it checks whether the item's producer is gone (died, or gave up on a timeout),
    /// and if so ends the item with `ABORT` itself.
    fn wait_mid_item(&mut self) -> Result<(), Corrupt> {
        let ring = self.ring;
        let my = self.pos;
        let ready = || pos(ring.ctl[TAIL].load(Acquire)) != my;
        if sleep_on(
            &ring.ev[..],
            NOT_EMPTY,
            &ready,
            Some(Instant::now() + MID_ITEM_SLICE),
        ) {
            return Ok(());
        }
        // Nothing came for a slice: is a producer still writing?
        if let Ok(mut p) = ring.produce(Some(Instant::now()))
            && pos(ring.ctl[TAIL].load(Acquire)) == my
        {
            if ring.ctl[CHUNKING].load(Relaxed) == 0 {
                // No producer holds the item open, yet it never ended: not what producers
                // write (the ring was written from outside).
                return Err(Corrupt(
                    "queue ring corrupt: a chunked item that no producer is writing".into(),
                ));
            }
            // The ring is empty (we consumed all of it), so ABORT fits.
            let _ = p.close_open_item(Some(Instant::now()));
        }
        Ok(())
    }
}

impl Drop for Consumer<'_> {
    fn drop(&mut self) {
        self.notify_space();
        let last = &self.ring.last_c;
        last.head.store(commit(self.pos, self.count), Relaxed);
        last.tail.store(self.tail, Relaxed);
        let _ = self.ring.clock.release();
    }
}

impl Ring {
    /// Fills a fresh ring with `bytes` as if producers had written and published them (whole
    /// words, from position 0), for the fuzz target of the record decoder.
    fn forge(bytes: &[u8]) -> Ring {
        let ring = Ring::new(MIN_RING, 0, 0).expect("a small ring");
        let words = bytes.len().min(MIN_RING) / 8;
        for (i, c) in bytes.chunks_exact(8).take(words).enumerate() {
            ring.data[i].store(u64::from_le_bytes(c.try_into().expect("8 bytes")), Relaxed);
        }
        ring.ctl[TAIL].store(commit((words * 8) as u64, 0), Release);
        ring
    }
}

/// Feeds arbitrary bytes to the queue's record decoder, as a ring whose producers wrote them,
/// and takes items until the decoder reports the ring corrupt or finds it empty. It must never
/// panic, hang or allocate beyond the ring's size: the fuzz target `queue_records` calls this.
#[doc(hidden)]
pub fn fuzz_records(bytes: &[u8]) -> usize {
    let ring = Ring::forge(bytes);
    let mut c = ring.consume(None).expect("an uncontended lock");
    let mut items = 0;
    let past = Some(Instant::now());
    let mut v = Vec::new();
    loop {
        // A chunked item cut short would wait for its producer: the forged ring has none, so
        // the wait ends with an ABORT written by the decoder itself (one slice).
        match c.pop(past, &mut v) {
            Ok(Popped::Item) => {
                assert!(
                    v.len() <= MIN_RING * 64,
                    "an item larger than what was written"
                );
                items += 1;
            }
            Ok(Popped::Timeout) | Err(_) => return items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let h = header(100, FULL, 4096);
        assert_eq!(
            decode_header(h, 4096, 1024),
            Some(Header {
                kind: FULL,
                len: 100
            })
        );
        // At another position, too long, unknown kind, no magic.
        assert_eq!(decode_header(h, 4104, 1024), None);
        assert_eq!(decode_header(header(2000, FULL, 0), 0, 1024), None);
        assert_eq!(decode_header(header(8, 9, 0), 0, 1024), None);
        assert_eq!(decode_header(0, 0, 1024), None);
        assert_eq!(decode_header(header(4, FIRST, 0), 0, 1024), None);
    }

    fn roundtrip(ring: &Ring, items: &[Vec<u8>]) {
        for it in items {
            let mut p = ring.produce(None).unwrap();
            p.push(it, None).unwrap();
        }
        let mut v = Vec::new();
        for it in items {
            let mut c = ring.consume(None).unwrap();
            assert_eq!(c.pop(None, &mut v).unwrap(), Popped::Item);
            assert_eq!(&v, it);
        }
        assert!(ring.ring_empty());
        assert_eq!(ring.qsize(), 0);
    }

    #[test]
    fn items_of_every_size_pass_and_wrap() {
        let ring = Ring::new(MIN_RING, 0, 0).unwrap();
        for round in 0..50usize {
            let items: Vec<Vec<u8>> = (0..3)
                .map(|i| {
                    (0..(round * 37 + i * 101) % 900)
                        .map(|b| (b + round) as u8)
                        .collect()
                })
                .collect();
            roundtrip(&ring, &items);
        }
    }

    #[test]
    fn a_large_item_is_chunked_through_a_small_ring() {
        let ring = Ring::new(MIN_RING, 0, 0).unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let r2 = ring.clone();
        let want = big.clone();
        let t = std::thread::spawn(move || {
            let mut c = r2.consume(None).unwrap();
            let mut v = Vec::new();
            assert_eq!(c.pop(None, &mut v).unwrap(), Popped::Item);
            assert_eq!(v, want);
        });
        ring.produce(None).unwrap().push(&big, None).unwrap();
        t.join().unwrap();
        assert_eq!(ring.qsize(), 0);
    }

    #[test]
    fn a_chunked_item_given_up_is_skipped() {
        let ring = Ring::new(MIN_RING, 0, 0).unwrap();
        let big = vec![1u8; 50_000];
        // No consumer: the producer gives up after the ring fills.
        let soon = Some(Instant::now() + Duration::from_millis(50));
        assert!(matches!(
            ring.produce(None).unwrap().push(&big, soon),
            Err(Stop::Timeout)
        ));
        // A consumer drains the first chunks; the next producer ends the open item first.
        let r2 = ring.clone();
        let t = std::thread::spawn(move || {
            let mut c = r2.consume(None).unwrap();
            let mut v = Vec::new();
            assert_eq!(c.pop(None, &mut v).unwrap(), Popped::Item);
            v
        });
        ring.produce(None).unwrap().push(b"after", None).unwrap();
        assert_eq!(t.join().unwrap(), b"after");
        assert_eq!(ring.qsize(), 0);
    }

    #[test]
    fn pop_times_out_on_an_empty_ring() {
        let ring = Ring::new(MIN_RING, 0, 0).unwrap();
        let mut c = ring.consume(None).unwrap();
        let t0 = Instant::now();
        assert_eq!(
            c.pop(Some(t0 + Duration::from_millis(30)), &mut Vec::new())
                .unwrap(),
            Popped::Timeout
        );
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn forged_records_are_decoded_or_refused() {
        // Garbage: refused at once.
        assert_eq!(fuzz_records(&[0xff; 64]), 0);
        // Two real records, then garbage.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&header(3, FULL, 0).to_le_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&header(0, FULL, 16).to_le_bytes());
        bytes.extend_from_slice(&[7; 8]);
        assert_eq!(fuzz_records(&bytes), 2);
        // A first chunk that claims a huge item, then nothing: abandoned, no allocation of it.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&header(16, FIRST, 0).to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&[9; 8]);
        assert_eq!(fuzz_records(&bytes), 0);
    }
}
