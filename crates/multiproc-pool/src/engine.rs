//! The engine under [`Pool`](crate::Pool) and `ProcessPoolExecutor`:
//! one shared task ring, one shared result ring, and a slot of shared words per worker
//! (`research/pool-engine.md`, engine "A").
//!
//! - **Tasks.** A task record is a chunk of tasks: `[id: u64][runner: AnyFnRef][arguments]`.
//!   The runner is a trampoline monomorphised for the task's types (`run_chunk::<A, R>`); the
//!   worker calls it with the encoded arguments and pushes `[id][kind][encoded results]` to
//!   the result ring. Id 0 asks the worker to stop.
//! - **Claims.** A worker takes a record under the task ring's consumer lock, and before the
//!   ring's consumer position moves past it, writes the record's id and position into its slot
//!   ([`ByteRing::pop_claimed`]); it clears the slot only after its result record is
//!   committed. So when a worker dies, its slot says which chunk it may have held, and the
//!   ring's consumer position says whether it had taken it: a position still at the record
//!   means the record is still in the ring, and the next worker runs it.
//! - **Deaths.** A monitor thread polls the workers' sentinels (and, with a time limit, their
//!   slots); it reports a death by pushing a `DEATH` record into the result ring, behind every
//!   result the dead worker committed. The result handler thread, the ring's only consumer,
//!   takes results and deaths in order: for a death it reads the task ring's position, then the
//!   other workers' slots, then drains the results already there, and fails the dead worker's
//!   chunk with [`PoolError::WorkerLost`] only if no result came, no live worker holds it and
//!   the ring's position moved past it. Then it starts a replacement in the same slot.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use multiproc_core::heap::{ATOMIC_KINDS, SharedSlice};
use multiproc_core::{AnyFnRef, CallError, FnRef, Panicked, Process, StartMethod};
use multiproc_ipc::queue::{ByteRing, RingError};
use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::PoolError;

/// The heap kind of the workers' slots.
const SLOTS_KIND: u8 = ATOMIC_KINDS + 2;

/// The heap kind of the cancellable tasks' states.
const STATES_KIND: u8 = ATOMIC_KINDS + 3;

/// Cancellable tasks tracked at once (a task whose word is taken by an older one that is still
/// pending is not cancellable).
const STATES: usize = 4096;
/// A tracked task's state, in the low bits of its word (the id above them).
const QUEUED: u64 = 1;
const RUNNING: u64 = 2;
const CANCELLED: u64 = 3;

/// Words per worker slot.
const SLOT_WORDS: usize = 8;
/// The id of the chunk the worker holds (0: none; `STOPPED`: it took a stop record).
const HOLD: usize = 0;
/// The ring position of the record it holds.
const POS: usize = 1;
/// When its current task began (`CLOCK_MONOTONIC` ns; 0: not timed).
const STARTED: usize = 2;

/// `HOLD` of a worker that took a stop record and is exiting.
const STOPPED: u64 = u64::MAX;

/// The task id that asks a worker to stop.
const STOP: u64 = 0;

/// Result record kinds (the byte after the id).
const OK: u8 = 1;
const CALL_ERR: u8 = 2;
const INIT_FAILED: u8 = 3;
const DEATH: u8 = 4;
const SHUTDOWN: u8 = 5;
const BROKEN: u8 = 6;

/// Task ring size: room for the argument chunks of a large map.
const TASK_RING: usize = 1 << 20;
/// Result ring size.
const RESULT_RING: usize = 1 << 20;

/// How long a push into the task ring waits for room before it checks that the pool still
/// runs.
const PUSH_SLICE: Duration = Duration::from_millis(100);

/// How long `join` waits for workers to take their stop records before it kills them.
const JOIN_GRACE: Duration = Duration::from_secs(30);

/// What a chunk came to: its encoded results (`Vec<Result<R, Panicked>>`), or why there are
/// none.
pub(crate) enum Outcome {
    /// The runner's encoded output.
    Done(Bytes),
    /// The chunk failed as a whole.
    Failed(PoolError),
}

/// A result record's bytes; dropped, the buffer goes back to the result handler for the next
/// record (fresh memory for each would cost page faults).
pub(crate) struct Bytes {
    buf: Vec<u8>,
    home: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    /// The record's body (after its id and kind).
    fn deref(&self) -> &[u8] {
        &self.buf[RESULT_HEAD..]
    }
}

/// A result record's id and kind bytes.
const RESULT_HEAD: usize = 9;

impl Drop for Bytes {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= MAX_SPARE_BYTES {
            let mut home = self.home.lock();
            if home.len() < MAX_SPARES {
                home.push(buf);
            }
        }
    }
}

/// Result buffers kept for reuse, and the largest kept.
const MAX_SPARES: usize = 16;
const MAX_SPARE_BYTES: usize = 4 << 20;

/// Where a chunk's outcome goes (run on the result handler thread).
pub(crate) type Sink = Box<dyn FnOnce(Outcome) + Send>;

