//! [`ProcessPoolExecutor`]: Python's `concurrent.futures.ProcessPoolExecutor`, with its
//! [`Future`], [`wait`] and [`as_completed`], on the engine of [`Pool`](crate::Pool).
//!
//! [`submit`](ProcessPoolExecutor::submit) hands `f(arg)` to a worker and returns a
//! [`Future`] at once; [`as_completed`] yields futures as they finish, [`wait`] waits for the
//! first, the first failure or all of them, and [`map`](ProcessPoolExecutor::map) submits a
//! whole input and gives its results back in order.
//!
//! ```
//! use std::time::Duration;
//! use multiproc_pool::{ProcessPoolExecutor, PoolError, WaitMode, as_completed, wait};
//!
//! fn square(n: u64) -> u64 {
//!     n * n
//! }
//!
//! let executor = ProcessPoolExecutor::new(2)?;
//! let futures = (0..5)
//!     .map(|n| executor.submit(square, n))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut squares = Vec::new();
//! for future in as_completed(futures, Some(Duration::from_secs(60))) {
//!     squares.push(future?.result()?);
//! }
//! squares.sort();
//! assert_eq!(squares, [0, 1, 4, 9, 16]);
//!
//! let first = executor.submit(square, 6)?;
//! let done = wait([&first], WaitMode::AllCompleted, None);
//! assert_eq!(done.done.len(), 1);
//! assert_eq!(first.result()?, 36);
//!
//! let in_order: Vec<u64> = executor.map(square, 1..=4, 2)?.collect::<Result<_, _>>()?;
//! assert_eq!(in_order, [1, 4, 9, 16]);
//! executor.shutdown(true, false);
//! # Ok::<(), PoolError>(())
//! ```
//!
//! ```python
//! from concurrent.futures import ProcessPoolExecutor, as_completed, wait, ALL_COMPLETED
//!
//! def square(n):
//!     return n * n
//!
//! if __name__ == "__main__":
//!     with ProcessPoolExecutor(max_workers=2) as executor:
//!         futures = [executor.submit(square, n) for n in range(5)]
//!         print(sorted(f.result() for f in as_completed(futures, timeout=60)))
//!         first = executor.submit(square, 6)
//!         done, not_done = wait([first], return_when=ALL_COMPLETED)
//!         print(first.result())
//!         print(list(executor.map(square, range(1, 5), chunksize=2)))
//! ```
//!
//! **Where it differs from Python** (`docs/decisions.md`, "ProcessPoolExecutor (issue 8)"):
//! - A worker that dies (killed, aborted, out of memory) fails only the future it was running,
//!   with [`PoolError::WorkerLost`] (Python's `BrokenProcessPool`), and is replaced. The other
//!   pending futures run normally and later [`submit`](ProcessPoolExecutor::submit)s work;
//!   Python fails every pending future and refuses all later work.
//! - [`max_tasks_per_child`](ProcessPoolExecutorBuilder::max_tasks_per_child) works under all
//!   three start methods (CPython refuses it under fork).
//! - [`Future::cancel`] is exact like Python's (a cancelled call never runs), and also
//!   succeeds for a call already handed to the workers' ring as long as no worker has started
//!   it (Python's fails once a call is in its call queue).
//! - Workers are started with the executor, not on demand.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use multiproc_core::{Context, FnRef, StartMethod};
use parking_lot::{Condvar, Mutex};

use crate::engine::{self, Engine, Sink};
use crate::error::PoolError;
use crate::pool::{PoolBuilder, Task};

/// The name of the executor's workers and threads.
const NAME: &str = "Executor";

// ---------------------------------------------------------------------- the executor

/// A pool of worker processes that runs calls of `fn(A) -> R` and hands back a [`Future`] for
/// each: Python's `concurrent.futures.ProcessPoolExecutor`.
///
/// It shares its engine with [`Pool`](crate::Pool): calls and results pass through shared
/// rings, a worker that dies fails only the call it was running ([`PoolError::WorkerLost`])
/// and is replaced, so the executor goes on working (Python's breaks for good). Dropping the
/// executor is [`shutdown(true, false)`](Self::shutdown), Python's `with` block: it waits for
/// the pending calls, then stops the workers, and leaves no process behind.
///
/// ```
/// use multiproc_pool::{ProcessPoolExecutor, PoolError};
///
/// fn shout(s: String) -> String {
///     s.to_uppercase()
/// }
///
/// let executor = ProcessPoolExecutor::new(2)?;
/// let future = executor.submit(shout, "hello".to_string())?;
/// assert_eq!(future.result()?, "HELLO");
/// # Ok::<(), PoolError>(())
/// ```
///
/// ```python
/// from concurrent.futures import ProcessPoolExecutor
///
/// with ProcessPoolExecutor(max_workers=2) as executor:
///     print(executor.submit(str.upper, "hello").result())
/// ```
pub struct ProcessPoolExecutor {
    engine: Arc<Engine>,
    registry: Arc<Registry>,
}

