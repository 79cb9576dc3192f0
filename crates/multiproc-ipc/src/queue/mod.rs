//! [`Queue`], [`SimpleQueue`] and [`JoinableQueue`]: Python's `multiprocessing` queues, many
//! producers and many consumers across processes, on a byte ring in shared memory.
//!
//! | Python | here |
//! |---|---|
//! | `q = Queue()`, `Queue(maxsize)` | [`Queue::new()`], [`Queue::with_maxsize(n)`](Queue::with_maxsize) |
//! | `q.put(x)`, `put(x, block=False)`, `put(x, timeout=t)` | [`put`](Queue::put), [`try_put`](Queue::try_put), [`put_timeout`](Queue::put_timeout) |
//! | `q.get()`, `get(block=False)`, `get(timeout=t)` | [`get`](Queue::get), [`try_get`](Queue::try_get), [`get_timeout`](Queue::get_timeout) |
//! | `queue.Full`, `queue.Empty` | [`PutError::Full`] (carrying the item back), [`GetError::Empty`], `…::Timeout` |
//! | `qsize()`, `empty()`, `full()` | the same |
//! | `close()`, `join_thread()`, `cancel_join_thread()` | the same (per handle) |
//! | `SimpleQueue()` | [`SimpleQueue`] |
//! | `JoinableQueue()`, `task_done()`, `join()` | [`JoinableQueue`] |
//!
//! Items are any serde type, encoded with postcard. A queue is a serde handle: hand it to a
//! child as a `Process` argument (or inside one), or, beyond Python, send it over a
//! [`socketpair`](crate::socketpair()) connection. Every handle reaches the same queue;
//! dropping the last handle in every process frees it.
//!
//! ```
//! use multiproc_core::Process;
//! use multiproc_ipc::Queue;
//!
//! fn worker(q: Queue<String>) {
//!     q.put(format!("hello from {}", multiproc_core::current_process().name)).unwrap();
//! }
//!
//! let q = Queue::new()?;
//! let mut p = Process::new(worker, q.clone());
//! p.start().unwrap();
//! assert!(q.get()?.starts_with("hello from Process-"));
//! p.join().unwrap();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How it works (`docs/decisions.md`, "Queues (issue 7)"): an item is written straight into
//! the ring by the process that puts it, under a producer lock in shared memory, and made
//! visible by one atomic store; `put` returns once it is there, so a producer killed after
//! `put` returned loses nothing. Only when the ring stays full does an unbounded queue's `put`
//! park the item in a per-process feeder thread (Python's design, which always does), which
//! writes it once consumers make room: those parked items die with their process if it is
//! killed, as in Python. Items larger than a quarter of the ring pass in chunks; one larger
//! than the ring streams through it from `put` while consumers take its chunks, and is parked
//! whole if they stop for 2 ms. A process
//! killed while it holds the producer or consumer side is detected, and the others go on; a
//! consumer killed in the middle of a `get` loses at most the item it was taking.

mod byte_ring;
mod error;
pub(crate) mod ring;

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use self::byte_ring::{ByteRing, RingError};
pub use self::error::{GetError, JoinThreadError, PutError, TaskDoneError};
#[doc(hidden)]
pub use self::ring::fuzz_records;
use self::ring::{Consumer, Deadline, JOINABLE, Popped, Ring, Stop};

/// How long a `put` waits for another producer to finish before it parks its item in the
/// feeder instead (a `put` never waits for a producer that waits for room).
const PRODUCER_LOCK_WAIT: Duration = Duration::from_millis(2);

/// How long a `put` that finds the ring full yields its CPU for room before it parks its item
/// in the feeder instead (it never sleeps).
const ROOM_WAIT: Duration = Duration::from_millis(1);

/// Options for a new queue beyond `maxsize`: the size of its ring.
///
/// ```
/// use multiproc_ipc::{Queue, QueueBuilder};
///
/// let q: Queue<Vec<u8>> = QueueBuilder::new().maxsize(8).ring_bytes(16 * 1024).build()?;
/// q.put(vec![7; 100_000])?; // larger than the ring: passes in chunks
/// assert_eq!(q.get()?.len(), 100_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct QueueBuilder {
    maxsize: usize,
    ring_bytes: usize,
}

impl Default for QueueBuilder {
    fn default() -> Self {
        QueueBuilder::new()
    }
}

impl QueueBuilder {
    /// Unbounded, with a ring of 256 KiB.
    pub fn new() -> QueueBuilder {
        QueueBuilder {
            maxsize: 0,
            ring_bytes: ring::DEFAULT_RING,
        }
    }

    /// The most items the queue holds before `put` blocks (0, the default: unbounded).
    pub fn maxsize(mut self, maxsize: usize) -> Self {
        self.maxsize = maxsize;
        self
    }