/// How the pool was configured.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: Option<StartMethod>,
    pub(crate) initializer: Option<(AnyFnRef, Vec<u8>)>,
    pub(crate) max_tasks: u64,
    pub(crate) timeout: Option<Duration>,
    pub(crate) name: &'static str,
}

/// What a worker process is started with.
#[derive(Serialize, Deserialize)]
struct WorkerArgs {
    tasks: ByteRing,
    results: ByteRing,
    slots: SharedSlice<AtomicU64>,
    states: SharedSlice<AtomicU64>,
    slot: usize,
    initializer: Option<(AnyFnRef, Vec<u8>)>,
    max_tasks: u64,
    timed: bool,
}

/// The phase of the pool's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// `close` was called: no new tasks; pending ones finish.
    Closed,
    /// `join` sent the stop records: workers are exiting.
    Stopping,
    /// Terminated or joined: no workers, no threads.
    Done,
}

struct Worker {
    process: Process,
    pid: u32,
    sentinel: Arc<OwnedFd>,
}

struct State {
    phase: Phase,
    pending: HashMap<u64, Sink>,
    workers: Vec<Option<Worker>>,
    /// Chunks whose worker the monitor killed for overrunning the time limit.
    timed_out: HashSet<u64>,
    broken: Option<PoolError>,
}

impl State {
    /// Whether new tasks are taken: not once closed, terminated or broken.
    fn accepting(&self) -> Result<(), PoolError> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if self.phase != Phase::Running {
            return Err(PoolError::Closed);
        }
        Ok(())
    }
}

/// The parent's side of a pool.
pub(crate) struct Engine {
    tasks: ByteRing,
    results: ByteRing,
    slots: SharedSlice<AtomicU64>,
    /// Cancellable tasks' states (see [`track`](Engine::track)).
    states: SharedSlice<AtomicU64>,
    cfg: Config,
    state: Mutex<State>,
    /// Notified when `pending` empties or a worker leaves.
    changed: Condvar,
    next_id: AtomicU64,
    /// The monitor's wake-up (an eventfd).
    wake: OwnedFd,
    shutting_down: AtomicBool,
    /// Result buffers given back by [`Bytes`].
    spares: Arc<Mutex<Vec<Vec<u8>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    handler_thread: OnceLock<ThreadId>,
}

impl Engine {
    /// Creates the rings and slots, starts `cfg.processes` workers and the two threads.
    pub(crate) fn start(cfg: Config) -> Result<Arc<Engine>, PoolError> {
        let n = cfg.processes;
        let engine = Arc::new(Engine {
            tasks: ByteRing::new(TASK_RING)?,
            results: ByteRing::new(RESULT_RING)?,
            slots: SharedSlice::new(n * SLOT_WORDS, SLOTS_KIND)?,
            states: SharedSlice::new(STATES, STATES_KIND)?,
            cfg,
            state: Mutex::new(State {
                phase: Phase::Running,
                pending: HashMap::new(),
                workers: (0..n).map(|_| None).collect(),
                timed_out: HashSet::new(),
                broken: None,
            }),
            changed: Condvar::new(),
            next_id: AtomicU64::new(1),
            wake: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .map_err(std::io::Error::from)?,
            shutting_down: AtomicBool::new(false),
            spares: Arc::default(),
            threads: Mutex::new(Vec::new()),
            handler_thread: OnceLock::new(),
        });
        // The parent writes every page of the task ring and reads every page of the result
        // ring over the pool's first maps: faulted in now, not one page at a time then.
        engine.tasks.prefault();
        engine.results.prefault();
        for slot in 0..n {
            let w = engine.start_worker(slot)?;
            engine.state.lock().workers[slot] = Some(w);
        }
        let e = Arc::clone(&engine);
        let handler = multiproc_core::spawn_fork_safe_thread(
            format!("{}-result-handler", engine.cfg.name),
            move || e.handle_results(),
        )?;
        let _ = engine.handler_thread.set(handler.thread().id());
        let e = Arc::clone(&engine);
        let monitor = multiproc_core::spawn_fork_safe_thread(
            format!("{}-worker-monitor", engine.cfg.name),
            move || e.monitor(),
        )?;
        engine.threads.lock().extend([handler, monitor]);
        Ok(engine)
    }

    pub(crate) fn processes(&self) -> usize {
        self.cfg.processes
    }

    fn slot(&self, i: usize) -> &[AtomicU64] {
        &self.slots[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
    }

    fn start_worker(&self, slot: usize) -> Result<Worker, PoolError> {
        for w in self.slot(slot) {
            w.store(0, Relaxed);
        }
        let args = WorkerArgs {
            tasks: self.tasks.clone(),
            results: self.results.clone(),
            slots: self.slots.clone(),
            states: self.states.clone(),
            slot,
            initializer: self.cfg.initializer.clone(),
            max_tasks: self.cfg.max_tasks,
            timed: self.cfg.timeout.is_some(),
        };
        let mut p = match self.cfg.method {
            Some(m) => multiproc_core::get_context(m).process(worker_main, args),
            None => Process::new(worker_main, args),
        };
        p.set_name(format!("{}Worker-{}", self.cfg.name, slot + 1));
        p.set_daemon(true)?;
        p.start()?;
        let pid = p.pid().unwrap_or(0);
        let sentinel = Arc::new(p.sentinel()?.try_clone_to_owned()?);
        Ok(Worker {
            process: p,
            pid,
            sentinel,
        })
    }

    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let st = self.state.lock();
        st.workers.iter().flatten().map(|w| w.pid).collect()
    }