impl fmt::Debug for ProcessPoolExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPoolExecutor")
            .field("max_workers", &self.engine.processes())
            .field("pids", &self.engine.pids())
            .field("running", &self.engine.is_running_phase())
            .finish()
    }
}

/// How to build a [`ProcessPoolExecutor`]: Python's `ProcessPoolExecutor(max_workers,
/// mp_context, initializer, initargs, max_tasks_per_child)`, plus a per-call time limit.
///
/// ```
/// use multiproc_pool::{PoolError, ProcessPoolExecutor};
/// use multiproc_core::StartMethod;
///
/// fn setup(level: u32) {
///     assert_eq!(level, 3);
/// }
/// fn pid(_: ()) -> u32 {
///     std::process::id()
/// }
///
/// let executor = ProcessPoolExecutor::builder()
///     .max_workers(2)
///     .start_method(StartMethod::Spawn)
///     .initializer(setup, 3)
///     .max_tasks_per_child(1)
///     .build()?;
/// let a = executor.submit(pid, ())?.result()?;
/// let b = executor.submit(pid, ())?.result()?;
/// assert_ne!(a, b); // each worker ran one call, then a fresh one took its place
/// # Ok::<(), PoolError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProcessPoolExecutorBuilder {
    pool: PoolBuilder,
    max_tasks: Option<u64>,
}

impl ProcessPoolExecutorBuilder {
    /// The number of workers (default: [`cpu_count`](multiproc_core::cpu_count)); 0 is refused
    /// by [`build`](Self::build) (Python: `ValueError`).
    pub fn max_workers(mut self, n: usize) -> Self {
        self.pool = self.pool.processes(n);
        self
    }

    /// The start method of the workers (default: the one in force).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.pool = self.pool.start_method(method);
        self
    }

    /// The start method of a context (Python's `mp_context=`).
    pub fn context(mut self, ctx: Context) -> Self {
        self.pool = self.pool.context(ctx);
        self
    }

    /// `f(arg)` runs once in each worker before its first call (and in each replacement). If
    /// it panics, the executor is broken: pending and later calls fail with
    /// [`PoolError::Initializer`] (Python's `BrokenProcessPool`).
    pub fn initializer<A: Task>(mut self, f: fn(A), arg: A) -> Self {
        self.pool = self.pool.initializer(f, arg);
        self
    }

    /// A worker exits after `n` calls and a fresh process takes its place (Python's
    /// `max_tasks_per_child`; a chunk of a [`map`](ProcessPoolExecutor::map) counts as one
    /// call). Unlike CPython, allowed under every start method, fork included. `n` must be at
    /// least 1 ([`build`](Self::build) refuses 0, as Python does).
    pub fn max_tasks_per_child(mut self, n: u64) -> Self {
        self.max_tasks = Some(n);
        self
    }

    /// A call that runs longer than `limit` fails with [`PoolError::TaskTimeout`]; its worker
    /// is killed and replaced (not in Python).
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.pool = self.pool.task_timeout(limit);
        self
    }

    /// Starts the workers.
    pub fn build(self) -> Result<ProcessPoolExecutor, PoolError> {
        let mut pool = self.pool;
        if let Some(n) = self.max_tasks {
            if n == 0 {
                return Err(PoolError::Args(
                    "max_tasks_per_child must be at least 1".into(),
                ));
            }
            pool = pool.maxtasksperchild(n);
        }
        Ok(ProcessPoolExecutor {
            engine: pool.engine(NAME)?,
            registry: Arc::new(Registry::default()),
        })
    }
}

impl ProcessPoolExecutor {
    /// An executor with `max_workers` workers, started with the start method in force.
    pub fn new(max_workers: usize) -> Result<ProcessPoolExecutor, PoolError> {
        ProcessPoolExecutor::builder()
            .max_workers(max_workers)
            .build()
    }

    /// The options of a new executor.
    pub fn builder() -> ProcessPoolExecutorBuilder {
        ProcessPoolExecutorBuilder::default()
    }

    /// The number of workers.
    pub fn max_workers(&self) -> usize {
        self.engine.processes()
    }

