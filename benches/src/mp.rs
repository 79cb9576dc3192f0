//! multiproc's own figures, measured as the reference harness's `mp_bench.py` measures
//! CPython's (same figure names, message counts and timed regions).
//!
//! - `proc.start_join.<method>`: create, start and join a process running a no-op target; us
//!   per process (the `Process` construction is inside the timed loop, as in Python).
//! - `pipe.roundtrip.64B` / `pipe_simplex.roundtrip.64B`: the parent sends 64 bytes, a child
//!   echoes them; us per round trip; one warm-up round trip before the first repetition.
//! - `pipe.throughput.<size>` / `pipe_simplex.throughput.<size>`: a child sends a one-byte
//!   marker then `count` messages per repetition; the parent's clock starts after the marker;
//!   MB/s (10^6 bytes) over the messages received (into one reused buffer).
//!
//! Pipe children are started with the forkserver method (multiproc's default).

use multiproc_core::{Process, StartMethod, get_context};
use multiproc_ipc::Connection;
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

fn start(mut p: Process) -> Res<Process> {
    p.start()?;
    Ok(p)
}

fn join_ok(p: &Process, what: &str) -> Res<()> {
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

struct RoundTrip {
    duplex: bool,
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
        let kind = if self.duplex { "pipe" } else { "pipe_simplex" };
        format!("{kind}.roundtrip.{}B", self.msg)
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
        self.state = Some(if self.duplex {
            let (a, b) = multiproc_ipc::pipe(true)?;
            let p = start(ctx.process(echo, (b, total)))?;
            (a, None, p)
        } else {
            let (r1, w1) = multiproc_ipc::pipe(false)?;
            let (r2, w2) = multiproc_ipc::pipe(false)?;
            let p = start(ctx.process(echo_simplex, (r1, w2, total)))?;
            (w1, Some(r2), p)
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

/// `pipe.roundtrip.<msg>B` (duplex) or `pipe_simplex.roundtrip.<msg>B`: `iters` round trips
/// per repetition with a forkserver-started echo child.
pub(crate) fn roundtrip(duplex: bool, msg: usize, iters: usize) -> Box<dyn Bench> {
    Box::new(RoundTrip {
        duplex,
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
        let (r, w) = multiproc_ipc::pipe(self.duplex)?;
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
