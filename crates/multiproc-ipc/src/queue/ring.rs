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
//! - **Wake-ups.** An event count per condition (a sequence word and a waiter count): the
//!   notifier calls `FUTEX_WAKE` only when someone waits; a waiter spins briefly first.

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

// Event counts (32-bit futex words): `[sequence, waiters]`, each on its own cache line.
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

/// How long a waiter spins (checks between `spin_loop` hints) before it sleeps: about 2-3 µs,
/// the wake-up saved when the peer runs on another CPU (`research/queue-ring.md` §2).
const SPIN: u32 = 100;
/// How long a consumer in the middle of a chunked item sleeps before it checks whether the
/// producer is gone.
const MID_ITEM_SLICE: Duration = Duration::from_millis(20);
/// The most a consumer reserves ahead for a chunked item, whatever its `FIRST` claims (the
/// buffer grows with the chunks that actually arrive).
const MAX_AHEAD: usize = 1 << 20;

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
        };
        ring.ctl[CAPACITY].store(bytes as u64, Relaxed);
        ring.ctl[MAXSIZE].store(maxsize, Relaxed);
        ring.ctl[FLAGS].store(flags, Release);
        Ok(ring)
    }

    fn cap(&self) -> u64 {
        (self.data.len() * 8) as u64
    }

    /// The largest record (header included) written whole; larger items are chunked.
    fn max_record(&self) -> u64 {
        self.cap() / 4
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
    pub(crate) fn produce(&self, deadline: Deadline) -> Result<Producer<'_>, Stop> {
        match self.plock.acquire_raw(left(deadline)) {
            Acquired::TimedOut => return Err(Stop::Timeout),
            // A producer killed while it waited for room left its flag up.
            Acquired::OwnerDied(_) => self.ctl[STALLED].store(0, Relaxed),
            Acquired::Yes => {}
        }
        let tail = self.ctl[TAIL].load(Acquire);
        Ok(Producer {
            ring: self,
            pos: pos(tail),
            count: count(tail),
            published: pos(tail),
            head: pos(self.ctl[HEAD].load(Acquire)),
        })
    }

    // ---------------------------------------------------------------- consumers

    /// Takes clock (until `deadline`) and returns a consumer holding it.
    pub(crate) fn consume(&self, deadline: Deadline) -> Option<Consumer<'_>> {
        match self.clock.acquire_raw(left(deadline)) {
            Acquired::TimedOut => None,
            Acquired::Yes | Acquired::OwnerDied(_) => {
                let head = self.ctl[HEAD].load(Acquire);
                Some(Consumer {
                    ring: self,
                    pos: pos(head),
                    count: count(head),
                    moved: false,
                })
            }
        }
    }

    fn word(&self, at: u64) -> &AtomicU64 {
        &self.data[((at >> 3) as usize) & (self.data.len() - 1)]
    }
}