    /// A new chunk id.
    pub(crate) fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Starts a task record for `runner` with id `id`, with room for `room` more bytes: the
    /// caller appends the encoded arguments.
    pub(crate) fn record(id: u64, runner: AnyFnRef, room: usize) -> Vec<u8> {
        let mut rec = Vec::with_capacity(64 + room);
        Engine::start_record(&mut rec, id, runner);
        rec
    }

    /// Appends a task record's head (id and runner) to `rec`.
    pub(crate) fn start_record(rec: &mut Vec<u8>, id: u64, runner: AnyFnRef) {
        rec.extend_from_slice(&id.to_le_bytes());
        postcard::to_io(&runner, &mut *rec).expect("encoding into a Vec cannot fail");
    }

    /// Submits a task record (made by [`record`](Self::record)); `sink` receives its outcome
    /// on the result handler thread.
    pub(crate) fn submit(&self, id: u64, record: &[u8], sink: Sink) -> Result<(), PoolError> {
        {
            let mut st = self.state.lock();
            st.accepting()?;
            st.pending.insert(id, sink);
        }
        self.push_records(&[id], &[record])
    }

    /// Pushes task records (whose sinks are pending) into the task ring, waiting for room in
    /// slices: a pool terminated or broken meanwhile (whose workers will never make room)
    /// fails the records not yet pushed instead of blocking forever.
    fn push_records(&self, ids: &[u64], bytes: &[&[u8]]) -> Result<(), PoolError> {
        let mut done = 0;
        while done < bytes.len() {
            match self.tasks.push_many(&bytes[done..], Some(PUSH_SLICE)) {
                Ok(()) => return Ok(()),
                Err((n, e)) => {
                    done += n;
                    let st = self.state.lock();
                    let stop = match (&e, &st.broken, st.phase) {
                        (RingError::Corrupt(why), _, _) => {
                            Some(PoolError::Os(format!("the task ring: {why}")))
                        }
                        (_, Some(why), _) => Some(why.clone()),
                        (_, None, Phase::Done) => Some(PoolError::Terminated),
                        _ => None,
                    };
                    drop(st);
                    if let Some(why) = stop {
                        let mut st = self.state.lock();
                        for id in &ids[done..] {
                            st.pending.remove(id);
                        }
                        return Err(why);
                    }
                }
            }
        }
        Ok(())
    }

    /// Submits several task records at once (one hold of the task ring's producer side per
    /// batch); on an error none of the records not yet pushed is pending.
    pub(crate) fn submit_many(&self, batch: Vec<(u64, Vec<u8>, Sink)>) -> Result<(), PoolError> {
        let mut records = Vec::with_capacity(batch.len());
        {
            let mut st = self.state.lock();
            st.accepting()?;
            for (id, rec, sink) in batch {
                st.pending.insert(id, sink);
                records.push((id, rec));
            }
        }
        let ids: Vec<u64> = records.iter().map(|(id, _)| *id).collect();
        let bytes: Vec<&[u8]> = records.iter().map(|(_, r)| r.as_slice()).collect();
        self.push_records(&ids, &bytes)
    }

    /// Takes `sink` back if the chunk has not started (for an executor's `cancel`): the record
    /// stays in the ring and its result, if it comes, is dropped.
    pub(crate) fn forget(&self, id: u64) -> bool {
        self.state.lock().pending.remove(&id).is_some()
    }

    /// The state word of task `id`.
    fn state_word(&self, id: u64) -> &AtomicU64 {
        &self.states[(id % STATES as u64) as usize]
    }

    /// Makes task `id` cancellable before it is submitted: `false` if its state word is taken
    /// by an older task still pending (then it cannot be cancelled). The worker that takes a
    /// tracked task moves it from queued to running, or skips it if it was cancelled, with one
    /// compare-and-swap each: so a cancel and a start never both succeed.
    pub(crate) fn track(&self, id: u64) -> bool {
        let w = self.state_word(id);
        let cur = w.load(Acquire);
        if cur != 0 && self.state.lock().pending.contains_key(&(cur >> 2)) {
            return false;
        }
        w.compare_exchange(cur, id << 2 | QUEUED, AcqRel, Acquire)
            .is_ok()
    }

    /// Forgets the tracking of a task that was not submitted after all.
    pub(crate) fn untrack(&self, id: u64) {
        let _ = self
            .state_word(id)
            .compare_exchange(id << 2 | QUEUED, 0, AcqRel, Acquire);
    }

