//! multiproc's own figures, measured as the reference harness's `mp_bench.py` measures
//! CPython's (same figure names, message counts and timed regions).
//!
//! - `proc.start_join.<method>`: create, start and join a process running a no-op target; us
//!   per process (the `Process` construction is inside the timed loop, as in Python).
//! - `pipe.roundtrip.64B` / `pipe_simplex.roundtrip.64B`: the parent sends 64 bytes, a child
//!   echoes them; us per round trip; one warm-up round trip before the first repetition.
//! - `listener.roundtrip.{unix,tcp}.64B`: the same over a connection accepted from a
//!   `Listener` with an authkey (a Unix socket path, TCP loopback), the child its `Client`.
//! - `pipe.throughput.<size>` / `pipe_simplex.throughput.<size>`: a child sends a one-byte
//!   marker then `count` messages per repetition; the parent's clock starts after the marker;
//!   MB/s (10^6 bytes) over the messages received (into one reused buffer).
//!
//! - `lock.uncontended.mp_{Lock,RLock}.acquire_release`, `value.get_lock_increment.uncontended`:
//!   ns per acquire+release (guard taken and dropped) or per locked `+= 1`, in one process.
//! - `lock.contended2p.value_get_lock_increment`: parent and child each increment one `Value`
//!   100,000 times under its lock; ops/s.
//! - `event.pingpong`, `barrier2.wait`, `condition.pingpong`: us per round trip with a child.
//! - `shm.*`: `SharedMemory` create/attach/close+unlink of 1 MiB (us each); a child writing
//!   256 MiB into a fresh segment and the parent reading it (GB/s).
//! - `array.fill_from_child.1e6d.*`: a child filling 10^6 doubles; ms.
//! - `queue.throughput.{1p1c,4p1c}`, `simplequeue.throughput.{1p1c,4p1c}`: 1 or 4 children
//!   put 100,000 ints in all (then a `None` each) into a fresh `Queue` / `SimpleQueue`; the
//!   parent gets until it has seen every `None`; items/s from the gate's opening.
//! - `queue.roundtrip.int`, `simplequeue.roundtrip.int`: the parent puts an int on one queue, a
//!   child gets it and puts it on a second queue, the parent gets it back; us per round trip.
//! - `queue.item_1MiB`: a child puts items of 1 MiB of bytes into a `Queue`, the parent gets
//!   them; GB/s (10^9 bytes) from the gate's opening.
//!
//! Children that take part in a timed region wait at mp_bench.py's start gate (a `Barrier(2)`
//! and an `Event`), so their start-up stays outside it.
//! Children are started with the forkserver method (multiproc's default); mp_bench.py's use
//! fork, which only changes what happens before the clock starts.

use multiproc_core::{Process, StartMethod, get_context};
use multiproc_ipc::{Address, Client, Connection, Listener, Queue, SimpleQueue};
use multiproc_shm::{Array, RawArray, RawValue, SharedMemory, Value};
use multiproc_sync::{Barrier, Condition, Event, Lock, RLock};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;
use std::time::Instant;

use crate::report::{Bench, Family, Res};

/// A start method (re-exported under a local name so main.rs does not depend on the API).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Method {
    Fork,
    Forkserver,
    Spawn,
}

impl Method {
    fn start_method(self) -> StartMethod {
        match self {
            Method::Fork => StartMethod::Fork,
            Method::Forkserver => StartMethod::Forkserver,
            Method::Spawn => StartMethod::Spawn,
        }
    }
}

// ------------------------------------------------------------- child targets ----

fn noop(_: ()) {}

/// The authkey of the `listener.roundtrip` figures.
const AUTHKEY: &[u8] = b"bench key";

/// Connects to a `Listener` as its `Client`, then echoes `total` messages.
fn echo_client((address, total): (Address, u64)) {
    let conn = Client::connect(address, Some(AUTHKEY)).expect("echo_client: connect");
    echo((conn, total));
}

/// Echoes `total` messages back on the same (duplex) connection.
fn echo(args: (Connection, u64)) {
    let (mut conn, total) = args;
    for _ in 0..total {
        let m = conn.recv_bytes().expect("echo: recv_bytes");
        conn.send_bytes(&m).expect("echo: send_bytes");
    }
}

/// Echoes `total` messages from one simplex connection to another.
fn echo_simplex(args: (Connection, Connection, u64)) {
    let (mut r, mut w, total) = args;
    for _ in 0..total {
        let m = r.recv_bytes().expect("echo_simplex: recv_bytes");
        w.send_bytes(&m).expect("echo_simplex: send_bytes");
    }
}

/// Per repetition: a one-byte marker (the receiver starts its clock after it), then `count`
/// messages of `size` bytes.
fn stream_sender(args: (Connection, u64, u64, u64)) {
    let (mut conn, size, count, reps) = args;
    let data = vec![b'x'; size as usize];
    for _ in 0..reps {
        conn.send_bytes(b"r").expect("stream_sender: marker");
        for _ in 0..count {
            conn.send_bytes(&data).expect("stream_sender: send_bytes");
        }
    }
}