    /// The pids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        self.engine.pids()
    }

    /// Schedules `f(arg)` in a worker and returns its [`Future`] at once (Python's `submit`).
    ///
    /// Errors: [`PoolError::Closed`] after [`shutdown`](Self::shutdown) (Python:
    /// `RuntimeError`), [`PoolError::Initializer`] if the initializer failed,
    /// [`PoolError::Args`] if `arg` cannot be encoded (a handle that owns a file descriptor
    /// cannot pass through the executor), [`PoolError::Function`] if `f` cannot be named in a
    /// worker.
    pub fn submit<A: Task, R: Task>(&self, f: fn(A) -> R, arg: A) -> Result<Future<R>, PoolError> {
        let f = FnRef::new(f)?;
        let id = self.engine.new_id();
        let mut rec = Engine::record(id, engine::runner::<A, R>()?, size_of::<A>() + 8);
        engine::encode_chunk(&mut rec, &f, std::slice::from_ref(&arg))?;
        let shared = self.shared::<R>(id);
        let s = Arc::clone(&shared);
        let sink: Sink = Box::new(move |outcome| {
            let r = engine::decode_chunk::<R>(outcome, 1)
                .pop()
                .unwrap_or_else(|| Err(PoolError::Result("no result".into())));
            s.finish(r);
        });
        self.track(&shared);
        if let Err(e) = self.engine.submit(id, &rec, sink) {
            self.registry.live.lock().remove(&id);
            self.engine.untrack(id);
            return Err(e);
        }
        Ok(Future { shared })
    }

    /// Applies `f` to every item and returns the results in input order (Python's
    /// `executor.map(f, items, chunksize=chunksize)`).
    ///
    /// Everything is submitted at once, `chunksize` items to a call (Python's default is 1;
    /// larger chunks cost fewer round trips for small calls); the iterator then waits for
    /// each result in turn. Each item is its own `Result`: a failed call does not end the
    /// iteration (in Python the first exception does). A chunk whose worker died fails all of
    /// its items with [`PoolError::WorkerLost`]. Dropping the iterator early cancels the
    /// chunks still queued. `chunksize` 0 is [`PoolError::Args`] (Python: `ValueError`).
    pub fn map<A: Task, R: Task>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<MapResults<R>, PoolError> {
        if chunksize == 0 {
            return Err(PoolError::Args("chunksize must be at least 1".into()));
        }
        let started = Instant::now();
        let items: Vec<A> = items.into_iter().collect();
        let f = FnRef::new(f)?;
        let runner = engine::runner::<A, R>()?;
        let mut batch = Vec::new();
        let mut chunks = VecDeque::new();
        for chunk in items.chunks(chunksize) {
            let id = self.engine.new_id();
            let mut rec = Engine::record(id, runner, chunk.len() * (size_of::<A>() + 2));
            engine::encode_chunk(&mut rec, &f, chunk)?;
            let shared = self.shared::<Vec<Result<R, PoolError>>>(id);
            let (s, n) = (Arc::clone(&shared), chunk.len());
            let sink: Sink = Box::new(move |outcome| {
                s.finish(Ok(engine::decode_chunk::<R>(outcome, n)));
            });
            batch.push((id, rec, sink));
            chunks.push_back(Future { shared });
        }
        for c in &chunks {
            self.track(&c.shared);
        }
        if let Err(e) = self.engine.submit_many(batch) {
            let mut live = self.registry.live.lock();
            for c in &chunks {
                live.remove(&c.shared.id);
                self.engine.untrack(c.shared.id);
            }
            return Err(e);
        }
        Ok(MapResults {
            chunks,
            current: VecDeque::new(),
            started,
            deadline: None,
            ended: false,
        })
    }

    /// Takes no more calls; with `cancel_futures`, cancels every call not yet running; with
    /// `wait`, waits for the rest to finish and stops the workers (Python's
    /// `shutdown(wait, cancel_futures=...)`).
    ///
    /// Without `wait` it returns at once: the pending calls still run and their futures
    /// complete, and the workers are stopped when the executor is dropped (or at a later
    /// `shutdown(true, ..)`). A later [`submit`](Self::submit) is [`PoolError::Closed`].
    /// Calling it from a done callback with `wait` deadlocks (the callbacks run on the thread
    /// that completes futures).
    pub fn shutdown(&self, wait: bool, cancel_futures: bool) {
        self.engine.close();
        if cancel_futures {
            for t in self.registry.snapshot() {
                t.cancel();
            }
        }
        if !wait {
            return;
        }
        // Workers skip the records of cancelled calls.
        let _ = self.engine.join();
    }

    /// Kills every worker at once (SIGKILL) and shuts down: pending futures fail with
    /// [`PoolError::Terminated`] and later submits with [`PoolError::Closed`] (Python 3.14's
    /// `kill_workers`).
    pub fn kill_workers(&self) {
        self.engine.close();
        self.engine.terminate();
    }

    /// A new future for chunk `id`.
    fn shared<T: Send + 'static>(&self, id: u64) -> Arc<Shared<T>> {
        Arc::new(Shared {
            id,
            engine: Arc::downgrade(&self.engine),
            registry: Arc::downgrade(&self.registry),
            state: Mutex::new(State {
                status: Status::Pending,
                callbacks: Vec::new(),
                waiters: Vec::new(),
            }),
            value: Mutex::new(None),
            cv: Condvar::new(),
            settled: AtomicBool::new(false),
        })
    }

    /// Registers a call for `shutdown` and makes it cancellable (before it is submitted).
    fn track<T: Send + 'static>(&self, shared: &Arc<Shared<T>>) {
        self.engine.track(shared.id);
        let weak: Weak<dyn Track> = Arc::downgrade(shared) as Weak<dyn Track>;
        self.registry.live.lock().insert(shared.id, weak);
    }
}

