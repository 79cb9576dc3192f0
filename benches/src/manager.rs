//! multiproc's manager figures (issue 9), measured as the reference harness's `mp_bench.py`
//! measures CPython's `Manager` (`b_manager`): same names, counts and timed regions.
//!
//! - `manager.dict.{set,get}_from_child`: a child does `d.set("k", &i)` 2,000 times, then
//!   `d.get("k")` 2,000 times, on a `DictProxy<String, u64>` of one manager, timing itself; us
//!   per op (mp_bench.py's `_mgr_dict_child`).
//! - `manager.queue.{put,get}_from_child`: the same with `q.put(&i)` then `q.get()` on a
//!   `QueueProxy<u64>` (`_mgr_queue_child`).
//! - `manager.list.append_from_child`: the same shape with `l.append(&i)` on a `ListProxy<u64>`
//!   (not in mp_bench.py; the twin has it).
//! - `manager.dict.set_8clients`: per repetition a fresh dict proxy and 8 children (started
//!   before the clock, released by the start gate) each setting its own key 2,000 times; ops/s
//!   over all of them from the gate's opening to the last child's "done" message.
//! - `manager.start_shutdown`: `Manager::builder().start_method(Fork).start()` then
//!   `shutdown()`; ms each.
//!
//! The manager of the per-op figures is started with the fork method, as mp_bench.py's
//! (`get_context("fork").Manager()`); its children with forkserver, multiproc's default (which
//! only changes what happens before the clock starts), and they receive the proxies as
//! arguments.
//!
//! One difference from mp_bench.py, outside the timed region: its child runs its repetitions
//! back to back; here the child waits for a one-byte "go" from the parent before each, so that
//! its repetitions run in the rounds of [`run_rotated`](crate::report::run_rotated), one after
//! the other with the raw limits, and never overlap another figure's.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use multiproc_core::{Process, StartMethod, get_context};
use multiproc_ipc::{Reader, Writer};
use multiproc_manager::{DictProxy, ListProxy, Manager, QueueProxy};

use crate::mp::{Gate, gate_child, gate_open, join_ok, make_gate, start};
use crate::report::{Bench, Family, Res};

/// A manager started with the fork method (mp_bench.py's `get_context("fork").Manager()`).
fn fork_manager() -> Res<Manager> {
    Ok(Manager::builder().start_method(StartMethod::Fork).start()?)
}

/// The manager shared by the figures of one group.
pub(crate) fn new_manager() -> Res<Rc<Manager>> {
    Ok(Rc::new(fork_manager()?))
}

// ------------------------------------------------------------- child targets ----

/// Waits for the parent's "go" before a repetition; `false` when the parent is gone.
fn wait_go(go: &mut Reader) -> bool {
    go.recv_bytes().is_ok()
}

fn per_op_us(t0: Instant, t1: Instant, n: u64) -> f64 {
    (t1 - t0).as_secs_f64() / n as f64 * 1e6
}

/// mp_bench.py's `_mgr_dict_child`, paced by the parent's "go".
fn mgr_dict_child(args: (DictProxy<String, u64>, Reader, Writer, u64, u64)) {
    let (d, mut go, mut conn, n, reps) = args;
    d.set("k", &0).expect("mgr_dict_child: set");
    black_box(d.get("k").expect("mgr_dict_child: get"));
    for _ in 0..reps {
        if !wait_go(&mut go) {
            return;
        }
        let t0 = Instant::now();
        for i in 0..n {
            d.set("k", &i).expect("mgr_dict_child: set");
        }
        let t1 = Instant::now();
        for _ in 0..n {
            black_box(d.get("k").expect("mgr_dict_child: get"));
        }
        let t2 = Instant::now();
        conn.send(&(per_op_us(t0, t1, n), per_op_us(t1, t2, n)))
            .expect("mgr_dict_child: send");
    }
}