pub(crate) fn start(mut p: Process) -> Res<Process> {
    p.start()?;
    Ok(p)
}

pub(crate) fn join_ok(p: &Process, what: &str) -> Res<()> {
    let code = p.join()?;
    if code != 0 {
        return Err(format!("{what}: child exited with code {code}").into());
    }
    Ok(())
}

/// One start+join per method, before anything is measured (starts the fork server).
pub(crate) fn warm_up() -> Res<()> {
    for m in [Method::Fork, Method::Forkserver, Method::Spawn] {
        let ctx = get_context(m.start_method());
        let p = start(ctx.process(noop, ()))?;
        join_ok(&p, "warm-up")?;
    }
    Ok(())
}

// ------------------------------------------------------------------- proc ----

struct StartJoin {
    method: Method,
    n: usize,
    suffix: &'static str,
}

impl Bench for StartJoin {
    fn name(&self) -> String {
        format!(
            "proc.start_join.{}{}",
            self.method.start_method().as_str(),
            self.suffix
        )
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let ctx = get_context(self.method.start_method());
        let t0 = Instant::now();
        for _ in 0..self.n {
            let mut p = ctx.process(noop, ());
            p.start()?;
            let code = p.join()?;
            if code != 0 {
                return Err(format!("{}: child exited with code {code}", self.name()).into());
            }
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
}

/// `proc.start_join.<method><suffix>`: start+join of a no-op child, `n` per repetition.
pub(crate) fn start_join(method: Method, n: usize, suffix: &'static str) -> Box<dyn Bench> {
    Box::new(StartJoin { method, n, suffix })
}

// -------------------------------------------------------------- round trip ----

/// The channel of a round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Channel {
    /// `pipe()`: a duplex pair of pipes.
    Duplex,
    /// `simplex()` twice, one per direction.
    Simplex,
    /// A `Listener`/`Client` connection with an authkey over a Unix socket path.
    ListenerUnix,
    /// A `Listener`/`Client` connection with an authkey over TCP loopback.
    ListenerTcp,
}

struct RoundTrip {
    channel: Channel,
    msg: usize,
    iters: usize,
    /// (send end, receive end, echo child).
    state: Option<(Connection, Option<Connection>, Process)>,
    buf: Vec<u8>,
}

impl RoundTrip {
    fn send(&mut self) -> Res<()> {
        let (a, _, _) = self.state.as_mut().ok_or("not set up")?;
        a.send_bytes(&self.buf)?;
        Ok(())
    }