impl Drop for ProcessPoolExecutor {
    /// [`shutdown(true, false)`](Self::shutdown), as Python's `with` block ends: waits for the
    /// pending calls, stops the workers, reaps them.
    fn drop(&mut self) {
        self.shutdown(true, false);
        self.engine.terminate();
    }
}

/// The futures an executor has not seen finish (for `shutdown`).
#[derive(Default)]
struct Registry {
    live: Mutex<HashMap<u64, Weak<dyn Track>>>,
}

impl Registry {
    fn snapshot(&self) -> Vec<Arc<dyn Track>> {
        self.live
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }
}

/// What `shutdown` does to a future of any result type.
trait Track: Send + Sync {
    fn cancel(&self) -> bool;
}

// ---------------------------------------------------------------------- Future

/// The result of one call submitted to a [`ProcessPoolExecutor`]: Python's
/// `concurrent.futures.Future`.
///
/// [`result`](Self::result) waits for it; [`done`](Self::done), [`running`](Self::running)
/// and [`cancelled`](Self::cancelled) tell where it is; [`cancel`](Self::cancel) takes it
/// back while it is queued; [`add_done_callback`](Self::add_done_callback) runs a function
/// when it finishes. [`wait`] and [`as_completed`] watch many at once.
///
/// ```
/// use multiproc_pool::{ProcessPoolExecutor, PoolError};
///
/// fn fails(n: u32) -> u32 {
///     if n == 0 { panic!("zero") } else { n }
/// }
///
/// let executor = ProcessPoolExecutor::new(1)?;
/// let future = executor.submit(fails, 0)?;
/// match future.exception() {
///     Some(PoolError::Panicked(p)) => assert_eq!(p.message(), "zero"),
///     other => panic!("{other:?}"),
/// }
/// assert!(future.done() && !future.cancelled());
/// # Ok::<(), PoolError>(())
/// ```
pub struct Future<T> {
    shared: Arc<Shared<T>>,
}

impl<T> fmt::Debug for Future<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.shared.state.lock().status {
            Status::Pending => "pending",
            Status::Finished { error: None } => "finished",
            Status::Finished { error: Some(_) } => "failed",
            Status::Cancelled => "cancelled",
        };
        f.debug_struct("Future")
            .field("id", &self.shared.id)
            .field("status", &status)
            .finish()
    }
}

/// A done callback: the result, or why there is none.
type Callback<T> = Box<dyn FnOnce(Result<&T, &PoolError>) + Send>;

/// Where a future is.
#[derive(Clone)]
enum Status {
    Pending,
    /// Done; the error, if it failed.
    Finished {
        error: Option<PoolError>,
    },
    Cancelled,
}

struct State<T> {
    status: Status,
    callbacks: Vec<Callback<T>>,
    /// `wait` and `as_completed` calls watching this future: the index it has there.
    waiters: Vec<(Arc<sealed::Waiter>, usize)>,
}

/// The state a [`Future`] shares with the sink that completes it.
struct Shared<T> {
    id: u64,
    engine: Weak<Engine>,
    registry: Weak<Registry>,
    state: Mutex<State<T>>,
    /// The result: taken by `result`. Locked after `state` when both are held.
    value: Mutex<Option<Result<T, PoolError>>>,
    /// Notified (under `state`) when the status leaves `Pending`.
    cv: Condvar,
    /// Set (under `state`) when the status leaves `Pending`: what waiters spin on briefly.
    settled: AtomicBool,
}