/// mp_bench.py's `_mgr_queue_child`, paced by the parent's "go".
fn mgr_queue_child(args: (QueueProxy<u64>, Reader, Writer, u64, u64)) {
    let (q, mut go, mut conn, n, reps) = args;
    q.put(&0).expect("mgr_queue_child: put");
    black_box(q.get().expect("mgr_queue_child: get"));
    for _ in 0..reps {
        if !wait_go(&mut go) {
            return;
        }
        let t0 = Instant::now();
        for i in 0..n {
            q.put(&i).expect("mgr_queue_child: put");
        }
        let t1 = Instant::now();
        for _ in 0..n {
            black_box(q.get().expect("mgr_queue_child: get"));
        }
        let t2 = Instant::now();
        conn.send(&(per_op_us(t0, t1, n), per_op_us(t1, t2, n)))
            .expect("mgr_queue_child: send");
    }
}

/// The twin's `_mgr_list_child`: the shape of [`mgr_dict_child`] with `append`.
fn mgr_list_child(args: (ListProxy<u64>, Reader, Writer, u64, u64)) {
    let (l, mut go, mut conn, n, reps) = args;
    l.append(&0).expect("mgr_list_child: append");
    for _ in 0..reps {
        if !wait_go(&mut go) {
            return;
        }
        let t0 = Instant::now();
        for i in 0..n {
            l.append(&i).expect("mgr_list_child: append");
        }
        let t1 = Instant::now();
        conn.send(&(per_op_us(t0, t1, n), 0.0))
            .expect("mgr_list_child: send");
    }
}

/// The twin's `_mgr_dict_client`: one of 8 clients setting its own key `n` times, released by
/// the start gate; reports `n` when done.
fn mgr_dict_client(args: (DictProxy<String, u64>, String, u64, Gate, Writer)) {
    let (d, key, n, gate, mut conn) = args;
    d.set(key.as_str(), &u64::MAX)
        .expect("mgr_dict_client: set"); // connected before the gate
    gate_child(&gate);
    for i in 0..n {
        d.set(key.as_str(), &i).expect("mgr_dict_client: set");
    }
    conn.send(&n).expect("mgr_dict_client: send");
}

// ------------------------------------------------------- timed by the child ----

/// Which proxy a child-timed figure goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FromChild {
    /// `manager.dict.{set,get}_from_child`.
    Dict,
    /// `manager.queue.{put,get}_from_child`.
    Queue,
    /// `manager.list.append_from_child`.
    List,
}

struct ChildTimed {
    mgr: Rc<Manager>,
    what: FromChild,
    n: usize,
    /// (go, results, child).
    state: Option<(Writer, Reader, Process)>,
}

impl Bench for ChildTimed {
    fn name(&self) -> String {
        match self.what {
            FromChild::Dict => "manager.dict.set_from_child",
            FromChild::Queue => "manager.queue.put_from_child",
            FromChild::List => "manager.list.append_from_child",
        }
        .into()
    }
    fn names(&self) -> Vec<String> {
        match self.what {
            FromChild::Dict => vec![
                "manager.dict.set_from_child".into(),
                "manager.dict.get_from_child".into(),
            ],
            FromChild::Queue => vec![
                "manager.queue.put_from_child".into(),
                "manager.queue.get_from_child".into(),
            ],
            FromChild::List => vec![self.name()],
        }
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        let (go_r, go_w) = multiproc_ipc::simplex()?;
        let (res_r, res_w) = multiproc_ipc::simplex()?;
        let ctx = get_context(StartMethod::Forkserver);
        let (n, reps) = (self.n as u64, rounds as u64);
        let p = match self.what {
            FromChild::Dict => {
                let d: DictProxy<String, u64> = self.mgr.dict()?;
                ctx.process(mgr_dict_child, (d, go_r, res_w, n, reps))
            }
            FromChild::Queue => {
                let q: QueueProxy<u64> = self.mgr.queue()?;
                ctx.process(mgr_queue_child, (q, go_r, res_w, n, reps))
            }
            FromChild::List => {
                let l: ListProxy<u64> = self.mgr.list()?;
                ctx.process(mgr_list_child, (l, go_r, res_w, n, reps))
            }
        };
        self.state = Some((go_w, res_r, start(p)?));
        Ok(())
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        let (go, res, _) = self.state.as_mut().ok_or("not set up")?;
        go.send_bytes(b"g")?;
        let (a, b): (f64, f64) = res.recv()?;
        Ok(match self.what {
            FromChild::List => vec![a],
            FromChild::Dict | FromChild::Queue => vec![a, b],
        })
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((go, _, p)) = self.state.take() {
            drop(go);
            join_ok(&p, &self.name())?;
        }
        Ok(())
    }
}

