//! [`Pool`]: Python's `multiprocessing.Pool`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use multiproc_core::{AnyFnRef, Context, FnRef, StartMethod};
use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{self, Config, Engine, Outcome, Sink};
use crate::error::PoolError;
use crate::progress::{MapOptions, Reporter};

/// Bounds of a task's argument and result: serde both ways, and sendable between threads.
pub trait Task: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Task for T {}

/// A pool of worker processes that run `fn(A) -> R` tasks: Python's
/// `multiprocessing.Pool`.
///
/// Tasks are functions or non-capturing closures, named to the workers by a checked
/// [`FnRef`]; arguments and results pass through shared-memory rings. A worker that dies
/// (killed, aborted, out of memory) fails only the tasks it held, with
/// [`PoolError::WorkerLost`], and is replaced: the pool goes on (Python's hangs). Workers
/// ignore SIGINT and die with the parent. Dropping the pool terminates it.
///
/// ```
/// use multiproc_pool::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
/// assert_eq!(pool.apply(square, 7)?, 49);
/// let r = pool.apply_async(square, 8)?;
/// assert_eq!(r.get()?, 64);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), multiproc_pool::PoolError>(())
/// ```
///
/// ```python
/// from multiprocessing import Pool
///
/// def square(x):
///     return x * x
///
/// with Pool(2) as pool:
///     print(pool.map(square, range(1, 6)))
/// ```
pub struct Pool {
    engine: Arc<Engine>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.engine.processes())
            .field("pids", &self.engine.pids())
            .finish()
    }
}

/// How to build a [`Pool`]: Python's `Pool(processes, initializer, initargs,
/// maxtasksperchild, context)` plus a per-task time limit.
///
/// ```
/// use std::time::Duration;
/// use multiproc_pool::Pool;
///
/// fn setup(greeting: String) {
///     assert_eq!(greeting, "hello");
/// }
///
/// let pool = Pool::builder()
///     .processes(2)
///     .initializer(setup, "hello".to_string())
///     .maxtasksperchild(100)
///     .task_timeout(Duration::from_secs(60))
///     .build()?;
/// assert_eq!(pool.processes(), 2);
/// # Ok::<(), multiproc_pool::PoolError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    initializer: Option<Result<(AnyFnRef, Vec<u8>), PoolError>>,
    max_tasks: u64,
    timeout: Option<Duration>,
}

impl PoolBuilder {
    /// The number of workers (default: [`cpu_count`](multiproc_core::cpu_count)).
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// The start method of the workers (default: the one in force).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// The start method of a context (Python's `context=`).
    pub fn context(self, ctx: Context) -> Self {
        self.start_method(ctx.start_method())
    }

    /// `f(arg)` runs once in each worker before its first task (and in each replacement). If
    /// it panics, the pool is broken: pending and later tasks fail with
    /// [`PoolError::Initializer`].
    pub fn initializer<A: Task>(mut self, f: fn(A), arg: A) -> Self {
        self.initializer = Some(FnRef::new(f).map_err(PoolError::from).and_then(|f| {
            let (bytes, fds) = multiproc_core::reduction::encode(&arg)
                .map_err(|e| PoolError::Args(e.to_string()))?;
            if !fds.is_empty() {
                return Err(PoolError::Args(
                    "the initializer's argument holds file descriptors, which cannot \
                             pass through a pool"
                        .into(),
                ));
            }
            Ok((f.erase(), bytes))
        }));
        self
    }

    /// A worker exits after this many tasks and is replaced by a fresh process (Python's
    /// `maxtasksperchild`; a chunk of a `map` counts as one task, as in Python).
    pub fn maxtasksperchild(mut self, n: u64) -> Self {
        self.max_tasks = n;
        self
    }

    /// A task that runs longer than `limit` fails with [`PoolError::TaskTimeout`]; its worker
    /// is killed and replaced (with a chunk of several tasks, the whole chunk fails).
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<Pool, PoolError> {
        Ok(Pool {
            engine: self.engine("Pool")?,
        })
    }