impl<T: Send + 'static> Shared<T> {
    /// Completes the future (on the engine's result thread): stores the result, wakes the
    /// waiters, runs the callbacks.
    fn finish(&self, r: Result<T, PoolError>) {
        let error = r.as_ref().err().cloned();
        {
            let st = self.state.lock();
            if !matches!(st.status, Status::Pending) {
                return;
            }
            *self.value.lock() = Some(r);
        }
        self.complete(Status::Finished { error });
    }

    /// Moves from `Pending` to `status` (the value is stored already), then notifies.
    fn complete(&self, status: Status) {
        let (callbacks, waiters) = {
            let mut st = self.state.lock();
            st.status = status;
            self.settled.store(true, Release);
            self.cv.notify_all();
            (
                std::mem::take(&mut st.callbacks),
                std::mem::take(&mut st.waiters),
            )
        };
        if let Some(reg) = self.registry.upgrade() {
            reg.live.lock().remove(&self.id);
        }
        for (w, i) in waiters {
            w.fire(i);
        }
        for cb in callbacks {
            self.call(cb);
        }
    }

    /// Runs one callback on the result (a panic in it is caught: the default hook has printed
    /// it, as Python logs an exception raised by a callback).
    fn call(&self, cb: Callback<T>) {
        let value = self.value.lock();
        let taken = PoolError::ResultTaken;
        let arg = match &*value {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(e),
            None => Err(&taken),
        };
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| cb(arg)));
    }

    fn wait_until(&self, until: Option<Instant>) -> bool {
        if crate::pool::spin_briefly(|| self.settled.load(Acquire)) {
            return true;
        }
        let mut st = self.state.lock();
        while matches!(st.status, Status::Pending) {
            match until {
                None => self.cv.wait(&mut st),
                Some(t) => {
                    if self.cv.wait_until(&mut st, t).timed_out() {
                        return !matches!(st.status, Status::Pending);
                    }
                }
            }
        }
        true
    }

    /// The result, once done: a success is handed out once, an error every time.
    fn take(&self) -> Result<T, PoolError> {
        let mut v = self.value.lock();
        match &*v {
            Some(Err(e)) => Err(e.clone()),
            Some(Ok(_)) => v.take().expect("checked above"),
            None => Err(PoolError::ResultTaken),
        }
    }

    fn error(&self) -> Option<PoolError> {
        match &self.state.lock().status {
            Status::Finished { error } => error.clone(),
            Status::Cancelled => Some(PoolError::Cancelled),
            Status::Pending => None,
        }
    }

    fn cancel_call(&self) -> bool {
        {
            let st = self.state.lock();
            match st.status {
                Status::Cancelled => return true,
                Status::Finished { .. } => return false,
                Status::Pending => {}
            }
            let Some(engine) = self.engine.upgrade() else {
                return false;
            };
            // Only a call no worker has started: the worker that reaches its record skips it.
            if !engine.cancel(self.id) {
                return false;
            }
            *self.value.lock() = Some(Err(PoolError::Cancelled));
        }
        self.complete(Status::Cancelled);
        true
    }
}

impl<T: Send + 'static> Track for Shared<T> {
    fn cancel(&self) -> bool {
        self.cancel_call()
    }
}

impl<T: Send + 'static> Future<T> {
    /// Waits for the call to finish and returns its result (Python's `result()`): the call's
    /// value, or its error ([`PoolError::Panicked`] with the panic's message,
    /// [`PoolError::WorkerLost`], [`PoolError::Cancelled`], …).
    pub fn result(self) -> Result<T, PoolError> {
        self.shared.wait_until(None);
        self.shared.take()
    }

    /// Waits at most `timeout` (Python's `result(timeout)`): [`PoolError::WaitTimeout`] if the
    /// call is not done yet (ask again later; the call goes on), else its result. A value is
    /// handed out once (a later call returns [`PoolError::ResultTaken`]); an error every time.
    pub fn result_timeout(&self, timeout: Duration) -> Result<T, PoolError> {
        if !self.shared.wait_until(Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout);
        }
        self.shared.take()
    }

    /// Waits for the call to finish; its error, or `None` if it succeeded (Python's
    /// `exception()`; a cancelled future gives [`PoolError::Cancelled`], which Python raises).
    pub fn exception(&self) -> Option<PoolError> {
        self.shared.wait_until(None);
        self.shared.error()
    }

    /// [`exception`](Self::exception) waiting at most `timeout`: [`PoolError::WaitTimeout`] if
    /// the call is not done yet.
    pub fn exception_timeout(&self, timeout: Duration) -> Result<Option<PoolError>, PoolError> {
        if !self.shared.wait_until(Some(Instant::now() + timeout)) {
            return Err(PoolError::WaitTimeout);
        }
        Ok(self.shared.error())
    }

    /// Whether the call finished or was cancelled (Python's `done()`).
    pub fn done(&self) -> bool {
        !matches!(self.shared.state.lock().status, Status::Pending)
    }

    /// Whether a worker is running the call now (Python's `running()`).
    pub fn running(&self) -> bool {
        if self.done() {
            return false;
        }
        self.shared
            .engine
            .upgrade()
            .is_some_and(|e| e.is_running(self.shared.id))
    }

    /// Whether the call was cancelled (Python's `cancelled()`).
    pub fn cancelled(&self) -> bool {
        matches!(self.shared.state.lock().status, Status::Cancelled)
    }

    /// Cancels the call if it is still queued: `true` if it is cancelled (now or before),
    /// `false` if it is running or done (Python's `cancel()`). A cancelled future's result is
    /// [`PoolError::Cancelled`]; its done callbacks run now, on this thread.
    ///
    /// Exact: the call's state word in shared memory goes from queued to cancelled, or a
    /// worker moves it from queued to running, by one compare-and-swap each, so a cancelled
    /// call never runs (the worker that reaches its record skips it). A call whose state word
    /// was taken by an older call still pending (more than 4096 calls queued at once) cannot
    /// be cancelled: `false`.
    pub fn cancel(&self) -> bool {
        self.shared.cancel_call()
    }

    /// Runs `f` with the result (or the error) once the call is done: at once on this thread
    /// if it is done already, else on the executor's result thread when it finishes, exactly
    /// once either way (Python's `add_done_callback`; the function gets the result, not the
    /// future). A cancelled future gives `Err(&PoolError::Cancelled)`; if the value was taken
    /// by [`result_timeout`](Self::result_timeout) already, `Err(&PoolError::ResultTaken)`.
    ///
    /// `f` should be short, and must not wait for this executor's futures or shut it down
    /// (that thread is the one that completes them). A panic in `f` is caught (and printed).
    pub fn add_done_callback(&self, f: impl FnOnce(Result<&T, &PoolError>) + Send + 'static) {
        {
            let mut st = self.shared.state.lock();
            if matches!(st.status, Status::Pending) {
                st.callbacks.push(Box::new(f));
                return;
            }
        }
        self.shared.call(Box::new(f));
    }
}