    fn recv(&mut self) -> Res<()> {
        let (a, b, _) = self.state.as_mut().ok_or("not set up")?;
        let conn = b.as_mut().unwrap_or(a);
        let m = conn.recv_bytes()?;
        debug_assert_eq!(m.len(), self.msg);
        Ok(())
    }
}

impl Bench for RoundTrip {
    fn name(&self) -> String {
        let kind = match self.channel {
            Channel::Duplex => "pipe",
            Channel::Simplex => "pipe_simplex",
            Channel::ListenerUnix => "listener.roundtrip.unix",
            Channel::ListenerTcp => "listener.roundtrip.tcp",
        };
        match self.channel {
            Channel::Duplex | Channel::Simplex => format!("{kind}.roundtrip.{}B", self.msg),
            Channel::ListenerUnix | Channel::ListenerTcp => format!("{kind}.{}B", self.msg),
        }
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        let ctx = get_context(StartMethod::Forkserver);
        let total = (self.iters * rounds + 1) as u64; // +1: warm-up
        self.state = Some(if self.channel == Channel::Duplex {
            let (a, b) = multiproc_ipc::pipe()?;
            let p = start(ctx.process(echo, (b, total)))?;
            (a, None, p)
        } else if self.channel != Channel::Simplex {
            let address: Address = if self.channel == Channel::ListenerTcp {
                "127.0.0.1:0".parse()?
            } else {
                Address::arbitrary_unix()?
            };
            let listener = Listener::bind(address, Some(AUTHKEY))?;
            let args = (listener.address().clone(), total);
            let p = start(ctx.process(echo_client, args))?;
            (listener.accept()?, None, p)
        } else {
            let (r1, w1) = multiproc_ipc::simplex()?;
            let (r2, w2) = multiproc_ipc::simplex()?;
            let (r1, w2) = (r1.into_connection(), w2.into_connection());
            let p = start(ctx.process(echo_simplex, (r1, w2, total)))?;
            (w1.into_connection(), Some(r2.into_connection()), p)
        });
        self.send()?;
        self.recv()
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.iters {
            self.send()?;
            self.recv()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.iters as f64 * 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((_, _, p)) = self.state.take() {
            join_ok(&p, &self.name())?;
        }
        Ok(())
    }
}

/// `pipe.roundtrip.<msg>B` (duplex), `pipe_simplex.roundtrip.<msg>B`,
/// `listener.roundtrip.{unix,tcp}.<msg>B` (a connection accepted from a `Listener` with an
/// authkey, the child connected as its `Client`): `iters` round trips per repetition with a
/// forkserver-started echo child.
pub(crate) fn roundtrip(channel: Channel, msg: usize, iters: usize) -> Box<dyn Bench> {
    Box::new(RoundTrip {
        channel,
        msg,
        iters,
        state: None,
        buf: vec![b'm'; msg],
    })
}

// -------------------------------------------------------------- throughput ----

struct Throughput {
    duplex: bool,
    size: usize,
    count: usize,
    label: &'static str,
    /// (receive end, sender child).
    state: Option<(Connection, Process)>,
    buf: Vec<u8>,
}

impl Bench for Throughput {
    fn name(&self) -> String {
        let kind = if self.duplex { "pipe" } else { "pipe_simplex" };
        format!("{kind}.throughput.{}", self.label)
    }
    fn unit(&self) -> &'static str {
        "MB/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        let ctx = get_context(StartMethod::Forkserver);
        let (r, w) = if self.duplex {
            multiproc_ipc::pipe()?
        } else {
            let (r, w) = multiproc_ipc::simplex()?;
            (r.into_connection(), w.into_connection())
        };
        let args = (w, self.size as u64, self.count as u64, rounds as u64);
        let p = start(ctx.process(stream_sender, args))?;
        // The writer end went to the child; ours was dropped with `args` (Python: w.close()).
        self.buf = vec![0u8; self.size];
        self.state = Some((r, p));
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let (r, _) = self.state.as_mut().ok_or("not set up")?;
        let n = r.recv_bytes_into(&mut self.buf)?;
        if n != 1 {
            return Err(
                format!("{}: expected the 1-byte marker, got {n} bytes", self.name()).into(),
            );
        }
        let t0 = Instant::now();
        let mut got = 0usize;
        for _ in 0..self.count {
            got += r.recv_bytes_into(&mut self.buf)?;
        }
        let dt = t0.elapsed().as_secs_f64();
        if got != self.size * self.count || self.buf[self.size - 1] != b'x' {
            return Err(format!("{}: received {got} bytes or bad data", self.name()).into());
        }
        Ok(got as f64 / dt / 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((_, p)) = self.state.take() {
            join_ok(&p, &self.name())?;
        }
        Ok(())
    }
}

/// `pipe.throughput.<label>` (duplex) or `pipe_simplex.throughput.<label>`: a forkserver-started
/// child sends `count` messages of `size` bytes per repetition.
pub(crate) fn throughput(
    duplex: bool,
    size: usize,
    count: usize,
    label: &'static str,
) -> Box<dyn Bench> {
    Box::new(Throughput {
        duplex,
        size,
        count,
        label,
        state: None,
        buf: Vec::new(),
    })
}

// ------------------------------------------------------------------ start gate ----

/// mp_bench.py's start gate: the children report ready at a `Barrier(n + 1)` and wait for an
/// `Event`; the parent passes the barrier, reads the clock, then sets the event, so no child
/// work can precede the clock.
pub(crate) type Gate = (Barrier, Event);

pub(crate) fn make_gate(children: usize) -> Res<Gate> {
    Ok((Barrier::new(children as u32 + 1, None)?, Event::new()?))
}

pub(crate) fn gate_child(gate: &Gate) {
    gate.0.wait().expect("gate: broken barrier");
    gate.1.wait();
}

pub(crate) fn gate_open(gate: &Gate) -> Res<Instant> {
    gate.0.wait()?;
    let t0 = Instant::now();
    gate.1.set();
    Ok(t0)
}

// ------------------------------------------------------------------- locks ----

/// What an uncontended figure acquires and releases.
enum Held {
    Lock(Lock),
    RLock(RLock),
    Value(Value<i32>),
}

/// The lock figures measured in one process, as mp_bench.py's `b_lock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Uncontended {
    /// `lock.uncontended.mp_Lock.acquire_release`: a [`Lock`] guard taken and dropped.
    Lock,
    /// `lock.uncontended.mp_RLock.acquire_release`: the same on an [`RLock`].
    RLock,
    /// `value.get_lock_increment.uncontended`: `*v.lock() += 1` on a `Value<i32>` (Python's
    /// `with v.get_lock(): v.value += 1` on a `Value('i')`; its lock is an `RLock` in both).
    ValueIncrement,
}

struct UncontendedBench {
    what: Uncontended,
    n: usize,
    held: Option<Held>,
}

impl Bench for UncontendedBench {
    fn name(&self) -> String {
        match self.what {
            Uncontended::Lock => "lock.uncontended.mp_Lock.acquire_release".into(),
            Uncontended::RLock => "lock.uncontended.mp_RLock.acquire_release".into(),
            Uncontended::ValueIncrement => "value.get_lock_increment.uncontended".into(),
        }
    }
    fn unit(&self) -> &'static str {
        "ns"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.held = Some(match self.what {
            Uncontended::Lock => Held::Lock(Lock::new()?),
            Uncontended::RLock => Held::RLock(RLock::new()?),
            Uncontended::ValueIncrement => Held::Value(Value::new(0i32)?),
        });
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let n = self.n;
        let t0 = Instant::now();
        match self.held.as_ref().ok_or("not set up")? {
            Held::Lock(l) => {
                for _ in 0..n {
                    drop(l.acquire().unwrap_or_else(|dead| dead.into_guard()));
                }
            }
            Held::RLock(l) => {
                for _ in 0..n {
                    drop(l.acquire().unwrap_or_else(|dead| dead.into_guard()));
                }
            }
            Held::Value(v) => {
                for _ in 0..n {
                    *v.lock() += 1;
                }
            }
        }
        Ok(t0.elapsed().as_secs_f64() / n as f64 * 1e9)
    }
}