    pub(crate) fn engine(self, name: &'static str) -> Result<Arc<Engine>, PoolError> {
        let processes = self.processes.unwrap_or_else(multiproc_core::cpu_count);
        if processes == 0 {
            return Err(PoolError::Args(
                "the number of processes must be at least 1".into(),
            ));
        }
        let initializer = self.initializer.transpose()?;
        Engine::start(Config {
            processes,
            method: self.method,
            initializer,
            max_tasks: self.max_tasks,
            timeout: self.timeout,
            name,
        })
    }
}

impl Pool {
    /// A pool of `processes` workers, started with the start method in force.
    pub fn new(processes: usize) -> Result<Pool, PoolError> {
        Pool::builder().processes(processes).build()
    }

    /// The options of a new pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The number of workers.
    pub fn processes(&self) -> usize {
        self.engine.processes()
    }

    /// The pids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        self.engine.pids()
    }

    /// Runs `f(arg)` in a worker and waits for its result (Python's `apply`).
    pub fn apply<A: Task, R: Task>(&self, f: fn(A) -> R, arg: A) -> Result<R, PoolError> {
        self.apply_async(f, arg)?.get()
    }

    /// Submits `f(arg)` and returns at once (Python's `apply_async`).
    pub fn apply_async<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        arg: A,
    ) -> Result<AsyncResult<R>, PoolError> {
        self.apply_async_inner(f, arg, None, None)
    }

    /// [`apply_async`](Self::apply_async) with a callback for the result and one for an
    /// error: exactly one of them runs, once, in this process (on the pool's result thread),
    /// before the result is ready. They may capture; they must not wait on this pool.
    pub fn apply_async_with<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: impl FnOnce(&R) + Send + 'static,
        error_callback: impl FnOnce(&PoolError) + Send + 'static,
    ) -> Result<AsyncResult<R>, PoolError> {
        self.apply_async_inner(
            f,
            arg,
            Some(Box::new(callback)),
            Some(Box::new(error_callback)),
        )
    }

    #[allow(clippy::type_complexity)]
    fn apply_async_inner<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        arg: A,
        callback: Option<Box<dyn FnOnce(&R) + Send>>,
        error_callback: Option<Box<dyn FnOnce(&PoolError) + Send>>,
    ) -> Result<AsyncResult<R>, PoolError> {
        let f = FnRef::new(f)?;
        let id = self.engine.new_id();
        let mut rec = Engine::record(id, engine::runner::<A, R>()?, size_of::<A>() + 8);
        engine::encode_chunk(&mut rec, &f, std::slice::from_ref(&arg))?;
        let cell = Arc::new(Cell::new());
        let c = Arc::clone(&cell);
        let sink: Sink = Box::new(move |outcome| {
            let r = engine::decode_chunk::<R>(outcome, 1)
                .pop()
                .unwrap_or(Err(PoolError::Result("no result".into())));
            // A callback that panics is reported by the panic hook; the result is still set.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                match (&r, callback, error_callback) {
                    (Ok(v), Some(cb), _) => cb(v),
                    (Err(e), _, Some(ecb)) => ecb(e),
                    _ => {}
                }
            }));
            c.set(r);
        });
        self.engine.submit(id, &rec, sink)?;
        Ok(AsyncResult { cell })
    }

    /// Applies `f` to every item, in chunks of Python's default size
    /// (`ceil(len / (4 × workers))`), and returns the results in order (Python's `map`). The
    /// first failed task (in input order) is the error; the map waits for every chunk first.
    pub fn map<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, PoolError> {
        self.map_with(f, items, MapOptions::new())
    }

    /// [`map`](Self::map) with a chunk size and progress reporting.
    pub fn map_with<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        opts: MapOptions,
    ) -> Result<Vec<R>, PoolError> {
        let items = items.into_iter();
        match items.size_hint() {
            // An input of known length (a range, a Vec) is read chunk by chunk.
            (lo, Some(hi)) if lo == hi => self.map_known(f, items, lo, opts),
            _ => {
                let v: Vec<A> = items.collect();
                let n = v.len();
                self.map_known(f, v.into_iter(), n, opts)
            }
        }
    }

    /// `map_with` over `n` items.
    fn map_known<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        mut items: impl Iterator<Item = A>,
        n: usize,
        mut opts: MapOptions,
    ) -> Result<Vec<R>, PoolError> {
        let mut reporter = opts.reporter(Some(n));
        if n == 0 {
            return Ok(Vec::new());
        }
        let cs = opts
            .chunksize
            .unwrap_or_else(|| n.div_ceil(4 * self.processes()))
            .max(1);
        let f = FnRef::new(f)?;
        let runner = engine::runner::<A, R>()?;
        let (tx, rx) = unbounded::<(usize, Outcome)>();
        let mut lens: Vec<usize> = Vec::with_capacity(n.div_ceil(cs));
        // Large chunks go one by one from one reused buffer (workers start on the first while
        // the next is encoded); small ones in batches under one hold of the ring.
        let batch = if cs >= 256 { 1 } else { 256 };
        let mut chunk: Vec<A> = Vec::with_capacity(cs.min(n));
        let mut records = Vec::new();
        SCRATCH.with(|scratch| -> Result<(), PoolError> {
            let mut scratch = scratch.borrow_mut();
            loop {
                chunk.clear();
                chunk.extend(items.by_ref().take(cs));
                if chunk.is_empty() {
                    break;
                }
                let idx = lens.len();
                lens.push(chunk.len());
                let id = self.engine.new_id();
                let tx = tx.clone();
                let sink: Sink = Box::new(move |o| {
                    let _ = tx.send((idx, o));
                });
                if batch == 1 {
                    scratch.clear();
                    Engine::start_record(&mut scratch, id, runner);
                    engine::encode_chunk(&mut scratch, &f, &chunk)?;
                    self.engine.submit(id, &scratch, sink)?;
                } else {
                    let mut rec = Engine::record(id, runner, room::<A>(chunk.len()));
                    engine::encode_chunk(&mut rec, &f, &chunk)?;
                    records.push((id, rec, sink));
                    if records.len() == batch {
                        self.engine.submit_many(std::mem::take(&mut records))?;
                    }
                }
            }
            if !records.is_empty() {
                self.engine.submit_many(records)?;
            }
            Ok(())
        })?;
        drop(tx);
        // Chunks are decoded in order straight into the output; one that comes early waits
        // (undecoded) for its turn.
        let mut out: Vec<R> = Vec::with_capacity(n);
        let mut early: BTreeMap<usize, Outcome> = BTreeMap::new();
        let mut next = 0;
        // The first failure in input order: (chunk, its error).
        let mut first_err: Option<(usize, PoolError)> = None;
        for _ in 0..lens.len() {
            let (idx, outcome) = rx.recv().map_err(|_| PoolError::Terminated)?;
            reporter.advance(lens[idx]);
            early.insert(idx, outcome);
            while let Some(outcome) = early.remove(&next) {
                if let Err(e) = engine::decode_append(outcome, lens[next], &mut out)
                    && first_err.is_none()
                {
                    first_err = Some((next, e));
                }
                next += 1;
            }
        }
        reporter.finish();
        match first_err {
            Some((_, e)) => Err(e),
            None => Ok(out),
        }
    }

    /// Python's `starmap`: `f` takes the tuple of arguments as one value (`fn((a, b)) -> r`,
    /// a closure `|(a, b): (u32, u32)| a + b`), so this is [`map`](Self::map) by another name.
    pub fn starmap<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, PoolError> {
        self.map(f, items)
    }

    /// [`map`](Self::map) without waiting: the result is ready when every chunk is done
    /// (Python's `map_async`; `chunksize` `None` for the default).
    pub fn map_async<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: Option<usize>,
    ) -> Result<AsyncResult<Vec<R>>, PoolError> {
        let items: Vec<A> = items.into_iter().collect();
        let n = items.len();
        let cell = Arc::new(Cell::new());
        if n == 0 {
            cell.set(Ok(Vec::new()));
            return Ok(AsyncResult { cell });
        }
        let cs = chunksize
            .unwrap_or_else(|| n.div_ceil(4 * self.processes()))
            .max(1);
        let f = FnRef::new(f)?;
        let runner = engine::runner::<A, R>()?;
        let chunks: Vec<&[A]> = items.chunks(cs).collect();
        let gather = Arc::new(Mutex::new(Gather::<R> {
            parts: (0..chunks.len()).map(|_| None).collect(),
            left: chunks.len(),
        }));
        let mut records = Vec::with_capacity(chunks.len());
        for (idx, chunk) in chunks.iter().enumerate() {
            let id = self.engine.new_id();
            let mut rec = Engine::record(id, runner, room::<A>(chunk.len()));
            engine::encode_chunk(&mut rec, &f, chunk)?;
            let (g, c, len) = (Arc::clone(&gather), Arc::clone(&cell), chunk.len());
            let sink: Sink = Box::new(move |o| {
                let got = engine::decode_chunk::<R>(o, len);
                let mut g = g.lock();
                g.parts[idx] = Some(got);
                g.left -= 1;
                if g.left == 0 {
                    let parts = std::mem::take(&mut g.parts);
                    drop(g);
                    let r: Result<Vec<R>, PoolError> = parts
                        .into_iter()
                        .flat_map(|p| p.unwrap_or_default())
                        .collect();
                    c.set(r);
                }
            });
            records.push((id, rec, sink));
        }
        self.engine.submit_many(records)?;
        Ok(AsyncResult { cell })
    }

    /// Results of `f` over `items` in input order, lazily (Python's `imap`, chunk size 1):
    /// the input is read only as results are taken (at most 16 chunks per worker ahead), so an
    /// endless iterator works.
    pub fn imap<A: Task, R: Task, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'_, A, R, I::IntoIter> {
        self.imap_with(f, items, MapOptions::new())
    }

    /// [`imap`](Self::imap) with a chunk size and progress reporting.
    pub fn imap_with<A: Task, R: Task, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
        opts: MapOptions,
    ) -> Imap<'_, A, R, I::IntoIter> {
        Imap::new(self, f, items.into_iter(), opts, true)
    }

    /// Like [`imap`](Self::imap), but results come as they finish (Python's
    /// `imap_unordered`).
    pub fn imap_unordered<A: Task, R: Task, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> Imap<'_, A, R, I::IntoIter> {
        self.imap_unordered_with(f, items, MapOptions::new())
    }

    /// [`imap_unordered`](Self::imap_unordered) with a chunk size and progress reporting.
    pub fn imap_unordered_with<A: Task, R: Task, I: IntoIterator<Item = A>>(
        &self,
        f: fn(A) -> R,
        items: I,
        opts: MapOptions,
    ) -> Imap<'_, A, R, I::IntoIter> {
        Imap::new(self, f, items.into_iter(), opts, false)
    }

    /// Takes no more tasks; the workers exit once the pending ones are done (Python's
    /// `close`).
    pub fn close(&self) {
        self.engine.close();
    }

    /// Kills the workers at once; pending tasks fail with [`PoolError::Terminated`] (Python's
    /// `terminate`, whose pending results never come).
    pub fn terminate(&self) {
        self.engine.terminate();
    }

    /// Waits for the workers to exit, after [`close`](Self::close) or
    /// [`terminate`](Self::terminate); [`PoolError::NotClosed`] on a running pool (Python's
    /// `join`).
    pub fn join(&self) -> Result<(), PoolError> {
        self.engine.join()
    }
}