    /// Cancels tracked task `id` if no worker has started it: its sink is dropped and the
    /// worker that reaches its record skips it.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        let cancelled = self
            .state_word(id)
            .compare_exchange(id << 2 | QUEUED, id << 2 | CANCELLED, AcqRel, Acquire)
            .is_ok();
        if cancelled {
            self.forget(id);
        }
        cancelled
    }

    /// Whether chunk `id` runs now. A tracked chunk runs once a worker has moved its state word
    /// to running: the worker claims a record (its slot's `HOLD`) before that move, and a
    /// `cancel` between the two still succeeds, so the claim alone would let `running()` say
    /// true of a call that is then cancelled. An untracked chunk runs while a worker holds it.
    pub(crate) fn is_running(&self, id: u64) -> bool {
        let w = self.state_word(id).load(Acquire);
        if w >> 2 == id {
            return w & 3 == RUNNING;
        }
        (0..self.cfg.processes).any(|i| self.slot(i)[HOLD].load(Acquire) == id)
    }

    // ------------------------------------------------------------------ shutdown

    /// Python's `close`: no new tasks.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        if st.phase == Phase::Running {
            st.phase = Phase::Closed;
        }
    }

    /// Whether the pool is still taking tasks.
    pub(crate) fn is_running_phase(&self) -> bool {
        self.state.lock().phase == Phase::Running
    }

    /// Python's `join`: after `close`, waits for every pending chunk, stops the workers and
    /// the threads. After `terminate`, returns at once.
    pub(crate) fn join(&self) -> Result<(), PoolError> {
        let mut st = self.state.lock();
        match st.phase {
            Phase::Running => return Err(PoolError::NotClosed),
            Phase::Done => return Ok(()),
            Phase::Closed | Phase::Stopping => {}
        }
        while !st.pending.is_empty() && st.phase == Phase::Closed {
            self.changed.wait(&mut st);
        }
        if st.phase == Phase::Done {
            return Ok(());
        }
        st.phase = Phase::Stopping;
        let live = st.workers.iter().flatten().count();
        drop(st);
        let stop = STOP.to_le_bytes();
        for _ in 0..live {
            let _ = self.tasks.push(&stop, Some(JOIN_GRACE));
        }
        let until = Instant::now() + JOIN_GRACE;
        let mut st = self.state.lock();
        while st.workers.iter().any(Option::is_some) {
            if self.changed.wait_until(&mut st, until).timed_out() {
                break;
            }
        }
        drop(st);
        self.shutdown(PoolError::Terminated);
        Ok(())
    }

    /// Python's `terminate`: kills the workers, fails every pending chunk with
    /// [`PoolError::Terminated`], stops the threads.
    pub(crate) fn terminate(&self) {
        {
            let mut st = self.state.lock();
            if st.phase == Phase::Done {
                return;
            }
            st.phase = Phase::Stopping;
        }
        self.shutdown(PoolError::Terminated);
    }

    /// Stops the threads, kills and reaps every worker left, fails what is pending.
    fn shutdown(&self, why: PoolError) {
        if self.shutting_down.swap(true, Relaxed) {
            return;
        }
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        let mut rec = 0u64.to_le_bytes().to_vec();
        rec.push(SHUTDOWN);
        let _ = self.results.push(&rec, Some(Duration::from_secs(5)));
        let on_handler = self.handler_thread.get() == Some(&std::thread::current().id());
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if on_handler && t.thread().id() == std::thread::current().id() {
                continue;
            }
            let _ = t.join();
        }
        let (workers, pending) = {
            let mut st = self.state.lock();
            st.phase = Phase::Done;
            let w: Vec<Worker> = st.workers.iter_mut().filter_map(Option::take).collect();
            (w, std::mem::take(&mut st.pending))
        };
        for w in &workers {
            let _ = w.process.kill();
        }
        for w in &workers {
            let _ = w.process.join();
        }
        self.changed.notify_all();
        let _fork = multiproc_core::fork_guard();
        for (_, sink) in pending {
            run_sink(sink, Outcome::Failed(why.clone()));
        }
    }

    // ------------------------------------------------------------------ result handler

    fn handle_results(self: &Arc<Self>) {
        let mut buf = Vec::new();
        let mut deaths = Vec::new();
        let mut stop = false;
        while !stop {
            match self.results.pop(&mut buf, None) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    self.break_pool(PoolError::Os(format!("the result ring is corrupt: {e}")));
                    return;
                }
            }
            let rec = std::mem::replace(&mut buf, self.spares.lock().pop().unwrap_or_default());
            stop = !self.take_record(rec, &mut deaths);
            while let Some(pid) = deaths.pop() {
                self.handle_death(pid, &mut deaths, &mut stop);
            }
        }
    }

    /// Handles one result record; `false` on `SHUTDOWN`. Deaths are queued in `deaths`.
    fn take_record(&self, rec: Vec<u8>, deaths: &mut Vec<u32>) -> bool {
        if rec.len() < RESULT_HEAD {
            return true;
        }
        let id = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let kind = rec[8];
        let body = &rec[RESULT_HEAD..];
        match kind {
            OK | CALL_ERR => {
                let outcome = if kind == OK {
                    Outcome::Done(Bytes {
                        buf: rec,
                        home: Arc::clone(&self.spares),
                    })
                } else {
                    let e: Result<CallError, _> = postcard::from_bytes(body);
                    Outcome::Failed(match e {
                        Ok(e) => call_error(e),
                        Err(e) => PoolError::Result(e.to_string()),
                    })
                };
                let sink = {
                    let mut st = self.state.lock();
                    let s = st.pending.remove(&id);
                    if st.pending.is_empty() {
                        self.changed.notify_all();
                    }
                    s
                };
                if let Some(sink) = sink {
                    let _fork = multiproc_core::fork_guard();
                    run_sink(sink, outcome);
                }
            }
            INIT_FAILED => {
                self.break_pool(PoolError::Initializer(
                    String::from_utf8_lossy(body).into_owned(),
                ));
            }
            BROKEN => {
                self.break_pool(PoolError::Os(String::from_utf8_lossy(body).into_owned()));
            }
            DEATH if body.len() >= 4 => {
                deaths.push(u32::from_le_bytes(body[..4].try_into().expect("4 bytes")));
            }
            SHUTDOWN => return false,
            _ => {}
        }
        true
    }

    /// The initializer failed (or the rings broke): fail everything, take no more tasks.
    fn break_pool(&self, why: PoolError) {
        let pending = {
            let mut st = self.state.lock();
            st.broken.get_or_insert(why.clone());
            std::mem::take(&mut st.pending)
        };
        self.changed.notify_all();
        let _fork = multiproc_core::fork_guard();
        for (_, sink) in pending {
            run_sink(sink, Outcome::Failed(why.clone()));
        }
    }

    fn handle_death(&self, pid: u32, deaths: &mut Vec<u32>, stop: &mut bool) {
        let (slot, worker) = {
            let mut st = self.state.lock();
            let Some(slot) = st
                .workers
                .iter()
                .position(|w| w.as_ref().is_some_and(|w| w.pid == pid))
            else {
                return;
            };
            (slot, st.workers[slot].take().expect("found above"))
        };
        let exitcode = worker.process.join().unwrap_or(-9);
        let words = self.slot(slot);
        let held = words[HOLD].load(Acquire);
        let at = words[POS].load(Relaxed);
        if held != 0 && held != STOPPED {
            // The order matters: the ring's position, then the other slots, then the results
            // already committed (see the module docs).
            let head = self.tasks.head_position();
            let others_hold = (0..self.cfg.processes)
                .filter(|&i| i != slot)
                .any(|i| self.slot(i)[HOLD].load(Acquire) == held);
            let mut drained = Vec::new();
            let _ = self.results.pop_ready(usize::MAX, &mut drained);
            for rec in drained {
                if !self.take_record(rec, deaths) {
                    *stop = true;
                }
            }
            if head != at && !others_hold {
                let sink = {
                    let mut st = self.state.lock();
                    let timed_out = st.timed_out.remove(&held);
                    st.pending.remove(&held).map(|s| (s, timed_out))
                };
                let w = self.state_word(held);
                for st in [QUEUED, RUNNING] {
                    let _ = w.compare_exchange(held << 2 | st, 0, AcqRel, Acquire);
                }
                if let Some((sink, timed_out)) = sink {
                    let err = match (timed_out, self.cfg.timeout) {
                        (true, Some(limit)) => PoolError::TaskTimeout { limit },
                        _ => PoolError::WorkerLost { pid, exitcode },
                    };
                    let _fork = multiproc_core::fork_guard();
                    run_sink(sink, Outcome::Failed(err));
                }
            }
        }
        for w in words {
            w.store(0, Relaxed);
        }
        // A replacement, unless the worker took a stop record or the pool is stopping or broken.
        let replace = held != STOPPED && {
            let st = self.state.lock();
            matches!(st.phase, Phase::Running | Phase::Closed)
                && st.broken.is_none()
                && !self.shutting_down.load(Relaxed)
        };
        if replace {
            match self.start_worker(slot) {
                Ok(w) if self.shutting_down.load(Relaxed) => {
                    let _ = w.process.kill();
                    let _ = w.process.join();
                }
                Ok(w) => {
                    let mut st = self.state.lock();
                    // `join` counted the workers before this one came: it needs its own stop
                    // record.
                    let stopping = st.phase == Phase::Stopping;
                    st.workers[slot] = Some(w);
                    drop(st);
                    if stopping {
                        let _ = self.tasks.push(&STOP.to_le_bytes(), Some(JOIN_GRACE));
                    }
                }
                Err(e) => self.break_pool(PoolError::Os(format!(
                    "cannot start a replacement worker: {e}"
                ))),
            }
        }
        self.changed.notify_all();
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    // ------------------------------------------------------------------ monitor

    /// Polls the workers' sentinels; reports each death once as a `DEATH` record. With a
    /// time limit, also kills workers whose task overran it.
    fn monitor(self: &Arc<Self>) {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut reported: HashSet<u32> = HashSet::new();
        loop {
            if self.shutting_down.load(Relaxed) {
                return;
            }
            let watched: Vec<(u32, Arc<OwnedFd>)> = {
                let st = self.state.lock();
                st.workers
                    .iter()
                    .flatten()
                    .map(|w| (w.pid, Arc::clone(&w.sentinel)))
                    .collect()
            };
            reported.retain(|pid| watched.iter().any(|(p, _)| p == pid));
            let live: Vec<&(u32, Arc<OwnedFd>)> = watched
                .iter()
                .filter(|(p, _)| !reported.contains(p))
                .collect();
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(live.len() + 1);
            fds.push(PollFd::new(&self.wake, PollFlags::IN));
            for (_, fd) in &live {
                fds.push(PollFd::from_borrowed_fd(fd.as_fd(), PollFlags::IN));
            }
            let nap = self.cfg.timeout.map(|t| {
                let slice = (t / 20).clamp(Duration::from_millis(2), Duration::from_millis(100));
                rustix::time::Timespec::try_from(slice).expect("a short slice")
            });
            match poll(&mut fds, nap.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return,
            }
            let woken = !fds[0].revents().is_empty();
            let dead: Vec<u32> = fds[1..]
                .iter()
                .zip(&live)
                .filter(|(fd, _)| !fd.revents().is_empty())
                .map(|(_, (pid, _))| *pid)
                .collect();
            drop(fds);
            if woken {
                let mut b = [0u8; 8];
                let _ = rustix::io::read(&self.wake, &mut b);
            }
            for pid in dead {
                reported.insert(pid);
                let mut rec = 0u64.to_le_bytes().to_vec();
                rec.push(DEATH);
                rec.extend_from_slice(&pid.to_le_bytes());
                let _ = self.results.push(&rec, Some(Duration::from_secs(5)));
            }
            if let Some(limit) = self.cfg.timeout {
                self.kill_overrunning(limit);
            }
        }
    }

    fn kill_overrunning(&self, limit: Duration) {
        let now = monotonic_ns();
        let limit_ns = limit.as_nanos() as u64;
        let mut st = self.state.lock();
        for i in 0..self.cfg.processes {
            let words = self.slot(i);
            let started = words[STARTED].load(Acquire);
            let held = words[HOLD].load(Acquire);
            if started == 0
                || held == 0
                || held == STOPPED
                || now.saturating_sub(started) < limit_ns
            {
                continue;
            }
            if let Some(w) = &st.workers[i] {
                let _ = w.process.kill();
                st.timed_out.insert(held);
                words[STARTED].store(0, Relaxed);
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs a chunk's sink; a panic in it (a user's callback) is reported by the panic hook and
/// does not end the thread that runs it (the pool's result thread).
fn run_sink(sink: Sink, outcome: Outcome) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(outcome)));
}