    /// The size of the shared ring in bytes (rounded up to a power of two, 4 KiB to 1 GiB;
    /// default 256 KiB). Items larger than a quarter of it pass in chunks.
    pub fn ring_bytes(mut self, bytes: usize) -> Self {
        self.ring_bytes = bytes;
        self
    }

    /// A new [`Queue`].
    pub fn build<T>(&self) -> Result<Queue<T>, crate::Error> {
        Queue::from_ring(Ring::new(self.ring_bytes, self.maxsize as u64, 0)?)
    }

    /// A new [`JoinableQueue`].
    pub fn build_joinable<T>(&self) -> Result<JoinableQueue<T>, crate::Error> {
        Ok(JoinableQueue {
            queue: Queue::from_ring(Ring::new(self.ring_bytes, self.maxsize as u64, JOINABLE)?)?,
        })
    }

    /// A new [`SimpleQueue`] (`maxsize` does not apply).
    pub fn build_simple<T>(&self) -> Result<SimpleQueue<T>, crate::Error> {
        Ok(SimpleQueue {
            ring: Ring::new(self.ring_bytes, 0, 0)?,
            closed: AtomicBool::new(false),
            _t: PhantomData,
        })
    }
}

/// This process's side of a queue, shared by its handles here.
struct Core {
    ring: Ring,
    local: Mutex<Local>,
    /// Whether this process has items parked in its feeder (then `put` parks too, to keep
    /// each producer's order).
    backlogged: AtomicBool,
    /// `cancel_join_thread` was called: the last handle's drop does not wait for the feeder.
    cancel_join: AtomicBool,
    /// Handles of this queue in this process.
    handles: AtomicUsize,
}

/// The feeder's state, valid in the process `pid` (a fork child finds its parent's and
/// starts afresh: the feeder thread and its items stay with the parent).
struct Local {
    pid: u32,
    backlog: VecDeque<Vec<u8>>,
    /// Whether a feeder thread runs (it clears this when it finds the backlog empty).
    running: bool,
    feeder: Option<Feeder>,
}

/// A feeder thread, and the channel whose sender it drops when it returns (so that a flush
/// can wait for its end with a deadline).
struct Feeder {
    thread: JoinHandle<()>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Core {
    fn new(ring: Ring) -> Arc<Core> {
        Arc::new(Core {
            ring,
            local: Mutex::new(Local {
                pid: multiproc_core::current_pid(),
                backlog: VecDeque::new(),
                running: false,
                feeder: None,
            }),
            backlogged: AtomicBool::new(false),
            cancel_join: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
        })
    }

    /// Runs `f` on this process's feeder state (under the fork lock: no fork happens while it
    /// is held), resetting a state inherited from the parent in a fork child.
    fn with_local<R>(&self, f: impl FnOnce(&mut Local) -> R) -> R {
        let _fork = multiproc_core::fork_guard();
        let mut local = self.local.lock();
        let me = multiproc_core::current_pid();
        if local.pid != me {
            local.pid = me;
            local.backlog.clear();
            local.running = false;
            // The thread exists only in the parent; its handle must not be joined or detached.
            std::mem::forget(local.feeder.take());
            self.backlogged.store(false, Release);
        }
        f(&mut local)
    }

    /// Parks an item in this process's feeder, starting it if needed (and registering the
    /// queue to be flushed when a multiproc child exits).
    fn park(self: &Arc<Core>, bytes: Vec<u8>) -> Result<(), (std::io::Error, Vec<u8>)> {
        self.with_local(|local| {
            local.backlog.push_back(bytes);
            self.backlogged.store(true, Release);
            if !local.running {
                let core = Arc::clone(self);
                let (end, ended) = std::sync::mpsc::channel::<()>();
                match multiproc_core::spawn_fork_safe_thread(
                    "multiproc-queue-feeder".into(),
                    move || {
                        let _end = end;
                        feed(&core)
                    },
                ) {
                    Ok(thread) => {
                        local.running = true;
                        local.feeder = Some(Feeder { thread, ended });
                        remember_feeding(self);
                    }
                    Err(e) => {
                        let bytes = local.backlog.pop_back().expect("just pushed");
                        if local.backlog.is_empty() {
                            self.backlogged.store(false, Release);
                        }
                        return Err((e, bytes));
                    }
                }
            }
            Ok(())
        })
    }

    /// Waits until this process's feeder has written every parked item (or `deadline`): until
    /// the feeder thread ends (it ends when it finds nothing parked), and any feeder started
    /// meanwhile too.
    fn flush(&self, deadline: Deadline) -> bool {
        use std::sync::mpsc::RecvTimeoutError;
        while let Some(feeder) = self.with_local(|l| l.feeder.take()) {
            let ended = match deadline {
                // The sender is only ever dropped: `recv` returns when the thread ends.
                None => feeder.ended.recv().is_err(),
                Some(d) => matches!(
                    feeder
                        .ended
                        .recv_timeout(d.saturating_duration_since(Instant::now())),
                    Err(RecvTimeoutError::Disconnected)
                ),
            };
            if !ended {
                // Still writing: keep it for a later flush (unless a newer one replaced it).
                self.with_local(|l| {
                    if l.feeder.is_none() {
                        l.feeder = Some(feeder);
                    }
                });
                return false;
            }
            let _ = feeder.thread.join();
        }
        true
    }
}

/// Queues whose feeder ran in this process, flushed when a multiproc child exits: the handles
/// a fork child inherited from its parent are never all dropped, so the last-handle flush of
/// `Drop` cannot be relied on there (Python joins the feeder threads in its exit function).
static FEEDING: Mutex<Vec<std::sync::Weak<Core>>> = Mutex::new(Vec::new());

fn remember_feeding(core: &Arc<Core>) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| multiproc_core::register_at_child_exit(flush_at_exit));
    let _fork = multiproc_core::fork_guard();
    let mut feeding = FEEDING.lock();
    feeding.retain(|w| w.strong_count() > 0);
    feeding.push(Arc::downgrade(core));
}