/// An uncontended lock figure, `n` operations per repetition (mp_bench.py: 200,000 for the
/// locks, 100,000 for the `Value`).
pub(crate) fn uncontended(what: Uncontended, n: usize) -> Box<dyn Bench> {
    Box::new(UncontendedBench {
        what,
        n,
        held: None,
    })
}

fn lock_incr_child(args: (Value<i32>, u64, Gate, Event)) {
    let (v, n, gate, done) = args;
    gate_child(&gate);
    for _ in 0..n {
        *v.lock() += 1;
    }
    done.set();
}

struct Contended {
    n: usize,
}

impl Bench for Contended {
    fn name(&self) -> String {
        "lock.contended2p.value_get_lock_increment".into()
    }
    fn unit(&self) -> &'static str {
        "ops/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let n = self.n;
        let v = Value::new(0i32)?;
        let (gate, done) = (make_gate(1)?, Event::new()?);
        let ctx = get_context(StartMethod::Forkserver);
        let p = start(ctx.process(
            lock_incr_child,
            (v.clone(), n as u64, gate.clone(), done.clone()),
        ))?;
        let t0 = gate_open(&gate)?;
        for _ in 0..n {
            *v.lock() += 1;
        }
        done.wait();
        let dt = t0.elapsed().as_secs_f64();
        join_ok(&p, &self.name())?;
        let got = v.get();
        if got != 2 * n as i32 {
            return Err(format!("{}: counter {got}, expected {}", self.name(), 2 * n).into());
        }
        Ok(2.0 * n as f64 / dt)
    }
}

/// `lock.contended2p.value_get_lock_increment`: the parent and a child (started before the
/// clock, released by the gate) each do `*v.lock() += 1` `n` times on one fresh `Value<i32>`
/// per repetition; ops/s over both, until the child's "done" event.
pub(crate) fn contended(n: usize) -> Box<dyn Bench> {
    Box::new(Contended { n })
}

// --------------------------------------------------------------- ping-pong ----

/// The synchronisation ping-pongs of mp_bench.py's `b_sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PingPong {
    /// `event.pingpong`: the parent sets `e1` and waits for `e2` (then clears it); the child
    /// waits for `e1`, clears it, sets `e2`.
    Event,
    /// `barrier2.wait`: both processes wait at one `Barrier(2)`.
    Barrier,
    /// `condition.pingpong`: a turn variable under a `Condition` (over an `RLock`), each side
    /// sets it, notifies and waits for its turn back.
    Condition,
    /// `queue.roundtrip.int` / `simplequeue.roundtrip.int`: the parent puts `1` on one queue;
    /// the child gets it and puts it on a second queue, where the parent gets it.
    Queue(QueueKind),
}

enum PingState {
    Event(Event, Event),
    Barrier(Barrier),
    Condition(Condition, RawValue<i32>),
    Queue(Queue<i64>, Queue<i64>),
    SimpleQueue(Box<(SimpleQueue<i64>, SimpleQueue<i64>)>),
}

fn event_child(args: (Event, Event, u64)) {
    let (e1, e2, total) = args;
    for _ in 0..total {
        e1.wait();
        e1.clear();
        e2.set();
    }
}

fn barrier_child(args: (Barrier, u64)) {
    let (b, total) = args;
    for _ in 0..total {
        b.wait().expect("barrier_child: broken barrier");
    }
}

fn cond_child(args: (Condition, RawValue<i32>, u64)) {
    let (cond, turn, total) = args;
    for _ in 0..total {
        let _g = cond
            .lock()
            .acquire()
            .unwrap_or_else(|dead| dead.into_guard());
        while turn.get() != 1 {
            cond.wait().expect("cond_child: wait");
        }
        turn.set(0);
        cond.notify(1).expect("cond_child: notify");
    }
}