/// A [`CallError`] from a worker as a pool error.
pub(crate) fn call_error(e: CallError) -> PoolError {
    match e {
        CallError::Panicked(p) => PoolError::Panicked(p),
        CallError::Args(s) => PoolError::Args(s),
        CallError::Result(s) => PoolError::Result(s),
        CallError::Reference(s) => PoolError::Os(s),
        other => PoolError::Os(other.to_string()),
    }
}

fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64
}

// ---------------------------------------------------------------------- the worker

/// The worker's slot, for `run_chunk` to stamp each task's start when the pool is timed.
static TIMED_SLOT: OnceLock<(SharedSlice<AtomicU64>, usize)> = OnceLock::new();

/// Marks the start of one task (for the per-task time limit).
#[inline]
fn task_started() {
    if let Some((slots, i)) = TIMED_SLOT.get() {
        slots[i * SLOT_WORDS + STARTED].store(monotonic_ns(), Release);
    }
}

/// What a worker's allocator keeps of freed memory (see `retain_freed_memory`).
const WORKER_RETAIN: usize = 32 << 20;

fn worker_main(a: WorkerArgs) {
    multiproc_core::ignore_interrupts();
    multiproc_core::retain_freed_memory(WORKER_RETAIN);
    let me = &a.slots[a.slot * SLOT_WORDS..(a.slot + 1) * SLOT_WORDS];
    // As the parent: this worker will read every page of the task ring and write every page
    // of the result ring.
    a.tasks.prefault();
    a.results.prefault();
    if a.timed {
        let _ = TIMED_SLOT.set((a.slots.clone(), a.slot));
    }
    let mut out = Vec::new();
    if let Some((f, arg)) = &a.initializer
        && let Err(e) = f.call_encoded(arg, Vec::new())
    {
        out.extend_from_slice(&0u64.to_le_bytes());
        out.push(INIT_FAILED);
        out.extend_from_slice(e.to_string().as_bytes());
        let _ = a.results.push(&out, None);
        // The pool is broken: no replacement follows (an exit, not `std::process::exit`,
        // whose atexit handlers are the parent's).
        return;
    }
    // The pool cannot work on: tell the parent, which stops replacing workers.
    let broken = |why: String| {
        let mut rec = 0u64.to_le_bytes().to_vec();
        rec.push(BROKEN);
        rec.extend_from_slice(why.as_bytes());
        let _ = a.results.push(&rec, Some(Duration::from_secs(5)));
    };
    let mut buf = Vec::new();
    let mut done = 0u64;
    loop {
        let mut claim = |bytes: &[u8], at: u64| {
            let id = bytes.get(..8).map_or(STOPPED - 1, |b| {
                u64::from_le_bytes(b.try_into().expect("8 bytes"))
            });
            me[POS].store(at, Relaxed);
            me[HOLD].store(if id == STOP { STOPPED } else { id }, Release);
        };
        match a.tasks.pop_claimed(&mut buf, None, &mut claim) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => return broken(format!("the task ring is corrupt: {e}")),
        }
        let Some(id) = buf
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        else {
            me[HOLD].store(0, Release);
            continue;
        };
        if id == STOP {
            return;
        }
        // A tracked (cancellable) task: start it unless it was cancelled.
        let state = &a.states[(id % STATES as u64) as usize];
        let mut tracked = false;
        let w = state.load(Acquire);
        if w >> 2 == id {
            let started = w & 3 == QUEUED
                && state
                    .compare_exchange(w, id << 2 | RUNNING, AcqRel, Acquire)
                    .is_ok();
            if !started {
                // Cancelled: nobody waits for its result.
                let _ = state.compare_exchange(id << 2 | CANCELLED, 0, AcqRel, Acquire);
                me[HOLD].store(0, Release);
                continue;
            }
            tracked = true;
        }
        out.clear();
        out.extend_from_slice(&id.to_le_bytes());
        out.push(OK);
        let called = match postcard::take_from_bytes::<AnyFnRef>(&buf[8..]) {
            Ok((runner, args)) => runner.call_into(args, Vec::new(), &mut out).map(|_| ()),
            Err(e) => Err(CallError::Args(format!(
                "a task record that does not decode: {e}"
            ))),
        };
        if let Err(e) = called {
            out.truncate(8);
            out.push(CALL_ERR);
            postcard::to_io(&e, &mut out).expect("encoding into a Vec cannot fail");
        }
        me[STARTED].store(0, Relaxed);
        if let Err(e) = a.results.push(&out, None) {
            return broken(format!("the result ring is corrupt: {e}"));
        }
        if tracked {
            let _ = state.compare_exchange(id << 2 | RUNNING, 0, AcqRel, Acquire);
        }
        me[HOLD].store(0, Release);
        done += 1;
        if a.max_tasks != 0 && done >= a.max_tasks {
            return;
        }
    }
}