// ---------------------------------------------------------------------- map

/// The results of [`ProcessPoolExecutor::map`], in input order: each item one call's
/// `Result`. Dropping it cancels the chunks still queued (as Python's result iterator does).
pub struct MapResults<R: Send + 'static> {
    chunks: VecDeque<Future<Vec<Result<R, PoolError>>>>,
    current: VecDeque<Result<R, PoolError>>,
    started: Instant,
    deadline: Option<Instant>,
    ended: bool,
}

impl<R: Send + 'static> fmt::Debug for MapResults<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapResults")
            .field("chunks_left", &self.chunks.len())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<R: Send + 'static> MapResults<R> {
    /// Gives the whole map `timeout`, counted from the call to
    /// [`map`](ProcessPoolExecutor::map) (Python's `map(..., timeout=)`): the first result
    /// not there by then is [`PoolError::WaitTimeout`], after which the iterator ends and the
    /// chunks still queued are cancelled.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Some(self.started + timeout);
        self
    }

    fn cancel_rest(&mut self) {
        for c in &self.chunks {
            c.cancel();
        }
    }
}

impl<R: Send + 'static> Iterator for MapResults<R> {
    type Item = Result<R, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.current.pop_front() {
                return Some(r);
            }
            if self.ended {
                return None;
            }
            let chunk = self.chunks.front()?;
            if !chunk.shared.wait_until(self.deadline) {
                self.ended = true;
                self.cancel_rest();
                return Some(Err(PoolError::WaitTimeout));
            }
            let chunk = self.chunks.pop_front().expect("looked at above");
            match chunk.result() {
                Ok(v) => self.current.extend(v),
                // Only cancellation fails a chunk as a whole (by `shutdown(_, true)`).
                Err(e) => self.current.push_back(Err(e)),
            }
        }
    }
}

impl<R: Send + 'static> Drop for MapResults<R> {
    fn drop(&mut self) {
        self.cancel_rest();
    }
}

// ---------------------------------------------------------------------- wait, as_completed

mod sealed {
    //! What [`AnyFuture`](super::AnyFuture) requires, out of users' reach.

    use std::sync::Arc;

    use parking_lot::{Condvar, Mutex};

    /// The watch list of one `wait` or `as_completed`: indices of the futures that finished.
    #[derive(Debug, Default)]
    pub struct Waiter {
        pub(super) fired: Mutex<Vec<usize>>,
        pub(super) cv: Condvar,
    }

    impl Waiter {
        pub(super) fn fire(&self, i: usize) {
            self.fired.lock().push(i);
            self.cv.notify_all();
        }
    }

    /// A future of any result type, as `wait` sees it.
    pub trait Watch {
        /// Reports index `i` to `w` when done (at once if done already).
        fn watch(&self, w: &Arc<Waiter>, i: usize);
        /// Stops reporting to `w`.
        fn unwatch(&self, w: &Arc<Waiter>);
        /// `None` while pending, else whether it failed (cancelled is not a failure).
        fn outcome(&self) -> Option<bool>;
        /// The identity of the future (the same future given twice is watched once).
        fn key(&self) -> usize;
    }