struct SyncRoundTrip {
    what: PingPong,
    iters: usize,
    state: Option<(PingState, Process)>,
}

impl SyncRoundTrip {
    fn round_trip(&self) -> Res<()> {
        let (st, _) = self.state.as_ref().ok_or("not set up")?;
        match st {
            PingState::Event(e1, e2) => {
                e1.set();
                e2.wait();
                e2.clear();
            }
            PingState::Barrier(b) => {
                b.wait()?;
            }
            PingState::Condition(cond, turn) => {
                let _g = cond
                    .lock()
                    .acquire()
                    .unwrap_or_else(|dead| dead.into_guard());
                turn.set(1);
                cond.notify(1)?;
                while turn.get() != 0 {
                    cond.wait()?;
                }
            }
            PingState::Queue(a, b) => int_round_trip(a, b)?,
            PingState::SimpleQueue(ab) => int_round_trip(&ab.0, &ab.1)?,
        }
        Ok(())
    }
}

/// Puts `1` on `a`, gets it back from `b`.
fn int_round_trip<Q: BenchQueue<i64>>(a: &Q, b: &Q) -> Res<()> {
    a.put_item(1);
    let back = b.get_item()?;
    if back != 1 {
        return Err(format!("queue round trip: got {back} back").into());
    }
    Ok(())
}

/// Two new queues and an echo child between them (`total` round trips).
fn start_queue_echo<Q: BenchQueue<i64>>(
    ctx: &multiproc_core::Context,
    total: u64,
) -> Res<(Q, Q, Process)> {
    let (a, b) = (Q::create()?, Q::create()?);
    let p = start(ctx.process(q_echo::<Q>, (a.dup(), b.dup(), total)))?;
    Ok((a, b, p))
}