impl Drop for Pool {
    /// Terminates the pool (Python's `with Pool() as p:` exit): no worker or zombie is left.
    fn drop(&mut self) {
        self.engine.terminate();
    }
}

/// Chunks per worker an `imap` keeps in flight (submitted, or done and waiting for their turn).
const IMAP_AHEAD: usize = 16;

thread_local! {
    /// The buffer a thread encodes large chunks into (kept: fresh memory costs page faults).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Bytes to reserve for the encoded arguments of a chunk of `n` (a guess: most values encode
/// in about their size).
fn room<A>(n: usize) -> usize {
    n * (size_of::<A>() + 2)
}

struct Gather<R> {
    parts: Vec<Option<Vec<Result<R, PoolError>>>>,
    left: usize,
}

// ---------------------------------------------------------------------- AsyncResult

/// Whether `ready()` comes true within a brief spin, then a few yields: a result usually comes
/// within microseconds, and a waiter that sleeps costs a futex wake-up on the result thread
/// and on its own.
pub(crate) fn spin_briefly(ready: impl Fn() -> bool) -> bool {
    for i in 0..200 {
        if ready() {
            return true;
        }
        if i < 100 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    ready()
}

/// The shared state behind an [`AsyncResult`].
pub(crate) struct Cell<R> {
    value: Mutex<Option<Result<R, PoolError>>>,
    ready: AtomicBool,
    cv: Condvar,
}

impl<R> Cell<R> {
    pub(crate) fn new() -> Cell<R> {
        Cell {
            value: Mutex::new(None),
            ready: AtomicBool::new(false),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn set(&self, r: Result<R, PoolError>) {
        let mut v = self.value.lock();
        if self.ready.load(Acquire) {
            return;
        }
        *v = Some(r);
        self.ready.store(true, Release);
        self.cv.notify_all();
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Acquire)
    }

    /// Waits until ready or `until`; spins and yields briefly first (a result usually comes
    /// within microseconds).
    pub(crate) fn wait_until(&self, until: Option<Instant>) -> bool {
        if spin_briefly(|| self.is_ready()) {
            return true;
        }
        let mut v = self.value.lock();
        while !self.is_ready() {
            match until {
                None => self.cv.wait(&mut v),
                Some(t) => {
                    if self.cv.wait_until(&mut v, t).timed_out() {
                        return self.is_ready();
                    }
                }
            }
        }
        true
    }

    pub(crate) fn take(&self) -> Result<R, PoolError> {
        let mut v = self.value.lock();
        match v.take() {
            Some(r) => r,
            None => Err(PoolError::ResultTaken),
        }
    }

    /// `Some(true)` if ready and a success.
    pub(crate) fn successful(&self) -> Option<bool> {
        if !self.is_ready() {
            return None;
        }
        let v = self.value.lock();
        match &*v {
            Some(r) => Some(r.is_ok()),
            None => Some(true),
        }
    }
}

/// The result of [`Pool::apply_async`] or [`Pool::map_async`]: Python's `AsyncResult`.
pub struct AsyncResult<R> {
    cell: Arc<Cell<R>>,
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    /// Waits for the result and returns it.
    pub fn get(self) -> Result<R, PoolError> {
        self.cell.wait_until(None);
        self.cell.take()
    }

    /// Waits at most `timeout`: [`PoolError::WaitTimeout`] if the result is not there yet
    /// (it can be asked for again), else the result, which is then taken (a later call
    /// returns [`PoolError::ResultTaken`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, PoolError> {
        if !self.cell.wait_until(Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout);
        }
        self.cell.take()
    }

    /// Waits until the result is there.
    pub fn wait(&self) {
        self.cell.wait_until(None);
    }

    /// Waits at most `timeout`; whether the result is there.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.cell.wait_until(Some(Instant::now() + timeout))
    }

    /// Whether the task is done.
    pub fn ready(&self) -> bool {
        self.cell.is_ready()
    }

    /// Whether the task succeeded; `None` while it is not done (Python raises `ValueError`).
    pub fn successful(&self) -> Option<bool> {
        self.cell.successful()
    }
}