// ---------------------------------------------------------------------- chunks

/// What a worker sends back for a chunk: the values of the tasks that returned, in order,
/// and the panics of the others with their places in the chunk (usually none: a chunk of
/// plain values decodes as one `Vec<R>`).
pub(crate) type ChunkOut<R> = (Vec<R>, Vec<(u32, Panicked)>);

/// Runs a chunk of tasks in a worker: the function is checked and fetched once, then called
/// for each argument under one panic capture, resumed after the task that panicked.
pub(crate) fn run_chunk<A, R>(input: (FnRef<A, R>, Vec<A>)) -> Result<ChunkOut<R>, String>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let (f, args) = input;
    let f = f.as_fn().map_err(|e| e.to_string())?;
    let n = args.len();
    let mut values = Vec::with_capacity(n);
    let mut panics = Vec::new();
    let mut args = args.into_iter();
    loop {
        let ran = multiproc_core::catch_panic(|| {
            for a in &mut args {
                task_started();
                values.push(f(a));
            }
        });
        match ran {
            Ok(()) => return Ok((values, panics)),
            Err(p) => {
                let at = n - args.len() - 1;
                panics.push((at as u32, p));
            }
        }
    }
}

/// The runner of chunks of `fn(A) -> R`, as a reference a worker can call.
pub(crate) fn runner<A, R>() -> Result<AnyFnRef, PoolError>
where
    A: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    Ok(
        FnRef::new(run_chunk::<A, R> as fn((FnRef<A, R>, Vec<A>)) -> Result<ChunkOut<R>, String>)?
            .erase(),
    )
}