impl Bench for SyncRoundTrip {
    fn name(&self) -> String {
        match self.what {
            PingPong::Queue(kind) => format!("{}.roundtrip.int", kind.label()),
            PingPong::Event => "event.pingpong".into(),
            PingPong::Barrier => "barrier2.wait".into(),
            PingPong::Condition => "condition.pingpong".into(),
        }
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        let ctx = get_context(StartMethod::Forkserver);
        let total = (self.iters * rounds + 1) as u64; // +1: warm-up
        self.state = Some(match self.what {
            PingPong::Event => {
                let (e1, e2) = (Event::new()?, Event::new()?);
                let p = start(ctx.process(event_child, (e1.clone(), e2.clone(), total)))?;
                (PingState::Event(e1, e2), p)
            }
            PingPong::Barrier => {
                let b = Barrier::new(2, None)?;
                let p = start(ctx.process(barrier_child, (b.clone(), total)))?;
                (PingState::Barrier(b), p)
            }
            PingPong::Condition => {
                let (cond, turn) = (Condition::new()?, RawValue::new(0i32)?);
                let p = start(ctx.process(cond_child, (cond.clone(), turn.clone(), total)))?;
                (PingState::Condition(cond, turn), p)
            }
            PingPong::Queue(QueueKind::Queue) => {
                let (a, b, p) = start_queue_echo(&ctx, total)?;
                (PingState::Queue(a, b), p)
            }
            PingPong::Queue(QueueKind::Simple) => {
                let (a, b, p) = start_queue_echo(&ctx, total)?;
                (PingState::SimpleQueue(Box::new((a, b))), p)
            }
        });
        self.round_trip()
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.iters {
            self.round_trip()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.iters as f64 * 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((_, p)) = self.state.take() {
            join_ok(&p, &self.name())?;
        }
        Ok(())
    }
}

/// A ping-pong with a forkserver-started child living across rounds; us per round trip
/// (per wait for the barrier), `iters` per repetition, one warm-up round trip (the queue
/// round trips are mp_bench.py's `b_queue` ones).
pub(crate) fn ping_pong(what: PingPong, iters: usize) -> Box<dyn Bench> {
    Box::new(SyncRoundTrip {
        what,
        iters,
        state: None,
    })
}

// ------------------------------------------------------------ SharedMemory ----

struct ShmOps {
    n: usize,
}

impl Bench for ShmOps {
    fn name(&self) -> String {
        "shm.create_1MiB".into()
    }
    fn names(&self) -> Vec<String> {
        [
            "shm.create_1MiB",
            "shm.attach_1MiB",
            "shm.close_both_unlink",
        ]
        .map(String::from)
        .to_vec()
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        // Warm-up: starts the resource tracker (as mp_bench.py's first segment does).
        let s = SharedMemory::create(None, 4096)?;
        s.unlink()?;
        Ok(())
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        const SIZE: usize = 1 << 20;
        let (mut tc, mut ta, mut tu) = (0.0, 0.0, 0.0);
        for _ in 0..self.n {
            let t0 = Instant::now();
            let mut a = SharedMemory::create(None, SIZE)?;
            let t1 = Instant::now();
            let b = SharedMemory::attach(a.name())?;
            let t2 = Instant::now();
            drop(b);
            a.close();
            a.unlink()?;
            drop(a);
            let t3 = Instant::now();
            tc += (t1 - t0).as_secs_f64();
            ta += (t2 - t1).as_secs_f64();
            tu += (t3 - t2).as_secs_f64();
        }
        let per = |t: f64| t / self.n as f64 * 1e6;
        Ok(vec![per(tc), per(ta), per(tu)])
    }
}

/// `shm.create_1MiB` (`SharedMemory::create(None, 1 MiB)`), `shm.attach_1MiB`
/// (`SharedMemory::attach(name)`), `shm.close_both_unlink` (drop the attached one, close and
/// unlink the created one); us each, `n` per repetition (mp_bench.py: 200).
pub(crate) fn shm_ops(n: usize) -> Box<dyn Bench> {
    Box::new(ShmOps { n })
}

fn shm_write_child(args: (String, u64, Gate, Connection)) {
    let (name, size, gate, mut conn) = args;
    let size = size as usize;
    let shm = SharedMemory::attach(&name).expect("shm_write_child: attach");
    let src = vec![5u8; size];
    gate_child(&gate);
    let t0 = Instant::now();
    // SAFETY: the parent does not touch the segment until this child reports its time.
    let dst = unsafe { shm.as_mut_slice() }.expect("shm_write_child: mapping");
    dst[..size].copy_from_slice(&src);
    let wtime = t0.elapsed().as_secs_f64();
    conn.send(&wtime).expect("shm_write_child: send");
}

struct ShmBig {
    size: usize,
    dst: Vec<u8>,
}

impl Bench for ShmBig {
    fn name(&self) -> String {
        "shm.child_write_256MiB_fresh".into()
    }
    fn names(&self) -> Vec<String> {
        [
            "shm.child_write_256MiB_fresh",
            "shm.parent_read_256MiB_after_child",
            "shm.write_then_read_256MiB_end_to_end",
        ]
        .map(String::from)
        .to_vec()
    }
    fn unit(&self) -> &'static str {
        "GB/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.dst = vec![1u8; self.size]; // pre-touched destination
        Ok(())
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        let size = self.size;
        let mut shm = SharedMemory::create(None, size)?;
        let (mut r, w) = multiproc_ipc::simplex()?;
        let w = w.into_connection();
        let gate = make_gate(1)?;
        let ctx = get_context(StartMethod::Forkserver);
        let p = start(ctx.process(
            shm_write_child,
            (shm.name().to_string(), size as u64, gate.clone(), w),
        ))?;
        let t0 = gate_open(&gate)?;
        let wtime: f64 = r.recv()?;
        let t1 = Instant::now();
        // SAFETY: the child has written everything and writes no more (it reported its time).
        let src = unsafe { shm.as_slice() }?;
        self.dst.copy_from_slice(&src[..size]);
        let t2 = Instant::now();
        join_ok(&p, &self.name())?;
        let ok = self.dst[12345] == 5;
        shm.close();
        shm.unlink()?;
        self.dst[12345] = 1;
        if !ok {
            return Err(format!("{}: bad data", self.name()).into());
        }
        let gbs = |secs: f64| size as f64 / secs / 1e9;
        Ok(vec![
            gbs(wtime),
            gbs((t2 - t1).as_secs_f64()),
            gbs((t2 - t0).as_secs_f64()),
        ])
    }
}

/// `shm.child_write_256MiB_fresh`, `shm.parent_read_256MiB_after_child`,
/// `shm.write_then_read_256MiB_end_to_end`: per repetition a fresh `SharedMemory` of `size`
/// bytes; a child attaches it by name and copies a pre-touched buffer into it through the
/// zero-copy view (timed by the child); the parent then copies it into a pre-touched buffer.
/// GB/s (10^9 bytes): the child's copy; the parent's from the child's report to the end of its
/// copy; from the gate's opening to the end of the parent's copy.
pub(crate) fn shm_big(size: usize) -> Box<dyn Bench> {
    Box::new(ShmBig {
        size,
        dst: Vec::new(),
    })
}

// ------------------------------------------------------------------- arrays ----

/// How a child fills an array of 10^6 doubles (mp_bench.py's `array.fill_from_child.1e6d.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// `slice_from_list`: Python's `arr[:] = list` (one lock, a slice store): here
    /// `a.lock().copy_from_slice(&vec)` on an `Array<f64>`.
    SliceFromList,
    /// `elementwise_raw`: Python's `raw[i] = i` on the unlocked ctypes array: here
    /// `RawArray::set(i, x)` element by element.
    ElementwiseRaw,
    /// `memoryview_bulk`: Python's byte copy from an `array('d')` into a memoryview of the
    /// array: here a byte copy into the locked `Array<f64>`'s elements viewed as bytes.
    MemoryviewBulk,
}