// ---------------------------------------------------------------------- imap

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: each item is one task's
/// result. Dropping it early leaves the tasks in flight to finish in the workers.
pub struct Imap<'p, A, R, I> {
    pool: &'p Pool,
    f: Option<FnRef<A, R>>,
    runner: Result<AnyFnRef, PoolError>,
    input: I,
    chunksize: usize,
    window: usize,
    ordered: bool,
    tx: Sender<(u64, Outcome)>,
    rx: Receiver<(u64, Outcome)>,
    /// Chunk index → its length, for chunks sent and not yet received.
    sizes: BTreeMap<u64, usize>,
    /// Chunks received out of order (ordered mode).
    early: BTreeMap<u64, Vec<Result<R, PoolError>>>,
    ready: VecDeque<Result<R, PoolError>>,
    next_index: u64,
    next_out: u64,
    exhausted: bool,
    reporter: Reporter,
    fn_error: Option<PoolError>,
}

impl<A, R, I> fmt::Debug for Imap<'_, A, R, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.ordered)
            .field("chunksize", &self.chunksize)
            .field("in_flight", &self.sizes.len())
            .finish()
    }
}

impl<'p, A: Task, R: Task, I: Iterator<Item = A>> Imap<'p, A, R, I> {
    fn new(pool: &'p Pool, f: fn(A) -> R, input: I, mut opts: MapOptions, ordered: bool) -> Self {
        let (tx, rx) = unbounded();
        let total = match input.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let (f, fn_error) = match FnRef::new(f) {
            Ok(f) => (Some(f), None),
            Err(e) => (None, Some(PoolError::from(e))),
        };
        Imap {
            pool,
            f,
            runner: engine::runner::<A, R>(),
            input,
            chunksize: opts.chunksize.unwrap_or(1),
            window: IMAP_AHEAD * pool.processes().max(2),
            ordered,
            tx,
            rx,
            sizes: BTreeMap::new(),
            early: BTreeMap::new(),
            ready: VecDeque::new(),
            next_index: 0,
            next_out: 0,
            exhausted: false,
            reporter: opts.reporter(total),
            fn_error,
        }
    }