    /// Sealed: implemented by `Future` and references to it.
    pub trait Sealed {
        /// The future behind `self`.
        fn watched(&self) -> &dyn Watch;
    }
}

use sealed::{Waiter, Watch};

impl<T: Send + 'static> Watch for Future<T> {
    fn watch(&self, w: &Arc<Waiter>, i: usize) {
        let mut st = self.shared.state.lock();
        if matches!(st.status, Status::Pending) {
            st.waiters.push((Arc::clone(w), i));
        } else {
            drop(st);
            w.fire(i);
        }
    }

    fn unwatch(&self, w: &Arc<Waiter>) {
        self.shared
            .state
            .lock()
            .waiters
            .retain(|(x, _)| !Arc::ptr_eq(x, w));
    }

    fn outcome(&self) -> Option<bool> {
        match &self.shared.state.lock().status {
            Status::Pending => None,
            Status::Finished { error } => Some(error.is_some()),
            Status::Cancelled => Some(false),
        }
    }

    fn key(&self) -> usize {
        Arc::as_ptr(&self.shared) as *const () as usize
    }
}

/// Something [`wait`] and [`as_completed`] can watch: a [`Future`] of any result type, or a
/// reference (or box) to one, so `&dyn AnyFuture` mixes futures of different types. Sealed.
pub trait AnyFuture: sealed::Sealed {}

impl<T: Send + 'static> sealed::Sealed for Future<T> {
    fn watched(&self) -> &dyn Watch {
        self
    }
}
impl<T: Send + 'static> AnyFuture for Future<T> {}

impl<W: AnyFuture + ?Sized> sealed::Sealed for &W {
    fn watched(&self) -> &dyn Watch {
        (**self).watched()
    }
}
impl<W: AnyFuture + ?Sized> AnyFuture for &W {}

impl<W: AnyFuture + ?Sized> sealed::Sealed for &mut W {
    fn watched(&self) -> &dyn Watch {
        (**self).watched()
    }
}
impl<W: AnyFuture + ?Sized> AnyFuture for &mut W {}

impl<W: AnyFuture + ?Sized> sealed::Sealed for Box<W> {
    fn watched(&self) -> &dyn Watch {
        (**self).watched()
    }
}
impl<W: AnyFuture + ?Sized> AnyFuture for Box<W> {}

/// Takes the futures, drops repeats of the same future, and watches the rest.
fn watch_all<F: AnyFuture>(futures: impl IntoIterator<Item = F>) -> (Vec<F>, Arc<Waiter>) {
    let mut seen = HashSet::new();
    let futures: Vec<F> = futures
        .into_iter()
        .filter(|f| seen.insert(f.watched().key()))
        .collect();
    let waiter = Arc::new(Waiter::default());
    for (i, f) in futures.iter().enumerate() {
        f.watched().watch(&waiter, i);
    }
    (futures, waiter)
}

/// When [`wait`] returns (Python's `return_when`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitMode {
    /// As soon as any future is done or cancelled (`FIRST_COMPLETED`).
    FirstCompleted,
    /// As soon as any future fails (a cancelled one does not count), or when all are done
    /// (`FIRST_EXCEPTION`).
    FirstException,
    /// When every future is done or cancelled (`ALL_COMPLETED`).
    AllCompleted,
}

/// What [`wait`] returns: the futures done (finished or cancelled) and the others, each in the
/// order given (Python's `DoneAndNotDoneFutures`).
#[derive(Debug)]
pub struct DoneAndNotDone<F> {
    /// The futures that finished or were cancelled.
    pub done: Vec<F>,
    /// The futures still pending (the wait timed out, or `mode` let it return early).
    pub not_done: Vec<F>,
}