/// Writes what this process parked in its feeders before it exits (but for the queues whose
/// `cancel_join_thread` was called).
fn flush_at_exit() {
    let cores: Vec<Arc<Core>> = {
        let _fork = multiproc_core::fork_guard();
        FEEDING
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    };
    for core in cores {
        if !core.cancel_join.load(SeqCst) {
            core.flush(None);
        }
    }
}

/// How many parked items the feeder writes between two publications.
const FEED_PUBLISH: usize = 32;

/// The feeder thread: writes parked items into the ring in order, waiting for room. It takes
/// the whole backlog at once and writes as many of its items as the ring takes under one
/// acquisition of the producer lock (waiting for room for the first only), publishing every
/// [`FEED_PUBLISH`] items: one item at a time, it could not keep up with a `put` loop.
fn feed(core: &Core) {
    let mut batch: VecDeque<Vec<u8>> = VecDeque::new();
    loop {
        if batch.is_empty() {
            // `backlogged` stays set while the batch taken here is not written.
            let more = core.with_local(|local| {
                if local.backlog.is_empty() {
                    core.backlogged.store(false, Release);
                    local.running = false;
                    false
                } else {
                    std::mem::swap(&mut local.backlog, &mut batch);
                    true
                }
            });
            if !more {
                return;
            }
        }
        // No deadline: the lock and the room are waited for as long as it takes.
        let Ok(mut p) = core.ring.produce(None) else {
            continue;
        };
        let mut written = 0;
        while let Some(item) = batch.front() {
            let ok = if written == 0 {
                p.push(item, None).is_ok()
            } else {
                p.push_now(item)
            };
            if !ok {
                break;
            }
            if let Some(done) = batch.pop_front() {
                recycle(done);
            }
            written += 1;
            if written % FEED_PUBLISH == 0 {
                p.publish();
                core.ring.buffered(-(FEED_PUBLISH as i64));
            }
        }
        p.publish();
        core.ring.buffered(-((written % FEED_PUBLISH) as i64));
    }
}

/// A multi-producer, multi-consumer FIFO queue between processes: Python's
/// `multiprocessing.Queue`. See the [module documentation](self).
///
/// Items of one producer (one process) come out in the order it put them. `put` on an
/// unbounded queue never blocks; on a bounded one ([`with_maxsize`](Queue::with_maxsize)) it
/// waits while `maxsize` items are in the queue.
pub struct Queue<T> {
    core: Arc<Core>,
    closed: AtomicBool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Queue<T> {
    /// A new unbounded queue.
    pub fn new() -> Result<Queue<T>, crate::Error> {
        QueueBuilder::new().build()
    }

    /// A new queue that holds at most `maxsize` items (0: unbounded).
    pub fn with_maxsize(maxsize: usize) -> Result<Queue<T>, crate::Error> {
        QueueBuilder::new().maxsize(maxsize).build()
    }

    fn from_ring(ring: Ring) -> Result<Queue<T>, crate::Error> {
        Ok(Queue::with_core(Core::new(ring)))
    }

    fn with_core(core: Arc<Core>) -> Queue<T> {
        core.handles.fetch_add(1, SeqCst);
        Queue {
            core,
            closed: AtomicBool::new(false),
            _t: PhantomData,
        }
    }

    /// `maxsize` (0 for an unbounded queue).
    pub fn maxsize(&self) -> usize {
        self.core.ring.maxsize() as usize
    }

    /// The approximate number of items in the queue (those parked in feeder threads
    /// included, as Python counts them).
    pub fn qsize(&self) -> usize {
        self.core.ring.qsize() as usize
    }

    /// Whether the queue is (approximately) empty.
    pub fn empty(&self) -> bool {
        self.qsize() == 0
    }

    /// Whether the queue (approximately) holds `maxsize` items (every slot taken by a put
    /// and not yet freed by a get); always `false` unbounded.
    pub fn full(&self) -> bool {
        let max = self.maxsize() as u64;
        max > 0 && self.core.ring.reserved() >= max
    }

    /// Closes this handle: it can no longer put or get. Other handles, in this process or
    /// others, keep working, and the items this handle put are still delivered (Python's
    /// `close()`).
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
    }