/// Appends the encoded arguments of a chunk (`(FnRef<A, R>, [A])`, what `run_chunk` decodes)
/// to `rec`.
pub(crate) fn encode_chunk<A, R>(
    rec: &mut Vec<u8>,
    f: &FnRef<A, R>,
    args: &[A],
) -> Result<(), PoolError>
where
    A: Serialize,
{
    multiproc_core::reduction::append(&(f, args), rec).map_err(|e| PoolError::Args(e.to_string()))
}

/// Decodes a chunk's outcome by appending its `n` values to `out`; on a failure, the first
/// failed task's error (and `out` holds some of the chunk's values).
pub(crate) fn decode_append<R: DeserializeOwned>(
    outcome: Outcome,
    n: usize,
    out: &mut Vec<R>,
) -> Result<(), PoolError> {
    let bytes = match outcome {
        Outcome::Done(bytes) => bytes,
        Outcome::Failed(e) => return Err(e),
    };
    let before = out.len();
    let mut de = postcard::Deserializer::from_bytes(&bytes);
    let decoded = serde::de::DeserializeSeed::deserialize(seed::ChunkSeed { out }, &mut de);
    match decoded {
        Ok(Ok(mut panics)) => {
            let got = out.len() - before;
            if let Some((_, p)) = panics.drain(..).min_by_key(|(at, _)| *at) {
                return Err(PoolError::Panicked(p));
            }
            if got != n {
                return Err(PoolError::Result(format!(
                    "a chunk of {n} tasks returned {got} results"
                )));
            }
            Ok(())
        }
        Ok(Err(e)) => Err(PoolError::Function(fn_error(e))),
        Err(e) => Err(PoolError::Result(e.to_string())),
    }
}