/// Waits until `mode` is satisfied or `timeout` passes, then splits the futures into done and
/// not done (Python's `concurrent.futures.wait`). A timeout is not an error: the pending ones
/// are in `not_done`. The same future given twice is counted once.
///
/// ```
/// use multiproc_pool::{ProcessPoolExecutor, PoolError, WaitMode, wait};
///
/// fn double(n: u32) -> u32 {
///     n * 2
/// }
///
/// let executor = ProcessPoolExecutor::new(2)?;
/// let futures: Vec<_> = (0..4).map(|n| executor.submit(double, n)).collect::<Result<_, _>>()?;
/// let first = wait(&futures, WaitMode::FirstCompleted, None);
/// assert!(!first.done.is_empty());
/// let all = wait(&futures, WaitMode::AllCompleted, None);
/// assert_eq!((all.done.len(), all.not_done.len()), (4, 0));
/// # Ok::<(), PoolError>(())
/// ```
///
/// ```python
/// from concurrent.futures import FIRST_COMPLETED, ALL_COMPLETED, wait
/// done, not_done = wait(futures, return_when=FIRST_COMPLETED)
/// ```
pub fn wait<F: AnyFuture>(
    futures: impl IntoIterator<Item = F>,
    mode: WaitMode,
    timeout: Option<Duration>,
) -> DoneAndNotDone<F> {
    let until = timeout.map(|t| Instant::now() + t);
    let (futures, waiter) = watch_all(futures);
    {
        let mut fired = waiter.fired.lock();
        loop {
            let enough = match mode {
                _ if fired.len() == futures.len() => true,
                WaitMode::FirstCompleted => !fired.is_empty(),
                WaitMode::FirstException => fired
                    .iter()
                    .any(|&i| futures[i].watched().outcome() == Some(true)),
                WaitMode::AllCompleted => false,
            };
            if enough {
                break;
            }
            match until {
                None => waiter.cv.wait(&mut fired),
                Some(t) => {
                    if waiter.cv.wait_until(&mut fired, t).timed_out() {
                        break;
                    }
                }
            }
        }
    }
    let mut out = DoneAndNotDone {
        done: Vec::new(),
        not_done: Vec::new(),
    };
    for f in futures {
        f.watched().unwatch(&waiter);
        if f.watched().outcome().is_some() {
            out.done.push(f);
        } else {
            out.not_done.push(f);
        }
    }
    out
}

/// An iterator over `futures` that yields each one as it finishes (or is cancelled), exactly
/// once, those done already first (Python's `concurrent.futures.as_completed`). With a
/// `timeout` (counted from this call), the first wait past it yields
/// [`PoolError::WaitTimeout`] and ends the iteration. Repeats of one future are yielded once.
///
/// ```
/// use multiproc_pool::{ProcessPoolExecutor, PoolError, as_completed};
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// let executor = ProcessPoolExecutor::new(2)?;
/// let futures: Vec<_> = (0..4).map(|n| executor.submit(square, n)).collect::<Result<_, _>>()?;
/// // By reference: `futures` stays usable, each item is `&Future<u64>`.
/// let finished = as_completed(&futures, None).collect::<Result<Vec<_>, _>>()?;
/// assert_eq!(finished.len(), 4);
/// // By value: each item is a `Future<u64>` to take the result from.
/// let mut sum = 0;
/// for f in as_completed(futures, None) {
///     sum += f?.result()?;
/// }
/// assert_eq!(sum, 14);
/// # Ok::<(), PoolError>(())
/// ```
///
/// ```python
/// for future in as_completed(futures, timeout=60):
///     print(future.result())
/// ```
pub fn as_completed<F: AnyFuture>(
    futures: impl IntoIterator<Item = F>,
    timeout: Option<Duration>,
) -> AsCompleted<F> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let (futures, waiter) = watch_all(futures);
    AsCompleted {
        left: futures.len(),
        futures: futures.into_iter().map(Some).collect(),
        waiter,
        deadline,
        ended: false,
    }
}

/// The iterator of [`as_completed`]: `Ok(future)` as each finishes, or one
/// `Err(PoolError::WaitTimeout)` when the deadline passes first.
pub struct AsCompleted<F: AnyFuture> {
    futures: Vec<Option<F>>,
    waiter: Arc<Waiter>,
    deadline: Option<Instant>,
    left: usize,
    ended: bool,
}

impl<F: AnyFuture> fmt::Debug for AsCompleted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl<F: AnyFuture> AsCompleted<F> {
    /// How many futures are still to be yielded.
    pub fn remaining(&self) -> usize {
        self.left
    }
}

impl<F: AnyFuture> Iterator for AsCompleted<F> {
    type Item = Result<F, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended || self.left == 0 {
            return None;
        }
        let mut fired = self.waiter.fired.lock();
        loop {
            // In the order they finished.
            if !fired.is_empty() {
                let i = fired.remove(0);
                drop(fired);
                if let Some(f) = self.futures[i].take() {
                    self.left -= 1;
                    return Some(Ok(f));
                }
                fired = self.waiter.fired.lock();
                continue;
            }
            match self.deadline {
                None => self.waiter.cv.wait(&mut fired),
                Some(t) => {
                    if self.waiter.cv.wait_until(&mut fired, t).timed_out() && fired.is_empty() {
                        self.ended = true;
                        return Some(Err(PoolError::WaitTimeout));
                    }
                }
            }
        }
    }
}

impl<F: AnyFuture> Drop for AsCompleted<F> {
    fn drop(&mut self) {
        for f in self.futures.iter().flatten() {
            f.watched().unwatch(&self.waiter);
        }
    }
}