    /// Whether [`close`](Queue::close) was called on this handle.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Waits until every item this process parked in its feeder thread is in the queue
    /// (Python's `join_thread()`; only after [`close`](Queue::close)).
    pub fn join_thread(&self) -> Result<(), JoinThreadError> {
        if !self.is_closed() {
            return Err(JoinThreadError::NotClosed);
        }
        self.core.flush(None);
        Ok(())
    }

    /// [`join_thread`](Queue::join_thread) for at most `timeout`.
    pub fn join_thread_timeout(&self, timeout: Duration) -> Result<(), JoinThreadError> {
        if !self.is_closed() {
            return Err(JoinThreadError::NotClosed);
        }
        if self.core.flush(Instant::now().checked_add(timeout)) {
            Ok(())
        } else {
            Err(JoinThreadError::Timeout)
        }
    }

    /// Lets this process drop its last handle (or exit) without waiting for its feeder to
    /// write the items parked there (Python's `cancel_join_thread()`); such items may be lost.
    pub fn cancel_join_thread(&self) {
        self.core.cancel_join.store(true, SeqCst);
    }

    fn refuse_closed<V>(&self, v: V) -> Result<V, PutError<V>> {
        if self.is_closed() {
            Err(PutError::Closed(v))
        } else {
            Ok(v)
        }
    }

    /// Sends encoded items in order: each straight into the ring when there is room now and
    /// this process has nothing parked, else into this process's feeder. A bounded queue first
    /// takes a slot per item, waiting until `deadline` (`try_only`: not at all).
    fn send(
        &self,
        items: &mut [impl Encoded],
        deadline: Deadline,
        try_only: bool,
    ) -> Result<(), Refused> {
        let core = &self.core;
        let ring = &core.ring;
        let joinable = ring.flags() & JOINABLE != 0;
        if joinable {
            ring.add_unfinished(items.len() as u64);
        }
        let result = self.send_items(items, deadline, try_only);
        if joinable && let Err(r) = &result {
            // The items not sent are not tasks.
            for _ in 0..r.unsent {
                ring.task_done();
            }
        }
        result
    }

    /// The items written into the ring are left in `items`; those parked are taken out.
    fn send_items(
        &self,
        items: &mut [impl Encoded],
        deadline: Deadline,
        try_only: bool,
    ) -> Result<(), Refused> {
        let core = &self.core;
        let ring = &core.ring;
        let bounded = ring.maxsize() > 0;
        let mut unsent = items.len();
        // The producer lock, held across items (one publication for a batch), and whether
        // taking it is still worth trying.
        let mut producer = None;
        let mut direct = true;
        for item in items {
            if bounded && !ring.try_reserve() {
                // Never wait for a slot holding the lock with unpublished items.
                drop(producer.take());
                let wait = if try_only {
                    Some(Instant::now())
                } else {
                    deadline
                };
                if let Err(stop) = ring.reserve(wait) {
                    let why = match stop {
                        Stop::NoRoom => Why::Full,
                        Stop::Timeout if try_only => Why::Full,
                        Stop::Timeout => Why::Timeout,
                    };
                    return Err(Refused { why, unsent });
                }
            }
            if direct && producer.is_none() {
                // An unbounded put never queues behind a producer that waits for room.
                direct = !core.backlogged.load(Acquire) && !ring.stalled();
                if direct {
                    producer = ring.produce_within(PRODUCER_LOCK_WAIT).ok();
                    direct = producer.is_some();
                }
            }
            if let Some(p) = producer.as_mut()
                && !core.backlogged.load(Acquire)
                && (p.push_soon(item.bytes(), ROOM_WAIT)
                    // An item larger than the ring streams through it while consumers take
                    // its chunks; given up (and parked whole) if they stop for long. Not on a
                    // bounded queue: the consumer frees the item's slot when it skips it.
                    || (!bounded
                        && p.push_chunked(item.bytes(), Instant::now() + PRODUCER_LOCK_WAIT)))
            {
                unsent -= 1;
                continue;
            }
            // No room in the ring now: park the item (and every later one, to keep the order).
            drop(producer.take());
            direct = false;
            ring.buffered(1);
            if let Err((e, _)) = core.park(item.take_owned()) {
                ring.buffered(-1);
                if bounded {
                    ring.release_slot();
                }
                return Err(Refused {
                    why: Why::Os(e),
                    unsent,
                });
            }
            unsent -= 1;
        }
        Ok(())
    }