impl Fill {
    fn label(self) -> &'static str {
        match self {
            Fill::SliceFromList => "slice_from_list",
            Fill::ElementwiseRaw => "elementwise_raw",
            Fill::MemoryviewBulk => "memoryview_bulk",
        }
    }
}

fn array_fill_child(args: (Array<f64>, u64, bool, Gate, Event)) {
    let (arr, n, bytes, gate, done) = args;
    if bytes {
        // The doubles' bytes, built before the gate (Python: an array('d') viewed as bytes).
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f64).to_ne_bytes()).collect();
        gate_child(&gate);
        let mut g = arr.lock();
        bytemuck::cast_slice_mut::<f64, u8>(&mut g).copy_from_slice(&data);
    } else {
        let data: Vec<f64> = (0..n).map(|i| i as f64).collect();
        gate_child(&gate);
        arr.lock().copy_from_slice(&data);
    }
    done.set();
}

fn raw_array_fill_child(args: (RawArray<f64>, u64, Gate, Event)) {
    let (arr, n, gate, done) = args;
    gate_child(&gate);
    for i in 0..n as usize {
        arr.set(i, i as f64);
    }
    done.set();
}

struct ArrayFill {
    mode: Fill,
    n: usize,
}

impl Bench for ArrayFill {
    fn name(&self) -> String {
        format!("array.fill_from_child.1e6d.{}", self.mode.label())
    }
    fn unit(&self) -> &'static str {
        "ms"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let n = self.n;
        let ctx = get_context(StartMethod::Forkserver);
        let (gate, done) = (make_gate(1)?, Event::new()?);
        let (p, last): (Process, Box<dyn Fn() -> f64>) = match self.mode {
            Fill::ElementwiseRaw => {
                let arr = RawArray::<f64>::zeroed(n)?;
                let args = (arr.clone(), n as u64, gate.clone(), done.clone());
                let p = start(ctx.process(raw_array_fill_child, args))?;
                (p, Box::new(move || arr.get(n - 1)))
            }
            mode => {
                let arr = Array::<f64>::zeroed(n)?;
                let bytes = mode == Fill::MemoryviewBulk;
                let args = (arr.clone(), n as u64, bytes, gate.clone(), done.clone());
                let p = start(ctx.process(array_fill_child, args))?;
                (p, Box::new(move || arr.get(n - 1)))
            }
        };
        let t0 = gate_open(&gate)?;
        done.wait();
        let dt = t0.elapsed().as_secs_f64();
        join_ok(&p, &self.name())?;
        if last() != (n - 1) as f64 {
            return Err(format!("{}: bad fill", self.name()).into());
        }
        Ok(dt * 1e3)
    }
}

/// `array.fill_from_child.1e6d.<mode>`: per repetition a fresh array of `n` doubles; a child
/// (started before the clock, released by the gate, data prepared before it) fills it and sets
/// an event; ms from the gate's opening to the event.
pub(crate) fn array_fill(mode: Fill, n: usize) -> Box<dyn Bench> {
    Box::new(ArrayFill { mode, n })
}

// ------------------------------------------------------------------- queues ----

/// Which queue a queue figure goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueKind {
    /// [`Queue`] (`queue.*`).
    Queue,
    /// [`SimpleQueue`] (`simplequeue.*`).
    Simple,
}

impl QueueKind {
    fn label(self) -> &'static str {
        match self {
            QueueKind::Queue => "queue",
            QueueKind::Simple => "simplequeue",
        }
    }
}

/// `put` and `get` of either queue, for the generic child targets below.
trait BenchQueue<T>: Serialize + DeserializeOwned + Send + 'static + Sized {
    fn create() -> Res<Self>;
    fn put_item(&self, v: T);
    fn get_item(&self) -> Res<T>;
    fn dup(&self) -> Self;
}

impl<T: Serialize + DeserializeOwned + 'static> BenchQueue<T> for Queue<T> {
    fn create() -> Res<Self> {
        Ok(Queue::new()?)
    }
    fn put_item(&self, v: T) {
        self.put(v).map_err(|e| e.to_string()).expect("put");
    }
    fn get_item(&self) -> Res<T> {
        Ok(self.get()?)
    }
    fn dup(&self) -> Self {
        self.clone()
    }
}

impl<T: Serialize + DeserializeOwned + 'static> BenchQueue<T> for SimpleQueue<T> {
    fn create() -> Res<Self> {
        Ok(SimpleQueue::new()?)
    }
    fn put_item(&self, v: T) {
        self.put(v).map_err(|e| e.to_string()).expect("put");
    }
    fn get_item(&self) -> Res<T> {
        Ok(self.get()?)
    }
    fn dup(&self) -> Self {
        self.clone()
    }
}