    /// Sends chunks until `window` are in flight (or buffered) or the input ends.
    fn top_up(&mut self) -> Result<(), PoolError> {
        let runner = self.runner.clone()?;
        let Some(f) = self.f else {
            self.exhausted = true;
            return Ok(());
        };
        let first = self.next_index;
        let mut batch = Vec::new();
        let mut built = Ok(());
        // `sizes` counts the chunks in flight, these new ones included.
        while !self.exhausted && self.sizes.len() + self.early.len() < self.window {
            let chunk: Vec<A> = self.input.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                self.exhausted = true;
                break;
            }
            let idx = self.next_index;
            self.next_index += 1;
            self.sizes.insert(idx, chunk.len());
            let id = self.pool.engine.new_id();
            let mut rec = Engine::record(id, runner, room::<A>(chunk.len()));
            if let Err(e) = engine::encode_chunk(&mut rec, &f, &chunk) {
                built = Err(e);
                break;
            }
            let tx = self.tx.clone();
            let sink: Sink = Box::new(move |o| {
                let _ = tx.send((idx, o));
            });
            batch.push((id, rec, sink));
        }
        let sent = match built {
            Ok(()) if batch.is_empty() => return Ok(()),
            Ok(()) => self.pool.engine.submit_many(batch),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            // None of these chunks is in flight: forget them, so no `next` waits for them.
            for idx in first..self.next_index {
                self.sizes.remove(&idx);
            }
            self.exhausted = true;
            return Err(e);
        }
        Ok(())
    }
}

impl<A: Task, R: Task, I: Iterator<Item = A>> Iterator for Imap<'_, A, R, I> {
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.fn_error.take() {
            self.exhausted = true;
            return Some(Err(e));
        }
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            if let Err(e) = self.top_up() {
                return Some(Err(e));
            }
            if self.sizes.is_empty() {
                self.reporter.finish();
                return None;
            }
            let (idx, outcome) = match self.rx.recv() {
                Ok(x) => x,
                Err(_) => return Some(Err(PoolError::Terminated)),
            };
            let n = self.sizes.remove(&idx).unwrap_or(1);
            let got = engine::decode_chunk::<R>(outcome, n);
            self.reporter.advance(got.len());
            if self.ordered {
                self.early.insert(idx, got);
                while let Some(part) = self.early.remove(&self.next_out) {
                    self.next_out += 1;
                    self.ready.extend(part);
                }
            } else {
                self.ready.extend(got);
            }
        }
    }
}