    fn consume(&self, deadline: Deadline) -> Result<Consumer<'_>, GetError> {
        if self.is_closed() {
            return Err(GetError::Closed);
        }
        self.core.ring.consume(deadline).ok_or(GetError::Timeout)
    }
}

/// Why `send` stopped, and how many items (the last ones) were not sent.
struct Refused {
    why: Why,
    unsent: usize,
}

enum Why {
    Full,
    Timeout,
    Os(std::io::Error),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GetError> {
    postcard::from_bytes(bytes).map_err(|e| GetError::Decode(e.to_string()))
}

/// The largest buffer a thread keeps between two items.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    /// A buffer this thread reuses to encode items and to copy them out of the ring (one
    /// allocation per item less on either side).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Buffers of items the feeder has written, for the next items to be encoded into (a large
/// item is parked in the buffer it was encoded into: without this, every one of them would be
/// a fresh allocation, faulted in page by page).
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
/// The most buffers kept in [`SPARE`].
const SPARES: usize = 4;

/// Keeps the buffer of a parked item once it is written, for [`with_scratch`] (never waits:
/// the feeder runs beside forks, and a lock held across one would stay held in the child).
fn recycle(mut buf: Vec<u8>) {
    if (STACK_ITEM..=SCRATCH_KEEP).contains(&buf.capacity())
        && let Some(mut spare) = SPARE.try_lock()
        && spare.len() < SPARES
    {
        buf.clear();
        spare.push(buf);
    }
}

/// Runs `f` on this thread's scratch buffer, emptied (a fresh one if `f` runs inside
/// another call: the buffer is taken while in use). `f` may take the buffer away.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.capacity() == 0
        && let Some(mut spare) = SPARE.try_lock()
        && let Some(b) = spare.pop()
    {
        buf = b;
    }
    buf.clear();
    let r = f(&mut buf);
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.set(buf);
    }
    r
}

/// Encodes `value` into `buf` (emptied first).
fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    buf.clear();
    *buf = postcard::to_extend(value, std::mem::take(buf)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Items up to this many encoded bytes are encoded on the stack.
const STACK_ITEM: usize = 128;

/// An encoded item on its way into the ring: its bytes, and an owned copy for the feeder.
trait Encoded {
    fn bytes(&self) -> &[u8];
    /// The bytes as a vector of their own, for the feeder (moved out where possible).
    fn take_owned(&mut self) -> Vec<u8>;
}

impl Encoded for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn take_owned(&mut self) -> Vec<u8> {
        std::mem::take(self)
    }
}

impl Encoded for &[u8] {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn take_owned(&mut self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Encoded for &mut Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn take_owned(&mut self) -> Vec<u8> {
        std::mem::take(*self)
    }
}

/// Encodes `value` and runs `f` on the encoded item: on the stack if it takes at most
/// [`STACK_ITEM`] bytes, else in this thread's scratch buffer (which `f` may take away).
fn with_encoded<T: Serialize, R>(
    value: &T,
    f: impl FnOnce(&mut dyn Encoded) -> R,
) -> Result<R, String> {
    let mut stack = [0u8; STACK_ITEM];
    match postcard::to_slice(value, &mut stack) {
        Ok(bytes) => {
            let mut item: &[u8] = bytes;
            Ok(f(&mut item))
        }
        Err(postcard::Error::SerializeBufferFull) => with_scratch(|buf| {
            encode_into(value, buf)?;
            let mut item = buf;
            Ok(f(&mut item))
        }),
        Err(e) => Err(e.to_string()),
    }
}

impl Encoded for &mut dyn Encoded {
    fn bytes(&self) -> &[u8] {
        (**self).bytes()
    }
    fn take_owned(&mut self) -> Vec<u8> {
        (**self).take_owned()
    }
}

/// Takes one item (`deadline` for it to come), as `GetError::Empty` when `try_only`.
fn take<T: DeserializeOwned>(
    consumer: Result<Consumer<'_>, GetError>,
    deadline: Deadline,
    try_only: bool,
) -> Result<T, GetError> {
    let timeout = if try_only {
        GetError::Empty
    } else {
        GetError::Timeout
    };
    let mut c = consumer.map_err(|e| match e {
        GetError::Timeout => {
            if try_only {
                GetError::Empty
            } else {
                GetError::Timeout
            }
        }
        e => e,
    })?;
    with_scratch(|buf| {
        let popped = c.pop(deadline, buf).map_err(|e| GetError::Corrupt(e.0))?;
        drop(c);
        match popped {
            Popped::Item => decode(buf),
            Popped::Timeout => Err(timeout),
        }
    })
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    fn put_with(&self, value: T, deadline: Deadline, try_only: bool) -> Result<(), PutError<T>> {
        let value = self.refuse_closed(value)?;
        match with_encoded(&value, |item| self.send(&mut [item], deadline, try_only)) {
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(PutError::Encode(value, e)),
            Ok(Err(r)) => Err(match r.why {
                Why::Full => PutError::Full(value),
                Why::Timeout => PutError::Timeout(value),
                Why::Os(e) => PutError::Os(value, e),
            }),
        }
    }

    /// Puts `value` at the back of the queue. On an unbounded queue this never blocks; on a
    /// bounded one it waits while `maxsize` items are in the queue.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, None, false)
    }