/// mp_bench.py's `_q_producer`: `n` ints, then `None`.
fn q_producer<Q: BenchQueue<Option<i64>>>(args: (Q, u64, Gate)) {
    let (q, n, gate) = args;
    gate_child(&gate);
    for i in 0..n as i64 {
        q.put_item(Some(i));
    }
    q.put_item(None);
}

/// mp_bench.py's `_q_echo`: gets from one queue and puts on the other, `total` times.
fn q_echo<Q: BenchQueue<i64>>(args: (Q, Q, u64)) {
    let (qin, qout, total) = args;
    for _ in 0..total {
        qout.put_item(qin.get_item().expect("q_echo: get"));
    }
}

struct QueueThroughput {
    kind: QueueKind,
    producers: usize,
    total: usize,
}

impl QueueThroughput {
    fn run<Q: BenchQueue<Option<i64>>>(&self) -> Res<f64> {
        let per = self.total / self.producers;
        let q = Q::create()?;
        let gate = make_gate(self.producers)?;
        let ctx = get_context(StartMethod::Forkserver);
        let mut ps = Vec::with_capacity(self.producers);
        for _ in 0..self.producers {
            let args = (q.dup(), per as u64, gate.clone());
            ps.push(start(ctx.process(q_producer::<Q>, args))?);
        }
        let t0 = gate_open(&gate)?;
        let (mut got, mut ended) = (0usize, 0usize);
        while ended < self.producers {
            match q.get_item()? {
                None => ended += 1,
                Some(_) => got += 1,
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        for p in &ps {
            join_ok(p, &self.name())?;
        }
        if got != per * self.producers {
            return Err(format!("{}: got {got} items", self.name()).into());
        }
        Ok(got as f64 / dt)
    }
}

impl Bench for QueueThroughput {
    fn name(&self) -> String {
        format!("{}.throughput.{}p1c", self.kind.label(), self.producers)
    }
    fn unit(&self) -> &'static str {
        "items/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        match self.kind {
            QueueKind::Queue => self.run::<Queue<Option<i64>>>(),
            QueueKind::Simple => self.run::<SimpleQueue<Option<i64>>>(),
        }
    }
}

/// `queue.throughput.<p>p1c` / `simplequeue.throughput.<p>p1c`: per repetition a fresh queue
/// and `producers` forkserver-started children (released by the gate) putting `total` ints in
/// all, then a `None` each; the parent gets until it has seen every `None`; items/s
/// (mp_bench.py's `_queue_throughput`).
pub(crate) fn queue_throughput(kind: QueueKind, producers: usize, total: usize) -> Box<dyn Bench> {
    Box::new(QueueThroughput {
        kind,
        producers,
        total,
    })
}

/// A byte string encoded as one (`serialize_bytes`: a length and the bytes, copied whole),
/// what `serde_bytes::ByteBuf` is: the counterpart of Python's `bytes`. (A `Vec<u8>` is a
/// sequence to serde, encoded and decoded one byte at a time.) Shared, as a Python `bytes`
/// object is: putting the same one again copies nothing before the encoding.
pub(crate) struct Bytes(pub(crate) Arc<Vec<u8>>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(Arc::new(v.to_vec())))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(Arc::new(v)))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Puts `count` items of `size` bytes (built before the gate).
fn q_big_sender(args: (Queue<Bytes>, u64, u64, Gate)) {
    let (q, size, count, gate) = args;
    let data = Arc::new(vec![b'x'; size as usize]);
    gate_child(&gate);
    for _ in 0..count {
        q.put_item(Bytes(Arc::clone(&data)));
    }
}

struct QueueBig {
    size: usize,
    count: usize,
}

impl Bench for QueueBig {
    fn name(&self) -> String {
        "queue.item_1MiB".into()
    }
    fn unit(&self) -> &'static str {
        "GB/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let q: Queue<Bytes> = Queue::new()?;
        let gate = make_gate(1)?;
        let ctx = get_context(StartMethod::Forkserver);
        let args = (q.clone(), self.size as u64, self.count as u64, gate.clone());
        let p = start(ctx.process(q_big_sender, args))?;
        let t0 = gate_open(&gate)?;
        let mut got = 0usize;
        for _ in 0..self.count {
            let b = q.get_item()?;
            if b.0.len() != self.size || b.0[self.size - 1] != b'x' {
                return Err(format!("{}: bad item", self.name()).into());
            }
            got += b.0.len();
        }
        let dt = t0.elapsed().as_secs_f64();
        join_ok(&p, &self.name())?;
        Ok(got as f64 / dt / 1e9)
    }
}

/// `queue.item_1MiB`: per repetition a fresh `Queue` and a forkserver-started child (released
/// by the gate) putting `count` items of `size` bytes ([`Bytes`], as Python's `bytes`); the
/// parent gets them; GB/s (10^9 bytes) from the gate's opening to the last `get`.
pub(crate) fn queue_big(size: usize, count: usize) -> Box<dyn Bench> {
    Box::new(QueueBig { size, count })
}