/// `manager.{dict,queue,list}.*_from_child`: one child for all rounds, `n` ops of each kind per
/// round, timed by the child (mp_bench.py: 2,000).
pub(crate) fn from_child(mgr: &Rc<Manager>, what: FromChild, n: usize) -> Box<dyn Bench> {
    Box::new(ChildTimed {
        mgr: Rc::clone(mgr),
        what,
        n,
        state: None,
    })
}

// ------------------------------------------------------------- 8 clients ----

/// The children of `manager.dict.set_8clients`.
pub(crate) const CLIENTS: usize = 8;

struct DictClients {
    mgr: Rc<Manager>,
    clients: usize,
    n: usize,
}

impl Bench for DictClients {
    fn name(&self) -> String {
        format!("manager.dict.set_{}clients", self.clients)
    }
    fn unit(&self) -> &'static str {
        "ops/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let d: DictProxy<String, u64> = self.mgr.dict()?;
        let gate = make_gate(self.clients)?;
        let ctx = get_context(StartMethod::Forkserver);
        let n = self.n as u64;
        let mut conns = Vec::with_capacity(self.clients);
        let mut ps = Vec::with_capacity(self.clients);
        for c in 0..self.clients {
            let (r, w) = multiproc_ipc::simplex()?;
            let args = (d.clone(), format!("k{c}"), n, gate.clone(), w);
            ps.push(start(ctx.process(mgr_dict_client, args))?);
            conns.push(r);
        }
        let t0 = gate_open(&gate)?;
        let mut done = 0u64;
        for r in &mut conns {
            done += r.recv::<u64>()?;
        }
        let dt = t0.elapsed().as_secs_f64();
        for p in &ps {
            join_ok(p, &self.name())?;
        }
        if done != n * self.clients as u64 {
            return Err(format!("{}: {done} ops reported", self.name()).into());
        }
        for c in 0..self.clients {
            let got = d.get(format!("k{c}").as_str())?;
            if got != Some(n - 1) {
                return Err(format!("{}: k{c} = {got:?}, expected {}", self.name(), n - 1).into());
            }
        }
        Ok(done as f64 / dt)
    }
}

/// `manager.dict.set_8clients`: per repetition a fresh dict proxy and `clients` children, each
/// setting its own key `n` times; ops/s from the gate's opening to the last "done".
pub(crate) fn dict_clients(mgr: &Rc<Manager>, clients: usize, n: usize) -> Box<dyn Bench> {
    Box::new(DictClients {
        mgr: Rc::clone(mgr),
        clients,
        n,
    })
}

// ------------------------------------------------------- start+shutdown ----

struct StartShutdown {
    n: usize,
}

impl Bench for StartShutdown {
    fn name(&self) -> String {
        "manager.start_shutdown".into()
    }
    fn unit(&self) -> &'static str {
        "ms"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.n {
            let m = fork_manager()?;
            m.shutdown()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e3)
    }
}

/// `manager.start_shutdown`: `n` fork managers started and shut down per repetition.
pub(crate) fn start_shutdown(n: usize) -> Box<dyn Bench> {
    Box::new(StartShutdown { n })
}