    /// Puts `value` unless the queue is full now (Python's `put(x, block=False)`).
    pub fn try_put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, Some(Instant::now()), true)
    }

    /// Puts `value`, waiting at most `timeout` for a free slot.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(value, Instant::now().checked_add(timeout), false)
    }

    /// Puts every item of `values` in order, with one acquisition of the producers' side and
    /// one publication for as many as fit (several times faster than `put` in a loop for small
    /// items). Blocks like [`put`](Queue::put). On an error, the items not put come back.
    pub fn put_many(&self, values: impl IntoIterator<Item = T>) -> Result<(), PutError<Vec<T>>> {
        let values: Vec<T> = values.into_iter().collect();
        let values = self.refuse_closed(values)?;
        let mut items = Vec::with_capacity(values.len());
        for v in &values {
            match encode(v) {
                Ok(b) => items.push(b),
                Err(e) => return Err(PutError::Encode(values, e)),
            }
        }
        self.send(&mut items, None, false).map_err(|r| {
            let mut values = values;
            let unsent = values.split_off(values.len() - r.unsent);
            match r.why {
                Why::Full => PutError::Full(unsent),
                Why::Timeout => PutError::Timeout(unsent),
                Why::Os(e) => PutError::Os(unsent, e),
            }
        })
    }

    /// Takes the item at the front, waiting for one as long as it takes.
    pub fn get(&self) -> Result<T, GetError> {
        take(self.consume(None), None, false)
    }

    /// Takes the item at the front if there is one now (Python's `get(block=False)`).
    pub fn try_get(&self) -> Result<T, GetError> {
        let now = Some(Instant::now());
        take(self.consume(now), now, true)
    }

    /// Takes the item at the front, waiting at most `timeout` for one to begin (an item larger
    /// than the ring that has begun to arrive is always taken whole).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let deadline = Instant::now().checked_add(timeout);
        take(self.consume(deadline), deadline, false)
    }

    /// Waits for one item, then takes up to `max - 1` more that are already there, with one
    /// acquisition of the consumers' side. (Only explicit: taking items ahead would take the
    /// items other consumers are waiting for.)
    pub fn get_many(&self, max: usize) -> Result<Vec<T>, GetError> {
        let mut c = self.consume(None)?;
        let mut first = Vec::new();
        if c.pop(None, &mut first)
            .map_err(|e| GetError::Corrupt(e.0))?
            == Popped::Timeout
        {
            return Err(GetError::Timeout);
        }
        let mut raw = vec![first];
        c.pop_ready(max.max(1), &mut raw)
            .map_err(|e| GetError::Corrupt(e.0))?;
        drop(c);
        raw.iter().map(|b| decode(b)).collect()
    }
}

impl<T> Clone for Queue<T> {
    /// Another handle on the same queue (not closed, whatever this one is).
    fn clone(&self) -> Self {
        Queue::with_core(Arc::clone(&self.core))
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // The last handle in this process waits for the feeder (Python joins the feeder at
        // exit), unless `cancel_join_thread` was called.
        if self.core.handles.fetch_sub(1, SeqCst) == 1 && !self.core.cancel_join.load(SeqCst) {
            self.core.flush(None);
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("maxsize", &self.maxsize())
            .field("qsize", &self.qsize())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.core.ring.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Queue::with_core(Core::new(Ring::deserialize(
            deserializer,
        )?)))
    }
}