/// Time left before `deadline` for a lock wait (`None`: forever).
fn left(deadline: Deadline) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn expired(deadline: Deadline) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Wakes every process sleeping on the event at `at`, if any.
fn notify(ev: &[AtomicU32], at: usize) {
    fence(SeqCst);
    if ev[at + 1].load(Relaxed) != 0 {
        ev[at].fetch_add(1, Release);
        let _ = rustix::thread::futex::wake(
            &ev[at],
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }
}

/// Spins briefly, then sleeps once on the event at `at` until it is notified or `until`;
/// returns whether `ready()` held (checked before and after the sleep).
fn sleep_on(ev: &[AtomicU32], at: usize, ready: &dyn Fn() -> bool, until: Deadline) -> bool {
    for _ in 0..SPIN {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    let seq = ev[at].load(Acquire);
    ev[at + 1].fetch_add(1, SeqCst);
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
    ev[at + 1].fetch_sub(1, SeqCst);
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
    /// The consumers' position last seen.
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
            self.ring.ctl[TAIL].store(commit(self.pos, self.count), Release);
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
        let mut chunks = payload.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.ring.word(at).store(w, Relaxed);
            at = at.wrapping_add(8);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
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
        let _ = self.ring.plock.release();
    }
}

/// What [`Consumer::pop`] found.
pub(crate) enum Popped {
    /// A whole item's bytes.
    Item(Vec<u8>),
    /// Nothing before the deadline.
    Timeout,
}

/// A consumer holding clock; dropping it releases clock.
pub(crate) struct Consumer<'a> {
    ring: &'a Ring,
    pos: u64,
    count: u64,
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

    fn copy_out(&self, from: u64, len: usize, out: &mut Vec<u8>) {
        let mut at = from;
        let mut left = len;
        while left >= 8 {
            out.extend_from_slice(&self.ring.word(at).load(Relaxed).to_le_bytes());
            at = at.wrapping_add(8);
            left -= 8;
        }
        if left > 0 {
            out.extend_from_slice(&self.ring.word(at).load(Relaxed).to_le_bytes()[..left]);
        }
    }

    /// Whether a record is there to read (`TAIL` beyond our position).
    fn available(&self) -> u64 {
        pos(self.ring.ctl[TAIL].load(Acquire)).wrapping_sub(self.pos) & POS
    }

    /// Takes the next item, waiting until `deadline` for one to begin (a chunked item that
    /// began is always finished or abandoned, whatever the deadline).
    pub(crate) fn pop(&mut self, deadline: Deadline) -> Result<Popped, Corrupt> {
        let r = self.pop_inner(deadline);
        self.notify_space();
        r
    }

    /// Takes up to `max` more items that are already there, without waiting.
    pub(crate) fn pop_ready(&mut self, max: usize, out: &mut Vec<Vec<u8>>) -> Result<(), Corrupt> {
        let past = Some(Instant::now());
        while out.len() < max && self.available() != 0 {
            match self.pop_inner(past)? {
                Popped::Item(v) => out.push(v),
                Popped::Timeout => break,
            }
        }
        self.notify_space();
        Ok(())
    }

    fn pop_inner(&mut self, deadline: Deadline) -> Result<Popped, Corrupt> {
        let ring = self.ring;
        let cap = ring.cap();
        let max_record = ring.max_record();
        let mut partial: Option<(Vec<u8>, u64)> = None;
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
                    let mut v = Vec::with_capacity(h.len);
                    self.copy_out(body, h.len, &mut v);
                    self.advance(rec, true);
                    ring.release_slot();
                    return Ok(Popped::Item(v));
                }
                FIRST => {
                    let total = ring.word(body).load(Relaxed);
                    let mut v = Vec::with_capacity((total as usize).min(MAX_AHEAD));
                    self.copy_out(body.wrapping_add(8), h.len - 8, &mut v);
                    if v.len() as u64 > total {
                        return Err(corrupt("a first chunk longer than its item"));
                    }
                    partial = Some((v, total));
                    self.advance(rec, false);
                }
                CONT | LAST => {
                    let last = h.kind == LAST;
                    if let Some((mut v, total)) = partial.take() {
                        self.copy_out(body, h.len, &mut v);
                        if v.len() as u64 > total || (last && v.len() as u64 != total) {
                            return Err(corrupt("chunks that do not add up to their item"));
                        }
                        self.advance(rec, last);
                        if last {
                            ring.release_slot();
                            return Ok(Popped::Item(v));
                        }
                        partial = Some((v, total));
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
    loop {
        // A chunked item cut short would wait for its producer: the forged ring has none, so
        // the wait ends with an ABORT written by the decoder itself (one slice).
        match c.pop(past) {
            Ok(Popped::Item(v)) => {
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
        for it in items {
            let mut c = ring.consume(None).unwrap();
            match c.pop(None).unwrap() {
                Popped::Item(v) => assert_eq!(&v, it),
                Popped::Timeout => panic!("timeout"),
            }
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
            match c.pop(None).unwrap() {
                Popped::Item(v) => assert_eq!(v, want),
                Popped::Timeout => panic!("timeout"),
            }
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
            match c.pop(None).unwrap() {
                Popped::Item(v) => v,
                Popped::Timeout => panic!("timeout"),
            }
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
        assert!(matches!(
            c.pop(Some(t0 + Duration::from_millis(30))).unwrap(),
            Popped::Timeout
        ));
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