/// Decodes a chunk's outcome into per-task results.
pub(crate) fn decode_chunk<R: DeserializeOwned>(
    outcome: Outcome,
    n: usize,
) -> Vec<Result<R, PoolError>> {
    let all = |e: PoolError| (0..n).map(|_| Err(e.clone())).collect();
    match outcome {
        Outcome::Done(bytes) => match postcard::from_bytes::<Result<ChunkOut<R>, String>>(&bytes) {
            Ok(Ok((values, panics))) if values.len() + panics.len() == n => {
                if panics.is_empty() {
                    return values.into_iter().map(Ok).collect();
                }
                let mut out = Vec::with_capacity(n);
                let mut values = values.into_iter();
                let mut panics = panics.into_iter().peekable();
                for i in 0..n {
                    match panics.next_if(|(at, _)| *at as usize == i) {
                        Some((_, p)) => out.push(Err(PoolError::Panicked(p))),
                        None => out.push(values.next().ok_or_else(|| {
                            PoolError::Result("a chunk's results do not add up".into())
                        })),
                    }
                }
                out
            }
            Ok(Ok((values, panics))) => all(PoolError::Result(format!(
                "a chunk of {n} tasks returned {} results",
                values.len() + panics.len()
            ))),
            Ok(Err(e)) => all(PoolError::Function(fn_error(e))),
            Err(e) => all(PoolError::Result(e.to_string())),
        },
        Outcome::Failed(e) => all(e),
    }
}

fn fn_error(msg: String) -> multiproc_core::FnRefError {
    multiproc_core::FnRefError::NotReexecutable(msg)
}

/// Decoding a chunk's results straight into the caller's `Vec` (no vector per chunk).
mod seed {
    use multiproc_core::Panicked;
    use serde::Deserialize;
    use serde::de::{DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor};
    use std::fmt;

    /// The panics of a chunk, with their places.
    type Panics = Vec<(u32, Panicked)>;

    /// `Result<(Vec<R>, Panics), String>`, the values appended to `out`.
    pub(super) struct ChunkSeed<'a, R> {
        pub(super) out: &'a mut Vec<R>,
    }

    impl<'de, R: Deserialize<'de>> DeserializeSeed<'de> for ChunkSeed<'_, R> {
        type Value = Result<Panics, String>;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_enum("Result", &["Ok", "Err"], self)
        }
    }

    impl<'de, R: Deserialize<'de>> Visitor<'de> for ChunkSeed<'_, R> {
        type Value = Result<Panics, String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a chunk's results")
        }

        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
            let (idx, variant): (u32, _) = data.variant()?;
            match idx {
                0 => variant.newtype_variant_seed(Pair { out: self.out }).map(Ok),
                1 => variant.newtype_variant::<String>().map(Err),
                _ => Err(serde::de::Error::custom("not a chunk's results")),
            }
        }
    }

    /// `(Vec<R>, Panics)`.
    struct Pair<'a, R> {
        out: &'a mut Vec<R>,
    }

    impl<'de, R: Deserialize<'de>> DeserializeSeed<'de> for Pair<'_, R> {
        type Value = Panics;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Panics, D::Error> {
            d.deserialize_tuple(2, self)
        }
    }

    impl<'de, R: Deserialize<'de>> Visitor<'de> for Pair<'_, R> {
        type Value = Panics;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("values and panics")
        }

        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Panics, S::Error> {
            seq.next_element_seed(Append { out: self.out })?
                .ok_or_else(|| serde::de::Error::invalid_length(0, &"2 elements"))?;
            seq.next_element::<Panics>()?
                .ok_or_else(|| serde::de::Error::invalid_length(1, &"2 elements"))
        }
    }

    /// A sequence appended to `out`.
    struct Append<'a, R> {
        out: &'a mut Vec<R>,
    }

    impl<'de, R: Deserialize<'de>> DeserializeSeed<'de> for Append<'_, R> {
        type Value = ();

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de, R: Deserialize<'de>> Visitor<'de> for Append<'_, R> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence of results")
        }

        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<(), S::Error> {
            // The length is what the worker wrote: trust it only as far as a chunk can hold.
            if let Some(n) = seq.size_hint() {
                self.out.reserve(n.min(1 << 20));
            }
            while let Some(v) = seq.next_element::<R>()? {
                self.out.push(v);
            }
            Ok(())
        }
    }
}