/// A queue without feeder or size limit: Python's `multiprocessing.SimpleQueue`.
///
/// `put` writes into the shared ring and waits while the ring is full (as Python's
/// `SimpleQueue.put` waits while its pipe is full), so an item is in the queue when `put`
/// returns. Otherwise it behaves as [`Queue`].
///
/// ```
/// use multiproc_ipc::SimpleQueue;
///
/// let q = SimpleQueue::new()?;
/// q.put(1u32)?;
/// q.put(2u32)?;
/// assert!(!q.empty());
/// assert_eq!((q.get()?, q.get()?), (1, 2));
/// assert!(q.empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SimpleQueue<T> {
    ring: Ring,
    closed: AtomicBool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> SimpleQueue<T> {
    /// A new queue with a ring of the default size.
    pub fn new() -> Result<SimpleQueue<T>, crate::Error> {
        QueueBuilder::new().build_simple()
    }

    /// Whether the queue is (approximately) empty.
    pub fn empty(&self) -> bool {
        self.ring.qsize() == 0
    }

    /// Closes this handle: it can no longer put or get (other handles keep working).
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
    }

    fn consume(&self, deadline: Deadline) -> Result<Consumer<'_>, GetError> {
        if self.closed.load(Relaxed) {
            return Err(GetError::Closed);
        }
        self.ring.consume(deadline).ok_or(GetError::Timeout)
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    fn put_with(&self, value: T, deadline: Deadline) -> Result<(), PutError<T>> {
        if self.closed.load(Relaxed) {
            return Err(PutError::Closed(value));
        }
        let r = with_encoded(&value, |item| {
            let Ok(mut p) = self.ring.produce(deadline) else {
                return false;
            };
            p.push(item.bytes(), deadline).is_ok()
        });
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(PutError::Timeout(value)),
            Err(e) => Err(PutError::Encode(value, e)),
        }
    }

    /// Puts `value`, waiting while the ring is full.
    pub fn put(&self, value: T) -> Result<(), PutError<T>> {
        self.put_with(value, None)
    }

    /// Puts `value`, waiting at most `timeout` for room.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(value, Instant::now().checked_add(timeout))
    }

    /// Takes the item at the front, waiting for one.
    pub fn get(&self) -> Result<T, GetError> {
        take(self.consume(None), None, false)
    }

    /// Takes the item at the front, waiting at most `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        let deadline = Instant::now().checked_add(timeout);
        take(self.consume(deadline), deadline, false)
    }

    /// Takes the item at the front if there is one now.
    pub fn try_get(&self) -> Result<T, GetError> {
        let now = Some(Instant::now());
        take(self.consume(now), now, true)
    }
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            ring: self.ring.clone(),
            closed: AtomicBool::new(false),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("empty", &self.empty())
            .finish()
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.ring.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(SimpleQueue {
            ring: Ring::deserialize(deserializer)?,
            closed: AtomicBool::new(false),
            _t: PhantomData,
        })
    }
}

/// A [`Queue`] that counts unfinished tasks: Python's `multiprocessing.JoinableQueue`.
///
/// Every item put is a task; a consumer calls [`task_done`](JoinableQueue::task_done) once
/// per item it has finished, and [`join`](JoinableQueue::join) waits until every task put
/// so far is done. Derefs to [`Queue`] for everything else.
///
/// ```
/// use multiproc_ipc::JoinableQueue;
///
/// let q = JoinableQueue::new()?;
/// q.put(5u8)?;
/// assert_eq!(q.get()?, 5);
/// assert!(q.join_timeout(std::time::Duration::ZERO).is_err());
/// q.task_done()?;
/// q.join();
/// assert!(q.task_done().is_err()); // more task_done() than items
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    /// A new unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, crate::Error> {
        QueueBuilder::new().build_joinable()
    }

    /// A new joinable queue of at most `maxsize` items.
    pub fn with_maxsize(maxsize: usize) -> Result<JoinableQueue<T>, crate::Error> {
        QueueBuilder::new().maxsize(maxsize).build_joinable()
    }

    /// Marks one task (an item taken) as done; an error if every task put was already done.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        if self.queue.core.ring.task_done() {
            Ok(())
        } else {
            Err(TaskDoneError)
        }
    }

    /// Waits until every task put so far (by any process) is done.
    pub fn join(&self) {
        self.queue.core.ring.join_tasks(None);
    }

    /// [`join`](JoinableQueue::join) for at most `timeout`; `Err(GetError::Timeout)` if tasks
    /// were still unfinished then.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), GetError> {
        if self
            .queue
            .core
            .ring
            .join_tasks(Instant::now().checked_add(timeout))
        {
            Ok(())
        } else {
            Err(GetError::Timeout)
        }
    }

    /// The number of tasks put and not yet done.
    pub fn unfinished_tasks(&self) -> usize {
        self.queue.core.ring.unfinished() as usize
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("qsize", &self.qsize())
            .field("unfinished_tasks", &self.unfinished_tasks())
            .finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let queue = Queue::deserialize(deserializer)?;
        if queue.core.ring.flags() & JOINABLE == 0 {
            return Err(D::Error::custom("not a JoinableQueue"));
        }
        Ok(JoinableQueue { queue })
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Queue<std::rc::Rc<u8>>>();
    is::<SimpleQueue<u8>>();
    is::<JoinableQueue<u8>>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_timeout_on_an_empty_queue_returns_timeout_within_bound() {
        let q: Queue<u8> = Queue::new().unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(50)),
            Err(GetError::Timeout)
        ));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(matches!(q.try_get(), Err(GetError::Empty)));
    }

    #[test]
    fn try_put_on_a_full_bounded_queue_hands_the_value_back() {
        let q: Queue<String> = Queue::with_maxsize(2).unwrap();
        q.put("a".into()).unwrap();
        q.try_put("b".into()).unwrap();
        assert!(q.full());
        match q.try_put("c".into()) {
            Err(PutError::Full(v)) => assert_eq!(v, "c"),
            other => panic!("{other:?}"),
        }
        match q.put_timeout("d".into(), Duration::from_millis(20)) {
            Err(e @ PutError::Timeout(_)) => assert_eq!(e.into_inner(), "d"),
            other => panic!("{other:?}"),
        }
        assert_eq!(q.get().unwrap(), "a");
        q.try_put("c".into()).unwrap();
        assert_eq!(q.qsize(), 2);
    }

    #[test]
    fn a_closed_handle_refuses_put_and_get_and_others_keep_working() {
        let q: Queue<u32> = Queue::new().unwrap();
        let other = q.clone();
        q.put(1).unwrap();
        q.close();
        assert!(matches!(q.put(2), Err(PutError::Closed(2))));
        assert!(matches!(q.get(), Err(GetError::Closed)));
        assert_eq!(
            other.get().unwrap(),
            1,
            "an item put before close is delivered"
        );
        other.put(3).unwrap();
        assert_eq!(other.get().unwrap(), 3);
        assert_eq!(other.join_thread(), Err(JoinThreadError::NotClosed));
        assert_eq!(q.join_thread(), Ok(()));
    }

    #[test]
    fn a_bounded_queue_filled_before_anyone_reads_does_not_block() {
        // More bytes than the ring holds, within maxsize: parked, as Python's feeder would.
        let q: Queue<Vec<u8>> = QueueBuilder::new()
            .maxsize(10)
            .ring_bytes(16 * 1024)
            .build()
            .unwrap();
        for i in 0..10u8 {
            q.put(vec![i; 100_000]).unwrap();
        }
        assert!(q.full());
        assert!(q.try_put(vec![]).unwrap_err().is_full());
        for i in 0..10u8 {
            assert_eq!(q.get().unwrap(), vec![i; 100_000]);
        }
        assert!(q.empty());
    }

    #[test]
    fn large_items_put_before_anyone_reads_are_parked_whole_and_delivered() {
        // Each put streams its chunks until the ring is full, gives the item up (ABORT) and
        // parks it whole; the consumer skips the abandoned chunks.
        let q: Queue<Vec<u8>> = QueueBuilder::new().ring_bytes(16 * 1024).build().unwrap();
        let t0 = Instant::now();
        for i in 0..5u8 {
            q.put(vec![i; 100_000]).unwrap();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(q.qsize(), 5);
        for i in 0..5u8 {
            assert_eq!(q.get().unwrap(), vec![i; 100_000]);
        }
        assert!(q.empty());
        // With a consumer taking the chunks, an item streams straight through.
        let q2 = q.clone();
        let reader = std::thread::spawn(move || q2.get().unwrap());
        q.put(vec![9; 100_000]).unwrap();
        assert_eq!(reader.join().unwrap(), vec![9; 100_000]);
        assert!(q.empty());
    }

    #[test]
    fn put_many_and_get_many_keep_order() {
        let q: Queue<u32> = Queue::new().unwrap();
        q.put_many(0..1000).unwrap();
        assert_eq!(q.qsize(), 1000);
        let mut got = Vec::new();
        while got.len() < 1000 {
            got.extend(q.get_many(64).unwrap());
        }
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_wrong_type_is_a_decode_error_and_the_queue_stays_usable() {
        let q: Queue<String> = Queue::new().unwrap();
        q.put("x".repeat(3)).unwrap();
        let (bytes, fds) = multiproc_core::reduction::encode(&q).unwrap();
        let same: Queue<u128> = multiproc_core::reduction::decode(&bytes, fds).unwrap();
        assert!(matches!(same.get(), Err(GetError::Decode(_)) | Ok(_)));
        q.put("y".into()).unwrap();
        assert_eq!(q.get().unwrap(), "y");
    }

    #[test]
    fn joinable_counts_tasks() {
        let q: JoinableQueue<u8> = JoinableQueue::with_maxsize(4).unwrap();
        q.put_many([1, 2, 3]).unwrap();
        assert_eq!(q.unfinished_tasks(), 3);
        assert!(q.try_put(9).is_ok());
        assert!(matches!(q.try_put(10), Err(PutError::Full(10))));
        assert_eq!(q.unfinished_tasks(), 4, "a refused put is no task");
        for _ in 0..4 {
            q.get().unwrap();
            q.task_done().unwrap();
        }
        q.join();
        assert_eq!(q.task_done(), Err(TaskDoneError));
        // A plain Queue handle is not a JoinableQueue.
        let plain: Queue<u8> = Queue::new().unwrap();
        let (bytes, fds) = multiproc_core::reduction::encode(&plain).unwrap();
        assert!(multiproc_core::reduction::decode::<JoinableQueue<u8>>(&bytes, fds).is_err());
    }
}
